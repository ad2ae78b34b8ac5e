//! Links between data centers.
//!
//! # Wire format
//! A frame is a 4-byte big-endian length, then a protocol version byte
//! ([`GD_PROTOCOL_VERSION`]), then the bincode encoding of a [`GdFrame`]. A
//! connection starts with [`GdFrame::Hello`], which names the global host, the
//! sending data center, the data center the sender believes it reached and
//! the sender's link instance; a mismatch is refused before anything else is
//! read. This is not S2S: both ends are the same server, and stanzas keep
//! their addresses, hop TTL and origin.
//!
//! # Delivery
//! - Each [`OutLink`] is one connection to one endpoint of a remote data
//!   center, with a bounded queue and a bounded window of unacknowledged
//!   frames. Frames carry a sequence number of the link instance.
//! - The receiver acknowledges a frame once it has finished with it (delivered
//!   in its data center, forwarded and acknowledged further on, or handled as
//!   undeliverable). After a reconnect the sender resends every frame not yet
//!   acknowledged, in order; the receiver recognises frames it already has by
//!   (link instance, sequence) and acknowledges them again without handling
//!   them twice. A dropped connection therefore loses and duplicates nothing.
//! - Pings every second detect a link that stopped carrying packets; one
//!   silent for [`DEAD_AFTER`] is dropped and dialled again, with backoff.
//! - A link whose endpoint is gone hands its frames back to global routing
//!   ([`LinkEvents::failed`]), which sends them through another live
//!   endpoint of the same data center, in order: as soon as the endpoint
//!   refuses or closes two connections in a row (its node is down or
//!   restarting; one alone may be a proxy or a healed partition), and
//!   after [`FAIL_OVER_AFTER`] without a connection when it only stays
//!   silent (a dead host, or a partition; frames resent elsewhere while the
//!   old endpoint may still hold them could be delivered twice, so silence is
//!   given longer).
//! - The [`GdFrame::Hello`] is answered before anything else, so a sender
//!   never writes stanzas to a peer that would refuse them.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use meerkat_cluster::cert_identity;
use meerkat_cluster::peer_auth::{self, Role, SharedSecret};
use meerkat_cluster::transport::{decode_versioned, encode_versioned, ClusterTls};
use meerkat_xmpp::element::Element;
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify};
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

pub const GD_PROTOCOL_VERSION: u8 = 1;
/// Largest frame accepted.
pub const MAX_FRAME: usize = 4 * 1024 * 1024;
/// A link that answered nothing for this long is dropped and dialled again.
pub const DEAD_AFTER: Duration = Duration::from_secs(3);
const PING_EVERY: Duration = Duration::from_secs(1);
/// An inbound link that brings no complete frame for this long is closed.
pub const IDLE_AFTER: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A sender's dedup state is kept this long after its last connection closed.
const SENDER_STATE_TTL: Duration = Duration::from_secs(600);
/// A link that has not connected for this long while its endpoint only stays
/// silent gives its frames to another endpoint.
pub const FAIL_OVER_AFTER: Duration = Duration::from_secs(10);

/// A stanza crossing to another data center.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GdStanza {
    /// Sequence number within the sending link instance.
    pub seq: u64,
    /// Hops left; a data center that gets 0 does not forward again.
    pub ttl: u8,
    /// The data center where the stanza entered global routing.
    pub origin_dc: String,
    /// Start of the sender's session, when the sender is a local session there.
    pub origin_start_micros: Option<i64>,
    pub from: String,
    pub to: String,
    pub stanza: Element,
}

/// Every frame on a link.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum GdFrame {
    Hello {
        global_host: String,
        from_dc: String,
        to_dc: String,
        instance: u64,
    },
    HelloOk {
        dc: String,
    },
    Refused {
        reason: String,
    },
    Stanza(GdStanza),
    Ack {
        seqs: Vec<u64>,
    },
    Ping,
    Pong,
    /// The listening side asks the dialler to prove it knows the shared
    /// secret (`meerkat_cluster::peer_auth`).
    Challenge {
        nonce: Vec<u8>,
    },
    /// The dialler's proof, with its own nonce.
    Proof {
        nonce: Vec<u8>,
        mac: Vec<u8>,
    },
    /// The listening side accepts, with its own proof.
    Accepted {
        dc: String,
        mac: Vec<u8>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("codec: {0}")]
    Codec(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("refused: {0}")]
    Refused(String),
    #[error("timed out")]
    Timeout,
    #[error("connection closed")]
    Closed,
}

impl LinkError {
    /// The other end said no, or is not there at all (its process is gone or
    /// restarting), as opposed to staying silent.
    fn is_definite(&self) -> bool {
        match self {
            LinkError::Timeout => false,
            LinkError::Io(e) => meerkat_cluster::transport::nobody_there(e),
            LinkError::Codec(_) | LinkError::Refused(_) | LinkError::Closed => true,
        }
    }
}

pub fn encode_frame(frame: &GdFrame) -> Result<Bytes, LinkError> {
    encode_versioned(GD_PROTOCOL_VERSION, frame).map_err(LinkError::Codec)
}

pub fn decode_frame(data: &[u8]) -> Result<GdFrame, LinkError> {
    decode_versioned(GD_PROTOCOL_VERSION, data).map_err(LinkError::Codec)
}

fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder().max_frame_length(MAX_FRAME).new_codec()
}

