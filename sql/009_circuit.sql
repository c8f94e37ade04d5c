-- Circuit breakers (issue 20): an endpoint whose circuit opened, or that was disabled after
-- failing for too long, is a row of the paused set like an operator's pause, so every relay
-- holds its events the same way. `reason` says which: 'operator' (the dashboard's or the
-- CLI's pause), 'circuit' (open: no requests until `retry_at`, then one relay sends a single
-- probe) or 'disabled' (failing since `failing_since` for longer than the endpoint's
-- `disable_after`: no more probes until an operator resumes it). `last_error` is the latest
-- failure that kept it open.
ALTER TABLE {{schema}}.{{paused_table}}
    ADD COLUMN IF NOT EXISTS reason text NOT NULL DEFAULT 'operator',
    ADD COLUMN IF NOT EXISTS retry_at timestamptz,
    ADD COLUMN IF NOT EXISTS failing_since timestamptz,
    ADD COLUMN IF NOT EXISTS last_error text;
