//! XMPP modules and the server's job dispatch.
//!
//! A module implements the typed hooks of [`Module`] it cares about; each
//! hook is one Rust method, run in module order, and the first module that
//! answers an IQ ends the chain. Modules run per host; the same list serves
//! every host of the node.
//!
//! Hooks run in two places. The server workers run [`Module::iq`],
//! [`Module::user_available`] and [`Module::blocklist`]; they may await storage.
//! The session actor runs the `session_*` and `user_*` hooks on the
//! session's own [`SessionState`]; those must neither block nor await. The
//! session calls them in the order a stanza travels:
//! - from its client: [`Module::session_element`] for top-level elements
//!   that are not stanzas, [`Module::session_iq`] for IQs to the user's own
//!   account, then [`Module::user_send_check`] for every stanza and
//!   [`Module::user_send_message`] for messages, before routing;
//! - to its client: [`Module::user_receive`], before writing.

pub mod blocking;
pub mod carbons;
pub mod csi;
pub mod disco;
pub mod mam;
pub mod misc;
pub mod offline;
pub mod presence;
pub mod private;
pub mod register;
pub mod roster;
pub mod vcard;

use meerkat_xmpp::jid::Bare as _;
use std::sync::Arc;

use meerkat_routing::{Routed, ServerJob};
use meerkat_xmpp::element::Element;
use meerkat_xmpp::error::{error_reply, StanzaErrorCondition};
use meerkat_xmpp::jid::{BareJid, FullJid, Jid};
use meerkat_xmpp::stanza::{iq_payload, iq_result, IqType, StanzaKind};

use crate::server::WorkerJob;
use crate::services::Services;

/// Whom an IQ is addressed to, as far as the server is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// A host of ours.
    Server,
    /// The sender's own account (no `to`, or the sender's bare JID).
    OwnAccount,
    /// Another local account's bare JID.
    OtherAccount,
}

/// An IQ answer: a result with an optional payload, or an error condition.
pub type IqAnswer = Result<Option<Element>, StanzaErrorCondition>;

/// What the modules keep per session. The session actor owns it and hands it
/// to the session hooks; nothing else reads it.
#[derive(Debug, Default)]
pub struct SessionState {
    /// XEP-0280: the client enabled carbons.
    pub carbons: bool,
    /// XEP-0191: the client asked for the blocklist, so it gets blocklist pushes.
    pub blocklist_requested: bool,
    /// XEP-0191: the user's blocklist as this session enforces it: read at bind,
    /// then kept current by the blocklist pushes every session receives.
    pub blocklist: Option<Arc<blocking::Blocklist>>,
    /// XEP-0352: whether the client is inactive, and what waits for it meanwhile.
    pub csi: csi::CsiQueue,
}

/// What a session does with a stanza routed to it ([`Module::user_receive`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Receive {
    /// Write it to the client (unless a later module says otherwise).
    Deliver,
    /// Drop it silently.
    Drop,
    /// Answer the sender with this error instead.
    Bounce(StanzaErrorCondition),
}

/// The typed hooks a module may implement.
#[async_trait::async_trait]
pub trait Module: Send + Sync {
    fn name(&self) -> &'static str;

