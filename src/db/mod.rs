//! Everything that talks SQL: connections, the migration, the table's shape, the queries,
//! the operator's actions and the queue gauges ([`admin`]), and the daemon's upkeep
//! statements ([`maintenance`]).

pub mod admin;
pub mod audit;
pub mod browse;
pub mod circuit;
pub mod claims;
pub mod cluster;
mod connect_error;
pub mod ident;
pub mod maintenance;
pub mod migrate;
pub mod privileges;
pub mod queries;
pub mod rates;
pub mod server;
pub mod shape;
pub mod statements;
pub mod table;
pub mod tls;

use std::time::Duration;

use anyhow::Context;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Timeouts};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use crate::secret::Secret;

pub use connect_error::{connect_error, servers, servers_of};

/// How long one connection attempt may take before it counts as "database unreachable".
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Pooled connections per relay: claims, outcome writes, lease extension and housekeeping
/// each need one at a time, never one per delivery.
pub const POOL_SIZE: usize = 8;

/// Session settings of every connection: UTC sessions, so timestamps print in UTC. The
/// queries do not depend on it (a pooler may drop startup options): they convert the app's
/// timestamps without time zone explicitly, see [`shape::Clock`].
const SESSION_OPTIONS: &str = "-c TimeZone=UTC";

/// This process as the dashboard lists relay instances: `host/pid`. Every connection of the
/// daemon carries it in its application_name, so `pg_stat_activity` tells instances apart.
pub fn instance() -> &'static str {
    static INSTANCE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    INSTANCE.get_or_init(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_default();
        let host = if host.is_empty() {
            "localhost".into()
        } else {
            host
        };
        format!("{host}/{}", std::process::id())
    })
}

/// The application_name of a daemon connection in `role` ("" for the main pool,
/// "listener", "sse"): `outbox-relay [role ]host/pid`.
pub fn application_name(role: &str) -> String {
    let sep = if role.is_empty() { "" } else { " " };
    format!("outbox-relay {role}{sep}{}", instance())
}

/// application_name of one-shot commands (not an instance).
const COMMAND_APPLICATION_NAME: &str = "outbox-relay command";

/// Parses the URL and sets what every relay connection needs: a recognisable
/// application_name (visible in pg_stat_activity), UTC sessions, a connect timeout and TCP
/// keepalives (a dead peer is noticed even on the otherwise silent LISTEN connection). Also
/// builds the TLS connector from the URL's `sslmode`, `sslrootcert`, `sslcert` and `sslkey`
/// (the config file's `[database]` keys are already in the URL, see `crate::config`): every
/// connection, pooled or not, is made with the pair this returns.
pub fn pg_config(url: &Secret) -> anyhow::Result<(tokio_postgres::Config, tls::Connector)> {
    let (rest, tls) = tls::split(url.expose())
        .map_err(|m| anyhow::anyhow!("database_url is not a valid PostgreSQL URL: {m}"))?;
    let mut cfg: tokio_postgres::Config = rest
        .parse()
        .context("database_url is not a valid PostgreSQL URL")?;
    if cfg.get_application_name().is_none() {
        cfg.application_name(application_name(""));
    }
    cfg.options(SESSION_OPTIONS);
    if cfg.get_connect_timeout().is_none() {
        cfg.connect_timeout(CONNECT_TIMEOUT);
    }
    cfg.keepalives(true);
    cfg.keepalives_idle(Duration::from_secs(30));
    // libpq ignores sslmode on Unix sockets; so does the relay (the server answers no).
    let only_sockets = cfg
        .get_hosts()
        .iter()
        .all(|h| matches!(h, tokio_postgres::config::Host::Unix(_)));
    cfg.ssl_mode(match only_sockets && !cfg.get_hosts().is_empty() {
        true => tokio_postgres::config::SslMode::Disable,
        false => tls.pg_mode(),
    });
    let connector = tls.connector()?;
    Ok((cfg, connector))
}

/// A pooled connection, with [`connect_error`]'s words when a new one cannot be made.
pub async fn get(pool: &Pool) -> anyhow::Result<deadpool_postgres::Object> {
    get_from(pool, None).await
}

