//! Delivery benchmark (issue 6): how many signed webhooks per second and per CPU-second the
//! relay delivers, how soon after the commit, what it costs while idle, and the ceilings the
//! machine sets, all in one run.
//!
//! ```sh
//! cargo bench --bench relay
//! RELAY_BENCH_SCENARIOS=drain RELAY_BENCH_REPS=1 cargo bench --bench relay   # one figure
//! ```
//!
//! How it runs, and why:
//!
//! - The database: a throwaway cluster ([`TempCluster`](outbox_relay::pgtemp::TempCluster))
//!   started with durable commits (`fsync`, `synchronous_commit` and `full_page_writes` on,
//!   as in production; the test suite's cluster turns them off), autovacuum off (it would
//!   start in some runs and not others) and `pg_stat_statements` preloaded; or
//!   `DATABASE_URL`'s server as it is configured. Every scenario run gets a fresh database
//!   with the relay's own migration, and a `CHECKPOINT` just before its measured window, so
//!   that each starts from the same state.
//! - The relay runs as a separate process: the `outbox-relay` binary cargo builds for this
//!   bench (bench profile = release settings), `run` with one `[[webhook]]` per endpoint
//!   and a real `whsec_` secret, so every request is signed; SSE off; `RUST_LOG=warn`.
//!   Its CPU (`utime + stime`) and peak memory (`VmHWM`) come from `/proc/<pid>`.
//! - The receiver ([`receiver`]) is ours: hyper HTTP/1.1 on a thread of its own, verifying
//!   every signature, counting unique events and duplicates by the number each payload
//!   carries, and stamping the first receipt of each. Its thread's CPU is read apart.
//! - The load ([`load`]): `burst N` inserts N rows in 1,000-row transactions before the
//!   relay starts; `rate R` runs single-row autocommit INSERTs due at `start + i / R` from a
//!   few connections, recording when each commit returned. Receipts and commits share one
//!   monotonic clock in this process, so latency = receipt - commit returned (a slight
//!   underestimate: the row is visible just before the reply arrives); receipt - INSERT
//!   sent is reported as the upper bound.
//! - CPU is read for the relay, PostgreSQL (postmaster and all its processes), the receiver
//!   thread, the rest of this bench, and the machine; what none of them used is `rest`
//!   (loopback softirq, other processes). A run where `rest` exceeds 10% of the machine is
//!   flagged `disturbed`: the machine was shared.
//!
//! Scenarios (`RELAY_BENCH_SCENARIOS`, comma-separated, in this order each repetition):
//!
//! - `drain`: N events pending ([`drain`]), the relay started; from its spawn to the last
//!   event's first delivery: events/s, relay CPU-s per 10,000 events, peak RSS, CPU split.
//! - `nats_drain`: the same backlogs published to NATS JetStream instead ([`nats`]): a
//!   `nats-server -js` of its own, a one-replica file stream, every publish acked; timed
//!   until the stream holds every event. Run it beside `drain` (`drain,nats_drain`) for the
//!   comparison: each repetition runs both, one after the other. `nats3_drain`: the same to
//!   a three-node JetStream cluster (three `nats-server` processes on this machine, routes
//!   on loopback) and a three-replica stream.
//! - `latency`: for each rate, relay running and warmed up, `R`/s for `RATE_SECS`:
//!   commit-to-receipt p50/p95/p99/max, and p99 per 10 s window (30 s from 120 s on) by
//!   commit time, duplicates; then `IDLE_SECS` idle: the relay's CPU and the statements it
//!   ran ([`latency`] says how they are counted). `nats_latency` and `nats3_latency`: the
//!   same to a one-replica stream on one server, or a three-replica stream on a three-node
//!   cluster; receipt is when a core NATS subscriber of the bench gets the message (the
//!   server hands it on as it stores it; the relay's ack follows).
//! - `fanout`: the burst to 3 endpoints, all healthy, then with the third answering 500 to
//!   half its requests; the two healthy endpoints' events/s in both, and the cost.
//! - `down`: the same burst to 2 healthy endpoints alone, to 3 all healthy, and to 3 with
//!   the third down (500 to everything) without a circuit breaker and with one
//!   (`drain::DOWN_BREAKER`), the four in an order rotating each repetition: the two healthy
//!   endpoints' events/s in each, their cost against the two alone, and the requests the
//!   third got.
//! - `rate_limit`: `RATE_LIMIT_EVENTS` pending, to one endpoint with `rate_limit =
//!   "RATE_LIMIT/s"`, by one relay and by three on the same table: the rate the endpoint saw
//!   over the middle 80 % of the events, and as a percentage of the limit.
//! - `db_ceiling`: the relay's own claim and record statements
//!   ([`Queries`](outbox_relay::db::queries::Queries)) on the burst,
//!   no HTTP, as fast as they go from a couple of connections: rows/s ([`ceilings`]).
//! - `receiver_ceiling`: signed requests of the relay's body size from a hyper client with
//!   keep-alive: requests/s, and the receiver's CPU per request.
//! - `commit_path` (formerly `inserts`, still accepted): what the relay costs the app's own
//!   inserts ([`app`]): `WRITERS` connections committing single-row inserts as fast as they
//!   go into a `plain` table (the app columns, primary key only), the `adopted` one (as
//!   `migrate` leaves it, no relay) and the adopted one while a relay is `delivering`,
//!   alternating, the first case rotating each repetition: rows/s and the ratio to `plain`,
//!   commit round trips, NOTIFYs per 1,000 rows, WAL bytes per row, index entries per row,
//!   and the relay's lag at the end of the window.
//! - `cluster_report`: what the cluster-wide dashboard costs the database ([`cluster`]):
//!   three instances' reports as busy relays send them, after an hour of them: WAL bytes and
//!   milliseconds per report (one statement), and the dashboard's read of all of them.
//! - `signing`: the CPU of one request's `webhook-signature`, in-process: `v1` (HMAC),
//!   `v1a` (ed25519) and both, on a body of the bench's size ([`ceilings::signing`]).
//!
//! Knobs (environment, `RELAY_BENCH_` prefix; the defaults keep the whole run under 10
//! minutes on a 2-core machine):
//!
//! | knob | default | meaning |
//! |---|---|---|
//! | `REPS` | 3 | repetitions of every scenario |
//! | `SCENARIOS` | all | a comma-separated subset of the names above |
//! | `DRAIN` | `50000,200000` | backlog sizes of `drain` |
//! | `RATES` | `500,2000` | events/s of `latency` |
//! | `RATE_SECS`, `IDLE_SECS` | 20, 10 | its load and idle windows |
//! | `HOLD_SNAPSHOT` | 0 | 1: `latency` holds a REPEATABLE READ snapshot (one `count(*)` of the table) from before its warm-up to its last delivery, as a long report or an idle-in-transaction session does: vacuum cannot remove the claimed rows meanwhile |
//! | `LOADERS` | 16 | connections of the rate load (at 2,000/s, 8 ms each per durable commit) |
//! | `FANOUT` | 50000 | events of `fanout` and `down` |
//! | `RATE_LIMIT` | 1000 | the limit of `rate_limit`, per second |
//! | `RATE_LIMIT_EVENTS` | 10000 | events of `rate_limit` |
//! | `CEILING_EVENTS`, `CEILING_BATCH`, `CEILING_CONNECTIONS` | 50000, 100, 2 | `db_ceiling` (100 = the relay's default `batch_size`) |
//! | `RECEIVER_REQUESTS`, `RECEIVER_CONCURRENCY` | 200000, 64 | `receiver_ceiling` |
//! | `WRITERS`, `INSERT_SECS` | 16, 8 | `commit_path`, each of its three cases |
//! | `PAYLOAD_PAD` | 200 | padding bytes in each payload; bodies are then about 415 bytes |
//! | `ANALYZE` | 1 | ANALYZE the table after a burst, as autovacuum would have |
//! | `DRAIN_LIMIT_SECS` | 300 | a drain that takes longer is cut off (`"end": "timed_out"`) |
//! | `RELAY_BIN` | cargo's | another relay binary, e.g. a build to compare with |
//! | `MIGRATE_WITH_BIN` | 0 | 1: migrate with `RELAY_BIN migrate`, for a build whose migration differs (its trigger, its indexes) |
//! | `RELAY_CONFIG` | empty | extra top-level config lines, e.g. `batch_size = 500` |
//! | `WEBHOOK_CONFIG` | empty | extra lines in every `[[webhook]]` (and the `[[nats]]` of the NATS scenarios), e.g. `max_in_flight = 128` |
//! | `PG_OPTS` | see [`PG_OPTS`] | the throwaway cluster's extra server options |
//!
//! and `DATABASE_URL` (no `RELAY_BENCH_` prefix) to use that server instead.
//!
//! Output (stdout): `#` lines saying how it ran, one JSON line per scenario run, and a final
//! summary line: median, min and max of the main figures over the repetitions. Progress
//! goes to stderr.
//!
//! `cargo test --all-targets` runs bench targets too: without cargo bench's `--bench`
//! argument this binary only prints how to run it.

