//! XEP-0060 publish-subscribe at `pubsub.HOST`, and XEP-0163 PEP on every
//! account's bare JID, on SQL (`[modules.mod_pubsub]`).
//!
//! - **Requests** to a node go through the node's actor ([`actor`]), one at
//!   a time; [`engine`] says what each does on SQL and whom to notify. In a
//!   cluster, one node runs a given PubSub node's actor: the live member
//!   with the highest rendezvous hash of (service, node), as for Inbox;
//!   other nodes forward requests to it over the cluster transport.
//! - **PEP**: requests to an account's bare JID (or none, for one's own);
//!   publishing creates the node (with the publish-options as its
//!   configuration), and only the account publishes. Notifications go to
//!   the node's subscribers, and to the account and its contacts with a
//!   presence subscription whose clients asked for the node (`+notify` in
//!   their entity capabilities, XEP-0115): each session learns its client's
//!   features with a disco#info query when the client's caps `ver` changes,
//!   and keeps a PEP event only where the client asked for its node.
//! - **Service**: `pubsub.HOST` is a service domain every member serves on
//!   its own (`Router::serve_on_every_node`); nodes there are open by
//!   default (a service has no roster).

pub mod actor;
pub mod config;
pub mod engine;
pub mod remote;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meerkat_routing::{DomainGuard, DomainHandler, Routed};
use meerkat_storage::PubsubRepo as _;
use meerkat_xmpp::element::Element;
use meerkat_xmpp::error::StanzaErrorCondition;
use meerkat_xmpp::jid::{Bare as _, FullJid, Jid};
use meerkat_xmpp::ns;
use tokio::sync::mpsc;

use self::actor::{Limits, Nodes, Shared};
use self::config::NodeConfig;
use self::engine::{Op, PsError, Request};
use self::remote::{CapsKey, Remote, Seen};
use crate::ext::registry::ModuleSpec;
use crate::ext::{
    DiscoItem, Flow, HookSet, Identity, IqAnswer, Module, ModuleCtx, Receive, SessionAcc, SessionState, Target,
};

pub const NS_PUBSUB: &str = "http://jabber.org/protocol/pubsub";
pub const NS_PUBSUB_OWNER: &str = "http://jabber.org/protocol/pubsub#owner";
pub const NS_PUBSUB_EVENT: &str = "http://jabber.org/protocol/pubsub#event";
/// XEP-0131 headers, for subscription ids on notifications.
pub const NS_SHIM: &str = "http://jabber.org/protocol/shim";

/// The features PEP and the service announce (XEP-0060 §10).
const FEATURES: &[&str] = &[
    NS_PUBSUB,
    "http://jabber.org/protocol/pubsub#access-open",
    "http://jabber.org/protocol/pubsub#access-presence",
    "http://jabber.org/protocol/pubsub#access-roster",
    "http://jabber.org/protocol/pubsub#access-whitelist",
    "http://jabber.org/protocol/pubsub#access-authorize",
    "http://jabber.org/protocol/pubsub#auto-create",
    "http://jabber.org/protocol/pubsub#auto-subscribe",
    "http://jabber.org/protocol/pubsub#config-node",
    "http://jabber.org/protocol/pubsub#create-and-configure",
    "http://jabber.org/protocol/pubsub#create-nodes",
    "http://jabber.org/protocol/pubsub#delete-items",
    "http://jabber.org/protocol/pubsub#delete-nodes",
    "http://jabber.org/protocol/pubsub#filtered-notifications",
    "http://jabber.org/protocol/pubsub#instant-nodes",
    "http://jabber.org/protocol/pubsub#item-ids",
    "http://jabber.org/protocol/pubsub#last-published",
    "http://jabber.org/protocol/pubsub#manage-affiliations",
    "http://jabber.org/protocol/pubsub#manage-subscriptions",
    "http://jabber.org/protocol/pubsub#modify-affiliations",
    "http://jabber.org/protocol/pubsub#multi-items",
    "http://jabber.org/protocol/pubsub#outcast-affiliation",
    "http://jabber.org/protocol/pubsub#persistent-items",
    "http://jabber.org/protocol/pubsub#publish",
    "http://jabber.org/protocol/pubsub#publish-options",
    "http://jabber.org/protocol/pubsub#publisher-affiliation",
    "http://jabber.org/protocol/pubsub#purge-nodes",
    "http://jabber.org/protocol/pubsub#retract-items",
    "http://jabber.org/protocol/pubsub#retrieve-affiliations",
    "http://jabber.org/protocol/pubsub#retrieve-default",
    "http://jabber.org/protocol/pubsub#retrieve-items",
    "http://jabber.org/protocol/pubsub#retrieve-subscriptions",
    "http://jabber.org/protocol/pubsub#subscribe",
    "http://jabber.org/protocol/pubsub#subscription-notifications",
];

/// `[modules.mod_pubsub]`, with MongooseIM's names where it has them.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PubsubConfig {
    /// Off unless asked for, as in MongooseIM.
    pub enabled: bool,
    /// The service domain of each host; `@HOST@` stands for the host.
    pub host: String,
    /// `flat` serves `host`; `pep` serves every account's bare JID.
    pub plugins: Vec<String>,
    /// The most items a node keeps (and what `pubsub#max_items = max` means).
    pub max_items_per_node: u64,
    /// `all`: anyone may create nodes on the service; `local`: accounts of our hosts only.
    pub access_createnode: String,
    /// PEP nodes one account may have; one more is refused `not-allowed`
    /// (`max-nodes-exceeded`).
    pub max_pep_nodes: usize,
    /// Nodes one account may own on a service domain (those it created and
    /// those it was made an owner of); one more create is refused
    /// `not-allowed` (`max-nodes-exceeded`).
    pub max_nodes_per_account: usize,
    /// Fields of the node configuration new nodes start with (`access_model`,
    /// `max_items`, `persist_items`, …, without the `pubsub#` prefix).
    pub default_node_config: std::collections::BTreeMap<String, FieldValue>,
    /// Node actors resident on this node at most.
    pub max_resident_nodes: usize,
    /// Seconds an idle node actor stays.
    pub node_idle_timeout: u64,
    /// Requests waiting in a node actor's mailbox at most.
    pub node_mailbox: usize,
    /// Notifications routed at once, over all nodes.
    pub fanout_concurrency: usize,
    /// How requests to the service domains run (MongooseIM's `iqdisc`).
    pub iqdisc: IqDisc,
}

