//! Several real `meerkat` processes forming one cluster.
//!
//! [`TestCluster::start`] starts node 1 with `bootstrap = true`, then every
//! other node with no cluster state, joined through `meerkat cluster join`
//! (the CLI, as an operator would). All nodes share one database: a fresh
//! PostgreSQL database per cluster ([`SharedDb::postgres`]), or one SQLite
//! file ([`SharedDb::sqlite`], for nodes in network namespaces that cannot
//! reach PostgreSQL on the host's loopback).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::node::{NodeOptions, TestNode};
use crate::wait_until;

/// The database every node of a test cluster uses.
pub struct SharedDb {
    pub url: String,
    pg_name: Option<String>,
    mysql_name: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl SharedDb {
    /// A new, empty PostgreSQL database on the local server (dropped with the value).
    pub fn postgres() -> SharedDb {
        let base =
            std::env::var("MEERKAT_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let name = format!("meerkat_cluster_{}_{}", std::process::id(), rand::random::<u32>());
        psql(&base, &format!("CREATE DATABASE {name}"));
        let url = match base.rfind('/') {
            Some(i) => format!("{}/{name}", &base[..i]),
            None => panic!("MEERKAT_TEST_PG_URL has no database part: {base}"),
        };
        SharedDb { url, pg_name: Some(name), mysql_name: None, _dir: None }
    }

    /// A new, empty MariaDB (or MySQL) database on the local server, from
    /// `MEERKAT_TEST_MYSQL_URL` (default `mysql://root@127.0.0.1:3306/test`;
    /// dropped with the value).
    pub fn mysql() -> SharedDb {
        let base = mysql_base();
        let name = format!("meerkat_node_{}_{}", std::process::id(), rand::random::<u32>());
        mysql_exec(&base, &format!("CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"));
        let url = match base.rfind('/') {
            Some(i) => format!("{}/{name}", &base[..i]),
            None => panic!("MEERKAT_TEST_MYSQL_URL has no database part: {base}"),
        };
        SharedDb { url, pg_name: None, mysql_name: Some(name), _dir: None }
    }

    /// One SQLite file in a fresh directory, shared by every node of the machine.
    pub fn sqlite() -> SharedDb {
        let dir = tempfile::Builder::new().prefix("meerkat-cluster-db-").tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("shared.db").display());
        SharedDb { url, pg_name: None, mysql_name: None, _dir: Some(dir) }
    }
}

fn psql(url: &str, sql: &str) {
    let out = Command::new("psql").arg(url).arg("-v").arg("ON_ERROR_STOP=1").arg("-qc").arg(sql).output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!("psql {sql:?} failed: {}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => panic!("cannot run psql: {e}"),
    }
}

fn mysql_base() -> String {
    std::env::var("MEERKAT_TEST_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
}

/// Runs one statement with the `mariadb` client against the server of `url`
/// (`mysql://USER[:PASSWORD]@HOST:PORT/DB`).
fn mysql_exec(url: &str, sql: &str) {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let (auth, host) = rest.split_once('@').unwrap_or(("root", rest));
    let (user, password) = auth.split_once(':').unwrap_or((auth, ""));
    let host = host.split('/').next().unwrap_or("127.0.0.1:3306");
    let (host, port) = host.split_once(':').unwrap_or((host, "3306"));
    let mut cmd = Command::new("mariadb");
    cmd.args(["-h", host, "-P", port, "-u", user, "-e", sql]);
    if !password.is_empty() {
        cmd.arg(format!("-p{password}"));
    }
    match cmd.output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!("mariadb {sql:?} failed: {}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => panic!("cannot run the mariadb client: {e}"),
    }
}

impl Drop for SharedDb {
    fn drop(&mut self) {
        if let Some(name) = &self.mysql_name {
            let sql = format!("DROP DATABASE IF EXISTS {name}");
            let _ = std::panic::catch_unwind(|| mysql_exec(&mysql_base(), &sql));
        }
        if let Some(name) = &self.pg_name {
            let base = std::env::var("MEERKAT_TEST_PG_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
            let _ = Command::new("psql")
                .arg(&base)
                .arg("-qc")
                .arg(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .output();
        }
    }
}

/// Where one node of a cluster lives.
#[derive(Clone, Debug)]
pub struct Placement {
    /// Address the c2s listeners and the admin API bind to.
    pub ip: Ipv4Addr,
    /// Address of the cluster transport.
    pub cluster_addr: SocketAddr,
    /// `ip netns exec NS` and the like.
    pub command_prefix: Vec<String>,
}

impl Placement {
    /// On loopback, with a free port for the cluster transport.
    pub fn loopback() -> Placement {
        let port = crate::node::free_port();
        Placement {
            ip: Ipv4Addr::LOCALHOST,
            cluster_addr: SocketAddr::from(([127, 0, 0, 1], port)),
            command_prefix: vec![],
        }
    }
}

/// A cluster of real nodes. `nodes[i]` has node id `i + 1`.
pub struct TestCluster {
    pub name: String,
    pub db: SharedDb,
    pub nodes: Vec<TestNode>,
    pub placements: Vec<Placement>,
}

/// The `cluster.shared_secret` every test cluster is given.
pub const CLUSTER_SECRET: &str = "test-cluster-shared-secret";

/// The `[cluster]` and database TOML of one node.
pub fn cluster_toml(name: &str, db_url: &str, id: u64, placement: &Placement, bootstrap: bool) -> String {
    format!(
        r#"[outgoing_pools.rdbms.default]
workers = 4
connection.url = "{db_url}"

[cluster]
name = "{name}"
node_id = {id}
listen = "{addr}"
bootstrap = {bootstrap}
heartbeat_interval_ms = 200
election_timeout_min_ms = 1000
election_timeout_max_ms = 2000
down_after = 4
commit_timeout = 3
shared_secret = "{CLUSTER_SECRET}"
"#,
        addr = placement.cluster_addr,
    )
}

impl TestCluster {
    /// `n` nodes on loopback sharing a fresh PostgreSQL database.
    pub fn start(n: usize) -> TestCluster {
        TestCluster::start_placed(SharedDb::postgres(), (0..n).map(|_| Placement::loopback()).collect())
    }

    /// One node per placement, node 1 bootstrapping and the others joining it.
    pub fn start_placed(db: SharedDb, placements: Vec<Placement>) -> TestCluster {
        TestCluster::start_configured(db, placements.into_iter().map(|p| (p, String::new())).collect())
    }

    /// [`TestCluster::start_placed`], with extra TOML (whole tables) for each node.
    pub fn start_configured(db: SharedDb, nodes: Vec<(Placement, String)>) -> TestCluster {
        let name = format!("test-{}", rand::random::<u32>());
        let mut cluster = TestCluster { name, db, nodes: Vec::new(), placements: Vec::new() };
        for (p, extra) in nodes {
            cluster.add_node_with(p, &extra);
        }
        cluster
    }

    /// Starts one more node and joins it through the CLI; returns its index.
    pub fn add_node(&mut self, placement: Placement) -> usize {
        self.add_node_with(placement, "")
    }

    /// [`TestCluster::add_node`], with extra TOML (whole tables) in its config.
    pub fn add_node_with(&mut self, placement: Placement, extra: &str) -> usize {
        let id = self.nodes.len() as u64 + 1;
        let bootstrap = self.nodes.is_empty();
        let options = NodeOptions {
            extra_toml: format!("{}\n{extra}", cluster_toml(&self.name, &self.db.url, id, &placement, bootstrap)),
            ip: placement.ip,
            command_prefix: placement.command_prefix.clone(),
            ..Default::default()
        };
        let node = TestNode::start_with(options);
        if !bootstrap {
            let seed = self.placements[0].cluster_addr.to_string();
            let out = node.cli(&["cluster", "join", &seed]);
            assert!(
                out.status.success(),
                "cluster join of node {id} failed: {}{}\n--- node log ---\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                node.log()
            );
        }
        self.nodes.push(node);
        self.placements.push(placement);
        let i = self.nodes.len() - 1;
        self.wait_ready(i, Duration::from_secs(30));
        i
    }

    /// `GET /api/cluster` on node `i`.
    pub fn status(&self, i: usize) -> Value {
        let (code, v) = self.nodes[i].api("GET", "/api/cluster", None);
        assert_eq!(code, 200, "cluster status of node {}: {v}", i + 1);
        v
    }

    /// Waits until node `i` has registered with the cluster and accepts logins.
    pub fn wait_ready(&self, i: usize, timeout: Duration) {
        wait_until(&format!("node {} ready", i + 1), timeout, || self.status(i)["ready"] == Value::Bool(true));
    }

    /// The session table as node `i` sees it: sorted (jid, node) pairs.
    pub fn table(&self, i: usize) -> Vec<(String, u64)> {
        let (code, v) = self.nodes[i].api("GET", "/api/sessions", None);
        assert_eq!(code, 200, "sessions: {v}");
        let mut t: Vec<(String, u64)> = v["sessions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| (s["jid"].as_str().unwrap_or_default().to_owned(), s["node"].as_u64().unwrap_or(0)))
            .collect();
        t.sort();
        t
    }

    /// Creates `user@localhost` (the database is shared, so once is enough).
    pub fn add_user(&self, user: &str, password: &str) {
        self.nodes[0].add_user(user, password);
    }

    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.nodes[i].data_dir()
    }
}
