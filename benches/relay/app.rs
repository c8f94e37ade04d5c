//! The app side: how fast `writers` connections commit single-row outbox inserts, with the
//! relay's NOTIFY trigger and without it (`outbox_relay_notify` dropped). PostgreSQL takes
//! one cluster-wide lock to queue notifications at commit and holds it until the commit is
//! durable, so notifying commits are serialised; this says what that costs. A LISTEN
//! connection drains the notifications, as a running relay would. No relay runs.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use outbox_relay::db::ident::quote_ident;
use serde_json::{json, Value};
use tokio_postgres::{AsyncMessage, NoTls};

use crate::common::stats::{pct_index, round2};
use crate::load::{insert_one_sql, ORG};
use crate::setup::{cpu_figures, Ctx};

/// Writers connect and prepare, then run this long before the measured window opens.
const RAMP: Duration = Duration::from_millis(500);

pub async fn inserts(ctx: &Ctx<'_>) -> anyhow::Result<Value> {
    let with = insert_run(ctx, true).await?;
    let without = insert_run(ctx, false).await?;
    let rate = |v: &Value| v["rows_per_s"].as_f64().unwrap_or(f64::NAN);
    let cost = round2(100.0 * (1.0 - rate(&with) / rate(&without)));
    eprintln!(
        "  inserts, {} writers: {} rows/s with the NOTIFY trigger, {} without ({cost}% cost)",
        ctx.p.writers, with["rows_per_s"], without["rows_per_s"]
    );
    Ok(json!({
        "writers": ctx.p.writers,
        "with_notify": with,
        "without_notify": without,
        "notify_cost_pct": cost,
    }))
}

async fn insert_run(ctx: &Ctx<'_>, notify: bool) -> anyhow::Result<Value> {
    let db = ctx.fresh_db().await?;
    let result = async {
        let table = db.cfg.qualified_table();
        let url = &db.cfg.database_url;
        if !notify {
            outbox_relay::db::connect(url)
                .await?
                .batch_execute(&format!("DROP TRIGGER outbox_relay_notify ON {table}"))
                .await?;
        }
        // The listener: counts what it is sent.
        let notified = Arc::new(AtomicU64::new(0));
        let (listener, mut conn) = outbox_relay::db::pg_config(url)?.connect(NoTls).await?;
        let driver = tokio::spawn({
            let notified = notified.clone();
            async move {
                let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
                while let Some(Ok(msg)) = messages.next().await {
                    if let AsyncMessage::Notification(_) = msg {
                        notified.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
        let channel = outbox_relay::db::migrate::channel(&db.cfg);
        listener
            .batch_execute(&format!("LISTEN {}", quote_ident(&channel)))
            .await?;

        ctx.checkpoint().await?;
        let sql: Arc<str> = insert_one_sql(ctx.p.payload_pad).into();
        let (done, stop, next) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        );
        let mut writers = Vec::new();
        for _ in 0..ctx.p.writers {
            let client = outbox_relay::db::connect(url).await?;
            let (sql, done, stop, next) = (sql.clone(), done.clone(), stop.clone(), next.clone());
            writers.push(tokio::spawn(async move {
                let stmt = client.prepare(&sql).await?;
                let mut rtts = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let n = next.fetch_add(1, Ordering::Relaxed) as i64;
                    let t = Instant::now();
                    client.execute(&stmt, &[&ORG, &n]).await?;
                    rtts.push(t.elapsed());
                    done.fetch_add(1, Ordering::Relaxed);
                }
                anyhow::Ok(rtts)
            }));
        }
        tokio::time::sleep(RAMP).await;
        let (c0, n0, m0) = (
            done.load(Ordering::Relaxed),
            notified.load(Ordering::Relaxed),
            ctx.marks(None)?,
        );
        tokio::time::sleep(Duration::from_secs(ctx.p.insert_secs)).await;
        let (c1, n1, m1) = (
            done.load(Ordering::Relaxed),
            notified.load(Ordering::Relaxed),
            ctx.marks(None)?,
        );
        stop.store(true, Ordering::Relaxed);
        let mut rtts = Vec::new();
        for w in writers {
            rtts.extend(w.await??);
        }
        driver.abort();
        rtts.sort();
        let ms = |q: f64| {
            rtts.get(pct_index(rtts.len(), q))
                .map_or(f64::NAN, |d| round2(d.as_secs_f64() * 1e3))
        };
        let cpu = cpu_figures(&m0, &m1);
        let window = cpu["window_s"].as_f64().unwrap_or(f64::NAN);
        anyhow::Ok(json!({
            "notify_trigger": notify,
            "rows": c1 - c0,
            "rows_per_s": round2((c1 - c0) as f64 / window),
            "notifications_received": n1 - n0,
            "commit_rtt_ms_p50": ms(0.50),
            "commit_rtt_ms_p99": ms(0.99),
            "cpu_s": cpu,
        }))
    }
    .await;
    ctx.drop_db(&db).await;
    result
}
