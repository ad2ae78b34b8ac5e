//! XEP-0191: Blocking Command (`urn:xmpp:blocking`).
//!
//! # Blocklists
//! A user's blocklist is a set of JIDs (domains, bare or full JIDs) kept in
//! storage ([`BlocklistRepo`]). The client reads it with an IQ-get and changes
//! it with `<block/>` and `<unblock/>` IQ-sets without `to`, answered by the
//! server workers ([`Blocking::iq`]). After every change the server pushes the
//! change to *every* resource of the user; a session writes the push to its
//! client only if the client asked for the blocklist (XEP-0191 §3.3), but
//! always applies it to its own copy of the list.
//!
//! # Enforcement
//! Each session holds the user's blocklist (a [`BlockState`] slot), read
//! at bind and kept current by the pushes (which reach sessions on every node
//! of the cluster), so checking a stanza costs no database access:
//! - a stanza the user sends to a blocked JID is refused with `<not-acceptable/>`
//!   and `<blocked xmlns='urn:xmpp:blocking:errors'/>` ([`blocked_error`]);
//! - a stanza from a blocked JID is dropped (presence, IQ results and errors) or
//!   answered with `<service-unavailable/>` (messages, IQ get/set), so that the
//!   user appears offline ([`refusal`], XEP-0191 §3.5 and XEP-0016 §2.13).
//!
//! What the server handles on the user's behalf (IQs to the bare JID,
//! subscription requests and probes, messages for offline storage, presence
//! broadcast, the incoming archive copy) asks [`Module::blocks`] and
//! [`Module::filter_local`], served from a
//! per-node cache of blocklists. A change invalidates the entry on the node that
//! made it and, through the pushes, on every node where the user has a session;
//! other nodes' entries expire after [`CACHE_TTL`], which bounds how long they
//! may lag behind.
//!
//! Blocking a contact sends them unavailable presence from the user's available
//! resources; unblocking sends them the current presence — both only to contacts
//! that may see the user's presence (subscription `from` or `both`, §3.3, §3.4).

use meerkat_xmpp::jid::Bare as _;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use meerkat_routing::Routed;
use meerkat_storage::{BlocklistRepo, RosterRepo, StorageError, Subscription};
use meerkat_xmpp::element::Element;
use meerkat_xmpp::error::{StanzaError, StanzaErrorCondition, StanzaErrorType};
use meerkat_xmpp::jid::{parse_jid, BareJid, FullJid, Jid};
use meerkat_xmpp::ns;
use meerkat_xmpp::stanza::{IqType, StanzaKind};

use crate::ext::registry::ModuleSpec;
use crate::ext::util::{account_of, send_current_presence, send_unavailable};
use crate::ext::{storage_error, HookSet, IqAnswer, Module, ModuleCtx, Receive, SessionState, Switch, Target};

const NS_BLOCKING: &str = ns::BLOCKING;
const NS_BLOCKING_ERRORS: &str = ns::BLOCKING_ERRORS;
/// Most JIDs one blocklist holds: every session keeps a copy.
pub const MAX_ITEMS: usize = 1000;
/// Longest item, in characters (the MySQL key column is `VARCHAR(255)`).
const MAX_JID_CHARS: usize = 255;
/// Blocklists cached per node for the server workers.
const CACHE_CAPACITY: u64 = 100_000;
/// How long a cached blocklist is trusted on a node where the user has no session.
pub const CACHE_TTL: Duration = Duration::from_secs(60);

/// One user's blocked JIDs, canonical, with the XEP-0191 §6 matching rules.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Blocklist {
    items: BTreeSet<String>,
}

impl Blocklist {
    pub fn new(items: impl IntoIterator<Item = String>) -> Self {
        Blocklist { items: items.into_iter().collect() }
    }

