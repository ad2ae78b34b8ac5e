//! Server-to-server federation (RFC 6120 §4–§6, XEP-0220 server dialback,
//! XEP-0178 SASL EXTERNAL for servers), as a service of the node:
//! `[[listen.s2s]]` accepts other servers' streams, and the last link of the
//! router's chain sends stanzas for every domain nobody here serves over
//! outgoing streams.
//!
//! - **Outgoing**: one stream per (local domain, remote domain) pair and
//!   node, started by the first stanza, with a bounded queue while it
//!   connects. The remote server is found at `[s2s.outgoing] address` when
//!   listed there, else by its `_xmpp-server._tcp` and `_xmpps-server._tcp`
//!   SRV records (STARTTLS, or TLS at once as XEP-0368 has it), else at the
//!   A/AAAA records of its domain on `port`. STARTTLS is used whenever
//!   offered (required by default), presenting our certificate. When the
//!   remote server's certificate verifies for its domain against
//!   `[s2s.outgoing.tls] cacertfile` and it offers SASL EXTERNAL, the
//!   stream authenticates with that; otherwise with dialback: our
//!   `db:result` carries a key only our deployment can make (XEP-0185,
//!   from the shared secret), which the remote server checks with our
//!   authoritative server. Stanzas that cannot be delivered (no address,
//!   refused, timed out, refused authentication) are bounced to their
//!   senders once, with `remote-server-not-found` or `remote-server-timeout`.
//! - **Incoming**: a stream to one of our hosts; STARTTLS (or TLS from the
//!   first byte) when the listener has a certificate (the node's by
//!   default), then SASL EXTERNAL, offered when the peer's certificate
//!   chains to the listener's `tls.cacertfile` and names the domain of the
//!   stream, or dialback: the peer's `db:result` is checked by a
//!   `db:verify` to the peer's domain, and `db:verify` requests for our
//!   keys are answered on any stream. A stanza is accepted only from a
//!   domain authenticated on that stream and only to one of our hosts;
//!   anything else ends the stream with the RFC 6120 error.
//! - `[s2s] default_policy` and `host_policy` decide which remote domains
//!   may federate, both ways.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meerkat_routing::{Link, Routed, Router, Step};
use meerkat_storage::SecretRepo as _;
use meerkat_xmpp::element::Element;
use meerkat_xmpp::error::{StanzaErrorCondition, StreamError, StreamErrorCondition};
use meerkat_xmpp::jid::{canonical_domain, parse_jid};
use meerkat_xmpp::ns;
use meerkat_xmpp::parser::{Limits, StreamEvent, StreamParser};
use meerkat_xmpp::s2s::{self as proto, DIALBACK, DIALBACK_FEATURE};
use meerkat_xmpp::sasl::external::{external_server, CertIdentity};
use meerkat_xmpp::sasl::SaslFailure;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use crate::client_cert::ClientCerts;
use crate::ext::{Service, ServiceCtx, TlsFiles};
use crate::instrument::{ConnectionType, Instruments, Meter};
use crate::transport::{Conn, Shaper, Transport};

/// Stanzas queued for one remote domain while its stream connects.
const OUT_QUEUE: usize = 1024;
/// Attempts to reach a remote server before what waits for it is bounced.
const ATTEMPTS: u32 = 2;
/// An outgoing stream with nothing to send for this long is closed.
const OUT_IDLE: Duration = Duration::from_secs(600);
/// An incoming stream that sends nothing for this long is closed.
const IN_IDLE: Duration = Duration::from_secs(600);
/// An incoming stream must have authenticated a domain within this long.
const IN_NEGOTIATION: Duration = Duration::from_secs(60);
/// The name of the dialback secret in the database, when `[s2s] shared` is unset.
const SECRET_NAME: &str = "s2s_dialback_secret";

/// `[[listen.s2s]]`, with MongooseIM's option names.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S2sListen {
    pub port: u16,
    #[serde(default = "any_address")]
    pub ip_address: IpAddr,
    /// `[shaper.NAME]` applied to what each server sends, or `"none"`.
    #[serde(default = "none")]
    pub shaper: String,
    /// Largest stanza in bytes; a larger one ends the stream with `<policy-violation/>`.
    #[serde(default = "max_stanza_size")]
    pub max_stanza_size: usize,
    /// The certificate offered with STARTTLS (the node's by default).
    #[serde(default)]
    pub tls: TlsFiles,
}

/// Whether a remote domain may federate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    #[default]
    Allow,
    Deny,
}

/// One entry of `[s2s] host_policy`.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostPolicy {
    pub host: String,
    pub policy: Policy,
}

/// `[s2s]`.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S2sOptions {
    /// For remote domains `host_policy` does not name.
    pub default_policy: Policy,
    pub host_policy: Vec<HostPolicy>,
    /// The dialback secret; every node of a deployment must have the same.
    /// Unset: one is generated and kept in the database, which the nodes share.
    pub shared: Option<String>,
    pub outgoing: OutgoingOptions,
}

/// `[s2s.outgoing]`.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutgoingOptions {
    /// The port of a remote server found by its A/AAAA records.
    pub port: u16,
    /// Fixed addresses of remote domains: `{host, ip_address, port}`.
    pub address: Vec<FixedAddress>,
    /// Milliseconds to connect and to open the stream.
    pub connection_timeout: u64,
    /// Seconds between the attempts to reach a server.
    pub max_retry_delay: u64,
    /// Address families tried, in order (4, 6).
    pub ip_versions: Vec<u8>,
    pub tls: OutgoingTls,
}

impl Default for OutgoingOptions {
    fn default() -> Self {
        OutgoingOptions {
            port: 5269,
            address: Vec::new(),
            connection_timeout: 10_000,
            max_retry_delay: 1,
            ip_versions: vec![4, 6],
            tls: OutgoingTls::default(),
        }
    }
}

/// One `[s2s.outgoing] address` entry.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixedAddress {
    pub host: String,
    pub ip_address: IpAddr,
    pub port: Option<u16>,
}

/// `[s2s.outgoing.tls]`.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutgoingTls {
    pub mode: OutgoingTlsMode,
    /// CA certificates (PEM) a remote server's certificate is checked
    /// against; when it verifies for the remote domain and the server
    /// offers SASL EXTERNAL, the stream authenticates with our certificate
    /// (XEP-0178) instead of dialback. Unset: dialback only.
    pub cacertfile: Option<PathBuf>,
    /// The certificate presented to remote servers (PEM, with `keyfile`);
    /// unset: the first `[[listen.s2s]]`'s, else the node's.
    pub certfile: Option<PathBuf>,
    pub keyfile: Option<PathBuf>,
}

/// Whether an outgoing stream must be encrypted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutgoingTlsMode {
    /// STARTTLS, and no stream to a server that does not offer it.
    #[default]
    StarttlsRequired,
    /// STARTTLS when the server offers it.
    Starttls,
}

fn any_address() -> IpAddr {
    IpAddr::from([0, 0, 0, 0])
}
fn none() -> String {
    "none".into()
}
fn max_stanza_size() -> usize {
    65536
}

/// `[[listen.s2s]]` and `[s2s]` together.
#[derive(Clone, Debug, Default)]
pub struct S2sConfig {
    pub listen: Vec<S2sListen>,
    pub options: S2sOptions,
}

