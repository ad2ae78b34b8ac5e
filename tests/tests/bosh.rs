//! XMPP over BOSH (XEP-0124, XEP-0206) against the real node, with a raw
//! HTTP client: session creation with stream features, SASL, restart, bind
//! and chat with a TCP user; `rid` ordering, repeated requests, the request
//! window, `wait`, `pause`, inactivity, `terminate`; bad requests. And
//! stanza (StanzaJS, `tests/js/bosh.mjs`), an independent client, over BOSH
//! only, chatting with itself and with a slixmpp user.

use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use meerkat_tests::client::{body, message};
use meerkat_tests::js::{js_dir, npm_ci, EchoPeer};
use meerkat_tests::{login, wait_until, TestNode, DOMAIN};
use meerkat_xmpp::element::Element;
use meerkat_xmpp::ns;
use meerkat_xmpp::parser::{Limits, StreamEvent, StreamParser};
use meerkat_xmpp::sasl::plain_initial_response;

const HTTPBIND: &str = "http://jabber.org/protocol/httpbind";
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
const TIMEOUT: Duration = Duration::from_secs(20);

use meerkat_tests::node::free_port;

/// A node with one BOSH endpoint (`handler_toml` adds to its table), and its URL.
fn bosh_node(handler_toml: &str, extra_toml: &str) -> (TestNode, String) {
    let port = free_port();
    let toml = format!(
        "[auth]\nallow_plain_without_tls = true\n{extra_toml}\n[[listen.http]]\nport = {port}\nip_address = \"127.0.0.1\"\n\
         [[listen.http.handlers.mod_bosh]]\npath = \"/http-bind\"\n{handler_toml}\n"
    );
    let node = TestNode::start(&toml);
    for user in ["alice", "bob"] {
        node.add_user(user, "secret");
    }
    (node, format!("http://127.0.0.1:{port}/http-bind"))
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(90)))
        .build()
        .into()
}

/// An HTTP answer: status, headers we look at, and the text.
struct Answer {
    status: u16,
    content_type: String,
    text: String,
}

impl Answer {
    fn body(&self) -> Element {
        parse(&self.text)
    }
}

fn parse(text: &str) -> Element {
    let mut p = StreamParser::new(Limits { max_stanza_size: 1 << 20, max_depth: 64 });
    p.feed(b"<w:stream xmlns:w='http://etherx.jabber.org/streams'>");
    assert!(matches!(p.next_event(), Ok(Some(StreamEvent::Header(_)))));
    p.feed(text.as_bytes());
    match p.next_event() {
        Ok(Some(StreamEvent::Stanza(el))) => el,
        other => panic!("not one element ({other:?}): {text}"),
    }
}

async fn post(url: &str, body: String) -> Answer {
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut resp = agent()
            .post(&url)
            .header("Content-Type", "text/xml; charset=utf-8")
            .send(body.as_bytes())
            .unwrap_or_else(|e| panic!("POST {url}: {e}"));
        let content_type =
            resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        Answer { status: resp.status().as_u16(), content_type, text }
    })
    .await
    .expect("join")
}

/// A raw BOSH client: the session id and the next `rid`.
struct Bosh {
    url: String,
    sid: String,
    rid: u64,
    /// Stanzas received so far and not yet taken.
    inbox: Vec<Element>,
}

impl Bosh {
    /// Creates a session; returns the client and the creation answer.
    async fn create(url: &str, attrs: &str) -> (Bosh, Element) {
        Bosh::create_at(url, 1_000_000 + rand_rid(), attrs).await
    }

    /// The session creation request with the given first `rid`.
    fn creation(rid: u64, attrs: &str) -> String {
        format!(
            "<body xmlns='{HTTPBIND}' xmlns:xmpp='urn:xmpp:xbosh' rid='{rid}' to='{DOMAIN}' xml:lang='en' \
             ver='1.11' xmpp:version='1.0' {attrs}/>"
        )
    }

