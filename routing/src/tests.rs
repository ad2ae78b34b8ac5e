//! Unit tests of the router chain with fake sessions, a fake server and a
//! recording link: RFC 6121 §8.5 delivery rules, back-pressure, and the
//! guarantee that errors never cause errors.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use meerkat_cluster::{NodeId, SessionId, SessionInfo, SessionTable};
use meerkat_xmpp::element::Element;
use meerkat_xmpp::error::{StanzaError, StanzaErrorCondition as C};
use meerkat_xmpp::jid::{parse_full, parse_jid};
use meerkat_xmpp::parser::{Limits, StreamEvent, StreamParser};

use super::*;

const HOST: &str = "example.com";
const NODE: NodeId = NodeId(1);
const OTHER_NODE: NodeId = NodeId(2);
/// The sender of every test stanza unless a case says otherwise.
const ROMEO: &str = "romeo@example.com/orchard";

// ------------------------------------------------------------------ fakes

/// A session mailbox that records what it gets, or one that is always full.
#[derive(Default)]
struct Sink {
    full: bool,
    got: Mutex<Vec<Element>>,
    kicks: Mutex<Vec<KickReason>>,
}

impl SessionSink for Sink {
    fn deliver(&self, stanza: Element) -> Result<(), Element> {
        if self.full {
            return Err(stanza);
        }
        self.got.lock().unwrap().push(stanza);
        Ok(())
    }
    fn kick(&self, reason: KickReason) {
        self.kicks.lock().unwrap().push(reason);
    }
}

impl Sink {
    fn take(&self) -> Vec<Element> {
        std::mem::take(&mut *self.got.lock().unwrap())
    }
}

/// The server's queue: records jobs, or is always full.
#[derive(Default)]
struct Server {
    full: bool,
    jobs: Mutex<Vec<ServerJob>>,
}

impl ServerHandler for Server {
    fn submit(&self, job: ServerJob) -> Result<(), ServerJob> {
        if self.full {
            return Err(job);
        }
        self.jobs.lock().unwrap().push(job);
        Ok(())
    }
}

/// A later link (cluster, s2s) that takes everything it is offered.
#[derive(Default)]
struct Recorder {
    got: Mutex<Vec<Routed>>,
}

impl Link for Recorder {
    fn name(&self) -> &'static str {
        "recorder"
    }
    fn route(&self, _router: &Router, routed: Routed) -> Step {
        self.got.lock().unwrap().push(routed);
        Step::Done
    }
}

// ------------------------------------------------------------------ harness

/// A router on `NODE` serving `HOST`, with sessions keyed by full JID.
struct World {
    router: Arc<Router>,
    server: Arc<Server>,
    sinks: BTreeMap<String, Arc<Sink>>,
    next_sid: u64,
}

impl World {
    fn new() -> World {
        World::with_server(Server::default())
    }

    fn with_server(server: Server) -> World {
        let router =
            Router::new(NODE, vec![HOST.into(), "conference.example.com".into()], Arc::new(SessionTable::new()));
        let server = Arc::new(server);
        router.set_server_handler(server.clone());
        World { router, server, sinks: BTreeMap::new(), next_sid: 1 }
    }

    /// Binds `jid` on `node` with this presence priority (`None`: no available presence yet).
    fn bind(&mut self, jid: &str, priority: Option<i8>, node: NodeId, full: bool) -> Arc<Sink> {
        let sid = SessionId(self.next_sid);
        self.next_sid += 1;
        let info = SessionInfo { jid: parse_full(jid).unwrap(), node, sid, priority, created_micros: sid.0 as i64 };
        assert_eq!(self.router.sessions().open(info).loser, None);
        let sink = Arc::new(Sink { full, ..Sink::default() });
        if node == self.router.node() {
            self.router.register_sink(sid, sink.clone());
        }
        self.sinks.insert(jid.to_owned(), sink.clone());
        sink
    }

    fn session(&mut self, jid: &str, priority: Option<i8>) -> Arc<Sink> {
        self.bind(jid, priority, NODE, false)
    }

    /// The household used by the table tests.
    fn verona() -> World {
        let mut w = World::new();
        w.session(ROMEO, Some(0));
        w.session("juliet@example.com/balcony", Some(5));
        w.session("juliet@example.com/chamber", Some(5));
        w.session("juliet@example.com/garden", Some(1));
        w.session("juliet@example.com/hidden", None);
        w.session("juliet@example.com/sulking", Some(-1));
        // Bound but never available, or only negative: no bare-JID messages.
        w.session("tybalt@example.com/crypt", Some(-5));
        w.session("tybalt@example.com/tomb", None);
        w
    }

    fn route(&self, xml: &str) {
        self.router.route(routed(xml));
    }

    /// Everything observable, drained: what each session got, the server's
    /// jobs and the router's counters.
    fn outcome(&self) -> Outcome {
        let mut delivered = Vec::new();
        let mut errors = Vec::new();
        for (jid, sink) in &self.sinks {
            for stanza in sink.take() {
                match (stanza.attr("type"), StanzaError::from_stanza(&stanza)) {
                    (Some("error"), Some(e)) => errors.push((jid.clone(), e.condition)),
                    _ => delivered.push(jid.clone()),
                }
            }
        }
        let jobs = std::mem::take(&mut *self.server.jobs.lock().unwrap())
            .into_iter()
            .map(|j| {
                let kind = match j {
                    ServerJob::ToServer(_) => "to-server",
                    ServerJob::ToAccount(_) => "to-account",
                    ServerJob::InboundPresence(_) => "inbound-presence",
                    ServerJob::Undelivered(_) => "undelivered",
                };
                (kind, j.routed().to.to_string())
            })
            .collect();
        Outcome {
            delivered,
            errors,
            jobs,
            bounced: self.router.stats.bounced.swap(0, Ordering::Relaxed),
            dropped: self.router.stats.dropped.swap(0, Ordering::Relaxed),
        }
    }
}

