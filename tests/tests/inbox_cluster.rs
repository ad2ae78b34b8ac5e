//! Inbox in a three-node cluster whose inbox owner dies: carol's inbox is
//! owned by node 3 (a hash of her bare JID over the live members); alice on
//! node 1 and bob on node 2 each send her 200 messages, 2 ms apart, while she
//! is offline. Once node 3 has written some of the second hundred, it is
//! SIGKILLed; the updates it had not written are sent again to carol's next
//! owner. carol then logs in on node 1: each conversation counts exactly 200
//! unread, none lost and none counted twice.
//!
//! And an owner slower than a request's timeout: while a transaction of the
//! test holds carol's entry locked, node 2 (her owner) cannot write alice's
//! update, node 1 gets no answer in time and sends it again; once the lock
//! goes, the update counts once.
#![allow(clippy::unwrap_used)]

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use meerkat_cluster::placement::rendezvous;
use meerkat_cluster::NodeId;
use meerkat_tests::cluster::{Placement, SharedDb, TestCluster};
use meerkat_tests::stream::numbered;
use meerkat_tests::{login, wait_until, Client, DOMAIN};
use meerkat_xmpp::element::Element;

const PW: &str = "pw";
const N: usize = 200;
const NS_INBOX: &str = "erlang-solutions.com:xmpp:inbox:0";
const INBOX_TOML: &str = "[modules.mod_inbox]\nenabled = true\n";