/// [`get`] for a caller that knows the pool's [`servers`], which its error then names.
pub async fn get_from(
    pool: &Pool,
    servers: Option<&str>,
) -> anyhow::Result<deadpool_postgres::Object> {
    pool.get().await.map_err(|e| match e {
        deadpool_postgres::PoolError::Backend(e) => connect_error(servers, e),
        e => anyhow::Error::new(e).context(format!(
            "no database connection{}",
            servers.map(|s| format!(" to {s}")).unwrap_or_default()
        )),
    })
}

/// The server cancels any statement of a pooled relay connection that runs longer: the
/// relay's statements take milliseconds, so one this slow is stuck (a lock, a sick server),
/// and the loop that issued it must get control back to report and retry.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);
/// The client gives up waiting a little after the server would have cancelled: past this,
/// the connection itself is dead or black-holed (a half-open TCP connection answers nothing
/// and keepalives never fire while a middlebox still acknowledges).
pub const CLIENT_DEADLINE: Duration = Duration::from_secs(35);

/// Repeats `batch` (a statement that acts on at most `size` rows and returns how many) until
/// one comes back short: a large backlog is worked through in short statements, none holding
/// its locks for long. After each full batch, `between(total so far)` says whether to go on
/// (a progress line, a pause, a stop request). Returns the total.
pub async fn in_batches<B, W>(
    size: i64,
    mut batch: impl FnMut() -> B,
    mut between: impl FnMut(u64) -> W,
) -> anyhow::Result<u64>
where
    B: std::future::Future<Output = anyhow::Result<u64>>,
    W: std::future::Future<Output = bool>,
{
    let mut total = 0;
    loop {
        let n = batch().await?;
        total += n;
        if n < size as u64 || !between(total).await {
            return Ok(total);
        }
    }
}

/// Runs one statement on a pooled connection, bounded by [`CLIENT_DEADLINE`]; past it, the
/// connection is [`abandon`]ed. Prepared once per connection, or pooler-safe (see
/// [`statements`]).
pub async fn query(
    pool: &Pool,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> anyhow::Result<Vec<Row>> {
    let client = get(pool).await?;
    let result = tokio::time::timeout(
        CLIENT_DEADLINE,
        statements::query_pooled(&client, sql, params),
    )
    .await;
    match result {
        Ok(rows) => {
            let rows = rows?;
            put_back(client, result_bytes(&rows));
            Ok(rows)
        }
        Err(_) => Err(abandon(pool, client)),
    }
}

/// A result larger than this closes the connection that read it instead of returning it
/// to the pool. tokio-postgres keeps a connection's read buffer as large as the most it
/// ever held at once, for the connection's life (rust-postgres issue 1081): after a few
/// 10 MB payloads every pooled connection would hold 10 MB or more, at rest. A new
/// connection costs a few milliseconds, once per large result.
pub const LARGE_RESULT: usize = 1 << 20;

/// Returns a pooled connection after a statement that read `bytes`: to the pool, or
/// closed when it read more than [`LARGE_RESULT`].
pub fn put_back(client: deadpool_postgres::Object, bytes: usize) {
    if bytes > LARGE_RESULT {
        tracing::debug!(
            bytes,
            "closing a pooled connection that read a large result"
        );
        drop(deadpool_postgres::Object::take(client));
    }
}

/// Roughly the bytes a result took on the wire: every value's length.
pub fn result_bytes(rows: &[Row]) -> usize {
    rows.iter()
        .map(|row| {
            (0..row.len())
                .filter_map(|i| row.try_get::<_, Option<RawLen>>(i).ok().flatten())
                .map(|l| l.0 + 4)
                .sum::<usize>()
        })
        .sum()
}

/// A value's length in its wire form, whatever its type.
struct RawLen(usize);

impl<'a> tokio_postgres::types::FromSql<'a> for RawLen {
    fn from_sql(
        _: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Self(raw.len()))
    }

    fn accepts(_: &tokio_postgres::types::Type) -> bool {
        true
    }
}

/// How often [`replan`] is worth calling.
pub const REPLAN_EVERY: Duration = Duration::from_secs(10);

