//! The TOML configuration, in MongooseIM's shape.
//!
//! Every section is a struct with serde defaults and `deny_unknown_fields`,
//! so a typo is an error at start, not a silently ignored option. Loading is
//! two steps: [`Config::parse`] (syntax and types, with the key and line of a
//! mistake) and [`Config::validate`] (meaning: hosts, ports, files).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs as _};
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// A configuration problem, naming the file, the key and the reason.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {key}: {reason}")]
pub struct ConfigError {
    pub file: String,
    pub key: String,
    pub reason: String,
}

/// The whole file.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub general: General,
    pub listen: Listen,
    pub auth: Auth,
    pub outgoing_pools: OutgoingPools,
    pub admin: Admin,
    pub log: Log,
    pub session: Session,
    /// `[modules.mod_*]`: each module owns its section (`meerkat_actors::modules`).
    pub modules: meerkat_actors::modules::ModulesConfig,
    /// `[[host_config]]`: module sections that differ on one host.
    pub host_config: Vec<HostConfig>,
    /// `[shaper.NAME] max_rate`: traffic shapers that listeners name with `shaper = "NAME"`.
    pub shaper: BTreeMap<String, Shaper>,
    /// Present when this node is (or can become) a member of a cluster.
    pub cluster: Option<Cluster>,
    /// Present when this data center serves a domain together with others.
    pub global_distribution: Option<GlobalDistribution>,
    /// `[instrumentation]`: what the node measures for `/metrics`.
    pub instrumentation: Instrumentation,
    /// `[s2s]`: federation's policies, dialback secret and outgoing streams.
    pub s2s: meerkat_actors::node_services::s2s::S2sOptions,
}

/// `[[host_config]]`: what differs on one host of `general.hosts`
/// (MongooseIM's name). Each `[host_config.modules.mod_*]` section replaces
/// `[modules.mod_*]` on that host; the modules it does not name run there as
/// `[modules]` says. Modules that run once per node (Inbox, PubSub, the event
/// pusher) have no per-host section.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// The host, one of `general.hosts`.
    pub host: String,
    #[serde(default)]
    pub modules: meerkat_actors::modules::HostModulesConfig,
}

/// `[instrumentation]`
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Instrumentation {
    /// `[instrumentation.prometheus]`: the traffic, session, database and
    /// cluster events of README's "Metrics", exported at the admin
    /// listener's `/metrics`.
    pub prometheus: Prometheus,
}

/// `[instrumentation.prometheus]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Prometheus {
    /// Counts events (on by default). Off, `/metrics` still has the node's
    /// own counters (router, cluster, global distribution, modules), and no
    /// element, byte, login or database event is counted.
    pub enabled: bool,
}

impl Default for Prometheus {
    fn default() -> Self {
        Prometheus { enabled: true }
    }
}

/// `[general]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct General {
    /// XMPP domains this node serves.
    pub hosts: Vec<String>,
    /// Where the node keeps its SQLite database, generated certificates and admin token.
    pub data_dir: PathBuf,
    /// Seconds SIGTERM waits for sessions to close and queued work to finish.
    pub shutdown_grace_period: u64,
}

impl Default for General {
    fn default() -> Self {
        General {
            hosts: vec!["localhost".into()],
            data_dir: PathBuf::from("./meerkat-data"),
            shutdown_grace_period: 10,
        }
    }
}

/// `[listen]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Listen {
    pub c2s: Vec<C2sListen>,
    /// HTTP listeners; none by default.
    pub http: Vec<HttpListen>,
    /// XEP-0114 component listeners; none by default.
    pub component: Vec<meerkat_actors::node_services::component::ComponentListen>,
    /// Server-to-server listeners; none by default (no federation).
    pub s2s: Vec<meerkat_actors::node_services::s2s::S2sListen>,
}

impl Default for Listen {
    fn default() -> Self {
        Listen { c2s: vec![C2sListen::default()], http: Vec::new(), component: Vec::new(), s2s: Vec::new() }
    }
}

/// `[[listen.http]]`: an HTTP(S) listener and the handlers it serves.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpListen {
    pub port: u16,
    #[serde(alias = "ip")]
    pub ip_address: IpAddr,
    /// `[listen.http.tls]`: serve HTTPS (`wss://`). Without this table the
    /// listener speaks plain HTTP, e.g. behind a TLS-terminating proxy.
    pub tls: Option<HttpTls>,
    pub handlers: HttpHandlers,
    /// XMPP sessions (WebSocket connections and BOSH sessions) open at once
    /// on this listener; one more gets HTTP 503. `"infinity"` (default) or a number.
    pub max_connections: Limit,
    /// The same per source address (IPv6: per /64 network).
    pub max_connections_per_ip: Limit,
    /// A `[shaper.NAME]` pacing what each WebSocket and BOSH session sends; `"none"` (default) for none.
    pub shaper: String,
}

impl Default for HttpListen {
    fn default() -> Self {
        HttpListen {
            port: 5280,
            ip_address: IpAddr::from([0, 0, 0, 0]),
            tls: None,
            handlers: HttpHandlers::default(),
            max_connections: Limit::default(),
            max_connections_per_ip: Limit::default(),
            shaper: "none".into(),
        }
    }
}

/// `[listen.http.tls]`
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct HttpTls {
    /// PEM certificate chain. Without one, the self-signed certificate of the
    /// c2s listeners is used (generated in the data directory).
    pub certfile: Option<PathBuf>,
    /// PEM private key for `certfile`.
    pub keyfile: Option<PathBuf>,
    /// Client certificates, for SASL EXTERNAL over `wss://` and HTTPS BOSH:
    /// `peer` (the default: asked for when `cacertfile` is set, and must chain
    /// to it), `selfsigned_peer` (self-signed ones too) or `none`.
    pub verify_mode: meerkat_actors::client_cert::VerifyMode,
    /// PEM CA certificate(s) client certificates must chain to.
    pub cacertfile: Option<PathBuf>,
}

/// `[listen.http.handlers]`: what the listener serves, by MongooseIM module name.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct HttpHandlers {
    /// `[[listen.http.handlers.mod_websockets]]`: XMPP over WebSocket (RFC 7395).
    #[serde(alias = "mongoose_websocket_handler")]
    pub mod_websockets: Vec<WebSocketHandler>,
    /// `[[listen.http.handlers.mod_bosh]]`: XMPP over BOSH (XEP-0124/0206).
    pub mod_bosh: Vec<BoshHandler>,
}

/// `[[listen.http.handlers.mod_bosh]]`: one BOSH endpoint (XEP-0124, XEP-0206).
/// Sessions behave as on a c2s listener; the BOSH timers are MongooseIM's
/// `mod_bosh` options.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BoshHandler {
    /// The HTTP `Host` this endpoint answers for; `_` is any.
    pub host: String,
    /// URL path of the endpoint.
    pub path: String,
    /// Largest request body in bytes (all of its stanzas); a bigger one is
    /// refused with HTTP 413, and a bigger stanza closes the stream with
    /// `policy-violation`.
    pub max_stanza_size: usize,
    /// Deepest element nesting inside a stanza.
    pub max_depth: usize,
    /// Seconds without any request before a session ends (`inactivity`).
    pub inactivity: u64,
    /// Longest a request is held, in seconds (`wait`; a client asking more gets this).
    pub max_wait: u64,
    /// Requests held at once (`hold`; a client asking more gets this).
    pub max_hold: u32,
    /// Longest pause a client may ask for, in seconds (`maxpause`).
    pub max_pause: u64,
}

impl BoshHandler {
    pub fn limits(&self) -> meerkat_xmpp::parser::Limits {
        meerkat_xmpp::parser::Limits { max_stanza_size: self.max_stanza_size, max_depth: self.max_depth }
    }
}

impl Default for BoshHandler {
    fn default() -> Self {
        BoshHandler {
            host: "_".into(),
            path: "/http-bind".into(),
            max_stanza_size: 65536,
            max_depth: 64,
            inactivity: 30,
            max_wait: 60,
            max_hold: 1,
            max_pause: 120,
        }
    }
}

/// `[[listen.http.handlers.mod_websockets]]`: one XMPP-over-WebSocket endpoint
/// (subprotocol `xmpp`). Sessions behave as on a c2s listener: same SASL
/// mechanisms, timeouts and limits; no STARTTLS (TLS is the `wss` layer).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSocketHandler {
    /// The HTTP `Host` this endpoint answers for; `_` is any.
    pub host: String,
    /// URL path of the endpoint.
    pub path: String,
    /// Largest message (one stanza) in bytes; a bigger one closes the stream
    /// with `policy-violation`. Same meaning and default as on `[[listen.c2s]]`.
    pub max_stanza_size: usize,
    /// Deepest element nesting inside a stanza.
    pub max_depth: usize,
}

impl Default for WebSocketHandler {
    fn default() -> Self {
        WebSocketHandler { host: "_".into(), path: "/ws-xmpp".into(), max_stanza_size: 65536, max_depth: 64 }
    }
}

/// `[[listen.c2s]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct C2sListen {
    pub port: u16,
    pub ip_address: IpAddr,
    /// Largest stanza in bytes; a bigger one closes the stream with `policy-violation`.
    pub max_stanza_size: usize,
    /// Deepest element nesting inside a stanza.
    pub max_depth: usize,
    /// Access rule deciding who may log in here: `all` or `none`.
    pub access: String,
    /// TLS on this listener; STARTTLS required by default.
    pub tls: ListenTls,
    /// Connections open at once on this listener; one more gets the stream
    /// error `<policy-violation/>` and is closed. `"infinity"` (default) or a number.
    pub max_connections: Limit,
    /// The same per source address (IPv6: per /64 network).
    pub max_connections_per_ip: Limit,
    /// A `[shaper.NAME]` pacing what each connection sends; `"none"` (default) for none.
    pub shaper: String,
}

impl Default for C2sListen {
    fn default() -> Self {
        C2sListen {
            port: 5222,
            ip_address: IpAddr::from([0, 0, 0, 0]),
            max_stanza_size: 65536,
            max_depth: 64,
            access: "all".into(),
            tls: ListenTls::default(),
            max_connections: Limit::default(),
            max_connections_per_ip: Limit::default(),
            shaper: "none".into(),
        }
    }
}

