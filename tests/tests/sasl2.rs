//! SASL2 (XEP-0388), Bind2 (XEP-0386) and FAST (XEP-0484) with a real
//! client: xmpp.js (@xmpp/client 0.14, `tests/js/fast.mjs`) over WebSocket
//! and over TCP with STARTTLS logs in with its password, asks for a FAST
//! token, logs in again with the token alone in one round trip, keeps
//! working across a rotation, and falls back to its password when the node
//! does not know its token.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use meerkat_tests::js::{js_dir, node_flags, npm_ci};
use meerkat_tests::node::free_port;
use meerkat_tests::{TestNode, DOMAIN};
use serde_json::Value;

/// A node with a WebSocket listener whose FAST tokens rotate on every login
/// with the token in use (`rotate_before_expire` = `access`).
fn node() -> (TestNode, String) {
    let port = free_port();
    let node = TestNode::start(&format!(
        "[modules.mod_fast_auth_token]\n\
         validity_period.access = {{value = 1, unit = \"hours\"}}\n\
         validity_period.rotate_before_expire = {{value = 1, unit = \"hours\"}}\n\n\
         [[listen.http]]\nport = {port}\nip_address = \"127.0.0.1\"\n\
         [[listen.http.handlers.mod_websockets]]\nhost = \"_\"\npath = \"/ws-xmpp\"\n"
    ));
    node.add_user("alice", "secret");
    (node, format!("ws://127.0.0.1:{port}/ws-xmpp"))
}

/// Runs `tests/js/fast.mjs` at `service` as the user agent `agent` (tokens
/// belong to one).
fn run(node: &TestNode, service: &str, agent: &str) -> Value {
    let out = Command::new("node")
        .args(node_flags())
        .arg("fast.mjs")
        .args(["--service", service, "--domain", DOMAIN, "--username", "alice", "--password", "secret"])
        .args(["--agent", agent])
        .env("NODE_EXTRA_CA_CERTS", node.cert_path())
        .current_dir(js_dir())
        .output()
        .expect("running node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "fast.mjs at {service} failed:\n{stdout}\n{}\nnode log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        node.log()
    );
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap()
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default()
}

#[test]
fn xmpp_js_logs_in_with_a_fast_token_in_one_round_trip_across_rotations_and_falls_back_to_its_password() {
    npm_ci();
    let (node, ws) = node();
    let tcp = format!("xmpp://{}", node.c2s);
    let agents = ["8a3f2d1e-4b5c-4d6e-9f70-000000000001", "8a3f2d1e-4b5c-4d6e-9f70-000000000002"];
    for (service, agent) in [ws.as_str(), tcp.as_str()].into_iter().zip(agents) {
        let summary = run(&node, service, agent);
        let logins = summary["logins"].as_array().unwrap();
        assert_eq!(logins.len(), 7, "{summary}");
        let l = |i: usize| &logins[i];
        for login in logins {
            assert!(login["jid"].as_str().unwrap().starts_with(&format!("alice@{DOMAIN}/fast.")), "{login}");
            assert_eq!(login["tokenMechanism"], "HT-SHA-256-NONE", "{login}");
        }
        let fast_in_one_round_trip = |i: usize| {
            assert_eq!(strings(&l(i)["mechanisms"]), ["HT-SHA-256-NONE"], "login {i}: {summary}");
            // <authenticate/> is all the client sends before it is online.
            assert_eq!(strings(&l(i)["sent"]), ["authenticate"], "login {i}: {summary}");
        };
        // 1. The password; a token comes with <success/>.
        assert_eq!(strings(&l(0)["mechanisms"]), ["SCRAM-SHA-1"], "{summary}");
        assert!(l(0)["token"].is_string(), "{summary}");
        // 2. The token alone; the node rotates it (this node rotates on every
        //    login with the token in use): the next one comes with <success/>.
        fast_in_one_round_trip(1);
        assert_ne!(l(1)["token"], l(0)["token"], "rotated: {summary}");
        // 3. The rotated token works, and is now the one in use (no new token).
        fast_in_one_round_trip(2);
        assert_eq!(l(2)["token"], l(1)["token"], "{summary}");
        // 4. And it rotates in turn.
        fast_in_one_round_trip(3);
        assert_ne!(l(3)["token"], l(2)["token"], "rotated: {summary}");
        // 5. A token the node never issued: refused, then the password, and a new token.
        assert_eq!(strings(&l(4)["mechanisms"]), ["HT-SHA-256-NONE", "SCRAM-SHA-1"], "{summary}");
        assert_ne!(l(4)["token"], "not-a-token-the-server-issued", "{summary}");
        // 6. That new token.
        fast_in_one_round_trip(5);
        // 7. An expired token: the password, and a new token.
        assert_eq!(strings(&l(6)["mechanisms"]), ["SCRAM-SHA-1"], "{summary}");
        assert_ne!(l(6)["token"], l(5)["token"], "{summary}");
        println!("{service}: FAST login wire exchange:");
        for line in strings(&l(2)["wire"]) {
            println!("  {line}");
        }
    }
}

