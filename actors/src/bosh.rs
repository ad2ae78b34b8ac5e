//! XEP-0124 (BOSH) and XEP-0206 (XMPP over BOSH): HTTP request/response
//! pairs carrying one XMPP session.
//!
//! The node's HTTP layer hands each POSTed `<body/>` to [`BoshEndpoint::handle`]
//! and sends back the [`Reply`]. Everything else is the WebSocket path: a
//! BOSH session is a bridge task in front of an RFC 7395 [`WsConnection`], so
//! the same [`crate::c2s`] driver, negotiation state machine and session
//! actor serve it. The bridge translates:
//!
//! - **In:** each child of a `<body/>` becomes one framed message (its
//!   namespace kept, `jabber:client` when it has none of its own); the
//!   session creation request and `xmpp:restart='true'` become `<open/>`, and
//!   `type='terminate'` becomes `<close/>` after the body's stanzas.
//! - **Out:** the driver's frames are queued (bounded) and answer the oldest
//!   request the bridge holds. `<open/>` gives only the stream id (`authid`);
//!   a stream error ends the session with `condition='remote-stream-error'`
//!   (or `host-unknown`), carrying the `<stream:error/>`.
//!
//! A session's first `rid` must be below 2^53 (XEP-0124 §14.1), or the
//! request gets `bad-request`. Requests are handled in `rid` order: one that
//! arrives early waits for the missing ones (within the `requests` window);
//! a repeated `rid` gets the answer it already got (§14.3), or takes over the
//! held request when that one was never answered. At most `hold` requests are held: one more makes
//! the oldest answer at once, and a held request is answered empty after
//! `wait` seconds. With no request held for `inactivity` seconds (or the
//! `pause` the client asked for, at most `maxpause`) the session ends as if
//! the connection were lost; messages the bridge still queued for the
//! client then go back to the account (its other resources, or offline
//! storage) instead of being dropped. With XEP-0198 enabled, the session
//! does that (or keeps them for a resumption) from its unacknowledged queue.

use meerkat_xmpp::jid::Bare as _;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::ArbiterHandle;
use meerkat_routing::Routed;
use meerkat_xmpp::element::Element;
use meerkat_xmpp::jid::{parse_jid, Jid};
use meerkat_xmpp::ns;
use meerkat_xmpp::parser::{Limits, StreamEvent, StreamParser};
use meerkat_xmpp::stanza::StanzaKind;
use rand::distr::{Alphanumeric, SampleString};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::c2s::{self, C2sListener};
use crate::services::Services;
use crate::websocket::{WsConnection, WsIn, WsOut, FRAMING};

/// The namespace of `<body/>` (XEP-0124).
pub const HTTPBIND: &str = "http://jabber.org/protocol/httpbind";
/// The namespace of the `xmpp:` attributes (XEP-0206).
pub const XBOSH: &str = "urn:xmpp:xbosh";
/// The protocol version we speak (XEP-0124 1.11).
const VERSION: &str = "1.11";
/// Frames waiting between the bridge and the c2s driver, each way.
const CHANNEL: usize = 16;
/// XEP-0124 §14.1: a client picks its first `rid` at random below 2^53, so
/// that the `rid`s it sends in a session stay within what a JavaScript number
/// holds exactly. One at or above it is refused when it creates a session.
const RID_LIMIT: u64 = 1 << 53;
/// A client may send `polling` seconds apart when it holds no request.
const POLLING: u64 = 2;
/// After a client's `terminate`, how long the driver may take to close.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Limits of one BOSH endpoint.
#[derive(Clone, Debug)]
pub struct BoshSettings {
    /// The longest a request is held (`wait`); a client asking more gets this.
    pub max_wait: Duration,
    /// The most requests held at once (`hold`).
    pub max_hold: u32,
    /// A session with no request for this long ends (`inactivity`).
    pub inactivity: Duration,
    /// The longest pause a client may ask for (`maxpause`).
    pub max_pause: Duration,
    /// Bytes of frames queued for the client before the session stops
    /// reading from the driver (which then slows the session down).
    pub max_queued_bytes: usize,
}

impl Default for BoshSettings {
    fn default() -> Self {
        BoshSettings {
            max_wait: Duration::from_secs(60),
            max_hold: 1,
            inactivity: Duration::from_secs(30),
            max_pause: Duration::from_secs(120),
            max_queued_bytes: 1 << 20,
        }
    }
}

