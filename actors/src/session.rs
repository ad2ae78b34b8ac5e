//! The session actor of a bound client resource.
//!
//! It owns the session's state (JID, availability, the modules' slots) and is the
//! only writer to the client: stanzas from the client come in as
//! [`FromClient`] (the reader waits while the mailbox is full, so a fast
//! client is slowed down rather than buffered), stanzas for the client come in
//! as [`Deliver`] through the router's non-blocking `try_send`.
//!
//! Output goes to a writer task through an [`OutQueue`] capped in bytes:
//! actix's `FramedWrite` has no back-pressure, so instead a client that does
//! not read its socket is disconnected once its queue exceeds the cap.
//!
//! The modules' per-session state ([`SessionState`], one slot per module that
//! keeps any) lives here too, and the session runs the module hooks on it
//! (see [`crate::ext`]): on what the client sends before routing it, on what
//! is routed here before writing it, and on what it writes. It tells them
//! when the client has been silent for a while ([`ClientSilent`]; a module
//! may ping it then, XEP-0199) and runs the timers they arm.
//!
//! A module may keep what the session writes until the client acknowledges
//! it (XEP-0198) and make the session outlive its connection: on EOF it then
//! stays bound and keeps buffering for as long as the module says
//! ([`crate::ext::Module::connection_lost`]), and a new connection takes it
//! over with [`Resume`] (which hands the session a fresh [`OutQueue`] and
//! reader control); stale ends of the old connection are told apart by
//! [`ConnClosed`]'s number. Whatever the client may not have received goes
//! back to the account when the session ends.

use meerkat_xmpp::jid::Bare as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use actix::prelude::*;
use bytes::Bytes;
use meerkat_cluster::SessionId;
use meerkat_routing::pressure::{self, Backlog, BacklogEntry, Pressure};
use meerkat_routing::{Accepted, KickReason, Routed, SessionSink};
use meerkat_xmpp::element::Element;
use meerkat_xmpp::error::{error_reply, StanzaErrorCondition, StreamError, StreamErrorCondition};
use meerkat_xmpp::jid::{parse_jid, FullJid, Jid};
use meerkat_xmpp::ns;
use meerkat_xmpp::stanza::{self, IqType, PresenceType, StanzaKind};
use tokio::sync::{mpsc, watch};

use crate::ext::util::error_reply_with;
use crate::ext::{Flow, IqAnswer, ModuleJob, Receive, SessionAcc, SessionState, Stop};
use crate::server::WorkerJob;
use crate::services::Services;

/// Bytes queued for one client's writer, with a byte cap.
#[derive(Clone)]
pub struct OutQueue {
    tx: mpsc::Sender<Bytes>,
    queued: Arc<AtomicUsize>,
    max_bytes: usize,
    /// Bytes ever queued; the writer counts those it wrote in [`Written`].
    pushed: Arc<AtomicU64>,
    progress: Arc<WriteProgress>,
}

/// Bytes written to the connection so far, for [`OutQueue::written_up_to_now`]:
/// the writer wakes someone only while someone waits (rarely: stored
/// messages taken once written), so a write costs one atomic addition.
#[derive(Default)]
struct WriteProgress {
    total: AtomicU64,
    /// The writer is gone.
    ended: std::sync::atomic::AtomicBool,
    waiters: AtomicUsize,
    notify: tokio::sync::Notify,
}

/// The writer's side of an [`OutQueue`]'s counts: bytes still queued, and
/// bytes written to the connection so far (watched by [`OutQueue::written_up_to_now`]).
pub struct Written {
    queued: Arc<AtomicUsize>,
    progress: Arc<WriteProgress>,
}

impl Written {
    /// `len` bytes left the queue.
    pub fn dequeued(&self, len: usize) {
        self.queued.fetch_sub(len.min(self.queued.load(Ordering::Relaxed)), Ordering::Relaxed);
    }

    /// `len` bytes (of those dequeued) reached the connection.
    pub fn wrote(&self, len: usize) {
        // SeqCst with the waiter's side: either this sees the waiter, or the
        // waiter sees this addition.
        self.progress.total.fetch_add(len as u64, Ordering::SeqCst);
        if self.progress.waiters.load(Ordering::SeqCst) > 0 {
            self.progress.notify.notify_waiters();
        }
    }
}

impl Drop for Written {
    fn drop(&mut self) {
        self.progress.ended.store(true, Ordering::SeqCst);
        self.progress.notify.notify_waiters();
    }
}

/// Why a write could not be queued.
#[derive(Debug, PartialEq, Eq)]
pub enum PushError {
    /// The client does not read fast enough.
    Overflow,
    /// The connection's writer is gone: the connection ended.
    Closed,
}

impl OutQueue {
    pub fn new(capacity: usize, max_bytes: usize) -> (OutQueue, mpsc::Receiver<Bytes>, Written) {
        let (tx, rx) = mpsc::channel(capacity);
        let queued = Arc::new(AtomicUsize::new(0));
        let progress = Arc::new(WriteProgress::default());
        let out = OutQueue {
            tx,
            queued: queued.clone(),
            max_bytes,
            pushed: Arc::new(AtomicU64::new(0)),
            progress: progress.clone(),
        };
        (out, rx, Written { queued, progress })
    }

