//! OMEMO (XEP-0384) through PEP: two slixmpp clients with slixmpp-omemo
//! (`tests/python/omemo_chat.py`, unmodified libraries pinned in
//! `tests/python/requirements.txt`) publish their device lists and bundles
//! and exchange encrypted messages both ways; once as contacts (device
//! lists arrive as PEP notifications), once as strangers (each fetches the
//! other's from PEP).
#![allow(clippy::unwrap_used)]

use meerkat_tests::js::python_scenario;
use meerkat_tests::TestNode;
use serde_json::Value;

fn scenario(name: &str) -> Value {
    let node = TestNode::start("[modules.mod_pubsub]\nenabled = true\n");
    for user in ["alice", "bob"] {
        node.add_user(user, "secret");
    }
    python_scenario("omemo_chat.py", &[name], &node)
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
