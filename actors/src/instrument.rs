//! Traffic instrumentation with MongooseIM 6.4's event names and labels.
//!
//! Handles are made once, at start, one set per host and connection type,
//! and handed to the connections that use them, so that counting an element
//! is a few atomic additions and no lookup. The figures taken on every
//! element and every read or write ([`FixedCounter`], [`FixedHistogram`])
//! are atomics kept here and rendered by the node ([`Instruments::render`]);
//! the others (logins, sessions, failed authentications) go to whatever
//! `metrics` recorder the node installed (none: those handles do nothing).
//!
//! - `xmpp_element_in_*` and `xmpp_element_out_*`: one event as soon as an
//!   element is parsed from a peer, one just before an element is written
//!   to it, labelled `connection_type` (`c2s`, `s2s`, `component`) and
//!   `host_type`. Measurements: `count`, `stanza_count`, `message_count`,
//!   `iq_count`, `presence_count`, `error_count`, the three per-kind error
//!   counts, and `byte_size` (a histogram of the element's size on the wire).
//! - `tcp_data_in`/`tcp_data_out` and `tls_data_in`/`tls_data_out`
//!   (`byte_size`): bytes read from and written to RFC 6120 streams, in the
//!   clear and under TLS (after decryption, before encryption).
//! - `c2s_auth_failed_count`, `component_auth_failed_count`.
//! - `sm_session_logins`, `sm_session_logouts`, `sm_session_count`.
//! - `meerkat_route_local_seconds`: from the read that brought a stanza in on this node to its
//!   copy queued for a recipient's connection on this node.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use metrics::{counter, gauge, Counter, Gauge};

use meerkat_xmpp::element::Element;

/// What kind of peer a connection serves (the `connection_type` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConnectionType {
    C2s,
    S2s,
    Component,
}

impl ConnectionType {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionType::C2s => "c2s",
            ConnectionType::S2s => "s2s",
            ConnectionType::Component => "component",
        }
    }
}

