//! XEP-0198: Stream Management (`urn:xmpp:sm:3`), the protocol's elements
//! and one stream's bookkeeping, without IO.
//!
//! After bind the client sends `<enable/>`; from then on both sides count the
//! stanzas they handled (`h`, modulo 2^32). Either side asks with `<r/>` and
//! the other answers `<a h='…'/>`. The server keeps every stanza it wrote
//! until the client acknowledges it, in a bounded buffer ([`SmState`]); what
//! to do with them (resend on resumption, give back to the account) is the
//! server's business.

use std::collections::VecDeque;
use std::time::Duration;

use crate::element::Element;

/// XEP-0198 version 3.
pub const NS_SM: &str = crate::ns::SM;
const NS_STANZAS: &str = crate::ns::STANZAS;

/// The client acknowledged more stanzas than the server sent.
#[derive(Debug, PartialEq, Eq)]
pub struct BadAck;

/// One session's stream-management counters and unacknowledged stanzas.
#[derive(Debug)]
pub struct SmState {
    /// Stanzas handled from the client (what we answer in `<a/>`).
    pub handled_in: u32,
    /// Stanzas the client acknowledged so far.
    acked_out: u32,
    /// Written and not yet acknowledged, oldest first.
    unacked: VecDeque<Element>,
    /// Written since the server last sent `<r/>`.
    since_request: u32,
    buffer_max: usize,
    /// Bytes the unacknowledged stanzas may hold ([`Element::weight`]).
    buffer_max_bytes: usize,
    unacked_bytes: usize,
    ack_freq: u32,
    /// The id a new connection resumes this session with, when resumption is on.
    pub resume_id: Option<String>,
}

/// What writing one stanza means for stream management.
#[derive(Debug, PartialEq, Eq)]
pub enum Sent {
    /// Nothing more to do.
    Kept,
    /// Follow it with `<r/>`.
    Request,
    /// The buffer is over its limit: close the stream with `<resource-constraint/>`.
    Overflow,
}

impl SmState {
    /// Keeps at most `buffer_max` unacknowledged stanzas holding at most
    /// `buffer_max_bytes` bytes, and asks for an acknowledgement every
    /// `ack_freq` stanzas (never with 0).
    pub fn new(buffer_max: usize, buffer_max_bytes: usize, ack_freq: u32) -> Self {
        SmState {
            handled_in: 0,
            acked_out: 0,
            unacked: VecDeque::new(),
            since_request: 0,
            buffer_max: buffer_max.max(1),
            buffer_max_bytes: buffer_max_bytes.max(1),
            unacked_bytes: 0,
            ack_freq,
            resume_id: None,
        }
    }

    /// One more stanza from the client was handled.
    pub fn handled(&mut self) {
        self.handled_in = self.handled_in.wrapping_add(1);
    }

    /// One stanza was written to the client.
    pub fn sent(&mut self, el: Element) -> Sent {
        self.unacked_bytes = self.unacked_bytes.saturating_add(el.weight());
        self.unacked.push_back(el);
        if self.unacked.len() > self.buffer_max || self.unacked_bytes > self.buffer_max_bytes {
            return Sent::Overflow;
        }
        self.since_request += 1;
        if self.ack_freq > 0 && self.since_request >= self.ack_freq {
            self.since_request = 0;
            return Sent::Request;
        }
        Sent::Kept
    }

    /// The client says it has handled `h` stanzas: drop those from the buffer.
    pub fn acked(&mut self, h: u32) -> Result<(), BadAck> {
        let newly = h.wrapping_sub(self.acked_out) as usize;
        if newly > self.unacked.len() {
            return Err(BadAck);
        }
        let freed: usize = self.unacked.drain(..newly).map(|e| e.weight()).sum();
        self.unacked_bytes = self.unacked_bytes.saturating_sub(freed);
        self.acked_out = h;
        Ok(())
    }

    /// Unacknowledged stanzas, oldest first (taken when the connection is lost).
    pub fn take_unacked(&mut self) -> VecDeque<Element> {
        self.unacked_bytes = 0;
        std::mem::take(&mut self.unacked)
    }

    pub fn unacked_len(&self) -> usize {
        self.unacked.len()
    }

