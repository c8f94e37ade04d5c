-- Wake relays when events are inserted: one NOTIFY per statement (not per row), delivered
-- when the inserting transaction commits, and never for one that rolls back.
CREATE OR REPLACE FUNCTION {{schema}}.{{notify_fn}}() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify({{channel_literal}}, '');
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS outbox_relay_notify ON {{table}};
CREATE TRIGGER outbox_relay_notify
    AFTER INSERT ON {{table}}
    FOR EACH STATEMENT EXECUTE FUNCTION {{schema}}.{{notify_fn}}();
