//! Operator actions on the outbox (retry, skip, purge, publish, pause) and the reads behind
//! `status`, the dashboard and the queue gauges, written once: the CLI commands, the
//! dashboard's API and `/metrics` call these, so an action does the same thing whichever
//! way an operator takes it.
//!
//! The statements are rendered per table in [`crate::db::queries`]; this module runs them
//! and turns their rows into typed results. Each function runs on what its caller holds
//! ([`On`]): a command's own connection or the relay's pool. Printing, HTTP answers and
//! logging stay with the callers.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use deadpool_postgres::Pool;
use serde::Serialize;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row};

use crate::db::queries::{glob_to_like, Queries};
use crate::db::statements as st;

/// Rows changed per statement by [`retry_failed`] and [`purge`]: short statements that hold
/// few locks, whatever the backlog.
pub const BATCH: i64 = 1000;

/// The most blocked keys [`blocked_keys`] lists.
pub const BLOCKED_KEYS_SHOWN: i64 = 100;

/// Where a statement runs. A command holds one connection of its own; the dashboard, the
/// gauges and pause share the relay's pool (bounded by [`crate::db::CLIENT_DEADLINE`]).
#[derive(Clone, Copy)]
pub enum On<'a> {
    /// A command's connection: its statements are pooler-safe when the process is (see
    /// [`crate::db::statements`]).
    Client(&'a Client),
    Pool(&'a Pool),
}

impl On<'_> {
    pub(crate) async fn query(
        self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> anyhow::Result<Vec<Row>> {
        match self {
            On::Client(c) => Ok(st::query(c, sql, params).await?),
            On::Pool(p) => super::query(p, sql, params).await,
        }
    }

    async fn query_one(self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> anyhow::Result<Row> {
        let mut rows = self.query(sql, params).await?;
        match rows.len() {
            1 => Ok(rows.remove(0)),
            n => anyhow::bail!("expected one row, got {n}"),
        }
    }
}

/// `NOTIFY channel, payload`: '' wakes every relay on the table (rows became due without an
/// INSERT, which would have notified); see [`crate::sinks::pause`] for the other payload.
pub async fn notify(on: On<'_>, channel: &str, payload: &str) -> anyhow::Result<()> {
    on.query("SELECT pg_notify($1, $2)", &[&channel, &payload])
        .await?;
    Ok(())
}

/// Wakes every relay on the table: after an action made rows due.
pub async fn wake_relays(on: On<'_>, channel: &str) -> anyhow::Result<()> {
    notify(on, channel, "").await
}

/// Rows per status value: the ones the relay knows always (0 when none), unknown values
/// too, NULL as "NULL".
pub async fn status_counts(on: On<'_>, q: &Queries) -> anyhow::Result<BTreeMap<String, i64>> {
    let mut counts: BTreeMap<String, i64> = crate::db::browse::STATUSES
        .iter()
        .map(|s| (s.to_string(), 0))
        .collect();
    for row in on.query(&q.status_counts, &[]).await? {
        counts.insert(row.get(0), row.get(1));
    }
    Ok(counts)
}

/// The oldest PENDING row's age in seconds; None when nothing is PENDING.
pub async fn oldest_pending(on: On<'_>, q: &Queries) -> anyhow::Result<Option<f64>> {
    Ok(on.query_one(&q.oldest_pending, &[]).await?.get(0))
}

/// An entity key whose next event waits for an operator (`retry` or `skip` its head).
#[derive(Debug, Clone, Serialize)]
pub struct BlockedKey {
    pub entity_type: String,
    pub entity_id: String,
    /// The FAILED event holding it up.
    pub event_id: String,
    pub error_message: Option<String>,
    /// Events of the key waiting behind it.
    pub waiting: i64,
}

/// Entity keys held up by a FAILED event, oldest first, at most [`BLOCKED_KEYS_SHOWN`]. Only
/// ordered mode blocks keys: callers without ordered webhooks need not ask.
pub async fn blocked_keys(on: On<'_>, q: &Queries) -> anyhow::Result<Vec<BlockedKey>> {
    let rows = on.query(&q.blocked_keys, &[&BLOCKED_KEYS_SHOWN]).await?;
    Ok(rows
        .iter()
        .map(|r| BlockedKey {
            entity_type: r.get(0),
            entity_id: r.get(1),
            event_id: r.get(2),
            error_message: r.get(3),
            waiting: r.get(4),
        })
        .collect())
}

/// Why an endpoint is in the paused set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PauseReason {
    /// An operator paused it (dashboard or CLI).
    Operator,
    /// Its circuit breaker opened: a probe goes out after the cooldown.
    Circuit,
    /// It failed for longer than its `disable_after`: held until an operator resumes it.
    Disabled,
}

impl PauseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Operator => "operator",
            Self::Circuit => "circuit",
            Self::Disabled => "disabled",
        }
    }
}

