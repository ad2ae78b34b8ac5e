//! Federation with Prosody 0.12 and ejabberd 23.01 (Debian's packages,
//! unmodified) as peers: Meerkat serves `meerkat.test` in one network
//! namespace, the peer serves `prosody.test` or `ejabberd.test` in another,
//! and each finds the other by the hosts file of its namespace, on port 5269
//! as on the Internet. Each peer twice: with self-signed certificates, so
//! that dialback (XEP-0220) authenticates both directions; and with
//! certificates from a CA made by the test, which every server trusts, and
//! dialback turned off in the peer, so that SASL EXTERNAL (XEP-0178)
//! authenticates both directions. Each way: disco#info of the other server,
//! 1,000 messages, all delivered in order, and a presence subscription that
//! ends in `both` with presence seen on each side. A last test finds servers
//! by their SRV records, served by dnsmasq.
//!
//! Needs root (network namespaces) and the `prosody`, `lua-unbound` and
//! `ejabberd` packages, which `.ci/run` installs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use meerkat_tests::client::{body, message};
use meerkat_tests::netns::Netns;
use meerkat_tests::pki::{ymd_in_days, Issued, TestCa};
use meerkat_tests::{Client, NodeOptions, TestNode};
use meerkat_xmpp::ns;

const TIMEOUT: Duration = Duration::from_secs(30);
const PROSODY: &str = "/usr/bin/prosody";
const EJABBERDCTL: &str = "/usr/sbin/ejabberdctl";
const DNSMASQ: &str = "/usr/sbin/dnsmasq";

/// `/etc/netns/NAME/{hosts,resolv.conf}`, which `ip netns exec` puts in
/// place of the machine's; removed on drop.
struct NamespaceFiles(PathBuf);

impl NamespaceFiles {
    fn write(ns: &str, hosts: &str) -> NamespaceFiles {
        let dir = PathBuf::from("/etc/netns").join(ns);
        std::fs::create_dir_all(&dir).expect("create /etc/netns/NAME");
        std::fs::write(dir.join("hosts"), format!("127.0.0.1 localhost\n{hosts}")).expect("write hosts");
        // The namespace's own DNS server (a [`Dns`]): SRV lookups, names from hosts.
        std::fs::write(dir.join("resolv.conf"), "nameserver 127.0.0.1\n").expect("write resolv.conf");
        NamespaceFiles(dir)
    }
}

impl Drop for NamespaceFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How the servers of a test authenticate each other.
enum Auth<'a> {
    /// Self-signed certificates: dialback.
    Dialback,
    /// Certificates from this CA (its PEM file), which every server trusts;
    /// the peer has no dialback.
    Certificates(&'a TestCa, &'a Path),
}

/// A Prosody process serving `prosody.test`, stopped on drop.
struct Prosody {
    child: Child,
    dir: tempfile::TempDir,
}

