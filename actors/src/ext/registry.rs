//! The enabled modules, in hook order, with their dispatch tables, and the
//! functions the core calls to run a hook over all of them.
//!
//! Built once at start ([`Registry::new`]) from the modules the config
//! enables; read-only afterwards, so running a hook takes no lock. A
//! [`Registry`] is the chain of one host; [`Hooks`] holds the node's chains:
//! one shared by every host, and one of its own for each host whose
//! `[[host_config]]` overrides module sections (MongooseIM's `host_config`).

use std::collections::HashMap;
use std::sync::Arc;

use meerkat_routing::Routed;
use meerkat_xmpp::element::Element;
use meerkat_xmpp::error::StanzaErrorCondition;
use meerkat_xmpp::jid::{BareJid, FullJid, Jid};

use super::{
    CoreTuning, DiscoItem, Flow, HookSet, Identity, IqAnswer, Module, ModuleCtx, Receive, SessionAcc, SessionState,
    Target, Undelivered,
};

/// How a module is configured and started: its `[modules.mod_*]` section.
pub trait ModuleSpec {
    /// MongooseIM's name of the module, the key of its section.
    const NAME: &'static str;
    /// Its section: a serde struct with defaults, documented field by field,
    /// that refuses unknown keys.
    type Config: serde::de::DeserializeOwned + Default + Clone + std::fmt::Debug;
    /// Whether the module runs with this section (or the default one, when
    /// the config has none).
    fn enabled(cfg: &Self::Config) -> bool;
    /// Checks the section's meaning; the error names the key (relative to the
    /// section) and why.
    fn validate(_cfg: &Self::Config) -> Result<(), (&'static str, String)> {
        Ok(())
    }
    /// Settings of the core this section decides, whether or not the module runs.
    fn tune(_cfg: &Self::Config, _core: &mut super::CoreTuning) {}
    /// The module keeps state for the whole node (actors, queues, a service
    /// domain per host, requests from other nodes): it runs once per node,
    /// and its section cannot be overridden per host.
    const NODE_WIDE: bool = false;
    /// The running module.
    fn build(cfg: &Self::Config) -> Arc<dyn Module>;
}

/// What the modules add to stream negotiation, serialized once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamFeatures {
    /// Extra children of `<stream:features/>` before authentication.
    pub pre_auth: String,
    /// Extra children of `<stream:features/>` after authentication.
    pub post_auth: String,
    /// SASL mechanisms modules add to those configured.
    pub sasl_mechanisms: Vec<&'static str>,
    /// XEP-0388 inline features, serialized.
    pub sasl2_inline: String,
    /// XEP-0386 inline features, serialized.
    pub bind2_inline: String,
}

/// The enabled modules.
pub struct Registry {
    modules: Vec<Arc<dyn Module>>,
    /// Payload namespace -> the modules answering IQs in it, in module order.
    iq: HashMap<&'static str, Vec<Arc<dyn Module>>>,
    /// Payload namespace -> the modules looking at own-account IQs in the session.
    session_iq: HashMap<&'static str, Vec<Arc<dyn Module>>>,
    /// The modules that implement each per-stanza session hook, in module order.
    client_stanza: Vec<Arc<dyn Module>>,
    user_send_check: Vec<Arc<dyn Module>>,
    user_send_message: Vec<Arc<dyn Module>>,
    user_receive: Vec<Arc<dyn Module>>,
    client_output: Vec<Arc<dyn Module>>,
    client_wrote: Vec<Arc<dyn Module>>,
    blocks: Vec<Arc<dyn Module>>,
    filter_local: Vec<Arc<dyn Module>>,
    /// And each per-login hook.
    session_opening: Vec<Arc<dyn Module>>,
    user_available: Vec<Arc<dyn Module>>,
    user_unavailable: Vec<Arc<dyn Module>>,
    presence_in: Vec<Arc<dyn Module>>,
    undelivered_message: Vec<Arc<dyn Module>>,
    roster_changed: Vec<Arc<dyn Module>>,
}

/// Serves [`meerkat_cluster::transport::Request::Module`]: the named module's
/// [`Module::node_request`].
struct NodeRequests(ModuleCtx);

