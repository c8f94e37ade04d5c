//! The webhook receiver: hyper HTTP/1.1 on a thread of its own (a `current_thread`
//! runtime), so it takes at most one core from the relay it measures and its CPU can be read
//! apart from the rest of the bench.
//!
//! Every request's signature is verified with HMAC-SHA256 over `id.timestamp.body` and the
//! key decoded once. Not the `standardwebhooks` crate: measured on the 2-core machine with a
//! 414-byte body, its `verify` takes 2.3 us against 0.4 us here, in a receiver whose whole
//! request costs about 6 us of CPU. The event's number is read from the body
//! (`"bench_n": N` in the payload); each endpoint keeps a bit per number (unique or
//! duplicate) and the receipt time of its first delivery, on [`now_ns`]'s clock, which the
//! load generator shares.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, LazyLock};
use std::thread::JoinHandle;
use std::time::Instant;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use memchr::memmem;
use serde_json::{json, Value};
use sha2::Sha256;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::common::number_after;

/// The one clock of the bench: receipts, commits and the relay's start.
pub static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Nanoseconds since [`EPOCH`].
pub fn now_ns() -> u64 {
    ns_at(Instant::now())
}

/// An instant as nanoseconds since [`EPOCH`].
pub fn ns_at(t: Instant) -> u64 {
    t.saturating_duration_since(*EPOCH).as_nanos() as u64
}

static N_KEY: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"bench_n\":"));

/// How an endpoint answers a request whose signature verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// 200 to everything.
    Healthy,
    /// 500 to every other request (the 2nd, 4th, ...): half its requests fail.
    FailHalf,
    /// 500 to everything: an endpoint that is down.
    Down,
}

impl Behaviour {
    pub fn name(self) -> &'static str {
        match self {
            Behaviour::Healthy => "healthy",
            Behaviour::FailHalf => "fails_half",
            Behaviour::Down => "down",
        }
    }
}

/// The receiver's thread and runtime; endpoints are opened on it.
pub struct Receiver {
    handle: tokio::runtime::Handle,
    /// Ends the runtime, and with it every endpoint; cancelled on drop.
    quit: CancellationToken,
    thread: Option<JoinHandle<()>>,
    tid: i32,
}

impl Receiver {
    pub fn start() -> anyhow::Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = rt.handle().clone();
        let quit = CancellationToken::new();
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new().name("receiver".into()).spawn({
            let quit = quit.clone();
            move || {
                let _ = tid_tx.send(nix::unistd::gettid().as_raw());
                rt.block_on(quit.cancelled());
            }
        })?;
        let tid = tid_rx.recv()?;
        Ok(Self {
            handle,
            quit,
            thread: Some(thread),
            tid,
        })
    }

    /// The receiver thread's id, for its CPU time.
    pub fn tid(&self) -> i32 {
        self.tid
    }

    /// Opens an endpoint on 127.0.0.1:0 that expects event numbers below `capacity`. It
    /// closes (listener and connections) when the returned [`Endpoint`] is dropped.
    pub fn endpoint(
        &self,
        key: &[u8],
        behaviour: Behaviour,
        capacity: usize,
    ) -> anyhow::Result<Endpoint> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let counts = Arc::new(Counts::new(key, behaviour, capacity));
        let stop = self.quit.child_token();
        self.handle
            .spawn(accept_loop(listener, counts.clone(), stop.clone()));
        Ok(Endpoint {
            addr,
            counts,
            _stop: stop.drop_guard(),
        })
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.quit.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One open endpoint.
pub struct Endpoint {
    pub addr: SocketAddr,
    pub counts: Arc<Counts>,
    /// Closes the endpoint when dropped.
    _stop: DropGuard,
}

impl Endpoint {
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }
}

/// What one endpoint has seen. Counters are read while it runs.
pub struct Counts {
    key: Hmac<Sha256>,
    pub behaviour: Behaviour,
    capacity: usize,
    /// One bit per event number: accepted at least once.
    seen: Vec<AtomicU64>,
    /// First acceptance of each event number, ns since [`EPOCH`]; 0: not yet.
    receipt_ns: Vec<AtomicU64>,
    pub requests: AtomicU64,
    /// Accepted, first time for its number.
    pub unique: AtomicU64,
    /// Accepted again although already accepted once.
    pub duplicates: AtomicU64,
    /// Signature missing or wrong (answered 401): must stay 0.
    pub bad_signature: AtomicU64,
    /// Answered 500 on purpose ([`Behaviour::FailHalf`], [`Behaviour::Down`]).
    pub refused: AtomicU64,
    /// Accepted, but without a number below `capacity`: must stay 0.
    pub unnumbered: AtomicU64,
    pub body_bytes: AtomicU64,
    /// First and last first-acceptance, ns since [`EPOCH`] (first: u64::MAX until one).
    pub first_ns: AtomicU64,
    pub last_ns: AtomicU64,
}

