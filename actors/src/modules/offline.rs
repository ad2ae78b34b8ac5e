//! XEP-0160: offline messages, stamped with XEP-0203 delay and delivered
//! after the user's next initial presence.
//!
//! A message no session took reaches [`Module::undelivered_message`]; the
//! stored ones go out when the user's initial presence has been broadcast
//! ([`Module::user_available`]). Meanwhile the session holds live messages
//! (asked for in [`Module::user_send_presence`]), so that none overtakes a
//! stored one; this module releases them once the stored ones are written.
//!
//! Delivery is at least once. A delivery claims the stored messages it reads
//! (so a concurrent one, from another resource or node, does not send them
//! too), hands them to the session in batches, and deletes a batch only once
//! the session wrote it to its connection. A batch the session did not take
//! is released for the next login; a node that died mid-delivery releases its
//! claims when it starts again, and another node's claims run out after
//! [`CLAIM_LEASE`]. A message may so arrive twice after a crash, never not at all.

use meerkat_xmpp::jid::Bare as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use meerkat_cluster::SessionInfo;
use meerkat_routing::{Routed, Router, SessionSink};
use meerkat_storage::{OfflineMessage, OfflineRepo, Storage, StorageError};
use meerkat_xmpp::element::Element;
use meerkat_xmpp::error::StanzaErrorCondition;
use meerkat_xmpp::jid::{FullJid, Jid};
use meerkat_xmpp::ns;
use meerkat_xmpp::stanza::has_storable_content;

use crate::ext::registry::ModuleSpec;
use crate::ext::util::{account_of, now_micros, parse_stored, xep0082};
use crate::ext::{
    account_error, storage_error, Flow, HookSet, Module, ModuleCtx, SessionAcc, SessionState, Target, Undelivered,
};

pub struct Offline {
    max_messages: u64,
}

/// How long a delivery's claim on stored messages lasts. A node that dies
/// holding one releases it when it starts again; otherwise another delivery
/// may take the messages over after this.
const CLAIM_LEASE: Duration = Duration::from_secs(300);
/// How long a batch may take to reach the client's connection before it is
/// released for the next login.
const ACCEPT_WITHIN: Duration = Duration::from_secs(120);
/// Stored messages claimed by one query.
const CLAIM_PAGE: u64 = 500;
/// Most pages one delivery claims: past that, the rest waits for the next login.
const MAX_PAGES: usize = 100;
/// Messages handed to the session at once, and deleted together once written.
const BATCH: usize = 100;
/// Bytes of stored stanzas in one batch (one stanza at least): with one batch
/// on its way at a time, a session's output queue never takes more than this
/// (well under the smallest `session.max_outgoing_bytes`, 64 KiB).
const BATCH_BYTES: usize = 32 * 1024;

