//! The C2S connection driver: connections in, negotiation, then a session actor.
//!
//! Until a resource is bound, one task owns the whole connection (so STARTTLS
//! can replace the transport) and runs the [`Negotiator`]. At bind it splits
//! the connection, and the same task goes on with both halves: it reads and
//! hands stanzas to the [`C2sSession`] actor, and drains the session's
//! [`OutQueue`] into the connection.
//! Instead of binding, a connection may resume a waiting session (XEP-0198
//! `<resume/>`): it then attaches its writer and reader to that actor.
//!
//! A connection is TCP ([`serve`], RFC 6120) or a WebSocket the node upgraded
//! ([`serve_websocket`], RFC 7395). Both take the same path; only reading and
//! writing differ, behind [`Conn`] (see [`crate::transport`] and
//! [`crate::websocket`]).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use meerkat_cluster::{SessionId, SessionInfo};
use meerkat_routing::KickReason;
use meerkat_xmpp::error::{StanzaErrorCondition, StreamError, StreamErrorCondition};
use meerkat_xmpp::jid::{parse_bare, parse_full, FullJid};
use meerkat_xmpp::parser::{Limits, StreamEvent};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;

use crate::admission::{Admission, Admitted, Refused};
use crate::instrument::{ConnectionType, Meter};
use crate::negotiation::{stream_header_xml, NegAction, NegEvent, NegotiationConfig, Negotiator, Opening, TlsMode};
use crate::services::{now_micros, Services};
use crate::session::{
    ActorSink, C2sSession, ClientClosed, ClientSilent, ConnClosed, FromClient, IoControl, OutQueue, ReadGate, Resume,
    Written,
};
use crate::transport::{Conn, ConnReader, ConnWriter, Shaper, Transport};
use crate::websocket::{self, WsConnection, WsOut};

/// One `[[listen.c2s]]` listener's settings (or one WebSocket endpoint's).
pub struct C2sListener {
    pub negotiation: NegotiationConfig,
    pub limits: Limits,
    pub tls: Option<TlsAcceptor>,
    /// The listener's access rule lets users log in.
    pub allow_login: bool,
    /// `max_connections` and `max_connections_per_ip` of the listener.
    pub admission: Arc<Admission>,
    /// The listener's shaper (`[shaper.NAME] max_rate`): bytes per second
    /// read from each connection; `None` reads as fast as the client sends.
    pub max_rate: Option<u64>,
    /// How client certificates are asked for and verified (SASL EXTERNAL);
    /// `None` asks for none.
    pub client_certs: Option<Arc<crate::client_cert::ClientCerts>>,
}

/// Why a connection ended early.
#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("timed out")]
    Timeout,
}

/// Serves one accepted TCP connection to its end.
pub async fn serve(svc: Arc<Services>, listener: Arc<C2sListener>, tcp: TcpStream, peer: std::net::SocketAddr) {
    let _ = tcp.set_nodelay(true);
    let _admitted = match listener.admission.admit(Some(peer.ip())) {
        Ok(a) => a,
        Err(why) => {
            tracing::debug!(%peer, reason = %why, "connection refused");
            // Boxed: the task of an admitted connection keeps no room for it.
            Box::pin(refuse(&listener, tcp, why)).await;
            return;
        }
    };
    let _guard = svc.connection_guard();
    let deadline = tokio::time::Instant::now() + svc.settings.negotiation_timeout;
    // Negotiation (with the TLS handshake) and the session's start run
    // boxed: their memory is given back once the session is reading, and
    // the task keeps only what reading needs for the session's lifetime.
    let started = Box::pin(async {
        let transport = match (&listener.tls, listener.negotiation.tls_mode) {
            (Some(acceptor), TlsMode::Tls) => {
                let tls =
                    tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await.map_err(|_| ConnError::Timeout)??;
                Transport::Tls(Box::new(tls))
            }
            _ => Transport::Plain(tcp),
        };
        let meter = Meter { host: None, data: Some(svc.instruments.data(ConnectionType::C2s, transport.is_tls())) };
        let mut conn = Conn::stream(transport, listener.limits, Shaper::new(listener.max_rate), meter);
        // TLS 1.3 0-RTT (`tls.early_data`): what came before the handshake ended.
        let early = conn.take_early_data();
        let negotiated = negotiate(svc.clone(), listener, conn, deadline, Some(peer.ip()), early).await?;
        start_session(svc, negotiated).await
    })
    .await;
    let result = read_until_closed(started).await;
    match result {
        Ok(()) => tracing::debug!(%peer, "connection finished"),
        Err(e) => tracing::debug!(%peer, error = %e, "connection ended"),
    }
}