#[path = "../common/mod.rs"]
mod common;

mod app;
mod ceilings;
mod cluster;
mod drain;
mod latency;
mod load;
mod nats;
mod receiver;
mod setup;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use anyhow::bail;
use base64::Engine;
use serde_json::{json, Map, Value};

use common::db::DbServer;
use common::env_num;
use common::stats::{cpu_model, spread};
use setup::{Ctx, QueryCount};

const SCENARIOS: &[&str] = &[
    "drain",
    "nats_drain",
    "nats3_drain",
    "latency",
    "nats_latency",
    "nats3_latency",
    "fanout",
    "down",
    "rate_limit",
    "db_ceiling",
    "receiver_ceiling",
    "commit_path",
    "cluster_report",
    "signing",
];

/// Former scenario names, still accepted: (old, new).
const RENAMED: &[(&str, &str)] = &[("inserts", "commit_path")];

/// The throwaway cluster's options on top of the test suite's (which turn durability off).
/// Autovacuum is off so that it cannot start in the middle of one run and not another
/// (bursts are ANALYZEd explicitly instead).
const PG_OPTS: &str = "-c fsync=on -c synchronous_commit=on -c full_page_writes=on \
                       -c autovacuum=off -c shared_preload_libraries=pg_stat_statements";

/// What to run; every field has an environment variable (see the module docs).
#[derive(Debug, Clone)]
pub struct Params {
    pub reps: usize,
    pub scenarios: Vec<String>,
    pub drain: Vec<usize>,
    pub rates: Vec<u64>,
    pub rate_secs: u64,
    pub idle_secs: u64,
    /// `latency` holds a snapshot over its whole run, as a long report would: the row
    /// versions the relay's claims leave dead cannot be removed meanwhile.
    pub hold_snapshot: bool,
    pub loaders: usize,
    pub fanout: usize,
    pub rate_limit: u32,
    pub rate_limit_events: usize,
    pub ceiling_events: usize,
    pub ceiling_batch: usize,
    pub ceiling_connections: usize,
    pub receiver_requests: usize,
    pub receiver_concurrency: usize,
    pub writers: usize,
    pub insert_secs: u64,
    pub payload_pad: usize,
    pub analyze: bool,
    pub drain_limit: Duration,
    pub relay_bin: PathBuf,
    /// Migrate with `RELAY_BIN migrate` instead of this build's migration: to compare builds
    /// whose migrations differ (the trigger, the indexes).
    pub migrate_with_bin: bool,
    pub relay_config: String,
    pub webhook_config: String,
    pub pg_opts: String,
}

