//! `meerkat-load report`: Markdown tables from the JSON lines of many runs.
//!
//! Each figure is the median over runs (with min..max and the number of
//! runs) per label (server), followed by the first label's ratio to every
//! other label. Open-loop chat runs of one label and run number are
//! treated as rate steps: the figure is the highest offered rate whose p99
//! latency stayed under the bound with nothing lost and at least 90 % of
//! the offered rate delivered.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::{Context as _, Result};
use serde_json::Value;

use super::cli::ReportArgs;

/// Figures in order of first appearance: name, and values per label.
type Figures = Vec<(String, BTreeMap<String, Vec<f64>>)>;

fn num(v: &Value, path: &[&str]) -> Option<f64> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_f64()
}

fn add(figs: &mut Figures, name: String, label: &str, v: Option<f64>) {
    let Some(v) = v else { return };
    let i = match figs.iter().position(|(n, _)| *n == name) {
        Some(i) => i,
        None => {
            figs.push((name, BTreeMap::new()));
            figs.len() - 1
        }
    };
    figs[i].1.entry(label.to_owned()).or_default().push(v);
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn fmt(v: f64) -> String {
    if v.abs() >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

pub fn run(a: &ReportArgs) -> Result<String> {
    let mut lines = Vec::new();
    for f in &a.files {
        let text = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        for (i, l) in text.lines().enumerate() {
            let l = l.trim();
            if l.is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(l).with_context(|| format!("{}:{}", f.display(), i + 1))?;
            lines.push(v);
        }
    }
    Ok(render(&lines, a.p99_bound_ms))
}

/// The tables for these JSON lines.
pub fn render(lines: &[Value], p99_bound_ms: f64) -> String {
    let mut labels: Vec<String> = Vec::new();
    let mut figs: Figures = Vec::new();
    // (label, run, users) -> highest passing open-loop rate
    let mut steps: BTreeMap<(String, u64, u64), f64> = BTreeMap::new();
    for v in lines {
        let label = v.get("label").and_then(Value::as_str).unwrap_or("").to_owned();
        if !labels.contains(&label) {
            labels.push(label.clone());
        }
        let users = num(v, &["users"]).unwrap_or(0.0) as u64;
        let run = num(v, &["run"]).unwrap_or(0.0) as u64;
        let conds = format!(
            "{}/{}",
            v.get("sasl").and_then(Value::as_str).unwrap_or("?"),
            v.get("tls").and_then(Value::as_str).unwrap_or("?")
        );
        let l = &label;
        match v.get("scenario").and_then(Value::as_str) {
            Some("login") => {
                let c = num(v, &["concurrency"]).unwrap_or(0.0);
                add(&mut figs, format!("logins/s, N={users}, {c} in flight ({conds})"), l, num(v, &["logins_per_s"]));
                add(&mut figs, format!("time to first presence p50 ms, N={users}"), l, num(v, &["ttfp_ms", "p50"]));
                add(&mut figs, format!("time to first presence p99 ms, N={users}"), l, num(v, &["ttfp_ms", "p99"]));
                add(
                    &mut figs,
                    format!("server CPU % during logins, N={users}"),
                    l,
                    num(v, &["window", "server_cpu_pct"]),
                );
                add(&mut figs, format!("KiB per session after login, N={users}"), l, num(v, &["kib_per_session"]));
            }
            Some("idle") => {
                add(&mut figs, format!("idle connections held, N={users}"), l, num(v, &["connections"]));
                add(
                    &mut figs,
                    format!("RSS loaded MiB, N={users} idle"),
                    l,
                    num(v, &["rss_loaded_kib"]).map(|k| k / 1024.0),
                );
                add(&mut figs, format!("KiB per idle session, N={users}"), l, num(v, &["kib_per_session"]));
            }
            Some("chat") => match v.get("mode").and_then(Value::as_str) {
                Some("closed") => {
                    let w = num(v, &["window_per_sender"]).unwrap_or(0.0);
                    add(
                        &mut figs,
                        format!("chat msgs/s delivered, closed loop, U={users} W={w}"),
                        l,
                        num(v, &["delivered_per_s"]),
                    );
                    add(
                        &mut figs,
                        format!("chat p99 ms, closed loop, U={users} W={w}"),
                        l,
                        num(v, &["latency_ms", "p99"]),
                    );
                    add(&mut figs, format!("chat lost, closed loop, U={users}"), l, num(v, &["lost"]));
                }
                Some("open") => {
                    let rate = num(v, &["rate"]).unwrap_or(0.0);
                    let delivered = num(v, &["delivered_per_s"]).unwrap_or(0.0);
                    let p99 = num(v, &["latency_ms", "p99"]).unwrap_or(f64::INFINITY);
                    let lost = num(v, &["lost"]).unwrap_or(1.0);
                    let pass = p99 < p99_bound_ms && lost == 0.0 && delivered >= 0.9 * rate;
                    let key = (label.clone(), run, users);
                    let best = steps.entry(key).or_insert(0.0);
                    if pass && rate > *best {
                        *best = rate;
                    }
                    add(&mut figs, format!("chat p99 ms at {rate} msg/s offered, U={users}"), l, Some(p99));
                }
                _ => {}
            },
            Some("presence") => {
                let r = num(v, &["contacts"]).unwrap_or(0.0);
                let rate = num(v, &["rate"]).unwrap_or(0.0);
                add(
                    &mut figs,
                    format!("presence deliveries/s, U={users} R={r}, {rate} changes/s"),
                    l,
                    num(v, &["deliveries_per_s"]),
                );
                add(
                    &mut figs,
                    format!("presence p99 ms, U={users} R={r}, {rate} changes/s"),
                    l,
                    num(v, &["latency_ms", "p99"]),
                );
                add(&mut figs, format!("presence lost, U={users} R={r}"), l, num(v, &["lost"]));
            }
            Some("pubsub") => {
                let subs = num(v, &["subscribers"]).unwrap_or(0.0);
                let rate = num(v, &["rate"]).unwrap_or(0.0);
                add(
                    &mut figs,
                    format!("pubsub notifications/s delivered, {subs} subscribers, {rate} items/s"),
                    l,
                    num(v, &["delivered_per_s"]),
                );
                add(
                    &mut figs,
                    format!("pubsub p99 ms, {subs} subscribers, {rate} items/s"),
                    l,
                    num(v, &["latency_ms", "p99"]),
                );
                add(&mut figs, format!("pubsub lost, {subs} subscribers, {rate} items/s"), l, num(v, &["lost"]));
            }
            _ => {}
        }
    }
    for ((label, _run, users), best) in steps {
        add(
            &mut figs,
            format!("highest open-loop chat rate with p99 < {p99_bound_ms} ms, U={users}"),
            &label,
            Some(best),
        );
    }

    let mut out = String::new();
    let first = labels.first().cloned().unwrap_or_default();
    let _ = write!(out, "| figure |");
    for l in &labels {
        let _ = write!(out, " {l} |");
    }
    for l in labels.iter().skip(1) {
        let _ = write!(out, " {first} / {l} |");
    }
    out.push('\n');
    out.push_str("|---|");
    for _ in 0..(2 * labels.len()).saturating_sub(1) {
        out.push_str("---|");
    }
    out.push('\n');
    for (name, per_label) in &mut figs {
        let _ = write!(out, "| {name} |");
        let mut medians = BTreeMap::new();
        for l in &labels {
            match per_label.get_mut(l) {
                Some(vals) if !vals.is_empty() => {
                    let m = median(vals);
                    medians.insert(l.clone(), m);
                    let (lo, hi) = (vals[0], vals[vals.len() - 1]);
                    if vals.len() > 1 {
                        let _ = write!(out, " {} ({}..{}, n={}) |", fmt(m), fmt(lo), fmt(hi), vals.len());
                    } else {
                        let _ = write!(out, " {} |", fmt(m));
                    }
                }
                _ => out.push_str(" - |"),
            }
        }
        for l in labels.iter().skip(1) {
            match (medians.get(&first), medians.get(l)) {
                (Some(a), Some(b)) if *b != 0.0 => {
                    let _ = write!(out, " {:.2}x |", a / b);
                }
                _ => out.push_str(" - |"),
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn medians_ratios_and_steps() {
        let lines = vec![
            json!({"scenario":"login","label":"meerkat","run":1,"users":10,"concurrency":100,"sasl":"PLAIN","tls":"none","logins_per_s":300.0}),
            json!({"scenario":"login","label":"meerkat","run":2,"users":10,"concurrency":100,"sasl":"PLAIN","tls":"none","logins_per_s":100.0}),
            json!({"scenario":"login","label":"meerkat","run":3,"users":10,"concurrency":100,"sasl":"PLAIN","tls":"none","logins_per_s":200.0}),
            json!({"scenario":"login","label":"peer","run":1,"users":10,"concurrency":100,"sasl":"PLAIN","tls":"none","logins_per_s":50.0}),
            json!({"scenario":"chat","label":"meerkat","run":1,"users":10,"mode":"open","rate":1000.0,"delivered_per_s":1000.0,"lost":0,"latency_ms":{"p99":1.0}}),
            json!({"scenario":"chat","label":"meerkat","run":1,"users":10,"mode":"open","rate":2000.0,"delivered_per_s":2000.0,"lost":0,"latency_ms":{"p99":9.0}}),
            json!({"scenario":"chat","label":"peer","run":1,"users":10,"mode":"open","rate":1000.0,"delivered_per_s":1000.0,"lost":0,"latency_ms":{"p99":6.0}}),
        ];
        let t = super::render(&lines, 5.0);
        assert!(t.contains("| meerkat | peer | meerkat / peer |"), "{t}");
        assert!(t.contains("| 200 (100..300, n=3) | 50 | 4.00x |"), "{t}");
        // meerkat passes 1000 only; the peer passes nothing (0): no ratio.
        assert!(t.contains("highest open-loop chat rate with p99 < 5 ms, U=10 | 1000 | 0 | - |"), "{t}");
    }
}
