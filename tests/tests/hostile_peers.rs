//! Hostile peers on the ports other nodes and data centers use: a node that
//! is sent absurd frames, frames before its hello, deep nesting or piles of
//! idle connections closes those connections and goes on serving clients.
//! (Authenticating peers is a separate matter; these frames come from
//! someone who could not even say the right hello, or who did.)
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use meerkat_cluster::peer_auth::{Role, SharedSecret};
use meerkat_cluster::transport::{
    decode_versioned, encode_versioned, Frame, StanzaFrame, StanzaTarget, PROTOCOL_VERSION,
};
use meerkat_routing::global::link::{GdFrame, GdStanza, GD_PROTOCOL_VERSION};
use meerkat_tests::client::body;
use meerkat_tests::cluster::{cluster_toml, Placement, SharedDb, CLUSTER_SECRET};
use meerkat_tests::global::{global_toml, RedisServer, GLOBAL_HOST, GLOBAL_SECRET, SERVE_GLOBAL_HOST};
use meerkat_tests::node::free_port;
use meerkat_tests::{Client, NodeOptions, TestNode};
use meerkat_xmpp::element::Element;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CLUSTER: &str = "hostile-test";
const LOCAL_DC: &str = "dc1.example.com";

struct Target {
    node: TestNode,
    cluster: SocketAddr,
    link: SocketAddr,
    _redis: RedisServer,
}

/// One node with a cluster port and a data-center link port.
fn target() -> Target {
    let redis = RedisServer::start();
    let placement = Placement {
        command_prefix: vec!["sh".into(), "-c".into(), SERVE_GLOBAL_HOST.into(), "serve-global-host".into()],
        ..Placement::loopback()
    };
    let db = SharedDb::sqlite();
    let link = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let extra = cluster_toml(CLUSTER, &db.url, 1, &placement, true) + &global_toml(LOCAL_DC, link, link, redis.port);
    let node = TestNode::start_with(NodeOptions {
        extra_toml: extra,
        command_prefix: placement.command_prefix.clone(),
        ..Default::default()
    });
    for user in ["alice", "bob"] {
        let (code, v) =
            node.api("POST", &format!("/api/users/{GLOBAL_HOST}"), Some(json!({"username": user, "password": "pw"})));
        assert_eq!(code, 201, "{v}");
    }
    Target { node, cluster: placement.cluster_addr, link, _redis: redis }
}

/// Sends `bytes` on a new connection to `addr` and waits for the node to
/// close it (EOF or reset), reading and dropping whatever it answers.
async fn closed_after(addr: SocketAddr, bytes: &[u8]) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    wait_closed(s, &format!("{} hostile bytes to {addr}", bytes.len())).await;
}

