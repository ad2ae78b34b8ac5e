//! XEP-0352: Client State Indication (`urn:xmpp:csi:0`).
//!
//! After bind the server offers `<csi xmlns='urn:xmpp:csi:0'/>` in the stream
//! features; the client then says `<inactive/>` when nobody looks at it (a
//! phone in a pocket) and `<active/>` when somebody does. The state lives in
//! the session (a [`CsiQueue`] slot of its state), and the queue sits on the
//! session's output ([`Module::client_output`]).
//!
//! While the client is inactive, what it can do without — presence updates and
//! messages that carry nothing but a chat state (also as carbon copies) — waits
//! in a [`CsiQueue`]; for each contact (full JID) only the newest such stanza is
//! kept. Anything else the client must see (a message with a body, an IQ, a
//! subscription request, an error) first flushes the queue, so the client reads
//! every stanza in the order the server received it, apart from the dropped
//! superseded ones. The queue is bounded: when it is full it is flushed as well.

use std::collections::VecDeque;
use std::sync::Arc;

use meerkat_xmpp::element::Element;
use meerkat_xmpp::stanza::{MessageType, PresenceType, StanzaKind};

use meerkat_xmpp::jid::FullJid;
use meerkat_xmpp::ns;

use crate::ext::registry::{ModuleSpec, Registry};
use crate::ext::{HookSet, Module, ModuleCtx, SessionAcc, SessionState, Switch};

const NS_CARBONS: &str = ns::CARBONS;
const NS_FORWARD: &str = ns::FORWARD;
const NS_CSI: &str = ns::CSI;
const NS_CHATSTATES: &str = ns::CHATSTATES;
/// Stanzas held for an inactive client before the queue is flushed anyway.
pub const MAX_QUEUED: usize = 100;

pub struct Csi;

impl ModuleSpec for Csi {
    const NAME: &'static str = "mod_csi";
    type Config = Switch;
    fn enabled(cfg: &Switch) -> bool {
        cfg.enabled
    }
    fn build(_cfg: &Switch) -> Arc<dyn Module> {
        Arc::new(Csi)
    }
}

#[async_trait::async_trait]
impl Module for Csi {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn hot_hooks(&self) -> HookSet {
        HookSet::CLIENT_OUTPUT
    }

    fn stream_features(&self, _hooks: &Registry, post_auth: bool) -> Vec<Element> {
        if post_auth {
            vec![Element::new("csi", NS_CSI)]
        } else {
            Vec::new()
        }
    }

    fn bind2_inline(&self) -> Vec<Element> {
        vec![Element::new("feature", meerkat_xmpp::ns::BIND2).with_attr("var", NS_CSI)]
    }

    /// XEP-0386: `<active/>` or `<inactive/>` inside `<bind/>`, as if sent after it.
    fn bind2_request(
        &self,
        ctx: &ModuleCtx,
        jid: &FullJid,
        state: &mut SessionState,
        request: &Element,
        acc: &mut SessionAcc,
    ) -> bool {
        self.session_element(ctx, jid, state, request, acc)
    }

    fn session_element(
        &self,
        _ctx: &ModuleCtx,
        _jid: &FullJid,
        state: &mut SessionState,
        el: &Element,
        acc: &mut SessionAcc,
    ) -> bool {
        match (el.ns.as_str(), el.name.as_str()) {
            (NS_CSI, "active") => {
                let q = state.get_or_default::<CsiQueue>();
                q.set_active(true);
                // What waited is written now, in order.
                acc.write.extend(q.take());
            }
            (NS_CSI, "inactive") => state.get_or_default::<CsiQueue>().set_active(false),
            _ => return false,
        }
        true
    }

    fn client_output(
        &self,
        state: &mut SessionState,
        stanza: Element,
        urgent: bool,
        out: &mut Vec<Element>,
    ) -> Option<Element> {
        let Some(q) = state.get_mut::<CsiQueue>() else { return Some(stanza) };
        if urgent {
            // A reply to the client goes out at once, after what waited.
            out.extend(q.take());
            return Some(stanza);
        }
        out.extend(q.offer(stanza));
        None
    }
}

