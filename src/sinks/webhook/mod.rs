//! The webhook sink: a `[[webhook]]` endpoint's HTTP client, signed POSTs (Standard
//! Webhooks), and what a response means.

pub mod egress;
pub mod signature;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use reqwest::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};

use crate::backoff::retry_after;
use crate::config::WebhookConfig;
use crate::observe::activity::Timeline;
use crate::sinks::endpoint::{Attempt, Endpoint, Message, Sent, Settings, Sink, TIMED_OUT};
use egress::{Denied, GuardedResolver};
use signature::SigningKeys;

/// `user-agent` of every request.
pub const USER_AGENT: &str = concat!("outbox-relay/", env!("CARGO_PKG_VERSION"));
/// How much of a failing response's body goes into error_message.
const ERROR_BODY_EXCERPT: usize = 200;
/// Most of a response body read (and discarded) so the connection can be reused.
const MAX_DRAIN: usize = 64 * 1024;

/// A `[[webhook]]` endpoint's sink: its HTTP client, URL and signing keys.
pub struct Webhook {
    url: reqwest::Url,
    keys: SigningKeys,
    client: reqwest::Client,
    timeout: Duration,
    backoff_max: Duration,
}

/// The endpoint of a `[[webhook]]`: the shared part and this sink.
pub fn endpoint(
    cfg: &WebhookConfig,
    backoff_max: Duration,
    egress: Option<Arc<egress::Policy>>,
    timeline: Arc<Timeline>,
) -> anyhow::Result<Endpoint> {
    let settings = Settings {
        name: &cfg.name,
        types: &cfg.types,
        max_in_flight: cfg.max_in_flight,
        timeout: cfg.timeout,
        breaker: cfg.breaker,
        rate_limit: cfg.rate_limit,
    };
    let sink = Webhook::new(cfg, backoff_max, egress)?;
    Endpoint::new(settings, Box::new(sink), timeline)
}

impl Webhook {
    /// `egress`: the outbound address policy when it is on (`None`: any address).
    pub fn new(
        cfg: &WebhookConfig,
        backoff_max: Duration,
        egress: Option<Arc<egress::Policy>>,
    ) -> anyhow::Result<Self> {
        let mut builder = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout.min(Duration::from_secs(5)))
            .pool_max_idle_per_host(cfg.max_in_flight)
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            // A redirect would re-send a signed body somewhere the operator did not configure.
            .redirect(reqwest::redirect::Policy::none());
        if let Some(policy) = egress {
            // Every name this client connects to is resolved here and screened; literal IPs
            // (which bypass resolvers) were checked when the config was loaded.
            builder = builder.dns_resolver(Arc::new(GuardedResolver::new(policy)));
        }
        Ok(Self {
            url: cfg.url.clone(),
            keys: cfg.keys.get().clone(),
            client: builder.build()?,
            timeout: cfg.timeout,
            backoff_max,
        })
    }

    /// POSTs one signed envelope: the attempt, and the response's status when there was one.
    async fn post(&self, id: &str, body: Bytes) -> Sent {
        let mut request = self
            .client
            .post(self.url.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        for (name, value) in signature::headers(Some(&self.keys), id, &body) {
            request = request.header(name, value);
        }
        let request = request.body(body);
        let mut response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                return Sent::new(Attempt::Failed {
                    error: describe(&e, self.timeout),
                    retry_after: None,
                });
            }
        };
        let status = response.status();
        let retry_after = match status.as_u16() {
            429 | 503 => response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| retry_after(v, SystemTime::now(), self.backoff_max)),
            _ => None,
        };
        let excerpt = read_excerpt(&mut response).await;
        let attempt = if status.is_success() {
            Attempt::Accepted
        } else {
            let mut error = format!("HTTP {}", status.as_u16());
            if !excerpt.is_empty() {
                error.push_str(": ");
                error.push_str(&excerpt);
            }
            Attempt::Failed { error, retry_after }
        };
        Sent {
            attempt,
            status: Some(status.as_u16()),
        }
    }
}

impl Sink for Webhook {
    fn kind(&self) -> &'static str {
        "webhook"
    }

    /// The URL without credentials, query or fragment.
    fn target(&self) -> String {
        let mut u = self.url.clone();
        let _ = u.set_username("");
        let _ = u.set_password(None);
        u.set_query(None);
        u.set_fragment(None);
        u.to_string()
    }

    fn send<'a>(&'a self, msg: &'a Message<'a>) -> BoxFuture<'a, Sent> {
        Box::pin(self.post(&msg.event.id, msg.body.clone()))
    }
}

/// Reads (at most [`MAX_DRAIN`] of) the body so keep-alive can reuse the connection, and
/// returns its start as one printable line for error_message.
async fn read_excerpt(response: &mut reqwest::Response) -> String {
    let mut head = Vec::new();
    let mut read = 0;
    while let Ok(Some(chunk)) = response.chunk().await {
        read += chunk.len();
        if head.len() < ERROR_BODY_EXCERPT {
            head.extend_from_slice(&chunk[..chunk.len().min(ERROR_BODY_EXCERPT - head.len())]);
        }
        if read >= MAX_DRAIN {
            break;
        }
    }
    String::from_utf8_lossy(&head)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// A transport error as one line without the URL (which may carry credentials).
fn describe(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        return format!("{TIMED_OUT} {}", humantime::format_duration(timeout));
    }
    let mut root: &dyn std::error::Error = e;
    while let Some(next) = root.source() {
        // The egress policy's refusal is ours, and says all there is to say.
        if let Some(denied) = next.downcast_ref::<Denied>() {
            return denied.to_string();
        }
        root = next;
    }
    let kind = if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    format!("{kind}: {root}")
}
