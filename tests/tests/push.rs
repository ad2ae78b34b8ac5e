//! The event pusher over the real node. push (XEP-0357) with Inbox on: a
//! slixmpp client's full JID is the app server (`tests/python/push.py`), and
//! gets a publish for each message to an offline user, with that user's
//! unread total as `message-count`. http: a local HTTP receiver started by
//! the test gets MongooseIM's form for each chat message with a body.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use meerkat_tests::js::venv_python;
use meerkat_tests::node::NodeOptions;
use meerkat_tests::{login, TestNode};

#[test]
fn the_app_server_gets_a_notification_with_the_unread_total_per_message_to_an_offline_user() {
    let node = TestNode::start_with(NodeOptions {
        extra_toml: "[modules.mod_inbox]\nenabled = true\n\n[modules.mod_event_pusher]\nenabled = true\n\
                     [modules.mod_event_pusher.push]\nbackend = \"rdbms\"\n"
            .into(),
        ..Default::default()
    });
    for user in ["alice", "bob", "carol", "appserver"] {
        node.add_user(user, "secret");
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/push.py");
    let out = Command::new(venv_python())
        .arg(script)
        .args(["--port", &node.c2s.port().to_string()])
        .arg("--ca")
        .arg(node.cert_path())
        .output()
        .expect("running push.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "push.py failed:\n{stdout}\n{}\nnode log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        node.log()
    );
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap();
    assert_eq!(summary["notifications"], 5, "{summary}");
}

/// One request the receiver got: its path and its body.
type Posted = (String, String);

/// A minimal HTTP/1.1 receiver on a free loopback port: answers every
/// request 200 and hands its path and url-encoded form over the channel.
fn http_receiver() -> (u16, mpsc::Receiver<Posted>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut writer = stream.try_clone().unwrap();
                let mut reader = BufReader::new(stream);
                loop {
                    let mut request_line = String::new();
                    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                        return;
                    }
                    let path = request_line.split_whitespace().nth(1).unwrap_or_default().to_owned();
                    let mut length = 0;
                    loop {
                        let mut line = String::new();
                        reader.read_line(&mut line).unwrap();
                        let line = line.trim_end();
                        if line.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = line.split_once(':') {
                            if k.eq_ignore_ascii_case("content-length") {
                                length = v.trim().parse().unwrap();
                            }
                        }
                    }
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body).unwrap();
                    writer.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").unwrap();
                    if tx.send((path, String::from_utf8(body).unwrap())).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, rx)
}

fn url_decoded_form(body: &str) -> HashMap<String, String> {
    let decode = |s: &str| {
        let bytes = s.replace('+', " ").into_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' && i + 2 < bytes.len() {
                out.push(u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap(), 16).unwrap());
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        String::from_utf8(out).unwrap()
    };
    body.split('&').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (decode(k), decode(v))).collect()
}

