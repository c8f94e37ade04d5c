//! Retention: COMPLETED rows older than `retention` are deleted by the daemon.
//!
//! Small batches (each its own short statement, locking only the rows it deletes, skipping
//! rows someone else holds) so it never blocks the app or the claim query and never keeps a
//! long transaction open. One instance at a time: a session advisory lock per table, taken
//! with `try`, so the others simply skip the round (behind a transaction-mode pooler, a
//! transaction-scoped lock per batch instead).

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;

use crate::db::maintenance::{purge_batch, retention_lock, RetentionLock};
use crate::db::queries::Queries;

/// Rows per DELETE.
pub const BATCH: i64 = 1000;
/// Pause between batches, so a large backlog of expired rows is deleted without hogging
/// the database (about 50,000 rows a second at most).
const BATCH_PAUSE: Duration = Duration::from_millis(20);

/// How often a relay looks for expired rows: a quarter of the retention, between 1 s and
/// 1 minute.
pub fn interval(retention: Duration) -> Duration {
    (retention / 4).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// The retention service: every [`interval`], deletes expired rows if no other relay is.
pub struct Retention {
    pub pool: Pool,
    pub queries: Arc<Queries>,
    /// COMPLETED rows older than this are deleted.
    pub keep: Duration,
}

/// What one round did.
#[derive(Debug, PartialEq, Eq)]
pub enum Report {
    /// This relay held the lock and deleted this many rows.
    Deleted(u64),
    /// Another relay holds the lock: it does this round.
    Skipped,
}

impl super::Service for Retention {
    type Report = Report;
    const NAME: &'static str = "retention";

    fn period(&self) -> Duration {
        interval(self.keep)
    }

    async fn run_once(&mut self, stop: &CancellationToken) -> anyhow::Result<Report> {
        let client = self.pool.get().await?;
        let q = &self.queries;
        let secs = self.keep.as_secs_f64();
        if crate::db::statements::pooler_safe() {
            return in_transactions(client, q, secs, stop).await;
        }
        if !retention_lock(&client, RetentionLock::TrySession, &q.table).await? {
            return Ok(Report::Skipped);
        }
        let deleted = delete_batches(stop, || purge_batch(&client, q, secs, BATCH)).await;
        let unlocked = retention_lock(&client, RetentionLock::Release, &q.table).await;
        if unlocked.is_err() {
            // A session lock must not go back into the pool: drop the connection, which ends it.
            let _ = deadpool_postgres::Object::take(client);
        }
        Ok(Report::Deleted(deleted?))
    }

    fn report(&self, report: &Report) {
        if let Report::Deleted(n @ 1..) = report {
            tracing::info!(deleted = n, table = %self.queries.table, "retention: deleted COMPLETED rows older than {}", humantime::format_duration(self.keep));
        }
    }
}

/// A round behind a transaction-mode pooler, where a session lock would stay on whichever
/// server connection took it: each batch is a transaction of its own under the
/// transaction-scoped lock (another relay may take a turn between batches; both delete
/// with SKIP LOCKED). Its statements are prepared and closed inside the transaction.
async fn in_transactions(
    client: deadpool_postgres::Object,
    q: &Queries,
    secs: f64,
    stop: &CancellationToken,
) -> anyhow::Result<Report> {
    let client = tokio::sync::Mutex::new(client);
    let held = std::sync::atomic::AtomicBool::new(false);
    let batch = || async {
        let mut client = client.lock().await;
        let tx = client.transaction().await?;
        if !retention_lock(&tx, RetentionLock::TryTransaction, &q.table).await? {
            return Ok(0);
        }
        held.store(true, std::sync::atomic::Ordering::Relaxed);
        let n = purge_batch(&tx, q, secs, BATCH).await?;
        tx.commit().await?;
        Ok(n)
    };
    let deleted = delete_batches(stop, batch).await?;
    // Another relay held the lock from the first batch on: it does this round.
    Ok(if held.into_inner() {
        Report::Deleted(deleted)
    } else {
        Report::Skipped
    })
}

/// Deletes in batches of [`BATCH`] until one comes back short or `stop`, pausing
/// [`BATCH_PAUSE`] between them, and counts the rows in the metrics as it goes.
async fn delete_batches<F>(
    stop: &CancellationToken,
    mut batch: impl FnMut() -> F,
) -> anyhow::Result<u64>
where
    F: std::future::Future<Output = anyhow::Result<u64>>,
{
    let counted = || {
        let next = batch();
        async move {
            let n = next.await?;
            metrics::counter!(crate::observe::metrics::RETENTION_DELETED).increment(n);
            Ok(n)
        }
    };
    crate::db::in_batches(BATCH, counted, |_| async {
        !stop.is_cancelled() && {
            tokio::time::sleep(BATCH_PAUSE).await;
            true
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_is_a_quarter_of_retention_within_bounds() {
        assert_eq!(interval(Duration::from_secs(1)), Duration::from_secs(1));
        assert_eq!(interval(Duration::from_secs(20)), Duration::from_secs(5));
        assert_eq!(
            interval(Duration::from_secs(7 * 86400)),
            Duration::from_secs(60)
        );
    }
}
