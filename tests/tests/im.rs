//! Instant messaging over the real node: delivery rules (RFC 6121 §8.5),
//! rosters and subscriptions (§2, §3), presence (§4), offline messages
//! (XEP-0160, XEP-0203) and the server's small queries.
#![allow(clippy::unwrap_used)]

use meerkat_tests::client::{body, parse_element, stanza_error};
use meerkat_tests::{login, online, Client, TestNode};
use meerkat_xmpp::element::Element;
use meerkat_xmpp::ns;

const PW: &str = "pw";

fn node_with(users: &[&str]) -> TestNode {
    let node = TestNode::start("");
    for u in users {
        node.add_user(u, PW);
    }
    node
}

fn available_from(from: &str) -> impl Fn(&Element) -> bool + '_ {
    move |el| el.name == "presence" && el.attr("from") == Some(from) && el.attr("type").is_none()
}

fn presence_of_type<'a>(from: &'a str, kind: &'a str) -> impl Fn(&Element) -> bool + 'a {
    move |el| el.name == "presence" && el.attr("from") == Some(from) && el.attr("type") == Some(kind)
}

fn roster_push(el: &Element) -> bool {
    el.name == "iq" && el.attr("type") == Some("set") && el.has_child("query", ns::ROSTER)
}

/// The single item of a roster push or result.
fn roster_item(el: &Element) -> Element {
    el.get_child("query", ns::ROSTER).unwrap().get_child("item", ns::ROSTER).unwrap().clone()
}

async fn roster_get(c: &mut Client) -> Vec<Element> {
    let res = c.iq_xml("<iq type='get'><query xmlns='jabber:iq:roster'/></iq>").await.unwrap();
    assert_eq!(res.attr("type"), Some("result"), "{res}");
    res.get_child("query", ns::ROSTER).unwrap().elements().cloned().collect()
}

/// Waits for a roster push about `jid` with this subscription state, and acknowledges it.
async fn expect_push(c: &mut Client, jid: &str, subscription: &str) -> Element {
    let push = c
        .recv_until(|el| {
            roster_push(el) && {
                let item = roster_item(el);
                item.attr("jid") == Some(jid) && item.attr("subscription") == Some(subscription)
            }
        })
        .await
        .unwrap_or_else(|e| panic!("{} waiting for a push of {jid} subscription={subscription}: {e}", c.jid()));
    // RFC 6121 §2.1.6: a push comes from the account itself (or has no 'from').
    let from = push.attr("from");
    assert!(from.is_none() || from == Some(c.bare_jid()), "push from {from:?}");
    let ack = Element::new("iq", ns::CLIENT).with_attr("type", "result").with_attr("id", push.attr("id").unwrap());
    c.send(&ack).await.unwrap();
    roster_item(&push)
}

/// Mutual subscription between two online clients (RFC 6121 §3.1), checking every step.
async fn befriend(a: &mut Client, b: &mut Client) {
    let (a_bare, b_bare) = (a.bare_jid().to_owned(), b.bare_jid().to_owned());
    let (a_full, b_full) = (a.jid().to_owned(), b.jid().to_owned());
    // a asks b.
    a.send_str(&format!("<presence to='{b_bare}' type='subscribe'/>")).await.unwrap();
    let item = expect_push(a, &b_bare, "none").await;
    assert_eq!(item.attr("ask"), Some("subscribe"));
    b.recv_until(presence_of_type(&a_bare, "subscribe")).await.unwrap();
    // b approves: b's roster shows 'from', a's shows 'to', a gets b's presence.
    b.send_str(&format!("<presence to='{a_bare}' type='subscribed'/>")).await.unwrap();
    expect_push(b, &a_bare, "from").await;
    a.recv_until(presence_of_type(&b_bare, "subscribed")).await.unwrap();
    let item = expect_push(a, &b_bare, "to").await;
    assert_eq!(item.attr("ask"), None);
    a.recv_until(available_from(&b_full)).await.unwrap();
    // And the other way round: both.
    b.send_str(&format!("<presence to='{a_bare}' type='subscribe'/>")).await.unwrap();
    a.recv_until(presence_of_type(&b_bare, "subscribe")).await.unwrap();
    a.send_str(&format!("<presence to='{b_bare}' type='subscribed'/>")).await.unwrap();
    expect_push(a, &b_bare, "both").await;
    b.recv_until(presence_of_type(&a_bare, "subscribed")).await.unwrap();
    expect_push(b, &a_bare, "both").await;
    b.recv_until(available_from(&a_full)).await.unwrap();
}

