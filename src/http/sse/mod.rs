//! `GET /v1/events`: one subscriber's stream (contract section 5).
//!
//! Each connection gets a forwarder task: it catches up from the database when the client
//! resumes (or from the snapshot current when it connected), then relays the tail's pages
//! from the [`Hub`], skipping what the catch-up already sent. It writes into a small
//! per-connection buffer; a client that leaves it full for [`SLOW_CONSUMER_TIMEOUT`] is cut
//! off, so a subscriber that stops reading costs bounded memory and nobody else waits.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use bytes::Bytes;
use deadpool_postgres::Pool;
use jsonwebtoken::DecodingKey;
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

pub mod cors;
pub mod token;

use super::{App, ConnKill};
use crate::sinks::sse::cursor::{Advance, Cursor, Snapshot};
use crate::sinks::sse::{read, Hub, OrgPage, StreamEvent, Subscribed};
use token::{authorize, Denied, Grant};

/// Bytes buffered per subscriber between its forwarder and its socket (beyond what the
/// kernel's socket buffers hold). A single larger message still goes through, alone.
pub const BUFFER_BYTES: usize = 1 << 20;
/// Most bytes joined into one write.
const WRITE_CHUNK: usize = 64 * 1024;
/// Writes queued per subscriber; the byte budget is what really bounds the queue.
const BUFFER_WRITES: usize = 1024;

/// A queued write and its share of the subscriber's byte budget, returned once the
/// response body hands the bytes to the connection.
type Write = (Bytes, OwnedSemaphorePermit);
/// How long a subscriber's buffer may stay full before it is disconnected.
pub const SLOW_CONSUMER_TIMEOUT: Duration = Duration::from_secs(10);
/// Rows per catch-up read.
const CATCH_UP_PAGE: usize = 500;
/// A comment line: keeps proxies from closing an idle stream.
const HEARTBEAT: &[u8] = b":\n\n";
/// The reconnection delay clients are told to use.
const RETRY_MS: u64 = 2000;
/// Catch-up reads running at once on this relay, whatever the number of subscribers
/// resuming: the rest wait their turn, one page at a time. Half the SSE pool, so that new
/// subscribers can still take their starting snapshot while a crowd catches up, and so
/// that one token's replays cost the database at most this many busy backends.
pub const CATCH_UP_READS: usize = crate::db::SSE_POOL_SIZE / 2;

/// What the SSE endpoint needs.
pub struct SseState {
    pub hub: Arc<Hub>,
    pub pool: Pool,
    /// The stream statement and the key cursors are signed with.
    pub reader: read::Reader,
    /// At most [`CATCH_UP_READS`] catch-up reads at once.
    pub catch_up: Semaphore,
    pub key: DecodingKey,
    pub heartbeat: Duration,
    /// COMPLETED rows older than this may be gone: older cursors cannot resume exactly.
    pub retention: Option<Duration>,
    /// The longest a subscriber token may live (`sse.max_token_lifetime`).
    pub max_token_lifetime: Duration,
    /// Streams open now, at most `sse.max_subscribers`.
    pub streams: super::limits::Gate,
}

#[derive(Debug, Deserialize)]
pub struct Params {
    access_token: Option<String>,
    types: Option<String>,
    last_event_id: Option<String>,
    /// Events without their `event:` line, so that a browser's `EventSource` hands every
    /// one to `onmessage` (it has no listener for all names); the type is in the envelope.
    #[serde(default)]
    unnamed: bool,
}