/// Frames before the hello is answered are at most this long (a stranger
/// may not make the node buffer [`MAX_FRAME`]); after it, [`MAX_FRAME`].
pub const HELLO_MAX_FRAME: usize = 4096;
/// Inbound links at once; past it a new connection is closed at once.
pub const MAX_INBOUND: usize = 256;

/// The next frame of a handshake, within its deadline.
async fn next_hello_frame(
    reader: &mut FramedRead<tokio::io::ReadHalf<Box<dyn Io>>, LengthDelimitedCodec>,
) -> Result<GdFrame, LinkError> {
    match tokio::time::timeout(CONNECT_TIMEOUT, reader.next()).await.map_err(|_| LinkError::Timeout)? {
        Some(Ok(bytes)) => decode_frame(&bytes),
        Some(Err(e)) => Err(e.into()),
        None => Err(LinkError::Closed),
    }
}

fn hello_codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder().max_frame_length(HELLO_MAX_FRAME).new_codec()
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// What the links report to global routing.
pub trait LinkEvents: Send + Sync {
    /// The remote data center finished with a frame this node sent; `token`
    /// is what was passed to [`OutLink::try_send`].
    fn acked(&self, token: u64);
    /// A stopped link gives back the frames it could not deliver, in order.
    fn failed(&self, tokens: Vec<u64>);
    /// A stanza arrived from another data center. Call [`Upstream::done`]
    /// once it is delivered, forwarded and acknowledged, or handled as
    /// undeliverable. Must not block.
    fn incoming(&self, from_dc: &str, upstream: Upstream, stanza: GdStanza);
}

/// Identity and settings shared by a node's links.
#[derive(Clone)]
pub struct LinkConfig {
    pub global_host: String,
    pub local_host: String,
    pub tls: Option<ClusterTls>,
    /// `connections.shared_secret`: both ends of a link prove they know it.
    pub secret: Option<SharedSecret>,
    /// Frames queued plus unacknowledged on one link before senders are refused.
    pub window: usize,
}

/// Counters of one outgoing link.
#[derive(Debug, Default)]
pub struct OutLinkStats {
    pub connected: AtomicBool,
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub resent: AtomicU64,
    pub connects: AtomicU64,
    pub failures: AtomicU64,
    pub unacked: AtomicU64,
    pub refused_full: AtomicU64,
    /// Frames given to another endpoint because this one was unreachable.
    pub handed_back: AtomicU64,
}

struct Pending {
    token: u64,
    frame: GdStanza,
}

/// One connection to one endpoint of a remote data center.
pub struct OutLink {
    pub dc: String,
    pub addr: String,
    tx: mpsc::Sender<(u64, GdStanza)>,
    pub stats: Arc<OutLinkStats>,
    queued: Arc<AtomicU64>,
    stop: watch::Sender<bool>,
}

impl OutLink {
    /// Starts a link that dials `addr` until it is stopped.
    pub fn start(cfg: LinkConfig, dc: String, addr: String, events: Weak<dyn LinkEvents>) -> Arc<OutLink> {
        let (tx, rx) = mpsc::channel(cfg.window.max(1));
        let (stop, stop_rx) = watch::channel(false);
        let link = Arc::new(OutLink {
            dc: dc.clone(),
            addr: addr.clone(),
            tx,
            stats: Arc::new(OutLinkStats::default()),
            queued: Arc::new(AtomicU64::new(0)),
            stop,
        });
        let task = LinkTask {
            cfg,
            dc,
            addr,
            instance: rand::random::<u64>() | 1,
            rx,
            unacked: Arc::new(Mutex::new(BTreeMap::new())),
            next_seq: 1,
            stats: link.stats.clone(),
            queued: link.queued.clone(),
            events,
            stop: stop_rx,
        };
        tokio::spawn(task.run());
        link
    }

    /// Queues a stanza; `token` comes back through [`LinkEvents::acked`]. The
    /// stanza comes back when the link's queue is full.
    // The stanza comes back by value so that the caller keeps it without a copy.
    #[allow(clippy::result_large_err)]
    pub fn try_send(&self, token: u64, stanza: GdStanza) -> Result<(), GdStanza> {
        // Counted before the send: the link task may take the frame at once.
        self.queued.fetch_add(1, Ordering::Relaxed);
        match self.tx.try_send((token, stanza)) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.queued.fetch_sub(1, Ordering::Relaxed);
                self.stats.refused_full.fetch_add(1, Ordering::Relaxed);
                Err(e.into_inner().1)
            }
        }
    }

    pub fn queued(&self) -> u64 {
        self.queued.load(Ordering::Relaxed)
    }

    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for OutLink {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

struct LinkTask {
    cfg: LinkConfig,
    dc: String,
    addr: String,
    instance: u64,
    rx: mpsc::Receiver<(u64, GdStanza)>,
    unacked: Arc<Mutex<BTreeMap<u64, Pending>>>,
    next_seq: u64,
    stats: Arc<OutLinkStats>,
    queued: Arc<AtomicU64>,
    events: Weak<dyn LinkEvents>,
    stop: watch::Receiver<bool>,
}

/// A connection to `addr`, with the certificate the endpoint presented (with TLS).
async fn dial(cfg: &LinkConfig, addr: &str) -> Result<(Box<dyn Io>, Option<CertificateDer<'static>>), LinkError> {
    let tcp =
        tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await.map_err(|_| LinkError::Timeout)??;
    let _ = tcp.set_nodelay(true);
    match &cfg.tls {
        None => Ok((Box::new(tcp), None)),
        Some(tls) => {
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, tls.connector.connect(tls.server_name.clone(), tcp))
                .await
                .map_err(|_| LinkError::Timeout)??;
            let cert = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.clone().into_owned());
            Ok((Box::new(stream), cert))
        }
    }
}