/// Serves one WebSocket connection (RFC 7395) that the node's HTTP layer
/// upgraded, to its end. `listener` must not offer STARTTLS (§3.9).
pub async fn serve_websocket(
    svc: Arc<Services>,
    listener: Arc<C2sListener>,
    ws: WsConnection,
    peer: Option<std::net::SocketAddr>,
    admitted: Admitted,
) {
    let _admitted = admitted;
    let _guard = svc.connection_guard();
    let deadline = tokio::time::Instant::now() + svc.settings.negotiation_timeout;
    let conn = Conn::websocket(ws, listener.limits, Shaper::new(listener.max_rate), Meter::default());
    let started = Box::pin(async {
        let negotiated = negotiate(svc.clone(), listener, conn, deadline, peer.map(|p| p.ip()), false).await?;
        start_session(svc, negotiated).await
    })
    .await;
    let result = read_until_closed(started).await;
    match result {
        Ok(()) => tracing::debug!(?peer, "websocket connection finished"),
        Err(e) => tracing::debug!(?peer, error = %e, "websocket connection ended"),
    }
}

/// Refusals answered at once; past this many, a refused connection is closed
/// without a word (an attacker opening connections in a loop must not make
/// the node hold a task and a socket for each).
const MAX_REFUSING: usize = 1024;
/// The longest a refused connection is kept: TLS handshake (direct TLS),
/// the error, and reading what the client still sends until it closes.
const REFUSAL_TIME: Duration = Duration::from_secs(5);
static REFUSING: AtomicUsize = AtomicUsize::new(0);

/// Answers a connection over a limit with `<policy-violation/>` (RFC 6120
/// §4.9.1.2: our stream header, the error, the closing tag) and closes it.
/// The client's own header may still be unread: its bytes are read and
/// dropped until it closes, so that the close is not a reset that could
/// destroy the error before the client reads it.
async fn refuse(listener: &C2sListener, tcp: TcpStream, why: Refused) {
    struct Slot;
    impl Drop for Slot {
        fn drop(&mut self) {
            REFUSING.fetch_sub(1, Ordering::AcqRel);
        }
    }
    if REFUSING.fetch_add(1, Ordering::AcqRel) >= MAX_REFUSING {
        REFUSING.fetch_sub(1, Ordering::AcqRel);
        return;
    }
    let _slot = Slot;
    let err = StreamError::with_text(StreamErrorCondition::PolicyViolation, why.to_string());
    let bytes = format!(
        "{}{}</stream:stream>",
        stream_header_xml(&default_host(listener), &format!("{:016x}", rand::random::<u64>())),
        err.to_xml()
    );
    let _ = tokio::time::timeout(REFUSAL_TIME, async {
        match (&listener.tls, listener.negotiation.tls_mode) {
            (Some(acceptor), TlsMode::Tls) => {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    write_and_drain(tls, bytes.as_bytes()).await;
                }
            }
            _ => write_and_drain(tcp, bytes.as_bytes()).await,
        }
    })
    .await;
}

async fn write_and_drain<S: tokio::io::AsyncRead + AsyncWrite + Unpin>(mut s: S, bytes: &[u8]) {
    use tokio::io::AsyncReadExt;
    if s.write_all(bytes).await.is_err() || s.shutdown().await.is_err() {
        return;
    }
    let mut sink = [0u8; 1024];
    while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
}

/// Runs the reading side of a started session, if one was started.
async fn read_until_closed(started: Result<Option<Box<Reading>>, ConnError>) -> Result<(), ConnError> {
    match started {
        Ok(Some(reading)) => reading.run().await,
        Ok(None) => Ok(()),
        Err(e) => Err(e),
    }
}

/// How a negotiation ended.
enum Negotiated {
    /// The connection is over.
    Closed,
    /// A resource is bound: a session runs next.
    Bound { conn: Conn, jid: FullJid, opening: Opening },
    /// A waiting session was resumed (XEP-0198): the connection serves it.
    Resumed { conn: Conn, jid: FullJid, attached: Attached },
}

/// Starts what a negotiated connection serves: the reading side of its
/// session, or `None` when the connection is over.
async fn start_session(svc: Arc<Services>, negotiated: Negotiated) -> Result<Option<Box<Reading>>, ConnError> {
    match negotiated {
        Negotiated::Closed => Ok(None),
        Negotiated::Bound { conn, jid, opening } => Ok(open_session(svc, conn, jid, opening).await),
        Negotiated::Resumed { conn, jid, attached } => Ok(Some(attach_session(svc, conn, jid, attached))),
    }
}

