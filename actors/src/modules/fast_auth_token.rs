//! `mod_fast_auth_token`: XEP-0484 Fast Authentication Streamlining Tokens
//! (MongooseIM's name and options).
//!
//! Inside SASL2 a client asks for a token (`<request-token/>`) and logs in
//! with it next time in one round trip, with an `HT-*` mechanism. Tokens are
//! kept per account and `<user-agent id/>` in the database
//! ([`meerkat_storage::FastTokenRepo`]): the one in use and the next one. A
//! login with a token close to its expiry (`rotate_before_expire`) gets the
//! next one in `<success/>`; the old one keeps working until the new one is
//! first used. The exchange runs in the sans-IO negotiation
//! ([`crate::negotiation`]); this section switches it on and sets its times,
//! and the module keeps the tokens: it carries out negotiation's token steps
//! ([`Module::negotiation_action`]).

use std::sync::Arc;
use std::time::Duration;

use meerkat_xmpp::sasl::fast::HtMechanism;

use crate::ext::registry::ModuleSpec;
use crate::ext::{CoreTuning, HookSet, Module, ModuleCtx};
use crate::negotiation::{FastOp, FastSettings, IssuedToken, NegAction, NegEvent};

/// A span of time as MongooseIM writes it: `{value = 3, unit = "days"}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Period {
    pub value: u64,
    pub unit: Unit,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    Days,
    Hours,
    Minutes,
    Seconds,
}

impl Period {
    pub fn duration(self) -> Duration {
        let secs = match self.unit {
            Unit::Days => 86_400,
            Unit::Hours => 3_600,
            Unit::Minutes => 60,
            Unit::Seconds => 1,
        };
        Duration::from_secs(self.value.saturating_mul(secs))
    }
}

/// `[modules.mod_fast_auth_token.validity_period]`
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Validity {
    /// How long a token works once issued [3 days].
    pub access: Period,
    /// A login with a token this close to its expiry gets the next one; a
    /// value of 0 turns rotation off, and `access` itself rotates on every
    /// login with the current token [6 hours].
    pub rotate_before_expire: Period,
}

impl Default for Validity {
    fn default() -> Self {
        Validity {
            access: Period { value: 3, unit: Unit::Days },
            rotate_before_expire: Period { value: 6, unit: Unit::Hours },
        }
    }
}

/// `[modules.mod_fast_auth_token]`
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FastConfig {
    pub enabled: bool,
    /// Where tokens are kept; only `rdbms`.
    pub backend: String,
    pub validity_period: Validity,
    /// The `HT-*` mechanisms offered, in order; `-EXPR` ones are offered on
    /// TLS 1.3 connections only. All twelve by default.
    pub mechanisms: Vec<String>,
}

impl Default for FastConfig {
    fn default() -> Self {
        FastConfig {
            enabled: true,
            backend: "rdbms".into(),
            validity_period: Validity::default(),
            mechanisms: HtMechanism::ALL.iter().map(|m| m.name().to_owned()).collect(),
        }
    }
}

pub struct FastAuthToken {
    /// How long a token works once issued.
    validity: Duration,
}

