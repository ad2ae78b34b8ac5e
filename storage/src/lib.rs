//! Persistent storage for Meerkat: repository traits and their sqlx implementations.
//!
//! # Layout
//!
//! The public surface is a set of object-safe repository traits — [`AccountRepo`],
//! [`RosterRepo`], [`OfflineRepo`], [`VcardRepo`], [`PrivateRepo`], [`ArchiveRepo`] and
//! [`BlocklistRepo`], and [`SecretRepo`] for the server's own secrets — plus the
//! [`Storage`] handle that implements all of them. `Storage::connect` picks the backend
//! from the URL scheme (`sqlite:`, `postgres:`/`postgresql:`, `mysql:`/`mariadb:`), opens
//! a pool and applies that backend's migrations (`migrations/sqlite`,
//! `migrations/postgres`, `migrations/mysql`, embedded with `sqlx::migrate!`). Inside,
//! `Storage` holds an enum of the three concrete sqlx pools; every query is written once
//! with `?` placeholders and the `sql!` macro (module `sql`) derives the `$N` form for
//! PostgreSQL and SQLite at compile time, while `on_backend!` expands each repository
//! method body once per pool type. The repository implementations live in `accounts`,
//! `roster`, `offline`, `xmldata`, `archive` and `blocklist`; errors are classified in `error`
//! ([`StorageError`]). All rows are keyed by `(domain, username)` of the owning account;
//! JID columns compare exactly (binary collations) and sort by code point on every
//! backend; timestamps are `BIGINT` microseconds since the Unix epoch; text is UTF-8
//! end to end (`utf8mb4` on MySQL).
//!
//! On MySQL/MariaDB the key columns (domain, username, roster contact, private-XML
//! namespace, archive peer, blocked JID) are limited to 255 characters each, so that composite keys fit InnoDB's
//! 3072-byte index limit; SQLite and PostgreSQL have no such limit.

mod accounts;
mod archive;
mod blocklist;
mod connect;
mod error;
mod fast;
mod inbox;
mod offline;
mod pubsub;
mod push;
mod roster;
mod secrets;
mod sql;
mod xmldata;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::{MySqlPool, PgPool, SqlitePool};

pub use error::StorageError;

/// Times one repository operation into `meerkat_db_query_seconds{repo, op}`
/// (a histogram in the node's metrics recorder, if one is installed) when
/// dropped, however the operation ends.
pub(crate) struct Timed {
    repo: &'static str,
    op: &'static str,
    started: std::time::Instant,
}

impl Timed {
    pub(crate) fn start(repo: &'static str, op: &'static str) -> Timed {
        Timed { repo, op, started: std::time::Instant::now() }
    }
}

impl Drop for Timed {
    fn drop(&mut self) {
        metrics::histogram!("meerkat_db_query_seconds", "repo" => self.repo, "op" => self.op)
            .record(self.started.elapsed().as_secs_f64());
    }
}

/// How to reach the database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageConfig {
    /// `sqlite:/path/to/file.db` (or `sqlite://…`, `sqlite::memory:`),
    /// `postgres://user:pass@host:5432/db` (or `postgresql://`),
    /// `mysql://user:pass@host:3306/db` (or `mariadb://`).
    pub url: String,
    /// Maximum number of pooled connections (at least 1 is used).
    pub pool_size: u32,
    /// How long to wait for a connection (when connecting and when acquiring one from
    /// the pool) before failing with a retryable error.
    pub connect_timeout: Duration,
    /// Transport security towards PostgreSQL / MySQL; ignored for SQLite.
    pub tls: DbTls,
}

