//! systemd integration for a `Type=notify` unit: readiness, status lines and the watchdog.
//!
//! Nothing happens unless the service manager set `NOTIFY_SOCKET`. Then one task, started by
//! [`crate::daemon::Daemon::start`] and ended by its shutdown token, polls [`Health`] (a few
//! atomics) and:
//! - sends `STATUS=` whenever what the relay waits for changes, and `READY=1` once, when the
//!   database answers and LISTEN is active ([`Health::ready`]);
//! - until then, pushes the start deadline ahead (`EXTEND_TIMEOUT_USEC`), so a database that
//!   is down at boot leaves the unit "activating" rather than failing it after
//!   `TimeoutStartSec=`; a hung process stops extending and is killed as usual;
//! - with `WatchdogSec=` (`WATCHDOG_USEC`), sends `WATCHDOG=1` every half interval, but only
//!   while the claim loop is alive ([`loop_alive`]): a wedged loop starves the watchdog and
//!   systemd kills and restarts the relay;
//! - on shutdown, sends `STOPPING=1` and ends. systemd stops enforcing the watchdog from
//!   then on; `TimeoutStopSec=` bounds the drain.

use std::future::pending;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::time::{interval, Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::health::{Health, LOOP_BEAT};

/// How often the task looks at [`Health`]: READY follows readiness within this.
const CHECK_EVERY: Duration = Duration::from_millis(250);
/// Before READY, the start deadline is moved this far ahead...
const EXTEND_BY: Duration = Duration::from_secs(30);
/// ...this often, so it never runs out while the process is alive.
const EXTEND_EVERY: Duration = Duration::from_secs(10);

/// Starts the notification task if `NOTIFY_SOCKET` is set; it ends when `shutdown` is
/// cancelled, after sending `STOPPING=1` (await it before exiting, or that may be lost).
/// `listen`: LISTEN is part of readiness.
pub fn spawn(
    health: Arc<Health>,
    listen: bool,
    shutdown: CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    std::env::var_os("NOTIFY_SOCKET")?;
    // None unless WATCHDOG_USEC is set (and WATCHDOG_PID, when set, is this process).
    let watchdog = sd_notify::watchdog_enabled();
    if let Some(w) = watchdog {
        tracing::info!(interval = ?w, ping_every = ?w / 2, stall_limit = ?stall_limit(w), "systemd watchdog enabled");
        if w / 2 < 2 * LOOP_BEAT {
            tracing::warn!(
                "WatchdogSec={w:?} is shorter than four claim-loop beats ({LOOP_BEAT:?} each): \
                 a stalled loop is only noticed after {:?}",
                stall_limit(w)
            );
        }
    }
    Some(tokio::spawn(run(health, listen, watchdog, shutdown)))
}

/// What the relay is doing, as `systemctl status` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    WaitingForDatabase,
    WaitingForListen,
    Running,
    DatabaseLost,
    ListenLost,
}

impl Phase {
    /// `database`, `listening`: the [`Health`] flags; `listen`: LISTEN is required;
    /// `was_ready`: READY=1 has been sent.
    fn of(database: bool, listening: bool, listen: bool, was_ready: bool) -> Self {
        match (database, !listen || listening, was_ready) {
            (true, true, _) => Phase::Running,
            (false, _, false) => Phase::WaitingForDatabase,
            (true, false, false) => Phase::WaitingForListen,
            (false, _, true) => Phase::DatabaseLost,
            (true, false, true) => Phase::ListenLost,
        }
    }

    fn status(self) -> &'static str {
        match self {
            Phase::WaitingForDatabase => "waiting for the database and the outbox table",
            Phase::WaitingForListen => "database up; waiting for the LISTEN connection",
            Phase::Running => "relaying events",
            Phase::DatabaseLost => "database unreachable: retrying",
            Phase::ListenLost => "LISTEN connection lost: reconnecting, polling meanwhile",
        }
    }
}

/// How long the claim loop may go without a beat before the watchdog stops being fed: half
/// the interval, but never less than two [`LOOP_BEAT`]s, so an idle, healthy loop (one beat
/// per [`LOOP_BEAT`]) is never mistaken for a wedged one under a short `WatchdogSec=`.
pub fn stall_limit(watchdog: Duration) -> Duration {
    (watchdog / 2).max(2 * LOOP_BEAT)
}

/// Whether the claim loop counts as alive for the watchdog. `since_beat` None: the loop has
/// not started (the relay is still waiting for the database, which is no wedge).
pub fn loop_alive(since_beat: Option<Duration>, watchdog: Duration) -> bool {
    since_beat.is_none_or(|d| d < stall_limit(watchdog))
}

/// Sends notifications; says so once if the socket does not take them.
#[derive(Default)]
struct Notifier {
    failed: bool,
}

