//! A cluster of real node processes on one shared PostgreSQL database:
//! messages across nodes, a node killed and restarted, a node joining and
//! leaving online through the CLI.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use meerkat_tests::client::body;
use meerkat_tests::cluster::TestCluster;
use meerkat_tests::{login, online, wait_until, Client};
use serde_json::Value;

const PW: &str = "pw";

fn member(status: &Value, id: u64) -> Option<&Value> {
    status["members"].as_array()?.iter().find(|m| m["id"].as_u64() == Some(id))
}

/// Sends numbered messages from `a` to `b` and from `b` to `a`, interleaved,
/// and checks that each side receives the other's in order. They go in
/// windows of [`WINDOW`] each way: a session's mailbox holds what its client
/// sends as well as what it receives, and one that is full makes a message
/// fall back to the account (offline storage), which is delivered later.
async fn exchange(a: &mut Client, b: &mut Client, from: usize, to: usize) {
    let (ja, jb) = (a.jid().to_owned(), b.jid().to_owned());
    let mut start = from;
    while start < to {
        let end = (start + WINDOW).min(to);
        for n in start..end {
            a.send_message(&jb, &format!("a{n}")).await.unwrap();
            b.send_message(&ja, &format!("b{n}")).await.unwrap();
        }
        for n in start..end {
            let m = b.recv_message().await.unwrap();
            assert_eq!(body(&m).as_deref(), Some(format!("a{n}").as_str()), "b received out of order: {m}");
            assert_eq!(m.attr("from"), Some(ja.as_str()));
            let m = a.recv_message().await.unwrap();
            assert_eq!(body(&m).as_deref(), Some(format!("b{n}").as_str()), "a received out of order: {m}");
        }
        start = end;
    }
}