/// A count limit: a number, or `"infinity"` for none (MongooseIM's spelling).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limit(pub Option<usize>);

impl<'de> Deserialize<'de> for Limit {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Limit;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a positive number or \"infinity\"")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Limit, E> {
                match usize::try_from(v) {
                    Ok(n) if n > 0 => Ok(Limit(Some(n))),
                    _ => Err(E::custom(format!("{v} is not a positive number; use \"infinity\" for no limit"))),
                }
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Limit, E> {
                self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Limit, E> {
                if v == "infinity" {
                    Ok(Limit(None))
                } else {
                    Err(E::custom(format!("{v:?} is neither a number nor \"infinity\"")))
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// `[shaper.NAME]`: a byte rate for the listeners that name it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shaper {
    /// Bytes per second read from each connection; over it, reading pauses
    /// (TCP back-pressure reaches the client) and nothing is disconnected.
    pub max_rate: u64,
}

/// `tls.*` of a listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenTls {
    /// `none`, `starttls`, `starttls_required` (the default) or `tls` (direct
    /// TLS, XEP-0368). With `starttls`, a man in the middle can strip the
    /// STARTTLS offer and the client authenticates in the clear; the default
    /// offers nothing but STARTTLS before TLS (RFC 6120 §5.3.1).
    pub mode: meerkat_actors::negotiation::TlsMode,
    /// PEM certificate chain. Without one, a self-signed certificate is generated in the data directory.
    pub certfile: Option<PathBuf>,
    /// PEM private key for `certfile`.
    pub keyfile: Option<PathBuf>,
    /// Client certificates, for SASL EXTERNAL: `peer` (the default: asked for
    /// when `cacertfile` is set, and must chain to it), `selfsigned_peer`
    /// (self-signed ones too) or `none`. A certificate is never required, and
    /// one that does not verify does not end the TLS handshake: it just
    /// cannot be used to log in.
    pub verify_mode: meerkat_actors::client_cert::VerifyMode,
    /// PEM CA certificate(s) client certificates must chain to.
    pub cacertfile: Option<PathBuf>,
    /// Accept TLS 1.3 early data (0-RTT) on resumed sessions: a client can
    /// send a FAST authentication with its first flight (direct TLS only).
    /// Only such an authentication carrying a `<fast count/>` is taken from
    /// early data, and its count must exceed the last one seen with the
    /// token, so a replayed flight is refused.
    pub early_data: bool,
}

impl Default for ListenTls {
    fn default() -> Self {
        ListenTls {
            mode: meerkat_actors::negotiation::TlsMode::StarttlsRequired,
            certfile: None,
            keyfile: None,
            verify_mode: Default::default(),
            cacertfile: None,
            early_data: false,
        }
    }
}

/// `[auth]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    /// How users prove who they are, MongooseIM's names: `rdbms` (passwords
    /// kept in the database: PLAIN and SCRAM) and `pki` (client certificates:
    /// SASL EXTERNAL, which also needs `"external"` in `sasl_mechanisms`).
    /// Accounts live in the database either way: a certificate logs in only
    /// to an account that exists.
    pub methods: Vec<String>,
    pub password: Password,
    /// SASL mechanisms in preference order, MongooseIM names (`scram_sha256_plus`, `plain`, …).
    pub sasl_mechanisms: Vec<String>,
    /// Allow PLAIN and in-band registration on unencrypted streams.
    pub allow_plain_without_tls: bool,
    /// Failed logins on one stream before it is closed; each failure is answered later than the last.
    pub max_failures: u32,
    /// How SASL EXTERNAL maps a client certificate to an account, tried in
    /// order (XEP-0178): `standard` (its id-on-xmppAddr names) and
    /// `common_name` (its subject's CN is the username).
    pub sasl_external: Vec<String>,
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            methods: vec!["rdbms".into()],
            password: Password::default(),
            sasl_mechanisms: [
                "scram_sha512_plus",
                "scram_sha512",
                "scram_sha256_plus",
                "scram_sha256",
                "scram_sha1_plus",
                "scram_sha1",
                "plain",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            allow_plain_without_tls: false,
            max_failures: 5,
            sasl_external: vec!["standard".into()],
        }
    }
}

/// `[auth.password]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Password {
    /// `scram` (salted keys, the default) or `plain`.
    pub format: meerkat_actors::auth::PasswordFormat,
    /// PBKDF2 iterations for new SCRAM keys; unknown users are offered the same.
    pub scram_iterations: u32,
    /// Threads that derive keys (registration, password changes, PLAIN against
    /// SCRAM keys), off the reactor threads; logins beyond them wait their turn.
    /// Default: half the CPU cores, at least 1.
    pub hashing_threads: Option<usize>,
}

impl Default for Password {
    fn default() -> Self {
        Password { format: Default::default(), scram_iterations: 4096, hashing_threads: None }
    }
}

/// `[outgoing_pools]`
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct OutgoingPools {
    pub rdbms: RdbmsPools,
    /// `[outgoing_pools.redis.<name>]`: Redis (or Dynomite) servers, by pool name.
    pub redis: BTreeMap<String, RedisPool>,
    /// `[outgoing_pools.http.<name>]`: HTTP servers modules post to (the event pusher).
    pub http: BTreeMap<String, meerkat_actors::ext::pools::HttpPool>,
    /// `[outgoing_pools.rabbit.<name>]`: RabbitMQ servers modules publish to (the event pusher).
    pub rabbit: BTreeMap<String, meerkat_actors::ext::pools::RabbitPool>,
}

impl OutgoingPools {
    /// The pools modules use, by name.
    pub fn for_modules(&self) -> meerkat_actors::ext::pools::ModulePools {
        meerkat_actors::ext::pools::ModulePools { http: self.http.clone(), rabbit: self.rabbit.clone() }
    }
}

/// `[outgoing_pools.rdbms]`
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RdbmsPools {
    pub default: Option<RdbmsPool>,
}

/// `[outgoing_pools.rdbms.default]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RdbmsPool {
    /// Connections in the pool.
    pub workers: u32,
    pub connection: RdbmsConnection,
}

impl Default for RdbmsPool {
    fn default() -> Self {
        RdbmsPool { workers: 10, connection: RdbmsConnection::default() }
    }
}

/// `[outgoing_pools.redis.<name>]`
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RedisPool {
    pub connection: RedisConnection,
}

/// `[outgoing_pools.redis.<name>.connection]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConnection {
    /// Host name or IP address of Redis, or of Dynomite's client `listen` port.
    pub host: String,
    pub port: u16,
    /// Database index (`SELECT`). Dynomite serves database 0 only.
    pub database: u32,
    /// `AUTH` password; empty or absent means none.
    pub password: Option<String>,
    /// `[outgoing_pools.redis.<pool>.connection.tls]`: TLS to Redis
    /// (`rediss://`). `tls = {}` verifies the server against the system's
    /// roots; without this table the connection is plain TCP.
    pub tls: Option<RedisTlsConfig>,
}

/// `[outgoing_pools.redis.<pool>.connection.tls]`
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RedisTlsConfig {
    /// PEM CA certificate(s) that signed Redis's certificate; the system's roots without it.
    pub cacertfile: Option<PathBuf>,
    /// PEM certificate and key this node presents, when Redis asks for one (`tls-auth-clients`).
    pub certfile: Option<PathBuf>,
    pub keyfile: Option<PathBuf>,
}

impl Default for RedisConnection {
    fn default() -> Self {
        RedisConnection { host: "127.0.0.1".into(), port: 6379, database: 0, password: None, tls: None }
    }
}

impl RedisConnection {
    /// `redis://[:password@]host:port/database` (`rediss://` with TLS), the password percent-encoded.
    pub fn url(&self) -> String {
        let auth = match self.password.as_deref() {
            Some(p) if !p.is_empty() => format!(":{}@", percent_encode(p)),
            _ => String::new(),
        };
        let scheme = if self.tls.is_some() { "rediss" } else { "redis" };
        format!("{scheme}://{auth}{}:{}/{}", bracket_ipv6(&self.host), self.port, self.database)
    }
}

/// Everything but unreserved characters (RFC 3986 §2.3) as `%XX`.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An IPv6 literal in brackets, so that `host:port` stays unambiguous.
fn bracket_ipv6(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// `[outgoing_pools.rdbms.default.connection]`
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RdbmsConnection {
    /// `sqlite://path`, `postgres://user@host/db` or `mysql://user@host/db`.
    /// Empty means SQLite in the data directory.
    pub url: String,
    pub tls: DbTls,
}

/// `tls.*` towards the database.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct DbTls {
    /// Use TLS to the database.
    pub required: bool,
    /// Also accept an unencrypted connection if the server offers no TLS.
    pub preferred: bool,
    /// CA certificate that signs the database's certificate.
    pub cacertfile: Option<PathBuf>,
}

/// `[admin]`: the admin HTTP API.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Admin {
    pub ip_address: IpAddr,
    pub port: u16,
    /// Bearer token. Without token or username, one is generated into `data_dir/admin.token`.
    pub token: Option<String>,
    /// Basic-auth credentials, as an alternative to the token.
    pub username: Option<String>,
    pub password: Option<String>,
}

impl Default for Admin {
    fn default() -> Self {
        Admin { ip_address: IpAddr::from([127, 0, 0, 1]), port: 5288, token: None, username: None, password: None }
    }
}

