//! Resume cursors built on PostgreSQL snapshots.
//!
//! A plain sequence cannot say "everything before this point": a transaction that started
//! earlier may commit later with a smaller number. A snapshot can. Every row carries the id
//! of the transaction that inserted it (`stream_xid`), and a snapshot (`xmin:xmax:xip`) says
//! for each transaction id whether it had committed when the snapshot was taken.
//!
//! A [`Cursor`] `(base, next, seq)` names what a subscriber has been sent: every row visible
//! in `base`, plus, when `next` is set, the rows visible in `next` but not in `base` whose
//! `stream_seq` is at most `seq` (a reader walks each such difference in `stream_seq` order).
//! Resuming asks the database for exactly the rows outside that set, so nothing is missed
//! or repeated, on whichever relay instance the client reaches.
//!
//! A subscriber that caught up from the database stands at a snapshot of its own, then
//! follows the tail reader's pages, whose positions are the tail's. When the tail is behind,
//! that snapshot can fall between the two the tail is walking: then the tail's position does
//! not cover everything already sent, and [`Cursor::advance`] keeps the subscriber's own base
//! until it is level with the tail.
//!
//! Cursors are authenticated ([`CursorKey`]): a cursor decides how far back a subscriber's
//! read goes and how large its snapshot lists are, so a hand-made one could ask the
//! database for an org's whole history, or make every read probe thousands of transaction
//! ids. Only cursors a relay of the deployment issued, for the same org, are accepted.

use std::fmt;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The longest `Last-Event-ID` accepted, checked before anything else. A cursor holds two
/// snapshots whose lists name the transactions in progress when they were taken: this fits
/// about 1,000 ten-digit ids in each, far more than a server with the default
/// `max_connections` can have.
pub const MAX_CURSOR_LEN: usize = 32 * 1024;
/// Bytes of HMAC-SHA256 kept in a cursor.
const TAG_LEN: usize = 16;

/// The key cursors are signed with, derived from `sse.token_secret`: every relay of a
/// deployment has it, and keeps it across restarts, so a subscriber resumes on any of them.
/// (Changing the token secret therefore invalidates the cursors issued before.)
#[derive(Clone)]
pub struct CursorKey(Arc<Hmac<Sha256>>);

impl CursorKey {
    pub fn derive(token_secret: &[u8]) -> Self {
        // Its own key, not the token secret itself: a MAC made for one purpose is never
        // valid for the other.
        let mut kdf = Hmac::<Sha256>::new_from_slice(token_secret).expect("any key length");
        kdf.update(b"outbox-relay SSE cursor key v2");
        let key = kdf.finalize().into_bytes();
        Self(Arc::new(
            Hmac::<Sha256>::new_from_slice(&key).expect("any key length"),
        ))
    }

    /// The MAC of a cursor's text for one org: a cursor is valid only for the org whose
    /// subscriber it was issued to.
    fn mac(&self, org: &str, text: &str) -> Hmac<Sha256> {
        let mut mac = (*self.0).clone();
        mac.update(&(org.len() as u64).to_be_bytes());
        mac.update(org.as_bytes());
        mac.update(text.as_bytes());
        mac
    }
}

impl fmt::Debug for CursorKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CursorKey(..)")
    }
}

/// A `pg_snapshot`: transactions below `xmin` are finished, those at or above `xmax` had not
/// started, and those in `xip` were in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub xmin: u64,
    pub xmax: u64,
    pub xip: Vec<u64>,
}

impl Snapshot {
    /// A snapshot in which no transaction is visible: a cursor from the start of the table.
    pub fn empty() -> Self {
        Self {
            xmin: 1,
            xmax: 1,
            xip: Vec::new(),
        }
    }

    /// Whether rows of transaction `xid` are visible in this snapshot (committed before it;
    /// aborted transactions have no rows to see).
    pub fn sees(&self, xid: u64) -> bool {
        xid < self.xmin || (xid < self.xmax && !self.xip.contains(&xid))
    }

