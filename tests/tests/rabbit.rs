//! The event pusher's rabbit backend against the machine's RabbitMQ
//! (127.0.0.1:5672, guest/guest): presence and chat events reach a consumer
//! bound to the exchanges with MongooseIM's routing keys and JSON; then
//! RabbitMQ's application is stopped while a user writes, and started again:
//! every event queued meanwhile arrives. One test, since it stops the broker.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use lapin::message::{Delivery, DeliveryResult};
use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use meerkat_tests::node::NodeOptions;
use meerkat_tests::{login, TestNode};
use serde_json::Value;
use tokio::sync::mpsc;

const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// A node publishing to exchanges named after `tag`, durable or not.
fn node(tag: &str, durable: bool) -> TestNode {
    let node = TestNode::start_with(NodeOptions {
        extra_toml: format!(
            "[outgoing_pools.rabbit.event_pusher]\nqueue = 1000\n\
             [outgoing_pools.rabbit.event_pusher.connection]\nhost = \"127.0.0.1\"\nport = 5672\n\
             username = \"guest\"\npassword = \"guest\"\nconfirms_enabled = true\n\n\
             [modules.mod_event_pusher]\nenabled = true\n\
             [modules.mod_event_pusher.rabbit]\n\
             presence_exchange = {{ name = \"presence_{tag}\", durable = {durable} }}\n\
             chat_msg_exchange = {{ name = \"chat_msg_{tag}\", durable = {durable}, sent_topic = \"chat_msg_sent\", recv_topic = \"chat_msg_recv\" }}\n\
             groupchat_msg_exchange = {{ name = \"groupchat_msg_{tag}\", durable = {durable}, sent_topic = \"groupchat_msg_sent\", recv_topic = \"groupchat_msg_recv\" }}\n"
        ),
        ..Default::default()
    });
    node.add_user("alice", "secret");
    node.add_user("bob", "secret");
    node
}

/// A consumer of a queue bound to both exchanges of `tag` with `#`; its deliveries.
async fn consumer(tag: &str, durable: bool) -> (Connection, mpsc::UnboundedReceiver<Delivery>) {
    let conn = Connection::connect(AMQP, ConnectionProperties::default()).await.expect("RabbitMQ on 127.0.0.1:5672");
    let ch = conn.create_channel().await.unwrap();
    let queue = format!("events_{tag}");
    let q = QueueDeclareOptions { durable, exclusive: !durable, auto_delete: !durable, ..Default::default() };
    ch.queue_declare(queue.as_str().into(), q, FieldTable::default()).await.unwrap();
    for ex in [format!("presence_{tag}"), format!("chat_msg_{tag}")] {
        let opts = ExchangeDeclareOptions { durable, ..Default::default() };
        ch.exchange_declare(ex.as_str().into(), ExchangeKind::Topic, opts, FieldTable::default()).await.unwrap();
        ch.queue_bind(
            queue.as_str().into(),
            ex.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    }
    let opts = BasicConsumeOptions { no_ack: true, ..Default::default() };
    let c = ch.basic_consume(queue.as_str().into(), "meerkat-test".into(), opts, FieldTable::default()).await.unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    c.set_delegate(move |delivery: DeliveryResult| {
        let tx = tx.clone();
        async move {
            if let Ok(Some(d)) = delivery {
                let _ = tx.send(d);
            }
        }
    });
    (conn, rx)
}

/// The next event: (exchange, routing key, JSON payload).
async fn next(c: &mut mpsc::UnboundedReceiver<Delivery>) -> (String, String, Value) {
    let d = tokio::time::timeout(Duration::from_secs(30), c.recv())
        .await
        .expect("an event within 30 s")
        .expect("the consumer is open");
    let payload = serde_json::from_slice(&d.data).unwrap();
    (d.exchange.to_string(), d.routing_key.to_string(), payload)
}

/// Starts RabbitMQ's application when dropped (a no-op when it runs).
struct StartAppOnDrop;

impl Drop for StartAppOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl").arg("start_app").output();
    }
}

fn rabbitmqctl(arg: &str) {
    let out = Command::new("rabbitmqctl").arg(arg).output().expect("rabbitmqctl (Debian's rabbitmq-server)");
    assert!(out.status.success(), "rabbitmqctl {arg}: {}", String::from_utf8_lossy(&out.stderr));
}