/// Transport security for network databases.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DbTls {
    /// Plain TCP (PostgreSQL `sslmode=disable`, MySQL `ssl-mode=DISABLED`).
    Disabled,
    /// TLS when the server offers it, without certificate verification
    /// (`prefer` / `PREFERRED`).
    Preferred,
    /// TLS is mandatory and the server certificate is verified, including its host
    /// name (`verify-full` / `VERIFY_IDENTITY`): against `ca_file` (PEM) when given,
    /// otherwise against the bundled WebPKI roots.
    Required {
        /// PEM file with the CA certificate(s) that sign the server's certificate.
        ca_file: Option<PathBuf>,
    },
}

/// Opaque password data; the server decides the format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoredPassword {
    /// The password itself.
    Plain(String),
    /// Serialized SCRAM credentials (salt, iteration count, keys).
    Scram(String),
}

/// Roster subscription state (RFC 6121 §2.1.2.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subscription {
    None,
    To,
    From,
    Both,
    Remove,
}

impl Subscription {
    /// The attribute value used in roster XML, also the stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            Subscription::None => "none",
            Subscription::To => "to",
            Subscription::From => "from",
            Subscription::Both => "both",
            Subscription::Remove => "remove",
        }
    }

    /// Parses the roster XML attribute value.
    pub fn parse(s: &str) -> Option<Subscription> {
        Some(match s {
            "none" => Subscription::None,
            "to" => Subscription::To,
            "from" => Subscription::From,
            "both" => Subscription::Both,
            "remove" => Subscription::Remove,
            _ => return None,
        })
    }
}

/// One contact on a user's roster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RosterItem {
    /// Bare JID of the contact.
    pub contact: String,
    pub name: Option<String>,
    pub subscription: Subscription,
    /// Pending outbound subscription request (`ask='subscribe'`).
    pub ask_out: bool,
    /// Inbound subscription request awaiting the user's approval.
    pub pending_in: bool,
    /// Subscription pre-approved by the user (RFC 6121 §3.4).
    pub pre_approved: bool,
    /// Group names. Stored deduplicated; returned sorted by code point.
    pub groups: Vec<String>,
}

/// A stanza stored for a user who was offline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OfflineMessage {
    /// Increasing in store order.
    pub id: i64,
    /// The sender's full JID.
    pub from: String,
    /// The serialized stanza.
    pub stanza: String,
    /// When it was stored, microseconds since the Unix epoch.
    pub stamp_micros: i64,
}

/// Which way an archived message went, seen from the archive's owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArchiveDirection {
    /// The owner received it.
    Incoming,
    /// The owner sent it.
    Outgoing,
}

impl ArchiveDirection {
    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            ArchiveDirection::Incoming => "in",
            ArchiveDirection::Outgoing => "out",
        }
    }

    /// Parses the stored form.
    pub fn parse(s: &str) -> Option<ArchiveDirection> {
        match s {
            "in" => Some(ArchiveDirection::Incoming),
            "out" => Some(ArchiveDirection::Outgoing),
            _ => None,
        }
    }
}

/// One message in one user's archive (XEP-0313).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchivedMessage {
    /// Domain of the archive's owner.
    pub domain: String,
    /// Username of the archive's owner.
    pub user: String,
    /// The archive id clients see (XEP-0359 stanza-id), unique within the archive and
    /// at most 64 characters.
    pub id: String,
    /// When the message was sent, microseconds since the Unix epoch.
    pub stamp_micros: i64,
    /// Bare JID of the peer: the recipient of an outgoing message, the sender of an
    /// incoming one.
    pub with_jid: String,
    /// The peer's resource, if its address had one.
    pub with_resource: Option<String>,
    pub direction: ArchiveDirection,
    /// The serialized stanza.
    pub stanza: String,
}

