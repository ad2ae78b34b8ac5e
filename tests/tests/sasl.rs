//! Stream negotiation over the real node: STARTTLS, direct TLS, SASL
//! mechanisms and channel binding (RFC 6120 §5–§6, RFC 9266, XEP-0440).
#![allow(clippy::unwrap_used)]

use meerkat_tests::client::parse_element;
use meerkat_tests::{login, Binding, Client, ClientError, Sasl, Security, TestNode, TlsTrust, DOMAIN};
use meerkat_xmpp::ns;
use meerkat_xmpp::sasl::HashAlg;

const PW: &str = "secret-pw";

/// Authenticates, binds and proves the session works with a ping to the server.
async fn auth_and_ping(mut c: Client, sasl: Sasl, user: &str) {
    c.auth(sasl, user, PW).await.unwrap_or_else(|e| panic!("{}: {e}", sasl.name()));
    let jid = c.bind(Some("r")).await.unwrap();
    assert_eq!(jid, format!("{user}@{DOMAIN}/r"));
    let res = c.iq_xml("<iq type='get' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>").await.unwrap();
    assert_eq!(res.attr("type"), Some("result"), "{res}");
}

#[tokio::test]
async fn scram_sha256_plus_over_starttls() {
    let node = TestNode::start("");
    node.add_user("alice", PW);
    let c = Client::connect(node.c2s, DOMAIN, Security::StartTls).await.unwrap();
    assert_eq!(c.tls_version(), Some(rustls::ProtocolVersion::TLSv1_3));
    assert!(c.mechanisms().contains(&"SCRAM-SHA-256-PLUS".to_string()), "{:?}", c.mechanisms());
    auth_and_ping(c, Sasl::ScramPlus(HashAlg::Sha256), "alice").await;
}

#[tokio::test]
async fn every_plus_mechanism_over_direct_tls() {
    let node = TestNode::start("");
    node.add_user("alice", PW);
    for h in [HashAlg::Sha1, HashAlg::Sha256, HashAlg::Sha512] {
        let c = Client::connect(node.c2s_tls, DOMAIN, Security::DirectTls).await.unwrap();
        auth_and_ping(c, Sasl::ScramPlus(h), "alice").await;
    }
}

#[tokio::test]
async fn wrong_channel_binding_is_not_authorized() {
    let node = TestNode::start("");
    node.add_user("alice", PW);
    let mut c = Client::connect(node.c2s, DOMAIN, Security::StartTls).await.unwrap();
    let err = c.auth_with(Sasl::ScramPlus(HashAlg::Sha256), "alice", PW, Binding::Corrupted).await.unwrap_err();
    assert!(matches!(&err, ClientError::SaslFailure(c) if c == "not-authorized"), "{err}");
    // The stream stays usable: a correct attempt on the same stream succeeds.
    auth_and_ping(c, Sasl::ScramPlus(HashAlg::Sha256), "alice").await;
}

#[tokio::test]
async fn scram_and_plain_over_tls() {
    let node = TestNode::start("");
    node.add_user("alice", PW);
    for sasl in [Sasl::Scram(HashAlg::Sha1), Sasl::Scram(HashAlg::Sha256), Sasl::Scram(HashAlg::Sha512), Sasl::Plain] {
        let c = Client::connect(node.c2s, DOMAIN, Security::StartTls).await.unwrap();
        auth_and_ping(c, sasl, "alice").await;
    }
    let c = Client::connect(node.c2s_tls, DOMAIN, Security::DirectTls).await.unwrap();
    auth_and_ping(c, Sasl::Plain, "alice").await;
}

#[tokio::test]
async fn scram_without_tls_works_but_plain_and_plus_are_not_offered() {
    let node = TestNode::start("");
    node.add_user("alice", PW);
    let mut c = Client::connect(node.c2s, DOMAIN, Security::Plain).await.unwrap();
    let mechs = c.mechanisms();
    assert!(c.has_feature("starttls", ns::TLS));
    assert!(!mechs.contains(&"PLAIN".to_string()), "{mechs:?}");
    assert!(!mechs.iter().any(|m| m.ends_with("-PLUS")), "{mechs:?}");
    assert!(c.channel_bindings().is_empty());
    assert!(mechs.contains(&"SCRAM-SHA-256".to_string()), "{mechs:?}");
    // Asking for PLAIN anyway is refused.
    let err = c.auth(Sasl::Plain, "alice", PW).await.unwrap_err();
    assert!(matches!(&err, ClientError::SaslFailure(c) if c == "encryption-required"), "{err}");
    auth_and_ping(c, Sasl::Scram(HashAlg::Sha256), "alice").await;
}

