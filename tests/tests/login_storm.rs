//! A storm of logins that derive keys does not stall established sessions:
//! PBKDF2 runs on the node's bounded hashing pool, never on the threads that
//! serve connections.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use meerkat_tests::{Client, NodeOptions, Sasl, TestNode, DOMAIN};

const PW: &str = "storm-pw";
/// PLAIN logins in the storm, and how many are in flight at once.
const LOGINS: usize = 2000;
const IN_FLIGHT: usize = 50;
/// Established sessions pinging the server during the storm.
const PINGERS: usize = 4;

use meerkat_tests::node::free_port;

/// A PLAIN login over plain TCP (no TLS, so the client's own work stays small).
async fn plain_login(addr: std::net::SocketAddr, user: &str) -> Client {
    let mut c = Client::tcp(addr, DOMAIN).await.unwrap();
    c.open_stream().await.unwrap();
    c.auth(Sasl::Plain, user, PW).await.unwrap_or_else(|e| panic!("PLAIN login of {user}: {e}"));
    c
}

/// 2,000 PLAIN logins against SCRAM-stored keys (each one a PBKDF2
/// derivation) while established clients ping the server back to back:
/// every ping is answered. The round trips are measured and printed, not
/// asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_login_storm_does_not_stall_established_sessions() {
    let port = free_port();
    let node = TestNode::start_with(NodeOptions {
        extra_toml: format!(
            "[auth]\nallow_plain_without_tls = true\n\n\
             [[listen.c2s]]\nport = {port}\nip_address = \"127.0.0.1\"\ntls.mode = \"none\"\n"
        ),
        ..Default::default()
    });
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    node.add_user("storm", PW);
    for i in 0..PINGERS {
        node.add_user(&format!("pinger{i}"), PW);
    }

    let done = Arc::new(AtomicBool::new(false));
    let mut pingers = Vec::new();
    for i in 0..PINGERS {
        let mut c = plain_login(addr, &format!("pinger{i}")).await;
        c.bind(Some("r")).await.unwrap();
        let done = done.clone();
        pingers.push(tokio::spawn(async move {
            let mut rtts = Vec::new();
            let mut n = 0u64;
            while !done.load(Ordering::Relaxed) {
                n += 1;
                let t = Instant::now();
                let id = format!("p{n}");
                let res = c
                    .iq_xml(&format!("<iq type='get' id='{id}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"))
                    .await
                    .unwrap_or_else(|e| panic!("ping {id} of pinger{i} was not answered: {e}"));
                assert_eq!(res.attr("type"), Some("result"), "{res}");
                rtts.push(t.elapsed());
            }
            rtts
        }));
    }

    let started = Instant::now();
    let gate = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let mut logins = Vec::with_capacity(LOGINS);
    for _ in 0..LOGINS {
        let permit = gate.clone().acquire_owned().await.unwrap();
        logins.push(tokio::spawn(async move {
            let c = plain_login(addr, "storm").await;
            drop((c, permit));
        }));
    }
    for l in logins {
        l.await.unwrap();
    }
    let storm = started.elapsed();
    done.store(true, Ordering::Relaxed);

    let mut rtts = Vec::new();
    for p in pingers {
        rtts.extend(p.await.unwrap());
    }
    rtts.sort_unstable();
    let pct = |p: usize| rtts[(rtts.len() * p / 100).min(rtts.len() - 1)];
    eprintln!(
        "login storm: {LOGINS} PLAIN logins in {storm:?} ({:.0}/s); {} pings answered, p50 {:?}, p99 {:?}, max {:?}",
        LOGINS as f64 / storm.as_secs_f64(),
        rtts.len(),
        pct(50),
        pct(99),
        rtts.last().copied().unwrap_or_default(),
    );
}
