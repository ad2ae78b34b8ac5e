//! Global distribution under test: two data centers of two real nodes each,
//! serving one XMPP domain.
//!
//! [`TestGlobal::start`] (or [`TestGlobal::start_with`], for links over
//! mutual TLS) starts, in order:
//! - a private `redis-server` ([`RedisServer`]) on a free port, without
//!   persistence, so a test can kill and restart it without touching a
//!   system Redis;
//! - one [`LinkProxy`] per node, in front of the node's global endpoint: the
//!   node listens on its `endpoints` port and advertises the proxy, so every
//!   inter-DC connection passes through a proxy that a test can
//!   [`cut`](LinkProxy::cut) and [`heal`](LinkProxy::heal), and that keeps
//!   the first bytes of each connection ([`LinkProxy::captured`]);
//! - per data center, one cluster (its own `[cluster] name`, node 1
//!   bootstrapping, node 2 joining through `meerkat cluster join`), all four
//!   nodes on ONE fresh PostgreSQL database, so accounts and rosters are the
//!   same everywhere.
//!
//! Every node serves `general.hosts = ["example.com"]` with `global_host =
//! "example.com"` and `local_host = "dcN.example.com"`, with short timings
//! (endpoint discovery every 300 ms, a full refresh every 2 s) so tests run
//! in seconds.
//!
//! [`converse`] drives one raw client through numbered message streams at a
//! steady pace while it records what arrives, and [`check_sequence`] says
//! precisely what is missing, duplicated or out of order.

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::client::{body, Client};
use crate::cluster::{cluster_toml, Placement, SharedDb};
use crate::node::{NodeOptions, TestNode};
use crate::wait_until;

/// The domain every data center serves.
pub const GLOBAL_HOST: &str = "example.com";

/// Data centers and nodes per data center.
pub const DCS: usize = 2;
pub const NODES_PER_DC: usize = 2;

use crate::node::free_port;

// ------------------------------------------------------------------ Redis

/// A private `redis-server` on loopback, without persistence. Killed on drop.
pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts one on a free port and waits until it answers `PING`.
    pub fn start() -> RedisServer {
        let dir = tempfile::Builder::new().prefix("meerkat-redis-").tempdir().expect("tempdir");
        let mut r = RedisServer { port: free_port(), dir, child: None };
        r.spawn();
        r
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn spawn(&mut self) {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join("redis.log"))
            .expect("open redis.log");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn redis-server (is it installed?)");
        self.child = Some(child);
        let port = self.port;
        wait_until(&format!("redis-server on port {port} to answer PING"), Duration::from_secs(10), || {
            self.command(&["PING"]).is_some_and(|r| r == "+PONG")
        });
    }

    /// Sends one command in RESP and returns the first line of the reply
    /// (`None` when Redis is not reachable). Enough for `PING`, `EXISTS`, `HLEN`, `DBSIZE`.
    pub fn command(&self, args: &[&str]) -> Option<String> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes()).ok()?;
        let mut buf = [0u8; 512];
        let mut got = Vec::new();
        while !got.windows(2).any(|w| w == b"\r\n") {
            let n = s.read(&mut buf).ok()?;
            if n == 0 {
                return None;
            }
            got.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&got);
        text.split("\r\n").next().map(str::to_owned)
    }

    /// Kills the server at once (SIGKILL), as a crash would; its data is gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart() while redis-server is running");
        self.spawn();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

// ------------------------------------------------------------------ proxy

/// How a [`LinkProxy`] cuts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// Current connections are closed at once: both ends see the close.
    Close,
    /// Current connections stay open but carry nothing more, as in a network
    /// partition: what is in flight is lost, and only silence tells.
    Freeze,
}

/// `(cut, epoch)`: every cut starts a new epoch, and connections of an
/// older epoch stop.
type CutState = (Option<Cut>, u64);

/// Bytes a [`LinkProxy`] keeps of each direction of each connection.
pub const CAPTURE_LIMIT: usize = 128 * 1024;

