//! Reading the table in stream order, one page at a time, from a [`Cursor`].
//!
//! The tail reader (all orgs) and every resuming subscriber (one org) use the same walk:
//! first the rest of the snapshot difference the cursor is inside, then whatever became
//! visible since its snapshot, each in `stream_seq` order.

use std::sync::Arc;

use bytes::Bytes;

use crate::config::Config;
use crate::db::claims;
use crate::event::Event;
use crate::sinks::sse::cursor::{Cursor, CursorKey};

/// How streams read the table: the statement, and the key their cursors are signed with.
#[derive(Debug, Clone)]
pub struct Reader {
    pub sql: String,
    pub key: CursorKey,
}

impl Reader {
    /// For a config with SSE enabled (which requires a token secret).
    pub fn new(cfg: &Config) -> Self {
        let secret = cfg
            .sse
            .token_secret
            .as_ref()
            .expect("validated: enabled SSE has a token secret")
            .get();
        Self {
            sql: crate::db::queries::stream_read(&cfg.qualified_table()),
            key: CursorKey::derive(secret.expose().as_bytes()),
        }
    }
}

/// One event as streams send it: the SSE frame is built once and shared by every subscriber.
#[derive(Debug, Clone)]
pub struct StreamEvent {
    pub xid: u64,
    pub seq: i64,
    pub org_id: Arc<str>,
    pub event_type: Arc<str>,
    /// The position after this event.
    pub cursor: Arc<Cursor>,
    /// `id:`, `event:` and `data:` lines, ready to write.
    pub frame: Bytes,
}

impl StreamEvent {
    /// The frame with `cursor` as its id instead of the tail's position, for a subscriber
    /// whose position differs ([`crate::sinks::sse::cursor::Advance::Ahead`]).
    pub fn frame_at(&self, cursor: &Cursor, key: &CursorKey) -> Bytes {
        // The frame starts with the `id:` line; the id never holds a line break.
        let rest = self
            .frame
            .iter()
            .position(|&b| b == b'\n')
            .map_or(&self.frame[..], |at| &self.frame[at..]);
        let id = cursor.encode(key, &self.org_id);
        let mut out = Vec::with_capacity(4 + id.len() + rest.len());
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(rest);
        Bytes::from(out)
    }
}

/// A page of events and the cursor after it.
#[derive(Debug)]
pub struct Page {
    pub events: Vec<StreamEvent>,
    pub cursor: Cursor,
    /// More may be waiting right now: read again before waiting for a wake-up.
    pub more: bool,
    /// What the read took on the wire (see [`crate::db::put_back`]).
    pub bytes: usize,
}

/// Reads up to `limit` events after `cursor`, of one org or (None) of all.
pub async fn next_page(
    client: &deadpool_postgres::Client,
    reader: &Reader,
    cursor: &Cursor,
    org: Option<&str>,
    limit: usize,
) -> anyhow::Result<Page> {
    let (next, after) = match &cursor.next {
        Some((next, seq)) => (Some(next), *seq),
        None => (None, i64::MIN),
    };
    let from = claims::StreamFrom {
        base: &cursor.base,
        next,
        after,
        org,
        limit,
    };
    let read = claims::stream_read(client, &reader.sql, &from).await?;
    let (later, at) = match &cursor.next {
        Some((next, _)) => (next.clone(), cursor.at),
        None => (read.snapshot, read.at),
    };
    let found = read.rows;
    let full = found.len() >= limit;
    let within = |seq: i64| Cursor {
        base: cursor.base.clone(),
        next: Some((later.clone(), seq)),
        at,
    };
    // Past the difference: everything visible in `later` has been read.
    let done = Cursor::at_snapshot(later.clone(), at);
    let (after, more) = match (full, cursor.next.is_some()) {
        (true, _) => (within(found.last().map_or(i64::MIN, |f| f.1)), true),
        // The difference is exhausted; what became visible since still has to be read.
        (false, true) => (done, true),
        (false, false) => (done, false),
    };
    let last = found.len().saturating_sub(1);
    let events = found
        .iter()
        .enumerate()
        .filter_map(|(i, (xid, seq, ev))| {
            // The last event of a complete read carries the short cursor that follows it.
            let position = if i == last && !full {
                after.clone()
            } else {
                within(*seq)
            };
            stream_event(ev, *xid, *seq, position, &reader.key)
                .map_err(|why| {
                    // The tail reads every row once per relay: say it there, not once per
                    // subscriber catching up.
                    if org.is_none() {
                        why.report(&ev.id);
                    }
                })
                .ok()
        })
        .collect();
    Ok(Page {
        events,
        cursor: after,
        more,
        bytes: read.bytes,
    })
}