async fn negotiate(
    svc: Arc<Services>,
    listener: Arc<C2sListener>,
    mut conn: Conn,
    deadline: tokio::time::Instant,
    source: Option<std::net::IpAddr>,
    // The parser holds TLS early data: what it yields before the first read came in it.
    mut early: bool,
) -> Result<Negotiated, ConnError> {
    let stream_id = format!("{:016x}", rand::random::<u64>());
    let mut neg = Negotiator::new(listener.negotiation.clone(), conn.is_secure(), conn.tls_exporter(), stream_id)
        .with_client_certificate(conn.client_cert(listener.client_certs.as_deref()));
    let mut header_sent = false;
    let mut shutdown = svc.shutdown_signal();
    loop {
        loop {
            let ev = match conn.next_event() {
                Ok(Some(ev)) => ev,
                Ok(None) => break,
                Err(e) => {
                    if !header_sent {
                        conn.send(&stream_header_xml(&default_host(&listener), neg.stream_id())).await?;
                    }
                    tracing::debug!(error = %e, text = ?e.text, "stream error during negotiation");
                    conn.close(Some(&e)).await;
                    return Ok(Negotiated::Closed);
                }
            };
            let nev = match ev {
                StreamEvent::Header(h) => {
                    header_sent = true;
                    let host = h.to.as_deref().unwrap_or_default();
                    conn.meter_host(svc.instruments.host(ConnectionType::C2s, host));
                    NegEvent::Header(h)
                }
                StreamEvent::Stanza(el) if early => NegEvent::EarlyElement(el),
                StreamEvent::Stanza(el) => NegEvent::Element(el),
                StreamEvent::End => {
                    conn.close(None).await;
                    return Ok(Negotiated::Closed);
                }
            };
            let mut actions: VecDeque<NegAction> = neg.step(nev).into();
            while let Some(action) = actions.pop_front() {
                match action {
                    NegAction::Send(s) => conn.send(&s).await?,
                    NegAction::SendDelayed(s, d) => {
                        // Only a failed login or registration is answered after a pause.
                        let host = neg.host().unwrap_or_default();
                        svc.instruments.host(ConnectionType::C2s, host).auth_failed.increment(1);
                        tokio::time::sleep(d).await;
                        conn.send(&s).await?;
                    }
                    NegAction::StartTls => {
                        if conn.buffered_len() > 0 {
                            // Plaintext sent after <starttls/> would be injected into the
                            // encrypted stream (the STARTTLS command-injection class).
                            let err =
                                StreamError::with_text(StreamErrorCondition::PolicyViolation, "data after <starttls/>");
                            conn.close(Some(&err)).await;
                            return Ok(Negotiated::Closed);
                        }
                        let (Conn::Stream { transport: Transport::Plain(tcp), input, shaper }, Some(acceptor)) =
                            (conn, listener.tls.as_ref())
                        else {
                            return Ok(Negotiated::Closed);
                        };
                        let tls = tokio::time::timeout_at(deadline, acceptor.accept(tcp))
                            .await
                            .map_err(|_| ConnError::Timeout)??;
                        conn = Conn::Stream { transport: Transport::Tls(Box::new(tls)), input, shaper };
                        conn.meter_data(svc.instruments.data(ConnectionType::C2s, true));
                        conn.restart();
                        header_sent = false;
                        let client_cert = conn.client_cert(listener.client_certs.as_deref());
                        actions
                            .extend(neg.step(NegEvent::TlsEstablished { exporter: conn.tls_exporter(), client_cert }));
                    }
                    NegAction::ResetParser => {
                        conn.restart();
                        header_sent = false;
                    }
                    NegAction::LookupCredentials { username } => {
                        let host = neg.host().unwrap_or_default().to_owned();
                        let creds = match svc.accounts.credentials(&host, &username).await {
                            Ok(c) => c,
                            Err(e) => {
                                tracing::error!(error = %e, "credential lookup failed");
                                None
                            }
                        };
                        if neg.credentials_need_hashing(creds.as_ref()) {
                            // PBKDF2 would stall every connection of this arbiter: it runs
                            // on the node's hashing pool, waiting there for a free thread.
                            let mut moved = neg;
                            let stepped = svc
                                .accounts
                                .hashing()
                                .run(move || {
                                    let a = moved.step(NegEvent::Credentials(creds));
                                    (moved, a)
                                })
                                .await;
                            match stepped {
                                Ok((back, a)) => {
                                    neg = back;
                                    actions.extend(a);
                                }
                                Err(e) => {
                                    tracing::error!(error = %e, "credential check failed");
                                    let err = StreamError::new(StreamErrorCondition::InternalServerError);
                                    conn.close(Some(&err)).await;
                                    return Ok(Negotiated::Closed);
                                }
                            }
                        } else {
                            actions.extend(neg.step(NegEvent::Credentials(creds)));
                        }
                    }
                    action @ (NegAction::LookupFastTokens { .. } | NegAction::Fast { .. }) => {
                        // Steps that need a module's storage (FAST tokens) are
                        // the host's modules' to carry out.
                        let host = neg.host().unwrap_or_default().to_owned();
                        let hooks = svc.ctx.hooks.of(&host);
                        let event = match hooks.negotiation_action(&svc.ctx, &host, &action).await {
                            Some(event) => event,
                            None => action.unanswered(now_secs()),
                        };
                        actions.extend(neg.step(event));
                    }
                    NegAction::Register { host, username, password, id } => {
                        let hooks = svc.ctx.hooks.of(&host);
                        let result = match hooks.registration_begin(source) {
                            Err(cond) => Err(cond),
                            Ok(()) => {
                                let r = svc
                                    .accounts
                                    .register(&host, &username, &password)
                                    .await
                                    .map_err(crate::ext::account_error("registration"));
                                hooks.registration_done(source, r.is_ok());
                                r
                            }
                        };
                        actions.extend(neg.step(NegEvent::Registered { id, result }));
                    }
                    NegAction::Bind { user, host, resource, tag, id: _ } => {
                        if !listener.allow_login {
                            let err = StreamError::with_text(
                                StreamErrorCondition::PolicyViolation,
                                "logins are not allowed on this listener",
                            );
                            conn.close(Some(&err)).await;
                            return Ok(Negotiated::Closed);
                        }
                        if svc.is_shutting_down() {
                            conn.close(Some(&StreamError::new(StreamErrorCondition::SystemShutdown))).await;
                            return Ok(Negotiated::Closed);
                        }
                        let random = format!("{:016x}", rand::random::<u64>());
                        // XEP-0386: the client's tag, then a random part; a tag that
                        // makes no valid resource is left out.
                        let jid = match (resource, tag) {
                            (Some(r), _) => parse_full(&format!("{user}@{host}/{r}")),
                            (None, Some(tag)) => parse_full(&format!("{user}@{host}/{tag}.{random}"))
                                .or_else(|_| parse_full(&format!("{user}@{host}/{random}"))),
                            (None, None) => parse_full(&format!("{user}@{host}/{random}")),
                        };
                        match jid {
                            Ok(jid) => {
                                let established = neg.step(NegEvent::Bound(Ok(jid.clone())));
                                if let Some(NegAction::Established { opening, .. }) = established.into_iter().next() {
                                    return Ok(Negotiated::Bound { conn, jid, opening });
                                }
                                return Ok(Negotiated::Closed);
                            }
                            Err(_) => actions.extend(neg.step(NegEvent::Bound(Err(StanzaErrorCondition::BadRequest)))),
                        }
                    }
                    NegAction::Resume { user, host, previd, h, sasl2 } => {
                        // XEP-0198: the session must wait on this node and belong to this user.
                        let target = parse_bare(&format!("{user}@{host}")).ok().zip(svc.resumable(&previd));
                        if let Some((bare, addr)) = target.filter(|_| listener.allow_login && !svc.is_shutting_down()) {
                            let (out, out_rx, queued) = OutQueue::new(4096, svc.settings.max_outgoing_bytes);
                            let (io_tx, io_rx) = watch::channel(IoControl::Run);
                            let gate = ReadGate::default();
                            let resume = Resume { previd, bare, h, out, io: io_tx, gate: gate.clone(), sasl2 };
                            if let Ok(Ok((jid, conn_no))) = addr.send(resume).await {
                                let _ = neg.step(NegEvent::Resumed(true));
                                let attached = Attached { addr, conn: conn_no, out_rx, queued, io_rx, gate };
                                return Ok(Negotiated::Resumed { conn, jid, attached });
                            }
                        }
                        actions.extend(neg.step(NegEvent::Resumed(false)));
                    }
                    NegAction::Established { .. } => {}
                    NegAction::Close(err) => {
                        if !header_sent {
                            // Our header comes first, even before an error (RFC 6120
                            // §4.9.1.2, RFC 7395 §3.5): a WebSocket client can send
                            // an element where `<open/>` belongs.
                            conn.send(&stream_header_xml(&default_host(&listener), neg.stream_id())).await?;
                        }
                        conn.close(Some(&err)).await;
                        return Ok(Negotiated::Closed);
                    }
                }
            }
        }
        early = false;
        let more = tokio::select! {
            r = tokio::time::timeout_at(deadline, conn.fill()) => r.map_err(|_| ConnError::Timeout)??,
            _ = wait_true(&mut shutdown) => {
                if !header_sent {
                    conn.send(&stream_header_xml(&default_host(&listener), neg.stream_id())).await?;
                }
                conn.close(Some(&StreamError::new(StreamErrorCondition::SystemShutdown))).await;
                return Ok(Negotiated::Closed);
            }
        };
        if !more {
            return Ok(Negotiated::Closed);
        }
    }
}

