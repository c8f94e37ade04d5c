//! Background work that queries the database runs right after a round of the claim loop,
//! never on a timer of its own: an idle relay's statements then all happen at its poll, and
//! nothing runs between polls but the LISTEN heartbeat.
//!
//! Every periodic service has one shape, [`Service`]: a `period`, a `run_once` that returns
//! what it did (so tests call it directly and look at the report), and [`run`], the one loop
//! that drives them all. The services: [`housekeeping`], [`retention`] and the paused-set
//! reload ([`crate::sinks::pause::PausedSet`]). The SSE tail reader also waits on [`Rounds`]
//! as its safety net, but reads until it has caught up, so it keeps a loop of its own.

pub mod housekeeping;
pub mod retention;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How many times its own duration a read waits before it runs again, at least.
pub const SLOW_READ_SPACING: u32 = 20;

/// How long after its last run a periodic read may run again: its `period`, or
/// [`SLOW_READ_SPACING`] times what the last run took (`took`), whichever is longer. Reads that walk index
/// entries vacuum has not removed (the sweep below the claim cursor, the queue counts) grow
/// without bound while a snapshot is held open (`bench/sweep_cost.sh` measures both). Spaced
/// out this way they take at most a twentieth of one connection's time, however old the
/// snapshot, and run at their period again once it ends.
pub fn spaced(period: Duration, took: Duration) -> Duration {
    period.max(took.saturating_mul(SLOW_READ_SPACING))
}

/// A periodic service, run by [`run`] after claim rounds.
pub trait Service: Send + 'static {
    /// What one run did, for the log and for tests.
    type Report: Send;
    /// Names the service in log lines.
    const NAME: &'static str;
    /// Whether the first claim round runs it (false: the first run is one `period` in, for a
    /// service whose state was loaded at start).
    const AT_START: bool = true;

    /// Runs at most this often.
    fn period(&self) -> Duration;

    /// One run. `stop` asks a long run (a large purge) to end early.
    fn run_once(
        &mut self,
        stop: &CancellationToken,
    ) -> impl Future<Output = anyhow::Result<Self::Report>> + Send;

    /// Logs what a run did (nothing, by default).
    fn report(&self, _report: &Self::Report) {}

    /// Logs a failed run; the next round tries again. A warning by default: services whose
    /// failure the claim loop reports anyway (the database is down) log at debug.
    fn failed(&self, e: &anyhow::Error) {
        tracing::warn!(
            service = Self::NAME,
            error = format!("{e:#}"),
            "background run failed; will try again"
        );
    }
}

/// Until `stop` (or the claim loop ends): runs `service` after the first claim round at least
/// its period after the last run, and whenever `nudge` is notified (a NOTIFY that says its
/// state changed).
pub async fn run<S: Service>(
    mut service: S,
    mut rounds: Rounds,
    nudge: Option<Arc<Notify>>,
    stop: CancellationToken,
) {
    let mut last = (!S::AT_START).then(Instant::now);
    // Never notified when the service has no nudge.
    let nudge = nudge.unwrap_or_default();
    loop {
        tokio::select! {
            _ = nudge.notified() => {}
            more = rounds.next(service.period(), &mut last, &stop) => if !more { return },
        }
        if stop.is_cancelled() {
            return;
        }
        match service.run_once(&stop).await {
            Ok(report) => service.report(&report),
            Err(e) => service.failed(&e),
        }
    }
}

/// The claim loop's side: announces each round.
pub struct Announcer(watch::Sender<u64>);

/// A background task's side.
#[derive(Clone)]
pub struct Rounds(watch::Receiver<u64>);

pub fn channel() -> (Announcer, Rounds) {
    let (tx, rx) = watch::channel(0);
    (Announcer(tx), Rounds(rx))
}

impl Announcer {
    pub fn round(&self) {
        self.0.send_modify(|n| *n = n.wrapping_add(1));
    }
}

impl Rounds {
    /// Waits for the first round at least `period` after `last` (any round when `last` is
    /// None), and sets `last` to now. False when `stop` comes first or the loop is gone.
    pub async fn next(
        &mut self,
        period: Duration,
        last: &mut Option<Instant>,
        stop: &CancellationToken,
    ) -> bool {
        loop {
            tokio::select! {
                r = self.0.changed() => if r.is_err() { return false },
                _ = stop.cancelled() => return false,
            }
            if last.is_none_or(|t| t.elapsed() >= period) {
                *last = Some(Instant::now());
                return true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Counts its runs; fails its second.
    struct Counter {
        runs: Arc<AtomicU32>,
    }

    impl Service for Counter {
        type Report = u32;
        const NAME: &'static str = "counter";
        const AT_START: bool = false;

        fn period(&self) -> Duration {
            Duration::from_secs(10)
        }

        async fn run_once(&mut self, _stop: &CancellationToken) -> anyhow::Result<u32> {
            let n = self.runs.fetch_add(1, Ordering::SeqCst) + 1;
            anyhow::ensure!(n != 2, "second run fails");
            Ok(n)
        }
    }

    #[test]
    fn a_slow_read_waits_twenty_times_what_it_took_and_a_fast_one_its_period() {
        let period = Duration::from_secs(10);
        assert_eq!(spaced(period, Duration::from_millis(90)), period);
        assert_eq!(spaced(period, Duration::from_millis(500)), period);
        assert_eq!(
            spaced(period, Duration::from_secs(2)),
            Duration::from_secs(40)
        );
        assert_eq!(spaced(period, Duration::MAX), Duration::MAX, "no overflow");
    }

    /// Lets the spawned service react to what just happened.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn runs_after_rounds_at_most_once_a_period_and_when_nudged() {
        let runs = Arc::new(AtomicU32::new(0));
        let (announcer, rounds) = channel();
        let nudge = Arc::new(Notify::new());
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(
            Counter { runs: runs.clone() },
            rounds,
            Some(nudge.clone()),
            stop.clone(),
        ));
        settle().await;
        // AT_START = false: rounds inside the first period do nothing.
        announcer.round();
        settle().await;
        assert_eq!(runs.load(Ordering::SeqCst), 0);
        // No round, no run, however long it has been.
        tokio::time::advance(Duration::from_secs(11)).await;
        settle().await;
        assert_eq!(runs.load(Ordering::SeqCst), 0);
        announcer.round();
        settle().await;
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        // Rounds within the period after a run do nothing; a nudge runs it at once.
        announcer.round();
        settle().await;
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        nudge.notify_one();
        settle().await;
        assert_eq!(
            runs.load(Ordering::SeqCst),
            2,
            "the nudge ran it (and it failed)"
        );
        // A failed run does not end the service.
        tokio::time::advance(Duration::from_secs(10)).await;
        announcer.round();
        settle().await;
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        stop.cancel();
        task.await.unwrap();
        announcer.round();
        settle().await;
        assert_eq!(runs.load(Ordering::SeqCst), 3, "stopped");
    }
}
