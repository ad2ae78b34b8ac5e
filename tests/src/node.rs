//! A real `meerkat` process for black-box tests.
//!
//! [`TestNode::start`] picks free loopback ports, writes a config file into a
//! fresh temporary directory (the data directory, with the default SQLite
//! database, lives inside it too), spawns `meerkat start --config <file>` and
//! returns once the admin API answers `/api/status` with the generated token.
//! Dropping the node stops the process (SIGTERM, then SIGKILL). The node's
//! stdout and stderr go to `node.log` in the directory, which is printed when
//! the node is dropped during a panic (a failing test). The node logs at
//! `info,meerkat_actors=debug` unless `MEERKAT_TEST_LOG` gives another filter.
//!
//! The binary is `$MEERKAT_BIN`, or else `meerkat` next to the test
//! executable's parent directory (`$CARGO_TARGET_DIR/debug/meerkat`), so
//! `cargo build --bin meerkat` must run before the tests.

use std::fs::File;
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// How long a node may take from spawn to a working admin API.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Attempts with fresh ports when another process grabbed one in the meantime.
const START_ATTEMPTS: usize = 5;

/// The `meerkat` binary under test.
pub fn meerkat_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("MEERKAT_BIN") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "MEERKAT_BIN={} does not exist", p.display());
        return p;
    }
    // The test executable is $TARGET/debug/deps/<test>-<hash>.
    let exe = std::env::current_exe().expect("current_exe");
    let candidate = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join(format!("meerkat{}", std::env::consts::EXE_SUFFIX)))
        .expect("test executable has no grandparent directory");
    assert!(
        candidate.is_file(),
        "the meerkat binary is missing at {}: run `cargo build --bin meerkat` first (with the same CARGO_TARGET_DIR), or set MEERKAT_BIN",
        candidate.display()
    );
    candidate
}

/// What a test may change in the generated configuration.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// Extra lines appended to the first (STARTTLS) `[[listen.c2s]]` table,
    /// e.g. `max_stanza_size = 4096`.
    pub listener_toml: String,
    /// Extra lines appended to both `[[listen.c2s]]` tables, e.g.
    /// `tls.cacertfile = "…"`.
    pub c2s_toml: String,
    /// Extra lines appended to the second (direct TLS) `[[listen.c2s]]` table.
    pub tls_listener_toml: String,
    /// Extra TOML appended at the end of the file: whole tables such as
    /// `[session]` or `[modules.mod_register]`.
    pub extra_toml: String,
    /// `[general] shutdown_grace_period`.
    pub shutdown_grace_period: u64,
    /// The address the c2s listeners and the admin API bind to.
    pub ip: std::net::Ipv4Addr,
    /// A command the node runs under, such as `ip netns exec NS`.
    pub command_prefix: Vec<String>,
    /// `[general] hosts`.
    pub hosts: Vec<String>,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            listener_toml: String::new(),
            c2s_toml: String::new(),
            tls_listener_toml: String::new(),
            extra_toml: String::new(),
            shutdown_grace_period: 5,
            ip: std::net::Ipv4Addr::LOCALHOST,
            command_prefix: Vec::new(),
            hosts: vec!["localhost".into()],
        }
    }
}

/// A running (or stopped) `meerkat` process with its own directory and ports.
pub struct TestNode {
    dir: tempfile::TempDir,
    options: NodeOptions,
    child: Option<Child>,
    /// [`TestNode::kill`] ran and no restart since.
    killed: bool,
    /// STARTTLS listener (`tls.mode = "starttls"`).
    pub c2s: SocketAddr,
    /// Direct TLS listener (XEP-0368, `tls.mode = "tls"`).
    pub c2s_tls: SocketAddr,
    /// Admin HTTP API.
    pub admin: SocketAddr,
}

/// A port that is free now and that this process has not handed out before,
/// so that two listeners of one test never get the same port.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        let port = l.local_addr().expect("local_addr").port();
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into()
}

/// Sends SIGTERM or SIGKILL to a process through kill(1) (the workspace forbids `unsafe`, so no libc).
fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

impl TestNode {
    /// Starts a node with default options plus `extra_toml` appended to the config.
    pub fn start(extra_toml: &str) -> TestNode {
        TestNode::start_with(NodeOptions { extra_toml: extra_toml.to_owned(), ..Default::default() })
    }

    /// Starts a node with these options.
    pub fn start_with(options: NodeOptions) -> TestNode {
        let dir = tempfile::Builder::new().prefix("meerkat-test-").tempdir().expect("tempdir");
        let mut node = TestNode {
            dir,
            options,
            child: None,
            killed: false,
            c2s: loopback(0),
            c2s_tls: loopback(0),
            admin: loopback(0),
        };
        node.spawn_until_ready();
        node
    }

    /// Replaces the extra TOML for the next (re)start.
    pub fn set_extra_toml(&mut self, extra: String) {
        self.options.extra_toml = extra;
    }

