//! Every statement the relay runs against the outbox table, built once per table.
//!
//! The templates use `{t}` (the quoted table), `{id}` (the id type), `{st}` (the status
//! type, `text` or the app's enum) and `{created_now}`, `{processed_now}` (the current time
//! as those columns hold it, see [`crate::db::shape::Clock`]). Status values are always
//! literals cast to `{st}`, never parameters, because a text parameter does not implicitly
//! convert to an enum. The app's timestamps are read with `extract(epoch FROM ...)`, which
//! takes a column without time zone as UTC whatever the session's TimeZone.
//!
//! The statements that move events (claim, record, extend, next due, sweep, the stream
//! read) are run through [`crate::db::claims`], which alone binds their parameters and
//! reads their columns by position.

use crate::db::claims::EVENT_COLUMNS;
use crate::db::ident::quote_literal;
use crate::db::shape::TableShape;
use crate::db::table::TableSettings;

/// The error_message of a row whose lease lapsed. Also how the claim recognises a row that
/// lapses a second time in a row: a suspect (see [`CLAIM`]).
pub const LAPSED_MESSAGE: &str = "lease expired: the relay delivering this event stopped \
(crash, kill or hang) before recording an outcome";

/// A PENDING row the relay has never claimed ("fresh"): found by its position in the stream
/// of commits, from [`crate::relay::cursor`], not by walking an index from its low end. The
/// claim leaves its token on a row it puts back to PENDING, so a row that has been through
/// the relay once is found by its due time instead ([`DUE`]). Rows from before the stream
/// columns existed (no position) count as due rows. Each of the two is the predicate of its
/// partial index (`sql/indexes/`): statements must spell it exactly so, for the planner to
/// use the index.
const FRESH: &str = "status = 'PENDING' AND claim_token IS NULL";
/// A PENDING row found by its due time: a retry waiting out its backoff, a row held for a
/// paused endpoint or released at shutdown, one put back by `retry`. See [`FRESH`].
const DUE: &str =
    "status = 'PENDING' AND (claim_token IS NOT NULL OR stream_xid IS NULL OR stream_seq IS NULL)";
/// A row held for paused endpoints (see [`RECORD`]): a due row that never falls due by itself.
/// Spelt with [`DUE`] so that the planner uses the due-and-held index
/// (`sql/indexes/due_held_index.sql`), whose `next_attempt_at = 'infinity'` end holds these rows
/// ordered by `held_for`, the paused endpoints they wait for.
const HELD: &str = "{due} AND next_attempt_at = 'infinity'";
/// The endpoints a held row waits for, as the due-and-held index keys it: a row held by a
/// release before `held_for` existed waits for '*', which every release matches (no endpoint
/// can be named '*').
const HELD_FOR: &str = "coalesce(held_for, ARRAY['*'::text])";
/// `held_keys(held_for)`: the distinct [`HELD_FOR`] values of the held rows, one index probe
/// each (a loose index scan: each step asks for the first value past the previous one), so a
/// resume or a probe for one endpoint reads the few sets of endpoints rows are held for,
/// then only the rows held for a set that names it, not every held row. For `WITH
/// RECURSIVE`.
const HELD_KEYS: &str = "held_keys(held_for) AS (
    SELECT (SELECT {held_for} FROM {t} WHERE {held} ORDER BY {held_for} LIMIT 1)
    UNION ALL
    SELECT (SELECT {held_for} FROM {t} WHERE {held} AND {held_for} > k.held_for
             ORDER BY {held_for} LIMIT 1)
      FROM held_keys AS k WHERE k.held_for IS NOT NULL)";

/// PROCESSING, for the statements that find a batch of claimed rows by id ([`RECORD`],
/// [`EXTEND`]), as a value the planner cannot see. A row stays PROCESSING for the length of
/// a delivery, so ANALYZE seldom catches one and the statistics say there are none. Against
/// the literal, the planner believed them: it scanned the table for the PROCESSING rows and
/// read the batch's arrays once for each row found, a batch of 1,000 outcomes on a table of
/// 50,000 taking 0.8 s instead of 13 ms, and slower as batches grow (they grow when the
/// database is slow). Against an unknown value it counts on a share of the table and looks
/// each row up by its key.
const IN_FLIGHT: &str = "(SELECT 'PROCESSING'::{st})";
/// Row `e` is batch entry `u`'s (u.id, u.token) and still claimed under that token: not
/// fenced out by a lapsed lease and a claim since. What [`RECORD`], [`EXTEND`] and
/// [`STILL_CLAIMED`] find a batch's rows by.
const OURS: &str = "e.id = u.id::{id} AND e.claim_token = u.token AND e.status = {in_flight}";

