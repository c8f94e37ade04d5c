//! The one validated configuration: TOML file, then environment, then flags.
//!
//! [`FileConfig`] mirrors the TOML exactly (unknown keys are errors, so a typo is caught);
//! [`Config::load`] applies the overrides, resolves the secrets the command [`Needs`] and
//! validates everything, and every error names the key it is about. Defaults are named
//! constants, documented once: the top-level ones here, each sink section's in its module
//! ([`webhook`], [`nats`], [`redis`], [`rabbitmq`]; what they share is in `sink`).

use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::db::ident::Ident;
use crate::db::table::TableSettings;
use crate::db::tls;
use crate::http::host::AllowedHosts;
use crate::secret::{self, Deferred, Secret};
use crate::sinks::webhook::egress;
use crate::sinks::webhook::signature::SigningKeys;

pub mod breaker;
mod location;
pub mod nats;
pub mod rabbitmq;
pub mod rate;
pub mod redis;
mod sink;
pub mod webhook;
pub use location::Location;
pub(crate) use sink::SinkKeys;
use sink::{literal_broker_secrets, unread_keys};
pub use webhook::{WebhookConfig, DEFAULT_WEBHOOK_MAX_IN_FLIGHT, DEFAULT_WEBHOOK_TIMEOUT};

/// Default schema of the outbox table.
pub const DEFAULT_SCHEMA: &str = "public";
/// Default table: the name Prisma gives a model `OutboxEvent`.
pub const DEFAULT_TABLE: &str = "OutboxEvent";
/// The safety-net poll; NOTIFY wakes the relay at once.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(30);
/// Rows claimed per transaction.
pub const DEFAULT_BATCH_SIZE: u32 = 100;
/// Attempts in all before a row is dead-lettered (FAILED).
pub const DEFAULT_MAX_ATTEMPTS: u32 = 12;
/// How long a claim stays valid without being extended by its live relay.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);
pub const DEFAULT_BACKOFF_INITIAL: Duration = Duration::from_secs(1);
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(3600);
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long SIGTERM waits for in-flight deliveries before releasing them (below systemd's
/// default 90 s stop timeout, with room to write the releases).
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(25);
/// How long the broker sinks may take to get ready at start (a broker started beside the
/// relay, say by the same compose file) before the relay exits saying why.
pub const DEFAULT_START_GRACE: Duration = Duration::from_secs(30);
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:9470";
pub const DEFAULT_SSE_HEARTBEAT: Duration = Duration::from_secs(15);
/// HTTP connections served at once (see `crate::http::limits`).
pub const DEFAULT_HTTP_MAX_CONNECTIONS: usize = 1024;
/// Time a client has to send a complete request head, and to start the next one on a
/// kept-alive connection.
pub const DEFAULT_HTTP_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// SSE streams served at once (each also counts as a connection).
pub const DEFAULT_SSE_MAX_SUBSCRIBERS: usize = 512;
/// The longest a subscriber token may live, `iat` (or now) to `exp`.
pub const DEFAULT_SSE_MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(86_400);
pub const DEFAULT_LONG_TRANSACTION_WARNING: Duration = Duration::from_secs(300);
/// `[egress] deny_private_addresses`: off. Webhook URLs come from the operator's own file and
/// mostly point at internal services on private addresses; on by default, those deployments
/// would stop delivering. Turn it on where URLs come from people who should not reach the
/// relay's network (docs/configuration.md, "Outbound addresses").
pub const DEFAULT_EGRESS_DENY_PRIVATE_ADDRESSES: bool = false;
/// The longest duration any key accepts.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
/// A database URL that works out of the box on a developer machine.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The key of a TOML syntax error: the file as a whole.
pub const FILE_KEY: &str = "(file)";

/// A config error: which key, and what is wrong with it; for an error the TOML parser found,
/// also where in the file. Exits with status 2.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub key: String,
    pub message: String,
    /// The config file, when the error is in one.
    pub file: Option<std::path::PathBuf>,
    /// Where in the text, for errors the TOML parser reports.
    pub at: Option<Box<Location>>,
}

impl ConfigError {
    pub(crate) fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
            file: None,
            at: None,
        }
    }
}

impl std::fmt::Display for ConfigError {
    /// `config error at `key`: message`, or with a location
    /// `file:line:column: config error at `key`: message` and the line with a caret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.file, &self.at) {
            (Some(file), Some(at)) => write!(f, "{}:{}:{}: ", file.display(), at.line, at.column)?,
            (None, Some(at)) => write!(f, "line {}, column {}: ", at.line, at.column)?,
            _ => {}
        }
        match self.key.as_str() {
            FILE_KEY => write!(f, "invalid TOML: {}", self.message)?,
            key => write!(f, "config error at `{key}`: {}", self.message)?,
        }
        match &self.at {
            Some(at) => write!(f, "{at}"),
            None => Ok(()),
        }
    }
}

/// Which of the config's secrets a command reads (see [`Deferred`]). A secret written literally
/// in the file is read (and checked) whatever this says; an `env:` or `file:` reference only
/// by a command that uses it, so a missing variable stops only the commands that need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// None: `migrate --print` and `--print-grants` print SQL and connect to nothing.
    Nothing,
    /// `database_url` only: the one-shot commands that connect (`migrate`, `status`, `retry`,
    /// `skip`, `purge`, `publish`), and `dev` with a config file.
    Database,
    /// Every secret: `run`, and `check-config`, which checks what `run` would.
    Everything,
}

/// `ordering` in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Ordering {
    /// Events are delivered concurrently, in claim order.
    #[default]
    None,
    /// Per (entity_type, entity_id) in commit order: the next event of a key is not sent
    /// until the previous one is accepted (or skipped).
    Entity,
}

/// The TOML file as written. Durations are humantime strings.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    database_url: Option<String>,
    schema: Option<String>,
    table: Option<String>,
    #[serde(default, with = "humantime_serde")]
    poll_interval: Option<Duration>,
    batch_size: Option<u32>,
    max_attempts: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    lease: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    backoff_initial: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    backoff_max: Option<Duration>,
    retention: Option<String>,
    listen: Option<bool>,
    ordering: Option<Ordering>,
    #[serde(default, with = "humantime_serde")]
    shutdown_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    start_grace: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    long_transaction_warning: Option<Duration>,
    #[serde(default)]
    database: FileDatabase,
    #[serde(default)]
    http: FileHttp,
    #[serde(default)]
    sse: FileSse,
    #[serde(default)]
    egress: FileEgress,
    #[serde(default)]
    webhook: Vec<webhook::FileWebhook>,
    #[serde(default)]
    nats: Vec<nats::FileNats>,
    #[serde(default)]
    redis: Vec<redis::FileRedis>,
    #[serde(default)]
    rabbitmq: Vec<rabbitmq::FileRabbitMq>,
}

impl FileConfig {
    /// The keys whose secret is written in the file itself rather than referred to
    /// (`env:`/`file:`): what a reader of the file learns. A database URL counts when it
    /// holds a password.
    fn literal_secrets(&self) -> Vec<String> {
        let literal = |v: Option<&str>| v.is_some_and(secret::is_literal);
        let mut keys = Vec::new();
        if self
            .database_url
            .as_deref()
            .is_some_and(secret::holds_password)
        {
            keys.push("database_url".to_owned());
        }
        if literal(self.http.admin_token.as_deref()) {
            keys.push("http.admin_token".to_owned());
        }
        for (i, t) in self.http.admin_tokens.iter().enumerate() {
            if literal(Some(&t.token)) {
                keys.push(format!("http.admin_tokens[{i}].token"));
            }
        }
        if literal(self.sse.token_secret.as_deref()) {
            keys.push("sse.token_secret".to_owned());
        }
        for (i, w) in self.webhook.iter().enumerate() {
            keys.extend(w.literal_secrets(i));
        }
        for (i, n) in self.nats.iter().enumerate() {
            keys.extend(n.literal_secrets(i));
        }
        for (i, r) in self.redis.iter().enumerate() {
            keys.extend(r.literal_secrets(i));
        }
        for (i, r) in self.rabbitmq.iter().enumerate() {
            keys.extend(r.literal_secrets(i));
        }
        keys
    }
}