pub async fn events(
    State(app): State<Arc<App>>,
    kill: Option<Extension<ConnKill>>,
    headers: HeaderMap,
    Query(params): Query<Params>,
) -> Response {
    let Some(sse) = app.sse.as_ref() else {
        return (
            StatusCode::NOT_FOUND,
            "SSE is disabled ([sse] enabled = false)\n",
        )
            .into_response();
    };
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let token = bearer.or(params.access_token.as_deref());
    let grant = match authorize(
        &sse.key,
        token,
        params.types.as_deref(),
        sse.max_token_lifetime,
    ) {
        Ok(g) => g,
        Err(Denied::Unauthorized(m)) => {
            return (StatusCode::UNAUTHORIZED, m + "\n").into_response()
        }
        Err(Denied::BadRequest(m)) => return (StatusCode::BAD_REQUEST, m + "\n").into_response(),
    };
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .or(params.last_event_id.as_deref())
        .filter(|s| !s.trim().is_empty());
    let resume = resume.map(|c| Cursor::decode(c, &sse.reader.key, &grant.org_id));
    let resume = match resume.transpose() {
        Ok(c) => c,
        Err(e) => {
            return (StatusCode::BAD_REQUEST, format!("Last-Event-ID: {e}\n")).into_response()
        }
    };
    let Some(place) = sse.streams.enter() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "5")],
            "too many SSE subscribers on this relay (sse.max_subscribers); retry shortly\n",
        )
            .into_response();
    };
    // Join the org's channel before reading anything, so no page published meanwhile is lost.
    let (live, subscribed) = sse.hub.subscribe(&grant.org_id);
    // A stream without a cursor starts at the snapshot taken now, before the response goes
    // out: whatever commits after the client sees the connection open is sent to it.
    let start = match resume {
        Some(c) => Start::Resume(c),
        None => match now(&sse.pool).await {
            Ok(c) => Start::Live(c),
            Err(e) => {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "SSE connection refused: database unavailable"
                );
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "database unavailable; retry shortly\n",
                )
                    .into_response();
            }
        },
    };
    let (out, frames) = mpsc::channel::<Write>(BUFFER_WRITES);
    let kill = kill.map(|k| k.0 .0).unwrap_or_default();
    let asked = Asked {
        grant,
        unnamed: params.unnamed,
    };
    tokio::spawn(forward(
        app.clone(),
        asked,
        start,
        live,
        (subscribed, place),
        out,
        kill,
    ));
    let body = futures_util::stream::unfold(frames, |mut frames| async move {
        frames
            .recv()
            .await
            // The permit drops here: hyper now holds the bytes, and the budget frees up.
            .map(|(bytes, _permit)| (Ok::<_, Infallible>(bytes), frames))
    });
    let mut resp = Body::from_stream(body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // nginx: do not buffer this response.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

/// Where a stream begins.
enum Start {
    /// After a client's Last-Event-ID.
    Resume(Cursor),
    /// At the snapshot current when the client connected.
    Live(Cursor),
}

async fn now(pool: &Pool) -> anyhow::Result<Cursor> {
    read::now(&pool.get().await?).await
}

/// Why a forwarder stopped.
enum Stop {
    /// The client went away, or the relay is shutting down.
    Gone,
    /// The client stopped reading.
    Slow,
}

/// What a client asked for, once authorized: the org and types its token grants it, and
/// how its messages are framed.
struct Asked {
    grant: Grant,
    /// `?unnamed=true`.
    unnamed: bool,
}

async fn forward(
    app: Arc<App>,
    Asked { grant, unnamed }: Asked,
    start: Start,
    mut live: broadcast::Receiver<OrgPage>,
    _held: (Subscribed, OwnedSemaphorePermit),
    out: mpsc::Sender<Write>,
    kill: CancellationToken,
) {
    let sse = app.sse.as_ref().expect("checked by the handler");
    let mut f = Forwarder {
        sse,
        grant: &grant,
        unnamed,
        out: &out,
        budget: Arc::new(Semaphore::new(BUFFER_BYTES)),
    };
    match f.run(start, &mut live).await {
        Ok(Stop::Gone) => {}
        Ok(Stop::Slow) => {
            tracing::warn!(org_id = %grant.org_id, timeout = ?SLOW_CONSUMER_TIMEOUT, "SSE subscriber stopped reading; disconnected (it resumes from the database when it reconnects)");
            kill.cancel();
        }
        Err(e) => {
            tracing::warn!(org_id = %grant.org_id, error = format!("{e:#}"), "SSE stream ended: database unavailable; the client will reconnect");
            kill.cancel();
        }
    }
}

struct Forwarder<'a> {
    sse: &'a SseState,
    grant: &'a Grant,
    /// Frames go out without their `event:` line (`?unnamed=true`).
    unnamed: bool,
    out: &'a mpsc::Sender<Write>,
    budget: Arc<Semaphore>,
}

