//! The outbox row as Rust sees it, for the statements that move events: claim, record,
//! lease extension, next due, the sweep below the claim cursor, and the reads that build an
//! envelope from a row (the dashboard's event, the SSE read).
//!
//! The SQL says where each parameter and column goes ([`crate::db::queries`]); this module is
//! the only Rust that knows it. Callers pass and get typed values, so a column added to a
//! statement changes the statement and one decoder here, not every file that reads a row.

use std::time::Duration;

use anyhow::Context;
use deadpool_postgres::Pool;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::db::queries::Queries;
use crate::db::statements;
use crate::event::{Claimed, Event};
use crate::sinks::sse::cursor::Snapshot;

/// The columns the claim and the dashboard's event read start with (`e`: the outbox row),
/// read by [`event`]. One list, so the envelope the dashboard shows is built from the same
/// columns, by the same code, as the one a receiver gets. The claim also reads the status;
/// the SSE read carries fewer columns ([`stream_read`]), read by the same code.
pub const EVENT_COLUMNS: &str = "e.id::text, e.status::text, e.event_type, e.org_id, \
e.entity_type, e.entity_id, e.payload::text, e.retry_count, \
(extract(epoch FROM e.created_at) * 1000000)::int8, e.delivered_to";

/// How many columns [`EVENT_COLUMNS`] is: where a statement's own columns begin.
pub const EVENT_WIDTH: usize = 10;

/// Reads [`EVENT_COLUMNS`] from the start of a row: the event, and how far delivery got
/// (failed attempts, the endpoints that accepted it).
pub fn event(row: &Row) -> Result<(Event, i32, Vec<String>), tokio_postgres::Error> {
    Ok((envelope(row, 0, 2, 8)?, row.try_get(7)?, row.try_get(9)?))
}

/// The columns an envelope is built from, wherever a statement put them: the id at `id`,
/// event_type, org_id, entity_type, entity_id and payload from `fields` on, created_us at
/// `created`.
fn envelope(
    row: &Row,
    id: usize,
    fields: usize,
    created: usize,
) -> Result<Event, tokio_postgres::Error> {
    Ok(Event {
        id: row.try_get(id)?,
        event_type: row.try_get(fields)?,
        org_id: row.try_get(fields + 1)?,
        entity_type: row.try_get(fields + 2)?,
        entity_id: row.try_get(fields + 3)?,
        payload: row.try_get(fields + 4)?,
        created_us: row.try_get::<_, Option<i64>>(created)?.unwrap_or_default(),
    })
}

/// Where a claim looks for work: the relay's cursor (see [`crate::relay::cursor`]).
#[derive(Debug, Clone, PartialEq)]
pub struct LookFrom {
    /// Transactions at or below `after` whose fresh rows are still to be looked at.
    pub probe: Vec<u64>,
    /// `(stream_xid, stream_seq)`: every fresh row above it is still to be looked at.
    pub after: (u64, i64),
    /// Leases that lapsed at or before this database clock (epoch seconds) were all seen
    /// (None: look from the start).
    pub lease_floor: Option<f64>,
}

/// What one claim asks for.
#[derive(Debug, Clone)]
pub struct Claim {
    /// Most rows of each kind (fresh, due, lapsed).
    pub limit: usize,
    pub lease: Duration,
    /// A lapse that uses up the last attempt dead-letters the row instead of claiming it.
    pub max_attempts: u32,
    /// The fencing token left on every row claimed: the record and lease extension match it.
    pub token: Uuid,
    /// Whether a suspect may come along (false while one is aboard).
    pub suspects_wanted: bool,
    pub from: LookFrom,
}

/// What one claim statement saw, for the cursor to move past.
#[derive(Debug, Clone, PartialEq)]
pub struct Look {
    /// The statement's snapshot.
    pub snapshot: Snapshot,
    /// The database clock (epoch seconds).
    pub at: f64,
    /// Fresh candidates looked at (at most the claim's limit).
    pub candidates: usize,
    /// The last candidate's position.
    pub last: Option<(u64, i64)>,
    /// Transactions with candidates the claim did not take.
    pub unclaimed: Vec<u64>,
    /// Lapsed leases claimed.
    pub lapsed: usize,
    /// Suspects claimed (at most one; more may have lapsed).
    pub suspects: usize,
}

