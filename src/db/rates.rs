//! The shared token buckets of rate-limited endpoints (migration 010, see
//! [`crate::sinks::limiter`]): one row per endpoint, refilled by the time since its last
//! grant, so no background writer is needed and every relay reads the same bucket.

use std::time::Duration;

use deadpool_postgres::Pool;

use crate::db::table::TableSettings;

/// Creates `$1`'s bucket (empty) unless it exists.
const SEED: &str = "
INSERT INTO {rates} (endpoint, tokens, updated_at) VALUES ($1, 0, now())
ON CONFLICT (endpoint) DO NOTHING";

/// Takes up to $4 tokens from `$1`'s bucket (rate $2 per second, holding at most $3). Every
/// value is worked out from the row itself in the SET list, so when relays grant at once
/// the row lock orders them and each sees the other's result (no lost update). Nothing is
/// granted while `blocked_until` lies ahead. Columns: tokens granted, and seconds until
/// asking again is worth it: the block's end, or until 80 % of what was asked for (at most
/// the burst) is back, so a busy relay takes most of a burst at a time, not a token a
/// statement, and comes back before the bucket is full (tokens past the cap are lost).
const GRANT: &str = "
UPDATE {rates} AS r SET
    last_grant = CASE WHEN r.blocked_until > clock_timestamp() THEN 0
                      ELSE least($4::int4, floor(least($3::float8, r.tokens + $2::float8 *
                           greatest(0, extract(epoch FROM clock_timestamp() - r.updated_at)))))::int4
                 END,
    tokens = least($3::float8, r.tokens + $2::float8 *
                 greatest(0, extract(epoch FROM clock_timestamp() - r.updated_at)))
             - CASE WHEN r.blocked_until > clock_timestamp() THEN 0
                    ELSE least($4::int4, floor(least($3::float8, r.tokens + $2::float8 *
                         greatest(0, extract(epoch FROM clock_timestamp() - r.updated_at)))))
               END,
    updated_at = clock_timestamp()
 WHERE r.endpoint = $1
RETURNING r.last_grant,
          CASE WHEN r.blocked_until > clock_timestamp()
               THEN extract(epoch FROM r.blocked_until - clock_timestamp())::float8
               ELSE greatest(0, (0.8 * least($4::int4::float8, $3::float8) - r.tokens) / $2::float8) END";

/// A 429's Retry-After: no grants for anyone for $2 seconds (a later block is kept).
const BLOCK: &str = "
UPDATE {rates} SET blocked_until = greatest(coalesce(blocked_until, '-infinity'),
                                            clock_timestamp() + make_interval(secs => $2))
 WHERE endpoint = $1";

/// The statements for one table's buckets.
#[derive(Debug, Clone)]
pub struct Rates {
    seed: String,
    grant: String,
    block: String,
}

/// What a grant came to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Grant {
    pub tokens: u32,
    /// When asking again is worth it (the bucket is empty or blocked).
    pub retry_in: Duration,
}

impl Rates {
    pub fn new(settings: &TableSettings) -> Self {
        let table = settings.in_schema(&settings.rates_table());
        let r = |sql: &str| sql.replace("{rates}", &table);
        Self {
            seed: r(SEED),
            grant: r(GRANT),
            block: r(BLOCK),
        }
    }

    /// Makes sure `endpoint` has a bucket.
    pub async fn seed(&self, pool: &Pool, endpoint: &str) -> anyhow::Result<()> {
        super::query(pool, &self.seed, &[&endpoint]).await?;
        Ok(())
    }

    /// Takes up to `want` tokens for `endpoint`.
    pub async fn grant(
        &self,
        pool: &Pool,
        endpoint: &str,
        per_second: f64,
        burst: f64,
        want: u32,
    ) -> anyhow::Result<Grant> {
        let want = i32::try_from(want).unwrap_or(i32::MAX);
        let rows =
            super::query(pool, &self.grant, &[&endpoint, &per_second, &burst, &want]).await?;
        let Some(row) = rows.first() else {
            anyhow::bail!("no rate bucket for {endpoint:?} (run `outbox-relay migrate`)");
        };
        let tokens: i32 = row.try_get(0)?;
        let retry_in: f64 = row.try_get(1)?;
        Ok(Grant {
            tokens: tokens.max(0) as u32,
            retry_in: Duration::from_secs_f64(retry_in.clamp(0.0, 3600.0)),
        })
    }

    /// Stops grants to `endpoint` for `d`, for every relay.
    pub async fn block(&self, pool: &Pool, endpoint: &str, d: Duration) -> anyhow::Result<()> {
        super::query(pool, &self.block, &[&endpoint, &d.as_secs_f64()]).await?;
        Ok(())
    }
}
