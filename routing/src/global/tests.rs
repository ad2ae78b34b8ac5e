//! Two data centers in one process: two routers with fake sessions, real
//! links over loopback and the real Redis on 127.0.0.1:6379 (tests/run.sh
//! makes sure it runs). Each test uses its own global host, so runs do not
//! see each other's entries.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meerkat_cluster::{NodeId, SessionId, SessionInfo, SessionTable};
use meerkat_xmpp::element::Element;
use meerkat_xmpp::jid::{parse_full, parse_jid};

use super::*;
use crate::{KickReason, ServerHandler, ServerJob, SessionSink};

#[derive(Default)]
struct Sink {
    got: Mutex<Vec<Element>>,
}

impl SessionSink for Sink {
    fn deliver(&self, stanza: Element) -> Result<(), Element> {
        self.got.lock().unwrap().push(stanza);
        Ok(())
    }
    fn kick(&self, _reason: KickReason) {}
}

#[derive(Default)]
struct Server {
    jobs: Mutex<Vec<ServerJob>>,
}

impl ServerHandler for Server {
    fn submit(&self, job: ServerJob) -> Result<(), ServerJob> {
        self.jobs.lock().unwrap().push(job);
        Ok(())
    }
}

struct Dc {
    router: Arc<Router>,
    gd: Arc<GlobalDistrib>,
    server: Arc<Server>,
}

fn unique_host() -> String {
    format!("gd{}.example", rand::random::<u32>())
}

async fn dc(global: &str, local: &str) -> Dc {
    let router = Router::new(NodeId(1), vec![global.to_owned()], Arc::new(SessionTable::new()));
    let server = Arc::new(Server::default());
    router.set_server_handler(server.clone());
    let mut cfg = GlobalConfig::new(global, local);
    cfg.endpoints = vec!["127.0.0.1:0".parse().unwrap()];
    cfg.hosts_refresh_interval = Duration::from_millis(100);
    cfg.bounce_resend_after = Duration::from_millis(20);
    cfg.bounce_max_retries = 10;
    let gd = GlobalDistrib::start(cfg, &router).await.unwrap();
    Dc { router, gd, server }
}

fn login(dc: &Dc, jid: &str, sid: u64) -> Arc<Sink> {
    let info = SessionInfo {
        jid: parse_full(jid).unwrap(),
        node: NodeId(1),
        sid: SessionId(sid),
        priority: None,
        created_micros: chrono_micros(),
    };
    dc.router.sessions().open(info.clone());
    dc.router.sessions().set_priority(&info.jid, NodeId(1), info.sid, Some(0), sid);
    let sink = Arc::new(Sink::default());
    dc.router.register_session(&info, sink.clone());
    sink
}

fn logout(dc: &Dc, jid: &str, sid: u64) {
    dc.router.unregister_sink(SessionId(sid));
    dc.router.sessions().close(&parse_full(jid).unwrap(), NodeId(1), SessionId(sid));
}

fn chrono_micros() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64
}

fn send(dc: &Dc, from: &str, to: &str, n: u64) {
    let stanza = Element::new("message", "jabber:client")
        .with_attr("type", "chat")
        .with_attr("id", n.to_string())
        .with_attr("from", from)
        .with_attr("to", to);
    dc.router.route(Routed { from: parse_jid(from).unwrap(), to: parse_jid(to).unwrap(), stanza });
}