/// `page` cut into batches of at most [`BATCH`] messages and [`BATCH_BYTES`] bytes.
fn batches(page: &[meerkat_storage::OfflineMessage]) -> Vec<&[meerkat_storage::OfflineMessage]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, m) in page.iter().enumerate() {
        if i > start && (i - start >= BATCH || bytes + m.stanza.len() > BATCH_BYTES) {
            out.push(&page[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += m.stanza.len();
    }
    if start < page.len() {
        out.push(&page[start..]);
    }
    out
}

/// `[modules.mod_offline]`
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OfflineConfig {
    /// Store messages for users with no available resource.
    pub enabled: bool,
    /// Most messages stored for one user; past it, messages are answered with
    /// `service-unavailable`.
    pub max_messages: u64,
}

impl Default for OfflineConfig {
    fn default() -> Self {
        OfflineConfig { enabled: true, max_messages: 1000 }
    }
}

impl ModuleSpec for Offline {
    const NAME: &'static str = "mod_offline";
    type Config = OfflineConfig;
    fn enabled(cfg: &OfflineConfig) -> bool {
        cfg.enabled
    }
    fn build(cfg: &OfflineConfig) -> Arc<dyn Module> {
        Arc::new(Offline { max_messages: cfg.max_messages })
    }
}

/// Messages stored for offline accounts, and stored messages delivered (metrics).
static STORED: AtomicU64 = AtomicU64::new(0);
static DELIVERED: AtomicU64 = AtomicU64::new(0);

#[async_trait::async_trait]
impl Module for Offline {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn metrics(&self) -> Vec<crate::ext::Metric> {
        use crate::ext::Metric;
        vec![
            Metric::counter("meerkat_offline_stored_total", &STORED),
            Metric::counter("meerkat_offline_delivered_total", &DELIVERED),
        ]
    }

    fn hot_hooks(&self) -> HookSet {
        HookSet::USER_AVAILABLE.with(HookSet::UNDELIVERED_MESSAGE)
    }

    fn disco_features(&self, target: Target) -> &'static [&'static str] {
        if target == Target::Server {
            &["msgoffline"]
        } else {
            &[]
        }
    }

    fn user_send_presence(
        &self,
        _ctx: &ModuleCtx,
        _state: &mut SessionState,
        _from: &FullJid,
        to: Option<&Jid>,
        _presence: &Element,
        initial: bool,
        acc: &mut SessionAcc,
    ) -> Flow {
        if to.is_none() && initial {
            // Released by `user_available` once the stored messages are out.
            acc.hold_messages = true;
        }
        Flow::Continue
    }

    async fn start(&self, ctx: &ModuleCtx) -> Result<(), String> {
        // Claims of this node's earlier run: its sessions are gone, nothing will complete them.
        match ctx.storage.release_offline_claims(&node_claim_prefix(ctx.router.node().0)).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(messages = n, "offline messages left in delivery by an earlier run are stored again")
            }
            Err(e) => tracing::error!(
                error = %e,
                "offline deliveries of an earlier run could not be released; their messages wait for the claims to run out"
            ),
        }
        Ok(())
    }

    async fn undelivered_message(&self, ctx: &ModuleCtx, r: &Routed, acc: &mut Undelivered) -> Flow {
        acc.handled = true;
        acc.stored = self.store(ctx, r).await;
        Flow::Continue
    }

    async fn user_available(&self, ctx: &ModuleCtx, jid: &FullJid) {
        let (user, host) = account_of(&Jid::from(jid.clone()));
        let target = ctx.router.sessions().get(jid);
        // Most logins find nothing stored: a read answers that without taking
        // the database's write lock, which a claim needs.
        let stored = match ctx.storage.count_offline(&host, &user).await {
            Ok(n) => n > 0,
            Err(e) => {
                tracing::error!(error = %e, %jid, "offline messages could not be counted; they stay stored");
                false
            }
        };
        let Some(info) = target else { return };
        let local = ctx.router.sink(info.sid).filter(|_| info.node == ctx.router.node());
        match (stored, local) {
            (true, sink) => {
                // The writes to the client are awaited in a task of their own, not
                // on this server worker, which other accounts share.
                let (storage, router) = (ctx.storage.clone(), ctx.router.clone());
                tokio::spawn(deliver_stored(storage, router, info, sink, host, user, true));
            }
            // Stored messages are out: live ones held meanwhile may follow.
            (false, Some(sink)) => sink.deliver_stored(Vec::new(), true, None),
            (false, None) => {}
        }
    }
}

impl Offline {
    /// A message no resource could take (RFC 6121 §8.5.2.2.1): stored, or
    /// answered with an error. Whether it was stored.
    async fn store(&self, ctx: &ModuleCtx, r: &Routed) -> bool {
        let r = r.clone();
        let (user, host) = account_of(&r.to);
        match ctx.accounts.exists(&host, &user).await {
            Ok(true) => {}
            Ok(false) => {
                ctx.router.bounce(r, StanzaErrorCondition::ServiceUnavailable);
                return false;
            }
            Err(e) => {
                ctx.router.bounce(r, account_error("account lookup")(e));
                return false;
            }
        }
        if !has_storable_content(&r.stanza) {
            return false;
        }
        let now = now_micros();
        let mut stanza = r.stanza.clone();
        stanza.set_attr("to", Jid::from(r.to.bare()).to_string());
        stanza.push_child(
            Element::new("delay", ns::DELAY).with_attr("from", host.clone()).with_attr("stamp", xep0082(now)),
        );
        let stored = ctx
            .storage
            .store_offline(&host, &user, &r.from.to_string(), &stanza.to_xml(ns::CLIENT), now, self.max_messages)
            .await;
        match stored {
            Ok(true) => {
                STORED.fetch_add(1, Ordering::Relaxed);
                late_flush(ctx, &r.to, &host, &user).await;
                true
            }
            Ok(false) => {
                ctx.router.bounce(r, StanzaErrorCondition::ServiceUnavailable);
                false
            }
            Err(e) => {
                ctx.router.bounce(r, storage_error("offline store")(e));
                false
            }
        }
    }
}

/// A resource became available while the message was being stored: its
/// login already fetched the stored messages, so this one goes to it now
/// rather than waiting for the next login.
async fn late_flush(ctx: &ModuleCtx, to: &Jid, host: &str, user: &str) {
    let bare = to.bare();
    let best = ctx
        .router
        .sessions()
        .resources(&bare)
        .into_iter()
        .filter(|s| s.priority.is_some_and(|p| p >= 0))
        .max_by_key(|s| (s.priority, s.created_micros));
    let Some(info) = best else { return };
    let sink = ctx.router.sink(info.sid).filter(|_| info.node == ctx.router.node());
    let (storage, router) = (ctx.storage.clone(), ctx.router.clone());
    tokio::spawn(deliver_stored(storage, router, info, sink, host.to_owned(), user.to_owned(), false));
}

/// This node's claims start with this.
fn node_claim_prefix(node: u64) -> String {
    format!("{node}:")
}