/// Claim a batch, in one statement: fresh rows past the relay's stream position, due rows,
/// and PROCESSING rows whose lease lapsed. `FOR UPDATE SKIP LOCKED` lets any number of relays
/// claim side by side without waiting on each other.
///
/// Why positions: each claim leaves the index entries of the row versions it replaced
/// behind, and vacuum can remove them only once no snapshot can still see those versions.
/// Walking an index from its low end (oldest first) steps over all of them, so one long
/// transaction anywhere in the database (a report, an idle session, a standby's feedback)
/// made every claim slower than the last. Fresh rows are instead found past a position in
/// the stream of commits that the relay keeps (see [`crate::relay::cursor`]): $6 the
/// transaction ids still to look at below $7/$8 ((stream_xid, stream_seq): everything above
/// it is new). Due rows are found by their due time in an index only they enter; lapsed
/// leases past $9, the database clock at the relay's previous look (NULL: from the start).
/// So each claim reads what changed since the previous one, whatever vacuum can do.
///
/// A lapsed lease counts as a failed attempt (the relay holding it died or hung
/// mid-delivery), and one that exhausts `max_attempts` goes straight to FAILED, so a poison
/// event that crashes every relay cannot loop forever. A row that lapses twice in a row is a
/// suspect: perhaps it is what kills relays. Suspects are claimed at most $5 at a time (the
/// relay asks for one only while it has none in flight), so a poison event takes down the
/// relay with at most one suspect aboard, and the innocent rows that crashed alongside it are
/// delivered apart from it instead of sharing its fate until they all end FAILED.
///
/// Columns 0-11, the claimed row (all NULL when none was): 0-9
/// [`crate::db::claims::EVENT_COLUMNS`], 10 error_message, 11 whether it is a suspect. Then,
/// the same on every row, for the cursor: 12 this statement's snapshot, 13 its clock (epoch
/// seconds), 14 how many fresh candidates it looked at (at most $1), 15-16 the last one's
/// position, 17 the transaction ids of candidates it did not claim (locked by another relay,
/// held back by entity order, or not yet due), 18-19 how many lapsed leases and suspects it
/// claimed. [`crate::db::claims::claim`] binds the parameters and reads the columns.
/// $1 limit, $2 lease seconds, $3 max_attempts, $4 claim token, $5 suspects wanted (0 or 1),
/// $6 xid8[] as text, $7 xid8 as text, $8 bigint, $9 epoch seconds or NULL.
///
/// The claim commits without waiting for its WAL to be flushed (`synchronous_commit` off for
/// this one transaction: `set_config(..., true)` ends with it, so nothing is left on a
/// session a pooler hands to someone else). That wait sat between every insert and its
/// delivery and bought nothing: a claim a database crash undoes only sends its rows again,
/// as a crash already does for every row in flight (at-least-once), and the outcome that
/// follows is committed durably, flushing the claim's WAL with its own.
const CLAIM: &str = "
WITH snap AS MATERIALIZED (
    SELECT pg_current_snapshot() AS s, now() AS at,
           set_config('synchronous_commit', 'off', true) AS async_commit
), cand AS MATERIALIZED (
    SELECT id, stream_xid, stream_seq FROM (
        (SELECT id, stream_xid, stream_seq FROM {t}
          WHERE {fresh} AND stream_xid = ANY ($6::text::xid8[])
            AND (stream_xid, stream_seq) <= ($7::text::xid8, $8::int8)
          ORDER BY stream_xid, stream_seq
          LIMIT $1)
        UNION ALL
        (SELECT id, stream_xid, stream_seq FROM {t}
          WHERE {fresh} AND (stream_xid, stream_seq) > ($7::text::xid8, $8::int8)
          ORDER BY stream_xid, stream_seq
          LIMIT $1)) AS u
     ORDER BY stream_xid, stream_seq
     LIMIT $1
), fresh AS (
    SELECT id FROM {t} AS c
     -- Not {fresh}: the planner would walk that index, not look the ids up. A row claimed,
     -- failed and put back since the snapshot may be taken here: it is due.
     WHERE id = ANY (ARRAY(SELECT id FROM cand)) AND status = 'PENDING'
       AND next_attempt_at <= now() {gate}
       FOR UPDATE SKIP LOCKED
), lapsed AS (
    SELECT id FROM {t}
     WHERE status = 'PROCESSING' AND lease_expires_at <= now()
       AND lease_expires_at > coalesce(to_timestamp($9::float8), '-infinity')
       AND error_message IS DISTINCT FROM {lapsed}
     ORDER BY lease_expires_at
     LIMIT $1
       FOR UPDATE SKIP LOCKED
), suspect AS (
    SELECT id FROM {t}
     WHERE status = 'PROCESSING' AND lease_expires_at <= now()
       AND lease_expires_at > coalesce(to_timestamp($9::float8), '-infinity')
       AND error_message = {lapsed}
     ORDER BY lease_expires_at
     LIMIT $5
       FOR UPDATE SKIP LOCKED
), due AS (
    SELECT id FROM {t} AS c
     WHERE {due} AND next_attempt_at <= now() {gate}
     ORDER BY next_attempt_at
     LIMIT $1
       FOR UPDATE SKIP LOCKED
), claimed AS (
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
        UNION ALL SELECT id, false FROM fresh
        UNION ALL SELECT id, false FROM due) AS c
 WHERE e.id = c.id