/// `iqdisc`, with MongooseIM's names: how many requests to the service
/// domains run at once. Requests to one node always run one at a time, in
/// its actor; this bounds how many nodes are asked at once.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IqDisc {
    /// `one_queue`: one request at a time; `queues`: `workers` at once;
    /// `parallel` and `no_queue`: each request on its own task, at most
    /// [`IqDisc::PARALLEL`] at once (MongooseIM's `parallel` has no bound;
    /// its `no_queue` runs in the sender's connection, which a service
    /// domain here has not).
    #[serde(rename = "type")]
    pub kind: String,
    /// For `queues`.
    pub workers: Option<usize>,
}

impl Default for IqDisc {
    fn default() -> Self {
        IqDisc { kind: "parallel".into(), workers: None }
    }
}

impl IqDisc {
    /// Requests at once under `parallel` and `no_queue`.
    pub const PARALLEL: usize = 64;

    /// Requests at once, or why the setting makes no sense.
    fn concurrency(&self) -> Result<usize, String> {
        match (self.kind.as_str(), self.workers) {
            ("one_queue", None) => Ok(1),
            ("queues", Some(n)) if n >= 1 => Ok(n),
            ("queues", _) => Err("\"queues\" needs workers of at least 1".into()),
            ("parallel" | "no_queue", None) => Ok(Self::PARALLEL),
            ("one_queue" | "parallel" | "no_queue", Some(_)) => Err("workers goes only with \"queues\"".into()),
            (other, _) => {
                Err(format!("unknown type {other:?}; known: \"no_queue\", \"one_queue\", \"queues\", \"parallel\""))
            }
        }
    }
}

impl Default for PubsubConfig {
    fn default() -> Self {
        PubsubConfig {
            enabled: false,
            host: "pubsub.@HOST@".into(),
            plugins: vec!["flat".into(), "pep".into()],
            max_items_per_node: 1000,
            access_createnode: "all".into(),
            max_pep_nodes: 100,
            max_nodes_per_account: 1000,
            default_node_config: std::collections::BTreeMap::new(),
            max_resident_nodes: 10_000,
            node_idle_timeout: 300,
            node_mailbox: 64,
            fanout_concurrency: 256,
            iqdisc: IqDisc::default(),
        }
    }
}

impl PubsubConfig {
    fn default_node_config(&self) -> Result<NodeConfig, String> {
        let mut cfg = NodeConfig::default();
        let form: Vec<(String, Vec<String>)> = self
            .default_node_config
            .iter()
            .map(|(k, v)| {
                let values = match v {
                    FieldValue::List(a) => a.clone(),
                    FieldValue::Text(t) => vec![t.clone()],
                    FieldValue::Number(n) => vec![n.to_string()],
                    FieldValue::Flag(b) => vec![b.to_string()],
                };
                (format!("pubsub#{k}"), values)
            })
            .collect();
        cfg.apply(&form, self.max_items_per_node).map_err(|e| match e {
            config::FormError::Invalid(e) => e,
            config::FormError::Unsupported(f) => format!("{f} are not served"),
        })?;
        Ok(cfg)
    }
}

/// A value of `default_node_config`.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(untagged)]
pub enum FieldValue {
    Flag(bool),
    Number(u64),
    Text(String),
    List(Vec<String>),
}

pub struct Pubsub {
    cfg: PubsubConfig,
    default_config: NodeConfig,
    remote: Arc<Remote>,
    running: Mutex<Option<Running>>,
}

struct Running {
    ctx: ModuleCtx,
    nodes: Arc<Nodes>,
    _domains: Vec<DomainGuard>,
    sweep: tokio::task::JoinHandle<()>,
    requests: tokio::task::JoinHandle<()>,
}

impl ModuleSpec for Pubsub {
    const NAME: &'static str = "mod_pubsub";
    const NODE_WIDE: bool = true;
    type Config = PubsubConfig;
    fn enabled(cfg: &PubsubConfig) -> bool {
        cfg.enabled
    }
    fn validate(cfg: &PubsubConfig) -> Result<(), (&'static str, String)> {
        if let Some(p) = cfg.plugins.iter().find(|p| !["flat", "pep"].contains(&p.as_str())) {
            return Err(("plugins", format!("unknown plugin {p:?}; known: \"flat\", \"pep\"")));
        }
        if !cfg.host.contains("@HOST@") {
            return Err(("host", "must contain @HOST@".into()));
        }
        if !["all", "local"].contains(&cfg.access_createnode.as_str()) {
            return Err(("access_createnode", "must be \"all\" or \"local\"".into()));
        }
        if cfg.max_items_per_node == 0
            || cfg.max_pep_nodes == 0
            || cfg.max_nodes_per_account == 0
            || cfg.max_resident_nodes == 0
            || cfg.node_mailbox == 0
            || cfg.fanout_concurrency == 0
        {
            return Err(("max_items_per_node", "limits must be at least 1".into()));
        }
        cfg.default_node_config().map_err(|e| ("default_node_config", e))?;
        cfg.iqdisc.concurrency().map_err(|e| ("iqdisc", e))?;
        Ok(())
    }
    fn build(cfg: &PubsubConfig) -> Arc<dyn Module> {
        let default_config = cfg.default_node_config().unwrap_or_default();
        Arc::new(Pubsub { cfg: cfg.clone(), default_config, remote: Arc::default(), running: Mutex::new(None) })
    }
}

impl Pubsub {
    fn pep(&self) -> bool {
        self.cfg.plugins.iter().any(|p| p == "pep")
    }

    fn nodes(&self) -> Option<Arc<Nodes>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|r| r.nodes.clone())
    }

    fn service_domains(&self, ctx: &ModuleCtx) -> Vec<String> {
        if !self.cfg.plugins.iter().any(|p| p == "flat") {
            return Vec::new();
        }
        ctx.router.hosts().iter().map(|h| self.cfg.host.replace("@HOST@", h)).collect()
    }
}

impl Pubsub {
    /// Presence from a contact's resource on another server reached a
    /// session of the account: what it says of the contact's caps.
    fn remote_presence(&self, ctx: &ModuleCtx, jid: &FullJid, presence: &Element) {
        let Some(from) = presence.attr("from") else { return };
        let Some((bare, _)) = from.split_once('/') else { return };
        if bare.rsplit('@').next().is_none_or(|d| ctx.router.is_local_host(d)) {
            return;
        }
        let account = jid.bare();
        let seen = match presence.attr("type") {
            None => self.remote.available(account.as_str(), from, CapsKey::of(presence)),
            Some("unavailable") => {
                self.remote.unavailable(account.as_str(), from);
                Seen::Same
            }
            Some(_) => Seen::Same,
        };
        match seen {
            Seen::Same => {}
            Seen::Known(nodes) => {
                if speaks_for(ctx, &account) {
                    let (ctx, to, nodes) = (ctx.clone(), from.to_owned(), nodes.iter().cloned().collect());
                    tokio::spawn(async move { send_last_items_remote(&ctx, account.as_str(), &to, nodes).await });
                }
            }
            Seen::Ask(caps) => {
                if self.remote.may_ask(&caps) {
                    let Ok(to) = meerkat_xmpp::jid::parse_jid(from) else { return };
                    let query = Element::new("iq", ns::CLIENT)
                        .with_attr("type", "get")
                        .with_attr("id", caps.query_id(ctx.router.node().0))
                        .with_attr("from", account.as_str().to_owned())
                        .with_attr("to", from.to_owned())
                        .with_child(Element::new("query", ns::DISCO_INFO).with_attr("node", caps.key.clone()));
                    ctx.router.route(Routed { from: Jid::from(account), to, stanza: query });
                }
            }
        }
    }

