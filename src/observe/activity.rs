//! What this relay instance did lately, kept in memory for the dashboard: events delivered
//! and attempts failed per second over the last hour ([`Timeline`]), and each endpoint's
//! recent health ([`EndpointStats`]). Recording is a short uncontended lock and a few
//! additions, so it stays on the delivery path; nothing here touches the database.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Seconds the timeline keeps.
pub const TIMELINE_SECONDS: usize = 3600;

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Per-second counts of delivered events and failed attempts, a ring of the last hour.
pub struct Timeline {
    ring: Mutex<Ring>,
}

struct Ring {
    /// The unix second of `slots[head]`; slots behind it hold the seconds before.
    head_second: u64,
    head: usize,
    slots: Vec<(u32, u32)>,
}

/// The seconds from `since` on (at most the last hour), oldest first, ending at `end`.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Series {
    pub end: u64,
    pub delivered: Vec<u32>,
    pub failed: Vec<u32>,
}

impl Default for Timeline {
    fn default() -> Self {
        Self {
            ring: Mutex::new(Ring {
                head_second: unix_now(),
                head: 0,
                slots: vec![(0, 0); TIMELINE_SECONDS],
            }),
        }
    }
}

impl Ring {
    /// Moves the head to `second`, zeroing the seconds skipped on the way.
    fn advance(&mut self, second: u64) {
        if second <= self.head_second {
            return;
        }
        let steps = (second - self.head_second).min(TIMELINE_SECONDS as u64) as usize;
        for _ in 0..steps {
            self.head = (self.head + 1) % TIMELINE_SECONDS;
            self.slots[self.head] = (0, 0);
        }
        self.head_second = second;
    }

    fn add(&mut self, second: u64, delivered: u32, failed: u32) {
        self.advance(second);
        let back = self.head_second.saturating_sub(second) as usize;
        if back >= TIMELINE_SECONDS {
            return;
        }
        let i = (self.head + TIMELINE_SECONDS - back) % TIMELINE_SECONDS;
        let slot = &mut self.slots[i];
        slot.0 = slot.0.saturating_add(delivered);
        slot.1 = slot.1.saturating_add(failed);
    }

    fn series(&mut self, now: u64, since: Option<u64>) -> Series {
        self.advance(now);
        let oldest = (self.head_second + 1).saturating_sub(TIMELINE_SECONDS as u64);
        // `since` itself again: it may have been the current second, still counting, when
        // the caller last asked.
        let first = since.map_or(oldest, |s| s.max(oldest));
        let n = (self.head_second + 1).saturating_sub(first) as usize;
        let (mut delivered, mut failed) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for k in (0..n).rev() {
            let (d, f) = self.slots[(self.head + TIMELINE_SECONDS - k) % TIMELINE_SECONDS];
            delivered.push(d);
            failed.push(f);
        }
        Series {
            end: self.head_second,
            delivered,
            failed,
        }
    }
}

impl Timeline {
    /// `n` events became COMPLETED (counted once their outcome is durable).
    pub fn delivered(&self, n: u32) {
        self.ring
            .lock()
            .expect("timeline lock")
            .add(unix_now(), n, 0);
    }

    /// One delivery attempt failed.
    pub fn failed(&self) {
        self.ring
            .lock()
            .expect("timeline lock")
            .add(unix_now(), 0, 1);
    }

    /// The seconds from `since` (unix seconds; None: the whole hour) up to now. `since` is
    /// included: pass the previous `end`, whose count may have grown since.
    pub fn series(&self, since: Option<u64>) -> Series {
        self.ring
            .lock()
            .expect("timeline lock")
            .series(unix_now(), since)
    }
}

/// The window an endpoint's success rate and p99 cover.
pub const HEALTH_WINDOW: Duration = Duration::from_secs(300);
const BUCKET_SECONDS: u64 = 10;
const BUCKETS: usize = (HEALTH_WINDOW.as_secs() / BUCKET_SECONDS) as usize;
/// Latency histogram: bucket k holds durations up to `LATENCY_BASE_MS * LATENCY_GROWTH^k`
/// (0.1 ms to about 2 minutes), so a p99 is known within 25%.
const LATENCY_BUCKETS: usize = 64;
const LATENCY_BASE_MS: f64 = 0.1;
const LATENCY_GROWTH: f64 = 1.25;