    /// Creates a session whose first request has `rid`.
    async fn create_at(url: &str, rid: u64, attrs: &str) -> (Bosh, Element) {
        let a = post(url, Bosh::creation(rid, attrs)).await;
        assert_eq!(a.status, 200, "{}", a.text);
        assert!(a.content_type.starts_with("text/xml"), "{}", a.content_type);
        let b = a.body();
        let sid = b.attr("sid").unwrap_or_else(|| panic!("no sid: {}", a.text)).to_owned();
        (Bosh { url: url.to_owned(), sid, rid: rid + 1, inbox: Vec::new() }, b)
    }

    fn next_rid(&mut self) -> u64 {
        let r = self.rid;
        self.rid += 1;
        r
    }

    /// A request with the given `rid`, extra attributes and payload.
    fn request(&self, rid: u64, attrs: &str, payload: &str) -> String {
        let sid = &self.sid;
        if payload.is_empty() {
            format!("<body xmlns='{HTTPBIND}' rid='{rid}' sid='{sid}' {attrs}/>")
        } else {
            format!("<body xmlns='{HTTPBIND}' rid='{rid}' sid='{sid}' {attrs}>{payload}</body>")
        }
    }

    async fn send_rid(&self, rid: u64, attrs: &str, payload: &str) -> Answer {
        post(&self.url, self.request(rid, attrs, payload)).await
    }

    /// The next request; its answer's stanzas go to the inbox.
    async fn send(&mut self, payload: &str) -> Element {
        let rid = self.next_rid();
        let a = self.send_rid(rid, "", payload).await;
        assert_eq!(a.status, 200, "{}", a.text);
        let b = a.body();
        assert_ne!(b.attr("type"), Some("terminate"), "session ended: {}", a.text);
        self.inbox.extend(b.elements().cloned());
        b
    }

    /// Polls until a stanza matching `pred` arrived, and takes it.
    async fn recv_until(&mut self, mut pred: impl FnMut(&Element) -> bool) -> Element {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            if let Some(i) = self.inbox.iter().position(&mut pred) {
                return self.inbox.remove(i);
            }
            assert!(tokio::time::Instant::now() < deadline, "nothing matching arrived; inbox: {:?}", self.inbox);
            self.send("").await;
        }
    }

    /// Creation, SASL PLAIN, restart and bind.
    async fn login(url: &str, user: &str, resource: &str, attrs: &str) -> Bosh {
        let (mut c, created) = Bosh::create(url, attrs).await;
        let mechanisms = c.features_of(created).await;
        assert!(mechanisms.has_child("mechanisms", ns::SASL), "no SASL: {mechanisms:?}");
        let initial = B64.encode(plain_initial_response(None, user, "secret"));
        c.send(&format!("<auth xmlns='{}' mechanism='PLAIN'>{initial}</auth>", ns::SASL)).await;
        let success = c.recv_until(|e| e.ns == ns::SASL).await;
        assert!(success.is("success", ns::SASL), "PLAIN failed: {success:?}");
        let rid = c.next_rid();
        let a = c.send_rid(rid, "xmpp:restart='true' xmlns:xmpp='urn:xmpp:xbosh'", "").await;
        let features = c.features_of(a.body()).await;
        assert!(features.has_child("bind", ns::BIND), "no bind after restart: {features:?}");
        c.send(&format!(
            "<iq xmlns='jabber:client' type='set' id='b1'><bind xmlns='{}'><resource>{resource}</resource></bind></iq>",
            ns::BIND
        ))
        .await;
        let iq = c.recv_until(|e| e.name == "iq" && e.attr("id") == Some("b1")).await;
        assert_eq!(iq.attr("type"), Some("result"), "bind failed: {iq:?}");
        c
    }

    /// The stream features in an answer, or in the next ones.
    async fn features_of(&mut self, answer: Element) -> Element {
        self.inbox.extend(answer.elements().cloned());
        self.recv_until(|e| e.is("features", ns::STREAM)).await
    }
}

fn rand_rid() -> u64 {
    use rand::Rng as _;
    rand::rng().random_range(0..1_000_000_000)
}

