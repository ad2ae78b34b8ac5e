//! The scenarios: `login`, `chat`, `presence`, `idle` and `register` (`pubsub` has a file of its own).

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Result};
use meerkat_xmpp::element::{escape_attr, Element};
use meerkat_xmpp::ns;
use meerkat_xmpp::parser::StreamEvent;
use serde_json::{json, Map, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::watch;
use tokio::time::Instant;

use super::cli::{ChatArgs, Cli, Common, IdleArgs, LoginArgs, PresenceArgs, Scenario};
use super::conn::{stream_error_condition, Session, Target};
use super::pool::{hist_ms, lock, login_all, register_all, Holders, LoginPhase};
use super::procstat::{round, Sampler};
use super::traffic::{self, Mode, Peer, Plan, Probe};
use super::RunResult;

/// RSS sampling period during a measured window.
pub(super) const SAMPLE_EVERY: Duration = Duration::from_millis(200);

/// The scenario's name in the JSON line.
pub fn name(s: &Scenario) -> &'static str {
    match s {
        Scenario::Login(_) => "login",
        Scenario::Chat(_) => "chat",
        Scenario::Presence(_) => "presence",
        Scenario::Idle(_) => "idle",
        Scenario::Pubsub(_) => "pubsub",
        Scenario::Register => "register",
        Scenario::Report(_) => "report",
    }
}

pub async fn run(cli: &Cli) -> Result<RunResult> {
    let c = &cli.common;
    if c.users == 0 {
        bail!("--users must be at least 1");
    }
    warn_ports(c);
    let mut target = Target::new(c)?;
    if let Scenario::Chat(ChatArgs { recv_server: Some(server), .. }) = &cli.scenario {
        target.recv_addr = Some(Target::resolve(server)?);
    }
    let target = Arc::new(target);
    let mut pre = Map::new();
    if c.register || matches!(cli.scenario, Scenario::Register) {
        let t = Instant::now();
        let (ok, failures) = register_all(target.clone(), c.first_index, c.users, c.concurrency).await;
        let wall = t.elapsed().as_secs_f64();
        pre.insert(
            "registration".into(),
            json!({ "ok": ok, "failures": failures.count(), "first_errors": failures.first(), "wall_s": round(wall, 3) }),
        );
        if let Scenario::Register = cli.scenario {
            let human = format!(
                "register: {ok}/{} users created or already there in {wall:.1} s ({:.0}/s), {} failures{}",
                c.users,
                ok as f64 / wall.max(1e-9),
                failures.count(),
                first_errors_text(&failures.first())
            );
            return Ok(RunResult { human, json: pre, success: failures.count() == 0 });
        }
        if failures.count() > 0 {
            return Ok(RunResult {
                human: format!("registration failed: {}", first_errors_text(&failures.first())),
                json: pre,
                success: false,
            });
        }
    }
    let mut r = match &cli.scenario {
        Scenario::Login(a) => login(c, a, target).await?,
        Scenario::Chat(a) => chat(c, a, target).await?,
        Scenario::Presence(a) => presence(c, a, target).await?,
        Scenario::Idle(a) => idle(c, a, target).await?,
        Scenario::Pubsub(a) => super::pubsub::pubsub(c, a, target).await?,
        Scenario::Register | Scenario::Report(_) => bail!("not a load scenario"),
    };
    r.json.extend(pre);
    Ok(r)
}

/// Warns when one source address cannot give enough ephemeral ports.
fn warn_ports(c: &Common) {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().filter_map(|x| x.parse::<u64>().ok());
            Some(it.next()?..=it.next()?)
        })
        .map(|r| r.end() - r.start() + 1)
        .unwrap_or(28232);
    let addrs = c.source_ips.0.len().max(1) as u64;
    if c.users > range * addrs {
        eprintln!(
            "meerkat-load: warning: {} connections but {addrs} source address(es) x {range} ephemeral ports; add --source-ips",
            c.users
        );
    }
}

fn first_errors_text(errors: &[String]) -> String {
    if errors.is_empty() {
        return String::new();
    }
    let mut s = String::from("; first errors:");
    for e in errors.iter().take(5) {
        let _ = write!(s, "\n  {e}");
    }
    s
}

