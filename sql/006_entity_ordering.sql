-- Entity-ordered delivery (ordering = "entity"). A FAILED event holds back the later events
-- of its (entity_type, entity_id) until an operator retries it or skips it; skipped_at
-- records the skip (the row stays FAILED: it was never delivered).
ALTER TABLE {{table}}
    ADD COLUMN IF NOT EXISTS skipped_at timestamptz;
-- The index the ordering gate probes is optional: sql/optional/ordering_index.sql.
