//! `circuit_breaker`, a table any sink section may have (`[webhook.circuit_breaker]` after a
//! `[[webhook]]`): when the endpoint keeps failing, stop sending to it for a while instead of
//! spending every event's attempts on it (see [`crate::sinks::breaker`]). Off unless the table
//! is there, so an endpoint's events dead-letter after `max_attempts` as before.

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, MAX_DURATION};

/// Consecutive failed attempts (on one relay) that open the circuit, by default.
pub const DEFAULT_FAILURES: u32 = 10;
/// How long an open circuit sends nothing before one probe, by default.
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(30);
/// An endpoint failing for this long without a success is disabled, by default (as Svix
/// does): no more probes until an operator resumes it.
pub const DEFAULT_DISABLE_AFTER: Duration = Duration::from_secs(5 * 24 * 3600);

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileBreaker {
    failures: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    cooldown: Option<Duration>,
    /// A duration, or "off".
    disable_after: Option<String>,
}

/// A sink's validated `circuit_breaker`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    pub failures: u32,
    pub cooldown: Duration,
    /// None: never disabled (`disable_after = "off"`).
    pub disable_after: Option<Duration>,
}

impl FileBreaker {
    /// Validates `section[i].circuit_breaker`.
    pub(crate) fn validate(self, section: &str, i: usize) -> Result<BreakerConfig, ConfigError> {
        let key = |k: &str| format!("{section}[{i}].circuit_breaker.{k}");
        let failures = self.failures.unwrap_or(DEFAULT_FAILURES);
        if !(1..=1_000_000).contains(&failures) {
            return Err(ConfigError::new(
                key("failures"),
                "must be between 1 and 1000000",
            ));
        }
        let cooldown = self.cooldown.unwrap_or(DEFAULT_COOLDOWN);
        if cooldown < Duration::from_secs(1) || cooldown > MAX_DURATION {
            return Err(ConfigError::new(
                key("cooldown"),
                "must be between 1s and 100 years",
            ));
        }
        let disable_after = match self.disable_after.as_deref() {
            None => Some(DEFAULT_DISABLE_AFTER),
            Some("off") => None,
            Some(s) => {
                let d = humantime::parse_duration(s).map_err(|e| {
                    ConfigError::new(
                        key("disable_after"),
                        format!("{e} (a duration such as 5d, or \"off\")"),
                    )
                })?;
                if d < cooldown || d > MAX_DURATION {
                    return Err(ConfigError::new(
                        key("disable_after"),
                        "must be at least the cooldown and at most 100 years (or \"off\")",
                    ));
                }
                Some(d)
            }
        };
        Ok(BreakerConfig {
            failures,
            cooldown,
            disable_after,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, Overrides};

    fn load(breaker: &str) -> Result<Config, String> {
        let toml = format!(
            "[[webhook]]\nname = \"a\"\nurl = \"http://127.0.0.1:1/\"\n\
             secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n{breaker}"
        );
        Config::from_toml(&toml, &Overrides::default()).map_err(|e| e.to_string())
    }

    #[test]
    fn the_breaker_is_off_unless_its_table_is_there_and_has_defaults() {
        assert_eq!(load("").unwrap().webhooks[0].breaker, None);
        let b = load("[webhook.circuit_breaker]").unwrap().webhooks[0]
            .breaker
            .unwrap();
        assert_eq!(b.failures, super::DEFAULT_FAILURES);
        assert_eq!(b.cooldown, super::DEFAULT_COOLDOWN);
        assert_eq!(b.disable_after, Some(super::DEFAULT_DISABLE_AFTER));
        let b =
            load("circuit_breaker = { failures = 3, cooldown = \"5s\", disable_after = \"off\" }")
                .unwrap()
                .webhooks[0]
                .breaker
                .unwrap();
        assert_eq!((b.failures, b.disable_after), (3, None));
    }

    #[test]
    fn bad_values_name_their_key() {
        for (table, key) in [
            ("failures = 0", "webhook[0].circuit_breaker.failures"),
            ("cooldown = \"10ms\"", "webhook[0].circuit_breaker.cooldown"),
            (
                "disable_after = \"soon\"",
                "webhook[0].circuit_breaker.disable_after",
            ),
            (
                "cooldown = \"1h\"\ndisable_after = \"1m\"",
                "webhook[0].circuit_breaker.disable_after",
            ),
            ("failure = 3", "failure"),
        ] {
            let e = load(&format!("[webhook.circuit_breaker]\n{table}")).unwrap_err();
            assert!(e.contains(key), "{table}: {e}");
        }
    }
}
