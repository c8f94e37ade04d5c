-- Wake a sleeping relay when events are inserted, without taxing commits while relays are
-- awake. Every inserting statement takes the wake-up lock in shared mode (transaction-level,
-- so held until commit; shared holders never wait for each other). A relay that runs out of
-- work takes that lock exclusively before its last claim and sleeps holding it (see
-- src/relay/doze.rs). The shared lock is then unavailable, and only then does the insert
-- NOTIFY: one per statement, delivered at commit, never for a rollback. While every relay is
-- busy (or none listens) inserts send nothing, so they do not queue behind the cluster-wide
-- lock PostgreSQL takes to commit a NOTIFY.
--
-- The lock is taken in the trigger's WHEN condition, which PostgreSQL evaluates itself at
-- the end of the statement: while the lock is granted the trigger is not queued at all and
-- no PL/pgSQL function runs, so the insert pays for one lock and nothing else.
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
    FOR EACH STATEMENT
    WHEN (NOT pg_try_advisory_xact_lock_shared({{wake_lock_class}}, {{wake_lock_key}}))
    EXECUTE FUNCTION {{schema}}.{{notify_fn}}();