#[tokio::test(flavor = "multi_thread")]
async fn bosh_session_logs_in_and_chats_with_a_tcp_user() {
    let (node, url) = bosh_node("", "");
    let (mut c, created) = Bosh::create(&url, "wait='30' hold='1' ack='1'").await;
    // XEP-0124 §7.1 and XEP-0206 §3: the session's attributes, with the features.
    assert_eq!(created.attr("wait"), Some("30"));
    assert_eq!(created.attr("hold"), Some("1"));
    assert_eq!(created.attr("requests"), Some("2"));
    assert_eq!(created.attr("ver"), Some("1.11"));
    assert_eq!(created.attr("from"), Some(DOMAIN));
    assert!(created.attr("inactivity").is_some() && created.attr("maxpause").is_some());
    assert!(created.attr("authid").is_some_and(|a| !a.is_empty()), "{created:?}");
    assert_eq!(created.attr("xmpp:version"), Some("1.0"));
    let features = c.features_of(created).await;
    let mechs: Vec<String> = features
        .get_child("mechanisms", ns::SASL)
        .map(|m| m.elements().map(Element::text).collect())
        .unwrap_or_default();
    assert!(mechs.contains(&"PLAIN".to_owned()) && mechs.contains(&"SCRAM-SHA-1".to_owned()), "{mechs:?}");
    drop(c);

    let mut alice = Bosh::login(&url, "alice", "bosh", "wait='5'").await;
    alice.send("<presence xmlns='jabber:client'/>").await;
    let mut bob = login(&node, "bob", "secret", "tcp").await;
    bob.go_online(None).await.expect("bob online");
    alice
        .send(&format!(
            "<message xmlns='jabber:client' to='bob@{DOMAIN}/tcp' type='chat'><body>from bosh</body></message>"
        ))
        .await;
    let m = bob.recv_until(|e| e.name == "message").await.expect("bob receives");
    assert_eq!(body(&m).as_deref(), Some("from bosh"));
    assert_eq!(m.attr("from"), Some(format!("alice@{DOMAIN}/bosh").as_str()));
    // A request held by the server (wait 30 s) is answered as soon as bob writes.
    let held = {
        let rid = alice.next_rid();
        let req = alice.request(rid, "", "");
        let url = url.clone();
        tokio::spawn(async move { post(&url, req).await })
    };
    bob.send(&message(&format!("alice@{DOMAIN}/bosh"), "from tcp")).await.expect("send");
    let a = held.await.expect("join");
    let got = a.body();
    let m = got.elements().find(|e| e.name == "message").unwrap_or_else(|| panic!("no message: {}", a.text));
    assert_eq!(m.ns, ns::CLIENT, "stanzas are in jabber:client: {}", a.text);
    assert_eq!(body(m).as_deref(), Some("from tcp"));

    // terminate: the stream closes, and the sid is gone afterwards.
    let rid = alice.next_rid();
    let a = alice.send_rid(rid, "type='terminate'", "<presence xmlns='jabber:client' type='unavailable'/>").await;
    assert_eq!(a.body().attr("type"), Some("terminate"), "{}", a.text);
    wait_until("alice's session ends", TIMEOUT, || !node.session_jids().iter().any(|j| j.ends_with("/bosh")));
    let a = alice.send_rid(alice.rid, "", "").await;
    assert_eq!(a.body().attr("condition"), Some("item-not-found"), "{}", a.text);
}

/// `xmpp_element_in` counts each element of a BOSH body once.
#[tokio::test(flavor = "multi_thread")]
async fn elements_over_bosh_are_counted() {
    const N: usize = 100;
    let (node, url) = bosh_node("", "");
    // A request with nothing to answer is held a second.
    let mut alice = Bosh::login(&url, "alice", "bosh", "wait='1'").await;
    let mut bob = login(&node, "bob", "secret", "tcp").await;
    let before = node.metrics();
    // Four bodies of 25 messages.
    for batch in 0..N / 25 {
        let payload: String = (0..25)
            .map(|i| {
                format!(
                    "<message xmlns='jabber:client' to='{}' type='chat' id='b{}'><body>over bosh</body></message>",
                    bob.jid(),
                    batch * 25 + i
                )
            })
            .collect();
        alice.send(&payload).await;
    }
    for i in 0..N {
        let m = bob.recv_message().await.expect("bob receives");
        assert_eq!(m.attr("id"), Some(format!("b{i}").as_str()));
    }
    meerkat_tests::assert_messages_counted(&before, &node.metrics(), N, None);
}