    pub fn items(&self) -> impl Iterator<Item = &str> {
        self.items.iter().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Whether `peer` is blocked: XEP-0191 §6 uses the order of XEP-0016 §2.1, so an
    /// item blocks exactly that full JID, a bare JID with all its resources, a
    /// `domain/resource`, or a domain with everything at it.
    pub fn blocks(&self, peer: &Jid) -> bool {
        if self.items.is_empty() {
            return false;
        }
        let domain = peer.domain().as_str();
        self.items.contains(&peer.to_string())
            || self.items.contains(&peer.bare().to_string())
            || peer.resource().is_some_and(|r| self.items.contains(&format!("{domain}/{}", r.as_str())))
            || self.items.contains(domain)
    }

    /// The list after `change`.
    fn apply(&self, change: &Change) -> Blocklist {
        let mut next = self.clone();
        match change {
            Change::Block(jids) => next.items.extend(jids.iter().cloned()),
            Change::Unblock(jids) => {
                for j in jids {
                    next.items.remove(j);
                }
            }
            Change::UnblockAll => next.items.clear(),
        }
        next
    }
}

/// A change of a blocklist, as requested and as pushed.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Change {
    Block(Vec<String>),
    Unblock(Vec<String>),
    UnblockAll,
}

impl Change {
    /// Reads a `<block/>` or `<unblock/>` element (a request or a push).
    fn parse(el: &Element) -> Result<Change, StanzaErrorCondition> {
        let block = el.is("block", NS_BLOCKING);
        if !block && !el.is("unblock", NS_BLOCKING) {
            return Err(StanzaErrorCondition::BadRequest);
        }
        let mut jids = Vec::new();
        for item in el.elements().filter(|e| e.is("item", NS_BLOCKING)) {
            let raw = item.attr("jid").ok_or(StanzaErrorCondition::JidMalformed)?;
            let jid = parse_jid(raw).map_err(|_| StanzaErrorCondition::JidMalformed)?.to_string();
            if jid.chars().count() > MAX_JID_CHARS {
                return Err(StanzaErrorCondition::NotAcceptable);
            }
            if !jids.contains(&jid) {
                jids.push(jid);
            }
        }
        match (block, jids.is_empty()) {
            // §3.3: a block without items is a bad request.
            (true, true) => Err(StanzaErrorCondition::BadRequest),
            (true, false) => Ok(Change::Block(jids)),
            // §3.5: an unblock without items unblocks everyone.
            (false, true) => Ok(Change::UnblockAll),
            (false, false) => Ok(Change::Unblock(jids)),
        }
    }

    fn element(&self) -> Element {
        let (name, jids): (&str, &[String]) = match self {
            Change::Block(j) => ("block", j),
            Change::Unblock(j) => ("unblock", j),
            Change::UnblockAll => ("unblock", &[]),
        };
        let mut el = Element::new(name, NS_BLOCKING);
        for j in jids {
            el.push_child(Element::new("item", NS_BLOCKING).with_attr("jid", j.clone()));
        }
        el
    }
}

/// The `<error/>` for a stanza the user sends to a blocked JID (XEP-0191 §3.6).
pub fn blocked_error(stanza_ns: &str) -> Element {
    let mut e =
        StanzaError { kind: StanzaErrorType::Cancel, condition: StanzaErrorCondition::NotAcceptable, text: None }
            .to_element(stanza_ns);
    e.push_child(Element::new("blocked", NS_BLOCKING_ERRORS));
    e
}

/// What becomes of a stanza from a blocked JID (XEP-0191 §3.5): presence of any
/// type, IQ results and errors vanish; messages and IQ get/set are answered with
/// `<service-unavailable/>` (the router never answers an error stanza).
pub fn refusal(stanza: &Element) -> Receive {
    match StanzaKind::of(stanza) {
        Some(StanzaKind::Message) => Receive::Bounce(StanzaErrorCondition::ServiceUnavailable),
        Some(StanzaKind::Iq) if IqType::of(stanza).is_some_and(IqType::is_request) => {
            Receive::Bounce(StanzaErrorCondition::ServiceUnavailable)
        }
        _ => Receive::Drop,
    }
}

/// What a session keeps: the user's blocklist, and whether its client asked for it.
#[derive(Debug, Default)]
struct BlockState {
    /// The blocklist as this session enforces it: read at bind, then kept
    /// current by the blocklist pushes every session receives.
    list: Arc<Blocklist>,
    /// XEP-0191 §3.2: the client asked for the blocklist, so it gets the pushes.
    requested: bool,
}

impl ModuleSpec for Blocking {
    const NAME: &'static str = "mod_blocking";
    type Config = Switch;
    fn enabled(cfg: &Switch) -> bool {
        cfg.enabled
    }
    fn build(_cfg: &Switch) -> Arc<dyn Module> {
        Arc::new(Blocking::new())
    }
}