fn ids(sinks: &[&Arc<Sink>]) -> Vec<u64> {
    sinks
        .iter()
        .flat_map(|s| {
            s.got.lock().unwrap().iter().map(|e| e.attr("id").unwrap().parse().unwrap()).collect::<Vec<u64>>()
        })
        .collect()
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn linked(a: &Dc, b: &Dc) {
    let (la, lb) = (a.gd.config().local_host.clone(), b.gd.config().local_host.clone());
    until("links both ways", || {
        let up = |d: &Dc, other: &str| {
            d.gd.status().data_centers.iter().any(|s| s.local_host == other && s.links.iter().any(|l| l.connected))
        };
        up(a, &lb) && up(b, &la)
    })
    .await;
}

/// Nothing waits, is in flight or is unacknowledged in `dc`, on its links
/// included: no stanza it handled can still arrive anywhere.
fn idle(dc: &Dc) -> bool {
    let s = dc.gd.status();
    let q = &s.queues;
    q.pairs == 0
        && q.pending == 0
        && q.in_flight == 0
        && s.data_centers.iter().flat_map(|d| &d.links).all(|l| l.queued == 0 && l.unacked == 0)
}

/// Waits until `jid`'s entry is readable from the data center `dc`.
async fn readable_from(dc: &Dc, jid: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while dc.gd.table.lookup(jid).await.unwrap().is_none() {
        assert!(Instant::now() < deadline, "{jid} not in the table");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_cross_data_centers_in_order_and_follow_a_moving_user() {
    let g = unique_host();
    let a = dc(&g, &format!("dc1.{g}")).await;
    let b = dc(&g, &format!("dc2.{g}")).await;
    linked(&a, &b).await;
    let alice = format!("alice@{g}/phone");
    let bob_bare = format!("bob@{g}");
    let _alice_sink = login(&a, &alice, 1);
    let bob_on_b = login(&b, &format!("bob@{g}/laptop"), 2);
    readable_from(&a, &bob_bare).await;

    for n in 1..=200 {
        send(&a, &alice, &bob_bare, n);
    }
    until("200 at dc2", || bob_on_b.got.lock().unwrap().len() == 200).await;
    assert_eq!(ids(&[&bob_on_b]), (1..=200).collect::<Vec<u64>>());

    // bob leaves dc2; what alice sends meanwhile goes to dc2 (cached) and waits there.
    logout(&b, &format!("bob@{g}/laptop"), 2);
    for n in 201..=300 {
        send(&a, &alice, &bob_bare, n);
    }
    until("dc2 parks", || b.gd.stats.parked.load(Ordering::Relaxed) > 0).await;
    // bob arrives in dc1; alice keeps sending, now to a local user.
    let bob_on_a = login(&a, &format!("bob@{g}/phone"), 3);
    for n in 301..=400 {
        send(&a, &alice, &bob_bare, n);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while ids(&[&bob_on_b, &bob_on_a]).len() < 400 {
        if Instant::now() > deadline {
            panic!(
                "not all arrived: dc2 {:?}\n dc1 {:?}\n a {:#?}\n b {:#?}\n jobs a {:?} b {:?}",
                ids(&[&bob_on_b]).len(),
                ids(&[&bob_on_a]),
                a.gd.status(),
                b.gd.status(),
                a.server.jobs.lock().unwrap().len(),
                b.server.jobs.lock().unwrap().len()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A copy sent twice would still be queued, in flight or unacknowledged somewhere.
    until("both data centers idle", || idle(&a) && idle(&b) && idle(&a)).await;
    assert_eq!(ids(&[&bob_on_b, &bob_on_a]), (1..=400).collect::<Vec<u64>>(), "exactly once, in order");
    assert!(a.server.jobs.lock().unwrap().is_empty(), "nothing went to offline storage");
    assert!(b.server.jobs.lock().unwrap().is_empty(), "nothing went to offline storage");
    a.gd.stop().await;
    b.gd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_offline_everywhere_gets_offline_storage_in_the_senders_data_center() {
    let g = unique_host();
    let a = dc(&g, &format!("dc1.{g}")).await;
    let alice = format!("alice@{g}/phone");
    let _s = login(&a, &alice, 1);
    send(&a, &alice, &format!("nobody@{g}"), 1);
    until("offline job", || !a.server.jobs.lock().unwrap().is_empty()).await;
    assert!(matches!(a.server.jobs.lock().unwrap()[0], ServerJob::Undelivered(_)));
    a.gd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recipient_missing_while_the_table_is_written_again_is_waited_for_not_stored_offline() {
    let g = unique_host();
    let a = dc(&g, &format!("dc1.{g}")).await;
    let b = dc(&g, &format!("dc2.{g}")).await;
    linked(&a, &b).await;
    let alice = format!("alice@{g}/phone");
    let (bob_full, bob_bare) = (format!("bob@{g}/laptop"), format!("bob@{g}"));
    let _alice_sink = login(&a, &alice, 1);
    let bob_on_b = login(&b, &bob_full, 2);
    readable_from(&a, &bob_bare).await;
    // Redis lost bob's entry (as after a restart without persistence) and
    // dc1 noticed; dc2 has not written it again yet.
    let start = b.router.sessions().get(&parse_full(&bob_full).unwrap()).unwrap().created_micros;
    b.gd.table.unpublish(&[bob_full.clone(), bob_bare.clone()]).await.unwrap();
    a.gd.table_settling();
    for n in 1..=20 {
        send(&a, &alice, &bob_bare, n);
    }
    until("dc1 to wait for the table", || a.gd.stats.parked.load(Ordering::Relaxed) > 0).await;
    assert!(a.server.jobs.lock().unwrap().is_empty(), "stored offline while the table was being written again");
    b.gd.table.publish(&[(bob_full, start), (bob_bare, start)]).await.unwrap();
    until("20 at dc2", || bob_on_b.got.lock().unwrap().len() == 20).await;
    until("both data centers idle", || idle(&a) && idle(&b) && idle(&a)).await;
    assert_eq!(ids(&[&bob_on_b]), (1..=20).collect::<Vec<u64>>(), "exactly once, in order");
    assert!(a.server.jobs.lock().unwrap().is_empty(), "nothing went to offline storage");
    a.gd.stop().await;
    b.gd.stop().await;
}
