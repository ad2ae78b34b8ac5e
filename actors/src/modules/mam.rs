//! XEP-0313: Message Archive Management (`urn:xmpp:mam:2`) for user archives,
//! paged with XEP-0059 result set management, with XEP-0359 stanza ids.
//!
//! # Archiving
//! A `chat` or `normal` message with a `<body/>` (and no XEP-0334 `<no-store/>` or
//! `<no-permanent-store/>` hint) is archived once in the sender's archive
//! (outgoing) and once in the archive of a local recipient (incoming), whether the
//! recipient is online, offline (offline storage) or on another node.
//!
//! Both copies are taken where the message enters the server: in the sender's
//! session, through the [`Module::user_send_message`] hook, before routing. That
//! is the one place that sees each message exactly once, on exactly one node of
//! the cluster. Delivery is not: a message to a bare JID is copied to every
//! resource of equal priority, a closing session hands its mailbox back to the
//! router, and another node may deliver it or store it offline — archiving there
//! would need de-duplication across nodes. The hook also assigns the recipient's
//! archive id, so the delivered copy already carries its
//! `<stanza-id by='recipient@host'/>`, whoever delivers it.
//!
//! The hook must not block routing: it only builds the rows and queues them, as an
//! [`ArchiveJob`], on the sender's shard of the server workers (bounded queues).
//! A shard writes the archive jobs it finds queued together in one transaction
//! ([`store`]), so archiving costs one commit per batch, not per message. When the
//! shard's queue is full, the message is refused with `resource-constraint`
//! rather than delivered unarchived, as offline storage does when its queue is
//! full. The incoming copy is written only if the recipient's account exists (an
//! archive holds what its owner would have received: XEP-0313, "Storage and
//! Retrieval Rules") and does not block the sender (XEP-0191).
//!
//! A message from a user of another data center was archived there, in the
//! database all data centers share (global distribution moves stanzas, not data).
//!
//! Timestamps are taken when the message is sent; an archive is ordered by
//! (timestamp, insertion sequence), which storage keeps total and stable. Copies
//! from different senders are written by different shards (or nodes), so one may
//! be stored a few milliseconds after a copy stamped later: a client paging
//! forward from the newest message at that very moment would miss it.
//!
//! Delivery does not wait for the write, so a recipient may hold a message, and
//! its `<stanza-id/>`, before the row is committed. A query therefore first
//! waits for the incoming copies to its owner's archive that this node queued
//! before the query arrived ([`PendingWrites`], at most [`FLUSH_WAIT`]): a
//! message its owner has received is in the results, and its id is a valid RSM
//! `after` or `before` (an unknown one is `item-not-found`). Outgoing copies need
//! no wait: they are written by the owner's own shard, which runs the owner's
//! queries, and the session queues them before it routes anything the client
//! sends later.
//!
//! # Queries
//! Only the owner may query an archive (`forbidden` for anyone else). Results go
//! straight into the requesting session's mailbox, in order, followed by the IQ
//! result with `<fin/>`. Pages hold [`Mam::default_page`] messages (50) unless
//! the client asks for another `max`, at most [`Mam::max_page`] (250).

use meerkat_xmpp::jid::Bare as _;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meerkat_routing::Routed;
use meerkat_storage::{ArchiveDirection, ArchiveQuery, ArchiveRepo, ArchivedMessage};
use meerkat_xmpp::element::Element;
use meerkat_xmpp::error::StanzaErrorCondition;
use meerkat_xmpp::jid::{parse_jid, BareJid, FullJid, Jid};
use meerkat_xmpp::ns;
use meerkat_xmpp::stanza::MessageType;

use crate::ext::registry::ModuleSpec;
use crate::ext::util::{account_of, now_micros, parse_stored, parse_xep0082, xep0082_micros};
use crate::ext::{storage_error, HookSet, IqAnswer, Module, ModuleCtx, ModuleJob, SessionAcc, SessionState, Target};

const NS_MAM: &str = ns::MAM;
const NS_RSM: &str = ns::RSM;
const NS_SID: &str = ns::SID;
const NS_FORWARD: &str = ns::FORWARD;
const NS_HINTS: &str = ns::HINTS;

/// Most archive jobs a server shard writes in one transaction.
pub const MAX_BATCH: usize = 256;

/// Write attempts of one batch when the database is temporarily unavailable.
const WRITE_ATTEMPTS: u32 = 3;

/// Longest a query waits for earlier writes to its archive. They normally take
/// milliseconds, and a write the database refuses gives up sooner; but one that
/// was queued behind the query on the same shard cannot finish first.
pub const FLUSH_WAIT: Duration = Duration::from_secs(3);

/// The module's page limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mam {
    /// Page size when a query gives no `<max/>`.
    pub default_page: u64,
    /// Largest page sent, whatever a query asks (XEP-0313, "Page limits", lets the server cap it).
    pub max_page: u64,
}