    /// Caps checked here or on another member: kept, and the remote
    /// resources that announced them get the last items they ask for.
    fn learned(&self, caps: CapsKey, nodes: HashSet<String>) {
        let waiting = self.remote.learned(&caps, nodes.clone());
        let Some(ctx) = self.running.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|r| r.ctx.clone()) else {
            return;
        };
        let nodes: Vec<String> = nodes.into_iter().collect();
        if nodes.is_empty() {
            return;
        }
        for (account, to) in waiting {
            let Ok(bare) = meerkat_xmpp::jid::parse_bare(&account) else { continue };
            if speaks_for(&ctx, &bare) {
                let (ctx, nodes) = (ctx.clone(), nodes.clone());
                tokio::spawn(async move { send_last_items_remote(&ctx, &account, &to, nodes).await });
            }
        }
    }
}

/// Whether this member speaks for the account to its remote contacts: the
/// lowest-numbered member holding one of its available sessions, so that
/// one member sends, and one that sees the contacts' presence.
fn speaks_for(ctx: &ModuleCtx, account: &meerkat_xmpp::jid::BareJid) -> bool {
    ctx.router.sessions().resources(account).iter().filter(|s| s.priority.is_some()).map(|s| s.node).min()
        == Some(ctx.router.node())
}

/// What members tell each other about remote contacts, in a node request.
#[derive(serde::Serialize, serde::Deserialize)]
enum RemoteMsg {
    /// Caps checked where their answer came in.
    Caps { key: String, hash: String, nodes: HashSet<String> },
    /// A PEP event for remote contacts, to the member that speaks for the account.
    Fanout { service: String, notification: engine::Notification },
}

impl RemoteMsg {
    /// Node requests of this kind start with this, where a node's request is JSON.
    const TAG: &'static [u8] = b"remote:";

    fn encode(&self) -> Vec<u8> {
        let mut body = Self::TAG.to_vec();
        body.extend(serde_json::to_vec(self).unwrap_or_default());
        body
    }

    fn decode(body: &[u8]) -> Option<RemoteMsg> {
        serde_json::from_slice(body.strip_prefix(Self::TAG)?).ok()
    }
}

/// Sends a PEP event to the resources of the account's remote contacts
/// whose caps ask for its node, from the member that speaks for the account.
pub fn notify_remote(ctx: &ModuleCtx, remote: &Arc<Remote>, service: &str, n: &engine::Notification) {
    let Ok(account) = meerkat_xmpp::jid::parse_bare(service) else { return };
    let sessions = ctx.router.sessions().resources(&account);
    let Some(speaker) = sessions.iter().filter(|s| s.priority.is_some()).map(|s| s.node).min() else {
        // No session of the account: its contacts' presence is not known.
        return;
    };
    if speaker != ctx.router.node() {
        let notification = engine::Notification { subscribers: Vec::new(), interested: Vec::new(), ..n.clone() };
        let body = RemoteMsg::Fanout { service: service.to_owned(), notification }.encode();
        let ctx = ctx.clone();
        tokio::spawn(async move {
            if let Err(e) = ctx.ask_node(speaker, Pubsub::NAME, body, Duration::from_secs(5)).await {
                tracing::warn!(error = %e, "a PEP event for remote contacts was not passed on");
            }
        });
        return;
    }
    let Some(event) = crate::ext::util::parse_stored(&n.event) else { return };
    for to in remote.interested(account.as_str(), &n.remote, &n.node) {
        route_event(ctx, &account, &to, event.clone());
    }
}

/// A PEP event from the account's bare JID to one resource (XEP-0163 §4.3.1).
fn route_event(ctx: &ModuleCtx, account: &meerkat_xmpp::jid::BareJid, to: &str, event: Element) {
    let Ok(to_jid) = meerkat_xmpp::jid::parse_jid(to) else { return };
    let m = Element::new("message", ns::CLIENT)
        .with_attr("from", account.as_str().to_owned())
        .with_attr("to", to.to_owned())
        .with_attr("type", "headline")
        .with_attr("id", engine::new_subid())
        .with_child(event);
    ctx.router.route(Routed { from: Jid::from(account.clone()), to: to_jid, stanza: m });
}

/// The last item of each of `nodes` of the account's PEP, to a remote
/// contact's resource that asks for them, where the contact may read them.
async fn send_last_items_remote(ctx: &ModuleCtx, account: &str, to: &str, nodes: Vec<String>) {
    let Ok(bare) = meerkat_xmpp::jid::parse_bare(account) else { return };
    let reader = to.split_once('/').map_or(to, |(b, _)| b);
    for node in nodes.iter().take(MAX_LAST_ITEM_NODES) {
        if let Some(event) = engine::last_item_event(&ctx.storage, account, node, reader).await {
            if let Some(event) = crate::ext::util::parse_stored(&event) {
                route_event(ctx, &bare, to, event);
            }
        }
    }
}

/// Nodes whose last items one remote resource gets when it comes, at most.
const MAX_LAST_ITEM_NODES: usize = 100;

/// Runs a request on its node's actor, here or on the member that owns the node.
async fn dispatch(ctx: &ModuleCtx, nodes: &Nodes, req: Request) -> Result<Option<String>, PsError> {
    let owner = ctx.owner_node(&format!("{}\u{0}{}", req.service, req.node));
    if owner == ctx.router.node() {
        return nodes.call(req).await;
    }
    let body = serde_json::to_vec(&req).unwrap_or_default();
    match ctx.ask_node(owner, Pubsub::NAME, body, Duration::from_secs(10)).await {
        Ok(answer) => serde_json::from_slice(&answer)
            .unwrap_or_else(|_| Err(PsError::new(StanzaErrorCondition::InternalServerError))),
        Err(e) => {
            tracing::warn!(error = %e, node = %req.node, "the PubSub node's owner did not answer");
            Err(PsError::new(StanzaErrorCondition::RemoteServerTimeout))
        }
    }
}

