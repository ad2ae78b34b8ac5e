//! Stream errors (RFC 6120 §4.9) and stanza errors (RFC 6120 §8.3): every
//! defined condition, and the one place that turns them into XML.

use std::fmt;

use crate::element::{escape_text, Element};
use crate::ns;

/// Defines a condition enum together with its wire names, so that the two
/// lists can never drift apart.
macro_rules! conditions {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $var:ident => $s:literal,)* }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vm])* $var,)*
        }

        impl $name {
            /// Every condition, in RFC order.
            pub const ALL: &'static [$name] = &[$($name::$var,)*];

            /// The element name used on the wire.
            pub fn as_str(&self) -> &'static str {
                match self {
                    $($name::$var => $s,)*
                }
            }

            /// Parses a wire name.
            pub fn from_name(s: &str) -> Option<Self> {
                match s {
                    $($s => Some($name::$var),)*
                    _ => None,
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

conditions! {
    /// Stream error conditions, RFC 6120 §4.9.3.
    StreamErrorCondition {
        BadFormat => "bad-format",
        BadNamespacePrefix => "bad-namespace-prefix",
        Conflict => "conflict",
        ConnectionTimeout => "connection-timeout",
        HostGone => "host-gone",
        HostUnknown => "host-unknown",
        ImproperAddressing => "improper-addressing",
        InternalServerError => "internal-server-error",
        InvalidFrom => "invalid-from",
        InvalidNamespace => "invalid-namespace",
        InvalidXml => "invalid-xml",
        NotAuthorized => "not-authorized",
        NotWellFormed => "not-well-formed",
        PolicyViolation => "policy-violation",
        RemoteConnectionFailed => "remote-connection-failed",
        Reset => "reset",
        ResourceConstraint => "resource-constraint",
        RestrictedXml => "restricted-xml",
        SeeOtherHost => "see-other-host",
        SystemShutdown => "system-shutdown",
        UndefinedCondition => "undefined-condition",
        UnsupportedEncoding => "unsupported-encoding",
        UnsupportedFeature => "unsupported-feature",
        UnsupportedStanzaType => "unsupported-stanza-type",
        UnsupportedVersion => "unsupported-version",
    }
}

conditions! {
    /// Stanza error conditions, RFC 6120 §8.3.3.
    StanzaErrorCondition {
        BadRequest => "bad-request",
        Conflict => "conflict",
        FeatureNotImplemented => "feature-not-implemented",
        Forbidden => "forbidden",
        Gone => "gone",
        InternalServerError => "internal-server-error",
        ItemNotFound => "item-not-found",
        JidMalformed => "jid-malformed",
        NotAcceptable => "not-acceptable",
        NotAllowed => "not-allowed",
        NotAuthorized => "not-authorized",
        PolicyViolation => "policy-violation",
        RecipientUnavailable => "recipient-unavailable",
        Redirect => "redirect",
        RegistrationRequired => "registration-required",
        RemoteServerNotFound => "remote-server-not-found",
        RemoteServerTimeout => "remote-server-timeout",
        ResourceConstraint => "resource-constraint",
        ServiceUnavailable => "service-unavailable",
        SubscriptionRequired => "subscription-required",
        UndefinedCondition => "undefined-condition",
        UnexpectedRequest => "unexpected-request",
    }
}

/// Stanza error types, RFC 6120 §8.3.2.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StanzaErrorType {
    /// Retry after providing credentials.
    Auth,
    /// Do not retry (the error cannot be remedied).
    Cancel,
    /// Proceed (the condition was only a warning).
    Continue,
    /// Retry after changing the data sent.
    Modify,
    /// Retry after waiting (the error is temporary).
    Wait,
}

impl StanzaErrorType {
    /// The `type` attribute value.
    pub fn as_str(&self) -> &'static str {
        match self {
            StanzaErrorType::Auth => "auth",
            StanzaErrorType::Cancel => "cancel",
            StanzaErrorType::Continue => "continue",
            StanzaErrorType::Modify => "modify",
            StanzaErrorType::Wait => "wait",
        }
    }

    /// Parses a `type` attribute value.
    pub fn from_name(s: &str) -> Option<Self> {
        Some(match s {
            "auth" => StanzaErrorType::Auth,
            "cancel" => StanzaErrorType::Cancel,
            "continue" => StanzaErrorType::Continue,
            "modify" => StanzaErrorType::Modify,
            "wait" => StanzaErrorType::Wait,
            _ => return None,
        })
    }
}