/// Buckets of the size histograms, in bytes.
pub const BYTE_BUCKETS: &[f64] = &[64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0, 65536.0];
/// Buckets of the latency histograms, in seconds.
pub const SECONDS_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// A histogram with fixed buckets kept in atomics, for the figures taken on
/// every stanza: a sample is two atomic additions and no allocation (the
/// recorder's histograms keep every sample until their upkeep). The node
/// renders them in Prometheus' text format ([`Instruments::render`]).
pub struct FixedHistogram {
    name: String,
    labels: Vec<(&'static str, String)>,
    bounds: &'static [f64],
    /// Samples per bucket (not cumulative); the last is `+Inf`.
    counts: Box<[AtomicU64]>,
    /// The sum of the samples, in `unit`s.
    sum: AtomicU64,
    unit: f64,
}

impl FixedHistogram {
    fn new(name: String, labels: Vec<(&'static str, String)>, bounds: &'static [f64], unit: f64) -> Arc<Self> {
        let counts = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        Arc::new(FixedHistogram { name, labels, bounds, counts, sum: AtomicU64::new(0), unit })
    }

    /// Counts one sample of `value` (in the histogram's own unit: bytes, or
    /// seconds for a latency).
    pub fn record(&self, value: f64) {
        let i = self.bounds.partition_point(|b| *b < value);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add((value / self.unit).round() as u64, Ordering::Relaxed);
    }

    /// Appends the histogram's lines (buckets, sum, count) to `out`.
    fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        let list = label_list(&self.labels);
        let before_le = if list.is_empty() { String::new() } else { format!("{list},") };
        let mut cumulative = 0u64;
        for (i, c) in self.counts.iter().enumerate() {
            cumulative += c.load(Ordering::Relaxed);
            let le = self.bounds.get(i).map(|b| b.to_string()).unwrap_or_else(|| "+Inf".into());
            let _ = writeln!(out, "{}_bucket{{{before_le}le=\"{le}\"}} {cumulative}", self.name);
        }
        let labels = if list.is_empty() { String::new() } else { format!("{{{list}}}") };
        let sum = self.sum.load(Ordering::Relaxed) as f64 * self.unit;
        let _ = writeln!(out, "{}_sum{labels} {sum}", self.name);
        let _ = writeln!(out, "{}_count{labels} {cumulative}", self.name);
    }
}

/// A counter kept in an atomic, for the figures taken on every stanza or
/// every read and write (the recorder's counters go through a generation
/// check on each increment). Rendered by the node with the histograms.
pub struct FixedCounter {
    name: String,
    labels: Vec<(&'static str, String)>,
    value: AtomicU64,
    /// Counters whose values this one adds to its own when read: a total
    /// costs no addition of its own per event.
    sum_of: Vec<Arc<FixedCounter>>,
}

impl FixedCounter {
    fn new(name: String, labels: Vec<(&'static str, String)>) -> Arc<Self> {
        Arc::new(FixedCounter { name, labels, value: AtomicU64::new(0), sum_of: Vec::new() })
    }

    /// A counter that reads as the sum of `parts`.
    fn sum(name: String, labels: Vec<(&'static str, String)>, parts: Vec<Arc<FixedCounter>>) -> Arc<Self> {
        Arc::new(FixedCounter { name, labels, value: AtomicU64::new(0), sum_of: parts })
    }

    pub fn increment(&self, n: u64) {
        self.value.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed) + self.sum_of.iter().map(|c| c.get()).sum::<u64>()
    }

    /// Appends the counter's line to `out`.
    fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        let list = label_list(&self.labels);
        let labels = if list.is_empty() { String::new() } else { format!("{{{list}}}") };
        let _ = writeln!(out, "{}{labels} {}", self.name, self.get());
    }
}

/// The `host_type` of connections that belong to no configured host.
pub const GLOBAL_HOST_TYPE: &str = "global";

/// The measurements of one event (`xmpp_element_in` or `xmpp_element_out`)
/// for one connection type and host.
pub struct ElementMetrics {
    /// Totals, read as sums of the counters below.
    count: Arc<FixedCounter>,
    stanza_count: Arc<FixedCounter>,
    error_count: Arc<FixedCounter>,
    message_count: Arc<FixedCounter>,
    iq_count: Arc<FixedCounter>,
    presence_count: Arc<FixedCounter>,
    message_error_count: Arc<FixedCounter>,
    iq_error_count: Arc<FixedCounter>,
    presence_error_count: Arc<FixedCounter>,
    /// Elements that are not stanzas, and those of them that are errors: parts of the totals only.
    other_count: Arc<FixedCounter>,
    other_error_count: Arc<FixedCounter>,
    byte_size: Arc<FixedHistogram>,
}

/// What an element is, as the measurements tell kinds apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Message,
    Iq,
    Presence,
    Other,
}

impl ElementMetrics {
    fn register(event: &'static str, ct: ConnectionType, host: &str) -> ElementMetrics {
        let labels = [("connection_type", ct.as_str().to_owned()), ("host_type", host.to_owned())];
        let c = |m: &str| FixedCounter::new(format!("{event}_{m}"), labels.to_vec());
        let (message_count, iq_count, presence_count) = (c("message_count"), c("iq_count"), c("presence_count"));
        let (message_error_count, iq_error_count, presence_error_count) =
            (c("message_error_count"), c("iq_error_count"), c("presence_error_count"));
        let (other_count, other_error_count) = (c("other_count"), c("other_error_count"));
        let total = |m: &str, parts: &[&Arc<FixedCounter>]| {
            FixedCounter::sum(format!("{event}_{m}"), labels.to_vec(), parts.iter().map(|c| Arc::clone(c)).collect())
        };
        ElementMetrics {
            count: total("count", &[&message_count, &iq_count, &presence_count, &other_count]),
            stanza_count: total("stanza_count", &[&message_count, &iq_count, &presence_count]),
            error_count: total(
                "error_count",
                &[&message_error_count, &iq_error_count, &presence_error_count, &other_error_count],
            ),
            message_count,
            iq_count,
            presence_count,
            message_error_count,
            iq_error_count,
            presence_error_count,
            other_count,
            other_error_count,
            byte_size: FixedHistogram::new(format!("{event}_byte_size"), labels.to_vec(), BYTE_BUCKETS, 1.0),
        }
    }

    /// The counters exposed (the parts of the totals that are not are left out).
    fn counters(&self) -> [&Arc<FixedCounter>; 9] {
        [
            &self.count,
            &self.stanza_count,
            &self.message_count,
            &self.iq_count,
            &self.presence_count,
            &self.error_count,
            &self.message_error_count,
            &self.iq_error_count,
            &self.presence_error_count,
        ]
    }

    fn record(&self, kind: Kind, is_error: bool, bytes: usize) {
        self.byte_size.record(bytes as f64);
        let (kind_count, kind_error) = match kind {
            Kind::Message => (&self.message_count, &self.message_error_count),
            Kind::Iq => (&self.iq_count, &self.iq_error_count),
            Kind::Presence => (&self.presence_count, &self.presence_error_count),
            // A stream error is an error too (MongooseIM counts it so).
            Kind::Other => (&self.other_count, &self.other_error_count),
        };
        kind_count.increment(1);
        if is_error {
            kind_error.increment(1);
        }
    }

