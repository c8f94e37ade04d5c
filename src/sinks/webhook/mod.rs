//! One `[[webhook]]` endpoint: its HTTP client, signing keys and concurrency limit.

pub mod egress;
pub mod signature;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use reqwest::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::backoff::retry_after;
use crate::config::WebhookConfig;
use crate::observe::activity::{EndpointStats, Timeline};
use crate::outcome::AttemptLog;
use crate::sinks::routing::TypeFilter;
use egress::{Denied, GuardedResolver};
use signature::SigningKeys;

/// `user-agent` of every request.
pub const USER_AGENT: &str = concat!("outbox-relay/", env!("CARGO_PKG_VERSION"));
/// How much of a failing response's body goes into error_message.
const ERROR_BODY_EXCERPT: usize = 200;
/// Deliveries that may wait for one of an endpoint's `max_in_flight` request slots, per slot.
/// Waiting rows keep the pipeline full (the next request starts the moment one ends, while
/// the claim and the outcome writes of others proceed); past this the endpoint is saturated
/// and takes no more of the relay's window ([`Attempt::Busy`]).
pub const QUEUE_PER_SLOT: usize = 7;

/// Most of a response body read (and discarded) so the connection can be reused.
const MAX_DRAIN: usize = 64 * 1024;

/// What one POST to one endpoint came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// A 2xx.
    Accepted,
    /// A non-2xx, a refused connection, a reset, a timeout, or an address the egress policy
    /// refuses: counts as a failed attempt.
    Failed {
        error: String,
        retry_after: Option<Duration>,
    },
    /// The endpoint is saturated (`max_in_flight` busy and [`QUEUE_PER_SLOT`] times as many
    /// queued): not sent, not an
    /// attempt. The event is put back briefly so a slow endpoint cannot hold the relay's whole
    /// in-flight window hostage.
    Busy,
    /// Shutdown cut the delivery short: not an attempt.
    Cancelled,
    /// An operator paused the endpoint: not sent, not an attempt; the event is held until
    /// the endpoint is resumed.
    Paused,
}

/// A webhook endpoint, shared by every delivery task.
pub struct Endpoint {
    pub name: String,
    url: reqwest::Url,
    filter: TypeFilter,
    keys: SigningKeys,
    client: reqwest::Client,
    /// `max_in_flight` permits: requests on the wire to this endpoint.
    permits: Arc<Semaphore>,
    /// Deliveries waiting for a permit; bounded by `max_in_flight * QUEUE_PER_SLOT`.
    queued: AtomicUsize,
    max_in_flight: usize,
    timeout: Duration,
    backoff_max: Duration,
    /// Set from the paused-endpoints table (see [`crate::sinks::pause`]).
    paused: AtomicBool,
    /// This instance's recent attempts, for the dashboard.
    pub stats: EndpointStats,
    timeline: Arc<Timeline>,
}

impl Endpoint {
    /// `egress`: the outbound address policy when it is on (`None`: any address).
    pub fn new(
        cfg: &WebhookConfig,
        backoff_max: Duration,
        egress: Option<Arc<egress::Policy>>,
        timeline: Arc<Timeline>,
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
        let client = builder.build()?;
        Ok(Self {
            name: cfg.name.clone(),
            url: cfg.url.clone(),
            filter: TypeFilter::new(&cfg.types)?,
            keys: cfg.keys.get().clone(),
            client,
            permits: Arc::new(Semaphore::new(cfg.max_in_flight)),
            queued: AtomicUsize::new(0),
            max_in_flight: cfg.max_in_flight,
            timeout: cfg.timeout,
            backoff_max,
            paused: AtomicBool::new(false),
            stats: EndpointStats::default(),
            timeline,
        })
    }

    /// The URL without credentials, query or fragment: safe to show.
    pub fn display_url(&self) -> String {
        let mut u = self.url.clone();
        let _ = u.set_username("");
        let _ = u.set_password(None);
        u.set_query(None);
        u.set_fragment(None);
        u.to_string()
    }

    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    /// Returns whether it changed.
    pub fn set_paused(&self, paused: bool) -> bool {
        self.paused.swap(paused, Ordering::AcqRel) != paused
    }

