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

use std::fmt;

use base64::Engine;

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

    /// The opaque text clients echo back in `Last-Event-ID`.
    pub fn encode(&self) -> String {
        let text = match &self.next {
            None => format!("1|{}|{}", self.at, self.base),
            Some((next, seq)) => format!("1|{}|{}|{}|{}", self.at, self.base, next, seq),
        };
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
    }

    pub fn decode(s: &str) -> Result<Self, BadCursor> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s.trim())
            .map_err(|_| BadCursor)?;
        let text = String::from_utf8(bytes).map_err(|_| BadCursor)?;
        let parts: Vec<&str> = text.split('|').collect();
        let snap = |s: &str| Snapshot::parse(s).ok_or(BadCursor);
        let at = |s: &str| s.parse::<i64>().map_err(|_| BadCursor);
        match parts.as_slice() {
            ["1", t, base] => Ok(Self::at_snapshot(snap(base)?, at(t)?)),
            ["1", t, base, next, seq] => {
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
        let text = c.encode();
        assert!(!text.contains('\n') && !text.contains(':'));
        assert_eq!(Cursor::decode(&text).unwrap(), c);
        assert!(c.covers(100, 999), "visible in base");
        assert!(c.covers(101, 57), "new in next, up to seq");
        assert!(!c.covers(101, 58), "new in next, past seq");
        assert!(!c.covers(102, 1), "still in progress in next");
        assert!(!c.covers(110, 1), "after next");
        let plain = Cursor::at_snapshot(snap("5:9:6"), 1);
        assert_eq!(Cursor::decode(&plain.encode()).unwrap(), plain);
    }

    #[test]
    fn decode_rejects_foreign_text() {
        for bad in ["", "abc", "MXwx", "!!!", "MXwxfDE6MTo="] {
            assert_eq!(Cursor::decode(bad), Err(BadCursor), "{bad}");
        }
    }
}
