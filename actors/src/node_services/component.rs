//! `[[listen.component]]`: external components (XEP-0114).
//!
//! A component connects, names the domain it serves in its stream header,
//! and proves the listener's password with `<handshake/>`. Its domain is
//! then a route of the table of routes for as long as it stays connected
//! ([`Router::register_domain`]): in a cluster the registration goes through
//! the replicated domain table, so a user on any node reaches it, and its
//! stanzas reach users on every node. A second component for a domain that
//! is served already is refused (`conflict_behaviour = "disconnect"`, the
//! default) or replaces the first one (`"kick_old"`), on this node or, in a
//! cluster, on the node that has it: that node is asked (a node request to
//! its component listeners) to end its component's stream with
//! `<conflict/>`, and the domain is claimed once it let go.
//!
//! Stanzas from the component must carry `to`, and a `from` in its domain
//! (`check_from`, on by default) or none (the domain itself is taken);
//! anything else ends the stream with `<improper-addressing/>` or
//! `<invalid-from/>`, as Prosody does. What is
//! queued for a component when it goes is answered with
//! `<service-unavailable/>` (never an error, never a result).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meerkat_cluster::DomainKind;
use meerkat_routing::{DomainGuard, DomainHandler, Holder, RouteError, Routed, Router};
use meerkat_xmpp::component::{handshake_matches, stream_header_xml, to_client_ns, to_component_ns};
use meerkat_xmpp::element::Element;
use meerkat_xmpp::error::{StanzaErrorCondition, StreamError, StreamErrorCondition};
use meerkat_xmpp::jid::{canonical_domain, parse_jid};
use meerkat_xmpp::ns;
use meerkat_xmpp::parser::{Limits, StreamEvent};
use tokio::sync::{mpsc, oneshot, watch};

use crate::ext::{Service, ServiceCtx, TlsFiles};
use crate::instrument::{ConnectionType, Instruments, Meter, GLOBAL_HOST_TYPE};
use crate::transport::{Conn, Shaper, Transport};

/// Stanzas queued for one component before the router answers
/// `resource-constraint`.
const QUEUE: usize = 1024;
/// How long a component that replaces another (`kick_old`) waits for the
/// old one to let go of the domain.
const KICK_WITHIN: Duration = Duration::from_secs(5);
/// The name other nodes' kick requests are addressed to (`ModuleCtx::ask_node`).
const KICK_TARGET: &str = "components";

/// What becomes of a component whose domain is served already.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictBehaviour {
    /// The new connection is refused with `<conflict/>`.
    #[default]
    Disconnect,
    /// The old connection (on any node) ends with `<conflict/>` and the new one takes the domain.
    KickOld,
}

/// `[[listen.component]]`, with MongooseIM's option names.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentListen {
    pub port: u16,
    #[serde(default = "any_address")]
    pub ip_address: IpAddr,
    /// The shared secret of the handshake.
    pub password: String,
    /// `[shaper.NAME]` applied to what each component sends, or `"none"`.
    #[serde(default = "none")]
    pub shaper: String,
    /// `"all"` lets components in; anything else refuses them all.
    #[serde(default = "all")]
    pub access: String,
    /// Every stanza's `from` must be in the component's domain.
    #[serde(default = "yes")]
    pub check_from: bool,
    /// Components of this listener are left out of the service discovery
    /// that clients get.
    #[serde(default)]
    pub hidden_components: bool,
    #[serde(default)]
    pub conflict_behaviour: ConflictBehaviour,
    /// Largest stanza in bytes; a larger one ends the stream with `<policy-violation/>`.
    #[serde(default = "max_stanza_size")]
    pub max_stanza_size: usize,
    /// Milliseconds a new connection has to open its stream and hand-shake.
    #[serde(default = "state_timeout")]
    pub state_timeout: u64,
    /// Connections open at once; one more gets `<policy-violation/>`.
    #[serde(default = "max_connections")]
    pub max_connections: usize,
    /// Direct TLS (the whole connection is TLS, as MongooseIM 6.4 offers).
    pub tls: Option<TlsFiles>,
}

