//! XMPP over WebSocket (RFC 7395) against the real node: a raw WebSocket
//! client (tokio-tungstenite) that checks every message the server sends is
//! one element that parses on its own, and xmpp.js (`tests/js`) over both
//! WebSocket and TCP, talking to each other and to a slixmpp user.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt as _, StreamExt as _};
use meerkat_tests::client::{body, message, tls_client_config, TlsTrust};
use meerkat_tests::js::{js_dir, node_flags, npm_ci, EchoPeer};
use meerkat_tests::{login, wait_until, TestNode, DOMAIN};
use meerkat_xmpp::element::Element;
use meerkat_xmpp::ns;
use meerkat_xmpp::parser::{Limits, StreamEvent, StreamParser};
use meerkat_xmpp::sasl::{plain_initial_response, ClientChannelBinding, HashAlg, ScramClient};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

const FRAMING: &str = "urn:ietf:params:xml:ns:xmpp-framing";
const TIMEOUT: Duration = Duration::from_secs(10);
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

use meerkat_tests::node::free_port;

/// A node with one `[[listen.http]]` WebSocket listener, and its URL.
fn ws_node(tls: bool, handler_toml: &str, extra_toml: &str) -> (TestNode, String) {
    let port = free_port();
    let tls_table = if tls { "tls = {}\n" } else { "" };
    let toml = format!(
        "{extra_toml}\n[[listen.http]]\nport = {port}\nip_address = \"127.0.0.1\"\n{tls_table}\
         [[listen.http.handlers.mod_websockets]]\nhost = \"_\"\npath = \"/ws-xmpp\"\n{handler_toml}\n"
    );
    let node = TestNode::start(&toml);
    let scheme = if tls { "wss" } else { "ws" };
    (node, format!("{scheme}://127.0.0.1:{port}/ws-xmpp"))
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// What the server sent: one element per message, or the end.
#[derive(Debug)]
enum Frame {
    /// The element, and the message as sent.
    Element(Element, String),
    /// A close frame or the end of the connection.
    Closed,
}

/// A raw RFC 7395 client.
struct WsClient {
    ws: WebSocketStream<Box<dyn Io>>,
    /// RFC 9266 exporter of the TLS connection (`wss`).
    exporter: Option<Vec<u8>>,
    /// The `Sec-WebSocket-Protocol` the server answered with.
    protocol: Option<String>,
    jid: Option<String>,
}

impl WsClient {
    /// Connects, offering `protocol` (none if `None`); the error is the handshake's.
    async fn connect(url: &str, protocol: Option<&str>, cert: Option<&Path>) -> Result<WsClient, WsError> {
        let mut req = url.into_client_request()?;
        if let Some(p) = protocol {
            req.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_str(p).expect("header value"));
        }
        let host = req.uri().host().expect("host").to_owned();
        let port = req.uri().port_u16().expect("port");
        let tcp = TcpStream::connect((host.as_str(), port)).await?;
        let (io, exporter): (Box<dyn Io>, _) = match cert {
            None => (Box::new(tcp), None),
            Some(cert) => {
                let config = tls_client_config(&TlsTrust::Pem(cert.to_owned())).expect("TLS config");
                let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
                let name = rustls::pki_types::ServerName::try_from(DOMAIN.to_owned()).expect("server name");
                let tls = connector.connect(name, tcp).await?;
                let exporter = tls
                    .get_ref()
                    .1
                    .export_keying_material([0u8; 32], b"EXPORTER-Channel-Binding", None)
                    .ok()
                    .map(|k| k.to_vec());
                (Box::new(tls), exporter)
            }
        };
        let (ws, resp) = tokio_tungstenite::client_async(req, io).await?;
        let protocol = resp.headers().get("Sec-WebSocket-Protocol").and_then(|v| v.to_str().ok()).map(str::to_owned);
        Ok(WsClient { ws, exporter, protocol, jid: None })
    }

    async fn send(&mut self, xml: &str) {
        self.ws.send(Message::text(xml)).await.expect("send a message");
    }

    /// The next message, which must be one element declaring its namespaces.
    async fn recv(&mut self) -> Frame {
        loop {
            let msg = match tokio::time::timeout(TIMEOUT, self.ws.next()).await {
                Err(_) => panic!("no message from the server within {TIMEOUT:?}"),
                Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => return Frame::Closed,
                Ok(Some(Ok(m))) => m,
            };
            match msg {
                Message::Text(text) => return Frame::Element(standalone(text.as_str()), text.as_str().to_owned()),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected message {other:?}"),
            }
        }
    }

    async fn recv_element(&mut self) -> (Element, String) {
        match self.recv().await {
            Frame::Element(el, text) => (el, text),
            Frame::Closed => panic!("the server closed the WebSocket"),
        }
    }

    /// The next message whose element satisfies `pred`, skipping others.
    async fn recv_until(&mut self, mut pred: impl FnMut(&Element) -> bool) -> (Element, String) {
        loop {
            let (el, text) = self.recv_element().await;
            if pred(&el) {
                return (el, text);
            }
        }
    }

    /// Sends `<open/>` and reads the server's `<open/>` and features.
    async fn open(&mut self) -> Element {
        self.send(&format!("<open xmlns='{FRAMING}' to='{DOMAIN}' version='1.0'/>")).await;
        let (open, _) = self.recv_element().await;
        assert!(open.is("open", FRAMING), "expected <open/>, got {open}");
        assert_eq!(open.attr("from"), Some(DOMAIN));
        assert_eq!(open.attr("version"), Some("1.0"));
        assert!(open.attr("id").is_some_and(|id| !id.is_empty()));
        let (features, text) = self.recv_element().await;
        assert!(features.is("features", ns::STREAM), "expected stream features, got {text}");
        assert!(!features.has_child("starttls", ns::TLS), "STARTTLS offered over WebSocket: {text}");
        features
    }

    async fn auth_plain(&mut self, user: &str, password: &str) {
        let initial = B64.encode(plain_initial_response(None, user, password));
        self.send(&format!("<auth xmlns='{}' mechanism='PLAIN'>{initial}</auth>", ns::SASL)).await;
        let (el, text) = self.recv_element().await;
        assert!(el.is("success", ns::SASL), "PLAIN failed: {text}");
    }

    async fn auth_scram_plus(&mut self, user: &str, password: &str) {
        let cb = self.exporter.clone().expect("a TLS 1.3 exporter");
        let mut scram = ScramClient::new(HashAlg::Sha256, user, password, ClientChannelBinding::TlsExporter(cb));
        let first = B64.encode(scram.client_first());
        self.send(&format!("<auth xmlns='{}' mechanism='SCRAM-SHA-256-PLUS'>{first}</auth>", ns::SASL)).await;
        let (challenge, text) = self.recv_element().await;
        assert!(challenge.is("challenge", ns::SASL), "expected a challenge, got {text}");
        let data = B64.decode(challenge.text().trim()).expect("base64 challenge");
        let reply = B64.encode(scram.handle_server_first(&data).expect("server-first"));
        self.send(&format!("<response xmlns='{}'>{reply}</response>", ns::SASL)).await;
        let (success, text) = self.recv_element().await;
        assert!(success.is("success", ns::SASL), "SCRAM-SHA-256-PLUS failed: {text}");
        let data = B64.decode(success.text().trim()).expect("base64 success");
        scram.verify_server_final(&data).expect("server signature");
    }

    /// Binds `resource` after the restart; returns the full JID.
    async fn bind(&mut self, resource: &str) -> String {
        self.send(&format!(
            "<iq xmlns='jabber:client' type='set' id='bind1'><bind xmlns='{}'><resource>{resource}</resource></bind></iq>",
            ns::BIND
        ))
        .await;
        let (iq, text) = self.recv_element().await;
        assert!(text.starts_with("<iq xmlns='jabber:client'"), "stanzas declare jabber:client: {text}");
        let jid = iq
            .get_child("bind", ns::BIND)
            .and_then(|b| b.get_child("jid", ns::BIND))
            .map(Element::text)
            .unwrap_or_else(|| panic!("bind failed: {text}"));
        self.jid = Some(jid.clone());
        jid
    }

    /// Open, PLAIN, restart, bind.
    async fn login(url: &str, user: &str, password: &str, resource: &str) -> WsClient {
        let mut c = WsClient::connect(url, Some("xmpp"), None).await.expect("WebSocket handshake");
        c.open().await;
        c.auth_plain(user, password).await;
        let features = c.open().await;
        assert!(features.has_child("bind", ns::BIND));
        c.bind(resource).await;
        c
    }

    /// Reads up to a stream error, then expects `<close/>` and the end.
    async fn expect_stream_error(&mut self) -> String {
        let (err, text) = self.recv_until(|el| el.is("error", ns::STREAM)).await;
        assert!(text.starts_with("<stream:error xmlns:stream='http://etherx.jabber.org/streams'>"), "{text}");
        let condition = err
            .elements()
            .find(|e| e.ns == ns::STREAMS && e.name != "text")
            .map(|e| e.name.clone())
            .unwrap_or_default();
        self.expect_close().await;
        condition
    }

    /// `<close/>`, then the WebSocket's end.
    async fn expect_close(&mut self) {
        let (close, text) = self.recv_element().await;
        assert!(close.is("close", FRAMING), "expected <close/>, got {text}");
        assert!(matches!(self.recv().await, Frame::Closed), "the WebSocket stays open after <close/>");
    }
}

