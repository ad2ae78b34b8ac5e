//! Small server queries: XEP-0092 software version, XEP-0202 entity time.

use std::sync::Arc;

use meerkat_routing::Routed;
use meerkat_xmpp::element::Element;
use meerkat_xmpp::error::StanzaErrorCondition;
use meerkat_xmpp::ns;

use crate::ext::registry::ModuleSpec;
use crate::ext::{HookSet, IqAnswer, Module, ModuleCtx, Switch, Target};

/// XEP-0092: Software Version (of the server only).
pub struct Version {
    pub name: String,
    pub version: String,
}

impl ModuleSpec for Version {
    const NAME: &'static str = "mod_version";
    type Config = Switch;
    fn enabled(cfg: &Switch) -> bool {
        cfg.enabled
    }
    fn build(_cfg: &Switch) -> Arc<dyn Module> {
        Arc::new(Version { name: "Meerkat".into(), version: env!("CARGO_PKG_VERSION").into() })
    }
}

#[async_trait::async_trait]
impl Module for Version {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn hot_hooks(&self) -> HookSet {
        HookSet::NONE
    }
    fn disco_features(&self, t: Target) -> &'static [&'static str] {
        if t == Target::Server {
            &[ns::VERSION]
        } else {
            &[]
        }
    }
    fn iq_namespaces(&self) -> &'static [&'static str] {
        &[ns::VERSION]
    }
    async fn iq(&self, _ctx: &ModuleCtx, t: Target, iq: &Routed, payload: &Element) -> Option<IqAnswer> {
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

impl ModuleSpec for Time {
    const NAME: &'static str = "mod_time";
    type Config = Switch;
    fn enabled(cfg: &Switch) -> bool {
        cfg.enabled
    }
    fn build(_cfg: &Switch) -> Arc<dyn Module> {
        Arc::new(Time)
    }
}

#[async_trait::async_trait]
impl Module for Time {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn hot_hooks(&self) -> HookSet {
        HookSet::NONE
    }
    fn disco_features(&self, t: Target) -> &'static [&'static str] {
        if t == Target::Server {
            &[ns::TIME]
        } else {
            &[]
        }
    }
    fn iq_namespaces(&self) -> &'static [&'static str] {
        &[ns::TIME]
    }
    async fn iq(&self, _ctx: &ModuleCtx, t: Target, iq: &Routed, payload: &Element) -> Option<IqAnswer> {
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
