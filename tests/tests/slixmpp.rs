//! slixmpp, an independent client library, against the real node: SCRAM-SHA-256
//! over STARTTLS with certificate verification, mutual subscription and
//! presence, 1,000 messages each way in order, and an offline message with a
//! delay stamp (`tests/python/scenario.py`); and slixmpp's own extension
//! plugins, one scenario each (`tests/python/extensions.py`): XEP-0313 message
//! archives paged with XEP-0059, XEP-0280 carbons, XEP-0191 blocking and
//! XEP-0198 stream resumption after an abrupt TCP cut.

use std::path::PathBuf;
use std::process::Command;

use meerkat_tests::TestNode;
use serde_json::{json, Value};

fn python() -> PathBuf {
    let venv =
        std::env::var_os("MEERKAT_VENV").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/var/tmp/meerkat-venv"));
    let py = venv.join("bin/python");
    assert!(py.is_file(), "{} is missing: run ./tests/run.sh, which installs slixmpp there", py.display());
    py
}

#[test]
fn slixmpp_scram_sha256_starttls_presence_and_1000_messages_each_way() {
    let node = TestNode::start("");
    node.add_user("alice", "secret");
    node.add_user("bob", "secret");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/scenario.py");
    let out = Command::new(python())
        .arg(&script)
        .args(["--host", "127.0.0.1", "--port", &node.c2s.port().to_string(), "--domain", "localhost"])
        .arg("--ca")
        .arg(node.cert_path())
        .args(["--count", "1000"])
        .output()
        .expect("running the slixmpp scenario");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "scenario failed ({}):\n{stdout}\n{stderr}", out.status);
    let summary: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("JSON summary");
    assert_eq!(summary["mechanism"], "SCRAM-SHA-256");
    assert_eq!(summary["messages_each_way"], 1000);
    assert!(!summary["offline_delay_stamp"].as_str().unwrap_or_default().is_empty());
}

/// Runs one subcommand of `tests/python/extensions.py` against a fresh node with
/// alice, bob and carol, and returns the script's JSON summary.
fn extension_scenario(scenario: &str) -> Value {
    let node = TestNode::start("");
    for user in ["alice", "bob", "carol"] {
        node.add_user(user, "secret");
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/extensions.py");
    let out = Command::new(python())
        .arg(&script)
        .arg(scenario)
        .args(["--host", "127.0.0.1", "--port", &node.c2s.port().to_string(), "--domain", "localhost"])
        .arg("--ca")
        .arg(node.cert_path())
        .output()
        .expect("running the slixmpp extensions scenario");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{scenario} scenario failed ({}):\n{stdout}\n{stderr}", out.status);
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("JSON summary");
    println!("{scenario}: {summary}");
    assert_eq!(summary["scenario"], scenario);
    summary
}

#[test]
fn slixmpp_mam_pages_30_messages_with_rsm_and_filters_on_start() {
    let s = extension_scenario("mam");
    assert_eq!(s["archived"], 30);
    assert_eq!(s["pages"], json!([10, 10, 10]));
    // slixmpp stops by itself after the third page, from the <first index> and <count>.
    assert_eq!(s["requests"], 3);
    assert_eq!(s["in_order"], true);
    assert_eq!(s["after_start"], 10);
    assert_eq!(s["first_after_start"], "mam 20");
}

#[test]
fn slixmpp_carbons_copy_received_and_sent_messages_to_the_other_resource() {
    let s = extension_scenario("carbons");
    assert_eq!(
        s["received_carbon"],
        json!({"from": "alice@localhost/laptop", "to": "bob@localhost/a", "body": "to a"})
    );
    assert_eq!(s["sent_carbon"], json!({"from": "bob@localhost/a", "to": "alice@localhost", "body": "from a"}));
}

#[test]
fn slixmpp_blocking_bounces_messages_until_unblocked() {
    let s = extension_scenario("blocking");
    assert_eq!(s["blocklist"], json!(["alice@localhost"]));
    assert_eq!(s["blocked_error"], "service-unavailable");
    assert_eq!(s["blocklist_after_unblock"], json!([]));
    assert_eq!(s["delivered_after_unblock"], true);
}

#[test]
fn slixmpp_stream_management_resumes_after_tcp_cut_with_100_messages_exactly_once_in_order() {
    let s = extension_scenario("sm_resume");
    assert_eq!(s["resumed"], true);
    assert_eq!(s["previd_matches"], true);
    // One bind, one session_start, one <enabled/>, then the cut is healed by one <resumed/>.
    assert_eq!(
        s["events"],
        json!({"session_start": 1, "session_bind": 1, "sm_enabled": 1, "session_resumed": 1, "sm_failed": 0})
    );
    assert_eq!(s["received"], 100);
    assert_eq!(s["distinct"], 100);
    assert_eq!(s["in_order"], true);
    // The cut really fell in the middle of the stream of messages.
    assert!(s["cut_after"].as_u64().unwrap() < 100);
}
