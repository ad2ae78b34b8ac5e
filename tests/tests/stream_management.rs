//! XEP-0198 Stream Management over the real node: the feature, `<enable/>`,
//! the counters both ways, the server's `<r/>` after each stanza, the
//! `buffer_max` limit, session resumption after a cut connection, and what
//! happens to unacknowledged messages when nobody resumes (they go back to
//! the account: offline storage here).
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::time::Duration;

use meerkat_tests::client::{body, message};
use meerkat_tests::{login, online, Client, Sasl, Security, TestNode, DOMAIN};
use meerkat_xmpp::element::Element;
use meerkat_xmpp::sasl::HashAlg;

const PW: &str = "pw";
const NS_SM: &str = "urn:xmpp:sm:3";
const NS_STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";

fn is_sm(el: &Element, name: &str) -> bool {
    el.is(name, NS_SM)
}

async fn enable(c: &mut Client) -> Element {
    enable_with(c, false).await
}

async fn enable_with(c: &mut Client, resume: bool) -> Element {
    let attr = if resume { " resume='true'" } else { "" };
    c.send_str(&format!("<enable xmlns='{NS_SM}'{attr}/>")).await.unwrap();
    c.recv_until(|el| is_sm(el, "enabled") || is_sm(el, "failed")).await.unwrap()
}

/// Asks the server for its count of our stanzas.
async fn server_h(c: &mut Client) -> u32 {
    c.send_str(&format!("<r xmlns='{NS_SM}'/>")).await.unwrap();
    let a = c.recv_until(|el| is_sm(el, "a")).await.unwrap();
    a.attr("h").unwrap().parse().unwrap()
}

/// Reads `n` messages with a body (skipping the server's `<r/>`s and anything else).
async fn recv_bodies(c: &mut Client, n: usize) -> Vec<String> {
    let mut got = Vec::new();
    while got.len() < n {
        let m = c.recv_message().await.unwrap();
        got.push(body(&m).unwrap());
    }
    got
}

fn users(node: &TestNode) {
    node.add_user("alice", PW);
    node.add_user("bob", PW);
}

#[tokio::test]
async fn enable_counts_and_acks_both_ways() {
    let node = TestNode::start("");
    users(&node);
    // Offered once authenticated, not before.
    let mut c = Client::connect(node.c2s, DOMAIN, Security::StartTls).await.unwrap();
    assert!(!c.has_feature("sm", NS_SM), "{:?}", c.features);
    c.auth(Sasl::Scram(HashAlg::Sha256), "alice", PW).await.unwrap();
    assert!(c.has_feature("sm", NS_SM), "{:?}", c.features);
    c.bind(Some("r")).await.unwrap();
    let mut alice = c;
    let mut bob = online(&node, "bob", PW, "r", None).await;

    let enabled = enable_with(&mut alice, true).await;
    assert!(is_sm(&enabled, "enabled"), "{enabled}");
    assert_eq!(enabled.attr("resume"), Some("true"), "{enabled}");
    assert_eq!(enabled.attr("max"), Some("600"), "{enabled}");
    assert!(enabled.attr("id").is_some_and(|id| !id.is_empty()), "{enabled}");
    assert_eq!(server_h(&mut alice).await, 0);
    alice.send(&message("bob@localhost/r", "one")).await.unwrap();
    alice.send(&message("bob@localhost/r", "two")).await.unwrap();
    assert_eq!(server_h(&mut alice).await, 2);
    assert_eq!(recv_bodies(&mut bob, 2).await, ["one", "two"]);

    // Enabling twice is an error, not a new count.
    let again = enable(&mut alice).await;
    assert!(is_sm(&again, "failed"), "{again}");
    assert_eq!(server_h(&mut alice).await, 2);

    // The server asks after every stanza it writes (ack_freq = 1).
    assert!(is_sm(&enable(&mut bob).await, "enabled"));
    alice.send(&message("bob@localhost/r", "three")).await.unwrap();
    let m = bob.recv_until(|el| el.name == "message").await.unwrap();
    assert_eq!(body(&m).as_deref(), Some("three"));
    let r = bob.recv_until(|el| is_sm(el, "r")).await.unwrap();
    assert!(is_sm(&r, "r"));
    bob.send_str(&format!("<a xmlns='{NS_SM}' h='1'/>")).await.unwrap();
    // Acknowledging more than was sent ends the stream.
    bob.send_str(&format!("<a xmlns='{NS_SM}' h='5'/>")).await.unwrap();
    assert_eq!(bob.expect_stream_error().await, "undefined-condition");
}