impl meerkat_cluster::transport::ModuleHandler for NodeRequests {
    fn handle(&self, from: u64, module: String, body: Vec<u8>) -> meerkat_cluster::transport::ModuleReply<'_> {
        Box::pin(async move {
            let ctx = &self.0;
            // Modules that take requests from other nodes run once per node.
            if let Some(m) = ctx.hooks.modules().iter().find(|m| m.name() == module) {
                return m.node_request(ctx, from, body).await;
            }
            for s in ctx.hooks.services.get().into_iter().flatten() {
                if let Some(answer) = s.node_request(&module, from, &body).await {
                    return answer;
                }
            }
            Err(format!("{module} does not run on this node"))
        })
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.modules.iter().map(|m| m.name())).finish()
    }
}

impl Registry {
    /// The registry of these modules, in this (hook) order.
    pub fn new(modules: Vec<Arc<dyn Module>>) -> Self {
        let mut iq: HashMap<&'static str, Vec<Arc<dyn Module>>> = HashMap::new();
        let mut session_iq: HashMap<&'static str, Vec<Arc<dyn Module>>> = HashMap::new();
        for m in &modules {
            for ns in m.iq_namespaces() {
                iq.entry(ns).or_default().push(m.clone());
            }
            for ns in m.session_iq_namespaces() {
                session_iq.entry(ns).or_default().push(m.clone());
            }
        }
        let with = |hook: HookSet| -> Vec<Arc<dyn Module>> {
            modules.iter().filter(|m| m.hot_hooks().has(hook)).cloned().collect()
        };
        Registry {
            client_stanza: with(HookSet::CLIENT_STANZA),
            user_send_check: with(HookSet::USER_SEND_CHECK),
            user_send_message: with(HookSet::USER_SEND_MESSAGE),
            user_receive: with(HookSet::USER_RECEIVE),
            client_output: with(HookSet::CLIENT_OUTPUT),
            client_wrote: with(HookSet::CLIENT_WROTE),
            blocks: with(HookSet::BLOCKS),
            filter_local: with(HookSet::FILTER_LOCAL),
            session_opening: with(HookSet::SESSION_OPENING),
            user_available: with(HookSet::USER_AVAILABLE),
            user_unavailable: with(HookSet::USER_UNAVAILABLE),
            presence_in: with(HookSet::PRESENCE_IN),
            undelivered_message: with(HookSet::UNDELIVERED_MESSAGE),
            roster_changed: with(HookSet::ROSTER_CHANGED),
            modules,
            iq,
            session_iq,
        }
    }

