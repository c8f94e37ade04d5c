//! SSE fan-out benchmark (issue 3): many subscribers across orgs, a steady event rate, and
//! the latency from commit to client plus the relay's memory and CPU.
//!
//! ```sh
//! cargo bench --bench sse
//! ```
//!
//! What one repetition does, and why:
//!
//! - A fresh database (on `DATABASE_URL`'s server if set, else a throwaway cluster from
//!   [`TempCluster`](outbox_relay::pgtemp::TempCluster)), migrated with the relay's own migration.
//! - The relay runs as a separate process (the `outbox-relay` binary cargo built for this
//!   bench, with the bench profile, i.e. release settings), so its memory (`VmHWM`, `VmRSS`)
//!   and CPU (`utime + stime`) can be read from `/proc/<pid>` without the bench mixed in.
//!   No webhooks are configured: events go straight to `COMPLETED`, and the relay's work is
//!   the claim loop plus the SSE side being measured.
//! - Subscribers are raw HTTP/1.1 clients on one thread (a `current_thread` runtime): a GET,
//!   a chunked-body decoder and a scan of `data:` lines for the event's number. The relay,
//!   PostgreSQL and this process share the machine's cores, so the client must cost as little
//!   as possible or it would slow the relay it measures. A subscriber the relay closes
//!   reconnects after the advertised `retry:` delay with `Last-Event-ID`, as a browser's
//!   `EventSource` would; every disconnect is counted.
//! - Before measuring, a warm-up event per org must reach every subscriber: a subscriber
//!   counts as live only once the relay has taken its starting snapshot, which the client
//!   cannot otherwise observe. Warm-up rounds repeat until all are live; how many
//!   subscribers missed the first round (committed after every one had its `200`) is
//!   reported as `subscribers_missed_first_warmup`: the contract says a connection starts
//!   live "from now", so it should be 0.
//! - The load generator, on the main thread (the subscribers have their own), inserts single-row transactions (autocommit
//!   `INSERT`s, round-robin over the orgs) from a few connections, event `i` due at
//!   `start + i / rate`. It records the time right after each commit returns, keyed by the
//!   event's number (`payload.bench_n`); each subscriber records when it read the message.
//!   Both use one monotonic clock in one process, so latency = receipt - commit-returned.
//!   This slightly underestimates: the row becomes visible just before the commit's reply
//!   reaches the generator; receipt - INSERT sent is reported as the upper bound.
//! - Then it waits for the stragglers (bounded), and reads the CPU used over the measured
//!   window (load start to drain end) by the relay, the bench, PostgreSQL (its postmaster and
//!   children, when the server is local) and the whole machine (`/proc/stat`).
//!
//! `cargo test --all-targets` runs bench targets too: without cargo bench's `--bench`
//! argument this binary only prints how to run it.
//!
//! Knobs (environment): `SSE_BENCH_REPS` (3), `SSE_BENCH_ORGS` (10), `SSE_BENCH_SUBS_PER_ORG`
//! (100), `SSE_BENCH_RATE` events/s (1000), `SSE_BENCH_SECS` (20), `SSE_BENCH_LOADERS`
//! connections (4), `SSE_BENCH_RELAY_BIN` (another relay binary), `DATABASE_URL`.
//!
//! Output: a `#` header saying how it ran, then one JSON line (stdout); progress on stderr.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use memchr::memmem;
use outbox_relay::config::{Config, Overrides};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use common::db::DbServer;
use common::load::{run_load, RateLoad};
use common::proc::{cpu_mark, proc_mem, CpuMark, RelayProcess};
use common::stats::{cpu_model, mib, pct_index, round2, spread};
use common::{env_num, number_after};

