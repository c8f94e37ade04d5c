//! Keeps a failing endpoint from flooding the log: at most a few "delivery failed" lines a
//! second at warn; the others go to debug, and the next warn line says how many there were.
//! The counts stay exact in `outbox_delivery_attempts_total`.

use std::sync::atomic::{AtomicU64, Ordering};

pub struct WarnBudget {
    per_second: u64,
    second: AtomicU64,
    used: AtomicU64,
    held_back: AtomicU64,
}

impl WarnBudget {
    pub const fn new(per_second: u64) -> Self {
        Self {
            per_second,
            second: AtomicU64::new(0),
            used: AtomicU64::new(0),
            held_back: AtomicU64::new(0),
        }
    }

    /// For a line at `now_secs` (unix seconds): Some(n) to log it at warn, n being how many
    /// went to debug since the last warn line; None to log it at debug.
    pub fn take(&self, now_secs: u64) -> Option<u64> {
        if self.second.swap(now_secs, Ordering::AcqRel) != now_secs {
            self.used.store(0, Ordering::Release);
        }
        if self.used.fetch_add(1, Ordering::AcqRel) < self.per_second {
            Some(self.held_back.swap(0, Ordering::AcqRel))
        } else {
            self.held_back.fetch_add(1, Ordering::AcqRel);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_a_second_then_the_count_of_the_rest() {
        let b = WarnBudget::new(2);
        assert_eq!(b.take(100), Some(0));
        assert_eq!(b.take(100), Some(0));
        assert_eq!(b.take(100), None);
        assert_eq!(b.take(100), None);
        assert_eq!(b.take(101), Some(2));
        assert_eq!(b.take(101), Some(0));
        assert_eq!(b.take(101), None);
    }
}
