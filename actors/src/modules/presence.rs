//! RFC 6121 §3 (subscriptions) and §4 (presence broadcast, probes).
//!
//! The state of a subscription lives in both rosters; every change here is
//! written to storage first, then pushed to the owner's resources, then
//! routed to the contact, so a crash between steps loses no approval.

use meerkat_xmpp::jid::Bare as _;
use std::sync::Arc;

use meerkat_routing::Routed;
use meerkat_storage::{RosterItem, RosterRepo, Subscription};
use meerkat_xmpp::element::Element;
use meerkat_xmpp::jid::{BareJid, FullJid, Jid};
use meerkat_xmpp::ns;
use meerkat_xmpp::stanza::PresenceType;

use super::roster::push;
use crate::services::Services;

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

async fn load(svc: &Arc<Services>, owner: &BareJid, contact: &BareJid) -> Option<RosterItem> {
    let (u, h) = parts(owner);
    match svc.storage.get_item(&h, &u, &contact.to_string()).await {
        Ok(i) => i,
        Err(e) => {
            tracing::error!(error = %e, %owner, "roster read failed");
            None
        }
    }
}

async fn save(svc: &Arc<Services>, owner: &BareJid, item: &RosterItem) -> bool {
    let (u, h) = parts(owner);
    match svc.storage.put_item(&h, &u, item).await {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(error = %e, %owner, "roster write failed");
            false
        }
    }
}

/// Routes a subscription stanza of `kind` from `from` (bare) to `to` (bare).
pub fn send_subscription(svc: &Arc<Services>, from: &BareJid, to: &BareJid, kind: &str) {
    let p = Element::new("presence", ns::CLIENT)
        .with_attr("type", kind)
        .with_attr("from", from.to_string())
        .with_attr("to", to.to_string());
    svc.router.route(Routed { from: Jid::from(from.clone()), to: Jid::from(to.clone()), stanza: p });
}

/// Sends the current presence of each available resource of `user` to `to`.
pub(crate) fn send_current_presence(svc: &Arc<Services>, user: &BareJid, to: &BareJid) {
    // The resources answer a probe with their own last presence.
    let probe = Element::new("presence", ns::CLIENT)
        .with_attr("type", "probe")
        .with_attr("from", to.to_string())
        .with_attr("to", user.to_string());
    for info in svc.router.sessions().resources(user) {
        let _ = svc.router.deliver_if_available(&info, probe.clone());
    }
}

/// Sends unavailable presence from each available resource of `user` to `to`.
pub(crate) fn send_unavailable(svc: &Arc<Services>, user: &BareJid, to: &BareJid) {
    for info in svc.router.sessions().resources(user) {
        if info.priority.is_some() {
            let p = Element::new("presence", ns::CLIENT)
                .with_attr("type", "unavailable")
                .with_attr("from", info.jid.to_string())
                .with_attr("to", to.to_string());
            svc.router.route(Routed { from: Jid::from(info.jid.clone()), to: Jid::from(to.clone()), stanza: p });
        }
    }
}

/// RFC 6121 §3.1.2, §3.2.2, §3.3.2, §3.4.2: a user sent subscribe, subscribed,
/// unsubscribe or unsubscribed to a contact.
pub async fn outbound_subscription(svc: &Arc<Services>, r: Routed) {
    let Some(kind) = PresenceType::of(&r.stanza) else { return };
    let user = r.from.bare();
    let contact = r.to.bare();
    if user == contact {
        return;
    }
    let mut item = load(svc, &user, &contact).await;
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
            if !save(svc, &user, i).await {
                return;
            }
            push(svc, &user, i);
        }
    }
    if forward {
        // §3.1.2: the server stamps the bare JID as the sender of subscription stanzas.
        let mut stanza = r.stanza;
        stanza.set_attr("from", user.to_string());
        stanza.set_attr("to", contact.to_string());
        svc.router.route(Routed { from: Jid::from(user.clone()), to: Jid::from(contact.clone()), stanza });
    }
    match kind {
        PresenceType::Subscribed if forward => send_current_presence(svc, &user, &contact),
        PresenceType::Unsubscribed => send_unavailable(svc, &user, &contact),
        _ => {}
    }
}

