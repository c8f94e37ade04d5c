//! The Redis Streams sink: appends each event to a stream (`XADD`) whose key comes from the
//! `[[redis]]` template, and counts it delivered once Redis has replied with the entry's id.
//!
//! Each entry's fields are `id` (the event id), `type`, `body` (the envelope receivers get),
//! `webhook-id`, `webhook-timestamp` and, with a `secret`, `webhook-signature`, so consumers
//! can verify as receivers do.
//!
//! Redis has no message ids of its own to deduplicate by, so the append is a small script
//! ([`APPEND`]), which Redis runs atomically: if the event's dedup key
//! ([`key::dedup_key`]) exists, the event was appended already and nothing is added;
//! otherwise `XADD`, then `SET` the dedup key to the new entry's id for `dedup_window`. A
//! redelivery inside the window (a relay killed between the append and recording it, a
//! retry after a reply that was lost) thus adds no second entry, and counts as delivered.
//!
//! No reply in time, a lost connection, a server loading its data, busy, out of memory, or
//! refusing this client for now is a failed attempt (retried with backoff; the connection
//! is re-established in the background). A key that holds something other than a stream
//! (`WRONGTYPE`), or a stream key longer than [`key::MAX_KEY_LEN`], dead-letters the event
//! with the reason.

pub mod key;

use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{ErrorKind, IntoConnectionInfo, RedisError, Script, ServerErrorKind};
use futures_util::future::BoxFuture;
use tokio::sync::OnceCell;

use crate::config::redis::RedisConfig;
use crate::observe::activity::Timeline;
use crate::sinks::endpoint::{Attempt, Endpoint, Message, Sent, Settings, Sink, TIMED_OUT};
use crate::sinks::start::{self, Try};
use crate::sinks::webhook::signature::{self, SigningKeys};

/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Reconnection attempts the client makes (with a short backoff) before the appends waiting
/// for the connection fail; the next append starts another round.
const RECONNECT_RETRIES: usize = 2;
/// Streams came with Redis 5.0.
const MIN_VERSION: (u32, u32) = (5, 0);

/// The idempotent append. KEYS: the stream, the dedup key. ARGV: the dedup window in ms (0:
/// none), `MAXLEN ~` (0: none), then the entry's fields and values. Returns `{1, entry id}`
/// when it appended, `{0, entry id}` when the dedup key says it had (the first entry's id).
/// The dedup key is set only after `XADD` succeeded, so a refused append leaves no trace.
pub const APPEND: &str = r#"
local window = tonumber(ARGV[1])
if window > 0 then
  local seen = redis.call('GET', KEYS[2])
  if seen then return {0, seen} end
end
local xadd = {'XADD', KEYS[1]}
if tonumber(ARGV[2]) > 0 then
  table.insert(xadd, 'MAXLEN')
  table.insert(xadd, '~')
  table.insert(xadd, ARGV[2])
end
table.insert(xadd, '*')
for i = 3, #ARGV do table.insert(xadd, ARGV[i]) end
local entry = redis.call(unpack(xadd))
if window > 0 then redis.call('SET', KEYS[2], entry, 'PX', window) end
return {1, entry}
"#;

/// A `[[redis]]` sink.
pub struct Redis {
    cfg: RedisConfig,
    keys: Option<SigningKeys>,
    append: Script,
    /// Set once [`Sink::start`] has connected and checked the server.
    conn: OnceCell<ConnectionManager>,
}

/// The endpoint of a `[[redis]]`: the shared part and this sink.
pub fn endpoint(cfg: &RedisConfig, timeline: Arc<Timeline>) -> anyhow::Result<Endpoint> {
    let settings = Settings {
        name: &cfg.name,
        types: &cfg.types,
        max_in_flight: cfg.max_in_flight,
        timeout: cfg.timeout,
        breaker: cfg.breaker,
        rate_limit: cfg.rate_limit,
    };
    let sink = Redis {
        keys: cfg.keys.as_ref().map(|k| k.get().clone()),
        cfg: cfg.clone(),
        append: Script::new(APPEND),
        conn: OnceCell::new(),
    };
    Endpoint::new(settings, Box::new(sink), timeline)
}