/// The HTTP answer to one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// 200 for every `<body/>` answer, terminal ones included (XEP-0124
    /// §17.2); 400 for a request that is not a `<body/>` at all.
    pub status: u16,
    pub body: String,
}

impl Reply {
    fn ok(body: String) -> Reply {
        Reply { status: 200, body }
    }

    /// A terminal binding condition (XEP-0124 §17.2).
    fn terminate(condition: &str) -> Reply {
        Reply::ok(body_xml(&[("type", "terminate".into()), ("condition", condition.into())], &[]))
    }
}

/// One `mod_bosh` endpoint: its sessions, by `sid`.
pub struct BoshEndpoint {
    pub svc: Arc<Services>,
    /// Negotiation and limits of this endpoint (no STARTTLS).
    pub listener: Arc<C2sListener>,
    /// The session arbiters, shared with the c2s listeners.
    pub arbiters: Vec<ArbiterHandle>,
    pub next: AtomicUsize,
    /// Whether the HTTP listener runs TLS.
    pub secure: bool,
    pub settings: BoshSettings,
    sessions: Arc<Mutex<HashMap<String, mpsc::Sender<Request>>>>,
}

/// A request for a running session.
struct Request {
    rid: u64,
    body: Element,
    reply: oneshot::Sender<Reply>,
}

impl BoshEndpoint {
    pub fn new(
        svc: Arc<Services>,
        listener: Arc<C2sListener>,
        arbiters: Vec<ArbiterHandle>,
        secure: bool,
        settings: BoshSettings,
    ) -> Self {
        BoshEndpoint { svc, listener, arbiters, next: AtomicUsize::new(0), secure, settings, sessions: Arc::default() }
    }

    /// Sessions open on this endpoint.
    pub fn session_count(&self) -> usize {
        self.sessions.lock().map(|s| s.len()).unwrap_or(0)
    }

    /// Answers one POSTed request body.
    /// `client_cert` is what the HTTPS connection's verified client
    /// certificate names; the request that creates a session decides it for
    /// the session's SASL EXTERNAL.
    pub async fn handle(
        &self,
        payload: &[u8],
        peer: Option<std::net::SocketAddr>,
        client_cert: Option<meerkat_xmpp::sasl::external::CertIdentity>,
    ) -> Reply {
        let body = match parse_body(payload, self.listener.limits) {
            Ok(b) => b,
            Err(text) => {
                tracing::debug!(?peer, %text, "bad BOSH request");
                return Reply { status: 400, ..Reply::terminate("bad-request") };
            }
        };
        let Some(rid) = body.attr("rid").and_then(|r| r.trim().parse::<u64>().ok()) else {
            return Reply { status: 400, ..Reply::terminate("bad-request") };
        };
        let Some(sid) = body.attr("sid").map(str::to_owned) else {
            return self.create(rid, body, peer, client_cert).await;
        };
        let session = self.sessions.lock().ok().and_then(|s| s.get(&sid).cloned());
        let Some(session) = session else { return Reply::terminate("item-not-found") };
        let (tx, rx) = oneshot::channel();
        if session.send(Request { rid, body, reply: tx }).await.is_err() {
            return Reply::terminate("item-not-found");
        }
        rx.await.unwrap_or_else(|_| Reply::terminate("item-not-found"))
    }

