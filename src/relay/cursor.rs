//! Where the claim looks for work, so that each claim reads only what changed since the
//! previous one (see the claim query, `crate::db::queries`).
//!
//! Fresh rows (never claimed) are found by their position in the stream of commits:
//! `(stream_xid, stream_seq)`, the inserting transaction and a sequence number. A position
//! alone cannot say "everything before this was seen": a transaction with a smaller id may
//! still be in progress and commit later. So the cursor is a position plus the transaction
//! ids below it that must still be looked at ([`ClaimCursor::probe`]): those in progress at
//! the last look (the snapshot's `xip`), and those with rows the last look saw but did not
//! claim (locked by another relay's claim, which may yet roll back; held back by entity
//! order; not yet due). Nothing is ever dropped from that list until a look has seen all of
//! its rows and claimed them. That is the whole argument that no row is passed over: every
//! fresh row either lies above the position or belongs to a listed transaction.
//!
//! Lapsed leases are found past the database clock of the last look that saw them all. When
//! the next one lapses is asked only when the answer may have changed: a lease taken after
//! the last answer lapses no sooner than a lease period later, so until the earliest lease
//! known (or, with none, that period) nothing can lapse unseen.
//!
//! The cursor lives in one relay's memory: each relay keeps its own, and a restarted relay
//! starts from the bottom of the index. A sweep (in [`super::claim`]) is the safety net for rows that
//! reach the fresh index behind every cursor (a relay of an earlier release still running
//! during an upgrade puts retries back without a token) and for leases that lapsed behind
//! the floor (a claim statement that ran longer than a lease): every `poll_interval` (at most
//! every [`SWEEP_EVERY`]) it looks below the cursor, on a connection of its own, and
//! hands what it found to the next claim. Starting the cursor over instead would make that
//! claim walk the entries every claimed row left behind, which, while an old snapshot keeps
//! vacuum from removing them, holds up every delivery for a second per 500,000.

use std::time::Duration;

use tokio::time::Instant;

use crate::db::claims::{Look, LookFrom};

/// How often, at most, a sweep looks below the cursor.
pub const SWEEP_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct ClaimCursor {
    /// Transactions at or below `after` whose rows are still to be looked at.
    probe: Vec<u64>,
    /// `(stream_xid, stream_seq)`: every fresh row above it is still to be looked at.
    after: (u64, i64),
    /// The database clock of the last look that claimed every lapsed lease it saw.
    lease_floor: Option<f64>,
    /// No lease can lapse before this unless the last lookup saw it (None: look).
    leases_known_until: Option<Instant>,
    /// The earliest lease the last lookup saw.
    next_lapse: Option<Instant>,
}

impl Default for ClaimCursor {
    fn default() -> Self {
        Self::new()
    }
}

impl ClaimCursor {
    /// From the bottom: every fresh row and every lapsed lease.
    pub fn new() -> Self {
        Self {
            probe: Vec::new(),
            after: (0, 0),
            lease_floor: None,
            leases_known_until: None,
            next_lapse: None,
        }
    }

    /// What a sweep asks about: fresh rows at or below this position, leases below this.
    pub fn sweep_bounds(&self) -> Option<((u64, i64), f64)> {
        self.lease_floor.map(|floor| (self.after, floor))
    }

    /// A sweep's findings: transactions with fresh rows below the position (the next claim
    /// looks at them), and the earliest lease below the floor, if any (the floor goes back).
    pub fn swept(&mut self, strays: &[u64], lapsed_below: Option<f64>) {
        self.probe
            .extend(strays.iter().filter(|&&x| x <= self.after.0));
        self.probe.sort_unstable();
        self.probe.dedup();
        if let (Some(at), Some(floor)) = (lapsed_below, self.lease_floor) {
            // Strictly below: the claim takes leases past its floor.
            self.lease_floor = Some(floor.min(at - 1.0));
        }
    }

    /// Where the next claim looks.
    pub fn look_from(&self) -> LookFrom {
        LookFrom {
            probe: self.probe.clone(),
            after: self.after,
            lease_floor: self.lease_floor,
        }
    }

    /// Where lease lookups start.
    pub fn lease_floor(&self) -> Option<f64> {
        self.lease_floor
    }

    /// Whether the next lapse must be looked up; otherwise [`ClaimCursor::next_lapse`] still
    /// holds.
    pub fn must_look_up_leases(&self) -> bool {
        self.leases_known_until
            .is_none_or(|until| Instant::now() >= until)
    }

    /// The lookup found the earliest lease lapsing in `lapses_in` (None: no lease is held).
    /// `lease`: the lease period, the soonest a lease taken from now on can lapse.
    pub fn leases_looked_up(&mut self, lapses_in: Option<Duration>, lease: Duration) {
        let now = Instant::now();
        self.next_lapse = lapses_in.map(|d| now + d);
        self.leases_known_until = Some(
            self.next_lapse
                .map_or(now + lease, |at| at.min(now + lease)),
        );
    }

    /// How long until the earliest lease known lapses (zero: it has).
    pub fn next_lapse(&self) -> Option<Duration> {
        self.next_lapse
            .map(|at| at.saturating_duration_since(Instant::now()))
    }

