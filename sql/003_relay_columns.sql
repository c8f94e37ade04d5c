-- Columns the relay needs. App-owned ones are added only when absent (an adopted table may
-- lack the optional ones); existing columns and data are never altered.
ALTER TABLE {{table}}
    ADD COLUMN IF NOT EXISTS org_id        text,
    ADD COLUMN IF NOT EXISTS entity_type   text,
    ADD COLUMN IF NOT EXISTS entity_id     text,
    ADD COLUMN IF NOT EXISTS status        text NOT NULL DEFAULT 'PENDING',
    ADD COLUMN IF NOT EXISTS retry_count   integer NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS error_message text,
    ADD COLUMN IF NOT EXISTS created_at    timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN IF NOT EXISTS processed_at  timestamptz,
    -- When a PENDING row may next be claimed: now() for new rows, later after a failure.
    ADD COLUMN IF NOT EXISTS next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    -- When a PROCESSING row's claim lapses unless its relay extends it.
    ADD COLUMN IF NOT EXISTS lease_expires_at timestamptz,
    -- Fencing token of the current claim: an outcome is recorded only under the same token,
    -- so a relay that lost its lease cannot overwrite a newer claim.
    ADD COLUMN IF NOT EXISTS claim_token      uuid,
    -- Webhook names that already accepted the event; retries skip them.
    ADD COLUMN IF NOT EXISTS delivered_to     text[] NOT NULL DEFAULT '{}';

-- The claim's indexes (of PENDING rows and of leases) are built concurrently after these
-- steps: sql/indexes/.
-- Rows with a status the relay does not know (NULL, a typo): the poll marks them FAILED.
CREATE INDEX IF NOT EXISTS {{unknown_idx}} ON {{table}} (created_at)
    WHERE status IS NULL OR status NOT IN ('PENDING', 'PROCESSING', 'COMPLETED', 'FAILED');
-- Retention purges COMPLETED rows by processed_at; dead letters are listed by status.
CREATE INDEX IF NOT EXISTS {{completed_idx}} ON {{table}} (processed_at)
    WHERE status = 'COMPLETED';
CREATE INDEX IF NOT EXISTS {{failed_idx}} ON {{table}} (created_at)
    WHERE status = 'FAILED';
