#!/usr/bin/env bash
# Dashboard search latency on a large outbox (issue 7).
#
#   bench/dashboard_search.sh
#
# A fresh database on DATABASE_URL's server, `outbox-relay migrate`, SEARCH_ROWS rows inserted
# in one statement (1 in 1,000 FAILED, the rest COMPLETED; 100 orgs, 20 event types, 10,000
# entities), VACUUM ANALYZE, then the release relay (`run`, no webhooks, HTTP on a free
# loopback port). Each search is asked SEARCH_REPS times with curl; it prints the median and
# the slowest wall time per search, and the row count of the first page. The database is
# dropped at the end.
#
# Environment:
#   DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres   the server (needs CREATE DATABASE)
#   SEARCH_ROWS=1000000
#   SEARCH_REPS=7
#   SEARCH_RELAY_BIN=target/release/outbox-relay
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
ROWS=${SEARCH_ROWS:-1000000}
REPS=${SEARCH_REPS:-7}
BIN=${SEARCH_RELAY_BIN:-$ROOT/target/release/outbox-relay}
DB="outbox_search_bench_$$"
DB_URL="${URL%/*}/$DB"
[ -x "$BIN" ] || { echo "no relay binary at $BIN: cargo build --release" >&2; exit 1; }

echo "# bench/dashboard_search.sh  SEARCH_ROWS=$ROWS SEARCH_REPS=$REPS  $(date -u +%FT%TZ)"
echo "# server: $(psql "$URL" -Atc 'SHOW server_version')  cores: $(nproc)"

psql "$URL" -qc "CREATE DATABASE $DB"
relay_pid=
cleanup() {
    [ -n "$relay_pid" ] && kill "$relay_pid" 2>/dev/null && wait "$relay_pid" 2>/dev/null
    psql "$URL" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" || true
}
trap cleanup EXIT

cfg=$(mktemp)
. "$ROOT/bench/lib.sh"
port=$(free_port)
printf 'database_url = "%s"\nretention = "off"\n[http]\nlisten = "127.0.0.1:%s"\n' "$DB_URL" "$port" >"$cfg"
"$BIN" migrate --config "$cfg" 2>/dev/null

start=$SECONDS
psql "$DB_URL" -q <<SQL
INSERT INTO "OutboxEvent" (event_type, org_id, entity_type, entity_id, payload, status,
                           processed_at, created_at, error_message, retry_count)
SELECT 'TYPE_' || (g % 20) || '.CHANGED', 'org_' || (g % 100), 'Order', 'o_' || (g % 10000),
       jsonb_build_object('n', g, 'pad', repeat('x', 200)),
       CASE WHEN g % 1000 = 0 THEN 'FAILED' ELSE 'COMPLETED' END,
       now(), now() - make_interval(secs => ($ROWS - g) / 100.0),
       CASE WHEN g % 1000 = 0 THEN 'main: HTTP 500' END,
       CASE WHEN g % 1000 = 0 THEN 12 ELSE 0 END
  FROM generate_series(1, $ROWS) g;
VACUUM ANALYZE "OutboxEvent";
SQL
echo "# $ROWS rows loaded in $((SECONDS - start)) s; table $(psql "$DB_URL" -Atc "SELECT pg_size_pretty(pg_total_relation_size('\"OutboxEvent\"'))")"

RUST_LOG=warn "$BIN" run --config "$cfg" >/dev/null 2>&1 &
relay_pid=$!
for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break
    sleep 0.1
done
curl -sf "http://127.0.0.1:$port/api/events?limit=1" >/dev/null # the table is known

some_id=$(psql "$DB_URL" -Atc 'SELECT id FROM "OutboxEvent" OFFSET 12345 LIMIT 1')
from=$(date -u -d '-30 min' +%FT%TZ)
printf '%-52s %10s %10s %6s\n' search median_ms max_ms rows
for q in "" "status=FAILED" "status=COMPLETED" "id=$some_id" "type=TYPE_7.*" "org=org_42" \
         "entity_type=Order&entity_id=o_77" "from=$from" "org=org_42&status=FAILED"; do
    times=()
    for _ in $(seq 1 "$REPS"); do
        t=$(curl -s -o /tmp/search.$$ -w '%{time_total}' "http://127.0.0.1:$port/api/events?$q")
        times+=("$t")
    done
    rows=$(python3 -c "import json;d=json.load(open('/tmp/search.$$'));print(len(d['events']) if 'events' in d else d.get('error'))")
    stats=$(printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {printf "%.1f %.1f", a[int((NR+1)/2)]*1000, a[NR]*1000}')
    label=${q:-"(none: newest first)"}
    [ "$q" = "id=$some_id" ] && label="id=<an existing uuid>"
    printf '%-52s %10s %10s %6s\n' "$label" ${stats} "$rows"
done
rm -f /tmp/search.$$ "$cfg"
