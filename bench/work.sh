#!/usr/bin/env bash
# Work per event, counted in instructions rather than seconds. On this shared 2-core machine
# the throughput of the same drain moves by 15-20 % from run to run; the instructions a drain
# executes do not depend on what else the machine is doing, so two builds, or two cases, can
# be told apart by a few percent (issue 20's "an endpoint that is down costs the healthy ones
# less than 1 %"; issue 14's cost per event).
#
#   bench/work.sh [RELAY_BIN ...]      default: target/release/outbox-relay
#
# A throwaway PostgreSQL cluster runs under valgrind's callgrind, counting only the client
# backends (collection is on inside PostgresMain: the postmaster, the checkpointer and the
# WAL writer are not counted). Each case drains WORK_EVENTS pending events on a fresh
# database with one relay, itself under callgrind, to webhooks on a loopback receiver
# (python3; its own work is not counted):
#
#   one            endpoint a, answering 204 (a plain drain)
#   two_healthy    endpoints a and b, both answering 204
#   all_healthy    a, b and c, all answering 204
#   down_breaker   a, b and c; c answers 500 to everything and has a circuit breaker
#                  (failures = 10, cooldown = "1h": no probe inside the run)
#   down_no_breaker  the same without the breaker (slow under valgrind: every event is retried)
#
# The figure per case is the instructions of the relay process plus those of every backend
# that served it, per event delivered to every healthy endpoint. The cost lines compare each
# case with two_healthy (and each binary with the first) in the same round. Setup (migrate,
# the inserts, CHECKPOINT) runs before the relay starts and is not counted. Several binaries
# alternate within each round. Under valgrind the relay and PostgreSQL run 20-100 times
# slower, so batches and the relay's timed work (heartbeats, reports, lease extensions) are
# not what they are in a real drain: compare figures from this script only with each other.
# The lease is 10 minutes, so that no lease extension (every third of a lease) falls inside
# a run: when one lands, and what it collides with, depends on the run's length.
# The `idle` line (WORK_IDLE=1) is the relay with nothing to do for as long as the slowest
# case took, per WORK_EVENTS events.
#
# Environment:
#   WORK_EVENTS=10000  WORK_ROUNDS=2  WORK_CASES="two_healthy down_breaker all_healthy"
#   WORK_IDLE=0        1: also measure an idle relay (see above), with the first binary
#   WORK_KEEP=DIR      keep each run's callgrind files in DIR/BIN_INDEX-CASE-ROUND/, for
#                      callgrind_annotate
#   WORK_AFTER_MIGRATE=SQL  run on each fresh database after `migrate` (a schema variant)
#   WORK_AFTER_DRAIN=SQL    run, and counted, once the relay has stopped (work a variant
#                      defers, e.g. flushing a GIN pending list)
#   PG_BIN=/usr/lib/postgresql/15/bin
# Needs valgrind, python3, psql, curl, runuser (as root: the cluster runs as `postgres`).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BINS=("$@")
[ ${#BINS[@]} -gt 0 ] || BINS=("$ROOT/target/release/outbox-relay")
EVENTS=${WORK_EVENTS:-10000}
ROUNDS=${WORK_ROUNDS:-2}
CASES=${WORK_CASES:-two_healthy down_breaker all_healthy}
IDLE=${WORK_IDLE:-0}
PG_BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)}
for bin in "${BINS[@]}"; do
    [ -x "$bin" ] || { echo "no relay binary at $bin: cargo build --release" >&2; exit 2; }
done
for tool in valgrind callgrind_annotate python3 psql curl runuser; do
    command -v $tool >/dev/null || { echo "needs $tool (apt-get install valgrind postgresql-client curl)" >&2; exit 2; }
done
[ "$(id -u)" = 0 ] || { echo "run as root: the throwaway cluster runs as the postgres user" >&2; exit 2; }