/// Federation: the listeners and the outgoing streams.
pub struct S2s {
    cfg: S2sConfig,
    running: Mutex<Option<Running>>,
}

struct Running {
    stop: watch::Sender<bool>,
    accepts: Vec<tokio::task::JoinHandle<()>>,
    core: Arc<Core>,
}

impl S2s {
    pub fn build(cfg: S2sConfig) -> Result<Arc<dyn Service>, String> {
        if cfg.options.shared.as_deref() == Some("") {
            return Err("s2s.shared: the dialback secret must not be empty".into());
        }
        for (i, a) in cfg.options.outgoing.address.iter().enumerate() {
            canonical_domain(&a.host).map_err(|e| format!("s2s.outgoing.address[{i}].host: {e}"))?;
        }
        Ok(Arc::new(S2s { cfg, running: Mutex::new(None) }))
    }
}

#[async_trait::async_trait]
impl Service for S2s {
    fn name(&self) -> String {
        "s2s".into()
    }

    async fn start(&self, ctx: &ServiceCtx) -> Result<(), String> {
        let secret = match &self.cfg.options.shared {
            Some(s) => s.as_bytes().to_vec(),
            None => ctx
                .module
                .storage
                .shared_secret(SECRET_NAME, &rand::random::<[u8; 32]>())
                .await
                .map_err(|e| format!("reading the dialback secret: {e}"))?,
        };
        let out_tls = &self.cfg.options.outgoing.tls;
        let ours = match (&out_tls.certfile, &out_tls.keyfile, self.cfg.listen.first()) {
            (Some(c), Some(k), _) => {
                TlsFiles { certfile: Some(c.clone()), keyfile: Some(k.clone()), ..Default::default() }
            }
            (None, None, Some(l)) => {
                TlsFiles { certfile: l.tls.certfile.clone(), keyfile: l.tls.keyfile.clone(), ..Default::default() }
            }
            (None, None, None) => TlsFiles::default(),
            _ => return Err("s2s.outgoing.tls: certfile and keyfile go together".into()),
        };
        let certified = (ctx.env.tls)(&ours).map_err(|e| format!("s2s.outgoing.tls: {e}"))?.certified;
        let server_verifier = match &out_tls.cacertfile {
            Some(path) => Some(server_verifier(path).map_err(|e| format!("s2s.outgoing.tls.cacertfile: {e}"))?),
            None => None,
        };
        let (stop, stop_rx) = watch::channel(false);
        let core = Arc::new(Core {
            client: client_config(certified),
            resolver: resolver(&self.cfg.options.outgoing),
            server_verifier,
            router: ctx.module.router.clone(),
            opts: self.cfg.options.clone(),
            secret,
            out: Mutex::new(HashMap::new()),
            out_state: Mutex::new(HashMap::new()),
            inbound: Mutex::new(HashMap::new()),
            next_in: std::sync::atomic::AtomicU64::new(0),
            stop: stop_rx.clone(),
            instruments: ctx.module.instruments.clone(),
        });
        let mut accepts = Vec::new();
        for (i, l) in self.cfg.listen.iter().enumerate() {
            let rate = (ctx.env.shaper)(&l.shaper).map_err(|e| format!("listen.s2s[{i}].shaper: {e}"))?;
            let built = (ctx.env.tls)(&l.tls).map_err(|e| format!("listen.s2s[{i}].tls: {e}"))?;
            let mut server = (*built.server).clone();
            // Servers ask for this protocol (RFC 7590 §3.1); one not offered would fail the handshake.
            server.alpn_protocols = vec![b"xmpp-server".to_vec()];
            let tls = tokio_rustls::TlsAcceptor::from(Arc::new(server));
            let addr = SocketAddr::new(l.ip_address, l.port);
            let tcp = tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("listen.s2s[{i}]: {addr}: {e}"))?;
            tracing::info!(%addr, "s2s listener ready");
            let limits = Limits { max_stanza_size: l.max_stanza_size, ..Limits::default() };
            let listener =
                Arc::new(Listener { core: core.clone(), tls, client_certs: built.client_certs, rate, limits });
            accepts.push(tokio::spawn(accept_loop(tcp, listener, stop_rx.clone())));
        }
        ctx.module.router.set_s2s(Arc::new(S2sLink(core.clone())));
        *self.running.lock().unwrap_or_else(|e| e.into_inner()) = Some(Running { stop, accepts, core });
        Ok(())
    }

    fn status(&self) -> Option<serde_json::Value> {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running.as_ref().map(|r| r.core.status())
    }

    async fn stop(&self, deadline: tokio::time::Instant) {
        let Some(running) = self.running.lock().unwrap_or_else(|e| e.into_inner()).take() else { return };
        let _ = running.stop.send(true);
        for a in running.accepts {
            let _ = tokio::time::timeout_at(deadline, a).await;
        }
    }
}

/// What the listeners, the link and the outgoing streams share.
struct Core {
    router: Arc<Router>,
    /// TLS to remote servers: our certificate, and theirs taken as it is.
    client: Arc<rustls::ClientConfig>,
    /// SRV and A/AAAA lookups, from the system's resolver configuration.
    resolver: Option<hickory_resolver::TokioResolver>,
    /// Whether a remote server's certificate verifies (`[s2s.outgoing.tls] cacertfile`).
    server_verifier: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    opts: S2sOptions,
    secret: Vec<u8>,
    /// Outgoing streams by (local domain, remote domain): their queues.
    out: Mutex<HashMap<(String, String), mpsc::Sender<Routed>>>,
    /// What each outgoing stream is doing (`connecting`, `established`,
    /// `retrying`), and how it authenticated once established.
    out_state: Mutex<HashMap<(String, String), OutState>>,
    /// Incoming streams, by a number of their own.
    inbound: Mutex<HashMap<u64, Inbound>>,
    next_in: std::sync::atomic::AtomicU64,
    stop: watch::Receiver<bool>,
    instruments: Arc<Instruments>,
}

