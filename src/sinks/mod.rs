//! Delivery: from a claimed event to an [`Outcome`] the recorder writes back.
//!
//! `Dispatcher::deliver` routes an event to the endpoints that want it and have not accepted
//! it yet, sends to them concurrently, and [`decide`]s what the row becomes. The decision is a
//! pure function so every branch is tested without a network.

pub mod breaker;
pub mod endpoint;
pub mod limiter;
pub mod nats;
pub mod pause;
pub mod rabbitmq;
pub mod redis;
pub mod routing;
pub mod sse;
pub mod start;
pub mod template;
pub mod webhook;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::backoff;
use crate::config::Config;
use crate::event::Claimed;
use crate::observe::activity::Timeline;
use crate::outcome::{Delivery, Outcome};
use endpoint::{Attempt, Endpoint, Message};

/// Longest error_message written to a row (the contract asks for a bounded length).
pub const MAX_ERROR_LEN: usize = 1000;
/// How long the sinks may take to close at shutdown.
pub const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// How soon an event put back because an endpoint was saturated is tried again.
pub const BUSY_DELAY: Duration = Duration::from_millis(250);

/// Retry policy, copied out of the config.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

/// Sends events to the configured webhooks.
pub struct Dispatcher {
    endpoints: Vec<Arc<Endpoint>>,
    policy: RetryPolicy,
}

impl Dispatcher {
    /// `timeline` counts this instance's failed attempts for the dashboard.
    pub fn new(cfg: &Config, timeline: Arc<Timeline>) -> anyhow::Result<Self> {
        // One policy for every endpoint's client; `None` keeps reqwest's own resolver.
        let egress = cfg
            .egress
            .deny_private_addresses
            .then(|| Arc::new(cfg.egress.clone()));
        let endpoints = cfg
            .webhooks
            .iter()
            .map(|w| {
                webhook::endpoint(w, cfg.backoff_max, egress.clone(), timeline.clone())
                    .map(Arc::new)
            })
            .chain(
                cfg.nats
                    .iter()
                    .map(|n| nats::endpoint(n, timeline.clone()).map(Arc::new)),
            )
            .chain(
                cfg.redis
                    .iter()
                    .map(|r| redis::endpoint(r, timeline.clone()).map(Arc::new)),
            )
            .chain(
                cfg.rabbitmq
                    .iter()
                    .map(|r| rabbitmq::endpoint(r, timeline.clone()).map(Arc::new)),
            )
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            endpoints,
            policy: RetryPolicy {
                max_attempts: cfg.max_attempts,
                backoff_initial: cfg.backoff_initial,
                backoff_max: cfg.backoff_max,
            },
        })
    }

    /// Gets every endpoint ready (see [`endpoint::Sink::start`]), side by side.
    pub async fn start(&self, grace: Duration) -> anyhow::Result<()> {
        let starts = self.endpoints.iter().map(|e| e.start(grace));
        for result in futures_util::future::join_all(starts).await {
            result?;
        }
        Ok(())
    }

    /// Closes every endpoint (see [`endpoint::Sink::close`]), side by side, for up to
    /// [`CLOSE_GRACE`]: the process is stopping either way.
    pub async fn close(&self) {
        let closes = futures_util::future::join_all(self.endpoints.iter().map(|e| e.close()));
        if tokio::time::timeout(CLOSE_GRACE, closes).await.is_err() {
            tracing::debug!("a sink did not close within {CLOSE_GRACE:?}");
        }
    }

    pub fn endpoints(&self) -> &[Arc<Endpoint>] {
        &self.endpoints
    }

    /// The soonest any endpoint's circuit wants this relay to try for its probe slot.
    pub fn next_probe(&self) -> Option<tokio::time::Instant> {
        self.endpoints
            .iter()
            .filter(|e| e.breaker.config().is_some())
            .filter_map(|e| e.breaker.next_probe())
            .min()
    }

    /// The endpoint called `name`.
    pub fn endpoint(&self, name: &str) -> Option<&Arc<Endpoint>> {
        self.endpoints.iter().find(|e| e.name == name)
    }

    /// Delivers one event to every endpoint still owed it. `cancel` is the hard shutdown: it
    /// abandons requests in flight, and the event is released untouched.
    pub async fn deliver(&self, ev: &Claimed, cancel: &CancellationToken) -> Delivery {
        let (event_type, data) = match ev.event.validate() {
            Ok(v) => v,
            Err(e) => {
                let outcome = Outcome::Dead {
                    error: e.to_string(),
                    delivered: ev.delivered_to.clone(),
                };
                return Delivery {
                    outcome,
                    log: Vec::new(),
                };
            }
        };
        let targets: Vec<&Arc<Endpoint>> = self
            .endpoints
            .iter()
            .filter(|e| e.wants(event_type) && !ev.delivered_to.contains(&e.name))
            .collect();
        if targets.is_empty() {
            let outcome = Outcome::Completed {
                delivered: ev.delivered_to.clone(),
            };
            return Delivery {
                outcome,
                log: Vec::new(),
            };
        }
        let msg = Message {
            event: &ev.event,
            event_type,
            body: Bytes::from(ev.event.envelope(event_type, &data, Some(ev.attempt()))),
        };
        let sends = targets.iter().map(|e| e.send(&msg, cancel));
        let (attempts, log): (Vec<_>, Vec<_>) = futures_util::future::join_all(sends)
            .await
            .into_iter()
            .unzip();
        let results = targets.iter().map(|e| e.name.as_str()).zip(attempts);
        Delivery {
            outcome: decide(ev, results, &self.policy, rand::random::<f64>()),
            log: log.into_iter().flatten().collect(),
        }
    }
}

