//! XEP-0060 at `pubsub.localhost` and XEP-0163 PEP, against the real node:
//! the life of a node (create, configure, publish, items, retract, purge,
//! subscriptions, affiliations, delete with redirect), the notifications
//! each step sends, the errors XEP-0060 specifies for the requests it
//! refuses, and PEP's notifications to contacts whose clients asked for the
//! node (`+notify` in their entity capabilities) and to no one else.
#![allow(clippy::unwrap_used)]

use meerkat_tests::client::stanza_error;
use meerkat_tests::cluster::SharedDb;
use meerkat_tests::node::NodeOptions;
use meerkat_tests::{login, Client, TestNode};
use meerkat_xmpp::element::Element;
use meerkat_xmpp::ns;

const PW: &str = "pw";
const PUBSUB: &str = "http://jabber.org/protocol/pubsub";
const OWNER: &str = "http://jabber.org/protocol/pubsub#owner";
const EVENT: &str = "http://jabber.org/protocol/pubsub#event";
const ERRORS: &str = "http://jabber.org/protocol/pubsub#errors";
const SERVICE: &str = "pubsub.localhost";

/// A node with PubSub on, on `db` (the node's own SQLite when `None`).
fn node_on(db: Option<&SharedDb>) -> TestNode {
    let mut extra = "[modules.mod_pubsub]\nenabled = true\n".to_owned();
    if let Some(db) = db {
        extra.push_str(&format!("\n[outgoing_pools.rdbms.default]\nworkers = 4\nconnection.url = \"{}\"\n", db.url));
    }
    let node = TestNode::start_with(NodeOptions { extra_toml: extra, ..Default::default() });
    for u in ["alice", "bob", "carol", "dave"] {
        node.add_user(u, PW);
    }
    node
}

fn node() -> TestNode {
    node_on(None)
}

/// An IQ's error conditions, none for a result.
type Outcome = (Option<String>, Option<String>);

/// The IQ's error: its defined condition and its `pubsub#errors` condition.
fn error_of(iq: &Element) -> (Option<String>, Option<String>) {
    assert_eq!(iq.attr("type"), Some("error"), "{iq}");
    let app =
        iq.get_child("error", ns::CLIENT).and_then(|e| e.elements().find(|c| c.ns == ERRORS)).map(|c| c.name.clone());
    (stanza_error(iq), app)
}

fn err(cond: &str, app: Option<&str>) -> (Option<String>, Option<String>) {
    (Some(cond.to_owned()), app.map(str::to_owned))
}

async fn ok(c: &mut Client, xml: &str) -> Element {
    let res = c.iq_xml(xml).await.unwrap();
    assert_eq!(res.attr("type"), Some("result"), "{xml}\n=> {res}");
    res
}

fn publish(to: &str, node: &str, id: &str, text: &str) -> String {
    let to = if to.is_empty() { String::new() } else { format!(" to='{to}'") };
    format!(
        "<iq type='set'{to}><pubsub xmlns='{PUBSUB}'><publish node='{node}'><item id='{id}'>\
         <entry xmlns='urn:example'>{text}</entry></item></publish></pubsub></iq>"
    )
}

/// The next pubsub event message, skipping everything else.
async fn event(c: &mut Client) -> Element {
    c.recv_until(|e| e.name == "message" && e.get_child("event", EVENT).is_some()).await.unwrap()
}