/// `[cluster]`: membership of a cluster of nodes in one data center.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cluster {
    /// Nodes only talk to nodes with the same cluster name.
    pub name: String,
    /// This node's id (1 or more). Without it, one is generated once and kept in `data_dir/cluster/node_id`.
    pub node_id: Option<u64>,
    /// Where the cluster transport listens (`ip:port`).
    pub listen: std::net::SocketAddr,
    /// The address other nodes reach this one at; defaults to `listen`.
    pub advertise: Option<String>,
    /// Start a new one-node cluster on first start. The other nodes join it
    /// with `meerkat cluster join`.
    pub bootstrap: bool,
    /// fsync the Raft log before acknowledging an entry.
    pub sync_log: bool,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Seconds without an answer after which the leader marks a node down and removes its sessions.
    pub down_after: u64,
    /// Seconds a login waits for the cluster to commit its session before it is refused.
    pub commit_timeout: u64,
    /// Mutual TLS between nodes, from a cluster CA. Without it the transport is plain TCP.
    pub tls: Option<ClusterTls>,
    /// A secret every node of the cluster is given (at least 16 bytes, e.g.
    /// `openssl rand -base64 32`): a connecting node proves it knows it, and
    /// so does the node it reaches (HMAC challenge-response, never sent). A
    /// transport listening on an address other than loopback needs this or
    /// `[cluster.tls]`.
    pub shared_secret: Option<Secret>,
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster {
            name: "meerkat".into(),
            node_id: None,
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 7946)),
            advertise: None,
            bootstrap: false,
            sync_log: true,
            heartbeat_interval_ms: 250,
            election_timeout_min_ms: 1500,
            election_timeout_max_ms: 3000,
            down_after: 4,
            commit_timeout: 3,
            tls: None,
            shared_secret: None,
        }
    }
}

/// A secret from the file; `Debug` never shows it.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// `[cluster.tls]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterTls {
    /// The cluster CA: peers must present a certificate it signed.
    pub cacertfile: PathBuf,
    /// This node's certificate and key, used both as server and as client.
    pub certfile: PathBuf,
    pub keyfile: PathBuf,
    /// The DNS name in every node's certificate; each also names itself,
    /// `node<ID>.<server_name>`.
    #[serde(default = "default_cluster_server_name")]
    pub server_name: String,
}

fn default_cluster_server_name() -> String {
    "meerkat-cluster".into()
}

/// `[global_distribution]`: one XMPP domain served by clusters in several
/// data centers (MongooseIM's `mod_global_distrib`). Every data center is one
/// cluster with its own `local_host`; all of them serve `global_host`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalDistribution {
    /// The domain clients use, served by every data center; one of `general.hosts`.
    pub global_host: String,
    /// This data center's name, the same on every node of the cluster and
    /// different in every data center.
    pub local_host: String,
    /// Hops a stanza may make between data centers (1 to 255).
    #[serde(default = "default_message_ttl")]
    pub message_ttl: u8,
    #[serde(default)]
    pub redis: GlobalRedis,
    #[serde(default)]
    pub connections: GlobalConnections,
    #[serde(default)]
    pub cache: GlobalCache,
    #[serde(default)]
    pub bounce: GlobalBounce,
}

fn default_message_ttl() -> u8 {
    4
}

/// `[global_distribution.redis]`: the routing table shared by all data centers.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GlobalRedis {
    /// The name of an `[outgoing_pools.redis.<pool>]` section.
    pub pool: String,
    /// Seconds after which entries that were not refreshed are ignored and expire.
    pub expire_after: u64,
    /// Seconds between two complete rewrites of this node's entries; less than `expire_after`.
    pub refresh_after: u64,
}

impl Default for GlobalRedis {
    fn default() -> Self {
        GlobalRedis { pool: "global_distrib".into(), expire_after: 120, refresh_after: 60 }
    }
}

/// `[global_distribution.connections]`: the links between data centers.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GlobalConnections {
    /// Where this node listens for links from other data centers.
    pub endpoints: Vec<Endpoint>,
    /// What other data centers dial to reach this node; `endpoints` when empty.
    pub advertised_endpoints: Vec<Endpoint>,
    /// Connections from this node to every endpoint of another data center.
    pub connections_per_endpoint: usize,
    /// Milliseconds between two reads of the list of data centers and their endpoints.
    pub hosts_refresh_interval: u64,
    /// Seconds a link to an endpoint that is no longer advertised may stay
    /// down before its stanzas go over another link.
    pub disabled_gc_interval: u64,
    /// Mutual TLS between data centers. Without it the links are plain TCP.
    pub tls: Option<GlobalTls>,
    /// A secret every data center is given (at least 16 bytes): a node
    /// dialling a link proves it knows it, and so does the node it reaches
    /// (HMAC challenge-response, never sent). Endpoints on an address other
    /// than loopback need this or `tls`.
    pub shared_secret: Option<Secret>,
}

impl Default for GlobalConnections {
    fn default() -> Self {
        GlobalConnections {
            endpoints: vec![Endpoint { host: "127.0.0.1".into(), port: 5555 }],
            advertised_endpoints: Vec::new(),
            connections_per_endpoint: 1,
            hosts_refresh_interval: 3000,
            disabled_gc_interval: 60,
            tls: None,
            shared_secret: None,
        }
    }
}

/// `{ host = "...", port = ... }`
#[derive(Debug, Deserialize, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// An IP address or a name that resolves to one.
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    /// The address to listen on: the IP, or the first address the name resolves to.
    pub fn listen_addr(&self) -> Result<SocketAddr, String> {
        let host = self.host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, self.port));
        }
        match (host, self.port).to_socket_addrs() {
            Ok(mut addrs) => addrs.next().ok_or_else(|| format!("{:?} resolves to no address", self.host)),
            Err(e) => Err(format!("{:?} is neither an IP address nor a name that resolves: {e}", self.host)),
        }
    }

    /// `host:port` as other data centers dial it.
    pub fn advertised(&self) -> String {
        format!("{}:{}", bracket_ipv6(&self.host), self.port)
    }
}

/// `[global_distribution.connections.tls]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalTls {
    /// The CA of the links: peers must present a certificate it signed.
    pub cacertfile: PathBuf,
    /// This node's certificate and key, used both as server and as client.
    pub certfile: PathBuf,
    pub keyfile: PathBuf,
    /// The DNS name in every node's certificate; each also names its data
    /// center's `local_host`.
    #[serde(default = "default_global_server_name")]
    pub server_name: String,
}

fn default_global_server_name() -> String {
    "meerkat-global".into()
}

/// `[global_distribution.cache]`: where recently looked-up users are.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GlobalCache {
    /// Seconds a looked-up location is used without asking Redis again.
    pub jid_lifetime_seconds: u64,
    /// Locations kept at most.
    pub max_jids: u64,
}

impl Default for GlobalCache {
    fn default() -> Self {
        GlobalCache { jid_lifetime_seconds: 5, max_jids: 10_000 }
    }
}

/// `[global_distribution.bounce]`: stanzas for a user whose location is not
/// known yet wait and are tried again instead of going to offline storage.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GlobalBounce {
    pub enabled: bool,
    /// Milliseconds before the first retry; each retry doubles it, up to 2 s.
    pub resend_after_ms: u64,
    /// Retries before the stanza is handled as for an offline user.
    pub max_retries: u32,
}

impl Default for GlobalBounce {
    fn default() -> Self {
        GlobalBounce { enabled: true, resend_after_ms: 200, max_retries: 8 }
    }
}

/// `[log]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// A tracing filter, such as `info` or `meerkat_actors=debug,info`. `RUST_LOG` overrides it.
    pub level: String,
    /// `text` or `json`.
    pub format: LogFormat,
}

impl Default for Log {
    fn default() -> Self {
        Log { level: "info".into(), format: LogFormat::Text }
    }
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

/// `[session]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Session {
    pub mailbox_capacity: usize,
    /// Deliveries a session takes past a full mailbox, in order, while their
    /// senders wait; past this, a message falls back to the account.
    pub mailbox_overflow: usize,
    /// Bytes queued for a client that does not read before it is disconnected.
    pub max_outgoing_bytes: usize,
    /// Seconds of client silence before `connection-timeout` (an answer to a
    /// server ping, `[modules.mod_ping]`, is not silence).
    pub idle_timeout: u64,
    /// Seconds of server silence before a whitespace keepalive.
    pub keepalive_interval: u64,
    /// Seconds from connect to bound resource.
    pub negotiation_timeout: u64,
    /// Server worker shards and the queue length of each.
    pub server_workers: usize,
    pub server_queue: usize,
}

impl Default for Session {
    fn default() -> Self {
        Session {
            mailbox_capacity: 1024,
            mailbox_overflow: meerkat_actors::session::DELIVERY_OVERFLOW,
            max_outgoing_bytes: 4 * 1024 * 1024,
            idle_timeout: 600,
            keepalive_interval: 60,
            negotiation_timeout: 60,
            server_workers: 8,
            server_queue: 4096,
        }
    }
}

impl Config {
    /// The services' sections ([`meerkat_actors::node_services`]).
    pub fn services(&self) -> meerkat_actors::node_services::ServicesConfig {
        meerkat_actors::node_services::ServicesConfig {
            component: self.listen.component.clone(),
            s2s: meerkat_actors::node_services::s2s::S2sConfig {
                listen: self.listen.s2s.clone(),
                options: self.s2s.clone(),
            },
        }
    }

