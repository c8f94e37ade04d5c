//! Every statement the relay runs against the outbox table, built once per table.
//!
//! The templates use `{t}` (the quoted table), `{id}` (the id type) and `{st}` (the status
//! type, `text` or the app's enum). Status values are always literals cast to `{st}`, never
//! parameters, because a text parameter does not implicitly convert to an enum.

use crate::db::ident::quote_literal;
use crate::db::shape::TableShape;

/// The error_message of a row whose lease lapsed. Also how the claim recognises a row that
/// lapses a second time in a row: a suspect (see [`CLAIM`]).
pub const LAPSED_MESSAGE: &str = "lease expired: the relay delivering this event stopped \
(crash, kill or hang) before recording an outcome";

/// Claim a batch: PENDING rows that are due plus PROCESSING rows whose lease lapsed, oldest
/// first. `FOR UPDATE SKIP LOCKED` lets any number of relays claim side by side without
/// waiting on each other; each branch walks its own partial index in order, so the cost does
/// not grow with the table. A lapsed lease counts as a failed attempt (the relay holding it
/// died or hung mid-delivery), and one that exhausts `max_attempts` goes straight to FAILED,
/// so a poison event that crashes every relay cannot loop forever.
///
/// A row that lapses twice in a row is a suspect: perhaps it is what kills relays. Suspects
/// are claimed at most $5 at a time (the relay asks for one only while it has none in
/// flight), so a poison event takes down the relay with at most one suspect aboard, and the
/// innocent rows that crashed alongside it are delivered apart from it instead of sharing
/// its fate until they all end FAILED. The third column says which rows are suspects.
/// $1 limit, $2 lease seconds, $3 max_attempts, $4 claim token, $5 suspects wanted (0 or 1).
const CLAIM: &str = "
WITH lapsed AS (
    SELECT id FROM {t}
     WHERE status = 'PROCESSING' AND lease_expires_at <= now()
       AND error_message IS DISTINCT FROM {lapsed}
     ORDER BY lease_expires_at
     LIMIT $1
       FOR UPDATE SKIP LOCKED
), suspect AS (
    SELECT id FROM {t}
     WHERE status = 'PROCESSING' AND lease_expires_at <= now()
       AND error_message = {lapsed}
     ORDER BY lease_expires_at
     LIMIT $5
       FOR UPDATE SKIP LOCKED
), due AS (
    SELECT id FROM {t} AS c
     WHERE status = 'PENDING' AND next_attempt_at <= now() {gate}
     ORDER BY next_attempt_at
     LIMIT $1
       FOR UPDATE SKIP LOCKED
)
UPDATE {t} AS e SET
    status = CASE WHEN e.status = 'PROCESSING' AND e.retry_count + 1 >= $3
                  THEN 'FAILED'::{st} ELSE 'PROCESSING'::{st} END,
    retry_count = e.retry_count + CASE WHEN e.status = 'PROCESSING' THEN 1 ELSE 0 END,
    error_message = CASE WHEN e.status = 'PROCESSING' THEN {lapsed} ELSE e.error_message END,
    attempts = CASE WHEN e.status = 'PROCESSING'
                    THEN {keep_latest:coalesce(e.attempts, '[]') || jsonb_build_array(
                        jsonb_build_object('at', now(), 'endpoint', NULL, 'ok', false,
                                           'status', NULL, 'error', {lapsed}, 'ms', NULL))}
                    ELSE e.attempts END,
    lease_expires_at = now() + make_interval(secs => $2),
    claim_token = $4
  FROM (SELECT id, false AS suspect FROM lapsed
        UNION ALL SELECT id, true FROM suspect
        UNION ALL SELECT id, false FROM due) AS c
 WHERE e.id = c.id
RETURNING e.id::text, e.status::text, e.event_type, e.org_id, e.entity_type, e.entity_id,
          e.payload::text, e.retry_count, (extract(epoch FROM e.created_at) * 1000000)::int8,
          e.delivered_to, e.error_message, c.suspect";

/// Entity order: a due row waits while an earlier row of its (entity_type, entity_id) is
/// unfinished (PENDING, in flight, or FAILED and not skipped), among rows that are ordered at
/// all (`{ordered:x}`: the event types an ordered webhook wants). "Earlier" is stream_seq,
/// taken at insert; rows from before the stream columns existed (NULL) come first. The
/// probe walks the ordering index, which holds only unfinished rows. Spliced into [`CLAIM`]'s
/// `due` branch when ordering is on; without it the claim has no gate at all.
const GATE: &str = "
       AND NOT (c.entity_type IS NOT NULL AND c.entity_id IS NOT NULL AND {ordered:c}
                AND EXISTS (
           SELECT 1 FROM {t} AS p
            WHERE p.entity_type = c.entity_type AND p.entity_id = c.entity_id
              AND p.status IN ('PENDING', 'PROCESSING', 'FAILED') AND p.skipped_at IS NULL
              AND (p.stream_seq < c.stream_seq
                   OR (p.stream_seq IS NULL AND c.stream_seq IS NOT NULL))
              AND {ordered:p}))";

