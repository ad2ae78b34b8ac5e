//! The global routing table in Redis.
//!
//! # Keys
//! Every command names one key, and none of them is `MULTI`, `EVAL` or
//! `KEYS`, so the table works against a plain Redis and behind Netflix
//! Dynomite, which replicates it across data centers.
//!
//! | key | type | fields |
//! |---|---|---|
//! | `meerkat:gd:jid:<jid>` (full and bare) | hash | `<local_host>#<node>` → `<session start µs>:<written ms>` |
//! | `meerkat:gd:<global_host>:dcs` | hash | `<local_host>` → `<written ms>` |
//! | `meerkat:gd:<global_host>:endpoints:<local_host>` | hash | `<host:port>` → `<node>:<written ms>` |
//! | `meerkat:gd:<global_host>:alive:<local_host>#<node>` | string | written with `SET EX`; its absence means the data was lost |
//!
//! Each node writes and deletes only fields named after itself, and a value
//! carries the start time of the session it stands for. A reader takes the
//! live field (written within `expire_after`) with the newest session start.
//! So a data center that refreshes an old entry after its user moved cannot
//! overwrite the newer entry of the data center the user moved to: the two
//! live in different fields, and the newer session wins.
//!
//! Keys expire `expire_after` after their last write, and every node rewrites
//! its own data every `refresh_after`, so a data center that vanishes leaves
//! nothing behind for longer than `expire_after`.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::ConnectionManager;
use redis::AsyncCommands;

pub const JID_PREFIX: &str = "meerkat:gd:jid:";
const NS: &str = "meerkat:gd:";

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Where a JID is, as the table says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// The data center's `local_host`.
    pub dc: String,
    /// Start of the newest session there, in µs since the epoch.
    pub start_micros: i64,
}

/// One node's entry for a JID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JidEntry {
    pub start_micros: i64,
    pub written_ms: i64,
}

impl JidEntry {
    pub fn encode(&self) -> String {
        format!("{}:{}", self.start_micros, self.written_ms)
    }

    pub fn decode(s: &str) -> Option<JidEntry> {
        let (a, b) = s.split_once(':')?;
        Some(JidEntry { start_micros: a.parse().ok()?, written_ms: b.parse().ok()? })
    }
}

/// The field a node writes: `<local_host>#<node>`.
pub fn node_field(local_host: &str, node: u64) -> String {
    format!("{local_host}#{node}")
}

/// The newest live entry among a hash's fields. Fields that do not parse are ignored.
pub fn pick_newest(fields: &BTreeMap<String, String>, now_ms: i64, expire_after: Duration) -> Option<Location> {
    let horizon = now_ms - expire_after.as_millis() as i64;
    fields
        .iter()
        .filter_map(|(field, value)| {
            let (dc, _node) = field.rsplit_once('#')?;
            let entry = JidEntry::decode(value)?;
            (entry.written_ms >= horizon).then_some((entry.start_micros, field.as_str(), dc))
        })
        // Newest session first; the field name breaks ties the same way on every reader.
        .max_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1)))
        .map(|(start_micros, _, dc)| Location { dc: dc.to_owned(), start_micros })
}

/// A remote data center's endpoint, as advertised.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    pub addr: String,
    pub node: u64,
}

/// The routing table of one node.
#[derive(Clone)]
pub struct RoutingTable {
    conn: ConnectionManager,
    global_host: String,
    local_host: String,
    node: u64,
    expire_after: Duration,
}

/// Connects to Redis. Fails fast when Redis is not reachable; afterwards the
/// connection re-establishes itself.
pub async fn connect(url: &str) -> Result<ConnectionManager, redis::RedisError> {
    connect_tls(url, None).await
}

/// TLS to Redis (`rediss://`): the CA that signed its certificate (PEM; the
/// system's roots without one) and, for mutual TLS, this node's certificate
/// and key (PEM).
#[derive(Clone, Default)]
pub struct RedisTls {
    pub ca: Option<Vec<u8>>,
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

/// [`connect`], with TLS settings for a `rediss://` URL.
pub async fn connect_tls(url: &str, tls: Option<&RedisTls>) -> Result<ConnectionManager, redis::RedisError> {
    use redis::IntoConnectionInfo;
    let info = url.into_connection_info()?;
    // Dynomite refuses CLIENT SETINFO, which the client would send first.
    let settings = info.redis_settings().clone().set_skip_set_lib_name();
    let info = info.set_redis_settings(settings);
    let client = match tls {
        Some(t) => redis::Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls: t
                    .client
                    .clone()
                    .map(|(client_cert, client_key)| redis::ClientTlsConfig { client_cert, client_key }),
                root_cert: t.ca.clone(),
            },
        )?,
        None => redis::Client::open(info)?,
    };
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_number_of_retries(2)
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(2)));
    ConnectionManager::new_with_config(client, config).await
}

impl RoutingTable {
    pub fn new(
        conn: ConnectionManager,
        global_host: String,
        local_host: String,
        node: u64,
        expire_after: Duration,
    ) -> Self {
        RoutingTable { conn, global_host, local_host, node, expire_after }
    }

    fn dcs_key(&self) -> String {
        format!("{NS}{}:dcs", self.global_host)
    }

    fn endpoints_key(&self, dc: &str) -> String {
        format!("{NS}{}:endpoints:{dc}", self.global_host)
    }

    fn ttl_secs(&self) -> i64 {
        self.expire_after.as_secs().max(1) as i64
    }

    fn field(&self) -> String {
        node_field(&self.local_host, self.node)
    }

