//! Unit tests of the negotiation state machine: no sockets, no clock, no store.
//!
//! Each test drives a [`Negotiator`] with [`NegEvent`]s (client elements are
//! parsed from XML with the real [`StreamParser`]) and checks the
//! [`NegAction`]s. SASL exchanges use the real SCRAM client, so a success
//! here is a genuine mutual authentication.
#![allow(clippy::unwrap_used)]

use super::*;

use base64::engine::general_purpose::STANDARD as B64;
use meerkat_storage::{FastSlot, FastTokens};
use meerkat_xmpp::error::StanzaError;
use meerkat_xmpp::jid::parse_full;
use meerkat_xmpp::parser::{Limits, StreamEvent, StreamParser};
use meerkat_xmpp::sasl::fast::HtMechanism;
use meerkat_xmpp::sasl::{plain_initial_response, ClientChannelBinding, HashAlg, ScramClient, ScramCredentials};

const HOST: &str = "example.com";
const OTHER_HOST: &str = "other.example";
const SID: &str = "s1d";
const USER: &str = "juliet";
const PASSWORD: &str = "r0meo&r0meo";
/// The RFC 9266 exporter of the (imaginary) TLS connection.
const EXPORTER: [u8; 32] = [0x42; 32];
/// Low, so the tests stay fast; the client accepts any count above zero.
const ITERATIONS: u32 = 64;

const ALL_MECHS: [Mechanism; 5] = [
    Mechanism::ScramSha256Plus,
    Mechanism::ScramSha256,
    Mechanism::ScramSha1Plus,
    Mechanism::ScramSha1,
    Mechanism::Plain,
];

// ------------------------------------------------------------------ helpers

fn cfg(tls_mode: TlsMode) -> NegotiationConfig {
    NegotiationConfig {
        hosts: vec![HOST.into(), OTHER_HOST.into()],
        tls_mode,
        mechanisms: ALL_MECHS.to_vec(),
        allow_plain_without_tls: false,
        registration: true,
        max_auth_failures: 3,
        scram_iterations: 4096,
        salt_secret: meerkat_xmpp::sasl::SaltSecret::random(),
        external_checks: vec![ExternalCheck::Standard],
        modules: ModuleNegotiation::default(),
        features: Default::default(),
        host_overrides: Default::default(),
    }
}

/// How the connection starts.
#[derive(Clone, Copy, Debug)]
enum Conn {
    /// Plain TCP.
    Plain,
    /// Direct TLS (XEP-0368), with or without an exporter.
    Direct { exporter: bool },
}

fn negotiator(cfg: NegotiationConfig, conn: Conn) -> Negotiator {
    match conn {
        Conn::Plain => Negotiator::new(cfg, false, None, SID.into()),
        Conn::Direct { exporter } => Negotiator::new(cfg, true, exporter.then(|| EXPORTER.to_vec()), SID.into()),
    }
}

fn header_to(to: Option<&str>) -> StreamHeader {
    StreamHeader {
        to: to.map(str::to_owned),
        from: None,
        id: None,
        version: Some("1.0".into()),
        lang: Some("en".into()),
        default_ns: Some(ns::CLIENT.into()),
    }
}

fn header() -> StreamHeader {
    header_to(Some(HOST))
}

/// Parses one top-level element inside a `jabber:client` stream, the way the
/// connection driver gets it. Used for client input and for our own output.
fn parse(xml: &str) -> Element {
    let mut p = StreamParser::new(Limits::default());
    p.feed(
        format!("<stream:stream xmlns='jabber:client' xmlns:stream='{}' to='{HOST}' version='1.0'>", ns::STREAM)
            .as_bytes(),
    );
    p.feed(xml.as_bytes());
    assert!(matches!(p.next_event().unwrap(), Some(StreamEvent::Header(_))));
    match p.next_event() {
        Ok(Some(StreamEvent::Stanza(el))) => el,
        other => panic!("{xml:?} is not one complete element: {other:?}"),
    }
}

fn el(xml: &str) -> NegEvent {
    NegEvent::Element(parse(xml))
}

/// What a `<stream:features/>` offers.
#[derive(Debug, Default, PartialEq)]
struct Features {
    /// `Some(required)` when STARTTLS is offered.
    starttls: Option<bool>,
    mechanisms: Vec<String>,
    /// XEP-0440 channel-binding types.
    channel_bindings: Vec<String>,
    register: bool,
    bind: bool,
    session: bool,
}

