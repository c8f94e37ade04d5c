//! The circuit breaker of one endpoint (`circuit_breaker` in its config section).
//!
//! Each relay counts its own consecutive failed attempts to the endpoint; at `failures` it
//! opens the circuit for every relay on the table: a row of the paused set
//! ([`crate::db::circuit`]), so the endpoint's events are held (PENDING, not counted as
//! attempts, never dead-lettered) as for an operator's pause. After `cooldown`, one relay
//! takes the probe slot (one statement, one winner), claims one held event owed to the
//! endpoint and sends it: the first send to the endpoint on that relay is the probe. Success
//! closes the circuit and releases the held events; failure keeps it open for another
//! cooldown, or disables the endpoint once it has been failing for `disable_after` (then only
//! an operator's resume sends to it again). A 429 is the endpoint alive and busy, not a
//! failure: the breaker neither counts it nor keeps a circuit open for it.
//!
//! Counting on each relay (not in the table) keeps successes free: no statement per
//! delivery. With several relays each sees part of the failures, so the circuit opens after
//! up to `failures` per relay; it opens for all of them at once.
//!
//! The endpoint reports what the table must learn ([`Change`]); [`run`] applies it.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::breaker::BreakerConfig;
use crate::db::admin::{self, On, PauseReason, Paused};
use crate::db::circuit;
use crate::db::queries::Queries;
use crate::sinks::endpoint::Attempt;
use crate::sinks::Dispatcher;

const IDLE: u8 = 0;
/// The probe slot is this relay's: the next send to the endpoint goes out.
const ARMED: u8 = 1;
/// That send is on its way.
const SENDING: u8 = 2;

/// What the table must learn from an endpoint's attempts.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// `failures` in a row on this relay: open the circuit for every relay.
    Open {
        endpoint: String,
        error: String,
        failing_for: Duration,
    },
    /// The probe came back: `error` None if the endpoint took it.
    Probed {
        endpoint: String,
        error: Option<String>,
    },
}

/// Consecutive failures on this relay, and since when.
#[derive(Debug, Default)]
struct Streak {
    failures: u32,
    since: Option<Instant>,
}

/// One endpoint's breaker on this relay.
#[derive(Debug)]
pub struct Breaker {
    config: Option<BreakerConfig>,
    streak: Mutex<Streak>,
    probe: AtomicU8,
    /// When this relay next tries for the probe slot (None: no open circuit known).
    next_probe: Mutex<Option<Instant>>,
    changes: OnceLock<mpsc::UnboundedSender<Change>>,
}

impl Breaker {
    pub fn new(config: Option<BreakerConfig>) -> Self {
        Self {
            config,
            streak: Mutex::default(),
            probe: AtomicU8::new(IDLE),
            next_probe: Mutex::default(),
            changes: OnceLock::new(),
        }
    }

    /// None: the breaker is off for this endpoint.
    pub fn config(&self) -> Option<BreakerConfig> {
        self.config
    }

    /// Where [`Change`]s go (the task running [`run`]); without it they are dropped.
    pub fn report_to(&self, tx: mpsc::UnboundedSender<Change>) {
        let _ = self.changes.set(tx);
    }

    fn report(&self, change: Change) {
        if let Some(tx) = self.changes.get() {
            let _ = tx.send(change);
        }
    }

