//! Stanza addressing and kinds (RFC 6120 §8).
//!
//! A stanza is an [`Element`] named `message`, `presence` or `iq` in the
//! stream's content namespace. These helpers read what the router and the
//! session need off it without building a typed copy.

use crate::element::Element;
use crate::jid::{parse_jid, Jid};
use crate::ns;

/// The three stanza kinds of RFC 6120 §8.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StanzaKind {
    Message,
    Presence,
    Iq,
}

impl StanzaKind {
    /// The kind of `el`, if it is a stanza in a content namespace.
    pub fn of(el: &Element) -> Option<StanzaKind> {
        if el.ns != ns::CLIENT && el.ns != ns::SERVER && el.ns != ns::COMPONENT {
            return None;
        }
        match el.name.as_str() {
            "message" => Some(StanzaKind::Message),
            "presence" => Some(StanzaKind::Presence),
            "iq" => Some(StanzaKind::Iq),
            _ => None,
        }
    }
}

/// The `type` attribute of a message (RFC 6121 §5.2.2); absent means `normal`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageType {
    Chat,
    Error,
    Groupchat,
    Headline,
    Normal,
}

impl MessageType {
    pub fn of(el: &Element) -> MessageType {
        match el.attr("type") {
            Some("chat") => MessageType::Chat,
            Some("error") => MessageType::Error,
            Some("groupchat") => MessageType::Groupchat,
            Some("headline") => MessageType::Headline,
            _ => MessageType::Normal,
        }
    }
}

/// The `type` attribute of a presence (RFC 6121 §4.7.1); absent means available.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PresenceType {
    Available,
    Unavailable,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
    Probe,
    Error,
}

impl PresenceType {
    /// `None` for an unknown type, which RFC 6120 §8.3.3.21 treats as bad-request.
    pub fn of(el: &Element) -> Option<PresenceType> {
        Some(match el.attr("type") {
            None => PresenceType::Available,
            Some("unavailable") => PresenceType::Unavailable,
            Some("subscribe") => PresenceType::Subscribe,
            Some("subscribed") => PresenceType::Subscribed,
            Some("unsubscribe") => PresenceType::Unsubscribe,
            Some("unsubscribed") => PresenceType::Unsubscribed,
            Some("probe") => PresenceType::Probe,
            Some("error") => PresenceType::Error,
            Some(_) => return None,
        })
    }

    /// Subscription-related presence is handled by the server (RFC 6121 §3).
    pub fn is_subscription(self) -> bool {
        matches!(
            self,
            PresenceType::Subscribe | PresenceType::Subscribed | PresenceType::Unsubscribe | PresenceType::Unsubscribed
        )
    }
}

/// The `type` attribute of an IQ (RFC 6120 §8.2.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IqType {
    Get,
    Set,
    Result,
    Error,
}

impl IqType {
    pub fn of(el: &Element) -> Option<IqType> {
        match el.attr("type") {
            Some("get") => Some(IqType::Get),
            Some("set") => Some(IqType::Set),
            Some("result") => Some(IqType::Result),
            Some("error") => Some(IqType::Error),
            _ => None,
        }
    }

    pub fn is_request(self) -> bool {
        matches!(self, IqType::Get | IqType::Set)
    }
}

/// True if the stanza is itself an error, which must never be answered with another
/// error (RFC 6120 §8.3.1); this is what keeps routing loops from forming.
pub fn is_error(el: &Element) -> bool {
    el.attr("type") == Some("error")
}

/// Parses the `to` attribute. `Ok(None)` when absent.
pub fn to_jid(el: &Element) -> Result<Option<Jid>, crate::jid::JidError> {
    el.attr("to").map(parse_jid).transpose()
}

/// Parses the `from` attribute. `Ok(None)` when absent.
pub fn from_jid(el: &Element) -> Result<Option<Jid>, crate::jid::JidError> {
    el.attr("from").map(parse_jid).transpose()
}

/// The payload element of an IQ request: its single child element.
pub fn iq_payload(el: &Element) -> Option<&Element> {
    el.elements().next()
}

/// Builds an IQ result to `req`, with addresses swapped and an optional payload.
pub fn iq_result(req: &Element, payload: Option<Element>) -> Element {
    let mut res = Element::new("iq", req.ns.clone());
    if let Some(id) = req.attr("id") {
        res.set_attr("id", id);
    }
    if let Some(from) = req.attr("from") {
        res.set_attr("to", from);
    }
    if let Some(to) = req.attr("to") {
        res.set_attr("from", to);
    }
    res.set_attr("type", "result");
    if let Some(p) = payload {
        res.push_child(p);
    }
    res
}

/// True if the message carries something a user would want stored offline
/// (RFC 6121 §8.5.2 leaves it to policy; chat states alone are not worth it).
pub fn has_storable_content(el: &Element) -> bool {
    el.elements().any(|c| {
        c.name == "body"
            || c.name == "subject"
            || (c.name != "thread"
                && c.ns != ns::CLIENT
                && c.name != "active"
                && c.name != "composing"
                && c.name != "paused"
                && c.name != "inactive"
                && c.name != "gone")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_types() {
        let m = Element::new("message", ns::CLIENT).with_attr("type", "chat");
        assert_eq!(StanzaKind::of(&m), Some(StanzaKind::Message));
        assert_eq!(MessageType::of(&m), MessageType::Chat);
        let p = Element::new("presence", ns::CLIENT).with_attr("type", "bogus");
        assert_eq!(PresenceType::of(&p), None);
        let x = Element::new("message", "urn:other");
        assert_eq!(StanzaKind::of(&x), None);
    }

    #[test]
    fn iq_result_swaps_addresses() {
        let req = Element::new("iq", ns::CLIENT)
            .with_attr("id", "1")
            .with_attr("from", "a@x/r")
            .with_attr("to", "x")
            .with_attr("type", "get");
        let res = iq_result(&req, None);
        assert_eq!(res.attr("to"), Some("a@x/r"));
        assert_eq!(res.attr("from"), Some("x"));
        assert_eq!(res.attr("type"), Some("result"));
        assert_eq!(res.attr("id"), Some("1"));
    }

    #[test]
    fn chat_state_only_is_not_storable() {
        let cs = Element::new("message", ns::CLIENT)
            .with_child(Element::new("composing", "http://jabber.org/protocol/chatstates"));
        assert!(!has_storable_content(&cs));
        let body = Element::new("message", ns::CLIENT).with_child(Element::new("body", ns::CLIENT).with_text("hi"));
        assert!(has_storable_content(&body));
    }
}