/// What to read from one archive: filters and a page (XEP-0313 §4, XEP-0059).
///
/// Messages are ordered by (timestamp, insertion sequence), a total order that
/// never changes for stored rows. The filters (`with_*`, `start`/`end`) select a
/// result set; `after`/`before` are cursors (archive ids) into it, exclusive; `max`
/// messages are returned from the start of what lies between the cursors, or from
/// its end when `from_end` is set (RSM `<before/>`, with or without an id).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ArchiveQuery {
    /// Only messages with this peer (bare JID)…
    pub with_jid: Option<String>,
    /// …and, if given, this resource of it. Ignored without `with_jid`.
    pub with_resource: Option<String>,
    /// Only messages stamped at or after this time (µs since the epoch).
    pub start_micros: Option<i64>,
    /// Only messages stamped at or before this time (µs since the epoch).
    pub end_micros: Option<i64>,
    /// Only messages after the one with this archive id.
    pub after: Option<String>,
    /// Only messages before the one with this archive id.
    pub before: Option<String>,
    /// Take the page from the end of the range rather than from its start.
    pub from_end: bool,
    /// Most messages to return; 0 only counts. The caller enforces its own cap.
    pub max: u64,
}

/// One page of an archive query, in chronological order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ArchivePage {
    pub messages: Vec<ArchivedMessage>,
    /// Position of the first message in the whole filtered result set (RSM `index`).
    pub first_index: Option<u64>,
    /// Size of the whole filtered result set, cursors and `max` aside (RSM `count`).
    pub count: u64,
    /// Nothing more lies in the paging direction: after the last message when paging
    /// forward, before the first one when paging from the end.
    pub complete: bool,
}

impl ArchivePage {
    /// Archive id of the first message of the page (RSM `first`).
    pub fn first_id(&self) -> Option<&str> {
        self.messages.first().map(|m| m.id.as_str())
    }

    /// Archive id of the last message of the page (RSM `last`).
    pub fn last_id(&self) -> Option<&str> {
        self.messages.last().map(|m| m.id.as_str())
    }
}

/// One FAST token (XEP-0484) as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FastToken {
    pub token: String,
    /// When it stops working, Unix seconds.
    pub expires_at: i64,
    /// The highest `count` a login with it carried (0 before any).
    pub count: i64,
    /// The mechanism it was issued for, such as `HT-SHA-256-NONE`.
    pub mechanism: String,
}

/// Which of a user agent's two tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FastSlot {
    /// The token in use.
    Current,
    /// The next one, issued but not yet used.
    New,
}

/// A user agent's FAST tokens.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FastTokens {
    pub current: Option<FastToken>,
    pub new: Option<FastToken>,
}

/// FAST tokens (XEP-0484), per account and user agent (its `<user-agent id>`):
/// the one in use and the next one, as MongooseIM's `mod_fast_auth_token` keeps them.
#[async_trait]
pub trait FastTokenRepo: Send + Sync {
    async fn fast_tokens(&self, domain: &str, user: &str, agent: &str) -> Result<FastTokens, StorageError>;
    /// Stores `token` as the agent's next token, replacing a next token not
    /// yet used; an agent without tokens gets it as the one in use.
    async fn set_new_fast_token(
        &self,
        domain: &str,
        user: &str,
        agent: &str,
        token: &FastToken,
    ) -> Result<(), StorageError>;
    /// A login used the token `token` of `slot`, carrying `count` (0 when it
    /// carried none). In one statement: the login is refused (`false`) unless
    /// the token is still there and `count` is 0 or above the stored count;
    /// then the stored count becomes `count`, and a next token used becomes
    /// the current one.
    async fn use_fast_token(
        &self,
        domain: &str,
        user: &str,
        agent: &str,
        slot: FastSlot,
        token: &str,
        count: i64,
    ) -> Result<bool, StorageError>;
    /// Forgets the agent's tokens (`<fast invalidate='true'/>`).
    async fn remove_fast_tokens(&self, domain: &str, user: &str, agent: &str) -> Result<(), StorageError>;
}