/// Seconds since the Unix epoch.
fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Carries out `op` on a user agent's FAST tokens (XEP-0484): whether it
/// held, and the token issued, if any. A token that cannot be stored is not
/// issued; the login still succeeds.
fn default_host(listener: &C2sListener) -> String {
    listener.negotiation.hosts.first().cloned().unwrap_or_default()
}

fn bind_result_xml(id: &str, jid: &FullJid) -> String {
    use meerkat_xmpp::element::Element;
    use meerkat_xmpp::ns;
    Element::new("iq", ns::CLIENT)
        .with_attr("type", "result")
        .with_attr("id", id)
        .with_child(Element::new("bind", ns::BIND).with_child(Element::new("jid", ns::BIND).with_text(jid.to_string())))
        .to_xml(ns::CLIENT)
}

/// Registers a session for `jid`, starts its actor and writer, and returns
/// its reading side; `None` if the session could not open (the client was told).
async fn open_session(svc: Arc<Services>, mut conn: Conn, jid: FullJid, opening: Opening) -> Option<Box<Reading>> {
    // The registry (on a cluster: a majority of its nodes) must accept the
    // session before the client hears that it is bound.
    let sid = svc.next_session_id();
    let info =
        SessionInfo { jid: jid.clone(), node: svc.router.node(), sid, priority: None, created_micros: now_micros() };
    match svc.registry.open(info.clone()).await {
        Ok(outcome) if outcome.accepted => {}
        Ok(_) => {
            // A newer session holds this full JID already.
            conn.close(Some(&StreamError::new(StreamErrorCondition::Conflict))).await;
            return None;
        }
        Err(e) => {
            tracing::warn!(%jid, error = %e, "login refused");
            conn.close(Some(&StreamError::with_text(StreamErrorCondition::InternalServerError, e.to_string()))).await;
            return None;
        }
    }

    // What the module hooks need (the blocklist) is read before the session runs.
    let mut state = svc.ctx.hooks.of(jid.domain().as_str()).session_opening(&svc.ctx, &jid).await;

    let (reader, writer) = conn.split();
    let (out, out_rx, queued) = OutQueue::new(4096, svc.settings.max_outgoing_bytes);
    let (io_tx, io_rx) = watch::channel(IoControl::Run);
    let keepalive = svc.settings.keepalive_interval;
    let writer = Writer { conn: writer, rx: out_rx, queued, io: io_rx.clone(), keepalive };
    // The bind reply is queued before the session is routable, so it is the first thing the client reads.
    let mut inline_acc = None;
    match opening {
        Opening::Iq { id } => {
            let _ = out.push(bind_result_xml(&id, &jid));
        }
        Opening::Sasl2 { additional_data, inline, extra } => {
            // XEP-0386: the modules answer the inline requests inside <bound/>;
            // the rest of what they ask is carried out once the session runs.
            let mut acc = svc.ctx.hooks.of(jid.domain().as_str()).bind2_requests(&svc.ctx, &jid, &mut state, &inline);
            let bound = std::mem::take(&mut acc.write);
            let success = Opening::sasl2_success(additional_data.as_deref(), &jid, bound, &extra);
            let _ = out.push(success.to_xml(meerkat_xmpp::ns::CLIENT));
            inline_acc = Some(acc);
        }
    }

    let capacity = svc.settings.mailbox_capacity;
    let gate = ReadGate::default();
    let session = C2sSession::new(svc.clone(), jid.clone(), sid, out, io_tx, gate.clone(), state);
    let addr = C2sSession::create(move |ctx| {
        ctx.set_mailbox_capacity(capacity);
        session
    });
    if let Some(acc) = inline_acc {
        // Before the session is routable, so before anything routed to it.
        addr.do_send(crate::session::ApplyHooks(acc));
    }
    let router = &svc.router;
    router.register_session(&info, Arc::new(ActorSink::new(addr.clone(), svc.settings.mailbox_overflow)));
    if router.sessions().get(&jid).map(|s| (s.node, s.sid)) != Some((router.node(), sid)) {
        // Another session took the JID between registration and now.
        addr.do_send(crate::session::Kick(KickReason::Conflict));
    }
    tracing::info!(%jid, session = %sid, "session bound");
    Some(Box::new(Reading {
        reader,
        addr,
        io: io_rx,
        gate,
        silence: Silence::of(&svc, &jid),
        conn: 0,
        writer: Some(writer),
        jid,
        sid: Some(sid),
    }))
}