    /// Resolves to `true` once the writer wrote everything queued so far to
    /// the connection, `false` if the writer ended first.
    pub fn written_up_to_now(&self) -> impl std::future::Future<Output = bool> + Send + 'static {
        let target = self.pushed.load(Ordering::Relaxed);
        let progress = self.progress.clone();
        async move {
            struct Waiting<'a>(&'a WriteProgress);
            impl Drop for Waiting<'_> {
                fn drop(&mut self) {
                    self.0.waiters.fetch_sub(1, Ordering::SeqCst);
                }
            }
            progress.waiters.fetch_add(1, Ordering::SeqCst);
            let _waiting = Waiting(&progress);
            loop {
                let notified = progress.notify.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if progress.total.load(Ordering::SeqCst) >= target {
                    return true;
                }
                if progress.ended.load(Ordering::SeqCst) {
                    return false;
                }
                notified.await;
            }
        }
    }

    pub fn push(&self, data: String) -> Result<(), PushError> {
        let len = data.len();
        if self.queued.load(Ordering::Relaxed) + len > self.max_bytes {
            return Err(PushError::Overflow);
        }
        self.queued.fetch_add(len, Ordering::Relaxed);
        self.tx.try_send(Bytes::from(data)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => PushError::Overflow,
            mpsc::error::TrySendError::Closed(_) => PushError::Closed,
        })?;
        self.pushed.fetch_add(len as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// What the reader and writer tasks watch: keep going, stop reading, or abort everything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoControl {
    Run,
    StopReading,
    Abort,
}

/// Where a session asks the reader of its connection to wait before it
/// reads the client's next stanza: a recipient's queue that the client's
/// stanzas filled over its bound ([`meerkat_routing::pressure`]). Checking
/// it costs the reader one atomic load per stanza.
#[derive(Clone, Default)]
pub struct ReadGate(Arc<GateInner>);

#[derive(Default)]
struct GateInner {
    armed: std::sync::atomic::AtomicBool,
    pressure: std::sync::Mutex<Option<Pressure>>,
}

impl ReadGate {
    /// The reader waits on `p` before its next stanza.
    pub fn hold(&self, p: Pressure) {
        *self.0.pressure.lock().unwrap_or_else(|e| e.into_inner()) = Some(p);
        self.0.armed.store(true, Ordering::Release);
    }

