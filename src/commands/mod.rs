//! The one-shot commands: migrate, status, retry, purge, publish (and `dev` in its module).

pub mod dev;

use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use crate::config::Config;
use crate::db::privileges::{self, Use};
use crate::db::queries::{glob_to_like, Queries};
use crate::db::statements as st;
use crate::db::{self, migrate, shape};

/// Rows changed per statement by `purge` and `retry --failed`.
const BATCH: i64 = 1000;

/// Connects, checks the role's privileges for `what`, and reads the table's shape.
async fn open(cfg: &Config, what: Use) -> anyhow::Result<(tokio_postgres::Client, Queries)> {
    let client = db::connect(cfg.database_url.get()).await?;
    privileges::check(&client, cfg, what).await?;
    let table = cfg.qualified_table();
    let shape = shape::inspect(&client, &table).await?;
    Ok((client, Queries::for_config(cfg, &shape)))
}

/// [`open`] for a command that writes: a clear error on a standby (see
/// [`db::server::READ_ONLY`]). `status` reads, and works on a standby too.
async fn open_writable(
    cfg: &Config,
    what: Use,
) -> anyhow::Result<(tokio_postgres::Client, Queries)> {
    let (client, q) = open(cfg, what).await?;
    db::server::ensure_writable(&client).await?;
    Ok((client, q))
}

/// Wakes every relay on this table (rows just became due without an INSERT).
async fn notify(client: &tokio_postgres::Client, cfg: &Config) -> anyhow::Result<()> {
    st::execute(
        client,
        "SELECT pg_notify($1, '')",
        &[&migrate::channel(cfg)],
    )
    .await?;
    Ok(())
}

/// `migrate [--print]`.
pub async fn migrate(cfg: &Config, print: bool) -> anyhow::Result<()> {
    if print {
        print!("{}", migrate::script(cfg));
        return Ok(());
    }
    let mut client = db::connect(cfg.database_url.get()).await?;
    db::server::ensure_writable(&client).await?;
    let managed = migrate::managed_indexes(cfg);
    let before = migrate::existing(&client, cfg, &managed).await?;
    migrate::run(&mut client, cfg).await?;
    let shape = shape::inspect(&client, &cfg.qualified_table()).await?;
    for (ix, had) in managed.iter().zip(before) {
        let what = match (had, ix.wanted) {
            (false, _) if ix.retired() => continue,
            (true, _) if ix.retired() => "dropped: replaced",
            (false, true) => "created",
            (true, true) => "kept",
            (true, false) => {
                "dropped: this config does not use it (migrate again after turning it on)"
            }
            (false, false) => "not created: this config does not use it",
        };
        eprintln!("index {} for {}: {what}", ix.name, ix.serves);
    }
    eprintln!(
        "{} is ready (id {}, status {}); NOTIFY channel {:?}",
        cfg.qualified_table(),
        shape.id_type,
        shape.status_type,
        migrate::channel(cfg)
    );
    if !shape.id_has_default {
        eprintln!(
            "id has no database default (an ORM such as Prisma fills it in): an INSERT \
             from SQL must give one, e.g. gen_random_uuid() for a uuid or text id"
        );
    }
    if let Some(caveat) = shape.created_at_caveat() {
        eprintln!("{caveat}");
    }
    eprintln!(
        "a runtime role that is neither superuser nor owner: `outbox-relay migrate \
         --print-grants ROLE` prints its GRANTs"
    );
    Ok(())
}

/// What `status --json` prints.
#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub table: String,
    /// Rows per status value (unknown values included, NULL as "NULL").
    pub counts: std::collections::BTreeMap<String, i64>,
    pub oldest_pending_age_seconds: Option<f64>,
    pub dead_letters: i64,
    /// Entity keys held up by a FAILED event (ordered mode only; at most
    /// [`BLOCKED_KEYS_SHOWN`]), oldest first.
    pub blocked_keys: Vec<BlockedKey>,
    /// Webhook endpoints paused from the dashboard (their events are held).
    pub paused_endpoints: Vec<String>,
}

