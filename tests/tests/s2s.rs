//! Federation between two Meerkat nodes serving different domains
//! (`a.test` and `b.test`), each finding the other at its fixed
//! `[s2s.outgoing] address`: STARTTLS on every stream, dialback (XEP-0220)
//! with keys from each node's own secret, messages both ways in order, a
//! forged dialback key refused, and a domain with no server bounced once.
//! With certificates from a CA both trust, the streams authenticate with
//! SASL EXTERNAL (XEP-0178) instead; a certificate that does not verify, or
//! does not name the stream's domain, leaves dialback.

use std::path::Path;
use std::time::Duration;

use meerkat_tests::client::{
    body, message, stanza_error, tls_client_config, tls_client_config_with, ClientCert, TlsTrust,
};
use meerkat_tests::node::free_port;
use meerkat_tests::pki::{Issued, TestCa};
use meerkat_tests::{Client, NodeOptions, TestNode};
use meerkat_xmpp::element::Element;
use meerkat_xmpp::parser::{Limits, StreamEvent, StreamParser};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;

const TIMEOUT: Duration = Duration::from_secs(20);

/// A node serving `domain`, federating on `s2s_port`, that finds `peer` at `peer_port`.
fn federating_node(domain: &str, s2s_port: u16, peer: &str, peer_port: u16) -> TestNode {
    federating_node_with(domain, s2s_port, peer, peer_port, None)
}

/// As [`federating_node`], with `more` added to its configuration.
fn federating_node_and(domain: &str, s2s_port: u16, peer: &str, peer_port: u16, more: &str) -> TestNode {
    start_federating(domain, s2s_port, peer, peer_port, None, more)
}

/// As [`federating_node`]; with `pki`, the node presents `pki.1` and checks
/// the certificates of servers in and out against the CA file `pki.0`.
fn federating_node_with(
    domain: &str,
    s2s_port: u16,
    peer: &str,
    peer_port: u16,
    pki: Option<(&Path, &Issued)>,
) -> TestNode {
    start_federating(domain, s2s_port, peer, peer_port, pki, "")
}

fn start_federating(
    domain: &str,
    s2s_port: u16,
    peer: &str,
    peer_port: u16,
    pki: Option<(&Path, &Issued)>,
    more: &str,
) -> TestNode {
    let (listen_tls, out_tls) = match pki {
        Some((ca, ours)) => (
            format!(
                "tls.certfile = {:?}\ntls.keyfile = {:?}\ntls.cacertfile = {:?}\n",
                ours.cert.display().to_string(),
                ours.key.display().to_string(),
                ca.display().to_string()
            ),
            format!("tls.cacertfile = {:?}\n", ca.display().to_string()),
        ),
        None => (String::new(), String::new()),
    };
    let extra = format!(
        "[[listen.s2s]]\nport = {s2s_port}\nip_address = \"127.0.0.1\"\n{listen_tls}\n\
         [s2s.outgoing]\nconnection_timeout = 2000\n{out_tls}\
         address = [{{ host = \"{peer}\", ip_address = \"127.0.0.1\", port = {peer_port} }}]\n{more}"
    );
    TestNode::start_with(NodeOptions { hosts: vec![domain.into()], extra_toml: extra, ..Default::default() })
}

