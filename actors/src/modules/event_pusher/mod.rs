//! The event pusher (`[modules.mod_event_pusher]`, as MongooseIM's): events
//! of a user's messages sent to the outside world, by backend.
//!
//! # push (XEP-0357)
//! `[modules.mod_event_pusher.push]`. A client enables notifications with
//! `<enable xmlns='urn:xmpp:push:0' jid=… node=…>` (with an optional
//! publish-options form, sent back with every notification) and disables
//! them with `<disable/>`; subscriptions are stored in SQL per account and
//! (app server, node), with the resource that enabled them. A message with a
//! body that no resource of the account took (it went to offline storage) is
//! announced to each subscription: a pubsub publish from the account's bare
//! JID to the app server, of a `<notification xmlns='urn:xmpp:push:0'>` with
//! the `urn:xmpp:push:summary` form: `message-count`, `last-message-sender`
//! and `last-message-body`, and the stored publish-options.
//!
//! `message-count` is the account's total unread count, from Inbox when it
//! runs (the number a badge shows; MongooseIM sends the conversation's), else
//! 1, as MongooseIM does without Inbox.
//!
//! The publish runs off the stanza's path: the server shard that handles the
//! undelivered message only routes it. Whatever comes back (a result, an
//! error, nothing) is addressed to the account's bare JID, where results and
//! errors are dropped: a failed push never causes another push or an error
//! stanza.

pub mod http;
pub mod rabbit;

use std::sync::{Arc, OnceLock};

use meerkat_routing::Routed;
use meerkat_storage::{PushRepo, PushSubscription};
use meerkat_xmpp::element::Element;
use meerkat_xmpp::error::StanzaErrorCondition;
use meerkat_xmpp::jid::{parse_jid, Bare as _, BareJid, FullJid, Jid};
use meerkat_xmpp::ns;
use meerkat_xmpp::stanza::MessageType;

use crate::ext::registry::ModuleSpec;
use crate::ext::util::{account_of, now_micros, parse_stored};
use crate::ext::{
    storage_error, Flow, HookSet, IqAnswer, Metric, Module, ModuleCtx, PushNotification, SessionAcc, SessionState,
    Target, Undelivered,
};

const NS_PUSH: &str = "urn:xmpp:push:0";
const NS_PUBSUB: &str = "http://jabber.org/protocol/pubsub";
const SUMMARY: &str = "urn:xmpp:push:summary";
const PUBLISH_OPTIONS: &str = "http://jabber.org/protocol/pubsub#publish-options";
/// Longest body a notification carries (characters); longer ones are cut.
const MAX_BODY: usize = 1024;

/// `[modules.mod_event_pusher]`
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventPusherConfig {
    /// Run the event pusher (off unless enabled, as in MongooseIM).
    pub enabled: bool,
    /// XEP-0357 push notifications; on when the section is there.
    pub push: Option<PushConfig>,
    /// POSTs to web services; on when the section is there.
    pub http: Option<http::HttpConfig>,
    /// Events published to RabbitMQ; on when the section is there.
    pub rabbit: Option<rabbit::RabbitConfig>,
}

/// `[modules.mod_event_pusher.push]`
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PushConfig {
    /// `"rdbms"`, the only backend: the node's database.
    pub backend: String,
    /// App server domains that are no pubsub service: their notifications go
    /// to a push service module (`mod_push_service_mongoosepush`) instead of
    /// a publish. `@HOST@` stands for each host of the node.
    pub virtual_pubsub_hosts: Vec<String>,
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig { backend: "rdbms".into(), virtual_pubsub_hosts: Vec::new() }
    }
}

/// The module.
pub struct EventPusher {
    push: Option<PushConfig>,
    http: Option<http::HttpConfig>,
    /// The http handlers, started with the module.
    http_senders: OnceLock<Vec<crate::ext::pools::Sender>>,
    rabbit: Option<rabbit::RabbitConfig>,
    /// The RabbitMQ publisher, started with the module.
    publisher: OnceLock<rabbit::Publisher>,
    /// The module itself, for the jobs it queues.
    me: OnceLock<std::sync::Weak<EventPusher>>,
    /// The push backend's virtual pubsub hosts, `@HOST@` expanded at start.
    virtual_hosts: OnceLock<Vec<String>>,
    /// Messages pushed while their session waited for a resumption, by
    /// [`pushed_key`], with how many: when the session gives up and they go
    /// offline, they are not pushed again.
    pushed_detached: moka::sync::Cache<String, u32>,
}

