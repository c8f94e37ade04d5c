-- The outbox table, when the app has not created one. When an ORM already made it, nothing
-- here runs (IF NOT EXISTS) and the later steps adopt it instead.
CREATE TABLE IF NOT EXISTS {{table}} (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    org_id        text,
    event_type    text NOT NULL,
    entity_type   text,
    entity_id     text,
    payload       jsonb NOT NULL,
    status        text NOT NULL DEFAULT 'PENDING',
    retry_count   integer NOT NULL DEFAULT 0,
    error_message text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    processed_at  timestamptz
);