    /// What the reader must wait on now, if anything.
    pub fn take(&self) -> Option<Pressure> {
        // A plain load first: the swap, a locked instruction, only when armed.
        if !self.0.armed.load(Ordering::Acquire) || !self.0.armed.swap(false, Ordering::AcqRel) {
            return None;
        }
        self.0.pressure.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Deliveries refused because a session's mailbox and its overflow were
/// both full (they fell back to the account).
static OVERFLOW_REFUSED: AtomicU64 = AtomicU64::new(0);

/// Deliveries refused so far because a session's mailbox and its overflow
/// were both full (`meerkat_session_overflow_refused_total`).
pub fn overflow_refused() -> u64 {
    OVERFLOW_REFUSED.load(Ordering::Relaxed)
}

/// A top-level element the client sent.
#[derive(Message)]
#[rtype(result = "()")]
pub struct FromClient(pub Element, pub std::time::Instant);

/// A stanza routed to this resource.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Deliver(pub Element, pub Option<std::time::Instant>, pub Option<BacklogEntry>);

/// Stored messages for this resource, written ahead of held live ones; with
/// `release`, the live messages held since the initial presence follow.
#[derive(Message)]
#[rtype(result = "()")]
pub struct DeliverStored {
    pub stanzas: Vec<Element>,
    pub release: bool,
    /// Told whether the stanzas were written to the connection.
    pub accepted: Option<Accepted>,
}

/// Live messages held at most while stored ones are fetched; past this they
/// are written at once.
const MAX_HELD: usize = 10_000;
/// The longest live messages are held after the initial presence.
const HOLD_AT_MOST: std::time::Duration = std::time::Duration::from_secs(10);

/// End the session on the server's initiative.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Kick(pub KickReason);

/// The client side ended.
#[derive(Message)]
#[rtype(result = "()")]
pub enum ClientClosed {
    /// The closing tag: the client still reads what is already on its way.
    Closed,
    /// The connection is gone.
    Gone,
    /// A parse error or an idle timeout: the stream ends with this error.
    Error(StreamError),
}

/// The connection `conn` (see [`Resume`]) ended; stale ends of a connection
/// that a resumption replaced are ignored.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ConnClosed(pub u64, pub ClientClosed);

/// XEP-0198: a new connection of `bare` takes this session over, after the
/// client handled `h` of our stanzas. The answer is the session's JID and the
/// number of the new connection (for [`ConnClosed`]); an error when the
/// session is not `bare`'s, is closing, or `h` is impossible.
#[derive(Message)]
#[rtype(result = "Result<(FullJid, u64), ()>")]
pub struct Resume {
    pub previd: String,
    pub bare: meerkat_xmpp::jid::BareJid,
    pub h: u32,
    pub out: OutQueue,
    pub io: watch::Sender<IoControl>,
    /// Where the new connection's reader waits when the session asks it to.
    pub gate: ReadGate,
    /// Resumed inside SASL2: `<resumed/>` goes inside its `<success/>`.
    pub sasl2: Option<crate::negotiation::Sasl2Resume>,
}

/// What the modules asked while the session opened (XEP-0386 inline
/// requests, answered in `<success/>` already): carried out first.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ApplyHooks(pub SessionAcc);

/// The client has sent nothing for a while ([`crate::ext::CoreTuning::silent_after`]).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ClientSilent;

/// Sent to self after the last queued deliveries, to write the closing bytes.
#[derive(Message)]
#[rtype(result = "()")]
struct Finish(Option<StreamError>);

/// One bound client resource.
pub struct C2sSession {
    svc: Arc<Services>,
    /// The modules of the session's host.
    hooks: Arc<crate::ext::Registry>,
    jid: FullJid,
    sid: SessionId,
    out: Option<OutQueue>,
    io: watch::Sender<IoControl>,
    /// Where the reader of the attached connection is asked to wait.
    gate: ReadGate,
    /// The resource sent available presence (RFC 6121 §4.2), so routing may
    /// deliver to it by priority.
    available: bool,
    /// Routing no longer sends here; deliveries still in the mailbox are re-routed or flushed.
    detached: bool,
    /// Live messages held while the offline messages of the initial presence
    /// are being fetched, so that none of them overtakes a stored one.
    held: Option<Vec<Element>>,
    client_gone: bool,
    /// What the modules keep for this session.
    state: SessionState,
    /// The id a new connection may resume this session with (XEP-0198), as a
    /// module gave it ([`SessionAcc::resumable`]).
    resume_id: Option<String>,
    /// A connection is attached (false while a resumable session waits).
    connected: bool,
    /// Number of the attached connection; it grows with each resumption.
    conn: u64,
    /// The last `to` addresses the client used, parsed (most recent first):
    /// a conversation repeats its addressee, and stringprep is costly.
    recent_to: Vec<(Box<str>, Jid)>,
    /// Counted in `sm_session_count` while the session lives.
    _counted: crate::instrument::SessionMetric,
}

/// How many parsed `to` addresses a session keeps.
const RECENT_TO: usize = 8;

impl C2sSession {
    pub fn new(
        svc: Arc<Services>,
        jid: FullJid,
        sid: SessionId,
        out: OutQueue,
        io: watch::Sender<IoControl>,
        gate: ReadGate,
        state: SessionState,
    ) -> Self {
        let counted =
            svc.instruments.host(crate::instrument::ConnectionType::C2s, jid.domain().as_str()).session_opened();
        C2sSession {
            _counted: counted,
            hooks: svc.ctx.hooks.of(jid.domain().as_str()).clone(),
            svc,
            jid,
            sid,
            out: Some(out),
            io,
            gate,
            available: false,
            detached: false,
            held: None,
            client_gone: false,
            state,
            resume_id: None,
            connected: true,
            conn: 0,
            recent_to: Vec::new(),
        }
    }

    /// The stanza's `to`, parsed, through [`C2sSession::recent_to`].
    fn parse_to(&mut self, el: &Element) -> Result<Option<Jid>, meerkat_xmpp::jid::JidError> {
        let Some(raw) = el.attr("to") else { return Ok(None) };
        if let Some(i) = self.recent_to.iter().position(|(s, _)| &**s == raw) {
            self.recent_to[..=i].rotate_right(1);
            return Ok(Some(self.recent_to[0].1.clone()));
        }
        let jid = parse_jid(raw)?;
        self.recent_to.truncate(RECENT_TO - 1);
        self.recent_to.insert(0, (raw.into(), jid.clone()));
        Ok(Some(jid))
    }

    pub fn sid(&self) -> SessionId {
        self.sid
    }

    fn write(&mut self, xml: String, ctx: &mut Context<Self>) {
        let Some(out) = &self.out else { return };
        let pushed = out.push(xml);
        if pushed == Err(PushError::Closed) && !self.detached {
            if let Some(timeout) = self.hooks.connection_lost(&self.state) {
                // The connection ended before its end reached this session: with
                // XEP-0198 the session waits for a resumption, as on that end; the
                // stanza stays unacknowledged and is sent again on resumption.
                self.wait_for_resumption(timeout, ctx);
                return;
            }
        }
        if pushed.is_err() {
            tracing::warn!(jid = %self.jid, "client does not read its stream; disconnecting");
            let _ = self.io.send(IoControl::Abort);
            self.out = None;
            // Nobody reads here any more.
            self.let_go();
            ctx.address().do_send(Finish(None));
        }
    }

    /// Writes a reply to the client now, after whatever the output hooks kept
    /// for it before ([`crate::ext::Module::client_output`], `urgent`).
    fn write_stanza(&mut self, el: &Element, ctx: &mut Context<Self>) {
        self.output(el.clone(), true, ctx);
    }

    /// Writes a stanza routed here, unless an output hook keeps it for later.
    fn deliver_to_client(&mut self, el: Element, ctx: &mut Context<Self>) {
        self.output(el, false, ctx);
    }

    /// Writes what the output hooks let through for a stanza, in order.
    fn output(&mut self, el: Element, urgent: bool, ctx: &mut Context<Self>) {
        // Empty, and so without an allocation, unless a hook releases what it kept.
        let mut before = Vec::new();
        let el = self.hooks.client_output(&mut self.state, el, urgent, &mut before);
        for el in before {
            self.write_counted(el, ctx);
        }
        if let Some(el) = el {
            self.write_counted(el, ctx);
        }
    }

    /// Carries out what session hooks asked: stanzas to write, then jobs for
    /// the server workers, then `then` (with whether the jobs were queued).
    fn apply(
        &mut self,
        acc: SessionAcc,
        ctx: &mut Context<Self>,
        then: impl FnOnce(&mut Self, bool, &mut Context<Self>) + 'static,
    ) {
        let SessionAcc { write, jobs, hold_messages, resumable, timers, stop, taken: _ } = acc;
        for el in write {
            self.write_counted(el, ctx);
        }
        for t in timers {
            let conn = self.conn;
            ctx.run_later(t.after, move |act, ctx| act.on_timer(t.owner, t.token, conn, ctx));
        }
        if let Some(id) = resumable {
            self.svc.add_resumable(id.clone(), ctx.address());
            self.resume_id = Some(id);
        }
        if let Some(stop) = stop {
            self.stop_stream(stop, ctx);
            return;
        }
        if hold_messages && self.held.is_none() {
            // Released once the stored messages are written, or after a while whatever happens.
            self.held = Some(Vec::new());
            ctx.run_later(HOLD_AT_MOST, |act, ctx| act.release_held(ctx));
        }
        let mut waiting = Vec::new();
        for job in jobs {
            if !waiting.is_empty() {
                // Behind a job that had to wait: queue order must hold.
                waiting.push(job);
                continue;
            }
            if let Err(WorkerJob::Module(job)) = self.svc.workers.enqueue(WorkerJob::Module(job)) {
                waiting.push(job);
            }
        }
        if waiting.is_empty() {
            then(self, true, ctx);
            return;
        }
        // The workers are behind: this session stops handling anything else
        // (so its client's stanzas stay in order and its reader stops reading)
        // until the jobs are queued.
        let svc = self.svc.clone();
        let wait = async move {
            for job in waiting {
                if svc.workers.enqueue_wait(WorkerJob::Module(job)).await.is_err() {
                    return false;
                }
            }
            true
        };
        ctx.wait(wait.into_actor(self).map(move |queued, act, ctx| then(act, queued, ctx)));
    }

    /// Writes one stanza, then what the hooks on written stanzas ask for
    /// (XEP-0198 keeps it until the client acknowledges it, and may ask for an
    /// acknowledgement or end the stream).
    fn write_counted(&mut self, el: Element, ctx: &mut Context<Self>) {
        self.write(el.to_xml(ns::CLIENT), ctx);
        if self.detached && self.client_gone {
            // This very write found the client gone (it does not read): the
            // stanza never left, and goes back to the account with the rest.
            self.give_back(el);
            return;
        }
        let acc = self.hooks.client_wrote(&mut self.state, el);
        for el in acc.write {
            self.write(el.to_xml(ns::CLIENT), ctx);
        }
        if let Some(stop) = acc.stop {
            self.stop_stream(stop, ctx);
        }
    }

    /// Ends the stream as a hook asked.
    fn stop_stream(&mut self, stop: Stop, ctx: &mut Context<Self>) {
        if stop.reroute_queued {
            self.let_go();
        }
        self.stream_fail(stop.error, ctx);
    }

    /// The client is gone for good: this session leaves routing, and what
    /// waits in its mailbox and what the client did not acknowledge go back
    /// to the account (other resources or offline storage).
    fn let_go(&mut self) {
        self.client_gone = true;
        self.detach();
        self.return_unacked();
    }

    /// Gives the messages the client may not have received back to the
    /// router, for the account's other resources or offline storage (RFC 6121
    /// §8.5.3), and ends resumption. Call after [`Self::detach`], so they
    /// cannot come back here.
    fn return_unacked(&mut self) {
        if let Some(id) = self.resume_id.take() {
            self.svc.remove_resumable(&id);
        }
        for el in self.hooks.unacknowledged(&mut self.state) {
            self.give_back(el);
        }
    }

    /// A message that reached this session but not its client goes back to
    /// the account: its other resources or offline storage (RFC 6121 §8.5.3).
    /// Other stanzas, and those a hook keeps from the account (a carbon copy
    /// was for this resource only), are dropped.
    fn give_back(&self, el: Element) {
        if StanzaKind::of(&el) != Some(StanzaKind::Message) || !self.hooks.returns_to_account(&el) {
            return;
        }
        if let Some(from) = el.attr("from").and_then(|f| parse_jid(f).ok()) {
            self.svc.router.reroute(Routed { from, to: Jid::from(self.jid.bare()), stanza: el });
        }
    }

    /// XEP-0198: the connection is lost but the client may resume. The session
    /// stays bound and keeps what is routed to it (bounded by `buffer_max`)
    /// until a new connection resumes it or `timeout` runs out.
    fn wait_for_resumption(&mut self, timeout: std::time::Duration, ctx: &mut Context<Self>) {
        tracing::debug!(jid = %self.jid, "connection lost; waiting for the client to resume");
        self.connected = false;
        let _ = self.io.send(IoControl::Abort);
        self.out = None;
        let conn = self.conn;
        ctx.run_later(timeout, move |act, ctx| {
            if !act.connected && act.conn == conn {
                tracing::debug!(jid = %act.jid, "not resumed in time; closing the session");
                act.let_go();
                ctx.address().do_send(Finish(None));
            }
        });
    }

    /// Takes the session out of routing and tells contacts it is gone.
    fn detach(&mut self) {
        if self.detached {
            return;
        }
        self.detached = true;
        let router = &self.svc.router;
        router.unregister_sink(self.sid);
        // Messages held for the offline flush go back to the account.
        for el in self.held.take().unwrap_or_default() {
            if let Some(from) = el.attr("from").and_then(|f| parse_jid(f).ok()) {
                router.reroute(Routed { from, to: Jid::from(self.jid.bare()), stanza: el });
            }
        }
        self.svc.registry.close(&meerkat_cluster::SessionInfo {
            jid: self.jid.clone(),
            node: router.node(),
            sid: self.sid,
            priority: None,
            created_micros: 0,
        });
        self.available = false;
        let acc = self.hooks.session_closed(&self.svc.ctx, &self.jid, &mut self.state);
        // The session may be stopping and cannot wait: jobs that find their
        // queue full wait in a task of their own (one per ending session).
        let mut waiting: Vec<Box<dyn ModuleJob>> = Vec::new();
        for job in acc.jobs {
            if !waiting.is_empty() {
                waiting.push(job);
            } else if let Err(WorkerJob::Module(job)) = self.svc.workers.enqueue(WorkerJob::Module(job)) {
                waiting.push(job);
            }
        }
        if !waiting.is_empty() {
            let workers = self.svc.workers.clone();
            let jid = self.jid.clone();
            actix::spawn(async move {
                for job in waiting {
                    if workers.enqueue_wait(WorkerJob::Module(job)).await.is_err() {
                        tracing::warn!(%jid, "server workers closed; a closing session's job was not run");
                        return;
                    }
                }
            });
        }
    }

    fn stream_fail(&mut self, err: StreamError, ctx: &mut Context<Self>) {
        self.detach();
        ctx.address().do_send(Finish(Some(err)));
    }

    fn reply_error(&mut self, el: &Element, cond: StanzaErrorCondition, ctx: &mut Context<Self>) {
        if let Some(mut e) = error_reply(el, cond, None) {
            e.remove_attr("from");
            e.set_attr("to", self.jid.as_str().to_owned());
            self.write_stanza(&e, ctx);
        }
    }

    /// Answers a stanza the client sent with a module's `<error/>`; errors and IQ
    /// results cannot be answered and are dropped.
    fn refuse(&mut self, el: &Element, error: Element, ctx: &mut Context<Self>) {
        if el.name == "iq" && el.attr("type") == Some("result") {
            return;
        }
        if let Some(mut e) = error_reply_with(el, error) {
            e.remove_attr("from");
            e.set_attr("to", self.jid.as_str().to_owned());
            self.write_stanza(&e, ctx);
        }
    }

    /// Writes the answer to an IQ the session handled itself.
    fn answer_iq(&mut self, el: &Element, answer: IqAnswer, ctx: &mut Context<Self>) {
        match answer {
            Ok(payload) => {
                let mut res = stanza::iq_result(el, payload);
                res.remove_attr("from");
                res.set_attr("to", self.jid.as_str().to_owned());
                self.write_stanza(&res, ctx);
            }
            Err(cond) => self.reply_error(el, cond, ctx),
        }
    }

    fn route(&self, to: Jid, stanza: Element) {
        self.svc.router.route(Routed { from: Jid::from(self.jid.clone()), to, stanza });
    }

    fn on_client_stanza(&mut self, mut el: Element, ctx: &mut Context<Self>) {
        let Some(kind) = StanzaKind::of(&el) else {
            let hooks = self.hooks.clone();
            if let Some(acc) = hooks.session_element(&self.svc.ctx, &self.jid, &mut self.state, &el) {
                self.apply(acc, ctx, |_, _, _| {});
                return;
            }
            self.stream_fail(
                StreamError::with_text(
                    StreamErrorCondition::UnsupportedStanzaType,
                    format!("<{}/> is not a stanza", el.name),
                ),
                ctx,
            );
            return;
        };
        self.hooks.client_stanza(&mut self.state);
        if let Some(from) = el.attr("from") {
            // RFC 6120 §8.1.2.1: the server stamps `from`; a different one is an error.
            let ok = match parse_jid(from) {
                Ok(j) => match j.try_as_full() {
                    Ok(f) => *f == self.jid,
                    Err(b) => *b == self.jid.bare(),
                },
                Err(_) => false,
            };
            if !ok {
                self.stream_fail(
                    StreamError::with_text(StreamErrorCondition::InvalidFrom, "'from' does not match the bound JID"),
                    ctx,
                );
                return;
            }
        }
        el.set_attr("from", self.jid.as_str().to_owned());
        let to = match self.parse_to(&el) {
            Ok(t) => t,
            Err(_) => {
                self.reply_error(&el, StanzaErrorCondition::JidMalformed, ctx);
                return;
            }
        };
        if let Some(t) = &to {
            // Canonical form, so that every later comparison is a plain equality.
            el.set_attr("to", t.as_str().to_owned());
            // XEP-0191: nothing goes to a JID the user blocks.
            if let Err(error) = self.hooks.user_send_check(&self.svc.ctx, &self.state, &self.jid, t, &el) {
                self.refuse(&el, error, ctx);
                return;
            }
        }
        match kind {
            StanzaKind::Message => {
                let to = to.unwrap_or_else(|| Jid::from(self.jid.bare()));
                // Module hooks (XEP-0313 archiving) see each sent message once, here.
                let acc = match self.hooks.user_send_message(&self.svc.ctx, &mut self.state, &self.jid, &to, &mut el) {
                    Ok(acc) => acc,
                    Err(cond) => {
                        self.reply_error(&el, cond, ctx);
                        return;
                    }
                };
                let taken = acc.taken;
                self.apply(acc, ctx, move |act, queued, ctx| match (queued, taken) {
                    (true, false) => act.route(to, el),
                    // A module took it, and its jobs are queued.
                    (true, true) => {}
                    (false, _) => act.reply_error(&el, StanzaErrorCondition::ServiceUnavailable, ctx),
                });
            }
            StanzaKind::Presence => self.on_client_presence(el, to, ctx),
            StanzaKind::Iq => self.on_client_iq(el, to, ctx),
        }
    }

    fn on_client_presence(&mut self, el: Element, to: Option<Jid>, ctx: &mut Context<Self>) {
        let Some(ptype) = PresenceType::of(&el) else {
            self.reply_error(&el, StanzaErrorCondition::BadRequest, ctx);
            return;
        };
        let hooks = self.hooks.clone();
        let mut acc = SessionAcc::default();
        let Some(to) = to else {
            let initial = match ptype {
                PresenceType::Available => {
                    let priority = el
                        .get_child("priority", ns::CLIENT)
                        .and_then(|p| p.text().trim().parse::<i32>().ok())
                        .map(|p| p.clamp(-128, 127) as i8)
                        .unwrap_or(0);
                    let initial = !self.available;
                    self.available = true;
                    self.svc.registry.set_priority(&self.jid, self.sid, Some(priority));
                    initial
                }
                PresenceType::Unavailable if self.available => {
                    self.available = false;
                    self.svc.registry.set_priority(&self.jid, self.sid, None);
                    false
                }
                // Unavailable while unavailable: nothing changes.
                PresenceType::Unavailable => return,
                // Subscription requests and probes need an addressee.
                _ => {
                    self.reply_error(&el, StanzaErrorCondition::BadRequest, ctx);
                    return;
                }
            };
            hooks.user_send_presence(&self.svc.ctx, &mut self.state, &self.jid, None, &el, initial, &mut acc);
            self.apply(acc, ctx, |act, queued, _| {
                if !queued {
                    tracing::warn!(jid = %act.jid, "server workers closed; presence not broadcast");
                }
            });
            return;
        };
        let flow = hooks.user_send_presence(&self.svc.ctx, &mut self.state, &self.jid, Some(&to), &el, false, &mut acc);
        self.apply(acc, ctx, move |act, queued, ctx| {
            if !queued {
                act.reply_error(&el, StanzaErrorCondition::ResourceConstraint, ctx);
            } else if flow == Flow::Continue {
                act.route(to, el);
            }
        });
    }

    fn on_client_iq(&mut self, el: Element, to: Option<Jid>, ctx: &mut Context<Self>) {
        let Some(itype) = IqType::of(&el) else {
            self.reply_error(&el, StanzaErrorCondition::BadRequest, ctx);
            return;
        };
        if el.attr("id").is_none() {
            self.reply_error(&el, StanzaErrorCondition::BadRequest, ctx);
            return;
        }
        let to_own_account = to.as_ref().is_none_or(|t| *t == self.jid.bare());
        if !itype.is_request() {
            let to_server =
                to.as_ref().is_some_and(|t| t.node().is_none() && t.domain().as_str() == self.jid.domain().as_str());
            // The answer to a request the server sent (XEP-0199 §4.2: a result,
            // or an error from a client without ping).
            if (to_server || to_own_account) && self.hooks.client_iq_response(&mut self.state, &el) {
                return;
            }
        }
        if itype.is_request() && to_own_account {
            if let Some(payload) = stanza::iq_payload(&el) {
                let hooks = self.hooks.clone();
                if let Some(answer) = hooks.session_iq(&self.svc.ctx, &self.jid, &mut self.state, &el, payload) {
                    self.answer_iq(&el, answer, ctx);
                    return;
                }
            }
        }
        if itype.is_request() && to.is_none() {
            if let Some(p) = stanza::iq_payload(&el) {
                // RFC 3921 §3 legacy session establishment: a no-op kept for old clients.
                if p.is("session", ns::SESSION) {
                    let mut res = stanza::iq_result(&el, None);
                    res.remove_attr("from");
                    res.set_attr("to", self.jid.as_str().to_owned());
                    self.write_stanza(&res, ctx);
                    return;
                }
            }
        }
        let to = to.unwrap_or_else(|| Jid::from(self.jid.bare()));
        self.route(to, el);
    }

    fn on_delivered(&mut self, el: Element, ctx: &mut Context<Self>) {
        if self.detached && self.client_gone {
            // Nobody will read it here.
            self.give_back(el);
            return;
        }
        if let Some(held) = &mut self.held {
            // Held: messages from others, which must not overtake the stored
            // ones. Not what the account itself sends this resource (archive
            // results answering its own query, carbons), which the answer
            // that follows them must not overtake.
            let from_own_account = el.attr("from").is_some_and(|f| f == self.jid.bare().as_str());
            if StanzaKind::of(&el) == Some(StanzaKind::Message) && !from_own_account && held.len() < MAX_HELD {
                held.push(el);
                return;
            }
        }
        match self.hooks.user_receive(&self.svc.ctx, &self.jid, &mut self.state, &el) {
            Receive::Deliver => {}
            Receive::Drop => return,
            Receive::Bounce(cond) => {
                // The error comes from the address the sender used, not from this resource.
                let to = el.attr("to").and_then(|t| parse_jid(t).ok()).unwrap_or_else(|| Jid::from(self.jid.clone()));
                if let Some(from) = el.attr("from").and_then(|f| parse_jid(f).ok()) {
                    self.svc.router.bounce(Routed { from, to, stanza: el }, cond);
                }
                return;
            }
        }
        if !self.connected && !self.detached {
            // Kept for a client that may resume (XEP-0198): the modules may
            // tell it elsewhere (a push notification), before it is kept.
            let acc = self.hooks.stanza_while_detached(&self.svc.ctx, &self.jid, &mut self.state, &el);
            if !acc.jobs.is_empty() || !acc.write.is_empty() {
                self.apply(acc, ctx, move |act, _, ctx| act.deliver_to_client(el, ctx));
                return;
            }
        }
        self.deliver_to_client(el, ctx);
    }

    fn release_held(&mut self, ctx: &mut Context<Self>) {
        for el in self.held.take().unwrap_or_default() {
            self.on_delivered(el, ctx);
        }
    }

    /// Delivers without regard to the hold (stored messages).
    fn on_delivered_now(&mut self, el: Element, ctx: &mut Context<Self>) {
        let held = self.held.take();
        self.on_delivered(el, ctx);
        self.held = held;
    }

    fn on_silent(&mut self, ctx: &mut Context<Self>) {
        if self.detached || !self.connected {
            return;
        }
        let hooks = self.hooks.clone();
        let acc = hooks.client_silent(&self.svc.ctx, &self.jid, &mut self.state);
        self.apply(acc, ctx, |_, _, _| {});
    }

    /// A timer a hook armed went off: its module's hook runs, while the client is connected.
    fn on_timer(&mut self, owner: &'static str, token: u64, conn: u64, ctx: &mut Context<Self>) {
        if self.detached || !self.connected || self.conn != conn {
            return;
        }
        let hooks = self.hooks.clone();
        let acc = hooks.session_timer(&self.svc.ctx, &self.jid, &mut self.state, owner, token);
        self.apply(acc, ctx, |_, _, _| {});
    }
}

impl Actor for C2sSession {
    type Context = Context<Self>;

    fn started(&mut self, _ctx: &mut Self::Context) {
        let hooks = self.hooks.clone();
        hooks.session_opened(&self.svc.ctx, &self.jid, &mut self.state);
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.detach();
        // However the session ends, what the client did not acknowledge goes back
        // to the account (XEP-0198 §5, RFC 6121 §8.5.3), never silently dropped.
        self.return_unacked();
        // Stop the reader; the writer drains what is queued, then closes the socket.
        if *self.io.borrow() == IoControl::Run {
            let _ = self.io.send(IoControl::StopReading);
        }
        self.out = None;
    }
}

impl Handler<FromClient> for C2sSession {
    type Result = ();
    fn handle(&mut self, msg: FromClient, ctx: &mut Context<Self>) {
        if !self.detached {
            let _routing = crate::instrument::routing(msg.1);
            // A queue this stanza went into over its bound (a recipient's
            // full mailbox) holds the reader back before its next stanza.
            let _ = pressure::take();
            self.on_client_stanza(msg.0, ctx);
            if let Some(p) = pressure::take() {
                self.gate.hold(p);
            }
        }
    }
}

impl Handler<DeliverStored> for C2sSession {
    type Result = ();
    fn handle(&mut self, msg: DeliverStored, ctx: &mut Context<Self>) {
        let DeliverStored { stanzas, release, accepted } = msg;
        if accepted.is_some() && (self.detached || !self.connected) {
            // They stay stored, for the next login: not rerouted (which would store them twice).
            if let Some(a) = accepted {
                let _ = a.send(false);
            }
        } else {
            for el in stanzas {
                self.on_delivered_now(el, ctx);
            }
            if let Some(a) = accepted {
                // Taken once the writer has them on the connection: a crash before
                // that leaves them stored, to be delivered again.
                match self.out.as_ref().filter(|_| !self.detached) {
                    Some(out) => {
                        let written = out.written_up_to_now();
                        actix::spawn(async move {
                            let _ = a.send(written.await);
                        });
                    }
                    None => {
                        let _ = a.send(false);
                    }
                }
            }
        }
        if release {
            self.release_held(ctx);
        }
    }
}

impl Handler<Deliver> for C2sSession {
    type Result = ();
    fn handle(&mut self, msg: Deliver, ctx: &mut Context<Self>) {
        // Handled: it no longer counts over the mailbox's capacity.
        drop(msg.2);
        self.on_delivered(msg.0, ctx);
        if let Some(parsed) = msg.1 {
            self.svc.instruments.routed_locally(parsed);
        }
    }
}

impl Handler<ClientSilent> for C2sSession {
    type Result = ();
    fn handle(&mut self, _msg: ClientSilent, ctx: &mut Context<Self>) {
        self.on_silent(ctx);
    }
}

impl Handler<ApplyHooks> for C2sSession {
    type Result = ();
    fn handle(&mut self, msg: ApplyHooks, ctx: &mut Context<Self>) {
        self.apply(msg.0, ctx, |_, _, _| {});
    }
}

impl Handler<Kick> for C2sSession {
    type Result = ();
    fn handle(&mut self, msg: Kick, ctx: &mut Context<Self>) {
        let err = match msg.0 {
            KickReason::Conflict => {
                StreamError::with_text(StreamErrorCondition::Conflict, "another session bound this resource")
            }
            KickReason::Shutdown => StreamError::new(StreamErrorCondition::SystemShutdown),
            KickReason::Admin => {
                StreamError::with_text(StreamErrorCondition::PolicyViolation, "closed by an administrator")
            }
            KickReason::AccountRemoved => {
                StreamError::with_text(StreamErrorCondition::NotAuthorized, "the account was removed")
            }
        };
        self.stream_fail(err, ctx);
    }
}

impl Handler<ConnClosed> for C2sSession {
    type Result = ();
    fn handle(&mut self, ConnClosed(conn, msg): ConnClosed, ctx: &mut Context<Self>) {
        if conn != self.conn || !self.connected {
            // A connection that a resumption replaced.
            return;
        }
        if !self.detached && matches!(msg, ClientClosed::Gone) {
            if let Some(timeout) = self.hooks.connection_lost(&self.state) {
                self.wait_for_resumption(timeout, ctx);
                return;
            }
        }
        match msg {
            ClientClosed::Error(err) => self.stream_fail(err, ctx),
            ClientClosed::Closed | ClientClosed::Gone => {
                // After a closing tag, deliveries already in the mailbox are still
                // written before ours (RFC 6120 §4.4); after EOF they are routed again.
                self.client_gone = matches!(msg, ClientClosed::Gone);
                self.detach();
                if self.client_gone {
                    // Written, perhaps, but never acknowledged (XEP-0198).
                    self.return_unacked();
                }
                ctx.address().do_send(Finish(None));
            }
        }
    }
}

impl Handler<Resume> for C2sSession {
    type Result = Result<(FullJid, u64), ()>;
    fn handle(&mut self, msg: Resume, ctx: &mut Context<Self>) -> Self::Result {
        if self.detached || msg.bare != self.jid.bare() || self.resume_id.as_deref() != Some(msg.previd.as_str()) {
            return Err(());
        }
        let Some(acc) = self.hooks.session_resume(&self.svc.ctx, &mut self.state, &msg.previd, msg.h) else {
            return Err(());
        };
        // `<resumed/>` and what is sent again (still unacknowledged), written as they are.
        let mut write = acc.write;
        if let (Some(resume), Some(first)) = (&msg.sasl2, write.first_mut()) {
            let resumed = std::mem::replace(first, Element::new("success", ns::SASL2));
            *first = crate::negotiation::Opening::sasl2_resumed(resume, &self.jid, resumed);
        }
        let first: Vec<String> = write.iter().map(|el| el.to_xml(ns::CLIENT)).collect();
        // An old connection that nobody noticed was lost yet is dropped now.
        let _ = self.io.send(IoControl::Abort);
        self.io = msg.io;
        self.gate = msg.gate;
        self.out = Some(msg.out);
        self.connected = true;
        self.conn += 1;
        tracing::debug!(jid = %self.jid, resent = first.len().saturating_sub(1), "session resumed");
        self.hooks.session_resumed(&self.svc.ctx, &self.jid, &mut self.state);
        for xml in first {
            self.write(xml, ctx);
        }
        Ok((self.jid.clone(), self.conn))
    }
}

impl Handler<Finish> for C2sSession {
    type Result = ();
    fn handle(&mut self, msg: Finish, ctx: &mut Context<Self>) {
        let mut tail = String::new();
        if let Some(err) = msg.0 {
            tail.push_str(&err.to_xml());
        }
        tail.push_str("</stream:stream>");
        if let Some(out) = &self.out {
            // The closing bytes are small and final; past the cap they are simply dropped.
            let _ = out.push(tail);
        }
        if self.client_gone {
            // Deliveries that found the session just before it left routing may
            // have queued behind this message: one more turn gives them back too.
            ctx.address().do_send(StopNow);
        } else {
            ctx.stop();
        }
    }
}

/// Sent to self, after [`Finish`], by a session whose client is gone.
#[derive(Message)]
#[rtype(result = "()")]
struct StopNow;

impl Handler<StopNow> for C2sSession {
    type Result = ();
    fn handle(&mut self, _: StopNow, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

/// Deliveries a session takes beyond its mailbox's capacity by default
/// (`[session] mailbox_overflow`), queued behind what is there, before
/// routing falls back to the account (other resources, then offline
/// storage), which would let later messages overtake these. While any wait
/// there, whoever routed them waits before reading on
/// ([`meerkat_routing::pressure`]), so a sender that outpaces its recipient
/// does not get near this bound.
pub const DELIVERY_OVERFLOW: usize = 1024;

/// The router's handle on a session: a non-blocking send into its bounded
/// mailbox, which takes up to `overflow` more deliveries, in order, when it
/// is full, and makes their senders wait.
pub struct ActorSink {
    addr: Addr<C2sSession>,
    /// Deliveries queued over the mailbox's capacity and not handled yet.
    overflow: Arc<Backlog>,
}

impl ActorSink {
    pub fn new(addr: Addr<C2sSession>, overflow: usize) -> ActorSink {
        ActorSink { addr, overflow: Backlog::new(0, overflow) }
    }
}

impl SessionSink for ActorSink {
    fn deliver(&self, stanza: Element) -> Result<(), Element> {
        let since = crate::instrument::routing_since();
        match self.addr.try_send(Deliver(stanza, since, None)) {
            Ok(()) => Ok(()),
            Err(SendError::Closed(Deliver(s, ..))) => Err(s),
            Err(SendError::Full(Deliver(s, ..))) => {
                let Some(entry) = self.overflow.push() else {
                    OVERFLOW_REFUSED.fetch_add(1, Ordering::Relaxed);
                    return Err(s);
                };
                // The same queue, past its capacity: behind everything already there.
                self.addr.do_send(Deliver(s, since, Some(entry)));
                Ok(())
            }
        }
    }

    fn kick(&self, reason: KickReason) {
        // A kick must get through even to a full mailbox.
        self.addr.do_send(Kick(reason));
    }

    fn deliver_stored(&self, stanzas: Vec<Element>, release: bool, accepted: Option<Accepted>) {
        // Must get through even to a full mailbox: it also ends the hold.
        self.addr.do_send(DeliverStored { stanzas, release, accepted });
    }
}