/// `[database]`: TLS to PostgreSQL, libpq's key names (see `crate::db::tls`). The same keys
/// may be URL parameters of `database_url`; set in both places they must agree.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileDatabase {
    sslmode: Option<String>,
    sslrootcert: Option<String>,
    sslcert: Option<String>,
    sslkey: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileHttp {
    listen: Option<String>,
    admin_token: Option<String>,
    #[serde(default)]
    admin_tokens: Vec<FileAdminToken>,
    metrics_token: Option<String>,
    allowed_hosts: Option<Vec<String>>,
    max_connections: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    header_timeout: Option<Duration>,
}

/// `[[http.admin_tokens]]`: a named admin token; the name is who the audit log records.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAdminToken {
    name: String,
    token: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileSse {
    enabled: Option<bool>,
    token_secret: Option<String>,
    #[serde(default, with = "humantime_serde")]
    heartbeat: Option<Duration>,
    max_subscribers: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    max_token_lifetime: Option<Duration>,
    allowed_origins: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileEgress {
    deny_private_addresses: Option<bool>,
    allow_networks: Option<Vec<String>>,
}

/// What `dev` takes from a config file ([`Config::for_dev`]); None where the file (or, for
/// the URL, the flag or environment) does not set it.
#[derive(Debug, Default)]
pub struct DevSettings {
    pub listen: Option<SocketAddr>,
    pub database_url: Option<Secret>,
}

/// Overrides from the command line and the environment (clap already merged those two).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub database_url: Option<String>,
}

/// The validated configuration the daemon and every command run on.
#[derive(Debug, Clone)]
pub struct Config {
    /// Connection string; may hold a password, so it is never logged as is.
    pub database_url: Deferred<Secret>,
    pub schema: Ident,
    pub table: Ident,
    pub poll_interval: Duration,
    pub batch_size: u32,
    pub max_attempts: u32,
    pub lease: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// `None` when `retention = "off"`.
    pub retention: Option<Duration>,
    /// `false` for poll-only mode (transaction-mode poolers cannot LISTEN).
    pub listen: bool,
    /// The global `ordering`; a webhook may also ask for it alone ([`WebhookConfig::ordered`]).
    pub ordering: Ordering,
    pub shutdown_timeout: Duration,
    /// How long sinks may take to get ready at start ([`DEFAULT_START_GRACE`]).
    pub start_grace: Duration,
    /// Warn (and show in /metrics) when a transaction in the database has been open longer:
    /// it holds back vacuum, so dead rows pile up and claims slow down.
    pub long_transaction_warning: Duration,
    pub http: HttpConfig,
    pub sse: SseConfig,
    /// `[egress]`: the addresses webhook requests may connect to
    /// ([`DEFAULT_EGRESS_DENY_PRIVATE_ADDRESSES`] says why it is off by default).
    pub egress: egress::Policy,
    pub webhooks: Vec<WebhookConfig>,
    /// `[[nats]]`: NATS JetStream sinks.
    pub nats: Vec<nats::NatsConfig>,
    /// `[[redis]]`: Redis Streams sinks.
    pub redis: Vec<redis::RedisConfig>,
    /// `[[rabbitmq]]`: RabbitMQ sinks.
    pub rabbitmq: Vec<rabbitmq::RabbitMqConfig>,
}

/// What every sink has, whatever its kind (see [`Config::sinks`]).
#[derive(Debug, Clone, Copy)]
pub struct SinkView<'a> {
    /// `webhook`, `nats`, `redis`, `rabbitmq`: the config section.
    pub section: &'static str,
    pub name: &'a str,
    pub types: &'a [String],
    pub max_in_flight: usize,
    pub ordered: bool,
    /// `circuit_breaker` (None: off).
    pub breaker: Option<breaker::BreakerConfig>,
    /// `rate_limit` (None: none).
    pub rate_limit: Option<rate::RateLimit>,
    /// The signing keys (`secret`; None: the sink signs nothing).
    pub keys: Option<&'a Deferred<SigningKeys>>,
}

/// A dashboard admin token and the name the audit log records for its actions.
#[derive(Debug, Clone)]
pub struct AdminToken {
    pub name: String,
    pub token: Deferred<Secret>,
    /// Where the token is set (`http.admin_token` or `http.admin_tokens[i].token`).
    pub key: String,
}

/// The name `http.admin_token` goes by in the audit log.
pub const DEFAULT_ADMIN_NAME: &str = "admin";

#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// `admin_token` (named `admin`) and `[[http.admin_tokens]]`: who may act on the
    /// dashboard, by name.
    pub admin_tokens: Vec<AdminToken>,
    /// When set, `/metrics` needs `Authorization: Bearer <token>`.
    pub metrics_token: Option<Deferred<Secret>>,
    /// Host names answered besides IP literals and localhost (see `crate::http::host`).
    pub allowed_hosts: AllowedHosts,
    pub max_connections: usize,
    pub header_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct SseConfig {
    pub enabled: bool,
    pub token_secret: Option<Deferred<Secret>>,
    pub heartbeat: Duration,
    pub max_subscribers: usize,
    pub max_token_lifetime: Duration,
    /// Pages on these origins may open the stream from the browser (CORS), normalized.
    pub allowed_origins: Vec<String>,
}

impl Config {
    /// Reads `path` (if any), applies overrides, reads the secrets `needs` says and
    /// validates (see [`read_file`] for the warning about the file's mode).
    pub fn load(
        path: Option<&Path>,
        overrides: &Overrides,
        needs: Needs,
    ) -> Result<Self, ConfigError> {
        let file = match path {
            Some(p) => read_file(p)?,
            None => FileConfig::default(),
        };
        Self::from_file(file, overrides, needs)
    }

    /// What `dev` takes from a config file, when the file sets it: `[http] listen`, and
    /// `database_url` (which the flag and DATABASE_URL override, as for every command). The
    /// whole file is checked as for any command; no other secret is read.
    pub fn for_dev(path: &Path, overrides: &Overrides) -> Result<DevSettings, ConfigError> {
        let file = read_file(path)?;
        let listen_set = file.http.listen.is_some();
        let url_set = file.database_url.is_some() || overrides.database_url.is_some();
        let cfg = Self::from_file(file, overrides, Needs::Database)?;
        Ok(DevSettings {
            listen: listen_set.then_some(cfg.http.listen),
            database_url: url_set.then(|| cfg.database_url.get().clone()),
        })
    }

    /// Parses and validates TOML text, reading every secret (`dev`, tests).
    pub fn from_toml(text: &str, overrides: &Overrides) -> Result<Self, ConfigError> {
        Self::from_toml_for(text, overrides, Needs::Everything)
    }

    /// [`Config::from_toml`] reading only the secrets `needs` says.
    pub fn from_toml_for(
        text: &str,
        overrides: &Overrides,
        needs: Needs,
    ) -> Result<Self, ConfigError> {
        Self::from_file(parse_file(text)?, overrides, needs)
    }

