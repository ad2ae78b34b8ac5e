//! The boundary between the core (sessions, server workers, negotiation) and
//! the XMPP modules.
//!
//! A module implements the typed hooks of [`Module`] it cares about: one Rust
//! method per hook, each with a typed accumulator or return value that can end
//! the chain. The [`Registry`] holds the enabled modules in hook order, built
//! once at start from `[modules.mod_*]`, with a dispatch table of IQ handlers
//! per payload namespace. A module sees the node through a [`ModuleCtx`]
//! (router, storage, accounts, and the hooks of the other modules), never
//! through the session actor or the server workers; it keeps per-session
//! state in a slot of [`SessionState`] under a type of its own, and queues its
//! background work as a [`ModuleJob`] that the server workers run (and batch)
//! without knowing what it is.
//!
//! **Architecture Invariants:**
//! - no module imports `session`, `server`, `services` or another module;
//!   what modules need of each other goes through hooks;
//! - no core file (`session.rs`, `server.rs`, `c2s.rs`, `negotiation.rs`)
//!   names a module;
//! - session hooks run in the session actor: they neither block nor await;
//!   work that needs storage becomes a [`ModuleJob`].

pub mod errors;
pub mod pools;
pub mod registry;
pub mod service;
pub mod state;
pub mod util;

use std::any::Any;
use std::sync::Arc;

use meerkat_routing::{Routed, Router};
use meerkat_storage::Storage;
use meerkat_xmpp::element::Element;
use meerkat_xmpp::error::StanzaErrorCondition;
use meerkat_xmpp::jid::{BareJid, FullJid, Jid};

pub use errors::{account_error, storage_error};
pub use registry::{Hooks, HostModules, Registry, StreamFeatures};
pub use service::{ListenerTls, Service, ServiceCtx, ServiceEnv, ServiceSet, TlsFiles};
pub use state::SessionState;

use crate::auth::Accounts;

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

/// What a session does with a stanza routed to it ([`Module::user_receive`]),
/// and what the server does with a stanza for an account ([`Module::filter_local`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Receive {
    /// Go on (deliver it, unless a later module says otherwise).
    Deliver,
    /// Drop it silently.
    Drop,
    /// Answer the sender with this error instead.
    Bounce(StanzaErrorCondition),
}

/// Whether a hook chain goes on to the next module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// This module took care of it: later modules (and the default) are skipped.
    Stop,
}

/// A push notification (XEP-0357) for [`Module::push_notification`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushNotification {
    pub owner: BareJid,
    /// The app server and node the client enabled.
    pub pubsub_jid: String,
    pub node: String,
    /// The `urn:xmpp:push:summary` fields.
    pub message_count: i64,
    pub last_message_sender: String,
    pub last_message_body: String,
    /// The publish-options the client gave, field by field.
    pub options: Vec<(String, String)>,
}

/// One figure a module exports in `/metrics` ([`Module::metrics`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Metric {
    /// Prometheus name, `meerkat_` first, `_total` last for a counter.
    pub name: &'static str,
    pub labels: Vec<(&'static str, String)>,
    pub value: f64,
    /// A counter (only grows) rather than a gauge.
    pub counter: bool,
}

impl Metric {
    /// A counter without labels, read from `value`.
    pub fn counter(name: &'static str, value: &std::sync::atomic::AtomicU64) -> Metric {
        Metric {
            name,
            labels: Vec::new(),
            value: value.load(std::sync::atomic::Ordering::Relaxed) as f64,
            counter: true,
        }
    }
}

/// A disco#info identity (XEP-0030 §3.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub category: &'static str,
    pub kind: &'static str,
    /// `xml:lang`, empty when absent.
    pub lang: &'static str,
    pub name: String,
}

/// A disco#items entry (XEP-0030 §4.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscoItem {
    pub jid: String,
    pub node: Option<String>,
    pub name: Option<String>,
    /// Listed only to entities without a localpart, unless
    /// `[modules.mod_disco] users_can_see_hidden_services` (MongooseIM's hidden components).
    pub hidden: bool,
}

