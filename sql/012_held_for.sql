-- Which paused endpoints a held row waits for (issue 20). A row is held (next_attempt_at =
-- 'infinity') while every endpoint still owed it is paused; `held_for` names them, so a
-- resume, a closed circuit or an enabled endpoint releases only the rows held for it, never
-- the backlog held for another endpoint that stays disabled. NULL on every row that is not
-- held: an insert writes nothing here, and no index entry (the index in
-- sql/indexes/held_index.sql holds held rows only). Rows held by an earlier release have
-- NULL here and count as held for every endpoint.
ALTER TABLE {{table}} ADD COLUMN IF NOT EXISTS held_for text[];
