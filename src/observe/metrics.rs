//! Prometheus metrics (contract section 6), via the `metrics` facade.
//!
//! Counters and histograms are recorded where things happen. The queue gauges come from the
//! database, at most once per [`QUEUE_REFRESH`] however often (and by however many
//! scrapers) `/metrics` is read, and never while nobody scrapes: an idle relay stays idle.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::db::admin::Queue;

pub const CLAIMED: &str = "outbox_events_claimed_total";
pub const COMPLETED: &str = "outbox_events_completed_total";
pub const FAILED: &str = "outbox_events_failed_total";
pub const ATTEMPTS: &str = "outbox_delivery_attempts_total";
pub const DURATION: &str = "outbox_delivery_duration_seconds";
pub const LAG: &str = "outbox_event_lag_seconds";
pub const PENDING: &str = "outbox_pending_events";
pub const OLDEST_PENDING: &str = "outbox_oldest_pending_age_seconds";
pub const DEAD_LETTERS: &str = "outbox_dead_letter_events";
pub const SSE_SUBSCRIBERS: &str = "outbox_sse_subscribers";
pub const RETENTION_DELETED: &str = "outbox_retention_deleted_total";
pub const UP: &str = "outbox_database_up";
pub const OLDEST_TRANSACTION: &str = "outbox_db_oldest_transaction_seconds";
pub const HTTP_REFUSED: &str = "outbox_http_refused_total";
pub const HTTP_CONNECTIONS: &str = "outbox_http_connections";
pub const SSE_SKIPPED: &str = "outbox_sse_skipped_total";
pub const ENDPOINT_PAUSED: &str = "outbox_endpoint_paused";
pub const CIRCUIT_OPENED: &str = "outbox_circuit_opened_total";
pub const ENDPOINT_DISABLED: &str = "outbox_endpoint_disabled_total";

/// The queue gauges are at most this old.
pub const QUEUE_REFRESH: Duration = Duration::from_secs(5);

/// Buckets for delivery durations and lag, in seconds: 1 ms to 1 h.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 900.0, 3600.0,
];

/// The process-wide recorder (the `metrics` facade has one per process).
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let handle = PrometheusBuilder::new()
            .set_buckets(BUCKETS)
            .expect("static buckets are valid")
            .install_recorder()
            .expect("no other metrics recorder is installed");
        describe();
        handle
    })
}

fn describe() {
    describe_counter!(
        CLAIMED,
        "Events claimed for delivery (including re-claims of lapsed leases)."
    );
    describe_counter!(COMPLETED, "Events that reached COMPLETED.");
    describe_counter!(FAILED, "Events dead-lettered (FAILED).");
    describe_counter!(
        ATTEMPTS,
        "Delivery attempts per sink (webhook name, or sse) and outcome."
    );
    describe_histogram!(
        DURATION,
        Unit::Seconds,
        "Duration of one delivery request, per sink."
    );
    describe_histogram!(
        LAG,
        Unit::Seconds,
        "From the event's created_at to its completion."
    );
    describe_gauge!(
        PENDING,
        "Rows in PENDING (refreshed at most every 5 s, on scrape)."
    );
    describe_gauge!(
        OLDEST_PENDING,
        Unit::Seconds,
        "Age of the oldest PENDING row."
    );
    describe_gauge!(DEAD_LETTERS, "Rows in FAILED, waiting for an operator.");
    describe_gauge!(SSE_SUBSCRIBERS, "Connected Server-Sent Events subscribers.");
    describe_counter!(
        HTTP_REFUSED,
        "HTTP clients answered 503 because a limit was reached (limit: connections, sse)."
    );
    describe_gauge!(HTTP_CONNECTIONS, "HTTP connections open now.");
    describe_counter!(
        SSE_SKIPPED,
        "Events the SSE tail read but no stream can carry (reason: event_type_line_break, \
         no_event_type, bad_payload), counted once per relay."
    );
    describe_gauge!(
        ENDPOINT_PAUSED,
        "1 while the sink's events are held, by reason: operator (paused), circuit (its \
         circuit breaker is open), disabled (it failed for longer than disable_after); as \
         this relay last read the shared paused set."
    );
    describe_counter!(
        CIRCUIT_OPENED,
        "Times this relay opened a sink's circuit (for every relay on the table)."
    );
    describe_counter!(
        ENDPOINT_DISABLED,
        "Times this relay disabled a sink that kept failing past disable_after."
    );
    describe_counter!(RETENTION_DELETED, "COMPLETED rows deleted by retention.");
    describe_gauge!(UP, "1 while the last database round trip succeeded.");
    describe_gauge!(
        OLDEST_TRANSACTION,
        Unit::Seconds,
        "Age of the oldest open transaction holding a snapshot in this database (it holds \
         back vacuum of the outbox table)."
    );
}

/// Totals since start, for the once-a-minute summary line.
static TOTALS: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];
const T_CLAIMED: usize = 0;
const T_COMPLETED: usize = 1;
const T_FAILED: usize = 2;
const T_RETRIED: usize = 3;

pub fn claimed(n: u64) {
    counter!(CLAIMED).increment(n);
    TOTALS[T_CLAIMED].fetch_add(n, Ordering::Relaxed);
}

/// An event reached COMPLETED; `lag` from its created_at.
pub fn completed(lag: Duration) {
    counter!(COMPLETED).increment(1);
    metrics::histogram!(LAG).record(lag.as_secs_f64());
    TOTALS[T_COMPLETED].fetch_add(1, Ordering::Relaxed);
}

pub fn dead_lettered() {
    counter!(FAILED).increment(1);
    TOTALS[T_FAILED].fetch_add(1, Ordering::Relaxed);
}