/// What a module sees of the node: routing, storage, accounts and the other
/// modules' hooks (the chain of the host in question, [`Hooks::of`]). Cheap
/// to clone; built once by the node.
#[derive(Clone)]
pub struct ModuleCtx {
    pub router: Arc<Router>,
    pub storage: Arc<Storage>,
    pub accounts: Accounts,
    /// The modules of each host: `hooks.of(host)` is the chain to run for it.
    pub hooks: Arc<Hooks>,
    /// The HTTP and AMQP pools of `[outgoing_pools]`, by name.
    pub pools: Arc<pools::ModulePools>,
    /// The node's traffic counters, for connections that services accept.
    pub instruments: Arc<crate::instrument::Instruments>,
}

/// Why [`ModuleCtx::ask_node`] got no answer.
#[derive(Debug, thiserror::Error)]
pub enum NodeRequestError {
    /// This node is not in a cluster.
    #[error("not in a cluster")]
    NoCluster,
    /// The request or its answer did not cross (the node is down, slow or
    /// unknown): it may or may not have been served.
    #[error(transparent)]
    Transport(meerkat_cluster::transport::TransportError),
    /// The module on the other node answered with an error.
    #[error("node {0}: {1}")]
    Refused(u64, String),
}

impl ModuleCtx {
    /// The live member of the cluster (this node outside one) that `key` is
    /// placed on: a rendezvous hash of the key over the members this node can
    /// reach, so that when one leaves, only its keys move.
    pub fn owner_node(&self, key: &str) -> meerkat_cluster::NodeId {
        let me = self.router.node();
        if self.router.transport().is_none() {
            // Not in a cluster: everything is placed here.
            return me;
        }
        let live = self.router.sessions().live_nodes(me);
        meerkat_cluster::placement::rendezvous(key, &live).unwrap_or(me)
    }

    /// Sends `body` to `module` on `node` and waits (up to `timeout`) for its
    /// answer ([`Module::node_request`] there).
    pub async fn ask_node(
        &self,
        node: meerkat_cluster::NodeId,
        module: &str,
        body: Vec<u8>,
        timeout: std::time::Duration,
    ) -> Result<Vec<u8>, NodeRequestError> {
        use meerkat_cluster::transport::{Request, Response, TransportError, WireError};
        let transport = self.router.transport().ok_or(NodeRequestError::NoCluster)?;
        match transport.request(node.0, Request::Module { module: module.to_owned(), body }, timeout).await {
            Ok(Response::Module(answer)) => Ok(answer),
            Ok(other) => Err(NodeRequestError::Refused(node.0, format!("unexpected answer {other:?}"))),
            Err(TransportError::Remote(WireError::Failed(why))) => Err(NodeRequestError::Refused(node.0, why)),
            Err(e) => Err(NodeRequestError::Transport(e)),
        }
    }
}

/// Background work a module queues on the server workers: jobs with the same
/// [`ModuleJob::shard_key`] run one after another, in queue order.
#[async_trait::async_trait]
pub trait ModuleJob: Send + 'static {
    /// The account (bare JID) whose shard runs the job.
    fn shard_key(&self) -> String;

    /// Offers the job queued right behind this one, before this one runs: a job
    /// that batches takes it in (`None`); any other is handed back. A batch
    /// must stop taking jobs at its own bound.
    fn absorb(&mut self, next: Box<dyn ModuleJob>) -> Option<Box<dyn ModuleJob>> {
        Some(next)
    }

    /// For [`ModuleJob::absorb`]: the job as `Any`, to recognise one's own kind.
    fn as_any_mut(&mut self) -> &mut dyn Any;

    async fn run(self: Box<Self>, ctx: &ModuleCtx);
}

impl std::fmt::Debug for dyn ModuleJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModuleJob").field("shard", &self.shard_key()).finish()
    }
}