impl Prosody {
    fn start(net: &Netns, i: usize, auth: &Auth) -> Prosody {
        let dir = tempfile::Builder::new().prefix("meerkat-prosody-").tempdir().expect("tempdir");
        let d = dir.path();
        std::fs::create_dir_all(d.join("data")).expect("data dir");
        let (crt, key) = (d.join("prosody.test.crt"), d.join("prosody.test.key"));
        // Dialback, or certificates only: Prosody then requires a valid
        // certificate both ways and offers EXTERNAL to servers that have one.
        let (modules, secure) = match auth {
            Auth::Dialback => {
                let cert = rcgen::generate_simple_self_signed(vec!["prosody.test".to_owned()]).expect("certificate");
                std::fs::write(&crt, cert.cert.pem()).expect("write cert");
                std::fs::write(&key, cert.signing_key.serialize_pem()).expect("write key");
                ("\"dialback\"; ", "s2s_secure_auth = false".to_owned())
            }
            Auth::Certificates(ca, ca_path) => {
                let issued = ca.server(d, "prosody.test");
                std::fs::rename(&issued.cert, &crt).expect("cert");
                std::fs::rename(&issued.key, &key).expect("key");
                (
                    "",
                    format!(
                        "s2s_secure_auth = true\nmodules_disabled = {{ \"dialback\" }}\nssl = {{ cafile = \"{}\" }}",
                        ca_path.display()
                    ),
                )
            }
        };
        let cfg = format!(
            r#"run_as_root = true
daemonize = false
pidfile = "{d}/prosody.pid"
data_path = "{d}/data"
admins = {{ }}
log = {{ debug = "{d}/prosody.log" }}
modules_enabled = {{ "roster"; "saslauth"; "tls"; "disco"; {modules}"ping" }}
authentication = "internal_plain"
c2s_require_encryption = true
s2s_require_encryption = true
{secure}
c2s_ports = {{ 5222 }}
c2s_interfaces = {{ "{client}" }}
s2s_ports = {{ 5269 }}
s2s_interfaces = {{ "{cluster}" }}
unbound = {{ hoststxt = "/etc/hosts"; resolvconf = "/etc/resolv.conf" }}
use_ipv6 = false
VirtualHost "prosody.test"
  ssl = {{ certificate = "{crt}"; key = "{key}" }}
"#,
            d = d.display(),
            crt = crt.display(),
            key = key.display(),
            client = net.client_ip(i),
            cluster = net.cluster_ip(i),
        );
        let config = d.join("prosody.cfg.lua");
        std::fs::write(&config, cfg).expect("write prosody.cfg.lua");
        let console = std::fs::File::create(d.join("console.log")).expect("console log");
        let child = Command::new("ip")
            .args(["netns", "exec", &net.ns(i), PROSODY, "-F", "--config"])
            .arg(&config)
            .stdout(console.try_clone().expect("clone"))
            .stderr(console)
            .stdin(Stdio::null())
            .spawn()
            .expect("start prosody");
        let p = Prosody { child, dir };
        p.wait_listening(SocketAddr::from((net.client_ip(i), 5222)));
        p
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("prosody.cfg.lua")
    }

    fn log(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
        format!("{}\n{}", read("console.log"), read("prosody.log"))
    }

