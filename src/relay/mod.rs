//! The daemon: claim due rows, deliver them, record the outcomes.
//!
//! Tasks and who stops them:
//! - the claim loop ([`Relay::run`]) wakes on NOTIFY, a due retry or lapsed lease, freed
//!   capacity, or the poll tick, and calls [`Relay::run_once`]; it stops on `shutdown`;
//! - one delivery task per claimed event (in a `TaskTracker`), holding a capacity permit;
//!   they finish on their own, or on `hard` once the shutdown grace runs out;
//! - the recorder ([`recorder::run`]) ends when the last delivery task drops its sender;
//! - the lease keeper and the listener stop on `stop_background`, after the recorder.

pub mod cursor;
pub mod doze;
pub mod listener;
pub mod recorder;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::config::Config;
use crate::db::claims::{self, Swept};
use crate::db::queries::Queries;
use crate::db::{privileges, shape};
use crate::event::ClaimedEvent;
use crate::health::{Health, Shared, LOOP_BEAT};
use crate::observe::activity::Timeline;
use crate::observe::incident::Incident;
use crate::observe::warn_budget::WarnBudget;
use crate::sinks::sse::Hub;
use crate::sinks::Dispatcher;
use cursor::ClaimCursor;
use doze::{Arm, Doze};
use recorder::{InFlight, Recorded, SuspectAboard};

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

/// A running relay's shared state.
pub struct Relay {
    cfg: Config,
    pool: Pool,
    queries: Arc<Queries>,
    dispatcher: Arc<Dispatcher>,
    inflight: Arc<InFlight>,
    /// Notified by the listener (NOTIFY), the recorder (a retry was scheduled) and CLI-like
    /// callers; a notification while the loop is busy is kept and wakes it right after.
    wake: Arc<Notify>,
    /// The in-flight window: one permit per claimed, unrecorded event.
    capacity: Arc<Semaphore>,
    capacity_total: usize,
    capacity_freed: Arc<Notify>,
    health: Arc<Health>,
    /// The SSE fan-out, fed by a tail reader this relay runs (None: SSE disabled).
    hub: Option<Arc<Hub>>,
    timeline: Arc<Timeline>,
    /// A suspect (a row that lapsed twice in a row, see the claim query) is aboard; no
    /// second one is claimed until its outcome is written (see [`SuspectAboard`]).
    suspect_in_flight: Arc<AtomicBool>,
}

/// Runs the daemon until `shutdown` is cancelled, then drains: in-flight deliveries get
/// `shutdown_timeout` to finish, the rest are released to PENDING. Returns Ok after a clean
/// drain. Keeps retrying while the database is unreachable.
/// With a hub in `shared`, it also runs the SSE tail reader feeding it.
pub async fn run(
    cfg: Config,
    pool: Pool,
    shutdown: CancellationToken,
    shared: Arc<Shared>,
) -> anyhow::Result<()> {
    let Some(queries) = wait_for_table(&cfg, &pool, &shared.health, &shutdown).await? else {
        return Ok(());
    };
    let queries = Arc::new(queries);
    let _ = shared.queries.set(queries.clone());
    // Before the first claim: a relay that does not know an endpoint is paused would send.
    while let Err(e) = crate::sinks::pause::load(&pool, &queries, &shared.dispatcher).await {
        tracing::warn!(error = format!("{e:#}"), "cannot read the paused endpoints; retrying (run `outbox-relay migrate` if the table is missing)");
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
    }
    // Rows held for an endpoint that is no longer paused (or no longer configured) would
    // otherwise wait for a resume that never comes; those still owed to a paused endpoint
    // are held again when claimed.
    match crate::sinks::pause::release_held(&pool, &queries).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(released = n, "held events released at start"),
        Err(e) => tracing::warn!(error = format!("{e:#}"), "cannot release held events"),
    }
    let relay = Arc::new(Relay::new(cfg, pool, queries, &shared));
    relay.run(shutdown).await
}

/// How often a relay that reached a read-only server (a standby) asks again whether it is
/// writable (promoted): one cheap query, logged at debug.
const READ_ONLY_RETRY: Duration = Duration::from_secs(2);