/// What routing one stanza did.
#[derive(Debug, Default, PartialEq)]
struct Outcome {
    /// Full JIDs whose session received a (non-error) stanza, sorted.
    delivered: Vec<String>,
    /// Error stanzas received: (session, condition).
    errors: Vec<(String, C)>,
    /// Server jobs: (kind, addressee).
    jobs: Vec<(&'static str, String)>,
    bounced: u64,
    dropped: u64,
}

fn delivered(jids: &[&str]) -> Outcome {
    Outcome { delivered: jids.iter().map(|s| (*s).to_owned()).collect(), ..Outcome::default() }
}

fn job(kind: &'static str, to: &str) -> Outcome {
    Outcome { jobs: vec![(kind, to.to_owned())], ..Outcome::default() }
}

/// An error with `cond` back to the sender (`ROMEO`).
fn bounced(cond: C) -> Outcome {
    Outcome { errors: vec![(ROMEO.to_owned(), cond)], bounced: 1, ..Outcome::default() }
}

fn dropped() -> Outcome {
    Outcome { dropped: 1, ..Outcome::default() }
}

/// Parses a stanza (in `jabber:client`) and addresses it by its `from` and
/// `to`; `from` defaults to `ROMEO`.
fn routed(xml: &str) -> Routed {
    let mut p = StreamParser::new(Limits::default());
    p.feed(b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>");
    p.feed(xml.as_bytes());
    assert!(matches!(p.next_event().unwrap(), Some(StreamEvent::Header(_))));
    let Some(StreamEvent::Stanza(mut stanza)) = p.next_event().unwrap() else { panic!("incomplete: {xml}") };
    if stanza.attr("from").is_none() {
        stanza.set_attr("from", ROMEO);
    }
    Routed {
        from: parse_jid(stanza.attr("from").unwrap()).unwrap(),
        to: parse_jid(stanza.attr("to").unwrap()).unwrap(),
        stanza,
    }
}

/// Routes each case's stanza in a fresh world and compares the outcome.
fn run_cases<S: AsRef<str>>(mut world: impl FnMut() -> World, cases: &[(&str, S, Outcome)]) {
    for (case, xml, want) in cases {
        let (w, xml) = (world(), xml.as_ref());
        w.route(xml);
        assert_eq!(w.outcome(), *want, "{case}: {xml}");
        assert_eq!(w.router.stats.routed.load(Ordering::Relaxed), 1 + want.bounced, "{case}: routed count");
    }
}

// ------------------------------------------------------------------ RFC 6121 §8.5

#[test]
fn messages_to_a_bare_jid() {
    let best = delivered(&["juliet@example.com/balcony", "juliet@example.com/chamber"]);
    let cases = [
        // §8.5.2.1.1: the highest non-negative priority only; ties all get it.
        ("chat", "<message to='juliet@example.com' type='chat'><body>hi</body></message>", best),
        (
            "normal",
            "<message to='juliet@example.com'><body>hi</body></message>",
            delivered(&["juliet@example.com/balcony", "juliet@example.com/chamber"]),
        ),
        (
            "headline",
            "<message to='juliet@example.com' type='headline'><body>news</body></message>",
            delivered(&["juliet@example.com/balcony", "juliet@example.com/chamber"]),
        ),
        // §8.5.2.1.1: groupchat to a bare JID is an error.
        (
            "groupchat",
            "<message to='juliet@example.com' type='groupchat'><body>hi</body></message>",
            bounced(C::ServiceUnavailable),
        ),
        // §8.5.2.2: no available resource.
        (
            "chat, nobody online",
            "<message to='nurse@example.com' type='chat'><body>hi</body></message>",
            job("undelivered", "nurse@example.com"),
        ),
        (
            "normal, only negative or unavailable resources",
            "<message to='tybalt@example.com'><body>hi</body></message>",
            job("undelivered", "tybalt@example.com"),
        ),
        (
            "headline, nobody online",
            "<message to='nurse@example.com' type='headline'><body>news</body></message>",
            Outcome::default(),
        ),
        ("error, nobody online", "<message to='nurse@example.com' type='error'/>", Outcome::default()),
        (
            "groupchat, nobody online",
            "<message to='nurse@example.com' type='groupchat'/>",
            bounced(C::ServiceUnavailable),
        ),
    ];
    run_cases(World::verona, &cases);
}

#[test]
fn stanzas_to_a_full_jid() {
    let cases = [
        (
            "message to a bound resource",
            "<message to='juliet@example.com/garden' type='chat'/>",
            delivered(&["juliet@example.com/garden"]),
        ),
        // A bound resource gets stanzas addressed to it, available or not.
        (
            "message to an unavailable bound resource",
            "<message to='juliet@example.com/hidden'/>",
            delivered(&["juliet@example.com/hidden"]),
        ),
        (
            "iq to a bound resource",
            "<iq to='juliet@example.com/sulking' type='get' id='1'><ping xmlns='urn:xmpp:ping'/></iq>",
            delivered(&["juliet@example.com/sulking"]),
        ),
        (
            "presence to a bound resource",
            "<presence to='juliet@example.com/garden'/>",
            delivered(&["juliet@example.com/garden"]),
        ),
        (
            "probe to a bound resource",
            "<presence to='juliet@example.com/garden' type='probe'/>",
            job("inbound-presence", "juliet@example.com/garden"),
        ),
        (
            "subscribe to a bound resource",
            "<presence to='juliet@example.com/garden' type='subscribe'/>",
            job("inbound-presence", "juliet@example.com/garden"),
        ),
        // §8.5.3.2.1: no such resource.
        (
            "chat to an unbound resource is as to the bare JID",
            "<message to='juliet@example.com/gone' type='chat'/>",
            delivered(&["juliet@example.com/balcony", "juliet@example.com/chamber"]),
        ),
        (
            "normal to an unbound resource is as to the bare JID",
            "<message to='juliet@example.com/gone'/>",
            delivered(&["juliet@example.com/balcony", "juliet@example.com/chamber"]),
        ),
        (
            "chat to an unbound resource, nobody online",
            "<message to='nurse@example.com/gone' type='chat'/>",
            job("undelivered", "nurse@example.com/gone"),
        ),
        (
            "groupchat to an unbound resource",
            "<message to='juliet@example.com/gone' type='groupchat'/>",
            bounced(C::ServiceUnavailable),
        ),
        (
            "headline to an unbound resource",
            "<message to='juliet@example.com/gone' type='headline'/>",
            Outcome::default(),
        ),
        (
            "iq get to an unbound resource",
            "<iq to='juliet@example.com/gone' type='get' id='1'><ping xmlns='urn:xmpp:ping'/></iq>",
            bounced(C::ServiceUnavailable),
        ),
        (
            "iq set to an unbound resource",
            "<iq to='nurse@example.com/gone' type='set' id='1'><query xmlns='jabber:iq:roster'/></iq>",
            bounced(C::ServiceUnavailable),
        ),
        // RFC 6120 §8.2.3: a result is never answered, not even with an error.
        ("iq result to an unbound resource", "<iq to='juliet@example.com/gone' type='result' id='1'/>", dropped()),
        ("available presence to an unbound resource", "<presence to='juliet@example.com/gone'/>", Outcome::default()),
        (
            "subscription to an unbound resource",
            "<presence to='juliet@example.com/gone' type='subscribed'/>",
            job("inbound-presence", "juliet@example.com/gone"),
        ),
        (
            "probe to an unbound resource",
            "<presence to='juliet@example.com/gone' type='probe'/>",
            job("inbound-presence", "juliet@example.com/gone"),
        ),
    ];
    run_cases(World::verona, &cases);
}

#[test]
fn iq_and_presence_to_a_bare_jid_and_to_the_host() {
    let every_available = delivered(&[
        "juliet@example.com/balcony",
        "juliet@example.com/chamber",
        "juliet@example.com/garden",
        "juliet@example.com/sulking",
    ]);
    let mut cases = vec![
        (
            "iq to a bare JID: the server answers for the account",
            "<iq to='juliet@example.com' type='get' id='v'><vCard xmlns='vcard-temp'/></iq>".to_owned(),
            job("to-account", "juliet@example.com"),
        ),
        (
            "iq to an account without sessions",
            "<iq to='nurse@example.com' type='get' id='v'><vCard xmlns='vcard-temp'/></iq>".into(),
            job("to-account", "nurse@example.com"),
        ),
        (
            "iq to the host",
            "<iq to='example.com' type='get' id='d'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>".into(),
            job("to-server", "example.com"),
        ),
        (
            "iq to the second host",
            "<iq to='conference.example.com' type='get' id='d'/>".into(),
            job("to-server", "conference.example.com"),
        ),
        (
            "message to the host",
            "<message to='example.com'><body>hello server</body></message>".into(),
            job("to-server", "example.com"),
        ),
        ("presence to the host", "<presence to='example.com'/>".into(), job("to-server", "example.com")),
        (
            "iq to a host resource",
            "<iq to='example.com/admin' type='get' id='d'/>".into(),
            job("to-server", "example.com/admin"),
        ),
        // §8.5.2.1.2: broadcast presence reaches every available resource, negative priority included.
        ("available presence to a bare JID", "<presence to='juliet@example.com'/>".into(), every_available),
        (
            "unavailable presence to a bare JID",
            "<presence to='juliet@example.com' type='unavailable'/>".into(),
            delivered(&[
                "juliet@example.com/balcony",
                "juliet@example.com/chamber",
                "juliet@example.com/garden",
                "juliet@example.com/sulking",
            ]),
        ),
        ("presence to an account without sessions", "<presence to='nurse@example.com'/>".into(), Outcome::default()),
        ("unknown presence type", "<presence to='juliet@example.com' type='bogus'/>".into(), bounced(C::BadRequest)),
        // Answered with bad-request, but a `<foo type='error'/>` cannot reach the sender either:
        // it is dropped on the way back rather than bounced again.
        (
            "not a stanza",
            "<foo to='juliet@example.com'/>".into(),
            Outcome { bounced: 1, dropped: 1, ..Outcome::default() },
        ),
    ];
    // §3, §4.3: subscription management and probes go to the server.
    for t in ["subscribe", "subscribed", "unsubscribe", "unsubscribed", "probe"] {
        cases.push((
            "subscription presence or probe",
            format!("<presence to='juliet@example.com' type='{t}'/>"),
            job("inbound-presence", "juliet@example.com"),
        ));
        cases.push((
            "... also without sessions",
            format!("<presence to='nurse@example.com' type='{t}'/>"),
            job("inbound-presence", "nurse@example.com"),
        ));
    }
    run_cases(World::verona, &cases);
}

#[test]
fn unknown_domain_is_remote_server_not_found() {
    let cases = [
        (
            "message",
            "<message to='juliet@capulet.example' type='chat'><body>hi</body></message>",
            bounced(C::RemoteServerNotFound),
        ),
        ("iq", "<iq to='capulet.example' type='get' id='1'/>", bounced(C::RemoteServerNotFound)),
        ("presence", "<presence to='juliet@capulet.example/r' type='subscribe'/>", bounced(C::RemoteServerNotFound)),
        ("iq result", "<iq to='capulet.example' type='result' id='1'/>", dropped()),
    ];
    run_cases(World::verona, &cases);
}

#[test]
fn error_reply_is_addressed_back_with_the_original_id() {
    let w = World::verona();
    w.route("<iq to='juliet@example.com/gone' type='get' id='ping-7'><ping xmlns='urn:xmpp:ping'/></iq>");
    let got = w.sinks[ROMEO].take();
    assert_eq!(got.len(), 1);
    let reply = &got[0];
    assert_eq!(
        (reply.attr("type"), reply.attr("id"), reply.attr("from"), reply.attr("to")),
        (Some("error"), Some("ping-7"), Some("juliet@example.com/gone"), Some(ROMEO))
    );
    assert_eq!(StanzaError::from_stanza(reply).map(|e| e.condition), Some(C::ServiceUnavailable));
}

// ------------------------------------------------------------------ errors never bounce

/// An error stanza that cannot be delivered is dropped, never answered: two
/// parties that cannot reach each other would otherwise bounce errors back
/// and forth forever (a routing loop; RFC 6120 §8.3.1).
#[test]
fn error_stanza_never_bounces_routing_loop() {
    let cases = [
        ("iq error to an unknown domain", "<iq to='juliet@capulet.example/r' type='error' id='1'><error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>", dropped()),
        ("message error to an unknown domain", "<message to='capulet.example' type='error'/>", dropped()),
        ("presence error to an unknown domain", "<presence to='juliet@capulet.example' type='error'/>", dropped()),
        ("iq error to an unbound full JID", "<iq to='juliet@example.com/gone' type='error' id='1'/>", dropped()),
        ("iq error to an unbound resource of an account without sessions", "<iq to='nurse@example.com/gone' type='error' id='1'/>", dropped()),
        // Sender and recipient both unreachable: one error, and that error is dropped.
        ("unreachable sender at an unknown domain", "<message from='romeo@montague.example/r' to='juliet@capulet.example' type='chat'/>", Outcome { bounced: 1, dropped: 1, ..Outcome::default() }),
        ("unreachable sender at an unbound resource", "<iq from='romeo@example.com/gone' to='juliet@example.com/gone' type='get' id='1'/>", Outcome { bounced: 1, dropped: 1, ..Outcome::default() }),
    ];
    run_cases(World::verona, &cases);

    // With the server queue full too, an error IQ to an account is still only dropped.
    let w = World::with_server(Server { full: true, ..Server::default() });
    w.route("<iq to='juliet@example.com' type='error' id='1'/>");
    assert_eq!(w.outcome(), dropped());
}

// ------------------------------------------------------------------ back-pressure

#[test]
fn full_session_mailboxes() {
    let world = || {
        let mut w = World::new();
        w.session(ROMEO, Some(0));
        w.bind("juliet@example.com/balcony", Some(5), NODE, true);
        w.session("juliet@example.com/chamber", Some(5));
        w.session("juliet@example.com/garden", Some(1));
        w.bind("nurse@example.com/kitchen", Some(5), NODE, true);
        w
    };
    let cases = [
        // A message falls back to the account: the other top resource takes it ...
        (
            "message to a full resource",
            "<message to='juliet@example.com/balcony' type='chat'/>",
            delivered(&["juliet@example.com/chamber"]),
        ),
        (
            "message to the bare JID",
            "<message to='juliet@example.com' type='chat'/>",
            delivered(&["juliet@example.com/chamber"]),
        ),
        // ... or offline storage when no one can.
        (
            "message to the only, full, resource",
            "<message to='nurse@example.com/kitchen' type='chat'/>",
            job("undelivered", "nurse@example.com/kitchen"),
        ),
        (
            "message to a bare JID whose resource is full",
            "<message to='nurse@example.com'/>",
            job("undelivered", "nurse@example.com"),
        ),
        (
            "iq get to a full resource",
            "<iq to='juliet@example.com/balcony' type='get' id='1'/>",
            bounced(C::ResourceConstraint),
        ),
        ("iq result to a full resource", "<iq to='juliet@example.com/balcony' type='result' id='1'/>", dropped()),
        ("presence to a full resource", "<presence to='juliet@example.com/balcony'/>", dropped()),
        (
            "broadcast presence skips the full resource",
            "<presence to='juliet@example.com'/>",
            delivered(&["juliet@example.com/chamber", "juliet@example.com/garden"]),
        ),
    ];
    run_cases(world, &cases);
}

#[test]
fn server_queue_full_is_resource_constraint() {
    let world = || {
        let mut w = World::with_server(Server { full: true, ..Server::default() });
        w.session(ROMEO, Some(0));
        w
    };
    let cases = [
        ("iq to an account", "<iq to='juliet@example.com' type='get' id='1'/>", bounced(C::ResourceConstraint)),
        ("iq to the host", "<iq to='example.com' type='get' id='1'/>", bounced(C::ResourceConstraint)),
        ("undeliverable message", "<message to='juliet@example.com' type='chat'/>", bounced(C::ResourceConstraint)),
        ("subscription", "<presence to='juliet@example.com' type='subscribe'/>", bounced(C::ResourceConstraint)),
        ("iq result to the host", "<iq to='example.com' type='result' id='1'/>", dropped()),
    ];
    run_cases(world, &cases);
}

#[test]
fn no_server_handler_is_service_unavailable() {
    let router = Router::new(NODE, vec![HOST.into()], Arc::new(SessionTable::new()));
    let sink = Arc::new(Sink::default());
    router.sessions().open(SessionInfo {
        jid: parse_full(ROMEO).unwrap(),
        node: NODE,
        sid: SessionId(1),
        priority: Some(0),
        created_micros: 0,
    });
    router.register_sink(SessionId(1), sink.clone());
    router.route(routed("<iq to='example.com' type='get' id='1'/>"));
    let got = sink.take();
    assert_eq!(got.len(), 1);
    assert_eq!(StanzaError::from_stanza(&got[0]).map(|e| e.condition), Some(C::ServiceUnavailable));

    // A session in the table without a registered sink cannot take anything either.
    router.unregister_sink(SessionId(1));
    router.route(routed("<message to='romeo@example.com/orchard' type='chat'/>"));
    assert!(sink.take().is_empty());
}

// ------------------------------------------------------------------ the chain

#[test]
fn later_links_get_what_the_local_link_passes_on() {
    let world = || {
        let mut w = World::verona();
        w.bind("paris@example.com/church", Some(0), OTHER_NODE, false);
        w
    };
    // (case, stanza, passed on to the next link, what stays local)
    let cases: [(&str, &str, bool, Outcome); 4] = [
        ("remote domain", "<message to='juliet@capulet.example' type='chat'/>", true, Outcome::default()),
        ("remote domain error", "<iq to='capulet.example' type='error' id='1'/>", true, Outcome::default()),
        (
            "local resource",
            "<message to='juliet@example.com/garden' type='chat'/>",
            false,
            delivered(&["juliet@example.com/garden"]),
        ),
        ("server", "<iq to='example.com' type='get' id='1'/>", false, job("to-server", "example.com")),
    ];
    for (case, xml, passed, want) in cases {
        let w = world();
        let recorder = Arc::new(Recorder::default());
        w.router.push_link(recorder.clone());
        w.route(xml);
        let got = std::mem::take(&mut *recorder.got.lock().unwrap());
        if passed {
            assert_eq!(got.len(), 1, "{case}");
            let expected = routed(xml);
            assert_eq!(
                (&got[0].to, &got[0].from, &got[0].stanza),
                (&expected.to, &expected.from, &expected.stanza),
                "{case}"
            );
        } else {
            assert!(got.is_empty(), "{case}: {got:?}");
        }
        assert_eq!(w.outcome(), want, "{case}");
    }

    // A session on another node that cannot be reached (no transport here):
    // the message is not lost, it goes to offline storage.
    let w = world();
    w.route("<message to='paris@example.com/church' type='chat'/>");
    assert_eq!(w.outcome(), job("undelivered", "paris@example.com/church"));
}

#[test]
fn links_run_in_order_and_the_first_taker_wins() {
    /// Takes stanzas to one domain, passes the rest on.
    struct DomainLink(&'static str, Mutex<u32>);
    impl Link for DomainLink {
        fn name(&self) -> &'static str {
            self.0
        }
        fn route(&self, _router: &Router, routed: Routed) -> Step {
            if routed.to.domain().as_str() != self.0 {
                return Step::Next(routed);
            }
            *self.1.lock().unwrap() += 1;
            Step::Done
        }
    }
    let w = World::verona();
    let first = Arc::new(DomainLink("capulet.example", Mutex::new(0)));
    let second = Arc::new(Recorder::default());
    w.router.push_link(first.clone());
    w.router.push_link(second.clone());
    w.route("<message to='juliet@capulet.example'/>");
    w.route("<message to='mercutio@verona.example'/>");
    assert_eq!(*first.1.lock().unwrap(), 1);
    let got = second.got.lock().unwrap();
    assert_eq!(got.iter().map(|r| r.to.to_string()).collect::<Vec<_>>(), vec!["mercutio@verona.example"]);
    assert_eq!(w.outcome(), Outcome::default());
}

#[test]
fn sessions_are_not_kicked_by_routing() {
    let w = World::verona();
    w.route("<message to='juliet@example.com' type='chat'/>");
    assert!(w.sinks.values().all(|s| s.kicks.lock().unwrap().is_empty()));
}

// ------------------------------------------------------------------ the table of routes

/// A service's or component's bounded queue: takes `cap` stanzas, then is full.
struct Queue {
    cap: usize,
    got: Mutex<Vec<Routed>>,
}

impl Queue {
    fn new(cap: usize) -> Arc<Queue> {
        Arc::new(Queue { cap, got: Mutex::new(Vec::new()) })
    }
    fn ids(&self) -> Vec<String> {
        self.got.lock().unwrap().iter().map(|r| r.stanza.attr("id").unwrap_or_default().to_owned()).collect()
    }
}

impl DomainHandler for Queue {
    fn deliver(&self, routed: Routed) -> Result<(), Routed> {
        let mut got = self.got.lock().unwrap();
        if got.len() >= self.cap {
            return Err(routed);
        }
        got.push(routed);
        Ok(())
    }
}

/// Registers on a standalone router, which never waits.
fn register(
    router: &Arc<Router>,
    domain: &str,
    kind: meerkat_cluster::DomainKind,
    handler: Arc<dyn DomainHandler>,
) -> Result<DomainGuard, RouteError> {
    use futures_util::FutureExt as _;
    router.register_domain(domain, kind, handler).now_or_never().expect("a standalone registration does not wait")
}

mod table_of_routes {
    use super::*;
    use meerkat_cluster::{DomainKind, DomainRecord};

    const SERVICE: DomainKind = DomainKind::Service;
    const COMPONENT: DomainKind = DomainKind::Component;

    #[test]
    fn register_unregister_and_conflicts() {
        let w = World::verona();
        let r = &w.router;
        assert_eq!(r.route_of("pubsub.example.com"), Route::Remote);
        let pubsub = register(r, "PubSub.Example.com", SERVICE, Queue::new(8)).unwrap();
        assert_eq!(pubsub.domain(), "pubsub.example.com", "registered under the canonical domain");
        assert_eq!(r.route_of("pubsub.example.com"), Route::Here(SERVICE));
        assert_eq!(r.domains().get("pubsub.example.com").map(|d| (d.node, d.kind)), Some((NODE.0, SERVICE)));

        let conflict = |domain: &str, kind| match register(r, domain, kind, Queue::new(1)) {
            Err(RouteError::Conflict { holder, .. }) => holder,
            other => panic!("{domain}: expected a conflict, got {other:?}"),
        };
        // A domain has one route: a host, a service or a component.
        assert_eq!(conflict("example.com", COMPONENT), Holder::Host);
        assert_eq!(conflict("conference.example.com", SERVICE), Holder::Host);
        assert_eq!(conflict("pubsub.example.com", COMPONENT), Holder::Local(SERVICE));
        assert_eq!(conflict("pubsub.example.com", SERVICE), Holder::Local(SERVICE));
        let irc = register(r, "irc.example.com", COMPONENT, Queue::new(8)).unwrap();
        assert_eq!(conflict("irc.example.com", COMPONENT), Holder::Local(COMPONENT));
        // Held by another node of the cluster, as the replicated table says.
        r.domains()
            .claim(DomainRecord { domain: "muclight.example.com".into(), node: OTHER_NODE.0, kind: SERVICE, id: 1 })
            .unwrap();
        assert_eq!(conflict("muclight.example.com", SERVICE), Holder::Node(OTHER_NODE, SERVICE));
        assert!(matches!(register(r, "not a domain", SERVICE, Queue::new(1)), Err(RouteError::InvalidDomain(_))));

        // Hosts keep being hosts, and the table's fixed routes.
        assert_eq!(r.hosts(), [HOST.to_owned(), "conference.example.com".to_owned()]);
        assert!(r.is_local_host(HOST));
        assert!(!r.is_local_host("pubsub.example.com"));
        assert_eq!(r.route_of(HOST), Route::Host);

        // Dropping the guard unregisters the domain; it can then be taken again.
        drop(pubsub);
        assert_eq!(r.route_of("pubsub.example.com"), Route::Remote);
        assert!(r.domain_handler("pubsub.example.com").is_none());
        let again = register(r, "pubsub.example.com", COMPONENT, Queue::new(1)).unwrap();
        assert_eq!(r.route_of("pubsub.example.com"), Route::Here(COMPONENT));
        drop(irc);
        assert_eq!(r.route_of("irc.example.com"), Route::Remote);
        assert_eq!(r.route_of("pubsub.example.com"), Route::Here(COMPONENT), "another guard's drop left it");
        drop(again);
        assert_eq!(r.domains().len(), 1, "only the other node's domain is left");
    }

    #[test]
    fn a_domain_served_on_every_node_stays_out_of_the_table() {
        let w = World::verona();
        let r = &w.router;
        let pubsub = Queue::new(8);
        let guard = r.serve_on_every_node("PubSub.example.com", pubsub.clone()).unwrap();
        assert_eq!(r.route_of("pubsub.example.com"), Route::Here(SERVICE));
        assert_eq!(r.domains().len(), 0, "nothing claimed in the cluster");
        // Another node serves it too: this node still routes it to itself.
        r.domains()
            .claim(DomainRecord { domain: "pubsub.example.com".into(), node: OTHER_NODE.0, kind: SERVICE, id: 7 })
            .unwrap();
        assert_eq!(r.route_of("pubsub.example.com"), Route::Here(SERVICE));
        w.route(
            "<iq to='pubsub.example.com' type='get' id='e1'><pubsub xmlns='http://jabber.org/protocol/pubsub'/></iq>",
        );
        assert_eq!(pubsub.ids(), ["e1"]);
        // A host, or a domain served here already, is refused.
        assert!(matches!(
            r.serve_on_every_node(HOST, Queue::new(1)),
            Err(RouteError::Conflict { holder: Holder::Host, .. })
        ));
        assert!(matches!(
            r.serve_on_every_node("pubsub.example.com", Queue::new(1)),
            Err(RouteError::Conflict { holder: Holder::Local(SERVICE), .. })
        ));
        drop(guard);
        assert!(r.domain_handler("pubsub.example.com").is_none());
        assert_eq!(r.domains().len(), 1, "the other node's claim is not taken back from here");
    }

    #[test]
    fn a_stanza_for_a_service_domain_reaches_its_handler() {
        let w = World::verona();
        let pubsub = Queue::new(8);
        let _guard = register(&w.router, "pubsub.example.com", SERVICE, pubsub.clone()).unwrap();
        let irc = Queue::new(8);
        let _irc = register(&w.router, "irc.example.com", COMPONENT, irc.clone()).unwrap();
        w.route(
            "<iq to='pubsub.example.com' type='get' id='p1'><pubsub xmlns='http://jabber.org/protocol/pubsub'/></iq>",
        );
        w.route("<message to='node@pubsub.example.com/x' type='chat' id='p2'/>");
        w.route("<presence to='#room%irc.example.com@irc.example.com/nick' id='c1'/>");
        assert_eq!(pubsub.ids(), ["p1", "p2"]);
        assert_eq!(irc.ids(), ["c1"]);
        let first = &pubsub.got.lock().unwrap()[0];
        assert_eq!((first.from.to_string(), first.to.to_string()), (ROMEO.to_owned(), "pubsub.example.com".to_owned()));
        assert_eq!(w.outcome(), Outcome::default(), "nothing went to the server or back to the sender");

        // The service answers through the router, like any other sender.
        w.route(&format!("<iq from='pubsub.example.com' to='{ROMEO}' type='result' id='p1'/>"));
        assert_eq!(w.outcome(), delivered(&[ROMEO]));
    }

    #[test]
    fn a_full_domain_handler_is_resource_constraint() {
        let w = World::verona();
        let _guard = register(&w.router, "pubsub.example.com", SERVICE, Queue::new(0)).unwrap();
        let cases = [
            ("iq", "<iq to='pubsub.example.com' type='get' id='1'/>", bounced(C::ResourceConstraint)),
            ("message", "<message to='pubsub.example.com' type='chat'/>", bounced(C::ResourceConstraint)),
            // Errors and results are never answered.
            ("iq error", "<iq to='pubsub.example.com' type='error' id='1'/>", dropped()),
            ("message error", "<message to='pubsub.example.com' type='error'/>", dropped()),
            ("iq result", "<iq to='pubsub.example.com' type='result' id='1'/>", dropped()),
        ];
        for (case, xml, want) in cases {
            w.route(xml);
            assert_eq!(w.outcome(), want, "{case}");
        }
    }

    /// A domain the table gives to this node whose registration is gone here.
    #[test]
    fn a_stale_route_to_this_node_is_service_unavailable() {
        let w = World::verona();
        w.router
            .domains()
            .claim(DomainRecord { domain: "old.example.com".into(), node: NODE.0, kind: COMPONENT, id: 1 })
            .unwrap();
        w.route("<message to='old.example.com' type='chat'/>");
        assert_eq!(w.outcome(), bounced(C::ServiceUnavailable));
        w.route("<message to='old.example.com' type='error'/>");
        assert_eq!(w.outcome(), dropped());
    }

    /// A domain another node holds, with no transport to reach it.
    #[test]
    fn a_domain_of_an_unreachable_node_is_service_unavailable() {
        let w = World::verona();
        w.router
            .domains()
            .claim(DomainRecord { domain: "irc.example.com".into(), node: OTHER_NODE.0, kind: COMPONENT, id: 1 })
            .unwrap();
        assert_eq!(w.router.route_of("irc.example.com"), Route::Node(OTHER_NODE, COMPONENT));
        w.route("<iq to='irc.example.com' type='get' id='1'/>");
        assert_eq!(w.outcome(), bounced(C::ServiceUnavailable));
        w.route("<iq to='irc.example.com' type='error' id='1'/>");
        assert_eq!(w.outcome(), dropped());
    }

    /// Takes everything it is offered and says so by name.
    struct Named(&'static str, Arc<Mutex<Vec<String>>>);
    impl Link for Named {
        fn name(&self) -> &'static str {
            self.0
        }
        fn route(&self, _router: &Router, routed: Routed) -> Step {
            self.1.lock().unwrap().push(format!("{}: {}", self.0, routed.to));
            Step::Done
        }
    }

    /// Records what it intercepts; keeps stanzas to `kept`, gives back the rest.
    struct Global {
        kept: &'static str,
        seen: Arc<Mutex<Vec<String>>>,
    }
    impl GlobalHook for Global {
        fn intercept(&self, _router: &Router, routed: Routed) -> Option<Routed> {
            self.seen.lock().unwrap().push(format!("global: {}", routed.to));
            (routed.to.to_string() != self.kept).then_some(routed)
        }
        fn session_up(&self, _router: &Router, _info: &SessionInfo) {}
        fn session_down(&self, _sid: SessionId) {}
    }

    #[test]
    fn the_chain_runs_in_its_documented_order() {
        let w = World::verona();
        let seen = Arc::new(Mutex::new(Vec::new()));
        assert_eq!(w.router.chain(), ["global", "local", "service", "component"]);
        w.router.set_s2s(Arc::new(Named("s2s", seen.clone())));
        w.router.push_link(Arc::new(Named("pushed", seen.clone())));
        assert_eq!(w.router.chain(), ["global", "local", "service", "component", "pushed", "s2s"]);
        w.router.set_global(Arc::new(Global { kept: "paris@example.com", seen: seen.clone() }));
        let pubsub = Queue::new(8);
        let _guard = register(&w.router, "pubsub.example.com", SERVICE, pubsub.clone()).unwrap();

        // Global distribution sees stanzas to users of local hosts first ...
        w.route("<message to='paris@example.com' type='chat' id='1'/>");
        w.route("<message to='juliet@example.com/garden' type='chat' id='2'/>");
        // ... but not stanzas to a host, to a service, or of no known kind.
        w.route("<iq to='example.com' type='get' id='3'/>");
        w.route("<iq to='pubsub.example.com' type='get' id='4'/>");
        w.route("<foo to='juliet@example.com'/>");
        // A domain this cluster does not route may be another data center's
        // component: global distribution sees it first and gives it back here;
        // a link added later comes before s2s, which has nothing left.
        w.route("<message to='juliet@capulet.example' type='chat' id='5'/>");
        assert_eq!(
            *seen.lock().unwrap(),
            [
                "global: paris@example.com",
                "global: juliet@example.com/garden",
                "global: juliet@capulet.example",
                "pushed: juliet@capulet.example"
            ]
        );
        assert_eq!(pubsub.ids(), ["4"]);
        let out = w.outcome();
        assert_eq!(out.delivered, ["juliet@example.com/garden"]);
        assert_eq!(out.jobs, [("to-server", "example.com".to_owned())]);
        // The unknown kind is answered by the local link, and that `<foo type='error'/>` dropped.
        assert_eq!((out.bounced, out.dropped), (1, 1));

        // Routing here skips global distribution.
        w.router.route_here(routed("<message to='paris@example.com' type='chat' id='6'/>"));
        assert_eq!(seen.lock().unwrap().len(), 4);
        assert_eq!(w.outcome().jobs, [("undelivered", "paris@example.com".to_owned())]);
        // So does routing here to another domain: global distribution has had its say.
        w.router.route_here(routed("<message to='romeo@capulet.example' type='chat' id='7'/>"));
        assert_eq!(seen.lock().unwrap().last().map(String::as_str), Some("pushed: romeo@capulet.example"));
        assert_eq!(seen.lock().unwrap().len(), 5);
    }

    #[test]
    fn unknown_domains_go_to_s2s_or_bounce_remote_server_not_found() {
        // Without s2s (see also `unknown_domain_is_remote_server_not_found`).
        let w = World::verona();
        w.route("<message to='juliet@capulet.example' type='chat'/>");
        assert_eq!(w.outcome(), bounced(C::RemoteServerNotFound));
        w.route("<message to='juliet@capulet.example' type='error'/>");
        assert_eq!(w.outcome(), dropped());

        // With s2s, it takes them, errors included; a local domain never reaches it.
        let seen = Arc::new(Mutex::new(Vec::new()));
        w.router.set_s2s(Arc::new(Named("s2s", seen.clone())));
        w.route("<message to='juliet@capulet.example' type='chat'/>");
        w.route("<iq to='capulet.example' type='error' id='1'/>");
        w.route("<message to='nurse@example.com' type='chat'/>");
        assert_eq!(*seen.lock().unwrap(), ["s2s: juliet@capulet.example", "s2s: capulet.example"]);
        assert_eq!(w.outcome(), job("undelivered", "nurse@example.com"));

        // An s2s link that declines leaves the bounce as it was.
        struct Declines;
        impl Link for Declines {
            fn name(&self) -> &'static str {
                "s2s"
            }
            fn route(&self, _router: &Router, routed: Routed) -> Step {
                Step::Next(routed)
            }
        }
        let w = World::verona();
        w.router.set_s2s(Arc::new(Declines));
        w.route("<iq to='capulet.example' type='get' id='1'/>");
        assert_eq!(w.outcome(), bounced(C::RemoteServerNotFound));
    }

    /// A registry whose commit never comes (a cluster without a majority).
    struct NeverCommits(Arc<meerkat_cluster::DomainTable>);
    impl meerkat_cluster::DomainRegistry for NeverCommits {
        fn domains(&self) -> &Arc<meerkat_cluster::DomainTable> {
            &self.0
        }
        fn claim_domain<'a, 'b>(
            &'a self,
            _record: DomainRecord,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), meerkat_cluster::DomainError>> + Send + 'b>>
        where
            'a: 'b,
            Self: 'b,
        {
            Box::pin(std::future::pending())
        }
        fn release_domain(&self, record: &DomainRecord) {
            self.0.release(&record.domain, record.node, record.id);
        }
    }

    #[test]
    fn a_registration_given_up_while_waiting_leaves_nothing_behind() {
        use futures_util::FutureExt as _;
        let table = Arc::new(meerkat_cluster::DomainTable::new());
        let router = Router::with_domains(
            NODE,
            vec![HOST.into()],
            Arc::new(SessionTable::new()),
            Arc::new(NeverCommits(table.clone())),
        );
        let waiting = router.register_domain("irc.example.com", COMPONENT, Queue::new(1));
        assert!(waiting.now_or_never().is_none(), "still waiting for the cluster, then given up");
        assert!(router.domain_handler("irc.example.com").is_none());
        assert!(table.is_empty());
    }
}

// ------------------------------------------------------------------ two nodes

mod two_nodes {
    use super::*;
    use meerkat_cluster::transport::Transport;
    use std::time::Duration;