impl Features {
    fn parse(xml: &str) -> Features {
        let f = parse(xml);
        assert!(f.is("features", ns::STREAM), "not stream features: {xml}");
        let names = |parent: Option<&Element>, child: &str| -> Vec<String> {
            parent
                .map(|p| {
                    p.elements()
                        .filter(|e| e.name == child)
                        .map(|e| e.attr("type").map_or_else(|| e.text(), str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        Features {
            starttls: f.get_child("starttls", ns::TLS).map(|s| s.has_child("required", ns::TLS)),
            mechanisms: names(f.get_child("mechanisms", ns::SASL), "mechanism"),
            channel_bindings: names(f.get_child("sasl-channel-binding", ns::SASL_CB), "channel-binding"),
            register: f.has_child("register", ns::REGISTER_FEATURE),
            bind: f.has_child("bind", ns::BIND),
            session: f.has_child("session", ns::SESSION),
        }
    }

    fn mechs(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }
}

/// Sends the header; expects our header for `host` and the features.
fn open_on(neg: &mut Negotiator, host: &str) -> Features {
    let actions = neg.step(NegEvent::Header(header_to(Some(host))));
    match actions.as_slice() {
        [NegAction::Send(h), NegAction::Send(f)] => {
            assert_eq!(*h, stream_header_xml(host, SID));
            Features::parse(f)
        }
        other => panic!("expected header and features, got {other:?}"),
    }
}

fn open(neg: &mut Negotiator) -> Features {
    open_on(neg, HOST)
}

/// `<starttls/>`, the handshake, and the restarted stream's features.
fn starttls(neg: &mut Negotiator, exporter: Option<Vec<u8>>) -> Features {
    assert_eq!(
        neg.step(el("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")),
        vec![NegAction::Send("<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>".into()), NegAction::StartTls]
    );
    assert_eq!(neg.step(NegEvent::TlsEstablished { exporter, client_cert: None }), vec![]);
    assert!(neg.is_secure());
    open(neg)
}

fn close(cond: StreamErrorCondition, text: &str) -> NegAction {
    NegAction::Close(StreamError::with_text(cond, text))
}

/// The condition of a `Close` action, if the actions end the stream.
fn close_condition(actions: &[NegAction]) -> Option<StreamErrorCondition> {
    match actions.last() {
        Some(NegAction::Close(e)) => Some(e.condition),
        _ => None,
    }
}

fn failure(cond: &str) -> String {
    format!("<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><{cond}/></failure>")
}

fn delayed_failure(cond: &str, ms: u64) -> NegAction {
    NegAction::SendDelayed(failure(cond), Duration::from_millis(ms))
}

fn auth(mech: &str, initial: Option<&[u8]>) -> NegEvent {
    let body = match initial {
        None => String::new(),
        Some([]) => "=".into(),
        Some(data) => B64.encode(data),
    };
    el(&format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='{mech}'>{body}</auth>"))
}

fn response(data: &[u8]) -> NegEvent {
    el(&format!("<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>", B64.encode(data)))
}

/// SCRAM keys for `PASSWORD`, for SHA-1 and SHA-256.
fn scram_credentials() -> Credentials {
    Credentials::Scram(
        [HashAlg::Sha1, HashAlg::Sha256]
            .into_iter()
            .map(|h| ScramCredentials::derive(h, PASSWORD, b"NaCl-NaCl-NaCl!", ITERATIONS).unwrap())
            .collect(),
    )
}

/// Runs a SCRAM exchange as far as it goes and returns the last actions
/// (success, or a failure at whichever step it happened). `creds` answers
/// the credentials lookup.
fn scram_exchange(
    neg: &mut Negotiator,
    mech: Mechanism,
    client: &mut ScramClient,
    creds: Option<Credentials>,
) -> Vec<NegAction> {
    let actions = neg.step(auth(mech.name(), Some(&client.client_first())));
    match actions.as_slice() {
        [NegAction::LookupCredentials { username }] => assert_eq!(username, USER),
        _ => return actions,
    }
    let actions = neg.step(NegEvent::Credentials(creds));
    let challenge = match actions.as_slice() {
        [NegAction::Send(xml)] => {
            let c = parse(xml);
            assert!(c.is("challenge", ns::SASL), "{xml}");
            B64.decode(c.text()).unwrap()
        }
        _ => return actions,
    };
    let client_final = client.handle_server_first(&challenge).unwrap();
    neg.step(response(&client_final))
}

/// Checks a SCRAM success: `<success/>` carrying a server signature the
/// client accepts, then a parser reset.
fn assert_scram_success(actions: &[NegAction], client: &ScramClient) {
    match actions {
        [NegAction::Send(xml), NegAction::ResetParser] => {
            let s = parse(xml);
            assert!(s.is("success", ns::SASL), "{xml}");
            client.verify_server_final(&B64.decode(s.text()).unwrap()).unwrap();
        }
        other => panic!("expected SASL success, got {other:?}"),
    }
}

/// A negotiator past SASL (PLAIN over direct TLS) and the restarted stream's features.
fn authenticated() -> (Negotiator, Features) {
    let mut neg = negotiator(cfg(TlsMode::Tls), Conn::Direct { exporter: true });
    open(&mut neg);
    assert_eq!(
        neg.step(auth("PLAIN", Some(&plain_initial_response(None, USER, PASSWORD)))),
        vec![NegAction::LookupCredentials { username: USER.into() }]
    );
    assert_eq!(
        neg.step(NegEvent::Credentials(Some(Credentials::Plain(PASSWORD.into())))),
        vec![
            NegAction::Send("<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'></success>".into()),
            NegAction::ResetParser
        ]
    );
    assert_eq!(neg.user(), Some(USER));
    let features = open(&mut neg);
    (neg, features)
}

/// Parses an `<iq/>` we sent and returns (type, id, error condition).
fn iq_summary(xml: &str) -> (String, Option<String>, Option<StanzaErrorCondition>) {
    let iq = parse(xml);
    assert!(iq.is("iq", ns::CLIENT), "{xml}");
    (
        iq.attr("type").unwrap_or_default().to_owned(),
        iq.attr("id").map(str::to_owned),
        StanzaError::from_stanza(&iq).map(|e| e.condition),
    )
}

// ------------------------------------------------------------------ stream header

#[test]
fn header_checks() {
    use StreamErrorCondition as C;
    let with = |f: &dyn Fn(&mut StreamHeader)| {
        let mut h = header();
        f(&mut h);
        h
    };
    // (case, header, host our header is sent from, expected stream error)
    let cases: Vec<(&str, StreamHeader, &str, Option<C>)> = vec![
        ("served host", header(), HOST, None),
        ("second served host", header_to(Some(OTHER_HOST)), OTHER_HOST, None),
        ("host is case-insensitive", header_to(Some("EXAMPLE.com")), HOST, None),
        ("version 1.1 is 1.x", with(&|h| h.version = Some("1.1".into())), HOST, None),
        ("unknown host", header_to(Some("evil.example")), HOST, Some(C::HostUnknown)),
        ("malformed host", header_to(Some("a@b@c")), HOST, Some(C::HostUnknown)),
        ("missing to", header_to(None), HOST, Some(C::HostUnknown)),
        ("server namespace", with(&|h| h.default_ns = Some("jabber:server".into())), HOST, Some(C::InvalidNamespace)),
        ("no content namespace", with(&|h| h.default_ns = None), HOST, Some(C::InvalidNamespace)),
        ("version 0.9", with(&|h| h.version = Some("0.9".into())), HOST, Some(C::UnsupportedVersion)),
        ("no version", with(&|h| h.version = None), HOST, Some(C::UnsupportedVersion)),
        ("garbage version", with(&|h| h.version = Some("x.y".into())), HOST, Some(C::UnsupportedVersion)),
        (
            "namespace checked on the served host",
            with(&|h| {
                h.to = Some(OTHER_HOST.into());
                h.default_ns = Some("jabber:component:accept".into());
            }),
            OTHER_HOST,
            Some(C::InvalidNamespace),
        ),
    ];
    for (case, h, from, want) in cases {
        let mut neg = negotiator(cfg(TlsMode::Starttls), Conn::Plain);
        let actions = neg.step(NegEvent::Header(h));
        // RFC 6120 §4.9.1.2: our header always goes out first, even before an error.
        assert_eq!(actions.first(), Some(&NegAction::Send(stream_header_xml(from, SID))), "{case}");
        assert_eq!(actions.len(), 2, "{case}: {actions:?}");
        match want {
            None => {
                assert!(
                    matches!(&actions[1], NegAction::Send(f) if f.starts_with("<stream:features>")),
                    "{case}: {actions:?}"
                );
                assert_eq!(neg.host(), Some(from), "{case}");
            }
            Some(cond) => {
                assert_eq!(close_condition(&actions), Some(cond), "{case}: {actions:?}");
                // The stream is over: nothing more happens.
                assert_eq!(neg.step(NegEvent::Header(header())), vec![], "{case}");
            }
        }
    }
}

#[test]
fn header_escapes_stream_id_and_host() {
    assert_eq!(
        stream_header_xml("a'b", "<&\">"),
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' id='&lt;&amp;&quot;>' from='a&apos;b' version='1.0' xml:lang='en'>"
    );
}

// ------------------------------------------------------------------ features

#[test]
fn features_before_authentication() {
    struct Case {
        name: &'static str,
        mode: TlsMode,
        conn: Conn,
        allow_plain: bool,
        want: Features,
    }
    let m = Features::mechs;
    let cases = [
        Case {
            name: "no TLS: SCRAM only, no PLAIN, no registration",
            mode: TlsMode::None,
            conn: Conn::Plain,
            allow_plain: false,
            want: Features { mechanisms: m(&["SCRAM-SHA-256", "SCRAM-SHA-1"]), ..Default::default() },
        },
        Case {
            name: "no TLS, plaintext allowed: PLAIN and registration",
            mode: TlsMode::None,
            conn: Conn::Plain,
            allow_plain: true,
            want: Features {
                mechanisms: m(&["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"]),
                register: true,
                ..Default::default()
            },
        },
        Case {
            name: "STARTTLS offered: SASL without PLAIN or -PLUS alongside",
            mode: TlsMode::Starttls,
            conn: Conn::Plain,
            allow_plain: false,
            want: Features {
                starttls: Some(false),
                mechanisms: m(&["SCRAM-SHA-256", "SCRAM-SHA-1"]),
                ..Default::default()
            },
        },
        Case {
            name: "STARTTLS offered, plaintext allowed",
            mode: TlsMode::Starttls,
            conn: Conn::Plain,
            allow_plain: true,
            want: Features {
                starttls: Some(false),
                mechanisms: m(&["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"]),
                register: true,
                ..Default::default()
            },
        },
        Case {
            name: "STARTTLS required: nothing else",
            mode: TlsMode::StarttlsRequired,
            conn: Conn::Plain,
            allow_plain: false,
            want: Features { starttls: Some(true), ..Default::default() },
        },
        Case {
            name: "STARTTLS required: nothing else, even with plaintext allowed",
            mode: TlsMode::StarttlsRequired,
            conn: Conn::Plain,
            allow_plain: true,
            want: Features { starttls: Some(true), ..Default::default() },
        },
        Case {
            name: "direct TLS with exporter: everything, with channel binding",
            mode: TlsMode::Tls,
            conn: Conn::Direct { exporter: true },
            allow_plain: false,
            want: Features {
                mechanisms: m(&["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256", "SCRAM-SHA-1-PLUS", "SCRAM-SHA-1", "PLAIN"]),
                channel_bindings: m(&["tls-exporter"]),
                register: true,
                ..Default::default()
            },
        },
        Case {
            name: "direct TLS without exporter: no -PLUS, no channel binding",
            mode: TlsMode::Tls,
            conn: Conn::Direct { exporter: false },
            allow_plain: false,
            want: Features {
                mechanisms: m(&["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"]),
                register: true,
                ..Default::default()
            },
        },
    ];
    for c in cases {
        let mut config = cfg(c.mode);
        config.allow_plain_without_tls = c.allow_plain;
        let mut neg = negotiator(config, c.conn);
        assert_eq!(open(&mut neg), c.want, "{}", c.name);
        let offered: Vec<String> = neg.offered_mechanisms().iter().map(|m| m.name().to_owned()).collect();
        assert_eq!(offered, c.want.mechanisms, "{}: offered_mechanisms agrees with the features", c.name);
    }
}

#[test]
fn features_follow_configuration() {
    // (mechanisms enabled, registration, advertised)
    let cases: [(&[Mechanism], bool, &[&str], bool); 3] = [
        (&[Mechanism::Plain, Mechanism::ScramSha1], true, &["PLAIN", "SCRAM-SHA-1"], true),
        (&[Mechanism::ScramSha256Plus], false, &["SCRAM-SHA-256-PLUS"], false),
        (&[], false, &[], false),
    ];
    for (mechs, registration, want, want_register) in cases {
        let mut config = cfg(TlsMode::Tls);
        config.mechanisms = mechs.to_vec();
        config.registration = registration;
        let mut neg = negotiator(config, Conn::Direct { exporter: true });
        let f = open(&mut neg);
        assert_eq!(f.mechanisms, Features::mechs(want), "{mechs:?}");
        assert_eq!(f.register, want_register, "{mechs:?}");
    }
}

// ------------------------------------------------------------------ STARTTLS

#[test]
fn starttls_then_restart_offers_channel_binding() {
    for mode in [TlsMode::Starttls, TlsMode::StarttlsRequired] {
        let mut neg = negotiator(cfg(mode), Conn::Plain);
        open(&mut neg);
        assert!(!neg.is_secure());
        let after = starttls(&mut neg, Some(EXPORTER.to_vec()));
        assert_eq!(
            after,
            Features {
                mechanisms: Features::mechs(&[
                    "SCRAM-SHA-256-PLUS",
                    "SCRAM-SHA-256",
                    "SCRAM-SHA-1-PLUS",
                    "SCRAM-SHA-1",
                    "PLAIN"
                ]),
                channel_bindings: Features::mechs(&["tls-exporter"]),
                register: true,
                ..Default::default()
            },
            "{mode:?}"
        );
    }
}

#[test]
fn starttls_without_exporter_offers_no_plus() {
    let mut neg = negotiator(cfg(TlsMode::StarttlsRequired), Conn::Plain);
    open(&mut neg);
    let after = starttls(&mut neg, None);
    assert_eq!(after.starttls, None);
    assert_eq!(after.mechanisms, Features::mechs(&["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"]));
    assert!(after.channel_bindings.is_empty());
}

#[test]
fn starttls_refused_where_not_offered() {
    // (mode, connection, TLS negotiated first)
    let cases = [
        (TlsMode::None, Conn::Plain, false),
        (TlsMode::Tls, Conn::Direct { exporter: true }, false),
        (TlsMode::Starttls, Conn::Plain, true),
    ];
    for (mode, conn, twice) in cases {
        let mut neg = negotiator(cfg(mode), conn);
        open(&mut neg);
        if twice {
            starttls(&mut neg, None);
        }
        let actions = neg.step(el("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"));
        assert_eq!(
            actions,
            vec![close(StreamErrorCondition::PolicyViolation, "STARTTLS is not offered here")],
            "{mode:?}"
        );
    }
}

#[test]
fn restart_after_tls_must_keep_the_host() {
    let mut neg = negotiator(cfg(TlsMode::Starttls), Conn::Plain);
    open(&mut neg);
    neg.step(el("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"));
    neg.step(NegEvent::TlsEstablished { exporter: None, client_cert: None });
    let actions = neg.step(NegEvent::Header(header_to(Some(OTHER_HOST))));
    assert_eq!(actions[0], NegAction::Send(stream_header_xml(HOST, SID)));
    assert_eq!(close_condition(&actions), Some(StreamErrorCondition::HostUnknown));
}

#[test]
fn auth_before_required_starttls_is_refused() {
    let mut neg = negotiator(cfg(TlsMode::StarttlsRequired), Conn::Plain);
    open(&mut neg);
    let mut client = ScramClient::new(HashAlg::Sha256, USER, PASSWORD, ClientChannelBinding::None);
    assert_eq!(
        neg.step(auth("SCRAM-SHA-256", Some(&client.client_first()))),
        vec![
            NegAction::Send(failure("encryption-required")),
            close(StreamErrorCondition::PolicyViolation, "STARTTLS is required")
        ]
    );
}

// ------------------------------------------------------------------ SASL

#[test]
fn scram_exchanges_succeed() {
    // (case, mode, connection, STARTTLS with exporter, mechanism, client channel binding)
    type Case = (&'static str, TlsMode, Conn, Option<Option<Vec<u8>>>, Mechanism, ClientChannelBinding);
    let cb = || ClientChannelBinding::TlsExporter(EXPORTER.to_vec());
    let cases: Vec<Case> = vec![
        (
            "SCRAM-SHA-256 before STARTTLS",
            TlsMode::Starttls,
            Conn::Plain,
            None,
            Mechanism::ScramSha256,
            ClientChannelBinding::None,
        ),
        (
            "SCRAM-SHA-256 without any TLS",
            TlsMode::None,
            Conn::Plain,
            None,
            Mechanism::ScramSha256,
            ClientChannelBinding::None,
        ),
        (
            "SCRAM-SHA-256 after STARTTLS, client without binding",
            TlsMode::Starttls,
            Conn::Plain,
            Some(Some(EXPORTER.to_vec())),
            Mechanism::ScramSha256,
            ClientChannelBinding::None,
        ),
        (
            "SCRAM-SHA-256-PLUS after STARTTLS",
            TlsMode::StarttlsRequired,
            Conn::Plain,
            Some(Some(EXPORTER.to_vec())),
            Mechanism::ScramSha256Plus,
            cb(),
        ),
        (
            "SCRAM-SHA-1-PLUS over direct TLS",
            TlsMode::Tls,
            Conn::Direct { exporter: true },
            None,
            Mechanism::ScramSha1Plus,
            cb(),
        ),
        (
            "SCRAM-SHA-1 over direct TLS",
            TlsMode::Tls,
            Conn::Direct { exporter: true },
            None,
            Mechanism::ScramSha1,
            ClientChannelBinding::None,
        ),
        // "y" is honest here: no -PLUS was advertised, so it is no downgrade.
        (
            "SCRAM-SHA-256 'y' where no -PLUS was offered",
            TlsMode::Tls,
            Conn::Direct { exporter: false },
            None,
            Mechanism::ScramSha256,
            ClientChannelBinding::ClientSupportsServerDoesNot,
        ),
    ];
    for (case, mode, conn, tls, mech, binding) in cases {
        let mut neg = negotiator(cfg(mode), conn);
        let mut features = open(&mut neg);
        if let Some(exporter) = tls {
            features = starttls(&mut neg, exporter);
        }
        assert!(features.mechanisms.iter().any(|m| m == mech.name()), "{case}: {mech:?} not offered");
        let mut client = ScramClient::new(mech.hash().unwrap(), USER, PASSWORD, binding);
        let actions = scram_exchange(&mut neg, mech, &mut client, Some(scram_credentials()));
        assert_scram_success(&actions, &client);
        assert_eq!(neg.user(), Some(USER), "{case}");

        // The restarted stream offers bind and the legacy session, nothing else.
        let post = open(&mut neg);
        assert_eq!(post, Features { bind: true, session: true, ..Default::default() }, "{case}");
    }
}

#[test]
fn scram_with_an_empty_initial_challenge() {
    // No initial response: the server asks for it with an empty challenge (RFC 6120 §6.4.2).
    let mut neg = negotiator(cfg(TlsMode::Tls), Conn::Direct { exporter: true });
    open(&mut neg);
    let empty_challenge = vec![NegAction::Send("<challenge xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>".into())];
    assert_eq!(neg.step(auth("SCRAM-SHA-256-PLUS", None)), empty_challenge);
    let mut client =
        ScramClient::new(HashAlg::Sha256, USER, PASSWORD, ClientChannelBinding::TlsExporter(EXPORTER.to_vec()));
    assert_eq!(
        neg.step(response(&client.client_first())),
        vec![NegAction::LookupCredentials { username: USER.into() }]
    );
    let challenge = match neg.step(NegEvent::Credentials(Some(scram_credentials()))).as_slice() {
        [NegAction::Send(xml)] => B64.decode(parse(xml).text()).unwrap(),
        other => panic!("{other:?}"),
    };
    let actions = neg.step(response(&client.handle_server_first(&challenge).unwrap()));
    assert_scram_success(&actions, &client);
}

#[test]
fn plain_exchanges() {
    let ok = || {
        vec![
            NegAction::Send("<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'></success>".into()),
            NegAction::ResetParser,
        ]
    };
    // (case, initial response, credentials in the store, expected final actions)
    type Case = (&'static str, Vec<u8>, Option<Credentials>, Vec<NegAction>);
    let cases: Vec<Case> = vec![
        (
            "plaintext store",
            plain_initial_response(None, USER, PASSWORD),
            Some(Credentials::Plain(PASSWORD.into())),
            ok(),
        ),
        ("SCRAM store", plain_initial_response(None, USER, PASSWORD), Some(scram_credentials()), ok()),
        (
            "authzid of oneself",
            plain_initial_response(Some("juliet@example.com"), USER, PASSWORD),
            Some(Credentials::Plain(PASSWORD.into())),
            ok(),
        ),
        (
            "wrong password",
            plain_initial_response(None, USER, "nope"),
            Some(Credentials::Plain(PASSWORD.into())),
            vec![delayed_failure("not-authorized", 500)],
        ),
        (
            "unknown user",
            plain_initial_response(None, USER, PASSWORD),
            None,
            vec![delayed_failure("not-authorized", 500)],
        ),
    ];
    for (case, initial, creds, want) in cases {
        let mut neg = negotiator(cfg(TlsMode::Tls), Conn::Direct { exporter: false });
        open(&mut neg);
        assert_eq!(
            neg.step(auth("PLAIN", Some(&initial))),
            vec![NegAction::LookupCredentials { username: USER.into() }],
            "{case}"
        );
        assert_eq!(neg.step(NegEvent::Credentials(creds)), want, "{case}");
    }
}

#[test]
fn scram_failures_are_not_authorized() {
    struct Case {
        name: &'static str,
        mech: Mechanism,
        binding: ClientChannelBinding,
        password: &'static str,
        creds: Option<Credentials>,
    }
    let case = |name, mech, binding, password, creds| Case { name, mech, binding, password, creds };
    let wrong_cb = ClientChannelBinding::TlsExporter(vec![0x13; 32]);
    let right_cb = ClientChannelBinding::TlsExporter(EXPORTER.to_vec());
    let cases = [
        // A different exporter means a different TLS connection: a MITM.
        case(
            "wrong channel binding",
            Mechanism::ScramSha256Plus,
            wrong_cb.clone(),
            PASSWORD,
            Some(scram_credentials()),
        ),
        case(
            "channel binding data with the non-PLUS mechanism",
            Mechanism::ScramSha256,
            right_cb,
            PASSWORD,
            Some(scram_credentials()),
        ),
        case(
            "-PLUS without channel binding",
            Mechanism::ScramSha256Plus,
            ClientChannelBinding::None,
            PASSWORD,
            Some(scram_credentials()),
        ),
        // "y" although -PLUS was advertised: someone stripped it (RFC 5802 §6).
        case(
            "downgrade to 'y'",
            Mechanism::ScramSha256,
            ClientChannelBinding::ClientSupportsServerDoesNot,
            PASSWORD,
            Some(scram_credentials()),
        ),
        case("wrong password", Mechanism::ScramSha256, ClientChannelBinding::None, "juliet", Some(scram_credentials())),
        case("unknown user", Mechanism::ScramSha256, ClientChannelBinding::None, PASSWORD, None),
        case(
            "no keys for this hash",
            Mechanism::ScramSha256,
            ClientChannelBinding::None,
            PASSWORD,
            Some(Credentials::Scram(vec![])),
        ),
    ];
    for c in cases {
        // STARTTLS with an exporter, so the -PLUS mechanisms were advertised.
        let mut neg = negotiator(cfg(TlsMode::Starttls), Conn::Plain);
        open(&mut neg);
        starttls(&mut neg, Some(EXPORTER.to_vec()));
        let mut client = ScramClient::new(c.mech.hash().unwrap(), USER, c.password, c.binding);
        let actions = scram_exchange(&mut neg, c.mech, &mut client, c.creds);
        assert_eq!(actions, vec![delayed_failure("not-authorized", 500)], "{}", c.name);
        assert_eq!(neg.user(), None, "{}", c.name);
    }
}

#[test]
fn sasl_protocol_errors() {
    use StreamErrorCondition as C;
    let plain_b64 = B64.encode(plain_initial_response(None, USER, PASSWORD));
    // (case, connection, plaintext allowed, element, expected actions)
    let cases: Vec<(&str, Conn, bool, String, Vec<NegAction>)> = vec![
        (
            "PLAIN with bad base64",
            Conn::Direct { exporter: false },
            false,
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>not*base64!</auth>".into(),
            vec![delayed_failure("incorrect-encoding", 500)],
        ),
        (
            "unknown mechanism",
            Conn::Direct { exporter: false },
            false,
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='DIGEST-MD5'/>".into(),
            vec![NegAction::Send(failure("invalid-mechanism"))],
        ),
        (
            "mechanism names are case-sensitive",
            Conn::Direct { exporter: false },
            false,
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='plain'/>".into(),
            vec![NegAction::Send(failure("invalid-mechanism"))],
        ),
        (
            "no mechanism attribute",
            Conn::Direct { exporter: false },
            false,
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>".into(),
            vec![NegAction::Send(failure("invalid-mechanism"))],
        ),
        (
            "-PLUS without an exporter",
            Conn::Direct { exporter: false },
            false,
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256-PLUS'/>".into(),
            vec![NegAction::Send(failure("invalid-mechanism"))],
        ),
        (
            "PLAIN without TLS",
            Conn::Plain,
            false,
            format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{plain_b64}</auth>"),
            vec![NegAction::Send(failure("encryption-required"))],
        ),
        (
            "PLAIN without TLS when allowed",
            Conn::Plain,
            true,
            format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{plain_b64}</auth>"),
            vec![NegAction::LookupCredentials { username: USER.into() }],
        ),
        (
            "malformed PLAIN message",
            Conn::Direct { exporter: false },
            false,
            format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{}</auth>", B64.encode("juliet")),
            vec![delayed_failure("malformed-request", 500)],
        ),
        (
            "empty initial response",
            Conn::Direct { exporter: false },
            false,
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>=</auth>".into(),
            vec![NegAction::Send("<challenge xmlns='urn:ietf:params:xml:ns:xmpp-sasl'></challenge>".into())],
        ),
        (
            "no initial response",
            Conn::Direct { exporter: false },
            false,
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'/>".into(),
            vec![NegAction::Send("<challenge xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>".into())],
        ),
        (
            "response outside an exchange",
            Conn::Direct { exporter: false },
            false,
            "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>=</response>".into(),
            vec![close(C::NotAuthorized, "authenticate first")],
        ),
        (
            "message before auth",
            Conn::Direct { exporter: false },
            false,
            "<message to='romeo@example.com'><body>hi</body></message>".into(),
            vec![close(C::NotAuthorized, "authenticate first")],
        ),
        (
            "roster get before auth",
            Conn::Plain,
            false,
            "<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>".into(),
            vec![close(C::NotAuthorized, "authenticate first")],
        ),
        (
            "presence before auth",
            Conn::Plain,
            false,
            "<presence/>".into(),
            vec![close(C::NotAuthorized, "authenticate first")],
        ),
        (
            "bind before auth",
            Conn::Direct { exporter: false },
            false,
            "<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>".into(),
            vec![close(C::NotAuthorized, "authenticate first")],
        ),
    ];
    for (case, conn, allow_plain, xml, want) in cases {
        let mode = match conn {
            Conn::Plain => TlsMode::Starttls,
            Conn::Direct { .. } => TlsMode::Tls,
        };
        let mut config = cfg(mode);
        config.allow_plain_without_tls = allow_plain;
        let mut neg = negotiator(config, conn);
        open(&mut neg);
        assert_eq!(neg.step(el(&xml)), want, "{case}");
    }
}

#[test]
fn sasl_exchange_interruptions() {
    use StreamErrorCondition as C;
    // (case, element sent while the server waits for a response, expected actions)
    let cases: Vec<(&str, &str, Vec<NegAction>)> = vec![
        ("abort", "<abort xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>", vec![delayed_failure("aborted", 500)]),
        (
            "bad base64 response",
            "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>%%%</response>",
            vec![delayed_failure("incorrect-encoding", 500)],
        ),
        (
            "garbage response",
            "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>Z2FyYmFnZQ==</response>",
            vec![delayed_failure("malformed-request", 500)],
        ),
        (
            "a second auth",
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'/>",
            vec![close(C::PolicyViolation, "expected a SASL response")],
        ),
        ("a stanza", "<message><body>x</body></message>", vec![close(C::PolicyViolation, "expected a SASL response")]),
    ];
    for (case, xml, want) in cases {
        let mut neg = negotiator(cfg(TlsMode::Tls), Conn::Direct { exporter: true });
        open(&mut neg);
        let mut client =
            ScramClient::new(HashAlg::Sha256, USER, PASSWORD, ClientChannelBinding::TlsExporter(EXPORTER.to_vec()));
        neg.step(auth("SCRAM-SHA-256-PLUS", Some(&client.client_first())));
        assert!(
            matches!(neg.step(NegEvent::Credentials(Some(scram_credentials()))).as_slice(), [NegAction::Send(c)] if c.starts_with("<challenge"))
        );
        assert_eq!(neg.step(el(xml)), want, "{case}");
        if close_condition(&want).is_none() {
            // Back to the features: a fresh exchange succeeds.
            let mut client =
                ScramClient::new(HashAlg::Sha256, USER, PASSWORD, ClientChannelBinding::TlsExporter(EXPORTER.to_vec()));
            let actions = scram_exchange(&mut neg, Mechanism::ScramSha256Plus, &mut client, Some(scram_credentials()));
            assert_scram_success(&actions, &client);
        }
    }
}

#[test]
fn abort_while_waiting_for_the_first_response() {
    let mut neg = negotiator(cfg(TlsMode::Tls), Conn::Direct { exporter: false });
    open(&mut neg);
    assert_eq!(
        neg.step(auth("SCRAM-SHA-1", None)),
        vec![NegAction::Send("<challenge xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>".into())]
    );
    assert_eq!(
        neg.step(el("<abort xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>")),
        vec![delayed_failure("aborted", 500)]
    );
}

#[test]
fn auth_delay_grows_and_is_capped() {
    let cases = [(0, 500), (1, 500), (2, 1_000), (3, 2_000), (4, 4_000), (5, 8_000), (6, 8_000), (u32::MAX, 8_000)];
    for (failures, ms) in cases {
        assert_eq!(auth_delay(failures), Duration::from_millis(ms), "after {failures} failures");
    }
}

#[test]
fn repeated_failures_are_delayed_then_close_the_stream() {
    // Every kind of failure counts, whatever step it happens at.
    type Fail = fn(&mut Negotiator) -> Vec<NegAction>;
    let wrong_password: Fail = |neg| {
        let mut client = ScramClient::new(HashAlg::Sha256, USER, "wrong", ClientChannelBinding::None);
        scram_exchange(neg, Mechanism::ScramSha256, &mut client, Some(scram_credentials()))
    };
    let abort: Fail = |neg| {
        neg.step(auth("SCRAM-SHA-256", None));
        neg.step(el("<abort xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>"))
    };
    let bad_base64: Fail =
        |neg| neg.step(el("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-1'>@@@</auth>"));
    // (max failures, attempts with the expected answer to each; the last one closes)
    type Attempts = Vec<(Fail, Vec<NegAction>)>;
    let cases: Vec<(u32, Attempts)> = vec![
        (1, vec![(wrong_password, vec![delayed_failure("not-authorized", 500)])]),
        (
            3,
            vec![
                (wrong_password, vec![delayed_failure("not-authorized", 500)]),
                (abort, vec![delayed_failure("aborted", 1_000)]),
                (bad_base64, vec![delayed_failure("incorrect-encoding", 2_000)]),
            ],
        ),
        (
            5,
            vec![
                (bad_base64, vec![delayed_failure("incorrect-encoding", 500)]),
                (bad_base64, vec![delayed_failure("incorrect-encoding", 1_000)]),
                (wrong_password, vec![delayed_failure("not-authorized", 2_000)]),
                (abort, vec![delayed_failure("aborted", 4_000)]),
                (wrong_password, vec![delayed_failure("not-authorized", 8_000)]),
            ],
        ),
    ];
    for (max, attempts) in cases {
        let mut config = cfg(TlsMode::None);
        config.max_auth_failures = max;
        let mut neg = negotiator(config, Conn::Plain);
        open(&mut neg);
        let n = attempts.len();
        for (i, (attempt, mut want)) in attempts.into_iter().enumerate() {
            if i + 1 == n {
                want.push(close(StreamErrorCondition::PolicyViolation, "too many authentication failures"));
            }
            assert_eq!(attempt(&mut neg), want, "max {max}, attempt {}", i + 1);
        }
        // Closed: even a correct login gets nothing.
        let mut client = ScramClient::new(HashAlg::Sha256, USER, PASSWORD, ClientChannelBinding::None);
        assert_eq!(neg.step(auth("SCRAM-SHA-256", Some(&client.client_first()))), vec![], "max {max}");
    }
}

#[test]
fn success_after_failures_below_the_limit() {
    let mut neg = negotiator(cfg(TlsMode::None), Conn::Plain);
    open(&mut neg);
    for ms in [500, 1_000] {
        let mut client = ScramClient::new(HashAlg::Sha1, USER, "wrong", ClientChannelBinding::None);
        assert_eq!(
            scram_exchange(&mut neg, Mechanism::ScramSha1, &mut client, Some(scram_credentials())),
            vec![delayed_failure("not-authorized", ms)]
        );
    }
    // Unknown mechanisms are answered at once and do not count.
    assert_eq!(neg.step(auth("X-OAUTH2", None)), vec![NegAction::Send(failure("invalid-mechanism"))]);
    let mut client = ScramClient::new(HashAlg::Sha1, USER, PASSWORD, ClientChannelBinding::None);
    assert_scram_success(
        &scram_exchange(&mut neg, Mechanism::ScramSha1, &mut client, Some(scram_credentials())),
        &client,
    );
}

// ------------------------------------------------------------------ registration

#[test]
fn in_band_registration() {
    use StanzaErrorCondition as C;
    let get = "<iq type='get' id='reg1'><query xmlns='jabber:iq:register'/></iq>";
    let set = |u: &str, p: &str| {
        format!("<iq type='set' id='reg2'><query xmlns='jabber:iq:register'><username>{u}</username><password>{p}</password></query></iq>")
    };
    /// What the negotiator answers.
    #[derive(Debug)]
    enum Want {
        /// `<iq type='result'/>` with the registration form.
        Form,
        /// `<iq type='error'/>` with this condition.
        Error(&'static str, C),
        /// A [`NegAction::Register`].
        Register(&'static str, &'static str),
    }
    struct Case {
        name: &'static str,
        mode: TlsMode,
        conn: Conn,
        allow_plain: bool,
        registration: bool,
        iq: String,
        want: Want,
    }
    let tls = |name, iq: String, want| Case {
        name,
        mode: TlsMode::Tls,
        conn: Conn::Direct { exporter: false },
        allow_plain: false,
        registration: true,
        iq,
        want,
    };
    let cases = [
        tls("form", get.into(), Want::Form),
        tls("register", set("romeo", "s3cret"), Want::Register("romeo", "s3cret")),
        tls(
            "no password",
            "<iq type='set' id='reg2'><query xmlns='jabber:iq:register'><username>romeo</username></query></iq>".into(),
            Want::Error("reg2", C::NotAcceptable),
        ),
        tls("empty username", set("", "s3cret"), Want::Error("reg2", C::NotAcceptable)),
        tls(
            "result is not a request",
            "<iq type='result' id='reg3'><query xmlns='jabber:iq:register'/></iq>".into(),
            Want::Error("reg3", C::BadRequest),
        ),
        Case { registration: false, ..tls("disabled", get.into(), Want::Error("reg1", C::ServiceUnavailable)) },
        Case {
            registration: false,
            ..tls("disabled, set", set("romeo", "s3cret"), Want::Error("reg2", C::ServiceUnavailable))
        },
        Case {
            mode: TlsMode::Starttls,
            conn: Conn::Plain,
            ..tls("no plaintext passwords", set("romeo", "s3cret"), Want::Error("reg2", C::ServiceUnavailable))
        },
        Case {
            mode: TlsMode::None,
            conn: Conn::Plain,
            allow_plain: true,
            ..tls("plaintext allowed", set("romeo", "s3cret"), Want::Register("romeo", "s3cret"))
        },
        // Required STARTTLS comes first, whatever else is allowed.
        Case {
            mode: TlsMode::StarttlsRequired,
            conn: Conn::Plain,
            allow_plain: true,
            ..tls("STARTTLS required", set("romeo", "s3cret"), Want::Error("reg2", C::ServiceUnavailable))
        },
    ];
    for c in cases {
        let mut config = cfg(c.mode);
        config.allow_plain_without_tls = c.allow_plain;
        config.registration = c.registration;
        let mut neg = negotiator(config, c.conn);
        open(&mut neg);
        let actions = neg.step(el(&c.iq));
        match (&c.want, actions.as_slice()) {
            (Want::Form, [NegAction::Send(xml)]) => {
                let iq = parse(xml);
                assert_eq!((iq.attr("type"), iq.attr("id")), (Some("result"), Some("reg1")), "{}", c.name);
                let q = iq.get_child("query", ns::REGISTER).unwrap();
                assert!(
                    q.has_child("username", ns::REGISTER) && q.has_child("password", ns::REGISTER),
                    "{}: {xml}",
                    c.name
                );
            }
            (Want::Error(id, cond), [NegAction::Send(xml)]) => {
                assert_eq!(iq_summary(xml), ("error".into(), Some((*id).into()), Some(*cond)), "{}", c.name);
            }
            (Want::Register(u, p), [a]) => assert_eq!(
                *a,
                NegAction::Register {
                    host: HOST.into(),
                    username: (*u).into(),
                    password: (*p).into(),
                    id: Some("reg2".into())
                },
                "{}",
                c.name
            ),
            (want, got) => panic!("{}: want {want:?}, got {got:?}", c.name),
        }
    }
}

#[test]
fn registration_outcomes_are_answered() {
    // (outcome, expected iq type and condition)
    let cases = [
        (Ok(()), "result", None),
        (Err(StanzaErrorCondition::Conflict), "error", Some(StanzaErrorCondition::Conflict)),
        (Err(StanzaErrorCondition::NotAcceptable), "error", Some(StanzaErrorCondition::NotAcceptable)),
    ];
    for (result, kind, cond) in cases {
        let mut neg = negotiator(cfg(TlsMode::Tls), Conn::Direct { exporter: false });
        open_on(&mut neg, OTHER_HOST);
        let actions = neg.step(el("<iq type='set' id='r'><query xmlns='jabber:iq:register'><username>romeo</username><password>pw</password></query></iq>"));
        assert!(matches!(&actions[..], [NegAction::Register { host, .. }] if host == OTHER_HOST), "{actions:?}");
        match neg.step(NegEvent::Registered { id: Some("r".into()), result }).as_slice() {
            [NegAction::Send(xml)] if cond.is_none() => {
                assert_eq!(iq_summary(xml), (kind.into(), Some("r".into()), cond))
            }
            // A failure is answered after a pause, as a failed login is.
            [NegAction::SendDelayed(xml, _)] if cond.is_some() => {
                assert_eq!(iq_summary(xml), (kind.into(), Some("r".into()), cond))
            }
            other => panic!("{other:?}"),
        }
        // Still before authentication: the new account can log in now.
        let mut client = ScramClient::new(HashAlg::Sha256, USER, PASSWORD, ClientChannelBinding::None);
        assert_scram_success(
            &scram_exchange(&mut neg, Mechanism::ScramSha256, &mut client, Some(scram_credentials())),
            &client,
        );
    }
}

#[test]
fn one_account_per_stream_and_failed_registrations_end_it_as_failed_logins_do() {
    let set = |u: &str| {
        el(&format!("<iq type='set' id='r'><query xmlns='jabber:iq:register'><username>{u}</username><password>pw</password></query></iq>"))
    };
    let mut neg = negotiator(cfg(TlsMode::Tls), Conn::Direct { exporter: false });
    open_on(&mut neg, HOST);
    assert!(matches!(&neg.step(set("a"))[..], [NegAction::Register { .. }]));
    assert!(matches!(
        &neg.step(NegEvent::Registered { id: Some("r".into()), result: Ok(()) })[..],
        [NegAction::Send(_)]
    ));
    match &neg.step(set("b"))[..] {
        [NegAction::Send(xml)] => {
            assert_eq!(iq_summary(xml), ("error".into(), Some("r".into()), Some(StanzaErrorCondition::NotAllowed)))
        }
        other => panic!("{other:?}"),
    }

    let mut neg = negotiator(cfg(TlsMode::Tls), Conn::Direct { exporter: false });
    open_on(&mut neg, HOST);
    let max = cfg(TlsMode::Tls).max_auth_failures;
    for i in 1..=max {
        assert!(matches!(&neg.step(set("taken"))[..], [NegAction::Register { .. }]));
        let actions = neg
            .step(NegEvent::Registered { id: Some("r".into()), result: Err(StanzaErrorCondition::ResourceConstraint) });
        if i < max {
            assert!(matches!(&actions[..], [NegAction::SendDelayed(..)]), "{actions:?}");
        } else {
            assert!(
                matches!(&actions[..], [NegAction::SendDelayed(..), NegAction::Close(e)] if e.condition == StreamErrorCondition::PolicyViolation),
                "{actions:?}"
            );
        }
    }
}

// ------------------------------------------------------------------ resource binding

#[test]
fn bind_then_established() {
    // (bind request, resource asked for)
    let cases: [(&str, Option<&str>); 4] = [
        ("<iq type='set' id='bind_1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>balcony</resource></bind></iq>", Some("balcony")),
        ("<iq type='set' id='bind_1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>", None),
        ("<iq type='set' id='bind_1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>  </resource></bind></iq>", None),
        ("<iq type='set' id='bind_1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource/></bind></iq>", None),
    ];
    for (xml, resource) in cases {
        let (mut neg, features) = authenticated();
        assert!(features.bind && features.session);
        assert_eq!(
            neg.step(el(xml)),
            vec![NegAction::Bind {
                user: USER.into(),
                host: HOST.into(),
                resource: resource.map(str::to_owned),
                tag: None,
                id: "bind_1".into()
            }],
            "{xml}"
        );
        let jid = parse_full(&format!("{USER}@{HOST}/{}", resource.unwrap_or("generated"))).unwrap();
        assert_eq!(
            neg.step(NegEvent::Bound(Ok(jid.clone()))),
            vec![NegAction::Established { jid, stream_id: SID.into(), opening: Opening::Iq { id: "bind_1".into() } }],
            "{xml}"
        );
        // Negotiation is over; the session owns the stream now.
        assert_eq!(
            neg.step(el(xml)),
            vec![NegAction::Close(StreamError::with_text(
                StreamErrorCondition::NotAuthorized,
                "stanza before the stream is negotiated"
            ))]
        );
    }
}

#[test]
fn bind_failure_is_an_iq_error_with_the_same_id() {
    for cond in
        [StanzaErrorCondition::Conflict, StanzaErrorCondition::BadRequest, StanzaErrorCondition::ResourceConstraint]
    {
        let (mut neg, _) = authenticated();
        let req = "<iq type='set' id='b-42'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>r</resource></bind></iq>";
        assert!(matches!(neg.step(el(req)).as_slice(), [NegAction::Bind { .. }]));
        match neg.step(NegEvent::Bound(Err(cond))).as_slice() {
            [NegAction::Send(xml)] => assert_eq!(iq_summary(xml), ("error".into(), Some("b-42".into()), Some(cond))),
            other => panic!("{other:?}"),
        }
        // The client may try again.
        assert!(matches!(neg.step(el(req)).as_slice(), [NegAction::Bind { id, .. }] if id == "b-42"));
    }
}

#[test]
fn after_authentication_only_bind_is_accepted() {
    use StreamErrorCondition as C;
    let not_bound = || close(C::NotAuthorized, "bind a resource first");
    // (element, expected actions)
    let cases: Vec<(&str, Vec<NegAction>)> = vec![
        ("<message to='romeo@example.com'><body>hi</body></message>", vec![not_bound()]),
        ("<iq type='get' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>", vec![not_bound()]),
        ("<iq type='set' id='s'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>", vec![not_bound()]),
        ("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'/>", vec![not_bound()]),
    ];
    for (xml, want) in cases {
        let (mut neg, _) = authenticated();
        assert_eq!(neg.step(el(xml)), want, "{xml}");
    }
    // A stream header where none may come is invalid XML.
    let (mut neg, _) = authenticated();
    assert_eq!(close_condition(&neg.step(NegEvent::Header(header()))), Some(C::InvalidXml));
}

#[test]
fn events_out_of_order_close_the_stream() {
    use StreamErrorCondition as C;
    let bound = || NegEvent::Bound(Ok(parse_full("juliet@example.com/r").unwrap()));
    // (case, event after the first features, expected stream error)
    let cases: Vec<(&str, NegEvent, C)> = vec![
        ("second header", NegEvent::Header(header()), C::InvalidXml),
        ("TLS nobody started", NegEvent::TlsEstablished { exporter: None, client_cert: None }, C::InternalServerError),
        ("credentials nobody asked for", NegEvent::Credentials(None), C::InternalServerError),
        ("bind result before auth", bound(), C::InternalServerError),
    ];
    for (case, ev, want) in cases {
        let mut neg = negotiator(cfg(TlsMode::Starttls), Conn::Plain);
        open(&mut neg);
        assert_eq!(close_condition(&neg.step(ev)), Some(want), "{case}");
        assert_eq!(neg.step(NegEvent::Header(header())), vec![], "{case}: closed for good");
    }
    // Before the header, anything else is refused too.
    let mut neg = negotiator(cfg(TlsMode::Starttls), Conn::Plain);
    assert_eq!(close_condition(&neg.step(el("<presence/>"))), Some(C::NotAuthorized));
}

#[test]
fn module_features_are_offered_before_and_after_authentication() {
    let caps = "<c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='n' ver='v'/>";
    let csi = "<csi xmlns='urn:xmpp:csi:0'/>";
    let mut neg = negotiator(cfg(TlsMode::Tls), Conn::Direct { exporter: true })
        .with_extra_features(caps.into(), format!("{caps}{csi}"));
    let features_of = |actions: Vec<NegAction>| match actions.as_slice() {
        [NegAction::Send(_), NegAction::Send(f)] => parse(f),
        other => panic!("expected header and features, got {other:?}"),
    };
    let pre = features_of(neg.step(NegEvent::Header(header())));
    assert!(pre.has_child("c", ns::CAPS) && !pre.has_child("csi", "urn:xmpp:csi:0"), "{pre}");
    assert!(pre.has_child("mechanisms", ns::SASL));
    neg.step(auth("PLAIN", Some(&plain_initial_response(None, USER, PASSWORD))));
    neg.step(NegEvent::Credentials(Some(Credentials::Plain(PASSWORD.into()))));
    let post = features_of(neg.step(NegEvent::Header(header())));
    let names: Vec<&str> = post.elements().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["bind", "session", "c", "csi"]);
    assert_eq!(post.get_child("c", ns::CAPS).and_then(|c| c.attr("ver")), Some("v"));
}

#[test]
fn stream_management_resume_instead_of_bind() {
    let (mut neg, _) = authenticated();
    // XEP-0198 is enabled after bind, not before.
    match neg.step(el("<enable xmlns='urn:xmpp:sm:3'/>")).as_slice() {
        [NegAction::Send(xml)] => assert!(xml.contains("unexpected-request"), "{xml}"),
        other => panic!("{other:?}"),
    }
    // A resume without h is malformed.
    match neg.step(el("<resume xmlns='urn:xmpp:sm:3' previd='x'/>")).as_slice() {
        [NegAction::Send(xml)] => assert!(xml.contains("bad-request"), "{xml}"),
        other => panic!("{other:?}"),
    }
    let resume = "<resume xmlns='urn:xmpp:sm:3' previd='abc' h='7'/>";
    assert_eq!(
        neg.step(el(resume)),
        vec![NegAction::Resume { user: USER.into(), host: HOST.into(), previd: "abc".into(), h: 7, sasl2: None }]
    );
    // Unknown: item-not-found, and the client may bind instead.
    match neg.step(NegEvent::Resumed(false)).as_slice() {
        [NegAction::Send(xml)] => assert!(xml.contains("<failed") && xml.contains("item-not-found"), "{xml}"),
        other => panic!("{other:?}"),
    }
    let req = "<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>";
    assert!(matches!(neg.step(el(req)).as_slice(), [NegAction::Bind { .. }]));

    let (mut neg, _) = authenticated();
    assert!(matches!(neg.step(el(resume)).as_slice(), [NegAction::Resume { .. }]));
    // Negotiation is over: the session owns the stream now.
    assert_eq!(neg.step(NegEvent::Resumed(true)), vec![]);
}

// ------------------------------------------------------------------ EXTERNAL

fn external_cfg() -> NegotiationConfig {
    let mut c = cfg(TlsMode::StarttlsRequired);
    c.mechanisms.insert(0, Mechanism::External);
    c.external_checks = vec![ExternalCheck::Standard, ExternalCheck::CommonName];
    c
}

fn cert_of(addrs: &[&str], cn: Option<&str>) -> CertIdentity {
    CertIdentity {
        xmpp_addrs: addrs.iter().map(|a| a.to_string()).collect(),
        common_name: cn.map(str::to_owned),
        dns_names: Vec::new(),
    }
}

/// STARTTLS with this client certificate; the features after it.
fn starttls_with_cert(neg: &mut Negotiator, cert: Option<CertIdentity>) -> Features {
    open(neg);
    neg.step(el("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"));
    assert_eq!(neg.step(NegEvent::TlsEstablished { exporter: Some(EXPORTER.to_vec()), client_cert: cert }), vec![]);
    open(neg)
}

fn success_then_reset() -> Vec<NegAction> {
    vec![NegAction::Send("<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'></success>".into()), NegAction::ResetParser]
}

#[test]
fn external_is_offered_first_only_with_a_verified_certificate() {
    let mut neg = negotiator(external_cfg(), Conn::Plain);
    let f = starttls_with_cert(&mut neg, Some(cert_of(&["juliet@example.com"], None)));
    assert_eq!(f.mechanisms.first().map(String::as_str), Some("EXTERNAL"));
    let mut neg = negotiator(external_cfg(), Conn::Plain);
    let f = starttls_with_cert(&mut neg, None);
    assert!(!f.mechanisms.iter().any(|m| m == "EXTERNAL"), "{f:?}");
    // Not configured: never offered, even with a certificate.
    let mut neg = negotiator(cfg(TlsMode::StarttlsRequired), Conn::Plain);
    let f = starttls_with_cert(&mut neg, Some(cert_of(&["juliet@example.com"], None)));
    assert!(!f.mechanisms.iter().any(|m| m == "EXTERNAL"), "{f:?}");
    // Direct TLS hands the certificate over at the start.
    let mut neg = negotiator(external_cfg(), Conn::Direct { exporter: true })
        .with_client_certificate(Some(cert_of(&["juliet@example.com"], None)));
    assert_eq!(open(&mut neg).mechanisms.first().map(String::as_str), Some("EXTERNAL"));
}

#[test]
fn external_logs_in_as_the_certificates_account_with_or_without_an_initial_response() {
    for initial in [Some(&b""[..]), None, Some(&b"juliet@example.com"[..])] {
        let mut neg = negotiator(external_cfg(), Conn::Plain);
        starttls_with_cert(&mut neg, Some(cert_of(&["juliet@example.com"], None)));
        let mut actions = neg.step(auth("EXTERNAL", initial));
        if initial.is_none() {
            assert_eq!(actions, vec![NegAction::Send("<challenge xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>".into())]);
            actions = neg.step(el("<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>=</response>"));
        }
        assert_eq!(actions, vec![NegAction::LookupCredentials { username: USER.into() }], "{initial:?}");
        assert!(!neg.credentials_need_hashing(Some(&Credentials::Plain("x".into()))));
        assert_eq!(neg.step(NegEvent::Credentials(Some(scram_credentials()))), success_then_reset());
        assert_eq!(neg.user(), Some(USER));
    }
}

#[test]
fn external_refusals() {
    let juliet = || Some(cert_of(&["juliet@example.com"], None));
    // No certificate that verified: not-authorized, counted as a failure.
    let mut neg = negotiator(external_cfg(), Conn::Plain);
    starttls_with_cert(&mut neg, None);
    assert_eq!(neg.step(auth("EXTERNAL", Some(b""))), vec![delayed_failure("not-authorized", 500)]);
    // The account does not exist.
    let mut neg = negotiator(external_cfg(), Conn::Plain);
    starttls_with_cert(&mut neg, juliet());
    neg.step(auth("EXTERNAL", Some(b"")));
    assert_eq!(neg.step(NegEvent::Credentials(None)), vec![delayed_failure("not-authorized", 500)]);
    assert_eq!(neg.user(), None);
    // Another user's authzid.
    let mut neg = negotiator(external_cfg(), Conn::Plain);
    starttls_with_cert(&mut neg, juliet());
    assert_eq!(neg.step(auth("EXTERNAL", Some(b"romeo@example.com"))), vec![delayed_failure("invalid-authzid", 500)]);
    // A certificate of another domain than the stream's.
    let mut neg = negotiator(external_cfg(), Conn::Plain);
    starttls_with_cert(&mut neg, Some(cert_of(&["juliet@other.example"], None)));
    assert_eq!(neg.step(auth("EXTERNAL", Some(b""))), vec![delayed_failure("invalid-authzid", 500)]);
    // Several xmppAddrs: the client must choose one.
    let mut neg = negotiator(external_cfg(), Conn::Plain);
    starttls_with_cert(&mut neg, Some(cert_of(&["juliet@example.com", "nurse@example.com"], None)));
    assert_eq!(neg.step(auth("EXTERNAL", Some(b""))), vec![delayed_failure("invalid-authzid", 500)]);
    // Not enabled at all: an unknown mechanism, as before.
    let mut neg = negotiator(cfg(TlsMode::StarttlsRequired), Conn::Plain);
    starttls_with_cert(&mut neg, juliet());
    assert_eq!(neg.step(auth("EXTERNAL", Some(b""))), vec![NegAction::Send(failure("invalid-mechanism"))]);
}

#[test]
fn external_maps_a_common_name_when_the_certificate_has_no_xmpp_addr() {
    let mut neg = negotiator(external_cfg(), Conn::Plain);
    starttls_with_cert(&mut neg, Some(cert_of(&[], Some(USER))));
    assert_eq!(neg.step(auth("EXTERNAL", Some(b""))), vec![NegAction::LookupCredentials { username: USER.into() }]);
    // Only the standard check configured: a CN-only certificate logs nobody in.
    let mut c = external_cfg();
    c.external_checks = vec![ExternalCheck::Standard];
    let mut neg = negotiator(c, Conn::Plain);
    starttls_with_cert(&mut neg, Some(cert_of(&[], Some(USER))));
    assert_eq!(neg.step(auth("EXTERNAL", Some(b""))), vec![delayed_failure("not-authorized", 500)]);
}

// ------------------------------------------------------------------ SASL2 and Bind2

fn sasl2_cfg() -> NegotiationConfig {
    let mut c = cfg(TlsMode::Tls);
    c.modules.sasl2 = true;
    c.modules.bind2 = true;
    c
}

/// A direct-TLS negotiator offering SASL2 with these module features.
fn sasl2_negotiator(c: NegotiationConfig) -> (Negotiator, Element) {
    let features = crate::ext::StreamFeatures {
        bind2_inline: "<feature xmlns='urn:xmpp:bind:0' var='urn:xmpp:sm:3'/>".into(),
        ..Default::default()
    };
    let mut neg = negotiator(c, Conn::Direct { exporter: true }).with_module_features(&features);
    let actions = neg.step(NegEvent::Header(header()));
    let [NegAction::Send(_), NegAction::Send(f)] = actions.as_slice() else { panic!("{actions:?}") };
    let f = parse(f);
    (neg, f)
}

fn authenticate(mech: &str, initial: Option<&[u8]>, extra: &str) -> NegEvent {
    let initial = match initial {
        None => String::new(),
        Some(d) => format!("<initial-response>{}</initial-response>", B64.encode(d)),
    };
    el(&format!(
        "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='{mech}'>{initial}<user-agent id='d4565fa7-4d72-4749-b3d3-740edbf87770'><software>AwesomeXMPP</software></user-agent>{extra}</authenticate>"
    ))
}

/// The SASL2 challenge we sent, decoded.
fn sasl2_challenge(actions: &[NegAction]) -> Vec<u8> {
    match actions {
        [NegAction::Send(xml)] => {
            let c = parse(xml);
            assert!(c.is("challenge", ns::SASL2), "{xml}");
            B64.decode(c.text()).unwrap()
        }
        other => panic!("expected a SASL2 challenge, got {other:?}"),
    }
}

#[test]
fn sasl2_is_offered_with_the_same_mechanisms_and_bind2_with_the_modules_inline_features() {
    let (_, f) = sasl2_negotiator(sasl2_cfg());
    let legacy: Vec<String> = f.get_child("mechanisms", ns::SASL).unwrap().elements().map(|m| m.text()).collect();
    let auth = f.get_child("authentication", ns::SASL2).expect("SASL2 offered");
    let v2: Vec<String> = auth.elements().filter(|e| e.name == "mechanism").map(|m| m.text()).collect();
    assert_eq!(v2, legacy);
    let bind = auth.get_child("inline", ns::SASL2).and_then(|i| i.get_child("bind", ns::BIND2)).expect("bind2");
    let vars: Vec<&str> =
        bind.get_child("inline", ns::BIND2).unwrap().elements().filter_map(|f| f.attr("var")).collect();
    assert_eq!(vars, [ns::SM]);
    // Off: neither; and <authenticate/> is then no way in.
    let mut neg = negotiator(cfg(TlsMode::Tls), Conn::Direct { exporter: true });
    assert!(open(&mut neg).mechanisms.len() > 1);
    let actions = neg.step(authenticate("PLAIN", Some(&plain_initial_response(None, USER, PASSWORD)), ""));
    assert_eq!(close_condition(&actions), Some(StreamErrorCondition::NotAuthorized));
}

#[test]
fn scram_plus_inside_sasl2_with_bind2_binds_in_the_same_round_trip() {
    let (mut neg, _) = sasl2_negotiator(sasl2_cfg());
    let mut client =
        ScramClient::new(HashAlg::Sha256, USER, PASSWORD, ClientChannelBinding::TlsExporter(EXPORTER.to_vec()));
    let bind =
        "<bind xmlns='urn:xmpp:bind:0'><tag>AwesomeXMPP</tag><enable xmlns='urn:xmpp:sm:3' resume='true'/></bind>";
    let actions = neg.step(authenticate("SCRAM-SHA-256-PLUS", Some(&client.client_first()), bind));
    assert_eq!(actions, vec![NegAction::LookupCredentials { username: USER.into() }]);
    let server_first = sasl2_challenge(&neg.step(NegEvent::Credentials(Some(scram_credentials()))));
    let client_final = client.handle_server_first(&server_first).unwrap();
    // xmpp.js puts a mechanism on <response/>: tolerated.
    let response = format!(
        "<response xmlns='urn:xmpp:sasl:2' mechanism='SCRAM-SHA-256-PLUS'>{}</response>",
        B64.encode(&client_final)
    );
    let actions = neg.step(el(&response));
    assert_eq!(
        actions,
        vec![NegAction::Bind {
            user: USER.into(),
            host: HOST.into(),
            resource: None,
            tag: Some("AwesomeXMPP".into()),
            id: String::new()
        }]
    );
    let jid = parse_full(&format!("{USER}@{HOST}/AwesomeXMPP.1234")).unwrap();
    let actions = neg.step(NegEvent::Bound(Ok(jid.clone())));
    let [NegAction::Established { jid: bound, opening: Opening::Sasl2 { additional_data, inline, extra }, .. }] =
        actions.as_slice()
    else {
        panic!("{actions:?}")
    };
    assert_eq!(*bound, jid);
    assert_eq!(inline.len(), 1);
    assert!(inline[0].is("enable", ns::SM));
    // The server signature travels in <additional-data/>, and the client checks it.
    client.verify_server_final(&B64.decode(additional_data.as_deref().unwrap()).unwrap()).unwrap();
    assert!(extra.is_empty());
    let success = Opening::sasl2_success(additional_data.as_deref(), &jid, vec![], &[]);
    let xml = success.to_xml(ns::CLIENT);
    let parsed = parse(&xml);
    assert_eq!(parsed.get_child("authorization-identifier", ns::SASL2).unwrap().text(), jid.to_string());
    assert!(parsed.has_child("bound", ns::BIND2), "{xml}");
}

#[test]
fn sasl2_without_bind2_succeeds_with_the_bare_jid_and_continues_without_a_restart() {
    let mut c = sasl2_cfg();
    c.modules.bind2 = false;
    let (mut neg, f) = sasl2_negotiator(c);
    let inline = f.get_child("authentication", ns::SASL2).unwrap().get_child("inline", ns::SASL2).unwrap();
    assert!(!inline.has_child("bind", ns::BIND2));
    // A <bind/> request is ignored when Bind2 is off.
    let bind = "<bind xmlns='urn:xmpp:bind:0'><tag>x</tag></bind>";
    let actions = neg.step(authenticate("PLAIN", Some(&plain_initial_response(None, USER, PASSWORD)), bind));
    assert_eq!(actions, vec![NegAction::LookupCredentials { username: USER.into() }]);
    let actions = neg.step(NegEvent::Credentials(Some(Credentials::Plain(PASSWORD.into()))));
    let [NegAction::Send(success), NegAction::Send(features)] = actions.as_slice() else { panic!("{actions:?}") };
    let success = parse(success);
    assert!(success.is("success", ns::SASL2));
    assert_eq!(success.get_child("authorization-identifier", ns::SASL2).unwrap().text(), format!("{USER}@{HOST}"));
    let features = Features::parse(features);
    assert!(features.bind && features.mechanisms.is_empty());
    // The RFC 6120 bind follows on the same stream.
    let actions = neg.step(el("<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>"));
    assert!(matches!(actions.as_slice(), [NegAction::Bind { tag: None, .. }]), "{actions:?}");
}

#[test]
fn sasl2_failures_are_in_its_namespace_and_the_client_may_try_again() {
    let (mut neg, _) = sasl2_negotiator(sasl2_cfg());
    let wrong = plain_initial_response(None, USER, "wrong");
    neg.step(authenticate("PLAIN", Some(&wrong), ""));
    let actions = neg.step(NegEvent::Credentials(Some(Credentials::Plain(PASSWORD.into()))));
    let not_authorized =
        "<failure xmlns='urn:xmpp:sasl:2'><not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/></failure>";
    assert_eq!(actions, vec![NegAction::SendDelayed(not_authorized.into(), Duration::from_millis(500))]);
    // An unknown mechanism, then an abort.
    assert_eq!(
        neg.step(authenticate("X-UNKNOWN", None, "")),
        vec![NegAction::Send(
            "<failure xmlns='urn:xmpp:sasl:2'><invalid-mechanism xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/></failure>"
                .into()
        )]
    );
    let actions = neg.step(authenticate("SCRAM-SHA-256", None, ""));
    assert_eq!(actions, vec![NegAction::Send("<challenge xmlns='urn:xmpp:sasl:2'/>".into())]);
    let actions = neg.step(el("<abort xmlns='urn:xmpp:sasl:2'/>"));
    assert!(matches!(actions.as_slice(), [NegAction::SendDelayed(x, _)] if x.contains("<aborted ")), "{actions:?}");
    // Then a good password on the same stream.
    neg.step(authenticate("PLAIN", Some(&plain_initial_response(None, USER, PASSWORD)), ""));
    let actions = neg.step(NegEvent::Credentials(Some(Credentials::Plain(PASSWORD.into()))));
    assert!(matches!(actions.as_slice(), [NegAction::Send(s), _] if s.contains("urn:xmpp:sasl:2")), "{actions:?}");
    // A response in the other profile's namespace is a protocol error.
    let (mut neg, _) = sasl2_negotiator(sasl2_cfg());
    neg.step(authenticate("SCRAM-SHA-256", None, ""));
    let actions = neg.step(response(b"n,,n=juliet,r=abc"));
    assert_eq!(close_condition(&actions), Some(StreamErrorCondition::PolicyViolation));
}

#[test]
fn sasl2_needs_tls_first_where_tls_is_required() {
    let mut c = sasl2_cfg();
    c.tls_mode = TlsMode::StarttlsRequired;
    let mut neg = negotiator(c, Conn::Plain);
    let f = open(&mut neg);
    assert!(f.mechanisms.is_empty());
    let actions = neg.step(authenticate("PLAIN", Some(&plain_initial_response(None, USER, PASSWORD)), ""));
    assert_eq!(
        actions.first(),
        Some(&NegAction::Send(
            "<failure xmlns='urn:xmpp:sasl:2'><encryption-required xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/></failure>"
                .into()
        ))
    );
    assert_eq!(close_condition(&actions), Some(StreamErrorCondition::PolicyViolation));
}

// ------------------------------------------------------------------ FAST

const AGENT: &str = "d4565fa7-4d72-4749-b3d3-740edbf87770";

fn fast_cfg() -> NegotiationConfig {
    let mut c = sasl2_cfg();
    c.modules.fast = Some(FastSettings {
        mechanisms: HtMechanism::ALL.to_vec(),
        validity: Duration::from_secs(3 * 86_400),
        rotate_before: Duration::from_secs(6 * 3_600),
    });
    c
}

fn ht(name: &str) -> HtMechanism {
    HtMechanism::from_name(name).unwrap()
}

fn stored(token: &str, mech: &str, expires_at: i64) -> meerkat_storage::FastToken {
    meerkat_storage::FastToken { token: token.into(), expires_at, count: 0, mechanism: mech.into() }
}

fn issued() -> IssuedToken {
    IssuedToken { token: "n3wt0k3n".into(), expiry: "2026-12-09T12:00:00Z".into() }
}

/// `<authenticate/>` with a FAST mechanism and its proof for `token`.
fn fast_authenticate(mech: &str, token: &str, cb: &[u8], fast: &str) -> NegEvent {
    let initial = ht(mech).initial_response(USER, token, cb);
    authenticate(mech, Some(&initial), &format!("<bind xmlns='urn:xmpp:bind:0'><tag>app</tag></bind>{fast}"))
}

const NOW: i64 = 1_800_000_000;

#[test]
fn fast_mechanisms_are_offered_inline_and_exporter_bound_ones_only_with_an_exporter() {
    let (_, f) = sasl2_negotiator(fast_cfg());
    let inline = f.get_child("authentication", ns::SASL2).unwrap().get_child("inline", ns::SASL2).unwrap();
    let mechs: Vec<String> = inline.get_child("fast", ns::FAST).unwrap().elements().map(|m| m.text()).collect();
    assert_eq!(mechs.len(), 12);
    assert!(mechs.contains(&"HT-SHA-256-EXPR".to_owned()) && mechs.contains(&"HT-SHA-256-NONE".to_owned()));
    // Not among the SASL mechanisms.
    let sasl: Vec<String> = f.get_child("mechanisms", ns::SASL).unwrap().elements().map(|m| m.text()).collect();
    assert!(!sasl.iter().any(|m| m.starts_with("HT-")), "{sasl:?}");
    let mut neg = negotiator(fast_cfg(), Conn::Direct { exporter: false });
    let actions = neg.step(NegEvent::Header(header()));
    let [_, NegAction::Send(f)] = actions.as_slice() else { panic!() };
    let f = parse(f);
    let fast = f.get_child("authentication", ns::SASL2).unwrap().get_child("inline", ns::SASL2).unwrap();
    let mechs: Vec<String> = fast.get_child("fast", ns::FAST).unwrap().elements().map(|m| m.text()).collect();
    assert_eq!(mechs.len(), 6);
    assert!(mechs.iter().all(|m| m.ends_with("-NONE")), "{mechs:?}");
}

#[test]
fn a_password_login_asking_for_a_token_gets_one_in_success() {
    let (mut neg, _) = sasl2_negotiator(fast_cfg());
    let extra = "<bind xmlns='urn:xmpp:bind:0'><tag>app</tag></bind><request-token xmlns='urn:xmpp:fast:0' mechanism='HT-SHA-256-NONE'/>";
    neg.step(authenticate("PLAIN", Some(&plain_initial_response(None, USER, PASSWORD)), extra));
    let actions = neg.step(NegEvent::Credentials(Some(Credentials::Plain(PASSWORD.into()))));
    assert_eq!(
        actions,
        vec![NegAction::Fast {
            username: USER.into(),
            user_agent: AGENT.into(),
            op: FastOp::Issue { mechanism: ht("HT-SHA-256-NONE") }
        }]
    );
    let actions = neg.step(NegEvent::FastDone { ok: true, issued: Some(issued()) });
    assert!(matches!(actions.as_slice(), [NegAction::Bind { tag: Some(t), .. }] if t == "app"), "{actions:?}");
    let jid = parse_full(&format!("{USER}@{HOST}/app.1")).unwrap();
    let actions = neg.step(NegEvent::Bound(Ok(jid.clone())));
    let [NegAction::Established { opening: Opening::Sasl2 { extra, .. }, .. }] = actions.as_slice() else {
        panic!("{actions:?}")
    };
    let xml = Opening::sasl2_success(None, &jid, vec![], extra).to_xml(ns::CLIENT);
    let token = parse(&xml).get_child("token", ns::FAST).cloned().unwrap();
    assert_eq!(token.attr("token"), Some("n3wt0k3n"));
    assert_eq!(token.attr("expiry"), Some("2026-12-09T12:00:00Z"));
    // A mechanism not offered: no token asked for.
    let (mut neg, _) = sasl2_negotiator(fast_cfg());
    let extra = "<request-token xmlns='urn:xmpp:fast:0' mechanism='HT-MD5-NONE'/>";
    neg.step(authenticate("PLAIN", Some(&plain_initial_response(None, USER, PASSWORD)), extra));
    let actions = neg.step(NegEvent::Credentials(Some(Credentials::Plain(PASSWORD.into()))));
    assert!(matches!(actions.first(), Some(NegAction::Send(s)) if s.contains("<success")), "{actions:?}");
}

#[test]
fn a_fast_login_takes_one_round_trip_and_proves_the_server_too() {
    let (mut neg, _) = sasl2_negotiator(fast_cfg());
    let actions = neg.step(fast_authenticate("HT-SHA-256-NONE", "t0k3n", b"", ""));
    assert_eq!(actions, vec![NegAction::LookupFastTokens { username: USER.into(), user_agent: AGENT.into() }]);
    let tokens = FastTokens { current: Some(stored("t0k3n", "HT-SHA-256-NONE", NOW + 86_400)), new: None };
    // The token in use, no count, nothing to issue: nothing to write, so binding follows at once.
    let actions = neg.step(NegEvent::FastTokens { tokens, now: NOW });
    assert!(matches!(actions.as_slice(), [NegAction::Bind { .. }]), "{actions:?}");
    let jid = parse_full(&format!("{USER}@{HOST}/app.1")).unwrap();
    let actions = neg.step(NegEvent::Bound(Ok(jid)));
    let [NegAction::Established { opening: Opening::Sasl2 { additional_data: Some(d), extra, .. }, .. }] =
        actions.as_slice()
    else {
        panic!("{actions:?}")
    };
    assert!(extra.is_empty(), "no token: {extra:?}");
    assert_eq!(B64.decode(d).unwrap(), ht("HT-SHA-256-NONE").responder("t0k3n", b""));
    assert_eq!(neg.user(), Some(USER));
}

#[test]
fn fast_tokens_rotate_near_expiry_and_the_next_one_is_accepted() {
    // The current token expires within rotate_before_expire: the next one comes with success.
    let (mut neg, _) = sasl2_negotiator(fast_cfg());
    neg.step(fast_authenticate("HT-SHA-256-NONE", "old", b"", ""));
    let tokens = FastTokens { current: Some(stored("old", "HT-SHA-256-NONE", NOW + 3_600)), new: None };
    let actions = neg.step(NegEvent::FastTokens { tokens, now: NOW });
    assert!(
        matches!(actions.as_slice(), [NegAction::Fast { op: FastOp::Use { slot: FastSlot::Current, issue: Some(m), .. }, .. }] if *m == ht("HT-SHA-256-NONE")),
        "{actions:?}"
    );
    // The next token, already issued, works (and becomes current in storage).
    let (mut neg, _) = sasl2_negotiator(fast_cfg());
    neg.step(fast_authenticate("HT-SHA-256-NONE", "next", b"", ""));
    let tokens = FastTokens {
        current: Some(stored("old", "HT-SHA-256-NONE", NOW + 3_600)),
        new: Some(stored("next", "HT-SHA-256-NONE", NOW + 3 * 86_400)),
    };
    let actions = neg.step(NegEvent::FastTokens { tokens, now: NOW });
    assert!(
        matches!(
            actions.as_slice(),
            [NegAction::Fast { op: FastOp::Use { slot: FastSlot::New, issue: None, .. }, .. }]
        ),
        "{actions:?}"
    );
}

#[test]
fn fast_refusals() {
    let not_authorized = || {
        vec![NegAction::SendDelayed(
            "<failure xmlns='urn:xmpp:sasl:2'><not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/></failure>"
                .into(),
            Duration::from_millis(500),
        )]
    };
    let cases: Vec<(&str, FastTokens)> = vec![
        ("no token", FastTokens::default()),
        ("another token", FastTokens { current: Some(stored("other", "HT-SHA-256-NONE", NOW + 60)), new: None }),
        ("expired", FastTokens { current: Some(stored("t0k3n", "HT-SHA-256-NONE", NOW - 1)), new: None }),
        ("another mechanism", FastTokens { current: Some(stored("t0k3n", "HT-SHA-512-NONE", NOW + 60)), new: None }),
    ];
    for (case, tokens) in cases {
        let (mut neg, _) = sasl2_negotiator(fast_cfg());
        neg.step(fast_authenticate("HT-SHA-256-NONE", "t0k3n", b"", ""));
        assert_eq!(neg.step(NegEvent::FastTokens { tokens, now: NOW }), not_authorized(), "{case}");
        assert_eq!(neg.user(), None, "{case}");
        // The client falls back to its password on the same stream.
        neg.step(authenticate("PLAIN", Some(&plain_initial_response(None, USER, PASSWORD)), ""));
        let actions = neg.step(NegEvent::Credentials(Some(Credentials::Plain(PASSWORD.into()))));
        assert!(matches!(actions.first(), Some(NegAction::Send(s)) if s.contains("<success")), "{case}: {actions:?}");
    }
    // A replayed count, found when the store updates it.
    let (mut neg, _) = sasl2_negotiator(fast_cfg());
    neg.step(fast_authenticate("HT-SHA-256-NONE", "t0k3n", b"", "<fast xmlns='urn:xmpp:fast:0' count='7'/>"));
    let tokens = FastTokens { current: Some(stored("t0k3n", "HT-SHA-256-NONE", NOW + 86_400)), new: None };
    let actions = neg.step(NegEvent::FastTokens { tokens, now: NOW });
    assert!(matches!(actions.as_slice(), [NegAction::Fast { op: FastOp::Use { count: 7, .. }, .. }]), "{actions:?}");
    assert_eq!(neg.step(NegEvent::FastDone { ok: false, issued: None }), not_authorized());
    assert_eq!(neg.user(), None);
    // No user agent, no initial response, garbage: malformed.
    let (mut neg, _) = sasl2_negotiator(fast_cfg());
    let initial = ht("HT-SHA-256-NONE").initial_response(USER, "t", b"");
    let actions = neg.step(el(&format!(
        "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='HT-SHA-256-NONE'><initial-response>{}</initial-response></authenticate>",
        B64.encode(&initial)
    )));
    assert!(
        matches!(actions.as_slice(), [NegAction::SendDelayed(x, _)] if x.contains("malformed-request")),
        "{actions:?}"
    );
    let actions = neg.step(authenticate("HT-SHA-256-NONE", None, ""));
    assert!(
        matches!(actions.as_slice(), [NegAction::SendDelayed(x, _)] if x.contains("malformed-request")),
        "{actions:?}"
    );
    // FAST off: an HT mechanism is unknown.
    let (mut neg, _) = sasl2_negotiator(sasl2_cfg());
    let actions = neg.step(fast_authenticate("HT-SHA-256-NONE", "t0k3n", b"", ""));
    assert!(matches!(actions.as_slice(), [NegAction::Send(x)] if x.contains("invalid-mechanism")), "{actions:?}");
}

#[test]
fn fast_expr_is_bound_to_the_connection_and_invalidate_forgets_the_tokens() {
    let (mut neg, _) = sasl2_negotiator(fast_cfg());
    // A proof made for another TLS connection's exporter.
    neg.step(fast_authenticate("HT-SHA-256-EXPR", "t0k3n", &[0x17; 32], ""));
    let tokens = FastTokens { current: Some(stored("t0k3n", "HT-SHA-256-EXPR", NOW + 86_400)), new: None };
    let actions = neg.step(NegEvent::FastTokens { tokens: tokens.clone(), now: NOW });
    assert!(
        matches!(actions.as_slice(), [NegAction::SendDelayed(x, _)] if x.contains("not-authorized")),
        "{actions:?}"
    );
    // This connection's, with invalidate: no next token, even near expiry.
    neg.step(fast_authenticate(
        "HT-SHA-256-EXPR",
        "t0k3n",
        &EXPORTER,
        "<fast xmlns='urn:xmpp:fast:0' invalidate='true'/>",
    ));
    let actions = neg.step(NegEvent::FastTokens { tokens, now: NOW });
    assert!(
        matches!(actions.as_slice(), [NegAction::Fast { op: FastOp::Use { invalidate: true, issue: None, .. }, .. }]),
        "{actions:?}"
    );
}

// ------------------------------------------------------------------ XEP-0198 inside SASL2

fn resume_cfg() -> NegotiationConfig {
    let mut c = sasl2_cfg();
    c.modules.sasl2_resume = true;
    c
}

#[test]
fn an_inline_resume_hands_the_stream_to_the_session_which_writes_success() {
    let (mut neg, _) = sasl2_negotiator(resume_cfg());
    let extra = "<resume xmlns='urn:xmpp:sm:3' previd='abc' h='7'/><bind xmlns='urn:xmpp:bind:0'><tag>t</tag></bind>";
    neg.step(authenticate("PLAIN", Some(&plain_initial_response(None, USER, PASSWORD)), extra));
    let actions = neg.step(NegEvent::Credentials(Some(Credentials::Plain(PASSWORD.into()))));
    assert_eq!(
        actions,
        vec![NegAction::Resume {
            user: USER.into(),
            host: HOST.into(),
            previd: "abc".into(),
            h: 7,
            sasl2: Some(Sasl2Resume { additional_data: None, token: None }),
        }]
    );
    // Resumed: the session wrote <success/> with <resumed/>; negotiation is over.
    assert_eq!(neg.step(NegEvent::Resumed(true)), vec![]);
    let jid = parse_full(&format!("{USER}@{HOST}/t.1")).unwrap();
    let resumed = meerkat_xmpp::sm::resumed("abc", 3);
    let xml =
        Opening::sasl2_resumed(&Sasl2Resume { additional_data: None, token: None }, &jid, resumed).to_xml(ns::CLIENT);
    let success = parse(&xml);
    assert!(success.is("success", ns::SASL2), "{xml}");
    assert_eq!(success.get_child("authorization-identifier", ns::SASL2).unwrap().text(), jid.to_string());
    assert_eq!(success.get_child("resumed", ns::SM).and_then(|r| r.attr("previd")), Some("abc"));
}

#[test]
fn a_failed_inline_resume_binds_as_asked_with_failed_in_success() {
    let (mut neg, _) = sasl2_negotiator(resume_cfg());
    let extra = "<resume xmlns='urn:xmpp:sm:3' previd='gone' h='0'/><bind xmlns='urn:xmpp:bind:0'><tag>t</tag></bind>";
    neg.step(authenticate("PLAIN", Some(&plain_initial_response(None, USER, PASSWORD)), extra));
    neg.step(NegEvent::Credentials(Some(Credentials::Plain(PASSWORD.into()))));
    let actions = neg.step(NegEvent::Resumed(false));
    assert!(matches!(actions.as_slice(), [NegAction::Bind { tag: Some(t), .. }] if t == "t"), "{actions:?}");
    let jid = parse_full(&format!("{USER}@{HOST}/t.1")).unwrap();
    let actions = neg.step(NegEvent::Bound(Ok(jid)));
    let [NegAction::Established { opening: Opening::Sasl2 { extra, .. }, .. }] = actions.as_slice() else {
        panic!("{actions:?}")
    };
    assert!(extra.iter().any(|e| e.is("failed", ns::SM)), "{extra:?}");
    // Without a bind request: <success/> with <failed/>, and the features.
    let (mut neg, _) = sasl2_negotiator(resume_cfg());
    neg.step(authenticate(
        "PLAIN",
        Some(&plain_initial_response(None, USER, PASSWORD)),
        "<resume xmlns='urn:xmpp:sm:3' previd='gone' h='0'/>",
    ));
    neg.step(NegEvent::Credentials(Some(Credentials::Plain(PASSWORD.into()))));
    let actions = neg.step(NegEvent::Resumed(false));
    let [NegAction::Send(success), NegAction::Send(_features)] = actions.as_slice() else { panic!("{actions:?}") };
    assert!(parse(success).has_child("failed", ns::SM), "{success}");
    // Not offered: the request is ignored and binding goes on.
    let (mut neg, _) = sasl2_negotiator(sasl2_cfg());
    let extra = "<resume xmlns='urn:xmpp:sm:3' previd='abc' h='7'/><bind xmlns='urn:xmpp:bind:0'/>";
    neg.step(authenticate("PLAIN", Some(&plain_initial_response(None, USER, PASSWORD)), extra));
    let actions = neg.step(NegEvent::Credentials(Some(Credentials::Plain(PASSWORD.into()))));
    assert!(matches!(actions.as_slice(), [NegAction::Bind { .. }]), "{actions:?}");
}

// ------------------------------------------------------------------ TLS 1.3 early data

#[test]
fn only_a_counted_fast_authentication_is_taken_from_early_data() {
    // A FAST login with a count: handled as usual, and the count goes to the store.
    let (mut neg, _) = sasl2_negotiator(fast_cfg());
    let NegEvent::Element(login) =
        fast_authenticate("HT-SHA-256-NONE", "t0k3n", b"", "<fast xmlns='urn:xmpp:fast:0' count='3'/>")
    else {
        panic!()
    };
    assert!(matches!(neg.step(NegEvent::EarlyElement(login)).as_slice(), [NegAction::LookupFastTokens { .. }]));
    let tokens = FastTokens { current: Some(stored("t0k3n", "HT-SHA-256-NONE", NOW + 86_400)), new: None };
    let actions = neg.step(NegEvent::FastTokens { tokens, now: NOW });
    assert!(matches!(actions.as_slice(), [NegAction::Fast { op: FastOp::Use { count: 3, .. }, .. }]), "{actions:?}");
    // Without a count, with a password mechanism, or anything else: the stream ends.
    let refused = [
        fast_authenticate("HT-SHA-256-NONE", "t0k3n", b"", ""),
        fast_authenticate("HT-SHA-256-NONE", "t0k3n", b"", "<fast xmlns='urn:xmpp:fast:0' count='0'/>"),
        authenticate(
            "PLAIN",
            Some(&plain_initial_response(None, USER, PASSWORD)),
            "<fast xmlns='urn:xmpp:fast:0' count='3'/>",
        ),
        el("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGp1bGlldABy</auth>"),
        el("<iq type='get' id='1'><query xmlns='jabber:iq:register'/></iq>"),
    ];
    for ev in refused {
        let NegEvent::Element(element) = ev else { panic!() };
        let (mut neg, _) = sasl2_negotiator(fast_cfg());
        let actions = neg.step(NegEvent::EarlyElement(element.clone()));
        assert_eq!(close_condition(&actions), Some(StreamErrorCondition::PolicyViolation), "{element}");
    }
}