/// A claim name no other delivery uses: this node, this run of it, a sequence number.
fn claim_name(node: u64) -> String {
    static RUN: OnceLock<u64> = OnceLock::new();
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let run = RUN.get_or_init(rand::random::<u64>);
    format!("{}{run:016x}:{}", node_claim_prefix(node), SEQ.fetch_add(1, Ordering::Relaxed))
}

/// Claims a page of the account's stored messages; a deadlock between two
/// claims (InnoDB) is tried again.
async fn claim_page(
    storage: &Storage,
    host: &str,
    user: &str,
    claim: &str,
) -> Result<Vec<OfflineMessage>, StorageError> {
    let mut tries = 0;
    loop {
        let now = now_micros();
        let until = now.saturating_add(i64::try_from(CLAIM_LEASE.as_micros()).unwrap_or(i64::MAX));
        match storage.claim_offline(host, user, claim, now, until, CLAIM_PAGE).await {
            Err(e) if e.is_retryable() && tries < 3 => tries += 1,
            r => return r,
        }
    }
}

/// Delivers `user`'s stored messages to the session `info` (`sink` when it
/// is on this node), at least once: each batch is deleted once the session
/// wrote it to its connection, and what it did not take is released for the
/// next delivery. `release` ends the session's hold on live messages after
/// the stored ones.
async fn deliver_stored(
    storage: Arc<Storage>,
    router: Arc<Router>,
    info: SessionInfo,
    sink: Option<Arc<dyn SessionSink>>,
    host: String,
    user: String,
    release: bool,
) {
    let jid = info.jid.clone();
    let mut claims: Vec<String> = Vec::new();
    let mut delivered = 0u64;
    'pages: for _ in 0..MAX_PAGES {
        let claim = claim_name(router.node().0);
        let page = match claim_page(&storage, &host, &user, &claim).await {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, %jid, "offline messages could not be read; they stay stored");
                break;
            }
        };
        if page.is_empty() {
            break;
        }
        claims.push(claim.clone());
        let full = page.len() as u64 >= CLAIM_PAGE;
        for chunk in batches(&page) {
            let (Some(first), Some(last)) = (chunk.first(), chunk.last()) else { continue };
            let mut batch = Vec::with_capacity(chunk.len());
            for m in chunk {
                match parse_stored(&m.stanza) {
                    Some(mut el) => {
                        el.set_attr("to", jid.to_string());
                        batch.push(el);
                    }
                    // Deleted with its batch: it would never parse.
                    None => tracing::error!(id = m.id, %jid, "a stored offline message does not parse; dropped"),
                }
            }
            let taken = match &sink {
                Some(sink) => {
                    // Batch after batch, ahead of the live messages the session
                    // holds meanwhile; the next one only once this one is on the
                    // connection, so that the session's output queue never holds
                    // more than one batch, however many are stored.
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    sink.deliver_stored(batch, false, Some(tx));
                    matches!(tokio::time::timeout(ACCEPT_WITHIN, rx).await, Ok(Ok(true)))
                }
                // A session on another node: taken once the cluster link took it.
                None => batch.into_iter().all(|el| router.deliver_to_session(&info, el).is_ok()),
            };
            if !taken {
                tracing::debug!(%jid, "the session did not take its stored messages; they stay stored");
                break 'pages;
            }
            match storage.delete_offline(&host, &user, &claim, first.id, last.id).await {
                Ok(n) => delivered += n,
                Err(e) => tracing::error!(
                    error = %e,
                    %jid,
                    "delivered offline messages could not be deleted; they will be delivered again"
                ),
            }
        }
        if !full {
            break;
        }
    }
    if release {
        if let Some(sink) = &sink {
            // Stored messages are out: live ones held meanwhile may follow.
            sink.deliver_stored(Vec::new(), true, None);
        }
    }
    // What was not taken (or not deleted) is stored again for the next delivery.
    for claim in claims {
        if let Err(e) = storage.release_offline(&host, &user, &claim).await {
            tracing::error!(
                error = %e,
                %jid,
                "offline messages could not be released; they wait for their claim to run out"
            );
        }
    }
    DELIVERED.fetch_add(delivered, Ordering::Relaxed);
    tracing::debug!(%jid, delivered, "offline messages delivered");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_keep_to_their_count_and_bytes() {
        let msg = |id: i64, len: usize| meerkat_storage::OfflineMessage {
            id,
            from: "a@example.com".into(),
            stanza: "x".repeat(len),
            stamp_micros: 0,
        };
        let small: Vec<_> = (0..250).map(|i| msg(i, 10)).collect();
        assert_eq!(batches(&small).iter().map(|b| b.len()).collect::<Vec<_>>(), vec![100, 100, 50]);
        let big: Vec<_> = (0..5).map(|i| msg(i, 20_000)).collect();
        assert_eq!(batches(&big).iter().map(|b| b.len()).collect::<Vec<_>>(), vec![1, 1, 1, 1, 1]);
        let huge = vec![msg(0, 60_000)];
        assert_eq!(batches(&huge).len(), 1, "one stanza at least, however big");
        assert!(batches(&[]).is_empty());
    }
}
