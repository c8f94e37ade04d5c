//! What every scenario does around its measurement: a fresh database (migrated, or with a
//! table of its own), the relay
//! process on a config naming the receiver's endpoints, CPU marks, and the checks after.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use outbox_relay::config::{Config, Overrides};
use outbox_relay::db::ident::quote_ident;
use serde_json::{json, Map, Value};
use tokio_postgres::AsyncMessage;

use crate::common::db::DbServer;
use crate::common::proc::{cpu_mark, thread_cpu_secs, CpuMark, RelayProcess};
use crate::common::stats::round2;
use crate::receiver::{Endpoint, Receiver};
use crate::Params;

/// Share of the machine's CPU (cores x wall time) that processes outside the measurement may
/// take before a run is flagged as disturbed (another engineer's build, say). Not lower:
/// under load, this VM's `/proc/stat` busy and total times drift by up to 8% of the machine
/// over 20 s (total above cores x wall in one run, below in the next), so `rest` within
/// that is accounting noise.
const OTHER_LOAD_WARN: f64 = 0.10;

/// Shared by every scenario of the run.
pub struct Ctx<'a> {
    pub p: &'a Params,
    pub server: &'a DbServer,
    pub receiver: Receiver,
    /// The `whsec_` secret of every endpoint, and its decoded key.
    pub secret: String,
    pub key: Vec<u8>,
    /// How idle queries are counted (see [`crate::latency`]).
    pub query_count: QueryCount,
}

/// Where the relay's statements are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryCount {
    /// pg_stat_statements, per statement, filtered by database.
    Statements,
    /// pg_stat_database.xact_commit of the database (transactions, flushed late).
    XactCommit,
}

/// A fresh database of the bench's own, dropped after the run.
pub struct FreshDb {
    pub name: String,
    pub url: String,
    pub cfg: Config,
}

impl Ctx<'_> {
    /// A fresh database with the relay's migration applied.
    pub async fn fresh_db(&self) -> anyhow::Result<FreshDb> {
        self.db_with(None).await
    }

    /// A fresh database where `ddl`, if given, makes the table instead of the relay's
    /// migration: a table the relay has not adopted. The config names it all the same (its
    /// NOTIFY channel, say). Dropped again if the table cannot be made.
    pub async fn db_with(&self, ddl: Option<&str>) -> anyhow::Result<FreshDb> {
        let (name, url) = self.server.create_db().await?;
        let toml = format!(
            "{}\ndatabase_url = {}\n",
            self.p.relay_config,
            toml::Value::String(url.clone())
        );
        let cfg = Config::from_toml(&toml, &Overrides::default()).context("bench config")?;
        let db = FreshDb { name, url, cfg };
        let made = async {
            let mut client = outbox_relay::db::connect(db.cfg.database_url.get()).await?;
            match ddl {
                Some(sql) => client.batch_execute(sql).await?,
                None if self.p.migrate_with_bin => migrate_with_bin(&self.p.relay_bin, &toml)?,
                None => {
                    outbox_relay::db::migrate::run(&mut client, &db.cfg.table_settings()).await?
                }
            }
            anyhow::Ok(())
        }
        .await;
        if let Err(e) = made {
            self.drop_db(&db).await;
            return Err(e);
        }
        Ok(db)
    }

    /// Flushes dirty pages before a measured window, so no run inherits another's checkpoint
    /// debt. Needs a superuser; elsewhere it is skipped.
    pub async fn checkpoint(&self) -> anyhow::Result<()> {
        let _ = self.server.admin().await?.batch_execute("CHECKPOINT").await;
        Ok(())
    }

    pub async fn drop_db(&self, db: &FreshDb) {
        if let Err(e) = self.server.drop_db(&db.name).await {
            eprintln!("  could not drop {}: {e:#}", db.name);
        }
    }

    /// The relay's config: the bench's extra top-level lines, the database, a free port for
    /// its HTTP side, and one `[[webhook]]` per endpoint (all event types, signed);
    /// `down_extra` after each webhook whose endpoint is [`crate::receiver::Behaviour::Down`]
    /// (or after every webhook, when it starts with `*`).
    pub fn relay_toml(
        &self,
        db_url: &str,
        listen: SocketAddr,
        hooks: &[Endpoint],
        down_extra: &str,
    ) -> String {
        let mut toml = format!(
            "{}\ndatabase_url = {}\n[http]\nlisten = \"{listen}\"\n",
            self.p.relay_config,
            toml::Value::String(db_url.to_owned())
        );
        for (i, hook) in hooks.iter().enumerate() {
            toml.push_str(&format!(
                "[[webhook]]\nname = \"hook{}\"\nurl = \"{}\"\nsecret = \"{}\"\n{}\n",
                i + 1,
                hook.url(),
                self.secret,
                self.p.webhook_config
            ));
            if let Some(all) = down_extra.strip_prefix('*') {
                toml.push_str(all);
                toml.push('\n');
            } else if hook.counts.behaviour == crate::receiver::Behaviour::Down {
                toml.push_str(down_extra);
                toml.push('\n');
            }
        }
        toml
    }

    /// Starts the relay (not waiting for it to be ready: a drain is timed from the spawn).
    pub fn start_relay(&self, db: &FreshDb, hooks: &[Endpoint]) -> anyhow::Result<RelayProcess> {
        self.start_relay_with(db, hooks, "")
    }

    /// [`Self::start_relay`], with `down_extra` after each failing webhook (see
    /// [`Self::relay_toml`]).
    pub fn start_relay_with(
        &self,
        db: &FreshDb,
        hooks: &[Endpoint],
        down_extra: &str,
    ) -> anyhow::Result<RelayProcess> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        RelayProcess::start(
            &self.p.relay_bin,
            &self.relay_toml(&db.url, addr, hooks, down_extra),
            addr,
        )
    }

    /// CPU counters now; `relay` None before it is started.
    pub fn marks(&self, relay: Option<u32>) -> anyhow::Result<Marks> {
        Ok(Marks {
            cpu: cpu_mark(relay, self.server.postmaster)?,
            receiver: thread_cpu_secs(self.receiver.tid())?,
            at: Instant::now(),
        })
    }
}