    /// The session creation request (XEP-0124 §7, XEP-0206 §3).
    async fn create(
        &self,
        rid: u64,
        body: Element,
        peer: Option<std::net::SocketAddr>,
        client_cert: Option<meerkat_xmpp::sasl::external::CertIdentity>,
    ) -> Reply {
        if rid >= RID_LIMIT {
            tracing::debug!(?peer, rid, "bosh session refused: rid not below 2^53");
            return Reply { status: 400, ..Reply::terminate("bad-request") };
        }
        let Some(to) = body.attr("to").filter(|t| !t.trim().is_empty()).map(str::to_owned) else {
            return Reply { status: 400, ..Reply::terminate("bad-request") };
        };
        // The listener's `max_connections` and `max_connections_per_ip` count sessions here.
        let admitted = match self.listener.admission.admit(peer.map(|p| p.ip())) {
            Ok(a) => a,
            Err(why) => {
                tracing::debug!(?peer, reason = %why, "bosh session refused");
                return Reply { status: 503, ..Reply::terminate("policy-violation") };
            }
        };
        let max_wait = self.settings.max_wait.as_secs().max(1);
        let wait = body.attr("wait").and_then(|w| w.trim().parse::<u64>().ok()).unwrap_or(max_wait).min(max_wait);
        let hold =
            body.attr("hold").and_then(|h| h.trim().parse::<u32>().ok()).unwrap_or(1).min(self.settings.max_hold);
        let sid = Alphanumeric.sample_string(&mut rand::rng(), 24);
        let (in_tx, in_rx) = mpsc::channel(CHANNEL);
        let (out_tx, out_rx) = mpsc::channel(CHANNEL);
        let (req_tx, req_rx) = mpsc::channel(hold as usize + 2);
        let ws =
            WsConnection { incoming: in_rx, outgoing: out_tx, secure: self.secure, tls_exporter: None, client_cert };
        let (reply_tx, reply_rx) = oneshot::channel();
        let lang = attr_local(&body, "lang").map(str::to_owned);
        let bridge = Bridge {
            svc: self.svc.clone(),
            sid: sid.clone(),
            to,
            lang,
            settings: self.settings.clone(),
            wait: Duration::from_secs(wait.max(1)),
            hold: hold as usize,
            to_driver: Some(in_tx),
            from_driver: out_rx,
            driver_done: false,
            next_rid: rid,
            early: BTreeMap::new(),
            held: VecDeque::new(),
            queued: VecDeque::new(),
            queued_bytes: 0,
            answered: VecDeque::new(),
            stream_id: None,
            stream_error: None,
            closing: None,
            idle_since: Instant::now(),
            pause: None,
            ended: false,
            sm_enabled: false,
        };
        self.sessions.lock().map(|mut s| s.insert(sid.clone(), req_tx)).ok();
        let first = Request { rid, body, reply: reply_tx };
        let sessions = self.sessions.clone();
        let run = async move {
            let sid = bridge.sid.clone();
            bridge.run(first, req_rx).await;
            sessions.lock().map(|mut s| s.remove(&sid)).ok();
        };
        let serve = c2s::serve_websocket(self.svc.clone(), self.listener.clone(), ws, peer, admitted);
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.arbiters.len().max(1);
        match self.arbiters.get(i) {
            Some(arbiter) => {
                arbiter.spawn(serve);
                arbiter.spawn(run);
            }
            None => {
                tokio::spawn(serve);
                tokio::spawn(run);
            }
        }
        tracing::debug!(?peer, %sid, wait, hold, "bosh session created");
        reply_rx.await.unwrap_or_else(|_| Reply::terminate("internal-server-error"))
    }
}

/// What a held request is waiting for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// The session creation request: its answer carries the session's attributes.
    Create {
        ack: bool,
    },
    Normal,
    /// The client's `terminate`: answered when the stream has closed.
    Terminate,
}

struct Held {
    rid: u64,
    kind: Kind,
    reply: oneshot::Sender<Reply>,
    deadline: Instant,
}

/// One BOSH session: the requests the client sends, the frames the c2s
/// driver writes, and the timers between them.
struct Bridge {
    svc: Arc<Services>,
    sid: String,
    to: String,
    lang: Option<String>,
    settings: BoshSettings,
    wait: Duration,
    hold: usize,
    /// Frames to the driver; dropped when the client is taken as gone.
    to_driver: Option<mpsc::Sender<WsIn>>,
    from_driver: mpsc::Receiver<WsOut>,
    /// The driver has written its last frame.
    driver_done: bool,
    /// The `rid` to handle next.
    next_rid: u64,
    /// Requests that arrived before an earlier `rid`.
    early: BTreeMap<u64, Request>,
    held: VecDeque<Held>,
    /// Frames for the client, oldest first.
    queued: VecDeque<String>,
    queued_bytes: usize,
    /// The last answers given, to repeat for a request sent again (§14.3).
    answered: VecDeque<(u64, Reply)>,
    stream_id: Option<String>,
    /// The condition of the stream error the driver wrote, if any.
    stream_error: Option<&'static str>,
    /// When the client's `terminate` must have been answered.
    closing: Option<Instant>,
    /// Since when no request is held.
    idle_since: Instant,
    /// The inactivity the client asked for with `pause`, for the current gap.
    pause: Option<Duration>,
    /// The terminal answer has been given (or the session timed out).
    ended: bool,
    /// The client enabled XEP-0198: the session itself gives back what the
    /// client did not acknowledge.
    sm_enabled: bool,
}

