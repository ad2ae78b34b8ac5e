//! `[outgoing_pools.http.<name>]` and `[outgoing_pools.rabbit.<name>]`:
//! connections to the outside world that modules use by pool name (as
//! MongooseIM's event pusher names its pools). The node reads them with the
//! rest of `[outgoing_pools]` and hands them to the modules in
//! [`super::ModuleCtx::pools`]; a module that names a pool that is not
//! configured refuses to start, naming it.

use std::collections::BTreeMap;

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
