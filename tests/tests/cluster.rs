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

/// Sends `n` numbered messages from `a` to `b` and from `b` to `a`, interleaved,
/// and checks that each side receives the other's in order.
async fn exchange(a: &mut Client, b: &mut Client, from: usize, to: usize) {
    let (ja, jb) = (a.jid().to_owned(), b.jid().to_owned());
    for n in from..to {
        a.send_message(&jb, &format!("a{n}")).await.unwrap();
        b.send_message(&ja, &format!("b{n}")).await.unwrap();
    }
    for n in from..to {
        let m = b.recv_message().await.unwrap();
        assert_eq!(body(&m).as_deref(), Some(format!("a{n}").as_str()), "b received out of order: {m}");
        assert_eq!(m.attr("from"), Some(ja.as_str()));
        let m = a.recv_message().await.unwrap();
        assert_eq!(body(&m).as_deref(), Some(format!("b{n}").as_str()), "a received out of order: {m}");
    }
}

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
