#!/usr/bin/env bash
# Table bloat and autovacuum under a steady outbox load (issue 4).
#
#   bench/bloat.sh [off|RETENTION ...]      default: off 30s
#
# For each mode: a fresh database, `outbox-relay migrate`, the release relay (`run`, no
# webhooks, so every event goes straight to COMPLETED; HTTP on a free loopback port) with
# `retention = "<mode>"`, and pgbench inserting BLOAT_EVENTS events in 1,000-row transactions
# at BLOAT_RATE events/s while the relay drains them. It waits until every event is COMPLETED
# (and, with retention, until retention has deleted them all), watches BLOAT_SETTLE more
# seconds (autovacuum wakes once a minute), then prints table and index sizes,
# pg_stat_user_tables (live/dead tuples, HOT updates, autovacuum runs) and the wall times,
# and drops the database.
#
# Environment:
#   BLOAT_EVENTS=1000000      events per run (a multiple of 1,000)
#   BLOAT_RATE=5000           events/s (pgbench -R, in 1,000-row transactions)
#   BLOAT_SETTLE=90           seconds to keep watching after the drain
#   BLOAT_TIMEOUT=900         give up on a run after this many seconds
#   BLOAT_COMPACT=1           retention off: VACUUM FULL at the end, to show the size without dead space
#   BLOAT_TABLE_OPTIONS=      e.g. "autovacuum_vacuum_scale_factor=0.01": ALTER TABLE SET (...)
#   BLOAT_HOLD_SNAPSHOT=0     1: a REPEATABLE READ transaction holds its snapshot from before the
#                             first insert until all is drained (a long transaction), then ends
#   BLOAT_PG_OPTIONS=         throwaway cluster only: server settings, e.g. "-c autovacuum_naptime=10s"
#   BLOAT_RELAY_BIN=target/release/outbox-relay
#   BLOAT_DATABASE_URL=       a server to use (it creates and drops its own database there).
#                             Unset: a throwaway cluster with PostgreSQL's stock settings
#                             (autovacuum on) in a temporary directory, removed at the end.
#                             A server with autovacuum off measures something else, and the
#                             script says so.
set -euo pipefail

