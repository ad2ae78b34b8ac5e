//! `[modules.mod_push_service_mongoosepush]`: push notifications for the
//! event pusher's `virtual_pubsub_hosts` delivered to MongoosePush (which
//! sends them on to APNs and FCM) over its HTTP API v3, through an
//! `[outgoing_pools.http.<pool_name>]`, as MongooseIM's module of the same
//! name does: `POST /v3/notification/{device_id}` with the JSON MongoosePush
//! takes. The client's publish-options must give `device_id` and `service`
//! (`apns` or `fcm`); `mode`, `priority`, `topic`, `time_to_live`,
//! `mutable_content`, `click_action`, `sound` and `silent` are passed on.
//! A notification without `device_id` or `service` is dropped with a warning.

use std::sync::{Arc, OnceLock};

use crate::ext::pools::{self as http, Body, Request};
use crate::ext::registry::ModuleSpec;
use crate::ext::{HookSet, Metric, Module, ModuleCtx, PushNotification};

/// `[modules.mod_push_service_mongoosepush]`
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MongoosePushConfig {
    /// Deliver notifications to MongoosePush (off unless enabled).
    pub enabled: bool,
    /// The `[outgoing_pools.http.<name>]` of MongoosePush.
    pub pool_name: String,
    /// MongoosePush's API; `"v3"` is the one spoken here.
    pub api_version: String,
}

impl Default for MongoosePushConfig {
    fn default() -> Self {
        MongoosePushConfig { enabled: false, pool_name: "mongoose_push_http".into(), api_version: "v3".into() }
    }
}

/// The module.
pub struct MongoosePush {
    cfg: MongoosePushConfig,
    sender: OnceLock<http::Sender>,
}

impl ModuleSpec for MongoosePush {
    const NAME: &'static str = "mod_push_service_mongoosepush";
    const NODE_WIDE: bool = true;
    type Config = MongoosePushConfig;
    fn enabled(cfg: &MongoosePushConfig) -> bool {
        cfg.enabled
    }
    fn validate(cfg: &MongoosePushConfig) -> Result<(), (&'static str, String)> {
        if cfg.api_version != "v3" {
            return Err(("api_version", format!("\"{}\": only MongoosePush's API v3 is spoken", cfg.api_version)));
        }
        Ok(())
    }
    fn build(cfg: &MongoosePushConfig) -> Arc<dyn Module> {
        Arc::new(MongoosePush { cfg: cfg.clone(), sender: OnceLock::new() })
    }
}

/// A path segment with everything but RFC 3986's unreserved characters escaped.
fn path_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => char::from(b).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The request for one notification; `None` without `device_id` and `service`.
fn request(n: &PushNotification) -> Option<Request> {
    let opt = |k: &str| n.options.iter().find(|(var, _)| var == k).map(|(_, v)| v.as_str());
    let device = opt("device_id").filter(|d| !d.is_empty())?;
    let service = opt("service").filter(|s| matches!(*s, "apns" | "fcm"))?;
    let mut body = serde_json::json!({
        "service": service,
        "mode": opt("mode").unwrap_or("prod"),
        "priority": opt("priority").unwrap_or("normal"),
        "mutable_content": opt("mutable_content") == Some("true"),
    });
    if opt("silent") == Some("true") {
        body["data"] = serde_json::json!({
            "message-count": n.message_count,
            "last-message-sender": n.last_message_sender,
            "last-message-body": n.last_message_body,
        });
    } else {
        body["alert"] = serde_json::json!({
            "body": n.last_message_body,
            "title": n.last_message_sender,
            "tag": n.last_message_sender,
            "badge": n.message_count,
        });
        for k in ["click_action", "sound"] {
            if let Some(v) = opt(k) {
                body["alert"][k] = v.into();
            }
        }
    }
    if let Some(t) = opt("topic") {
        body["topic"] = t.into();
    }
    if let Some(ttl) = opt("time_to_live").and_then(|t| t.parse::<u64>().ok()) {
        body["time_to_live"] = ttl.into();
    }
    Some(Request { path: path_segment(device), body: Body::Json(body.to_string()) })
}

#[async_trait::async_trait]
impl Module for MongoosePush {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn hot_hooks(&self) -> HookSet {
        HookSet::NONE
    }

    async fn start(&self, ctx: &ModuleCtx) -> Result<(), String> {
        let Some(pool) = ctx.pools.http.get(&self.cfg.pool_name) else {
            return Err(format!(
                "modules.mod_push_service_mongoosepush.pool_name: no [outgoing_pools.http.{}]",
                self.cfg.pool_name
            ));
        };
        let _ = self.sender.set(http::Sender::start(http::url(pool, "/v3/notification"), pool, "mongoosepush"));
        Ok(())
    }

    async fn stop(&self, _ctx: &ModuleCtx) {
        if let Some(s) = self.sender.get() {
            s.stop();
        }
    }

    fn metrics(&self) -> Vec<Metric> {
        let mut out = Vec::new();
        if let Some(s) = self.sender.get() {
            s.metrics(&mut out);
        }
        out
    }

    async fn push_notification(&self, _ctx: &ModuleCtx, n: &PushNotification) -> bool {
        let Some(sender) = self.sender.get() else { return false };
        match request(n) {
            Some(r) => sender.push(r),
            None => tracing::warn!(
                owner = %n.owner,
                "a MongoosePush notification needs device_id and service (apns or fcm) in the publish-options; dropped"
            ),
        }
        true
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn notification(options: &[(&str, &str)]) -> PushNotification {
        PushNotification {
            owner: meerkat_xmpp::jid::parse_bare("alice@example.org").unwrap(),
            pubsub_jid: "virtual.example.org".into(),
            node: "n1".into(),
            message_count: 4,
            last_message_sender: "bob@example.org/x".into(),
            last_message_body: "hi".into(),
            options: options.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        }
    }

    #[test]
    fn builds_mongoosepush_v3_requests() {
        let r = request(&notification(&[("device_id", "dev/1"), ("service", "fcm"), ("sound", "ding")])).unwrap();
        assert_eq!(r.path, "dev%2F1");
        let Body::Json(json) = r.body else { panic!() };
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"service": "fcm", "mode": "prod", "priority": "normal", "mutable_content": false,
                "alert": {"body": "hi", "title": "bob@example.org/x", "tag": "bob@example.org/x", "badge": 4, "sound": "ding"}})
        );
        let r = request(&notification(&[("device_id", "d"), ("service", "apns"), ("silent", "true")])).unwrap();
        let Body::Json(json) = r.body else { panic!() };
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["data"]["message-count"], 4);
        assert!(v.get("alert").is_none());
        assert_eq!(request(&notification(&[("service", "fcm")])), None);
        assert_eq!(request(&notification(&[("device_id", "d"), ("service", "pigeon")])), None);
    }
}