#[tokio::test]
async fn resume_with_an_unknown_id_fails_with_item_not_found() {
    let node = TestNode::start("");
    users(&node);
    let mut c = Client::connect(node.c2s, DOMAIN, Security::StartTls).await.unwrap();
    c.auth(Sasl::Scram(HashAlg::Sha256), "alice", PW).await.unwrap();
    c.send_str(&format!("<resume xmlns='{NS_SM}' previd='no-such-session' h='0'/>")).await.unwrap();
    let failed = c.recv().await.unwrap();
    assert!(is_sm(&failed, "failed"), "{failed}");
    assert!(failed.get_child("item-not-found", NS_STANZAS).is_some(), "{failed}");
    // The stream goes on: the client binds instead.
    c.bind(Some("r")).await.unwrap();
    assert!(is_sm(&enable(&mut c).await, "enabled"));
}

#[tokio::test]
async fn unacknowledged_messages_of_a_lost_connection_go_offline() {
    let node = TestNode::start("");
    users(&node);
    let mut alice = login(&node, "alice", PW, "r").await;
    let mut bob = online(&node, "bob", PW, "r", None).await;
    assert!(is_sm(&enable(&mut bob).await, "enabled"));
    for i in 0..100 {
        alice.send(&message("bob@localhost", &format!("m{i}"))).await.unwrap();
    }
    let got = recv_bodies(&mut bob, 100).await;
    assert_eq!(got, (0..100).map(|i| format!("m{i}")).collect::<Vec<_>>());
    // Bob says he handled 30 of them, then his connection is cut without a closing tag.
    bob.send_str(&format!("<a xmlns='{NS_SM}' h='30'/>")).await.unwrap();
    // The ack is read before the EOF: a round trip makes sure of it (bob sent no stanza since enabling).
    assert_eq!(server_h(&mut bob).await, 0);
    drop(bob);

    // The other 70 were never acknowledged: they wait offline, each once, in order.
    let mut bob = online(&node, "bob", PW, "again", None).await;
    let got = recv_bodies(&mut bob, 70).await;
    assert_eq!(got, (30..100).map(|i| format!("m{i}")).collect::<Vec<_>>());
    let more = bob.recv_until_timeout(Duration::from_millis(500), |el| el.name == "message").await;
    assert!(more.is_err(), "a message came twice: {more:?}");
}

#[tokio::test]
async fn too_many_unacknowledged_stanzas_close_with_resource_constraint() {
    let node = TestNode::start("[modules.mod_stream_management]\nbuffer_max = 5\nack_freq = 0\n");
    users(&node);
    let mut alice = login(&node, "alice", PW, "r").await;
    let mut bob = online(&node, "bob", PW, "r", None).await;
    assert!(is_sm(&enable(&mut bob).await, "enabled"));
    for i in 0..10 {
        alice.send(&message("bob@localhost", &format!("m{i}"))).await.unwrap();
    }
    assert_eq!(bob.expect_stream_error().await, "resource-constraint");
    drop(bob);

    // Nothing is lost: what bob never acknowledged is stored for him.
    let mut bob = online(&node, "bob", PW, "again", None).await;
    let got: HashSet<String> = recv_bodies(&mut bob, 10).await.into_iter().collect();
    assert_eq!(got, (0..10).map(|i| format!("m{i}")).collect::<HashSet<_>>());
}

#[tokio::test]
async fn disabled_is_not_offered() {
    let node = TestNode::start("[modules.mod_stream_management]\nenabled = false\n");
    users(&node);
    let mut c = Client::connect(node.c2s, DOMAIN, Security::StartTls).await.unwrap();
    c.auth(Sasl::Scram(HashAlg::Sha256), "alice", PW).await.unwrap();
    assert!(!c.has_feature("sm", NS_SM), "{:?}", c.features);
    c.bind(Some("r")).await.unwrap();
    c.send_str(&format!("<enable xmlns='{NS_SM}'/>")).await.unwrap();
    assert_eq!(c.expect_stream_error().await, "unsupported-stanza-type");
}

/// Authenticates a new connection as `user` and sends `<resume/>`; returns the answer.
async fn resume(node: &TestNode, user: &str, previd: &str, h: u32) -> (Client, Element) {
    let mut c = Client::connect(node.c2s, DOMAIN, Security::StartTls).await.unwrap();
    c.auth(Sasl::Scram(HashAlg::Sha256), user, PW).await.unwrap();
    c.send_str(&format!("<resume xmlns='{NS_SM}' previd='{previd}' h='{h}'/>")).await.unwrap();
    let answer = c.recv_until(|el| is_sm(el, "resumed") || is_sm(el, "failed")).await.unwrap();
    (c, answer)
}