fn any_address() -> IpAddr {
    IpAddr::from([0, 0, 0, 0])
}
fn none() -> String {
    "none".into()
}
fn all() -> String {
    "all".into()
}
fn yes() -> bool {
    true
}
fn max_stanza_size() -> usize {
    65536
}
fn state_timeout() -> u64 {
    5000
}
fn max_connections() -> usize {
    1024
}

/// One `[[listen.component]]`.
pub struct ComponentListener {
    name: String,
    cfg: ComponentListen,
    shared: Arc<Shared>,
    running: Mutex<Option<Running>>,
}

struct Running {
    stop: watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
}

/// Tells a connection to let go of its domain; it answers once it has.
type Kick = oneshot::Sender<oneshot::Sender<()>>;

/// What the listener's connections share.
#[derive(Default)]
struct Shared {
    /// Components connected here, by domain: their id and how to make one let go.
    live: Mutex<HashMap<String, (u64, Option<Kick>)>>,
    next_id: AtomicU64,
    open: AtomicUsize,
}

/// What every component listener of a node shares: the components connected
/// to the node, so that `kick_old` replaces one whichever listener it came
/// in through.
#[derive(Clone, Default)]
pub struct Components(Arc<Shared>);

impl ComponentListener {
    pub fn build(name: String, cfg: ComponentListen, node: &Components) -> Result<Arc<dyn Service>, String> {
        if cfg.password.is_empty() {
            return Err(format!("{name}.password: a component listener needs a password"));
        }
        Ok(Arc::new(ComponentListener { name, cfg, shared: node.0.clone(), running: Mutex::new(None) }))
    }
}

#[async_trait::async_trait]
impl Service for ComponentListener {
    fn name(&self) -> String {
        self.name.clone()
    }

    /// Another node's newcomer with `kick_old` asks for our component of a domain to go.
    async fn node_request(&self, target: &str, from_node: u64, body: &[u8]) -> Option<Result<Vec<u8>, String>> {
        if target != KICK_TARGET {
            return None;
        }
        let Ok(domain) = std::str::from_utf8(body) else { return Some(Err("the domain is not UTF-8".into())) };
        tracing::info!(%domain, from_node, "a component of another node replaces ours");
        Some(kick_here(&self.shared, domain).await.map(|()| Vec::new()))
    }

    async fn start(&self, ctx: &ServiceCtx) -> Result<(), String> {
        let rate = (ctx.env.shaper)(&self.cfg.shaper).map_err(|e| format!("shaper: {e}"))?;
        let tls = match &self.cfg.tls {
            Some(files) => {
                Some(tokio_rustls::TlsAcceptor::from((ctx.env.tls)(files).map_err(|e| format!("tls: {e}"))?.server))
            }
            None => None,
        };
        let addr = SocketAddr::new(self.cfg.ip_address, self.cfg.port);
        let tcp = tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("listening on {addr}: {e}"))?;
        tracing::info!(%addr, tls = tls.is_some(), listener = %self.name, "component listener ready");
        let (stop, stop_rx) = watch::channel(false);
        let admission = crate::admission::Admission::new(crate::admission::ConnectionLimits {
            max_connections: Some(self.cfg.max_connections),
            max_connections_per_ip: None,
        });
        let conn = Arc::new(ConnCtx {
            module: ctx.module.clone(),
            router: ctx.module.router.clone(),
            cfg: self.cfg.clone(),
            rate,
            tls,
            shared: self.shared.clone(),
            stop: stop_rx.clone(),
            admission,
            instruments: ctx.module.instruments.clone(),
        });
        let accept = tokio::spawn(accept_loop(tcp, conn, stop_rx));
        *self.running.lock().unwrap_or_else(|e| e.into_inner()) = Some(Running { stop, accept });
        Ok(())
    }

    async fn stop(&self, deadline: tokio::time::Instant) {
        let Some(running) = self.running.lock().unwrap_or_else(|e| e.into_inner()).take() else { return };
        let _ = running.stop.send(true);
        let _ = tokio::time::timeout_at(deadline, running.accept).await;
        // Each connection ends its stream with `<system-shutdown/>` and lets go of its domain.
        let mut open = self.shared.open.load(Ordering::Acquire);
        while open > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            open = self.shared.open.load(Ordering::Acquire);
        }
    }
}