fn login_json(p: &LoginPhase) -> Value {
    json!({
        "ok": p.ok,
        "failures": p.failures.count(),
        "first_errors": p.failures.first(),
        "wall_s": round(p.wall.as_secs_f64(), 3),
        "logins_per_s": round(p.ok as f64 / p.wall.as_secs_f64().max(1e-9), 1),
        "ttfp_ms": hist_ms(&p.ttfp),
    })
}

fn ms(h: &Value, q: &str) -> String {
    h.get(q).and_then(Value::as_f64).map(|v| format!("{v:.2} ms")).unwrap_or_else(|| "-".into())
}

fn kib_per(loaded: Option<u64>, idle: Option<u64>, n: u64) -> Option<f64> {
    match (loaded, idle) {
        (Some(l), Some(i)) if n > 0 => Some(round((l as f64 - i as f64) / n as f64, 2)),
        _ => None,
    }
}

fn secs(v: Option<f64>, default: f64) -> Duration {
    Duration::from_secs_f64(v.unwrap_or(default).max(0.0))
}

/// Logs everybody in and returns the sessions in user order (`None` where the login failed).
pub(super) async fn login_sessions(c: &Common, target: Arc<Target>) -> (LoginPhase, Vec<Option<Session>>) {
    let slots: Arc<Mutex<Vec<Option<Session>>>> = Arc::new(Mutex::new((0..c.users).map(|_| None).collect()));
    let store = slots.clone();
    let phase = login_all(
        target,
        c.first_index,
        c.users,
        c.concurrency,
        None,
        Arc::new(move |k, s| {
            if let Some(slot) = lock(&store).get_mut(k) {
                *slot = Some(s);
            }
        }),
    )
    .await;
    let sessions = std::mem::take(&mut *lock(&slots));
    (phase, sessions)
}

// ---------------------------------------------------------------- login

async fn login(c: &Common, a: &LoginArgs, target: Arc<Target>) -> Result<RunResult> {
    if a.warm_up {
        // Not measured: fills the SCRAM cache and hands out FAST tokens.
        let holders = Holders::new(Some(Duration::from_secs(60)));
        let h = holders.clone();
        let warm =
            login_all(target.clone(), c.first_index, c.users, c.concurrency, None, Arc::new(move |k, s| h.hold(k, s)))
                .await;
        holders.close_all(Duration::from_secs(10)).await;
        if warm.failures.count() > 0 {
            bail!(
                "warm-up: {} of the logins failed{}",
                warm.failures.count(),
                first_errors_text(&warm.failures.first())
            );
        }
    }
    let fast_before = target.fast_logins.load(std::sync::atomic::Ordering::Relaxed);
    let mut sampler = Sampler::new(c.pid, SAMPLE_EVERY);
    let rss_idle = sampler.rss_now();
    let holders = Holders::new(Some(Duration::from_secs(60)));
    let deadline = Instant::now() + secs(c.duration, 300.0);
    sampler.begin();
    let h = holders.clone();
    let phase = login_all(
        target.clone(),
        c.first_index,
        c.users,
        c.concurrency,
        Some(deadline),
        Arc::new(move |k, s| h.hold(k, s)),
    )
    .await;
    let window = sampler.end();
    let fast_logins = target.fast_logins.load(std::sync::atomic::Ordering::Relaxed) - fast_before;
    tokio::time::sleep(Duration::from_secs_f64(c.settle.max(0.0))).await;
    let rss_connected = sampler.rss_now();
    let per_session = kib_per(rss_connected, rss_idle, phase.ok);
    let dropped_before_hold = holders.dropped();
    if a.hold > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(a.hold)).await;
    }
    let dropped = holders.dropped();
    holders.close_all(Duration::from_secs(10)).await;

    let mut json = Map::new();
    let lj = login_json(&phase);
    json.insert("logins".into(), json!(phase.ok));
    for key in ["failures", "first_errors", "wall_s", "logins_per_s", "ttfp_ms"] {
        json.insert(key.into(), lj[key].clone());
    }
    json.insert("dropped".into(), json!(dropped));
    // Measured logins that used a FAST token (the others used the password).
    json.insert("fast_logins".into(), json!(fast_logins));
    json.insert("rss_idle_kib".into(), json!(rss_idle));
    json.insert("rss_connected_kib".into(), json!(rss_connected));
    json.insert("kib_per_session".into(), json!(per_session));
    json.insert("window".into(), window.to_json());
    let success = phase.failures.count() == 0 && phase.ok == c.users && dropped == 0;
    let mut human = format!(
        "login: {}/{} users in {:.2} s = {} logins/s ({} in flight); time to first presence p50 {} p99 {}; {} failures, {} dropped{}\n",
        phase.ok,
        c.users,
        phase.wall.as_secs_f64(),
        lj["logins_per_s"],
        c.concurrency,
        ms(&lj["ttfp_ms"], "p50"),
        ms(&lj["ttfp_ms"], "p99"),
        phase.failures.count(),
        dropped.max(dropped_before_hold),
        first_errors_text(&phase.failures.first()),
    );
    if c.pid.is_some() {
        let _ = writeln!(
            human,
            "server RSS idle {} KiB, connected {} KiB, {} KiB per session; {}",
            rss_idle.unwrap_or(0),
            rss_connected.unwrap_or(0),
            per_session.map(|v| v.to_string()).unwrap_or_else(|| "-".into()),
            window.human()
        );
    }
    Ok(RunResult { human, json, success })
}