/// The HMAC key the relay checks subscriber tokens with, and the bench mints them with.
const TOKEN_SECRET: &str = "sse-bench-token-secret-0123456789";
/// The relay's `retry:` (src/http/sse.rs): how long a closed subscriber waits to reconnect.
const RECONNECT_DELAY: Duration = Duration::from_millis(2000);
/// Subscribers connecting at once: enough to connect 1,000 in a second or two without a
/// thundering herd on the relay's small SSE connection pool (each new stream reads a
/// snapshot).
const CONNECT_CONCURRENCY: usize = 50;
/// Per-read buffer of a subscriber; a read usually returns one or a few messages.
const READ_BUF: usize = 16 * 1024;
/// Limits on the waits around the measurement, so a broken relay cannot hang the bench.
const CONNECT_LIMIT: Duration = Duration::from_secs(60);
const WARMUP_LIMIT: Duration = Duration::from_secs(30);
/// Warm-up events are sent in rounds, one event per org each, until every subscriber has had
/// one: a subscriber may miss a round (see `subscribers_missed_first_warmup` in the output).
const WARMUP_ROUND: Duration = Duration::from_millis(500);
/// After the last commit: give up when nothing arrives for this long, or after the total.
const DRAIN_IDLE: Duration = Duration::from_secs(5);
const DRAIN_LIMIT: Duration = Duration::from_secs(20);
/// Share of the machine's CPU that processes outside the measurement may take before a
/// repetition is flagged as disturbed (the bench assumes a machine otherwise idle).
const OTHER_LOAD_WARN: f64 = 0.05;
/// How often the relay's RSS is sampled during the window (VmHWM gives the true peak).
const RSS_SAMPLE_EVERY: Duration = Duration::from_millis(200);

const INSERT_EVENT: &str = r#"INSERT INTO "OutboxEvent" (org_id, event_type, entity_type, entity_id, payload)
VALUES ($1, 'BENCH.EVENT', 'Bench', $2::int8::text, jsonb_build_object('bench_n', $2::int8))"#;
const INSERT_WARMUP: &str = r#"INSERT INTO "OutboxEvent" (org_id, event_type, payload)
VALUES ($1, 'BENCH.WARMUP', jsonb_build_object('bench_warm', $2::int8))"#;

/// The keys the subscribers look for in a `data:` line (the payload is the envelope's `data`).
static N_KEY: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"bench_n\":"));
static WARM_KEY: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"bench_warm\":"));

// ---------------------------------------------------------------------------------------
// Parameters

/// What to run; every field has an environment variable (see the module docs).
#[derive(Debug, Clone)]
struct Params {
    reps: usize,
    orgs: usize,
    subs_per_org: usize,
    rate: u64,
    secs: u64,
    loaders: usize,
    relay_bin: PathBuf,
}

impl Params {
    fn from_env() -> anyhow::Result<Self> {
        let p = Self {
            reps: env_num("SSE_BENCH_REPS", 3)?,
            orgs: env_num("SSE_BENCH_ORGS", 10)?,
            subs_per_org: env_num("SSE_BENCH_SUBS_PER_ORG", 100)?,
            rate: env_num("SSE_BENCH_RATE", 1000)?,
            secs: env_num("SSE_BENCH_SECS", 20)?,
            loaders: env_num("SSE_BENCH_LOADERS", 4)?,
            relay_bin: common::relay_bin("SSE_BENCH_RELAY_BIN")?,
        };
        if p.reps == 0 || p.orgs == 0 || p.subs_per_org == 0 || p.rate == 0 || p.secs == 0 {
            bail!("SSE_BENCH_* values must be positive");
        }
        if p.loaders == 0 {
            bail!("SSE_BENCH_LOADERS must be positive");
        }
        Ok(p)
    }

    fn subscribers(&self) -> usize {
        self.orgs * self.subs_per_org
    }

    fn events(&self) -> usize {
        (self.rate * self.secs) as usize
    }

    fn org_name(&self, i: usize) -> String {
        format!("org_{i:02}")
    }
}

// ---------------------------------------------------------------------------------------
// Subscribers

/// State every subscriber shares with the orchestration.
struct Shared {
    /// The one clock receipts and commits are measured on.
    epoch: Instant,
    orgs: usize,
    /// Subscribers that have had a 200 at least once.
    connected: AtomicUsize,
    /// Subscribers that have received their org's warm-up event.
    warmed: AtomicUsize,
    /// Measured messages received, all subscribers (duplicates included).
    received: AtomicU64,
    connect_gate: Semaphore,
    stop: CancellationToken,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }
}

