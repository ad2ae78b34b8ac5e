//! Session life cycle over the real node: in-band registration (XEP-0077),
//! resource conflicts, legacy session establishment, idle timeout and the
//! outgoing-bytes cap for clients that do not read.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use meerkat_tests::client::{message, stanza_error};
use meerkat_tests::{assert_messaging_works, login, wait_until, Client, ClientError, Sasl, Security, TestNode, DOMAIN};
use meerkat_xmpp::ns;
use meerkat_xmpp::sasl::HashAlg;

const PW: &str = "pw";

const REGISTER_SET: &str = "<iq type='set' id='reg'><query xmlns='jabber:iq:register'><username>newbie</username><password>fresh-pw</password></query></iq>";

#[tokio::test]
async fn in_band_registration() {
    let node = TestNode::start("");
    // Not on an unencrypted stream (PLAIN is not allowed there either).
    let mut plain = Client::connect(node.c2s, DOMAIN, Security::Plain).await.unwrap();
    assert!(!plain.has_feature("register", ns::REGISTER_FEATURE));
    let res = plain.iq_xml(REGISTER_SET).await.unwrap();
    assert_eq!(res.attr("type"), Some("error"), "{res}");

    let mut c = Client::connect(node.c2s, DOMAIN, Security::StartTls).await.unwrap();
    assert!(c.has_feature("register", ns::REGISTER_FEATURE), "{:?}", c.features);
    let form = c.iq_xml("<iq type='get'><query xmlns='jabber:iq:register'/></iq>").await.unwrap();
    let q = form.get_child("query", ns::REGISTER).unwrap_or_else(|| panic!("{form}"));
    assert!(q.has_child("username", ns::REGISTER) && q.has_child("password", ns::REGISTER), "{form}");
    let res = c.iq_xml(REGISTER_SET).await.unwrap();
    assert_eq!(res.attr("type"), Some("result"), "{res}");
    // One account per stream (a taken name is a conflict: tests/tests/limits.rs).
    let res = c.iq_xml(REGISTER_SET).await.unwrap();
    assert_eq!(stanza_error(&res).as_deref(), Some("not-allowed"), "{res}");
    // The new account logs in, on this very stream.
    c.auth(Sasl::Scram(HashAlg::Sha256), "newbie", "fresh-pw").await.unwrap();
    c.bind(Some("r")).await.unwrap();

    // After login, XEP-0077 changes the password.
    let res = c
        .iq_xml("<iq type='set' to='localhost'><query xmlns='jabber:iq:register'><username>newbie</username><password>newer-pw</password></query></iq>")
        .await
        .unwrap();
    assert_eq!(res.attr("type"), Some("result"), "{res}");
    let err = Client::login(node.c2s, DOMAIN, "newbie", "fresh-pw", None).await.err().unwrap();
    assert!(matches!(&err, ClientError::SaslFailure(c) if c == "not-authorized"), "{err}");
    login(&node, "newbie", "newer-pw", "again").await;
}