/// The first bytes (up to [`CAPTURE_LIMIT`]) one proxied connection carried each way.
#[derive(Clone, Debug, Default)]
pub struct Captured {
    /// What the dialling node sent: a link's first frame, or a TLS ClientHello.
    pub from_dialler: Vec<u8>,
    /// What the node behind the proxy answered.
    pub from_node: Vec<u8>,
}

/// Captures of every connection a proxy forwarded, in the order they began.
type CaptureLog = Arc<Mutex<Vec<Captured>>>;

/// A TCP proxy in front of one node's global endpoint, on its own thread
/// and runtime so that blocking test code never stalls it.
///
/// [`LinkProxy::cut`] stops every connection through it (closed or frozen)
/// and holds new ones open without forwarding a byte (a black hole: the
/// dialler's handshake times out); [`LinkProxy::heal`] closes the held and
/// frozen ones and forwards again.
pub struct LinkProxy {
    /// What other data centers dial (the advertised endpoint).
    pub addr: SocketAddr,
    /// The node's real endpoint.
    pub target: SocketAddr,
    state: watch::Sender<CutState>,
    /// Connections accepted, forwarded or not.
    pub accepted: Arc<AtomicU64>,
    /// Connections stopped by a cut.
    pub cut_stopped: Arc<AtomicU64>,
    captured: CaptureLog,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LinkProxy {
    /// Listens on a free loopback port and forwards to `target`.
    pub fn start(target: SocketAddr) -> LinkProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("proxy address");
        let (state, _) = watch::channel((None, 0));
        let accepted = Arc::new(AtomicU64::new(0));
        let cut_stopped = Arc::new(AtomicU64::new(0));
        let captured = CaptureLog::default();
        let (stop, stop_rx) = tokio::sync::oneshot::channel();
        let (st, acc, stopped, log) = (state.clone(), accepted.clone(), cut_stopped.clone(), captured.clone());
        let thread = std::thread::Builder::new()
            .name(format!("link-proxy-{}", addr.port()))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("proxy runtime");
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                    tokio::select! {
                        _ = stop_rx => {}
                        _ = proxy_accept(listener, target, st, acc, stopped, log) => {}
                    }
                });
                // Dropping the runtime drops every connection task, closing their sockets.
            })
            .expect("spawn the proxy thread");
        LinkProxy { addr, target, state, accepted, cut_stopped, captured, stop: Some(stop), thread: Some(thread) }
    }

    /// What every connection forwarded so far carried first, oldest first
    /// (connections held during a cut forward nothing and are not listed).
    pub fn captured(&self) -> Vec<Captured> {
        self.captured.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Stops every connection as `how` says and black-holes new ones until [`LinkProxy::heal`].
    pub fn cut(&self, how: Cut) {
        self.state.send_modify(|s| *s = (Some(how), s.1 + 1));
    }

    /// Forwards again; connections held or frozen during the cut are closed.
    pub fn heal(&self) {
        self.state.send_modify(|s| s.0 = None);
    }

    pub fn is_cut(&self) -> bool {
        self.state.borrow().0.is_some()
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn proxy_accept(
    listener: tokio::net::TcpListener,
    target: SocketAddr,
    state: watch::Sender<CutState>,
    accepted: Arc<AtomicU64>,
    cut_stopped: Arc<AtomicU64>,
    captured: CaptureLog,
) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else { continue };
        accepted.fetch_add(1, Ordering::Relaxed);
        let mut rx = state.subscribe();
        let cut_stopped = cut_stopped.clone();
        let captured = captured.clone();
        tokio::spawn(async move {
            let (cut, epoch) = *rx.borrow_and_update();
            if cut.is_some() {
                // A black hole: the peer's bytes go nowhere until the heal closes the connection.
                let _ = rx.wait_for(|s| s.0.is_none()).await;
                return;
            }
            let Ok(outbound) = TcpStream::connect(target).await else { return };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let conn = {
                let mut log = captured.lock().unwrap_or_else(|e| e.into_inner());
                log.push(Captured::default());
                log.len() - 1
            };
            let mut inbound = Recorder::new(inbound, captured.clone(), conn, Side::Dialler);
            let mut outbound = Recorder::new(outbound, captured, conn, Side::Node);
            let how = tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => return,
                s = rx.wait_for(|s| s.1 != epoch) => s.map(|s| s.0).unwrap_or(None),
            };
            cut_stopped.fetch_add(1, Ordering::Relaxed);
            if how == Some(Cut::Freeze) {
                // Nobody reads or writes any more; both sockets stay open until the heal.
                let _ = rx.wait_for(|s| s.0.is_none()).await;
            }
        });
    }
}