/// How long a message pushed for a waiting session is remembered (longer
/// than any sensible `resume_timeout`), and how many at most.
const PUSHED_DETACHED_TTL: std::time::Duration = std::time::Duration::from_secs(3600);
const PUSHED_DETACHED_MAX: u64 = 100_000;

/// What tells one message to `owner` from another: its sender, and its id,
/// or its body when it has none.
fn pushed_key(owner: &BareJid, sender: &str, stanza: &Element, body: &str) -> String {
    match stanza.attr("id") {
        Some(id) => format!("{owner}\u{0}{sender}\u{0}id\u{0}{id}"),
        None => format!("{owner}\u{0}{sender}\u{0}body\u{0}{body}"),
    }
}

impl ModuleSpec for EventPusher {
    const NAME: &'static str = "mod_event_pusher";
    const NODE_WIDE: bool = true;
    type Config = EventPusherConfig;
    fn enabled(cfg: &EventPusherConfig) -> bool {
        cfg.enabled
    }
    fn validate(cfg: &EventPusherConfig) -> Result<(), (&'static str, String)> {
        if let Some(p) = &cfg.push {
            if p.backend != "rdbms" {
                return Err(("push.backend", format!("\"{}\" is not a backend; the only one is \"rdbms\"", p.backend)));
            }
        }
        if let Some(h) = &cfg.http {
            if h.handlers.is_empty() {
                return Err(("http.handlers", "the http backend needs at least one handler".into()));
            }
            if let Some(h) = h.handlers.iter().find(|h| h.callback_module != "mod_event_pusher_http_defaults") {
                return Err((
                    "http.handlers",
                    format!("callback_module \"{}\": only mod_event_pusher_http_defaults exists", h.callback_module),
                ));
            }
        }
        if let Some(r) = &cfg.rabbit {
            r.validate()?;
        }
        if cfg.enabled && cfg.push.is_none() && cfg.http.is_none() && cfg.rabbit.is_none() {
            return Err(("push", "the event pusher is enabled with no backend section (push, http, rabbit)".into()));
        }
        Ok(())
    }
    fn build(cfg: &EventPusherConfig) -> Arc<dyn Module> {
        let module = Arc::new(EventPusher {
            push: cfg.push.clone(),
            http: cfg.http.clone(),
            http_senders: OnceLock::new(),
            rabbit: cfg.rabbit.clone(),
            publisher: OnceLock::new(),
            me: OnceLock::new(),
            virtual_hosts: OnceLock::new(),
            pushed_detached: moka::sync::Cache::builder()
                .max_capacity(PUSHED_DETACHED_MAX)
                .time_to_live(PUSHED_DETACHED_TTL)
                .build(),
        });
        let _ = module.me.set(Arc::downgrade(&module));
        module
    }
}

/// A push notification for a message kept for a detached session, run on
/// the owner's server shard.
struct PushJob {
    owner: BareJid,
    sender: String,
    body: String,
    module: Arc<EventPusher>,
}

impl std::fmt::Debug for PushJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushJob").field("owner", &self.owner).finish()
    }
}

#[async_trait::async_trait]
impl crate::ext::ModuleJob for PushJob {
    fn shard_key(&self) -> String {
        self.owner.to_string()
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }

    async fn run(self: Box<Self>, ctx: &ModuleCtx) {
        let PushJob { owner, sender, body, module } = *self;
        module.notify_message(ctx, owner, sender, body).await;
    }
}

/// An `<enable/>` or `<disable/>`, checked.
#[derive(Debug, PartialEq, Eq)]
enum Command {
    Enable { jid: String, node: String, form: String },
    Disable { jid: String, node: Option<String> },
}

