//! The NATS JetStream sink: publishes each event's envelope to a subject made from the
//! `[[nats]]` template and waits for the stream's ack.
//!
//! Every publish carries `Nats-Msg-Id` = the event id, so a redelivery (a relay killed
//! between the ack and recording it, a retry after a lost ack) is dropped by the server inside
//! the stream's duplicate window instead of stored twice; a duplicate ack counts as accepted.
//! The Standard Webhooks headers (`webhook-id`, `webhook-timestamp` and, with a `secret`,
//! `webhook-signature`) travel as NATS headers, so consumers can verify as receivers do.
//! No ack in time is a failed attempt (retried with backoff); a stream that refuses the
//! message for good (no stream takes the subject, larger than it allows) dead-letters it
//! with the server's reason. "No responders" alone is not for good: a cluster electing the
//! stream's leader answers so for a moment, so the relay asks JetStream whether any stream
//! takes the subject before it dead-letters.

pub mod subject;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, context::PublishErrorKind};
use futures_util::future::BoxFuture;
use tokio::sync::OnceCell;

use crate::config::nats::{NatsAuth, NatsConfig};
use crate::observe::activity::Timeline;
use crate::secret::without_credentials;
use crate::sinks::endpoint::{Attempt, Endpoint, Message, Sent, Settings, Sink, TIMED_OUT};
use crate::sinks::start::{self, Try};
use crate::sinks::webhook::signature::{self, SigningKeys};

/// How long one connection attempt may take at start.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A `[[nats]]` sink.
pub struct Nats {
    cfg: NatsConfig,
    keys: Option<SigningKeys>,
    /// Set once [`Sink::start`] has connected and found the stream.
    jetstream: OnceCell<jetstream::Context>,
}

/// The endpoint of a `[[nats]]`: the shared part and this sink.
pub fn endpoint(cfg: &NatsConfig, timeline: Arc<Timeline>) -> anyhow::Result<Endpoint> {
    let settings = Settings {
        name: &cfg.name,
        types: &cfg.types,
        max_in_flight: cfg.max_in_flight,
        timeout: cfg.timeout,
        breaker: cfg.breaker,
        rate_limit: cfg.rate_limit,
    };
    let sink = Nats {
        keys: cfg.keys.as_ref().map(|k| k.get().clone()),
        cfg: cfg.clone(),
        jetstream: OnceCell::new(),
    };
    Endpoint::new(settings, Box::new(sink), timeline)
}

impl Nats {
    fn servers(&self) -> String {
        self.cfg
            .servers
            .iter()
            .map(|s| without_credentials(s))
            .collect::<Vec<_>>()
            .join(",")
    }

    async fn connect(&self) -> anyhow::Result<async_nats::Client> {
        let mut options = async_nats::ConnectOptions::new()
            .name(crate::db::application_name("nats"))
            .connection_timeout(CONNECT_TIMEOUT)
            .require_tls(self.cfg.tls_required);
        if let Some(ca) = &self.cfg.tls_ca {
            options = options.add_root_certificates(ca.clone());
        }
        options = match &self.cfg.auth {
            NatsAuth::None => options,
            NatsAuth::UserPassword { user, password } => {
                options.user_and_password(user.clone(), password.get().expose().to_owned())
            }
            NatsAuth::Token(t) => options.token(t.get().expose().to_owned()),
            NatsAuth::NKey(seed) => options.nkey(seed.get().expose().to_owned()),
            NatsAuth::Credentials(path) => options.credentials_file(path).await.map_err(|e| {
                anyhow::anyhow!("cannot read the credentials file {}: {e}", path.display())
            })?,
        };
        let servers: Vec<async_nats::ServerAddr> = self
            .cfg
            .servers
            .iter()
            .map(|s| s.parse())
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow::anyhow!("a server URL does not parse: {e}"))?;
        Ok(options.connect(servers).await?)
    }

    /// Finds the stream (or creates it, when asked to).
    async fn check_stream(&self, js: &jetstream::Context) -> anyhow::Result<()> {
        match js.get_stream(&self.cfg.stream).await {
            Ok(_) => Ok(()),
            Err(e) if not_found(&e) && self.cfg.create_stream => {
                let subjects = self.cfg.subject.stream_subject();
                js.create_stream(jetstream::stream::Config {
                    name: self.cfg.stream.clone(),
                    subjects: vec![subjects.clone()],
                    storage: jetstream::stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(|e| anyhow::anyhow!("cannot create stream {:?}: {e}", self.cfg.stream))?;
                tracing::info!(sink = %self.cfg.name, stream = %self.cfg.stream, subjects, "JetStream stream created");
                Ok(())
            }
            Err(e) if not_found(&e) => anyhow::bail!(
                "JetStream stream {:?} does not exist: create it (for the subjects {}) or set \
                 create_stream = true",
                self.cfg.stream,
                self.cfg.subject.stream_subject()
            ),
            Err(e) => anyhow::bail!("cannot look up stream {:?}: {e}", self.cfg.stream),
        }
    }

    async fn publish(&self, msg: &Message<'_>) -> Attempt {
        let Some(js) = self.jetstream.get() else {
            return Attempt::failed("not connected to NATS yet".to_owned());
        };
        let id = msg.event.id.as_str();
        // A header value ends at a line break: the rest would become headers of its own.
        if id.chars().any(char::is_control) {
            return Attempt::Rejected {
                error: "the event id holds a control character, which a NATS header cannot carry"
                    .to_owned(),
            };
        }
        let subject = self.cfg.subject.render(msg.event, msg.event_type);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, id);
        headers.insert("content-type", "application/json");
        for (name, value) in signature::headers(self.keys.as_ref(), id, &msg.body) {
            headers.insert(name, value.as_str());
        }
        let publish = async {
            js.publish_with_headers(subject.clone(), headers, msg.body.clone())
                .await?
                .await
        };
        match tokio::time::timeout(self.cfg.timeout, publish).await {
            Ok(Ok(_ack)) => Attempt::Accepted, // a duplicate too: the stream holds it
            Ok(Err(e)) => match e.kind() {
                PublishErrorKind::StreamNotFound => self.nobody_answered(js, &subject).await,
                PublishErrorKind::MaxPayloadExceeded => Attempt::Rejected {
                    error: e.to_string(),
                },
                PublishErrorKind::Other if refused_for_good(&e) => Attempt::Rejected {
                    error: format!("stream refused the message: {e}"),
                },
                PublishErrorKind::TimedOut => Attempt::failed(format!(
                    "{TIMED_OUT} {} waiting for the JetStream ack",
                    humantime::format_duration(self.cfg.timeout)
                )),
                _ => Attempt::failed(format!("publish failed: {e}")),
            },
            Err(_) => Attempt::failed(format!(
                "{TIMED_OUT} {} waiting for the JetStream ack",
                humantime::format_duration(self.cfg.timeout)
            )),
        }
    }
}

