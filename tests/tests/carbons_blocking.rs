//! Message carbons (XEP-0280), the blocking command (XEP-0191), client state
//! indication (XEP-0352), server pings (XEP-0199) and entity capabilities in
//! the stream features (XEP-0115), over the real node.
//!
//! "Nothing arrived" is checked with a barrier rather than a sleep: the client
//! pings its server and waits for the answer, which the session delivers after
//! everything that was routed to it before; then nothing unwanted may be among
//! what it read on the way.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use meerkat_tests::client::{body, stanza_error};
use meerkat_tests::cluster::TestCluster;
use meerkat_tests::{login, online, Client, Sasl, Security, TestNode, DOMAIN};
use meerkat_xmpp::element::Element;
use meerkat_xmpp::ns;
use meerkat_xmpp::sasl::HashAlg;

const PW: &str = "pw";
const NS_CARBONS: &str = "urn:xmpp:carbons:2";
const NS_FORWARD: &str = "urn:xmpp:forward:0";
const NS_BLOCKING: &str = "urn:xmpp:blocking";
const NS_CSI: &str = "urn:xmpp:csi:0";
const NS_CHATSTATES: &str = "http://jabber.org/protocol/chatstates";

fn node_with(extra_toml: &str, users: &[&str]) -> TestNode {
    let node = TestNode::start(extra_toml);
    for u in users {
        node.add_user(u, PW);
    }
    node
}

/// Pings the server and returns once the answer is in, keeping what came before
/// in the backlog.
async fn barrier(c: &mut Client) {
    let res = c.iq_xml(&format!("<iq type='get' to='{DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>")).await.unwrap();
    assert_eq!(res.attr("type"), Some("result"), "{res}");
}

/// After a [`barrier`], asserts that nothing read so far matches `unwanted`.
async fn assert_none(c: &mut Client, what: &str, unwanted: impl Fn(&Element) -> bool) {
    barrier(c).await;
    if let Some(el) = c.backlog().find(|e| unwanted(e)) {
        panic!("{} received {what}: {el}", c.jid());
    }
}

/// The message inside a carbon copy of this direction (`sent` or `received`).
fn carbon<'a>(el: &'a Element, direction: &str) -> Option<&'a Element> {
    if el.name != "message" {
        return None;
    }
    el.get_child(direction, NS_CARBONS)?.get_child("forwarded", NS_FORWARD)?.get_child("message", ns::CLIENT)
}

fn is_carbon(el: &Element) -> bool {
    carbon(el, "sent").is_some() || carbon(el, "received").is_some()
}

/// Waits for a carbon copy of this direction and returns the wrapper, checking
/// that it comes from the account and is addressed to this resource.
async fn expect_carbon(c: &mut Client, direction: &str) -> Element {
    let el = c
        .recv_until(|el| carbon(el, direction).is_some())
        .await
        .unwrap_or_else(|e| panic!("{} waiting for a {direction} carbon: {e}", c.jid()));
    // XEP-0280 §11: a copy comes from the user's bare JID, or it is forged.
    assert_eq!(el.attr("from"), Some(c.bare_jid()), "{el}");
    assert_eq!(el.attr("to"), Some(c.jid()), "{el}");
    el
}

async fn set_carbons(c: &mut Client, on: bool) {
    let what = if on { "enable" } else { "disable" };
    let res = c.iq_xml(&format!("<iq type='set'><{what} xmlns='{NS_CARBONS}'/></iq>")).await.unwrap();
    assert_eq!(res.attr("type"), Some("result"), "{res}");
}

