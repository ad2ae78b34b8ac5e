//! A numbered message stream for the fault tests: one sender sends `m0`,
//! `m1`, ... at a steady pace, pauses once so that a fault can be injected
//! between two messages, and the receiving side counts what arrived how
//! often.

use std::collections::HashMap;
use std::time::Duration;

use meerkat_xmpp::element::Element;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::client::{body, Client};

/// A stream running in its own task; see [`numbered`].
pub struct Numbered {
    /// Gives the client back once every message is sent.
    pub task: JoinHandle<Client>,
    /// Told when the stream reached its pause.
    pub paused: oneshot::Receiver<()>,
    /// Send once the fault is in place: the stream goes on.
    pub resume: oneshot::Sender<()>,
}

/// Sends `m0` to `m{n-1}` from `client` to `to`, one every `every`; before
/// `m{pause_at}` it says so through [`Numbered::paused`] and waits for
/// [`Numbered::resume`] (or for it to be dropped).
pub fn numbered(mut client: Client, to: String, n: usize, every: Duration, pause_at: usize) -> Numbered {
    let (paused_tx, paused) = oneshot::channel();
    let (resume, resume_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pause = Some((paused_tx, resume_rx));
        for i in 0..n {
            tick.tick().await;
            if i == pause_at {
                if let Some((tell, wait)) = pause.take() {
                    let _ = tell.send(());
                    let _ = wait.await;
                }
            }
            if let Err(e) = client.send_message(&to, &format!("m{i}")).await {
                panic!("sending m{i} to {to}: {e}");
            }
        }
        client
    });
    Numbered { task, paused, resume }
}

/// A receiving session read in its own task; see [`read_until_quiet`].
pub struct Reading {
    /// Gives what arrived once the connection ended or went quiet.
    pub task: JoinHandle<Counts>,
    /// Told once `m0` to `m{first-1}` have all arrived.
    pub has_first: oneshot::Receiver<()>,
}

/// Reads `client` until its connection ends or is quiet for `quiet` (a
/// blackholed node's connection neither ends nor carries anything), counting
/// the stream's messages, and says when the first `first` of them are in.
pub fn read_until_quiet(mut client: Client, first: usize, quiet: Duration) -> Reading {
    let (tell, has_first) = oneshot::channel();
    let task = tokio::spawn(async move {
        let mut seen = Counts::default();
        let mut tell = Some(tell);
        while let Ok(el) = client.recv_timeout(quiet).await {
            seen.note(&el);
            if (0..first).all(|i| seen.0.contains_key(&i)) {
                if let Some(tell) = tell.take() {
                    let _ = tell.send(());
                }
            }
        }
        seen
    });
    Reading { task, has_first }
}

impl Reading {
    /// Waits until the first messages arrived (at most `within`).
    pub async fn first_in(&mut self, within: Duration) {
        match tokio::time::timeout(within, &mut self.has_first).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => panic!("the reading session ended before the first messages arrived"),
            Err(_) => panic!("the first messages did not arrive within {within:?}"),
        }
    }
}

/// How many times each number of a [`numbered`] stream arrived.
#[derive(Debug, Default)]
pub struct Counts(pub HashMap<usize, usize>);

impl Counts {
    /// Counts `el` if it is a message of the stream.
    pub fn note(&mut self, el: &Element) {
        if let Some(i) = body(el).and_then(|b| b.strip_prefix('m').and_then(|n| n.parse::<usize>().ok())) {
            *self.0.entry(i).or_default() += 1;
        }
    }

    /// Distinct numbers that arrived.
    pub fn distinct(&self) -> usize {
        self.0.len()
    }

    /// Messages that arrived, counting repeats.
    pub fn total(&self) -> usize {
        self.0.values().sum()
    }

    /// The numbers below `n` that never arrived.
    pub fn missing(&self, n: usize) -> Vec<usize> {
        (0..n).filter(|i| !self.0.contains_key(i)).collect()
    }

    /// The numbers that arrived more than once, with how often.
    pub fn repeated(&self) -> Vec<(usize, usize)> {
        let mut r: Vec<_> = self.0.iter().filter(|(_, c)| **c > 1).map(|(i, c)| (*i, *c)).collect();
        r.sort();
        r
    }
}
