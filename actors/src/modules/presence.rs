//! RFC 6121 §3 (subscriptions) and §4 (presence broadcast, probes, directed presence).
//!
//! The session keeps what it needs to answer for itself in a slot of its state
//! ([`PresenceState`]: its last broadcast presence and who got directed
//! presence): it answers probes from it, and broadcasts unavailable presence
//! when it ends. Broadcasts and subscription changes are [`ModuleJob`]s on the
//! user's shard of the server workers, since they read and write the roster.
//!
//! The state of a subscription lives in both rosters; every change here is
//! written to storage first, then announced ([`Module::roster_changed`]: the
//! roster module pushes it to the owner's resources), then routed to the
//! contact, so a crash between steps loses no approval.

use meerkat_xmpp::jid::Bare as _;
use std::collections::HashSet;
use std::sync::Arc;

use meerkat_routing::Routed;
use meerkat_storage::{RosterItem, RosterRepo, Subscription};
use meerkat_xmpp::element::Element;
use meerkat_xmpp::jid::{parse_jid, BareJid, FullJid, Jid};
use meerkat_xmpp::ns;
use meerkat_xmpp::stanza::{PresenceType, StanzaKind};

use crate::ext::registry::ModuleSpec;
use crate::ext::util::{send_current_presence, send_subscription, send_unavailable};
use crate::ext::{Flow, HookSet, Module, ModuleCtx, ModuleJob, Receive, SessionAcc, SessionState};
use meerkat_xmpp::error::{error_reply, StanzaErrorCondition};

pub struct Presence {
    max_directed: usize,
}

/// `[modules.mod_presence]`
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PresenceConfig {
    /// Presence broadcast, probes, subscriptions and directed presence (RFC 6121).
    pub enabled: bool,
    /// Most JIDs one resource may have sent directed presence to while
    /// available (each is remembered until it goes unavailable, §4.6.2);
    /// a directed presence to one more is answered with `policy-violation`.
    pub max_directed_presences: usize,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        PresenceConfig { enabled: true, max_directed_presences: 1000 }
    }
}

impl ModuleSpec for Presence {
    const NAME: &'static str = "mod_presence";
    type Config = PresenceConfig;
    fn enabled(cfg: &PresenceConfig) -> bool {
        cfg.enabled
    }
    fn validate(cfg: &PresenceConfig) -> Result<(), (&'static str, String)> {
        if cfg.max_directed_presences == 0 {
            return Err(("max_directed_presences", "must be at least 1".into()));
        }
        Ok(())
    }
    fn build(cfg: &PresenceConfig) -> Arc<dyn Module> {
        Arc::new(Presence { max_directed: cfg.max_directed_presences })
    }
}

/// What a session remembers of its own presence.
#[derive(Debug, Default)]
struct PresenceState {
    /// The last available presence broadcast, without `to`; `None` while unavailable.
    last: Option<Element>,
    /// Whom the resource sent directed presence while available (§4.6.2).
    directed: HashSet<Jid>,
}

/// Presence a resource sent without `to` (RFC 6121 §4.2–§4.6): broadcast it.
struct Broadcast {
    from: FullJid,
    presence: Element,
    initial: bool,
    directed: Vec<Jid>,
}

#[async_trait::async_trait]
impl ModuleJob for Broadcast {
    fn shard_key(&self) -> String {
        self.from.bare().to_string()
    }
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
    async fn run(self: Box<Self>, ctx: &ModuleCtx) {
        let Broadcast { from, presence, initial, directed } = *self;
        broadcast(ctx, &from, presence, initial, directed).await
    }
}

/// A subscription request or answer a user sent (RFC 6121 §3, outbound side).
struct OutboundSubscription(Routed);

#[async_trait::async_trait]
impl ModuleJob for OutboundSubscription {
    fn shard_key(&self) -> String {
        self.0.from.bare().to_string()
    }
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
    async fn run(self: Box<Self>, ctx: &ModuleCtx) {
        outbound_subscription(ctx, self.0).await
    }
}