/// Parses one message as a document of its own: nothing in scope but what it
/// declares, exactly one element (RFC 7395 §3.3.3).
fn standalone(text: &str) -> Element {
    let mut p = StreamParser::new(Limits { max_stanza_size: 1 << 20, max_depth: 64 });
    // The wrapper binds neither a default namespace nor the `stream` prefix.
    p.feed(b"<w:stream xmlns:w='http://etherx.jabber.org/streams'>");
    assert!(matches!(p.next_event(), Ok(Some(StreamEvent::Header(_)))));
    p.feed(text.as_bytes());
    let el = match p.next_event() {
        Ok(Some(StreamEvent::Stanza(el))) => el,
        other => panic!("message is not one element ({other:?}): {text}"),
    };
    assert!(matches!(p.next_event(), Ok(None)) && p.buffered_len() == 0, "more than one element: {text}");
    assert!(!el.ns.is_empty(), "message without a namespace: {text}");
    el
}

#[tokio::test]
async fn websocket_login_restart_bind_and_chat_with_a_tcp_user() {
    let (node, url) = ws_node(false, "", "[auth]\nallow_plain_without_tls = true\n");
    node.add_user("alice", "secret");
    node.add_user("bob", "secret");

    let mut ws = WsClient::connect(&url, Some("xmpp"), None).await.expect("WebSocket handshake");
    assert_eq!(ws.protocol.as_deref(), Some("xmpp"), "the server answers with the xmpp subprotocol");
    let features = ws.open().await;
    let mechanisms: Vec<String> = features
        .get_child("mechanisms", ns::SASL)
        .map(|m| m.elements().map(Element::text).collect())
        .unwrap_or_default();
    assert!(mechanisms.contains(&"PLAIN".to_owned()), "{mechanisms:?}");
    assert!(!mechanisms.iter().any(|m| m.ends_with("-PLUS")), "no channel binding without TLS: {mechanisms:?}");
    ws.auth_plain("alice", "secret").await;
    // Stream restart: <open/> again, now with bind.
    let features = ws.open().await;
    assert!(features.has_child("bind", ns::BIND));
    let alice = ws.bind("websocket").await;
    assert_eq!(alice, "alice@localhost/websocket");

    let mut bob = login(&node, "bob", "secret", "tcp").await;
    ws.send(&format!(
        "<message xmlns='jabber:client' to='{}' type='chat'><body>hi over ws</body></message>",
        bob.jid()
    ))
    .await;
    let m = bob.recv_message().await.expect("bob receives");
    assert_eq!(body(&m).as_deref(), Some("hi over ws"));
    assert_eq!(m.attr("from"), Some(alice.as_str()));
    bob.send(&message(&alice, "hi over tcp")).await.expect("bob replies");
    let (m, text) = ws.recv_until(|el| el.is("message", ns::CLIENT)).await;
    assert_eq!(body(&m).as_deref(), Some("hi over tcp"), "{text}");
    assert_eq!(m.attr("from"), Some(bob.jid()));
    assert!(text.starts_with("<message xmlns='jabber:client'"), "{text}");

    // <close/> closes cleanly: ours comes back, then the WebSocket ends,
    // and the session is gone.
    ws.send(&format!("<close xmlns='{FRAMING}'/>")).await;
    ws.expect_close().await;
    wait_until("the WebSocket session to end", TIMEOUT, || !node.session_jids().contains(&alice));
    assert!(node.session_jids().contains(&bob.jid().to_owned()));
}

