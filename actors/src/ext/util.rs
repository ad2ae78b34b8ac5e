//! Small helpers every module may use: addresses, stored stanzas, replies,
//! and the presence primitives of RFC 6121 that several modules need.

use meerkat_routing::{Routed, Router};
use meerkat_xmpp::element::Element;
use meerkat_xmpp::error::{error_reply, StanzaErrorCondition};
use meerkat_xmpp::jid::{BareJid, Jid};
use meerkat_xmpp::ns;
use meerkat_xmpp::stanza::iq_result;

use super::IqAnswer;

/// Microseconds since the Unix epoch.
pub fn now_micros() -> i64 {
    // The clock alone: chrono's `Utc::now` builds a calendar date first.
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
    }
}

/// Localpart and domain of an account JID.
pub fn account_of(jid: &Jid) -> (String, String) {
    (jid.node().map(|n| n.as_str().to_owned()).unwrap_or_default(), jid.domain().as_str().to_owned())
}

/// Parses a stanza kept as XML text (offline storage, archives) back into an element.
pub fn parse_stored(xml: &str) -> Option<Element> {
    use meerkat_xmpp::parser::{parse_element, Limits};
    parse_element(xml, Limits { max_stanza_size: xml.len() + 1024, max_depth: 256 }).ok()
}

/// The error reply to `stanza` with this `<error/>` element (RFC 6120 §8.3.1),
/// for conditions that need more than [`error_reply`] writes (an application
/// condition, another type). `None` for an error stanza.
pub fn error_reply_with(stanza: &Element, error: Element) -> Option<Element> {
    let mut reply = error_reply(stanza, StanzaErrorCondition::UndefinedCondition, None)?;
    reply.children.pop();
    reply.push_child(error);
    Some(reply)
}

/// Sends an IQ answer back to the requester. A module whose answer needs
/// more than a payload or a defined condition (XEP-0060's application error
/// conditions) answers with the whole reply: an `<iq/>` in `jabber:client`.
pub fn reply(router: &Router, r: Routed, answer: IqAnswer) {
    match answer {
        Ok(Some(mut whole)) if whole.name == "iq" && whole.ns == ns::CLIENT => {
            whole.set_attr("from", r.to.to_string());
            whole.set_attr("to", r.from.to_string());
            router.route(Routed { from: r.to, to: r.from, stanza: whole });
        }
        Ok(payload) => {
            let mut res = iq_result(&r.stanza, payload);
            res.set_attr("from", r.to.to_string());
            res.set_attr("to", r.from.to_string());
            router.route(Routed { from: r.to, to: r.from, stanza: res });
        }
        Err(cond) => router.bounce(r, cond),
    }
}

/// Routes a subscription stanza of `kind` from `from` (bare) to `to` (bare).
pub fn send_subscription(router: &Router, from: &BareJid, to: &BareJid, kind: &str) {
    let p = Element::new("presence", ns::CLIENT)
        .with_attr("type", kind)
        .with_attr("from", from.to_string())
        .with_attr("to", to.to_string());
    router.route(Routed { from: Jid::from(from.clone()), to: Jid::from(to.clone()), stanza: p });
}

/// Sends the current presence of each available resource of `user` to `to`:
/// the resources answer a probe from `to` with their own last presence.
pub fn send_current_presence(router: &Router, user: &BareJid, to: &BareJid) {
    let probe = Element::new("presence", ns::CLIENT)
        .with_attr("type", "probe")
        .with_attr("from", to.to_string())
        .with_attr("to", user.to_string());
    for info in router.sessions().resources(user) {
        let _ = router.deliver_if_available(&info, probe.clone());
    }
}

/// Sends unavailable presence from each available resource of `user` to `to`.
pub fn send_unavailable(router: &Router, user: &BareJid, to: &BareJid) {
    for info in router.sessions().resources(user) {
        if info.priority.is_some() {
            let p = Element::new("presence", ns::CLIENT)
                .with_attr("type", "unavailable")
                .with_attr("from", info.jid.to_string())
                .with_attr("to", to.to_string());
            router.route(Routed { from: Jid::from(info.jid.clone()), to: Jid::from(to.clone()), stanza: p });
        }
    }
}

/// A XEP-0082 DateTime in UTC with microseconds, so that a stamp read back
/// (as a query's `start`, say) selects that very instant.
pub fn xep0082_micros(micros: i64) -> String {
    let t = chrono::DateTime::from_timestamp_micros(micros).unwrap_or_default();
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// A XEP-0082 DateTime (RFC 3339) as microseconds since the epoch;
/// `bad-request` when it is not one.
pub fn parse_xep0082(s: &str) -> Result<i64, meerkat_xmpp::error::StanzaErrorCondition> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_micros())
        .map_err(|_| meerkat_xmpp::error::StanzaErrorCondition::BadRequest)
}

/// XEP-0082 date-time in UTC with milliseconds.
pub fn xep0082(micros: i64) -> String {
    let t = chrono::DateTime::from_timestamp_micros(micros).unwrap_or_default();
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// The address a client at `ip` is counted under for per-address limits:
/// IPv4 (mapped or not), or the /64 network of an IPv6 address, since one
/// host usually holds a whole /64.
pub fn source_of(ip: std::net::IpAddr) -> std::net::IpAddr {
    use std::net::{IpAddr, Ipv6Addr};
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Makes room in a table of resident actors that holds `max` at most: when
/// it is full, drops the least recently used entry nobody is using. `false`
/// when the table is full and every entry is in use.
pub fn make_room<K: Clone + Eq + std::hash::Hash, V>(
    table: &mut std::collections::HashMap<K, V>,
    max: usize,
    in_use: impl Fn(&V) -> bool,
    last_used: impl Fn(&V) -> std::time::Instant,
) -> bool {
    if table.len() < max {
        return true;
    }
    let lru = table.iter().filter(|(_, v)| !in_use(v)).min_by_key(|(_, v)| last_used(v)).map(|(k, _)| k.clone());
    match lru {
        Some(k) => {
            table.remove(&k);
            true
        }
        None => false,
    }
}