#[tokio::test]
async fn registration_disabled_is_refused() {
    let node = TestNode::start("[modules.mod_register]\nenabled = false\n");
    let mut c = Client::connect(node.c2s, DOMAIN, Security::StartTls).await.unwrap();
    assert!(!c.has_feature("register", ns::REGISTER_FEATURE), "{:?}", c.features);
    let res = c.iq_xml(REGISTER_SET).await.unwrap();
    assert_eq!(res.attr("type"), Some("error"), "{res}");
    assert_eq!(stanza_error(&res).as_deref(), Some("service-unavailable"), "{res}");
    let err = c.auth(Sasl::Plain, "newbie", "fresh-pw").await.unwrap_err();
    assert!(matches!(&err, ClientError::SaslFailure(c) if c == "not-authorized"), "{err}");
    // The account really does not exist.
    let (code, v) = node.api("GET", "/api/users/localhost", None);
    assert_eq!(code, 200);
    assert_eq!(v["users"].as_array().unwrap().len(), 0, "{v}");
    // And the server's disco does not advertise it.
    node.add_user("alice", PW);
    let mut a = login(&node, "alice", PW, "r").await;
    let res = a
        .iq_xml("<iq type='get' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        .await
        .unwrap();
    assert!(!res.to_string().contains("jabber:iq:register"), "{res}");
}

#[tokio::test]
async fn same_full_jid_kicks_the_older_session_with_conflict() {
    let node = TestNode::start("");
    node.add_user("alice", PW);
    let mut first = login(&node, "alice", PW, "same").await;
    let mut second = login(&node, "alice", PW, "same").await;
    assert_eq!(first.expect_stream_error().await, "conflict");
    first.wait_closed(Duration::from_secs(10)).await.unwrap();
    let res = second.iq_xml("<iq type='get' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>").await.unwrap();
    assert_eq!(res.attr("type"), Some("result"));
    assert_eq!(node.session_jids(), vec!["alice@localhost/same".to_string()]);
}

#[tokio::test]
async fn legacy_session_establishment_is_answered() {
    let node = TestNode::start("");
    node.add_user("alice", PW);
    let mut c = Client::connect(node.c2s, DOMAIN, Security::StartTls).await.unwrap();
    c.auth(Sasl::ScramPlus(HashAlg::Sha512), "alice", PW).await.unwrap();
    // RFC 3921 session feature, marked optional (RFC 6121 Appendix E).
    let session = c.features.as_ref().unwrap().get_child("session", ns::SESSION).expect("session feature");
    assert!(session.has_child("optional", ns::SESSION));
    c.bind(Some("r")).await.unwrap();
    let res = c.iq_xml("<iq type='set'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>").await.unwrap();
    assert_eq!(res.attr("type"), Some("result"), "{res}");
}

#[tokio::test]
async fn idle_client_gets_connection_timeout() {
    // A server setting, not a test sleep: the test only waits for the stream error.
    let node = TestNode::start("[session]\nidle_timeout = 1\n");
    node.add_user("alice", PW);
    let mut c = login(&node, "alice", PW, "idle").await;
    assert_eq!(c.expect_stream_error().await, "connection-timeout");
    c.wait_closed(Duration::from_secs(10)).await.unwrap();
    wait_until("the idle session to be removed", Duration::from_secs(10), || node.session_jids().is_empty());
}

#[tokio::test]
async fn client_that_never_reads_is_disconnected() {
    let node = TestNode::start("[session]\nmax_outgoing_bytes = 65536\n");
    node.add_user("victim", PW);
    node.add_user("flooder", PW);
    // The victim logs in over plain TCP with a small receive buffer, then stops reading.
    let mut victim = Client::tcp_with_recv_buffer(node.c2s, DOMAIN, 4096).await.unwrap();
    victim.open_stream().await.unwrap();
    victim.auth(Sasl::Scram(HashAlg::Sha1), "victim", PW).await.unwrap();
    let victim_jid = victim.bind(Some("slow")).await.unwrap();
    let mut flooder = login(&node, "flooder", PW, "fast").await;

    let big = "z".repeat(32 * 1024);
    let mut sent = 0usize;
    let mut gone = false;
    // Socket buffers absorb a few megabytes before the server's queue grows; stop as soon as the node lets go of the victim.
    for _ in 0..200 {
        for _ in 0..16 {
            flooder.send(&message(&victim_jid, &big)).await.unwrap();
            sent += big.len();
        }
        // Barrier: once the server answered this, it has routed everything before it.
        let res = flooder.iq_xml("<iq type='get' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>").await.unwrap();
        assert_eq!(res.attr("type"), Some("result"), "{res}");
        if !node.session_jids().contains(&victim_jid) {
            gone = true;
            break;
        }
    }
    assert!(gone, "the victim was still connected after {sent} bytes");
    eprintln!("the victim was disconnected after {sent} bytes");
    // The victim's connection is closed: reading what is buffered ends in EOF or a reset.
    victim.wait_closed(Duration::from_secs(30)).await.unwrap();
    // The flooder and the node are fine.
    let res = flooder.iq_xml("<iq type='get' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>").await.unwrap();
    assert_eq!(res.attr("type"), Some("result"));
    assert_messaging_works(&node, "flooder", "victim", PW).await;
}