/// `xmpp_element_in` counts each element read from a WebSocket once, with
/// its size as the message had it.
#[tokio::test]
async fn elements_over_websocket_are_counted() {
    const N: usize = 100;
    let (node, url) = ws_node(false, "", "[auth]\nallow_plain_without_tls = true\n");
    node.add_user("alice", "secret");
    node.add_user("bob", "secret");
    let mut ws = WsClient::login(&url, "alice", "secret", "websocket").await;
    let mut bob = login(&node, "bob", "secret", "tcp").await;
    let before = node.metrics();
    let mut bytes = 0;
    for i in 0..N {
        let xml = format!(
            "<message xmlns='jabber:client' to='{}' type='chat' id='w{i}'><body>over ws {i}</body></message>",
            bob.jid()
        );
        bytes += xml.len();
        ws.send(&xml).await;
    }
    for i in 0..N {
        let m = bob.recv_message().await.expect("bob receives");
        assert_eq!(m.attr("id"), Some(format!("w{i}").as_str()));
    }
    meerkat_tests::assert_messages_counted(&before, &node.metrics(), N, Some(bytes));
}

/// XEP-0198 over WebSocket: the WebSocket is dropped without a close while
/// messages arrive; a new WebSocket resumes the session and gets exactly the
/// messages the client had not acknowledged, in order.
#[tokio::test]
async fn websocket_session_resumes_after_the_connection_is_lost() {
    const SM: &str = "urn:xmpp:sm:3";
    let (node, url) = ws_node(false, "", "[auth]\nallow_plain_without_tls = true\n");
    node.add_user("alice", "secret");
    node.add_user("bob", "secret");
    let mut ws = WsClient::login(&url, "alice", "secret", "phone").await;
    ws.send(&format!("<enable xmlns='{SM}' resume='true'/>")).await;
    let (enabled, text) = ws.recv_until(|el| el.ns == SM && el.name != "r").await;
    assert!(enabled.is("enabled", SM), "{text}");
    let id = enabled.attr("id").expect("a resumption id").to_owned();

    let mut bob = login(&node, "bob", "secret", "tcp").await;
    let alice = "alice@localhost/phone";
    for i in 0..10 {
        bob.send(&message(alice, &format!("m{i}"))).await.expect("send");
    }
    // alice handles four, then her connection is lost without a close.
    let mut handled = 0u32;
    while handled < 4 {
        let (el, _) = ws.recv_until(|el| el.is("message", ns::CLIENT)).await;
        assert_eq!(body(&el), Some(format!("m{handled}")));
        handled += 1;
    }
    drop(ws);
    for i in 10..20 {
        bob.send(&message(alice, &format!("m{i}"))).await.expect("send");
    }

    let mut ws = WsClient::connect(&url, Some("xmpp"), None).await.expect("WebSocket handshake");
    ws.open().await;
    ws.auth_plain("alice", "secret").await;
    ws.open().await;
    ws.send(&format!("<resume xmlns='{SM}' previd='{id}' h='{handled}'/>")).await;
    let (resumed, text) = ws.recv_until(|el| el.ns == SM && el.name != "r").await;
    assert!(resumed.is("resumed", SM), "{text}");
    let mut got = Vec::new();
    while got.len() < 16 {
        let (el, _) = ws.recv_until(|el| el.is("message", ns::CLIENT)).await;
        got.push(body(&el).unwrap_or_default());
    }
    let want: Vec<String> = (4..20).map(|i| format!("m{i}")).collect();
    assert_eq!(got, want, "each unacknowledged message once, in order");
    assert_eq!(node.session_jids().iter().filter(|j| j.as_str() == alice).count(), 1);
}

