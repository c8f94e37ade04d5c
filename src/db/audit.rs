//! The audit log: every operator action, from the dashboard or the CLI, as a row of
//! `<table>_relay_audit` (migration 008), written right after the action succeeds.
//!
//! Not in the action's own transaction: replay, purge and `retry --failed` run in batches
//! of their own transactions, and one rule for all is easier to trust. A row that cannot be
//! written (the table not migrated yet, a privilege missing) does not undo the action: the
//! caller says so to the operator, who learns the action happened unrecorded.

use serde::Serialize;
use tokio_postgres::types::ToSql;

use crate::db::admin::On;
use crate::db::queries::Queries;

/// Appends one action.
pub(crate) const INSERT: &str = "
INSERT INTO {audit} (actor, via, action, target, detail) VALUES ($1, $2, $3, $4, $5)";

/// The newest actions before id `$1` (all when NULL), at most `$2`.
pub(crate) const LIST: &str = "
SELECT id, at, actor, via, action, target, detail, db_role
  FROM {audit}
 WHERE $1::bigint IS NULL OR id < $1
 ORDER BY id DESC
 LIMIT $2";

/// Where an action came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Dashboard,
    Cli,
}

impl Via {
    fn as_str(self) -> &'static str {
        match self {
            Via::Dashboard => "dashboard",
            Via::Cli => "cli",
        }
    }
}

/// What an operator did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pause,
    Resume,
    Retry,
    Skip,
    Replay,
    Purge,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Retry => "retry",
            Action::Skip => "skip",
            Action::Replay => "replay",
            Action::Purge => "purge",
        }
    }
}

impl From<crate::db::admin::IdAction> for Action {
    fn from(a: crate::db::admin::IdAction) -> Self {
        match a {
            crate::db::admin::IdAction::Retry => Action::Retry,
            crate::db::admin::IdAction::Skip => Action::Skip,
        }
    }
}

/// Ids kept in an entry's detail; the count says how many there were.
const IDS_KEPT: usize = 100;

/// The target and detail of an action on events by id: `3 events`, `{count, ids}` (the
/// first [`IDS_KEPT`] ids).
pub fn by_ids(done: &[String]) -> (String, serde_json::Value) {
    let kept: Vec<&String> = done.iter().take(IDS_KEPT).collect();
    (
        format!("{} event(s) by id", done.len()),
        serde_json::json!({ "count": done.len(), "ids": kept }),
    )
}

/// The detail of a replay that put `count` events back: its window as times (the
/// operator gave durations ago) and its type glob.
pub fn replay(r: &crate::db::admin::Replay, count: u64) -> serde_json::Value {
    let now = chrono::Utc::now();
    let at = |ago: std::time::Duration| {
        let t = now - chrono::Duration::from_std(ago).unwrap_or(chrono::Duration::zero());
        t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    };
    serde_json::json!({
        "count": count,
        "since": at(r.since),
        "until": at(r.until),
        "type": r.glob,
    })
}

/// One action to record.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    /// The admin token's name (dashboard), the OS user (CLI).
    pub actor: &'a str,
    pub via: Via,
    pub action: Action,
    /// An endpoint's name, or what the rows were chosen by (`3 ids`, `FAILED of type x.*`).
    pub target: &'a str,
    /// The inputs and the outcome (ids, window, count, the peer's address).
    pub detail: serde_json::Value,
}

/// Records `e`.
pub async fn record(on: On<'_>, q: &Queries, e: &Entry<'_>) -> anyhow::Result<()> {
    let params: [&(dyn ToSql + Sync); 5] = [
        &e.actor,
        &e.via.as_str(),
        &e.action.as_str(),
        &e.target,
        &e.detail,
    ];
    on.query(&q.audit_insert, &params).await?;
    Ok(())
}

/// A recorded action, as the dashboard lists it.
#[derive(Debug, Clone, Serialize)]
pub struct Recorded {
    pub id: i64,
    /// RFC 3339, UTC.
    pub at: String,
    pub actor: String,
    pub via: String,
    pub action: String,
    pub target: String,
    pub detail: serde_json::Value,
    /// The database role that wrote the row.
    pub db_role: String,
}

/// The newest `limit` actions before id `before` (the newest of all when None), newest first.
pub async fn list(
    on: On<'_>,
    q: &Queries,
    before: Option<i64>,
    limit: i64,
) -> anyhow::Result<Vec<Recorded>> {
    let rows = on.query(&q.audit_list, &[&before, &limit]).await?;
    Ok(rows
        .iter()
        .map(|r| Recorded {
            id: r.get(0),
            at: r
                .get::<_, chrono::DateTime<chrono::Utc>>(1)
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            actor: r.get(2),
            via: r.get(3),
            action: r.get(4),
            target: r.get(5),
            detail: r.get(6),
            db_role: r.get(7),
        })
        .collect())
}

/// Why a record failed, for the operator: the usual cause is a table `migrate` has not
/// created yet.
pub fn explain(e: &anyhow::Error) -> String {
    let missing = e
        .chain()
        .filter_map(|c| c.downcast_ref::<tokio_postgres::Error>())
        .any(|pg| pg.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE));
    if missing {
        "the audit table does not exist: run `outbox-relay migrate`".to_owned()
    } else {
        format!("{e:#}")
    }
}