    /// Two routers with their own copy of the table, linked by a real transport on loopback.
    struct Pair {
        a: World,
        b: World,
        ta: Arc<Transport>,
        tb: Arc<Transport>,
    }

    async fn pair() -> Pair {
        let a = World::new();
        let mut b = World::new();
        b.router = Router::new(OTHER_NODE, vec![HOST.into()], Arc::new(SessionTable::new()));
        b.router.set_server_handler(b.server.clone());
        let ta = Transport::new(NODE.0, "test".into(), None);
        let tb = Transport::new(OTHER_NODE.0, "test".into(), None);
        for (t, w) in [(&ta, &a), (&tb, &b)] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap().to_string();
            tokio::spawn(t.clone().serve(listener));
            t.set_inbox(crate::cluster::ClusterInbox::new(w.router.clone()));
            w.router.set_transport(t.clone());
            let other = if t.node_id() == NODE.0 { &tb } else { &ta };
            other.set_address(t.node_id(), &addr);
        }
        Pair { a, b, ta, tb }
    }

    impl Pair {
        /// Binds a session on node b, as both tables see it; `a_priority` is node a's (stale) view.
        fn bind_on_b(&mut self, jid: &str, priority: Option<i8>, a_priority: Option<i8>) -> Arc<Sink> {
            let sink = self.b.bind(jid, priority, OTHER_NODE, false);
            let sid = SessionId(self.b.next_sid - 1);
            let info = SessionInfo {
                jid: parse_full(jid).unwrap(),
                node: OTHER_NODE,
                sid,
                priority: a_priority,
                created_micros: sid.0 as i64,
            };
            self.a.router.sessions().open(info);
            sink
        }