fn parse_command(payload: &Element) -> Result<Command, StanzaErrorCondition> {
    let bad = StanzaErrorCondition::BadRequest;
    let jid = payload.attr("jid").ok_or(bad)?;
    let jid = parse_jid(jid).map_err(|_| bad)?.to_string();
    let node = payload.attr("node").filter(|n| !n.is_empty()).map(str::to_owned);
    match payload.name.as_str() {
        "enable" => {
            // XEP-0357 §5: the node is required to enable.
            let node = node.ok_or(bad)?;
            let form = match payload.get_child("x", ns::DATA_FORMS) {
                Some(x) => {
                    let form_type = x
                        .elements()
                        .find(|f| f.is("field", ns::DATA_FORMS) && f.attr("var") == Some("FORM_TYPE"))
                        .and_then(|f| f.get_child("value", ns::DATA_FORMS))
                        .map(|v| v.text());
                    if form_type.as_deref().map(str::trim) != Some(PUBLISH_OPTIONS) {
                        return Err(bad);
                    }
                    x.to_xml(ns::CLIENT)
                }
                None => String::new(),
            };
            Ok(Command::Enable { jid, node, form })
        }
        "disable" => Ok(Command::Disable { jid, node }),
        _ => Err(bad),
    }
}

/// The fields of a stored publish-options form, FORM_TYPE left out.
fn form_fields(form: &str) -> Vec<(String, String)> {
    let Some(x) = (!form.is_empty()).then(|| parse_stored(form)).flatten() else { return Vec::new() };
    x.elements()
        .filter(|f| f.is("field", ns::DATA_FORMS))
        .filter_map(|f| {
            let var = f.attr("var")?;
            let value = f.get_child("value", ns::DATA_FORMS).map(|v| v.text()).unwrap_or_default();
            (var != "FORM_TYPE").then(|| (var.to_owned(), value))
        })
        .collect()
}

fn field(var: &str, value: &str) -> Element {
    Element::new("field", ns::DATA_FORMS)
        .with_attr("var", var)
        .with_child(Element::new("value", ns::DATA_FORMS).with_text(value))
}

/// The pubsub publish announcing a message to one subscription.
fn notification(owner: &BareJid, sub: &PushSubscription, count: i64, sender: &str, body: &str) -> Element {
    let body: String = body.chars().take(MAX_BODY).collect();
    let summary = Element::new("x", ns::DATA_FORMS)
        .with_attr("type", "submit")
        .with_child(field("FORM_TYPE", SUMMARY))
        .with_child(field("message-count", &count.to_string()))
        .with_child(field("last-message-sender", sender))
        .with_child(field("last-message-body", &body));
    let publish = Element::new("publish", NS_PUBSUB).with_attr("node", sub.node.clone()).with_child(
        Element::new("item", NS_PUBSUB).with_child(Element::new("notification", NS_PUSH).with_child(summary)),
    );
    let mut pubsub = Element::new("pubsub", NS_PUBSUB).with_child(publish);
    if let Some(form) = (!sub.form.is_empty()).then(|| parse_stored(&sub.form)).flatten() {
        pubsub.push_child(Element::new("publish-options", NS_PUBSUB).with_child(form));
    }
    Element::new("iq", ns::CLIENT)
        .with_attr("type", "set")
        .with_attr("id", format!("push-{:016x}", rand::random::<u64>()))
        .with_attr("from", owner.to_string())
        .with_attr("to", sub.pubsub_jid.clone())
        .with_child(pubsub)
}

impl EventPusher {
    fn presence_event(&self, jid: &FullJid, present: bool) {
        if let Some(p) = self.publisher.get() {
            if !p.has_room(1) {
                return;
            }
            let payload = serde_json::json!({"user_id": jid.to_string(), "present": present}).to_string();
            p.push(rabbit::Event {
                exchange: p.presence_exchange.clone(),
                routing_key: jid.bare().to_string(),
                payload: payload.into(),
            });
        }
    }

    async fn push_command(&self, ctx: &ModuleCtx, iq: &Routed, payload: &Element) -> IqAnswer {
        if iq.stanza.attr("type") != Some("set") {
            return Err(StanzaErrorCondition::BadRequest);
        }
        let (user, domain) = account_of(&iq.from);
        match parse_command(payload)? {
            Command::Enable { jid, node, form } => {
                let sub = PushSubscription {
                    pubsub_jid: jid,
                    node,
                    resource: iq.from.resource().map(|r| r.as_str().to_owned()).unwrap_or_default(),
                    form,
                    created_micros: now_micros(),
                };
                ctx.storage.enable_push(&domain, &user, &sub).await.map_err(storage_error("push enable"))?;
            }
            Command::Disable { jid, node } => {
                ctx.storage
                    .disable_push(&domain, &user, &jid, node.as_deref())
                    .await
                    .map_err(storage_error("push disable"))?;
            }
        }
        Ok(None)
    }