impl Bridge {
    async fn run(mut self, first: Request, mut requests: mpsc::Receiver<Request>) {
        let mut open = Element::new("open", FRAMING).with_attr("to", self.to.clone()).with_attr("version", "1.0");
        if let Some(lang) = &self.lang {
            open.set_attr("xml:lang", lang.clone());
        }
        self.forward(open.to_xml("")).await;
        let ack = first.body.attr("ack").is_some();
        self.hold_request(first.rid, Kind::Create { ack }, first.reply);
        self.next_rid = first.rid.saturating_add(1);
        for child in first.body.elements() {
            self.forward(child_xml(child)).await;
        }
        self.answer_ready();
        while !self.ended {
            let deadline = self.next_deadline();
            let reading = !self.driver_done && self.queued_bytes < self.settings.max_queued_bytes;
            tokio::select! {
                req = requests.recv() => match req {
                    Some(req) => self.on_request(req).await,
                    None => break,
                },
                frame = self.from_driver.recv(), if reading => self.on_frame(frame),
                _ = tokio::time::sleep_until(deadline) => self.on_timer(),
            }
            self.answer_ready();
        }
        requests.close();
        // Requests that raced with the end get the terminal answer.
        while let Ok(req) = requests.try_recv() {
            let _ = req.reply.send(Reply::terminate("item-not-found"));
        }
        self.give_back().await;
    }

    /// The earliest moment something must happen without any input.
    fn next_deadline(&self) -> Instant {
        let far = Instant::now() + Duration::from_secs(3600);
        let held = self.held.iter().map(|h| h.deadline).min().unwrap_or(far);
        let idle =
            if self.held.is_empty() { self.idle_since + self.pause.unwrap_or(self.settings.inactivity) } else { far };
        let closing = self.closing.unwrap_or(far);
        held.min(idle).min(closing)
    }

    fn on_timer(&mut self) {
        let now = Instant::now();
        if self.closing.is_some_and(|c| c <= now) {
            tracing::debug!(sid = %self.sid, "the stream did not close in time after terminate");
            self.end_with(Reply::terminate_with(None, &[]));
            return;
        }
        if self.held.is_empty() {
            if self.idle_since + self.pause.unwrap_or(self.settings.inactivity) <= now {
                tracing::debug!(sid = %self.sid, "bosh session inactive; closing it");
                self.to_driver = None;
                self.ended = true;
            }
            return;
        }
        // Held past `wait`: answered empty (or with what is queued).
        while let Some(i) = self.held.iter().position(|h| h.deadline <= now && h.kind != Kind::Terminate) {
            if let Some(h) = self.held.remove(i) {
                self.answer(h, Vec::new());
            }
        }
        if self.held.iter().any(|h| h.kind == Kind::Terminate && h.deadline <= now) {
            self.end_with(Reply::terminate_with(None, &[]));
        }
    }

    async fn on_request(&mut self, req: Request) {
        // Any request shows the client is there, for the inactivity timer
        // and for the driver's idle timer (a full channel is input anyway).
        if self.held.is_empty() {
            self.idle_since = Instant::now();
        }
        if let Some(tx) = &self.to_driver {
            let _ = tx.try_send(WsIn::Activity);
        }
        let window = self.hold as u64 + 1;
        if req.rid < self.next_rid {
            if let Some((_, reply)) = self.answered.iter().find(|(rid, _)| *rid == req.rid) {
                let _ = req.reply.send(reply.clone());
            } else if let Some(h) = self.held.iter_mut().find(|h| h.rid == req.rid) {
                // The client gave up on the first connection; this one gets the
                // answer, and the first (if anyone still reads it) an empty one.
                let first = std::mem::replace(&mut h.reply, req.reply);
                let _ = first.send(Reply::ok(body_xml(&[], &[])));
            } else {
                self.refuse(req.reply, "item-not-found");
            }
            return;
        }
        // `req.rid >= next_rid` here, so the difference cannot wrap.
        if req.rid - self.next_rid >= window || self.early.len() >= window as usize {
            self.refuse(req.reply, "item-not-found");
            return;
        }
        if req.rid > self.next_rid {
            self.early.insert(req.rid, req);
            return;
        }
        self.process(req).await;
        while let Some(req) = self.early.remove(&self.next_rid) {
            if self.ended {
                let _ = req.reply.send(Reply::terminate("item-not-found"));
                continue;
            }
            self.process(req).await;
        }
    }