impl LinkTask {
    async fn run(mut self) {
        let mut backoff = BACKOFF_MIN;
        // Since when the link has had no connection.
        let mut down_since = Instant::now();
        // Attempts in a row that the endpoint refused or closed. One alone
        // proves little: a proxy or a healed partition closes a connection it
        // held; two in a row mean nobody is serving there.
        let mut refusals = 0u32;
        loop {
            if *self.stop.borrow() {
                return self.give_back();
            }
            match self.connect().await {
                Ok((reader, writer)) => {
                    backoff = BACKOFF_MIN;
                    refusals = 0;
                    self.stats.connects.fetch_add(1, Ordering::Relaxed);
                    self.stats.connected.store(true, Ordering::Relaxed);
                    tracing::info!(dc = %self.dc, addr = %self.addr, "link to data center up");
                    let result = self.serve(reader, writer).await;
                    self.stats.connected.store(false, Ordering::Relaxed);
                    down_since = Instant::now();
                    match result {
                        Ok(()) => return self.give_back(),
                        Err(e) => {
                            tracing::warn!(dc = %self.dc, addr = %self.addr, error = %e, "link to data center lost")
                        }
                    }
                }
                Err(e) => {
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(dc = %self.dc, addr = %self.addr, error = %e, "cannot reach data center endpoint");
                    refusals = if e.is_definite() { refusals + 1 } else { 0 };
                    // What waits here goes through another endpoint rather than wait for this one.
                    if refusals >= 2 || down_since.elapsed() >= FAIL_OVER_AFTER {
                        self.hand_back();
                    }
                }
            }
            let mut stop = self.stop.clone();
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.changed() => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// The link stops: every frame not acknowledged goes back to global routing.
    fn give_back(mut self) {
        self.rx.close();
        self.hand_back();
    }

    /// Hands every frame not acknowledged, then every frame queued, back to
    /// global routing, in order. The link keeps dialling its endpoint.
    fn hand_back(&mut self) {
        let mut tokens: Vec<u64> = {
            let mut unacked = self.unacked.lock().unwrap_or_else(|e| e.into_inner());
            self.stats.unacked.store(0, Ordering::Relaxed);
            std::mem::take(&mut *unacked).into_values().map(|p| p.token).collect()
        };
        while let Ok((t, _)) = self.rx.try_recv() {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            tokens.push(t);
        }
        if !tokens.is_empty() {
            self.stats.handed_back.fetch_add(tokens.len() as u64, Ordering::Relaxed);
            if let Some(ev) = self.events.upgrade() {
                tracing::info!(dc = %self.dc, addr = %self.addr, frames = tokens.len(), "endpoint unreachable; its frames go another way");
                ev.failed(tokens);
            }
        }
    }

    async fn connect(
        &mut self,
    ) -> Result<
        (
            FramedRead<tokio::io::ReadHalf<Box<dyn Io>>, LengthDelimitedCodec>,
            FramedWrite<tokio::io::WriteHalf<Box<dyn Io>>, LengthDelimitedCodec>,
        ),
        LinkError,
    > {
        let (io, cert) = dial(&self.cfg, &self.addr).await?;
        // With mutual TLS the endpoint's certificate must name the data center dialled.
        if self.cfg.tls.is_some() {
            if let Some(why) = cert_identity::check(cert.as_ref(), &self.dc, &format!("the endpoint {}", self.addr)) {
                return Err(LinkError::Refused(why));
            }
        }
        let (r, w) = tokio::io::split(io);
        let mut reader = FramedRead::new(r, hello_codec());
        let mut writer = FramedWrite::new(w, codec());
        let hello = GdFrame::Hello {
            global_host: self.cfg.global_host.clone(),
            from_dc: self.cfg.local_host.clone(),
            to_dc: self.dc.clone(),
            instance: self.instance,
        };
        writer.send(encode_frame(&hello)?).await?;
        let instance = self.instance.to_be_bytes();
        let context: [&[u8]; 4] =
            [self.cfg.global_host.as_bytes(), self.cfg.local_host.as_bytes(), self.dc.as_bytes(), &instance];
        match next_hello_frame(&mut reader).await? {
            GdFrame::HelloOk { .. } if self.cfg.secret.is_some() => {
                return Err(LinkError::Refused(
                    "the data center does not check connections.shared_secret: set the same one everywhere".into(),
                ))
            }
            GdFrame::HelloOk { .. } => {}
            GdFrame::Challenge { nonce: listener_nonce } => {
                let Some(secret) = &self.cfg.secret else {
                    return Err(LinkError::Refused(
                        "the data center requires a shared secret: set connections.shared_secret".into(),
                    ));
                };
                let dialler_nonce = peer_auth::nonce();
                let mac = secret.proof(Role::Dialler, &context, &listener_nonce, &dialler_nonce);
                writer.send(encode_frame(&GdFrame::Proof { nonce: dialler_nonce.clone(), mac })?).await?;
                match next_hello_frame(&mut reader).await? {
                    GdFrame::Accepted { mac, .. } => {
                        if !secret.verify(Role::Listener, &context, &listener_nonce, &dialler_nonce, &mac) {
                            return Err(LinkError::Refused(
                                "the data center's proof is wrong: it has another connections.shared_secret".into(),
                            ));
                        }
                    }
                    GdFrame::Refused { reason } => return Err(LinkError::Refused(reason)),
                    other => return Err(LinkError::Codec(format!("unexpected reply to a proof: {other:?}"))),
                }
            }
            GdFrame::Refused { reason } => return Err(LinkError::Refused(reason)),
            other => return Err(LinkError::Codec(format!("unexpected reply to hello: {other:?}"))),
        }
        reader.decoder_mut().set_max_frame_length(MAX_FRAME);
        Ok((reader, writer))
    }

    /// Runs one connection. Ok when the link was stopped, Err when the connection failed.
    async fn serve(
        &mut self,
        mut reader: FramedRead<tokio::io::ReadHalf<Box<dyn Io>>, LengthDelimitedCodec>,
        mut writer: FramedWrite<tokio::io::WriteHalf<Box<dyn Io>>, LengthDelimitedCodec>,
    ) -> Result<(), LinkError> {
        // Everything not yet acknowledged goes again, in order.
        let resend: Vec<Bytes> = {
            let unacked = self.unacked.lock().unwrap_or_else(|e| e.into_inner());
            unacked.values().filter_map(|p| encode_frame(&GdFrame::Stanza(p.frame.clone())).ok()).collect()
        };
        if !resend.is_empty() {
            self.stats.resent.fetch_add(resend.len() as u64, Ordering::Relaxed);
            tracing::info!(dc = %self.dc, addr = %self.addr, frames = resend.len(), "resending unacknowledged frames");
        }
        for b in resend {
            writer.feed(b).await?;
        }
        SinkExt::<Bytes>::flush(&mut writer).await?;

        let last_heard = Arc::new(Mutex::new(Instant::now()));
        let freed = Arc::new(Notify::new());
        let mut read_task = {
            let unacked = self.unacked.clone();
            let stats = self.stats.clone();
            let events = self.events.clone();
            let last_heard = last_heard.clone();
            let freed = freed.clone();
            tokio::spawn(async move {
                while let Some(frame) = reader.next().await {
                    let frame = decode_frame(&frame?)?;
                    *last_heard.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
                    match frame {
                        GdFrame::Ack { seqs } => {
                            let mut tokens = Vec::with_capacity(seqs.len());
                            {
                                let mut u = unacked.lock().unwrap_or_else(|e| e.into_inner());
                                for s in seqs {
                                    if let Some(p) = u.remove(&s) {
                                        tokens.push(p.token);
                                    }
                                }
                                stats.unacked.store(u.len() as u64, Ordering::Relaxed);
                            }
                            stats.acked.fetch_add(tokens.len() as u64, Ordering::Relaxed);
                            freed.notify_one();
                            if let Some(ev) = events.upgrade() {
                                for t in tokens {
                                    ev.acked(t);
                                }
                            }
                        }
                        GdFrame::Pong => {}
                        other => return Err(LinkError::Codec(format!("unexpected frame on a link: {other:?}"))),
                    }
                }
                Err::<(), LinkError>(LinkError::Closed)
            })
        };
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let result = loop {
            let room = self.unacked.lock().unwrap_or_else(|e| e.into_inner()).len() < self.cfg.window;
            tokio::select! {
                _ = self.stop.changed() => {
                    if *self.stop.borrow() {
                        break Ok(());
                    }
                }
                r = &mut read_task => {
                    break match r {
                        Ok(Err(e)) => Err(e),
                        _ => Err(LinkError::Closed),
                    };
                }
                _ = ping.tick() => {
                    let silent = last_heard.lock().unwrap_or_else(|e| e.into_inner()).elapsed();
                    if silent > DEAD_AFTER {
                        break Err(LinkError::Timeout);
                    }
                    if let Err(e) = writer.send(encode_frame(&GdFrame::Ping)?).await {
                        break Err(e.into());
                    }
                }
                _ = freed.notified(), if !room => {}
                item = self.rx.recv(), if room => {
                    let Some((token, mut frame)) = item else { break Ok(()) };
                    self.queued.fetch_sub(1, Ordering::Relaxed);
                    frame.seq = self.next_seq;
                    self.next_seq += 1;
                    let bytes = encode_frame(&GdFrame::Stanza(frame.clone()));
                    {
                        let mut u = self.unacked.lock().unwrap_or_else(|e| e.into_inner());
                        u.insert(frame.seq, Pending { token, frame });
                        self.stats.unacked.store(u.len() as u64, Ordering::Relaxed);
                    }
                    let bytes = match bytes {
                        Ok(b) => b,
                        Err(e) => break Err(e),
                    };
                    self.stats.sent.fetch_add(1, Ordering::Relaxed);
                    // Write everything already queued before flushing once.
                    if let Err(e) = writer.feed(bytes).await {
                        break Err(e.into());
                    }
                    if self.rx.is_empty() {
                        if let Err(e) = SinkExt::<Bytes>::flush(&mut writer).await {
                            break Err(LinkError::from(e));
                        }
                    }
                }
            }
        };
        read_task.abort();
        result
    }
}

/// A frame a remote data center waits to see acknowledged.
pub struct Upstream {
    instance: u64,
    seq: u64,
    inbound: Weak<Inbound>,
}

impl Upstream {
    /// Acknowledges the frame to its sender (now, or on its next connection).
    pub fn done(self) {
        if let Some(inbound) = self.inbound.upgrade() {
            inbound.done(self.instance, self.seq);
        }
    }
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Upstream({:x}/{})", self.instance, self.seq)
    }
}

enum Reply {
    Ack(u64),
    Pong,
}

/// What a receiving node remembers about one sending link instance.
struct SenderState {
    /// The current connection's writer, if connected.
    writer: Option<(u64, mpsc::Sender<Reply>)>,
    /// Every sequence number at or below this is finished.
    done_upto: u64,
    done_above: BTreeSet<u64>,
    in_progress: HashSet<u64>,
    closed_at: Option<Instant>,
}

impl SenderState {
    fn is_done(&self, seq: u64) -> bool {
        seq <= self.done_upto || self.done_above.contains(&seq)
    }

