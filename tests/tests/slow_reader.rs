//! A client that stops reading loses nothing: when the node lets go of it,
//! every message routed to it that it did not acknowledge (XEP-0198) goes
//! back to the account (here offline storage), whether it
//! was written, queued for writing, or still in the session's mailbox.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use meerkat_tests::client::{body, message};
use meerkat_tests::{login, online, Client, Sasl, TestNode, DOMAIN};
use meerkat_xmpp::sasl::HashAlg;

const PW: &str = "pw";

/// The most this test sends before giving up on the node letting go of the
/// slow reader: the node's send buffer can grow to `net.ipv4.tcp_wmem`'s
/// maximum (4 MiB by default), and the session's queue holds 64 KiB more.
const MAX_SENT: u32 = 12_000;

#[tokio::test]
async fn a_client_that_stops_reading_loses_none_of_what_was_sent_to_it() {
    let node = TestNode::start(&format!(
        "[session]\nmax_outgoing_bytes = 65536\n\n\
         [modules.mod_stream_management]\nbuffer_max = 100000\nbuffer_max_bytes = 104857600\n\n\
         [modules.mod_offline]\nmax_messages = {MAX_SENT}\n"
    ));
    node.add_user("alice", PW);
    node.add_user("bob", PW);
    // bob/slow: a small receive buffer, stream management on, then it never reads again.
    let mut slow = Client::tcp_with_recv_buffer(node.c2s, DOMAIN, 4096).await.unwrap();
    slow.open_stream().await.unwrap();
    slow.starttls().await.unwrap();
    slow.auth(Sasl::Scram(HashAlg::Sha256), "bob", PW).await.unwrap();
    let slow_jid = slow.bind(Some("slow")).await.unwrap();
    slow.send_str("<enable xmlns='urn:xmpp:sm:3'/>").await.unwrap();
    slow.recv_until(|el| el.name == "enabled").await.unwrap();

    // alice sends windows of 100 until the node lets go of bob/slow (how much
    // that takes depends on how far the kernel grows the connection's send
    // buffer), then one more window, which goes straight to offline storage.
    let mut alice = login(&node, "alice", PW, "sender").await;
    let pad = "p".repeat(1000);
    let mut sent = 0u32;
    let mut let_go_at = None;
    while sent < MAX_SENT {
        for i in sent..sent + 100 {
            alice.send(&message(&slow_jid, &format!("{i} {pad}"))).await.unwrap();
        }
        sent += 100;
        // Barrier: the node routed everything before this answer.
        let res = alice.iq_xml("<iq type='get' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>").await.unwrap();
        assert_eq!(res.attr("type"), Some("result"), "{res}");
        match let_go_at {
            Some(_) => break,
            None if !node.session_jids().contains(&slow_jid) => let_go_at = Some(sent),
            None => {}
        }
    }
    let let_go_at =
        let_go_at.unwrap_or_else(|| panic!("bob/slow should have been let go of within {MAX_SENT} messages"));
    eprintln!("bob/slow let go of after {let_go_at} messages, {sent} sent");
    // Barrier: storing what bob/slow gave back runs on bob's server shard, in
    // order; an IQ to bob's bare JID is answered there after all of it.
    let res = alice.iq_xml("<iq type='get' to='bob@localhost'><ping xmlns='urn:xmpp:ping'/></iq>").await.unwrap();
    assert!(matches!(res.attr("type"), Some("result") | Some("error")), "{res}");

    // bob has no other resource: everything sent is in offline storage.
    let mut back = online(&node, "bob", PW, "back", Some(0)).await;
    let mut seen = BTreeSet::new();
    while seen.len() < sent as usize {
        let m = back.recv_message().await.unwrap_or_else(|e| {
            let missing: Vec<u32> = (0..sent).filter(|i| !seen.contains(i)).take(10).collect();
            panic!("bob got {} of {sent} ({e}); missing: {missing:?}", seen.len())
        });
        let b = body(&m).unwrap();
        seen.insert(b.split(' ').next().unwrap().parse::<u32>().unwrap());
    }
    drop(slow);
}