RETURNING {event_columns}, e.error_message, c.suspect
)
SELECT k.*, snap.s::text, extract(epoch FROM snap.at)::float8,
       (SELECT count(*) FROM cand)::int8,
       last.stream_xid::text, last.stream_seq,
       ARRAY(SELECT DISTINCT stream_xid::text FROM cand
              WHERE id NOT IN (SELECT id FROM fresh)),
       (SELECT count(*) FROM lapsed)::int8, (SELECT count(*) FROM suspect)::int8
  FROM snap
  LEFT JOIN (SELECT stream_xid, stream_seq FROM cand
              ORDER BY stream_xid DESC, stream_seq DESC LIMIT 1) AS last ON true
  LEFT JOIN claimed AS k ON true";

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

/// The safety net below a relay's claim cursor (see `crate::relay::cursor`): transaction
/// ids of fresh rows at or below position $1/$2 (at most 1,000), and the earliest lease in
/// flight that lapsed at or before $3 (epoch seconds). Reads every entry claims left below
/// the position while vacuum cannot remove them, so it runs apart from the claims.
const SWEEP: &str = "
SELECT ARRAY(SELECT DISTINCT stream_xid::text FROM (
           SELECT stream_xid FROM {t}
            WHERE {fresh} AND (stream_xid, stream_seq) <= ($1::text::xid8, $2::int8)
            LIMIT 1000) AS s),
       extract(epoch FROM (SELECT min(lease_expires_at) FROM {t}
                            WHERE status = 'PROCESSING'
                              AND lease_expires_at <= to_timestamp($3::float8)))::float8";

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
/// lease lapsed (and whose rows another relay re-claimed) updates nothing. Two forms, which
/// differ in how they meet a row another session holds locked: [`record_waiting`], the
/// normal one, and [`record_skip_locked`]. Delays are computed on the database clock, so
/// relay hosts with skewed clocks agree. An infinite delay holds the row for a paused
/// endpoint (next_attempt_at = 'infinity', out of every claim's reach until a resume
/// releases it).
/// Arrays: $1 id, $2 token, $3 status, $4 failed attempts to add, $5 error, $6 delay seconds
/// (NULL keeps next_attempt_at), $7 comma-joined delivered_to, $8 the attempts made (a JSON
/// array, NULL for none) to append to the row's history, $9 for a held row the comma-joined
/// paused endpoints it waits for.
///
/// The paused set is read and locked once per statement, not once per held row: per row,
/// a bitmap scan and a row lock for every event held behind an open circuit were about 40 %
/// of what a held event cost the database beyond a completed one (`bench/work.sh`).
const RECORD: &str = "
WITH held_sets AS MATERIALIZED (
    -- The batch's sets of endpoints to hold rows for, comma-joined as $9 gives them: in a
    -- batch held behind one open circuit, one set for hundreds of rows.
    SELECT DISTINCT h AS held_for FROM unnest($9::text[]) AS h WHERE h <> ''
), paused AS MATERIALIZED (
    -- Those sets whose endpoints are all still paused, each checked once for the statement,
    -- not once per held row. The paused endpoints among those named are locked, once: the
    -- row locks order this against a resume, so either the resume's DELETE waits for this
    -- statement (and its release, run after, finds the row held for it), or this statement
    -- waits for the DELETE (and finds that endpoint no longer paused).
    SELECT coalesce(array_agg(s.held_for), ARRAY[]::text[]) AS held_for
      FROM held_sets AS s
     WHERE string_to_array(s.held_for, ',') <@ (
           SELECT coalesce(array_agg(p.endpoint::text), ARRAY[]::text[])
             FROM (SELECT endpoint FROM {paused}
                    WHERE endpoint = ANY (string_to_array(
                              (SELECT string_agg(held_for, ',') FROM held_sets), ','))
                      FOR SHARE) AS p)
), {outcomes_cte}
UPDATE {t} AS e SET
    status = u.status::{st},
    retry_count = e.retry_count + u.failed,
    -- The latest failure while the event is still owed; a delivery clears it (the history
    -- in attempts keeps every error).
    error_message = CASE WHEN u.status = 'COMPLETED' THEN NULL
                         ELSE COALESCE(u.error, e.error_message) END,
    next_attempt_at = CASE WHEN u.delay IS NULL THEN e.next_attempt_at
                           WHEN h.held THEN 'infinity'
                           WHEN u.delay = 'Infinity' THEN now()
                           ELSE now() + make_interval(secs => u.delay) END,
    held_for = CASE WHEN h.held THEN string_to_array(u.held_for, ',') END,
    processed_at = CASE WHEN u.status = 'COMPLETED' THEN {processed_now}
                        ELSE e.processed_at END,
    delivered_to = string_to_array(u.delivered, ','),
    -- The common case, a first attempt, only parses the new entries; the cap is worked out
    -- only for a long history.
    attempts = CASE WHEN u.log IS NULL THEN e.attempts
                    WHEN e.attempts IS NULL THEN u.log::jsonb
                    WHEN jsonb_array_length(e.attempts) < {kept_minus_batch}
                    THEN e.attempts || u.log::jsonb
                    ELSE {keep_latest:e.attempts || u.log::jsonb} END,
    -- The token stays: a row put back to PENDING is then found by its due time (see DUE).
    lease_expires_at = NULL
  FROM {outcomes}
       -- Held only while every endpoint it waits for is still paused: if one was resumed
       -- meanwhile, the row is due now and goes out to it (and is held again for the
       -- others).
       CROSS JOIN LATERAL (
           SELECT u.delay = 'Infinity'
                  AND u.held_for = ANY ((SELECT held_for FROM paused)::text[])) AS h(held)
 WHERE {ours}
