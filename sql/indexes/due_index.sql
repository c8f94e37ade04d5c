-- Rows the relay put back to PENDING (a retry after its backoff, a row held for a paused
-- endpoint or released at shutdown, one an operator retried) are found by their due time.
-- Only they are here, so the claim's walk from the low end passes few dead entries. Rows
-- from before the stream columns existed have no position and wait here too.
CREATE INDEX CONCURRENTLY IF NOT EXISTS {{due_idx}} ON {{table}} (next_attempt_at)
    WHERE status = 'PENDING' AND (claim_token IS NOT NULL OR stream_xid IS NULL OR stream_seq IS NULL);
