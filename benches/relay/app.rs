//! The commit path: what the relay costs the application's own inserts. `writers`
//! connections commit single-row autocommit INSERTs as fast as they go for `insert_secs`, in
//! three cases, each on a fresh database:
//!
//! - `plain`: the app's own table, the outbox's app columns under the same name, primary key
//!   only, no trigger: the baseline the other two are a ratio to.
//! - `adopted`: the table as the relay's `migrate` leaves it (its columns, indexes and
//!   trigger), no relay running.
//! - `delivering`: the adopted table while one relay delivers everything to the receiver.
//!
//! The statement is the same in all three ([`insert_one_sql`]), so the differences are the
//! table's and the relay's. A LISTEN connection counts the notifications the inserts send
//! on the table's channel in every case, whatever the trigger decides: PostgreSQL takes one
//! cluster-wide lock to queue notifications at commit and holds it until the commit is
//! durable, so notifying commits are serialised. The cases alternate within a repetition
//! and the first one rotates from one repetition to the next, so that neither a drifting
//! machine nor a cold start always falls on the same case.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use crate::common::proc::RelayProcess;
use crate::common::stats::{pct_index, round2, round3};
use crate::load::{insert_one_sql, ORG};
use crate::receiver::{Behaviour, Endpoint};
use crate::setup::{
    cpu_figures, finish_relay, per_row, wal_bytes, Ctx, FreshDb, Marks, NotifyCounter,
};

/// Writers connect and prepare, then run this long before the measured window opens.
pub const RAMP: Duration = Duration::from_millis(500);

/// More rows per second than any case is expected to commit (16,000/s without a trigger on
/// the 2-core machine): it sizes the receiver's per-event table, and a writer stops at that
/// many rows over the whole run, so the load is bounded in rows as well as in time.
const MAX_ROWS_PER_S: f64 = 100_000.0;

/// The app columns of the outbox table (sql/001_create_table.sql without the relay's
/// status, retry and processing columns), as an app's own table would have them. Named like
/// the outbox so that the INSERT is the very same statement. Written out rather than derived
/// from the migration: it is the baseline, and must not move when the relay's table does.
const PLAIN_TABLE: &str = r#"CREATE TABLE public."OutboxEvent" (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    org_id      text,
    event_type  text NOT NULL,
    entity_type text,
    entity_id   text,
    payload     jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
)"#;

/// One case of the scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    Plain,
    Adopted,
    Delivering,
}

impl Case {
    /// In the first repetition's order.
    const ALL: [Case; 3] = [Case::Plain, Case::Adopted, Case::Delivering];

    fn name(self) -> &'static str {
        match self {
            Case::Plain => "plain",
            Case::Adopted => "adopted",
            Case::Delivering => "delivering",
        }
    }
}

/// The scenario, repetition `rep` (1-based): the three cases, the first rotating.
pub async fn commit_path(ctx: &Ctx<'_>, rep: usize) -> anyhow::Result<Value> {
    let order: Vec<Case> = (0..Case::ALL.len())
        .map(|i| Case::ALL[(rep - 1 + i) % Case::ALL.len()])
        .collect();
    let mut cases = Map::new();
    for &case in &order {
        cases.insert(case.name().into(), case_run(ctx, case).await?);
    }
    let plain = cases["plain"]["rows_per_s"].as_f64().unwrap_or(f64::NAN);
    for figures in cases.values_mut() {
        let rate = figures["rows_per_s"].as_f64().unwrap_or(f64::NAN);
        figures["ratio_to_plain"] = json!(round3(rate / plain));
    }
    let line = |c: &str| {
        let f = &cases[c];
        format!(
            "{c} {} rows/s (x{}, {} NOTIFY per 1k, {} WAL B/row)",
            f["rows_per_s"],
            f["ratio_to_plain"],
            f["notifications_per_1k_rows"],
            f["wal_bytes_per_row"]
        )
    };
    eprintln!(
        "  commit_path, {} writers: {}; {}; {}; delivering lag at the end {}",
        ctx.p.writers,
        line("plain"),
        line("adopted"),
        line("delivering"),
        cases["delivering"]["lag_at_window_end"],
    );
    let mut out = json!({
        "writers": ctx.p.writers,
        "secs": ctx.p.insert_secs,
        "order": order.iter().map(|c| c.name()).collect::<Vec<_>>(),
        "wal_note": "cluster-wide WAL over the window; in delivering it includes the relay's claim and complete writes",
    });
    if let Value::Object(o) = &mut out {
        o.extend(cases);
    }
    Ok(out)
}