impl fmt::Display for StanzaErrorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl StanzaErrorCondition {
    /// The error type RFC 6120 §8.3.3 uses for this condition in its
    /// examples (where the RFC allows several, the example's choice wins, so
    /// that we behave like other implementations that followed the RFC).
    pub fn default_type(&self) -> StanzaErrorType {
        use StanzaErrorCondition as C;
        use StanzaErrorType as T;
        match self {
            C::BadRequest => T::Modify,
            C::Conflict => T::Cancel,
            C::FeatureNotImplemented => T::Cancel,
            C::Forbidden => T::Auth,
            C::Gone => T::Cancel,
            C::InternalServerError => T::Cancel,
            C::ItemNotFound => T::Cancel,
            C::JidMalformed => T::Modify,
            C::NotAcceptable => T::Modify,
            C::NotAllowed => T::Cancel,
            C::NotAuthorized => T::Auth,
            C::PolicyViolation => T::Modify,
            C::RecipientUnavailable => T::Wait,
            C::Redirect => T::Modify,
            C::RegistrationRequired => T::Auth,
            C::RemoteServerNotFound => T::Cancel,
            C::RemoteServerTimeout => T::Wait,
            C::ResourceConstraint => T::Wait,
            C::ServiceUnavailable => T::Cancel,
            C::SubscriptionRequired => T::Auth,
            C::UndefinedCondition => T::Modify,
            C::UnexpectedRequest => T::Wait,
        }
    }
}

/// A stream-level error (RFC 6120 §4.9): fatal, the stream is closed after
/// sending it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("stream error: {condition}")]
pub struct StreamError {
    /// The defined condition.
    pub condition: StreamErrorCondition,
    /// Optional human-readable description (§4.9.4).
    pub text: Option<String>,
}

impl StreamError {
    /// An error without text.
    pub fn new(condition: StreamErrorCondition) -> Self {
        StreamError { condition, text: None }
    }

    /// An error with descriptive text.
    pub fn with_text(condition: StreamErrorCondition, text: impl Into<String>) -> Self {
        StreamError { condition, text: Some(text.into()) }
    }

    /// The `<stream:error/>` element, written with the `stream:` prefix since
    /// it is sent inside an open `<stream:stream>` that declared it.
    pub fn to_xml(&self) -> String {
        let mut out = String::with_capacity(128);
        out.push_str("<stream:error><");
        out.push_str(self.condition.as_str());
        out.push_str(" xmlns='");
        out.push_str(ns::STREAMS);
        out.push_str("'/>");
        if let Some(text) = &self.text {
            out.push_str("<text xmlns='");
            out.push_str(ns::STREAMS);
            out.push_str("'>");
            escape_text(&mut out, text);
            out.push_str("</text>");
        }
        out.push_str("</stream:error>");
        out
    }
}

/// A parsed `<error/>` child of a stanza (RFC 6120 §8.3.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StanzaError {
    /// The `type` attribute.
    pub kind: StanzaErrorType,
    /// The defined condition.
    pub condition: StanzaErrorCondition,
    /// Descriptive text, if any.
    pub text: Option<String>,
}

impl StanzaError {
    /// Reads the `<error/>` child of a stanza. Returns `None` if there is no
    /// such child or it lacks a valid type or defined condition.
    pub fn from_stanza(stanza: &Element) -> Option<Self> {
        let err = stanza.get_child("error", &stanza.ns)?;
        let kind = StanzaErrorType::from_name(err.attr("type")?)?;
        let condition = err
            .elements()
            .filter(|e| e.ns == ns::STANZAS && e.name != "text")
            .find_map(|e| StanzaErrorCondition::from_name(&e.name))?;
        let text = err.get_child("text", ns::STANZAS).map(Element::text);
        Some(StanzaError { kind, condition, text })
    }

    /// The `<error/>` element in namespace `stanza_ns`.
    pub fn to_element(&self, stanza_ns: &str) -> Element {
        let mut e = Element::new("error", stanza_ns).with_attr("type", self.kind.as_str());
        e.push_child(Element::new(self.condition.as_str(), ns::STANZAS));
        if let Some(t) = &self.text {
            e.push_child(Element::new("text", ns::STANZAS).with_text(t.as_str()));
        }
        e
    }
}

/// `<error type='..'><cond xmlns=STANZAS/>[<text xmlns=STANZAS>..</text>]</error>`
/// in namespace `stanza_ns`, with the condition's default type.
pub fn error_element(cond: StanzaErrorCondition, text: Option<&str>, stanza_ns: &str) -> Element {
    StanzaError { kind: cond.default_type(), condition: cond, text: text.map(str::to_owned) }.to_element(stanza_ns)
}

