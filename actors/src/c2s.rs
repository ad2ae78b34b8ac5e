//! The C2S connection driver: connections in, negotiation, then a session actor.
//!
//! Until a resource is bound, one task owns the whole connection (so STARTTLS
//! can replace the transport) and runs the [`Negotiator`]. At bind it splits
//! the connection: a writer task drains the session's [`OutQueue`], this task
//! keeps reading and hands stanzas to the [`C2sSession`] actor.
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
use meerkat_cluster::SessionInfo;
use meerkat_routing::KickReason;
use meerkat_xmpp::error::{StanzaErrorCondition, StreamError, StreamErrorCondition};
use meerkat_xmpp::jid::{parse_bare, parse_full, FullJid};
use meerkat_xmpp::parser::{Limits, StreamEvent};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;

use crate::auth::AccountError;
use crate::negotiation::{stream_header_xml, NegAction, NegEvent, NegotiationConfig, Negotiator, TlsMode};
use crate::services::{now_micros, Services};
use crate::session::{
    ActorSink, C2sSession, ClientClosed, ConnClosed, FromClient, IdlePing, IoControl, OutQueue, Resume,
};
use crate::transport::{Conn, ConnReader, ConnWriter, Transport, READ_BUFFER};
use crate::websocket::{self, WsConnection, WsOut};

/// One `[[listen.c2s]]` listener's settings (or one WebSocket endpoint's).
pub struct C2sListener {
    pub negotiation: NegotiationConfig,
    pub limits: Limits,
    pub tls: Option<TlsAcceptor>,
    /// The listener's access rule lets users log in.
    pub allow_login: bool,
    /// What the modules add to the stream features (XEP-0115 caps, XEP-0352 csi).
    pub stream_features: crate::modules::StreamFeatures,
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
    let _guard = svc.connection_guard();
    let deadline = tokio::time::Instant::now() + svc.settings.negotiation_timeout;
    let result = async {
        let transport = match (&listener.tls, listener.negotiation.tls_mode) {
            (Some(acceptor), TlsMode::Tls) => {
                let tls =
                    tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await.map_err(|_| ConnError::Timeout)??;
                Transport::Tls(Box::new(tls))
            }
            _ => Transport::Plain(tcp),
        };
        let conn = Conn::stream(transport, listener.limits);
        negotiate(svc.clone(), listener, conn, deadline).await
    }
    .await;
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
) {
    let _guard = svc.connection_guard();
    let deadline = tokio::time::Instant::now() + svc.settings.negotiation_timeout;
    let conn = Conn::websocket(ws, listener.limits);
    match negotiate(svc.clone(), listener, conn, deadline).await {
        Ok(()) => tracing::debug!(?peer, "websocket connection finished"),
        Err(e) => tracing::debug!(?peer, error = %e, "websocket connection ended"),
    }
}