    /// An element parsed from a peer, `bytes` long on the wire.
    pub fn parsed(&self, el: &Element, bytes: usize) {
        let kind = match el.name.as_str() {
            "message" => Kind::Message,
            "iq" => Kind::Iq,
            "presence" => Kind::Presence,
            _ => Kind::Other,
        };
        let is_error = match kind {
            Kind::Other => el.name == "error",
            _ => el.attr("type") == Some("error"),
        };
        self.record(kind, is_error, bytes);
    }

    /// Serialized output about to be written: one element, or a stream's
    /// header or end (not elements: not counted), or an element followed by
    /// the stream's end (a stream error).
    pub fn serialized(&self, xml: &[u8]) {
        let (kind, is_error) = classify(xml);
        if let Some(kind) = kind {
            self.record(kind, is_error, xml.len());
        }
    }
}

/// What serialized output starts with: the element's kind (None for a
/// stream header, a stream's end or whitespace) and whether it is an error.
/// Reads the start tag only.
fn classify(xml: &[u8]) -> (Option<Kind>, bool) {
    let start = xml.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(xml.len());
    let xml = &xml[start..];
    if xml.is_empty() || xml.starts_with(b"<?") || xml.starts_with(b"</") || xml.starts_with(b"<stream:stream") {
        return (None, false);
    }
    let tag = &xml[..memchr::memchr(b'>', xml).unwrap_or(xml.len())];
    let name_end = tag.iter().position(|&b| b.is_ascii_whitespace() || b == b'/').unwrap_or(tag.len());
    let name = tag.get(1..name_end).unwrap_or_default();
    let kind = match name {
        b"message" => Kind::Message,
        b"iq" => Kind::Iq,
        b"presence" => Kind::Presence,
        _ => Kind::Other,
    };
    let is_error = match kind {
        Kind::Other => name == b"stream:error" || name == b"error",
        _ => has_error_type(&tag[name_end..]),
    };
    (Some(kind), is_error)
}

/// Whether the attributes of a start tag hold `type='error'` (or `"error"`).
fn has_error_type(attrs: &[u8]) -> bool {
    static TYPE: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b" type="));
    TYPE.find_iter(attrs).any(|at| {
        let value = &attrs[at + 6..];
        value.len() > 6 && matches!(value[0], b'\'' | b'"') && &value[1..6] == b"error" && value[6] == value[0]
    })
}

/// Everything counted for one connection type on one host.
pub struct HostMetrics {
    pub element_in: ElementMetrics,
    pub element_out: ElementMetrics,
    pub auth_failed: Counter,
    pub logins: Counter,
    pub logouts: Counter,
    pub sessions: Gauge,
}

impl HostMetrics {
    fn register(ct: ConnectionType, host: &str) -> HostMetrics {
        let labels = [("host_type", host.to_owned())];
        HostMetrics {
            element_in: ElementMetrics::register("xmpp_element_in", ct, host),
            element_out: ElementMetrics::register("xmpp_element_out", ct, host),
            auth_failed: counter!(format!("{}_auth_failed_count", ct.as_str()), &labels),
            logins: counter!("sm_session_logins", &labels),
            logouts: counter!("sm_session_logouts", &labels),
            sessions: gauge!("sm_session_count", &labels),
        }
    }

    /// A session opened; [`SessionMetric`] counts it closed when dropped.
    pub fn session_opened(self: &Arc<Self>) -> SessionMetric {
        self.logins.increment(1);
        self.sessions.increment(1.0);
        SessionMetric(self.clone())
    }
}

/// One open session, counted in `sm_session_count` until dropped.
pub struct SessionMetric(Arc<HostMetrics>);

impl Drop for SessionMetric {
    fn drop(&mut self) {
        self.0.logouts.increment(1);
        self.0.sessions.decrement(1.0);
    }
}

/// Bytes in and out of one kind of connection, in the clear or under TLS.
#[derive(Clone)]
pub struct DataMetrics {
    pub data_in: Arc<FixedCounter>,
    pub data_out: Arc<FixedCounter>,
}

impl DataMetrics {
    fn register(ct: ConnectionType, tls: bool) -> DataMetrics {
        let prefix = if tls { "tls" } else { "tcp" };
        let labels = vec![("connection_type", ct.as_str().to_owned())];
        DataMetrics {
            data_in: FixedCounter::new(format!("{prefix}_data_in_byte_size"), labels.clone()),
            data_out: FixedCounter::new(format!("{prefix}_data_out_byte_size"), labels),
        }
    }
}