        /// Binds a session on node a, as both tables see it.
        fn bind_on_a(&mut self, jid: &str, priority: Option<i8>) -> Arc<Sink> {
            let sink = self.a.bind(jid, priority, NODE, false);
            let sid = SessionId(self.a.next_sid - 1);
            let info =
                SessionInfo { jid: parse_full(jid).unwrap(), node: NODE, sid, priority, created_micros: sid.0 as i64 };
            self.b.router.sessions().open(info);
            sink
        }
    }

    async fn until(what: &str, mut f: impl FnMut() -> bool) {
        for _ in 0..500 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for {what}");
    }

    /// A domain registered on node a: node b's replica of the table says so
    /// (the cluster replicates the record), and stanzas routed on b reach
    /// a's handler in order; an error from the handler comes back to b's sender.
    #[tokio::test]
    async fn a_domain_registered_on_one_node_gets_stanzas_routed_on_the_other() {
        let mut p = pair().await;
        let romeo = p.bind_on_b(ROMEO, Some(0), Some(0));
        let irc = Queue::new(100);
        let guard =
            p.a.router
                .register_domain("irc.example.com", meerkat_cluster::DomainKind::Component, irc.clone())
                .await
                .unwrap();
        let record = p.a.router.domains().get("irc.example.com").unwrap();
        p.b.router.domains().claim(record.clone()).unwrap();
        assert_eq!(p.b.router.route_of("irc.example.com"), Route::Node(NODE, meerkat_cluster::DomainKind::Component));
        for n in 0..100 {
            p.b.route(&format!("<message to='#r@irc.example.com' type='groupchat' id='m{n}'/>"));
        }
        until("100 stanzas on node a", || irc.got.lock().unwrap().len() == 100).await;
        assert_eq!(irc.ids(), (0..100).map(|n| format!("m{n}")).collect::<Vec<_>>());
        let first = irc.got.lock().unwrap()[0].clone();
        assert_eq!(first.from.to_string(), ROMEO);
        // The handler is full now: node a answers, and the error reaches romeo on b.
        p.b.route("<iq to='irc.example.com' type='get' id='full'/>");
        until("the error on node b", || !romeo.got.lock().unwrap().is_empty()).await;
        let got = romeo.take();
        assert_eq!(StanzaError::from_stanza(&got[0]).map(|e| e.condition), Some(C::ResourceConstraint));

        // Unregistered on a while b's table still names a: a answers, never forwards.
        drop(guard);
        p.b.route("<iq to='irc.example.com' type='get' id='gone'/>");
        until("the second error on node b", || !romeo.got.lock().unwrap().is_empty()).await;
        let got = romeo.take();
        assert_eq!(StanzaError::from_stanza(&got[0]).map(|e| e.condition), Some(C::ServiceUnavailable));
        assert_eq!(irc.got.lock().unwrap().len(), 100);
        p.ta.shutdown();
        p.tb.shutdown();
    }