/// What one subscriber saw.
#[derive(Default)]
struct SubState {
    org: usize,
    /// (event number, receipt ns since the epoch), first receipt of each event only.
    receipts: Vec<(u32, u64)>,
    /// Which of its org's events it has seen: bit `n / orgs`.
    seen: Vec<u64>,
    duplicates: u64,
    /// Events of another org, or numbers never sent: must stay 0.
    foreign: u64,
    /// Times the relay ended the stream (or refused a reconnect) before the bench did.
    disconnects: u32,
    last_error: Option<String>,
    /// The last `id:`, sent back as `Last-Event-ID` on a reconnect.
    last_id: Vec<u8>,
    connected: bool,
    /// It has received a warm-up event (of any round): it is live.
    warm: bool,
    /// It received the first round's, committed after every subscriber had its 200.
    saw_first_warmup: bool,
}

impl SubState {
    /// One line of the event stream.
    fn line(&mut self, line: &[u8], now: u64, shared: &Shared) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(id) = line.strip_prefix(b"id: ") {
            self.last_id.clear();
            self.last_id.extend_from_slice(id);
        } else if let Some(data) = line.strip_prefix(b"data: ") {
            if let Some(n) = number_after(data, &N_KEY) {
                self.record(n, now, shared);
            } else if let Some(round) = number_after(data, &WARM_KEY) {
                self.saw_first_warmup |= round == 1;
                if !self.warm {
                    self.warm = true;
                    shared.warmed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    fn record(&mut self, n: u32, now: u64, shared: &Shared) {
        shared.received.fetch_add(1, Ordering::Relaxed);
        let n_us = n as usize;
        let (word, bit) = ((n_us / shared.orgs) / 64, (n_us / shared.orgs) % 64);
        if n_us % shared.orgs != self.org || word >= self.seen.len() {
            self.foreign += 1;
        } else if self.seen[word] & (1 << bit) != 0 {
            self.duplicates += 1;
        } else {
            self.seen[word] |= 1 << bit;
            self.receipts.push((n, now));
        }
    }
}

/// An HTTP/1.1 chunked body, decoded incrementally into lines.
#[derive(Default)]
struct ChunkedLines {
    state: ChunkState,
    size_line: Vec<u8>,
    /// A line split across reads or chunks.
    partial: Vec<u8>,
    /// The terminating zero-size chunk was seen: the server ended the stream.
    ended: bool,
}

#[derive(Default, Clone, Copy)]
enum ChunkState {
    #[default]
    Size,
    Data(usize),
    /// The CRLF after a chunk's data; how many bytes of it are left.
    DataEnd(usize),
}

impl ChunkedLines {
    fn feed(&mut self, mut input: &[u8], mut on_line: impl FnMut(&[u8])) -> anyhow::Result<()> {
        while !input.is_empty() && !self.ended {
            match self.state {
                ChunkState::Size => match memchr::memchr(b'\n', input) {
                    None => {
                        self.size_line.extend_from_slice(input);
                        return Ok(());
                    }
                    Some(i) => {
                        self.size_line.extend_from_slice(&input[..i]);
                        input = &input[i + 1..];
                        let text = std::str::from_utf8(&self.size_line)?;
                        let hex = text.split(';').next().unwrap_or("").trim();
                        let size = usize::from_str_radix(hex, 16)
                            .with_context(|| format!("bad chunk size {text:?}"))?;
                        self.size_line.clear();
                        if size == 0 {
                            self.ended = true;
                        } else {
                            self.state = ChunkState::Data(size);
                        }
                    }
                },
                ChunkState::Data(left) => {
                    let take = left.min(input.len());
                    self.lines(&input[..take], &mut on_line);
                    input = &input[take..];
                    self.state = if take == left {
                        ChunkState::DataEnd(2)
                    } else {
                        ChunkState::Data(left - take)
                    };
                }
                ChunkState::DataEnd(left) => {
                    let take = left.min(input.len());
                    input = &input[take..];
                    self.state = if take == left {
                        ChunkState::Size
                    } else {
                        ChunkState::DataEnd(left - take)
                    };
                }
            }
        }
        Ok(())
    }

    /// Splits body bytes into lines; whole lines are passed without copying.
    fn lines(&mut self, mut data: &[u8], on_line: &mut impl FnMut(&[u8])) {
        while let Some(i) = memchr::memchr(b'\n', data) {
            if self.partial.is_empty() {
                on_line(&data[..i]);
            } else {
                self.partial.extend_from_slice(&data[..i]);
                on_line(&self.partial);
                self.partial.clear();
            }
            data = &data[i + 1..];
        }
        self.partial.extend_from_slice(data);
    }
}

/// How a stream session ended.
enum SessionEnd {
    /// The bench is done.
    Stopped,
    /// The relay closed the stream.
    Closed,
}

/// One subscriber for the whole repetition: connect, read, reconnect when closed.
async fn subscriber(
    addr: SocketAddr,
    token: String,
    org: usize,
    events_per_org: usize,
    shared: Arc<Shared>,
) -> SubState {
    let mut st = SubState {
        org,
        receipts: Vec::with_capacity(events_per_org + 16),
        seen: vec![0; events_per_org.div_ceil(64) + 1],
        ..SubState::default()
    };
    let mut buf = vec![0u8; READ_BUF];
    loop {
        match session(addr, &token, &mut st, &shared, &mut buf).await {
            Ok(SessionEnd::Stopped) => return st,
            Ok(SessionEnd::Closed) => {}
            Err(e) => st.last_error = Some(format!("{e:#}")),
        }
        if shared.stop.is_cancelled() {
            return st;
        }
        st.disconnects += 1;
        tokio::select! {
            _ = tokio::time::sleep(RECONNECT_DELAY) => {}
            _ = shared.stop.cancelled() => return st,
        }
    }
}

async fn session(
    addr: SocketAddr,
    token: &str,
    st: &mut SubState,
    shared: &Shared,
    buf: &mut [u8],
) -> anyhow::Result<SessionEnd> {
    let permit = if st.connected {
        None
    } else {
        Some(shared.connect_gate.acquire().await?)
    };
    let mut sock = tokio::select! {
        s = TcpStream::connect(addr) => s?,
        _ = shared.stop.cancelled() => return Ok(SessionEnd::Stopped),
    };
    sock.set_nodelay(true)?;
    let mut req = format!(
        "GET /v1/events HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\
         Authorization: Bearer {token}\r\n"
    );
    if !st.last_id.is_empty() {
        req.push_str("Last-Event-ID: ");
        req.push_str(std::str::from_utf8(&st.last_id)?);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    sock.write_all(req.as_bytes()).await?;

    // The response head.
    let mut filled = 0;
    let head_end = loop {
        if filled == buf.len() {
            bail!("response head larger than {READ_BUF} bytes");
        }
        let n = tokio::select! {
            r = sock.read(&mut buf[filled..]) => r?,
            _ = shared.stop.cancelled() => return Ok(SessionEnd::Stopped),
        };
        if n == 0 {
            bail!("connection closed before the response head");
        }
        filled += n;
        if let Some(i) = memmem::find(&buf[..filled], b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    if !head.starts_with("http/1.1 200") {
        bail!("refused: {}", head.lines().next().unwrap_or_default());
    }
    if !head.contains("transfer-encoding: chunked") {
        bail!("expected a chunked event stream, got: {head}");
    }
    drop(permit);
    if !st.connected {
        st.connected = true;
        shared.connected.fetch_add(1, Ordering::Relaxed);
    }

    // The stream.
    let mut body = ChunkedLines::default();
    let now = shared.now_ns();
    body.feed(&buf[head_end..filled], |l| st.line(l, now, shared))?;
    while !body.ended {
        let n = tokio::select! {
            r = sock.read(buf) => r?,
            _ = shared.stop.cancelled() => return Ok(SessionEnd::Stopped),
        };
        if n == 0 {
            break;
        }
        // One timestamp per read: every message in it arrived by now.
        let now = shared.now_ns();
        body.feed(&buf[..n], |l| st.line(l, now, shared))?;
    }
    Ok(SessionEnd::Closed)
}

// ---------------------------------------------------------------------------------------
// One repetition

/// Runs one repetition on a fresh database and relay process; returns its JSON figures.
async fn repetition(
    rep: usize,
    p: &Params,
    server: &DbServer,
    readers: &tokio::runtime::Handle,
) -> anyhow::Result<Value> {
    let (db_name, db_url) = server.create_db().await?;
    let result = repetition_on(rep, p, &db_url, server.postmaster, readers).await;
    if let Err(e) = server.drop_db(&db_name).await {
        eprintln!("  could not drop {db_name}: {e:#}");
    }
    result
}

async fn repetition_on(
    rep: usize,
    p: &Params,
    db_url: &str,
    postmaster: Option<u32>,
    readers: &tokio::runtime::Handle,
) -> anyhow::Result<Value> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let toml = format!(
        "database_url = {db}\n\
         [http]\nlisten = \"{addr}\"\n\
         [sse]\ntoken_secret = \"{TOKEN_SECRET}\"\nheartbeat = \"15s\"\n",
        db = toml::Value::String(db_url.to_owned())
    );
    let cfg = Config::from_toml(&toml, &Overrides::default()).context("bench config")?;
    let mut migrator = outbox_relay::db::connect(cfg.database_url.get()).await?;
    outbox_relay::db::migrate::run(&mut migrator, &cfg.table_settings()).await?;
    drop(migrator);

    let mut relay = RelayProcess::start(&p.relay_bin, &toml, addr)?;
    relay.ready().await?;
    let pid = relay.pid();
    let mem_start = proc_mem(pid)?;

    // Subscribers, on the readers' thread.
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        orgs: p.orgs,
        connected: AtomicUsize::new(0),
        warmed: AtomicUsize::new(0),
        received: AtomicU64::new(0),
        connect_gate: Semaphore::new(CONNECT_CONCURRENCY),
        stop: CancellationToken::new(),
    });
    let events_per_org = p.events().div_ceil(p.orgs);
    let t_connect = Instant::now();
    let subs: Vec<_> = (0..p.subscribers())
        .map(|i| {
            let org = i % p.orgs;
            let token = outbox_relay::http::sse::token::mint(
                TOKEN_SECRET.as_bytes(),
                &p.org_name(org),
                None,
                3600,
            );
            readers.spawn(subscriber(addr, token, org, events_per_org, shared.clone()))
        })
        .collect();
    let n_subs = p.subscribers();
    wait_for(&shared.connected, n_subs, CONNECT_LIMIT).await;
    let connected = shared.connected.load(Ordering::Relaxed);
    let connect_s = t_connect.elapsed().as_secs_f64();

    // Load connections, then the warm-up: one event per org, until every subscriber is live.
    let mut clients = Vec::new();
    for _ in 0..p.loaders {
        clients.push(Arc::new(
            outbox_relay::db::connect(cfg.database_url.get()).await?,
        ));
    }
    let t_warm = Instant::now();
    let mut warmup_rounds: i64 = 0;
    while shared.warmed.load(Ordering::Relaxed) < n_subs && t_warm.elapsed() < WARMUP_LIMIT {
        warmup_rounds += 1;
        for org in 0..p.orgs {
            clients[0]
                .execute(INSERT_WARMUP, &[&p.org_name(org), &warmup_rounds])
                .await?;
        }
        wait_for(&shared.warmed, n_subs, WARMUP_ROUND).await;
    }
    let warmed = shared.warmed.load(Ordering::Relaxed);
    let warm_s = t_warm.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mem_idle = proc_mem(pid)?;
    eprintln!(
        "  rep {rep}: {connected}/{n_subs} subscribers connected in {connect_s:.1} s, {warmed} live after {warm_s:.1} s ({warmup_rounds} warm-up rounds); relay (pid {pid}) RSS {} MiB; loading {} events/s for {} s",
        mib(mem_idle.rss_kib),
        p.rate,
        p.secs
    );

    // The measured window: load, then drain.
    let sampling = CancellationToken::new();
    let sampler = tokio::spawn({
        let stop = sampling.clone();
        async move {
            let mut max_rss = 0;
            while !stop.is_cancelled() {
                if let Ok(m) = proc_mem(pid) {
                    max_rss = max_rss.max(m.rss_kib);
                }
                tokio::select! {
                    _ = tokio::time::sleep(RSS_SAMPLE_EVERY) => {}
                    _ = stop.cancelled() => {}
                }
            }
            max_rss
        }
    });
    let cpu0 = cpu_mark(Some(pid), postmaster)?;
    let orgs: Vec<String> = (0..p.orgs).map(|i| p.org_name(i)).collect();
    let rate_load = RateLoad {
        sql: INSERT_EVENT,
        orgs: &orgs,
        rate: p.rate,
        total: p.events(),
    };
    let load = run_load(&rate_load, &clients, shared.epoch).await?;
    let committed = load.commit_ns.iter().filter(|&&c| c != 0).count();
    let expected = (committed * p.subs_per_org) as u64;
    let drain_start = Instant::now();
    let (mut last, mut last_change) = (shared.received.load(Ordering::Relaxed), Instant::now());
    loop {
        let now = shared.received.load(Ordering::Relaxed);
        if now >= expected
            || last_change.elapsed() > DRAIN_IDLE
            || drain_start.elapsed() > DRAIN_LIMIT
        {
            break;
        }
        if now != last {
            (last, last_change) = (now, Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drain_s = drain_start.elapsed().as_secs_f64();
    let window_s = shared.now_ns().saturating_sub(load.start_ns) as f64 / 1e9;
    let cpu1 = cpu_mark(Some(pid), postmaster)?;
    sampling.cancel();
    let max_rss_sampled = sampler.await?;
    let mem_end = proc_mem(pid)?;
    let relay_alive = relay.child.try_wait()?.is_none();

    // Stop the subscribers, then the relay.
    shared.stop.cancel();
    let mut states = Vec::with_capacity(subs.len());
    for s in subs {
        states.push(s.await?);
    }
    relay.stop()?;
    let log = relay.log_text();
    // Not counted: the start-up warning that this configuration (no webhooks) is meant to give.
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .filter(|l| !l.contains("no [[webhook]] configured"))
        .collect();
    let slow_kicks = log.matches("stopped reading").count();

    // Figures.
    let mut lat_ns: Vec<i64> = Vec::with_capacity(expected as usize);
    let mut lat_sent_ns: Vec<i64> = Vec::with_capacity(expected as usize);
    let secs = p.secs as usize + 1;
    let mut by_second: Vec<Vec<i64>> = vec![Vec::new(); secs];
    let (mut duplicates, mut foreign, mut disconnects) = (0u64, 0u64, 0u64);
    let mut subs_with_missing = 0usize;
    let mut committed_per_org = vec![0usize; p.orgs];
    for (i, _) in load.commit_ns.iter().enumerate().filter(|(_, c)| **c != 0) {
        committed_per_org[i % p.orgs] += 1;
    }
    let mut errors: Vec<String> = Vec::new();
    for st in &states {
        duplicates += st.duplicates;
        foreign += st.foreign;
        disconnects += st.disconnects as u64;
        if let Some(e) = &st.last_error {
            errors.push(e.clone());
        }
        if st.receipts.len() < committed_per_org[st.org] {
            subs_with_missing += 1;
        }
        for &(n, t) in &st.receipts {
            let c = load.commit_ns[n as usize];
            if c == 0 {
                foreign += 1; // its insert reported failure, yet it arrived
                continue;
            }
            let l = t as i64 - c as i64;
            lat_ns.push(l);
            lat_sent_ns.push(t as i64 - load.sent_ns[n as usize] as i64);
            let sec = (c.saturating_sub(load.start_ns) / 1_000_000_000) as usize;
            by_second[sec.min(secs - 1)].push(l);
        }
    }
    let unique = lat_ns.len() as u64;
    let negative = lat_ns.iter().filter(|&&l| l < 0).count();
    lat_ns.sort_unstable();
    lat_sent_ns.sort_unstable();
    let pct = |v: &[i64], q: f64| {
        v.get(pct_index(v.len(), q))
            .map_or(Value::Null, |&x| json!(round2(x as f64 / 1e6)))
    };
    let p99_by_second: Vec<Value> = by_second
        .iter_mut()
        .filter(|v| !v.is_empty())
        .map(|v| {
            v.sort_unstable();
            pct(v, 0.99)
        })
        .collect();
    errors.sort();
    errors.dedup();

    let cpu = |f: fn(&CpuMark) -> f64| round2(f(&cpu1) - f(&cpu0));
    let relay_cpu = cpu(|c| c.relay);
    let bench_cpu = cpu(|c| c.bench);
    let machine_busy = cpu(|c| c.machine_busy);
    let machine_total = cpu(|c| c.machine_total);
    let postgres_cpu = cpu0.postgres.zip(cpu1.postgres).map(|(a, b)| round2(b - a));
    let figures = json!({
        "rep": rep,
        "subscribers_connected": connected,
        "subscribers_live_after_warmup": warmed,
        "warmup_rounds": warmup_rounds,
        "subscribers_missed_first_warmup": states.iter().filter(|s| !s.saw_first_warmup).count(),
        "connect_s": round2(connect_s),
        "events_sent": committed,
        "insert_failures": load.failed,
        "achieved_rate_per_s": round2(committed as f64 / ((load.end_ns - load.start_ns) as f64 / 1e9)),
        "generator_max_behind_ms": round2(load.max_behind_ms),
        "insert_rtt_ms_p50": round2(load.insert_rtt_ms.0),
        "insert_rtt_ms_p99": round2(load.insert_rtt_ms.1),
        "messages_expected": expected,
        "messages_received": shared.received.load(Ordering::Relaxed),
        "messages_unique": unique,
        "missing": expected.saturating_sub(unique),
        "subscribers_missing_some": subs_with_missing,
        "duplicates": duplicates,
        "foreign": foreign,
        "disconnects": disconnects,
        "relay_slow_consumer_kicks": slow_kicks,
        "relay_warnings": warnings.len(),
        "latency_ms": {
            "p50": pct(&lat_ns, 0.50),
            "p95": pct(&lat_ns, 0.95),
            "p99": pct(&lat_ns, 0.99),
            "max": lat_ns.last().map_or(Value::Null, |&x| json!(round2(x as f64 / 1e6))),
            "negative": negative,
        },
        "latency_from_insert_sent_ms": {
            "p50": pct(&lat_sent_ns, 0.50),
            "p95": pct(&lat_sent_ns, 0.95),
            "p99": pct(&lat_sent_ns, 0.99),
            "max": lat_sent_ns.last().map_or(Value::Null, |&x| json!(round2(x as f64 / 1e6))),
        },
        "latency_p99_ms_by_second": p99_by_second,
        "drain_s": round2(drain_s),
        "window_s": round2(window_s),
        "relay_rss_mib": {
            "start": mib(mem_start.rss_kib),
            "subscribed_idle": mib(mem_idle.rss_kib),
            "peak_sampled": mib(max_rss_sampled),
            "peak_hwm": mib(mem_end.hwm_kib),
            "end": mib(mem_end.rss_kib),
        },
        "relay_alive_at_end": relay_alive,
        "cpu_s": {
            "relay": relay_cpu,
            "bench": bench_cpu,
            "postgres": postgres_cpu,
            "rest": round2(machine_busy - relay_cpu - bench_cpu - postgres_cpu.unwrap_or(0.0)),
            "machine_busy": machine_busy,
            "machine_capacity": machine_total,
        },
    });
    eprintln!(
        "  rep {rep}: {committed} events, {unique}/{expected} messages ({} missing, {duplicates} dup, {disconnects} disconnects), latency p50 {} p99 {} max {} ms; relay peak {} MiB, {relay_cpu} CPU-s in {:.1} s",
        expected.saturating_sub(unique),
        figures["latency_ms"]["p50"],
        figures["latency_ms"]["p99"],
        figures["latency_ms"]["max"],
        mib(mem_end.hwm_kib),
        window_s
    );
    let rest = figures["cpu_s"]["rest"].as_f64().unwrap_or(0.0);
    if rest > OTHER_LOAD_WARN * machine_total {
        eprintln!(
            "  warning: {rest} CPU-s of the window went to neither the relay, PostgreSQL nor this bench: something else was running, and these figures are disturbed"
        );
    }
    for w in warnings.iter().take(5) {
        eprintln!("  relay: {w}");
    }
    for e in errors.iter().take(5) {
        eprintln!("  subscriber error: {e}");
    }
    Ok(figures)
}

/// Waits until `counter` reaches `target`, at most `limit`.
async fn wait_for(counter: &AtomicUsize, target: usize, limit: Duration) {
    let deadline = Instant::now() + limit;
    while counter.load(Ordering::Relaxed) < target && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn main() -> anyhow::Result<()> {
    if !common::started_by_cargo_bench("sse") {
        return Ok(());
    }
    // Settings come from the environment (module docs).
    let p = Params::from_env()?;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());

    // Subscribers get a thread of their own; the load generator and orchestration run here.
    let readers_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let readers = readers_rt.handle().clone();
    let readers_quit = CancellationToken::new();
    let readers_thread = std::thread::Builder::new()
        .name("sse-readers".into())
        .spawn({
            let quit = readers_quit.clone();
            move || readers_rt.block_on(quit.cancelled())
        })?;
    let control = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;

    let mut server = DbServer::start("")?;
    let result = control.block_on(async {
        server.find_postmaster().await?;
        let server = &server;
        let pg = server.describe().await?;
        println!("# SSE fan-out benchmark (issue 3), outbox-relay {}", env!("CARGO_PKG_VERSION"));
        println!("# command: cargo bench --bench sse   (SSE_BENCH_REPS={} SSE_BENCH_ORGS={} SSE_BENCH_SUBS_PER_ORG={} SSE_BENCH_RATE={} SSE_BENCH_SECS={} SSE_BENCH_LOADERS={})",
            p.reps, p.orgs, p.subs_per_org, p.rate, p.secs, p.loaders);
        println!("# machine: {cores} cores ({}); {pg}", cpu_model());
        println!("# PostgreSQL, the relay and this bench all run on these {cores} cores: the figures include their contention");
        println!("# relay: {} as a separate process (bench profile = release settings), `run` with no webhooks, SSE on 127.0.0.1", p.relay_bin.display());
        println!("# subscribers: {} = {} orgs x {}, raw HTTP/1.1 SSE clients on one thread, connected and warmed up before the load",
            p.subscribers(), p.orgs, p.subs_per_org);
        println!("# load: {} events/s for {} s = {} events, single-row autocommit INSERTs round-robin over the orgs, {} connections, timer-paced",
            p.rate, p.secs, p.events(), p.loaders);
        println!("# expected: {} messages/s ({} per event), {} per repetition",
            p.rate * p.subs_per_org as u64, p.subs_per_org, p.events() * p.subs_per_org);
        println!("# latency = client receipt - INSERT commit returned, one clock; slightly underestimates (the row is visible just before the commit reply arrives); latency_from_insert_sent (receipt - INSERT sent) is the upper bound");
        println!("# repetitions: {} (fresh database and relay process each); summary = median/min/max over repetitions; memory in MiB; CPU in seconds over the window (load start to drain end): relay, bench, postgres (postmaster and all its processes), rest = machine busy minus those (kernel softirq for loopback TCP, other processes)", p.reps);
        let mut reps = Vec::new();
        for rep in 1..=p.reps {
            eprintln!("repetition {rep}/{}", p.reps);
            reps.push(repetition(rep, &p, server, &readers).await?);
        }
        let keys: &[&[&str]] = &[
            &["latency_ms", "p50"],
            &["latency_ms", "p95"],
            &["latency_ms", "p99"],
            &["latency_ms", "max"],
            &["latency_from_insert_sent_ms", "p50"],
            &["latency_from_insert_sent_ms", "p99"],
            &["messages_received"],
            &["missing"],
            &["duplicates"],
            &["disconnects"],
            &["subscribers_missed_first_warmup"],
            &["relay_rss_mib", "subscribed_idle"],
            &["relay_rss_mib", "peak_hwm"],
            &["relay_rss_mib", "end"],
            &["cpu_s", "relay"],
            &["cpu_s", "bench"],
            &["cpu_s", "postgres"],
            &["cpu_s", "rest"],
            &["window_s"],
        ];
        let summary: serde_json::Map<String, Value> = keys
            .iter()
            .map(|k| (k.join("."), spread(&reps, k)))
            .collect();
        let out = json!({
            "bench": "sse_fanout",
            "machine": {"cores": cores, "cpu": cpu_model()},
            "postgres": pg,
            "params": {
                "reps": p.reps, "orgs": p.orgs, "subscribers_per_org": p.subs_per_org,
                "subscribers": p.subscribers(), "events_per_s": p.rate, "secs": p.secs,
                "events": p.events(), "loader_connections": p.loaders,
                "messages_expected_per_s": p.rate * p.subs_per_org as u64,
            },
            "summary": summary,
            "reps": reps,
        });
        println!("{out}");
        anyhow::Ok(())
    });
    readers_quit.cancel();
    let _ = readers_thread.join();
    drop(server);
    result
}
