//! Process life cycle: graceful shutdown on SIGTERM without losing accepted
//! messages, and refusing to start on a bad configuration file.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use meerkat_tests::client::body;
use meerkat_tests::{login, meerkat_bin, online, ClientError, NodeOptions, TestNode};
use meerkat_xmpp::ns;

const PW: &str = "pw";
const GRACE: u64 = 5;

#[tokio::test]
async fn sigterm_shuts_down_gracefully_without_losing_messages() {
    let mut node = TestNode::start_with(NodeOptions { shutdown_grace_period: GRACE, ..Default::default() });
    for u in ["alice", "bob", "carol"] {
        node.add_user(u, PW);
    }
    let mut alice = online(&node, "alice", PW, "r", None).await;
    let mut bob = online(&node, "bob", PW, "r", None).await;
    // One message to an online user, one to an offline user (carol), just before SIGTERM.
    alice.send_message("bob@localhost/r", "to bob before shutdown").await.unwrap();
    alice.send_message("carol@localhost", "to carol before shutdown").await.unwrap();
    // Once this is answered the server has accepted and routed both messages.
    let res = alice.iq_xml("<iq type='get' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>").await.unwrap();
    assert_eq!(res.attr("type"), Some("result"));

    let t0 = Instant::now();
    node.sigterm();
    assert_eq!(alice.expect_stream_error().await, "system-shutdown");
    // bob reads what was queued for him, then the shutdown error.
    let mut bob_got_it = false;
    loop {
        match bob.recv_timeout(Duration::from_secs(GRACE + 5)).await {
            Ok(el) => bob_got_it |= body(&el).as_deref() == Some("to bob before shutdown"),
            Err(ClientError::StreamError { condition, .. }) => {
                assert_eq!(condition, "system-shutdown");
                break;
            }
            Err(e) => panic!("bob expected <system-shutdown/>, got {e}"),
        }
    }
    let status = node.wait_exit(Duration::from_secs(GRACE + 5)).expect("the node did not exit after SIGTERM");
    let took = t0.elapsed();
    assert!(status.success(), "exit status {status}");
    assert!(took < Duration::from_secs(GRACE), "shutdown took {took:?}, longer than the grace period");
    assert!(node.log().contains("stopped"), "no orderly stop in the log");
    drop((alice, bob));

    // Nothing was lost: after a restart on the same data directory, what was
    // not delivered is waiting offline.
    node.restart();
    let mut carol = online(&node, "carol", PW, "r", None).await;
    let m = carol.recv_message().await.unwrap();
    assert_eq!(body(&m).as_deref(), Some("to carol before shutdown"));
    assert!(m.get_child("delay", ns::DELAY).is_some(), "{m}");
    if !bob_got_it {
        let mut bob = online(&node, "bob", PW, "r", None).await;
        let m = bob
            .recv_message()
            .await
            .unwrap_or_else(|e| panic!("the message to bob was neither delivered nor stored: {e}"));
        assert_eq!(body(&m).as_deref(), Some("to bob before shutdown"));
    }
    // The restarted node serves normally.
    let mut a = login(&node, "alice", PW, "again").await;
    let res = a.iq_xml("<iq type='get' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>").await.unwrap();
    assert_eq!(res.attr("type"), Some("result"));
}

#[tokio::test]
async fn sigterm_with_idle_node_exits_zero() {
    let mut node = TestNode::start("");
    node.sigterm();
    let status = node.wait_exit(Duration::from_secs(GRACE + 5)).expect("the node did not exit after SIGTERM");
    assert!(status.success(), "exit status {status}");
}

/// Runs `meerkat start --config <file with text>` and returns (exit code, stderr, config path).
fn start_with_config(text: &str) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.toml");
    std::fs::write(&path, text).unwrap();
    let mut child = Command::new(meerkat_bin())
        .arg("start")
        .arg("--config")
        .arg(&path)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("meerkat started with a bad config:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned(), path.display().to_string())
}