/// The module, with this node's cache of blocklists.
pub struct Blocking {
    cache: moka::sync::Cache<BareJid, Arc<Blocklist>>,
    /// One more each time a cached blocklist is dropped for a change
    /// ([`Module::blocks_generation`]).
    generation: AtomicU64,
}

impl Default for Blocking {
    fn default() -> Self {
        Blocking::new()
    }
}

impl Blocking {
    pub fn new() -> Self {
        Blocking {
            cache: moka::sync::Cache::builder().max_capacity(CACHE_CAPACITY).time_to_live(CACHE_TTL).build(),
            generation: AtomicU64::new(0),
        }
    }

    /// Drops `owner`'s cached blocklist after a change, then counts a
    /// generation: in that order, an answer given from the old list carries
    /// the old generation.
    fn forget(&self, owner: &BareJid) {
        self.cache.invalidate(owner);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// `owner`'s blocklist, from the cache or storage.
    async fn load(&self, ctx: &ModuleCtx, owner: &BareJid) -> Result<Arc<Blocklist>, StorageError> {
        if let Some(list) = self.cache.get(owner) {
            return Ok(list);
        }
        let (user, host) = account_of(&Jid::from(owner.clone()));
        let list = Arc::new(Blocklist::new(ctx.storage.get_blocklist(&host, &user).await?));
        self.cache.insert(owner.clone(), list.clone());
        Ok(list)
    }

    async fn change(&self, ctx: &ModuleCtx, iq: &Routed, payload: &Element) -> IqAnswer {
        let change = Change::parse(payload)?;
        let owner = iq.from.bare();
        let (user, host) = account_of(&iq.from);
        let old = self.load(ctx, &owner).await.map_err(internal)?;
        let result = match &change {
            Change::Block(jids) => {
                let added = jids.iter().filter(|j| !old.items.contains(*j)).count();
                if old.len() + added > MAX_ITEMS {
                    return Err(StanzaErrorCondition::NotAcceptable);
                }
                ctx.storage.block(&host, &user, jids).await
            }
            Change::Unblock(jids) => ctx.storage.unblock(&host, &user, jids).await,
            Change::UnblockAll => ctx.storage.unblock_all(&host, &user).await,
        };
        // Whatever happened, the next reader goes to storage.
        self.forget(&owner);
        result.map_err(internal)?;
        let new = old.apply(&change);
        push(ctx, &owner, &change);
        presence_after_change(ctx, &owner, &old, &new).await;
        Ok(None)
    }
}

fn internal(e: StorageError) -> StanzaErrorCondition {
    storage_error("blocklist storage")(e)
}

/// Sends a blocklist push (XEP-0191 §3.3, §3.4) to every resource of `owner`:
/// sessions keep their copy current with it, and write it to clients that asked
/// for the blocklist.
fn push(ctx: &ModuleCtx, owner: &BareJid, change: &Change) {
    for info in ctx.router.sessions().resources(owner) {
        let iq = Element::new("iq", ns::CLIENT)
            .with_attr("type", "set")
            .with_attr("id", format!("block{:x}", rand::random::<u64>()))
            .with_attr("from", owner.to_string())
            .with_attr("to", info.jid.to_string())
            .with_child(change.element());
        ctx.router.route(Routed { from: Jid::from(owner.clone()), to: Jid::from(info.jid.clone()), stanza: iq });
    }
}

/// Unavailable presence to contacts just blocked, current presence to contacts
/// just unblocked, for those allowed to see the user's presence.
async fn presence_after_change(ctx: &ModuleCtx, owner: &BareJid, old: &Blocklist, new: &Blocklist) {
    let (user, host) = account_of(&Jid::from(owner.clone()));
    let roster = match ctx.storage.get_roster(&host, &user).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, %owner, "roster read failed; no presence sent after a blocklist change");
            return;
        }
    };
    for item in roster.iter().filter(|i| matches!(i.subscription, Subscription::From | Subscription::Both)) {
        let Ok(contact) = meerkat_xmpp::jid::parse_bare(&item.contact) else { continue };
        let peer = Jid::from(contact.clone());
        match (old.blocks(&peer), new.blocks(&peer)) {
            (false, true) => send_unavailable(&ctx.router, owner, &contact),
            (true, false) => send_current_presence(&ctx.router, owner, &contact),
            _ => {}
        }
    }
}

