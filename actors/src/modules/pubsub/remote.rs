//! What PEP knows of clients' entity capabilities (XEP-0115): the
//! `+notify` nodes of each caps `ver` it has checked, shared by every
//! session and contact that announces the same `ver`; and, per local
//! account, the resources of its contacts on other servers whose available
//! presence reached the account's sessions on this node, with their caps.
//!
//! A PEP event for a contact on another server goes to each of its
//! resources whose caps ask for the node (XEP-0163 §4.3.1), as a local
//! contact's sessions keep only the events their client asked for. A caps
//! answer is trusted for its `ver` only when it hashes to it (§5.4), so a
//! client cannot change what others are sent.
//!
//! Everything here is bounded; entries of an account go when its last
//! session on this node ends (its contacts' presence no longer reaches it).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meerkat_xmpp::element::Element;
use meerkat_xmpp::ns;

/// Caps `ver`s whose `+notify` nodes are kept, at most.
const MAX_CAPS: usize = 10_000;
/// Local accounts whose contacts' resources are tracked on this node, at most.
const MAX_ACCOUNTS: usize = 100_000;
/// Remote resources tracked per account, at most.
const MAX_PER_ACCOUNT: usize = 1_000;
/// Caps queries out at once, at most.
const MAX_ASKED: usize = 1_000;
/// A caps query not answered in this time may be sent again.
const ASK_AGAIN_AFTER: Duration = Duration::from_secs(60);

/// The prefix of our caps queries' ids; the rest says who asked and what:
/// `pubsub-caps:<member>:<hash>:<node>#<ver>`.
pub const QUERY_ID: &str = "pubsub-caps:";

/// A caps announcement: `node#ver` and the hash that makes `ver`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CapsKey {
    pub key: String,
    pub hash: String,
}

impl CapsKey {
    /// The caps a presence announces (`<c node ver hash/>`), if any.
    pub fn of(presence: &Element) -> Option<CapsKey> {
        let c = presence.get_child("c", ns::CAPS)?;
        let (node, ver) = (c.attr("node")?, c.attr("ver")?);
        Some(CapsKey { key: format!("{node}#{ver}"), hash: c.attr("hash").unwrap_or("sha-1").to_owned() })
    }

    fn ver(&self) -> &str {
        self.key.rsplit_once('#').map_or("", |(_, v)| v)
    }

    /// The `+notify` nodes of a disco#info answer to this announcement, if
    /// the answer hashes to its `ver`.
    pub fn verify(&self, query: &Element) -> Option<HashSet<String>> {
        if meerkat_xmpp::caps::ver(query, &self.hash)?.as_str() != self.ver() {
            return None;
        }
        Some(notify_nodes(query))
    }

    /// The id of a query for these caps, sent from cluster member `member`.
    pub fn query_id(&self, member: u64) -> String {
        format!("{QUERY_ID}{member}:{}:{}", self.hash, self.key)
    }

    /// Who asked and for what, from a query's id.
    pub fn from_query_id(id: &str) -> Option<(u64, CapsKey)> {
        let rest = id.strip_prefix(QUERY_ID)?;
        let (member, rest) = rest.split_once(':')?;
        let (hash, key) = rest.split_once(':')?;
        Some((member.parse().ok()?, CapsKey { key: key.to_owned(), hash: hash.to_owned() }))
    }
}

/// The nodes a disco#info answer asks for with `NODE+notify` features.
pub fn notify_nodes(query: &Element) -> HashSet<String> {
    query
        .elements()
        .filter(|f| f.name == "feature")
        .filter_map(|f| f.attr("var"))
        .filter_map(|v| v.strip_suffix("+notify"))
        .map(str::to_owned)
        .collect()
}

/// A presence from a contact's resource on another server, as it changes
/// what is known of the contact.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    /// Nothing new.
    Same,
    /// The resource is new or announces new caps, already known: it may
    /// want the last items of these nodes.
    Known(Arc<HashSet<String>>),
    /// New caps, not known yet: ask the resource.
    Ask(CapsKey),
}

#[derive(Default)]
struct Inner {
    caps: HashMap<String, Arc<HashSet<String>>>,
    /// Local account (bare) → remote resource (full) → its caps.
    resources: HashMap<String, HashMap<String, CapsKey>>,
    asked: HashMap<String, Instant>,
}

/// The node's view; see the module's doc.
#[derive(Default)]
pub struct Remote {
    inner: Mutex<Inner>,
}

impl Remote {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The `+notify` nodes of these caps, when checked.
    pub fn known(&self, caps: &CapsKey) -> Option<Arc<HashSet<String>>> {
        self.lock().caps.get(&caps.key).cloned()
    }

    /// Keeps the checked `+notify` nodes of `caps`; the resources of
    /// `account`s known here that announce them, each with its account.
    pub fn learned(&self, caps: &CapsKey, nodes: HashSet<String>) -> Vec<(String, String)> {
        let mut inner = self.lock();
        inner.asked.remove(&caps.key);
        if inner.caps.len() >= MAX_CAPS && !inner.caps.contains_key(&caps.key) {
            // Make room: caps are asked again when next seen.
            if let Some(k) = inner.caps.keys().next().cloned() {
                inner.caps.remove(&k);
            }
        }
        inner.caps.insert(caps.key.clone(), Arc::new(nodes));
        inner
            .resources
            .iter()
            .flat_map(|(account, rs)| {
                rs.iter().filter(|(_, c)| c.key == caps.key).map(move |(full, _)| (account.clone(), full.clone()))
            })
            .collect()
    }