impl Params {
    fn from_env() -> anyhow::Result<Self> {
        let var = |name: &str, default: &str| {
            std::env::var(format!("RELAY_BENCH_{name}")).unwrap_or_else(|_| default.to_owned())
        };
        let num = |name: &str, default: u64| env_num(&format!("RELAY_BENCH_{name}"), default);
        let p = Self {
            reps: num("REPS", 3)? as usize,
            scenarios: list::<String>("RELAY_BENCH_SCENARIOS", &SCENARIOS.join(","))?
                .into_iter()
                .map(|s| match RENAMED.iter().find(|(old, _)| *old == s) {
                    Some((_, new)) => (*new).to_owned(),
                    None => s,
                })
                .collect(),
            drain: list("RELAY_BENCH_DRAIN", "50000,200000")?,
            rates: list("RELAY_BENCH_RATES", "500,2000")?,
            rate_secs: num("RATE_SECS", 20)?,
            idle_secs: num("IDLE_SECS", 10)?,
            hold_snapshot: num("HOLD_SNAPSHOT", 0)? != 0,
            loaders: num("LOADERS", 16)? as usize,
            fanout: num("FANOUT", 50_000)? as usize,
            rate_limit: num("RATE_LIMIT", 1000)? as u32,
            rate_limit_events: num("RATE_LIMIT_EVENTS", 10_000)? as usize,
            ceiling_events: num("CEILING_EVENTS", 50_000)? as usize,
            ceiling_batch: num("CEILING_BATCH", 100)? as usize,
            ceiling_connections: num("CEILING_CONNECTIONS", 2)? as usize,
            receiver_requests: num("RECEIVER_REQUESTS", 200_000)? as usize,
            receiver_concurrency: num("RECEIVER_CONCURRENCY", 64)? as usize,
            writers: num("WRITERS", 16)? as usize,
            insert_secs: num("INSERT_SECS", 8)?,
            payload_pad: num("PAYLOAD_PAD", 200)? as usize,
            analyze: num("ANALYZE", 1)? != 0,
            drain_limit: Duration::from_secs(num("DRAIN_LIMIT_SECS", 300)?),
            relay_bin: common::relay_bin("RELAY_BENCH_RELAY_BIN")?,
            migrate_with_bin: num("MIGRATE_WITH_BIN", 0)? != 0,
            relay_config: var("RELAY_CONFIG", ""),
            webhook_config: var("WEBHOOK_CONFIG", ""),
            pg_opts: var("PG_OPTS", PG_OPTS),
        };
        if let Some(s) = p
            .scenarios
            .iter()
            .find(|s| !SCENARIOS.contains(&s.as_str()))
        {
            bail!(
                "RELAY_BENCH_SCENARIOS: unknown {s:?} (known: {})",
                SCENARIOS.join(",")
            );
        }
        let counts = [
            p.reps,
            p.rate_secs as usize,
            p.idle_secs as usize,
            p.loaders,
            p.fanout,
            p.rate_limit as usize,
            p.rate_limit_events,
            p.ceiling_events,
            p.ceiling_batch,
            p.ceiling_connections,
            p.receiver_requests,
            p.receiver_concurrency,
            p.writers,
            p.insert_secs as usize,
        ];
        if counts.contains(&0) || p.drain.contains(&0) || p.rates.contains(&0) {
            bail!("RELAY_BENCH_* counts, rates and durations must be positive");
        }
        Ok(p)
    }