/// Whether the traffic between `owner` and `peer` escapes blocking: the user's
/// own resources and the user's server itself are never blocked.
fn exempt(ctx: &ModuleCtx, owner: &BareJid, peer: &Jid) -> bool {
    peer.bare() == *owner || (peer.node().is_none() && ctx.router.is_local_host(peer.domain().as_str()))
}

/// Whether `owner`'s `list` blocks the traffic with `peer`.
pub fn applies(ctx: &ModuleCtx, list: &Blocklist, owner: &BareJid, peer: &Jid) -> bool {
    list.blocks(peer) && !exempt(ctx, owner, peer)
}

fn is_blocked(ctx: &ModuleCtx, state: &SessionState, owner: &BareJid, peer: &Jid) -> bool {
    state.get::<BlockState>().is_some_and(|s| applies(ctx, &s.list, owner, peer))
}

#[async_trait::async_trait]
impl Module for Blocking {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn hot_hooks(&self) -> HookSet {
        HookSet::USER_SEND_CHECK
            .with(HookSet::USER_RECEIVE)
            .with(HookSet::BLOCKS)
            .with(HookSet::FILTER_LOCAL)
            .with(HookSet::SESSION_OPENING)
    }

    fn iq_namespaces(&self) -> &'static [&'static str] {
        &[NS_BLOCKING]
    }

    fn session_iq_namespaces(&self) -> &'static [&'static str] {
        &[NS_BLOCKING]
    }

    fn disco_features(&self, target: Target) -> &'static [&'static str] {
        if target == Target::Server {
            &[NS_BLOCKING]
        } else {
            &[]
        }
    }

    async fn iq(&self, ctx: &ModuleCtx, target: Target, iq: &Routed, payload: &Element) -> Option<IqAnswer> {
        if payload.ns != NS_BLOCKING {
            return None;
        }
        match target {
            Target::OwnAccount => {}
            // Nobody reads or changes another user's blocklist.
            Target::OtherAccount => return Some(Err(StanzaErrorCondition::Forbidden)),
            // The blocking command is sent without `to` (XEP-0191 §3.2).
            Target::Server => return None,
        }
        Some(match (iq.stanza.attr("type"), payload.name.as_str()) {
            (Some("get"), "blocklist") => {
                let owner = iq.from.bare();
                self.load(ctx, &owner).await.map_err(internal).map(|list| {
                    let mut el = Element::new("blocklist", NS_BLOCKING);
                    for j in list.items() {
                        el.push_child(Element::new("item", NS_BLOCKING).with_attr("jid", j));
                    }
                    Some(el)
                })
            }
            (Some("set"), "block" | "unblock") => self.change(ctx, iq, payload).await,
            _ => Err(StanzaErrorCondition::BadRequest),
        })
    }

    fn blocks_known(&self, ctx: &ModuleCtx, owner: &BareJid, peer: &Jid) -> Option<bool> {
        self.cache.get(owner).map(|list| applies(ctx, &list, owner, peer))
    }

    fn blocks_generation(&self) -> Option<u64> {
        Some(self.generation.load(Ordering::Acquire))
    }

    async fn blocks(&self, ctx: &ModuleCtx, owner: &BareJid, peer: &Jid) -> bool {
        match self.load(ctx, owner).await {
            Ok(list) => applies(ctx, &list, owner, peer),
            Err(e) => {
                tracing::error!(error = %e, %owner, "blocklist read failed; not blocking");
                false
            }
        }
    }

    /// What the server handles for an account, from someone the account
    /// blocks, is refused as the session would refuse it ([`refusal`]).
    async fn filter_local(&self, ctx: &ModuleCtx, r: &Routed) -> Receive {
        let owner = r.to.bare();
        if r.from.bare() == owner || !self.blocks(ctx, &owner, &r.from).await {
            return Receive::Deliver;
        }
        refusal(&r.stanza)
    }

    async fn session_opening(&self, ctx: &ModuleCtx, jid: &FullJid, state: &mut SessionState) {
        let owner = jid.bare();
        let list = match self.load(ctx, &owner).await {
            Ok(list) => list,
            Err(e) => {
                // Refusing the login would be worse than a session that blocks nothing.
                tracing::error!(error = %e, %jid, "blocklist read failed; this session blocks nothing");
                Arc::new(Blocklist::default())
            }
        };
        if !list.is_empty() {
            state.insert(BlockState { list, requested: false });
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
        if payload.is("blocklist", NS_BLOCKING) && iq.attr("type") == Some("get") {
            // §3.2: from now on this client gets the pushes. The server answers the get.
            state.get_or_default::<BlockState>().requested = true;
        }
        None
    }

    fn user_send_check(
        &self,
        ctx: &ModuleCtx,
        state: &SessionState,
        from: &FullJid,
        to: &Jid,
        stanza: &Element,
    ) -> Result<(), Element> {
        if state.get::<BlockState>().is_none_or(|s| s.list.is_empty()) {
            return Ok(());
        }
        if is_blocked(ctx, state, &from.bare(), to) {
            return Err(blocked_error(&stanza.ns));
        }
        Ok(())
    }

    fn user_receive(&self, ctx: &ModuleCtx, jid: &FullJid, state: &mut SessionState, stanza: &Element) -> Receive {
        // Most users block nobody, and most stanzas are no blocklist push:
        // then there is nothing to parse.
        let maybe_push = StanzaKind::of(stanza) == Some(StanzaKind::Iq) && stanza.attr("type") == Some("set");
        if !maybe_push && state.get::<BlockState>().is_none_or(|s| s.list.is_empty()) {
            return Receive::Deliver;
        }
        let owner = jid.bare();
        let from = stanza.attr("from").and_then(|f| parse_jid(f).ok());
        if let Some(change) = pushed_change(stanza, &owner, from.as_ref()) {
            let st = state.get_or_default::<BlockState>();
            st.list = Arc::new(st.list.apply(&change));
            // A push may come from another node: this node's cached copy is stale.
            self.forget(&owner);
            return if st.requested { Receive::Deliver } else { Receive::Drop };
        }
        match from {
            Some(from) if is_blocked(ctx, state, &owner, &from) => refusal(stanza),
            _ => Receive::Deliver,
        }
    }
}

