//! External components (XEP-0114) on `[[listen.component]]`: the handshake,
//! stanzas both ways, `check_from`, hidden components in service discovery,
//! `conflict_behaviour`, and, with unmodified slixmpp `ComponentXMPP`s over
//! plain TCP and direct TLS on node 1 of a three-node cluster, pings and
//! messages from users on the other nodes.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use meerkat_tests::cluster::{Placement, SharedDb, TestCluster};
use meerkat_tests::component::RawComponent;
use meerkat_tests::js::EchoPeer;
use meerkat_tests::node::free_port;
use meerkat_tests::{login, Client, TestNode};
use meerkat_xmpp::element::Element;
use meerkat_xmpp::ns;

const SECRET: &str = "s3cret";
const PW: &str = "pw";
const WAIT: Duration = Duration::from_secs(10);

/// A node with two component listeners: `open` (defaults) and `hidden`
/// (hidden components, `kick_old`); users do not see hidden services.
struct Node {
    node: TestNode,
    open: std::net::SocketAddr,
    hidden: std::net::SocketAddr,
}

fn start() -> Node {
    let (open, hidden) = (free_port(), free_port());
    let node = TestNode::start(&format!(
        r#"
[[listen.component]]
port = {open}
ip_address = "127.0.0.1"
password = "{SECRET}"

[[listen.component]]
port = {hidden}
ip_address = "127.0.0.1"
password = "{SECRET}"
hidden_components = true
conflict_behaviour = "kick_old"
state_timeout = 1000

[modules.mod_disco]
users_can_see_hidden_services = false
"#
    ));
    Node { node, open: ([127, 0, 0, 1], open).into(), hidden: ([127, 0, 0, 1], hidden).into() }
}

