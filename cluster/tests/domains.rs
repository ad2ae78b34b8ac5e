//! Service and component domains through a real two-node cluster in one
//! process: a registration is committed through Raft and every node's
//! replica of the domain table names the node that holds it.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use meerkat_cluster::node::{ClusterNode, ClusterSettings};
use meerkat_cluster::{DomainError, DomainKind, DomainRecord, DomainRegistry, SessionTable};

/// A port nothing listens on right now.
fn free_port() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn settings(id: u64, dir: &std::path::Path, bootstrap: bool) -> ClusterSettings {
    let listen = free_port();
    ClusterSettings {
        secret: None,
        name: "domains".into(),
        node_id: id,
        listen,
        advertise: listen.to_string(),
        dir: dir.to_path_buf(),
        bootstrap,
        sync_log: false,
        heartbeat: Duration::from_millis(50),
        election_timeout_min: Duration::from_millis(150),
        election_timeout_max: Duration::from_millis(300),
        down_after: Duration::from_secs(30),
        commit_timeout: Duration::from_secs(5),
        tls: None,
    }
}

/// Polls `f` until it holds, for at most 20 s.
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn rec(domain: &str, node: u64, id: u64) -> DomainRecord {
    DomainRecord { domain: domain.into(), node, kind: DomainKind::Component, id }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domains_replicate_refuse_conflicts_and_leave_with_their_node() {
    let (d1, d2) = (tempfile::TempDir::new().unwrap(), tempfile::TempDir::new().unwrap());
    let s1 = settings(1, d1.path(), true);
    let addr1 = s1.advertise.clone();
    let n1 = ClusterNode::start(s1, Arc::new(SessionTable::new())).await.unwrap();
    until("node 1 ready", || n1.is_ready()).await;
    let n2 = ClusterNode::start(settings(2, d2.path(), false), Arc::new(SessionTable::new())).await.unwrap();
    n2.join(&addr1).await.unwrap();
    until("node 2 ready", || n2.is_ready()).await;

    // Registered on node 2 (a follower): committed, then node 1 knows it.
    n2.claim_domain(rec("irc.x", 2, 1)).await.unwrap();
    assert_eq!(n2.domains().get("irc.x"), Some(rec("irc.x", 2, 1)), "routable on node 2 once claimed");
    until("node 1 learns the domain", || n1.domains().get("irc.x").is_some()).await;

    // Node 1 cannot take it.
    match n1.claim_domain(rec("irc.x", 1, 7)).await {
        Err(DomainError::Taken(holder)) => assert_eq!(holder, rec("irc.x", 2, 1)),
        other => panic!("expected the domain to be taken, got {other:?}"),
    }
    // A node registers only for itself.
    assert!(n1.claim_domain(rec("other.x", 2, 1)).await.is_err());

    // Released on node 2: gone everywhere, and node 1 may take it.
    n2.release_domain(&rec("irc.x", 2, 1));
    until("the release reaches node 1", || n1.domains().get("irc.x").is_none()).await;
    n1.claim_domain(rec("irc.x", 1, 8)).await.unwrap();
    until("node 2 learns the new holder", || n2.domains().get("irc.x").map(|r| r.node) == Some(1)).await;

    // Node 2 leaves the cluster: its domains leave the table with it.
    n2.claim_domain(rec("pubsub.x", 2, 2)).await.unwrap();
    until("node 1 learns pubsub.x", || n1.domains().contains("pubsub.x")).await;
    n1.remove(2).await.unwrap();
    until("node 2's domains gone on node 1", || !n1.domains().contains("pubsub.x")).await;
    assert_eq!(n1.domains().export(), vec![rec("irc.x", 1, 8)]);

    n2.shutdown().await;
    n1.shutdown().await;
}
