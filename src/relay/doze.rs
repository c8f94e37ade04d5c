//! Sleeping without taxing the app's commits: the wake-up handshake.
//!
//! PostgreSQL serialises every committing transaction that sent a NOTIFY behind one
//! cluster-wide lock, so an insert trigger that always notifies caps the app's write rate.
//! A relay that is busy claiming needs no notification; only one that is about to sleep
//! does. So the insert trigger (`sql/004_notify_trigger.sql`) takes the table's wake lock
//! ([`crate::db::table::TableSettings::wake_lock`]) in *shared* mode with `pg_try_advisory_xact_lock_shared`
//! (in the trigger's `WHEN`, at the end of each inserting statement) and notifies only when
//! that fails; a relay going to sleep first takes the same lock
//! *exclusively* on a connection of its own ([`Doze::arm`]), then claims once more, and
//! sleeps holding it. The first wake-up makes it let go ([`Doze::disarm`]), so inserts stop
//! notifying as soon as a relay is awake.
//!
//! Why no interleaving loses a wake-up. Take an event inserted by transaction T, and a relay
//! R that goes to sleep: R requests the exclusive lock (request), is granted it (grant),
//! claims (final claim), sleeps. T's trigger runs `try shared` after T's insert (try), and T
//! commits later (commit). R's LISTEN is established before request (R arms only while its
//! listener reports LISTEN active; a reconnect wakes R, see [`crate::relay::listener`]).
//! - try before request, and it succeeded: T holds the shared lock until it ends, and grant
//!   cannot happen before T releases it. PostgreSQL makes a committed transaction visible
//!   before it releases its locks, so T's row is visible to the final claim, which takes it
//!   (or another relay already has).
//! - try after request: the lock is granted to R or R's request is waiting, and a try
//!   request that conflicts with a granted *or waiting* request fails (PostgreSQL does not
//!   let a new request jump a conflicting queue). So T notifies; the notification is
//!   delivered at commit, to every listener, and wakes R (and every other relay), whatever R
//!   is doing: a wake-up that arrives while R is not waiting is kept by the `Notify`.
//! - try before request but it failed: another relay held or awaited the lock; T notifies,
//!   as above.
//! - T rolls back: nothing to deliver, and a rolled-back NOTIFY is never sent.
//!
//! Several relays: only one holds the lock at a time; the others wait in its queue, and
//! their waiting requests alone make inserts notify. A notification wakes every relay; the
//! holder lets go, the next in the queue is granted, claims, and sleeps holding it. If the
//! lock's connection dies, the lock is gone with it, so the relay wakes and claims.
//!
//! Nothing here runs in poll-only mode (`listen = false`, e.g. behind a transaction-mode
//! pooler): nobody holds the lock, inserts never notify, and no session state is kept.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Statement};
use tokio_util::sync::CancellationToken;

use crate::db::queries::{WAKE_LOCK, WAKE_UNLOCK};
use crate::db::tls::Connector;
use crate::health::{Health, LOOP_BEAT};
use crate::observe::incident::Incident;
use crate::secret::Secret;

/// The lock connection's role in its application_name (`outbox-relay waker host/pid`).
pub const WAKER_ROLE: &str = "waker";
/// After a wake-up arrives while the lock is still being waited for, how long to keep
/// waiting: usually the holder is letting go (it was woken by the same notification) and the
/// grant follows at once. Past this, an inserting transaction is what holds the lock up (a
/// long app transaction), and the relay withdraws its request to go and claim.
const GRANT_GRACE: Duration = Duration::from_millis(50);
/// How long the lock connection may take to answer anything but the lock wait itself.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// How an attempt to arm ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Arm {
    /// The lock is held: every insert from now on notifies, and every insert that did not
    /// is visible to a claim started now. `woken`: a wake-up arrived while waiting (it was
    /// consumed; the caller must not sleep on the strength of an older plan).
    Armed { woken: bool },
    /// The deadline passed, a wake-up came and the lock did not follow, or shutdown: not
    /// armed; claim instead of sleeping.
    Interrupted,
    /// No lock connection (or no LISTEN): not armed, and inserts will not wake this relay;
    /// sleep only briefly.
    Unavailable,
}

/// One relay's side of the handshake: its lock connection and whether it holds the lock.
pub struct Doze {
    url: Secret,
    lock: (i32, i32),
    /// Woken when the lock connection ends: an armed relay's lock is gone with it.
    wake: Arc<Notify>,
    conn: Option<Conn>,
    armed: bool,
    /// Connection failures: one warning per outage, not per attempt.
    failing: Incident,
}

struct Conn {
    client: Client,
    /// For the cancel request, which goes over a connection of its own.
    tls: Connector,
    lock: Statement,
    unlock: Statement,
    closed: Arc<AtomicBool>,
}

impl Doze {
    /// `lock`: the table's wake lock; `wake`: the claim loop's wake-up.
    pub fn new(url: Secret, lock: (i32, i32), wake: Arc<Notify>) -> Self {
        Self {
            url,
            lock,
            wake,
            conn: None,
            armed: false,
            failing: Incident::new("wake lock connection"),
        }
    }