/// One conversation of an account's inbox (MongooseIM's Inbox).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InboxEntry {
    /// The other party's bare JID.
    pub remote_jid: String,
    /// The `id` attribute of the last message ('' when it had none).
    pub msg_id: String,
    /// The last message, serialized.
    pub content: String,
    /// When the last message came (µs since the epoch).
    pub stamp_micros: i64,
    pub unread_count: i64,
    /// `inbox`, `archive`, `bin` or a configured box.
    pub box_name: String,
    /// Muted until this time (µs since the epoch); 0 when not muted.
    pub muted_until: i64,
}

/// A message that makes the last message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InboxMessage {
    pub remote_jid: String,
    /// Shared: one message makes the last message of both sides.
    pub msg_id: Arc<str>,
    /// The stanza as stored (serialised once for both sides).
    pub content: Arc<str>,
    pub stamp_micros: i64,
    /// The account received it (one more unread) rather than sent it (none unread).
    pub incoming: bool,
}

/// What a conversation action changes; `None` leaves it as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InboxChange {
    pub box_name: Option<String>,
    pub muted_until: Option<i64>,
    /// `true`: nothing unread; `false`: one unread if none was.
    pub read: Option<bool>,
}

/// Which boxes a query looks at.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum InboxBoxes {
    /// Every box but the bin.
    #[default]
    AllButBin,
    /// Every box.
    All,
    /// This box only.
    Only(String),
}

/// A query of an account's inbox, newest first unless `ascending`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InboxQuery {
    /// Only entries whose last message came at or after this time (µs)…
    pub start_micros: Option<i64>,
    /// …and at or before this one.
    pub end_micros: Option<i64>,
    /// Only entries after this position (in the query's order): `(stamp, remote JID)`.
    pub after: Option<(i64, String)>,
    /// Only entries before this position (in the query's order); the page is
    /// then the last `max` entries before it.
    pub before: Option<(i64, String)>,
    pub ascending: bool,
    /// Only entries with something unread.
    pub hidden_read: bool,
    pub boxes: InboxBoxes,
    pub max: u64,
}

/// What a batch of updates does to one conversation, applied in this order:
/// the chat markers (each sets the count to 0 if the stored last message has
/// its id), then the last message, if any, with its `add` messages to count:
/// added to the stored count, or, with `reset` (the account wrote in
/// between), instead of it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InboxDelta {
    pub domain: String,
    pub user: String,
    pub remote_jid: String,
    pub marks: Vec<String>,
    pub last: Option<InboxLast>,
    pub reset: bool,
    pub add: i64,
}

/// The newest message of an [`InboxDelta`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InboxLast {
    pub msg_id: Arc<str>,
    pub content: Arc<str>,
    pub stamp_micros: i64,
}

/// Inbox totals over every box but the bin.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InboxTotals {
    /// Unread messages, all conversations together (the badge).
    pub unread_messages: i64,
    /// Conversations with something unread.
    pub active_conversations: i64,
}

