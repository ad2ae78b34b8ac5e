//! Mutual TLS on the cluster transport: nodes whose certificates the cluster
//! CA signed exchange stanzas and requests; a node with a certificate from
//! another CA, a node without a certificate, a node without TLS and a node
//! whose certificate names another node are refused.
//!
//! The rustls configuration is the one `node/src/tls.rs::cluster_tls` builds
//! from `[cluster.tls]`: TLS 1.3 only, the ring provider, the cluster CA as
//! the only root on both sides, client certificates required by the server.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meerkat_cluster::transport::{
    ClusterTls, Reply, Request, RequestHandler, Response, StanzaFrame, StanzaInbox, StanzaTarget, Transport, WireError,
};
use meerkat_xmpp::element::Element;
use meerkat_xmpp::ns;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpListener;

const SERVER_NAME: &str = "meerkat-cluster";
const CLUSTER: &str = "c";
const TIMEOUT: Duration = Duration::from_secs(5);

/// A certificate authority: its certificate and what signs with its key.
struct Ca {
    cert: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca { cert: cert.der().clone(), issuer: Issuer::new(params, key) }
    }

    /// Node `id`'s certificate: the common server name and `node<id>.<server
    /// name>`, used as server and as client certificate.
    fn node_cert(&self, id: u64) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let mut params =
            CertificateParams::new(vec![SERVER_NAME.to_owned(), format!("node{id}.{SERVER_NAME}")]).unwrap();
        params.distinguished_name.push(DnType::CommonName, SERVER_NAME);
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (vec![cert.der().clone()], key.into())
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca: &CertificateDer<'static>) -> Arc<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    Arc::new(roots)
}

/// The server side of `node/src/tls.rs::cluster_tls`: peers must present a certificate `ca` signed.
fn server_config(
    ca: &CertificateDer<'static>,
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> rustls::ServerConfig {
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots(ca), provider()).build().unwrap();
    rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .unwrap()
}

fn client_builder(
    ca: &CertificateDer<'static>,
) -> rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert> {
    rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots(ca))
}

fn tls(server: rustls::ServerConfig, client: rustls::ClientConfig) -> ClusterTls {
    ClusterTls {
        connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
        server_name: ServerName::try_from(SERVER_NAME).unwrap(),
    }
}

/// What `node/src/tls.rs::cluster_tls` builds: trusts `ca`, presents `certs` on both sides.
fn cluster_tls(
    ca: &CertificateDer<'static>,
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> ClusterTls {
    let server = server_config(ca, certs.clone(), key.clone_key());
    let client = client_builder(ca).with_client_auth_cert(certs, key).unwrap();
    tls(server, client)
}

#[derive(Default)]
struct Collect(Mutex<Vec<(u64, StanzaFrame)>>);

impl Collect {
    fn ids(&self) -> Vec<String> {
        self.0.lock().unwrap().iter().map(|(_, f)| f.stanza.attr("id").unwrap_or_default().to_owned()).collect()
    }
}

impl StanzaInbox for Collect {
    fn on_stanza(&self, from_node: u64, frame: StanzaFrame) {
        self.0.lock().unwrap().push((from_node, frame));
    }
    fn undeliverable(&self, _node: u64, _frame: StanzaFrame, _queued_at: std::time::SystemTime) {}
}

/// Answers `Remove { node }` for the sender itself, so a reply proves the request crossed.
struct Echo;

impl RequestHandler for Echo {
    fn handle(&self, from: u64, request: Request) -> Reply<'_> {
        Box::pin(async move {
            match request {
                Request::Remove { node } if node == from => Ok(Response::Done),
                _ => Err(WireError::Failed("unexpected request".into())),
            }
        })
    }
}

fn stanza(id: usize) -> StanzaFrame {
    StanzaFrame {
        target: StanzaTarget::Account,
        from: "a@x/r".into(),
        to: "b@x".into(),
        stanza: Element::new("message", ns::CLIENT)
            .with_attr("id", id.to_string())
            .with_child(Element::new("body", ns::CLIENT).with_text("over mutual TLS")),
    }
}