/// An outgoing stream's state (`connecting`, `established`, `retrying`), and
/// how it authenticated once established.
type OutState = (&'static str, Option<Auth>);

/// How a stream's domain was authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
enum Auth {
    /// XEP-0220: a key checked with the domain's authoritative server.
    Dialback,
    /// XEP-0178: SASL EXTERNAL with a certificate that verifies.
    External,
}

/// An incoming stream as the admin API shows it.
#[derive(Clone, Debug, serde::Serialize)]
struct Inbound {
    peer: String,
    local: Option<String>,
    tls: bool,
    /// Remote domains authenticated on the stream, and how.
    domains: Vec<(String, Auth)>,
}

impl Core {
    /// Streams in and out, for `GET /api/s2s` and `meerkat s2s list`.
    fn status(&self) -> serde_json::Value {
        let queues: Vec<((String, String), usize)> = self
            .out
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, tx)| (k.clone(), tx.max_capacity() - tx.capacity()))
            .collect();
        let states = self.out_state.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut outgoing: Vec<serde_json::Value> = queues
            .into_iter()
            .map(|((local, remote), queued)| {
                let (state, auth) =
                    states.get(&(local.clone(), remote.clone())).copied().unwrap_or(("connecting", None));
                serde_json::json!({ "local": local, "remote": remote, "state": state, "auth": auth, "queued": queued })
            })
            .collect();
        outgoing.sort_by_key(|o| (o["remote"].to_string(), o["local"].to_string()));
        let mut incoming: Vec<Inbound> =
            self.inbound.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        incoming.sort_by(|a, b| a.peer.cmp(&b.peer));
        let incoming: Vec<serde_json::Value> = incoming
            .into_iter()
            .map(|i| {
                // The method of the stream's first domain; the others came by dialback.
                let auth = i.domains.iter().find(|d| d.1 == Auth::External).or(i.domains.first()).map(|d| d.1);
                serde_json::json!({
                    "peer": i.peer, "local": i.local, "tls": i.tls, "auth": auth,
                    "state": if i.domains.is_empty() { "negotiating" } else { "established" },
                    "domains": i.domains.iter().map(|d| d.0.clone()).collect::<Vec<_>>(),
                })
            })
            .collect();
        serde_json::json!({ "outgoing": outgoing, "incoming": incoming })
    }

    fn set_out_state(&self, key: &(String, String), state: Option<OutState>) {
        let mut states = self.out_state.lock().unwrap_or_else(|e| e.into_inner());
        match state {
            Some(s) => {
                states.insert(key.clone(), s);
            }
            None => {
                states.remove(key);
            }
        }
    }

    fn allowed(&self, remote: &str) -> bool {
        let policy =
            self.opts.host_policy.iter().find(|p| p.host == remote).map_or(self.opts.default_policy, |p| p.policy);
        policy == Policy::Allow
    }

    /// Queues a stanza for `remote`, starting its stream if there is none;
    /// the stanza comes back when the queue is full, to be bounced.
    #[allow(clippy::result_large_err)]
    fn enqueue(self: &Arc<Self>, local: String, remote: String, routed: Routed) -> Result<(), Routed> {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        let key = (local, remote);
        let mut routed = routed;
        if let Some(tx) = out.get(&key) {
            match tx.try_send(routed) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Full(r)) => return Err(r),
                Err(mpsc::error::TrySendError::Closed(r)) => routed = r,
            }
        }
        let (tx, rx) = mpsc::channel(OUT_QUEUE);
        if let Err(e) = tx.try_send(routed) {
            return Err(e.into_inner());
        }
        out.insert(key.clone(), tx.clone());
        tokio::spawn(self.clone().outgoing(key, tx, rx));
        Ok(())
    }

    /// One outgoing stream's life: connect, authenticate, send what comes,
    /// until idle, stopped or broken; what it could not send is bounced.
    async fn outgoing(
        self: Arc<Self>,
        key: (String, String),
        tx: mpsc::Sender<Routed>,
        mut rx: mpsc::Receiver<Routed>,
    ) {
        let (local, remote) = (&key.0, &key.1);
        let mut failures = 0;
        let mut unsent: Option<Routed> = None;
        let mut failure = StanzaErrorCondition::RemoteServerNotFound;
        // Whether the stream ended for want of anything to send (not a failure).
        let mut idle = false;
        while failures < ATTEMPTS {
            self.set_out_state(&key, Some((if failures == 0 { "connecting" } else { "retrying" }, None)));
            match self.dial(local, remote).await {
                Ok(dialed) => match self.authenticate(dialed, local, remote).await {
                    Ok((mut wire, auth)) => {
                        failures = 0;
                        self.set_out_state(&key, Some(("established", Some(auth))));
                        tracing::info!(%local, %remote, ?auth, "s2s stream out ready");
                        match self.pump(&mut wire, &mut rx, &mut unsent).await {
                            Pumped::Idle => {
                                let _ = wire.send("</stream:stream>").await;
                                idle = true;
                                break;
                            }
                            Pumped::Stopped => {
                                let _ = wire.send("</stream:stream>").await;
                                break;
                            }
                            Pumped::Broken => failures += 1,
                        }
                    }
                    Err(e) => {
                        tracing::info!(%local, %remote, error = %e, "s2s stream out not authenticated");
                        failure = e.condition();
                        failures += 1;
                    }
                },
                Err(e) => {
                    tracing::info!(%local, %remote, error = %e, "s2s connection out failed");
                    failure = e.condition();
                    failures += 1;
                }
            }
            if failures < ATTEMPTS {
                let pause = Duration::from_secs(self.opts.outgoing.max_retry_delay.max(1));
                let mut stop = self.stop.clone();
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stopping(&mut stop) => break,
                }
            }
        }
        // Nobody queues here any more; what is left is bounced, once.
        {
            let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
            if out.get(&key).is_some_and(|t| t.same_channel(&tx)) {
                out.remove(&key);
                self.set_out_state(&key, None);
            }
        }
        drop(tx);
        rx.close();
        for r in unsent.into_iter().chain(std::iter::from_fn(|| rx.try_recv().ok())) {
            if idle {
                // Queued as the idle stream closed: a new stream takes it.
                if let Err(r) = self.enqueue(local.clone(), remote.clone(), r) {
                    self.router.bounce(r, StanzaErrorCondition::ResourceConstraint);
                }
            } else {
                self.router.bounce(r, failure);
            }
        }
    }

    /// Sends what is queued until the stream is idle, the node stops or the stream breaks.
    async fn pump(&self, wire: &mut Wire, rx: &mut mpsc::Receiver<Routed>, unsent: &mut Option<Routed>) -> Pumped {
        let mut stop = self.stop.clone();
        loop {
            let next = match unsent.take() {
                Some(r) => Some(r),
                None => tokio::select! {
                    r = rx.recv() => match r { Some(r) => Some(r), None => return Pumped::Stopped },
                    ev = wire.next_event() => {
                        match ev {
                            // Peers may send whitespace keepalives; anything else ends it.
                            Ok(StreamEvent::Stanza(el)) if el.is("verify", DIALBACK) => {
                                let answer = self.answer_verify(&el);
                                if wire.send(&proto::dialback_xml(&answer)).await.is_err() {
                                    return Pumped::Broken;
                                }
                                continue;
                            }
                            _ => return Pumped::Broken,
                        }
                    }
                    _ = tokio::time::sleep(OUT_IDLE) => return Pumped::Idle,
                    _ = stopping(&mut stop) => return Pumped::Stopped,
                },
            };
            let Some(routed) = next else { continue };
            let mut el = routed.stanza.clone();
            el.set_attr("from", routed.from.to_string());
            el.set_attr("to", routed.to.to_string());
            proto::to_server_ns(&mut el);
            if wire.send(&el.to_xml(ns::SERVER)).await.is_err() {
                *unsent = Some(routed);
                return Pumped::Broken;
            }
        }
    }

    /// Where `remote`'s server listens, in the order to try: `[s2s.outgoing]
    /// address` when it lists the domain; else the targets of its
    /// `_xmpp-server._tcp` (STARTTLS) and `_xmpps-server._tcp` (direct TLS,
    /// XEP-0368) SRV records, by priority; else its A/AAAA records on `port`.
    async fn resolve(&self, remote: &str) -> Result<Vec<Target>, OutError> {
        let out = &self.opts.outgoing;
        let fixed: Vec<Target> = out
            .address
            .iter()
            .filter(|a| a.host == remote)
            .map(|a| Target { addr: SocketAddr::new(a.ip_address, a.port.unwrap_or(out.port)), direct_tls: false })
            .collect();
        if !fixed.is_empty() {
            return Ok(fixed);
        }
        let family_rank = |a: &SocketAddr| out.ip_versions.iter().position(|v| *v == if a.is_ipv4() { 4 } else { 6 });
        let timeout = Duration::from_millis(out.connection_timeout.max(1));
        // RFC 6120 §3.2.1: no answer about SRV records is no records.
        let srv = match tokio::time::timeout(timeout / 2, self.srv_targets(remote)).await {
            Ok(srv) => srv?,
            Err(_) => {
                tracing::info!(%remote, "no answer for SRV records; trying A/AAAA");
                Vec::new()
            }
        };
        let mut found = Vec::new();
        if srv.is_empty() {
            found = tokio::time::timeout(timeout, tokio::net::lookup_host((remote, out.port)))
                .await
                .map_err(|_| OutError::Timeout(format!("resolving {remote}")))?
                .map_err(|e| OutError::NotFound(format!("resolving {remote}: {e}")))?
                .filter(|a| family_rank(a).is_some())
                .map(|addr| Target { addr, direct_tls: false })
                .collect();
            found.sort_by_key(|t| family_rank(&t.addr));
        }
        for (host, port, direct_tls) in srv {
            let Some(resolver) = &self.resolver else { break };
            match tokio::time::timeout(timeout, resolver.lookup_ip(host.as_str())).await {
                Err(_) => tracing::info!(%remote, target = %host, "no answer for an SRV target's address"),
                Ok(Ok(ips)) => {
                    let mut addrs: Vec<SocketAddr> =
                        ips.iter().map(|ip| SocketAddr::new(ip, port)).filter(|a| family_rank(a).is_some()).collect();
                    addrs.sort_by_key(family_rank);
                    found.extend(addrs.into_iter().map(|addr| Target { addr, direct_tls }));
                }
                Ok(Err(e)) => tracing::info!(%remote, target = %host, error = %e, "an SRV target has no address"),
            }
        }
        if found.is_empty() {
            return Err(OutError::NotFound(format!("no address for {remote}")));
        }
        Ok(found)
    }

    /// `remote`'s SRV targets (host, port, direct TLS), by priority, then
    /// weight (heavier first), STARTTLS first on a tie; empty when it has no
    /// records. Records whose target is `.` mean no service: an error.
    async fn srv_targets(&self, remote: &str) -> Result<Vec<(String, u16, bool)>, OutError> {
        let Some(resolver) = &self.resolver else { return Ok(Vec::new()) };
        let mut targets = Vec::new();
        let mut refused = false;
        for (service, direct_tls) in [("_xmpp-server._tcp", false), ("_xmpps-server._tcp", true)] {
            let name = format!("{service}.{remote}.");
            let Ok(lookup) = resolver.srv_lookup(name.as_str()).await else { continue };
            for record in lookup.answers() {
                if let hickory_resolver::proto::rr::RData::SRV(srv) = &record.data {
                    if srv.target.is_root() {
                        refused = true;
                        continue;
                    }
                    let host = srv.target.to_ascii().trim_end_matches('.').to_owned();
                    targets.push((srv.priority, std::cmp::Reverse(srv.weight), direct_tls, host, srv.port));
                }
            }
        }
        if targets.is_empty() && refused {
            return Err(OutError::NotFound(format!("{remote} offers no XMPP service (SRV target \".\")")));
        }
        targets.sort();
        Ok(targets.into_iter().map(|(_, _, direct_tls, host, port)| (host, port, direct_tls)).collect())
    }

    /// Connects to `remote`'s server and opens a stream, under TLS when offered.
    async fn dial(&self, local: &str, remote: &str) -> Result<Dialed, OutError> {
        let timeout = Duration::from_millis(self.opts.outgoing.connection_timeout.max(1));
        let targets = self.resolve(remote).await?;
        let mut last = OutError::NotFound(format!("no address for {remote}"));
        let mut tcp = None;
        for target in targets {
            let addr = target.addr;
            match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => {
                    tcp = Some((s, target.direct_tls));
                    break;
                }
                Ok(Err(e)) => last = OutError::NotFound(format!("connecting to {addr}: {e}")),
                Err(_) => last = OutError::Timeout(format!("connecting to {addr}")),
            }
        }
        let (tcp, direct_tls) = tcp.ok_or(last)?;
        let _ = tcp.set_nodelay(true);
        let meter = Meter {
            host: Some(self.instruments.host(ConnectionType::S2s, local)),
            data: Some(self.instruments.data(ConnectionType::S2s, false)),
        };
        let name = rustls::pki_types::ServerName::try_from(remote.to_owned())
            .map_err(|e| OutError::NotFound(format!("{remote}: {e}")))?;
        if direct_tls {
            return self.secure(Box::new(tcp), name, local, remote, meter).await;
        }
        let mut wire = Wire::new(Box::new(tcp), meter.clone());
        let (id, features) = tokio::time::timeout(timeout, wire.open(local, remote))
            .await
            .map_err(|_| OutError::Timeout(format!("opening a stream to {remote}")))??;
        if !features.has_child("starttls", ns::TLS) {
            if self.opts.outgoing.tls.mode == OutgoingTlsMode::StarttlsRequired {
                return Err(OutError::NotFound(format!("{remote} does not offer STARTTLS")));
            }
            return Ok(Dialed { wire, id, features, verified: false });
        }
        wire.send(&Element::new("starttls", ns::TLS).to_xml(ns::SERVER)).await.map_err(OutError::io)?;
        match tokio::time::timeout(timeout, wire.next_event()).await {
            Ok(Ok(StreamEvent::Stanza(el))) if el.is("proceed", ns::TLS) => {}
            _ => return Err(OutError::NotFound(format!("{remote} refused STARTTLS"))),
        }
        self.secure(wire.into_io(), name, local, remote, meter).await
    }

    /// TLS on `io` (after `<proceed/>`, or at once for direct TLS), then a stream on it.
    async fn secure(
        &self,
        io: Box<dyn Io>,
        name: rustls::pki_types::ServerName<'static>,
        local: &str,
        remote: &str,
        meter: Meter,
    ) -> Result<Dialed, OutError> {
        let timeout = Duration::from_millis(self.opts.outgoing.connection_timeout.max(1));
        let connector = tokio_rustls::TlsConnector::from(self.client.clone());
        let tls = tokio::time::timeout(timeout, connector.connect(name.clone(), io))
            .await
            .map_err(|_| OutError::Timeout(format!("TLS with {remote}")))?
            .map_err(|e| OutError::NotFound(format!("TLS with {remote}: {e}")))?;
        let verified = self.verifies(tls.get_ref().1, &name, remote);
        let meter = Meter { data: Some(self.instruments.data(ConnectionType::S2s, true)), ..meter };
        let mut wire = Wire::new(Box::new(tls), meter);
        let (id, features) = tokio::time::timeout(timeout, wire.open(local, remote))
            .await
            .map_err(|_| OutError::Timeout(format!("opening a stream to {remote}")))??;
        Ok(Dialed { wire, id, features, verified })
    }

    /// Whether the remote server's certificate chains to `[s2s.outgoing.tls]
    /// cacertfile` and names `remote` (a `dNSName`, or an `id-on-xmppAddr`).
    fn verifies(
        &self,
        conn: &rustls::ClientConnection,
        name: &rustls::pki_types::ServerName<'_>,
        remote: &str,
    ) -> bool {
        use rustls::client::danger::ServerCertVerifier as _;
        let Some(verifier) = &self.server_verifier else { return false };
        let Some((end, intermediates)) = conn.peer_certificates().and_then(|c| c.split_first()) else { return false };
        match verifier.verify_server_cert(end, intermediates, name, &[], rustls::pki_types::UnixTime::now()) {
            Ok(_) => true,
            // The chain is good; the name may be an xmppAddr, which webpki does not read.
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName | rustls::CertificateError::NotValidForNameContext { .. },
            )) => crate::client_cert::identity_of(end)
                .is_ok_and(|id| meerkat_xmpp::sasl::external::names_server(&id, remote)),
            Err(e) => {
                tracing::info!(%remote, error = %e, "the certificate of a remote server does not verify");
                false
            }
        }
    }

    /// Authenticates an opened stream: SASL EXTERNAL when the remote
    /// server's certificate verified and it offers the mechanism, else
    /// dialback.
    async fn authenticate(&self, dialed: Dialed, local: &str, remote: &str) -> Result<(Wire, Auth), OutError> {
        let Dialed { mut wire, id, features, verified } = dialed;
        let external = features
            .get_child("mechanisms", ns::SASL)
            .is_some_and(|m| m.elements().any(|e| e.name == "mechanism" && e.text().trim() == "EXTERNAL"));
        if verified && external {
            match self.external(&mut wire, local, remote).await? {
                true => return Ok((wire, Auth::External)),
                // RFC 6120 §6.4.5: the stream stays; dialback may still do.
                false => tracing::info!(%local, %remote, "SASL EXTERNAL refused; trying dialback"),
            }
        }
        self.dialback(wire, &id, local, remote).await.map(|w| (w, Auth::Dialback))
    }

    /// SASL EXTERNAL (XEP-0178 §3): `Ok(true)` once the stream restarted
    /// authenticated, `Ok(false)` when the remote server refused.
    async fn external(&self, wire: &mut Wire, local: &str, remote: &str) -> Result<bool, OutError> {
        use base64::Engine as _;
        let mut auth = Element::new("auth", ns::SASL);
        auth.set_attr("mechanism", "EXTERNAL");
        auth.push_text(base64::engine::general_purpose::STANDARD.encode(local));
        wire.send(&auth.to_xml(ns::SERVER)).await.map_err(OutError::io)?;
        let timeout = Duration::from_millis(self.opts.outgoing.connection_timeout.max(1));
        let answer = tokio::time::timeout(timeout, wire.next_event())
            .await
            .map_err(|_| OutError::Timeout(format!("{remote} did not answer SASL EXTERNAL")))??;
        match answer {
            StreamEvent::Stanza(el) if el.is("success", ns::SASL) => {
                tokio::time::timeout(timeout, wire.open(local, remote))
                    .await
                    .map_err(|_| OutError::Timeout(format!("reopening the stream to {remote}")))??;
                Ok(true)
            }
            StreamEvent::Stanza(el) if el.is("failure", ns::SASL) => {
                tracing::info!(%remote, answer = %el.to_xml(ns::SERVER), "SASL EXTERNAL failed");
                Ok(false)
            }
            StreamEvent::Stanza(el) if el.is("error", ns::STREAM) => {
                Err(OutError::NotAuthorized(format!("{remote} ended the stream: {}", el.to_xml(ns::SERVER))))
            }
            StreamEvent::Stanza(el) => {
                Err(OutError::NotAuthorized(format!("{remote} answered SASL EXTERNAL with {}", el.to_xml(ns::SERVER))))
            }
            StreamEvent::Header(_) | StreamEvent::End => {
                Err(OutError::NotAuthorized(format!("{remote} closed the stream on SASL EXTERNAL")))
            }
        }
    }

    /// Dialback on an opened stream (XEP-0220 §2.1): our key, and the
    /// remote server's verdict after it asked our authoritative server.
    async fn dialback(&self, mut wire: Wire, id: &str, local: &str, remote: &str) -> Result<Wire, OutError> {
        let key = proto::dialback_key(&self.secret, remote, local, id);
        let result = proto::db_result(local, remote, Some(&key), None);
        wire.send(&proto::dialback_xml(&result)).await.map_err(OutError::io)?;
        let timeout = Duration::from_millis(self.opts.outgoing.connection_timeout.max(1)) * 3;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let ev = tokio::time::timeout_at(deadline, wire.next_event())
                .await
                .map_err(|_| OutError::Timeout(format!("{remote} did not answer our dialback")))??;
            match ev {
                StreamEvent::Stanza(el) if el.is("result", DIALBACK) => {
                    return match el.attr("type") {
                        Some("valid") => Ok(wire),
                        other => Err(OutError::NotAuthorized(format!("{remote} answered dialback with {other:?}"))),
                    };
                }
                // The peer may check another server's key with us on this stream.
                StreamEvent::Stanza(el) if el.is("verify", DIALBACK) => {
                    let answer = self.answer_verify(&el);
                    wire.send(&proto::dialback_xml(&answer)).await.map_err(OutError::io)?;
                }
                StreamEvent::Stanza(el) if el.is("error", ns::STREAM) => {
                    return Err(OutError::NotAuthorized(format!(
                        "{remote} ended the stream: {}",
                        el.to_xml(ns::SERVER)
                    )));
                }
                StreamEvent::Stanza(_) | StreamEvent::Header(_) => {}
                StreamEvent::End => return Err(OutError::NotAuthorized(format!("{remote} closed the stream"))),
            }
        }
    }

    /// As the authoritative server: whether a key the receiving server got
    /// from "us" is one we made (XEP-0220 §2.1.2).
    fn answer_verify(&self, el: &Element) -> Element {
        let receiving = el.attr("from").unwrap_or_default();
        let originating = el.attr("to").unwrap_or_default();
        let id = el.attr("id").unwrap_or_default();
        let valid = self.router.is_local_host(originating)
            && proto::dialback_key_matches(&self.secret, receiving, originating, id, &el.text());
        proto::db_verify(originating, receiving, id, None, Some(valid))
    }

    /// As the receiving server: asks `originating`'s authoritative server
    /// whether `key` is its key for our stream `id` (XEP-0220 §2.1.2).
    async fn verify(&self, local: &str, originating: &str, id: &str, key: &str) -> bool {
        let asked = async {
            let Dialed { mut wire, .. } = self.dial(local, originating).await?;
            let verify = proto::db_verify(local, originating, id, Some(key), None);
            wire.send(&proto::dialback_xml(&verify)).await.map_err(OutError::io)?;
            loop {
                match wire.next_event().await? {
                    StreamEvent::Stanza(el) if el.is("verify", DIALBACK) && el.attr("id") == Some(id) => {
                        let _ = wire.send("</stream:stream>").await;
                        return Ok::<bool, OutError>(el.attr("type") == Some("valid"));
                    }
                    StreamEvent::End => return Err(OutError::NotAuthorized("closed".into())),
                    _ => {}
                }
            }
        };
        let timeout = Duration::from_millis(self.opts.outgoing.connection_timeout.max(1)) * 3;
        match tokio::time::timeout(timeout, asked).await {
            Ok(Ok(valid)) => valid,
            Ok(Err(e)) => {
                tracing::info!(%originating, error = %e, "dialback verification failed");
                false
            }
            Err(_) => {
                tracing::info!(%originating, "dialback verification timed out");
                false
            }
        }
    }
}

