//! Clients that misbehave, against the real node: connections per listener
//! and per address, registration floods, shapers, and the per-session
//! bounds in bytes.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use meerkat_tests::client::{body, stanza_error};
use meerkat_tests::{login, Client, NodeOptions, Sasl, Security, TestNode, DOMAIN};
use meerkat_xmpp::sasl::HashAlg;

const PW: &str = "pw";

fn node_with(listener_toml: &str, extra_toml: &str) -> TestNode {
    TestNode::start_with(NodeOptions {
        listener_toml: listener_toml.into(),
        extra_toml: extra_toml.into(),
        ..Default::default()
    })
}

/// A connection the listener should refuse: the stream error it got.
async fn refused(node: &TestNode) -> Result<String, String> {
    let mut c = Client::tcp(node.c2s, DOMAIN).await.map_err(|e| e.to_string())?;
    let header = c.header_xml();
    // The server may already have written its error and closed: a failed
    // write is not the test's concern, the error read below is.
    let _ = c.send_str(&header).await;
    c.expect_stream_error_timeout(Duration::from_secs(20)).await.map_err(|e| e.to_string())
}

/// alice logs in on the direct TLS listener, which has no limits.
async fn direct_tls_login(node: &TestNode, resource: &str) -> Client {
    let mut c = Client::connect(node.c2s_tls, DOMAIN, Security::DirectTls).await.unwrap();
    c.auth(Sasl::Scram(HashAlg::Sha256), "alice", PW).await.unwrap();
    c.bind(Some(resource)).await.unwrap();
    c
}

