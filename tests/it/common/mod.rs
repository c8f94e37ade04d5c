//! Test harness: a real PostgreSQL (DATABASE_URL, else a private throwaway cluster), one
//! fresh database per test, real HTTP receivers, and the relay in-process or as a process.
#![allow(dead_code)]

pub mod broker;
pub mod browser;
pub mod fault;
pub mod load;
pub mod nats;
pub mod npm;
pub mod orm;
pub mod process;
pub mod proxy;
pub mod rabbitmq;
pub mod receiver;
pub mod redis;
pub mod replication;
pub mod sse;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use outbox_relay::config::{Config, Overrides};
use outbox_relay::db::queries::Queries;
use outbox_relay::health::{Health, Shared};
use outbox_relay::http::limits::Gate;
use outbox_relay::http::App;
use outbox_relay::pgtemp::TempCluster;
use outbox_relay::secret::Secret;
use outbox_relay::sinks::sse::Hub;
use tokio_util::sync::CancellationToken;

#[allow(unused_imports)]
pub use receiver::{Delivery, Receiver, Reply};

/// A published Standard Webhooks test secret; any whsec_ value would do.
pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// How long a test waits for something that should happen within milliseconds. Generous:
/// CI machines are shared; this bounds a hang, it does not measure speed.
pub const PATIENCE: Duration = Duration::from_secs(60);

struct Server {
    admin_url: String,
}

static SERVER: OnceLock<Server> = OnceLock::new();
/// The throwaway cluster, if this process started one; stopped at process exit.
static CLUSTER: Mutex<Option<TempCluster>> = Mutex::new(None);

extern "C" fn stop_cluster() {
    if let Ok(mut c) = CLUSTER.lock() {
        drop(c.take());
    }
}

fn server() -> &'static Server {
    SERVER.get_or_init(|| {
        if let Ok(url) = std::env::var("DATABASE_URL") {
            return Server { admin_url: url };
        }
        let cluster = TempCluster::start().expect("starting a throwaway PostgreSQL cluster");
        let admin_url = cluster.url("postgres");
        *CLUSTER.lock().unwrap() = Some(cluster);
        // SAFETY: registering a plain extern "C" fn with no captured state.
        #[allow(unsafe_code)]
        unsafe {
            libc::atexit(stop_cluster)
        };
        Server { admin_url }
    })
}

/// Replaces the database name in a URL.
fn with_db(url: &str, db: &str) -> String {
    let mut u = url::Url::parse(url).expect("DATABASE_URL must be a postgres:// URL in tests");
    u.set_path(&format!("/{db}"));
    u.to_string()
}

/// A database of its own for one test, dropped when the test ends.
pub struct TestDb {
    pub name: String,
    pub url: String,
    admin_url: String,
}

impl TestDb {
    pub async fn new() -> Self {
        let admin_url = server().admin_url.clone();
        let name = format!("outbox_test_{}", uuid::Uuid::new_v4().simple());
        let admin = outbox_relay::db::connect(&Secret::new(admin_url.clone()))
            .await
            .unwrap();
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        Self {
            url: with_db(&admin_url, &name),
            name,
            admin_url,
        }
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        outbox_relay::db::connect(&Secret::new(self.url.clone()))
            .await
            .unwrap()
    }

    /// A config for this database; `extra` is TOML appended after the defaults.
    pub fn config(&self, extra: &str) -> Config {
        self.config_at(&self.url, extra)
    }

    /// [`TestDb::config`] reaching this database at `url` (through a proxy, say).
    pub fn config_at(&self, url: &str, extra: &str) -> Config {
        Config::from_toml(
            &with_free_port(extra),
            &Overrides {
                database_url: Some(url.to_owned()),
            },
        )
        .expect("test config is valid")
    }

