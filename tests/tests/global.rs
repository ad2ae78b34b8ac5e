//! Global distribution across two data centers of two real nodes each
//! (`meerkat_tests::global::TestGlobal`): presence and messages across data
//! centers with slixmpp, a user moving between data centers while a stream
//! of messages flows to him, the links cut for 5 s, Redis killed and
//! restarted, a check that the routing table code uses no Redis command
//! that Dynomite lacks, and the links over mutual TLS, refusing a
//! certificate from another CA.
//!
//! The tests that start nodes run one at a time (each starts four nodes,
//! Redis and four proxies). Run with
//! `cargo build -p meerkat-node -p meerkat-tests && cargo test -p meerkat-tests --test global`.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use meerkat_tests::global::{
    check_sequence, converse, drain, flush, largest_gap, Captured, Cut, GlobalOptions, LinkTls, Outgoing, Seen,
    TestGlobal, GLOBAL_HOST, NODES_PER_DC,
};
use meerkat_tests::stream::{numbered, read_until_quiet};
use meerkat_tests::{wait_until, Client, TestNode};
use meerkat_xmpp::element::Element;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use serde_json::Value;
use tokio::time::Instant;

const PW: &str = "secret";

/// Tests that start nodes take turns: eight nodes at once on a small machine
/// would turn timing assertions into load tests.
static NODES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    NODES.lock().await
}

async fn start() -> TestGlobal {
    tokio::task::spawn_blocking(TestGlobal::start).await.unwrap()
}

async fn start_with(opts: GlobalOptions) -> TestGlobal {
    tokio::task::spawn_blocking(move || TestGlobal::start_with(opts)).await.unwrap()
}

fn bare(user: &str) -> String {
    format!("{user}@{GLOBAL_HOST}")
}

async fn login_at(node: &TestNode, user: &str, resource: &str) -> Client {
    match Client::login(node.c2s, GLOBAL_HOST, user, PW, Some(resource)).await {
        Ok(c) => c,
        Err(e) => panic!("login of {user}/{resource} at {} failed: {e}", node.c2s),
    }
}

async fn online_at(node: &TestNode, user: &str, resource: &str) -> Client {
    let mut c = login_at(node, user, resource).await;
    if let Err(e) = c.go_online(Some(1)).await {
        panic!("initial presence of {user}/{resource}: {e}");
    }
    c
}

fn presence_from<'a>(from: &'a str, kind: Option<&'a str>) -> impl Fn(&Element) -> bool + 'a {
    move |el| el.name == "presence" && el.attr("from") == Some(from) && el.attr("type") == kind
}

fn counters_report(g: &TestGlobal) -> String {
    [
        "forwarded",
        "received",
        "duplicates",
        "delivered_here",
        "bounces",
        "bounce_expired",
        "resends",
        "requeued",
        "lookups",
        "learned",
    ]
    .iter()
    .map(|c| format!("{c}={}", g.counter(c)))
    .collect::<Vec<_>>()
    .join(" ")
}

fn assert_stream(seen: &Seen, prefix: &str, n: u64, who: &str) {
    if let Err(e) = check_sequence(&seen.numbers(prefix), n) {
        panic!("{who}, stream {prefix:?}: {e}");
    }
}

fn assert_nothing_unexpected(seen: &Seen, who: &str) {
    assert!(seen.unexpected.is_empty(), "{who} got unexpected stanzas or errors: {:#?}", seen.unexpected);
}

// ------------------------------------------------------------------ a

fn python() -> PathBuf {
    let venv =
        std::env::var_os("MEERKAT_VENV").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/var/tmp/meerkat-venv"));
    let py = venv.join("bin/python");
    assert!(py.is_file(), "{} is missing: run ./tests/run.sh, which installs slixmpp there", py.display());
    py
}