fn event_child(m: &Element) -> Element {
    m.get_child("event", EVENT).and_then(|e| e.elements().next().cloned()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_node_lives_and_notifies_its_subscribers() {
    service_node_life(&node()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_and_access_models_on_postgresql_and_mariadb() {
    service_node_life(&node_on(Some(&SharedDb::postgres()))).await;
    access_models(&node_on(Some(&SharedDb::postgres()))).await;
    service_node_life(&node_on(Some(&SharedDb::mysql()))).await;
    access_models(&node_on(Some(&SharedDb::mysql()))).await;
}

async fn service_node_life(node: &TestNode) {
    let mut alice = login(node, "alice", PW, "a").await;
    let mut bob = login(node, "bob", PW, "b").await;

    // The service is listed by the server and describes itself.
    let items =
        ok(&mut alice, "<iq type='get' to='localhost'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>")
            .await;
    assert!(items.to_xml(ns::CLIENT).contains(SERVICE), "{items}");
    let info = ok(
        &mut alice,
        &format!("<iq type='get' to='{SERVICE}'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>"),
    )
    .await;
    assert!(info.to_xml(ns::CLIENT).contains("publish-options"), "{info}");

    // Create; again is a conflict; an instant node gets a name.
    ok(
        &mut alice,
        &format!("<iq type='set' to='{SERVICE}'><pubsub xmlns='{PUBSUB}'><create node='news'/></pubsub></iq>"),
    )
    .await;
    let again = alice
        .iq_xml(&format!("<iq type='set' to='{SERVICE}'><pubsub xmlns='{PUBSUB}'><create node='news'/></pubsub></iq>"))
        .await
        .unwrap();
    assert_eq!(error_of(&again), err("conflict", None));
    let instant =
        ok(&mut alice, &format!("<iq type='set' to='{SERVICE}'><pubsub xmlns='{PUBSUB}'><create/></pubsub></iq>"))
            .await;
    let name = instant
        .get_child("pubsub", PUBSUB)
        .and_then(|p| p.get_child("create", PUBSUB))
        .and_then(|c| c.attr("node"))
        .map(str::to_owned);
    assert!(name.is_some_and(|n| !n.is_empty()), "{instant}");

    // Bob subscribes (the node is open) and gets a subscription id.
    let sub = ok(&mut bob, &format!("<iq type='set' to='{SERVICE}'><pubsub xmlns='{PUBSUB}'><subscribe node='news' jid='bob@localhost/b'/></pubsub></iq>")).await;
    let s = sub.get_child("pubsub", PUBSUB).and_then(|p| p.get_child("subscription", PUBSUB)).cloned().unwrap();
    assert_eq!(s.attr("subscription"), Some("subscribed"));
    let subid = s.attr("subid").unwrap().to_owned();
    // Someone else's JID: invalid-jid.
    let wrong = bob.iq_xml(&format!("<iq type='set' to='{SERVICE}'><pubsub xmlns='{PUBSUB}'><subscribe node='news' jid='carol@localhost'/></pubsub></iq>")).await.unwrap();
    assert_eq!(error_of(&wrong), err("bad-request", Some("invalid-jid")));

    // Publish: the result names the item; Bob is notified with his subscription id.
    let res = ok(&mut alice, &publish(SERVICE, "news", "i1", "first")).await;
    assert!(res.to_xml(ns::CLIENT).contains("id=\"i1\"") || res.to_xml(ns::CLIENT).contains("id='i1'"), "{res}");
    let m = event(&mut bob).await;
    assert_eq!(m.attr("from"), Some(SERVICE));
    let items = event_child(&m);
    assert_eq!((items.name.as_str(), items.attr("node")), ("items", Some("news")));
    assert!(m.to_xml(ns::CLIENT).contains("first"), "{m}");
    let header =
        m.get_child("headers", "http://jabber.org/protocol/shim").and_then(|h| h.elements().next().cloned()).unwrap();
    assert_eq!((header.attr("name"), header.text()), (Some("SubID"), subid.clone()));

    // Items: all, the last one, by id; a node that does not exist.
    ok(&mut alice, &publish(SERVICE, "news", "i2", "second")).await;
    event(&mut bob).await;
    let all = ok(
        &mut bob,
        &format!("<iq type='get' to='{SERVICE}'><pubsub xmlns='{PUBSUB}'><items node='news'/></pubsub></iq>"),
    )
    .await;
    let ids = |res: &Element| -> Vec<String> {
        res.get_child("pubsub", PUBSUB)
            .and_then(|p| p.get_child("items", PUBSUB))
            .map(|i| i.elements().filter_map(|e| e.attr("id").map(str::to_owned)).collect())
            .unwrap_or_default()
    };
    assert_eq!(ids(&all), ["i1", "i2"]);
    let last = ok(
        &mut bob,
        &format!(
            "<iq type='get' to='{SERVICE}'><pubsub xmlns='{PUBSUB}'><items node='news' max_items='1'/></pubsub></iq>"
        ),
    )
    .await;
    assert_eq!(ids(&last), ["i2"]);
    let one = ok(&mut bob, &format!("<iq type='get' to='{SERVICE}'><pubsub xmlns='{PUBSUB}'><items node='news'><item id='i1'/></items></pubsub></iq>")).await;
    assert_eq!(ids(&one), ["i1"]);
    let none = bob
        .iq_xml(&format!(
            "<iq type='get' to='{SERVICE}'><pubsub xmlns='{PUBSUB}'><items node='nothing'/></pubsub></iq>"
        ))
        .await
        .unwrap();
    assert_eq!(error_of(&none), err("item-not-found", None));

    // Bob may neither publish nor retract, nor configure; Alice retracts and Bob hears of it.
    let denied = bob.iq_xml(&publish(SERVICE, "news", "x", "no")).await.unwrap();
    assert_eq!(error_of(&denied), err("forbidden", None));
    let retract = |who: &str| {
        format!("<iq type='set' to='{SERVICE}'><pubsub xmlns='{PUBSUB}'><retract node='news' notify='1'><item id='i1'/></retract></pubsub></iq>{who}")
    };
    let denied = bob.iq_xml(&retract("")).await.unwrap();
    assert_eq!(error_of(&denied), err("forbidden", None));
    let denied = bob
        .iq_xml(&format!(
            "<iq type='get' to='{SERVICE}'><pubsub xmlns='{OWNER}'><configure node='news'/></pubsub></iq>"
        ))
        .await
        .unwrap();
    assert_eq!(error_of(&denied), err("forbidden", None));
    ok(&mut alice, &retract("")).await;
    let m = event(&mut bob).await;
    let r = event_child(&m);
    assert_eq!(
        r.elements().next().map(|e| (e.name.clone(), e.attr("id").map(str::to_owned))),
        Some(("retract".to_owned(), Some("i1".to_owned())))
    );

    // Publish-options that the node does not meet.
    let pre = alice.iq_xml(&format!(
        "<iq type='set' to='{SERVICE}'><pubsub xmlns='{PUBSUB}'><publish node='news'><item id='i3'><e xmlns='urn:example'/></item></publish>\
         <publish-options><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>\
         <field var='pubsub#access_model'><value>whitelist</value></field></x></publish-options></pubsub></iq>"
    )).await.unwrap();
    assert_eq!(error_of(&pre), err("conflict", Some("precondition-not-met")));

    // Purge: Bob hears of it, and nothing is left.
    ok(
        &mut alice,
        &format!("<iq type='set' to='{SERVICE}'><pubsub xmlns='{OWNER}'><purge node='news'/></pubsub></iq>"),
    )
    .await;
    assert_eq!(event_child(&event(&mut bob).await).name, "purge");
    let all = ok(
        &mut bob,
        &format!("<iq type='get' to='{SERVICE}'><pubsub xmlns='{PUBSUB}'><items node='news'/></pubsub></iq>"),
    )
    .await;
    assert!(ids(&all).is_empty());

    // The owner lists subscriptions; Bob unsubscribes, and a second time is an error.
    let subs = ok(
        &mut alice,
        &format!("<iq type='get' to='{SERVICE}'><pubsub xmlns='{OWNER}'><subscriptions node='news'/></pubsub></iq>"),
    )
    .await;
    assert!(subs.to_xml(ns::CLIENT).contains("bob@localhost/b"), "{subs}");
    let unsub = format!("<iq type='set' to='{SERVICE}'><pubsub xmlns='{PUBSUB}'><unsubscribe node='news' jid='bob@localhost/b'/></pubsub></iq>");
    ok(&mut bob, &unsub).await;
    let again = bob.iq_xml(&unsub).await.unwrap();
    assert_eq!(error_of(&again), err("unexpected-request", Some("not-subscribed")));

    // A whitelist: closed to Bob until he is a member.
    ok(&mut alice, &format!(
        "<iq type='set' to='{SERVICE}'><pubsub xmlns='{OWNER}'><configure node='news'><x xmlns='jabber:x:data' type='submit'>\
         <field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#node_config</value></field>\
         <field var='pubsub#access_model'><value>whitelist</value></field></x></configure></pubsub></iq>"
    )).await;
    let closed = bob
        .iq_xml(&format!("<iq type='get' to='{SERVICE}'><pubsub xmlns='{PUBSUB}'><items node='news'/></pubsub></iq>"))
        .await
        .unwrap();
    assert_eq!(error_of(&closed), err("not-allowed", Some("closed-node")));
    ok(&mut alice, &format!("<iq type='set' to='{SERVICE}'><pubsub xmlns='{OWNER}'><affiliations node='news'><affiliation jid='bob@localhost' affiliation='member'/></affiliations></pubsub></iq>")).await;
    ok(&mut bob, &format!("<iq type='get' to='{SERVICE}'><pubsub xmlns='{PUBSUB}'><items node='news'/></pubsub></iq>"))
        .await;
    let affs = ok(
        &mut alice,
        &format!("<iq type='get' to='{SERVICE}'><pubsub xmlns='{OWNER}'><affiliations node='news'/></pubsub></iq>"),
    )
    .await;
    assert!(affs.to_xml(ns::CLIENT).contains("member"), "{affs}");

    // Delete with a redirect: a subscriber hears of it; then the node is gone.
    ok(&mut bob, &format!("<iq type='set' to='{SERVICE}'><pubsub xmlns='{PUBSUB}'><subscribe node='news' jid='bob@localhost/b'/></pubsub></iq>")).await;
    ok(&mut alice, &format!("<iq type='set' to='{SERVICE}'><pubsub xmlns='{OWNER}'><delete node='news'><redirect uri='xmpp:{SERVICE}?;node=other'/></delete></pubsub></iq>")).await;
    let del = event_child(&event(&mut bob).await);
    assert_eq!(del.name, "delete");
    assert!(del.elements().any(|r| r.name == "redirect"), "{del}");
    let gone = bob
        .iq_xml(&format!("<iq type='get' to='{SERVICE}'><pubsub xmlns='{PUBSUB}'><items node='news'/></pubsub></iq>"))
        .await
        .unwrap();
    assert_eq!(error_of(&gone), err("item-not-found", None));
}

/// Alice and Bob each subscribed to the other's presence.
async fn befriend(alice: &mut Client, bob: &mut Client) {
    alice.go_online(None).await.unwrap();
    bob.go_online(None).await.unwrap();
    alice.send_str("<presence type='subscribe' to='bob@localhost'/>").await.unwrap();
    bob.recv_until(|e| e.name == "presence" && e.attr("type") == Some("subscribe")).await.unwrap();
    bob.send_str("<presence type='subscribed' to='alice@localhost'/>").await.unwrap();
    bob.send_str("<presence type='subscribe' to='alice@localhost'/>").await.unwrap();
    alice.recv_until(|e| e.name == "presence" && e.attr("type") == Some("subscribe")).await.unwrap();
    alice.send_str("<presence type='subscribed' to='bob@localhost'/>").await.unwrap();
    // Each then sees the other's presence.
    alice
        .recv_until(|e| e.name == "presence" && e.attr("from") == Some("bob@localhost/b") && e.attr("type").is_none())
        .await
        .unwrap();
    bob.recv_until(|e| e.name == "presence" && e.attr("from") == Some("alice@localhost/a") && e.attr("type").is_none())
        .await
        .unwrap();
}

/// Sends presence with entity capabilities and answers the server's
/// disco#info query for them with `notify` (the `+notify` features).
async fn announce(c: &mut Client, ver: &str, notify: &[&str]) {
    c.send_str(&format!("<presence><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='urn:example:client' ver='{ver}'/></presence>")).await.unwrap();
    let q = c
        .recv_until(|e| {
            e.name == "iq"
                && e.attr("type") == Some("get")
                && e.get_child("query", "http://jabber.org/protocol/disco#info").is_some()
        })
        .await
        .unwrap();
    let mut features = String::new();
    for n in notify {
        features.push_str(&format!("<feature var='{n}+notify'/>"));
    }
    c.send_str(&format!(
        "<iq type='result' id='{}' to='{}'><query xmlns='http://jabber.org/protocol/disco#info' node='urn:example:client#{ver}'>\
         <identity category='client' type='pc'/>{features}</query></iq>",
        q.attr("id").unwrap(),
        q.attr("from").unwrap()
    ))
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pep_notifies_interested_contacts_only() {
    let node = node();
    let mut alice = login(&node, "alice", PW, "a").await;
    let mut bob = login(&node, "bob", PW, "b").await;
    let mut carol = login(&node, "carol", PW, "c").await;
    befriend(&mut alice, &mut bob).await;
    announce(&mut bob, "v1", &["urn:example:tune"]).await;

    // The account's bare JID is a PEP service.
    let info =
        ok(&mut bob, "<iq type='get' to='alice@localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
            .await;
    assert!(info.to_xml(ns::CLIENT).contains("pep"), "{info}");

    // Bob asked for tunes, not moods: he gets the tune, and the mood never.
    ok(&mut alice, &publish("", "urn:example:mood", "current", "grumpy")).await;
    ok(&mut alice, &publish("", "urn:example:tune", "current", "a song")).await;
    let m = event(&mut bob).await;
    assert_eq!(m.attr("from"), Some("alice@localhost"));
    assert_eq!(event_child(&m).attr("node"), Some("urn:example:tune"), "{m}");
    assert!(m.to_xml(ns::CLIENT).contains("a song"));
    // A client that asks for nothing gets nothing: Alice's own session announced no caps.
    ok(&mut alice, &publish("", "urn:example:tune", "current", "another song")).await;
    let m = event(&mut bob).await;
    assert!(m.to_xml(ns::CLIENT).contains("another song"), "{m}");
    assert!(alice.backlog().all(|e| e.get_child("event", EVENT).is_none()), "Alice got an event she did not ask for");

    // A client of Bob's that comes online asking for tunes gets the last one
    // at once (XEP-0163 §4.3.2), and nothing of the moods.
    let mut bob2 = login(&node, "bob", PW, "b2").await;
    announce(&mut bob2, "v2", &["urn:example:tune"]).await;
    let m = event(&mut bob2).await;
    assert_eq!(m.attr("from"), Some("alice@localhost"));
    assert!(m.to_xml(ns::CLIENT).contains("another song"), "{m}");

    // Only the account publishes to its PEP nodes.
    let denied = bob.iq_xml(&publish("alice@localhost", "urn:example:tune", "x", "bob's")).await.unwrap();
    assert_eq!(error_of(&denied), err("forbidden", None));
    // The presence access model: Bob (a contact) reads, Carol does not.
    ok(&mut bob, "<iq type='get' to='alice@localhost'><pubsub xmlns='http://jabber.org/protocol/pubsub'><items node='urn:example:tune'/></pubsub></iq>").await;
    let denied = carol.iq_xml("<iq type='get' to='alice@localhost'><pubsub xmlns='http://jabber.org/protocol/pubsub'><items node='urn:example:tune'/></pubsub></iq>").await.unwrap();
    assert_eq!(error_of(&denied), err("not-authorized", Some("presence-subscription-required")));
    assert!(carol.backlog().all(|e| e.get_child("event", EVENT).is_none()), "Carol got an event");

    // Publish-options create an open node, and must match it afterwards.
    let open = |access: &str| {
        format!(
        "<iq type='set'><pubsub xmlns='{PUBSUB}'><publish node='urn:example:keys'><item id='current'><k xmlns='urn:example'/></item></publish>\
         <publish-options><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>\
         <field var='pubsub#access_model'><value>{access}</value></field><field var='pubsub#persist_items'><value>true</value></field></x></publish-options></pubsub></iq>"
    )
    };
    ok(&mut alice, &open("open")).await;
    ok(&mut carol, "<iq type='get' to='alice@localhost'><pubsub xmlns='http://jabber.org/protocol/pubsub'><items node='urn:example:keys' max_items='1'/></pubsub></iq>").await;
    let pre = alice.iq_xml(&open("presence")).await.unwrap();
    assert_eq!(error_of(&pre), err("conflict", Some("precondition-not-met")));
}

/// A PEP node of Alice's under each access model, read by an outsider
/// (Carol), a contact (Bob, in Alice's group "friends", with a presence
/// subscription) and a contact in another group (Dave, "work"); a
/// whitelist opened to Dave by affiliation.
async fn access_models(node: &TestNode) {
    let mut alice = login(node, "alice", PW, "a").await;
    let mut bob = login(node, "bob", PW, "b").await;
    let mut carol = login(node, "carol", PW, "c").await;
    let mut dave = login(node, "dave", PW, "d").await;
    befriend_as(&mut alice, "a", &mut bob, "bob", "b").await;
    befriend_as(&mut alice, "a", &mut dave, "dave", "d").await;
    for (contact, group) in [("bob", "friends"), ("dave", "work")] {
        ok(&mut alice, &format!(
            "<iq type='set'><query xmlns='jabber:iq:roster'><item jid='{contact}@localhost'><group>{group}</group></item></query></iq>"
        )).await;
    }
    let configure = |node: &str, fields: &str| {
        format!(
        "<iq type='set'><pubsub xmlns='{PUBSUB}'><create node='{node}'/><configure><x xmlns='jabber:x:data' type='submit'>\
         <field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#node_config</value></field>{fields}</x></configure></pubsub></iq>"
    )
    };
    let model = |m: &str| format!("<field var='pubsub#access_model'><value>{m}</value></field>");
    ok(&mut alice, &configure("open", &model("open"))).await;
    ok(&mut alice, &configure("presence", &model("presence"))).await;
    ok(
        &mut alice,
        &configure(
            "roster",
            &format!("{}<field var='pubsub#roster_groups_allowed'><value>friends</value></field>", model("roster")),
        ),
    )
    .await;
    ok(&mut alice, &configure("whitelist", &model("whitelist"))).await;
    for n in ["open", "presence", "roster", "whitelist"] {
        ok(&mut alice, &publish("", n, "current", n)).await;
    }
    let read = |n: &str| {
        format!("<iq type='get' to='alice@localhost'><pubsub xmlns='{PUBSUB}'><items node='{n}'/></pubsub></iq>")
    };
    let outcome = |res: &Element| if res.attr("type") == Some("result") { (None, None) } else { error_of(res) };
    let cases: [(usize, &str, Outcome); 12] = [
        (0, "open", (None, None)),
        (0, "presence", err("not-authorized", Some("presence-subscription-required"))),
        (0, "roster", err("not-authorized", Some("not-in-roster-group"))),
        (0, "whitelist", err("not-allowed", Some("closed-node"))),
        (1, "open", (None, None)),
        (1, "presence", (None, None)),
        (1, "roster", (None, None)),
        (1, "whitelist", err("not-allowed", Some("closed-node"))),
        (2, "open", (None, None)),
        (2, "presence", (None, None)),
        (2, "roster", err("not-authorized", Some("not-in-roster-group"))),
        (2, "whitelist", err("not-allowed", Some("closed-node"))),
    ];
    for (who, n, expected) in cases {
        let client = match who {
            0 => &mut carol,
            1 => &mut bob,
            _ => &mut dave,
        };
        let res = client.iq_xml(&read(n)).await.unwrap();
        assert_eq!(outcome(&res), expected, "{} reading {n}: {res}", client.jid());
    }
    // Whitelisted: Dave becomes a member.
    ok(&mut alice, &format!("<iq type='set'><pubsub xmlns='{OWNER}'><affiliations node='whitelist'><affiliation jid='dave@localhost' affiliation='member'/></affiliations></pubsub></iq>")).await;
    let res = dave.iq_xml(&read("whitelist")).await.unwrap();
    assert_eq!(res.attr("type"), Some("result"), "{res}");
    // An outcast reads nothing, not even the open node.
    ok(&mut alice, &format!("<iq type='set'><pubsub xmlns='{OWNER}'><affiliations node='open'><affiliation jid='carol@localhost' affiliation='outcast'/></affiliations></pubsub></iq>")).await;
    let res = carol.iq_xml(&read("open")).await.unwrap();
    assert_eq!(error_of(&res), err("forbidden", None));
}

/// `a` (resource `ar`) and `user` (resource `r`) subscribed to each other's presence.
async fn befriend_as(a: &mut Client, ar: &str, b: &mut Client, user: &str, r: &str) {
    let _ = ar;
    a.go_online(None).await.unwrap();
    b.go_online(None).await.unwrap();
    a.send_str(&format!("<presence type='subscribe' to='{user}@localhost'/>")).await.unwrap();
    b.recv_until(|e| e.name == "presence" && e.attr("type") == Some("subscribe")).await.unwrap();
    b.send_str("<presence type='subscribed' to='alice@localhost'/>").await.unwrap();
    b.send_str("<presence type='subscribe' to='alice@localhost'/>").await.unwrap();
    a.recv_until(|e| {
        e.name == "presence"
            && e.attr("type") == Some("subscribe")
            && e.attr("from") == Some(&format!("{user}@localhost"))
    })
    .await
    .unwrap();
    a.send_str(&format!("<presence type='subscribed' to='{user}@localhost'/>")).await.unwrap();
    let full = format!("{user}@localhost/{r}");
    a.recv_until(|e| e.name == "presence" && e.attr("from") == Some(full.as_str()) && e.attr("type").is_none())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_access_model_lets_in_whom_it_should() {
    access_models(&node()).await;
}

/// An `authorize` node (XEP-0060 §8.6): a subscription waits for the
/// owner, who gets a form, approves one subscriber and denies another; each
/// subscriber learns the outcome, and only the approved one gets items. An
/// answer from someone else is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authorize_node_asks_its_owner() {
    let node = node();
    let mut alice = login(&node, "alice", PW, "a").await;
    let mut bob = login(&node, "bob", PW, "b").await;
    let mut carol = login(&node, "carol", PW, "c").await;
    // The owner's requests arrive as messages to her account: she is online.
    alice.go_online(None).await.unwrap();
    ok(&mut alice, &format!(
        "<iq type='set' to='{SERVICE}'><pubsub xmlns='{PUBSUB}'><create node='club'/><configure><x xmlns='jabber:x:data' type='submit'>\
         <field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#node_config</value></field>\
         <field var='pubsub#access_model'><value>authorize</value></field></x></configure></pubsub></iq>"
    )).await;
    const AUTH: &str = "http://jabber.org/protocol/pubsub#subscribe_authorization";
    let answer = |subid: &str, who: &str, allow: bool| {
        format!(
        "<message to='{SERVICE}'><x xmlns='jabber:x:data' type='submit'>\
         <field var='FORM_TYPE' type='hidden'><value>{AUTH}</value></field>\
         <field var='pubsub#subid'><value>{subid}</value></field><field var='pubsub#node'><value>club</value></field>\
         <field var='pubsub#subscriber_jid'><value>{who}</value></field><field var='pubsub#allow'><value>{allow}</value></field></x></message>"
    )
    };
    let mut request_to_alice = async |client: &mut Client, who: &str| -> String {
        let res = ok(client, &format!("<iq type='set' to='{SERVICE}'><pubsub xmlns='{PUBSUB}'><subscribe node='club' jid='{who}'/></pubsub></iq>")).await;
        let s = res.get_child("pubsub", PUBSUB).and_then(|p| p.get_child("subscription", PUBSUB)).cloned().unwrap();
        assert_eq!(s.attr("subscription"), Some("pending"), "{res}");
        let form = alice
            .recv_until(|e| {
                e.name == "message" && e.attr("from") == Some(SERVICE) && e.get_child("x", ns::DATA_FORMS).is_some()
            })
            .await
            .unwrap();
        let text = form.to_xml(ns::CLIENT);
        assert!(text.contains(AUTH) && text.contains(who), "{text}");
        s.attr("subid").unwrap().to_owned()
    };
    let bob_subid = request_to_alice(&mut bob, "bob@localhost/b").await;
    let carol_subid = request_to_alice(&mut carol, "carol@localhost/c").await;

    // Someone other than the owner answers: refused, nothing changes.
    bob.send_str(&answer(&bob_subid, "bob@localhost/b", true)).await.unwrap();
    let refused = bob.recv_until(|e| e.name == "message" && e.attr("type") == Some("error")).await.unwrap();
    assert_eq!(stanza_error(&refused).as_deref(), Some("forbidden"), "{refused}");

    // Alice approves Bob and denies Carol; each hears of it.
    alice.send_str(&answer(&bob_subid, "bob@localhost/b", true)).await.unwrap();
    alice.send_str(&answer(&carol_subid, "carol@localhost/c", false)).await.unwrap();
    for (client, state) in [(&mut bob, "subscribed"), (&mut carol, "none")] {
        let m = event(client).await;
        let s = event_child(&m);
        assert_eq!((s.name.as_str(), s.attr("subscription")), ("subscription", Some(state)), "{m}");
    }
    // Bob gets the items, and the owner's list has him subscribed and no Carol.
    ok(&mut alice, &publish(SERVICE, "club", "i1", "members only")).await;
    let m = event(&mut bob).await;
    assert!(m.to_xml(ns::CLIENT).contains("members only"), "{m}");
    let subs = ok(
        &mut alice,
        &format!("<iq type='get' to='{SERVICE}'><pubsub xmlns='{OWNER}'><subscriptions node='club'/></pubsub></iq>"),
    )
    .await;
    let text = subs.to_xml(ns::CLIENT);
    assert!(text.contains("bob@localhost/b") && text.contains("subscribed") && !text.contains("carol"), "{text}");
}

/// An account's PEP nodes are bounded (`max_pep_nodes`): publishing to one
/// more node is refused `not-allowed` + `max-nodes-exceeded`, and the
/// account's existing nodes still take items.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_has_at_most_max_pep_nodes() {
    let node = TestNode::start("[modules.mod_pubsub]\nenabled = true\nmax_pep_nodes = 3\n");
    node.add_user("alice", PW);
    let mut alice = login(&node, "alice", PW, "a").await;
    for i in 0..3 {
        ok(&mut alice, &publish("", &format!("urn:example:n{i}"), "current", "x")).await;
    }
    let refused = alice.iq_xml(&publish("", "urn:example:n3", "current", "x")).await.unwrap();
    assert_eq!(error_of(&refused), err("not-allowed", Some("max-nodes-exceeded")));
    ok(&mut alice, &publish("", "urn:example:n0", "current", "still fine")).await;
}

/// XEP-0060 §5.6 and §5.7: an entity's own subscriptions and affiliations
/// on the service, all or of one node; a node that does not exist is
/// `item-not-found`. Collection nodes are not served, and asking for one is
/// refused as XEP-0060 says for an unsupported feature. Nodes one account
/// owns on the service are bounded (`max_nodes_per_account`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_lists_collections_and_the_bound_on_owned_nodes() {
    let node = TestNode::start("[modules.mod_pubsub]\nenabled = true\nmax_nodes_per_account = 2\n");
    for u in ["alice", "bob"] {
        node.add_user(u, PW);
    }
    let mut alice = login(&node, "alice", PW, "a").await;
    let mut bob = login(&node, "bob", PW, "b").await;
    let create = |name: &str| {
        format!("<iq type='set' to='{SERVICE}'><pubsub xmlns='{PUBSUB}'><create node='{name}'/></pubsub></iq>")
    };
    ok(&mut alice, &create("one")).await;
    ok(&mut alice, &create("two")).await;
    let refused = alice.iq_xml(&create("three")).await.unwrap();
    assert_eq!(error_of(&refused), err("not-allowed", Some("max-nodes-exceeded")));
    // Another account has its own allowance.
    ok(&mut bob, &create("bobs")).await;

    let subscribe = |name: &str, jid: &str| {
        format!("<iq type='set' to='{SERVICE}'><pubsub xmlns='{PUBSUB}'><subscribe node='{name}' jid='{jid}'/></pubsub></iq>")
    };
    ok(&mut bob, &subscribe("one", "bob@localhost")).await;
    ok(&mut bob, &subscribe("two", "bob@localhost/b")).await;
    let list = |kind: &str, node: Option<&str>| {
        let node = node.map(|n| format!(" node='{n}'")).unwrap_or_default();
        format!("<iq type='get' to='{SERVICE}'><pubsub xmlns='{PUBSUB}'><{kind}{node}/></pubsub></iq>")
    };
    let entries = |res: &Element, kind: &str, child: &str| -> Vec<(String, String)> {
        let l = res.get_child("pubsub", PUBSUB).and_then(|p| p.get_child(kind, PUBSUB)).cloned().unwrap();
        let mut v: Vec<(String, String)> = l
            .elements()
            .filter(|e| e.name == child)
            .map(|e| (e.attr("node").unwrap().to_owned(), e.attr(child).unwrap().to_owned()))
            .collect();
        v.sort();
        v
    };
    let subs = ok(&mut bob, &list("subscriptions", None)).await;
    assert_eq!(
        entries(&subs, "subscriptions", "subscription"),
        vec![("one".to_owned(), "subscribed".to_owned()), ("two".to_owned(), "subscribed".to_owned())],
        "{subs}"
    );
    let text = subs.to_xml(ns::CLIENT);
    assert!(text.contains("jid='bob@localhost'") && text.contains("jid='bob@localhost/b'") && text.contains("subid="));
    let one = ok(&mut bob, &list("subscriptions", Some("two"))).await;
    assert_eq!(entries(&one, "subscriptions", "subscription"), vec![("two".to_owned(), "subscribed".to_owned())]);
    let affs = ok(&mut alice, &list("affiliations", None)).await;
    assert_eq!(
        entries(&affs, "affiliations", "affiliation"),
        vec![("one".to_owned(), "owner".to_owned()), ("two".to_owned(), "owner".to_owned())],
        "{affs}"
    );
    let none = ok(&mut alice, &list("subscriptions", None)).await;
    assert!(entries(&none, "subscriptions", "subscription").is_empty(), "{none}");
    let missing = alice.iq_xml(&list("affiliations", Some("nowhere"))).await.unwrap();
    assert_eq!(error_of(&missing), err("item-not-found", None));
    // An account's PEP nodes are its own.
    ok(&mut alice, &publish("", "urn:example:tune", "current", "a song")).await;
    let pep = ok(&mut alice, &format!("<iq type='get'><pubsub xmlns='{PUBSUB}'><affiliations/></pubsub></iq>")).await;
    assert_eq!(entries(&pep, "affiliations", "affiliation"), vec![("urn:example:tune".to_owned(), "owner".to_owned())]);

    // A collection is not served; a leaf is what every node is.
    let typed = |name: &str, kind: &str| {
        format!(
            "<iq type='set' to='{SERVICE}'><pubsub xmlns='{PUBSUB}'><create node='{name}'/><configure><x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#node_config</value></field>\
             <field var='pubsub#node_type'><value>{kind}</value></field></x></configure></pubsub></iq>"
        )
    };
    let refused = bob.iq_xml(&typed("shelf", "collection")).await.unwrap();
    assert_eq!(error_of(&refused), err("feature-not-implemented", Some("unsupported")));
    assert!(refused.to_xml(ns::CLIENT).contains("feature='collections'"), "{refused}");
    ok(&mut bob, &typed("leaf", "leaf")).await;
}

/// The `authorize` access model on an account's own PEP node: the account
/// gets the approval form from its own bare JID, and its submitted answer,
/// sent there, subscribes the requester. The answer goes to the service,
/// not to the account's other clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_approves_subscriptions_to_its_pep_node_by_form() {
    let node = node();
    let mut alice = login(&node, "alice", PW, "a").await;
    let mut alice2 = login(&node, "alice", PW, "a2").await;
    let mut carol = login(&node, "carol", PW, "c").await;
    alice.go_online(Some(1)).await.unwrap();
    alice2.go_online(Some(0)).await.unwrap();
    ok(&mut alice, &format!(
        "<iq type='set'><pubsub xmlns='{PUBSUB}'><publish node='urn:example:diary'><item id='current'><entry xmlns='urn:example'>day one</entry></item></publish>\
         <publish-options><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>\
         <field var='pubsub#access_model'><value>authorize</value></field></x></publish-options></pubsub></iq>"
    )).await;
    let res = ok(&mut carol, &format!("<iq type='set' to='alice@localhost'><pubsub xmlns='{PUBSUB}'><subscribe node='urn:example:diary' jid='carol@localhost/c'/></pubsub></iq>")).await;
    let s = res.get_child("pubsub", PUBSUB).and_then(|p| p.get_child("subscription", PUBSUB)).cloned().unwrap();
    assert_eq!(s.attr("subscription"), Some("pending"), "{res}");
    const AUTH: &str = "http://jabber.org/protocol/pubsub#subscribe_authorization";
    let form = alice.recv_until(|e| e.name == "message" && e.get_child("x", ns::DATA_FORMS).is_some()).await.unwrap();
    assert_eq!(form.attr("from"), Some("alice@localhost"), "{form}");
    assert!(form.to_xml(ns::CLIENT).contains(AUTH), "{form}");
    alice
        .send_str(&format!(
            "<message to='alice@localhost'><x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE' type='hidden'><value>{AUTH}</value></field>\
             <field var='pubsub#subid'><value>{}</value></field><field var='pubsub#node'><value>urn:example:diary</value></field>\
             <field var='pubsub#subscriber_jid'><value>carol@localhost/c</value></field><field var='pubsub#allow'><value>true</value></field></x></message>",
            s.attr("subid").unwrap()
        ))
        .await
        .unwrap();
    let m = event(&mut carol).await;
    let granted = event_child(&m);
    assert_eq!((granted.name.as_str(), granted.attr("subscription")), ("subscription", Some("subscribed")), "{m}");
    ok(&mut alice, &publish("", "urn:example:diary", "current", "day two")).await;
    let m = event(&mut carol).await;
    assert!(m.to_xml(ns::CLIENT).contains("day two"), "{m}");
    // The answer reached neither of Alice's clients.
    ok(&mut alice2, "<iq type='get'><ping xmlns='urn:xmpp:ping'/></iq>").await;
    assert!(
        alice2.backlog().chain(alice.backlog()).all(|e| !(e.name == "message"
            && e.attr("from") == Some("alice@localhost/a")
            && e.get_child("x", ns::DATA_FORMS).is_some())),
        "the answer was delivered as a message"
    );
}