#[derive(Clone)]
struct Bucket {
    /// Which 10-second slice of time this bucket counts (unix seconds / 10).
    slice: u64,
    attempts: u32,
    succeeded: u32,
    latency: [u32; LATENCY_BUCKETS],
}

impl Bucket {
    fn empty(slice: u64) -> Self {
        Self {
            slice,
            attempts: 0,
            succeeded: 0,
            latency: [0; LATENCY_BUCKETS],
        }
    }
}

/// One endpoint's recent attempts: success rate, p99 latency and last error.
pub struct EndpointStats {
    buckets: Mutex<Vec<Bucket>>,
    last_error: Mutex<Option<LastError>>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct LastError {
    /// RFC 3339.
    pub at: String,
    pub message: String,
}

/// An endpoint's health over [`HEALTH_WINDOW`].
#[derive(Debug, Serialize, PartialEq)]
pub struct EndpointHealth {
    pub window_seconds: u64,
    pub attempts: u64,
    pub succeeded: u64,
    pub success_rate: Option<f64>,
    pub p99_ms: Option<f64>,
}

impl Default for EndpointStats {
    fn default() -> Self {
        Self {
            buckets: Mutex::new(vec![Bucket::empty(0); BUCKETS]),
            last_error: Mutex::new(None),
        }
    }
}

fn latency_bucket(took: Duration) -> usize {
    let ms = took.as_secs_f64() * 1000.0;
    if ms <= LATENCY_BASE_MS {
        return 0;
    }
    let k = (ms / LATENCY_BASE_MS).ln() / LATENCY_GROWTH.ln();
    (k.ceil() as usize).min(LATENCY_BUCKETS - 1)
}

impl EndpointStats {
    /// One attempt that reached an answer (or a transport error): `error` None for a 2xx.
    pub fn record(&self, took: Duration, error: Option<&str>) {
        self.record_at(unix_now(), took, error.is_none());
        if let Some(message) = error {
            *self.last_error.lock().expect("stats lock") = Some(LastError {
                at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                message: message.to_owned(),
            });
        }
    }

    fn record_at(&self, now: u64, took: Duration, ok: bool) {
        let slice = now / BUCKET_SECONDS;
        let mut buckets = self.buckets.lock().expect("stats lock");
        let b = &mut buckets[(slice % BUCKETS as u64) as usize];
        if b.slice != slice {
            *b = Bucket::empty(slice);
        }
        b.attempts += 1;
        b.succeeded += u32::from(ok);
        b.latency[latency_bucket(took)] += 1;
    }

    pub fn last_error(&self) -> Option<LastError> {
        self.last_error.lock().expect("stats lock").clone()
    }

    /// The attempts of the last [`HEALTH_WINDOW`], to report or merge with other relays'.
    pub fn window(&self) -> Window {
        self.window_at(unix_now())
    }

    fn window_at(&self, now: u64) -> Window {
        let current = now / BUCKET_SECONDS;
        let mut w = Window::default();
        for b in self.buckets.lock().expect("stats lock").iter() {
            if b.slice + (BUCKETS as u64) <= current || b.slice > current {
                continue; // older than the window (or never used)
            }
            w.attempts += u64::from(b.attempts);
            w.succeeded += u64::from(b.succeeded);
            for (sum, n) in w.latency.iter_mut().zip(b.latency) {
                *sum += u64::from(n);
            }
        }
        w
    }
}

/// An endpoint's attempts over [`HEALTH_WINDOW`], with their latency histogram: windows of
/// several relays add up ([`Window::add`]) into the cluster's success rate and p99.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Window {
    pub attempts: u64,
    pub succeeded: u64,
    /// Bucket k counts durations up to 0.1 ms x 1.25^k; sent as `[[k, count], ...]` for the
    /// buckets in use.
    #[serde(with = "sparse")]
    pub latency: [u64; LATENCY_BUCKETS],
}