impl Default for Mam {
    fn default() -> Self {
        Mam { default_page: 50, max_page: 250 }
    }
}

/// The module: its page limits and the writes it queued.
#[derive(Debug, Default)]
pub struct MamModule {
    limits: Mam,
    pending: Arc<PendingWrites>,
}

/// `[modules.mod_mam]`
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MamConfig {
    /// Archive messages and answer archive queries.
    pub enabled: bool,
    /// Messages per page when a query asks for no size.
    pub default_page_size: u64,
    /// Most messages per page, whatever a query asks.
    pub max_page_size: u64,
}

impl Default for MamConfig {
    fn default() -> Self {
        MamConfig { enabled: true, default_page_size: 50, max_page_size: 250 }
    }
}

impl ModuleSpec for MamModule {
    const NAME: &'static str = "mod_mam";
    type Config = MamConfig;
    fn enabled(cfg: &MamConfig) -> bool {
        cfg.enabled
    }
    fn validate(cfg: &MamConfig) -> Result<(), (&'static str, String)> {
        if cfg.default_page_size == 0 {
            return Err(("default_page_size", "must be at least 1".into()));
        }
        if cfg.max_page_size < cfg.default_page_size {
            return Err(("max_page_size", "must be at least default_page_size".into()));
        }
        Ok(())
    }
    fn build(cfg: &MamConfig) -> Arc<dyn Module> {
        Arc::new(MamModule::new(Mam { default_page: cfg.default_page_size, max_page: cfg.max_page_size }))
    }
}

impl MamModule {
    pub fn new(limits: Mam) -> Self {
        MamModule { limits, pending: Arc::default() }
    }
}

/// Archive jobs queued on the server workers and not finished yet (written,
/// failed or dropped), with the archives they have rows in.
#[derive(Debug, Default)]
pub struct PendingWrites {
    state: Mutex<Pending>,
    finished: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct Pending {
    /// Sequence number of the next job.
    next: u64,
    /// Owner (bare JID) -> sequence numbers of the unfinished jobs with a row in that archive.
    by_owner: HashMap<String, BTreeSet<u64>>,
}

impl PendingWrites {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a job with rows in these archives; it is pending until the guard is dropped.
    fn track(self: &Arc<Self>, owners: Vec<String>) -> PendingGuard {
        let mut state = self.lock();
        let seq = state.next;
        state.next += 1;
        for owner in &owners {
            state.by_owner.entry(owner.clone()).or_default().insert(seq);
        }
        PendingGuard { writes: self.clone(), seq, owners }
    }

    /// Waits until every job registered so far with a row in `owner`'s archive is
    /// finished, or `timeout` passed; later jobs are not waited for. Whether they all finished.
    pub async fn flushed(&self, owner: &str, timeout: Duration) -> bool {
        let horizon = self.lock().next;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Created before the check, so that a job finishing in between wakes it.
            let finished = self.finished.notified();
            let waiting = self.lock().by_owner.get(owner).and_then(|s| s.first().copied()).is_some_and(|s| s < horizon);
            if !waiting {
                return true;
            }
            if tokio::time::timeout_at(deadline, finished).await.is_err() {
                return false;
            }
        }
    }
}

/// An archive job's place among the [`PendingWrites`], given up when dropped.
struct PendingGuard {
    writes: Arc<PendingWrites>,
    seq: u64,
    owners: Vec<String>,
}

impl std::fmt::Debug for PendingGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingGuard").field("seq", &self.seq).field("owners", &self.owners).finish()
    }
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        if self.owners.is_empty() {
            return;
        }
        {
            let mut state = self.writes.lock();
            for owner in &self.owners {
                if let Some(seqs) = state.by_owner.get_mut(owner) {
                    seqs.remove(&self.seq);
                    if seqs.is_empty() {
                        state.by_owner.remove(owner);
                    }
                }
            }
        }
        self.writes.finished.notify_waiters();
    }
}

/// The archive rows of one sent message, for the sender's worker shard.
#[derive(Debug)]
pub struct ArchiveJob {
    /// Bare JID of the sender, whose shard writes the job.
    sender: BareJid,
    /// The copy in the sender's archive; none for a message to oneself, which is
    /// archived once, as incoming.
    outgoing: Option<ArchivedMessage>,
    /// The copy in the local recipient's archive, written if that account exists.
    incoming: Option<ArchivedMessage>,
    /// Pending until the job is finished; queries of the incoming copy's archive wait for it.
    pending: PendingGuard,
}

/// Archive jobs found queued one after another on a shard, written together
/// in one transaction ([`store`]); the first one's sender names the shard.
#[derive(Debug)]
struct ArchiveBatch(Vec<ArchiveJob>);