enum Pumped {
    Idle,
    Stopped,
    Broken,
}

/// Why an outgoing stream could not be used.
#[derive(Debug, thiserror::Error)]
enum OutError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    NotAuthorized(String),
}

impl OutError {
    fn io(e: std::io::Error) -> OutError {
        OutError::NotFound(e.to_string())
    }

    /// The stanza error the senders of what waited get.
    fn condition(&self) -> StanzaErrorCondition {
        match self {
            OutError::Timeout(_) => StanzaErrorCondition::RemoteServerTimeout,
            OutError::NotFound(_) | OutError::NotAuthorized(_) => StanzaErrorCondition::RemoteServerNotFound,
        }
    }
}

/// An address to try for a remote server.
struct Target {
    addr: SocketAddr,
    /// TLS from the first byte (`_xmpps-server._tcp`), not STARTTLS.
    direct_tls: bool,
}

/// A stream opened to a remote server, before authentication.
struct Dialed {
    wire: Wire,
    id: String,
    /// The features of the stream (after TLS when there is TLS).
    features: Element,
    /// Whether the server's certificate verified for its domain.
    verified: bool,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Our side of an outgoing stream: the connection and its parser.
struct Wire {
    io: Box<dyn Io>,
    parser: StreamParser,
    meter: Meter,
}

impl Wire {
    fn new(io: Box<dyn Io>, meter: Meter) -> Wire {
        Wire { io, parser: StreamParser::new(Limits::default()), meter }
    }