/// One row a claim updated.
#[derive(Debug)]
pub struct ClaimedRow {
    pub id: String,
    /// Its lease lapsed with its last attempt: the claim made it FAILED, there is nothing to
    /// deliver.
    pub dead_lettered: bool,
    /// Its lease lapsed twice in a row: it may be what crashes relays.
    pub suspect: bool,
    /// The event with this claim's token, or why the row cannot be read (it then comes back
    /// when its lease lapses).
    pub event: Result<Claimed, tokio_postgres::Error>,
}

/// A claim's result: what it looked at, and the rows it took (none, often).
#[derive(Debug)]
pub struct ClaimResult {
    pub look: Look,
    pub rows: Vec<ClaimedRow>,
}

/// Claims a batch in one statement (see the claim query in [`crate::db::queries`]).
pub async fn claim(pool: &Pool, q: &Queries, c: &Claim) -> anyhow::Result<ClaimResult> {
    let rows = crate::db::query(
        pool,
        &q.claim,
        &[
            &(c.limit as i64),
            &c.lease.as_secs_f64(),
            &(c.max_attempts as i32),
            &c.token,
            &(c.suspects_wanted as i64),
            &xid_list(&c.from.probe),
            &c.from.after.0.to_string(),
            &c.from.after.1,
            &c.from.lease_floor,
        ],
    )
    .await
    .context("claiming events")?;
    let look = rows
        .first()
        .map(look)
        .transpose()?
        .context("the claim returned no row")?;
    let mut claimed = Vec::with_capacity(rows.len());
    for row in &rows {
        let Some(id) = row.try_get::<_, Option<String>>(0)? else {
            continue; // nothing claimed: the row only says what the claim looked at
        };
        claimed.push(ClaimedRow {
            id,
            dead_lettered: row.try_get::<_, String>(1)? == "FAILED",
            suspect: row.try_get(11)?,
            event: event(row).map(|(event, retry_count, delivered_to)| Claimed {
                event,
                retry_count,
                delivered_to,
                token: c.token,
            }),
        });
    }
    Ok(ClaimResult {
        look,
        rows: claimed,
    })
}

/// Transaction ids as an array literal, which the statement casts to `xid8[]` (a Rust
/// integer has no `xid8` to bind to).
fn xid_list(xids: &[u64]) -> String {
    let list: Vec<String> = xids.iter().map(u64::to_string).collect();
    format!("{{{}}}", list.join(","))
}

/// A transaction id as the statements return it (`xid8` as text).
fn xid(text: &str) -> anyhow::Result<u64> {
    text.parse()
        .with_context(|| format!("transaction id {text:?}"))
}

/// A list of transaction ids ([`xid`]).
fn xids(texts: Vec<String>) -> anyhow::Result<Vec<u64>> {
    texts.iter().map(|x| xid(x)).collect()
}

/// The claim's last columns, the same on every row it returns.
fn look(row: &Row) -> anyhow::Result<Look> {
    let snapshot: String = row.try_get(12)?;
    let last_xid: Option<String> = row.try_get(15)?;
    let last_seq: Option<i64> = row.try_get(16)?;
    Ok(Look {
        snapshot: Snapshot::parse(&snapshot).with_context(|| format!("snapshot {snapshot:?}"))?,
        at: row.try_get(13)?,
        candidates: row.try_get::<_, i64>(14)? as usize,
        last: match (last_xid, last_seq) {
            (Some(x), Some(s)) => Some((xid(&x)?, s)),
            _ => None,
        },
        unclaimed: xids(row.try_get(17)?)?,
        lapsed: row.try_get::<_, i64>(18)? as usize,
        suspects: row.try_get::<_, i64>(19)? as usize,
    })
}

/// When a row is next looked at, after an outcome.
#[derive(Debug, Clone, Copy)]
pub enum NextAttempt<'a> {
    /// As it was (a delivered or dead-lettered row is never due again).
    Unchanged,
    /// This long from now, on the database clock.
    After(Duration),
    /// Not until one of these paused endpoints is resumed (or at once, if none still is).
    Held(&'a [String]),
}