#[async_trait::async_trait]
impl ModuleJob for ArchiveBatch {
    fn shard_key(&self) -> String {
        self.0.first().map(|j| j.sender.to_string()).unwrap_or_default()
    }

    fn absorb(&mut self, mut next: Box<dyn ModuleJob>) -> Option<Box<dyn ModuleJob>> {
        if self.0.len() >= MAX_BATCH {
            return Some(next);
        }
        // Only archive jobs join the batch; any other job is handed back, and
        // runs after the batch, so queue order holds.
        match next.as_any_mut().downcast_mut::<ArchiveBatch>() {
            Some(batch) => {
                self.0.append(&mut batch.0);
                None
            }
            None => Some(next),
        }
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }

    async fn run(self: Box<Self>, ctx: &ModuleCtx) {
        store(ctx, self.0).await
    }
}

/// Messages written to archives, and messages that could not be (metrics).
static ARCHIVED: AtomicU64 = AtomicU64::new(0);
static NOT_ARCHIVED: AtomicU64 = AtomicU64::new(0);

#[async_trait::async_trait]
impl Module for MamModule {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn metrics(&self) -> Vec<crate::ext::Metric> {
        use crate::ext::Metric;
        vec![
            Metric::counter("meerkat_mam_archived_total", &ARCHIVED),
            Metric::counter("meerkat_mam_not_archived_total", &NOT_ARCHIVED),
        ]
    }

    fn hot_hooks(&self) -> HookSet {
        HookSet::USER_SEND_MESSAGE
    }

    fn iq_namespaces(&self) -> &'static [&'static str] {
        &[NS_MAM]
    }

    fn disco_features(&self, target: Target) -> &'static [&'static str] {
        if target == Target::OwnAccount {
            &[NS_MAM, NS_SID]
        } else {
            &[]
        }
    }

    fn user_send_message(
        &self,
        ctx: &ModuleCtx,
        _state: &mut SessionState,
        from: &FullJid,
        to: &Jid,
        stanza: &mut Element,
        acc: &mut SessionAcc,
    ) -> Result<(), StanzaErrorCondition> {
        if to.node().is_none() && ctx.router.is_local_host(to.domain().as_str()) {
            // Addressed to the server itself: nothing a conversation archive keeps.
            return Ok(());
        }
        let recipient = local_account(ctx, to);
        if let Some(r) = &recipient {
            // XEP-0359 security considerations: only we may claim an id in this
            // user's archive.
            strip_stanza_ids(stanza, r);
        }
        if !archivable(stanza) {
            return Ok(());
        }
        let now = now_micros();
        let sender = from.bare();
        let self_message = recipient.as_ref() == Some(&sender);
        let outgoing = (!self_message)
            .then(|| row(&sender, new_id(now), now, to, ArchiveDirection::Outgoing, stanza.to_xml(ns::CLIENT)));
        let mut owners = Vec::new();
        let incoming = recipient.map(|r| {
            owners.push(r.to_string());
            let id = new_id(now);
            stanza.push_child(
                Element::new("stanza-id", NS_SID).with_attr("id", id.clone()).with_attr("by", r.to_string()),
            );
            row(&r, id, now, &Jid::from(from.clone()), ArchiveDirection::Incoming, stanza.to_xml(ns::CLIENT))
        });
        let pending = self.pending.track(owners);
        // The session queues it before routing the message, waiting (and so
        // slowing its client) while the queue is full: nothing goes unarchived.
        acc.jobs.push(Box::new(ArchiveBatch(vec![ArchiveJob { sender, outgoing, incoming, pending }])));
        Ok(())
    }

    async fn iq(&self, ctx: &ModuleCtx, target: Target, iq: &Routed, payload: &Element) -> Option<IqAnswer> {
        if !payload.is("query", NS_MAM) {
            return None;
        }
        match target {
            Target::OwnAccount => {}
            // XEP-0313, "Data privacy": a user archive is its owner's only.
            Target::OtherAccount => return Some(Err(StanzaErrorCondition::Forbidden)),
            // The server itself keeps no archive (no MUC or pubsub archives yet).
            Target::Server => return None,
        }
        Some(match iq.stanza.attr("type") {
            Some("get") => Ok(Some(query_form())),
            _ => match parse_query(payload, self.limits.default_page, self.limits.max_page) {
                Ok(q) => {
                    let owner = iq.from.bare().to_string();
                    if !self.pending.flushed(&owner, FLUSH_WAIT).await {
                        tracing::warn!(%owner, "archive writes still pending after {FLUSH_WAIT:?}; querying anyway");
                    }
                    run_query(ctx, iq, q).await
                }
                Err(cond) => Err(cond),
            },
        })
    }
}

