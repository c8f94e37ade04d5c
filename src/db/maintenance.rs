//! The statements of the daemon's upkeep: dead-lettering rows of a status the relay does not
//! know, finding the oldest open transaction, and retention's lock and delete batches. Their
//! loops, timing, logging and metrics stay with the callers ([`crate::background::housekeeping`],
//! [`crate::background::retention`]); the SQL lives here, with the rest of it.

use deadpool_postgres::{GenericClient, Pool};
use tokio_postgres::types::ToSql;

use crate::db::queries::Queries;

/// Dead-letters rows whose status the relay does not know (at most 1,000 a call); returns
/// their ids.
pub async fn fail_unknown(pool: &Pool, q: &Queries) -> anyhow::Result<Vec<String>> {
    let rows = super::query(pool, &q.fail_unknown, &[]).await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

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

/// An open transaction that holds back vacuum, for the operator to find and end.
#[derive(Debug, Clone)]
pub struct OldTransaction {
    /// Seconds since it began (never negative).
    pub age_seconds: f64,
    pub pid: i32,
    /// `pg_stat_activity.state` ('' when hidden from this role).
    pub state: String,
    pub application_name: String,
}

/// The oldest open transaction holding a snapshot in this database, if any. Without
/// `pg_read_all_stats`, only the role's own sessions are seen.
pub async fn oldest_transaction(pool: &Pool) -> anyhow::Result<Option<OldTransaction>> {
    let rows = super::query(pool, OLDEST_TRANSACTION, &[]).await?;
    Ok(rows.first().map(|row| OldTransaction {
        age_seconds: row.get::<_, Option<f64>>(0).unwrap_or(0.0).max(0.0),
        pid: row.get(1),
        state: row.get(2),
        application_name: row.get(3),
    }))
}

/// The advisory lock key for a table's retention ($1: the quoted, qualified table), the same
/// in every relay.
pub const RETENTION_LOCK_KEY: &str = "hashtext('outbox_relay.retention.' || $1)";

/// The advisory lock calls retention makes on its key.
#[derive(Debug, Clone, Copy)]
pub enum RetentionLock {
    /// Take the session lock if free (direct connections).
    TrySession,
    /// Let go of the session lock.
    Release,
    /// Take the lock until the transaction ends, if free (behind a transaction-mode pooler,
    /// where a session lock would stay on whichever server connection took it).
    TryTransaction,
}

/// Makes one [`RetentionLock`] call on `table`'s key; true when taken (or released).
pub async fn retention_lock(
    client: &impl GenericClient,
    call: RetentionLock,
    table: &str,
) -> anyhow::Result<bool> {
    let function = match call {
        RetentionLock::TrySession => "pg_try_advisory_lock",
        RetentionLock::Release => "pg_advisory_unlock",
        RetentionLock::TryTransaction => "pg_try_advisory_xact_lock",
    };
    let sql = format!("SELECT {function}({RETENTION_LOCK_KEY})");
    Ok(client.query_one(&sql, &[&table]).await?.get(0))
}

/// Deletes one batch of COMPLETED rows processed more than `secs` ago (at most `limit`);
/// returns how many. The statement stays prepared on a direct connection; in pooler-safe
/// mode ([`crate::db::statements`]) the caller runs it in a transaction, which it does not
/// outlive.
pub async fn purge_batch(
    client: &impl GenericClient,
    q: &Queries,
    secs: f64,
    limit: i64,
) -> anyhow::Result<u64> {
    let params: [&(dyn ToSql + Sync); 2] = [&secs, &limit];
    if super::statements::pooler_safe() {
        return Ok(client.execute(q.purge.as_str(), &params).await?);
    }
    let stmt = client.prepare_cached(&q.purge).await?;
    Ok(client.execute(&stmt, &params).await?)
}