/// CPU counters at one instant.
pub struct Marks {
    cpu: CpuMark,
    /// The receiver thread.
    receiver: f64,
    at: Instant,
}

/// CPU seconds between two marks: the relay, PostgreSQL (postmaster and children), the
/// receiver thread, the rest of this bench (load generator, orchestration), and `rest` =
/// the machine's busy time minus those (loopback TCP softirq, other processes). Warns on
/// stderr when `rest` says something else was running.
/// `machine_capacity` is what `/proc/stat` counted (ideally cores x `window_s`).
pub fn cpu_figures(m0: &Marks, m1: &Marks) -> Value {
    cpu_figures_beside(m0, m1, None)
}

/// [`cpu_figures`] with another server the run needs (`(name, CPU-s)`, e.g. a broker):
/// reported under its name and not counted in `rest`.
pub fn cpu_figures_beside(m0: &Marks, m1: &Marks, other: Option<(&str, f64)>) -> Value {
    let d = |f: fn(&CpuMark) -> f64| f(&m1.cpu) - f(&m0.cpu);
    let relay = d(|c| c.relay);
    let bench = d(|c| c.bench);
    let receiver = m1.receiver - m0.receiver;
    let busy = d(|c| c.machine_busy);
    let capacity = d(|c| c.machine_total);
    let postgres = m0.cpu.postgres.zip(m1.cpu.postgres).map(|(a, b)| b - a);
    let other_cpu = other.map_or(0.0, |(_, s)| s);
    let rest = busy - relay - bench - postgres.unwrap_or(0.0) - other_cpu;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let wall = cores as f64 * (m1.at - m0.at).as_secs_f64();
    let disturbed = rest > OTHER_LOAD_WARN * wall;
    if disturbed {
        eprintln!(
            "  warning: {rest:.2} of {wall:.2} CPU-s went to neither the relay, PostgreSQL nor \
             this bench: something else was running; figures disturbed"
        );
    }
    let mut figures = json!({
        "window_s": round2((m1.at - m0.at).as_secs_f64()),
        "relay": round2(relay),
        "postgres": postgres.map(round2),
        "receiver": round2(receiver),
        "bench_other": round2(bench - receiver),
        "rest": round2(rest),
        "machine_busy": round2(busy),
        "machine_capacity": round2(capacity),
        "disturbed": disturbed,
    });
    if let Some((name, s)) = other {
        figures[name] = json!(round2(s));
    }
    figures
}

/// How a wait for deliveries ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitEnd {
    Done,
    /// No progress for the stall limit.
    Stalled,
    TimedOut,
    RelayExited,
}

impl WaitEnd {
    pub fn name(self) -> &'static str {
        match self {
            WaitEnd::Done => "done",
            WaitEnd::Stalled => "stalled",
            WaitEnd::TimedOut => "timed_out",
            WaitEnd::RelayExited => "relay_exited",
        }
    }
}

