//! RFC 6121 §2: roster management, with roster pushes to every resource.

use meerkat_xmpp::jid::Bare as _;
use std::sync::Arc;

use meerkat_routing::Routed;
use meerkat_storage::{RosterItem, RosterRepo, Subscription};
use meerkat_xmpp::element::Element;
use meerkat_xmpp::error::StanzaErrorCondition;
use meerkat_xmpp::jid::{parse_bare, BareJid, Jid};
use meerkat_xmpp::ns;

use crate::ext::registry::ModuleSpec;
use crate::ext::util::{account_of, send_subscription};
use crate::ext::{storage_error, HookSet, IqAnswer, Module, ModuleCtx, Switch, Target};

pub struct Roster;

impl ModuleSpec for Roster {
    const NAME: &'static str = "mod_roster";
    type Config = Switch;
    fn enabled(cfg: &Switch) -> bool {
        cfg.enabled
    }
    fn build(_cfg: &Switch) -> Arc<dyn Module> {
        Arc::new(Roster)
    }
}

#[async_trait::async_trait]
impl Module for Roster {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn hot_hooks(&self) -> HookSet {
        HookSet::ROSTER_CHANGED
    }

    fn iq_namespaces(&self) -> &'static [&'static str] {
        &[ns::ROSTER]
    }

    /// Every change of a roster item, whoever made it, is pushed to the
    /// owner's resources (RFC 6121 §2.1.6).
    async fn roster_changed(&self, ctx: &ModuleCtx, owner: &BareJid, item: &RosterItem) {
        push(ctx, owner, item);
    }

    async fn iq(&self, ctx: &ModuleCtx, target: Target, iq: &Routed, payload: &Element) -> Option<IqAnswer> {
        if !payload.is("query", ns::ROSTER) {
            return None;
        }
        if target != Target::OwnAccount {
            // Only the account itself may read or change its roster (RFC 6121 §2.1.5).
            return Some(Err(StanzaErrorCondition::Forbidden));
        }
        let (user, host) = account_of(&iq.from);
        Some(match iq.stanza.attr("type") {
            Some("get") => get(ctx, &host, &user).await,
            _ => set(ctx, &iq.from, &host, &user, payload).await,
        })
    }
}

/// Items only there to remember an inbound request are not shown (RFC 6121 §3.1.3).
fn visible(item: &RosterItem) -> bool {
    !(item.pending_in
        && item.subscription == Subscription::None
        && !item.ask_out
        && item.name.is_none()
        && item.groups.is_empty())
}

async fn get(ctx: &ModuleCtx, host: &str, user: &str) -> IqAnswer {
    let items = ctx.storage.get_roster(host, user).await.map_err(storage_error("roster read"))?;
    let mut q = Element::new("query", ns::ROSTER);
    for item in items.iter().filter(|i| visible(i)) {
        q.push_child(item_element(item));
    }
    Ok(Some(q))
}

async fn set(ctx: &ModuleCtx, from: &Jid, host: &str, user: &str, payload: &Element) -> IqAnswer {
    let items: Vec<&Element> = payload.elements().filter(|e| e.is("item", ns::ROSTER)).collect();
    // RFC 6121 §2.3.3: a roster set carries exactly one item.
    let [el] = items.as_slice() else {
        return Err(StanzaErrorCondition::BadRequest);
    };
    let contact = el.attr("jid").and_then(|j| parse_bare(j).ok()).ok_or(StanzaErrorCondition::BadRequest)?;
    if contact == from.bare() {
        return Err(StanzaErrorCondition::NotAllowed);
    }
    let contact_s = contact.to_string();
    let existing = ctx.storage.get_item(host, user, &contact_s).await.map_err(storage_error("roster read"))?;
    if el.attr("subscription") == Some("remove") {
        let Some(existing) = existing else {
            return Err(StanzaErrorCondition::ItemNotFound);
        };
        ctx.storage.remove_item(host, user, &contact_s).await.map_err(storage_error("roster write"))?;
        // §2.5.2: cancel the subscriptions in both directions.
        let bare = from.bare();
        if matches!(existing.subscription, Subscription::To | Subscription::Both) || existing.ask_out {
            send_subscription(&ctx.router, &bare, &contact, "unsubscribe");
        }
        if matches!(existing.subscription, Subscription::From | Subscription::Both) || existing.pending_in {
            send_subscription(&ctx.router, &bare, &contact, "unsubscribed");
        }
        let mut removed = existing;
        removed.subscription = Subscription::Remove;
        ctx.hooks.of(bare.domain().as_str()).roster_changed(ctx, &bare, &removed).await;
        return Ok(None);
    }
    let mut groups: Vec<String> = Vec::new();
    for g in el.elements().filter(|g| g.is("group", ns::ROSTER)) {
        let name = g.text();
        if name.is_empty() || groups.contains(&name) {
            // §2.3.3: empty or duplicate groups are bad requests.
            return Err(StanzaErrorCondition::BadRequest);
        }
        groups.push(name);
    }
    let name = el.attr("name").filter(|n| !n.is_empty()).map(str::to_owned);
    let item = match existing {
        Some(mut i) => {
            i.name = name;
            i.groups = groups;
            i
        }
        None => RosterItem {
            contact: contact_s,
            name,
            subscription: Subscription::None,
            ask_out: false,
            pending_in: false,
            pre_approved: false,
            groups,
        },
    };
    ctx.storage.put_item(host, user, &item).await.map_err(storage_error("roster write"))?;
    ctx.hooks.of(from.domain().as_str()).roster_changed(ctx, &from.bare(), &item).await;
    Ok(None)
}

pub fn subscription_str(s: Subscription) -> &'static str {
    match s {
        Subscription::None => "none",
        Subscription::To => "to",
        Subscription::From => "from",
        Subscription::Both => "both",
        Subscription::Remove => "remove",
    }
}

/// The `<item/>` of a roster result or push.
pub fn item_element(item: &RosterItem) -> Element {
    let mut el = Element::new("item", ns::ROSTER)
        .with_attr("jid", item.contact.clone())
        .with_attr("subscription", subscription_str(item.subscription));
    if let Some(n) = &item.name {
        el.set_attr("name", n.clone());
    }
    if item.ask_out && item.subscription != Subscription::Remove {
        el.set_attr("ask", "subscribe");
    }
    for g in &item.groups {
        el.push_child(Element::new("group", ns::ROSTER).with_text(g.clone()));
    }
    el
}

/// Sends a roster push (RFC 6121 §2.1.6) to every resource of `owner`.
fn push(ctx: &ModuleCtx, owner: &BareJid, item: &RosterItem) {
    for info in ctx.router.sessions().resources(owner) {
        let iq = Element::new("iq", ns::CLIENT)
            .with_attr("type", "set")
            .with_attr("id", format!("push{:x}", rand::random::<u64>()))
            .with_attr("to", info.jid.to_string())
            .with_child(Element::new("query", ns::ROSTER).with_child(item_element(item)));
        ctx.router.route(Routed { from: Jid::from(owner.clone()), to: Jid::from(info.jid.clone()), stanza: iq });
    }
}