/// `<authenticate/>` with PLAIN inside SASL2, these extra children, and the
/// answer to it.
async fn authenticate(c: &mut meerkat_tests::Client, user: &str, extra: &str) -> meerkat_xmpp::element::Element {
    use base64::Engine as _;
    let initial = meerkat_xmpp::sasl::plain_initial_response(None, user, "secret");
    let xml = format!(
        "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'><initial-response>{}</initial-response>\
         <user-agent id='5c0a3b1e-0000-4000-8000-000000000001'/>{extra}</authenticate>",
        base64::engine::general_purpose::STANDARD.encode(initial)
    );
    c.send_str(&xml).await.unwrap();
    c.recv_until(|e| e.ns == meerkat_xmpp::ns::SASL2).await.unwrap()
}

#[tokio::test]
async fn a_session_is_resumed_inside_sasl2_after_its_connection_is_cut() {
    use meerkat_tests::{Client, Security};
    use meerkat_xmpp::ns;
    let node = TestNode::start("");
    node.add_user("alice", "secret");
    node.add_user("bob", "secret");
    // Bind2 with stream management enabled inline.
    let mut c = Client::connect(node.c2s, DOMAIN, Security::StartTls).await.unwrap();
    let bind = "<bind xmlns='urn:xmpp:bind:0'><tag>phone</tag><enable xmlns='urn:xmpp:sm:3' resume='true'/></bind>";
    let success = authenticate(&mut c, "alice", bind).await;
    assert!(success.is("success", ns::SASL2), "{success}");
    let jid = success.get_child("authorization-identifier", ns::SASL2).unwrap().text();
    let enabled = success
        .get_child("bound", ns::BIND2)
        .and_then(|b| b.get_child("enabled", ns::SM))
        .unwrap_or_else(|| panic!("no <enabled/> in <bound/>: {success}"));
    let previd = enabled.attr("id").unwrap().to_owned();
    c.send_str("<presence/>").await.unwrap();
    c.recv_until(|e| e.name == "presence").await.unwrap();
    // Bob writes while alice's connection is gone.
    drop(c);
    let mut bob = meerkat_tests::login(&node, "bob", "secret", "desk").await;
    bob.send_message(&jid, "while you were away").await.unwrap();
    // A new connection resumes inside its authentication.
    let mut c = Client::connect(node.c2s, DOMAIN, Security::StartTls).await.unwrap();
    let sm_offered = c.has_feature("authentication", ns::SASL2);
    assert!(sm_offered);
    let resume = format!(
        "<resume xmlns='urn:xmpp:sm:3' previd='{previd}' h='1'/><bind xmlns='urn:xmpp:bind:0'><tag>phone</tag></bind>"
    );
    let success = authenticate(&mut c, "alice", &resume).await;
    assert!(success.is("success", ns::SASL2), "{success}");
    assert_eq!(success.get_child("authorization-identifier", ns::SASL2).unwrap().text(), jid, "the same session");
    assert!(success.has_child("resumed", ns::SM), "{success}");
    assert!(!success.has_child("bound", ns::BIND2), "bind is ignored when resuming: {success}");
    let m = c.recv_until(|e| e.name == "message").await.unwrap();
    assert!(m.to_string().contains("while you were away"), "{m}");
    // A resumption nobody waits for: <failed/> inside <success/>, and bound as asked.
    let mut c = Client::connect(node.c2s, DOMAIN, Security::StartTls).await.unwrap();
    let resume =
        "<resume xmlns='urn:xmpp:sm:3' previd='nobody' h='0'/><bind xmlns='urn:xmpp:bind:0'><tag>tab</tag></bind>";
    let success = authenticate(&mut c, "alice", resume).await;
    assert!(success.has_child("failed", ns::SM), "{success}");
    assert!(success.has_child("bound", ns::BIND2), "{success}");
    assert!(success.get_child("authorization-identifier", ns::SASL2).unwrap().text().contains("/tab."), "{success}");
}