    fn into_io(self) -> Box<dyn Io> {
        self.io
    }

    async fn send(&mut self, xml: &str) -> std::io::Result<()> {
        self.meter.serialized(xml.as_bytes());
        self.io.write_all(xml.as_bytes()).await?;
        self.meter.wrote(xml.len());
        self.io.flush().await
    }

    /// The next event from the remote server.
    async fn next_event(&mut self) -> Result<StreamEvent, OutError> {
        loop {
            match self.parser.next_event() {
                Ok(Some(ev)) => {
                    if let StreamEvent::Stanza(el) = &ev {
                        self.meter.parsed(el, self.parser.last_stanza_len());
                    }
                    return Ok(ev);
                }
                Ok(None) => {}
                Err(e) => return Err(OutError::NotFound(format!("bad stream: {e}"))),
            }
            let mut buf = [0u8; 4096];
            let n = self.io.read(&mut buf).await.map_err(OutError::io)?;
            if n == 0 {
                return Ok(StreamEvent::End);
            }
            self.meter.read(n);
            self.parser.feed(&buf[..n]);
        }
    }

    /// Sends our header and reads the peer's header (its stream id) and features.
    async fn open(&mut self, local: &str, remote: &str) -> Result<(String, Element), OutError> {
        self.parser.reset();
        self.send(&proto::stream_header_xml(local, remote, None)).await.map_err(OutError::io)?;
        let id = match self.next_event().await? {
            StreamEvent::Header(h) => h.id.unwrap_or_default(),
            _ => return Err(OutError::NotFound(format!("{remote} sent no stream header"))),
        };
        match self.next_event().await? {
            StreamEvent::Stanza(el) if el.is("features", ns::STREAM) => Ok((id, el)),
            StreamEvent::Stanza(el) if el.is("error", ns::STREAM) => {
                Err(OutError::NotFound(format!("{remote}: {}", el.to_xml(ns::SERVER))))
            }
            _ => Err(OutError::NotFound(format!("{remote} sent no stream features"))),
        }
    }
}

/// The TLS client configuration of outgoing streams: it presents our
/// certificate (for the remote server's SASL EXTERNAL) and takes any server
/// certificate, which [`Core::verifies`] judges after the handshake.
fn client_config(ours: Arc<rustls::sign::CertifiedKey>) -> Arc<rustls::ClientConfig> {
    let verifier = Arc::new(AnyCertificate);
    let mut cfg = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(Ours(ours)));
    cfg.alpn_protocols = vec![b"xmpp-server".to_vec()];
    Arc::new(cfg)
}

