//! What the web client tests share: the npm packages of `tests/js` (pinned in
//! its lock file) and Node.js, and [`EchoPeer`], a slixmpp user
//! (`tests/python/echo_peer.py`) that answers each chat message with
//! "echo: <body>".

use std::io::{BufRead as _, BufReader, Read as _};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::TestNode;

/// `tests/js`, the npm package of the JavaScript clients.
pub fn js_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("js")
}

/// `npm ci` in `tests/js`, unless `node_modules` already matches the lock file.
pub fn npm_ci() {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = js_dir();
    let lock = std::fs::read(dir.join("package-lock.json")).expect("tests/js/package-lock.json");
    let stamp = dir.join("node_modules/.meerkat-package-lock.json");
    if std::fs::read(&stamp).is_ok_and(|s| s == lock) {
        return;
    }
    let mut last = String::new();
    for attempt in 1..=3 {
        // --prefer-offline uses the npm cache when it has the packages, the registry otherwise.
        let out = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--prefer-offline", "--loglevel=error", "--fetch-retries=4"])
            .current_dir(&dir)
            .output();
        match out {
            Ok(o) if o.status.success() => {
                std::fs::write(&stamp, &lock).expect("write the node_modules stamp");
                return;
            }
            Ok(o) => last = format!("{}: {}", o.status, String::from_utf8_lossy(&o.stderr)),
            Err(e) => panic!("running npm: {e} (the web client tests need Node.js 20+ and npm on the PATH)"),
        }
        std::thread::sleep(Duration::from_secs(2 * attempt));
    }
    panic!("npm ci in {} failed three times; last: {last}", dir.display());
}

/// Flags for `node`: checks it is 20 or later; before 22 the global
/// WebSocket that `@xmpp/websocket` uses is behind a flag.
pub fn node_flags() -> Vec<&'static str> {
    let out = Command::new("node").arg("--version").output().expect("node --version (Node.js 20+ is needed)");
    let version = String::from_utf8_lossy(&out.stdout);
    let major: u32 = version.trim().trim_start_matches('v').split('.').next().and_then(|m| m.parse().ok()).unwrap_or(0);
    assert!(major >= 20, "Node.js 20 or later is needed, found {version}");
    if major < 22 {
        vec!["--experimental-websocket", "--no-warnings=ExperimentalWarning"]
    } else {
        vec![]
    }
}

/// The Python of the virtualenv with slixmpp (`$MEERKAT_VENV`, by default
/// `/var/tmp/meerkat-venv`), which `tests/run.sh` sets up.
pub fn venv_python() -> PathBuf {
    let venv =
        std::env::var_os("MEERKAT_VENV").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/var/tmp/meerkat-venv"));
    let py = venv.join("bin/python");
    assert!(py.is_file(), "{} is missing: run ./tests/run.sh, which installs slixmpp there", py.display());
    py
}

/// Runs `tests/python/<script>` with `args`, then `--port` and `--ca` of
/// `node`'s c2s listener, and returns the JSON summary it prints last;
/// fails the test, with both outputs and the node's log, when it exits
/// with an error.
pub fn python_scenario(script: &str, args: &[&str], node: &crate::TestNode) -> serde_json::Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python").join(script);
    let out = Command::new(venv_python())
        .arg(path)
        .args(args)
        .args(["--port", &node.c2s.port().to_string()])
        .arg("--ca")
        .arg(node.cert_path())
        .output()
        .unwrap_or_else(|e| panic!("running {script}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{script} {args:?} failed:\n{stdout}\n{}\nnode log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        node.log()
    );
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{script}: the last line is not JSON ({e}):\n{stdout}"))
}

/// A running `tests/python/echo_peer.py`: a slixmpp user, logged in over
/// STARTTLS with the node's certificate verified, that accepts subscription
/// requests and answers `count` chat messages with "echo: <body>".
pub struct EchoPeer {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr: Option<JoinHandle<String>>,
    /// The full JID it is bound to.
    pub jid: String,
}

impl EchoPeer {
    /// Starts the peer as `jid` (with a resource) on `node` and waits until it
    /// is online. With `hold`, it stays online after its last answer until
    /// [`EchoPeer::finish`].
    pub fn start(node: &TestNode, jid: &str, password: &str, count: usize, hold: bool, timeout: Duration) -> EchoPeer {
        let mut args: Vec<String> = vec![
            "--host".into(),
            node.c2s.ip().to_string(),
            "--port".into(),
            node.c2s.port().to_string(),
            "--domain".into(),
            crate::DOMAIN.into(),
            "--jid".into(),
            jid.into(),
            "--password".into(),
            password.into(),
            "--ca".into(),
            node.cert_path().display().to_string(),
            "--count".into(),
            count.to_string(),
            "--timeout".into(),
            timeout.as_secs().to_string(),
        ];
        if hold {
            args.push("--hold".into());
        }
        EchoPeer::spawn("echo_peer.py", &args, jid, timeout)
    }

    /// Runs `tests/python/<script>` with `args` and waits until it prints
    /// `{"ready": true, ...}`; `label` names it in failures.
    pub fn spawn(script: &str, args: &[String], label: &str, timeout: Duration) -> EchoPeer {
        let jid = label;
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python").join(script);
        let mut cmd = Command::new(venv_python());
        cmd.arg(&script).args(args);
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut stderr = child.stderr.take().expect("stderr");
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        let stdin = child.stdin.take();
        let mut peer = EchoPeer { child, stdin, lines, stderr: Some(stderr), jid: String::new() };
        let deadline = Instant::now() + timeout;
        let ready = loop {
            match peer.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => match serde_json::from_str::<serde_json::Value>(&line) {
                    Ok(v) if v["ready"] == true => break v,
                    _ => continue,
                },
                Err(e) => {
                    let why = if e == RecvTimeoutError::Timeout { "timed out" } else { "exited" };
                    let _ = peer.child.kill();
                    let _ = peer.child.wait();
                    panic!("the slixmpp peer {jid} {why} before it was online:\n{}", peer.stderr_text());
                }
            }
        };
        peer.jid = ready["jid"].as_str().unwrap_or_default().to_owned();
        peer
    }

    /// Ends `--hold`, waits for the peer to exit and returns its JSON summary;
    /// panics if it failed or is not done within `timeout`.
    pub fn finish(mut self, timeout: Duration) -> serde_json::Value {
        self.stdin.take();
        let deadline = Instant::now() + timeout;
        let mut last = None;
        loop {
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => last = Some(line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    let stderr = self.stderr_text();
                    panic!("the slixmpp peer {} is not done after {timeout:?}:\n{stderr}", self.jid);
                }
            }
        }
        let status = self.child.wait().expect("wait for the slixmpp peer");
        let stderr = self.stderr_text();
        let last = last.unwrap_or_default();
        assert!(status.success(), "the slixmpp peer {} failed ({status}):\n{last}\n{stderr}", self.jid);
        let summary: serde_json::Value = serde_json::from_str(&last).expect("the peer's JSON summary");
        assert_eq!(summary["ok"], true, "{summary}\n{stderr}");
        summary
    }

    fn stderr_text(&mut self) -> String {
        self.stderr.take().map(|h| h.join().unwrap_or_default()).unwrap_or_default()
    }
}

impl Drop for EchoPeer {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
