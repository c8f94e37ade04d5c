//! Draining a backlog: `N` events committed before the relay starts, timed from its spawn to
//! the last first-delivery. `drain` sends them to one endpoint; `fanout` to three, once all
//! healthy and once with the third failing half its requests, on a fresh database each.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::proc::proc_mem;
use crate::common::stats::{mib, round2};
use crate::load::burst;
use crate::receiver::{ns_at, Behaviour, Endpoint};
use crate::setup::{
    cpu_figures, finish_relay, status_counts, wait_deliveries, Ctx, FreshDb, WaitEnd,
};

/// A drain that stops making progress for this long is given up.
const STALL: Duration = Duration::from_secs(15);

/// The drain scenario: `events` to one healthy endpoint.
pub async fn drain(ctx: &Ctx<'_>, events: usize) -> anyhow::Result<Value> {
    let run = drain_run(ctx, events, &[Behaviour::Healthy]).await?;
    eprintln!(
        "  drain {events}: {} ev/s, {} relay CPU-s per 10k, peak RSS {} MiB ({})",
        run["events_per_s"], run["relay_cpu_s_per_10k"], run["relay_peak_rss_mib"], run["end"]
    );
    Ok(run)
}

/// The fan-out scenario: the same burst to 3 healthy endpoints, then to 2 healthy and one
/// failing half its requests; what the failing one costs the healthy ones.
pub async fn fanout(ctx: &Ctx<'_>, events: usize) -> anyhow::Result<Value> {
    use Behaviour::*;
    let healthy = drain_run(ctx, events, &[Healthy, Healthy, Healthy]).await?;
    let failing = drain_run(ctx, events, &[Healthy, Healthy, FailHalf]).await?;
    // The first two endpoints, healthy in both runs.
    let rate = |run: &Value| {
        let r: Vec<f64> = (0..2)
            .filter_map(|i| run["endpoints"][i]["events_per_s"].as_f64())
            .collect();
        (r.len() == 2).then(|| round2((r[0] + r[1]) / 2.0))
    };
    let (a, b) = (rate(&healthy), rate(&failing));
    let cost = a
        .zip(b)
        .map(|(a, b)| round2(100.0 * (1.0 - b / a.max(f64::MIN_POSITIVE))));
    eprintln!(
        "  fanout {events} x 3: healthy endpoints {a:?} ev/s each with 3 healthy, {b:?} with one failing half: cost {cost:?}%"
    );
    Ok(json!({
        "events": events,
        "healthy_events_per_s_all_healthy": a,
        "healthy_events_per_s_one_failing": b,
        "cost_pct": cost,
        "all_healthy": healthy,
        "one_failing": failing,
    }))
}

/// The breaker the `down` scenario gives the failing endpoint (the defaults but the
/// cooldown, which is longer than a drain: no probe lands inside the measured window).
pub const DOWN_BREAKER: &str = "[webhook.circuit_breaker]\nfailures = 10\ncooldown = \"60s\"";

/// The down scenario: the burst to 2 healthy endpoints alone; to 3, all healthy; and to 3
/// with the third answering 500 to everything, without a circuit breaker and with one
/// ([`DOWN_BREAKER`]). The order of the four rotates with `rep`. What the endpoint that is
/// down costs the two healthy ones against a relay without it, and the requests it got.
pub async fn down(ctx: &Ctx<'_>, events: usize, rep: usize) -> anyhow::Result<Value> {
    use Behaviour::*;
    let cases: [(&str, &[Behaviour], &str); 4] = [
        ("two_healthy", &[Healthy, Healthy], ""),
        ("all_healthy", &[Healthy, Healthy, Healthy], ""),
        ("down_no_breaker", &[Healthy, Healthy, Down], ""),
        ("down_breaker", &[Healthy, Healthy, Down], DOWN_BREAKER),
    ];
    let mut runs = serde_json::Map::new();
    for k in 0..cases.len() {
        let (name, hooks, extra) = cases[(k + rep) % cases.len()];
        let run = drain_run_with(ctx, events, hooks, extra).await?;
        runs.insert(name.to_owned(), run);
    }
    let rate = |run: &Value| {
        let r: Vec<f64> = (0..2)
            .filter_map(|i| run["endpoints"][i]["events_per_s"].as_f64())
            .collect();
        (r.len() == 2).then(|| round2((r[0] + r[1]) / 2.0))
    };
    let base = rate(&runs["two_healthy"]);
    let mut out = json!({ "events": events, "healthy_events_per_s_two_healthy": base });
    for name in ["all_healthy", "down_no_breaker", "down_breaker"] {
        let r = rate(&runs[name]);
        let cost = base
            .zip(r)
            .map(|(a, b)| round2(100.0 * (1.0 - b / a.max(f64::MIN_POSITIVE))));
        out[format!("healthy_events_per_s_{name}")] = json!(r);
        out[format!("cost_pct_{name}")] = json!(cost);
        let third = &runs[name]["endpoints"][2]["requests"];
        out[format!("requests_to_third_{name}")] = third.clone();
        eprintln!("  down {events}, {name}: the 2 healthy endpoints {r:?} ev/s each (alone: {base:?}): cost {cost:?}%; {third} requests to the third");
    }
    out["runs"] = Value::Object(runs);
    Ok(out)
}