impl Counts {
    pub fn new(key: &[u8], behaviour: Behaviour, capacity: usize) -> Self {
        Self {
            key: Hmac::new_from_slice(key).expect("HMAC takes keys of any length"),
            behaviour,
            capacity,
            seen: (0..capacity.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            receipt_ns: (0..capacity).map(|_| AtomicU64::new(0)).collect(),
            requests: AtomicU64::new(0),
            unique: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            bad_signature: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            unnumbered: AtomicU64::new(0),
            body_bytes: AtomicU64::new(0),
            first_ns: AtomicU64::new(u64::MAX),
            last_ns: AtomicU64::new(0),
        }
    }

    pub fn unique(&self) -> u64 {
        self.unique.load(Relaxed)
    }

    /// When event `n` was first accepted (ns since [`EPOCH`]); 0 if never.
    pub fn receipt_ns(&self, n: usize) -> u64 {
        self.receipt_ns.get(n).map_or(0, |r| r.load(Relaxed))
    }

    /// One request: verify, answer as the behaviour says, record. Returns the status.
    pub fn receive(&self, headers: &HeaderMap, body: &[u8], now: u64) -> StatusCode {
        let request_no = self.requests.fetch_add(1, Relaxed);
        self.body_bytes.fetch_add(body.len() as u64, Relaxed);
        if !self.verify(headers, body) {
            self.bad_signature.fetch_add(1, Relaxed);
            return StatusCode::UNAUTHORIZED;
        }
        if (self.behaviour == Behaviour::FailHalf && request_no % 2 == 1)
            || self.behaviour == Behaviour::Down
        {
            self.refused.fetch_add(1, Relaxed);
            return StatusCode::INTERNAL_SERVER_ERROR;
        }
        let Some(n) = number_after(body, &N_KEY)
            .map(|n| n as usize)
            .filter(|&n| n < self.capacity)
        else {
            self.unnumbered.fetch_add(1, Relaxed);
            return StatusCode::OK;
        };
        let bit = 1u64 << (n % 64);
        if self.seen[n / 64].fetch_or(bit, Relaxed) & bit != 0 {
            self.duplicates.fetch_add(1, Relaxed);
        } else {
            self.receipt_ns[n].store(now, Relaxed);
            self.unique.fetch_add(1, Relaxed);
            self.first_ns.fetch_min(now, Relaxed);
            self.last_ns.fetch_max(now, Relaxed);
        }
        StatusCode::OK
    }

    /// Standard Webhooks: any `v1,<base64>` of the header equals HMAC(key, id.ts.body).
    fn verify(&self, headers: &HeaderMap, body: &[u8]) -> bool {
        let (Some(id), Some(ts), Some(sigs)) = (
            headers.get("webhook-id"),
            headers.get("webhook-timestamp"),
            headers.get("webhook-signature"),
        ) else {
            return false;
        };
        let mut mac = self.key.clone();
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(ts.as_bytes());
        mac.update(b".");
        mac.update(body);
        let tag = mac.finalize().into_bytes();
        sigs.as_bytes()
            .split(|&b| b == b' ')
            .filter_map(|s| s.strip_prefix(b"v1,"))
            .any(|b64| {
                let mut buf = [0u8; 48];
                matches!(B64.decode_slice(b64, &mut buf), Ok(32) if buf[..32] == tag[..])
            })
    }

    /// The counters as JSON.
    pub fn figures(&self) -> Value {
        let requests = self.requests.load(Relaxed);
        json!({
            "behaviour": self.behaviour.name(),
            "requests": requests,
            "unique": self.unique(),
            "duplicates": self.duplicates.load(Relaxed),
            "bad_signature": self.bad_signature.load(Relaxed),
            "refused_on_purpose": self.refused.load(Relaxed),
            "unnumbered": self.unnumbered.load(Relaxed),
            "mean_body_bytes": self.body_bytes.load(Relaxed) / requests.max(1),
        })
    }
}

async fn accept_loop(
    listener: std::net::TcpListener,
    counts: Arc<Counts>,
    stop: CancellationToken,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("  receiver: cannot listen: {e}");
            return;
        }
    };
    loop {
        let sock = tokio::select! {
            r = listener.accept() => match r {
                Ok((sock, _)) => sock,
                Err(_) => continue,
            },
            _ = stop.cancelled() => return,
        };
        let _ = sock.set_nodelay(true);
        let (counts, stop) = (counts.clone(), stop.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(req, counts.clone()));
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(sock), svc);
            tokio::select! {
                _ = conn => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

async fn handle(
    req: Request<Incoming>,
    counts: Arc<Counts>,
) -> Result<Response<Empty<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let status = match body.collect().await {
        Ok(body) => counts.receive(&parts.headers, &body.to_bytes(), now_ns()),
        Err(_) => StatusCode::BAD_REQUEST,
    };
    let mut resp = Response::new(Empty::new());
    *resp.status_mut() = status;
    Ok(resp)
}
