//! Writes delivery outcomes back in batches (the leases of work in progress are kept alive
//! by [`super::leases`]).
//!
//! Delivery tasks send their [`Recorded`] outcome here; the recorder takes whatever has
//! queued up (one or a thousand) and writes it in a single fenced UPDATE, so the database sees
//! one round trip per batch, not per row, and a busy relay batches more without waiting on a
//! timer. Each outcome carries its capacity permit: a slot in the relay's in-flight window is
//! given back only once the outcome is durable, so memory stays bounded even when the
//! database stalls.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::leases::InFlight;
use crate::backoff::Backoff;
use crate::db::claims::{self};
use crate::db::queries::Queries;
use crate::observe::activity::Timeline;
use crate::observe::incident::Incident;
use crate::outcome::{AttemptLog, Outcome};

/// Most outcomes written by one statement.
pub const MAX_RECORD_BATCH: usize = 1000;

/// One event's outcome on its way to the database.
pub struct Recorded {
    pub id: String,
    pub token: Uuid,
    pub outcome: Outcome,
    /// The attempts made, appended to the row's history.
    pub log: Vec<AttemptLog>,
    /// The in-flight slot this event held; freed after the write.
    pub permit: OwnedSemaphorePermit,
    /// Set when the event is a suspect: it stays aboard until its outcome is durable.
    pub suspect: Option<SuspectAboard>,
}

/// A suspect (a row whose lease lapsed twice in a row) held by this relay. While one is
/// aboard the claim loop asks for no other; dropping it, once the outcome is written (or
/// given up on), lets the next one go. Not at the end of the HTTP call: a suspect delivered
/// but not yet recorded still lapses with the relay if the next suspect kills it, and an
/// innocent row would then share the poison event's fate a third time.
pub struct SuspectAboard {
    flag: Arc<AtomicBool>,
    wake: Arc<Notify>,
}

impl SuspectAboard {
    /// Marks a suspect aboard; `flag` is the relay's "a suspect is aboard", `wake` its claim loop.
    pub fn board(flag: Arc<AtomicBool>, wake: Arc<Notify>) -> Self {
        flag.store(true, Ordering::Release);
        Self { flag, wake }
    }
}

impl Drop for SuspectAboard {
    fn drop(&mut self) {
        self.flag.store(false, Ordering::Release);
        self.wake.notify_one();
    }
}

/// Whom the recorder tells once outcomes are durable.
pub struct Signals {
    /// The claim loop, when a retry was scheduled (or, with `wake_on_completion`, always).
    pub wake: Arc<Notify>,
    /// The claim loop waiting for room in the in-flight window.
    pub capacity_freed: Arc<Notify>,
    /// Entity order: a finished event may release the next one of its key.
    pub wake_on_completion: bool,
    /// The dashboard's count of delivered events, once durable.
    pub timeline: Arc<Timeline>,
}

/// The recorder task. Ends when every sender is gone and the queue is written. `give_up`
/// (the end of the shutdown grace) stops retrying a write the database keeps refusing;
/// those rows fall back to their leases, so they are redelivered, never lost.
pub async fn run(
    pool: Pool,
    queries: Arc<Queries>,
    inflight: Arc<InFlight>,
    signals: Signals,
    mut rx: mpsc::Receiver<Recorded>,
    give_up: CancellationToken,
) {
    let mut batch = Vec::with_capacity(MAX_RECORD_BATCH);
    let mut writes = Incident::new("recording outcomes");
    // Batches with outcomes a lapsed lease fenced out come in a run after an outage (every
    // lease of the batches in flight lapsed together): one warning for the run.
    let mut fenced = Incident::new("outcomes fenced out by lapsed leases");
    while rx.recv_many(&mut batch, MAX_RECORD_BATCH).await > 0 {
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
        loop {
            match write(&pool, &queries, &batch).await {
                Ok(written) => {
                    writes.succeeded();
                    let completed = |r: &&Recorded| matches!(r.outcome, Outcome::Completed { .. });
                    let delivered = if written.len() < batch.len() {
                        crate::incident_failed!(
                            fenced,
                            lost = batch.len() - written.len(),
                            "outcomes not recorded: their lease lapsed and the events were \
                             claimed again, by this relay or another (they may be delivered twice)"
                        );
                        let written: std::collections::HashSet<String> =
                            written.into_iter().collect();
                        batch
                            .iter()
                            .filter(completed)
                            .filter(|r| written.contains(&r.id))
                            .count()
                    } else {
                        fenced.succeeded();
                        batch.iter().filter(completed).count()
                    };
                    signals.timeline.delivered(delivered as u32);
                    break;
                }
                Err(e) if give_up.is_cancelled() => {
                    tracing::error!(
                        error = format!("{e:#}"),
                        events = batch.len(),
                        "giving up recording outcomes at shutdown; their leases will lapse \
                         and they will be delivered again"
                    );
                    break;
                }
                Err(e) => {
                    let delay = backoff.failed();
                    crate::incident_failed!(writes, error = format!("{e:#}"), events = batch.len(), retry_in = ?delay,
                        "cannot record outcomes; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = give_up.cancelled() => {}
                    }
                }
            }
        }
        inflight.remove(batch.iter().map(|r| &r.id));
        let rescheduled = batch
            .iter()
            .any(|r| !matches!(r.outcome, Outcome::Completed { .. }));
        batch.clear(); // drops the permits, and lets the next suspect go
        signals.capacity_freed.notify_one();
        if rescheduled || signals.wake_on_completion {
            // A retry now waits in the table: let the claimer recompute when to wake.
            signals.wake.notify_one();
        }
    }
}

/// One UPDATE for the whole batch; returns the ids of the rows it changed.
async fn write(pool: &Pool, q: &Queries, batch: &[Recorded]) -> anyhow::Result<Vec<String>> {
    let rows = batch
        .iter()
        .map(|r| r.outcome.row(&r.id, r.token, &r.log))
        .collect::<anyhow::Result<Vec<_>>>()?;
    claims::record(pool, q, &rows).await
}
