//! A TCP proxy in front of PostgreSQL that can go silent: it keeps every open connection
//! (no FIN, no RST: the peers' TCP stacks stay happy) but stops forwarding a byte, as a
//! stateful firewall or NAT box that lost its entry does. New connections are forwarded
//! normally. This is the half-open connection keepalives do not catch.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub struct Proxy {
    pub port: u16,
    /// Cancelled to black-hole the connections open so far; replaced by a fresh one.
    current: Arc<Mutex<CancellationToken>>,
    stop: CancellationToken,
}

impl Proxy {
    /// Forwards 127.0.0.1:<port> to `upstream` (host:port).
    pub async fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let current = Arc::new(Mutex::new(CancellationToken::new()));
        let stop = CancellationToken::new();
        let (cur, upstream, st) = (current.clone(), upstream.to_owned(), stop.clone());
        tokio::spawn(async move {
            loop {
                let client = tokio::select! {
                    r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
                    _ = st.cancelled() => return,
                };
                let silence = cur.lock().unwrap().clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(&upstream).await {
                        pipe(client, server, silence).await;
                    }
                });
            }
        });
        Self {
            port,
            current,
            stop,
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
/// held open (and read, so the peers' windows never fill) but nothing is passed on.
async fn pipe(mut a: TcpStream, mut b: TcpStream, silence: CancellationToken) {
    let (mut buf_a, mut buf_b) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    loop {
        tokio::select! {
            r = a.read(&mut buf_a) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => if b.write_all(&buf_a[..n]).await.is_err() { return },
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
