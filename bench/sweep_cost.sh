#!/usr/bin/env bash
# What the sweep below the claim cursor and the queue counts (the `/metrics` gauges and the
# dashboard's overview) cost while a snapshot is held open (issue 14): the dead index entries
# claims leave behind stay until the snapshot ends, and both re-read them. A fresh database,
# `outbox-relay migrate`, a REPEATABLE READ transaction holding its snapshot, then rows
# inserted, claimed and completed 10,000 at a time up to each size in SIZES; at each size the
# sweep's statement (from the top of the stream) and the queue counts' under EXPLAIN
# ANALYZE, REPS times each, as the relay prepares them (`outbox-relay statements`).
# The relay spaces both out to at most a twentieth of the time (`background::spaced`). The
# database is dropped at the end.
#
#   DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres bench/sweep_cost.sh
#
# Environment: SIZES="100000 300000 600000" (multiples of 10,000), REPS=2,
# BIN (default: target/release/outbox-relay, built or brought up to date first).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
: "${DATABASE_URL:?set DATABASE_URL to a server to use (it creates and drops its own database)}"
SIZES=${SIZES:-100000 300000 600000}
REPS=${REPS:-2}
# Built (or brought up to date) unless BIN names one: the script runs its `statements`.
[[ -n ${BIN:-} ]] || (cd "$ROOT" && cargo build --release --bin outbox-relay >&2)
BIN=${BIN:-$ROOT/target/release/outbox-relay}
base=${DATABASE_URL%/*}
db=relay_sweep_cost
url=$base/$db
psql -Atq "$base/postgres" -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" >&2
trap 'exec 3>&- 2>/dev/null; sleep 1; psql -Atq "$base/postgres" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >&2' EXIT
DATABASE_URL=$url "$BIN" migrate >/dev/null 2>&1 || { echo "migrate failed: DATABASE_URL=$url $BIN migrate" >&2; exit 1; }
echo "# bench/sweep_cost.sh $(date -u +%FT%TZ) $(git -C "$ROOT" describe --always --dirty); server: $base"
echo "# $(psql -Atq "$url" -c "SELECT version()")"

# The snapshot holder: a psql whose stdin stays open until the script ends.
exec 3> >(psql -Atq "$url" >/dev/null)
echo 'BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM "OutboxEvent";' >&3
sleep 1

# A statement as the relay prepares it (`outbox-relay statements NAME`), executed with
# arguments $2 under EXPLAIN ANALYZE; prints the execution time in ms.
explain() {
  local sql
  sql=$(DATABASE_URL=$url "$BIN" statements "$1")
  psql -Atq "$url" -c "PREPARE s AS $sql" -c "EXPLAIN (ANALYZE, BUFFERS) EXECUTE s$2" |
    awk '/Execution Time/ {print $3}'
}
# The sweep from the top of the stream, leases up to now.
sweep() { explain sweep "('$1', 9223372036854775807, extract(epoch FROM now()))"; }
queue() { explain queue_counts ""; }

echo "dead_rows ms_per_sweep ms_per_queue_count"
have=0
for n in $SIZES; do
  while ((have < n)); do
    psql -Atq "$url" -c "INSERT INTO \"OutboxEvent\" (event_type, payload)
                           SELECT 'T', '{}' FROM generate_series(1, 10000)" \
      -c "UPDATE \"OutboxEvent\" SET status = 'PROCESSING', claim_token = gen_random_uuid(),
                 lease_expires_at = now() + interval '30 s'
           WHERE status = 'PENDING' AND claim_token IS NULL" \
      -c "UPDATE \"OutboxEvent\" SET status = 'COMPLETED', processed_at = now(),
                 lease_expires_at = NULL WHERE status = 'PROCESSING'" >/dev/null
    have=$((have + 10000))
  done
  top=$(psql -Atq "$url" -c 'SELECT max(stream_xid)::text FROM "OutboxEvent"')
  sweeps=() counts=()
  for _ in $(seq 1 "$REPS"); do
    sweeps+=("$(sweep "$top")")
    counts+=("$(queue)")
  done
  echo "$n ${sweeps[*]} ${counts[*]}"
done
