//! XEP-0280: Message Carbons (`urn:xmpp:carbons:2`).
//!
//! A client turns carbons on or off for its own session with an IQ-set of
//! `<enable/>` or `<disable/>`; the flag lives in the session (a
//! [`CarbonsEnabled`] slot of its state), so the IQ is answered there
//! ([`Module::session_iq`]).
//!
//! Copies are made where a message passes a session of the user, and go to the
//! user's other resources straight into their sessions (on whatever node of the
//! cluster), addressed to each full JID:
//! - a message a resource *sends* is copied as `<sent/>` by the sending session
//!   ([`Module::user_send_message`], after archiving and blocking had their say);
//! - a message a resource *receives* is copied as `<received/>` by the receiving
//!   session ([`Module::user_receive`]). A message to the bare JID reaches every
//!   available resource of highest priority, which all have the original: only
//!   the first of them (by full JID) copies it, and only to the others.
//!
//! Every copy is offered to every other resource; the receiving session keeps it
//! only if its client enabled carbons and the copy is addressed to it (a copy is
//! never re-routed to another resource or to offline storage). The sender knows
//! nothing of the other sessions' flags, which keeps this correct across nodes.
//!
//! Which messages are copied follows XEP-0280 §6 ([`eligible`]): `chat`
//! messages, and `normal` ones with a body or instant-messaging payload (chat
//! states, receipts, markers); never errors, `groupchat`, MUC private messages,
//! copies themselves, messages marked `<private/>` or `<no-copy/>` (XEP-0334),
//! messages between the user's own resources, or stored messages delivered at
//! login (they belong to the account, not to a conversation seen elsewhere).

use meerkat_xmpp::jid::Bare as _;
use std::sync::Arc;

use meerkat_cluster::SessionInfo;
use meerkat_xmpp::element::Element;
use meerkat_xmpp::error::StanzaErrorCondition;
use meerkat_xmpp::jid::{parse_jid, BareJid, FullJid, Jid};
use meerkat_xmpp::ns;
use meerkat_xmpp::stanza::{MessageType, StanzaKind};

use crate::ext::registry::ModuleSpec;
use crate::ext::{HookSet, IqAnswer, Module, ModuleCtx, Receive, SessionAcc, SessionState, Switch, Target};

const NS_CARBONS: &str = ns::CARBONS;
const NS_FORWARD: &str = ns::FORWARD;
const NS_HINTS: &str = ns::HINTS;
/// XEP-0045 user namespace: its `<x/>` marks MUC private messages.
const NS_MUC_USER: &str = ns::MUC_USER;
/// Payloads of instant messaging that make a `normal` message worth copying:
/// chat states, receipts and markers.
const IM_PAYLOADS: [&str; 3] = [ns::CHATSTATES, ns::RECEIPTS, ns::CHAT_MARKERS];

pub struct Carbons;

/// The slot of a session whose client enabled carbons.
#[derive(Debug, Default)]
struct CarbonsEnabled;

impl ModuleSpec for Carbons {
    const NAME: &'static str = "mod_carbons";
    type Config = Switch;
    fn enabled(cfg: &Switch) -> bool {
        cfg.enabled
    }
    fn build(_cfg: &Switch) -> Arc<dyn Module> {
        Arc::new(Carbons)
    }
}

/// Whether a message is copied at all (XEP-0280 §6).
pub fn eligible(stanza: &Element) -> bool {
    if StanzaKind::of(stanza) != Some(StanzaKind::Message)
        || is_copy(stanza)
        || stanza.has_child("private", NS_CARBONS)
        || stanza.has_child("no-copy", NS_HINTS)
        || stanza.has_child("x", NS_MUC_USER)
    {
        return false;
    }
    match MessageType::of(stanza) {
        MessageType::Chat => true,
        MessageType::Normal => {
            stanza.has_child("body", &stanza.ns) || stanza.elements().any(|e| IM_PAYLOADS.contains(&e.ns.as_str()))
        }
        MessageType::Groupchat | MessageType::Headline | MessageType::Error => false,
    }
}

/// Whether a message wraps a copy (`<sent/>` or `<received/>`).
pub fn is_copy(stanza: &Element) -> bool {
    stanza.elements().any(|e| e.ns == NS_CARBONS && (e.name == "sent" || e.name == "received"))
}

