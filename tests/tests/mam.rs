//! XEP-0313 message archives over the real node: archiving of sent, delivered
//! and offline messages with XEP-0359 stanza ids, paging with XEP-0059 (forward
//! and backward), the `with`, `start` and `end` filters, errors, and access
//! control. The 1,000-message paging check also runs on PostgreSQL and MariaDB.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use meerkat_tests::client::{body, parse_element, stanza_error};
use meerkat_tests::{login, online, Client, NodeOptions, TestNode};
use meerkat_xmpp::element::Element;
use meerkat_xmpp::ns;

const PW: &str = "pw";
const MAM: &str = "urn:xmpp:mam:2";
const RSM: &str = "http://jabber.org/protocol/rsm";
const SID: &str = "urn:xmpp:sid:0";
const FORWARD: &str = "urn:xmpp:forward:0";

/// One archived message as a query returned it.
#[derive(Debug)]
struct Item {
    id: String,
    stamp: String,
    message: Element,
}

/// What one archive query brought: the results, then the IQ answer.
struct Answer {
    items: Vec<Item>,
    iq: Element,
}

impl Answer {
    fn fin(&self) -> &Element {
        self.iq.get_child("fin", MAM).unwrap_or_else(|| panic!("no <fin/> in {}", self.iq))
    }
    fn complete(&self) -> bool {
        self.fin().attr("complete") == Some("true")
    }
    fn set(&self) -> &Element {
        self.fin().get_child("set", RSM).unwrap()
    }
    fn count(&self) -> usize {
        self.set().get_child("count", RSM).unwrap().text().parse().unwrap()
    }
    /// The `index` of `<first/>`, if the page has a first item and it is given.
    fn first_index(&self) -> Option<usize> {
        self.set().get_child("first", RSM).and_then(|f| f.attr("index")).map(|i| i.parse().unwrap())
    }
    fn first(&self) -> Option<String> {
        self.set().get_child("first", RSM).map(Element::text)
    }
    fn last(&self) -> Option<String> {
        self.set().get_child("last", RSM).map(Element::text)
    }
    fn ids(&self) -> Vec<String> {
        self.items.iter().map(|i| i.id.clone()).collect()
    }
    fn bodies(&self) -> Vec<String> {
        self.items.iter().map(|i| body(&i.message).unwrap()).collect()
    }
    fn error(&self) -> Option<String> {
        stanza_error(&self.iq)
    }
}

/// A query of the archive at `to` (the own account when `None`) with form
/// `fields` and RSM `rsm` (the inside of `<set/>`), collecting the results.
async fn query(c: &mut Client, to: Option<&str>, fields: &[(&str, &str)], rsm: &str) -> Answer {
    let (id, queryid) = (c.new_id(), c.new_id());
    let to = to.map(|t| format!(" to='{t}'")).unwrap_or_default();
    let mut form = String::new();
    if !fields.is_empty() {
        form.push_str(
            "<x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE' type='hidden'><value>urn:xmpp:mam:2</value></field>",
        );
        for (var, value) in fields {
            form.push_str(&format!("<field var='{var}'><value>{value}</value></field>"));
        }
        form.push_str("</x>");
    }
    let set = if rsm.is_empty() { String::new() } else { format!("<set xmlns='{RSM}'>{rsm}</set>") };
    c.send_str(&format!(
        "<iq type='set' id='{id}'{to}><query xmlns='{MAM}' queryid='{queryid}'>{form}{set}</query></iq>"
    ))
    .await
    .unwrap();
    let me = c.jid().to_owned();
    let owner = c.bare_jid().to_owned();
    let mut items = Vec::new();
    loop {
        let el = c.recv().await.unwrap_or_else(|e| panic!("{me} waiting for archive results: {e}"));
        if el.name == "iq" && el.attr("id") == Some(id.as_str()) {
            return Answer { items, iq: el };
        }
        let Some(result) = el.get_child("result", MAM) else { continue };
        assert_eq!(result.attr("queryid"), Some(queryid.as_str()), "{el}");
        assert_eq!(el.attr("to"), Some(me.as_str()), "{el}");
        assert_eq!(el.attr("from"), Some(owner.as_str()), "results come from the archive: {el}");
        let forwarded = result.get_child("forwarded", FORWARD).unwrap();
        items.push(Item {
            id: result.attr("id").unwrap().to_owned(),
            stamp: forwarded.get_child("delay", ns::DELAY).unwrap().attr("stamp").unwrap().to_owned(),
            message: forwarded.get_child("message", ns::CLIENT).unwrap().clone(),
        });
    }
}