/// A raw TLS client reading whole elements.
struct Raw {
    tls: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    parser: meerkat_xmpp::parser::StreamParser,
}

impl Raw {
    /// Connects to the direct-TLS listener with tokio-rustls's 0-RTT, writing
    /// `early` first: as TLS 1.3 early data when the connector holds a
    /// session ticket. Whether the server took it as early data.
    async fn connect(connector: &tokio_rustls::TlsConnector, addr: std::net::SocketAddr, early: &[u8]) -> (Raw, bool) {
        use tokio::io::AsyncWriteExt as _;
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from(DOMAIN.to_owned()).unwrap();
        let mut tls = connector.clone().early_data(true).connect(name, tcp).await.unwrap();
        if !early.is_empty() {
            tls.write_all(early).await.unwrap();
            // Ends the handshake (writing the data again were it refused as early data).
            tls.flush().await.unwrap();
        }
        let accepted = !early.is_empty() && tls.get_ref().1.is_early_data_accepted();
        let limits = meerkat_xmpp::parser::Limits { max_stanza_size: 1 << 20, max_depth: 64 };
        (Raw { tls, parser: meerkat_xmpp::parser::StreamParser::new(limits) }, accepted)
    }

    async fn send(&mut self, xml: &str) {
        use tokio::io::AsyncWriteExt as _;
        self.tls.write_all(xml.as_bytes()).await.unwrap();
        self.tls.flush().await.unwrap();
    }

    /// The next top-level element (stream errors included).
    async fn next(&mut self) -> meerkat_xmpp::element::Element {
        use meerkat_xmpp::parser::StreamEvent;
        use tokio::io::AsyncReadExt as _;
        loop {
            match self.parser.next_event().unwrap() {
                Some(StreamEvent::Stanza(el)) => return el,
                Some(_) => continue,
                None => {}
            }
            let mut buf = [0u8; 8192];
            let n = tokio::time::timeout(meerkat_tests::TIMEOUT, self.tls.read(&mut buf)).await.unwrap().unwrap();
            assert!(n > 0, "the server closed the connection");
            self.parser.feed(&buf[..n]);
        }
    }

    /// The next element in namespace `ns`.
    async fn next_in(&mut self, ns: &str) -> meerkat_xmpp::element::Element {
        loop {
            let el = self.next().await;
            if el.ns == ns || el.is("error", meerkat_xmpp::ns::STREAM) {
                return el;
            }
        }
    }
}

const AGENT_0RTT: &str = "0e7a1d2c-0000-4000-8000-00000000e0e0";

fn header() -> String {
    format!("<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='{DOMAIN}' version='1.0'>")
}

