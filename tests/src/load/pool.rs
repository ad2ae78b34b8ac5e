//! Logging many users in at a fixed concurrency, registering them, and
//! holding idle connections.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::watch;
use tokio::time::Instant;

use super::conn::{Session, Stream, Target};

/// Error messages kept per run (the rest are only counted).
const KEPT_ERRORS: usize = 10;

/// Locks a mutex, ignoring poisoning (a panicked task only ever leaves counters behind).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A histogram of microseconds, from 1 µs to one hour, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant histogram bounds are valid")
}

/// Percentiles of a microsecond histogram, in milliseconds.
pub fn hist_ms(h: &Histogram<u64>) -> serde_json::Value {
    let ms = |v: u64| super::procstat::round(v as f64 / 1000.0, 3);
    if h.is_empty() {
        return serde_json::json!({ "n": 0 });
    }
    serde_json::json!({
        "n": h.len(),
        "p50": ms(h.value_at_quantile(0.50)),
        "p90": ms(h.value_at_quantile(0.90)),
        "p99": ms(h.value_at_quantile(0.99)),
        "p999": ms(h.value_at_quantile(0.999)),
        "max": ms(h.max()),
        "mean": super::procstat::round(h.mean() / 1000.0, 3),
    })
}

/// Failures of a phase: a count and the first few messages.
#[derive(Default)]
pub struct Failures {
    count: AtomicU64,
    first: Mutex<Vec<String>>,
}

impl Failures {
    pub fn add(&self, msg: String) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut first = lock(&self.first);
        if first.len() < KEPT_ERRORS {
            first.push(msg);
        }
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn first(&self) -> Vec<String> {
        lock(&self.first).clone()
    }
}

/// What a login phase did.
pub struct LoginPhase {
    pub ok: u64,
    pub failures: Arc<Failures>,
    /// Time to first presence (connect to the echo of initial presence), µs.
    pub ttfp: Histogram<u64>,
    /// From the first connect to the last completed login.
    pub wall: Duration,
}

/// Logs users `first .. first + count` in, `concurrency` at a time; every
/// session goes to `on_ok(position, session)`. No new login starts after
/// `deadline`.
pub async fn login_all(
    target: Arc<Target>,
    first: u64,
    count: u64,
    concurrency: usize,
    deadline: Option<Instant>,
    on_ok: Arc<dyn Fn(usize, Session) + Send + Sync>,
) -> LoginPhase {
    let next = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Failures::default());
    let ttfp = Arc::new(Mutex::new(histogram()));
    let ok = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let last_done = Arc::new(Mutex::new(start));
    let mut workers = Vec::new();
    for _ in 0..concurrency.clamp(1, count.max(1) as usize) {
        let (target, next, failures, ttfp, ok, last_done, on_ok) = (
            target.clone(),
            next.clone(),
            failures.clone(),
            ttfp.clone(),
            ok.clone(),
            last_done.clone(),
            on_ok.clone(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k as u64 >= count {
                    return;
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    failures
                        .add(format!("{}: not started before the end of the phase", target.username(first + k as u64)));
                    continue;
                }
                let t = Instant::now();
                match target.login(first + k as u64, k).await {
                    Ok(session) => {
                        let done = Instant::now();
                        lock(&ttfp).saturating_record(done.duration_since(t).as_micros() as u64);
                        ok.fetch_add(1, Ordering::Relaxed);
                        {
                            let mut last = lock(&last_done);
                            if done > *last {
                                *last = done;
                            }
                        }
                        on_ok(k, session);
                    }
                    Err(e) => failures.add(format!("{e:#}")),
                }
            }
        }));
    }
    for w in workers {
        if let Err(e) = w.await {
            failures.add(format!("login worker: {e}"));
        }
    }
    let wall = lock(&last_done).duration_since(start);
    let ttfp = lock(&ttfp).clone();
    LoginPhase { ok: ok.load(Ordering::Relaxed), failures, ttfp, wall }
}

/// Registers users `first .. first + count` (XEP-0077), `concurrency` at a time.
pub async fn register_all(target: Arc<Target>, first: u64, count: u64, concurrency: usize) -> (u64, Arc<Failures>) {
    let next = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Failures::default());
    let ok = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency.clamp(1, count.max(1) as usize) {
        let (target, next, failures, ok) = (target.clone(), next.clone(), failures.clone(), ok.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k as u64 >= count {
                    return;
                }
                match target.register(first + k as u64, k).await {
                    Ok(()) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => failures.add(format!("{e:#}")),
                }
            }
        }));
    }
    for w in workers {
        if let Err(e) = w.await {
            failures.add(format!("registration worker: {e}"));
        }
    }
    (ok.load(Ordering::Relaxed), failures)
}

/// Idle connections: each one a task that reads and discards what the
/// server sends, sends a whitespace keepalive now and then, and closes its
/// stream when told.
pub struct Holders {
    stop: watch::Sender<bool>,
    alive: Arc<AtomicU64>,
    dropped: Arc<AtomicU64>,
    keepalive: Option<Duration>,
}

impl Holders {
    pub fn new(keepalive: Option<Duration>) -> Arc<Holders> {
        let (stop, _) = watch::channel(false);
        Arc::new(Holders {
            stop,
            alive: Arc::new(AtomicU64::new(0)),
            dropped: Arc::new(AtomicU64::new(0)),
            keepalive: keepalive.filter(|d| !d.is_zero()),
        })
    }

    /// Holds this session's connection (its parser is dropped: nothing more is parsed).
    pub fn hold(&self, position: usize, session: Session) {
        self.alive.fetch_add(1, Ordering::Relaxed);
        let (alive, dropped, stop) = (self.alive.clone(), self.dropped.clone(), self.stop.subscribe());
        // Spread keepalives over the period so they do not all fire at once.
        let keepalive = self.keepalive.map(|p| {
            let offset = Duration::from_millis((position as u64 * 7919) % (p.as_millis().max(1) as u64));
            (p, offset)
        });
        tokio::spawn(async move {
            hold(session.stream, stop, keepalive, &dropped).await;
            alive.fetch_sub(1, Ordering::Relaxed);
        });
    }

    /// Connections the server closed while held.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Closes every held stream and waits (bounded) until they are gone.
    pub async fn close_all(&self, timeout: Duration) {
        let _ = self.stop.send(true);
        let deadline = Instant::now() + timeout;
        while self.alive.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn hold(
    mut stream: Stream,
    mut stop: watch::Receiver<bool>,
    keepalive: Option<(Duration, Duration)>,
    dropped: &AtomicU64,
) {
    let mut tick = keepalive.map(|(period, offset)| tokio::time::interval_at(Instant::now() + offset + period, period));
    let mut buf = [0u8; 256];
    loop {
        tokio::select! {
            r = stream.read(&mut buf) => {
                if !matches!(r, Ok(n) if n > 0) {
                    dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
            _ = stop.changed() => break,
            _ = async {
                match tick.as_mut() {
                    Some(t) => { t.tick().await; }
                    None => std::future::pending::<()>().await,
                }
            } => {
                let r = tokio::time::timeout(Duration::from_secs(10), async {
                    stream.write_all(b" ").await?;
                    stream.flush().await
                }).await;
                if !matches!(r, Ok(Ok(()))) {
                    dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        stream.write_all(b"</stream:stream>").await?;
        stream.shutdown().await
    })
    .await;
}
