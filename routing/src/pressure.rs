//! Back-pressure along a stanza's path.
//!
//! A queue on the path (a session's mailbox past its capacity, a link to
//! another node) counts what it holds in a [`Backlog`]. When it takes a
//! stanza over its soft bound, it reports a [`Pressure`] on the thread that
//! routed the stanza ([`report`]); routing is synchronous, so that is the
//! thread of whoever read the stanza in. That reader (a session reading its
//! client, the cluster inbox reading a link) takes the report after routing
//! ([`take`]) and waits until the queue is back under its soft bound before
//! it reads its next stanza. A sender that outpaces its recipient is thus
//! slowed at its own TCP window: the recipient's queue stays bounded and no
//! message has to fall back (to another resource or offline storage) out of
//! its order. Past the hard bound a queue refuses, and the stanza takes the
//! fallback as before.

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What a queue holds over its normal capacity, counted.
#[derive(Debug)]
pub struct Backlog {
    queued: AtomicUsize,
    /// Over this many, whoever adds reports pressure.
    soft: usize,
    /// At this many, the queue takes no more.
    hard: usize,
    relieved: tokio::sync::Notify,
}

impl Backlog {
    pub fn new(soft: usize, hard: usize) -> Arc<Backlog> {
        Arc::new(Backlog { queued: AtomicUsize::new(0), soft, hard, relieved: tokio::sync::Notify::new() })
    }

    /// Counts one more item, or `None` at the hard bound. Over the soft
    /// bound, the routing thread is told to wait ([`report`]). The item
    /// counts until its [`BacklogEntry`] is dropped.
    pub fn push(self: &Arc<Self>) -> Option<BacklogEntry> {
        let before = self.queued.fetch_add(1, Ordering::AcqRel);
        if before >= self.hard {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        if before >= self.soft {
            report(Pressure(self.clone()));
        }
        Some(BacklogEntry(self.clone()))
    }

    /// Items counted now.
    pub fn len(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One item of a [`Backlog`]: it stops counting when dropped (handled, or
/// thrown away with its queue).
#[derive(Debug)]
pub struct BacklogEntry(Arc<Backlog>);

impl Drop for BacklogEntry {
    fn drop(&mut self) {
        let now = self.0.queued.fetch_sub(1, Ordering::AcqRel).saturating_sub(1);
        if now <= self.0.soft {
            self.0.relieved.notify_waiters();
        }
    }
}

/// A queue over its soft bound, for the reader that filled it to wait on.
#[derive(Clone, Debug)]
pub struct Pressure(Arc<Backlog>);

impl Pressure {
    /// Resolves once the queue is back under its soft bound, or after
    /// `at_most` (a recipient that stalls must not stall its senders for good).
    /// Returns whether it was relieved in time.
    pub async fn relieved(&self, at_most: Duration) -> bool {
        let wait = async {
            loop {
                // Registered before the check, so a drop in between wakes it.
                let notified = self.0.relieved.notified();
                if self.0.len() <= self.0.soft {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(at_most, wait).await.is_ok()
    }

    /// Whether the queue is over its soft bound now.
    pub fn is_pressing(&self) -> bool {
        self.0.len() > self.0.soft
    }
}

thread_local! {
    static REPORTED: RefCell<Option<Pressure>> = const { RefCell::new(None) };
}

/// Reports a queue over its soft bound to whoever routes on this thread
/// (the last report wins: one queue to wait on is enough to slow down).
pub fn report(p: Pressure) {
    REPORTED.with(|r| *r.borrow_mut() = Some(p));
}

/// Takes what was reported on this thread since the last call: call it
/// before routing (to forget others' reports) and after (to wait on it).
pub fn take() -> Option<Pressure> {
    REPORTED.with(|r| r.borrow_mut().take())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn over_the_soft_bound_the_router_waits_until_it_drains() {
        let b = Backlog::new(1, 3);
        let _ = take();
        let first = b.push().unwrap();
        assert!(take().is_none(), "within the soft bound nobody waits");
        let second = b.push().unwrap();
        let p = take().expect("over the soft bound");
        assert!(p.is_pressing());
        let third = b.push().unwrap();
        assert!(b.push().is_none(), "the hard bound refuses");
        assert_eq!(b.len(), 3);

        let waiting = tokio::spawn({
            let p = p.clone();
            async move { p.relieved(Duration::from_secs(60)).await }
        });
        tokio::task::yield_now().await;
        drop(third);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "still over the soft bound");
        drop(second);
        assert!(waiting.await.unwrap(), "relieved once back at the soft bound");
        drop(first);
        assert!(b.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_queue_stops_the_wait_after_its_bound() {
        let b = Backlog::new(0, 2);
        let _held = b.push().unwrap();
        let p = take().unwrap();
        assert!(!p.relieved(Duration::from_secs(5)).await);
    }
}
