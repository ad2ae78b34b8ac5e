//! The `meerkat` command line and the admin HTTP API against a running node.
#![allow(clippy::unwrap_used)]

use std::process::Output;
use std::time::Duration;

use meerkat_tests::{login, wait_until, Client, ClientError, TestNode, DOMAIN};

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_ok(o: &Output, what: &str) {
    assert!(o.status.success(), "{what} failed ({}):\nstdout: {}\nstderr: {}", o.status, stdout(o), stderr(o));
}

#[tokio::test]
async fn user_add_from_stdin_then_login() {
    let node = TestNode::start("");
    let o = node.cli_with_stdin(&["user", "add", "alice@localhost"], "s3cret pw\n");
    assert_ok(&o, "user add");
    assert!(stdout(&o).contains("alice@localhost"), "{}", stdout(&o));
    let mut c = login(&node, "alice", "s3cret pw", "cli").await;
    let res = c.iq_xml("<iq type='get' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>").await.unwrap();
    assert_eq!(res.attr("type"), Some("result"));
    // Adding it again fails with the API's reason.
    let o = node.cli_with_stdin(&["user", "add", "alice@localhost"], "other\n");
    assert!(!o.status.success());
    assert!(stderr(&o).contains("409") && stderr(&o).contains("exists"), "{}", stderr(&o));
    // No password at all is refused before any request.
    let o = node.cli_with_stdin(&["user", "add", "bob@localhost"], "");
    assert!(!o.status.success());
    assert!(stderr(&o).contains("password"), "{}", stderr(&o));
}

#[tokio::test]
async fn status_prints_json_with_sessions() {
    let node = TestNode::start("");
    node.add_user("alice", "pw");
    let v: serde_json::Value = {
        let o = node.cli(&["status"]);
        assert_ok(&o, "status");
        serde_json::from_str(&stdout(&o)).unwrap_or_else(|e| panic!("status is not JSON ({e}): {}", stdout(&o)))
    };
    assert_eq!(v["status"], "running");
    assert_eq!(v["sessions"], 0);
    assert_eq!(v["hosts"], serde_json::json!([DOMAIN]));
    assert_eq!(v["database"]["status"], "ok");
    let _c = login(&node, "alice", "pw", "r").await;
    let o = node.cli(&["status"]);
    assert_ok(&o, "status");
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["sessions"], 1, "{v}");
}

#[tokio::test]
async fn user_list_passwd_and_remove() {
    let node = TestNode::start("");
    for u in ["alice", "bob"] {
        assert_ok(&node.cli(&["user", "add", &format!("{u}@localhost"), "--password", "pw1"]), "user add");
    }
    let o = node.cli(&["user", "list"]);
    assert_ok(&o, "user list");
    let mut listed: Vec<String> = stdout(&o).lines().map(str::to_owned).collect();
    listed.sort();
    assert_eq!(listed, vec!["alice@localhost", "bob@localhost"]);

    // passwd: the old password stops working, the new one works.
    assert_ok(&node.cli_with_stdin(&["user", "passwd", "alice@localhost"], "pw2\n"), "user passwd");
    let err = Client::login(node.c2s, DOMAIN, "alice", "pw1", None).await.err().unwrap();
    assert!(matches!(&err, ClientError::SaslFailure(c) if c == "not-authorized"), "{err}");
    let mut alice = login(&node, "alice", "pw2", "r").await;

    // remove: the account's session is closed and the account is gone.
    let o = node.cli(&["user", "remove", "alice@localhost"]);
    assert_ok(&o, "user remove");
    assert_eq!(alice.expect_stream_error().await, "not-authorized");
    let o = node.cli(&["user", "list"]);
    assert_eq!(stdout(&o).trim(), "bob@localhost");
    let err = Client::login(node.c2s, DOMAIN, "alice", "pw2", None).await.err().unwrap();
    assert!(matches!(&err, ClientError::SaslFailure(c) if c == "not-authorized"), "{err}");
    // Removing it again is a clear error.
    let o = node.cli(&["user", "remove", "alice@localhost"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("404"), "{}", stderr(&o));
}

#[tokio::test]
async fn session_list_and_kick() {
    let node = TestNode::start("");
    node.add_user("alice", "pw");
    let mut one = login(&node, "alice", "pw", "one").await;
    let mut two = login(&node, "alice", "pw", "two").await;
    two.go_online(Some(3)).await.unwrap();
    let o = node.cli(&["session", "list"]);
    assert_ok(&o, "session list");
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].starts_with("alice@localhost/one") && lines[0].contains("unavailable"), "{out}");
    assert!(lines[1].starts_with("alice@localhost/two") && lines[1].contains("priority 3"), "{out}");

    let o = node.cli(&["session", "kick", "alice@localhost/one"]);
    assert_ok(&o, "session kick");
    assert_eq!(one.expect_stream_error().await, "policy-violation");
    one.wait_closed(Duration::from_secs(10)).await.unwrap();
    wait_until("the kicked session to be removed", Duration::from_secs(10), || {
        node.session_jids() == vec!["alice@localhost/two".to_string()]
    });
    let res = two.iq_xml("<iq type='get' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>").await.unwrap();
    assert_eq!(res.attr("type"), Some("result"));
    // Kicking a session that does not exist fails clearly.
    let o = node.cli(&["session", "kick", "alice@localhost/one"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("404"), "{}", stderr(&o));
}

