-- Rate limits shared by every relay on the table (issue 20): one token bucket per endpoint
-- with a `rate_limit`. A relay takes tokens a few at a time (one short UPDATE per batch, the
-- refill worked out from `updated_at`), so the limit holds across instances, not per
-- instance. `blocked_until`: a 429 with Retry-After stops the grants for everyone until
-- then. `last_grant` is what the latest UPDATE handed out (read by its RETURNING).
CREATE TABLE IF NOT EXISTS {{schema}}.{{rates_table}} (
    endpoint      text PRIMARY KEY,
    tokens        float8 NOT NULL DEFAULT 0,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    blocked_until timestamptz,
    last_grant    int4 NOT NULL DEFAULT 0
) WITH (fillfactor = 50);