    /// The knobs as `NAME=value` pairs, for the header.
    fn knobs(&self) -> String {
        let join = |v: &[String]| v.join(",");
        let nums = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
        let drain: Vec<u64> = self.drain.iter().map(|&n| n as u64).collect();
        format!(
            "RELAY_BENCH_REPS={} RELAY_BENCH_SCENARIOS={} RELAY_BENCH_DRAIN={} RELAY_BENCH_RATES={} \
             RELAY_BENCH_RATE_SECS={} RELAY_BENCH_IDLE_SECS={} RELAY_BENCH_HOLD_SNAPSHOT={} \
             RELAY_BENCH_LOADERS={} RELAY_BENCH_FANOUT={} RELAY_BENCH_RATE_LIMIT={} \
             RELAY_BENCH_RATE_LIMIT_EVENTS={} RELAY_BENCH_CEILING_EVENTS={} \
             RELAY_BENCH_CEILING_BATCH={} RELAY_BENCH_CEILING_CONNECTIONS={} \
             RELAY_BENCH_RECEIVER_REQUESTS={} \
             RELAY_BENCH_RECEIVER_CONCURRENCY={} RELAY_BENCH_WRITERS={} RELAY_BENCH_INSERT_SECS={} \
             RELAY_BENCH_PAYLOAD_PAD={} RELAY_BENCH_ANALYZE={} RELAY_BENCH_RELAY_CONFIG={:?} \
             RELAY_BENCH_WEBHOOK_CONFIG={:?} RELAY_BENCH_MIGRATE_WITH_BIN={}",
            self.reps,
            join(&self.scenarios),
            nums(&drain),
            nums(&self.rates),
            self.rate_secs,
            self.idle_secs,
            self.hold_snapshot as u8,
            self.loaders,
            self.fanout,
            self.rate_limit,
            self.rate_limit_events,
            self.ceiling_events,
            self.ceiling_batch,
            self.ceiling_connections,
            self.receiver_requests,
            self.receiver_concurrency,
            self.writers,
            self.insert_secs,
            self.payload_pad,
            self.analyze as u8,
            self.relay_config,
            self.webhook_config,
            self.migrate_with_bin as u8,
        )
    }
}