RETURNING e.id::text";

/// The batch's outcomes as [`RECORD`] reads them, one row each.
const OUTCOMES: &str = "unnest($1::text[], $2::uuid[], $3::text[], $4::int4[], $5::text[],
                        $6::float8[], $7::text[], $8::text[], $9::text[])
                 AS u(id, token, status, failed, error, delay, delivered, log, held_for)";

/// How long [`RECORD`] waits for a row lock before it gives up (SQLSTATE 55P03) and the
/// batch is written again by `record_skip_locked`, which leaves locked rows out. The waits
/// it is meant to sit out (this relay's lease extension, another relay's claim of a lapsed
/// row, a resume) take milliseconds.
pub const RECORD_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// [`RECORD`] as it normally runs: it waits for a locked row, up to [`RECORD_LOCK_WAIT`].
/// Without a bound, one row locked by another session (an app's open transaction that
/// updated or locked the event, an admin's `SELECT ... FOR UPDATE`) held up every outcome of
/// its batch, and of every batch after it, for as long as the lock was held. The timeout is
/// set for this statement's own transaction (`set_config(..., true)`, as the claim sets
/// `synchronous_commit`, so nothing is left on a session a pooler hands on), in a one-row CTE
/// that the join reads before it yields a row to update, hence before any row lock is
/// waited for.
fn record_waiting() -> String {
    RECORD
        .replace(
            "{outcomes_cte}",
            &format!(
                "patience AS MATERIALIZED (SELECT set_config('lock_timeout', '{}', true))",
                RECORD_LOCK_WAIT.as_millis()
            ),
        )
        .replace(
            "{outcomes}",
            &format!("{OUTCOMES}\n       CROSS JOIN patience"),
        )
}

/// [`RECORD`] for a batch that met a locked row: rows another session holds locked are left
/// out, not waited for, and the recorder writes their outcomes later (telling them from
/// fenced rows with [`STILL_CLAIMED`]). Locking the batch's rows first costs about a tenth
/// more of the database's work per event (`bench/work.sh`), which is why it is not the
/// normal path.
fn record_skip_locked() -> String {
    RECORD
        .replace(
            "{outcomes_cte}",
            &format!(
                "mine AS MATERIALIZED (\n    SELECT u.* FROM {OUTCOMES}\n      JOIN {{t}} AS e ON {{ours}}\n       FOR NO KEY UPDATE OF e SKIP LOCKED)"
            ),
        )
        .replace("{outcomes}", "mine AS u")
}

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

