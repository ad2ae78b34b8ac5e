//! SASL EXTERNAL with client certificates (XEP-0178) over the real node, with
//! certificates this test makes: slixmpp logs in over STARTTLS and direct TLS
//! with an xmppAddr certificate and with a common-name one; another user's
//! certificate, an expired one, one from a foreign CA and one for an account
//! that does not exist are refused (`tests/python/external.py`). stanza, in
//! headless Chromium with the certificate in the browser's own store, logs in
//! over wss:// and HTTPS BOSH (`tests/js/external.mjs`). The Rust client
//! checks what the node offers and answers on the wire.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use meerkat_tests::client::ClientCert;
use meerkat_tests::js::venv_python;
use meerkat_tests::node::NodeOptions;
use meerkat_tests::{Client, ClientError, TestNode, DOMAIN};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};
use serde_json::Value;

/// id-on-xmppAddr (RFC 6120 §13.7.1.4).
const XMPP_ADDR: [u64; 9] = [1, 3, 6, 1, 5, 5, 7, 8, 5];

/// A certificate authority of the test.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca { pem: cert.pem(), issuer: Issuer::new(params, key) }
    }

    /// A client certificate with these xmppAddrs and common name, valid now
    /// unless `expired`; written to `dir` as `<name>.pem` and `<name>.key`.
    fn client(&self, dir: &Path, name: &str, addrs: &[&str], cn: Option<&str>, expired: bool) -> ClientCert {
        let mut params = CertificateParams::default();
        params.subject_alt_names =
            addrs.iter().map(|a| SanType::OtherName((XMPP_ADDR.to_vec(), (*a).into()))).collect();
        // Not rcgen's default subject, which has a common name.
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (cert_path, key_path) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        ClientCert { cert: cert_path, key: key_path }
    }
}

/// A node whose c2s listeners ask for client certificates from `ca`, with
/// EXTERNAL enabled and accounts alice, bob and carol.
fn node(dir: &Path, ca: &Ca) -> TestNode {
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, &ca.pem).unwrap();
    let node = TestNode::start_with(NodeOptions {
        c2s_toml: format!("tls.cacertfile = \"{}\"\n", ca_path.display()),
        extra_toml: "[auth]\nmethods = [\"rdbms\", \"pki\"]\n\
                     sasl_mechanisms = [\"external\", \"scram_sha256\", \"plain\"]\n\
                     sasl_external = [\"standard\", \"common_name\"]\n"
            .into(),
        ..Default::default()
    });
    for user in ["alice", "bob", "carol"] {
        node.add_user(user, "secret");
    }
    node
}

/// Runs `tests/python/external.py`; its JSON line.
fn slixmpp(node: &TestNode, cert: &ClientCert, jid: &str, direct: bool, authzid: Option<&str>, expect: &str) -> Value {
    let port = if direct { node.c2s_tls.port() } else { node.c2s.port() };
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/external.py");
    let mut cmd = Command::new(venv_python());
    cmd.arg(script)
        .args(["--port", &port.to_string(), "--jid", jid, "--expect", expect])
        .arg("--ca")
        .arg(node.cert_path())
        .arg("--cert")
        .arg(&cert.cert)
        .arg("--key")
        .arg(&cert.key);
    if direct {
        cmd.arg("--direct-tls");
    }
    if let Some(a) = authzid {
        cmd.args(["--authzid", a]);
    }
    let out = cmd.output().expect("running external.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "external.py {jid} (direct TLS: {direct}, expect {expect}) failed:\n{stdout}\n{}\nnode log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        node.log()
    );
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap()
}

#[test]
fn slixmpp_logs_in_with_a_client_certificate_over_starttls_and_direct_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("Meerkat test CA");
    let node = node(dir.path(), &ca);
    let alice = ca.client(dir.path(), "alice", &[&format!("alice@{DOMAIN}")], None, false);
    let carol = ca.client(dir.path(), "carol", &[], Some("carol"), false);
    for direct in [false, true] {
        let out = slixmpp(&node, &alice, &format!("alice@{DOMAIN}/cert"), direct, None, "ok");
        assert_eq!(out["jid"], format!("alice@{DOMAIN}/cert"), "{out}");
        // No xmppAddr: the common name is the username (auth.sasl_external's common_name).
        let out = slixmpp(&node, &carol, &format!("carol@{DOMAIN}/cn"), direct, None, "ok");
        assert_eq!(out["jid"], format!("carol@{DOMAIN}/cn"), "{out}");
    }
}