async fn negotiate(
    svc: Arc<Services>,
    listener: Arc<C2sListener>,
    mut conn: Conn,
    deadline: tokio::time::Instant,
) -> Result<(), ConnError> {
    let stream_id = format!("{:016x}", rand::random::<u64>());
    let mut post_auth = listener.stream_features.post_auth.clone();
    if svc.settings.sm.enabled {
        // XEP-0198 §2: offered once the client is authenticated.
        post_auth.push_str(&crate::sm::feature().to_xml(meerkat_xmpp::ns::CLIENT));
    }
    let mut neg = Negotiator::new(listener.negotiation.clone(), conn.is_secure(), conn.tls_exporter(), stream_id)
        .with_extra_features(listener.stream_features.pre_auth.clone(), post_auth);
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
                    return Ok(());
                }
            };
            let nev = match ev {
                StreamEvent::Header(h) => {
                    header_sent = true;
                    NegEvent::Header(h)
                }
                StreamEvent::Stanza(el) => NegEvent::Element(el),
                StreamEvent::End => {
                    conn.close(None).await;
                    return Ok(());
                }
            };
            let mut actions: VecDeque<NegAction> = neg.step(nev).into();
            while let Some(action) = actions.pop_front() {
                match action {
                    NegAction::Send(s) => conn.send(&s).await?,
                    NegAction::SendDelayed(s, d) => {
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
                            return Ok(());
                        }
                        let (Conn::Stream { transport: Transport::Plain(tcp), input }, Some(acceptor)) =
                            (conn, listener.tls.as_ref())
                        else {
                            return Ok(());
                        };
                        let tls = tokio::time::timeout_at(deadline, acceptor.accept(tcp))
                            .await
                            .map_err(|_| ConnError::Timeout)??;
                        conn = Conn::Stream { transport: Transport::Tls(Box::new(tls)), input };
                        conn.restart();
                        header_sent = false;
                        actions.extend(neg.step(NegEvent::TlsEstablished { exporter: conn.tls_exporter() }));
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
                        actions.extend(neg.step(NegEvent::Credentials(creds)));
                    }
                    NegAction::Register { host, username, password, id } => {
                        let result = svc.accounts.register(&host, &username, &password).await.map_err(|e| match e {
                            AccountError::Exists => StanzaErrorCondition::Conflict,
                            AccountError::InvalidUsername(_) | AccountError::EmptyPassword => {
                                StanzaErrorCondition::NotAcceptable
                            }
                            other => {
                                tracing::error!(error = %other, "registration failed");
                                StanzaErrorCondition::InternalServerError
                            }
                        });
                        actions.extend(neg.step(NegEvent::Registered { id, result }));
                    }
                    NegAction::Bind { user, host, resource, id } => {
                        if !listener.allow_login {
                            let err = StreamError::with_text(
                                StreamErrorCondition::PolicyViolation,
                                "logins are not allowed on this listener",
                            );
                            conn.close(Some(&err)).await;
                            return Ok(());
                        }
                        if svc.is_shutting_down() {
                            conn.close(Some(&StreamError::new(StreamErrorCondition::SystemShutdown))).await;
                            return Ok(());
                        }
                        let resource = resource.unwrap_or_else(|| format!("{:016x}", rand::random::<u64>()));
                        match parse_full(&format!("{user}@{host}/{resource}")) {
                            Ok(jid) => {
                                let _ = neg.step(NegEvent::Bound(Ok(jid.clone())));
                                return run_session(svc, conn, jid, id).await;
                            }
                            Err(_) => actions.extend(neg.step(NegEvent::Bound(Err(StanzaErrorCondition::BadRequest)))),
                        }
                    }
                    NegAction::Resume { user, host, previd, h } => {
                        // XEP-0198: the session must wait on this node and belong to this user.
                        let target = parse_bare(&format!("{user}@{host}")).ok().zip(svc.resumable(&previd));
                        if let Some((bare, addr)) = target.filter(|_| listener.allow_login && !svc.is_shutting_down()) {
                            let (out, out_rx, queued) = OutQueue::new(4096, svc.settings.max_outgoing_bytes);
                            let (io_tx, io_rx) = watch::channel(IoControl::Run);
                            let resume = Resume { previd, bare, h, out, io: io_tx };
                            if let Ok(Ok((jid, conn_no))) = addr.send(resume).await {
                                let _ = neg.step(NegEvent::Resumed(true));
                                let attached = Attached { addr, conn: conn_no, out_rx, queued, io_rx };
                                return resume_session(svc, conn, jid, attached).await;
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
                        return Ok(());
                    }
                }
            }
        }
        let more = tokio::select! {
            r = tokio::time::timeout_at(deadline, conn.fill()) => r.map_err(|_| ConnError::Timeout)??,
            _ = wait_true(&mut shutdown) => {
                if !header_sent {
                    conn.send(&stream_header_xml(&default_host(&listener), neg.stream_id())).await?;
                }
                conn.close(Some(&StreamError::new(StreamErrorCondition::SystemShutdown))).await;
                return Ok(());
            }
        };
        if !more {
            return Ok(());
        }
    }
}

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