/// One delivery's outcome as the row takes it.
#[derive(Debug)]
pub struct RowOutcome<'a> {
    pub id: &'a str,
    /// The claim's token: a row re-claimed by another relay since is left alone.
    pub token: Uuid,
    pub status: &'a str,
    /// The attempt counts against `max_attempts`.
    pub failed: bool,
    pub error: Option<&'a str>,
    pub next: NextAttempt<'a>,
    /// Endpoints that have accepted the event, now.
    pub delivered: &'a [String],
    /// The attempts made, as a JSON array, to append to the row's history (None: none).
    pub attempts: Option<String>,
}

/// How [`record`] meets a row another session holds locked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Locked {
    /// Waits for it, up to [`crate::db::queries::RECORD_LOCK_WAIT`]; then the statement
    /// fails with SQLSTATE 55P03 (lock_not_available) and writes nothing.
    Wait,
    /// Leaves it out, unchanged: its id is not among those returned.
    Skip,
}

/// Records a batch of outcomes in one fenced UPDATE; returns the ids of the rows it changed.
pub async fn record(
    pool: &Pool,
    q: &Queries,
    batch: &[RowOutcome<'_>],
    locked: Locked,
) -> anyhow::Result<Vec<String>> {
    let n = batch.len();
    let (mut ids, mut tokens, mut statuses) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut failed, mut errors, mut delays, mut delivered, mut logs, mut held_for) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for o in batch {
        ids.push(o.id);
        tokens.push(o.token);
        statuses.push(o.status);
        failed.push(o.failed as i32);
        errors.push(o.error);
        let (delay, held) = match o.next {
            NextAttempt::Unchanged => (None, None),
            NextAttempt::After(d) => (Some(d.as_secs_f64()), None),
            NextAttempt::Held(paused) => (Some(f64::INFINITY), Some(paused.join(","))),
        };
        delays.push(delay);
        held_for.push(held);
        delivered.push(o.delivered.join(","));
        logs.push(o.attempts.as_deref());
    }
    let sql = match locked {
        Locked::Wait => &q.record,
        Locked::Skip => &q.record_skip_locked,
    };
    let rows = crate::db::query(
        pool,
        sql,
        &[
            &ids, &tokens, &statuses, &failed, &errors, &delays, &delivered, &logs, &held_for,
        ],
    )
    .await?;
    Ok(rows
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?)
}

/// Of these claimed rows, those still claimed under their tokens (see
/// [`crate::db::queries`]' `STILL_CLAIMED`), as (id, token).
pub async fn still_claimed(
    pool: &Pool,
    q: &Queries,
    rows: &[(&str, Uuid)],
) -> anyhow::Result<Vec<(String, Uuid)>> {
    let (ids, tokens): (Vec<&str>, Vec<Uuid>) = rows.iter().copied().unzip();
    let rows = crate::db::query(pool, &q.still_claimed, &[&ids, &tokens]).await?;
    Ok(rows
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect::<Result<_, tokio_postgres::Error>>()?)
}

/// Extends the leases of the rows held under these tokens; returns how many it extended.
pub async fn extend_leases(
    pool: &Pool,
    q: &Queries,
    held: &[(String, Uuid)],
    lease: Duration,
) -> anyhow::Result<usize> {
    let (ids, tokens): (Vec<&str>, Vec<Uuid>) = held.iter().map(|(i, t)| (i.as_str(), *t)).unzip();
    let rows = crate::db::query(pool, &q.extend, &[&ids, &tokens, &lease.as_secs_f64()]).await?;
    Ok(rows.len())
}

/// How long until something falls due (None: nothing waits).
#[derive(Debug, Clone, Copy)]
pub struct NextDue {
    /// The earliest retry.
    pub retry: Option<Duration>,
    /// The earliest lease past the floor to lapse (None also when not asked).
    pub lapse: Option<Duration>,
}

/// When the next retry falls due and, when `leases`, the next lease past `lease_floor`
/// lapses. One already due is zero away.
pub async fn next_due(
    pool: &Pool,
    q: &Queries,
    lease_floor: Option<f64>,
    leases: bool,
) -> anyhow::Result<NextDue> {
    let rows = crate::db::query(pool, &q.next_due, &[&lease_floor, &leases]).await?;
    let row = rows.first().context("no row")?;
    let secs = |i: usize| {
        row.get::<_, Option<f64>>(i)
            .map(|s| Duration::from_secs_f64(s.max(0.0)))
    };
    Ok(NextDue {
        retry: secs(0),
        lapse: secs(1),
    })
}