/// Paused endpoints (the table migration 007 creates beside the outbox): by an operator, or
/// by a circuit breaker (migration 009, see [`crate::db::circuit`]). Columns: endpoint,
/// reason, seconds until a probe is due, seconds it has been failing, the last error, since
/// when (RFC 3339), by whom.
const PAUSED_LIST: &str = "
SELECT endpoint, reason, extract(epoch FROM retry_at - now())::float8,
       extract(epoch FROM now() - failing_since)::float8, last_error,
       to_char(paused_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), paused_by
  FROM {paused} ORDER BY endpoint";
/// $1 endpoint, $2 who. Pausing twice keeps the first time; pausing an endpoint whose
/// circuit is open (or that was disabled) makes it the operator's pause.
const PAUSE: &str = "
INSERT INTO {paused} (endpoint, paused_by) VALUES ($1, $2)
ON CONFLICT (endpoint) DO UPDATE
   SET reason = 'operator', paused_at = now(), paused_by = excluded.paused_by, retry_at = NULL
 WHERE {paused}.reason <> 'operator'";
const RESUME: &str = "DELETE FROM {paused} WHERE endpoint = $1 RETURNING 1";
/// Rows held for endpoint $2 (next_attempt_at = 'infinity', see [`RECORD`]) become due, $1
/// at a time; rows held for other endpoints only are not touched. One still owed to another
/// endpoint that stays paused is held again when claimed. Found through [`HELD_KEYS`],
/// `= ANY (ARRAY(...))` as in [`FAIL_UNKNOWN`].
const RELEASE_HELD: &str = "
WITH RECURSIVE {held_keys}
UPDATE {t} SET next_attempt_at = now(), held_for = NULL
 WHERE id = ANY (ARRAY(
     SELECT r.id FROM held_keys AS k
       CROSS JOIN LATERAL (SELECT id FROM {t} WHERE {held} AND {held_for} = k.held_for
                            LIMIT $1 FOR UPDATE SKIP LOCKED) AS r
      WHERE k.held_for && ARRAY[$2::text, '*']
      LIMIT $1))
RETURNING 1";

/// Rows held for an endpoint that is not paused now, or not among $2 (the configured ones),
/// become due, $1 at a time: at a relay's start, for holds whose resume it may have missed
/// (its config dropped the endpoint, or a release was cut short). Reads every held row once,
/// on the due-and-held index.
const RELEASE_STALE: &str = "
UPDATE {t} SET next_attempt_at = now(), held_for = NULL
 WHERE id = ANY (ARRAY(SELECT id FROM {t}
                        WHERE {held}
                          AND NOT {held_for} <@ ARRAY(SELECT endpoint::text FROM {paused}
                                                        WHERE endpoint = ANY ($2::text[]))
                        LIMIT $1 FOR UPDATE SKIP LOCKED))
RETURNING 1";

/// Extend the leases of work in progress. $1 ids, $2 tokens, $3 lease seconds. Rows locked
/// right now are skipped, not waited for: they are being recorded (which ends the lease) or
/// claimed after a lapse, and the next round, a third of a lease later, tries again. Waiting
/// deadlocked with [`RECORD`], which locks the same rows in another order.
const EXTEND: &str = "
UPDATE {t} SET lease_expires_at = now() + make_interval(secs => $3)
 WHERE id = ANY (ARRAY(SELECT e.id FROM {t} AS e
                         JOIN unnest($1::text[], $2::uuid[]) AS u(id, token) ON {ours}
                          FOR NO KEY UPDATE OF e SKIP LOCKED))
RETURNING id::text";

/// Of a batch of claimed rows ($1 ids, $2 tokens), those still claimed under their token,
/// read without waiting for any lock: an outcome [`RECORD`] left out is either fenced (its
/// row is not among these) or found its row locked by another session (it is), and is then
/// written later. Run only when [`RECORD`] left some out.
const STILL_CLAIMED: &str = "
SELECT e.id::text, e.claim_token
  FROM {t} AS e JOIN unnest($1::text[], $2::uuid[]) AS u(id, token) ON {ours}";