async fn run_session(svc: Arc<Services>, mut conn: Conn, jid: FullJid, bind_id: String) -> Result<(), ConnError> {
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
            return Ok(());
        }
        Err(e) => {
            tracing::warn!(%jid, error = %e, "login refused");
            conn.close(Some(&StreamError::with_text(StreamErrorCondition::InternalServerError, e.to_string()))).await;
            return Ok(());
        }
    }

    // What the module hooks need (the blocklist) is read before the session runs.
    let state = crate::modules::session_opening(&svc, &jid).await;

    let (reader, writer) = conn.split();
    let (out, out_rx, queued) = OutQueue::new(4096, svc.settings.max_outgoing_bytes);
    let (io_tx, io_rx) = watch::channel(IoControl::Run);
    let keepalive = svc.settings.keepalive_interval;
    let writer_task = tokio::spawn(write_loop(writer, out_rx, queued, io_rx.clone(), keepalive));
    // The bind reply is queued before the session is routable, so it is the first thing the client reads.
    let _ = out.push(bind_result_xml(&bind_id, &jid));

    let capacity = svc.settings.mailbox_capacity;
    let session = C2sSession::new(svc.clone(), jid.clone(), sid, out, io_tx, state);
    let addr = C2sSession::create(move |ctx| {
        ctx.set_mailbox_capacity(capacity);
        session
    });
    let router = &svc.router;
    router.register_session(&info, Arc::new(ActorSink(addr.clone())));
    if router.sessions().get(&jid).map(|s| (s.node, s.sid)) != Some((router.node(), sid)) {
        // Another session took the JID between registration and now.
        addr.do_send(crate::session::Kick(KickReason::Conflict));
    }
    tracing::info!(%jid, session = %sid, "session bound");
    let silence = Silence { ping_after: svc.settings.ping_interval, close_after: svc.settings.idle_timeout };
    let result = read_loop(reader, &addr, io_rx, silence, 0).await;
    let _ = writer_task.await;
    tracing::info!(%jid, session = %sid, "session closed");
    result
}

/// A session a resumed connection now serves (XEP-0198), and the ends of the
/// queue and controls it handed to the session.
struct Attached {
    addr: Addr<C2sSession>,
    conn: u64,
    out_rx: mpsc::Receiver<Bytes>,
    queued: Arc<AtomicUsize>,
    io_rx: watch::Receiver<IoControl>,
}

/// Runs a connection that resumed `jid`'s session: the session already
/// queued `<resumed/>` and what the client had not acknowledged.
async fn resume_session(svc: Arc<Services>, conn: Conn, jid: FullJid, attached: Attached) -> Result<(), ConnError> {
    let Attached { addr, conn: conn_no, out_rx, queued, io_rx } = attached;
    let (reader, writer) = conn.split();
    let keepalive = svc.settings.keepalive_interval;
    let writer_task = tokio::spawn(write_loop(writer, out_rx, queued, io_rx.clone(), keepalive));
    tracing::info!(%jid, "session resumed");
    let silence = Silence { ping_after: svc.settings.ping_interval, close_after: svc.settings.idle_timeout };
    let result = read_loop(reader, &addr, io_rx, silence, conn_no).await;
    let _ = writer_task.await;
    tracing::info!(%jid, "connection of the session closed");
    result
}

/// What the reader does when the client has sent nothing for a while.
#[derive(Clone, Copy, Debug)]
struct Silence {
    /// Ask the session to ping the client (XEP-0199), once per silence; the
    /// session closes the stream if the ping goes unanswered. An answer is
    /// traffic, so a client that answers is never silent for long.
    ping_after: Option<Duration>,
    /// Close the stream with `connection-timeout`.
    close_after: Duration,
}