    /// The modules' names, in hook order.
    pub fn names(&self) -> Vec<&'static str> {
        self.modules.iter().map(|m| m.name()).collect()
    }

    pub fn modules(&self) -> &[Arc<dyn Module>] {
        &self.modules
    }

    /// What the modules add to negotiation.
    pub fn stream_features(&self) -> StreamFeatures {
        let collect = |post_auth: bool| {
            self.modules
                .iter()
                .flat_map(|m| m.stream_features(self, post_auth))
                .map(|e| e.to_xml(meerkat_xmpp::ns::STREAM))
                .collect::<String>()
        };
        let xml = |els: Vec<Element>| els.iter().map(|e| e.to_xml(meerkat_xmpp::ns::STREAM)).collect::<String>();
        let mut sasl_mechanisms: Vec<&'static str> = Vec::new();
        for m in &self.modules {
            for mech in m.sasl_mechanisms() {
                if !sasl_mechanisms.contains(mech) {
                    sasl_mechanisms.push(mech);
                }
            }
        }
        StreamFeatures {
            pre_auth: collect(false),
            post_auth: collect(true),
            sasl_mechanisms,
            sasl2_inline: xml(self.modules.iter().flat_map(|m| m.sasl2_inline()).collect()),
            bind2_inline: xml(self.modules.iter().flat_map(|m| m.bind2_inline()).collect()),
        }
    }

    /// The first module's answer to a negotiation step that needs its
    /// storage; `None` when no module carries it out.
    pub async fn negotiation_action(
        &self,
        ctx: &ModuleCtx,
        host: &str,
        action: &crate::negotiation::NegAction,
    ) -> Option<crate::negotiation::NegEvent> {
        for m in &self.modules {
            if let Some(event) = m.negotiation_action(ctx, host, action).await {
                return Some(event);
            }
        }
        None
    }

    /// Features of `target`, sorted, without duplicates.
    pub fn disco_features(&self, target: Target) -> Vec<&'static str> {
        let mut f: Vec<&'static str> =
            self.modules.iter().flat_map(|m| m.disco_features(target).iter().copied()).collect();
        f.sort_unstable();
        f.dedup();
        f
    }

    /// Identities of `target`, in module order.
    pub fn disco_identities(&self, target: Target) -> Vec<Identity> {
        self.modules.iter().flat_map(|m| m.disco_identities(target)).collect()
    }

    /// Items of `target`, hidden ones included.
    pub fn disco_items(&self, ctx: &ModuleCtx, target: Target) -> Vec<DiscoItem> {
        self.modules.iter().flat_map(|m| m.disco_items(ctx, target)).collect()
    }

    /// Answers an IQ get/set with the modules of its payload's namespace;
    /// `None` when none of them did.
    pub async fn iq(&self, ctx: &ModuleCtx, target: Target, iq: &Routed, payload: &Element) -> Option<IqAnswer> {
        for m in self.iq.get(payload.ns.as_str())? {
            if let Some(answer) = m.iq(ctx, target, iq, payload).await {
                return Some(answer);
            }
        }
        None
    }

    /// Offers an IQ to the user's own account to the session hooks of its namespace.
    pub fn session_iq(
        &self,
        ctx: &ModuleCtx,
        jid: &FullJid,
        state: &mut SessionState,
        iq: &Element,
        payload: &Element,
    ) -> Option<IqAnswer> {
        self.session_iq.get(payload.ns.as_str())?.iter().find_map(|m| m.session_iq(ctx, jid, state, iq, payload))
    }

    /// The state a new session starts with.
    pub async fn session_opening(&self, ctx: &ModuleCtx, jid: &FullJid) -> SessionState {
        let mut state = SessionState::default();
        for m in &self.session_opening {
            m.session_opening(ctx, jid, &mut state).await;
        }
        state
    }

    /// XEP-0386 inline requests, each to the first module that takes it;
    /// requests nobody takes are ignored.
    pub fn bind2_requests(
        &self,
        ctx: &ModuleCtx,
        jid: &FullJid,
        state: &mut SessionState,
        requests: &[Element],
    ) -> SessionAcc {
        let mut acc = SessionAcc::default();
        for r in requests {
            if !self.modules.iter().any(|m| m.bind2_request(ctx, jid, state, r, &mut acc)) {
                tracing::debug!(%jid, request = %r, "bind2 inline request nobody takes");
            }
        }
        acc
    }

    pub fn session_opened(&self, ctx: &ModuleCtx, jid: &FullJid, state: &mut SessionState) {
        for m in &self.modules {
            m.session_opened(ctx, jid, state);
        }
    }

    pub fn session_resumed(&self, ctx: &ModuleCtx, jid: &FullJid, state: &mut SessionState) {
        for m in &self.modules {
            m.session_resumed(ctx, jid, state);
        }
    }

    pub fn session_closed(&self, ctx: &ModuleCtx, jid: &FullJid, state: &mut SessionState) -> SessionAcc {
        let mut acc = SessionAcc::default();
        for m in &self.modules {
            m.session_closed(ctx, jid, state, &mut acc);
        }
        acc
    }

    /// The client has been silent: what the modules ask (a ping, a timer).
    /// A stanza kept for a client that is gone and may resume.
    pub fn stanza_while_detached(
        &self,
        ctx: &ModuleCtx,
        jid: &FullJid,
        state: &mut SessionState,
        stanza: &Element,
    ) -> SessionAcc {
        let mut acc = SessionAcc::default();
        for m in &self.modules {
            m.stanza_while_detached(ctx, jid, state, stanza, &mut acc);
        }
        acc
    }

    pub fn client_silent(&self, ctx: &ModuleCtx, jid: &FullJid, state: &mut SessionState) -> SessionAcc {
        let mut acc = SessionAcc::default();
        for m in &self.modules {
            m.client_silent(ctx, jid, state, &mut acc);
        }
        acc
    }

    /// A timer `owner` armed went off.
    pub fn session_timer(
        &self,
        ctx: &ModuleCtx,
        jid: &FullJid,
        state: &mut SessionState,
        owner: &'static str,
        token: u64,
    ) -> SessionAcc {
        let mut acc = SessionAcc::default();
        if let Some(m) = self.modules.iter().find(|m| m.name() == owner) {
            m.session_timer(ctx, jid, state, token, &mut acc);
        }
        acc
    }

    /// Whether a module takes an IQ response from the client as the answer to its request.
    pub fn client_iq_response(&self, state: &mut SessionState, iq: &Element) -> bool {
        self.modules.iter().any(|m| m.client_iq_response(state, iq))
    }

    pub fn client_stanza(&self, state: &mut SessionState) {
        for m in &self.client_stanza {
            m.client_stanza(state);
        }
    }

    /// Runs the hooks on a stanza written to the client; what they ask to write after it.
    pub fn client_wrote(&self, state: &mut SessionState, stanza: Element) -> SessionAcc {
        let mut acc = SessionAcc::default();
        let mut next = Some(stanza);
        for m in &self.client_wrote {
            let Some(s) = next.take() else { break };
            next = m.client_wrote(state, s, &mut acc);
        }
        acc
    }

    /// How long the session waits to be resumed after its connection ended, if at all.
    /// Whether an in-band registration from `source` may go ahead; on
    /// `Ok`, [`Registry::registration_done`] must follow with the outcome.
    pub fn registration_begin(&self, source: Option<std::net::IpAddr>) -> Result<(), StanzaErrorCondition> {
        for (i, m) in self.modules.iter().enumerate() {
            if let Err(cond) = m.registration_begin(source) {
                for earlier in &self.modules[..i] {
                    earlier.registration_done(source, false);
                }
                return Err(cond);
            }
        }
        Ok(())
    }

    /// The outcome of a registration that [`Registry::registration_begin`] let go ahead.
    pub fn registration_done(&self, source: Option<std::net::IpAddr>, created: bool) {
        for m in &self.modules {
            m.registration_done(source, created);
        }
    }

    pub fn connection_lost(&self, state: &SessionState) -> Option<std::time::Duration> {
        self.modules.iter().find_map(|m| m.connection_lost(state))
    }

    /// Whether a module resumed the session, with what to write first.
    pub fn session_resume(
        &self,
        ctx: &ModuleCtx,
        state: &mut SessionState,
        previd: &str,
        h: u32,
    ) -> Option<SessionAcc> {
        let mut acc = SessionAcc::default();
        for m in &self.modules {
            match m.session_resume(ctx, state, previd, h, &mut acc) {
                None => continue,
                Some(true) => return Some(acc),
                Some(false) => return None,
            }
        }
        None
    }

    /// What the modules kept of the stanzas written, oldest first per module.
    pub fn unacknowledged(&self, state: &mut SessionState) -> Vec<Element> {
        self.modules.iter().flat_map(|m| m.unacknowledged(state)).collect()
    }

    /// Offers a non-stanza element to the modules; `None` when none took it.
    pub fn session_element(
        &self,
        ctx: &ModuleCtx,
        jid: &FullJid,
        state: &mut SessionState,
        el: &Element,
    ) -> Option<SessionAcc> {
        let mut acc = SessionAcc::default();
        self.modules.iter().any(|m| m.session_element(ctx, jid, state, el, &mut acc)).then_some(acc)
    }

    /// The first refusal of a stanza the user sends, if any.
    pub fn user_send_check(
        &self,
        ctx: &ModuleCtx,
        state: &SessionState,
        from: &FullJid,
        to: &Jid,
        stanza: &Element,
    ) -> Result<(), Element> {
        for m in &self.user_send_check {
            m.user_send_check(ctx, state, from, to, stanza)?;
        }
        Ok(())
    }

    /// Runs the hooks on a message the user sends; the jobs to queue before routing it.
    pub fn user_send_message(
        &self,
        ctx: &ModuleCtx,
        state: &mut SessionState,
        from: &FullJid,
        to: &Jid,
        stanza: &mut Element,
    ) -> Result<SessionAcc, StanzaErrorCondition> {
        let mut acc = SessionAcc::default();
        for m in &self.user_send_message {
            m.user_send_message(ctx, state, from, to, stanza, &mut acc)?;
            if acc.taken {
                break;
            }
        }
        Ok(acc)
    }

    /// Runs the hooks on presence the user sends; whether a module took it.
    #[allow(clippy::too_many_arguments)]
    pub fn user_send_presence(
        &self,
        ctx: &ModuleCtx,
        state: &mut SessionState,
        from: &FullJid,
        to: Option<&Jid>,
        presence: &Element,
        initial: bool,
        acc: &mut SessionAcc,
    ) -> Flow {
        for m in &self.modules {
            if m.user_send_presence(ctx, state, from, to, presence, initial, acc) == Flow::Stop {
                return Flow::Stop;
            }
        }
        Flow::Continue
    }

    /// Runs the hooks on a stanza for the session of `jid` until one does not deliver.
    pub fn user_receive(&self, ctx: &ModuleCtx, jid: &FullJid, state: &mut SessionState, stanza: &Element) -> Receive {
        for m in &self.user_receive {
            match m.user_receive(ctx, jid, state, stanza) {
                Receive::Deliver => {}
                other => return other,
            }
        }
        Receive::Deliver
    }

    /// What to write for a stanza on its way to the client: what the hooks
    /// put in `out` first, then the stanza returned, if any.
    pub fn client_output(
        &self,
        state: &mut SessionState,
        stanza: Element,
        urgent: bool,
        out: &mut Vec<Element>,
    ) -> Option<Element> {
        let mut next = Some(stanza);
        for m in &self.client_output {
            let Some(s) = next.take() else { break };
            next = m.client_output(state, s, urgent, out);
        }
        next
    }

    /// Whether an unwritten stanza of an ending session goes back to the account.
    pub fn returns_to_account(&self, stanza: &Element) -> bool {
        self.modules.iter().all(|m| m.returns_to_account(stanza))
    }

    /// Whether `owner` blocks all traffic with `peer`.
    pub async fn blocks(&self, ctx: &ModuleCtx, owner: &BareJid, peer: &Jid) -> bool {
        for m in &self.blocks {
            if m.blocks(ctx, owner, peer).await {
                return true;
            }
        }
        false
    }

    /// [`Registry::blocks`] without waiting, when every module that blocks
    /// can tell from memory; `None` otherwise.
    pub fn blocks_known(&self, ctx: &ModuleCtx, owner: &BareJid, peer: &Jid) -> Option<bool> {
        for m in &self.blocks {
            match m.blocks_known(ctx, owner, peer) {
                Some(false) => {}
                other => return other,
            }
        }
        Some(false)
    }

    /// The sum of the blocking modules' [`Module::blocks_generation`]s
    /// (changes when any of them does); `None` when one cannot tell.
    pub fn blocks_generation(&self) -> Option<u64> {
        self.blocks.iter().try_fold(0u64, |sum, m| m.blocks_generation().map(|g| sum.wrapping_add(g)))
    }

    /// Whether the server goes on with a stanza for a local account.
    pub async fn filter_local(&self, ctx: &ModuleCtx, r: &Routed) -> Receive {
        for m in &self.filter_local {
            match m.filter_local(ctx, r).await {
                Receive::Deliver => {}
                other => return other,
            }
        }
        Receive::Deliver
    }

    /// Runs the chain on a message no session took.
    pub async fn undelivered_message(&self, ctx: &ModuleCtx, r: &Routed) -> Undelivered {
        let mut acc = Undelivered::default();
        for m in &self.undelivered_message {
            if m.undelivered_message(ctx, r, &mut acc).await == Flow::Stop {
                break;
            }
        }
        acc
    }

    /// Runs the chain on subscription presence or a probe for a local account.
    pub async fn presence_in(&self, ctx: &ModuleCtx, r: &Routed) -> Flow {
        for m in &self.presence_in {
            if m.presence_in(ctx, r).await == Flow::Stop {
                return Flow::Stop;
            }
        }
        Flow::Continue
    }

    /// Hands a push notification to the first module that delivers it.
    pub async fn push_notification(&self, ctx: &ModuleCtx, n: &super::PushNotification) -> bool {
        for m in &self.modules {
            if m.push_notification(ctx, n).await {
                return true;
            }
        }
        false
    }

    /// The account's unread message count, from the first module that keeps one.
    pub async fn unread_count(&self, ctx: &ModuleCtx, owner: &BareJid) -> Option<i64> {
        for m in &self.modules {
            if let Some(n) = m.unread_count(ctx, owner).await {
                return Some(n);
            }
        }
        None
    }

    pub async fn user_available(&self, ctx: &ModuleCtx, jid: &FullJid) {
        for m in &self.user_available {
            m.user_available(ctx, jid).await;
        }
    }

    pub async fn user_unavailable(&self, ctx: &ModuleCtx, jid: &FullJid) {
        for m in &self.user_unavailable {
            m.user_unavailable(ctx, jid).await;
        }
    }

    pub async fn roster_changed(&self, ctx: &ModuleCtx, owner: &BareJid, item: &meerkat_storage::RosterItem) {
        for m in &self.roster_changed {
            m.roster_changed(ctx, owner, item).await;
        }
    }
}

