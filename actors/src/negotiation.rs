//! C2S stream negotiation as a sans-IO state machine (RFC 6120 §4–§7).
//!
//! The connection driver feeds [`NegEvent`]s (a stream header, a top-level
//! element, a finished TLS handshake, credentials it looked up, the outcome of
//! a bind or a registration) into [`Negotiator::step`] and carries out the
//! [`NegAction`]s it gets back. Nothing here touches a socket, a clock or a
//! database, so every path is unit-tested below without any.
//!
//! Order of a negotiation: header → features (STARTTLS) → TLS → header →
//! features (SASL, XEP-0440 channel bindings, XEP-0077) → SASL → header →
//! features (bind, legacy session) → bind → established.
//!
//! With SASL2 (XEP-0388) the client authenticates with `<authenticate/>`
//! instead, and there is no stream restart: with Bind2 (XEP-0386) inline,
//! one `<success/>` carries the bound JID and the inline features' answers
//! (written by the session, [`Opening::Sasl2`]); without it, the post-auth
//! features follow `<success/>` on the same stream.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use meerkat_storage::{FastSlot, FastTokens};
use meerkat_xmpp::element::Element;
use meerkat_xmpp::error::{StanzaErrorCondition, StreamError, StreamErrorCondition};
use meerkat_xmpp::jid::FullJid;
use meerkat_xmpp::ns;
use meerkat_xmpp::parser::StreamHeader;
use meerkat_xmpp::sasl::external::{CertIdentity, ExternalCheck};
use meerkat_xmpp::sasl::fast::HtMechanism;
use meerkat_xmpp::sasl::{Credentials, Mechanism, SaltSecret, SaslFailure, SaslInput, SaslOutput, SaslServer};

use base64::Engine as _;

/// How a listener uses TLS (MongooseIM's `tls.mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsMode {
    /// No TLS at all on this listener.
    None,
    /// STARTTLS is offered; SASL is also offered before it (PLAIN is not, unless allowed).
    Starttls,
    /// STARTTLS is offered and required before anything else.
    StarttlsRequired,
    /// Direct TLS (XEP-0368): the stream starts after the TLS handshake.
    Tls,
}

/// The listener's negotiation settings.
#[derive(Clone, Debug)]
pub struct NegotiationConfig {
    pub hosts: Vec<String>,
    pub tls_mode: TlsMode,
    /// Mechanisms enabled by configuration, in preference order.
    pub mechanisms: Vec<Mechanism>,
    /// Allow PLAIN (and registration) over an unencrypted stream.
    pub allow_plain_without_tls: bool,
    pub registration: bool,
    /// Failed authentications allowed before the stream is closed.
    pub max_auth_failures: u32,
    /// The iteration count SCRAM keys are made with (`[auth]
    /// password.scram_iterations`), also offered to unknown users.
    pub scram_iterations: u32,
    /// The key unknown users' fake SCRAM salts are derived from, kept in the
    /// database so that they survive restarts and agree across nodes.
    pub salt_secret: SaltSecret,
    /// How EXTERNAL maps a client certificate to an account
    /// (`auth.sasl_external`), in order.
    pub external_checks: Vec<ExternalCheck>,
    /// What the modules switch on ([`crate::ext::CoreTuning::negotiation`]).
    pub modules: ModuleNegotiation,
    /// What the modules add to negotiation (stream features, inline features).
    pub features: Arc<crate::ext::StreamFeatures>,
    /// Hosts whose modules differ (`[[host_config]]`): what they decide
    /// instead of `registration`, `modules` and `features` above.
    pub host_overrides: Arc<HashMap<String, HostNegotiation>>,
}

/// What the modules of one host switch on in negotiation and add to it.
#[derive(Clone, Debug, Default)]
pub struct HostNegotiation {
    /// XEP-0077 registration before authentication.
    pub registration: bool,
    pub modules: ModuleNegotiation,
    pub features: Arc<crate::ext::StreamFeatures>,
}

/// The parts of negotiation that modules switch on and configure through
/// their sections (`tune`): the node passes them on as they are.
#[derive(Clone, Debug, Default)]
pub struct ModuleNegotiation {
    /// Offer SASL2 (XEP-0388).
    pub sasl2: bool,
    /// Offer Bind2 (XEP-0386) inside SASL2.
    pub bind2: bool,
    /// Offer FAST (XEP-0484) inside SASL2.
    pub fast: Option<FastSettings>,
    /// Offer XEP-0198 resumption inside SASL2 (`<sm/>` inline).
    pub sasl2_resume: bool,
}

/// How FAST tokens are offered and issued.
#[derive(Clone, Debug)]
pub struct FastSettings {
    /// The `HT-*` mechanisms offered, in order (`-EXPR` ones only on TLS 1.3).
    pub mechanisms: Vec<HtMechanism>,
    /// How long a token works once issued.
    pub validity: Duration,
    /// A login with a token this close to its expiry gets the next one;
    /// zero turns rotation off.
    pub rotate_before: Duration,
}

/// A FAST token just issued, as `<token/>` carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedToken {
    pub token: String,
    /// XEP-0082 date and time it expires.
    pub expiry: String,
}

impl IssuedToken {
    fn element(&self) -> Element {
        Element::new("token", ns::FAST).with_attr("token", &self.token).with_attr("expiry", &self.expiry)
    }
}

/// Work on a user agent's FAST tokens, for [`NegAction::Fast`].
#[derive(Debug, PartialEq)]
pub enum FastOp {
    /// Issue a token for `mechanism` (stored as the agent's next one).
    Issue { mechanism: HtMechanism },
    /// A login used `token` of `slot` with `count`: record it, atomically
    /// refusing a count not above the stored one (replay); then forget the
    /// agent's tokens if `invalidate`, or issue one for `issue`.
    Use { slot: FastSlot, token: String, count: i64, invalidate: bool, issue: Option<HtMechanism> },
}

/// How a bound session tells its client that it is bound: the first thing
/// it writes.
#[derive(Debug, PartialEq)]
pub enum Opening {
    /// The result of the RFC 6120 bind IQ with this id.
    Iq { id: String },
    /// SASL2's `<success/>` with the full JID and `<bound/>` (XEP-0386); the
    /// modules answer `inline` (the `<bind/>` request's children) inside it.
    Sasl2 {
        /// Base64 `<additional-data/>` of the mechanism (SCRAM's server signature).
        additional_data: Option<String>,
        inline: Vec<Element>,
        /// More children of `<success/>` after `<bound/>`: a FAST `<token/>`
        /// (XEP-0484), or `<failed/>` of an inline resumption (XEP-0198).
        extra: Vec<Element>,
    },
}

