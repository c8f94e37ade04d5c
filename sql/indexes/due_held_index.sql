-- Rows the relay put back to PENDING (a retry after its backoff, a row held for a paused
-- endpoint or released at shutdown, one an operator retried) are found by their due time.
-- Only they are here, so the claim's walk from the low end passes few dead entries. Rows
-- from before the stream columns existed have no position and wait here too.
--
-- Held rows (next_attempt_at = 'infinity', see 012_held_for.sql) sit at the end, sorted by
-- the endpoints they wait for: a resume or a probe reads the few distinct sets of endpoints
-- and then only the rows held for a set that names its endpoint. A row held by an earlier
-- release (held_for NULL) is keyed as held for '*', which every release matches (no endpoint
-- can be named '*'); rows that are not held carry the same key, which nothing reads. So
-- holding an event writes this index's entry and no other: a GIN index on `held_for` (the
-- release before) cost each held event a second entry, about half of what an endpoint that
-- is down cost the healthy ones (bench/work.sh).
CREATE INDEX CONCURRENTLY IF NOT EXISTS {{due_held_idx}} ON {{table}}
    (next_attempt_at, (coalesce(held_for, ARRAY['*'::text])))
    WHERE status = 'PENDING' AND (claim_token IS NOT NULL OR stream_xid IS NULL OR stream_seq IS NULL);