impl Notifier {
    fn send(&mut self, states: &[NotifyState]) {
        match sd_notify::notify(states) {
            Ok(()) => self.failed = false,
            Err(e) if !self.failed => {
                self.failed = true;
                tracing::warn!(error = %e, "cannot notify systemd (NOTIFY_SOCKET)");
            }
            Err(e) => tracing::debug!(error = %e, "cannot notify systemd (NOTIFY_SOCKET)"),
        }
    }
}

/// The task: see the module documentation.
async fn run(
    health: Arc<Health>,
    listen: bool,
    watchdog: Option<Duration>,
    shutdown: CancellationToken,
) {
    let mut notifier = Notifier::default();
    let mut check = ticker(CHECK_EVERY);
    let mut extend = ticker(EXTEND_EVERY);
    let mut ping = watchdog.map(|w| ticker(w / 2));
    let mut shown: Option<Phase> = None;
    let mut ready_sent = false;
    let mut starving = false;
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                notifier.send(&[
                    NotifyState::Stopping,
                    NotifyState::Status("stopping: finishing in-flight deliveries"),
                ]);
                return;
            }
            _ = check.tick() => {
                let phase = Phase::of(
                    health.database_up(),
                    health.listening.load(Ordering::Acquire),
                    listen,
                    ready_sent,
                );
                if shown == Some(phase) {
                    continue;
                }
                shown = Some(phase);
                if phase == Phase::Running && !ready_sent {
                    ready_sent = true;
                    tracing::info!("ready: notifying systemd");
                    notifier.send(&[NotifyState::Ready, NotifyState::Status(phase.status())]);
                } else if !starving {
                    notifier.send(&[NotifyState::Status(phase.status())]);
                }
            }
            _ = extend.tick(), if !ready_sent => {
                notifier.send(&[NotifyState::ExtendTimeoutUsec(EXTEND_BY.as_micros() as u32)]);
            }
            _ = tick(&mut ping) => {
                let w = watchdog.expect("ping is only set with a watchdog");
                let since = health.since_beat();
                if loop_alive(since, w) {
                    notifier.send(&[NotifyState::Watchdog]);
                    if starving {
                        starving = false;
                        shown = None; // show the phase again
                        tracing::info!("claim loop going round again: feeding the systemd watchdog");
                    }
                } else if !starving {
                    starving = true;
                    let since = since.unwrap_or_default();
                    tracing::error!(since_beat = ?since, "claim loop stalled: no longer feeding the systemd watchdog");
                    let status = format!(
                        "claim loop stalled for {}s: watchdog not fed",
                        since.as_secs()
                    );
                    notifier.send(&[NotifyState::Status(&status)]);
                }
            }
        }
    }
}

fn ticker(every: Duration) -> Interval {
    let mut i = interval(every);
    i.set_missed_tick_behavior(MissedTickBehavior::Delay);
    i
}

/// The next tick of an optional interval; never, without one.
async fn tick(i: &mut Option<Interval>) {
    match i {
        Some(i) => {
            i.tick().await;
        }
        None => pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WATCHDOG: Duration = Duration::from_secs(30);

    #[test]
    fn loop_alive_while_starting_and_while_beating() {
        assert!(
            loop_alive(None, WATCHDOG),
            "waiting for the database is no wedge"
        );
        assert!(loop_alive(Some(Duration::ZERO), WATCHDOG));
        assert!(
            loop_alive(Some(LOOP_BEAT), WATCHDOG),
            "idle: one beat per LOOP_BEAT"
        );
        assert!(loop_alive(Some(Duration::from_millis(14_999)), WATCHDOG));
    }

    #[test]
    fn a_stalled_loop_starves_the_watchdog() {
        assert!(!loop_alive(Some(Duration::from_secs(15)), WATCHDOG));
        assert!(!loop_alive(Some(Duration::from_secs(600)), WATCHDOG));
    }

    #[test]
    fn stall_limit_is_half_the_interval_but_never_below_two_beats() {
        assert_eq!(stall_limit(WATCHDOG), Duration::from_secs(15));
        assert_eq!(stall_limit(Duration::from_secs(2)), 2 * LOOP_BEAT);
        assert!(loop_alive(Some(LOOP_BEAT), Duration::from_secs(2)));
        assert!(!loop_alive(Some(2 * LOOP_BEAT), Duration::from_secs(2)));
    }

    #[test]
    fn phases() {
        use Phase::*;
        // (database, listening, listen required, READY sent) -> phase
        let cases = [
            ((false, false, true, false), WaitingForDatabase),
            ((true, false, true, false), WaitingForListen),
            ((true, true, true, false), Running),
            ((true, false, false, false), Running),
            ((false, false, false, false), WaitingForDatabase),
            ((false, true, true, true), DatabaseLost),
            ((true, false, true, true), ListenLost),
            ((true, true, true, true), Running),
        ];
        for ((db, li, listen, ready), want) in cases {
            assert_eq!(
                Phase::of(db, li, listen, ready),
                want,
                "{db} {li} {listen} {ready}"
            );
        }
    }
}
