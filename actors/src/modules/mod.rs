//! XMPP modules and the server's job dispatch.
//!
//! A module implements the typed hooks of [`Module`] it cares about; each
//! hook is one Rust method, run in module order, and the first module that
//! answers an IQ ends the chain. Modules run per host; the same list serves
//! every host of the node.

pub mod disco;
pub mod mam;
pub mod misc;
pub mod offline;
pub mod presence;
pub mod private;
pub mod register;
pub mod roster;
pub mod vcard;

use std::sync::Arc;

use meerkat_routing::{Routed, ServerJob};
use meerkat_xmpp::element::Element;
use meerkat_xmpp::error::StanzaErrorCondition;
use meerkat_xmpp::jid::{FullJid, Jid};
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

/// The typed hooks a module may implement.
#[async_trait::async_trait]
pub trait Module: Send + Sync {
    fn name(&self) -> &'static str;

    /// Features this module adds to disco#info of `target` (XEP-0030).
    fn disco_features(&self, _target: Target) -> &'static [&'static str] {
        &[]
    }

    /// An IQ get/set. `None` means "not mine", and the next module is asked.
    async fn iq(&self, _svc: &Arc<Services>, _target: Target, _iq: &Routed, _payload: &Element) -> Option<IqAnswer> {
        None
    }

    /// A resource just sent its initial presence.
    async fn user_available(&self, _svc: &Arc<Services>, _jid: &FullJid) {}

    /// A local user's session is about to route a message it sent, with `from`
    /// stamped and `to` canonical; the hook may change the stanza. It runs in the
    /// session actor, so it must neither block nor await: work that needs storage
    /// is queued on the server workers. An error refuses the message with that
    /// condition and ends the chain.
    fn user_send_message(
        &self,
        _svc: &Arc<Services>,
        _from: &FullJid,
        _to: &Jid,
        _stanza: &mut Element,
    ) -> Result<(), StanzaErrorCondition> {
        Ok(())
    }
}

/// Runs every module's [`Module::user_send_message`] hook, in module order.
pub fn user_send_message(
    svc: &Arc<Services>,
    from: &FullJid,
    to: &Jid,
    stanza: &mut Element,
) -> Result<(), StanzaErrorCondition> {
    for m in &svc.modules {
        m.user_send_message(svc, from, to, stanza)?;
    }
    Ok(())
}

/// The default module list.
pub fn default_modules(cfg: &ModulesConfig) -> Vec<Arc<dyn Module>> {
    let mut m: Vec<Arc<dyn Module>> = vec![
        Arc::new(roster::Roster),
        Arc::new(disco::Disco),
        Arc::new(misc::Ping),
        Arc::new(misc::Version { name: "Meerkat".into(), version: env!("CARGO_PKG_VERSION").into() }),
        Arc::new(misc::Time),
        Arc::new(vcard::Vcard),
        Arc::new(private::PrivateStorage),
        Arc::new(offline::Offline),
        // Always on, with default page sizes: `ModulesConfig` has no section for it yet.
        Arc::new(mam::Mam::default()),
    ];
    if cfg.registration {
        m.push(Arc::new(register::Register));
    }
    m
}

/// Which optional modules run.
#[derive(Clone, Debug)]
pub struct ModulesConfig {
    pub registration: bool,
}

/// Runs one server job.
pub async fn handle_job(svc: &Arc<Services>, job: WorkerJob) {
    match job {
        WorkerJob::Routed(ServerJob::ToServer(r)) => to_server_or_account(svc, r, Target::Server).await,
        WorkerJob::Routed(ServerJob::ToAccount(r)) => {
            let target = if r.from.to_bare() == r.to.to_bare() { Target::OwnAccount } else { Target::OtherAccount };
            to_server_or_account(svc, r, target).await
        }
        WorkerJob::Routed(ServerJob::InboundPresence(r)) => presence::inbound(svc, r).await,
        WorkerJob::Routed(ServerJob::Undelivered(r)) => offline::undelivered(svc, r).await,
        WorkerJob::Broadcast { from, presence, initial, directed } => {
            presence::broadcast(svc, &from, presence, initial, directed).await
        }
        WorkerJob::OutboundSubscription(r) => presence::outbound_subscription(svc, r).await,
        WorkerJob::Archive(job) => mam::store(svc, vec![job]).await,
    }
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