#[tokio::test]
async fn message_to_full_and_bare_jid() {
    let node = node_with(&["alice", "bob"]);
    let mut alice = login(&node, "alice", PW, "r").await;
    let mut hi = online(&node, "bob", PW, "hi", Some(5)).await;
    let mut lo = online(&node, "bob", PW, "lo", Some(1)).await;

    // Full JID: exactly that resource, stamped with the sender's full JID.
    alice.send_message("bob@localhost/lo", "to lo").await.unwrap();
    let m = lo.recv_message().await.unwrap();
    assert_eq!(body(&m).as_deref(), Some("to lo"));
    assert_eq!(m.attr("from"), Some("alice@localhost/r"));
    assert_eq!(m.attr("to"), Some("bob@localhost/lo"));

    // Bare JID: the highest-priority resource only (RFC 6121 §8.5.2.1.1).
    alice.send_message("bob@localhost", "to bare").await.unwrap();
    assert_eq!(body(&hi.recv_message().await.unwrap()).as_deref(), Some("to bare"));
    // What 'lo' gets next is the marker, not the bare message.
    alice.send_message("bob@localhost/lo", "marker").await.unwrap();
    assert_eq!(body(&lo.recv_message().await.unwrap()).as_deref(), Some("marker"));

    // Equal priorities: both get it.
    lo.send_presence(Some(5)).await.unwrap();
    lo.recv_until(|el| {
        available_from("bob@localhost/lo")(el)
            && el.get_child("priority", ns::CLIENT).map(Element::text).as_deref() == Some("5")
    })
    .await
    .unwrap();
    alice.send_message("bob@localhost", "to both").await.unwrap();
    assert_eq!(body(&hi.recv_message().await.unwrap()).as_deref(), Some("to both"));
    assert_eq!(body(&lo.recv_message().await.unwrap()).as_deref(), Some("to both"));

    // A message to an unavailable (bound, no presence) full JID is still delivered to it.
    alice.send_message("bob@localhost/lo", "direct").await.unwrap();
    assert_eq!(body(&lo.recv_message().await.unwrap()).as_deref(), Some("direct"));
}

#[tokio::test]
async fn iq_to_unknown_full_jid_is_service_unavailable() {
    let node = node_with(&["alice", "bob"]);
    let mut alice = login(&node, "alice", PW, "r").await;
    let mut bob = login(&node, "bob", PW, "here").await;
    for to in ["bob@localhost/elsewhere", "nobody@localhost/x"] {
        let res = alice.iq_xml(&format!("<iq type='get' to='{to}'><ping xmlns='urn:xmpp:ping'/></iq>")).await.unwrap();
        assert_eq!(res.attr("type"), Some("error"), "{res}");
        assert_eq!(stanza_error(&res).as_deref(), Some("service-unavailable"), "{res}");
        assert_eq!(res.attr("from"), Some(to));
    }
    // An IQ to a bound resource reaches it.
    alice.send_str("<iq type='get' id='q1' to='bob@localhost/here'><ping xmlns='urn:xmpp:ping'/></iq>").await.unwrap();
    let q = bob.recv_until(|el| el.name == "iq" && el.attr("id") == Some("q1")).await.unwrap();
    assert_eq!(q.attr("from"), Some("alice@localhost/r"));
    bob.send_str("<iq type='result' id='q1' to='alice@localhost/r'/>").await.unwrap();
    let r = alice.recv_until(|el| el.name == "iq" && el.attr("id") == Some("q1")).await.unwrap();
    assert_eq!(r.attr("type"), Some("result"));
    assert_eq!(r.attr("from"), Some("bob@localhost/here"));
}