impl Opening {
    /// `<success xmlns='urn:xmpp:sasl:2'/>` for `jid`, with `bound` (the
    /// modules' answers to the inline requests) inside `<bound/>`.
    pub fn sasl2_success(
        additional_data: Option<&str>,
        jid: &FullJid,
        bound: Vec<Element>,
        extra: &[Element],
    ) -> Element {
        let mut success = Element::new("success", ns::SASL2);
        if let Some(d) = additional_data {
            success.push_child(Element::new("additional-data", ns::SASL2).with_text(d));
        }
        success.push_child(Element::new("authorization-identifier", ns::SASL2).with_text(jid.to_string()));
        let mut b = Element::new("bound", ns::BIND2);
        for el in bound {
            b.push_child(el);
        }
        success.push_child(b);
        for e in extra {
            success.push_child(e.clone());
        }
        success
    }

    /// `<success xmlns='urn:xmpp:sasl:2'/>` around `resumed` (XEP-0198's
    /// `<resumed/>`) for a session resumed inside SASL2.
    pub fn sasl2_resumed(resume: &Sasl2Resume, jid: &FullJid, resumed: Element) -> Element {
        let mut success = Element::new("success", ns::SASL2);
        if let Some(d) = &resume.additional_data {
            success.push_child(Element::new("additional-data", ns::SASL2).with_text(d.clone()));
        }
        success.push_child(Element::new("authorization-identifier", ns::SASL2).with_text(jid.to_string()));
        success.push_child(resumed);
        if let Some(t) = &resume.token {
            success.push_child(t.element());
        }
        success
    }
}

/// How a session resumed inside SASL2 answers (XEP-0198 in XEP-0388): its
/// `<resumed/>` goes inside `<success/>` with these.
#[derive(Clone, Debug, PartialEq)]
pub struct Sasl2Resume {
    pub additional_data: Option<String>,
    pub token: Option<IssuedToken>,
}

/// Something that happened on the connection.
#[derive(Debug)]
pub enum NegEvent {
    Header(StreamHeader),
    Element(Element),
    /// An element that came in TLS 1.3 early data (0-RTT), which anyone who
    /// recorded it can send again: only a FAST `<authenticate/>` carrying a
    /// `<fast count/>` is taken (the count must grow, so a replay fails).
    EarlyElement(Element),
    /// The TLS handshake finished; `exporter` is the RFC 9266 channel-binding value.
    TlsEstablished {
        exporter: Option<Vec<u8>>,
        /// What the client's certificate names, when it presented one that verified.
        client_cert: Option<CertIdentity>,
    },
    /// Answer to [`NegAction::LookupCredentials`].
    Credentials(Option<Credentials>),
    /// Answer to [`NegAction::Bind`].
    Bound(Result<FullJid, StanzaErrorCondition>),
    /// Answer to [`NegAction::Resume`]: whether the session was resumed.
    Resumed(bool),
    /// Answer to [`NegAction::LookupFastTokens`]: the agent's tokens and the
    /// time now (Unix seconds).
    FastTokens {
        tokens: FastTokens,
        now: i64,
    },
    /// Answer to [`NegAction::Fast`]: whether it held (a [`FastOp::Use`]
    /// can be refused), and the token issued, if one was.
    FastDone {
        ok: bool,
        issued: Option<IssuedToken>,
    },
    /// Answer to [`NegAction::Register`].
    Registered {
        id: Option<String>,
        result: Result<(), StanzaErrorCondition>,
    },
}

/// Something the driver must do.
#[derive(Debug, PartialEq)]
pub enum NegAction {
    /// Write these bytes.
    Send(String),
    /// Write these bytes after a pause (slows down password guessing).
    SendDelayed(String, Duration),
    /// Flush, then run the TLS handshake; any bytes the client sent after
    /// `<starttls/>` are an error, and the parser starts afresh.
    StartTls,
    /// Discard the parser's state and expect a new stream header (after SASL success).
    ResetParser,
    LookupCredentials {
        username: String,
    },
    /// The FAST tokens of this user and user agent; answer with
    /// [`NegEvent::FastTokens`]. The host's modules carry this out
    /// ([`crate::ext::Module::negotiation_action`]).
    LookupFastTokens {
        username: String,
        user_agent: String,
    },
    /// Carry out `op` on this user agent's tokens; answer with
    /// [`NegEvent::FastDone`]. The host's modules carry this out
    /// ([`crate::ext::Module::negotiation_action`]).
    Fast {
        username: String,
        user_agent: String,
        op: FastOp,
    },
    /// Bind `resource` (or a generated one, starting with the Bind2 `tag`
    /// if there is one) for `user`; answer with [`NegEvent::Bound`].
    Bind {
        user: String,
        host: String,
        resource: Option<String>,
        tag: Option<String>,
        id: String,
    },
    /// XEP-0198: hand the stream to the session `previd` of this user, if it
    /// waits; answer with [`NegEvent::Resumed`]. Inside SASL2, `sasl2` says
    /// how the session wraps its `<resumed/>`.
    Resume {
        user: String,
        host: String,
        previd: String,
        h: u32,
        sasl2: Option<Sasl2Resume>,
    },
    /// XEP-0077 registration before authentication.
    Register {
        host: String,
        username: String,
        password: String,
        id: Option<String>,
    },
    /// Negotiation is over: hand the stream to a session, which tells the
    /// client it is bound as `opening` says.
    Established {
        jid: FullJid,
        stream_id: String,
        opening: Opening,
    },
    /// Send this stream error and close.
    Close(StreamError),
}

impl NegAction {
    /// The answer to a step that the host's modules carry out
    /// ([`crate::ext::Module::negotiation_action`]) when none of them did:
    /// no FAST token, and nothing stored. `now` is the time in Unix seconds.
    pub fn unanswered(&self, now: i64) -> NegEvent {
        match self {
            NegAction::LookupFastTokens { .. } => NegEvent::FastTokens { tokens: FastTokens::default(), now },
            _ => NegEvent::FastDone { ok: false, issued: None },
        }
    }
}

