//! Background work that queries the database (housekeeping, retention, the SSE tail's safety
//! net) runs right after a round of the claim loop, never on a timer of its own: an idle
//! relay's statements then all happen at its poll, and nothing runs between polls but the
//! LISTEN heartbeat.

pub mod housekeeping;
pub mod retention;

use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

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