/// A node listening on a free port, with a stanza inbox and the echo handler.
async fn serving(id: u64, tls: ClusterTls) -> (Arc<Transport>, Arc<Collect>, String) {
    let node = Transport::new(id, CLUSTER.into(), Some(tls));
    let inbox = Arc::new(Collect::default());
    node.set_inbox(inbox.clone());
    node.set_handler(Arc::new(Echo));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(node.clone().serve(listener));
    (node, inbox, addr)
}

async fn wait_for(mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + TIMEOUT;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    done()
}

/// `from` is refused by the node at `addr` (id `to`, inbox `inbox`): its
/// requests fail and none of its stanzas arrive.
async fn assert_refused(from: &Arc<Transport>, to: u64, addr: &str, inbox: &Collect) {
    let direct = from.request_addr(addr, Request::Remove { node: from.node_id() }, TIMEOUT).await;
    assert!(direct.is_err(), "a request over a fresh connection was answered: {direct:?}");
    from.set_address(to, addr);
    let requeued = || from.stats.stanzas_requeued.load(Ordering::Relaxed);
    let before = requeued();
    for n in 0..10 {
        from.send_stanza(to, stanza(n)).unwrap();
    }
    let queued = from.request(to, Request::Remove { node: from.node_id() }, TIMEOUT).await;
    assert!(queued.is_err(), "a request over the peer link was answered: {queued:?}");
    // All ten are still queued, so no link ever took them: declared down, the
    // peer hands every one back. A link that came up would hold the queue
    // (nothing comes back) or would have drained part of it.
    let all_back = wait_for(|| {
        from.peer_down(to);
        requeued() - before == 10
    })
    .await;
    assert!(all_back, "{} of 10 stanzas came back unsent", requeued() - before);
    assert!(inbox.ids().is_empty(), "stanzas arrived: {:?}", inbox.ids());
}

#[tokio::test]
async fn stanzas_and_requests_flow_between_nodes_of_the_cluster_ca() {
    let ca = Ca::new("cluster CA");
    let (certs_a, key_a) = ca.node_cert(1);
    let (certs_b, key_b) = ca.node_cert(2);
    let (a, inbox_a, addr_a) = serving(1, cluster_tls(&ca.cert, certs_a, key_a)).await;
    let (b, inbox_b, addr_b) = serving(2, cluster_tls(&ca.cert, certs_b, key_b)).await;

    // Both directions: each node dials the other, and each side of each link checks the other's certificate.
    a.set_address(2, &addr_b);
    b.set_address(1, &addr_a);
    for n in 0..100 {
        a.send_stanza(2, stanza(n)).unwrap();
        b.send_stanza(1, stanza(1000 + n)).unwrap();
    }
    let resp = a.request(2, Request::Remove { node: 1 }, TIMEOUT).await.unwrap();
    assert!(matches!(resp, Response::Done));
    let resp = b.request(1, Request::Remove { node: 2 }, TIMEOUT).await.unwrap();
    assert!(matches!(resp, Response::Done));
    // A joining node's one-off request over a fresh connection.
    let resp = a.request_addr(&addr_b, Request::Remove { node: 1 }, TIMEOUT).await.unwrap();
    assert!(matches!(resp, Response::Done));

    assert!(wait_for(|| inbox_b.ids().len() == 100 && inbox_a.ids().len() == 100).await);
    assert_eq!(inbox_b.ids(), (0..100).map(|n| n.to_string()).collect::<Vec<_>>());
    assert_eq!(inbox_a.ids(), (1000..1100).map(|n| n.to_string()).collect::<Vec<_>>());
    assert!(inbox_b.0.lock().unwrap().iter().all(|(from, _)| *from == 1));
    assert!(inbox_a.0.lock().unwrap().iter().all(|(from, _)| *from == 2));
    a.shutdown();
    b.shutdown();
}