    /// Whether every transaction visible in `earlier` is visible in this snapshot too, as in
    /// any snapshot taken after it. (False in a few odd cases where it holds, which callers
    /// treat as "cannot tell".)
    pub fn includes(&self, earlier: &Snapshot) -> bool {
        self == earlier
            || earlier.xmax <= self.xmax
                && self
                    .xip
                    .iter()
                    .all(|x| *x >= earlier.xmax || earlier.xip.contains(x))
    }

    /// Parses PostgreSQL's text form `xmin:xmax:xip,xip,...`.
    pub fn parse(s: &str) -> Option<Self> {
        let mut parts = s.splitn(3, ':');
        let xmin: u64 = parts.next()?.parse().ok()?;
        let xmax: u64 = parts.next()?.parse().ok()?;
        let xip_text = parts.next()?;
        let xip = if xip_text.is_empty() {
            Vec::new()
        } else {
            xip_text
                .split(',')
                .map(|x| x.parse().ok())
                .collect::<Option<Vec<u64>>>()?
        };
        let valid = xmin >= 1 && xmin <= xmax && xip.iter().all(|&x| x >= xmin && x < xmax);
        valid.then_some(Self { xmin, xmax, xip })
    }
}

impl fmt::Display for Snapshot {
    /// PostgreSQL's text form, accepted by `::pg_snapshot`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:", self.xmin, self.xmax)?;
        for (i, x) in self.xip.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{x}")?;
        }
        Ok(())
    }
}

/// What a subscriber has been sent (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub base: Snapshot,
    /// With `seq`: the part of the next snapshot's new rows already sent.
    pub next: Option<(Snapshot, i64)>,
    /// When `base` (or `next`, if set) was taken, unix seconds on the database's clock:
    /// decides whether retention may have purged rows the holder has not seen.
    pub at: i64,
}

/// Where a subscriber stands after sending a tail event its cursor did not cover
/// ([`Cursor::advance`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Advance {
    /// The tail's position after the event covers everything the subscriber's did: it is the
    /// subscriber's position too (the usual case, and the one the shared frame's id names).
    Tail,
    /// The subscriber is ahead of the tail's base, inside the difference the tail is walking:
    /// its catch-up read a snapshot taken between the tail's two, so some rows of the
    /// difference were sent already and the rest follow in the tail's order. Its position is
    /// its own base with the tail's next snapshot and seq.
    Ahead(Cursor),
    /// Neither can be told from the snapshots: read from the database instead.
    Unknown,
}

/// Why a `Last-Event-ID` was not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a cursor this relay issued")]
pub struct BadCursor;

impl Cursor {
    /// Everything visible in `snapshot` has been sent.
    pub fn at_snapshot(snapshot: Snapshot, at: i64) -> Self {
        Self {
            base: snapshot,
            next: None,
            at,
        }
    }

    /// Whether a row of transaction `xid` with sequence `seq` is among what was sent.
    pub fn covers(&self, xid: u64, seq: i64) -> bool {
        self.base.sees(xid)
            || self
                .next
                .as_ref()
                .is_some_and(|(next, upto)| next.sees(xid) && seq <= *upto)
    }

    /// The position after sending an event of the tail's walk that this cursor does not
    /// cover, `tail` being the tail's position after that event. The tail walks its own
    /// snapshots, not this cursor's: adopting its position as is would forget the rows of a
    /// difference this cursor's base already saw and the tail reads only later (a
    /// transaction that took its sequence numbers first and committed last comes first in
    /// the difference), and they would be sent again. Assumes every tail event since this
    /// cursor's snapshot was taken has been seen, as a subscriber of the hub has.
    pub fn advance(&self, tail: &Cursor) -> Advance {
        if let (Some((mine, _)), Some((theirs, _))) = (&self.next, &tail.next) {
            if self.base == tail.base && mine == theirs {
                return Advance::Tail; // following the tail through a difference
            }
        }
        let upper = self.next.as_ref().map_or(&self.base, |(next, _)| next);
        if tail.base.includes(upper) {
            return Advance::Tail;
        }
        // Otherwise both must be inside the difference the tail is walking.
        let Some((next, seq)) = &tail.next else {
            return Advance::Unknown;
        };
        let inside =
            next.includes(&self.base) && self.next.as_ref().is_none_or(|(mine, _)| mine == next);
        if !inside {
            Advance::Unknown
        } else if tail.base.includes(&self.base) {
            // Level with the tail (or behind it): the rows of the difference come in order.
            Advance::Tail
        } else if self.base.includes(&tail.base) {
            Advance::Ahead(Cursor {
                base: self.base.clone(),
                next: Some((next.clone(), *seq)),
                at: tail.at,
            })
        } else {
            Advance::Unknown
        }
    }

