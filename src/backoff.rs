//! When to try again: exponential backoff with jitter, and `Retry-After`.
//!
//! Pure functions; the random part is passed in so tests are exact.

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
