//! Black-box tests of the `meerkat` binary, and the Rust XMPP client they use.
//!
//! - [`node`]: [`node::TestNode`] runs a real node on free loopback ports in a
//!   temporary directory and talks to its admin API and CLI.
//! - [`client`]: [`client::Client`], an async XMPP client (TCP, STARTTLS,
//!   direct TLS, SASL PLAIN/SCRAM/-PLUS, bind, stanzas); its TLS set-up is
//!   shared with the load generator.
//! - [`cluster`]: [`cluster::TestCluster`], several nodes forming a cluster
//!   (bootstrap, then `meerkat cluster join`) on a shared database.
//! - [`component`]: [`component::RawComponent`], a bare XEP-0114 component.
//! - [`global`]: [`global::TestGlobal`], two such clusters as two data
//!   centers serving one domain, with a private Redis and link proxies that
//!   can be cut.
//! - [`js`]: the npm packages of `tests/js` for the web client tests, and
//!   [`js::EchoPeer`], a slixmpp user that echoes chat messages.
//! - [`load`]: `meerkat-load`, the load generator (`src/bin/meerkat-load.rs`).
//! - [`pki`]: [`pki::TestCa`], a throw-away CA issuing server certificates.
//! - [`stream`]: a numbered message stream that pauses once for a fault, and
//!   what arrived of it.
//!
//! The tests themselves are in `tests/`; run `cargo build --bin meerkat`
//! first, they spawn that binary.

pub mod client;
pub mod cluster;
pub mod component;
pub mod global;
pub mod js;
pub mod load;
pub mod netns;
pub mod node;
pub mod pki;
pub mod stream;

pub use client::{Binding, Client, ClientError, Sasl, Security, TlsTrust, TIMEOUT};
pub use node::{meerkat_bin, Metrics, NodeOptions, TestNode};

/// The XMPP domain every test node serves.
pub const DOMAIN: &str = "localhost";

/// Logs `user` in on `node` (STARTTLS, SCRAM-SHA-256) and binds `resource`.
pub async fn login(node: &TestNode, user: &str, password: &str, resource: &str) -> Client {
    match Client::login(node.c2s, DOMAIN, user, password, Some(resource)).await {
        Ok(c) => c,
        Err(e) => panic!("login of {user}/{resource} failed: {e}"),
    }
}

/// [`login`], then initial presence (waiting for its echo).
pub async fn online(node: &TestNode, user: &str, password: &str, resource: &str, priority: Option<i8>) -> Client {
    let mut c = login(node, user, password, resource).await;
    if let Err(e) = c.go_online(priority).await {
        panic!("initial presence of {user}/{resource}: {e}");
    }
    c
}

/// Polls `cond` with a short backoff until it holds, for state that has no
/// event to wait for (such as the admin API's session list). Panics after `timeout`.
pub fn wait_until(what: &str, timeout: std::time::Duration, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    let mut delay = std::time::Duration::from_millis(5);
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(delay);
        delay = (delay * 2).min(std::time::Duration::from_millis(100));
    }
}

/// Checks the node still serves: two fresh sessions of existing accounts
/// `a` and `b` (password `pw`) exchange a message both ways.
pub async fn assert_messaging_works(node: &TestNode, a: &str, b: &str, pw: &str) {
    let resource = format!("check{}", rand_suffix());
    let mut ca = login(node, a, pw, &resource).await;
    let mut cb = login(node, b, pw, &resource).await;
    let (ja, jb) = (ca.jid().to_owned(), cb.jid().to_owned());
    ca.send_message(&jb, "ping from a").await.expect("send a->b");
    let m = cb.recv_message().await.expect("b receives");
    assert_eq!(client::body(&m).as_deref(), Some("ping from a"));
    assert_eq!(m.attr("from"), Some(ja.as_str()));
    cb.send_message(&ja, "pong from b").await.expect("send b->a");
    let m = ca.recv_message().await.expect("a receives");
    assert_eq!(client::body(&m).as_deref(), Some("pong from b"));
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Checks that `n` messages a c2s client of `localhost` sent between the
/// scrapes `before` and `after`, and nothing else, were counted once each in
/// `xmpp_element_in` (with `bytes` bytes in all, when given) and, delivered
/// to a local user, in `xmpp_element_out` and the local routing latency.
pub fn assert_messages_counted(before: &Metrics, after: &Metrics, n: usize, bytes: Option<usize>) {
    let labels = [("connection_type", "c2s"), ("host_type", DOMAIN)];
    let delta = |name: &str, labels: &[(&str, &str)]| after.value(name, labels) - before.value(name, labels);
    let n = n as f64;
    for m in ["count", "stanza_count", "message_count"] {
        assert_eq!(delta(&format!("xmpp_element_in_{m}"), &labels), n, "xmpp_element_in_{m}:\n{}", after.0);
        assert_eq!(delta(&format!("xmpp_element_out_{m}"), &labels), n, "xmpp_element_out_{m}:\n{}", after.0);
    }
    assert_eq!(delta("xmpp_element_in_error_count", &labels), 0.0);
    assert_eq!(delta("xmpp_element_in_byte_size_count", &labels), n, "byte_size histogram:\n{}", after.0);
    let inf = [labels[0], labels[1], ("le", "+Inf")];
    assert_eq!(delta("xmpp_element_in_byte_size_bucket", &inf), n, "+Inf bucket:\n{}", after.0);
    let sum = delta("xmpp_element_in_byte_size_sum", &labels);
    match bytes {
        Some(b) => assert_eq!(sum, b as f64, "byte_size sum"),
        None => assert!(sum >= n * 50.0, "byte_size sum {sum} for {n} messages"),
    }
    assert_eq!(delta("meerkat_route_local_seconds_count", &[]), n, "routing latency:\n{}", after.0);
}
