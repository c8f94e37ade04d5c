#!/usr/bin/env bash
# What the relay's claim and completion updates cost the app's inserts, and what they would
# cost if PostgreSQL could make them HOT (no new index entries). A design experiment for
# issue 14, not the relay: pgbench plays both the app (16 clients, one INSERT per
# transaction, the README's plain-SQL shape) and a relay (1 client looping: claim up to 100
# rows past its position as PROCESSING, then mark them COMPLETED, two transactions, as the
# relay does; after a claim that found less than a full batch it looks again in 2 ms),
# side by side for SECS seconds. Variants:
#   plain     the app's own table, no relay (the 1.00 of the ratios)
#   today     the table as `outbox-relay migrate` leaves it, with the relay loop
#   hot       the same table without the indexes whose keys or predicates name a column the
#             claim or the completion changes (status, lease, processed_at...), and one plain
#             btree on (stream_xid, stream_seq) to claim by position: the updates can be HOT
#             where the page has room
#   hot_ff80  hot with fillfactor 80 on the table, so that pages keep room for them
#   today_ff80, today_ff50  today with fillfactor 80 or 50: updates that are not HOT but
#             land on the same page log only the bytes that changed (PostgreSQL's prefix
#             and suffix compression of an update's WAL record)
# "hot" drops what leases, retries, retention and dead letters need: it bounds what a
# design that keeps every update HOT could win, it is not one. Prints, per variant and
# round, app inserts/s, events the loop completed per second, PostgreSQL's CPU time per
# 1,000 inserted events (every server process, from /proc: the server must be local), WAL
# bytes per inserted event and the share of updates that were HOT; then each variant's
# median. With RATE unset the app inserts as fast as it can and the loop claims as fast as
# it can beside it (the loop may fall behind: compare completed/s too); RATE=N holds the app
# to N inserts/s, which the loop keeps up with, so that the variants do the same work and
# their cost shows as CPU and WAL per event.
#
#   DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres bench/hot_claims.sh
#
# Environment: ROUNDS=3, SECS=10, CLIENTS=16, RATE (unset), BIN=target/release/outbox-relay (for
# `migrate`), VARIANTS (a space-separated subset of the names above). Creates and drops
# databases named outbox_hot_claims_*.
set -euo pipefail
export PGOPTIONS="${PGOPTIONS:-} -c client_min_messages=warning"
ROOT=$(cd "$(dirname "$0")/.." && pwd)
: "${DATABASE_URL:?set DATABASE_URL to a superuser URL of the server to measure}"
ROUNDS=${ROUNDS:-3} SECS=${SECS:-10} CLIENTS=${CLIENTS:-16} RATE=${RATE:-}
BIN=${BIN:-$ROOT/target/release/outbox-relay}
source "$ROOT/bench/variants.sh"
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
echo "$APP_INSERT" >"$dir/app.sql"
# The relay's loop. Its position `lo` persists between transactions of the one client:
# every row of a transaction below the claim's snapshot xmin was visible to it, so the next
# claim starts there (at the last row taken, when the batch was full).
cat >"$dir/relay.sql" <<'SQL'
WITH c AS (
  UPDATE "OutboxEvent" SET status = 'PROCESSING', claim_token = gen_random_uuid(),
         lease_expires_at = now() + interval '30 s'
   WHERE id = ANY (ARRAY(SELECT id FROM "OutboxEvent"
                          WHERE status = 'PENDING' AND claim_token IS NULL
                            AND stream_xid >= :lo::xid8
                          ORDER BY stream_xid, stream_seq LIMIT 100 FOR UPDATE SKIP LOCKED))
  RETURNING id, stream_xid)
SELECT CASE WHEN (SELECT count(*) FROM c) < 100
            THEN pg_snapshot_xmin(pg_current_snapshot())
            ELSE least(pg_snapshot_xmin(pg_current_snapshot()), (SELECT max(stream_xid) FROM c))
       END AS lo,
       coalesce((SELECT array_agg(id)::text FROM c), '{}') AS ids,
       (SELECT count(*) FROM c) AS n
\gset
UPDATE "OutboxEvent" SET status = 'COMPLETED', processed_at = now(), lease_expires_at = NULL
 WHERE id = ANY (:ids::uuid[]);
\if :n < 100
\sleep 2 ms
\endif
SQL
HOT=$(cat <<'SQL'
DO $$ DECLARE i text; BEGIN
  FOR i IN SELECT indexrelid::regclass::text FROM pg_index
            WHERE indrelid = '"OutboxEvent"'::regclass AND NOT indisprimary LOOP
    EXECUTE 'DROP INDEX ' || i;
  END LOOP; END $$;
CREATE INDEX ON "OutboxEvent" (stream_xid, stream_seq);
SQL
)
FF='ALTER TABLE "OutboxEvent" SET (fillfactor = '
declare -A SETUP=([today]="" [hot]="$HOT" [hot_ff80]="$HOT; ${FF}80)" [today_ff80]="${FF}80)"
  [today_ff50]="${FF}50)")