    /// The opaque text clients echo back in `Last-Event-ID`: the position and its MAC for
    /// `org`.
    pub fn encode(&self, key: &CursorKey, org: &str) -> String {
        let text = match &self.next {
            None => format!("2|{}|{}", self.at, self.base),
            Some((next, seq)) => format!("2|{}|{}|{}|{}", self.at, self.base, next, seq),
        };
        let tag = key.mac(org, &text).finalize().into_bytes();
        format!("{}.{}", B64.encode(&text), B64.encode(&tag[..TAG_LEN]))
    }

    /// A cursor [`Cursor::encode`] made for `org` with this key; anything else (another
    /// org's cursor, an earlier release's unsigned one, an edited or oversized one) is
    /// refused before it is parsed.
    pub fn decode(s: &str, key: &CursorKey, org: &str) -> Result<Self, BadCursor> {
        let s = s.trim();
        if s.len() > MAX_CURSOR_LEN {
            return Err(BadCursor);
        }
        let (text, tag) = s.split_once('.').ok_or(BadCursor)?;
        let text =
            String::from_utf8(B64.decode(text).map_err(|_| BadCursor)?).map_err(|_| BadCursor)?;
        let tag = B64.decode(tag).map_err(|_| BadCursor)?;
        if tag.len() != TAG_LEN {
            return Err(BadCursor);
        }
        // Constant time.
        key.mac(org, &text)
            .verify_truncated_left(&tag)
            .map_err(|_| BadCursor)?;
        Self::parse(&text)
    }