/// Waits until the own archive holds `n` messages (archiving is asynchronous).
async fn wait_for_archive(c: &mut Client, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let a = query(c, None, &[], "<max>0</max>").await;
        assert!(a.items.is_empty());
        if a.count() == n {
            return;
        }
        assert!(a.count() < n, "{} has {} archived messages, expected {n}", c.jid(), a.count());
        assert!(Instant::now() < deadline, "{} has {} archived messages after 60 s, expected {n}", c.jid(), a.count());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The stanza-id our server put on a delivered message for `owner`'s archive.
fn stanza_id(m: &Element, owner: &str) -> String {
    let ids: Vec<&Element> = m.elements().filter(|e| e.is("stanza-id", SID) && e.attr("by") == Some(owner)).collect();
    assert_eq!(ids.len(), 1, "one stanza-id by {owner}: {m}");
    ids[0].attr("id").unwrap().to_owned()
}

/// Alice sends bob 1,000 messages; bob sees each with its stanza-id, then pages
/// through his archive 100 at a time, forward and backward, and finds them all,
/// in order, under the same ids. Alice's archive has her 1,000 outgoing copies.
async fn thousand_messages(node: &TestNode) {
    const N: usize = 1000;
    let mut alice = login(node, "alice", PW, "r").await;
    let mut bob = online(node, "bob", PW, "phone", None).await;
    for i in 0..N {
        alice.send_message("bob@localhost", &format!("msg {i}")).await.unwrap();
    }
    let mut delivered = Vec::with_capacity(N);
    for i in 0..N {
        let m = bob.recv_message().await.unwrap();
        assert_eq!(body(&m), Some(format!("msg {i}")));
        delivered.push(stanza_id(&m, "bob@localhost"));
    }
    wait_for_archive(&mut bob, N).await;

    let mut after: Option<String> = None;
    let mut seen = Vec::new();
    for k in 0..10 {
        let rsm = match &after {
            Some(a) => format!("<max>100</max><after>{a}</after>"),
            None => "<max>100</max>".to_owned(),
        };
        let page = query(&mut bob, None, &[], &rsm).await;
        assert_eq!(page.iq.attr("type"), Some("result"), "{}", page.iq);
        assert_eq!(page.items.len(), 100, "page {k}");
        assert_eq!(page.ids(), delivered[k * 100..(k + 1) * 100], "page {k} has the delivered ids, in order");
        let bodies: Vec<String> = (k * 100..(k + 1) * 100).map(|i| format!("msg {i}")).collect();
        assert_eq!(page.bodies(), bodies, "page {k}");
        assert_eq!(page.count(), N);
        assert_eq!(page.first_index(), Some(k * 100));
        assert_eq!(page.first().as_deref(), Some(delivered[k * 100].as_str()));
        assert_eq!(page.last().as_deref(), Some(delivered[k * 100 + 99].as_str()));
        assert_eq!(page.complete(), k == 9, "page {k}");
        for item in &page.items {
            assert_eq!(item.message.attr("from"), Some("alice@localhost/r"));
            assert_eq!(item.message.attr("to"), Some("bob@localhost"));
            assert_eq!(stanza_id(&item.message, "bob@localhost"), item.id, "the archived copy is the delivered one");
        }
        after = page.last();
        seen.extend(page.items);
    }
    assert!(seen.windows(2).all(|w| w[0].stamp <= w[1].stamp), "chronological stamps");
    let end = query(&mut bob, None, &[], &format!("<max>100</max><after>{}</after>", after.unwrap())).await;
    assert!(end.items.is_empty() && end.complete());
    assert_eq!(end.count(), N);

    // Backward from the end: the same pages, last first.
    let mut before = String::new();
    for k in (0..10).rev() {
        let page = query(&mut bob, None, &[], &format!("<max>100</max><before>{before}</before>")).await;
        assert_eq!(page.ids(), delivered[k * 100..(k + 1) * 100], "backward page {k}");
        // No index going backwards: slixmpp's iterator would take the first page
        // for the end of the set (index + items == count).
        assert_eq!(page.first_index(), None, "backward page {k}");
        assert_eq!(page.count(), N);
        assert_eq!(page.complete(), k == 0, "backward page {k}");
        before = page.first().unwrap();
    }

    // Alice's archive: the outgoing copies, in the order she sent them.
    wait_for_archive(&mut alice, N).await;
    let mut after = String::new();
    let mut bodies = Vec::new();
    loop {
        let rsm = if after.is_empty() { "<max>250</max>".to_owned() } else { format!("<after>{after}</after>") };
        let page = query(&mut alice, None, &[], &rsm).await;
        assert!(page.items.iter().all(|i| i.message.attr("to") == Some("bob@localhost")));
        bodies.extend(page.bodies());
        if page.complete() {
            break;
        }
        after = page.last().unwrap();
    }
    assert_eq!(bodies, (0..N).map(|i| format!("msg {i}")).collect::<Vec<_>>());
}

fn sqlite_node(users: &[&str]) -> TestNode {
    let node = TestNode::start("");
    for u in users {
        node.add_user(u, PW);
    }
    node
}

fn node_on(db_url: &str) -> TestNode {
    let node = TestNode::start_with(NodeOptions {
        extra_toml: format!("[outgoing_pools.rdbms.default]\nworkers = 4\nconnection.url = \"{db_url}\"\n"),
        ..Default::default()
    });
    for u in ["alice", "bob"] {
        node.add_user(u, PW);
    }
    node
}

#[tokio::test]
async fn thousand_messages_page_in_order_on_sqlite() {
    let node = sqlite_node(&["alice", "bob"]);
    thousand_messages(&node).await;
}

#[tokio::test]
async fn thousand_messages_page_in_order_on_postgres() {
    let db = meerkat_tests::cluster::SharedDb::postgres();
    let node = node_on(&db.url);
    thousand_messages(&node).await;
}

#[tokio::test]
async fn thousand_messages_page_in_order_on_mariadb() {
    let db = MariaDb::create();
    let node = node_on(&db.url);
    thousand_messages(&node).await;
}

#[tokio::test]
async fn filters_errors_and_access() {
    let node = sqlite_node(&["alice", "bob", "carol"]);
    let mut alice = login(&node, "alice", PW, "r").await;
    let mut carol = login(&node, "carol", PW, "c").await;
    let mut bob = online(&node, "bob", PW, "phone", None).await;
    for i in 0..20 {
        alice.send_message("bob@localhost", &format!("from alice {i}")).await.unwrap();
        if i % 4 == 0 {
            carol.send_message("bob@localhost/phone", &format!("from carol {i}")).await.unwrap();
        }
    }
    bob.send_message("carol@localhost", "reply to carol").await.unwrap();
    wait_for_archive(&mut bob, 26).await;
    let all = query(&mut bob, None, &[], "").await;
    assert_eq!(all.items.len(), 26);
    assert!(all.complete());

    // `with` a bare JID: both directions, every resource.
    let with_carol = query(&mut bob, None, &[("with", "carol@localhost")], "").await;
    let mut expected: Vec<String> = (0..20).step_by(4).map(|i| format!("from carol {i}")).collect();
    expected.push("reply to carol".into());
    let mut got = with_carol.bodies();
    got.sort();
    expected.sort();
    assert_eq!(got, expected);
    assert_eq!(with_carol.count(), 6);
    // `with` a full JID: that resource only.
    let a = query(&mut bob, None, &[("with", "alice@localhost/r")], "<max>5</max>").await;
    assert_eq!(a.bodies(), (0..5).map(|i| format!("from alice {i}")).collect::<Vec<_>>());
    assert_eq!(a.count(), 20);
    assert!(!a.complete());
    let none = query(&mut bob, None, &[("with", "alice@localhost/elsewhere")], "").await;
    assert_eq!((none.items.len(), none.count(), none.complete()), (0, 0, true));

    // `start` and `end` are inclusive; a result's stamp selects that very message.
    let stamps: Vec<&str> = all.items.iter().map(|i| i.stamp.as_str()).collect();
    let between = |start: &str, end: &str| -> Vec<String> {
        all.items
            .iter()
            .filter(|i| i.stamp.as_str() >= start && i.stamp.as_str() <= end)
            .map(|i| i.id.clone())
            .collect()
    };
    let (start, end) = (stamps[10], stamps[5]);
    let from_start = query(&mut bob, None, &[("start", start)], "").await;
    assert_eq!(from_start.ids(), between(start, "9999"));
    assert!(from_start.ids().contains(&all.items[10].id));
    let until_end = query(&mut bob, None, &[("end", end)], "").await;
    assert_eq!(until_end.ids(), between("0000", end));
    assert!(until_end.ids().contains(&all.items[5].id));
    if start > end {
        let none = query(&mut bob, None, &[("start", start), ("end", end)], "").await;
        assert_eq!((none.count(), none.complete()), (0, true), "start after end");
    }
    let (start, end) = (stamps[3], stamps[20]);
    let window = query(&mut bob, None, &[("with", "alice@localhost"), ("start", start), ("end", end)], "").await;
    let expect: Vec<String> = all
        .items
        .iter()
        .filter(|i| i.stamp.as_str() >= start && i.stamp.as_str() <= end)
        .filter(|i| body(&i.message).unwrap().starts_with("from alice"))
        .map(|i| i.id.clone())
        .collect();
    assert_eq!(window.ids(), expect);
    let later = query(&mut bob, None, &[("start", "2999-01-01T00:00:00Z")], "").await;
    assert_eq!((later.count(), later.complete()), (0, true));

    // Errors.
    for (fields, rsm, condition) in [
        (vec![("start", "yesterday")], "", "bad-request"),
        (vec![("end", "2020-13-01T00:00:00Z")], "", "bad-request"),
        (vec![("with", "@@")], "", "bad-request"),
        (vec![("full-text-search", "x")], "", "feature-not-implemented"),
        (vec![], "<after>no-such-id</after>", "item-not-found"),
        (vec![], "<before>no-such-id</before>", "item-not-found"),
        (vec![], "<max>lots</max>", "bad-request"),
    ] {
        let a = query(&mut bob, None, &fields, rsm).await;
        assert_eq!(a.iq.attr("type"), Some("error"), "{fields:?} {rsm}: {}", a.iq);
        assert_eq!(a.error().as_deref(), Some(condition), "{fields:?} {rsm}: {}", a.iq);
        assert!(a.items.is_empty());
    }
    // An id of alice's archive is not one of bob's.
    let alices = query(&mut alice, None, &[], "<max>1</max>").await;
    let a = query(&mut bob, None, &[], &format!("<after>{}</after>", alices.ids()[0])).await;
    assert_eq!(a.error().as_deref(), Some("item-not-found"));

    // Only the owner reads an archive.
    let a = query(&mut alice, Some("bob@localhost"), &[], "").await;
    assert_eq!(a.error().as_deref(), Some("forbidden"), "{}", a.iq);
    assert!(a.items.is_empty());
    let a = query(&mut alice, Some("alice@localhost"), &[], "<max>1</max>").await;
    assert_eq!(a.iq.attr("type"), Some("result"), "her own bare JID is her archive");

    // The form and the disco features.
    let form = alice.iq_xml("<iq type='get'><query xmlns='urn:xmpp:mam:2'/></iq>").await.unwrap();
    let x = form.get_child("query", MAM).unwrap().get_child("x", ns::DATA_FORMS).unwrap();
    let vars: Vec<&str> = x.elements().filter_map(|f| f.attr("var")).collect();
    assert_eq!(vars, ["FORM_TYPE", "with", "start", "end"]);
    let info = alice
        .iq_xml("<iq type='get' to='alice@localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        .await
        .unwrap();
    let features: Vec<&str> = info
        .get_child("query", ns::DISCO_INFO)
        .unwrap()
        .elements()
        .filter(|e| e.name == "feature")
        .filter_map(|e| e.attr("var"))
        .collect();
    assert!(features.contains(&MAM) && features.contains(&SID), "{features:?}");
}

/// A message to an offline user is archived once, and the copy stored offline
/// carries the same stanza-id; so do the copies of a message to two resources.
#[tokio::test]
async fn offline_and_forked_messages_are_archived_once() {
    let node = sqlite_node(&["alice", "dave"]);
    let mut alice = login(&node, "alice", PW, "r").await;
    for i in 0..3 {
        alice.send_message("dave@localhost", &format!("offline {i}")).await.unwrap();
    }
    let mut dave = login(&node, "dave", PW, "one").await;
    dave.go_online(Some(1)).await.unwrap();
    let mut offline_ids = Vec::new();
    for i in 0..3 {
        let m = dave.recv_message().await.unwrap();
        assert_eq!(body(&m), Some(format!("offline {i}")));
        assert!(m.has_child("delay", ns::DELAY), "{m}");
        offline_ids.push(stanza_id(&m, "dave@localhost"));
    }
    wait_for_archive(&mut dave, 3).await;
    let a = query(&mut dave, None, &[], "").await;
    assert_eq!(a.ids(), offline_ids, "{}", a.iq);

    // Two resources of equal priority both get the message, with one id.
    let mut two = online(&node, "dave", PW, "two", Some(1)).await;
    dave.recv_until(|el| el.name == "presence" && el.attr("from") == Some("dave@localhost/two")).await.unwrap();
    alice.send_message("dave@localhost", "to both").await.unwrap();
    let id1 = stanza_id(&dave.recv_message().await.unwrap(), "dave@localhost");
    let id2 = stanza_id(&two.recv_message().await.unwrap(), "dave@localhost");
    assert_eq!(id1, id2);
    // A marker after it: alice's archive jobs are written in the order she sent,
    // so a second copy of "to both" would be in before the marker is.
    alice.send_message("dave@localhost", "marker").await.unwrap();
    let marker = stanza_id(&dave.recv_message().await.unwrap(), "dave@localhost");
    wait_for_archive(&mut dave, 5).await;
    let all = query(&mut dave, None, &[], "").await;
    assert_eq!(all.count(), 5, "archived once");
    assert_eq!(all.ids()[3..], [id1, marker]);
}

/// XEP-0359 §5: a stanza-id claiming to come from the recipient's archive is
/// removed before delivery; others stay. Messages without a body, and those with a
/// no-store hint, are not archived.
#[tokio::test]
async fn forged_stanza_ids_are_stripped_and_hints_respected() {
    let node = sqlite_node(&["alice", "bob"]);
    let mut alice = login(&node, "alice", PW, "r").await;
    let mut bob = online(&node, "bob", PW, "phone", None).await;
    alice
        .send(&parse_element(
            "<message to='bob@localhost' type='chat'><body>forged</body>\
             <stanza-id xmlns='urn:xmpp:sid:0' by='bob@localhost' id='forged-id'/>\
             <stanza-id xmlns='urn:xmpp:sid:0' by='someone@else.example' id='other'/></message>",
        ))
        .await
        .unwrap();
    let m = bob.recv_message().await.unwrap();
    let id = stanza_id(&m, "bob@localhost");
    assert_ne!(id, "forged-id");
    assert!(m.elements().any(|e| e.is("stanza-id", SID) && e.attr("id") == Some("other")), "{m}");

    alice
        .send(&parse_element(
            "<message to='bob@localhost' type='chat'><body>secret</body><no-store xmlns='urn:xmpp:hints'/></message>",
        ))
        .await
        .unwrap();
    alice
        .send_str(
            "<message to='bob@localhost' type='chat'><active xmlns='http://jabber.org/protocol/chatstates'/></message>",
        )
        .await
        .unwrap();
    alice.send_message("bob@localhost", "last").await.unwrap();
    let secret = bob.recv_message().await.unwrap();
    assert!(!secret.has_child("stanza-id", SID), "not archived, so no archive id: {secret}");
    let last = bob.recv_message().await.unwrap();
    wait_for_archive(&mut bob, 2).await;
    let a = query(&mut bob, None, &[], "").await;
    assert_eq!(a.bodies(), ["forged", "last"]);
    assert_eq!(a.ids(), [id, stanza_id(&last, "bob@localhost")]);
}

/// In a cluster, a message is archived once per archive: bob has a resource on
/// each of two nodes, both get every message under one id, and each archive
/// holds each message once, whichever node bob queries from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_archives_each_message_once() {
    const N: usize = 50;
    let c = tokio::task::spawn_blocking(|| meerkat_tests::cluster::TestCluster::start(2)).await.unwrap();
    for u in ["alice", "bob", "dave"] {
        c.add_user(u, PW);
    }
    let mut alice = login(&c.nodes[0], "alice", PW, "a").await;
    let mut one = online(&c.nodes[0], "bob", PW, "one", Some(1)).await;
    let mut two = online(&c.nodes[1], "bob", PW, "two", Some(1)).await;
    one.recv_until(|el| el.name == "presence" && el.attr("from") == Some("bob@localhost/two")).await.unwrap();
    // Node 1 routes messages to the bare JID by the availability it has
    // replicated: until it knows bob/two is available, they go to bob/one only.
    meerkat_tests::wait_until("bob/two available in node 1's table", Duration::from_secs(10), || {
        let (code, v) = c.nodes[0].api("GET", "/api/sessions", None);
        code == 200
            && v["sessions"].as_array().into_iter().flatten().any(|s| {
                s["jid"] == "bob@localhost/two" && s["node"] == 2 && s["available"] == serde_json::Value::Bool(true)
            })
    });
    for i in 0..N {
        alice.send_message("bob@localhost", &format!("to both {i}")).await.unwrap();
    }
    // And to the full JIDs, each across to its node.
    alice.send_message("bob@localhost/two", "to two").await.unwrap();
    alice.send_message("bob@localhost/one", "to one").await.unwrap();
    let mut ids = Vec::new();
    for i in 0..N {
        let (m1, m2) = (one.recv_message().await.unwrap(), two.recv_message().await.unwrap());
        assert_eq!((body(&m1), body(&m2)), (Some(format!("to both {i}")), Some(format!("to both {i}"))));
        let id = stanza_id(&m1, "bob@localhost");
        assert_eq!(stanza_id(&m2, "bob@localhost"), id, "one id for both copies");
        ids.push(id);
    }
    ids.push(stanza_id(&two.recv_message().await.unwrap(), "bob@localhost"));
    ids.push(stanza_id(&one.recv_message().await.unwrap(), "bob@localhost"));
    // Offline on both nodes' watch: stored once, archived once.
    alice.send_message("dave@localhost", "while away").await.unwrap();

    wait_for_archive(&mut two, N + 2).await;
    wait_for_archive(&mut alice, N + 3).await;
    let mut dave = login(&c.nodes[1], "dave", PW, "d").await;
    dave.go_online(None).await.unwrap();
    let offline = stanza_id(&dave.recv_message().await.unwrap(), "dave@localhost");
    wait_for_archive(&mut dave, 1).await;
    // Markers after everything: alice's archive jobs are written in the order
    // she sent, so a second copy of anything earlier would be in before the
    // markers are; and a query waits for the writes its own node queued before it.
    alice.send_message("bob@localhost", "marker").await.unwrap();
    alice.send_message("dave@localhost", "marker").await.unwrap();
    let marker = stanza_id(&one.recv_message().await.unwrap(), "bob@localhost");
    assert_eq!(stanza_id(&two.recv_message().await.unwrap(), "bob@localhost"), marker);
    let dave_marker = stanza_id(&dave.recv_message().await.unwrap(), "dave@localhost");
    ids.push(marker);
    for bob in [&mut one, &mut two] {
        wait_for_archive(bob, N + 3).await;
        let a = query(bob, None, &[], "<max>250</max>").await;
        assert_eq!(a.ids(), ids, "{} sees each message once, in order", bob.jid());
    }
    wait_for_archive(&mut alice, N + 5).await;
    wait_for_archive(&mut dave, 2).await;
    assert_eq!(query(&mut dave, None, &[], "").await.ids(), [offline, dave_marker]);
}

/// A fresh MariaDB database for one test, dropped with the value. The server
/// comes from `MEERKAT_TEST_MYSQL_URL` (default `mysql://root@127.0.0.1:3306/test`).
struct MariaDb {
    url: String,
    name: String,
    base: String,
}

impl MariaDb {
    fn create() -> MariaDb {
        let base =
            std::env::var("MEERKAT_TEST_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into());
        let name = format!("meerkat_mam_{}_{}", std::process::id(), rand::random::<u32>());
        mysql(&base, &format!("CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"));
        let url = match base.rfind('/') {
            Some(i) if i > "mysql://".len() => format!("{}/{name}", &base[..i]),
            _ => panic!("MEERKAT_TEST_MYSQL_URL has no database part: {base}"),
        };
        MariaDb { url, name, base }
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        mysql(&self.base, &format!("DROP DATABASE IF EXISTS {}", self.name));
    }
}

/// Runs one statement with the `mysql` client against the server of `url`
/// (`mysql://user[:password]@host[:port]/db`).
fn mysql(url: &str, sql: &str) {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.split(['/', '?']).next().unwrap_or_default();
    let (creds, host) = rest.rsplit_once('@').unwrap_or(("root", rest));
    let (user, password) = creds.split_once(':').map_or((creds, None), |(u, p)| (u, Some(p)));
    let (host, port) = host.split_once(':').unwrap_or((host, "3306"));
    let mut cmd = std::process::Command::new("mysql");
    cmd.arg(format!("--host={host}")).arg(format!("--port={port}")).arg(format!("--user={user}"));
    if let Some(p) = password {
        cmd.env("MYSQL_PWD", p);
    }
    match cmd.arg("-e").arg(sql).output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!("mysql {sql:?} failed: {}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => panic!("cannot run the mysql client: {e}"),
    }
}
