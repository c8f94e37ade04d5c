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

use crate::background::Rounds;
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

/// Runs until `stop`: every [`interval`], right after a claim round, deletes expired rows if
/// no other relay is.
pub async fn run(
    pool: Pool,
    q: Arc<Queries>,
    retention: Duration,
    mut rounds: Rounds,
    stop: CancellationToken,
) {
    let mut last = None;
    while rounds.next(interval(retention), &mut last, &stop).await {
        match purge_round(&pool, &q, retention, &stop).await {
            Ok(Some(n)) if n > 0 => {
                tracing::info!(deleted = n, table = %q.table, "retention: deleted COMPLETED rows older than {}", humantime::format_duration(retention))
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(
                error = format!("{e:#}"),
                "retention round failed; will try again"
            ),
        }
    }
}

/// One round. Some(deleted) when this relay held the lock, None when another did.
async fn purge_round(
    pool: &Pool,
    q: &Queries,
    retention: Duration,
    stop: &CancellationToken,
) -> anyhow::Result<Option<u64>> {
    let client = pool.get().await?;
    if crate::db::statements::pooler_safe() {
        return in_transactions(client, q, retention.as_secs_f64(), stop).await;
    }
    if !retention_lock(&client, RetentionLock::TrySession, &q.table).await? {
        return Ok(None);
    }
    let deleted = delete_expired(&client, q, retention, stop).await;
    let unlocked = retention_lock(&client, RetentionLock::Release, &q.table).await;
    if unlocked.is_err() {
        // A session lock must not go back into the pool: drop the connection, which ends it.
        let _ = deadpool_postgres::Object::take(client);
    }
    Ok(Some(deleted?))
}

/// [`purge_round`] behind a transaction-mode pooler, where a session lock would stay on
/// whichever server connection took it: each batch is a transaction of its own under the
/// transaction-scoped lock (another relay may take a turn between batches; both delete
/// with SKIP LOCKED). Its statements are prepared and closed inside the transaction.
async fn in_transactions(
    mut client: deadpool_postgres::Object,
    q: &Queries,
    secs: f64,
    stop: &CancellationToken,
) -> anyhow::Result<Option<u64>> {
    let mut total = 0;
    loop {
        let tx = client.transaction().await?;
        if !retention_lock(&tx, RetentionLock::TryTransaction, &q.table).await? {
            return Ok((total > 0).then_some(total));
        }
        let n = purge_batch(&tx, q, secs, BATCH).await?;
        tx.commit().await?;
        total += n;
        metrics::counter!(crate::observe::metrics::RETENTION_DELETED).increment(n);
        if n < BATCH as u64 || stop.is_cancelled() {
            return Ok(Some(total));
        }
        tokio::time::sleep(BATCH_PAUSE).await;
    }
}

async fn delete_expired(
    client: &deadpool_postgres::Client,
    q: &Queries,
    retention: Duration,
    stop: &CancellationToken,
) -> anyhow::Result<u64> {
    let secs = retention.as_secs_f64();
    let mut total = 0;
    loop {
        let n = purge_batch(client, q, secs, BATCH).await?;
        total += n;
        metrics::counter!(crate::observe::metrics::RETENTION_DELETED).increment(n);
        if n < BATCH as u64 || stop.is_cancelled() {
            return Ok(total);
        }
        tokio::time::sleep(BATCH_PAUSE).await;
    }
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