/// A c2s listener without `tls.mode` requires STARTTLS (the default is
/// `starttls_required`, so a man in the middle cannot strip STARTTLS and see
/// SCRAM in the clear): before TLS it offers nothing but `<starttls><required/>`
/// (RFC 6120 §5.3.1), not even PLAIN with `allow_plain_without_tls`, nor
/// registration; `<auth/>` gets `<encryption-required/>` and the stream ends
/// with `<policy-violation/>`. After STARTTLS the login is as usual. A listener
/// set to `none` keeps working without TLS.
#[tokio::test]
async fn c2s_listener_requires_starttls_by_default_and_none_still_works() {
    use meerkat_tests::node::free_port;
    let (default_port, none_port) = (free_port(), free_port());
    let node = TestNode::start(&format!(
        "[auth]\nallow_plain_without_tls = true\n\n\
         [[listen.c2s]]\nport = {default_port}\nip_address = \"127.0.0.1\"\n\n\
         [[listen.c2s]]\nport = {none_port}\nip_address = \"127.0.0.1\"\ntls.mode = \"none\"\n"
    ));
    node.add_user("alice", PW);
    let by_default: std::net::SocketAddr = ([127, 0, 0, 1], default_port).into();
    let none: std::net::SocketAddr = ([127, 0, 0, 1], none_port).into();

    let mut c = Client::connect(by_default, DOMAIN, Security::Plain).await.unwrap();
    let features = c.features.clone().unwrap();
    let starttls = features.get_child("starttls", ns::TLS).unwrap_or_else(|| panic!("no STARTTLS: {features}"));
    assert!(starttls.has_child("required", ns::TLS), "{features}");
    assert!(!features.has_child("mechanisms", ns::SASL), "no SASL before TLS: {features}");
    assert!(!c.has_feature("register", ns::REGISTER_FEATURE), "no registration before TLS: {features}");
    let err = c.auth(Sasl::Scram(HashAlg::Sha256), "alice", PW).await.unwrap_err();
    assert!(matches!(&err, ClientError::SaslFailure(c) if c == "encryption-required"), "{err}");
    assert_eq!(c.wait_closed(std::time::Duration::from_secs(10)).await.unwrap().as_deref(), Some("policy-violation"));

    let mut c = Client::connect(by_default, DOMAIN, Security::Plain).await.unwrap();
    let res = c
        .iq_xml("<iq type='set' id='reg'><query xmlns='jabber:iq:register'><username>mallory</username><password>pw</password></query></iq>")
        .await
        .unwrap();
    assert_eq!(res.attr("type"), Some("error"), "registration before TLS: {res}");

    let c = Client::connect(by_default, DOMAIN, Security::StartTls).await.unwrap();
    assert!(c.mechanisms().contains(&"SCRAM-SHA-256-PLUS".to_string()), "{:?}", c.mechanisms());
    auth_and_ping(c, Sasl::ScramPlus(HashAlg::Sha256), "alice").await;

    let c = Client::connect(none, DOMAIN, Security::Plain).await.unwrap();
    assert!(!c.has_feature("starttls", ns::TLS), "{:?}", c.features);
    assert!(c.mechanisms().contains(&"PLAIN".to_string()), "{:?}", c.mechanisms());
    auth_and_ping(c, Sasl::Plain, "alice").await;
    let c = Client::connect(none, DOMAIN, Security::Plain).await.unwrap();
    auth_and_ping(c, Sasl::Scram(HashAlg::Sha256), "alice").await;
}

#[tokio::test]
async fn plus_mechanisms_and_channel_binding_advertised_after_tls() {
    let node = TestNode::start("");
    let c = Client::connect(node.c2s, DOMAIN, Security::StartTls).await.unwrap();
    let mechs = c.mechanisms();
    for m in ["SCRAM-SHA-512-PLUS", "SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS", "PLAIN"] {
        assert!(mechs.contains(&m.to_string()), "{m} missing from {mechs:?}");
    }
    assert!(!c.has_feature("starttls", ns::TLS), "STARTTLS offered twice");
    // <sasl-channel-binding xmlns='urn:xmpp:sasl-cb:0'><channel-binding type='tls-exporter'/>
    let cb = c.features.as_ref().unwrap().get_child("sasl-channel-binding", ns::SASL_CB).expect("XEP-0440 element");
    assert!(
        cb.elements().any(|e| e.is("channel-binding", ns::SASL_CB) && e.attr("type") == Some("tls-exporter")),
        "{cb}"
    );
    assert_eq!(c.channel_bindings(), vec!["tls-exporter".to_string()]);
}