#[test]
fn bad_config_exits_nonzero_naming_file_and_key() {
    let cases: &[(&str, &[&str])] = &[
        // An unknown key.
        ("[general]\nhosts = [\"localhost\"]\nhostz = [\"x\"]\n", &["hostz", "line 3"]),
        // A value out of range.
        ("[session]\nmax_outgoing_bytes = 100\n", &["session.max_outgoing_bytes", "65536"]),
        // A wrong type.
        ("[[listen.c2s]]\nport = \"xmpp\"\n", &["line 2", "invalid type"]),
        // An unknown mechanism.
        ("[auth]\nsasl_mechanisms = [\"digest_md5\"]\n", &["auth.sasl_mechanisms", "digest_md5"]),
        // Not TOML at all.
        ("[general\nhosts = \n", &["line 1"]),
    ];
    for (text, expect) in cases {
        let (code, stderr, path) = start_with_config(text);
        assert!(code.is_some_and(|c| c != 0), "exit code {code:?} for:\n{text}");
        assert!(stderr.contains(&path), "the message does not name {path}: {stderr}");
        for e in *expect {
            assert!(stderr.contains(e), "the message lacks {e:?}: {stderr}");
        }
    }
    // A file that does not exist.
    let (code, stderr, _) = {
        let out =
            Command::new(meerkat_bin()).args(["start", "--config", "/nonexistent/meerkat.toml"]).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned(), ())
    };
    assert!(code.is_some_and(|c| c != 0));
    assert!(stderr.contains("/nonexistent/meerkat.toml"), "{stderr}");
}

/// Offline delivery is at least once: a node SIGKILLed while a recipient's
/// stored messages are on their way to it loses none of them. The recipient
/// reads slowly (a small receive buffer), so the kill lands while most of the
/// 1,000 messages are still between the database and its socket.
#[tokio::test]
async fn offline_messages_survive_a_kill_during_delivery() {
    use meerkat_tests::{Client, Sasl, DOMAIN};
    use meerkat_xmpp::sasl::HashAlg;
    use std::collections::HashMap;

    const N: usize = 1000;
    let mut node = TestNode::start("");
    for u in ["alice", "bob"] {
        node.add_user(u, PW);
    }
    let mut alice = login(&node, "alice", PW, "r").await;
    let pad = "x".repeat(2000);
    for i in 0..N {
        alice.send_message("bob@localhost", &format!("m{i} {pad}")).await.unwrap();
        if i % 100 == 99 {
            // Keeps the server's queues short: each ping is answered after the
            // messages before it were routed.
            let res = alice.iq_xml("<iq type='get' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>").await.unwrap();
            assert_eq!(res.attr("type"), Some("result"));
        }
    }
    // An IQ to bob's bare JID is answered by the server worker that stores
    // bob's messages, after the jobs queued before it: then all are stored.
    alice.send_str("<iq type='get' id='stored' to='bob@localhost'><ping xmlns='urn:xmpp:ping'/></iq>").await.unwrap();
    alice.recv_until_timeout(Duration::from_secs(120), |el| el.attr("id") == Some("stored")).await.unwrap();
    assert!(
        alice.backlog().all(|el| el.attr("type") != Some("error")),
        "a message to the offline user was refused: {:?}",
        alice.backlog().map(|el| el.to_string()).collect::<Vec<_>>()
    );
    drop(alice);

    let mut seen: HashMap<usize, usize> = HashMap::new();
    let note = |el: &meerkat_xmpp::element::Element, seen: &mut HashMap<usize, usize>| {
        if let Some(b) = body(el) {
            let i: usize = b.trim_start_matches('m').split(' ').next().unwrap().parse().unwrap();
            *seen.entry(i).or_default() += 1;
        }
    };
    // bob logs in on a connection that reads slowly; the node is killed as
    // soon as the first stored message reaches him.
    let mut bob = Client::tcp_with_recv_buffer(node.c2s, DOMAIN, 8 * 1024).await.unwrap();
    bob.open_stream().await.unwrap();
    bob.starttls().await.unwrap();
    bob.auth(Sasl::Scram(HashAlg::Sha256), "bob", PW).await.unwrap();
    bob.bind(Some("r")).await.unwrap();
    bob.send_presence(None).await.unwrap();
    let first = bob.recv_message().await.unwrap();
    node.kill();
    note(&first, &mut seen);
    // What was already on its way is still read.
    while let Ok(el) = bob.recv_timeout(Duration::from_secs(10)).await {
        note(&el, &mut seen);
    }
    let before_kill = seen.len();
    drop(bob);

    node.restart();
    let mut bob = online(&node, "bob", PW, "r", None).await;
    while seen.len() < N {
        match bob.recv_message().await {
            Ok(el) => note(&el, &mut seen),
            Err(e) => panic!(
                "after the restart bob got {} of {N} messages ({before_kill} before the kill), then: {e}",
                seen.len()
            ),
        }
    }
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    eprintln!("offline delivery across a kill: {before_kill} read before the kill, {duplicates} delivered twice");
}
