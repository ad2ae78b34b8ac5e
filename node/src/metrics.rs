//! Prometheus exposition of the node's counters (`GET /metrics`).
//!
//! The counters live where the work happens (router, cluster transport,
//! global distribution) as plain atomics; a scrape copies them into a
//! recorder local to this module and renders the text format with
//! `metrics-exporter-prometheus`, so nothing is recorded between scrapes.

use std::sync::atomic::Ordering;
use std::sync::{Mutex, OnceLock};

use metrics::{counter, gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};

use crate::admin::AdminState;

/// The recorder that scrapes write into.
pub struct Metrics {
    recorder: Mutex<PrometheusRecorder>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics { recorder: Mutex::new(PrometheusBuilder::new().build_recorder()) }
    }
}

/// The process's one scrape recorder.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::default)
}

impl Metrics {
    /// The text exposition of the node's current figures.
    pub fn render(&self, state: &AdminState) -> String {
        let recorder = self.recorder.lock().unwrap_or_else(|e| e.into_inner());
        metrics::with_local_recorder(&*recorder, || record(state));
        recorder.handle().render()
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