WORK=$(mktemp -d /tmp/outbox-work.XXXXXX)
chmod 755 "$WORK" && chown postgres "$WORK"  # the cluster writes its log and socket here
RELAY_PID='' RECEIVER_PID=''
cleanup() {
    set +e
    [ -n "$RELAY_PID" ] && kill "$RELAY_PID" 2>/dev/null && wait "$RELAY_PID" 2>/dev/null
    [ -n "$RECEIVER_PID" ] && kill "$RECEIVER_PID" 2>/dev/null
    [ -d "$WORK/data" ] && runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null 2>&1
    rm -rf "$WORK"
}
trap cleanup EXIT

. "$ROOT/bench/lib.sh"
PORT=$(free_port)
SERVER="postgres://postgres@127.0.0.1:$PORT/postgres"
export PGOPTIONS="-c client_min_messages=warning"

mkdir -p "$WORK/cg" && chown postgres "$WORK/cg"
runuser -u postgres -- "$PG_BIN/initdb" -D "$WORK/data" -A trust -U postgres >/dev/null
# The bench's tuned-cluster settings, so that WAL and checkpoints do not differ by case.
runuser -u postgres -- bash -c "cd '$WORK' && exec valgrind --tool=callgrind --collect-atstart=no \
    --toggle-collect=PostgresMain --callgrind-out-file='$WORK/cg/pg.%p' \
    '$PG_BIN/postgres' -D '$WORK/data' -p $PORT -c listen_addresses=127.0.0.1 \
    -c unix_socket_directories='$WORK' -c autovacuum=off -c max_wal_size=4GB \
    -c shared_buffers=256MB -c max_connections=50 >'$WORK/pg.log' 2>&1" &
for _ in $(seq 1 120); do psql -tAq "$SERVER" -c 'SELECT 1' >/dev/null 2>&1 && break; sleep 1; done
psql -tAq "$SERVER" -c 'SELECT 1' >/dev/null || { cat "$WORK/pg.log" >&2; exit 1; }