    #[tokio::test]
    async fn messages_reach_sessions_on_another_node_in_order() {
        let mut p = pair().await;
        let paris = p.bind_on_b("paris@example.com/church", Some(0), Some(0));
        for n in 0..500 {
            p.a.route(&format!("<message to='paris@example.com/church' type='chat' id='m{n}'/>"));
        }
        p.a.route("<message to='paris@example.com' type='chat' id='bare'/>");
        until("500 messages", || paris.got.lock().unwrap().len() == 501).await;
        let ids: Vec<String> = paris.take().iter().map(|m| m.attr("id").unwrap().to_owned()).collect();
        let mut want: Vec<String> = (0..500).map(|n| format!("m{n}")).collect();
        want.push("bare".into());
        assert_eq!(ids, want);
        p.ta.shutdown();
        p.tb.shutdown();
    }

    #[tokio::test]
    async fn the_owning_node_decides_availability() {
        let mut p = pair().await;
        // Node a has not seen paris's initial presence yet; node b has.
        let paris = p.bind_on_b("paris@example.com/church", Some(0), None);
        p.a.route("<message to='paris@example.com' type='chat' id='1'/>");
        p.a.route("<presence from='romeo@example.com/orchard' to='paris@example.com'/>");
        until("both stanzas", || paris.got.lock().unwrap().len() == 2).await;
        assert_eq!(p.a.outcome(), Outcome::default(), "nothing was stored offline on node a");

        // An unavailable resource on b gets no presence, and the message goes offline (on b).
        let tybalt = p.bind_on_b("tybalt@example.com/street", None, None);
        p.a.route("<presence from='romeo@example.com/orchard' to='tybalt@example.com'/>");
        p.a.route("<message to='tybalt@example.com' type='chat' id='2'/>");
        until("offline on b", || !p.b.server.jobs.lock().unwrap().is_empty()).await;
        assert_eq!(p.b.outcome().jobs, vec![("undelivered", "tybalt@example.com".to_owned())]);
        assert!(tybalt.take().is_empty());
        p.ta.shutdown();
        p.tb.shutdown();
    }