#[derive(Clone, Copy)]
enum Side {
    Dialler,
    Node,
}

/// A socket of a proxied connection that copies the first
/// [`CAPTURE_LIMIT`] bytes read from it into the proxy's capture log.
struct Recorder {
    inner: TcpStream,
    log: CaptureLog,
    conn: usize,
    side: Side,
    kept: usize,
}

impl Recorder {
    fn new(inner: TcpStream, log: CaptureLog, conn: usize, side: Side) -> Recorder {
        Recorder { inner, log, conn, side, kept: 0 }
    }
}

impl AsyncRead for Recorder {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        let new = &buf.filled()[before..];
        let take = new.len().min(CAPTURE_LIMIT - this.kept);
        if take > 0 {
            let mut log = this.log.lock().unwrap_or_else(|e| e.into_inner());
            let c = &mut log[this.conn];
            match this.side {
                Side::Dialler => c.from_dialler.extend_from_slice(&new[..take]),
                Side::Node => c.from_node.extend_from_slice(&new[..take]),
            }
            this.kept += take;
        }
        polled
    }
}

impl AsyncWrite for Recorder {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

// ------------------------------------------------------------------ nodes

/// `sh -c` script run in front of the binary: `TestNode` writes `hosts =
/// ["localhost"]`, which a test cannot override from the extra TOML (the
/// `[general]` table is already defined), so the config is rewritten to
/// serve the global host just before `exec`. Arguments: `$1` is the binary,
/// then `start --config <file>`.
pub const SERVE_GLOBAL_HOST: &str =
    r#"sed -i 's/^hosts = \["localhost"\]$/hosts = ["example.com"]/' "$4" && exec "$@""#;

/// One data center: one cluster.
pub struct Dc {
    /// `[cluster] name`.
    pub cluster: String,
    /// `dcN.example.com`.
    pub local_host: String,
    pub nodes: Vec<TestNode>,
    pub placements: Vec<Placement>,
    /// The real global endpoint of each node.
    pub endpoints: Vec<SocketAddr>,
    /// The proxy in front of each node's endpoint.
    pub proxies: Vec<LinkProxy>,
}

/// The PEM files of `[global_distribution.connections.tls]`.
#[derive(Clone, Debug)]
pub struct LinkTls {
    /// The CA a peer's certificate must be signed by.
    pub cacertfile: PathBuf,
    /// This node's certificate (for `meerkat-global`, the default server
    /// name) and key, presented as server and as client.
    pub certfile: PathBuf,
    pub keyfile: PathBuf,
}

/// How [`TestGlobal::start_with`] sets the data centers up.
#[derive(Clone, Debug, Default)]
pub struct GlobalOptions {
    /// Per data center (by index), the TLS files of its nodes' links; plain
    /// TCP for `None` and for data centers beyond the list.
    pub tls: Vec<Option<LinkTls>>,
    /// The links are not expected to connect (a certificate the other side
    /// refuses): return once every node is ready, without waiting for them.
    pub links_may_fail: bool,
    /// Extra TOML (whole tables) for node `(dc, i)`, both from 0.
    pub node_toml: Vec<((usize, usize), String)>,
}

/// Two data centers of two nodes each, one Redis, one database.
pub struct TestGlobal {
    pub dcs: Vec<Dc>,
    pub redis: RedisServer,
    pub db: SharedDb,
    /// One setup at a time per test process (declared last: released after
    /// the processes above are stopped). Four nodes, a Redis and the proxies
    /// per setup already fill this machine's two cores; several at once made
    /// the timing of the fault tests depend on which others ran beside them.
    _one_at_a_time: OneAtATime,
}

/// The turn of one [`TestGlobal`]; the next one starts when it is dropped.
struct OneAtATime;

static BUSY: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
static FREED: std::sync::Condvar = std::sync::Condvar::new();

impl OneAtATime {
    fn take() -> OneAtATime {
        // A test that failed poisons nothing that matters here: the flag is plain.
        let mut busy = BUSY.lock().unwrap_or_else(|e| e.into_inner());
        while *busy {
            busy = FREED.wait(busy).unwrap_or_else(|e| e.into_inner());
        }
        *busy = true;
        OneAtATime
    }
}

impl Drop for OneAtATime {
    fn drop(&mut self) {
        *BUSY.lock().unwrap_or_else(|e| e.into_inner()) = false;
        FREED.notify_one();
    }
}

/// The `connections.shared_secret` of every test data center.
pub const GLOBAL_SECRET: &str = "test-data-centers-shared-secret";

/// The `[global_distribution]` and Redis pool TOML of one node.
pub fn global_toml(local_host: &str, endpoint: SocketAddr, advertised: SocketAddr, redis_port: u16) -> String {
    format!(
        r#"
[global_distribution]
global_host = "{GLOBAL_HOST}"
local_host = "{local_host}"
message_ttl = 4

[global_distribution.redis]
pool = "global_distrib"
expire_after = 10
refresh_after = 2

[global_distribution.connections]
endpoints = [{{ host = "{eh}", port = {ep} }}]
advertised_endpoints = [{{ host = "{ah}", port = {ap} }}]
hosts_refresh_interval = 300
shared_secret = "{GLOBAL_SECRET}"

[global_distribution.bounce]
enabled = true
resend_after_ms = 200
max_retries = 8

[outgoing_pools.redis.global_distrib.connection]
host = "127.0.0.1"
port = {redis_port}
database = 0
"#,
        eh = endpoint.ip(),
        ep = endpoint.port(),
        ah = advertised.ip(),
        ap = advertised.port(),
    )
}

/// `[global_distribution.connections.tls]` pointing at `tls`'s files.
pub fn global_tls_toml(tls: &LinkTls) -> String {
    format!(
        "\n[global_distribution.connections.tls]\ncacertfile = {:?}\ncertfile = {:?}\nkeyfile = {:?}\n",
        tls.cacertfile.display().to_string(),
        tls.certfile.display().to_string(),
        tls.keyfile.display().to_string(),
    )
}

impl TestGlobal {
    /// Redis, four proxies, two clusters of two nodes on a fresh PostgreSQL
    /// database; returns once every node has a connected link to every
    /// endpoint of the other data center. Blocking: call it from
    /// `spawn_blocking` in async tests.
    pub fn start() -> TestGlobal {
        TestGlobal::start_with(GlobalOptions::default())
    }