    /// Features this module adds to disco#info of `target` (XEP-0030).
    fn disco_features(&self, _target: Target) -> &'static [&'static str] {
        &[]
    }

    /// Elements this module adds to `<stream:features/>`: before authentication
    /// when `post_auth` is false, after it (with bind) when true. Collected once,
    /// at start-up ([`stream_features`]).
    fn stream_features(&self, _post_auth: bool) -> Vec<Element> {
        Vec::new()
    }

    /// An IQ get/set. `None` means "not mine", and the next module is asked.
    async fn iq(&self, _svc: &Arc<Services>, _target: Target, _iq: &Routed, _payload: &Element) -> Option<IqAnswer> {
        None
    }

    /// A resource just sent its initial presence.
    async fn user_available(&self, _svc: &Arc<Services>, _jid: &FullJid) {}

    /// The blocklist of `owner`, a local account (XEP-0191); `None` from every
    /// module but the one that keeps blocklists. Asked by the server workers, so
    /// it may read storage.
    async fn blocklist(&self, _svc: &Arc<Services>, _owner: &BareJid) -> Option<Arc<blocking::Blocklist>> {
        None
    }

    /// A session is being bound, before it is routable: the place to read what
    /// the session hooks need into its state.
    async fn session_opening(&self, _svc: &Arc<Services>, _jid: &FullJid, _state: &mut SessionState) {}

    /// A top-level element from the client that is not a stanza. `true` when
    /// this module took it; an element no module takes ends the stream.
    fn session_element(&self, _svc: &Arc<Services>, _state: &mut SessionState, _el: &Element) -> bool {
        false
    }

    /// An IQ get/set the client addressed to its own account (no `to`, or its
    /// bare JID), handled in the session because it is about the session itself.
    /// `None` lets it go on to the server.
    fn session_iq(
        &self,
        _svc: &Arc<Services>,
        _jid: &FullJid,
        _state: &mut SessionState,
        _iq: &Element,
        _payload: &Element,
    ) -> Option<IqAnswer> {
        None
    }

    /// Any stanza the client sent, with `from` stamped and `to` canonical, before
    /// anything else happens to it. An error refuses it: the client gets the
    /// stanza back with this `<error/>` element, and the chain ends.
    fn user_send_check(
        &self,
        _svc: &Arc<Services>,
        _state: &SessionState,
        _from: &FullJid,
        _to: &Jid,
        _stanza: &Element,
    ) -> Result<(), Element> {
        Ok(())
    }

    /// A local user's session is about to route a message it sent, with `from`
    /// stamped and `to` canonical; the hook may change the stanza. It runs in the
    /// session actor, so it must neither block nor await: work that needs storage
    /// goes into `jobs`, which the session queues on the server workers before
    /// it routes the message (waiting while they are full). An error refuses
    /// the message with that condition and ends the chain.
    fn user_send_message(
        &self,
        _svc: &Arc<Services>,
        _from: &FullJid,
        _to: &Jid,
        _stanza: &mut Element,
        _jobs: &mut Vec<WorkerJob>,
    ) -> Result<(), StanzaErrorCondition> {
        Ok(())
    }

    /// A stanza routed to the session of `jid`, before it is written to the
    /// client. Anything but [`Receive::Deliver`] ends the chain.
    fn user_receive(
        &self,
        _svc: &Arc<Services>,
        _jid: &FullJid,
        _state: &mut SessionState,
        _stanza: &Element,
    ) -> Receive {
        Receive::Deliver
    }
}

/// Runs every module's [`Module::user_send_message`] hook, in module order.
/// Returns the jobs the hooks want queued before the message is routed.
pub fn user_send_message(
    svc: &Arc<Services>,
    from: &FullJid,
    to: &Jid,
    stanza: &mut Element,
) -> Result<Vec<WorkerJob>, StanzaErrorCondition> {
    let mut jobs = Vec::new();
    for m in &svc.modules {
        m.user_send_message(svc, from, to, stanza, &mut jobs)?;
    }
    Ok(jobs)
}

/// Runs every module's [`Module::user_send_check`] hook; the first refusal wins.
pub fn user_send_check(
    svc: &Arc<Services>,
    state: &SessionState,
    from: &FullJid,
    to: &Jid,
    stanza: &Element,
) -> Result<(), Element> {
    for m in &svc.modules {
        m.user_send_check(svc, state, from, to, stanza)?;
    }
    Ok(())
}

/// Runs every module's [`Module::user_receive`] hook until one does not deliver.
pub fn user_receive(svc: &Arc<Services>, jid: &FullJid, state: &mut SessionState, stanza: &Element) -> Receive {
    for m in &svc.modules {
        match m.user_receive(svc, jid, state, stanza) {
            Receive::Deliver => {}
            other => return other,
        }
    }
    Receive::Deliver
}

/// Offers a non-stanza element to the modules; `false` when none took it.
pub fn session_element(svc: &Arc<Services>, state: &mut SessionState, el: &Element) -> bool {
    svc.modules.iter().any(|m| m.session_element(svc, state, el))
}

/// Offers an IQ to the user's own account to the session hooks.
pub fn session_iq(
    svc: &Arc<Services>,
    jid: &FullJid,
    state: &mut SessionState,
    iq: &Element,
    payload: &Element,
) -> Option<IqAnswer> {
    svc.modules.iter().find_map(|m| m.session_iq(svc, jid, state, iq, payload))
}

/// The state a new session starts with.
pub async fn session_opening(svc: &Arc<Services>, jid: &FullJid) -> SessionState {
    let mut state = SessionState::default();
    for m in &svc.modules {
        m.session_opening(svc, jid, &mut state).await;
    }
    state
}

