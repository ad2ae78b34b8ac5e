//! Unit tests: RFC test vectors, full exchanges, failure paths.
#![allow(clippy::unwrap_used)]

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

use super::*;

const EXPORTER: [u8; 32] = [7u8; 32];

fn scram_creds(hash: HashAlg, password: &str) -> Credentials {
    Credentials::Scram(vec![ScramCredentials::generate(hash, password, 4096).unwrap()])
}

fn all_scram_creds(password: &str) -> Credentials {
    Credentials::Scram(
        HashAlg::ALL.into_iter().map(|h| ScramCredentials::generate(h, password, 4096).unwrap()).collect(),
    )
}

/// Runs a whole SCRAM exchange. Returns the authenticated username, or the
/// failure and the step at which it happened (1 = client-first,
/// 2 = client-final).
fn run_scram(
    mut server: SaslServer,
    mut client: ScramClient,
    creds: Option<Credentials>,
) -> Result<String, (u8, SaslFailure)> {
    let first = client.client_first();
    match server.step(SaslInput::Response(&first)) {
        SaslOutput::LookupCredentials { .. } => {}
        SaslOutput::Failure(f) => return Err((1, f)),
        other => panic!("unexpected {other:?}"),
    }
    let SaslOutput::Challenge(server_first) = server.step(SaslInput::Credentials(creds)) else {
        panic!("expected server-first");
    };
    let client_final = client.handle_server_first(&server_first).unwrap();
    match server.step(SaslInput::Response(&client_final)) {
        SaslOutput::Success { username, additional_data } => {
            client.verify_server_final(&additional_data.unwrap()).unwrap();
            Ok(username)
        }
        SaslOutput::Failure(f) => Err((2, f)),
        other => panic!("unexpected {other:?}"),
    }
}

// ------------------------------------------------------------ names

#[test]
fn mechanism_names_round_trip() {
    for m in Mechanism::ALL {
        assert_eq!(Mechanism::from_name(m.name()), Some(m));
        assert_eq!(m.is_plus(), m.name().ends_with("-PLUS"));
        assert_eq!(m.hash().is_none(), matches!(m, Mechanism::Plain | Mechanism::External));
    }
    assert_eq!(Mechanism::ALL[0], Mechanism::External);
    assert_eq!(Mechanism::ALL[1], Mechanism::ScramSha512Plus);
    assert_eq!(Mechanism::ALL[7], Mechanism::Plain);
    assert_eq!(Mechanism::from_name("scram-sha-1"), None);
    assert_eq!(Mechanism::from_name("DIGEST-MD5"), None);
    assert_eq!(Mechanism::ScramSha256Plus.hash(), Some(HashAlg::Sha256));
    assert_eq!(SaslFailure::NotAuthorized.as_str(), "not-authorized");
    assert_eq!(SaslFailure::TemporaryAuthFailure.as_str(), "temporary-auth-failure");
}

// ------------------------------------------------------------ RFC vectors

const RFC5802_SALT: &str = "QSXCR+Q6sek8bf92";
const RFC5802_CLIENT_FIRST: &str = "n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL";
const RFC5802_SERVER_FIRST: &str = "r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096";
const RFC5802_CLIENT_FINAL: &str = "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=";
const RFC5802_SERVER_FINAL: &str = "v=rmF9pqV8S7suAoZWja4dJRkFsKQ=";

const RFC7677_SALT: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";
const RFC7677_CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
const RFC7677_SERVER_FIRST: &str =
    "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
const RFC7677_CLIENT_FINAL: &str =
    "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
const RFC7677_SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

fn client_vector(
    hash: HashAlg,
    nonce: &str,
    client_first: &str,
    server_first: &str,
    client_final: &str,
    server_final: &str,
) {
    let mut c = ScramClient::with_nonce(hash, "user", "pencil", ClientChannelBinding::None, nonce);
    assert_eq!(c.client_first(), client_first.as_bytes());
    let out = c.handle_server_first(server_first.as_bytes()).unwrap();
    assert_eq!(String::from_utf8(out).unwrap(), client_final);
    c.verify_server_final(server_final.as_bytes()).unwrap();
    assert!(matches!(
        c.verify_server_final(b"v=AAAAAAAAAAAAAAAAAAAAAAAAAAA="),
        Err(SaslError::ServerSignatureMismatch)
    ));
}