/// What waits for an inactive client. Active (and empty) until told otherwise.
#[derive(Debug)]
pub struct CsiQueue {
    inactive: bool,
    queue: VecDeque<Element>,
    max: usize,
}

impl Default for CsiQueue {
    fn default() -> Self {
        CsiQueue::new(MAX_QUEUED)
    }
}

impl CsiQueue {
    pub fn new(max: usize) -> Self {
        CsiQueue { inactive: false, queue: VecDeque::new(), max: max.max(1) }
    }

    pub fn is_active(&self) -> bool {
        !self.inactive
    }

    /// Records the client's state; what is queued stays until [`CsiQueue::take`].
    pub fn set_active(&mut self, active: bool) {
        self.inactive = !active;
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Everything queued, in order, leaving the queue empty.
    pub fn take(&mut self) -> Vec<Element> {
        self.queue.drain(..).collect()
    }

    /// A stanza for the client: what to write now, in order. Empty when it was
    /// queued; otherwise the queue (if the stanza cannot wait, or the queue is
    /// full) followed by the stanza.
    pub fn offer(&mut self, stanza: Element) -> Vec<Element> {
        if !self.inactive || !can_wait(&stanza) {
            let mut out = self.take();
            out.push(stanza);
            return out;
        }
        let key = supersedes_key(&stanza);
        if let Some(key) = &key {
            // Only the newest one of its kind from this contact matters.
            self.queue.retain(|q| supersedes_key(q).as_ref() != Some(key));
        }
        if self.queue.len() >= self.max {
            let mut out = self.take();
            out.push(stanza);
            return out;
        }
        self.queue.push_back(stanza);
        Vec::new()
    }
}

/// Presence updates and chat-state-only messages (or carbon copies of them).
fn can_wait(stanza: &Element) -> bool {
    match StanzaKind::of(stanza) {
        Some(StanzaKind::Presence) => {
            matches!(PresenceType::of(stanza), Some(PresenceType::Available | PresenceType::Unavailable))
        }
        Some(StanzaKind::Message) => chat_state_only(stanza) || carbon_of_chat_state(stanza),
        _ => false,
    }
}

/// A message whose only payload is a chat state (XEP-0085), with perhaps a thread.
fn chat_state_only(m: &Element) -> bool {
    !matches!(MessageType::of(m), MessageType::Error | MessageType::Groupchat)
        && m.elements().any(|e| e.ns == NS_CHATSTATES)
        && m.elements().all(|e| e.ns == NS_CHATSTATES || e.is("thread", &m.ns))
}

fn carbon_of_chat_state(m: &Element) -> bool {
    let mut copies = m.elements().filter(|e| e.ns == NS_CARBONS && (e.name == "sent" || e.name == "received"));
    let inner = copies
        .next()
        .and_then(|c| c.get_child("forwarded", NS_FORWARD))
        .and_then(|f| f.elements().find(|e| e.name == "message"));
    m.elements().count() == 1 && inner.is_some_and(chat_state_only)
}

/// Queued stanzas with the same key replace each other: presence per sender,
/// chat states per sender (and direction, for carbon copies).
fn supersedes_key(stanza: &Element) -> Option<(String, String)> {
    let kind = match StanzaKind::of(stanza)? {
        StanzaKind::Presence => "presence".to_owned(),
        StanzaKind::Message => match stanza.elements().find(|e| e.ns == NS_CARBONS) {
            Some(copy) => {
                let inner =
                    copy.get_child("forwarded", NS_FORWARD).and_then(|f| f.elements().find(|e| e.name == "message"))?;
                format!("{}:{}:{}", copy.name, inner.attr("from")?, inner.attr("to").unwrap_or_default())
            }
            None => "chatstate".to_owned(),
        },
        StanzaKind::Iq => return None,
    };
    Some((kind, stanza.attr("from")?.to_owned()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn el(xml: &str) -> Element {
        crate::ext::util::parse_stored(xml).unwrap()
    }

    fn ids(v: &[Element]) -> Vec<&str> {
        v.iter().map(|e| e.attr("id").unwrap_or("?")).collect()
    }

    #[test]
    fn active_passes_everything_through() {
        let mut q = CsiQueue::new(10);
        assert!(q.is_active());
        let out = q.offer(el("<presence from='a@x/r' id='p1'/>"));
        assert_eq!(ids(&out), ["p1"]);
        assert!(q.is_empty());
    }

    #[test]
    fn inactive_queues_and_flushes_in_order() {
        let mut q = CsiQueue::new(10);
        q.set_active(false);
        for xml in [
            "<presence from='a@x/r' id='p1'/>",
            "<presence from='b@x/r' id='p2'/>",
            "<message from='c@x/r' id='m1' type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>",
            // Replaces p1: only a's newest presence is kept, at its new place.
            "<presence from='a@x/r' id='p3' type='unavailable'/>",
        ] {
            assert!(q.offer(el(xml)).is_empty(), "{xml} waits");
        }
        assert_eq!(q.len(), 3);
        // A message with a body cannot wait: everything before it comes first.
        let out = q.offer(el("<message from='d@x/r' id='m2' type='chat'><body>hi</body></message>"));
        assert_eq!(ids(&out), ["p2", "m1", "p3", "m2"]);
        assert!(q.is_empty());
        // An IQ cannot wait either.
        assert!(q.offer(el("<presence from='a@x/r' id='p4'/>")).is_empty());
        let out = q.offer(el("<iq from='x' id='i1' type='get'><ping xmlns='urn:xmpp:ping'/></iq>"));
        assert_eq!(ids(&out), ["p4", "i1"]);
        // Becoming active keeps the queue for the session to take.
        assert!(q.offer(el("<presence from='a@x/r' id='p5'/>")).is_empty());
        q.set_active(true);
        assert_eq!(ids(&q.take()), ["p5"]);
    }

    #[test]
    fn what_cannot_wait() {
        let urgent = [
            "<presence from='a@x' type='subscribe'/>",
            "<presence from='a@x' type='error'/>",
            "<message from='a@x/r' type='chat'><body>x</body><active xmlns='http://jabber.org/protocol/chatstates'/></message>",
            "<message from='a@x/r'><subject>s</subject></message>",
            "<message from='a@x/r' type='error'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>",
            "<message from='a@x/r' type='chat'/>",
            "<message from='me@x' type='chat'><received xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'>\
             <message from='a@x/r' type='chat'><body>x</body></message></forwarded></received></message>",
        ];
        for xml in urgent {
            let mut q = CsiQueue::new(10);
            q.set_active(false);
            assert_eq!(q.offer(el(xml)).len(), 1, "{xml}");
        }
        let can = [
            "<presence from='a@x/r'/>",
            "<presence from='a@x/r' type='unavailable'/>",
            "<message from='a@x/r' type='chat'><paused xmlns='http://jabber.org/protocol/chatstates'/><thread>t</thread></message>",
            "<message from='me@x' type='chat'><sent xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'>\
             <message from='me@x/r' to='a@x' type='chat'><gone xmlns='http://jabber.org/protocol/chatstates'/></message>\
             </forwarded></sent></message>",
        ];
        for xml in can {
            let mut q = CsiQueue::new(10);
            q.set_active(false);
            assert!(q.offer(el(xml)).is_empty(), "{xml}");
        }
    }

    #[test]
    fn a_full_queue_is_flushed() {
        let mut q = CsiQueue::new(2);
        q.set_active(false);
        assert!(q.offer(el("<presence from='a@x/r' id='1'/>")).is_empty());
        assert!(q.offer(el("<presence from='b@x/r' id='2'/>")).is_empty());
        assert_eq!(ids(&q.offer(el("<presence from='c@x/r' id='3'/>"))), ["1", "2", "3"]);
        assert!(q.is_empty());
    }
}
