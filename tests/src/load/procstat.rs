//! The server's RSS and CPU, the generator's CPU and the whole machine's
//! busy time, from /proc.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Clock ticks per second of /proc's CPU times (USER_HZ).
fn clk_tck() -> f64 {
    static TCK: OnceLock<f64> = OnceLock::new();
    *TCK.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// VmRSS of `pid` in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// utime + stime of a process (all threads) in seconds; `self` for the generator.
fn cpu_s(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may contain spaces, closed by the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clk_tck())
}

/// Busy CPU seconds of the whole machine (all cores), from /proc/stat.
fn machine_busy_s() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let v: Vec<f64> = stat.lines().next()?.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    if v.len() < 8 {
        return None;
    }
    let total: f64 = v[..8].iter().sum();
    Some((total - v[3] - v[4]) / clk_tck())
}

/// CPU counters at one instant.
#[derive(Clone, Copy)]
struct Mark {
    at: Instant,
    server: Option<f64>,
    generator: Option<f64>,
    machine: Option<f64>,
}

impl Mark {
    fn now(pid: Option<u32>) -> Mark {
        Mark {
            at: Instant::now(),
            server: pid.and_then(|p| cpu_s(&p.to_string())),
            generator: cpu_s("self"),
            machine: machine_busy_s(),
        }
    }
}

/// Samples the server's RSS in the background while a window is open, and
/// CPU use between [`Sampler::begin`] and [`Sampler::end`].
pub struct Sampler {
    pid: Option<u32>,
    active: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    sum: Arc<AtomicU64>,
    count: Arc<AtomicU64>,
    start: Option<Mark>,
}

/// What a window measured.
#[derive(Clone, Debug, Default)]
pub struct WindowStats {
    pub wall_s: f64,
    pub server_cpu_pct: Option<f64>,
    pub gen_cpu_pct: Option<f64>,
    pub other_cpu_pct: Option<f64>,
    pub rss_peak_kib: Option<u64>,
    pub rss_avg_kib: Option<u64>,
    pub rss_end_kib: Option<u64>,
}

impl WindowStats {
    pub fn to_json(&self) -> Value {
        json!({
            "wall_s": round(self.wall_s, 3),
            "server_cpu_pct": self.server_cpu_pct.map(|v| round(v, 1)),
            "gen_cpu_pct": self.gen_cpu_pct.map(|v| round(v, 1)),
            "other_cpu_pct": self.other_cpu_pct.map(|v| round(v, 1)),
            "rss_peak_kib": self.rss_peak_kib,
            "rss_avg_kib": self.rss_avg_kib,
            "rss_end_kib": self.rss_end_kib,
        })
    }

    /// One line for the human summary.
    pub fn human(&self) -> String {
        let pct = |v: Option<f64>| v.map(|v| format!("{v:.0}%")).unwrap_or_else(|| "-".into());
        let mib = |v: Option<u64>| v.map(|v| format!("{:.1} MiB", v as f64 / 1024.0)).unwrap_or_else(|| "-".into());
        format!(
            "CPU server {} / generator {} / other {}; server RSS peak {} avg {}",
            pct(self.server_cpu_pct),
            pct(self.gen_cpu_pct),
            pct(self.other_cpu_pct),
            mib(self.rss_peak_kib),
            mib(self.rss_avg_kib)
        )
    }
}

/// Rounds to `digits` decimals (for JSON).
pub fn round(v: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (v * m).round() / m
}

impl Sampler {
    /// A sampler of `pid` (RSS every `interval` during a window). Needs a tokio runtime.
    pub fn new(pid: Option<u32>, interval: Duration) -> Sampler {
        let s = Sampler {
            pid,
            active: Arc::new(AtomicBool::new(false)),
            peak: Arc::new(AtomicU64::new(0)),
            sum: Arc::new(AtomicU64::new(0)),
            count: Arc::new(AtomicU64::new(0)),
            start: None,
        };
        if let Some(pid) = pid {
            let (active, peak, sum, count) = (s.active.clone(), s.peak.clone(), s.sum.clone(), s.count.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(interval);
                loop {
                    tick.tick().await;
                    if Arc::strong_count(&active) == 1 {
                        return; // the sampler is gone
                    }
                    if !active.load(Ordering::Relaxed) {
                        continue;
                    }
                    if let Some(rss) = rss_kib(pid) {
                        peak.fetch_max(rss, Ordering::Relaxed);
                        sum.fetch_add(rss, Ordering::Relaxed);
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        s
    }

    /// The server's RSS now.
    pub fn rss_now(&self) -> Option<u64> {
        self.pid.and_then(rss_kib)
    }

    /// Opens the measured window.
    pub fn begin(&mut self) {
        self.peak.store(0, Ordering::Relaxed);
        self.sum.store(0, Ordering::Relaxed);
        self.count.store(0, Ordering::Relaxed);
        if let Some(rss) = self.rss_now() {
            self.peak.store(rss, Ordering::Relaxed);
            self.sum.store(rss, Ordering::Relaxed);
            self.count.store(1, Ordering::Relaxed);
        }
        self.active.store(true, Ordering::Relaxed);
        self.start = Some(Mark::now(self.pid));
    }

    /// Closes the window and says what it measured.
    pub fn end(&mut self) -> WindowStats {
        self.active.store(false, Ordering::Relaxed);
        let end = Mark::now(self.pid);
        let Some(start) = self.start.take() else { return WindowStats::default() };
        let wall = end.at.duration_since(start.at).as_secs_f64();
        let pct = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if wall > 0.0 => Some(100.0 * (b - a) / wall),
            _ => None,
        };
        let server = pct(start.server, end.server);
        let generator = pct(start.generator, end.generator);
        let machine = pct(start.machine, end.machine);
        let other = machine.map(|m| m - generator.unwrap_or(0.0) - server.unwrap_or(0.0));
        let rss_end = self.rss_now();
        if let Some(rss) = rss_end {
            self.peak.fetch_max(rss, Ordering::Relaxed);
            self.sum.fetch_add(rss, Ordering::Relaxed);
            self.count.fetch_add(1, Ordering::Relaxed);
        }
        let count = self.count.load(Ordering::Relaxed);
        WindowStats {
            wall_s: wall,
            server_cpu_pct: server,
            gen_cpu_pct: generator,
            other_cpu_pct: other,
            rss_peak_kib: (count > 0).then(|| self.peak.load(Ordering::Relaxed)),
            rss_avg_kib: (count > 0).then(|| self.sum.load(Ordering::Relaxed) / count),
            rss_end_kib: rss_end,
        }
    }
}