#[tokio::test]
async fn a_node_with_a_certificate_from_another_ca_is_refused() {
    let ca = Ca::new("cluster CA");
    let other = Ca::new("another CA");
    let (certs_b, key_b) = ca.node_cert(2);
    let (b, inbox_b, addr_b) = serving(2, cluster_tls(&ca.cert, certs_b, key_b)).await;

    // The intruder knows the cluster CA (it trusts B's certificate) and
    // presents a certificate for the right name, signed by another CA.
    let (certs_x, key_x) = other.node_cert(3);
    let (x, inbox_x, addr_x) = serving(3, cluster_tls(&ca.cert, certs_x, key_x)).await;

    // As a client, B's server refuses its certificate.
    assert_refused(&x, 2, &addr_b, &inbox_b).await;
    assert_eq!(b.stats.stanzas_received.load(Ordering::Relaxed), 0);
    // As a server, B (the client) refuses its certificate.
    assert_refused(&b, 3, &addr_x, &inbox_x).await;

    // The same intruder trusting only its own CA does not get further.
    let (certs_y, key_y) = other.node_cert(4);
    let y = Transport::new(4, CLUSTER.into(), Some(cluster_tls(&other.cert, certs_y, key_y)));
    assert_refused(&y, 2, &addr_b, &inbox_b).await;
    b.shutdown();
    x.shutdown();
    y.shutdown();
}

#[tokio::test]
async fn a_node_without_a_certificate_or_without_tls_is_refused() {
    let ca = Ca::new("cluster CA");
    let (certs_b, key_b) = ca.node_cert(2);
    let (b, inbox_b, addr_b) = serving(2, cluster_tls(&ca.cert, certs_b, key_b)).await;

    // TLS that verifies the server but presents no client certificate. (Its
    // server side is never used; it only fills the struct.)
    let (certs_n, key_n) = ca.node_cert(3);
    let no_cert = tls(server_config(&ca.cert, certs_n, key_n), client_builder(&ca.cert).with_no_client_auth());
    let n = Transport::new(3, CLUSTER.into(), Some(no_cert));
    assert_refused(&n, 2, &addr_b, &inbox_b).await;

    // Plain TCP to a TLS listener.
    let plain = Transport::new(4, CLUSTER.into(), None);
    assert_refused(&plain, 2, &addr_b, &inbox_b).await;

    // A node with a good certificate still gets through afterwards.
    let (certs_a, key_a) = ca.node_cert(1);
    let a = Transport::new(1, CLUSTER.into(), Some(cluster_tls(&ca.cert, certs_a, key_a)));
    a.set_address(2, &addr_b);
    a.send_stanza(2, stanza(7)).unwrap();
    let resp = a.request(2, Request::Remove { node: 1 }, TIMEOUT).await.unwrap();
    assert!(matches!(resp, Response::Done));
    assert!(wait_for(|| inbox_b.ids() == ["7"]).await, "{:?}", inbox_b.ids());
    a.shutdown();
    b.shutdown();
    n.shutdown();
    plain.shutdown();
}

/// Holding a certificate the cluster CA signed is not enough to be any node:
/// node 3 with node 1's certificate is refused by node 2 as a client (its
/// hello says 3, its certificate names node 1), and node 2 dialling node 3 at
/// an address where node 1's certificate answers refuses it as a server.
#[tokio::test]
async fn a_node_whose_certificate_names_another_node_is_refused() {
    let ca = Ca::new("cluster CA");
    let (certs_b, key_b) = ca.node_cert(2);
    let (b, inbox_b, addr_b) = serving(2, cluster_tls(&ca.cert, certs_b, key_b)).await;

    let (certs_1, key_1) = ca.node_cert(1);
    let (x, inbox_x, addr_x) = serving(3, cluster_tls(&ca.cert, certs_1, key_1)).await;
    assert_refused(&x, 2, &addr_b, &inbox_b).await;
    assert!(b.stats.refused_connections.load(Ordering::Relaxed) > 0, "the refusal was not counted");
    assert_refused(&b, 3, &addr_x, &inbox_x).await;

    // With its own certificate, node 3 gets through.
    let (certs_3, key_3) = ca.node_cert(3);
    let c = Transport::new(3, CLUSTER.into(), Some(cluster_tls(&ca.cert, certs_3, key_3)));
    c.set_address(2, &addr_b);
    c.send_stanza(2, stanza(9)).unwrap();
    assert!(wait_for(|| inbox_b.ids() == ["9"]).await, "{:?}", inbox_b.ids());
    b.shutdown();
    x.shutdown();
    c.shutdown();
}
