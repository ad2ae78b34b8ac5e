//! Small server queries: XEP-0199 ping, XEP-0092 software version, XEP-0202 entity time.

use std::sync::Arc;
use std::time::Duration;

use meerkat_routing::Routed;
use meerkat_xmpp::element::Element;
use meerkat_xmpp::error::StanzaErrorCondition;
use meerkat_xmpp::ns;

use crate::ext::registry::ModuleSpec;
use crate::ext::{CoreTuning, HookSet, IqAnswer, Module, ModuleCtx, Switch, Target};

/// XEP-0199: XMPP Ping. The module answers pings; the session sends them to
/// silent clients with the settings of its section.
pub struct Ping;

/// `[modules.mod_ping]`
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PingConfig {
    /// Answer pings (and offer `urn:xmpp:ping` in disco).
    pub enabled: bool,
    /// Ping clients that have been silent for `ping_interval`; when off, only
    /// `[session] idle_timeout` ends a silent connection.
    pub send_pings: bool,
    /// Seconds of client silence before a ping.
    pub ping_interval: u64,
    /// Seconds a client has to answer a ping before `connection-timeout`.
    pub ping_timeout: u64,
}

impl Default for PingConfig {
    fn default() -> Self {
        PingConfig { enabled: true, send_pings: true, ping_interval: 300, ping_timeout: 60 }
    }
}

impl ModuleSpec for Ping {
    const NAME: &'static str = "mod_ping";
    type Config = PingConfig;
    fn enabled(cfg: &PingConfig) -> bool {
        cfg.enabled
    }
    fn validate(cfg: &PingConfig) -> Result<(), (&'static str, String)> {
        if cfg.send_pings && (cfg.ping_interval == 0 || cfg.ping_timeout == 0) {
            return Err(("ping_interval", "ping_interval and ping_timeout must be at least 1 second".into()));
        }
        Ok(())
    }
    fn tune(cfg: &PingConfig, core: &mut CoreTuning) {
        core.ping_interval = cfg.send_pings.then(|| Duration::from_secs(cfg.ping_interval));
        core.ping_timeout = Duration::from_secs(cfg.ping_timeout.max(1));
    }
    fn build(_cfg: &PingConfig) -> Arc<dyn Module> {
        Arc::new(Ping)
    }
}

#[async_trait::async_trait]
impl Module for Ping {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn hot_hooks(&self) -> HookSet {
        HookSet::NONE
    }
    fn disco_features(&self, _t: Target) -> &'static [&'static str] {
        &[ns::PING]
    }
    fn iq_namespaces(&self) -> &'static [&'static str] {
        &[ns::PING]
    }
    async fn iq(&self, _ctx: &ModuleCtx, _t: Target, iq: &Routed, payload: &Element) -> Option<IqAnswer> {
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