// ---------------------------------------------------------------- idle

async fn idle(c: &Common, a: &IdleArgs, target: Arc<Target>) -> Result<RunResult> {
    let mut sampler = Sampler::new(c.pid, SAMPLE_EVERY);
    let rss_idle = sampler.rss_now();
    let keepalive = (a.keepalive > 0.0).then(|| Duration::from_secs_f64(a.keepalive));
    let holders = Holders::new(keepalive);
    let h = holders.clone();
    let phase =
        login_all(target, c.first_index, c.users, c.concurrency, None, Arc::new(move |k, s| h.hold(k, s))).await;
    tokio::time::sleep(secs(c.warmup, c.settle)).await;
    sampler.begin();
    tokio::time::sleep(secs(c.duration, 10.0)).await;
    let window = sampler.end();
    let dropped = holders.dropped();
    let held = phase.ok.saturating_sub(dropped);
    holders.close_all(Duration::from_secs(30)).await;
    let per_session = kib_per(window.rss_avg_kib, rss_idle, held);

    let mut json = Map::new();
    json.insert("login".into(), login_json(&phase));
    json.insert("connections".into(), json!(held));
    json.insert("failures".into(), json!(phase.failures.count()));
    json.insert("dropped".into(), json!(dropped));
    json.insert("rss_idle_kib".into(), json!(rss_idle));
    json.insert("rss_loaded_kib".into(), json!(window.rss_avg_kib));
    json.insert("kib_per_session".into(), json!(per_session));
    json.insert("window".into(), window.to_json());
    let success = phase.failures.count() == 0 && dropped == 0 && held == c.users;
    let mut human = format!(
        "idle: {held}/{} connections held for {:.1} s ({} logins/s while connecting), {} failures, {} dropped{}\n",
        c.users,
        window.wall_s,
        login_json(&phase)["logins_per_s"],
        phase.failures.count(),
        dropped,
        first_errors_text(&phase.failures.first())
    );
    if c.pid.is_some() {
        let _ = writeln!(
            human,
            "server RSS idle {} KiB, loaded {} KiB (average over the window), {} KiB per session; {}",
            rss_idle.unwrap_or(0),
            window.rss_avg_kib.unwrap_or(0),
            per_session.map(|v| v.to_string()).unwrap_or_else(|| "-".into()),
            window.human()
        );
    }
    Ok(RunResult { human, json, success })
}

// ---------------------------------------------------------------- chat

