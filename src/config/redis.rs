//! `[[redis]]`: a Redis Streams sink. Its stream key template is checked here, at start, so a
//! typo is one line naming the key rather than a dead letter per event.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{read, signing_keys, ConfigError, Ordering, SinkKeys};
use crate::secret::without_credentials;
use crate::secret::{Deferred, Secret};
use crate::sinks::redis::key::Template;
use crate::sinks::webhook::signature::SigningKeys;

/// How long an append waits for Redis's reply by default.
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_secs(10);
/// Appends awaiting their reply at once, by default: they share one connection, pipelined,
/// and Redis answers in order, so a deep pipeline is what makes a drain fast.
pub const DEFAULT_REDIS_MAX_IN_FLIGHT: usize = 256;
/// The stream key when the section sets none: one stream for every event.
pub const DEFAULT_REDIS_STREAM: &str = "outbox";
/// How long an appended event's id is remembered, so a second append of it is dropped
/// (JetStream's default duplicate window).
pub const DEFAULT_REDIS_DEDUP_WINDOW: Duration = Duration::from_secs(120);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileRedis {
    name: String,
    url: String,
    password: Option<String>,
    stream: Option<String>,
    maxlen: Option<u64>,
    #[serde(default, with = "humantime_serde")]
    dedup_window: Option<Duration>,
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

impl FileRedis {
    /// The keys whose secret is written in the file itself (see `literal_secrets`).
    pub(super) fn literal_secrets(&self, i: usize) -> Vec<String> {
        let keys = [("password", &self.password), ("secret", &self.secret)];
        super::literal_broker_secrets("redis", i, &self.url, keys)
    }
}

/// One `[[redis]]` sink.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// Unique among all sinks; recorded in `delivered_to` once Redis has appended an event.
    pub name: String,
    /// `redis://` or `rediss://`, as written: it may hold a password, so it is shown only
    /// through [`without_credentials`].
    pub url: String,
    /// The password, when not in the URL.
    pub password: Option<Deferred<Secret>>,
    pub stream: Template,
    /// `MAXLEN ~ N` on each append: the stream is trimmed to about this many entries.
    pub maxlen: Option<u64>,
    /// How long an appended event's id is remembered; zero: not at all.
    pub dedup_window: Duration,
    pub types: Vec<String>,
    /// How long an append waits for its reply.
    pub timeout: Duration,
    pub max_in_flight: usize,
    pub ordered: bool,
    /// `circuit_breaker` (None: off).
    pub breaker: Option<super::breaker::BreakerConfig>,
    /// `rate_limit` (None: none).
    pub rate_limit: Option<super::rate::RateLimit>,
    /// PEM file of the CA that signs the server's certificate (`rediss://` only).
    pub tls_ca: Option<PathBuf>,
    /// Signs each entry like a webhook (`webhook-signature` field), when set.
    pub keys: Option<Deferred<SigningKeys>>,
}

impl RedisConfig {
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
        super::unread_keys("redis", i, secrets)
    }
}

/// Validates `[[redis]]` number `i`.
pub(super) fn redis(
    i: usize,
    r: FileRedis,
    global: Ordering,
    read_secret: bool,
) -> Result<RedisConfig, ConfigError> {
    let key = |k: &str| format!("redis[{i}].{k}");
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
        "redis",
        i,
        global,
        DEFAULT_REDIS_TIMEOUT,
        DEFAULT_REDIS_MAX_IN_FLIGHT,
    )?;
    let shown = without_credentials(&r.url);
    let url = url::Url::parse(&r.url)
        .map_err(|e| ConfigError::new(key("url"), format!("{shown:?}: {e}")))?;
    if !matches!(url.scheme(), "redis" | "rediss") {
        return Err(ConfigError::new(
            key("url"),
            format!("{shown:?}: must be a redis:// or rediss:// URL"),
        ));
    }
    // What the client will make of it (host, port, database number), checked now.
    ::redis::IntoConnectionInfo::into_connection_info(r.url.as_str())
        .map_err(|e| ConfigError::new(key("url"), format!("{shown:?}: {e}")))?;
    if url.password().is_some() && r.password.is_some() {
        return Err(ConfigError::new(
            key("password"),
            "the URL holds a password too: set it in one place",
        ));
    }
    if r.tls_ca.is_some() && url.scheme() != "rediss" {
        return Err(ConfigError::new(
            key("tls_ca"),
            "is for TLS: use a rediss:// URL",
        ));
    }
    let stream = Template::parse(r.stream.as_deref().unwrap_or(DEFAULT_REDIS_STREAM))
        .map_err(|m| ConfigError::new(key("stream"), m))?;
    if r.maxlen == Some(0) {
        return Err(ConfigError::new(
            key("maxlen"),
            "must be at least 1: omit it to keep every entry",
        ));
    }
    let dedup_window = r.dedup_window.unwrap_or(DEFAULT_REDIS_DEDUP_WINDOW);
    if !dedup_window.is_zero() && dedup_window < Duration::from_secs(1) {
        return Err(ConfigError::new(
            key("dedup_window"),
            "must be at least 1s, or 0 to turn deduplication off",
        ));
    }
    if dedup_window > super::MAX_DURATION {
        return Err(ConfigError::new(
            key("dedup_window"),
            "must be at most 100 years",
        ));
    }
    let password = r
        .password
        .map(|p| read(&key("password"), &p, read_secret))
        .transpose()?;
    let keys = r
        .secret
        .map(|s| signing_keys(&key("secret"), &s, read_secret))
        .transpose()?;
    Ok(RedisConfig {
        name: common.name,
        url: r.url,
        password,
        stream,
        maxlen: r.maxlen,
        dedup_window,
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