    /// Announces a message no resource took to every subscription of its recipient.
    async fn notify(&self, ctx: &ModuleCtx, r: &Routed) {
        let Some(body) = r.stanza.get_child("body", &r.stanza.ns).map(|b| b.text()) else { return };
        let (owner, sender) = (r.to.bare(), r.from.to_string());
        if self.already_pushed(&pushed_key(&owner, &sender, &r.stanza, &body)) {
            tracing::debug!(%owner, "message pushed while its session waited; not pushed again");
            return;
        }
        self.notify_message(ctx, owner, sender, body).await;
    }

    /// Whether the message was pushed while its session waited (and counts it off).
    fn already_pushed(&self, key: &str) -> bool {
        match self.pushed_detached.get(key) {
            None | Some(0) => false,
            Some(1) => {
                self.pushed_detached.invalidate(key);
                true
            }
            Some(n) => {
                self.pushed_detached.insert(key.to_owned(), n - 1);
                true
            }
        }
    }

    /// Announces a message from `sender` to every subscription of `owner`.
    async fn notify_message(&self, ctx: &ModuleCtx, owner: BareJid, sender: String, body: String) {
        let (user, domain) = account_of(&Jid::from(owner.clone()));
        let subs = match ctx.storage.push_subscriptions(&domain, &user).await {
            Ok(s) if s.is_empty() => return,
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, %owner, "push subscriptions not read; no notification");
                return;
            }
        };
        let count = ctx.hooks.of(owner.domain().as_str()).unread_count(ctx, &owner).await.unwrap_or(1);
        let virtual_hosts = self.virtual_hosts.get().map(Vec::as_slice).unwrap_or_default();
        for sub in &subs {
            let Ok(to) = parse_jid(&sub.pubsub_jid) else { continue };
            if virtual_hosts.iter().any(|v| v == to.domain().as_str()) {
                let n = PushNotification {
                    owner: owner.clone(),
                    pubsub_jid: sub.pubsub_jid.clone(),
                    node: sub.node.clone(),
                    message_count: count,
                    last_message_sender: sender.clone(),
                    last_message_body: body.chars().take(MAX_BODY).collect(),
                    options: form_fields(&sub.form),
                };
                if !ctx.hooks.of(n.owner.domain().as_str()).push_notification(ctx, &n).await {
                    tracing::warn!(app_server = %sub.pubsub_jid, "no push service for a virtual pubsub host; notification not sent");
                }
                continue;
            }
            let stanza = notification(&owner, sub, count, &sender, &body);
            ctx.router.route(Routed { from: Jid::from(owner.clone()), to, stanza });
        }
    }
}

#[async_trait::async_trait]
impl Module for EventPusher {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn hot_hooks(&self) -> HookSet {
        HookSet::USER_SEND_MESSAGE
            .with(HookSet::USER_AVAILABLE)
            .with(HookSet::USER_UNAVAILABLE)
            .with(HookSet::UNDELIVERED_MESSAGE)
    }

    async fn start(&self, ctx: &ModuleCtx) -> Result<(), String> {
        // `@HOST@` stands for each host of the node: expanded once.
        let hosts = ctx.router.hosts();
        let virtual_hosts = self
            .push
            .iter()
            .flat_map(|p| p.virtual_pubsub_hosts.iter())
            .flat_map(|v| {
                if v.contains("@HOST@") {
                    hosts.iter().map(|h| v.replace("@HOST@", h)).collect()
                } else {
                    vec![v.clone()]
                }
            })
            .collect();
        let _ = self.virtual_hosts.set(virtual_hosts);
        if let Some(cfg) = &self.rabbit {
            let Some(pool) = ctx.pools.rabbit.get(&cfg.pool_name) else {
                return Err(format!(
                    "modules.mod_event_pusher.rabbit.pool_name: no [outgoing_pools.rabbit.{}]",
                    cfg.pool_name
                ));
            };
            let _ = self.publisher.set(rabbit::Publisher::start(cfg, pool));
        }
        let Some(cfg) = &self.http else { return Ok(()) };
        let mut senders: Vec<crate::ext::pools::Sender> = Vec::new();
        for (i, h) in cfg.handlers.iter().enumerate() {
            let Some(pool) = ctx.pools.http.get(&h.pool_name) else {
                for s in &senders {
                    s.stop();
                }
                if let Some(p) = self.publisher.get() {
                    p.stop();
                }
                return Err(format!(
                    "modules.mod_event_pusher.http.handlers[{i}].pool_name: no [outgoing_pools.http.{}]",
                    h.pool_name
                ));
            };
            let s = crate::ext::pools::Sender::start(crate::ext::pools::url(pool, &h.path), pool, "http");
            tracing::info!(url = s.url(), "event pusher: http handler ready");
            senders.push(s);
        }
        let _ = self.http_senders.set(senders);
        Ok(())
    }