impl Nats {
    /// A publish that nobody answered ("no responders"): for good when no stream takes the
    /// subject; while a cluster elects the stream's leader, only for now.
    async fn nobody_answered(&self, js: &jetstream::Context, subject: &str) -> Attempt {
        use jetstream::context::GetStreamByNameErrorKind as Kind;
        let lookup = tokio::time::timeout(self.cfg.timeout, js.stream_by_subject(subject));
        match lookup.await {
            Ok(Err(e)) if e.kind() == Kind::NotFound => Attempt::Rejected {
                error: format!("no JetStream stream takes the subject {subject:?}"),
            },
            Ok(Ok(stream)) => Attempt::failed(format!(
                "stream {stream:?} takes the subject {subject:?} but did not answer (electing a \
                 leader?)"
            )),
            Ok(Err(e)) => Attempt::failed(format!(
                "no answer for the subject {subject:?}, and no stream lookup: {e}"
            )),
            Err(_) => Attempt::failed(format!(
                "no answer for the subject {subject:?}, nor to the stream lookup in {}",
                humantime::format_duration(self.cfg.timeout)
            )),
        }
    }
}

fn not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(
        e.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(j)
            if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

/// A JetStream error that no retry will change: the message is larger than the stream
/// allows.
fn refused_for_good(e: &jetstream::context::PublishError) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<jetstream::Error>())
        .is_some_and(|j| j.error_code() == jetstream::ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM)
}

impl Sink for Nats {
    fn kind(&self) -> &'static str {
        "nats"
    }

    fn target(&self) -> String {
        format!("{} stream {}", self.servers(), self.cfg.stream)
    }

    /// Connects (retrying with backoff for up to `grace`) and checks the stream.
    fn start(&self, grace: Duration) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            let sink = format!("nats sink {:?}", self.cfg.name);
            let client = start::within(grace, &sink, "NATS", &self.servers(), || async {
                match self.connect().await {
                    Ok(c) => Try::Ready(c),
                    Err(e) => Try::Again(e.to_string()),
                }
            })
            .await?;
            let mut js = jetstream::new(client);
            js.set_timeout(self.cfg.timeout);
            self.check_stream(&js)
                .await
                .map_err(|e| anyhow::anyhow!("nats sink {:?}: {e}", self.cfg.name))?;
            let _ = self.jetstream.set(js);
            tracing::info!(sink = %self.cfg.name, servers = %self.servers(), stream = %self.cfg.stream, subject = %self.cfg.subject.as_str(), "publishing to NATS JetStream");
            Ok(())
        })
    }

    fn send<'a>(&'a self, msg: &'a Message<'a>) -> BoxFuture<'a, Sent> {
        Box::pin(async move { Sent::new(self.publish(msg).await) })
    }
}
