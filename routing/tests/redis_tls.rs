//! The routing table over TLS (`rediss://`), against a real redis-server
//! started with a certificate from a CA of this test.
#![allow(clippy::unwrap_used)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use meerkat_routing::global::table::{connect, connect_tls, RedisTls};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

struct Redis(Child);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A CA's PEM, and a redis-server whose TLS port presents a certificate it signed.
fn tls_redis(dir: &std::path::Path) -> (Vec<u8>, u16, Redis) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "redis test CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let mut server = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    server.distinguished_name.push(DnType::CommonName, "redis");
    server.use_authority_key_identifier_extension = true;
    let server_key = KeyPair::generate().unwrap();
    let server_cert = server.signed_by(&server_key, &issuer).unwrap();
    for (name, pem) in
        [("ca.pem", ca_cert.pem()), ("redis.pem", server_cert.pem()), ("redis.key", server_key.serialize_pem())]
    {
        std::fs::write(dir.join(name), pem).unwrap();
    }
    let port = free_port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--tls-cert-file")
        .arg(dir.join("redis.pem"))
        .arg("--tls-key-file")
        .arg(dir.join("redis.key"))
        .arg("--tls-ca-cert-file")
        .arg(dir.join("ca.pem"))
        .args(["--tls-auth-clients", "no"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server (with TLS) is installed");
    (ca_cert.pem().into_bytes(), port, Redis(child))
}

#[tokio::test]
async fn the_routing_table_reaches_redis_over_tls_only_with_the_right_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, port, _redis) = tls_redis(dir.path());
    let url = format!("rediss://127.0.0.1:{port}/0");
    let tls = RedisTls { ca: Some(ca), client: None };

    // The server starts: poll for it, with a deadline.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut conn = loop {
        match connect_tls(&url, Some(&tls)).await {
            Ok(c) => break c,
            Err(e) => assert!(Instant::now() < deadline, "no TLS connection to redis: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let _: () = redis::cmd("SET").arg("meerkat:tls").arg("yes").query_async(&mut conn).await.unwrap();
    let v: String = redis::cmd("GET").arg("meerkat:tls").query_async(&mut conn).await.unwrap();
    assert_eq!(v, "yes");

    // Not without the CA (the system's roots do not know it), and not in the clear.
    assert!(connect_tls(&url, Some(&RedisTls::default())).await.is_err());
    if let Ok(mut plain) = connect(&format!("redis://127.0.0.1:{port}/0")).await {
        let r: Result<String, _> = redis::cmd("PING").query_async(&mut plain).await;
        assert!(r.is_err(), "a plain connection to the TLS port answered: {r:?}");
    }
}