/// XEP-0124 §14: requests are handled in `rid` order, a repeated one gets
/// the same answer, and one outside the window ends the session.
#[tokio::test(flavor = "multi_thread")]
async fn requests_are_handled_in_rid_order() {
    let (node, url) = bosh_node("", "");
    let mut alice = Bosh::login(&url, "alice", "order", "hold='1' wait='2'").await;
    let mut bob = login(&node, "bob", "secret", "tcp").await;
    bob.go_online(None).await.expect("bob online");
    let to = format!("bob@{DOMAIN}/tcp");
    let msg = |n: u32| format!("<message xmlns='jabber:client' to='{to}' type='chat'><body>m{n}</body></message>");

    // rid+1 arrives before rid: its message must still come second.
    let (r1, r2) = (alice.next_rid(), alice.next_rid());
    let later = {
        let req = alice.request(r2, "", &msg(2));
        let url = url.clone();
        tokio::spawn(async move { post(&url, req).await })
    };
    // Give the early request a head start, so that it most likely arrives
    // first and the server has to restore the order. The server shows no sign
    // of holding it to wait for; if it lost the race, the test still holds,
    // it just checks the plain order, so the interval only needs to cover a
    // loopback HTTP request.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let first = alice.send_rid(r1, "", &msg(1)).await;
    assert_eq!(first.status, 200);
    let m1 = bob.recv_until(|e| e.name == "message").await.expect("m1");
    let m2 = bob.recv_until(|e| e.name == "message").await.expect("m2");
    assert_eq!((body(&m1).as_deref(), body(&m2).as_deref()), (Some("m1"), Some("m2")));
    let _ = later.await.expect("join");

    // The same rid again: the same answer, and the message is not sent twice.
    let again = alice.send_rid(r1, "", &msg(1)).await;
    assert_eq!(again.text, first.text);
    alice.send(&msg(3)).await;
    let m3 = bob.recv_until(|e| e.name == "message").await.expect("m3");
    assert_eq!(body(&m3).as_deref(), Some("m3"), "m1 was handled twice");

    // Far ahead of the window: item-not-found, and the session is over.
    let a = alice.send_rid(alice.rid + 10, "", "").await;
    assert_eq!((a.body().attr("type"), a.body().attr("condition")), (Some("terminate"), Some("item-not-found")));
    wait_until("alice's session ends", TIMEOUT, || !node.session_jids().iter().any(|j| j.ends_with("/order")));
}

/// A first `rid` near `u64::MAX` made the next request overflow the window
/// arithmetic (`next_rid + window`). XEP-0124 §14.1 has clients start below
/// 2^53: a first `rid` at or above it is refused with `bad-request`; one just
/// below it makes a session whose `rid`s go on past 2^53, and a `rid` far
/// ahead of the window, even `u64::MAX`, ends it with `item-not-found`.
#[tokio::test(flavor = "multi_thread")]
async fn absurd_first_rid_is_refused_and_rids_never_overflow() {
    let (_node, url) = bosh_node("", "");
    for rid in [u64::MAX, u64::MAX - 1, 1 << 53] {
        let a = post(&url, Bosh::creation(rid, "wait='2'")).await;
        assert_eq!(
            (a.status, a.body().attr("type"), a.body().attr("condition")),
            (400, Some("terminate"), Some("bad-request")),
            "first rid {rid}: {}",
            a.text
        );
    }

    let (mut alice, _) = Bosh::create_at(&url, (1 << 53) - 1, "hold='1' wait='2'").await;
    assert_eq!(alice.rid, 1 << 53);
    alice.send("").await;
    alice.send("").await;
    let a = alice.send_rid(u64::MAX, "", "").await;
    assert_eq!((a.body().attr("type"), a.body().attr("condition")), (Some("terminate"), Some("item-not-found")));
    // The node is fine: a client that logs in now chats.
    let mut bob = Bosh::login(&url, "bob", "after", "hold='1' wait='2'").await;
    bob.send(&format!("<message xmlns='jabber:client' to='bob@{DOMAIN}/after'><body>hi</body></message>")).await;
    let m = bob.recv_until(|e| e.name == "message").await;
    assert_eq!(body(&m).as_deref(), Some("hi"));
}

