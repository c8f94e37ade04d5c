//! The daemon: claim due rows, deliver them, record the outcomes. This file starts a relay
//! (waiting for the database and the table) and drains it at shutdown; the claim loop is in
//! [`claim`], outcome writes in [`recorder`], leases in [`leases`], LISTEN in [`listener`].
//!
//! Tasks and who stops them:
//! - the claim loop ([`Relay::run`]) wakes on NOTIFY, a due retry or lapsed lease, freed
//!   capacity, or the poll tick, and calls [`Relay::run_once`]; it stops on `shutdown`;
//! - one delivery task per claimed event (in a `TaskTracker`), holding a capacity permit;
//!   they finish on their own, or on `hard` once the shutdown grace runs out;
//! - the recorder ([`recorder::run`]) ends when the last delivery task drops its sender;
//! - the lease keeper and the listener stop on `stop_background`, after the recorder.

pub mod claim;
pub mod cursor;
pub mod doze;
pub mod leases;
pub mod listener;
pub mod recorder;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::background;
use crate::backoff::Backoff;
use crate::config::Config;
use crate::db::queries::Queries;
use crate::db::{privileges, shape};
use crate::health::{Health, Shared};
use crate::observe::activity::Timeline;
use crate::sinks::sse::Hub;
use crate::sinks::Dispatcher;
use leases::InFlight;
use recorder::Recorded;

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
    let channel = cfg.table_settings().channel();
    while let Err(e) =
        crate::sinks::pause::load(&pool, &queries, &channel, &shared.dispatcher).await
    {
        tracing::warn!(error = format!("{e:#}"), "cannot read the paused endpoints; retrying (run `outbox-relay migrate` if the table is missing)");
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
    }
    // Rows held for an endpoint that is no longer paused (or no longer configured) would
    // otherwise wait for a resume that never comes; those still owed to a paused endpoint
    // are held again when claimed.
    let configured: Vec<&str> = shared
        .dispatcher
        .endpoints()
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    match crate::sinks::pause::release_stale(
        crate::db::admin::On::Pool(&pool),
        &queries,
        &configured,
    )
    .await
    {
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
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
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
                let wait = backoff.failed();
                tracing::warn!(error = format!("{e:#}"), retry_in = ?wait, "relay not started yet");
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
        let window: usize = cfg
            .sinks()
            .iter()
            .map(|s| s.max_in_flight * (1 + crate::sinks::endpoint::QUEUE_PER_SLOT))
            .sum();
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
        // A sink that cannot start (a broker unreachable past the grace, a missing stream)
        // stops the relay before it claims anything.
        tokio::select! {
            started = self.dispatcher.start(self.cfg.start_grace) => started?,
            _ = shutdown.cancelled() => return Ok(()),
        }
        if self.cfg.sinks().is_empty() {
            tracing::warn!(
                "no sink configured ([[webhook]], [[nats]], [[redis]], [[rabbitmq]]): events are \
                 marked COMPLETED without delivery"
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
        let (announcer, rounds) = background::channel();

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
        let leases = tokio::spawn(leases::keep_leases(
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
            tokio::spawn(background::run(
                background::retention::Retention {
                    pool: self.pool.clone(),
                    queries: self.queries.clone(),
                    keep,
                },
                rounds.clone(),
                None,
                stop_background.clone(),
            ))
        });
        let summary = tokio::spawn(crate::observe::metrics::summarize(stop_background.clone()));
        let (circuit_changes, changes) = mpsc::unbounded_channel();
        for e in self.dispatcher.endpoints() {
            e.breaker.report_to(circuit_changes.clone());
        }
        let breakers = tokio::spawn(crate::sinks::breaker::run(
            self.pool.clone(),
            self.queries.clone(),
            self.cfg.table_settings().channel(),
            self.dispatcher.clone(),
            changes,
            stop_background.clone(),
        ));
        let rates = crate::db::rates::Rates::new(&self.cfg.table_settings());
        let limiters: Vec<_> = self
            .dispatcher
            .endpoints()
            .iter()
            .filter(|e| e.limiter().is_some())
            .map(|e| {
                tokio::spawn(crate::sinks::limiter::run(
                    self.pool.clone(),
                    rates.clone(),
                    e.clone(),
                    stop_background.clone(),
                ))
            })
            .collect();
        let endpoints_changed = Arc::new(Notify::new());
        let paused = tokio::spawn(background::run(
            crate::sinks::pause::PausedSet {
                pool: self.pool.clone(),
                queries: self.queries.clone(),
                channel: self.cfg.table_settings().channel(),
                dispatcher: self.dispatcher.clone(),
            },
            rounds.clone(),
            Some(endpoints_changed.clone()),
            stop_background.clone(),
        ));
        let reporter = crate::observe::cluster::Reporter::new(
            self.pool.clone(),
            crate::db::cluster::ClusterSql::new(&self.cfg.table_settings()),
            self.dispatcher.clone(),
            self.timeline.clone(),
            crate::db::instance().to_owned(),
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            self.cfg.poll_interval,
        );
        let reporting = tokio::spawn(background::run(
            reporter.clone(),
            rounds.clone(),
            None,
            stop_background.clone(),
        ));
        let housekeeping = tokio::spawn(background::run(
            background::housekeeping::Housekeeping {
                pool: self.pool.clone(),
                queries: self.queries.clone(),
                every: self.cfg.poll_interval,
                warn_after: self.cfg.long_transaction_warning,
            },
            rounds,
            None,
            stop_background.clone(),
        ));
        let listener = self.cfg.listen.then(|| {
            tokio::spawn(listener::run(
                self.cfg.database_url.get().clone(),
                self.cfg.table_settings().channel(),
                wakers,
                endpoints_changed,
                self.health.clone(),
                stop_background.clone(),
            ))
        });
        tracing::info!(
            table = %self.queries.table,
            sinks = %self.cfg.sink_summary(),
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
        // Every delivery is over: the sinks may close their connections.
        self.dispatcher.close().await;
        stop_background.cancel();
        let _ = leases.await;
        for task in [
            listener,
            tail,
            retention,
            Some(summary),
            Some(housekeeping),
            Some(reporting),
            Some(paused),
            Some(breakers),
        ]
        .into_iter()
        .flatten()
        .chain(limiters)
        {
            let _ = task.await;
        }
        // The last seconds counted, and "stopped" rather than "gone" on the dashboards.
        match tokio::time::timeout(Duration::from_secs(5), reporter.report(true)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = format!("{e:#}"), "no final cluster report"),
            Err(_) => tracing::debug!("no final cluster report: the database took over 5 s"),
        }
        tracing::info!("relay stopped");
        Ok(())
    }
}