#[derive(Debug)]
enum State {
    AwaitHeader,
    /// Features sent before authentication.
    PreAuth,
    AwaitTls,
    /// Boxed: the SCRAM state dwarfs every other variant.
    Sasl {
        server: Box<SaslServer>,
        mech: Mechanism,
        /// What a SASL2 `<authenticate/>` asked for; `None` for RFC 6120 SASL.
        sasl2: Option<Box<Sasl2Request>>,
    },
    /// Features sent after authentication.
    PostAuth,
    Binding {
        id: String,
    },
    /// Binding inside SASL2 (XEP-0386): `<success/>` comes with the session.
    Binding2 {
        additional_data: Option<String>,
        inline: Vec<Element>,
        extra: Vec<Element>,
    },
    /// An inline resumption (XEP-0198 inside SASL2): what to do if it fails.
    Resuming2 {
        username: String,
        additional_data: Option<String>,
        bind: Option<Element>,
        token: Option<IssuedToken>,
    },
    /// A FAST login (XEP-0484): its proof, until the tokens are read.
    FastLookup {
        mech: HtMechanism,
        username: String,
        proof: Vec<u8>,
        request: Box<Sasl2Request>,
    },
    /// Authenticated; the driver works on the tokens ([`NegAction::Fast`]).
    FastPending {
        username: String,
        additional_data: Option<String>,
        request: Box<Sasl2Request>,
    },
    Resuming,
    Done,
    Closed,
}

/// What a SASL2 `<authenticate/>` asked for besides authentication.
#[derive(Debug, Default)]
struct Sasl2Request {
    /// The XEP-0386 `<bind/>` request, to bind in the same step.
    bind: Option<Element>,
    /// `<user-agent id/>`: FAST tokens belong to it.
    user_agent: Option<String>,
    /// `<request-token mechanism/>` (XEP-0484), for a mechanism offered here.
    request_token: Option<HtMechanism>,
    /// `<fast count invalidate/>`, sent with a FAST login.
    count: i64,
    invalidate: bool,
    /// XEP-0198 `<resume previd h/>` inside SASL2.
    resume: Option<(String, u32)>,
}

/// Longest `<user-agent id/>` kept (the database column's size).
const MAX_USER_AGENT_ID: usize = 255;

/// Longest Bind2 `<tag/>` used in a resource; a longer one is cut.
const MAX_TAG_CHARS: usize = 64;

/// One C2S stream's negotiation.
#[derive(Debug)]
pub struct Negotiator {
    cfg: NegotiationConfig,
    state: State,
    secure: bool,
    exporter: Option<Vec<u8>>,
    /// The verified client certificate of this connection, for EXTERNAL.
    client_cert: Option<CertIdentity>,
    host: Option<String>,
    user: Option<String>,
    stream_id: String,
    failures: u32,
    /// An account was created on this stream (XEP-0077): one per stream.
    registered: bool,
    plus_advertised: bool,
    /// What the modules of the stream's host add: serialized stream features
    /// before and after authentication, SASL2 and Bind2 inline features.
    features: Arc<crate::ext::StreamFeatures>,
}

impl Negotiator {
    /// A new negotiation. `secure` is true when the connection is already TLS (direct TLS).
    pub fn new(cfg: NegotiationConfig, secure: bool, exporter: Option<Vec<u8>>, stream_id: String) -> Self {
        let cfg_features = cfg.features.clone();
        Negotiator {
            cfg,
            state: State::AwaitHeader,
            secure,
            exporter,
            client_cert: None,
            host: None,
            user: None,
            stream_id,
            failures: 0,
            registered: false,
            plus_advertised: false,
            features: cfg_features,
        }
    }

    /// Adds the modules' stream features (serialized elements, such as XEP-0115
    /// `<c/>` or XEP-0352 `<csi/>`) to the features offered before and after
    /// authentication.
    pub fn with_extra_features(mut self, pre_auth: String, post_auth: String) -> Self {
        let f = Arc::make_mut(&mut self.features);
        f.pre_auth = pre_auth;
        f.post_auth = post_auth;
        self
    }

    /// Everything the modules add to negotiation: stream features before and
    /// after authentication, and SASL2 and Bind2 inline features.
    pub fn with_module_features(mut self, f: &crate::ext::StreamFeatures) -> Self {
        self.features = Arc::new(f.clone());
        self
    }

    /// What the modules of the stream's host switch on (those of hosts
    /// without their own before the stream header names the host).
    pub fn module_settings(&self) -> &ModuleNegotiation {
        &self.cfg.modules
    }

    /// The verified client certificate of a connection that starts in TLS
    /// (direct TLS, WebSocket and BOSH over HTTPS).
    pub fn with_client_certificate(mut self, cert: Option<CertIdentity>) -> Self {
        self.client_cert = cert;
        self
    }

    pub fn is_secure(&self) -> bool {
        self.secure
    }

    pub fn host(&self) -> Option<&str> {
        self.host.as_deref()
    }

    pub fn stream_id(&self) -> &str {
        &self.stream_id
    }

    /// Authenticated user's localpart, once SASL succeeded.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// Whether answering [`NegAction::LookupCredentials`] with `creds` derives
    /// keys (PBKDF2): PLAIN against stored SCRAM keys, or SCRAM against a stored
    /// plain password. The driver then takes that step off its reactor thread.
    pub fn credentials_need_hashing(&self, creds: Option<&Credentials>) -> bool {
        let State::Sasl { mech, .. } = &self.state else { return false };
        match creds {
            Some(Credentials::Scram(_)) => *mech == Mechanism::Plain,
            Some(Credentials::Plain(_)) => mech.hash().is_some(),
            None => false,
        }
    }

    pub fn step(&mut self, ev: NegEvent) -> Vec<NegAction> {
        let state = std::mem::replace(&mut self.state, State::Closed);
        let (next, actions) = self.transition(state, ev);
        self.state = next;
        actions
    }

    fn close(&self, cond: StreamErrorCondition, text: Option<&str>) -> (State, Vec<NegAction>) {
        let err = match text {
            Some(t) => StreamError::with_text(cond, t),
            None => StreamError::new(cond),
        };
        (State::Closed, vec![NegAction::Close(err)])
    }