/// `wait`: a held request is answered empty when nothing came; `pause`
/// answers at once and keeps the session past `inactivity`.
#[tokio::test(flavor = "multi_thread")]
async fn wait_and_pause() {
    let (node, url) = bosh_node("inactivity = 2\nmax_pause = 30\n", "");
    let mut alice = Bosh::login(&url, "alice", "wait", "wait='1' hold='1'").await;
    let started = std::time::Instant::now();
    let b = alice.send("").await;
    assert!(b.elements().next().is_none(), "empty answer after wait");
    assert!(started.elapsed() >= Duration::from_millis(900), "answered before wait ran out");

    let rid = alice.next_rid();
    let a = alice.send_rid(rid, "pause='6'", "").await;
    assert_eq!(a.status, 200);
    assert_ne!(a.body().attr("type"), Some("terminate"), "{}", a.text);
    // A session opened after the pause began, with the same inactivity (2 s)
    // and no pause: once it has ended, alice's would have too without the pause.
    let _bob = Bosh::login(&url, "bob", "control", "wait='1' hold='1'").await;
    wait_until("bob's session to end from inactivity", TIMEOUT, || {
        !node.session_jids().iter().any(|j| j.ends_with("/control"))
    });
    assert!(node.session_jids().iter().any(|j| j.ends_with("/wait")), "the session ended during the pause");
    alice.send("").await;

    // A pause over maxpause is a policy violation.
    let rid = alice.next_rid();
    let a = alice.send_rid(rid, "pause='100'", "").await;
    assert_eq!(a.body().attr("condition"), Some("policy-violation"), "{}", a.text);
}

/// Inactivity ends the session; a message queued for the client that it
/// never fetched goes to offline storage and arrives at the next login.
#[tokio::test(flavor = "multi_thread")]
async fn inactivity_ends_the_session_and_returns_undelivered_messages() {
    let (node, url) = bosh_node("inactivity = 2\n", "");
    let mut alice = Bosh::login(&url, "alice", "idle", "wait='1'").await;
    alice.send("<presence xmlns='jabber:client'/>").await;
    let mut bob = login(&node, "bob", "secret", "tcp").await;
    bob.go_online(None).await.expect("bob online");
    bob.send(&message(&format!("alice@{DOMAIN}/idle"), "while you were away")).await.expect("send");
    // alice sends no more requests.
    wait_until("alice's session ends", TIMEOUT, || !node.session_jids().iter().any(|j| j.ends_with("/idle")));
    let mut alice = login(&node, "alice", "secret", "tcp").await;
    alice.go_online(None).await.expect("alice online");
    let m = alice.recv_until(|e| e.name == "message").await.expect("the message comes back");
    assert_eq!(body(&m).as_deref(), Some("while you were away"));
}