fn framed(body: &[u8]) -> Vec<u8> {
    let mut v = (body.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

/// An element nested `levels` deep, in the encoding of `Element`, to
/// splice where [`marker`] was encoded (encoding it would recurse as deep).
fn nested(levels: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(levels * 6 + 5);
    for _ in 0..levels {
        v.extend_from_slice(&[1, b'a', 0, 0, 1, 0]);
    }
    v.extend_from_slice(&[1, b'a', 0, 0, 0]);
    v
}

fn marker() -> Element {
    Element::new("@@DEEP@@", "")
}

fn splice_deep(mut frame: Vec<u8>, levels: usize) -> Vec<u8> {
    let pattern: Vec<u8> = [&[8u8][..], b"@@DEEP@@", &[0, 0, 0]].concat();
    let at = frame.windows(pattern.len()).position(|w| w == pattern).expect("marker encoded");
    frame.splice(at..at + pattern.len(), nested(levels));
    frame
}

/// The node still serves clients: alice and bob exchange a message.
async fn still_serving(t: &Target) {
    // Fresh resources each time: a login that replaced an earlier session of
    // the same full JID would race that session's end.
    let r = format!("{:08x}", rand::random::<u32>());
    let mut a = Client::login(t.node.c2s, GLOBAL_HOST, "alice", "pw", Some(&r)).await.unwrap();
    let mut b = Client::login(t.node.c2s, GLOBAL_HOST, "bob", "pw", Some(&r)).await.unwrap();
    let to = b.jid().to_owned();
    a.send_message(&to, "still here").await.unwrap();
    let m = b.recv_message().await.unwrap();
    assert_eq!(body(&m).as_deref(), Some("still here"));
}

/// Which port, and how to speak its handshake.
#[derive(Clone, Copy)]
enum Port {
    Cluster,
    Link,
}

impl Port {
    fn version(self) -> u8 {
        match self {
            Port::Cluster => PROTOCOL_VERSION,
            Port::Link => GD_PROTOCOL_VERSION,
        }
    }

    /// A hello the node accepts up to the proof.
    fn hello(self) -> Vec<u8> {
        match self {
            Port::Cluster => {
                encode_versioned(PROTOCOL_VERSION, &Frame::Hello { cluster: CLUSTER.into(), from: 66, to: Some(1) })
            }
            Port::Link => encode_versioned(GD_PROTOCOL_VERSION, &link_hello()),
        }
        .unwrap()
        .to_vec()
    }

    /// What the proof covers besides the nonces.
    fn context(self) -> Vec<Vec<u8>> {
        match self {
            Port::Cluster => vec![CLUSTER.into(), 66u64.to_be_bytes().to_vec(), 1u64.to_be_bytes().to_vec()],
            Port::Link => {
                vec![GLOBAL_HOST.into(), b"dc9.example.com".to_vec(), LOCAL_DC.into(), 7u64.to_be_bytes().to_vec()]
            }
        }
    }

    /// A stanza for bob, nested half a million levels deep (3 MB, under
    /// either port's frame limit) when `deep`.
    fn stanza(self, deep: bool) -> Vec<u8> {
        let to = format!("bob@{GLOBAL_HOST}");
        let from = format!("mallory@{GLOBAL_HOST}/m");
        let stanza = if deep {
            marker()
        } else {
            Element::new("message", "jabber:client")
                .with_attr("type", "chat")
                .with_child(Element::new("body", "jabber:client").with_text("injected"))
        };
        let frame = match self {
            Port::Cluster => encode_versioned(
                PROTOCOL_VERSION,
                &Frame::Stanza(StanzaFrame { target: StanzaTarget::Account, from, to, stanza }),
            ),
            Port::Link => encode_versioned(
                GD_PROTOCOL_VERSION,
                &GdFrame::Stanza(GdStanza {
                    seq: 1,
                    ttl: 1,
                    origin_dc: "dc9.example.com".into(),
                    origin_start_micros: None,
                    from,
                    to,
                    stanza,
                }),
            ),
        }
        .unwrap()
        .to_vec();
        if deep {
            splice_deep(frame, 500_000)
        } else {
            frame
        }
    }

    /// The challenge's nonce in the node's answer to a hello.
    fn nonce(self, body: &[u8]) -> Vec<u8> {
        match self {
            Port::Cluster => match decode_versioned::<Frame>(PROTOCOL_VERSION, body).unwrap() {
                Frame::Challenge { nonce } => nonce,
                other => panic!("expected a challenge, got {other:?}"),
            },
            Port::Link => match decode_versioned::<GdFrame>(GD_PROTOCOL_VERSION, body).unwrap() {
                GdFrame::Challenge { nonce } => nonce,
                other => panic!("expected a challenge, got {other:?}"),
            },
        }
    }

    fn proof(self, secret: &str, listener_nonce: &[u8]) -> Vec<u8> {
        let secret = SharedSecret::new(secret).unwrap();
        let dialler_nonce = vec![7u8; 32];
        let context = self.context();
        let parts: Vec<&[u8]> = context.iter().map(Vec::as_slice).collect();
        let mac = secret.proof(Role::Dialler, &parts, listener_nonce, &dialler_nonce);
        match self {
            Port::Cluster => encode_versioned(PROTOCOL_VERSION, &Frame::Proof { nonce: dialler_nonce, mac }),
            Port::Link => encode_versioned(GD_PROTOCOL_VERSION, &GdFrame::Proof { nonce: dialler_nonce, mac }),
        }
        .unwrap()
        .to_vec()
    }

    fn secret(self) -> &'static str {
        match self {
            Port::Cluster => CLUSTER_SECRET,
            Port::Link => GLOBAL_SECRET,
        }
    }
}

fn link_hello() -> GdFrame {
    GdFrame::Hello {
        global_host: GLOBAL_HOST.into(),
        from_dc: "dc9.example.com".into(),
        to_dc: LOCAL_DC.into(),
        instance: 7,
    }
}

async fn read_frame(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(20), s.read_exact(&mut len)).await.ok()?.ok()?;
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    tokio::time::timeout(Duration::from_secs(20), s.read_exact(&mut body)).await.ok()?.ok()?;
    Some(body)
}

/// Connects and says hello; the node's challenge nonce.
async fn hello(addr: SocketAddr, port: Port) -> (TcpStream, Vec<u8>) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&framed(&port.hello())).await.unwrap();
    let challenge = read_frame(&mut s).await.expect("a challenge");
    let nonce = port.nonce(&challenge);
    (s, nonce)
}