    fn wait_listening(&self, addr: SocketAddr) {
        let deadline = Instant::now() + TIMEOUT;
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(Instant::now() < deadline, "Prosody did not listen on {addr}:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn register(&self, net: &Netns, i: usize, user: &str, password: &str) {
        let out = Command::new("ip")
            .args(["netns", "exec", &net.ns(i), "prosodyctl", "--config"])
            .arg(self.config())
            .args(["register", user, "prosody.test", password])
            .output()
            .expect("prosodyctl");
        assert!(out.status.success(), "prosodyctl register: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for Prosody {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The namespaces are named after the process: one test at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Meerkat serving `meerkat.test` in namespace `i`; with certificates, it
/// presents one for `meerkat.test` from the CA (written to `dir`) and
/// checks servers' certificates in and out against the CA.
fn meerkat(net: &Netns, i: usize, auth: &Auth, dir: &Path) -> TestNode {
    let (listen_tls, out_tls) = match auth {
        Auth::Dialback => (String::new(), String::new()),
        Auth::Certificates(ca, ca_path) => {
            let Issued { cert, key } = ca.server(dir, "meerkat.test");
            (
                format!(
                    "tls.certfile = \"{}\"\ntls.keyfile = \"{}\"\ntls.cacertfile = \"{}\"\n",
                    cert.display(),
                    key.display(),
                    ca_path.display()
                ),
                format!("tls.cacertfile = \"{}\"\n", ca_path.display()),
            )
        }
    };
    let extra = format!(
        "[[listen.s2s]]\nport = 5269\nip_address = \"{}\"\n{listen_tls}\n[s2s.outgoing]\nconnection_timeout = 5000\nip_versions = [4]\n{out_tls}",
        net.cluster_ip(i)
    );
    TestNode::start_with(NodeOptions {
        hosts: vec!["meerkat.test".into()],
        ip: net.client_ip(i),
        command_prefix: net.command_prefix(i),
        extra_toml: extra,
        ..Default::default()
    })
}

fn hosts_of(net: &Netns, peer: &str) -> String {
    format!("{} meerkat.test\n{} {peer}\n", net.cluster_ip(1), net.cluster_ip(2))
}

/// An ejabberd process serving `ejabberd.test`, stopped on drop.
struct Ejabberd {
    dir: tempfile::TempDir,
    ns: String,
}

impl Ejabberd {
    fn start(net: &Netns, i: usize, auth: &Auth) -> Ejabberd {
        let dir = tempfile::Builder::new().prefix("meerkat-ejabberd-").tempdir().expect("tempdir");
        let d = dir.path();
        for sub in ["spool", "log", "home"] {
            std::fs::create_dir_all(d.join(sub)).expect("dirs");
        }
        // ejabberd arms a timer for the certificate's expiry, which must fit
        // in Erlang's timers (49 days): rcgen's default would crash it.
        let (pem, ca_file, dialback) = match auth {
            Auth::Dialback => {
                let mut params = rcgen::CertificateParams::new(vec!["ejabberd.test".to_owned()]).expect("params");
                let ((y0, m0, d0), (y1, m1, d1)) = (ymd_in_days(-1), ymd_in_days(30));
                params.not_before = rcgen::date_time_ymd(y0, m0, d0);
                params.not_after = rcgen::date_time_ymd(y1, m1, d1);
                let key = rcgen::KeyPair::generate().expect("key");
                let cert = params.self_signed(&key).expect("certificate");
                (format!("{}{}", cert.pem(), key.serialize_pem()), String::new(), "  mod_s2s_dialback: {}\n")
            }
            // Without mod_s2s_dialback, ejabberd verifies certificates both
            // ways and authenticates with SASL EXTERNAL only.
            Auth::Certificates(ca, ca_path) => {
                let issued = ca.server(d, "ejabberd.test");
                let read = |p: &Path| std::fs::read_to_string(p).expect("read issued");
                let ca_copy = d.join("ca.pem");
                std::fs::copy(ca_path, &ca_copy).expect("copy the CA");
                (
                    format!("{}{}", read(&issued.cert), read(&issued.key)),
                    format!("ca_file: \"{}\"\n", ca_copy.display()),
                    "",
                )
            }
        };
        std::fs::write(d.join("ejabberd.test.pem"), pem).expect("write cert");
        std::fs::write(
            d.join("ejabberdctl.cfg"),
            format!(
                "ERLANG_NODE=ejabberd@localhost\nEJABBERD_PID_PATH={d}/ejabberd.pid\n\
                 ERL_OPTIONS=\"-env ERL_CRASH_DUMP_BYTES 0\"\n",
                d = d.display()
            ),
        )
        .expect("write ejabberdctl.cfg");
        std::fs::write(d.join("inetrc"), "{lookup,[\"file\",\"native\"]}.\n{host,{127,0,0,1}, [\"localhost\"]}.\n")
            .expect("write inetrc");
        let yml = format!(
            r#"loglevel: info
log_rotate_count: 0
hosts:
  - ejabberd.test
certfiles:
  - "{d}/ejabberd.test.pem"
{ca_file}s2s_use_starttls: required
s2s_dns_timeout: 2
s2s_dns_retries: 1
s2s_max_retry_delay: 1
outgoing_s2s_timeout: 10
outgoing_s2s_families: [ipv4]
auth_password_format: plain
listen:
  -
    port: 5222
    ip: "{client}"
    module: ejabberd_c2s
    starttls: true
    starttls_required: true
  -
    port: 5269
    ip: "{cluster}"
    module: ejabberd_s2s_in
acl:
  local:
    user_regexp: ""
access_rules:
  local:
    allow: local
modules:
  mod_disco: {{}}
  mod_roster: {{}}
  mod_ping: {{}}
{dialback}"#,
            d = d.display(),
            client = net.client_ip(i),
            cluster = net.cluster_ip(i),
        );
        std::fs::write(d.join("ejabberd.yml"), yml).expect("write ejabberd.yml");
        let chown = Command::new("chown").args(["-R", "ejabberd:ejabberd"]).arg(d).status().expect("chown");
        assert!(chown.success(), "chown to ejabberd");
        let e = Ejabberd { dir, ns: net.ns(i) };
        let out = e.ctl(&["start"]).output().expect("ejabberdctl start");
        assert!(out.status.success(), "ejabberdctl start: {}\n{}", String::from_utf8_lossy(&out.stderr), e.log());
        let started = e.ctl(&["started"]).output().expect("ejabberdctl started");
        assert!(started.status.success(), "ejabberd did not start:\n{}", e.log());
        let addr = SocketAddr::from((net.client_ip(i), 5222));
        let deadline = Instant::now() + TIMEOUT;
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(Instant::now() < deadline, "ejabberd did not listen on {addr}:\n{}", e.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        e
    }

    /// `ejabberdctl ARGS` as the ejabberd user, in the namespace, on this instance.
    fn ctl(&self, args: &[&str]) -> Command {
        let d = self.dir.path();
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns, "setpriv", "--reuid=ejabberd", "--regid=ejabberd", "--init-groups", "env"])
            .arg(format!("HOME={}", d.join("home").display()))
            .arg(format!("ERL_INETRC={}", d.join("inetrc").display()))
            .args(["ejabberdctl", "--config"])
            .arg(d.join("ejabberd.yml"))
            .arg("--ctl-config")
            .arg(d.join("ejabberdctl.cfg"))
            .arg("--spool")
            .arg(d.join("spool"))
            .arg("--logs")
            .arg(d.join("log"))
            .args(args)
            .current_dir(d)
            .stdin(Stdio::null());
        c
    }

    fn register(&self, user: &str, password: &str) {
        let out = self.ctl(&["register", user, "ejabberd.test", password]).output().expect("ejabberdctl register");
        assert!(out.status.success(), "ejabberdctl register: {}", String::from_utf8_lossy(&out.stdout));
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log").join("ejabberd.log")).unwrap_or_default()
    }
}

impl Drop for Ejabberd {
    fn drop(&mut self) {
        let _ = self.ctl(&["stop"]).output();
        let _ = self.ctl(&["stopped"]).output();
        if let Ok(pid) = std::fs::read_to_string(self.dir.path().join("ejabberd.pid")) {
            let _ = Command::new("kill").arg("-9").arg(pid.trim()).status();
        }
        // epmd, started by the Erlang VM, lives in the namespace too.
        if let Ok(out) = Command::new("ip").args(["netns", "pids", &self.ns]).output() {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").arg("-9").arg(pid).status();
            }
        }
    }
}

/// Messages and disco#info both ways between alice@meerkat.test and
/// bob@`peer`, whose client listener is `peer_c2s`.
async fn exchange(node: &TestNode, peer: &str, peer_c2s: SocketAddr, auth: &Auth<'_>, peer_log: &dyn Fn() -> String) {
    node.add_user_at("meerkat.test", "alice", "secret");
    let mut alice = Client::login(node.c2s, "meerkat.test", "alice", "secret", Some("m"))
        .await
        .unwrap_or_else(|e| panic!("alice: {e}"));
    let mut bob = Client::login(peer_c2s, peer, "bob", "secret", Some("p"))
        .await
        .unwrap_or_else(|e| panic!("bob: {e}\n{}", peer_log()));

    let info = alice
        .iq_xml(&format!("<iq type='get' id='d1' to='{peer}'><query xmlns='{}'/></iq>", ns::DISCO_INFO))
        .await
        .unwrap_or_else(|e| panic!("disco of {peer}: {e}\n{}\n{}", node.log(), peer_log()));
    assert_eq!(info.attr("type"), Some("result"), "{info:?}\n{}\n{}", node.log(), peer_log());
    assert!(
        info.get_child("query", ns::DISCO_INFO).is_some_and(|q| q.elements().any(|e| e.name == "identity")),
        "{info:?}"
    );
    let info = bob
        .iq_xml(&format!("<iq type='get' id='d2' to='meerkat.test'><query xmlns='{}'/></iq>", ns::DISCO_INFO))
        .await
        .unwrap_or_else(|e| panic!("disco of meerkat.test: {e}\n{}\n{}", node.log(), peer_log()));
    assert_eq!(info.attr("type"), Some("result"), "{info:?}");

    const N: usize = 1000;
    let bob_jid = format!("bob@{peer}/p");
    for i in 0..N {
        alice.send(&message(&bob_jid, &format!("m{i}"))).await.expect("alice sends");
    }
    for i in 0..N {
        let m = bob.recv_message().await.unwrap_or_else(|e| panic!("bob, message {i}: {e}\n{}", peer_log()));
        assert_eq!(body(&m).as_deref(), Some(format!("m{i}").as_str()));
        assert_eq!(m.attr("from"), Some("alice@meerkat.test/m"));
    }
    for i in 0..N {
        bob.send(&message("alice@meerkat.test/m", &format!("p{i}"))).await.expect("bob sends");
    }
    for i in 0..N {
        let m = alice.recv_message().await.unwrap_or_else(|e| panic!("alice, message {i}: {e}\n{}", node.log()));
        assert_eq!(body(&m).as_deref(), Some(format!("p{i}").as_str()));
        assert_eq!(m.attr("from"), Some(bob_jid.as_str()));
    }
    // A presence subscription both ways, ending in `both` on each side, and
    // each side then sees the other's presence.
    alice.go_online(None).await.expect("alice online");
    bob.go_online(None).await.expect("bob online");
    for client in [&mut alice, &mut bob] {
        let roster =
            client.iq_xml("<iq type='get' id='r0'><query xmlns='jabber:iq:roster'/></iq>").await.expect("roster");
        assert_eq!(roster.attr("type"), Some("result"), "{roster:?}");
    }
    let bare_bob = format!("bob@{peer}");
    alice.send_str(&format!("<presence type='subscribe' to='{bare_bob}'/>")).await.expect("subscribe");
    bob.recv_until(|e| e.name == "presence" && e.attr("type") == Some("subscribe"))
        .await
        .unwrap_or_else(|e| panic!("bob gets the request: {e}\n{}", peer_log()));
    bob.send_str("<presence type='subscribed' to='alice@meerkat.test'/>").await.expect("approve");
    bob.send_str("<presence type='subscribe' to='alice@meerkat.test'/>").await.expect("subscribe back");
    alice
        .recv_until(|e| e.name == "presence" && e.attr("type") == Some("subscribe"))
        .await
        .unwrap_or_else(|e| panic!("alice gets the request: {e}\n{}", node.log()));
    alice.send_str(&format!("<presence type='subscribed' to='{bare_bob}'/>")).await.expect("approve");
    // Each server pushes the roster item to its user's resource (both asked
    // for their roster, RFC 6121 §2.1.6) once the subscription is mutual.
    for (who, client, contact) in [("alice", &mut alice, bare_bob.as_str()), ("bob", &mut bob, "alice@meerkat.test")] {
        let log = if who == "alice" { node.log() } else { String::new() };
        client
            .recv_until(|e| {
                e.name == "iq"
                    && e.attr("type") == Some("set")
                    && e.get_child("query", ns::ROSTER).is_some_and(|q| {
                        q.elements().any(|i| i.attr("jid") == Some(contact) && i.attr("subscription") == Some("both"))
                    })
            })
            .await
            .unwrap_or_else(|e| panic!("{who}'s roster never says both for {contact}: {e}\n{log}\n{}", peer_log()));
    }
    alice.send_str("<presence><status>alice here</status></presence>").await.expect("presence");
    let seen = bob
        .recv_until(|e| {
            e.name == "presence"
                && e.attr("from") == Some("alice@meerkat.test/m")
                && e.attr("type").is_none()
                && e.get_child("status", ns::CLIENT).is_some()
        })
        .await
        .unwrap_or_else(|e| panic!("bob sees alice: {e}\n{}", peer_log()));
    assert_eq!(seen.get_child("status", ns::CLIENT).map(|s| s.text()).as_deref(), Some("alice here"));
    bob.send_str("<presence><status>bob here</status></presence>").await.expect("presence");
    let seen = alice
        .recv_until(|e| {
            e.name == "presence"
                && e.attr("from") == Some(bob_jid.as_str())
                && e.get_child("status", ns::CLIENT).is_some()
        })
        .await
        .unwrap_or_else(|e| panic!("alice sees bob: {e}\n{}", node.log()));
    assert_eq!(seen.get_child("status", ns::CLIENT).map(|s| s.text()).as_deref(), Some("bob here"));

    let log = node.log();
    assert!(log.contains("s2s stream out ready"), "{log}");
    let (code, v) = node.api("GET", "/api/s2s", None);
    assert_eq!(code, 200, "{v}");
    let out = v["outgoing"].as_array().into_iter().flatten().find(|o| o["remote"] == peer).cloned();
    let inc =
        v["incoming"].as_array().into_iter().flatten().find(|i| i["domains"] == serde_json::json!([peer])).cloned();
    let method = |x: &Option<serde_json::Value>| x.as_ref().and_then(|x| x["auth"].as_str().map(str::to_owned));
    match auth {
        // Both directions were authenticated by dialback: the peer accepted
        // our key, and we checked the peer's with its authoritative server.
        Auth::Dialback => {
            assert!(log.contains("s2s dialback in"), "{log}");
            assert_eq!((method(&out).as_deref(), method(&inc).as_deref()), (Some("dialback"), Some("dialback")), "{v}");
        }
        // Both directions by certificates: we verified the peer's and it ours.
        Auth::Certificates(..) => {
            assert!(log.contains("s2s SASL EXTERNAL in"), "{log}");
            assert!(!log.contains("s2s dialback in"), "{log}");
            assert_eq!((method(&out).as_deref(), method(&inc).as_deref()), (Some("external"), Some("external")), "{v}");
        }
    }
}

async fn with_prosody(auth: &Auth<'_>, dir: &Path) {
    assert!(Path::new(PROSODY).is_file(), "{PROSODY} is missing: install Debian's prosody and lua-unbound packages");
    let net = Netns::create(2);
    let hosts = hosts_of(&net, "prosody.test");
    let _files = [NamespaceFiles::write(&net.ns(1), &hosts), NamespaceFiles::write(&net.ns(2), &hosts)];
    // DNS servers that know no SRV records: servers are found by the hosts files.
    let _dns = [Dns::start(&net, 1, &[]), Dns::start(&net, 2, &[])];
    let node = meerkat(&net, 1, auth, dir);
    let prosody = Prosody::start(&net, 2, auth);
    prosody.register(&net, 2, "bob", "secret");
    exchange(&node, "prosody.test", SocketAddr::from((net.client_ip(2), 5222)), auth, &|| prosody.log()).await;
}

async fn with_ejabberd(auth: &Auth<'_>, dir: &Path) {
    assert!(Path::new(EJABBERDCTL).is_file(), "{EJABBERDCTL} is missing: install Debian's ejabberd package");
    let net = Netns::create(2);
    let hosts = hosts_of(&net, "ejabberd.test");
    let _files = [NamespaceFiles::write(&net.ns(1), &hosts), NamespaceFiles::write(&net.ns(2), &hosts)];
    let _dns = [Dns::start(&net, 1, &[]), Dns::start(&net, 2, &[])];
    let node = meerkat(&net, 1, auth, dir);
    let ejabberd = tokio::task::block_in_place(|| Ejabberd::start(&net, 2, auth));
    tokio::task::block_in_place(|| ejabberd.register("bob", "secret"));
    exchange(&node, "ejabberd.test", SocketAddr::from((net.client_ip(2), 5222)), auth, &|| ejabberd.log()).await;
}

/// A CA for a test, its certificate in `dir/ca.pem` (readable by the peers' users).
fn test_ca(dir: &Path) -> (TestCa, PathBuf) {
    let ca = TestCa::new("Federation test CA");
    let path = ca.write(&dir.join("ca.pem"));
    (ca, path)
}

fn test_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix("meerkat-pki-").tempdir().expect("tempdir");
    // The peers run as their own users and read the CA file here.
    let _ = Command::new("chmod").arg("755").arg(dir.path()).status();
    dir
}

#[tokio::test(flavor = "multi_thread")]
async fn meerkat_and_prosody_federate_messages_subscriptions_and_disco_over_dialback() {
    let _serial = SERIAL.lock().await;
    let dir = test_dir();
    with_prosody(&Auth::Dialback, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn meerkat_and_prosody_federate_with_certificates_over_sasl_external() {
    let _serial = SERIAL.lock().await;
    let dir = test_dir();
    let (ca, ca_path) = test_ca(dir.path());
    with_prosody(&Auth::Certificates(&ca, &ca_path), dir.path()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn meerkat_and_ejabberd_federate_messages_subscriptions_and_disco_over_dialback() {
    let _serial = SERIAL.lock().await;
    let dir = test_dir();
    with_ejabberd(&Auth::Dialback, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn meerkat_and_ejabberd_federate_with_certificates_over_sasl_external() {
    let _serial = SERIAL.lock().await;
    let dir = test_dir();
    let (ca, ca_path) = test_ca(dir.path());
    with_ejabberd(&Auth::Certificates(&ca, &ca_path), dir.path()).await;
}

/// dnsmasq answering DNS on 127.0.0.1:53 of namespace `i` with `records`
/// (its options) and nothing else; stopped on drop.
struct Dns {
    child: Child,
    dir: tempfile::TempDir,
}

impl Dns {
    fn start(net: &Netns, i: usize, records: &[String]) -> Dns {
        assert!(Path::new(DNSMASQ).is_file(), "{DNSMASQ} is missing: install Debian's dnsmasq-base package");
        let dir = tempfile::Builder::new().prefix("meerkat-dns-").tempdir().expect("tempdir");
        let log = std::fs::File::create(dir.path().join("dnsmasq.log")).expect("log");
        let child = Command::new("ip")
            .args(["netns", "exec", &net.ns(i), DNSMASQ, "--keep-in-foreground", "--conf-file=/dev/null"])
            .args(["--no-resolv", "--no-hosts", "--listen-address=127.0.0.1", "--bind-interfaces", "--user=root"])
            .arg(format!("--pid-file={}", dir.path().join("dnsmasq.pid").display()))
            .args(["--log-queries", "--log-facility=-"])
            .args(records)
            .stdout(log.try_clone().expect("clone"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("start dnsmasq");
        let dns = Dns { child, dir };
        // Ready once it answers: a TCP connection to its port inside the namespace.
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let probe = Command::new("ip")
                .args(["netns", "exec", &net.ns(i), "bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/53"])
                .stderr(Stdio::null())
                .status()
                .expect("probe");
            if probe.success() {
                break;
            }
            assert!(Instant::now() < deadline, "dnsmasq did not start:\n{}", dns.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        dns
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dnsmasq.log")).unwrap_or_default()
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Meerkat node serving `domain` in namespace `i`, federating on `port`,
/// finding other servers by DNS only (no fixed addresses; port 5269, the
/// default for A/AAAA records, has nobody listening).
fn meerkat_by_dns(net: &Netns, i: usize, domain: &str, port: u16) -> TestNode {
    let extra = format!(
        "[[listen.s2s]]\nport = {port}\nip_address = \"{}\"\n\n[s2s.outgoing]\nconnection_timeout = 5000\nip_versions = [4]\n",
        net.cluster_ip(i)
    );
    TestNode::start_with(NodeOptions {
        hosts: vec![domain.into()],
        ip: net.client_ip(i),
        command_prefix: net.command_prefix(i),
        extra_toml: extra,
        ..Default::default()
    })
}

/// Each server finds the other through its SRV records only: a.test sees
/// `_xmpp-server._tcp.b.test` (STARTTLS, port 5270) and b.test sees
/// `_xmpps-server._tcp.a.test` (direct TLS, XEP-0368, port 5271), each
/// record behind one with a lower priority whose target has no address.
#[tokio::test(flavor = "multi_thread")]
async fn servers_are_found_by_srv_records_with_starttls_and_direct_tls() {
    let _serial = SERIAL.lock().await;
    let net = Netns::create(2);
    let hosts = "";
    let _files = [NamespaceFiles::write(&net.ns(1), hosts), NamespaceFiles::write(&net.ns(2), hosts)];
    let _dns1 = Dns::start(
        &net,
        1,
        &[
            "--srv-host=_xmpp-server._tcp.b.test,gone.b.test,5269,0,0".into(),
            "--srv-host=_xmpp-server._tcp.b.test,xmpp.b.test,5270,10,0".into(),
            format!("--host-record=xmpp.b.test,{}", net.cluster_ip(2)),
        ],
    );
    let _dns2 = Dns::start(
        &net,
        2,
        &[
            "--srv-host=_xmpps-server._tcp.a.test,gone.a.test,5269,0,0".into(),
            "--srv-host=_xmpps-server._tcp.a.test,tls.a.test,5271,10,0".into(),
            format!("--host-record=tls.a.test,{}", net.cluster_ip(1)),
        ],
    );
    let a = meerkat_by_dns(&net, 1, "a.test", 5271);
    let b = meerkat_by_dns(&net, 2, "b.test", 5270);
    a.add_user_at("a.test", "alice", "secret");
    b.add_user_at("b.test", "bob", "secret");
    let mut alice = Client::login(a.c2s, "a.test", "alice", "secret", Some("r")).await.expect("alice");
    let mut bob = Client::login(b.c2s, "b.test", "bob", "secret", Some("r")).await.expect("bob");
    alice.send(&message("bob@b.test/r", "over SRV")).await.expect("send");
    let m = bob.recv_message().await.unwrap_or_else(|e| panic!("bob: {e}\n{}\n{}", a.log(), b.log()));
    assert_eq!(body(&m).as_deref(), Some("over SRV"));
    bob.send(&message("alice@a.test/r", "over SRV and direct TLS")).await.expect("send");
    let m = alice.recv_message().await.unwrap_or_else(|e| panic!("alice: {e}\n{}\n{}", a.log(), b.log()));
    assert_eq!(body(&m).as_deref(), Some("over SRV and direct TLS"));
    // b.test's stream in to a.test was TLS from its first byte.
    let (_, v) = a.api("GET", "/api/s2s", None);
    assert!(
        v["incoming"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|i| i["domains"] == serde_json::json!(["b.test"]) && i["tls"] == true),
        "{v}"
    );
    assert!(a.log().contains("s2s direct TLS in"), "{}", a.log());
}
