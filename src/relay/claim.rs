//! The claim loop: when to claim ([`Relay::claim_loop`]: wake-ups, lingering under a busy
//! stream, pauses when contended, the wake-up handshake before sleeping), one claim and its
//! deliveries ([`Relay::run_once`]), the sweep below the claim cursor, and how outcomes are
//! logged.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use super::cursor::{self, ClaimCursor};
use super::doze::{Arm, Doze};
use super::recorder::{Recorded, SuspectAboard};
use super::Relay;
use crate::background;
use crate::backoff::Backoff;
use crate::db::circuit;
use crate::db::claims::{self, Swept};
use crate::event::Claimed;
use crate::health::LOOP_BEAT;
use crate::observe::incident::Incident;
use crate::observe::warn_budget::WarnBudget;

/// Pause after a claim finds rows due but claims none twice in a row: they are locked by other
/// relays, or (ordered mode) held back behind an earlier event of their key. Doubles each time in a row,
/// up to the poll interval, so a key parked behind a dead letter does not keep the loop
/// spinning; a wake-up (NOTIFY, a recorded outcome) claims at once whatever the pause.
const CONTENDED_PAUSE: Duration = Duration::from_millis(20);
/// Waits at least this long go through the wake-up handshake ([`doze`]); shorter ones (a
/// contended claim's first pauses) just sleep: the handshake costs two statements.
const ARM_AFTER: Duration = Duration::from_millis(50);
/// After a claim that found several rows ([`LINGER_MIN_ROWS`]), the relay keeps looking this
/// long, every [`LINGER_STEP`], before going to sleep: under a busy stream of inserts it then
/// claims them as they come, without NOTIFYs and without the handshake's wait for the
/// inserts in flight. A sparser stream (one row per claim) is better served by sleeping: a
/// NOTIFY wakes the relay sooner than the next look would.
const LINGER: Duration = Duration::from_millis(10);
const LINGER_STEP: Duration = Duration::from_millis(2);
const LINGER_MIN_ROWS: usize = 2;
/// How long the relay sleeps when it cannot arm (no LISTEN, no lock connection): inserts do
/// not wake it then.
const UNARMED_POLL: Duration = Duration::from_secs(1);
/// Held events a probe looks through for one of the endpoint's types.
const PROBE_CANDIDATES: i64 = 100;
/// When another relay took a probe slot a moment ago, look again no sooner than this.
const PROBE_RACE: Duration = Duration::from_secs(1);
/// Past a probe slot's due time (the database's clock and this one's differ a little).
const PROBE_MARGIN: Duration = Duration::from_millis(10);

/// Empty claims in a row that found rows due they could not take, and how long to wait
/// after one: the claim loop's decision once a claim came back empty and the linger is over,
/// apart from the loop so every branch is tested without a database.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Contended(u32);

impl Contended {
    /// The wait after an empty claim. `left_fresh`: the claim left fresh rows it could not
    /// take. `due`: the next due row's wait as `next_due` found it (`Some(None)`: none due
    /// at all; `None`: the lookup failed). `poll` bounds every wait.
    fn wait(
        &mut self,
        left_fresh: bool,
        due: Option<Option<Duration>>,
        poll: Duration,
    ) -> Duration {
        match due {
            // Rows are there but this claim could not take them: locked by another relay's
            // claim, or held back behind an earlier event of their entity (fresh rows it
            // left, retries that are due).
            Some(due) if left_fresh || due.is_some_and(|d| d <= Duration::ZERO) => {
                // The first time, claim again at once: the row may simply have committed
                // between the claim and this look (and, this relay being awake, it sent no
                // NOTIFY).
                self.0 = (self.0 + 1).min(17);
                match self.0 {
                    1 => Duration::ZERO,
                    n => (CONTENDED_PAUSE * 2u32.pow(n - 2)).min(poll),
                }
            }
            Some(Some(due)) => {
                self.0 = 0;
                due.min(poll)
            }
            Some(None) | None => {
                self.0 = 0;
                poll
            }
        }
    }
}