/// The error reply to `stanza` (RFC 6120 §8.3.1).
///
/// Returns `None` if `stanza` is itself an error: an entity must not answer
/// an error with an error, which is what keeps two servers from bouncing
/// errors at each other forever.
///
/// The reply has the same name, namespace and `id`, swapped `to`/`from` (an
/// absent attribute stays absent), `type='error'`, keeps `xml:lang`, keeps the
/// original children (§8.3.1 allows including the original payload, and it
/// helps the sender correlate) and appends the `<error/>` element.
pub fn error_reply(stanza: &Element, cond: StanzaErrorCondition, text: Option<&str>) -> Option<Element> {
    if stanza.attr("type") == Some("error") {
        return None;
    }
    let mut reply = Element::new(stanza.name.as_str(), stanza.ns.as_str());
    if let Some(id) = stanza.attr("id") {
        reply.set_attr("id", id);
    }
    if let Some(from) = stanza.attr("from") {
        reply.set_attr("to", from);
    }
    if let Some(to) = stanza.attr("to") {
        reply.set_attr("from", to);
    }
    reply.set_attr("type", "error");
    if let Some(lang) = stanza.attr("xml:lang") {
        reply.set_attr("xml:lang", lang);
    }
    reply.children = stanza.children.clone();
    reply.push_child(error_element(cond, text, &stanza.ns));
    Some(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for c in StreamErrorCondition::ALL {
            assert_eq!(StreamErrorCondition::from_name(c.as_str()), Some(*c));
        }
        for c in StanzaErrorCondition::ALL {
            assert_eq!(StanzaErrorCondition::from_name(c.as_str()), Some(*c));
        }
        assert_eq!(StreamErrorCondition::ALL.len(), 25);
        assert_eq!(StanzaErrorCondition::ALL.len(), 22);
        assert_eq!(StreamErrorCondition::NotWellFormed.as_str(), "not-well-formed");
        assert_eq!(StanzaErrorCondition::JidMalformed.as_str(), "jid-malformed");
        assert_eq!(StreamErrorCondition::from_name("nope"), None);
    }

    #[test]
    fn default_types() {
        let cases = [
            (StanzaErrorCondition::BadRequest, "modify"),
            (StanzaErrorCondition::Forbidden, "auth"),
            (StanzaErrorCondition::ItemNotFound, "cancel"),
            (StanzaErrorCondition::RecipientUnavailable, "wait"),
            (StanzaErrorCondition::ServiceUnavailable, "cancel"),
            (StanzaErrorCondition::UnexpectedRequest, "wait"),
        ];
        for (c, t) in cases {
            assert_eq!(c.default_type().as_str(), t, "{c}");
        }
    }

    #[test]
    fn stream_error_xml() {
        assert_eq!(
            StreamError::new(StreamErrorCondition::NotWellFormed).to_xml(),
            "<stream:error><not-well-formed xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>"
        );
        assert_eq!(
            StreamError::with_text(StreamErrorCondition::PolicyViolation, "a < b").to_xml(),
            "<stream:error><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>\
             <text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>a &lt; b</text></stream:error>"
        );
    }

    #[test]
    fn error_element_xml() {
        let e = error_element(StanzaErrorCondition::ItemNotFound, Some("gone & lost"), ns::CLIENT);
        assert_eq!(
            e.to_xml(ns::CLIENT),
            "<error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>\
             <text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>gone &amp; lost</text></error>"
        );
    }

    #[test]
    fn error_reply_cases() {
        let iq = Element::new("iq", ns::CLIENT)
            .with_attr("id", "1")
            .with_attr("from", "a@x/r")
            .with_attr("to", "x")
            .with_attr("type", "get")
            .with_child(Element::new("query", ns::VERSION));
        let reply = error_reply(&iq, StanzaErrorCondition::ServiceUnavailable, None);
        assert_eq!(
            reply.map(|r| r.to_xml(ns::CLIENT)).as_deref(),
            Some(
                "<iq id='1' to='a@x/r' from='x' type='error'><query xmlns='jabber:iq:version'/>\
                 <error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
            )
        );

        // No `from`: the reply has no `to`.
        let msg = Element::new("message", ns::CLIENT)
            .with_attr("to", "b@x")
            .with_child(Element::new("body", ns::CLIENT).with_text("hi"));
        let reply = error_reply(&msg, StanzaErrorCondition::RecipientUnavailable, Some("away"));
        let reply = reply.expect("reply");
        assert_eq!(reply.attr("to"), None);
        assert_eq!(reply.attr("from"), Some("b@x"));
        assert_eq!(reply.attr("id"), None);
        assert!(reply.has_child("body", ns::CLIENT));
        let parsed = StanzaError::from_stanza(&reply).expect("error child");
        assert_eq!(parsed.condition, StanzaErrorCondition::RecipientUnavailable);
        assert_eq!(parsed.kind, StanzaErrorType::Wait);
        assert_eq!(parsed.text.as_deref(), Some("away"));

        // Errors never trigger errors.
        assert_eq!(error_reply(&reply, StanzaErrorCondition::BadRequest, None), None);
    }
}