/// What the modules of one host decide: their chain, the settings of the
/// core their sections tune, and what they add to negotiation.
#[derive(Clone)]
pub struct HostModules {
    pub registry: Arc<Registry>,
    pub tuning: Arc<CoreTuning>,
    pub features: Arc<StreamFeatures>,
}

impl HostModules {
    /// The chain of these modules, in this (hook) order, with the core
    /// settings their sections decide.
    pub fn new(modules: Vec<Arc<dyn Module>>, tuning: CoreTuning) -> Self {
        let registry = Arc::new(Registry::new(modules));
        let features = Arc::new(registry.stream_features());
        HostModules { registry, tuning: Arc::new(tuning), features }
    }
}

/// The node's modules, host by host: the chain every host shares, and a
/// chain of its own for each host with a `[[host_config]]` that overrides
/// module sections. A module whose section no host overrides is one instance
/// in every chain.
pub struct Hooks {
    shared: HostModules,
    hosts: HashMap<String, HostModules>,
    /// Every instance once, in hook order: what starts, stops, reports
    /// metrics and answers other nodes.
    all: Vec<Arc<dyn Module>>,
    /// The node's services, once they start: they answer other nodes'
    /// requests that no module takes.
    services: std::sync::OnceLock<Vec<Arc<dyn super::Service>>>,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut m = f.debug_map();
        m.entry(&"*", &self.shared.registry);
        let mut hosts: Vec<_> = self.hosts.iter().collect();
        hosts.sort_by(|a, b| a.0.cmp(b.0));
        for (h, hm) in hosts {
            m.entry(h, &hm.registry);
        }
        m.finish()
    }
}

