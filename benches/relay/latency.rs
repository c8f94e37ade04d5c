//! Latency at a steady rate, then idle: the relay running and warmed up, single-row
//! transactions at `rate` per second for `secs`, commit-to-receipt per event; then
//! `idle_secs` with no load, for the relay's CPU and the statements it runs meanwhile.
//!
//! Idle statements come from pg_stat_statements (calls per statement in the bench's
//! database, before and after the window) when the server has it loaded: the throwaway
//! cluster always does. Otherwise from `pg_stat_database.xact_commit`, which backends flush
//! up to 10 s late, so the window is then padded by that much on both sides. Either way the
//! LISTEN connection's heartbeat (`SELECT 1` every 15 s) is counted apart. The relay's idle
//! CPU is read from `schedstat` (nanoseconds; `stat`'s 10 ms ticks are too coarse for it).
//!
//! Over the rate window (first commit to last delivery), a LISTEN connection of the bench's
//! counts the NOTIFYs the inserts send on the table's channel, per 1,000 events: what the
//! trigger costs at that rate while the relay is awake and busy. The WAL written over the
//! same window, per event, is the insert's and the relay's claiming and recording together.
//!
//! The p99 per window of the rate phase (events by commit time) shows whether latency stays
//! flat over a long run or grows, as it would with dead rows piling up in the claim's path.
//! `HOLD_SNAPSHOT` makes them pile up: a REPEATABLE READ transaction of the bench's takes
//! its snapshot before the warm-up and keeps it to the last delivery, so no row version
//! the relay's claims leave dead can be removed meanwhile (a long report, or a session idle
//! in transaction).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::load::{run_load, RateLoad};
use crate::common::proc::{proc_mem, sched_cpu_secs};
use crate::common::stats::{latency_ms, mib, round2, round3};
use crate::load::{insert_one_sql, ORG};
use crate::nats::NatsServer;
use crate::receiver::{Behaviour, Counts, EPOCH};
use crate::setup::{
    cpu_figures, cpu_figures_beside, finish_relay, per_row, status_counts, wait_deliveries,
    wal_bytes, Ctx, FreshDb, NotifyCounter, QueryCount, WaitEnd,
};

/// Events sent (and awaited) before the measurement, numbered after the measured ones.
const WARMUP_EVENTS: usize = 20;
const WARMUP_LIMIT: Duration = Duration::from_secs(15);
/// After the last commit: give up when nothing arrives for this long, or after the total.
const DRAIN_STALL: Duration = Duration::from_secs(5);
const DRAIN_LIMIT: Duration = Duration::from_secs(30);
/// Between the last delivery and the idle window: the relay records the last outcomes.
const SETTLE: Duration = Duration::from_secs(1);
/// How late a backend may flush its pg_stat_database counters (PGSTAT_IDLE_INTERVAL).
const STATS_FLUSH_LAG: Duration = Duration::from_secs(11);
/// The LISTEN connection's heartbeat period (src/relay/listener.rs).
const LISTENER_HEARTBEAT: Duration = Duration::from_secs(15);
/// The snapshot holder's application_name: the relay's long-transaction warning names it.
const HOLDER_NAME: &str = "bench report";
/// The p99 windows: short enough to show a trend over the default 20 s, not so many over
/// a long run that each holds few events at a low rate.
const WINDOW: Duration = Duration::from_secs(10);
const LONG_RUN_WINDOW: Duration = Duration::from_secs(30);
const LONG_RUN_SECS: u64 = 120;

/// Where the events go: the bench's webhook receiver, or a JetStream stream of this many
/// replicas (received by a core NATS subscriber as the server stores them).
#[derive(Debug, Clone, Copy)]
pub enum Target {
    Webhook,
    JetStream { replicas: usize },
}

pub async fn latency(ctx: &Ctx<'_>, rate: u64, target: Target) -> anyhow::Result<Value> {
    let db = ctx.fresh_db().await?;
    let result = latency_on(ctx, &db, rate, target).await;
    ctx.drop_db(&db).await;
    let r = result?;
    let to = match target {
        Target::Webhook => String::new(),
        Target::JetStream { replicas } => format!(" to JetStream R{replicas}"),
    };
    eprintln!(
        "  latency at {rate}/s{to}{}: p50 {} p95 {} p99 {} max {} ms, p99 by {} s window {} ms, {} dup, {} missing, {} NOTIFY per 1k, {} WAL B/event; idle {}% CPU, {} statements ({} besides the listener's heartbeat)",
        if r["held_snapshot"] == true { " (snapshot held)" } else { "" },
        r["latency_ms"]["p50"],
        r["latency_ms"]["p95"],
        r["latency_ms"]["p99"],
        r["latency_ms"]["max"],
        r["latency_window_s"],
        r["latency_p99_by_window_ms"],
        r["duplicates"],
        r["missing"],
        r["notifications_per_1k_events"],
        r["wal_bytes_per_event"],
        r["idle"]["relay_cpu_pct"],
        r["idle"]["queries"],
        r["idle"]["queries_besides_listener"],
    );
    Ok(r)
}

