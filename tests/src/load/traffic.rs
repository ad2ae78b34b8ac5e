//! The measured part of `chat` and `presence`: per connection a reader task
//! (parses what arrives, records latency, counts deliveries) and a writer
//! task (sends when its sender slot says so), driven either by a closed
//! loop (a window of outstanding messages per sender) or by an open-loop
//! ticker at a fixed total rate.
//!
//! Every probe stanza carries `SEQ SEND_NS SENDER` in its body (chat) or
//! status (presence): the sender's sequence number, the send time in
//! nanoseconds on the generator's monotonic clock, and the sender's position.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use meerkat_xmpp::element::escape_attr;
use meerkat_xmpp::ns;
use meerkat_xmpp::parser::{StreamEvent, StreamParser};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, ReadHalf, WriteHalf};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use super::conn::{Session, Stream};
use super::frame::{classify, parse_probe, Frame, Kind, Splitter};
use super::pool::{histogram, lock};
use super::procstat::{Sampler, WindowStats};

/// Read buffer of a connection during traffic.
const READ_BUF: usize = 16 * 1024;
/// Open loop: a sender whose writer lags this many messages behind gets no more (counted as not offered).
const MAX_PENDING: u64 = 1000;
/// Open loop: how often the ticker hands out messages.
const TICK: Duration = Duration::from_millis(1);

/// How senders are driven.
#[derive(Clone, Copy, Debug)]
pub enum Mode {
    /// Each sender keeps this many messages outstanding (sent, not yet received).
    Closed(u32),
    /// This many stanzas per second in total, round robin over the senders.
    Open(f64),
}

/// What the probes are.
#[derive(Clone, Debug)]
pub enum Probe {
    /// `<message type='chat'>` to the partner's full JID.
    Chat { body_pad: usize },
    /// Broadcast `<presence>` with `<show/>` and `<status/>`.
    Presence,
    /// A XEP-0060 publish to `node` of `service`, the probe in the item's `<body/>`.
    Publish { service: String, node: String },
}

/// One connection taking part.
pub struct Peer {
    pub session: Session,
    /// Chat: the partner's full JID.
    pub to: Option<String>,
    /// Whether this connection sends probes.
    pub sends: bool,
}

/// The plan of one run.
pub struct Plan {
    pub mode: Mode,
    pub probe: Probe,
    pub warmup: Duration,
    pub duration: Duration,
    pub grace: Duration,
    /// Deliveries to other connections expected per probe sent (1 for chat, R for presence).
    pub fanout: u64,
}

/// What the run measured.
pub struct Outcome {
    pub sent: u64,
    pub sent_in_window: u64,
    pub not_offered: u64,
    /// Probes received from other connections.
    pub received: u64,
    /// Probes received from other connections inside the window.
    pub received_in_window: u64,
    /// Probes received back by their own sender (presence broadcast to the sender's own resource).
    pub received_self: u64,
    pub out_of_order: u64,
    /// `type='error'` stanzas received.
    pub stanza_errors: u64,
    /// Connections that ended (closed, stream error, write failure) before the end.
    pub disconnects: u64,
    /// Expected deliveries to others minus deliveries, after the grace period.
    pub lost: i64,
    /// Latency of probes sent inside the window, µs.
    pub latency: Histogram<u64>,
    pub window: WindowStats,
}

struct Slot {
    outstanding: AtomicI64,
    pending: AtomicU64,
    notify: Notify,
}

struct Shared {
    epoch: Instant,
    win_start: AtomicU64,
    win_end: AtomicU64,
    sending: AtomicBool,
    slots: Vec<Slot>,
    mode: Mode,
    sent: AtomicU64,
    sent_in_window: AtomicU64,
    not_offered: AtomicU64,
    received: AtomicU64,
    received_in_window: AtomicU64,
    received_self: AtomicU64,
    out_of_order: AtomicU64,
    stanza_errors: AtomicU64,
    disconnects: AtomicU64,
    latency: Mutex<Histogram<u64>>,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn in_window(&self, t: u64) -> bool {
        t >= self.win_start.load(Ordering::Relaxed) && t < self.win_end.load(Ordering::Relaxed)
    }
}