/// Inboxes (MongooseIM's `erlang-solutions.com:xmpp:inbox:0`): one entry per
/// (account, other party).
#[async_trait]
pub trait InboxRepo: Send + Sync {
    /// Makes `m` the conversation's last message, creating the entry if
    /// needed: received, one more unread; sent, nothing unread. An entry in
    /// the archive or the bin comes back to the inbox. Returns the entry.
    async fn inbox_message(&self, domain: &str, user: &str, m: &InboxMessage) -> Result<InboxEntry, StorageError>;
    /// [`InboxRepo::inbox_message`] without reading the entry back: one statement.
    async fn inbox_write(&self, domain: &str, user: &str, m: &InboxMessage) -> Result<(), StorageError>;
    /// Nothing unread in the conversation with `remote`, if its last message
    /// has the id `msg_id` (a chat marker); whether it matched.
    async fn inbox_mark_read(&self, domain: &str, user: &str, remote: &str, msg_id: &str)
        -> Result<bool, StorageError>;
    async fn inbox_entry(&self, domain: &str, user: &str, remote: &str) -> Result<Option<InboxEntry>, StorageError>;
    /// Applies a conversation action; the entry afterwards, `None` when there is none.
    async fn inbox_change(
        &self,
        domain: &str,
        user: &str,
        remote: &str,
        change: &InboxChange,
    ) -> Result<Option<InboxEntry>, StorageError>;
    /// One page of entries, in the query's order.
    async fn inbox_query(&self, domain: &str, user: &str, q: &InboxQuery) -> Result<Vec<InboxEntry>, StorageError>;
    async fn inbox_totals(&self, domain: &str, user: &str) -> Result<InboxTotals, StorageError>;
    /// Removes the account's entries in the bin; how many.
    async fn inbox_empty_bin(&self, domain: &str, user: &str) -> Result<u64, StorageError>;
    /// Removes every account's bin entries whose last message is older than
    /// `before_micros`; how many.
    async fn inbox_clean_bins(&self, before_micros: i64) -> Result<u64, StorageError>;
    /// [`InboxRepo::inbox_write`] of an update that may come more than once
    /// (sent again after the node it was sent to went away, having written it
    /// or not): written, with `update_id`, in one transaction, unless an
    /// update with that id was; false when it was.
    async fn inbox_write_once(
        &self,
        domain: &str,
        user: &str,
        m: &InboxMessage,
        update_id: &str,
    ) -> Result<bool, StorageError>;
    /// Applies a batch of conversations' updates in one transaction, in order.
    async fn inbox_apply(&self, deltas: &[InboxDelta]) -> Result<(), StorageError>;
    /// Forgets the ids of updates written before `before_micros`; how many.
    async fn inbox_forget_updates(&self, before_micros: i64) -> Result<u64, StorageError>;
}

/// An app server an account's client enabled push notifications to (XEP-0357).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushSubscription {
    /// The app server's JID.
    pub pubsub_jid: String,
    /// The node there.
    pub node: String,
    /// The resource that enabled it.
    pub resource: String,
    /// The publish-options form to send along, serialized; '' when none.
    pub form: String,
    pub created_micros: i64,
}

/// Push notification subscriptions (XEP-0357), per account and (app server, node).
#[async_trait]
pub trait PushRepo: Send + Sync {
    /// Adds or replaces the subscription to its (app server, node).
    async fn enable_push(&self, domain: &str, user: &str, sub: &PushSubscription) -> Result<(), StorageError>;
    /// Removes the subscription to `node` of `pubsub_jid`, or every one to
    /// `pubsub_jid` when `node` is `None`; how many.
    async fn disable_push(
        &self,
        domain: &str,
        user: &str,
        pubsub_jid: &str,
        node: Option<&str>,
    ) -> Result<u64, StorageError>;
    /// The account's subscriptions, oldest first.
    async fn push_subscriptions(&self, domain: &str, user: &str) -> Result<Vec<PushSubscription>, StorageError>;
}

/// A PubSub node (XEP-0060) of a service: a PubSub service domain, or an
/// account's bare JID for PEP (XEP-0163).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PubsubNode {
    pub service: String,
    pub name: String,
    /// The bare JID that created it (an owner).
    pub owner: String,
    /// Its configuration, opaque here (serialized by the module).
    pub config: String,
    pub created_micros: i64,
}

/// A published item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PubsubItem {
    pub id: String,
    /// The full JID that published it.
    pub publisher: String,
    /// The item's payload, serialized XML.
    pub payload: String,
    /// Its place in the node's order of publication (set on publish).
    pub seq: i64,
}

/// A subscription to a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PubsubSubscription {
    pub subid: String,
    /// The subscribed JID (bare or full).
    pub jid: String,
    /// `subscribed` or `pending`.
    pub state: String,
    pub created_micros: i64,
}