async fn chat(c: &Common, a: &ChatArgs, target: Arc<Target>) -> Result<RunResult> {
    if c.users < 2 || !c.users.is_multiple_of(2) {
        bail!("chat needs an even number of users (pairs), at least 2");
    }
    let mode = match (a.rate, a.window) {
        (Some(r), _) if r > 0.0 => Mode::Open(r),
        (Some(_), _) => bail!("--rate must be positive"),
        (None, w) => Mode::Closed(w.unwrap_or(10).max(1)),
    };
    let mut sampler = Sampler::new(c.pid, SAMPLE_EVERY);
    let rss_idle = sampler.rss_now();
    let (phase, sessions) = login_sessions(c, target).await;
    if phase.failures.count() > 0 {
        return Ok(login_failed("chat", &phase));
    }
    let sessions: Vec<Session> = sessions.into_iter().flatten().collect();
    let jids: Vec<String> = sessions.iter().map(|s| s.jid.clone()).collect();
    let peers = sessions
        .into_iter()
        .enumerate()
        .map(|(k, session)| Peer { session, to: Some(jids[k ^ 1].clone()), sends: !a.one_way || k.is_multiple_of(2) })
        .collect();
    let plan = Plan {
        mode,
        probe: Probe::Chat { body_pad: a.body_pad },
        warmup: secs(c.warmup, 2.0),
        duration: secs(c.duration, 10.0),
        grace: Duration::from_secs_f64(c.grace.max(0.0)),
        fanout: 1,
    };
    let o = traffic::run(peers, &plan, &mut sampler).await;
    let d = plan.duration.as_secs_f64().max(1e-9);
    let lat = hist_ms(&o.latency);
    let mut json = Map::new();
    json.insert("login".into(), login_json(&phase));
    match mode {
        Mode::Closed(w) => {
            json.insert("mode".into(), json!("closed"));
            json.insert("window_per_sender".into(), json!(w));
        }
        Mode::Open(r) => {
            json.insert("mode".into(), json!("open"));
            json.insert("rate".into(), json!(r));
        }
    }
    json.insert("one_way".into(), json!(a.one_way));
    json.insert("recv_server".into(), json!(a.recv_server));
    json.insert("warmup_s".into(), json!(plan.warmup.as_secs_f64()));
    json.insert("duration_s".into(), json!(d));
    json.insert("sent".into(), json!(o.sent));
    json.insert("sent_per_s".into(), json!(round(o.sent_in_window as f64 / d, 1)));
    deliveries_json(&mut json, &o, d, &lat);
    json.insert("rss_idle_kib".into(), json!(rss_idle));
    let success = o.lost == 0 && o.disconnects == 0 && o.stanza_errors == 0 && o.sent > 0;
    let mode_text = match mode {
        Mode::Closed(w) => format!("closed loop, {w} outstanding per sender"),
        Mode::Open(r) => format!("open loop, {r} msg/s offered"),
    };
    let mode_text = match &a.recv_server {
        Some(server) => format!("{mode_text}; receivers on {server}"),
        None => mode_text,
    };
    let mut human = format!(
        "chat: {} users ({mode_text}), {:.1} s measured after {:.1} s warm-up\n\
         delivered {:.0} msg/s (sent {:.0}/s); latency p50 {} p99 {} p99.9 {} max {}\n\
         sent {} received {} lost {} out of order {} errors {} disconnects {} not offered {}\n",
        c.users,
        d,
        plan.warmup.as_secs_f64(),
        o.received_in_window as f64 / d,
        o.sent_in_window as f64 / d,
        ms(&lat, "p50"),
        ms(&lat, "p99"),
        ms(&lat, "p999"),
        ms(&lat, "max"),
        o.sent,
        o.received,
        o.lost,
        o.out_of_order,
        o.stanza_errors,
        o.disconnects,
        o.not_offered
    );
    if c.pid.is_some() {
        let _ = writeln!(human, "{}", o.window.human());
    }
    Ok(RunResult { human, json, success })
}

/// What every traffic scenario reports of its deliveries over `d` seconds measured.
pub(super) fn deliveries_json(json: &mut Map<String, Value>, o: &traffic::Outcome, d: f64, lat: &Value) {
    json.insert("received".into(), json!(o.received));
    json.insert("lost".into(), json!(o.lost));
    json.insert("out_of_order".into(), json!(o.out_of_order));
    json.insert("stanza_errors".into(), json!(o.stanza_errors));
    json.insert("disconnects".into(), json!(o.disconnects));
    json.insert("not_offered".into(), json!(o.not_offered));
    json.insert("delivered_per_s".into(), json!(round(o.received_in_window as f64 / d, 1)));
    json.insert("latency_ms".into(), lat.clone());
    json.insert("window".into(), o.window.to_json());
}