/// A session a resumed connection now serves (XEP-0198), and the ends of the
/// queue and controls it handed to the session.
struct Attached {
    addr: Addr<C2sSession>,
    conn: u64,
    out_rx: mpsc::Receiver<Bytes>,
    queued: Written,
    io_rx: watch::Receiver<IoControl>,
    gate: ReadGate,
}

/// Attaches a connection that resumed `jid`'s session: the session already
/// queued `<resumed/>` and what the client had not acknowledged.
fn attach_session(svc: Arc<Services>, conn: Conn, jid: FullJid, attached: Attached) -> Box<Reading> {
    let Attached { addr, conn: conn_no, out_rx, queued, io_rx, gate } = attached;
    let (reader, writer) = conn.split();
    let keepalive = svc.settings.keepalive_interval;
    let writer = Writer { conn: writer, rx: out_rx, queued, io: io_rx.clone(), keepalive };
    tracing::info!(%jid, "session resumed");
    Box::new(Reading {
        reader,
        addr,
        io: io_rx,
        gate,
        silence: Silence::of(&svc, &jid),
        conn: conn_no,
        writer: Some(writer),
        jid,
        sid: None,
    })
}

/// What a connection's task keeps while its session runs: the reader and
/// the writer, which both run in that task. Kept on its own, and boxed, so
/// that the task holds nothing else.
struct Reading {
    reader: ConnReader,
    addr: Addr<C2sSession>,
    io: watch::Receiver<IoControl>,
    /// Where the session asks this reader to wait (back-pressure).
    gate: ReadGate,
    silence: Silence,
    /// Number of the connection within the session (0 unless resumed).
    conn: u64,
    /// Taken when the session starts running.
    writer: Option<Writer>,
    jid: FullJid,
    /// The session's id when this connection opened it, `None` if it resumed it.
    sid: Option<SessionId>,
}