/// A comma-separated list knob.
fn list<T: FromStr>(name: &str, default: &str) -> anyhow::Result<Vec<T>> {
    let v = std::env::var(name).unwrap_or_else(|_| default.to_owned());
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .map_err(|_| anyhow::anyhow!("{name}: {s:?} is not valid"))
        })
        .collect()
}

/// The figures the summary line gives median/min/max of, by scenario kind.
fn summary_keys(label: &str) -> &'static [&'static [&'static str]] {
    let kind = if label.contains("latency") {
        "latency"
    } else {
        label.split('_').next().unwrap_or("")
    };
    match kind {
        "drain" => &[
            &["events_per_s"],
            &["last_delivery_s"],
            &["relay_cpu_s_per_10k"],
            &["relay_peak_rss_mib"],
            &["cpu_s", "relay"],
            &["cpu_s", "postgres"],
            &["cpu_s", "receiver"],
            &["cpu_s", "rest"],
            &["endpoints", "0", "duplicates"],
        ],
        "nats" | "nats3" => &[
            &["events_per_s"],
            &["last_delivery_s"],
            &["relay_cpu_s_per_10k"],
            &["relay_peak_rss_mib"],
            &["cpu_s", "relay"],
            &["cpu_s", "postgres"],
            &["cpu_s", "nats_server"],
            &["cpu_s", "rest"],
        ],
        "latency" => &[
            &["latency_ms", "p50"],
            &["latency_ms", "p95"],
            &["latency_ms", "p99"],
            &["latency_ms", "max"],
            &["latency_from_insert_sent_ms", "p50"],
            &["latency_from_insert_sent_ms", "p99"],
            &["achieved_rate_per_s"],
            &["generator_max_behind_ms"],
            &["missing"],
            &["duplicates"],
            &["notifications_per_1k_events"],
            &["wal_bytes_per_event"],
            &["relay_cpu_s_per_10k"],
            &["relay_cpu_pct_under_load"],
            &["relay_peak_rss_mib"],
            &["idle", "relay_cpu_pct"],
            &["idle", "relay_cpu_ms"],
            &["idle", "queries"],
            &["idle", "queries_besides_listener"],
        ],
        "rate" => &[
            &["relays_1", "events_per_s_middle_80pct"],
            &["relays_1", "pct_of_limit"],
            &["relays_3", "events_per_s_middle_80pct"],
            &["relays_3", "pct_of_limit"],
            &["relays_1", "bucket_updates"],
            &["relays_3", "bucket_updates"],
        ],
        "down" => &[
            &["healthy_events_per_s_two_healthy"],
            &["healthy_events_per_s_all_healthy"],
            &["healthy_events_per_s_down_no_breaker"],
            &["healthy_events_per_s_down_breaker"],
            &["cost_pct_all_healthy"],
            &["cost_pct_down_no_breaker"],
            &["cost_pct_down_breaker"],
            &["requests_to_third_down_no_breaker"],
            &["requests_to_third_down_breaker"],
        ],
        "fanout" => &[
            &["healthy_events_per_s_all_healthy"],
            &["healthy_events_per_s_one_failing"],
            &["cost_pct"],
            &["all_healthy", "relay_cpu_s_per_10k"],
            &["one_failing", "relay_cpu_s_per_10k"],
        ],
        "signing" => &[
            &["v1_us_per_request"],
            &["v1a_us_per_request"],
            &["v1_and_v1a_us_per_request"],
        ],
        "cluster" => &[
            &["wal_bytes_per_report"],
            &["report_ms_median"],
            &["read_ms_median"],
            &["read_activity_rows"],
        ],
        "db" => &[
            &["rows_per_s"],
            &["claim_ms_mean"],
            &["record_ms_mean"],
            &["cpu_s", "postgres"],
        ],
        "receiver" => &[&["requests_per_s"], &["receiver_cpu_us_per_request"]],
        // "commit_path"; `plain`'s ratio is 1 and its notifications 0 by construction.
        "commit" => &[
            &["plain", "rows_per_s"],
            &["adopted", "rows_per_s"],
            &["delivering", "rows_per_s"],
            &["adopted", "ratio_to_plain"],
            &["delivering", "ratio_to_plain"],
            &["plain", "commit_rtt_ms_p99"],
            &["adopted", "commit_rtt_ms_p99"],
            &["delivering", "commit_rtt_ms_p99"],
            &["adopted", "notifications_per_1k_rows"],
            &["delivering", "notifications_per_1k_rows"],
            &["plain", "wal_bytes_per_row"],
            &["adopted", "wal_bytes_per_row"],
            &["delivering", "wal_bytes_per_row"],
            &["adopted", "index_entries_per_row"],
            &["delivering", "lag_at_window_end"],
        ],
        _ => &[],
    }
}