/// Seconds until a retry falls due (NULL: none waits; held rows, 'infinity', never fall due
/// by themselves), and, when $2, until the next lease lapses (NULL: none is held). Two min()
/// lookups on partial indexes. The lease index holds an entry for every claim of the last
/// lease period that vacuum has not yet removed, so the relay asks only when it must (see
/// `crate::relay::cursor`), and only past $1 (as in [`CLAIM`]).
const NEXT_DUE: &str = "
SELECT extract(epoch FROM (SELECT min(next_attempt_at) FROM {t}
                            WHERE {due} AND next_attempt_at < 'infinity') - now())::float8,
       CASE WHEN $2 THEN extract(epoch FROM (
           SELECT min(lease_expires_at) FROM {t}
            WHERE status = 'PROCESSING'
              AND lease_expires_at > coalesce(to_timestamp($1::float8), '-infinity')) - now())::float8
       END";

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
/// In epoch seconds, so a created_at without time zone counts as UTC (see the module's
/// header).
const OLDEST_PENDING: &str = "
SELECT (extract(epoch FROM now()) - extract(epoch FROM least(
    (SELECT min(created_at) FROM {t} WHERE {fresh}),
    (SELECT min(created_at) FROM {t} WHERE {due}))))::float8";

/// `retry --id`: FAILED rows back to PENDING, count and error reset (the attempts history
/// keeps the errors). delivered_to is kept, so endpoints that already accepted are not sent
/// the event again. A row keeps (or, if it never had one,
/// gets) a claim token: relays have passed its stream position, so it must be found by its
/// due time (see [`DUE`]).
const RETRY_IDS: &str = "
UPDATE {t} SET status = 'PENDING'::{st}, retry_count = 0, error_message = NULL,
       next_attempt_at = now(),
       lease_expires_at = NULL, claim_token = coalesce(claim_token, gen_random_uuid()),
       skipped_at = NULL
 WHERE id = ANY($1::text[]::{id}[]) AND status = 'FAILED'
RETURNING id::text";

/// `retry --failed [--type GLOB]`, in batches of $2 rows; $1 is a LIKE pattern.
const RETRY_FAILED: &str = "
UPDATE {t} SET status = 'PENDING'::{st}, retry_count = 0, error_message = NULL,
       next_attempt_at = now(),
       lease_expires_at = NULL, claim_token = coalesce(claim_token, gen_random_uuid()),
       skipped_at = NULL
 WHERE id = ANY (ARRAY(SELECT id FROM {t} WHERE status = 'FAILED' AND event_type LIKE $1
                      LIMIT $2 FOR UPDATE SKIP LOCKED))";

/// Which events `replay` sends again: COMPLETED ones endpoint $1 accepted, created between
/// $2 and $3 seconds ago, whose type is LIKE $4. Spelled once for the count and the move.
const REPLAY_WHERE: &str = "status = 'COMPLETED' AND $1::text = ANY (delivered_to)
       AND created_at >= {created_now} - make_interval(secs => $2::float8)
       AND created_at < {created_now} - make_interval(secs => $3::float8)
       AND event_type LIKE $4::text";

/// `replay --dry-run` (the default): how many events a replay would send again.
const REPLAY_COUNT: &str = "SELECT count(*)::int8 FROM {t} WHERE {replay_where}";

/// `replay`: the next $7 matching events after id $6 (NULL: from the first), in id order,
/// back to PENDING with every other sink ($5) added to delivered_to and the replayed one
/// ($1) taken out, so that only it is sent them again: a sink added since, which never had
/// them, is recorded as having them rather than sent old events. In id
/// order, so that an event replayed and delivered again meanwhile is not found a second
/// time. Found `FOR UPDATE` (not SKIP LOCKED: a row briefly locked would be missed for
/// good). Claim token and count reset as for `retry`. Returns how many moved and the last
/// id looked at.
const REPLAY: &str = "
WITH batch AS (
    SELECT id FROM {t}
     WHERE {replay_where}
       AND ($6::text IS NULL OR id > $6::text::{id})
     ORDER BY id LIMIT $7 FOR UPDATE),
moved AS (
    UPDATE {t} AS r SET status = 'PENDING'::{st}, retry_count = 0, error_message = NULL,
           next_attempt_at = now(), lease_expires_at = NULL,
           claim_token = coalesce(r.claim_token, gen_random_uuid()), skipped_at = NULL,
           delivered_to = ARRAY(SELECT DISTINCT name
                                  FROM unnest(r.delivered_to || $5::text[]) AS name
                                 WHERE name <> $1::text)
      FROM batch WHERE r.id = batch.id
    RETURNING 1)
SELECT (SELECT count(*) FROM moved)::int8, (SELECT id::text FROM batch ORDER BY id DESC LIMIT 1)";

