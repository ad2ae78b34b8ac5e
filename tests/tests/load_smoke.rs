//! Smoke runs of every `meerkat-load` scenario against a real node: a few
//! users for a second or two, so the generator cannot rot. They check that
//! each run completes and accounts for every stanza, never how fast it was.

use std::path::Path;
use std::process::Command;

use meerkat_tests::{NodeOptions, TestNode};
use serde_json::Value;

/// The generator binary, built by Cargo for this package's integration tests.
const LOAD_BIN: &str = env!("CARGO_BIN_EXE_meerkat-load");

/// Short runs: half a second of warm-up, a second and a half measured.
const SHORT: &[&str] = &["--warmup", "0.5", "--duration", "1.5", "--grace", "10", "--settle", "0.2"];

/// Runs `meerkat-load` with these arguments; returns its JSON line, failing the test on a non-zero exit.
fn load(args: &[&str], json_out: &Path) -> Value {
    let out = Command::new(LOAD_BIN)
        .args(args)
        .arg("--json-out")
        .arg(json_out)
        .output()
        .unwrap_or_else(|e| panic!("running {LOAD_BIN}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "meerkat-load {args:?} failed ({}):\n{stdout}\n{stderr}", out.status);
    let last = stdout.lines().last().unwrap_or_default();
    let v: Value = serde_json::from_str(last).unwrap_or_else(|e| panic!("last line is not JSON ({e}): {stdout}"));
    assert_eq!(v["success"], true, "{v}");
    v
}

use meerkat_tests::node::free_port;

/// A node with an extra plain-TCP listener, PLAIN allowed without TLS and
/// passwords stored as they are: the conditions of the peer comparison.
fn peer_conditions_node() -> (TestNode, u16) {
    let plain = free_port();
    let node = TestNode::start_with(NodeOptions {
        extra_toml: format!(
            "[auth]\nallow_plain_without_tls = true\npassword.format = \"plain\"\n\n\
             [modules.mod_register]\nregistration_timeout = 0\n\n\
             [modules.mod_pubsub]\nenabled = true\n\n\
             [[listen.c2s]]\nport = {plain}\nip_address = \"127.0.0.1\"\ntls.mode = \"none\"\n"
        ),
        ..Default::default()
    });
    (node, plain)
}

#[test]
fn every_scenario_runs_in_peer_conditions() {
    let (node, port) = peer_conditions_node();
    let dir = tempfile::tempdir().expect("tempdir");
    let jsonl = dir.path().join("runs.jsonl");
    let pid = node.pid().to_string();
    let port = port.to_string();
    let base = ["--port", &port, "--users", "6", "--pid", &pid, "--label", "meerkat"];
    let with =
        |extra: &[&str]| -> Vec<String> { base.iter().chain(SHORT).chain(extra).map(|s| s.to_string()).collect() };
    let run = |extra: &[&str]| {
        let args = with(extra);
        load(&args.iter().map(String::as_str).collect::<Vec<_>>(), &jsonl)
    };

    // Users are created by XEP-0077 in-band registration first.
    let v = run(&["--register", "login"]);
    assert_eq!(v["logins"], 6, "{v}");
    assert_eq!(v["failures"], 0, "{v}");
    assert_eq!(v["registration"]["ok"], 6, "{v}");
    assert!(v["ttfp_ms"]["p99"].as_f64().is_some(), "{v}");
    assert!(v["rss_connected_kib"].as_u64().is_some(), "{v}");

    let v = run(&["chat", "--window", "4"]);
    assert_eq!(v["mode"], "closed");
    assert!(v["sent"].as_u64().unwrap_or(0) > 0, "{v}");
    assert_eq!(v["received"], v["sent"], "{v}");
    assert_eq!(v["lost"], 0, "{v}");
    assert!(v["latency_ms"]["p999"].as_f64().is_some(), "{v}");

    let v = run(&["chat", "--rate", "200"]);
    assert_eq!(v["mode"], "open");
    assert!(v["sent"].as_u64().unwrap_or(0) > 0, "{v}");
    assert_eq!(v["lost"], 0, "{v}");

    let v = run(&["presence", "--contacts", "2", "--rate", "30"]);
    assert!(v["changes_sent"].as_u64().unwrap_or(0) > 0, "{v}");
    assert_eq!(v["deliveries"], v["expected_deliveries"], "{v}");
    assert_eq!(v["lost"], 0, "{v}");

    let v = run(&["pubsub", "--rate", "50"]);
    assert_eq!(v["subscribers"], 5, "{v}");
    let published = v["published"].as_u64().unwrap_or(0);
    assert!(published > 0, "{v}");
    assert_eq!(v["received"].as_u64(), Some(5 * published), "{v}");
    assert_eq!(v["lost"], 0, "{v}");
    assert!(v["latency_ms"]["p99"].as_f64().is_some(), "{v}");

    let v = run(&["idle", "--keepalive", "0.5"]);
    assert_eq!(v["connections"], 6, "{v}");
    assert_eq!(v["dropped"], 0, "{v}");
    assert!(v["rss_loaded_kib"].as_u64().is_some(), "{v}");

    // The report turns those lines into one table.
    let out = Command::new(LOAD_BIN).arg("report").arg(&jsonl).output().expect("meerkat-load report");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    assert!(table.starts_with("| figure | meerkat |"), "{table}");
    for figure in [
        "logins/s",
        "chat msgs/s delivered, closed loop",
        "presence deliveries/s",
        "pubsub notifications/s delivered",
        "KiB per idle session",
    ] {
        assert!(table.contains(figure), "no {figure} in:\n{table}");
    }
}

#[test]
fn login_and_chat_with_starttls_and_scram() {
    let node = TestNode::start("");
    for i in 1..=4 {
        node.add_user(&format!("load{i}"), "secret");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let jsonl = dir.path().join("runs.jsonl");
    let port = node.c2s.port().to_string();
    let cert = node.cert_path();
    let cert = cert.to_str().expect("UTF-8 path");
    let common = [
        "--port",
        &port,
        "--users",
        "4",
        "--user-pattern",
        "load{}",
        "--password",
        "secret",
        "--tls",
        "starttls",
        "--ca",
        cert,
        "--sasl",
        "scram-sha-256",
    ];
    let args: Vec<&str> = common.iter().chain(SHORT).copied().chain(["login"]).collect();
    let v = load(&args, &jsonl);
    assert_eq!(v["logins"], 4, "{v}");
    assert_eq!(v["tls"], "starttls");
    assert_eq!(v["sasl"], "SCRAM-SHA-256");

    let args: Vec<&str> = common.iter().chain(SHORT).copied().chain(["chat", "--window", "2"]).collect();
    let v = load(&args, &jsonl);
    assert!(v["sent"].as_u64().unwrap_or(0) > 0, "{v}");
    assert_eq!(v["lost"], 0, "{v}");

    // Direct TLS (XEP-0368) on the node's TLS listener.
    let tls_port = node.c2s_tls.port().to_string();
    let mut args: Vec<&str> = common.to_vec();
    for i in 1..args.len() {
        match args[i - 1] {
            "--port" => args[i] = &tls_port,
            "--tls" => args[i] = "tls",
            _ => {}
        }
    }
    let args: Vec<&str> = args.into_iter().chain(SHORT.iter().copied()).chain(["login"]).collect();
    let v = load(&args, &jsonl);
    assert_eq!(v["logins"], 4, "{v}");
    assert_eq!(v["tls"], "tls");

    // SASL2 + Bind2 with FAST tokens, after a warm-up that hands them out;
    // and SCRAM with the salted passwords the warm-up cached.
    for sasl in ["fast", "scram-sha-256"] {
        let mut args: Vec<&str> = common.to_vec();
        if let Some(i) = args.iter().position(|a| *a == "scram-sha-256") {
            args[i] = sasl;
        }
        let args: Vec<&str> = args.into_iter().chain(SHORT.iter().copied()).chain(["login", "--warm-up"]).collect();
        let v = load(&args, &jsonl);
        assert_eq!(v["logins"], 4, "{sasl}: {v}");
        let fast = if sasl == "fast" { 4 } else { 0 };
        assert_eq!(v["fast_logins"], fast, "{sasl}: {v}");
    }

    // A wrong password fails the run (exit 1) with the SASL condition in the JSON line.
    let out = Command::new(LOAD_BIN)
        .args(["--port", &port, "--users", "1", "--user-pattern", "load{}", "--password", "wrong"])
        .args(["--tls", "starttls", "--sasl", "scram-sha-256", "login"])
        .output()
        .expect("meerkat-load");
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("JSON line");
    assert_eq!(v["success"], false);
    assert!(v["first_errors"][0].as_str().unwrap_or_default().contains("not-authorized"), "{v}");
}
