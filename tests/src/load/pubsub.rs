//! The `pubsub` scenario: one publisher and N - 1 subscribers of one node of
//! a XEP-0060 service. The publisher creates the node (a new one per run
//! unless `--node` names one; an existing node is used as it is),
//! every subscriber subscribes, then the publisher publishes at `--rate`
//! items per second (open loop), each item's payload a probe
//! (`SEQ SEND_NS SENDER` in a `<body/>`); the report gives notifications
//! delivered per second, their latency from publish to delivery, and loss.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use meerkat_xmpp::element::{escape_attr, Element};
use meerkat_xmpp::ns;
use meerkat_xmpp::parser::StreamEvent;
use serde_json::{json, Map};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::time::Instant;

use super::cli::{Common, PubsubArgs};
use super::conn::{stanza_error_condition, Session, Target};
use super::pool::hist_ms;
use super::procstat::{round, Sampler};
use super::traffic::{self, Mode, Peer, Plan, Probe};
use super::RunResult;

const PUBSUB: &str = "http://jabber.org/protocol/pubsub";

/// Sends `xml` on `s` and reads until the IQ with `id` answers; other stanzas are skipped.
async fn round_trip(s: &mut Session, xml: &str, id: &str, deadline: Instant) -> Result<Element, String> {
    let who = s.jid.clone();
    let w = tokio::time::timeout_at(deadline, async {
        s.stream.write_all(xml.as_bytes()).await?;
        s.stream.flush().await
    })
    .await;
    if !matches!(w, Ok(Ok(()))) {
        return Err(format!("{who}: write failed"));
    }
    let mut buf = vec![0u8; 8192];
    loop {
        match s.parser.next_event() {
            Ok(Some(StreamEvent::Stanza(el))) if el.name == "iq" && el.attr("id") == Some(id) => return Ok(el),
            Ok(Some(StreamEvent::Stanza(el))) if el.is("error", ns::STREAM) => {
                return Err(format!("{who}: stream error {}", super::conn::stream_error_condition(&el)))
            }
            Ok(Some(_)) => continue,
            Ok(None) => {}
            Err(e) => return Err(format!("{who}: {e}")),
        }
        match tokio::time::timeout_at(deadline, s.stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => s.parser.feed(&buf[..n]),
            Ok(_) => return Err(format!("{who}: the server closed the connection")),
            Err(_) => return Err(format!("{who}: no answer to {id} in time")),
        }
    }
}