    fn transition(&mut self, state: State, ev: NegEvent) -> (State, Vec<NegAction>) {
        let ev = match ev {
            NegEvent::EarlyElement(el) => {
                let counted = el
                    .get_child("fast", ns::FAST)
                    .and_then(|f| f.attr("count"))
                    .and_then(|c| c.parse::<i64>().ok())
                    .is_some_and(|c| c > 0);
                let fast = el.attr("mechanism").and_then(HtMechanism::from_name).is_some();
                if !(matches!(state, State::PreAuth) && el.is("authenticate", ns::SASL2) && fast && counted) {
                    return self.close(
                        StreamErrorCondition::PolicyViolation,
                        Some("only a FAST authentication with a count may come in TLS early data"),
                    );
                }
                NegEvent::Element(el)
            }
            ev => ev,
        };
        match (state, ev) {
            (State::AwaitHeader, NegEvent::Header(h)) => self.on_header(h),
            (State::PreAuth, NegEvent::Element(el)) => self.on_preauth_element(el),
            (State::AwaitTls, NegEvent::TlsEstablished { exporter, client_cert }) => {
                self.secure = true;
                self.exporter = exporter;
                self.client_cert = client_cert;
                (State::AwaitHeader, vec![])
            }
            (State::Sasl { server, mech, sasl2 }, NegEvent::Credentials(c)) => {
                self.sasl_step(server, mech, sasl2, SaslInput::Credentials(c))
            }
            (State::Sasl { server, mech, sasl2 }, NegEvent::Element(el)) => {
                let profile = if sasl2.is_some() { ns::SASL2 } else { ns::SASL };
                if el.is("abort", profile) {
                    return self.sasl_failed(SaslFailure::Aborted, sasl2.is_some());
                }
                if !el.is("response", profile) {
                    return self.close(StreamErrorCondition::PolicyViolation, Some("expected a SASL response"));
                }
                match decode_b64(&el.text()) {
                    Some(data) => self.sasl_step(server, mech, sasl2, SaslInput::Response(&data)),
                    None => self.sasl_failed(SaslFailure::IncorrectEncoding, sasl2.is_some()),
                }
            }
            (State::PreAuth, NegEvent::Registered { id, result }) => match result {
                Ok(()) => {
                    self.registered = true;
                    (State::PreAuth, vec![NegAction::Send(iq_reply_xml(id.as_deref(), None))])
                }
                // Failed attempts count as failed logins do: slowed down, and
                // the stream ends after `max_auth_failures` of them together.
                Err(cond) => self.failed(iq_error_xml(id.as_deref(), cond), "too many failed attempts"),
            },
            (State::PostAuth, NegEvent::Element(el)) => self.on_postauth_element(el),
            (State::Binding { id }, NegEvent::Bound(Ok(jid))) => {
                // The bind reply is written by the session once it is registered, so
                // no stanza can reach the client before it learns its JID.
                let opening = Opening::Iq { id };
                (State::Done, vec![NegAction::Established { jid, stream_id: self.stream_id.clone(), opening }])
            }
            (State::Binding2 { additional_data, inline, extra }, NegEvent::Bound(Ok(jid))) => {
                let opening = Opening::Sasl2 { additional_data, inline, extra };
                (State::Done, vec![NegAction::Established { jid, stream_id: self.stream_id.clone(), opening }])
            }
            (State::FastLookup { mech, username, proof, request }, NegEvent::FastTokens { tokens, now }) => {
                self.fast_verify(mech, username, &proof, request, tokens, now)
            }
            (State::FastPending { username, additional_data, request }, NegEvent::FastDone { ok, issued }) => {
                if !ok {
                    // The token went away, or its count was replayed, meanwhile.
                    self.user = None;
                    return self.sasl_failed(SaslFailure::NotAuthorized, true);
                }
                self.sasl2_authenticated(username, additional_data, *request, issued)
            }
            (State::Binding2 { .. }, NegEvent::Bound(Err(_))) => {
                // The generated resource is always valid; nothing to tell the client.
                self.close(StreamErrorCondition::InternalServerError, Some("binding failed"))
            }
            (State::Resuming, NegEvent::Resumed(true)) => (State::Done, vec![]),
            (State::Resuming2 { .. }, NegEvent::Resumed(true)) => (State::Done, vec![]),
            (State::Resuming2 { username, additional_data, bind, token }, NegEvent::Resumed(false)) => {
                // XEP-0198: <failed/> inside <success/>; binding goes on as asked.
                let failed = meerkat_xmpp::sm::failed("item-not-found");
                let mut extra = vec![failed];
                extra.extend(token.map(|t| t.element()));
                self.sasl2_bind_or_succeed(username, additional_data, bind, extra)
            }
            (State::Resuming, NegEvent::Resumed(false)) => {
                (State::PostAuth, vec![NegAction::Send(meerkat_xmpp::sm::failed("item-not-found").to_xml(ns::CLIENT))])
            }
            (State::Binding { id }, NegEvent::Bound(Err(cond))) => {
                (State::PostAuth, vec![NegAction::Send(iq_error_xml(Some(&id), cond))])
            }
            (State::Closed, _) => (State::Closed, vec![]),
            (_, NegEvent::Header(_)) => self.close(StreamErrorCondition::InvalidXml, Some("unexpected stream header")),
            (_, NegEvent::Element(_)) => {
                self.close(StreamErrorCondition::NotAuthorized, Some("stanza before the stream is negotiated"))
            }
            (state, ev) => {
                tracing::error!(?ev, ?state, "negotiation event out of order");
                self.close(StreamErrorCondition::InternalServerError, None)
            }
        }
    }

    fn on_header(&mut self, h: StreamHeader) -> (State, Vec<NegAction>) {
        let mut out = Vec::new();
        let to = h.to.as_deref().and_then(|t| meerkat_xmpp::jid::canonical_domain(t).ok());
        let host = match (&self.host, to) {
            (Some(prev), Some(to)) if *prev != to => {
                return self.header_then_error(
                    prev.clone(),
                    StreamErrorCondition::HostUnknown,
                    "the stream host changed",
                );
            }
            (_, Some(to)) if self.cfg.hosts.contains(&to) => to,
            (_, Some(to)) => {
                return self.header_then_error(
                    self.default_host(),
                    StreamErrorCondition::HostUnknown,
                    &format!("this server does not serve {to}"),
                )
            }
            (_, None) => {
                return self.header_then_error(
                    self.default_host(),
                    StreamErrorCondition::HostUnknown,
                    "the stream header has no 'to'",
                )
            }
        };
        if self.host.is_none() {
            if let Some(o) = self.cfg.host_overrides.get(&host) {
                // This host's modules decide what the stream offers.
                self.cfg.registration = o.registration;
                self.cfg.modules = o.modules.clone();
                self.features = o.features.clone();
            }
        }
        self.host = Some(host.clone());
        if h.default_ns.as_deref() != Some(ns::CLIENT) {
            return self.header_then_error(
                host,
                StreamErrorCondition::InvalidNamespace,
                "the content namespace must be jabber:client",
            );
        }
        match h.version.as_deref() {
            Some(v) if v.split('.').next().and_then(|m| m.parse::<u32>().ok()).is_some_and(|m| m >= 1) => {}
            _ => {
                return self.header_then_error(
                    host,
                    StreamErrorCondition::UnsupportedVersion,
                    "version 1.0 is required",
                )
            }
        }
        out.push(NegAction::Send(stream_header_xml(&host, &self.stream_id)));
        let (next, features) = if self.user.is_some() {
            (State::PostAuth, postauth_features(&self.features.post_auth))
        } else {
            (State::PreAuth, self.preauth_features())
        };
        out.push(NegAction::Send(features));
        (next, out)
    }

