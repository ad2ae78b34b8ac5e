//! Node-to-node transport: framed TCP (optionally mutual TLS) carrying Raft
//! RPCs, forwarded proposals and stanzas.
//!
//! # Wire format
//! Every frame is a 4-byte big-endian length, then one byte of protocol
//! version ([`PROTOCOL_VERSION`]), then the bincode encoding of a [`Frame`].
//! A connection starts with [`Frame::Hello`], which names the cluster, the
//! sender and the node the sender believes it reached; a mismatch is refused
//! before anything else is read (openraft must never replicate to itself
//! through a misconfigured address).
//!
//! # Connections and order
//! Each node dials one connection to each peer and sends everything to that
//! peer over it, through one bounded queue and one writer task: stanzas from
//! one sender to one recipient therefore arrive in the order they were sent.
//! The receiving side handles stanza frames inline, in order, and requests
//! concurrently; replies go back on the connection the request came in on.
//!
//! # Stanzas are acknowledged
//! A stanza goes out as [`Frame::Sequenced`]: the sender's epoch (a random
//! number drawn when its transport starts) and a sequence number. The
//! receiver reads what has arrived, then acknowledges every sequence number
//! up to the last ([`Frame::StanzaAck`], one per burst), before it hands
//! that last stanza on: the sender knows before the recipient can. The sender keeps each stanza until it
//! is acknowledged, at most [`PEER_QUEUE`] of them per peer. After a
//! reconnect it sends the unacknowledged ones again, first and in order; the
//! receiver remembers the last sequence number it handled of each sender's
//! epoch and acknowledges a repeat without handling it twice. A connection
//! that drops therefore loses and duplicates nothing while both nodes live.
//!
//! When a peer is declared down (or leaves the cluster), its connection task
//! is interrupted wherever it is (a write to a peer that stopped reading, a
//! connect that will time out), and every stanza not acknowledged, then
//! every stanza still queued, in that order, is handed back to the
//! [`StanzaInbox`] to be routed again: to the user's other resources, their
//! new node, or offline storage.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{FutureExt, SinkExt, StreamExt};
use meerkat_xmpp::element::Element;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use crate::cert_identity;
use crate::peer_auth::{self, Role, SharedSecret};
use rustls_pki_types::CertificateDer;

use crate::command::{bincode_config, Command, CommandResponse};
use crate::types::TypeConfig;

/// Version byte at the start of every frame.
pub const PROTOCOL_VERSION: u8 = 1;
/// Largest frame accepted (a snapshot chunk or a batch of log entries).
pub const MAX_FRAME: usize = 64 * 1024 * 1024;
/// Frames queued for one peer before senders are refused.
pub const PEER_QUEUE: usize = 16 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How often a peer's hand-back asks its connection task to let go of the queue.
const HAND_BACK_POLL: Duration = Duration::from_millis(100);
/// A dialler sends [`Frame::Keepalive`] this often.
const KEEPALIVE_EVERY: Duration = Duration::from_secs(5);
/// An inbound connection that brings no complete frame for this long is
/// closed: a peer gone silent, or one trickling a frame byte by byte.
pub const IDLE_AFTER: Duration = Duration::from_secs(20);

/// A stanza crossing to another node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StanzaFrame {
    pub target: StanzaTarget,
    /// The stanza's routing addresses, already checked by the sending node.
    pub from: String,
    pub to: String,
    pub stanza: Element,
}

/// Where on the receiving node a forwarded stanza goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StanzaTarget {
    /// One bound session. With `if_available`, only if that resource is
    /// available now: the owning node knows its sessions' presence first.
    Session { jid: String, sid: u64, if_available: bool },
    /// The account (bare JID) as this node sees it: its local resources, else offline storage.
    Account,
    /// The handler of a service or component domain this node serves.
    /// Added after the others, so frames without it keep their encoding.
    Domain { domain: String },
}

/// A request one node makes of another.
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    AppendEntries(openraft::raft::AppendEntriesRequest<TypeConfig>),
    Vote(openraft::raft::VoteRequest<u64>),
    InstallSnapshot(openraft::raft::InstallSnapshotRequest<TypeConfig>),
    /// A proposal from a follower, for the leader to commit.
    ClientWrite(Command),
    /// Add a node: as a learner, then as a voter.
    Join {
        node: u64,
        addr: String,
    },
    /// Remove a node from the membership and the session table.
    Remove {
        node: u64,
    },
    /// Deliver a stanza to the receiver's own sessions only, and say whether
    /// it did: a stanza from another data center is acknowledged there only
    /// once a session took it.
    DeliverChecked(StanzaFrame),
    /// A liveness probe between members that Raft does not connect (followers).
    Ping,
    /// End one of the receiver's sessions (an administrator's or the
    /// account's removal); answered with whether the session was there.
    /// `reason` is the router's code for why. Appended last: frames of
    /// earlier versions still decode.
    Kick {
        sid: u64,
        reason: u8,
    },
    /// A request of one module to the same module on the receiver
    /// ([`ModuleHandler`]): the body is the module's own encoding. Appended
    /// last: frames of earlier versions still decode.
    Module {
        module: String,
        body: Vec<u8>,
    },
}

/// The answer to a [`Request`].
#[derive(Debug, Serialize, Deserialize)]
pub enum Response {
    AppendEntries(openraft::raft::AppendEntriesResponse<u64>),
    Vote(openraft::raft::VoteResponse<u64>),
    InstallSnapshot(openraft::raft::InstallSnapshotResponse<u64>),
    ClientWrite {
        index: u64,
        response: CommandResponse,
    },
    Done,
    Delivered(bool),
    /// The module's answer to a [`Request::Module`], in its own encoding.
    Module(Vec<u8>),
}

/// Why a request failed on the remote node.
#[derive(Clone, Debug, Serialize, Deserialize, thiserror::Error)]
pub enum WireError {
    /// The receiver refused a snapshot chunk; the sender must act on the reason.
    #[error("snapshot: {0}")]
    Snapshot(Box<openraft::error::RaftError<u64, openraft::error::InstallSnapshotError>>),
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<u64>, addr: Option<String> },
    #[error("{0}")]
    Failed(String),
}

/// Everything that crosses a connection.
#[derive(Debug, Serialize, Deserialize)]
pub enum Frame {
    Hello {
        cluster: String,
        from: u64,
        to: Option<u64>,
    },
    HelloOk {
        node: u64,
    },
    HelloRefused {
        reason: String,
    },
    Request {
        id: u64,
        body: Request,
    },
    Response {
        id: u64,
        body: Result<Response, WireError>,
    },
    Stanza(StanzaFrame),
    /// The listener asks the dialler to prove it knows the shared secret
    /// ([`crate::peer_auth`]).
    Challenge {
        nonce: Vec<u8>,
    },
    /// The dialler's proof, with its own nonce.
    Proof {
        nonce: Vec<u8>,
        mac: Vec<u8>,
    },
    /// The listener accepts the dialler, with its own proof.
    Accepted {
        node: u64,
        mac: Vec<u8>,
    },
    /// A stanza the receiver acknowledges: `seq` counts from 1 within the
    /// sender's `epoch` (one per start of its transport).
    Sequenced {
        epoch: u64,
        seq: u64,
        stanza: StanzaFrame,
    },
    /// The receiver handled every [`Frame::Sequenced`] up to `seq` of the
    /// connection's sender.
    StanzaAck {
        seq: u64,
    },
    /// Nothing to say: the dialler keeps a quiet connection from looking dead.
    Keepalive,
}