impl Relay {
    pub(super) async fn claim_loop(
        &self,
        shutdown: &CancellationToken,
        tracker: &TaskTracker,
        tx: &mpsc::Sender<Recorded>,
        hard: &CancellationToken,
        announcer: &background::Announcer,
        tail_wake: Option<&Notify>,
    ) {
        let poll = self.cfg.poll_interval;
        let batch = self.cfg.batch_size as usize;
        // Claim in chunks worth a transaction: under a backlog, wait until half the window
        // is free rather than claim one row per freed slot.
        let worth_claiming = batch.min(self.capacity_total / 2).max(1);
        let mut failures = Backoff::new(Duration::from_millis(200), Duration::from_millis(12_800));
        let mut contended = Contended::default();
        // The claims fail because the server is read-only, and that was said.
        let mut read_only = false;
        let mut claims = Incident::new("claims");
        let mut last_found = tokio::time::Instant::now() - LINGER;
        let mut cursor = ClaimCursor::new();
        let mut sweep = Sweep::default();
        // Re-planned soon after start (1, 2, 4, 8 s), then every REPLAN_EVERY: a table that
        // was empty or small when the relay started grows fastest relative to its size then.
        let (mut planned, mut replan_after) = (tokio::time::Instant::now(), Duration::from_secs(1));
        // Sleeping without a commit tax (listen mode only; see `doze`).
        let mut doze = self.cfg.listen.then(|| {
            Doze::new(
                self.cfg.database_url.get().clone(),
                self.cfg.table_settings().wake_lock(),
                self.wake.clone(),
            )
        });
        // Inserts do not notify while this relay is awake, so the SSE tail learns of new
        // rows from the claims: after a claim that found rows, and before sleeping.
        let wake_tail = || {
            if let Some(t) = tail_wake {
                t.notify_one();
            }
        };
        loop {
            self.health.beat();
            if shutdown.is_cancelled() {
                return;
            }
            announcer.round();
            if self.capacity.available_permits() < worth_claiming {
                // Busy: waking this relay would be a tax on the app's inserts for nothing.
                if let Some(doze) = doze.as_mut() {
                    doze.disarm().await;
                }
                tokio::select! {
                    _ = self.capacity_freed.notified() => continue,
                    _ = tokio::time::sleep(LOOP_BEAT) => continue,
                    _ = shutdown.cancelled() => return,
                }
            }
            self.probe_circuits(tracker, tx, hard).await;
            let limit = self.capacity.available_permits().min(batch);
            sweep.round(self, &mut cursor, poll.max(cursor::SWEEP_EVERY));
            if planned.elapsed() >= replan_after {
                crate::db::replan(&self.pool);
                planned = tokio::time::Instant::now();
                replan_after = (replan_after * 2).min(crate::db::REPLAN_EVERY);
            }
            // Awake again: let go of the wake lock (if held) while claiming. Side by side, so
            // a database that hangs shows as a claim that hangs (what the watchdog watches).
            let disarm = async {
                if let Some(doze) = doze.as_mut() {
                    doze.disarm().await;
                }
            };
            let (claimed, ()) =
                tokio::join!(self.run_once(limit, &mut cursor, tracker, tx, hard), disarm);
            if matches!(claimed, Ok(c) if c.rows > 0) {
                wake_tail();
            }
            read_only &= claimed.is_err();
            if claimed.is_ok() {
                claims.succeeded();
            }
            let wait = match claimed {
                Ok(claimed) if claimed.rows > 0 => {
                    // More may be due right now: a full batch left some, and while this relay
                    // is awake, new rows arrive without a NOTIFY. Claim until a claim comes
                    // back empty; only then is it worth the handshake of going to sleep.
                    failures.succeeded();
                    contended = Contended::default();
                    if claimed.rows >= LINGER_MIN_ROWS {
                        last_found = tokio::time::Instant::now();
                    }
                    continue;
                }
                // Rows were found a moment ago: more are likely on their way. Look again
                // shortly instead of going to sleep, whose handshake waits for the inserts in
                // flight (a commit's time) before the last claim can see them.
                Ok(_) if last_found.elapsed() < LINGER => {
                    failures.succeeded();
                    LINGER_STEP
                }
                Ok(claimed) => {
                    failures.succeeded();
                    let due = self.next_due(&mut cursor).await.ok();
                    contended.wait(claimed.left_fresh, due, poll)
                }
                Err(e) => {
                    self.health.database.store(false, Ordering::Release);
                    sweep.database_failed();
                    let delay = failures.failed().min(poll);
                    if !crate::db::server::is_read_only(&e) {
                        crate::incident_failed!(claims, error = format!("{e:#}"), retry_in = ?delay, "claim failed; retrying");
                    } else {
                        claims.failed();
                        // A pooled connection reached a standby (a URL without
                        // target_session_attrs=read-write, during a failover). Said once per
                        // incident; the pool's connections are dropped, so the next claim
                        // connects afresh (to the primary, when the URL lets it choose).
                        if !std::mem::replace(&mut read_only, true) {
                            tracing::error!("claim failed: {}", crate::db::server::READ_ONLY);
                        }
                        self.pool.retain(|_, _| false);
                    }
                    delay
                }
            };
            // An open circuit's probe is due: wake for it, whatever else waits.
            let wait = match self.dispatcher.next_probe() {
                Some(at) => wait.min(at.saturating_duration_since(tokio::time::Instant::now())),
                None => wait,
            };
            if wait.is_zero() {
                continue;
            }
            let mut deadline = tokio::time::Instant::now() + wait;
            if let Some(doze) = doze
                .as_mut()
                .filter(|_| wait >= ARM_AFTER && failures.is_clear())
            {
                let arm = if self.health.listening.load(Ordering::Acquire) {
                    doze.arm(deadline, &self.health, shutdown).await
                } else {
                    Arm::Unavailable
                };
                match arm {
                    Arm::Interrupted => continue,
                    Arm::Unavailable => {
                        deadline = deadline.min(tokio::time::Instant::now() + UNARMED_POLL)
                    }
                    Arm::Armed { woken } => {
                        // The last claim before sleeping: it sees every insert that did not
                        // notify (see `doze` for why).
                        let limit = self.capacity.available_permits().min(batch);
                        let claimed = self.run_once(limit, &mut cursor, tracker, tx, hard).await;
                        wake_tail();
                        if woken || limit == 0 || !matches!(claimed, Ok(c) if c.rows == 0) {
                            continue; // disarmed by the next round
                        }
                    }
                }
            }
            // Wait for a wake-up or the deadline, beating meanwhile (no query: idle stays idle).
            loop {
                tokio::select! {
                    _ = self.wake.notified() => break,
                    _ = tokio::time::sleep_until(deadline) => break,
                    _ = tokio::time::sleep(LOOP_BEAT) => self.health.beat(),
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    }

    /// Claims up to `limit` due rows in one short transaction and starts delivering them,
    /// moving `cursor` past what the claim looked at.
    pub async fn run_once(
        &self,
        limit: usize,
        cursor: &mut ClaimCursor,
        tracker: &TaskTracker,
        tx: &mpsc::Sender<Recorded>,
        hard: &CancellationToken,
    ) -> anyhow::Result<ClaimReport> {
        let token = Uuid::new_v4();
        let suspects_wanted = !self.suspect_in_flight.load(Ordering::Acquire);
        let claim = claims::Claim {
            limit,
            lease: self.cfg.lease,
            max_attempts: self.cfg.max_attempts,
            token,
            suspects_wanted,
            from: cursor.look_from(),
        };
        let claims::ClaimResult { look, rows } =
            claims::claim(&self.pool, &self.queries, &claim).await?;
        self.health.database.store(true, Ordering::Release);
        cursor.advance(&look, limit, suspects_wanted);
        let mut events: Vec<Claimed> = Vec::with_capacity(rows.len());
        let mut suspect = None;
        let claimed = rows.len();
        for row in rows {
            let id = row.id;
            if row.dead_lettered {
                crate::observe::metrics::dead_lettered();
                tracing::warn!(event_id = %id, "dead-lettered after its last lease lapsed (the relay holding it died or hung)");
                continue;
            }
            match row.event {
                Ok(ev) => {
                    if row.suspect {
                        tracing::warn!(event_id = %id, attempt = ev.attempt(), "delivering a suspect on its own: its lease lapsed twice in a row (does it crash or hang the relay?)");
                        suspect = Some(id.clone());
                    }
                    events.push(ev);
                }
                Err(e) => {
                    tracing::error!(event_id = %id, error = %e, "cannot read claimed row; it will come back when its lease lapses")
                }
            }
        }
        crate::observe::metrics::claimed(events.len() as u64);
        self.deliver(events, token, suspect, tracker, tx, hard)
            .await;
        Ok(ClaimReport {
            rows: claimed,
            left_fresh: !look.unclaimed.is_empty(),
        })
    }

    /// Starts delivering claimed `events` (claimed with `token`), oldest first, each in a task
    /// of its own holding a capacity permit; the outcome goes to the recorder. `suspect`:
    /// the id of the one delivered on its own (see [`SuspectAboard`]).
    async fn deliver(
        &self,
        mut events: Vec<Claimed>,
        token: Uuid,
        suspect: Option<String>,
        tracker: &TaskTracker,
        tx: &mpsc::Sender<Recorded>,
        hard: &CancellationToken,
    ) {
        // Oldest first, whatever order the UPDATE returned them in.
        events.sort_by_key(|e| e.event.created_us);
        for ev in events {
            let permit = match self.capacity.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => self
                    .capacity
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("never closed"),
            };
            self.inflight.insert(ev.event.id.clone(), token);
            let dispatcher = self.dispatcher.clone();
            let tx = tx.clone();
            let hard = hard.clone();
            let suspect = (suspect.as_ref() == Some(&ev.event.id))
                .then(|| SuspectAboard::board(self.suspect_in_flight.clone(), self.wake.clone()));
            tracker.spawn(async move {
                let crate::outcome::Delivery { outcome, log } =
                    dispatcher.deliver(&ev, &hard).await;
                log_outcome(&ev, &outcome);
                let rec = Recorded {
                    id: ev.event.id,
                    token,
                    outcome,
                    log,
                    permit,
                    suspect,
                };
                // The recorder lives until every sender is gone, so this cannot fail.
                let _ = tx.send(rec).await;
            });
        }
    }

    /// The circuits whose probe is due on this relay (see [`crate::sinks::breaker`]): tries
    /// for each one's probe slot, and when it wins, claims one held event owed to the
    /// endpoint and delivers it. The first send to the endpoint on this relay is the probe,
    /// this event or a newer one. A failed statement is tried again a second later.
    async fn probe_circuits(
        &self,
        tracker: &TaskTracker,
        tx: &mpsc::Sender<Recorded>,
        hard: &CancellationToken,
    ) {
        let now = tokio::time::Instant::now();
        for ep in self.dispatcher.endpoints() {
            let Some(config) = ep.breaker.config() else {
                continue;
            };
            if ep.breaker.next_probe().is_none_or(|at| at > now) {
                continue;
            }
            let probed = async {
                match circuit::probe_slot(&self.pool, &self.queries, &ep.name, config.cooldown)
                    .await?
                {
                    circuit::Slot::Won => {}
                    circuit::Slot::Later(d) => {
                        // Zero: another relay took the slot a moment ago (its new due time is
                        // not in this statement's snapshot); look again shortly.
                        let wait = if d.is_zero() {
                            PROBE_RACE
                        } else {
                            d + PROBE_MARGIN
                        };
                        ep.breaker.probe_at(Some(now + wait));
                        return anyhow::Ok(());
                    }
                    circuit::Slot::NotOpen => {
                        ep.breaker.probe_at(None);
                        return Ok(());
                    }
                }
                ep.breaker.arm(now);
                let token = Uuid::new_v4();
                let held =
                    circuit::held(&self.pool, &self.queries, &ep.name, PROBE_CANDIDATES).await?;
                for (id, event_type) in held {
                    if !event_type.as_deref().is_some_and(|t| ep.wants(t)) {
                        continue;
                    }
                    let claimed =
                        circuit::claim_held(&self.pool, &self.queries, &id, token, self.cfg.lease)
                            .await?;
                    if let Some(ev) = claimed {
                        tracing::info!(endpoint = %ep.name, event_id = %id, "circuit half-open: probing with a held event");
                        self.deliver(vec![ev], token, None, tracker, tx, hard).await;
                        return Ok(());
                    }
                }
                tracing::info!(endpoint = %ep.name, "circuit half-open: the next event for it is the probe");
                Ok(())
            };
            if let Err(e) = probed.await {
                tracing::debug!(endpoint = %ep.name, error = format!("{e:#}"), "circuit probe not started");
                ep.breaker.probe_at(Some(now + Duration::from_secs(1)));
            }
        }
    }

    /// How long until a retry falls due or a lease lapses (None: nothing waits).
    async fn next_due(&self, cursor: &mut ClaimCursor) -> anyhow::Result<Option<Duration>> {
        let leases = cursor.must_look_up_leases();
        let due = claims::next_due(&self.pool, &self.queries, cursor.lease_floor(), leases).await?;
        if leases {
            cursor.leases_looked_up(due.lapse, self.cfg.lease);
        }
        Ok([due.retry, cursor.next_lapse()].into_iter().flatten().min())
    }
}

/// The sweep below the claim cursor (see [`cursor`]), run as a task of its own so that the
/// claims go on meanwhile.
#[derive(Default)]
struct Sweep {
    /// The sweep in progress, which returns what it found and how long it took.
    running: Option<tokio::task::JoinHandle<anyhow::Result<(Swept, Duration)>>>,
    /// When the last sweep started.
    last: Option<tokio::time::Instant>,
    /// How long the last sweep that finished took: it spaces out the next.
    took: Duration,
}

impl Sweep {
    /// A claim failed: the database may have crashed or failed over, undoing claims the
    /// sweep exists to find, and the snapshot that made the last sweep slow may be gone with
    /// it. The next sweep runs at its period.
    fn database_failed(&mut self) {
        self.took = Duration::ZERO;
    }

    /// Called each claim round: hands a finished sweep's findings to the cursor, and starts
    /// the next one once `every` has passed since the last, or, after a slow sweep (one
    /// that walked the dead entries a snapshot held open keeps), twenty times what it took
    /// ([`background::spaced`]). Rows a sweep exists for (put back by an older release,
    /// claims a database crash undid) then wait longer to be found, never forever.
    fn round(&mut self, relay: &Relay, cursor: &mut ClaimCursor, every: Duration) {
        if self.running.as_ref().is_some_and(|h| h.is_finished()) {
            let done = self.running.take().expect("checked");
            match futures_util::FutureExt::now_or_never(done)
                .map(|r| r.map_err(anyhow::Error::from))
            {
                Some(Ok(Ok((Swept { strays, lapsed }, took)))) => {
                    self.took = took;
                    if !strays.is_empty() || lapsed.is_some() {
                        tracing::info!(
                            transactions = strays.len(),
                            lapsed_lease = lapsed.is_some(),
                            "the sweep found rows behind the claim cursor"
                        );
                    }
                    cursor.swept(&strays, lapsed);
                }
                Some(Ok(Err(e)) | Err(e)) => {
                    tracing::debug!(error = format!("{e:#}"), "sweep failed")
                }
                None => {}
            }
        }
        let due = self
            .last
            .is_none_or(|at| at.elapsed() >= background::spaced(every, self.took));
        let Some(((xid, seq), floor)) = cursor.sweep_bounds().filter(|_| due) else {
            return;
        };
        if self.running.is_some() {
            return;
        }
        self.last = Some(tokio::time::Instant::now());
        let (pool, queries, wake) = (
            relay.pool.clone(),
            relay.queries.clone(),
            relay.wake.clone(),
        );
        self.running = Some(tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let swept = claims::sweep(&pool, &queries, (xid, seq), floor).await?;
            let took = started.elapsed();
            let next = background::spaced(every, took);
            if next > every {
                tracing::debug!(
                    took_ms = took.as_millis() as u64,
                    next_in_s = next.as_secs(),
                    "slow sweep below the claim cursor (a snapshot held open?); spacing it out"
                );
            }
            if !swept.strays.is_empty() || swept.lapsed.is_some() {
                wake.notify_one(); // the claim loop takes the findings in its next round
            }
            Ok((swept, took))
        }));
    }
}