// Several threads: the consumer's connection keeps running while the test
// blocks on the node's start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_rabbitmq_and_none_is_lost_while_it_restarts() {
    // RabbitMQ may still be starting (after an earlier run of this test).
    rabbitmqctl("await_startup");
    // Presence and chat events, with MongooseIM's routing keys and payloads.
    let tag = format!("t{:08x}", rand::random::<u32>());
    let (_conn, mut events) = consumer(&tag, false).await;
    let n = node(&tag, false);
    let mut alice = login(&n, "alice", "secret", "a").await;
    let mut bob = login(&n, "bob", "secret", "b").await;
    for c in [&mut alice, &mut bob] {
        c.send_str("<presence/>").await.unwrap();
    }
    alice.send_str("<message to='bob@localhost' type='chat'><body>hi bob</body></message>").await.unwrap();
    alice.send_str("<message to='bob@localhost' type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>").await.unwrap();
    alice.close().await.unwrap();
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(next(&mut events).await);
    }
    let presence = format!("presence_{tag}");
    let chat = format!("chat_msg_{tag}");
    let find = |key: &str| got.iter().filter(|(_, k, _)| k == key).cloned().collect::<Vec<_>>();
    let alice_presence = find("alice@localhost");
    assert_eq!(alice_presence.len(), 2, "alice online and offline: {got:?}");
    assert_eq!(alice_presence[0].0, presence);
    assert_eq!(alice_presence[0].2, serde_json::json!({"user_id": "alice@localhost/a", "present": true}));
    assert_eq!(alice_presence[1].2, serde_json::json!({"user_id": "alice@localhost/a", "present": false}));
    assert_eq!(find("bob@localhost").len(), 1, "bob online: {got:?}");
    let message =
        serde_json::json!({"from_user_id": "alice@localhost/a", "to_user_id": "bob@localhost", "message": "hi bob"});
    for key in ["alice@localhost.chat_msg_sent", "bob@localhost.chat_msg_recv"] {
        let e = find(key);
        assert_eq!(e.len(), 1, "{key}: {got:?}");
        assert_eq!((e[0].0.as_str(), &e[0].2), (chat.as_str(), &message));
    }
    drop(n);

    // Durable exchanges and queue, and RabbitMQ's application stopped while
    // alice writes: the events wait in the node and all arrive afterwards.
    let tag = format!("d{:08x}", rand::random::<u32>());
    let (conn, consumer_before) = consumer(&tag, true).await;
    drop(consumer_before);
    let _ = conn.close(200, "bye".into()).await;
    let n = node(&tag, true);
    let mut alice = login(&n, "alice", "secret", "a").await;
    rabbitmqctl("stop_app");
    // RabbitMQ's application runs again however this test ends.
    let _restart = StartAppOnDrop;
    const N: usize = 20;
    for i in 0..N {
        alice.send_str(&format!("<message to='bob@localhost' type='chat'><body>m{i}</body></message>")).await.unwrap();
    }
    // A round trip: the node has taken every message (and queued its events).
    alice.iq_xml("<iq type='get' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>").await.unwrap();
    rabbitmqctl("start_app");
    rabbitmqctl("await_startup");
    let (conn, mut events) = consumer(&tag, true).await;
    let mut bodies: HashMap<String, usize> = HashMap::new();
    while bodies.len() < N {
        let (_, key, v) = next(&mut events).await;
        if key == "alice@localhost.chat_msg_sent" {
            *bodies.entry(v["message"].as_str().unwrap().to_owned()).or_default() += 1;
        }
    }
    assert!((0..N).all(|i| bodies.contains_key(&format!("m{i}"))), "{bodies:?}");
    // The node did see RabbitMQ go: a publish failed and it reconnected.
    let (_, metrics) = n.api("GET", "/metrics", None);
    let metrics = metrics.as_str().unwrap_or_default().to_owned();
    let value = |name: &str| -> f64 {
        let prefix = format!("{name}{{backend=\"rabbit\",pool=\"event_pusher\"}} ");
        metrics.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|v| v.parse().ok()).unwrap_or(-1.0)
    };
    assert!(value("meerkat_event_pusher_failed_total") >= 1.0, "{metrics}");
    assert_eq!(value("meerkat_event_pusher_connected"), 1.0, "{metrics}");
    assert_eq!(value("meerkat_event_pusher_dropped_total"), 0.0, "{metrics}");
    // Clean up what is durable.
    let ch = conn.create_channel().await.unwrap();
    ch.queue_delete(format!("events_{tag}").as_str().into(), QueueDeleteOptions::default()).await.unwrap();
    for ex in ["presence", "chat_msg", "groupchat_msg"] {
        ch.exchange_delete(format!("{ex}_{tag}").as_str().into(), ExchangeDeleteOptions::default()).await.unwrap();
    }
}