/// `purge`: delete COMPLETED rows processed before the cutoff ($1 seconds ago), $2 at a time,
/// so no statement holds locks or bloats WAL for long. `= ANY (ARRAY(...))` as in
/// [`FAIL_UNKNOWN`].
const PURGE: &str = "
DELETE FROM {t} WHERE id = ANY (ARRAY(
    SELECT id FROM {t}
     WHERE status = 'COMPLETED' AND processed_at < {processed_now} - make_interval(secs => $1)
     LIMIT $2 FOR UPDATE SKIP LOCKED))";

/// `publish` when the database fills in the id. $1 type, $2 org, $3 entity type, $4 entity
/// id, $5 payload as JSON text. created_at is given, not left to its default: a default of
/// CURRENT_TIMESTAMP in a column without time zone is the session's local time.
const PUBLISH: &str = "
INSERT INTO {t} (event_type, org_id, entity_type, entity_id, payload, created_at)
VALUES ($1, $2, $3, $4, $5::text::jsonb, {created_now}) RETURNING id::text";
/// `publish` when the app's ORM generates ids client-side: $6 is a fresh UUID.
const PUBLISH_WITH_ID: &str = "
INSERT INTO {t} (id, event_type, org_id, entity_type, entity_id, payload, created_at)
VALUES ($6::text::{id}, $1, $2, $3, $4, $5::text::jsonb, {created_now}) RETURNING id::text";

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
/// table's wake lock ([`crate::db::table::TableSettings::wake_lock`]) exclusively, at session level, on
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
    pub record_skip_locked: String,
    pub extend: String,
    pub still_claimed: String,
    pub next_due: String,
    pub sweep: String,
    pub fail_unknown: String,
    pub status_counts: String,
    pub oldest_pending: String,
    pub retry_ids: String,
    pub retry_failed: String,
    pub skip_ids: String,
    pub blocked_keys: String,
    pub purge: String,
    pub replay_count: String,
    pub replay: String,
    pub publish: String,
    pub stream_read: String,
    pub paused_list: String,
    pub pause: String,
    pub resume: String,
    pub release_held: String,
    pub release_stale: String,
    pub circuit_open: String,
    pub circuit_probe: String,
    pub circuit_probe_failed: String,
    pub circuit_close: String,
    pub circuit_held: String,
    pub circuit_claim_held: String,
    pub audit_insert: String,
    pub audit_list: String,
    /// Quoted `schema.table`, for messages.
    pub table: String,
    pub shape: TableShape,
}

impl Queries {
    /// The statements for the table in `settings` (its paused table, its ordered types).
    pub fn for_table(settings: &TableSettings, shape: &TableShape) -> Self {
        Self::new(
            &settings.qualified_table(),
            &settings.qualified_paused_table(),
            &settings.qualified_audit_table(),
            shape,
            &settings.ordered_types,
        )
    }

    /// Every statement by name, as `outbox-relay statements` prints them: for a DBA's review
    /// and EXPLAIN, and for the benches, which run these rather than copies. The queue
    /// counts ([`queue_read`]) are among them. The list destructures `Self` without `..`, so
    /// a statement added to the struct and not here does not compile.
    pub fn named(&self) -> Vec<(&'static str, String)> {
        macro_rules! named {
            ($($field:ident),* $(,)?) => {{
                let Self { $($field,)* table, shape: _ } = self;
                vec![$((stringify!($field), $field.clone()),)* ("queue_counts", queue_read(table))]
            }};
        }
        named!(
            claim,
            record,
            record_skip_locked,
            extend,
            still_claimed,
            next_due,
            sweep,
            fail_unknown,
            status_counts,
            oldest_pending,
            retry_ids,
            retry_failed,
            skip_ids,
            blocked_keys,
            purge,
            replay_count,
            replay,
            publish,
            stream_read,
            paused_list,
            pause,
            resume,
            release_held,
            release_stale,
            circuit_open,
            circuit_probe,
            circuit_probe_failed,
            circuit_close,
            circuit_held,
            circuit_claim_held,
            audit_insert,
            audit_list,
        )
    }