/// What the session hooks ask of their session, applied by the session after
/// the chain (MongooseIM's `mongoose_c2s_acc`).
#[derive(Default)]
pub struct SessionAcc {
    /// Stanzas to write to the client, in order, after those written so far;
    /// they do not pass [`Module::client_output`] again.
    pub write: Vec<Element>,
    /// Jobs the server workers must have queued before the session goes on
    /// (the session waits while their queues are full).
    pub jobs: Vec<Box<dyn ModuleJob>>,
    /// Hold live messages to this session until the stored ones are written
    /// ([`meerkat_routing::SessionSink::deliver_stored`] with `release`).
    pub hold_messages: bool,
    /// A new connection may take this session over with this id
    /// ([`Module::session_resume`]); the session is findable by it until it ends.
    pub resumable: Option<String>,
    /// Timers to arm: each goes off once, after its delay, as
    /// [`Module::session_timer`] of the module that armed it, and only while
    /// the client is connected.
    pub timers: Vec<Timer>,
    /// End the stream.
    pub stop: Option<Stop>,
    /// [`Module::user_send_message`]: a module took the message, which is
    /// not routed (its jobs are still queued; the client gets
    /// `service-unavailable` when they cannot be).
    pub taken: bool,
}

/// A timer a session hook arms ([`SessionAcc::timers`]).
#[derive(Clone, Copy, Debug)]
pub struct Timer {
    pub after: std::time::Duration,
    /// The [`Module::name`] of the module whose [`Module::session_timer`] it calls.
    pub owner: &'static str,
    /// Handed back to the hook, to tell its timers apart.
    pub token: u64,
}

/// How a hook ends its session's stream ([`SessionAcc::stop`]).
#[derive(Debug)]
pub struct Stop {
    pub error: meerkat_xmpp::error::StreamError,
    /// Stanzas still on their way to the session go back to the account
    /// instead of being written (the client cannot be trusted to read them).
    pub reroute_queued: bool,
}

/// What became of a message for a local account that no session took
/// ([`Module::undelivered_message`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Undelivered {
    /// A module kept it (offline storage) or decided it needs no answer.
    pub handled: bool,
    /// It was written to offline storage.
    pub stored: bool,
}

/// The hooks that run for every stanza (in the session, or per archived or
/// broadcast row in the server workers) or for every login, as a set: a
/// module may say which of them it implements ([`Module::hot_hooks`]), so
/// that the registry calls only those. The default, [`HookSet::ALL`], is
/// always correct.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HookSet(u16);

impl HookSet {
    pub const NONE: HookSet = HookSet(0);
    pub const CLIENT_STANZA: HookSet = HookSet(1);
    pub const USER_SEND_CHECK: HookSet = HookSet(1 << 1);
    pub const USER_SEND_MESSAGE: HookSet = HookSet(1 << 2);
    pub const USER_RECEIVE: HookSet = HookSet(1 << 3);
    pub const CLIENT_OUTPUT: HookSet = HookSet(1 << 4);
    pub const CLIENT_WROTE: HookSet = HookSet(1 << 5);
    pub const BLOCKS: HookSet = HookSet(1 << 6);
    pub const FILTER_LOCAL: HookSet = HookSet(1 << 7);
    pub const SESSION_OPENING: HookSet = HookSet(1 << 8);
    pub const USER_AVAILABLE: HookSet = HookSet(1 << 9);
    pub const USER_UNAVAILABLE: HookSet = HookSet(1 << 10);
    pub const PRESENCE_IN: HookSet = HookSet(1 << 11);
    pub const UNDELIVERED_MESSAGE: HookSet = HookSet(1 << 12);
    pub const ROSTER_CHANGED: HookSet = HookSet(1 << 13);
    pub const ALL: HookSet = HookSet(u16::MAX);

    pub const fn with(self, other: HookSet) -> HookSet {
        HookSet(self.0 | other.0)
    }

    pub const fn has(self, hook: HookSet) -> bool {
        self.0 & hook.0 == hook.0
    }
}