/// The DNS resolver of `/etc/resolv.conf` (and `/etc/hosts`), each query
/// bounded by the connection timeout; `None` (no SRV lookups, A/AAAA
/// through the system) when the configuration cannot be read.
fn resolver(out: &OutgoingOptions) -> Option<hickory_resolver::TokioResolver> {
    let mut builder = match hickory_resolver::TokioResolver::builder_tokio() {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, "no DNS resolver configuration: SRV records will not be looked up");
            return None;
        }
    };
    let opts = builder.options_mut();
    opts.timeout = Duration::from_millis(out.connection_timeout.clamp(1, 5_000));
    opts.attempts = 2;
    match builder.build() {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(error = %e, "no DNS resolver: SRV records will not be looked up");
            None
        }
    }
}

/// Checks remote servers' certificates against `path`'s CA certificates.
fn server_verifier(path: &std::path::Path) -> Result<Arc<rustls::client::WebPkiServerVerifier>, String> {
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for cert in
        rustls::pki_types::CertificateDer::pem_file_iter(path).map_err(|e| format!("{}: {e}", path.display()))?
    {
        let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
        roots.add(cert).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("{} holds no certificate", path.display()));
    }
    rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .map_err(|e| e.to_string())
}

/// Our certificate, whatever the server asks for.
#[derive(Debug)]
struct Ours(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for Ours {
    fn resolve(
        &self,
        _hints: &[&[u8]],
        _schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Accepts every server certificate during the handshake (its signature
/// is still checked): whether it verifies decides only how the stream
/// authenticates, SASL EXTERNAL or dialback, and is judged afterwards.
#[derive(Debug)]
struct AnyCertificate;

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider().signature_verification_algorithms.supported_schemes()
    }
}

/// The router's last link: stanzas for domains nobody here serves.
struct S2sLink(Arc<Core>);

impl Link for S2sLink {
    fn name(&self) -> &'static str {
        "s2s"
    }

    fn route(&self, router: &Router, routed: Routed) -> Step {
        let remote = routed.to.domain().as_str().to_owned();
        if router.is_local_host(&remote) {
            return Step::Next(routed);
        }
        if !self.0.allowed(&remote) {
            router.bounce(routed, StanzaErrorCondition::RemoteServerNotFound);
            return Step::Done;
        }
        let local = routed.from.domain().as_str().to_owned();
        if let Err(routed) = self.0.enqueue(local, remote, routed) {
            router.bounce(routed, StanzaErrorCondition::ResourceConstraint);
        }
        Step::Done
    }
}

/// What each connection of one listener needs.
struct Listener {
    core: Arc<Core>,
    tls: tokio_rustls::TlsAcceptor,
    /// How peers' certificates are judged (`tls.cacertfile`, `tls.verify_mode`).
    client_certs: Option<Arc<ClientCerts>>,
    rate: Option<u64>,
    limits: Limits,
}

async fn accept_loop(tcp: tokio::net::TcpListener, listener: Arc<Listener>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            accepted = tcp.accept() => match accepted {
                Ok((sock, peer)) => {
                    let listener = listener.clone();
                    tokio::spawn(async move { incoming(&listener, sock, peer).await });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "s2s accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = stopping(&mut stop) => return,
        }
    }
}

/// Returns once the node stops.
async fn stopping(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn stream_error(cond: StreamErrorCondition, text: impl Into<String>) -> StreamError {
    StreamError::with_text(cond, text)
}

/// The next event of an incoming stream; `None` once the peer closed the connection.
async fn next_in(conn: &mut Conn, until: tokio::time::Instant) -> Result<Option<StreamEvent>, StreamError> {
    loop {
        if let Some(ev) = conn.next_event()? {
            return Ok(Some(ev));
        }
        match tokio::time::timeout_at(until, conn.fill()).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) | Ok(Err(_)) => return Ok(None),
            Err(_) => return Err(stream_error(StreamErrorCondition::ConnectionTimeout, "idle")),
        }
    }
}

