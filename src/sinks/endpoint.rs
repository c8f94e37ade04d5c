//! One configured destination, whatever its kind: the part every sink shares. Routing by
//! `types`, the `max_in_flight` limit and its bounded wait queue, pause, cancellation at
//! shutdown, metrics, the dashboard's figures and the attempt log are here; how an event is
//! handed over is the [`Sink`]'s.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::event::Event;
use crate::observe::activity::{EndpointStats, Timeline};
use crate::outcome::AttemptLog;
use crate::sinks::breaker::Breaker;
use crate::sinks::limiter::{self, Limiter, Token};
use crate::sinks::routing::TypeFilter;

/// Deliveries that may wait for one of an endpoint's `max_in_flight` slots, per slot.
/// Waiting rows keep the pipeline full (the next send starts the moment one ends, while the
/// claim and the outcome writes of others proceed); past this the endpoint is saturated and
/// takes no more of the relay's window ([`Attempt::Busy`]).
pub const QUEUE_PER_SLOT: usize = 7;

/// How a timed-out attempt's error begins (the metrics count timeouts apart).
pub const TIMED_OUT: &str = "timed out after";

/// What one try to hand an event to one endpoint came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// The destination took it (a 2xx; a broker's ack).
    Accepted,
    /// It did not, this time: a non-2xx, a refused connection, a timeout, no ack. Counts as a
    /// failed attempt; retried with backoff.
    Failed {
        error: String,
        retry_after: Option<Duration>,
    },
    /// It never will (a broker that refuses the message for good: no stream for its subject,
    /// too large): dead-lettered at once with the reason.
    Rejected { error: String },
    /// The endpoint is saturated (`max_in_flight` busy and [`QUEUE_PER_SLOT`] times as many
    /// queued): not sent, not an attempt. The event is put back briefly so a slow endpoint
    /// cannot hold the relay's whole in-flight window hostage.
    Busy,
    /// Shutdown cut the delivery short: not an attempt.
    Cancelled,
    /// An operator paused the endpoint: not sent, not an attempt; the event is held until
    /// the endpoint is resumed.
    Paused,
}

impl Attempt {
    /// A failed attempt without a Retry-After.
    pub fn failed(error: String) -> Self {
        Self::Failed {
            error,
            retry_after: None,
        }
    }
}

/// What a sink hands over: the event and its envelope (the same bytes for every sink).
pub struct Message<'a> {
    pub event: &'a Event,
    /// The event's type (checked present before any sink sees it).
    pub event_type: &'a str,
    /// The JSON envelope of this attempt.
    pub body: Bytes,
}

/// What one hand-over came to: the attempt and, for HTTP, the response's status.
pub struct Sent {
    pub attempt: Attempt,
    pub status: Option<u16>,
}

impl Sent {
    pub fn new(attempt: Attempt) -> Self {
        Self {
            attempt,
            status: None,
        }
    }
}

/// A kind of destination: only what is specific to it. Retries, backoff, dead letters,
/// pause, ordering, limits, metrics and the dashboard are the same for every sink.
pub trait Sink: Send + Sync {
    /// `webhook`, `nats`, ...: shown in the dashboard and logs.
    fn kind(&self) -> &'static str;

    /// Where it sends, safe to show (no credentials).
    fn target(&self) -> String;

    /// Gets ready before the first event (connects, checks that the destination exists),
    /// trying for up to `grace`; an error stops the relay with one line saying what is
    /// wrong. Nothing to do for a webhook.
    fn start(&self, _grace: Duration) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async { Ok(()) })
    }

    /// Says goodbye to the destination at shutdown, after the last delivery (a broker
    /// connection closed as the protocol asks, so the broker logs no abrupt disconnect).
    /// Bounded by the caller; nothing to do for a webhook.
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    /// Hands one event over and waits until the destination has it for good (a 2xx, a
    /// JetStream ack). Never panics and never returns an error: every way it can go wrong
    /// is an [`Attempt`]. Errors that are timeouts begin with [`TIMED_OUT`].
    fn send<'a>(&'a self, msg: &'a Message<'a>) -> BoxFuture<'a, Sent>;
}

/// An endpoint's settings that do not depend on its kind.
pub struct Settings<'a> {
    pub name: &'a str,
    pub types: &'a [String],
    pub max_in_flight: usize,
    /// How long a delivery may wait for one of the `max_in_flight` slots.
    pub timeout: Duration,
    /// `circuit_breaker` (None: off).
    pub breaker: Option<crate::config::breaker::BreakerConfig>,
    /// `rate_limit` (None: none).
    pub rate_limit: Option<crate::config::rate::RateLimit>,
}

/// A configured destination, shared by every delivery task.
pub struct Endpoint {
    pub name: String,
    filter: TypeFilter,
    sink: Box<dyn Sink>,
    /// `max_in_flight` permits: sends on the wire to this endpoint.
    permits: Arc<Semaphore>,
    /// Deliveries waiting for a permit; bounded by `max_in_flight * QUEUE_PER_SLOT`.
    queued: AtomicUsize,
    max_in_flight: usize,
    timeout: Duration,
    /// Set from the paused-endpoints table (see [`crate::sinks::pause`]): an operator's
    /// pause or an open circuit; set at once when this relay's breaker opens it.
    paused: AtomicBool,
    pub breaker: Breaker,
    /// `rate_limit`'s tokens on this relay (fed by [`crate::sinks::limiter::run`]).
    limiter: Option<Limiter>,
    /// The paused set's row for it, as this relay last read it (for the dashboard).
    pause_row: std::sync::Mutex<Option<crate::db::admin::Paused>>,
    /// This instance's recent attempts, for the dashboard.
    pub stats: EndpointStats,
    /// Its attempts in the metrics.
    attempts: crate::observe::metrics::SinkAttempts,
    timeline: Arc<Timeline>,
}