    /// Ends the session with a terminal error for this request (and the held ones).
    fn refuse(&mut self, reply: oneshot::Sender<Reply>, condition: &str) {
        let _ = reply.send(Reply::terminate(condition));
        for h in std::mem::take(&mut self.held) {
            let _ = h.reply.send(Reply::terminate(condition));
        }
        self.to_driver = None;
        self.ended = true;
    }

    /// One request in `rid` order.
    async fn process(&mut self, req: Request) {
        self.next_rid = req.rid.saturating_add(1);
        let Request { rid, body, reply } = req;
        if self.driver_done || self.closing.is_some() {
            // The stream is over: whatever is left goes with the terminal answer.
            self.hold_request(rid, Kind::Terminate, reply);
            return;
        }
        if let Some(pause) = body.attr("pause") {
            let max = self.settings.max_pause.as_secs();
            match pause.trim().parse::<u64>() {
                Ok(secs) if secs <= max => {
                    for child in body.elements() {
                        self.forward(child_xml(child)).await;
                    }
                    // §10: every held request is answered, then the session waits.
                    let queued = self.take_queued();
                    let _ = self.answer_now(rid, Kind::Normal, reply, queued);
                    while let Some(h) = self.held.pop_front() {
                        self.answer(h, Vec::new());
                    }
                    self.idle_since = Instant::now();
                    self.pause = Some(Duration::from_secs(secs));
                }
                _ => self.refuse(reply, "policy-violation"),
            }
            return;
        }
        if body.attr("type") == Some("terminate") {
            for child in body.elements() {
                self.forward(child_xml(child)).await;
            }
            self.forward(format!("<close xmlns='{FRAMING}'/>")).await;
            self.closing = Some(Instant::now() + CLOSE_GRACE);
            self.hold_request(rid, Kind::Terminate, reply);
            return;
        }
        if attr_local(&body, "restart") == Some("true") {
            // XEP-0206 §5: a stream restart after SASL; the answer carries the new features.
            let mut open = Element::new("open", FRAMING).with_attr("to", self.to.clone()).with_attr("version", "1.0");
            if let Some(lang) = &self.lang {
                open.set_attr("xml:lang", lang.clone());
            }
            self.forward(open.to_xml("")).await;
        } else {
            for child in body.elements() {
                self.forward(child_xml(child)).await;
            }
        }
        self.hold_request(rid, Kind::Normal, reply);
        // More than `hold` requests: the oldest is answered now (§11).
        while self.held.iter().filter(|h| h.kind != Kind::Terminate).count() > self.hold.max(1)
            || (self.hold == 0 && !self.held.is_empty())
        {
            let Some(h) = self.held.pop_front() else { break };
            let queued = self.take_queued();
            self.answer(h, queued);
            if self.hold == 0 {
                break;
            }
        }
    }

    fn hold_request(&mut self, rid: u64, kind: Kind, reply: oneshot::Sender<Reply>) {
        self.pause = None;
        self.held.push_back(Held { rid, kind, reply, deadline: Instant::now() + self.wait });
    }

    /// Sends a frame to the driver, reading its frames meanwhile so that
    /// neither waits for the other.
    async fn forward(&mut self, frame: String) {
        loop {
            let Some(tx) = self.to_driver.clone() else { return };
            let reading = !self.driver_done && self.queued_bytes < self.settings.max_queued_bytes;
            tokio::select! {
                permit = tx.reserve() => {
                    if let Ok(permit) = permit {
                        permit.send(WsIn::Text(frame));
                    }
                    return;
                }
                out = self.from_driver.recv(), if reading => self.on_frame(out),
            }
        }
    }

    fn on_frame(&mut self, frame: Option<WsOut>) {
        let text = match frame {
            None => {
                self.driver_done = true;
                return;
            }
            Some(WsOut::Ping) => return,
            Some(WsOut::Text(t)) => t,
        };
        if text.starts_with("<open ") {
            if let Ok(el) = parse_frame(&text) {
                self.stream_id = el.attr("id").map(str::to_owned);
            }
            return;
        }
        if text.starts_with("<close ") {
            self.driver_done = true;
            return;
        }
        if text.starts_with("<enabled ") && text.contains(meerkat_xmpp::sm::NS_SM) {
            self.sm_enabled = true;
        }
        if text.starts_with("<stream:error") {
            self.stream_error =
                Some(if text.contains("<host-unknown") { "host-unknown" } else { "remote-stream-error" });
        }
        self.queued_bytes += text.len();
        self.queued.push_back(text);
    }

    fn take_queued(&mut self) -> Vec<String> {
        self.queued_bytes = 0;
        self.queued.drain(..).collect()
    }