/// The typed hooks a module may implement. Every method has a default that
/// does nothing, so a module implements only what it needs.
///
/// Hooks run in module order (the order of [`Registry`]); where a hook can end
/// the chain, its return value says so. Those taking `&mut SessionState` run
/// in the session actor and must neither block nor await; `async` ones run in
/// the server workers (or, for [`Module::session_opening`], in the connection
/// task before the session starts) and may await storage.
#[async_trait::async_trait]
pub trait Module: Send + Sync + 'static {
    /// MongooseIM's name of the module (`mod_roster`), as in `[modules.*]`.
    fn name(&self) -> &'static str;

    /// Which of the per-stanza and per-login hooks ([`HookSet`]) this module
    /// implements; the others are not called for it. Declaring fewer than it implements
    /// silently skips them, so a module that is unsure keeps the default.
    fn hot_hooks(&self) -> HookSet {
        HookSet::ALL
    }

    // ----- life of the node -----

    /// The node starts, before any client is accepted: the place to register
    /// a service domain (`ctx.router.register_domain`, keeping its guard until
    /// [`Module::stop`]), start the module's own tasks or check its storage.
    /// An error stops the node's start, naming the module.
    async fn start(&self, _ctx: &ModuleCtx) -> Result<(), String> {
        Ok(())
    }

    /// The node stops, once its sessions ended and before the server workers
    /// do: undo what [`Module::start`] did. Modules stop in reverse order.
    async fn stop(&self, _ctx: &ModuleCtx) {}

    // ----- negotiation, per connection -----

    /// XEP-0077 registration before authentication, asked from `source`
    /// (the client's address; unknown for some HTTP requests). `Err` refuses
    /// it with that stanza error. A module that counts registrations takes
    /// the place here and learns the outcome from [`Module::registration_done`].
    fn registration_begin(&self, _source: Option<std::net::IpAddr>) -> Result<(), StanzaErrorCondition> {
        Ok(())
    }

    /// How a registration this module let begin ended: `created` is false when
    /// no account was made (the name was taken, storage failed, another
    /// module refused), so a place taken in `registration_begin` is given back.
    fn registration_done(&self, _source: Option<std::net::IpAddr>, _created: bool) {}

    // ----- negotiation, collected once at start -----

    /// Elements this module adds to `<stream:features/>`: before authentication
    /// when `post_auth` is false, after it (with bind) when true.
    fn stream_features(&self, _hooks: &Registry, _post_auth: bool) -> Vec<Element> {
        Vec::new()
    }

    /// SASL mechanisms (by name) this module adds to those the listener offers.
    fn sasl_mechanisms(&self) -> &'static [&'static str] {
        &[]
    }

    /// XEP-0388 `<inline/>` features this module offers inside SASL2.
    fn sasl2_inline(&self) -> Vec<Element> {
        Vec::new()
    }

    /// XEP-0386 Bind2 `<inline/>` features this module offers
    /// (`<feature var='…'/>`).
    fn bind2_inline(&self) -> Vec<Element> {
        Vec::new()
    }

    /// XEP-0386: one child of the client's `<bind/>` (an inline request such
    /// as `<enable xmlns='urn:xmpp:sm:3'/>`), before the session runs.
    /// Returns true when this module took it; what it writes into
    /// `acc.write` goes inside `<bound/>`, and the rest of `acc` is carried
    /// out when the session starts.
    fn bind2_request(
        &self,
        _ctx: &ModuleCtx,
        _jid: &FullJid,
        _state: &mut SessionState,
        _request: &Element,
        _acc: &mut SessionAcc,
    ) -> bool {
        false
    }

    /// A step of stream negotiation on `host` that needs a module's storage
    /// (XEP-0484 FAST tokens: [`crate::negotiation::NegAction::LookupFastTokens`]
    /// and [`crate::negotiation::NegAction::Fast`]): the module that keeps
    /// that store answers with the event negotiation goes on with; `None`:
    /// not this module's. Runs in the connection's task, before the session.
    async fn negotiation_action(
        &self,
        _ctx: &ModuleCtx,
        _host: &str,
        _action: &crate::negotiation::NegAction,
    ) -> Option<crate::negotiation::NegEvent> {
        None
    }

    // ----- service discovery -----

    /// Features this module adds to disco#info of `target` (XEP-0030).
    fn disco_features(&self, _target: Target) -> &'static [&'static str] {
        &[]
    }

    /// Identities this module adds to disco#info of `target`.
    fn disco_identities(&self, _target: Target) -> Vec<Identity> {
        Vec::new()
    }

    /// Items this module adds to disco#items of `target`.
    fn disco_items(&self, _ctx: &ModuleCtx, _target: Target) -> Vec<DiscoItem> {
        Vec::new()
    }

    // ----- IQs, dispatched by the payload's namespace -----

    /// Payload namespaces of the IQ get/set this module answers in the server
    /// workers ([`Module::iq`]).
    fn iq_namespaces(&self) -> &'static [&'static str] {
        &[]
    }

    /// An IQ get/set whose payload is in one of [`Module::iq_namespaces`].
    /// `None` means "not mine", and the next module of that namespace is asked;
    /// when none answers, the sender gets `service-unavailable`.
    async fn iq(&self, _ctx: &ModuleCtx, _target: Target, _iq: &Routed, _payload: &Element) -> Option<IqAnswer> {
        None
    }

    /// Payload namespaces of the IQs to the user's own account this module
    /// looks at in the session ([`Module::session_iq`]).
    fn session_iq_namespaces(&self) -> &'static [&'static str] {
        &[]
    }

    /// An IQ get/set the client addressed to its own account, handled in the
    /// session because it is about the session itself. `None` lets it go on
    /// (to the next module, then to the server).
    fn session_iq(
        &self,
        _ctx: &ModuleCtx,
        _jid: &FullJid,
        _state: &mut SessionState,
        _iq: &Element,
        _payload: &Element,
    ) -> Option<IqAnswer> {
        None
    }

    // ----- session life -----

    /// A session is being bound, before it is routable: the place to read what
    /// the session hooks need into its state.
    async fn session_opening(&self, _ctx: &ModuleCtx, _jid: &FullJid, _state: &mut SessionState) {}

    /// The session is bound and routable.
    fn session_opened(&self, _ctx: &ModuleCtx, _jid: &FullJid, _state: &mut SessionState) {}

    /// A new connection resumed the session (XEP-0198).
    fn session_resumed(&self, _ctx: &ModuleCtx, _jid: &FullJid, _state: &mut SessionState) {}

    /// The session left routing and is ending; jobs in `acc` are queued
    /// (waiting for room), written stanzas are dropped.
    fn session_closed(&self, _ctx: &ModuleCtx, _jid: &FullJid, _state: &mut SessionState, _acc: &mut SessionAcc) {}

    /// A stanza from the client, counted before anything else happens to it
    /// (XEP-0198 counts what the server handled).
    fn client_stanza(&self, _state: &mut SessionState) {}

    /// A stanza was written to the client. A module may keep it (return
    /// `None`: XEP-0198 keeps it until the client acknowledges it); the
    /// elements it puts in `acc.write` are written right after it.
    fn client_wrote(&self, _state: &mut SessionState, stanza: Element, _acc: &mut SessionAcc) -> Option<Element> {
        Some(stanza)
    }

    /// The connection ended without a closing tag: how long the session waits
    /// for a new connection to resume it, if at all.
    fn connection_lost(&self, _state: &SessionState) -> Option<std::time::Duration> {
        None
    }

    /// A new connection asks to take the session over after the client
    /// handled `h` stanzas. `None`: not this module's; `Some(false)`: refused;
    /// `Some(true)`: resumed, with what to write first in `acc.write`.
    fn session_resume(
        &self,
        _ctx: &ModuleCtx,
        _state: &mut SessionState,
        _previd: &str,
        _h: u32,
        _acc: &mut SessionAcc,
    ) -> Option<bool> {
        None
    }

    /// Stanzas written that the client may not have received, taken out of
    /// the module's keeping: the session gives the messages among them back
    /// to the account (RFC 6121 §8.5.3, XEP-0198 §5).
    fn unacknowledged(&self, _state: &mut SessionState) -> Vec<Element> {
        Vec::new()
    }

    /// A stanza reached the session while its connection is gone and it
    /// waits for a resumption (XEP-0198): it is kept for the client, who may
    /// not come back soon. Jobs in `acc` are queued (push notifications).
    fn stanza_while_detached(
        &self,
        _ctx: &ModuleCtx,
        _jid: &FullJid,
        _state: &mut SessionState,
        _stanza: &Element,
        _acc: &mut SessionAcc,
    ) {
    }

    /// The client has sent nothing for [`CoreTuning::silent_after`] (once per
    /// silence): the place to ping it (XEP-0199) with `acc.write` and arm a
    /// timer for the answer.
    fn client_silent(&self, _ctx: &ModuleCtx, _jid: &FullJid, _state: &mut SessionState, _acc: &mut SessionAcc) {}

    /// A timer this module armed ([`SessionAcc::timers`]) went off, with its token.
    fn session_timer(
        &self,
        _ctx: &ModuleCtx,
        _jid: &FullJid,
        _state: &mut SessionState,
        _token: u64,
        _acc: &mut SessionAcc,
    ) {
    }

    /// An IQ result or error from the client to the server or to its own
    /// account: the answer to a request the server sent it. `true` when this
    /// module takes it (it goes no further).
    fn client_iq_response(&self, _state: &mut SessionState, _iq: &Element) -> bool {
        false
    }

    /// A top-level element from the client that is not a stanza. `true` when
    /// this module took it; an element no module takes ends the stream.
    fn session_element(
        &self,
        _ctx: &ModuleCtx,
        _jid: &FullJid,
        _state: &mut SessionState,
        _el: &Element,
        _acc: &mut SessionAcc,
    ) -> bool {
        false
    }

    // ----- what a user sends -----

    /// Any stanza the client sent with a `to`, with `from` stamped and `to`
    /// canonical, before anything else happens to it. An error refuses it: the
    /// client gets the stanza back with this `<error/>` element, and the chain ends.
    fn user_send_check(
        &self,
        _ctx: &ModuleCtx,
        _state: &SessionState,
        _from: &FullJid,
        _to: &Jid,
        _stanza: &Element,
    ) -> Result<(), Element> {
        Ok(())
    }

    /// A message the user sent, about to be routed (`from` stamped, `to`
    /// canonical); the hook may change it, or take it ([`SessionAcc::taken`]:
    /// it is not routed). Jobs in `acc` are queued before the message is
    /// routed. An error refuses it with that condition and ends the chain.
    fn user_send_message(
        &self,
        _ctx: &ModuleCtx,
        _state: &mut SessionState,
        _from: &FullJid,
        _to: &Jid,
        _stanza: &mut Element,
        _acc: &mut SessionAcc,
    ) -> Result<(), StanzaErrorCondition> {
        Ok(())
    }

    /// Presence the user sent (RFC 6121 §4): broadcast (`to` is `None`;
    /// `initial` for the first available presence of the session) or directed
    /// and subscription presence. [`Flow::Stop`] when this module took it;
    /// otherwise a directed presence is routed to `to` after the chain.
    #[allow(clippy::too_many_arguments)]
    fn user_send_presence(
        &self,
        _ctx: &ModuleCtx,
        _state: &mut SessionState,
        _from: &FullJid,
        _to: Option<&Jid>,
        _presence: &Element,
        _initial: bool,
        _acc: &mut SessionAcc,
    ) -> Flow {
        Flow::Continue
    }

    // ----- what a user receives -----

    /// A stanza routed to the session of `jid`, before it is written to the
    /// client. Anything but [`Receive::Deliver`] ends the chain.
    fn user_receive(&self, _ctx: &ModuleCtx, _jid: &FullJid, _state: &mut SessionState, _stanza: &Element) -> Receive {
        Receive::Deliver
    }

    /// A stanza about to be written to the client. The hook may keep it for
    /// later (return `None`), or write stanzas it kept before it (push them to
    /// `out`). `urgent` stanzas (replies to the client's own requests) must
    /// not be kept. What comes out of the chain is written in order.
    fn client_output(
        &self,
        _state: &mut SessionState,
        stanza: Element,
        _urgent: bool,
        _out: &mut Vec<Element>,
    ) -> Option<Element> {
        Some(stanza)
    }

    /// Whether a stanza that reached a session but not its client (the session
    /// ended) goes back to the account; `false` from any module keeps it from it.
    fn returns_to_account(&self, _stanza: &Element) -> bool {
        true
    }

    // ----- the server on an account's behalf -----

    /// Whether `owner` blocks all traffic with `peer` (XEP-0191, XEP-0016).
    async fn blocks(&self, _ctx: &ModuleCtx, _owner: &BareJid, _peer: &Jid) -> bool {
        false
    }

    /// [`Module::blocks`] when it can be answered without waiting (from what
    /// the module holds in memory); `None` when only [`Module::blocks`] can
    /// tell. A module with [`HookSet::BLOCKS`] that keeps nothing in memory
    /// keeps this default.
    fn blocks_known(&self, _ctx: &ModuleCtx, _owner: &BareJid, _peer: &Jid) -> Option<bool> {
        None
    }

    /// A number that changes on this node whenever an answer of
    /// [`Module::blocks_known`] may change because of a blocklist change
    /// (read it before asking, so that an answer is never newer than the
    /// number it goes with); `None` when the module cannot tell. An answer
    /// kept with its number stays good while the number does, within the
    /// staleness [`Module::blocks_known`] already has (cached lists that
    /// another node changed).
    fn blocks_generation(&self) -> Option<u64> {
        None
    }

    /// A stanza the server handles for a local account (an IQ to the bare
    /// JID, subscription presence or a probe, a message for offline storage).
    /// Anything but [`Receive::Deliver`] ends the chain.
    async fn filter_local(&self, _ctx: &ModuleCtx, _r: &Routed) -> Receive {
        Receive::Deliver
    }

    /// A message for a local account that no session took (RFC 6121 §8.5.2.2).
    /// A module that keeps it says so in `acc`; [`Flow::Stop`] ends the chain.
    /// When nobody handled it, the sender gets `service-unavailable`.
    async fn undelivered_message(&self, _ctx: &ModuleCtx, _r: &Routed, _acc: &mut Undelivered) -> Flow {
        Flow::Continue
    }

    /// Subscription presence or a probe for a local account (RFC 6121 §3,
    /// §4.3), after [`Module::filter_local`].
    async fn presence_in(&self, _ctx: &ModuleCtx, _r: &Routed) -> Flow {
        Flow::Continue
    }

    /// A push notification to an app server that is one of the push
    /// backend's `virtual_pubsub_hosts`: a module that delivers it itself
    /// (MongoosePush over HTTP) answers `true`.
    async fn push_notification(&self, _ctx: &ModuleCtx, _n: &PushNotification) -> bool {
        false
    }

    /// The module's own figures for `/metrics`, read at each scrape.
    fn metrics(&self) -> Vec<Metric> {
        Vec::new()
    }

    /// A request from this module on another node of the cluster
    /// ([`ModuleCtx::ask_node`]), in the module's own encoding; the answer
    /// goes back in it too.
    async fn node_request(&self, _ctx: &ModuleCtx, _from_node: u64, _body: Vec<u8>) -> Result<Vec<u8>, String> {
        Err(format!("{} takes no requests from other nodes", self.name()))
    }

    /// The account's unread message count, all conversations together (the
    /// badge of a push notification); `None` when this module keeps none.
    async fn unread_count(&self, _ctx: &ModuleCtx, _owner: &BareJid) -> Option<i64> {
        None
    }

    /// A resource just sent its initial presence, and it was broadcast.
    async fn user_available(&self, _ctx: &ModuleCtx, _jid: &FullJid) {}

    /// A resource that was available sent unavailable presence or ended.
    async fn user_unavailable(&self, _ctx: &ModuleCtx, _jid: &FullJid) {}

    /// A roster item of `owner` changed (a roster set, a subscription change,
    /// a removal with [`meerkat_storage::Subscription::Remove`]); it is stored.
    async fn roster_changed(&self, _ctx: &ModuleCtx, _owner: &BareJid, _item: &meerkat_storage::RosterItem) {}
}

/// Settings of the core that modules' sections decide
/// ([`registry::ModuleSpec::tune`]): the core runs these mechanisms, the
/// module's section configures them.
#[derive(Clone, Debug, Default)]
pub struct CoreTuning {
    /// Tell the session's modules ([`Module::client_silent`]) once the client
    /// has sent nothing for this long (`mod_ping` pings it then); `None`: never.
    pub silent_after: Option<std::time::Duration>,
    /// XEP-0077 in-band registration during stream negotiation.
    pub in_band_registration: bool,
    /// What stream negotiation offers beyond RFC 6120 (SASL2, Bind2, FAST,
    /// resumption inside SASL2), passed to it as it is.
    pub negotiation: crate::negotiation::ModuleNegotiation,
}

/// A module section with nothing but `enabled` (on by default).
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Switch {
    /// Run the module.
    pub enabled: bool,
}

impl Default for Switch {
    fn default() -> Self {
        Switch { enabled: true }
    }
}
