//! Slow, periodic checks that keep the table healthy, off the claim loop's path so that a
//! slow one never delays delivery: dead-lettering rows with a status the relay does not know,
//! and watching for a long-open transaction that holds back vacuum.

use std::time::Duration;

use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;

use crate::db;
use crate::relay::rounds::Rounds;

/// Runs at most this often, however short the poll interval.
const MIN_EVERY: Duration = Duration::from_secs(5);

/// The oldest transaction in this database that holds a snapshot (and so the vacuum
/// horizon), other than this session: its age, pid, state and application_name. Query text
/// is never read: it may hold secrets.
const OLDEST_TRANSACTION: &str = "
SELECT extract(epoch FROM now() - xact_start)::float8, pid, coalesce(state, ''),
       coalesce(application_name, '')
  FROM pg_stat_activity
 WHERE datname = current_database() AND backend_xmin IS NOT NULL
   AND xact_start IS NOT NULL AND pid <> pg_backend_pid()
 ORDER BY xact_start
 LIMIT 1";

/// Until `stop`: every `every` (at least [`MIN_EVERY`]), right after a claim round, one
/// round of checks.
pub async fn run(
    pool: Pool,
    fail_unknown: String,
    every: Duration,
    warn_after: Duration,
    mut rounds: Rounds,
    stop: CancellationToken,
) {
    let mut last = None;
    while rounds.next(every.max(MIN_EVERY), &mut last, &stop).await {
        sweep_unknown(&pool, &fail_unknown).await;
        watch_horizon(&pool, warn_after).await;
    }
}

/// Dead-letters rows whose status the relay does not know.
async fn sweep_unknown(pool: &Pool, sql: &str) {
    match db::query(pool, sql, &[]).await {
        Ok(rows) => {
            for r in rows {
                let id: String = r.get(0);
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
    let rows = match db::query(pool, OLDEST_TRANSACTION, &[]).await {
        Ok(rows) => rows,
        Err(e) => {
            tracing::debug!(error = format!("{e:#}"), "transaction age check skipped");
            return;
        }
    };
    let Some(row) = rows.first() else {
        metrics::gauge!(crate::metrics::OLDEST_TRANSACTION).set(0.0);
        return;
    };
    let age: f64 = row.get::<_, Option<f64>>(0).unwrap_or(0.0).max(0.0);
    metrics::gauge!(crate::metrics::OLDEST_TRANSACTION).set(age);
    if age >= warn_after.as_secs_f64() {
        let (pid, state, app): (i32, String, String) = (row.get(1), row.get(2), row.get(3));
        tracing::warn!(
            pid,
            state = %state,
            application_name = %app,
            open_for = %humantime::format_duration(Duration::from_secs(age as u64)),
            "a transaction has been open for a long time: it holds back vacuum, so dead rows \
             pile up in the outbox table and claims slow down (nothing is lost). End it \
             (SELECT pg_terminate_backend(pid)) or set idle_in_transaction_session_timeout"
        );
    }
}