/// A connection's meters: its host's element counts once the host is
/// known, and its bytes by transport.
#[derive(Clone, Default)]
pub struct Meter {
    pub host: Option<Arc<HostMetrics>>,
    pub data: Option<DataMetrics>,
}

impl std::fmt::Debug for Meter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Meter").field("host", &self.host.is_some()).field("data", &self.data.is_some()).finish()
    }
}

impl Meter {
    pub fn parsed(&self, el: &Element, bytes: usize) {
        if let Some(h) = &self.host {
            h.element_in.parsed(el, bytes);
        }
    }

    pub fn serialized(&self, xml: &[u8]) {
        if let Some(h) = &self.host {
            h.element_out.serialized(xml);
        }
    }

    pub fn read(&self, bytes: usize) {
        if let Some(d) = &self.data {
            d.data_in.increment(bytes as u64);
        }
    }

    pub fn wrote(&self, bytes: usize) {
        if let Some(d) = &self.data {
            d.data_out.increment(bytes as u64);
        }
    }
}

/// The node's handles, registered once.
pub struct Instruments {
    /// By connection type, then host.
    hosts: HashMap<ConnectionType, HashMap<String, Arc<HostMetrics>>>,
    data: HashMap<(ConnectionType, bool), DataMetrics>,
    route_local: Arc<FixedHistogram>,
    /// Every [`FixedHistogram`] above, sorted by name and labels for rendering.
    histograms: Vec<Arc<FixedHistogram>>,
    /// Every [`FixedCounter`] above, sorted likewise.
    counters: Vec<Arc<FixedCounter>>,
}

impl Instruments {
    /// Registers the handles for `hosts` (and for connections that belong to
    /// none, as `global`) with the recorder installed now.
    pub fn register(hosts: &[String]) -> Instruments {
        let mut by_host: HashMap<ConnectionType, HashMap<String, Arc<HostMetrics>>> = HashMap::new();
        for ct in [ConnectionType::C2s, ConnectionType::S2s, ConnectionType::Component] {
            for host in hosts.iter().map(String::as_str).chain([GLOBAL_HOST_TYPE]) {
                by_host.entry(ct).or_default().insert(host.to_owned(), Arc::new(HostMetrics::register(ct, host)));
            }
        }
        let mut data = HashMap::new();
        for ct in [ConnectionType::C2s, ConnectionType::S2s, ConnectionType::Component] {
            for tls in [false, true] {
                data.insert((ct, tls), DataMetrics::register(ct, tls));
            }
        }
        let route_local = FixedHistogram::new("meerkat_route_local_seconds".into(), Vec::new(), SECONDS_BUCKETS, 1e-9);
        let mut histograms = vec![route_local.clone()];
        for h in by_host.values().flat_map(|hosts| hosts.values()) {
            histograms.push(h.element_in.byte_size.clone());
            histograms.push(h.element_out.byte_size.clone());
        }
        histograms.sort_by(|a, b| (&a.name, &a.labels).cmp(&(&b.name, &b.labels)));
        let mut counters: Vec<Arc<FixedCounter>> = by_host
            .values()
            .flat_map(|hosts| hosts.values())
            .flat_map(|h| h.element_in.counters().into_iter().chain(h.element_out.counters()).cloned())
            .chain(data.values().flat_map(|d| [d.data_in.clone(), d.data_out.clone()]))
            .collect();
        counters.sort_by(|a, b| (&a.name, &a.labels).cmp(&(&b.name, &b.labels)));
        Instruments { hosts: by_host, data, route_local, histograms, counters }
    }

    /// The handles of `host` (`global` for a host not configured here).
    pub fn host(&self, ct: ConnectionType, host: &str) -> Arc<HostMetrics> {
        let hosts = &self.hosts[&ct];
        hosts.get(host).unwrap_or_else(|| &hosts[GLOBAL_HOST_TYPE]).clone()
    }

    /// The byte counters of a connection type, in the clear or under TLS.
    pub fn data(&self, ct: ConnectionType, tls: bool) -> DataMetrics {
        self.data[&(ct, tls)].clone()
    }

    /// The counters and histograms kept here, in Prometheus' text format,
    /// grouped by name.
    pub fn render(&self) -> String {
        let mut out = String::new();
        render_grouped(&mut out, "counter", &self.counters, |c| &c.name, FixedCounter::render);
        render_grouped(&mut out, "histogram", &self.histograms, |h| &h.name, FixedHistogram::render);
        out
    }