/// The current snapshot: the cursor of a subscriber that starts live, from now.
pub async fn now(client: &deadpool_postgres::Client) -> anyhow::Result<Cursor> {
    let (snapshot, at) = crate::db::claims::stream_now(client).await?;
    Ok(Cursor::at_snapshot(snapshot, at))
}

/// Why a row cannot be streamed (webhooks still get it when it has a type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unstreamable {
    NoType,
    BadPayload,
    /// SSE's `event:` field ends at a line break: the rest would become fields of its own.
    LineBreakInType,
}

impl Unstreamable {
    /// Logs and counts a row left out of every stream, so that nothing is dropped quietly.
    fn report(self, event_id: &str) {
        let (reason, why) = match self {
            Self::NoType => ("no_event_type", "its event_type is NULL"),
            Self::BadPayload => ("bad_payload", "its payload is not JSON"),
            Self::LineBreakInType => (
                "event_type_line_break",
                "its event_type holds a line break, which SSE cannot carry",
            ),
        };
        tracing::warn!(
            event_id,
            reason,
            "event not sent to SSE subscribers: {why} (webhooks get it if it has a type)"
        );
        metrics::counter!(crate::observe::metrics::SSE_SKIPPED, "reason" => reason).increment(1);
    }
}

/// Builds the stream form of a row.
fn stream_event(
    ev: &Event,
    xid: u64,
    seq: i64,
    cursor: Cursor,
    key: &CursorKey,
) -> Result<StreamEvent, Unstreamable> {
    let (event_type, data) = ev.validate().map_err(|e| match e {
        crate::event::InvalidEvent::NoType => Unstreamable::NoType,
        crate::event::InvalidEvent::BadPayload(_) => Unstreamable::BadPayload,
    })?;
    if event_type.contains(['\n', '\r']) {
        return Err(Unstreamable::LineBreakInType);
    }
    let org_id = ev.org_id.as_deref().unwrap_or_default();
    let body = ev.envelope(event_type, &data, None);
    let frame = frame(&cursor.encode(key, org_id), event_type, &body);
    Ok(StreamEvent {
        xid,
        seq,
        org_id: org_id.into(),
        event_type: event_type.into(),
        cursor: Arc::new(cursor),
        frame,
    })
}

/// `frame` without its `event:` line: an unnamed message, which a browser's `EventSource`
/// hands to `onmessage`.
pub fn without_name(frame: &Bytes) -> Bytes {
    // `id: ...\nevent: ...\ndata: ...`: neither the id nor the name holds a line break.
    let id_end = frame
        .iter()
        .position(|&b| b == b'\n')
        .map_or(0, |at| at + 1);
    let rest = &frame[id_end..];
    if !rest.starts_with(b"event: ") {
        return frame.clone();
    }
    let name_end = rest
        .iter()
        .position(|&b| b == b'\n')
        .map_or(rest.len(), |at| at + 1);
    let mut out = Vec::with_capacity(frame.len() - name_end);
    out.extend_from_slice(&frame[..id_end]);
    out.extend_from_slice(&rest[name_end..]);
    Bytes::from(out)
}

