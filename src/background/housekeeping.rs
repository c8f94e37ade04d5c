//! Slow, periodic checks that keep the table healthy, off the claim loop's path so that a
//! slow one never delays delivery: dead-lettering rows with a status the relay does not know,
//! and watching for a long-open transaction that holds back vacuum.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;

use crate::background::Rounds;
use crate::db::maintenance;
use crate::db::queries::Queries;

/// Runs at most this often, however short the poll interval.
const MIN_EVERY: Duration = Duration::from_secs(5);

/// Until `stop`: every `every` (at least [`MIN_EVERY`]), right after a claim round, one
/// round of checks.
pub async fn run(
    pool: Pool,
    q: Arc<Queries>,
    every: Duration,
    warn_after: Duration,
    mut rounds: Rounds,
    stop: CancellationToken,
) {
    let mut last = None;
    while rounds.next(every.max(MIN_EVERY), &mut last, &stop).await {
        sweep_unknown(&pool, &q).await;
        watch_horizon(&pool, warn_after).await;
    }
}

/// Dead-letters rows whose status the relay does not know.
async fn sweep_unknown(pool: &Pool, q: &Queries) {
    match maintenance::fail_unknown(pool, q).await {
        Ok(ids) => {
            for id in ids {
                tracing::warn!(event_id = %id, "row had an unknown status; marked FAILED");
            }
        }
        Err(e) => tracing::debug!(error = format!("{e:#}"), "unknown-status sweep skipped"),
    }
}

/// Reports the oldest open transaction as a gauge, and warns while it is older than
/// `warn_after`: dead rows cannot be vacuumed meanwhile, so the outbox's indexes bloat and
/// claims slow down. Nothing is lost; the operator should end that transaction.
async fn watch_horizon(pool: &Pool, warn_after: Duration) {
    let oldest = match maintenance::oldest_transaction(pool).await {
        Ok(oldest) => oldest,
        Err(e) => {
            tracing::debug!(error = format!("{e:#}"), "transaction age check skipped");
            return;
        }
    };
    let Some(t) = oldest else {
        metrics::gauge!(crate::observe::metrics::OLDEST_TRANSACTION).set(0.0);
        return;
    };
    metrics::gauge!(crate::observe::metrics::OLDEST_TRANSACTION).set(t.age_seconds);
    if t.age_seconds >= warn_after.as_secs_f64() {
        tracing::warn!(
            pid = t.pid,
            state = %t.state,
            application_name = %t.application_name,
            open_for = %humantime::format_duration(Duration::from_secs(t.age_seconds as u64)),
            "a transaction has been open for a long time: it holds back vacuum, so dead rows \
             pile up in the outbox table and claims slow down (nothing is lost). End it \
             (SELECT pg_terminate_backend(pid)) or set idle_in_transaction_session_timeout"
        );
    }
}