    /// While paused by its circuit: whether this send may go out as the probe.
    pub fn take_probe(&self) -> bool {
        self.probe
            .compare_exchange(ARMED, SENDING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// This relay won the probe slot: the next send goes out; the slot is due again in
    /// `cooldown` (see [`circuit::PROBE`]).
    pub fn arm(&self, now: Instant) {
        // A probe still on its way (slower than a cooldown) stays the one probe.
        let _ = self
            .probe
            .compare_exchange(IDLE, ARMED, Ordering::AcqRel, Ordering::Acquire);
        self.probe_at(self.config.map(|c| now + c.cooldown));
    }

    /// Whether this relay holds the probe slot and has not sent the probe yet.
    pub fn armed(&self) -> bool {
        self.probe.load(Ordering::Acquire) == ARMED
    }

    /// When this relay should next try for the probe slot (None: no open circuit), as the
    /// probe slot's statement or this relay's own opening said.
    pub fn probe_at(&self, at: Option<Instant>) {
        *self.next_probe.lock().expect("not poisoned") = at;
    }

    /// When this relay should next try for the probe slot.
    pub fn next_probe(&self) -> Option<Instant> {
        *self.next_probe.lock().expect("not poisoned")
    }

    /// The paused set's row for this endpoint (None: not paused), as the last reload read it.
    pub fn sync(&self, row: Option<&Paused>, now: Instant) {
        match row {
            Some(p) if p.reason == PauseReason::Circuit => {
                // A slot this relay holds stays armed; the table says when the next is due.
                let wait = Duration::from_secs_f64(p.probe_in_s.unwrap_or(0.0).max(0.0));
                self.probe_at(Some(now + wait));
            }
            Some(_) => {
                self.probe.store(IDLE, Ordering::Release);
                self.probe_at(None);
            }
            None => {
                self.probe.store(IDLE, Ordering::Release);
                self.probe_at(None);
                *self.streak.lock().expect("not poisoned") = Streak::default();
            }
        }
    }

    /// Takes in the result of a send (`probing`: it went out as the probe). `open_here`
    /// pauses the endpoint on this relay, returning whether it was not paused yet; the breaker
    /// calls it when the failures reach the threshold, and reports the opening only if it
    /// did (so concurrent failures open it once).
    pub fn observe(
        &self,
        endpoint: &str,
        attempt: &Attempt,
        status: Option<u16>,
        probing: bool,
        open_here: impl FnOnce() -> bool,
    ) {
        let error = match attempt {
            Attempt::Busy | Attempt::Cancelled | Attempt::Paused => {
                if probing {
                    // Not sent after all: the next send is the probe.
                    let _ = self.probe.compare_exchange(
                        SENDING,
                        ARMED,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    );
                }
                return;
            }
            // Alive: busy (429, see the module doc) or refusing this one message for good.
            Attempt::Failed { .. } if status == Some(429) => None,
            Attempt::Accepted | Attempt::Rejected { .. } => None,
            Attempt::Failed { error, .. } => Some(error),
        };
        if probing {
            self.probe.store(IDLE, Ordering::Release);
            if error.is_none() {
                *self.streak.lock().expect("not poisoned") = Streak::default();
            }
            self.report(Change::Probed {
                endpoint: endpoint.to_owned(),
                error: error.cloned(),
            });
            return;
        }
        let mut streak = self.streak.lock().expect("not poisoned");
        let Some(error) = error else {
            *streak = Streak::default();
            return;
        };
        streak.failures = streak.failures.saturating_add(1);
        let since = *streak.since.get_or_insert_with(Instant::now);
        let Some(config) = self.config else {
            return;
        };
        if streak.failures >= config.failures && open_here() {
            let failures = streak.failures;
            drop(streak);
            tracing::warn!(
                endpoint,
                failures,
                cooldown = %humantime::format_duration(config.cooldown),
                error = %crate::logging::escape_controls(error),
                "circuit opened: the endpoint keeps failing; its events are held until a probe succeeds"
            );
            self.probe_at(Some(Instant::now() + config.cooldown));
            self.report(Change::Open {
                endpoint: endpoint.to_owned(),
                error: error.clone(),
                failing_for: since.elapsed(),
            });
        }
    }
}

/// Applies the endpoints' [`Change`]s to the table until `stop`: opens circuits, closes them
/// on a successful probe (releasing the held events and waking the relays), keeps them open
/// or disables the endpoint on a failed one. Each change is one or two short statements; a
/// change the database refused is logged and dropped (the breaker opens again, a probe is
/// tried again after the cooldown).
pub async fn run(
    pool: Pool,
    queries: Arc<Queries>,
    channel: String,
    dispatcher: Arc<Dispatcher>,
    mut changes: mpsc::UnboundedReceiver<Change>,
    stop: CancellationToken,
) {
    loop {
        let change = tokio::select! {
            c = changes.recv() => match c { Some(c) => c, None => return },
            _ = stop.cancelled() => return,
        };
        if let Err(e) = apply(&pool, &queries, &channel, &dispatcher, &change).await {
            tracing::warn!(
                error = format!("{e:#}"),
                ?change,
                "circuit breaker: cannot record a change"
            );
        }
    }
}

async fn apply(
    pool: &Pool,
    q: &Queries,
    channel: &str,
    dispatcher: &Dispatcher,
    change: &Change,
) -> anyhow::Result<()> {
    let name = match change {
        Change::Open { endpoint, .. } | Change::Probed { endpoint, .. } => endpoint,
    };
    let Some(endpoint) = dispatcher.endpoint(name) else {
        return Ok(());
    };
    let Some(config) = endpoint.breaker.config() else {
        return Ok(());
    };
    match change {
        Change::Open {
            error, failing_for, ..
        } => {
            if circuit::open(pool, q, name, error, config.cooldown, *failing_for).await? {
                crate::observe::metrics::circuit_opened(name);
                admin::notify(On::Pool(pool), channel, super::pause::ENDPOINTS_CHANGED).await?;
            }
        }
        Change::Probed { error: None, .. } => {
            if circuit::close(pool, q, name).await? {
                tracing::info!(
                    endpoint = name,
                    "circuit closed: the probe was delivered; releasing the held events"
                );
                endpoint.set_paused(false);
                let released = super::pause::unpaused(On::Pool(pool), q, channel, name).await?;
                tracing::info!(endpoint = name, released, "held events released");
            }
        }
        Change::Probed {
            error: Some(error), ..
        } => {
            let disabled =
                circuit::probe_failed(pool, q, name, error, config.cooldown, config.disable_after)
                    .await?;
            if disabled {
                crate::observe::metrics::endpoint_disabled(name);
                tracing::error!(
                    endpoint = name,
                    failing_for_at_least = %humantime::format_duration(config.disable_after.unwrap_or_default()),
                    error = %crate::logging::escape_controls(error),
                    "endpoint disabled: it kept failing; its events are held until an operator resumes it (`outbox-relay resume --endpoint NAME` or the dashboard)"
                );
                admin::notify(On::Pool(pool), channel, super::pause::ENDPOINTS_CHANGED).await?;
            } else {
                tracing::info!(
                    endpoint = name,
                    retry_in = %humantime::format_duration(config.cooldown),
                    error = %crate::logging::escape_controls(error),
                    "circuit stays open: the probe failed"
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: BreakerConfig = BreakerConfig {
        failures: 3,
        cooldown: Duration::from_secs(30),
        disable_after: None,
    };

    fn failed(status: u16) -> (Attempt, Option<u16>) {
        (Attempt::failed(format!("HTTP {status}")), Some(status))
    }

    fn breaker() -> (Breaker, mpsc::UnboundedReceiver<Change>) {
        let b = Breaker::new(Some(CONFIG));
        let (tx, rx) = mpsc::unbounded_channel();
        b.report_to(tx);
        (b, rx)
    }

    #[tokio::test]
    async fn consecutive_failures_open_the_circuit_once() {
        let (b, mut rx) = breaker();
        let paused = std::sync::atomic::AtomicBool::new(false);
        let open = || !paused.swap(true, Ordering::AcqRel);
        let (a, s) = failed(500);
        for _ in 0..2 {
            b.observe("hook", &a, s, false, open);
        }
        assert!(
            rx.try_recv().is_err(),
            "two failures are below the threshold"
        );
        b.observe("hook", &a, s, false, open);
        assert!(matches!(rx.try_recv(), Ok(Change::Open { endpoint, .. }) if endpoint == "hook"));
        // Sends already in flight fail too: the circuit is open already, no second report.
        b.observe("hook", &a, s, false, open);
        assert!(rx.try_recv().is_err());
        assert!(b.next_probe().is_some());
    }

    #[tokio::test]
    async fn a_success_or_a_429_breaks_the_streak() {
        let (b, mut rx) = breaker();
        let (a, s) = failed(503);
        for between in [(Attempt::Accepted, Some(200)), failed(429)] {
            b.observe("hook", &a, s, false, || true);
            b.observe("hook", &a, s, false, || true);
            b.observe("hook", &between.0, between.1, false, || true);
        }
        b.observe("hook", &a, s, false, || true);
        b.observe("hook", &a, s, false, || true);
        assert!(rx.try_recv().is_err(), "never three failures in a row");
        b.observe("hook", &a, s, false, || true);
        assert!(rx.try_recv().is_ok(), "the third in a row opens it");
    }

    #[tokio::test]
    async fn without_a_config_failures_open_nothing() {
        let b = Breaker::new(None);
        let (tx, mut rx) = mpsc::unbounded_channel();
        b.report_to(tx);
        let (a, s) = failed(500);
        for _ in 0..100 {
            b.observe("hook", &a, s, false, || true);
        }
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn one_armed_probe_lets_one_send_through_and_reports_its_result() {
        let (b, mut rx) = breaker();
        assert!(!b.take_probe(), "not armed");
        b.arm(Instant::now());
        assert!(b.take_probe());
        assert!(!b.take_probe(), "one send only");
        // It could not go out (saturated): the next send is the probe.
        b.observe("hook", &Attempt::Busy, None, true, || true);
        assert!(rx.try_recv().is_err());
        assert!(b.take_probe());
        let (a, s) = failed(500);
        b.observe("hook", &a, s, true, || true);
        assert_eq!(
            rx.try_recv().unwrap(),
            Change::Probed {
                endpoint: "hook".into(),
                error: Some("HTTP 500".into())
            }
        );
        assert!(!b.take_probe(), "disarmed after its result");
        b.arm(Instant::now());
        assert!(b.take_probe());
        b.observe("hook", &Attempt::Accepted, Some(200), true, || true);
        assert_eq!(
            rx.try_recv().unwrap(),
            Change::Probed {
                endpoint: "hook".into(),
                error: None
            }
        );
    }

    #[tokio::test]
    async fn the_paused_set_arms_nothing_and_a_closed_circuit_resets_the_streak() {
        let (b, mut rx) = breaker();
        let (a, s) = failed(500);
        b.observe("hook", &a, s, false, || true);
        b.observe("hook", &a, s, false, || true);
        b.sync(None, Instant::now());
        b.observe("hook", &a, s, false, || true);
        assert!(rx.try_recv().is_err(), "the streak started again");
        let row = Paused {
            endpoint: "hook".into(),
            reason: PauseReason::Circuit,
            probe_in_s: Some(5.0),
            failing_for_s: Some(60.0),
            last_error: None,
            since: String::new(),
            by: None,
        };
        let now = Instant::now();
        b.sync(Some(&row), now);
        assert_eq!(b.next_probe(), Some(now + Duration::from_secs(5)));
        assert!(!b.take_probe(), "a reload never arms");
        b.arm(now);
        let operator = Paused {
            reason: PauseReason::Operator,
            ..row
        };
        b.sync(Some(&operator), now);
        assert!(!b.take_probe(), "an operator's pause disarms");
        assert_eq!(b.next_probe(), None);
    }
}
