//! Hostile input: every case ends the offending stream with the stream error
//! the parser documents (RFC 6120 §4.9.3, §11), before and after
//! authentication, and the node keeps serving other clients.
#![allow(clippy::unwrap_used)]

use meerkat_tests::{assert_messaging_works, login, wait_until, Client, NodeOptions, TestNode, DOMAIN};
use std::time::Duration;

const PW: &str = "pw";

const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>";

fn node_with_users() -> TestNode {
    let node = TestNode::start("");
    node.add_user("alice", PW);
    node.add_user("bob", PW);
    node
}

/// A fresh TCP connection that sends `bytes` and expects a stream error.
async fn raw_stream_error(node: &TestNode, bytes: &[u8]) -> String {
    let mut c = Client::tcp(node.c2s, DOMAIN).await.unwrap();
    c.send_raw(bytes).await.unwrap();
    let cond = c.expect_stream_error().await;
    // The server closes the stream after the error.
    c.wait_closed(Duration::from_secs(10)).await.unwrap();
    cond
}

/// A logged-in session (STARTTLS, SCRAM) that sends `bytes` and expects a stream error.
async fn bound_stream_error(node: &TestNode, bytes: &[u8]) -> String {
    let mut c = login(node, "alice", PW, "hostile").await;
    c.send_raw(bytes).await.unwrap();
    let cond = c.expect_stream_error().await;
    c.wait_closed(Duration::from_secs(10)).await.unwrap();
    cond
}

fn with_header(rest: &[u8]) -> Vec<u8> {
    let mut v = HEADER.as_bytes().to_vec();
    v.extend_from_slice(rest);
    v
}

const BILLION_LAUGHS_DTD: &str = concat!(
    "<!DOCTYPE lolz [<!ENTITY lol \"lol\">",
    "<!ENTITY lol2 \"&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;\">",
    "<!ENTITY lol3 \"&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;\">",
    "<!ENTITY lol4 \"&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;\">]>"
);

#[tokio::test]
async fn dtd_and_entities_are_restricted_xml() {
    let node = node_with_users();
    // A DTD in the prolog, before the stream header.
    let mut prolog = b"<?xml version='1.0'?>".to_vec();
    prolog.extend_from_slice(BILLION_LAUGHS_DTD.as_bytes());
    prolog.extend_from_slice(&HEADER.as_bytes()["<?xml version='1.0'?>".len()..]);
    assert_eq!(raw_stream_error(&node, &prolog).await, "restricted-xml");
    // A DTD inside the stream, before authentication.
    assert_eq!(raw_stream_error(&node, &with_header(BILLION_LAUGHS_DTD.as_bytes())).await, "restricted-xml");
    // After bind: a DTD, and a reference to an entity nobody defined.
    assert_eq!(bound_stream_error(&node, BILLION_LAUGHS_DTD.as_bytes()).await, "restricted-xml");
    assert_eq!(
        bound_stream_error(&node, b"<message to='bob@localhost'><body>&lol4;</body></message>").await,
        "restricted-xml"
    );
    // Comments and processing instructions are restricted too (RFC 6120 §11.1).
    assert_eq!(bound_stream_error(&node, b"<!-- hello -->").await, "restricted-xml");
    assert_messaging_works(&node, "alice", "bob", PW).await;
}

#[tokio::test]
async fn unclosed_tag_then_disconnect_leaves_the_node_up() {
    let node = node_with_users();
    // Before authentication.
    let mut c = Client::tcp(node.c2s, DOMAIN).await.unwrap();
    c.send_raw(&with_header(b"<message><body>never finished")).await.unwrap();
    drop(c);
    // After bind: the session goes away once the socket closes.
    let mut c = login(&node, "alice", PW, "unclosed").await;
    c.send_raw(b"<message to='bob@localhost'><body>never finished").await.unwrap();
    drop(c);
    wait_until("the unclosed session to be removed", Duration::from_secs(10), || {
        !node.session_jids().contains(&"alice@localhost/unclosed".to_string())
    });
    assert_messaging_works(&node, "alice", "bob", PW).await;
}

/// `<body>oops</message>`: the end tag does not close `<body>`. The node used
/// to answer only once the client ended its stream, as the stanza's depth never
/// came back to zero; now `</message>` itself gets `<not-well-formed/>`, with
/// the client's side of the stream still open.
#[tokio::test]
async fn mismatched_end_tag_is_not_well_formed_before_the_client_closes() {
    let node = node_with_users();
    let stanza = b"<message to='bob@localhost'><body>oops</message>";
    let mut raw = Client::tcp(node.c2s, DOMAIN).await.unwrap();
    raw.send_raw(&with_header(stanza)).await.unwrap();
    assert_eq!(raw.expect_stream_error().await, "not-well-formed");
    raw.wait_closed(Duration::from_secs(10)).await.unwrap();

    let mut alice = login(&node, "alice", PW, "mismatched").await;
    let sent = std::time::Instant::now();
    alice.send_raw(stanza).await.unwrap();
    assert_eq!(alice.expect_stream_error().await, "not-well-formed");
    println!("mismatched end tag: stream error {:?} after it was sent", sent.elapsed());
    alice.wait_closed(Duration::from_secs(10)).await.unwrap();
    assert_messaging_works(&node, "alice", "bob", PW).await;
}