    /// `paused_table`, `audit_table`: quoted and qualified. `ordered_types`: LIKE patterns of the event
    /// types delivered in entity order ([`TableSettings::ordered_types`]); empty for none.
    pub fn new(
        qualified_table: &str,
        paused_table: &str,
        audit_table: &str,
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
                .replace("{replay_where}", REPLAY_WHERE)
                .replace("{event_columns}", EVENT_COLUMNS)
                .replace("{gate}", gate)
                .replace("{fresh}", FRESH)
                .replace("{held_keys}", HELD_KEYS)
                // {held} names {due}: replaced before it.
                .replace("{held}", HELD)
                .replace("{held_for}", HELD_FOR)
                .replace("{due}", DUE)
                .replace("{ours}", OURS)
                .replace("{in_flight}", IN_FLIGHT)
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
                .replace("{audit}", audit_table)
                // One delivery adds at most one entry per endpoint; below this, no cut.
                .replace(
                    "{kept_minus_batch}",
                    &(ATTEMPTS_KEPT - MAX_ENDPOINTS).to_string(),
                )
                .replace("{id}", shape.id_type)
                .replace("{st}", &shape.status_type)
                .replace("{created_now}", shape.created_at.now())
                .replace("{processed_now}", shape.processed_at.now())
        };
        Self {
            claim: r(CLAIM),
            record: r(&record_waiting()),
            record_skip_locked: r(&record_skip_locked()),
            extend: r(EXTEND),
            still_claimed: r(STILL_CLAIMED),
            next_due: r(NEXT_DUE),
            sweep: r(SWEEP),
            fail_unknown: r(FAIL_UNKNOWN),
            status_counts: r(STATUS_COUNTS),
            oldest_pending: r(OLDEST_PENDING),
            retry_ids: r(RETRY_IDS),
            retry_failed: r(RETRY_FAILED),
            skip_ids: r(SKIP_IDS),
            blocked_keys: r(BLOCKED_KEYS),
            purge: r(PURGE),
            replay_count: r(REPLAY_COUNT),
            replay: r(REPLAY),
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
            release_stale: r(RELEASE_STALE),
            circuit_open: r(super::circuit::OPEN),
            circuit_probe: r(super::circuit::PROBE),
            circuit_probe_failed: r(super::circuit::PROBE_FAILED),
            circuit_close: r(super::circuit::CLOSE),
            circuit_held: r(super::circuit::HELD),
            circuit_claim_held: r(super::circuit::CLAIM_HELD),
            audit_insert: r(super::audit::INSERT),
            audit_list: r(super::audit::LIST),
            table: qualified_table.to_owned(),
            shape: shape.clone(),
        }
    }
}

/// The queue gauges in one statement: PENDING, PROCESSING and FAILED counts and the oldest
/// PENDING row's age, each on a partial index (PENDING rows are in two, see [`FRESH`]).
pub fn queue_read(qualified_table: &str) -> String {
    format!(
        "SELECT (SELECT count(*) FROM {t} WHERE {FRESH}) + (SELECT count(*) FROM {t} WHERE {DUE}),
                (SELECT count(*) FROM {t}
                  WHERE status = 'PROCESSING' AND lease_expires_at IS NOT NULL),
                (SELECT count(*) FROM {t} WHERE status = 'FAILED'),
                ({oldest})",
        t = qualified_table,
        oldest = OLDEST_PENDING
            .trim()
            .replace("{fresh}", FRESH)
            .replace("{due}", DUE)
            .replace("{t}", qualified_table)
    )
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
                r#""public"."OutboxEvent_relay_audit""#,
                &TableShape::standard(),
                &ordered,
            );
            for (name, sql) in q.named() {
                assert!(
                    !sql.contains('{'),
                    "unrendered placeholder in {name}: {sql}"
                );
            }
            assert_eq!(q.claim.contains("EXISTS"), !ordered.is_empty());
        }
    }

    #[test]
    fn timestamps_without_time_zone_are_written_and_compared_in_utc() {
        use crate::db::shape::Clock;
        let new = |shape: &TableShape| {
            Queries::new(r#""public"."OutboxEvent""#, r#""p""#, r#""a""#, shape, &[])
        };
        let utc = "(now() AT TIME ZONE 'UTC')";
        let q = new(&TableShape::standard());
        for sql in [&q.record, &q.purge, &q.publish] {
            assert!(!sql.contains(utc), "{sql}");
        }
        let q = new(&TableShape {
            created_at: Clock::UtcWallClock,
            processed_at: Clock::UtcWallClock,
            ..TableShape::standard()
        });
        assert!(q.record.contains(&format!("THEN {utc}")), "{}", q.record);
        assert!(
            q.purge.contains(&format!("processed_at < {utc} -")),
            "{}",
            q.purge
        );
        assert!(
            q.publish.contains(&format!("{utc}) RETURNING")),
            "{}",
            q.publish
        );
    }
}
