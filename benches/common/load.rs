//! The load generator apps look like to the relay: single-row transactions at a steady rate.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::stats::pct_index;

/// What the load generator did.
pub struct LoadOutcome {
    /// Commit-returned time of each event, ns since the epoch; 0 if its insert failed.
    pub commit_ns: Vec<u64>,
    /// When each event's INSERT was sent, ns since the epoch: the row cannot be visible
    /// before, so latency from here is an upper bound (commit-returned gives the lower one).
    pub sent_ns: Vec<u64>,
    /// Ns since the epoch of event 0's due time.
    pub start_ns: u64,
    /// Ns since the epoch when the last commit returned.
    pub end_ns: u64,
    pub failed: usize,
    /// Worst delay between an insert's due time and its sending (the generator keeping up).
    pub max_behind_ms: f64,
    /// Round trip of the INSERT (autocommit), p50 and p99, ms.
    pub insert_rtt_ms: (f64, f64),
}

/// A timer-paced load: `total` single-row autocommit INSERTs at `rate` per second.
pub struct RateLoad<'a> {
    /// The INSERT; `$1` the org (text), `$2` the event's number (int8).
    pub sql: &'a str,
    /// Event `i` is for `orgs[i % orgs.len()]`.
    pub orgs: &'a [String],
    pub rate: u64,
    pub total: usize,
}

/// Runs `load` over the clients (one in-flight INSERT each): event `i` is due at
/// `start + i / rate`, and its commit-returned time is recorded on `epoch`'s clock.
pub async fn run_load(
    load: &RateLoad<'_>,
    clients: &[Arc<tokio_postgres::Client>],
    epoch: Instant,
) -> anyhow::Result<LoadOutcome> {
    let total = load.total;
    let commit: Arc<Vec<AtomicU64>> = Arc::new((0..total).map(|_| AtomicU64::new(0)).collect());
    let sent_at: Arc<Vec<AtomicU64>> = Arc::new((0..total).map(|_| AtomicU64::new(0)).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let orgs: Arc<Vec<String>> = Arc::new(load.orgs.to_vec());
    let sql: Arc<str> = load.sql.into();
    let period = Duration::from_nanos(1_000_000_000 / load.rate);
    // A little ahead, so every loader is waiting on its first due time already.
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let start_ns = (start.into_std() - epoch).as_nanos() as u64;
    let mut tasks = Vec::new();
    for client in clients {
        let (client, commit, sent_at, next, orgs, sql) = (
            client.clone(),
            commit.clone(),
            sent_at.clone(),
            next.clone(),
            orgs.clone(),
            sql.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let stmt = client.prepare(&sql).await?;
            let (mut failed, mut behind, mut rtts) = (0usize, Duration::ZERO, Vec::new());
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let due = start + period * i as u32;
                tokio::time::sleep_until(due).await;
                let sent = tokio::time::Instant::now();
                behind = behind.max(sent - due);
                sent_at[i].store(
                    (sent.into_std() - epoch).as_nanos() as u64,
                    Ordering::Relaxed,
                );
                match client
                    .execute(&stmt, &[&orgs[i % orgs.len()], &(i as i64)])
                    .await
                {
                    Ok(_) => {
                        let done = Instant::now();
                        commit[i].store((done - epoch).as_nanos() as u64, Ordering::Relaxed);
                        rtts.push(done - sent.into_std());
                    }
                    Err(e) => {
                        failed += 1;
                        if failed <= 3 {
                            eprintln!("  insert {i} failed: {e}");
                        }
                    }
                }
            }
            anyhow::Ok((failed, behind, rtts))
        }));
    }
    let (mut failed, mut behind, mut rtts) = (0, Duration::ZERO, Vec::new());
    for t in tasks {
        let (f, b, r) = t.await??;
        failed += f;
        behind = behind.max(b);
        rtts.extend(r);
    }
    rtts.sort();
    let ms = |d: Option<&Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3);
    let commit_ns: Vec<u64> = commit.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    Ok(LoadOutcome {
        end_ns: commit_ns.iter().copied().max().unwrap_or(start_ns),
        commit_ns,
        sent_ns: sent_at.iter().map(|c| c.load(Ordering::Relaxed)).collect(),
        start_ns,
        failed,
        max_behind_ms: behind.as_secs_f64() * 1e3,
        insert_rtt_ms: (
            ms(rtts.get(pct_index(rtts.len(), 0.50))),
            ms(rtts.get(pct_index(rtts.len(), 0.99))),
        ),
    })
}
