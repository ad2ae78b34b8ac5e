//! converse.js, a browser XMPP client, in headless Chromium against the real
//! node over WebSocket (`tests/js/converse.mjs`): alice logs in from the page,
//! adds bob (a slixmpp user, `tests/python/echo_peer.py`) as a contact, sees
//! him online, types a message into the chat and sends it with Enter, and
//! bob's answer is shown in the page. The screenshot of the page is kept at
//! `$CARGO_TARGET_DIR/artifacts/converse-websocket.png`.
//!
//! And OMEMO between two browser users (`tests/js/converse_omemo.mjs`): alice
//! and bob, each in a page of their own with `mod_pubsub` on the node, set
//! OMEMO up on PEP and exchange an encrypted message each way, which each
//! page decrypts. Their screenshots are kept at
//! `$CARGO_TARGET_DIR/artifacts/converse-omemo-{alice,bob}.png`.
//!
//! Needs Chromium at `/usr/bin/chromium` (Debian's `chromium` package).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use meerkat_tests::js::{js_dir, npm_ci, EchoPeer};
use meerkat_tests::TestNode;

const CHROMIUM: &str = "/usr/bin/chromium";
/// For each step of the page (a loaded 2-core machine can be slow to start Chromium).
const STEP: Duration = Duration::from_secs(90);
const MESSAGE: &str = "Hello Bob, this is Alice in converse.js";

use meerkat_tests::node::free_port;

/// A node with a WebSocket listener at `/ws-xmpp` (and `extra` config), and its `ws://` URL.
fn ws_node_with(extra: &str) -> (TestNode, String) {
    let port = free_port();
    let node = TestNode::start(&format!(
        "[[listen.http]]\nport = {port}\nip_address = \"127.0.0.1\"\n\
         [[listen.http.handlers.mod_websockets]]\nhost = \"_\"\npath = \"/ws-xmpp\"\n\n{extra}"
    ));
    (node, format!("ws://127.0.0.1:{port}/ws-xmpp"))
}

fn ws_node() -> (TestNode, String) {
    ws_node_with("")
}

/// Where screenshots are kept for a reviewer.
fn artifacts() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/meerkat-target"));
    let dir = target.join("artifacts");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    dir
}

fn artifact_path() -> PathBuf {
    artifacts().join("converse-websocket.png")
}

/// The width and height (from the IHDR chunk) and the size in bytes of the PNG at `path`.
fn png_size(path: &Path) -> (u32, u32, usize) {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    assert!(data.len() > 24 && data.starts_with(b"\x89PNG\r\n\x1a\n") && &data[12..16] == b"IHDR", "not a PNG");
    let be = |b: &[u8]| u32::from_be_bytes(b.try_into().expect("4 bytes"));
    (be(&data[16..20]), be(&data[20..24]), data.len())
}

#[test]
fn converse_js_in_chromium_chats_with_a_slixmpp_user_over_websocket() {
    assert!(
        Path::new(CHROMIUM).is_file(),
        "{CHROMIUM} is missing: install Debian's chromium package \
         (apt-get install --no-install-recommends chromium; .ci/run does it in CI)"
    );
    npm_ci();
    let (node, url) = ws_node();
    node.add_user("alice", "secret");
    node.add_user("bob", "secret");
    // Bob stays online after answering until the page has been looked at.
    let bob = EchoPeer::start(&node, "bob@localhost/slixmpp", "secret", 1, true, 4 * STEP);

    let shot = artifact_path();
    let _ = std::fs::remove_file(&shot);
    let started = Instant::now();
    let out = Command::new("node")
        .arg("converse.mjs")
        .args(["--ws", &url, "--jid", "alice@localhost", "--password", "secret", "--peer", "bob@localhost"])
        .args(["--message", MESSAGE, "--chromium", CHROMIUM, "--timeout", &STEP.as_millis().to_string()])
        .arg("--screenshot")
        .arg(&shot)
        .current_dir(js_dir())
        .output()
        .expect("running node (Node.js 20+ is needed)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("converse.js in Chromium took {:?}", started.elapsed());
    if shot.is_file() {
        println!("screenshot: {}", shot.display());
    }
    assert!(out.status.success(), "converse.js scenario failed ({}):\n{stdout}\n{stderr}", out.status);
    let summary: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("JSON summary");
    println!("converse.js: {summary}");

    let bob = bob.finish(STEP);
    println!("slixmpp: {bob}");

    // The page logged in over WebSocket, sent through its chat form, and shows the answer.
    assert_eq!(summary["ok"], true, "{summary}");
    let bound = summary["bound_jid"].as_str().unwrap_or_default();
    assert!(bound.starts_with("alice@localhost/"), "{summary}");
    assert_eq!(summary["reply_seen"], format!("echo: {MESSAGE}"), "{summary}");
    assert_eq!(summary["messages"], serde_json::json!([MESSAGE, format!("echo: {MESSAGE}")]), "{summary}");
    assert_eq!(summary["textarea_empty"], true, "the chat form was sent: {summary}");
    // Every file the page asked for was in converse.js's dist (requests to
    // anywhere else are refused in the browser).
    assert_eq!(summary["served"]["missing"], serde_json::json!([]), "{summary}");

    // Bob got exactly alice's message, from the page's session, and approved her request.
    assert_eq!(bob["received"], serde_json::json!([{ "from": bound, "body": MESSAGE }]), "{bob}");
    let requests = bob["subscribed_from"].as_array().cloned().unwrap_or_default();
    assert!(requests.contains(&serde_json::json!("alice@localhost")), "{bob}");

    let (width, height, bytes) = png_size(&shot);
    assert!(width >= 1280 && height >= 800 && bytes > 20_000, "{}: {width}x{height}, {bytes} bytes", shot.display());
    println!("the screenshot is {width}x{height}, {bytes} bytes");
}

#[test]
fn converse_js_users_exchange_omemo_messages_through_pep() {
    assert!(Path::new(CHROMIUM).is_file(), "{CHROMIUM} is missing: install Debian's chromium package");
    npm_ci();
    let (node, url) = ws_node_with("[modules.mod_pubsub]\nenabled = true\n");
    node.add_user("alice", "secret");
    node.add_user("bob", "secret");
    let dir = artifacts();
    for who in ["alice", "bob"] {
        let _ = std::fs::remove_file(dir.join(format!("converse-omemo-{who}.png")));
    }
    let out = Command::new("node")
        .arg("converse_omemo.mjs")
        .args(["--ws", &url, "--password", "secret", "--chromium", CHROMIUM])
        .args(["--timeout", &STEP.as_millis().to_string()])
        .arg("--screenshots")
        .arg(&dir)
        .current_dir(js_dir())
        .output()
        .expect("running node (Node.js 20+ is needed)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "converse.js OMEMO scenario failed ({}):\n{stdout}\n{stderr}\nnode log:\n{}",
        out.status,
        node.log()
    );
    let summary: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("JSON summary");
    println!("converse.js OMEMO: {summary}");
    assert_eq!(summary["ok"], true, "{summary}");
    assert_eq!(summary["sent_encrypted"], true, "{summary}");
    assert_eq!(summary["missing"], serde_json::json!([]), "{summary}");
    for who in ["alice", "bob"] {
        let (width, height, bytes) = png_size(&dir.join(format!("converse-omemo-{who}.png")));
        assert!(width >= 1280 && height >= 800 && bytes > 20_000, "{who}: {width}x{height}, {bytes} bytes");
    }
}
