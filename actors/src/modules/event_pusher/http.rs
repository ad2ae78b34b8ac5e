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

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};

use crate::ext::pools::HttpPool;
use crate::ext::Metric;

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

/// What a handler did, for `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    pub sent: AtomicU64,
    pub failed: AtomicU64,
    pub dropped: AtomicU64,
}

/// A running handler: its queue and its dispatcher task.
pub struct Sender {
    url: String,
    tx: mpsc::Sender<ChatEvent>,
    counters: Arc<Counters>,
    task: tokio::task::JoinHandle<()>,
}

impl Sender {
    /// Starts the handler on `pool`.
    pub fn start(handler: &HttpHandler, pool: &HttpPool) -> Sender {
        let mut url = pool.connection.host.trim_end_matches('/').to_owned();
        for part in [&pool.connection.path_prefix, &handler.path] {
            let part = part.trim_matches('/');
            if !part.is_empty() {
                url.push('/');
                url.push_str(part);
            }
        }
        let (tx, rx) = mpsc::channel(pool.queue);
        let counters = Arc::new(Counters::default());
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_millis(pool.connection.request_timeout)))
            .http_status_as_error(true)
            .build()
            .into();
        let task = tokio::spawn(dispatch(rx, agent, url.clone(), pool.workers, counters.clone()));
        Sender { url, tx, counters, task }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Queues an event; a full queue drops it, counted.
    pub fn push(&self, event: ChatEvent) {
        if self.tx.try_send(event).is_err() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn stop(&self) {
        self.task.abort();
    }

    pub fn metrics(&self, out: &mut Vec<Metric>) {
        for (name, c) in [
            ("meerkat_event_pusher_sent_total", &self.counters.sent),
            ("meerkat_event_pusher_failed_total", &self.counters.failed),
            ("meerkat_event_pusher_dropped_total", &self.counters.dropped),
        ] {
            out.push(Metric {
                name,
                labels: vec![("backend", "http".into()), ("url", self.url.clone())],
                value: c.load(Ordering::Relaxed) as f64,
                counter: true,
            });
        }
        out.push(Metric {
            name: "meerkat_event_pusher_queued",
            labels: vec![("backend", "http".into()), ("url", self.url.clone())],
            value: (self.tx.max_capacity() - self.tx.capacity()) as f64,
            counter: false,
        });
    }
}

/// Takes events out of the queue and posts them, `workers` at a time.
async fn dispatch(
    mut rx: mpsc::Receiver<ChatEvent>,
    agent: ureq::Agent,
    url: String,
    workers: usize,
    counters: Arc<Counters>,
) {
    let slots = Arc::new(Semaphore::new(workers));
    while let Some(event) = rx.recv().await {
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let (agent, url, counters) = (agent.clone(), url.clone(), counters.clone());
        // ureq blocks: each request runs on the blocking pool, at most `workers` at once.
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let form = [
                ("author", event.author.as_str()),
                ("server", event.server.as_str()),
                ("receiver", event.receiver.as_str()),
                ("message", event.message.as_str()),
            ];
            match agent.post(&url).send_form(form) {
                Ok(_) => counters.sent.fetch_add(1, Ordering::Relaxed),
                Err(e) => {
                    tracing::warn!(error = %e, %url, "event pusher: POST failed");
                    counters.failed.fetch_add(1, Ordering::Relaxed)
                }
            };
        });
    }
}