/// PubSub nodes, their items, affiliations and subscriptions.
#[async_trait]
pub trait PubsubRepo: Send + Sync {
    /// Creates the node, its creator an owner; [`StorageError::Conflict`] if it exists.
    async fn pubsub_create_node(&self, node: &PubsubNode) -> Result<(), StorageError>;
    async fn pubsub_node(&self, service: &str, name: &str) -> Result<Option<PubsubNode>, StorageError>;
    /// The service's nodes, oldest first.
    async fn pubsub_nodes(&self, service: &str) -> Result<Vec<PubsubNode>, StorageError>;
    /// Replaces the node's configuration; `false` if there is no such node.
    async fn pubsub_configure(&self, service: &str, name: &str, config: &str) -> Result<bool, StorageError>;
    /// Deletes the node with its items, affiliations and subscriptions; `false` if there was none.
    async fn pubsub_delete_node(&self, service: &str, name: &str) -> Result<bool, StorageError>;
    /// Publishes the item (replacing one with its id) as the node's latest,
    /// then keeps only the `max_items` latest: the item's order number, and
    /// the ids of the items removed to keep to it.
    async fn pubsub_publish(
        &self,
        service: &str,
        name: &str,
        item: &PubsubItem,
        max_items: Option<u64>,
    ) -> Result<(i64, Vec<String>), StorageError>;
    /// Removes the item; `false` if there was none.
    async fn pubsub_retract(&self, service: &str, name: &str, id: &str) -> Result<bool, StorageError>;
    /// Removes every item of the node; how many.
    async fn pubsub_purge(&self, service: &str, name: &str) -> Result<u64, StorageError>;
    /// The `last` latest items (all without it), oldest first.
    async fn pubsub_items(&self, service: &str, name: &str, last: Option<u64>)
        -> Result<Vec<PubsubItem>, StorageError>;
    /// The items with these ids that exist, in the order asked.
    async fn pubsub_items_by_id(
        &self,
        service: &str,
        name: &str,
        ids: &[String],
    ) -> Result<Vec<PubsubItem>, StorageError>;
    /// Sets a JID's affiliation, or removes it (`None`: `none`).
    async fn pubsub_set_affiliation(
        &self,
        service: &str,
        name: &str,
        jid: &str,
        affiliation: Option<&str>,
    ) -> Result<(), StorageError>;
    /// The node's affiliations other than `none`: (JID, affiliation).
    async fn pubsub_affiliations(&self, service: &str, name: &str) -> Result<Vec<(String, String)>, StorageError>;
    /// A JID's affiliations on the service's nodes: (node, affiliation).
    async fn pubsub_user_affiliations(&self, service: &str, jid: &str) -> Result<Vec<(String, String)>, StorageError>;
    /// Adds the subscription, or sets the state of the one with its id.
    async fn pubsub_subscribe(&self, service: &str, name: &str, sub: &PubsubSubscription) -> Result<(), StorageError>;
    /// Removes `jid`'s subscription `subid`, or all of its subscriptions; how many.
    async fn pubsub_unsubscribe(
        &self,
        service: &str,
        name: &str,
        jid: &str,
        subid: Option<&str>,
    ) -> Result<u64, StorageError>;
    /// The node's subscriptions, oldest first.
    async fn pubsub_subscriptions(&self, service: &str, name: &str) -> Result<Vec<PubsubSubscription>, StorageError>;
    /// A JID's subscriptions on the service's nodes: (node, subscription).
    async fn pubsub_user_subscriptions(
        &self,
        service: &str,
        jid: &str,
    ) -> Result<Vec<(String, PubsubSubscription)>, StorageError>;
}

