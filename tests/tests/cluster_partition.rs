//! A network partition of a three-node cluster, with network namespaces
//! ([`meerkat_tests::netns`]; needs root, as CI has).
//!
//! Node 3 is cut off the cluster network while the test still reaches every
//! node's c2s listener and admin API. The isolated node refuses new logins
//! (it cannot commit them) but keeps serving its existing sessions locally;
//! the majority keeps working and marks node 3 down. A full JID bound on node
//! 3 before the cut is bound again on node 1 during the partition. After the
//! heal every node has the same session table, no full JID has two sessions:
//! the older one, on node 3, is closed with `<conflict/>`.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use meerkat_tests::client::body;
use meerkat_tests::cluster::{SharedDb, TestCluster};
use meerkat_tests::netns::Netns;
use meerkat_tests::{wait_until, Client, ClientError, TestNode, DOMAIN};
use serde_json::Value;

const PW: &str = "pw";
/// How long the isolated node may take to start refusing logins, and the
/// majority to serve again (an election may be needed).
const PARTITION_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the cluster may take to converge after the heal.
const HEAL_TIMEOUT: Duration = Duration::from_secs(30);

/// Logs in, retrying any failure (the cluster may be electing a leader) until `timeout`.
async fn login_retrying(node: &TestNode, user: &str, resource: &str, timeout: Duration) -> Client {
    let deadline = Instant::now() + timeout;
    loop {
        match Client::login(node.c2s, DOMAIN, user, PW, Some(resource)).await {
            Ok(c) => return c,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "login of {user}/{resource} on {} still fails after {timeout:?}: {e}",
                    node.c2s
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// `from` sends `text` to `to`'s full JID; `to` must receive exactly that from `from`.
async fn deliver(from: &mut Client, to: &mut Client, text: &str) {
    let (jf, jt) = (from.jid().to_owned(), to.jid().to_owned());
    from.send_message(&jt, text).await.unwrap_or_else(|e| panic!("{jf} sending to {jt}: {e}"));
    let m = to.recv_message().await.unwrap_or_else(|e| panic!("{jt} waiting for {text:?} from {jf}: {e}"));
    assert_eq!(body(&m).as_deref(), Some(text), "{jt} got {m}");
    assert_eq!(m.attr("from"), Some(jf.as_str()), "{jt} got {m}");
}

/// A message each way.
async fn exchange(a: &mut Client, b: &mut Client, what: &str) {
    deliver(a, b, &format!("{what}: ping")).await;
    deliver(b, a, &format!("{what}: pong")).await;
}

/// The `sessions` array of `GET /api/sessions` on `node`, as is.
fn sessions(node: &TestNode) -> Vec<Value> {
    let (code, v) = node.api("GET", "/api/sessions", None);
    assert_eq!(code, 200, "sessions: {v}");
    v["sessions"].as_array().cloned().unwrap_or_default()
}

/// (full JID, node) pairs of a session list.
fn jid_nodes(sessions: &[Value]) -> Vec<(String, u64)> {
    let mut t: Vec<(String, u64)> = sessions
        .iter()
        .map(|s| (s["jid"].as_str().unwrap_or_default().to_owned(), s["node"].as_u64().unwrap_or(0)))
        .collect();
    t.sort();
    t
}

/// The member `id` in a `GET /api/cluster` answer.
fn member(status: &Value, id: u64) -> Value {
    status["members"].as_array().into_iter().flatten().find(|m| m["id"] == id).cloned().unwrap_or(Value::Null)
}

/// Tries a login of dave on the isolated node; it must be refused with a stream error.
async fn expect_refused(node: &TestNode, resource: &str) -> Option<String> {
    match Client::login(node.c2s, DOMAIN, "dave", PW, Some(resource)).await {
        Err(ClientError::StreamError { condition, text }) => {
            assert_eq!(condition, "internal-server-error", "refusal of dave/{resource}: {text:?}");
            text
        }
        Ok(c) => panic!("the isolated node accepted {} after it had refused a login", c.jid()),
        Err(e) => panic!("login of dave/{resource} on the isolated node: expected a stream error, got {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_node_refuses_logins_majority_serves_and_heal_converges() {
    let started = Instant::now();
    // Declared before the cluster, so dropped after its nodes stopped.
    let net = Netns::create(3);
    let placements = (1..=3).map(|i| net.placement(i)).collect();
    let cluster =
        tokio::task::spawn_blocking(move || TestCluster::start_placed(SharedDb::sqlite(), placements)).await.unwrap();
    for u in ["alice", "bob", "carol", "dave"] {
        cluster.add_user(u, PW);
    }
    let (n1, n2, n3) = (&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]);
    eprintln!("cluster up after {:?}: {:?}", started.elapsed(), cluster.status(0)["members"]);

    // ---- before the cut
    let mut carol3 = login_retrying(n3, "carol", "phone", PARTITION_TIMEOUT).await;
    carol3.go_online(None).await.unwrap();
    let mut bob3 = login_retrying(n3, "bob", "desk", PARTITION_TIMEOUT).await;
    bob3.go_online(None).await.unwrap();
    let mut alice1 = login_retrying(n1, "alice", "home", PARTITION_TIMEOUT).await;
    alice1.go_online(None).await.unwrap();
    deliver(&mut alice1, &mut carol3, "before the cut").await;

    // ---- the partition
    net.cut(3);
    let cut_at = Instant::now();

    // The isolated node refuses new logins, once it noticed it cannot commit.
    let mut attempt = 0;
    let first_refusal = loop {
        attempt += 1;
        let resource = format!("try{attempt}");
        match Client::login(n3.c2s, DOMAIN, "dave", PW, Some(&resource)).await {
            Ok(c) => {
                eprintln!("{} still got in on node 3 {:?} after the cut", c.jid(), cut_at.elapsed());
                drop(c);
            }
            Err(ClientError::StreamError { condition, text }) => {
                assert_eq!(condition, "internal-server-error", "refusal on the isolated node: {text:?}");
                break text;
            }
            Err(e) => panic!("login of dave/{resource} on the isolated node: expected a stream error, got {e}"),
        }
        assert!(
            cut_at.elapsed() < PARTITION_TIMEOUT,
            "node 3 still accepts logins {:?} after the cut",
            cut_at.elapsed()
        );
    };
    eprintln!("node 3 refused a login {:?} after the cut: {first_refusal:?}", cut_at.elapsed());
    for i in 1..=2 {
        let text = expect_refused(n3, &format!("again{i}")).await;
        eprintln!("node 3 refused again: {text:?}");
    }

    // The majority keeps working.
    let mut dave1 = login_retrying(n1, "dave", "r1", PARTITION_TIMEOUT).await;
    dave1.go_online(None).await.unwrap();
    exchange(&mut dave1, &mut alice1, "majority, node 1 to node 1").await;
    let mut bob2 = login_retrying(n2, "bob", "laptop", PARTITION_TIMEOUT).await;
    bob2.go_online(None).await.unwrap();
    exchange(&mut dave1, &mut bob2, "majority, node 1 to node 2").await;
    eprintln!("the majority serves {:?} after the cut", cut_at.elapsed());

    // The isolated node still serves its existing sessions locally.
    exchange(&mut bob3, &mut carol3, "isolated node, locally").await;

    // The majority marks node 3 down, which takes its sessions out of the table.
    wait_until("node 3 marked down on nodes 1 and 2", PARTITION_TIMEOUT, || {
        [0, 1].iter().all(|&i| {
            member(&cluster.status(i), 3)["down"] == true && cluster.table(i).iter().all(|(_, node)| *node != 3)
        })
    });
    eprintln!("node 3 marked down {:?} after the cut", cut_at.elapsed());

    // The same full JID as carol's session on node 3, bound on the majority.
    let mut carol1 = login_retrying(n1, "carol", "phone", PARTITION_TIMEOUT).await;
    carol1.go_online(None).await.unwrap();
    assert_eq!(carol1.jid(), carol3.jid());
    exchange(&mut alice1, &mut carol1, "majority, carol's new session").await;

    // ---- the heal
    net.heal(3);
    let healed_at = Instant::now();
    let deadline = healed_at + HEAL_TIMEOUT;

    // The older of the two carol/phone sessions (node 3) loses.
    let left = deadline.saturating_duration_since(Instant::now());
    match carol3.expect_stream_error_timeout(left).await {
        Ok(condition) => assert_eq!(condition, "conflict", "carol's old session on node 3"),
        Err(e) => panic!("carol's old session on node 3 got no <conflict/> within {HEAL_TIMEOUT:?} of the heal: {e}"),
    }
    eprintln!("node 3's carol/phone got <conflict/> {:?} after the heal", healed_at.elapsed());

    // Every node has the same table: the live sessions, each full JID once.
    let mut expected: Vec<(String, u64)> = vec![
        (alice1.jid().to_owned(), 1),
        (bob3.jid().to_owned(), 3),
        (bob2.jid().to_owned(), 2),
        (carol1.jid().to_owned(), 1),
        (dave1.jid().to_owned(), 1),
    ];
    expected.sort();
    let mut last: Vec<Vec<Value>> = Vec::new();
    let left = deadline.saturating_duration_since(Instant::now());
    let converged = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until("the same session table on every node", left, || {
            last = cluster.nodes.iter().map(sessions).collect();
            last.iter().all(|t| *t == last[0]) && jid_nodes(&last[0]) == expected
        })
    }));
    if converged.is_err() {
        panic!(
            "the tables did not converge; expected {expected:?}; node 1: {:?}; node 2: {:?}; node 3: {:?}",
            last[0], last[1], last[2]
        );
    }
    for (i, t) in last.iter().enumerate() {
        let jids: Vec<&str> = t.iter().map(|s| s["jid"].as_str().unwrap()).collect();
        let unique: BTreeSet<&str> = jids.iter().copied().collect();
        assert_eq!(unique.len(), jids.len(), "node {} lists a full JID twice: {t:?}", i + 1);
        let carol: Vec<&Value> = t.iter().filter(|s| s["jid"] == carol1.jid()).collect();
        assert_eq!(carol.len(), 1, "node {}: {t:?}", i + 1);
        assert_eq!(carol[0]["node"], 1, "node {}: carol/phone must be node 1's newer session: {t:?}", i + 1);
    }
    eprintln!("tables identical {:?} after the heal: {:?}", healed_at.elapsed(), jid_nodes(&last[0]));

    // Every node sees the whole cluster again, with one leader.
    let mut statuses: Vec<Value> = Vec::new();
    let left = deadline.saturating_duration_since(Instant::now());
    let agreed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until("3 reachable members, none down, one leader, on every node", left, || {
            statuses = (0..3).map(|i| cluster.status(i)).collect();
            let leader = &statuses[0]["leader"];
            statuses.iter().all(|s| {
                let members = s["members"].as_array().cloned().unwrap_or_default();
                s["ready"] == true
                    && leader.is_u64()
                    && s["leader"] == *leader
                    && members.len() == 3
                    && members.iter().all(|m| m["reachable"] == true && m["down"] == false)
            })
        })
    }));
    if agreed.is_err() {
        panic!("the cluster did not agree after the heal: {statuses:#?}");
    }
    eprintln!("cluster whole again {:?} after the heal, leader {}", healed_at.elapsed(), statuses[0]["leader"]);

    // And it serves across all three nodes: node 3's surviving session is routable again.
    exchange(&mut alice1, &mut bob3, "after the heal, node 1 to node 3").await;
    exchange(&mut carol1, &mut bob2, "after the heal, node 1 to node 2").await;
    let mut dave3 = login_retrying(n3, "dave", "back", PARTITION_TIMEOUT).await;
    dave3.go_online(None).await.unwrap();
    exchange(&mut dave3, &mut alice1, "after the heal, node 3 to node 1").await;
    eprintln!("done in {:?}", started.elapsed());
}