/// The bare JID of `to` if it names an account on one of our hosts.
fn local_account(ctx: &ModuleCtx, to: &Jid) -> Option<BareJid> {
    (to.node().is_some() && ctx.router.is_local_host(to.domain().as_str())).then(|| to.bare())
}

/// Removes every `<stanza-id/>` that claims to come from `owner`'s archive.
fn strip_stanza_ids(stanza: &mut Element, owner: &BareJid) {
    stanza.children.retain(|n| match n {
        meerkat_xmpp::element::Node::Element(e) if e.is("stanza-id", NS_SID) => {
            let by = e.attr("by").unwrap_or_default();
            let claims_owner = match parse_jid(by) {
                Ok(j) => j == *owner,
                Err(_) => by == owner.as_str(),
            };
            !claims_owner
        }
        _ => true,
    });
}

/// XEP-0313, "User Archives": messages of type `normal` or `chat` with a body, unless the
/// sender asked for them not to be stored (XEP-0334).
fn archivable(stanza: &Element) -> bool {
    matches!(MessageType::of(stanza), MessageType::Chat | MessageType::Normal)
        && stanza.has_child("body", &stanza.ns)
        && !stanza.has_child("no-store", NS_HINTS)
        && !stanza.has_child("no-permanent-store", NS_HINTS)
}

fn row(
    owner: &BareJid,
    id: String,
    stamp_micros: i64,
    with: &Jid,
    direction: ArchiveDirection,
    stanza: String,
) -> ArchivedMessage {
    ArchivedMessage {
        domain: owner.domain().as_str().to_owned(),
        user: owner.node().map(|n| n.as_str().to_owned()).unwrap_or_default(),
        id,
        stamp_micros,
        with_jid: with.bare().to_string(),
        with_resource: with.resource().map(|r| r.as_str().to_owned()),
        direction,
        stanza,
    }
}

/// A new archive id: Crockford base32 of the timestamp (64 bits, so ids of one
/// archive roughly sort by time) and 64 random bits (so they are unique and
/// unpredictable, as XEP-0313 requires), 26 characters.
fn new_id(micros: i64) -> String {
    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let v = (u128::try_from(micros).unwrap_or(0) << 64) | u128::from(rand::random::<u64>());
    (0..26).rev().map(|i| char::from(ALPHABET[((v >> (5 * i)) & 31) as usize])).collect()
}

/// Writes queued archive jobs, in one transaction when possible. Runs on a server
/// shard; the jobs are those the shard found queued one after another.
async fn store(ctx: &ModuleCtx, jobs: Vec<ArchiveJob>) {
    let mut exists: HashMap<(String, String), bool> = HashMap::new();
    let mut rows = Vec::with_capacity(jobs.len() * 2);
    // Dropped when this returns, whatever happened to the rows.
    let mut finished = Vec::with_capacity(jobs.len());
    for job in jobs {
        finished.push(job.pending);
        rows.extend(job.outgoing);
        let Some(m) = job.incoming else { continue };
        let key = (m.domain.clone(), m.user.clone());
        let known = match exists.get(&key) {
            Some(e) => *e,
            None => {
                let e = match ctx.accounts.exists(&m.domain, &m.user).await {
                    Ok(e) => e,
                    Err(e) => {
                        // The write will tell whether the database is really gone;
                        // a real user's message is not dropped on a failed read.
                        tracing::warn!(error = %e, "account lookup failed; archiving the incoming copy anyway");
                        true
                    }
                };
                exists.insert(key, e);
                e
            }
        };
        if known && !blocked_sender(ctx, &m).await {
            rows.push(m);
        }
    }
    if rows.is_empty() {
        return;
    }
    let mut attempt = 1;
    loop {
        match ctx.storage.store_archive(&rows).await {
            Ok(()) => {
                ARCHIVED.fetch_add(rows.len() as u64, Ordering::Relaxed);
                return;
            }
            Err(e) if e.is_retryable() && attempt < WRITE_ATTEMPTS => {
                tracing::warn!(error = %e, attempt, "archive write failed; retrying");
                tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                attempt += 1;
            }
            Err(e) if rows.len() > 1 && !e.is_retryable() => {
                // One bad row (say, a JID too long for MySQL's key columns) must not
                // cost the others their place in the archive.
                tracing::warn!(error = %e, rows = rows.len(), "archive batch failed; writing its rows one by one");
                for m in &rows {
                    match ctx.storage.store_archive(std::slice::from_ref(m)).await {
                        Ok(()) => {
                            ARCHIVED.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            NOT_ARCHIVED.fetch_add(1, Ordering::Relaxed);
                            tracing::error!(error = %e, domain = %m.domain, user = %m.user, "message not archived");
                        }
                    }
                }
                return;
            }
            Err(e) => {
                NOT_ARCHIVED.fetch_add(rows.len() as u64, Ordering::Relaxed);
                tracing::error!(error = %e, rows = rows.len(), "archive write failed; messages not archived");
                return;
            }
        }
    }
}

