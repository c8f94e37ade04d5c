//! Percentiles, rounding and the median/min/max summary over repetitions.

use serde_json::{json, Value};

/// Nearest-rank percentile index into a sorted slice of `len`.
pub fn pct_index(len: usize, q: f64) -> usize {
    ((q * len as f64).ceil() as usize).clamp(1, len.max(1)) - 1
}

pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

pub fn mib(kib: u64) -> f64 {
    round2(kib as f64 / 1024.0)
}

/// `{"median", "min", "max"}` of the figure at `path` across repetitions.
pub fn spread(reps: &[Value], path: &[&str]) -> Value {
    let mut v: Vec<f64> = reps
        .iter()
        .filter_map(|r| path.iter().try_fold(r, |r, k| r.get(k))?.as_f64())
        .collect();
    if v.is_empty() {
        return Value::Null;
    }
    v.sort_by(f64::total_cmp);
    // Lower median for an even count: always a measured value.
    json!({"median": v[(v.len() - 1) / 2], "min": v[0], "max": v[v.len() - 1]})
}

pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// The `q` percentile of sorted nanoseconds, in ms (2 decimals); null when empty.
pub fn pct_ms(sorted_ns: &[i64], q: f64) -> Value {
    sorted_ns
        .get(pct_index(sorted_ns.len(), q))
        .map_or(Value::Null, |&x| json!(round2(x as f64 / 1e6)))
}

/// `{"p50", "p95", "p99", "max"}` in ms of sorted nanoseconds.
pub fn latency_ms(sorted_ns: &[i64]) -> Value {
    json!({
        "p50": pct_ms(sorted_ns, 0.50),
        "p95": pct_ms(sorted_ns, 0.95),
        "p99": pct_ms(sorted_ns, 0.99),
        "max": pct_ms(sorted_ns, 1.0),
    })
}
