//! The admin API against its own OpenAPI document, with schemathesis
//! (pinned in `tests/python/requirements.txt`): every operation, with
//! generated and edge-case inputs, with valid credentials, and stateful
//! sequences between operations.
//!
//! All checks run but two: `positive_data_acceptance` and
//! `negative_data_rejection` need the schema to say exactly which strings
//! are valid JIDs, usernames and passwords (stringprep, IDNA and SASLprep),
//! which JSON Schema cannot express. Every other kind of failure fails the
//! test: a server error, an undocumented status code, content type or
//! header, a body that does not match its schema, a wrong answer to an
//! undeclared method or to a request without credentials.

use std::process::Command;

use meerkat_tests::js::venv_python;
use meerkat_tests::TestNode;

#[test]
fn the_admin_api_matches_its_openapi_document() {
    let node = TestNode::start("");
    // Real values for the path parameters, so operations get past "not found".
    node.add_user("alice", "secret");
    let dir = tempfile::tempdir().expect("temporary directory");
    let config = dir.path().join("schemathesis.toml");
    std::fs::write(&config, "[parameters]\n\"path.host\" = \"localhost\"\n\"path.user\" = \"alice\"\n")
        .expect("write the schemathesis configuration");
    let schemathesis = venv_python().with_file_name("schemathesis");
    let out = Command::new(&schemathesis)
        .current_dir(dir.path())
        .arg("--config-file")
        .arg(&config)
        .arg("--no-color")
        .arg("run")
        .arg(format!("{}/api/openapi.json", node.admin_url()))
        .args(["-H", &format!("Authorization: Bearer {}", node.admin_token())])
        .args(["--checks", "all", "--exclude-checks", "positive_data_acceptance,negative_data_rejection"])
        .args(["--max-examples", "50", "--workers", "1", "--seed", "20261207"])
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", schemathesis.display()));
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("{report}");
    assert!(out.status.success(), "schemathesis found failures (exit {:?})", out.status.code());
    // Every operation schemathesis found in the document was exercised.
    let figure = |label: &str| -> Option<String> {
        report.lines().find_map(|l| l.trim().strip_prefix(label).map(|v| v.trim().to_owned()))
    };
    let selected = figure("Selected:").unwrap_or_default();
    let tested = figure("Tested:").unwrap_or_default();
    let (chosen, total) = selected.split_once('/').unwrap_or_default();
    assert!(!tested.is_empty() && tested != "0", "nothing was tested:\n{report}");
    assert!(chosen == total && tested == chosen, "not every operation was tested ({selected}, {tested}):\n{report}");
}