impl Default for Window {
    fn default() -> Self {
        Self {
            attempts: 0,
            succeeded: 0,
            latency: [0; LATENCY_BUCKETS],
        }
    }
}

impl Window {
    pub fn add(&mut self, other: &Window) {
        self.attempts += other.attempts;
        self.succeeded += other.succeeded;
        for (sum, n) in self.latency.iter_mut().zip(other.latency) {
            *sum += n;
        }
    }

    pub fn health(&self) -> EndpointHealth {
        let timed = self.latency.iter().sum::<u64>();
        let p99_ms = (timed > 0).then(|| {
            let rank = (timed as f64 * 0.99).ceil() as u64;
            let mut seen = 0;
            let k = self
                .latency
                .iter()
                .position(|n| {
                    seen += n;
                    seen >= rank
                })
                .unwrap_or(LATENCY_BUCKETS - 1);
            LATENCY_BASE_MS * LATENCY_GROWTH.powi(k as i32)
        });
        EndpointHealth {
            window_seconds: HEALTH_WINDOW.as_secs(),
            attempts: self.attempts,
            succeeded: self.succeeded,
            success_rate: (self.attempts > 0).then(|| self.succeeded as f64 / self.attempts as f64),
            p99_ms,
        }
    }
}

/// The latency histogram as `[[bucket, count], ...]`, without its empty buckets: what a
/// relay reports is mostly zeros. Buckets out of range are refused.
mod sparse {
    use super::LATENCY_BUCKETS;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(h: &[u64; LATENCY_BUCKETS], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(h.iter().enumerate().filter(|(_, n)| **n > 0))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<[u64; LATENCY_BUCKETS], D::Error> {
        let mut h = [0; LATENCY_BUCKETS];
        for (k, n) in Vec::<(usize, u64)>::deserialize(d)? {
            *h.get_mut(k)
                .ok_or_else(|| serde::de::Error::custom("latency bucket out of range"))? += n;
        }
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeline_returns_the_seconds_since_and_zeroes_gaps() {
        let t0 = 100_000;
        let mut r = Ring {
            head_second: t0,
            head: 0,
            slots: vec![(0, 0); TIMELINE_SECONDS],
        };
        r.add(t0, 2, 0);
        r.add(t0 + 2, 1, 1);
        r.add(t0 - 1, 5, 0); // late, still within the hour
        let s = r.series(t0 + 3, Some(t0 - 2));
        assert_eq!(s.end, t0 + 3);
        assert_eq!(s.delivered, vec![0, 5, 2, 0, 1, 0]);
        assert_eq!(s.failed, vec![0, 0, 0, 0, 1, 0]);
        // The last second asked for again, with what it counted meanwhile.
        r.add(t0 + 3, 4, 0);
        assert_eq!(r.series(t0 + 3, Some(t0 + 3)).delivered, vec![4]);
        let whole = r.series(t0 + 3, None);
        assert_eq!(whole.delivered.len(), TIMELINE_SECONDS);
        assert_eq!(whole.delivered.iter().sum::<u32>(), 12);
        // An hour later everything has rolled off.
        let later = r.series(t0 + 3 + TIMELINE_SECONDS as u64, None);
        assert_eq!(later.delivered.iter().sum::<u32>(), 0);
    }

    #[test]
    fn endpoint_health_covers_the_window_only() {
        let s = EndpointStats::default();
        for _ in 0..98 {
            s.record_at(10_000, Duration::from_millis(2), true);
        }
        s.record_at(10_000, Duration::from_millis(900), false);
        s.record_at(10_000, Duration::from_millis(1000), false);
        let h = s.window_at(10_005).health();
        assert_eq!((h.attempts, h.succeeded), (100, 98));
        assert_eq!(h.success_rate, Some(0.98));
        let p99 = h.p99_ms.unwrap();
        assert!((900.0..=1250.0).contains(&p99), "{p99}");
        let gone = s
            .window_at(10_000 + HEALTH_WINDOW.as_secs() + BUCKET_SECONDS)
            .health();
        assert_eq!(
            (gone.attempts, gone.success_rate, gone.p99_ms),
            (0, None, None)
        );
    }
}
