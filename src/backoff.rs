//! When to try again: an event's next attempt (exponential backoff with jitter, and
//! `Retry-After`), and the daemon's loops that retry a failing call ([`Backoff`]).
//!
//! Pure; the random part is passed in so tests are exact.

use std::time::{Duration, SystemTime};

/// Delay before attempt `failed + 1`, given `failed` failed attempts so far (>= 1).
///
/// `initial * 2^(failed-1)`, capped at `max`, then scaled by `jitter` in [0, 1) into the upper
/// half of that range ("equal jitter"): relays that failed together spread out, yet the delay
/// still grows every time.
pub fn retry_delay(failed: u32, initial: Duration, max: Duration, jitter: f64) -> Duration {
    let exp = failed.saturating_sub(1).min(32);
    let base = initial.saturating_mul(1u32 << exp.min(31)).min(max);
    let factor = 0.5 + 0.5 * jitter.clamp(0.0, 1.0);
    base.mul_f64(factor).max(Duration::from_millis(1))
}

/// The delay of a loop that retries a failing call (a reconnect, a claim, a write): the
/// first failure waits `first`, each failure in a row doubles it up to `max`, and a success
/// starts over. Several relays that lost the database together retry together; that is
/// fine for these calls (one each), unlike event retries, which are spread out by jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    /// Failures since the last success.
    failures: u32,
}

impl Backoff {
    pub const fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            failures: 0,
        }
    }

    /// A call failed: how long to wait before the next try.
    pub fn failed(&mut self) -> Duration {
        let wait = self
            .first
            .saturating_mul(1 << self.failures.min(31))
            .min(self.max);
        self.failures = self.failures.saturating_add(1);
        wait
    }

    /// A call succeeded: the next failure waits `first` again.
    pub fn succeeded(&mut self) {
        self.failures = 0;
    }

    /// No failure since the last success (or ever).
    pub fn is_clear(&self) -> bool {
        self.failures == 0
    }
}

/// Parses a `Retry-After` value (delay-seconds or an HTTP date), capped at `max`.
pub fn retry_after(value: &str, now: SystemTime, max: Duration) -> Option<Duration> {
    let value = value.trim();
    let delay = if let Ok(secs) = value.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        let at = httpdate::parse_http_date(value).ok()?;
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(delay.min(max))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);
    const H: Duration = Duration::from_secs(3600);

    #[test]
    fn grows_exponentially_within_jitter_bounds() {
        assert_eq!(retry_delay(1, S, H, 1.0), S);
        assert_eq!(retry_delay(1, S, H, 0.0), S / 2);
        assert_eq!(retry_delay(4, S, H, 1.0), 8 * S);
        assert_eq!(retry_delay(4, S, H, 0.0), 4 * S);
    }

    #[test]
    fn is_capped_at_max_even_for_huge_counts() {
        assert_eq!(retry_delay(40, S, H, 1.0), H);
        assert_eq!(retry_delay(u32::MAX, S, H, 1.0), H);
        assert!(retry_delay(13, S, H, 0.0) >= H / 2);
    }

    #[test]
    fn a_loop_backoff_doubles_to_its_cap_and_starts_over_after_a_success() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(500));
        assert!(b.is_clear());
        let waits: Vec<Duration> = (0..5).map(|_| b.failed()).collect();
        assert_eq!(waits, [ms(100), ms(200), ms(400), ms(500), ms(500)]);
        assert!(!b.is_clear());
        b.succeeded();
        assert!(b.is_clear());
        assert_eq!(b.failed(), ms(100));
        let mut flat = Backoff::new(ms(100), ms(100));
        flat.failed();
        assert!(
            !flat.is_clear(),
            "a failure shows even when the delay cannot grow"
        );
        for _ in 0..40 {
            flat.failed();
        }
        assert_eq!(flat.failed(), ms(100));
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(retry_after("120", now, H), Some(Duration::from_secs(120)));
        assert_eq!(retry_after("999999", now, H), Some(H));
        let date = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(retry_after(&date, now, H), Some(Duration::from_secs(30)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(retry_after(&past, now, H), Some(Duration::ZERO));
        assert_eq!(retry_after("soon", now, H), None);
    }
}