pub(super) fn login_failed(scenario: &str, phase: &LoginPhase) -> RunResult {
    let mut json = Map::new();
    json.insert("login".into(), login_json(phase));
    json.insert("error".into(), json!("login failed"));
    RunResult {
        human: format!(
            "{scenario}: {} of the logins failed{}",
            phase.failures.count(),
            first_errors_text(&phase.failures.first())
        ),
        json,
        success: false,
    }
}

// ---------------------------------------------------------------- presence

/// The contacts of user `i` among `u` users: the `r/2` neighbours on each
/// side of a ring, and the opposite user when `r` is odd. Always mutual.
pub fn contacts_of(i: u64, u: u64, r: u64) -> Vec<u64> {
    let mut out = Vec::with_capacity(r as usize);
    for d in 1..=r / 2 {
        out.push((i + d) % u);
        out.push((i + u - d) % u);
    }
    if !r.is_multiple_of(2) {
        out.push((i + u / 2) % u);
    }
    out
}

async fn presence(c: &Common, a: &PresenceArgs, target: Arc<Target>) -> Result<RunResult> {
    let (u, r) = (c.users, a.contacts);
    if r == 0 || r >= u {
        bail!("--contacts must be between 1 and users - 1");
    }
    if !r.is_multiple_of(2) && !u.is_multiple_of(2) {
        bail!("an odd number of --contacts needs an even number of users");
    }
    if a.rate <= 0.0 {
        bail!("--rate must be positive");
    }
    let mut sampler = Sampler::new(c.pid, SAMPLE_EVERY);
    let rss_idle = sampler.rss_now();
    let (phase, sessions) = login_sessions(c, target.clone()).await;
    if phase.failures.count() > 0 {
        return Ok(login_failed("presence", &phase));
    }
    let sessions: Vec<Session> = sessions.into_iter().flatten().collect();

    // Roster set-up over the protocol: every user subscribes to its
    // contacts and approves their requests until all subscriptions are mutual.
    let setup_start = Instant::now();
    let setup_deadline = setup_start + Duration::from_secs_f64(a.setup_timeout);
    let (all_done_tx, all_done_rx) = watch::channel(false);
    let (progress_tx, mut progress_rx) = tokio::sync::mpsc::unbounded_channel::<Result<(), String>>();
    let mut tasks = Vec::with_capacity(u as usize);
    for (i, s) in sessions.into_iter().enumerate() {
        let contacts: HashSet<String> =
            contacts_of(i as u64, u, r).into_iter().map(|j| target.bare_jid(c.first_index + j)).collect();
        let (done, progress) = (all_done_rx.clone(), progress_tx.clone());
        tasks.push(tokio::spawn(setup_roster(s, contacts, setup_deadline, done, progress)));
    }
    drop(progress_tx);
    let mut done = 0u64;
    let mut setup_errors = Vec::new();
    while done + (setup_errors.len() as u64) < u {
        match tokio::time::timeout_at(setup_deadline, progress_rx.recv()).await {
            Ok(Some(Ok(()))) => done += 1,
            Ok(Some(Err(e))) => setup_errors.push(e),
            Ok(None) => break,
            Err(_) => {
                setup_errors.push(format!("{} users not set up in {} s", u - done, a.setup_timeout));
                break;
            }
        }
    }
    let _ = all_done_tx.send(true);
    let mut sessions = Vec::with_capacity(u as usize);
    for t in tasks {
        match t.await {
            Ok(Ok(s)) => sessions.push(s),
            Ok(Err(e)) => setup_errors.push(e),
            Err(e) => setup_errors.push(format!("set-up task: {e}")),
        }
    }
    let setup_s = setup_start.elapsed().as_secs_f64();
    if !setup_errors.is_empty() || sessions.len() as u64 != u {
        let mut json = Map::new();
        json.insert("login".into(), login_json(&phase));
        json.insert("error".into(), json!("roster set-up failed"));
        json.insert("first_errors".into(), json!(setup_errors.iter().take(10).collect::<Vec<_>>()));
        return Ok(RunResult {
            human: format!("presence: roster set-up failed{}", first_errors_text(&setup_errors)),
            json,
            success: false,
        });
    }
    let peers = sessions.into_iter().map(|session| Peer { session, to: None, sends: true }).collect();
    let plan = Plan {
        mode: Mode::Open(a.rate),
        probe: Probe::Presence,
        warmup: secs(c.warmup, 2.0),
        duration: secs(c.duration, 10.0),
        grace: Duration::from_secs_f64(c.grace.max(0.0)),
        fanout: r,
    };
    let o = traffic::run(peers, &plan, &mut sampler).await;
    let d = plan.duration.as_secs_f64().max(1e-9);
    let lat = hist_ms(&o.latency);
    let mut json = Map::new();
    json.insert("login".into(), login_json(&phase));
    json.insert("contacts".into(), json!(r));
    json.insert("rate".into(), json!(a.rate));
    json.insert("setup_s".into(), json!(round(setup_s, 3)));
    json.insert("warmup_s".into(), json!(plan.warmup.as_secs_f64()));
    json.insert("duration_s".into(), json!(d));
    json.insert("changes_sent".into(), json!(o.sent));
    json.insert("changes_per_s".into(), json!(round(o.sent_in_window as f64 / d, 1)));
    json.insert("expected_deliveries".into(), json!(o.sent * r));
    json.insert("deliveries".into(), json!(o.received));
    json.insert("self_deliveries".into(), json!(o.received_self));
    json.insert("lost".into(), json!(o.lost));
    json.insert("out_of_order".into(), json!(o.out_of_order));
    json.insert("stanza_errors".into(), json!(o.stanza_errors));
    json.insert("disconnects".into(), json!(o.disconnects));
    json.insert("not_offered".into(), json!(o.not_offered));
    json.insert("deliveries_per_s".into(), json!(round(o.received_in_window as f64 / d, 1)));
    json.insert("latency_ms".into(), lat.clone());
    json.insert("rss_idle_kib".into(), json!(rss_idle));
    json.insert("window".into(), o.window.to_json());
    let success = o.lost == 0 && o.disconnects == 0 && o.stanza_errors == 0 && o.sent > 0;
    let mut human = format!(
        "presence: {u} users x {r} contacts (set up in {setup_s:.1} s), {} changes/s offered, {d:.1} s measured\n\
         fan-out {:.0} deliveries/s to contacts ({:.0} changes/s); latency p50 {} p99 {} p99.9 {}\n\
         changes {} deliveries {} (expected {}) lost {} to own resource {} out of order {} errors {} disconnects {}\n",
        a.rate,
        o.received_in_window as f64 / d,
        o.sent_in_window as f64 / d,
        ms(&lat, "p50"),
        ms(&lat, "p99"),
        ms(&lat, "p999"),
        o.sent,
        o.received,
        o.sent * r,
        o.lost,
        o.received_self,
        o.out_of_order,
        o.stanza_errors,
        o.disconnects
    );
    if c.pid.is_some() {
        let _ = writeln!(human, "{}", o.window.human());
    }
    Ok(RunResult { human, json, success })
}