#[async_trait::async_trait]
impl Module for Presence {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn hot_hooks(&self) -> HookSet {
        HookSet::USER_RECEIVE.with(HookSet::PRESENCE_IN)
    }

    fn user_send_presence(
        &self,
        _ctx: &ModuleCtx,
        state: &mut SessionState,
        from: &FullJid,
        to: Option<&Jid>,
        presence: &Element,
        initial: bool,
        acc: &mut SessionAcc,
    ) -> Flow {
        let Some(ptype) = PresenceType::of(presence) else { return Flow::Continue };
        let st = state.get_or_default::<PresenceState>();
        match (to, ptype) {
            (None, PresenceType::Available) => {
                let mut stored = presence.clone();
                stored.remove_attr("to");
                st.last = Some(stored);
                let from = from.clone();
                acc.jobs.push(Box::new(Broadcast { from, presence: presence.clone(), initial, directed: Vec::new() }));
                Flow::Stop
            }
            (None, PresenceType::Unavailable) => {
                st.last = None;
                let directed = st.directed.drain().collect();
                let from = from.clone();
                acc.jobs.push(Box::new(Broadcast { from, presence: presence.clone(), initial: false, directed }));
                Flow::Stop
            }
            (None, _) => Flow::Continue,
            (Some(to), t) if t.is_subscription() => {
                let from = Jid::from(from.clone());
                acc.jobs.push(Box::new(OutboundSubscription(Routed {
                    from,
                    to: to.clone(),
                    stanza: presence.clone(),
                })));
                Flow::Stop
            }
            (Some(to), PresenceType::Available) => {
                if st.directed.len() >= self.max_directed && !st.directed.contains(to) {
                    let mut stanza = presence.clone();
                    stanza.set_attr("from", from.to_string());
                    let text = format!("at most {} directed presences at once", self.max_directed);
                    acc.write.extend(error_reply(&stanza, StanzaErrorCondition::PolicyViolation, Some(&text)));
                    return Flow::Stop;
                }
                st.directed.insert(to.clone());
                Flow::Continue
            }
            (Some(to), PresenceType::Unavailable) => {
                st.directed.remove(to);
                Flow::Continue
            }
            (Some(_), _) => Flow::Continue,
        }
    }

    fn user_receive(&self, ctx: &ModuleCtx, jid: &FullJid, state: &mut SessionState, stanza: &Element) -> Receive {
        if StanzaKind::of(stanza) != Some(StanzaKind::Presence) || stanza.attr("type") != Some("probe") {
            return Receive::Deliver;
        }
        // Probes reach a session only after the server checked the subscription:
        // the resource answers with its last presence, if it is available.
        let last = state.get::<PresenceState>().and_then(|s| s.last.as_ref());
        if let (Some(last), Some(to)) = (last, stanza.attr("from").and_then(|f| parse_jid(f).ok())) {
            let mut p = last.clone();
            p.set_attr("from", jid.as_str().to_owned());
            p.set_attr("to", to.to_string());
            ctx.router.route(Routed { from: Jid::from(jid.clone()), to, stanza: p });
        }
        Receive::Drop
    }

    fn session_closed(&self, _ctx: &ModuleCtx, jid: &FullJid, state: &mut SessionState, acc: &mut SessionAcc) {
        let Some(st) = state.get_mut::<PresenceState>() else { return };
        if st.last.take().is_some() {
            // Contacts learn that the resource is gone (§4.5.2).
            let unavailable = Element::new("presence", ns::CLIENT).with_attr("type", "unavailable");
            let directed = st.directed.drain().collect();
            acc.jobs.push(Box::new(Broadcast { from: jid.clone(), presence: unavailable, initial: false, directed }));
        }
    }

    async fn presence_in(&self, ctx: &ModuleCtx, r: &Routed) -> Flow {
        inbound(ctx, r.clone()).await;
        Flow::Stop
    }
}