impl Reading {
    /// Reads until the connection or the session ends, and writes until the
    /// session's queue is drained and closed (or writing fails).
    async fn run(mut self: Box<Self>) -> Result<(), ConnError> {
        let this = &mut *self;
        let writer = this.writer.take();
        let writing = async move {
            if let Some(writer) = writer {
                writer.run().await;
            }
        };
        let reading = read_loop(&mut this.reader, &this.addr, &mut this.io, &this.gate, this.silence, this.conn);
        let (result, ()) = tokio::join!(reading, writing);
        match this.sid {
            Some(sid) => tracing::info!(jid = %this.jid, session = %sid, "session closed"),
            None => tracing::info!(jid = %this.jid, "connection of the session closed"),
        }
        result
    }
}

/// What the reader does when the client has sent nothing for a while.
#[derive(Clone, Copy, Debug)]
struct Silence {
    /// Tell the session, once per silence (its modules may ping the client,
    /// XEP-0199; an answer is traffic, so a client that answers is never
    /// silent for long).
    notify_after: Option<Duration>,
    /// Close the stream with `connection-timeout`.
    close_after: Duration,
}

impl Silence {
    /// As the modules of the session's host decide.
    fn of(svc: &Services, jid: &FullJid) -> Silence {
        let notify_after = svc.ctx.hooks.host(jid.domain().as_str()).tuning.silent_after;
        Silence { notify_after, close_after: svc.settings.idle_timeout }
    }
}