/// The change a blocklist push carries: an IQ-set from the user's own bare JID
/// (only the server sends from there) with `<block/>` or `<unblock/>`.
fn pushed_change(stanza: &Element, owner: &BareJid, from: Option<&Jid>) -> Option<Change> {
    if StanzaKind::of(stanza) != Some(StanzaKind::Iq) || stanza.attr("type") != Some("set") {
        return None;
    }
    if from.is_none_or(|f| *f != *owner) {
        return None;
    }
    let payload = stanza.elements().find(|e| e.ns == NS_BLOCKING)?;
    Change::parse(payload).ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn el(xml: &str) -> Element {
        crate::ext::util::parse_stored(xml).unwrap()
    }

    fn jid(s: &str) -> Jid {
        parse_jid(s).unwrap()
    }

    #[test]
    fn a_change_makes_a_new_generation() {
        let b = Blocking::new();
        let before = b.blocks_generation().unwrap();
        b.forget(&meerkat_xmpp::jid::parse_bare("alice@example.org").unwrap());
        assert_ne!(b.blocks_generation(), Some(before));
    }

    #[test]
    fn matching_rules() {
        let list = Blocklist::new(
            ["romeo@montague.lit", "iago@shakespeare.lit/evil", "example.net", "capulet.lit/nurse"]
                .iter()
                .map(|s| (*s).to_owned()),
        );
        let cases = [
            ("romeo@montague.lit", true),
            ("romeo@montague.lit/orchard", true),
            ("benvolio@montague.lit", false),
            ("iago@shakespeare.lit/evil", true),
            ("iago@shakespeare.lit", false),
            ("iago@shakespeare.lit/good", false),
            ("example.net", true),
            ("anyone@example.net/x", true),
            ("sub.example.net", false),
            ("capulet.lit/nurse", true),
            ("capulet.lit", false),
            ("juliet@capulet.lit/nurse", true),
        ];
        for (peer, expect) in cases {
            assert_eq!(list.blocks(&jid(peer)), expect, "{peer}");
        }
        assert!(!Blocklist::default().blocks(&jid("romeo@montague.lit")));
    }

    #[test]
    fn parses_requests() {
        let block = el("<block xmlns='urn:xmpp:blocking'><item jid='Romeo@Montague.LIT/Home'/><item jid='x.example'/>\
             <item jid='x.example'/></block>");
        assert_eq!(
            Change::parse(&block),
            Ok(Change::Block(vec!["romeo@montague.lit/Home".into(), "x.example".into()])),
            "canonical, deduplicated"
        );
        let cases: &[(&str, Result<Change, StanzaErrorCondition>)] = &[
            ("<block xmlns='urn:xmpp:blocking'/>", Err(StanzaErrorCondition::BadRequest)),
            ("<unblock xmlns='urn:xmpp:blocking'/>", Ok(Change::UnblockAll)),
            ("<unblock xmlns='urn:xmpp:blocking'><item jid='a@b'/></unblock>", Ok(Change::Unblock(vec!["a@b".into()]))),
            ("<block xmlns='urn:xmpp:blocking'><item jid='@nope'/></block>", Err(StanzaErrorCondition::JidMalformed)),
            ("<block xmlns='urn:xmpp:blocking'><item/></block>", Err(StanzaErrorCondition::JidMalformed)),
            ("<blocklist xmlns='urn:xmpp:blocking'/>", Err(StanzaErrorCondition::BadRequest)),
        ];
        for (xml, expect) in cases {
            assert_eq!(&Change::parse(&el(xml)), expect, "{xml}");
        }
        let long = format!("<block xmlns='urn:xmpp:blocking'><item jid='{}@x.example'/></block>", "a".repeat(250));
        assert_eq!(Change::parse(&el(&long)), Err(StanzaErrorCondition::NotAcceptable));
    }

    #[test]
    fn pushes_round_trip_and_apply() {
        let list = Blocklist::new(["a@x".to_owned(), "b@x".to_owned()]);
        let block = Change::Block(vec!["c@x".into()]);
        assert_eq!(Change::parse(&block.element()), Ok(block.clone()));
        let list = list.apply(&block);
        assert_eq!(list.items().collect::<Vec<_>>(), ["a@x", "b@x", "c@x"]);
        let list = list.apply(&Change::Unblock(vec!["a@x".into(), "z@x".into()]));
        assert_eq!(list.items().collect::<Vec<_>>(), ["b@x", "c@x"]);
        assert_eq!(Change::parse(&Change::UnblockAll.element()), Ok(Change::UnblockAll));
        assert!(list.apply(&Change::UnblockAll).is_empty());
    }

    #[test]
    fn only_server_pushes_count() {
        let owner = meerkat_xmpp::jid::parse_bare("juliet@capulet.lit").unwrap();
        let push = el("<iq type='set' id='p'><unblock xmlns='urn:xmpp:blocking'/></iq>");
        assert_eq!(pushed_change(&push, &owner, Some(&jid("juliet@capulet.lit"))), Some(Change::UnblockAll));
        assert_eq!(pushed_change(&push, &owner, Some(&jid("juliet@capulet.lit/balcony"))), None);
        assert_eq!(pushed_change(&push, &owner, Some(&jid("romeo@montague.lit"))), None);
        assert_eq!(pushed_change(&push, &owner, None), None);
        let get = el("<iq type='get' id='p'><blocklist xmlns='urn:xmpp:blocking'/></iq>");
        assert_eq!(pushed_change(&get, &owner, Some(&jid("juliet@capulet.lit"))), None);
    }

    #[test]
    fn refusals_by_kind() {
        let cases = [
            ("<message><body>x</body></message>", Receive::Bounce(StanzaErrorCondition::ServiceUnavailable)),
            (
                "<iq type='get' id='1'><ping xmlns='urn:xmpp:ping'/></iq>",
                Receive::Bounce(StanzaErrorCondition::ServiceUnavailable),
            ),
            (
                "<iq type='set' id='1'><query xmlns='jabber:iq:roster'/></iq>",
                Receive::Bounce(StanzaErrorCondition::ServiceUnavailable),
            ),
            ("<iq type='result' id='1'/>", Receive::Drop),
            ("<iq type='error' id='1'/>", Receive::Drop),
            ("<presence/>", Receive::Drop),
            ("<presence type='subscribe'/>", Receive::Drop),
            ("<presence type='probe'/>", Receive::Drop),
        ];
        for (xml, expect) in cases {
            assert_eq!(refusal(&el(xml)), expect, "{xml}");
        }
        assert_eq!(
            blocked_error(ns::CLIENT).to_xml(ns::CLIENT),
            "<error type='cancel'><not-acceptable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>\
             <blocked xmlns='urn:xmpp:blocking:errors'/></error>"
        );
    }
}