/// Connects and reads the table's shape, retrying with backoff while the database is down
/// or the table is not migrated yet, and quietly while the server is read-only (a standby:
/// one error line, then a check every [`READ_ONLY_RETRY`] until it is promoted). None if
/// shut down meanwhile. A privilege the role lacks is an error
/// ([`crate::db::privileges::MissingPrivileges`]): the daemon exits with one line naming it
/// and its GRANT, rather than retrying what only a DBA can fix.
async fn wait_for_table(
    cfg: &Config,
    pool: &Pool,
    health: &Health,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Queries>> {
    let settings = cfg.table_settings();
    let table = settings.qualified_table();
    let servers = crate::db::servers_of(cfg.database_url.get());
    let mut delay = Duration::from_millis(200);
    let mut read_only_reported = false;
    loop {
        let attempt = async {
            let client = crate::db::get_from(pool, Some(&servers)).await?;
            privileges::check(&client, &settings, privileges::Use::Run).await?;
            let shape = shape::inspect(&client, &table).await?;
            if crate::db::server::read_only(&client).await? {
                return Ok(None);
            }
            crate::db::migrate::warn_missing_indexes(&client, &settings).await;
            anyhow::Ok(Some(shape))
        };
        let wait = match attempt.await {
            Ok(Some(shape)) => {
                health.database.store(true, Ordering::Release);
                if read_only_reported {
                    tracing::info!("the database is writable now (the standby was promoted?)");
                }
                tracing::info!(table = %table, id_type = shape.id_type, status_type = %shape.status_type, "outbox table found");
                if let Some(caveat) = shape.created_at_caveat() {
                    tracing::warn!(table = %table, column = "created_at", "{caveat}");
                }
                return Ok(Some(Queries::for_table(&settings, &shape)));
            }
            Ok(None) => {
                // Not ready: nothing can be claimed there.
                health.database.store(false, Ordering::Release);
                if !std::mem::replace(&mut read_only_reported, true) {
                    tracing::error!(retry_every = ?READ_ONLY_RETRY, "{}", crate::db::server::READ_ONLY);
                } else {
                    tracing::debug!("the database is still read-only");
                }
                READ_ONLY_RETRY
            }
            Err(e) if privileges::is_missing(&e) => return Err(e),
            Err(e) => {
                health.database.store(false, Ordering::Release);
                tracing::warn!(error = format!("{e:#}"), retry_in = ?delay, "relay not started yet");
                let wait = delay;
                delay = (delay * 2).min(Duration::from_secs(10));
                wait
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return Ok(None),
        }
    }
}

impl Relay {
    pub fn new(cfg: Config, pool: Pool, queries: Arc<Queries>, shared: &Shared) -> Self {
        // Room for each endpoint's in-flight requests plus as many queued behind them, so a
        // saturated endpoint never takes the whole window from the healthy ones.
        let per_endpoint = |w: &crate::config::WebhookConfig| {
            w.max_in_flight * (1 + crate::sinks::webhook::QUEUE_PER_SLOT)
        };
        let window: usize = cfg.webhooks.iter().map(per_endpoint).sum();
        let capacity_total = window.max(cfg.batch_size as usize);
        Self {
            cfg,
            pool,
            queries,
            dispatcher: shared.dispatcher.clone(),
            inflight: Arc::default(),
            wake: shared.wake.clone(),
            capacity: Arc::new(Semaphore::new(capacity_total)),
            capacity_total,
            capacity_freed: Arc::default(),
            health: shared.health.clone(),
            hub: shared.hub.clone(),
            timeline: shared.timeline.clone(),
            suspect_in_flight: Arc::default(),
        }
    }

    /// The claim loop and its helpers, until `shutdown`; then the drain.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) -> anyhow::Result<()> {
        if self.cfg.webhooks.is_empty() {
            tracing::warn!(
                "no [[webhook]] configured: events are marked COMPLETED without delivery"
            );
        } else if self.cfg.egress.deny_private_addresses {
            let allowed: Vec<String> = self
                .cfg
                .egress
                .allow_networks
                .iter()
                .map(ToString::to_string)
                .collect();
            tracing::info!(
                allow_networks = allowed.join(","),
                "egress policy: webhook requests may not connect to private or special-purpose addresses"
            );
        } else {
            tracing::info!("egress policy: webhook requests may connect to any address, private ones included (egress.deny_private_addresses is off)");
        }
        let hard = CancellationToken::new();
        let stop_background = CancellationToken::new();
        let give_up = CancellationToken::new();
        let tracker = TaskTracker::new();
        let (tx, rx) = mpsc::channel::<Recorded>(self.capacity_total);
        let (announcer, rounds) = crate::background::channel();

        let recorder = tokio::spawn(recorder::run(
            self.pool.clone(),
            self.queries.clone(),
            self.inflight.clone(),
            recorder::Signals {
                wake: self.wake.clone(),
                capacity_freed: self.capacity_freed.clone(),
                wake_on_completion: !self.cfg.ordered_types().is_empty(),
                timeline: self.timeline.clone(),
            },
            rx,
            give_up.clone(),
        ));
        let leases = tokio::spawn(recorder::keep_leases(
            self.pool.clone(),
            self.queries.clone(),
            self.inflight.clone(),
            self.cfg.lease,
            stop_background.clone(),
        ));
        let mut wakers = vec![self.wake.clone()];
        let tail_wake = self.hub.is_some().then(|| Arc::new(Notify::new()));
        let tail = self.hub.clone().zip(tail_wake.clone()).map(|(hub, wake)| {
            wakers.push(wake.clone());
            tokio::spawn(crate::sinks::sse::tail::run(
                self.pool.clone(),
                crate::sinks::sse::read::Reader::new(&self.cfg),
                hub,
                wake,
                rounds.clone(),
                self.cfg.poll_interval,
                stop_background.clone(),
            ))
        });
        let retention = self.cfg.retention.map(|keep| {
            tokio::spawn(crate::background::retention::run(
                self.pool.clone(),
                self.queries.clone(),
                keep,
                rounds.clone(),
                stop_background.clone(),
            ))
        });
        let summary = tokio::spawn(crate::observe::metrics::summarize(stop_background.clone()));
        let endpoints_changed = Arc::new(Notify::new());
        let paused = tokio::spawn(crate::sinks::pause::watch(
            self.pool.clone(),
            self.queries.clone(),
            self.dispatcher.clone(),
            endpoints_changed.clone(),
            rounds.clone(),
            stop_background.clone(),
        ));
        let housekeeping = tokio::spawn(crate::background::housekeeping::run(
            self.pool.clone(),
            self.queries.clone(),
            self.cfg.poll_interval,
            self.cfg.long_transaction_warning,
            rounds,
            stop_background.clone(),
        ));
        let listener = self.cfg.listen.then(|| {
            tokio::spawn(listener::run(
                self.cfg.database_url.get().clone(),
                crate::db::migrate::channel(&self.cfg.table_settings()),
                wakers,
                endpoints_changed,
                self.health.clone(),
                stop_background.clone(),
            ))
        });
        tracing::info!(
            table = %self.queries.table,
            webhooks = self.cfg.webhooks.len(),
            window = self.capacity_total,
            listen = self.cfg.listen,
            "relay running"
        );

        self.claim_loop(
            &shutdown,
            &tracker,
            &tx,
            &hard,
            &announcer,
            tail_wake.as_deref(),
        )
        .await;

        // Drain: stop claiming (done), let deliveries finish, then cut them off.
        let in_flight = self.inflight.len();
        tracing::info!(in_flight, grace = ?self.cfg.shutdown_timeout, "shutting down: finishing in-flight deliveries");
        tracker.close();
        drop(tx);
        if tokio::time::timeout(self.cfg.shutdown_timeout, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "shutdown grace ran out: cancelling the deliveries still running and releasing them"
            );
            hard.cancel();
            tracker.wait().await;
        }
        // The recorder drains what the tasks sent; give it a bounded time against a dead
        // database, after which unrecorded rows fall back to their leases.
        let recorder_grace = Duration::from_secs(10);
        let mut recorder = recorder;
        if tokio::time::timeout(recorder_grace, &mut recorder)
            .await
            .is_err()
        {
            give_up.cancel();
            let _ = recorder.await;
        }
        stop_background.cancel();
        let _ = leases.await;
        for task in [
            listener,
            tail,
            retention,
            Some(summary),
            Some(housekeeping),
            Some(paused),
        ]
        .into_iter()
        .flatten()
        {
            let _ = task.await;
        }
        tracing::info!("relay stopped");
        Ok(())
    }

    async fn claim_loop(
        &self,
        shutdown: &CancellationToken,
        tracker: &TaskTracker,
        tx: &mpsc::Sender<Recorded>,
        hard: &CancellationToken,
        announcer: &crate::background::Announcer,
        tail_wake: Option<&Notify>,
    ) {
        let poll = self.cfg.poll_interval;
        let batch = self.cfg.batch_size as usize;
        // Claim in chunks worth a transaction: under a backlog, wait until half the window
        // is free rather than claim one row per freed slot.
        let worth_claiming = batch.min(self.capacity_total / 2).max(1);
        let mut failures: u32 = 0;
        let mut contended: u32 = 0;
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
                crate::db::migrate::wake_lock(&self.cfg.table_settings()),
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
                    (failures, contended) = (0, 0);
                    if claimed.rows >= LINGER_MIN_ROWS {
                        last_found = tokio::time::Instant::now();
                    }
                    continue;
                }
                // Rows were found a moment ago: more are likely on their way. Look again
                // shortly instead of going to sleep, whose handshake waits for the inserts in
                // flight (a commit's time) before the last claim can see them.
                Ok(_) if last_found.elapsed() < LINGER => {
                    failures = 0;
                    LINGER_STEP
                }
                Ok(claimed) => {
                    failures = 0;
                    match self.next_due(&mut cursor).await {
                        // Rows are there but this claim could not take them: locked by
                        // another relay's claim, or held back behind an earlier event of their
                        // entity (fresh rows it left, retries that are due).
                        Ok(due)
                            if claimed.left_fresh || due.is_some_and(|d| d <= Duration::ZERO) =>
                        {
                            // The first time, claim again at once: the row may simply have
                            // committed between the claim and this look (and, this relay
                            // being awake, it sent no NOTIFY).
                            contended = (contended + 1).min(17);
                            match contended {
                                1 => Duration::ZERO,
                                n => (CONTENDED_PAUSE * 2u32.pow(n - 2)).min(poll),
                            }
                        }
                        Ok(Some(due)) => {
                            contended = 0;
                            due.min(poll)
                        }
                        Ok(None) | Err(_) => {
                            contended = 0;
                            poll
                        }
                    }
                }
                Err(e) => {
                    failures += 1;
                    self.health.database.store(false, Ordering::Release);
                    let delay = Duration::from_millis(100 * 2u64.pow(failures.min(7))).min(poll);
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
            if wait.is_zero() {
                continue;
            }
            let mut deadline = tokio::time::Instant::now() + wait;
            if let Some(doze) = doze.as_mut().filter(|_| wait >= ARM_AFTER && failures == 0) {
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
    ) -> anyhow::Result<Claimed> {
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
        let claims::Claimed { look, rows } =
            claims::claim(&self.pool, &self.queries, &claim).await?;
        self.health.database.store(true, Ordering::Release);
        cursor.advance(&look, limit, suspects_wanted);
        let mut events = Vec::with_capacity(rows.len());
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
        // Oldest first, whatever order the UPDATE returned them in.
        events.sort_by_key(|e| e.created_us);
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
            self.inflight.insert(ev.id.clone(), token);
            let dispatcher = self.dispatcher.clone();
            let tx = tx.clone();
            let hard = hard.clone();
            let suspect = (suspect.as_ref() == Some(&ev.id))
                .then(|| SuspectAboard::board(self.suspect_in_flight.clone(), self.wake.clone()));
            tracker.spawn(async move {
                let crate::sinks::Delivery { outcome, log } = dispatcher.deliver(&ev, &hard).await;
                log_outcome(&ev, &outcome);
                let rec = Recorded {
                    id: ev.id,
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
        Ok(Claimed {
            rows: claimed,
            left_fresh: !look.unclaimed.is_empty(),
        })
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
    running: Option<tokio::task::JoinHandle<anyhow::Result<Swept>>>,
    last: Option<tokio::time::Instant>,
}

impl Sweep {
    /// Called each claim round: hands a finished sweep's findings to the cursor, and starts
    /// the next one once `every` has passed since the last.
    fn round(&mut self, relay: &Relay, cursor: &mut ClaimCursor, every: Duration) {
        if self.running.as_ref().is_some_and(|h| h.is_finished()) {
            let done = self.running.take().expect("checked");
            match futures_util::FutureExt::now_or_never(done)
                .map(|r| r.map_err(anyhow::Error::from))
            {
                Some(Ok(Ok(Swept { strays, lapsed }))) => {
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
        let due = self.last.is_none_or(|at| at.elapsed() >= every);
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
            let swept = claims::sweep(&pool, &queries, (xid, seq), floor).await?;
            if !swept.strays.is_empty() || swept.lapsed.is_some() {
                wake.notify_one(); // the claim loop takes the findings in its next round
            }
            Ok(swept)
        }));
    }
}

/// What a claim did.
#[derive(Debug, Clone, Copy)]
pub struct Claimed {
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
fn log_outcome(ev: &ClaimedEvent, outcome: &crate::sinks::Outcome) {
    use crate::sinks::Outcome::*;
    let event_type = ev.event_type.as_deref().unwrap_or("<NULL>");
    match outcome {
        Completed { .. } => {
            let lag = chrono::Utc::now().timestamp_micros() - ev.created_us;
            crate::observe::metrics::completed(Duration::from_micros(lag.max(0) as u64));
            tracing::debug!(event_id = %ev.id, event_type, attempt = ev.attempt(), "delivered")
        }
        Retry { delay, error, .. } => {
            crate::observe::metrics::retried();
            let now = chrono::Utc::now();
            let next = now
                + chrono::Duration::from_std(*delay).unwrap_or_else(|_| chrono::Duration::zero());
            macro_rules! failed {
                ($level:ident $(, $extra:ident = $value:expr)?) => {
                    tracing::$level!(
                        event_id = %ev.id, event_type, attempt = ev.attempt(), %error,
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
                event_id = %ev.id, event_type, attempt = ev.attempt(), %error,
                "delivery failed for good; event is FAILED (dead letter)"
            )
        }
        Release { .. } => tracing::debug!(event_id = %ev.id, "released without an attempt"),
        Hold { .. } => tracing::debug!(event_id = %ev.id, "held for a paused endpoint"),
    }
}