/// Waits until the node closes `s`.
async fn wait_closed(mut s: TcpStream, what: &str) {
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the node kept the connection open after {what}");
}

/// The cases every port gets.
async fn attack(t: &Target, port: Port, addr: SocketAddr) {
    // A 15-byte frame declaring a string of 2^62 bytes.
    closed_after(addr, &[0, 0, 0, 0x0b, 1, 0, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0x40]).await;
    still_serving(t).await;
    // A frame declaring 4 GiB.
    closed_after(addr, &[0xff, 0xff, 0xff, 0xf0, 1, 2, 3]).await;
    // More than a hello may be, before one.
    closed_after(addr, &framed(&vec![1u8; 64 * 1024])).await;
    // Garbage.
    let garbage: Vec<u8> = (0..2000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    closed_after(addr, &garbage).await;

    // The right names and no credentials: a stanza where the proof belongs.
    let mut watch = Client::login(t.node.c2s, GLOBAL_HOST, "bob", "pw", Some("watch")).await.unwrap();
    watch.go_online(None).await.unwrap();
    let (mut s, _) = hello(addr, port).await;
    s.write_all(&framed(&port.stanza(false))).await.unwrap();
    wait_closed(s, "a stanza instead of a proof").await;
    // A proof made with the wrong secret.
    let (mut s, nonce) = hello(addr, port).await;
    s.write_all(&framed(&port.proof("not the secret, but long enough", &nonce))).await.unwrap();
    wait_closed(s, "a wrong proof").await;
    // Neither delivered anything: bob's next message is the one alice sends now.
    let mut alice = Client::login(t.node.c2s, GLOBAL_HOST, "alice", "pw", Some("probe")).await.unwrap();
    let to = watch.jid().to_owned();
    alice.send_message(&to, "after").await.unwrap();
    let m = watch.recv_message().await.unwrap();
    assert_eq!(body(&m).as_deref(), Some("after"), "{m}");

    // A peer that knows the secret, sending a stanza nested half a million levels deep.
    let (mut s, nonce) = hello(addr, port).await;
    s.write_all(&framed(&port.proof(port.secret(), &nonce))).await.unwrap();
    let accepted = read_frame(&mut s).await.expect("accepted");
    match port {
        Port::Cluster => {
            assert!(matches!(decode_versioned::<Frame>(port.version(), &accepted).unwrap(), Frame::Accepted { .. }))
        }
        Port::Link => {
            assert!(matches!(decode_versioned::<GdFrame>(port.version(), &accepted).unwrap(), GdFrame::Accepted { .. }))
        }
    }
    s.write_all(&framed(&port.stanza(true))).await.unwrap();
    wait_closed(s, "a deep stanza").await;
    still_serving(t).await;

    // Many connections that say nothing: closed once they are too many or
    // their hello is late, and clients are served meanwhile.
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    still_serving(t).await;
    let all_closed = tokio::time::timeout(Duration::from_secs(30), async {
        for mut s in idle {
            let mut buf = [0u8; 64];
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        }
    })
    .await;
    assert!(all_closed.is_ok(), "idle connections to {addr} were left open");
    still_serving(t).await;
}

#[tokio::test]
async fn hostile_frames_on_the_cluster_and_link_ports_close_that_connection_and_nothing_else() {
    let t = tokio::task::spawn_blocking(target).await.unwrap();
    attack(&t, Port::Cluster, t.cluster).await;
    attack(&t, Port::Link, t.link).await;

    let (code, metrics) = t.node.api("GET", "/metrics", None);
    assert_eq!(code, 200);
    let metrics = metrics.as_str().unwrap_or_default().to_owned();
    for name in ["meerkat_cluster_bad_frames_total", "meerkat_global_link_bad_frames_total"] {
        let n: u64 = metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from /metrics"));
        assert!(n >= 4, "{name} = {n}");
    }
    for name in ["meerkat_cluster_refused_connections_total", "meerkat_global_links_refused_total"] {
        let n: u64 = metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from /metrics"));
        assert!(n >= 2, "{name} = {n}: the peers without the secret are counted");
    }
}

/// A certificate authority for the cluster port's mutual TLS.
struct TestCa {
    cert: rcgen::Certificate,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    fn new(name: &str) -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        TestCa { cert, issuer: rcgen::Issuer::new(params, key) }
    }

    /// A certificate for `meerkat-cluster` and `node<id>.meerkat-cluster`: (PEM chain, PEM key).
    fn node(&self, id: u64) -> (String, String) {
        let names = vec!["meerkat-cluster".to_owned(), format!("node{id}.meerkat-cluster")];
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages =
            vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// A TLS client to the cluster port presenting `(cert, key)` and trusting `ca`.
fn tls_client(ca: &TestCa, cert: &(String, String)) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert.der().clone()).unwrap();
    let chain = vec![CertificateDer::from_pem_slice(cert.0.as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(cert.1.as_bytes()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
}

/// Says hello as node `from` over TLS with `connector`; what the node
/// answers: `Ok(frame)`, or `Err` when it closed the connection first.
async fn tls_hello(addr: SocketAddr, connector: &tokio_rustls::TlsConnector, from: u64) -> Result<Frame, String> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("meerkat-cluster").unwrap();
    let mut tls = connector.connect(name, tcp).await.map_err(|e| format!("handshake: {e}"))?;
    let hello =
        encode_versioned(PROTOCOL_VERSION, &Frame::Hello { cluster: CLUSTER.into(), from, to: Some(1) }).unwrap();
    tls.write_all(&framed(&hello)).await.map_err(|e| format!("write: {e}"))?;
    let mut len = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), tls.read_exact(&mut len))
        .await
        .map_err(|_| "no answer".to_owned())?
        .map_err(|e| format!("closed: {e}"))?;
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    tls.read_exact(&mut body).await.map_err(|e| format!("closed: {e}"))?;
    decode_versioned::<Frame>(PROTOCOL_VERSION, &body)
}