/// `status`: entity keys held up by a FAILED event (ordered mode), with how many events wait
/// behind it. The head is the key's earliest unskipped FAILED row.
const BLOCKED_KEYS: &str = "
SELECT f.entity_type, f.entity_id, f.id::text, f.error_message,
       (SELECT count(*) FROM {t} AS w
         WHERE w.entity_type = f.entity_type AND w.entity_id = f.entity_id
           AND w.status IN ('PENDING', 'PROCESSING') AND w.skipped_at IS NULL
           AND {ordered:w})::int8
  FROM (SELECT DISTINCT ON (entity_type, entity_id) *
          FROM {t} AS x
         WHERE x.status = 'FAILED' AND x.skipped_at IS NULL
           AND x.entity_type IS NOT NULL AND x.entity_id IS NOT NULL AND {ordered:x}
         ORDER BY entity_type, entity_id, stream_seq NULLS FIRST) AS f
 ORDER BY f.created_at
 LIMIT $1";

/// `skip --id`: a FAILED event is given up; it stays FAILED (it was never delivered) but no
/// longer holds back its entity key.
const SKIP_IDS: &str = "
UPDATE {t} SET skipped_at = now()
 WHERE id = ANY($1::text[]::{id}[]) AND status = 'FAILED' AND skipped_at IS NULL
RETURNING id::text";

/// Record a batch of outcomes in one statement. Fenced by the claim token: a relay whose
/// lease lapsed (and whose rows another relay re-claimed) updates nothing. Delays are
/// computed on the database clock, so relay hosts with skewed clocks agree. An infinite
/// delay holds the row for a paused endpoint (next_attempt_at = 'infinity', out of every
/// claim's reach until a resume releases it).
/// Arrays: $1 id, $2 token, $3 status, $4 failed attempts to add, $5 error, $6 delay seconds
/// (NULL keeps next_attempt_at), $7 comma-joined delivered_to, $8 the attempts made (a JSON
/// array, NULL for none) to append to the row's history.
const RECORD: &str = "
UPDATE {t} AS e SET
    status = u.status::{st},
    retry_count = e.retry_count + u.failed,
    error_message = COALESCE(u.error, e.error_message),
    next_attempt_at = CASE WHEN u.delay IS NULL THEN e.next_attempt_at
                           WHEN u.delay = 'Infinity' THEN 'infinity'
                           ELSE now() + make_interval(secs => u.delay) END,
    processed_at = CASE WHEN u.status = 'COMPLETED' THEN now() ELSE e.processed_at END,
    delivered_to = string_to_array(u.delivered, ','),
    -- The common case, a first attempt, only parses the new entries; the cap is worked out
    -- only for a long history.
    attempts = CASE WHEN u.log IS NULL THEN e.attempts
                    WHEN e.attempts IS NULL THEN u.log::jsonb
                    WHEN jsonb_array_length(e.attempts) < {kept_minus_batch}
                    THEN e.attempts || u.log::jsonb
                    ELSE {keep_latest:e.attempts || u.log::jsonb} END,
    lease_expires_at = NULL,
    claim_token = NULL
  FROM unnest($1::text[], $2::uuid[], $3::text[], $4::int4[], $5::text[], $6::float8[],
              $7::text[], $8::text[]) AS u(id, token, status, failed, error, delay, delivered,
                                            log)
 WHERE e.id = u.id::{id} AND e.claim_token = u.token AND e.status = 'PROCESSING'
RETURNING e.id::text";

/// How many attempts an event's history keeps (the latest).
pub const ATTEMPTS_KEPT: usize = 100;
/// A delivery appends one entry per endpoint it tried; the cheap path of [`RECORD`] assumes
/// no more than this many (more is still correct, just cut later).
const MAX_ENDPOINTS: usize = 20;

/// `{keep_latest:EXPR}`: the JSON array EXPR cut to its last [`ATTEMPTS_KEPT`] elements.
fn keep_latest(expr: &str) -> String {
    format!(
        "(SELECT CASE WHEN jsonb_array_length(a) > {n} \
                THEN jsonb_path_query_array(a, '$[last - {m} to last]') ELSE a END \
            FROM (SELECT {expr} AS a) AS h)",
        n = ATTEMPTS_KEPT,
        m = ATTEMPTS_KEPT - 1
    )
}