/// One case on a fresh database of its own.
async fn case_run(ctx: &Ctx<'_>, case: Case) -> anyhow::Result<Value> {
    let db = match case {
        Case::Plain => ctx.db_with(Some(PLAIN_TABLE)).await?,
        Case::Adopted | Case::Delivering => ctx.fresh_db().await?,
    };
    let result = case_on(ctx, &db, case).await;
    ctx.drop_db(&db).await;
    result
}

async fn case_on(ctx: &Ctx<'_>, db: &FreshDb, case: Case) -> anyhow::Result<Value> {
    let p = ctx.p;
    let max_rows = (MAX_ROWS_PER_S * (RAMP.as_secs_f64() + p.insert_secs as f64 + 1.0)) as u64;
    let (hook, mut relay): (Option<Endpoint>, Option<RelayProcess>) = match case {
        Case::Delivering => {
            let hook = ctx
                .receiver
                .endpoint(&ctx.key, Behaviour::Healthy, max_rows as usize)?;
            let mut relay = ctx.start_relay(db, std::slice::from_ref(&hook))?;
            relay.ready().await?;
            (Some(hook), Some(relay))
        }
        Case::Plain | Case::Adopted => (None, None),
    };
    let pid = relay.as_ref().map(RelayProcess::pid);
    let notes = NotifyCounter::listen(db).await?;
    let mut probe = outbox_relay::db::connect(db.cfg.database_url.get()).await?;

    ctx.checkpoint().await?;
    let writers = Writers::start(ctx, db, max_rows).await?;
    let read = async || {
        anyhow::Ok(Reading {
            committed: writers.committed(),
            notified: notes.received(),
            delivered: hook.as_ref().map_or(0, |h| h.counts.unique()),
            wal: wal_bytes(&probe).await?,
            marks: ctx.marks(pid)?,
        })
    };
    tokio::time::sleep(RAMP).await;
    writers.measuring.store(true, Ordering::Relaxed);
    let r0 = read().await?;
    tokio::time::sleep(Duration::from_secs(p.insert_secs)).await;
    writers.measuring.store(false, Ordering::Relaxed);
    let r1 = read().await?;
    let capped = writers.next.load(Ordering::Relaxed) >= max_rows;
    let mut rtts = writers.stop().await?;
    if capped {
        eprintln!(
            "  {}: the writers reached {max_rows} rows, the bench's bound; raise MAX_ROWS_PER_S",
            case.name()
        );
    }

    rtts.sort();
    let ms = |q: f64| {
        rtts.get(pct_index(rtts.len(), q))
            .map_or(f64::NAN, |d| round2(d.as_secs_f64() * 1e3))
    };
    let cpu = cpu_figures(&r0.marks, &r1.marks);
    let window = cpu["window_s"].as_f64().unwrap_or(f64::NAN);
    let rows = r1.committed - r0.committed;
    let (notified, wal) = (r1.notified - r0.notified, r1.wal - r0.wal);
    let mut figures = json!({
        "rows": rows,
        "rows_per_s": round2(rows as f64 / window),
        "commit_rtt_ms_p50": ms(0.50),
        "commit_rtt_ms_p99": ms(0.99),
        "notifications_received": notified,
        "notifications_per_1k_rows": per_row(notified as f64, rows, 1e3),
        "wal_bytes": wal,
        "wal_bytes_per_row": per_row(wal as f64, rows, 1.0),
        "hit_row_bound": capped,
        "cpu_s": cpu,
    });
    match (&hook, relay.as_mut()) {
        (Some(hook), Some(relay)) => {
            // Cumulative since the writers started, ramp included, like the lag.
            figures["delivered_by_window_end"] = json!(r1.delivered);
            figures["delivered_in_window"] = json!(r1.delivered - r0.delivered);
            figures["inserted_by_window_end"] = json!(r1.committed);
            figures["lag_at_window_end"] = json!(r1.committed as i64 - r1.delivered as i64);
            figures["endpoint"] = hook.counts.figures();
            figures["relay"] = finish_relay(relay)?;
        }
        _ => {
            let (entered, indexes) = indexes_entered(&mut probe, db, p.payload_pad).await?;
            figures["index_entries_per_row"] = json!(entered.len());
            figures["indexes_entered"] = json!(entered);
            figures["indexes_on_table"] = json!(indexes);
        }
    }
    Ok(figures)
}