#[test]
fn slixmpp_is_refused_with_another_users_an_expired_a_foreign_or_an_accountless_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("Meerkat test CA");
    let node = node(dir.path(), &ca);
    let alice_jid = format!("alice@{DOMAIN}");
    let bob = ca.client(dir.path(), "bob", &[&format!("bob@{DOMAIN}")], None, false);
    let expired = ca.client(dir.path(), "expired", &[&alice_jid], None, true);
    let foreign = Ca::new("Someone else's CA").client(dir.path(), "foreign", &[&alice_jid], None, false);
    let ghost = ca.client(dir.path(), "ghost", &[&format!("ghost@{DOMAIN}")], None, false);
    for direct in [false, true] {
        // Bob's certificate, asking for alice.
        let out = slixmpp(&node, &bob, &format!("{alice_jid}/x"), direct, Some(&alice_jid), "refused");
        assert_eq!(out["refused"], "failure: invalid-authzid", "{out}");
        // Certificates that do not verify: EXTERNAL is not offered (and is
        // not-authorized when tried: the Rust client's test below).
        for cert in [&expired, &foreign] {
            let out = slixmpp(&node, cert, &format!("{alice_jid}/x"), direct, None, "refused");
            assert_eq!(out["refused"], "no mechanism", "{out}");
        }
        // A good certificate naming no account.
        let out = slixmpp(&node, &ghost, &format!("ghost@{DOMAIN}/x"), direct, None, "refused");
        assert_eq!(out["refused"], "failure: not-authorized", "{out}");
    }
}

/// The mechanisms offered after STARTTLS with this certificate (or none).
async fn offered(node: &TestNode, cert: Option<&ClientCert>) -> (Client, Vec<String>) {
    let mut c = Client::tcp(node.c2s, DOMAIN).await.unwrap();
    if let Some(cert) = cert {
        c.set_client_cert(cert.clone());
    }
    c.open_stream().await.unwrap();
    c.starttls().await.unwrap();
    let mechs = c.mechanisms();
    (c, mechs)
}

#[tokio::test]
async fn external_is_offered_only_with_a_verified_certificate_and_otherwise_not_authorized() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("Meerkat test CA");
    let node = node(dir.path(), &ca);
    let alice = ca.client(dir.path(), "alice", &[&format!("alice@{DOMAIN}")], None, false);
    let expired = ca.client(dir.path(), "expired", &[&format!("alice@{DOMAIN}")], None, true);

    let (mut c, mechs) = offered(&node, Some(&alice)).await;
    assert_eq!(mechs.first().map(String::as_str), Some("EXTERNAL"), "{mechs:?}");
    c.auth_external(None).await.unwrap();
    assert_eq!(c.bind(Some("raw")).await.unwrap(), format!("alice@{DOMAIN}/raw"));

    for cert in [None, Some(&expired)] {
        let (mut c, mechs) = offered(&node, cert).await;
        assert!(!mechs.contains(&"EXTERNAL".to_owned()), "{mechs:?}");
        assert!(mechs.contains(&"SCRAM-SHA-256".to_owned()), "{mechs:?}");
        // Asked for anyway: not-authorized; a password still works on the same stream.
        let err = c.auth_external(None).await.unwrap_err();
        assert!(matches!(&err, ClientError::SaslFailure(f) if f == "not-authorized"), "{err}");
        c.auth(meerkat_tests::Sasl::Scram(meerkat_xmpp::sasl::HashAlg::Sha256), "alice", "secret").await.unwrap();
    }
}

/// A node with an HTTPS listener (WebSocket at /ws-xmpp, BOSH at /http-bind)
/// asking for client certificates from `ca`; its port.
fn https_node(dir: &Path, ca: &Ca) -> (TestNode, u16) {
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, &ca.pem).unwrap();
    let port = meerkat_tests::node::free_port();
    let node = TestNode::start_with(NodeOptions {
        extra_toml: format!(
            "[auth]\nmethods = [\"rdbms\", \"pki\"]\nsasl_mechanisms = [\"external\", \"scram_sha256\"]\n\n\
             [[listen.http]]\nport = {port}\nip_address = \"127.0.0.1\"\ntls.cacertfile = \"{}\"\n\
             [[listen.http.handlers.mod_websockets]]\npath = \"/ws-xmpp\"\n\
             [[listen.http.handlers.mod_bosh]]\npath = \"/http-bind\"\n",
            ca_path.display()
        ),
        ..Default::default()
    });
    node.add_user("alice", "secret");
    (node, port)
}