#[tokio::test]
async fn websocket_without_the_xmpp_subprotocol_is_refused_with_400() {
    let (_node, url) = ws_node(false, "", "");
    for offered in [None, Some("mqtt"), Some("xmpp-bosh, chat")] {
        match WsClient::connect(&url, offered, None).await {
            Err(WsError::Http(resp)) => {
                assert_eq!(resp.status().as_u16(), 400, "offered {offered:?}");
                let text = String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned();
                assert!(text.contains("xmpp"), "the refusal says why: {text:?}");
            }
            Err(e) => panic!("offered {offered:?}: expected HTTP 400, got {e}"),
            Ok(_) => panic!("offered {offered:?}: the upgrade was accepted"),
        }
    }
    // Among several, xmpp is chosen.
    let c = WsClient::connect(&url, Some("chat, xmpp"), None).await.expect("handshake");
    assert_eq!(c.protocol.as_deref(), Some("xmpp"));
}

#[tokio::test]
async fn oversize_message_gets_a_stream_error_then_close() {
    let (node, url) = ws_node(false, "max_stanza_size = 4096\n", "[auth]\nallow_plain_without_tls = true\n");
    node.add_user("alice", "secret");
    let big = format!("<message xmlns='jabber:client' to='a@localhost'><body>{}</body></message>", "x".repeat(8000));

    // Before authentication.
    let mut c = WsClient::connect(&url, Some("xmpp"), None).await.expect("handshake");
    c.open().await;
    c.send(&big).await;
    assert_eq!(c.expect_stream_error().await, "policy-violation");

    // In a bound session, and in several continuation frames too.
    let mut c = WsClient::login(&url, "alice", "secret", "big").await;
    let jid = c.jid.clone().expect("bound");
    c.send(&big).await;
    assert_eq!(c.expect_stream_error().await, "policy-violation");
    wait_until("the session to end", TIMEOUT, || !node.session_jids().contains(&jid));

    let mut c = WsClient::connect(&url, Some("xmpp"), None).await.expect("handshake");
    c.open().await;
    let frames = big.as_bytes().chunks(1000).count();
    for (i, chunk) in big.as_bytes().chunks(1000).enumerate() {
        use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
        use tokio_tungstenite::tungstenite::protocol::frame::Frame as RawFrame;
        let opcode = if i == 0 { OpCode::Data(Data::Text) } else { OpCode::Data(Data::Continue) };
        let frame = RawFrame::message(chunk.to_vec(), opcode, i + 1 == frames);
        if c.ws.send(Message::Frame(frame)).await.is_err() {
            break;
        }
    }
    assert_eq!(c.expect_stream_error().await, "policy-violation");
}

