//! slixmpp, an independent client library, against the real node: SCRAM-SHA-256
//! over STARTTLS with certificate verification, mutual subscription and
//! presence, 1,000 messages each way in order, and an offline message with a
//! delay stamp (`tests/python/scenario.py`).

use std::path::PathBuf;
use std::process::Command;

use meerkat_tests::TestNode;

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