async fn read_loop(
    mut reader: ConnReader,
    addr: &Addr<C2sSession>,
    mut io: watch::Receiver<IoControl>,
    silence: Silence,
    conn: u64,
) -> Result<(), ConnError> {
    let mut silent_since = tokio::time::Instant::now();
    let mut pinged = false;
    loop {
        loop {
            match reader.next_event() {
                Ok(Some(StreamEvent::Stanza(el))) => {
                    // Waits while the session's mailbox is full: back-pressure to the client's TCP window.
                    if addr.send(FromClient(el)).await.is_err() {
                        return Ok(());
                    }
                }
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
        let ping_at = silence.ping_after.filter(|_| !pinged).map(|p| silent_since + p).filter(|at| *at < close_at);
        tokio::select! {
            r = tokio::time::timeout_at(ping_at.unwrap_or(close_at), reader.fill()) => match r {
                Err(_) if ping_at.is_some() => {
                    pinged = true;
                    addr.do_send(IdlePing);
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
                    silent_since = tokio::time::Instant::now();
                    pinged = false;
                }
            },
            _ = until(&mut io, IoControl::StopReading) => return Ok(()),
        }
    }
}

/// A write that makes no progress for this long means the client is gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

async fn write_loop(
    writer: ConnWriter,
    rx: mpsc::Receiver<Bytes>,
    queued: Arc<AtomicUsize>,
    io: watch::Receiver<IoControl>,
    keepalive: Duration,
) {
    match writer {
        ConnWriter::Stream(w) => stream_write_loop(w, rx, queued, io, keepalive).await,
        ConnWriter::WebSocket(tx) => websocket_write_loop(tx, rx, queued, io, keepalive).await,
    }
}

async fn stream_write_loop<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut rx: mpsc::Receiver<Bytes>,
    queued: Arc<AtomicUsize>,
    mut io: watch::Receiver<IoControl>,
    keepalive: Duration,
) {
    // Grows to the largest batch written, and is given back after a big one.
    let mut batch: Vec<u8> = Vec::new();
    let mut io_inner = io.clone();
    loop {
        tokio::select! {
            biased;
            _ = until(&mut io, IoControl::Abort) => break,
            msg = rx.recv() => {
                let Some(first) = msg else {
                    let _ = tokio::time::timeout(Duration::from_secs(5), writer.shutdown()).await;
                    break;
                };
                batch.clear();
                batch.extend_from_slice(&first);
                // Coalesce whatever else is already queued into one write.
                while batch.len() < 65536 {
                    match rx.try_recv() {
                        Ok(more) => batch.extend_from_slice(&more),
                        Err(_) => break,
                    }
                }
                let len = batch.len();
                let res = tokio::select! {
                    biased;
                    _ = until(&mut io_inner, IoControl::Abort) => break,
                    r = tokio::time::timeout(WRITE_TIMEOUT, async { writer.write_all(&batch).await?; writer.flush().await }) => r,
                };
                queued.fetch_sub(len.min(queued.load(Ordering::Relaxed)), Ordering::Relaxed);
                if batch.capacity() > READ_BUFFER * 4 {
                    batch = Vec::new();
                }
                if !matches!(res, Ok(Ok(()))) {
                    break;
                }
            }
            _ = tokio::time::sleep(keepalive) => {
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
    queued: Arc<AtomicUsize>,
    mut io: watch::Receiver<IoControl>,
    keepalive: Duration,
) {
    let mut io_inner = io.clone();
    'outer: loop {
        tokio::select! {
            biased;
            _ = until(&mut io, IoControl::Abort) => break,
            msg = rx.recv() => {
                // Dropping `tx` afterwards makes the HTTP layer close the WebSocket.
                let Some(item) = msg else { break };
                let len = item.len();
                queued.fetch_sub(len.min(queued.load(Ordering::Relaxed)), Ordering::Relaxed);
                let Ok(xml) = std::str::from_utf8(&item) else {
                    tracing::error!("non-UTF-8 output for a WebSocket client");
                    break;
                };
                for frame in websocket::frames(xml) {
                    let res = tokio::select! {
                        biased;
                        _ = until(&mut io_inner, IoControl::Abort) => break 'outer,
                        r = tokio::time::timeout(WRITE_TIMEOUT, tx.send(WsOut::Text(frame))) => r,
                    };
                    if !matches!(res, Ok(Ok(()))) {
                        break 'outer;
                    }
                }
            }
            _ = tokio::time::sleep(keepalive) => {
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