    /// [`TestGlobal::start`] with the links set up as `opts` says.
    pub fn start_with(opts: GlobalOptions) -> TestGlobal {
        let guard = OneAtATime::take();
        let redis = RedisServer::start();
        let db = SharedDb::postgres();
        let run = rand::random::<u32>();
        let mut dcs = Vec::new();
        for d in 0..DCS {
            let mut dc = Dc {
                cluster: format!("gd{}-{run}", d + 1),
                local_host: format!("dc{}.{GLOBAL_HOST}", d + 1),
                nodes: Vec::new(),
                placements: Vec::new(),
                endpoints: Vec::new(),
                proxies: Vec::new(),
            };
            for i in 0..NODES_PER_DC {
                let endpoint = SocketAddr::from(([127, 0, 0, 1], free_port()));
                let proxy = LinkProxy::start(endpoint);
                let placement = Placement {
                    command_prefix: vec![
                        "sh".into(),
                        "-c".into(),
                        SERVE_GLOBAL_HOST.into(),
                        "serve-global-host".into(),
                    ],
                    ..Placement::loopback()
                };
                let id = i as u64 + 1;
                let mut extra = cluster_toml(&dc.cluster, &db.url, id, &placement, i == 0)
                    + &global_toml(&dc.local_host, endpoint, proxy.addr, redis.port);
                if let Some(Some(tls)) = opts.tls.get(d) {
                    extra += &global_tls_toml(tls);
                }
                for (_, toml) in opts.node_toml.iter().filter(|(at, _)| *at == (d, i)) {
                    extra += "\n";
                    extra += toml;
                }
                let node = TestNode::start_with(NodeOptions {
                    extra_toml: extra,
                    ip: placement.ip,
                    command_prefix: placement.command_prefix.clone(),
                    ..Default::default()
                });
                if i > 0 {
                    let seed = dc.placements[0].cluster_addr.to_string();
                    let out = node.cli(&["cluster", "join", &seed]);
                    assert!(
                        out.status.success(),
                        "cluster join of {} node {id} failed: {}{}\n--- node log ---\n{}",
                        dc.local_host,
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr),
                        node.log()
                    );
                }
                wait_until(&format!("{} node {id} ready", dc.local_host), Duration::from_secs(30), || {
                    let (code, v) = node.api("GET", "/api/cluster", None);
                    code == 200 && v["ready"] == Value::Bool(true)
                });
                dc.nodes.push(node);
                dc.placements.push(placement);
                dc.endpoints.push(endpoint);
                dc.proxies.push(proxy);
            }
            dcs.push(dc);
        }
        let g = TestGlobal { dcs, redis, db, _one_at_a_time: guard };
        if !opts.links_may_fail {
            g.wait_linked(Duration::from_secs(30));
        }
        g
    }