/// What a sweep below the claim cursor found.
#[derive(Debug, Clone, Default)]
pub struct Swept {
    /// Transactions with fresh rows at or below the cursor's position.
    pub strays: Vec<u64>,
    /// The earliest lease in flight that lapsed at or before the floor (epoch seconds).
    pub lapsed: Option<f64>,
}

/// Sweeps below the claim cursor's position `after` and lease floor `floor`.
pub async fn sweep(
    pool: &Pool,
    q: &Queries,
    after: (u64, i64),
    floor: f64,
) -> anyhow::Result<Swept> {
    let rows = crate::db::query(pool, &q.sweep, &[&after.0.to_string(), &after.1, &floor]).await?;
    let row = rows.first().context("the sweep returned no row")?;
    Ok(Swept {
        strays: xids(row.try_get(0)?)?,
        lapsed: row.try_get(1)?,
    })
}

/// Where an SSE read starts (see [`crate::db::queries::stream_read`]).
#[derive(Debug, Clone, Copy)]
pub struct StreamFrom<'a> {
    pub base: &'a Snapshot,
    /// The later snapshot whose difference from `base` is being walked (None: this
    /// statement's own).
    pub next: Option<&'a Snapshot>,
    /// Only rows with a higher stream_seq.
    pub after: i64,
    /// One org's rows, or (None) every org's.
    pub org: Option<&'a str>,
    pub limit: usize,
}

/// One SSE read: the statement's snapshot and clock, then the rows, in stream order.
#[derive(Debug)]
pub struct StreamRead {
    pub snapshot: Snapshot,
    /// Epoch seconds.
    pub at: i64,
    /// `(stream_xid, stream_seq, event)`.
    pub rows: Vec<(u64, i64, Event)>,
    /// What the read took on the wire (see [`crate::db::put_back`]).
    pub bytes: usize,
}

/// Reads a page of the stream on `client` (a connection the caller holds on to).
pub async fn stream_read(
    client: &deadpool_postgres::Client,
    sql: &str,
    from: &StreamFrom<'_>,
) -> anyhow::Result<StreamRead> {
    let base = from.base.to_string();
    let next = from.next.map(Snapshot::to_string);
    let params: [&(dyn ToSql + Sync); 5] =
        [&base, &next, &from.after, &from.org, &(from.limit as i64)];
    let rows = statements::query_pooled(client, sql, &params).await?;
    let first = rows
        .first()
        .ok_or_else(|| anyhow::anyhow!("stream read returned no row"))?;
    let snapshot: String = first.try_get(0)?;
    let at: i64 = first.try_get(1)?;
    let snapshot = Snapshot::parse(&snapshot)
        .ok_or_else(|| anyhow::anyhow!("unreadable snapshot {snapshot:?}"))?;
    let mut found = Vec::with_capacity(rows.len());
    for row in &rows {
        let Some(xid) = row.try_get::<_, Option<String>>(2)? else {
            break; // the one all-NULL row: nothing new
        };
        let ev = envelope(row, 4, 5, 10)?;
        found.push((self::xid(&xid)?, row.try_get::<_, i64>(3)?, ev));
    }
    Ok(StreamRead {
        snapshot,
        at,
        rows: found,
        bytes: crate::db::result_bytes(&rows),
    })
}

/// The current snapshot and the statement's clock (epoch seconds): where a subscriber that
/// starts live, from now, begins.
pub async fn stream_now(client: &deadpool_postgres::Client) -> anyhow::Result<(Snapshot, i64)> {
    let row = statements::query_one(
        client,
        "SELECT pg_current_snapshot()::text, extract(epoch FROM statement_timestamp())::int8",
        &[],
    )
    .await?;
    let text: String = row.try_get(0)?;
    let snapshot =
        Snapshot::parse(&text).ok_or_else(|| anyhow::anyhow!("unreadable snapshot {text:?}"))?;
    Ok((snapshot, row.try_get(1)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_width_counts_the_event_columns() {
        let mut depth = 0;
        let mut columns = 1;
        for c in EVENT_COLUMNS.chars() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth == 0 => columns += 1,
                _ => {}
            }
        }
        assert_eq!(columns, EVENT_WIDTH);
    }

    #[test]
    fn transaction_ids_are_sent_as_an_array_literal() {
        assert_eq!(xid_list(&[]), "{}");
        assert_eq!(xid_list(&[12, 15]), "{12,15}");
    }
}