/// The cluster port with mutual TLS: a certificate from another CA does not
/// get past the handshake; one from the cluster CA that names another node
/// than the hello claims is refused; both are counted; the node goes on
/// serving, and a peer with its own certificate is answered.
#[tokio::test]
async fn wrong_certificates_on_the_cluster_port_are_refused_and_the_node_goes_on() {
    let dir = tempfile::Builder::new().prefix("meerkat-hostile-tls-").tempdir().unwrap();
    let ca = TestCa::new("cluster CA");
    let foreign = TestCa::new("another CA");
    let own = ca.node(1);
    let files = [("ca.pem", ca.cert.pem()), ("node.pem", own.0.clone()), ("node.key", own.1.clone())];
    for (name, pem) in &files {
        std::fs::write(dir.path().join(name), pem).unwrap();
    }
    let placement = Placement::loopback();
    let db = SharedDb::sqlite();
    let extra = cluster_toml(CLUSTER, &db.url, 1, &placement, true)
        + &format!(
            "\n[cluster.tls]\ncacertfile = {:?}\ncertfile = {:?}\nkeyfile = {:?}\n",
            dir.path().join("ca.pem").display().to_string(),
            dir.path().join("node.pem").display().to_string(),
            dir.path().join("node.key").display().to_string(),
        );
    let node = tokio::task::spawn_blocking(move || {
        TestNode::start_with(NodeOptions { extra_toml: extra, ..Default::default() })
    })
    .await
    .unwrap();
    let addr = placement.cluster_addr;
    for user in ["alice", "bob"] {
        node.add_user(user, "pw");
    }

    // Another CA: the node refuses the client certificate during the handshake.
    let outcome = tls_hello(addr, &tls_client(&ca, &foreign.node(2)), 2).await;
    assert!(outcome.is_err(), "a certificate from another CA got an answer: {outcome:?}");

    // The cluster CA, but the certificate names node 5 and the hello says node 2.
    match tls_hello(addr, &tls_client(&ca, &ca.node(5)), 2).await {
        Ok(Frame::HelloRefused { reason }) => {
            assert!(reason.contains("node2.meerkat-cluster"), "refused for another reason: {reason}")
        }
        other => panic!("node 2 with node 5's certificate was not refused: {other:?}"),
    }

    // With its own certificate, node 2 gets the shared-secret challenge: past the certificate check.
    match tls_hello(addr, &tls_client(&ca, &ca.node(2)), 2).await {
        Ok(Frame::Challenge { .. }) => {}
        other => panic!("node 2 with its own certificate was not challenged: {other:?}"),
    }

    let (code, metrics) = node.api("GET", "/metrics", None);
    assert_eq!(code, 200);
    let refused: u64 = metrics
        .as_str()
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("meerkat_cluster_refused_connections_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(refused >= 1, "the refused certificate was not counted: {refused}");
    meerkat_tests::assert_messaging_works(&node, "alice", "bob", "pw").await;
}