/// The rate_limit scenario: `events` pending, delivered to one endpoint with `rate_limit =
/// "{per_second}/s"` by one relay, then by three sharing the table (the order rotates with
/// `rep`). The rate the endpoint saw over the middle 80 % of the events, against the limit.
pub async fn rate_limited(
    ctx: &Ctx<'_>,
    events: usize,
    per_second: u32,
    rep: usize,
) -> anyhow::Result<Value> {
    let mut out = json!({ "events": events, "limit_per_s": per_second });
    for k in 0..2 {
        let relays = [1usize, 3][(k + rep) % 2];
        let db = ctx.fresh_db().await?;
        let result = async {
            backlog(ctx, &db, events).await?;
            let endpoint = ctx
                .receiver
                .endpoint(&ctx.key, Behaviour::Healthy, events)?;
            let hooks = [endpoint];
            let extra = format!("*rate_limit = \"{per_second}/s\"");
            let mut procs = Vec::new();
            for _ in 0..relays {
                procs.push(ctx.start_relay_with(&db, &hooks, &extra)?);
            }
            let limit = ctx.p.drain_limit;
            let end = wait_deliveries(
                &mut procs[0],
                || hooks[0].counts.unique() as usize >= events,
                || hooks[0].counts.unique(),
                STALL,
                limit,
            )
            .await?;
            let mut logs = Vec::new();
            for p in &mut procs {
                logs.push(finish_relay(p)?);
            }
            // The relays have exited, so their statistics are flushed.
            let client = outbox_relay::db::connect(db.cfg.database_url.get()).await?;
            let bucket_updates: i64 = client
                .query_one(
                    "SELECT coalesce(sum(n_tup_upd), 0)::int8 FROM pg_stat_user_tables \
                     WHERE relname = 'OutboxEvent_relay_rates'",
                    &[],
                )
                .await?
                .get(0);
            let mut at: Vec<u64> = (0..events)
                .map(|n| hooks[0].counts.receipt_ns(n))
                .filter(|&t| t > 0)
                .collect();
            at.sort_unstable();
            let (a, b) = (at.len() / 10, at.len() * 9 / 10);
            let rate = (b > a + 1)
                .then(|| round2((b - a) as f64 / ((at[b - 1] - at[a]) as f64 / 1e9).max(1e-9)));
            anyhow::Ok(json!({
                "relays": relays,
                "end": end.name(),
                "delivered": at.len(),
                "duplicates": hooks[0].counts.figures()["duplicates"],
                "events_per_s_middle_80pct": rate,
                "pct_of_limit": rate.map(|r| round2(100.0 * r / per_second as f64)),
                "bucket_updates": bucket_updates,
                "relay_logs": logs,
            }))
        }
        .await;
        ctx.drop_db(&db).await;
        let run = result?;
        eprintln!(
            "  rate_limit {per_second}/s, {relays} relay(s): {} ev/s over the middle 80 % ({}% of the limit), {} bucket UPDATEs, {}",
            run["events_per_s_middle_80pct"], run["pct_of_limit"], run["bucket_updates"], run["end"]
        );
        out[format!("relays_{relays}")] = run;
    }
    Ok(out)
}

