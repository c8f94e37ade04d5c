//! What HTTP clients may hold of a relay: connections, SSE streams, and through them file
//! descriptors, which the relay's database and webhook connections need too.
//!
//! Without bounds, clients that connect and send nothing (or a header line now and then)
//! kept their sockets forever; a few hundred of them used up the open-file limit, and the
//! relay could then open neither database connections nor answer `/healthz`, so delivery
//! stopped until they left. Now:
//!
//! - a client has [`crate::config::HttpConfig::header_timeout`] to send a complete request head, counted
//!   from when it connects and, on a kept-alive connection, from the end of the previous
//!   response (hyper's header read timeout, which also bounds idle keep-alive);
//! - at most `http.max_connections` connections are served at once; past that, a new one is
//!   answered `503` and closed (within half a second; a flood at once), before it can hold
//!   anything;
//! - at most `sse.max_subscribers` of them are SSE streams (a stream holds its connection
//!   for as long as the client likes); past that, `503` with `Retry-After`;
//! - at start the soft open-file limit is raised to the hard one, and the connection cap is
//!   lowered, with a warning, if it would leave fewer descriptors than the relay's own
//!   connections need ([`reserved_descriptors`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::config::Config;

/// Descriptors kept apart from the relay's connections whatever the config: standard streams,
/// the listening socket, the runtime's epoll and event descriptors, files the relay reads
/// (`/proc`, config, `file:` secrets), refused connections lingering ([`LINGERING_REFUSALS`]),
/// and slack for connections being replaced.
const SPARE_DESCRIPTORS: u64 = 64;

/// The fewest HTTP connections worth running with: below this, the relay refuses to start.
const MIN_CONNECTIONS: u64 = 8;

/// The answer to a connection over the cap: written straight to the socket, without reading
/// the request, which is the cheapest thing to do with a flood.
const OVER_CAPACITY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: text/plain; charset=utf-8\r\nretry-after: 5\r\nconnection: close\r\n\
content-length: 71\r\n\r\n\
too many connections to this relay (http.max_connections); retry later\n";

/// Descriptors the relay's own connections can need at once: both database pools, the
/// LISTEN and wake-lock connections, a connection per request a webhook may have in flight,
/// one per NATS or Redis sink, and [`SPARE_DESCRIPTORS`].
pub fn reserved_descriptors(cfg: &Config) -> u64 {
    let database = (crate::db::POOL_SIZE + crate::db::SSE_POOL_SIZE + 2) as u64;
    let webhooks: u64 = cfg.webhooks.iter().map(|w| w.max_in_flight as u64).sum();
    let brokers = (cfg.nats.len() + cfg.redis.len()) as u64;
    database + webhooks + brokers + SPARE_DESCRIPTORS
}

/// The HTTP connection cap that fits the process's open-file limit, after raising its soft
/// limit to the hard one. `wanted` is `http.max_connections`.
pub fn connection_cap(cfg: &Config, wanted: usize) -> anyhow::Result<usize> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let limit = if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(_) => soft,
        }
    } else {
        soft
    };
    let reserved = reserved_descriptors(cfg);
    let fits = limit.saturating_sub(reserved);
    if fits < MIN_CONNECTIONS {
        anyhow::bail!(
            "the open-file limit ({limit}) leaves no room for HTTP clients: the relay's own \
             database and webhook connections need up to {reserved}; raise it (LimitNOFILE= \
             in the systemd unit, ulimit -n) or lower the webhooks' max_in_flight"
        );
    }
    if (wanted as u64) > fits {
        tracing::warn!(
            open_file_limit = limit,
            reserved_for_the_relay = reserved,
            max_connections = wanted,
            serving_at_most = fits,
            "http.max_connections does not fit the open-file limit; serving fewer HTTP \
             connections so that clients can never take the descriptors the database and \
             webhook connections need (raise LimitNOFILE= or ulimit -n)"
        );
        return Ok(fits as usize);
    }
    Ok(wanted)
}

/// One bounded resource clients hold (connections, or SSE streams), with what was refused.
pub struct Gate {
    what: &'static str,
    key: &'static str,
    permits: Arc<Semaphore>,
    max: usize,
    refused: AtomicU64,
    /// When a refusal was last logged, and how many went unlogged since.
    logged: Mutex<(Option<Instant>, u64)>,
}

/// Refusals are logged at most this often, each line with the count since the last.
const LOG_EVERY: Duration = Duration::from_secs(10);

impl Gate {
    /// `key` names the setting in messages, `what` the resource in the metric's label.
    pub fn new(what: &'static str, key: &'static str, max: usize) -> Self {
        Self {
            what,
            key,
            permits: Arc::new(Semaphore::new(max)),
            max,
            refused: AtomicU64::new(0),
            logged: Mutex::new((None, 0)),
        }
    }

    /// A place, held until the permit drops; `None` (counted and logged) when full.
    pub fn enter(&self) -> Option<OwnedSemaphorePermit> {
        if let Ok(p) = self.permits.clone().try_acquire_owned() {
            return Some(p);
        }
        self.refused.fetch_add(1, Ordering::Relaxed);
        ::metrics::counter!(crate::observe::metrics::HTTP_REFUSED, "limit" => self.what)
            .increment(1);
        let mut logged = self.logged.lock().expect("not poisoned");
        logged.1 += 1;
        if logged.0.is_none_or(|at| at.elapsed() >= LOG_EVERY) {
            tracing::warn!(
                limit = self.key,
                max = self.max,
                refused = logged.1,
                "refusing clients: the limit is reached (503); raise it if these are \
                 legitimate clients"
            );
            *logged = (Some(Instant::now()), 0);
        }
        None
    }

    /// How many are held now.
    pub fn held(&self) -> usize {
        self.max - self.permits.available_permits()
    }

    /// Refusals since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// Refused connections that may linger at once (see [`refuse`]).
pub const LINGERING_REFUSALS: usize = 32;
/// How long a refused connection may linger.
const LINGER: Duration = Duration::from_millis(500);

/// Answers a connection over the cap and lets it go. The answer goes out at once (it fits
/// in a fresh socket's send buffer). Closing a socket with unread input resets it, and the
/// client may then never see the answer; so what it sent is read and dropped for up to
/// [`LINGER`] first, by at most [`LINGERING_REFUSALS`] connections at a time (a flood
/// beyond that is closed at once: descriptors matter more than its manners).
pub fn refuse(stream: tokio::net::TcpStream, lingering: &Arc<Semaphore>) {
    let _ = stream.try_write(OVER_CAPACITY);
    let Ok(place) = lingering.clone().try_acquire_owned() else {
        return;
    };
    tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut stream = stream;
        let mut sink = [0u8; 1024];
        let _ = tokio::time::timeout(LINGER, async {
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
            while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
        })
        .await;
        drop(place);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_is_a_well_formed_response() {
        let text = std::str::from_utf8(OVER_CAPACITY).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(body.len(), length);
    }

    #[test]
    fn a_gate_refuses_past_its_max_and_takes_again_once_a_place_frees() {
        let gate = Gate::new("sse", "sse.max_subscribers", 2);
        let a = gate.enter().unwrap();
        let _b = gate.enter().unwrap();
        assert!(gate.enter().is_none());
        assert_eq!((gate.held(), gate.refused()), (2, 1));
        drop(a);
        assert!(gate.enter().is_some());
    }
}