    /// Answers held requests while there is something to say.
    fn answer_ready(&mut self) {
        if self.ended {
            return;
        }
        if self.driver_done {
            // The stream is over. With two requests held (a long poll and the
            // client's terminate), what is left goes in an ordinary answer to
            // the older one and the terminal answer stays empty: stanza.io,
            // for one, fails on stanzas inside a terminal <body/> (which
            // XEP-0124 allows).
            if self.held.len() >= 2 && !self.queued.is_empty() {
                if let Some(h) = self.held.pop_front() {
                    let queued = self.take_queued();
                    self.answer(h, queued);
                }
            }
            // The oldest held request gets what is left and the terminal
            // answer; a later request would get it otherwise.
            if let Some(h) = self.held.pop_front() {
                let queued = self.take_queued();
                let condition = self.stream_error;
                let reply = self.reply(h.kind, h.rid, Some(condition), &queued);
                if h.reply.send(reply).is_err() {
                    // Not taken: the next request gets it.
                    self.queued = queued.into();
                    self.queued_bytes = self.queued.iter().map(String::len).sum();
                    return;
                }
                self.end_with(Reply::terminate_with(condition, &[]));
            }
            return;
        }
        if self.stream_error.is_some() {
            // The stream's end follows: the error goes with the terminal answer.
            return;
        }
        while !self.queued.is_empty() {
            let Some(h) = self.held.pop_front() else { break };
            let queued = self.take_queued();
            self.answer(h, queued);
        }
    }

    /// Answers a held request with `payload`; a payload the client did not
    /// take goes back to the front of the queue.
    fn answer(&mut self, h: Held, payload: Vec<String>) {
        let _ = self.answer_now(h.rid, h.kind, h.reply, payload);
        if self.held.is_empty() {
            self.idle_since = Instant::now();
        }
    }

    fn answer_now(&mut self, rid: u64, kind: Kind, reply: oneshot::Sender<Reply>, payload: Vec<String>) -> bool {
        let answer = self.reply(kind, rid, None, &payload);
        match reply.send(answer.clone()) {
            Ok(()) => {
                self.answered.push_back((rid, answer));
                while self.answered.len() > self.hold + 1 {
                    self.answered.pop_front();
                }
                true
            }
            Err(_) => {
                for frame in payload.into_iter().rev() {
                    self.queued_bytes += frame.len();
                    self.queued.push_front(frame);
                }
                false
            }
        }
    }

    /// The answer to a request of `kind`: terminal when `terminate` is given
    /// (with its condition, if any); the creation request's answer carries
    /// the session's attributes (XEP-0124 §7.1, XEP-0206 §3).
    fn reply(&self, kind: Kind, rid: u64, terminate: Option<Option<&str>>, payload: &[String]) -> Reply {
        let mut attrs: Vec<(&str, String)> = Vec::new();
        if let Some(condition) = terminate {
            attrs.push(("type", "terminate".to_owned()));
            if let Some(c) = condition {
                attrs.push(("condition", c.to_owned()));
            }
        }
        if let Kind::Create { ack } = kind {
            attrs.extend([
                ("sid", self.sid.clone()),
                ("wait", self.wait.as_secs().to_string()),
                ("inactivity", self.settings.inactivity.as_secs().to_string()),
                ("polling", POLLING.to_string()),
                ("requests", (self.hold + 1).to_string()),
                ("hold", self.hold.to_string()),
                ("maxpause", self.settings.max_pause.as_secs().to_string()),
                ("ver", VERSION.to_owned()),
                ("from", self.to.clone()),
                ("secure", "true".to_owned()),
                ("xmlns:xmpp", XBOSH.to_owned()),
                ("xmpp:version", "1.0".to_owned()),
                ("xmpp:restartlogic", "true".to_owned()),
                ("xmlns:stream", ns::STREAM.to_owned()),
            ]);
            if let Some(id) = &self.stream_id {
                attrs.push(("authid", id.clone()));
            }
            if ack {
                attrs.push(("ack", rid.to_string()));
            }
        }
        Reply::ok(body_xml(&attrs, payload))
    }

    /// The terminal answer for every request still held; the session is over.
    fn end_with(&mut self, reply: Reply) {
        for h in std::mem::take(&mut self.held) {
            let _ = h.reply.send(reply.clone());
        }
        self.ended = true;
    }

