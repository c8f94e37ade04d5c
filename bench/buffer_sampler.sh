#!/usr/bin/env bash
# Samples what the database's buffer cache and WAL do during another bench (the held-snapshot
# soak in docs/benchmarks.md): every INTERVAL seconds, one line with the time and the
# cluster-wide counters since the previous line: blocks read from outside shared buffers
# (pg_stat_database.blks_read) and found in them (blks_hit), buffers backends wrote
# themselves to make room (pg_stat_bgwriter.buffers_backend), checkpoints, WAL full-page
# images and bytes (pg_stat_wal). Runs until stopped or for DURATION seconds.
#
#   DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres DURATION=660 bench/buffer_sampler.sh &
#
# Environment: INTERVAL=30, DURATION=660.
set -euo pipefail
: "${DATABASE_URL:?set DATABASE_URL to the server the other bench uses}"
INTERVAL=${INTERVAL:-30} DURATION=${DURATION:-660}
echo "# bench/buffer_sampler.sh $(date -u +%FT%TZ) every ${INTERVAL}s; per interval, cluster-wide"
echo "time blks_read_per_s blks_hit_per_s backend_writes_per_s checkpoints wal_fpi wal_mb"
sample() {
  psql -AtqF' ' "$DATABASE_URL" -c "SELECT (SELECT sum(blks_read) FROM pg_stat_database),
      (SELECT sum(blks_hit) FROM pg_stat_database), buffers_backend,
      checkpoints_timed + checkpoints_req, w.wal_fpi, w.wal_bytes
    FROM pg_stat_bgwriter, pg_stat_wal w"
}
read -r r0 h0 b0 c0 f0 w0 < <(sample)
end=$((SECONDS + DURATION))
while ((SECONDS < end)); do
  sleep "$INTERVAL"
  read -r r h b c f w < <(sample)
  printf '%s %d %d %d %d %d %.1f\n' "$(date +%T)" $(((r - r0) / INTERVAL)) $(((h - h0) / INTERVAL)) \
    $(((b - b0) / INTERVAL)) $((c - c0)) $((f - f0)) "$(awk -v a="$w" -v b="$w0" 'BEGIN {print (a - b) / 1048576}')"
  r0=$r h0=$h b0=$b c0=$c f0=$f w0=$w
done