    /// Moves past what a claim with this `limit` looked at. `suspects_wanted`: the claim
    /// asked for a suspect too (otherwise suspects below its clock were not looked for; and
    /// one claimed may not have been the last).
    pub fn advance(&mut self, look: &Look, limit: usize, suspects_wanted: bool) {
        let snap = &look.snapshot;
        let mut probe: Vec<u64> = match look.last {
            // The look saw every candidate visible to it: what was not visible is in
            // progress (xip) or above xmax.
            _ if look.candidates < limit => {
                self.after = (snap.xmax, 0);
                snap.xip.clone()
            }
            // It stopped at `last`: rows above it were not looked at, nor were those below it
            // of transactions still in progress.
            Some(last) => {
                let old_after = self.after;
                let mut probe: Vec<u64> = self
                    .probe
                    .iter()
                    .copied()
                    .filter(|&x| x >= last.0)
                    .collect();
                probe.extend(
                    snap.xip
                        .iter()
                        .copied()
                        .filter(|&x| x < last.0 && (x >= old_after.0 || self.probe.contains(&x))),
                );
                self.after = old_after.max(last);
                probe
            }
            // A claim with no room (limit 0) looked at nothing.
            None => self.probe.clone(),
        };
        probe.extend(&look.unclaimed);
        // Transactions above the position are covered by it.
        probe.retain(|&x| x <= self.after.0);
        probe.sort_unstable();
        probe.dedup();
        self.probe = probe;
        if look.lapsed < limit && suspects_wanted && look.suspects == 0 {
            self.lease_floor = Some(look.at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::sse::cursor::Snapshot;

    fn from(probe: &[u64], after: (u64, i64), lease_floor: Option<f64>) -> LookFrom {
        LookFrom {
            probe: probe.to_vec(),
            after,
            lease_floor,
        }
    }

    fn snap(xmin: u64, xmax: u64, xip: &[u64]) -> Snapshot {
        Snapshot {
            xmin,
            xmax,
            xip: xip.to_vec(),
        }
    }

    fn look(s: Snapshot, candidates: usize, last: Option<(u64, i64)>, unclaimed: &[u64]) -> Look {
        Look {
            snapshot: s,
            at: 100.0,
            candidates,
            last,
            unclaimed: unclaimed.to_vec(),
            lapsed: 0,
            suspects: 0,
        }
    }

    #[test]
    fn a_look_that_saw_everything_moves_to_its_snapshot() {
        let mut c = ClaimCursor::new();
        c.advance(
            &look(snap(10, 20, &[12, 15]), 3, Some((18, 7)), &[]),
            100,
            true,
        );
        assert_eq!(c.look_from(), from(&[12, 15], (20, 0), Some(100.0)));
    }

    #[test]
    fn rows_left_unclaimed_are_looked_at_again() {
        let mut c = ClaimCursor::new();
        c.advance(
            &look(snap(10, 20, &[15]), 3, Some((18, 7)), &[11, 18]),
            100,
            true,
        );
        assert_eq!(c.look_from().probe, [11, 15, 18]);
    }

    #[test]
    fn a_full_look_stops_at_its_last_candidate() {
        let mut c = ClaimCursor::new();
        // Candidates up to (14, 3) taken; 12 and 16 in progress; 16 is above the position.
        c.advance(
            &look(snap(12, 30, &[12, 16]), 2, Some((14, 3)), &[]),
            2,
            true,
        );
        assert_eq!(c.look_from(), from(&[12], (14, 3), Some(100.0)));
        // A later full look whose last candidate was one of the probed transactions keeps the
        // position and drops 12 only once it is visible and below the last candidate.
        c.advance(&look(snap(13, 31, &[16]), 2, Some((12, 9)), &[]), 2, true);
        assert_eq!(c.look_from(), from(&[12], (14, 3), Some(100.0)));
        c.advance(&look(snap(16, 31, &[16]), 1, Some((12, 9)), &[]), 2, true);
        assert_eq!(c.look_from(), from(&[16], (31, 0), Some(100.0)));
    }

    #[test]
    fn a_sweep_adds_what_it_found_below_the_position() {
        let mut c = ClaimCursor::new();
        assert_eq!(
            c.sweep_bounds(),
            None,
            "nothing to sweep before the first look"
        );
        c.advance(&look(snap(10, 20, &[15]), 3, Some((18, 7)), &[]), 100, true);
        assert_eq!(c.sweep_bounds(), Some(((20, 0), 100.0)));
        c.swept(&[3, 15, 25], Some(40.0));
        assert_eq!(c.look_from(), from(&[3, 15], (20, 0), Some(39.0)));
    }

    #[test]
    fn the_lease_floor_waits_for_a_look_that_saw_every_lapse() {
        let mut c = ClaimCursor::new();
        let mut l = look(snap(1, 2, &[]), 0, None, &[]);
        l.lapsed = 5;
        c.advance(&l, 5, true);
        assert_eq!(c.lease_floor(), None, "the limit was reached");
        l.lapsed = 0;
        c.advance(&l, 5, false);
        assert_eq!(c.lease_floor(), None, "suspects were not looked for");
        l.suspects = 1;
        c.advance(&l, 5, true);
        assert_eq!(c.lease_floor(), None, "another suspect may wait");
        l.suspects = 0;
        c.advance(&l, 5, true);
        assert_eq!(c.lease_floor(), Some(100.0));
    }
}