MODES=("$@")
[ ${#MODES[@]} -gt 0 ] || MODES=(off 30s)
EVENTS=${BLOAT_EVENTS:-1000000}
RATE=${BLOAT_RATE:-5000}
SETTLE=${BLOAT_SETTLE:-90}
TIMEOUT=${BLOAT_TIMEOUT:-900}
TABLE_OPTIONS=${BLOAT_TABLE_OPTIONS:-}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RELAY=${BLOAT_RELAY_BIN:-$ROOT/target/release/outbox-relay}
[ -x "$RELAY" ] || { echo "no relay binary at $RELAY: cargo build --release" >&2; exit 2; }
[ $((EVENTS % 1000)) -eq 0 ] || { echo "BLOAT_EVENTS must be a multiple of 1000" >&2; exit 2; }
for tool in psql pgbench python3 curl; do
    command -v $tool >/dev/null || { echo "needs $tool" >&2; exit 2; }
done

WORK=$(mktemp -d /tmp/outbox-bloat.XXXXXX)
chmod 755 "$WORK"
RELAY_PID='' PGBENCH_PID='' HOLD_PID='' DB='' CLUSTER='' SERVER_URL=''
cleanup() {
    set +e
    [ -n "$PGBENCH_PID" ] && kill "$PGBENCH_PID" 2>/dev/null && wait "$PGBENCH_PID" 2>/dev/null
    [ -n "$HOLD_PID" ] && kill "$HOLD_PID" 2>/dev/null && wait "$HOLD_PID" 2>/dev/null
    [ -n "$RELAY_PID" ] && stop_relay
    [ -n "$DB" ] && psql -q "$SERVER_URL" -c "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" >/dev/null 2>&1
    if [ -n "$CLUSTER" ]; then
        as_pg "$PGBIN/pg_ctl" -D "$CLUSTER/data" -m fast -w stop >/dev/null 2>&1
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# SIGTERM, and SIGKILL if the relay has not exited 40 s later; sets RELAY_RC.
stop_relay() {
    kill -TERM "$RELAY_PID" 2>/dev/null
    for _ in $(seq 400); do kill -0 "$RELAY_PID" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$RELAY_PID" 2>/dev/null; then
        echo "# relay still running 40 s after SIGTERM: SIGKILL" >&2
        kill -KILL "$RELAY_PID" 2>/dev/null
    fi
    RELAY_RC=0; wait "$RELAY_PID" 2>/dev/null || RELAY_RC=$?
    RELAY_PID=
}
. "$ROOT/bench/lib.sh"

# --- the server -------------------------------------------------------------------------
if [ -n "${BLOAT_DATABASE_URL:-}" ]; then
    SERVER_URL=$BLOAT_DATABASE_URL
    SERVER_DESC="$SERVER_URL (existing server)"
else
    PGBIN=${PG_BIN:-$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -1)}
    [ -x "$PGBIN/initdb" ] || PGBIN=$(pg_config --bindir)
    CLUSTER=$WORK/pg
    mkdir -p "$CLUSTER"
    [ "$(id -u)" = 0 ] && chown postgres: "$CLUSTER"
    PGPORT_=$(free_port)
    as_pg "$PGBIN/initdb" -D "$CLUSTER/data" -U postgres -A trust >/dev/null
    # Stock settings; only the address, and autovacuum logging so the log shows each run.
    as_pg "$PGBIN/pg_ctl" -D "$CLUSTER/data" -l "$CLUSTER/log" -w \
        -o "-p $PGPORT_ -k $CLUSTER -c listen_addresses=127.0.0.1 -c log_autovacuum_min_duration=0 ${BLOAT_PG_OPTIONS:-}" \
        start >/dev/null
    SERVER_URL="postgres://postgres@127.0.0.1:$PGPORT_/postgres"
    SERVER_DESC="throwaway cluster ($PGBIN), stock settings${BLOAT_PG_OPTIONS:+ except $BLOAT_PG_OPTIONS}, 127.0.0.1:$PGPORT_"
fi
q() { psql -X -qAt "$SERVER_URL" -c "$1"; }
q_db() { psql -X -qAt "$1" -c "$2"; }
with_db() { echo "$SERVER_URL" | sed -E "s#/[^/?]*(\?|$)#/$DB\1#"; }

echo "# outbox-relay table bloat: $EVENTS events at $RATE/s in 1,000-row transactions, modes: ${MODES[*]}"
echo "# relay: $RELAY ($("$RELAY" --version 2>/dev/null || echo '?'), built $(date -u -r "$RELAY" '+%Y-%m-%d %H:%M UTC')); work tree at $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$( [ -n "$(git -C "$ROOT" status --porcelain src 2>/dev/null)" ] && echo ' + uncommitted src changes')"
echo "# server: $SERVER_DESC"
echo "# $(q 'SELECT version()')"
echo "# settings: $(q "SELECT string_agg(name || '=' || setting || coalesce(unit, ''), ' ' ORDER BY name) FROM pg_settings WHERE name IN ('autovacuum', 'autovacuum_naptime', 'autovacuum_vacuum_scale_factor', 'autovacuum_vacuum_threshold', 'autovacuum_vacuum_insert_scale_factor', 'autovacuum_vacuum_cost_limit', 'autovacuum_vacuum_cost_delay', 'shared_buffers', 'fsync', 'synchronous_commit')")"
echo "# machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(free -g | awk '/Mem:/ {print $2}') GB, load average $(cut -d' ' -f1-3 /proc/loadavg)"
[ -n "$TABLE_OPTIONS" ] && echo "# table options: ALTER TABLE ... SET ($TABLE_OPTIONS)"
HOLD=${BLOAT_HOLD_SNAPSHOT:-0}
[ "$HOLD" = 1 ] && echo "# a transaction holds one snapshot from before the first insert until the drain"
if [ "$(q 'SHOW autovacuum')" != on ]; then
    echo "# WARNING: autovacuum is off on this server: dead tuples are never reclaimed, the"
    echo "#          figures show bloat without vacuum, not what a production server does."
fi

cat >"$WORK/insert.sql" <<'SQL'
INSERT INTO "OutboxEvent" (org_id, event_type, entity_type, entity_id, payload)
SELECT 'org_' || (g % 10), 'PROJECT.UPDATED', 'Project', 'p_' || g,
       jsonb_build_object('id', 'p_' || g, 'name', 'Project ' || g, 'description', repeat('x', 120))
  FROM generate_series(1, 1000) AS g;
SQL

# One line of state. Counts use the partial indexes, never a scan of the whole table.
STATE_SQL="SELECT
  (SELECT count(*) FROM \"OutboxEvent\" WHERE status = 'PENDING'),
  (SELECT count(*) FROM \"OutboxEvent\" WHERE status = 'PROCESSING'),
  (SELECT count(*) FROM \"OutboxEvent\" WHERE status = 'COMPLETED'),
  pg_total_relation_size(s.relid), pg_relation_size(s.relid), pg_indexes_size(s.relid),
  s.n_live_tup, s.n_dead_tup, s.autovacuum_count, s.n_tup_upd
  FROM pg_stat_user_tables s WHERE s.relname = 'OutboxEvent'"
mb() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }

run_one() {
    local mode=$1
    DB="outbox_bloat_${mode}_$$"
    local dburl; dburl=$(with_db)
    q "CREATE DATABASE \"$DB\""
    local port; port=$(free_port)
    cat >"$WORK/config.toml" <<EOF
database_url = "$dburl"
retention = "$mode"
[http]
listen = "127.0.0.1:$port"
EOF
    "$RELAY" --config "$WORK/config.toml" migrate >/dev/null 2>&1
    [ -n "$TABLE_OPTIONS" ] && psql -X -q "$dburl" -c "ALTER TABLE \"OutboxEvent\" SET ($TABLE_OPTIONS)"
    # No ANALYZE here: like a fresh install, the table has no statistics until autoanalyze.

    RUST_LOG=info "$RELAY" --config "$WORK/config.toml" --log-format json run >"$WORK/relay-$mode.log" 2>&1 &
    RELAY_PID=$!
    for _ in $(seq 100); do
        curl -fs "http://127.0.0.1:$port/readyz" >/dev/null && break
        sleep 0.1
    done
    curl -fs "http://127.0.0.1:$port/readyz" >/dev/null || { echo "relay not ready" >&2; cat "$WORK/relay-$mode.log" >&2; exit 1; }

    echo
    echo "## retention = \"$mode\" (database $DB)"
    echo "#   t(s)  pending  processing  completed  total_MB  heap_MB  index_MB  live_tup  dead_tup  autovacuums"
    if [ "$HOLD" = 1 ]; then
        # Its snapshot is taken by the first SELECT and kept for the whole transaction.
        PGAPPNAME=bloat_hold psql -X -q "$dburl" -c 'BEGIN ISOLATION LEVEL REPEATABLE READ' \
            -c 'SELECT count(*) FROM "OutboxEvent"' -c 'SELECT pg_sleep(86400)' >/dev/null 2>&1 &
        HOLD_PID=$!
        for _ in $(seq 50); do
            [ "$(psql -X -qAt "$dburl" -c "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'bloat_hold' AND backend_xmin IS NOT NULL")" = 1 ] && break
            sleep 0.1
        done
    fi
    local start; start=$(date +%s.%N)
    local tx=$((EVENTS / 1000))
    pgbench -n -c 1 -j 1 -R "$(awk -v r="$RATE" 'BEGIN { print r / 1000 }')" -t "$tx" \
        -f "$WORK/insert.sql" "$dburl" >"$WORK/pgbench-$mode.log" 2>&1 &
    PGBENCH_PID=$!
    local inserted_at='' drained_at='' caught_up_at='' peak_total=0 peak_heap=0 peak_dead=0 next_print=0 now el line
    local last_upd=-1 last_progress; last_progress=$(date +%s)
    while :; do
        now=$(date +%s.%N)
        el=$(awk -v a="$now" -v b="$start" 'BEGIN { printf "%.0f", a - b }')
        [ "$el" -gt "$TIMEOUT" ] && { echo "timed out after ${TIMEOUT}s" >&2; exit 1; }
        kill -0 "$RELAY_PID" 2>/dev/null || { echo "relay exited" >&2; tail -20 "$WORK/relay-$mode.log" >&2; exit 1; }
        if [ -n "$PGBENCH_PID" ] && ! kill -0 "$PGBENCH_PID" 2>/dev/null; then
            wait "$PGBENCH_PID" || { echo "pgbench failed" >&2; cat "$WORK/pgbench-$mode.log" >&2; exit 1; }
            PGBENCH_PID=
            inserted_at=$now
        fi
        line=$(psql -X -qAt -F' ' "$dburl" -c "$STATE_SQL")
        read -r pend proc comp total heap idx live dead avc upd <<<"$line"
        [ "$total" -gt "$peak_total" ] && peak_total=$total
        [ "$heap" -gt "$peak_heap" ] && peak_heap=$heap
        [ "$dead" -gt "$peak_dead" ] && peak_dead=$dead
        # The relay updates every row twice: no UPDATE for 2 minutes with work waiting is a stall.
        if [ "$upd" != "$last_upd" ] || [ $((pend + proc)) = 0 ]; then
            last_upd=$upd last_progress=$(date +%s)
        elif [ $(( $(date +%s) - last_progress )) -gt 120 ]; then
            echo "relay stalled: no row updated for 120 s with $pend PENDING; statements running:" >&2
            psql -X "$dburl" -c "SELECT pid, now() - query_start AS running, wait_event,
                left(regexp_replace(query, '\s+', ' ', 'g'), 100) AS query
                FROM pg_stat_activity WHERE datname = current_database() AND state = 'active'
                AND pid <> pg_backend_pid()" >&2
            exit 1
        fi
        if [ "$el" -ge "$next_print" ]; then
            printf "%8s %8s %11s %10s %9s %8s %9s %9s %9s %12s\n" "$el" "$pend" "$proc" "$comp" \
                "$(mb "$total")" "$(mb "$heap")" "$(mb "$idx")" "$live" "$dead" "$avc"
            next_print=$((el + 15))
        fi
        if [ -n "$inserted_at" ] && [ -z "$drained_at" ] && [ "$pend" = 0 ] && [ "$proc" = 0 ]; then
            drained_at=$now
        fi
        if [ -n "$drained_at" ]; then
            if [ "$mode" = off ] || [ "$comp" = 0 ]; then
                caught_up_at=$now
                break
            fi
        fi
        sleep 1
    done
    printf "%8s %8s %11s %10s %9s %8s %9s %9s %9s %12s   <- drained%s\n" "$el" "$pend" "$proc" "$comp" \
        "$(mb "$total")" "$(mb "$heap")" "$(mb "$idx")" "$live" "$dead" "$avc" \
        "$( [ "$mode" != off ] && echo ', retention caught up')"
    if [ -n "$HOLD_PID" ]; then
        psql -X -qAt "$dburl" -c "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'bloat_hold'" >/dev/null
        wait "$HOLD_PID" 2>/dev/null || true
        HOLD_PID=
        echo "#   (the long transaction ends here)"
    fi
    local settle_end=$(( $(date +%s) + SETTLE ))
    while [ "$(date +%s)" -lt "$settle_end" ]; do
        sleep 5
        line=$(psql -X -qAt -F' ' "$dburl" -c "$STATE_SQL")
        read -r pend proc comp total heap idx live dead avc upd <<<"$line"
        [ "$total" -gt "$peak_total" ] && peak_total=$total
        [ "$heap" -gt "$peak_heap" ] && peak_heap=$heap
        [ "$dead" -gt "$peak_dead" ] && peak_dead=$dead
    done
    el=$(awk -v a="$(date +%s.%N)" -v b="$start" 'BEGIN { printf "%.0f", a - b }')
    printf "%8s %8s %11s %10s %9s %8s %9s %9s %9s %12s   <- after %ss more\n" "$el" "$pend" "$proc" "$comp" \
        "$(mb "$total")" "$(mb "$heap")" "$(mb "$idx")" "$live" "$dead" "$avc" "$SETTLE"

    curl -fs "http://127.0.0.1:$port/metrics" >"$WORK/metrics-$mode.txt" || true
    local cpu; cpu=$(awk -v hz="$(getconf CLK_TCK)" '{ printf "%.1f", ($14 + $15) / hz }' "/proc/$RELAY_PID/stat")
    local hwm; hwm=$(awk '/VmHWM/ { printf "%.1f", $2 / 1024 }' "/proc/$RELAY_PID/status")
    stop_relay
    local rc=$RELAY_RC

    local ins_s drain_s catch_s
    ins_s=$(awk -v a="$inserted_at" -v b="$start" 'BEGIN { printf "%.1f", a - b }')
    drain_s=$(awk -v a="$drained_at" -v b="$start" 'BEGIN { printf "%.1f", a - b }')
    catch_s=$(awk -v a="$caught_up_at" -v b="$start" 'BEGIN { printf "%.1f", a - b }')
    echo "# wall: inserts done ${ins_s}s, all COMPLETED ${drain_s}s$( [ "$mode" != off ] && echo ", retention caught up ${catch_s}s"); relay CPU ${cpu}s, peak RSS ${hwm} MiB, exit code $rc"
    echo "# pgbench: $(grep -E '^(tps|latency average)' "$WORK/pgbench-$mode.log" | tr '\n' ';' | sed 's/;$//')"
    echo "# relay metrics: $(grep -E '^outbox_(events_(claimed|completed|failed)_total|retention_deleted_total) ' "$WORK/metrics-$mode.txt" | tr '\n' ' ')"
    echo "# retention rounds that deleted rows: $(grep -c 'retention: deleted' "$WORK/relay-$mode.log" || true)"
    echo "# sizes (MB):"
    psql -X -qAt -F' ' "$dburl" -c "
        SELECT 'total', round(pg_total_relation_size('\"OutboxEvent\"') / 1048576.0, 1)
        UNION ALL SELECT 'heap', round(pg_relation_size('\"OutboxEvent\"') / 1048576.0, 1)
        UNION ALL SELECT 'toast', round(coalesce(pg_total_relation_size(nullif(reltoastrelid, 0)), 0) / 1048576.0, 1)
                    FROM pg_class WHERE oid = '\"OutboxEvent\"'::regclass
        UNION ALL SELECT 'indexes', round(pg_indexes_size('\"OutboxEvent\"') / 1048576.0, 1)
        UNION ALL (SELECT '  ' || indexrelname, round(pg_relation_size(indexrelid) / 1048576.0, 1)
                     FROM pg_stat_user_indexes WHERE relname = 'OutboxEvent' ORDER BY indexrelname)" |
        awk '{ printf "#   %-32s %8s\n", $1, $2 }'
    echo "#   peak during the run: total $(mb "$peak_total"), heap $(mb "$peak_heap"); peak n_dead_tup $peak_dead"
    echo "# pg_stat_user_tables:"
    psql -X -qAt "$dburl" -c "
        SELECT 'n_live_tup=' || n_live_tup || ' n_dead_tup=' || n_dead_tup ||
               ' n_tup_ins=' || n_tup_ins || ' n_tup_upd=' || n_tup_upd ||
               ' n_tup_hot_upd=' || n_tup_hot_upd || ' n_tup_del=' || n_tup_del ||
               ' autovacuum_count=' || autovacuum_count || ' autoanalyze_count=' || autoanalyze_count ||
               ' vacuum_count=' || vacuum_count ||
               ' last_autovacuum=' || coalesce(to_char(last_autovacuum, 'HH24:MI:SS') || ' (t=' ||
                   round(extract(epoch FROM last_autovacuum) - $start) || 's)', 'never') ||
               ' now=' || to_char(now(), 'HH24:MI:SS')
          FROM pg_stat_user_tables WHERE relname = 'OutboxEvent'" | sed 's/^/#   /'
    psql -X -qAt "$dburl" -c "SELECT 'rows by status: ' || coalesce(string_agg(status || '=' || n, ' '), 'none')
          FROM (SELECT status, count(*) AS n FROM \"OutboxEvent\" GROUP BY 1 ORDER BY 1) s" | sed 's/^/# /'
    if [ -n "$CLUSTER" ]; then
        echo "# autovacuum runs on the table (server log; dead items = line pointers left by pruning):"
        awk -v tbl="\"$DB.public.OutboxEvent\"" '
            /automatic vacuum of table/ { on = index($0, tbl) > 0; if (on) { t = $2; sub(/\..*/, "", t) } next }
            on && $1 == "pages:" { pr = $2; rem = $4 }
            on && $1 == "tuples:" { tr = $2; nr = $6 }
            on && /index scan needed:/ { di = $(NF - 4) }
            on && /index scan bypassed:/ { di = $(NF - 3) " (index scan bypassed)" }
            on && /index scan not needed:/ { di = 0 }
            on && /system usage:/ { el = "?"; if (match($0, /elapsed: [0-9.]+/)) el = substr($0, RSTART + 9, RLENGTH - 9)
                printf "#   %s  pages removed %s, remain %s; tuples removed %s, not yet removable %s, dead items %s; %s s\n", t, pr, rem, tr, nr, di, el
                on = 0 }' "$CLUSTER/log"
    fi
    if [ "$mode" = off ] && [ "${BLOAT_COMPACT:-1}" = 1 ]; then
        psql -X -q "$dburl" -c 'VACUUM FULL "OutboxEvent"'
        echo "# for reference, after VACUUM FULL (no dead space): total $(mb "$(q_db "$dburl" "SELECT pg_total_relation_size('\"OutboxEvent\"')")") MB, heap $(mb "$(q_db "$dburl" "SELECT pg_relation_size('\"OutboxEvent\"')")") MB, indexes $(mb "$(q_db "$dburl" "SELECT pg_indexes_size('\"OutboxEvent\"')")") MB"
    fi
    q "DROP DATABASE \"$DB\" WITH (FORCE)"
    DB=
}

for mode in "${MODES[@]}"; do
    run_one "$mode"
done
