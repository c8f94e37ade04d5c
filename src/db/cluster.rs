//! The relays' reports for the cluster-wide dashboard (migration 011, see
//! [`crate::observe::cluster`]): each relay writes its latest state and the seconds it
//! counted since its last report in one statement; a dashboard reads every relay's in one.

use deadpool_postgres::Pool;

use crate::db::table::TableSettings;

/// How long a silent instance and its seconds are kept.
const KEEP_SECONDS: i64 = 3600;

/// One report: upserts `$1`'s row, appends its seconds from `$6` (`$8` delivered, `$9`
/// failed; none when empty), and deletes what is older than an hour (other instances' rows
/// too: any relay's report keeps the tables small). `$7`: the relay is stopping.
const REPORT: &str = "
WITH me AS (
    INSERT INTO {instances} AS i (instance, version, started_at, seen_at, stopped_at, every_s, health)
    VALUES ($1, $2, $3::text::timestamptz, now(), CASE WHEN $7::bool THEN now() END, $4::int4,
            $5::text::jsonb)
    ON CONFLICT (instance) DO UPDATE
       SET version = excluded.version, started_at = excluded.started_at,
           seen_at = excluded.seen_at, stopped_at = excluded.stopped_at,
           every_s = excluded.every_s, health = excluded.health
), seconds AS (
    INSERT INTO {activity} (instance, first_second, delivered, failed)
    SELECT $1, $6::int8, $8::int4[], $9::int4[] WHERE cardinality($8::int4[]) > 0
), old_seconds AS (
    DELETE FROM {activity}
     WHERE first_second + cardinality(delivered) < extract(epoch FROM now())::int8 - {keep}
), old_instances AS (
    DELETE FROM {instances}
     WHERE seen_at < now() - make_interval(secs => {keep}) AND instance <> $1
)
SELECT 1";

/// Every instance with its seconds that end after `$1` (unix), oldest instance first.
const READ: &str = "
SELECT i.instance, i.version, to_json(i.started_at)#>>'{}', to_json(i.seen_at)#>>'{}',
       to_json(i.stopped_at)#>>'{}', i.every_s,
       extract(epoch FROM now() - i.seen_at)::float8, i.health::text,
       (SELECT coalesce(json_agg(json_build_array(a.first_second, a.delivered, a.failed)
                                 ORDER BY a.first_second), '[]')::text
          FROM {activity} a
         WHERE a.instance = i.instance AND a.first_second + cardinality(a.delivered) > $1::int8)
  FROM {instances} i
 ORDER BY i.started_at, i.instance";

/// The statements for one table's reports.
#[derive(Debug, Clone)]
pub struct ClusterSql {
    report: String,
    read: String,
}

/// What a relay writes about itself.
#[derive(Debug)]
pub struct Report<'a> {
    pub instance: &'a str,
    pub version: &'a str,
    /// RFC 3339.
    pub started_at: &'a str,
    /// How often it reports, in seconds: readers call it gone after twice that in silence.
    pub every_s: i32,
    /// JSON: see [`crate::observe::cluster::Health`].
    pub health: String,
    pub stopping: bool,
    /// The unix second of `delivered[0]` and `failed[0]`.
    pub first_second: i64,
    pub delivered: Vec<i32>,
    pub failed: Vec<i32>,
}

/// One instance as read back.
#[derive(Debug, Clone)]
pub struct Row {
    pub instance: String,
    pub version: String,
    pub started_at: String,
    pub seen_at: String,
    pub stopped_at: Option<String>,
    pub every_s: i32,
    /// Seconds since its last report, by the database's clock.
    pub silent_s: f64,
    /// Its `health` JSON.
    pub health: String,
    /// `[[first_second, [delivered...], [failed...]], ...]`.
    pub seconds: String,
}

impl ClusterSql {
    pub fn new(settings: &TableSettings) -> Self {
        let instances = settings.in_schema(&settings.instances_table());
        let activity = settings.in_schema(&settings.activity_table());
        let fill = |sql: &str| {
            sql.replace("{instances}", &instances)
                .replace("{activity}", &activity)
                .replace("{keep}", &KEEP_SECONDS.to_string())
        };
        Self {
            report: fill(REPORT),
            read: fill(READ),
        }
    }

    pub async fn report(&self, pool: &Pool, r: &Report<'_>) -> anyhow::Result<()> {
        super::query(
            pool,
            &self.report,
            &[
                &r.instance,
                &r.version,
                &r.started_at,
                &r.every_s,
                &r.health,
                &r.first_second,
                &r.stopping,
                &r.delivered,
                &r.failed,
            ],
        )
        .await?;
        Ok(())
    }

    /// Every instance, with its seconds after `since` (unix).
    pub async fn read(&self, pool: &Pool, since: i64) -> anyhow::Result<Vec<Row>> {
        let rows = super::query(pool, &self.read, &[&since]).await?;
        rows.iter()
            .map(|r| {
                Ok(Row {
                    instance: r.try_get(0)?,
                    version: r.try_get(1)?,
                    started_at: r.try_get(2)?,
                    seen_at: r.try_get(3)?,
                    stopped_at: r.try_get(4)?,
                    every_s: r.try_get(5)?,
                    silent_s: r.try_get(6)?,
                    health: r.try_get(7)?,
                    seconds: r.try_get(8)?,
                })
            })
            .collect()
    }
}