impl Endpoint {
    pub fn new(
        settings: Settings<'_>,
        sink: Box<dyn Sink>,
        timeline: Arc<Timeline>,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            name: settings.name.to_owned(),
            filter: TypeFilter::new(settings.types)?,
            sink,
            permits: Arc::new(Semaphore::new(settings.max_in_flight)),
            queued: AtomicUsize::new(0),
            max_in_flight: settings.max_in_flight,
            timeout: settings.timeout,
            paused: AtomicBool::new(false),
            breaker: Breaker::new(settings.breaker),
            limiter: settings.rate_limit.map(Limiter::new),
            pause_row: std::sync::Mutex::default(),
            stats: EndpointStats::default(),
            attempts: crate::observe::metrics::SinkAttempts::new(settings.name),
            timeline,
        })
    }

    /// `webhook`, `nats`, ...
    pub fn kind(&self) -> &'static str {
        self.sink.kind()
    }

    /// Where it sends, safe to show.
    pub fn target(&self) -> String {
        self.sink.target()
    }

    /// See [`Sink::start`].
    pub async fn start(&self, grace: Duration) -> anyhow::Result<()> {
        self.sink.start(grace).await
    }

    /// See [`Sink::close`].
    pub async fn close(&self) {
        self.sink.close().await
    }

    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    /// Returns whether it changed.
    pub fn set_paused(&self, paused: bool) -> bool {
        self.paused.swap(paused, Ordering::AcqRel) != paused
    }

    /// Its rate limit on this relay, if it has one.
    pub fn limiter(&self) -> Option<&Limiter> {
        self.limiter.as_ref()
    }

    /// Why it is paused, as the paused set said at the last reload.
    pub fn pause_row(&self) -> Option<crate::db::admin::Paused> {
        self.pause_row.lock().expect("not poisoned").clone()
    }

    pub fn set_pause_row(&self, row: Option<crate::db::admin::Paused>) {
        *self.pause_row.lock().expect("not poisoned") = row;
    }

    /// Sends on the wire to this endpoint now.
    pub fn in_flight(&self) -> usize {
        self.max_in_flight - self.permits.available_permits()
    }

    /// Whether this endpoint subscribes to the event type.
    pub fn wants(&self, event_type: &str) -> bool {
        self.filter.matches(event_type)
    }

    /// Hands `msg` to the sink within this endpoint's limits. A real attempt (the sink was
    /// called) also comes with its [`AttemptLog`].
    pub async fn send(
        &self,
        msg: &Message<'_>,
        cancel: &CancellationToken,
    ) -> (Attempt, Option<AttemptLog>) {
        // Paused (by an operator or its circuit): only the circuit's probe goes out.
        let probing = self.is_paused();
        if probing && !self.breaker.take_probe() {
            return (Attempt::Paused, None);
        }
        let (attempt, log) = self.send_within_limits(msg, cancel).await;
        let status = log.as_ref().and_then(|l| l.status);
        self.breaker
            .observe(&self.name, &attempt, status, probing, || {
                self.set_paused(true)
            });
        (attempt, log)
    }

    /// [`Self::send`] once the endpoint may be sent to: `max_in_flight` and its queue, the
    /// sink, the figures.
    async fn send_within_limits(
        &self,
        msg: &Message<'_>,
        cancel: &CancellationToken,
    ) -> (Attempt, Option<AttemptLog>) {
        let Some(_queued) = QueueSlot::take(&self.queued, self.max_in_flight * QUEUE_PER_SLOT)
        else {
            return (Attempt::Busy, None);
        };
        if let Some(l) = &self.limiter {
            match l.acquire(self.timeout, cancel).await {
                Token::Granted => {}
                Token::TimedOut => return (Attempt::Busy, None),
                Token::Cancelled => return (Attempt::Cancelled, None),
            }
        }
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
        let sent = tokio::select! {
            s = self.sink.send(msg) => s,
            _ = cancel.cancelled() => Sent::new(Attempt::Cancelled),
        };
        drop(permit);
        let took = started.elapsed();
        if let (Some(l), Some(429), Attempt::Failed { retry_after, .. }) =
            (&self.limiter, sent.status, &sent.attempt)
        {
            l.throttle(retry_after.unwrap_or(limiter::DEFAULT_BLOCK));
        }
        let (outcome, error) = match &sent.attempt {
            Attempt::Accepted => (crate::observe::metrics::SUCCESS, None),
            Attempt::Failed { error, .. } if error.starts_with(TIMED_OUT) => {
                (crate::observe::metrics::TIMEOUT, Some(error))
            }
            Attempt::Failed { error, .. } | Attempt::Rejected { error } => {
                (crate::observe::metrics::FAILURE, Some(error))
            }
            Attempt::Busy | Attempt::Cancelled | Attempt::Paused => return (sent.attempt, None),
        };
        self.attempts.record(outcome, took);
        self.stats.record(took, error.map(String::as_str));
        if error.is_some() {
            self.timeline.failed();
        }
        let log = AttemptLog {
            at: at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            endpoint: self.name.clone(),
            ok: error.is_none(),
            status: sent.status,
            error: error.cloned(),
            ms: (took.as_secs_f64() * 1e6).round() / 1e3,
        };
        (sent.attempt, Some(log))
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