/// Whether the owner of an incoming copy blocks its sender (XEP-0191): the
/// message is refused on delivery, so it is not the owner's to keep either.
async fn blocked_sender(ctx: &ModuleCtx, m: &ArchivedMessage) -> bool {
    let peer = match &m.with_resource {
        Some(r) => format!("{}/{r}", m.with_jid),
        None => m.with_jid.clone(),
    };
    let (Ok(owner), Ok(peer)) = (meerkat_xmpp::jid::parse_bare(&format!("{}@{}", m.user, m.domain)), parse_jid(&peer))
    else {
        return false;
    };
    ctx.hooks.of(owner.domain().as_str()).blocks(ctx, &owner, &peer).await
}

/// What a `<query/>` asks for, checked.
#[derive(Debug, Default, PartialEq, Eq)]
struct MamQuery {
    queryid: Option<String>,
    storage: ArchiveQuery,
}

/// Reads the data form (XEP-0004) and the RSM `<set/>` of a query; the page size
/// is `default_page` unless asked otherwise, and at most `max_page`.
fn parse_query(payload: &Element, default_page: u64, max_page: u64) -> Result<MamQuery, StanzaErrorCondition> {
    if payload.attr("node").is_some() {
        // Reserved for pubsub archives (XEP-0442), which a user archive is not.
        return Err(StanzaErrorCondition::FeatureNotImplemented);
    }
    let mut q = MamQuery {
        queryid: payload.attr("queryid").map(str::to_owned),
        storage: ArchiveQuery { max: default_page, ..Default::default() },
    };
    if let Some(form) = payload.get_child("x", ns::DATA_FORMS) {
        for field in form.elements().filter(|e| e.is("field", ns::DATA_FORMS)) {
            let value = field.get_child("value", ns::DATA_FORMS).map(|v| v.text());
            let value = value.as_deref().map(str::trim).filter(|v| !v.is_empty());
            match field.attr("var") {
                Some("FORM_TYPE") => {
                    if value != Some(NS_MAM) {
                        return Err(StanzaErrorCondition::BadRequest);
                    }
                }
                Some("with") => {
                    if let Some(v) = value {
                        let jid = parse_jid(v).map_err(|_| StanzaErrorCondition::BadRequest)?;
                        q.storage.with_jid = Some(jid.bare().to_string());
                        q.storage.with_resource = jid.resource().map(|r| r.as_str().to_owned());
                    }
                }
                Some("start") => q.storage.start_micros = value.map(parse_xep0082).transpose()?,
                Some("end") => q.storage.end_micros = value.map(parse_xep0082).transpose()?,
                // XEP-0313, "Retrieving form fields": an unknown field is refused.
                Some(_) => return Err(StanzaErrorCondition::FeatureNotImplemented),
                None => return Err(StanzaErrorCondition::BadRequest),
            }
        }
    }
    if let Some(set) = payload.get_child("set", NS_RSM) {
        for e in set.elements().filter(|e| e.ns == NS_RSM) {
            let text = e.text();
            let text = text.trim();
            match e.name.as_str() {
                "max" => q.storage.max = text.parse().map_err(|_| StanzaErrorCondition::BadRequest)?,
                "after" if text.is_empty() => return Err(StanzaErrorCondition::BadRequest),
                "after" => q.storage.after = Some(text.to_owned()),
                "before" => {
                    // An empty <before/> asks for the last page (XEP-0059).
                    q.storage.from_end = true;
                    q.storage.before = (!text.is_empty()).then(|| text.to_owned());
                }
                // Jumping to an index is not offered, as XEP-0059 allows.
                "index" => return Err(StanzaErrorCondition::FeatureNotImplemented),
                _ => {}
            }
        }
    }
    q.storage.max = q.storage.max.min(max_page);
    Ok(q)
}

/// XEP-0313, "Retrieving form fields": the fields a query may use.
fn query_form() -> Element {
    let field =
        |var: &str, kind: &str| Element::new("field", ns::DATA_FORMS).with_attr("var", var).with_attr("type", kind);
    let form = Element::new("x", ns::DATA_FORMS)
        .with_attr("type", "form")
        .with_child(field("FORM_TYPE", "hidden").with_child(Element::new("value", ns::DATA_FORMS).with_text(NS_MAM)))
        .with_child(field("with", "jid-single"))
        .with_child(field("start", "text-single"))
        .with_child(field("end", "text-single"));
    Element::new("query", NS_MAM).with_child(form)
}