/// Messages each way in flight at once in [`exchange`].
const WINDOW: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_survive_a_killed_node_which_rejoins_by_itself() {
    let mut c = tokio::task::spawn_blocking(|| TestCluster::start(3)).await.unwrap();
    for u in ["alice", "bob", "carol"] {
        c.add_user(u, PW);
    }
    let status = c.status(0);
    assert_eq!(status["members"].as_array().unwrap().len(), 3, "{status}");
    assert!(status["leader"].is_u64(), "{status}");

    let mut alice = online(&c.nodes[0], "alice", PW, "a", Some(1)).await;
    let mut bob = online(&c.nodes[2], "bob", PW, "b", Some(1)).await;
    // carol is on node 2, which is about to die.
    let _carol = online(&c.nodes[1], "carol", PW, "c", Some(1)).await;
    wait_until("carol in node 1's table", Duration::from_secs(10), || {
        c.table(0).contains(&("carol@localhost/c".to_owned(), 2))
    });

    exchange(&mut alice, &mut bob, 0, 300).await;
    c.nodes[1].kill();
    let killed_at = Instant::now();
    // The messages between nodes 1 and 3 do not need node 2.
    exchange(&mut alice, &mut bob, 300, 1000).await;

    // Node 2's sessions leave the table (and so routing) within 10 s of the kill.
    wait_until("node 2 marked down with no sessions", Duration::from_secs(12), || {
        let s = c.status(0);
        let m = member(&s, 2).cloned().unwrap_or(Value::Null);
        m["down"] == Value::Bool(true) && m["sessions"].as_u64() == Some(0)
    });
    let gone_after = killed_at.elapsed();
    eprintln!("node 2 left the table {gone_after:?} after the kill");
    assert!(gone_after < Duration::from_secs(10), "node 2's sessions took {gone_after:?} to leave the table");
    for i in [0, 2] {
        assert!(
            c.table(i).iter().all(|(_, node)| *node != 2),
            "node {} still routes to node 2: {:?}",
            i + 1,
            c.table(i)
        );
    }

    // A message to carol now goes to offline storage, and reaches her when she logs in on node 3.
    alice.send_message("carol@localhost", "while you were away").await.unwrap();
    let mut carol = login(&c.nodes[2], "carol", PW, "c2").await;
    carol.go_online(Some(1)).await.unwrap();
    let m = carol.recv_message().await.unwrap();
    assert_eq!(body(&m).as_deref(), Some("while you were away"));
    assert!(m.get_child("delay", "urn:xmpp:delay").is_some(), "offline message without a delay stamp: {m}");

    // Node 2 restarts on its data directory and rejoins by itself: no join command.
    c.nodes[1].restart();
    c.wait_ready(1, Duration::from_secs(30));
    wait_until("node 2 back up everywhere", Duration::from_secs(20), || {
        (0..3).all(|i| {
            let s = c.status(i);
            member(&s, 2).is_some_and(|m| m["down"] == Value::Bool(false) && m["reachable"] == Value::Bool(true))
        })
    });
    // And serves: carol moves back to node 2 and talks to alice on node 1.
    let mut carol2 = online(&c.nodes[1], "carol", PW, "c3", Some(2)).await;
    alice.send_message(carol2.jid(), "welcome back").await.unwrap();
    let m = carol2.recv_message().await.unwrap();
    assert_eq!(body(&m).as_deref(), Some("welcome back"));
    wait_until("the same table everywhere", Duration::from_secs(10), || {
        let t = c.table(0);
        t == c.table(1) && t == c.table(2)
    });
    let _ = carol.close().await;

    // A node that dies for good is taken out with `meerkat cluster remove` on any member.
    c.nodes[1].kill();
    let out = c.nodes[2].cli(&["cluster", "remove", "2"]);
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    wait_until("two members", Duration::from_secs(10), || {
        [0, 2].iter().all(|i| c.status(*i)["members"].as_array().map(Vec::len) == Some(2))
    });
    assert!(c.table(0).iter().all(|(_, node)| *node != 2), "{:?}", c.table(0));
    let (code, v) = c.nodes[0].api("DELETE", "/api/cluster/nodes/2", None);
    assert_eq!(code, 409, "removing a node that is no longer a member: {v}");
    exchange(&mut alice, &mut bob, 1000, 1010).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_node_joins_takes_sessions_and_leaves_online() {
    let mut c = tokio::task::spawn_blocking(|| TestCluster::start(3)).await.unwrap();
    for u in ["alice", "bob", "dave"] {
        c.add_user(u, PW);
    }
    let mut alice = online(&c.nodes[0], "alice", PW, "a", Some(1)).await;
    let mut bob = online(&c.nodes[2], "bob", PW, "b", Some(1)).await;
    exchange(&mut alice, &mut bob, 0, 50).await;

    // Node 4 joins through `meerkat cluster join` while alice and bob talk.
    c.add_node(meerkat_tests::cluster::Placement::loopback());
    exchange(&mut alice, &mut bob, 50, 100).await;
    let status = c.status(0);
    let m4 = member(&status, 4).unwrap_or_else(|| panic!("node 4 is not a member: {status}"));
    assert_eq!(m4["role"], "voter", "{status}");
    let out = c.nodes[3].cli(&["cluster", "status"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("voter") && text.lines().count() >= 5, "{text}");

    // It takes sessions.
    let mut dave = online(&c.nodes[3], "dave", PW, "d", Some(1)).await;
    dave.send_message(alice.jid(), "hi from node 4").await.unwrap();
    assert_eq!(body(&alice.recv_message().await.unwrap()).as_deref(), Some("hi from node 4"));
    alice.send_message("dave@localhost", "hi node 4").await.unwrap();
    assert_eq!(body(&dave.recv_message().await.unwrap()).as_deref(), Some("hi node 4"));

    // And leaves: its own clients are asked to go elsewhere, the others see nothing.
    let out = c.nodes[3].cli(&["cluster", "leave"]);
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let err = dave.expect_stream_error_timeout(Duration::from_secs(10)).await.unwrap();
    assert_eq!(err, "system-shutdown");
    exchange(&mut alice, &mut bob, 100, 150).await;
    wait_until("three members again", Duration::from_secs(10), || {
        (0..3).all(|i| c.status(i)["members"].as_array().map(Vec::len) == Some(3))
    });
    assert!(c.table(0).iter().all(|(_, node)| *node != 4));
    // Nobody got an error stanza or a stream error along the way.
    for client in [&alice, &bob] {
        assert!(
            client.backlog().all(|el| el.attr("type") != Some("error")),
            "{:?}",
            client.backlog().collect::<Vec<_>>()
        );
    }
    // A node that left refuses logins rather than serving a table it no longer follows.
    let refused = Client::login(c.nodes[3].c2s, "localhost", "dave", PW, Some("again")).await;
    assert!(refused.is_err(), "login on a node that left the cluster succeeded");
}

fn presence_from<'a>(from: &'a str, kind: Option<&'a str>) -> impl Fn(&meerkat_xmpp::element::Element) -> bool + 'a {
    move |el| el.name == "presence" && el.attr("from") == Some(from) && el.attr("type") == kind
}

fn roster_push_for<'a>(
    contact: &'a str,
    subscription: &'a str,
) -> impl Fn(&meerkat_xmpp::element::Element) -> bool + 'a {
    move |el| {
        el.name == "iq"
            && el.attr("type") == Some("set")
            && el
                .get_child("query", meerkat_xmpp::ns::ROSTER)
                .and_then(|q| q.get_child("item", meerkat_xmpp::ns::ROSTER))
                .is_some_and(|i| i.attr("jid") == Some(contact) && i.attr("subscription") == Some(subscription))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_presence_probes_and_roster_pushes_cross_nodes() {
    let c = tokio::task::spawn_blocking(|| TestCluster::start(3)).await.unwrap();
    for u in ["alice", "bob"] {
        c.add_user(u, PW);
    }
    // alice has a resource on node 1 and one on node 3; bob is on node 2.
    let mut alice = online(&c.nodes[0], "alice", PW, "one", Some(1)).await;
    let mut alice3 = online(&c.nodes[2], "alice", PW, "three", Some(0)).await;
    let mut bob = online(&c.nodes[1], "bob", PW, "two", Some(1)).await;
    let (a1, a3, b2) = (alice.jid().to_owned(), alice3.jid().to_owned(), bob.jid().to_owned());

    // Each of alice's resources sees the other's presence, across nodes.
    alice.recv_until(presence_from(&a3, None)).await.unwrap();

    // Mutual subscription: requests, approvals and roster pushes to every resource on every node.
    alice.send_str("<presence to='bob@localhost' type='subscribe'/>").await.unwrap();
    alice3.recv_until(roster_push_for("bob@localhost", "none")).await.unwrap();
    bob.recv_until(presence_from("alice@localhost", Some("subscribe"))).await.unwrap();
    bob.send_str("<presence to='alice@localhost' type='subscribed'/>").await.unwrap();
    alice3.recv_until(roster_push_for("bob@localhost", "to")).await.unwrap();
    alice.recv_until(roster_push_for("bob@localhost", "to")).await.unwrap();
    // Once subscribed, alice's resources get bob's current presence (the server probes him on node 2).
    alice.recv_until(presence_from(&b2, None)).await.unwrap();
    alice3.recv_until(presence_from(&b2, None)).await.unwrap();
    bob.send_str("<presence to='alice@localhost' type='subscribe'/>").await.unwrap();
    alice3.recv_until(presence_from("bob@localhost", Some("subscribe"))).await.unwrap();
    alice3.send_str("<presence to='bob@localhost' type='subscribed'/>").await.unwrap();
    alice.recv_until(roster_push_for("bob@localhost", "both")).await.unwrap();
    bob.recv_until(roster_push_for("alice@localhost", "both")).await.unwrap();
    bob.recv_until(presence_from(&a1, None)).await.unwrap();
    bob.recv_until(presence_from(&a3, None)).await.unwrap();

    // A presence change on node 2 is broadcast to both of alice's nodes, and unavailable too.
    bob.send_str("<presence><show>away</show></presence>").await.unwrap();
    for a in [&mut alice, &mut alice3] {
        let p = a.recv_until(|el| presence_from(&b2, None)(el) && el.has_child("show", "jabber:client")).await.unwrap();
        assert_eq!(p.get_child("show", "jabber:client").unwrap().text(), "away");
    }
    bob.close().await.unwrap();
    alice.recv_until(presence_from(&b2, Some("unavailable"))).await.unwrap();
    alice3.recv_until(presence_from(&b2, Some("unavailable"))).await.unwrap();

    // A message to alice's bare JID goes to her highest-priority resource (node 1), not node 3.
    let mut bob = online(&c.nodes[1], "bob", PW, "again", Some(1)).await;
    bob.send_message("alice@localhost", "to the best resource").await.unwrap();
    assert_eq!(body(&alice.recv_message().await.unwrap()).as_deref(), Some("to the best resource"));
    // alice raises node 3's priority: the next one goes there.
    alice3.send_presence(Some(5)).await.unwrap();
    bob.recv_until(|el| {
        presence_from(&a3, None)(el) && el.get_child("priority", "jabber:client").is_some_and(|p| p.text() == "5")
    })
    .await
    .unwrap();
    // Other nodes route by the replicated priority, which follows within a log round trip.
    wait_until("node 2 sees priority 5", Duration::from_secs(5), || {
        let (_, v) = c.nodes[1].api("GET", "/api/sessions", None);
        v["sessions"].as_array().into_iter().flatten().any(|s| s["jid"] == a3.as_str() && s["priority"] == 5)
    });
    bob.send_message("alice@localhost", "now to node 3").await.unwrap();
    assert_eq!(body(&alice3.recv_message().await.unwrap()).as_deref(), Some("now to node 3"));
}

/// The admin API of one node ends sessions on any node: one session by its
/// JID, all of an account's (`DELETE /api/users/{host}/{user}/sessions`),
/// and those of a removed account; `/api/sessions` counts per host and node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_of_one_node_ends_sessions_on_another() {
    let c = tokio::task::spawn_blocking(|| TestCluster::start(2)).await.unwrap();
    for u in ["alice", "bob"] {
        c.add_user(u, PW);
    }
    let mut a1 = online(&c.nodes[1], "alice", PW, "one", Some(1)).await;
    let mut a2 = online(&c.nodes[1], "alice", PW, "two", Some(1)).await;
    let mut b = online(&c.nodes[1], "bob", PW, "b", Some(1)).await;
    let _here = online(&c.nodes[0], "bob", PW, "here", Some(1)).await;
    wait_until("node 1 sees all four sessions", Duration::from_secs(10), || c.table(0).len() == 4);

    let (code, v) = c.nodes[0].api("GET", "/api/sessions?node=2", None);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["count"], 3, "{v}");
    assert_eq!((v["per_node"]["1"].as_u64(), v["per_node"]["2"].as_u64()), (Some(1), Some(3)), "{v}");
    assert_eq!(v["per_host"]["localhost"], 4, "{v}");
    let (_, v) = c.nodes[0].api("GET", "/api/sessions?host=elsewhere.example", None);
    assert_eq!(v["count"], 0, "{v}");

    // One session on node 2, ended from node 1.
    let (code, v) = c.nodes[0].api("DELETE", "/api/sessions/alice@localhost%2Fone", None);
    assert_eq!(code, 204, "{v}");
    assert!(a1.wait_closed(Duration::from_secs(10)).await.is_ok());
    // Every session of an account.
    let (code, v) = c.nodes[0].api("DELETE", "/api/users/localhost/alice/sessions", None);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["kicked"], 1, "{v}");
    assert!(a2.wait_closed(Duration::from_secs(10)).await.is_ok());
    // A removed account's sessions end on every node.
    let (code, v) = c.nodes[0].api("DELETE", "/api/users/localhost/bob", None);
    assert_eq!(code, 204, "{v}");
    assert!(b.wait_closed(Duration::from_secs(10)).await.is_ok());
    wait_until("no session left", Duration::from_secs(10), || c.table(0).is_empty() && c.table(1).is_empty());
}
