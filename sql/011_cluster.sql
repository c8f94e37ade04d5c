-- The cluster-wide dashboard (issue 20): what each relay on this table did lately, so the
-- dashboard of any one of them can show the whole cluster. Each relay writes one statement
-- per report (at most every 10 s while busy, every poll_interval while idle); a dashboard
-- reads both tables with one cached statement, however many pages are open.
--
-- One row per relay instance (`host/pid`, as in application_name), updated in place by its
-- reports: `every_s` is how often it reports, so a reader knows when it has gone silent;
-- `stopped_at` is set by a clean shutdown; `health` is its endpoints' last 5 minutes
-- (attempts, successes, a latency histogram to merge into a cluster p99, requests in
-- flight, last error). Rows not seen for an hour are deleted by the other relays' reports.
CREATE TABLE IF NOT EXISTS {{schema}}.{{instances_table}} (
    instance   text PRIMARY KEY,
    version    text NOT NULL,
    started_at timestamptz NOT NULL,
    seen_at    timestamptz NOT NULL,
    stopped_at timestamptz,
    every_s    int4 NOT NULL,
    health     jsonb NOT NULL
) WITH (fillfactor = 50);
-- Delivered events and failed attempts per second: one row per report that saw any, for
-- the seconds `first_second` (unix) onwards. Append-only, no index (an hour of rows is
-- small enough to scan; every index would be one more write per report); rows older than
-- an hour are deleted by the reports.
CREATE TABLE IF NOT EXISTS {{schema}}.{{activity_table}} (
    instance     text NOT NULL,
    first_second int8 NOT NULL,
    delivered    int4[] NOT NULL,
    failed       int4[] NOT NULL
);
