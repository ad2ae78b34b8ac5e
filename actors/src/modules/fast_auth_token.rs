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
//! ([`crate::negotiation`]); this section switches it on and sets its times.

use std::sync::Arc;
use std::time::Duration;

use meerkat_xmpp::sasl::fast::HtMechanism;

use crate::ext::registry::ModuleSpec;
use crate::ext::{CoreTuning, Module};
use crate::negotiation::FastSettings;

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

pub struct FastAuthToken;

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
    fn build(_cfg: &FastConfig) -> Arc<dyn Module> {
        Arc::new(FastAuthToken)
    }
}

#[async_trait::async_trait]
impl Module for FastAuthToken {
    fn name(&self) -> &'static str {
        Self::NAME
    }
}