/// Forgets every pooled connection's prepared statements, so the next use of each plans it
/// afresh. PostgreSQL keeps a prepared statement's generic plan for as long as the
/// statement lives, and replans only when the table's statistics change. One planned while
/// the outbox was nearly empty (a new install) reads the whole table to find a few rows by
/// id, and keeps doing so as the table grows if nothing analyzes it (autovacuum off, or
/// lagging). Re-preparing now and then costs a parse and a plan per statement.
pub fn replan(pool: &Pool) {
    pool.manager().statement_caches.clear();
}

/// For a pooled connection that missed [`CLIENT_DEADLINE`]: takes it out of the pool, and
/// drops the idle ones too (they went through the same network path and are likely dead as
/// well; new ones cost a connect), so the next caller starts on a fresh connection instead
/// of waiting out the deadline again. Returns the error to report.
pub fn abandon(pool: &Pool, client: deadpool_postgres::Object) -> anyhow::Error {
    drop(deadpool_postgres::Object::take(client));
    pool.retain(|_, _| false);
    anyhow::anyhow!(
        "the database did not answer within {CLIENT_DEADLINE:?}; dropped the connection (a \
         network partition or a half-open connection?)"
    )
}

/// Connections SSE subscribers share for catching up from the database: a pool of their
/// own, so a crowd reconnecting at once cannot starve the claim loop.
pub const SSE_POOL_SIZE: usize = 4;

/// Whether a database error in `e`'s chain carries one of `states`.
pub fn has_sql_state(e: &anyhow::Error, states: &[tokio_postgres::error::SqlState]) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<tokio_postgres::Error>())
        .filter_map(|e| e.code())
        .any(|c| states.contains(c))
}

/// Whether a database error is a data exception (SQLSTATE class 22: a value the statement
/// could not take, such as a NUL byte in text or a timestamp that does not parse): the
/// input's fault, not the database's.
pub fn is_data_exception(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<tokio_postgres::Error>())
        .filter_map(|e| e.code())
        .any(|c| c.code().starts_with("22"))
}

/// The relay's pool (see [`pool_of`]).
pub fn pool(url: &Secret) -> anyhow::Result<Pool> {
    pool_of(url, POOL_SIZE, None)
}

/// A pool whose `get()` fails within a few seconds while the database is down, instead of
/// hanging, so callers can log, back off and try again. `role` names the pool in
/// application_name (see [`application_name`]).
pub fn pool_of(url: &Secret, size: usize, role: Option<&str>) -> anyhow::Result<Pool> {
    pool_with(url, size, role, STATEMENT_TIMEOUT)
}

/// [`pool_of`] with its own server-side statement timeout.
pub fn pool_with(
    url: &Secret,
    size: usize,
    role: Option<&str>,
    statement_timeout: Duration,
) -> anyhow::Result<Pool> {
    let (mut cfg, tls) = pg_config(url)?;
    if let Some(role) = role {
        cfg.application_name(application_name(role));
    }
    cfg.options(format!(
        "{SESSION_OPTIONS} -c statement_timeout={}",
        statement_timeout.as_millis()
    ));
    let mgr = Manager::from_config(
        cfg,
        tls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(mgr)
        .max_size(size)
        // The most recently used connection first: a quiet relay keeps one or two warm and
        // lets the rest idle, so a server's `idle_session_timeout` or a pooler's
        // `client_idle_timeout` closes those (replaced when next taken) instead of every
        // connection staying busy in rotation, holding pooler slots it does not need.
        .queue_mode(deadpool_postgres::QueueMode::Lifo)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .timeouts(Timeouts {
            wait: Some(Duration::from_secs(10)),
            create: Some(CONNECT_TIMEOUT),
            recycle: Some(CONNECT_TIMEOUT),
        })
        .build()
        .context("building the connection pool")
}

/// One dedicated connection (CLI commands, LISTEN), its driver task spawned.
pub async fn connect(url: &Secret) -> anyhow::Result<tokio_postgres::Client> {
    let (mut cfg, tls) = pg_config(url)?;
    if cfg.get_application_name() == Some(application_name("").as_str()) {
        cfg.application_name(COMMAND_APPLICATION_NAME);
    }
    let (client, conn) = cfg
        .connect(tls)
        .await
        .map_err(|e| connect_error(Some(&servers(&cfg)), e))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "database connection closed");
        }
    });
    Ok(client)
}