/// Runs the plan on these connections.
pub async fn run(peers: Vec<Peer>, plan: &Plan, sampler: &mut Sampler) -> Outcome {
    let n = peers.len();
    let sh = Arc::new(Shared {
        epoch: Instant::now(),
        // Nothing is "in the window" until it is set.
        win_start: AtomicU64::new(u64::MAX),
        win_end: AtomicU64::new(u64::MAX),
        sending: AtomicBool::new(true),
        slots: (0..n)
            .map(|_| Slot { outstanding: AtomicI64::new(0), pending: AtomicU64::new(0), notify: Notify::new() })
            .collect(),
        mode: plan.mode,
        sent: AtomicU64::new(0),
        sent_in_window: AtomicU64::new(0),
        not_offered: AtomicU64::new(0),
        received: AtomicU64::new(0),
        received_in_window: AtomicU64::new(0),
        received_self: AtomicU64::new(0),
        out_of_order: AtomicU64::new(0),
        stanza_errors: AtomicU64::new(0),
        disconnects: AtomicU64::new(0),
        latency: Mutex::new(histogram()),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::with_capacity(2 * n);
    let mut senders = Vec::new();
    for (k, peer) in peers.into_iter().enumerate() {
        let Session { stream, parser, .. } = peer.session;
        let (r, w) = tokio::io::split(stream);
        tasks.push(tokio::spawn(reader(k, r, parser, sh.clone(), stop_rx.clone())));
        let stanza = if peer.sends {
            senders.push(k);
            Some(Template::new(&plan.probe, peer.to.as_deref(), k))
        } else {
            None
        };
        tasks.push(tokio::spawn(writer(k, w, stanza, sh.clone(), stop_rx.clone())));
    }
    let start = sh.now_ns();
    let ws = start + plan.warmup.as_nanos() as u64;
    let we = ws + plan.duration.as_nanos() as u64;
    sh.win_start.store(ws, Ordering::Relaxed);
    sh.win_end.store(we, Ordering::Relaxed);
    let ticker = match plan.mode {
        Mode::Closed(_) => {
            for &k in &senders {
                sh.slots[k].notify.notify_one();
            }
            None
        }
        Mode::Open(rate) => Some(tokio::spawn(ticker(sh.clone(), senders.clone(), rate))),
    };
    tokio::time::sleep_until(sh.epoch + Duration::from_nanos(ws)).await;
    sampler.begin();
    tokio::time::sleep_until(sh.epoch + Duration::from_nanos(we)).await;
    let window = sampler.end();
    sh.sending.store(false, Ordering::Relaxed);
    if let Some(t) = ticker {
        let _ = t.await;
    }
    // Let writers blocked on their slot see that sending is over.
    for &k in &senders {
        sh.slots[k].notify.notify_one();
    }
    // Grace: wait for what is still in flight.
    let grace_end = Instant::now() + plan.grace;
    while Instant::now() < grace_end {
        let expected = sh.sent.load(Ordering::Relaxed) * plan.fanout;
        if sh.received.load(Ordering::Relaxed) >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    let sent = sh.sent.load(Ordering::Relaxed);
    let received = sh.received.load(Ordering::Relaxed);
    let latency = lock(&sh.latency).clone();
    Outcome {
        sent,
        sent_in_window: sh.sent_in_window.load(Ordering::Relaxed),
        not_offered: sh.not_offered.load(Ordering::Relaxed),
        received,
        received_in_window: sh.received_in_window.load(Ordering::Relaxed),
        received_self: sh.received_self.load(Ordering::Relaxed),
        out_of_order: sh.out_of_order.load(Ordering::Relaxed),
        stanza_errors: sh.stanza_errors.load(Ordering::Relaxed),
        disconnects: sh.disconnects.load(Ordering::Relaxed),
        lost: (sent * plan.fanout) as i64 - received as i64,
        latency,
        window,
    }
}

/// The constant parts of one sender's probe stanza.
struct Template {
    probe: Probe,
    head: String,
    tail: String,
}

impl Template {
    fn new(probe: &Probe, to: Option<&str>, k: usize) -> Template {
        match probe {
            Probe::Chat { body_pad } => {
                let mut head = String::from("<message type='chat' to='");
                escape_attr(&mut head, to.unwrap_or_default());
                head.push_str("'><body>");
                let pad = if *body_pad > 0 { format!(" {}", "x".repeat(*body_pad)) } else { String::new() };
                Template { probe: probe.clone(), head, tail: format!(" {k}{pad}</body></message>") }
            }
            Probe::Presence => {
                Template { probe: probe.clone(), head: String::new(), tail: format!(" {k}</status></presence>") }
            }
            Probe::Publish { service, node } => {
                let mut head = String::from("' to='");
                escape_attr(&mut head, service);
                head.push_str("'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='");
                escape_attr(&mut head, node);
                head.push_str("'><item><entry xmlns='urn:example:load'><body>");
                Template {
                    probe: probe.clone(),
                    head,
                    tail: format!(" {k}</body></entry></item></publish></pubsub></iq>"),
                }
            }
        }
    }

    fn write(&self, out: &mut String, seq: u64, ts: u64) {
        match self.probe {
            Probe::Chat { .. } => out.push_str(&self.head),
            Probe::Presence => out.push_str(if seq.is_multiple_of(2) {
                "<presence><show>away</show><status>"
            } else {
                "<presence><show>dnd</show><status>"
            }),
            Probe::Publish { .. } => {
                let _ = write!(out, "<iq type='set' id='p{seq}");
                out.push_str(&self.head);
            }
        }
        let _ = write!(out, "{seq} {ts}");
        out.push_str(&self.tail);
    }
}

async fn writer(
    k: usize,
    mut w: WriteHalf<Stream>,
    template: Option<Template>,
    sh: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let slot = &sh.slots[k];
    let mut out = String::with_capacity(4096);
    let mut seq = 0u64;
    if let Some(t) = template {
        loop {
            tokio::select! {
                _ = slot.notify.notified() => {}
                _ = stop.changed() => break,
            }
            if !sh.sending.load(Ordering::Relaxed) {
                continue; // wait for the stop
            }
            let count = match sh.mode {
                Mode::Closed(window) => (i64::from(window) - slot.outstanding.load(Ordering::Relaxed)).max(0) as u64,
                Mode::Open(_) => slot.pending.swap(0, Ordering::Relaxed),
            };
            if count == 0 {
                continue;
            }
            let ts = sh.now_ns();
            out.clear();
            for _ in 0..count {
                seq += 1;
                t.write(&mut out, seq, ts);
            }
            // Counted before writing: the answer may arrive while the write is still pending.
            slot.outstanding.fetch_add(count as i64, Ordering::Relaxed);
            sh.sent.fetch_add(count, Ordering::Relaxed);
            if sh.in_window(ts) {
                sh.sent_in_window.fetch_add(count, Ordering::Relaxed);
            }
            let r = async {
                w.write_all(out.as_bytes()).await?;
                w.flush().await
            };
            if r.await.is_err() {
                sh.disconnects.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    } else {
        let _ = stop.changed().await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        w.write_all(b"</stream:stream>").await?;
        w.shutdown().await
    })
    .await;
}

/// Per-reader tallies, added to the shared counters once per read.
#[derive(Default)]
struct Tally {
    received: u64,
    received_in_window: u64,
    received_self: u64,
    out_of_order: u64,
    stanza_errors: u64,
    latencies: Vec<u64>,
    /// Closed loop: senders whose outstanding count went down (to wake once per read).
    wake: Vec<usize>,
}

/// Reads one connection. Until the login's parser has handed over every
/// complete stanza and holds no partial one, it goes on parsing; then the
/// fast [`Splitter`] takes over for the rest of the run.
async fn reader(
    k: usize,
    mut r: ReadHalf<Stream>,
    parser: StreamParser,
    sh: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; READ_BUF];
    let mut parser = Some(parser);
    let mut splitter = Splitter::default();
    let mut last_seq: HashMap<usize, u64> = HashMap::new();
    let mut tally = Tally::default();
    loop {
        let now = sh.now_ns();
        let mut ended = false;
        if let Some(p) = parser.as_mut() {
            loop {
                match p.next_event() {
                    Ok(Some(StreamEvent::Stanza(el))) => {
                        let kind = if el.attr("type") == Some("error") {
                            Kind::Error
                        } else if el.is("error", ns::STREAM) {
                            Kind::StreamError
                        } else {
                            let text = match el.name.as_str() {
                                "message" => el.get_child("body", ns::CLIENT),
                                "presence" => el.get_child("status", ns::CLIENT),
                                _ => None,
                            };
                            match text.and_then(|t| parse_probe(t.text().as_bytes())) {
                                Some((seq, ts, sender)) => Kind::Probe(seq, ts, sender),
                                None => Kind::Other,
                            }
                        };
                        ended |= on_element(k, kind, now, &sh, &mut last_seq, &mut tally);
                    }
                    Ok(Some(StreamEvent::Header(_))) => {}
                    Ok(Some(StreamEvent::End)) | Err(_) => ended = true,
                    Ok(None) => break,
                }
                if ended {
                    break;
                }
            }
            if p.buffered_len() == 0 {
                parser = None;
            }
        } else {
            loop {
                match splitter.next_frame() {
                    Ok(Some(Frame::Element(el))) => {
                        ended |= on_element(k, classify(el), now, &sh, &mut last_seq, &mut tally);
                    }
                    Ok(Some(Frame::End)) | Err(_) => ended = true,
                    Ok(None) => break,
                }
                if ended {
                    break;
                }
            }
        }
        flush(&sh, &mut tally);
        if ended {
            if !*stop.borrow() {
                sh.disconnects.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        let n = tokio::select! {
            r = r.read(&mut buf) => r,
            _ = stop.changed() => return,
        };
        match n {
            Ok(n) if n > 0 => match parser.as_mut() {
                Some(p) => p.feed(&buf[..n]),
                None => splitter.feed(&buf[..n]),
            },
            _ => {
                if !*stop.borrow() {
                    sh.disconnects.fetch_add(1, Ordering::Relaxed);
                }
                return;
            }
        }
    }
}

/// Counts one element received at `now` by connection `k`; true when the stream is over.
fn on_element(
    k: usize,
    kind: Kind,
    now: u64,
    sh: &Shared,
    last_seq: &mut HashMap<usize, u64>,
    tally: &mut Tally,
) -> bool {
    let (seq, ts, sender) = match kind {
        Kind::Probe(seq, ts, sender) => (seq, ts, sender),
        Kind::Error => {
            tally.stanza_errors += 1;
            return false;
        }
        Kind::StreamError => return true,
        Kind::Other => return false,
    };
    if sender >= sh.slots.len() {
        return false;
    }
    if sender == k {
        tally.received_self += 1;
        return false;
    }
    tally.received += 1;
    if sh.in_window(now) {
        tally.received_in_window += 1;
    }
    if sh.in_window(ts) {
        tally.latencies.push(now.saturating_sub(ts) / 1000);
    }
    match last_seq.get_mut(&sender) {
        Some(last) if seq <= *last => tally.out_of_order += 1,
        Some(last) => *last = seq,
        None => {
            last_seq.insert(sender, seq);
        }
    }
    if let Mode::Closed(_) = sh.mode {
        sh.slots[sender].outstanding.fetch_sub(1, Ordering::Relaxed);
        if tally.wake.last() != Some(&sender) {
            tally.wake.push(sender);
        }
    }
    false
}

fn flush(sh: &Shared, t: &mut Tally) {
    if t.received > 0 {
        sh.received.fetch_add(t.received, Ordering::Relaxed);
        sh.received_in_window.fetch_add(t.received_in_window, Ordering::Relaxed);
    }
    if t.received_self > 0 {
        sh.received_self.fetch_add(t.received_self, Ordering::Relaxed);
    }
    if t.out_of_order > 0 {
        sh.out_of_order.fetch_add(t.out_of_order, Ordering::Relaxed);
    }
    if t.stanza_errors > 0 {
        sh.stanza_errors.fetch_add(t.stanza_errors, Ordering::Relaxed);
    }
    if !t.latencies.is_empty() {
        let mut h = lock(&sh.latency);
        for &v in &t.latencies {
            h.saturating_record(v.max(1));
        }
        t.latencies.clear();
    }
    if sh.sending.load(Ordering::Relaxed) {
        for &sender in &t.wake {
            sh.slots[sender].notify.notify_one();
        }
    }
    t.wake.clear();
    t.received = 0;
    t.received_in_window = 0;
    t.received_self = 0;
    t.out_of_order = 0;
    t.stanza_errors = 0;
}

async fn ticker(sh: Arc<Shared>, senders: Vec<usize>, rate: f64) {
    if senders.is_empty() || rate <= 0.0 {
        return;
    }
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let start = Instant::now();
    let mut handed_out = 0u64;
    let mut rr = 0usize;
    while sh.sending.load(Ordering::Relaxed) {
        tick.tick().await;
        let due = (start.elapsed().as_secs_f64() * rate) as u64;
        for _ in handed_out..due {
            let slot = &sh.slots[senders[rr]];
            rr = (rr + 1) % senders.len();
            if slot.pending.load(Ordering::Relaxed) >= MAX_PENDING {
                sh.not_offered.fetch_add(1, Ordering::Relaxed);
            } else {
                slot.pending.fetch_add(1, Ordering::Relaxed);
                slot.notify.notify_one();
            }
        }
        handed_out = handed_out.max(due);
    }
}