impl Redis {
    fn client(&self) -> anyhow::Result<::redis::Client> {
        let mut info = self
            .cfg
            .url
            .as_str()
            .into_connection_info()
            .map_err(|e| anyhow::anyhow!("the URL does not parse: {e}"))?;
        if let Some(password) = &self.cfg.password {
            let settings = info
                .redis_settings()
                .clone()
                .set_password(password.get().expose());
            info = info.set_redis_settings(settings);
        }
        let client = match &self.cfg.tls_ca {
            None => ::redis::Client::open(info)?,
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| {
                    anyhow::anyhow!("cannot read the CA file {}: {e}", path.display())
                })?;
                let certs = ::redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                };
                ::redis::Client::build_with_tls(info, certs)?
            }
        };
        Ok(client)
    }

    async fn connect(&self, client: ::redis::Client) -> Result<ConnectionManager, RedisError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT.min(self.cfg.timeout)))
            .set_response_timeout(Some(self.cfg.timeout))
            .set_number_of_retries(RECONNECT_RETRIES)
            .set_max_delay(Duration::from_secs(1));
        ConnectionManager::new_with_config(client, config).await
    }

    /// PING, the server's version (streams: 5.0 or later), and the append script loaded.
    async fn check_server(&self, con: &mut ConnectionManager) -> Result<(), Checked> {
        let _: String = ::redis::cmd("PING").query_async(con).await?;
        let info: String = ::redis::cmd("INFO").arg("server").query_async(con).await?;
        let version = info
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .map(str::trim)
            .unwrap_or("unknown");
        let mut numbers = version.split('.').map(|n| n.parse::<u32>().unwrap_or(0));
        let (major, minor) = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
        if (major, minor) < MIN_VERSION {
            return Err(Checked::Unfit(format!(
                "the server is Redis {version}, which has no streams: 5.0 or later is needed"
            )));
        }
        self.append.prepare_invoke().load_async(con).await?;
        Ok(())
    }

    async fn append(&self, msg: &Message<'_>) -> Attempt {
        let Some(con) = self.conn.get() else {
            return Attempt::failed("not connected to Redis yet".to_owned());
        };
        let stream = self.cfg.stream.render(msg.event, msg.event_type);
        if stream.len() > key::MAX_KEY_LEN {
            return Attempt::Rejected {
                error: format!(
                    "the stream key would be {} bytes, longer than the {} allowed: {}",
                    stream.len(),
                    key::MAX_KEY_LEN,
                    crate::sinks::truncate(stream, 64)
                ),
            };
        }
        let id = msg.event.id.as_str();
        let mut invocation = self.append.prepare_invoke();
        invocation
            .key(&stream)
            .key(key::dedup_key(&stream, id))
            .arg(self.cfg.dedup_window.as_millis() as u64)
            .arg(self.cfg.maxlen.unwrap_or(0))
            .arg("id")
            .arg(id)
            .arg("type")
            .arg(msg.event_type)
            .arg("body")
            .arg(msg.body.as_ref());
        for (name, value) in signature::headers(self.keys.as_ref(), id, &msg.body) {
            invocation.arg(name).arg(value);
        }
        let mut con = con.clone();
        let call = invocation.invoke_async::<(i64, String)>(&mut con);
        match tokio::time::timeout(self.cfg.timeout, call).await {
            Ok(Ok((added, entry))) => {
                if added == 0 {
                    tracing::debug!(sink = %self.cfg.name, event = id, stream, entry, "already appended: not added again");
                }
                Attempt::Accepted
            }
            Ok(Err(e)) => self.classify(&e, &stream),
            Err(_) => self.timed_out(),
        }
    }

    /// What an error of the append comes to.
    fn classify(&self, e: &RedisError, stream: &str) -> Attempt {
        if e.is_timeout() {
            return self.timed_out();
        }
        let reply = server_reply(e);
        // Redis 7 passes the script's error on with its code; older ones wrap it in ERR.
        if e.code() == Some("WRONGTYPE") || reply.starts_with("ERR") && reply.contains("WRONGTYPE")
        {
            return Attempt::Rejected {
                error: format!("the key {stream:?} holds something other than a stream: {reply}"),
            };
        }
        match e.kind() {
            ErrorKind::Io => Attempt::failed(format!("Redis connection: {reply}")),
            ErrorKind::Server(ServerErrorKind::BusyLoading) => {
                Attempt::failed(format!("Redis is loading its data: {reply}"))
            }
            // OOM (maxmemory reached; trimming or consumers free memory), BUSY (a script
            // running), TRYAGAIN, MASTERDOWN, READONLY (a failover in progress), NOPERM and
            // NOAUTH (an ACL being fixed): not for good.
            _ => Attempt::failed(format!("Redis refused the append: {reply}")),
        }
    }

    fn timed_out(&self) -> Attempt {
        Attempt::failed(format!(
            "{TIMED_OUT} {} waiting for Redis",
            humantime::format_duration(self.cfg.timeout)
        ))
    }
}

