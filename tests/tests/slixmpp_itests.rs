//! slixmpp's own live integration suite (`itests/` of its source distribution,
//! pinned below) against the real node, unchanged, through
//! `tests/python/slixmpp_itests.py`.
//!
//! The itests expect the accounts' domain to serve STARTTLS on port 5222 and
//! direct TLS on 5223 with a trusted certificate (test_tls_check checks both
//! ports). The node gets two more c2s listeners on those ports of a loopback
//! address of its own, `127.0.0.N`, which the runner makes slixmpp use for the
//! domain; the node's self-signed certificate is trusted through
//! `SSL_CERT_FILE`.
//!
//! [`APPLICABLE`] lists the itest files run: core RFC 6120/6121 (TLS, login,
//! reconnection, messages and IQs between clients, which carry XEP payloads the
//! server only routes), XEP-0030, XEP-0092, XEP-0191, XEP-0199, XEP-0313 with
//! XEP-0059 and XEP-0359, XEP-0049, XEP-0054 and XEP-0153, XEP-0163 and XEP-0084
//! (PEP, with `mod_pubsub` on). [`NOT_APPLICABLE`]
//! lists the others with the protocol the node does not offer; every file of
//! the distribution must be in one list, so a new pin gets looked at.
//!
//! slixmpp runs unmodified: test_mam's test_mam_iterate walks the archive
//! backwards with slixmpp's own XEP-0059 iterator, which relies on the node
//! leaving `index` out of a page read backwards (the script explains why).
//!
//! The source distribution is downloaded with pip (hash-checked) once into
//! `$CARGO_TARGET_DIR/slixmpp-itests/` and unpacked there.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::fs::File;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use meerkat_tests::TestNode;
use serde_json::Value;

/// The slixmpp release whose itests run; the same as `tests/python/requirements.txt`.
const SLIXMPP_VERSION: &str = "1.17.0";
/// SHA-256 of `slixmpp-1.17.0.tar.gz` on PyPI.
const SDIST_SHA256: &str = "05257ee0f2aecb42d6479f6071c89ad3c734fda0ee753eb4625ecdc6114d90b1";

/// The itest files run, and how many test methods each holds.
const APPLICABLE: &[(&str, usize)] = &[
    ("test_basic_connect_and_message", 1),
    ("test_blocking", 1),
    ("test_bob", 1),
    ("test_chatmarkers", 1),
    ("test_disco", 1),
    ("test_ibb", 1),
    ("test_last_activity", 1),
    ("test_mam", 2),
    ("test_pep", 2),
    ("test_ping", 1),
    ("test_privatestorage", 1),
    ("test_quickresponse", 1),
    ("test_reactions", 1),
    ("test_reconnect", 2),
    ("test_retract", 1),
    ("test_slow_filters", 1),
    ("test_tls_check", 6),
    ("test_user_avatar", 1),
    ("test_vcard", 1),
    ("test_vcard_avatar", 1),
    ("test_version", 1),
];

/// The itest files not run, with what they need that the node does not offer.
const NOT_APPLICABLE: &[(&str, &str)] = &[
    // Hard-wired to the slixmpp project's own CI (a server named "prosody",
    // skipped outside it); components are tested with slixmpp's
    // ComponentXMPP in tests/tests/components.rs.
    ("test_component", "XEP-0114, wired to slixmpp's CI host \"prosody\""),
    ("test_httpupload", "XEP-0363 HTTP file upload"),
    ("test_moderate", "XEP-0045 multi-user chat, XEP-0425 moderation"),
    ("test_muc", "XEP-0045 multi-user chat"),
    ("test_selfping", "XEP-0045 multi-user chat, XEP-0410 self-ping"),
    ("test_sos", "XEP-0455 service outage status"),
];

const ACCOUNTS: [(&str, &str); 2] = [("slix-ci-1", "slix-ci-1-pass"), ("slix-ci-2", "slix-ci-2-pass")];