    fn mark_done(&mut self, seq: u64) {
        self.in_progress.remove(&seq);
        if seq == self.done_upto + 1 {
            self.done_upto = seq;
            while self.done_above.remove(&(self.done_upto + 1)) {
                self.done_upto += 1;
            }
        } else if seq > self.done_upto {
            self.done_above.insert(seq);
        }
    }
}

/// Counters of the receiving side.
#[derive(Debug, Default)]
pub struct InboundStats {
    pub received: AtomicU64,
    pub duplicates: AtomicU64,
    pub connections: AtomicU64,
    pub refused: AtomicU64,
    /// Connections closed for a frame that did not decode (or too big a one).
    pub bad_frames: AtomicU64,
}

/// The receiving side of a node's links.
pub struct Inbound {
    cfg: LinkConfig,
    senders: Mutex<HashMap<u64, SenderState>>,
    next_conn: AtomicU64,
    events: Weak<dyn LinkEvents>,
    pub stats: InboundStats,
}

impl Inbound {
    pub fn new(cfg: LinkConfig, events: Weak<dyn LinkEvents>) -> Arc<Inbound> {
        Arc::new(Inbound {
            cfg,
            senders: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            events,
            stats: InboundStats::default(),
        })
    }

    fn done(&self, instance: u64, seq: u64) {
        let writer = {
            let mut senders = self.senders.lock().unwrap_or_else(|e| e.into_inner());
            let Some(state) = senders.get_mut(&instance) else { return };
            state.mark_done(seq);
            state.writer.as_ref().map(|(_, w)| w.clone())
        };
        // The sender resends what it did not see acknowledged, and gets the ack then.
        if let Some(w) = writer {
            let _ = w.try_send(Reply::Ack(seq));
        }
    }