fn bare(jid: &str) -> &str {
    jid.split('/').next().unwrap_or(jid)
}

/// Makes `s`'s roster hold exactly `contacts`, all with subscription
/// `both`: removes other items, subscribes where needed and approves the
/// contacts' requests. Reports to `progress` once done, and keeps
/// answering until `all_done`.
async fn setup_roster(
    mut s: Session,
    contacts: HashSet<String>,
    deadline: Instant,
    mut all_done: watch::Receiver<bool>,
    progress: tokio::sync::mpsc::UnboundedSender<Result<(), String>>,
) -> Result<Session, String> {
    let me = bare(&s.jid).to_owned();
    let mut state: HashMap<String, String> = HashMap::new();
    let mut fetched = false;
    let mut reported = false;
    let mut buf = vec![0u8; 4096];
    let mut out = String::new();
    out.push_str("<iq type='get' id='roster0'><query xmlns='jabber:iq:roster'/></iq>");
    loop {
        if !out.is_empty() {
            let w = tokio::time::timeout_at(deadline, async {
                s.stream.write_all(out.as_bytes()).await?;
                s.stream.flush().await
            })
            .await;
            if !matches!(w, Ok(Ok(()))) {
                let e = format!("{me}: roster set-up: write failed");
                let _ = progress.send(Err(e.clone()));
                return Err(e);
            }
            out.clear();
        }
        if fetched && !reported && contacts.iter().all(|j| state.get(j).map(String::as_str) == Some("both")) {
            reported = true;
            let _ = progress.send(Ok(()));
        }
        // Handle what is parsed already, then read more.
        let el = match s.parser.next_event() {
            Ok(Some(StreamEvent::Stanza(el))) => Some(el),
            Ok(Some(StreamEvent::Header(_))) => continue,
            Ok(Some(StreamEvent::End)) => {
                return fail(&progress, reported, format!("{me}: the server closed the stream"))
            }
            Err(e) => return fail(&progress, reported, format!("{me}: {e}")),
            Ok(None) => None,
        };
        let Some(el) = el else {
            let n = tokio::select! {
                r = tokio::time::timeout_at(deadline, s.stream.read(&mut buf)) => r,
                _ = all_done.changed() => return Ok(s),
            };
            match n {
                Ok(Ok(n)) if n > 0 => s.parser.feed(&buf[..n]),
                Ok(_) => return fail(&progress, reported, format!("{me}: the server closed the connection")),
                Err(_) if reported => {
                    // Done, and waiting for the others past the deadline: the caller decides.
                    let _ = all_done.changed().await;
                    return Ok(s);
                }
                Err(_) => return fail(&progress, reported, format!("{me}: roster set-up timed out")),
            }
            continue;
        };
        if el.is("error", ns::STREAM) {
            return fail(&progress, reported, format!("{me}: stream error {}", stream_error_condition(&el)));
        }
        match (el.name.as_str(), el.attr("type")) {
            ("iq", Some("result")) if el.attr("id") == Some("roster0") => {
                fetched = true;
                for item in roster_items(&el) {
                    let (jid, sub) = item;
                    if contacts.contains(&jid) {
                        state.insert(jid, sub);
                    } else {
                        out.push_str("<iq type='set' id='rm'><query xmlns='jabber:iq:roster'><item jid='");
                        escape_attr(&mut out, &jid);
                        out.push_str("' subscription='remove'/></query></iq>");
                    }
                }
                for j in &contacts {
                    if !matches!(state.get(j).map(String::as_str), Some("to") | Some("both")) {
                        out.push_str("<presence type='subscribe' to='");
                        escape_attr(&mut out, j);
                        out.push_str("'/>");
                    }
                }
            }
            ("iq", Some("set")) if el.has_child("query", ns::ROSTER) => {
                for (jid, sub) in roster_items(&el) {
                    if sub == "remove" {
                        state.remove(&jid);
                    } else {
                        state.insert(jid, sub);
                    }
                }
                out.push_str("<iq type='result' id='");
                escape_attr(&mut out, el.attr("id").unwrap_or_default());
                out.push_str("'/>");
            }
            ("presence", Some("subscribe")) => {
                let from = bare(el.attr("from").unwrap_or_default()).to_owned();
                let answer = if contacts.contains(&from) { "subscribed" } else { "unsubscribed" };
                let _ = write!(out, "<presence type='{answer}' to='");
                escape_attr(&mut out, &from);
                out.push_str("'/>");
            }
            _ => {}
        }
    }
}