/// Whether an I/O error says that nothing serves at the other end (refused,
/// reset, closed), as opposed to a silence: shared by the cluster transport
/// and the links between data centers.
pub fn nobody_there(e: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        e.kind(),
        K::ConnectionRefused | K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof
    )
}

impl TransportError {
    /// The peer's address refused or closed the connection before the hello
    /// was answered, as when no node process listens there; not a timeout.
    pub fn is_refusal(&self) -> bool {
        match self {
            TransportError::Io(e) => nobody_there(e),
            TransportError::Unreachable(_, why) => why == CLOSED_DURING_HELLO,
            _ => false,
        }
    }
}

const CLOSED_DURING_HELLO: &str = "closed during the hello";

/// Errors of the transport itself.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("node {0} is not reachable: {1}")]
    Unreachable(u64, String),
    #[error("no address known for node {0}")]
    NoAddress(u64),
    #[error("the queue to node {0} is full")]
    QueueFull(u64),
    #[error("timed out waiting for node {0}")]
    Timeout(u64),
    #[error("connection refused by the peer: {0}")]
    Refused(String),
    #[error("remote: {0}")]
    Remote(#[from] WireError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad frame: {0}")]
    Codec(String),
}

/// A version byte, then the bincode encoding of `value`: the body of every
/// length-prefixed frame between nodes and between data centers.
pub fn encode_versioned<T: Serialize>(version: u8, value: &T) -> Result<Bytes, String> {
    let mut buf = BytesMut::with_capacity(256);
    buf.put_u8(version);
    let body = bincode::serde::encode_to_vec(value, bincode_config()).map_err(|e| e.to_string())?;
    buf.extend_from_slice(&body);
    Ok(buf.freeze())
}

/// Reads what [`encode_versioned`] wrote, refusing another version and trailing bytes.
pub fn decode_versioned<T: serde::de::DeserializeOwned>(version: u8, data: &[u8]) -> Result<T, String> {
    let Some((&got, body)) = data.split_first() else {
        return Err("empty frame".into());
    };
    if got != version {
        return Err(format!("protocol version {got}, expected {version}"));
    }
    let (value, used): (T, usize) = decode_limited(body).map_err(|e| e.to_string())?;
    if used != body.len() {
        return Err("trailing bytes after a frame".into());
    }
    Ok(value)
}

/// bincode reserves what a length prefix claims before it reads the bytes,
/// so a 15-byte frame could ask for exabytes. Under a limit, decoding stops
/// once what it claimed passes the limit: the bytes of strings and buffers,
/// and the in-memory size of each number (8 for a length even when its
/// varint takes 1 byte), so a valid body claims at most 9 times its length.
/// The limit is a type parameter, so it is the first of a few steps of 16
/// times a size at or above the body's length: a hostile body makes the node
/// reserve at most 256 times its own size (64 KiB at least); the frames
/// allowed before a hello ([`HELLO_MAX_FRAME`]) at most 64 KiB.
fn decode_limited<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<(T, usize), bincode::error::DecodeError> {
    use bincode::serde::decode_from_slice;
    const KIB: usize = 1024;
    const MIB: usize = 1024 * KIB;
    let c = bincode_config();
    match body.len() {
        0..=4096 => decode_from_slice(body, c.with_limit::<{ 64 * KIB }>()),
        4097..=65_536 => decode_from_slice(body, c.with_limit::<{ MIB }>()),
        65_537..=1_048_576 => decode_from_slice(body, c.with_limit::<{ 16 * MIB }>()),
        1_048_577..=16_777_216 => decode_from_slice(body, c.with_limit::<{ 256 * MIB }>()),
        _ => decode_from_slice(body, c.with_limit::<{ 16 * MAX_FRAME }>()),
    }
}

pub fn encode_frame(frame: &Frame) -> Result<Bytes, TransportError> {
    encode_versioned(PROTOCOL_VERSION, frame).map_err(TransportError::Codec)
}

pub fn decode_frame(data: &[u8]) -> Result<Frame, TransportError> {
    decode_versioned(PROTOCOL_VERSION, data).map_err(TransportError::Codec)
}

/// Largest frame before the hello is answered: a stranger may not make the
/// node buffer [`MAX_FRAME`] bytes.
pub const HELLO_MAX_FRAME: usize = 4096;
/// Inbound connections from other nodes at once; past it a new one is closed at once.
pub const MAX_INBOUND: usize = 256;
/// Requests one inbound connection may have in flight; past it the
/// connection is not read until one finishes.
pub const MAX_REQUESTS_IN_FLIGHT: usize = 64;

fn hello_codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder().max_frame_length(HELLO_MAX_FRAME).new_codec()
}

/// Stanzas arriving from other nodes.
pub trait StanzaInbox: Send + Sync {
    /// A stanza another node forwarded here. Called in arrival order; must not block.
    fn on_stanza(&self, from_node: u64, frame: StanzaFrame);
    /// A stanza that was queued for `node`, which is now down: route it again.
    /// `queued_at`: when this node queued it for `node` (the recipient's
    /// other resources got their copies then, if it had any).
    fn undeliverable(&self, node: u64, frame: StanzaFrame, queued_at: SystemTime);
    /// Delivers to this node's sessions only, with no fallback; false when
    /// none took it.
    fn deliver_checked(&self, _from_node: u64, _frame: StanzaFrame) -> bool {
        false
    }
    /// Ends one of this node's sessions ([`Request::Kick`]); false when it is not here.
    fn kick(&self, _from_node: u64, _sid: u64, _reason: u8) -> bool {
        false
    }
}

/// What a [`ModuleHandler`] answers, later: the module's encoded answer, or why it failed.
pub type ModuleReply<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Vec<u8>, String>> + Send + 'a>>;

/// The modules of this node, answering [`Request::Module`] from other nodes.
pub trait ModuleHandler: Send + Sync {
    fn handle(&self, from: u64, module: String, body: Vec<u8>) -> ModuleReply<'_>;
}

/// What a [`RequestHandler`] answers, later.
pub type Reply<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response, WireError>> + Send + 'a>>;

/// Requests arriving from other nodes (Raft RPCs, proposals, membership).
pub trait RequestHandler: Send + Sync {
    fn handle(&self, from: u64, request: Request) -> Reply<'_>;
}

/// Optional mutual TLS between nodes, from a cluster CA.
#[derive(Clone)]
pub struct ClusterTls {
    pub connector: tokio_rustls::TlsConnector,
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// The name every node's certificate carries and peers verify.
    pub server_name: rustls_pki_types::ServerName<'static>,
}

/// The writing half of a connection's frames.
type FrameSink = futures_util::stream::SplitSink<Framed<Box<dyn Io>, LengthDelimitedCodec>, Bytes>;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

enum Outgoing {
    /// An encoded request, dropped unsent once its caller stopped waiting:
    /// a proposal that timed out must not be committed later.
    Request {
        bytes: Bytes,
        deadline: Instant,
    },
    Stanza(StanzaFrame, SystemTime),
}

/// A stanza written to a peer and not acknowledged yet.
struct Unacked {
    seq: u64,
    bytes: Bytes,
    queued_at: SystemTime,
}