    fn from_file(f: FileConfig, o: &Overrides, needs: Needs) -> Result<Self, ConfigError> {
        let database_url = o
            .database_url
            .clone()
            .or(f.database_url)
            .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned());
        let database_url = match read("database_url", &database_url, needs != Needs::Nothing)? {
            Deferred::Read(url) => Deferred::Read(database_tls(url, f.database)?),
            not_read => not_read,
        };
        let everything = needs == Needs::Everything;
        let read_opt = |key: &str, v: Option<&str>| v.map(|r| read(key, r, everything)).transpose();
        let ident = |key: &str, v: Option<String>, d: &str| {
            Ident::new(v.as_deref().unwrap_or(d)).map_err(|e| ConfigError::new(key, e.to_string()))
        };
        let cfg = Config {
            database_url,
            schema: ident("schema", f.schema, DEFAULT_SCHEMA)?,
            table: ident("table", f.table, DEFAULT_TABLE)?,
            poll_interval: f.poll_interval.unwrap_or(DEFAULT_POLL_INTERVAL),
            batch_size: f.batch_size.unwrap_or(DEFAULT_BATCH_SIZE),
            max_attempts: f.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS),
            lease: f.lease.unwrap_or(DEFAULT_LEASE),
            backoff_initial: f.backoff_initial.unwrap_or(DEFAULT_BACKOFF_INITIAL),
            backoff_max: f.backoff_max.unwrap_or(DEFAULT_BACKOFF_MAX),
            retention: parse_retention(f.retention.as_deref())?,
            listen: f.listen.unwrap_or(true),
            ordering: f.ordering.unwrap_or_default(),
            shutdown_timeout: f.shutdown_timeout.unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT),
            start_grace: f.start_grace.unwrap_or(DEFAULT_START_GRACE),
            long_transaction_warning: f
                .long_transaction_warning
                .unwrap_or(DEFAULT_LONG_TRANSACTION_WARNING),
            http: HttpConfig {
                listen: f
                    .http
                    .listen
                    .as_deref()
                    .unwrap_or(DEFAULT_HTTP_LISTEN)
                    .parse()
                    .map_err(|e| ConfigError::new("http.listen", format!("{e} (want ip:port)")))?,
                admin_tokens: admin_tokens(&f.http, everything)?,
                metrics_token: read_opt("http.metrics_token", f.http.metrics_token.as_deref())?,
                allowed_hosts: AllowedHosts::parse(
                    f.http.allowed_hosts.as_deref().unwrap_or_default(),
                )
                .map_err(|m| ConfigError::new("http.allowed_hosts", m))?,
                max_connections: f
                    .http
                    .max_connections
                    .unwrap_or(DEFAULT_HTTP_MAX_CONNECTIONS),
                header_timeout: f.http.header_timeout.unwrap_or(DEFAULT_HTTP_HEADER_TIMEOUT),
            },
            sse: {
                let token_secret = read_opt("sse.token_secret", f.sse.token_secret.as_deref())?;
                SseConfig {
                    // On by default once there is a key to check tokens with.
                    enabled: f.sse.enabled.unwrap_or(token_secret.is_some()),
                    token_secret,
                    heartbeat: f.sse.heartbeat.unwrap_or(DEFAULT_SSE_HEARTBEAT),
                    max_subscribers: f.sse.max_subscribers.unwrap_or(DEFAULT_SSE_MAX_SUBSCRIBERS),
                    max_token_lifetime: f
                        .sse
                        .max_token_lifetime
                        .unwrap_or(DEFAULT_SSE_MAX_TOKEN_LIFETIME),
                    allowed_origins: f
                        .sse
                        .allowed_origins
                        .unwrap_or_default()
                        .iter()
                        .enumerate()
                        .map(|(i, o)| {
                            crate::http::sse::cors::normalize(o).map_err(|m| {
                                ConfigError::new(format!("sse.allowed_origins[{i}]"), m)
                            })
                        })
                        .collect::<Result<_, _>>()?,
                }
            },
            egress: egress_policy(f.egress)?,
            webhooks: f
                .webhook
                .into_iter()
                .enumerate()
                .map(|(i, w)| webhook::webhook(i, w, f.ordering.unwrap_or_default(), everything))
                .collect::<Result<_, _>>()?,
            nats: f
                .nats
                .into_iter()
                .enumerate()
                .map(|(i, n)| nats::nats(i, n, f.ordering.unwrap_or_default(), everything))
                .collect::<Result<_, _>>()?,
            redis: f
                .redis
                .into_iter()
                .enumerate()
                .map(|(i, r)| redis::redis(i, r, f.ordering.unwrap_or_default(), everything))
                .collect::<Result<_, _>>()?,
            rabbitmq: f
                .rabbitmq
                .into_iter()
                .enumerate()
                .map(|(i, r)| rabbitmq::rabbitmq(i, r, f.ordering.unwrap_or_default(), everything))
                .collect::<Result<_, _>>()?,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let positive = |key: &str, d: Duration| {
            if d.is_zero() {
                Err(ConfigError::new(key, "must be greater than zero"))
            } else {
                Ok(())
            }
        };
        positive("poll_interval", self.poll_interval)?;
        positive("lease", self.lease)?;
        positive("backoff_initial", self.backoff_initial)?;
        positive("sse.heartbeat", self.sse.heartbeat)?;
        positive("http.header_timeout", self.http.header_timeout)?;
        positive("sse.max_token_lifetime", self.sse.max_token_lifetime)?;
        // Beyond this, clock arithmetic overflows (a timer's deadline, a PostgreSQL interval)
        // and no deployment means it.
        let durations = [
            ("poll_interval", Some(self.poll_interval)),
            ("lease", Some(self.lease)),
            ("backoff_initial", Some(self.backoff_initial)),
            ("backoff_max", Some(self.backoff_max)),
            ("retention", self.retention),
            ("shutdown_timeout", Some(self.shutdown_timeout)),
            ("start_grace", Some(self.start_grace)),
            (
                "long_transaction_warning",
                Some(self.long_transaction_warning),
            ),
            ("sse.heartbeat", Some(self.sse.heartbeat)),
            ("http.header_timeout", Some(self.http.header_timeout)),
            ("sse.max_token_lifetime", Some(self.sse.max_token_lifetime)),
        ];
        for (key, d) in durations {
            if d.is_some_and(|d| d > MAX_DURATION) {
                return Err(ConfigError::new(key, "must be at most 100 years"));
            }
        }
        if self.lease < Duration::from_secs(1) {
            return Err(ConfigError::new("lease", "must be at least 1s"));
        }
        if self.backoff_max < self.backoff_initial {
            return Err(ConfigError::new(
                "backoff_max",
                "must not be below backoff_initial",
            ));
        }
        if !(1..=10_000).contains(&self.batch_size) {
            return Err(ConfigError::new(
                "batch_size",
                "must be between 1 and 10000",
            ));
        }
        for (key, n) in [
            ("http.max_connections", self.http.max_connections),
            ("sse.max_subscribers", self.sse.max_subscribers),
        ] {
            if !(1..=1_000_000).contains(&n) {
                return Err(ConfigError::new(key, "must be between 1 and 1000000"));
            }
        }
        if self.max_attempts == 0 {
            return Err(ConfigError::new("max_attempts", "must be at least 1"));
        }
        if self.sse.enabled && self.sse.token_secret.is_none() {
            return Err(ConfigError::new(
                "sse.token_secret",
                "is required when [sse] is enabled: the key apps sign subscriber tokens with \
                 (e.g. token_secret = \"env:SSE_TOKEN_SECRET\")",
            ));
        }
        positive("long_transaction_warning", self.long_transaction_warning)?;
        if !self.egress.deny_private_addresses && !self.egress.allow_networks.is_empty() {
            return Err(ConfigError::new(
                egress::ALLOW_KEY,
                format!(
                    "lists exceptions to {}, which is off: set it to true, or remove the list",
                    egress::DENY_KEY
                ),
            ));
        }
        for (i, w) in self.webhooks.iter().enumerate() {
            // A literal IP never reaches the resolver that applies the policy at connect
            // time, so it is checked here.
            if let Err(denied) = egress::check_literal(&self.egress, &w.url) {
                return Err(ConfigError::new(
                    format!("webhook[{i}].url"),
                    format!("{denied} (list it in {} to allow it)", egress::ALLOW_KEY),
                ));
            }
        }
        let mut seen = std::collections::HashSet::new();
        let mut index = std::collections::HashMap::<&str, usize>::new();
        for s in self.sinks() {
            let i = index.entry(s.section).or_default();
            if !seen.insert(s.name) {
                return Err(ConfigError::new(
                    format!("{}[{i}].name", s.section),
                    format!(
                        "{:?} is used by another sink; names must be unique (they are \
                         recorded in delivered_to)",
                        s.name
                    ),
                ));
            }
            *i += 1;
        }
        Ok(())
    }

    /// LIKE patterns on event_type selecting the events delivered in entity order: those an
    /// ordered webhook wants. Empty when nothing is ordered.
    pub fn ordered_types(&self) -> Vec<String> {
        let mut patterns: Vec<String> = self
            .sinks()
            .into_iter()
            .filter(|w| w.ordered)
            .flat_map(|w| w.types.iter().map(|t| crate::db::queries::glob_to_like(t)))
            .collect();
        patterns.sort();
        patterns.dedup();
        patterns
    }

    /// Every sink, whatever its kind, in config order (webhooks, then NATS, Redis and
    /// RabbitMQ).
    pub fn sinks(&self) -> Vec<SinkView<'_>> {
        let webhooks = self.webhooks.iter().map(|w| SinkView {
            section: "webhook",
            name: &w.name,
            types: &w.types,
            max_in_flight: w.max_in_flight,
            ordered: w.ordered,
            breaker: w.breaker,
            rate_limit: w.rate_limit,
            keys: Some(&w.keys),
        });
        let nats = self.nats.iter().map(|n| SinkView {
            section: "nats",
            name: &n.name,
            types: &n.types,
            max_in_flight: n.max_in_flight,
            ordered: n.ordered,
            breaker: n.breaker,
            rate_limit: n.rate_limit,
            keys: n.keys.as_ref(),
        });
        let redis = self.redis.iter().map(|r| SinkView {
            section: "redis",
            name: &r.name,
            types: &r.types,
            max_in_flight: r.max_in_flight,
            ordered: r.ordered,
            breaker: r.breaker,
            rate_limit: r.rate_limit,
            keys: r.keys.as_ref(),
        });
        let rabbitmq = self.rabbitmq.iter().map(|r| SinkView {
            section: "rabbitmq",
            name: &r.name,
            types: &r.types,
            max_in_flight: r.max_in_flight,
            ordered: r.ordered,
            breaker: r.breaker,
            rate_limit: r.rate_limit,
            keys: r.keys.as_ref(),
        });
        webhooks.chain(nats).chain(redis).chain(rabbitmq).collect()
    }

    /// How many sinks of each kind, for the start-up lines: `2 webhook, 1 nats`, or `none`.
    pub fn sink_summary(&self) -> String {
        let mut counts: Vec<(&str, usize)> = Vec::new();
        for s in self.sinks() {
            match counts.iter_mut().find(|(k, _)| *k == s.section) {
                Some((_, n)) => *n += 1,
                None => counts.push((s.section, 1)),
            }
        }
        if counts.is_empty() {
            return "none".to_owned();
        }
        let parts: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
        parts.join(", ")
    }

    /// The table and what of this config `db` renders its statements, indexes and
    /// privileges with (`db` takes these values rather than the config).
    pub fn table_settings(&self) -> TableSettings {
        TableSettings {
            schema: self.schema.clone(),
            table: self.table.clone(),
            ordered_types: self.ordered_types(),
            sse: self.sse.enabled,
            retention: self.retention.is_some(),
        }
    }

    /// `"public"."OutboxEvent"`, quoted and safe to splice into SQL.
    pub fn qualified_table(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }

    /// The keys of the secrets this config was loaded without ([`Needs`]): empty for the
    /// daemon, which uses them all.
    pub fn unread_secrets(&self) -> Vec<String> {
        let mut keys = Vec::new();
        let mut note = |key: &str, read: bool| {
            if !read {
                keys.push(key.to_owned());
            }
        };
        note("database_url", self.database_url.is_read());
        for t in &self.http.admin_tokens {
            note(&t.key, t.token.is_read());
        }
        for (key, s) in [
            ("http.metrics_token", &self.http.metrics_token),
            ("sse.token_secret", &self.sse.token_secret),
        ] {
            note(key, s.as_ref().is_none_or(Deferred::is_read));
        }
        for (i, w) in self.webhooks.iter().enumerate() {
            note(&format!("webhook[{i}].secret"), w.keys.is_read());
        }
        for (i, n) in self.nats.iter().enumerate() {
            keys.extend(n.unread(i));
        }
        for (i, r) in self.redis.iter().enumerate() {
            keys.extend(r.unread(i));
        }
        for (i, r) in self.rabbitmq.iter().enumerate() {
            keys.extend(r.unread(i));
        }
        keys
    }
}

