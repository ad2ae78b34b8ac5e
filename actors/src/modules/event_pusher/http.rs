//! The http backend: a POST of MongooseIM's form fields (`author`, `server`,
//! `receiver`, `message`) for each chat message a user sends, to each
//! handler's `path` on its `[outgoing_pools.http.<pool_name>]`.
//!
//! Requests leave the stanza's path at once: the hook only puts them in the
//! handler's bounded queue (`queue` of the pool). One task takes them out and
//! runs at most `workers` of them at a time, each with the pool's
//! `request_timeout`. When the queue is full, the event is dropped and
//! counted (`meerkat_event_pusher_dropped_total{backend="http"}`), never
//! waited for: a slow web service must not slow messaging down.

use crate::ext::pools::{Body, Request};

/// `[[modules.mod_event_pusher.http.handlers]]`
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpHandler {
    /// The `[outgoing_pools.http.<name>]` to post through.
    pub pool_name: String,
    /// Path after the pool's `path_prefix`.
    pub path: String,
    /// MongooseIM's callback; only its default, `mod_event_pusher_http_defaults`, exists here.
    pub callback_module: String,
}

impl Default for HttpHandler {
    fn default() -> Self {
        HttpHandler {
            pool_name: "http_pool".into(),
            path: String::new(),
            callback_module: "mod_event_pusher_http_defaults".into(),
        }
    }
}

/// `[modules.mod_event_pusher.http]`
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub handlers: Vec<HttpHandler>,
}

/// One chat message, as the default callback posts it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatEvent {
    pub author: String,
    pub server: String,
    pub receiver: String,
    pub message: String,
}

impl From<ChatEvent> for Request {
    fn from(e: ChatEvent) -> Request {
        Request {
            path: String::new(),
            body: Body::Form(vec![
                ("author", e.author),
                ("server", e.server),
                ("receiver", e.receiver),
                ("message", e.message),
            ]),
        }
    }
}