    /// Node `i` of data center `dc` (both from 0).
    pub fn node(&self, dc: usize, i: usize) -> &TestNode {
        &self.dcs[dc].nodes[i]
    }

    /// Every node, as `(dc, i, node)`.
    /// Every node that was not killed.
    pub fn all_nodes(&self) -> impl Iterator<Item = (usize, usize, &TestNode)> {
        self.dcs
            .iter()
            .enumerate()
            .flat_map(|(d, dc)| dc.nodes.iter().enumerate().map(move |(i, n)| (d, i, n)))
            .filter(|(_, _, n)| !n.was_killed())
    }

    /// Creates `user@example.com` (the database is shared: once is enough).
    pub fn add_user(&self, user: &str, password: &str) {
        let (code, v) = self.node(0, 0).api(
            "POST",
            &format!("/api/users/{GLOBAL_HOST}"),
            Some(json!({ "username": user, "password": password })),
        );
        assert_eq!(code, 201, "creating {user}: {v}");
    }

    /// `GET /api/global` on one node.
    pub fn status(&self, dc: usize, i: usize) -> Value {
        let (code, v) = self.node(dc, i).api("GET", "/api/global", None);
        assert_eq!(code, 200, "GET /api/global on dc{} node {}: {v}", dc + 1, i + 1);
        v
    }

    /// `POST /api/global/refresh` on one node: it writes its entries to Redis now.
    pub fn refresh(&self, dc: usize, i: usize) {
        let (code, v) = self.node(dc, i).api("POST", "/api/global/refresh", Some(json!({})));
        assert!((200..300).contains(&code), "POST /api/global/refresh on dc{} node {}: {code} {v}", dc + 1, i + 1);
    }

    /// The sum of `counters.<name>` over every node.
    pub fn counter(&self, name: &str) -> u64 {
        self.all_nodes().map(|(d, i, _)| self.status(d, i)["counters"][name].as_u64().unwrap_or(0)).sum()
    }