/// Unread messages of `user`'s inbox as the database has them now.
fn unread_in_db(db_url: &str, user: &str) -> i64 {
    let out = Command::new("psql")
        .arg(db_url)
        .args(["-tAc", &format!("SELECT COALESCE(SUM(unread_count), 0) FROM inbox_entries WHERE username = '{user}'")])
        .output()
        .expect("running psql");
    assert!(out.status.success(), "psql: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
}

/// One inbox query: (remote bare JID, unread, last body) per conversation, and the total unread.
async fn inbox(client: &mut Client) -> (Vec<(String, u64, String)>, u64) {
    client.clear_backlog();
    let iq = client.iq_xml(&format!("<iq type='set'><inbox xmlns='{NS_INBOX}' queryid='q'/></iq>")).await.unwrap();
    assert_eq!(iq.attr("type"), Some("result"), "{iq}");
    let fin = iq.get_child("fin", NS_INBOX).unwrap_or_else(|| panic!("no fin: {iq}"));
    let total = fin.get_child("unread-messages", NS_INBOX).map(|e| e.text()).unwrap_or_default();
    let mut entries = Vec::new();
    for m in client.backlog().filter(|e| e.name == "message") {
        let Some(result) = m.get_child("result", NS_INBOX) else { continue };
        let inner: Option<&Element> =
            result.elements().find(|e| e.name == "forwarded").and_then(|f| f.elements().find(|e| e.name == "message"));
        let inner = inner.unwrap_or_else(|| panic!("no forwarded message: {m}"));
        let from = inner.attr("from").unwrap_or_default();
        let remote = from.split('/').next().unwrap_or_default().to_owned();
        let body = inner.elements().find(|e| e.name == "body").map(|b| b.text()).unwrap_or_default();
        entries.push((remote, result.attr("unread").unwrap_or("0").parse().unwrap(), body));
    }
    entries.sort();
    (entries, total.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_inbox_owner_loses_and_doubles_no_count() {
    // The first of carol0, carol1, ... whose inbox node 3 owns while all three live.
    let all = [NodeId(1), NodeId(2), NodeId(3)];
    let carol = (0..100)
        .map(|i| format!("carol{i}"))
        .find(|u| rendezvous(&format!("{u}@{DOMAIN}"), &all) == Some(NodeId(3)))
        .unwrap();
    let mut cluster = tokio::task::spawn_blocking(|| {
        let nodes = (0..3).map(|_| (Placement::loopback(), INBOX_TOML.to_owned())).collect();
        TestCluster::start_configured(SharedDb::postgres(), nodes)
    })
    .await
    .unwrap();
    for u in ["alice", "bob", carol.as_str()] {
        cluster.add_user(u, PW);
    }
    let alice = login(&cluster.nodes[0], "alice", PW, "desk").await;
    let bob = login(&cluster.nodes[1], "bob", PW, "desk").await;
    let to = format!("{carol}@{DOMAIN}");
    let mut from_alice = numbered(alice, to.clone(), N, Duration::from_millis(2), N / 2);
    let mut from_bob = numbered(bob, to.clone(), N, Duration::from_millis(2), N / 2);
    (&mut from_alice.paused).await.unwrap();
    (&mut from_bob.paused).await.unwrap();
    let _ = from_alice.resume.send(());
    let _ = from_bob.resume.send(());
    // Node 3 goes while both streams run, once it wrote some of the second hundred.
    let (db, c) = (cluster.db.url.clone(), carol.clone());
    tokio::task::spawn_blocking(move || {
        wait_until("node 3 writing the second hundred", Duration::from_secs(60), || {
            unread_in_db(&db, &c) > (N + 20) as i64
        })
    })
    .await
    .unwrap();
    let killed_at = unread_in_db(&cluster.db.url, &carol);
    cluster.nodes[2].kill();
    eprintln!("node 3 killed with {killed_at} unread written");
    let mut alice = from_alice.task.await.unwrap();
    let mut bob = from_bob.task.await.unwrap();

    // Every update is written, once: carol's inbox on node 1 counts them all.
    let mut carol_client = login(&cluster.nodes[0], &carol, PW, "phone").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let (entries, total) = loop {
        let (entries, total) = inbox(&mut carol_client).await;
        if total >= 2 * N as u64 || tokio::time::Instant::now() >= deadline {
            break (entries, total);
        }
        // Until the senders' nodes gave up on node 3 and sent again to the new owner.
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let expected = vec![
        (format!("alice@{DOMAIN}"), N as u64, format!("m{}", N - 1)),
        (format!("bob@{DOMAIN}"), N as u64, format!("m{}", N - 1)),
    ];
    assert_eq!(
        (entries, total),
        (expected, 2 * N as u64),
        "carol's inbox after node 3 died ({killed_at} unread written before)\n--- node 1 log ---\n{}",
        cluster.nodes[0].log()
    );
    // The senders were told of no failure.
    for c in [&mut alice, &mut bob] {
        let res = c.iq_xml("<iq type='get' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>").await.unwrap();
        assert_eq!(res.attr("type"), Some("result"));
        let errors: Vec<_> = c.backlog().filter(|e| e.attr("type") == Some("error")).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{} got errors: {errors:?}", c.jid());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_sent_again_to_a_slow_owner_counts_once() {
    let both = [NodeId(1), NodeId(2)];
    let carol = (0..100)
        .map(|i| format!("carol{i}"))
        .find(|u| rendezvous(&format!("{u}@{DOMAIN}"), &both) == Some(NodeId(2)))
        .unwrap();
    let cluster = tokio::task::spawn_blocking(|| {
        let nodes = (0..2).map(|_| (Placement::loopback(), INBOX_TOML.to_owned())).collect();
        TestCluster::start_configured(SharedDb::postgres(), nodes)
    })
    .await
    .unwrap();
    for u in ["alice", carol.as_str()] {
        cluster.add_user(u, PW);
    }
    let to = format!("{carol}@{DOMAIN}");
    let mut alice = login(&cluster.nodes[0], "alice", PW, "desk").await;
    let db = cluster.db.url.clone();
    let written = |n: i64| {
        let (db, c) = (db.clone(), carol.clone());
        tokio::task::spawn_blocking(move || {
            wait_until(&format!("{n} unread written"), Duration::from_secs(60), || unread_in_db(&db, &c) >= n)
        })
    };
    alice.send_message(&to, "m0").await.unwrap();
    written(1).await.unwrap();

    // A transaction of the test locks carol's entry: node 2's next write waits for it.
    let mut lock = Command::new("psql")
        .arg(&cluster.db.url)
        .args(["-q", "-t", "-A", "-v", "ON_ERROR_STOP=1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("psql");
    let mut stdin = lock.stdin.take().unwrap();
    writeln!(stdin, "BEGIN; SELECT 'locked', unread_count FROM inbox_entries WHERE username = '{carol}' FOR UPDATE;")
        .unwrap();
    stdin.flush().unwrap();
    // The row is locked once psql printed it.
    let mut out = std::io::BufReader::new(lock.stdout.take().unwrap());
    let mut line = String::new();
    tokio::task::block_in_place(|| std::io::BufRead::read_line(&mut out, &mut line)).unwrap();
    assert_eq!(line.trim(), "locked|1", "psql: {line}");
    alice.send_message(&to, "m1").await.unwrap();
    // Node 1 got no answer in time and sent the update again.
    let node1 = &cluster.nodes[0];
    tokio::task::block_in_place(|| {
        wait_until("node 1 sending the update again", Duration::from_secs(60), || {
            node1.log().contains("inbox update not taken by its owner; sending it again")
        })
    });
    writeln!(stdin, "COMMIT;").unwrap();
    drop(stdin);
    assert!(lock.wait().unwrap().success());
    // Updates to carol's inbox leave node 1 in order: once m2's is written, m1's was, as often as it was.
    alice.send_message(&to, "m2").await.unwrap();
    written(3).await.unwrap();
    let mut carol_client = login(&cluster.nodes[1], &carol, PW, "phone").await;
    let (entries, total) = inbox(&mut carol_client).await;
    assert_eq!(
        (entries, total),
        (vec![(format!("alice@{DOMAIN}"), 3, "m2".to_owned())], 3),
        "--- node 1 log ---\n{}\n--- node 2 log ---\n{}",
        node1.log(),
        cluster.nodes[1].log()
    );
}