async fn latency_on(
    ctx: &Ctx<'_>,
    db: &FreshDb,
    rate: u64,
    target: Target,
) -> anyhow::Result<Value> {
    let p = ctx.p;
    let total = (rate * p.rate_secs) as usize;
    let capacity = total + WARMUP_EVENTS;
    // Kept to the end: the receiver's endpoint (dropped, it stops answering), or the NATS
    // server and the subscriber counting what reaches it.
    let (mut hook, mut jetstream) = (None, None);
    let (counts, mut relay) = match target {
        Target::Webhook => {
            let endpoint = ctx
                .receiver
                .endpoint(&ctx.key, Behaviour::Healthy, capacity)?;
            let relay = ctx.start_relay(db, std::slice::from_ref(&endpoint))?;
            let counts = endpoint.counts.clone();
            hook = Some(endpoint);
            (counts, relay)
        }
        Target::JetStream { replicas } => {
            let nats = NatsServer::start(replicas).await?;
            let counts = Arc::new(Counts::new(&ctx.key, Behaviour::Healthy, capacity));
            let subscriber = crate::nats::subscribe(&nats, counts.clone()).await?;
            let relay = nats.start_relay(ctx, db)?;
            jetstream = Some((nats, subscriber));
            (counts, relay)
        }
    };
    relay.ready().await?;
    let pid = relay.pid();

    let sql = insert_one_sql(p.payload_pad);
    let mut clients = Vec::new();
    for _ in 0..p.loaders {
        clients.push(Arc::new(
            outbox_relay::db::connect(db.cfg.database_url.get()).await?,
        ));
    }
    // Before the warm-up: every row the relay claims is then newer than the snapshot.
    let holder = if p.hold_snapshot {
        Some(hold_snapshot(db).await?)
    } else {
        None
    };
    // Warm-up: connections to the endpoint opened, statements prepared.
    for n in total..total + WARMUP_EVENTS {
        clients[0].execute(&sql, &[&ORG, &(n as i64)]).await?;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let warm = wait_deliveries(
        &mut relay,
        || counts.unique() as usize >= WARMUP_EVENTS,
        || counts.unique(),
        WARMUP_LIMIT,
        WARMUP_LIMIT,
    )
    .await?;
    if warm != WaitEnd::Done {
        anyhow::bail!("warm-up events not delivered ({})", warm.name());
    }

    // The load, then the stragglers.
    let notes = NotifyCounter::listen(db).await?;
    ctx.checkpoint().await?;
    // The NATS servers' CPU, taken out of `rest` so it does not flag the run disturbed.
    let nats_cpu = || jetstream.as_ref().map(|(nats, _)| nats.cpu_secs());
    let nats0 = nats_cpu();
    let (m0, n0, w0) = (
        ctx.marks(Some(pid))?,
        notes.received(),
        wal_bytes(&clients[0]).await?,
    );
    let orgs = [ORG.to_owned()];
    let load = RateLoad {
        sql: &sql,
        orgs: &orgs,
        rate,
        total,
    };
    let out = run_load(&load, &clients, *EPOCH).await?;
    let committed = out.commit_ns.iter().filter(|&&c| c != 0).count();
    let target = (committed + WARMUP_EVENTS) as u64;
    let end = wait_deliveries(
        &mut relay,
        || counts.unique() >= target,
        || counts.unique(),
        DRAIN_STALL,
        DRAIN_LIMIT,
    )
    .await?;
    if let Some(holder) = holder {
        holder.batch_execute("ROLLBACK").await?;
    }
    let (m1, n1, w1) = (
        ctx.marks(Some(pid))?,
        notes.received(),
        wal_bytes(&clients[0]).await?,
    );
    drop(notes);
    let beside = nats_cpu()
        .zip(nats0)
        .map(|(n1, n0)| ("nats_server", n1 - n0));
    let cpu_load = cpu_figures_beside(&m0, &m1, beside);

    // Idle.
    tokio::time::sleep(SETTLE).await;
    let idle = idle_window(ctx, db, pid).await?;
    let mem = proc_mem(pid)?;
    let relay_log = finish_relay(&mut relay)?;
    if let Some((_nats, subscriber)) = jetstream {
        subscriber.abort();
    }
    drop(hook);

    // Figures.
    let window = if p.rate_secs >= LONG_RUN_SECS {
        LONG_RUN_WINDOW
    } else {
        WINDOW
    };
    let last = p.rate_secs.div_ceil(window.as_secs()) as usize - 1;
    let mut windows = vec![Vec::new(); last + 1];
    let (mut lat, mut lat_sent) = (Vec::with_capacity(total), Vec::with_capacity(total));
    for n in 0..total {
        let (c, r) = (out.commit_ns[n], counts.receipt_ns(n));
        if c != 0 && r != 0 {
            lat.push(r as i64 - c as i64);
            lat_sent.push(r as i64 - out.sent_ns[n] as i64);
            // Commits returned after the rate phase's end (the generator behind) count in
            // the last window.
            let w = (c.saturating_sub(out.start_ns) / window.as_nanos() as u64) as usize;
            windows[w.min(last)].push(r as i64 - c as i64);
        }
    }
    let p99_by_window: Vec<Value> = windows
        .iter_mut()
        .map(|w| {
            w.sort_unstable();
            latency_ms(w)["p99"].clone()
        })
        .collect();
    let unique = lat.len();
    let negative = lat.iter().filter(|&&l| l < 0).count();
    lat.sort_unstable();
    lat_sent.sort_unstable();
    let relay_cpu = cpu_load["relay"].as_f64().unwrap_or(f64::NAN);
    Ok(json!({
        "rate": rate,
        "target": format!("{target:?}"),
        "secs": p.rate_secs,
        "end": end.name(),
        "events_sent": committed,
        "insert_failures": out.failed,
        "achieved_rate_per_s": round2(committed as f64 / ((out.end_ns - out.start_ns) as f64 / 1e9)),
        "generator_max_behind_ms": round2(out.max_behind_ms),
        "insert_rtt_ms_p50": round2(out.insert_rtt_ms.0),
        "insert_rtt_ms_p99": round2(out.insert_rtt_ms.1),
        "delivered_unique": unique,
        "missing": committed - unique,
        "duplicates": counts.duplicates.load(std::sync::atomic::Ordering::Relaxed),
        "latency_ms": latency_ms(&lat),
        "latency_window_s": window.as_secs(),
        "latency_p99_by_window_ms": p99_by_window,
        "held_snapshot": p.hold_snapshot,
        "latency_negative": negative,
        "latency_from_insert_sent_ms": latency_ms(&lat_sent),
        "notifications_received": n1 - n0,
        "notifications_per_1k_events": per_row((n1 - n0) as f64, committed as u64, 1e3),
        "wal_bytes": w1 - w0,
        "wal_bytes_per_event": per_row((w1 - w0) as f64, committed as u64, 1.0),
        "relay_cpu_s_per_10k": round2(relay_cpu / committed.max(1) as f64 * 1e4),
        "relay_cpu_pct_under_load": round2(100.0 * relay_cpu / cpu_load["window_s"].as_f64().unwrap_or(1.0)),
        "relay_peak_rss_mib": mib(mem.hwm_kib),
        "relay_rss_end_mib": mib(mem.rss_kib),
        "cpu_s": cpu_load,
        "idle": idle,
        "endpoint": counts.figures(),
        "relay": relay_log,
        "rows_by_status_after_stop": status_counts(db).await?,
    }))
}

/// A connection of its own in a REPEATABLE READ transaction whose snapshot is taken (one
/// `count(*)` of the table) and kept until the caller ends it: the vacuum horizon held
/// where a long report would hold it.
async fn hold_snapshot(db: &FreshDb) -> anyhow::Result<tokio_postgres::Client> {
    let (mut cfg, tls) = outbox_relay::db::pg_config(db.cfg.database_url.get())?;
    cfg.application_name(HOLDER_NAME);
    let (client, conn) = cfg.connect(tls).await?;
    tokio::spawn(conn);
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .await?;
    let table = db.cfg.qualified_table();
    client
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await?;
    Ok(client)
}

/// The relay's CPU and statements over `idle_secs` of no load.
async fn idle_window(ctx: &Ctx<'_>, db: &FreshDb, pid: u32) -> anyhow::Result<Value> {
    let admin = ctx.server.admin().await?;
    let secs = ctx.p.idle_secs;
    match ctx.query_count {
        QueryCount::Statements => {
            let before = statement_calls(&admin, &db.name).await?;
            let (m0, s0) = (ctx.marks(Some(pid))?, sched_cpu_secs(pid)?);
            tokio::time::sleep(Duration::from_secs(secs)).await;
            let (m1, s1) = (ctx.marks(Some(pid))?, sched_cpu_secs(pid)?);
            let after = statement_calls(&admin, &db.name).await?;
            let mut ran: Vec<(i64, String)> = after
                .into_iter()
                .filter_map(|(id, (calls, text))| {
                    let d = calls - before.get(&id).map_or(0, |b| b.0);
                    (d > 0).then_some((d, text))
                })
                .collect();
            ran.sort_by_key(|r| std::cmp::Reverse(r.0));
            let total: i64 = ran.iter().map(|r| r.0).sum();
            let heartbeat: i64 = ran.iter().filter(|r| is_heartbeat(&r.1)).map(|r| r.0).sum();
            let cpu = cpu_figures(&m0, &m1);
            let statements: Vec<Value> = ran
                .iter()
                .take(8)
                .map(|(calls, text)| json!({"calls": calls, "query": one_line(text, 100)}))
                .collect();
            Ok(json!({
                "secs": secs,
                "counted_by": "pg_stat_statements (calls in the bench database)",
                "relay_cpu_ms": round2((s1 - s0) * 1e3),
                "relay_cpu_pct": round3(100.0 * (s1 - s0) / secs as f64),
                "queries": total,
                "listener_heartbeats": heartbeat,
                "queries_besides_listener": total - heartbeat,
                "statements": statements,
                "cpu_s": cpu,
            }))
        }
        QueryCount::XactCommit => {
            // Let the load's counters land first, and the window's after it.
            tokio::time::sleep(STATS_FLUSH_LAG).await;
            let before = xact_commit(&admin, &db.name).await?;
            let (m0, s0) = (ctx.marks(Some(pid))?, sched_cpu_secs(pid)?);
            tokio::time::sleep(Duration::from_secs(secs)).await;
            let (m1, s1) = (ctx.marks(Some(pid))?, sched_cpu_secs(pid)?);
            tokio::time::sleep(STATS_FLUSH_LAG).await;
            let after = xact_commit(&admin, &db.name).await?;
            let counted = Duration::from_secs(secs) + STATS_FLUSH_LAG;
            let heartbeats = (counted.as_secs_f64() / LISTENER_HEARTBEAT.as_secs_f64()).round();
            let cpu = cpu_figures(&m0, &m1);
            Ok(json!({
                "secs": secs,
                "counted_by": format!("pg_stat_database.xact_commit over {} s (the window plus the stats flush lag); heartbeats estimated", counted.as_secs()),
                "relay_cpu_ms": round2((s1 - s0) * 1e3),
                "relay_cpu_pct": round3(100.0 * (s1 - s0) / secs as f64),
                "queries": after - before,
                "listener_heartbeats": heartbeats,
                "queries_besides_listener": (after - before) as f64 - heartbeats,
                "cpu_s": cpu,
            }))
        }
    }
}

/// The listener's `SELECT 1` as pg_stat_statements normalises it.
fn is_heartbeat(query: &str) -> bool {
    matches!(query.trim(), "SELECT $1" | "SELECT 1")
}

fn one_line(text: &str, max: usize) -> String {
    let s = text.split_whitespace().collect::<Vec<_>>().join(" ");
    s.chars().take(max).collect()
}

/// Calls and text of each statement run in database `db`, by query id.
async fn statement_calls(
    admin: &tokio_postgres::Client,
    db: &str,
) -> anyhow::Result<HashMap<i64, (i64, String)>> {
    let rows = admin
        .query(
            "SELECT s.queryid, s.calls, s.query FROM pg_stat_statements s
               JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = $1",
            &[&db],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect())
}

async fn xact_commit(admin: &tokio_postgres::Client, db: &str) -> anyhow::Result<i64> {
    let row = admin
        .query_one(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = $1",
            &[&db],
        )
        .await?;
    Ok(row.get(0))
}
