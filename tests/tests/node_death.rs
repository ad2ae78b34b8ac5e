//! No stanza stranded or doubled when a node of the cluster dies: bob is on
//! node 3, alice on node 1 sends 1,000 messages to bob's bare JID 2 ms apart,
//! and node 3 goes away once bob has 500 of them (between two messages),
//! either SIGKILLed or blackholed (every packet to or from it dropped in a network namespace: no RST, no
//! FIN; needs root, as CI has). bob logs in again on node 1 with the same
//! resource: every message reaches him exactly once, counting those his old
//! session got before node 3 went away.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use meerkat_tests::cluster::{SharedDb, TestCluster};
use meerkat_tests::netns::Netns;
use meerkat_tests::stream::{numbered, read_until_quiet};
use meerkat_tests::{login, Client, TestNode, DOMAIN};

const PW: &str = "pw";
const N: usize = 1000;
/// How long bob waits for the rest after logging in again.
const REST_WITHIN: Duration = Duration::from_secs(10);

/// Logs in, retrying while the cluster has not yet settled after the death.
async fn login_retrying(node: &TestNode, user: &str, resource: &str) -> Client {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match Client::login(node.c2s, DOMAIN, user, PW, Some(resource)).await {
            Ok(c) => return c,
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("login of {user}/{resource} failed, retrying: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("login of {user}/{resource} still fails: {e}"),
        }
    }
}

/// The run itself; `away` makes node 3 go away (kill or blackhole).
async fn messages_survive(cluster: &mut TestCluster, away: impl FnOnce(&mut TestCluster)) {
    for u in ["alice", "bob"] {
        cluster.add_user(u, PW);
    }
    let mut bob = login(&cluster.nodes[2], "bob", PW, "phone").await;
    bob.go_online(Some(1)).await.unwrap();
    let mut alice = login_retrying(&cluster.nodes[0], "alice", "desk").await;
    alice.go_online(Some(1)).await.unwrap();
    meerkat_tests::wait_until("bob in node 1's table", Duration::from_secs(10), || {
        cluster.table(0).iter().any(|(jid, node)| jid == "bob@localhost/phone" && *node == 3)
    });

    // Node 3 goes away between the 500th and the 501st message: once alice
    // sent the 500th and bob's old session has the first 500, not while one
    // is between nodes or inside node 3. A node that dies holding a stanza it
    // took and had not yet written to its client loses it, and one that dies
    // after handing a stanza on and before its acknowledgement arrived makes
    // the sender route it again (a second delivery): without the client's
    // own acknowledgements (XEP-0198), nothing between two nodes can tell
    // those instants apart (README, "When a node dies").
    let mut reader = read_until_quiet(bob, N / 2, Duration::from_secs(3));
    let stream = numbered(alice, "bob@localhost".into(), N, Duration::from_millis(2), N / 2);
    stream.paused.await.unwrap();
    reader.first_in(Duration::from_secs(30)).await;
    away(cluster);
    let _ = stream.resume.send(());
    let mut alice = stream.task.await.unwrap();
    let mut seen = reader.task.await.unwrap();
    let before = seen.total();
    eprintln!("bob's old session got {before} messages");

    let mut bob = login_retrying(&cluster.nodes[0], "bob", "phone").await;
    bob.go_online(Some(1)).await.unwrap();
    let deadline = tokio::time::Instant::now() + REST_WITHIN;
    while seen.distinct() < N {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match bob.recv_timeout(left).await {
            Ok(el) => seen.note(&el),
            Err(e) => {
                let missing = seen.missing(N);
                panic!(
                    "bob has {} of {N} messages {REST_WITHIN:?} after logging in again ({before} before); \
                     missing {} (first {:?}): {e}",
                    seen.distinct(),
                    missing.len(),
                    &missing[..missing.len().min(20)]
                );
            }
        }
    }
    // Anything still on its way would be a duplicate: a ping to the server
    // is answered after what was queued for bob before it.
    let res = bob.iq_xml("<iq type='get' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>").await.unwrap();
    assert_eq!(res.attr("type"), Some("result"));
    for el in bob.backlog() {
        seen.note(el);
    }
    let twice = seen.repeated();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    // alice was told of no failure.
    let res = alice.iq_xml("<iq type='get' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>").await.unwrap();
    assert_eq!(res.attr("type"), Some("result"));
    let errors: Vec<_> = alice.backlog().filter(|el| el.attr("type") == Some("error")).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "alice got errors: {errors:?}");
    eprintln!("node 1 after the run: {}", cluster.status(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_strands_and_doubles_no_message() {
    let mut cluster = tokio::task::spawn_blocking(|| TestCluster::start(3)).await.unwrap();
    messages_survive(&mut cluster, |c| c.nodes[2].kill()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_node_strands_and_doubles_no_message() {
    // Declared before the cluster, so dropped after its nodes stopped.
    let net = Netns::create(3);
    let placements = (1..=3).map(|i| net.placement(i)).collect();
    let mut cluster =
        tokio::task::spawn_blocking(move || TestCluster::start_placed(SharedDb::sqlite(), placements)).await.unwrap();
    messages_survive(&mut cluster, |_| net.blackhole(3)).await;
}
