//! Inbox (`erlang-solutions.com:xmpp:inbox:0`, MongooseIM's open extension):
//! one entry per conversation of an account, with its last message, unread
//! count, box and mute, queried and changed by the account's clients.
//!
//! # What changes an inbox
//! A message the user sends is looked at once, where it enters the server
//! ([`Module::user_send_message`], in the sender's session, as MAM does):
//! - if it is storable (chat or normal, with a body or a `<store/>` hint, no
//!   `<no-store/>` hint, not a chat marker, not a forwarded result), it
//!   becomes the last message of the sender's conversation with the
//!   recipient (nothing unread there: the sender wrote last) and, when the
//!   recipient is a local account that exists and does not block the sender,
//!   of the recipient's conversation with the sender, one more unread;
//! - a chat marker (XEP-0333) of a kind in `reset_markers` whose id is the id
//!   of the conversation's last message sets its unread count to 0.
//!
//! The changes are queued as jobs on the owner's shard of the server workers
//! (bounded queues: the sender waits when they are full), which post them to
//! the owner's inbox actor ([`actor`]) without waiting for the write: the
//! actor checks the received side (the account exists and does not block the
//! sender) and writes them to SQL in order, before anything queued after
//! them, queries included.
//!
//! # Queries and actions
//! All of MongooseIM's: the query form, `<inbox/>` queries with the form and
//! RSM paging (cursors `µs/base64(JID)`, as MongooseIM's), conversation
//! properties (`#conversation`: box, archive, read, mute; `<reset/>`),
//! `<empty-bin/>`. A property change is echoed to every resource of the
//! account. The bin is emptied of entries older than `bin_ttl` every
//! `bin_clean_after`.
//!
//! Where this differs from MongooseIM, on purpose:
//! - `<unread-messages/>` and `<active-conversations/>` in `<fin/>` count the
//!   whole inbox (every box but the bin), not only the page returned: they
//!   are what a badge shows;
//! - a new message brings a conversation back from the bin, not only from the
//!   archive (a custom box keeps it, as in MongooseIM);
//! - a missing conversation is `item-not-found`, for a change as for a read;
//! - a query returns at most `max_result_limit` entries (100 by default;
//!   MongooseIM has no limit unless one is set); RSM pages through the rest.

pub mod actor;
pub mod writer;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use meerkat_routing::Routed;
use meerkat_storage::{InboxBoxes, InboxChange, InboxEntry, InboxQuery, InboxTotals};
use meerkat_xmpp::element::Element;
use meerkat_xmpp::error::StanzaErrorCondition;
use meerkat_xmpp::jid::{parse_bare, Bare as _, BareJid, FullJid, Jid};
use meerkat_xmpp::ns;
use meerkat_xmpp::stanza::MessageType;

use crate::ext::registry::ModuleSpec;
use crate::ext::util::{account_of, now_micros, parse_stored, parse_xep0082, xep0082_micros};
use crate::ext::{HookSet, IqAnswer, Module, ModuleCtx, ModuleJob, NodeRequestError, SessionAcc, SessionState, Target};
use actor::{Answer, InboxError, Inboxes, Known, Limits, Op};
use writer::{AsyncWriter, Checks, MessageRef};

const NS_INBOX: &str = ns::INBOX;
const NS_CONV: &str = ns::INBOX_CONVERSATION;
/// The boxes every inbox has.
const RESERVED_BOXES: [&str; 3] = ["inbox", "archive", "bin"];

/// A chat marker (XEP-0333) that may reset a conversation's unread count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Marker {
    Received,
    Displayed,
    Acknowledged,
}

impl Marker {
    fn name(self) -> &'static str {
        match self {
            Marker::Received => "received",
            Marker::Displayed => "displayed",
            Marker::Acknowledged => "acknowledged",
        }
    }
}

/// `[modules.mod_inbox]`
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InboxConfig {
    /// Keep inboxes and answer inbox queries (off unless enabled, as in MongooseIM).
    pub enabled: bool,
    /// `"rdbms"`: every update written through to the node's database;
    /// `"rdbms_async"`: message updates coalesced per conversation and written
    /// in batches (`async_writer`).
    pub backend: String,
    /// The `rdbms_async` backend's writers.
    pub async_writer: AsyncWriterConfig,
    /// Chat markers that set a conversation's unread count to 0 when they
    /// name its last message.
    pub reset_markers: Vec<Marker>,
    /// Boxes besides `inbox`, `archive` and `bin`.
    pub boxes: Vec<String>,
    /// Days a conversation stays in the bin.
    pub bin_ttl: u64,
    /// Hours between two cleanings of the bins.
    pub bin_clean_after: u64,
    /// Most entries a query returns, whatever it asks.
    pub max_result_limit: u64,
    /// Most inbox actors resident on this node.
    pub max_resident: usize,
    /// Seconds an inbox actor stays with nothing to do.
    pub idle_timeout: u64,
    /// Requests an inbox actor holds; senders wait beyond that.
    pub mailbox: usize,
}

impl Default for InboxConfig {
    fn default() -> Self {
        InboxConfig {
            enabled: false,
            backend: "rdbms".into(),
            async_writer: AsyncWriterConfig::default(),
            reset_markers: vec![Marker::Displayed],
            boxes: Vec::new(),
            bin_ttl: 30,
            bin_clean_after: 1,
            max_result_limit: 100,
            max_resident: 10_000,
            idle_timeout: 300,
            mailbox: 64,
        }
    }
}

/// `[modules.mod_inbox.async_writer]` (MongooseIM's `pool_size`, plus how
/// often and how much a writer writes at once).
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AsyncWriterConfig {
    /// Writers, each with its share of the accounts (and one transaction at a time).
    pub pool_size: usize,
    /// Milliseconds between two writes of what waits.
    pub flush_interval: u64,
    /// Most conversations written in one transaction.
    pub batch_size: usize,
}

impl Default for AsyncWriterConfig {
    fn default() -> Self {
        AsyncWriterConfig { pool_size: 2, flush_interval: 200, batch_size: 500 }
    }
}

/// The module.
pub struct Inbox {
    cfg: InboxConfig,
    /// Every box a conversation may be in: the reserved ones, then the configured ones.
    boxes: Vec<String>,
    inboxes: OnceLock<Arc<Inboxes>>,
    housekeeping: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Message updates handed straight to the async writer.
    direct: AtomicU64,
    /// Message updates queued as jobs (checked by the inbox's actor, or sent
    /// to the node that owns the inbox).
    queued: AtomicU64,
}

