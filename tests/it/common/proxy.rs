//! A TCP proxy in front of PostgreSQL that can go silent: it keeps every open connection
//! (no FIN, no RST: the peers' TCP stacks stay happy) but stops forwarding a byte, as a
//! stateful firewall or NAT box that lost its entry does. New connections are forwarded
//! normally. This is the half-open connection keepalives do not catch.
//!
//! It can also count how often a byte string (a statement's text) goes by from the clients
//! to the server ([`Proxy::watching`]): for a test that must know a relay ran a statement
//! before it checks that nothing came of it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub struct Proxy {
    pub port: u16,
    /// Cancelled to black-hole the connections open so far; replaced by a fresh one.
    current: Arc<Mutex<CancellationToken>>,
    stop: CancellationToken,
    watch: Option<Arc<Watch>>,
}

/// A byte string to count in what the clients send, and how often it went by.
struct Watch {
    needle: Vec<u8>,
    seen: AtomicUsize,
}

impl Watch {
    /// Counts the needle in `chunk`; `carry` holds the end of the previous chunk, so an
    /// occurrence split between two reads counts too.
    fn count(&self, carry: &mut Vec<u8>, chunk: &[u8]) {
        carry.extend_from_slice(chunk);
        let found = carry
            .windows(self.needle.len())
            .filter(|w| *w == self.needle.as_slice())
            .count();
        self.seen.fetch_add(found, Ordering::SeqCst);
        let keep = self.needle.len() - 1;
        if carry.len() > keep {
            carry.drain(..carry.len() - keep);
        }
    }
}

/// `host:port` of a database URL (the harness's servers listen on TCP).
pub fn tcp_target(url: &str) -> String {
    let u = url::Url::parse(url).unwrap();
    format!(
        "{}:{}",
        u.host_str().expect("a TCP database URL"),
        u.port().unwrap_or(5432)
    )
}

impl Proxy {
    /// Forwards 127.0.0.1:<port> to `upstream` (host:port).
    pub async fn start(upstream: &str) -> Self {
        Self::start_with(upstream, None).await
    }

    /// [`Proxy::start`], counting each time `needle` goes by from a client to the server
    /// ([`Proxy::seen`]). Clients must not use TLS through it ([`Proxy::plain_url`]).
    pub async fn watching(upstream: &str, needle: &str) -> Self {
        assert!(!needle.is_empty());
        let watch = Watch {
            needle: needle.as_bytes().to_vec(),
            seen: AtomicUsize::new(0),
        };
        Self::start_with(upstream, Some(Arc::new(watch))).await
    }

    /// How often the watched string went by so far.
    pub fn seen(&self) -> usize {
        let watch = self
            .watch
            .as_ref()
            .expect("a proxy made by Proxy::watching");
        watch.seen.load(Ordering::SeqCst)
    }

    /// `url` (a database URL) through this proxy, without TLS, so what goes by is readable.
    pub fn plain_url(&self, url: &str) -> String {
        let mut u = url::Url::parse(url).unwrap();
        u.set_host(Some("127.0.0.1")).unwrap();
        u.set_port(Some(self.port)).unwrap();
        u.query_pairs_mut().append_pair("sslmode", "disable");
        u.to_string()
    }

    async fn start_with(upstream: &str, watch: Option<Arc<Watch>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let current = Arc::new(Mutex::new(CancellationToken::new()));
        let stop = CancellationToken::new();
        let (cur, upstream, st) = (current.clone(), upstream.to_owned(), stop.clone());
        let w = watch.clone();
        tokio::spawn(async move {
            loop {
                let client = tokio::select! {
                    r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
                    _ = st.cancelled() => return,
                };
                let silence = cur.lock().unwrap().clone();
                let (upstream, watch) = (upstream.clone(), w.clone());
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(&upstream).await {
                        pipe(client, server, silence, watch).await;
                    }
                });
            }
        });
        Self {
            port,
            current,
            stop,
            watch,
        }
    }

    /// Every connection open now stops forwarding, forever, without being closed.
    pub fn black_hole_open_connections(&self) {
        let mut cur = self.current.lock().unwrap();
        cur.cancel();
        *cur = CancellationToken::new();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Copies both ways until either side closes or `silence`; after `silence` the sockets are
/// held open (and read, so the peers' windows never fill) but nothing is passed on. `watch`
/// counts its needle in what the client `a` sends.
async fn pipe(
    mut a: TcpStream,
    mut b: TcpStream,
    silence: CancellationToken,
    watch: Option<Arc<Watch>>,
) {
    let (mut buf_a, mut buf_b) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    let mut carry = Vec::new();
    loop {
        tokio::select! {
            r = a.read(&mut buf_a) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if let Some(w) = &watch {
                        w.count(&mut carry, &buf_a[..n]);
                    }
                    if b.write_all(&buf_a[..n]).await.is_err() { return }
                }
            },
            r = b.read(&mut buf_b) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => if a.write_all(&buf_b[..n]).await.is_err() { return },
            },
            _ = silence.cancelled() => break,
        }
    }
    // Silent: swallow whatever arrives, pass on nothing, not even a close: a side is held
    // open until the one that connected through us (the relay) gives up on it.
    let mut server_open = true;
    loop {
        tokio::select! {
            r = a.read(&mut buf_a) => if matches!(r, Ok(0) | Err(_)) { return },
            r = b.read(&mut buf_b), if server_open => {
                if matches!(r, Ok(0) | Err(_)) { server_open = false }
            }
        }
    }
}