#[tokio::test]
async fn wrong_password_and_unknown_user_are_not_authorized() {
    let node = TestNode::start("");
    node.add_user("alice", PW);
    for sasl in [Sasl::Scram(HashAlg::Sha256), Sasl::Plain, Sasl::ScramPlus(HashAlg::Sha512)] {
        let mut c = Client::connect(node.c2s, DOMAIN, Security::StartTls).await.unwrap();
        let err = c.auth(sasl, "alice", "wrong").await.unwrap_err();
        assert!(matches!(&err, ClientError::SaslFailure(c) if c == "not-authorized"), "{}: {err}", sasl.name());
        let err = c.auth(sasl, "nobody", PW).await.unwrap_err();
        assert!(matches!(&err, ClientError::SaslFailure(c) if c == "not-authorized"), "{}: {err}", sasl.name());
    }
}

#[tokio::test]
async fn self_signed_certificate_verifies_for_the_domain() {
    let node = TestNode::start("");
    node.add_user("alice", PW);
    let mut c = Client::tcp(node.c2s, DOMAIN).await.unwrap();
    c.set_tls_trust(TlsTrust::Pem(node.cert_path()));
    c.open_stream().await.unwrap();
    c.starttls().await.unwrap();
    auth_and_ping(c, Sasl::ScramPlus(HashAlg::Sha256), "alice").await;
}

#[tokio::test]
async fn login_helper_and_bind_without_resource() {
    let node = TestNode::start("");
    node.add_user("alice", PW);
    let mut c = Client::connect(node.c2s, DOMAIN, Security::StartTls).await.unwrap();
    c.auth(Sasl::Scram(HashAlg::Sha256), "alice", PW).await.unwrap();
    assert!(c.has_feature("bind", ns::BIND));
    let jid = c.bind(None).await.unwrap();
    assert!(jid.starts_with("alice@localhost/") && jid.len() > "alice@localhost/".len(), "{jid}");
    let mut d = login(&node, "alice", PW, "second").await;
    assert_eq!(d.jid(), "alice@localhost/second");
    let res = d.iq(parse_element("<iq type='get'><ping xmlns='urn:xmpp:ping'/></iq>")).await.unwrap();
    assert_eq!(res.attr("type"), Some("result"), "{res}");
}

/// `s=` (decoded) and `i=` of the SCRAM server-first message `user` gets.
async fn scram_salt_and_iterations(node: &TestNode, hash: HashAlg, user: &str) -> (Vec<u8>, String) {
    use base64::engine::general_purpose::STANDARD as B64;
    use base64::Engine as _;
    let mut c = Client::connect(node.c2s, DOMAIN, Security::StartTls).await.unwrap();
    let mech = Sasl::Scram(hash).name();
    let first = B64.encode(format!("n,,n={user},r=fyko+d2lbbFgONRv9qkxdawL"));
    c.send_str(&format!("<auth xmlns='{}' mechanism='{mech}'>{first}</auth>", ns::SASL)).await.unwrap();
    let challenge = c.recv().await.unwrap();
    assert_eq!(challenge.name, "challenge", "{mech} for {user}: {challenge}");
    let server_first = String::from_utf8(B64.decode(challenge.text().trim()).unwrap()).unwrap();
    let field = |k: &str| {
        server_first.split(',').find_map(|f| f.strip_prefix(k)).unwrap_or_else(|| panic!("{server_first}")).to_owned()
    };
    (B64.decode(field("s=")).unwrap(), field("i="))
}

/// Account enumeration (RFC 5802 §9): a SCRAM client cannot tell an unknown
/// user from a known one by the iteration count, the salt's length, or a
/// salt that changes when the node restarts.
#[tokio::test]
async fn unknown_users_look_like_known_ones_to_scram_across_a_restart() {
    let mut node = TestNode::start("[auth.password]\nscram_iterations = 5000\n");
    node.add_user("alice", PW);
    let hashes = [HashAlg::Sha1, HashAlg::Sha256, HashAlg::Sha512];
    let mut before = Vec::new();
    for h in hashes {
        let known = scram_salt_and_iterations(&node, h, "alice").await;
        let unknown = scram_salt_and_iterations(&node, h, "nobody").await;
        assert_eq!(known.1, "5000", "{h:?}: known user's iterations");
        assert_eq!(unknown.1, known.1, "{h:?}: iterations tell an unknown user apart");
        assert_eq!(unknown.0.len(), known.0.len(), "{h:?}: salt length tells an unknown user apart");
        assert_eq!(scram_salt_and_iterations(&node, h, "nobody").await, unknown, "{h:?}: stable salt");
        before.push(unknown);
    }
    node.stop();
    node.restart();
    for (h, unknown) in hashes.into_iter().zip(before) {
        assert_eq!(
            scram_salt_and_iterations(&node, h, "nobody").await,
            unknown,
            "{h:?}: an unknown user's salt changed across a restart"
        );
    }
}