fn disco_items(el: &Element) -> Vec<String> {
    el.get_child("query", ns::DISCO_ITEMS)
        .map(|q| q.elements().filter_map(|i| i.attr("jid").map(str::to_owned)).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_wrong_handshake_is_refused_and_the_right_one_accepted() {
    let n = tokio::task::spawn_blocking(start).await.unwrap();
    let mut c = RawComponent::open(n.open, "echo.localhost").await.unwrap();
    let answer = c.handshake("not the secret").await.unwrap();
    assert!(answer.is("error", ns::STREAM), "{}", answer.to_xml(ns::COMPONENT));
    assert!(answer.has_child("not-authorized", ns::STREAMS), "{}", answer.to_xml(ns::COMPONENT));
    // A stream in the client namespace is not a component's.
    let mut tcp = Client::tcp(n.open, "echo.localhost").await.unwrap();
    tcp.send_str(&tcp.header_xml()).await.unwrap();
    assert_eq!(tcp.expect_stream_error().await, "invalid-namespace");
    // The domain of a local host is not a component's.
    let mut c = RawComponent::open(n.open, "localhost").await.unwrap();
    let answer = c.handshake(SECRET).await.unwrap();
    assert!(answer.has_child("conflict", ns::STREAMS), "{}", answer.to_xml(ns::COMPONENT));
    RawComponent::connect(n.open, "echo.localhost", SECRET).await;
    // A connection that says nothing gets our header and <connection-timeout/> after state_timeout.
    let mut idle = Client::tcp(n.hidden, "x.localhost").await.unwrap();
    assert_eq!(idle.expect_stream_error_timeout(WAIT).await.unwrap(), "connection-timeout");
}

#[tokio::test]
async fn users_and_a_component_exchange_stanzas() {
    let n = tokio::task::spawn_blocking(start).await.unwrap();
    n.node.add_user("alice", PW);
    let mut comp = RawComponent::connect(n.open, "echo.localhost", SECRET).await;
    let mut alice = login(&n.node, "alice", PW, "desk").await;

    alice.send_message("bot@echo.localhost", "hello component").await.unwrap();
    let got = comp.recv_timeout(WAIT).await.unwrap();
    assert!(got.is("message", ns::COMPONENT), "{}", got.to_xml(ns::COMPONENT));
    assert_eq!(got.attr("from"), Some("alice@localhost/desk"));
    assert_eq!(got.attr("to"), Some("bot@echo.localhost"));
    assert_eq!(got.get_child("body", ns::COMPONENT).map(Element::text).as_deref(), Some("hello component"));

    comp.send_str(
        "<message from='bot@echo.localhost' to='alice@localhost/desk' type='chat'><body>hello user</body></message>",
    )
    .await
    .unwrap();
    let el = alice.recv_until(|el| meerkat_tests::client::body(el).is_some()).await.unwrap();
    assert_eq!(meerkat_tests::client::body(&el).as_deref(), Some("hello user"));
    assert_eq!(el.attr("from"), Some("bot@echo.localhost"));

    // An IQ to the component, answered by it.
    alice.send_str("<iq type='get' id='p1' to='echo.localhost'><ping xmlns='urn:xmpp:ping'/></iq>").await.unwrap();
    let iq = comp.recv_timeout(WAIT).await.unwrap();
    assert!(iq.is("iq", ns::COMPONENT) && iq.has_child("ping", ns::PING), "{}", iq.to_xml(ns::COMPONENT));
    comp.send_str(&format!(
        "<iq type='result' id='{}' from='echo.localhost' to='{}'/>",
        iq.attr("id").unwrap(),
        iq.attr("from").unwrap()
    ))
    .await
    .unwrap();
    let res = alice.recv_until(|el| el.attr("id") == Some("p1")).await.unwrap();
    assert_eq!(res.attr("type"), Some("result"));

    // The server answers the component's IQs to it.
    comp.send_str(
        "<iq type='get' id='v1' from='echo.localhost' to='localhost'><query xmlns='jabber:iq:version'/></iq>",
    )
    .await
    .unwrap();
    let v = comp.recv_timeout(WAIT).await.unwrap();
    assert_eq!(v.attr("type"), Some("result"), "{}", v.to_xml(ns::COMPONENT));
    assert!(v.has_child("query", "jabber:iq:version"));
}

#[tokio::test]
async fn a_component_must_address_its_stanzas_from_its_domain() {
    let n = tokio::task::spawn_blocking(start).await.unwrap();
    n.node.add_user("alice", PW);
    let mut alice = login(&n.node, "alice", PW, "desk").await;
    let mut comp = RawComponent::connect(n.open, "echo.localhost", SECRET).await;
    comp.send_str("<message from='mallory@localhost' to='alice@localhost'><body>forged</body></message>")
        .await
        .unwrap();
    assert_eq!(comp.expect_stream_error(WAIT).await, "invalid-from");
    let mut comp = RawComponent::connect(n.open, "echo.localhost", SECRET).await;
    comp.send_str("<message from='bot@echo.localhost'><body>to nobody</body></message>").await.unwrap();
    assert_eq!(comp.expect_stream_error(WAIT).await, "improper-addressing");
    // alice got neither; a ping round trip shows nothing was on its way.
    let res = alice.iq_xml("<iq type='get' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>").await.unwrap();
    assert_eq!(res.attr("type"), Some("result"));
    assert!(alice.backlog().all(|el| meerkat_tests::client::body(el).is_none()), "a forged message arrived");
}

#[tokio::test]
async fn hidden_components_are_listed_to_components_not_users() {
    let n = tokio::task::spawn_blocking(start).await.unwrap();
    n.node.add_user("alice", PW);
    let mut public = RawComponent::connect(n.open, "public.localhost", SECRET).await;
    let _hidden = RawComponent::connect(n.hidden, "hidden.localhost", SECRET).await;
    let mut alice = login(&n.node, "alice", PW, "desk").await;
    let res = alice
        .iq_xml("<iq type='get' to='localhost'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>")
        .await
        .unwrap();
    let items = disco_items(&res);
    assert!(items.contains(&"public.localhost".to_owned()), "{items:?}");
    assert!(!items.contains(&"hidden.localhost".to_owned()), "{items:?}");
    public
        .send_str("<iq type='get' id='d1' from='public.localhost' to='localhost'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>")
        .await
        .unwrap();
    let res = public.recv_timeout(WAIT).await.unwrap();
    let items: Vec<String> = res
        .get_child("query", "http://jabber.org/protocol/disco#items")
        .map(|q| q.elements().filter_map(|i| i.attr("jid").map(str::to_owned)).collect())
        .unwrap_or_default();
    assert!(
        items.contains(&"public.localhost".to_owned()) && items.contains(&"hidden.localhost".to_owned()),
        "{items:?}"
    );
    // A hidden component is routed to all the same.
    alice.send_message("hidden.localhost", "still reachable").await.unwrap();
    let mut hidden = _hidden;
    let got = hidden.recv_timeout(WAIT).await.unwrap();
    assert_eq!(got.get_child("body", ns::COMPONENT).map(Element::text).as_deref(), Some("still reachable"));
}

#[tokio::test]
async fn a_second_component_for_a_domain_is_refused_or_replaces_the_first() {
    let n = tokio::task::spawn_blocking(start).await.unwrap();
    n.node.add_user("alice", PW);
    let mut alice = login(&n.node, "alice", PW, "desk").await;

    // conflict_behaviour = "disconnect": the newcomer is refused, the first one stays.
    let mut first = RawComponent::connect(n.open, "one.localhost", SECRET).await;
    let mut second = RawComponent::open(n.open, "one.localhost").await.unwrap();
    let answer = second.handshake(SECRET).await.unwrap();
    assert!(answer.has_child("conflict", ns::STREAMS), "{}", answer.to_xml(ns::COMPONENT));
    alice.send_message("one.localhost", "to the first").await.unwrap();
    let got = first.recv_timeout(WAIT).await.unwrap();
    assert_eq!(got.get_child("body", ns::COMPONENT).map(Element::text).as_deref(), Some("to the first"));

    // conflict_behaviour = "kick_old": the first one goes, the newcomer takes the domain.
    let mut old = RawComponent::connect(n.hidden, "two.localhost", SECRET).await;
    let mut new = RawComponent::connect(n.hidden, "two.localhost", SECRET).await;
    assert_eq!(old.expect_stream_error(WAIT).await, "conflict");
    alice.send_message("two.localhost", "to the new one").await.unwrap();
    let got = new.recv_timeout(WAIT).await.unwrap();
    assert_eq!(got.get_child("body", ns::COMPONENT).map(Element::text).as_deref(), Some("to the new one"));

    // The newcomer's listener decides, whichever listener the old one came in through.
    let mut old = RawComponent::connect(n.open, "three.localhost", SECRET).await;
    let mut new = RawComponent::connect(n.hidden, "three.localhost", SECRET).await;
    assert_eq!(old.expect_stream_error(WAIT).await, "conflict");
    alice.send_message("three.localhost", "across listeners").await.unwrap();
    let got = new.recv_timeout(WAIT).await.unwrap();
    assert_eq!(got.get_child("body", ns::COMPONENT).map(Element::text).as_deref(), Some("across listeners"));
}

/// slixmpp components on node 1 (one over plain TCP, one over direct TLS),
/// users on nodes 2 and 3: pings and messages reach the components, whose
/// answers reach the users.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slixmpp_components_on_one_node_serve_users_on_the_others() {
    let (plain, tls) = (free_port(), free_port());
    let listeners = format!(
        r#"
[[listen.component]]
port = {plain}
ip_address = "127.0.0.1"
password = "{SECRET}"

[[listen.component]]
port = {tls}
ip_address = "127.0.0.1"
password = "{SECRET}"
tls = {{}}
"#
    );
    let cluster = tokio::task::spawn_blocking(move || {
        TestCluster::start_configured(
            SharedDb::sqlite(),
            vec![
                (Placement::loopback(), listeners),
                (Placement::loopback(), String::new()),
                (Placement::loopback(), String::new()),
            ],
        )
    })
    .await
    .unwrap();
    for u in ["u2", "u3"] {
        cluster.add_user(u, PW);
    }
    let node1 = &cluster.nodes[0];
    let secret = SECRET.to_owned();
    let arg = |s: &str| s.to_owned();
    let common = |port: u16, domain: &str| {
        vec![
            arg("--port"),
            port.to_string(),
            arg("--domain"),
            arg(domain),
            arg("--secret"),
            secret.clone(),
            arg("--count"),
            arg("2"),
            arg("--timeout"),
            arg("60"),
        ]
    };
    let echo =
        EchoPeer::spawn("component.py", &common(plain, "echo.localhost"), "echo.localhost", Duration::from_secs(60));
    let mut tls_args = common(tls, "secure.localhost");
    tls_args.extend([
        arg("--tls"),
        arg("--host"),
        arg("localhost"),
        arg("--ca"),
        node1.cert_path().display().to_string(),
    ]);
    let secure = EchoPeer::spawn("component.py", &tls_args, "secure.localhost", Duration::from_secs(60));

    let mut users = vec![login(&cluster.nodes[1], "u2", PW, "r").await, login(&cluster.nodes[2], "u3", PW, "r").await];
    for u in &mut users {
        // The registrations are committed; wait until this node has applied them.
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let res = u
                .iq_xml("<iq type='get' to='localhost'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>")
                .await
                .unwrap();
            let items = disco_items(&res);
            if items.contains(&"echo.localhost".to_owned()) && items.contains(&"secure.localhost".to_owned()) {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{} never lists both components: {items:?}", u.jid());
        }
        for domain in ["echo.localhost", "secure.localhost"] {
            let res =
                u.iq_xml(&format!("<iq type='get' to='{domain}'><ping xmlns='urn:xmpp:ping'/></iq>")).await.unwrap();
            assert_eq!(res.attr("type"), Some("result"), "ping of {domain} from {}", u.jid());
            let body = format!("hi from {}", u.jid());
            u.send_message(domain, &body).await.unwrap();
            let want = format!("echo: {body}");
            let el =
                u.recv_until(|el| meerkat_tests::client::body(el).as_deref() == Some(want.as_str())).await.unwrap();
            assert_eq!(el.attr("from"), Some(domain));
        }
    }
    for (peer, domain) in [(echo, "echo.localhost"), (secure, "secure.localhost")] {
        let summary = peer.finish(Duration::from_secs(60));
        let from: Vec<&str> =
            summary["received"].as_array().unwrap().iter().filter_map(|r| r["from"].as_str()).collect();
        assert_eq!(from, ["u2@localhost/r", "u3@localhost/r"], "{domain}: {summary}");
    }
}

/// A listener takes `max_connections` components at once; one more gets
/// `<policy-violation/>`, and a place freed is taken again.
#[tokio::test]
async fn a_listener_holds_at_most_max_connections() {
    let port = free_port();
    let node = tokio::task::spawn_blocking(move || {
        TestNode::start(&format!(
            "[[listen.component]]\nport = {port}\nip_address = \"127.0.0.1\"\npassword = \"{SECRET}\"\nmax_connections = 1\n"
        ))
    })
    .await
    .unwrap();
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let first = RawComponent::connect(addr, "one.localhost", SECRET).await;
    let mut over = Client::tcp(addr, "two.localhost").await.unwrap();
    assert_eq!(over.expect_stream_error_timeout(WAIT).await.unwrap(), "policy-violation");
    drop(first);
    // The place frees once the node has seen the first connection close.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut c = RawComponent::open(addr, "two.localhost").await.unwrap();
        match c.handshake(SECRET).await {
            Ok(el) if el.is("handshake", ns::COMPONENT) => break,
            other => {
                assert!(tokio::time::Instant::now() < deadline, "no place freed: {other:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(node);
}

/// `conflict_behaviour` across the nodes of a cluster: with `disconnect`, a
/// component for a domain a component on another node has is refused; with
/// `kick_old`, the other node's component goes with `<conflict/>` and the
/// newcomer takes the domain, for users on both nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_component_on_another_node_is_refused_or_replaces_the_first() {
    let ports: Vec<(u16, u16)> = (0..2).map(|_| (free_port(), free_port())).collect();
    let listeners = |(open, kick): (u16, u16)| {
        format!(
            r#"
[[listen.component]]
port = {open}
ip_address = "127.0.0.1"
password = "{SECRET}"

[[listen.component]]
port = {kick}
ip_address = "127.0.0.1"
password = "{SECRET}"
conflict_behaviour = "kick_old"
"#
        )
    };
    let configs: Vec<_> = ports.iter().map(|p| (Placement::loopback(), listeners(*p))).collect();
    let cluster =
        tokio::task::spawn_blocking(move || TestCluster::start_configured(SharedDb::sqlite(), configs)).await.unwrap();
    cluster.add_user("alice", PW);
    let mut alice = login(&cluster.nodes[0], "alice", PW, "desk").await;
    let addr = |port: u16| std::net::SocketAddr::from(([127, 0, 0, 1], port));

    // disconnect: node 2 refuses a domain node 1's component has.
    let mut first = RawComponent::connect(addr(ports[0].0), "one.localhost", SECRET).await;
    let mut second = RawComponent::open(addr(ports[1].0), "one.localhost").await.unwrap();
    let answer = second.handshake(SECRET).await.unwrap();
    assert!(answer.has_child("conflict", ns::STREAMS), "{}", answer.to_xml(ns::COMPONENT));
    alice.send_message("one.localhost", "still the first").await.unwrap();
    let got = first.recv_timeout(WAIT).await.unwrap();
    assert_eq!(got.get_child("body", ns::COMPONENT).map(Element::text).as_deref(), Some("still the first"));

    // kick_old: node 2's newcomer replaces node 1's component.
    let mut old = RawComponent::connect(addr(ports[0].1), "two.localhost", SECRET).await;
    let mut new = RawComponent::connect(addr(ports[1].1), "two.localhost", SECRET).await;
    assert_eq!(old.expect_stream_error(WAIT).await, "conflict");
    alice.send_message("two.localhost", "to the new one").await.unwrap();
    let got = new.recv_timeout(WAIT).await.unwrap();
    assert_eq!(got.get_child("body", ns::COMPONENT).map(Element::text).as_deref(), Some("to the new one"));
    cluster.add_user("bob", PW);
    let mut bob = login(&cluster.nodes[1], "bob", PW, "desk").await;
    bob.send_message("two.localhost", "from node 2").await.unwrap();
    let got = new.recv_timeout(WAIT).await.unwrap();
    assert_eq!(got.get_child("body", ns::COMPONENT).map(Element::text).as_deref(), Some("from node 2"));
    // And back the other way: node 1's newcomer replaces node 2's.
    let mut newest = RawComponent::connect(addr(ports[0].1), "two.localhost", SECRET).await;
    assert_eq!(new.expect_stream_error(WAIT).await, "conflict");
    bob.send_message("two.localhost", "to the newest").await.unwrap();
    let got = newest.recv_timeout(WAIT).await.unwrap();
    assert_eq!(got.get_child("body", ns::COMPONENT).map(Element::text).as_deref(), Some("to the newest"));
}
