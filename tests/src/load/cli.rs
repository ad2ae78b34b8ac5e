//! Command-line interface of `meerkat-load`.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// XMPP load generator: logs users in, exchanges one-to-one messages,
/// broadcasts presence to rosters or holds idle connections against any
/// XMPP server, and reports throughput, latency and the server's memory.
///
/// Every run prints a human summary, then one JSON line (the last line of
/// standard output). The exit status is 0 when the run succeeded (no failed
/// login, nothing lost), 1 when it completed with failures, 2 on a usage or
/// fatal error.
#[derive(Debug, Parser)]
#[command(name = "meerkat-load", version)]
pub struct Cli {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub scenario: Scenario,
}

/// Options shared by every scenario (they may also follow the scenario name).
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Server address (a name or an IP address).
    #[arg(long, global = true, default_value = "127.0.0.1")]
    pub host: String,
    /// Server c2s port.
    #[arg(long, global = true, default_value_t = 5222)]
    pub port: u16,
    /// XMPP domain: the stream's `to`, and the domain of every user's JID.
    #[arg(long, global = true, default_value = "localhost")]
    pub domain: String,
    /// User names: `{}` is replaced by the user's number.
    #[arg(long, global = true, default_value = "user{}")]
    pub user_pattern: String,
    /// Password of every user.
    #[arg(long, global = true, default_value = "pass")]
    pub password: String,
    /// Number of the first user; users are first-index .. first-index + users - 1.
    #[arg(long, global = true, default_value_t = 1)]
    pub first_index: u64,
    /// Number of users (connections).
    #[arg(long, global = true, default_value_t = 100)]
    pub users: u64,
    /// Logins (or registrations) in flight at once.
    #[arg(long, global = true, default_value_t = 100)]
    pub concurrency: usize,
    /// Resource every user binds.
    #[arg(long, global = true, default_value = "load")]
    pub resource: String,
    /// SASL mechanism.
    #[arg(long, global = true, value_enum, default_value_t = SaslChoice::Plain)]
    pub sasl: SaslChoice,
    /// Transport security: plain TCP, STARTTLS, or TLS from the first byte (XEP-0368).
    #[arg(long, global = true, value_enum, default_value_t = TlsChoice::None)]
    pub tls: TlsChoice,
    /// Trust only the certificates in this PEM file (default: accept any certificate).
    #[arg(long, global = true)]
    pub ca: Option<PathBuf>,
    /// Create the users by XEP-0077 in-band registration before the run
    /// (an existing user counts as created).
    #[arg(long, global = true)]
    pub register: bool,
    /// PID of the server process: sample its RSS and CPU from /proc.
    #[arg(long, global = true)]
    pub pid: Option<u32>,
    /// Seconds of load before the measured window (default per scenario).
    #[arg(long, global = true)]
    pub warmup: Option<f64>,
    /// Seconds of the measured window; for `login`, the longest the logins may take (default per scenario).
    #[arg(long, global = true)]
    pub duration: Option<f64>,
    /// Seconds to wait for in-flight stanzas after the window (chat, presence).
    #[arg(long, global = true, default_value_t = 5.0)]
    pub grace: f64,
    /// Seconds between the end of the logins and the memory reading (login, idle).
    #[arg(long, global = true, default_value_t = 3.0)]
    pub settle: f64,
    /// Seconds one step (connect, an answer) may take before it counts as a failure.
    #[arg(long, global = true, default_value_t = 30.0)]
    pub timeout: f64,
    /// Local addresses to connect from, round robin: comma-separated, and
    /// `A-B` ranges of the last IPv4 octet (`127.0.0.2-127.0.0.9`). Each
    /// address gives one ephemeral port range (~28,000 connections).
    #[arg(long, global = true, value_parser = parse_ips, default_value = "")]
    pub source_ips: IpList,
    /// Generator threads (1 = a single-threaded runtime, best when pinned to one core).
    #[arg(long, global = true, default_value_t = 1)]
    pub threads: usize,
    /// Print only the JSON line, no human summary.
    #[arg(long, global = true)]
    pub json: bool,
    /// Also append the JSON line to this file.
    #[arg(long, global = true)]
    pub json_out: Option<PathBuf>,
    /// Free text stored in the JSON line (e.g. the server's name).
    #[arg(long, global = true, default_value = "")]
    pub label: String,
    /// Run number stored in the JSON line.
    #[arg(long, global = true, default_value_t = 0)]
    pub run: u32,
}

/// A list of local addresses.
#[derive(Debug, Clone, Default)]
pub struct IpList(pub Vec<IpAddr>);