fn fail(
    progress: &tokio::sync::mpsc::UnboundedSender<Result<(), String>>,
    reported: bool,
    e: String,
) -> Result<Session, String> {
    if !reported {
        let _ = progress.send(Err(e.clone()));
    }
    Err(e)
}

/// `(bare JID, subscription)` of every item in a roster query.
fn roster_items(iq: &Element) -> Vec<(String, String)> {
    iq.get_child("query", ns::ROSTER)
        .map(|q| {
            q.elements()
                .filter(|e| e.name == "item")
                .filter_map(|e| Some((e.attr("jid")?.to_owned(), e.attr("subscription").unwrap_or("none").to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::contacts_of;

    #[test]
    fn contacts_are_mutual_and_distinct() {
        for (u, r) in [(10u64, 2u64), (10, 3), (10, 9), (7, 4), (100, 10)] {
            for i in 0..u {
                let c = contacts_of(i, u, r);
                let set: std::collections::HashSet<_> = c.iter().copied().collect();
                assert_eq!(set.len() as u64, r, "u={u} r={r} i={i}: {c:?}");
                assert!(!set.contains(&i));
                for j in c {
                    assert!(contacts_of(j, u, r).contains(&i), "u={u} r={r}: {i}->{j} not mutual");
                }
            }
        }
    }
}