impl ModuleSpec for Inbox {
    const NAME: &'static str = "mod_inbox";
    const NODE_WIDE: bool = true;
    type Config = InboxConfig;
    fn enabled(cfg: &InboxConfig) -> bool {
        cfg.enabled
    }
    fn validate(cfg: &InboxConfig) -> Result<(), (&'static str, String)> {
        if cfg.backend != "rdbms" && cfg.backend != "rdbms_async" {
            return Err((
                "backend",
                format!("\"{}\" is not a backend; the backends are \"rdbms\" and \"rdbms_async\"", cfg.backend),
            ));
        }
        let w = &cfg.async_writer;
        if w.pool_size == 0 || w.pool_size > 64 || w.batch_size == 0 || w.flush_interval == 0 {
            return Err(("async_writer", "pool_size is 1 to 64, batch_size and flush_interval at least 1".into()));
        }
        for (i, b) in cfg.boxes.iter().enumerate() {
            if b.is_empty() || b.len() > 64 {
                return Err(("boxes", format!("\"{b}\": a box name has 1 to 64 bytes")));
            }
            if b == "all" || RESERVED_BOXES.contains(&b.as_str()) {
                return Err(("boxes", format!("\"{b}\" is reserved (all, inbox, archive, bin)")));
            }
            if cfg.boxes[..i].contains(b) {
                return Err(("boxes", format!("\"{b}\" is listed twice")));
            }
        }
        if cfg.bin_ttl == 0 || cfg.bin_clean_after == 0 {
            return Err(("bin_ttl", "bin_ttl and bin_clean_after must be at least 1".into()));
        }
        if cfg.max_result_limit == 0 {
            return Err(("max_result_limit", "must be at least 1".into()));
        }
        // Each server shard sends to one actor at a time: with this many, an
        // idle one can always make room.
        if cfg.max_resident < 256 {
            return Err(("max_resident", "must be at least 256".into()));
        }
        if cfg.idle_timeout == 0 || cfg.mailbox == 0 {
            return Err(("idle_timeout", "idle_timeout and mailbox must be at least 1".into()));
        }
        Ok(())
    }
    fn build(cfg: &InboxConfig) -> Arc<dyn Module> {
        Arc::new(Inbox::new(cfg.clone()))
    }
}

/// Reads again whether an account exists, before what this node knows of it
/// expires ([`actor::Known::Refresh`]).
struct RefreshJob {
    owner: BareJid,
    inboxes: Arc<Inboxes>,
}

#[async_trait::async_trait]
impl ModuleJob for RefreshJob {
    fn shard_key(&self) -> String {
        self.owner.to_string()
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }

    async fn run(self: Box<Self>, _ctx: &ModuleCtx) {
        let (user, domain) = account_of(&Jid::from(self.owner.clone()));
        self.inboxes.refresh_account(&domain, &user).await;
    }
}

/// A change to one account's inbox, run on the owner's server shard.
#[derive(Debug)]
struct InboxJob {
    owner: BareJid,
    op: Op,
    /// For a received message: its sender, whom the owner must not block.
    from: Option<Jid>,
    inboxes: Arc<Inboxes>,
}

#[async_trait::async_trait]
impl ModuleJob for InboxJob {
    fn shard_key(&self) -> String {
        self.owner.to_string()
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }

    async fn run(self: Box<Self>, ctx: &ModuleCtx) {
        let (user, domain) = account_of(&Jid::from(self.owner.clone()));
        let key = self.owner.to_string();
        let node = ctx.owner_node(&key);
        if node == ctx.router.node() {
            // Queued behind this owner's earlier updates, ahead of anything the
            // owner asks later; checked and written by the actor without holding
            // this shard.
            self.inboxes.post(&domain, &user, self.op, self.from).await;
            return;
        }
        // Another node owns the inbox: sent there, and this shard waits until
        // it is written, so that this owner's updates stay in order. Sent
        // again, to whoever owns it then, while no node says it is written;
        // its id makes it written once however often it is sent.
        let id = uuid_like();
        let wire = Wire::Update {
            domain: domain.clone(),
            user: user.clone(),
            op: self.op.clone(),
            sender: self.from.as_ref().map(|j| j.to_string()),
            id: id.clone(),
        };
        let deadline = tokio::time::Instant::now() + UPDATE_DEADLINE;
        let mut node = node;
        let mut pause = Duration::from_millis(50);
        loop {
            if node == ctx.router.node() {
                if let Err(e) = self.inboxes.apply(&domain, &user, self.op, self.from, id).await {
                    tracing::error!(error = ?e, %key, "inbox update not written");
                }
                return;
            }
            match ask(ctx, node, &wire).await {
                Ok(_) => return,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::warn!(error = %e, node = node.0, %key, "inbox update not taken by its owner; sending it again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                Err(e) => {
                    tracing::error!(error = %e, node = node.0, %key, "inbox update lost: no owner took it in {UPDATE_DEADLINE:?}");
                    return;
                }
            }
            node = ctx.owner_node(&key);
        }
    }
}

/// How long an update is sent again to the owner of its inbox before it is given up (and logged).
const UPDATE_DEADLINE: Duration = Duration::from_secs(120);
/// How long one request to another node waits for its answer.
const NODE_TIMEOUT: Duration = Duration::from_secs(5);

/// What one node asks of the owner of an inbox (JSON over the cluster transport).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
enum Wire {
    /// Write an update, once whatever how often `id` comes, then say so.
    Update { domain: String, user: String, op: Op, sender: Option<String>, id: String },
    /// Run a request and answer it.
    Call { domain: String, user: String, op: Op },
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
enum WireAnswer {
    Done,
    Answer(Answer),
}

async fn ask(ctx: &ModuleCtx, node: meerkat_cluster::NodeId, wire: &Wire) -> Result<WireAnswer, NodeRequestError> {
    let body = serde_json::to_vec(wire).map_err(|e| NodeRequestError::Refused(node.0, e.to_string()))?;
    let answer = ctx.ask_node(node, Inbox::NAME, body, NODE_TIMEOUT).await?;
    serde_json::from_slice(&answer).map_err(|e| NodeRequestError::Refused(node.0, format!("bad answer: {e}")))
}

impl std::fmt::Debug for Inboxes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inboxes").field("resident", &self.resident()).finish()
    }
}