/// A failed attempt that will be retried.
pub fn retried() {
    TOTALS[T_RETRIED].fetch_add(1, Ordering::Relaxed);
}

/// How often histogram samples are folded into their buckets. The recorder keeps every raw
/// sample until then (or until a scrape): without this an unscraped relay's memory grew by
/// about 2 MB a minute at 1,000 events/s.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Until `stop`: folds histogram samples every [`UPKEEP_EVERY`], and logs one line a minute
/// at info with what the last minute did.
pub async fn summarize(stop: tokio_util::sync::CancellationToken) {
    let every = Duration::from_secs(60);
    let mut tick = tokio::time::interval(every);
    tick.reset();
    let mut upkeep = tokio::time::interval(UPKEEP_EVERY);
    let mut prev = [0u64; 4];
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = upkeep.tick() => {
                handle().run_upkeep();
                continue;
            }
            _ = stop.cancelled() => return,
        }
        let now: [u64; 4] = std::array::from_fn(|i| TOTALS[i].load(Ordering::Relaxed));
        let d: [u64; 4] = std::array::from_fn(|i| now[i] - prev[i]);
        prev = now;
        tracing::info!(
            claimed = d[T_CLAIMED],
            completed = d[T_COMPLETED],
            retries_scheduled = d[T_RETRIED],
            dead_lettered = d[T_FAILED],
            per_second = format!("{:.1}", d[T_COMPLETED] as f64 / every.as_secs_f64()),
            "last minute"
        );
    }
}

/// The outcomes of [`SinkAttempts::record`].
pub const SUCCESS: &str = "success";
pub const FAILURE: &str = "failure";
pub const TIMEOUT: &str = "timeout";
pub const OUTCOMES: [&str; 3] = [SUCCESS, FAILURE, TIMEOUT];

/// Shows every counter at 0 from the start (one series per sink and outcome), so that
/// `rate()` and `increase()` see the first event instead of a series appearing mid-window,
/// and dashboards do not show "no data" for a relay that has delivered nothing yet.
pub fn register_zeroes<'a>(sinks: impl IntoIterator<Item = &'a str>) {
    for name in [CLAIMED, COMPLETED, FAILED, RETENTION_DELETED] {
        counter!(name).increment(0);
    }
    for sink in sinks {
        for outcome in OUTCOMES {
            counter!(ATTEMPTS, "sink" => sink.to_owned(), "outcome" => outcome).increment(0);
        }
        for name in [CIRCUIT_OPENED, ENDPOINT_DISABLED] {
            counter!(name, "sink" => sink.to_owned()).increment(0);
        }
        endpoint_paused(sink, None);
    }
}

/// Reasons a sink's events are held, as [`ENDPOINT_PAUSED`] labels them.
pub const PAUSE_REASONS: [&str; 3] = ["operator", "circuit", "disabled"];

/// Sets [`ENDPOINT_PAUSED`] for `sink`: 1 for `reason`, 0 for the others (None: not paused).
pub fn endpoint_paused(sink: &str, reason: Option<&str>) {
    for r in PAUSE_REASONS {
        gauge!(ENDPOINT_PAUSED, "sink" => sink.to_owned(), "reason" => r)
            .set(if Some(r) == reason { 1.0 } else { 0.0 });
    }
}

/// This relay opened `sink`'s circuit.
pub fn circuit_opened(sink: &str) {
    counter!(CIRCUIT_OPENED, "sink" => sink.to_owned()).increment(1);
}

/// This relay disabled `sink`.
pub fn endpoint_disabled(sink: &str) {
    counter!(ENDPOINT_DISABLED, "sink" => sink.to_owned()).increment(1);
}

/// A sink's attempt counters and duration histogram, looked up once per sink: built and
/// looked up on every attempt, their labels were about 2 % of the relay's work per event.
pub struct SinkAttempts {
    /// One counter per outcome, in [`OUTCOMES`]' order.
    outcomes: [metrics::Counter; OUTCOMES.len()],
    duration: metrics::Histogram,
}

impl SinkAttempts {
    pub fn new(sink: &str) -> Self {
        // A handle taken before the recorder is installed would count nothing, for good.
        handle();
        Self {
            outcomes: OUTCOMES
                .map(|o| counter!(ATTEMPTS, "sink" => sink.to_owned(), "outcome" => o)),
            duration: metrics::histogram!(DURATION, "sink" => sink.to_owned()),
        }
    }

    /// One delivery attempt. `outcome`: one of [`OUTCOMES`].
    pub fn record(&self, outcome: &str, took: Duration) {
        if let Some(i) = OUTCOMES.iter().position(|o| *o == outcome) {
            self.outcomes[i].increment(1);
        }
        self.duration.record(took.as_secs_f64());
    }
}

/// Refreshes the queue gauges when they are older than [`QUEUE_REFRESH`]: concurrent
/// scrapes (and dashboards) wait for one query instead of each running their own.
#[derive(Default)]
pub struct QueueGauges(crate::observe::cached::Cached<Queue>);

impl QueueGauges {
    /// Refreshes the gauges unless they are fresh; returns the queue (None: the database
    /// has not answered yet).
    pub async fn refresh(&self, pool: &deadpool_postgres::Pool, table: &str) -> Option<Queue> {
        self.0
            .get(QUEUE_REFRESH, "queue gauges", || async {
                let q = crate::db::admin::queue(pool, table).await?;
                gauge!(PENDING).set(q.pending as f64);
                gauge!(OLDEST_PENDING).set(q.oldest_pending_age_seconds.unwrap_or(0.0));
                gauge!(DEAD_LETTERS).set(q.failed as f64);
                Ok(q)
            })
            .await
    }
}