#[tokio::test]
async fn wrong_admin_token_is_401() {
    let node = TestNode::start("");
    for auth in ["Bearer wrong-token", "Basic YWRtaW46YWRtaW4=", ""] {
        let (code, v) = node.api_with_auth("GET", "/api/status", None, auth);
        assert_eq!(code, 401, "{auth:?}: {v}");
        assert!(v["error"].as_str().is_some(), "{v}");
        let (code, _) = node.api_with_auth(
            "POST",
            "/api/users/localhost",
            Some(serde_json::json!({"username": "x", "password": "y"})),
            auth,
        );
        assert_eq!(code, 401);
    }
    let o = node.cli(&["--token", "wrong-token", "status"]);
    assert!(!o.status.success(), "CLI accepted a wrong token: {}", stdout(&o));
    let err = stderr(&o);
    assert!(err.contains("401") && err.contains("credentials"), "unclear message: {err}");
    // Nothing was created with the wrong token.
    assert!(
        node.cli(&["--token", "wrong-token", "user", "add", "x@localhost", "--password", "y"]).status.code() != Some(0)
    );
    let (_, v) = node.api("GET", "/api/users/localhost", None);
    assert_eq!(v["users"], serde_json::json!([]));
}

#[tokio::test]
async fn openapi_document_is_json() {
    let node = TestNode::start("");
    // Served without credentials.
    let (code, v) = node.api_with_auth("GET", "/api/openapi.json", None, "");
    assert_eq!(code, 200);
    assert!(v.is_object(), "not a JSON object: {v}");
    assert!(v["openapi"].as_str().is_some_and(|s| s.starts_with('3')), "{}", v["openapi"]);
    for path in ["/api/status", "/api/users/{host}", "/api/sessions"] {
        assert!(v["paths"].get(path).is_some(), "{path} missing");
    }
}