    /// `counters.<name>` of every node, as `dcN/node M = v` text for reports.
    pub fn counter_text(&self, name: &str) -> String {
        self.all_nodes()
            .map(|(d, i, _)| format!("dc{}/{}={}", d + 1, i + 1, self.status(d, i)["counters"][name]))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The sum of a link field (`queued`, `unacked`, `resent`, ...) over
    /// every link of every node. Panics on a value no real link can reach: a
    /// gauge that went below zero and wrapped.
    pub fn link_sum(&self, field: &str) -> u64 {
        let mut sum = 0u64;
        for (d, i, _) in self.all_nodes() {
            let s = self.status(d, i);
            for dc in s["data_centers"].as_array().into_iter().flatten() {
                for l in dc["links"].as_array().into_iter().flatten() {
                    let v = l[field].as_u64().unwrap_or(0);
                    assert!(
                        v < 1 << 40,
                        "GET /api/global on dc{} node {}: link to {} {} reports {field} = {v}, a counter that went below zero",
                        d + 1,
                        i + 1,
                        dc["local_host"],
                        l["endpoint"]
                    );
                    sum += v;
                }
            }
        }
        sum
    }

    /// Whether node (`dc`, `i`) has a connected link to every advertised
    /// endpoint of every other data center.
    pub fn linked(&self, dc: usize, i: usize) -> bool {
        let s = self.status(dc, i);
        (0..DCS).filter(|o| *o != dc).all(|o| {
            let other = &self.dcs[o];
            let Some(entry) = s["data_centers"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|e| e["local_host"].as_str() == Some(other.local_host.as_str()))
            else {
                return false;
            };
            other.proxies.iter().all(|p| {
                let ep = p.addr.to_string();
                entry["links"].as_array().into_iter().flatten().any(|l| {
                    l["endpoint"].as_str() == Some(ep.as_str())
                        && l["connected"] == Value::Bool(true)
                        && l["disabled"] != Value::Bool(true)
                })
            })
        })
    }

    /// Waits until every node is [`linked`](TestGlobal::linked).
    pub fn wait_linked(&self, timeout: Duration) {
        wait_until("every node linked to every endpoint of the other data center", timeout, || {
            self.all_nodes().all(|(d, i, _)| self.linked(d, i))
        });
    }

    /// Waits until no node has a stanza of global distribution on its way:
    /// no pending, in-flight or parked pair, and no queued or unacknowledged
    /// frame on any link (a frame is acknowledged once delivered or handled).
    pub fn wait_idle(&self, timeout: Duration) {
        wait_until("every node of every data center idle", timeout, || {
            self.all_nodes().all(|(d, i, _)| {
                let s = self.status(d, i);
                let q = &s["queues"];
                let busy = ["pending", "in_flight", "parked_pairs"].iter().any(|f| q[f].as_u64().unwrap_or(0) > 0);
                let links = s["data_centers"].as_array().into_iter().flatten().flat_map(|dc| {
                    dc["links"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|l| l["queued"].as_u64().unwrap_or(0) + l["unacked"].as_u64().unwrap_or(0))
                });
                !busy && links.sum::<u64>() == 0
            })
        });
    }

    /// Everything on its way to `client` has reached it, recorded in `seen`:
    /// the data centers are idle ([`TestGlobal::wait_idle`]), then a ping to
    /// the server is answered after whatever was already in the session's
    /// mailbox. Replaces a quiet period before checking for duplicates.
    pub async fn settle(&self, client: &mut Client, seen: &mut Seen) {
        self.wait_idle(Duration::from_secs(30));
        flush(client, seen).await;
    }

    /// Cuts every proxy: no link between the data centers carries anything.
    pub fn cut_links(&self, how: Cut) {
        for dc in &self.dcs {
            for p in &dc.proxies {
                p.cut(how);
            }
        }
    }

    pub fn heal_links(&self) {
        for dc in &self.dcs {
            for p in &dc.proxies {
                p.heal();
            }
        }
    }

    /// Waits until `jid`'s entry in Redis names data center `dc` (its
    /// `local_host` appears in one of the hash's fields).
    pub fn wait_table_says(&self, jid: &str, dc: usize, timeout: Duration) {
        let key = format!("meerkat:gd:jid:{jid}");
        let want = format!("{}#", self.dcs[dc].local_host);
        wait_until(&format!("{key} to name {}", self.dcs[dc].local_host), timeout, || {
            hash_fields(&self.redis, &key).iter().any(|f| f.starts_with(&want))
        });
    }
}

/// The field names of a Redis hash (`HKEYS`), through a minimal RESP reader.
pub fn hash_fields(redis: &RedisServer, key: &str) -> Vec<String> {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", redis.port)) else { return Vec::new() };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req = format!("*2\r\n$5\r\nHKEYS\r\n${}\r\n{key}\r\n", key.len());
    if s.write_all(req.as_bytes()).is_err() {
        return Vec::new();
    }
    let mut reader = std::io::BufReader::new(s);
    let mut line = String::new();
    let mut read_line = |line: &mut String| {
        line.clear();
        std::io::BufRead::read_line(&mut reader, line).ok().filter(|n| *n > 0).map(|_| line.trim_end().to_owned())
    };
    let Some(head) = read_line(&mut line) else { return Vec::new() };
    let n: usize = head.strip_prefix('*').and_then(|n| n.parse().ok()).unwrap_or(0);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let _len = read_line(&mut line);
        if let Some(v) = read_line(&mut line) {
            out.push(v);
        }
    }
    out
}

