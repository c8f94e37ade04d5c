//! Redis for the integration tests: the system's `redis-server`, started by each test on a
//! free loopback port with a directory of its own (append-only file on, no RDB snapshots),
//! stopped and started again on the same port and data, killed on drop; and helpers to
//! read back exactly what a stream holds.
//!
//! Every wait is bounded by [`PATIENCE`]; what the server said is in its `log()`, and in the
//! panic message when it exits or times out before answering. Works with the Redis 7.0 that
//! Debian packages, and later ones.

use std::path::PathBuf;
use std::process::Child;
use std::time::Duration;

use ::redis::aio::MultiplexedConnection;
use nix::sys::signal::Signal;
use tokio::time::Instant;

use super::broker::{spawn_logged, stop_child};
use super::{free_addr, wait_until, PATIENCE};

/// The panic message when the binary is missing.
const MISSING: &str = "redis-server on PATH (apt-get install redis-server)";

/// How long a graceful stop (SIGTERM) may take before the server is killed.
const STOP_PATIENCE: Duration = Duration::from_secs(15);

/// One redis-server process on a free loopback port, its data (`appendonlydir/`) and output
/// (`redis.log`) in a temp dir of its own; killed on drop.
pub struct RedisServer {
    port: u16,
    args: Vec<String>,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server and waits until it answers PING.
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// [`RedisServer::start`] with `extra` arguments (`--requirepass`, say).
    pub async fn start_with(extra: &[&str]) -> Self {
        let port: u16 = free_addr().rsplit(':').next().unwrap().parse().unwrap();
        let dir = tempfile::Builder::new().prefix("redis-").tempdir().unwrap();
        let mut args: Vec<String> = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--dir",
            dir.path().to_str().unwrap(),
            // Every write is in the append-only file, which a graceful stop flushes, so a
            // restart has everything acknowledged before it.
            "--appendonly",
            "yes",
            "--save",
            "",
            "--daemonize",
            "no",
        ]
        .map(str::to_owned)
        .into();
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let mut me = Self {
            port,
            args,
            dir,
            child: None,
        };
        me.spawn();
        me.wait_answering().await;
        me
    }

    /// `redis://127.0.0.1:PORT`: the same across [`RedisServer::stop`] and
    /// [`RedisServer::start_again`].
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// Everything the server printed, across restarts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Starts the process (its output appended to `redis.log`); does not wait.
    fn spawn(&mut self) {
        assert!(self.child.is_none(), "redis-server already running");
        let child = spawn_logged("redis-server", &self.args, &self.log_path(), MISSING);
        self.child = Some(child);
    }

    /// Waits until the server answers PING (not LOADING); panics with its log if it exits
    /// first, or takes longer than [`PATIENCE`].
    async fn wait_answering(&mut self) {
        let (url, log) = (self.url(), self.log_path());
        let password = self.password();
        let child = self.child.as_mut().expect("redis-server started");
        let deadline = Instant::now() + PATIENCE - Duration::from_secs(1);
        wait_until("redis-server answering", || {
            let exited = child.try_wait().unwrap();
            if exited.is_some() || Instant::now() >= deadline {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                let why = exited.map_or("timed out".to_owned(), |s| format!("exited ({s})"));
                panic!("redis-server {why} before answering:\n{log}");
            }
            let url = match &password {
                Some(p) => url.replacen("redis://", &format!("redis://:{p}@"), 1),
                None => url.clone(),
            };
            async move { answers(&url).await }
        })
        .await;
    }

    /// The `--requirepass` it was started with.
    fn password(&self) -> Option<String> {
        let i = self.args.iter().position(|a| a == "--requirepass")?;
        self.args.get(i + 1).cloned()
    }

    /// Stops the server (SIGTERM: it flushes the append-only file; SIGKILL after 15 s) and
    /// waits for it to exit. Its port then refuses connections; its data stays.
    pub async fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            stop_child(child, Signal::SIGTERM, STOP_PATIENCE).await;
        }
    }

    /// Starts the server again on the same port and data; waits as [`RedisServer::start`]
    /// does.
    pub async fn start_again(&mut self) {
        self.spawn();
        self.wait_answering().await;
    }

    /// A connection to this server (with its password, if it has one).
    pub async fn connect(&self) -> MultiplexedConnection {
        let url = match self.password() {
            Some(p) => self
                .url()
                .replacen("redis://", &format!("redis://:{p}@"), 1),
            None => self.url(),
        };
        connect(&url).await
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Whether the server at `url` answers PING now.
async fn answers(url: &str) -> bool {
    let Ok(client) = ::redis::Client::open(url) else {
        return false;
    };
    let attempt = async {
        let mut con = client.get_multiplexed_async_connection().await.ok()?;
        ::redis::cmd("PING")
            .query_async::<String>(&mut con)
            .await
            .ok()
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), attempt).await,
        Ok(Some(_))
    )
}