    /// After the end: the driver learns the client is gone, and messages
    /// that never reached the client go back to the account.
    async fn give_back(mut self) {
        self.to_driver = None;
        let drain = async {
            while let Some(frame) = self.from_driver.recv().await {
                if let WsOut::Text(t) = frame {
                    self.queued.push_back(t);
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(10), drain).await;
        if self.sm_enabled {
            // Unacknowledged stanzas are the session's to resend or give back (XEP-0198).
            tracing::debug!(sid = %self.sid, "bosh session ended");
            return;
        }
        let mut returned = 0usize;
        for frame in self.queued.drain(..) {
            let Ok(el) = parse_frame(&frame) else { continue };
            if StanzaKind::of(&el) != Some(StanzaKind::Message) {
                continue;
            }
            let (Some(from), Some(to)) =
                (el.attr("from").and_then(|f| parse_jid(f).ok()), el.attr("to").and_then(|t| parse_jid(t).ok()))
            else {
                continue;
            };
            if !self.svc.ctx.hooks.of(to.domain().as_str()).returns_to_account(&el) {
                continue;
            }
            returned += 1;
            self.svc.router.reroute(Routed { from, to: Jid::from(to.bare()), stanza: el });
        }
        tracing::debug!(sid = %self.sid, returned, "bosh session ended");
    }
}

impl Reply {
    /// `<body type='terminate'/>`, with a condition and what was left for the client.
    fn terminate_with(condition: Option<&str>, payload: &[String]) -> Reply {
        let mut attrs = vec![("type", "terminate".to_owned())];
        if let Some(c) = condition {
            attrs.push(("condition", c.to_owned()));
        }
        Reply::ok(body_xml(&attrs, payload))
    }
}

/// `<body xmlns='…httpbind' …>payload</body>`.
fn body_xml(attrs: &[(&str, String)], payload: &[String]) -> String {
    let mut s = format!("<body xmlns='{HTTPBIND}'");
    for (k, v) in attrs {
        s.push(' ');
        s.push_str(k);
        s.push_str("='");
        s.push_str(&escape(v));
        s.push('\'');
    }
    if payload.is_empty() {
        s.push_str("/>");
        return s;
    }
    s.push('>');
    for p in payload {
        s.push_str(p);
    }
    s.push_str("</body>");
    s
}

fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    meerkat_xmpp::element::escape_attr(&mut out, v);
    out
}

/// An attribute by its local name, whatever prefix the client bound
/// `urn:xmpp:xbosh` (or `xml:`) to.
fn attr_local<'a>(el: &'a Element, local: &str) -> Option<&'a str> {
    el.attr(local).or_else(|| {
        el.attrs.iter().find(|(k, _)| k.split_once(':').is_some_and(|(_, l)| l == local)).map(|(_, v)| v.as_str())
    })
}

/// One child of a `<body/>` as a framed message: its own namespace
/// declared, or none (read as `jabber:client`) when it had none but the
/// body's.
fn child_xml(child: &Element) -> String {
    if child.ns == HTTPBIND || child.ns == ns::CLIENT {
        child.to_xml(&child.ns)
    } else {
        child.to_xml("")
    }
}

/// A stream header that binds what a `<body/>` or a frame may use unprefixed.
const PRIMER: &[u8] = b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>";

/// Reads a request: one `<body/>` in the httpbind namespace, with the same
/// parser limits as a stanza (no DTD, no entities, size and depth bounded).
fn parse_body(payload: &[u8], limits: Limits) -> Result<Element, String> {
    let text = std::str::from_utf8(payload).map_err(|_| "the body is not UTF-8".to_owned())?;
    let el = parse_one(text, Limits { max_depth: limits.max_depth + 1, ..limits })?;
    if !el.is("body", HTTPBIND) {
        return Err(format!("expected <body xmlns='{HTTPBIND}'/>, got <{}/> in {:?}", el.name, el.ns));
    }
    Ok(el)
}

fn parse_frame(text: &str) -> Result<Element, String> {
    parse_one(text, Limits { max_stanza_size: text.len() + 1, max_depth: 64 })
}

