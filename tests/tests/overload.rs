//! A recipient whose session cannot keep up: its bounded mailbox fills, and
//! what arrives meanwhile must still reach it in the order it was sent,
//! not overtaken by later messages (as when the overflow went to offline
//! storage and came back behind them).

use meerkat_tests::client::{body, message};
use meerkat_tests::{online, TestNode};

#[tokio::test(flavor = "multi_thread")]
async fn a_full_mailbox_keeps_the_order_of_messages() {
    // A tiny mailbox, so that a burst overflows it at once.
    let node = TestNode::start("[session]\nmailbox_capacity = 2\n");
    node.add_user("alice", "secret");
    node.add_user("bob", "secret");
    let mut alice = online(&node, "alice", "secret", "a", None).await;
    let mut bob = online(&node, "bob", "secret", "b", None).await;
    const N: usize = 1000;
    for i in 0..N {
        alice.send(&message("bob@localhost/b", &format!("m{i}"))).await.expect("send");
    }
    for i in 0..N {
        let m = bob.recv_message().await.unwrap_or_else(|e| panic!("message {i}: {e}"));
        assert_eq!(body(&m).as_deref(), Some(format!("m{i}").as_str()), "out of order at {i}");
    }
}