/// Bad requests get clear answers, never a hang.
#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_clear_errors() {
    let (_node, url) = bosh_node("max_stanza_size = 2048\n", "");
    let a = post(&url, "not xml".into()).await;
    assert_eq!((a.status, a.body().attr("condition")), (400, Some("bad-request")), "{}", a.text);
    let a = post(&url, "<body xmlns='jabber:client' rid='1'/>".into()).await;
    assert_eq!(a.status, 400);
    let a = post(&url, format!("<body xmlns='{HTTPBIND}' to='{DOMAIN}'/>")).await;
    assert_eq!(a.status, 400, "no rid: {}", a.text);
    let a = post(&url, format!("<body xmlns='{HTTPBIND}' rid='5' sid='nosuchsession'/>")).await;
    assert_eq!((a.status, a.body().attr("condition")), (200, Some("item-not-found")), "{}", a.text);
    let dtd = format!("<!DOCTYPE b [<!ENTITY x 'y'>]><body xmlns='{HTTPBIND}' rid='1' to='{DOMAIN}'/>");
    assert_eq!(post(&url, dtd).await.status, 400);
    let big = format!("<body xmlns='{HTTPBIND}' rid='1' to='{DOMAIN}'>{}</body>", "<presence/>".repeat(1000));
    assert_eq!(post(&url, big).await.status, 413);
    // An unknown host ends the session with host-unknown.
    let a = post(&url, format!("<body xmlns='{HTTPBIND}' rid='1' to='nowhere.example' wait='5'/>")).await;
    assert_eq!(
        (a.body().attr("type"), a.body().attr("condition")),
        (Some("terminate"), Some("host-unknown")),
        "{}",
        a.text
    );

    let url2 = url.clone();
    let (get, options) = tokio::task::spawn_blocking(move || {
        let get = agent().get(&url2).call().expect("GET");
        let options = agent().run(ureq::http::Request::options(&url2).body(()).expect("request")).expect("OPTIONS");
        let allow = |r: &ureq::http::Response<ureq::Body>, h: &str| {
            r.headers().get(h).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
        };
        (
            (get.status().as_u16(), allow(&get, "allow")),
            (options.status().as_u16(), allow(&options, "access-control-allow-origin")),
        )
    })
    .await
    .expect("join");
    assert_eq!(get, (405, "POST, OPTIONS".to_owned()));
    assert_eq!(options, (200, "*".to_owned()));
}

/// stanza over BOSH: alice and bob (both stanza, BOSH only) log in with
/// SCRAM, exchange messages with each other and with carol, a slixmpp user
/// on TCP who echoes.
#[test]
fn stanza_over_bosh_exchanges_messages_with_stanza_and_slixmpp() {
    npm_ci();
    let (node, url) = bosh_node("", "");
    node.add_user("carol", "secret");
    let carol = EchoPeer::start(&node, "carol@localhost/slixmpp", "secret", 1, false, Duration::from_secs(120));
    let out = Command::new("node")
        .arg("bosh.mjs")
        .args(["--url", &url, "--domain", DOMAIN, "--alice", "alice", "--bob", "bob", "--password", "secret"])
        .args(["--peer", &carol.jid, "--timeout", "60000"])
        .current_dir(js_dir())
        .output()
        .expect("running node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stanza scenario failed ({}):\n{stdout}\n{stderr}", out.status);
    let summary: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("JSON summary");
    assert_eq!(summary["ok"], true, "{summary}");
    assert_eq!(summary["alice"]["jid"], "alice@localhost/stanza", "{summary}");
    assert_eq!(summary["bob"]["jid"], "bob@localhost/stanza", "{summary}");
    assert_eq!(summary["alice"]["transport"], "BOSH", "{summary}");
    assert!(summary["alice"]["mechanism"].as_str().is_some_and(|m| m.starts_with("SCRAM-")), "{summary}");
    let received = |who: &str| -> Vec<(String, String)> {
        summary[who]["received"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| {
                (m["from"].as_str().unwrap_or_default().to_owned(), m["body"].as_str().unwrap_or_default().to_owned())
            })
            .collect()
    };
    assert!(received("bob").contains(&("alice@localhost/stanza".into(), "alice to bob over bosh".into())), "{summary}");
    assert!(received("alice").contains(&("bob@localhost/stanza".into(), "bob to alice over bosh".into())), "{summary}");
    assert!(received("alice").contains(&(carol.jid.clone(), "echo: hello from bosh".into())), "{summary}");
    let carol = carol.finish(Duration::from_secs(60));
    let got: Vec<&str> =
        carol["received"].as_array().into_iter().flatten().filter_map(|m| m["body"].as_str()).collect();
    assert_eq!(got, ["hello from bosh"], "{carol}");
}
