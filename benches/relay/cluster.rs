//! `cluster_report`: what the cluster-wide dashboard costs the database (issue 20 item 6).
//!
//! Three instances report as busy relays do (`ClusterSql::report`, the relay's own
//! statement): two endpoints each with a 12-bucket latency histogram and a last error, and
//! 10 seconds of counts at about 500 events/s. First an hour of such reports, so the
//! activity table holds what it holds in steady state (360 rows per instance); then, after a
//! `CHECKPOINT`, `REPORTS` more, measured: WAL bytes and milliseconds per report. Then the
//! dashboard's read (`cluster::read`, one statement for every instance and its last hour
//! of seconds), `READS` times: milliseconds each.

use std::time::Instant;

use serde_json::{json, Value};

use crate::common::stats::round2;
use crate::setup::{wal_bytes, Ctx};
use outbox_relay::db::cluster::{ClusterSql, Report};
use outbox_relay::observe::activity::{unix_now, LastError, Window};
use outbox_relay::observe::cluster::{self, EndpointReport, Health};

const INSTANCES: usize = 3;
const REPORTS: usize = 300;
const READS: usize = 30;
/// Seconds a busy relay's report covers.
const SECONDS: usize = 10;

fn health() -> String {
    let endpoint = |i: u64| {
        let mut window = Window {
            attempts: 150_000 + i,
            succeeded: 149_990,
            ..Window::default()
        };
        for k in 20..32 {
            window.latency[k] = 12_500;
        }
        EndpointReport {
            window,
            in_flight: 37,
            last_error: Some(LastError {
                at: "2026-12-06T23:59:59.123Z".into(),
                message: "HTTP 503 from the endpoint: upstream connect error".into(),
            }),
        }
    };
    let endpoints = [("billing", 1), ("search-index", 2)]
        .into_iter()
        .map(|(n, i)| (n.to_owned(), endpoint(i)))
        .collect();
    serde_json::to_string(&Health { endpoints }).expect("serialises")
}

fn report<'a>(instance: &'a str, health: &'a str, first_second: i64) -> Report<'a> {
    Report {
        instance,
        version: env!("CARGO_PKG_VERSION"),
        started_at: "2026-12-06T00:00:00Z",
        every_s: 10,
        health: health.to_owned(),
        stopping: false,
        first_second,
        delivered: (0..SECONDS as i32).map(|i| 480 + i * 3).collect(),
        failed: (0..SECONDS as i32).map(|i| i % 2).collect(),
    }
}

pub async fn cluster_report(ctx: &Ctx<'_>) -> anyhow::Result<Value> {
    let db = ctx.fresh_db().await?;
    let result = async {
        let pool = outbox_relay::db::pool(db.cfg.database_url.get())?;
        let sql = ClusterSql::new(&db.cfg.table_settings());
        let client = outbox_relay::db::connect(db.cfg.database_url.get()).await?;
        let names: Vec<String> = (0..INSTANCES)
            .map(|i| format!("bench-host-{i}/100{i}"))
            .collect();
        let health = health();
        let now = unix_now() as i64;
        // An hour of history: what the tables hold in steady state.
        for k in (0..360).rev() {
            for name in &names {
                let first = now - 10 * k - SECONDS as i64;
                sql.report(&pool, &report(name, &health, first)).await?;
            }
        }
        ctx.checkpoint().await?;
        let wal0 = wal_bytes(&client).await?;
        let mut took = Vec::with_capacity(REPORTS);
        for k in 0..REPORTS {
            let name = &names[k % INSTANCES];
            let first = unix_now() as i64 - SECONDS as i64;
            let t = Instant::now();
            sql.report(&pool, &report(name, &health, first)).await?;
            took.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let wal1 = wal_bytes(&client).await?;
        let mut reads = Vec::with_capacity(READS);
        let mut rows = 0;
        for _ in 0..READS {
            let t = Instant::now();
            let got = cluster::read(&pool, &sql).await?;
            reads.push(t.elapsed().as_secs_f64() * 1e3);
            rows = got.iter().map(|i| i.seconds.len()).sum::<usize>();
        }
        took.sort_by(f64::total_cmp);
        reads.sort_by(f64::total_cmp);
        let activity: i64 = client
            .query_one(
                &format!(
                    "SELECT pg_total_relation_size('{}')",
                    db.cfg
                        .table_settings()
                        .in_schema(&db.cfg.table_settings().activity_table())
                ),
                &[],
            )
            .await?
            .get(0);
        anyhow::Ok(json!({
            "instances": INSTANCES,
            "reports": REPORTS,
            "statements_per_report": 1,
            "wal_bytes_per_report": round2((wal1 - wal0) as f64 / REPORTS as f64),
            "report_ms_median": round2(took[took.len() / 2]),
            "report_ms_p95": round2(took[took.len() * 95 / 100]),
            "read_ms_median": round2(reads[reads.len() / 2]),
            "read_activity_rows": rows,
            "activity_table_bytes": activity,
        }))
    }
    .await;
    ctx.drop_db(&db).await;
    result
}
