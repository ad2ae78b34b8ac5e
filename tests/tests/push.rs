//! XEP-0357 push notifications (`[modules.mod_event_pusher.push]`) over the
//! real node with Inbox on: a slixmpp client's full JID is the app server
//! (`tests/python/push.py`), and gets a publish for each message to an
//! offline user, with that user's unread total as `message-count`.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;

use meerkat_tests::js::venv_python;
use meerkat_tests::node::NodeOptions;
use meerkat_tests::TestNode;

#[test]
fn the_app_server_gets_a_notification_with_the_unread_total_per_message_to_an_offline_user() {
    let node = TestNode::start_with(NodeOptions {
        extra_toml: "[modules.mod_inbox]\nenabled = true\n\n[modules.mod_event_pusher]\nenabled = true\n\
                     [modules.mod_event_pusher.push]\nbackend = \"rdbms\"\n"
            .into(),
        ..Default::default()
    });
    for user in ["alice", "bob", "carol", "appserver"] {
        node.add_user(user, "secret");
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/push.py");
    let out = Command::new(venv_python())
        .arg(script)
        .args(["--port", &node.c2s.port().to_string()])
        .arg("--ca")
        .arg(node.cert_path())
        .output()
        .expect("running push.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "push.py failed:\n{stdout}\n{}\nnode log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        node.log()
    );
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap();
    assert_eq!(summary["notifications"], 5, "{summary}");
}