impl Hooks {
    /// One chain for every host.
    pub fn single(modules: Vec<Arc<dyn Module>>) -> Self {
        Hooks::new(HostModules::new(modules, CoreTuning::default()), Vec::new())
    }

    /// The shared chain, and the chains of hosts that have their own.
    pub fn new(shared: HostModules, hosts: Vec<(String, HostModules)>) -> Self {
        let mut all: Vec<Arc<dyn Module>> = Vec::new();
        let chains = std::iter::once(&shared).chain(hosts.iter().map(|(_, h)| h));
        for chain in chains {
            for m in chain.registry.modules() {
                if !all.iter().any(|a| Arc::ptr_eq(a, m)) {
                    all.push(m.clone());
                }
            }
        }
        Hooks { shared, hosts: hosts.into_iter().collect(), all, services: std::sync::OnceLock::new() }
    }

    /// The chain of `host` (the shared one for a host without its own, or
    /// a domain that is not a host).
    pub fn of(&self, host: &str) -> &Arc<Registry> {
        &self.host(host).registry
    }

    /// What the modules of `host` decide.
    pub fn host(&self, host: &str) -> &HostModules {
        if self.hosts.is_empty() {
            return &self.shared;
        }
        self.hosts.get(host).unwrap_or(&self.shared)
    }