/// What an IQ's `<pubsub/>` payload asks: the node and the operation, or
/// the answer when it needs no node (an error, or the user's own lists).
enum Parsed {
    Node(String, Op),
    /// The requester's own subscriptions or affiliations on the service
    /// (XEP-0060 §5.6, §5.7), of one node when it names one.
    Own(OwnList, Option<String>),
    Error(PsError),
}

#[derive(Clone, Copy)]
enum OwnList {
    Subscriptions,
    Affiliations,
}

fn form_in(el: Option<&Element>) -> Option<Vec<(String, Vec<String>)>> {
    el.and_then(|e| e.get_child("x", ns::DATA_FORMS)).map(config::fields)
}

fn bad(app: &str) -> Parsed {
    Parsed::Error(PsError::app(StanzaErrorCondition::BadRequest, app))
}

fn unsupported(feature: &str) -> Parsed {
    Parsed::Error(PsError::unsupported(feature))
}

/// Reads a `<pubsub/>` (or `#owner`) request of IQ type `kind`.
fn parse(payload: &Element, kind: &str) -> Parsed {
    let children: Vec<&Element> = payload.elements().collect();
    let first = match children.first() {
        Some(c) => *c,
        None => return Parsed::Error(PsError::new(StanzaErrorCondition::BadRequest)),
    };
    let node = first.attr("node").map(str::to_owned);
    let need_node = |op: Op| match &node {
        Some(n) if !n.is_empty() => Parsed::Node(n.clone(), op),
        _ => Parsed::Error(PsError::app(StanzaErrorCondition::BadRequest, "nodeid-required")),
    };
    let get = kind == "get";
    if payload.ns == NS_PUBSUB_OWNER {
        return match (first.name.as_str(), get) {
            ("configure", true) => need_node(Op::GetConfig),
            ("configure", false) => match form_in(Some(first)) {
                Some(form) => need_node(Op::Configure { form }),
                None => bad("invalid-options"),
            },
            ("delete", false) => need_node(Op::Delete {
                redirect: first.get_child("redirect", NS_PUBSUB_OWNER).and_then(|r| r.attr("uri")).map(str::to_owned),
            }),
            ("purge", false) => need_node(Op::Purge),
            ("subscriptions", true) => need_node(Op::GetSubscriptions),
            ("subscriptions", false) => need_node(Op::SetSubscriptions {
                entries: first
                    .elements()
                    .filter(|e| e.name == "subscription")
                    .map(|e| {
                        (
                            e.attr("jid").unwrap_or_default().to_owned(),
                            e.attr("subscription").unwrap_or("none").to_owned(),
                        )
                    })
                    .collect(),
            }),
            ("affiliations", true) => need_node(Op::GetAffiliations),
            ("affiliations", false) => need_node(Op::SetAffiliations {
                entries: first
                    .elements()
                    .filter(|e| e.name == "affiliation")
                    .map(|e| {
                        (
                            e.attr("jid").unwrap_or_default().to_owned(),
                            e.attr("affiliation").unwrap_or("none").to_owned(),
                        )
                    })
                    .collect(),
            }),
            ("default", true) => Parsed::Error(PsError::new(StanzaErrorCondition::ItemNotFound)),
            _ => Parsed::Error(PsError::new(StanzaErrorCondition::BadRequest)),
        };
    }
    match (first.name.as_str(), get) {
        ("create", false) => {
            let config = form_in(payload.get_child("configure", NS_PUBSUB));
            match node {
                Some(n) if !n.is_empty() => Parsed::Node(n, Op::Create { config }),
                // An instant node (XEP-0060 §8.1.2): a name of ours.
                _ => Parsed::Node(engine::new_subid(), Op::Create { config }),
            }
        }
        ("publish", false) => {
            let items: Vec<&Element> = first.elements().filter(|e| e.name == "item").collect();
            if items.len() > 1 {
                return bad("invalid-payload");
            }
            let item = items.first();
            let payloads: Vec<&Element> = item.map(|i| i.elements().collect()).unwrap_or_default();
            if payloads.len() > 1 {
                return bad("invalid-payload");
            }
            let options = form_in(payload.get_child("publish-options", NS_PUBSUB));
            if let Some(o) = &options {
                let _ = o;
            }
            need_node(Op::Publish {
                item_id: item.and_then(|i| i.attr("id")).map(str::to_owned),
                payload: payloads.first().map(|p| p.to_xml(ns::CLIENT)),
                options,
            })
        }
        ("retract", false) => {
            let ids: Vec<String> =
                first.elements().filter(|e| e.name == "item").filter_map(|e| e.attr("id")).map(str::to_owned).collect();
            if ids.is_empty() {
                return bad("item-required");
            }
            let notify = matches!(first.attr("notify"), Some("1" | "true"));
            need_node(Op::Retract { ids, notify })
        }
        ("subscribe", false) => match first.attr("jid") {
            Some(jid) => need_node(Op::Subscribe { jid: jid.to_owned() }),
            None => bad("invalid-jid"),
        },
        ("unsubscribe", false) => match first.attr("jid") {
            Some(jid) => {
                need_node(Op::Unsubscribe { jid: jid.to_owned(), subid: first.attr("subid").map(str::to_owned) })
            }
            None => bad("invalid-jid"),
        },
        ("items", true) => {
            let max = first.attr("max_items").and_then(|m| m.parse::<u64>().ok());
            if first.attr("max_items").is_some() && max.is_none() {
                return Parsed::Error(PsError::new(StanzaErrorCondition::BadRequest));
            }
            let ids =
                first.elements().filter(|e| e.name == "item").filter_map(|e| e.attr("id")).map(str::to_owned).collect();
            need_node(Op::Items { max, ids })
        }
        ("options", _) => unsupported("subscription-options"),
        ("subscriptions", true) => Parsed::Own(OwnList::Subscriptions, node.filter(|n| !n.is_empty())),
        ("affiliations", true) => Parsed::Own(OwnList::Affiliations, node.filter(|n| !n.is_empty())),
        _ => Parsed::Error(PsError::new(StanzaErrorCondition::BadRequest)),
    }
}

/// The IQ reply to `r` (a result with `payload`, or the error), as a whole
/// stanza: XEP-0060's errors carry application conditions.
fn reply_stanza(r: &Routed, answer: Result<Option<String>, PsError>) -> Option<Element> {
    match answer {
        Ok(payload) => {
            let mut res = Element::new("iq", ns::CLIENT)
                .with_attr("type", "result")
                .with_attr("id", r.stanza.attr("id").unwrap_or_default().to_owned());
            if let Some(p) = payload.as_deref().and_then(crate::ext::util::parse_stored) {
                res.push_child(p);
            }
            Some(res)
        }
        Err(e) => crate::ext::util::error_reply_with(&r.stanza, e.element()),
    }
}

