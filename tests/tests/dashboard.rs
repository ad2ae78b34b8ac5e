//! The admin dashboard (`GET /dashboard`) in headless Chromium
//! (`tests/js/dashboard.mjs`): the page, opened on node 1 of a three-node
//! cluster with the admin token typed in, shows the three members up and
//! the leader; a node is stopped and the page shows it down within 5
//! seconds. Screenshots of both states are kept in
//! `$CARGO_TARGET_DIR/artifacts/dashboard-{up,down}.png`.
//!
//! Needs Chromium at `/usr/bin/chromium` (Debian's `chromium` package).

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use meerkat_tests::cluster::TestCluster;
use meerkat_tests::js::{js_dir, npm_ci};

const CHROMIUM: &str = "/usr/bin/chromium";
/// For each step of the page (a loaded 2-core machine can be slow to start Chromium).
const STEP: Duration = Duration::from_secs(90);

fn artifact(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/meerkat-target"));
    let dir = target.join("artifacts");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    dir.join(name)
}

fn is_png(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|d| d.len() > 10_000 && d.starts_with(b"\x89PNG\r\n\x1a\n"))
}

#[test]
fn the_dashboard_shows_the_cluster_and_a_stopped_node_within_five_seconds() {
    assert!(Path::new(CHROMIUM).is_file(), "{CHROMIUM} is missing: install Debian's chromium package");
    npm_ci();
    let mut c = TestCluster::start(3);
    for i in 0..3 {
        c.wait_ready(i, STEP);
    }
    let (up, down) = (artifact("dashboard-up.png"), artifact("dashboard-down.png"));
    let _ = std::fs::remove_file(&up);
    let _ = std::fs::remove_file(&down);
    let mut child = Command::new("node")
        .arg("dashboard.mjs")
        .args(["--url", &c.nodes[0].admin_url(), "--token", &c.nodes[0].admin_token(), "--members", "3"])
        .arg("--screenshot-up")
        .arg(&up)
        .arg("--screenshot-down")
        .arg(&down)
        .args(["--down-within", "5000", "--chromium", CHROMIUM, "--timeout", &STEP.as_millis().to_string()])
        .current_dir(js_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("running node (Node.js 20+ is needed)");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("read the page's first report");
    let ready: serde_json::Value =
        serde_json::from_str(line.trim()).unwrap_or_else(|_| panic!("the page never showed the cluster: {line}"));
    assert_eq!(ready["ready"], true, "{ready}");
    let members = ready["members"].as_array().cloned().unwrap_or_default();
    assert_eq!(members.len(), 3, "{ready}");
    assert_eq!(members.iter().filter(|m| m["leader"] == true).count(), 1, "one leader is marked: {ready}");
    assert!(is_png(&up), "no screenshot at {}", up.display());

    // Node 3 (id 3) goes away; the page on node 1 must say so.
    c.nodes[2].stop();
    let mut stdin = child.stdin.take().expect("stdin");
    writeln!(stdin, "stopped 3").expect("tell the page");
    line.clear();
    stdout.read_line(&mut line).expect("read the summary");
    let status = child.wait().expect("wait for node");
    let summary: serde_json::Value =
        serde_json::from_str(line.trim()).unwrap_or_else(|_| panic!("no summary from the page: {line}"));
    println!("dashboard: {summary}");
    assert!(status.success() && summary["ok"] == true, "the page did not show node 3 down in time: {summary}");
    let shown: Vec<(i64, String)> = summary["down"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| (m["id"].as_i64().unwrap_or(0), m["status"].as_str().unwrap_or_default().to_owned()))
        .collect();
    assert_eq!(shown, vec![(1, "up".into()), (2, "up".into()), (3, "down".into())], "{summary}");
    // The node has no global distribution: /api/global answers 404, which
    // the browser logs; nothing else may go wrong in the page.
    let errors: Vec<&str> = summary["console_errors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e.as_str())
        .filter(|e| !e.contains("status of 404"))
        .collect();
    assert!(errors.is_empty(), "errors in the page: {summary}");
    assert!(is_png(&down), "no screenshot at {}", down.display());
    println!("screenshots: {} and {}", up.display(), down.display());

    // The Grafana dashboard reads names that a cluster member exports
    // (global distribution's are checked where it runs, in global.rs).
    let metrics = c.nodes[0].metrics();
    let grafana: serde_json::Value =
        serde_json::from_str(include_str!("../../deploy/grafana/meerkat.json")).expect("the Grafana dashboard parses");
    let names = grafana_metric_names(&grafana);
    assert!(names.len() >= 40 && names.contains("xmpp_element_in_count"), "{names:?}");
    let mut missing = Vec::new();
    for name in names {
        let base = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|b| metrics.0.contains(&format!("# TYPE {b} histogram"))))
            .unwrap_or(&name);
        if !base.starts_with("meerkat_global_") && !metrics.0.contains(&format!("# TYPE {base} ")) {
            missing.push(name.clone());
        }
    }
    assert!(missing.is_empty(), "in deploy/grafana/meerkat.json but not in /metrics: {missing:?}\n{}", metrics.0);
}

/// The metric names the dashboard's queries select (`name{…}`).
fn grafana_metric_names(v: &serde_json::Value) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    match v {
        serde_json::Value::Object(o) => {
            for (k, v) in o {
                match (k.as_str(), v.as_str()) {
                    ("expr", Some(expr)) => {
                        for (i, _) in expr.match_indices('{') {
                            let head = &expr[..i];
                            let start =
                                head.rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).map_or(0, |p| p + 1);
                            if start < i {
                                names.insert(head[start..].to_owned());
                            }
                        }
                    }
                    _ => names.extend(grafana_metric_names(v)),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| names.extend(grafana_metric_names(v))),
        _ => {}
    }
    names
}