/// Reads and parses a config file; warns (once: the process loads its config once) when it
/// holds secrets and other users may read it.
fn read_file(p: &Path) -> Result<FileConfig, ConfigError> {
    let cannot = |e: std::io::Error| {
        ConfigError::new("--config", format!("cannot read {}: {e}", p.display()))
    };
    let mut f = std::fs::File::open(p).map_err(cannot)?;
    let mut text = String::new();
    f.read_to_string(&mut text).map_err(cannot)?;
    let file = parse_file(&text).map_err(|e| ConfigError {
        file: Some(p.to_owned()),
        ..e
    })?;
    let literal = file.literal_secrets();
    // The mode of the file read, not of whatever the path names a moment later.
    let open = f.metadata().ok().as_ref().and_then(secret::open_to_others);
    if let (Some(mode), false) = (open, literal.is_empty()) {
        tracing::warn!(
            "config file {} holds secrets ({}) and is open to group/others \
             (mode {mode:04o}): chmod 600 it, or use env:/file: references",
            p.display(),
            literal.join(", ")
        );
    }
    Ok(file)
}

fn parse_file(text: &str) -> Result<FileConfig, ConfigError> {
    let de = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        let key = if key == "." || key.is_empty() {
            FILE_KEY.to_owned()
        } else {
            key
        };
        let last = key.rsplit('.').next().unwrap_or(&key);
        let message = match inner.message().trim() {
            // Some syntax errors (`A=`) come with no words: the caret says where.
            "" => "invalid syntax".to_owned(),
            // A wrong type's message repeats the value (serde's "invalid type: integer `5`").
            _ if location::SECRET_KEYS.contains(&last) => {
                "must be a string: the value itself, env:NAME or file:/path".to_owned()
            }
            // toml's words for a string left open (or a bad escape in it).
            "invalid basic string" => {
                "invalid basic string: close the \"...\" string on its line, and check its \\ escapes"
                    .to_owned()
            }
            m => m.lines().map(str::trim).collect::<Vec<_>>().join("; "),
        };
        ConfigError {
            at: inner.span().map(|span| Box::new(Location::find(text, span))),
            ..ConfigError::new(key, message)
        }
    })
}

/// Checks `database_url` and adds the `[database]` TLS keys to it, so every connection reads
/// them from one place (`crate::db::pg_config`). A key set both in the URL and in the file
/// must have the same value: the file cannot quietly weaken (or the URL quietly strengthen)
/// what the other says.
fn database_tls(url: Secret, file: FileDatabase) -> Result<Secret, ConfigError> {
    // Neither tokio-postgres' errors nor `split`'s echo the input: no password leaks here.
    let (rest, in_url) =
        tls::split(url.expose()).map_err(|m| ConfigError::new("database_url", m))?;
    if let Err(e) = rest.parse::<tokio_postgres::Config>() {
        return Err(ConfigError::new(
            "database_url",
            format!("not a PostgreSQL URL: {}", tls::redact(&e.to_string())),
        ));
    }
    let sslmode = file.sslmode.as_deref().map(tls::SslMode::parse);
    let in_file = tls::Settings {
        sslmode: sslmode
            .transpose()
            .map_err(|m| ConfigError::new("database.sslmode", m))?,
        sslrootcert: file.sslrootcert,
        sslcert: file.sslcert,
        sslkey: file.sslkey,
    };
    let url_pairs = in_url.pairs();
    for (key, value) in in_file.pairs() {
        if let Some((_, v)) = url_pairs.iter().find(|(k, _)| *k == key) {
            if *v != value {
                return Err(ConfigError::new(
                    format!("database.{key}"),
                    format!("is {value:?} here but {v:?} in database_url: set it in one place"),
                ));
            }
        }
    }
    let all = in_url.or(in_file);
    match (&all.sslcert, &all.sslkey) {
        (Some(_), None) => Err(ConfigError::new(
            "database.sslkey",
            "is required with sslcert",
        )),
        (None, Some(_)) => Err(ConfigError::new(
            "database.sslcert",
            "is required with sslkey",
        )),
        _ => Ok(Secret::new(tls::with_settings(&rest, &all))),
    }
}