/// The counters read at each end of a case's measured window.
struct Reading {
    /// Rows committed since the writers started.
    committed: u64,
    notified: u64,
    /// Events the receiver has had (`delivering` only; 0 otherwise).
    delivered: u64,
    /// [`wal_bytes`].
    wal: i64,
    marks: Marks,
}

/// The indexes a freshly inserted row gets an entry in, and how many the table has: every
/// index but the partial ones whose predicate the row fails (`pg_stat_all_indexes` cannot say: its `idx_tup_*`
/// count reads, not inserts). The row is inserted by the bench's own statement in a
/// transaction that is rolled back, so it neither stays nor notifies.
async fn indexes_entered(
    client: &mut tokio_postgres::Client,
    db: &FreshDb,
    pad: usize,
) -> anyhow::Result<(Vec<String>, usize)> {
    let table = db.cfg.qualified_table();
    let tx = client.transaction().await?;
    let id: uuid::Uuid = tx
        .query_one(
            &format!("{} RETURNING id", insert_one_sql(pad)),
            &[&ORG, &0i64],
        )
        .await?
        .get(0);
    let indexes = tx
        .query(
            "SELECT c.relname::text, pg_get_expr(i.indpred, i.indrelid)
               FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
              WHERE i.indrelid = $1::text::regclass ORDER BY 1",
            &[&table],
        )
        .await?;
    let mut entered = Vec::new();
    for index in &indexes {
        let (name, predicate): (String, Option<String>) = (index.get(0), index.get(1));
        let enters = match predicate {
            None => true,
            Some(pred) => {
                let sql = format!("SELECT count(*) FROM {table} WHERE id = $1 AND ({pred})");
                tx.query_one(&sql, &[&id]).await?.get::<_, i64>(0) > 0
            }
        };
        if enters {
            entered.push(name);
        }
    }
    tx.rollback().await?;
    Ok((entered, indexes.len()))
}

/// The writer connections: each commits the single-row INSERT as fast as it returns until
/// stopped or the row bound is reached. They count every commit, and record the round trip
/// of those that complete while `measuring` is set (not the ramp's). Stopped on drop, so
/// an error elsewhere does not leave them inserting.
struct Writers {
    committed: Arc<AtomicU64>,
    /// The next event number; the writers stop at the bound.
    next: Arc<AtomicU64>,
    measuring: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<Vec<Duration>>>>,
}

impl Writers {
    async fn start(ctx: &Ctx<'_>, db: &FreshDb, max_rows: u64) -> anyhow::Result<Self> {
        let mut w = Self {
            committed: Arc::new(AtomicU64::new(0)),
            next: Arc::new(AtomicU64::new(0)),
            measuring: Arc::new(AtomicBool::new(false)),
            stop: Arc::new(AtomicBool::new(false)),
            tasks: Vec::new(),
        };
        let sql: Arc<str> = insert_one_sql(ctx.p.payload_pad).into();
        for _ in 0..ctx.p.writers {
            let client = outbox_relay::db::connect(db.cfg.database_url.get()).await?;
            let (sql, committed, next, measuring, stop) = (
                sql.clone(),
                w.committed.clone(),
                w.next.clone(),
                w.measuring.clone(),
                w.stop.clone(),
            );
            w.tasks.push(tokio::spawn(async move {
                let stmt = client.prepare(&sql).await?;
                let mut rtts = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= max_rows {
                        break;
                    }
                    let t = Instant::now();
                    client.execute(&stmt, &[&ORG, &(n as i64)]).await?;
                    if measuring.load(Ordering::Relaxed) {
                        rtts.push(t.elapsed());
                    }
                    committed.fetch_add(1, Ordering::Relaxed);
                }
                anyhow::Ok(rtts)
            }));
        }
        Ok(w)
    }

    fn committed(&self) -> u64 {
        self.committed.load(Ordering::Relaxed)
    }

    /// Stops them; the round trips they recorded.
    async fn stop(mut self) -> anyhow::Result<Vec<Duration>> {
        self.stop.store(true, Ordering::Relaxed);
        let mut rtts = Vec::new();
        for t in std::mem::take(&mut self.tasks) {
            rtts.extend(t.await??);
        }
        Ok(rtts)
    }
}

impl Drop for Writers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