    fn default_host(&self) -> String {
        self.cfg.hosts.first().cloned().unwrap_or_default()
    }

    fn header_then_error(&self, host: String, cond: StreamErrorCondition, text: &str) -> (State, Vec<NegAction>) {
        // RFC 6120 §4.9.1.2: an error before our header still opens the stream first.
        (
            State::Closed,
            vec![
                NegAction::Send(stream_header_xml(&host, &self.stream_id)),
                NegAction::Close(StreamError::with_text(cond, text)),
            ],
        )
    }

    fn tls_offered(&self) -> bool {
        !self.secure && matches!(self.cfg.tls_mode, TlsMode::Starttls | TlsMode::StarttlsRequired)
    }

    fn tls_required_first(&self) -> bool {
        !self.secure && self.cfg.tls_mode == TlsMode::StarttlsRequired
    }

    /// Whether passwords may travel in the clear here (PLAIN, registration).
    /// Never while a required STARTTLS is still pending.
    fn plaintext_allowed(&self) -> bool {
        self.secure || (self.cfg.allow_plain_without_tls && !self.tls_required_first())
    }

    /// The mechanisms this stream may use right now.
    pub fn offered_mechanisms(&self) -> Vec<Mechanism> {
        if self.tls_required_first() {
            return vec![];
        }
        self.cfg
            .mechanisms
            .iter()
            .copied()
            .filter(|m| !m.is_plus() || self.exporter.is_some())
            .filter(|m| *m != Mechanism::Plain || self.plaintext_allowed())
            // EXTERNAL only with a client certificate that verified (over TLS).
            .filter(|m| *m != Mechanism::External || (self.secure && self.client_cert.is_some()))
            .collect()
    }

    fn preauth_features(&mut self) -> String {
        let mut f = String::from("<stream:features>");
        if self.tls_offered() {
            f.push_str("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'>");
            if self.cfg.tls_mode == TlsMode::StarttlsRequired {
                f.push_str("<required/>");
            }
            f.push_str("</starttls>");
        }
        let mechs = self.offered_mechanisms();
        self.plus_advertised = mechs.iter().any(|m| m.is_plus());
        if !mechs.is_empty() {
            f.push_str("<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>");
            push_mechanisms(&mut f, mechs.iter().map(Mechanism::name));
            f.push_str("</mechanisms>");
        }
        if self.cfg.modules.sasl2 && !mechs.is_empty() {
            // XEP-0388, with XEP-0386 and the modules' inline features.
            f.push_str("<authentication xmlns='urn:xmpp:sasl:2'>");
            push_mechanisms(&mut f, mechs.iter().map(Mechanism::name));
            f.push_str("<inline>");
            if self.cfg.modules.bind2 {
                f.push_str("<bind xmlns='urn:xmpp:bind:0'><inline>");
                f.push_str(&self.features.bind2_inline);
                f.push_str("</inline></bind>");
            }
            f.push_str(&self.features.sasl2_inline);
            let fast = self.offered_fast();
            if !fast.is_empty() {
                f.push_str("<fast xmlns='urn:xmpp:fast:0'>");
                push_mechanisms(&mut f, fast.iter().map(HtMechanism::name));
                f.push_str("</fast>");
            }
            f.push_str("</inline></authentication>");
        }
        if self.exporter.is_some() {
            // XEP-0440: say which channel-binding types the -PLUS mechanisms accept.
            f.push_str("<sasl-channel-binding xmlns='urn:xmpp:sasl-cb:0'><channel-binding type='tls-exporter'/></sasl-channel-binding>");
        }
        if self.cfg.registration && self.plaintext_allowed() {
            f.push_str("<register xmlns='http://jabber.org/features/iq-register'/>");
        }
        f.push_str(&self.features.pre_auth);
        f.push_str("</stream:features>");
        f
    }

    fn on_preauth_element(&mut self, el: Element) -> (State, Vec<NegAction>) {
        if el.is("starttls", ns::TLS) {
            if !self.tls_offered() {
                return self.close(StreamErrorCondition::PolicyViolation, Some("STARTTLS is not offered here"));
            }
            return (
                State::AwaitTls,
                vec![NegAction::Send("<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>".into()), NegAction::StartTls],
            );
        }
        if el.is("auth", ns::SASL) {
            let text = el.text();
            let initial = if text.trim() == "=" {
                Ok(Some(Vec::new()))
            } else if text.trim().is_empty() {
                Ok(None)
            } else {
                decode_b64(&text).map(Some).ok_or(())
            };
            return self.begin_sasl(el.attr("mechanism"), initial, None);
        }
        if el.is("authenticate", ns::SASL2) && self.cfg.modules.sasl2 {
            // XEP-0388: an absent <initial-response/> is no initial response; an
            // empty one (or "=") is an empty one.
            let initial = match el.get_child("initial-response", ns::SASL2) {
                None => Ok(None),
                Some(r) => decode_b64(&r.text()).map(Some).ok_or(()),
            };
            let bind = el.get_child("bind", ns::BIND2).filter(|_| self.cfg.modules.bind2).cloned();
            let user_agent = el
                .get_child("user-agent", ns::SASL2)
                .and_then(|u| u.attr("id"))
                .filter(|id| !id.is_empty() && id.len() <= MAX_USER_AGENT_ID)
                .map(str::to_owned);
            let offered_fast = self.offered_fast();
            let request_token = el
                .get_child("request-token", ns::FAST)
                .and_then(|r| r.attr("mechanism"))
                .and_then(HtMechanism::from_name)
                .filter(|m| offered_fast.contains(m));
            let fast = el.get_child("fast", ns::FAST);
            let count = fast.and_then(|f| f.attr("count")).and_then(|c| c.parse::<i64>().ok()).unwrap_or(0).max(0);
            let invalidate = matches!(fast.and_then(|f| f.attr("invalidate")), Some("true") | Some("1"));
            let resume = el
                .get_child("resume", ns::SM)
                .filter(|_| self.cfg.modules.sasl2_resume)
                .and_then(|r| Some((r.attr("previd")?.to_owned(), meerkat_xmpp::sm::h_of(r)?)));
            let request = Box::new(Sasl2Request { bind, user_agent, request_token, count, invalidate, resume });
            if let Some(mech) = el.attr("mechanism").and_then(HtMechanism::from_name) {
                return self.begin_fast(mech, initial, request);
            }
            return self.begin_sasl(el.attr("mechanism"), initial, Some(request));
        }
        if el.is("iq", ns::CLIENT) {
            if let Some(q) = el.get_child("query", ns::REGISTER) {
                return self.on_register(&el, q);
            }
        }
        self.close(StreamErrorCondition::NotAuthorized, Some("authenticate first"))
    }

