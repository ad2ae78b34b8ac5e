//! XEP-0198: Stream Management (`urn:xmpp:sm:3`).
//!
//! After bind the client sends `<enable/>`; from then on both sides count the
//! stanzas they handled. The module keeps every stanza its session wrote (in
//! the session's [`SmState`] slot) until the client acknowledges it, in a
//! bounded buffer: a client that lets more than `buffer_max` stanzas go
//! unacknowledged is disconnected with `<resource-constraint/>` rather than
//! losing data. Whatever was never acknowledged goes back to the account
//! (other resources or offline storage) when the session ends
//! ([`Module::unacknowledged`]).
//!
//! With `resume='true'` (and a non-zero `resume_timeout`), a session whose
//! connection is lost (EOF or error, not a closing tag) stays bound and keeps
//! buffering ([`Module::connection_lost`]); a new connection of the same
//! account sends `<resume/>` after SASL, and the session answers `<resumed/>`
//! and re-sends what was not acknowledged ([`Module::session_resume`]).
//! Resumption works on the node that holds the session only.
//!
//! The section `[modules.mod_stream_management]` configures it; the feature
//! `<sm xmlns='urn:xmpp:sm:3'/>` is offered after authentication (§2).

use std::sync::Arc;
use std::time::Duration;

use meerkat_xmpp::element::Element;
use meerkat_xmpp::error::{StreamError, StreamErrorCondition};
use meerkat_xmpp::jid::FullJid;
use meerkat_xmpp::ns;
use meerkat_xmpp::sm::{self, Sent, SmState};
use meerkat_xmpp::stanza::StanzaKind;

use crate::ext::registry::{ModuleSpec, Registry};
use crate::ext::{CoreTuning, HookSet, Module, ModuleCtx, SessionAcc, SessionState, Stop};

pub struct StreamManagement {
    cfg: StreamManagementConfig,
}

/// `[modules.mod_stream_management]`
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamManagementConfig {
    /// Offer stream management (acknowledgements) to clients after authentication.
    pub enabled: bool,
    /// Most stanzas kept for a client until it acknowledges them; past this the
    /// stream is closed with `<resource-constraint/>` (MongooseIM's default).
    pub buffer_max: usize,
    /// Most bytes those stanzas may hold in memory; past this the stream is
    /// closed the same way. A client that does not acknowledge large stanzas
    /// cannot make the node keep `buffer_max` of them (up to 6.4 MiB at the
    /// default `max_stanza_size`).
    pub buffer_max_bytes: usize,
    /// The server asks for an acknowledgement after this many stanzas; 0 never asks.
    pub ack_freq: u32,
    /// Seconds a session whose connection was lost (EOF or error, not a
    /// closing tag) waits for the client to resume it; 0 turns resumption off.
    pub resume_timeout: u64,
}

impl Default for StreamManagementConfig {
    fn default() -> Self {
        StreamManagementConfig {
            enabled: true,
            buffer_max: 100,
            buffer_max_bytes: 1024 * 1024,
            ack_freq: 1,
            resume_timeout: 600,
        }
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
        if cfg.buffer_max_bytes < 65536 {
            return Err((
                "buffer_max_bytes",
                "must be at least 65536 (one stanza of the default max_stanza_size)".into(),
            ));
        }
        Ok(())
    }
    /// Resumption inside SASL2 (`<resume/>` in `<authenticate/>`) when sessions are resumable.
    fn tune(cfg: &StreamManagementConfig, core: &mut CoreTuning) {
        core.negotiation.sasl2_resume = cfg.enabled && cfg.resume_timeout > 0;
    }
    fn build(cfg: &StreamManagementConfig) -> Arc<dyn Module> {
        Arc::new(StreamManagement { cfg: cfg.clone() })
    }
}

impl StreamManagement {
    fn resume_timeout(&self) -> Duration {
        Duration::from_secs(self.cfg.resume_timeout)
    }
}

#[async_trait::async_trait]
impl Module for StreamManagement {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn hot_hooks(&self) -> HookSet {
        HookSet::CLIENT_STANZA.with(HookSet::CLIENT_WROTE)
    }

    fn stream_features(&self, _hooks: &Registry, post_auth: bool) -> Vec<Element> {
        if post_auth {
            vec![sm::feature()]
        } else {
            Vec::new()
        }
    }

    fn bind2_inline(&self) -> Vec<Element> {
        vec![Element::new("feature", ns::BIND2).with_attr("var", ns::SM)]
    }