#[tokio::test]
async fn invalid_utf8_is_unsupported_encoding() {
    // The parser maps invalid UTF-8 to <unsupported-encoding/> (RFC 6120 §4.9.3.22).
    let node = node_with_users();
    assert_eq!(
        raw_stream_error(&node, &with_header(b"<message><body>\xff\xfe\xc3</body></message>")).await,
        "unsupported-encoding"
    );
    assert_eq!(
        bound_stream_error(&node, b"<message to='bob@localhost'><body>caf\xc3\x28</body></message>").await,
        "unsupported-encoding"
    );
    assert_messaging_works(&node, "alice", "bob", PW).await;
}

#[tokio::test]
async fn oversize_stanza_is_policy_violation() {
    let node =
        TestNode::start_with(NodeOptions { listener_toml: "max_stanza_size = 4096".into(), ..Default::default() });
    node.add_user("alice", PW);
    node.add_user("bob", PW);
    let big = "x".repeat(8192);
    let stanza = format!("<message to='bob@localhost'><body>{big}</body></message>");
    assert_eq!(raw_stream_error(&node, &with_header(stanza.as_bytes())).await, "policy-violation");
    // After bind, a stanza just under the limit goes through and one over it ends the stream.
    let mut bob = login(&node, "bob", PW, "r").await;
    let mut alice = login(&node, "alice", PW, "r").await;
    let fits = "y".repeat(3000);
    alice.send_message("bob@localhost/r", &fits).await.unwrap();
    assert_eq!(meerkat_tests::client::body(&bob.recv_message().await.unwrap()).unwrap().len(), 3000);
    alice.send_str(&stanza).await.unwrap();
    assert_eq!(alice.expect_stream_error().await, "policy-violation");
    bob.close().await.unwrap();
    assert_messaging_works(&node, "alice", "bob", PW).await;
}

#[tokio::test]
async fn wrong_stream_namespace_is_invalid_namespace() {
    let node = node_with_users();
    // Wrong content namespace.
    let server_ns = "<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>";
    assert_eq!(raw_stream_error(&node, server_ns.as_bytes()).await, "invalid-namespace");
    // Wrong stream namespace.
    let wrong_stream =
        "<stream:stream xmlns='jabber:client' xmlns:stream='urn:not-streams' to='localhost' version='1.0'>";
    assert_eq!(raw_stream_error(&node, wrong_stream.as_bytes()).await, "invalid-namespace");
    // Over direct TLS.
    let mut t = Client::direct_tls(node.c2s_tls, DOMAIN, Default::default()).await.unwrap();
    t.send_str(server_ns).await.unwrap();
    assert_eq!(t.expect_stream_error().await, "invalid-namespace");
    assert_messaging_works(&node, "alice", "bob", PW).await;
}

#[tokio::test]
async fn stanza_before_authentication_is_not_authorized() {
    let node = node_with_users();
    let msg = b"<message to='bob@localhost'><body>let me in</body></message>";
    assert_eq!(raw_stream_error(&node, &with_header(msg)).await, "not-authorized");
    // After STARTTLS, still unauthenticated.
    let mut c = Client::connect(node.c2s, DOMAIN, meerkat_tests::Security::StartTls).await.unwrap();
    c.send_raw(msg).await.unwrap();
    assert_eq!(c.expect_stream_error().await, "not-authorized");
    // Authenticated but not bound yet.
    let mut c = Client::connect(node.c2s, DOMAIN, meerkat_tests::Security::StartTls).await.unwrap();
    c.auth(meerkat_tests::Sasl::Plain, "alice", PW).await.unwrap();
    c.send_raw(msg).await.unwrap();
    assert_eq!(c.expect_stream_error().await, "not-authorized");
    assert_messaging_works(&node, "alice", "bob", PW).await;
}

#[tokio::test]
async fn deep_nesting_is_policy_violation() {
    let node = node_with_users();
    let deep = |n: usize| {
        let mut s = String::from("<message to='bob@localhost'>");
        s.push_str(&"<a>".repeat(n));
        s
    };
    assert_eq!(raw_stream_error(&node, &with_header(deep(10_000).as_bytes())).await, "policy-violation");
    assert_eq!(bound_stream_error(&node, deep(10_000).as_bytes()).await, "policy-violation");
    assert_messaging_works(&node, "alice", "bob", PW).await;
}
