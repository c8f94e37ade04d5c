-- Entity-ordered delivery (ordering = "entity"). A FAILED event holds back the later events
-- of its (entity_type, entity_id) until an operator retries it or skips it; skipped_at
-- records the skip (the row stays FAILED: it was never delivered).
ALTER TABLE {{table}}
    ADD COLUMN IF NOT EXISTS skipped_at timestamptz;
-- The claim asks, for each due ordered row, whether an earlier row of its key is unfinished.
-- Only unfinished rows are in this index, so the probe stays cheap however many COMPLETED
-- rows the table keeps.
CREATE INDEX IF NOT EXISTS {{ordering_idx}} ON {{table}} (entity_type, entity_id, stream_seq)
    WHERE status IN ('PENDING', 'PROCESSING', 'FAILED') AND skipped_at IS NULL;
