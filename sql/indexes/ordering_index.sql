-- Entity-ordered delivery (ordering = "entity"). The claim asks, for each due ordered row,
-- whether an earlier row of its key is unfinished. Only unfinished rows are in this index,
-- so the probe stays cheap however many COMPLETED rows the table keeps.
CREATE INDEX CONCURRENTLY IF NOT EXISTS {{ordering_idx}} ON {{table}} (entity_type, entity_id, stream_seq)
    WHERE status IN ('PENDING', 'PROCESSING', 'FAILED') AND skipped_at IS NULL;
