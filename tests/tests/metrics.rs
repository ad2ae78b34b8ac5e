//! `/metrics` against a real node: MongooseIM 6.4's traffic events counted
//! per element, with their labels, over TCP (WebSocket and BOSH have theirs
//! in `websocket.rs` and `bosh.rs`), and the session, authentication and
//! database figures.

use meerkat_tests::client::{body, message, Sasl};
use meerkat_tests::{assert_messages_counted, login, online, wait_until, Client, Security, TestNode, DOMAIN, TIMEOUT};

const N: usize = 100;

#[tokio::test]
async fn elements_over_tcp_are_counted_with_their_labels_and_sizes() {
    let node = TestNode::start("[auth]\nallow_plain_without_tls = true\n");
    node.add_user("alice", "secret");
    node.add_user("bob", "secret");
    let logins_before = node.metrics().value("sm_session_logins", &[("host_type", DOMAIN)]);
    let mut alice = login(&node, "alice", "secret", "tcp").await;
    let mut bob = login(&node, "bob", "secret", "tcp").await;
    let m = node.metrics();
    assert_eq!(m.value("sm_session_logins", &[("host_type", DOMAIN)]) - logins_before, 2.0);
    assert_eq!(m.value("sm_session_count", &[("host_type", DOMAIN)]), 2.0);

    let before = node.metrics();
    let mut bytes = 0;
    for i in 0..N {
        let xml =
            format!("<message to='{}' type='chat' id='m{i}'><body>message number {i}</body></message>", bob.jid());
        bytes += xml.len();
        alice.send_str(&xml).await.expect("send");
    }
    for i in 0..N {
        let m = bob.recv_message().await.expect("bob receives");
        assert_eq!(m.attr("id"), Some(format!("m{i}").as_str()));
    }
    let after = node.metrics();
    assert_messages_counted(&before, &after, N, Some(bytes));
    // The bytes under them: the test client uses STARTTLS.
    let c2s = [("connection_type", "c2s")];
    let delta = |name: &str| after.value(name, &c2s) - before.value(name, &c2s);
    assert_eq!(delta("tls_data_in_byte_size"), bytes as f64, "tls_data_in");
    assert!(delta("tls_data_out_byte_size") >= bytes as f64, "tls_data_out");
    assert_eq!(delta("tcp_data_in_byte_size"), 0.0, "nothing more came in the clear");

    // A failed login counts, for its host.
    let mut c = Client::connect(node.c2s, DOMAIN, Security::Plain).await.expect("connect");
    assert!(c.auth(Sasl::Plain, "alice", "wrong").await.is_err(), "a wrong password is refused");
    let failed = node.metrics().value("c2s_auth_failed_count", &[("host_type", DOMAIN)]);
    assert_eq!(failed, 1.0);

    // A closed session is a logout; the database calls were timed.
    alice.close().await.expect("close");
    wait_until("alice's logout is counted", TIMEOUT, || {
        node.metrics().value("sm_session_logouts", &[("host_type", DOMAIN)]) == 1.0
    });
    let m = node.metrics();
    assert_eq!(m.value("sm_session_count", &[("host_type", DOMAIN)]), 1.0);
    let get_password = [("repo", "AccountRepo"), ("op", "get_password")];
    assert!(m.value("meerkat_db_query_seconds_count", &get_password) >= 2.0, "{}", m.0);

    // The modules' own figures: the archive took the conversation (both
    // sides), and a message to alice while she is away is stored, then
    // delivered when she comes back.
    wait_until("the archive writes are counted", TIMEOUT, || {
        node.metrics().value("meerkat_mam_archived_total", &[]) >= N as f64
    });
    bob.send(&message("alice@localhost", "while away")).await.expect("send");
    wait_until("the offline message is counted", TIMEOUT, || {
        node.metrics().value("meerkat_offline_stored_total", &[]) == 1.0
    });
    let mut alice = online(&node, "alice", "secret", "back", None).await;
    let m = alice.recv_message().await.expect("the stored message");
    assert_eq!(body(&m).as_deref(), Some("while away"));
    wait_until("the delivery is counted", TIMEOUT, || {
        node.metrics().value("meerkat_offline_delivered_total", &[]) == 1.0
    });
}

#[tokio::test]
async fn instrumentation_can_be_turned_off() {
    let node =
        TestNode::start("[auth]\nallow_plain_without_tls = true\n[instrumentation.prometheus]\nenabled = false\n");
    node.add_user("alice", "secret");
    let _alice = login(&node, "alice", "secret", "tcp").await;
    let m = node.metrics();
    assert!(m.sample("xmpp_element_in_count", &[]).is_none(), "events counted while off:\n{}", m.0);
    // The node's own figures are still there.
    assert_eq!(m.sample("meerkat_sessions_local", &[]), Some(1.0), "{}", m.0);
}