// ------------------------------------------------------------------ traffic

/// One numbered stream a client sends: bodies `"<prefix> <n>"` for n in 0..count.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub to: String,
    pub prefix: String,
    pub count: u64,
}

/// What one client saw during [`converse`].
#[derive(Debug, Default)]
pub struct Seen {
    /// Per prefix: the numbers in arrival order, with when they arrived.
    pub streams: HashMap<String, Vec<(u64, Instant)>>,
    /// Per outgoing prefix: when each number was sent.
    pub sent_at: HashMap<String, Vec<Instant>>,
    /// Per prefix: the `from` addresses its messages came with.
    pub senders: HashMap<String, std::collections::BTreeSet<String>>,
    /// End markers (`"<prefix> end"`) in arrival order.
    pub ends: Vec<String>,
    /// Numbers of the messages that carried a XEP-0203 delay stamp (they came from offline storage).
    pub delayed: Vec<u64>,
    /// Stanza errors and messages that belong to no stream.
    pub unexpected: Vec<String>,
}

impl Seen {
    /// Records one element; returns whether it was a numbered message.
    pub fn record(&mut self, el: &meerkat_xmpp::element::Element) -> bool {
        if el.attr("type") == Some("error") {
            self.unexpected.push(el.to_string());
            return false;
        }
        if el.name != "message" {
            return false;
        }
        let Some(text) = body(el) else { return false };
        if let Some(prefix) = text.strip_suffix(" end") {
            self.ends.push(prefix.to_owned());
            return false;
        }
        match text.rsplit_once(' ').and_then(|(p, n)| Some((p.to_owned(), n.parse::<u64>().ok()?))) {
            Some((prefix, n)) => {
                if el.get_child("delay", "urn:xmpp:delay").is_some() {
                    self.delayed.push(n);
                }
                self.senders.entry(prefix.clone()).or_default().insert(el.attr("from").unwrap_or("").to_owned());
                self.streams.entry(prefix).or_default().push((n, Instant::now()));
                true
            }
            None => {
                self.unexpected.push(el.to_string());
                false
            }
        }
    }

    /// The numbers of one stream, in arrival order.
    pub fn numbers(&self, prefix: &str) -> Vec<u64> {
        self.streams.get(prefix).map(|v| v.iter().map(|(n, _)| *n).collect()).unwrap_or_default()
    }

    pub fn count(&self, prefix: &str) -> usize {
        self.streams.get(prefix).map_or(0, Vec::len)
    }
}

/// Sends the `outgoing` streams round robin, one message every `interval`,
/// while reading what arrives, until everything is sent and `expect` (prefix,
/// count) has arrived, or `deadline`. Returns the client and what it saw;
/// a read error other than a timeout ends the run early (and shows in the counts).
pub async fn converse(
    mut client: Client,
    outgoing: Vec<Outgoing>,
    interval: Duration,
    expect: Vec<(String, u64)>,
    deadline: Instant,
) -> (Client, Seen) {
    let mut seen = Seen::default();
    let total: u64 = outgoing.iter().map(|o| o.count).sum();
    let mut next_n: Vec<u64> = vec![0; outgoing.len()];
    let mut sent = 0u64;
    let mut turn = 0usize;
    let mut next_at = Instant::now();
    loop {
        let now = Instant::now();
        if sent < total && now >= next_at {
            // The next stream that still has something to send.
            while next_n[turn % outgoing.len()] >= outgoing[turn % outgoing.len()].count {
                turn += 1;
            }
            let k = turn % outgoing.len();
            let o = &outgoing[k];
            let text = format!("{} {}", o.prefix, next_n[k]);
            if let Err(e) = client.send_message(&o.to, &text).await {
                seen.unexpected.push(format!("sending {text}: {e}"));
                break;
            }
            seen.sent_at.entry(o.prefix.clone()).or_default().push(Instant::now());
            next_n[k] += 1;
            sent += 1;
            turn += 1;
            next_at += interval;
            continue;
        }
        let received_all = expect.iter().all(|(p, n)| seen.count(p) as u64 >= *n);
        if sent == total && received_all {
            break;
        }
        if now >= deadline {
            break;
        }
        let until = if sent < total { next_at.min(deadline) } else { deadline };
        match client.recv_timeout(until.saturating_duration_since(now).max(Duration::from_micros(100))).await {
            Ok(el) => {
                seen.record(&el);
            }
            Err(crate::ClientError::Timeout) => {}
            Err(e) => {
                seen.unexpected.push(format!("reading: {e}"));
                break;
            }
        }
    }
    (client, seen)
}