    /// Whether a caps query may go out now (none for these caps is out).
    pub fn may_ask(&self, caps: &CapsKey) -> bool {
        let mut inner = self.lock();
        let now = Instant::now();
        inner.asked.retain(|_, at| now.duration_since(*at) < ASK_AGAIN_AFTER);
        if inner.asked.contains_key(&caps.key) || inner.asked.len() >= MAX_ASKED {
            return false;
        }
        inner.asked.insert(caps.key.clone(), now);
        true
    }

    /// Available presence of remote resource `from` (a full JID) reached
    /// `account`; `caps`, what it announced.
    pub fn available(&self, account: &str, from: &str, caps: Option<CapsKey>) -> Seen {
        let mut inner = self.lock();
        let Some(caps) = caps else {
            if let Some(rs) = inner.resources.get_mut(account) {
                rs.remove(from);
            }
            return Seen::Same;
        };
        if !inner.resources.contains_key(account) && inner.resources.len() >= MAX_ACCOUNTS {
            return Seen::Same;
        }
        let rs = inner.resources.entry(account.to_owned()).or_default();
        if rs.get(from) == Some(&caps) {
            return Seen::Same;
        }
        if !rs.contains_key(from) && rs.len() >= MAX_PER_ACCOUNT {
            return Seen::Same;
        }
        rs.insert(from.to_owned(), caps.clone());
        match inner.caps.get(&caps.key) {
            Some(nodes) => Seen::Known(nodes.clone()),
            None => Seen::Ask(caps),
        }
    }

    /// Remote resource `from` went unavailable.
    pub fn unavailable(&self, account: &str, from: &str) {
        let mut inner = self.lock();
        if let Some(rs) = inner.resources.get_mut(account) {
            rs.remove(from);
            if rs.is_empty() {
                inner.resources.remove(account);
            }
        }
    }

    /// The account has no session on this node any more.
    pub fn account_gone(&self, account: &str) {
        self.lock().resources.remove(account);
    }

    /// The resources of `contacts` (bare JIDs) known to `account` whose
    /// caps ask for `node`.
    pub fn interested(&self, account: &str, contacts: &[String], node: &str) -> Vec<String> {
        let inner = self.lock();
        let Some(rs) = inner.resources.get(account) else { return Vec::new() };
        rs.iter()
            .filter(|(full, _)| {
                let bare = full.split_once('/').map_or(full.as_str(), |(b, _)| b);
                contacts.iter().any(|c| c == bare)
            })
            .filter(|(_, caps)| inner.caps.get(&caps.key).is_some_and(|nodes| nodes.contains(node)))
            .map(|(full, _)| full.clone())
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn caps(ver: &str) -> CapsKey {
        CapsKey { key: format!("urn:example#{ver}"), hash: "sha-1".into() }
    }

    #[test]
    fn resources_get_events_only_for_checked_caps_that_ask_for_the_node() {
        let r = Remote::default();
        let contacts = vec!["bob@remote.example".to_owned()];
        assert_eq!(r.available("alice@here", "bob@remote.example/phone", Some(caps("v1"))), Seen::Ask(caps("v1")));
        assert!(r.may_ask(&caps("v1")));
        assert!(!r.may_ask(&caps("v1")), "one query per caps at a time");
        // Not known yet: nobody is interested.
        assert!(r.interested("alice@here", &contacts, "urn:tune").is_empty());
        let waiting = r.learned(&caps("v1"), ["urn:tune".to_owned()].into());
        assert_eq!(waiting, vec![("alice@here".to_owned(), "bob@remote.example/phone".to_owned())]);
        assert_eq!(r.interested("alice@here", &contacts, "urn:tune"), vec!["bob@remote.example/phone".to_owned()]);
        assert!(r.interested("alice@here", &contacts, "urn:mood").is_empty());
        // Only contacts the publisher lets in.
        assert!(r.interested("alice@here", &["carol@remote.example".to_owned()], "urn:tune").is_empty());
        // The same caps elsewhere are known at once.
        assert!(matches!(r.available("alice@here", "bob@remote.example/pc", Some(caps("v1"))), Seen::Known(_)));
        assert_eq!(r.available("alice@here", "bob@remote.example/pc", Some(caps("v1"))), Seen::Same);
        // Gone, or no caps any more: no events.
        r.unavailable("alice@here", "bob@remote.example/phone");
        r.available("alice@here", "bob@remote.example/pc", None);
        assert!(r.interested("alice@here", &contacts, "urn:tune").is_empty());
    }

    #[test]
    fn an_answer_is_trusted_only_for_the_ver_it_hashes_to() {
        let query = meerkat_xmpp::parser::parse_element(
            "<query xmlns='http://jabber.org/protocol/disco#info'><identity category='client' type='pc'/>\
             <feature var='urn:tune+notify'/><feature var='urn:other'/></query>",
            meerkat_xmpp::parser::Limits { max_stanza_size: 4096, max_depth: 8 },
        )
        .unwrap();
        let ver = meerkat_xmpp::caps::ver(&query, "sha-1").unwrap();
        let right = CapsKey { key: format!("urn:client#{ver}"), hash: "sha-1".into() };
        assert_eq!(right.verify(&query), Some(["urn:tune".to_owned()].into()));
        let wrong = CapsKey { key: "urn:client#AAAA".into(), hash: "sha-1".into() };
        assert_eq!(wrong.verify(&query), None);
        let other_hash = CapsKey { key: right.key.clone(), hash: "sha-256".into() };
        assert_eq!(other_hash.verify(&query), None);
    }

    #[test]
    fn query_ids_say_who_asked_for_what() {
        let c = caps("ab+/=");
        let id = c.query_id(7);
        assert_eq!(CapsKey::from_query_id(&id), Some((7, c)));
        assert_eq!(CapsKey::from_query_id("pubsub-caps:x:sha-1:n#v"), None);
        assert_eq!(CapsKey::from_query_id("other"), None);
    }
}