/// One incoming stream, from accept to close.
async fn incoming(listener: &Listener, sock: TcpStream, peer: SocketAddr) {
    let core = &listener.core;
    // A TLS handshake record first: direct TLS (XEP-0368), else a stream to STARTTLS on.
    let mut first = [0u8; 1];
    let direct =
        matches!(tokio::time::timeout(IN_NEGOTIATION, sock.peek(&mut first)).await, Ok(Ok(1)) if first[0] == 0x16);
    let mut cert = None;
    let transport = if direct {
        match tokio::time::timeout(Duration::from_secs(10), listener.tls.accept(sock)).await {
            Ok(Ok(tls)) => {
                tracing::info!(%peer, "s2s direct TLS in");
                cert = listener.client_certs.as_ref().and_then(|c| c.identity(tls.get_ref().1));
                Transport::Tls(Box::new(tls))
            }
            _ => {
                tracing::info!(%peer, "s2s direct TLS handshake in failed");
                return;
            }
        }
    } else {
        Transport::Plain(sock)
    };
    let data = core.instruments.data(ConnectionType::S2s, direct);
    let mut conn =
        Conn::stream(transport, listener.limits, Shaper::new(listener.rate), Meter { host: None, data: Some(data) });
    let mut id = format!("{:016x}", rand::random::<u64>());
    let mut state = InState {
        local: None,
        from: None,
        tls: direct,
        cert,
        sasl: None,
        authenticated: HashMap::new(),
        header_sent: false,
    };
    let number = core.next_in.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let _listed = Listed::new(core, number, peer);
    loop {
        let end = serve_in(listener, &mut conn, &id, &mut state, peer, number).await;
        match end {
            Ok(In::StartTls) => {
                // RFC 6120 §5.4.3.3: TLS, then a new stream on it.
                let Conn::Stream { transport: Transport::Plain(tcp), input, shaper } = conn else { return };
                let tls = match tokio::time::timeout(Duration::from_secs(10), listener.tls.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    _ => {
                        tracing::info!(%peer, "s2s TLS handshake in failed");
                        return;
                    }
                };
                state.cert = listener.client_certs.as_ref().and_then(|c| c.identity(tls.get_ref().1));
                conn = Conn::Stream { transport: Transport::Tls(Box::new(tls)), input, shaper };
                conn.restart();
                conn.meter_data(core.instruments.data(ConnectionType::S2s, true));
                state.tls = true;
                state.header_sent = false;
                id = format!("{:016x}", rand::random::<u64>());
            }
            Ok(In::Restart) => {
                // RFC 6120 §6.4.6: after SASL, a new stream on the same connection.
                conn.restart();
                state.header_sent = false;
                id = format!("{:016x}", rand::random::<u64>());
            }
            Ok(In::Closed) => {
                conn.close(None).await;
                return;
            }
            Err(e) => {
                if !state.header_sent {
                    let local = state.local.clone().unwrap_or_default();
                    let _ = conn.send(&proto::stream_header_xml(&local, "", Some(&id))).await;
                }
                tracing::info!(%peer, error = %e.condition, text = ?e.text, "s2s stream in ended with an error");
                conn.close(Some(&e)).await;
                return;
            }
        }
    }
}

/// An incoming stream's entry in [`Core::inbound`], removed when dropped.
struct Listed<'a> {
    core: &'a Core,
    number: u64,
}

impl<'a> Listed<'a> {
    fn new(core: &'a Core, number: u64, peer: SocketAddr) -> Listed<'a> {
        let entry = Inbound { peer: peer.to_string(), local: None, tls: false, domains: Vec::new() };
        core.inbound.lock().unwrap_or_else(|e| e.into_inner()).insert(number, entry);
        Listed { core, number }
    }
}

impl Drop for Listed<'_> {
    fn drop(&mut self) {
        self.core.inbound.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.number);
    }
}

/// Updates what the admin API shows of incoming stream `number`.
fn show_inbound(core: &Core, number: u64, st: &InState) {
    if let Some(e) = core.inbound.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&number) {
        e.local = st.local.clone();
        e.tls = st.tls;
        let mut domains: Vec<(String, Auth)> = st.authenticated.iter().map(|(d, a)| (d.clone(), *a)).collect();
        domains.sort_by(|a, b| a.0.cmp(&b.0));
        e.domains = domains;
    }
}

/// How a stream in ended, or that it restarts (on TLS, or after SASL).
enum In {
    StartTls,
    Restart,
    Closed,
}

struct InState {
    /// Our host the stream is for.
    local: Option<String>,
    /// The domain the stream header said it is from.
    from: Option<String>,
    tls: bool,
    /// What the peer's certificate names, when it verified.
    cert: Option<CertIdentity>,
    /// The domain SASL EXTERNAL authenticated, once it did.
    sasl: Option<String>,
    /// Remote domains authenticated on this stream (dialback may add several).
    authenticated: HashMap<String, Auth>,
    header_sent: bool,
}