    /// Reads and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            key: "-".into(),
            reason: e.to_string(),
        })?;
        let mut cfg = Config::parse(&text, &file)?;
        cfg.validate(&file)?;
        Ok(cfg)
    }

    /// The defaults, validated: host `localhost`, c2s on 5222, admin on 127.0.0.1:5288, SQLite in `./meerkat-data`.
    pub fn defaults() -> Result<Config, ConfigError> {
        let mut cfg = Config::default();
        cfg.validate("(defaults)")?;
        Ok(cfg)
    }

    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e: toml::de::Error| {
            let key = e.span().map(|s| {
                // Newlines before the span, plus one: `lines()` would miss a span starting a line.
                let line = text.as_bytes()[..s.start.min(text.len())].iter().filter(|b| **b == b'\n').count() + 1;
                format!("line {line}")
            });
            ConfigError { file: file.into(), key: key.unwrap_or_else(|| "-".into()), reason: e.message().to_string() }
        })
    }

    pub fn validate(&mut self, file: &str) -> Result<(), ConfigError> {
        let err = |key: &str, reason: String| ConfigError { file: file.into(), key: key.into(), reason };
        if self.general.hosts.is_empty() {
            return Err(err("general.hosts", "at least one host is required".into()));
        }
        let mut canon = Vec::new();
        for h in &self.general.hosts {
            let c = meerkat_xmpp::jid::canonical_domain(h)
                .map_err(|e| err("general.hosts", format!("{h:?} is not a valid domain: {e}")))?;
            if canon.contains(&c) {
                return Err(err("general.hosts", format!("{h:?} is listed twice")));
            }
            canon.push(c);
        }
        self.general.hosts = canon;
        self.modules.validate().map_err(|(key, reason)| err(&key, reason))?;
        let mut configured: Vec<String> = Vec::new();
        for (i, h) in self.host_config.iter_mut().enumerate() {
            let key = format!("host_config[{i}]");
            let host = meerkat_xmpp::jid::canonical_domain(&h.host)
                .map_err(|e| err(&format!("{key}.host"), format!("{:?} is not a valid domain: {e}", h.host)))?;
            if !self.general.hosts.contains(&host) {
                let reason = format!("{host:?} is not one of general.hosts ({})", self.general.hosts.join(", "));
                return Err(err(&format!("{key}.host"), reason));
            }
            if configured.contains(&host) {
                return Err(err(&format!("{key}.host"), format!("{host:?} has a host_config already")));
            }
            configured.push(host.clone());
            h.host = host;
            h.modules.validate(&format!("{key}.modules")).map_err(|(key, reason)| err(&key, reason))?;
        }
        if self.listen.c2s.is_empty() {
            return Err(err("listen.c2s", "at least one c2s listener is required".into()));
        }
        let mut ports = Vec::new();
        for (i, l) in self.listen.c2s.iter().enumerate() {
            let key = |k: &str| format!("listen.c2s[{i}].{k}");
            if ports.contains(&(l.ip_address, l.port)) {
                return Err(err(&key("port"), format!("{}:{} is used by another listener", l.ip_address, l.port)));
            }
            ports.push((l.ip_address, l.port));
            if l.max_stanza_size < 1024 {
                return Err(err(&key("max_stanza_size"), "must be at least 1024 bytes".into()));
            }
            if l.max_depth < 4 {
                return Err(err(&key("max_depth"), "must be at least 4".into()));
            }
            if l.access != "all" && l.access != "none" {
                return Err(err(&key("access"), format!("unknown access rule {:?} (known: all, none)", l.access)));
            }
            self.shaper_rate(&l.shaper).map_err(|reason| err(&key("shaper"), reason))?;
            if l.tls.early_data && l.tls.mode != meerkat_actors::negotiation::TlsMode::Tls {
                return Err(err(&key("tls.early_data"), "needs tls.mode = \"tls\" (direct TLS)".into()));
            }
            match (&l.tls.certfile, &l.tls.keyfile) {
                (Some(c), Some(k)) => {
                    for (name, p) in [("tls.certfile", c), ("tls.keyfile", k)] {
                        if !p.is_file() {
                            return Err(err(&key(name), format!("{} does not exist", p.display())));
                        }
                    }
                }
                (None, None) => {}
                _ => return Err(err(&key("tls"), "certfile and keyfile go together".into())),
            }
        }
        for (name, sh) in &self.shaper {
            if sh.max_rate == 0 {
                return Err(err(&format!("shaper.{name}.max_rate"), "must be at least 1 (bytes per second)".into()));
            }
        }
        self.validate_http(&err)?;
        if let Some(c) = &self.cluster {
            if c.name.is_empty() {
                return Err(err("cluster.name", "must not be empty".into()));
            }
            if c.node_id == Some(0) {
                return Err(err("cluster.node_id", "must be 1 or more".into()));
            }
            if let Some(secret) = &c.shared_secret {
                meerkat_cluster::peer_auth::SharedSecret::new(&secret.0)
                    .map_err(|reason| err("cluster.shared_secret", reason))?;
            }
            if !c.listen.ip().is_loopback() && c.tls.is_none() && c.shared_secret.is_none() {
                return Err(err(
                    "cluster.listen",
                    format!(
                        "{} is not a loopback address, so anyone who reaches it could join the cluster: \
                         set cluster.shared_secret (the same on every node) or [cluster.tls]",
                        c.listen
                    ),
                ));
            }
            if c.heartbeat_interval_ms == 0 || c.election_timeout_min_ms <= c.heartbeat_interval_ms * 2 {
                return Err(err(
                    "cluster.election_timeout_min_ms",
                    "must be more than twice heartbeat_interval_ms".into(),
                ));
            }
            if c.election_timeout_max_ms <= c.election_timeout_min_ms {
                return Err(err("cluster.election_timeout_max_ms", "must be more than election_timeout_min_ms".into()));
            }
            if c.down_after == 0 || c.commit_timeout == 0 {
                return Err(err("cluster", "down_after and commit_timeout must be at least 1 second".into()));
            }
            if let Some(t) = &c.tls {
                for (name, p) in [("cacertfile", &t.cacertfile), ("certfile", &t.certfile), ("keyfile", &t.keyfile)] {
                    if !p.is_file() {
                        return Err(err(&format!("cluster.tls.{name}"), format!("{} does not exist", p.display())));
                    }
                }
            }
        }
        if let Some(m) = self.auth.methods.iter().find(|m| !["rdbms", "pki"].contains(&m.as_str())) {
            return Err(err("auth.methods", format!("unknown method {m:?}; known: \"rdbms\", \"pki\"")));
        }
        if self.auth.methods.is_empty() {
            return Err(err("auth.methods", "at least one method is required".into()));
        }
        if self.auth.sasl_mechanisms.is_empty() {
            return Err(err("auth.sasl_mechanisms", "at least one mechanism is required".into()));
        }
        for m in &self.auth.sasl_mechanisms {
            if mechanism(m).is_none() {
                return Err(err("auth.sasl_mechanisms", format!("unknown mechanism {m:?}")));
            }
        }
        let pki = self.auth.methods.iter().any(|m| m == "pki");
        let external = self.auth.sasl_mechanisms.iter().any(|m| m == "external");
        if external != pki {
            return Err(err(
                if pki { "auth.methods" } else { "auth.sasl_mechanisms" },
                "client certificates need both \"pki\" in auth.methods and \"external\" in auth.sasl_mechanisms".into(),
            ));
        }
        if self.auth.sasl_external.is_empty() {
            return Err(err("auth.sasl_external", "at least one check is required".into()));
        }
        for c in &self.auth.sasl_external {
            if external_check(c).is_none() {
                return Err(err(
                    "auth.sasl_external",
                    format!("unknown check {c:?}; known: \"standard\", \"common_name\""),
                ));
            }
        }
        if self.auth.password.scram_iterations < 4096 {
            return Err(err("auth.password.scram_iterations", "must be at least 4096 (RFC 7677)".into()));
        }
        if self.auth.password.hashing_threads == Some(0) {
            return Err(err("auth.password.hashing_threads", "must be at least 1".into()));
        }
        if self.auth.max_failures == 0 {
            return Err(err("auth.max_failures", "must be at least 1".into()));
        }
        if let Some(pool) = &self.outgoing_pools.rdbms.default {
            let url = &pool.connection.url;
            if !url.is_empty()
                && !["sqlite:", "postgres:", "postgresql:", "mysql:", "mariadb:"].iter().any(|p| url.starts_with(p))
            {
                return Err(err(
                    "outgoing_pools.rdbms.default.connection.url",
                    format!("unsupported database URL {url:?}"),
                ));
            }
            if pool.workers == 0 {
                return Err(err("outgoing_pools.rdbms.default.workers", "must be at least 1".into()));
            }
        }
        for (name, pool) in &self.outgoing_pools.http {
            pool.validate().map_err(|(k, why)| err(&format!("outgoing_pools.http.{name}.{k}"), why))?;
        }
        for (name, pool) in &self.outgoing_pools.rabbit {
            pool.validate().map_err(|(k, why)| err(&format!("outgoing_pools.rabbit.{name}.{k}"), why))?;
        }
        for (name, pool) in &self.outgoing_pools.redis {
            let key = |k: &str| format!("outgoing_pools.redis.{name}.connection.{k}");
            if pool.connection.host.trim().is_empty() {
                return Err(err(&key("host"), "must not be empty".into()));
            }
            if pool.connection.port == 0 {
                return Err(err(&key("port"), "must be 1 or more".into()));
            }
            if let Some(t) = &pool.connection.tls {
                if t.certfile.is_some() != t.keyfile.is_some() {
                    return Err(err(&key("tls"), "certfile and keyfile go together".into()));
                }
                for (k, p) in
                    [("tls.cacertfile", &t.cacertfile), ("tls.certfile", &t.certfile), ("tls.keyfile", &t.keyfile)]
                {
                    if let Some(p) = p.as_ref().filter(|p| !p.is_file()) {
                        return Err(err(&key(k), format!("{} does not exist", p.display())));
                    }
                }
            }
        }
        self.validate_global(&err)?;
        if self.admin.username.is_some() != self.admin.password.is_some() {
            return Err(err("admin", "username and password go together".into()));
        }
        if self.session.mailbox_overflow == 0 {
            return Err(err("session.mailbox_overflow", "must be at least 1".into()));
        }
        if self.session.mailbox_capacity == 0 || self.session.server_workers == 0 || self.session.server_queue == 0 {
            return Err(err("session", "capacities must be positive".into()));
        }
        if self.session.max_outgoing_bytes < 65536 {
            return Err(err("session.max_outgoing_bytes", "must be at least 65536".into()));
        }
        if self.session.idle_timeout == 0
            || self.session.keepalive_interval == 0
            || self.session.negotiation_timeout == 0
        {
            return Err(err("session", "timeouts must be positive".into()));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level).map_err(|e| err("log.level", e.to_string()))?;
        Ok(())
    }

    /// The hosts with module sections of their own, and those sections.
    pub fn host_modules(&self) -> Vec<(String, meerkat_actors::modules::HostModulesConfig)> {
        self.host_config.iter().map(|h| (h.host.clone(), h.modules.clone())).collect()
    }

    /// The configured SASL mechanisms the auth methods allow, in order:
    /// EXTERNAL with `pki`, the password mechanisms with `rdbms`.
    pub fn offered_mechanisms(&self) -> Vec<meerkat_xmpp::sasl::Mechanism> {
        let has = |m: &str| self.auth.methods.iter().any(|x| x == m);
        self.auth
            .sasl_mechanisms
            .iter()
            .filter_map(|m| mechanism(m))
            .filter(|m| if *m == meerkat_xmpp::sasl::Mechanism::External { has("pki") } else { has("rdbms") })
            .collect()
    }

    /// The `auth.sasl_external` checks, in order.
    pub fn external_checks(&self) -> Vec<meerkat_xmpp::sasl::external::ExternalCheck> {
        self.auth.sasl_external.iter().filter_map(|c| external_check(c)).collect()
    }

    /// The `max_rate` of the shaper a listener names; `None` for `"none"`.
    pub fn shaper_rate(&self, name: &str) -> Result<Option<u64>, String> {
        if name == "none" {
            return Ok(None);
        }
        match self.shaper.get(name) {
            Some(s) => Ok(Some(s.max_rate)),
            None => {
                let known: Vec<&str> = self.shaper.keys().map(String::as_str).collect();
                Err(format!(
                    "no [shaper.{name}] section (known: none{})",
                    known.iter().map(|k| format!(", {k}")).collect::<String>()
                ))
            }
        }
    }

    /// Addresses the c2s listeners and the admin API listen on, named by their keys.
    fn listener_addresses(&self) -> Vec<(SocketAddr, String)> {
        let mut taken: Vec<(SocketAddr, String)> = self
            .listen
            .c2s
            .iter()
            .enumerate()
            .map(|(i, l)| (SocketAddr::new(l.ip_address, l.port), format!("listen.c2s[{i}]")))
            .collect();
        taken.push((SocketAddr::new(self.admin.ip_address, self.admin.port), "admin".into()));
        taken
    }

    /// `[[listen.http]]` and their handlers.
    fn validate_http(&self, err: &dyn Fn(&str, String) -> ConfigError) -> Result<(), ConfigError> {
        let mut taken = self.listener_addresses();
        for (i, l) in self.listen.http.iter().enumerate() {
            let key = |k: &str| format!("listen.http[{i}].{k}");
            let addr = SocketAddr::new(l.ip_address, l.port);
            if let Some((t, by)) = clash(&taken, addr) {
                return Err(err(&key("port"), format!("{addr} is also used by {by} ({t})")));
            }
            taken.push((addr, format!("listen.http[{i}]")));
            self.shaper_rate(&l.shaper).map_err(|reason| err(&key("shaper"), reason))?;
            if let Some(tls) = &l.tls {
                match (&tls.certfile, &tls.keyfile) {
                    (Some(c), Some(k)) => {
                        for (name, p) in [("tls.certfile", c), ("tls.keyfile", k)] {
                            if !p.is_file() {
                                return Err(err(&key(name), format!("{} does not exist", p.display())));
                            }
                        }
                    }
                    (None, None) => {}
                    _ => return Err(err(&key("tls"), "certfile and keyfile go together".into())),
                }
            }
            let (ws, bosh) = (&l.handlers.mod_websockets, &l.handlers.mod_bosh);
            if ws.is_empty() && bosh.is_empty() {
                return Err(err(
                    &key("handlers"),
                    "no handler to serve: add [[listen.http.handlers.mod_websockets]] with path = \"/ws-xmpp\" \
                     or [[listen.http.handlers.mod_bosh]] with path = \"/http-bind\""
                        .into(),
                ));
            }
            let endpoints: Vec<(&str, &str, &str, usize, usize, usize)> = ws
                .iter()
                .enumerate()
                .map(|(j, h)| ("mod_websockets", h.host.as_str(), h.path.as_str(), h.max_stanza_size, h.max_depth, j))
                .chain(
                    bosh.iter().enumerate().map(|(j, h)| {
                        ("mod_bosh", h.host.as_str(), h.path.as_str(), h.max_stanza_size, h.max_depth, j)
                    }),
                )
                .collect();
            for (n, &(module, host, path, max_stanza_size, max_depth, j)) in endpoints.iter().enumerate() {
                let key = |k: &str| format!("listen.http[{i}].handlers.{module}[{j}].{k}");
                if !path.starts_with('/') {
                    return Err(err(&key("path"), format!("{path:?} must start with '/'")));
                }
                if host.trim().is_empty() || host.contains(['/', ' ']) {
                    return Err(err(&key("host"), format!("{host:?} is neither \"_\" (any host) nor a host name")));
                }
                if endpoints[..n].iter().any(|o| o.2 == path && o.1 == host) {
                    return Err(err(&key("path"), format!("{path} is served by an earlier handler")));
                }
                if max_stanza_size < 1024 {
                    return Err(err(&key("max_stanza_size"), "must be at least 1024 bytes".into()));
                }
                if max_depth < 4 {
                    return Err(err(&key("max_depth"), "must be at least 4".into()));
                }
            }
            for (j, h) in bosh.iter().enumerate() {
                let key = |k: &str| format!("listen.http[{i}].handlers.mod_bosh[{j}].{k}");
                for (name, value, min, max) in [
                    ("inactivity", h.inactivity, 1, 86_400),
                    ("max_wait", h.max_wait, 1, 3_600),
                    ("max_pause", h.max_pause, 1, 86_400),
                ] {
                    if !(min..=max).contains(&value) {
                        return Err(err(&key(name), format!("{value} is not between {min} and {max} seconds")));
                    }
                }
                if h.max_hold > 16 {
                    return Err(err(&key("max_hold"), format!("{} is more than 16 requests", h.max_hold)));
                }
            }
        }
        Ok(())
    }

    /// `[global_distribution]`, after `general.hosts` was made canonical.
    fn validate_global(&mut self, err: &dyn Fn(&str, String) -> ConfigError) -> Result<(), ConfigError> {
        // Addresses this node already listens on, to refuse a clash before anything binds.
        let mut taken = self.listener_addresses();
        taken.extend(
            self.listen
                .http
                .iter()
                .enumerate()
                .map(|(i, l)| (SocketAddr::new(l.ip_address, l.port), format!("listen.http[{i}]"))),
        );
        let Some(g) = &mut self.global_distribution else { return Ok(()) };
        let global = meerkat_xmpp::jid::canonical_domain(&g.global_host).map_err(|e| {
            err("global_distribution.global_host", format!("{:?} is not a valid domain: {e}", g.global_host))
        })?;
        if !self.general.hosts.contains(&global) {
            return Err(err(
                "global_distribution.global_host",
                format!("{global:?} must be one of general.hosts ({})", self.general.hosts.join(", ")),
            ));
        }
        let local = meerkat_xmpp::jid::canonical_domain(&g.local_host).map_err(|e| {
            err("global_distribution.local_host", format!("{:?} is not a valid domain: {e}", g.local_host))
        })?;
        if local == global {
            return Err(err(
                "global_distribution.local_host",
                "must differ from global_host: it names this data center, not the served domain".into(),
            ));
        }
        g.global_host = global;
        g.local_host = local;
        if g.message_ttl == 0 {
            return Err(err(
                "global_distribution.message_ttl",
                "must be 1 or more (0 would never send a stanza to another data center)".into(),
            ));
        }

        let r = &g.redis;
        if !self.outgoing_pools.redis.contains_key(&r.pool) {
            return Err(err(
                "global_distribution.redis.pool",
                format!("no [outgoing_pools.redis.{}] section configures the Redis pool {:?}", r.pool, r.pool),
            ));
        }
        if r.expire_after == 0 {
            return Err(err("global_distribution.redis.expire_after", "must be at least 1 second".into()));
        }
        if r.refresh_after == 0 || r.refresh_after >= r.expire_after {
            return Err(err(
                "global_distribution.redis.refresh_after",
                format!(
                    "must be at least 1 second and less than expire_after ({} s), or entries expire before they are refreshed",
                    r.expire_after
                ),
            ));
        }

        let c = &g.connections;
        if let Some(secret) = &c.shared_secret {
            meerkat_cluster::peer_auth::SharedSecret::new(&secret.0)
                .map_err(|reason| err("global_distribution.connections.shared_secret", reason))?;
        }
        if c.endpoints.is_empty() {
            return Err(err("global_distribution.connections.endpoints", "at least one endpoint is required".into()));
        }
        if let Some(cl) = &self.cluster {
            taken.push((cl.listen, "cluster.listen".into()));
        }
        for (i, ep) in c.endpoints.iter().enumerate() {
            let key = format!("global_distribution.connections.endpoints[{i}]");
            let addr = ep.listen_addr().map_err(|reason| err(&key, reason))?;
            if !addr.ip().is_loopback() && c.tls.is_none() && c.shared_secret.is_none() {
                return Err(err(
                    &key,
                    format!(
                        "{addr} is not a loopback address, so anyone who reaches it could inject stanzas: \
                         set global_distribution.connections.shared_secret (the same in every data center) \
                         or global_distribution.connections.tls"
                    ),
                ));
            }
            if let Some((t, by)) = clash(&taken, addr) {
                return Err(err(&key, format!("{addr} is also used by {by} ({t})")));
            }
            taken.push((addr, key));
        }
        for (i, ep) in c.advertised_endpoints.iter().enumerate() {
            let key = format!("global_distribution.connections.advertised_endpoints[{i}]");
            if ep.host.trim().is_empty() {
                return Err(err(&key, "host must not be empty".into()));
            }
            if ep.port == 0 {
                return Err(err(&key, "port must be 1 or more".into()));
            }
        }
        if c.connections_per_endpoint == 0 || c.connections_per_endpoint > 64 {
            return Err(err("global_distribution.connections.connections_per_endpoint", "must be 1 to 64".into()));
        }
        if c.hosts_refresh_interval < 100 {
            return Err(err(
                "global_distribution.connections.hosts_refresh_interval",
                "must be at least 100 (milliseconds)".into(),
            ));
        }
        if c.disabled_gc_interval == 0 {
            return Err(err(
                "global_distribution.connections.disabled_gc_interval",
                "must be at least 1 second".into(),
            ));
        }
        if let Some(t) = &c.tls {
            for (name, p) in [("cacertfile", &t.cacertfile), ("certfile", &t.certfile), ("keyfile", &t.keyfile)] {
                if !p.is_file() {
                    return Err(err(
                        &format!("global_distribution.connections.tls.{name}"),
                        format!("{} does not exist", p.display()),
                    ));
                }
            }
        }

        if g.cache.jid_lifetime_seconds == 0 {
            return Err(err("global_distribution.cache.jid_lifetime_seconds", "must be at least 1".into()));
        }
        if g.cache.max_jids == 0 {
            return Err(err("global_distribution.cache.max_jids", "must be at least 1".into()));
        }
        if g.bounce.resend_after_ms == 0 {
            return Err(err("global_distribution.bounce.resend_after_ms", "must be at least 1".into()));
        }
        Ok(())
    }

    /// The Redis pool of `[global_distribution]`, once validated.
    pub fn global_redis(&self) -> Option<&RedisConnection> {
        let g = self.global_distribution.as_ref()?;
        self.outgoing_pools.redis.get(&g.redis.pool).map(|p| &p.connection)
    }

    /// The database URL, SQLite in the data directory by default.
    pub fn database_url(&self) -> String {
        match &self.outgoing_pools.rdbms.default {
            Some(p) if !p.connection.url.is_empty() => p.connection.url.clone(),
            _ => format!("sqlite://{}", self.general.data_dir.join("meerkat.db").display()),
        }
    }
}

