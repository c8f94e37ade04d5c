//! The RabbitMQ sink: publishes each event's envelope to the `[[rabbitmq]]` exchange with a
//! routing key from its template, persistent and mandatory, and counts it delivered once
//! the broker confirms it (publisher confirms: the queues it was routed to have it, on disk
//! for durable queues, on a quorum of nodes for quorum queues).
//!
//! Every message carries `message_id` = the event id, `type` = the event type,
//! `content_type` = `application/json` and, as headers, the Standard Webhooks fields
//! (`webhook-id`, `webhook-timestamp` and, with a `secret`, `webhook-signature`), so
//! consumers can verify as receivers do. AMQP 0-9-1 has no server-side deduplication: a
//! redelivery (a relay killed between the confirm and recording it, a retry after a confirm
//! that was lost) is a second message with the same `message_id`, which consumers drop.
//!
//! Each publish in flight has a channel of its own (channels are kept and reused, up to
//! `max_in_flight`), so a channel the broker closes over one message fails that message
//! only. One connection carries them all; when it is lost, the next publish reconnects
//! (with backoff between failed tries) and publishes until then fail and are retried.
//!
//! No confirm in time, a negative confirm (a queue at its length limit with
//! `overflow = reject-publish`), a lost connection or a refused permission is a failed
//! attempt (retried with backoff). A message no queue is bound for (returned as
//! `NO_ROUTE`), an exchange that no longer exists, or one larger than the broker's
//! `max_message_size` dead-letters the event with the broker's reason: RabbitMQ would
//! otherwise drop an unroutable message without a trace.

pub mod routing_key;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::tcp::OwnedTLSConfig;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::config::rabbitmq::RabbitMqConfig;
use crate::observe::activity::Timeline;
use crate::sinks::endpoint::{Attempt, Endpoint, Message, Sent, Settings, Sink, TIMED_OUT};
use crate::sinks::start::{self, Try};
use crate::sinks::webhook::signature::{self, SigningKeys};

/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Heartbeat asked for when the URL sets none (RabbitMQ's default is 60 s): a broker that
/// vanished without closing the socket is noticed within two of them.
const HEARTBEAT_SECS: u16 = 10;
/// AMQP's `delivery_mode` for a message written to disk by durable queues.
const PERSISTENT: u8 = 2;
/// The longest short string AMQP carries (message id, type, routing key).
const MAX_SHORT: usize = 255;

/// A `[[rabbitmq]]` sink.
pub struct RabbitMq {
    cfg: RabbitMqConfig,
    keys: Option<SigningKeys>,
    /// The URL with the password from `password` and the defaults filled in.
    uri: AMQPUri,
    tls: OwnedTLSConfig,
    state: tokio::sync::Mutex<State>,
}

/// The connection, or why there is none and when to try again.
struct State {
    link: Option<Arc<Link>>,
    backoff: Backoff,
    not_before: Option<Instant>,
    last_error: String,
}

/// One connection and the channels not in use (each in confirm mode).
struct Link {
    conn: Connection,
    idle: Mutex<Vec<Channel>>,
}

/// The endpoint of a `[[rabbitmq]]`: the shared part and this sink.
pub fn endpoint(cfg: &RabbitMqConfig, timeline: Arc<Timeline>) -> anyhow::Result<Endpoint> {
    let settings = Settings {
        name: &cfg.name,
        types: &cfg.types,
        max_in_flight: cfg.max_in_flight,
        timeout: cfg.timeout,
        breaker: cfg.breaker,
        rate_limit: cfg.rate_limit,
    };
    let mut uri: AMQPUri = cfg
        .url
        .parse()
        .map_err(|e| anyhow::anyhow!("rabbitmq sink {:?}: the URL: {e}", cfg.name))?;
    if let Some(password) = &cfg.password {
        uri.authority.userinfo.password = password.get().expose().to_owned();
    }
    uri.query.heartbeat.get_or_insert(HEARTBEAT_SECS);
    uri.query
        .connection_timeout
        .get_or_insert(CONNECT_TIMEOUT.as_millis() as u64);
    let cert_chain = cfg
        .tls_ca
        .as_ref()
        .map(|path| {
            std::fs::read_to_string(path).map_err(|e| {
                anyhow::anyhow!(
                    "rabbitmq sink {:?}: cannot read the CA file {}: {e}",
                    cfg.name,
                    path.display()
                )
            })
        })
        .transpose()?;
    let sink = RabbitMq {
        keys: cfg.keys.as_ref().map(|k| k.get().clone()),
        cfg: cfg.clone(),
        uri,
        tls: OwnedTLSConfig {
            identity: None,
            cert_chain,
        },
        state: tokio::sync::Mutex::new(State {
            link: None,
            backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(5)),
            not_before: None,
            last_error: "not connected to RabbitMQ yet".to_owned(),
        }),
    };
    Endpoint::new(settings, Box::new(sink), timeline)
}

