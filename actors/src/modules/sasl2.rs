//! `mod_sasl2` and `mod_bind2` (MongooseIM's names, no options): XEP-0388
//! Extensible SASL Profile and XEP-0386 Bind 2, offered in the stream
//! features before authentication.
//!
//! The exchanges themselves run in the sans-IO negotiation
//! ([`crate::negotiation`]), which these sections switch on. What other
//! modules offer inline (carbons, CSI and stream management in `<bind/>`)
//! comes from their `bind2_inline` hooks, and they answer the inline
//! requests in `bind2_request`.

use std::sync::Arc;

use crate::ext::registry::ModuleSpec;
use crate::ext::{CoreTuning, HookSet, Module, Switch};

/// XEP-0388 SASL2.
pub struct Sasl2;

impl ModuleSpec for Sasl2 {
    const NAME: &'static str = "mod_sasl2";
    type Config = Switch;
    fn enabled(cfg: &Switch) -> bool {
        cfg.enabled
    }
    fn tune(cfg: &Switch, core: &mut CoreTuning) {
        core.negotiation.sasl2 = cfg.enabled;
    }
    fn build(_cfg: &Switch) -> Arc<dyn Module> {
        Arc::new(Sasl2)
    }
}

#[async_trait::async_trait]
impl Module for Sasl2 {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn hot_hooks(&self) -> HookSet {
        HookSet::NONE
    }
}

/// XEP-0386 Bind2, inside SASL2.
pub struct Bind2;

impl ModuleSpec for Bind2 {
    const NAME: &'static str = "mod_bind2";
    type Config = Switch;
    fn enabled(cfg: &Switch) -> bool {
        cfg.enabled
    }
    fn tune(cfg: &Switch, core: &mut CoreTuning) {
        core.negotiation.bind2 = cfg.enabled;
    }
    fn build(_cfg: &Switch) -> Arc<dyn Module> {
        Arc::new(Bind2)
    }
}

#[async_trait::async_trait]
impl Module for Bind2 {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn hot_hooks(&self) -> HookSet {
        HookSet::NONE
    }
}