fn chat(to: &str, body: &str, extra: &str) -> String {
    format!("<message type='chat' to='{to}'><body>{body}</body>{extra}</message>")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_features_announce_caps_and_csi() {
    let node = node_with("", &["alice"]);
    let mut c = Client::connect(node.c2s, DOMAIN, Security::StartTls).await.unwrap();
    let caps_of = |c: &Client| c.features.as_ref().unwrap().get_child("c", ns::CAPS).cloned();
    let pre = caps_of(&c).expect("caps before authentication");
    assert_eq!(pre.attr("hash"), Some("sha-1"));
    let (caps_node, ver) = (pre.attr("node").unwrap().to_owned(), pre.attr("ver").unwrap().to_owned());
    assert_eq!(ver.len(), 28, "a base64 SHA-1: {ver}");
    assert!(!c.has_feature("csi", NS_CSI), "csi needs a session");

    c.auth(Sasl::Scram(HashAlg::Sha256), "alice", PW).await.unwrap();
    assert!(c.has_feature("csi", NS_CSI));
    assert!(c.has_feature("bind", ns::BIND));
    assert_eq!(caps_of(&c).and_then(|e| e.attr("ver").map(str::to_owned)), Some(ver.clone()));
    c.bind(Some("r")).await.unwrap();

    // The caps node answers like the server itself (XEP-0115 §6.2).
    let info =
        c.iq_xml(&format!("<iq type='get' to='{DOMAIN}'><query xmlns='{}'/></iq>", ns::DISCO_INFO)).await.unwrap();
    let by_node = c
        .iq_xml(&format!(
            "<iq type='get' to='{DOMAIN}'><query xmlns='{}' node='{caps_node}#{ver}'/></iq>",
            ns::DISCO_INFO
        ))
        .await
        .unwrap();
    let features = |res: &Element| -> Vec<String> {
        let q = res.get_child("query", ns::DISCO_INFO).unwrap_or_else(|| panic!("no query: {res}"));
        q.elements().filter_map(|f| f.attr("var").map(str::to_owned)).collect()
    };
    let all = features(&info);
    for f in [NS_CARBONS, NS_BLOCKING, "urn:xmpp:ping", ns::DISCO_INFO] {
        assert!(all.iter().any(|x| x == f), "{f} missing from {all:?}");
    }
    assert_eq!(features(&by_node), all);
    assert_eq!(
        by_node.get_child("query", ns::DISCO_INFO).and_then(|q| q.attr("node")),
        Some(format!("{caps_node}#{ver}").as_str())
    );
    let wrong = c
        .iq_xml(&format!(
            "<iq type='get' to='{DOMAIN}'><query xmlns='{}' node='{caps_node}#nope'/></iq>",
            ns::DISCO_INFO
        ))
        .await
        .unwrap();
    assert_eq!(stanza_error(&wrong).as_deref(), Some("item-not-found"), "{wrong}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carbons_copy_sent_and_received_messages_to_enabled_resources() {
    let node = node_with("", &["alice", "bob"]);
    let mut a1 = online(&node, "alice", PW, "a1", Some(1)).await;
    let mut a2 = online(&node, "alice", PW, "a2", Some(0)).await;
    // a3 never enables carbons.
    let mut a3 = online(&node, "alice", PW, "a3", Some(0)).await;
    let mut bob = online(&node, "bob", PW, "b", None).await;
    set_carbons(&mut a1, true).await;
    set_carbons(&mut a2, true).await;
    // Enabling twice is fine (XEP-0280 §4); a get is not how it is done.
    set_carbons(&mut a2, true).await;
    let res = a1.iq_xml(&format!("<iq type='get'><enable xmlns='{NS_CARBONS}'/></iq>")).await.unwrap();
    assert_eq!(stanza_error(&res).as_deref(), Some("bad-request"), "{res}");

    // Received by a1: copied to a2.
    bob.send_str(&chat("alice@localhost/a1", "to a1", "")).await.unwrap();
    assert_eq!(body(&a1.recv_message().await.unwrap()).as_deref(), Some("to a1"));
    let copy = expect_carbon(&mut a2, "received").await;
    assert_eq!(copy.attr("type"), Some("chat"));
    let inner = carbon(&copy, "received").unwrap();
    assert_eq!(inner.attr("from"), Some("bob@localhost/b"));
    assert_eq!(inner.attr("to"), Some("alice@localhost/a1"));
    assert_eq!(body(inner).as_deref(), Some("to a1"));

    // Sent by a1: copied to a2.
    a1.send_str(&chat("bob@localhost/b", "from a1", "")).await.unwrap();
    assert_eq!(body(&bob.recv_message().await.unwrap()).as_deref(), Some("from a1"));
    let copy = expect_carbon(&mut a2, "sent").await;
    let inner = carbon(&copy, "sent").unwrap();
    assert_eq!(inner.attr("from"), Some("alice@localhost/a1"));
    assert_eq!(inner.attr("to"), Some("bob@localhost/b"));
    assert_eq!(body(inner).as_deref(), Some("from a1"));

    // To the bare JID: a1 (highest priority) gets it, a2 a copy.
    bob.send_str(&chat("alice@localhost", "to alice", "")).await.unwrap();
    assert_eq!(body(&a1.recv_message().await.unwrap()).as_deref(), Some("to alice"));
    let copy = expect_carbon(&mut a2, "received").await;
    assert_eq!(carbon(&copy, "received").unwrap().attr("to"), Some("alice@localhost"));

    // <private/> (with <no-copy/>, XEP-0280 §7) opts a message out, both ways:
    // the next copy a2 sees is of the message after it.
    let private = "<private xmlns='urn:xmpp:carbons:2'/><no-copy xmlns='urn:xmpp:hints'/>";
    a1.send_str(&chat("bob@localhost/b", "private out", private)).await.unwrap();
    a1.send_str(&chat("bob@localhost/b", "public out", "")).await.unwrap();
    bob.send_str(&chat("alice@localhost/a1", "private in", private)).await.unwrap();
    bob.send_str(&chat("alice@localhost/a1", "public in", "")).await.unwrap();
    for expect in ["private out", "public out"] {
        assert_eq!(body(&bob.recv_message().await.unwrap()).as_deref(), Some(expect));
    }
    for expect in ["private in", "public in"] {
        assert_eq!(body(&a1.recv_message().await.unwrap()).as_deref(), Some(expect));
    }
    let copy = expect_carbon(&mut a2, "sent").await;
    assert_eq!(body(carbon(&copy, "sent").unwrap()).as_deref(), Some("public out"));
    let copy = expect_carbon(&mut a2, "received").await;
    assert_eq!(body(carbon(&copy, "received").unwrap()).as_deref(), Some("public in"));
    assert_none(&mut a2, "a copy of a private message", |e| {
        [carbon(e, "sent"), carbon(e, "received")]
            .into_iter()
            .flatten()
            .any(|m| body(m).unwrap_or_default().starts_with("private"))
    })
    .await;

    // Neither the resource that took part nor one without carbons gets copies.
    assert_none(&mut a1, "a carbon", is_carbon).await;
    assert_none(&mut a3, "a carbon", is_carbon).await;

    // Equal priorities: both get the original of a message to the bare JID, and no copy.
    a2.send_str("<presence><priority>1</priority></presence>").await.unwrap();
    a2.recv_until(|e| e.name == "presence" && e.attr("from") == Some("alice@localhost/a2")).await.unwrap();
    a2.clear_backlog();
    bob.send_str(&chat("alice@localhost", "to both", "")).await.unwrap();
    assert_eq!(body(&a1.recv_message().await.unwrap()).as_deref(), Some("to both"));
    assert_eq!(body(&a2.recv_message().await.unwrap()).as_deref(), Some("to both"));
    assert_none(&mut a2, "a carbon", is_carbon).await;
    assert_none(&mut a1, "a carbon", is_carbon).await;

    // Disabled: no more copies.
    set_carbons(&mut a2, false).await;
    bob.send_str(&chat("alice@localhost/a1", "after disable", "")).await.unwrap();
    a1.send_str(&chat("bob@localhost/b", "after disable", "")).await.unwrap();
    assert_eq!(body(&a1.recv_message().await.unwrap()).as_deref(), Some("after disable"));
    assert_eq!(body(&bob.recv_message().await.unwrap()).as_deref(), Some("after disable"));
    assert_none(&mut a2, "a carbon", is_carbon).await;
}

/// `watcher` subscribes to `owner`'s presence (pre-approved, RFC 6121 §3.4), and
/// waits until it has the presence of `owner`'s resource.
async fn subscribe(owner: &mut Client, watcher: &mut Client) {
    let (o, w) = (owner.bare_jid().to_owned(), watcher.bare_jid().to_owned());
    owner.send_str(&format!("<presence to='{w}' type='subscribed'/>")).await.unwrap();
    barrier(owner).await;
    watcher.send_str(&format!("<presence to='{o}' type='subscribe'/>")).await.unwrap();
    let full = owner.jid().to_owned();
    watcher
        .recv_until(|e| e.name == "presence" && e.attr("from") == Some(&full) && e.attr("type").is_none())
        .await
        .unwrap();
}

async fn blocklist(c: &mut Client) -> Vec<String> {
    let res = c.iq_xml(&format!("<iq type='get'><blocklist xmlns='{NS_BLOCKING}'/></iq>")).await.unwrap();
    assert_eq!(res.attr("type"), Some("result"), "{res}");
    let list = res.get_child("blocklist", NS_BLOCKING).unwrap_or_else(|| panic!("{res}"));
    list.elements().filter_map(|i| i.attr("jid").map(str::to_owned)).collect()
}

async fn block(c: &mut Client, what: &str, jids: &[&str]) -> Element {
    let items: String = jids.iter().map(|j| format!("<item jid='{j}'/>")).collect();
    c.iq_xml(&format!("<iq type='set'><{what} xmlns='{NS_BLOCKING}'>{items}</{what}></iq>")).await.unwrap()
}

fn push_of(what: &'static str) -> impl Fn(&Element) -> bool {
    move |e| e.name == "iq" && e.attr("type") == Some("set") && e.has_child(what, NS_BLOCKING)
}

/// Waits for a blocklist push, checks it comes from the account, acknowledges
/// it, and returns its JIDs.
async fn expect_push(c: &mut Client, what: &'static str) -> Vec<String> {
    let push =
        c.recv_until(push_of(what)).await.unwrap_or_else(|e| panic!("{} waiting for a {what} push: {e}", c.jid()));
    assert_eq!(push.attr("from"), Some(c.bare_jid()), "{push}");
    let ack = format!("<iq type='result' id='{}'/>", push.attr("id").unwrap());
    c.send_str(&ack).await.unwrap();
    push.get_child(what, NS_BLOCKING).unwrap().elements().filter_map(|i| i.attr("jid").map(str::to_owned)).collect()
}

/// The `<error/>` of a stanza: (type, defined condition, has the XEP-0191 `<blocked/>`).
fn error_of(el: &Element) -> (String, String, bool) {
    let err = el.get_child("error", ns::CLIENT).unwrap_or_else(|| panic!("not an error: {el}"));
    (
        err.attr("type").unwrap_or_default().to_owned(),
        stanza_error(el).unwrap_or_default(),
        err.has_child("blocked", "urn:xmpp:blocking:errors"),
    )
}

fn error_from<'a>(name: &'a str, from: &'a str) -> impl Fn(&Element) -> bool + 'a {
    move |e| e.name == name && e.attr("type") == Some("error") && e.attr("from") == Some(from)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_command_pushes_and_enforcement() {
    let node = node_with("", &["alice", "bob", "carol"]);
    let mut a1 = online(&node, "alice", PW, "a1", Some(1)).await;
    let mut a2 = online(&node, "alice", PW, "a2", Some(0)).await;
    let mut bob = online(&node, "bob", PW, "b", None).await;
    subscribe(&mut a1, &mut bob).await;
    bob.recv_until(|e| e.name == "presence" && e.attr("from") == Some("alice@localhost/a2")).await.unwrap();

    // Only a1 asks for the blocklist, so only a1 gets pushes.
    assert!(blocklist(&mut a1).await.is_empty());
    let res = block(&mut a1, "block", &["bob@localhost"]).await;
    assert_eq!(res.attr("type"), Some("result"), "{res}");
    assert_eq!(expect_push(&mut a1, "block").await, ["bob@localhost"]);
    assert_none(&mut a2, "a blocklist push", push_of("block")).await;
    assert_eq!(blocklist(&mut a1).await, ["bob@localhost"]);
    // XEP-0191 §3.3: bob, who may see alice's presence, sees her go offline.
    for r in ["a1", "a2"] {
        let from = format!("alice@localhost/{r}");
        bob.recv_until(|e| {
            e.name == "presence" && e.attr("from") == Some(&from) && e.attr("type") == Some("unavailable")
        })
        .await
        .unwrap();
    }

    // Inbound: messages and IQ get/set bounce with service-unavailable, to a
    // resource as to the account; presence vanishes.
    bob.send_str(&chat("alice@localhost/a2", "to a2", "")).await.unwrap();
    let e = bob.recv_until(error_from("message", "alice@localhost/a2")).await.unwrap();
    assert_eq!(error_of(&e), ("cancel".into(), "service-unavailable".into(), false));
    bob.send_str(&chat("alice@localhost", "to alice", "")).await.unwrap();
    let e = bob.recv_until(error_from("message", "alice@localhost")).await.unwrap();
    assert_eq!(error_of(&e).1, "service-unavailable");
    let e = bob.iq_xml("<iq type='get' to='alice@localhost/a1'><ping xmlns='urn:xmpp:ping'/></iq>").await.unwrap();
    assert_eq!(error_of(&e).1, "service-unavailable", "{e}");
    let e = bob.iq_xml("<iq type='get' to='alice@localhost'><vCard xmlns='vcard-temp'/></iq>").await.unwrap();
    assert_eq!(error_of(&e).1, "service-unavailable", "{e}");
    bob.send_str("<presence to='alice@localhost/a1'><status>hello</status></presence>").await.unwrap();
    barrier(&mut bob).await;
    for a in [&mut a1, &mut a2] {
        assert_none(a, "something from bob", |e| e.attr("from").is_some_and(|f| f.starts_with("bob@localhost"))).await;
    }

    // Outbound: refused with not-acceptable and <blocked/>, for messages and presence alike.
    barrier(&mut bob).await;
    bob.clear_backlog();
    a2.send_str(&chat("bob@localhost/b", "to bob", "")).await.unwrap();
    let e = a2.recv_until(|e| e.name == "message" && e.attr("type") == Some("error")).await.unwrap();
    assert_eq!(error_of(&e), ("cancel".into(), "not-acceptable".into(), true), "{e}");
    assert_eq!(e.attr("to"), Some("alice@localhost/a2"));
    a1.send_str("<presence to='bob@localhost'/>").await.unwrap();
    let e = a1.recv_until(|e| e.name == "presence" && e.attr("type") == Some("error")).await.unwrap();
    assert_eq!(error_of(&e), ("cancel".into(), "not-acceptable".into(), true), "{e}");
    let e = a1.iq_xml("<iq type='get' to='bob@localhost/b'><ping xmlns='urn:xmpp:ping'/></iq>").await.unwrap();
    assert_eq!(error_of(&e), ("cancel".into(), "not-acceptable".into(), true), "{e}");
    assert_none(&mut bob, "something from alice", |e| e.attr("from").is_some_and(|f| f.starts_with("alice@localhost")))
        .await;

    // Unblocking: a push, and bob sees alice's presence again (§3.4).
    let res = block(&mut a1, "unblock", &["bob@localhost"]).await;
    assert_eq!(res.attr("type"), Some("result"), "{res}");
    assert_eq!(expect_push(&mut a1, "unblock").await, ["bob@localhost"]);
    bob.recv_until(|e| {
        e.name == "presence" && e.attr("from") == Some("alice@localhost/a1") && e.attr("type").is_none()
    })
    .await
    .unwrap();
    bob.send_str(&chat("alice@localhost/a2", "hello again", "")).await.unwrap();
    assert_eq!(body(&a2.recv_message().await.unwrap()).as_deref(), Some("hello again"));
    a2.send_str(&chat("bob@localhost/b", "hi", "")).await.unwrap();
    assert_eq!(body(&bob.recv_message().await.unwrap()).as_deref(), Some("hi"));

    // Domains and full JIDs; unblock without items unblocks everything (§3.5).
    block(&mut a1, "block", &["Carol@LocalHost/Phone", "example.net"]).await;
    let mut pushed = expect_push(&mut a1, "block").await;
    pushed.sort();
    assert_eq!(pushed, ["carol@localhost/Phone", "example.net"]);
    let res = block(&mut a1, "unblock", &[]).await;
    assert_eq!(res.attr("type"), Some("result"), "{res}");
    assert!(expect_push(&mut a1, "unblock").await.is_empty());
    assert!(blocklist(&mut a1).await.is_empty());

    // Bad requests (§3.3).
    let res = block(&mut a1, "block", &[]).await;
    assert_eq!(stanza_error(&res).as_deref(), Some("bad-request"), "{res}");
    let res = block(&mut a1, "block", &["@nobody"]).await;
    assert_eq!(stanza_error(&res).as_deref(), Some("jid-malformed"), "{res}");
    // Nobody reads another user's blocklist.
    let res = bob
        .iq_xml(&format!("<iq type='get' to='alice@localhost'><blocklist xmlns='{NS_BLOCKING}'/></iq>"))
        .await
        .unwrap();
    assert_eq!(stanza_error(&res).as_deref(), Some("forbidden"), "{res}");

    // The list is kept: a new session enforces it at once, and a message to the
    // offline account bounces instead of being stored.
    block(&mut a1, "block", &["bob@localhost"]).await;
    expect_push(&mut a1, "block").await;
    for mut a in [a1, a2] {
        a.close().await.unwrap();
        a.wait_closed(Duration::from_secs(10)).await.unwrap();
    }
    bob.send_str(&chat("alice@localhost", "while away", "")).await.unwrap();
    let e = bob.recv_until(error_from("message", "alice@localhost")).await.unwrap();
    assert_eq!(error_of(&e).1, "service-unavailable");
    let mut a3 = online(&node, "alice", PW, "a3", None).await;
    assert_none(&mut a3, "a message from bob", |e| e.name == "message").await;
    bob.send_str(&chat("alice@localhost/a3", "to a3", "")).await.unwrap();
    let e = bob.recv_until(error_from("message", "alice@localhost/a3")).await.unwrap();
    assert_eq!(error_of(&e).1, "service-unavailable");
    a3.send_str(&chat("bob@localhost", "from a3", "")).await.unwrap();
    let e = a3.recv_until(|e| e.name == "message" && e.attr("type") == Some("error")).await.unwrap();
    assert_eq!(error_of(&e), ("cancel".into(), "not-acceptable".into(), true), "{e}");
}

fn status_of(e: &Element) -> Option<String> {
    e.get_child("status", ns::CLIENT).map(Element::text)
}

/// The `(sender, what)` of what a CSI client read: presence status or chat state or body.
fn summary(e: &Element) -> (String, String) {
    let from = e.attr("from").unwrap_or_default().split('@').next().unwrap_or_default().to_owned();
    let what = match e.name.as_str() {
        "presence" => format!("presence {}", status_of(e).unwrap_or_default()),
        "message" => match body(e) {
            Some(b) => format!("body {b}"),
            None => format!(
                "state {}",
                e.elements().find(|c| c.ns == NS_CHATSTATES).map(|c| c.name.clone()).unwrap_or_default()
            ),
        },
        other => other.to_owned(),
    };
    (from, what)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csi_holds_presence_and_chat_states_until_needed() {
    let node = node_with("", &["alice", "bob", "carol"]);
    let mut alice = login(&node, "alice", PW, "phone").await;
    let mut bob = login(&node, "bob", PW, "b").await;
    let mut carol = login(&node, "carol", PW, "c").await;
    let to = "alice@localhost/phone";
    let presence = |status: &str| format!("<presence to='{to}'><status>{status}</status></presence>");
    let state = |s: &str| format!("<message type='chat' to='{to}'><{s} xmlns='{NS_CHATSTATES}'/></message>");

    alice.send_str(&format!("<inactive xmlns='{NS_CSI}'/>")).await.unwrap();
    // The session has taken <inactive/> once it answers what followed it.
    barrier(&mut alice).await;
    alice.clear_backlog();

    // Each sender's stanzas are in alice's mailbox once its barrier is passed,
    // so the order of arrival is known.
    bob.send_str(&presence("b1")).await.unwrap();
    barrier(&mut bob).await;
    carol.send_str(&presence("c1")).await.unwrap();
    barrier(&mut carol).await;
    bob.send_str(&state("composing")).await.unwrap();
    // Newer ones from the same contact replace the older.
    bob.send_str(&presence("b2")).await.unwrap();
    bob.send_str(&state("paused")).await.unwrap();
    barrier(&mut bob).await;

    // Becoming active flushes, in order; the replaced ones never arrive.
    alice.send_str(&format!("<active xmlns='{NS_CSI}'/>")).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(summary(&alice.recv().await.unwrap()));
    }
    let want = [("carol", "presence c1"), ("bob", "presence b2"), ("bob", "state paused")];
    assert_eq!(got, want.map(|(a, b)| (a.to_owned(), b.to_owned())));

    // While inactive again, a message with a body cannot wait: what was held comes first.
    alice.send_str(&format!("<inactive xmlns='{NS_CSI}'/>")).await.unwrap();
    barrier(&mut alice).await;
    alice.clear_backlog();
    bob.send_str(&presence("b3")).await.unwrap();
    barrier(&mut bob).await;
    carol.send_str(&presence("c2")).await.unwrap();
    barrier(&mut carol).await;
    bob.send_str(&presence("b4")).await.unwrap();
    barrier(&mut bob).await;
    bob.send_str(&chat(to, "wake up", "")).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(summary(&alice.recv().await.unwrap()));
    }
    let want = [("carol", "presence c2"), ("bob", "presence b4"), ("bob", "body wake up")];
    assert_eq!(got, want.map(|(a, b)| (a.to_owned(), b.to_owned())));
    // Active clients get everything at once.
    alice.send_str(&format!("<active xmlns='{NS_CSI}'/>")).await.unwrap();
    bob.send_str(&presence("b5")).await.unwrap();
    assert_eq!(summary(&alice.recv().await.unwrap()), ("bob".to_owned(), "presence b5".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_pings_silent_clients_and_drops_those_that_do_not_answer() {
    let node = node_with("[modules.mod_ping]\nping_interval = 1\nping_timeout = 1\n", &["alice", "bob"]);
    let is_ping = |e: &Element| e.name == "iq" && e.attr("type") == Some("get") && e.has_child("ping", ns::PING);

    // bob ignores pings: closed with connection-timeout after interval + timeout.
    let mut bob = login(&node, "bob", PW, "b").await;
    match bob.expect_stream_error_timeout(Duration::from_secs(10)).await {
        Ok(cond) => assert_eq!(cond, "connection-timeout"),
        Err(e) => panic!("bob was not disconnected: {e}"),
    }

    // alice answers every ping (a result, or an error as a client without
    // XEP-0199 would) and stays; a ping comes after each silence.
    let mut alice = login(&node, "alice", PW, "a").await;
    for answer in ["result", "error", "result"] {
        let ping = alice.recv_until_timeout(Duration::from_secs(5), is_ping).await.unwrap();
        assert_eq!(ping.attr("from"), Some(DOMAIN));
        assert_eq!(ping.attr("to"), Some("alice@localhost/a"));
        let pong = format!("<iq type='{answer}' id='{}' to='{DOMAIN}'/>", ping.attr("id").unwrap());
        alice.send_str(&pong).await.unwrap();
    }
    barrier(&mut alice).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_can_be_turned_off() {
    let node = node_with("[modules.mod_ping]\nsend_pings = false\nping_interval = 1\n", &["alice"]);
    let is_ping = |e: &Element| e.name == "iq" && e.attr("type") == Some("get") && e.has_child("ping", ns::PING);
    let mut alice = login(&node, "alice", PW, "a").await;
    // A node with the same interval and pings on, and a session there silent
    // since after alice's login: once it is pinged, alice would have been too.
    let control = node_with("[modules.mod_ping]\nping_interval = 1\n", &["bob"]);
    let mut bob = login(&control, "bob", PW, "b").await;
    bob.recv_until_timeout(Duration::from_secs(10), is_ping).await.expect("the control session is pinged");
    assert_none(&mut alice, "a ping", is_ping).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_modules_are_gone() {
    let node = node_with(
        "[modules.mod_carbons]\nenabled = false\n[modules.mod_blocking]\nenabled = false\n[modules.mod_csi]\nenabled = false\n",
        &["alice"],
    );
    let mut c = Client::connect(node.c2s, DOMAIN, Security::StartTls).await.unwrap();
    c.auth(Sasl::Scram(HashAlg::Sha256), "alice", PW).await.unwrap();
    assert!(!c.has_feature("csi", NS_CSI));
    assert!(c.has_feature("c", ns::CAPS));
    c.bind(Some("r")).await.unwrap();
    let res = c.iq_xml(&format!("<iq type='set'><enable xmlns='{NS_CARBONS}'/></iq>")).await.unwrap();
    assert_eq!(stanza_error(&res).as_deref(), Some("service-unavailable"), "{res}");
    let res = c.iq_xml(&format!("<iq type='get'><blocklist xmlns='{NS_BLOCKING}'/></iq>")).await.unwrap();
    assert_eq!(stanza_error(&res).as_deref(), Some("service-unavailable"), "{res}");
    // <inactive/> is not a stanza this server knows.
    c.send_str(&format!("<inactive xmlns='{NS_CSI}'/>")).await.unwrap();
    assert_eq!(c.expect_stream_error().await, "unsupported-stanza-type");
}

/// Copies and blocklist pushes reach resources on other nodes of a cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carbons_and_blocking_across_cluster_nodes() {
    let c = tokio::task::spawn_blocking(|| TestCluster::start(2)).await.unwrap();
    for u in ["alice", "bob"] {
        c.add_user(u, PW);
    }
    let mut a1 = online(&c.nodes[0], "alice", PW, "a1", Some(1)).await;
    let mut a2 = online(&c.nodes[1], "alice", PW, "a2", Some(0)).await;
    let mut bob = online(&c.nodes[0], "bob", PW, "b", None).await;
    meerkat_tests::wait_until("every resource in both tables", Duration::from_secs(10), || {
        (0..2).all(|i| c.table(i).len() == 3)
    });
    set_carbons(&mut a2, true).await;

    bob.send_str(&chat("alice@localhost/a1", "in", "")).await.unwrap();
    assert_eq!(body(&a1.recv_message().await.unwrap()).as_deref(), Some("in"));
    let copy = expect_carbon(&mut a2, "received").await;
    assert_eq!(body(carbon(&copy, "received").unwrap()).as_deref(), Some("in"));
    a1.send_str(&chat("bob@localhost/b", "out", "")).await.unwrap();
    assert_eq!(body(&bob.recv_message().await.unwrap()).as_deref(), Some("out"));
    let copy = expect_carbon(&mut a2, "sent").await;
    assert_eq!(body(carbon(&copy, "sent").unwrap()).as_deref(), Some("out"));

    // a1 on node 1 blocks bob; a2 on node 2 enforces it at once.
    assert!(blocklist(&mut a2).await.is_empty());
    block(&mut a1, "block", &["bob@localhost"]).await;
    assert_eq!(expect_push(&mut a2, "block").await, ["bob@localhost"]);
    bob.send_str(&chat("alice@localhost/a2", "to a2", "")).await.unwrap();
    let e = bob.recv_until(error_from("message", "alice@localhost/a2")).await.unwrap();
    assert_eq!(error_of(&e).1, "service-unavailable");
    a2.send_str(&chat("bob@localhost/b", "to bob", "")).await.unwrap();
    let e = a2.recv_until(|e| e.name == "message" && e.attr("type") == Some("error")).await.unwrap();
    assert_eq!(error_of(&e), ("cancel".into(), "not-acceptable".into(), true), "{e}");
    let res = bob.iq_xml("<iq type='get' to='alice@localhost'><vCard xmlns='vcard-temp'/></iq>").await.unwrap();
    assert_eq!(error_of(&res).1, "service-unavailable", "{res}");
}
