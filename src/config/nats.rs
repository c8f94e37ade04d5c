//! `[[nats]]`: a NATS JetStream sink. Its subject template is checked here, at start, so a
//! typo is one line naming the key rather than a dead letter per event.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{read, signing_keys, ConfigError, Ordering, SinkKeys};
use crate::secret::{without_credentials, Deferred, Secret};
use crate::sinks::nats::subject::Template;
use crate::sinks::webhook::signature::SigningKeys;

/// How long a publish waits for its JetStream ack by default.
pub const DEFAULT_NATS_TIMEOUT: Duration = Duration::from_secs(10);
/// Publishes awaiting their ack at once, by default: JetStream acks in order per
/// connection, so a deep pipeline is what makes a drain fast.
pub const DEFAULT_NATS_MAX_IN_FLIGHT: usize = 256;
/// The subject when the section sets none.
pub const DEFAULT_NATS_SUBJECT: &str = "outbox.{event_type}";

/// One server URL or several (a cluster's seeds).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum Urls {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileNats {
    name: String,
    url: Urls,
    subject: Option<String>,
    stream: String,
    create_stream: Option<bool>,
    types: Option<Vec<String>>,
    #[serde(default, with = "humantime_serde")]
    timeout: Option<Duration>,
    max_in_flight: Option<usize>,
    ordering: Option<Ordering>,
    circuit_breaker: Option<super::breaker::FileBreaker>,
    rate_limit: Option<String>,
    user: Option<String>,
    password: Option<String>,
    token: Option<String>,
    nkey: Option<String>,
    credentials: Option<PathBuf>,
    tls_ca: Option<PathBuf>,
    tls_required: Option<bool>,
    secret: Option<String>,
}

impl FileNats {
    /// The keys whose secret is written in the file itself (see `literal_secrets`).
    pub(super) fn literal_secrets(&self, i: usize) -> Vec<String> {
        [
            ("password", &self.password),
            ("token", &self.token),
            ("nkey", &self.nkey),
            ("secret", &self.secret),
        ]
        .into_iter()
        .filter(|(_, v)| v.as_deref().is_some_and(crate::secret::is_literal))
        .map(|(k, _)| format!("nats[{i}].{k}"))
        .collect()
    }
}

/// How the relay proves who it is to the NATS servers (at most one way).
#[derive(Debug, Clone)]
pub enum NatsAuth {
    None,
    UserPassword {
        user: String,
        password: Deferred<Secret>,
    },
    Token(Deferred<Secret>),
    /// An NKey seed (`SU...`).
    NKey(Deferred<Secret>),
    /// A `.creds` file (JWT and NKey seed), read when connecting.
    Credentials(PathBuf),
}

/// One `[[nats]]` sink.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// Unique among all sinks; recorded in `delivered_to` once the stream acks an event.
    pub name: String,
    /// Server URLs (`nats://`, `tls://`), credentials stripped for display by the sink.
    pub servers: Vec<String>,
    pub subject: Template,
    /// The JetStream stream that must hold the subjects published to.
    pub stream: String,
    /// Create the stream (file storage, the subject template's subjects) when it is missing.
    pub create_stream: bool,
    pub types: Vec<String>,
    /// How long a publish waits for its ack.
    pub timeout: Duration,
    pub max_in_flight: usize,
    pub ordered: bool,
    /// `circuit_breaker` (None: off).
    pub breaker: Option<super::breaker::BreakerConfig>,
    /// `rate_limit` (None: none).
    pub rate_limit: Option<super::rate::RateLimit>,
    pub auth: NatsAuth,
    pub tls_ca: Option<PathBuf>,
    pub tls_required: bool,
    /// Signs each message like a webhook (`webhook-signature` header), when set.
    pub keys: Option<Deferred<SigningKeys>>,
}

impl NatsConfig {
    /// The secrets of this section that were not read (see `Config::unread_secrets`).
    pub(super) fn unread(&self, i: usize) -> Vec<String> {
        let mut keys = Vec::new();
        let mut note = |k: &str, read: bool| {
            if !read {
                keys.push(format!("nats[{i}].{k}"));
            }
        };
        match &self.auth {
            NatsAuth::UserPassword { password, .. } => note("password", password.is_read()),
            NatsAuth::Token(t) => note("token", t.is_read()),
            NatsAuth::NKey(k) => note("nkey", k.is_read()),
            NatsAuth::None | NatsAuth::Credentials(_) => {}
        }
        if let Some(k) = &self.keys {
            note("secret", k.is_read());
        }
        keys
    }
}