/// One row of the paused set.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Paused {
    pub endpoint: String,
    pub reason: PauseReason,
    /// Seconds until the circuit's next probe is due (open circuits only).
    pub probe_in_s: Option<f64>,
    /// Seconds since the endpoint began failing (circuits and disabled endpoints).
    pub failing_for_s: Option<f64>,
    pub last_error: Option<String>,
    /// RFC 3339.
    pub since: String,
    pub by: Option<String>,
}

/// The paused set: endpoints an operator paused and those a circuit breaker holds, by name.
pub async fn paused_endpoints(on: On<'_>, q: &Queries) -> anyhow::Result<Vec<Paused>> {
    let rows = on.query(&q.paused_list, &[]).await?;
    rows.iter()
        .map(|r| {
            let reason = match r.try_get::<_, String>(1)?.as_str() {
                "circuit" => PauseReason::Circuit,
                "disabled" => PauseReason::Disabled,
                _ => PauseReason::Operator,
            };
            Ok(Paused {
                endpoint: r.try_get(0)?,
                reason,
                probe_in_s: r.try_get(2)?,
                failing_for_s: r.try_get(3)?,
                last_error: r.try_get(4)?,
                since: r.try_get(5)?,
                by: r.try_get(6)?,
            })
        })
        .collect()
}

/// The queue as the gauges show it.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Queue {
    pub pending: i64,
    pub processing: i64,
    pub failed: i64,
    /// None when nothing is PENDING.
    pub oldest_pending_age_seconds: Option<f64>,
}

/// The queue in one statement, on the partial indexes (`table`: quoted and qualified).
pub async fn queue(pool: &Pool, table: &str) -> anyhow::Result<Queue> {
    let sql = crate::db::queries::queue_read(table);
    let rows = super::query(pool, &sql, &[]).await?;
    let row = rows.first().context("the queue query returned no row")?;
    Ok(Queue {
        pending: row.get(0),
        processing: row.get(1),
        failed: row.get(2),
        oldest_pending_age_seconds: row.get(3),
    })
}

/// What an operator does to FAILED events by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdAction {
    /// Back to PENDING, count and error reset (the attempts history keeps the errors).
    Retry,
    /// Given up: still FAILED, but no longer holding back its entity key.
    Skip,
}

impl IdAction {
    /// The action's name, as commands and logs spell it.
    pub fn name(self) -> &'static str {
        match self {
            IdAction::Retry => "retry",
            IdAction::Skip => "skip",
        }
    }
}