impl Forwarder<'_> {
    async fn run(
        &mut self,
        start: Start,
        live: &mut broadcast::Receiver<OrgPage>,
    ) -> anyhow::Result<Stop> {
        if let Some(stop) = self
            .send(Bytes::from(format!("retry: {RETRY_MS}\n\n")))
            .await
        {
            return Ok(stop);
        }
        let mut cursor = match start {
            Start::Resume(c) if self.expired(&c) => {
                let msg = serde_json::json!({
                    "error": "cursor_expired",
                    "message": "the Last-Event-ID is older than the relay's retention: events may have been purged; streaming from the oldest event kept",
                });
                if let Some(stop) = self
                    .send(Bytes::from(format!(
                        "event: cursor_expired\ndata: {msg}\n\n"
                    )))
                    .await
                {
                    return Ok(stop);
                }
                Cursor::at_snapshot(Snapshot::empty(), 0)
            }
            Start::Resume(c) | Start::Live(c) => c,
        };
        let mut heartbeat = tokio::time::interval(self.sse.heartbeat);
        heartbeat.reset();
        if let Some(stop) = self.wait_for_tail(&mut heartbeat).await {
            return Ok(stop);
        }
        loop {
            if let Some(stop) = self.catch_up(&mut cursor).await? {
                return Ok(stop);
            }
            // Live: the tail's pages, minus what the catch-up sent.
            loop {
                let page = tokio::select! {
                    p = live.recv() => p,
                    _ = heartbeat.tick() => {
                        if let Some(stop) = self.send(Bytes::from_static(HEARTBEAT)).await {
                            return Ok(stop);
                        }
                        continue;
                    }
                    _ = self.out.closed() => return Ok(Stop::Gone),
                };
                match page {
                    Ok(page) => {
                        let (frames, lost) = self.join(&mut cursor, &page);
                        let frames: Vec<&Bytes> = frames.iter().collect();
                        if let Some(stop) = self.send_all(&frames).await {
                            return Ok(stop);
                        }
                        if lost {
                            break; // read the rest from the database
                        }
                    }
                    // This task fell behind the tail (not the client): read the gap from
                    // the database.
                    Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Err(broadcast::error::RecvError::Closed) => return Ok(Stop::Gone),
                }
            }
        }
    }

    /// The frames of a tail page this subscriber has not been sent, moving `cursor` past
    /// them; true when the page cannot be followed from `cursor` (then the frames before
    /// that point are returned and the rest is for a database read).
    ///
    /// The catch-up ends at a snapshot of its own, which may fall between the two snapshots
    /// of the difference the tail is walking. Rows of that difference the catch-up already
    /// sent are skipped; the others are sent with this subscriber's own position as their id
    /// until it is level with the tail (see [`Cursor::advance`]).
    fn join(&self, cursor: &mut Cursor, page: &[StreamEvent]) -> (Vec<Bytes>, bool) {
        let mut frames = Vec::new();
        for e in page {
            if cursor.covers(e.xid, e.seq) {
                continue;
            }
            let own = match cursor.advance(&e.cursor) {
                Advance::Tail => None,
                Advance::Ahead(c) => Some(c),
                Advance::Unknown => return (frames, true),
            };
            if self.grant.wants(&e.event_type) {
                frames.push(match &own {
                    None => e.frame.clone(),
                    Some(c) => e.frame_at(c, &self.sse.reader.key),
                });
            }
            *cursor = own.unwrap_or_else(|| (*e.cursor).clone());
        }
        (frames, false)
    }

    /// Waits, with heartbeats, for the tail reader to start ([`Hub::tail_running`]): only a
    /// catch-up that ends after the tail's first snapshot leaves nothing between the two. A
    /// client that connects while the relay is starting (looking for its table, waiting for
    /// a broker) is held open meanwhile, not refused: a browser's `EventSource` would not
    /// retry a refusal.
    ///
    /// [`Hub::tail_running`]: crate::sinks::sse::Hub::tail_running
    async fn wait_for_tail(&self, heartbeat: &mut tokio::time::Interval) -> Option<Stop> {
        let running = self.sse.hub.tail_running();
        tokio::pin!(running);
        loop {
            tokio::select! {
                _ = &mut running => return None,
                _ = heartbeat.tick() => {
                    if let Some(stop) = self.send(Bytes::from_static(HEARTBEAT)).await {
                        return Some(stop);
                    }
                }
                _ = self.out.closed() => return Some(Stop::Gone),
            }
        }
    }

    /// Sends this org's rows after `cursor` from the database until level with now.
    async fn catch_up(&mut self, cursor: &mut Cursor) -> anyhow::Result<Option<Stop>> {
        loop {
            let page = {
                // Fair: subscribers waiting to read take turns, page by page.
                let _turn = self.sse.catch_up.acquire().await.expect("never closed");
                let client = self.sse.pool.get().await?;
                let page = read::next_page(
                    &client,
                    &self.sse.reader,
                    cursor,
                    Some(&self.grant.org_id),
                    CATCH_UP_PAGE,
                )
                .await?;
                crate::db::put_back(client, page.bytes);
                page
            };
            let frames: Vec<&Bytes> = page
                .events
                .iter()
                .filter(|e| self.grant.wants(&e.event_type))
                .map(|e| &e.frame)
                .collect();
            if let Some(stop) = self.send_all(&frames).await {
                return Ok(Some(stop));
            }
            *cursor = page.cursor;
            if !page.more {
                return Ok(None);
            }
        }
    }

    /// Queues a page's frames in few writes (the socket, not the fan-out, is what costs),
    /// each at most [`WRITE_CHUNK`] unless a single frame is larger.
    async fn send_all(&self, frames: &[&Bytes]) -> Option<Stop> {
        let mut chunk = bytes::BytesMut::new();
        for f in frames {
            let f = if self.unnamed {
                read::without_name(f)
            } else {
                (*f).clone()
            };
            if !chunk.is_empty() && chunk.len() + f.len() > WRITE_CHUNK {
                if let Some(stop) = self.send(chunk.split().freeze()).await {
                    return Some(stop);
                }
            }
            if chunk.is_empty() && f.len() >= WRITE_CHUNK {
                if let Some(stop) = self.send(f).await {
                    return Some(stop);
                }
                continue;
            }
            chunk.extend_from_slice(&f);
        }
        if chunk.is_empty() {
            return None;
        }
        self.send(chunk.freeze()).await
    }

    /// Queues bytes for the socket, within the subscriber's byte budget. Some(stop) when the
    /// client is gone, or has not made room for [`SLOW_CONSUMER_TIMEOUT`].
    async fn send(&self, bytes: Bytes) -> Option<Stop> {
        let want = bytes.len().clamp(1, BUFFER_BYTES) as u32;
        let queued = async {
            let permit = self
                .budget
                .clone()
                .acquire_many_owned(want)
                .await
                .expect("never closed");
            self.out.send((bytes, permit)).await
        };
        match tokio::time::timeout(SLOW_CONSUMER_TIMEOUT, queued).await {
            Ok(Ok(())) => None,
            Ok(Err(_)) => Some(Stop::Gone),
            Err(_) => Some(Stop::Slow),
        }
    }

    fn expired(&self, c: &Cursor) -> bool {
        let Some(retention) = self.sse.retention else {
            return false;
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs() as i64;
        c.at < now - retention.as_secs() as i64
    }
}
