//! XEP-0199: XMPP Ping. The module answers pings to the server, and pings a
//! client that has been silent for `ping_interval` (the session tells it,
//! [`Module::client_silent`]); one that does not answer within
//! `ping_timeout` is disconnected with `<connection-timeout/>`. An answer is
//! a result, or an error from a client that does not do ping (§4.2).

use std::sync::Arc;
use std::time::Duration;

use meerkat_routing::Routed;
use meerkat_xmpp::element::Element;
use meerkat_xmpp::error::{StanzaErrorCondition, StreamError, StreamErrorCondition};
use meerkat_xmpp::jid::FullJid;
use meerkat_xmpp::ns;

use crate::ext::registry::ModuleSpec;
use crate::ext::{CoreTuning, HookSet, IqAnswer, Module, ModuleCtx, SessionAcc, SessionState, Stop, Target, Timer};

pub struct Ping {
    /// Ping silent clients (else only `[session] idle_timeout` ends them).
    send_pings: bool,
    timeout: Duration,
}

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
        if cfg.enabled && cfg.send_pings {
            core.silent_after = Some(Duration::from_secs(cfg.ping_interval));
        }
    }
    fn build(cfg: &PingConfig) -> Arc<dyn Module> {
        Arc::new(Ping { send_pings: cfg.send_pings, timeout: Duration::from_secs(cfg.ping_timeout.max(1)) })
    }
}

/// The ping a session's client has not answered yet.
#[derive(Default)]
struct Pending(Option<u64>);

fn ping_id(token: u64) -> String {
    format!("ping{token:016x}")
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

    fn client_silent(&self, _ctx: &ModuleCtx, jid: &FullJid, state: &mut SessionState, acc: &mut SessionAcc) {
        let pending = state.get_or_default::<Pending>();
        if !self.send_pings || pending.0.is_some() {
            return;
        }
        let token = rand::random::<u64>();
        pending.0 = Some(token);
        acc.write.push(
            Element::new("iq", ns::CLIENT)
                .with_attr("type", "get")
                .with_attr("id", ping_id(token))
                .with_attr("from", jid.domain().as_str())
                .with_attr("to", jid.as_str().to_owned())
                .with_child(Element::new("ping", ns::PING)),
        );
        acc.timers.push(Timer { after: self.timeout, owner: Self::NAME, token });
    }

    fn session_timer(
        &self,
        _ctx: &ModuleCtx,
        jid: &FullJid,
        state: &mut SessionState,
        token: u64,
        acc: &mut SessionAcc,
    ) {
        if state.get::<Pending>().is_some_and(|p| p.0 == Some(token)) {
            tracing::debug!(%jid, "no answer to a ping; closing the stream");
            acc.stop = Some(Stop {
                error: StreamError::with_text(StreamErrorCondition::ConnectionTimeout, "no answer to a ping"),
                reroute_queued: false,
            });
        }
    }

    fn client_iq_response(&self, state: &mut SessionState, iq: &Element) -> bool {
        let Some(pending) = state.get_mut::<Pending>() else { return false };
        match pending.0 {
            Some(token) if iq.attr("id") == Some(ping_id(token).as_str()) => {
                pending.0 = None;
                true
            }
            _ => false,
        }
    }

    fn session_resumed(&self, _ctx: &ModuleCtx, _jid: &FullJid, state: &mut SessionState) {
        // The new connection starts a silence of its own.
        if let Some(p) = state.get_mut::<Pending>() {
            p.0 = None;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn a_silent_client_is_pinged_once_and_dropped_unless_it_answers() {
        let ping: Arc<dyn Module> = Ping::build(&PingConfig { ping_timeout: 7, ..PingConfig::default() });
        let ctx = crate::ext::registry::lifecycle::ctx(vec![ping.clone()]).await;
        let jid = meerkat_xmpp::jid::parse_full("alice@example.org/a").unwrap();
        let mut state = SessionState::default();

        let mut acc = SessionAcc::default();
        ping.client_silent(&ctx, &jid, &mut state, &mut acc);
        let [iq] = &acc.write[..] else { panic!("one ping: {:?}", acc.write) };
        assert!(iq.has_child("ping", ns::PING));
        assert_eq!((iq.attr("from"), iq.attr("to")), (Some("example.org"), Some("alice@example.org/a")));
        let [timer] = acc.timers[..] else { panic!("one timer") };
        assert_eq!((timer.after, timer.owner), (Duration::from_secs(7), "mod_ping"));

        // Silent again before answering: no second ping.
        let mut again = SessionAcc::default();
        ping.client_silent(&ctx, &jid, &mut state, &mut again);
        assert!(again.write.is_empty() && again.timers.is_empty());

        // Another IQ response is not the answer; the ping's is, once.
        let other = Element::new("iq", ns::CLIENT).with_attr("type", "result").with_attr("id", "x");
        assert!(!ping.client_iq_response(&mut state, &other));
        let answer = Element::new("iq", ns::CLIENT).with_attr("type", "error").with_attr("id", iq.attr("id").unwrap());
        assert!(ping.client_iq_response(&mut state, &answer));
        assert!(!ping.client_iq_response(&mut state, &answer));
        let mut fired = SessionAcc::default();
        ping.session_timer(&ctx, &jid, &mut state, timer.token, &mut fired);
        assert!(fired.stop.is_none(), "an answered ping ends nothing");

        // Unanswered: the timer ends the stream.
        let mut acc = SessionAcc::default();
        ping.client_silent(&ctx, &jid, &mut state, &mut acc);
        let timer = acc.timers[0];
        let mut fired = SessionAcc::default();
        ping.session_timer(&ctx, &jid, &mut state, timer.token, &mut fired);
        let stop = fired.stop.expect("connection-timeout");
        assert_eq!(stop.error.condition, StreamErrorCondition::ConnectionTimeout);
    }

    #[test]
    fn pings_off_leave_clients_alone() {
        let mut core = CoreTuning::default();
        Ping::tune(&PingConfig { send_pings: false, ..PingConfig::default() }, &mut core);
        assert_eq!(core.silent_after, None);
        Ping::tune(&PingConfig { enabled: false, ..PingConfig::default() }, &mut core);
        assert_eq!(core.silent_after, None);
        Ping::tune(&PingConfig::default(), &mut core);
        assert_eq!(core.silent_after, Some(Duration::from_secs(300)));
    }
}