    /// `<auth/>` (RFC 6120) or `<authenticate/>` (XEP-0388, with `sasl2`):
    /// the mechanism the client chose and its initial response, if it sent
    /// one (`Err` when it is not base64).
    fn begin_sasl(
        &mut self,
        mechanism: Option<&str>,
        initial: Result<Option<Vec<u8>>, ()>,
        sasl2: Option<Box<Sasl2Request>>,
    ) -> (State, Vec<NegAction>) {
        let v2 = sasl2.is_some();
        if self.tls_required_first() {
            return (
                State::Closed,
                vec![
                    NegAction::Send(sasl_failure_xml(SaslFailure::EncryptionRequired, v2)),
                    NegAction::Close(StreamError::with_text(
                        StreamErrorCondition::PolicyViolation,
                        "STARTTLS is required",
                    )),
                ],
            );
        }
        let mech = mechanism.and_then(Mechanism::from_name);
        if mech == Some(Mechanism::External)
            && self.cfg.mechanisms.contains(&Mechanism::External)
            && !self.offered_mechanisms().contains(&Mechanism::External)
        {
            // Enabled, but this connection has no certificate that verified
            // (none, expired, or from a CA we do not trust).
            return self.sasl_failed(SaslFailure::NotAuthorized, v2);
        }
        let Some(mech) = mech.filter(|m| self.offered_mechanisms().contains(m)) else {
            let reason = if mechanism == Some("PLAIN") && !self.plaintext_allowed() {
                SaslFailure::EncryptionRequired
            } else {
                SaslFailure::InvalidMechanism
            };
            return (State::PreAuth, vec![NegAction::Send(sasl_failure_xml(reason, v2))]);
        };
        let Ok(initial) = initial else {
            return self.sasl_failed(SaslFailure::IncorrectEncoding, v2);
        };
        let mut server = SaslServer::new(mech, self.exporter.clone(), self.plus_advertised)
            .with_default_iterations(self.cfg.scram_iterations)
            .with_salt_secret(self.cfg.salt_secret.clone());
        if let (Mechanism::External, Some(cert)) = (mech, &self.client_cert) {
            server = server.with_certificate(
                cert.clone(),
                self.host.as_deref().unwrap_or_default(),
                self.cfg.external_checks.clone(),
            );
        }
        let server = Box::new(server);
        match initial {
            Some(data) => self.sasl_step(server, mech, sasl2, SaslInput::Response(&data)),
            // No initial response: an empty challenge asks for it (RFC 6120 §6.4.2).
            None => {
                let challenge = format!("<challenge xmlns='{}'/>", if v2 { ns::SASL2 } else { ns::SASL });
                (State::Sasl { server, mech, sasl2 }, vec![NegAction::Send(challenge)])
            }
        }
    }

    fn on_register(&mut self, iq: &Element, q: &Element) -> (State, Vec<NegAction>) {
        let id = iq.attr("id").map(str::to_owned);
        if !self.cfg.registration || !self.plaintext_allowed() {
            return (
                State::PreAuth,
                vec![NegAction::Send(iq_error_xml(id.as_deref(), StanzaErrorCondition::ServiceUnavailable))],
            );
        }
        match iq.attr("type") {
            Some("get") => {
                let form = "<query xmlns='jabber:iq:register'><instructions>Choose a username and password.</instructions><username/><password/></query>";
                (State::PreAuth, vec![NegAction::Send(iq_reply_xml(id.as_deref(), Some(form)))])
            }
            Some("set") if self.registered => {
                (State::PreAuth, vec![NegAction::Send(iq_error_xml(id.as_deref(), StanzaErrorCondition::NotAllowed))])
            }
            Some("set") => {
                let username = q.get_child("username", ns::REGISTER).map(|e| e.text());
                let password = q.get_child("password", ns::REGISTER).map(|e| e.text());
                match (username, password) {
                    (Some(u), Some(p)) if !u.is_empty() && !p.is_empty() => (
                        State::PreAuth,
                        vec![NegAction::Register {
                            host: self.host.clone().unwrap_or_default(),
                            username: u,
                            password: p,
                            id,
                        }],
                    ),
                    _ => (
                        State::PreAuth,
                        vec![NegAction::Send(iq_error_xml(id.as_deref(), StanzaErrorCondition::NotAcceptable))],
                    ),
                }
            }
            _ => (State::PreAuth, vec![NegAction::Send(iq_error_xml(id.as_deref(), StanzaErrorCondition::BadRequest))]),
        }
    }

    fn sasl_step(
        &mut self,
        mut server: Box<SaslServer>,
        mech: Mechanism,
        sasl2: Option<Box<Sasl2Request>>,
        input: SaslInput<'_>,
    ) -> (State, Vec<NegAction>) {
        let v2 = sasl2.is_some();
        match server.step(input) {
            SaslOutput::Challenge(data) => {
                let challenge = challenge_xml(&data, v2);
                (State::Sasl { server, mech, sasl2 }, vec![NegAction::Send(challenge)])
            }
            SaslOutput::LookupCredentials { username } => {
                (State::Sasl { server, mech, sasl2 }, vec![NegAction::LookupCredentials { username }])
            }
            SaslOutput::Success { username, additional_data } => {
                let encoded = additional_data.map(|d| base64::engine::general_purpose::STANDARD.encode(d));
                self.user = Some(username.clone());
                let Some(request) = sasl2 else {
                    let body = encoded.unwrap_or_default();
                    return (
                        State::AwaitHeader,
                        vec![
                            NegAction::Send(format!(
                                "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{body}</success>"
                            )),
                            NegAction::ResetParser,
                        ],
                    );
                };
                match (request.request_token, request.user_agent.clone()) {
                    // XEP-0484: a token for the next login, issued before <success/>.
                    (Some(mechanism), Some(user_agent)) => (
                        State::FastPending { username: username.clone(), additional_data: encoded, request },
                        vec![NegAction::Fast { username, user_agent, op: FastOp::Issue { mechanism } }],
                    ),
                    _ => self.sasl2_authenticated(username, encoded, *request, None),
                }
            }
            SaslOutput::Failure(f) => self.sasl_failed(f, v2),
        }
    }