/// Folds the per-endpoint attempts into the row's outcome. `jitter` in [0, 1).
pub fn decide<'a>(
    ev: &Claimed,
    results: impl IntoIterator<Item = (&'a str, Attempt)>,
    policy: &RetryPolicy,
    jitter: f64,
) -> Outcome {
    let mut delivered = ev.delivered_to.clone();
    let mut errors = Vec::new();
    // The longest Retry-After, and whether every failing endpoint sent one.
    let mut retry_after: Option<Duration> = None;
    let mut all_said_when = true;
    let (mut busy, mut cancelled, mut rejected) = (false, false, false);
    let mut paused = Vec::new();
    for (name, attempt) in results {
        match attempt {
            Attempt::Accepted => delivered.push(name.to_owned()),
            Attempt::Failed {
                error,
                retry_after: ra,
            } => {
                errors.push(format!("{name}: {error}"));
                all_said_when &= ra.is_some();
                retry_after = retry_after.max(ra);
            }
            Attempt::Rejected { error } => {
                errors.push(format!("{name}: {error}"));
                rejected = true;
            }
            Attempt::Busy => busy = true,
            Attempt::Cancelled => cancelled = true,
            Attempt::Paused => paused.push(name.to_owned()),
        }
    }
    if !errors.is_empty() {
        let error = truncate(errors.join("; "), MAX_ERROR_LEN);
        let failed = u32::try_from(ev.retry_count).unwrap_or(0).saturating_add(1);
        // A destination that refuses the event for good will refuse every retry too.
        if rejected || failed >= policy.max_attempts {
            return Outcome::Dead { error, delivered };
        }
        // The receiver's Retry-After replaces our guess when every failing endpoint sent one
        // (it knows when it will be back); otherwise the backoff applies, at least that long.
        let backoff =
            backoff::retry_delay(failed, policy.backoff_initial, policy.backoff_max, jitter);
        let delay = match retry_after {
            Some(ra) if all_said_when => ra,
            ra => backoff.max(ra.unwrap_or_default()),
        }
        .min(policy.backoff_max);
        return Outcome::Retry {
            delay,
            error,
            delivered,
        };
    }
    if cancelled {
        return Outcome::Release {
            delay: Duration::ZERO,
            delivered,
        };
    }
    if busy {
        return Outcome::Release {
            delay: BUSY_DELAY,
            delivered,
        };
    }
    if !paused.is_empty() {
        return Outcome::Hold { delivered, paused };
    }
    Outcome::Completed { delivered }
}

