//! The `meerkat` command line. Everything but `start` talks to a running
//! node through its admin HTTP API.

use std::io::BufRead as _;
use std::path::PathBuf;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use serde_json::{json, Value};

#[derive(Parser, Debug)]
#[command(name = "meerkat", version, about = "Meerkat XMPP server")]
pub struct Cli {
    /// Config file (also tells the CLI where the admin API and its token are).
    #[arg(long, short, global = true, env = "MEERKAT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Admin API base URL; defaults to the address in the config.
    #[arg(long, global = true, env = "MEERKAT_API")]
    pub api: Option<String>,
    /// Admin API token; defaults to `[admin] token` or the generated `data_dir/admin.token`.
    #[arg(long, global = true, env = "MEERKAT_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the node in the foreground until SIGTERM or Ctrl-C.
    Start,
    /// Manage accounts.
    #[command(subcommand)]
    User(UserCommand),
    /// Inspect and close sessions.
    #[command(subcommand)]
    Session(SessionCommand),
    /// Show the running node's status.
    Status,
    /// Accounts, online users and sessions per host, sessions per node.
    Stats,
    /// Cluster membership: join, leave, remove a dead node, status.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Global distribution across data centers: status, refresh.
    #[command(subcommand)]
    Global(GlobalCommand),
    /// Federation with other servers.
    #[command(subcommand)]
    S2s(S2sCommand),
    /// Send a chat message as a local account, or any stanza (--stanza) as its 'from' would.
    Send {
        /// The sending account (user@host, or a full JID).
        #[arg(long, required_unless_present = "stanza")]
        from: Option<String>,
        /// The recipient.
        #[arg(long, required_unless_present = "stanza")]
        to: Option<String>,
        /// The message body.
        #[arg(required_unless_present = "stanza")]
        body: Option<String>,
        /// A whole stanza (message, presence or iq) with 'from' and 'to'.
        #[arg(long, conflicts_with_all = ["from", "to", "body"])]
        stanza: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum S2sCommand {
    /// Streams to and from other servers on this node: state, authentication, queued stanzas.
    List {
        /// Print the JSON the admin API returns.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum GlobalCommand {
    /// Other data centers, links (connected, queued, unacknowledged, resent), Redis and counters.
    Status {
        /// Print the JSON the admin API returns.
        #[arg(long)]
        json: bool,
    },
    /// Write this node's routing entries to Redis again now (after Redis lost its data, for example).
    Refresh,
}

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Add this node (started with a [cluster] section and no cluster state) to a running cluster.
    Join {
        /// Cluster transport address (host:port) of any member.
        address: String,
    },
    /// Close this node's sessions and take it out of its cluster. The node keeps running, alone.
    Leave,
    /// Take a node (typically a dead one) out of the cluster; its sessions leave the table.
    Remove {
        /// The node's id, as `meerkat cluster status` shows it.
        node: u64,
    },
    /// Members, roles, leader, Raft indexes, replication lag, sessions per node and reachability.
    Status {
        /// Print the JSON the admin API returns.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Create an account. The password is read from --password, or else from the first line of stdin.
    Add {
        /// user@host
        jid: String,
        #[arg(long)]
        password: Option<String>,
    },
    /// Remove an account and all its data, closing its sessions.
    Remove { jid: String },
    /// Close every session of an account, on every node of the cluster.
    Kick { jid: String },
    /// Show an account's roster.
    Roster { jid: String },
    /// Add a contact to an account's roster, or change its name and groups
    /// (pushed to the account's resources; the subscription is unchanged).
    RosterAdd {
        /// user@host
        jid: String,
        /// The contact's bare JID.
        contact: String,
        #[arg(long)]
        name: Option<String>,
        /// A group; repeat for several.
        #[arg(long = "group")]
        groups: Vec<String>,
    },
    /// Remove a contact from an account's roster, ending the subscriptions.
    RosterRemove {
        /// user@host
        jid: String,
        contact: String,
    },
    /// List the accounts of a host (default: the first configured host).
    List { host: Option<String> },
    /// Change a password (from --password, or else the first line of stdin).
    Passwd {
        jid: String,
        #[arg(long)]
        password: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum SessionCommand {
    /// List bound sessions.
    List,
    /// Close a session (full JID) with a stream error.
    Kick { jid: String },
}

/// Where and how to reach the admin API.
pub struct ApiClient {
    base: String,
    auth: String,
    default_host: String,
}

impl ApiClient {
    pub fn new(cli: &Cli, cfg: &crate::config::Config) -> anyhow::Result<ApiClient> {
        let base = cli.api.clone().unwrap_or_else(|| {
            let ip = match cfg.admin.ip_address {
                std::net::IpAddr::V4(v4) if v4.is_unspecified() => "127.0.0.1".to_string(),
                std::net::IpAddr::V6(v6) if v6.is_unspecified() => "[::1]".to_string(),
                std::net::IpAddr::V6(v6) => format!("[{v6}]"),
                ip => ip.to_string(),
            };
            format!("http://{ip}:{}", cfg.admin.port)
        });
        let auth = if let Some(t) = cli.token.clone().or_else(|| cfg.admin.token.clone()) {
            format!("Bearer {t}")
        } else if let (Some(u), Some(p)) = (&cfg.admin.username, &cfg.admin.password) {
            use base64::Engine as _;
            format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}")))
        } else {
            let path = cfg.general.data_dir.join("admin.token");
            let t = std::fs::read_to_string(&path).with_context(|| {
                format!(
                    "no admin token given and {} is unreadable (is the node started with this config?)",
                    path.display()
                )
            })?;
            format!("Bearer {}", t.trim())
        };
        Ok(ApiClient {
            base: base.trim_end_matches('/').to_string(),
            auth,
            default_host: cfg.general.hosts.first().cloned().unwrap_or_default(),
        })
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let url = format!("{}{}", self.base, path);
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let resp = match (method, body) {
            ("GET", _) => agent.get(&url).header("Authorization", &self.auth).call(),
            ("DELETE", _) => agent.delete(&url).header("Authorization", &self.auth).call(),
            ("POST", Some(b)) => agent.post(&url).header("Authorization", &self.auth).send_json(b),
            ("PUT", Some(b)) => agent.put(&url).header("Authorization", &self.auth).send_json(b),
            _ => bail!("unsupported request {method} {path}"),
        };
        let mut resp =
            resp.with_context(|| format!("cannot reach the admin API at {} (is the node running?)", self.base))?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        let value: Value =
            if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        if status >= 400 {
            let msg = value
                .get("detail")
                .or_else(|| value.get("error"))
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| value.to_string());
            bail!("{method} {path}: HTTP {status}: {msg}");
        }
        Ok(value)
    }
}

fn split_jid(jid: &str) -> anyhow::Result<(String, String)> {
    let bare = meerkat_xmpp::jid::parse_bare(jid).with_context(|| format!("{jid:?} is not a JID"))?;
    let user = bare.node().map(|n| n.as_str().to_owned()).with_context(|| format!("{jid:?} has no user part"))?;
    Ok((user, bare.domain().as_str().to_owned()))
}

fn password(given: Option<String>) -> anyhow::Result<String> {
    if let Some(p) = given {
        return Ok(p);
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).context("reading the password from stdin")?;
    let p = line.trim_end_matches(['\r', '\n']).to_string();
    if p.is_empty() {
        bail!("no password: pass --password or write it on stdin");
    }
    Ok(p)
}

fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Runs an admin subcommand and prints its result.
pub fn run_admin(client: &ApiClient, cmd: &Command) -> anyhow::Result<()> {
    match cmd {
        Command::Start => unreachable_start(),
        Command::Status => {
            let v = client.call("GET", "/api/status", None)?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Command::User(UserCommand::Add { jid, password: p }) => {
            let (user, host) = split_jid(jid)?;
            let p = password(p.clone())?;
            client.call(
                "POST",
                &format!("/api/users/{}", enc(&host)),
                Some(json!({ "username": user, "password": p })),
            )?;
            println!("created {user}@{host}");
        }
        Command::User(UserCommand::Remove { jid }) => {
            let (user, host) = split_jid(jid)?;
            client.call("DELETE", &format!("/api/users/{}/{}", enc(&host), enc(&user)), None)?;
            println!("removed {user}@{host}");
        }
        Command::User(UserCommand::List { host }) => {
            let host = host.clone().unwrap_or_else(|| client.default_host.clone());
            let v = client.call("GET", &format!("/api/users/{}", enc(&host)), None)?;
            for u in v["users"].as_array().into_iter().flatten() {
                println!("{}@{host}", u.as_str().unwrap_or_default());
            }
        }
        Command::User(UserCommand::Roster { jid }) => {
            let (user, host) = split_jid(jid)?;
            let v = client.call("GET", &format!("/api/users/{}/{}/roster", enc(&host), enc(&user)), None)?;
            for i in v["items"].as_array().into_iter().flatten() {
                let groups: Vec<&str> =
                    i["groups"].as_array().into_iter().flatten().filter_map(|g| g.as_str()).collect();
                println!(
                    "{}\t{}\t{}{}\t{}",
                    i["jid"].as_str().unwrap_or_default(),
                    i["name"].as_str().unwrap_or("-"),
                    i["subscription"].as_str().unwrap_or_default(),
                    if i["ask"].as_bool().unwrap_or(false) { " (asked)" } else { "" },
                    groups.join(",")
                );
            }
        }
        Command::User(UserCommand::RosterAdd { jid, contact, name, groups }) => {
            let (user, host) = split_jid(jid)?;
            let path = format!("/api/users/{}/{}/roster/{}", enc(&host), enc(&user), enc(contact));
            let mut body = serde_json::json!({ "groups": groups });
            if let Some(n) = name {
                body["name"] = serde_json::json!(n);
            }
            client.call("PUT", &path, Some(body))?;
            println!("{contact} is in the roster of {jid}");
        }
        Command::User(UserCommand::RosterRemove { jid, contact }) => {
            let (user, host) = split_jid(jid)?;
            let path = format!("/api/users/{}/{}/roster/{}", enc(&host), enc(&user), enc(contact));
            client.call("DELETE", &path, None)?;
            println!("{contact} removed from the roster of {jid}");
        }
        Command::Stats => {
            let v = client.call("GET", "/api/stats", None)?;
            for (host, h) in v["hosts"].as_object().into_iter().flatten() {
                println!(
                    "{host}\t{} accounts\t{} online\t{} sessions",
                    h["registered_users"], h["online_users"], h["sessions"]
                );
            }
            for (node, n) in v["sessions_per_node"].as_object().into_iter().flatten() {
                println!("node {node}\t{n} sessions");
            }
            println!("uptime {} s", v["uptime_seconds"]);
        }
        Command::User(UserCommand::Kick { jid }) => {
            let (user, host) = split_jid(jid)?;
            let v = client.call("DELETE", &format!("/api/users/{}/{}/sessions", enc(&host), enc(&user)), None)?;
            println!("closed {} session(s) of {user}@{host}", v["kicked"]);
        }
        Command::User(UserCommand::Passwd { jid, password: p }) => {
            let (user, host) = split_jid(jid)?;
            let p = password(p.clone())?;
            client.call(
                "PUT",
                &format!("/api/users/{}/{}/password", enc(&host), enc(&user)),
                Some(json!({ "password": p })),
            )?;
            println!("password changed for {user}@{host}");
        }
        Command::Session(SessionCommand::List) => {
            let v = client.call("GET", "/api/sessions", None)?;
            for s in v["sessions"].as_array().into_iter().flatten() {
                println!(
                    "{}\tnode {}\tsession {}\t{}",
                    s["jid"].as_str().unwrap_or_default(),
                    s["node"],
                    s["session"].as_str().unwrap_or_default(),
                    if s["available"].as_bool().unwrap_or(false) {
                        format!("available (priority {})", s["priority"])
                    } else {
                        "unavailable".into()
                    }
                );
            }
        }
        Command::Send { stanza: Some(stanza), .. } => {
            let v = client.call("POST", "/api/stanzas", Some(json!({ "stanza": stanza })))?;
            println!("sent {}", v["id"].as_str().unwrap_or_default());
        }
        Command::Send { from, to, body, stanza: None } => {
            let v = client.call("POST", "/api/messages", Some(json!({ "from": from, "to": to, "body": body })))?;
            println!("sent {}", v["id"].as_str().unwrap_or_default());
        }
        Command::Session(SessionCommand::Kick { jid }) => {
            client.call("DELETE", &format!("/api/sessions/{}", enc(jid)), None)?;
            println!("closing {jid}");
        }
        Command::Cluster(ClusterCommand::Join { address }) => {
            let v = client.call("POST", "/api/cluster/join", Some(json!({ "address": address })))?;
            println!("node {} joined the cluster through {address}", v["node"]);
            print_cluster(&v);
        }
        Command::Cluster(ClusterCommand::Leave) => {
            let v = client.call("POST", "/api/cluster/leave", Some(json!({})))?;
            println!("node {} left the cluster", v["left"]);
        }
        Command::Cluster(ClusterCommand::Remove { node }) => {
            client.call("DELETE", &format!("/api/cluster/nodes/{node}"), None)?;
            println!("node {node} removed from the cluster");
        }
        Command::Cluster(ClusterCommand::Status { json }) => {
            let v = client.call("GET", "/api/cluster", None)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_cluster(&v);
            }
        }
        Command::Global(GlobalCommand::Status { json }) => {
            let v = client.call("GET", "/api/global", None)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_global(&v);
            }
        }
        Command::S2s(S2sCommand::List { json }) => {
            let v = client.call("GET", "/api/s2s", None)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_s2s(&v);
            }
        }
        Command::Global(GlobalCommand::Refresh) => {
            let v = client.call("POST", "/api/global/refresh", Some(json!({})))?;
            println!("wrote {} routing entries", v["refreshed"]);
        }
    }
    Ok(())
}

fn print_s2s(v: &Value) {
    let rows = |key: &str| v[key].as_array().cloned().unwrap_or_default();
    println!("out:");
    for o in rows("outgoing") {
        println!(
            "  {} -> {}  {}  {}  queued {}",
            o["local"].as_str().unwrap_or_default(),
            o["remote"].as_str().unwrap_or_default(),
            o["state"].as_str().unwrap_or_default(),
            o["auth"].as_str().unwrap_or_default(),
            o["queued"]
        );
    }
    println!("in:");
    for i in rows("incoming") {
        let domains: Vec<&str> = i["domains"].as_array().into_iter().flatten().filter_map(|d| d.as_str()).collect();
        println!(
            "  {} -> {}  {}  {}  tls {}  [{}]",
            i["peer"].as_str().unwrap_or_default(),
            i["local"].as_str().unwrap_or("-"),
            i["state"].as_str().unwrap_or_default(),
            i["auth"].as_str().unwrap_or_default(),
            i["tls"],
            domains.join(", ")
        );
    }
}

fn print_global(v: &Value) {
    let list = |x: &Value| {
        let items: Vec<&str> = x.as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        if items.is_empty() {
            "-".to_string()
        } else {
            items.join(", ")
        }
    };
    let r = &v["redis"];
    println!(
        "global {} - this data center {} - endpoints {} - {} local sessions",
        v["global_host"].as_str().unwrap_or_default(),
        v["local_host"].as_str().unwrap_or_default(),
        list(&v["advertised_endpoints"]),
        v["local_sessions"],
    );
    println!(
        "redis {} - {} errors, {} full refreshes{}",
        if r["reachable"].as_bool().unwrap_or(false) { "reachable" } else { "UNREACHABLE" },
        r["errors"],
        r["full_refreshes"],
        r["last_error"].as_str().map(|e| format!(" - last error: {e}")).unwrap_or_default(),
    );
    println!(
        "{:<24} {:<24} {:<12} {:>8} {:>8} {:>8} {:>10}",
        "data center", "endpoint", "link", "queued", "unacked", "resent", "failures"
    );
    let dcs = v["data_centers"].as_array().map(Vec::as_slice).unwrap_or_default();
    if dcs.is_empty() {
        println!("{:<24} (no other data center known yet)", "-");
    }
    for dc in dcs {
        let name = dc["local_host"].as_str().unwrap_or_default();
        let links = dc["links"].as_array().map(Vec::as_slice).unwrap_or_default();
        if links.is_empty() {
            println!("{:<24} {:<24} {:<12}", name, list(&dc["endpoints"]), "no link");
        }
        for l in links {
            let state = match (l["disabled"].as_bool().unwrap_or(false), l["connected"].as_bool().unwrap_or(false)) {
                (true, _) => "disabled",
                (false, true) => "connected",
                (false, false) => "down",
            };
            println!(
                "{:<24} {:<24} {:<12} {:>8} {:>8} {:>8} {:>10}",
                name,
                l["endpoint"].as_str().unwrap_or_default(),
                state,
                l["queued"].to_string(),
                l["unacked"].to_string(),
                l["resent"].to_string(),
                l["failures"].to_string(),
            );
        }
    }
    let q = &v["queues"];
    println!(
        "queues: {} pairs, {} pending, {} in flight, {} parked",
        q["pairs"], q["pending"], q["in_flight"], q["parked_pairs"]
    );
    let counters: Vec<String> =
        v["counters"].as_object().into_iter().flatten().map(|(k, n)| format!("{k} {n}")).collect();
    println!("counters: {}", counters.join(", "));
}

fn print_cluster(v: &Value) {
    let opt = |x: &Value| if x.is_null() { "-".to_string() } else { x.to_string() };
    println!(
        "cluster {} - this node {} ({}{}) - leader {} - term {} - log {} committed {} applied {}",
        v["cluster"].as_str().unwrap_or_default(),
        v["node"],
        v["state"].as_str().unwrap_or_default(),
        if v["ready"].as_bool().unwrap_or(false) { ", ready" } else { ", not ready" },
        opt(&v["leader"]),
        v["term"],
        opt(&v["last_log_index"]),
        opt(&v["committed_index"]),
        opt(&v["applied_index"]),
    );
    println!("{:>6}  {:<24} {:<8} {:<12} {:>8} {:>6}", "node", "address", "role", "state", "sessions", "lag");
    for m in v["members"].as_array().into_iter().flatten() {
        let state = if m["down"].as_bool().unwrap_or(false) {
            "down"
        } else if m["reachable"].as_bool().unwrap_or(false) {
            "reachable"
        } else {
            "unreachable"
        };
        println!(
            "{:>6}  {:<24} {:<8} {:<12} {:>8} {:>6}",
            m["id"].to_string(),
            m["address"].as_str().unwrap_or_default(),
            m["role"].as_str().unwrap_or_default(),
            state,
            m["sessions"].to_string(),
            opt(&m["lag"]),
        );
    }
}

fn unreachable_start() {
    // `start` is dispatched by main before this function is reached.
}
