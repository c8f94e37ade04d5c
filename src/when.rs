//! A point in time as an operator writes it, on the command line or in the dashboard: a
//! duration ago (`2h`, `30m`) or an RFC 3339 time (`2026-12-06T10:00:00Z`).

use std::time::{Duration, SystemTime};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum When {
    Ago(Duration),
    At(SystemTime),
}

impl When {
    /// Parses a duration (`2h`) or, failing that, an RFC 3339 time.
    pub fn parse(s: &str) -> Result<When, String> {
        if let Ok(d) = humantime::parse_duration(s) {
            return Ok(When::Ago(d));
        }
        humantime::parse_rfc3339_weak(s).map(When::At).map_err(|_| {
            format!("{s:?}: a duration ago (2h, 30m) or a time (2026-12-06T10:00:00Z)")
        })
    }

    /// How long ago, from `now` (zero for a time in the future).
    pub fn ago(self, now: SystemTime) -> Duration {
        match self {
            When::Ago(d) => d,
            When::At(t) => now.duration_since(t).unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_times() {
        let now = humantime::parse_rfc3339("2026-12-06T12:00:00Z").unwrap();
        assert_eq!(
            When::parse("2h").unwrap().ago(now),
            Duration::from_secs(7200)
        );
        assert_eq!(
            When::parse("2026-12-06T11:30:00Z").unwrap().ago(now),
            Duration::from_secs(1800)
        );
        assert_eq!(
            When::parse("2026-12-07T00:00:00Z").unwrap().ago(now),
            Duration::ZERO
        );
        assert!(When::parse("yesterday")
            .unwrap_err()
            .contains("a duration ago"));
    }
}