/// An entity key whose next event waits for an operator (`retry` or `skip` its head).
#[derive(Debug, Clone, Serialize)]
pub struct BlockedKey {
    pub entity_type: String,
    pub entity_id: String,
    /// The FAILED event holding it up.
    pub event_id: String,
    pub error_message: Option<String>,
    /// Events of the key waiting behind it.
    pub waiting: i64,
}

impl From<&tokio_postgres::Row> for BlockedKey {
    /// A row of the blocked-keys query.
    fn from(r: &tokio_postgres::Row) -> Self {
        Self {
            entity_type: r.get(0),
            entity_id: r.get(1),
            event_id: r.get(2),
            error_message: r.get(3),
            waiting: r.get(4),
        }
    }
}

/// The most blocked keys `status` lists.
pub const BLOCKED_KEYS_SHOWN: i64 = 100;

/// Gathers the status report.
pub async fn status_report(cfg: &Config) -> anyhow::Result<StatusReport> {
    let (client, q) = open(cfg, Use::Status).await?;
    let mut counts = std::collections::BTreeMap::new();
    for s in ["PENDING", "PROCESSING", "COMPLETED", "FAILED"] {
        counts.insert(s.to_owned(), 0);
    }
    for row in st::query(&client, &q.status_counts, &[]).await? {
        counts.insert(row.get(0), row.get(1));
    }
    let oldest: Option<f64> = st::query_one(&client, &q.oldest_pending, &[]).await?.get(0);
    let blocked_keys = if cfg.ordered_types().is_empty() {
        Vec::new()
    } else {
        st::query(&client, &q.blocked_keys, &[&BLOCKED_KEYS_SHOWN])
            .await?
            .iter()
            .map(BlockedKey::from)
            .collect()
    };
    let paused_endpoints = st::query(&client, &q.paused_list, &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Ok(StatusReport {
        paused_endpoints,
        table: cfg.qualified_table(),
        dead_letters: counts["FAILED"],
        counts,
        oldest_pending_age_seconds: oldest,
        blocked_keys,
    })
}

/// `status [--json]`.
pub async fn status(cfg: &Config, json: bool) -> anyhow::Result<()> {
    let r = status_report(cfg).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!("{}", r.table);
    for (status, n) in &r.counts {
        let note = match status.as_str() {
            "PENDING" => r
                .oldest_pending_age_seconds
                .map(|s| {
                    format!(
                        "  oldest {}",
                        humantime::format_duration(Duration::from_secs(s as u64))
                    )
                })
                .unwrap_or_default(),
            "FAILED" if *n > 0 => "  dead letters: `outbox-relay retry --failed` to resend".into(),
            _ => String::new(),
        };
        println!("  {status:<12} {n:>10}{note}");
    }
    if !r.paused_endpoints.is_empty() {
        println!(
            "paused endpoints (their events are held; resume them in the dashboard): {}",
            r.paused_endpoints.join(", ")
        );
    }
    if !r.blocked_keys.is_empty() {
        println!(
            "blocked entity keys (next event waits; `outbox-relay retry --id` or `skip --id` the head):"
        );
        for k in &r.blocked_keys {
            println!(
                "  {}/{}  head {}  {} waiting  {}",
                k.entity_type,
                k.entity_id,
                k.event_id,
                k.waiting,
                k.error_message.as_deref().unwrap_or("")
            );
        }
    }
    Ok(())
}

/// `skip --id ...`. Returns how many events were skipped.
pub async fn skip(cfg: &Config, ids: &[String]) -> anyhow::Result<u64> {
    let (client, q) = open_writable(cfg, Use::Change).await?;
    let rows = st::query(&client, &q.skip_ids, &[&ids])
        .await
        .context("skipping events (are the ids of the table's id type?)")?;
    let done: std::collections::HashSet<String> = rows.iter().map(|r| r.get(0)).collect();
    for id in ids.iter().filter(|id| !done.contains(*id)) {
        eprintln!("{id}: not skipped (no such event, or it is not FAILED, or already skipped)");
    }
    if !done.is_empty() {
        // The events behind them are due now.
        notify(&client, cfg).await?;
    }
    eprintln!("{} event(s) skipped", done.len());
    Ok(done.len() as u64)
}

/// `retry --id ...` or `retry --failed [--type GLOB]`. Returns how many rows went back.
pub async fn retry(cfg: &Config, ids: &[String], event_type: Option<&str>) -> anyhow::Result<u64> {
    let (client, q) = open_writable(cfg, Use::Change).await?;
    let total = if !ids.is_empty() {
        let rows = st::query(&client, &q.retry_ids, &[&ids])
            .await
            .context("retrying events (are the ids of the table's id type?)")?;
        let done: std::collections::HashSet<String> = rows.iter().map(|r| r.get(0)).collect();
        for id in ids.iter().filter(|id| !done.contains(*id)) {
            eprintln!("{id}: not retried (no such event, or it is not FAILED)");
        }
        done.len() as u64
    } else {
        let pattern = glob_to_like(event_type.unwrap_or("*"));
        let mut total = 0;
        loop {
            let n = st::execute(&client, &q.retry_failed, &[&pattern, &BATCH]).await?;
            total += n;
            if n > 0 {
                notify(&client, cfg).await?;
            }
            if n < BATCH as u64 {
                break;
            }
            eprintln!("... {total} retried so far");
        }
        total
    };
    if total > 0 {
        notify(&client, cfg).await?;
    }
    eprintln!("{total} event(s) back to PENDING");
    Ok(total)
}

/// `purge --older-than D`. Returns how many rows were deleted.
pub async fn purge(cfg: &Config, older_than: Duration) -> anyhow::Result<u64> {
    let (client, q) = open_writable(cfg, Use::Purge).await?;
    let secs = older_than.as_secs_f64();
    let mut total = 0;
    loop {
        let n = st::execute(&client, &q.purge, &[&secs, &BATCH]).await?;
        total += n;
        if n < BATCH as u64 {
            break;
        }
        if total % (BATCH as u64 * 10) == 0 {
            eprintln!("... {total} deleted so far");
        }
    }
    eprintln!(
        "{total} COMPLETED event(s) older than {} deleted",
        humantime::format_duration(older_than)
    );
    Ok(total)
}

/// One event to insert.
#[derive(Debug, Clone, Default)]
pub struct NewEvent {
    pub event_type: String,
    pub org_id: Option<String>,
    pub entity_type: Option<String>,
    pub entity_id: Option<String>,
    /// JSON text.
    pub payload: String,
}

/// Inserts one event with an open client; returns its id.
pub async fn insert(
    client: &impl tokio_postgres::GenericClient,
    q: &Queries,
    e: &NewEvent,
) -> anyhow::Result<String> {
    serde_json::from_str::<serde_json::Value>(&e.payload).context("--payload is not valid JSON")?;
    let id = uuid::Uuid::new_v4().to_string();
    let row = if q.publish.contains("$6") {
        client
            .query_one(
                &q.publish,
                &[
                    &e.event_type,
                    &e.org_id,
                    &e.entity_type,
                    &e.entity_id,
                    &e.payload,
                    &id,
                ],
            )
            .await?
    } else {
        client
            .query_one(
                &q.publish,
                &[
                    &e.event_type,
                    &e.org_id,
                    &e.entity_type,
                    &e.entity_id,
                    &e.payload,
                ],
            )
            .await?
    };
    Ok(row.get(0))
}

/// `publish`.
pub async fn publish(cfg: &Config, e: &NewEvent) -> anyhow::Result<String> {
    let (mut client, q) = open_writable(cfg, Use::Publish).await?;
    // In a transaction: its statements stay on one server connection behind a
    // transaction-mode pooler (see `db::statements`).
    let tx = client.transaction().await?;
    let id = insert(&tx, &q, e).await?;
    tx.commit().await?;
    println!("{id}");
    Ok(id)
}
