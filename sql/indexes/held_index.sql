-- Held rows by the endpoints they wait for (see 012_held_for.sql): a resume finds the rows
-- held for its endpoint here, and a probe its candidates. Only held rows are in it, so it
-- costs the app's inserts and the relay's happy path nothing. A row held by an earlier
-- release (held_for NULL) is indexed as held for '*', which every release matches (no
-- endpoint can be named '*'). Without GIN's pending list (fastupdate), whose entries every
-- search reads whole: a search for one endpoint then reads its own entries only.
CREATE INDEX CONCURRENTLY IF NOT EXISTS {{held_idx}} ON {{table}}
    USING gin ((coalesce(held_for, ARRAY['*'::text]))) WITH (fastupdate = off)
    WHERE status = 'PENDING' AND next_attempt_at = 'infinity';
