//! Pausing a webhook endpoint from the dashboard, on every relay that shares the table.
//!
//! The paused set lives in a table beside the outbox (migration 007), so a pause holds on
//! all instances and across restarts. The relay that takes the action applies it at once and
//! announces it with a NOTIFY ([`ENDPOINTS_CHANGED`]) on the table's channel; the others
//! reload on that, and every few claim rounds anyway (a poll-only relay hears no NOTIFY).
//! While paused, events still owed to the endpoint are held (see [`crate::sinks::Outcome`]);
//! a resume releases them.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::background::Rounds;
use crate::db::admin::{self, On};
use crate::db::queries::Queries;
use crate::sinks::Dispatcher;

/// The NOTIFY payload that tells relays to reload the paused set (new rows notify with '').
pub const ENDPOINTS_CHANGED: &str = "endpoints";
/// Held rows released per statement on resume.
const RELEASE_BATCH: i64 = 5000;
/// Reloads in claim rounds at most this often.
const RELOAD_EVERY: Duration = Duration::from_secs(5);

/// Reads the paused set and applies it to this relay's endpoints.
pub async fn load(pool: &Pool, q: &Queries, dispatcher: &Dispatcher) -> anyhow::Result<()> {
    let paused: HashSet<String> = admin::paused_endpoints(On::Pool(pool), q)
        .await?
        .into_iter()
        .collect();
    for e in dispatcher.endpoints() {
        let now = paused.contains(&e.name);
        if e.set_paused(now) {
            tracing::info!(
                endpoint = %e.name,
                "{}",
                if now { "endpoint paused" } else { "endpoint resumed" }
            );
        }
    }
    Ok(())
}

/// Until `stop`: reloads the paused set when a relay announces a change, and after claim
/// rounds at most every [`RELOAD_EVERY`].
pub async fn watch(
    pool: Pool,
    q: Arc<Queries>,
    dispatcher: Arc<Dispatcher>,
    changed: Arc<Notify>,
    mut rounds: Rounds,
    stop: CancellationToken,
) {
    let mut last = Some(Instant::now());
    loop {
        tokio::select! {
            _ = changed.notified() => {}
            more = rounds.next(RELOAD_EVERY, &mut last, &stop) => if !more { return },
            _ = stop.cancelled() => return,
        }
        if let Err(e) = load(&pool, &q, &dispatcher).await {
            tracing::debug!(error = format!("{e:#}"), "paused endpoints not reloaded");
        }
    }
}

/// Pauses or resumes `name` for every relay on the table. `by` is recorded with a pause.
/// Resuming releases the held rows and wakes the relays. False if nothing changed.
pub async fn set(
    pool: &Pool,
    q: &Queries,
    channel: &str,
    dispatcher: &Dispatcher,
    name: &str,
    paused: bool,
    by: &str,
) -> anyhow::Result<bool> {
    let endpoint = dispatcher
        .endpoint(name)
        .ok_or_else(|| anyhow::anyhow!("no webhook named {name:?}"))?;
    let changed = if paused {
        admin::pause_endpoint(pool, q, name, by).await?;
        endpoint.set_paused(true)
    } else {
        admin::resume_endpoint(pool, q, name).await?;
        endpoint.set_paused(false)
    };
    admin::notify(On::Pool(pool), channel, ENDPOINTS_CHANGED).await?;
    if !paused {
        let released = release_held(pool, q).await?;
        tracing::info!(endpoint = name, released, "held events released");
        admin::wake_relays(On::Pool(pool), channel).await?;
    }
    Ok(changed)
}

/// Makes every held row due again; returns how many. Rows still owed to an endpoint that
/// stays paused are held again when claimed.
pub async fn release_held(pool: &Pool, q: &Queries) -> anyhow::Result<u64> {
    let mut total = 0;
    loop {
        let n = admin::release_held_batch(pool, q, RELEASE_BATCH).await?;
        total += n;
        if n < RELEASE_BATCH as u64 {
            return Ok(total);
        }
    }
}