impl RabbitMq {
    async fn connect(&self) -> Result<Connection, lapin::Error> {
        let props = ConnectionProperties::default()
            .with_connection_name(crate::db::application_name("rabbitmq").into());
        let runtime = lapin::runtime::default_runtime()?;
        let connect =
            Connection::connect_uri_with_config(self.uri.clone(), props, self.tls.clone(), runtime);
        match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(result) => result,
            Err(_) => Err(lapin::Error::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "no connection within {}",
                    humantime::format_duration(CONNECT_TIMEOUT)
                ),
            ))),
        }
    }

    /// Checks that the exchange exists (a passive declare, on a channel of its own: a
    /// missing exchange closes the channel it was asked on).
    async fn check_exchange(&self, conn: &Connection) -> Result<(), lapin::Error> {
        if self.cfg.exchange.is_empty() {
            return Ok(());
        }
        let channel = conn.create_channel().await?;
        let passive = ExchangeDeclareOptions {
            passive: true,
            ..ExchangeDeclareOptions::default()
        };
        channel
            .exchange_declare(
                self.cfg.exchange.as_str().into(),
                lapin::ExchangeKind::Topic, // ignored by a passive declare
                passive,
                FieldTable::default(),
            )
            .await?;
        let _ = channel.close(200, "checked".into()).await;
        Ok(())
    }

    /// The connection, reconnecting when it was lost (not sooner than the backoff after a
    /// failed try allows: until then, the last error).
    async fn link(&self) -> Result<Arc<Link>, String> {
        let mut state = self.state.lock().await;
        if let Some(link) = &state.link {
            if link.conn.status().connected() {
                return Ok(link.clone());
            }
        }
        if state.not_before.is_some_and(|t| Instant::now() < t) {
            return Err(state.last_error.clone());
        }
        match self.connect().await {
            Ok(conn) => {
                if state.link.is_some() {
                    tracing::info!(sink = %self.cfg.name, url = %self.cfg.shown_url(), "reconnected to RabbitMQ");
                }
                state.backoff.succeeded();
                state.not_before = None;
                let link = Arc::new(Link::new(conn));
                state.link = Some(link.clone());
                Ok(link)
            }
            Err(e) => {
                let wait = state.backoff.failed();
                state.not_before = Some(Instant::now() + wait);
                state.last_error = format!("cannot reach RabbitMQ: {}", describe(&e));
                Err(state.last_error.clone())
            }
        }
    }

    async fn publish(&self, msg: &Message<'_>) -> Attempt {
        let routing_key = self.cfg.routing_key.render(msg.event, msg.event_type);
        if routing_key.len() > MAX_SHORT {
            return Attempt::Rejected {
                error: format!(
                    "the routing key would be {} bytes, longer than the {MAX_SHORT} AMQP allows: {}",
                    routing_key.len(),
                    crate::sinks::truncate(routing_key, 64)
                ),
            };
        }
        let id = msg.event.id.as_str();
        if id.len() > MAX_SHORT {
            return Attempt::Rejected {
                error: format!(
                    "the event id is longer than the {MAX_SHORT} bytes of an AMQP message id"
                ),
            };
        }
        let mut headers = FieldTable::default();
        for (name, value) in signature::headers(self.keys.as_ref(), id, &msg.body) {
            headers.insert(name.into(), AMQPValue::LongString(LongString::from(value)));
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(PERSISTENT)
            .with_message_id(id.into())
            .with_timestamp(now)
            .with_app_id("outbox-relay".into())
            .with_headers(headers);
        if msg.event_type.len() <= MAX_SHORT {
            properties = properties.with_type(msg.event_type.into());
        }
        let attempt = async {
            let link = self.link().await.map_err(Attempt::failed)?;
            let channel = link
                .channel()
                .await
                .map_err(|e| Attempt::failed(format!("cannot open a channel: {}", describe(&e))))?;
            let confirmation = async {
                channel
                    .basic_publish(
                        ShortString::from(self.cfg.exchange.as_str()),
                        ShortString::from(routing_key.as_str()),
                        BasicPublishOptions {
                            mandatory: true,
                            immediate: false,
                        },
                        &msg.body,
                        properties,
                    )
                    .await?
                    .await
            }
            .await;
            match confirmation {
                Ok(confirmation) => {
                    link.put_back(channel);
                    Ok(self.confirmed(confirmation, &routing_key))
                }
                // The channel is closed (dropped here) or unusable.
                Err(e) => Err(self.refused(&e)),
            }
        };
        match tokio::time::timeout(self.cfg.timeout, attempt).await {
            Ok(Ok(attempt) | Err(attempt)) => attempt,
            Err(_) => Attempt::failed(format!(
                "{TIMED_OUT} {} waiting for RabbitMQ's confirm",
                humantime::format_duration(self.cfg.timeout)
            )),
        }
    }

    /// What the broker's answer to a publish comes to.
    fn confirmed(&self, confirmation: Confirmation, routing_key: &str) -> Attempt {
        match confirmation {
            Confirmation::Ack(None) => Attempt::Accepted,
            Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)) => {
                Attempt::Rejected {
                    error: format!(
                        "no queue is bound to exchange {:?} for routing key {routing_key:?}: \
                         RabbitMQ returned it ({} {})",
                        self.cfg.exchange, returned.reply_code, returned.reply_text
                    ),
                }
            }
            Confirmation::Nack(None) => Attempt::failed(
                "RabbitMQ did not take the message (a negative confirm: a queue at its \
                 length limit with overflow = reject-publish, or an internal error)"
                    .to_owned(),
            ),
            Confirmation::NotRequested => {
                Attempt::failed("the channel was not in confirm mode".to_owned())
            }
        }
    }

    /// What an error of a publish comes to.
    fn refused(&self, e: &lapin::Error) -> Attempt {
        if let lapin::ErrorKind::ProtocolError(amqp) = e.kind() {
            match amqp.kind() {
                AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND) => {
                    return Attempt::Rejected {
                        error: format!(
                            "exchange {:?} does not exist: {}",
                            self.cfg.exchange,
                            amqp.get_message()
                        ),
                    }
                }
                // RabbitMQ's answer to a message larger than max_message_size.
                AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED) => {
                    return Attempt::Rejected {
                        error: format!("RabbitMQ refused the message: {}", amqp.get_message()),
                    }
                }
                _ => {}
            }
        }
        Attempt::failed(format!("publish failed: {}", describe(e)))
    }
}