/// Reads and records until nothing arrives for `quiet`: a duplicate that
/// trails the last expected message shows up here. Read errors end it.
/// Reads what the session of `client` already holds: a ping to the server is
/// answered after whatever was in the session's mailbox before it; all of it
/// is recorded in `seen`.
pub async fn flush(client: &mut Client, seen: &mut Seen) {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let id = format!("flush{}", NEXT.fetch_add(1, Ordering::Relaxed));
    client
        .send_str(&format!("<iq type='get' id='{id}'><ping xmlns='urn:xmpp:ping'/></iq>"))
        .await
        .expect("sending the flushing ping");
    loop {
        let el = client.recv_timeout(Duration::from_secs(30)).await.expect("the answer to the flushing ping");
        if el.name == "iq" && el.attr("id") == Some(id.as_str()) {
            return;
        }
        seen.record(&el);
    }
}

pub async fn drain(client: &mut Client, seen: &mut Seen, quiet: Duration) {
    while let Ok(el) = client.recv_timeout(quiet).await {
        seen.record(&el);
    }
}

/// Checks that `got` is exactly 0..n in order; the error names the first
/// problems (missing, duplicated, out of order) instead of dumping the list.
pub fn check_sequence(got: &[u64], n: u64) -> Result<(), String> {
    if got.len() as u64 == n && got.iter().enumerate().all(|(i, v)| *v == i as u64) {
        return Ok(());
    }
    let mut counts: HashMap<u64, usize> = HashMap::new();
    for v in got {
        *counts.entry(*v).or_default() += 1;
    }
    let missing: Vec<u64> = (0..n).filter(|v| !counts.contains_key(v)).collect();
    let dups: Vec<u64> = {
        let mut d: Vec<u64> = counts.iter().filter(|(_, c)| **c > 1).map(|(v, _)| *v).collect();
        d.sort_unstable();
        d
    };
    let extra: Vec<u64> = got.iter().copied().filter(|v| *v >= n).collect();
    let disorder: Vec<(usize, u64, u64)> =
        got.windows(2).enumerate().filter(|(_, w)| w[1] <= w[0]).map(|(i, w)| (i + 1, w[0], w[1])).take(5).collect();
    let head = |v: &[u64]| format!("{:?}{}", &v[..v.len().min(20)], if v.len() > 20 { " ..." } else { "" });
    Err(format!(
        "received {} of {n}: {} missing {}, {} duplicated {}, {} beyond range {}, first inversions (index, prev, next) {:?}",
        got.len(),
        missing.len(),
        head(&missing),
        dups.len(),
        head(&dups),
        extra.len(),
        head(&extra),
        disorder
    ))
}

/// The largest gap between consecutive arrivals within `[from, to]` (the
/// edges count as arrivals), and when it began.
pub fn largest_gap(arrivals: &[(u64, Instant)], from: Instant, to: Instant) -> (Duration, Instant) {
    let mut times: Vec<Instant> = vec![from];
    times.extend(arrivals.iter().map(|(_, t)| *t).filter(|t| *t >= from && *t <= to));
    times.push(to);
    times.windows(2).map(|w| (w[1] - w[0], w[0])).max_by_key(|(gap, _)| *gap).unwrap_or((Duration::ZERO, from))
}