    #[tokio::test]
    async fn a_session_gone_from_its_node_falls_back_there_without_bouncing() {
        let mut p = pair().await;
        let romeo = p.bind_on_a(ROMEO, Some(0));
        p.bind_on_b("paris@example.com/church", Some(0), Some(0));
        // Node b forgot the session (it closed); node a's table is stale.
        p.b.router.sessions().close(
            &parse_full("paris@example.com/church").unwrap(),
            OTHER_NODE,
            SessionId(p.b.next_sid - 1),
        );
        p.a.route("<message to='paris@example.com/church' type='chat' id='1'/>");
        p.a.route("<iq to='paris@example.com/church' type='get' id='2'/>");
        until("offline on b", || !p.b.server.jobs.lock().unwrap().is_empty()).await;
        assert_eq!(p.b.outcome().jobs, vec![("undelivered", "paris@example.com".to_owned())]);
        // The IQ error comes back to romeo on node a, once.
        until("the iq error", || !romeo.got.lock().unwrap().is_empty()).await;
        let got = romeo.take();
        assert_eq!(got.len(), 1);
        assert_eq!(StanzaError::from_stanza(&got[0]).map(|e| e.condition), Some(C::ServiceUnavailable));
        p.ta.shutdown();
        p.tb.shutdown();
    }
}

