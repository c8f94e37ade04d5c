//! One incident, one warning. A failure that repeats while its cause lasts (claims against a
//! server that is restarting, outcome writes behind a lock, a LISTEN connection that cannot
//! reconnect yet) is logged at warn when it starts and at debug while it lasts; when it ends,
//! one info line says how long it lasted and how many attempts failed. An operator reads one
//! incident as two lines instead of a stream whose length depends on the backoff.

use std::time::Duration;
use tokio::time::Instant;

pub struct Incident {
    /// What failed, for the closing line ("claims", "recording outcomes").
    what: &'static str,
    /// When the current incident started and how many attempts have failed in it.
    open: Option<(Instant, u32)>,
}

impl Incident {
    pub const fn new(what: &'static str) -> Self {
        Self { what, open: None }
    }

    /// Counts a failure. True when it starts an incident (log it at warn); false while one
    /// lasts (log it at debug).
    pub fn failed(&mut self) -> bool {
        match &mut self.open {
            Some((_, n)) => {
                *n += 1;
                false
            }
            None => {
                self.open = Some((Instant::now(), 1));
                true
            }
        }
    }

    /// Ends the incident, if one is open, with one info line.
    pub fn succeeded(&mut self) {
        if let Some((since, failed)) = self.open.take() {
            let lasted = Duration::from_millis(since.elapsed().as_millis() as u64);
            tracing::info!(failed_attempts = failed, lasted = ?lasted, "{}: working again", self.what);
        }
    }

    #[cfg(test)]
    fn is_open(&self) -> bool {
        self.open.is_some()
    }
}

/// Logs `$msg` with its fields at warn when `$incident.failed()` starts an incident, at
/// debug while it lasts.
#[macro_export]
macro_rules! incident_failed {
    ($incident:expr, $($arg:tt)+) => {
        if $incident.failed() {
            tracing::warn!($($arg)+);
        } else {
            tracing::debug!($($arg)+);
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_first_failure_opens_an_incident_and_a_success_closes_it() {
        let mut i = Incident::new("claims");
        assert!(!i.is_open());
        assert!(i.failed());
        assert!(!i.failed());
        assert!(!i.failed());
        assert!(i.is_open());
        tokio::time::advance(Duration::from_secs(3)).await;
        i.succeeded();
        assert!(!i.is_open());
        // The next failure is a new incident.
        assert!(i.failed());
        i.succeeded();
        i.succeeded();
        assert!(!i.is_open());
    }
}