    async fn stop(&self, _ctx: &ModuleCtx) {
        for s in self.http_senders.get().into_iter().flatten() {
            s.stop();
        }
        if let Some(p) = self.publisher.get() {
            p.stop();
        }
    }

    fn metrics(&self) -> Vec<Metric> {
        let mut out = Vec::new();
        for s in self.http_senders.get().into_iter().flatten() {
            s.metrics(&mut out);
        }
        if let Some(p) = self.publisher.get() {
            p.metrics(&mut out);
        }
        out
    }

    fn stanza_while_detached(
        &self,
        _ctx: &ModuleCtx,
        jid: &FullJid,
        _state: &mut SessionState,
        stanza: &Element,
        acc: &mut SessionAcc,
    ) {
        // XEP-0198 keeps it for a client that may come back; XEP-0357 is how
        // a phone learns it should.
        if self.push.is_none() || !matches!(MessageType::of(stanza), MessageType::Chat | MessageType::Normal) {
            return;
        }
        let Some(body) = stanza.get_child("body", &stanza.ns).map(|b| b.text()) else { return };
        let Some(me) = self.me.get().and_then(|m| m.upgrade()) else { return };
        let sender = stanza.attr("from").unwrap_or_default().to_owned();
        let key = pushed_key(&jid.bare(), &sender, stanza, &body);
        self.pushed_detached.insert(key.clone(), self.pushed_detached.get(&key).unwrap_or(0).saturating_add(1));
        acc.jobs.push(Box::new(PushJob { owner: jid.bare(), sender, body, module: me }));
    }

    async fn user_available(&self, _ctx: &ModuleCtx, jid: &FullJid) {
        self.presence_event(jid, true);
    }

    async fn user_unavailable(&self, _ctx: &ModuleCtx, jid: &FullJid) {
        self.presence_event(jid, false);
    }

    fn user_send_message(
        &self,
        ctx: &ModuleCtx,
        _state: &mut SessionState,
        from: &FullJid,
        to: &Jid,
        stanza: &mut Element,
        _acc: &mut SessionAcc,
    ) -> Result<(), StanzaErrorCondition> {
        // Only the http and rabbit backends hear of sent messages.
        if self.http_senders.get().is_none() && self.publisher.get().is_none() {
            return Ok(());
        }
        // MongooseIM's events are about chat messages with a body.
        if MessageType::of(stanza) != MessageType::Chat {
            return Ok(());
        }
        let Some(body) = stanza.get_child("body", &stanza.ns).map(|b| b.text()).filter(|b| !b.is_empty()) else {
            return Ok(());
        };
        if let Some(senders) = self.http_senders.get() {
            let event = http::ChatEvent {
                author: from.node().map(|n| n.as_str().to_owned()).unwrap_or_default(),
                server: from.domain().as_str().to_owned(),
                receiver: to.node().map(|n| n.as_str().to_owned()).unwrap_or_default(),
                message: body.clone(),
            };
            for s in senders {
                s.push(event.clone().into());
            }
        }
        if let (Some(p), Some(cfg)) = (self.publisher.get(), &self.rabbit) {
            let received = to.node().is_some() && ctx.router.is_local_host(to.domain().as_str());
            if !p.has_room(1 + usize::from(received)) {
                return Ok(());
            }
            let payload: Arc<str> = serde_json::to_string(&rabbit::ChatPayload {
                from_user_id: from.as_str(),
                to_user_id: to.as_str(),
                message: &body,
            })
            .unwrap_or_default()
            .into();
            let exchange = &p.chat_exchange;
            p.push(rabbit::Event {
                exchange: exchange.clone(),
                routing_key: format!("{}.{}", from.bare(), cfg.sent_topic()),
                payload: payload.clone(),
            });
            if received {
                let routing_key = format!("{}.{}", to.bare(), cfg.recv_topic());
                p.push(rabbit::Event { exchange: exchange.clone(), routing_key, payload });
            }
        }
        Ok(())
    }

