//! XEP-0198: Stream Management, as configured and offered.
//!
//! The section `[modules.mod_stream_management]` configures the session's
//! acknowledgement engine ([`crate::sm`]): how many stanzas it keeps
//! unacknowledged, how often it asks for acknowledgements, and how long a
//! session whose connection was lost waits to be resumed. This module offers
//! `<sm xmlns='urn:xmpp:sm:3'/>` after authentication (XEP-0198 §2).

use std::sync::Arc;
use std::time::Duration;

use meerkat_xmpp::element::Element;
use meerkat_xmpp::ns;

use crate::ext::registry::{ModuleSpec, Registry};
use crate::ext::{CoreTuning, Module};
use crate::sm::SmSettings;

pub struct StreamManagement;

/// `[modules.mod_stream_management]`
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamManagementConfig {
    /// Offer stream management (acknowledgements) to clients after authentication.
    pub enabled: bool,
    /// Most stanzas kept for a client until it acknowledges them; past this the
    /// stream is closed with `<resource-constraint/>` (MongooseIM's default).
    pub buffer_max: usize,
    /// The server asks for an acknowledgement after this many stanzas; 0 never asks.
    pub ack_freq: u32,
    /// Seconds a session whose connection was lost (EOF or error, not a
    /// closing tag) waits for the client to resume it; 0 turns resumption off.
    pub resume_timeout: u64,
}

impl Default for StreamManagementConfig {
    fn default() -> Self {
        StreamManagementConfig { enabled: true, buffer_max: 100, ack_freq: 1, resume_timeout: 600 }
    }
}

impl ModuleSpec for StreamManagement {
    const NAME: &'static str = "mod_stream_management";
    type Config = StreamManagementConfig;
    fn enabled(cfg: &StreamManagementConfig) -> bool {
        cfg.enabled
    }
    fn validate(cfg: &StreamManagementConfig) -> Result<(), (&'static str, String)> {
        if cfg.buffer_max == 0 {
            return Err(("buffer_max", "must be at least 1".into()));
        }
        Ok(())
    }
    fn tune(cfg: &StreamManagementConfig, core: &mut CoreTuning) {
        core.sm = SmSettings {
            enabled: cfg.enabled,
            buffer_max: cfg.buffer_max,
            ack_freq: cfg.ack_freq,
            resume_timeout: Duration::from_secs(cfg.resume_timeout),
        };
    }
    fn build(_cfg: &StreamManagementConfig) -> Arc<dyn Module> {
        Arc::new(StreamManagement)
    }
}

#[async_trait::async_trait]
impl Module for StreamManagement {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn stream_features(&self, _hooks: &Registry, post_auth: bool) -> Vec<Element> {
        if post_auth {
            vec![Element::new("sm", ns::SM)]
        } else {
            Vec::new()
        }
    }
}
