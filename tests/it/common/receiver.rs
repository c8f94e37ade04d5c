//! A real HTTP webhook receiver on 127.0.0.1:0 that records every request, verifies its
//! signature with the `standardwebhooks` crate (the reference implementation, not our own
//! signing code), and answers as the test's script says: any status, late, or not at all
//! (the connection is closed without an answer). It can also go down (its port refuses
//! connections) and come back on the same port.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// One request as received.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: String,
    pub attempt: u64,
    pub event_type: String,
    /// The body parsed; `Null` when it is not JSON serde_json can read (e.g. nested deeper
    /// than its recursion limit): `raw` has it as sent.
    pub body: serde_json::Value,
    pub raw: Bytes,
    pub headers: HeaderMap,
    /// The signature verified with the reference library.
    pub verified: bool,
    /// The status this receiver answered (0: it closed the connection instead).
    pub answered: u16,
    /// When the request arrived, for tests that bound how late an event may be.
    pub received: std::time::Instant,
}

/// What to answer.
#[derive(Debug, Clone)]
pub struct Reply {
    /// 0: close the connection without answering (the sender sees a reset).
    pub status: u16,
    pub delay: Duration,
    pub retry_after: Option<String>,
}

impl Reply {
    pub fn ok() -> Self {
        Self::status(200)
    }
    pub fn status(status: u16) -> Self {
        Self {
            status,
            delay: Duration::ZERO,
            retry_after: None,
        }
    }
    pub fn delayed(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }
    /// Closes the connection without an answer.
    pub fn reset() -> Self {
        Self::status(0)
    }
    pub fn retry_after(mut self, value: &str) -> Self {
        self.retry_after = Some(value.to_owned());
        self
    }
}

/// `script(id, nth)`: the reply to the nth (1-based) request for event `id`.
pub type Script = Arc<dyn Fn(&str, usize) -> Reply + Send + Sync>;

struct Inner {
    deliveries: Mutex<Vec<Delivery>>,
    per_id: Mutex<HashMap<String, usize>>,
    script: Mutex<Script>,
    verifier: standardwebhooks::Webhook,
    arrived: Notify,
}

#[derive(Clone)]
pub struct Receiver {
    inner: Arc<Inner>,
    pub url: String,
    addr: std::net::SocketAddr,
    /// Cancels the accept loop and every open connection (see [`Receiver::stop`]).
    serving: Arc<Mutex<CancellationToken>>,
}

impl Receiver {
    /// Starts a receiver that answers 200 to everything.
    pub async fn start() -> Self {
        Self::with_script(Arc::new(|_, _| Reply::ok())).await
    }

    pub async fn with_script(script: Script) -> Self {
        let inner = Arc::new(Inner {
            deliveries: Mutex::default(),
            per_id: Mutex::default(),
            script: Mutex::new(script),
            verifier: standardwebhooks::Webhook::new(super::SECRET).unwrap(),
            arrived: Notify::new(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let serving = CancellationToken::new();
        tokio::spawn(serve(listener, inner.clone(), serving.clone()));
        Self {
            inner,
            url: format!("http://{addr}/hook"),
            addr,
            serving: Arc::new(Mutex::new(serving)),
        }
    }

    /// Goes down: the port refuses connections and open ones are closed.
    pub fn stop(&self) {
        self.serving.lock().unwrap().cancel();
    }

    /// Comes back on the same port.
    pub async fn resume(&self) {
        let listener = tokio::net::TcpListener::bind(self.addr)
            .await
            .expect("rebinding the receiver's port");
        let serving = CancellationToken::new();
        tokio::spawn(serve(listener, self.inner.clone(), serving.clone()));
        *self.serving.lock().unwrap() = serving;
    }

    /// Changes how it answers from now on.
    pub fn set_script(&self, script: Script) {
        *self.inner.script.lock().unwrap() = script;
    }

    pub fn deliveries(&self) -> Vec<Delivery> {
        self.inner.deliveries.lock().unwrap().clone()
    }

    /// Requests answered 2xx, per event id.
    pub fn accepted_counts(&self) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for d in self
            .deliveries()
            .iter()
            .filter(|d| (200..300).contains(&d.answered))
        {
            *m.entry(d.id.clone()).or_default() += 1;
        }
        m
    }

    /// Waits (on arrivals, not on a clock) until `cond` holds over the deliveries so far;
    /// panics when requests stop coming ([`super::StallDeadline`]).
    pub async fn wait_for(&self, what: &str, cond: impl Fn(&[Delivery]) -> bool) {
        let mut deadline = super::StallDeadline::new();
        loop {
            let arrived = self.inner.arrived.notified();
            if cond(&self.inner.deliveries.lock().unwrap()) {
                return;
            }
            if tokio::time::timeout_at(deadline.at(), arrived)
                .await
                .is_err()
            {
                let n = self.inner.deliveries.lock().unwrap().len();
                panic!("timed out waiting for: {what} ({n} requests received)");
            }
            deadline.progressed();
        }
    }

    /// Waits until every id in `ids` was accepted at least once.
    pub async fn wait_accepted(&self, ids: &[String]) {
        let want: std::collections::HashSet<&String> = ids.iter().collect();
        self.wait_for(&format!("{} events accepted", ids.len()), |ds| {
            let got: std::collections::HashSet<&String> = ds
                .iter()
                .filter(|d| (200..300).contains(&d.answered))
                .map(|d| &d.id)
                .collect();
            want.is_subset(&got)
        })
        .await;
    }
}

/// Accepts until `stop`, serving each connection with HTTP/1.1 until `stop` too.
async fn serve(listener: tokio::net::TcpListener, inner: Arc<Inner>, stop: CancellationToken) {
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
            _ = stop.cancelled() => return,
        };
        let inner = inner.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let inner = inner.clone();
                async move {
                    let (parts, body) = req.into_parts();
                    let body = axum::body::to_bytes(Body::new(body), usize::MAX)
                        .await
                        .unwrap_or_default();
                    handle(inner, parts.headers, body).await
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

/// Answers one request; an Err makes hyper close the connection without an answer.
async fn handle(
    inner: Arc<Inner>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, std::io::Error> {
    let verified = inner.verifier.verify(&body, &headers).is_ok();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let nth = {
        let mut m = inner.per_id.lock().unwrap();
        let n = m.entry(id.clone()).or_default();
        *n += 1;
        *n
    };
    let script = inner.script.lock().unwrap().clone();
    let reply = script(&id, nth);
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    inner.deliveries.lock().unwrap().push(Delivery {
        attempt: json["attempt"].as_u64().unwrap_or(0),
        event_type: json["type"].as_str().unwrap_or("").to_owned(),
        id,
        body: json,
        raw: body,
        headers,
        verified,
        answered: reply.status,
        received: std::time::Instant::now(),
    });
    inner.arrived.notify_waiters();
    if reply.status == 0 {
        return Err(std::io::Error::other("scripted reset"));
    }
    let mut resp = StatusCode::from_u16(reply.status).unwrap().into_response();
    if let Some(ra) = reply.retry_after {
        resp.headers_mut()
            .insert("retry-after", ra.parse().unwrap());
    }
    Ok(resp)
}