/// Sends one page of the requester's archive, then answers with `<fin/>`.
async fn run_query(ctx: &ModuleCtx, iq: &Routed, q: MamQuery) -> IqAnswer {
    let Ok(requester) = iq.from.try_as_full() else {
        return Err(StanzaErrorCondition::BadRequest);
    };
    let (user, host) = account_of(&iq.from);
    let page = match ctx.storage.query_archive(&host, &user, &q.storage).await {
        Ok(Some(page)) => page,
        // XEP-0313, "Paging through results": an unknown after/before id.
        Ok(None) => return Err(StanzaErrorCondition::ItemNotFound),
        Err(e) => return Err(storage_error("archive query")(e)),
    };
    // Straight into the session's mailbox, not through routing: a result that did
    // not fit must not fall back to other resources or offline storage.
    let Some(session) = ctx.router.sessions().get(requester) else {
        return Err(StanzaErrorCondition::RecipientUnavailable);
    };
    let owner = iq.from.bare().to_string();
    for m in &page.messages {
        let Some(original) = parse_stored(&m.stanza) else {
            tracing::error!(id = %m.id, %owner, "an archived message does not parse; skipped");
            continue;
        };
        let mut result = Element::new("result", NS_MAM).with_attr("id", m.id.clone());
        if let Some(qid) = &q.queryid {
            result.set_attr("queryid", qid.clone());
        }
        result.push_child(
            Element::new("forwarded", NS_FORWARD)
                .with_child(Element::new("delay", ns::DELAY).with_attr("stamp", xep0082_micros(m.stamp_micros)))
                .with_child(original),
        );
        let message = Element::new("message", ns::CLIENT)
            .with_attr("from", owner.clone())
            .with_attr("to", requester.to_string())
            .with_attr("id", m.id.clone())
            .with_child(result);
        if ctx.router.deliver_to_session(&session, message).is_err() {
            tracing::warn!(%requester, "session mailbox full during an archive query");
            return Err(StanzaErrorCondition::ResourceConstraint);
        }
    }
    Ok(Some(fin(&page, q.storage.from_end)))
}