async fn read_loop(
    reader: &mut ConnReader,
    addr: &Addr<C2sSession>,
    io: &mut watch::Receiver<IoControl>,
    gate: &ReadGate,
    silence: Silence,
    conn: u64,
) -> Result<(), ConnError> {
    // When what the reader holds was read: one clock reading per read, not
    // per stanza (the routing latency counts from it).
    let mut read_at = std::time::Instant::now();
    let mut silent_since = tokio::time::Instant::from_std(read_at);
    let mut notified = false;
    loop {
        loop {
            if let Some(pressure) = gate.take() {
                // A recipient's queue is over its bound with what this client
                // sent: nothing more is read (its TCP window fills) until it drains.
                tokio::select! {
                    relieved = pressure.relieved(PRESSURE_WAIT) => if !relieved {
                        tracing::debug!("a recipient stayed over its bound; reading on");
                    },
                    _ = until(io, IoControl::StopReading) => return Ok(()),
                }
                silent_since = tokio::time::Instant::now();
            }
            match reader.next_event() {
                Ok(Some(StreamEvent::Stanza(el))) => match addr.try_send(FromClient(el, read_at)) {
                    // Queued in order; the reader goes on without waiting for the session.
                    Ok(()) => {}
                    // Waits while the session's mailbox is full: back-pressure to the client's TCP window.
                    Err(SendError::Full(msg)) => {
                        if addr.send(msg).await.is_err() {
                            return Ok(());
                        }
                    }
                    Err(SendError::Closed(_)) => return Ok(()),
                },
                Ok(Some(StreamEvent::End)) => {
                    // The client closed its stream but still reads ours (RFC 6120 §4.4).
                    addr.do_send(ConnClosed(conn, ClientClosed::Closed));
                    return Ok(());
                }
                Ok(Some(StreamEvent::Header(_))) => {
                    addr.do_send(ConnClosed(
                        conn,
                        ClientClosed::Error(StreamError::with_text(
                            StreamErrorCondition::InvalidXml,
                            "unexpected stream restart",
                        )),
                    ));
                    return Ok(());
                }
                Ok(None) => break,
                Err(e) => {
                    addr.do_send(ConnClosed(conn, ClientClosed::Error(e)));
                    return Ok(());
                }
            }
        }
        let close_at = silent_since + silence.close_after;
        let notify_at =
            silence.notify_after.filter(|_| !notified).map(|p| silent_since + p).filter(|at| *at < close_at);
        tokio::select! {
            r = tokio::time::timeout_at(notify_at.unwrap_or(close_at), reader.fill()) => match r {
                Err(_) if notify_at.is_some() => {
                    notified = true;
                    addr.do_send(ClientSilent);
                }
                Err(_) => {
                    addr.do_send(ConnClosed(conn, ClientClosed::Error(StreamError::new(StreamErrorCondition::ConnectionTimeout))));
                    return Err(ConnError::Timeout);
                }
                Ok(Ok(false)) | Ok(Err(_)) => {
                    addr.do_send(ConnClosed(conn, ClientClosed::Gone));
                    return Ok(());
                }
                Ok(Ok(true)) => {
                    read_at = std::time::Instant::now();
                    silent_since = tokio::time::Instant::from_std(read_at);
                    notified = false;
                }
            },
            _ = until(io, IoControl::StopReading) => return Ok(()),
        }
    }
}

/// A reader waits at most this long for a recipient's queue to drain
/// ([`ReadGate`]) before it reads on.
const PRESSURE_WAIT: Duration = Duration::from_secs(5);

/// A write that makes no progress for this long means the client is gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// A session's writer, before it runs: the queue it drains and where to.
struct Writer {
    conn: ConnWriter,
    rx: mpsc::Receiver<Bytes>,
    queued: Written,
    io: watch::Receiver<IoControl>,
    keepalive: Duration,
}

impl Writer {
    /// Drains the queue until the session ends or writing fails; the
    /// connection's writing side is dropped on return.
    async fn run(self) {
        let Writer { conn, rx, queued, io, keepalive } = self;
        match conn {
            ConnWriter::Stream(w, meter) => stream_write_loop(w, rx, queued, io, keepalive, meter).await,
            ConnWriter::WebSocket(tx, meter) => websocket_write_loop(tx, rx, queued, io, keepalive, meter).await,
        }
    }
}

/// What a writer does next.
enum WriterStep {
    Write(Bytes),
    Keepalive,
    /// The queue is closed: the session is over.
    End,
    Abort,
}

/// Waits for the writer's next step. Nothing it waits on outlives it, so a
/// write does not keep their memory, nor an idle writer a write's.
async fn next_writer_step(
    rx: &mut mpsc::Receiver<Bytes>,
    io: &mut watch::Receiver<IoControl>,
    keepalive: Duration,
) -> WriterStep {
    tokio::select! {
        biased;
        _ = until(io, IoControl::Abort) => WriterStep::Abort,
        msg = rx.recv() => msg.map_or(WriterStep::End, WriterStep::Write),
        _ = tokio::time::sleep(keepalive) => WriterStep::Keepalive,
    }
}