    /// Writes this node's entries for JIDs, each with the start of its newest
    /// session here. One pipeline (not a transaction) of single-key commands.
    pub async fn publish(&self, jids: &[(String, i64)]) -> Result<(), redis::RedisError> {
        if jids.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let field = self.field();
        let mut pipe = redis::pipe();
        for (jid, start_micros) in jids {
            let key = format!("{JID_PREFIX}{jid}");
            let value = JidEntry { start_micros: *start_micros, written_ms: now }.encode();
            pipe.hset(&key, &field, value).ignore();
            pipe.expire(&key, self.ttl_secs()).ignore();
        }
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn).await
    }

    /// Removes this node's entries for JIDs.
    pub async fn unpublish(&self, jids: &[String]) -> Result<(), redis::RedisError> {
        if jids.is_empty() {
            return Ok(());
        }
        let field = self.field();
        let mut pipe = redis::pipe();
        for jid in jids {
            pipe.hdel(format!("{JID_PREFIX}{jid}"), &field).ignore();
        }
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn).await
    }

    /// Where a JID is: the newest live entry of any data center.
    pub async fn lookup(&self, jid: &str) -> Result<Option<Location>, redis::RedisError> {
        let mut conn = self.conn.clone();
        let fields: BTreeMap<String, String> = conn.hgetall(format!("{JID_PREFIX}{jid}")).await?;
        Ok(pick_newest(&fields, now_ms(), self.expire_after))
    }

    /// Announces this data center and this node's endpoints, and marks the
    /// node's data as present.
    pub async fn announce(&self, endpoints: &[String]) -> Result<(), redis::RedisError> {
        let now = now_ms();
        let ep_key = self.endpoints_key(&self.local_host);
        let dcs_key = self.dcs_key();
        let mut pipe = redis::pipe();
        pipe.hset(&dcs_key, &self.local_host, now).ignore();
        pipe.expire(&dcs_key, self.ttl_secs()).ignore();
        for ep in endpoints {
            pipe.hset(&ep_key, ep, format!("{}:{now}", self.node)).ignore();
        }
        pipe.expire(&ep_key, self.ttl_secs()).ignore();
        pipe.set_ex(self.alive_key(), now, self.expire_after.as_secs().max(1)).ignore();
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn).await
    }

    fn alive_key(&self) -> String {
        format!("{NS}{}:alive:{}", self.global_host, self.field())
    }

    /// Whether this node's data is still in Redis; false after Redis lost
    /// it (a restart without persistence, a flush, an expiry).
    pub async fn still_present(&self) -> Result<bool, redis::RedisError> {
        let mut conn = self.conn.clone();
        conn.exists(self.alive_key()).await
    }

    /// Removes this node's endpoints (on shutdown).
    pub async fn withdraw(&self, endpoints: &[String]) -> Result<(), redis::RedisError> {
        let ep_key = self.endpoints_key(&self.local_host);
        let mut pipe = redis::pipe();
        for ep in endpoints {
            pipe.hdel(&ep_key, ep).ignore();
        }
        pipe.del(self.alive_key()).ignore();
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn).await
    }

    /// Live data centers other than this one.
    pub async fn remote_dcs(&self) -> Result<Vec<String>, redis::RedisError> {
        let mut conn = self.conn.clone();
        let all: BTreeMap<String, i64> = conn.hgetall(self.dcs_key()).await?;
        let horizon = now_ms() - self.expire_after.as_millis() as i64;
        Ok(all.into_iter().filter(|(dc, at)| *at >= horizon && *dc != self.local_host).map(|(dc, _)| dc).collect())
    }

    /// A data center's live endpoints, sorted.
    pub async fn endpoints(&self, dc: &str) -> Result<Vec<Endpoint>, redis::RedisError> {
        let mut conn = self.conn.clone();
        let all: BTreeMap<String, String> = conn.hgetall(self.endpoints_key(dc)).await?;
        let horizon = now_ms() - self.expire_after.as_millis() as i64;
        let mut eps: Vec<Endpoint> = all
            .into_iter()
            .filter_map(|(addr, v)| {
                let (node, at) = v.split_once(':')?;
                let at: i64 = at.parse().ok()?;
                (at >= horizon).then(|| Endpoint { addr, node: node.parse().unwrap_or(0) })
            })
            .collect();
        eps.sort();
        Ok(eps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(items: &[(&str, &str)]) -> BTreeMap<String, String> {
        items.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn newest_live_session_wins_whoever_wrote_last() {
        let now = 1_000_000;
        let exp = Duration::from_secs(120);
        // dc2 refreshed its old entry after the user moved to dc1: dc1's newer session still wins.
        let f = fields(&[("dc1#1", "500:999000"), ("dc2#7", "100:999999")]);
        assert_eq!(pick_newest(&f, now, exp), Some(Location { dc: "dc1".into(), start_micros: 500 }));
    }

    #[test]
    fn stale_and_garbled_fields_are_ignored() {
        let now = 1_000_000;
        let exp = Duration::from_secs(120);
        let f = fields(&[("dc1#1", "900:1"), ("dc2#2", "100:999999"), ("dc3#3", "garbage"), ("nohash", "5:999999")]);
        assert_eq!(pick_newest(&f, now, exp), Some(Location { dc: "dc2".into(), start_micros: 100 }));
        assert_eq!(pick_newest(&fields(&[("dc1#1", "900:1")]), now, exp), None);
    }

    #[test]
    fn ties_break_the_same_way_everywhere() {
        let f = fields(&[("b#1", "5:10"), ("a#1", "5:10")]);
        assert_eq!(pick_newest(&f, 10, Duration::from_secs(1)).map(|l| l.dc), Some("b".into()));
    }

    #[test]
    fn entry_roundtrip() {
        let e = JidEntry { start_micros: -5, written_ms: 77 };
        assert_eq!(JidEntry::decode(&e.encode()), Some(e));
        assert_eq!(JidEntry::decode("1"), None);
    }
}