/// The blocklist of `owner` (XEP-0191), if blocking is on.
pub async fn blocklist(svc: &Arc<Services>, owner: &BareJid) -> Option<Arc<blocking::Blocklist>> {
    for m in &svc.modules {
        if let Some(list) = m.blocklist(svc, owner).await {
            return Some(list);
        }
    }
    None
}

/// Whether `owner` blocks all traffic with `peer` (XEP-0191).
pub async fn blocks(svc: &Arc<Services>, owner: &BareJid, peer: &Jid) -> bool {
    blocklist(svc, owner).await.is_some_and(|l| blocking::applies(svc, &l, owner, peer))
}

/// The error reply to `stanza` with this `<error/>` element (RFC 6120 §8.3.1),
/// for conditions that need more than [`error_reply`] writes (an application
/// condition, another type). `None` for an error stanza.
pub fn error_reply_with(stanza: &Element, error: Element) -> Option<Element> {
    let mut reply = error_reply(stanza, StanzaErrorCondition::UndefinedCondition, None)?;
    reply.children.pop();
    reply.push_child(error);
    Some(reply)
}

/// The extra children of `<stream:features/>`, before and after authentication.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamFeatures {
    pub pre_auth: String,
    pub post_auth: String,
}

/// What the modules add to the stream features, serialized once.
pub fn stream_features(modules: &[Arc<dyn Module>]) -> StreamFeatures {
    let collect = |post_auth: bool| {
        modules
            .iter()
            .flat_map(|m| m.stream_features(post_auth))
            .map(|e| e.to_xml(meerkat_xmpp::ns::STREAM))
            .collect::<String>()
    };
    StreamFeatures { pre_auth: collect(false), post_auth: collect(true) }
}

/// The default module list.
pub fn default_modules(cfg: &ModulesConfig) -> Vec<Arc<dyn Module>> {
    let mut m: Vec<Arc<dyn Module>> = vec![
        Arc::new(roster::Roster),
        Arc::new(misc::Ping),
        Arc::new(misc::Version { name: "Meerkat".into(), version: env!("CARGO_PKG_VERSION").into() }),
        Arc::new(misc::Time),
        Arc::new(vcard::Vcard),
        Arc::new(private::PrivateStorage),
        Arc::new(offline::Offline),
    ];
    // Blocking comes before the modules that act on a message (archiving,
    // carbons), so that a refused or dropped stanza leaves no trace.
    if cfg.blocking {
        m.push(Arc::new(blocking::Blocking::new()));
    }
    if let Some(mam) = &cfg.mam {
        m.push(Arc::new(mam::MamModule::new(mam.clone())));
    }
    if cfg.carbons {
        m.push(Arc::new(carbons::Carbons));
    }
    if cfg.csi {
        m.push(Arc::new(csi::Csi));
    }
    if cfg.registration {
        m.push(Arc::new(register::Register));
    }
    // Last, because the caps hash (XEP-0115) covers every other module's features.
    let disco = disco::Disco::new(&m);
    m.insert(1, Arc::new(disco));
    m
}

/// Which optional modules run, and their settings.
#[derive(Clone, Debug)]
pub struct ModulesConfig {
    /// XEP-0077 in-band registration.
    pub registration: bool,
    /// XEP-0313 archives with these page sizes; `None` turns archiving off.
    pub mam: Option<mam::Mam>,
    /// XEP-0280 message carbons.
    pub carbons: bool,
    /// XEP-0191 blocking command.
    pub blocking: bool,
    /// XEP-0352 client state indication.
    pub csi: bool,
}

impl Default for ModulesConfig {
    fn default() -> Self {
        ModulesConfig { registration: true, mam: Some(mam::Mam::default()), carbons: true, blocking: true, csi: true }
    }
}