/// Validates `[[nats]]` number `i`.
pub(super) fn nats(
    i: usize,
    n: FileNats,
    global: Ordering,
    read_secret: bool,
) -> Result<NatsConfig, ConfigError> {
    let key = |k: &str| format!("nats[{i}].{k}");
    let common = SinkKeys {
        name: n.name,
        types: n.types,
        timeout: n.timeout,
        max_in_flight: n.max_in_flight,
        ordering: n.ordering,
        circuit_breaker: n.circuit_breaker,
        rate_limit: n.rate_limit,
    }
    .validate(
        "nats",
        i,
        global,
        DEFAULT_NATS_TIMEOUT,
        DEFAULT_NATS_MAX_IN_FLIGHT,
    )?;
    let servers = match n.url {
        Urls::One(u) => vec![u],
        Urls::Many(us) => us,
    };
    if servers.is_empty() {
        return Err(ConfigError::new(key("url"), "lists no server"));
    }
    for s in &servers {
        let parsed = url::Url::parse(s).map_err(|e| {
            ConfigError::new(key("url"), format!("{:?}: {e}", without_credentials(s)))
        })?;
        if !matches!(parsed.scheme(), "nats" | "tls") {
            return Err(ConfigError::new(
                key("url"),
                format!(
                    "{:?}: must be a nats:// or tls:// URL",
                    without_credentials(s)
                ),
            ));
        }
    }
    let subject = Template::parse(n.subject.as_deref().unwrap_or(DEFAULT_NATS_SUBJECT))
        .map_err(|m| ConfigError::new(key("subject"), m))?;
    if !valid_stream_name(&n.stream) {
        return Err(ConfigError::new(
            key("stream"),
            format!(
                "{:?}: a stream name is 1-255 characters without spaces, '.', '*', '>', '/' or '\\\\'",
                n.stream
            ),
        ));
    }
    let secret = |k: &str, v: &str| read(&key(k), v, read_secret);
    let ways = [
        n.user.is_some() || n.password.is_some(),
        n.token.is_some(),
        n.nkey.is_some(),
        n.credentials.is_some(),
    ];
    if ways.iter().filter(|w| **w).count() > 1 {
        return Err(ConfigError::new(
            key("credentials"),
            "set one way to authenticate: user and password, token, nkey or credentials",
        ));
    }
    let auth = match (n.user, n.password, n.token, n.nkey, n.credentials) {
        (Some(user), Some(password), ..) => NatsAuth::UserPassword {
            user,
            password: secret("password", &password)?,
        },
        (Some(_), None, ..) | (None, Some(_), ..) => {
            return Err(ConfigError::new(
                key("password"),
                "user and password go together: set both",
            ))
        }
        (_, _, Some(token), ..) => NatsAuth::Token(secret("token", &token)?),
        (_, _, _, Some(seed), _) => NatsAuth::NKey(secret("nkey", &seed)?),
        (_, _, _, _, Some(path)) => NatsAuth::Credentials(path),
        _ => NatsAuth::None,
    };
    let keys = n
        .secret
        .map(|s| signing_keys(&key("secret"), &s, read_secret))
        .transpose()?;
    Ok(NatsConfig {
        name: common.name,
        servers,
        subject,
        stream: n.stream,
        create_stream: n.create_stream.unwrap_or(false),
        types: common.types,
        timeout: common.timeout,
        max_in_flight: common.max_in_flight,
        ordered: common.ordered,
        breaker: common.breaker,
        rate_limit: common.rate_limit,
        auth,
        tls_required: n.tls_required.unwrap_or(false) || n.tls_ca.is_some(),
        tls_ca: n.tls_ca,
        keys,
    })
}

/// JetStream's rule for stream names.
fn valid_stream_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.chars().any(|c| {
            c.is_whitespace() || c.is_control() || matches!(c, '.' | '*' | '>' | '/' | '\\')
        })
}