impl Link {
    fn new(conn: Connection) -> Self {
        Self {
            conn,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// An idle channel, or a new one in confirm mode.
    async fn channel(&self) -> Result<Channel, lapin::Error> {
        loop {
            let Some(channel) = self.idle.lock().expect("idle channels").pop() else {
                break;
            };
            if channel.status().connected() {
                return Ok(channel);
            }
        }
        let channel = self.conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(channel)
    }

    fn put_back(&self, channel: Channel) {
        if channel.status().connected() {
            self.idle.lock().expect("idle channels").push(channel);
        }
    }
}

/// An error as an operator reads it: the broker's code and words for protocol errors.
fn describe(e: &lapin::Error) -> String {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => amqp.get_message().to_string(),
        lapin::ErrorKind::IOError(io) => io.to_string(),
        _ => e.to_string(),
    }
}

/// Errors worth retrying at start: the broker is not there yet, or not ready. A refused
/// login, a vhost not allowed, a missing exchange or a TLS handshake that failed are not.
fn transient(e: &lapin::Error) -> bool {
    match e.kind() {
        lapin::ErrorKind::IOError(io) => {
            !io.get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>())
                && io.kind() != std::io::ErrorKind::InvalidData
        }
        lapin::ErrorKind::ProtocolError(amqp) => !matches!(
            amqp.kind(),
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED | AMQPSoftError::NOTFOUND)
                | AMQPErrorKind::Hard(lapin::protocol::AMQPHardError::NOTALLOWED)
        ),
        lapin::ErrorKind::InvalidProtocolVersion(_) | lapin::ErrorKind::AuthProviderError(_) => {
            false
        }
        _ => true,
    }
}

impl Sink for RabbitMq {
    fn kind(&self) -> &'static str {
        "rabbitmq"
    }

    fn target(&self) -> String {
        let exchange = if self.cfg.exchange.is_empty() {
            "(default)"
        } else {
            &self.cfg.exchange
        };
        format!("{} exchange {exchange}", self.cfg.shown_url())
    }

    /// Connects and checks the exchange, retrying with backoff for up to `grace`.
    fn start(&self, grace: Duration) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            let url = self.cfg.shown_url();
            let sink = format!("rabbitmq sink {:?}", self.cfg.name);
            let conn = start::within(grace, &sink, "RabbitMQ", &url, || async {
                let conn = match self.connect().await {
                    Ok(conn) => conn,
                    Err(e) if transient(&e) => return Try::Again(describe(&e)),
                    Err(e) => return Try::Refused(format!("refused: {}", describe(&e))),
                };
                match self.check_exchange(&conn).await {
                    Ok(()) => Try::Ready(conn),
                    Err(e) if transient(&e) => Try::Again(describe(&e)),
                    Err(e) => Try::Refused(format!(
                        "exchange {:?}: {}: declare it first, or fix the user's permissions",
                        self.cfg.exchange,
                        describe(&e)
                    )),
                }
            })
            .await?;
            let mut state = self.state.lock().await;
            state.link = Some(Arc::new(Link::new(conn)));
            tracing::info!(sink = %self.cfg.name, url = %url, exchange = %self.cfg.exchange, routing_key = %self.cfg.routing_key.as_str(), "publishing to RabbitMQ");
            Ok(())
        })
    }

    /// `connection.close` (200), so RabbitMQ logs a client that left rather than one that
    /// vanished; a publish after it would reconnect, but the relay makes none.
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let link = self.state.lock().await.link.take();
            if let Some(link) = link {
                if link.conn.status().connected() {
                    let _ = link.conn.close(200, "outbox-relay stopping".into()).await;
                }
            }
        })
    }

    fn send<'a>(&'a self, msg: &'a Message<'a>) -> BoxFuture<'a, Sent> {
        Box::pin(async move { Sent::new(self.publish(msg).await) })
    }
}
