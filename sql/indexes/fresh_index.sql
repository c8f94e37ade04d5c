-- The claim finds rows the relay has never claimed by their position in the stream of
-- commits (stream_xid, stream_seq), starting where its previous claim stopped: it never walks
-- the entries that claimed rows left behind, which vacuum may not yet (or, while any old
-- snapshot lives, cannot) remove. A row leaves this index when first claimed.
CREATE INDEX CONCURRENTLY IF NOT EXISTS {{fresh_idx}} ON {{table}} (stream_xid, stream_seq)
    WHERE status = 'PENDING' AND claim_token IS NULL;