#[tokio::test]
async fn the_http_backend_posts_each_chat_message_with_a_body_to_the_handler() {
    let (port, posted) = http_receiver();
    let node = TestNode::start_with(NodeOptions {
        extra_toml: format!(
            "[outgoing_pools.http.http_pool]\nworkers = 2\n\
             [outgoing_pools.http.http_pool.connection]\nhost = \"http://127.0.0.1:{port}\"\npath_prefix = \"/hooks\"\n\n\
             [modules.mod_event_pusher]\nenabled = true\n\
             [[modules.mod_event_pusher.http.handlers]]\npool_name = \"http_pool\"\npath = \"/messages\"\n"
        ),
        ..Default::default()
    });
    node.add_user("alice", "secret");
    node.add_user("bob", "secret");
    let mut alice = login(&node, "alice", "secret", "a").await;
    let _bob = login(&node, "bob", "secret", "b").await;
    let bodies = ["hello bob", "ça va? & 100% = 😀", "third"];
    for (i, body) in bodies.iter().enumerate() {
        // A chat message with a body, then two that the default callback
        // leaves out: a chat state without a body and a normal message.
        alice
            .send_str(&format!(
                "<message to='bob@localhost' type='chat' id='m{i}'><body>{}</body></message>\
                 <message to='bob@localhost' type='chat'><active xmlns='http://jabber.org/protocol/chatstates'/></message>\
                 <message to='bob@localhost' type='normal'><body>not a chat</body></message>",
                body.replace('&', "&amp;")
            ))
            .await
            .unwrap();
    }
    // Two workers post side by side: in any order, each once.
    let mut got: Vec<String> = Vec::new();
    for _ in bodies {
        let (path, form) = posted.recv_timeout(Duration::from_secs(20)).expect("a POST");
        let form = url_decoded_form(&form);
        assert_eq!(path, "/hooks/messages");
        assert_eq!(
            (form["author"].as_str(), form["server"].as_str(), form["receiver"].as_str()),
            ("alice", "localhost", "bob")
        );
        assert_eq!(form.len(), 4, "{form:?}");
        got.push(form["message"].clone());
    }
    got.sort();
    let mut expected: Vec<String> = bodies.iter().map(|b| (*b).to_owned()).collect();
    expected.sort();
    assert_eq!(got, expected);
    // The left-out ones never come: a last chat message is the next POST.
    alice.send_str("<message to='bob@localhost' type='chat'><body>last</body></message>").await.unwrap();
    let (_, form) = posted.recv_timeout(Duration::from_secs(20)).expect("the last POST");
    assert_eq!(url_decoded_form(&form)["message"], "last");
    // The handler's figures are in /metrics.
    let (code, metrics) = node.api("GET", "/metrics", None);
    assert_eq!(code, 200);
    let metrics = metrics.as_str().unwrap_or_default();
    for name in ["meerkat_event_pusher_sent_total", "meerkat_event_pusher_dropped_total", "meerkat_event_pusher_queued"]
    {
        let line = format!("{name}{{backend=\"http\",url=\"http://127.0.0.1:{port}/hooks/messages\"}}");
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
}

#[tokio::test]
async fn mongoosepush_gets_a_v3_notification_for_a_virtual_pubsub_host() {
    let (port, posted) = http_receiver();
    let node = TestNode::start_with(NodeOptions {
        extra_toml: format!(
            "[outgoing_pools.http.mongoose_push_http]\nworkers = 1\n\
             [outgoing_pools.http.mongoose_push_http.connection]\nhost = \"http://127.0.0.1:{port}\"\n\n\
             [modules.mod_inbox]\nenabled = true\n\n\
             [modules.mod_event_pusher]\nenabled = true\n\
             [modules.mod_event_pusher.push]\nvirtual_pubsub_hosts = [\"virtual.@HOST@\"]\n\n\
             [modules.mod_push_service_mongoosepush]\nenabled = true\npool_name = \"mongoose_push_http\"\n"
        ),
        ..Default::default()
    });
    node.add_user("alice", "secret");
    node.add_user("bob", "secret");
    let mut alice = login(&node, "alice", "secret", "phone").await;
    let enabled = alice
        .iq_xml(
            "<iq type='set'><enable xmlns='urn:xmpp:push:0' jid='virtual.localhost' node='n1'>\
             <x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>\
             <field var='device_id'><value>device/42</value></field>\
             <field var='service'><value>fcm</value></field></x></enable></iq>",
        )
        .await
        .unwrap();
    assert_eq!(enabled.attr("type"), Some("result"), "{enabled}");
    alice.close().await.unwrap();
    let mut bob = login(&node, "bob", "secret", "b").await;
    for body in ["one", "two"] {
        bob.send_str(&format!("<message to='alice@localhost' type='chat'><body>{body}</body></message>"))
            .await
            .unwrap();
        let (path, json) = posted.recv_timeout(Duration::from_secs(20)).expect("a POST to MongoosePush");
        assert_eq!(path, "/v3/notification/device%2F42");
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["service"], "fcm");
        assert_eq!(v["alert"]["body"], body);
        assert_eq!(v["alert"]["title"], "bob@localhost/b");
        // The badge is alice's unread total.
        assert_eq!(v["alert"]["badge"], if body == "one" { 1 } else { 2 }, "{v}");
    }
}

