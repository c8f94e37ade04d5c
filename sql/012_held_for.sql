-- Which paused endpoints a held row waits for (issue 20). A row is held (next_attempt_at =
-- 'infinity') while every endpoint still owed it is paused; `held_for` names them, so a
-- resume, a closed circuit or an enabled endpoint releases only the rows held for it, never
-- the backlog held for another endpoint that stays disabled. NULL on every row that is not
-- held: an insert writes nothing here (the due-and-held index,
-- sql/indexes/due_held_index.sql, keys held rows by it). Rows held by an earlier release have
-- NULL here and count as held for every endpoint.
ALTER TABLE {{table}} ADD COLUMN IF NOT EXISTS held_for text[];