/// Longest one set-up or test method may take in the runner.
const PER_TEST_TIMEOUT_SECS: u32 = 30;
/// Longest the whole run may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(300);

fn python() -> PathBuf {
    let venv =
        std::env::var_os("MEERKAT_VENV").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/var/tmp/meerkat-venv"));
    let py = venv.join("bin/python");
    assert!(py.is_file(), "{} is missing: run ./tests/run.sh, which installs slixmpp there", py.display());
    py
}

/// `$CARGO_TARGET_DIR`, or the target directory this test executable was built in.
fn target_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(d);
    }
    // The test executable is $TARGET/debug/deps/<test>-<hash>.
    let exe = std::env::current_exe().unwrap();
    exe.ancestors().nth(3).map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("/var/tmp/meerkat-target"))
}

/// The unpacked source distribution (with `itests/`), downloaded and unpacked on first use.
fn sdist() -> PathBuf {
    let cache = target_dir().join("slixmpp-itests");
    let dir = cache.join(format!("slixmpp-{SLIXMPP_VERSION}"));
    if dir.join("itests").is_dir() {
        return dir;
    }
    std::fs::create_dir_all(&cache).unwrap();
    let work = tempfile::Builder::new().prefix("fetch-").tempdir_in(&cache).unwrap();
    let requirements = work.path().join("requirements.txt");
    std::fs::write(&requirements, format!("slixmpp=={SLIXMPP_VERSION} --hash=sha256:{SDIST_SHA256}\n")).unwrap();
    let download = work.path().join("download");
    let mut failures = Vec::new();
    for attempt in 1..=3u64 {
        // pip checks the archive against the hash (--require-hashes).
        let out = Command::new(python())
            .args(["-m", "pip", "download", "--disable-pip-version-check", "--no-deps", "--no-binary", ":all:"])
            .args(["--require-hashes", "--timeout", "30", "-r"])
            .arg(&requirements)
            .arg("-d")
            .arg(&download)
            .output()
            .expect("running pip download");
        if out.status.success() {
            failures.clear();
            break;
        }
        failures.push(format!("attempt {attempt}: {}", String::from_utf8_lossy(&out.stderr).trim()));
        std::thread::sleep(Duration::from_secs(2 * attempt));
    }
    assert!(failures.is_empty(), "could not download slixmpp {SLIXMPP_VERSION} from PyPI:\n{}", failures.join("\n"));
    let archive = download.join(format!("slixmpp-{SLIXMPP_VERSION}.tar.gz"));
    let unpacked = work.path().join("unpacked");
    std::fs::create_dir(&unpacked).unwrap();
    let out = Command::new("tar").arg("-xzf").arg(&archive).arg("-C").arg(&unpacked).output().expect("running tar");
    assert!(out.status.success(), "unpacking {}: {}", archive.display(), String::from_utf8_lossy(&out.stderr));
    // Another test process may have finished first: then its copy is used.
    if let Err(e) = std::fs::rename(unpacked.join(format!("slixmpp-{SLIXMPP_VERSION}")), &dir) {
        assert!(dir.join("itests").is_dir(), "moving the unpacked sources to {}: {e}", dir.display());
    }
    dir
}

/// A loopback address whose ports 5222 and 5223 are free.
fn free_loopback_address() -> Ipv4Addr {
    for _ in 0..50 {
        let ip = Ipv4Addr::new(127, 0, 0, rand::random_range(10..=250));
        if TcpListener::bind((ip, 5222)).is_ok() && TcpListener::bind((ip, 5223)).is_ok() {
            return ip;
        }
    }
    panic!("no loopback address 127.0.0.10-250 has ports 5222 and 5223 free");
}