/// Runs one server job.
pub async fn handle_job(svc: &Arc<Services>, job: WorkerJob) {
    match job {
        WorkerJob::Routed(ServerJob::ToServer(r)) => to_server_or_account(svc, r, Target::Server).await,
        WorkerJob::Routed(ServerJob::ToAccount(r)) => {
            let target = if r.from.bare() == r.to.bare() { Target::OwnAccount } else { Target::OtherAccount };
            if let Some(r) = unless_blocked(svc, r).await {
                to_server_or_account(svc, r, target).await
            }
        }
        WorkerJob::Routed(ServerJob::InboundPresence(r)) => {
            if let Some(r) = unless_blocked(svc, r).await {
                presence::inbound(svc, r).await
            }
        }
        WorkerJob::Routed(ServerJob::Undelivered(r)) => {
            if let Some(r) = unless_blocked(svc, r).await {
                offline::undelivered(svc, r).await
            }
        }
        WorkerJob::Broadcast { from, presence, initial, directed } => {
            presence::broadcast(svc, &from, presence, initial, directed).await
        }
        WorkerJob::OutboundSubscription(r) => presence::outbound_subscription(svc, r).await,
        WorkerJob::Archive(job) => mam::store(svc, vec![job]).await,
    }
}

/// XEP-0191: a stanza the server handles for an account (an IQ to the bare JID,
/// subscription presence or a probe, a message for offline storage) from someone
/// the account blocks is refused as the session would refuse it
/// ([`blocking::refusal`]). `None` when it was.
async fn unless_blocked(svc: &Arc<Services>, r: Routed) -> Option<Routed> {
    let owner = r.to.bare();
    if r.from.bare() == owner || !blocks(svc, &owner, &r.from).await {
        return Some(r);
    }
    match blocking::refusal(&r.stanza) {
        Receive::Bounce(cond) => svc.router.bounce(r, cond),
        _ => tracing::debug!(to = %r.to, "dropping a stanza from a blocked JID"),
    }
    None
}

async fn to_server_or_account(svc: &Arc<Services>, r: Routed, target: Target) {
    match StanzaKind::of(&r.stanza) {
        Some(StanzaKind::Iq) => handle_iq(svc, r, target).await,
        // Messages to the server itself carry nothing for us (RFC 6120 §10.3.1);
        // a presence to a host is likewise ignored.
        Some(StanzaKind::Message) | Some(StanzaKind::Presence) | None => {}
    }
}

async fn handle_iq(svc: &Arc<Services>, r: Routed, target: Target) {
    match IqType::of(&r.stanza) {
        Some(t) if t.is_request() => {}
        // Results and errors addressed to the server answer nothing we asked.
        Some(_) => return,
        None => {
            svc.router.bounce(r, StanzaErrorCondition::BadRequest);
            return;
        }
    }
    let Some(payload) = iq_payload(&r.stanza).cloned() else {
        svc.router.bounce(r, StanzaErrorCondition::BadRequest);
        return;
    };
    if target == Target::OtherAccount
        && !svc
            .accounts
            .exists(r.to.domain().as_str(), r.to.node().map(|n| n.as_str()).unwrap_or(""))
            .await
            .unwrap_or(false)
    {
        svc.router.bounce(r, StanzaErrorCondition::ServiceUnavailable);
        return;
    }
    for module in &svc.modules {
        if let Some(answer) = module.iq(svc, target, &r, &payload).await {
            reply(svc, r, answer);
            return;
        }
    }
    svc.router.bounce(r, StanzaErrorCondition::ServiceUnavailable);
}

/// Sends an IQ answer back to the requester.
pub fn reply(svc: &Arc<Services>, r: Routed, answer: IqAnswer) {
    match answer {
        Ok(payload) => {
            let mut res = iq_result(&r.stanza, payload);
            res.set_attr("from", r.to.to_string());
            res.set_attr("to", r.from.to_string());
            svc.router.route(Routed { from: r.to, to: r.from, stanza: res });
        }
        Err(cond) => svc.router.bounce(r, cond),
    }
}

/// Localpart and domain of an account JID.
pub fn account_of(jid: &meerkat_xmpp::jid::Jid) -> (String, String) {
    (jid.node().map(|n| n.as_str().to_owned()).unwrap_or_default(), jid.domain().as_str().to_owned())
}

/// Parses a stanza kept as XML text (offline storage, archives) back into an element.
pub fn parse_stored(xml: &str) -> Option<Element> {
    use meerkat_xmpp::parser::{Limits, StreamEvent, StreamParser};
    let mut p = StreamParser::new(Limits { max_stanza_size: xml.len() + 1024, max_depth: 256 });
    p.feed(b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>");
    p.feed(xml.as_bytes());
    match p.next_event() {
        Ok(Some(StreamEvent::Header(_))) => {}
        _ => return None,
    }
    match p.next_event() {
        Ok(Some(StreamEvent::Stanza(el))) => Some(el),
        _ => None,
    }
}
