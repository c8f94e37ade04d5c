-- Server-Sent Events ([sse] enabled). A reader asks for rows of transactions it has not
-- seen: stream_xid past a snapshot's xmax, or one of the few it listed as in progress.
CREATE INDEX CONCURRENTLY IF NOT EXISTS {{stream_idx}} ON {{table}} (stream_xid);