#[tokio::test]
async fn bad_framing_gets_a_stream_error_then_close() {
    let (node, url) = ws_node(false, "", "[auth]\nallow_plain_without_tls = true\n");
    node.add_user("alice", "secret");
    let cases = [
        // An element split over two messages.
        ("<message xmlns='jabber:client' to='a@localhost'><body>", "not-well-formed"),
        // Two elements in one message.
        ("<presence xmlns='jabber:client'/><presence xmlns='jabber:client'/>", "not-well-formed"),
        // A TCP stream header instead of <open/>.
        ("</stream:stream>", "not-well-formed"),
    ];
    for (msg, want) in cases {
        let mut c = WsClient::login(&url, "alice", "secret", "framing").await;
        c.send(msg).await;
        assert_eq!(c.expect_stream_error().await, want, "{msg}");
    }
    // <open/> must be in the framing namespace (§3.3.2): the error follows our <open/>.
    let mut c = WsClient::connect(&url, Some("xmpp"), None).await.expect("handshake");
    c.send("<open xmlns='jabber:client' to='localhost' version='1.0'/>").await;
    let (open, text) = c.recv_element().await;
    assert!(open.is("open", FRAMING), "{text}");
    assert_eq!(c.expect_stream_error().await, "invalid-namespace");
    // An element where <open/> belongs: our <open/> still comes first.
    let mut c = WsClient::connect(&url, Some("xmpp"), None).await.expect("handshake");
    c.send("<presence xmlns='jabber:client'/>").await;
    let (open, text) = c.recv_element().await;
    assert!(open.is("open", FRAMING), "{text}");
    assert_eq!(c.expect_stream_error().await, "not-authorized");
    // A binary message is not XMPP.
    let mut c = WsClient::connect(&url, Some("xmpp"), None).await.expect("handshake");
    c.open().await;
    c.ws.send(Message::binary(b"<presence/>".to_vec())).await.expect("send");
    assert_eq!(c.expect_stream_error().await, "bad-format");
}