/// A listener in `taken` that `addr` cannot bind next to: the same port on
/// the same or an unspecified address. Port 0 (any free port) never clashes.
fn clash(taken: &[(SocketAddr, String)], addr: SocketAddr) -> Option<&(SocketAddr, String)> {
    taken.iter().find(|(t, _)| {
        addr.port() != 0
            && t.port() == addr.port()
            && (t.ip() == addr.ip() || t.ip().is_unspecified() || addr.ip().is_unspecified())
    })
}

/// MongooseIM's mechanism names.
pub fn mechanism(name: &str) -> Option<meerkat_xmpp::sasl::Mechanism> {
    use meerkat_xmpp::sasl::Mechanism::*;
    Some(match name {
        "external" => External,
        "scram_sha512_plus" => ScramSha512Plus,
        "scram_sha512" => ScramSha512,
        "scram_sha256_plus" => ScramSha256Plus,
        "scram_sha256" => ScramSha256,
        "scram_sha1_plus" => ScramSha1Plus,
        "scram_sha1" => ScramSha1,
        "plain" => Plain,
        _ => return None,
    })
}

/// An `auth.sasl_external` check by its MongooseIM name.
pub fn external_check(name: &str) -> Option<meerkat_xmpp::sasl::external::ExternalCheck> {
    use meerkat_xmpp::sasl::external::ExternalCheck;
    match name {
        "standard" => Some(ExternalCheck::Standard),
        "common_name" => Some(ExternalCheck::CommonName),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_or_link_port_off_loopback_needs_a_secret_or_tls() {
        let check = |toml: &str| -> Result<Config, ConfigError> {
            let mut cfg = Config::parse(toml, "t.toml")?;
            cfg.validate("t.toml")?;
            Ok(cfg)
        };
        let e = check("[cluster]\nlisten = \"10.0.0.5:7946\"\n").unwrap_err();
        assert_eq!(e.key, "cluster.listen");
        assert!(e.reason.contains("cluster.shared_secret"), "{e:?}");
        check("[cluster]\nlisten = \"10.0.0.5:7946\"\nshared_secret = \"0123456789abcdef0123\"\n").unwrap();
        check("[cluster]\nlisten = \"127.0.0.1:7946\"\n").unwrap();
        let e = check("[cluster]\nshared_secret = \"short\"\n").unwrap_err();
        assert_eq!(e.key, "cluster.shared_secret");
        let cfg = check("[cluster]\nshared_secret = \"0123456789abcdef0123\"\n").unwrap();
        assert!(!format!("{cfg:?}").contains("0123456789abcdef0123"), "the secret is not in Debug output");

        let global = |endpoint: &str, extra: &str| {
            format!(
                "[general]\nhosts = [\"example.com\"]\n[global_distribution]\nglobal_host = \"example.com\"\n\
                 local_host = \"dc1.example.com\"\n[global_distribution.connections]\n\
                 endpoints = [{{ host = \"{endpoint}\", port = 5555 }}]\n{extra}\n\
                 [outgoing_pools.redis.global_distrib.connection]\nhost = \"127.0.0.1\"\n"
            )
        };
        let e = check(&global("10.1.0.11", "")).unwrap_err();
        assert!(e.reason.contains("connections.shared_secret"), "{e:?}");
        check(&global("10.1.0.11", "shared_secret = \"0123456789abcdef0123\"")).unwrap();
        check(&global("127.0.0.1", "")).unwrap();
    }

    #[test]
    fn a_redis_pool_with_tls_is_reached_with_rediss() {
        let toml = |extra: &str| {
            format!("[outgoing_pools.redis.gd.connection]\nhost = \"10.0.0.9\"\npassword = \"p w\"\n{extra}")
        };
        let cfg = Config::parse(&toml("tls = {}\n"), "t.toml").unwrap();
        assert_eq!(cfg.outgoing_pools.redis["gd"].connection.url(), "rediss://:p%20w@10.0.0.9:6379/0");
        let cfg = Config::parse(&toml(""), "t.toml").unwrap();
        assert_eq!(cfg.outgoing_pools.redis["gd"].connection.url(), "redis://:p%20w@10.0.0.9:6379/0");
        let mut cfg = Config::parse(&toml("tls.cacertfile = \"/nonexistent/ca.pem\"\n"), "t.toml").unwrap();
        let e = cfg.validate("t.toml").unwrap_err();
        assert_eq!(e.key, "outgoing_pools.redis.gd.connection.tls.cacertfile");
    }

    #[test]
    fn connection_limits_and_shapers_are_checked() {
        let check = |toml: &str| -> Result<Config, ConfigError> {
            let mut cfg = Config::parse(toml, "t.toml")?;
            cfg.validate("t.toml")?;
            Ok(cfg)
        };
        let cfg = check("[[listen.c2s]]\nmax_connections = 10\nmax_connections_per_ip = \"infinity\"\nshaper = \"fast\"\n[shaper.fast]\nmax_rate = 50000\n").unwrap();
        assert_eq!(cfg.listen.c2s[0].max_connections, Limit(Some(10)));
        assert_eq!(cfg.listen.c2s[0].max_connections_per_ip, Limit(None));
        assert_eq!(cfg.shaper_rate(&cfg.listen.c2s[0].shaper), Ok(Some(50000)));
        let e = check("[[listen.c2s]]\nmax_connections = 0\n").unwrap_err();
        assert!(e.reason.contains("positive"), "{e:?}");
        let e = check("[[listen.c2s]]\nmax_connections_per_ip = \"lots\"\n").unwrap_err();
        assert!(e.reason.contains("infinity"), "{e:?}");
        let e = check("[[listen.c2s]]\nshaper = \"fats\"\n[shaper.fast]\nmax_rate = 1\n").unwrap_err();
        assert_eq!(e.key, "listen.c2s[0].shaper");
        assert!(e.reason.contains("known: none, fast"), "{e:?}");
        let e = check("[shaper.fast]\nmax_rate = 0\n").unwrap_err();
        assert_eq!(e.key, "shaper.fast.max_rate");
        let e = check("[shaper.fast]\nmaxrate = 10\n").unwrap_err();
        assert!(e.reason.contains("maxrate"), "{e:?}");
    }

    #[test]
    fn defaults_are_valid() {
        let cfg = Config::defaults().unwrap();
        assert_eq!(cfg.general.hosts, vec!["localhost".to_string()]);
        assert_eq!(cfg.listen.c2s[0].port, 5222);
        assert_eq!(cfg.listen.c2s[0].tls.mode, meerkat_actors::negotiation::TlsMode::StarttlsRequired);
        assert_eq!(cfg.admin.port, 5288);
        assert!(cfg.database_url().starts_with("sqlite://./meerkat-data"));
    }

    #[test]
    fn example_config_parses_and_validates() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/meerkat.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let mut cfg = Config::parse(&text, "deploy/meerkat.toml").unwrap();
        cfg.validate("deploy/meerkat.toml").unwrap();
        // It shows the default TLS mode, and a listener without one gets it.
        assert_eq!(cfg.listen.c2s[0].tls.mode, ListenTls::default().mode);
        let bare = Config::parse("[[listen.c2s]]\nport = 5222\n", "bare.toml").unwrap();
        assert_eq!(bare.listen.c2s[0].tls.mode, meerkat_actors::negotiation::TlsMode::StarttlsRequired);
    }

    /// The commented `[global_distribution]` example, uncommented, on a config serving its global_host.
    #[test]
    fn example_global_distribution_section_parses_and_validates() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/meerkat.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let start = text.find("# [global_distribution]\n").expect("the global_distribution example");
        let mut toml = String::from("[general]\nhosts = [\"example.com\"]\n");
        for line in text[start..].lines() {
            toml.push_str(line.strip_prefix("# ").unwrap_or(line.trim_start_matches('#')));
            toml.push('\n');
        }
        let mut cfg = Config::parse(&toml, "deploy/meerkat.toml").unwrap();
        cfg.validate("deploy/meerkat.toml").unwrap();
        let g = cfg.global_distribution.as_ref().unwrap();
        assert_eq!((g.global_host.as_str(), g.local_host.as_str()), ("example.com", "dc1.example.com"));
        assert_eq!(cfg.global_redis().unwrap().url(), "redis://127.0.0.1:6379/0");
    }

    /// The commented `[[listen.http]]` example, uncommented: the defaults of each key.
    #[test]
    fn example_http_listener_parses_and_has_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/meerkat.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let start = text.find("# [[listen.http]]\n").expect("the [[listen.http]] example");
        let block = text[start..].split("\n\n").next().unwrap_or_default();
        let toml: String = block.lines().map(|l| format!("{}\n", l.strip_prefix("# ").unwrap_or(l))).collect();
        let mut cfg = Config::parse(&toml, "deploy/meerkat.toml").unwrap();
        cfg.validate("deploy/meerkat.toml").unwrap();
        let http = &cfg.listen.http[0];
        let d = HttpListen::default();
        assert_eq!((http.port, http.ip_address, http.tls.is_none()), (d.port, d.ip_address, true));
        assert_eq!(format!("{:?}", http.handlers.mod_websockets[0]), format!("{:?}", WebSocketHandler::default()));
        assert_eq!(format!("{:?}", http.handlers.mod_bosh[0]), format!("{:?}", BoshHandler::default()));
    }

    /// deploy/global/meerkat-dynomite.toml, and the Dynomite `listen` address it points at.
    #[test]
    fn dynomite_example_parses_and_matches_dynomite() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/global");
        let text = std::fs::read_to_string(dir.join("meerkat-dynomite.toml")).unwrap();
        let mut cfg = Config::parse(&text, "meerkat-dynomite.toml").unwrap();
        cfg.validate("meerkat-dynomite.toml").unwrap();
        let redis = cfg.global_redis().unwrap();
        assert_eq!(redis.database, 0, "Dynomite serves database 0 only");
        let dynomite = std::fs::read_to_string(dir.join("dynomite-dc1.yml.example")).unwrap();
        let listen = format!("listen: {}:{}", redis.host, redis.port);
        assert!(dynomite.lines().any(|l| l.trim() == listen), "dynomite-dc1.yml.example lacks {listen:?}");
    }

    /// The module sections of deploy/meerkat.toml say what the defaults are.
    #[test]
    fn example_modules_are_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/meerkat.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let m = Config::parse(&text, "deploy/meerkat.toml").unwrap().modules;
        let d = meerkat_actors::modules::ModulesConfig::default();
        assert_eq!(format!("{m:?}"), format!("{d:?}"));
        for section in meerkat_actors::modules::ModulesConfig::KNOWN {
            assert!(text.contains(&format!("[modules.{section}]")), "deploy/meerkat.toml lacks [modules.{section}]");
        }
    }

    #[test]
    fn module_sections() {
        let cfg = Config::defaults().unwrap();
        let m = &cfg.modules;
        assert!(m.mod_mam.enabled && m.mod_carbons.enabled && m.mod_blocking.enabled && m.mod_csi.enabled);
        assert!(m.mod_ping.send_pings);
        assert_eq!((m.mod_mam.default_page_size, m.mod_mam.max_page_size), (50, 250));
        assert_eq!((m.mod_ping.ping_interval, m.mod_ping.ping_timeout), (300, 60));

        let toml = "[modules.mod_mam]\nenabled = false\ndefault_page_size = 10\nmax_page_size = 20\n\
                    [modules.mod_carbons]\nenabled = false\n[modules.mod_blocking]\nenabled = false\n\
                    [modules.mod_csi]\nenabled = false\n[modules.mod_ping]\nsend_pings = false\nping_interval = 0\n";
        let mut cfg = Config::parse(toml, "t.toml").unwrap();
        cfg.validate("t.toml").unwrap();
        let m = &cfg.modules;
        assert!(!m.mod_mam.enabled && !m.mod_carbons.enabled && !m.mod_blocking.enabled && !m.mod_csi.enabled);
        assert!(!m.mod_ping.send_pings);
        assert_eq!((m.mod_mam.default_page_size, m.mod_mam.max_page_size), (10, 20));

        check_err("[modules.mod_mam]\ndefault_page_size = 0\n", &["modules.mod_mam.default_page_size"]);
        check_err(
            "[modules.mod_mam]\ndefault_page_size = 100\nmax_page_size = 99\n",
            &["modules.mod_mam.max_page_size"],
        );
        check_err("[modules.mod_ping]\nping_timeout = 0\n", &["modules.mod_ping", "at least 1 second"]);
        check_err("[modules.mod_carbons]\nenable = true\n", &["t.toml", "line 2", "unknown field `enable`"]);
        check_err("[modules.mod_stream_management]\nbuffer_max = 0\n", &["modules.mod_stream_management.buffer_max"]);
    }

    /// An unknown module is refused at start, naming the file, the key and
    /// every module there is.
    #[test]
    fn an_unknown_module_is_refused_with_the_known_ones() {
        let mut expect = vec!["t.toml", "line 2", "unknown field `mod_inbx`"];
        expect.extend(meerkat_actors::modules::ModulesConfig::KNOWN);
        check_err("[modules]\n[modules.mod_inbx]\nenabled = true\n", &expect);
        // The names of wave 1 are MongooseIM's now.
        check_err("[modules.mam]\nenabled = true\n", &["unknown field `mam`", "mod_mam"]);
    }

    /// `[[host_config]]`: a host's sections replace `[modules]`' there and
    /// nowhere else; what cannot be per host is refused, with the key.
    #[test]
    fn host_config_overrides_module_sections_of_one_host() {
        let toml = "[general]\nhosts = [\"a.test\", \"B.test\"]\n[modules.mod_mam]\ndefault_page_size = 10\n\
                    [[host_config]]\nhost = \"b.test\"\n[host_config.modules.mod_mam]\nenabled = false\n\
                    [host_config.modules.mod_ping]\nping_interval = 5\n";
        let mut cfg = Config::parse(toml, "t.toml").unwrap();
        cfg.validate("t.toml").unwrap();
        let hosts = cfg.host_modules();
        assert_eq!(hosts.len(), 1);
        assert_eq!(hosts[0].0, "b.test", "the host is made canonical");
        let b = cfg.modules.with_host(&hosts[0].1);
        assert!(!b.mod_mam.enabled && cfg.modules.mod_mam.enabled);
        assert_eq!(b.mod_ping.ping_interval, 5);
        assert_eq!(cfg.modules.mod_ping.ping_interval, 300);
        let hooks = cfg.modules.build_hosts(&hosts);
        assert!(hooks.of("a.test").names().contains(&"mod_mam"));
        assert!(!hooks.of("b.test").names().contains(&"mod_mam"));
        assert_eq!(hooks.host("b.test").tuning.silent_after, Some(std::time::Duration::from_secs(5)));
        assert_eq!(hooks.host("a.test").tuning.silent_after, Some(std::time::Duration::from_secs(300)));
        // Modules b.test does not override are the same instances on both hosts.
        let roster = |h: &str| hooks.of(h).modules().iter().find(|m| m.name() == "mod_roster").unwrap().clone();
        assert!(std::sync::Arc::ptr_eq(&roster("a.test"), &roster("b.test")));
        assert_eq!(hooks.modules().iter().filter(|m| m.name() == "mod_ping").count(), 2);

        let hosts = "[general]\nhosts = [\"a.test\"]\n";
        check_err(
            &format!("{hosts}[[host_config]]\nhost = \"c.test\"\n"),
            &["host_config[0].host", "not one of general.hosts"],
        );
        check_err(
            &format!("{hosts}[[host_config]]\nhost = \"a.test\"\n[[host_config]]\nhost = \"A.test\"\n"),
            &["host_config[1].host", "has a host_config already"],
        );
        check_err(
            &format!("{hosts}[[host_config]]\nhost = \"a.test\"\n[host_config.modules.mod_inbox]\nenabled = true\n"),
            &["host_config[0].modules.mod_inbox", "once per node"],
        );
        check_err(
            &format!("{hosts}[[host_config]]\nhost = \"a.test\"\n[host_config.modules.mod_mam]\nmax_page_size = 0\n"),
            &["host_config[0].modules.mod_mam.max_page_size"],
        );
        let mut expect = vec!["t.toml", "unknown field `mod_mamm`"];
        expect.extend(meerkat_actors::modules::ModulesConfig::KNOWN);
        check_err(&format!("{hosts}[[host_config]]\nhost = \"a.test\"\n[host_config.modules.mod_mamm]\n"), &expect);
        check_err(
            &format!("{hosts}[[host_config]]\nhost = \"a.test\"\nlisten = 1\n"),
            &["unknown field `listen`", "modules"],
        );
    }

    fn check_err(toml: &str, expect: &[&str]) {
        let e = Config::parse(toml, "t.toml").and_then(|mut c| c.validate("t.toml").map(|_| c));
        let msg = match e {
            Ok(_) => panic!("accepted: {toml}"),
            Err(e) => e.to_string(),
        };
        for part in expect {
            assert!(msg.contains(part), "{msg:?} lacks {part:?}");
        }
    }

    #[test]
    fn bad_configs_name_key_and_reason() {
        check_err("[general]\nhostz = []\n", &["t.toml", "line 2", "unknown field `hostz`"]);
        check_err("[general]\nhosts = []\n", &["general.hosts", "at least one host"]);
        check_err("[[listen.c2s]]\nport = \"x\"\n", &["line 2", "invalid type"]);
        check_err("[[listen.c2s]]\ntls.mode = \"sometimes\"\n", &["unknown variant `sometimes`"]);
        check_err("[auth]\nsasl_mechanisms = [\"digest_md5\"]\n", &["auth.sasl_mechanisms", "digest_md5"]);
        check_err("[auth]\nmethods = [\"ldap\"]\n", &["auth.methods", "ldap", "pki"]);
        check_err(
            "[auth]\nsasl_mechanisms = [\"external\", \"plain\"]\n",
            &["auth.sasl_mechanisms", "\"pki\" in auth.methods"],
        );
        check_err(
            "[auth]\nmethods = [\"rdbms\", \"pki\"]\n",
            &["auth.methods", "\"external\" in auth.sasl_mechanisms"],
        );
        check_err(
            "[auth]\nmethods = [\"rdbms\", \"pki\"]\nsasl_mechanisms = [\"external\"]\nsasl_external = [\"auth_id\"]\n",
            &["auth.sasl_external", "auth_id", "common_name"],
        );
        check_err("[[listen.c2s]]\ntls.verify_mode = \"always\"\n", &["unknown variant `always`", "selfsigned_peer"]);
        check_err("[[listen.c2s]]\ntls.early_data = true\n", &["listen.c2s[0].tls.early_data", "direct TLS"]);
        check_err(
            "[[listen.c2s]]\ntls.certfile = \"/nonexistent.pem\"\ntls.keyfile = \"/nonexistent.key\"\n",
            &["listen.c2s[0].tls.certfile", "does not exist"],
        );
        check_err(
            "[outgoing_pools.rdbms.default]\nconnection.url = \"oracle://x\"\n",
            &["outgoing_pools.rdbms.default.connection.url"],
        );
        check_err("[log]\nlevel = \"info,[\"\n", &["log.level"]);
    }

    #[test]
    fn http_listener_with_websockets() {
        let toml = "[[listen.http]]\nport = 5280\nip = \"127.0.0.1\"\n\
                    [[listen.http.handlers.mod_websockets]]\nhost = \"_\"\npath = \"/ws-xmpp\"\n\
                    [[listen.http.handlers.mod_bosh]]\nhost = \"_\"\npath = \"/http-bind\"\ninactivity = 60\n\
                    [[listen.http]]\nport = 5443\ntls = {}\n\
                    [[listen.http.handlers.mongoose_websocket_handler]]\npath = \"/xmpp\"\nmax_stanza_size = 4096\n";
        let mut cfg = Config::parse(toml, "t.toml").unwrap();
        cfg.validate("t.toml").unwrap();
        let (plain, tls) = (&cfg.listen.http[0], &cfg.listen.http[1]);
        assert_eq!((plain.ip_address, plain.port, plain.tls.is_none()), (IpAddr::from([127, 0, 0, 1]), 5280, true));
        assert_eq!(plain.handlers.mod_websockets[0].path, "/ws-xmpp");
        assert_eq!(plain.handlers.mod_websockets[0].max_stanza_size, 65536);
        let bosh = &plain.handlers.mod_bosh[0];
        assert_eq!((bosh.path.as_str(), bosh.inactivity, bosh.max_wait, bosh.max_hold), ("/http-bind", 60, 60, 1));
        assert!(tls.handlers.mod_bosh.is_empty());
        assert!(tls.tls.as_ref().is_some_and(|t| t.certfile.is_none()));
        assert_eq!(tls.handlers.mod_websockets[0].max_stanza_size, 4096);
        assert!(Config::defaults().unwrap().listen.http.is_empty());
    }

    #[test]
    fn bad_http_listeners_name_the_key() {
        let ws = "[[listen.http.handlers.mod_websockets]]\n";
        check_err("[[listen.http]]\nport = 5281\n", &["listen.http[0].handlers", "mod_websockets"]);
        check_err(&format!("[[listen.http]]\nport = 5222\n{ws}"), &["listen.http[0].port", "listen.c2s[0]"]);
        check_err(
            &format!(
                "[[listen.http]]\nport = 5281\n{ws}[[listen.http]]\nport = 5281\nip_address = \"127.0.0.1\"\n{ws}"
            ),
            &["listen.http[1].port", "listen.http[0]"],
        );
        check_err(
            &format!("[[listen.http]]\nport = 5281\n{ws}path = \"ws\"\n"),
            &["listen.http[0].handlers.mod_websockets[0].path", "must start with '/'"],
        );
        check_err(
            &format!("[[listen.http]]\nport = 5281\n{ws}max_stanza_size = 10\n"),
            &["listen.http[0].handlers.mod_websockets[0].max_stanza_size"],
        );
        check_err(
            &format!("[[listen.http]]\nport = 5281\n{ws}{ws}"),
            &["listen.http[0].handlers.mod_websockets[1].path", "earlier handler"],
        );
        check_err(
            &format!("[[listen.http]]\nport = 5281\ntls.certfile = \"/nonexistent.pem\"\n{ws}"),
            &["listen.http[0].tls", "go together"],
        );
        let bosh = "[[listen.http.handlers.mod_bosh]]\n";
        check_err(
            &format!("[[listen.http]]\nport = 5281\n{ws}path = \"/x\"\n{bosh}path = \"/x\"\n"),
            &["listen.http[0].handlers.mod_bosh[0].path", "earlier handler"],
        );
        check_err(
            &format!("[[listen.http]]\nport = 5281\n{bosh}inactivity = 0\n"),
            &["listen.http[0].handlers.mod_bosh[0].inactivity", "between 1 and"],
        );
        check_err(
            &format!("[[listen.http]]\nport = 5281\n{bosh}max_hold = 100\n"),
            &["listen.http[0].handlers.mod_bosh[0].max_hold"],
        );
        check_err(&format!("[[listen.http]]\nport = 5281\n{bosh}hold = 1\n"), &["unknown field `hold`"]);
        check_err(&format!("[[listen.http]]\nport = 5281\n{ws}timeout = 5\n"), &["unknown field `timeout`"]);
    }

    const GLOBAL: &str = r#"