/// The copy of `original` for the resource `to` of `owner`: `direction` is
/// `sent` or `received`.
fn wrap(direction: &str, owner: &BareJid, to: &FullJid, original: &Element) -> Element {
    let mut m =
        Element::new("message", ns::CLIENT).with_attr("from", owner.to_string()).with_attr("to", to.to_string());
    if let Some(t) = original.attr("type") {
        m.set_attr("type", t);
    }
    m.with_child(
        Element::new(direction, NS_CARBONS)
            .with_child(Element::new("forwarded", NS_FORWARD).with_child(original.clone())),
    )
}

/// Hands copies to sessions; a session that cannot take one simply misses it.
fn send_copies(ctx: &ModuleCtx, direction: &str, owner: &BareJid, targets: &[SessionInfo], original: &Element) {
    for info in targets {
        let copy = wrap(direction, owner, &info.jid, original);
        if ctx.router.deliver_to_session(info, copy).is_err() {
            tracing::debug!(to = %info.jid, "a carbon copy could not be delivered");
        }
    }
}

/// A stored (offline) message being delivered at login: stamped by our own host.
fn delivered_from_storage(ctx: &ModuleCtx, stanza: &Element) -> bool {
    stanza
        .elements()
        .filter(|e| e.is("delay", ns::DELAY))
        .any(|d| d.attr("from").is_some_and(|f| ctx.router.is_local_host(f)))
}

/// The other resources that get a `<received/>` copy of a message the session
/// of `jid` is about to deliver. A message to the full JID went to this resource
/// only; one to the bare JID (or to a resource that is gone) went to every
/// available resource of highest priority, and the first of them copies it.
fn received_targets(ctx: &ModuleCtx, jid: &FullJid, stanza: &Element) -> Vec<SessionInfo> {
    let owner = jid.bare();
    let sessions = ctx.router.sessions();
    let mut originals = vec![jid.clone()];
    let to_here = stanza.attr("to").and_then(|t| parse_jid(t).ok()).is_some_and(|t| t == *jid);
    if !to_here {
        originals.extend(sessions.highest_priority(&owner).into_iter().map(|s| s.jid));
        if originals.iter().min_by_key(|j| j.to_string()) != Some(jid) {
            return Vec::new();
        }
    }
    sessions.resources(&owner).into_iter().filter(|s| !originals.contains(&s.jid)).collect()
}

#[async_trait::async_trait]
impl Module for Carbons {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn hot_hooks(&self) -> HookSet {
        HookSet::USER_SEND_MESSAGE.with(HookSet::USER_RECEIVE)
    }

