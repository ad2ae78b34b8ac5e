//! Small server queries: XEP-0199 ping, XEP-0092 software version, XEP-0202 entity time.

use std::sync::Arc;

use meerkat_routing::Routed;
use meerkat_xmpp::element::Element;
use meerkat_xmpp::error::StanzaErrorCondition;
use meerkat_xmpp::ns;

use super::{IqAnswer, Module, Target};
use crate::services::Services;

/// XEP-0199: XMPP Ping.
pub struct Ping;

#[async_trait::async_trait]
impl Module for Ping {
    fn name(&self) -> &'static str {
        "ping"
    }
    fn disco_features(&self, _t: Target) -> &'static [&'static str] {
        &[ns::PING]
    }
    async fn iq(&self, _svc: &Arc<Services>, _t: Target, iq: &Routed, payload: &Element) -> Option<IqAnswer> {
        if !payload.is("ping", ns::PING) {
            return None;
        }
        Some(if iq.stanza.attr("type") == Some("get") { Ok(None) } else { Err(StanzaErrorCondition::BadRequest) })
    }
}

/// XEP-0092: Software Version (of the server only).
pub struct Version {
    pub name: String,
    pub version: String,
}

#[async_trait::async_trait]
impl Module for Version {
    fn name(&self) -> &'static str {
        "version"
    }
    fn disco_features(&self, t: Target) -> &'static [&'static str] {
        if t == Target::Server {
            &[ns::VERSION]
        } else {
            &[]
        }
    }
    async fn iq(&self, _svc: &Arc<Services>, t: Target, iq: &Routed, payload: &Element) -> Option<IqAnswer> {
        if !payload.is("query", ns::VERSION) || t != Target::Server {
            return None;
        }
        if iq.stanza.attr("type") != Some("get") {
            return Some(Err(StanzaErrorCondition::BadRequest));
        }
        Some(Ok(Some(
            Element::new("query", ns::VERSION)
                .with_child(Element::new("name", ns::VERSION).with_text(self.name.clone()))
                .with_child(Element::new("version", ns::VERSION).with_text(self.version.clone())),
        )))
    }
}

/// XEP-0202: Entity Time.
pub struct Time;

#[async_trait::async_trait]
impl Module for Time {
    fn name(&self) -> &'static str {
        "time"
    }
    fn disco_features(&self, t: Target) -> &'static [&'static str] {
        if t == Target::Server {
            &[ns::TIME]
        } else {
            &[]
        }
    }
    async fn iq(&self, _svc: &Arc<Services>, t: Target, iq: &Routed, payload: &Element) -> Option<IqAnswer> {
        if !payload.is("time", ns::TIME) || t != Target::Server {
            return None;
        }
        if iq.stanza.attr("type") != Some("get") {
            return Some(Err(StanzaErrorCondition::BadRequest));
        }
        let now = chrono::Utc::now();
        Some(Ok(Some(
            Element::new("time", ns::TIME)
                .with_child(Element::new("tzo", ns::TIME).with_text("+00:00"))
                .with_child(Element::new("utc", ns::TIME).with_text(now.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())),
        )))
    }
}