[general]
hosts = ["example.com", "dc1.example.com"]

[global_distribution]
global_host = "Example.com"
local_host = "dc1.example.com"
message_ttl = 4

[global_distribution.redis]
pool = "global_distrib"
expire_after = 120
refresh_after = 60

[global_distribution.connections]
endpoints = [{ host = "127.0.0.1", port = 5555 }]
advertised_endpoints = [{ host = "10.0.0.1", port = 5555 }, { host = "::1", port = 5556 }]
connections_per_endpoint = 2
hosts_refresh_interval = 3000
disabled_gc_interval = 60

[global_distribution.cache]
jid_lifetime_seconds = 5
max_jids = 10000

[global_distribution.bounce]
enabled = true
resend_after_ms = 200
max_retries = 8

[outgoing_pools.redis.global_distrib]
[outgoing_pools.redis.global_distrib.connection]
host = "127.0.0.1"
port = 6379
database = 5
password = "p@ss:word"
"#;

    fn global(toml: &str) -> Result<Config, ConfigError> {
        let mut c = Config::parse(toml, "t.toml")?;
        c.validate("t.toml")?;
        Ok(c)
    }

    #[test]
    fn global_distribution_example_parses() {
        let cfg = global(GLOBAL).unwrap();
        let g = cfg.global_distribution.as_ref().unwrap();
        assert_eq!(g.global_host, "example.com");
        assert_eq!(g.local_host, "dc1.example.com");
        assert_eq!(g.connections.endpoints[0].listen_addr().unwrap(), "127.0.0.1:5555".parse().unwrap());
        assert_eq!(g.connections.advertised_endpoints[1].advertised(), "[::1]:5556");
        assert_eq!(g.connections.connections_per_endpoint, 2);
        assert_eq!(cfg.global_redis().unwrap().url(), "redis://:p%40ss%3Aword@127.0.0.1:6379/5");
    }

    #[test]
    fn global_distribution_defaults() {
        let cfg = global(
            "[general]\nhosts = [\"example.com\"]\n[global_distribution]\nglobal_host = \"example.com\"\n\
             local_host = \"dc1.example.com\"\n[outgoing_pools.redis.global_distrib]\n",
        )
        .unwrap();
        let g = cfg.global_distribution.as_ref().unwrap();
        assert_eq!(g.message_ttl, 4);
        assert_eq!((g.redis.expire_after, g.redis.refresh_after), (120, 60));
        assert_eq!(g.connections.endpoints, vec![Endpoint { host: "127.0.0.1".into(), port: 5555 }]);
        assert!(g.connections.advertised_endpoints.is_empty());
        assert_eq!((g.cache.jid_lifetime_seconds, g.cache.max_jids), (5, 10_000));
        assert!(g.bounce.enabled);
        assert_eq!(cfg.global_redis().unwrap().url(), "redis://127.0.0.1:6379/0");
    }

    #[test]
    fn bad_global_distribution_names_the_key() {
        let with = |from: &str, to: &str| {
            assert!(GLOBAL.contains(from), "{from}");
            GLOBAL.replacen(from, to, 1)
        };
        check_err(
            &with("global_host = \"Example.com\"", "global_host = \"other.com\""),
            &["global_distribution.global_host", "general.hosts"],
        );
        check_err(
            &with("local_host = \"dc1.example.com\"", "local_host = \"example.com\""),
            &["global_distribution.local_host", "differ"],
        );
        check_err(
            &with("pool = \"global_distrib\"", "pool = \"missing\""),
            &["global_distribution.redis.pool", "outgoing_pools.redis.missing"],
        );
        check_err(
            &with("refresh_after = 60", "refresh_after = 120"),
            &["global_distribution.redis.refresh_after", "less than expire_after"],
        );
        check_err(
            &with("refresh_after = 60", "refresh_after = 200"),
            &["global_distribution.redis.refresh_after", "less than expire_after"],
        );
        check_err(&with("message_ttl = 4", "message_ttl = 0"), &["global_distribution.message_ttl"]);
        check_err(&with("message_ttl = 4", "message_ttl = 300"), &["line 8", "u8"]);
        check_err(
            &with("host = \"127.0.0.1\", port = 5555 }]", "host = \"nonexistent.invalid\", port = 5555 }]"),
            &["global_distribution.connections.endpoints[0]", "nonexistent.invalid"],
        );
        check_err(
            &with("endpoints = [{ host = \"127.0.0.1\", port = 5555 }]", "endpoints = []"),
            &["global_distribution.connections.endpoints", "at least one"],
        );
        check_err(
            &with("port = 5555 }]\nadvertised", "port = 5222 }]\nadvertised"),
            &["global_distribution.connections.endpoints[0]", "listen.c2s[0]"],
        );
        check_err(
            &with("connections_per_endpoint = 2", "connections_per_endpoint = 0"),
            &["global_distribution.connections.connections_per_endpoint"],
        );
        check_err(
            &with("hosts_refresh_interval = 3000", "hosts_refresh_interval = 0"),
            &["global_distribution.connections.hosts_refresh_interval"],
        );
        check_err(&with("max_jids = 10000", "max_jids = 0"), &["global_distribution.cache.max_jids"]);
        check_err(
            &with("resend_after_ms = 200", "resend_after_ms = 0"),
            &["global_distribution.bounce.resend_after_ms"],
        );
        check_err(
            &with(
                "disabled_gc_interval = 60",
                "disabled_gc_interval = 60\n[global_distribution.connections.tls]\ncacertfile = \"/nonexistent-ca.pem\"\n\
                 certfile = \"/nonexistent.pem\"\nkeyfile = \"/nonexistent.key\"",
            ),
            &["global_distribution.connections.tls.cacertfile", "does not exist"],
        );
        check_err(&with("max_retries = 8", "max_retries = 8\nretries = 1"), &["unknown field `retries`"]);
        check_err(&with("port = 6379", "port = 0"), &["outgoing_pools.redis.global_distrib.connection.port"]);
        check_err(
            "[general]\nhosts = [\"example.com\"]\n[global_distribution]\nlocal_host = \"dc1\"\n",
            &["missing field `global_host`"],
        );
    }
}