/// Subscription stanzas and probes arriving for a local account (§3.1.3, §3.2.3, §3.3.3, §3.4.3, §4.3.2).
pub async fn inbound(svc: &Arc<Services>, r: Routed) {
    let Some(kind) = PresenceType::of(&r.stanza) else { return };
    let user = r.to.bare();
    let contact = r.from.bare();
    let (u, h) = parts(&user);
    if !svc.accounts.exists(&h, &u).await.unwrap_or(false) {
        // No such account: a subscribe is answered with unsubscribed (§3.1.3), the rest is ignored.
        if kind == PresenceType::Subscribe {
            send_subscription(svc, &user, &contact, "unsubscribed");
        }
        return;
    }
    if kind == PresenceType::Probe {
        if user == contact {
            send_current_presence(svc, &user, &contact);
            return;
        }
        if let Some(i) = load(svc, &user, &contact).await {
            if matches!(i.subscription, Subscription::From | Subscription::Both) {
                // The probe goes to the resources, which answer from their own state.
                let to = r.to.try_as_full().ok().cloned();
                let mut probe = r.stanza.clone();
                probe.set_attr("from", r.from.to_string());
                for info in svc.router.sessions().resources(&user) {
                    if to.as_ref().is_none_or(|t| *t == info.jid) {
                        let _ = svc.router.deliver_if_available(&info, probe.clone());
                    }
                }
            }
        }
        return;
    }
    let mut item = load(svc, &user, &contact).await;
    let mut deliver = true;
    let mut changed = false;
    match kind {
        PresenceType::Subscribe => {
            let i = item.get_or_insert_with(|| new_item(&contact));
            if matches!(i.subscription, Subscription::From | Subscription::Both) {
                // Already subscribed: answer on the user's behalf (§3.1.3 step 1).
                send_subscription(svc, &user, &contact, "subscribed");
                return;
            }
            if i.pre_approved {
                i.pre_approved = false;
                i.subscription =
                    if i.subscription == Subscription::To { Subscription::Both } else { Subscription::From };
                if save(svc, &user, i).await {
                    push(svc, &user, i);
                    send_subscription(svc, &user, &contact, "subscribed");
                    send_current_presence(svc, &user, &contact);
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
            if !save(svc, &user, i).await {
                return;
            }
            // A pending-only item is not part of the visible roster, so no push for it.
            if !(kind == PresenceType::Subscribe) {
                push(svc, &user, i);
            }
        }
    }
    if deliver {
        let mut stanza = r.stanza;
        stanza.set_attr("from", contact.to_string());
        for info in svc.router.sessions().resources(&user) {
            let _ = svc.router.deliver_if_available(&info, stanza.clone());
        }
    }
    if kind == PresenceType::Unsubscribe && changed {
        send_unavailable(svc, &user, &contact);
    }
}

/// §4.2–§4.6: presence a resource sent without `to`. Contacts the user blocks
/// (XEP-0191) get neither the presence nor probes.
pub async fn broadcast(svc: &Arc<Services>, from: &FullJid, presence: Element, initial: bool, directed: Vec<Jid>) {
    let user = from.bare();
    let (u, h) = parts(&user);
    let mut roster = match svc.storage.get_roster(&h, &u).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "roster read failed; presence reaches own resources only");
            Vec::new()
        }
    };
    let mut directed = directed;
    if let Some(list) = super::blocklist(svc, &user).await.filter(|l| !l.is_empty()) {
        let blocked = |peer: &Jid| super::blocking::applies(svc, &list, &user, peer);
        roster.retain(|i| meerkat_xmpp::jid::parse_bare(&i.contact).map_or(true, |j| !blocked(&Jid::from(j))));
        directed.retain(|d| !blocked(d));
    }
    let send = |to: Jid| {
        let mut p = presence.clone();
        p.set_attr("from", from.to_string());
        p.set_attr("to", to.to_string());
        svc.router.route(Routed { from: Jid::from(from.clone()), to, stanza: p });
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
                    svc.router.route(Routed { from: Jid::from(user.clone()), to: Jid::from(j), stanza: probe });
                }
            }
        }
        // §3.1.3: requests that arrived while the user was offline are delivered now.
        for item in roster.iter().filter(|i| i.pending_in) {
            let p = Element::new("presence", ns::CLIENT)
                .with_attr("type", "subscribe")
                .with_attr("from", item.contact.clone())
                .with_attr("to", from.to_string());
            if let Some(info) = svc.router.sessions().get(from) {
                let _ = svc.router.deliver_to_session(&info, p);
            }
        }
        for m in &svc.modules {
            m.user_available(svc, from).await;
        }
        // Stored messages are out: live ones held meanwhile may follow.
        if let Some(sink) = svc.router.sessions().get(from).and_then(|i| svc.router.sink(i.sid)) {
            sink.deliver_stored(Vec::new(), true);
        }
    }
}