    /// Kills the process at once (SIGKILL), as a crash would, and reaps it.
    pub fn kill(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.killed = true;
    }

    /// Whether [`TestNode::kill`] ran and [`TestNode::restart`] did not since.
    pub fn was_killed(&self) -> bool {
        self.killed
    }

    /// Starts the node again on the same directory (database, token,
    /// certificate) after it exited. Ports may change.
    pub fn restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            if c.try_wait().ok().flatten().is_none() {
                panic!("restart() while the node is still running");
            }
        }
        self.killed = false;
        self.spawn_until_ready();
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("meerkat.toml")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("node.log")
    }

    /// What the node wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The self-signed certificate the node generated for its listeners.
    pub fn cert_path(&self) -> PathBuf {
        self.data_dir().join("tls").join("selfsigned.pem")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("node is not running").id()
    }

    fn write_config(&self) {
        let o = &self.options;
        let text = format!(
            r#"[general]
hosts = {hosts:?}
data_dir = "{data}"
shutdown_grace_period = {grace}

[[listen.c2s]]
port = {c2s}
ip_address = "{ip}"
tls.mode = "starttls"
{listener}
{both}

[[listen.c2s]]
port = {tls}
ip_address = "{ip}"
tls.mode = "tls"
{both}
{tls_listener}

[admin]
ip_address = "{ip}"
port = {admin}

{extra}
"#,
            hosts = o.hosts,
            data = self.data_dir().display(),
            grace = o.shutdown_grace_period,
            ip = o.ip,
            c2s = self.c2s.port(),
            listener = o.listener_toml,
            both = o.c2s_toml,
            tls_listener = o.tls_listener_toml,
            tls = self.c2s_tls.port(),
            admin = self.admin.port(),
            extra = o.extra_toml,
        );
        std::fs::write(self.config_path(), text).expect("write config");
    }

    fn spawn_until_ready(&mut self) {
        for attempt in 1..=START_ATTEMPTS {
            let ip = std::net::IpAddr::V4(self.options.ip);
            self.c2s = SocketAddr::new(ip, free_port());
            self.c2s_tls = SocketAddr::new(ip, free_port());
            self.admin = SocketAddr::new(ip, free_port());
            self.write_config();
            let log = File::options().create(true).append(true).open(self.log_path()).expect("open node.log");
            let _ = writeln!(
                &log,
                "=== meerkat start (attempt {attempt}) c2s={} tls={} admin={}",
                self.c2s, self.c2s_tls, self.admin
            );
            let mut command = match self.options.command_prefix.split_first() {
                Some((program, args)) => {
                    let mut c = Command::new(program);
                    c.args(args).arg(meerkat_bin());
                    c
                }
                None => Command::new(meerkat_bin()),
            };
            let child = command
                .arg("start")
                .arg("--config")
                .arg(self.config_path())
                .env(
                    "RUST_LOG",
                    std::env::var("MEERKAT_TEST_LOG").unwrap_or_else(|_| "info,meerkat_actors=debug".into()),
                )
                .env_remove("MEERKAT_CONFIG")
                .env_remove("MEERKAT_API")
                .env_remove("MEERKAT_ADMIN_TOKEN")
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("clone log handle"))
                .stderr(log)
                .spawn()
                .expect("spawn meerkat");
            self.child = Some(child);
            match self.wait_ready() {
                Ok(()) => return,
                Err(status) => {
                    let log = self.log();
                    // Someone else took one of our ports between picking and binding: try others.
                    if log.contains("Address already in use") && attempt < START_ATTEMPTS {
                        self.child = None;
                        continue;
                    }
                    panic!("meerkat exited during start-up ({status}); its log:\n{log}");
                }
            }
        }
    }

    /// Polls `/api/status` with a short backoff until it answers 200 with our
    /// token; an early exit of the process is returned as its status.
    fn wait_ready(&mut self) -> Result<(), ExitStatus> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut delay = Duration::from_millis(10);
        let url = format!("{}/api/status", self.admin_url());
        let agent = agent();
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                return Err(status);
            }
            // The token file appears before the API listens. A 401 here means
            // another process answers on the port; keep waiting for ours to exit.
            if let Ok(token) = std::fs::read_to_string(self.data_dir().join("admin.token")) {
                let r = agent.get(&url).header("Authorization", &format!("Bearer {}", token.trim())).call();
                if let Ok(resp) = r {
                    if resp.status().as_u16() == 200 {
                        return Ok(());
                    }
                }
            }
            if Instant::now() > deadline {
                let log = self.log();
                panic!("meerkat did not answer {url} within {START_TIMEOUT:?}; its log:\n{log}");
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_millis(200));
        }
    }

    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    /// The admin token the node generated into `data_dir/admin.token`.
    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data_dir().join("admin.token")).expect("admin.token").trim().to_owned()
    }

    /// An admin API call with the right token: status code and JSON body (`Null` when empty).
    pub fn api(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.api_with_auth(method, path, body, &format!("Bearer {}", self.admin_token()))
    }

    /// An admin API call with the given `Authorization` header value.
    pub fn api_with_auth(&self, method: &str, path: &str, body: Option<Value>, auth: &str) -> (u16, Value) {
        let url = format!("{}{}", self.admin_url(), path);
        let agent = agent();
        let resp = match (method, body) {
            ("GET", _) => agent.get(&url).header("Authorization", auth).call(),
            ("DELETE", _) => agent.delete(&url).header("Authorization", auth).call(),
            ("POST", Some(b)) => agent.post(&url).header("Authorization", auth).send_json(b),
            ("PUT", Some(b)) => agent.put(&url).header("Authorization", auth).send_json(b),
            (m, _) => panic!("unsupported request {m} {path}"),
        };
        let mut resp = resp.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        let value =
            if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        (status, value)
    }

    /// `GET /metrics`, parsed.
    pub fn metrics(&self) -> Metrics {
        let (code, v) = self.api("GET", "/metrics", None);
        assert_eq!(code, 200, "GET /metrics: {v}");
        Metrics(v.as_str().unwrap_or_default().to_owned())
    }

    /// `GET /api/status`.
    pub fn status(&self) -> Value {
        let (code, v) = self.api("GET", "/api/status", None);
        assert_eq!(code, 200, "status: {v}");
        v
    }

    /// Creates `user@localhost` through the admin API.
    pub fn add_user(&self, user: &str, password: &str) {
        self.add_user_at("localhost", user, password);
    }

    /// Creates `user@host` through the admin API.
    pub fn add_user_at(&self, host: &str, user: &str, password: &str) {
        let (code, v) =
            self.api("POST", &format!("/api/users/{host}"), Some(json!({ "username": user, "password": password })));
        assert_eq!(code, 201, "creating {user}: {v}");
    }

    /// Full JIDs of the bound sessions, from the admin API.
    pub fn session_jids(&self) -> Vec<String> {
        let (code, v) = self.api("GET", "/api/sessions", None);
        assert_eq!(code, 200, "sessions: {v}");
        v["sessions"].as_array().into_iter().flatten().filter_map(|s| s["jid"].as_str().map(str::to_owned)).collect()
    }

    /// Runs the binary as a CLI against this node (`meerkat --config F <args>`).
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_with_stdin(args, "")
    }

    /// Like [`TestNode::cli`], writing `stdin` to the command's standard input.
    pub fn cli_with_stdin(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = Command::new(meerkat_bin())
            .arg("--config")
            .arg(self.config_path())
            .args(args)
            .env_remove("MEERKAT_CONFIG")
            .env_remove("MEERKAT_API")
            .env_remove("MEERKAT_ADMIN_TOKEN")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn meerkat CLI");
        {
            let mut input = child.stdin.take().expect("stdin");
            let _ = input.write_all(stdin.as_bytes());
        }
        child.wait_with_output().expect("wait for meerkat CLI")
    }

    /// Sends SIGTERM to the node.
    pub fn sigterm(&self) {
        signal(self.pid(), "TERM");
    }

    /// Waits until the process exits, up to `timeout`; `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        let mut delay = Duration::from_millis(5);
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_millis(50));
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Stops the node: SIGTERM, then SIGKILL if it has not exited after a few seconds.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        if let Some(status) = child.try_wait().ok().flatten() {
            return Some(status);
        }
        let pid = child.id();
        signal(pid, "TERM");
        if let Some(s) = self.wait_exit(Duration::from_secs(self.options.shutdown_grace_period + 5)) {
            return Some(s);
        }
        let child = self.child.as_mut()?;
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        let status = self.stop();
        if std::thread::panicking() {
            eprintln!(
                "---- meerkat node log ({}; exit {status:?}) ----\n{}---- end of node log ----",
                self.log_path().display(),
                self.log()
            );
        }
    }
}

/// A Prometheus text exposition.
#[derive(Clone, Debug)]
pub struct Metrics(pub String);

impl Metrics {
    /// The sum of the samples of `name` whose labels include `labels`; 0
    /// when there is none (a counter not incremented yet is not exported).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples(name, labels).sum()
    }

    /// The first sample `name` whose labels include `labels`, if exported.
    pub fn sample(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples(name, labels).next()
    }

    fn samples<'a>(&'a self, name: &'a str, labels: &'a [(&'a str, &'a str)]) -> impl Iterator<Item = f64> + 'a {
        self.0.lines().filter(|l| !l.starts_with('#')).filter_map(move |line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (n, rest) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let has_all = labels.iter().all(|(k, v)| rest.split(',').any(|l| l == format!("{k}=\"{v}\"")));
            (n == name && has_all).then(|| value.parse().ok()).flatten()
        })
    }
}
