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

/// One sender far faster than its recipient's session, and room for only
/// eight deliveries past the recipient's mailbox: the sender's connection is
/// not read while they wait, so none is refused and all arrive in order.
#[tokio::test(flavor = "multi_thread")]
async fn a_sender_waits_while_its_recipients_overflow_is_in_use() {
    let node = TestNode::start("[session]\nmailbox_capacity = 2\nmailbox_overflow = 8\n");
    node.add_user("alice", "secret");
    node.add_user("bob", "secret");
    let mut alice = online(&node, "alice", "secret", "a", None).await;
    let mut bob = online(&node, "bob", "secret", "b", None).await;
    const N: usize = 2000;
    let sending = tokio::spawn(async move {
        for i in 0..N {
            alice.send(&message("bob@localhost/b", &format!("m{i}"))).await.expect("send");
        }
        alice
    });
    for i in 0..N {
        let m = bob.recv_message().await.unwrap_or_else(|e| panic!("message {i}: {e}"));
        assert_eq!(body(&m).as_deref(), Some(format!("m{i}").as_str()), "out of order at {i}");
    }
    sending.await.expect("sender");
    let refused = node.metrics().value("meerkat_session_overflow_refused_total", &[]);
    assert_eq!(refused, 0.0, "deliveries refused for lack of room");
}

/// Many senders and one recipient whose session cannot keep up: the senders
/// are made to wait (their connections are not read) while the recipient's
/// mailbox is over its capacity, so no delivery is ever refused for lack of
/// room, and every message arrives, each sender's in its order.
#[tokio::test(flavor = "multi_thread")]
async fn senders_wait_while_a_recipient_cannot_keep_up() {
    // Room for a few deliveries past the mailbox: each sender has at most
    // its own mailbox's worth (and the one in hand) on the way when told to wait.
    let node = TestNode::start("[session]\nmailbox_capacity = 2\nmailbox_overflow = 128\n");
    const SENDERS: usize = 20;
    const N: usize = 500;
    node.add_user("bob", "secret");
    for k in 0..SENDERS {
        node.add_user(&format!("s{k}"), "secret");
    }
    let mut bob = online(&node, "bob", "secret", "b", None).await;
    let mut senders = Vec::new();
    for k in 0..SENDERS {
        senders.push(online(&node, &format!("s{k}"), "secret", "s", None).await);
    }
    let tasks: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(k, mut c)| {
            tokio::spawn(async move {
                for i in 0..N {
                    c.send(&message("bob@localhost/b", &format!("{k} {i}"))).await.expect("send");
                }
                c
            })
        })
        .collect();
    let mut next = [0usize; SENDERS];
    for n in 0..SENDERS * N {
        let m = bob.recv_message().await.unwrap_or_else(|e| panic!("message {n}: {e}"));
        let text = body(&m).unwrap_or_default();
        let (k, i) = text.split_once(' ').unwrap_or_else(|| panic!("unexpected body {text:?}"));
        let (k, i): (usize, usize) = (k.parse().expect("sender"), i.parse().expect("index"));
        assert_eq!(i, next[k], "sender {k} out of order");
        next[k] += 1;
    }
    for t in tasks {
        t.await.expect("sender");
    }
    let refused = node.metrics().value("meerkat_session_overflow_refused_total", &[]);
    assert_eq!(refused, 0.0, "deliveries refused for lack of room");
}