#[tokio::test]
async fn error_stanzas_are_not_answered_with_errors() {
    let node = node_with(&["alice", "bob"]);
    let mut alice = login(&node, "alice", PW, "r").await;
    let err = "<error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>";
    for stanza in [
        format!("<message type='error' to='bob@localhost/gone'>{err}</message>"),
        format!("<message type='error' to='nobody@localhost'>{err}</message>"),
        format!("<iq type='error' id='e1' to='nobody@localhost/x'>{err}</iq>"),
        format!("<iq type='error' id='e2' to='bob@localhost/gone'>{err}</iq>"),
        format!("<iq type='error' id='e3' to='localhost'>{err}</iq>"),
        "<iq type='result' id='e4' to='localhost'/>".to_string(),
        format!("<presence type='error' to='nobody@localhost/x'>{err}</presence>"),
    ] {
        alice.send_str(&stanza).await.unwrap();
    }
    // The next thing alice reads is the answer to her ping: nothing came back for the errors.
    alice.send_str("<iq type='get' id='barrier' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>").await.unwrap();
    let next = alice.recv().await.unwrap();
    assert_eq!(next.attr("id"), Some("barrier"), "unexpected answer: {next}");
    assert_eq!(next.attr("type"), Some("result"));
}

#[tokio::test]
async fn roster_get_set_push_and_remove() {
    let node = node_with(&["alice", "bob"]);
    let mut a1 = login(&node, "alice", PW, "one").await;
    let mut a2 = login(&node, "alice", PW, "two").await;
    assert!(roster_get(&mut a1).await.is_empty());

    let res = a1
        .iq_xml("<iq type='set'><query xmlns='jabber:iq:roster'><item jid='bob@localhost' name='Bob'><group>Friends</group></item></query></iq>")
        .await
        .unwrap();
    assert_eq!(res.attr("type"), Some("result"), "{res}");
    // Every resource gets the push (RFC 6121 §2.3.2).
    for c in [&mut a1, &mut a2] {
        let item = expect_push(c, "bob@localhost", "none").await;
        assert_eq!(item.attr("name"), Some("Bob"));
        assert_eq!(item.get_child("group", ns::ROSTER).map(Element::text).as_deref(), Some("Friends"));
    }
    let items = roster_get(&mut a2).await;
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].attr("jid"), Some("bob@localhost"));
    assert_eq!(items[0].attr("name"), Some("Bob"));
    assert_eq!(items[0].attr("subscription"), Some("none"));

    // A second item in one set is a bad request (§2.3.3).
    let res = a1
        .iq_xml("<iq type='set'><query xmlns='jabber:iq:roster'><item jid='x@localhost'/><item jid='y@localhost'/></query></iq>")
        .await
        .unwrap();
    assert_eq!(stanza_error(&res).as_deref(), Some("bad-request"), "{res}");
    // Another user's roster is not ours to read.
    let res = a1.iq_xml("<iq type='get' to='bob@localhost'><query xmlns='jabber:iq:roster'/></iq>").await.unwrap();
    assert_eq!(res.attr("type"), Some("error"), "{res}");

    // Removal: push with subscription='remove', then an empty roster.
    let res = a2
        .iq_xml("<iq type='set'><query xmlns='jabber:iq:roster'><item jid='bob@localhost' subscription='remove'/></query></iq>")
        .await
        .unwrap();
    assert_eq!(res.attr("type"), Some("result"), "{res}");
    for c in [&mut a1, &mut a2] {
        expect_push(c, "bob@localhost", "remove").await;
    }
    assert!(roster_get(&mut a1).await.is_empty());
}

#[tokio::test]
async fn subscription_handshake_and_presence_exchange() {
    let node = node_with(&["alice", "bob"]);
    let mut alice = online(&node, "alice", PW, "r", None).await;
    let mut bob = online(&node, "bob", PW, "r", None).await;
    befriend(&mut alice, &mut bob).await;
    for (c, other) in [(&mut alice, "bob@localhost"), (&mut bob, "alice@localhost")] {
        let items = roster_get(c).await;
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].attr("jid"), Some(other));
        assert_eq!(items[0].attr("subscription"), Some("both"));
    }
    // Presence updates reach the contact.
    alice.send_str("<presence><show>away</show><status>brb</status></presence>").await.unwrap();
    let p = bob
        .recv_until(|el| available_from("alice@localhost/r")(el) && el.get_child("status", ns::CLIENT).is_some())
        .await
        .unwrap();
    assert_eq!(p.get_child("status", ns::CLIENT).unwrap().text(), "brb");
    assert_eq!(p.get_child("show", ns::CLIENT).unwrap().text(), "away");
    // Messages flow both ways.
    bob.send_message("alice@localhost", "hi alice").await.unwrap();
    assert_eq!(body(&alice.recv_message().await.unwrap()).as_deref(), Some("hi alice"));
}

