//! Prometheus exposition of the node's metrics (`GET /metrics`).
//!
//! Two kinds of figures end up in one text:
//! - events counted where they happen (elements in and out, bytes, logins,
//!   database operations, cluster hops; see `meerkat_actors::instrument`),
//!   through the `metrics` facade into the recorder installed at start when
//!   `[instrumentation.prometheus]` is enabled (the default);
//! - the node's own counters and states (router, cluster, global
//!   distribution, modules), kept as plain atomics where the work happens
//!   and copied into the same recorder at each scrape.
//!
//! Histograms are kept with fixed buckets (`*_byte_size` in bytes,
//! `*_seconds` in seconds). The figures taken on every stanza or every read
//! and write (`xmpp_element_*`, `tcp_data_*`/`tls_data_*`,
//! `meerkat_route_local_seconds`) are atomics of their own
//! (`meerkat_actors::instrument::FixedCounter` and `FixedHistogram`),
//! appended to the text; for the other histograms an upkeep task drains the
//! recorder's samples into the buckets every few seconds, so memory stays
//! bounded between scrapes.

use std::sync::atomic::Ordering;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use meerkat_actors::instrument::{BYTE_BUCKETS, SECONDS_BUCKETS};
use metrics::{counter, gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use crate::admin::AdminState;

/// How often histogram samples are folded into their buckets.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Where the node's figures are recorded.
pub enum Metrics {
    /// The process-wide recorder: events and scraped counters.
    Installed(PrometheusHandle),
    /// Instrumentation is off: scraped counters only, in a recorder of our own.
    Scraped(Mutex<PrometheusRecorder>),
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

fn builder() -> PrometheusBuilder {
    let b = PrometheusBuilder::new();
    let b = b
        .set_buckets_for_metric(Matcher::Suffix("byte_size".into()), BYTE_BUCKETS)
        .unwrap_or_else(|_| PrometheusBuilder::new());
    b.set_buckets_for_metric(Matcher::Suffix("seconds".into()), SECONDS_BUCKETS)
        .unwrap_or_else(|_| PrometheusBuilder::new())
}

/// Installs the process's recorder when `instrumented`; call once, before
/// anything registers a handle.
pub fn install(instrumented: bool) {
    let m = if instrumented {
        let recorder = builder().build_recorder();
        let handle = recorder.handle();
        match metrics::set_global_recorder(recorder) {
            Ok(()) => Metrics::Installed(handle),
            Err(_) => {
                tracing::warn!("a metrics recorder was already installed; events are not counted");
                Metrics::Scraped(Mutex::new(builder().build_recorder()))
            }
        }
    } else {
        Metrics::Scraped(Mutex::new(builder().build_recorder()))
    };
    let _ = METRICS.set(m);
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    METRICS.get_or_init(|| Metrics::Scraped(Mutex::new(builder().build_recorder())))
}

impl Metrics {
    /// The text exposition of the node's current figures.
    pub fn render(&self, state: &AdminState) -> String {
        match self {
            Metrics::Installed(handle) => {
                record(state);
                // The per-stanza counters and histograms are kept outside the recorder.
                let mut text = handle.render();
                text.push_str(&state.svc.instruments.render());
                text
            }
            Metrics::Scraped(recorder) => {
                let recorder = recorder.lock().unwrap_or_else(|e| e.into_inner());
                metrics::with_local_recorder(&*recorder, || record(state));
                recorder.handle().render()
            }
        }
    }

    /// Folds histogram samples into buckets every few seconds until `stop`.
    pub async fn upkeep(&self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let Metrics::Installed(handle) = self else { return };
        loop {
            tokio::select! {
                _ = tokio::time::sleep(UPKEEP_EVERY) => handle.run_upkeep(),
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }
}

fn record(state: &AdminState) {
    let router = &state.svc.router;
    gauge!("meerkat_sessions_local").set(router.sink_count() as f64);
    gauge!("meerkat_sessions_cluster").set(router.sessions().len() as f64);
    let rs = &router.stats;
    counter!("meerkat_router_routed_total").absolute(rs.routed.load(Ordering::Relaxed));
    counter!("meerkat_router_bounced_total").absolute(rs.bounced.load(Ordering::Relaxed));
    counter!("meerkat_router_dropped_total").absolute(rs.dropped.load(Ordering::Relaxed));
    counter!("meerkat_session_overflow_refused_total").absolute(meerkat_actors::session::overflow_refused());
    // MongooseIM's names for the same figures.
    counter!("sm_message_bounced_count").absolute(rs.messages_bounced.load(Ordering::Relaxed));
    counter!("router_stanza_dropped_count").absolute(rs.dropped.load(Ordering::Relaxed));
    gauge!("sm_node_sessions_count").set(router.sink_count() as f64);
    gauge!("sm_total_sessions_count").set(router.sessions().len() as f64);
    gauge!("system_up_time_seconds").set(state.svc.uptime().as_secs_f64());
    for m in state.svc.ctx.hooks.metrics() {
        let labels: Vec<metrics::Label> = m.labels.into_iter().map(|(k, v)| metrics::Label::new(k, v)).collect();
        if m.counter {
            counter!(m.name, labels).absolute(m.value as u64);
        } else {
            gauge!(m.name, labels).set(m.value);
        }
    }
    if let Some(t) = router.transport() {
        let ts = &t.stats;
        counter!("meerkat_cluster_stanzas_sent_total").absolute(ts.stanzas_sent.load(Ordering::Relaxed));
        counter!("meerkat_cluster_stanzas_received_total").absolute(ts.stanzas_received.load(Ordering::Relaxed));
        counter!("meerkat_cluster_stanzas_requeued_total").absolute(ts.stanzas_requeued.load(Ordering::Relaxed));
        counter!("meerkat_cluster_bad_frames_total").absolute(ts.bad_frames.load(Ordering::Relaxed));
        counter!("meerkat_cluster_refused_connections_total").absolute(ts.refused_connections.load(Ordering::Relaxed));
        for (peer, queued, unacked) in t.queue_depths() {
            let labels = [("peer", peer.to_string())];
            gauge!("meerkat_cluster_peer_queued", &labels).set(queued as f64);
            gauge!("meerkat_cluster_peer_unacked", &labels).set(unacked as f64);
        }
    }
    if let Some(c) = &state.cluster {
        let s = c.status();
        gauge!("meerkat_cluster_term").set(s.term as f64);
        gauge!("meerkat_cluster_is_leader").set(if s.state == "leader" { 1.0 } else { 0.0 });
        gauge!("meerkat_cluster_members").set(s.members.len() as f64);
        counter!("meerkat_cluster_leader_changes_total").absolute(c.leader_changes());
        let last = s.last_log_index.unwrap_or(0);
        let committed = s.committed_index.unwrap_or(0);
        let applied = s.applied_index.unwrap_or(0);
        gauge!("meerkat_cluster_last_log_index").set(last as f64);
        gauge!("meerkat_cluster_committed_index").set(committed as f64);
        gauge!("meerkat_cluster_applied_index").set(applied as f64);
        gauge!("meerkat_cluster_commit_lag").set(last.saturating_sub(committed) as f64);
        gauge!("meerkat_cluster_apply_lag").set(committed.saturating_sub(applied) as f64);
        for m in &s.members {
            let labels = [("member", m.id.to_string())];
            gauge!("meerkat_cluster_member_reachable", &labels).set(if m.reachable { 1.0 } else { 0.0 });
            gauge!("meerkat_cluster_member_sessions", &labels).set(m.sessions as f64);
            if let Some(lag) = m.lag {
                gauge!("meerkat_cluster_member_replication_lag", &labels).set(lag as f64);
            }
        }
    }
    if let Some(g) = &state.global {
        let s = g.status();
        gauge!("meerkat_global_redis_reachable").set(if s.redis.reachable { 1.0 } else { 0.0 });
        counter!("meerkat_global_redis_errors_total").absolute(s.redis.errors);
        counter!("meerkat_global_full_refreshes_total").absolute(s.redis.full_refreshes);
        gauge!("meerkat_global_pairs").set(s.queues.pairs as f64);
        gauge!("meerkat_global_pending").set(s.queues.pending as f64);
        gauge!("meerkat_global_in_flight").set(s.queues.in_flight as f64);
        gauge!("meerkat_global_parked_pairs").set(s.queues.parked_pairs as f64);
        let c = &s.counters;
        for (name, v) in [
            ("forwarded", c.forwarded),
            ("received", c.received),
            ("duplicates", c.duplicates),
            ("links_refused", c.links_refused),
            ("link_bad_frames", c.link_bad_frames),
            ("delivered_here", c.delivered_here),
            ("bounces", c.bounces),
            ("bounce_expired", c.bounce_expired),
            ("resends", c.resends),
            ("ttl_zero", c.ttl_zero),
            ("cache_hits", c.cache_hits),
            ("cache_misses", c.cache_misses),
            ("lookups", c.lookups),
            ("learned", c.learned),
            ("link_full", c.link_full),
            ("refused", c.refused),
            ("requeued", c.requeued),
        ] {
            counter!(format!("meerkat_global_{name}_total")).absolute(v);
        }
        for dc in &s.data_centers {
            for l in &dc.links {
                let labels = [("dc", dc.local_host.clone()), ("endpoint", l.endpoint.clone())];
                gauge!("meerkat_global_link_connected", &labels).set(if l.connected { 1.0 } else { 0.0 });
                gauge!("meerkat_global_link_queued", &labels).set(l.queued as f64);
                gauge!("meerkat_global_link_unacked", &labels).set(l.unacked as f64);
                counter!("meerkat_global_link_sent_total", &labels).absolute(l.sent);
                counter!("meerkat_global_link_acked_total", &labels).absolute(l.acked);
                counter!("meerkat_global_link_resent_total", &labels).absolute(l.resent);
                counter!("meerkat_global_link_failures_total", &labels).absolute(l.failures);
                counter!("meerkat_global_link_handed_back_total", &labels).absolute(l.handed_back);
            }
        }
    }
}