/// `spread` over a path that may index arrays (`"0"`).
fn spread_at(runs: &[Value], path: &[&str]) -> Value {
    let flat: Vec<Value> = runs
        .iter()
        .map(|r| {
            path.iter()
                .try_fold(r, |v, k| match k.parse::<usize>() {
                    Ok(i) => v.get(i),
                    Err(_) => v.get(k),
                })
                .cloned()
                .unwrap_or(Value::Null)
        })
        .map(|v| json!({ "v": v }))
        .collect();
    spread(&flat, &["v"])
}

/// Whether any CPU window of a run was flagged `disturbed`.
fn any_disturbed(v: &Value) -> bool {
    match v {
        Value::Object(m) => m
            .iter()
            .any(|(k, v)| (k == "disturbed" && v == &Value::Bool(true)) || any_disturbed(v)),
        Value::Array(a) => a.iter().any(any_disturbed),
        _ => false,
    }
}

/// Runs one scenario of repetition `rep` (1-based); returns its label and figures.
async fn scenario(ctx: &Ctx<'_>, name: &str, rep: usize) -> anyhow::Result<Vec<(String, Value)>> {
    let p = ctx.p;
    let mut out = Vec::new();
    match name {
        "drain" => {
            for &n in &p.drain {
                out.push((format!("drain_{n}"), drain::drain(ctx, n).await?));
            }
        }
        "nats_drain" | "nats3_drain" => {
            let replicas = if name == "nats3_drain" { 3 } else { 1 };
            for &n in &p.drain {
                let run = nats::nats_drain(ctx, n, replicas).await?;
                out.push((format!("{name}_{n}"), run));
            }
        }
        "latency" | "nats_latency" | "nats3_latency" => {
            let target = match name {
                "latency" => latency::Target::Webhook,
                "nats_latency" => latency::Target::JetStream { replicas: 1 },
                _ => latency::Target::JetStream { replicas: 3 },
            };
            for &r in &p.rates {
                let run = latency::latency(ctx, r, target).await?;
                out.push((format!("{name}_{r}"), run));
            }
        }
        "fanout" => out.push(("fanout".into(), drain::fanout(ctx, p.fanout).await?)),
        "down" => out.push(("down".into(), drain::down(ctx, p.fanout, rep).await?)),
        "rate_limit" => out.push((
            "rate_limit".into(),
            drain::rate_limited(ctx, p.rate_limit_events, p.rate_limit, rep).await?,
        )),
        "db_ceiling" => out.push((
            "db_ceiling".into(),
            ceilings::db_ceiling(ctx, p.ceiling_events).await?,
        )),
        "receiver_ceiling" => out.push((
            "receiver_ceiling".into(),
            ceilings::receiver_ceiling(ctx, p.receiver_requests).await?,
        )),
        "commit_path" => out.push(("commit_path".into(), app::commit_path(ctx, rep).await?)),
        "cluster_report" => {
            out.push(("cluster_report".into(), cluster::cluster_report(ctx).await?))
        }
        "signing" => out.push(("signing".into(), ceilings::signing(ctx)?)),
        _ => unreachable!("checked in Params::from_env"),
    }
    Ok(out)
}

/// Whether pg_stat_statements can be read (creating it in the throwaway cluster).
async fn query_count_method(server: &DbServer) -> QueryCount {
    let Ok(admin) = server.admin().await else {
        return QueryCount::XactCommit;
    };
    if server.cluster.is_some() {
        let _ = admin
            .batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            .await;
    }
    match admin
        .query("SELECT 1 FROM pg_stat_statements LIMIT 1", &[])
        .await
    {
        Ok(_) => QueryCount::Statements,
        Err(_) => QueryCount::XactCommit,
    }
}

