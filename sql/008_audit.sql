-- The audit log (issue 20): one row per operator action (pause, resume, retry, skip, replay,
-- purge, enable), from the dashboard or the CLI, written right after the action. `actor` is
-- the admin token's name (dashboard) or the OS user (CLI), as the relay was told it;
-- `db_role` is the database role that wrote the row, which the client cannot choose. Rows
-- are few (one per action, not per event) and kept: delete old ones by hand if ever needed.
CREATE TABLE IF NOT EXISTS {{schema}}.{{audit_table}} (
    id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at      timestamptz NOT NULL DEFAULT now(),
    actor   text NOT NULL,
    via     text NOT NULL,
    action  text NOT NULL,
    target  text NOT NULL,
    detail  jsonb NOT NULL DEFAULT '{}',
    db_role text NOT NULL DEFAULT current_user
);