/// The body a notification announces (`last-message-body`).
fn announced_body(publish: &str) -> String {
    let field = publish.find("last-message-body").map(|i| &publish[i..]).unwrap_or_default();
    let value = field.find("<value>").map(|i| &field[i + 7..]).unwrap_or_default();
    value.split("</value>").next().unwrap_or_default().to_owned()
}

/// A message kept for a session that lost its connection and waits for a
/// resumption (XEP-0198) is announced at once, as mobile clients need: the
/// session may wait minutes before the message would go offline. When the
/// session then gives up and the message goes offline, it is not announced
/// a second time.
#[tokio::test]
async fn a_message_for_a_detached_session_is_pushed_at_once() {
    let node = TestNode::start_with(NodeOptions {
        extra_toml: "[modules.mod_event_pusher]\nenabled = true\n[modules.mod_event_pusher.push]\n\n\
                     [modules.mod_stream_management]\nresume_timeout = 2\n"
            .into(),
        ..Default::default()
    });
    for user in ["alice", "bob", "appserver"] {
        node.add_user(user, "secret");
    }
    let mut app = login(&node, "appserver", "secret", "push").await;
    let mut alice = login(&node, "alice", "secret", "phone").await;
    let enabled = alice
        .iq_xml("<iq type='set'><enable xmlns='urn:xmpp:push:0' jid='appserver@localhost/push' node='n1'/></iq>")
        .await
        .unwrap();
    assert_eq!(enabled.attr("type"), Some("result"), "{enabled}");
    alice.send_str("<presence/><enable xmlns='urn:xmpp:sm:3' resume='true'/>").await.unwrap();
    let sm = alice.recv_until(|el| el.name == "enabled").await.unwrap();
    assert_eq!(sm.attr("resume"), Some("true"), "{sm}");
    // The phone goes out of coverage: the connection is cut, the session waits.
    drop(alice);
    let mut bob = login(&node, "bob", "secret", "b").await;
    // Until the session notices the cut, messages go to the connection; the
    // first one after it is kept for a resumption and pushed.
    let mut i = 0;
    let publish = loop {
        bob.send_str(&format!("<message to='alice@localhost/phone' type='chat'><body>m{i}</body></message>"))
            .await
            .unwrap();
        i += 1;
        match app.recv_until_timeout(Duration::from_secs(2), |el| el.name == "iq").await {
            Ok(iq) => break iq,
            Err(_) if i < 10 => continue,
            Err(e) => panic!("no push after {i} messages: {e}"),
        }
    };
    let xml = publish.to_string();
    assert!(xml.contains("urn:xmpp:push:summary") && xml.contains("<publish node='n1'>"), "{xml}");
    assert_eq!(publish.attr("from"), Some("alice@localhost"));

    // The session gives up waiting: what it held goes offline. The messages
    // that went into the cut connection are announced now, for the first
    // time; the one announced already is not announced again.
    let mut bodies = vec![announced_body(&xml)];
    meerkat_tests::wait_until("alice's session gone", Duration::from_secs(30), || {
        let (_, v) = node.api("GET", "/api/sessions", None);
        !v.to_string().contains("alice@localhost/phone")
    });
    bob.send_str("<message to='alice@localhost' type='chat'><body>after</body></message>").await.unwrap();
    loop {
        let iq = app.recv_until(|el| el.name == "iq").await.unwrap();
        let body = announced_body(&iq.to_string());
        if body == "after" {
            break;
        }
        bodies.push(body);
    }
    let mut sorted = bodies.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), bodies.len(), "a message announced twice: {bodies:?}");
}
