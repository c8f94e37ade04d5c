#!/usr/bin/env bash
# What holding an event for a paused endpoint costs the database: 50,000 PROCESSING rows are
# put on hold in statements of 500 rows, as the relay's outcome statement does when an
# endpoint's circuit is open. Variants: due_held (as `migrate` leaves the table: a held row's
# only index entry is its due-and-held index entry, `sql/indexes/due_held_index.sql`), gin
# (the same plus the GIN index on `held_for` that releases before 2026-12-08 had),
# pending_list (that GIN index with its pending list on, 256 kB) and btree (a plain btree on
# held_for instead). Prints per variant and round the time and WAL bytes per held row, then
# each variant's median. The variants' order rotates. (The simplified UPDATE here is not
# the relay's outcome statement: bench/work.sh counts that one.)
#
#   DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres bench/hold_cost.sh
#
# Environment: ROUNDS=3, ROWS=50000, VARIANTS (default due_held gin), BIN=target/release/outbox-relay (for `migrate`).
# Creates and drops databases named outbox_hold_cost_*.
set -euo pipefail
export PGOPTIONS="${PGOPTIONS:-} -c client_min_messages=warning"
ROOT=$(cd "$(dirname "$0")/.." && pwd)
: "${DATABASE_URL:?set DATABASE_URL to a superuser URL of the server to measure}"
ROUNDS=${ROUNDS:-3} ROWS=${ROWS:-50000}
BIN=${BIN:-$ROOT/target/release/outbox-relay}
source "$ROOT/bench/variants.sh"
GIN="CREATE INDEX held_gin ON \"OutboxEvent\" USING gin ((coalesce(held_for, ARRAY['*'::text]))) WITH (fastupdate = off) WHERE status = 'PENDING' AND next_attempt_at = 'infinity'"
declare -A SETUP=([due_held]="" [gin]="$GIN"
  [btree]="CREATE INDEX ON \"OutboxEvent\" (held_for) WHERE status = 'PENDING' AND next_attempt_at = 'infinity'"
  [pending_list]="$GIN; ALTER INDEX held_gin SET (fastupdate = on, gin_pending_list_limit = 256)")
VARIANTS=(${VARIANTS:-due_held gin})
echo "# bench/hold_cost.sh ROUNDS=$ROUNDS ROWS=$ROWS $(date -u +%FT%TZ) $(git -C "$ROOT" describe --always --dirty)"
echo "# server: $(psql -Atq "$DATABASE_URL" -c 'select version()' | cut -d' ' -f1-2)"
declare -A MS WAL
for round in $(seq 1 "$ROUNDS"); do
  n=${#VARIANTS[@]}
  for i in $(seq 0 $((n - 1))); do
    v=${VARIANTS[$(rotated "$n" "$i" "$round")]}
    url=$(fresh_db outbox_hold_cost "$v" "${SETUP[$v]}")
    psql -Atq "$url" -c "INSERT INTO \"OutboxEvent\" (event_type, payload, status, claim_token, lease_expires_at)
      SELECT 'BENCH.EVENT', jsonb_build_object('pad', repeat('x', 100)), 'PROCESSING',
             gen_random_uuid(), now() + interval '1 hour' FROM generate_series(1, $ROWS)" -c CHECKPOINT
    read -r ms wal < <(psql -AtqF' ' "$url" <<SQL
SELECT pg_current_wal_insert_lsn() AS l0, clock_timestamp() AS t0 \gset
DO \$\$ BEGIN
  FOR b IN 1..ceil($ROWS / 500.0) LOOP
    UPDATE "OutboxEvent" SET status = 'PENDING', next_attempt_at = 'infinity',
           held_for = '{third}', lease_expires_at = NULL
     WHERE id IN (SELECT id FROM "OutboxEvent" WHERE status = 'PROCESSING' LIMIT 500);
    COMMIT;
  END LOOP; END \$\$;
SELECT round(extract(epoch FROM clock_timestamp() - :'t0'::timestamptz) * 1000),
       round(pg_wal_lsn_diff(pg_current_wal_insert_lsn(), :'l0') / $ROWS);
SQL
)
    printf 'round %s %-14s %6s ms %5s WAL B/held row\n' "$round" "$v" "$ms" "$wal"
    MS[$v]+="$ms " WAL[$v]+="$wal "
    drop_db "$url"
  done
done
for v in "${VARIANTS[@]}"; do
  printf 'median %-14s %6s ms %5s WAL B/held row\n' "$v" "$(median "${MS[$v]}")" "$(median "${WAL[$v]}")"
done
