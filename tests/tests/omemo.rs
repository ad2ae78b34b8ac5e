//! OMEMO (XEP-0384) through PEP: two slixmpp clients with slixmpp-omemo
//! (`tests/python/omemo_chat.py`, unmodified libraries pinned in
//! `tests/python/requirements.txt`) publish their device lists and bundles
//! and exchange encrypted messages both ways; once as contacts (device
//! lists arrive as PEP notifications), once as strangers (each fetches the
//! other's from PEP).
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;

use meerkat_tests::js::venv_python;
use meerkat_tests::TestNode;
use serde_json::Value;

fn scenario(name: &str) -> Value {
    let node = TestNode::start("[modules.mod_pubsub]\nenabled = true\n");
    for user in ["alice", "bob"] {
        node.add_user(user, "secret");
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/omemo_chat.py");
    let out = Command::new(venv_python())
        .arg(script)
        .args([name, "--port", &node.c2s.port().to_string()])
        .arg("--ca")
        .arg(node.cert_path())
        .output()
        .expect("running omemo_chat.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "omemo_chat.py {name} failed:\n{stdout}\n{}\nnode log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        node.log()
    );
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap()
}

#[test]
fn contacts_exchange_omemo_messages_through_pep_notifications() {
    let v = scenario("contacts");
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["bob_devices_seen_by_alice"], 1, "{v}");
}

#[test]
fn strangers_exchange_omemo_messages_fetching_from_pep() {
    let v = scenario("strangers");
    assert_eq!(v["ok"], true, "{v}");
}
