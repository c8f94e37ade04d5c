//! `[[webhook]]`: an HTTP endpoint, signed with Standard Webhooks.

use std::time::Duration;

use serde::Deserialize;

use super::{breaker, rate, signing_keys, ConfigError, Ordering, SinkKeys};
use crate::secret::{self, Deferred};
use crate::sinks::webhook::signature::SigningKeys;

/// How long one request may take, by default.
pub const DEFAULT_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests on the wire to one endpoint at once, by default.
pub const DEFAULT_WEBHOOK_MAX_IN_FLIGHT: usize = 64;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileWebhook {
    name: String,
    url: String,
    types: Option<Vec<String>>,
    secret: String,
    #[serde(default, with = "humantime_serde")]
    timeout: Option<Duration>,
    max_in_flight: Option<usize>,
    ordering: Option<Ordering>,
    circuit_breaker: Option<breaker::FileBreaker>,
    rate_limit: Option<String>,
}

impl FileWebhook {
    /// The key whose secret is written in the file itself (see `literal_secrets`).
    pub(super) fn literal_secrets(&self, i: usize) -> Vec<String> {
        secret::is_literal(&self.secret)
            .then(|| format!("webhook[{i}].secret"))
            .into_iter()
            .collect()
    }
}

/// One `[[webhook]]` endpoint.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Unique; recorded in `delivered_to` once the endpoint accepts an event.
    pub name: String,
    pub url: url::Url,
    /// Globs on event_type; `["*"]` when the key is absent.
    pub types: Vec<String>,
    pub keys: Deferred<SigningKeys>,
    pub timeout: Duration,
    pub max_in_flight: usize,
    /// Entity-ordered delivery for this endpoint (its own `ordering`, or the global one).
    pub ordered: bool,
    /// `circuit_breaker` (None: off).
    pub breaker: Option<breaker::BreakerConfig>,
    /// `rate_limit` (None: none).
    pub rate_limit: Option<rate::RateLimit>,
}

pub(super) fn webhook(
    i: usize,
    w: FileWebhook,
    global: Ordering,
    read_secret: bool,
) -> Result<WebhookConfig, ConfigError> {
    let key = |k: &str| format!("webhook[{i}].{k}");
    let url = url::Url::parse(&w.url).map_err(|e| ConfigError::new(key("url"), e.to_string()))?;
    let common = SinkKeys {
        name: w.name,
        types: w.types,
        timeout: w.timeout,
        max_in_flight: w.max_in_flight,
        ordering: w.ordering,
        circuit_breaker: w.circuit_breaker,
        rate_limit: w.rate_limit,
    }
    .validate(
        "webhook",
        i,
        global,
        DEFAULT_WEBHOOK_TIMEOUT,
        DEFAULT_WEBHOOK_MAX_IN_FLIGHT,
    )?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ConfigError::new(
            key("url"),
            "must be an http:// or https:// URL",
        ));
    }
    let keys = signing_keys(&key("secret"), &w.secret, read_secret)?;
    Ok(WebhookConfig {
        name: common.name,
        url,
        types: common.types,
        keys,
        timeout: common.timeout,
        max_in_flight: common.max_in_flight,
        ordered: common.ordered,
        breaker: common.breaker,
        rate_limit: common.rate_limit,
    })
}