/// Answers a PubSub request to `service` from `r.from`.
async fn serve(ctx: &ModuleCtx, nodes: &Nodes, service: String, r: &Routed, payload: &Element) -> Option<Element> {
    let kind = r.stanza.attr("type").unwrap_or_default();
    let answer = match parse(payload, kind) {
        Parsed::Error(e) => Err(e),
        Parsed::Own(list, node) => own_list(ctx, &service, &r.from, list, node.as_deref()).await,
        Parsed::Node(node, op) => {
            let created = matches!(op, Op::Create { .. }).then(|| node.clone());
            let req = Request { service, node, from: r.from.to_string(), op };
            match dispatch(ctx, nodes, req).await {
                // An instant node's name goes back to its creator.
                Ok(None) if created.is_some() => Ok(created.map(|n| {
                    Element::new("pubsub", NS_PUBSUB)
                        .with_child(Element::new("create", NS_PUBSUB).with_attr("node", n))
                        .to_xml(ns::CLIENT)
                })),
                other => other,
            }
        }
    };
    reply_stanza(r, answer)
}

/// The requester's subscriptions (of its bare JID and of the full JID it
/// asks from) or affiliations (of its bare JID) on `service`'s nodes, of
/// `node` alone when given; read from SQL, not through the nodes' actors.
async fn own_list(
    ctx: &ModuleCtx,
    service: &str,
    from: &Jid,
    list: OwnList,
    node: Option<&str>,
) -> Result<Option<String>, PsError> {
    let failed = engine::storage_error;
    let bare = from.bare().to_string();
    let wanted = |name: &str| node.is_none_or(|n| n == name);
    let el = match list {
        OwnList::Subscriptions => {
            let mut el = Element::new("subscriptions", NS_PUBSUB);
            let mut jids = vec![bare.clone()];
            if from.as_str() != bare {
                jids.push(from.to_string());
            }
            for jid in jids {
                for (name, s) in ctx.storage.pubsub_user_subscriptions(service, &jid).await.map_err(failed)? {
                    if wanted(&name) {
                        el.push_child(
                            Element::new("subscription", NS_PUBSUB)
                                .with_attr("node", name)
                                .with_attr("jid", s.jid)
                                .with_attr("subscription", s.state)
                                .with_attr("subid", s.subid),
                        );
                    }
                }
            }
            el
        }
        OwnList::Affiliations => {
            let mut el = Element::new("affiliations", NS_PUBSUB);
            // A node's creator is stored as its owner: an account owns its PEP nodes.
            for (name, a) in ctx.storage.pubsub_user_affiliations(service, &bare).await.map_err(failed)? {
                if wanted(&name) {
                    el.push_child(
                        Element::new("affiliation", NS_PUBSUB).with_attr("node", name).with_attr("affiliation", a),
                    );
                }
            }
            el
        }
    };
    if let Some(n) = node {
        if ctx.storage.pubsub_node(service, n).await.map_err(failed)?.is_none() {
            return Err(PsError::new(StanzaErrorCondition::ItemNotFound));
        }
    }
    Ok(Some(Element::new("pubsub", NS_PUBSUB).with_child(el).to_xml(ns::CLIENT)))
}

/// Takes the stanzas for the service domains, in a bounded queue.
struct Inbox(mpsc::Sender<Routed>);

impl DomainHandler for Inbox {
    fn deliver(&self, routed: Routed) -> Result<(), Routed> {
        self.0.try_send(routed).map_err(|e| e.into_inner())
    }
}

/// Serves the service domains' stanzas, several at a time.
async fn service_loop(ctx: ModuleCtx, nodes: Arc<Nodes>, mut rx: mpsc::Receiver<Routed>, limit: usize) {
    let permits = Arc::new(tokio::sync::Semaphore::new(limit));
    while let Some(r) = rx.recv().await {
        let Ok(permit) = permits.clone().acquire_owned().await else { return };
        let (ctx, nodes) = (ctx.clone(), nodes.clone());
        tokio::spawn(async move {
            service_stanza(&ctx, &nodes, r).await;
            drop(permit);
        });
    }
}

/// A stanza to `pubsub.HOST`: disco, PubSub requests, owners' answers to
/// subscription requests; anything else is refused.
async fn service_stanza(ctx: &ModuleCtx, nodes: &Nodes, r: Routed) {
    if r.stanza.name != "iq" {
        if r.stanza.name == "message" && r.stanza.attr("type") != Some("error") {
            match authorization(&r.stanza) {
                Some((node, op)) => {
                    let service = r.to.domain().as_str().to_owned();
                    answer_authorization(ctx, nodes, service, node, op, &r).await;
                }
                None => ctx.router.bounce(r, StanzaErrorCondition::ServiceUnavailable),
            }
        }
        return;
    }
    let kind = r.stanza.attr("type").unwrap_or_default().to_owned();
    if kind != "get" && kind != "set" {
        return;
    }
    let Some(payload) = r.stanza.elements().next().cloned() else {
        ctx.router.bounce(r, StanzaErrorCondition::BadRequest);
        return;
    };
    let service = r.to.domain().as_str().to_owned();
    let reply = match (payload.ns.as_str(), kind.as_str()) {
        (NS_PUBSUB | NS_PUBSUB_OWNER, _) => serve(ctx, nodes, service, &r, &payload).await,
        (ns::DISCO_INFO, "get") => Some(disco_info(ctx, &service, &r, &payload).await),
        (ns::DISCO_ITEMS, "get") => Some(disco_items(ctx, &service, &r, &payload).await),
        _ => {
            ctx.router.bounce(r, StanzaErrorCondition::ServiceUnavailable);
            return;
        }
    };
    if let Some(mut reply) = reply {
        reply.set_attr("from", r.to.to_string());
        reply.set_attr("to", r.from.to_string());
        ctx.router.route(Routed { from: r.to.clone(), to: r.from.clone(), stanza: reply });
    }
}

/// Runs an owner's answer to a subscription request; an answer refused
/// goes back to the owner as an error message.
async fn answer_authorization(ctx: &ModuleCtx, nodes: &Nodes, service: String, node: String, op: Op, r: &Routed) {
    let req = Request { service, node, from: r.from.to_string(), op };
    if let Err(e) = dispatch(ctx, nodes, req).await {
        if let Some(mut reply) = crate::ext::util::error_reply_with(&r.stanza, e.element()) {
            reply.set_attr("from", r.to.to_string());
            reply.set_attr("to", r.from.to_string());
            ctx.router.route(Routed { from: r.to.clone(), to: r.from.clone(), stanza: reply });
        }
    }
}

