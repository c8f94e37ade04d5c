-- Server-Sent Events replay rows in the order their transactions became visible, which is not
-- the order of ids or sequence numbers (a later-started transaction can commit first).
-- stream_xid is the inserting transaction's id: with pg_current_snapshot() it tells exactly
-- which rows a reader has already seen. stream_seq orders rows that became visible together.
-- Both are added without a default and given one after, so existing rows are not rewritten;
-- they keep NULLs and are never streamed (they predate the stream).
ALTER TABLE {{table}}
    ADD COLUMN IF NOT EXISTS stream_xid xid8,
    ADD COLUMN IF NOT EXISTS stream_seq bigint;
CREATE SEQUENCE IF NOT EXISTS {{schema}}.{{stream_seq}} OWNED BY {{table}}.stream_seq;
ALTER TABLE {{table}}
    ALTER COLUMN stream_xid SET DEFAULT pg_current_xact_id(),
    ALTER COLUMN stream_seq SET DEFAULT nextval({{stream_seq_literal}});
-- The index SSE reads with is optional: sql/optional/stream_index.sql.