/// Applies `action` to the FAILED events among `ids`; returns the ids it changed (the others
/// do not exist, are not FAILED, or were skipped already). An id that is not of the table's
/// id type fails the statement (see [`crate::db::browse::is_bad_id`]). Does not wake the
/// relays: the caller does, when anything changed, and decides what a failed wake means.
pub async fn by_ids(
    on: On<'_>,
    q: &Queries,
    action: IdAction,
    ids: &[String],
) -> anyhow::Result<Vec<String>> {
    let sql = match action {
        IdAction::Retry => &q.retry_ids,
        IdAction::Skip => &q.skip_ids,
    };
    let rows = on.query(sql, &[&ids]).await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Every FAILED event whose type matches `glob` (`*`, `?`) back to PENDING, [`BATCH`] rows a
/// statement, waking the relays after each batch so they start on it at once. `progress`
/// hears the running total while more remain. Returns the total.
pub async fn retry_failed(
    client: &Client,
    q: &Queries,
    channel: &str,
    glob: &str,
    mut progress: impl FnMut(u64),
) -> anyhow::Result<u64> {
    let pattern = glob_to_like(glob);
    let pattern = &pattern;
    let batch = || async move {
        let n = st::execute(client, &q.retry_failed, &[pattern, &BATCH]).await?;
        if n > 0 {
            wake_relays(On::Client(client), channel).await?;
        }
        Ok(n)
    };
    super::in_batches(BATCH, batch, |total| {
        progress(total);
        std::future::ready(true)
    })
    .await
}

/// Deletes COMPLETED events processed more than `older_than` ago, [`BATCH`] rows a
/// statement. `progress` hears the running total while more remain. Returns the total.
pub async fn purge(
    client: &Client,
    q: &Queries,
    older_than: Duration,
    mut progress: impl FnMut(u64),
) -> anyhow::Result<u64> {
    let secs = older_than.as_secs_f64();
    let batch = || async move { Ok(st::execute(client, &q.purge, &[&secs, &BATCH]).await?) };
    super::in_batches(BATCH, batch, |total| {
        progress(total);
        std::future::ready(true)
    })
    .await
}

/// Which delivered events [`replay`] sends again to one endpoint.
#[derive(Debug, Clone)]
pub struct Replay {
    /// The endpoint (sink name) to send them to again; they must have been delivered to it.
    pub endpoint: String,
    /// Created at most this long ago...
    pub since: Duration,
    /// ...and at least this long ago (zero: up to now).
    pub until: Duration,
    /// Glob on event_type (`*`, `?`).
    pub glob: String,
    /// Every other sink's name: what the events' delivered_to becomes, so no other sink is
    /// sent them again.
    pub others: Vec<String>,
}

impl Replay {
    /// A replay to `endpoint`, checked: one of `sinks` (every configured sink's name), a
    /// window that is not empty, a valid glob. The error says which.
    pub fn new(
        sinks: &[&str],
        endpoint: &str,
        since: Duration,
        until: Duration,
        glob: &str,
    ) -> Result<Self, String> {
        if !sinks.contains(&endpoint) {
            let known = if sinks.is_empty() {
                "none".to_owned()
            } else {
                sinks.join(", ")
            };
            return Err(format!(
                "no sink named {endpoint:?} in the config (sinks: {known})"
            ));
        }
        if since <= until {
            return Err("since must be further back than until: the window is empty".into());
        }
        globset::Glob::new(glob).map_err(|e| format!("type {glob:?}: {e}"))?;
        Ok(Self {
            endpoint: endpoint.to_owned(),
            since,
            until,
            glob: glob.to_owned(),
            others: sinks
                .iter()
                .filter(|n| **n != endpoint)
                .map(|n| (*n).to_owned())
                .collect(),
        })
    }

    fn params(&self) -> (f64, f64, String) {
        (
            self.since.as_secs_f64(),
            self.until.as_secs_f64(),
            glob_to_like(&self.glob),
        )
    }
}

/// How many events [`replay`] would send again now.
pub async fn replay_count(on: On<'_>, q: &Queries, r: &Replay) -> anyhow::Result<u64> {
    let (since, until, pattern) = r.params();
    let row = on
        .query_one(&q.replay_count, &[&r.endpoint, &since, &until, &pattern])
        .await?;
    Ok(row.get::<_, i64>(0) as u64)
}

/// The events `r` selects back to PENDING for its endpoint alone, [`BATCH`] rows a
/// statement in id order, waking the relays after each batch. `progress` hears the running
/// total while more remain. Returns the total.
pub async fn replay(
    client: &Client,
    q: &Queries,
    channel: &str,
    r: &Replay,
    mut progress: impl FnMut(u64),
) -> anyhow::Result<u64> {
    let (since, until, pattern) = r.params();
    let mut after: Option<String> = None;
    let mut total = 0;
    loop {
        let row = st::query(
            client,
            &q.replay,
            &[
                &r.endpoint,
                &since,
                &until,
                &pattern,
                &r.others,
                &after,
                &BATCH,
            ],
        )
        .await?
        .into_iter()
        .next()
        .context("replay returned no row")?;
        let moved = row.get::<_, i64>(0) as u64;
        after = row.get(1);
        total += moved;
        if moved > 0 {
            wake_relays(On::Client(client), channel).await?;
        }
        // A short batch (the rows are locked once found, so each found row moved): past
        // the last one.
        if after.is_none() || moved < BATCH as u64 {
            return Ok(total);
        }
        progress(total);
    }
}

/// One event to insert.
#[derive(Debug, Clone, Default)]
pub struct NewEvent {
    pub event_type: String,
    pub org_id: Option<String>,
    pub entity_type: Option<String>,
    pub entity_id: Option<String>,
    /// JSON text.
    pub payload: String,
}

/// Inserts one event with an open client (a transaction, as an app publishes); returns its
/// id. When the table's id has no database default, the relay generates a UUID.
pub async fn insert(
    client: &impl tokio_postgres::GenericClient,
    q: &Queries,
    e: &NewEvent,
) -> anyhow::Result<String> {
    serde_json::from_str::<serde_json::Value>(&e.payload).context("--payload is not valid JSON")?;
    let id = uuid::Uuid::new_v4().to_string();
    let fields: [&(dyn ToSql + Sync); 6] = [
        &e.event_type,
        &e.org_id,
        &e.entity_type,
        &e.entity_id,
        &e.payload,
        &id,
    ];
    let params = if q.publish.contains("$6") {
        &fields[..]
    } else {
        &fields[..5]
    };
    Ok(client.query_one(&q.publish, params).await?.get(0))
}

/// Inserts one event in a transaction of its own: its statements stay on one server
/// connection behind a transaction-mode pooler (see [`crate::db::statements`]). Returns its
/// id.
pub async fn publish(client: &mut Client, q: &Queries, e: &NewEvent) -> anyhow::Result<String> {
    let tx = client.transaction().await?;
    let id = insert(&tx, q, e).await?;
    tx.commit().await?;
    Ok(id)
}

/// Records `name` as paused by `by` (an operator's first pause keeps its time; a circuit's
/// pause becomes the operator's); the relays learn of it from [`crate::sinks::pause`].
pub async fn pause_endpoint(on: On<'_>, q: &Queries, name: &str, by: &str) -> anyhow::Result<()> {
    on.query(&q.pause, &[&name, &by]).await?;
    Ok(())
}

/// Removes `name` from the paused set, whatever paused it (an operator, its open circuit, a
/// disable). Its held events stay held until released ([`release_held_batch`]). False if it
/// was not paused.
pub async fn resume_endpoint(on: On<'_>, q: &Queries, name: &str) -> anyhow::Result<bool> {
    Ok(!on.query(&q.resume, &[&name]).await?.is_empty())
}

/// Makes at most `limit` rows held for `endpoint` due again; returns how many.
pub async fn release_held_batch(
    on: On<'_>,
    q: &Queries,
    endpoint: &str,
    limit: i64,
) -> anyhow::Result<u64> {
    Ok(on.query(&q.release_held, &[&limit, &endpoint]).await?.len() as u64)
}

/// Makes at most `limit` rows due again that are held for an endpoint not paused now or not
/// among `configured`; returns how many.
pub async fn release_stale_batch(
    on: On<'_>,
    q: &Queries,
    configured: &[&str],
    limit: i64,
) -> anyhow::Result<u64> {
    Ok(on
        .query(&q.release_stale, &[&limit, &configured])
        .await?
        .len() as u64)
}
