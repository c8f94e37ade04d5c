//! Poolers (issue 16.4): the relay binary and its commands through a real PgBouncer (the
//! system's `pgbouncer`, started by each test on a free port in front of the test's
//! PostgreSQL). Transaction mode: two poll-only relays share the work, the commands work
//! twice in a row, and nothing says "prepared statement". Session mode: LISTEN works.

use crate::common::fault::*;
use crate::common::process::*;
use crate::common::replication::level_count;
use crate::common::*;

use std::process::{Child, Command, Stdio};

/// A PgBouncer of the test's own, in front of the test's server; killed on drop.
struct PgBouncer {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl PgBouncer {
    /// `mode`: "transaction" or "session". In transaction mode three server connections per
    /// user and database, so the relays' transactions interleave on shared server
    /// connections; in session mode each client holds one, so there are enough for all of a
    /// relay's (its pool, LISTEN, the wake lock, SSE). `extra`: more `[pgbouncer]` settings.
    async fn start(server_url: &str, mode: &str, extra: &str) -> Self {
        let u = url::Url::parse(server_url).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let port = free_addr().rsplit(':').next().unwrap().parse().unwrap();
        let ini = dir.path().join("pgbouncer.ini");
        let size = if mode == "transaction" { 3 } else { 20 };
        let users = dir.path().join("userlist.txt");
        std::fs::write(&users, format!("\"{}\" \"\"\n", u.username())).unwrap();
        std::fs::write(
            &ini,
            format!(
                "[databases]\n* = host={} port={}\n[pgbouncer]\nlisten_addr = 127.0.0.1\n\
                 listen_port = {port}\nunix_socket_dir =\nauth_type = trust\n\
                 auth_file = {}\npool_mode = {mode}\ndefault_pool_size = {size}\n\
                 max_client_conn = 200\n\
                 ignore_startup_parameters = options,extra_float_digits\n\
                 logfile = {}\n{extra}\n",
                u.host_str().unwrap(),
                u.port().unwrap_or(5432),
                users.display(),
                dir.path().join("pgbouncer.log").display(),
            ),
        )
        .unwrap();
        // PgBouncer refuses to run as root: as root, it runs as postgres (as the tests'
        // own cluster does).
        let mut cmd = Command::new("pgbouncer");
        if nix::unistd::geteuid().is_root() {
            // Its own directory, so that it can write its log there.
            let postgres = nix::unistd::User::from_name("postgres").unwrap().unwrap();
            nix::unistd::chown(dir.path(), Some(postgres.uid), Some(postgres.gid)).unwrap();
            cmd.args(["-u", "postgres"]);
        }
        let child = cmd
            .arg(&ini)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pgbouncer on PATH (apt-get install pgbouncer)");
        let me = Self { child, port, dir };
        wait_until("pgbouncer accepting", || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await;
        me
    }

    /// `url` with its host and port replaced by this PgBouncer's.
    fn url(&self, url: &str) -> String {
        let mut u = url::Url::parse(url).unwrap();
        u.set_host(Some("127.0.0.1")).unwrap();
        u.set_port(Some(self.port)).unwrap();
        u.to_string()
    }

    /// PgBouncer's own log.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pgbouncer.log")).unwrap_or_default()
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Completed deliveries a relay counted, from its /metrics.
async fn completed(http: &str) -> f64 {
    let (_, body) = http_get(&format!("{http}/metrics")).await;
    body.lines()
        .filter(|l| l.starts_with("outbox_events_completed_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Lines of a relay's or command's output that report a failure.
fn errors(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| l.contains("ERROR") || l.contains("prepared statement"))
        .collect()
}

/// Runs a command through the pooler; it must succeed and say nothing about errors.
async fn command(config: &tempfile::NamedTempFile, args: &[&str]) -> String {
    let mut all = args.to_vec();
    all.extend(["--config", path_str(config)]);
    let (status, out, err) = run_to_end(args[0], relay_cmd(&all)).await;
    assert!(status.success(), "{args:?} failed: {err}");
    assert!(errors(&err).is_empty(), "{args:?} said: {err}");
    out
}

const EVENTS: usize = 1500;

/// Transaction mode: two poll-only relays share the events, every one arrives, and the
/// commands work twice in a row (the second run met statements the first left behind).
#[tokio::test(flavor = "multi_thread")]
async fn transaction_mode_two_poll_only_relays_and_the_commands() {
    let db = TestDb::new().await;
    migrate_as_relay_config(&db.url).await;
    let bouncer = PgBouncer::start(&db.url, "transaction", "").await;
    let url = bouncer.url(&db.url);
    let rx = Receiver::start().await;
    // A lease far longer than a delivery here: a redelivery would be a lost outcome write.
    // Retention runs at the first claim round: the expired rows below go in batches, each a
    // transaction of its own under the transaction-scoped lock (a session lock would stay
    // on whichever server connection took it).
    let extra = "listen = false\npoll_interval = \"100ms\"\nbatch_size = 20\nlease = \"60s\"\n\
                 retention = \"1h\"";
    let direct = db.client().await;
    let expired = 2500; // more than one retention batch
    direct
        .execute(
            "INSERT INTO \"OutboxEvent\" (event_type, payload, status, processed_at)
             SELECT 'EXPIRED', '{}', 'COMPLETED', now() - interval '1 day'
               FROM generate_series(1, $1)",
            &[&expired],
        )
        .await
        .unwrap();
    let (file_a, http_a) = relay_config(&url, &[("main", &rx)], extra);
    let (file_b, http_b) = relay_config(&url, &[("main", &rx)], extra);
    let mut a = relay("relay-a", &file_a);
    let mut b = relay("relay-b", &file_b);
    wait_ready("relay a ready", &http_a).await;
    wait_ready("relay b ready", &http_b).await;
    wait_until("retention deleted the expired rows", || {
        let direct = &direct;
        async move { count_status(direct, "COMPLETED").await == 0 }
    })
    .await;
    // The line follows the commit, and reaches us through a pipe.
    wait_until("a relay's retention line", || {
        let found = [&a, &b]
            .iter()
            .any(|r| r.stderr().contains("retention: deleted"));
        async move { found }
    })
    .await;

    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.extend(insert_events(&direct, EVENTS / 5, "POOLED").await);
    }
    rx.wait_accepted(&ids).await;
    wait_until("every row COMPLETED", || {
        let direct = &direct;
        async move { count_status(direct, "COMPLETED").await == EVENTS as i64 }
    })
    .await;
    let counts = rx.accepted_counts();
    let accepted: usize = counts.values().sum();
    // Exactly once here: no relay stopped or lost its lease, so nothing was redelivered.
    assert_eq!(accepted, EVENTS, "duplicates: {}", accepted - EVENTS);
    let (by_a, by_b) = (completed(&http_a).await, completed(&http_b).await);
    assert!(by_a > 0.0 && by_b > 0.0, "shared: a {by_a}, b {by_b}");
    assert_eq!((by_a + by_b) as usize, EVENTS);

    // The commands, each twice. Some events FAILED first, for retry and skip.
    direct
        .batch_execute(
            "UPDATE \"OutboxEvent\" SET status = 'FAILED', error_message = 'test'
              WHERE id IN (SELECT id FROM \"OutboxEvent\" ORDER BY id LIMIT 6)",
        )
        .await
        .unwrap();
    let failed: Vec<String> = ids_with_status(&direct, "FAILED")
        .await
        .into_iter()
        .collect();
    let (cfg, _) = relay_config(&url, &[("main", &rx)], extra);
    for round in 0..2 {
        let status = command(&cfg, &["status"]).await;
        assert!(status.contains("FAILED"), "status said: {status}");
        command(&cfg, &["skip", "--id", &failed[round]]).await;
        command(&cfg, &["retry", "--failed"]).await;
        command(&cfg, &["purge", "--older-than", "1h"]).await;
        let id = command(&cfg, &["publish", "--type", "CLI.PUBLISHED"]).await;
        rx.wait_accepted(&[id.trim().to_owned()]).await;
        // One row per statement: two rows in one UPDATE can deadlock with a relay's claim.
        for id in [&failed[2 + 2 * round], &failed[3 + 2 * round]] {
            direct
                .execute(
                    "UPDATE \"OutboxEvent\" SET status = 'FAILED', error_message = 'test'
                      WHERE id::text = $1",
                    &[id],
                )
                .await
                .unwrap();
        }
    }

    assert!(a.is_running() && b.is_running(), "a relay exited");
    for r in [&a, &b] {
        let err = r.stderr();
        assert!(errors(&err).is_empty(), "{}: {:?}", r.name(), errors(&err));
    }
    a.signal(nix::sys::signal::Signal::SIGTERM);
    b.signal(nix::sys::signal::Signal::SIGTERM);
    a.wait_exit(EXIT_PATIENCE).await;
    b.wait_exit(EXIT_PATIENCE).await;
}

/// Session mode: a relay with LISTEN (poll once an hour) through PgBouncer is woken by
/// inserts.
#[tokio::test(flavor = "multi_thread")]
async fn session_mode_listen_wakes_the_relay() {
    let db = TestDb::new().await;
    migrate_as_relay_config(&db.url).await;
    let bouncer = PgBouncer::start(&db.url, "session", "").await;
    let rx = Receiver::start().await;
    let (file, http) = relay_config(
        &bouncer.url(&db.url),
        &[("main", &rx)],
        "listen = true\npoll_interval = \"1h\"",
    );
    let mut r = relay("relay", &file);
    wait_ready("relay ready", &http).await;
    r.wait_log(&["listening for new events"]).await;
    let direct = db.client().await;
    for n in 0..3 {
        let ids = insert_events(&direct, 10, &format!("WOKEN.{n}")).await;
        rx.wait_accepted(&ids).await;
    }
    assert!(errors(&r.stderr()).is_empty(), "{:?}", errors(&r.stderr()));
    r.signal(nix::sys::signal::Signal::SIGTERM);
    r.wait_exit(EXIT_PATIENCE).await;
}

/// Connection churn through a pooler (issue 16.6): PgBouncer closes the relay's idle client
/// connections (`client_idle_timeout`) and its own idle server connections
/// (`server_idle_timeout`); then the database's `statement_timeout` (through a pooler the
/// relay's own, sent as a startup option, is dropped) cancels every claim while a lock is
/// held. Each incident is one warning and, once over, one line saying claims work again;
/// nothing is lost.
#[tokio::test(flavor = "multi_thread")]
async fn idle_timeouts_and_statement_timeouts_cost_a_line_each_and_lose_nothing() {
    let db = TestDb::new().await;
    migrate_as_relay_config(&db.url).await;
    let direct = db.client().await;
    let dbname = direct
        .query_one("SELECT current_database()", &[])
        .await
        .unwrap()
        .get::<_, String>(0);
    direct
        .batch_execute(&format!(
            "ALTER DATABASE \"{dbname}\" SET statement_timeout = '300ms'"
        ))
        .await
        .unwrap();
    let bouncer = PgBouncer::start(
        &db.url,
        "transaction",
        "client_idle_timeout = 2\nserver_idle_timeout = 1",
    )
    .await;
    let url = bouncer.url(&db.url);
    let rx = Receiver::start().await;
    let extra = "listen = false\npoll_interval = \"100ms\"\nbatch_size = 20\nlease = \"60s\"";
    let (file, http) = relay_config(&url, &[("main", &rx)], extra);
    let mut r = relay("relay", &file);
    wait_ready("relay ready", &http).await;

    // Idle timeouts: a burst opens several pooled connections; idle, PgBouncer closes them.
    let mut all = insert_events(&direct, 200, "BEFORE.IDLE").await;
    rx.wait_accepted(&all).await;
    wait_until("PgBouncer closing idle clients and servers", || {
        let log = bouncer.log();
        async move { log.contains("client_idle_timeout") && log.contains("server idle timeout") }
    })
    .await;
    let ids = insert_events(&direct, 200, "AFTER.IDLE").await;
    rx.wait_accepted(&ids).await;
    all.extend(ids);
    let idle_warnings = level_count(&r.stderr(), " WARN ");

    // statement_timeout: the table locked for longer than the timeout; the events committed
    // with the lock's release.
    direct
        .batch_execute("BEGIN; LOCK TABLE \"OutboxEvent\" IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let locked = insert_events(&direct, 50, "WHILE.LOCKED").await;
    r.wait_log_count("canceling statement due to statement timeout", 5)
        .await;
    direct.batch_execute("COMMIT").await.unwrap();
    rx.wait_accepted(&locked).await;
    all.extend(locked);
    r.wait_log(&["claims: working again"]).await;
    wait_until("every row COMPLETED", || {
        let (direct, n) = (&direct, all.len() as i64);
        async move { count_status(direct, "COMPLETED").await == n }
    })
    .await;

    let err = r.stderr();
    let counts = rx.accepted_counts();
    assert!(all.iter().all(|id| counts.contains_key(id)));
    assert_eq!(counts.values().sum::<usize>(), all.len(), "duplicates");
    assert!(
        idle_warnings <= 1,
        "{idle_warnings} warnings for idle timeouts: {err}"
    );
    let claim_warnings = err
        .lines()
        .filter(|l| l.contains(" WARN ") && l.contains("claim failed"))
        .count();
    assert_eq!(claim_warnings, 1, "one warning per incident: {err}");
    let lock_warnings = level_count(&err, " WARN ") - idle_warnings;
    assert!(
        lock_warnings <= 3,
        "{lock_warnings} warnings for one lock: {err}"
    );
    assert_eq!(level_count(&err, " ERROR "), 0, "{err}");
    r.signal(nix::sys::signal::Signal::SIGTERM);
    r.wait_exit(EXIT_PATIENCE).await;
}

/// Prisma's `timestamp(3)` columns through a transaction-mode pooler, which drops the
/// relay's `TimeZone=UTC`, on a database whose TimeZone is America/New_York: the relay still
/// reads created_at and writes processed_at as UTC (envelope, dashboard, oldest pending age),
/// and says once at start how it reads created_at. A row written from a New York session
/// with an explicit UTC value arrives with that time; one left to the column's default
/// (CURRENT_TIMESTAMP, New York's wall clock) arrives with that reading taken as UTC, as
/// docs/configuration.md says ("Timestamps without time zone").
#[tokio::test(flavor = "multi_thread")]
async fn timestamps_without_time_zone_are_utc_whatever_the_session_time_zone() {
    let db = TestDb::new().await;
    let direct = db.client().await;
    direct
        .batch_execute(crate::common::orm::PRISMA.ddl)
        .await
        .unwrap();
    direct
        .batch_execute(&format!(
            "ALTER DATABASE {} SET TimeZone = 'America/New_York'",
            db.name
        ))
        .await
        .unwrap();
    migrate_as_relay_config(&db.url).await;
    let bouncer = PgBouncer::start(&db.url, "transaction", "").await;
    let url = bouncer.url(&db.url);
    // The premise: through this pooler the relay's sessions are not in UTC.
    let pooled = connect(&url).await;
    let zone: String = pooled.query_one("SHOW TimeZone", &[]).await.unwrap().get(0);
    assert_eq!(zone, "America/New_York");

    let rx = Receiver::start().await;
    let extra = "listen = false\npoll_interval = \"100ms\"";
    let (file, http) = relay_config(&url, &[("main", &rx)], extra);
    let mut relay = relay("relay", &file);
    wait_ready("relay ready", &http).await;

    let writer = db.client().await;
    writer
        .batch_execute("SET TimeZone = 'America/New_York'")
        .await
        .unwrap();
    let before: String = writer
        .query_one("SELECT (now() AT TIME ZONE 'UTC')::text", &[])
        .await
        .unwrap()
        .get(0);
    writer
        .batch_execute(
            "INSERT INTO \"OutboxEvent\" (id, event_type, org_id, payload, created_at)
             VALUES ('explicit-utc', 'TZ.EXPLICIT', 'org_1', '{}', '2026-11-20 10:00:00.123')",
        )
        .await
        .unwrap();
    let local: String = writer
        .query_one(
            "INSERT INTO \"OutboxEvent\" (id, event_type, org_id, payload)
             VALUES ('column-default', 'TZ.DEFAULT', 'org_1', '{}') RETURNING created_at::text",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let ids = ["explicit-utc".to_owned(), "column-default".to_owned()];
    rx.wait_accepted(&ids).await;
    wait_until("both COMPLETED", || {
        let direct = &direct;
        async move { count_status(direct, "COMPLETED").await == 2 }
    })
    .await;

    let timestamp = |id: &str| {
        rx.deliveries()
            .into_iter()
            .find(|d| d.id == id)
            .unwrap()
            .body["timestamp"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(timestamp("explicit-utc"), "2026-11-20T10:00:00.123000Z");
    // New York's wall clock, taken as UTC: early by the zone's offset.
    let as_utc = chrono::NaiveDateTime::parse_from_str(&local, "%Y-%m-%d %H:%M:%S%.f")
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string();
    assert_eq!(timestamp("column-default"), as_utc);

    // processed_at is UTC: between the UTC clock before the inserts and now.
    let in_utc: bool = direct
        .query_one(
            "SELECT bool_and(processed_at BETWEEN date_trunc('second', $1::text::timestamp)
                                             AND now() AT TIME ZONE 'UTC')
               FROM \"OutboxEvent\"",
            &[&before],
        )
        .await
        .unwrap()
        .get(0);
    assert!(in_utc, "processed_at is written in UTC");

    // The dashboard shows created_at as the instant it is.
    let (code, body) = http_get(&format!("{http}/api/events/explicit-utc")).await;
    assert_eq!(code, 200, "{body}");
    let ev: serde_json::Value = serde_json::from_str(&body).unwrap();
    let shown = ev["event"]["created_at"]
        .as_str()
        .unwrap_or_else(|| panic!("{body}"));
    let shown = chrono::DateTime::parse_from_rfc3339(shown).unwrap();
    assert_eq!(
        shown.with_timezone(&chrono::Utc).to_rfc3339(),
        "2026-11-20T10:00:00.123+00:00"
    );

    // The relay said once how it reads created_at.
    let caveat = "created_at is timestamp without time zone";
    assert_eq!(relay.log_count(caveat), 1, "{}", relay.stderr());
    relay.signal(nix::sys::signal::Signal::SIGTERM);
    relay.wait_exit(EXIT_PATIENCE).await;

    // The oldest pending age counts from a UTC created_at: an hour, not an hour minus the
    // offset.
    writer
        .batch_execute(
            "INSERT INTO \"OutboxEvent\" (id, event_type, payload, created_at)
             VALUES ('an-hour-old', 'TZ.OLD', '{}', now() AT TIME ZONE 'UTC' - interval '1 hour')",
        )
        .await
        .unwrap();
    let (cfg, _) = relay_config(&url, &[("main", &rx)], extra);
    let status: serde_json::Value =
        serde_json::from_str(&command(&cfg, &["status", "--json"]).await).unwrap();
    let age = status["oldest_pending_age_seconds"].as_f64().unwrap();
    assert!((3600.0..7200.0).contains(&age), "oldest pending age {age}");

    // `publish` gives created_at in UTC rather than leave it to the column's default.
    let id = command(&cfg, &["publish", "--type", "TZ.PUBLISHED"]).await;
    let in_utc: bool = direct
        .query_one(
            "SELECT created_at BETWEEN date_trunc('second', $1::text::timestamp)
                                   AND now() AT TIME ZONE 'UTC'
               FROM \"OutboxEvent\" WHERE id = $2",
            &[&before, &id.trim()],
        )
        .await
        .unwrap()
        .get(0);
    assert!(in_utc, "publish writes created_at in UTC");
}
