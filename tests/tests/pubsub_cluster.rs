//! PubSub in a three-node cluster whose node owner dies: node `news…` is
//! owned by member 3 (a hash of the service and node over the live
//! members). Alice on member 1 publishes 60 items one after another, each
//! sent again when it got an error (as a client does), Bob on member 2 is
//! subscribed; after the 20th, member 3 is SIGKILLed. Every item is then
//! stored, once and in order, and the ones published after the next owner
//! took over reach Bob.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use meerkat_cluster::placement::rendezvous;
use meerkat_cluster::NodeId;
use meerkat_tests::cluster::{Placement, SharedDb, TestCluster};
use meerkat_tests::{login, Client};
use meerkat_xmpp::element::Element;

const PW: &str = "pw";
const SERVICE: &str = "pubsub.localhost";
const PUBSUB: &str = "http://jabber.org/protocol/pubsub";
const EVENT: &str = "http://jabber.org/protocol/pubsub#event";
const N: usize = 60;

async fn publish_until_stored(alice: &mut Client, node: &str, i: usize) -> usize {
    let mut attempts = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        attempts += 1;
        let res = alice
            .iq_xml(&format!(
                "<iq type='set' to='{SERVICE}'><pubsub xmlns='{PUBSUB}'><publish node='{node}'>\
                 <item id='i{i}'><n xmlns='urn:example'>{i}</n></item></publish></pubsub></iq>"
            ))
            .await
            .unwrap();
        if res.attr("type") == Some("result") {
            return attempts;
        }
        assert!(tokio::time::Instant::now() < deadline, "item {i} never stored: {res}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_owner_loses_no_item() {
    let all = [NodeId(1), NodeId(2), NodeId(3)];
    let node = (0..100)
        .map(|i| format!("news{i}"))
        .find(|n| rendezvous(&format!("{SERVICE}\u{0}{n}"), &all) == Some(NodeId(3)))
        .unwrap();
    let toml = format!("[modules.mod_pubsub]\nenabled = true\nmax_items_per_node = {}\n", N * 2);
    let mut cluster = tokio::task::spawn_blocking(move || {
        let nodes = (0..3).map(|_| (Placement::loopback(), toml.clone())).collect();
        TestCluster::start_configured(SharedDb::postgres(), nodes)
    })
    .await
    .unwrap();
    for u in ["alice", "bob"] {
        cluster.add_user(u, PW);
    }
    let mut alice = login(&cluster.nodes[0], "alice", PW, "desk").await;
    let mut bob = login(&cluster.nodes[1], "bob", PW, "desk").await;
    let create =
        format!("<iq type='set' to='{SERVICE}'><pubsub xmlns='{PUBSUB}'><create node='{node}'/></pubsub></iq>");
    assert_eq!(alice.iq_xml(&create).await.unwrap().attr("type"), Some("result"));
    let sub = format!(
        "<iq type='set' to='{SERVICE}'><pubsub xmlns='{PUBSUB}'><subscribe node='{node}' jid='bob@localhost/desk'/></pubsub></iq>"
    );
    assert_eq!(bob.iq_xml(&sub).await.unwrap().attr("type"), Some("result"));

    let mut retried = 0;
    for i in 0..N {
        if i == 20 {
            cluster.nodes[2].kill();
        }
        retried += publish_until_stored(&mut alice, &node, i).await - 1;
    }
    eprintln!("{retried} publishes sent again after member 3 died");

    // Every item, once, in publication order.
    let items = alice
        .iq_xml(&format!("<iq type='get' to='{SERVICE}'><pubsub xmlns='{PUBSUB}'><items node='{node}'/></pubsub></iq>"))
        .await
        .unwrap();
    let ids: Vec<String> = items
        .get_child("pubsub", PUBSUB)
        .and_then(|p| p.get_child("items", PUBSUB))
        .map(|l| l.elements().filter_map(|e| e.attr("id").map(str::to_owned)).collect())
        .unwrap_or_default();
    let expected: Vec<String> = (0..N).map(|i| format!("i{i}")).collect();
    assert_eq!(ids, expected, "{items}\n--- member 1 ---\n{}", cluster.nodes[0].log());

    // Bob heard of the last items, published after the next owner took over.
    let mut last = None;
    while last.as_deref() != Some(format!("i{}", N - 1).as_str()) {
        let m = bob
            .recv_until(|e| e.name == "message" && e.get_child("event", EVENT).is_some())
            .await
            .unwrap_or_else(|e| panic!("bob: {e}; last event {last:?}"));
        last = m
            .get_child("event", EVENT)
            .and_then(|e| e.elements().next().cloned())
            .and_then(|items: Element| items.elements().next().and_then(|i| i.attr("id").map(str::to_owned)));
    }
}
