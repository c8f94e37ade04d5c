//! What a delivery comes to: the [`Outcome`] of a claimed row, the status and columns it
//! writes back ([`Outcome::row`], for the recorder's fenced UPDATE), and the [`AttemptLog`]
//! kept in the row's `attempts` history. The same for every sink.

use std::time::Duration;

use uuid::Uuid;

use crate::db::claims::{NextAttempt, RowOutcome};

/// What becomes of a claimed row.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Every endpoint that wants it has accepted it (or none wants it).
    Completed { delivered: Vec<String> },
    /// A failed attempt; try again after `delay`.
    Retry {
        delay: Duration,
        error: String,
        delivered: Vec<String>,
    },
    /// The last allowed attempt failed, or the row cannot be delivered at all: dead letter.
    Dead {
        error: String,
        delivered: Vec<String>,
    },
    /// Not an attempt (shutdown, saturated endpoint): back to PENDING after `delay`.
    Release {
        delay: Duration,
        delivered: Vec<String>,
    },
    /// Only paused endpoints (`paused`) still want it: PENDING, held until one of them is
    /// resumed.
    Hold {
        delivered: Vec<String>,
        paused: Vec<String>,
    },
}

/// A delivery's outcome and the attempts it made on the way.
#[derive(Debug)]
pub struct Delivery {
    pub outcome: Outcome,
    pub log: Vec<AttemptLog>,
}

impl Outcome {
    /// The status the row gets.
    pub fn status(&self) -> &'static str {
        match self {
            Outcome::Completed { .. } => "COMPLETED",
            Outcome::Retry { .. } | Outcome::Release { .. } | Outcome::Hold { .. } => "PENDING",
            Outcome::Dead { .. } => "FAILED",
        }
    }

    /// What this outcome writes to row `id` (claimed with `token`), with the attempts made.
    pub fn row<'a>(
        &'a self,
        id: &'a str,
        token: Uuid,
        log: &[AttemptLog],
    ) -> anyhow::Result<RowOutcome<'a>> {
        let (failed, error, next, delivered) = match self {
            Outcome::Completed { delivered } => (false, None, NextAttempt::Unchanged, delivered),
            Outcome::Retry {
                delay,
                error,
                delivered,
            } => (true, Some(error), NextAttempt::After(*delay), delivered),
            Outcome::Dead { error, delivered } => {
                (true, Some(error), NextAttempt::Unchanged, delivered)
            }
            Outcome::Release { delay, delivered } => {
                (false, None, NextAttempt::After(*delay), delivered)
            }
            Outcome::Hold { delivered, paused } => {
                (false, None, NextAttempt::Held(paused), delivered)
            }
        };
        Ok(RowOutcome {
            id,
            token,
            status: self.status(),
            failed,
            error: error.map(String::as_str),
            next,
            delivered,
            attempts: if log.is_empty() {
                None
            } else {
                Some(serde_json::to_string(log)?)
            },
        })
    }
}

/// One attempt as the event's history keeps it (the `attempts` column, the dashboard).
#[derive(Debug, Clone, serde::Serialize)]
pub struct AttemptLog {
    /// RFC 3339, when the request started.
    pub at: String,
    pub endpoint: String,
    pub ok: bool,
    /// The HTTP status, when there was a response.
    pub status: Option<u16>,
    pub error: Option<String>,
    pub ms: f64,
}
