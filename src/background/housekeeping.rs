//! Slow, periodic checks that keep the table healthy, off the claim loop's path so that a
//! slow one never delays delivery: dead-lettering rows with a status the relay does not know,
//! and watching for a long-open transaction that holds back vacuum.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;

use crate::db::maintenance::{self, OldTransaction};
use crate::db::queries::Queries;

/// Runs at most this often, however short the poll interval.
const MIN_EVERY: Duration = Duration::from_secs(5);

/// The housekeeping service: every poll interval (at least [`MIN_EVERY`]), one round of
/// checks.
pub struct Housekeeping {
    pub pool: Pool,
    pub queries: Arc<Queries>,
    pub every: Duration,
    /// Warn while the oldest open transaction is older than this.
    pub warn_after: Duration,
}

/// What one round found. A check that could not run is `Err`, logged at debug: the claim
/// loop already reports a database that is down.
#[derive(Debug)]
pub struct Report {
    /// Rows dead-lettered for an unknown status.
    pub unknown: anyhow::Result<Vec<String>>,
    /// The oldest open transaction holding a snapshot.
    pub oldest: anyhow::Result<Option<OldTransaction>>,
}

impl super::Service for Housekeeping {
    type Report = Report;
    const NAME: &'static str = "housekeeping";

    fn period(&self) -> Duration {
        self.every.max(MIN_EVERY)
    }

    async fn run_once(&mut self, _stop: &CancellationToken) -> anyhow::Result<Report> {
        Ok(Report {
            unknown: maintenance::fail_unknown(&self.pool, &self.queries).await,
            oldest: maintenance::oldest_transaction(&self.pool).await,
        })
    }

    fn report(&self, report: &Report) {
        match &report.unknown {
            Ok(ids) => {
                for id in ids {
                    tracing::warn!(event_id = %id, "row had an unknown status; marked FAILED");
                }
            }
            Err(e) => tracing::debug!(error = format!("{e:#}"), "unknown-status sweep skipped"),
        }
        match &report.oldest {
            Ok(oldest) => watch_horizon(oldest.as_ref(), self.warn_after),
            Err(e) => tracing::debug!(error = format!("{e:#}"), "transaction age check skipped"),
        }
    }
}

/// Reports the oldest open transaction as a gauge, and warns while it is older than
/// `warn_after`: dead rows cannot be vacuumed meanwhile, so the outbox's indexes bloat and
/// claims slow down. Nothing is lost; the operator should end that transaction.
fn watch_horizon(oldest: Option<&OldTransaction>, warn_after: Duration) {
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