fn parse_one(text: &str, limits: Limits) -> Result<Element, String> {
    let text = text.trim_start();
    let text = match text.strip_prefix("<?xml") {
        Some(rest) => rest.split_once("?>").map(|(_, r)| r).ok_or("unterminated XML declaration")?,
        None => text,
    };
    if text.len() > limits.max_stanza_size {
        return Err(format!("larger than {} bytes", limits.max_stanza_size));
    }
    let mut p = StreamParser::new(limits);
    p.feed(PRIMER);
    let _ = p.next_event();
    p.feed(text.as_bytes());
    let el = match p.next_event() {
        Ok(Some(StreamEvent::Stanza(el))) => el,
        Ok(_) => return Err("not one complete element".into()),
        Err(e) => return Err(e.to_string()),
    };
    if !matches!(p.next_event(), Ok(None)) || p.buffered_len() > 0 {
        return Err("more than one element".into());
    }
    Ok(el)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits { max_stanza_size: 4096, max_depth: 16 }
    }

    #[test]
    fn a_body_is_read_with_its_stanzas_and_prefixed_attributes() {
        let b = parse_body(
            b"<?xml version='1.0'?><body rid='7' sid='s' xmlns='http://jabber.org/protocol/httpbind' \
              xmlns:x='urn:xmpp:xbosh' x:restart='true' xml:lang='en'>\
              <message xmlns='jabber:client' to='a@b'><body>hi</body></message>\
              <auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'/></body>",
            limits(),
        )
        .unwrap();
        assert_eq!(b.attr("rid"), Some("7"));
        assert_eq!(attr_local(&b, "restart"), Some("true"));
        assert_eq!(attr_local(&b, "lang"), Some("en"));
        let kids: Vec<String> = b.elements().map(child_xml).collect();
        assert_eq!(kids[0], "<message to='a@b'><body>hi</body></message>");
        assert!(kids[1].starts_with("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl'"), "{}", kids[1]);
        // Each child reads back as a framed message would.
        let mut r = crate::websocket::FrameReader::new(limits());
        r.push_message(&kids[0]);
        let Ok(Some(StreamEvent::Stanza(m))) = r.next_event() else { panic!() };
        assert!(m.is("message", ns::CLIENT));
        assert_eq!(m.get_child("body", ns::CLIENT).map(|b| b.text()).as_deref(), Some("hi"));
    }

    #[test]
    fn a_stanza_without_its_own_namespace_is_jabber_client() {
        let b = parse_body(
            b"<body xmlns='http://jabber.org/protocol/httpbind'><presence><show>away</show></presence></body>",
            limits(),
        )
        .unwrap();
        let kid = b.elements().map(child_xml).next().unwrap();
        let mut r = crate::websocket::FrameReader::new(limits());
        r.push_message(&kid);
        let Ok(Some(StreamEvent::Stanza(p))) = r.next_event() else { panic!("{kid}") };
        assert!(p.is("presence", ns::CLIENT));
        assert!(p.get_child("show", ns::CLIENT).is_some());
    }

    #[test]
    fn bad_requests_are_refused() {
        for bad in [
            &b"<body xmlns='jabber:client'/>"[..],
            b"<bodyx/>",
            b"<body xmlns='http://jabber.org/protocol/httpbind'>",
            b"<body xmlns='http://jabber.org/protocol/httpbind'/><body xmlns='http://jabber.org/protocol/httpbind'/>",
            b"<!DOCTYPE x [<!ENTITY a 'b'>]><body xmlns='http://jabber.org/protocol/httpbind'/>",
            b"\xff\xfe",
        ] {
            assert!(parse_body(bad, limits()).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let big = format!("<body xmlns='{HTTPBIND}'>{}</body>", "<presence/>".repeat(1000));
        assert!(parse_body(big.as_bytes(), limits()).is_err());
    }

    #[test]
    fn answers_are_bodies() {
        assert_eq!(body_xml(&[], &[]), "<body xmlns='http://jabber.org/protocol/httpbind'/>");
        assert_eq!(
            body_xml(&[("sid", "a'b".into())], &["<presence xmlns='jabber:client'/>".into()]),
            "<body xmlns='http://jabber.org/protocol/httpbind' sid='a&apos;b'><presence xmlns='jabber:client'/></body>"
        );
        assert_eq!(
            Reply::terminate("item-not-found").body,
            "<body xmlns='http://jabber.org/protocol/httpbind' type='terminate' condition='item-not-found'/>"
        );
        let parsed = parse_body(
            Reply::terminate_with(
                Some("remote-stream-error"),
                &["<stream:error xmlns:stream='http://etherx.jabber.org/streams'><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>".into()],
            )
            .body
            .as_bytes(),
            limits(),
        )
        .unwrap();
        assert_eq!(parsed.attr("condition"), Some("remote-stream-error"));
        assert!(parsed.get_child("error", ns::STREAM).is_some());
    }
}