VARIANTS=(${VARIANTS:-plain today hot hot_ff80})
echo "# bench/hot_claims.sh ROUNDS=$ROUNDS SECS=$SECS CLIENTS=$CLIENTS $(date -u +%FT%TZ) $(git -C "$ROOT" describe --always --dirty)"
echo "# RATE=${RATE:-unlimited}; server: $(psql -Atq "$DATABASE_URL" -c 'select version()' | cut -d' ' -f1-2), synchronous_commit=$(psql -Atq "$DATABASE_URL" -c 'show synchronous_commit')"
# CPU seconds of every server process so far: the postmaster's own and its reaped
# children's (backends that exited), plus the live children's.
postmaster=$(head -1 "$(psql -Atq "$DATABASE_URL" -c 'show data_directory')/postmaster.pid")
server_cpu() {
  local hz t=0 pid
  hz=$(getconf CLK_TCK)
  t=$(awk '{print $14 + $15 + $16 + $17}' "/proc/$postmaster/stat")
  for pid in $(pgrep -P "$postmaster"); do
    t=$((t + $(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)))
  done
  awk -v t="$t" -v hz="$hz" 'BEGIN { printf "%.3f", t / hz }'
}
declare -A INS DONE WAL HOTS CPU
for round in $(seq 1 "$ROUNDS"); do
  n=${#VARIANTS[@]}
  for i in $(seq 0 $((n - 1))); do
    v=${VARIANTS[$(rotated "$n" "$i" "$round")]}
    url=$(fresh_db outbox_hot_claims "$v" "${SETUP[$v]:-}")
    lsn0=$(psql -Atq "$url" -c 'select pg_current_wal_insert_lsn()')
    cpu0=$(server_cpu)
    relay_pid=
    if [[ $v != plain ]]; then
      "$PGBENCH" -n -c 1 -T "$SECS" -M extended -D lo=0 -f "$dir/relay.sql" "$url" \
        >"$dir/relay.out" 2>&1 &
      relay_pid=$!
    fi
    tps=$("$PGBENCH" -n -c "$CLIENTS" -j 2 -T "$SECS" ${RATE:+-R "$RATE"} -M prepared -f "$dir/app.sql" "$url" 2>/dev/null |
      sed -n 's/^tps = \([0-9.]*\).*/\1/p')
    [[ -n $relay_pid ]] && { wait "$relay_pid" || { cat "$dir/relay.out" >&2; exit 1; }; }
    sleep 1 # the backends exit and are reaped: their CPU is then the postmaster's
    cpu1=$(server_cpu)
    [[ -n $tps ]] || { echo "pgbench failed on $v: run it by hand on $url" >&2; exit 1; }
    read -r wal rows done upd hot < <(psql -AtqF' ' "$url" -c "
      select pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '$lsn0')::int8,
             (select count(*) from \"OutboxEvent\"),
             (select count(*) from \"OutboxEvent\" where $( [[ $v == plain ]] && echo false || echo "status = 'COMPLETED'")),
             n_tup_upd, n_tup_hot_upd
        from pg_stat_user_tables where relname = 'OutboxEvent'")
    hotpct=$(awk -v u="$upd" -v h="$hot" 'BEGIN { if (u > 0) printf "%.0f", 100 * h / u; else print "-" }')
    cpu=$(awk -v a="$cpu0" -v b="$cpu1" -v r="$rows" 'BEGIN { print 1e6 * (b - a) / r }')
    printf 'round %s %-9s %8.0f inserts/s %8.0f completed/s %6.1f CPU ms/1000 %6.0f WAL B/event %4s%% HOT\n' \
      "$round" "$v" "$tps" "$(awk -v d="$done" -v s="$SECS" 'BEGIN { print d / s }')" "$cpu" \
      "$(awk -v w="$wal" -v r="$rows" 'BEGIN { print w / r }')" "$hotpct"
    INS[$v]+="$tps " DONE[$v]+="$(awk -v d="$done" -v s="$SECS" 'BEGIN { print d / s }') "
    CPU[$v]+="$cpu " WAL[$v]+="$(awk -v w="$wal" -v r="$rows" 'BEGIN { print w / r }') " HOTS[$v]+="$hotpct "
    drop_db "$url"
  done
done
for v in "${VARIANTS[@]}"; do
  printf 'median %-9s %8.0f inserts/s (%.2fx plain) %8.0f completed/s %6.1f CPU ms/1000 %6.0f WAL B/event %4s%% HOT\n' \
    "$v" "$(median "${INS[$v]}")" "$(awk -v a="$(median "${INS[$v]}")" -v b="$(median "${INS[plain]:-}")" 'BEGIN { print (b > 0 ? a / b : 0) }')" \
    "$(median "${DONE[$v]}")" "$(median "${CPU[$v]}")" "$(median "${WAL[$v]}")" "$(median "${HOTS[$v]}")"
done