impl ModuleSpec for FastAuthToken {
    const NAME: &'static str = "mod_fast_auth_token";
    type Config = FastConfig;
    fn enabled(cfg: &FastConfig) -> bool {
        cfg.enabled
    }
    fn validate(cfg: &FastConfig) -> Result<(), (&'static str, String)> {
        if cfg.backend != "rdbms" {
            return Err(("backend", format!("unknown backend {:?}; known: \"rdbms\"", cfg.backend)));
        }
        if cfg.validity_period.access.duration().is_zero() {
            return Err(("validity_period.access", "must be more than 0".into()));
        }
        if cfg.validity_period.rotate_before_expire.duration() > cfg.validity_period.access.duration() {
            return Err(("validity_period.rotate_before_expire", "must not exceed validity_period.access".into()));
        }
        if cfg.mechanisms.is_empty() {
            return Err(("mechanisms", "at least one mechanism is required".into()));
        }
        for m in &cfg.mechanisms {
            if HtMechanism::from_name(m).is_none() {
                let known: Vec<&str> = HtMechanism::ALL.iter().map(|m| m.name()).collect();
                return Err(("mechanisms", format!("unknown mechanism {m:?}; known: {}", known.join(", "))));
            }
        }
        Ok(())
    }
    fn tune(cfg: &FastConfig, core: &mut CoreTuning) {
        core.negotiation.fast = cfg.enabled.then(|| FastSettings {
            mechanisms: cfg.mechanisms.iter().filter_map(|m| HtMechanism::from_name(m)).collect(),
            validity: cfg.validity_period.access.duration(),
            rotate_before: cfg.validity_period.rotate_before_expire.duration(),
        });
    }
    fn build(cfg: &FastConfig) -> Arc<dyn Module> {
        Arc::new(FastAuthToken { validity: cfg.validity_period.access.duration() })
    }
}

#[async_trait::async_trait]
impl Module for FastAuthToken {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn hot_hooks(&self) -> HookSet {
        HookSet::NONE
    }

    async fn negotiation_action(&self, ctx: &ModuleCtx, host: &str, action: &NegAction) -> Option<NegEvent> {
        match action {
            NegAction::LookupFastTokens { username, user_agent } => {
                use meerkat_storage::FastTokenRepo as _;
                let tokens = match ctx.storage.fast_tokens(host, username, user_agent).await {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::error!(error = %e, "FAST token lookup failed");
                        Default::default()
                    }
                };
                Some(NegEvent::FastTokens { tokens, now: now_secs() })
            }
            NegAction::Fast { username, user_agent, op } => {
                let (ok, issued) = self.update(ctx, host, username, user_agent, op).await;
                Some(NegEvent::FastDone { ok, issued })
            }
            _ => None,
        }
    }
}

impl FastAuthToken {
    /// Carries out `op` on the agent's tokens: whether it held, and the token
    /// issued, if any.
    async fn update(
        &self,
        ctx: &ModuleCtx,
        host: &str,
        user: &str,
        agent: &str,
        op: &FastOp,
    ) -> (bool, Option<IssuedToken>) {
        use meerkat_storage::{FastToken, FastTokenRepo as _};
        let storage = &ctx.storage;
        let issue = match op {
            FastOp::Issue { mechanism } => Some(*mechanism),
            FastOp::Use { slot, token, count, invalidate, issue } => {
                match storage.use_fast_token(host, user, agent, *slot, token, *count).await {
                    Ok(true) => {}
                    Ok(false) => return (false, None),
                    Err(e) => {
                        tracing::error!(error = %e, "FAST token update failed");
                        return (false, None);
                    }
                }
                if *invalidate {
                    if let Err(e) = storage.remove_fast_tokens(host, user, agent).await {
                        tracing::error!(error = %e, "FAST token invalidation failed");
                    }
                }
                *issue
            }
        };
        let Some(mechanism) = issue else { return (true, None) };
        let token: String = rand::distr::SampleString::sample_string(&rand::distr::Alphanumeric, &mut rand::rng(), 43);
        let expires_at = now_secs().saturating_add(i64::try_from(self.validity.as_secs()).unwrap_or(i64::MAX));
        let stored = FastToken { token: token.clone(), expires_at, count: 0, mechanism: mechanism.name().to_owned() };
        if let Err(e) = storage.set_new_fast_token(host, user, agent, &stored).await {
            tracing::error!(error = %e, "FAST token not stored");
            return (true, None);
        }
        let expiry = chrono::DateTime::from_timestamp(expires_at, 0)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_default();
        (true, Some(IssuedToken { token, expiry }))
    }
}

/// The time now, in Unix seconds.
fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