    /// Unacknowledged stanzas, oldest first (re-sent on resumption; they stay unacknowledged).
    pub fn unacked(&self) -> impl Iterator<Item = &Element> {
        self.unacked.iter()
    }

    /// A new connection took over: nothing has been asked for on it yet.
    pub fn restart_requests(&mut self) {
        self.since_request = 0;
    }
}

/// `<sm/>` for the stream features.
pub fn feature() -> Element {
    Element::new("sm", NS_SM)
}

/// `<enabled/>`; with a resumption id, `resume='true'` and the most seconds it waits.
pub fn enabled(resume: Option<(&str, Duration)>) -> Element {
    let el = Element::new("enabled", NS_SM);
    match resume {
        Some((id, max)) => {
            el.with_attr("id", id).with_attr("resume", "true").with_attr("max", max.as_secs().to_string())
        }
        None => el,
    }
}

/// `<resumed/>`.
pub fn resumed(previd: &str, h: u32) -> Element {
    Element::new("resumed", NS_SM).with_attr("previd", previd).with_attr("h", h.to_string())
}

pub fn request() -> Element {
    Element::new("r", NS_SM)
}

pub fn answer(h: u32) -> Element {
    Element::new("a", NS_SM).with_attr("h", h.to_string())
}

/// `<failed/>` with a stanza error condition (`unexpected-request`, `item-not-found`).
pub fn failed(condition: &str) -> Element {
    Element::new("failed", NS_SM).with_child(Element::new(condition, NS_STANZAS))
}

/// The `h` of an `<a/>` or `<resume/>`.
pub fn h_of(el: &Element) -> Option<u32> {
    el.attr("h").and_then(|h| h.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(n: u32) -> Element {
        Element::new("message", "jabber:client").with_attr("id", n.to_string())
    }

    #[test]
    fn acks_drop_acknowledged_stanzas() {
        let mut sm = SmState::new(10, usize::MAX, 0);
        for n in 0..5 {
            assert_eq!(sm.sent(msg(n)), Sent::Kept);
        }
        sm.acked(3).unwrap();
        assert_eq!(sm.unacked_len(), 2);
        // An old ack again changes nothing.
        sm.acked(3).unwrap();
        assert_eq!(sm.unacked_len(), 2);
        assert_eq!(sm.acked(9), Err(BadAck));
        let rest: Vec<_> = sm.take_unacked().into_iter().map(|e| e.attr("id").map(str::to_owned)).collect();
        assert_eq!(rest, vec![Some("3".to_owned()), Some("4".to_owned())]);
    }

    #[test]
    fn h_wraps_at_2_pow_32() {
        let mut sm = SmState::new(10, usize::MAX, 0);
        sm.acked_out = u32::MAX - 1;
        sm.handled_in = u32::MAX;
        sm.handled();
        assert_eq!(sm.handled_in, 0);
        for n in 0..3 {
            sm.sent(msg(n));
        }
        sm.acked(0).unwrap();
        assert_eq!(sm.unacked_len(), 1);
    }

    #[test]
    fn requests_every_ack_freq_and_overflows_past_buffer_max() {
        let mut sm = SmState::new(3, usize::MAX, 2);
        assert_eq!(sm.sent(msg(0)), Sent::Kept);
        assert_eq!(sm.sent(msg(1)), Sent::Request);
        assert_eq!(sm.sent(msg(2)), Sent::Kept);
        assert_eq!(sm.sent(msg(3)), Sent::Overflow);
    }

    #[test]
    fn overflows_past_buffer_max_bytes_and_acks_give_bytes_back() {
        let big = |n: u32| msg(n).with_text("x".repeat(1000));
        let one = big(0).weight();
        let mut sm = SmState::new(100, one * 2, 0);
        assert_eq!(sm.sent(big(0)), Sent::Kept);
        assert_eq!(sm.sent(big(1)), Sent::Kept);
        sm.acked(1).unwrap();
        assert_eq!(sm.sent(big(2)), Sent::Kept, "the acknowledged one no longer counts");
        assert_eq!(sm.sent(big(3)), Sent::Overflow);
    }

    #[test]
    fn elements() {
        assert_eq!(h_of(&answer(7)), Some(7));
        assert!(failed("item-not-found").get_child("item-not-found", NS_STANZAS).is_some());
    }
}