    fn parse(text: &str) -> Result<Self, BadCursor> {
        let parts: Vec<&str> = text.split('|').collect();
        let snap = |s: &str| Snapshot::parse(s).ok_or(BadCursor);
        let at = |s: &str| s.parse::<i64>().map_err(|_| BadCursor);
        match parts.as_slice() {
            ["2", t, base] => Ok(Self::at_snapshot(snap(base)?, at(t)?)),
            ["2", t, base, next, seq] => {
                let (base, next) = (snap(base)?, snap(next)?);
                // `next` is always the later snapshot.
                if next.xmin < base.xmin || next.xmax < base.xmax {
                    return Err(BadCursor);
                }
                let seq = seq.parse().map_err(|_| BadCursor)?;
                Ok(Self {
                    base,
                    next: Some((next, seq)),
                    at: at(t)?,
                })
            }
            _ => Err(BadCursor),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> CursorKey {
        CursorKey::derive(b"test secret")
    }

    fn snap(s: &str) -> Snapshot {
        Snapshot::parse(s).unwrap()
    }

    #[test]
    fn snapshot_visibility_follows_postgres() {
        let s = snap("100:105:100,103");
        assert!(s.sees(99));
        assert!(!s.sees(100), "in progress");
        assert!(s.sees(101) && s.sees(102) && s.sees(104));
        assert!(!s.sees(103), "in progress");
        assert!(!s.sees(105) && !s.sees(200), "not started");
        assert_eq!(s.to_string(), "100:105:100,103");
        assert!(!Snapshot::empty().sees(1));
    }

    #[test]
    fn snapshot_parse_rejects_nonsense() {
        for bad in ["", "1", "1:2", "5:4:", "1:5:7", "a:b:", "1:5:2,x", "0:0:"] {
            assert_eq!(Snapshot::parse(bad), None, "{bad}");
        }
        assert_eq!(snap("7:7:").xip, Vec::<u64>::new());
    }

    #[test]
    fn cursors_round_trip_and_cover_what_was_sent() {
        let c = Cursor {
            base: snap("100:103:101,102"),
            next: Some((snap("102:110:102"), 57)),
            at: 1_764_000_000,
        };
        let text = c.encode(&key(), "org_a");
        assert!(!text.contains('\n') && !text.contains(':'));
        assert_eq!(Cursor::decode(&text, &key(), "org_a").unwrap(), c);
        assert!(c.covers(100, 999), "visible in base");
        assert!(c.covers(101, 57), "new in next, up to seq");
        assert!(!c.covers(101, 58), "new in next, past seq");
        assert!(!c.covers(102, 1), "still in progress in next");
        assert!(!c.covers(110, 1), "after next");
        let plain = Cursor::at_snapshot(snap("5:9:6"), 1);
        assert_eq!(
            Cursor::decode(&plain.encode(&key(), "o"), &key(), "o").unwrap(),
            plain
        );
    }

    #[test]
    fn a_later_snapshot_includes_an_earlier_one() {
        // 101 and 103 in progress, then 101 commits and 110 starts, then 103 commits.
        let (a, b, c) = (
            snap("101:105:101,103"),
            snap("103:111:103,110"),
            snap("110:112:110"),
        );
        for (later, earlier) in [(&b, &a), (&c, &b), (&c, &a), (&a, &a)] {
            assert!(later.includes(earlier), "{later} includes {earlier}");
        }
        for (earlier, later) in [(&a, &b), (&b, &c), (&a, &c)] {
            assert!(
                !earlier.includes(later),
                "{earlier} does not include {later}"
            );
        }
        assert!(a.includes(&Snapshot::empty()));
    }

    /// The tail walks the difference 100:100: -> 100:103: (rows of 100 first, by seq), while
    /// a subscriber's catch-up read at 100:102:100, where 101 had committed and 100 had not.
    #[test]
    fn a_subscriber_between_the_tails_snapshots_keeps_what_it_sent() {
        let (tail_base, tail_next) = (snap("100:100:"), snap("103:103:"));
        let mine = Cursor::at_snapshot(snap("100:102:100"), 7);
        let after = |seq| Cursor {
            base: tail_base.clone(),
            next: Some((tail_next.clone(), seq)),
            at: 8,
        };
        // 100's row (seq 1) is new to the subscriber; 101's (seq 2) it sent already.
        assert!(!mine.covers(100, 1) && mine.covers(101, 2));
        let Advance::Ahead(pos) = mine.advance(&after(1)) else {
            panic!("the tail's position would drop 101");
        };
        assert!(
            !after(1).covers(101, 2),
            "the tail's own position would send it again"
        );
        assert_eq!(pos.base, mine.base);
        assert_eq!(pos.next, Some((tail_next.clone(), 1)));
        assert_eq!(pos.at, 8);
        assert!(pos.covers(100, 1) && pos.covers(101, 2));
        assert!(!pos.covers(102, 3), "102's row is still to come");
        assert_eq!(
            Cursor::decode(&pos.encode(&key(), "o"), &key(), "o").unwrap(),
            pos
        );
        // Then 102's row (seq 3), inside the same difference: still its own position.
        let Advance::Ahead(pos) = pos.advance(&after(3)) else {
            panic!("inside the same difference");
        };
        assert_eq!(pos.next, Some((tail_next.clone(), 3)));
        // The end of the difference, or the next one, is the tail's position again.
        let done = Cursor::at_snapshot(tail_next.clone(), 8);
        assert_eq!(pos.advance(&done), Advance::Tail);
        let beyond = Cursor {
            base: tail_next.clone(),
            next: Some((snap("104:106:104"), 9)),
            at: 9,
        };
        assert_eq!(pos.advance(&beyond), Advance::Tail);
        assert_eq!(mine.advance(&beyond), Advance::Tail);
    }

    #[test]
    fn a_subscriber_behind_or_level_with_the_tail_takes_its_position() {
        let mine = Cursor::at_snapshot(snap("100:100:"), 1);
        let tail = Cursor {
            base: snap("100:102:100"),
            next: Some((snap("103:103:"), 5)),
            at: 2,
        };
        assert_eq!(mine.advance(&tail), Advance::Tail);
        // Following the tail inside a difference, event after event.
        let later = Cursor {
            next: Some((snap("103:103:"), 9)),
            ..tail.clone()
        };
        assert_eq!(tail.advance(&later), Advance::Tail);
        // A position the subscriber cannot be inside of: read from the database.
        let elsewhere = Cursor {
            base: snap("100:102:100"),
            next: Some((snap("104:104:"), 5)),
            at: 2,
        };
        let inside = Cursor {
            base: snap("100:102:100"),
            next: Some((snap("103:103:"), 1)),
            at: 2,
        };
        assert_eq!(
            Cursor::at_snapshot(snap("100:101:100"), 1).advance(&elsewhere),
            Advance::Tail
        );
        let Advance::Ahead(ahead) = Cursor::at_snapshot(snap("100:102:"), 1).advance(&inside)
        else {
            panic!("inside the tail's difference");
        };
        assert_eq!(ahead.advance(&elsewhere), Advance::Unknown);
    }

    #[test]
    fn decode_rejects_foreign_text() {
        for bad in [
            "",
            "abc",
            "MXwx",
            "!!!",
            "MXwxfDE6MTo=",
            "MnwxfDE6MTo.",
            ".",
        ] {
            assert_eq!(Cursor::decode(bad, &key(), "o"), Err(BadCursor), "{bad}");
        }
    }

    /// Only what a relay with the same key issued for the same org: not another org's
    /// cursor, not one signed with another key, not an edited one (from the start of the
    /// table), not an earlier release's unsigned one, nothing over the size limit.
    #[test]
    fn decode_accepts_only_cursors_issued_for_the_org() {
        let c = Cursor::at_snapshot(snap("1000:1004:1001"), 1_764_000_000);
        let issued = c.encode(&key(), "org_a");
        assert_eq!(Cursor::decode(&issued, &key(), "org_a"), Ok(c.clone()));
        assert_eq!(Cursor::decode(&issued, &key(), "org_b"), Err(BadCursor));
        let other = CursorKey::derive(b"another secret");
        assert_eq!(Cursor::decode(&issued, &other, "org_a"), Err(BadCursor));
        let (_, tag) = issued.split_once('.').unwrap();
        let edited = format!("{}.{tag}", B64.encode("2|1764000000|1:1:"));
        assert_eq!(Cursor::decode(&edited, &key(), "org_a"), Err(BadCursor));
        let unsigned = B64.encode("1|1764000000|1:1:");
        assert_eq!(Cursor::decode(&unsigned, &key(), "org_a"), Err(BadCursor));
        let mut short_tag = issued.clone();
        short_tag.pop();
        assert_eq!(Cursor::decode(&short_tag, &key(), "org_a"), Err(BadCursor));
        // Large snapshots are fine up to the limit, refused past it even when signed.
        let big = |n: u64| {
            let first = 3_000_000_000u64; // ids as wide as a busy server's
            let xip = (first..first + n)
                .map(|x| x.to_string())
                .collect::<Vec<_>>();
            let s = snap(&format!("{first}:{}:{}", first + n + 1, xip.join(",")));
            Cursor {
                base: s.clone(),
                next: Some((s, 7)),
                at: 1,
            }
        };
        let fits = big(1000);
        let encoded = fits.encode(&key(), "o");
        assert!(encoded.len() <= MAX_CURSOR_LEN, "{}", encoded.len());
        assert_eq!(Cursor::decode(&encoded, &key(), "o"), Ok(fits));
        let too_big = big(3000).encode(&key(), "o");
        assert!(too_big.len() > MAX_CURSOR_LEN);
        assert_eq!(Cursor::decode(&too_big, &key(), "o"), Err(BadCursor));
    }
}