#[tokio::test]
async fn connections_over_the_per_address_limit_get_a_stream_error_and_the_first_are_served() {
    let node = node_with("max_connections_per_ip = 100", "");
    node.add_user("alice", PW);

    // The first 100 log in and stay.
    let mut served = Vec::new();
    for batch in 0..10 {
        let node = &node;
        let logins = (0..10).map(|i| async move { login(node, "alice", PW, &format!("r{batch}-{i}")).await });
        served.extend(join_all(logins).await);
    }

    // 900 more from the same address: each is refused with the stream error.
    let mut conditions = Vec::new();
    for _ in 0..9 {
        let batch = join_all((0..100).map(|_| refused(&node))).await;
        conditions.extend(batch);
    }
    let wrong: Vec<_> = conditions.iter().filter(|c| c.as_deref() != Ok("policy-violation")).collect();
    assert!(
        wrong.is_empty(),
        "{} of 900 not refused with policy-violation: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );

    // The first 100 are still served.
    let (first, rest) = served.split_at_mut(1);
    let to = rest[98].jid().to_owned();
    first[0].send_message(&to, "still here").await.unwrap();
    let m = rest[98].recv_message().await.unwrap();
    assert_eq!(body(&m).as_deref(), Some("still here"));

    // A place given back is taken again.
    let mut gone = served.pop().unwrap();
    gone.close().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match Client::login(node.c2s, DOMAIN, "alice", PW, Some("again")).await {
            Ok(_) => break,
            Err(e) => assert!(Instant::now() < deadline, "no place came back: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Another listener has its own count.
    direct_tls_login(&node, "tls").await;
}

#[tokio::test]
async fn the_listener_limit_refuses_whoever_comes_next() {
    let node = node_with("max_connections = 3", "");
    node.add_user("alice", PW);
    let mut held = Vec::new();
    for i in 0..3 {
        held.push(login(&node, "alice", PW, &format!("r{i}")).await);
    }
    assert_eq!(refused(&node).await.as_deref(), Ok("policy-violation"));
    // The direct TLS listener is not this one.
    direct_tls_login(&node, "elsewhere").await;
}

const REGISTER: &str = "<iq type='set' id='reg'><query xmlns='jabber:iq:register'><username>{u}</username><password>pw</password></query></iq>";

/// Registers `user` on a new stream: "created", or the error condition.
async fn register(node: &TestNode, user: &str) -> String {
    let mut c = Client::connect(node.c2s, DOMAIN, Security::StartTls).await.unwrap();
    let res = c.iq_xml(&REGISTER.replace("{u}", user)).await.unwrap();
    match res.attr("type") {
        Some("result") => "created".into(),
        _ => stanza_error(&res).unwrap_or_else(|| res.to_string()),
    }
}

#[tokio::test]
async fn a_registration_flood_from_one_address_creates_one_account_per_timeout() {
    let node = node_with("", "[modules.mod_register]\nregistration_timeout = 600\n");
    // 20 registrations at once from one address: one account.
    let node_ref = &node;
    let results = join_all((0..20).map(|i| async move { register(node_ref, &format!("flood{i}")).await })).await;
    let created = results.iter().filter(|r| *r == "created").count();
    assert_eq!(created, 1, "{results:?}");
    assert!(
        results.iter().all(|r| r == "created" || r == "resource-constraint"),
        "the others are told to wait: {results:?}"
    );
    // And later ones too, until the timeout passes.
    assert_eq!(register(&node, "later").await, "resource-constraint");
    let (code, v) = node.api("GET", &format!("/api/users/{DOMAIN}"), None);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["users"].as_array().map(|a| a.len()), Some(1), "{v}");
}

#[tokio::test]
async fn a_taken_name_does_not_use_up_the_address_allowance() {
    let node = node_with("", "[modules.mod_register]\nregistration_timeout = 600\n");
    node.add_user("taken", PW);
    assert_eq!(register(&node, "taken").await, "conflict");
    assert_eq!(register(&node, "fresh").await, "created");
}

#[tokio::test]
async fn ip_access_rules_decide_who_may_register() {
    let deny = "[modules.mod_register]\nregistration_timeout = 0\nip_access = [{address = \"127.0.0.0/8\", policy = \"deny\"}, {address = \"0.0.0.0/0\", policy = \"allow\"}]\n";
    let node = node_with("", deny);
    assert_eq!(register(&node, "nope").await, "forbidden");

    let allow = "[modules.mod_register]\nregistration_timeout = 0\nip_access = [{address = \"127.0.0.1\", policy = \"allow\"}]\n";
    let node = node_with("", allow);
    assert_eq!(register(&node, "yes").await, "created");
    assert_eq!(register(&node, "yes2").await, "created", "no timeout when it is 0");
}

#[tokio::test]
async fn one_account_per_stream() {
    let node = node_with("", "[modules.mod_register]\nregistration_timeout = 0\n");
    let mut c = Client::connect(node.c2s, DOMAIN, Security::StartTls).await.unwrap();
    let res = c.iq_xml(&REGISTER.replace("{u}", "first")).await.unwrap();
    assert_eq!(res.attr("type"), Some("result"), "{res}");
    let res = c.iq_xml(&REGISTER.replace("{u}", "second")).await.unwrap();
    assert_eq!(stanza_error(&res).as_deref(), Some("not-allowed"), "{res}");
}

#[tokio::test]
async fn a_client_over_its_shapers_rate_is_slowed_to_it_not_disconnected() {
    const RATE: usize = 4096;
    let node = node_with("shaper = \"slow\"", &format!("[shaper.slow]\nmax_rate = {RATE}\n"));
    node.add_user("alice", PW);
    node.add_user("bob", PW);
    let mut alice = login(&node, "alice", PW, "fast").await;
    let mut bob = login(&node, "bob", PW, "reader").await;
    let to = bob.jid().to_owned();

    // 24 KiB at once, far over 4 KiB/s: the node reads it at the rate.
    let text = "x".repeat(1000);
    let mut sent = 0usize;
    let start = Instant::now();
    for i in 0..24 {
        let xml = format!("<message to='{to}' type='chat' id='m{i}'><body>{i} {text}</body></message>");
        sent += xml.len();
        alice.send_str(&xml).await.unwrap();
    }
    let mut arrivals = Vec::new();
    for i in 0..24 {
        let m = bob.recv_message().await.unwrap();
        assert!(body(&m).unwrap().starts_with(&format!("{i} ")), "in order");
        arrivals.push((start.elapsed(), (i + 1) * sent / 24));
    }
    // What arrived by each moment is no more than one second's allowance
    // (the bucket starts full), plus the rate times the time gone by, plus
    // one read of up to 4 KiB that may overdraw the bucket.
    for (at, bytes) in &arrivals {
        let allowed = RATE as f64 * (1.0 + at.as_secs_f64()) + 4096.0;
        assert!((*bytes as f64) <= allowed, "{bytes} bytes through after {at:?}: more than {RATE} B/s");
    }
    // Slowed, not cut off: alice's session still answers.
    let pong = alice.iq_xml("<iq type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>").await.unwrap();
    assert_eq!(pong.attr("type"), Some("result"), "{pong}");
}

/// Opens an XMPP WebSocket: the HTTP status of a refused upgrade, or 101.
async fn ws_status(url: &str) -> (u16, Option<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>>) {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    use tokio_tungstenite::tungstenite::http::HeaderValue;
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static("xmpp"));
    let host = req.uri().authority().unwrap().as_str().to_owned();
    let tcp = tokio::net::TcpStream::connect(host).await.unwrap();
    match tokio_tungstenite::client_async(req, tcp).await {
        Ok((ws, res)) => (res.status().as_u16(), Some(ws)),
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => (res.status().as_u16(), None),
        Err(e) => panic!("websocket: {e}"),
    }
}

/// Asks for a BOSH session: the HTTP status and the body.
async fn bosh_create(url: String) -> (u16, String) {
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let body = "<body rid='1000' to='localhost' wait='5' hold='1' xmlns='http://jabber.org/protocol/httpbind' xmlns:xmpp='urn:xmpp:xbosh' xmpp:version='1.0'/>";
        let mut res = agent.post(&url).content_type("text/xml; charset=utf-8").send(body).unwrap();
        (res.status().as_u16(), res.body_mut().read_to_string().unwrap())
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn an_http_listener_counts_websockets_and_bosh_sessions_together() {
    let port = meerkat_tests::node::free_port();
    let _node = TestNode::start(&format!(
        "[[listen.http]]\nport = {port}\nip_address = \"127.0.0.1\"\nmax_connections_per_ip = 2\n\
         [[listen.http.handlers.mod_websockets]]\nhost = \"_\"\npath = \"/ws-xmpp\"\n\
         [[listen.http.handlers.mod_bosh]]\nhost = \"_\"\npath = \"/http-bind\"\n"
    ));
    let ws_url = format!("ws://127.0.0.1:{port}/ws-xmpp");
    let bosh_url = format!("http://127.0.0.1:{port}/http-bind");
    let (status, first) = ws_status(&ws_url).await;
    assert_eq!(status, 101);
    let (status, body) = bosh_create(bosh_url.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("sid="), "{body}");
    // Both places are taken: a third session of either kind gets 503.
    assert_eq!(ws_status(&ws_url).await.0, 503);
    let (status, body) = bosh_create(bosh_url.clone()).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("policy-violation"), "{body}");
    // A closed WebSocket gives its place back.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, _) = ws_status(&ws_url).await;
        if status == 101 {
            break;
        }
        assert!(Instant::now() < deadline, "the place never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_burst_past_the_stream_management_byte_cap_ends_the_session_and_nothing_is_lost() {
    let node = TestNode::start("");
    node.add_user("alice", PW);
    node.add_user("bob", PW);
    let mut alice = login(&node, "alice", PW, "sender").await;
    let mut bob = login(&node, "bob", PW, "slow").await;
    bob.send_str("<enable xmlns='urn:xmpp:sm:3'/>").await.unwrap();
    bob.recv_until(|el| el.name == "enabled").await.unwrap();
    let to = bob.jid().to_owned();

    // 100 messages of 60 KiB (6 MiB); bob reads but never acknowledges:
    // 1 MiB in, the node ends his session instead of holding the rest.
    let pad = "y".repeat(60 * 1024);
    let send = async {
        for i in 0..100 {
            let xml = format!("<message to='{to}' type='chat' id='b{i}'><body>{i} {pad}</body></message>");
            alice.send_str(&xml).await.unwrap();
        }
        alice
    };
    let (mut alice, ended) = tokio::join!(send, bob.wait_closed(Duration::from_secs(60)));
    assert_eq!(ended.unwrap().as_deref(), Some("resource-constraint"));

    // Everything alice sent is stored: bob gets all 100 when he comes back.
    let ping = alice.iq_xml("<iq type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>").await.unwrap();
    assert_eq!(ping.attr("type"), Some("result"), "alice's stanzas were all handled: {ping}");
    let mut bob = login(&node, "bob", PW, "back").await;
    bob.send_str("<presence/>").await.unwrap();
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 100 {
        let m = bob.recv_message().await.unwrap_or_else(|e| panic!("after {} of 100: {e}", seen.len()));
        let b = body(&m).unwrap();
        seen.insert(b.split(' ').next().unwrap().parse::<u32>().unwrap());
    }
}

#[tokio::test]
async fn directed_presences_past_the_cap_are_refused() {
    let node = TestNode::start("[modules.mod_presence]\nmax_directed_presences = 3\n");
    node.add_user("alice", PW);
    let mut alice = login(&node, "alice", PW, "r").await;
    alice.send_str("<presence/>").await.unwrap();
    alice.recv_until(|el| el.name == "presence").await.unwrap();
    for i in 0..3 {
        alice.send_str(&format!("<presence to='peer{i}@localhost'/>")).await.unwrap();
    }
    // Again to one already remembered is fine; a fourth is not.
    alice.send_str("<presence to='peer0@localhost' id='again'/>").await.unwrap();
    alice.send_str("<presence to='peer3@localhost' id='fourth'/>").await.unwrap();
    let err = alice.recv_until(|el| el.name == "presence" && el.attr("type") == Some("error")).await.unwrap();
    assert_eq!(err.attr("id"), Some("fourth"), "{err}");
    assert_eq!(stanza_error(&err).as_deref(), Some("policy-violation"), "{err}");
    // Going unavailable to one makes room again.
    alice.send_str("<presence to='peer1@localhost' type='unavailable'/>").await.unwrap();
    alice.send_str("<presence to='peer3@localhost' id='room'/>").await.unwrap();
    let pong = alice.iq_xml("<iq type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>").await.unwrap();
    assert_eq!(pong.attr("type"), Some("result"));
    assert!(
        !alice.backlog().any(|el| el.attr("type") == Some("error") && el.attr("id") != Some("fourth")),
        "the room made by going unavailable was taken"
    );
}

#[tokio::test]
async fn private_storage_is_bounded_per_account() {
    let node = TestNode::start("[modules.mod_private]\nmax_bytes = 65536\n");
    node.add_user("alice", PW);
    let mut alice = login(&node, "alice", PW, "r").await;
    let store = |ns: &str, size: usize| {
        format!(
            "<iq type='set'><query xmlns='jabber:iq:private'><data xmlns='{ns}'>{}</data></query></iq>",
            "z".repeat(size)
        )
    };
    // 40 KiB in one namespace, then 20 KiB in another: fits.
    assert_eq!(alice.iq_xml(&store("a:one", 40_000)).await.unwrap().attr("type"), Some("result"));
    assert_eq!(alice.iq_xml(&store("a:two", 20_000)).await.unwrap().attr("type"), Some("result"));
    // 10 KiB more in a third namespace does not.
    let res = alice.iq_xml(&store("a:three", 10_000)).await.unwrap();
    assert_eq!(stanza_error(&res).as_deref(), Some("policy-violation"), "{res}");
    // Replacing a document counts its new size, not both.
    assert_eq!(alice.iq_xml(&store("a:one", 30_000)).await.unwrap().attr("type"), Some("result"));
    assert_eq!(alice.iq_xml(&store("a:three", 10_000)).await.unwrap().attr("type"), Some("result"));
    // Nothing refused was stored.
    let res = alice
        .iq_xml("<iq type='get'><query xmlns='jabber:iq:private'><data xmlns='a:two'/></query></iq>")
        .await
        .unwrap();
    assert!(res.to_string().len() > 20_000, "{}", res.to_string().len());
}