/// Kills the slixmpp process if the test ends before it does.
struct KillOnDrop(u32, std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if !self.1.load(std::sync::atomic::Ordering::SeqCst) {
            let _ = Command::new("kill").arg("-KILL").arg(self.0.to_string()).status();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_dcs_presence_and_1000_messages_each_way() {
    const N: u64 = 1000;
    let _turn = one_at_a_time().await;
    let g = start().await;
    g.add_user("alice", PW);
    g.add_user("bob", PW);
    let mut bob = online_at(g.node(1, 0), "bob", "phone").await;
    g.wait_table_says(&bare("bob"), 1, Duration::from_secs(10));

    // alice is slixmpp, given her JID and a DC1 node's address, nothing else.
    let alice_node = g.node(0, 0);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/global_alice.py");
    let child = Command::new(python())
        .arg(&script)
        .args(["--host", "127.0.0.1", "--port", &alice_node.c2s.port().to_string(), "--domain", GLOBAL_HOST])
        .arg("--ca")
        .arg(alice_node.cert_path())
        .args(["--peer", &bare("bob"), "--password", PW, "--count", &N.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running the slixmpp alice");
    let finished = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let _kill = KillOnDrop(child.id(), finished.clone());
    let alice_done = tokio::task::spawn_blocking(move || {
        let out = child.wait_with_output();
        finished.store(true, std::sync::atomic::Ordering::SeqCst);
        out
    });

    // bob approves alice's request and asks back; each then sees the other available.
    let alice = bare("alice");
    let long = Duration::from_secs(60);
    bob.recv_until_timeout(long, presence_from(&alice, Some("subscribe"))).await.expect("alice's subscription request");
    bob.send_str(&format!("<presence to='{alice}' type='subscribed'/>")).await.unwrap();
    bob.send_str(&format!("<presence to='{alice}' type='subscribe'/>")).await.unwrap();
    bob.recv_until_timeout(long, presence_from(&alice, Some("subscribed"))).await.expect("alice approves bob");
    let alice_full = format!("{alice}/slixmpp");
    bob.recv_until_timeout(long, presence_from(&alice_full, None)).await.expect("alice's available presence at bob");

    let started = Instant::now();
    let (mut bob, mut seen) = converse(
        bob,
        vec![Outgoing { to: alice.clone(), prefix: "b2a".into(), count: N }],
        Duration::from_millis(1),
        vec![("a2b".into(), N)],
        Instant::now() + Duration::from_secs(120),
    )
    .await;
    bob.send_message(&alice, "b2a end").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !seen.ends.iter().any(|p| p == "a2b") && Instant::now() < deadline {
        match bob.recv_timeout(deadline - Instant::now()).await {
            Ok(el) => {
                seen.record(&el);
            }
            Err(e) => panic!("bob waiting for alice's end marker: {e}"),
        }
    }
    let elapsed = started.elapsed();

    let out = alice_done.await.unwrap().expect("waiting for the slixmpp alice");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "slixmpp alice failed ({}):\n{stdout}\n{stderr}", out.status);
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("JSON summary");
    assert_eq!(summary["mechanism"], "SCRAM-SHA-256", "{summary}");
    assert_eq!(summary["received_in_order"], N, "{summary}");
    assert_eq!(summary["bound"], alice_full.as_str(), "{summary}");

    g.settle(&mut bob, &mut seen).await;
    assert_stream(&seen, "a2b", N, "bob");
    assert_eq!(seen.ends, vec!["a2b".to_owned()], "end markers at bob");
    assert_eq!(
        seen.senders.get("a2b").cloned().unwrap_or_default().into_iter().collect::<Vec<_>>(),
        vec![alice_full.clone()],
        "every message to bob comes from alice's full JID"
    );
    assert_nothing_unexpected(&seen, "bob");
    // The traffic crossed between the data centers rather than staying in one.
    let forwarded = g.counter("forwarded");
    assert!(forwarded >= 2 * N, "only {forwarded} stanzas were forwarded between the data centers");
    // The same figures reach Prometheus.
    let (code, text) = g.node(0, 0).api("GET", "/metrics", None);
    assert_eq!(code, 200, "GET /metrics: {text}");
    let text = text.as_str().unwrap_or_default().to_owned();
    let value = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{text}"))
    };
    assert!(value("meerkat_global_forwarded_total ") > 0.0);
    assert_eq!(value("meerkat_global_link_connected{dc=\"dc2.example.com\""), 1.0);
    assert_eq!(value("meerkat_global_redis_reachable "), 1.0);
    eprintln!(
        "a: {N} messages each way between slixmpp alice (dc1) and bob (dc2) in {elapsed:?}; {}",
        counters_report(&g)
    );
}

// ------------------------------------------------------------------ b

/// alice (dc1 node 1) sends a numbered stream to bob's bare JID; bob starts
/// on (`from_dc`, `from_node`), leaves gracefully after a few hundred, the
/// data center he left rewrites its entries, and he comes back on
/// (`to_dc`, `to_node`). He must get every number exactly once, in order.
async fn migration(from: (usize, usize), to: (usize, usize)) {
    const N: u64 = 1500;
    const BEFORE_MOVE: usize = 300;
    let g = start().await;
    g.add_user("alice", PW);
    g.add_user("bob", PW);
    let bob_jid = bare("bob");
    let mut bob1 = online_at(g.node(from.0, from.1), "bob", "first").await;
    g.wait_table_says(&bob_jid, from.0, Duration::from_secs(10));
    let alice = online_at(g.node(0, 0), "alice", "a").await;
    g.wait_table_says(&bare("alice"), 0, Duration::from_secs(10));

    let alice_task = tokio::spawn(converse(
        alice,
        vec![Outgoing { to: bob_jid.clone(), prefix: "m".into(), count: N }],
        Duration::from_millis(5),
        vec![],
        Instant::now() + Duration::from_secs(60),
    ));

    let mut seen = Seen::default();
    while seen.count("m") < BEFORE_MOVE {
        let el = bob1.recv_timeout(Duration::from_secs(10)).await.expect("bob's first session receives");
        seen.record(&el);
    }
    // A graceful close: our closing tag, then whatever the server still sends until it closes.
    bob1.close().await.unwrap();
    loop {
        match bob1.recv_timeout(Duration::from_secs(10)).await {
            Ok(el) => {
                seen.record(&el);
            }
            Err(meerkat_tests::ClientError::Closed) | Err(meerkat_tests::ClientError::Io(_)) => break,
            Err(e) => panic!("bob's first session did not close: {e}"),
        }
    }
    let in_first = seen.count("m");
    // The data center he left runs its refresher between his leaving and his arrival.
    for i in 0..g.dcs[from.0].nodes.len() {
        g.refresh(from.0, i);
    }
    let mut bob2 = login_at(g.node(to.0, to.1), "bob", "second").await;
    bob2.go_online(Some(1)).await.expect("bob's second session goes online");
    let deadline = Instant::now() + Duration::from_secs(60);
    while (seen.count("m") as u64) < N && Instant::now() < deadline {
        match bob2.recv_timeout(deadline - Instant::now()).await {
            Ok(el) => {
                seen.record(&el);
            }
            Err(meerkat_tests::ClientError::Timeout) => break,
            Err(e) => panic!("bob's second session: {e}"),
        }
    }
    g.settle(&mut bob2, &mut seen).await;
    let (_alice, alice_seen) = alice_task.await.unwrap();
    eprintln!(
        "b: bob dc{}/{} -> dc{}/{}: {in_first} in the first session, {} in the second ({} with a delay stamp); bounces (parked) {}; {}",
        from.0 + 1,
        from.1 + 1,
        to.0 + 1,
        to.1 + 1,
        seen.count("m") - in_first,
        seen.delayed.len(),
        g.counter_text("bounces"),
        counters_report(&g)
    );
    assert_nothing_unexpected(&alice_seen, "alice");
    assert_eq!(alice_seen.sent_at.get("m").map_or(0, Vec::len) as u64, N, "alice sent everything");
    if let Err(e) = check_sequence(&seen.numbers("m"), N) {
        // Where did they go? A third session shows what was left in offline storage.
        let _ = bob2.close().await;
        let mut bob3 = login_at(g.node(to.0, to.1), "bob", "third").await;
        bob3.go_online(Some(1)).await.expect("bob's third session goes online");
        let mut leftover = Seen::default();
        drain(&mut bob3, &mut leftover, Duration::from_secs(2)).await;
        let second: Vec<String> = seen
            .numbers("m")
            .iter()
            .skip(in_first)
            .take(40)
            .map(|n| if seen.delayed.contains(n) { format!("{n}*") } else { n.to_string() })
            .collect();
        panic!(
            "bob, stream \"m\": {e}\nthe second session began with (* = delay stamp, from offline storage) {}\n\
             what a third session then got ({} with a delay stamp): {:?}\nper node: delivered_here {}; received {}",
            second.join(" "),
            leftover.delayed.len(),
            leftover.numbers("m"),
            g.counter_text("delivered_here"),
            g.counter_text("received"),
        );
    }
    assert_nothing_unexpected(&seen, "bob");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_keeps_every_message_in_order() {
    let _turn = one_at_a_time().await;
    // From dc2 to alice's data center (dc1), onto the node alice is not on.
    migration((1, 0), (0, 1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_from_dc1_to_dc2_keeps_every_message_in_order() {
    let _turn = one_at_a_time().await;
    migration((0, 1), (1, 1)).await;
}

// ------------------------------------------------------------------ c

/// alice (dc1) and bob (dc2) exchange numbered messages both ways while
/// every link between the data centers is cut for 5 s, as `how` says.
async fn link_cut(how: Cut) {
    const N: u64 = 2000;
    let g = start().await;
    g.add_user("alice", PW);
    g.add_user("bob", PW);
    let alice = online_at(g.node(0, 0), "alice", "a").await;
    let bob = online_at(g.node(1, 1), "bob", "b").await;
    g.wait_table_says(&bare("alice"), 0, Duration::from_secs(10));
    g.wait_table_says(&bare("bob"), 1, Duration::from_secs(10));

    let every = Duration::from_millis(4);
    let deadline = Instant::now() + Duration::from_secs(90);
    let a = tokio::spawn(converse(
        alice,
        vec![Outgoing { to: bare("bob"), prefix: "a2b".into(), count: N }],
        every,
        vec![("b2a".into(), N)],
        deadline,
    ));
    let b = tokio::spawn(converse(
        bob,
        vec![Outgoing { to: bare("alice"), prefix: "b2a".into(), count: N }],
        every,
        vec![("a2b".into(), N)],
        deadline,
    ));

    wait_until("300 frames acknowledged across the links", Duration::from_secs(20), || g.link_sum("acked") >= 300);
    let resent_before = g.link_sum("resent");
    g.cut_links(how);
    let cut_at = Instant::now();
    // Watch the links for the 5 s of the cut: frames pile up in queues or wait
    // unacknowledged. The cut's length is the fault under test (longer than a
    // link's 3 s of silence before it is declared dead), not a wait for an event.
    let mut backlog_during_cut = 0;
    let mut disconnected_seen = false;
    while cut_at.elapsed() < Duration::from_secs(5) {
        backlog_during_cut = backlog_during_cut.max(g.link_sum("queued") + g.link_sum("unacked"));
        disconnected_seen |= g.all_nodes().any(|(d, i, _)| !g.linked(d, i));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    g.heal_links();
    let healed_at = Instant::now();
    g.wait_linked(Duration::from_secs(20));
    let relinked_after = healed_at.elapsed();

    let (mut alice, mut at_alice) = a.await.unwrap();
    let (mut bob, mut at_bob) = b.await.unwrap();
    g.settle(&mut alice, &mut at_alice).await;
    g.settle(&mut bob, &mut at_bob).await;
    let resent = g.link_sum("resent") - resent_before;
    let stopped: u64 = g
        .dcs
        .iter()
        .flat_map(|d| d.proxies.iter())
        .map(|p| p.cut_stopped.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    let (stall, _) = largest_gap(at_bob.streams.get("a2b").map_or(&[][..], Vec::as_slice), cut_at, Instant::now());
    eprintln!(
        "c ({how:?}): links cut 5 s ({stopped} connections stopped), linked again {relinked_after:?} after the heal; \
         largest gap at bob {stall:?}; during the cut up to {backlog_during_cut} frames queued or unacknowledged; \
         {resent} frames resent; {}",
        counters_report(&g)
    );
    assert!(stopped > 0, "the cut stopped no connection: the links do not go through the proxies");
    assert!(disconnected_seen, "the admin API never showed a link down during the cut");
    assert!(
        resent > 0 || backlog_during_cut > 0,
        "/api/global showed neither resent nor queued frames: the cut did not bite"
    );
    assert_stream(&at_bob, "a2b", N, "bob");
    assert_stream(&at_alice, "b2a", N, "alice");
    assert_nothing_unexpected(&at_bob, "bob");
    assert_nothing_unexpected(&at_alice, "alice");
}

/// A partition: the connections stay open but carry nothing, so frames die
/// in flight and the senders find out from the silence, then resend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_cut_for_5s_loses_and_duplicates_nothing() {
    let _turn = one_at_a_time().await;
    link_cut(Cut::Freeze).await;
}

/// The connections are closed at the cut, and new ones black-holed for 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_closed_for_5s_lose_and_duplicate_nothing() {
    let _turn = one_at_a_time().await;
    link_cut(Cut::Close).await;
}

// ------------------------------------------------------------------ d

/// Redis is killed during traffic and restarted empty on the same port:
/// - alice and carol (both dc1) keep talking through the outage;
/// - alice (dc1) and bob (dc2) keep talking too: each message tells the
///   receiving data center where its sender is, so their caches stay warm;
/// - eve logs in on dc2 while Redis is down and starts talking with frank
///   (dc1): neither data center can know where the other is until Redis is
///   back and refilled, so their messages wait (bounce) and must flow, in
///   order, within 10 s of the restart, with no manual step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_keeps_dc_traffic_and_recovers() {
    const N: u64 = 1500;
    const LATE: u64 = 500;
    let _turn = one_at_a_time().await;
    let mut g = start().await;
    for u in ["alice", "bob", "carol", "eve", "frank"] {
        g.add_user(u, PW);
    }
    let alice = online_at(g.node(0, 0), "alice", "a").await;
    let carol = online_at(g.node(0, 1), "carol", "c").await;
    let frank = online_at(g.node(0, 1), "frank", "f").await;
    let bob = online_at(g.node(1, 0), "bob", "b").await;
    for (u, dc) in [("alice", 0), ("carol", 0), ("frank", 0), ("bob", 1)] {
        g.wait_table_says(&bare(u), dc, Duration::from_secs(10));
    }

    let every = Duration::from_millis(10);
    let deadline = Instant::now() + Duration::from_secs(90);
    let a = tokio::spawn(converse(
        alice,
        vec![
            Outgoing { to: bare("carol"), prefix: "a2c".into(), count: N },
            Outgoing { to: bare("bob"), prefix: "a2b".into(), count: N },
        ],
        every / 2,
        vec![("c2a".into(), N), ("b2a".into(), N)],
        deadline,
    ));
    let c = tokio::spawn(converse(
        carol,
        vec![Outgoing { to: bare("alice"), prefix: "c2a".into(), count: N }],
        every,
        vec![("a2c".into(), N)],
        deadline,
    ));
    let b = tokio::spawn(converse(
        bob,
        vec![Outgoing { to: bare("alice"), prefix: "b2a".into(), count: N }],
        every,
        vec![("a2b".into(), N)],
        deadline,
    ));

    wait_until("200 frames acknowledged across the links", Duration::from_secs(20), || g.link_sum("acked") >= 200);
    g.redis.kill();
    let killed_at = Instant::now();
    // Every node notices (its health check runs every second).
    wait_until("every node to see Redis unreachable", Duration::from_secs(10), || {
        g.all_nodes().all(|(d, i, _)| g.status(d, i)["redis"]["reachable"] == Value::Bool(false))
    });
    // eve arrives in dc2 while Redis is down, and she and frank start talking.
    let eve = online_at(g.node(1, 1), "eve", "e").await;
    let f = tokio::spawn(converse(
        frank,
        vec![Outgoing { to: bare("eve"), prefix: "f2e".into(), count: LATE }],
        every,
        vec![("e2f".into(), LATE)],
        deadline,
    ));
    let e = tokio::spawn(converse(
        eve,
        vec![Outgoing { to: bare("frank"), prefix: "e2f".into(), count: LATE }],
        every,
        vec![("f2e".into(), LATE)],
        deadline,
    ));
    // Redis stays down 3 s in all: the outage's length is the fault under test
    // (traffic in dc1 and alice<->bob must not stall during it), not a wait for an event.
    tokio::time::sleep_until(killed_at + Duration::from_secs(3)).await;
    let parked_before_restart = g.counter("bounces");
    g.redis.restart();
    let restarted_at = Instant::now();
    // The nodes write their entries again by themselves: no refresh call.
    for (u, dc) in [("alice", 0), ("carol", 0), ("frank", 0), ("bob", 1), ("eve", 1)] {
        g.wait_table_says(&bare(u), dc, Duration::from_secs(10));
    }
    let table_back_after = restarted_at.elapsed();
    wait_until("every node to see Redis reachable", Duration::from_secs(10), || {
        g.all_nodes().all(|(d, i, _)| g.status(d, i)["redis"]["reachable"] == Value::Bool(true))
    });

    let mut parties = Vec::new();
    for task in [a, c, b, f, e] {
        parties.push(task.await.unwrap());
    }
    for (client, seen) in parties.iter_mut() {
        g.settle(client, seen).await;
    }
    let end = Instant::now();
    let [(_, at_alice), (_, at_carol), (_, at_bob), (_, at_frank), (_, at_eve)] = &parties[..] else { unreachable!() };
    let arrivals = |seen: &Seen, p: &str| seen.streams.get(p).cloned().unwrap_or_default();
    // In the data center: the largest silence while Redis was down.
    let in_dc_gap = largest_gap(&arrivals(at_carol, "a2c"), killed_at, restarted_at)
        .0
        .max(largest_gap(&arrivals(at_alice, "c2a"), killed_at, restarted_at).0);
    // The largest silence across between alice and bob, and when it began relative to the kill.
    let cross_gap = |seen: &Seen, p: &str| {
        let got = arrivals(seen, p);
        let last = got.iter().map(|(_, t)| *t).max().unwrap_or(end);
        let (gap, at) = largest_gap(&got, killed_at, last);
        format!("{p} {gap:?} from kill+{:?}", at - killed_at)
    };
    let cross_gap = format!("{}, {}", cross_gap(at_bob, "a2b"), cross_gap(at_alice, "b2a"));
    // eve and frank: when their first message arrived, after the restart.
    let first_arrival = |seen: &Seen, p: &str| seen.streams.get(p)?.iter().map(|(_, t)| *t).min();
    let recovered = |seen: &Seen, p: &str| {
        first_arrival(seen, p).map(|t| if t >= restarted_at { Ok(t - restarted_at) } else { Err(restarted_at - t) })
    };
    let (rec_f2e, rec_e2f) = (recovered(at_eve, "f2e"), recovered(at_frank, "e2f"));
    eprintln!(
        "d: Redis down {:?}; in-DC largest gap during the outage {in_dc_gap:?}; alice<->bob largest gaps {cross_gap}; \
         frank<->eve (started during the outage): first arrival after the restart f2e {rec_f2e:?} e2f {rec_e2f:?} \
         (Err = before it), {parked_before_restart} parked before the restart; entries back in Redis \
         {table_back_after:?} after the restart; redis errors {}; {}",
        restarted_at - killed_at,
        g.all_nodes().map(|(d, i, _)| g.status(d, i)["redis"]["errors"].as_u64().unwrap_or(0)).sum::<u64>(),
        counters_report(&g)
    );
    for (seen, p, n, who) in [
        (at_carol, "a2c", N, "carol"),
        (at_alice, "c2a", N, "alice"),
        (at_bob, "a2b", N, "bob"),
        (at_alice, "b2a", N, "alice"),
        (at_eve, "f2e", LATE, "eve"),
        (at_frank, "e2f", LATE, "frank"),
    ] {
        assert_stream(seen, p, n, who);
    }
    for (seen, who) in [(at_alice, "alice"), (at_bob, "bob"), (at_carol, "carol"), (at_eve, "eve"), (at_frank, "frank")]
    {
        assert_nothing_unexpected(seen, who);
    }
    assert!(in_dc_gap < Duration::from_secs(1), "traffic inside dc1 stalled for {in_dc_gap:?} while Redis was down");
    for (dir, rec) in [("f2e", rec_f2e), ("e2f", rec_e2f)] {
        match rec {
            Some(Ok(after)) => {
                assert!(
                    after < Duration::from_secs(10),
                    "{dir}: cross-DC traffic took {after:?} to recover after the restart"
                )
            }
            Some(Err(before)) => panic!(
                "{dir} arrived {before:?} before Redis came back: the test did not make the data centers depend on it"
            ),
            None => panic!("{dir}: nothing arrived"),
        }
    }
    assert!(table_back_after < Duration::from_secs(10), "the routing table took {table_back_after:?} to come back");
}

// ------------------------------------------------------------------ e

/// Rust source with comments and the text of doc comments removed, string
/// literals kept: what the compiler would see as code.
fn code_only(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let b: Vec<char> = src.chars().collect();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            '/' if b.get(i + 1) == Some(&'/') => {
                while i < b.len() && b[i] != '\n' {
                    i += 1;
                }
            }
            '/' if b.get(i + 1) == Some(&'*') => {
                let mut depth = 0;
                while i < b.len() {
                    if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                        depth += 1;
                        i += 2;
                    } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            '"' => {
                out.push('"');
                i += 1;
                while i < b.len() && b[i] != '"' {
                    if b[i] == '\\' && i + 1 < b.len() {
                        out.push(b[i]);
                        i += 1;
                    }
                    out.push(b[i]);
                    i += 1;
                }
                out.push('"');
                i += 1;
            }
            // A char literal such as '"' must not open a string.
            '\'' if b.get(i + 2) == Some(&'\'') || (b.get(i + 1) == Some(&'\\') && b.get(i + 3) == Some(&'\'')) => {
                let len = if b[i + 1] == '\\' { 4 } else { 3 };
                out.extend(&b[i..i + len]);
                i += len;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// Redis commands Dynomite does not support, or that need every key on one
/// server: transactions, scripts and key scans.
const FORBIDDEN_COMMANDS: &[&str] =
    &["MULTI", "EXEC", "DISCARD", "WATCH", "EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO", "SCRIPT", "FCALL", "KEYS"];

/// redis-rs calls that issue those commands.
const FORBIDDEN_CALLS: &[&str] = &[
    ".atomic()",
    "redis::transaction(",
    "transaction_async(",
    "Script::new",
    "redis::Script",
    ".invoke_async(",
    ".script_load(",
    ".eval(",
    ".evalsha(",
    ".fcall(",
];

/// Every forbidden use in `code` (comments already removed), as text.
fn forbidden_uses(code: &str) -> Vec<String> {
    let mut found = Vec::new();
    // A string literal that is exactly a command name, in any case: `cmd("MULTI")`, `.arg("keys")`.
    let mut rest = code;
    while let Some(start) = rest.find('"') {
        let after = &rest[start + 1..];
        let Some(end) = after.find('"') else { break };
        let literal = &after[..end];
        if FORBIDDEN_COMMANDS.iter().any(|c| c.eq_ignore_ascii_case(literal.trim())) {
            found.push(format!("the Redis command \"{literal}\""));
        }
        rest = &after[end + 1..];
    }
    for call in FORBIDDEN_CALLS {
        if code.contains(call) {
            found.push(format!("the call {call}"));
        }
    }
    // `conn.keys(pattern)` is the KEYS command; `map.keys()` (no argument) is not.
    for (i, _) in code.match_indices(".keys(") {
        if !code[i + ".keys(".len()..].trim_start().starts_with(')') {
            found.push("the KEYS command through .keys(pattern)".into());
        }
    }
    found
}

#[test]
fn routing_table_code_uses_no_multi_eval_or_keys() {
    // The checker itself catches what it is meant to catch, and not doc text.
    for bad in [
        r#"let _: () = redis::cmd("MULTI").query_async(&mut c).await?;"#,
        r#"redis::cmd("exec").exec_async(&mut c).await?;"#,
        r#"let mut pipe = redis::pipe(); pipe.atomic().hset(k, f, v);"#,
        r#"let ks: Vec<String> = conn.keys("meerkat:gd:jid:*").await?;"#,
        r#"let s = redis::Script::new("return 1");"#,
        r#"let s = Script::new(LUA); s.key(k).invoke_async(&mut c).await?;"#,
        r#"redis::cmd("EVALSHA").arg(sha).arg(0)"#,
    ] {
        assert!(!forbidden_uses(&code_only(bad)).is_empty(), "the check misses: {bad}");
    }
    for fine in [
        "//! none of them is `MULTI`, `EVAL` or `KEYS`, so the table works behind Dynomite\nfn f() {}",
        "/* redis::cmd(\"MULTI\") */ let n = map.keys().count();",
        "use std::sync::atomic::{AtomicBool, Ordering};",
        "let s = \"multiple\"; let c = '\"'; let t = \"KEYSTONE\";",
    ] {
        assert!(
            forbidden_uses(&code_only(fine)).is_empty(),
            "false alarm on: {fine}: {:?}",
            forbidden_uses(&code_only(fine))
        );
    }

    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../routing/src/global");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "rs"))
        .collect();
    files.sort();
    let names: Vec<String> = files.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    for expected in ["mod.rs", "table.rs", "link.rs"] {
        assert!(names.iter().any(|n| n == expected), "{expected} missing from {}: {names:?}", dir.display());
    }
    let mut problems = Vec::new();
    let mut redis_calls = 0;
    for f in &files {
        let src = std::fs::read_to_string(f).unwrap();
        let code = code_only(&src);
        redis_calls += code.matches("query_async").count() + code.matches("conn.h").count();
        for p in forbidden_uses(&code) {
            problems.push(format!("{}: {p}", f.display()));
        }
    }
    // The files talk to Redis at all, so the absence of the forbidden commands means something.
    assert!(redis_calls > 0, "no Redis call found in {names:?}: the check looks at the wrong files");
    assert!(problems.is_empty(), "the global routing table must work behind Dynomite:\n{}", problems.join("\n"));
}

// ------------------------------------------------------------------ f

/// The name in every node's link certificate: the default `server_name`.
const LINK_SERVER_NAME: &str = "meerkat-global";

/// A certificate authority for the links between data centers.
struct LinkCa {
    /// Its certificate, as a PEM file.
    pem: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

impl LinkCa {
    /// A new CA; its certificate goes to `dir/<name>-ca.pem`.
    fn new(dir: &Path, name: &str) -> LinkCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, format!("{name} CA"));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let pem = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&pem, cert.pem()).unwrap();
        LinkCa { pem, issuer: Issuer::new(params, key) }
    }

    /// A certificate for [`LINK_SERVER_NAME`] and the data center `dc`, good
    /// as server and as client, signed by this CA and written to
    /// `dir/<name>.pem` and `dir/<name>.key`; the node checks its peers
    /// against `trusted`.
    fn node_tls(&self, dir: &Path, name: &str, dc: &str, trusted: &LinkCa) -> LinkTls {
        let mut params = CertificateParams::new(vec![LINK_SERVER_NAME.to_owned(), dc.to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, LINK_SERVER_NAME);
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (certfile, keyfile) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
        std::fs::write(&certfile, cert.pem()).unwrap();
        std::fs::write(&keyfile, key.serialize_pem()).unwrap();
        LinkTls { cacertfile: trusted.pem.clone(), certfile, keyfile }
    }
}

/// Node (`dc`, `i`)'s links to the other data center, as `/api/global` shows them.
fn links_across(g: &TestGlobal, dc: usize, i: usize) -> Vec<Value> {
    let other = g.dcs[1 - dc].local_host.clone();
    g.status(dc, i)["data_centers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["local_host"].as_str() == Some(other.as_str()))
        .flat_map(|e| e["links"].as_array().cloned().unwrap_or_default())
        .collect()
}

/// Waits until every node knows every endpoint of the other data center and
/// has failed `times` times to link to each.
fn wait_failing_everywhere(g: &TestGlobal, times: u64) {
    wait_until(
        &format!("every node to fail {times} times on every endpoint of the other data center"),
        Duration::from_secs(15),
        || {
            g.all_nodes().all(|(d, i, _)| {
                let links = links_across(g, d, i);
                links.len() == NODES_PER_DC && links.iter().all(|l| l["failures"].as_u64().unwrap_or(0) >= times)
            })
        },
    );
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn head(bytes: &[u8]) -> &[u8] {
    &bytes[..bytes.len().min(16)]
}

/// The links between data centers over mutual TLS
/// (`[global_distribution.connections.tls]`):
/// - every node's certificate signed by the links' CA: alice (dc1) and bob
///   (dc2) exchange 200 messages each way, in order, and what crossed the
///   proxies is TLS (a handshake record first each way, no address or body in
///   the clear) rather than length-prefixed frames;
/// - dc2's nodes present a certificate from another CA, while still trusting
///   the links' CA: no link connects either way, because dc1 refuses dc2's
///   certificate both as a server's (dc1 dials dc2) and as a client's (dc2
///   dials dc1). A message from alice to bob waits on its link and reaches
///   nobody, while traffic inside each data center flows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_use_mutual_tls_and_refuse_a_foreign_ca() {
    const N: u64 = 200;
    const IN_DC: u64 = 100;
    let _turn = one_at_a_time().await;
    let dir = tempfile::Builder::new().prefix("meerkat-gd-tls-").tempdir().unwrap();
    let ca = LinkCa::new(dir.path(), "links");
    let foreign = LinkCa::new(dir.path(), "foreign");
    let dc_name = |d: usize| format!("dc{d}.{GLOBAL_HOST}");
    let signed = ca.node_tls(dir.path(), "dc1-node", &dc_name(1), &ca);
    let signed2 = ca.node_tls(dir.path(), "dc2-node", &dc_name(2), &ca);

    // 1. Every certificate signed by the links' CA: start_with waits until every link is connected.
    let started = Instant::now();
    let g = start_with(GlobalOptions {
        tls: vec![Some(signed.clone()), Some(signed2)],
        links_may_fail: false,
        ..Default::default()
    })
    .await;
    let linked_after = started.elapsed();
    g.add_user("alice", PW);
    g.add_user("bob", PW);
    let alice = online_at(g.node(0, 0), "alice", "a").await;
    let bob = online_at(g.node(1, 1), "bob", "b").await;
    g.wait_table_says(&bare("alice"), 0, Duration::from_secs(10));
    g.wait_table_says(&bare("bob"), 1, Duration::from_secs(10));
    let every = Duration::from_millis(2);
    let deadline = Instant::now() + Duration::from_secs(20);
    let a = tokio::spawn(converse(
        alice,
        vec![Outgoing { to: bare("bob"), prefix: "a2b".into(), count: N }],
        every,
        vec![("b2a".into(), N)],
        deadline,
    ));
    let b = tokio::spawn(converse(
        bob,
        vec![Outgoing { to: bare("alice"), prefix: "b2a".into(), count: N }],
        every,
        vec![("a2b".into(), N)],
        deadline,
    ));
    let (mut alice, mut at_alice) = a.await.unwrap();
    let (mut bob, mut at_bob) = b.await.unwrap();
    g.settle(&mut alice, &mut at_alice).await;
    g.settle(&mut bob, &mut at_bob).await;
    assert_stream(&at_bob, "a2b", N, "bob");
    assert_stream(&at_alice, "b2a", N, "alice");
    assert_nothing_unexpected(&at_bob, "bob");
    assert_nothing_unexpected(&at_alice, "alice");
    for (d, i, _) in g.all_nodes() {
        assert!(
            g.linked(d, i),
            "dc{} node {}: not linked to every endpoint of the other data center: {}",
            d + 1,
            i + 1,
            g.status(d, i)["data_centers"]
        );
    }
    let acked = g.link_sum("acked");
    assert!(acked >= 2 * N, "only {acked} frames acknowledged across the links; {}", counters_report(&g));

    // What the proxies carried: TLS records, not frames. A frame starts with
    // its 4-byte big-endian length, 0 first for anything under 16 MiB; a TLS
    // handshake record (the ClientHello, then the ServerHello) with 0x16 0x03.
    let captures: Vec<(String, Captured)> = g
        .dcs
        .iter()
        .flat_map(|dc| dc.proxies.iter())
        .flat_map(|p| p.captured().into_iter().map(|c| (p.addr.to_string(), c)))
        .collect();
    let answered = captures.iter().filter(|(_, c)| !c.from_dialler.is_empty() && !c.from_node.is_empty()).count();
    assert!(
        answered >= 2 * NODES_PER_DC * NODES_PER_DC,
        "{answered} proxied connections carried bytes both ways, fewer than the links: {captures:?}"
    );
    let mut carried = 0;
    for (proxy, c) in &captures {
        for (who, bytes) in [("dialler", &c.from_dialler), ("node", &c.from_node)] {
            carried += bytes.len();
            if bytes.is_empty() {
                continue;
            }
            assert!(
                bytes.starts_with(&[0x16, 0x03]),
                "through {proxy}, the {who}'s first bytes are not a TLS handshake record: {:02x?}",
                head(bytes)
            );
            for clear in [GLOBAL_HOST.as_bytes(), b"a2b ", b"b2a "] {
                assert!(
                    !contains(bytes, clear),
                    "through {proxy}, the {who} sent {:?} in the clear",
                    String::from_utf8_lossy(clear)
                );
            }
        }
    }
    // The messages did go through the proxies, so their absence in the clear means something.
    assert!(carried as u64 >= 2 * N * 100, "the proxies saw only {carried} bytes for {} messages", 2 * N);
    eprintln!(
        "f: over TLS, linked {linked_after:?} after the start; {N} messages each way; {} connections, {carried} bytes \
         through the proxies; {}",
        captures.len(),
        counters_report(&g)
    );
    drop((alice, bob));
    drop(g);

    // 2. dc2's nodes present a certificate from another CA (and trust the links' CA).
    let refused = foreign.node_tls(dir.path(), "foreign-node", &dc_name(2), &ca);
    let g = start_with(GlobalOptions {
        tls: vec![Some(signed.clone()), Some(refused)],
        links_may_fail: true,
        ..Default::default()
    })
    .await;
    for u in ["alice", "bob", "carol", "dave"] {
        g.add_user(u, PW);
    }
    let alice = online_at(g.node(0, 0), "alice", "a").await;
    let carol = online_at(g.node(0, 1), "carol", "c").await;
    let bob = online_at(g.node(1, 0), "bob", "b").await;
    let dave = online_at(g.node(1, 1), "dave", "d").await;
    for (u, dc) in [("alice", 0), ("carol", 0), ("bob", 1), ("dave", 1)] {
        g.wait_table_says(&bare(u), dc, Duration::from_secs(10));
    }
    // Every node knows every endpoint of the other data center, and keeps failing to link.
    wait_failing_everywhere(&g, 3);
    let failures = |g: &TestGlobal| -> u64 {
        g.all_nodes().flat_map(|(d, i, _)| links_across(g, d, i)).map(|l| l["failures"].as_u64().unwrap_or(0)).sum()
    };
    let failures_before = failures(&g);

    // alice writes to bob once, across; alice and carol, bob and dave talk in their data centers.
    let failures_at_send: std::collections::HashMap<(usize, usize, String), u64> = g
        .all_nodes()
        .flat_map(|(d, i, _)| {
            links_across(&g, d, i)
                .into_iter()
                .map(move |l| ((d, i, l["endpoint"].to_string()), l["failures"].as_u64().unwrap_or(0)))
        })
        .collect();
    let every = Duration::from_millis(5);
    let deadline = Instant::now() + Duration::from_secs(15);
    let talk = |client, to: &str, prefix: &str, back: &str| {
        tokio::spawn(converse(
            client,
            vec![Outgoing { to: bare(to), prefix: prefix.into(), count: IN_DC }],
            every,
            vec![(back.into(), IN_DC)],
            deadline,
        ))
    };
    let mut alice = alice;
    alice.send_message(&bare("bob"), "a2b 0").await.unwrap();
    let tasks = [
        talk(alice, "carol", "a2c", "c2a"),
        talk(carol, "alice", "c2a", "a2c"),
        talk(bob, "dave", "b2d", "d2b"),
        talk(dave, "bob", "d2b", "b2d"),
    ];
    let mut parties = Vec::new();
    for t in tasks {
        parties.push(t.await.unwrap());
    }
    // alice's message waits on dc1 node 1's link to dc2 while every link
    // tries again, and fails, twice more: it had its chances to cross.
    wait_until("alice's message waiting while every link fails twice more", Duration::from_secs(30), || {
        let waiting: u64 = links_across(&g, 0, 0)
            .iter()
            .map(|l| l["queued"].as_u64().unwrap_or(0) + l["unacked"].as_u64().unwrap_or(0))
            .sum();
        waiting >= 1
            && g.all_nodes().all(|(d, i, _)| {
                links_across(&g, d, i).iter().all(|l| {
                    let now = l["failures"].as_u64().unwrap_or(0);
                    now >= failures_at_send.get(&(d, i, l["endpoint"].to_string())).copied().unwrap_or(0) + 2
                })
            })
    });
    for (client, seen) in parties.iter_mut() {
        flush(client, seen).await;
    }
    let [(_, at_alice), (_, at_carol), (_, at_bob), (_, at_dave)] = &parties[..] else { unreachable!() };
    for (seen, p, who) in
        [(at_carol, "a2c", "carol"), (at_alice, "c2a", "alice"), (at_dave, "b2d", "dave"), (at_bob, "d2b", "bob")]
    {
        assert_stream(seen, p, IN_DC, who);
    }
    for (seen, who) in [(at_alice, "alice"), (at_bob, "bob"), (at_carol, "carol"), (at_dave, "dave")] {
        assert_nothing_unexpected(seen, who);
    }
    assert_eq!(at_bob.count("a2b"), 0, "alice's message reached bob although no link between the data centers is up");
    let received_in_dc2: u64 =
        (0..NODES_PER_DC).map(|i| g.status(1, i)["counters"]["received"].as_u64().unwrap_or(0)).sum();
    assert_eq!(received_in_dc2, 0, "dc2 received frames over a link it should not have");
    for (d, i, _) in g.all_nodes() {
        let links = links_across(&g, d, i);
        assert!(
            links.iter().all(|l| l["connected"] == Value::Bool(false) && l["connects"].as_u64() == Some(0)),
            "dc{} node {}: a link to the other data center connected: {links:?}",
            d + 1,
            i + 1
        );
    }
    // alice's message waits on dc1 node 1's link to dc2.
    let waiting: u64 = links_across(&g, 0, 0)
        .iter()
        .map(|l| l["queued"].as_u64().unwrap_or(0) + l["unacked"].as_u64().unwrap_or(0))
        .sum();
    assert!(waiting >= 1, "alice's message is not waiting on a link to dc2: {:?}", links_across(&g, 0, 0));
    let failures_after = failures(&g);
    assert!(
        failures_after > failures_before,
        "the links stopped trying: {failures_before} failures, then {failures_after}"
    );
    // dc2 trusts dc1's certificate, so its links fail because dc1 refuses its client certificate.
    for i in 0..NODES_PER_DC {
        let log = g.node(0, i).log();
        assert!(
            log.contains("TLS handshake failed"),
            "dc1 node {} never refused a TLS handshake from dc2:\n{log}",
            i + 1
        );
    }
    eprintln!(
        "f: a foreign CA in dc2: {failures_after} link failures, {waiting} frame waiting on dc1, none received in dc2; \
         {IN_DC} messages each way inside each data center; {}",
        counters_report(&g)
    );
    drop(g);

    // 3. dc2's nodes present dc1's certificate: the right CA, but it names
    // dc1. Each side refuses the other, and counts it.
    let g = start_with(GlobalOptions {
        tls: vec![Some(signed.clone()), Some(signed)],
        links_may_fail: true,
        ..Default::default()
    })
    .await;
    wait_failing_everywhere(&g, 3);
    for (d, i, _) in g.all_nodes() {
        let links = links_across(&g, d, i);
        assert!(
            links.iter().all(|l| l["connects"].as_u64() == Some(0)),
            "dc{} node {}: a link connected with a certificate naming another data center: {links:?}",
            d + 1,
            i + 1
        );
    }
    // dc1 refuses dc2's hellos (its certificate names dc1, not dc2).
    let refused_by_dc1: u64 =
        (0..NODES_PER_DC).map(|i| g.status(0, i)["counters"]["links_refused"].as_u64().unwrap_or(0)).sum();
    assert!(refused_by_dc1 > 0, "dc1 counted no refused link: {}", counters_report(&g));
    eprintln!("f: dc2 with dc1's certificate: {refused_by_dc1} hellos refused by dc1, no link connected");
}

// ------------------------------------------------------------------ f

/// Frames dc1's node 1 sent over its link to `endpoint`.
fn sent_to(g: &TestGlobal, endpoint: &str) -> u64 {
    let s = g.status(0, 0);
    s["data_centers"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|dc| dc["links"].as_array().into_iter().flatten())
        .filter(|l| l["endpoint"].as_str() == Some(endpoint))
        .map(|l| l["sent"].as_u64().unwrap_or(0))
        .sum()
}

/// bob is on dc2's node 2, a sender on dc1 sends 1,000 messages to bob's
/// bare JID 2 ms apart, and dc2's node 2 is SIGKILLed after 500. 5 s later
/// bob logs in again on `relogin`: every message reaches him within 10 s of
/// that login, none twice, counting those his old session got before the
/// kill. The sender is one whose stanzas dc1 sends over the link to dc2's
/// node 2 (a data center spreads its senders over the endpoints), so that
/// the link to the dead endpoint must give its stanzas to the other one.
async fn endpoint_death(relogin: (usize, usize)) {
    const N: usize = 1000;
    let mut g = start().await;
    g.add_user("bob", PW);
    let mut bob = online_at(g.node(1, 1), "bob", "phone").await;
    g.wait_table_says(&bare("bob"), 1, Duration::from_secs(10));
    let dead_endpoint = g.dcs[1].proxies[1].addr.to_string();
    let mut chosen = None;
    for k in 0..12 {
        let name = format!("sender{k}");
        g.add_user(&name, PW);
        let mut c = online_at(g.node(0, 0), &name, "desk").await;
        let before = sent_to(&g, &dead_endpoint);
        c.send_message(&bare("bob"), &format!("probe {k}")).await.unwrap();
        let probe = format!("probe {k}");
        bob.recv_until(|el| meerkat_tests::client::body(el).as_deref() == Some(probe.as_str())).await.unwrap();
        if sent_to(&g, &dead_endpoint) > before {
            chosen = Some(c);
            break;
        }
    }
    bob.clear_backlog();
    let alice = chosen.expect("none of 12 senders went over the link to dc2's node 2");

    // The node dies between two messages, once bob's old session has the
    // first half, not while one is between nodes or inside the dying one (as
    // in tests/tests/node_death.rs).
    let mut reader = read_until_quiet(bob, N / 2, Duration::from_secs(3));
    let stream = numbered(alice, bare("bob"), N, Duration::from_millis(2), N / 2);
    stream.paused.await.unwrap();
    reader.first_in(Duration::from_secs(30)).await;
    g.dcs[1].nodes[1].kill();
    let _ = stream.resume.send(());
    let killed_at = Instant::now();
    let other_endpoint = g.dcs[1].proxies[0].addr.to_string();
    let over_the_other_before = sent_to(&g, &other_endpoint);
    let mut alice = stream.task.await.unwrap();
    let mut seen = reader.task.await.unwrap();
    let before = seen.total();

    // The 5 s between the kill and the new login are the scenario, not a wait for an event.
    tokio::time::sleep_until(killed_at + Duration::from_secs(5)).await;
    let mut bob = login_at(g.node(relogin.0, relogin.1), "bob", "phone").await;
    bob.go_online(Some(1)).await.unwrap();
    let logged_in = Instant::now();
    let deadline = logged_in + Duration::from_secs(10);
    while seen.distinct() < N {
        match bob.recv_timeout(deadline.saturating_duration_since(Instant::now())).await {
            Ok(el) => seen.note(&el),
            Err(e) => {
                let missing = seen.missing(N);
                panic!(
                    "bob has {} of {N} 10 s after logging in again at dc{}/{} ({before} in his old session); \
                     missing {} (first {:?}): {e}\n{}\n{}",
                    seen.distinct(),
                    relogin.0 + 1,
                    relogin.1 + 1,
                    missing.len(),
                    &missing[..missing.len().min(20)],
                    counters_report(&g),
                    g.status(0, 0)
                );
            }
        }
    }
    let took = logged_in.elapsed();
    // Whatever else was on its way would be a duplicate: once the data
    // centers are idle, a ping is answered after what was queued for bob,
    // which stays in the backlog to be counted.
    g.wait_idle(Duration::from_secs(30));
    let res = bob.iq_xml("<iq type='get' to='example.com'><ping xmlns='urn:xmpp:ping'/></iq>").await.unwrap();
    assert_eq!(res.attr("type"), Some("result"));
    for el in bob.backlog() {
        seen.note(el);
    }
    let twice = seen.repeated();
    eprintln!(
        "f: dc2 node 2 killed after {}; bob's old session had {before}; the rest reached dc{}/{} within {took:?} of his login; \
         {} crossed to dc2's other endpoint after the kill, {} given back by the dead link; {}",
        N / 2,
        relogin.0 + 1,
        relogin.1 + 1,
        sent_to(&g, &other_endpoint) - over_the_other_before,
        g.counter("requeued"),
        counters_report(&g)
    );
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    // What was on the dead link when it died came back (if anything was), and
    // the rest crossed to dc2's other endpoint instead.
    let over_the_other = sent_to(&g, &other_endpoint) - over_the_other_before;
    assert!(
        over_the_other > 0,
        "nothing crossed to dc2's other endpoint after the kill ({} given back)",
        g.counter("requeued")
    );
    let res = alice.iq_xml("<iq type='get' to='example.com'><ping xmlns='urn:xmpp:ping'/></iq>").await.unwrap();
    assert_eq!(res.attr("type"), Some("result"));
    let errors: Vec<_> = alice.backlog().filter(|el| el.attr("type") == Some("error")).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "alice got errors: {errors:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_strands_nothing_when_the_user_moves_to_another_data_center() {
    let _turn = one_at_a_time().await;
    endpoint_death((0, 1)).await;
}

/// dc2 has two nodes: the survivor has no Raft majority, and takes bob's
/// login alone because its peer's process is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_strands_nothing_when_the_user_returns_to_its_data_center() {
    let _turn = one_at_a_time().await;
    endpoint_death((1, 0)).await;
}

/// A component connected in dc1 serves users of dc2 (MongooseIM's global
/// distribution routes between users and components in different
/// clusters): its domain is in the routing table while it is connected, a
/// dc2 user's stanzas reach it over the links, and its answers reach the
/// user. A domain no data center serves bounces once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_in_one_data_center_serves_users_of_the_other() {
    let port = meerkat_tests::node::free_port();
    let listener = format!("[[listen.component]]\nport = {port}\nip_address = \"127.0.0.1\"\npassword = \"s3cret\"\n");
    let g = start_with(GlobalOptions { node_toml: vec![((0, 0), listener)], ..Default::default() }).await;
    let domain = format!("echo.{GLOBAL_HOST}");
    let mut comp =
        meerkat_tests::component::RawComponent::connect(([127, 0, 0, 1], port).into(), &domain, "s3cret").await;
    g.wait_table_says(&domain, 0, Duration::from_secs(10));
    g.add_user("bob", PW);
    let mut bob = online_at(g.node(1, 1), "bob", "phone").await;

    bob.send_message(&format!("bot@{domain}"), "across").await.unwrap();
    let got = comp.recv_timeout(Duration::from_secs(10)).await.unwrap();
    assert_eq!(got.attr("from"), Some(format!("bob@{GLOBAL_HOST}/phone").as_str()));
    assert_eq!(got.get_child("body", meerkat_xmpp::ns::COMPONENT).map(Element::text).as_deref(), Some("across"));
    comp.send_str(&format!(
        "<message from='bot@{domain}' to='bob@{GLOBAL_HOST}/phone' type='chat'><body>and back</body></message>"
    ))
    .await
    .unwrap();
    let el = bob.recv_until(|el| meerkat_tests::client::body(el).as_deref() == Some("and back")).await.unwrap();
    assert_eq!(el.attr("from"), Some(format!("bot@{domain}").as_str()));

    // An IQ to the component and its answer.
    bob.send_str(&format!("<iq type='get' id='c1' to='{domain}'><ping xmlns='urn:xmpp:ping'/></iq>")).await.unwrap();
    let iq = comp.recv_timeout(Duration::from_secs(10)).await.unwrap();
    assert!(iq.has_child("ping", meerkat_xmpp::ns::PING), "{}", iq.to_xml(meerkat_xmpp::ns::COMPONENT));
    comp.send_str(&format!("<iq type='result' id='c1' from='{domain}' to='{}'/>", iq.attr("from").unwrap()))
        .await
        .unwrap();
    let res = bob.recv_until(|el| el.attr("id") == Some("c1")).await.unwrap();
    assert_eq!(res.attr("type"), Some("result"));

    // No data center serves this domain: one remote-server-not-found.
    bob.send_str("<message id='n1' to='someone@nowhere.invalid'><body>lost</body></message>").await.unwrap();
    let err = bob.recv_until(|el| el.attr("id") == Some("n1")).await.unwrap();
    assert_eq!(meerkat_tests::client::stanza_error(&err).as_deref(), Some("remote-server-not-found"), "{err}");
    let res =
        bob.iq_xml(&format!("<iq type='get' to='{GLOBAL_HOST}'><ping xmlns='urn:xmpp:ping'/></iq>")).await.unwrap();
    assert_eq!(res.attr("type"), Some("result"));
    assert_eq!(bob.backlog().filter(|el| el.attr("id") == Some("n1")).count(), 0, "bounced twice");
}

/// Each data center federates on its own: a user in dc2 reaches a remote
/// server over dc2's own stream out, and the remote server, which knows the
/// domain at dc1's listener only, reaches that user through dc1 and the
/// links. Every node has the same dialback secret (`[s2s] shared`), so the
/// remote server may check dc2's key with dc1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_data_center_federates_on_its_own() {
    use meerkat_tests::node::free_port;
    let (p_dc1, p_dc2, p_remote) = (free_port(), free_port(), free_port());
    let s2s = |port: u16| {
        format!(
            "[[listen.s2s]]\nport = {port}\nip_address = \"127.0.0.1\"\n\n[s2s]\nshared = \"one secret for the deployment\"\n\n\
             [s2s.outgoing]\nconnection_timeout = 2000\n\
             address = [{{ host = \"remote.test\", ip_address = \"127.0.0.1\", port = {p_remote} }}]\n"
        )
    };
    let g =
        start_with(GlobalOptions { node_toml: vec![((0, 0), s2s(p_dc1)), ((1, 1), s2s(p_dc2))], ..Default::default() })
            .await;
    let remote = TestNode::start_with(meerkat_tests::NodeOptions {
        hosts: vec!["remote.test".into()],
        extra_toml: format!(
            "[[listen.s2s]]\nport = {p_remote}\nip_address = \"127.0.0.1\"\n\n[s2s.outgoing]\nconnection_timeout = 2000\n\
             address = [{{ host = \"{GLOBAL_HOST}\", ip_address = \"127.0.0.1\", port = {p_dc1} }}]\n"
        ),
        ..Default::default()
    });
    remote.add_user_at("remote.test", "rita", PW);
    let mut rita = Client::login(remote.c2s, "remote.test", "rita", PW, Some("r")).await.expect("rita");
    g.add_user("bob", PW);
    let mut bob = online_at(g.node(1, 1), "bob", "phone").await;

    bob.send_message("rita@remote.test/r", "from dc2").await.unwrap();
    let m = rita.recv_message().await.unwrap_or_else(|e| panic!("rita: {e}\n{}", g.node(1, 1).log()));
    assert_eq!(meerkat_tests::client::body(&m).as_deref(), Some("from dc2"));
    assert_eq!(m.attr("from"), Some(format!("bob@{GLOBAL_HOST}/phone").as_str()));
    rita.send(&meerkat_tests::client::message(&format!("bob@{GLOBAL_HOST}/phone"), "to dc2")).await.unwrap();
    let m = bob
        .recv_until(|el| meerkat_tests::client::body(el).as_deref() == Some("to dc2"))
        .await
        .unwrap_or_else(|e| panic!("bob: {e}\n{}", g.node(0, 0).log()));
    assert_eq!(m.attr("from"), Some("rita@remote.test/r"));

    // dc2's node sent over its own stream; dc1's node took the remote server's.
    let (_, out) = g.node(1, 1).api("GET", "/api/s2s", None);
    assert!(
        out["outgoing"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|o| o["remote"] == "remote.test" && o["state"] == "established"),
        "{out}"
    );
    let (_, inc) = g.node(0, 0).api("GET", "/api/s2s", None);
    assert!(
        inc["incoming"].as_array().into_iter().flatten().any(|i| i["domains"] == serde_json::json!(["remote.test"])),
        "{inc}"
    );
}