cat > "$WORK/receiver.py" <<'EOF'
import http.server, json, sys, threading
lock = threading.Lock()
seen = {}      # path -> set of webhook-ids
requests = {}  # path -> count
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get('content-length', 0)))
        with lock:
            requests[self.path] = requests.get(self.path, 0) + 1
            seen.setdefault(self.path, set()).add(self.headers.get('webhook-id'))
        self.send_response(500 if self.path == '/c' and DOWN else 204)
        self.send_header('content-length', '0'); self.end_headers()
    def do_GET(self):
        with lock:
            body = json.dumps({p: {"unique": len(seen[p]), "requests": requests[p]} for p in seen}).encode()
        self.send_response(200); self.send_header('content-length', str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
DOWN = sys.argv[2] == "down"
http.server.ThreadingHTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()
EOF

totals() { # the sum of the `totals:` lines of the files given
    local sum=0 f t
    for f in "$@"; do
        t=$(awk '/^totals:/ {print $2}' "$f")
        sum=$((sum + ${t:-0}))
    done
    echo $sum
}

# Waits until every backend that has exited has written its file (a file is written when
# its process exits; none may be left empty by a backend still closing).
settle() {
    local before after
    before=$(ls "$WORK/cg" | wc -l)
    for _ in $(seq 1 60); do
        sleep 2
        after=$(ls "$WORK/cg" | wc -l)
        [ "$after" = "$before" ] && return 0
        before=$after
    done
    echo "callgrind files still appearing after 120 s" >&2; exit 1
}

echo "# bench/work.sh $(date -u +%FT%TZ) on $(hostname): ${EVENTS} events per case, rounds ${ROUNDS}, cases: ${CASES}"
[ -z "${WORK_AFTER_MIGRATE:-}" ] || echo "# after migrate: $WORK_AFTER_MIGRATE"
[ -z "${WORK_AFTER_DRAIN:-}" ] || echo "# after the drain, counted: $WORK_AFTER_DRAIN"
echo "# PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') under $(valgrind --version) callgrind, client backends only; the repository at $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
for i in "${!BINS[@]}"; do
    echo "# binary $i: ${BINS[$i]/#$ROOT\//} (sha256 $(sha256sum "${BINS[$i]}" | cut -c1-12))"
done
printf '%-3s %-16s %5s %8s %14s %14s %14s %9s %9s\n' bin case round wall_s relay_Ir/ev pg_Ir/ev total_Ir/ev req_to_c pg_files

# run BIN_INDEX CASE ROUND: prints the case's line and sets LAST_TOTAL (instructions per event).
run() {
    local b=$1 case=$2 round=$3
    local bin=${BINS[$b]} db="work_${b}_${case}_$round" hook http url down="" breaker=""
    case $case in
        one) hooks="a" ;;
        two_healthy) hooks="a b" ;;
        all_healthy) hooks="a b c" ;;
        down_breaker) hooks="a b c"; down=down; breaker=1 ;;
        down_no_breaker) hooks="a b c"; down=down ;;
        idle) hooks="a b" ;;
        *) echo "unknown case $case" >&2; exit 2 ;;
    esac
    psql -q "$SERVER" -c "CREATE DATABASE \"$db\"" >/dev/null
    url="postgres://postgres@127.0.0.1:$PORT/$db"
    hook=$(free_port); http=$(free_port)
    python3 "$WORK/receiver.py" "$hook" "${down:-up}" & RECEIVER_PID=$!
    {
        echo "database_url = \"$url\""
        echo "retention = \"off\""
        # No lease extension inside a run: when one lands depends on the run's length.
        echo "lease = \"10m\""
        echo "[http]"
        echo "listen = \"127.0.0.1:$http\""
        for h in $hooks; do
            echo "[[webhook]]"
            echo "name = \"$h\""
            echo "url = \"http://127.0.0.1:$hook/$h\""
            echo "secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\""
            if [ "$h" = c ] && [ -n "$breaker" ]; then
                printf '[webhook.circuit_breaker]\nfailures = 10\ncooldown = "1h"\n'
            fi
        done
    } > "$WORK/config.toml"
    chmod 600 "$WORK/config.toml"
    "$bin" --config "$WORK/config.toml" migrate >/dev/null 2>&1
    [ -z "${WORK_AFTER_MIGRATE:-}" ] || psql -q "$url" -v ON_ERROR_STOP=1 -c "$WORK_AFTER_MIGRATE" >/dev/null
    local n=0
    if [ "$case" != idle ]; then
        n=$EVENTS
        for a in $(seq 0 1000 $((EVENTS - 1))); do
            echo "INSERT INTO \"OutboxEvent\" (org_id, event_type, entity_type, entity_id, payload)
                  SELECT 'org_bench', 'BENCH.EVENT', 'Bench', n::text,
                         jsonb_build_object('pad', repeat('x', 200), 'bench_n', n)
                    FROM generate_series($a, $(( a + 999 < EVENTS - 1 ? a + 999 : EVENTS - 1 ))) AS n;"
        done | psql -q "$url" >/dev/null
        psql -q "$url" -c 'ANALYZE "OutboxEvent"' -c 'CHECKPOINT' >/dev/null
    fi
    settle
    ls "$WORK/cg" | sort > "$WORK/before"
    local t0=$SECONDS
    valgrind --tool=callgrind --callgrind-out-file="$WORK/relay.%p" \
        "$bin" --config "$WORK/config.toml" run >"$WORK/relay.log" 2>&1 & RELAY_PID=$!
    local counts='{}' healthy="/a /b"
    [ "$case" = one ] && healthy="/a"
    if [ "$case" = idle ]; then
        sleep "$IDLE_S"
    else
        while :; do
            sleep 1
            counts=$(curl -sf "http://127.0.0.1:$hook/" || echo '{}')
            python3 -c 'import json,sys; c=json.loads(sys.argv[1]); n=int(sys.argv[2]);