#[tokio::test]
async fn close_before_authentication_closes_cleanly() {
    let (_node, url) = ws_node(false, "", "");
    let mut c = WsClient::connect(&url, Some("xmpp"), None).await.expect("handshake");
    c.open().await;
    c.send(&format!("<close xmlns='{FRAMING}'/>")).await;
    c.expect_close().await;
}

/// Over `wss` the HTTP listener's TLS is the stream's: PLAIN is offered as
/// on a TLS stream, and SCRAM-*-PLUS binds to the connection's exporter.
#[tokio::test]
async fn wss_offers_scram_plus_bound_to_the_tls_exporter() {
    let (node, url) = ws_node(true, "", "");
    node.add_user("alice", "secret");
    let mut c = WsClient::connect(&url, Some("xmpp"), Some(&node.cert_path())).await.expect("wss handshake");
    let features = c.open().await;
    let mechanisms: Vec<String> = features
        .get_child("mechanisms", ns::SASL)
        .map(|m| m.elements().map(Element::text).collect())
        .unwrap_or_default();
    assert!(mechanisms.contains(&"SCRAM-SHA-256-PLUS".to_owned()), "{mechanisms:?}");
    assert!(mechanisms.contains(&"PLAIN".to_owned()), "PLAIN is fine under TLS: {mechanisms:?}");
    let bindings: Vec<&str> = features
        .get_child("sasl-channel-binding", ns::SASL_CB)
        .map(|b| b.elements().filter_map(|e| e.attr("type")).collect())
        .unwrap_or_default();
    assert_eq!(bindings, ["tls-exporter"]);
    c.auth_scram_plus("alice", "secret").await;
    c.open().await;
    assert_eq!(c.bind("tls").await, "alice@localhost/tls");
}

/// `[session] idle_timeout` applies as on TCP.
#[tokio::test]
async fn a_silent_websocket_session_times_out() {
    let extra =
        "[auth]\nallow_plain_without_tls = true\n[session]\nidle_timeout = 1\n[modules.mod_ping]\nsend_pings = false\n";
    let (node, url) = ws_node(false, "", extra);
    node.add_user("alice", "secret");
    let mut c = WsClient::login(&url, "alice", "secret", "silent").await;
    assert_eq!(c.expect_stream_error().await, "connection-timeout");
}

