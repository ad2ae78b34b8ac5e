//! Server-to-server streams (RFC 6120) and server dialback (XEP-0220),
//! without IO.
//!
//! Stanzas between servers are in `jabber:server`; [`to_client_ns`] and
//! [`to_server_ns`] move them between that namespace and `jabber:client`,
//! in which the rest of the server handles stanzas.
//!
//! Dialback keys follow XEP-0185: HMAC-SHA256 keyed with the hex SHA-256 of
//! the server's secret, over `receiving ' ' originating ' ' stream id`. Only
//! the server that made a key ever checks it (the receiving server asks the
//! originating domain's authoritative server, which is us for our domains),
//! so the exact recipe matters only between the nodes of one deployment,
//! which share the secret.

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use crate::component::rename_ns;
use crate::element::Element;
use crate::ns;

/// `jabber:server:dialback`, the namespace of `db:result` and `db:verify`.
pub const DIALBACK: &str = "jabber:server:dialback";
/// The stream feature that announces dialback (XEP-0220 §2.2).
pub const DIALBACK_FEATURE: &str = "urn:xmpp:features:dialback";

/// The dialback key for a stream `stream_id` that `receiving` opened for
/// `originating` to authenticate on (XEP-0185 §2).
pub fn dialback_key(secret: &[u8], receiving: &str, originating: &str, stream_id: &str) -> String {
    let hashed = Sha256::digest(secret);
    let key: String = hashed.iter().map(|b| format!("{b:02x}")).collect();
    let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(key.as_bytes()) else {
        // HMAC takes keys of any length.
        return String::new();
    };
    mac.update(receiving.as_bytes());
    mac.update(b" ");
    mac.update(originating.as_bytes());
    mac.update(b" ");
    mac.update(stream_id.as_bytes());
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `given` is the key we would have made; in constant time.
pub fn dialback_key_matches(secret: &[u8], receiving: &str, originating: &str, stream_id: &str, given: &str) -> bool {
    let expected = dialback_key(secret, receiving, originating, stream_id);
    !given.trim().is_empty() && crate::sasl::ct_eq_str(&expected, &given.trim().to_ascii_lowercase())
}

/// A server's stream header: `from` our domain, `to` the peer's, with the
/// dialback namespace declared (peers look for it to offer dialback), and
/// an `id` when we are the receiving side.
pub fn stream_header_xml(from: &str, to: &str, id: Option<&str>) -> String {
    let mut out = String::from(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
         xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback'",
    );
    for (name, value) in [("from", Some(from)), ("to", Some(to)), ("id", id)] {
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            out.push(' ');
            out.push_str(name);
            out.push_str("='");
            crate::element::escape_attr(&mut out, v);
            out.push('\'');
        }
    }
    out.push_str(" version='1.0'>");
    out
}

/// `<db:result from to>key</db:result>` (XEP-0220 §2.1.1), or the answer to
/// one when `valid` is given.
pub fn db_result(from: &str, to: &str, key: Option<&str>, valid: Option<bool>) -> Element {
    let mut el = Element::new("result", DIALBACK);
    el.set_attr("from", from);
    el.set_attr("to", to);
    if let Some(valid) = valid {
        el.set_attr("type", if valid { "valid" } else { "invalid" });
    }
    if let Some(key) = key {
        el.push_text(key);
    }
    el
}

/// `<db:verify from to id>key</db:verify>` (XEP-0220 §2.1.2), or the answer
/// to one when `valid` is given.
pub fn db_verify(from: &str, to: &str, id: &str, key: Option<&str>, valid: Option<bool>) -> Element {
    let mut el = Element::new("verify", DIALBACK);
    el.set_attr("from", from);
    el.set_attr("to", to);
    el.set_attr("id", id);
    if let Some(valid) = valid {
        el.set_attr("type", if valid { "valid" } else { "invalid" });
    }
    if let Some(key) = key {
        el.push_text(key);
    }
    el
}

/// A dialback element ([`db_result`], [`db_verify`]) as it goes on a server
/// stream: with the `db:` prefix that our stream header declares. Some
/// servers (ejabberd) recognise dialback only under that literal prefix,
/// not by its namespace.
pub fn dialback_xml(el: &Element) -> String {
    let mut out = format!("<db:{}", el.name);
    for (k, v) in &el.attrs {
        out.push(' ');
        out.push_str(k);
        out.push_str("='");
        crate::element::escape_attr(&mut out, v);
        out.push('\'');
    }
    let text = el.text();
    if text.is_empty() {
        out.push_str("/>");
    } else {
        out.push('>');
        crate::element::escape_text(&mut out, &text);
        out.push_str("</db:");
        out.push_str(&el.name);
        out.push('>');
    }
    out
}

/// A stanza read from a server's stream, moved into `jabber:client`.
pub fn to_client_ns(el: &mut Element) {
    rename_ns(el, ns::SERVER, ns::CLIENT);
}

/// A stanza on its way to another server, moved into `jabber:server`.
pub fn to_server_ns(el: &mut Element) {
    rename_ns(el, ns::CLIENT, ns::SERVER);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::parser::{Limits, StreamEvent, StreamParser};

    #[test]
    fn keys_are_bound_to_both_domains_the_stream_and_the_secret() {
        let k = dialback_key(b"secret", "b.test", "a.test", "s1");
        assert_eq!(k.len(), 64);
        assert!(dialback_key_matches(b"secret", "b.test", "a.test", "s1", &k.to_ascii_uppercase()));
        assert!(!dialback_key_matches(b"secret", "b.test", "a.test", "s2", &k));
        assert!(!dialback_key_matches(b"secret", "a.test", "b.test", "s1", &k));
        assert!(!dialback_key_matches(b"other", "b.test", "a.test", "s1", &k));
        assert!(!dialback_key_matches(b"secret", "b.test", "a.test", "s1", ""));
        // Python: hmac.new(hashlib.sha256(b'secret').hexdigest().encode(),
        //                  b'b.test a.test s1', hashlib.sha256).hexdigest()
        assert_eq!(k, "7f54cc10b892ea4929484d4182727c9e6bddbccd86d5636b8d6d58c3a41f1edd");
    }

    #[test]
    fn headers_and_dialback_elements_parse_back() {
        let mut p = StreamParser::new(Limits::default());
        p.feed(stream_header_xml("a.test", "b.test", Some("x'1")).as_bytes());
        let Some(StreamEvent::Header(h)) = p.next_event().unwrap() else { panic!("no header") };
        assert_eq!(
            (h.from.as_deref(), h.to.as_deref(), h.id.as_deref()),
            (Some("a.test"), Some("b.test"), Some("x'1"))
        );
        assert_eq!(h.default_ns.as_deref(), Some(ns::SERVER));
        assert_eq!(
            dialback_xml(&db_result("a.test", "b.test", Some("k<"), None)),
            "<db:result from='a.test' to='b.test'>k&lt;</db:result>"
        );
        p.feed(dialback_xml(&db_result("a.test", "b.test", Some("k"), None)).as_bytes());
        let Some(StreamEvent::Stanza(el)) = p.next_event().unwrap() else { panic!("no element") };
        assert!(el.is("result", DIALBACK));
        assert_eq!(el.text(), "k");
        p.feed(dialback_xml(&db_verify("b.test", "a.test", "s1", None, Some(false))).as_bytes());
        let Some(StreamEvent::Stanza(el)) = p.next_event().unwrap() else { panic!("no element") };
        assert!(el.is("verify", DIALBACK));
        assert_eq!(el.attr("type"), Some("invalid"));
        assert_eq!(el.attr("id"), Some("s1"));
    }
}