fn parse_retention(v: Option<&str>) -> Result<Option<Duration>, ConfigError> {
    match v {
        None => Ok(Some(DEFAULT_RETENTION)),
        Some("off") => Ok(None),
        Some(s) => humantime::parse_duration(s).map(Some).map_err(|e| {
            ConfigError::new(
                "retention",
                format!("{e} (a duration such as 7d, or \"off\")"),
            )
        }),
    }
}

fn egress_policy(f: FileEgress) -> Result<egress::Policy, ConfigError> {
    let allow_networks = f
        .allow_networks
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, s)| {
            egress::parse_network(s)
                .map_err(|m| ConfigError::new(format!("{}[{i}]", egress::ALLOW_KEY), m))
        })
        .collect::<Result<_, _>>()?;
    Ok(egress::Policy {
        deny_private_addresses: f
            .deny_private_addresses
            .unwrap_or(DEFAULT_EGRESS_DENY_PRIVATE_ADDRESSES),
        allow_networks,
    })
}

/// `http.admin_token` (named [`DEFAULT_ADMIN_NAME`]) and `[[http.admin_tokens]]`: names
/// are short words, each name and each token used once (a shared token could not say who).
fn admin_tokens(http: &FileHttp, wanted: bool) -> Result<Vec<AdminToken>, ConfigError> {
    let named = http.admin_tokens.iter().enumerate().map(|(i, t)| {
        (
            format!("http.admin_tokens[{i}]"),
            t.name.as_str(),
            t.token.as_str(),
        )
    });
    let default = http
        .admin_token
        .as_deref()
        .map(|t| ("http.admin_token".to_owned(), DEFAULT_ADMIN_NAME, t));
    let mut out: Vec<AdminToken> = Vec::new();
    for (key, name, reference) in default.into_iter().chain(named) {
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b));
        if !valid {
            return Err(ConfigError::new(
                format!("{key}.name"),
                "a name is 1 to 64 letters, digits, '.', '_', '@' or '-'",
            ));
        }
        if out.iter().any(|t| t.name == name) {
            let why = if name == DEFAULT_ADMIN_NAME {
                format!("{name:?} is http.admin_token's name already")
            } else {
                format!("{name:?} is used twice")
            };
            return Err(ConfigError::new(format!("{key}.name"), why));
        }
        let key = if key.ends_with(']') {
            format!("{key}.token")
        } else {
            key
        };
        let token = read(&key, reference, wanted)?;
        if let Deferred::Read(t) = &token {
            if t.expose().is_empty() {
                return Err(ConfigError::new(&key, "the token is empty"));
            }
            let again = out
                .iter()
                .find(|o| matches!(&o.token, Deferred::Read(x) if x.expose() == t.expose()));
            if let Some(o) = again {
                return Err(ConfigError::new(
                    &key,
                    format!(
                        "the same token as {:?}: give each name its own token",
                        o.name
                    ),
                ));
            }
        }
        out.push(AdminToken {
            name: name.to_owned(),
            token,
            key,
        });
    }
    Ok(out)
}

/// Reads the secret `reference` names when `wanted`, or when it is a literal (nothing to
/// look up, and worth checking); otherwise leaves it [`Deferred::NotRead`].
fn read(key: &str, reference: &str, wanted: bool) -> Result<Deferred<Secret>, ConfigError> {
    if !wanted && secret::is_reference(reference) {
        return Ok(Deferred::NotRead(key.to_owned()));
    }
    Secret::resolve(reference)
        .map(Deferred::Read)
        .map_err(|m| ConfigError::new(key, m))
}