/// A FAST `<authenticate/>` for `token` with `<fast count/>` (none when 0).
fn fast_authenticate(token: &str, count: u32) -> String {
    use base64::Engine as _;
    let m = meerkat_xmpp::sasl::fast::HtMechanism::from_name("HT-SHA-256-NONE").unwrap();
    let initial = base64::engine::general_purpose::STANDARD.encode(m.initial_response("alice", token, b""));
    let fast = if count == 0 { String::new() } else { format!(" count='{count}'") };
    format!(
        "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='HT-SHA-256-NONE'><initial-response>{initial}</initial-response>\
         <user-agent id='{AGENT_0RTT}'/><bind xmlns='urn:xmpp:bind:0'><tag>0rtt</tag></bind>\
         <fast xmlns='urn:xmpp:fast:0'{fast}/></authenticate>"
    )
}

#[tokio::test]
async fn a_fast_login_in_tls_early_data_takes_no_round_trip_and_its_replay_is_refused() {
    use base64::Engine as _;
    use meerkat_xmpp::ns;
    let node = TestNode::start_with(meerkat_tests::node::NodeOptions {
        tls_listener_toml: "tls.early_data = true\n".into(),
        ..Default::default()
    });
    node.add_user("alice", "secret");
    let mut config = meerkat_tests::client::tls_client_config(&meerkat_tests::TlsTrust::AcceptAny).unwrap();
    config.enable_early_data = true;
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));

    // A full handshake: the password, a token, and a session ticket for later.
    let (mut c, early) = Raw::connect(&connector, node.c2s_tls, b"").await;
    assert!(!early);
    c.send(&header()).await;
    c.next_in(ns::STREAM).await;
    let plain = base64::engine::general_purpose::STANDARD
        .encode(meerkat_xmpp::sasl::plain_initial_response(None, "alice", "secret"));
    c.send(&format!(
        "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'><initial-response>{plain}</initial-response>\
         <user-agent id='{AGENT_0RTT}'/><bind xmlns='urn:xmpp:bind:0'><tag>0rtt</tag></bind>\
         <request-token xmlns='urn:xmpp:fast:0' mechanism='HT-SHA-256-NONE'/></authenticate>"
    ))
    .await;
    let success = c.next_in(ns::SASL2).await;
    let token = success.get_child("token", ns::FAST).and_then(|t| t.attr("token")).unwrap().to_owned();
    drop(c);

    // 0-RTT: the header and the FAST authentication go with the ClientHello;
    // the client writes nothing more and reads its <success/>.
    let flight = format!("{}{}", header(), fast_authenticate(&token, 1));
    let (mut c, early) = Raw::connect(&connector, node.c2s_tls, flight.as_bytes()).await;
    assert!(early, "the node took the early data");
    let success = c.next_in(ns::SASL2).await;
    assert!(success.is("success", ns::SASL2), "{success}");
    assert!(success.has_child("bound", ns::BIND2), "{success}");
    println!("0-RTT: C (early data, with the ClientHello): {flight}\n0-RTT: S: {success}");
    drop(c);

    // The same flight again (a replay): the count is not above the last one.
    let (mut c, early) = Raw::connect(&connector, node.c2s_tls, flight.as_bytes()).await;
    assert!(early);
    let failure = c.next_in(ns::SASL2).await;
    assert!(failure.is("failure", ns::SASL2) && failure.to_string().contains("not-authorized"), "{failure}");
    drop(c);

    // A higher count works again; without a count, early data is refused.
    let flight = format!("{}{}", header(), fast_authenticate(&token, 2));
    let (mut c, early) = Raw::connect(&connector, node.c2s_tls, flight.as_bytes()).await;
    assert!(early);
    assert!(c.next_in(ns::SASL2).await.is("success", ns::SASL2));
    drop(c);
    let flight = format!("{}{}", header(), fast_authenticate(&token, 0));
    let (mut c, early) = Raw::connect(&connector, node.c2s_tls, flight.as_bytes()).await;
    assert!(early);
    let err = c.next_in(ns::SASL2).await;
    assert!(err.is("error", ns::STREAM) && err.to_string().contains("policy-violation"), "{err}");
}