async fn stream_write_loop<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut rx: mpsc::Receiver<Bytes>,
    queued: Written,
    mut io: watch::Receiver<IoControl>,
    keepalive: Duration,
    meter: Meter,
) {
    loop {
        match next_writer_step(&mut rx, &mut io, keepalive).await {
            WriterStep::Abort => break,
            WriterStep::End => {
                let _ = tokio::time::timeout(Duration::from_secs(5), writer.shutdown()).await;
                break;
            }
            WriterStep::Write(first) => {
                // Whatever else is already queued is coalesced into one write;
                // a lone item is written as it is. Nothing is kept in between.
                let mut batch = Vec::new();
                let mut total = first.len();
                meter.serialized(&first);
                while total < 65536 {
                    match rx.try_recv() {
                        Ok(more) => {
                            meter.serialized(&more);
                            if batch.is_empty() {
                                batch.reserve(first.len() + more.len());
                                batch.extend_from_slice(&first);
                            }
                            batch.extend_from_slice(&more);
                            total = batch.len();
                        }
                        Err(_) => break,
                    }
                }
                let data: &[u8] = if batch.is_empty() { &first } else { &batch };
                let len = data.len();
                let res = tokio::select! {
                    biased;
                    _ = until(&mut io, IoControl::Abort) => break,
                    r = tokio::time::timeout(WRITE_TIMEOUT, async { writer.write_all(data).await?; writer.flush().await }) => r,
                };
                queued.dequeued(len);
                if !matches!(res, Ok(Ok(()))) {
                    break;
                }
                meter.wrote(len);
                queued.wrote(len);
            }
            WriterStep::Keepalive => {
                // RFC 6120 §4.6.1: whitespace keeps NATs and the client's idle timer happy.
                if writer.write_all(b" ").await.is_err() || writer.flush().await.is_err() {
                    break;
                }
            }
        }
    }
}

/// The writer of a WebSocket session: each queued write is one element (or
/// a stream's end), sent as its own message(s), never merged (RFC 7395 §3.3.3).
async fn websocket_write_loop(
    tx: mpsc::Sender<WsOut>,
    mut rx: mpsc::Receiver<Bytes>,
    queued: Written,
    mut io: watch::Receiver<IoControl>,
    keepalive: Duration,
    meter: Meter,
) {
    'outer: loop {
        match next_writer_step(&mut rx, &mut io, keepalive).await {
            // Dropping `tx` afterwards makes the HTTP layer close the WebSocket.
            WriterStep::Abort | WriterStep::End => break,
            WriterStep::Write(item) => {
                let len = item.len();
                queued.dequeued(len);
                meter.serialized(&item);
                let Ok(xml) = std::str::from_utf8(&item) else {
                    tracing::error!("non-UTF-8 output for a WebSocket client");
                    break;
                };
                for frame in websocket::frames(xml) {
                    let res = tokio::select! {
                        biased;
                        _ = until(&mut io, IoControl::Abort) => break 'outer,
                        r = tokio::time::timeout(WRITE_TIMEOUT, tx.send(WsOut::Text(frame))) => r,
                    };
                    if !matches!(res, Ok(Ok(()))) {
                        break 'outer;
                    }
                }
                queued.wrote(len);
            }
            WriterStep::Keepalive => {
                // RFC 7395 §3.8: no whitespace between messages; a WebSocket ping instead.
                if !matches!(tokio::time::timeout(WRITE_TIMEOUT, tx.send(WsOut::Ping)).await, Ok(Ok(()))) {
                    break;
                }
            }
        }
    }
}

/// Resolves once the control reaches `level` (Abort implies StopReading). When the session is
/// gone, `StopReading` resolves but `Abort` never does: the queue closing ends the writer.
async fn until(rx: &mut watch::Receiver<IoControl>, level: IoControl) {
    let reached = rx
        .wait_for(|c| match level {
            IoControl::Abort => *c == IoControl::Abort,
            _ => *c != IoControl::Run,
        })
        .await
        .is_ok();
    if !reached && level == IoControl::Abort {
        // The session ended without aborting: the writer must still flush what
        // it queued (a stream error, the closing tag). It ends on its own once
        // the queue is drained and closed.
        std::future::pending::<()>().await;
    }
}

/// Resolves once the flag is set (or its sender is gone).
async fn wait_true(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await.map(|_| ());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn future_size<A, B, C, D, F>(_: &impl FnOnce(A, B, C, D) -> F) -> usize {
        std::mem::size_of::<F>()
    }
    fn future_size5<A, B, C, D, E, F>(_: &impl FnOnce(A, B, C, D, E) -> F) -> usize {
        std::mem::size_of::<F>()
    }
    fn future_size6<A, B, C, D, E, G, F>(_: &impl FnOnce(A, B, C, D, E, G) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// A connection's task lives as long as its session: it must not keep
    /// room for the negotiation, which runs boxed and is gone by then.
    #[test]
    fn a_session_task_does_not_carry_the_negotiation() {
        let serve = future_size(&serve);
        let serve_websocket = future_size5(&serve_websocket);
        let negotiate = future_size6(&negotiate);
        assert!(serve < negotiate / 2, "serve: {serve} bytes, negotiate: {negotiate}");
        assert!(serve_websocket < negotiate / 2, "serve_websocket: {serve_websocket} bytes, negotiate: {negotiate}");
    }
}