/// The stanzas a peer has not acknowledged, oldest first.
#[derive(Default)]
struct Window {
    next_seq: u64,
    frames: VecDeque<Unacked>,
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Response, WireError>>>>>;

/// One peer: its queue, its outstanding requests and its last sign of life.
struct Peer {
    tx: mpsc::Sender<Outgoing>,
    /// The receiving end, shared with the connection task so that a down
    /// peer's queue can be drained from outside.
    rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Outgoing>>>,
    /// Written and not acknowledged; outside the connection task, so that a
    /// hand-back takes it whatever that task is doing.
    window: Mutex<Window>,
    /// Interrupts the connection task (the peer was declared down).
    interrupt: Notify,
    /// The last attempt to connect was refused or closed before the hello
    /// was answered: nothing serves the cluster at the peer's address.
    refusing: AtomicBool,
    pending: Pending,
    addr: Arc<RwLock<String>>,
    /// `meerkat_cluster_stanza_ack_seconds`.
    acked_after: metrics::Histogram,
}

impl Peer {
    fn window(&self) -> std::sync::MutexGuard<'_, Window> {
        self.window.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn unacked(&self) -> usize {
        self.window().frames.len()
    }

    /// The bytes to write for a queued item, or `None` when the frame is
    /// stale or cannot be encoded. A stanza gets its sequence number and
    /// waits in the window for its acknowledgement.
    fn prepare(&self, epoch: u64, item: Outgoing) -> Option<Bytes> {
        match item {
            Outgoing::Request { bytes, deadline } => (Instant::now() < deadline).then_some(bytes),
            Outgoing::Stanza(stanza, queued_at) => {
                let mut w = self.window();
                let seq = w.next_seq + 1;
                match encode_frame(&Frame::Sequenced { epoch, seq, stanza }) {
                    Ok(bytes) => {
                        w.next_seq = seq;
                        w.frames.push_back(Unacked { seq, bytes: bytes.clone(), queued_at });
                        Some(bytes)
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot encode a stanza frame");
                        None
                    }
                }
            }
        }
    }

    /// Forgets every stanza up to `seq`: the peer has it.
    fn acknowledged(&self, seq: u64) {
        let mut w = self.window();
        while w.frames.front().is_some_and(|f| f.seq <= seq) {
            if let Some(f) = w.frames.pop_front() {
                // Queued here to handed to a session there (the peer acknowledges after that).
                self.acked_after.record(f.queued_at.elapsed().unwrap_or_default().as_secs_f64());
            }
        }
    }
}

/// The transport of one node.
pub struct Transport {
    me: u64,
    cluster: String,
    tls: Option<ClusterTls>,
    /// `cluster.shared_secret`: peers prove they know it before anything else.
    secret: Option<SharedSecret>,
    peers: Mutex<HashMap<u64, Arc<Peer>>>,
    last_seen: Mutex<HashMap<u64, Instant>>,
    next_id: AtomicU64,
    inbox: OnceLock<Arc<dyn StanzaInbox>>,
    handler: OnceLock<Arc<dyn RequestHandler>>,
    modules: OnceLock<Arc<dyn ModuleHandler>>,
    shutdown: watch::Sender<bool>,
    /// Drawn at start: a receiver tells a restarted sender's sequence numbers from the old ones.
    epoch: u64,
    /// The last sequence number handled of each sender: (its epoch, seq).
    received: Mutex<HashMap<u64, (u64, u64)>>,
    pub stats: TransportStats,
    acked_after: metrics::Histogram,
}

/// Counters for metrics and the admin API.
#[derive(Debug, Default)]
pub struct TransportStats {
    pub stanzas_sent: AtomicU64,
    pub stanzas_received: AtomicU64,
    pub stanzas_requeued: AtomicU64,
    /// Connections closed for a frame that did not decode (or too big a one).
    pub bad_frames: AtomicU64,
    /// Connections refused: a wrong hello, or more than [`MAX_INBOUND`] at once.
    pub refused_connections: AtomicU64,
}

impl Transport {
    pub fn new(me: u64, cluster: String, tls: Option<ClusterTls>) -> Arc<Transport> {
        Transport::with_secret(me, cluster, tls, None)
    }

    /// A transport whose peers must prove they know `secret` (both ways).
    pub fn with_secret(
        me: u64,
        cluster: String,
        tls: Option<ClusterTls>,
        secret: Option<SharedSecret>,
    ) -> Arc<Transport> {
        Arc::new(Transport {
            me,
            cluster,
            tls,
            secret,
            peers: Mutex::new(HashMap::new()),
            last_seen: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            inbox: OnceLock::new(),
            handler: OnceLock::new(),
            modules: OnceLock::new(),
            shutdown: watch::channel(false).0,
            epoch: rand::random::<u64>(),
            received: Mutex::new(HashMap::new()),
            stats: TransportStats::default(),
            acked_after: metrics::histogram!("meerkat_cluster_stanza_ack_seconds"),
        })
    }

    pub fn node_id(&self) -> u64 {
        self.me
    }

    pub fn set_inbox(&self, inbox: Arc<dyn StanzaInbox>) {
        let _ = self.inbox.set(inbox);
    }

    /// Serves a [`Request::DeliverChecked`].
    pub fn deliver_checked(&self, from: u64, frame: StanzaFrame) -> bool {
        self.inbox.get().is_some_and(|i| i.deliver_checked(from, frame))
    }

    /// Serves a [`Request::Kick`].
    pub fn kick(&self, from: u64, sid: u64, reason: u8) -> bool {
        self.inbox.get().is_some_and(|i| i.kick(from, sid, reason))
    }

    pub fn set_handler(&self, handler: Arc<dyn RequestHandler>) {
        let _ = self.handler.set(handler);
    }

    /// Sets what answers [`Request::Module`] (once the modules have started).
    pub fn set_module_handler(&self, handler: Arc<dyn ModuleHandler>) {
        let _ = self.modules.set(handler);
    }

    /// Serves a [`Request::Module`]; refused while the modules are not running.
    pub async fn module_request(&self, from: u64, module: String, body: Vec<u8>) -> Result<Response, WireError> {
        match self.modules.get() {
            Some(h) => h.handle(from, module, body).await.map(Response::Module).map_err(WireError::Failed),
            None => Err(WireError::Failed("the modules of this node are not running".into())),
        }
    }

    /// Stops every connection task.
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    fn saw(&self, node: u64) {
        self.last_seen.lock().unwrap_or_else(|e| e.into_inner()).insert(node, Instant::now());
    }

    /// Whether the last attempt to reach `node` was refused or closed before
    /// its hello was answered (its process is gone), rather than timed out.
    pub fn is_refusing(&self, node: u64) -> bool {
        self.peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&node)
            .is_some_and(|p| p.refusing.load(Ordering::Relaxed))
    }