/// Endpoints an operator paused (the table migration 007 creates beside the outbox).
const PAUSED_LIST: &str = "SELECT endpoint FROM {paused} ORDER BY endpoint";
/// $1 endpoint, $2 who (the dashboard's peer address). Pausing twice keeps the first time.
const PAUSE: &str = "
INSERT INTO {paused} (endpoint, paused_by) VALUES ($1, $2) ON CONFLICT (endpoint) DO NOTHING";
const RESUME: &str = "DELETE FROM {paused} WHERE endpoint = $1";
/// Held rows (next_attempt_at = 'infinity', see [`RECORD`]) become due, $1 at a time. Rows
/// still owed to an endpoint that stays paused are simply held again when claimed. A range
/// of the PENDING index, `= ANY (ARRAY(...))` as in [`FAIL_UNKNOWN`].
const RELEASE_HELD: &str = "
UPDATE {t} SET next_attempt_at = now()
 WHERE id = ANY (ARRAY(SELECT id FROM {t}
                        WHERE status = 'PENDING' AND next_attempt_at = 'infinity'
                        LIMIT $1 FOR UPDATE SKIP LOCKED))
RETURNING 1";

/// Extend the leases of work in progress. $1 ids, $2 tokens, $3 lease seconds.
const EXTEND: &str = "
UPDATE {t} AS e SET lease_expires_at = now() + make_interval(secs => $3)
  FROM unnest($1::text[], $2::uuid[]) AS u(id, token)
 WHERE e.id = u.id::{id} AND e.claim_token = u.token AND e.status = 'PROCESSING'
RETURNING e.id::text";

/// Seconds until something becomes claimable (a retry falls due or a lease lapses); NULL when
/// nothing waits. Two index-only min() lookups on the partial indexes. Held rows
/// ('infinity') never fall due by themselves.
const NEXT_DUE: &str = "
SELECT extract(epoch FROM least(
    (SELECT min(next_attempt_at) FROM {t}
      WHERE status = 'PENDING' AND next_attempt_at < 'infinity'),
    (SELECT min(lease_expires_at) FROM {t} WHERE status = 'PROCESSING')) - now())::float8";

/// Dead-letter rows whose status the relay does not know (NULL, a typo, an extra enum value):
/// they would otherwise sit unnoticed forever. Uses the partial "unknown" index.
/// `= ANY (ARRAY(...))`, not `IN (SELECT ...)`: the subquery runs once and the rows are then
/// fetched by key; with `IN`, stale statistics once made the planner re-run the locking
/// subquery per row, and the statement crawled for minutes.
const FAIL_UNKNOWN: &str = "
UPDATE {t} SET
    status = 'FAILED'::{st},
    error_message = 'unknown status ' || coalesce(quote_literal(status::text), 'NULL')
        || ': the relay only sends PENDING rows; fix the row or run outbox-relay retry --id',
    lease_expires_at = NULL, claim_token = NULL
 WHERE id = ANY (ARRAY(SELECT id FROM {t}
                      WHERE status IS NULL
                         OR status NOT IN ('PENDING', 'PROCESSING', 'COMPLETED', 'FAILED')
                      LIMIT 1000 FOR UPDATE SKIP LOCKED))
RETURNING id::text";

/// `status`: counts by status, and the oldest PENDING row's age in seconds.
const STATUS_COUNTS: &str = "
SELECT coalesce(status::text, 'NULL'), count(*)::int8 FROM {t} GROUP BY 1 ORDER BY 1";
const OLDEST_PENDING: &str = "
SELECT extract(epoch FROM now() - min(created_at))::float8 FROM {t} WHERE status = 'PENDING'";

/// `retry --id`: FAILED rows back to PENDING, count reset. delivered_to is kept, so endpoints
/// that already accepted are not sent the event again.
const RETRY_IDS: &str = "
UPDATE {t} SET status = 'PENDING'::{st}, retry_count = 0, next_attempt_at = now(),
       lease_expires_at = NULL, claim_token = NULL, skipped_at = NULL
 WHERE id = ANY($1::text[]::{id}[]) AND status = 'FAILED'
RETURNING id::text";

/// `retry --failed [--type GLOB]`, in batches of $2 rows; $1 is a LIKE pattern.
const RETRY_FAILED: &str = "
UPDATE {t} SET status = 'PENDING'::{st}, retry_count = 0, next_attempt_at = now(),
       lease_expires_at = NULL, claim_token = NULL, skipped_at = NULL
 WHERE id = ANY (ARRAY(SELECT id FROM {t} WHERE status = 'FAILED' AND event_type LIKE $1
                      LIMIT $2 FOR UPDATE SKIP LOCKED))";