/// Reads and parses a signing secret (`whsec_...` or `whsk_...`, several separated by spaces).
fn signing_keys(
    key: &str,
    reference: &str,
    wanted: bool,
) -> Result<Deferred<SigningKeys>, ConfigError> {
    Ok(match read(key, reference, wanted)? {
        Deferred::Read(secret) => {
            Deferred::Read(SigningKeys::parse(&secret).map_err(|m| ConfigError::new(key, m))?)
        }
        Deferred::NotRead(k) => Deferred::NotRead(k),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, &Overrides::default())
    }

    #[test]
    fn absurd_durations_are_refused_by_name() {
        for (toml, key) in [
            ("lease = \"584942417355y\"", "lease"),
            ("poll_interval = \"101y\"", "poll_interval"),
            ("retention = \"1000y\"", "retention"),
        ] {
            assert_eq!(load(toml).unwrap_err().key, key, "{toml}");
        }
        assert!(load("retention = \"99y\"").is_ok());
    }

    #[test]
    fn admin_tokens_are_named_and_each_name_and_token_is_used_once() {
        let c = load(
            "[http]\nadmin_token = \"t0\"\n\
             [[http.admin_tokens]]\nname = \"alice\"\ntoken = \"t1\"\n\
             [[http.admin_tokens]]\nname = \"ci-bot@ops.example\"\ntoken = \"t2\"\n",
        )
        .unwrap();
        let names: Vec<&str> = c
            .http
            .admin_tokens
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        assert_eq!(names, ["admin", "alice", "ci-bot@ops.example"]);
        assert_eq!(c.http.admin_tokens[2].token.get().expose(), "t2");
        let named = |name: &str, token: &str| {
            format!("[[http.admin_tokens]]\nname = \"{name}\"\ntoken = \"{token}\"\n")
        };
        for (toml, key, says) in [
            (
                format!("[http]\nadmin_token = \"t0\"\n{}", named("admin", "t1")),
                "http.admin_tokens[0].name",
                "http.admin_token's name",
            ),
            (
                format!("{}{}", named("bob", "t1"), named("bob", "t2")),
                "http.admin_tokens[1].name",
                "used twice",
            ),
            (
                format!("{}{}", named("bob", "t1"), named("eve", "t1")),
                "http.admin_tokens[1].token",
                "the same token as \"bob\"",
            ),
            (named("", "t1"), "http.admin_tokens[0].name", "1 to 64"),
            (named("a b", "t1"), "http.admin_tokens[0].name", "1 to 64"),
            (named("<x>", "t1"), "http.admin_tokens[0].name", "1 to 64"),
        ] {
            let e = load(&toml).unwrap_err();
            assert_eq!(e.key, key, "{toml}");
            assert!(e.message.contains(says), "{toml}: {}", e.message);
            assert!(!e.to_string().contains("t1"), "a token in: {e}");
        }
        // Written in the file: named among the literal secrets, never shown.
        let f = parse_file(&named("bob", "t1")).unwrap();
        assert_eq!(f.literal_secrets(), ["http.admin_tokens[0].token"]);
    }

    #[test]
    fn defaults_without_a_file() {
        let c = load("").unwrap();
        assert_eq!(c.qualified_table(), r#""public"."OutboxEvent""#);
        assert_eq!(c.batch_size, 100);
        assert_eq!(c.max_attempts, 12);
        assert_eq!(c.retention, Some(DEFAULT_RETENTION));
        assert!(c.listen && c.webhooks.is_empty());
    }

    #[test]
    fn the_contract_example_parses() {
        let c = load(&format!(
            r#"
            database_url = "postgres://relay@db/app"
            schema = "public"
            table = "OutboxEvent"
            poll_interval = "30s"
            batch_size = 100
            max_attempts = 12
            lease = "30s"
            backoff_initial = "1s"
            backoff_max = "1h"
            retention = "7d"
            listen = true
            ordering = "none"
            [http]
            listen = "127.0.0.1:9470"
            [sse]
            enabled = true
            token_secret = "a-long-random-key"
            heartbeat = "15s"
            [[webhook]]
            name = "billing"
            url = "https://billing.internal/hooks/outbox"
            types = ["PROJECT.*", "INVOICE.CREATED"]
            secret = "{SECRET}"
            timeout = "10s"
            max_in_flight = 64
            "#
        ))
        .unwrap();
        assert_eq!(c.webhooks[0].name, "billing");
        assert_eq!(c.webhooks[0].timeout, Duration::from_secs(10));
        assert_eq!(c.backoff_max, Duration::from_secs(3600));
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("batch_size = \"many\"", "batch_size"),
            ("batchsize = 3", "batchsize"),
            ("poll_interval = \"soon\"", "poll_interval"),
            ("table = 'x\"; DROP TABLE y; --'", "table"),
            ("retention = \"forever\"", "retention"),
            ("batch_size = 0", "batch_size"),
            ("A=", "(file)"),
            ("[http]\nlisten = \"nowhere\"", "http.listen"),
            ("[sse]\nenabled = true", "sse.token_secret"),
            (
                "[[webhook]]\nname='a'\nurl='ftp://x'\nsecret='whsec_AAAA'",
                "webhook[0].url",
            ),
            (
                "[[webhook]]\nname='a'\nurl='http://x'\nsecret='not base64!'",
                "webhook[0].secret",
            ),
            (
                "[[webhook]]\nname='a b'\nurl='http://x'\nsecret='whsec_AAAA'",
                "webhook[0].name",
            ),
            (
                "[[webhook]]\nname='a'\nurl='http://x'\nsecret='env:NOPE_NOT_SET_42'",
                "webhook[0].secret",
            ),
            (
                "[[webhook]]\nname='a'\nurl='http://x'\nsecret='whsec_AAAA'\nbogus=1",
                "webhook[0]",
            ),
        ];
        for (text, key) in cases {
            let err = load(text).expect_err(text);
            assert!(!err.message.trim().is_empty(), "{text}: an empty message");
            assert!(
                err.key.starts_with(key),
                "{text}: got key {} ({})",
                err.key,
                err.message
            );
        }
    }

    #[test]
    fn egress_is_off_by_default_and_refuses_literal_private_urls_when_on() {
        let hook = |url: &str| format!("[[webhook]]\nname='a'\nurl='{url}'\nsecret='{SECRET}'\n");
        let c = load(&hook("http://127.0.0.1:9/hook")).unwrap();
        assert!(!c.egress.deny_private_addresses && c.egress.allow_networks.is_empty());

        let on = "[egress]\ndeny_private_addresses = true\n";
        for url in [
            "http://127.0.0.1:9/hook",
            "http://2130706433/",
            "http://169.254.169.254/latest/meta-data/",
            "http://2852039166/",
            "http://[::ffff:127.0.0.1]/",
            "https://10.1.2.3/",
        ] {
            let err = load(&format!("{on}{}", hook(url))).expect_err(url);
            assert_eq!(err.key, "webhook[0].url", "{url}");
            assert!(
                err.message.contains("egress.deny_private_addresses is on"),
                "{err}"
            );
        }
        let err = load(&format!("{on}{}", hook("http://2852039166/"))).unwrap_err();
        assert_eq!(
            err.message,
            "169.254.169.254 is a link-local address and egress.deny_private_addresses is on \
             (list it in egress.allow_networks to allow it)"
        );
        // Names are left to the resolver, at connect time.
        assert!(load(&format!("{on}{}", hook("http://localhost:9/"))).is_ok());
        let allowed = format!("{on}allow_networks = ['127.0.0.0/8', '::1']\n");
        let c = load(&format!("{allowed}{}", hook("http://127.0.0.1:9/"))).unwrap();
        assert_eq!(c.egress.allow_networks.len(), 2);
        assert!(load(&format!("{allowed}{}", hook("http://[::1]:9/"))).is_ok());
        assert!(load(&format!("{allowed}{}", hook("http://10.0.0.1/"))).is_err());
    }

    #[test]
    fn egress_errors_name_the_key() {
        for (text, key) in [
            ("[egress]\ndeny_private_addresses = 'yes'", "egress.deny_private_addresses"),
            ("[egress]\ndeny = true", "egress"),
            (
                "[egress]\ndeny_private_addresses = true\nallow_networks = ['10.0.0.0/8', 'intranet']",
                "egress.allow_networks[1]",
            ),
            (
                "[egress]\ndeny_private_addresses = true\nallow_networks = ['10.1.2.3/8']",
                "egress.allow_networks[0]",
            ),
            ("[egress]\nallow_networks = ['10.0.0.0/8']", "egress.allow_networks"),
        ] {
            let err = load(text).expect_err(text);
            assert!(err.key.starts_with(key), "{text}: got {} ({})", err.key, err.message);
        }
        // A value that reaches the message is quoted, so it cannot forge a line.
        let err = load("[egress]\ndeny_private_addresses = true\nallow_networks = ['x\\ny']")
            .unwrap_err();
        assert!(!err.message.contains('\n'), "{err}");
    }

    #[test]
    fn unknown_key_message_names_it() {
        let err = load("batchsize = 3").unwrap_err();
        assert!(err.to_string().contains("batchsize"), "{err}");
    }

    #[test]
    fn retention_off_and_secret_not_in_errors() {
        assert_eq!(load("retention = \"off\"").unwrap().retention, None);
        let err =
            load("[[webhook]]\nname='a'\nurl='http://x'\nsecret='hunter2 not-base64'").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn database_tls_keys_from_the_url_or_the_file_must_agree() {
        let with = |url: &str, file: &str| {
            Config::from_toml(
                file,
                &Overrides {
                    database_url: Some(url.into()),
                },
            )
        };
        let c = with(
            "postgres://u:pw@db/app",
            "[database]\nsslmode = \"verify-full\"\nsslrootcert = \"/etc/ca.pem\"",
        )
        .unwrap();
        let (_, s) = tls::split(c.database_url.get().expose()).unwrap();
        assert_eq!(s.sslmode, Some(tls::SslMode::VerifyFull));
        assert_eq!(s.sslrootcert.as_deref(), Some("/etc/ca.pem"));
        // The same value in both places is fine; different values are an error naming both.
        assert!(with(
            "postgres://db/app?sslmode=verify-full",
            "[database]\nsslmode = 'verify-full'"
        )
        .is_ok());
        let err = with(
            "postgres://u:hunter2@db/app?sslmode=require",
            "[database]\nsslmode = 'verify-full'",
        )
        .unwrap_err();
        assert_eq!(err.key, "database.sslmode");
        assert!(err.message.contains("\"require\" in database_url"), "{err}");
        assert!(!err.to_string().contains("hunter2"));
        for (file, key) in [
            ("[database]\nsslmode = 'verify'", "database.sslmode"),
            ("[database]\nsslcert = '/c.pem'", "database.sslkey"),
            ("[database]\nsslkey = '/k.pem'", "database.sslcert"),
            ("[database]\nsslrootkey = '/k.pem'", "database"),
        ] {
            assert!(
                with("postgres://db/app", file)
                    .unwrap_err()
                    .key
                    .starts_with(key),
                "{file}"
            );
        }
        let err = with("postgres://u:hunter2@db/app?sslmode=verify", "").unwrap_err();
        assert_eq!(err.key, "database_url");
        assert!(!err.to_string().contains("hunter2"));
        // Neither a value read from the environment (PATH is not a connection string)...
        let path = std::env::var("PATH").unwrap();
        let err = Config::from_toml("database_url = \"env:PATH\"", &Overrides::default());
        let err = err.unwrap_err().to_string();
        assert!(
            err.contains("database_url") && !err.contains(&path),
            "{err}"
        );
        // ...nor a word of a `key=value` string that tokio-postgres does not know.
        let err = with("host=db hunter2=x", "").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn references_are_read_only_when_the_command_needs_them() {
        let text = format!(
            "database_url = \"env:OUTBOX_RELAY_TEST_UNSET_DB\"\n\
             [http]\nadmin_token = \"env:OUTBOX_RELAY_TEST_UNSET_A\"\n\
             [sse]\ntoken_secret = \"file:/nonexistent/outbox-relay-key\"\n\
             [[webhook]]\nname = \"a\"\nurl = \"http://x\"\nsecret = \"env:OUTBOX_RELAY_TEST_UNSET_W\"\n\
             [[webhook]]\nname = \"b\"\nurl = \"http://x\"\nsecret = \"{SECRET}\"\n"
        );
        let with = |needs| Config::from_toml_for(&text, &Overrides::default(), needs);
        let c = with(Needs::Nothing).unwrap();
        assert!(
            c.sse.enabled,
            "SSE is on: a token secret is configured, read or not"
        );
        assert_eq!(
            c.unread_secrets(),
            [
                "database_url",
                "http.admin_token",
                "sse.token_secret",
                "webhook[0].secret"
            ]
        );
        // A literal is read (and checked) by every command.
        assert!(c.webhooks[1].keys.is_read());
        let err = with(Needs::Database).unwrap_err();
        assert_eq!(err.key, "database_url");
        let err = with(Needs::Everything).unwrap_err();
        assert_eq!(err.key, "database_url");

        let o = Overrides {
            database_url: Some("postgres://relay@db/app".into()),
        };
        let c = Config::from_toml_for(&text, &o, Needs::Database).unwrap();
        assert!(c.database_url.is_read());
        assert_eq!(c.unread_secrets().len(), 3);
        let err = Config::from_toml_for(&text, &o, Needs::Everything).unwrap_err();
        assert_eq!(err.key, "http.admin_token");
        // A bad literal fails even where it is not used.
        let bad = "[[webhook]]\nname='a'\nurl='http://x'\nsecret='not base64!'";
        let err = Config::from_toml_for(bad, &Overrides::default(), Needs::Nothing).unwrap_err();
        assert_eq!(err.key, "webhook[0].secret");
    }

    #[test]
    fn toml_errors_say_where_with_the_line_and_a_caret() {
        let err = load("table = \"OutboxEvent\"\n[http]\nlisten = \"127.0.0.1:9470\n").unwrap_err();
        assert_eq!(err.key, FILE_KEY);
        assert_eq!(
            err.to_string(),
            "line 3, column 25: invalid TOML: invalid basic string: close the \"...\" string \
             on its line, and check its \\ escapes\n  \
             3 | listen = \"127.0.0.1:9470\n    |                         ^"
        );
        let err = ConfigError {
            file: Some("/etc/outbox-relay/config.toml".into()),
            ..load("batch_size = 100\nbatch_size = \"many\"").unwrap_err()
        };
        assert!(
            err.to_string()
                .starts_with("/etc/outbox-relay/config.toml:2:1: "),
            "{err}"
        );
        // A secret's wrong type: neither its value nor its line is repeated.
        let err = load("[[webhook]]\nname = 'a'\nurl = 'http://x'\nsecret = 123456").unwrap_err();
        assert_eq!(err.key, "webhook[0].secret");
        assert!(!err.to_string().contains("123456"), "{err}");
        // Errors found after parsing have no location.
        let err = load("batch_size = 0").unwrap_err();
        assert_eq!(
            err.to_string(),
            "config error at `batch_size`: must be between 1 and 10000"
        );
    }

    #[test]
    fn table_settings_carry_what_db_renders_with() {
        // The defaults: what `TableSettings::for_tests` stands for in db's unit tests.
        assert_eq!(
            load("").unwrap().table_settings(),
            TableSettings::for_tests(DEFAULT_TABLE)
        );
        let text = format!(
            "schema = \"app\"\ntable = \"events\"\nretention = \"off\"\n\
             [sse]\nenabled = true\ntoken_secret = \"{SECRET}\"\n\
             [[webhook]]\nname = \"a\"\nurl = \"http://x\"\nsecret = \"{SECRET}\"\n\
             ordering = \"entity\"\ntypes = [\"ORDER.*\"]\n"
        );
        let s = load(&text).unwrap().table_settings();
        assert_eq!(s.qualified_table(), r#""app"."events""#);
        assert_eq!(s.ordered_types, ["ORDER.%"]);
        assert!(s.sse);
        assert!(!s.retention);
    }

    #[test]
    fn a_table_that_is_not_an_outbox_reads_as_an_error_at_table() {
        let why = "is a view, not a plain table";
        let db_side = crate::db::shape::Unadoptable {
            table: "\"public\".\"v\"".into(),
            why: why.into(),
        };
        let config_side = ConfigError::new("table", format!("\"public\".\"v\" {why}"));
        assert_eq!(db_side.to_string(), config_side.to_string());
    }

    #[test]
    fn flag_overrides_file() {
        let o = Overrides {
            database_url: Some("postgres://flag@h/db".into()),
        };
        let c = Config::from_toml("database_url = \"postgres://file@h/db\"", &o).unwrap();
        assert_eq!(c.database_url.get().expose(), "postgres://flag@h/db");
    }

    #[test]
    fn a_nats_sink_parses_and_its_mistakes_name_the_key() {
        let c = load(
            r#"
            ordering = "entity"
            [[nats]]
            name = "bus"
            url = ["nats://a:4222", "nats://b:4222"]
            subject = "outbox.{org_id}.{event_type}"
            stream = "OUTBOX"
            user = "relay"
            password = "pw"
            "#,
        )
        .unwrap();
        let n = &c.nats[0];
        assert_eq!(n.servers.len(), 2);
        assert_eq!(n.subject.stream_subject(), "outbox.*.>");
        assert!(n.ordered && !n.create_stream && n.keys.is_none());
        assert_eq!(n.timeout, nats::DEFAULT_NATS_TIMEOUT);
        assert_eq!(
            c.ordered_types(),
            ["%"],
            "an ordered NATS sink orders its types"
        );
        let base = "[[nats]]\nname = \"bus\"\nurl = \"nats://a:4222\"\nstream = \"S\"\n";
        for (extra, key, says) in [
            (
                "subject = \"x.{org}\"",
                "nats[0].subject",
                "unknown placeholder {org}",
            ),
            (
                "subject = \"x.*\"",
                "nats[0].subject",
                "cannot be part of a subject",
            ),
            (
                "token = \"t\"\nnkey = \"SU\"",
                "nats[0].credentials",
                "one way",
            ),
            ("user = \"u\"", "nats[0].password", "set both"),
            ("max_in_flight = 0", "nats[0].max_in_flight", "between"),
        ] {
            let e = load(&format!("{base}{extra}")).unwrap_err();
            assert_eq!(
                (e.key.as_str(), e.message.contains(says)),
                (key, true),
                "{extra}: {e:?}"
            );
        }
        let e = load("[[nats]]\nname = \"b\"\nurl = \"http://a\"\nstream = \"S\"").unwrap_err();
        assert_eq!(e.key, "nats[0].url");
        let e = load("[[nats]]\nname = \"b\"\nurl = \"nats://a\"\nstream = \"A.B\"").unwrap_err();
        assert_eq!(e.key, "nats[0].stream");
        // One name space for every sink: names go into delivered_to.
        let e = load(&format!(
            "[[webhook]]\nname = \"bus\"\nurl = \"http://h/\"\nsecret = \"{SECRET}\"\n{base}"
        ))
        .unwrap_err();
        assert_eq!(e.key, "nats[0].name");
        // A password in the URL never reaches a message.
        let e = load("[[nats]]\nname = \"b\"\nurl = \"http://u:hunter2@a\"\nstream = \"S\"")
            .unwrap_err();
        assert!(!e.message.contains("hunter2"), "{e:?}");
    }

    #[test]
    fn a_redis_sink_parses_and_its_mistakes_name_the_key() {
        let c = load(&format!(
            r#"
            [[redis]]
            name = "stream"
            url = "redis://cache:6379/2"
            password = "pw"
            stream = "outbox:{{org_id}}"
            maxlen = 100000
            ordering = "entity"
            secret = "{SECRET}"
            "#
        ))
        .unwrap();
        let r = &c.redis[0];
        assert_eq!(r.stream.as_str(), "outbox:{org_id}");
        assert_eq!(r.maxlen, Some(100_000));
        assert_eq!(r.dedup_window, redis::DEFAULT_REDIS_DEDUP_WINDOW);
        assert_eq!(r.timeout, redis::DEFAULT_REDIS_TIMEOUT);
        assert!(r.ordered && r.keys.is_some() && r.tls_ca.is_none());
        assert_eq!(c.ordered_types(), ["%"]);
        // A reference is read only by the commands that need it.
        let unread = Config::from_toml_for(
            "[[redis]]\nname = \"r\"\nurl = \"redis://h\"\npassword = \"env:OUTBOX_RELAY_TEST_UNSET_REDIS\"",
            &Overrides::default(),
            Needs::Nothing,
        )
        .unwrap()
        .unread_secrets();
        assert_eq!(unread, ["redis[0].password"]);
        // Literal secrets: a password in the URL, or in the file.
        let file = parse_file(
            "[[redis]]\nname = \"r\"\nurl = \"redis://:pw@h\"\n\
             [[redis]]\nname = \"s\"\nurl = \"redis://h\"\npassword = \"pw\"",
        )
        .unwrap();
        assert_eq!(
            file.literal_secrets(),
            ["redis[0].url", "redis[1].password"]
        );
        let off =
            load("[[redis]]\nname = \"r\"\nurl = \"rediss://h\"\ndedup_window = \"0s\"").unwrap();
        assert!(off.redis[0].dedup_window.is_zero());

        let base = "[[redis]]\nname = \"r\"\nurl = \"redis://h:6379\"\n";
        for (extra, key, says) in [
            (
                "stream = \"x:{org}\"",
                "redis[0].stream",
                "unknown placeholder {org}",
            ),
            (
                "stream = \"a b\"",
                "redis[0].stream",
                "cannot be part of a stream key",
            ),
            ("maxlen = 0", "redis[0].maxlen", "at least 1"),
            (
                "dedup_window = \"500ms\"",
                "redis[0].dedup_window",
                "at least 1s",
            ),
            ("tls_ca = \"/ca.pem\"", "redis[0].tls_ca", "rediss://"),
            ("max_in_flight = 0", "redis[0].max_in_flight", "between"),
            (
                "ordering = \"entity\"\ntypes = [\"[A]\"]",
                "redis[0].types[0]",
                "only * and ?",
            ),
            ("stream_key = \"x\"", "redis[0].stream_key", "unknown field"),
        ] {
            let e = load(&format!("{base}{extra}")).unwrap_err();
            assert_eq!(
                (e.key.as_str(), e.message.contains(says)),
                (key, true),
                "{extra}: {e:?}"
            );
        }
        for (url, says) in [
            ("http://h", "must be a redis:// or rediss:// URL"),
            ("redis://h/notanumber", "redis://h/notanumber"),
        ] {
            let e = load(&format!("[[redis]]\nname = \"r\"\nurl = \"{url}\"")).unwrap_err();
            assert_eq!(e.key, "redis[0].url");
            assert!(e.message.contains(says), "{url}: {e:?}");
        }
        // A password in the URL and in `password` too; neither reaches a message.
        for text in [
            "[[redis]]\nname = \"r\"\nurl = \"redis://:hunter2@h\"\npassword = \"hunter2\"",
            "[[redis]]\nname = \"r\"\nurl = \"http://u:hunter2@h\"",
            "[[redis]]\nname = \"r\"\nurl = \"redis://u:hunter2@h/x\"",
        ] {
            let e = load(text).unwrap_err();
            assert!(e.key.starts_with("redis[0]."), "{e:?}");
            assert!(!e.to_string().contains("hunter2"), "{e:?}");
        }
        // One name space for every sink.
        let e = load(&format!(
            "[[nats]]\nname = \"r\"\nurl = \"nats://a\"\nstream = \"S\"\n{base}"
        ))
        .unwrap_err();
        assert_eq!(e.key, "redis[0].name");
    }

    #[test]
    fn a_rabbitmq_sink_parses_and_its_mistakes_name_the_key() {
        let c = load(&format!(
            r#"
            [[rabbitmq]]
            name = "amqp"
            url = "amqp://relay@mq:5672/%2f"
            password = "pw"
            exchange = "outbox"
            routing_key = "outbox.{{org_id}}.{{event_type}}"
            ordering = "entity"
            secret = "{SECRET}"
            "#
        ))
        .unwrap();
        let r = &c.rabbitmq[0];
        assert_eq!(r.exchange, "outbox");
        assert_eq!(r.routing_key.as_str(), "outbox.{org_id}.{event_type}");
        assert_eq!(r.timeout, rabbitmq::DEFAULT_RABBITMQ_TIMEOUT);
        assert_eq!(r.max_in_flight, rabbitmq::DEFAULT_RABBITMQ_MAX_IN_FLIGHT);
        assert!(r.ordered && r.keys.is_some() && r.tls_ca.is_none());
        assert_eq!(c.sink_summary(), "1 rabbitmq");
        // The default exchange and the default routing key.
        let d = load("[[rabbitmq]]\nname = \"q\"\nurl = \"amqps://mq\"\nexchange = \"\"").unwrap();
        assert_eq!(d.rabbitmq[0].exchange, "");
        assert_eq!(d.rabbitmq[0].routing_key.as_str(), "{event_type}");
        let unread = Config::from_toml_for(
            "[[rabbitmq]]\nname = \"r\"\nurl = \"amqp://h\"\nexchange = \"x\"\n\
             password = \"env:OUTBOX_RELAY_TEST_UNSET_AMQP\"",
            &Overrides::default(),
            Needs::Nothing,
        )
        .unwrap()
        .unread_secrets();
        assert_eq!(unread, ["rabbitmq[0].password"]);
        let file = parse_file(
            "[[rabbitmq]]\nname = \"r\"\nurl = \"amqp://u:pw@h\"\nexchange = \"x\"\n\
             [[rabbitmq]]\nname = \"s\"\nurl = \"amqp://h\"\nexchange = \"x\"\npassword = \"pw\"",
        )
        .unwrap();
        assert_eq!(
            file.literal_secrets(),
            ["rabbitmq[0].url", "rabbitmq[1].password"]
        );

        let base = "[[rabbitmq]]\nname = \"r\"\nurl = \"amqp://h:5672\"\n";
        for (extra, key, says) in [
            ("", "rabbitmq[0].exchange", "is missing"),
            (
                "exchange = \"a b\"",
                "rabbitmq[0].exchange",
                "letters, digits",
            ),
            (
                "exchange = \"x\"\nrouting_key = \"a.{org}\"",
                "rabbitmq[0].routing_key",
                "unknown placeholder {org}",
            ),
            (
                "exchange = \"x\"\nrouting_key = \"a.#\"",
                "rabbitmq[0].routing_key",
                "cannot be part of a routing key",
            ),
            (
                "exchange = \"x\"\ntls_ca = \"/ca.pem\"",
                "rabbitmq[0].tls_ca",
                "amqps://",
            ),
            (
                "exchange = \"x\"\nmax_in_flight = 5000",
                "rabbitmq[0].max_in_flight",
                "at most 2046",
            ),
            (
                "exchange = \"x\"\nqueue = \"q\"",
                "rabbitmq[0].queue",
                "unknown field",
            ),
        ] {
            let e = load(&format!("{base}{extra}")).unwrap_err();
            assert_eq!(
                (e.key.as_str(), e.message.contains(says)),
                (key, true),
                "{extra}: {e:?}"
            );
        }
        for (url, says) in [
            ("http://h", "must be an amqp:// or amqps:// URL"),
            ("amqp://h:notaport", "invalid port number"),
            ("amqp://h/?heartbeat=x", "heartbeat"),
        ] {
            let e = load(&format!(
                "[[rabbitmq]]\nname = \"r\"\nurl = \"{url}\"\nexchange = \"x\""
            ))
            .unwrap_err();
            assert_eq!(e.key, "rabbitmq[0].url");
            assert!(e.message.contains(says), "{url}: {e:?}");
        }
        for text in [
            "[[rabbitmq]]\nname = \"r\"\nurl = \"amqp://u:hunter2@h\"\npassword = \"hunter2\"\nexchange = \"x\"",
            "[[rabbitmq]]\nname = \"r\"\nurl = \"http://u:hunter2@h\"\nexchange = \"x\"",
            "[[rabbitmq]]\nname = \"r\"\nurl = \"amqp://u:hunter2@h/?heartbeat=x\"\nexchange = \"x\"",
        ] {
            let e = load(text).unwrap_err();
            assert!(e.key.starts_with("rabbitmq[0]."), "{e:?}");
            assert!(!e.to_string().contains("hunter2"), "{e:?}");
        }
        // One name space for every sink.
        let e = load(&format!(
            "[[redis]]\nname = \"r\"\nurl = \"redis://h\"\n{base}exchange = \"x\""
        ))
        .unwrap_err();
        assert_eq!(e.key, "rabbitmq[0].name");
    }
}
