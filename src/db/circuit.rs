//! The circuit breakers' shared state (see [`crate::sinks::breaker`]): an open or disabled
//! circuit is a row of the paused table (migration 009), so every relay on the table holds
//! the endpoint's events the same way as for an operator's pause, and a restart forgets
//! nothing. The statements that open, probe and close a circuit, and claim a held row for a
//! probe, are here; each is one short statement.

use std::time::Duration;

use deadpool_postgres::Pool;
use uuid::Uuid;

use crate::db::queries::Queries;
use crate::event::Claimed;

/// Opens `$1`'s circuit unless the endpoint is already paused (by an operator, or by another
/// relay's breaker): no probe for $3 seconds; the failures began $4 seconds ago; $2 the last
/// error. One row back when this statement opened it.
pub const OPEN: &str = "
INSERT INTO {paused} (endpoint, paused_by, reason, retry_at, failing_since, last_error)
VALUES ($1, 'circuit breaker', 'circuit', now() + make_interval(secs => $3),
        now() - make_interval(secs => $4), $2)
ON CONFLICT (endpoint) DO NOTHING
RETURNING 1";

/// Takes the probe slot of `$1`'s open circuit once its cooldown is over. Exactly one relay
/// wins it, and the slot is due again only after another cooldown ($2 seconds), so a prober
/// that dies mid-probe delays the next one by a cooldown, never forever. Columns: whether
/// this statement won, and the seconds until the slot is due (NULL: no open circuit).
pub const PROBE: &str = "
WITH won AS (
    UPDATE {paused} SET retry_at = now() + make_interval(secs => $2)
     WHERE endpoint = $1 AND reason = 'circuit' AND retry_at <= now()
    RETURNING retry_at)
SELECT EXISTS (SELECT 1 FROM won),
       extract(epoch FROM coalesce((SELECT retry_at FROM won),
                                   (SELECT retry_at FROM {paused}
                                     WHERE endpoint = $1 AND reason = 'circuit')) - now())::float8";

/// The probe failed ($2 its error): open for another cooldown ($3 seconds), or disabled once
/// the endpoint has been failing for $4 seconds (NULL: never). The reason it now has.
pub const PROBE_FAILED: &str = "
UPDATE {paused} SET last_error = $2,
       reason = CASE WHEN now() - failing_since >= make_interval(secs => $4)
                     THEN 'disabled' ELSE 'circuit' END,
       retry_at = CASE WHEN now() - failing_since >= make_interval(secs => $4)
                       THEN NULL ELSE now() + make_interval(secs => $3) END
 WHERE endpoint = $1 AND reason = 'circuit'
RETURNING reason";

/// Closes `$1`'s circuit (an operator's pause and a disabled endpoint stay). One row back
/// when it did.
pub const CLOSE: &str = "
DELETE FROM {paused} WHERE endpoint = $1 AND reason = 'circuit' RETURNING 1";

/// Rows held for `$1` not yet delivered to it, at most $2: a probe's candidates (the relay
/// keeps those of the types the endpoint wants). Found as `RELEASE_HELD` finds them.
pub const HELD: &str = "
WITH RECURSIVE {held_keys}
SELECT r.id::text, r.event_type FROM held_keys AS k
  CROSS JOIN LATERAL (SELECT id, event_type FROM {t}
                       WHERE {held} AND {held_for} = k.held_for AND NOT ($1 = ANY (delivered_to))
                       LIMIT $2) AS r
 WHERE k.held_for && ARRAY[$1::text, '*']
 LIMIT $2";

/// Claims held row $1 for a probe with token $2 and a lease of $3 seconds, unless it is no
/// longer held or (entity order) an earlier event of its entity is unfinished. Columns:
/// [`crate::db::claims::EVENT_COLUMNS`].
pub const CLAIM_HELD: &str = "
UPDATE {t} AS e SET status = 'PROCESSING'::{st}, claim_token = $2,
       lease_expires_at = now() + make_interval(secs => $3)
 WHERE e.id = (SELECT id FROM {t} AS c
                WHERE id = $1::text::{id} AND {held} {gate}
                  FOR UPDATE SKIP LOCKED)