    /// `<sm/>` in SASL2's `<inline/>`: a client may resume in its `<authenticate/>`.
    fn sasl2_inline(&self) -> Vec<Element> {
        if self.resume_timeout().is_zero() {
            Vec::new()
        } else {
            vec![Element::new("sm", ns::SM)]
        }
    }

    /// XEP-0386: `<enable/>` inside `<bind/>`; `<enabled/>` goes inside `<bound/>`.
    fn bind2_request(
        &self,
        ctx: &ModuleCtx,
        jid: &FullJid,
        state: &mut SessionState,
        request: &Element,
        acc: &mut SessionAcc,
    ) -> bool {
        request.is("enable", ns::SM) && self.session_element(ctx, jid, state, request, acc)
    }

    fn session_element(
        &self,
        _ctx: &ModuleCtx,
        _jid: &FullJid,
        state: &mut SessionState,
        el: &Element,
        acc: &mut SessionAcc,
    ) -> bool {
        if el.ns != ns::SM {
            return false;
        }
        match (el.name.as_str(), state.get_mut::<SmState>()) {
            ("enable", None) => {
                let mut sm_state = SmState::new(self.cfg.buffer_max, self.cfg.buffer_max_bytes, self.cfg.ack_freq);
                let wants_resume = matches!(el.attr("resume"), Some("true") | Some("1"));
                let timeout = self.resume_timeout();
                let reply = if wants_resume && !timeout.is_zero() {
                    let id = format!("{:032x}", rand::random::<u128>());
                    acc.resumable = Some(id.clone());
                    let reply = sm::enabled(Some((&id, timeout)));
                    sm_state.resume_id = Some(id);
                    reply
                } else {
                    sm::enabled(None)
                };
                state.insert(sm_state);
                acc.write.push(reply);
            }
            ("r", Some(sm_state)) => acc.write.push(sm::answer(sm_state.handled_in)),
            ("a", Some(sm_state)) => {
                let acked = sm::h_of(el).map(|h| sm_state.acked(h).is_ok());
                if acked != Some(true) {
                    acc.stop = Some(Stop {
                        error: StreamError::with_text(
                            StreamErrorCondition::UndefinedCondition,
                            "acknowledged more stanzas than were sent",
                        ),
                        reroute_queued: false,
                    });
                }
            }
            // An answer to nothing; harmless.
            ("a", None) => {}
            // `<enable/>` twice, `<r/>` before `<enable/>`, `<resume/>` after bind.
            _ => acc.write.push(sm::failed("unexpected-request")),
        }
        true
    }

    fn client_stanza(&self, state: &mut SessionState) {
        if let Some(sm_state) = state.get_mut::<SmState>() {
            sm_state.handled();
        }
    }

    fn client_wrote(&self, state: &mut SessionState, stanza: Element, acc: &mut SessionAcc) -> Option<Element> {
        let Some(sm_state) = state.get_mut::<SmState>() else { return Some(stanza) };
        if StanzaKind::of(&stanza).is_none() {
            return Some(stanza);
        }
        match sm_state.sent(stanza) {
            Sent::Kept => {}
            Sent::Request => acc.write.push(sm::request()),
            Sent::Overflow => {
                // Closing loses nothing: what the client did not acknowledge
                // goes back to the account, and so does what is still on its way.
                tracing::debug!("too many unacknowledged stanzas; closing the stream");
                acc.stop = Some(Stop {
                    error: StreamError::with_text(
                        StreamErrorCondition::ResourceConstraint,
                        "too many unacknowledged stanzas (buffer_max or buffer_max_bytes)",
                    ),
                    reroute_queued: true,
                });
            }
        }
        None
    }

    fn connection_lost(&self, state: &SessionState) -> Option<Duration> {
        state.get::<SmState>().and_then(|s| s.resume_id.as_ref()).map(|_| self.resume_timeout())
    }

    fn session_resume(
        &self,
        _ctx: &ModuleCtx,
        state: &mut SessionState,
        previd: &str,
        h: u32,
        acc: &mut SessionAcc,
    ) -> Option<bool> {
        let sm_state = state.get_mut::<SmState>()?;
        if sm_state.resume_id.as_deref() != Some(previd) || sm_state.acked(h).is_err() {
            return Some(false);
        }
        sm_state.restart_requests();
        acc.write.push(sm::resumed(previd, sm_state.handled_in));
        // Sent again, still unacknowledged (they stay in the buffer).
        acc.write.extend(sm_state.unacked().cloned());
        Some(true)
    }

    fn unacknowledged(&self, state: &mut SessionState) -> Vec<Element> {
        state.remove::<SmState>().map(|mut s| s.take_unacked().into()).unwrap_or_default()
    }
}
