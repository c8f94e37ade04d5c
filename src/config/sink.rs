//! What every sink section (`[[webhook]]`, `[[nats]]`, `[[redis]]`, `[[rabbitmq]]`) has in
//! common, validated in one place, and the helpers the broker sections share.

use std::time::Duration;

use super::{breaker, rate, ConfigError, Ordering, MAX_DURATION};
use crate::secret;

/// The keys of broker section `section[i]` whose secret is written in the file itself (see
/// `literal_secrets`): a password in `url`, and each of `keys` that is not an `env:`/`file:`
/// reference.
pub(super) fn literal_broker_secrets(
    section: &str,
    i: usize,
    url: &str,
    keys: [(&str, &Option<String>); 2],
) -> Vec<String> {
    let mut found = Vec::new();
    if url::Url::parse(url).is_ok_and(|u| u.password().is_some()) {
        found.push(format!("{section}[{i}].url"));
    }
    for (k, v) in keys {
        if v.as_deref().is_some_and(secret::is_literal) {
            found.push(format!("{section}[{i}].{k}"));
        }
    }
    found
}

/// The keys of `section[i]` among `secrets` (name, and whether it was read when it is set)
/// that were not read (see `Config::unread_secrets`).
pub(super) fn unread_keys(
    section: &str,
    i: usize,
    secrets: [(&str, Option<bool>); 2],
) -> Vec<String> {
    secrets
        .into_iter()
        .filter(|(_, read)| *read == Some(false))
        .map(|(k, _)| format!("{section}[{i}].{k}"))
        .collect()
}

/// Webhook names go into `delivered_to` (a comma-joined list on the wire), metric labels and
/// logs, so they are kept to a plain alphabet.
pub(super) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// The keys every sink section (`[[webhook]]`, `[[nats]]`, ...) has, validated the same way.
pub(crate) struct SinkKeys {
    pub name: String,
    pub types: Option<Vec<String>>,
    pub timeout: Option<Duration>,
    pub max_in_flight: Option<usize>,
    pub ordering: Option<Ordering>,
    pub circuit_breaker: Option<breaker::FileBreaker>,
    pub rate_limit: Option<String>,
}

/// [`SinkKeys`] validated: what [`Config::sinks`] lists for each sink.
pub(crate) struct SinkCommon {
    pub name: String,
    pub types: Vec<String>,
    pub timeout: Duration,
    pub max_in_flight: usize,
    pub ordered: bool,
    pub breaker: Option<breaker::BreakerConfig>,
    pub rate_limit: Option<rate::RateLimit>,
}

impl SinkKeys {
    /// Validates the keys of `section[i]`; `global` is the top-level `ordering`.
    pub(crate) fn validate(
        self,
        section: &str,
        i: usize,
        global: Ordering,
        default_timeout: Duration,
        default_max_in_flight: usize,
    ) -> Result<SinkCommon, ConfigError> {
        let key = |k: &str| format!("{section}[{i}].{k}");
        if !valid_name(&self.name) {
            return Err(ConfigError::new(
                key("name"),
                format!("{:?}: use 1-64 letters, digits, '_', '-' or '.'", self.name),
            ));
        }
        let types = self.types.unwrap_or_else(|| vec!["*".to_owned()]);
        if types.is_empty() {
            return Err(ConfigError::new(
                key("types"),
                "is empty: omit it to receive every type",
            ));
        }
        let ordered = self.ordering.unwrap_or(global) == Ordering::Entity;
        for (j, t) in types.iter().enumerate() {
            globset::Glob::new(t).map_err(|e| {
                ConfigError::new(format!("{section}[{i}].types[{j}]"), e.to_string())
            })?;
            // The claim query decides in SQL which events are ordered, so an ordered sink's
            // globs must translate to LIKE: `*` and `?` only.
            if ordered && t.contains(['[', ']', '{', '}', '\\']) {
                return Err(ConfigError::new(
                    format!("{section}[{i}].types[{j}]"),
                    format!(
                        "{t:?}: an entity-ordered {section}'s types may use only * and ? wildcards"
                    ),
                ));
            }
        }
        let max_in_flight = self.max_in_flight.unwrap_or(default_max_in_flight);
        if !(1..=10_000).contains(&max_in_flight) {
            return Err(ConfigError::new(
                key("max_in_flight"),
                "must be between 1 and 10000",
            ));
        }
        let timeout = self.timeout.unwrap_or(default_timeout);
        if timeout.is_zero() {
            return Err(ConfigError::new(
                key("timeout"),
                "must be greater than zero",
            ));
        }
        if timeout > MAX_DURATION {
            return Err(ConfigError::new(
                key("timeout"),
                "must be at most 100 years",
            ));
        }
        let breaker = self
            .circuit_breaker
            .map(|b| b.validate(section, i))
            .transpose()?;
        let rate_limit = self
            .rate_limit
            .map(|r| rate::parse(&key("rate_limit"), &r))
            .transpose()?;
        Ok(SinkCommon {
            name: self.name,
            types,
            timeout,
            max_in_flight,
            ordered,
            breaker,
            rate_limit,
        })
    }
}