    fn iq_namespaces(&self) -> &'static [&'static str] {
        if self.push.is_some() {
            &[NS_PUSH]
        } else {
            &[]
        }
    }

    fn disco_features(&self, target: Target) -> &'static [&'static str] {
        if target == Target::OwnAccount && self.push.is_some() {
            &[NS_PUSH]
        } else {
            &[]
        }
    }

    async fn iq(&self, ctx: &ModuleCtx, target: Target, iq: &Routed, payload: &Element) -> Option<IqAnswer> {
        if payload.ns != NS_PUSH || self.push.is_none() {
            return None;
        }
        Some(match target {
            Target::OwnAccount => self.push_command(ctx, iq, payload).await,
            Target::OtherAccount => Err(StanzaErrorCondition::Forbidden),
            Target::Server => return None,
        })
    }

    async fn undelivered_message(&self, ctx: &ModuleCtx, r: &Routed, _acc: &mut Undelivered) -> Flow {
        if self.push.is_some() {
            self.notify(ctx, r).await;
        }
        Flow::Continue
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn el(xml: &str) -> Element {
        parse_stored(xml).unwrap()
    }

    #[test]
    fn parses_enable_and_disable() {
        let form = format!(
            "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>{PUBLISH_OPTIONS}</value></field>\
             <field var='secret'><value>s3</value></field></x>"
        );
        let c = parse_command(&el(&format!("<enable xmlns='{NS_PUSH}' jid='push.example' node='n1'>{form}</enable>")))
            .unwrap();
        match c {
            Command::Enable { jid, node, form } => {
                assert_eq!((jid.as_str(), node.as_str()), ("push.example", "n1"));
                assert!(form.contains("s3"), "{form}");
            }
            c => panic!("{c:?}"),
        }
        assert_eq!(
            parse_command(&el(&format!("<disable xmlns='{NS_PUSH}' jid='push.example'/>"))).unwrap(),
            Command::Disable { jid: "push.example".into(), node: None }
        );
        for bad in [
            format!("<enable xmlns='{NS_PUSH}' jid='push.example'/>"),
            format!("<enable xmlns='{NS_PUSH}' node='n1'/>"),
            format!("<enable xmlns='{NS_PUSH}' jid='@@' node='n1'/>"),
            format!("<enable xmlns='{NS_PUSH}' jid='p' node='n'><x xmlns='jabber:x:data'/></enable>"),
            format!("<other xmlns='{NS_PUSH}' jid='p'/>"),
        ] {
            assert_eq!(parse_command(&el(&bad)), Err(StanzaErrorCondition::BadRequest), "{bad}");
        }
    }

    #[test]
    fn a_notification_carries_the_summary_and_the_publish_options() {
        let owner = meerkat_xmpp::jid::parse_bare("alice@example.org").unwrap();
        let sub = PushSubscription {
            pubsub_jid: "push.example".into(),
            node: "n1".into(),
            resource: "phone".into(),
            form: "<x xmlns='jabber:x:data' type='submit'><field var='secret'><value>s3</value></field></x>".into(),
            created_micros: 0,
        };
        let iq = notification(&owner, &sub, 7, "bob@example.org/x", "hi");
        let xml = iq.to_xml(ns::CLIENT);
        for part in [
            "to=\"push.example\"",
            "from=\"alice@example.org\"",
            "<publish node=\"n1\">",
            "<value>urn:xmpp:push:summary</value>",
            "<field var=\"message-count\"><value>7</value>",
            "<field var=\"last-message-sender\"><value>bob@example.org/x</value>",
            "<field var=\"last-message-body\"><value>hi</value>",
            "<publish-options><x xmlns=\"jabber:x:data\" type=\"submit\"><field var=\"secret\">",
        ] {
            assert!(xml.replace('\'', "\"").contains(part), "{part} in {xml}");
        }
    }
}
