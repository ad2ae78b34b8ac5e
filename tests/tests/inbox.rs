//! Inbox (MongooseIM's `erlang-solutions.com:xmpp:inbox:0`) over the real
//! node with slixmpp sending raw stanzas (`tests/python/inbox.py`): unread
//! counts through messages, replies and chat markers, the filters, the
//! conversation actions echoed to a second resource, and RSM paging over
//! 1,000 conversations; on SQLite, PostgreSQL and MariaDB, and with the
//! `rdbms_async` backend on SQLite and PostgreSQL.
#![allow(clippy::unwrap_used)]

use meerkat_tests::cluster::SharedDb;
use meerkat_tests::js::python_scenario;
use meerkat_tests::node::NodeOptions;
use meerkat_tests::TestNode;
use serde_json::Value;

/// A node with `[modules.mod_inbox]` on, with `backend`, on `db` (the node's own SQLite when `None`).
fn node(db: Option<&SharedDb>, backend: &str) -> TestNode {
    let mut extra = format!("[modules.mod_inbox]\nenabled = true\nbackend = \"{backend}\"\n");
    if backend == "rdbms_async" {
        // Updates wait until a request to the inbox writes them: every
        // answer depends on that, and what the writer keeps with a waiting
        // conversation (the checks of a sender) lives through the scenario.
        extra.push_str("[modules.mod_inbox.async_writer]\nflush_interval = 600000\n");
    }
    if let Some(db) = db {
        extra.push_str(&format!("\n[outgoing_pools.rdbms.default]\nworkers = 4\nconnection.url = \"{}\"\n", db.url));
    }
    let node = TestNode::start_with(NodeOptions { extra_toml: extra, ..Default::default() });
    for user in ["alice", "bob", "carol", "dave", "erin", "fay"] {
        node.add_user(user, "secret");
    }
    node
}

/// Runs one scenario of `tests/python/inbox.py`; its JSON summary.
fn scenario(node: &TestNode, name: &str) -> Value {
    python_scenario("inbox.py", &[name], node)
}

fn both_scenarios(db: Option<&SharedDb>) {
    both_scenarios_with(db, "rdbms");
}

fn both_scenarios_with(db: Option<&SharedDb>, backend: &str) {
    let node = node(db, backend);
    assert_eq!(scenario(&node, "conversations")["ok"], true);
    let paged = scenario(&node, "paging");
    assert_eq!(paged["conversations"], 1000, "{paged}");
    assert_eq!(paged["pages"], 10, "{paged}");
}

#[test]
fn inbox_on_sqlite() {
    both_scenarios(None);
}

#[test]
fn inbox_on_postgresql() {
    both_scenarios(Some(&SharedDb::postgres()));
}

#[test]
fn inbox_on_mariadb() {
    both_scenarios(Some(&SharedDb::mysql()));
}

/// The `rdbms_async` backend (updates coalesced and written in batches) gives the same answers.
#[test]
fn inbox_async_on_sqlite() {
    both_scenarios_with(None, "rdbms_async");
}

#[test]
fn inbox_async_on_postgresql() {
    both_scenarios_with(Some(&SharedDb::postgres()), "rdbms_async");
}