sys.exit(0 if all(c.get(p,{}).get("unique",0) >= n for p in sys.argv[3:]) else 1)' "$counts" "$n" $healthy && break
            [ $((SECONDS - t0)) -lt 1800 ] || { echo "$case: not delivered after 1800 s: $counts" >&2; exit 1; }
        done
    fi
    local wall=$((SECONDS - t0))
    kill -TERM "$RELAY_PID"; wait "$RELAY_PID" || true
    local relay_file; relay_file=$(ls "$WORK"/relay.* | head -1)
    local relay_ir; relay_ir=$(totals "$relay_file")
    RELAY_PID=''
    [ -z "${WORK_AFTER_DRAIN:-}" ] || psql -q "$url" -v ON_ERROR_STOP=1 -c "$WORK_AFTER_DRAIN" >/dev/null
    settle
    ls "$WORK/cg" | sort > "$WORK/after"
    local new; new=$(comm -13 "$WORK/before" "$WORK/after" | sed "s|^|$WORK/cg/|")
    # shellcheck disable=SC2086
    local pg_ir; pg_ir=$(totals $new)
    local files; files=$(echo "$new" | grep -c . || true)
    if [ -n "${WORK_KEEP:-}" ]; then
        mkdir -p "$WORK_KEEP/$b-$case-$round"
        # shellcheck disable=SC2086
        cp $new "$relay_file" "$WORK_KEEP/$b-$case-$round/"
    fi
    rm -f "$WORK"/relay.*
    local req_c; req_c=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1]).get("/c",{}).get("requests",0))' "$counts")
    kill "$RECEIVER_PID"; RECEIVER_PID=''
    psql -q "$SERVER" -c "DROP DATABASE \"$db\" WITH (FORCE)" >/dev/null
    local per=$(( n > 0 ? n : EVENTS ))  # idle: what its timed work adds to each event of a case
    LAST_TOTAL=$(((relay_ir + pg_ir) / per)); LAST_WALL=$wall
    printf '%-3s %-16s %5s %8s %14s %14s %14s %9s %9s\n' "$b" "$case" "$round" "$wall" \
        $((relay_ir / per)) $((pg_ir / per)) "$LAST_TOTAL" "$req_c" "$files"
}

declare -A TOTAL
read -ra CASE_LIST <<< "$CASES"
SLOWEST=0
# cost_line LABEL BASE KEY: LABEL, then KEY's total against BASE's in each round (keys of TOTAL
# without the round).
cost_line() {
    local line="$1:" round
    for round in $(seq 1 "$ROUNDS"); do
        line+=" $(python3 -c 'import sys; a,b=map(int,sys.argv[1:]); print(f"{100*(b-a)/a:+.2f}%")' \
            "${TOTAL[$2,$round]}" "${TOTAL[$3,$round]}")"
    done
    echo "$line"
}
for round in $(seq 1 "$ROUNDS"); do
    # The order of the binaries and of the cases rotates each round.
    for j in "${!BINS[@]}"; do
        b=$(((j + round - 1) % ${#BINS[@]}))
        for k in $(seq 0 $((${#CASE_LIST[@]} - 1))); do
            c=${CASE_LIST[$(((k + round - 1) % ${#CASE_LIST[@]}))]}
            run "$b" "$c" "$round"
            TOTAL[$b,$c,$round]=$LAST_TOTAL
            [ "$LAST_WALL" -gt "$SLOWEST" ] && SLOWEST=$LAST_WALL
        done
    done
done
if [ "$IDLE" = 1 ]; then
    IDLE_S=$SLOWEST run 0 idle 1
fi

if [[ " $CASES " == *" two_healthy "* ]]; then
    echo "# each case against two_healthy, same binary and round (instructions per event, relay + backends):"
    for b in "${!BINS[@]}"; do
        for c in "${CASE_LIST[@]}"; do
            [ "$c" = two_healthy ] || cost_line "binary $b, $c" "$b,two_healthy" "$b,$c"
        done
    done
fi
if [ ${#BINS[@]} -gt 1 ]; then
    echo "# each binary against binary 0, same case and round:"
    for b in $(seq 1 $((${#BINS[@]} - 1))); do
        for c in "${CASE_LIST[@]}"; do
            cost_line "binary $b, $c" "0,$c" "$b,$c"
        done
    done
fi