    fn sasl_failed(&mut self, failure: SaslFailure, sasl2: bool) -> (State, Vec<NegAction>) {
        self.failed(sasl_failure_xml(failure, sasl2), "too many authentication failures")
    }

    /// SASL2 authenticated `username`: an inline resumption (XEP-0198),
    /// else bind (XEP-0386) or `<success/>` and the post-auth features.
    fn sasl2_authenticated(
        &mut self,
        username: String,
        additional_data: Option<String>,
        request: Sasl2Request,
        token: Option<IssuedToken>,
    ) -> (State, Vec<NegAction>) {
        self.user = Some(username.clone());
        if let Some((previd, h)) = request.resume {
            let host = self.host.clone().unwrap_or_default();
            let sasl2 = Some(Sasl2Resume { additional_data: additional_data.clone(), token: token.clone() });
            return (
                State::Resuming2 { username: username.clone(), additional_data, bind: request.bind, token },
                vec![NegAction::Resume { user: username, host, previd, h, sasl2 }],
            );
        }
        self.sasl2_bind_or_succeed(
            username,
            additional_data,
            request.bind,
            token.map(|t| t.element()).into_iter().collect(),
        )
    }

    /// After SASL2: bind (XEP-0386) or `<success/>` and the post-auth
    /// features; `extra` goes in `<success/>`.
    fn sasl2_bind_or_succeed(
        &mut self,
        username: String,
        additional_data: Option<String>,
        bind: Option<Element>,
        extra: Vec<Element>,
    ) -> (State, Vec<NegAction>) {
        self.user = Some(username.clone());
        let host = self.host.clone().unwrap_or_default();
        match bind {
            // XEP-0386: bound in the same step; the session writes <success/>.
            Some(bind) => {
                let tag = bind
                    .get_child("tag", ns::BIND2)
                    .map(|t| t.text().trim().chars().take(MAX_TAG_CHARS).collect::<String>())
                    .filter(|t| !t.is_empty());
                let inline = bind.elements().filter(|e| !e.is("tag", ns::BIND2)).cloned().collect();
                (
                    State::Binding2 { additional_data, inline, extra },
                    vec![NegAction::Bind { user: username, host, resource: None, tag, id: String::new() }],
                )
            }
            // XEP-0388 without Bind2: no stream restart; the post-auth
            // features follow on the same stream.
            None => {
                let mut success = Element::new("success", ns::SASL2);
                if let Some(d) = additional_data {
                    success.push_child(Element::new("additional-data", ns::SASL2).with_text(d));
                }
                success.push_child(
                    Element::new("authorization-identifier", ns::SASL2).with_text(format!("{username}@{host}")),
                );
                for e in extra {
                    success.push_child(e);
                }
                (
                    State::PostAuth,
                    vec![
                        NegAction::Send(success.to_xml(ns::CLIENT)),
                        NegAction::Send(postauth_features(&self.features.post_auth)),
                    ],
                )
            }
        }
    }

    /// The FAST mechanisms this stream may use: `-EXPR` ones only with a
    /// `tls-exporter` binding; none before a required STARTTLS.
    fn offered_fast(&self) -> Vec<HtMechanism> {
        match &self.cfg.modules.fast {
            Some(f) if self.cfg.modules.sasl2 && !self.tls_required_first() => {
                f.mechanisms.iter().copied().filter(|m| !m.exporter || self.exporter.is_some()).collect()
            }
            _ => Vec::new(),
        }
    }

    /// `<authenticate/>` with an `HT-*` mechanism (XEP-0484): the token's
    /// proof comes in the initial response, for the `<user-agent/>` the
    /// token was issued to.
    fn begin_fast(
        &mut self,
        mech: HtMechanism,
        initial: Result<Option<Vec<u8>>, ()>,
        request: Box<Sasl2Request>,
    ) -> (State, Vec<NegAction>) {
        if self.tls_required_first() {
            return self.begin_sasl(Some(mech.name()), initial, Some(request));
        }
        if !self.offered_fast().contains(&mech) {
            let failure = sasl_failure_xml(SaslFailure::InvalidMechanism, true);
            return (State::PreAuth, vec![NegAction::Send(failure)]);
        }
        let Ok(Some(msg)) = initial else { return self.sasl_failed(SaslFailure::MalformedRequest, true) };
        let Some(user_agent) = request.user_agent.clone() else {
            return self.sasl_failed(SaslFailure::MalformedRequest, true);
        };
        match meerkat_xmpp::sasl::fast::parse_initial_response(&msg) {
            Ok((username, proof)) => (
                State::FastLookup { mech, username: username.clone(), proof, request },
                vec![NegAction::LookupFastTokens { username, user_agent }],
            ),
            Err(f) => self.sasl_failed(f, true),
        }
    }

    /// Checks a FAST proof against the agent's tokens of this mechanism that
    /// have not expired.
    fn fast_verify(
        &mut self,
        mech: HtMechanism,
        username: String,
        proof: &[u8],
        request: Box<Sasl2Request>,
        tokens: FastTokens,
        now: i64,
    ) -> (State, Vec<NegAction>) {
        let cb = if mech.exporter { self.exporter.clone().unwrap_or_default() } else { Vec::new() };
        let candidates = [(FastSlot::New, tokens.new), (FastSlot::Current, tokens.current)];
        let found = candidates.into_iter().find_map(|(slot, t)| {
            let t = t?;
            (t.mechanism == mech.name() && t.expires_at > now && mech.verify(&t.token, &cb, proof)).then_some((slot, t))
        });
        let Some((slot, t)) = found else {
            return self.sasl_failed(SaslFailure::NotAuthorized, true);
        };
        let rotate_before = self.cfg.modules.fast.as_ref().map(|f| f.rotate_before).unwrap_or_default();
        let near_expiry = !rotate_before.is_zero()
            && t.expires_at - now <= i64::try_from(rotate_before.as_secs()).unwrap_or(i64::MAX);
        // The next token: asked for, or the current one is about to expire
        // (a next token just used becomes the current one, fresh).
        let issue = request.request_token.or((slot == FastSlot::Current && near_expiry).then_some(mech));
        let issue = issue.filter(|_| !request.invalidate);
        let additional_data = Some(base64::engine::general_purpose::STANDARD.encode(mech.responder(&t.token, &cb)));
        if slot == FastSlot::Current && request.count == 0 && !request.invalidate && issue.is_none() {
            // Nothing to record: the token in use, no count to check, nothing
            // to issue or forget. The login costs one read.
            return self.sasl2_authenticated(username, additional_data, *request, None);
        }
        let op =
            FastOp::Use { slot, token: t.token.clone(), count: request.count, invalidate: request.invalidate, issue };
        let user_agent = request.user_agent.clone().unwrap_or_default();
        (
            State::FastPending { username: username.clone(), additional_data, request },
            vec![NegAction::Fast { username, user_agent, op }],
        )
    }