    /// A stanza read at `read_at` has just been queued for a local recipient.
    pub fn routed_locally(&self, read_at: Instant) {
        self.route_local.record(read_at.elapsed().as_secs_f64());
    }
}

/// Appends `items` (sorted by name) to `out`, with a `# TYPE` line before each name.
fn render_grouped<T>(
    out: &mut String,
    kind: &str,
    items: &[Arc<T>],
    name: impl Fn(&T) -> &str,
    render: impl Fn(&T, &mut String),
) {
    let mut last: Option<&str> = None;
    for item in items {
        let n = name(item);
        if last != Some(n) {
            out.push_str(&format!("# TYPE {n} {kind}\n"));
            last = Some(n);
        }
        render(item, out);
    }
}

/// `k="v",…` of a metric's labels, without braces.
fn label_list(labels: &[(&'static str, String)]) -> String {
    labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect::<Vec<_>>().join(",")
}

thread_local! {
    /// When the stanza being routed on this thread was parsed, while a
    /// session routes what its client sent (routing to a local recipient is
    /// synchronous, on the sender's thread).
    static ROUTING: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
}

/// Marks the stanza parsed at `parsed` as the one this thread routes until
/// the guard is dropped.
pub fn routing(parsed: Instant) -> RoutingGuard {
    let before = ROUTING.with(|r| r.replace(Some(parsed)));
    RoutingGuard(before)
}

/// When the stanza this thread is routing was parsed, if it came from a client here.
pub fn routing_since() -> Option<Instant> {
    ROUTING.with(|r| r.get())
}

pub struct RoutingGuard(Option<Instant>);

impl Drop for RoutingGuard {
    fn drop(&mut self) {
        ROUTING.with(|r| r.set(self.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_are_the_sums_of_their_parts() {
        let m = ElementMetrics::register("xmpp_element_out", ConnectionType::C2s, "h");
        for xml in [
            &b"<message type='chat'><body>x</body></message>"[..],
            b"<message type='error'/>",
            b"<iq type='result' id='1'/>",
            b"<presence/>",
            b"<r xmlns='urn:xmpp:sm:3'/>",
            b"<stream:error><conflict/></stream:error></stream:stream>",
            b"</stream:stream>",
        ] {
            m.serialized(xml);
        }
        let mut out = String::new();
        for c in m.counters() {
            c.render(&mut out);
        }
        let value = |name: &str| {
            let line = out.lines().find(|l| l.starts_with(&format!("xmpp_element_out_{name}{{"))).unwrap();
            line.rsplit(' ').next().unwrap().parse::<u64>().unwrap()
        };
        assert_eq!(value("count"), 6, "{out}");
        assert_eq!(value("stanza_count"), 4, "{out}");
        assert_eq!(value("message_count"), 2, "{out}");
        assert_eq!(value("iq_count"), 1, "{out}");
        assert_eq!(value("presence_count"), 1, "{out}");
        assert_eq!(value("error_count"), 2, "{out}");
        assert_eq!(value("message_error_count"), 1, "{out}");
        assert_eq!(value("iq_error_count"), 0, "{out}");
        assert!(!out.contains("other"), "the parts of the totals are not exposed:\n{out}");
        assert!(out.contains("xmpp_element_out_count{connection_type=\"c2s\",host_type=\"h\"} 6"), "{out}");
    }

    #[test]
    fn serialized_output_is_classified_by_its_start_tag() {
        assert_eq!(classify(b"<message to='a@b' type='error'><body/></message>"), (Some(Kind::Message), true));
        assert_eq!(classify(b"<iq type=\"result\" id='1'/>"), (Some(Kind::Iq), false));
        assert_eq!(classify(b"<presence/>"), (Some(Kind::Presence), false));
        assert_eq!(classify(b"<r xmlns='urn:xmpp:sm:3'/>"), (Some(Kind::Other), false));
        assert_eq!(classify(b"<stream:error><conflict/></stream:error></stream:stream>"), (Some(Kind::Other), true));
        assert_eq!(classify(b"<?xml version='1.0'?><stream:stream>"), (None, false));
        assert_eq!(classify(b"<stream:stream xmlns='jabber:client'>"), (None, false));
        assert_eq!(classify(b"</stream:stream>"), (None, false));
        assert_eq!(classify(b" "), (None, false));
        // An error type further in the element is not the stanza's.
        assert_eq!(classify(b"<message><x type='error'/></message>"), (Some(Kind::Message), false));
    }
}