fn main() -> anyhow::Result<()> {
    if !common::started_by_cargo_bench("relay") {
        return Ok(());
    }
    let p = Params::from_env()?;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let _ = *receiver::EPOCH;
    let key: [u8; 32] = rand::random();
    let secret = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    );
    let receiver = receiver::Receiver::start()?;
    let control = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut server = DbServer::start(&p.pg_opts)?;
    let result = control.block_on(async {
        server.find_postmaster().await?;
        let query_count = query_count_method(&server).await;
        let ctx = Ctx {
            p: &p,
            server: &server,
            receiver,
            secret,
            key: key.to_vec(),
            query_count,
        };
        let pg = server.describe().await?;
        let built = std::fs::metadata(&p.relay_bin)
            .and_then(|m| m.modified())
            .map(|t| humantime::format_rfc3339_seconds(t).to_string())
            .unwrap_or_default();
        println!("# outbox-relay delivery benchmark (issue 6), outbox-relay {}", env!("CARGO_PKG_VERSION"));
        println!("# command: cargo bench --bench relay   ({})", p.knobs());
        println!("# machine: {cores} cores ({}); {pg}", cpu_model());
        if server.cluster.is_some() {
            println!("# throwaway cluster options: {}", p.pg_opts);
        }
        println!("# PostgreSQL, the relay and this bench share these {cores} cores: the figures include their contention");
        println!("# relay: {} (built {built}), a separate process: `run`, one [[webhook]] per endpoint with a whsec_ secret (random per run), SSE off, RUST_LOG=warn; extra config: {:?}, per webhook: {:?}",
            p.relay_bin.display(), p.relay_config, p.webhook_config);
        println!("# receiver: hyper HTTP/1.1 on its own thread, HMAC-SHA256 check of every request, unique/duplicate by payload number; load: burst = 1,000-row transactions before the relay starts, rate = single-row autocommit INSERTs from {} connections", p.loaders);
        println!("# latency = receipt - INSERT commit returned (one clock; slight underestimate), latency_from_insert_sent = the upper bound; idle statements counted by {}",
            match query_count { QueryCount::Statements => "pg_stat_statements", QueryCount::XactCommit => "pg_stat_database.xact_commit (pg_stat_statements not loaded)" });
        println!("# commit_path: {} writers, single-row autocommit INSERTs as fast as they go for {} s after a {} ms ramp, per case on a fresh database: plain (app columns, primary key only, no trigger), adopted (as migrate leaves it, no relay), delivering (adopted, one relay running); cases alternate, the first rotating each repetition; NOTIFYs counted by a LISTEN connection of the bench; WAL = pg_current_wal_insert_lsn() difference over the window, cluster-wide (in delivering it includes the relay's claim and complete writes)",
            p.writers, p.insert_secs, app::RAMP.as_millis());
        println!("# CPU seconds: relay, postgres (postmaster and children), receiver (its thread), bench_other (the rest of this process), rest (machine busy minus those, +-8% is /proc/stat noise; > 10% of the machine flags the run disturbed)");
        let mut runs: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        let mut order = Vec::new();
        for rep in 1..=p.reps {
            for name in &p.scenarios {
                eprintln!("repetition {rep}/{}: {name}", p.reps);
                for (label, figures) in scenario(&ctx, name, rep).await? {
                    let mut line = json!({"scenario": label, "rep": rep});
                    if let (Value::Object(l), Value::Object(f)) = (&mut line, figures) {
                        l.extend(f);
                    }
                    println!("{line}");
                    if !order.contains(&label) {
                        order.push(label.clone());
                    }
                    runs.entry(label).or_default().push(line);
                }
            }
        }
        let mut summary = Map::new();
        for label in &order {
            let reps = &runs[label];
            let mut s: Map<String, Value> = summary_keys(label)
                .iter()
                .map(|k| (k.join("."), spread_at(reps, k)))
                .collect();
            let disturbed = reps.iter().filter(|r| any_disturbed(r)).count();
            s.insert("runs".into(), json!(reps.len()));
            s.insert("disturbed_runs".into(), json!(disturbed));
            summary.insert(label.clone(), Value::Object(s));
        }
        println!(
            "{}",
            json!({
                "bench": "relay",
                "machine": {"cores": cores, "cpu": cpu_model()},
                "postgres": pg,
                "reps": p.reps,
                "summary": summary,
            })
        );
        anyhow::Ok(())
    });
    drop(server);
    result
}