#[tokio::test]
async fn shutdown_closes_websocket_sessions_with_system_shutdown() {
    let (mut node, url) = ws_node(false, "", "[auth]\nallow_plain_without_tls = true\n");
    node.add_user("alice", "secret");
    let mut c = WsClient::login(&url, "alice", "secret", "shutdown").await;
    node.sigterm();
    assert_eq!(c.expect_stream_error().await, "system-shutdown");
    assert!(node.wait_exit(Duration::from_secs(20)).is_some_and(|s| s.success()), "the node exits cleanly");
}

// ---------------------------------------------------------------- xmpp.js

/// xmpp.js logs in over WebSocket and over TCP (STARTTLS, certificate
/// checked), and the two exchange messages with each other and with a
/// slixmpp user (`tests/python/echo_peer.py`) who answers each.
#[test]
fn xmpp_js_over_websocket_and_tcp_exchanges_messages() {
    npm_ci();
    let (node, url) = ws_node(false, "", "");
    for user in ["alice", "bob", "carol"] {
        node.add_user(user, "secret");
    }
    // Carol answers each message until both xmpp.js clients heard back.
    let carol = EchoPeer::start(&node, "carol@localhost/slixmpp", "secret", 2, false, Duration::from_secs(120));

    let tcp = format!("xmpp://{}", SocketAddr::new(node.c2s.ip(), node.c2s.port()));
    let out = Command::new("node")
        .args(node_flags())
        .arg("interop.mjs")
        .args(["--ws", &url, "--tcp", &tcp, "--domain", DOMAIN, "--password", "secret"])
        .args(["--ws-user", "alice", "--tcp-user", "bob", "--peer", "carol@localhost", "--timeout", "60000"])
        .env("NODE_EXTRA_CA_CERTS", node.cert_path())
        .current_dir(js_dir())
        .output()
        .expect("running node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "xmpp.js scenario failed ({}):\n{stdout}\n{stderr}", out.status);
    let summary: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("JSON summary");
    assert_eq!(summary["ok"], true, "{summary}");
    // xmpp.js logs in with SASL2 and Bind2 (XEP-0388, XEP-0386): the resource
    // is its tag ("resource" option) and a random part.
    for (who, jid) in [("ws", "alice@localhost/ws."), ("tcp", "bob@localhost/tcp.")] {
        assert!(summary[who]["jid"].as_str().unwrap_or_default().starts_with(jid), "{summary}");
        assert_eq!(summary[who]["profile"], "sasl2+bind2", "{summary}");
    }
    // ws:// is not encrypted, so PLAIN is not offered there.
    assert_eq!(summary["ws"]["mechanism"], "SCRAM-SHA-1", "{summary}");
    let received = |who: &str| -> Vec<(String, String)> {
        summary[who]["received"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|m| {
                        (
                            m["from"].as_str().unwrap_or_default().to_owned(),
                            m["body"].as_str().unwrap_or_default().to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(carol.jid, "carol@localhost/slixmpp");
    let carol_full = carol.jid.clone();
    let (ws_jid, tcp_jid) =
        (summary["ws"]["jid"].as_str().unwrap_or_default(), summary["tcp"]["jid"].as_str().unwrap_or_default());
    assert!(received("ws").contains(&(tcp_jid.into(), "tcp to ws".into())), "{summary}");
    assert!(received("ws").contains(&(carol_full.clone(), "echo: hello from ws".into())), "{summary}");
    assert!(received("tcp").contains(&(ws_jid.into(), "ws to tcp".into())), "{summary}");
    assert!(received("tcp").contains(&(carol_full, "echo: hello from tcp".into())), "{summary}");

    let carol = carol.finish(Duration::from_secs(60));
    let mut froms: Vec<(String, String)> = carol["received"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| (m["from"].as_str().unwrap_or_default().to_owned(), m["body"].as_str().unwrap_or_default().to_owned()))
        .collect();
    froms.sort();
    assert_eq!(
        froms,
        [(ws_jid.to_owned(), "hello from ws".to_owned()), (tcp_jid.to_owned(), "hello from tcp".to_owned())],
        "{carol}"
    );
}
