-- The dashboard (issue 7). `attempts` is the event's delivery history, newest last: one JSON
-- object per attempt ({at, endpoint, ok, status, error, ms}), appended by the same UPDATE
-- that records the outcome (no extra statement per delivery), the latest 100 kept.
ALTER TABLE {{table}}
    ADD COLUMN IF NOT EXISTS attempts jsonb;
-- Webhook endpoints an operator paused from the dashboard. Every relay on this table reads
-- it, so a pause holds on all instances and survives restarts. While an endpoint is paused,
-- events still owed to it wait as PENDING with next_attempt_at = 'infinity' ("held");
-- resuming puts them back to now().
CREATE TABLE IF NOT EXISTS {{schema}}.{{paused_table}} (
    endpoint  text PRIMARY KEY,
    paused_at timestamptz NOT NULL DEFAULT now(),
    paused_by text
);
