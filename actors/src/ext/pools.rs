//! `[outgoing_pools.http.<name>]` and `[outgoing_pools.rabbit.<name>]`:
//! connections to the outside world that modules use by pool name (as
//! MongooseIM's event pusher names its pools). The node reads them with the
//! rest of `[outgoing_pools]` and hands them to the modules in
//! [`super::ModuleCtx::pools`]; a module that names a pool that is not
//! configured refuses to start, naming it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};

use super::Metric;

/// The pools modules may use.
#[derive(Clone, Debug, Default)]
pub struct ModulePools {
    pub http: BTreeMap<String, HttpPool>,
    pub rabbit: BTreeMap<String, RabbitPool>,
}

/// `[outgoing_pools.http.<name>]`
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpPool {
    /// Requests in flight at once.
    pub workers: usize,
    /// Requests waiting for a worker; more are counted as dropped.
    pub queue: usize,
    pub connection: HttpConnection,
}

impl Default for HttpPool {
    fn default() -> Self {
        HttpPool { workers: 10, queue: 1000, connection: HttpConnection::default() }
    }
}

/// `[outgoing_pools.http.<name>.connection]`
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConnection {
    /// `http://host:port` or `https://host:port`.
    pub host: String,
    /// Prefix of every request path.
    pub path_prefix: String,
    /// Milliseconds a request may take, connecting included.
    pub request_timeout: u64,
}

impl Default for HttpConnection {
    fn default() -> Self {
        HttpConnection { host: String::new(), path_prefix: "/".into(), request_timeout: 2000 }
    }
}

/// `[outgoing_pools.rabbit.<name>]`
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RabbitPool {
    /// Events waiting to be published (also while RabbitMQ is down); more
    /// are counted as dropped.
    pub queue: usize,
    pub connection: RabbitConnection,
}

impl Default for RabbitPool {
    fn default() -> Self {
        RabbitPool { queue: 10_000, connection: RabbitConnection::default() }
    }
}

/// `[outgoing_pools.rabbit.<name>.connection]`
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RabbitConnection {
    pub host: String,
    pub port: u16,
    pub username: String,
    pub password: String,
    pub virtual_host: String,
    /// AMQPS (TLS) instead of plain AMQP.
    pub tls: bool,
    /// Wait for RabbitMQ's publisher confirm of each event.
    pub confirms_enabled: bool,
}

impl Default for RabbitConnection {
    fn default() -> Self {
        RabbitConnection {
            host: "localhost".into(),
            port: 5672,
            username: "guest".into(),
            password: "guest".into(),
            virtual_host: "/".into(),
            tls: false,
            confirms_enabled: true,
        }
    }
}

impl HttpPool {
    /// Checks the section; the error names the key (relative to the pool) and why.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let h = &self.connection.host;
        if !(h.starts_with("http://") || h.starts_with("https://")) || h.len() <= "https://".len() {
            return Err(("connection.host", format!("\"{h}\" is not an http:// or https:// URL")));
        }
        if self.workers == 0 || self.queue == 0 {
            return Err(("workers", "workers and queue must be at least 1".into()));
        }
        if self.connection.request_timeout == 0 {
            return Err(("connection.request_timeout", "must be at least 1 ms".into()));
        }
        Ok(())
    }
}

impl RabbitPool {
    /// Checks the section; the error names the key (relative to the pool) and why.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.connection.host.is_empty() {
            return Err(("connection.host", "must not be empty".into()));
        }
        if self.queue == 0 {
            return Err(("queue", "must be at least 1".into()));
        }
        Ok(())
    }
}

// ------------------------------------------------------------ HTTP requests

/// What a request sender did, for `/metrics`.
#[derive(Debug, Default)]
struct Counters {
    sent: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
}

/// What a request carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// `application/x-www-form-urlencoded`.
    Form(Vec<(&'static str, String)>),
    /// `application/json`.
    Json(String),
}

/// One POST: a path after the sender's URL ('' for none) and its body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub path: String,
    pub body: Body,
}

/// `host` + `path_prefix` of a pool, then `path`, with single slashes between.
pub fn url(pool: &HttpPool, path: &str) -> String {
    let mut url = pool.connection.host.trim_end_matches('/').to_owned();
    for part in [pool.connection.path_prefix.as_str(), path] {
        let part = part.trim_matches('/');
        if !part.is_empty() {
            url.push('/');
            url.push_str(part);
        }
    }
    url
}

/// POSTs to one URL of an HTTP pool, off the caller's path: a bounded
/// queue (the pool's `queue`; a full one drops the request, counted) and one
/// task that runs at most `workers` requests at a time, each with the pool's
/// `request_timeout`.
pub struct Sender {
    url: String,
    backend: &'static str,
    tx: mpsc::Sender<Request>,
    counters: Arc<Counters>,
    task: tokio::task::JoinHandle<()>,
}

impl Sender {
    /// Starts a sender to `url` on `pool`; `backend` labels its figures.
    pub fn start(url: String, pool: &HttpPool, backend: &'static str) -> Sender {
        let (tx, rx) = mpsc::channel(pool.queue);
        let counters = Arc::new(Counters::default());
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_millis(pool.connection.request_timeout)))
            .http_status_as_error(true)
            .build()
            .into();
        let task = tokio::spawn(dispatch(rx, agent, url.clone(), pool.workers, counters.clone()));
        Sender { url, backend, tx, counters, task }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Queues a request; a full queue drops it, counted.
    pub fn push(&self, request: Request) {
        if self.tx.try_send(request).is_err() {
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
                labels: vec![("backend", self.backend.into()), ("url", self.url.clone())],
                value: c.load(Ordering::Relaxed) as f64,
                counter: true,
            });
        }
        out.push(Metric {
            name: "meerkat_event_pusher_queued",
            labels: vec![("backend", self.backend.into()), ("url", self.url.clone())],
            value: (self.tx.max_capacity() - self.tx.capacity()) as f64,
            counter: false,
        });
    }
}

/// Takes requests out of the queue and posts them, `workers` at a time.
async fn dispatch(
    mut rx: mpsc::Receiver<Request>,
    agent: ureq::Agent,
    url: String,
    workers: usize,
    counters: Arc<Counters>,
) {
    let slots = Arc::new(Semaphore::new(workers));
    while let Some(request) = rx.recv().await {
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let (agent, counters) = (agent.clone(), counters.clone());
        let url = if request.path.is_empty() { url.clone() } else { format!("{url}/{}", request.path) };
        // ureq blocks: each request runs on the blocking pool, at most `workers` at once.
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let sent = match &request.body {
                Body::Form(fields) => agent.post(&url).send_form(fields.iter().map(|(k, v)| (*k, v.as_str()))),
                Body::Json(json) => agent.post(&url).content_type("application/json").send(json.as_bytes()),
            };
            match sent {
                Ok(_) => counters.sent.fetch_add(1, Ordering::Relaxed),
                Err(e) => {
                    tracing::warn!(error = %e, %url, "event pusher: POST failed");
                    counters.failed.fetch_add(1, Ordering::Relaxed)
                }
            };
        });
    }
}
