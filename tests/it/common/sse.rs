//! A small Server-Sent Events client over reqwest, parsing the wire format as the HTML spec
//! says (fields, comments, blank-line dispatch), so tests see exactly what a browser would.

use std::time::Duration;

use futures_util::StreamExt;

/// The key test relays check subscriber tokens with.
pub const SSE_SECRET: &str = "sse-test-secret-0123456789";

/// TOML enabling SSE with the test key.
pub fn sse_toml(heartbeat: &str) -> String {
    format!("[sse]\ntoken_secret = \"{SSE_SECRET}\"\nheartbeat = \"{heartbeat}\"\n")
}

/// A token for `org`, valid for an hour.
pub fn token(org: &str, types: Option<&[&str]>) -> String {
    outbox_relay::http::sse::token::mint(SSE_SECRET.as_bytes(), org, types, 3600)
}

/// One dispatched message.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub id: Option<String>,
    pub event: String,
    pub data: String,
}

impl Message {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).unwrap()
    }
    /// The event id in the envelope.
    pub fn event_id(&self) -> String {
        self.json()["id"].as_str().unwrap().to_owned()
    }
}

pub struct SseClient {
    stream: futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buf: Vec<u8>,
    /// Comments (heartbeats) and `retry:` values seen so far.
    pub comments: usize,
    pub retry: Option<String>,
    /// The last `id:` seen, as a browser keeps it for reconnecting.
    pub last_id: Option<String>,
}

/// How a connection attempt was answered when it was not a stream.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub body: String,
}

/// Connects to `base/v1/events` with `query` (e.g. `types=A.*`), a bearer token and a
/// Last-Event-ID.
pub async fn connect(
    base: &str,
    token: Option<&str>,
    query: &str,
    last_event_id: Option<&str>,
) -> Result<SseClient, Refused> {
    let mut req = reqwest::Client::new()
        .get(format!("{base}/v1/events?{query}"))
        .header("accept", "text/event-stream");
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id);
    }
    let resp = req.send().await.expect("the relay answers HTTP");
    if !resp.status().is_success() {
        return Err(Refused {
            status: resp.status().as_u16(),
            body: resp.text().await.unwrap_or_default(),
        });
    }
    assert_eq!(
        resp.headers()["content-type"],
        "text/event-stream",
        "an SSE response"
    );
    Ok(SseClient {
        stream: resp.bytes_stream().boxed(),
        buf: Vec::new(),
        comments: 0,
        retry: None,
        last_id: None,
    })
}

impl SseClient {
    /// The next message, None when the server closed the stream. Panics after `limit`.
    pub async fn next_within(&mut self, limit: Duration) -> Option<Message> {
        tokio::time::timeout(limit, self.next_message())
            .await
            .unwrap_or_else(|_| panic!("no SSE message within {limit:?}"))
    }

    /// The next message, waiting at most PATIENCE.
    pub async fn next(&mut self) -> Option<Message> {
        self.next_within(super::PATIENCE).await
    }

    /// The next `n` messages.
    pub async fn take(&mut self, n: usize) -> Vec<Message> {
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            match self.next().await {
                Some(m) => out.push(m),
                None => panic!("stream ended after {i} of {n} messages"),
            }
        }
        out
    }

    async fn next_message(&mut self) -> Option<Message> {
        let (mut id, mut event, mut data): (Option<String>, String, Option<String>) =
            (None, String::new(), None);
        loop {
            while let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                let line = String::from_utf8(line[..line.len() - 1].to_vec()).unwrap();
                if line.is_empty() {
                    if let Some(data) = data.take() {
                        if id.is_some() {
                            self.last_id = id.clone();
                        }
                        let event = if event.is_empty() {
                            "message".into()
                        } else {
                            event
                        };
                        return Some(Message { id, event, data });
                    }
                    (id, event) = (None, String::new());
                    continue;
                }
                if line.starts_with(':') {
                    self.comments += 1;
                    continue;
                }
                let (field, value) = match line.split_once(':') {
                    Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                    None => (line.as_str(), ""),
                };
                match field {
                    "id" => id = Some(value.to_owned()),
                    "event" => event = value.to_owned(),
                    "data" => {
                        let d = data.get_or_insert_with(String::new);
                        if !d.is_empty() {
                            d.push('\n');
                        }
                        d.push_str(value);
                    }
                    "retry" => self.retry = Some(value.to_owned()),
                    _ => {}
                }
            }
            match self.stream.next().await {
                Some(Ok(chunk)) => self.buf.extend_from_slice(&chunk),
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// Reads for `d`, returning the messages that arrived (heartbeats are counted).
    pub async fn read_for(&mut self, d: Duration) -> Vec<Message> {
        let deadline = tokio::time::Instant::now() + d;
        let mut out = Vec::new();
        while let Ok(Some(m)) = tokio::time::timeout_at(deadline, self.next_message()).await {
            out.push(m);
        }
        out
    }

    /// Asserts no message arrives within `quiet` (used after a marker proved delivery is
    /// flowing, so the wait only bounds how long a stray message would take).
    pub async fn assert_quiet(&mut self, quiet: Duration) {
        let stray = self.read_for(quiet).await;
        assert!(stray.is_empty(), "unexpected SSE messages: {stray:?}");
    }
}

/// `n` events of `org` in one transaction, in insertion order.
pub async fn publish_many(client: &tokio_postgres::Client, org: &str, n: usize) -> Vec<String> {
    client
        .query(
            "INSERT INTO \"OutboxEvent\" (event_type, org_id, payload)
             SELECT 'BULK.EVENT', $1, jsonb_build_object('n', g)
               FROM generate_series(1, $2::int) g ORDER BY g
             RETURNING id::text",
            &[&org, &(n as i32)],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}