    /// A failed login or registration: `xml` answers it after a pause that
    /// grows with each failure, and the stream ends after `max_auth_failures`.
    fn failed(&mut self, xml: String, closing: &str) -> (State, Vec<NegAction>) {
        self.failures += 1;
        if self.failures >= self.cfg.max_auth_failures {
            return (
                State::Closed,
                vec![
                    NegAction::SendDelayed(xml, auth_delay(self.failures)),
                    NegAction::Close(StreamError::with_text(StreamErrorCondition::PolicyViolation, closing)),
                ],
            );
        }
        (State::PreAuth, vec![NegAction::SendDelayed(xml, auth_delay(self.failures))])
    }

    fn on_postauth_element(&mut self, el: Element) -> (State, Vec<NegAction>) {
        if el.ns == meerkat_xmpp::sm::NS_SM {
            // XEP-0198: a session is resumed instead of binding; stream
            // management itself is enabled after bind.
            if el.name == "resume" {
                if let (Some(previd), Some(h)) = (el.attr("previd"), meerkat_xmpp::sm::h_of(&el)) {
                    return (
                        State::Resuming,
                        vec![NegAction::Resume {
                            user: self.user.clone().unwrap_or_default(),
                            host: self.host.clone().unwrap_or_default(),
                            previd: previd.to_owned(),
                            h,
                            sasl2: None,
                        }],
                    );
                }
                let failed = meerkat_xmpp::sm::failed("bad-request").to_xml(ns::CLIENT);
                return (State::PostAuth, vec![NegAction::Send(failed)]);
            }
            let failed = meerkat_xmpp::sm::failed("unexpected-request").to_xml(ns::CLIENT);
            return (State::PostAuth, vec![NegAction::Send(failed)]);
        }
        if el.is("iq", ns::CLIENT) && el.attr("type") == Some("set") {
            if let Some(bind) = el.get_child("bind", ns::BIND) {
                let resource = bind.get_child("resource", ns::BIND).map(|r| r.text()).filter(|r| !r.trim().is_empty());
                let id = el.attr("id").unwrap_or_default().to_owned();
                return (
                    State::Binding { id: id.clone() },
                    vec![NegAction::Bind {
                        user: self.user.clone().unwrap_or_default(),
                        host: self.host.clone().unwrap_or_default(),
                        resource,
                        tag: None,
                        id,
                    }],
                );
            }
        }
        self.close(StreamErrorCondition::NotAuthorized, Some("bind a resource first"))
    }
}

/// Failed logins wait 0.5 s, 1 s, 2 s … up to 8 s before the answer.
fn auth_delay(failures: u32) -> Duration {
    Duration::from_millis(500u64.saturating_mul(1u64 << failures.saturating_sub(1).min(4)))
}

fn decode_b64(text: &str) -> Option<Vec<u8>> {
    let t = text.trim();
    if t == "=" {
        return Some(Vec::new());
    }
    base64::engine::general_purpose::STANDARD.decode(t).ok()
}

/// `<mechanism>NAME</mechanism>` for each name (registered SASL names need no escaping).
fn push_mechanisms<'a>(f: &mut String, names: impl Iterator<Item = &'a str>) {
    for name in names {
        f.push_str("<mechanism>");
        f.push_str(name);
        f.push_str("</mechanism>");
    }
}

/// Our stream header (RFC 6120 §4.7).
pub fn stream_header_xml(host: &str, id: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' id='{}' from='{}' version='1.0' xml:lang='en'>",
        escape_attr(id),
        escape_attr(host)
    )
}

fn postauth_features(extra: &str) -> String {
    format!("<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/><session xmlns='urn:ietf:params:xml:ns:xmpp-session'><optional/></session>{extra}</stream:features>")
}

/// `<failure/>` with this condition, in RFC 6120's namespace or in SASL2's
/// (where the condition keeps RFC 6120's namespace, XEP-0388 §2.6.2).
fn sasl_failure_xml(f: SaslFailure, sasl2: bool) -> String {
    if sasl2 {
        format!("<failure xmlns='urn:xmpp:sasl:2'><{} xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/></failure>", f.as_str())
    } else {
        format!("<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><{}/></failure>", f.as_str())
    }
}

/// A `<challenge/>` with this (not yet base64) data.
fn challenge_xml(data: &[u8], sasl2: bool) -> String {
    let namespace = if sasl2 { ns::SASL2 } else { ns::SASL };
    format!("<challenge xmlns='{namespace}'>{}</challenge>", base64::engine::general_purpose::STANDARD.encode(data))
}

fn iq_reply_xml(id: Option<&str>, payload: Option<&str>) -> String {
    let mut iq = Element::new("iq", ns::CLIENT).with_attr("type", "result");
    if let Some(id) = id {
        iq.set_attr("id", id);
    }
    let mut s = iq.to_xml(ns::CLIENT);
    if let Some(p) = payload {
        // The payload is a constant of ours; splice it in before the closing tag.
        if let Some(stripped) = s.strip_suffix("/>") {
            s = format!("{stripped}>{p}</iq>");
        }
    }
    s
}

fn iq_error_xml(id: Option<&str>, cond: StanzaErrorCondition) -> String {
    let mut iq = Element::new("iq", ns::CLIENT).with_attr("type", "error");
    if let Some(id) = id {
        iq.set_attr("id", id);
    }
    iq.push_child(meerkat_xmpp::error::error_element(cond, None, ns::CLIENT));
    iq.to_xml(ns::CLIENT)
}

fn escape_attr(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('\'', "&apos;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests;
