//! `[[rabbitmq]]`: a RabbitMQ sink (AMQP 0-9-1 with publisher confirms). Its exchange name
//! and routing key template are checked here, at start, so a typo is one line naming the
//! key rather than a dead letter per event.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{read, signing_keys, ConfigError, Ordering, SinkKeys};
use crate::secret::{without_credentials, Deferred, Secret};
use crate::sinks::rabbitmq::routing_key::Template;
use crate::sinks::webhook::signature::SigningKeys;

/// How long a publish waits for the broker's confirm by default.
pub const DEFAULT_RABBITMQ_TIMEOUT: Duration = Duration::from_secs(10);
/// Publishes awaiting their confirm at once, by default: each on a channel of its own (the
/// channels are kept and reused), so this many channels at most.
pub const DEFAULT_RABBITMQ_MAX_IN_FLIGHT: usize = 256;
/// RabbitMQ's default `channel_max`, less the one the start-up check uses: more publishes in
/// flight than this would wait for a channel anyway.
pub const MAX_RABBITMQ_IN_FLIGHT: usize = 2046;
/// The routing key when the section sets none.
pub const DEFAULT_RABBITMQ_ROUTING_KEY: &str = "{event_type}";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileRabbitMq {
    name: String,
    url: String,
    password: Option<String>,
    exchange: Option<String>,
    routing_key: Option<String>,
    types: Option<Vec<String>>,
    #[serde(default, with = "humantime_serde")]
    timeout: Option<Duration>,
    max_in_flight: Option<usize>,
    ordering: Option<Ordering>,
    circuit_breaker: Option<super::breaker::FileBreaker>,
    rate_limit: Option<String>,
    tls_ca: Option<PathBuf>,
    secret: Option<String>,
}

impl FileRabbitMq {
    /// The keys whose secret is written in the file itself (see `literal_secrets`).
    pub(super) fn literal_secrets(&self, i: usize) -> Vec<String> {
        let keys = [("password", &self.password), ("secret", &self.secret)];
        super::literal_broker_secrets("rabbitmq", i, &self.url, keys)
    }
}

/// One `[[rabbitmq]]` sink.
#[derive(Debug, Clone)]
pub struct RabbitMqConfig {
    /// Unique among all sinks; recorded in `delivered_to` once the broker confirms an event.
    pub name: String,
    /// `amqp://` or `amqps://`, as written: it may hold a password, so it is shown only
    /// through [`RabbitMqConfig::shown_url`].
    pub url: String,
    /// The password, when not in the URL.
    pub password: Option<Deferred<Secret>>,
    /// The exchange published to; `""` is the default exchange (the routing key names the
    /// queue).
    pub exchange: String,
    pub routing_key: Template,
    pub types: Vec<String>,
    /// How long a publish waits for its confirm.
    pub timeout: Duration,
    pub max_in_flight: usize,
    pub ordered: bool,
    /// `circuit_breaker` (None: off).
    pub breaker: Option<super::breaker::BreakerConfig>,
    /// `rate_limit` (None: none).
    pub rate_limit: Option<super::rate::RateLimit>,
    /// PEM file of the CA that signs the broker's certificate (`amqps://` only).
    pub tls_ca: Option<PathBuf>,
    /// Signs each message like a webhook (`webhook-signature` header), when set.
    pub keys: Option<Deferred<SigningKeys>>,
}

impl RabbitMqConfig {
    /// The URL, safe to show.
    pub fn shown_url(&self) -> String {
        without_credentials(&self.url)
    }

    /// The secrets of this section that were not read (see `Config::unread_secrets`).
    pub(super) fn unread(&self, i: usize) -> Vec<String> {
        let secrets = [
            ("password", self.password.as_ref().map(Deferred::is_read)),
            ("secret", self.keys.as_ref().map(Deferred::is_read)),
        ];
        super::unread_keys("rabbitmq", i, secrets)
    }
}

/// RabbitMQ's rule for exchange names: up to 255 bytes of letters, digits, `-`, `_`, `.`
/// and `:`. `amq.` names are the broker's own and may be published to.
fn valid_exchange(name: &str) -> bool {
    name.len() <= 255
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
}

/// Validates `[[rabbitmq]]` number `i`.
pub(super) fn rabbitmq(
    i: usize,
    r: FileRabbitMq,
    global: Ordering,
    read_secret: bool,
) -> Result<RabbitMqConfig, ConfigError> {
    let key = |k: &str| format!("rabbitmq[{i}].{k}");
    let common = SinkKeys {
        name: r.name,
        types: r.types,
        timeout: r.timeout,
        max_in_flight: r.max_in_flight,
        ordering: r.ordering,
        circuit_breaker: r.circuit_breaker,
        rate_limit: r.rate_limit,
    }
    .validate(
        "rabbitmq",
        i,
        global,
        DEFAULT_RABBITMQ_TIMEOUT,
        DEFAULT_RABBITMQ_MAX_IN_FLIGHT,
    )?;
    if common.max_in_flight > MAX_RABBITMQ_IN_FLIGHT {
        return Err(ConfigError::new(
            key("max_in_flight"),
            format!(
                "must be at most {MAX_RABBITMQ_IN_FLIGHT}: each publish in flight holds a channel"
            ),
        ));
    }
    let shown = without_credentials(&r.url);
    let url = url::Url::parse(&r.url)
        .map_err(|e| ConfigError::new(key("url"), format!("{shown:?}: {e}")))?;
    if !matches!(url.scheme(), "amqp" | "amqps") {
        return Err(ConfigError::new(
            key("url"),
            format!("{shown:?}: must be an amqp:// or amqps:// URL"),
        ));
    }
    // What the client will make of it (host, port, vhost, heartbeat...), checked now.
    r.url
        .parse::<lapin::uri::AMQPUri>()
        .map_err(|e| ConfigError::new(key("url"), format!("{shown:?}: {e}")))?;
    if url.password().is_some() && r.password.is_some() {
        return Err(ConfigError::new(
            key("password"),
            "the URL holds a password too: set it in one place",
        ));
    }
    if r.tls_ca.is_some() && url.scheme() != "amqps" {
        return Err(ConfigError::new(
            key("tls_ca"),
            "is for TLS: use an amqps:// URL",
        ));
    }
    let Some(exchange) = r.exchange else {
        return Err(ConfigError::new(
            key("exchange"),
            "is missing: name the exchange to publish to (\"\" for the default exchange, \
             which routes to the queue the routing key names)",
        ));
    };
    if !valid_exchange(&exchange) {
        return Err(ConfigError::new(
            key("exchange"),
            format!("{exchange:?}: use up to 255 letters, digits, '-', '_', '.' or ':'"),
        ));
    }
    let routing_key = Template::parse(
        r.routing_key
            .as_deref()
            .unwrap_or(DEFAULT_RABBITMQ_ROUTING_KEY),
    )
    .map_err(|m| ConfigError::new(key("routing_key"), m))?;
    let password = r
        .password
        .map(|p| read(&key("password"), &p, read_secret))
        .transpose()?;
    let keys = r
        .secret
        .map(|s| signing_keys(&key("secret"), &s, read_secret))
        .transpose()?;
    Ok(RabbitMqConfig {
        name: common.name,
        url: r.url,
        password,
        exchange,
        routing_key,
        types: common.types,
        timeout: common.timeout,
        max_in_flight: common.max_in_flight,
        ordered: common.ordered,
        breaker: common.breaker,
        rate_limit: common.rate_limit,
        tls_ca: r.tls_ca,
        keys,
    })
}