#[tokio::test]
async fn a_cut_connection_resumes_and_gets_every_message_once_in_order() {
    let node = TestNode::start("");
    users(&node);
    let mut alice = login(&node, "alice", PW, "r").await;
    let mut bob = online(&node, "bob", PW, "r", None).await;
    let enabled = enable_with(&mut bob, true).await;
    let id = enabled.attr("id").unwrap().to_owned();
    for i in 0..40 {
        alice.send(&message("bob@localhost", &format!("m{i}"))).await.unwrap();
    }
    // Bob reads 40, acknowledges 25 of them, and loses his connection while
    // the rest are on their way.
    assert_eq!(recv_bodies(&mut bob, 40).await.len(), 40);
    bob.send_str(&format!("<a xmlns='{NS_SM}' h='25'/>")).await.unwrap();
    assert_eq!(server_h(&mut bob).await, 0);
    drop(bob);
    for i in 40..100 {
        alice.send(&message("bob@localhost", &format!("m{i}"))).await.unwrap();
    }

    // A stranger cannot take the session over.
    let (_, failed) = resume(&node, "alice", &id, 25).await;
    assert!(failed.get_child("item-not-found", NS_STANZAS).is_some(), "{failed}");

    let (mut bob, resumed) = resume(&node, "bob", &id, 25).await;
    assert!(is_sm(&resumed, "resumed"), "{resumed}");
    assert_eq!(resumed.attr("previd"), Some(id.as_str()));
    // Bob had sent no stanza since enabling.
    assert_eq!(resumed.attr("h"), Some("0"));
    let got = recv_bodies(&mut bob, 75).await;
    assert_eq!(got, (25..100).map(|i| format!("m{i}")).collect::<Vec<_>>());
    let more = bob.recv_until_timeout(Duration::from_millis(500), |el| el.name == "message").await;
    assert!(more.is_err(), "a message came twice: {more:?}");
    // Same JID, no new bind: a message to the full JID reaches the resumed stream.
    alice.send(&message("bob@localhost/r", "after")).await.unwrap();
    assert_eq!(recv_bodies(&mut bob, 1).await, ["after"]);
    // And stream management goes on counting on the new connection.
    bob.send(&message("alice@localhost/r", "hi")).await.unwrap();
    assert_eq!(server_h(&mut bob).await, 1);
    assert_eq!(recv_bodies(&mut alice, 1).await, ["hi"]);
}

#[tokio::test]
async fn unresumed_messages_go_offline_when_the_resume_window_ends() {
    let node = TestNode::start("[modules.mod_stream_management]\nresume_timeout = 1\n");
    users(&node);
    let mut alice = login(&node, "alice", PW, "r").await;
    let mut bob = online(&node, "bob", PW, "r", None).await;
    let enabled = enable_with(&mut bob, true).await;
    let id = enabled.attr("id").unwrap().to_owned();
    for i in 0..10 {
        alice.send(&message("bob@localhost", &format!("m{i}"))).await.unwrap();
    }
    assert_eq!(recv_bodies(&mut bob, 10).await.len(), 10);
    bob.send_str(&format!("<a xmlns='{NS_SM}' h='3'/>")).await.unwrap();
    assert_eq!(server_h(&mut bob).await, 0);
    drop(bob);
    // The 1 s window ends: the session leaves the session list.
    meerkat_tests::wait_until("the waiting session to end", Duration::from_secs(10), || {
        !node.api("GET", "/api/sessions", None).1.to_string().contains("bob@localhost/r")
    });

    let (_, failed) = resume(&node, "bob", &id, 3).await;
    assert!(failed.get_child("item-not-found", NS_STANZAS).is_some(), "{failed}");
    let mut bob = online(&node, "bob", PW, "again", None).await;
    let got = recv_bodies(&mut bob, 7).await;
    assert_eq!(got, (3..10).map(|i| format!("m{i}")).collect::<Vec<_>>());
}

#[tokio::test]
async fn binding_the_resource_again_replaces_the_waiting_session() {
    let node = TestNode::start("");
    users(&node);
    let mut alice = login(&node, "alice", PW, "r").await;
    let mut bob = online(&node, "bob", PW, "r", None).await;
    let enabled = enable_with(&mut bob, true).await;
    let id = enabled.attr("id").unwrap().to_owned();
    drop(bob);
    // The node's debug log (the default MEERKAT_TEST_LOG) tells when the session
    // noticed and waits for a resumption; nothing a client sees does.
    meerkat_tests::wait_until(
        "node.log to show bob's session waiting for a resumption (needs meerkat_actors=debug)",
        Duration::from_secs(10),
        || node.log().lines().any(|l| l.contains("waiting for the client to resume") && l.contains("bob@localhost/r")),
    );

    let mut bob = online(&node, "bob", PW, "r", None).await;
    alice.send(&message("bob@localhost/r", "new")).await.unwrap();
    assert_eq!(recv_bodies(&mut bob, 1).await, ["new"]);
    // The old session is gone for good.
    let (_, failed) = resume(&node, "bob", &id, 0).await;
    assert!(failed.get_child("item-not-found", NS_STANZAS).is_some(), "{failed}");
}