/// Polls every few ms until `done()`, no change of `progress()` for `stall`, `limit`, or
/// the relay's exit.
pub async fn wait_deliveries(
    relay: &mut RelayProcess,
    done: impl Fn() -> bool,
    progress: impl Fn() -> u64,
    stall: Duration,
    limit: Duration,
) -> anyhow::Result<WaitEnd> {
    let start = Instant::now();
    let (mut last, mut last_change) = (progress(), Instant::now());
    loop {
        if done() {
            return Ok(WaitEnd::Done);
        }
        let now = progress();
        if now != last {
            (last, last_change) = (now, Instant::now());
        } else if last_change.elapsed() > stall {
            return Ok(WaitEnd::Stalled);
        }
        if start.elapsed() > limit {
            return Ok(WaitEnd::TimedOut);
        }
        if relay.child.try_wait()?.is_some() {
            return Ok(WaitEnd::RelayExited);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Stops the relay (SIGTERM, as systemd would) and reports its warnings; prints the first
/// error and the first three warnings.
pub fn finish_relay(relay: &mut RelayProcess) -> anyhow::Result<Value> {
    let alive = relay.child.try_wait()?.is_none();
    relay.stop()?;
    let log = relay.log_text();
    let count = |level: &str| log.lines().filter(|l| l.contains(level)).count();
    if let Some(first) = log.lines().find(|l| l.contains("ERROR")) {
        eprintln!("  relay: {first}");
    }
    for warning in log.lines().filter(|l| l.contains("WARN")).take(3) {
        eprintln!("  relay: {warning}");
    }
    Ok(json!({
        "alive_at_end": alive,
        "log_warnings": count("WARN"),
        "log_errors": count("ERROR"),
    }))
}

/// Rows by status, e.g. `{"COMPLETED": 50000}`.
pub async fn status_counts(db: &FreshDb) -> anyhow::Result<Value> {
    let client = outbox_relay::db::connect(db.cfg.database_url.get()).await?;
    let rows = client
        .query(
            r#"SELECT coalesce(status::text, 'NULL'), count(*)::int8 FROM "OutboxEvent" GROUP BY 1"#,
            &[],
        )
        .await?;
    let map: Map<String, Value> = rows
        .iter()
        .map(|r| (r.get::<_, String>(0), json!(r.get::<_, i64>(1))))
        .collect();
    Ok(Value::Object(map))
}

/// A LISTEN connection on the table's NOTIFY channel that counts what it is sent: the
/// notifications the app's inserts cost, whatever the trigger decides to send (a relay's
/// listener is sent the same ones). Listening from the moment [`listen`](Self::listen)
/// returns; closed on drop.
pub struct NotifyCounter {
    received: Arc<AtomicU64>,
    driver: tokio::task::JoinHandle<()>,
    /// Kept open: the connection closes when its client is dropped.
    _client: tokio_postgres::Client,
}

impl NotifyCounter {
    pub async fn listen(db: &FreshDb) -> anyhow::Result<Self> {
        let received = Arc::new(AtomicU64::new(0));
        let (pg, tls) = outbox_relay::db::pg_config(db.cfg.database_url.get())?;
        let (client, mut conn) = pg.connect(tls).await?;
        let driver = tokio::spawn({
            let received = received.clone();
            async move {
                let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
                while let Some(Ok(msg)) = messages.next().await {
                    if let AsyncMessage::Notification(_) = msg {
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
        let channel = db.cfg.table_settings().channel();
        client
            .batch_execute(&format!("LISTEN {}", quote_ident(&channel)))
            .await?;
        Ok(Self {
            received,
            driver,
            _client: client,
        })
    }

    /// Notifications received so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

impl Drop for NotifyCounter {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// The server's WAL insert position in bytes; two readings' difference is the WAL written
/// in between. The insert position rather than `pg_current_wal_lsn()` (the write position):
/// that one trails it by whatever sits in the WAL buffers, which depends on the server's
/// commit settings, where the insert position counts every record as it is made. It is the
/// whole cluster's WAL: anything else the server runs meanwhile (another database, the
/// relay's own statements) is in it.
pub async fn wal_bytes(client: &tokio_postgres::Client) -> anyhow::Result<i64> {
    Ok(client
        .query_one(
            "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::int8",
            &[],
        )
        .await?
        .get(0))
}

/// `num` per `per` rows, 2 decimals; null when there were no rows.
pub fn per_row(num: f64, rows: u64, per: f64) -> Value {
    if rows == 0 {
        return Value::Null;
    }
    json!(round2(num * per / rows as f64))
}

/// `relay_bin migrate` with this config: the migration of the build under test.
fn migrate_with_bin(relay_bin: &std::path::Path, toml: &str) -> anyhow::Result<()> {
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), toml)?;
    let out = std::process::Command::new(relay_bin)
        .arg("migrate")
        .arg("--config")
        .arg(file.path())
        .env_remove("DATABASE_URL")
        .env_remove("OUTBOX_RELAY_CONFIG")
        .output()
        .context("running the relay binary's migrate")?;
    anyhow::ensure!(
        out.status.success(),
        "{} migrate failed: {}",
        relay_bin.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