fn parse_ips(s: &str) -> Result<IpList, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((a, b)) = part.split_once('-') {
            let a: std::net::Ipv4Addr = a.trim().parse().map_err(|e| format!("{a}: {e}"))?;
            let b: std::net::Ipv4Addr = b.trim().parse().map_err(|e| format!("{b}: {e}"))?;
            let (oa, ob) = (a.octets(), b.octets());
            if oa[..3] != ob[..3] || oa[3] > ob[3] {
                return Err(format!("{part}: a range differs in the last octet only, low to high"));
            }
            for last in oa[3]..=ob[3] {
                out.push(IpAddr::from([oa[0], oa[1], oa[2], last]));
            }
        } else {
            out.push(part.parse().map_err(|e| format!("{part}: {e}"))?);
        }
    }
    Ok(IpList(out))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SaslChoice {
    Plain,
    #[value(name = "scram-sha-1")]
    ScramSha1,
    #[value(name = "scram-sha-256")]
    ScramSha256,
    /// SASL2 + Bind2 with a FAST token (XEP-0484, HT-SHA-256-NONE); a user
    /// without a token yet logs in with SCRAM-SHA-256 and asks for one.
    Fast,
}

impl SaslChoice {
    pub fn name(self) -> &'static str {
        match self {
            SaslChoice::Plain => "PLAIN",
            SaslChoice::ScramSha1 => "SCRAM-SHA-1",
            SaslChoice::ScramSha256 => "SCRAM-SHA-256",
            SaslChoice::Fast => "FAST",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TlsChoice {
    None,
    Starttls,
    Tls,
}

impl TlsChoice {
    pub fn name(self) -> &'static str {
        match self {
            TlsChoice::None => "none",
            TlsChoice::Starttls => "starttls",
            TlsChoice::Tls => "tls",
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Scenario {
    /// Log N users in, `--concurrency` at a time (connect, TLS, SASL, bind,
    /// initial presence, wait for its echo); report logins/s and time to first presence.
    Login(LoginArgs),
    /// Users in pairs send one-to-one chat messages, open loop (`--rate`) or closed loop (`--window`).
    Chat(ChatArgs),
    /// Users with R mutual roster contacts change presence; report fan-out deliveries/s.
    Presence(PresenceArgs),
    /// Hold N logged-in, available connections open and report the server's memory per session.
    Idle(IdleArgs),
    /// One publisher and N - 1 subscribers of a PubSub node (XEP-0060); the
    /// publisher publishes at --rate items/s; report notifications delivered
    /// per second, latency from publish to delivery, and loss.
    Pubsub(PubsubArgs),
    /// Only create the users (XEP-0077 in-band registration).
    Register,
    /// Read JSON lines written by runs (`--json-out`) and print Markdown
    /// tables: the median of every figure per label, and ratios to the first label.
    Report(ReportArgs),
}

#[derive(Debug, Clone, Args)]
pub struct LoginArgs {
    /// Seconds to keep everybody connected after the memory reading.
    #[arg(long, default_value_t = 0.0)]
    pub hold: f64,
    /// Log everybody in and out once before the measured logins, as a client
    /// that logged in before would: SCRAM salted passwords are then cached
    /// per (salt, iteration count) and FAST tokens are held.
    #[arg(long)]
    pub warm_up: bool,
}

#[derive(Debug, Clone, Args)]
pub struct ChatArgs {
    /// Open loop: messages per second offered in total, spread over all senders.
    #[arg(long, conflicts_with = "window")]
    pub rate: Option<f64>,
    /// Closed loop: messages each sender keeps outstanding (default 10 without `--rate`).
    #[arg(long)]
    pub window: Option<u32>,
    /// Only the first user of each pair sends.
    #[arg(long)]
    pub one_way: bool,
    /// Extra bytes in each body.
    #[arg(long, default_value_t = 0)]
    pub body_pad: usize,
    /// `HOST:PORT` the second user of each pair (the receiver with
    /// `--one-way`) connects to instead of `--host`/`--port`: a node of
    /// another data center, to measure delivery across data centers.
    #[arg(long)]
    pub recv_server: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct PresenceArgs {
    /// Roster contacts of each user (mutual subscriptions, set up first over the protocol).
    #[arg(long, default_value_t = 10)]
    pub contacts: u64,
    /// Presence changes per second in total, spread over all users.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Seconds the roster set-up may take.
    #[arg(long, default_value_t = 120.0)]
    pub setup_timeout: f64,
}

#[derive(Debug, Clone, Args)]
pub struct PubsubArgs {
    /// The PubSub service.
    #[arg(long, default_value = "pubsub.localhost")]
    pub service: String,
    /// The node published to (created by the publisher unless it exists);
    /// by default a new one per run, so that no item of an earlier run is
    /// sent to the new subscribers as the node's last.
    #[arg(long)]
    pub node: Option<String>,
    /// Items published per second.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Seconds the subscriptions may take.
    #[arg(long, default_value_t = 120.0)]
    pub setup_timeout: f64,
}

#[derive(Debug, Clone, Args)]
pub struct IdleArgs {
    /// Seconds between whitespace keepalives each connection sends (0 = none).
    #[arg(long, default_value_t = 60.0)]
    pub keepalive: f64,
}

#[derive(Debug, Clone, Args)]
pub struct ReportArgs {
    /// Files of JSON lines; labels are listed in the order they first appear.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Open-loop latency bound: the highest `chat --rate` with p99 under this many milliseconds is reported.
    #[arg(long, default_value_t = 5.0)]
    pub p99_bound_ms: f64,
}