#[tokio::test]
async fn presence_probe_on_login_and_unavailable_on_disconnect() {
    let node = node_with(&["alice", "bob"]);
    let mut alice = online(&node, "alice", PW, "r", None).await;
    let mut bob = online(&node, "bob", PW, "r", None).await;
    befriend(&mut alice, &mut bob).await;
    let mut bob2 = online(&node, "bob", PW, "second", None).await;
    alice.recv_until(available_from("bob@localhost/second")).await.unwrap();

    // A new resource of alice learns bob's presence through the server's probe (RFC 6121 §4.3).
    let mut alice2 = online(&node, "alice", PW, "late", None).await;
    alice2.recv_until(available_from("bob@localhost/r")).await.unwrap();
    alice2.recv_until(available_from("bob@localhost/second")).await.unwrap();
    // And bob sees alice's new resource.
    bob.recv_until(available_from("alice@localhost/late")).await.unwrap();

    // A clean close and an abrupt disconnect both broadcast unavailable presence (§4.5.2, §4.6).
    bob.close().await.unwrap();
    alice.recv_until(presence_of_type("bob@localhost/r", "unavailable")).await.unwrap();
    bob2.send_raw(b"<message to='alice@localhost'><body>cut short").await.unwrap();
    drop(bob2);
    alice.recv_until(presence_of_type("bob@localhost/second", "unavailable")).await.unwrap();
    alice2.recv_until(presence_of_type("bob@localhost/second", "unavailable")).await.unwrap();
    // Unavailable presence sent by the client itself, too.
    alice2.send_str("<presence type='unavailable'/>").await.unwrap();
    alice.recv_until(presence_of_type("alice@localhost/late", "unavailable")).await.unwrap();
}