async fn user(node: &TestNode, domain: &str, name: &str) -> Client {
    node.add_user_at(domain, name, "secret");
    Client::login(node.c2s, domain, name, "secret", Some("r")).await.unwrap_or_else(|e| panic!("{name}@{domain}: {e}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn two_domains_federate_with_dialback_over_tls() {
    let (pa, pb) = (free_port(), free_port());
    let a = federating_node("a.test", pa, "b.test", pb);
    let b = federating_node("b.test", pb, "a.test", pa);
    let mut alice = user(&a, "a.test", "alice").await;
    let mut bob = user(&b, "b.test", "bob").await;

    const N: usize = 100;
    for i in 0..N {
        alice.send(&message("bob@b.test/r", &format!("a{i}"))).await.expect("send");
    }
    for i in 0..N {
        let m = bob.recv_message().await.expect("bob receives");
        assert_eq!(body(&m).as_deref(), Some(format!("a{i}").as_str()), "{m:?}");
        assert_eq!(m.attr("from"), Some("alice@a.test/r"));
    }
    for i in 0..N {
        bob.send(&message("alice@a.test/r", &format!("b{i}"))).await.expect("send");
    }
    for i in 0..N {
        let m = alice.recv_message().await.expect("alice receives");
        assert_eq!(body(&m).as_deref(), Some(format!("b{i}").as_str()), "{m:?}");
        assert_eq!(m.attr("from"), Some("bob@b.test/r"));
    }
    // Each node authenticated the other by dialback, and counted the traffic.
    for (node, peer) in [(&a, "b.test"), (&b, "a.test")] {
        assert!(node.log().contains("s2s dialback in"), "{}", node.log());
        let m = node.metrics();
        let s2s_in = [("connection_type", "s2s")];
        assert!(m.value("xmpp_element_in_message_count", &s2s_in) >= N as f64, "{peer}: {}", m.0);
        assert!(m.value("xmpp_element_out_message_count", &s2s_in) >= N as f64, "{peer}: {}", m.0);
        assert!(m.value("tls_data_in_byte_size", &s2s_in) > 0.0, "{}", m.0);
    }

    // The admin views: node a's stream out to b.test, and b.test's stream in,
    // authenticated by dialback under TLS.
    let (code, v) = a.api("GET", "/api/s2s", None);
    assert_eq!(code, 200, "{v}");
    let out = v["outgoing"].as_array().cloned().unwrap_or_default();
    assert!(
        out.iter().any(|o| o["local"] == "a.test" && o["remote"] == "b.test" && o["state"] == "established"),
        "{v}"
    );
    let incoming = v["incoming"].as_array().cloned().unwrap_or_default();
    assert!(
        incoming
            .iter()
            .any(|i| i["domains"] == serde_json::json!(["b.test"]) && i["tls"] == true && i["local"] == "a.test"),
        "{v}"
    );
    let listed = a.cli(&["s2s", "list"]);
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.status.success() && text.contains("a.test -> b.test  established  dialback"), "{text}");

    // An error from the remote server is delivered, never answered: a
    // message to someone bob's server does not have comes back once.
    alice.send(&message("nobody@b.test", "hello?")).await.expect("send");
    let e = alice.recv_until(|e| e.name == "message" && e.attr("type") == Some("error")).await.expect("an error");
    assert_eq!(stanza_error(&e).as_deref(), Some("service-unavailable"), "{e:?}");
    assert_eq!(e.attr("from"), Some("nobody@b.test"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_domain_with_no_server_bounces_once() {
    let (pa, pb) = (free_port(), free_port());
    // b.test's address is a port nobody listens on.
    let a = federating_node("a.test", pa, "b.test", pb);
    let mut alice = user(&a, "a.test", "alice").await;
    alice.send(&message("bob@b.test", "one")).await.expect("send");
    alice.send(&message("bob@nowhere.invalid", "two")).await.expect("send");
    let mut errors = Vec::new();
    for _ in 0..2 {
        let e = alice.recv_until(|e| e.name == "message").await.expect("a bounce");
        assert_eq!(e.attr("type"), Some("error"), "{e:?}");
        errors.push((e.attr("from").unwrap_or_default().to_owned(), stanza_error(&e).unwrap_or_default()));
    }
    errors.sort();
    assert_eq!(
        errors,
        vec![
            ("bob@b.test".to_owned(), "remote-server-not-found".to_owned()),
            ("bob@nowhere.invalid".to_owned(), "remote-server-not-found".to_owned()),
        ]
    );
    // Nothing more comes: a round trip to our own server passes no second bounce.
    let pong =
        alice.iq_xml("<iq type='get' id='p1' to='a.test'><ping xmlns='urn:xmpp:ping'/></iq>").await.expect("ping");
    assert_eq!(pong.attr("type"), Some("result"));
    // A node without [[listen.s2s]] says federation is not configured.
    let plain = TestNode::start("");
    let (code, v) = plain.api("GET", "/api/s2s", None);
    assert_eq!((code, v["error"].as_str()), (404, Some("not_found")), "{v}");
    assert!(alice.backlog().all(|e| e.name != "message"), "a second bounce: {:?}", alice.backlog().collect::<Vec<_>>());
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A raw server-to-server stream, as a forging peer would open it.
struct RawPeer {
    io: Box<dyn Io>,
    parser: StreamParser,
}

impl RawPeer {
    async fn send(&mut self, xml: &str) {
        self.io.write_all(xml.as_bytes()).await.expect("write");
    }

    async fn next(&mut self) -> StreamEvent {
        loop {
            if let Some(ev) = self.parser.next_event().expect("a well-formed stream") {
                return ev;
            }
            let mut buf = [0u8; 4096];
            let n =
                tokio::time::timeout(TIMEOUT, self.io.read(&mut buf)).await.expect("an answer in time").expect("read");
            if n == 0 {
                return StreamEvent::End;
            }
            self.parser.feed(&buf[..n]);
        }
    }

    async fn element(&mut self) -> Element {
        loop {
            match self.next().await {
                StreamEvent::Stanza(el) => return el,
                StreamEvent::Header(_) => {}
                StreamEvent::End => panic!("the stream ended"),
            }
        }
    }

    async fn open(&mut self) -> String {
        self.open_with_features().await.0
    }

    async fn open_features(&mut self) -> Element {
        self.open_with_features().await.1
    }

    async fn open_with_features(&mut self) -> (String, Element) {
        self.parser.reset();
        self.send(
            "<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' \
             xmlns:db='jabber:server:dialback' from='a.test' to='b.test' version='1.0'>",
        )
        .await;
        let StreamEvent::Header(h) = self.next().await else { panic!("no header") };
        let features = self.element().await;
        assert_eq!(features.name, "features");
        (h.id.expect("the receiving server gives a stream id"), features)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forged_dialback_key_is_refused() {
    let (pa, pb) = (free_port(), free_port());
    let a = federating_node("a.test", pa, "b.test", pb);
    let b = federating_node("b.test", pb, "a.test", pa);
    let mut bob = user(&b, "b.test", "bob").await;

    let tcp = TcpStream::connect(("127.0.0.1", pb)).await.expect("connect");
    let mut peer = RawPeer { io: Box::new(tcp), parser: StreamParser::new(Limits::default()) };
    peer.open().await;
    // Dialback before TLS is refused: the features require STARTTLS.
    peer.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>").await;
    assert_eq!(peer.element().await.name, "proceed");
    let RawPeer { io, .. } = peer;
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(
        tls_client_config(&TlsTrust::AcceptAny).expect("client config"),
    ));
    let name = rustls::pki_types::ServerName::try_from("b.test").expect("name");
    let tls = connector.connect(name, io).await.expect("TLS");
    let mut peer = RawPeer { io: Box::new(tls), parser: StreamParser::new(Limits::default()) };
    peer.open().await;
    // A key a.test's server never made: b.test asks a.test's server, which says no.
    peer.send("<db:result from='a.test' to='b.test'>0123456789abcdef</db:result>").await;
    let answer = peer.element().await;
    assert_eq!(answer.name, "result", "{answer:?}");
    assert_eq!(answer.attr("type"), Some("invalid"), "{answer:?}");
    assert_eq!(b.metrics().value("s2s_auth_failed_count", &[("host_type", "b.test")]), 1.0);
    // A stanza from the unauthenticated domain ends the stream.
    peer.send("<message from='mallory@a.test' to='bob@b.test'><body>forged</body></message>").await;
    let err = peer.element().await;
    assert_eq!(err.name, "error", "{err:?}");
    assert!(err.elements().any(|e| e.name == "invalid-from"), "{err:?}");
    // Bob got nothing of it: the first message he gets is a genuine one.
    let mut alice = user(&a, "a.test", "alice").await;
    alice.send(&message("bob@b.test/r", "genuine")).await.expect("send");
    let m = bob.recv_message().await.expect("bob receives");
    assert_eq!(body(&m).as_deref(), Some("genuine"), "a forged message was delivered: {m:?}");
}

/// In a cluster, every node federates: a user on node 2 reaches a remote
/// domain over node 2's own stream out, and the remote server's stream in
/// lands on node 1, which routes to the user on node 2. The nodes share the
/// dialback secret through their database, so the remote server may check
/// node 2's key with node 1.
#[tokio::test(flavor = "multi_thread")]
async fn every_node_of_a_cluster_federates() {
    use meerkat_tests::cluster::{Placement, SharedDb, TestCluster};
    let (p1, p2, pb) = (free_port(), free_port(), free_port());
    let cluster_s2s = move |port: u16| {
        format!(
            "[[listen.s2s]]\nport = {port}\nip_address = \"127.0.0.1\"\n\n[s2s.outgoing]\nconnection_timeout = 2000\n\
             address = [{{ host = \"b.test\", ip_address = \"127.0.0.1\", port = {pb} }}]\n"
        )
    };
    let c = tokio::task::spawn_blocking(move || {
        TestCluster::start_configured(
            SharedDb::postgres(),
            vec![(Placement::loopback(), cluster_s2s(p1)), (Placement::loopback(), cluster_s2s(p2))],
        )
    })
    .await
    .expect("cluster");
    // b.test finds the cluster's domain at node 1 only.
    let b = federating_node("b.test", pb, "localhost", p1);
    c.nodes[1].add_user("alice", "secret");
    let mut alice =
        Client::login(c.nodes[1].c2s, "localhost", "alice", "secret", Some("r")).await.expect("alice on node 2");
    let mut bob = user(&b, "b.test", "bob").await;
    alice.send(&message("bob@b.test/r", "from node 2")).await.expect("send");
    let m = bob.recv_message().await.expect("bob receives");
    assert_eq!(body(&m).as_deref(), Some("from node 2"));
    assert_eq!(m.attr("from"), Some("alice@localhost/r"));
    bob.send(&message("alice@localhost/r", "to node 2")).await.expect("send");
    let m = alice.recv_message().await.expect("alice receives");
    assert_eq!(body(&m).as_deref(), Some("to node 2"));
    // Node 2 sent over its own stream; node 1 took b.test's stream in.
    let (_, out2) = c.nodes[1].api("GET", "/api/s2s", None);
    assert!(
        out2["outgoing"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|o| o["remote"] == "b.test" && o["state"] == "established"),
        "{out2}"
    );
    let (_, in1) = c.nodes[0].api("GET", "/api/s2s", None);
    assert!(
        in1["incoming"].as_array().into_iter().flatten().any(|i| i["domains"] == serde_json::json!(["b.test"])),
        "{in1}"
    );
}

/// Ten messages from alice@a.test to bob@b.test and ten back.
async fn both_ways(a: &TestNode, b: &TestNode) {
    let mut alice = user(a, "a.test", "alice").await;
    let mut bob = user(b, "b.test", "bob").await;
    for round in 0..2 {
        let (from, to, to_jid, tag) = match round {
            0 => (&mut alice, &mut bob, "bob@b.test/r", "a"),
            _ => (&mut bob, &mut alice, "alice@a.test/r", "b"),
        };
        for i in 0..10 {
            from.send(&message(to_jid, &format!("{tag}{i}"))).await.expect("send");
        }
        for i in 0..10 {
            let m = to.recv_message().await.unwrap_or_else(|e| panic!("{to_jid}: {e}\n{}\n{}", a.log(), b.log()));
            assert_eq!(body(&m).as_deref(), Some(format!("{tag}{i}").as_str()), "{m:?}");
        }
    }
}

/// How `node`'s streams out to `remote` and in from it authenticated, per `/api/s2s`.
fn auth_methods(node: &TestNode, remote: &str) -> (String, String) {
    let (code, v) = node.api("GET", "/api/s2s", None);
    assert_eq!(code, 200, "{v}");
    let out = v["outgoing"].as_array().into_iter().flatten().find(|o| o["remote"] == remote);
    let inc = v["incoming"].as_array().into_iter().flatten().find(|i| i["domains"] == serde_json::json!([remote]));
    let method = |x: Option<&serde_json::Value>| x.and_then(|x| x["auth"].as_str()).unwrap_or("none").to_owned();
    (method(out), method(inc))
}

#[tokio::test(flavor = "multi_thread")]
async fn certificates_that_verify_authenticate_with_sasl_external_both_ways() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("Federation CA");
    let ca_path = ca.write(&dir.path().join("ca.pem"));
    let (ca_a, ca_b) = (ca.server(dir.path(), "a.test"), ca.server(dir.path(), "b.test"));
    let (pa, pb) = (free_port(), free_port());
    let a = federating_node_with("a.test", pa, "b.test", pb, Some((&ca_path, &ca_a)));
    let b = federating_node_with("b.test", pb, "a.test", pa, Some((&ca_path, &ca_b)));
    both_ways(&a, &b).await;
    for (node, remote) in [(&a, "b.test"), (&b, "a.test")] {
        assert_eq!(auth_methods(node, remote), ("external".into(), "external".into()), "{}", node.log());
        let log = node.log();
        assert!(log.contains("s2s SASL EXTERNAL in"), "{log}");
        assert!(!log.contains("s2s dialback in"), "dialback was used: {log}");
    }
    let listed = a.cli(&["s2s", "list"]);
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.status.success() && text.contains("a.test -> b.test  established  external"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_that_does_not_verify_leaves_dialback() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, foreign) = (TestCa::new("Federation CA"), TestCa::new("Someone else's CA"));
    let ca_path = ca.write(&dir.path().join("ca.pem"));
    // a.test's certificate comes from a CA b.test does not trust.
    let (ca_a, ca_b) = (foreign.server(dir.path(), "a.test"), ca.server(dir.path(), "b.test"));
    let (pa, pb) = (free_port(), free_port());
    let a = federating_node_with("a.test", pa, "b.test", pb, Some((&ca_path, &ca_a)));
    let b = federating_node_with("b.test", pb, "a.test", pa, Some((&ca_path, &ca_b)));
    both_ways(&a, &b).await;
    // b.test does not offer EXTERNAL to a.test, nor uses it towards a.test,
    // whose certificate does not verify; a.test may use neither either, as
    // b.test does not take its certificate.
    assert_eq!(auth_methods(&b, "a.test"), ("dialback".into(), "dialback".into()), "{}", b.log());
    assert_eq!(auth_methods(&a, "b.test"), ("dialback".into(), "dialback".into()), "{}", a.log());
}

/// TLS to `port` presenting `cert`, as a peer of b.test would.
async fn tls_peer(port: u16, cert: &Issued) -> RawPeer {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    let mut peer = RawPeer { io: Box::new(tcp), parser: StreamParser::new(Limits::default()) };
    peer.open().await;
    peer.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>").await;
    assert_eq!(peer.element().await.name, "proceed");
    let RawPeer { io, .. } = peer;
    let client = ClientCert { cert: cert.cert.clone(), key: cert.key.clone() };
    let config = tls_client_config_with(&TlsTrust::AcceptAny, Some(&client)).expect("client config");
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("b.test").expect("name");
    let tls = connector.connect(name, io).await.expect("TLS");
    RawPeer { io: Box::new(tls), parser: StreamParser::new(Limits::default()) }
}

fn offers_external(features: &Element) -> bool {
    features
        .get_child("mechanisms", meerkat_xmpp::ns::SASL)
        .is_some_and(|m| m.elements().any(|e| e.text() == "EXTERNAL"))
}

#[tokio::test(flavor = "multi_thread")]
async fn sasl_external_needs_a_certificate_naming_the_streams_domain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("Federation CA");
    let ca_path = ca.write(&dir.path().join("ca.pem"));
    let pb = free_port();
    let b =
        federating_node_with("b.test", pb, "a.test", free_port(), Some((&ca_path, &ca.server(dir.path(), "b.test"))));
    let mut bob = user(&b, "b.test", "bob").await;

    // A certificate for evil.test on a stream from a.test: no EXTERNAL, and
    // trying it anyway fails.
    let mut peer = tls_peer(pb, &ca.server(dir.path(), "evil.test")).await;
    let features = peer.open_features().await;
    assert!(!offers_external(&features), "{features:?}");
    peer.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>=</auth>").await;
    let failure = peer.element().await;
    assert_eq!(failure.name, "failure", "{failure:?}");
    assert!(failure.elements().any(|e| e.name == "not-authorized"), "{failure:?}");
    // Still unauthenticated: a stanza ends the stream.
    peer.send("<message from='mallory@a.test' to='bob@b.test'><body>forged</body></message>").await;
    let err = peer.element().await;
    assert!(err.elements().any(|e| e.name == "invalid-from"), "{err:?}");

    // A certificate for a.test: EXTERNAL is offered; another authzid is refused, the right one accepted.
    let mut peer = tls_peer(pb, &ca.server(dir.path(), "a.test")).await;
    let features = peer.open_features().await;
    assert!(offers_external(&features), "{features:?}");
    use base64::Engine as _;
    let other = base64::engine::general_purpose::STANDARD.encode("c.test");
    peer.send(&format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>{other}</auth>")).await;
    let failure = peer.element().await;
    assert!(failure.elements().any(|e| e.name == "invalid-authzid"), "{failure:?}");
    peer.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>=</auth>").await;
    let success = peer.element().await;
    assert_eq!(success.name, "success", "{success:?}");
    let features = peer.open_features().await;
    assert!(!offers_external(&features), "offered again after success: {features:?}");
    peer.send("<message from='alice@a.test/x' to='bob@b.test/r'><body>certified</body></message>").await;
    let m = bob.recv_message().await.expect("bob receives");
    assert_eq!(body(&m).as_deref(), Some("certified"));
    assert_eq!(b.metrics().value("s2s_auth_failed_count", &[("host_type", "b.test")]), 2.0);
}

/// XEP-0163 §4.3.1 across servers: a contact on another server gets PEP
/// events only for the nodes its client's caps ask for. Alice's server
/// learns the caps of bob's resource from his presence, asks the resource
/// once (from Alice's bare JID), checks the answer against the `ver`, and
/// shares it: bob's second resource, with the same caps, is not asked and
/// gets the last item at once.
#[tokio::test(flavor = "multi_thread")]
async fn pep_events_reach_remote_contacts_whose_caps_ask_for_the_node() {
    use meerkat_xmpp::ns;
    const EVENT: &str = "http://jabber.org/protocol/pubsub#event";
    let (pa, pb) = (free_port(), free_port());
    let a = federating_node_and("a.test", pa, "b.test", pb, "[modules.mod_pubsub]\nenabled = true\n");
    let b = federating_node("b.test", pb, "a.test", pa);
    let mut alice = user(&a, "a.test", "alice").await;
    let mut bob = user(&b, "b.test", "bob").await;
    alice.go_online(None).await.unwrap();
    bob.go_online(None).await.unwrap();
    alice.send_str("<presence type='subscribe' to='bob@b.test'/>").await.unwrap();
    bob.recv_until(|e| e.name == "presence" && e.attr("type") == Some("subscribe")).await.unwrap();
    bob.send_str("<presence type='subscribed' to='alice@a.test'/>").await.unwrap();
    bob.send_str("<presence type='subscribe' to='alice@a.test'/>").await.unwrap();
    alice.recv_until(|e| e.name == "presence" && e.attr("type") == Some("subscribe")).await.unwrap();
    alice.send_str("<presence type='subscribed' to='bob@b.test'/>").await.unwrap();
    alice.recv_until(|e| e.name == "presence" && e.attr("from") == Some("bob@b.test/r")).await.unwrap();

    // Bob's client asks for tunes, not moods; its caps `ver` is the real hash.
    let query = meerkat_xmpp::parser::parse_element(
        &format!(
            "<query xmlns='{}'><identity category='client' type='pc' name='test'/><feature var='{}'/>\
             <feature var='{}'/><feature var='urn:example:tune+notify'/></query>",
            ns::DISCO_INFO,
            ns::DISCO_INFO,
            ns::CAPS
        ),
        Limits { max_stanza_size: 4096, max_depth: 8 },
    )
    .unwrap();
    let ver = meerkat_xmpp::caps::ver(&query, "sha-1").unwrap();
    let presence =
        format!("<presence><c xmlns='{}' hash='sha-1' node='urn:example:client' ver='{ver}'/></presence>", ns::CAPS);
    bob.send_str(&presence).await.unwrap();
    let q = bob
        .recv_until(|e| {
            e.name == "iq" && e.attr("type") == Some("get") && e.get_child("query", ns::DISCO_INFO).is_some()
        })
        .await
        .unwrap();
    assert_eq!(q.attr("from"), Some("alice@a.test"), "{q}");
    let asked = q.get_child("query", ns::DISCO_INFO).and_then(|q| q.attr("node")).unwrap().to_owned();
    assert_eq!(asked, format!("urn:example:client#{ver}"));
    let mut answer = query.clone();
    answer.set_attr("node", asked);
    let reply = Element::new("iq", "jabber:client")
        .with_attr("type", "result")
        .with_attr("id", q.attr("id").unwrap().to_owned())
        .with_attr("to", "alice@a.test")
        .with_child(answer);
    bob.send(&reply).await.unwrap();

    let tune = |text: &str, node: &str| {
        format!(
            "<iq type='set'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='{node}'><item id='current'>\
             <entry xmlns='urn:example'>{text}</entry></item></publish></pubsub></iq>"
        )
    };
    // An IQ to Alice's account behind the answer, on the same stream and the
    // same server shard: once it is answered, the caps are checked.
    let behind = bob
        .iq_xml(&format!("<iq type='get' to='alice@a.test'><query xmlns='{}'/></iq>", ns::DISCO_INFO))
        .await
        .unwrap();
    assert_eq!(behind.attr("type"), Some("result"), "{behind}");
    let res = alice.iq_xml(&tune("a song", "urn:example:tune")).await.unwrap();
    assert_eq!(res.attr("type"), Some("result"), "{res}");
    let m = bob.recv_until(|e| e.get_child("event", EVENT).is_some()).await.unwrap();
    assert_eq!(m.attr("from"), Some("alice@a.test"), "{m}");
    assert_eq!(m.attr("to"), Some("bob@b.test/r"), "{m}");
    assert!(m.to_xml("jabber:client").contains("urn:example:tune"), "{m}");
    // A mood is not asked for; the tune after it is the next event.
    let res = alice.iq_xml(&tune("grumpy", "urn:example:mood")).await.unwrap();
    assert_eq!(res.attr("type"), Some("result"), "{res}");
    alice.iq_xml(&tune("the last song", "urn:example:tune")).await.unwrap();
    let m = bob.recv_until(|e| e.get_child("event", EVENT).is_some()).await.unwrap();
    let text = m.to_xml("jabber:client");
    assert!(text.contains("the last song") && !text.contains("grumpy"), "{text}");

    // A second resource with the same caps is not asked again, and gets the last tune.
    let mut bob2 = Client::login(b.c2s, "b.test", "bob", "secret", Some("r2")).await.unwrap();
    bob2.send_str(&presence).await.unwrap();
    let m = bob2.recv_until(|e| e.get_child("event", EVENT).is_some()).await.unwrap();
    let text = m.to_xml("jabber:client");
    assert!(text.contains("the last song"), "{text}");
    assert!(
        bob2.backlog().all(|e| !(e.name == "iq" && e.attr("from") == Some("alice@a.test"))),
        "the checked caps were asked again"
    );
}