/// An account's answer to a subscription request to one of its PEP nodes
/// (the form sent to its own bare JID), run on the account's shard.
struct PepAuthorization {
    nodes: Arc<Nodes>,
    node: String,
    op: Op,
    message: Routed,
}

#[async_trait::async_trait]
impl crate::ext::ModuleJob for PepAuthorization {
    fn shard_key(&self) -> String {
        self.message.to.to_string()
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }

    async fn run(self: Box<Self>, ctx: &ModuleCtx) {
        let PepAuthorization { nodes, node, op, message } = *self;
        answer_authorization(ctx, &nodes, message.to.to_string(), node, op, &message).await;
    }
}

/// An owner's submitted answer to a subscription request (XEP-0060 §8.6.2): the node and the operation.
fn authorization(message: &Element) -> Option<(String, Op)> {
    let form = message.get_child("x", ns::DATA_FORMS)?;
    if form.attr("type") != Some("submit")
        || config::form_type(form).as_deref() != Some(engine::SUBSCRIBE_AUTHORIZATION)
    {
        return None;
    }
    let fields = config::fields(form);
    let get = |var: &str| {
        fields.iter().find(|(v, _)| v == var).and_then(|(_, vals)| vals.first()).map(|v| v.trim().to_owned())
    };
    let node = get("pubsub#node")?;
    let jid = get("pubsub#subscriber_jid")?;
    let allow = matches!(get("pubsub#allow").as_deref(), Some("1" | "true"));
    Some((node, Op::Authorize { subid: get("pubsub#subid"), jid, allow }))
}

fn result_with(r: &Routed, child: Element) -> Element {
    Element::new("iq", ns::CLIENT)
        .with_attr("type", "result")
        .with_attr("id", r.stanza.attr("id").unwrap_or_default().to_owned())
        .with_child(child)
}

async fn disco_info(ctx: &ModuleCtx, service: &str, r: &Routed, q: &Element) -> Element {
    let mut query = Element::new("query", ns::DISCO_INFO);
    match q.attr("node") {
        None => {
            query.push_child(
                Element::new("identity", ns::DISCO_INFO)
                    .with_attr("category", "pubsub")
                    .with_attr("type", "service")
                    .with_attr("name", "Publish-Subscribe"),
            );
            for f in [ns::DISCO_INFO, ns::DISCO_ITEMS].iter().chain(FEATURES) {
                query.push_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", *f));
            }
        }
        Some(node) => match ctx.storage.pubsub_node(service, node).await {
            Ok(Some(_)) => {
                query.set_attr("node", node.to_owned());
                query.push_child(
                    Element::new("identity", ns::DISCO_INFO).with_attr("category", "pubsub").with_attr("type", "leaf"),
                );
                for f in [ns::DISCO_INFO, ns::DISCO_ITEMS, NS_PUBSUB] {
                    query.push_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", f));
                }
            }
            _ => {
                return crate::ext::util::error_reply_with(
                    &r.stanza,
                    meerkat_xmpp::error::error_element(StanzaErrorCondition::ItemNotFound, None, ns::CLIENT),
                )
                .unwrap_or_else(|| result_with(r, Element::new("query", ns::DISCO_INFO)))
            }
        },
    }
    result_with(r, query)
}

async fn disco_items(ctx: &ModuleCtx, service: &str, r: &Routed, q: &Element) -> Element {
    let mut query = Element::new("query", ns::DISCO_ITEMS);
    match q.attr("node") {
        None => {
            for n in ctx.storage.pubsub_nodes(service).await.unwrap_or_default() {
                query.push_child(
                    Element::new("item", ns::DISCO_ITEMS)
                        .with_attr("jid", service.to_owned())
                        .with_attr("node", n.name),
                );
            }
        }
        Some(node) => {
            query.set_attr("node", node.to_owned());
            for i in ctx.storage.pubsub_items(service, node, None).await.unwrap_or_default() {
                query.push_child(
                    Element::new("item", ns::DISCO_ITEMS).with_attr("jid", service.to_owned()).with_attr("name", i.id),
                );
            }
        }
    }
    result_with(r, query)
}

/// A session's client: its caps `ver`, and the features it announced for
/// it, once known (XEP-0115).
#[derive(Default)]
struct Interest {
    /// The session's JID.
    jid: Option<FullJid>,
    ver: Option<String>,
    features: HashSet<String>,
    /// The id of our disco#info query, while it is out.
    asked: Option<String>,
    /// The caps announced, to share a checked answer with every session and
    /// contact that announces them.
    caps: Option<CapsKey>,
}

/// Sends a client that just said which nodes it wants (`+notify`) the last
/// item of each such PEP node of its own account and of each local contact
/// whose presence it receives, where the node sends its last item on
/// presence and lets the account read it.
async fn send_last_items(ctx: &ModuleCtx, jid: &FullJid, nodes: &[String]) {
    use meerkat_storage::RosterRepo as _;
    let me = jid.bare();
    let user = me.node().map(|n| n.to_string()).unwrap_or_default();
    let mut services = vec![me.to_string()];
    match ctx.storage.get_roster(me.domain().as_str(), &user).await {
        Ok(items) => services.extend(
            items
                .into_iter()
                .filter(|i| {
                    matches!(i.subscription, meerkat_storage::Subscription::To | meerkat_storage::Subscription::Both)
                })
                .filter(|i| i.contact.rsplit('@').next().is_some_and(|d| ctx.router.is_local_host(d)))
                .map(|i| i.contact)
                .take(MAX_LAST_ITEM_CONTACTS),
        ),
        Err(e) => tracing::warn!(error = %e, %jid, "roster not read; last PEP items of contacts not sent"),
    }
    for service in services {
        for node in nodes {
            let Some(event) = engine::last_item_event(&ctx.storage, &service, node, &me.to_string()).await else {
                continue;
            };
            let n = engine::Notification {
                event,
                subscribers: Vec::new(),
                interested: vec![jid.to_string()],
                node: node.clone(),
                remote: Vec::new(),
            };
            actor::send_notification(&ctx.router, &service, &n);
        }
    }
}

/// Contacts whose last PEP items a client gets when it comes online, at most.
const MAX_LAST_ITEM_CONTACTS: usize = 1000;

/// Whether `stanza` is a PEP notification sent by interest (no subscription
/// id), and for which node.
fn pep_event_node(stanza: &Element) -> Option<String> {
    if stanza.name != "message" {
        return None;
    }
    let from = stanza.attr("from")?;
    if !from.contains('@') || from.contains('/') {
        return None;
    }
    if stanza.get_child("headers", NS_SHIM).is_some() {
        return None;
    }
    let event = stanza.get_child("event", NS_PUBSUB_EVENT)?;
    // A subscription's state (XEP-0060 §8.6.2) goes to its subscriber, not by interest.
    event.elements().filter(|e| e.name != "subscription").find_map(|e| e.attr("node")).map(str::to_owned)
}