    /// Per peer: items queued for it and stanzas it has not acknowledged yet.
    pub fn queue_depths(&self) -> Vec<(u64, usize, usize)> {
        let peers: Vec<(u64, Arc<Peer>)> =
            self.peers.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(id, p)| (*id, p.clone())).collect();
        peers.into_iter().map(|(id, p)| (id, p.tx.max_capacity() - p.tx.capacity(), p.unacked())).collect()
    }

    /// When `node` last answered or sent anything.
    pub fn last_seen(&self, node: u64) -> Option<Instant> {
        self.last_seen.lock().unwrap_or_else(|e| e.into_inner()).get(&node).copied()
    }

    /// Forgets when a node was last seen (a new leader starts counting afresh).
    pub fn reset_last_seen(&self, node: u64) {
        self.saw(node);
    }

    /// Records or updates a peer's address (from the membership config).
    pub fn set_address(self: &Arc<Self>, node: u64, addr: &str) {
        if node == self.me {
            return;
        }
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        match peers.get(&node) {
            Some(p) => {
                let mut a = p.addr.write().unwrap_or_else(|e| e.into_inner());
                if *a != addr {
                    *a = addr.to_owned();
                }
            }
            None => {
                let (tx, rx) = mpsc::channel(PEER_QUEUE);
                let peer = Arc::new(Peer {
                    tx,
                    rx: Arc::new(tokio::sync::Mutex::new(rx)),
                    window: Mutex::new(Window::default()),
                    interrupt: Notify::new(),
                    refusing: AtomicBool::new(false),
                    pending: Arc::new(Mutex::new(HashMap::new())),
                    addr: Arc::new(RwLock::new(addr.to_owned())),
                    acked_after: self.acked_after.clone(),
                });
                peers.insert(node, peer.clone());
                tokio::spawn(self.clone().peer_loop(node, peer));
            }
        }
    }

    /// Forgets a peer that left the cluster; what is queued for it is handed back.
    pub fn remove_peer(self: &Arc<Self>, node: u64) {
        let peer = self.peers.lock().unwrap_or_else(|e| e.into_inner()).remove(&node);
        if let Some(peer) = peer {
            self.hand_back(node, peer);
        }
    }

    /// A peer was declared down: every stanza it has not acknowledged and
    /// every stanza still queued for it go back to routing.
    pub fn peer_down(self: &Arc<Self>, node: u64) {
        let peer = self.peers.lock().unwrap_or_else(|e| e.into_inner()).get(&node).cloned();
        if let Some(peer) = peer {
            self.hand_back(node, peer);
        }
    }

    /// Interrupts the peer's connection task until it lets go of the queue,
    /// then routes again what was not acknowledged, then what is queued.
    fn hand_back(self: &Arc<Self>, node: u64, peer: Arc<Peer>) {
        fail_pending(&peer.pending, "the node is down");
        let this = self.clone();
        let mut shutdown = self.shutdown.subscribe();
        tokio::spawn(async move {
            let mut rx = loop {
                peer.interrupt.notify_waiters();
                tokio::select! {
                    rx = peer.rx.lock() => break rx,
                    _ = tokio::time::sleep(HAND_BACK_POLL) => {}
                    _ = shutdown.changed() => return,
                }
            };
            let unacked = std::mem::take(&mut peer.window().frames);
            let mut back: Vec<(StanzaFrame, SystemTime)> = unacked
                .into_iter()
                .filter_map(|u| match decode_frame(&u.bytes) {
                    Ok(Frame::Sequenced { stanza, .. }) => Some((stanza, u.queued_at)),
                    _ => None,
                })
                .collect();
            while let Ok(item) = rx.try_recv() {
                if let Outgoing::Stanza(frame, queued_at) = item {
                    back.push((frame, queued_at));
                }
            }
            drop(rx);
            if back.is_empty() {
                return;
            }
            tracing::info!(peer = node, stanzas = back.len(), "routing again what the node did not acknowledge");
            this.stats.stanzas_requeued.fetch_add(back.len() as u64, Ordering::Relaxed);
            if let Some(inbox) = this.inbox.get() {
                for (frame, queued_at) in back {
                    inbox.undeliverable(node, frame, queued_at);
                }
            }
        });
    }

    fn peer(&self, node: u64) -> Result<Arc<Peer>, TransportError> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner()).get(&node).cloned().ok_or(TransportError::NoAddress(node))
    }

    /// Queues a stanza for another node without waiting; it comes back if the queue is full.
    #[allow(clippy::result_large_err)]
    pub fn send_stanza(&self, node: u64, frame: StanzaFrame) -> Result<(), StanzaFrame> {
        let Ok(peer) = self.peer(node) else {
            return Err(frame);
        };
        match peer.tx.try_send(Outgoing::Stanza(frame, SystemTime::now())) {
            Ok(()) => {
                self.stats.stanzas_sent.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => match e.into_inner() {
                Outgoing::Stanza(f, _) => Err(f),
                // Only a stanza was queued above, so only a stanza can come back.
                Outgoing::Request { .. } => Ok(()),
            },
        }
    }

    /// Sends a request to a known peer and waits for its answer.
    pub async fn request(&self, node: u64, body: Request, timeout: Duration) -> Result<Response, TransportError> {
        let peer = self.peer(node)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = encode_frame(&Frame::Request { id, body })?;
        let (tx, rx) = oneshot::channel();
        peer.pending.lock().unwrap_or_else(|e| e.into_inner()).insert(id, tx);
        let deadline = Instant::now() + timeout;
        let sent = tokio::time::timeout(timeout, peer.tx.send(Outgoing::Request { bytes: frame, deadline })).await;
        if !matches!(sent, Ok(Ok(()))) {
            peer.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
            return Err(TransportError::QueueFull(node));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Ok(resp))) => Ok(resp),
            Ok(Ok(Err(e))) => Err(TransportError::Remote(e)),
            Ok(Err(_)) => Err(TransportError::Unreachable(node, "connection lost".into())),
            Err(_) => {
                peer.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                Err(TransportError::Timeout(node))
            }
        }
    }

    /// One request over a fresh connection to an address, for a node that is
    /// not a member yet (joining through any member).
    pub async fn request_addr(&self, addr: &str, body: Request, timeout: Duration) -> Result<Response, TransportError> {
        let work = async {
            let mut framed = self.connect(addr, None).await?;
            framed.send(encode_frame(&Frame::Request { id: 0, body })?).await?;
            loop {
                let Some(data) = framed.next().await else {
                    return Err(TransportError::Unreachable(0, "connection closed".into()));
                };
                if let Frame::Response { id: 0, body } = decode_frame(&data?)? {
                    return body.map_err(TransportError::Remote);
                }
            }
        };
        tokio::time::timeout(timeout, work).await.map_err(|_| TransportError::Timeout(0))?
    }

    async fn connect(
        &self,
        addr: &str,
        to: Option<u64>,
    ) -> Result<Framed<Box<dyn Io>, LengthDelimitedCodec>, TransportError> {
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| TransportError::Unreachable(to.unwrap_or(0), format!("connect to {addr} timed out")))??;
        let _ = tcp.set_nodelay(true);
        let (io, peer_cert): (Box<dyn Io>, Option<CertificateDer<'static>>) = match &self.tls {
            Some(tls) => {
                let stream = tokio::time::timeout(CONNECT_TIMEOUT, tls.connector.connect(tls.server_name.clone(), tcp))
                    .await
                    .map_err(|_| TransportError::Unreachable(to.unwrap_or(0), "TLS handshake timed out".into()))??;
                let cert =
                    stream.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.clone().into_owned());
                (Box::new(stream), cert)
            }
            None => (Box::new(tcp), None),
        };
        let mut framed = Framed::new(io, hello_codec());
        framed.send(encode_frame(&Frame::Hello { cluster: self.cluster.clone(), from: self.me, to })?).await?;
        let peer = to.unwrap_or(0);
        let reached = match next_hello_frame(&mut framed, peer).await? {
            Frame::HelloOk { .. } if self.secret.is_some() => {
                return Err(TransportError::Refused(
                    "the peer does not check cluster.shared_secret: set the same one on every node".into(),
                ))
            }
            Frame::HelloOk { node } => node,
            Frame::Challenge { nonce: listener_nonce } => {
                let Some(secret) = &self.secret else {
                    return Err(TransportError::Refused(
                        "the peer requires a shared secret: set cluster.shared_secret".into(),
                    ));
                };
                let dialler_nonce = peer_auth::nonce();
                let (me, to_bytes) = (self.me.to_be_bytes(), peer.to_be_bytes());
                let context: [&[u8]; 3] = [self.cluster.as_bytes(), &me, &to_bytes];
                let mac = secret.proof(Role::Dialler, &context, &listener_nonce, &dialler_nonce);
                framed.send(encode_frame(&Frame::Proof { nonce: dialler_nonce.clone(), mac })?).await?;
                match next_hello_frame(&mut framed, peer).await? {
                    Frame::Accepted { mac, node } => {
                        if !secret.verify(Role::Listener, &context, &listener_nonce, &dialler_nonce, &mac) {
                            return Err(TransportError::Refused(
                                "the peer's proof is wrong: it has another cluster.shared_secret".into(),
                            ));
                        }
                        node
                    }
                    Frame::HelloRefused { reason } => return Err(TransportError::Refused(reason)),
                    other => return Err(TransportError::Codec(format!("expected an acceptance, got {other:?}"))),
                }
            }
            Frame::HelloRefused { reason } => return Err(TransportError::Refused(reason)),
            other => return Err(TransportError::Codec(format!("expected a hello, got {other:?}"))),
        };
        // With mutual TLS the certificate must name the node: holding one
        // the cluster CA signed is not enough to be any node.
        if let Some(tls) = &self.tls {
            let id = to.unwrap_or(reached);
            let name = cert_identity::node_name(&tls.server_name, id);
            if let Some(why) = cert_identity::check(peer_cert.as_ref(), &name, &format!("node {id}")) {
                return Err(TransportError::Refused(why));
            }
        }
        framed.codec_mut().set_max_frame_length(MAX_FRAME);
        Ok(framed)
    }

    /// Keeps one connection to a peer up and drains its queue into it.
    async fn peer_loop(self: Arc<Self>, node: u64, peer: Arc<Peer>) {
        let mut shutdown = self.shutdown.subscribe();
        let mut backoff = Duration::from_millis(50);
        loop {
            if *shutdown.borrow() || !self.peers.lock().unwrap_or_else(|e| e.into_inner()).contains_key(&node) {
                fail_pending(&peer.pending, "transport stopped");
                return;
            }
            let addr = peer.addr.read().unwrap_or_else(|e| e.into_inner()).clone();
            match self.connect(&addr, Some(node)).await {
                Ok(framed) => {
                    backoff = Duration::from_millis(50);
                    peer.refusing.store(false, Ordering::Relaxed);
                    self.saw(node);
                    tracing::info!(peer = node, %addr, "cluster link up");
                    // A hand-back interrupts the connection wherever it is waiting.
                    tokio::select! {
                        _ = self.run_connection(node, &peer, framed, &mut shutdown) => {}
                        _ = peer.interrupt.notified() => {}
                    }
                    fail_pending(&peer.pending, "connection lost");
                    tracing::info!(peer = node, %addr, "cluster link down");
                }
                Err(e) => {
                    tracing::debug!(peer = node, %addr, error = %e, "cluster connect failed");
                    peer.refusing.store(e.is_refusal(), Ordering::Relaxed);
                    // Callers fail now rather than at their timeout; their queued
                    // frames go stale and are dropped unsent.
                    fail_pending(&peer.pending, "unreachable");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.changed() => {}
            }
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }

    async fn run_connection(
        &self,
        node: u64,
        peer: &Peer,
        framed: Framed<Box<dyn Io>, LengthDelimitedCodec>,
        shutdown: &mut watch::Receiver<bool>,
    ) {
        let (mut sink, mut stream) = framed.split();
        let mut rx = peer.rx.lock().await;
        // What the peer did not acknowledge on the last connection goes first, in order.
        let resend: Vec<Bytes> = peer.window().frames.iter().map(|u| u.bytes.clone()).collect();
        if !resend.is_empty() {
            tracing::debug!(peer = node, stanzas = resend.len(), "sending again what was not acknowledged");
            for bytes in resend {
                if sink.feed(bytes).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
        let mut keepalive = tokio::time::interval(KEEPALIVE_EVERY);
        keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // A full window waits for acknowledgements before taking more.
            let room = peer.unacked() < PEER_QUEUE;
            tokio::select! {
                _ = keepalive.tick() => {
                    let Ok(bytes) = encode_frame(&Frame::Keepalive) else { return };
                    if sink.send(bytes).await.is_err() {
                        return;
                    }
                }
                item = rx.recv(), if room => {
                    let Some(item) = item else { return };
                    if let Some(bytes) = peer.prepare(self.epoch, item) {
                        if sink.feed(bytes).await.is_err() {
                            return;
                        }
                    }
                    // Write whatever else is queued before flushing: one syscall for a burst.
                    while peer.unacked() < PEER_QUEUE {
                        let Ok(more) = rx.try_recv() else { break };
                        if let Some(bytes) = peer.prepare(self.epoch, more) {
                            if sink.feed(bytes).await.is_err() {
                                return;
                            }
                        }
                    }
                    if sink.flush().await.is_err() {
                        return;
                    }
                }
                data = stream.next() => {
                    let Some(Ok(data)) = data else { return };
                    self.saw(node);
                    match decode_frame(&data) {
                        Ok(Frame::StanzaAck { seq }) => peer.acknowledged(seq),
                        Ok(Frame::Response { id, body }) => {
                            let tx = peer.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                            if let Some(tx) = tx {
                                let _ = tx.send(body);
                            }
                        }
                        Ok(other) => tracing::warn!(peer = node, "unexpected frame on an outbound link: {other:?}"),
                        Err(e) => {
                            tracing::warn!(peer = node, error = %e, "bad frame; closing the link");
                            return;
                        }
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Answers a hello that named the right cluster and node: at once, or,
    /// with a shared secret, once the dialler proved it knows it (and with
    /// this node's own proof). `false`: the peer is refused and counted.
    async fn accept_peer(
        &self,
        framed: &mut Framed<Box<dyn Io>, LengthDelimitedCodec>,
        from: u64,
        peer_addr: SocketAddr,
    ) -> bool {
        let Some(secret) = &self.secret else {
            return match encode_frame(&Frame::HelloOk { node: self.me }) {
                Ok(f) => framed.send(f).await.is_ok(),
                Err(_) => false,
            };
        };
        let listener_nonce = peer_auth::nonce();
        let Ok(challenge) = encode_frame(&Frame::Challenge { nonce: listener_nonce.clone() }) else { return false };
        if framed.send(challenge).await.is_err() {
            return false;
        }
        let from_bytes = from.to_be_bytes();
        let proof = match tokio::time::timeout(CONNECT_TIMEOUT * 5, framed.next()).await {
            Ok(Some(Ok(data))) => decode_frame(&data).ok(),
            _ => None,
        };
        // The dialler names this node, or node 0 when it does not know which
        // node it reached (joining by address); the proofs both ways cover the name it used.
        let verified = match &proof {
            Some(Frame::Proof { nonce, mac }) => [self.me, 0].into_iter().find(|to| {
                let context: [&[u8]; 3] = [self.cluster.as_bytes(), &from_bytes, &to.to_be_bytes()];
                secret.verify(Role::Dialler, &context, &listener_nonce, nonce, mac)
            }),
            _ => None,
        };
        let (Some(to), Some(Frame::Proof { nonce: dialler_nonce, .. })) = (verified, proof) else {
            self.stats.refused_connections.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer_addr, claimed = from, "refusing a cluster connection: no valid proof of the shared secret");
            if let Ok(f) = encode_frame(&Frame::HelloRefused { reason: "authentication failed".into() }) {
                let _ = framed.send(f).await;
            }
            return false;
        };
        let context: [&[u8]; 3] = [self.cluster.as_bytes(), &from_bytes, &to.to_be_bytes()];
        let mac = secret.proof(Role::Listener, &context, &listener_nonce, &dialler_nonce);
        match encode_frame(&Frame::Accepted { node: self.me, mac }) {
            Ok(f) => framed.send(f).await.is_ok(),
            Err(_) => false,
        }
    }

    /// Accepts connections from other nodes until shutdown.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        let mut shutdown = self.shutdown.subscribe();
        let inbound = Arc::new(tokio::sync::Semaphore::new(MAX_INBOUND));
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = shutdown.changed() => return,
            };
            match accepted {
                Ok((tcp, peer)) => {
                    let Ok(permit) = inbound.clone().try_acquire_owned() else {
                        self.stats.refused_connections.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(%peer, "refusing a cluster connection: {MAX_INBOUND} are open");
                        continue;
                    };
                    let _ = tcp.set_nodelay(true);
                    let this = self.clone();
                    tokio::spawn(async move {
                        this.inbound(tcp, peer).await;
                        drop(permit);
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cluster accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn inbound(self: Arc<Self>, tcp: TcpStream, peer_addr: SocketAddr) {
        let (io, peer_cert): (Box<dyn Io>, Option<CertificateDer<'static>>) = match &self.tls {
            Some(tls) => match tokio::time::timeout(CONNECT_TIMEOUT * 5, tls.acceptor.accept(tcp)).await {
                Ok(Ok(s)) => {
                    let cert =
                        s.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.clone().into_owned());
                    (Box::new(s), cert)
                }
                Ok(Err(e)) => {
                    self.stats.refused_connections.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%peer_addr, error = %e, "cluster TLS handshake failed");
                    return;
                }
                Err(_) => return,
            },
            None => (Box::new(tcp), None),
        };
        let mut framed = Framed::new(io, hello_codec());
        let hello = match tokio::time::timeout(CONNECT_TIMEOUT * 5, framed.next()).await {
            Ok(Some(Ok(data))) => decode_frame(&data),
            Ok(Some(Err(e))) => {
                self.stats.bad_frames.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%peer_addr, error = %e, "cluster connection sent a bad frame before its hello");
                return;
            }
            _ => return,
        };
        let from = match hello {
            Ok(Frame::Hello { cluster, from, to }) => {
                let refusal = if cluster != self.cluster {
                    Some(format!("this node belongs to cluster '{}', not '{cluster}'", self.cluster))
                } else if to.is_some_and(|t| t != self.me) {
                    Some(format!("this is node {}, not node {}", self.me, to.unwrap_or_default()))
                } else if from == self.me {
                    Some(format!("node {from} connected to itself"))
                } else if let Some(tls) = &self.tls {
                    // The certificate must name the node the hello claims to be.
                    let name = cert_identity::node_name(&tls.server_name, from);
                    cert_identity::check(peer_cert.as_ref(), &name, &format!("node {from}"))
                } else {
                    None
                };
                if let Some(reason) = refusal {
                    self.stats.refused_connections.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%peer_addr, %reason, "refusing a cluster connection");
                    if let Ok(f) = encode_frame(&Frame::HelloRefused { reason }) {
                        let _ = framed.send(f).await;
                    }
                    return;
                }
                from
            }
            Ok(other) => {
                self.stats.bad_frames.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%peer_addr, "cluster connection did not start with a hello: {other:?}");
                return;
            }
            Err(e) => {
                self.stats.bad_frames.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%peer_addr, error = %e, "cluster connection sent a bad hello");
                return;
            }
        };
        if !self.accept_peer(&mut framed, from, peer_addr).await {
            return;
        }
        self.saw(from);
        framed.codec_mut().set_max_frame_length(MAX_FRAME);
        let (sink, mut stream) = framed.split();
        // Replies go out from their own task; acknowledgements from the read
        // loop itself, as soon as what has arrived is read.
        let sink = Arc::new(tokio::sync::Mutex::new(sink));
        let (reply_tx, mut reply_rx) = mpsc::channel::<Bytes>(1024);
        let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_REQUESTS_IN_FLIGHT));
        let writer = {
            let sink = sink.clone();
            tokio::spawn(async move {
                while let Some(b) = reply_rx.recv().await {
                    if sink.lock().await.send(b).await.is_err() {
                        return;
                    }
                }
            })
        };
        // A frame read ahead, and the last sequence number not yet acknowledged.
        let mut ready = None;
        let mut to_ack: Option<u64> = None;
        let mut shutdown = self.shutdown.subscribe();
        loop {
            let data = match ready.take() {
                Some(d) => d,
                None => tokio::select! {
                    d = tokio::time::timeout(IDLE_AFTER, stream.next()) => match d {
                        Ok(d) => d,
                        Err(_) => {
                            tracing::debug!(peer = from, "no frame for {IDLE_AFTER:?}; closing the link");
                            break;
                        }
                    },
                    _ = shutdown.changed() => break,
                },
            };
            let data = match data {
                Some(Ok(d)) => d,
                Some(Err(e)) => {
                    self.stats.bad_frames.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(peer = from, error = %e, "bad frame; closing the link");
                    break;
                }
                None => break,
            };
            self.saw(from);
            match decode_frame(&data) {
                Ok(Frame::Stanza(frame)) => {
                    self.stats.stanzas_received.fetch_add(1, Ordering::Relaxed);
                    if let Some(inbox) = self.inbox.get() {
                        inbox.on_stanza(from, frame);
                    }
                }
                Ok(Frame::Keepalive) => {}
                Ok(Frame::Sequenced { epoch, seq, stanza }) => {
                    let fresh = self.first_time(from, epoch, seq);
                    to_ack = Some(seq);
                    // What else has arrived is read first, so that one
                    // acknowledgement covers a burst. The last stanza of a
                    // burst is acknowledged before it is handed on: the
                    // sender must know before its recipient can have it, or a
                    // death of this node in between would have the sender
                    // route it again, to a second delivery.
                    ready = stream.next().now_or_never();
                    if ready.is_none() && !Self::acknowledge(&sink, &mut to_ack).await {
                        break;
                    }
                    if fresh {
                        self.stats.stanzas_received.fetch_add(1, Ordering::Relaxed);
                        if let Some(inbox) = self.inbox.get() {
                            inbox.on_stanza(from, stanza);
                        }
                    }
                }
                Ok(Frame::Request { id, body }) => {
                    let Some(handler) = self.handler.get().cloned() else {
                        continue;
                    };
                    // Not read further while this many are in flight: back-pressure, not a task per frame.
                    let Ok(permit) = in_flight.clone().acquire_owned().await else { break };
                    let reply_tx = reply_tx.clone();
                    tokio::spawn(async move {
                        let body = handler.handle(from, body).await;
                        if let Ok(f) = encode_frame(&Frame::Response { id, body }) {
                            let _ = reply_tx.send(f).await;
                        }
                        drop(permit);
                    });
                }
                Ok(other) => tracing::warn!(peer = from, "unexpected frame on an inbound link: {other:?}"),
                Err(e) => {
                    self.stats.bad_frames.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(peer = from, error = %e, "bad frame; closing the link");
                    break;
                }
            }
            if ready.is_none() && !Self::acknowledge(&sink, &mut to_ack).await {
                break;
            }
        }
        drop(reply_tx);
        let _ = writer.await;
    }

    /// Sends the acknowledgement of `to_ack`, if any; false when the connection failed.
    async fn acknowledge(sink: &tokio::sync::Mutex<FrameSink>, to_ack: &mut Option<u64>) -> bool {
        let Some(seq) = to_ack.take() else { return true };
        match encode_frame(&Frame::StanzaAck { seq }) {
            Ok(b) => sink.lock().await.send(b).await.is_ok(),
            Err(_) => true,
        }
    }

    /// Whether this is the first time `from` sent `seq` of its `epoch`
    /// (a resend after a reconnect is not).
    fn first_time(&self, from: u64, epoch: u64, seq: u64) -> bool {
        let mut received = self.received.lock().unwrap_or_else(|e| e.into_inner());
        let last = received.entry(from).or_insert((epoch, 0));
        if last.0 != epoch {
            *last = (epoch, 0);
        }
        if seq > last.1 {
            last.1 = seq;
            true
        } else {
            false
        }
    }
}

/// The next frame of a handshake, within its deadline.
async fn next_hello_frame(
    framed: &mut Framed<Box<dyn Io>, LengthDelimitedCodec>,
    peer: u64,
) -> Result<Frame, TransportError> {
    match tokio::time::timeout(CONNECT_TIMEOUT, framed.next()).await {
        Err(_) => Err(TransportError::Unreachable(peer, "no answer to the hello".into())),
        Ok(None) => Err(TransportError::Unreachable(peer, CLOSED_DURING_HELLO.into())),
        Ok(Some(data)) => decode_frame(&data?),
    }
}

fn fail_pending(pending: &Pending, why: &str) {
    let drained: Vec<_> = pending.lock().unwrap_or_else(|e| e.into_inner()).drain().collect();
    for (_, tx) in drained {
        let _ = tx.send(Err(WireError::Failed(why.to_owned())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meerkat_xmpp::ns;

    #[test]
    fn a_huge_declared_length_is_an_error_not_an_allocation() {
        // Version 1, Frame::Hello (variant 0), then a cluster name whose
        // varint length (0xfd: u64 follows) is 2^62.
        let frame = [1u8, 0, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0x40];
        assert!(decode_frame(&frame).is_err());
        let frame = [1u8, 0, 0xfc, 0xff, 0xff, 0xff, 0x0f];
        assert!(decode_frame(&frame).is_err(), "a 256 MiB claim in a 7-byte frame");
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        use meerkat_xmpp::element::{Element, MAX_DESERIALIZED_DEPTH};
        // Element { name: "a", ns: "", attrs: [], children: [Node::Element(..)] }, nested.
        let nested = |levels: usize| {
            let mut body = vec![1u8];
            for _ in 0..levels {
                body.extend_from_slice(&[1, b'a', 0, 0, 1, 0]);
            }
            body.extend_from_slice(&[1, b'a', 0, 0, 0]);
            body
        };
        let ok: Element = decode_versioned(1, &nested(MAX_DESERIALIZED_DEPTH - 1)).unwrap();
        assert_eq!(ok.name, "a");
        let err = decode_versioned::<Element>(1, &nested(1_000_000)).unwrap_err();
        assert!(err.contains("nested deeper"), "{err}");
        // The depth count is given back after an error.
        let again: Element = decode_versioned(1, &nested(MAX_DESERIALIZED_DEPTH - 1)).unwrap();
        assert_eq!(again, ok);
    }

    #[test]
    fn frames_round_trip_and_reject_other_versions() {
        let frame = Frame::Stanza(StanzaFrame {
            target: StanzaTarget::Session { jid: "a@x/r".into(), sid: 9, if_available: true },
            from: "b@x/r".into(),
            to: "a@x/r".into(),
            stanza: Element::new("message", ns::CLIENT)
                .with_attr("to", "a@x/r")
                .with_child(Element::new("body", ns::CLIENT).with_text("hi <there> & \u{1F600}")),
        });
        let bytes = encode_frame(&frame).unwrap();
        let back = decode_frame(&bytes).unwrap();
        assert_eq!(format!("{back:?}"), format!("{frame:?}"));
        let mut wrong = bytes.to_vec();
        wrong[0] = 9;
        assert!(decode_frame(&wrong).is_err());
        assert!(decode_frame(&[]).is_err());
        assert!(decode_frame(&[PROTOCOL_VERSION, 200, 1]).is_err());
    }

    /// Frames written before `StanzaTarget::Domain` existed keep their
    /// encoding, so nodes of the release before it understand them.
    #[test]
    fn frames_without_the_domain_target_keep_their_encoding() {
        // Version, Frame::Stanza (5), StanzaTarget::Account (1), from, to; then the element.
        let account = encode_frame(&Frame::Stanza(stanza(1))).unwrap();
        assert_eq!(&account[..11], [PROTOCOL_VERSION, 5, 1, 3, b'a', b'@', b'x', 3, b'b', b'@', b'x']);
        assert!(matches!(decode_frame(&account), Ok(Frame::Stanza(f)) if f.target == StanzaTarget::Account));
        let session = StanzaTarget::Session { jid: "a@x/r".into(), sid: 9, if_available: true };
        let bytes = bincode::serde::encode_to_vec(&session, bincode_config()).unwrap();
        assert_eq!(bytes, [0, 5, b'a', b'@', b'x', b'/', b'r', 9, 1]);
        let domain = StanzaTarget::Domain { domain: "irc.x".into() };
        let bytes = bincode::serde::encode_to_vec(&domain, bincode_config()).unwrap();
        assert_eq!(bytes, [2, 5, b'i', b'r', b'c', b'.', b'x']);
        let frame = Frame::Stanza(StanzaFrame { target: domain, ..stanza(2) });
        let back = decode_frame(&encode_frame(&frame).unwrap()).unwrap();
        assert_eq!(format!("{back:?}"), format!("{frame:?}"));
    }

    struct Collect(Mutex<Vec<StanzaFrame>>);
    impl StanzaInbox for Collect {
        fn on_stanza(&self, _from: u64, frame: StanzaFrame) {
            self.0.lock().unwrap().push(frame);
        }
        fn undeliverable(&self, _node: u64, _frame: StanzaFrame, _queued_at: SystemTime) {}
    }

    struct Echo;
    impl RequestHandler for Echo {
        fn handle(&self, from: u64, request: Request) -> Reply<'_> {
            Box::pin(async move {
                match request {
                    Request::Remove { node } if node == from => Ok(Response::Done),
                    _ => Err(WireError::Failed("no".into())),
                }
            })
        }
    }

    fn stanza(n: usize) -> StanzaFrame {
        StanzaFrame {
            target: StanzaTarget::Account,
            from: "a@x".into(),
            to: "b@x".into(),
            stanza: Element::new("message", ns::CLIENT).with_attr("id", n.to_string()),
        }
    }

    #[tokio::test]
    async fn stanzas_keep_their_order_and_requests_get_answers() {
        let a = Transport::new(1, "c".into(), None);
        let b = Transport::new(2, "c".into(), None);
        let inbox = Arc::new(Collect(Mutex::new(Vec::new())));
        b.set_inbox(inbox.clone());
        b.set_handler(Arc::new(Echo));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(b.clone().serve(listener));
        a.set_address(2, &addr);
        for n in 0..2000 {
            a.send_stanza(2, stanza(n)).unwrap();
        }
        let resp = a.request(2, Request::Remove { node: 1 }, Duration::from_secs(5)).await.unwrap();
        assert!(matches!(resp, Response::Done));
        let err = a.request(2, Request::Remove { node: 7 }, Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(err, TransportError::Remote(WireError::Failed(_))));
        // The request was sent after every stanza on the same connection, so all arrived first.
        let got = inbox
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|f| f.stanza.attr("id").unwrap().parse::<usize>().unwrap())
            .collect::<Vec<_>>();
        assert_eq!(got, (0..2000).collect::<Vec<_>>());
        a.shutdown();
        b.shutdown();
    }

    #[tokio::test]
    async fn hello_refuses_the_wrong_cluster_or_node() {
        let b = Transport::new(2, "c".into(), None);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(b.clone().serve(listener));
        let other_cluster = Transport::new(1, "d".into(), None);
        assert!(matches!(other_cluster.connect(&addr, Some(2)).await, Err(TransportError::Refused(_))));
        let wrong_node = Transport::new(1, "c".into(), None);
        assert!(matches!(wrong_node.connect(&addr, Some(3)).await, Err(TransportError::Refused(_))));
        assert!(wrong_node.connect(&addr, Some(2)).await.is_ok());
        b.shutdown();
    }

    #[tokio::test]
    async fn with_a_shared_secret_both_ends_prove_it_or_are_refused() {
        let secret = |s: &str| Some(SharedSecret::new(s).unwrap());
        let b = Transport::with_secret(2, "c".into(), None, secret("the cluster's own secret"));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(b.clone().serve(listener));

        let same = Transport::with_secret(1, "c".into(), None, secret("the cluster's own secret"));
        assert!(same.connect(&addr, Some(2)).await.is_ok(), "knowing the secret, by node id");
        assert!(same.connect(&addr, None).await.is_ok(), "and by address alone (joining)");
        let refused = |r: Result<_, TransportError>| matches!(r, Err(TransportError::Refused(_)));
        let none = Transport::new(1, "c".into(), None);
        assert!(refused(none.connect(&addr, Some(2)).await), "the right name is not enough");
        let wrong = Transport::with_secret(1, "c".into(), None, secret("another cluster's secret"));
        assert!(refused(wrong.connect(&addr, Some(2)).await));
        assert_eq!(b.stats.refused_connections.load(Ordering::Relaxed), 2);

        // A node with a secret does not talk to one that checks none.
        let open = Transport::new(3, "c".into(), None);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open_addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(open.clone().serve(listener));
        assert!(refused(same.connect(&open_addr, Some(3)).await));
        b.shutdown();
        open.shutdown();
    }

    #[tokio::test]
    async fn a_down_peer_gives_its_queued_stanzas_back() {
        let a = Transport::new(1, "c".into(), None);
        let back = Arc::new(Back(Mutex::new(Vec::new())));
        a.set_inbox(back.clone());
        // Nothing listens there.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        drop(l);
        a.set_address(5, &addr);
        for n in 0..3 {
            a.send_stanza(5, stanza(n)).unwrap();
        }
        a.peer_down(5);
        back.wait_for(3).await;
        assert_eq!(back.bodies(), vec!["0", "1", "2"]);
        a.shutdown();
    }

    /// A peer that said hello and then trickles a frame it never finishes
    /// is closed once [`IDLE_AFTER`] passed without a complete frame.
    #[tokio::test(start_paused = true)]
    async fn an_inbound_link_that_brings_no_frame_is_closed() {
        use tokio::io::AsyncWriteExt;
        let b = Transport::new(2, "c".into(), None);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(b.clone().serve(listener));
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut framed = Framed::new(tcp, LengthDelimitedCodec::new());
        framed.send(encode_frame(&Frame::Hello { cluster: "c".into(), from: 1, to: Some(2) }).unwrap()).await.unwrap();
        let answer = decode_frame(&framed.next().await.unwrap().unwrap()).unwrap();
        assert!(matches!(answer, Frame::HelloOk { node: 2 }), "{answer:?}");
        // A frame of 100 bytes, of which 3 come.
        framed.get_mut().write_all(&[0, 0, 0, 100, 1, 2, 3]).await.unwrap();
        let started = tokio::time::Instant::now();
        let end = tokio::time::timeout(IDLE_AFTER * 2, framed.next())
            .await
            .unwrap_or_else(|_| panic!("still open {:?} later", IDLE_AFTER * 2));
        assert!(end.as_ref().is_none_or(|r| r.is_err()), "the link was not closed: {end:?}");
        assert!(started.elapsed() >= IDLE_AFTER, "closed after {:?}", started.elapsed());
        b.shutdown();
    }

    struct Back(Mutex<Vec<StanzaFrame>>);
    impl StanzaInbox for Back {
        fn on_stanza(&self, _: u64, _: StanzaFrame) {}
        fn undeliverable(&self, node: u64, frame: StanzaFrame, _queued_at: SystemTime) {
            assert_eq!(node, 5);
            self.0.lock().unwrap().push(frame);
        }
    }
    impl Back {
        async fn wait_for(&self, n: usize) {
            for _ in 0..500 {
                if self.0.lock().unwrap().len() >= n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("{} of {n} stanzas came back", self.0.lock().unwrap().len());
        }
        fn bodies(&self) -> Vec<String> {
            self.0.lock().unwrap().iter().map(|f| f.stanza.attr("id").unwrap_or_default().to_owned()).collect()
        }
    }

    /// A peer that takes the connection and the stanzas, then neither
    /// acknowledges nor answers nor closes (a node that hangs, or whose
    /// packets are dropped): declared down, it gives back every stanza it
    /// has not acknowledged, then those still queued, in order.
    #[tokio::test]
    async fn a_peer_that_stops_acknowledging_gives_back_what_it_did_not_acknowledge() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (got_tx, mut got_rx) = mpsc::channel::<u64>(16);
        let silent = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut framed = Framed::new(tcp, LengthDelimitedCodec::new());
            let _hello = framed.next().await.unwrap().unwrap();
            framed.send(encode_frame(&Frame::HelloOk { node: 5 }).unwrap()).await.unwrap();
            while let Some(Ok(data)) = framed.next().await {
                if let Ok(Frame::Sequenced { seq, .. }) = decode_frame(&data) {
                    got_tx.send(seq).await.unwrap();
                }
            }
            // Keeps the connection open, as a hung peer would.
            std::future::pending::<()>().await;
        });
        let a = Transport::new(1, "c".into(), None);
        let back = Arc::new(Back(Mutex::new(Vec::new())));
        a.set_inbox(back.clone());
        a.set_address(5, &addr);
        for n in 0..3 {
            a.send_stanza(5, stanza(n)).unwrap();
        }
        for seq in 1..=3 {
            assert_eq!(got_rx.recv().await, Some(seq));
        }
        a.peer_down(5);
        back.wait_for(3).await;
        assert_eq!(back.bodies(), vec!["0", "1", "2"]);
        assert_eq!(a.stats.stanzas_requeued.load(Ordering::Relaxed), 3);
        a.shutdown();
        silent.abort();
    }
}