/// Runs `tests/js/external.mjs`: stanza in headless Chromium, with this
/// certificate in the browser's store, at `url`.
fn stanza(node: &TestNode, url: &str, cert: &ClientCert) -> (bool, Value) {
    let out = Command::new("node")
        .args(meerkat_tests::js::node_flags())
        .arg("external.mjs")
        .args(["--url", url, "--jid", &format!("alice@{DOMAIN}")])
        .arg("--ca")
        .arg(node.cert_path())
        .arg("--cert")
        .arg(&cert.cert)
        .arg("--key")
        .arg(&cert.key)
        .current_dir(meerkat_tests::js::js_dir())
        .output()
        .expect("running node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    let v: Value = serde_json::from_str(line).unwrap_or_else(|_| {
        panic!("external.mjs printed no JSON:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr))
    });
    (out.status.success(), v)
}

#[test]
fn stanza_logs_in_with_a_client_certificate_over_wss_and_https_bosh() {
    meerkat_tests::js::npm_ci();
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("Meerkat test CA");
    let (node, port) = https_node(dir.path(), &ca);
    let alice = ca.client(dir.path(), "alice", &[&format!("alice@{DOMAIN}")], None, false);
    let foreign =
        Ca::new("Someone else's CA").client(dir.path(), "foreign", &[&format!("alice@{DOMAIN}")], None, false);
    for (url, transport) in [
        (format!("wss://localhost:{port}/ws-xmpp"), "websocket"),
        (format!("https://localhost:{port}/http-bind"), "bosh"),
    ] {
        let (ok, out) = stanza(&node, &url, &alice);
        assert!(ok, "{url}: {out}\nnode log:\n{}", node.log());
        assert_eq!(out["mechanism"], "EXTERNAL", "{out}");
        assert_eq!(out["transport"], transport, "{out}");
        assert_eq!(out["jid"], format!("alice@{DOMAIN}/cert"), "{out}");
        // A certificate from another CA: the stream opens, EXTERNAL is not
        // offered, and stanza, with no password, fails to authenticate.
        let (ok, out) = stanza(&node, &url, &foreign);
        assert!(!ok, "{url}: logged in with a foreign certificate: {out}");
        assert_ne!(out["mechanism"], "EXTERNAL", "{out}");
        assert_eq!(out["error"], "auth failed", "{out}");
    }
}

#[tokio::test]
async fn self_signed_certificates_log_in_only_under_selfsigned_peer() {
    let dir = tempfile::tempdir().unwrap();
    // A self-signed certificate naming alice, fit for client authentication.
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.subject_alt_names = vec![SanType::OtherName((XMPP_ADDR.to_vec(), format!("alice@{DOMAIN}").into()))];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let own = ClientCert { cert: dir.path().join("own.pem"), key: dir.path().join("own.key") };
    std::fs::write(&own.cert, cert.pem()).unwrap();
    std::fs::write(&own.key, key.serialize_pem()).unwrap();

    let auth = "[auth]\nmethods = [\"rdbms\", \"pki\"]\nsasl_mechanisms = [\"external\", \"scram_sha256\"]\n";
    let lenient = TestNode::start_with(NodeOptions {
        c2s_toml: "tls.verify_mode = \"selfsigned_peer\"\n".into(),
        extra_toml: auth.into(),
        ..Default::default()
    });
    lenient.add_user("alice", "secret");
    let (mut c, mechs) = offered(&lenient, Some(&own)).await;
    assert_eq!(mechs.first().map(String::as_str), Some("EXTERNAL"), "{mechs:?}");
    c.auth_external(None).await.unwrap();
    assert_eq!(c.bind(Some("own")).await.unwrap(), format!("alice@{DOMAIN}/own"));

    // Under "peer" with a CA, the same certificate is not good enough.
    let strict = node(dir.path(), &Ca::new("Meerkat test CA"));
    let (_c, mechs) = offered(&strict, Some(&own)).await;
    assert!(!mechs.contains(&"EXTERNAL".to_owned()), "{mechs:?}");
}