/// Why the start-up check failed: the server could not be asked (worth retrying), or it
/// answered that it will not do.
enum Checked {
    Error(RedisError),
    Unfit(String),
}

impl From<RedisError> for Checked {
    fn from(e: RedisError) -> Self {
        Self::Error(e)
    }
}

/// Errors worth retrying at start: the server is not there yet, or not ready. A TLS
/// handshake that failed (a certificate not trusted, a name that does not match) is not.
fn transient(e: &RedisError) -> bool {
    (e.is_io_error() && !tls_refused(e))
        || e.is_timeout()
        || matches!(
            e.kind(),
            ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::MasterDown
            )
        )
        || e.code() == Some("BUSY")
}

/// Whether the error is rustls refusing the handshake.
fn tls_refused(e: &RedisError) -> bool {
    // The client keeps the I/O error behind an Arc, which is what `source` gives.
    type Shared = Arc<dyn std::error::Error + Send + Sync>;
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<Shared>())
        .and_then(|shared| shared.downcast_ref::<std::io::Error>())
        .and_then(|io| io.get_ref())
        .is_some_and(|inner| inner.is::<rustls::Error>())
}

/// A server's error as it wrote it (`WRONGTYPE Operation against ...`); other errors as
/// the client puts them.
fn server_reply(e: &RedisError) -> String {
    if e.kind() == ErrorKind::AuthenticationFailed {
        // The client keeps the server's words (WRONGPASS ...) to itself.
        return "authentication failed: wrong user name or password".to_owned();
    }
    match (e.code(), e.detail()) {
        (Some(code), Some(detail)) => format!("{code} {detail}"),
        _ => e.to_string(),
    }
}

impl Sink for Redis {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn target(&self) -> String {
        format!(
            "{} stream {}",
            self.cfg.shown_url(),
            self.cfg.stream.as_str()
        )
    }

    /// Connects and checks the server, retrying with backoff for up to `grace`.
    fn start(&self, grace: Duration) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            let name = &self.cfg.name;
            let url = self.cfg.shown_url();
            let client = self
                .client()
                .map_err(|e| anyhow::anyhow!("redis sink {name:?}: {e}"))?;
            let sink = format!("redis sink {name:?}");
            let con = start::within(grace, &sink, "Redis", &url, || async {
                let error = match self.connect(client.clone()).await {
                    Ok(mut con) => match self.check_server(&mut con).await {
                        Ok(()) => return Try::Ready(con),
                        Err(Checked::Unfit(why)) => return Try::Refused(why),
                        Err(Checked::Error(e)) => e,
                    },
                    Err(e) => e,
                };
                let reply = server_reply(&error);
                if transient(&error) {
                    Try::Again(reply)
                } else {
                    Try::Refused(format!("refused: {reply}"))
                }
            })
            .await?;
            let _ = self.conn.set(con);
            tracing::info!(sink = %name, url = %url, stream = %self.cfg.stream.as_str(), "appending to Redis streams");
            Ok(())
        })
    }

    fn send<'a>(&'a self, msg: &'a Message<'a>) -> BoxFuture<'a, Sent> {
        Box::pin(async move { Sent::new(self.append(msg).await) })
    }
}