fn new_item(contact: &BareJid) -> RosterItem {
    RosterItem {
        contact: contact.to_string(),
        name: None,
        subscription: Subscription::None,
        ask_out: false,
        pending_in: false,
        pre_approved: false,
        groups: Vec::new(),
    }
}

fn parts(j: &BareJid) -> (String, String) {
    (j.node().map(|n| n.as_str().to_owned()).unwrap_or_default(), j.domain().as_str().to_owned())
}

async fn load(ctx: &ModuleCtx, owner: &BareJid, contact: &BareJid) -> Option<RosterItem> {
    let (u, h) = parts(owner);
    match ctx.storage.get_item(&h, &u, &contact.to_string()).await {
        Ok(i) => i,
        Err(e) => {
            tracing::error!(error = %e, %owner, "roster read failed");
            None
        }
    }
}

async fn save(ctx: &ModuleCtx, owner: &BareJid, item: &RosterItem) -> bool {
    let (u, h) = parts(owner);
    match ctx.storage.put_item(&h, &u, item).await {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(error = %e, %owner, "roster write failed");
            false
        }
    }
}

/// RFC 6121 §3.1.2, §3.2.2, §3.3.2, §3.4.2: a user sent subscribe, subscribed,
/// unsubscribe or unsubscribed to a contact.
async fn outbound_subscription(ctx: &ModuleCtx, r: Routed) {
    let Some(kind) = PresenceType::of(&r.stanza) else { return };
    let user = r.from.bare();
    let contact = r.to.bare();
    if user == contact {
        return;
    }
    let mut item = load(ctx, &user, &contact).await;
    let mut changed = false;
    let mut forward = true;
    match kind {
        PresenceType::Subscribe => {
            let i = item.get_or_insert_with(|| new_item(&contact));
            if !matches!(i.subscription, Subscription::To | Subscription::Both) && !i.ask_out {
                i.ask_out = true;
                changed = true;
            }
        }
        PresenceType::Subscribed => match item.as_mut() {
            Some(i) if i.pending_in => {
                i.pending_in = false;
                i.subscription = match i.subscription {
                    Subscription::To | Subscription::Both => Subscription::Both,
                    _ => Subscription::From,
                };
                changed = true;
            }
            // Already approved: nothing to do, and nothing to tell the contact again.
            Some(i) if matches!(i.subscription, Subscription::From | Subscription::Both) => forward = false,
            _ => {
                // §3.4: pre-approval of a future request.
                let i = item.get_or_insert_with(|| new_item(&contact));
                i.pre_approved = true;
                changed = true;
                forward = false;
            }
        },
        PresenceType::Unsubscribe => {
            if let Some(i) = item.as_mut() {
                let sub = match i.subscription {
                    Subscription::Both => Subscription::From,
                    Subscription::To => Subscription::None,
                    s => s,
                };
                changed = sub != i.subscription || i.ask_out;
                i.subscription = sub;
                i.ask_out = false;
            }
        }
        PresenceType::Unsubscribed => {
            if let Some(i) = item.as_mut() {
                let sub = match i.subscription {
                    Subscription::Both => Subscription::To,
                    Subscription::From => Subscription::None,
                    s => s,
                };
                changed = sub != i.subscription || i.pending_in || i.pre_approved;
                i.subscription = sub;
                i.pending_in = false;
                i.pre_approved = false;
            }
        }
        _ => return,
    }
    if changed {
        if let Some(i) = &item {
            if !save(ctx, &user, i).await {
                return;
            }
            ctx.hooks.of(user.domain().as_str()).roster_changed(ctx, &user, i).await;
        }
    }
    if forward {
        // §3.1.2: the server stamps the bare JID as the sender of subscription stanzas.
        let mut stanza = r.stanza;
        stanza.set_attr("from", user.to_string());
        stanza.set_attr("to", contact.to_string());
        ctx.router.route(Routed { from: Jid::from(user.clone()), to: Jid::from(contact.clone()), stanza });
    }
    match kind {
        PresenceType::Subscribed if forward => send_current_presence(&ctx.router, &user, &contact),
        PresenceType::Unsubscribed => send_unavailable(&ctx.router, &user, &contact),
        _ => {}
    }
}