/// Cuts a message to at most `max` bytes on a character boundary.
pub fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max.saturating_sub(3);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("...");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    const POLICY: RetryPolicy = RetryPolicy {
        max_attempts: 3,
        backoff_initial: Duration::from_secs(1),
        backoff_max: Duration::from_secs(60),
    };
    const POLICY_LONG: RetryPolicy = RetryPolicy {
        max_attempts: 20,
        ..POLICY
    };

    fn ev(retry_count: i32, delivered: &[&str]) -> Claimed {
        Claimed {
            event: crate::event::Event {
                id: "e".into(),
                event_type: Some("T".into()),
                payload: Some("{}".into()),
                ..Default::default()
            },
            retry_count,
            delivered_to: delivered.iter().map(|s| s.to_string()).collect(),
            token: Uuid::nil(),
        }
    }

    fn failed(e: &str) -> Attempt {
        Attempt::Failed {
            error: e.into(),
            retry_after: None,
        }
    }

    #[test]
    fn all_accepted_completes_with_every_name() {
        let o = decide(&ev(0, &["a"]), [("b", Attempt::Accepted)], &POLICY, 0.5);
        assert_eq!(
            o,
            Outcome::Completed {
                delivered: vec!["a".into(), "b".into()]
            }
        );
    }

    #[test]
    fn partial_failure_retries_and_remembers_who_accepted() {
        let o = decide(
            &ev(0, &[]),
            [("a", Attempt::Accepted), ("b", failed("HTTP 500"))],
            &POLICY,
            1.0,
        );
        assert_eq!(
            o,
            Outcome::Retry {
                delay: Duration::from_secs(1),
                error: "b: HTTP 500".into(),
                delivered: vec!["a".into()]
            }
        );
    }

    #[test]
    fn last_attempt_dead_letters() {
        let o = decide(
            &ev(2, &[]),
            [("a", failed("timed out after 10s"))],
            &POLICY,
            0.0,
        );
        assert_eq!(
            o,
            Outcome::Dead {
                error: "a: timed out after 10s".into(),
                delivered: vec![]
            }
        );
    }

    #[test]
    fn retry_after_wins_over_shorter_backoff_but_is_capped() {
        let ra = |s| Attempt::Failed {
            error: "HTTP 429".into(),
            retry_after: Some(Duration::from_secs(s)),
        };
        match decide(&ev(0, &[]), [("a", ra(30))], &POLICY, 0.0) {
            Outcome::Retry { delay, .. } => assert_eq!(delay, Duration::from_secs(30)),
            o => panic!("{o:?}"),
        }
        match decide(&ev(0, &[]), [("a", ra(3600))], &POLICY, 0.0) {
            Outcome::Retry { delay, .. } => assert_eq!(delay, Duration::from_secs(60)),
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn retry_after_shortens_a_long_backoff_unless_another_endpoint_failed_without_one() {
        let ra = Attempt::Failed {
            error: "HTTP 503".into(),
            retry_after: Some(Duration::from_secs(1)),
        };
        let plain = Attempt::Failed {
            error: "HTTP 500".into(),
            retry_after: None,
        };
        // The 9th failure: backoff alone would be capped at 60 s.
        match decide(&ev(8, &[]), [("a", ra.clone())], &POLICY_LONG, 0.0) {
            Outcome::Retry { delay, .. } => assert_eq!(delay, Duration::from_secs(1)),
            o => panic!("{o:?}"),
        }
        match decide(&ev(8, &[]), [("a", ra), ("b", plain)], &POLICY_LONG, 0.0) {
            Outcome::Retry { delay, .. } => assert!(delay >= Duration::from_secs(30), "{delay:?}"),
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn busy_and_cancelled_are_not_attempts() {
        let o = decide(
            &ev(2, &[]),
            [("a", Attempt::Accepted), ("b", Attempt::Busy)],
            &POLICY,
            0.0,
        );
        assert_eq!(
            o,
            Outcome::Release {
                delay: BUSY_DELAY,
                delivered: vec!["a".into()]
            }
        );
        let o = decide(&ev(2, &[]), [("a", Attempt::Cancelled)], &POLICY, 0.0);
        assert_eq!(
            o,
            Outcome::Release {
                delay: Duration::ZERO,
                delivered: vec![]
            }
        );
    }

    #[test]
    fn a_paused_endpoint_holds_the_event_after_the_others_accept() {
        let o = decide(
            &ev(0, &[]),
            [("a", Attempt::Accepted), ("b", Attempt::Paused)],
            &POLICY,
            0.0,
        );
        assert_eq!(
            o,
            Outcome::Hold {
                delivered: vec!["a".into()],
                paused: vec!["b".into()],
            }
        );
        // A failure elsewhere is still an attempt, retried as usual.
        let o = decide(
            &ev(0, &[]),
            [("a", failed("HTTP 500")), ("b", Attempt::Paused)],
            &POLICY,
            1.0,
        );
        assert!(matches!(o, Outcome::Retry { .. }), "{o:?}");
    }

    #[test]
    fn errors_are_bounded() {
        let long = "é".repeat(2000);
        let o = decide(&ev(0, &[]), [("a", failed(&long))], &POLICY, 0.0);
        let Outcome::Retry { error, .. } = o else {
            panic!()
        };
        assert!(error.len() <= MAX_ERROR_LEN && error.ends_with("..."));
    }

    #[test]
    fn a_rejection_dead_letters_at_once_keeping_what_others_accepted() {
        let rejected = Attempt::Rejected {
            error: "no stream for subject".into(),
        };
        let o = decide(
            &ev(0, &[]),
            [("a", Attempt::Accepted), ("b", rejected)],
            &POLICY_LONG,
            0.5,
        );
        assert_eq!(
            o,
            Outcome::Dead {
                error: "b: no stream for subject".into(),
                delivered: vec!["a".into()],
            }
        );
    }
}