/// What every connection of one listener needs.
struct ConnCtx {
    module: crate::ext::ModuleCtx,
    router: Arc<Router>,
    cfg: ComponentListen,
    rate: Option<u64>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
    admission: Arc<crate::admission::Admission>,
    instruments: Arc<Instruments>,
}

async fn accept_loop(tcp: tokio::net::TcpListener, ctx: Arc<ConnCtx>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            () = stopping(&mut stop) => break,
            r = tcp.accept() => match r {
                Ok((sock, peer)) => {
                    let ctx = ctx.clone();
                    ctx.shared.open.fetch_add(1, Ordering::AcqRel);
                    tokio::spawn(async move {
                        match ctx.admission.admit(Some(peer.ip())) {
                            Ok(_admitted) => serve(&ctx, sock, peer).await,
                            Err(why) => refuse(&ctx, sock, peer, why).await,
                        }
                        ctx.shared.open.fetch_sub(1, Ordering::AcqRel);
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "component accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// Returns once the listener stops.
async fn stopping(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// A connection over `max_connections`: our header and `<policy-violation/>`,
/// within a second, and it is closed.
async fn refuse(ctx: &ConnCtx, sock: tokio::net::TcpStream, peer: SocketAddr, why: crate::admission::Refused) {
    tracing::warn!(%peer, %why, "component connection refused");
    let e = error(StreamErrorCondition::PolicyViolation, why.to_string());
    let mut conn = Conn::stream(Transport::Plain(sock), Limits::default(), None, Meter::default());
    if ctx.tls.is_none() {
        let _ = tokio::time::timeout(Duration::from_secs(1), conn.send(&stream_header_xml("", ""))).await;
        conn.close(Some(&e)).await;
    }
    // Over TLS nothing is written before a handshake this listener will not spend.
}

/// The next event of the stream; `None` once the component closed the connection.
async fn next_event(conn: &mut Conn) -> Result<Option<StreamEvent>, StreamError> {
    loop {
        if let Some(ev) = conn.next_event()? {
            return Ok(Some(ev));
        }
        match conn.fill().await {
            Ok(true) => {}
            Ok(false) | Err(_) => return Ok(None),
        }
    }
}

fn error(cond: StreamErrorCondition, text: impl Into<String>) -> StreamError {
    StreamError::with_text(cond, text)
}

/// One component connection, from accept to close.
async fn serve(ctx: &ConnCtx, sock: tokio::net::TcpStream, peer: SocketAddr) {
    let state_timeout = Duration::from_millis(ctx.cfg.state_timeout.max(1));
    let deadline = tokio::time::Instant::now() + state_timeout;
    let transport = match &ctx.tls {
        Some(acceptor) => match tokio::time::timeout_at(deadline, acceptor.accept(sock)).await {
            Ok(Ok(tls)) => Transport::Tls(Box::new(tls)),
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "component TLS handshake failed");
                return;
            }
            Err(_) => return,
        },
        None => Transport::Plain(sock),
    };
    let limits = Limits { max_stanza_size: ctx.cfg.max_stanza_size, ..Limits::default() };
    let data = ctx.instruments.data(ConnectionType::Component, transport.is_tls());
    // Components belong to no host of ours: their elements count as `global`'s.
    let host = ctx.instruments.host(ConnectionType::Component, GLOBAL_HOST_TYPE);
    let mut conn = Conn::stream(transport, limits, Shaper::new(ctx.rate), Meter { host: Some(host), data: Some(data) });
    let id = format!("{:016x}", rand::random::<u64>());
    let mut header_sent = false;
    let opened = match tokio::time::timeout_at(deadline, open(ctx, &mut conn, &id, &mut header_sent)).await {
        Ok(r) => r,
        Err(_) => {
            if !header_sent {
                // RFC 6120 §4.9.1.1: the error goes after a header of ours.
                let _ = conn.send(&stream_header_xml("", &id)).await;
            }
            Err(error(StreamErrorCondition::ConnectionTimeout, "no handshake in time"))
        }
    };
    let (domain, guard) = match opened {
        Ok(Some(opened)) => opened,
        Ok(None) => return,
        Err(e) => {
            tracing::info!(%peer, error = %e.condition, text = ?e.text, "component refused");
            conn.close(Some(&e)).await;
            return;
        }
    };
    tracing::info!(%peer, %domain, "component connected");
    let end = run(ctx, &mut conn, &domain, guard).await;
    tracing::info!(%peer, %domain, reason = ?end.as_ref().map(|e| e.condition), "component disconnected");
    conn.close(end.as_ref()).await;
}

/// The stream header and handshake. `Ok(None)`: the component went away.
async fn open(
    ctx: &ConnCtx,
    conn: &mut Conn,
    id: &str,
    header_sent: &mut bool,
) -> Result<Option<(String, Registered)>, StreamError> {
    let header = match next_event(conn).await {
        Ok(Some(StreamEvent::Header(h))) => h,
        Ok(Some(_)) => {
            return header_then(
                conn,
                "",
                id,
                header_sent,
                error(StreamErrorCondition::NotWellFormed, "no stream header"),
            )
            .await
        }
        Ok(None) => return Ok(None),
        Err(e) => return header_then(conn, "", id, header_sent, e).await,
    };
    let to = header.to.as_deref().unwrap_or_default();
    let Ok(domain) = canonical_domain(to) else {
        let e = error(StreamErrorCondition::HostUnknown, "the stream names no domain");
        return header_then(conn, to, id, header_sent, e).await;
    };
    if header.default_ns.as_deref() != Some(ns::COMPONENT) {
        let e = error(StreamErrorCondition::InvalidNamespace, "a component stream is in jabber:component:accept");
        return header_then(conn, &domain, id, header_sent, e).await;
    }
    *header_sent = true;
    conn.send(&stream_header_xml(&domain, id)).await.map_err(|_| error(StreamErrorCondition::Reset, "gone"))?;
    let handshake = match next_event(conn).await? {
        Some(StreamEvent::Stanza(el)) if el.is("handshake", ns::COMPONENT) => el.text(),
        Some(_) => return Err(error(StreamErrorCondition::NotAuthorized, "expected <handshake/>")),
        None => return Ok(None),
    };
    if ctx.cfg.access != "all" || !handshake_matches(id, &ctx.cfg.password, &handshake) {
        ctx.instruments.host(ConnectionType::Component, GLOBAL_HOST_TYPE).auth_failed.increment(1);
        return Err(error(StreamErrorCondition::NotAuthorized, "wrong handshake"));
    }
    let registered = register(ctx, &domain).await?;
    conn.send("<handshake/>").await.map_err(|_| error(StreamErrorCondition::Reset, "gone"))?;
    Ok(Some((domain, registered)))
}

/// RFC 6120 §4.9.1.1: an error before our header goes after one.
async fn header_then<T>(
    conn: &mut Conn,
    domain: &str,
    id: &str,
    header_sent: &mut bool,
    e: StreamError,
) -> Result<T, StreamError> {
    *header_sent = true;
    let _ = conn.send(&stream_header_xml(domain, id)).await;
    Err(e)
}

/// A domain this connection holds, with the queue its stanzas arrive on.
struct Registered {
    guard: DomainGuard,
    inbox: mpsc::Receiver<Routed>,
    kicked: oneshot::Receiver<oneshot::Sender<()>>,
    id: u64,
}

struct Outbox(mpsc::Sender<Routed>);

impl DomainHandler for Outbox {
    fn deliver(&self, routed: Routed) -> Result<(), Routed> {
        self.0.try_send(routed).map_err(|e| e.into_inner())
    }
}

/// Registers the domain, per `conflict_behaviour`.
async fn register(ctx: &ConnCtx, domain: &str) -> Result<Registered, StreamError> {
    let kind = if ctx.cfg.hidden_components { DomainKind::HiddenComponent } else { DomainKind::Component };
    let mut kicked_one = false;
    // The node whose component was asked to go, and until when it may take.
    let mut kicked_node: Option<(meerkat_cluster::NodeId, tokio::time::Instant)> = None;
    loop {
        let (tx, inbox) = mpsc::channel(QUEUE);
        match ctx.router.register_domain(domain, kind, Arc::new(Outbox(tx))).await {
            Ok(guard) => {
                let (kick, kicked) = oneshot::channel();
                let id = ctx.shared.next_id.fetch_add(1, Ordering::Relaxed);
                ctx.shared.live.lock().unwrap_or_else(|e| e.into_inner()).insert(domain.to_owned(), (id, Some(kick)));
                return Ok(Registered { guard, inbox, kicked, id });
            }
            Err(RouteError::Conflict { holder: Holder::Local(k), .. })
                if ctx.cfg.conflict_behaviour == ConflictBehaviour::KickOld
                    && k != DomainKind::Service
                    && !kicked_one =>
            {
                kicked_one = true;
                kick_here(&ctx.shared, domain).await.map_err(|e| error(StreamErrorCondition::Conflict, e))?;
            }
            Err(RouteError::Conflict { holder: Holder::Node(node, k), .. })
                if ctx.cfg.conflict_behaviour == ConflictBehaviour::KickOld && k != DomainKind::Service =>
            {
                match kicked_node {
                    None => {
                        ctx.module.ask_node(node, KICK_TARGET, domain.as_bytes().to_vec(), KICK_WITHIN).await.map_err(
                            |e| {
                                error(
                                    StreamErrorCondition::Conflict,
                                    format!("the component on node {node} was not replaced: {e}"),
                                )
                            },
                        )?;
                        kicked_node = Some((node, tokio::time::Instant::now() + KICK_WITHIN));
                    }
                    // It let go; the cluster has yet to apply the release.
                    Some((n, until)) if n == node && tokio::time::Instant::now() < until => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Some(_) => {
                        return Err(error(
                            StreamErrorCondition::Conflict,
                            format!("node {node} still has the domain after its component went"),
                        ));
                    }
                }
            }
            Err(RouteError::Conflict { holder, .. }) => {
                return Err(error(StreamErrorCondition::Conflict, format!("the domain is already served by {holder}")));
            }
            Err(RouteError::InvalidDomain(d)) => {
                return Err(error(StreamErrorCondition::HostUnknown, format!("not a domain: {d}")));
            }
            Err(RouteError::Cluster(e)) => {
                return Err(error(
                    StreamErrorCondition::InternalServerError,
                    format!("the cluster did not register the domain ({e}); try again"),
                ));
            }
        }
    }
}

/// Makes this node's component of `domain` end its stream with
/// `<conflict/>`; returns once it has let go of the domain.
async fn kick_here(shared: &Shared, domain: &str) -> Result<(), String> {
    let kick = shared.live.lock().unwrap_or_else(|e| e.into_inner()).get_mut(domain).and_then(|e| e.1.take());
    let Some(kick) = kick else {
        return Err("no component of this node has the domain, or it is being replaced already".into());
    };
    let (done, released) = oneshot::channel();
    if kick.send(done).is_err() {
        // The connection ended meanwhile, letting go of the domain.
        return Ok(());
    }
    match tokio::time::timeout(KICK_WITHIN, released).await {
        Ok(_) => Ok(()),
        Err(_) => Err("the old component did not let go of the domain".into()),
    }
}

/// The connected component: its stanzas to the router, the router's to it.
/// Returns how the stream ends.
async fn run(ctx: &ConnCtx, conn: &mut Conn, domain: &str, reg: Registered) -> Option<StreamError> {
    let Registered { guard, mut inbox, mut kicked, id } = reg;
    let mut stop = ctx.stop.clone();
    let mut released: Option<oneshot::Sender<()>> = None;
    let end = loop {
        match conn.next_event() {
            Ok(Some(StreamEvent::Stanza(el))) => {
                if let Err(e) = from_component(ctx, domain, el) {
                    break Some(e);
                }
                continue;
            }
            Ok(Some(StreamEvent::End)) => break None,
            Ok(Some(StreamEvent::Header(_))) => {
                break Some(error(StreamErrorCondition::NotWellFormed, "a second stream header"))
            }
            Ok(None) => {}
            Err(e) => break Some(e),
        }
        tokio::select! {
            r = conn.fill() => match r {
                Ok(true) => {}
                Ok(false) | Err(_) => break None,
            },
            Some(routed) = inbox.recv() => {
                if conn.send(&to_component(routed)).await.is_err() {
                    break None;
                }
            }
            done = &mut kicked => {
                released = done.ok();
                break Some(error(StreamErrorCondition::Conflict, "another component took the domain"));
            }
            () = stopping(&mut stop) => break Some(StreamError::new(StreamErrorCondition::SystemShutdown)),
        }
    };
    // The domain goes first, so nothing more is queued; what was queued is answered.
    {
        let mut live = ctx.shared.live.lock().unwrap_or_else(|e| e.into_inner());
        if live.get(domain).is_some_and(|(held, _)| *held == id) {
            live.remove(domain);
        }
    }
    drop(guard);
    inbox.close();
    while let Ok(routed) = inbox.try_recv() {
        ctx.router.bounce(routed, StanzaErrorCondition::ServiceUnavailable);
    }
    if let Some(done) = released {
        let _ = done.send(());
    }
    end
}

/// A stanza for the component, in its namespace.
fn to_component(routed: Routed) -> String {
    let Routed { from, to, mut stanza } = routed;
    stanza.set_attr("from", from.to_string());
    stanza.set_attr("to", to.to_string());
    to_component_ns(&mut stanza);
    stanza.to_xml(ns::COMPONENT)
}

/// A stanza the component sent, checked and routed.
fn from_component(ctx: &ConnCtx, domain: &str, mut el: Element) -> Result<(), StreamError> {
    if el.ns != ns::COMPONENT || !matches!(el.name.as_str(), "message" | "presence" | "iq") {
        return Err(error(StreamErrorCondition::UnsupportedStanzaType, format!("<{}/> is not a stanza", el.name)));
    }
    to_client_ns(&mut el);
    let to = el.attr("to").and_then(|t| parse_jid(t).ok());
    let Some(to) = to else {
        return Err(error(StreamErrorCondition::ImproperAddressing, "a stanza without a valid 'to'"));
    };
    let from = match el.attr("from") {
        // As Prosody does: the component's own domain (slixmpp's pings carry no `from`).
        None => {
            el.set_attr("from", domain);
            parse_jid(domain)
                .map_err(|_| error(StreamErrorCondition::InternalServerError, "the domain is not a JID"))?
        }
        Some(f) => parse_jid(f).map_err(|_| error(StreamErrorCondition::InvalidFrom, "'from' is not a JID"))?,
    };
    if ctx.cfg.check_from && from.domain().as_str() != domain {
        return Err(error(StreamErrorCondition::InvalidFrom, format!("'from' must be in {domain}")));
    }
    ctx.router.route(Routed { from, to, stanza: el });
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_section_has_mongooseims_names_and_defaults() {
        let l: ComponentListen = toml::from_str("port = 8888\npassword = 'x'").unwrap();
        assert_eq!(l.ip_address, any_address());
        assert!(l.check_from && !l.hidden_components && l.tls.is_none());
        assert_eq!(l.conflict_behaviour, ConflictBehaviour::Disconnect);
        assert_eq!((l.shaper.as_str(), l.access.as_str(), l.state_timeout), ("none", "all", 5000));
        assert_eq!(l.max_connections, 1024);
        let l: ComponentListen = toml::from_str(
            "port = 1\npassword = 'x'\nconflict_behaviour = 'kick_old'\nhidden_components = true\ntls.certfile = 'c'\ntls.keyfile = 'k'",
        )
        .unwrap();
        assert_eq!(l.conflict_behaviour, ConflictBehaviour::KickOld);
        assert!(l.hidden_components && l.tls.is_some());
        let e = toml::from_str::<ComponentListen>("port = 1\npassword = 'x'\ncheck_form = false").unwrap_err();
        assert!(e.to_string().contains("check_form"), "{e}");
        assert!(toml::from_str::<ComponentListen>("port = 1").is_err(), "a password is required");
        let empty: ComponentListen = toml::from_str("port = 1\npassword = ''").unwrap();
        assert!(ComponentListener::build("listen.component[0]".into(), empty, &Components::default()).is_err());
    }
}