/// Subscription stanzas and probes arriving for a local account (§3.1.3, §3.2.3, §3.3.3, §3.4.3, §4.3.2).
async fn inbound(ctx: &ModuleCtx, r: Routed) {
    let Some(kind) = PresenceType::of(&r.stanza) else { return };
    let user = r.to.bare();
    let contact = r.from.bare();
    let (u, h) = parts(&user);
    if !ctx.accounts.exists(&h, &u).await.unwrap_or(false) {
        // No such account: a subscribe is answered with unsubscribed (§3.1.3), the rest is ignored.
        if kind == PresenceType::Subscribe {
            send_subscription(&ctx.router, &user, &contact, "unsubscribed");
        }
        return;
    }
    if kind == PresenceType::Probe {
        if user == contact {
            send_current_presence(&ctx.router, &user, &contact);
            return;
        }
        if let Some(i) = load(ctx, &user, &contact).await {
            if matches!(i.subscription, Subscription::From | Subscription::Both) {
                // The probe goes to the resources, which answer from their own state.
                let to = r.to.try_as_full().ok().cloned();
                let mut probe = r.stanza.clone();
                probe.set_attr("from", r.from.to_string());
                for info in ctx.router.sessions().resources(&user) {
                    if to.as_ref().is_none_or(|t| *t == info.jid) {
                        let _ = ctx.router.deliver_if_available(&info, probe.clone());
                    }
                }
            }
        }
        return;
    }
    let mut item = load(ctx, &user, &contact).await;
    let mut deliver = true;
    let mut changed = false;
    match kind {
        PresenceType::Subscribe => {
            let i = item.get_or_insert_with(|| new_item(&contact));
            if matches!(i.subscription, Subscription::From | Subscription::Both) {
                // Already subscribed: answer on the user's behalf (§3.1.3 step 1).
                send_subscription(&ctx.router, &user, &contact, "subscribed");
                return;
            }
            if i.pre_approved {
                i.pre_approved = false;
                i.subscription =
                    if i.subscription == Subscription::To { Subscription::Both } else { Subscription::From };
                if save(ctx, &user, i).await {
                    ctx.hooks.of(user.domain().as_str()).roster_changed(ctx, &user, i).await;
                    send_subscription(&ctx.router, &user, &contact, "subscribed");
                    send_current_presence(&ctx.router, &user, &contact);
                }
                return;
            }
            if !i.pending_in {
                i.pending_in = true;
                changed = true;
            }
        }
        PresenceType::Subscribed => match item.as_mut() {
            Some(i) if i.ask_out => {
                i.ask_out = false;
                i.subscription =
                    if i.subscription == Subscription::From { Subscription::Both } else { Subscription::To };
                changed = true;
            }
            _ => deliver = false,
        },
        PresenceType::Unsubscribe => match item.as_mut() {
            Some(i) if matches!(i.subscription, Subscription::From | Subscription::Both) || i.pending_in => {
                i.subscription = if i.subscription == Subscription::Both {
                    Subscription::To
                } else if i.subscription == Subscription::From {
                    Subscription::None
                } else {
                    i.subscription
                };
                i.pending_in = false;
                changed = true;
            }
            _ => deliver = false,
        },
        PresenceType::Unsubscribed => match item.as_mut() {
            Some(i) if matches!(i.subscription, Subscription::To | Subscription::Both) || i.ask_out => {
                i.subscription = if i.subscription == Subscription::Both {
                    Subscription::From
                } else if i.subscription == Subscription::To {
                    Subscription::None
                } else {
                    i.subscription
                };
                i.ask_out = false;
                changed = true;
            }
            _ => deliver = false,
        },
        _ => return,
    }
    if changed {
        if let Some(i) = &item {
            if !save(ctx, &user, i).await {
                return;
            }
            // A pending-only item is not part of the visible roster, so no push for it.
            if !(kind == PresenceType::Subscribe) {
                ctx.hooks.of(user.domain().as_str()).roster_changed(ctx, &user, i).await;
            }
        }
    }
    if deliver {
        let mut stanza = r.stanza;
        stanza.set_attr("from", contact.to_string());
        for info in ctx.router.sessions().resources(&user) {
            let _ = ctx.router.deliver_if_available(&info, stanza.clone());
        }
    }
    if kind == PresenceType::Unsubscribe && changed {
        send_unavailable(&ctx.router, &user, &contact);
    }
}