#[allow(clippy::too_many_arguments)]
fn server_vector(
    mechanism: Mechanism,
    salt_b64: &str,
    server_nonce: &str,
    client_first: &str,
    server_first: &str,
    client_final: &str,
    server_final: &str,
) {
    let hash = mechanism.hash().unwrap();
    let creds = ScramCredentials::derive(hash, "pencil", &B64.decode(salt_b64).unwrap(), 4096).unwrap();
    let mut s = SaslServer::new(mechanism, None, false).with_server_nonce(server_nonce);
    match s.step(SaslInput::Response(client_first.as_bytes())) {
        SaslOutput::LookupCredentials { username } => assert_eq!(username, "user"),
        other => panic!("{other:?}"),
    }
    let SaslOutput::Challenge(sf) = s.step(SaslInput::Credentials(Some(Credentials::Scram(vec![creds])))) else {
        panic!("expected challenge")
    };
    assert_eq!(String::from_utf8(sf).unwrap(), server_first);
    match s.step(SaslInput::Response(client_final.as_bytes())) {
        SaslOutput::Success { username, additional_data } => {
            assert_eq!(username, "user");
            assert_eq!(additional_data.unwrap(), server_final.as_bytes());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn rfc5802_sha1_vector_client() {
    client_vector(
        HashAlg::Sha1,
        "fyko+d2lbbFgONRv9qkxdawL",
        RFC5802_CLIENT_FIRST,
        RFC5802_SERVER_FIRST,
        RFC5802_CLIENT_FINAL,
        RFC5802_SERVER_FINAL,
    );
}

#[test]
fn rfc5802_sha1_vector_server() {
    server_vector(
        Mechanism::ScramSha1,
        RFC5802_SALT,
        "3rfcNHYJY1ZVvWVs7j",
        RFC5802_CLIENT_FIRST,
        RFC5802_SERVER_FIRST,
        RFC5802_CLIENT_FINAL,
        RFC5802_SERVER_FINAL,
    );
}

#[test]
fn rfc7677_sha256_vector_client() {
    client_vector(
        HashAlg::Sha256,
        "rOprNGfwEbeRWgbNEkqO",
        RFC7677_CLIENT_FIRST,
        RFC7677_SERVER_FIRST,
        RFC7677_CLIENT_FINAL,
        RFC7677_SERVER_FINAL,
    );
}

#[test]
fn rfc7677_sha256_vector_server() {
    server_vector(
        Mechanism::ScramSha256,
        RFC7677_SALT,
        "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
        RFC7677_CLIENT_FIRST,
        RFC7677_SERVER_FIRST,
        RFC7677_CLIENT_FINAL,
        RFC7677_SERVER_FINAL,
    );
}

#[test]
fn rfc5802_stored_and_server_keys() {
    // Cross-check derive() against the vector: a server holding only these
    // keys must accept the RFC's client proof (done above), and the storage
    // form must round-trip them.
    let salt = B64.decode(RFC5802_SALT).unwrap();
    let c = ScramCredentials::derive(HashAlg::Sha1, "pencil", &salt, 4096).unwrap();
    assert_eq!(c.stored_key.len(), 20);
    assert_eq!(c.server_key.len(), 20);
    let s = c.to_storage_string();
    assert!(s.starts_with("sha1$4096$QSXCR+Q6sek8bf92$"));
    assert_eq!(ScramCredentials::from_storage_string(&s).unwrap(), c);
}

// ------------------------------------------------------------ full exchanges

fn client_for(m: Mechanism, user: &str, pw: &str, exporter: &[u8]) -> ScramClient {
    let cb =
        if m.is_plus() { ClientChannelBinding::TlsExporter(exporter.to_vec()) } else { ClientChannelBinding::None };
    ScramClient::new(m.hash().unwrap(), user, pw, cb)
}

fn scram_mechanisms() -> impl Iterator<Item = Mechanism> {
    Mechanism::ALL.into_iter().filter(|m| m.hash().is_some())
}

#[test]
fn all_scram_variants_succeed() {
    for m in scram_mechanisms() {
        let server = SaslServer::new(m, Some(EXPORTER.to_vec()), true);
        let client = client_for(m, "juliet", "r0m30myr0m30", &EXPORTER);
        let creds = all_scram_creds("r0m30myr0m30");
        assert_eq!(run_scram(server, client, Some(creds)), Ok("juliet".to_owned()), "{m:?}");
    }
}

#[test]
fn all_scram_variants_with_single_hash_entry() {
    for m in scram_mechanisms() {
        let server = SaslServer::new(m, Some(EXPORTER.to_vec()), true);
        let client = client_for(m, "juliet", "pw", &EXPORTER);
        let creds = scram_creds(m.hash().unwrap(), "pw");
        assert!(run_scram(server, client, Some(creds)).is_ok(), "{m:?}");
    }
}

#[test]
fn plus_with_mismatching_exporter_fails_at_final_step() {
    for m in scram_mechanisms().filter(Mechanism::is_plus) {
        let server = SaslServer::new(m, Some(EXPORTER.to_vec()), true);
        let client = client_for(m, "juliet", "pw", &[8u8; 32]);
        assert_eq!(
            run_scram(server, client, Some(all_scram_creds("pw"))),
            Err((2, SaslFailure::NotAuthorized)),
            "{m:?}"
        );
    }
}

#[test]
fn plus_without_tls_exporter_fails() {
    let server = SaslServer::new(Mechanism::ScramSha256Plus, None, false);
    let client = client_for(Mechanism::ScramSha256Plus, "juliet", "pw", &EXPORTER);
    assert_eq!(run_scram(server, client, None), Err((1, SaslFailure::NotAuthorized)));
}

#[test]
fn plus_mechanism_requires_p_flag() {
    for cb in [ClientChannelBinding::None, ClientChannelBinding::ClientSupportsServerDoesNot] {
        let server = SaslServer::new(Mechanism::ScramSha256Plus, Some(EXPORTER.to_vec()), true);
        let client = ScramClient::new(HashAlg::Sha256, "juliet", "pw", cb);
        assert_eq!(run_scram(server, client, None), Err((1, SaslFailure::NotAuthorized)));
    }
}

#[test]
fn non_plus_mechanism_rejects_p_flag() {
    let server = SaslServer::new(Mechanism::ScramSha256, Some(EXPORTER.to_vec()), true);
    let client =
        ScramClient::new(HashAlg::Sha256, "juliet", "pw", ClientChannelBinding::TlsExporter(EXPORTER.to_vec()));
    assert_eq!(run_scram(server, client, None), Err((1, SaslFailure::NotAuthorized)));
}

#[test]
fn unsupported_channel_binding_type_fails() {
    let mut s = SaslServer::new(Mechanism::ScramSha256Plus, Some(EXPORTER.to_vec()), true);
    assert!(matches!(
        s.step(SaslInput::Response(b"p=tls-unique,,n=juliet,r=abcdef")),
        SaslOutput::Failure(SaslFailure::NotAuthorized)
    ));
    let mut s = SaslServer::new(Mechanism::ScramSha256Plus, Some(EXPORTER.to_vec()), true);
    assert!(matches!(
        s.step(SaslInput::Response(b"p=tls_unique!,,n=juliet,r=abcdef")),
        SaslOutput::Failure(SaslFailure::MalformedRequest)
    ));
}

#[test]
fn y_flag_is_downgrade_when_plus_advertised() {
    let mk = || ScramClient::new(HashAlg::Sha1, "juliet", "pw", ClientChannelBinding::ClientSupportsServerDoesNot);
    let server = SaslServer::new(Mechanism::ScramSha1, Some(EXPORTER.to_vec()), true);
    assert_eq!(run_scram(server, mk(), Some(all_scram_creds("pw"))), Err((1, SaslFailure::NotAuthorized)));
    // Without -PLUS on offer, "y" is honest and fine.
    let server = SaslServer::new(Mechanism::ScramSha1, None, false);
    assert_eq!(run_scram(server, mk(), Some(all_scram_creds("pw"))), Ok("juliet".to_owned()));
}

#[test]
fn tampered_gs2_header_in_final_fails() {
    // The client says "y" in client-final while it said "n" at first: the
    // c= check catches the edit.
    let mut server = SaslServer::new(Mechanism::ScramSha256, None, false);
    let mut client = ScramClient::new(HashAlg::Sha256, "juliet", "pw", ClientChannelBinding::None);
    let first = client.client_first();
    assert!(matches!(server.step(SaslInput::Response(&first)), SaslOutput::LookupCredentials { .. }));
    let SaslOutput::Challenge(sf) = server.step(SaslInput::Credentials(Some(all_scram_creds("pw")))) else { panic!() };
    let cf = String::from_utf8(client.handle_server_first(&sf).unwrap()).unwrap();
    let tampered = cf.replacen("c=biws", &format!("c={}", B64.encode("y,,")), 1);
    assert!(matches!(
        server.step(SaslInput::Response(tampered.as_bytes())),
        SaslOutput::Failure(SaslFailure::NotAuthorized)
    ));
}

#[test]
fn wrong_password_fails_at_final_step() {
    for m in scram_mechanisms() {
        let server = SaslServer::new(m, Some(EXPORTER.to_vec()), true);
        let client = client_for(m, "juliet", "wrong", &EXPORTER);
        assert_eq!(
            run_scram(server, client, Some(all_scram_creds("right"))),
            Err((2, SaslFailure::NotAuthorized)),
            "{m:?}"
        );
    }
}

fn server_first_for(m: Mechanism, user: &str, creds: Option<Credentials>) -> String {
    server_first_from(SaslServer::new(m, None, false), user, creds)
}

fn server_first_from(mut server: SaslServer, user: &str, creds: Option<Credentials>) -> String {
    let m = server.mechanism();
    let mut client = ScramClient::new(m.hash().unwrap(), user, "pw", ClientChannelBinding::None);
    let first = client.client_first();
    assert!(matches!(server.step(SaslInput::Response(&first)), SaslOutput::LookupCredentials { .. }));
    let SaslOutput::Challenge(sf) = server.step(SaslInput::Credentials(creds)) else { panic!() };
    String::from_utf8(sf).unwrap()
}

/// `s=` and `i=` of a server-first message.
fn salt_and_iterations(server_first: &str) -> (String, String) {
    let mut parts = server_first.split(',').skip(1);
    (parts.next().unwrap().to_owned(), parts.next().unwrap().to_owned())
}

#[test]
fn unknown_user_fails_only_at_the_end() {
    for m in scram_mechanisms().filter(|m| !m.is_plus()) {
        // Even the right password cannot succeed for a user that does not
        // exist, and the failure comes at the final step.
        let server = SaslServer::new(m, None, false);
        let client = client_for(m, "nobody", "pw", &[]);
        assert_eq!(run_scram(server, client, None), Err((2, SaslFailure::NotAuthorized)), "{m:?}");
        // The fake salt is stable across attempts and looks like a real one.
        let a = server_first_for(m, "nobody", None);
        let b = server_first_for(m, "nobody", None);
        let (salt_a, iter_a) = salt_and_iterations(&a);
        assert_eq!((salt_a.clone(), iter_a.clone()), salt_and_iterations(&b));
        assert_eq!(iter_a, "i=4096");
        let decoded = B64.decode(salt_a.strip_prefix("s=").unwrap()).unwrap();
        assert_eq!(decoded.len(), SALT_LEN);
        // ...and differs between users.
        assert_ne!(salt_and_iterations(&server_first_for(m, "somebody", None)).0, salt_a);
    }
}

/// An unknown user's salt comes from the server's secret, so it is the same
/// after a restart and on every node; the iteration count is the one real
/// keys are made with.
#[test]
fn fake_salts_come_from_the_salt_secret_with_the_configured_iterations() {
    let m = Mechanism::ScramSha256;
    let secret = SaltSecret::new(&[7u8; 32]);
    let server = || SaslServer::new(m, None, false).with_salt_secret(secret.clone()).with_default_iterations(10_000);
    let a = salt_and_iterations(&server_first_from(server(), "nobody", None));
    let b = salt_and_iterations(&server_first_from(server(), "nobody", None));
    assert_eq!(a, b);
    assert_eq!(a.1, "i=10000");
    assert_eq!(B64.decode(a.0.strip_prefix("s=").unwrap()).unwrap().len(), SALT_LEN);
    let other = SaslServer::new(m, None, false).with_salt_secret(SaltSecret::new(&[8u8; 32]));
    assert_ne!(salt_and_iterations(&server_first_from(other, "nobody", None)).0, a.0);
    assert_eq!(format!("{secret:?}"), "SaltSecret(..)");
}

#[test]
fn missing_hash_entry_behaves_like_unknown_user() {
    let server = SaslServer::new(Mechanism::ScramSha512, None, false);
    let client = client_for(Mechanism::ScramSha512, "juliet", "pw", &[]);
    let creds = scram_creds(HashAlg::Sha1, "pw");
    assert_eq!(run_scram(server, client, Some(creds)), Err((2, SaslFailure::NotAuthorized)));
}

#[test]
fn plaintext_store_works_with_scram() {
    for m in scram_mechanisms() {
        let server = SaslServer::new(m, Some(EXPORTER.to_vec()), true);
        let client = client_for(m, "juliet", "pw", &EXPORTER);
        let creds = Credentials::Plain("pw".to_owned());
        assert_eq!(run_scram(server, client, Some(creds)), Ok("juliet".to_owned()));
        let server = SaslServer::new(m, Some(EXPORTER.to_vec()), true);
        let client = client_for(m, "juliet", "bad", &EXPORTER);
        let creds = Credentials::Plain("pw".to_owned());
        assert_eq!(run_scram(server, client, Some(creds)), Err((2, SaslFailure::NotAuthorized)));
    }
    // Plaintext-stored users get the same salt as unknown users would.
    let m = Mechanism::ScramSha256;
    assert_eq!(
        salt_and_iterations(&server_first_for(m, "juliet", Some(Credentials::Plain("pw".into())))),
        salt_and_iterations(&server_first_for(m, "juliet", None))
    );
}

#[test]
fn scram_username_escaping_and_saslprep() {
    let server = SaslServer::new(Mechanism::ScramSha256, None, false);
    let client = ScramClient::new(HashAlg::Sha256, "a,b=c", "pw", ClientChannelBinding::None);
    assert_eq!(run_scram(server, client, Some(all_scram_creds("pw"))), Ok("a,b=c".to_owned()));
    let mut s = SaslServer::new(Mechanism::ScramSha256, None, false);
    match s.step(SaslInput::Response(b"n,,n=a=2Cb=3Dc,r=xyz")) {
        SaslOutput::LookupCredentials { username } => assert_eq!(username, "a,b=c"),
        other => panic!("{other:?}"),
    }
    // Soft hyphen is mapped to nothing by SASLprep.
    let mut s = SaslServer::new(Mechanism::ScramSha256, None, false);
    match s.step(SaslInput::Response("n,,n=I\u{AD}X,r=xyz".as_bytes())) {
        SaslOutput::LookupCredentials { username } => assert_eq!(username, "IX"),
        other => panic!("{other:?}"),
    }
    // Unknown '=' escape.
    let mut s = SaslServer::new(Mechanism::ScramSha256, None, false);
    assert!(matches!(
        s.step(SaslInput::Response(b"n,,n=a=2Db,r=xyz")),
        SaslOutput::Failure(SaslFailure::MalformedRequest)
    ));
}

#[test]
fn scram_authzid() {
    let ok = |authzid: &str| {
        let server = SaslServer::new(Mechanism::ScramSha1, None, false);
        let client = ScramClient::new(HashAlg::Sha1, "juliet", "pw", ClientChannelBinding::None).with_authzid(authzid);
        run_scram(server, client, Some(all_scram_creds("pw")))
    };
    assert_eq!(ok("juliet"), Ok("juliet".to_owned()));
    assert_eq!(ok("juliet@capulet.lit"), Ok("juliet".to_owned()));
    assert_eq!(ok("juliet@capulet.lit/balcony"), Ok("juliet".to_owned()));
    assert_eq!(ok("romeo@montague.lit"), Err((1, SaslFailure::InvalidAuthzid)));
    assert_eq!(ok("capulet.lit/juliet@x"), Err((1, SaslFailure::InvalidAuthzid)));

    let mut s = SaslServer::new(Mechanism::ScramSha1, None, false);
    assert!(matches!(
        s.step(SaslInput::Response(b"n,a=juliet@capulet.lit,n=juliet,r=xyz")),
        SaslOutput::LookupCredentials { .. }
    ));
    assert_eq!(s.authzid(), Some("juliet@capulet.lit"));
}

#[test]
fn malformed_scram_messages() {
    let cases: &[&[u8]] = &[
        b"n",
        b"n,",
        b"x,,n=juliet,r=abc",
        b"n,b=juliet,n=juliet,r=abc",
        b"n,,m=ext,n=juliet,r=abc",
        b"n,,r=abc,n=juliet",
        b"n,,n=juliet",
        b"n,,n=juliet,r=",
        b"n,,n=juliet,r=a b",
        b"n,,n=,r=abc",
        b"n,,n=juliet,r=abc,bogus",
        b"\xff\xfe",
    ];
    for msg in cases {
        let mut s = SaslServer::new(Mechanism::ScramSha256, None, false);
        assert!(
            matches!(s.step(SaslInput::Response(msg)), SaslOutput::Failure(SaslFailure::MalformedRequest)),
            "{:?}",
            String::from_utf8_lossy(msg)
        );
    }
}

#[test]
fn malformed_client_final() {
    let setup = || {
        let mut server = SaslServer::new(Mechanism::ScramSha1, None, false);
        let mut client = ScramClient::new(HashAlg::Sha1, "juliet", "pw", ClientChannelBinding::None);
        let first = client.client_first();
        server.step(SaslInput::Response(&first));
        let SaslOutput::Challenge(sf) = server.step(SaslInput::Credentials(Some(all_scram_creds("pw")))) else {
            panic!()
        };
        let cf = String::from_utf8(client.handle_server_first(&sf).unwrap()).unwrap();
        (server, cf)
    };
    let (_, cf) = setup();
    let nonce = cf.split(',').nth(1).unwrap().to_owned();
    let proof = cf.split(',').nth(2).unwrap().to_owned();
    for bad in [
        format!("c=biws,{nonce}"),
        format!("{nonce},c=biws,{proof}"),
        format!("c=biws,{nonce},p=!!!"),
        format!("c=biws,{nonce},p=AAAA"),
        format!("c=b!ws,{nonce},{proof}"),
        format!("c=biws,{nonce},bogus,{proof}"),
    ] {
        let (mut server, _) = setup();
        assert!(
            matches!(
                server.step(SaslInput::Response(bad.as_bytes())),
                SaslOutput::Failure(SaslFailure::MalformedRequest)
            ),
            "{bad}"
        );
    }
    // Wrong nonce is an authentication failure.
    let (mut server, cf) = setup();
    let bad = cf.replacen(",r=", ",r=X", 1);
    assert!(matches!(
        server.step(SaslInput::Response(bad.as_bytes())),
        SaslOutput::Failure(SaslFailure::NotAuthorized)
    ));
    // Extensions before the proof are allowed (and covered by the proof
    // only if the client put them there; ours did not, so the proof fails).
    let (mut server, cf) = setup();
    let (head, p) = cf.rsplit_once(',').unwrap();
    let ext = format!("{head},x=1,{p}");
    assert!(matches!(
        server.step(SaslInput::Response(ext.as_bytes())),
        SaslOutput::Failure(SaslFailure::NotAuthorized)
    ));
}

#[test]
fn empty_initial_response_gets_one_empty_challenge() {
    for m in [Mechanism::Plain, Mechanism::ScramSha256] {
        let mut s = SaslServer::new(m, None, false);
        assert!(matches!(s.step(SaslInput::Response(b"")), SaslOutput::Challenge(c) if c.is_empty()));
        assert!(matches!(s.step(SaslInput::Response(b"")), SaslOutput::Failure(SaslFailure::MalformedRequest)));
    }
    let mut s = SaslServer::new(Mechanism::Plain, None, false);
    assert!(matches!(s.step(SaslInput::Response(b"")), SaslOutput::Challenge(_)));
    assert!(matches!(
        s.step(SaslInput::Response(&plain_initial_response(None, "juliet", "pw"))),
        SaslOutput::LookupCredentials { .. }
    ));
}

#[test]
fn out_of_order_inputs() {
    let mut s = SaslServer::new(Mechanism::ScramSha256, None, false);
    assert!(matches!(s.step(SaslInput::Credentials(None)), SaslOutput::Failure(SaslFailure::TemporaryAuthFailure)));
    let mut s = SaslServer::new(Mechanism::Plain, None, false);
    s.step(SaslInput::Response(&plain_initial_response(None, "u", "p")));
    assert!(matches!(s.step(SaslInput::Response(b"again")), SaslOutput::Failure(SaslFailure::MalformedRequest)));
    // After the end, everything fails.
    assert!(matches!(s.step(SaslInput::Credentials(Some(Credentials::Plain("p".into())))), SaslOutput::Failure(_)));
    let c = ScramClient::new(HashAlg::Sha1, "u", "p", ClientChannelBinding::None);
    assert!(matches!(c.verify_server_final(b"v=abcd"), Err(SaslError::OutOfOrder)));
}

#[test]
fn client_rejects_bad_server_first() {
    let mut c = ScramClient::with_nonce(HashAlg::Sha1, "u", "p", ClientChannelBinding::None, "abc");
    assert!(matches!(c.handle_server_first(b"r=xyzdef,s=QSXCR+Q6sek8bf92,i=4096"), Err(SaslError::NonceMismatch)));
    assert!(matches!(c.handle_server_first(b"r=abc,s=QSXCR+Q6sek8bf92,i=4096"), Err(SaslError::NonceMismatch)));
    assert!(matches!(c.handle_server_first(b"r=abcdef,s=QSXCR+Q6sek8bf92,i=0"), Err(SaslError::InvalidIterations)));
    assert!(matches!(
        c.handle_server_first(b"m=x,r=abcdef,s=QSXCR+Q6sek8bf92,i=1"),
        Err(SaslError::UnsupportedExtension)
    ));
    assert!(matches!(c.handle_server_first(b"r=abcdef,s=!!,i=1"), Err(SaslError::Base64)));
    assert!(c.verify_server_final(b"e=invalid-proof").is_err());
    c.handle_server_first(b"r=abcdef,s=QSXCR+Q6sek8bf92,i=1").unwrap();
    assert!(matches!(
        c.verify_server_final(b"e=invalid-proof"),
        Err(SaslError::ServerError(e)) if e == "invalid-proof"
    ));
}

#[test]
fn plus_client_first_format() {
    let mut c = ScramClient::with_nonce(
        HashAlg::Sha256,
        "user",
        "pencil",
        ClientChannelBinding::TlsExporter(EXPORTER.to_vec()),
        "abc",
    );
    assert_eq!(c.client_first(), b"p=tls-exporter,,n=user,r=abc");
    let cf = c.handle_server_first(b"r=abcdef,s=QSXCR+Q6sek8bf92,i=1").unwrap();
    let mut expected = b"p=tls-exporter,,".to_vec();
    expected.extend_from_slice(&EXPORTER);
    let cf = String::from_utf8(cf).unwrap();
    assert!(cf.starts_with(&format!("c={},r=abcdef,p=", B64.encode(expected))));
}

// ------------------------------------------------------------ PLAIN

fn run_plain(msg: &[u8], creds: Option<Credentials>) -> Result<String, SaslFailure> {
    let mut s = SaslServer::new(Mechanism::Plain, None, false);
    match s.step(SaslInput::Response(msg)) {
        SaslOutput::LookupCredentials { .. } => {}
        SaslOutput::Failure(f) => return Err(f),
        other => panic!("{other:?}"),
    }
    match s.step(SaslInput::Credentials(creds)) {
        SaslOutput::Success { username, additional_data } => {
            assert!(additional_data.is_none());
            Ok(username)
        }
        SaslOutput::Failure(f) => Err(f),
        other => panic!("{other:?}"),
    }
}

#[test]
fn plain_good_and_bad() {
    let msg = plain_initial_response(None, "juliet", "r0m30");
    for creds in [Credentials::Plain("r0m30".into()), all_scram_creds("r0m30"), scram_creds(HashAlg::Sha1, "r0m30")] {
        assert_eq!(run_plain(&msg, Some(creds.clone())), Ok("juliet".into()));
        let bad = plain_initial_response(None, "juliet", "r0m31");
        assert_eq!(run_plain(&bad, Some(creds)), Err(SaslFailure::NotAuthorized));
    }
    assert_eq!(run_plain(&msg, None), Err(SaslFailure::NotAuthorized));
    assert_eq!(run_plain(&msg, Some(Credentials::Scram(vec![]))), Err(SaslFailure::NotAuthorized));
}

#[test]
fn plain_authzid() {
    let creds = || Some(Credentials::Plain("pw".into()));
    for a in ["juliet", "juliet@capulet.lit", "juliet@capulet.lit/r"] {
        let msg = plain_initial_response(Some(a), "juliet", "pw");
        assert_eq!(run_plain(&msg, creds()), Ok("juliet".into()), "{a}");
    }
    let msg = plain_initial_response(Some("romeo@montague.lit"), "juliet", "pw");
    assert_eq!(run_plain(&msg, creds()), Err(SaslFailure::InvalidAuthzid));
    let mut s = SaslServer::new(Mechanism::Plain, None, false);
    s.step(SaslInput::Response(&plain_initial_response(Some("juliet@capulet.lit"), "juliet", "pw")));
    assert_eq!(s.authzid(), Some("juliet@capulet.lit"));
}

#[test]
fn plain_malformed() {
    for msg in [&b"juliet\0pw"[..], b"\0\0pw", b"\0juliet\0", b"\0juliet\0pw\0x", b"\0jul\xffiet\0pw", b"no-nuls"] {
        assert_eq!(run_plain(msg, None), Err(SaslFailure::MalformedRequest), "{msg:?}");
    }
}

#[test]
fn plain_saslprep() {
    // Soft hyphen maps to nothing; non-ASCII space maps to space.
    let msg = plain_initial_response(None, "I\u{AD}X", "pass\u{A0}word");
    assert_eq!(run_plain(&msg, Some(Credentials::Plain("pass word".into()))), Ok("IX".into()));
    let msg = plain_initial_response(None, "IX", "I\u{AD}X");
    assert_eq!(run_plain(&msg, Some(scram_creds(HashAlg::Sha256, "IX"))), Ok("IX".into()));
}

// ------------------------------------------------------------ credentials

#[test]
fn saslprep_in_derivation() {
    let salt = b"0123456789abcdef";
    let a = ScramCredentials::derive(HashAlg::Sha256, "I\u{AD}X", salt, 4096).unwrap();
    let b = ScramCredentials::derive(HashAlg::Sha256, "IX", salt, 4096).unwrap();
    assert_eq!(a, b);
    // Prohibited output (a control character) is an error, not a silent key.
    assert!(matches!(ScramCredentials::derive(HashAlg::Sha256, "a\u{7}b", salt, 4096), Err(SaslError::Saslprep)));
    assert!(matches!(ScramCredentials::derive(HashAlg::Sha256, "x", salt, 0), Err(SaslError::InvalidIterations)));
    // SCRAM client and server agree across SASLprep too.
    let server = SaslServer::new(Mechanism::ScramSha256, None, false);
    let client = ScramClient::new(HashAlg::Sha256, "u", "I\u{AD}X", ClientChannelBinding::None);
    assert!(run_scram(server, client, Some(Credentials::Scram(vec![b]))).is_ok());
}

#[test]
fn verify_password() {
    let c = all_scram_creds("secret");
    assert!(c.verify_password("secret"));
    assert!(!c.verify_password("Secret"));
    assert!(!c.verify_password(""));
    let p = Credentials::Plain("secret".into());
    assert!(p.verify_password("secret"));
    assert!(!p.verify_password("secret2"));
    assert!(!Credentials::Scram(vec![]).verify_password("secret"));
}

#[test]
fn storage_string_round_trip() {
    for h in HashAlg::ALL {
        let c = ScramCredentials::generate(h, "pw", 4096).unwrap();
        assert_eq!(c.salt.len(), SALT_LEN);
        let s = c.to_storage_string();
        assert!(s.starts_with(&format!("{}$4096$", h.storage_name())));
        assert_eq!(ScramCredentials::from_storage_string(&s).unwrap(), c);
    }
    let good = ScramCredentials::generate(HashAlg::Sha256, "pw", 10).unwrap().to_storage_string();
    let fields: Vec<&str> = good.split('$').collect();
    for bad in [
        String::new(),
        "sha256$4096$abc".to_owned(),
        format!("md5${}", fields[1..].join("$")),
        format!("sha1${}", fields[1..].join("$")), // key length mismatch
        format!("sha256$0${}", fields[2..].join("$")),
        format!("sha256$x${}", fields[2..].join("$")),
        format!("{good}$extra"),
        format!("sha256$4096$!!${}", fields[3..].join("$")),
    ] {
        assert!(ScramCredentials::from_storage_string(&bad).is_err(), "{bad}");
    }
}

// ------------------------------------------------------------ EXTERNAL

fn external_server(addrs: &[&str], cn: Option<&str>) -> SaslServer {
    use super::external::{CertIdentity, ExternalCheck};
    let id = CertIdentity {
        xmpp_addrs: addrs.iter().map(|a| a.to_string()).collect(),
        common_name: cn.map(str::to_owned),
        dns_names: Vec::new(),
    };
    SaslServer::new(Mechanism::External, None, false).with_certificate(
        id,
        "example.com",
        vec![ExternalCheck::Standard, ExternalCheck::CommonName],
    )
}

#[test]
fn external_with_an_empty_response_logs_in_as_the_only_xmpp_addr_if_the_account_exists() {
    let mut s = external_server(&["alice@example.com"], None);
    match s.step(SaslInput::Response(b"")) {
        SaslOutput::LookupCredentials { username } => assert_eq!(username, "alice"),
        other => panic!("{other:?}"),
    }
    let creds = Credentials::Plain("irrelevant".into());
    match s.step(SaslInput::Credentials(Some(creds))) {
        SaslOutput::Success { username, additional_data: None } => assert_eq!(username, "alice"),
        other => panic!("{other:?}"),
    }
    assert_eq!(s.authzid(), None);
}

#[test]
fn external_for_an_account_that_does_not_exist_is_not_authorized() {
    let mut s = external_server(&["ghost@example.com"], None);
    assert!(matches!(s.step(SaslInput::Response(b"")), SaslOutput::LookupCredentials { .. }));
    assert!(matches!(s.step(SaslInput::Credentials(None)), SaslOutput::Failure(SaslFailure::NotAuthorized)));
}

#[test]
fn external_without_a_certificate_is_not_authorized() {
    let mut s = SaslServer::new(Mechanism::External, None, false);
    assert!(matches!(s.step(SaslInput::Response(b"")), SaslOutput::Failure(SaslFailure::NotAuthorized)));
}

#[test]
fn external_checks_the_authzid_against_the_certificate() {
    let mut s = external_server(&["alice@example.com", "bob@example.com"], None);
    assert!(matches!(s.step(SaslInput::Response(b"")), SaslOutput::Failure(SaslFailure::InvalidAuthzid)));
    let mut s = external_server(&["alice@example.com", "bob@example.com"], None);
    match s.step(SaslInput::Response(b"bob@example.com")) {
        SaslOutput::LookupCredentials { username } => assert_eq!(username, "bob"),
        other => panic!("{other:?}"),
    }
    assert_eq!(s.authzid(), Some("bob@example.com"));
    let mut s = external_server(&["alice@example.com"], None);
    assert!(matches!(
        s.step(SaslInput::Response(b"mallory@example.com")),
        SaslOutput::Failure(SaslFailure::InvalidAuthzid)
    ));
    let mut s = external_server(&["alice@example.com"], None);
    assert!(matches!(s.step(SaslInput::Response(b"\xff")), SaslOutput::Failure(SaslFailure::MalformedRequest)));
}

#[test]
fn external_falls_back_to_the_common_name() {
    let mut s = external_server(&[], Some("carol"));
    match s.step(SaslInput::Response(b"")) {
        SaslOutput::LookupCredentials { username } => assert_eq!(username, "carol"),
        other => panic!("{other:?}"),
    }
    // Another domain's xmppAddr is no account here, and no common name helps.
    let mut s = external_server(&["alice@elsewhere.org"], None);
    assert!(matches!(s.step(SaslInput::Response(b"")), SaslOutput::Failure(_)));
}

// ------------------------------------------------------------ a client's cached SaltedPassword

#[test]
fn a_cached_salted_password_gives_the_same_proof_and_a_wrong_one_fails() {
    // One account: the same salt at every login.
    let stored = scram_creds(HashAlg::Sha256, "pw");
    let creds = || Some(stored.clone());
    // First login: the client derives the SaltedPassword and keeps it.
    let mut server = SaslServer::new(Mechanism::ScramSha256, None, false);
    let mut client = ScramClient::new(HashAlg::Sha256, "juliet", "pw", ClientChannelBinding::None);
    server.step(SaslInput::Response(&client.client_first()));
    let SaslOutput::Challenge(server_first) = server.step(SaslInput::Credentials(creds())) else { panic!() };
    let (salt, iterations) = ScramClient::server_first_params(&server_first).unwrap();
    assert_eq!(iterations, 4096);
    let salted = client.salted_password(&salt, iterations).unwrap();
    let client_final = client.handle_server_first(&server_first).unwrap();
    assert!(matches!(server.step(SaslInput::Response(&client_final)), SaslOutput::Success { .. }));
    // Next login: the kept value is used, with the same outcome.
    let mut server = SaslServer::new(Mechanism::ScramSha256, None, false);
    let mut client = ScramClient::new(HashAlg::Sha256, "juliet", "pw", ClientChannelBinding::None);
    client.use_salted_password(salt.clone(), iterations, salted.clone());
    server.step(SaslInput::Response(&client.client_first()));
    let SaslOutput::Challenge(server_first) = server.step(SaslInput::Credentials(creds())) else { panic!() };
    let client_final = client.handle_server_first(&server_first).unwrap();
    assert!(matches!(server.step(SaslInput::Response(&client_final)), SaslOutput::Success { .. }));
    // A wrong cached value is used as given (and fails), never silently re-derived.
    let mut server = SaslServer::new(Mechanism::ScramSha256, None, false);
    let mut client = ScramClient::new(HashAlg::Sha256, "juliet", "pw", ClientChannelBinding::None);
    client.use_salted_password(salt, iterations, vec![0; salted.len()]);
    server.step(SaslInput::Response(&client.client_first()));
    let SaslOutput::Challenge(server_first) = server.step(SaslInput::Credentials(creds())) else { panic!() };
    let client_final = client.handle_server_first(&server_first).unwrap();
    assert!(matches!(server.step(SaslInput::Response(&client_final)), SaslOutput::Failure(SaslFailure::NotAuthorized)));
}