/// Whether a sent message becomes a conversation's last message (MongooseIM's
/// rules for Inbox: chat or normal, with a body or a `<store/>` hint, and
/// none of `<no-store/>`, a chat marker, a forwarded result, a delay, or a
/// conversation echo).
fn storable(stanza: &Element) -> bool {
    if !matches!(MessageType::of(stanza), MessageType::Chat | MessageType::Normal) {
        return false;
    }
    let mut wanted = false;
    for c in stanza.elements() {
        match (c.ns.as_str(), c.name.as_str()) {
            (ns::HINTS, "no-store") | (ns::CHAT_MARKERS, _) | (_, "result") | (_, "delay") | (NS_CONV, _) => {
                return false
            }
            (ns::HINTS, "store") => wanted = true,
            (n, "body") if n == stanza.ns => wanted = true,
            _ => {}
        }
    }
    wanted
}

impl Inbox {
    fn new(cfg: InboxConfig) -> Self {
        let boxes = RESERVED_BOXES.iter().map(|b| (*b).to_owned()).chain(cfg.boxes.iter().cloned()).collect();
        Inbox {
            cfg,
            boxes,
            inboxes: OnceLock::new(),
            housekeeping: Mutex::new(None),
            direct: AtomicU64::new(0),
            queued: AtomicU64::new(0),
        }
    }
    fn inboxes(&self) -> Option<&Arc<Inboxes>> {
        self.inboxes.get()
    }

    /// Hands `op` to the async writer when there is one and this node owns
    /// the inbox of `owner`; `Err(op)` back otherwise (or when it is full).
    #[allow(clippy::result_large_err)]
    fn post_here(&self, ctx: &ModuleCtx, inboxes: &Inboxes, owner: &BareJid, op: Op) -> Result<(), Op> {
        match inboxes.writer() {
            Some(w) if ctx.owner_node(owner.as_str()) == ctx.router.node() => {
                let user = owner.node().map(|n| n.as_str()).unwrap_or_default();
                w.try_post(owner.as_str(), owner.domain().as_str(), user, op)?;
                self.direct.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            _ => Err(op),
        }
    }

    /// An update of the account's own side, which needs no check: taken at
    /// once by the async writer when this node owns the inbox, else queued
    /// as a job.
    fn own_update(&self, ctx: &ModuleCtx, owner: BareJid, op: Op) -> Option<Box<dyn ModuleJob>> {
        let op = self.post_here(ctx, self.inboxes()?, &owner, op).err()?;
        self.job(owner, op, None)
    }

    /// Hands a message update of `account`'s inbox to the async writer when
    /// there is one and this node owns that inbox; whether it took it (and
    /// then counted it).
    #[allow(clippy::too_many_arguments)]
    fn post_direct(
        &self,
        ctx: &ModuleCtx,
        inboxes: &Inboxes,
        account: &str,
        domain: &str,
        user: &str,
        m: MessageRef<'_>,
        checks: Checks<'_>,
    ) -> bool {
        match inboxes.writer() {
            Some(w) if ctx.owner_node(account) == ctx.router.node() => {
                let took = w.post_message(account, domain, user, m, checks);
                if took {
                    self.direct.fetch_add(1, Ordering::Relaxed);
                }
                took
            }
            _ => false,
        }
    }

    /// The update of a local recipient's inbox for a message it is sent:
    /// posted to the writer at once when this node owns that inbox and
    /// knows the checks' answers (the account exists, it does not block the
    /// sender), either kept with the conversation from an earlier message of
    /// this sender or read from memory now; otherwise a job, which the
    /// inbox's actor checks. Either way the writer orders the last message
    /// by its stamp, so an update that took the longer way cannot replace a
    /// later one.
    fn received_update(
        &self,
        ctx: &ModuleCtx,
        inboxes: &Inboxes,
        to: &Jid,
        m: MessageRef<'_>,
        from: &FullJid,
    ) -> Option<Box<dyn ModuleJob>> {
        let (account, domain) = (to.bare_str(), to.domain().as_str());
        let user = to.node().map(|n| n.as_str()).unwrap_or_default();
        let hooks = ctx.hooks.of(domain);
        // Read before the blocklists are: an answer is never newer than it.
        let generation = hooks.blocks_generation();
        let sender = from.as_str();
        if let Some(generation) = generation {
            let checks = Checks::IfKnown { generation, sender };
            if self.post_direct(ctx, inboxes, account, domain, user, m, checks) {
                return None;
            }
        }
        let owner = to.bare();
        let from = Jid::from(from.clone());
        let known = inboxes.known_account(account);
        if known != Known::No && hooks.blocks_known(ctx, &owner, &from) == Some(false) {
            let checks = match generation {
                Some(generation) => Checks::Made { generation, sender },
                None => Checks::None,
            };
            if self.post_direct(ctx, inboxes, account, domain, user, m, checks) {
                // Read again before it expires, so that no message waits for that.
                if known != Known::Refresh {
                    return None;
                }
                return Some(Box::new(RefreshJob { owner, inboxes: self.inboxes()?.clone() }));
            }
        }
        self.job(owner, Op::Message(m.owned()), Some(from))
    }

    /// An update queued for the inbox's actor (or its owning node), counted.
    fn job(&self, owner: BareJid, op: Op, from: Option<Jid>) -> Option<Box<dyn ModuleJob>> {
        let inboxes = self.inboxes()?.clone();
        self.queued.fetch_add(1, Ordering::Relaxed);
        Some(Box::new(InboxJob { owner, op, from, inboxes }))
    }

    /// The marker of a kind in `reset_markers`, with its id.
    fn reset_marker<'a>(&self, stanza: &'a Element) -> Option<&'a str> {
        stanza
            .elements()
            .filter(|c| c.ns == ns::CHAT_MARKERS)
            .find(|c| self.cfg.reset_markers.iter().any(|m| m.name() == c.name))
            .and_then(|c| c.attr("id"))
    }

    /// Runs `op` on the inbox of `owner` where it lives: this node's actor,
    /// or the owning node's (asked once more, of the owner then, if that
    /// node does not answer).
    async fn call(&self, ctx: &ModuleCtx, owner: &Jid, op: Op) -> Result<Answer, StanzaErrorCondition> {
        let Some(inboxes) = self.inboxes() else { return Err(StanzaErrorCondition::ServiceUnavailable) };
        let (user, domain) = account_of(owner);
        let key = format!("{user}@{domain}");
        let mut tries = 0;
        loop {
            tries += 1;
            let node = ctx.owner_node(&key);
            if node == ctx.router.node() {
                return inboxes.call(&domain, &user, op).await.map_err(|e| {
                    tracing::error!(error = ?e, %owner, "inbox request failed");
                    match e {
                        InboxError::Storage(e) if e.is_retryable() => StanzaErrorCondition::ResourceConstraint,
                        _ => StanzaErrorCondition::InternalServerError,
                    }
                });
            }
            let wire = Wire::Call { domain: domain.clone(), user: user.clone(), op: op.clone() };
            match ask(ctx, node, &wire).await {
                Ok(WireAnswer::Answer(a)) => return Ok(a),
                Ok(WireAnswer::Done) => return Err(StanzaErrorCondition::InternalServerError),
                Err(e) if tries < 2 && matches!(e, NodeRequestError::Transport(_)) => {
                    tracing::warn!(error = %e, node = node.0, %owner, "inbox owner did not answer; asking again");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, node = node.0, %owner, "inbox request to its owner failed");
                    return Err(match e {
                        NodeRequestError::Transport(_) => StanzaErrorCondition::ResourceConstraint,
                        _ => StanzaErrorCondition::InternalServerError,
                    });
                }
            }
        }
    }

    fn box_option(&self, name: &str) -> Option<String> {
        self.boxes.iter().find(|b| *b == name).cloned()
    }
}