/// User accounts and their credentials.
#[async_trait]
pub trait AccountRepo: Send + Sync {
    /// Creates the account; [`StorageError::Conflict`] if it already exists.
    async fn create_account(&self, domain: &str, user: &str, password: &StoredPassword) -> Result<(), StorageError>;
    async fn get_password(&self, domain: &str, user: &str) -> Result<Option<StoredPassword>, StorageError>;
    /// Replaces the password; `false` if there is no such account.
    async fn set_password(&self, domain: &str, user: &str, password: &StoredPassword) -> Result<bool, StorageError>;
    /// Deletes the account together with its roster, offline messages, vCard, private
    /// XML, message archive, blocklist, inbox, push subscriptions and PEP nodes, in one
    /// transaction; `false` if there was no such account.
    async fn remove_account(&self, domain: &str, user: &str) -> Result<bool, StorageError>;
    /// Usernames of `domain`, sorted by code point.
    async fn list_accounts(&self, domain: &str) -> Result<Vec<String>, StorageError>;
    async fn count_accounts(&self, domain: &str) -> Result<u64, StorageError>;
}

/// Rosters (RFC 6121).
#[async_trait]
pub trait RosterRepo: Send + Sync {
    /// All items, ordered by contact (code point order).
    async fn get_roster(&self, domain: &str, user: &str) -> Result<Vec<RosterItem>, StorageError>;
    async fn get_item(&self, domain: &str, user: &str, contact: &str) -> Result<Option<RosterItem>, StorageError>;
    /// Inserts or replaces the item for `item.contact`, including its groups.
    async fn put_item(&self, domain: &str, user: &str, item: &RosterItem) -> Result<(), StorageError>;
    /// `false` if there was no such item.
    async fn remove_item(&self, domain: &str, user: &str, contact: &str) -> Result<bool, StorageError>;
}

/// Offline message storage (XEP-0160).
#[async_trait]
pub trait OfflineRepo: Send + Sync {
    /// Stores a stanza unless the user already has `max_per_user` messages; returns
    /// `false` (and stores nothing) when the quota is full. Under concurrent stores for
    /// the same user on PostgreSQL/MySQL the quota may be overshot by the number of
    /// concurrent writers.
    async fn store_offline(
        &self,
        domain: &str,
        user: &str,
        from: &str,
        stanza: &str,
        stamp_micros: i64,
        max_per_user: u64,
    ) -> Result<bool, StorageError>;
    /// Claims the user's oldest messages that no live claim holds (at most `limit`) for
    /// one delivery named `claim`, until `until_micros`, and returns every message that
    /// claim holds, in store order. Two claims never hold the same message while both
    /// are live; a claim past `until_micros` (its node died) may be taken over.
    #[allow(clippy::too_many_arguments)]
    async fn claim_offline(
        &self,
        domain: &str,
        user: &str,
        claim: &str,
        now_micros: i64,
        until_micros: i64,
        limit: u64,
    ) -> Result<Vec<OfflineMessage>, StorageError>;
    /// Deletes the messages with ids from `first_id` to `last_id` (inclusive) that
    /// `claim` holds, once they were delivered; how many were deleted.
    async fn delete_offline(
        &self,
        domain: &str,
        user: &str,
        claim: &str,
        first_id: i64,
        last_id: i64,
    ) -> Result<u64, StorageError>;
    /// Ends `claim` on the messages it still holds (not delivered), so the next
    /// delivery takes them; how many.
    async fn release_offline(&self, domain: &str, user: &str, claim: &str) -> Result<u64, StorageError>;
    /// Ends every claim whose name starts with `claim_prefix` (a node's, when it
    /// starts again after a crash), for all users; how many messages were released.
    async fn release_offline_claims(&self, claim_prefix: &str) -> Result<u64, StorageError>;
    async fn count_offline(&self, domain: &str, user: &str) -> Result<u64, StorageError>;
}

/// Secrets the server keeps for itself, the same for every node on one database.
#[async_trait]
pub trait SecretRepo: Send + Sync {
    /// The secret named `name`: `candidate` (1 to 1024 bytes) if none was stored yet,
    /// else the stored one. Concurrent callers (nodes starting together) all get the
    /// same value, the first writer's.
    async fn shared_secret(&self, name: &str, candidate: &[u8]) -> Result<Vec<u8>, StorageError>;
}

