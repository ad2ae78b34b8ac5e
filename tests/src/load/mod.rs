//! `meerkat-load`: the XMPP load generator (binary `src/bin/meerkat-load.rs`).
//!
//! - [`cli`]: options and scenarios.
//! - [`conn`]: one lean client connection (TCP from a chosen source
//!   address, STARTTLS or direct TLS, SASL PLAIN/SCRAM, bind, presence).
//! - [`frame`]: the fast path while traffic flows: top-level elements and
//!   probes read from the bytes, without element trees.
//! - [`pool`]: many logins at a fixed concurrency, in-band registration,
//!   idle connection holders.
//! - [`traffic`]: the measured part of `chat` and `presence` (open or closed loop).
//! - [`procstat`]: the server's RSS and CPU, and the generator's CPU, from /proc.
//! - [`scenarios`]: `login`, `chat`, `presence`, `idle`, `register`.
//! - [`report`]: Markdown tables from JSON lines (medians, ratios).

pub mod cli;
pub mod conn;
pub mod frame;
pub mod pool;
pub mod procstat;
pub mod pubsub;
pub mod report;
pub mod scenarios;
pub mod traffic;

use std::io::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser as _;
use serde_json::{json, Map, Value};

use cli::{Cli, Scenario};

/// What a scenario hands back: a human summary, JSON fields, and whether it succeeded.
pub struct RunResult {
    pub human: String,
    pub json: Map<String, Value>,
    pub success: bool,
}

/// Entry point of the binary; returns the exit status.
pub fn main() -> i32 {
    let cli = Cli::parse();
    if let Scenario::Report(args) = &cli.scenario {
        return match report::run(args) {
            Ok(text) => {
                let _ = std::io::stdout().lock().write_all(text.as_bytes());
                0
            }
            Err(e) => {
                eprintln!("meerkat-load: {e:#}");
                2
            }
        };
    }
    raise_nofile(cli.common.users);
    let runtime = if cli.common.threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(cli.common.threads).enable_all().build()
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("meerkat-load: cannot start the runtime: {e}");
            return 2;
        }
    };
    let result = runtime.block_on(scenarios::run(&cli));
    // Do not wait for tasks still draining sockets.
    runtime.shutdown_timeout(Duration::from_millis(100));
    match result {
        Ok(r) => {
            let line = json_line(&cli, r.json, r.success);
            {
                // A closed pipe (`| head`) is no reason to fail the run.
                let mut out = std::io::stdout().lock();
                if !cli.common.json {
                    let _ = writeln!(out, "{}", r.human.trim_end());
                }
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            }
            if let Some(path) = &cli.common.json_out {
                let written = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .and_then(|mut f| writeln!(f, "{line}"));
                if let Err(e) = written {
                    eprintln!("meerkat-load: {}: {e}", path.display());
                    return 2;
                }
            }
            if r.success {
                0
            } else {
                1
            }
        }
        Err(e) => {
            eprintln!("meerkat-load: {e:#}");
            2
        }
    }
}

fn json_line(cli: &Cli, fields: Map<String, Value>, success: bool) -> String {
    let c = &cli.common;
    let mut obj = Map::new();
    obj.insert("scenario".into(), json!(scenarios::name(&cli.scenario)));
    obj.insert("label".into(), json!(c.label));
    obj.insert("run".into(), json!(c.run));
    obj.insert("success".into(), json!(success));
    obj.insert("server".into(), json!(format!("{}:{}", c.host, c.port)));
    obj.insert("domain".into(), json!(c.domain));
    obj.insert("users".into(), json!(c.users));
    obj.insert("concurrency".into(), json!(c.concurrency));
    obj.insert("sasl".into(), json!(c.sasl.name()));
    obj.insert("tls".into(), json!(c.tls.name()));
    obj.insert("pid".into(), json!(c.pid));
    obj.insert("threads".into(), json!(c.threads));
    obj.extend(fields);
    let ts = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    obj.insert("unix_time".into(), json!(ts));
    Value::Object(obj).to_string()
}

/// Raises the soft open-file limit to the hard one, and warns when it is
/// still too low for `users` connections.
fn raise_nofile(users: u64) {
    let limit = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0);
    if limit > 0 && limit < users + 64 {
        eprintln!(
            "meerkat-load: warning: the open-file limit is {limit}, below {users} connections; raise it (ulimit -n) as root"
        );
    }
}
