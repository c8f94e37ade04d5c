//! `rate_limit = "50/s"` on a sink: the most events per second all relays on the table send
//! it together (see [`crate::sinks::limiter`]).

use std::time::Duration;

use super::ConfigError;

/// The fastest limit accepted.
const MAX_PER_SECOND: f64 = 1_000_000.0;

/// A sink's validated `rate_limit`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_second: f64,
}

impl RateLimit {
    /// Tokens a bucket holds at most: a tenth of a second's worth, at least one. The limit
    /// holds over any window from a second up, give or take this many.
    pub fn burst(&self) -> f64 {
        (self.per_second / 10.0).max(1.0)
    }

    /// How long one token takes to come back.
    pub fn interval(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.per_second)
    }
}

/// Parses `N/s`, `N/min` (or `N/m`), `N/h`; `key` names it in errors.
pub fn parse(key: &str, text: &str) -> Result<RateLimit, ConfigError> {
    let bad = |why: &str| {
        ConfigError::new(
            key,
            format!("{text:?}: {why} (e.g. \"50/s\", \"600/min\", \"1000/h\")"),
        )
    };
    let (n, unit) = text
        .split_once('/')
        .ok_or_else(|| bad("a number of events per unit of time"))?;
    let n: f64 = n
        .trim()
        .parse()
        .map_err(|_| bad("the number of events is not a number"))?;
    let secs = match unit.trim() {
        "s" | "sec" | "second" => 1.0,
        "m" | "min" | "minute" => 60.0,
        "h" | "hour" => 3600.0,
        _ => return Err(bad("the unit is s, min or h")),
    };
    let per_second = n / secs;
    if !per_second.is_finite() || per_second <= 0.0 || per_second > MAX_PER_SECOND {
        return Err(bad("must be more than zero and at most 1000000/s"));
    }
    Ok(RateLimit { per_second })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_in_their_units_and_bad_ones_say_why() {
        assert_eq!(parse("k", "50/s").unwrap().per_second, 50.0);
        assert_eq!(parse("k", "600/min").unwrap().per_second, 10.0);
        assert_eq!(parse("k", " 7200 / h").unwrap().per_second, 2.0);
        assert_eq!(parse("k", "50/s").unwrap().burst(), 5.0);
        assert_eq!(parse("k", "1/min").unwrap().burst(), 1.0);
        for bad in ["50", "0/s", "-1/s", "x/s", "5/day", "2000000/s", "NaN/s"] {
            let e = parse("webhook[0].rate_limit", bad).unwrap_err().to_string();
            assert!(e.contains("webhook[0].rate_limit"), "{bad}: {e}");
        }
    }
}