    /// Accepts connections until `shutdown` turns true.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
        let mut sweep = tokio::time::interval(Duration::from_secs(60));
        let open = Arc::new(tokio::sync::Semaphore::new(MAX_INBOUND));
        loop {
            tokio::select! {
                _ = shutdown.changed() => {
                    if *shutdown.borrow() {
                        return;
                    }
                }
                _ = sweep.tick() => self.sweep(),
                accepted = listener.accept() => {
                    let Ok((tcp, peer)) = accepted else { continue };
                    let Ok(permit) = open.clone().try_acquire_owned() else {
                        self.stats.refused.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(%peer, "data center link refused: {MAX_INBOUND} are open");
                        continue;
                    };
                    let _ = tcp.set_nodelay(true);
                    let me = self.clone();
                    let shutdown = shutdown.clone();
                    tokio::spawn(async move {
                        let (io, cert): (Box<dyn Io>, Option<CertificateDer<'static>>) = match &me.cfg.tls {
                            None => (Box::new(tcp), None),
                            Some(tls) => match tokio::time::timeout(CONNECT_TIMEOUT, tls.acceptor.accept(tcp)).await {
                                Ok(Ok(s)) => {
                                    let cert = s.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.clone().into_owned());
                                    (Box::new(s), cert)
                                }
                                _ => {
                                    me.stats.refused.fetch_add(1, Ordering::Relaxed);
                                    tracing::warn!(%peer, "data center link: TLS handshake failed");
                                    return;
                                }
                            },
                        };
                        if let Err(e) = me.connection(io, cert, shutdown).await {
                            let bad_frame = match &e {
                                LinkError::Codec(_) => true,
                                LinkError::Io(io) => io.kind() == std::io::ErrorKind::InvalidData,
                                _ => false,
                            };
                            if bad_frame {
                                me.stats.bad_frames.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!(%peer, error = %e, "data center link closed: bad frame");
                            } else {
                                tracing::debug!(%peer, error = %e, "data center link closed");
                            }
                        }
                        drop(permit);
                    });
                }
            }
        }
    }

    fn sweep(&self) {
        let mut senders = self.senders.lock().unwrap_or_else(|e| e.into_inner());
        senders.retain(|_, s| {
            s.writer.is_some()
                || !s.in_progress.is_empty()
                || s.closed_at.is_none_or(|t| t.elapsed() < SENDER_STATE_TTL)
        });
    }

    async fn connection(
        self: &Arc<Self>,
        io: Box<dyn Io>,
        cert: Option<CertificateDer<'static>>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), LinkError> {
        let (r, w) = tokio::io::split(io);
        let mut reader = FramedRead::new(r, hello_codec());
        let mut writer = FramedWrite::new(w, codec());
        let first = tokio::time::timeout(CONNECT_TIMEOUT, reader.next()).await.map_err(|_| LinkError::Timeout)?;
        let (from_dc, instance) = match first {
            Some(Ok(b)) => match decode_frame(&b)? {
                GdFrame::Hello { global_host, from_dc, to_dc, instance } => {
                    let reason = if global_host != self.cfg.global_host {
                        Some(format!("global host is {}, not {global_host}", self.cfg.global_host))
                    } else if to_dc != self.cfg.local_host {
                        Some(format!("this is data center {}, not {to_dc}", self.cfg.local_host))
                    } else if from_dc == self.cfg.local_host {
                        Some("a data center cannot link to itself".to_owned())
                    } else if self.cfg.tls.is_some() {
                        // The certificate must name the data center the hello claims to be.
                        cert_identity::check(cert.as_ref(), &from_dc, &format!("data center {from_dc}"))
                    } else {
                        None
                    };
                    if let Some(reason) = reason {
                        self.stats.refused.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(%from_dc, %reason, "data center link refused");
                        writer.send(encode_frame(&GdFrame::Refused { reason: reason.clone() })?).await?;
                        return Err(LinkError::Refused(reason));
                    }
                    (from_dc, instance)
                }
                other => return Err(LinkError::Codec(format!("expected hello, got {other:?}"))),
            },
            Some(Err(e)) => return Err(e.into()),
            None => return Err(LinkError::Closed),
        };
        if let Some(secret) = &self.cfg.secret {
            let listener_nonce = peer_auth::nonce();
            writer.send(encode_frame(&GdFrame::Challenge { nonce: listener_nonce.clone() })?).await?;
            let instance_bytes = instance.to_be_bytes();
            let context: [&[u8]; 4] =
                [self.cfg.global_host.as_bytes(), from_dc.as_bytes(), self.cfg.local_host.as_bytes(), &instance_bytes];
            let proof = next_hello_frame(&mut reader).await.ok();
            let dialler_nonce = match proof {
                Some(GdFrame::Proof { nonce, mac })
                    if secret.verify(Role::Dialler, &context, &listener_nonce, &nonce, &mac) =>
                {
                    nonce
                }
                _ => {
                    self.stats.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%from_dc, "data center link refused: no valid proof of the shared secret");
                    let reason = "authentication failed".to_owned();
                    let _ = writer.send(encode_frame(&GdFrame::Refused { reason: reason.clone() })?).await;
                    return Err(LinkError::Refused(reason));
                }
            };
            let mac = secret.proof(Role::Listener, &context, &listener_nonce, &dialler_nonce);
            writer.send(encode_frame(&GdFrame::Accepted { dc: self.cfg.local_host.clone(), mac })?).await?;
        } else {
            writer.send(encode_frame(&GdFrame::HelloOk { dc: self.cfg.local_host.clone() })?).await?;
        }
        reader.decoder_mut().set_max_frame_length(MAX_FRAME);
        self.stats.connections.fetch_add(1, Ordering::Relaxed);

        // Replies never outnumber the frames the sender may have unacknowledged.
        let (tx, mut rx) = mpsc::channel::<Reply>(self.cfg.window + 64);
        let conn_id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        {
            let mut senders = self.senders.lock().unwrap_or_else(|e| e.into_inner());
            let state = senders.entry(instance).or_insert_with(|| SenderState {
                writer: None,
                done_upto: 0,
                done_above: BTreeSet::new(),
                in_progress: HashSet::new(),
                closed_at: None,
            });
            state.writer = Some((conn_id, tx.clone()));
            state.closed_at = None;
        }
        let write_task = tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut seqs = Vec::new();
                let mut pong = false;
                let mut next = Some(first);
                while let Some(r) = next {
                    match r {
                        Reply::Ack(s) => seqs.push(s),
                        Reply::Pong => pong = true,
                    }
                    next = rx.try_recv().ok();
                }
                if !seqs.is_empty() {
                    writer.feed(encode_frame(&GdFrame::Ack { seqs })?).await?;
                }
                if pong {
                    writer.feed(encode_frame(&GdFrame::Pong)?).await?;
                }
                SinkExt::<Bytes>::flush(&mut writer).await?;
            }
            Ok::<(), LinkError>(())
        });

        let result = loop {
            let frame = tokio::select! {
                _ = shutdown.changed() => {
                    if *shutdown.borrow() { break Ok(()) } else { continue }
                }
                f = tokio::time::timeout(IDLE_AFTER, reader.next()) => match f {
                    Ok(f) => f,
                    // The sender pings every second: this one is gone, or trickling a frame.
                    Err(_) => break Err(LinkError::Timeout),
                },
            };
            let frame = match frame {
                Some(Ok(b)) => match decode_frame(&b) {
                    Ok(f) => f,
                    Err(e) => break Err(e),
                },
                Some(Err(e)) => break Err(e.into()),
                None => break Err(LinkError::Closed),
            };
            match frame {
                GdFrame::Ping => {
                    let _ = tx.try_send(Reply::Pong);
                }
                GdFrame::Stanza(stanza) => self.on_stanza(&from_dc, instance, &tx, stanza),
                other => break Err(LinkError::Codec(format!("unexpected frame from a sender: {other:?}"))),
            }
        };
        {
            let mut senders = self.senders.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(state) = senders.get_mut(&instance) {
                if state.writer.as_ref().map(|(id, _)| *id) == Some(conn_id) {
                    state.writer = None;
                    state.closed_at = Some(Instant::now());
                }
            }
        }
        drop(tx);
        let _ = tokio::time::timeout(Duration::from_secs(1), write_task).await;
        result
    }

    fn on_stanza(self: &Arc<Self>, from_dc: &str, instance: u64, tx: &mpsc::Sender<Reply>, stanza: GdStanza) {
        self.stats.received.fetch_add(1, Ordering::Relaxed);
        let seq = stanza.seq;
        {
            let mut senders = self.senders.lock().unwrap_or_else(|e| e.into_inner());
            let Some(state) = senders.get_mut(&instance) else { return };
            if state.is_done(seq) {
                drop(senders);
                self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                let _ = tx.try_send(Reply::Ack(seq));
                return;
            }
            if !state.in_progress.insert(seq) {
                self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        let upstream = Upstream { instance, seq, inbound: Arc::downgrade(self) };
        match self.events.upgrade() {
            Some(ev) => ev.incoming(from_dc, upstream, stanza),
            None => tracing::debug!("a stanza arrived while global routing is stopping"),
        }
    }

    /// Frames received and not yet finished, over all senders.
    pub fn in_progress(&self) -> usize {
        self.senders.lock().unwrap_or_else(|e| e.into_inner()).values().map(|s| s.in_progress.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_roundtrip_and_reject_other_versions() {
        let f = GdFrame::Stanza(GdStanza {
            seq: 7,
            ttl: 3,
            origin_dc: "dc1".into(),
            origin_start_micros: Some(5),
            from: "a@x/r".into(),
            to: "b@x".into(),
            stanza: Element::new("message", "jabber:client").with_attr("id", "m1"),
        });
        let b = encode_frame(&f).unwrap();
        assert_eq!(decode_frame(&b).unwrap(), f);
        let mut bad = b.to_vec();
        bad[0] = 9;
        assert!(decode_frame(&bad).is_err());
        assert!(decode_frame(&[]).is_err());
        assert!(decode_frame(&[GD_PROTOCOL_VERSION, 250, 1, 2]).is_err());
    }

    #[test]
    fn done_watermark_advances_over_gaps() {
        let mut s = SenderState {
            writer: None,
            done_upto: 0,
            done_above: BTreeSet::new(),
            in_progress: HashSet::new(),
            closed_at: None,
        };
        s.mark_done(2);
        assert!(!s.is_done(1) && s.is_done(2));
        s.mark_done(1);
        assert_eq!(s.done_upto, 2);
        assert!(s.done_above.is_empty());
        s.mark_done(4);
        s.mark_done(3);
        assert_eq!(s.done_upto, 4);
    }

    /// A loopback proxy whose connections can be cut.
    struct Proxy {
        addr: std::net::SocketAddr,
        conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    }

    impl Proxy {
        async fn start(target: std::net::SocketAddr) -> Proxy {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            let conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
            let c = conns.clone();
            tokio::spawn(async move {
                while let Ok((mut inbound, _)) = l.accept().await {
                    let h = tokio::spawn(async move {
                        if let Ok(mut out) = TcpStream::connect(target).await {
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                        }
                    });
                    c.lock().unwrap().push(h);
                }
            });
            Proxy { addr, conns }
        }

        fn cut(&self) {
            for h in self.conns.lock().unwrap().drain(..) {
                h.abort();
            }
        }
    }

    #[derive(Default)]
    struct Receiver {
        got: Mutex<Vec<String>>,
        held: Mutex<Vec<Upstream>>,
        hold: AtomicBool,
    }

    impl LinkEvents for Receiver {
        fn acked(&self, _token: u64) {}
        fn failed(&self, _tokens: Vec<u64>) {}
        fn incoming(&self, _from_dc: &str, upstream: Upstream, stanza: GdStanza) {
            self.got.lock().unwrap().push(stanza.stanza.attr("id").unwrap_or_default().to_owned());
            if self.hold.load(Ordering::SeqCst) {
                self.held.lock().unwrap().push(upstream);
            } else {
                upstream.done();
            }
        }
    }

    #[derive(Default)]
    struct Sender {
        acked: Mutex<Vec<u64>>,
        notify: Notify,
    }

    impl LinkEvents for Sender {
        fn acked(&self, token: u64) {
            self.acked.lock().unwrap().push(token);
            self.notify.notify_waiters();
        }
        fn failed(&self, _tokens: Vec<u64>) {}
        fn incoming(&self, _from_dc: &str, _upstream: Upstream, _stanza: GdStanza) {}
    }

    fn cfg(local: &str) -> LinkConfig {
        LinkConfig { global_host: "example.com".into(), local_host: local.into(), tls: None, secret: None, window: 64 }
    }

    fn stanza(n: u64) -> GdStanza {
        GdStanza {
            seq: 0,
            ttl: 3,
            origin_dc: "dc1".into(),
            origin_start_micros: None,
            from: "a@example.com/r".into(),
            to: "b@example.com".into(),
            stanza: Element::new("message", "jabber:client").with_attr("id", n.to_string()),
        }
    }

    async fn until(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_cut_link_resends_what_was_not_acknowledged_and_nothing_twice() {
        let receiver = Arc::new(Receiver::default());
        let rx_events: Weak<dyn LinkEvents> = {
            let w: Weak<Receiver> = Arc::downgrade(&receiver);
            w
        };
        let inbound = Inbound::new(cfg("dc2"), rx_events);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = listener.local_addr().unwrap();
        let (_stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(inbound.clone().serve(listener, stop_rx));
        let proxy = Proxy::start(target).await;

        let sender = Arc::new(Sender::default());
        let tx_events: Weak<dyn LinkEvents> = {
            let w: Weak<Sender> = Arc::downgrade(&sender);
            w
        };
        let link = OutLink::start(cfg("dc1"), "dc2".into(), proxy.addr.to_string(), tx_events);
        for n in 1..=50 {
            link.try_send(n, stanza(n)).unwrap();
        }
        until("50 acks", || sender.acked.lock().unwrap().len() == 50).await;

        // 50 more are received but held unfinished; the connection is cut meanwhile.
        receiver.hold.store(true, Ordering::SeqCst);
        for n in 51..=100 {
            link.try_send(n, stanza(n)).unwrap();
        }
        until("100 received", || receiver.got.lock().unwrap().len() == 100).await;
        proxy.cut();
        // New frames while the link is down wait in its queue.
        receiver.hold.store(false, Ordering::SeqCst);
        for n in 101..=150 {
            link.try_send(n, stanza(n)).unwrap();
        }
        until("reconnect", || link.stats.connects.load(Ordering::Relaxed) >= 2).await;
        until("150 received", || receiver.got.lock().unwrap().len() >= 150).await;
        // The held ones finish now, after the reconnect; their acks take the new connection.
        for u in receiver.held.lock().unwrap().drain(..) {
            u.done();
        }
        until("150 acks", || sender.acked.lock().unwrap().len() == 150).await;

        let got: Vec<u64> = receiver.got.lock().unwrap().iter().map(|s| s.parse().unwrap()).collect();
        assert_eq!(got, (1..=150).collect::<Vec<u64>>(), "each frame handled once, in order");
        let mut acked = sender.acked.lock().unwrap().clone();
        acked.sort();
        assert_eq!(acked, (1..=150).collect::<Vec<u64>>());
        assert!(link.stats.resent.load(Ordering::Relaxed) >= 50, "the held frames were resent");
        assert!(inbound.stats.duplicates.load(Ordering::Relaxed) >= 50, "and recognised");
        link.stop();
    }

    #[tokio::test]
    async fn a_hello_for_another_data_center_is_refused() {
        let receiver = Arc::new(Receiver::default());
        let rx_events: Weak<dyn LinkEvents> = {
            let w: Weak<Receiver> = Arc::downgrade(&receiver);
            w
        };
        let inbound = Inbound::new(cfg("dc2"), rx_events);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(inbound.clone().serve(listener, stop_rx));
        let sender = Arc::new(Sender::default());
        let tx_events: Weak<dyn LinkEvents> = {
            let w: Weak<Sender> = Arc::downgrade(&sender);
            w
        };
        // The sender believes it dials dc3.
        let link = OutLink::start(cfg("dc1"), "dc3".into(), addr.to_string(), tx_events);
        link.try_send(1, stanza(1)).unwrap();
        until("a refusal", || inbound.stats.refused.load(Ordering::Relaxed) >= 1).await;
        assert!(receiver.got.lock().unwrap().is_empty());
        assert!(!link.stats.connected.load(Ordering::Relaxed));
        link.stop();
    }

    #[tokio::test]
    async fn with_a_shared_secret_only_a_data_center_that_proves_it_links() {
        let with = |local: &str, secret: Option<&str>| LinkConfig {
            secret: secret.map(|s| SharedSecret::new(s).unwrap()),
            ..cfg(local)
        };
        let receiver = Arc::new(Receiver::default());
        let rx_events: Weak<dyn LinkEvents> = {
            let w: Weak<Receiver> = Arc::downgrade(&receiver);
            w
        };
        let inbound = Inbound::new(with("dc2", Some("the data centers' secret")), rx_events);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(inbound.clone().serve(listener, stop_rx));
        let sender = Arc::new(Sender::default());
        let tx_events = || -> Weak<dyn LinkEvents> {
            let w: Weak<Sender> = Arc::downgrade(&sender);
            w
        };

        // No secret, then the wrong one: refused, nothing delivered.
        for (n, secret) in [(1, None), (2, Some("another secret, not theirs"))] {
            let link = OutLink::start(with("dc1", secret), "dc2".into(), addr.to_string(), tx_events());
            link.try_send(n, stanza(n)).unwrap();
            until("a refusal", || inbound.stats.refused.load(Ordering::Relaxed) >= n).await;
            assert!(!link.stats.connected.load(Ordering::Relaxed));
            link.stop();
        }
        assert!(receiver.got.lock().unwrap().is_empty());

        // The right one: linked, and the stanza arrives.
        let link =
            OutLink::start(with("dc1", Some("the data centers' secret")), "dc2".into(), addr.to_string(), tx_events());
        link.try_send(3, stanza(3)).unwrap();
        until("the stanza", || !receiver.got.lock().unwrap().is_empty()).await;
        link.stop();
    }
}