fn itest_files(sdist: &Path) -> BTreeSet<String> {
    std::fs::read_dir(sdist.join("itests"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| n.strip_prefix("test_").and_then(|n| n.strip_suffix(".py")).map(|n| format!("test_{n}")))
        .collect()
}

#[test]
fn slixmpp_itests_pass() {
    let started = Instant::now();
    let sdist = sdist();

    let files = itest_files(&sdist);
    let listed: BTreeSet<String> = APPLICABLE
        .iter()
        .map(|(f, _)| f.to_string())
        .chain(NOT_APPLICABLE.iter().map(|(f, _)| f.to_string()))
        .collect();
    assert_eq!(files, listed, "every itest file must be listed as applicable or not");

    let ip = free_loopback_address();
    let node = TestNode::start(&format!(
        "[[listen.c2s]]\nport = 5222\nip_address = \"{ip}\"\ntls.mode = \"starttls\"\n\n\
         [[listen.c2s]]\nport = 5223\nip_address = \"{ip}\"\ntls.mode = \"tls\"\n\n\
         [modules.mod_pubsub]\nenabled = true\n"
    ));
    for (user, password) in ACCOUNTS {
        node.add_user(user, password);
    }

    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/slixmpp_itests.py");
    let stdout_path = node.dir().join("itests.out");
    let stderr_path = node.dir().join("itests.err");
    let mut command = Command::new(python());
    command
        .arg(&script)
        .arg("--sdist")
        .arg(&sdist)
        .args(["--address", &ip.to_string(), "--timeout", &PER_TEST_TIMEOUT_SECS.to_string()])
        .args(APPLICABLE.iter().map(|(f, _)| f))
        .env("SSL_CERT_FILE", node.cert_path())
        .env_remove("SSL_CERT_DIR")
        .env_remove("CI")
        .stdin(Stdio::null())
        .stdout(File::create(&stdout_path).unwrap())
        .stderr(File::create(&stderr_path).unwrap());
    for (i, (user, password)) in ACCOUNTS.iter().enumerate() {
        command.env(format!("CI_ACCOUNT{}", i + 1), format!("{user}@localhost"));
        command.env(format!("CI_ACCOUNT{}_PASSWORD", i + 1), password);
    }
    let mut child = command.spawn().expect("running the slixmpp itests");
    let deadline = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = std::fs::read_to_string(&stdout_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let Some(status) = status else {
        panic!("the itests did not finish within {RUN_TIMEOUT:?}:\n{stdout}\n{stderr}");
    };
    let summary: Value = match stdout.lines().last().map(serde_json::from_str) {
        Some(Ok(v)) => v,
        _ => panic!("no JSON summary from the itests ({status}):\n{stdout}\n{stderr}"),
    };
    let results = summary["results"].as_array().cloned().unwrap_or_default();

    println!("slixmpp {SLIXMPP_VERSION} itests against Meerkat ({:.1} s in all)", started.elapsed().as_secs_f64());
    println!("{:<62} {:<8} {:>7}  detail", "test", "outcome", "seconds");
    for r in &results {
        println!(
            "{:<62} {:<8} {:>7.2}  {}",
            r["test"].as_str().unwrap_or_default(),
            r["outcome"].as_str().unwrap_or_default(),
            r["seconds"].as_f64().unwrap_or_default(),
            r["detail"].as_str().unwrap_or_default().replace('\n', " ")
        );
    }
    for (file, why) in NOT_APPLICABLE {
        println!("{:<62} {:<8} {:>7}  {why}", format!("{file} (whole file)"), "n/a", "-");
    }

    let failed: Vec<&Value> = results.iter().filter(|r| r["outcome"] != "passed").collect();
    assert!(failed.is_empty(), "itests that did not pass: {failed:#?}\n{stderr}");
    let expected: usize = APPLICABLE.iter().map(|(_, n)| n).sum();
    assert_eq!(results.len(), expected, "not every itest ran:\n{stderr}");
    for (file, n) in APPLICABLE {
        let ran =
            results.iter().filter(|r| r["test"].as_str().unwrap_or_default().starts_with(&format!("{file}."))).count();
        assert_eq!(ran, *n, "{file}: {ran} of {n} tests ran");
    }
    assert!(status.success(), "the runner failed ({status}):\n{stderr}");
}