#[tokio::test]
async fn cli_without_a_node_says_so() {
    let mut node = TestNode::start("");
    assert!(node.stop().is_some_and(|s| s.success()));
    let o = node.cli(&["status"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("cannot reach the admin API"), "{}", stderr(&o));
}

/// Every admin API error is JSON `{"error", "detail"}` with its status: an
/// unknown path (404), a method its path does not have (405 with `Allow`),
/// a body that does not parse (400), missing credentials (401).
#[tokio::test]
async fn admin_api_errors_are_json_with_the_right_status() {
    let node = TestNode::start("");
    let token = format!("Bearer {}", node.admin_token());
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let url = |p: &str| format!("{}{p}", node.admin_url());
    let json = |resp: &mut ureq::http::Response<ureq::Body>| -> serde_json::Value {
        serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap()
    };

    let mut r = agent.delete(&url("/api/status")).header("Authorization", &token).call().unwrap();
    assert_eq!(r.status().as_u16(), 405);
    assert_eq!(r.headers().get("allow").and_then(|v| v.to_str().ok()), Some("GET"));
    let v = json(&mut r);
    assert_eq!(v["error"], "method_not_allowed", "{v}");
    assert!(v["detail"].as_str().is_some_and(|d| d.contains("GET")), "{v}");

    let mut r = agent.get(&url("/api/users/localhost/alice")).header("Authorization", &token).call().unwrap();
    assert_eq!(r.status().as_u16(), 405);
    assert_eq!(r.headers().get("allow").and_then(|v| v.to_str().ok()), Some("DELETE"));
    assert_eq!(json(&mut r)["error"], "method_not_allowed");

    let mut r = agent.get(&url("/api/nothing/here")).header("Authorization", &token).call().unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let v = json(&mut r);
    assert_eq!((v["error"].as_str(), v["detail"].as_str().is_some()), (Some("not_found"), true), "{v}");

    let mut r = agent
        .post(&url("/api/users/localhost"))
        .header("Authorization", &token)
        .header("Content-Type", "application/json")
        .send("{\"username\": ")
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(json(&mut r)["error"], "bad_request");

    let mut r = agent.get(&url("/api/status")).call().unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let v = json(&mut r);
    assert_eq!(v["error"], "unauthorized", "{v}");
    assert!(v["detail"].as_str().is_some_and(|d| d.contains("credentials")), "{v}");
}

/// `POST /api/stanzas` and `POST /api/messages` (and `meerkat send`) route
/// a stanza as a local account sends it; a sender that is not a local
/// account, or a stanza that does not parse, is refused.
#[tokio::test]
async fn the_admin_sends_stanzas_as_a_user() {
    let node = TestNode::start("");
    node.add_user("alice", "pw");
    node.add_user("bob", "pw");
    let mut bob = login(&node, "bob", "pw", "phone").await;
    bob.go_online(Some(1)).await.unwrap();

    let (code, v) = node.api(
        "POST",
        "/api/stanzas",
        Some(serde_json::json!({"stanza": "<message to='bob@localhost' from='alice@localhost' type='chat'><body>from the api</body></message>"})),
    );
    assert_eq!(code, 200, "{v}");
    let m = bob.recv_message().await.unwrap();
    assert_eq!(meerkat_tests::client::body(&m).as_deref(), Some("from the api"));
    assert_eq!(m.attr("from"), Some("alice@localhost"));
    assert_eq!(m.attr("id"), v["id"].as_str());

    let o = node.cli(&["send", "--from", "alice@localhost/desk", "--to", "bob@localhost/phone", "from the cli"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let m = bob.recv_message().await.unwrap();
    assert_eq!(meerkat_tests::client::body(&m).as_deref(), Some("from the cli"));
    assert_eq!(m.attr("from"), Some("alice@localhost/desk"));

    for (stanza, code) in [
        ("<message to='bob@localhost' from='nobody@localhost'><body>x</body></message>", 404),
        ("<message to='bob@localhost' from='alice@elsewhere.example'><body>x</body></message>", 404),
        ("<message to='bob@localhost'><body>x</body></message>", 400),
        ("<message from='alice@localhost'><body>x</body></message>", 400),
        ("<message to='bob@localhost' from='alice@localhost'><body>x</body>", 400),
        ("<foo to='bob@localhost' from='alice@localhost'/>", 400),
        (
            "<message to='bob@localhost' from='alice@localhost'/><message to='bob@localhost' from='alice@localhost'/>",
            400,
        ),
    ] {
        let (got, v) = node.api("POST", "/api/stanzas", Some(serde_json::json!({ "stanza": stanza })));
        assert_eq!(got, code, "{stanza}: {v}");
        assert!(v["detail"].as_str().is_some(), "{v}");
    }
    let o = node.cli(&["send", "--from", "nobody@localhost", "--to", "bob@localhost", "x"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("404"), "{}", stderr(&o));
    // Nothing of the refused ones reached bob.
    let res = bob.iq_xml("<iq type='get' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>").await.unwrap();
    assert_eq!(res.attr("type"), Some("result"));
    assert!(bob.backlog().all(|el| meerkat_tests::client::body(el).is_none()), "a refused stanza arrived");
}

/// `GET /api/stats` counts accounts, online users and sessions per host and
/// node; `GET /api/users/{host}/{user}/roster` shows the stored roster.
#[tokio::test]
async fn stats_and_a_users_roster() {
    let node = TestNode::start("");
    for u in ["alice", "bob", "carol"] {
        node.add_user(u, "pw");
    }
    let mut a1 = login(&node, "alice", "pw", "one").await;
    let _a2 = login(&node, "alice", "pw", "two").await;
    let res = a1
        .iq_xml("<iq type='set'><query xmlns='jabber:iq:roster'><item jid='bob@localhost' name='Bob'><group>Friends</group></item></query></iq>")
        .await
        .unwrap();
    assert_eq!(res.attr("type"), Some("result"), "{res}");

    let (code, v) = node.api("GET", "/api/stats", None);
    assert_eq!(code, 200, "{v}");
    let h = &v["hosts"]["localhost"];
    assert_eq!(
        (h["registered_users"].as_u64(), h["online_users"].as_u64(), h["sessions"].as_u64()),
        (Some(3), Some(1), Some(2)),
        "{v}"
    );
    assert_eq!(v["sessions_per_node"]["1"], 2, "{v}");

    let (code, v) = node.api("GET", "/api/users/localhost/alice/roster", None);
    assert_eq!(code, 200, "{v}");
    assert_eq!(
        v["items"],
        serde_json::json!([{"jid": "bob@localhost", "name": "Bob", "subscription": "none", "ask": false, "pending_in": false, "groups": ["Friends"]}])
    );
    let (code, v) = node.api("GET", "/api/users/localhost/nobody/roster", None);
    assert_eq!(code, 404, "{v}");

    let o = node.cli(&["user", "roster", "alice@localhost"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "bob@localhost\tBob\tnone\tFriends");
    let o = node.cli(&["stats"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("localhost\t3 accounts\t1 online\t2 sessions"), "{}", stdout(&o));
}

/// `PUT` and `DELETE /api/users/{host}/{user}/roster/{contact}` (and
/// `meerkat user roster-add`/`roster-remove`) change a roster as the account's
/// own roster set would: pushed to its resources, and a removal ends the
/// subscriptions both ways.
#[tokio::test]
async fn the_admin_api_adds_and_removes_roster_items_with_pushes() {
    let node = TestNode::start("");
    for u in ["alice", "bob"] {
        node.add_user(u, "pw");
    }
    let mut alice = login(&node, "alice", "pw", "phone").await;
    alice.iq_xml("<iq type='get'><query xmlns='jabber:iq:roster'/></iq>").await.unwrap();

    let body = serde_json::json!({"name": "Bob", "groups": ["Work", "Friends"]});
    let (code, v) = node.api("PUT", "/api/users/localhost/alice/roster/bob@localhost", Some(body));
    assert_eq!(code, 200, "{v}");
    // The roster push reaches alice's session.
    let push = alice
        .recv_until(|e| e.name == "iq" && e.attr("type") == Some("set") && e.to_string().contains("bob@localhost"))
        .await
        .unwrap();
    assert!(push.to_string().contains("name=\"Bob\"") || push.to_string().contains("name='Bob'"), "{push}");
    let (_, v) = node.api("GET", "/api/users/localhost/alice/roster", None);
    assert_eq!(v["items"][0]["groups"], serde_json::json!(["Friends", "Work"]), "{v}");

    // Bad input: not a JID, unknown fields, no such account, no such item.
    let (code, v) = node.api("PUT", "/api/users/localhost/alice/roster/not%20a%20jid", Some(serde_json::json!({})));
    assert_eq!((code, v["error"].as_str()), (400, Some("bad_request")), "{v}");
    let (code, v) =
        node.api("PUT", "/api/users/localhost/alice/roster/bob@localhost", Some(serde_json::json!({"nick": "B"})));
    assert_eq!(code, 400, "{v}");
    let (code, v) = node.api("PUT", "/api/users/localhost/nobody/roster/bob@localhost", Some(serde_json::json!({})));
    assert_eq!(code, 404, "{v}");
    let (code, v) = node.api("DELETE", "/api/users/localhost/alice/roster/carol@localhost", None);
    assert_eq!(code, 404, "{v}");

    // The CLI: change, then remove.
    let o =
        node.cli(&["user", "roster-add", "alice@localhost", "bob@localhost", "--name", "Robert", "--group", "Work"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = node.cli(&["user", "roster", "alice@localhost"]);
    assert_eq!(stdout(&o).trim(), "bob@localhost\tRobert\tnone\tWork");
    let o = node.cli(&["user", "roster-remove", "alice@localhost", "bob@localhost"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let removal = alice.recv_until(|e| e.name == "iq" && e.to_string().contains("remove")).await.unwrap();
    assert!(removal.to_string().contains("bob@localhost"), "{removal}");
    let (_, v) = node.api("GET", "/api/users/localhost/alice/roster", None);
    assert_eq!(v["items"], serde_json::json!([]), "{v}");
}