/// `purge`: delete COMPLETED rows processed before the cutoff ($1 seconds ago), $2 at a time,
/// so no statement holds locks or bloats WAL for long. `= ANY (ARRAY(...))` as in
/// [`FAIL_UNKNOWN`].
const PURGE: &str = "
DELETE FROM {t} WHERE id = ANY (ARRAY(
    SELECT id FROM {t}
     WHERE status = 'COMPLETED' AND processed_at < now() - make_interval(secs => $1)
     LIMIT $2 FOR UPDATE SKIP LOCKED))";

/// `publish` when the database fills in the id. $1 type, $2 org, $3 entity type, $4 entity
/// id, $5 payload as JSON text.
const PUBLISH: &str = "
INSERT INTO {t} (event_type, org_id, entity_type, entity_id, payload)
VALUES ($1, $2, $3, $4, $5::text::jsonb) RETURNING id::text";
/// `publish` when the app's ORM generates ids client-side: $6 is a fresh UUID.
const PUBLISH_WITH_ID: &str = "
INSERT INTO {t} (id, event_type, org_id, entity_type, entity_id, payload)
VALUES ($6::text::{id}, $1, $2, $3, $4, $5::text::jsonb) RETURNING id::text";

/// SSE: the rows a cursor has not covered within one snapshot difference, in stream order.
/// $1 base snapshot; $2 the later snapshot, or NULL for this statement's own (returned in the
/// first column, with the database's clock); $3 only rows with a higher stream_seq; $4 one
/// org, or NULL for all; $5 at most this many. One row of NULLs (after the first two columns)
/// when nothing is new. Rows without an org are never streamed.
const STREAM_READ: &str = "
WITH s AS MATERIALIZED (SELECT pg_current_snapshot() AS snap)
SELECT s.snap::text, extract(epoch FROM statement_timestamp())::int8,
       e.stream_xid::text, e.stream_seq, e.id::text, e.event_type, e.org_id, e.entity_type,
       e.entity_id, e.payload::text, (extract(epoch FROM e.created_at) * 1000000)::int8
  FROM s LEFT JOIN LATERAL (
    SELECT * FROM {t} x
     WHERE (x.stream_xid >= pg_snapshot_xmax($1::text::pg_snapshot)
            -- = ANY(ARRAY(...)), not IN (SELECT ...): the index serves both arms.
            OR x.stream_xid = ANY (ARRAY(SELECT pg_snapshot_xip($1::text::pg_snapshot))))
       AND pg_visible_in_snapshot(x.stream_xid, coalesce($2::text::pg_snapshot, s.snap))
       AND x.stream_seq > $3
       AND x.org_id IS NOT NULL AND ($4::text IS NULL OR x.org_id = $4)
     ORDER BY x.stream_seq
     LIMIT $5) e ON true";

/// The wake-up handshake (see `crate::relay::doze`): a relay about to sleep takes the
/// table's wake lock ([`crate::db::migrate::wake_lock`]) exclusively, at session level, on
/// its own connection. Waits for every inserting transaction that holds it shared (they
/// commit or roll back first); from the moment it is requested, new inserts NOTIFY.
/// $1 class, $2 key.
pub const WAKE_LOCK: &str = "SELECT pg_advisory_lock($1, $2)";
/// The relay is awake again: inserts stop notifying. `_all`, so that a lock the relay is not
/// sure it got (a cancelled wait that was granted meanwhile) is released too, and without a
/// warning when it was not.
pub const WAKE_UNLOCK: &str = "SELECT pg_advisory_unlock_all()";

/// The statements, rendered for one table.
#[derive(Debug, Clone)]
pub struct Queries {
    pub claim: String,
    pub record: String,
    pub extend: String,
    pub next_due: String,
    pub fail_unknown: String,
    pub status_counts: String,
    pub oldest_pending: String,
    pub retry_ids: String,
    pub retry_failed: String,
    pub skip_ids: String,
    pub blocked_keys: String,
    pub purge: String,
    pub publish: String,
    pub stream_read: String,
    pub paused_list: String,
    pub pause: String,
    pub resume: String,
    pub release_held: String,
    /// Quoted `schema.table`, for messages.
    pub table: String,
    pub shape: TableShape,
}

impl Queries {
    /// The statements for the configured table.
    pub fn for_config(cfg: &crate::config::Config, shape: &TableShape) -> Self {
        Self::new(
            &cfg.qualified_table(),
            &crate::db::migrate::qualified_paused_table(cfg),
            shape,
            &cfg.ordered_types(),
        )
    }