RETURNING {event_columns}";

/// Opens `name`'s circuit for every relay; false if it was paused already.
pub async fn open(
    pool: &Pool,
    q: &Queries,
    name: &str,
    error: &str,
    cooldown: Duration,
    failing_for: Duration,
) -> anyhow::Result<bool> {
    let rows = super::query(
        pool,
        &q.circuit_open,
        &[
            &name,
            &error,
            &cooldown.as_secs_f64(),
            &failing_for.as_secs_f64(),
        ],
    )
    .await?;
    Ok(!rows.is_empty())
}

/// What a try for the probe slot came to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Slot {
    /// This relay sends the probe.
    Won,
    /// Not yet, or another relay has it: due in this long (zero or less: due now, taken by
    /// another relay a moment ago).
    Later(Duration),
    /// The circuit is no longer open (closed, disabled, or an operator's pause now).
    NotOpen,
}

/// Tries for `name`'s probe slot (see [`PROBE`]).
pub async fn probe_slot(
    pool: &Pool,
    q: &Queries,
    name: &str,
    cooldown: Duration,
) -> anyhow::Result<Slot> {
    let rows = super::query(pool, &q.circuit_probe, &[&name, &cooldown.as_secs_f64()]).await?;
    let row = rows.first().ok_or_else(|| anyhow::anyhow!("no row"))?;
    let won: bool = row.try_get(0)?;
    let due: Option<f64> = row.try_get(1)?;
    Ok(match (won, due) {
        (true, _) => Slot::Won,
        (false, Some(s)) => Slot::Later(Duration::from_secs_f64(s.max(0.0))),
        (false, None) => Slot::NotOpen,
    })
}

/// Records a failed probe; true if the endpoint is now disabled.
pub async fn probe_failed(
    pool: &Pool,
    q: &Queries,
    name: &str,
    error: &str,
    cooldown: Duration,
    disable_after: Option<Duration>,
) -> anyhow::Result<bool> {
    let rows = super::query(
        pool,
        &q.circuit_probe_failed,
        &[
            &name,
            &error,
            &cooldown.as_secs_f64(),
            &disable_after.map(|d| d.as_secs_f64()),
        ],
    )
    .await?;
    Ok(rows
        .first()
        .map(|r| r.get::<_, String>(0) == "disabled")
        .unwrap_or(false))
}

/// Closes `name`'s circuit; false if it was not open.
pub async fn close(pool: &Pool, q: &Queries, name: &str) -> anyhow::Result<bool> {
    Ok(!super::query(pool, &q.circuit_close, &[&name])
        .await?
        .is_empty())
}

/// Held rows not yet delivered to `name`: (id, event_type), at most `limit`.
pub async fn held(
    pool: &Pool,
    q: &Queries,
    name: &str,
    limit: i64,
) -> anyhow::Result<Vec<(String, Option<String>)>> {
    let rows = super::query(pool, &q.circuit_held, &[&name, &limit]).await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Claims held row `id` for a probe; None if another relay took it or it is not held now.
pub async fn claim_held(
    pool: &Pool,
    q: &Queries,
    id: &str,
    token: Uuid,
    lease: Duration,
) -> anyhow::Result<Option<Claimed>> {
    let rows = super::query(
        pool,
        &q.circuit_claim_held,
        &[&id, &token, &lease.as_secs_f64()],
    )
    .await?;
    let Some(row) = rows.first() else {
        return Ok(None);
    };
    let (event, retry_count, delivered_to) = super::claims::event(row)?;
    Ok(Some(Claimed {
        event,
        retry_count,
        delivered_to,
        token,
    }))
}
