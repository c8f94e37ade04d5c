#!/usr/bin/env bash
# What each part of the adopted table costs an app's single-row INSERT: pgbench, 16 clients,
# one INSERT per transaction in the README's plain-SQL shape, against variants of the table
# made by `outbox-relay migrate` and then stripped of one part each (plpgsql_trigger: the
# wake trigger as releases before 2026-12-07 made it, the lock taken in a PL/pgSQL body
# rather than in the trigger's WHEN). Rounds alternate the
# variants' order; prints inserts/s per variant and round, and each variant's median.
#
#   DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres bench/insert_cost.sh
#
# Environment: ROUNDS=3, SECS=8, CLIENTS=16, BIN=target/release/outbox-relay, VARIANTS (a
# space-separated subset of the names below).
# Runs on the server at DATABASE_URL as it is configured; creates and drops databases
# named outbox_insert_cost_*.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
: "${DATABASE_URL:?set DATABASE_URL to a superuser URL of the server to measure}"
ROUNDS=${ROUNDS:-3} SECS=${SECS:-8} CLIENTS=${CLIENTS:-16}
BIN=${BIN:-$ROOT/target/release/outbox-relay}
source "$ROOT/bench/variants.sh"
script=$(mktemp)
trap 'rm -f "$script"' EXIT
echo "$APP_INSERT" >"$script"
# variant name -> SQL run after migrate ("" = as migrate leaves it); plain has no migrate
declare -A STRIP=(
  [adopted]=""
  [no_trigger]='DROP TRIGGER outbox_relay_notify ON "OutboxEvent"'
  [no_seq_default]='ALTER TABLE "OutboxEvent" ALTER COLUMN stream_seq DROP DEFAULT'
  [no_fresh_index]='DROP INDEX "OutboxEvent_relay_fresh_idx"'
  [plpgsql_trigger]=$'DO $do$ DECLARE lock_args text; BEGIN
    SELECT substring(pg_get_triggerdef(oid) FROM \'lock_shared\\((.*?)\\)\') INTO lock_args
      FROM pg_trigger WHERE tgname = \'outbox_relay_notify\';
    EXECUTE format($f$CREATE FUNCTION plpgsql_notify() RETURNS trigger LANGUAGE plpgsql AS $b$
      BEGIN IF NOT pg_try_advisory_xact_lock_shared(%s) THEN PERFORM pg_notify(\'c\', \'\');
      END IF; RETURN NULL; END $b$$f$, lock_args);
    DROP TRIGGER outbox_relay_notify ON "OutboxEvent";
    CREATE TRIGGER outbox_relay_notify AFTER INSERT ON "OutboxEvent" FOR EACH STATEMENT
      EXECUTE FUNCTION plpgsql_notify();
    END $do$'
)
VARIANTS=(${VARIANTS:-plain adopted no_trigger no_seq_default no_fresh_index plpgsql_trigger})
echo "# bench/insert_cost.sh ROUNDS=$ROUNDS SECS=$SECS CLIENTS=$CLIENTS $(date -u +%FT%TZ) $(git -C "$ROOT" describe --always --dirty)"
echo "# server: $(psql -Atq "$DATABASE_URL" -c 'select version()' | cut -d' ' -f1-2)"
declare -A RES
for round in $(seq 1 "$ROUNDS"); do
  n=${#VARIANTS[@]}
  for i in $(seq 0 $((n - 1))); do
    v=${VARIANTS[$(rotated "$n" "$i" "$round")]}
    url=$(fresh_db outbox_insert_cost "$v" "${STRIP[$v]:-}")
    tps=$("$PGBENCH" -n -c "$CLIENTS" -j 2 -T "$SECS" -M prepared -f "$script" "$url" 2>/dev/null |
      sed -n 's/^tps = \([0-9.]*\).*/\1/p')
    [[ -n $tps ]] || { echo "pgbench failed on $v: run it by hand on $url" >&2; exit 1; }
    printf 'round %s %-15s %8.0f inserts/s\n' "$round" "$v" "$tps"
    RES[$v]+="$tps "
    drop_db "$url"
  done
done
for v in "${VARIANTS[@]}"; do
  printf 'median %-15s %8.0f inserts/s\n' "$v" "$(median "${RES[$v]}")"
done