    /// Takes the wake lock exclusively, waiting out the inserting transactions that hold it
    /// shared (and any relay holding it asleep) until `until`. A wake-up meanwhile shortens
    /// the wait to [`GRANT_GRACE`]. See [`Arm`] for what the caller does next.
    /// The claim loop's heartbeat goes on meanwhile (a relay may wait behind another one
    /// asleep for as long as the poll interval).
    pub async fn arm(&mut self, until: Instant, health: &Health, stop: &CancellationToken) -> Arm {
        debug_assert!(!self.armed, "arm while armed");
        if !self.connected().await {
            return Arm::Unavailable;
        }
        let (answer, withdrawn, woken) = {
            let conn = self.conn.as_ref().expect("connected");
            let (class, key) = self.lock;
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&class, &key];
            let lock = conn.client.query_one(&conn.lock, &params);
            tokio::pin!(lock);
            let (mut until, mut woken) = (until, false);
            let answer = loop {
                tokio::select! {
                    r = &mut lock => break Some(r),
                    _ = self.wake.notified(), if !woken => {
                        woken = true;
                        until = until.min(Instant::now() + GRANT_GRACE);
                    }
                    _ = tokio::time::sleep_until(until) => break None,
                    _ = tokio::time::sleep(LOOP_BEAT) => health.beat(),
                    _ = stop.cancelled() => break None,
                }
            };
            let withdrawn = answer.is_none();
            let answer = match answer {
                Some(r) => Some(r),
                None => {
                    // Withdraw the request: a cancel goes over a connection of its own.
                    let cancel = conn.client.cancel_token();
                    let _ =
                        tokio::time::timeout(ANSWER_TIMEOUT, cancel.cancel_query(conn.tls.clone()))
                            .await;
                    tokio::time::timeout(ANSWER_TIMEOUT, &mut lock).await.ok()
                }
            };
            (answer.map(|r| r.map(drop)), withdrawn, woken)
        };
        match answer {
            Some(Ok(_)) if !withdrawn => {
                self.armed = true;
                Arm::Armed { woken }
            }
            Some(Ok(_)) => {
                // Granted before the cancel arrived. Close the connection rather than unlock
                // on it: the cancel may still hit whatever runs there next.
                self.close("lock granted as its request was withdrawn");
                Arm::Interrupted
            }
            Some(Err(e)) if withdrawn && e.code() == Some(&SqlState::QUERY_CANCELED) => {
                Arm::Interrupted
            }
            Some(Err(e)) => {
                self.close(&format!("wake lock failed: {e}"));
                Arm::Unavailable
            }
            None => {
                self.close("the lock connection did not answer a cancel");
                Arm::Unavailable
            }
        }
    }

    /// Lets go of the lock (if held): inserts stop notifying. A connection that cannot
    /// unlock is closed, which lets go just the same.
    pub async fn disarm(&mut self) {
        if !std::mem::take(&mut self.armed) {
            return;
        }
        let Some(conn) = &self.conn else { return };
        let unlock = conn.client.query_one(&conn.unlock, &[]);
        match tokio::time::timeout(ANSWER_TIMEOUT, unlock).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => self.close(&format!("wake unlock failed: {e}")),
            Err(_) => self.close("the lock connection did not answer an unlock"),
        }
    }

    /// A live lock connection, connecting when there is none.
    async fn connected(&mut self) -> bool {
        if let Some(c) = &self.conn {
            if !c.closed.load(Ordering::Acquire) {
                return true;
            }
            self.conn = None;
        }
        match self.connect().await {
            Ok(conn) => {
                self.failing.succeeded();
                self.conn = Some(conn);
                true
            }
            Err(e) => {
                crate::incident_failed!(
                    self.failing,
                    error = format!("{e:#}"),
                    "cannot open the wake lock connection: until it is back, the relay \
                     polls every second instead of sleeping until an insert wakes it"
                );
                false
            }
        }
    }

    async fn connect(&self) -> anyhow::Result<Conn> {
        let (mut cfg, tls) = crate::db::pg_config(&self.url)?;
        cfg.application_name(crate::db::application_name(WAKER_ROLE));
        let (client, connection) = cfg
            .connect(tls.clone())
            .await
            .map_err(|e| crate::db::connect_error(Some(&crate::db::servers(&cfg)), e))?;
        let closed = Arc::new(AtomicBool::new(false));
        tokio::spawn({
            let (closed, wake) = (closed.clone(), self.wake.clone());
            async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "wake lock connection closed");
                }
                closed.store(true, Ordering::Release);
                // If the relay sleeps armed, its lock just went away: wake it to claim.
                wake.notify_one();
            }
        });
        let prepare = async {
            // Idle while it sleeps armed, for up to the poll interval.
            crate::db::server::keep_idle_session(&client).await?;
            let lock = client.prepare(WAKE_LOCK).await?;
            let unlock = client.prepare(WAKE_UNLOCK).await?;
            anyhow::Ok((lock, unlock))
        };
        let (lock, unlock) = tokio::time::timeout(ANSWER_TIMEOUT, prepare)
            .await
            .map_err(|_| anyhow::anyhow!("the database did not answer in {ANSWER_TIMEOUT:?}"))??;
        Ok(Conn {
            client,
            tls,
            lock,
            unlock,
            closed,
        })
    }

    /// Drops the connection (the server then releases its lock).
    fn close(&mut self, why: &str) {
        tracing::debug!(why, "closing the wake lock connection");
        self.conn = None;
        self.armed = false;
    }
}