    /// Requests on the wire to this endpoint now.
    pub fn in_flight(&self) -> usize {
        self.max_in_flight - self.permits.available_permits()
    }

    /// Whether this endpoint subscribes to the event type.
    pub fn wants(&self, event_type: &str) -> bool {
        self.filter.matches(event_type)
    }

    /// POSTs one signed envelope. Never panics and never returns an error: every way it can
    /// go wrong is an [`Attempt`]. A real attempt (a response, a transport error or a
    /// timeout) also comes with its [`AttemptLog`].
    pub async fn send(
        &self,
        id: &str,
        body: Bytes,
        cancel: &CancellationToken,
    ) -> (Attempt, Option<AttemptLog>) {
        if self.is_paused() {
            return (Attempt::Paused, None);
        }
        let Some(_queued) = QueueSlot::take(&self.queued, self.max_in_flight * QUEUE_PER_SLOT)
        else {
            return (Attempt::Busy, None);
        };
        let permit = tokio::select! {
            p = tokio::time::timeout(self.timeout, self.permits.acquire()) => match p {
                Ok(Ok(p)) => p,
                _ => return (Attempt::Busy, None),
            },
            _ = cancel.cancelled() => return (Attempt::Cancelled, None),
        };
        drop(_queued);
        let at = chrono::Utc::now();
        let started = std::time::Instant::now();
        let (result, status) = tokio::select! {
            r = self.post(id, body) => r,
            _ = cancel.cancelled() => (Attempt::Cancelled, None),
        };
        drop(permit);
        let took = started.elapsed();
        let (outcome, error) = match &result {
            Attempt::Accepted => (crate::observe::metrics::SUCCESS, None),
            Attempt::Failed { error, .. } if error.starts_with(TIMED_OUT) => {
                (crate::observe::metrics::TIMEOUT, Some(error))
            }
            Attempt::Failed { error, .. } => (crate::observe::metrics::FAILURE, Some(error)),
            Attempt::Busy | Attempt::Cancelled | Attempt::Paused => return (result, None),
        };
        crate::observe::metrics::attempt(&self.name, outcome, took);
        self.stats.record(took, error.map(String::as_str));
        if error.is_some() {
            self.timeline.failed();
        }
        let log = AttemptLog {
            at: at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            endpoint: self.name.clone(),
            ok: error.is_none(),
            status,
            error: error.cloned(),
            ms: (took.as_secs_f64() * 1e6).round() / 1e3,
        };
        (result, Some(log))
    }

    /// The attempt, and the response's status when there was one.
    async fn post(&self, id: &str, body: Bytes) -> (Attempt, Option<u16>) {
        let now = SystemTime::now();
        let ts = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let signature = self.keys.sign(id, ts, &body);
        let request = self
            .client
            .post(self.url.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header("webhook-id", id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", signature)
            .body(body);
        let mut response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                let failed = Attempt::Failed {
                    error: describe(&e, self.timeout),
                    retry_after: None,
                };
                return (failed, None);
            }
        };
        let status = response.status();
        let retry_after = match status.as_u16() {
            429 | 503 => response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| retry_after(v, now, self.backoff_max)),
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
        (attempt, Some(status.as_u16()))
    }
}

/// A place in an endpoint's bounded wait queue, given back on drop.
struct QueueSlot<'a>(&'a AtomicUsize);

impl<'a> QueueSlot<'a> {
    fn take(counter: &'a AtomicUsize, limit: usize) -> Option<Self> {
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(counter))
    }
}

impl Drop for QueueSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
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
/// How a timed-out attempt's error begins.
const TIMED_OUT: &str = "timed out after";

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_slots_are_bounded_and_returned() {
        let c = AtomicUsize::new(0);
        let a = QueueSlot::take(&c, 2).unwrap();
        let _b = QueueSlot::take(&c, 2).unwrap();
        assert!(QueueSlot::take(&c, 2).is_none());
        drop(a);
        assert!(QueueSlot::take(&c, 2).is_some());
    }
}