async fn serve_in(
    listener: &Listener,
    conn: &mut Conn,
    id: &str,
    st: &mut InState,
    peer: SocketAddr,
    number: u64,
) -> Result<In, StreamError> {
    let core = &listener.core;
    let mut stop = core.stop.clone();
    let negotiated_by = tokio::time::Instant::now() + IN_NEGOTIATION;
    loop {
        let until = if st.authenticated.is_empty() { negotiated_by } else { tokio::time::Instant::now() + IN_IDLE };
        let ev = tokio::select! {
            ev = next_in(conn, until) => ev?,
            _ = stopping(&mut stop) => return Err(stream_error(StreamErrorCondition::SystemShutdown, "shutting down")),
        };
        show_inbound(core, number, st);
        let Some(ev) = ev else { return Ok(In::Closed) };
        match ev {
            StreamEvent::Header(h) => {
                let to = h.to.as_deref().unwrap_or_default();
                let Ok(to) = canonical_domain(to) else {
                    return Err(stream_error(StreamErrorCondition::HostUnknown, "the stream names no host"));
                };
                if !core.router.is_local_host(&to) {
                    return Err(stream_error(StreamErrorCondition::HostUnknown, format!("{to} is not served here")));
                }
                if h.default_ns.as_deref() != Some(ns::SERVER) {
                    return Err(stream_error(
                        StreamErrorCondition::InvalidNamespace,
                        "a server stream is in jabber:server",
                    ));
                }
                if st.local.as_deref().is_some_and(|l| l != to) {
                    return Err(stream_error(StreamErrorCondition::HostUnknown, "the host changed on restart"));
                }
                conn.meter_host(core.instruments.host(ConnectionType::S2s, &to));
                let from = h.from.as_deref().unwrap_or_default();
                conn.send(&proto::stream_header_xml(&to, from, Some(id))).await.map_err(gone)?;
                st.header_sent = true;
                st.local = Some(to);
                st.from = canonical_domain(from).ok();
                let mut features = Element::new("features", ns::STREAM);
                if !st.tls {
                    let mut starttls = Element::new("starttls", ns::TLS);
                    starttls.push_child(Element::new("required", ns::TLS));
                    features.push_child(starttls);
                }
                // XEP-0178 §3: EXTERNAL when the certificate verified and names the stream's domain.
                let named = match (&st.cert, &st.from) {
                    (Some(cert), Some(from)) => meerkat_xmpp::sasl::external::names_server(cert, from),
                    _ => false,
                };
                if st.tls && st.sasl.is_none() && named {
                    let mut mechanisms = Element::new("mechanisms", ns::SASL);
                    let mut external = Element::new("mechanism", ns::SASL);
                    external.push_text("EXTERNAL");
                    mechanisms.push_child(external);
                    features.push_child(mechanisms);
                }
                let mut dialback = Element::new("dialback", DIALBACK_FEATURE);
                dialback.push_child(Element::new("errors", DIALBACK_FEATURE));
                features.push_child(dialback);
                // `stream:` as declared on the header: some servers (ejabberd)
                // recognise stream elements only under that literal prefix.
                let mut xml = String::from("<stream:features>");
                for f in features.elements() {
                    xml.push_str(&f.to_xml(ns::SERVER));
                }
                xml.push_str("</stream:features>");
                conn.send(&xml).await.map_err(gone)?;
            }
            StreamEvent::Stanza(el) if el.is("starttls", ns::TLS) && !st.tls => {
                if conn.buffered_len() > 0 {
                    return Err(stream_error(StreamErrorCondition::PolicyViolation, "data after <starttls/>"));
                }
                conn.send(&Element::new("proceed", ns::TLS).to_xml(ns::SERVER)).await.map_err(gone)?;
                return Ok(In::StartTls);
            }
            StreamEvent::Stanza(el) if el.is("result", DIALBACK) && el.attr("type").is_none() => {
                if !st.tls {
                    // The features said STARTTLS is required.
                    return Err(stream_error(StreamErrorCondition::PolicyViolation, "STARTTLS first"));
                }
                let local = st.local.clone().unwrap_or_default();
                let from = el.attr("from").and_then(|f| canonical_domain(f).ok()).unwrap_or_default();
                if el.attr("to").and_then(|t| canonical_domain(t).ok()).as_deref() != Some(local.as_str()) {
                    return Err(stream_error(StreamErrorCondition::HostUnknown, "db:result to another host"));
                }
                let valid = !from.is_empty() && core.allowed(&from) && core.verify(&local, &from, id, &el.text()).await;
                tracing::info!(%peer, remote = %from, valid, "s2s dialback in");
                if !valid {
                    core.instruments.host(ConnectionType::S2s, &local).auth_failed.increment(1);
                }
                conn.send(&proto::dialback_xml(&proto::db_result(&local, &from, None, Some(valid))))
                    .await
                    .map_err(gone)?;
                if valid {
                    st.authenticated.entry(from).or_insert(Auth::Dialback);
                    show_inbound(core, number, st);
                }
            }
            StreamEvent::Stanza(el) if el.is("auth", ns::SASL) => {
                if !st.tls || st.sasl.is_some() {
                    return Err(stream_error(StreamErrorCondition::PolicyViolation, "SASL is not offered now"));
                }
                let local = st.local.clone().unwrap_or_default();
                match external_auth(core, st, &el) {
                    Ok(domain) => {
                        tracing::info!(%peer, remote = %domain, "s2s SASL EXTERNAL in");
                        conn.send(&Element::new("success", ns::SASL).to_xml(ns::SERVER)).await.map_err(gone)?;
                        st.authenticated.insert(domain.clone(), Auth::External);
                        st.sasl = Some(domain);
                        show_inbound(core, number, st);
                        return Ok(In::Restart);
                    }
                    Err(failure) => {
                        tracing::info!(%peer, from = ?st.from, %failure, "s2s SASL EXTERNAL in refused");
                        core.instruments.host(ConnectionType::S2s, &local).auth_failed.increment(1);
                        let mut f = Element::new("failure", ns::SASL);
                        f.push_child(Element::new(failure.as_str(), ns::SASL));
                        conn.send(&f.to_xml(ns::SERVER)).await.map_err(gone)?;
                    }
                }
            }
            StreamEvent::Stanza(el) if el.is("verify", DIALBACK) && el.attr("type").is_none() => {
                conn.send(&proto::dialback_xml(&core.answer_verify(&el))).await.map_err(gone)?;
            }
            StreamEvent::Stanza(mut el)
                if matches!(el.name.as_str(), "message" | "presence" | "iq") && el.ns == ns::SERVER =>
            {
                let from = el.attr("from").and_then(|f| parse_jid(f).ok());
                let to = el.attr("to").and_then(|t| parse_jid(t).ok());
                let (Some(from), Some(to)) = (from, to) else {
                    return Err(stream_error(StreamErrorCondition::ImproperAddressing, "a stanza needs from and to"));
                };
                if !st.authenticated.contains_key(from.domain().as_str()) {
                    return Err(stream_error(
                        StreamErrorCondition::InvalidFrom,
                        format!("{} is not authenticated here", from.domain()),
                    ));
                }
                if !core.router.is_local_host(to.domain().as_str()) {
                    return Err(stream_error(
                        StreamErrorCondition::HostUnknown,
                        format!("{} is not served here", to.domain()),
                    ));
                }
                proto::to_client_ns(&mut el);
                core.router.route(Routed { from, to, stanza: el });
            }
            StreamEvent::Stanza(el) if el.is("error", ns::STREAM) => {
                tracing::info!(%peer, error = %el.to_xml(ns::SERVER), "s2s peer ended its stream");
                return Ok(In::Closed);
            }
            StreamEvent::Stanza(el) => {
                return Err(stream_error(
                    StreamErrorCondition::UnsupportedStanzaType,
                    format!("unexpected <{}/> in {}", el.name, el.ns),
                ));
            }
            StreamEvent::End => return Ok(In::Closed),
        }
    }
}

/// The domain a peer's `<auth mechanism='EXTERNAL'>` authenticates, or why not.
fn external_auth(core: &Core, st: &InState, auth: &Element) -> Result<String, SaslFailure> {
    use base64::Engine as _;
    if auth.attr("mechanism") != Some("EXTERNAL") {
        return Err(SaslFailure::InvalidMechanism);
    }
    let Some(cert) = &st.cert else { return Err(SaslFailure::NotAuthorized) };
    let text = auth.text();
    let authzid = match text.trim() {
        "" | "=" => None,
        b64 => {
            let raw =
                base64::engine::general_purpose::STANDARD.decode(b64).map_err(|_| SaslFailure::IncorrectEncoding)?;
            Some(String::from_utf8(raw).map_err(|_| SaslFailure::IncorrectEncoding)?)
        }
    };
    let domain = external_server(cert, authzid.as_deref(), st.from.as_deref())?;
    if !core.allowed(&domain) {
        return Err(SaslFailure::NotAuthorized);
    }
    Ok(domain)
}

fn gone<E>(_: E) -> StreamError {
    stream_error(StreamErrorCondition::Reset, "connection lost")
}
