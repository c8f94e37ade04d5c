//! Pausing a webhook endpoint from the dashboard, on every relay that shares the table.
//!
//! The paused set lives in a table beside the outbox (migration 007), so a pause holds on
//! all instances and across restarts. The relay that takes the action applies it at once and
//! announces it with a NOTIFY ([`ENDPOINTS_CHANGED`]) on the table's channel; the others
//! reload on that, and every few claim rounds anyway (a poll-only relay hears no NOTIFY).
//! While paused, events still owed to the endpoint are held (see [`crate::outcome::Outcome`]);
//! a resume releases them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;

use crate::db::admin::{self, On, PauseReason, Paused};
use crate::db::queries::Queries;
use crate::sinks::Dispatcher;

/// The NOTIFY payload that tells relays to reload the paused set (new rows notify with '').
pub const ENDPOINTS_CHANGED: &str = "endpoints";
/// Held rows released per statement on resume.
const RELEASE_BATCH: i64 = 5000;
/// Reloads in claim rounds at most this often.
const RELOAD_EVERY: Duration = Duration::from_secs(5);

/// Reads the paused set and applies it to this relay's endpoints (and their circuit
/// breakers); returns the endpoints whose state changed, with their new state (true: paused).
/// A circuit left open for an endpoint whose breaker is now off in the config is closed,
/// and the other relays on `channel` are told, as for any endpoint leaving the set.
pub async fn load(
    pool: &Pool,
    q: &Queries,
    channel: &str,
    dispatcher: &Dispatcher,
) -> anyhow::Result<Vec<(String, bool)>> {
    let paused: HashMap<String, Paused> = admin::paused_endpoints(On::Pool(pool), q)
        .await?
        .into_iter()
        .map(|p| (p.endpoint.clone(), p))
        .collect();
    let now = tokio::time::Instant::now();
    let mut changed = Vec::new();
    for e in dispatcher.endpoints() {
        let row = paused.get(&e.name);
        if row.is_some_and(|p| p.reason == PauseReason::Circuit) && e.breaker.config().is_none() {
            if crate::db::circuit::close(pool, q, &e.name).await? {
                tracing::info!(endpoint = %e.name, "circuit closed: the endpoint has no circuit_breaker in the config now");
                unpaused(On::Pool(pool), q, channel, &e.name).await?;
            }
            continue; // applied at the next reload
        }
        e.breaker.sync(row, now);
        e.set_pause_row(row.cloned());
        crate::observe::metrics::endpoint_paused(&e.name, row.map(|p| p.reason.as_str()));
        let now_paused = row.is_some();
        if e.set_paused(now_paused) {
            match row {
                Some(p) => {
                    tracing::info!(endpoint = %e.name, reason = p.reason.as_str(), "endpoint paused")
                }
                None => tracing::info!(endpoint = %e.name, "endpoint resumed"),
            }
            changed.push((e.name.clone(), now_paused));
        }
    }
    Ok(changed)
}

/// Keeps this relay's paused set in step with the table's: reloads it when a relay announces
/// a change (the listener's nudge) and after claim rounds at most every [`RELOAD_EVERY`]. The
/// set was loaded at start, so the first reload is one period in.
pub struct PausedSet {
    pub pool: Pool,
    pub queries: Arc<Queries>,
    /// The table's NOTIFY channel.
    pub channel: String,
    pub dispatcher: Arc<Dispatcher>,
}

impl crate::background::Service for PausedSet {
    /// The endpoints whose state changed (true: now paused).
    type Report = Vec<(String, bool)>;
    const NAME: &'static str = "paused endpoints";
    const AT_START: bool = false;

    fn period(&self) -> Duration {
        RELOAD_EVERY
    }

    async fn run_once(&mut self, _stop: &CancellationToken) -> anyhow::Result<Self::Report> {
        load(&self.pool, &self.queries, &self.channel, &self.dispatcher).await
    }

    fn failed(&self, e: &anyhow::Error) {
        tracing::debug!(error = format!("{e:#}"), "paused endpoints not reloaded");
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
        admin::pause_endpoint(On::Pool(pool), q, name, by).await?;
        endpoint.set_paused(true)
    } else {
        admin::resume_endpoint(On::Pool(pool), q, name).await?;
        endpoint.set_paused(false)
    };
    if paused {
        admin::notify(On::Pool(pool), channel, ENDPOINTS_CHANGED).await?;
    } else {
        let released = unpaused(On::Pool(pool), q, channel, name).await?;
        tracing::info!(endpoint = name, released, "held events released");
    }
    Ok(changed)
}

/// After `endpoint` left the paused set (a resume, a closed circuit): tells the relays to
/// reload the set, releases the rows held for it and wakes the relays to claim them. Returns
/// how many rows were released.
pub async fn unpaused(
    on: On<'_>,
    q: &Queries,
    channel: &str,
    endpoint: &str,
) -> anyhow::Result<u64> {
    admin::notify(on, channel, ENDPOINTS_CHANGED).await?;
    let batch = || admin::release_held_batch(on, q, endpoint, RELEASE_BATCH);
    let released =
        crate::db::in_batches(RELEASE_BATCH, batch, |_| std::future::ready(true)).await?;
    admin::wake_relays(on, channel).await?;
    Ok(released)
}

/// Makes due again the rows held for an endpoint that is not paused now or not among
/// `configured` (a resume this relay may have missed, an endpoint its config dropped);
/// returns how many. Rows still owed to an endpoint that stays paused are held again when
/// claimed.
pub async fn release_stale(on: On<'_>, q: &Queries, configured: &[&str]) -> anyhow::Result<u64> {
    let batch = || admin::release_stale_batch(on, q, configured, RELEASE_BATCH);
    crate::db::in_batches(RELEASE_BATCH, batch, |_| std::future::ready(true)).await
}