/// `events` pending on `db`, analyzed (as autovacuum would have) and checkpointed, so every
/// drain starts from the same state; returns how long the inserts took.
pub async fn backlog(ctx: &Ctx<'_>, db: &FreshDb, events: usize) -> anyhow::Result<f64> {
    let burst_s = burst(&db.url, events, ctx.p.payload_pad).await?;
    if ctx.p.analyze {
        let client = outbox_relay::db::connect(db.cfg.database_url.get()).await?;
        client.batch_execute(r#"ANALYZE "OutboxEvent""#).await?;
    }
    ctx.checkpoint().await?;
    Ok(burst_s)
}

/// One drain on a fresh database: burst, start the relay, wait until every healthy endpoint
/// has every event.
async fn drain_run(ctx: &Ctx<'_>, events: usize, hooks: &[Behaviour]) -> anyhow::Result<Value> {
    drain_run_with(ctx, events, hooks, "").await
}

/// [`drain_run`], with `down_extra` in the config of each endpoint that is down.
async fn drain_run_with(
    ctx: &Ctx<'_>,
    events: usize,
    hooks: &[Behaviour],
    down_extra: &str,
) -> anyhow::Result<Value> {
    let db = ctx.fresh_db().await?;
    let result = async {
        let burst_s = backlog(ctx, &db, events).await?;
        let endpoints: Vec<Endpoint> = hooks
            .iter()
            .map(|b| ctx.receiver.endpoint(&ctx.key, *b, events))
            .collect::<anyhow::Result<_>>()?;
        let healthy: Vec<&Endpoint> = endpoints
            .iter()
            .filter(|e| e.counts.behaviour == Behaviour::Healthy)
            .collect();

        let m0 = ctx.marks(None)?;
        let mut relay = ctx.start_relay_with(&db, &endpoints, down_extra)?;
        let start_ns = ns_at(relay.started);
        let end = wait_deliveries(
            &mut relay,
            || healthy.iter().all(|e| e.counts.unique() as usize >= events),
            || endpoints.iter().map(|e| e.counts.unique()).sum(),
            STALL,
            ctx.p.drain_limit,
        )
        .await?;
        let m1 = ctx.marks(Some(relay.pid()))?;
        let mem = proc_mem(relay.pid())?;
        let relay_log = finish_relay(&mut relay)?;

        let secs_to = |ns: u64| round2(ns.saturating_sub(start_ns) as f64 / 1e9);
        let last_ns = healthy
            .iter()
            .map(|e| e.counts.last_ns.load(std::sync::atomic::Ordering::Relaxed))
            .max()
            .unwrap_or(0);
        let first_ns = endpoints
            .iter()
            .map(|e| e.counts.first_ns.load(std::sync::atomic::Ordering::Relaxed))
            .min()
            .unwrap_or(u64::MAX);
        let elapsed = last_ns.saturating_sub(start_ns) as f64 / 1e9;
        let delivered: u64 = healthy.iter().map(|e| e.counts.unique()).sum::<u64>()
            / healthy.len().max(1) as u64;
        let cpu = cpu_figures(&m0, &m1);
        let relay_cpu = cpu["relay"].as_f64().unwrap_or(f64::NAN);
        let per_endpoint: Vec<Value> = endpoints
            .iter()
            .map(|e| {
                let mut f = e.counts.figures();
                let last = e.counts.last_ns.load(std::sync::atomic::Ordering::Relaxed);
                let s = last.saturating_sub(start_ns) as f64 / 1e9;
                f["last_delivery_s"] = json!(round2(s));
                f["events_per_s"] = json!(round2(e.counts.unique() as f64 / s.max(1e-9)));
                f
            })
            .collect();
        anyhow::Ok(json!({
            "events": events,
            "endpoints_n": hooks.len(),
            "end": end.name(),
            "complete": end == WaitEnd::Done,
            "burst_insert_s": round2(burst_s),
            "first_delivery_s": if first_ns == u64::MAX { Value::Null } else { json!(secs_to(first_ns)) },
            "last_delivery_s": round2(elapsed),
            "events_per_s": round2(delivered as f64 / elapsed.max(1e-9)),
            "events_per_s_after_first": round2(
                delivered as f64 / (last_ns.saturating_sub(first_ns) as f64 / 1e9).max(1e-9)
            ),
            "relay_cpu_s_per_10k": round2(relay_cpu / delivered.max(1) as f64 * 1e4),
            "relay_peak_rss_mib": mib(mem.hwm_kib),
            "relay_rss_end_mib": mib(mem.rss_kib),
            "cpu_s": cpu,
            "endpoints": per_endpoint,
            "relay": relay_log,
            "rows_by_status_after_stop": status_counts(&db).await?,
        }))
    }
    .await;
    ctx.drop_db(&db).await;
    result
}
