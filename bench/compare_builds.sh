#!/usr/bin/env bash
# This build against another one (the previous release), alternating, on one machine: the
# relay bench (`cargo bench --bench relay`) run once per build per round, each build with its
# own migration (RELAY_BENCH_MIGRATE_WITH_BIN=1), so a trigger or index change is measured
# with the relay that goes with it.
#
#   OTHER_BIN=path/to/old/outbox-relay bench/compare_builds.sh
#
# Environment:
#   OTHER_BIN          the build to compare with (required), e.g. the previous release:
#                      git archive <commit> | tar -x -C /tmp/old && (cd /tmp/old &&
#                      cargo build --release --bin outbox-relay)
#   ROUNDS=3           rounds; each runs OTHER then THIS, or THIS then OTHER (alternating)
#   SCENARIOS=commit_path,drain,latency
#   DATABASE_URL       unset: the bench's throwaway cluster (durable, autovacuum off);
#                      set: that server as it is configured (e.g. the machine's standard one)
#   any RELAY_BENCH_* knob (benches/relay/main.rs), passed through
#
# Output: each run's summary line, prefixed with the build and round, on stdout; progress
# and the bench's own lines on stderr. Medians over rounds are left to the reader (jq).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
: "${OTHER_BIN:?set OTHER_BIN to the relay binary to compare with}"
ROUNDS=${ROUNDS:-3}
SCENARIOS=${SCENARIOS:-commit_path,drain,latency}
cd "$ROOT"
cargo build --release --bin outbox-relay --benches >&2
THIS_BIN=$ROOT/target/release/outbox-relay

echo "# bench/compare_builds.sh ROUNDS=$ROUNDS SCENARIOS=$SCENARIOS $(date -u +%FT%TZ)"
echo "# this: $(git -C "$ROOT" describe --always --dirty) ($THIS_BIN); other: $OTHER_BIN"
if [[ -n ${DATABASE_URL:-} ]]; then
    echo "# database: the server at DATABASE_URL, as it is configured"
else
    echo "# database: the bench's throwaway cluster (durable commits, autovacuum off)"
fi
run() {
    local label=$1 bin=$2 round=$3
    local line
    line=$(RELAY_BENCH_RELAY_BIN=$bin RELAY_BENCH_MIGRATE_WITH_BIN=1 RELAY_BENCH_REPS=1 \
        RELAY_BENCH_SCENARIOS=$SCENARIOS cargo bench --bench relay |
        grep -v "^#")
    while IFS= read -r l; do
        printf '%s round %s: %s\n' "$label" "$round" "$l"
    done <<<"$line"
}
for round in $(seq 1 "$ROUNDS"); do
    if ((round % 2)); then
        run other "$OTHER_BIN" "$round"
        run this "$THIS_BIN" "$round"
    else
        run this "$THIS_BIN" "$round"
        run other "$OTHER_BIN" "$round"
    fi
done