    /// The hosts with a chain of their own, and their chains.
    pub fn overrides(&self) -> impl Iterator<Item = (&str, &HostModules)> {
        self.hosts.iter().map(|(h, m)| (h.as_str(), m))
    }

    /// The chain of hosts without one of their own.
    pub fn shared(&self) -> &HostModules {
        &self.shared
    }

    /// Every module instance once, in hook order.
    pub fn modules(&self) -> &[Arc<dyn Module>] {
        &self.all
    }

    /// The modules' names, in hook order (a module with several instances once).
    pub fn names(&self) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = Vec::new();
        for m in &self.all {
            if !names.contains(&m.name()) {
                names.push(m.name());
            }
        }
        names
    }

    /// Gives the node's services the requests of other nodes that no module takes (once).
    pub fn set_services(&self, services: Vec<Arc<dyn super::Service>>) {
        let _ = self.services.set(services);
    }

    /// Starts the modules in order; the first error names its module.
    pub async fn start(&self, ctx: &ModuleCtx) -> Result<(), (&'static str, String)> {
        for m in &self.all {
            m.start(ctx).await.map_err(|e| (m.name(), e))?;
        }
        // Other nodes' requests to the modules are taken once they all run.
        if let Some(t) = ctx.router.transport() {
            t.set_module_handler(Arc::new(NodeRequests(ctx.clone())));
        }
        Ok(())
    }

    /// Stops the modules in reverse order.
    pub async fn stop(&self, ctx: &ModuleCtx) {
        for m in self.all.iter().rev() {
            m.stop(ctx).await;
        }
    }

    /// Every module's figures for `/metrics`. Instances of one module on
    /// several hosts share their counters: each series is reported once.
    pub fn metrics(&self) -> Vec<super::Metric> {
        let mut out: Vec<super::Metric> = Vec::new();
        for m in self.all.iter().flat_map(|m| m.metrics()) {
            if !out.iter().any(|o| o.name == m.name && o.labels == m.labels) {
                out.push(m);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use meerkat_xmpp::element::Element;

    /// Records the order in which hooks run, and stops where told.
    struct Probe {
        name: &'static str,
        ns: &'static [&'static str],
        answer: Option<IqAnswer>,
        receive: Receive,
        keeps: bool,
        log: Arc<std::sync::Mutex<Vec<String>>>,
    }

    #[async_trait::async_trait]
    impl Module for Probe {
        fn name(&self) -> &'static str {
            self.name
        }
        fn iq_namespaces(&self) -> &'static [&'static str] {
            self.ns
        }
        async fn iq(&self, _ctx: &ModuleCtx, _t: Target, _iq: &Routed, _p: &Element) -> Option<IqAnswer> {
            self.log.lock().unwrap().push(format!("iq {}", self.name));
            self.answer.clone()
        }
        fn stream_features(&self, _hooks: &Registry, post_auth: bool) -> Vec<Element> {
            vec![Element::new(self.name, if post_auth { "urn:post" } else { "urn:pre" })]
        }
        fn disco_features(&self, _t: Target) -> &'static [&'static str] {
            self.ns
        }
        fn client_output(
            &self,
            _state: &mut SessionState,
            stanza: Element,
            urgent: bool,
            out: &mut Vec<Element>,
        ) -> Option<Element> {
            if self.keeps && !urgent {
                out.push(Element::new("flushed", "urn:t"));
                return None;
            }
            Some(stanza)
        }
        fn returns_to_account(&self, stanza: &Element) -> bool {
            stanza.name != self.name
        }
        fn user_receive(&self, _c: &ModuleCtx, _j: &FullJid, _s: &mut SessionState, _st: &Element) -> Receive {
            self.log.lock().unwrap().push(format!("receive {}", self.name));
            self.receive
        }
    }

    fn probe(name: &'static str, ns: &'static [&'static str], log: &Arc<std::sync::Mutex<Vec<String>>>) -> Probe {
        Probe { name, ns, answer: None, receive: Receive::Deliver, keeps: false, log: log.clone() }
    }

    #[test]
    fn iq_handlers_are_dispatched_by_namespace_in_module_order() {
        let log = Arc::default();
        let mut a = probe("a", &["urn:x"], &log);
        a.answer = None;
        let mut b = probe("b", &["urn:x", "urn:y"], &log);
        b.answer = Some(Ok(None));
        let c = probe("c", &["urn:x"], &log);
        let reg = Registry::new(vec![Arc::new(a), Arc::new(b), Arc::new(c)]);
        assert_eq!(reg.iq.get("urn:x").map(|v| v.len()), Some(3));
        assert_eq!(reg.iq.get("urn:y").map(|v| v.len()), Some(1));
        assert!(!reg.iq.contains_key("urn:z"));
        assert_eq!(reg.disco_features(Target::Server), vec!["urn:x", "urn:y"]);
        assert_eq!(reg.names(), vec!["a", "b", "c"]);
    }

    #[test]
    fn stream_features_follow_module_order() {
        let log = Arc::default();
        let reg = Registry::new(vec![Arc::new(probe("one", &[], &log)), Arc::new(probe("two", &[], &log))]);
        let f = reg.stream_features();
        assert_eq!(f.pre_auth, "<one xmlns='urn:pre'/><two xmlns='urn:pre'/>");
        assert_eq!(f.post_auth, "<one xmlns='urn:post'/><two xmlns='urn:post'/>");
    }

    #[test]
    fn client_output_lets_a_module_keep_a_stanza_unless_urgent() {
        let log = Arc::default();
        let mut keeper = probe("keeper", &[], &log);
        keeper.keeps = true;
        let reg = Registry::new(vec![Arc::new(probe("first", &[], &log)), Arc::new(keeper)]);
        let mut state = SessionState::default();
        let mut out = Vec::new();
        let kept = reg.client_output(&mut state, Element::new("message", "jabber:client"), false, &mut out);
        assert!(kept.is_none());
        assert_eq!(out.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), vec!["flushed"]);
        out.clear();
        let urgent = reg.client_output(&mut state, Element::new("iq", "jabber:client"), true, &mut out);
        assert_eq!(urgent.map(|e| e.name), Some("iq".to_owned()));
        assert!(out.is_empty());
    }

    #[test]
    fn any_module_keeps_a_stanza_from_going_back_to_the_account() {
        let log = Arc::default();
        let reg = Registry::new(vec![Arc::new(probe("a", &[], &log)), Arc::new(probe("b", &[], &log))]);
        assert!(reg.returns_to_account(&Element::new("message", "jabber:client")));
        assert!(!reg.returns_to_account(&Element::new("b", "jabber:client")));
    }
}