    /// `paused_table`: quoted and qualified. `ordered_types`: LIKE patterns of the event
    /// types delivered in entity order ([`crate::config::Config::ordered_types`]); empty for
    /// none.
    pub fn new(
        qualified_table: &str,
        paused_table: &str,
        shape: &TableShape,
        ordered_types: &[String],
    ) -> Self {
        let ordered = |alias: &str| {
            if ordered_types.is_empty() {
                "false".to_owned()
            } else if ordered_types.iter().any(|p| p == "%") {
                "true".to_owned()
            } else {
                let list: Vec<String> = ordered_types.iter().map(|p| quote_literal(p)).collect();
                format!("{alias}.event_type LIKE ANY (ARRAY[{}])", list.join(", "))
            }
        };
        let gate = if ordered_types.is_empty() { "" } else { GATE };
        let r = |sql: &str| {
            let mut sql = sql
                .replace("{gate}", gate)
                .replace("{lapsed}", &quote_literal(LAPSED_MESSAGE));
            for alias in ["c", "p", "w", "x"] {
                sql = sql.replace(&format!("{{ordered:{alias}}}"), &ordered(alias));
            }
            // {keep_latest:EXPR}, EXPR free of braces.
            while let Some(start) = sql.find("{keep_latest:") {
                let end = start + sql[start..].find('}').expect("closed placeholder");
                let expr = sql[start + "{keep_latest:".len()..end].to_owned();
                sql.replace_range(start..=end, &keep_latest(&expr));
            }
            sql.replace("{t}", qualified_table)
                .replace("{paused}", paused_table)
                // One delivery adds at most one entry per endpoint; below this, no cut.
                .replace(
                    "{kept_minus_batch}",
                    &(ATTEMPTS_KEPT - MAX_ENDPOINTS).to_string(),
                )
                .replace("{id}", shape.id_type)
                .replace("{st}", &shape.status_type)
        };
        Self {
            claim: r(CLAIM),
            record: r(RECORD),
            extend: r(EXTEND),
            next_due: r(NEXT_DUE),
            fail_unknown: r(FAIL_UNKNOWN),
            status_counts: r(STATUS_COUNTS),
            oldest_pending: r(OLDEST_PENDING),
            retry_ids: r(RETRY_IDS),
            retry_failed: r(RETRY_FAILED),
            skip_ids: r(SKIP_IDS),
            blocked_keys: r(BLOCKED_KEYS),
            purge: r(PURGE),
            publish: r(if shape.id_has_default {
                PUBLISH
            } else {
                PUBLISH_WITH_ID
            }),
            stream_read: r(STREAM_READ),
            paused_list: r(PAUSED_LIST),
            pause: r(PAUSE),
            resume: r(RESUME),
            release_held: r(RELEASE_HELD),
            table: qualified_table.to_owned(),
            shape: shape.clone(),
        }
    }
}

/// The SSE read statement for a table (it needs no more of the table's shape than its name).
pub fn stream_read(qualified_table: &str) -> String {
    STREAM_READ.replace("{t}", qualified_table)
}

/// Turns a `--type` glob (`*`, `?`) into a LIKE pattern, escaping LIKE's own wildcards.
pub fn glob_to_like(glob: &str) -> String {
    let mut out = String::with_capacity(glob.len());
    for c in glob.chars() {
        match c {
            '*' => out.push('%'),
            '?' => out.push('_'),
            '%' | '_' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_become_escaped_like_patterns() {
        assert_eq!(glob_to_like("PROJECT.*"), "PROJECT.%");
        assert_eq!(glob_to_like("A?_%"), "A_\\_\\%");
    }

    #[test]
    fn templates_are_fully_rendered() {
        for ordered in [
            vec![],
            vec!["%".to_owned()],
            vec!["A.%".to_owned(), "B_".into()],
        ] {
            let q = Queries::new(
                r#""public"."OutboxEvent""#,
                r#""public"."OutboxEvent_relay_paused""#,
                &TableShape::standard(),
                &ordered,
            );
            for sql in [
                &q.claim,
                &q.record,
                &q.extend,
                &q.next_due,
                &q.fail_unknown,
                &q.publish,
                &q.stream_read,
                &q.blocked_keys,
                &q.skip_ids,
                &q.release_held,
                &q.pause,
            ] {
                assert!(!sql.contains('{'), "unrendered placeholder in {sql}");
            }
            assert_eq!(q.claim.contains("EXISTS"), !ordered.is_empty());
        }
    }
}
