# Sourced by the pgbench scripts that compare variants of the outbox table (insert_cost.sh,
# hot_claims.sh): the app's insert, its plain table, a fresh database per variant, the
# rotation of the variants' order from round to round, and the median. Expects ROOT,
# DATABASE_URL and BIN set.
PGBENCH=$(command -v pgbench || ls /usr/lib/postgresql/*/bin/pgbench | tail -1)
base=${DATABASE_URL%/*}
# The app's single-row INSERT, in the README's plain-SQL shape, as a pgbench script.
APP_INSERT=$(cat <<'SQL'
\set n random(1, 1000000000)
INSERT INTO "OutboxEvent" (org_id, event_type, entity_type, entity_id, payload)
VALUES ('org_bench', 'BENCH.EVENT', 'Bench', :n::text, jsonb_build_object('pad', repeat('x', 100), 'bench_n', :n::int8));
SQL
)
# The app's own table with the same columns, primary key only: the 1.00 of the ratios.
PLAIN='CREATE TABLE "OutboxEvent" (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), org_id text,
  event_type text NOT NULL, entity_type text, entity_id text, payload jsonb NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now())'

# The variant to run at position $2 of round $3 ($1: how many), so that each round starts one
# further along and no variant always runs first.
rotated() { echo $((($2 + $3 - 1) % $1)); }

# fresh_db PREFIX VARIANT SQL: a new database PREFIX_VARIANT holding the plain table (VARIANT
# plain) or the table `migrate` makes, then SQL run on it; checkpointed; prints its URL.
fresh_db() {
  local db=$1_$2 url
  psql -Atq "$base/postgres" -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" >&2
  url=$base/$db
  if [[ $2 == plain ]]; then
    psql -Atq "$url" -c "$PLAIN" >&2
  else
    DATABASE_URL=$url "$BIN" migrate >/dev/null 2>&1 ||
      { echo "migrate failed: DATABASE_URL=$url $BIN migrate" >&2; exit 1; }
    if [[ -n $3 ]]; then psql -Atq "$url" -c "$3" >&2; fi
  fi
  psql -Atq "$url" -c CHECKPOINT >&2
  echo "$url"
}

# drop_db URL
drop_db() { psql -Atq "$base/postgres" -c "DROP DATABASE ${1##*/}"; }

# median "a b c ...": the middle value (the lower middle of an even count); "-" for none.
median() {
  tr ' ' '\n' <<<"$1" | grep -v '^-\?$' | sort -g |
    awk '{a[NR]=$1} END {if (NR) print a[int((NR+1)/2)]; else print "-"}'
}