#[async_trait::async_trait]
impl Module for Pubsub {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn hot_hooks(&self) -> HookSet {
        HookSet::USER_RECEIVE
            .with(HookSet::USER_SEND_MESSAGE)
            .with(HookSet::FILTER_LOCAL)
            .with(HookSet::USER_UNAVAILABLE)
    }

    async fn start(&self, ctx: &ModuleCtx) -> Result<(), String> {
        let shared = Arc::new(Shared {
            storage: ctx.storage.clone(),
            router: ctx.router.clone(),
            max_items_per_node: self.cfg.max_items_per_node,
            max_pep_nodes: self.cfg.max_pep_nodes,
            max_nodes_per_account: self.cfg.max_nodes_per_account,
            default_config: self.default_config.clone(),
            create_domains: (self.cfg.access_createnode == "local").then(|| ctx.router.hosts().to_vec()),
            fanout: Arc::new(tokio::sync::Semaphore::new(self.cfg.fanout_concurrency)),
            remote: self.remote.clone(),
            ctx: ctx.clone(),
        });
        let limits = Limits {
            max_resident: self.cfg.max_resident_nodes,
            idle_timeout: Duration::from_secs(self.cfg.node_idle_timeout.max(1)),
            mailbox: self.cfg.node_mailbox,
        };
        let nodes = Arc::new(Nodes::new(shared, limits));
        let (tx, rx) = mpsc::channel(1024);
        let mut domains = Vec::new();
        // Every member serves the service domains for its own users; each
        // request then goes to the member that owns its node.
        for d in self.service_domains(ctx) {
            domains.push(
                ctx.router.serve_on_every_node(&d, Arc::new(Inbox(tx.clone()))).map_err(|e| format!("{d}: {e}"))?,
            );
        }
        let limit = self.cfg.iqdisc.concurrency().unwrap_or(IqDisc::PARALLEL);
        let requests = tokio::spawn(service_loop(ctx.clone(), nodes.clone(), rx, limit));
        let swept = nodes.clone();
        let sweep = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            loop {
                tick.tick().await;
                swept.sweep();
            }
        });
        *self.running.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(Running { ctx: ctx.clone(), nodes, _domains: domains, sweep, requests });
        Ok(())
    }

    async fn stop(&self, _ctx: &ModuleCtx) {
        if let Some(r) = self.running.lock().unwrap_or_else(|e| e.into_inner()).take() {
            r.sweep.abort();
            r.requests.abort();
            r.nodes.stop();
        }
    }

    fn disco_features(&self, t: Target) -> &'static [&'static str] {
        match t {
            Target::OwnAccount | Target::OtherAccount if self.pep() => FEATURES,
            _ => &[],
        }
    }

    fn disco_identities(&self, t: Target) -> Vec<Identity> {
        match t {
            Target::OwnAccount | Target::OtherAccount if self.pep() => {
                vec![Identity { category: "pubsub", kind: "pep", lang: "", name: String::new() }]
            }
            _ => Vec::new(),
        }
    }

    fn disco_items(&self, ctx: &ModuleCtx, t: Target) -> Vec<DiscoItem> {
        match t {
            Target::Server => self
                .service_domains(ctx)
                .into_iter()
                .map(|jid| DiscoItem { jid, node: None, name: Some("Publish-Subscribe".into()), hidden: false })
                .collect(),
            _ => Vec::new(),
        }
    }

    fn iq_namespaces(&self) -> &'static [&'static str] {
        &[NS_PUBSUB, NS_PUBSUB_OWNER]
    }

    async fn iq(&self, ctx: &ModuleCtx, t: Target, iq: &Routed, payload: &Element) -> Option<IqAnswer> {
        if !self.pep() || t == Target::Server || payload.name != "pubsub" {
            return None;
        }
        let Some(nodes) = self.nodes() else { return Some(Err(StanzaErrorCondition::ServiceUnavailable)) };
        let service = iq.to.bare().to_string();
        // The whole reply: XEP-0060's errors carry application conditions.
        serve(ctx, &nodes, service, iq, payload).await.map(|reply| Ok(Some(reply)))
    }

    fn user_send_presence(
        &self,
        ctx: &ModuleCtx,
        state: &mut SessionState,
        from: &FullJid,
        to: Option<&Jid>,
        presence: &Element,
        _initial: bool,
        acc: &mut SessionAcc,
    ) -> Flow {
        if to.is_some() || presence.attr("type").is_some() || !self.pep() {
            return Flow::Continue;
        }
        let Some(c) = presence.get_child("c", ns::CAPS) else { return Flow::Continue };
        let (Some(node), Some(ver)) = (c.attr("node"), c.attr("ver")) else { return Flow::Continue };
        let interest = state.get_or_default::<Interest>();
        if interest.ver.as_deref() == Some(ver) {
            return Flow::Continue;
        }
        interest.ver = Some(ver.to_owned());
        interest.jid = Some(from.clone());
        interest.features.clear();
        interest.caps = CapsKey::of(presence);
        if let Some(nodes) = interest.caps.as_ref().and_then(|c| self.remote.known(c)) {
            // Caps checked before, for this client or another: no query.
            interest.features = nodes.iter().map(|n| format!("{n}+notify")).collect();
            interest.asked = None;
            let (ctx, jid, nodes) = (ctx.clone(), from.clone(), nodes.iter().cloned().collect::<Vec<_>>());
            if !nodes.is_empty() {
                tokio::spawn(async move { send_last_items(&ctx, &jid, &nodes).await });
            }
            return Flow::Continue;
        }
        let id = format!("pubsub-caps-{}", engine::new_subid());
        interest.asked = Some(id.clone());
        acc.write.push(
            Element::new("iq", ns::CLIENT)
                .with_attr("type", "get")
                .with_attr("id", id)
                .with_attr("from", from.domain().as_str().to_owned())
                .with_attr("to", from.as_str().to_owned())
                .with_child(Element::new("query", ns::DISCO_INFO).with_attr("node", format!("{node}#{ver}"))),
        );
        Flow::Continue
    }

    fn user_send_message(
        &self,
        _ctx: &ModuleCtx,
        _state: &mut SessionState,
        from: &FullJid,
        to: &Jid,
        stanza: &mut Element,
        acc: &mut SessionAcc,
    ) -> Result<(), StanzaErrorCondition> {
        // The answer to a subscription request to one of the account's own
        // PEP nodes (XEP-0060 §8.6.2) goes to the service: its bare JID.
        let own_bare = to.is_bare() && to.node() == from.node() && to.domain() == from.domain();
        if !own_bare || stanza.attr("type") == Some("error") || !self.pep() {
            return Ok(());
        }
        let Some((node, op)) = authorization(stanza) else { return Ok(()) };
        let nodes = self.nodes().ok_or(StanzaErrorCondition::ServiceUnavailable)?;
        let message = Routed { from: Jid::from(from.clone()), to: to.clone(), stanza: stanza.clone() };
        acc.jobs.push(Box::new(PepAuthorization { nodes, node, op, message }));
        acc.taken = true;
        Ok(())
    }

    fn client_iq_response(&self, state: &mut SessionState, iq: &Element) -> bool {
        let Some(interest) = state.get_mut::<Interest>() else { return false };
        if interest.asked.is_none() || iq.attr("id") != interest.asked.as_deref() {
            return false;
        }
        interest.asked = None;
        if let Some(q) = iq.get_child("query", ns::DISCO_INFO) {
            // A checked answer serves every client announcing the same caps.
            if let Some(caps) = interest.caps.clone() {
                if let Some(nodes) = caps.verify(q) {
                    self.learned(caps, nodes);
                }
            }
            interest.features = q
                .elements()
                .filter(|f| f.name == "feature")
                .filter_map(|f| f.attr("var"))
                .filter(|v| v.ends_with("+notify"))
                .map(str::to_owned)
                .collect();
            // XEP-0163 §4.3.2: the last items the client now asks for.
            let running = self.running.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|r| r.ctx.clone());
            if let (Some(ctx), Some(jid)) = (running, interest.jid.clone()) {
                let nodes: Vec<String> =
                    interest.features.iter().filter_map(|f| f.strip_suffix("+notify")).map(str::to_owned).collect();
                if !nodes.is_empty() {
                    tokio::spawn(async move { send_last_items(&ctx, &jid, &nodes).await });
                }
            }
        }
        true
    }

    fn user_receive(&self, ctx: &ModuleCtx, jid: &FullJid, state: &mut SessionState, stanza: &Element) -> Receive {
        if stanza.name == "presence" {
            if self.pep() {
                self.remote_presence(ctx, jid, stanza);
            }
            return Receive::Deliver;
        }
        let Some(node) = pep_event_node(stanza) else { return Receive::Deliver };
        let wanted = state.get::<Interest>().is_some_and(|i| i.features.contains(&format!("{node}+notify")));
        if wanted {
            Receive::Deliver
        } else {
            Receive::Drop
        }
    }

    fn metrics(&self) -> Vec<crate::ext::Metric> {
        let resident = self.nodes().map_or(0, |n| n.resident());
        vec![
            crate::ext::Metric::counter("meerkat_pubsub_fanout_waits_total", &actor::FANOUT_WAITS),
            crate::ext::Metric {
                name: "meerkat_pubsub_resident_nodes",
                labels: Vec::new(),
                value: resident as f64,
                counter: false,
            },
        ]
    }

    async fn filter_local(&self, ctx: &ModuleCtx, r: &Routed) -> Receive {
        // The answer to a caps query of ours, sent from the account's bare JID.
        if r.stanza.name != "iq" {
            return Receive::Deliver;
        }
        let Some((member, caps)) = r.stanza.attr("id").and_then(CapsKey::from_query_id) else {
            return Receive::Deliver;
        };
        if !matches!(r.stanza.attr("type"), Some("result" | "error")) {
            return Receive::Deliver;
        }
        let checked = r.stanza.get_child("query", ns::DISCO_INFO).and_then(|q| caps.verify(q));
        match checked {
            Some(nodes) if member == ctx.router.node().0 => self.learned(caps, nodes),
            // The answer came in at another member of the cluster than the one that asked.
            Some(nodes) => {
                self.remote.learned(&caps, nodes.clone());
                let body = RemoteMsg::Caps { key: caps.key, hash: caps.hash, nodes }.encode();
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    let to = meerkat_cluster::NodeId(member);
                    if let Err(e) = ctx.ask_node(to, Pubsub::NAME, body, Duration::from_secs(5)).await {
                        tracing::debug!(error = %e, "caps not passed on to the member that asked");
                    }
                });
            }
            None => tracing::debug!(from = %r.from, key = %caps.key, "a caps answer that does not hash to its ver"),
        }
        Receive::Drop
    }

    async fn user_unavailable(&self, ctx: &ModuleCtx, jid: &FullJid) {
        let me = ctx.router.node();
        let bare = jid.bare();
        if !ctx.router.sessions().resources(&bare).iter().any(|s| s.node == me && s.jid != *jid && s.priority.is_some())
        {
            self.remote.account_gone(bare.as_str());
        }
    }

    async fn node_request(&self, ctx: &ModuleCtx, _from_node: u64, body: Vec<u8>) -> Result<Vec<u8>, String> {
        if let Some(msg) = RemoteMsg::decode(&body) {
            match msg {
                RemoteMsg::Caps { key, hash, nodes } => self.learned(CapsKey { key, hash }, nodes),
                RemoteMsg::Fanout { service, notification } => {
                    notify_remote(ctx, &self.remote, &service, &notification)
                }
            }
            return Ok(Vec::new());
        }
        let req: Request =
            serde_json::from_slice(&body).map_err(|e| format!("a PubSub request that does not decode: {e}"))?;
        let nodes = self.nodes().ok_or_else(|| "mod_pubsub is not running".to_owned())?;
        let answer = nodes.call(req).await;
        serde_json::to_vec(&answer).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn validate(text: &str) -> Result<usize, String> {
        let cfg: PubsubConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        <Pubsub as ModuleSpec>::validate(&cfg).map_err(|(key, why)| format!("{key}: {why}"))?;
        cfg.iqdisc.concurrency()
    }

    #[test]
    fn iqdisc_takes_mongooseims_types() {
        assert_eq!(validate(""), Ok(IqDisc::PARALLEL));
        assert_eq!(validate("iqdisc.type = \"one_queue\""), Ok(1));
        assert_eq!(validate("iqdisc.type = \"queues\"\niqdisc.workers = 8"), Ok(8));
        assert_eq!(validate("iqdisc.type = \"no_queue\""), Ok(IqDisc::PARALLEL));
        assert!(validate("iqdisc.type = \"queues\"").unwrap_err().contains("workers"));
        assert!(validate("iqdisc.type = \"one_queue\"\niqdisc.workers = 2").unwrap_err().contains("only with"));
        assert!(validate("iqdisc.type = \"sometimes\"").unwrap_err().contains("known"));
        assert!(validate("iqdisc.kind = \"one_queue\"").is_err(), "a misspelled key is refused");
    }
}