#[tokio::test]
async fn offline_message_is_delivered_after_initial_presence_with_delay() {
    let node = node_with(&["alice", "bob"]);
    let mut alice = login(&node, "alice", PW, "r").await;
    alice.send_message("bob@localhost", "while you were out").await.unwrap();
    // Jobs for bob's account run in order on one shard: once this IQ to bob's
    // bare JID is answered, the message is stored.
    let res = alice
        .iq_xml("<iq type='get' to='bob@localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        .await
        .unwrap();
    assert_eq!(res.attr("type"), Some("result"), "{res}");

    let mut bob = login(&node, "bob", PW, "r").await;
    // Nothing before initial presence: the first thing bob reads is his ping's answer.
    bob.send_str("<iq type='get' id='p' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>").await.unwrap();
    let first = bob.recv().await.unwrap();
    assert_eq!(first.attr("id"), Some("p"), "offline message delivered before initial presence: {first}");
    bob.send_presence(None).await.unwrap();
    let m = bob.recv_message().await.unwrap();
    assert_eq!(body(&m).as_deref(), Some("while you were out"));
    assert_eq!(m.attr("from"), Some("alice@localhost/r"));
    let delay = m.get_child("delay", ns::DELAY).unwrap_or_else(|| panic!("no XEP-0203 delay: {m}"));
    let stamp = delay.attr("stamp").unwrap();
    assert!(stamp.len() >= 20 && stamp.as_bytes()[10] == b'T' && stamp.ends_with('Z'), "stamp {stamp:?}");
    assert_eq!(delay.attr("from"), Some("localhost"));

    // Delivered once: another login finds nothing stored.
    drop(bob);
    let mut bob = online(&node, "bob", PW, "again", None).await;
    bob.send_str("<iq type='get' id='p2' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>").await.unwrap();
    let next = bob.recv_until(|el| el.name != "presence").await.unwrap();
    assert_eq!(next.attr("id"), Some("p2"), "message delivered twice: {next}");
}

#[tokio::test]
async fn server_disco_version_ping_and_time() {
    let node = node_with(&["alice"]);
    let mut c = login(&node, "alice", PW, "r").await;

    let res = c
        .iq_xml("<iq type='get' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        .await
        .unwrap();
    assert_eq!(res.attr("type"), Some("result"), "{res}");
    assert_eq!(res.attr("from"), Some("localhost"));
    let q = res.get_child("query", ns::DISCO_INFO).unwrap();
    let id = q.get_child("identity", ns::DISCO_INFO).unwrap();
    assert_eq!((id.attr("category"), id.attr("type")), (Some("server"), Some("im")));
    let features: Vec<&str> = q.elements().filter(|e| e.name == "feature").filter_map(|e| e.attr("var")).collect();
    for f in [
        ns::DISCO_INFO,
        ns::DISCO_ITEMS,
        ns::PING,
        ns::VERSION,
        ns::TIME,
        ns::VCARD,
        ns::PRIVATE,
        ns::REGISTER,
        "msgoffline",
    ] {
        assert!(features.contains(&f), "{f} missing from {features:?}");
    }
    let res = c
        .iq_xml("<iq type='get' to='localhost'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>")
        .await
        .unwrap();
    assert_eq!(res.attr("type"), Some("result"), "{res}");

    let res = c.iq_xml("<iq type='get' to='localhost'><query xmlns='jabber:iq:version'/></iq>").await.unwrap();
    let q = res.get_child("query", ns::VERSION).unwrap_or_else(|| panic!("{res}"));
    assert_eq!(q.get_child("name", ns::VERSION).unwrap().text(), "Meerkat");
    assert!(!q.get_child("version", ns::VERSION).unwrap().text().is_empty());

    let res = c.iq_xml("<iq type='get' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>").await.unwrap();
    assert_eq!(res.attr("type"), Some("result"), "{res}");

    let res = c.iq_xml("<iq type='get' to='localhost'><time xmlns='urn:xmpp:time'/></iq>").await.unwrap();
    let t = res.get_child("time", ns::TIME).unwrap_or_else(|| panic!("{res}"));
    assert_eq!(t.get_child("tzo", ns::TIME).unwrap().text(), "+00:00");
    assert!(t.get_child("utc", ns::TIME).unwrap().text().ends_with('Z'));

    // An unknown payload is service-unavailable, a payload-less get a bad request.
    let res = c.iq_xml("<iq type='get' to='localhost'><query xmlns='urn:example:unknown'/></iq>").await.unwrap();
    assert_eq!(stanza_error(&res).as_deref(), Some("service-unavailable"), "{res}");
}

#[tokio::test]
async fn vcard_set_and_get() {
    let node = node_with(&["alice", "bob"]);
    let mut alice = login(&node, "alice", PW, "r").await;
    let mut bob = login(&node, "bob", PW, "r").await;
    let res = bob.iq_xml("<iq type='get' to='alice@localhost'><vCard xmlns='vcard-temp'/></iq>").await.unwrap();
    assert_eq!(res.attr("type"), Some("error"), "no vCard yet: {res}");

    let res = alice
        .iq_xml("<iq type='set'><vCard xmlns='vcard-temp'><FN>Alice Liddell</FN><NICKNAME>al</NICKNAME></vCard></iq>")
        .await
        .unwrap();
    assert_eq!(res.attr("type"), Some("result"), "{res}");
    let res = alice.iq_xml("<iq type='get'><vCard xmlns='vcard-temp'/></iq>").await.unwrap();
    let v = res.get_child("vCard", ns::VCARD).unwrap_or_else(|| panic!("{res}"));
    assert_eq!(v.get_child("FN", ns::VCARD).unwrap().text(), "Alice Liddell");
    // Anyone may read it (XEP-0054 §3.2), nobody else may write it.
    let res = bob.iq_xml("<iq type='get' to='alice@localhost'><vCard xmlns='vcard-temp'/></iq>").await.unwrap();
    let v = res.get_child("vCard", ns::VCARD).unwrap_or_else(|| panic!("{res}"));
    assert_eq!(v.get_child("NICKNAME", ns::VCARD).unwrap().text(), "al");
    assert_eq!(res.attr("from"), Some("alice@localhost"));
    let res = bob
        .iq_xml("<iq type='set' to='alice@localhost'><vCard xmlns='vcard-temp'><FN>Mallory</FN></vCard></iq>")
        .await
        .unwrap();
    assert_eq!(stanza_error(&res).as_deref(), Some("forbidden"), "{res}");
}

#[tokio::test]
async fn private_storage_set_and_get() {
    let node = node_with(&["alice", "bob"]);
    let mut alice = login(&node, "alice", PW, "r").await;
    let res = alice
        .iq_xml("<iq type='set'><query xmlns='jabber:iq:private'><exodus xmlns='exodus:prefs'><defaultnick>Hamlet</defaultnick></exodus></query></iq>")
        .await
        .unwrap();
    assert_eq!(res.attr("type"), Some("result"), "{res}");
    let res = alice
        .iq_xml("<iq type='get'><query xmlns='jabber:iq:private'><exodus xmlns='exodus:prefs'/></query></iq>")
        .await
        .unwrap();
    let stored = res
        .get_child("query", ns::PRIVATE)
        .and_then(|q| q.get_child("exodus", "exodus:prefs"))
        .unwrap_or_else(|| panic!("{res}"));
    assert_eq!(stored.get_child("defaultnick", "exodus:prefs").unwrap().text(), "Hamlet");
    // An unknown namespace comes back empty, a jabber:* one is refused.
    let res = alice
        .iq_xml("<iq type='get'><query xmlns='jabber:iq:private'><other xmlns='urn:example:other'/></query></iq>")
        .await
        .unwrap();
    assert_eq!(res.attr("type"), Some("result"), "{res}");
    let res = alice
        .iq_xml("<iq type='get'><query xmlns='jabber:iq:private'><q xmlns='jabber:iq:roster'/></query></iq>")
        .await
        .unwrap();
    assert_eq!(stanza_error(&res).as_deref(), Some("not-acceptable"), "{res}");
    // Another account's private storage is off limits.
    let mut bob = login(&node, "bob", PW, "r").await;
    let res = bob.iq(parse_element("<iq type='get' to='alice@localhost'><query xmlns='jabber:iq:private'><exodus xmlns='exodus:prefs'/></query></iq>")).await.unwrap();
    assert_eq!(stanza_error(&res).as_deref(), Some("forbidden"), "{res}");
}

/// alice sends a steady stream while bob logs in and sends his initial
/// presence: the messages stored before it and the live ones after it reach
/// him each once, stored ones first, in the order alice sent them.
#[tokio::test]
async fn messages_around_initial_presence_keep_their_order() {
    /// alice sends this many before bob logs in, and as many after his presence.
    const AROUND: usize = 100;
    /// alice pauses after this many until bob's presence is back, which keeps
    /// the test short and within what the offline store keeps (1,000).
    const MAX_BEFORE: usize = 400;
    let node = node_with(&["alice", "bob"]);
    let mut alice = login(&node, "alice", PW, "r").await;
    let (started_tx, started) = tokio::sync::oneshot::channel();
    let (presence_tx, mut presence) = tokio::sync::watch::channel(false);
    let sender = tokio::spawn(async move {
        let mut started_tx = Some(started_tx);
        let (mut i, mut end) = (0, usize::MAX);
        while i < end {
            alice.send_message("bob@localhost", &format!("n{i}")).await.unwrap();
            i += 1;
            if i == AROUND {
                if let Some(tx) = started_tx.take() {
                    let _ = tx.send(());
                }
            }
            if end == usize::MAX {
                if i >= MAX_BEFORE {
                    presence.wait_for(|sent| *sent).await.unwrap();
                }
                if *presence.borrow() {
                    end = i + AROUND;
                }
            }
            // Pacing, not waiting: a steady stream rather than one burst, so
            // that bob's presence lands in the middle of it.
            if i % 4 == 0 {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        }
        (alice, i)
    });
    // bob comes online in the middle of the stream; once his presence is
    // back, what alice sends from then on reaches him live.
    started.await.unwrap();
    let mut bob = login(&node, "bob", PW, "r").await;
    bob.go_online(None).await.unwrap();
    presence_tx.send(true).unwrap();
    let (_alice, n) = sender.await.unwrap();
    let mut got = Vec::new();
    while got.len() < n {
        let m = bob
            .recv_until_timeout(std::time::Duration::from_secs(10), |el| el.name == "message")
            .await
            .unwrap_or_else(|e| panic!("only {} of {n} arrived ({e}): {got:?}", got.len()));
        let k: usize = body(&m).and_then(|b| b.strip_prefix('n').and_then(|x| x.parse().ok())).unwrap();
        got.push((k, m.get_child("delay", ns::DELAY).is_some()));
    }
    let order: Vec<usize> = got.iter().map(|(k, _)| *k).collect();
    let shown: Vec<String> = got.iter().map(|(k, d)| format!("{k}{}", if *d { "*" } else { "" })).collect();
    assert_eq!(order, (0..n).collect::<Vec<_>>(), "each message once, in the order sent (* = stored): {shown:?}");
    let stored = got.iter().filter(|(_, d)| *d).count();
    assert!(stored >= AROUND && stored <= n - AROUND, "{stored} of {n} stored: the presence was not mid-stream");
}
