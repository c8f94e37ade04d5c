//! What the daemon's parts share: [`Health`] (the claim loop's and the database's liveness,
//! read by `/readyz`, systemd readiness and the watchdog) and [`Shared`] (the handles the
//! HTTP side needs: SSE hub, dispatcher, timeline, statements, a wake-up). Both are made
//! before the relay starts, so the dashboard and `/healthz` work while the database is down.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::config::Config;
use crate::db::queries::Queries;
use crate::observe::activity::Timeline;
use crate::sinks::sse::Hub;
use crate::sinks::Dispatcher;

/// What `/readyz`, systemd readiness and the watchdog report.
#[derive(Debug, Default)]
pub struct Health {
    /// The last database round trip succeeded.
    pub database: AtomicBool,
    /// The LISTEN connection is up (always false in poll-only mode).
    pub listening: AtomicBool,
    /// When the claim loop last went round, in ms since [`Health::epoch`]; 0 before it starts.
    loop_beat_ms: AtomicU64,
    epoch: std::sync::OnceLock<Instant>,
}

/// What the relay shares with the HTTP side (`/readyz`, SSE, the dashboard). The daemon
/// makes it before the relay starts, so the dashboard works while the database is down.
pub struct Shared {
    pub health: Arc<Health>,
    /// The SSE fan-out, fed by a tail reader the relay runs (None: SSE disabled).
    pub hub: Option<Arc<Hub>>,
    pub dispatcher: Arc<Dispatcher>,
    /// Delivered events and failed attempts per second, for the dashboard.
    pub timeline: Arc<Timeline>,
    /// The statements for the table's shape, once the relay has found the table.
    pub queries: OnceLock<Arc<Queries>>,
    /// Wakes the claim loop (as a NOTIFY would): for a dashboard retry in poll-only mode.
    pub wake: Arc<Notify>,
}

impl Shared {
    pub fn new(cfg: &Config, hub: Option<Arc<Hub>>) -> anyhow::Result<Self> {
        let timeline = Arc::new(Timeline::default());
        Ok(Self {
            health: Arc::default(),
            hub,
            dispatcher: Arc::new(Dispatcher::new(cfg, timeline.clone())?),
            timeline,
            queries: OnceLock::new(),
            wake: Arc::default(),
        })
    }
}

/// The claim loop proves it is alive at least this often, even when idle (without a query).
pub const LOOP_BEAT: Duration = Duration::from_secs(5);

impl Health {
    /// Ready: the database answers and, unless poll-only, LISTEN is active.
    pub fn ready(&self, listen: bool) -> bool {
        self.database_up() && (!listen || self.listening.load(Ordering::Acquire))
    }

    /// The last database round trip succeeded.
    pub fn database_up(&self) -> bool {
        self.database.load(Ordering::Acquire)
    }

    fn epoch(&self) -> Instant {
        *self.epoch.get_or_init(Instant::now)
    }

    /// Called by the claim loop each time round.
    pub fn beat(&self) {
        let ms = self.epoch().elapsed().as_millis() as u64;
        self.loop_beat_ms.store(ms.max(1), Ordering::Release);
    }

    /// How long since the claim loop last went round (None: it has not started). A wedged
    /// loop shows here, and the systemd watchdog stops being fed.
    pub fn since_beat(&self) -> Option<Duration> {
        let at = self.loop_beat_ms.load(Ordering::Acquire);
        (at > 0).then(|| {
            Duration::from_millis(self.epoch().elapsed().as_millis() as u64)
                .saturating_sub(Duration::from_millis(at))
        })
    }
}