mod domains_while_the_table_lost_them {
    use super::*;
    use meerkat_cluster::{DomainKind, DomainRecord, NodeId};

    /// A node the cluster marked down loses its domains from the table until
    /// it registers them again; meanwhile its own traffic still reaches the
    /// components connected to it, and a domain the table gives another node
    /// goes there.
    #[test]
    fn this_nodes_own_traffic_still_reaches_its_components() {
        let w = World::verona();
        let irc = Queue::new(8);
        let _guard = register(&w.router, "irc.example.com", DomainKind::Component, irc.clone()).unwrap();
        let me = w.router.node();
        assert_eq!(w.router.route_of("irc.example.com"), Route::Here(DomainKind::Component));
        w.router.domains().remove_node(me);
        assert_eq!(w.router.route_of("irc.example.com"), Route::Here(DomainKind::Component));
        w.route("<message to='bot@irc.example.com' type='chat' id='1'/>");
        assert_eq!(irc.ids(), ["1"]);
        // The table's word wins when it names another node.
        let other =
            DomainRecord { domain: "irc.example.com".into(), node: me.0 + 1, kind: DomainKind::Component, id: 1 };
        w.router.domains().claim(other).unwrap();
        assert_eq!(w.router.route_of("irc.example.com"), Route::Node(NodeId(me.0 + 1), DomainKind::Component));
    }
}