/// What a claim did.
#[derive(Debug, Clone, Copy)]
pub struct ClaimReport {
    /// Rows it updated (dead-lettered lapses included).
    pub rows: usize,
    /// It saw fresh rows it could not take (locked, held back, not due).
    pub left_fresh: bool,
}

/// "Delivery failed" lines at warn per second; a failing endpoint can fail thousands of
/// attempts a second, and the rest go to debug (see [`WarnBudget`]).
static FAILURE_WARNINGS: WarnBudget = WarnBudget::new(10);

/// Logs an outcome and counts it. Failures name the event, attempt, every failing endpoint
/// with its status or error (`name: HTTP 500: ...`), and when the next attempt is due.
fn log_outcome(ev: &Claimed, outcome: &crate::outcome::Outcome) {
    use crate::outcome::Outcome::*;
    let event_type = ev.event.event_type.as_deref().unwrap_or("<NULL>");
    match outcome {
        Completed { .. } => {
            let lag = chrono::Utc::now().timestamp_micros() - ev.event.created_us;
            crate::observe::metrics::completed(Duration::from_micros(lag.max(0) as u64));
            tracing::debug!(event_id = %ev.event.id, event_type, attempt = ev.attempt(), "delivered")
        }
        Retry { delay, error, .. } => {
            crate::observe::metrics::retried();
            let now = chrono::Utc::now();
            let next = now
                + chrono::Duration::from_std(*delay).unwrap_or_else(|_| chrono::Duration::zero());
            macro_rules! failed {
                ($level:ident $(, $extra:ident = $value:expr)?) => {
                    tracing::$level!(
                        event_id = %ev.event.id, event_type, attempt = ev.attempt(), %error,
                        retry_in = %humantime::format_duration(Duration::from_millis(delay.as_millis() as u64)),
                        next_attempt_at = %next.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
                        $($extra = $value,)?
                        "delivery failed; will retry"
                    )
                };
            }
            match FAILURE_WARNINGS.take(now.timestamp() as u64) {
                Some(0) => failed!(warn),
                Some(n) => failed!(warn, failures_logged_at_debug_since_last_warning = n),
                None => failed!(debug),
            }
        }
        Dead { error, .. } => {
            crate::observe::metrics::dead_lettered();
            tracing::error!(
                event_id = %ev.event.id, event_type, attempt = ev.attempt(), %error,
                "delivery failed for good; event is FAILED (dead letter)"
            )
        }
        Release { .. } => tracing::debug!(event_id = %ev.event.id, "released without an attempt"),
        Hold { .. } => tracing::debug!(event_id = %ev.event.id, "held for a paused endpoint"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLL: Duration = Duration::from_secs(5);
    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn contended_claims_retry_at_once_then_back_off_to_the_poll_interval() {
        let mut c = Contended::default();
        // Fresh rows left behind: at once, then 20, 40, 80 ms ... doubling up to the poll.
        let waits: Vec<Duration> = (0..12).map(|_| c.wait(true, Some(None), POLL)).collect();
        assert_eq!(
            waits[..5],
            [Duration::ZERO, 20 * MS, 40 * MS, 80 * MS, 160 * MS]
        );
        assert_eq!(waits[8], 2560 * MS);
        assert_eq!(waits[9..], [POLL, POLL, POLL]);
        // Many more in a row: the doubling stops (no overflow), the wait stays at the poll.
        for _ in 0..100 {
            assert_eq!(c.wait(true, Some(None), POLL), POLL);
        }
        // A due retry the claim could not take counts as contended too.
        let mut c = Contended::default();
        assert_eq!(
            c.wait(false, Some(Some(Duration::ZERO)), POLL),
            Duration::ZERO
        );
        assert_eq!(c.wait(false, Some(Some(Duration::ZERO)), POLL), 20 * MS);
    }

    #[test]
    fn an_uncontended_empty_claim_sleeps_until_the_next_due_row_or_the_poll() {
        let mut c = Contended::default();
        c.wait(true, Some(None), POLL);
        c.wait(true, Some(None), POLL);
        // A row due in 300 ms: that long, and the contention is over.
        assert_eq!(c.wait(false, Some(Some(300 * MS)), POLL), 300 * MS);
        assert_eq!(c, Contended(0));
        // Due later than the poll: the poll.
        assert_eq!(c.wait(false, Some(Some(60 * POLL)), POLL), POLL);
        // Nothing due, or the lookup failed (even with fresh rows left): the poll.
        assert_eq!(c.wait(false, Some(None), POLL), POLL);
        c.wait(true, Some(None), POLL);
        assert_eq!(c.wait(true, None, POLL), POLL);
        assert_eq!(c, Contended(0));
        // After the reset the next contended claim retries at once again.
        assert_eq!(c.wait(true, Some(None), POLL), Duration::ZERO);
    }
}