    fn session_iq_namespaces(&self) -> &'static [&'static str] {
        &[NS_CARBONS]
    }

    /// A copy is for the resource it was made for: it never goes back to the account.
    fn returns_to_account(&self, stanza: &Element) -> bool {
        !is_copy(stanza)
    }

    fn bind2_inline(&self) -> Vec<Element> {
        vec![Element::new("feature", meerkat_xmpp::ns::BIND2).with_attr("var", NS_CARBONS)]
    }

    /// XEP-0386: `<enable xmlns='urn:xmpp:carbons:2'/>` inside `<bind/>`.
    fn bind2_request(
        &self,
        _ctx: &ModuleCtx,
        _jid: &FullJid,
        state: &mut SessionState,
        request: &Element,
        _acc: &mut SessionAcc,
    ) -> bool {
        if !request.is("enable", NS_CARBONS) {
            return false;
        }
        state.insert(CarbonsEnabled);
        true
    }

    fn disco_features(&self, target: Target) -> &'static [&'static str] {
        if target == Target::Server {
            &[NS_CARBONS]
        } else {
            &[]
        }
    }

    fn session_iq(
        &self,
        _ctx: &ModuleCtx,
        _jid: &FullJid,
        state: &mut SessionState,
        iq: &Element,
        payload: &Element,
    ) -> Option<IqAnswer> {
        if payload.ns != NS_CARBONS {
            return None;
        }
        let enable = match payload.name.as_str() {
            "enable" => true,
            "disable" => false,
            _ => return Some(Err(StanzaErrorCondition::BadRequest)),
        };
        if iq.attr("type") != Some("set") {
            return Some(Err(StanzaErrorCondition::BadRequest));
        }
        // Enabling twice is no error (XEP-0280 §4).
        if enable {
            state.insert(CarbonsEnabled);
        } else {
            state.remove::<CarbonsEnabled>();
        }
        Some(Ok(None))
    }

    fn user_send_message(
        &self,
        ctx: &ModuleCtx,
        _state: &mut SessionState,
        from: &FullJid,
        to: &Jid,
        stanza: &mut Element,
        _acc: &mut SessionAcc,
    ) -> Result<(), StanzaErrorCondition> {
        if to.node().is_none() || to.same_bare(from) || !eligible(stanza) {
            // Messages to one's own account reach the resources anyway; messages
            // to a server are not a conversation.
            return Ok(());
        }
        let targets = ctx.router.sessions().other_resources(from);
        if !targets.is_empty() {
            send_copies(ctx, "sent", &from.bare(), &targets, stanza);
        }
        Ok(())
    }

    fn user_receive(&self, ctx: &ModuleCtx, jid: &FullJid, state: &mut SessionState, stanza: &Element) -> Receive {
        if StanzaKind::of(stanza) != Some(StanzaKind::Message) {
            return Receive::Deliver;
        }
        if is_copy(stanza) {
            let from = stanza.attr("from").and_then(|f| parse_jid(f).ok());
            if from.as_ref() == Some(&Jid::from(jid.bare())) {
                // One of our copies: for this resource only, and only if it asked.
                let for_me = stanza.attr("to").and_then(|t| parse_jid(t).ok()) == Some(Jid::from(jid.clone()));
                return if state.get::<CarbonsEnabled>().is_some() && for_me {
                    Receive::Deliver
                } else {
                    Receive::Drop
                };
            }
        }
        // Copies go to the account's other resources: nothing to do without any.
        if !eligible(stanza) || ctx.router.sessions().other_resources(jid).is_empty() {
            return Receive::Deliver;
        }
        let from = stanza.attr("from").and_then(|f| parse_jid(f).ok());
        let from_elsewhere = from.as_ref().is_some_and(|f| !f.same_bare(jid));
        if from_elsewhere && eligible(stanza) && !delivered_from_storage(ctx, stanza) {
            let targets = received_targets(ctx, jid, stanza);
            send_copies(ctx, "received", &jid.bare(), &targets, stanza);
        }
        Receive::Deliver
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn el(xml: &str) -> Element {
        crate::ext::util::parse_stored(xml).unwrap()
    }

    #[test]
    fn eligibility_rules() {
        let cases = [
            ("<message type='chat'><body>hi</body></message>", true),
            ("<message type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>", true),
            ("<message type='chat'/>", true),
            ("<message><body>hi</body></message>", true),
            ("<message type='normal'><body>hi</body></message>", true),
            ("<message><received xmlns='urn:xmpp:receipts' id='x'/></message>", true),
            ("<message><displayed xmlns='urn:xmpp:chat-markers:0' id='x'/></message>", true),
            ("<message><active xmlns='http://jabber.org/protocol/chatstates'/></message>", true),
            ("<message><x xmlns='jabber:x:oob'><url>u</url></x></message>", false),
            ("<message/>", false),
            ("<message type='groupchat'><body>hi</body></message>", false),
            ("<message type='headline'><body>hi</body></message>", false),
            ("<message type='error'><body>hi</body></message>", false),
            ("<message type='chat'><body>pm</body><x xmlns='http://jabber.org/protocol/muc#user'/></message>", false),
            ("<message type='chat'><body>hi</body><private xmlns='urn:xmpp:carbons:2'/></message>", false),
            ("<message type='chat'><body>hi</body><no-copy xmlns='urn:xmpp:hints'/></message>", false),
            (
                "<message type='chat'><sent xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'>\
                 <message type='chat'><body>hi</body></message></forwarded></sent></message>",
                false,
            ),
            (
                "<message type='chat'><received xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'>\
                 <message type='chat'><body>hi</body></message></forwarded></received></message>",
                false,
            ),
            ("<presence/>", false),
            ("<iq type='get' id='1'/>", false),
        ];
        for (xml, expect) in cases {
            assert_eq!(eligible(&el(xml)), expect, "{xml}");
        }
    }

    #[test]
    fn copies_wrap_the_original() {
        let owner = meerkat_xmpp::jid::parse_bare("romeo@montague.example").unwrap();
        let to = meerkat_xmpp::jid::parse_full("romeo@montague.example/home").unwrap();
        let original = el("<message from='juliet@capulet.example/balcony' to='romeo@montague.example/garden' \
             type='chat'><body>hi</body></message>");
        let copy = wrap("received", &owner, &to, &original);
        assert_eq!(
            copy.to_xml(ns::CLIENT),
            "<message from='romeo@montague.example' to='romeo@montague.example/home' type='chat'>\
             <received xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'>\
             <message xmlns='jabber:client' from='juliet@capulet.example/balcony' \
             to='romeo@montague.example/garden' type='chat'><body>hi</body></message>\
             </forwarded></received></message>"
        );
        assert!(is_copy(&copy));
        assert!(!eligible(&copy));
    }
}
