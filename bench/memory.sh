#!/usr/bin/env bash
# The relay's memory after large payloads (issue 15.11): RSS before, at the peak, after the
# drain, 10 s later and once the subscribers have left.
#
#   bench/memory.sh [RELAY_BIN ...]      default: target/release/outbox-relay
#
# Several binaries (e.g. two builds) run one after the other, alternating MEM_REPS times.
# Each run: a fresh database on MEM_DATABASE_URL's server, `migrate`, the relay (`run`) with
# SSE and one webhook to a loopback receiver (python3, answers 204), MEM_SUBSCRIBERS SSE
# subscribers of the events' org (curl), then MEM_EVENTS events of MEM_SIZE_MB each, one per
# transaction, delivered to the webhook and streamed to every subscriber. RSS and its peak
# come from /proc/<pid>/status (VmRSS, VmHWM).
#
# Environment:
#   MEM_EVENTS=30  MEM_SIZE_MB=10  MEM_SUBSCRIBERS=3  MEM_REPS=1
#   MEM_DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres   a server to create databases on
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BINS=("$@")
[ ${#BINS[@]} -gt 0 ] || BINS=("$ROOT/target/release/outbox-relay")
EVENTS=${MEM_EVENTS:-30}
SIZE_MB=${MEM_SIZE_MB:-10}
SUBSCRIBERS=${MEM_SUBSCRIBERS:-3}
REPS=${MEM_REPS:-1}
SERVER=${MEM_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
export PGOPTIONS="-c client_min_messages=warning"
for bin in "${BINS[@]}"; do
    [ -x "$bin" ] || { echo "no relay binary at $bin: cargo build --release" >&2; exit 2; }
done
for tool in psql python3 curl; do
    command -v $tool >/dev/null || { echo "needs $tool" >&2; exit 2; }
done

WORK=$(mktemp -d /tmp/outbox-memory.XXXXXX)
RELAY_PID='' RECEIVER_PID='' DB=''
cleanup() {
    set +e
    pkill -P $$ curl 2>/dev/null
    [ -n "$RELAY_PID" ] && kill "$RELAY_PID" 2>/dev/null && wait "$RELAY_PID" 2>/dev/null
    [ -n "$RECEIVER_PID" ] && kill "$RECEIVER_PID" 2>/dev/null
    [ -n "$DB" ] && psql -q "$SERVER" -c "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" >/dev/null 2>&1
    rm -rf "$WORK"
}
trap cleanup EXIT

. "$ROOT/bench/lib.sh"
db_url() { python3 -c 'import sys,urllib.parse as u; p=u.urlsplit(sys.argv[1]); print(u.urlunsplit(p._replace(path="/"+sys.argv[2])))' "$SERVER" "$1"; }
kb() { awk -v k="$2" '$1==k":"{print $2}' "/proc/$1/status"; }

cat > "$WORK/receiver.py" <<'EOF'
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get('content-length', 0)))
        self.send_response(204); self.end_headers()
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()
EOF
SECRET="memory-bench-secret-0123456789"
TOKEN=$(python3 - "$SECRET" <<'EOF'
import base64, hashlib, hmac, json, sys, time
b = lambda x: base64.urlsafe_b64encode(x).rstrip(b'=').decode()
now = int(time.time())
head = b(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
claims = b(json.dumps({"org_id": "org_mem", "iat": now, "exp": now + 3600}).encode())
sig = b(hmac.new(sys.argv[1].encode(), f"{head}.{claims}".encode(), hashlib.sha256).digest())
print(f"{head}.{claims}.{sig}")
EOF
)

echo "# bench/memory.sh $(date -u +%FT%TZ) on $(hostname): ${EVENTS} events of ${SIZE_MB} MB, ${SUBSCRIBERS} SSE subscribers, one webhook, reps ${REPS}"
echo "# server: $(psql -tAq "$SERVER" -c 'SHOW server_version') at ${SERVER%%\?*}"
printf '%-44s %6s %9s %9s %9s %9s %11s %8s\n' binary rep start_mb peak_mb drained_mb 10s_mb subs_gone_mb drain_s

run_once() {
    local bin=$1 rep=$2
    DB="outbox_memory_$$_$rep"
    psql -q "$SERVER" -c "DROP DATABASE IF EXISTS \"$DB\"" -c "CREATE DATABASE \"$DB\"" >/dev/null
    local url hook http
    url=$(db_url "$DB")
    hook=$(free_port)
    http=$(free_port)
    python3 "$WORK/receiver.py" "$hook" & RECEIVER_PID=$!
    cat > "$WORK/config.toml" <<EOF
database_url = "$url"
retention = "off"
[http]
listen = "127.0.0.1:$http"
[sse]
token_secret = "$SECRET"
[[webhook]]
name = "main"
url = "http://127.0.0.1:$hook/hook"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
EOF
    chmod 600 "$WORK/config.toml"
    "$bin" --config "$WORK/config.toml" migrate >/dev/null 2>&1
    "$bin" --config "$WORK/config.toml" run >"$WORK/relay.log" 2>&1 & RELAY_PID=$!
    until curl -sf "http://127.0.0.1:$http/readyz" >/dev/null; do sleep 0.2; done
    sleep 1
    local start; start=$(kb $RELAY_PID VmRSS)
    for _ in $(seq 1 "$SUBSCRIBERS"); do
        curl -sN -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$http/v1/events" >/dev/null &
    done
    sleep 1
    local t0=$SECONDS
    for i in $(seq 1 "$EVENTS"); do
        psql -q "$url" -c "INSERT INTO \"OutboxEvent\" (event_type, org_id, payload)
            SELECT 'BIG.EVENT', 'org_mem', jsonb_build_object('n', $i, 'blob', repeat(md5('$i'), $SIZE_MB * 1024 * 1024 / 32))"
    done
    local left=1 waited=0
    while [ "$left" != 0 ] && [ $waited -lt 600 ]; do
        left=$(psql -tAq "$url" -c "SELECT count(*) FROM \"OutboxEvent\" WHERE status <> 'COMPLETED'")
        sleep 0.5; waited=$((waited + 1))
    done
    [ "$left" = 0 ] || { echo "not drained after 300 s: $left left" >&2; exit 1; }
    local drain=$((SECONDS - t0)) drained peak later gone
    drained=$(kb $RELAY_PID VmRSS)
    sleep 10
    later=$(kb $RELAY_PID VmRSS)
    pkill -P $$ curl || true
    sleep 2
    gone=$(kb $RELAY_PID VmRSS)
    peak=$(kb $RELAY_PID VmHWM)
    mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
    printf '%-44s %6s %9s %9s %9s %9s %11s %8s\n' "${bin/#$ROOT\//}" "$rep" \
        "$(mb "$start")" "$(mb "$peak")" "$(mb "$drained")" "$(mb "$later")" "$(mb "$gone")" "$drain"
    kill "$RELAY_PID"; wait "$RELAY_PID" 2>/dev/null || true; RELAY_PID=''
    kill "$RECEIVER_PID"; RECEIVER_PID=''
    psql -q "$SERVER" -c "DROP DATABASE \"$DB\" WITH (FORCE)" >/dev/null; DB=''
}

for rep in $(seq 1 "$REPS"); do
    for bin in "${BINS[@]}"; do
        run_once "$bin" "$rep"
    done
done