    /// A TOML config file for the binary, with `extra` appended.
    pub fn config_file(&self, extra: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            f.path(),
            format!("database_url = \"{}\"\n{}", self.url, with_free_port(extra)),
        )
        .unwrap();
        f
    }

    /// Migrates for a config with `extra` and writes that config to a file for the binary
    /// ([`TestDb::config_file`]).
    pub async fn migrated_config_file(&self, extra: &str) -> tempfile::NamedTempFile {
        self.migrate(&self.config(extra)).await;
        self.config_file(extra)
    }

    /// Migrates for a config with `toml` and starts a relay on it, ready (LISTEN active).
    pub async fn start_relay(&self, toml: &str) -> (Config, InProcessRelay) {
        let cfg = self.config(toml);
        self.migrate(&cfg).await;
        let relay = InProcessRelay::start(cfg.clone()).await.ready().await;
        (cfg, relay)
    }

    /// A database of its own with a relay on it, ready, delivering to `rx` as the webhook
    /// "main" (`toml` before it); and a client of that database.
    pub async fn with_relay(
        rx: &Receiver,
        toml: &str,
    ) -> (TestDb, InProcessRelay, tokio_postgres::Client) {
        let db = TestDb::new().await;
        let webhook = webhook_toml("main", &rx.url);
        let (_, relay) = db.start_relay(&format!("{toml}\n{webhook}")).await;
        let client = db.client().await;
        (db, relay, client)
    }

    /// Runs the migration for `cfg`.
    pub async fn migrate(&self, cfg: &Config) {
        let mut c = self.client().await;
        outbox_relay::db::migrate::run(&mut c, &cfg.table_settings())
            .await
            .unwrap();
    }

    /// The statements for `cfg`'s table, as a relay builds them once it found the table
    /// (migrated already).
    pub async fn queries(&self, cfg: &Config) -> Arc<Queries> {
        let client = self.client().await;
        let shape = outbox_relay::db::shape::inspect(&client, &cfg.qualified_table())
            .await
            .expect("the table is migrated");
        Arc::new(Queries::for_table(&cfg.table_settings(), &shape))
    }

    /// The relay's HTTP router for a config with `toml`, in-process and with no relay
    /// running, for `tower::ServiceExt::oneshot`: the table migrated, its statements known
    /// and the database marked up, as once a relay has started on it.
    pub async fn router(&self, toml: &str) -> axum::Router {
        let cfg = self.config(toml);
        self.migrate(&cfg).await;
        let hub = Arc::new(Hub::default());
        let shared = Arc::new(Shared::new(&cfg, cfg.sse.enabled.then(|| hub.clone())).unwrap());
        let _ = shared.queries.set(self.queries(&cfg).await);
        shared.health.database.store(true, Ordering::Release);
        let pool = outbox_relay::db::pool(cfg.database_url.get()).unwrap();
        let connections = Arc::new(Gate::new("connections", "http.max_connections", 64));
        let app = App::new(&cfg, pool, shared, hub, connections).unwrap();
        outbox_relay::http::router(Arc::new(app))
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let drop_db = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        run_detached(self.admin_url.clone(), vec![drop_db]);
    }
}

/// Runs `statements` on `url`, ignoring errors, on a thread of its own and waiting for it:
/// for clean-up in `Drop`, which runs inside the test's runtime.
pub fn run_detached(url: String, statements: Vec<String>) {
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            if let Ok(c) = outbox_relay::db::connect(&Secret::new(url)).await {
                for sql in statements {
                    let _ = c.batch_execute(&sql).await;
                }
            }
        })
    })
    .join();
}

/// Tests run in parallel: unless a test chose its own `[http]`, serve on a free port.
pub fn with_free_port(toml: &str) -> String {
    if toml.contains("[http]") {
        toml.to_owned()
    } else {
        format!("{toml}\n[http]\nlisten = \"127.0.0.1:0\"\n")
    }
}

/// A loopback address with a port free right now, for a server whose port the test must
/// know in advance (see [`outbox_relay::pgtemp::free_port`]: below the ephemeral range, so
/// a server restarted on it finds it free).
pub fn free_addr() -> String {
    format!("127.0.0.1:{}", outbox_relay::pgtemp::free_port().unwrap())
}