pub async fn pubsub(c: &Common, a: &PubsubArgs, target: Arc<Target>) -> Result<RunResult> {
    if c.users < 2 {
        bail!("pubsub needs at least 2 users: a publisher and subscribers");
    }
    if a.rate <= 0.0 {
        bail!("--rate must be positive");
    }
    let mut sampler = Sampler::new(c.pid, super::scenarios::SAMPLE_EVERY);
    let rss_idle = sampler.rss_now();
    let (phase, sessions) = super::scenarios::login_sessions(c, target).await;
    if phase.failures.count() > 0 {
        return Ok(super::scenarios::login_failed("pubsub", &phase));
    }
    let mut sessions: Vec<Session> = sessions.into_iter().flatten().collect();
    let deadline = Instant::now() + Duration::from_secs_f64(a.setup_timeout);
    let node = a.node.clone().unwrap_or_else(|| {
        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        format!("meerkat-load-{secs}-{}", std::process::id())
    });
    let service = a.service.clone();

    // The node: created by the publisher, or there from an earlier run.
    let mut create = String::from("<iq type='set' id='create' to='");
    escape_attr(&mut create, &service);
    let _ = write!(create, "'><pubsub xmlns='{PUBSUB}'><create node='");
    escape_attr(&mut create, &node);
    create.push_str("'/></pubsub></iq>");
    let created = round_trip(&mut sessions[0], &create, "create", deadline).await.map_err(anyhow::Error::msg)?;
    let cond = stanza_error_condition(&created);
    if created.attr("type") == Some("error") && cond.as_deref() != Some("conflict") {
        bail!("creating the node: {}", created.to_xml(ns::CLIENT));
    }

    // Every subscriber subscribes, all at once.
    let setup_start = Instant::now();
    let publisher = sessions.remove(0);
    let mut tasks = Vec::with_capacity(sessions.len());
    for mut s in sessions {
        let (service, node) = (service.clone(), node.clone());
        tasks.push(tokio::spawn(async move {
            let mut xml = String::from("<iq type='set' id='sub' to='");
            escape_attr(&mut xml, &service);
            let _ = write!(xml, "'><pubsub xmlns='{PUBSUB}'><subscribe node='");
            escape_attr(&mut xml, &node);
            xml.push_str("' jid='");
            escape_attr(&mut xml, &s.jid);
            xml.push_str("'/></pubsub></iq>");
            let res = round_trip(&mut s, &xml, "sub", deadline).await?;
            if res.attr("type") != Some("result") {
                return Err(format!("{}: subscribe: {}", s.jid, res.to_xml(ns::CLIENT)));
            }
            Ok(s)
        }));
    }
    let mut subscribers = Vec::with_capacity(tasks.len());
    let mut errors = Vec::new();
    for t in tasks {
        match t.await {
            Ok(Ok(s)) => subscribers.push(s),
            Ok(Err(e)) => errors.push(e),
            Err(e) => errors.push(e.to_string()),
        }
    }
    if !errors.is_empty() {
        bail!("{} subscriptions failed, first: {}", errors.len(), errors[0]);
    }
    let setup_s = setup_start.elapsed().as_secs_f64();

    let fanout = subscribers.len() as u64;
    let mut peers = vec![Peer { session: publisher, to: None, sends: true }];
    peers.extend(subscribers.into_iter().map(|session| Peer { session, to: None, sends: false }));
    let plan = Plan {
        mode: Mode::Open(a.rate),
        probe: Probe::Publish { service: service.clone(), node: node.clone() },
        warmup: Duration::from_secs_f64(c.warmup.unwrap_or(2.0)),
        duration: Duration::from_secs_f64(c.duration.unwrap_or(10.0)),
        grace: Duration::from_secs_f64(c.grace.max(0.0)),
        fanout,
    };
    let o = traffic::run(peers, &plan, &mut sampler).await;
    let d = plan.duration.as_secs_f64().max(1e-9);
    let lat = hist_ms(&o.latency);
    let mut json = Map::new();
    json.insert("mode".into(), json!("open"));
    json.insert("rate".into(), json!(a.rate));
    json.insert("subscribers".into(), json!(fanout));
    json.insert("subscribe_s".into(), json!(round(setup_s, 3)));
    json.insert("duration_s".into(), json!(d));
    json.insert("published".into(), json!(o.sent));
    json.insert("published_per_s".into(), json!(round(o.sent_in_window as f64 / d, 1)));
    super::scenarios::deliveries_json(&mut json, &o, d, &lat);
    json.insert("rss_idle_kib".into(), json!(rss_idle));
    let success = o.lost == 0 && o.disconnects == 0 && o.stanza_errors == 0 && o.sent > 0;
    let ms = |q: &str| lat.get(q).and_then(|v| v.as_f64()).map_or("-".to_owned(), |v| format!("{v:.2} ms"));
    let mut human = format!(
        "pubsub: 1 publisher, {fanout} subscribers of {node} at {service} (subscribed in {setup_s:.1} s), \
         {:.0} items/s offered, {d:.1} s measured\n\
         delivered {:.0} notifications/s (published {:.0}/s); latency p50 {} p99 {} p99.9 {} max {}\n\
         published {} received {} lost {} out of order {} errors {} disconnects {} not offered {}\n",
        a.rate,
        o.received_in_window as f64 / d,
        o.sent_in_window as f64 / d,
        ms("p50"),
        ms("p99"),
        ms("p999"),
        ms("max"),
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