#[cfg(test)]
pub(crate) mod lifecycle {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use meerkat_cluster::{DomainKind, NodeId, SessionTable};
    use meerkat_routing::{DomainGuard, DomainHandler, Route, Router};
    use meerkat_storage::{DbTls, Storage, StorageConfig};
    use std::sync::Mutex;

    /// Takes every stanza for its domain and keeps nothing.
    struct Sink;
    impl DomainHandler for Sink {
        fn deliver(&self, _routed: Routed) -> Result<(), Routed> {
            Ok(())
        }
    }

    /// Serves `svc.example.org` from start to stop, as a PubSub service would.
    struct Service {
        name: &'static str,
        guard: Mutex<Option<DomainGuard>>,
    }

    fn service(name: &'static str) -> Arc<dyn Module> {
        Arc::new(Service { name, guard: Mutex::new(None) })
    }

    #[async_trait::async_trait]
    impl Module for Service {
        fn name(&self) -> &'static str {
            self.name
        }
        async fn start(&self, ctx: &ModuleCtx) -> Result<(), String> {
            let guard = ctx
                .router
                .register_domain("svc.example.org", DomainKind::Service, Arc::new(Sink))
                .await
                .map_err(|e| e.to_string())?;
            *self.guard.lock().unwrap() = Some(guard);
            Ok(())
        }
        async fn stop(&self, _ctx: &ModuleCtx) {
            self.guard.lock().unwrap().take();
        }
    }

    /// A context on an in-memory SQLite, for the modules' unit tests.
    pub(crate) async fn ctx(modules: Vec<Arc<dyn Module>>) -> ModuleCtx {
        let hosts = vec!["example.org".to_owned()];
        let router = Router::new(NodeId(1), hosts.clone(), Arc::new(SessionTable::new()));
        let cfg = StorageConfig {
            url: "sqlite::memory:".into(),
            pool_size: 1,
            connect_timeout: std::time::Duration::from_secs(5),
            tls: DbTls::Disabled,
        };
        let storage = Arc::new(Storage::connect(&cfg).await.unwrap());
        let accounts = crate::auth::Accounts::new(
            storage.clone(),
            hosts,
            crate::auth::PasswordFormat::Plain,
            4096,
            crate::auth::HashingPool::new(1),
        );
        let instruments = Arc::new(crate::instrument::Instruments::register(router.hosts()));
        ModuleCtx {
            router,
            storage,
            accounts,
            hooks: Arc::new(Hooks::single(modules)),
            pools: Arc::default(),
            instruments,
        }
    }

    #[tokio::test]
    async fn a_module_holds_its_service_domain_from_start_to_stop() {
        let ctx = ctx(vec![service("mod_service")]).await;
        assert_eq!(ctx.router.route_of("svc.example.org"), Route::Remote);
        ctx.hooks.start(&ctx).await.unwrap();
        assert_eq!(ctx.router.route_of("svc.example.org"), Route::Here(DomainKind::Service));
        ctx.hooks.stop(&ctx).await;
        assert_eq!(ctx.router.route_of("svc.example.org"), Route::Remote);
    }

    #[tokio::test]
    async fn a_module_that_cannot_start_is_named() {
        // A second module that wants the same domain.
        let ctx = ctx(vec![service("mod_service"), service("mod_rival")]).await;
        let (module, why) = ctx.hooks.start(&ctx).await.unwrap_err();
        assert_eq!(module, "mod_rival");
        assert!(why.contains("svc.example.org"), "{why}");
    }
}