// ------------------------------------------------------------ queries

/// A checked `<inbox/>` query.
#[derive(Debug, PartialEq, Eq)]
struct Query {
    queryid: String,
    storage: InboxQuery,
}

fn bool_value(v: &str) -> Option<bool> {
    match v {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

/// A cursor as MongooseIM writes it: `µs since the epoch/base64(bare JID)`.
fn cursor(e: &InboxEntry) -> String {
    format!("{}/{}", e.stamp_micros, base64::engine::general_purpose::STANDARD.encode(&e.remote_jid))
}

fn parse_cursor(s: &str) -> Result<(i64, String), StanzaErrorCondition> {
    let bad = StanzaErrorCondition::BadRequest;
    let (stamp, jid) = s.split_once('/').ok_or(bad)?;
    let stamp: i64 = stamp.parse().map_err(|_| bad)?;
    let jid = base64::engine::general_purpose::STANDARD.decode(jid).map_err(|_| bad)?;
    let jid = String::from_utf8(jid).map_err(|_| bad)?;
    if stamp < 0 {
        return Err(bad);
    }
    Ok((stamp, jid))
}

impl Inbox {
    fn parse_query(&self, iq: &Element, payload: &Element) -> Result<Query, StanzaErrorCondition> {
        let bad = StanzaErrorCondition::BadRequest;
        let queryid = payload.attr("queryid").or_else(|| iq.attr("id")).unwrap_or_default().to_owned();
        let mut q = InboxQuery { max: self.cfg.max_result_limit, ..Default::default() };
        let mut archive = None;
        let mut boxes = None;
        if let Some(form) = payload.get_child("x", ns::DATA_FORMS) {
            for field in form.elements().filter(|e| e.is("field", ns::DATA_FORMS)) {
                let value = field.get_child("value", ns::DATA_FORMS).map(|v| v.text()).unwrap_or_default();
                let value = value.trim();
                match field.attr("var") {
                    Some("FORM_TYPE") => {}
                    Some("start") => q.start_micros = Some(parse_xep0082(value)?),
                    Some("end") => q.end_micros = Some(parse_xep0082(value)?),
                    Some("order") => {
                        q.ascending = match value {
                            "asc" => true,
                            "desc" => false,
                            _ => return Err(bad),
                        }
                    }
                    Some("hidden_read") => q.hidden_read = bool_value(value).ok_or(bad)?,
                    Some("box") => {
                        boxes = Some(match value {
                            "all" => InboxBoxes::All,
                            b => InboxBoxes::Only(self.box_option(b).ok_or(bad)?),
                        })
                    }
                    Some("archive") => archive = Some(bool_value(value).ok_or(bad)?),
                    _ => return Err(bad),
                }
            }
        }
        // `box` wins over the older `archive` flag.
        q.boxes = match (boxes, archive) {
            (Some(b), _) => b,
            (None, Some(true)) => InboxBoxes::Only("archive".into()),
            (None, Some(false)) => InboxBoxes::Only("inbox".into()),
            (None, None) => InboxBoxes::AllButBin,
        };
        if let Some(set) = payload.get_child("set", ns::RSM) {
            for e in set.elements().filter(|e| e.ns == ns::RSM) {
                let text = e.text();
                let text = text.trim();
                match e.name.as_str() {
                    "max" => q.max = text.parse().map_err(|_| bad)?,
                    "after" if !text.is_empty() => q.after = Some(parse_cursor(text)?),
                    "after" => {}
                    // An empty <before/> asks for the last page (XEP-0059).
                    "before" if text.is_empty() => {
                        q.before = Some(if q.ascending { (i64::MAX, String::new()) } else { (i64::MIN, String::new()) })
                    }
                    "before" => q.before = Some(parse_cursor(text)?),
                    // "Inbox does not expose a total count and indexes".
                    "index" => return Err(StanzaErrorCondition::FeatureNotImplemented),
                    _ => {}
                }
            }
        }
        q.max = q.max.min(self.cfg.max_result_limit);
        Ok(Query { queryid, storage: q })
    }

    /// The children describing an entry's properties, in MongooseIM's order.
    fn properties(e: &InboxEntry, now: i64, ns: &str) -> [Element; 4] {
        let mute = if e.muted_until > now { xep0082_micros(e.muted_until) } else { "0".to_owned() };
        [
            Element::new("read", ns).with_text(if e.unread_count == 0 { "true" } else { "false" }),
            Element::new("box", ns).with_text(e.box_name.clone()),
            Element::new("archive", ns).with_text(if e.box_name == "archive" { "true" } else { "false" }),
            Element::new("mute", ns).with_text(mute),
        ]
    }

    fn forwarded(e: &InboxEntry) -> Option<Element> {
        let original = parse_stored(&e.content)?;
        Some(
            Element::new("forwarded", ns::FORWARD)
                .with_child(Element::new("delay", ns::DELAY).with_attr("stamp", xep0082_micros(e.stamp_micros)))
                .with_child(original),
        )
    }

    async fn run_query(&self, ctx: &ModuleCtx, iq: &Routed, q: Query) -> IqAnswer {
        let Ok(requester) = iq.from.try_as_full() else { return Err(StanzaErrorCondition::BadRequest) };
        let (entries, totals) = match self.call(ctx, &iq.from, Op::Query(q.storage)).await? {
            Answer::Page(p, t) => (p, t),
            _ => return Err(StanzaErrorCondition::InternalServerError),
        };
        // Straight into the session's mailbox, as MAM results: a result that
        // did not fit must not go to other resources or offline storage.
        let Some(session) = ctx.router.sessions().get(requester) else {
            return Err(StanzaErrorCondition::RecipientUnavailable);
        };
        let owner = iq.from.bare().to_string();
        let now = now_micros();
        for e in &entries {
            let Some(forwarded) = Self::forwarded(e) else {
                tracing::error!(%owner, remote = %e.remote_jid, "an inbox entry's message does not parse; skipped");
                continue;
            };
            let mut result = Element::new("result", NS_INBOX)
                .with_attr("unread", e.unread_count.to_string())
                .with_attr("queryid", q.queryid.clone())
                .with_child(forwarded);
            for p in Self::properties(e, now, NS_INBOX) {
                result.push_child(p);
            }
            let message = Element::new("message", ns::CLIENT)
                .with_attr("from", owner.clone())
                .with_attr("to", requester.to_string())
                .with_attr("id", uuid_like())
                .with_child(result);
            if ctx.router.deliver_to_session(&session, message).is_err() {
                tracing::warn!(%requester, "session mailbox full during an inbox query");
                return Err(StanzaErrorCondition::ResourceConstraint);
            }
        }
        Ok(Some(fin(&entries, totals)))
    }

    /// `#conversation` get and set, and `<reset/>`.
    async fn conversation(&self, ctx: &ModuleCtx, iq: &Routed, payload: &Element, set: bool) -> IqAnswer {
        let bad = StanzaErrorCondition::BadRequest;
        let Some(jid) = payload.attr("jid") else {
            // A get without a jid asks for the form of properties.
            return if !set && payload.name == "query" { Ok(Some(self.conversation_form())) } else { Err(bad) };
        };
        let remote = parse_bare(jid).map_err(|_| bad)?.to_string();
        let now = now_micros();
        if payload.name == "reset" {
            if !set {
                return Err(bad);
            }
            let change = InboxChange { read: Some(true), ..Default::default() };
            return match self.call(ctx, &iq.from, Op::Change { remote, change }).await? {
                Answer::Entry(Some(_)) => Ok(Some(Element::new("reset", NS_CONV))),
                _ => Err(StanzaErrorCondition::ItemNotFound),
            };
        }
        if !set {
            let entry = match self.call(ctx, &iq.from, Op::Get { remote: remote.clone() }).await? {
                Answer::Entry(Some(e)) => e,
                _ => return Err(StanzaErrorCondition::ItemNotFound),
            };
            let mut q = Element::new("query", NS_CONV).with_attr("jid", remote);
            if payload.attr("complete") == Some("true") {
                if let Some(f) = Self::forwarded(&entry) {
                    q.push_child(f);
                }
            }
            for p in Self::properties(&entry, now, NS_CONV) {
                q.push_child(p);
            }
            return Ok(Some(q));
        }
        let change = self.parse_change(payload, now)?;
        let entry = match self.call(ctx, &iq.from, Op::Change { remote: remote.clone(), change }).await? {
            Answer::Entry(Some(e)) => e,
            _ => return Err(StanzaErrorCondition::ItemNotFound),
        };
        // Echoed to every resource of the account, this one included.
        let queryid = payload.attr("queryid").or_else(|| iq.stanza.attr("id")).unwrap_or_default();
        let mut x = Element::new("x", NS_CONV).with_attr("jid", remote).with_attr("queryid", queryid);
        for p in Self::properties(&entry, now, NS_CONV) {
            x.push_child(p);
        }
        let owner = iq.from.bare();
        let mut echo = Element::new("message", ns::CLIENT)
            .with_attr("from", iq.from.to_string())
            .with_attr("to", owner.to_string())
            .with_child(x);
        if let Some(id) = iq.stanza.attr("id") {
            echo.set_attr("id", id);
        }
        for info in ctx.router.sessions().resources(&owner) {
            ctx.router.route(Routed { from: iq.from.clone(), to: Jid::from(info.jid.clone()), stanza: echo.clone() });
        }
        Ok(None)
    }

    fn parse_change(&self, payload: &Element, now: i64) -> Result<InboxChange, StanzaErrorCondition> {
        let bad = StanzaErrorCondition::BadRequest;
        let mut change = InboxChange::default();
        let mut archive = None;
        let mut any = false;
        for c in payload.elements() {
            any = true;
            let text = c.text();
            let v = text.trim();
            match c.name.as_str() {
                "box" if v != "all" => change.box_name = Some(self.box_option(v).ok_or(bad)?),
                "archive" => archive = Some(bool_value(v).ok_or(bad)?),
                "read" => change.read = Some(bool_value(v).ok_or(bad)?),
                "mute" => {
                    let secs: i64 = v.parse().map_err(|_| bad)?;
                    if secs < 0 {
                        return Err(bad);
                    }
                    change.muted_until =
                        Some(if secs == 0 { 0 } else { now.saturating_add(secs.saturating_mul(1_000_000)) });
                }
                _ => return Err(bad),
            }
        }
        if !any {
            return Err(bad);
        }
        if change.box_name.is_none() {
            change.box_name = archive.map(|a| if a { "archive" } else { "inbox" }.to_owned());
        }
        Ok(change)
    }

    fn box_field(&self, default: &str) -> Element {
        let mut f = field("box", "list-single", Some(default));
        for b in std::iter::once("all").chain(self.boxes.iter().map(String::as_str)) {
            f.push_child(
                Element::new("option", ns::DATA_FORMS)
                    .with_attr("label", b)
                    .with_child(Element::new("value", ns::DATA_FORMS).with_text(b)),
            );
        }
        f
    }

    /// The query form (MongooseIM's fields, defaults and order).
    fn query_form(&self) -> Element {
        let order = field("order", "list-single", Some("desc"))
            .with_child(option("Ascending by timestamp", "asc"))
            .with_child(option("Descending by timestamp", "desc"));
        let form = Element::new("x", ns::DATA_FORMS)
            .with_attr("type", "form")
            .with_child(field("FORM_TYPE", "hidden", Some(NS_INBOX)))
            .with_child(field("start", "text-single", None))
            .with_child(field("end", "text-single", None))
            .with_child(field("hidden_read", "text-single", Some("false")))
            .with_child(order)
            .with_child(self.box_field("all"))
            .with_child(field("archive", "boolean", Some("false")));
        Element::new("query", NS_INBOX).with_child(form)
    }

    /// The form of conversation properties.
    fn conversation_form(&self) -> Element {
        let form = Element::new("x", ns::DATA_FORMS)
            .with_attr("type", "form")
            .with_child(field("FORM_TYPE", "hidden", Some(NS_CONV)))
            .with_child(self.box_field("all"))
            .with_child(field("archive", "boolean", Some("false")))
            .with_child(field("read", "boolean", Some("false")))
            .with_child(field("mute", "text-single", Some("0")));
        Element::new("query", NS_CONV).with_child(form)
    }
}

fn field(var: &str, kind: &str, value: Option<&str>) -> Element {
    let f = Element::new("field", ns::DATA_FORMS).with_attr("var", var).with_attr("type", kind);
    match value {
        Some(v) => f.with_child(Element::new("value", ns::DATA_FORMS).with_text(v)),
        None => f,
    }
}

fn option(label: &str, value: &str) -> Element {
    Element::new("option", ns::DATA_FORMS)
        .with_attr("label", label)
        .with_child(Element::new("value", ns::DATA_FORMS).with_text(value))
}

/// A unique id for a result message.
fn uuid_like() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// The IQ result of a query: the RSM cursors of the page, then the totals.
fn fin(entries: &[InboxEntry], totals: InboxTotals) -> Element {
    let mut set = Element::new("set", ns::RSM);
    if let (Some(first), Some(last)) = (entries.first(), entries.last()) {
        set.push_child(Element::new("first", ns::RSM).with_text(cursor(first)));
        set.push_child(Element::new("last", ns::RSM).with_text(cursor(last)));
    }
    Element::new("fin", NS_INBOX)
        .with_child(set)
        .with_child(Element::new("active-conversations", NS_INBOX).with_text(totals.active_conversations.to_string()))
        .with_child(Element::new("count", NS_INBOX).with_text(entries.len().to_string()))
        .with_child(Element::new("unread-messages", NS_INBOX).with_text(totals.unread_messages.to_string()))
}

#[async_trait::async_trait]
impl Module for Inbox {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn hot_hooks(&self) -> HookSet {
        HookSet::USER_SEND_MESSAGE
    }

    fn iq_namespaces(&self) -> &'static [&'static str] {
        &[NS_INBOX, NS_CONV]
    }

    fn metrics(&self) -> Vec<crate::ext::Metric> {
        let mut m: Vec<crate::ext::Metric> = [("direct", &self.direct), ("queued", &self.queued)]
            .into_iter()
            .map(|(path, n)| crate::ext::Metric {
                name: "meerkat_inbox_updates_total",
                labels: vec![("path", path.to_owned())],
                value: n.load(Ordering::Relaxed) as f64,
                counter: true,
            })
            .collect();
        let Some(w) = self.inboxes().and_then(|i| i.writer()) else { return m };
        m.extend([
            crate::ext::Metric {
                name: "meerkat_inbox_pending_conversations",
                labels: Vec::new(),
                value: w.pending() as f64,
                counter: false,
            },
            crate::ext::Metric {
                name: "meerkat_inbox_lost_conversations_total",
                labels: Vec::new(),
                value: w.lost() as f64,
                counter: true,
            },
        ]);
        m
    }

    fn disco_features(&self, target: Target) -> &'static [&'static str] {
        if target == Target::Server {
            &[NS_INBOX]
        } else {
            &[]
        }
    }

    async fn start(&self, ctx: &ModuleCtx) -> Result<(), String> {
        let limits = Limits {
            max_resident: self.cfg.max_resident,
            idle_timeout: Duration::from_secs(self.cfg.idle_timeout),
            mailbox: self.cfg.mailbox,
        };
        let mut inboxes = Inboxes::with_ctx(ctx.clone(), limits);
        let w = &self.cfg.async_writer;
        if self.cfg.backend == "rdbms_async" {
            inboxes = inboxes.with_writer(Arc::new(AsyncWriter::new(ctx.storage.clone(), w.pool_size, w.batch_size)));
        }
        let inboxes = Arc::new(inboxes);
        let flush_every = Duration::from_millis(w.flush_interval);
        let _ = self.inboxes.set(inboxes.clone());
        let storage = ctx.storage.clone();
        let sweep_every = Duration::from_secs(self.cfg.idle_timeout.div_ceil(2).max(1));
        let clean_every = Duration::from_secs(self.cfg.bin_clean_after.saturating_mul(3600));
        let ttl_micros = i64::try_from(self.cfg.bin_ttl.saturating_mul(86_400_000_000)).unwrap_or(i64::MAX);
        let task = tokio::spawn(async move {
            use meerkat_storage::InboxRepo as _;
            let mut sweep = tokio::time::interval(sweep_every);
            let mut clean = tokio::time::interval(clean_every);
            let mut flush = tokio::time::interval(flush_every);
            flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = flush.tick(), if inboxes.writer().is_some() => {
                        if let Some(w) = inboxes.writer() {
                            w.flush_all().await;
                        }
                    }
                    _ = sweep.tick() => {
                        inboxes.sweep();
                    }
                    _ = clean.tick() => {
                        match storage.inbox_clean_bins(now_micros().saturating_sub(ttl_micros)).await {
                            Ok(0) => {}
                            Ok(n) => tracing::info!(entries = n, "inbox bins cleaned"),
                            Err(e) => tracing::warn!(error = %e, "cleaning the inbox bins failed; trying again later"),
                        }
                        // An update is sent again for at most UPDATE_DEADLINE: a day is plenty.
                        if let Err(e) = storage.inbox_forget_updates(now_micros().saturating_sub(86_400_000_000)).await {
                            tracing::warn!(error = %e, "forgetting written inbox update ids failed; trying again later");
                        }
                    }
                }
            }
        });
        *self.housekeeping.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        Ok(())
    }

    async fn stop(&self, _ctx: &ModuleCtx) {
        if let Some(task) = self.housekeeping.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
        if let Some(i) = self.inboxes() {
            i.stop_all(tokio::time::Instant::now() + Duration::from_secs(5)).await;
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
        if to.node().is_none() {
            return Ok(());
        }
        if let Some(id) = self.reset_marker(stanza) {
            let op = Op::Marker { remote: to.bare_str().to_owned(), msg_id: id.to_owned() };
            acc.jobs.extend(self.own_update(ctx, from.bare(), op));
        }
        if !storable(stanza) {
            return Ok(());
        }
        let Some(inboxes) = self.inboxes() else { return Ok(()) };
        // Serialised once, and shared by both sides.
        let content: Arc<str> = stanza.to_xml(ns::CLIENT).into();
        // A longer id would not fit the column; a marker cannot name it then.
        let msg_id: Arc<str> = stanza.attr("id").filter(|id| id.len() <= 255).unwrap_or_default().into();
        let (sender, remote) = (from.bare_str(), to.bare_str());
        let own =
            MessageRef { remote, msg_id: &msg_id, content: &content, stamp_micros: now_micros(), incoming: false };
        let (domain, user) = (from.domain().as_str(), from.node().map(|n| n.as_str()).unwrap_or_default());
        if !self.post_direct(ctx, inboxes, sender, domain, user, own, Checks::None) {
            acc.jobs.extend(self.job(from.bare(), Op::Message(own.owned()), None));
        }
        if remote != sender && ctx.router.is_local_host(to.domain().as_str()) {
            let incoming = MessageRef { remote: sender, incoming: true, ..own };
            acc.jobs.extend(self.received_update(ctx, inboxes, to, incoming, from));
        }
        Ok(())
    }

    async fn node_request(&self, _ctx: &ModuleCtx, from_node: u64, body: Vec<u8>) -> Result<Vec<u8>, String> {
        let Some(inboxes) = self.inboxes() else { return Err("mod_inbox is not running".into()) };
        let wire: Wire = serde_json::from_slice(&body).map_err(|e| format!("not an inbox request: {e}"))?;
        let answer = match wire {
            Wire::Update { domain, user, op, sender, id } => {
                let sender = match sender.map(|j| meerkat_xmpp::jid::parse_jid(&j)).transpose() {
                    Ok(s) => s,
                    Err(_) => return Err("bad sender JID".into()),
                };
                inboxes.apply(&domain, &user, op, sender, id).await.map_err(|e| format!("{e:?}"))?;
                WireAnswer::Done
            }
            Wire::Call { domain, user, op } => {
                tracing::trace!(from_node, %user, %domain, "inbox request from another node");
                WireAnswer::Answer(inboxes.call(&domain, &user, op).await.map_err(|e| format!("{e:?}"))?)
            }
        };
        serde_json::to_vec(&answer).map_err(|e| e.to_string())
    }

    async fn unread_count(&self, ctx: &ModuleCtx, owner: &BareJid) -> Option<i64> {
        match self.call(ctx, &Jid::from(owner.clone()), Op::Totals).await {
            Ok(Answer::Totals(t)) => Some(t.unread_messages),
            _ => None,
        }
    }

    async fn iq(&self, ctx: &ModuleCtx, target: Target, iq: &Routed, payload: &Element) -> Option<IqAnswer> {
        if payload.ns != NS_INBOX && payload.ns != NS_CONV {
            return None;
        }
        match target {
            Target::OwnAccount => {}
            // An inbox is its owner's only.
            Target::OtherAccount => return Some(Err(StanzaErrorCondition::Forbidden)),
            Target::Server => return None,
        }
        let set = iq.stanza.attr("type") == Some("set");
        Some(if payload.ns == NS_CONV {
            self.conversation(ctx, iq, payload, set).await
        } else if !set {
            if payload.name == "query" {
                Ok(Some(self.query_form()))
            } else {
                Err(StanzaErrorCondition::BadRequest)
            }
        } else if payload.name == "empty-bin" {
            match self.call(ctx, &iq.from, Op::EmptyBin).await {
                Ok(Answer::Removed(n)) => Ok(Some(
                    Element::new("empty-bin", NS_INBOX)
                        .with_child(Element::new("num", NS_INBOX).with_text(n.to_string())),
                )),
                Ok(_) => Err(StanzaErrorCondition::InternalServerError),
                Err(c) => Err(c),
            }
        } else {
            match self.parse_query(&iq.stanza, payload) {
                Ok(q) => self.run_query(ctx, iq, q).await,
                Err(c) => Err(c),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use meerkat_storage::InboxMessage;

    fn el(xml: &str) -> Element {
        parse_stored(xml).unwrap()
    }

    fn module(cfg: InboxConfig) -> Inbox {
        Inbox::new(cfg)
    }

    fn query(inner: &str) -> Result<Query, StanzaErrorCondition> {
        let m = module(InboxConfig { boxes: vec!["work".into()], max_result_limit: 50, ..Default::default() });
        let iq = el("<iq xmlns='jabber:client' type='set' id='iq1'/>");
        m.parse_query(&iq, &el(&format!("<inbox xmlns='{NS_INBOX}'>{inner}</inbox>")))
    }

    fn form(fields: &[(&str, &str)]) -> String {
        let f: String = fields.iter().map(|(k, v)| format!("<field var='{k}'><value>{v}</value></field>")).collect();
        format!("<x xmlns='jabber:x:data' type='submit'>{f}</x>")
    }

    #[test]
    fn what_an_inbox_keeps() {
        let m =
            |inner: &str, kind: &str| el(&format!("<message xmlns='jabber:client' type='{kind}'>{inner}</message>"));
        assert!(storable(&m("<body>hi</body>", "chat")));
        assert!(storable(&m("<body>hi</body>", "normal")));
        assert!(storable(&m("<store xmlns='urn:xmpp:hints'/>", "chat")), "a store hint without a body");
        assert!(!storable(&m("<body>hi</body>", "headline")));
        assert!(!storable(&m("<body>hi</body>", "groupchat")));
        assert!(!storable(&m("<active xmlns='http://jabber.org/protocol/chatstates'/>", "chat")));
        assert!(!storable(&m("<body>hi</body><no-store xmlns='urn:xmpp:hints'/>", "chat")));
        assert!(!storable(&m("<body>hi</body><displayed xmlns='urn:xmpp:chat-markers:0' id='x'/>", "chat")));
        assert!(!storable(&m("<body>hi</body><delay xmlns='urn:xmpp:delay' stamp='2020-01-01T00:00:00Z'/>", "chat")));
    }

    #[test]
    fn reset_markers_are_the_configured_kinds() {
        let m = module(InboxConfig::default());
        let msg = |kind: &str| {
            el(&format!("<message xmlns='jabber:client'><{kind} xmlns='urn:xmpp:chat-markers:0' id='m1'/></message>"))
        };
        assert_eq!(m.reset_marker(&msg("displayed")), Some("m1"));
        assert_eq!(m.reset_marker(&msg("received")), None);
        let m = module(InboxConfig { reset_markers: vec![Marker::Received], ..Default::default() });
        assert_eq!(m.reset_marker(&msg("received")), Some("m1"));
    }

    #[test]
    fn cursors_round_trip_and_bad_ones_are_refused() {
        let e = InboxEntry {
            remote_jid: "bob@example.org".into(),
            msg_id: String::new(),
            content: String::new(),
            stamp_micros: 1_626_263_283_123_456,
            unread_count: 0,
            box_name: "inbox".into(),
            muted_until: 0,
        };
        assert_eq!(cursor(&e), "1626263283123456/Ym9iQGV4YW1wbGUub3Jn");
        assert_eq!(parse_cursor(&cursor(&e)).unwrap(), (e.stamp_micros, e.remote_jid));
        for bad in ["", "123", "-1/Ym9i", "x/Ym9i", "12/%%%"] {
            assert_eq!(parse_cursor(bad), Err(StanzaErrorCondition::BadRequest), "{bad}");
        }
    }

    #[test]
    fn parses_forms_and_pages() {
        let q = query("").unwrap();
        assert_eq!(q.queryid, "iq1", "the IQ id stands in for a missing queryid");
        assert_eq!(q.storage, InboxQuery { max: 50, ..Default::default() });
        let q = query(&format!(
            "{}<set xmlns='{}'><max>500</max><after>5/Ym9i</after></set>",
            form(&[
                ("FORM_TYPE", NS_INBOX),
                ("start", "2021-01-01T00:00:00Z"),
                ("order", "asc"),
                ("hidden_read", "true"),
                ("box", "work")
            ]),
            ns::RSM
        ))
        .unwrap();
        assert_eq!(q.storage.start_micros, Some(1_609_459_200_000_000));
        assert!(q.storage.ascending && q.storage.hidden_read);
        assert_eq!(q.storage.boxes, InboxBoxes::Only("work".into()));
        assert_eq!((q.storage.max, q.storage.after), (50, Some((5, "bob".into()))), "max is capped");
        assert_eq!(query(&form(&[("archive", "true")])).unwrap().storage.boxes, InboxBoxes::Only("archive".into()));
        assert_eq!(query(&form(&[("archive", "true"), ("box", "all")])).unwrap().storage.boxes, InboxBoxes::All);
        let last = query(&format!("<set xmlns='{}'><before/></set>", ns::RSM)).unwrap();
        assert_eq!(last.storage.before, Some((i64::MIN, String::new())), "the oldest page, newest first");
    }

    #[test]
    fn rejects_bad_queries() {
        for (inner, cond) in [
            (form(&[("order", "up")]), StanzaErrorCondition::BadRequest),
            (form(&[("box", "nope")]), StanzaErrorCondition::BadRequest),
            (form(&[("hidden_read", "maybe")]), StanzaErrorCondition::BadRequest),
            (form(&[("start", "yesterday")]), StanzaErrorCondition::BadRequest),
            (form(&[("colour", "red")]), StanzaErrorCondition::BadRequest),
            (format!("<set xmlns='{}'><max>ten</max></set>", ns::RSM), StanzaErrorCondition::BadRequest),
            (format!("<set xmlns='{}'><index>3</index></set>", ns::RSM), StanzaErrorCondition::FeatureNotImplemented),
        ] {
            assert_eq!(query(&inner), Err(cond), "{inner}");
        }
    }

    #[test]
    fn parses_conversation_changes() {
        let m = module(InboxConfig::default());
        let change = |inner: &str| m.parse_change(&el(&format!("<query xmlns='{NS_CONV}'>{inner}</query>")), 1_000);
        assert_eq!(
            change("<box>bin</box><read>true</read><mute>2</mute>").unwrap(),
            InboxChange { box_name: Some("bin".into()), muted_until: Some(2_001_000), read: Some(true) }
        );
        assert_eq!(change("<archive>true</archive>").unwrap().box_name.as_deref(), Some("archive"));
        assert_eq!(change("<archive>false</archive>").unwrap().box_name.as_deref(), Some("inbox"));
        assert_eq!(change("<mute>0</mute>").unwrap().muted_until, Some(0));
        for bad in ["", "<box>all</box>", "<box>work</box>", "<mute>-1</mute>", "<read>yes</read>", "<colour/>"] {
            assert_eq!(change(bad), Err(StanzaErrorCondition::BadRequest), "{bad}");
        }
    }

    #[test]
    fn requests_between_nodes_round_trip() {
        let update = Wire::Update {
            domain: "example.org".into(),
            user: "alice".into(),
            op: Op::Message(InboxMessage {
                remote_jid: "bob@example.org".into(),
                msg_id: "m1".into(),
                content: "<message xmlns='jabber:client'><body>é</body></message>".into(),
                stamp_micros: 7,
                incoming: true,
            }),
            sender: Some("bob@example.org/desk".into()),
            id: uuid_like(),
        };
        let back: Wire = serde_json::from_slice(&serde_json::to_vec(&update).unwrap()).unwrap();
        assert_eq!(format!("{back:?}"), format!("{update:?}"));
        let answer = WireAnswer::Answer(Answer::Totals(InboxTotals { unread_messages: 3, active_conversations: 1 }));
        let back: WireAnswer = serde_json::from_slice(&serde_json::to_vec(&answer).unwrap()).unwrap();
        assert_eq!(format!("{back:?}"), format!("{answer:?}"));
    }

    #[test]
    fn refuses_bad_sections() {
        let bad = |cfg: InboxConfig| Inbox::validate(&cfg).unwrap_err().0;
        assert_eq!(bad(InboxConfig { boxes: vec!["bin".into()], ..Default::default() }), "boxes");
        assert_eq!(bad(InboxConfig { boxes: vec!["a".into(), "a".into()], ..Default::default() }), "boxes");
        assert_eq!(bad(InboxConfig { backend: "mnesia".into(), ..Default::default() }), "backend");
        assert_eq!(bad(InboxConfig { max_resident: 10, ..Default::default() }), "max_resident");
        assert!(Inbox::validate(&InboxConfig::default()).is_ok());
    }
}