/// §4.2–§4.6: presence a resource sent without `to`. Contacts the user blocks
/// (XEP-0191) get neither the presence nor probes.
async fn broadcast(ctx: &ModuleCtx, from: &FullJid, presence: Element, initial: bool, directed: Vec<Jid>) {
    let user = from.bare();
    let (u, h) = parts(&user);
    let roster = match ctx.storage.get_roster(&h, &u).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "roster read failed; presence reaches own resources only");
            Vec::new()
        }
    };
    // Contacts the user blocks (XEP-0191) get neither the presence nor probes.
    let mut kept = Vec::with_capacity(roster.len());
    for item in roster {
        let blocked = match meerkat_xmpp::jid::parse_bare(&item.contact) {
            Ok(j) => ctx.hooks.of(user.domain().as_str()).blocks(ctx, &user, &Jid::from(j)).await,
            Err(_) => false,
        };
        if !blocked {
            kept.push(item);
        }
    }
    let roster = kept;
    let mut unblocked = Vec::with_capacity(directed.len());
    for d in directed {
        if !ctx.hooks.of(user.domain().as_str()).blocks(ctx, &user, &d).await {
            unblocked.push(d);
        }
    }
    let directed = unblocked;
    let send = |to: Jid| {
        let mut p = presence.clone();
        p.set_attr("from", from.to_string());
        p.set_attr("to", to.to_string());
        ctx.router.route(Routed { from: Jid::from(from.clone()), to, stanza: p });
    };
    let mut sent_to: Vec<Jid> = Vec::new();
    for item in &roster {
        if matches!(item.subscription, Subscription::From | Subscription::Both) {
            if let Ok(j) = meerkat_xmpp::jid::parse_bare(&item.contact) {
                sent_to.push(Jid::from(j.clone()));
                send(Jid::from(j));
            }
        }
    }
    // The user's own available resources, the sender included (§4.2.2).
    send(Jid::from(user.clone()));
    let unavailable = presence.attr("type") == Some("unavailable");
    if unavailable {
        // §4.6.2: also everyone who got directed presence.
        for d in directed {
            if !sent_to.contains(&d) && d.bare() != user {
                send(d);
            }
        }
    }
    if initial {
        for item in &roster {
            if matches!(item.subscription, Subscription::To | Subscription::Both) {
                if let Ok(j) = meerkat_xmpp::jid::parse_bare(&item.contact) {
                    let probe = Element::new("presence", ns::CLIENT)
                        .with_attr("type", "probe")
                        .with_attr("from", user.to_string())
                        .with_attr("to", j.to_string());
                    ctx.router.route(Routed { from: Jid::from(user.clone()), to: Jid::from(j), stanza: probe });
                }
            }
        }
        // §3.1.3: requests that arrived while the user was offline are delivered now.
        for item in roster.iter().filter(|i| i.pending_in) {
            let p = Element::new("presence", ns::CLIENT)
                .with_attr("type", "subscribe")
                .with_attr("from", item.contact.clone())
                .with_attr("to", from.to_string());
            if let Some(info) = ctx.router.sessions().get(from) {
                let _ = ctx.router.deliver_to_session(&info, p);
            }
        }
        ctx.hooks.of(from.domain().as_str()).user_available(ctx, from).await;
    } else if unavailable {
        ctx.hooks.of(from.domain().as_str()).user_unavailable(ctx, from).await;
    }
}