/// vCards (XEP-0054), stored as serialized XML.
#[async_trait]
pub trait VcardRepo: Send + Sync {
    async fn get_vcard(&self, domain: &str, user: &str) -> Result<Option<String>, StorageError>;
    async fn set_vcard(&self, domain: &str, user: &str, xml: &str) -> Result<(), StorageError>;
}

/// Private XML storage (XEP-0049), one serialized element per namespace.
#[async_trait]
pub trait PrivateRepo: Send + Sync {
    async fn get_private(&self, domain: &str, user: &str, namespace: &str) -> Result<Option<String>, StorageError>;
    async fn set_private(&self, domain: &str, user: &str, namespace: &str, xml: &str) -> Result<(), StorageError>;
    /// Bytes the account stores (namespaces and documents), leaving out `except`,
    /// the namespace about to be written.
    async fn private_size(&self, domain: &str, user: &str, except: &str) -> Result<u64, StorageError>;
}

/// Message archives (XEP-0313), one per user.
#[async_trait]
pub trait ArchiveRepo: Send + Sync {
    /// Stores messages, possibly of several archives, in one transaction: all or none.
    /// An id already present in its archive fails the whole call with
    /// [`StorageError::Conflict`].
    async fn store_archive(&self, messages: &[ArchivedMessage]) -> Result<(), StorageError>;
    /// One page of `domain`/`user`'s archive; `None` when `after` or `before` names an
    /// id that is not in this archive.
    async fn query_archive(
        &self,
        domain: &str,
        user: &str,
        query: &ArchiveQuery,
    ) -> Result<Option<ArchivePage>, StorageError>;
}

/// Blocklists (XEP-0191): the JIDs each user blocks, as the server made them
/// canonical (a domain, a bare JID or a full JID), compared exactly.
#[async_trait]
pub trait BlocklistRepo: Send + Sync {
    /// Every blocked JID of `domain`/`user`, in code point order.
    async fn get_blocklist(&self, domain: &str, user: &str) -> Result<Vec<String>, StorageError>;
    /// Adds these JIDs in one transaction; JIDs already blocked stay as they are.
    async fn block(&self, domain: &str, user: &str, jids: &[String]) -> Result<(), StorageError>;
    /// Removes these JIDs in one transaction; JIDs that were not blocked are ignored.
    async fn unblock(&self, domain: &str, user: &str, jids: &[String]) -> Result<(), StorageError>;
    /// Empties the blocklist.
    async fn unblock_all(&self, domain: &str, user: &str) -> Result<(), StorageError>;
}

/// A connection pool to one database; implements every repository trait. Cheap to
/// clone (the pool is shared).
#[derive(Clone, Debug)]
pub struct Storage {
    backend: Backend,
}

#[derive(Clone, Debug)]
pub(crate) enum Backend {
    Sqlite(SqlitePool),
    Postgres(PgPool),
    MySql(MySqlPool),
}

impl Storage {
    /// `"sqlite"`, `"postgres"` or `"mysql"` (also for MariaDB).
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
            Backend::MySql(_) => "mysql",
        }
    }

    /// Round-trips a trivial query.
    pub async fn ping(&self) -> Result<(), StorageError> {
        sql::on_backend!(self, |pool, d| {
            sqlx::query("SELECT 1").execute(pool).await?;
        });
        Ok(())
    }

    /// Closes the pool, waiting for checked-out connections to be returned. Later
    /// calls fail with a fatal error.
    pub async fn close(&self) {
        sql::on_backend!(self, |pool, d| { pool.close().await })
    }
}

/// Microseconds since the Unix epoch, now.
pub(crate) fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A `COUNT(*)` (always `BIGINT`) as `u64`.
pub(crate) fn count_to_u64(n: i64) -> Result<u64, StorageError> {
    u64::try_from(n).map_err(|_| StorageError::Corrupt(format!("negative count {n}")))
}
