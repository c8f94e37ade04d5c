#!/usr/bin/env bash
# Time from a clean clone to the first delivered webhook (issue 17.9): a fresh target
# directory, `cargo build --release`, then `outbox-relay dev` until it prints its first
# "received" line. Crates already in ~/.cargo/registry are not downloaded again (a fresh
# machine also downloads them: `CARGO_HOME=$(mktemp -d) cargo fetch` took 3 s here).
#
#   bench/first_webhook.sh [RUNS]        default 1 run of each profile, alternating
#
# Each run builds twice from nothing, alternating: the release profile as shipped in
# Cargo.toml (thin LTO, 4 codegen units), and one without LTO and with 16 codegen units
# (given with --config), tried to cut the build.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${1:-1}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
git clone -q "$ROOT" "$WORK/src"
cd "$WORK/src"
echo "# $(date -u +%FT%TZ) $(nproc) cores, $(git rev-parse --short HEAD), $(rustc --version)"
echo "# profile | build s | dev start to first webhook s | total s"
one() {
    local name=$1
    shift
    rm -rf "$WORK/target"
    local t0=$SECONDS
    CARGO_TARGET_DIR=$WORK/target cargo build -q --release "$@"
    local built=$((SECONDS - t0))
    local t1
    t1=$(date +%s.%N)
    # DATABASE_URL unset: dev starts its own throwaway cluster, as on a fresh machine.
    env -u DATABASE_URL "$WORK/target/release/outbox-relay" dev --listen 127.0.0.1:0 \
        >"$WORK/dev.log" 2>&1 &
    local pid=$!
    for _ in $(seq 1 600); do
        grep -q '^received' "$WORK/dev.log" && break
        sleep 0.1
    done
    local t2
    t2=$(date +%s.%N)
    kill -INT $pid 2>/dev/null || true
    wait $pid 2>/dev/null || true
    grep -q '^received' "$WORK/dev.log" || { echo "no webhook:"; cat "$WORK/dev.log"; exit 1; }
    local first
    first=$(echo "$t2 - $t1" | bc)
    echo "$name | $built | $first | $(echo "$built + $first" | bc)"
}
for _ in $(seq 1 "$RUNS"); do
    one "release as shipped (thin LTO, 4 units)"
    one "tried (no LTO, 16 units)" --config 'profile.release.lto=false' \
        --config 'profile.release.codegen-units=16'
done