/// GET `url`: (status, body).
pub async fn http_get(url: &str) -> (u16, String) {
    match reqwest::get(url).await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

/// TOML for one webhook pointing at `url`.
pub fn webhook_toml(name: &str, url: &str) -> String {
    format!("[[webhook]]\nname = \"{name}\"\nurl = \"{url}\"\nsecret = \"{SECRET}\"\ntimeout = \"5s\"\n")
}

/// A relay running in this process, with its HTTP side.
pub struct InProcessRelay {
    pub shutdown: CancellationToken,
    pub health: Arc<Health>,
    pub http_addr: std::net::SocketAddr,
    daemon: outbox_relay::daemon::Daemon,
}

impl InProcessRelay {
    pub async fn start(cfg: Config) -> Self {
        let shutdown = CancellationToken::new();
        let daemon = outbox_relay::daemon::Daemon::start(cfg, shutdown.clone())
            .await
            .expect("daemon starts");
        Self {
            shutdown,
            health: daemon.health.clone(),
            http_addr: daemon.http_addr,
            daemon,
        }
    }

    /// SSE subscribers connected to this relay.
    pub fn sse_subscribers(&self) -> usize {
        self.daemon.hub.subscribers()
    }

    /// `http://addr`, for requests to this relay.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    /// Waits until the database is reachable and LISTEN is active.
    pub async fn ready(self) -> Self {
        let h = self.health.clone();
        wait_until("relay ready", || {
            let h = h.clone();
            async move { h.ready(true) }
        })
        .await;
        self
    }

    /// Graceful stop; returns what `run` returned.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.daemon.wait().await
    }
}

/// The deadline of a wait over a large batch: [`PATIENCE`] after the last progress (stuck,
/// not slow: a machine running many tests at once may take minutes over a large batch), and
/// never more than five times that in all.
pub struct StallDeadline {
    cap: tokio::time::Instant,
    at: tokio::time::Instant,
}

impl StallDeadline {
    pub fn new() -> Self {
        let now = tokio::time::Instant::now();
        Self {
            cap: now + 5 * PATIENCE,
            at: now + PATIENCE,
        }
    }

    /// The wait made progress: [`PATIENCE`] more from now, within the cap.
    pub fn progressed(&mut self) {
        self.at = (tokio::time::Instant::now() + PATIENCE).min(self.cap);
    }

    pub fn at(&self) -> tokio::time::Instant {
        self.at
    }
}

/// Polls `count` every 20 ms until it reaches `target`; panics when it stalls
/// ([`StallDeadline`]).
pub async fn wait_progressing<F, Fut>(what: &str, target: i64, mut count: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = i64>,
{
    let mut deadline = StallDeadline::new();
    let mut best = i64::MIN;
    loop {
        let reached = count().await;
        if reached == target {
            return;
        }
        if reached > best {
            best = reached;
            deadline.progressed();
        }
        assert!(
            tokio::time::Instant::now() < deadline.at(),
            "timed out waiting for: {what} (reached {best})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `cond` every 20 ms until true; panics after [`PATIENCE`].
pub async fn wait_until<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Inserts `n` events of type `event_type` in one statement (a transaction of its own on a
/// client, or part of an open one); returns their ids.
pub async fn insert_events(
    client: &impl tokio_postgres::GenericClient,
    n: usize,
    event_type: &str,
) -> Vec<String> {
    let rows = client
        .query(
            "INSERT INTO \"OutboxEvent\" (event_type, org_id, payload)
             SELECT $1, 'org_1', jsonb_build_object('n', g) FROM generate_series(1, $2::int) g
             RETURNING id::text",
            &[&event_type, &(n as i32)],
        )
        .await
        .unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

/// The first column of every row `sql` returns, as text.
pub async fn texts(client: &tokio_postgres::Client, sql: &str) -> Vec<String> {
    let rows = client
        .query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.iter().map(|r| r.get(0)).collect()
}

/// Counts rows by status.
pub async fn count_status(client: &tokio_postgres::Client, status: &str) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM \"OutboxEvent\" WHERE status::text = $1",
            &[&status],
        )
        .await
        .unwrap()
        .get(0)
}

/// Rows held for a paused endpoint (PENDING with next_attempt_at = 'infinity').
pub async fn count_held(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM \"OutboxEvent\"
              WHERE status = 'PENDING' AND next_attempt_at = 'infinity'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// (status, retry_count, error_message, processed_at is set) of one row.
pub async fn row_state(
    client: &tokio_postgres::Client,
    id: &str,
) -> (String, i32, Option<String>, bool) {
    let r = client
        .query_one(
            "SELECT status::text, retry_count, error_message, processed_at IS NOT NULL
               FROM \"OutboxEvent\" WHERE id::text = $1",
            &[&id],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1), r.get(2), r.get(3))
}

/// The relay binary built by cargo for these tests.
pub fn relay_bin() -> &'static str {
    env!("CARGO_BIN_EXE_outbox-relay")
}
