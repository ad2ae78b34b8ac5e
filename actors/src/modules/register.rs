//! XEP-0077: in-band registration (before authentication, in the stream
//! negotiation), password change and account removal (after it).
//!
//! Who may register before authentication is this module's to say
//! ([`Module::registration_begin`]): `ip_access` rules by source network, and
//! at most one account per `registration_timeout` seconds from one source
//! address (IPv6: one /64), as ejabberd and MongooseIM limit it.

use meerkat_xmpp::jid::Bare as _;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::IpNet;
use meerkat_routing::{KickReason, Routed};
use meerkat_xmpp::element::Element;
use meerkat_xmpp::error::StanzaErrorCondition;
use meerkat_xmpp::ns;
use tokio::time::Instant;

use crate::ext::registry::ModuleSpec;
use crate::ext::util::{account_of, source_of};
use crate::ext::{account_error, CoreTuning, HookSet, IqAnswer, Module, ModuleCtx, Target};

/// Sources remembered for `registration_timeout`; when this many registered
/// within the timeout, further registrations wait for the oldest to expire.
const MAX_REMEMBERED: usize = 65_536;

/// `[modules.mod_register]`
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegisterConfig {
    /// Clients may create accounts in-band, change their password and remove their account.
    pub enabled: bool,
    /// Who may create accounts in-band, by source network:
    /// `[{address = "127.0.0.0/8", policy = "allow"}, …]`. The first rule
    /// whose network holds the client's address decides; with rules and
    /// none matching, registration is refused (`forbidden`). Empty: anyone.
    pub ip_access: Vec<IpRule>,
    /// Seconds that must pass between two accounts created from one source
    /// address (IPv6: one /64); a registration sooner gets
    /// `resource-constraint` (ejabberd's and MongooseIM's default, 600).
    /// 0 turns the limit off.
    pub registration_timeout: u64,
}

impl Default for RegisterConfig {
    fn default() -> Self {
        RegisterConfig { enabled: true, ip_access: Vec::new(), registration_timeout: 600 }
    }
}

/// One `ip_access` rule.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpRule {
    /// An address or a network in CIDR notation (`10.20.0.0/16`, `::1`).
    pub address: String,
    pub policy: Policy,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    Allow,
    Deny,
}

fn parse_net(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>().ok().or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}

pub struct Register {
    rules: Vec<(IpNet, Policy)>,
    timeout: Option<Duration>,
    /// When each source last created an account (or is creating one now).
    recent: Mutex<HashMap<IpAddr, Instant>>,
}

impl ModuleSpec for Register {
    const NAME: &'static str = "mod_register";
    type Config = RegisterConfig;
    fn enabled(cfg: &RegisterConfig) -> bool {
        cfg.enabled
    }
    fn validate(cfg: &RegisterConfig) -> Result<(), (&'static str, String)> {
        for r in &cfg.ip_access {
            if parse_net(&r.address).is_none() {
                return Err((
                    "ip_access",
                    format!("{:?} is neither an IP address nor a network such as 10.0.0.0/8", r.address),
                ));
            }
        }
        Ok(())
    }
    fn tune(cfg: &RegisterConfig, core: &mut CoreTuning) {
        core.in_band_registration = cfg.enabled;
    }
    fn build(cfg: &RegisterConfig) -> Arc<dyn Module> {
        Arc::new(Register {
            rules: cfg.ip_access.iter().filter_map(|r| Some((parse_net(&r.address)?, r.policy))).collect(),
            timeout: (cfg.registration_timeout > 0).then(|| Duration::from_secs(cfg.registration_timeout)),
            recent: Mutex::new(HashMap::new()),
        })
    }
}

impl Register {
    fn allowed(&self, ip: Option<IpAddr>) -> bool {
        if self.rules.is_empty() {
            return true;
        }
        let Some(ip) = ip.map(|ip| match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        }) else {
            return false;
        };
        matches!(self.rules.iter().find(|(net, _)| net.contains(&ip)), Some((_, Policy::Allow)))
    }
}

#[async_trait::async_trait]
impl Module for Register {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn hot_hooks(&self) -> HookSet {
        HookSet::NONE
    }

    fn registration_begin(&self, source: Option<IpAddr>) -> Result<(), StanzaErrorCondition> {
        if !self.allowed(source) {
            return Err(StanzaErrorCondition::Forbidden);
        }
        let (Some(timeout), Some(ip)) = (self.timeout, source) else {
            return Ok(());
        };
        let key = source_of(ip);
        let now = Instant::now();
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.get(&key).is_some_and(|at| now.duration_since(*at) < timeout) {
            return Err(StanzaErrorCondition::ResourceConstraint);
        }
        if recent.len() >= MAX_REMEMBERED {
            recent.retain(|_, at| now.duration_since(*at) < timeout);
            if recent.len() >= MAX_REMEMBERED {
                return Err(StanzaErrorCondition::ResourceConstraint);
            }
        }
        // Taken now, so that parallel streams from one source cannot all pass.
        recent.insert(key, now);
        Ok(())
    }

    fn registration_done(&self, source: Option<IpAddr>, created: bool) {
        if let (false, Some(_), Some(ip)) = (created, self.timeout, source) {
            self.recent.lock().unwrap_or_else(|e| e.into_inner()).remove(&source_of(ip));
        }
    }
    fn disco_features(&self, t: Target) -> &'static [&'static str] {
        if t == Target::Server {
            &[ns::REGISTER]
        } else {
            &[]
        }
    }
    fn iq_namespaces(&self) -> &'static [&'static str] {
        &[ns::REGISTER]
    }
    async fn iq(&self, ctx: &ModuleCtx, t: Target, iq: &Routed, payload: &Element) -> Option<IqAnswer> {
        if !payload.is("query", ns::REGISTER) {
            return None;
        }
        if t == Target::OtherAccount {
            return Some(Err(StanzaErrorCondition::Forbidden));
        }
        let (user, host) = account_of(&iq.from);
        if iq.stanza.attr("type") == Some("get") {
            return Some(Ok(Some(
                Element::new("query", ns::REGISTER)
                    .with_child(Element::new("registered", ns::REGISTER))
                    .with_child(Element::new("username", ns::REGISTER).with_text(user)),
            )));
        }
        if payload.has_child("remove", ns::REGISTER) {
            return Some(match ctx.accounts.remove(&host, &user).await {
                Ok(()) => {
                    for info in ctx.router.sessions().resources(&iq.from.bare()) {
                        if let Some(sink) = ctx.router.sink(info.sid) {
                            sink.kick(KickReason::AccountRemoved);
                        }
                    }
                    Ok(None)
                }
                Err(e) => Err(account_error("account removal")(e)),
            });
        }
        let username = payload.get_child("username", ns::REGISTER).map(|e| e.text());
        let password = payload.get_child("password", ns::REGISTER).map(|e| e.text());
        Some(match (username, password) {
            (Some(u), Some(p)) if u == user && !p.is_empty() => ctx
                .accounts
                .set_password(&host, &user, &p)
                .await
                .map(|()| None)
                .map_err(account_error("password change")),
            _ => Err(StanzaErrorCondition::BadRequest),
        })
    }
}