/// A connection to `url`; panics if the server does not take one now.
/// The test's own connection: redis-rs answers "timed out" after 500 ms by default, which a
/// 1,000-entry XRANGE can take on this 2-core machine while other tests run; PATIENCE bounds
/// a hang instead.
pub async fn connect(url: &str) -> MultiplexedConnection {
    let config = ::redis::AsyncConnectionConfig::new().set_response_timeout(Some(PATIENCE));
    ::redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("connecting to redis-server")
}

/// One stream entry: its id and its fields in their order.
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: String,
    pub fields: Vec<(String, Vec<u8>)>,
}

impl Entry {
    /// The value of `name` as stored; panics if the entry has no such field.
    pub fn bytes(&self, name: &str) -> &[u8] {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
            .unwrap_or_else(|| panic!("entry {} has no field {name:?}: {self:?}", self.id))
    }

    /// The value of `name` as text.
    pub fn text(&self, name: &str) -> &str {
        std::str::from_utf8(self.bytes(name)).unwrap()
    }

    /// The `body` field, parsed as JSON.
    pub fn body(&self) -> serde_json::Value {
        serde_json::from_slice(self.bytes("body")).unwrap_or_else(|e| {
            panic!("entry {}: the body is not JSON ({e})", self.id);
        })
    }

    pub fn has(&self, name: &str) -> bool {
        self.fields.iter().any(|(k, _)| k == name)
    }
}

/// Every entry of stream `key`, in order (XRANGE, 1,000 at a time); none for a key that
/// does not exist.
pub async fn read_stream(con: &mut MultiplexedConnection, key: &str) -> Vec<Entry> {
    let mut out: Vec<Entry> = Vec::new();
    let mut from = "-".to_owned();
    loop {
        let page: Vec<(String, Vec<Vec<u8>>)> = ::redis::cmd("XRANGE")
            .arg(key)
            .arg(&from)
            .arg("+")
            .arg("COUNT")
            .arg(1000)
            .query_async(con)
            .await
            .unwrap_or_else(|e| panic!("XRANGE {key}: {e}"));
        let Some((last, _)) = page.last() else {
            return out;
        };
        from = format!("({last}");
        for (id, flat) in page {
            let fields = flat
                .chunks(2)
                .map(|kv| (String::from_utf8(kv[0].clone()).unwrap(), kv[1].clone()))
                .collect();
            out.push(Entry { id, fields });
        }
    }
}

/// XLEN of `key`.
pub async fn stream_len(con: &mut MultiplexedConnection, key: &str) -> u64 {
    ::redis::cmd("XLEN")
        .arg(key)
        .query_async(con)
        .await
        .unwrap()
}

/// The keys matching `pattern` (SCAN, so the server is never blocked).
pub async fn keys_matching(con: &mut MultiplexedConnection, pattern: &str) -> Vec<String> {
    let mut cursor = 0u64;
    let mut out = Vec::new();
    loop {
        let (next, keys): (u64, Vec<String>) = ::redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(con)
            .await
            .unwrap();
        out.extend(keys);
        if next == 0 {
            return out;
        }
        cursor = next;
    }
}
