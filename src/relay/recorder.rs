//! Writes delivery outcomes back in batches (the leases of work in progress are kept alive
//! by [`super::leases`]).
//!
//! Delivery tasks send their [`Recorded`] outcome here; the recorder takes whatever has
//! queued up (one or a thousand) and writes it in a single fenced UPDATE, so the database sees
//! one round trip per batch, not per row, and a busy relay batches more without waiting on a
//! timer. Each outcome carries its capacity permit: a slot in the relay's in-flight window is
//! given back only once the outcome is durable, so memory stays bounded even when the
//! database stalls.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit};
use tokio_postgres::error::SqlState;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::leases::InFlight;
use crate::backoff::Backoff;
use crate::db::claims::{self, Locked};
use crate::db::has_sql_state;
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
    // Outcomes whose rows another session held locked when they were written (an app's
    // open transaction that updated or locked the event, an admin's SELECT ... FOR UPDATE).
    // The write waits for such a row only briefly, then writes the rest of its batch around
    // it, so one locked row does not hold up the outcomes of every other event. These are
    // tried again on their own, backing off; meanwhile they keep their in-flight slots and
    // stay on the lease extension's list (which cannot extend a locked row).
    let mut locked: Vec<Recorded> = Vec::new();
    let mut waiting = Incident::new("outcomes waiting for a row lock");
    let mut relock = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut relock_at = tokio::time::Instant::now();
    let mut open = true;
    loop {
        let mut retrying = false;
        tokio::select! {
            biased;
            _ = give_up.cancelled(), if !locked.is_empty() => {
                tracing::error!(
                    events = locked.len(),
                    "giving up recording outcomes whose rows another session holds locked; \
                     their leases will lapse and they will be delivered again"
                );
                locked.clear();
            }
            _ = tokio::time::sleep_until(relock_at), if !locked.is_empty() => {
                batch.append(&mut locked);
                retrying = true;
            }
            n = rx.recv_many(&mut batch, MAX_RECORD_BATCH), if open => open = n > 0,
            else => break,
        }
        if batch.is_empty() {
            continue;
        }
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
        let split = loop {
            // Outcomes found locked before are written around any lock still there.
            let first = if retrying { Locked::Skip } else { Locked::Wait };
            match write(&pool, &queries, &batch, first).await {
                Ok(split) => {
                    writes.succeeded();
                    break split;
                }
                Err(e) if give_up.is_cancelled() => {
                    tracing::error!(
                        error = format!("{e:#}"),
                        events = batch.len(),
                        "giving up recording outcomes at shutdown; their leases will lapse \
                         and they will be delivered again"
                    );
                    break Split::nothing_written();
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
        };
        let relocked: Vec<Recorded> = if split.locked.is_empty() {
            Vec::new()
        } else {
            let (relocked, done) = batch
                .drain(..)
                .partition(|r| split.locked.contains(&(r.id.clone(), r.token)));
            batch = done;
            relocked
        };
        if relocked.is_empty() {
            if locked.is_empty() {
                waiting.succeeded();
                relock.succeeded();
            }
        } else {
            // A lock held for a moment (this relay's lease extension, another relay's claim
            // of a lapsed row) is gone at the first retry; one still held then is an incident.
            if retrying {
                crate::incident_failed!(
                    waiting,
                    events = relocked.len(),
                    "outcomes not recorded yet: another session holds their rows locked (an \
                     open transaction that updated or locked these events; see pg_locks); the \
                     relay goes on with other events and tries these again"
                );
            }
            locked.extend(relocked);
            relock_at = tokio::time::Instant::now() + relock.failed();
        }
        if split.fenced > 0 {
            crate::incident_failed!(
                fenced,
                lost = split.fenced,
                "outcomes not recorded: their lease lapsed and the events were claimed again, \
                 by this relay or another (they may be delivered twice)"
            );
        } else {
            fenced.succeeded();
        }
        let delivered = batch
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Completed { .. }))
            .filter(|r| split.wrote(&r.id))
            .count();
        signals.timeline.delivered(delivered as u32);
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

/// What one write made of a batch.
struct Split {
    /// The ids of the rows written, when not every row was (None: all were, the common case).
    written: Option<HashSet<String>>,
    /// The rows (id, claim token) still claimed by this relay but locked by another session:
    /// their outcomes are still to write.
    locked: HashSet<(String, Uuid)>,
    /// How many outcomes were fenced out: their rows are no longer claimed under their token.
    fenced: usize,
}

impl Split {
    fn nothing_written() -> Self {
        Self {
            written: Some(HashSet::new()),
            locked: HashSet::new(),
            fenced: 0,
        }
    }

    fn wrote(&self, id: &str) -> bool {
        self.written.as_ref().is_none_or(|w| w.contains(id))
    }
}

/// One UPDATE for the whole batch, meeting locked rows as `first` says. When a row waited for
/// is still locked at the bound, the batch is written again by the statement that leaves
/// locked rows out; when rows are left out, one more statement tells locked rows from
/// fenced ones.
async fn write(
    pool: &Pool,
    q: &Queries,
    batch: &[Recorded],
    first: Locked,
) -> anyhow::Result<Split> {
    let rows = batch
        .iter()
        .map(|r| r.outcome.row(&r.id, r.token, &r.log))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let written = match claims::record(pool, q, &rows, first).await {
        Err(e) if first == Locked::Wait && has_sql_state(&e, &[SqlState::LOCK_NOT_AVAILABLE]) => {
            tracing::debug!(
                events = batch.len(),
                "a row of the batch is locked by another session; writing around it"
            );
            claims::record(pool, q, &rows, Locked::Skip).await?
        }
        written => written?,
    };
    if written.len() == batch.len() {
        return Ok(Split {
            written: None,
            locked: HashSet::new(),
            fenced: 0,
        });
    }
    let written: HashSet<String> = written.into_iter().collect();
    let missed: Vec<(&str, Uuid)> = batch
        .iter()
        .filter(|r| !written.contains(&r.id))
        .map(|r| (r.id.as_str(), r.token))
        .collect();
    let locked: HashSet<(String, Uuid)> = match claims::still_claimed(pool, q, &missed).await {
        Ok(rows) => rows.into_iter().collect(),
        // The outcomes were not written: try them again later, as if locked (a fenced one is
        // then found fenced).
        Err(e) => {
            tracing::debug!(
                error = format!("{e:#}"),
                "cannot tell locked rows from fenced ones"
            );
            missed.iter().map(|(id, t)| (id.to_string(), *t)).collect()
        }
    };
    Ok(Split {
        fenced: missed.len().saturating_sub(locked.len()),
        written: Some(written),
        locked,
    })
}
