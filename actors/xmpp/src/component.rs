//! XEP-0114: the Jabber Component Protocol, server side, without IO.
//!
//! A component opens a stream in `jabber:component:accept` naming the domain
//! it wants to serve, the server answers with a stream id, and the component
//! proves that it knows the shared password with `<handshake/>` holding
//! hex(SHA-1(stream id ‖ password)) (§3). Stanzas on the stream are in
//! `jabber:component:accept`; [`to_client_ns`] and [`to_component_ns`]
//! move them between that namespace and `jabber:client`, in which the rest
//! of the server handles stanzas.

use sha1::{Digest, Sha1};

use crate::element::Element;
use crate::ns;

/// hex(SHA-1(stream id ‖ password)), lower case (§3).
pub fn handshake_digest(stream_id: &str, password: &str) -> String {
    let digest = Sha1::digest([stream_id.as_bytes(), password.as_bytes()].concat());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether the `<handshake/>` text the component sent proves the password.
/// Compared in constant time; hex digits in either case are accepted.
pub fn handshake_matches(stream_id: &str, password: &str, given: &str) -> bool {
    let expected = handshake_digest(stream_id, password);
    crate::sasl::ct_eq_str(&expected, &given.trim().to_ascii_lowercase())
}

/// The server's stream header answering a component's (§3): the same
/// domain, and the stream id the handshake is computed over.
pub fn stream_header_xml(domain: &str, id: &str) -> String {
    let mut out = String::from(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' \
         xmlns:stream='http://etherx.jabber.org/streams' from='",
    );
    crate::element::escape_attr(&mut out, domain);
    out.push_str("' id='");
    crate::element::escape_attr(&mut out, id);
    out.push_str("'>");
    out
}

/// A stanza read from a component's stream, moved into `jabber:client`: the
/// stanza itself and every descendant in `jabber:component:accept` (its
/// `<body/>`, `<error/>`, ... inherit the stream's namespace).
pub fn to_client_ns(el: &mut Element) {
    rename_ns(el, ns::COMPONENT, ns::CLIENT);
}

/// A stanza on its way to a component, moved into `jabber:component:accept`.
pub fn to_component_ns(el: &mut Element) {
    rename_ns(el, ns::CLIENT, ns::COMPONENT);
}

/// Moves `el` and every descendant in namespace `from` into `to`.
pub(crate) fn rename_ns(el: &mut Element, from: &str, to: &str) {
    let mut stack = vec![el];
    while let Some(e) = stack.pop() {
        if e.ns == from {
            e.ns = to.to_owned();
        }
        stack.extend(e.elements_mut());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::parser::{Limits, StreamEvent, StreamParser};

    #[test]
    fn digest_is_sha1_hex_of_id_and_password() {
        // Python: hashlib.sha1(b'3BF96D32secret').hexdigest()
        assert_eq!(handshake_digest("3BF96D32", "secret"), "b09ea9b3b7f586be8a08d0a3dd7466f110aeb136");
        assert!(handshake_matches("3BF96D32", "secret", "B09EA9B3B7F586BE8A08D0A3DD7466F110AEB136\n"));
        assert!(!handshake_matches("3BF96D32", "Secret", "b09ea9b3b7f586be8a08d0a3dd7466f110aeb136"));
        assert!(!handshake_matches("3BF96D32", "secret", ""));
    }

    #[test]
    fn stanzas_move_between_the_component_and_client_namespaces() {
        let mut p = StreamParser::new(Limits::default());
        p.feed(
            b"<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams' to='c.x'>\
              <message to='a@x' from='bot@c.x'><body>hi</body><x xmlns='jabber:x:oob'><url>u</url></x></message>",
        );
        assert!(matches!(p.next_event().unwrap(), Some(StreamEvent::Header(_))));
        let Some(StreamEvent::Stanza(mut el)) = p.next_event().unwrap() else { panic!() };
        to_client_ns(&mut el);
        assert!(el.is("message", ns::CLIENT));
        assert!(el.get_child("body", ns::CLIENT).is_some());
        assert!(el.get_child("x", "jabber:x:oob").unwrap().get_child("url", "jabber:x:oob").is_some());
        to_component_ns(&mut el);
        assert_eq!(
            el.to_xml(ns::COMPONENT),
            "<message to='a@x' from='bot@c.x'><body>hi</body><x xmlns='jabber:x:oob'><url>u</url></x></message>"
        );
    }

    #[test]
    fn header_escapes() {
        assert!(stream_header_xml("c.x", "a'b").contains("id='a&apos;b'"));
    }
}