/// One SSE message. `data` is JSON, but not always on one line: a payload column of type
/// `json` or `text` keeps the line breaks the app wrote (jsonb does not). In JSON they can
/// only be whitespace between tokens, so each line goes on a `data:` line of its own; a
/// client joins them with "\n" and reads the same JSON. (One `data:` line holding a line
/// break would end the field there and lose the rest.)
fn frame(id: &str, event_type: &str, data: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(id.len() + event_type.len() + data.len() + 24);
    out.extend_from_slice(b"id: ");
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(b"\nevent: ");
    out.extend_from_slice(event_type.as_bytes());
    let mut rest = data;
    loop {
        out.extend_from_slice(b"\ndata: ");
        let Some(at) = rest.iter().position(|&b| b == b'\n' || b == b'\r') else {
            out.extend_from_slice(rest);
            break;
        };
        out.extend_from_slice(&rest[..at]);
        // CR, LF and CRLF each end a line in SSE.
        let crlf = rest[at] == b'\r' && rest.get(at + 1) == Some(&b'\n');
        rest = &rest[at + if crlf { 2 } else { 1 }..];
    }
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::sse::cursor::Snapshot;

    fn key() -> CursorKey {
        CursorKey::derive(b"k")
    }

    #[test]
    fn frames_are_sse_messages() {
        let f = frame("c1", "PROJECT.UPDATED", br#"{"a":1}"#);
        let text = std::str::from_utf8(&f).unwrap();
        assert!(text.starts_with("id: c1\nevent: PROJECT.UPDATED\n"));
        assert!(text.ends_with("\ndata: {\"a\":1}\n\n"));
    }

    #[test]
    fn an_unnamed_frame_is_the_frame_without_its_event_line() {
        let f = frame("c1", "PROJECT.UPDATED", b"{\"a\":\n1}");
        assert_eq!(
            &without_name(&f)[..],
            b"id: c1\ndata: {\"a\":\ndata: 1}\n\n"
        );
        let no_name = Bytes::from_static(b"id: c1\ndata: {}\n\n");
        assert_eq!(without_name(&no_name), no_name);
    }

    #[test]
    fn a_frame_can_carry_another_id() {
        let ev = Event {
            id: "1".into(),
            event_type: Some("A.B".into()),
            org_id: Some("o".into()),
            payload: Some("{\"x\":\n1}".into()),
            ..Event::default()
        };
        let tail = Cursor::at_snapshot(Snapshot::empty(), 1);
        let mine = Cursor::at_snapshot(Snapshot::parse("5:9:6").unwrap(), 2);
        let e = stream_event(&ev, 5, 1, tail, &key()).unwrap();
        let again = stream_event(&ev, 5, 1, mine.clone(), &key()).unwrap();
        assert_eq!(e.frame_at(&mine, &key()), again.frame);
        let id = std::str::from_utf8(&again.frame)
            .unwrap()
            .lines()
            .next()
            .unwrap();
        let id = id.strip_prefix("id: ").unwrap();
        assert_eq!(
            Cursor::decode(id, &key(), "o"),
            Ok(mine),
            "signed for the event's org"
        );
    }

    #[test]
    fn line_breaks_in_data_become_data_lines() {
        let f = frame("c", "T", b"{\"a\":\n1,\r\n\"b\":\r2}");
        let text = std::str::from_utf8(&f).unwrap();
        assert!(
            text.ends_with("\nevent: T\ndata: {\"a\":\ndata: 1,\ndata: \"b\":\ndata: 2}\n\n"),
            "{text:?}"
        );
    }

    #[test]
    fn rows_that_would_break_framing_are_not_streamed() {
        let ev = |t: Option<&str>| Event {
            id: "1".into(),
            event_type: t.map(Into::into),
            org_id: Some("o".into()),
            payload: Some("{}".into()),
            ..Event::default()
        };
        let c = Cursor::at_snapshot(Snapshot::empty(), 1);
        for (t, why) in [
            (Some("A\nB"), Unstreamable::LineBreakInType),
            (Some("A\rB"), Unstreamable::LineBreakInType),
            (None, Unstreamable::NoType),
        ] {
            let got = stream_event(&ev(t), 5, 1, c.clone(), &key());
            assert_eq!(got.err(), Some(why), "{t:?}");
        }
        let ok = stream_event(&ev(Some("A.B")), 5, 1, c, &key()).unwrap();
        assert!(!std::str::from_utf8(&ok.frame).unwrap().contains("attempt"));
    }
}