/// The IQ result payload: completeness and the RSM summary of the page.
///
/// `<first/>` carries its `index` (optional in XEP-0059) only on a page read
/// forwards. Clients end a walk where `index + items == count`, which marks the
/// set's last page going forwards but holds for the very first page of a walk
/// backwards from the end: slixmpp's result set iterator stopped there. ejabberd
/// and Prosody never send `index`; without it, such a client walks backwards
/// until a page comes back empty, as it does against them.
fn fin(page: &meerkat_storage::ArchivePage, backwards: bool) -> Element {
    let mut set = Element::new("set", NS_RSM);
    if let (Some(first), Some(last)) = (page.first_id(), page.last_id()) {
        let mut f = Element::new("first", NS_RSM).with_text(first);
        if let Some(i) = page.first_index.filter(|_| !backwards) {
            f.set_attr("index", i.to_string());
        }
        set.push_child(f);
        set.push_child(Element::new("last", NS_RSM).with_text(last));
    }
    set.push_child(Element::new("count", NS_RSM).with_text(page.count.to_string()));
    Element::new("fin", NS_MAM).with_attr("complete", if page.complete { "true" } else { "false" }).with_child(set)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A job of another module, queued behind archive jobs.
    struct Other;

    #[async_trait::async_trait]
    impl ModuleJob for Other {
        fn shard_key(&self) -> String {
            "alice@example.org".into()
        }
        fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
            self
        }
        async fn run(self: Box<Self>, _ctx: &ModuleCtx) {}
    }

    fn archive_job(writes: &Arc<PendingWrites>) -> Box<dyn ModuleJob> {
        let sender = meerkat_xmpp::jid::parse_bare("alice@example.org").unwrap();
        let to = parse_jid("bob@example.org").unwrap();
        let outgoing = row(&sender, new_id(1), 1, &to, ArchiveDirection::Outgoing, "<message/>".into());
        let pending = writes.track(Vec::new());
        Box::new(ArchiveBatch(vec![ArchiveJob { sender, outgoing: Some(outgoing), incoming: None, pending }]))
    }

    /// Archive jobs queued one after another become one batch, up to its bound;
    /// any other job is handed back, so it runs after the batch, in queue order.
    #[test]
    fn archive_jobs_batch_up_to_the_bound_and_hand_other_jobs_back() {
        let writes = Arc::new(PendingWrites::default());
        let mut batch = archive_job(&writes);
        assert!(batch.absorb(archive_job(&writes)).is_none(), "an archive job joins the batch");
        let back = batch.absorb(Box::new(Other));
        assert!(back.is_some_and(|mut j| j.as_any_mut().is::<Other>()), "another module's job comes back");
        for _ in 2..MAX_BATCH {
            assert!(batch.absorb(archive_job(&writes)).is_none());
        }
        assert!(batch.absorb(archive_job(&writes)).is_some(), "a full batch takes no more");
        let jobs = batch.as_any_mut().downcast_mut::<ArchiveBatch>().map(|b| b.0.len());
        assert_eq!(jobs, Some(MAX_BATCH));
    }

    fn el(xml: &str) -> Element {
        parse_stored(xml).unwrap()
    }

    fn query(inner: &str) -> Result<MamQuery, StanzaErrorCondition> {
        let iq = el(&format!("<iq type='set' id='1'><query xmlns='urn:xmpp:mam:2' queryid='q1'>{inner}</query></iq>"));
        let payload = iq.elements().next().unwrap();
        parse_query(payload, 50, 250)
    }

    fn form(fields: &str) -> String {
        format!(
            "<x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE' type='hidden'><value>urn:xmpp:mam:2</value></field>{fields}</x>"
        )
    }

    #[test]
    fn parses_forms_and_pages() {
        let q = query("").unwrap();
        assert_eq!(q.queryid.as_deref(), Some("q1"));
        assert_eq!(q.storage, ArchiveQuery { max: 50, ..Default::default() });

        let q = query(&form(
            "<field var='with'><value>Juliet@Capulet.lit/Balcony</value></field>\
             <field var='start'><value>2010-06-07T00:00:00Z</value></field>\
             <field var='end'><value>2010-07-07T13:23:54.123456+02:00</value></field>",
        ))
        .unwrap();
        assert_eq!(q.storage.with_jid.as_deref(), Some("juliet@capulet.lit"));
        assert_eq!(q.storage.with_resource.as_deref(), Some("Balcony"));
        assert_eq!(q.storage.start_micros, Some(1_275_868_800_000_000));
        assert_eq!(q.storage.end_micros, Some(1_278_501_834_123_456));

        let q = query("<set xmlns='http://jabber.org/protocol/rsm'><max>10</max><after>abc</after></set>").unwrap();
        assert_eq!((q.storage.max, q.storage.after.as_deref(), q.storage.from_end), (10, Some("abc"), false));
        let q = query("<set xmlns='http://jabber.org/protocol/rsm'><max>1000</max><before/></set>").unwrap();
        assert_eq!((q.storage.max, q.storage.before, q.storage.from_end), (250, None, true));
        let q = query("<set xmlns='http://jabber.org/protocol/rsm'><before>xyz</before></set>").unwrap();
        assert_eq!((q.storage.before.as_deref(), q.storage.from_end), (Some("xyz"), true));
    }

    #[test]
    fn rejects_bad_queries() {
        use StanzaErrorCondition::{BadRequest, FeatureNotImplemented};
        let cases: &[(&str, StanzaErrorCondition)] = &[
            ("<field var='start'><value>yesterday</value></field>", BadRequest),
            ("<field var='end'><value>2010-07-07</value></field>", BadRequest),
            ("<field var='with'><value>@nobody</value></field>", BadRequest),
            ("<field><value>x</value></field>", BadRequest),
            ("<field var='before-id'><value>x</value></field>", FeatureNotImplemented),
        ];
        for (fields, cond) in cases {
            assert_eq!(query(&form(fields)), Err(*cond), "{fields}");
        }
        let wrong_type = "<x xmlns='jabber:x:data' type='submit'>\
            <field var='FORM_TYPE'><value>urn:xmpp:mam:1</value></field></x>";
        assert_eq!(query(wrong_type), Err(BadRequest));
        let rsm = |inner: &str| query(&format!("<set xmlns='http://jabber.org/protocol/rsm'>{inner}</set>"));
        assert_eq!(rsm("<max>-1</max>"), Err(BadRequest));
        assert_eq!(rsm("<max>ten</max>"), Err(BadRequest));
        assert_eq!(rsm("<after/>"), Err(BadRequest));
        assert_eq!(rsm("<index>3</index>"), Err(FeatureNotImplemented));
    }

    #[test]
    fn what_is_archived() {
        let cases = [
            ("<message type='chat'><body>hi</body></message>", true),
            ("<message><body>hi</body></message>", true),
            ("<message type='normal'><body>hi</body></message>", true),
            ("<message type='groupchat'><body>hi</body></message>", false),
            ("<message type='headline'><body>hi</body></message>", false),
            ("<message type='error'><body>hi</body></message>", false),
            ("<message type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>", false),
            ("<message type='chat'><body>hi</body><no-store xmlns='urn:xmpp:hints'/></message>", false),
            ("<message type='chat'><body>hi</body><no-permanent-store xmlns='urn:xmpp:hints'/></message>", false),
        ];
        for (xml, expect) in cases {
            assert_eq!(archivable(&el(xml)), expect, "{xml}");
        }
    }

    #[test]
    fn strips_only_the_recipients_stanza_ids() {
        let mut m = el("<message><body>x</body>\
             <stanza-id xmlns='urn:xmpp:sid:0' by='Bob@Example.org' id='forged'/>\
             <stanza-id xmlns='urn:xmpp:sid:0' by='other@example.org' id='kept'/>\
             <origin-id xmlns='urn:xmpp:sid:0' id='origin'/></message>");
        let bob = meerkat_xmpp::jid::parse_bare("bob@example.org").unwrap();
        strip_stanza_ids(&mut m, &bob);
        let ids: Vec<&str> = m.elements().filter(|e| e.ns == NS_SID).filter_map(|e| e.attr("id")).collect();
        assert_eq!(ids, ["kept", "origin"]);
    }

    #[test]
    fn ids_are_unique_and_sort_by_time() {
        let a = new_id(1_700_000_000_000_000);
        let b = new_id(1_700_000_000_000_000);
        let c = new_id(1_700_000_000_000_001);
        assert_eq!(a.len(), 26);
        assert_ne!(a, b);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()));
        assert!(a < c && b < c);
    }

    #[tokio::test(start_paused = true)]
    async fn a_query_waits_for_earlier_writes_to_its_archive_only() {
        let writes = Arc::new(PendingWrites::default());
        let short = Duration::from_millis(50);
        assert!(writes.flushed("bob@example.org", short).await, "nothing pending");

        let to_bob = writes.track(vec!["alice@example.org".into(), "bob@example.org".into()]);
        let to_carol = writes.track(vec!["carol@example.org".into()]);
        assert!(writes.flushed("dave@example.org", short).await, "another archive's writes do not count");
        assert!(!writes.flushed("bob@example.org", short).await, "gives up after the timeout");

        // Finishing the write wakes the query.
        let waiting = {
            let writes = writes.clone();
            tokio::spawn(async move { writes.flushed("bob@example.org", Duration::from_secs(30)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        drop(to_bob);
        assert!(waiting.await.unwrap());
        assert!(writes.flushed("alice@example.org", short).await);
        assert!(!writes.flushed("carol@example.org", short).await);
        drop(to_carol);
        assert!(writes.lock().by_owner.is_empty(), "finished jobs leave nothing behind");
    }

    #[tokio::test(start_paused = true)]
    async fn a_query_does_not_wait_for_later_writes() {
        let writes = Arc::new(PendingWrites::default());
        let earlier = writes.track(vec!["bob@example.org".into()]);
        let waiting = {
            let writes = writes.clone();
            tokio::spawn(async move { writes.flushed("bob@example.org", Duration::from_secs(30)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        // A message sent after the query started: the query does not wait for it.
        let later = writes.track(vec!["bob@example.org".into()]);
        drop(earlier);
        assert!(waiting.await.unwrap());
        assert!(!writes.flushed("bob@example.org", Duration::from_millis(20)).await);
        drop(later);
    }

    #[test]
    fn fin_and_form() {
        let page = meerkat_storage::ArchivePage { messages: vec![], first_index: None, count: 7, complete: true };
        assert_eq!(
            fin(&page, false).to_xml(ns::CLIENT),
            "<fin xmlns='urn:xmpp:mam:2' complete='true'>\
             <set xmlns='http://jabber.org/protocol/rsm'><count>7</count></set></fin>"
        );
        let message = |id: &str| meerkat_storage::ArchivedMessage {
            domain: "example.org".into(),
            user: "bob".into(),
            id: id.into(),
            stamp_micros: 0,
            with_jid: "alice@example.org".into(),
            with_resource: None,
            direction: ArchiveDirection::Incoming,
            stanza: "<message/>".into(),
        };
        // The last page of ten: its index is given going forwards only.
        let page = meerkat_storage::ArchivePage {
            messages: vec![message("a"), message("b")],
            first_index: Some(8),
            count: 10,
            complete: false,
        };
        let set = "<first>a</first><last>b</last><count>10</count></set></fin>";
        assert_eq!(
            fin(&page, false).to_xml(ns::CLIENT),
            format!(
                "<fin xmlns='urn:xmpp:mam:2' complete='false'><set xmlns='http://jabber.org/protocol/rsm'>{}",
                set.replace("<first>", "<first index='8'>")
            )
        );
        assert_eq!(
            fin(&page, true).to_xml(ns::CLIENT),
            format!("<fin xmlns='urn:xmpp:mam:2' complete='false'><set xmlns='http://jabber.org/protocol/rsm'>{set}")
        );
        let form = query_form();
        let vars: Vec<&str> =
            form.get_child("x", ns::DATA_FORMS).unwrap().elements().filter_map(|f| f.attr("var")).collect();
        assert_eq!(vars, ["FORM_TYPE", "with", "start", "end"]);
        assert_eq!(xep0082_micros(1_278_501_834_123_456), "2010-07-07T11:23:54.123456Z");
    }
}
