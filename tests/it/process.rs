//! The real `outbox-relay` binary as a child process, against real PostgreSQL and the
//! harness's real HTTP receiver: crashes, signals, exit codes, the CLI and database outages.

use crate::common::broker::retried_ids;
use crate::common::process::*;
use crate::common::*;

use std::collections::HashSet;
use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;

/// One webhook with its own request timeout (the harness's is 5 s).
fn webhook_with_timeout(name: &str, url: &str, timeout: &str) -> String {
    format!(
        "[[webhook]]\nname = \"{name}\"\nurl = \"{url}\"\nsecret = \"{SECRET}\"\ntimeout = \"{timeout}\"\n"
    )
}

/// (id, status, retry_count, claim_token is NULL, lease_expires_at is NULL) of every row.
async fn lease_state(client: &tokio_postgres::Client) -> Vec<(String, String, i32, bool, bool)> {
    client
        .query(
            "SELECT id::text, status::text, retry_count, claim_token IS NULL,
                    lease_expires_at IS NULL
               FROM \"OutboxEvent\" ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_batch_then_a_new_relay_delivers_everything() {
    let db = TestDb::new().await;
    let rx = Receiver::with_script(Arc::new(|_, _| {
        Reply::ok().delayed(Duration::from_millis(100))
    }))
    .await;
    let extra = format!(
        "lease = \"2s\"\nbatch_size = 50\n{}",
        webhook_toml("main", &rx.url)
    );
    let file = db.migrated_config_file(&extra).await;
    let client = db.client().await;
    let ids = insert_events(&client, 300, "PROJECT.UPDATED").await;

    let mut a = relay("relay A", &file);
    rx.wait_for(">= 30 requests", |ds| ds.len() >= 30).await;
    a.signal(Signal::SIGKILL);
    let status = a.wait_exit(EXIT_PATIENCE).await;
    assert_eq!(status.signal(), Some(libc::SIGKILL), "A: {status}");

    // What A left behind: rows it claimed but did not record are the only ones that may
    // be delivered twice.
    let processing_at_kill = ids_with_status(&client, "PROCESSING").await;
    let completed_by_a = count_status(&client, "COMPLETED").await;
    let requests_by_a = rx.deliveries().len();

    let mut b = relay("relay B", &file);
    rx.wait_accepted(&ids).await;
    wait_until("all 300 rows COMPLETED", || {
        let c = &client;
        async move { count_status(c, "COMPLETED").await == 300 }
    })
    .await;
    b.signal(Signal::SIGTERM);
    let status = b.wait_exit(EXIT_PATIENCE).await;
    assert_eq!(status.code(), Some(0), "B: {status}");

    let counts = rx.accepted_counts();
    let mut duplicates: Vec<(&String, &usize)> = counts.iter().filter(|(_, n)| **n > 1).collect();
    duplicates.sort();
    println!(
        "A: {requests_by_a} requests answered before the kill, {completed_by_a} rows recorded \
         COMPLETED, {} left PROCESSING; duplicates after B: {}",
        processing_at_kill.len(),
        duplicates.len()
    );
    for (id, n) in &duplicates {
        println!("  duplicate: {id} accepted {n} times");
    }
    assert!(duplicates.len() <= 300);
    for (id, n) in &duplicates {
        assert!(
            processing_at_kill.contains(*id),
            "{id} was accepted {n} times but A had not left it PROCESSING"
        );
        assert!(**n <= 2, "{id} accepted {n} times with only one crash");
    }
    let wanted: HashSet<&String> = ids.iter().collect();
    assert!(counts.keys().all(|id| wanted.contains(id)));
    assert_eq!(counts.len(), 300);
    assert_eq!(count_status(&client, "COMPLETED").await, 300);
    for s in ["PENDING", "PROCESSING", "FAILED"] {
        assert_eq!(count_status(&client, s).await, 0, "rows left {s}");
    }
    assert!(rx.deliveries().iter().all(|d| d.verified));
    assert_no_secret("relay A", &a.stderr());
    assert_no_secret("relay B", &b.stderr());
    assert_no_secret("relay A (stdout)", &a.stdout());
    assert_no_secret("relay B (stdout)", &b.stdout());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_deliveries_and_exits_0() {
    let db = TestDb::new().await;
    let arrived = Arc::new(AtomicUsize::new(0));
    let seen = arrived.clone();
    let rx = Receiver::with_script(Arc::new(move |_, _| {
        seen.fetch_add(1, Ordering::SeqCst);
        Reply::ok().delayed(Duration::from_secs(2))
    }))
    .await;
    let extra = format!(
        "shutdown_timeout = \"20s\"\n{}",
        webhook_with_timeout("main", &rx.url, "30s")
    );
    let file = db.migrated_config_file(&extra).await;
    let client = db.client().await;
    let ids = insert_events(&client, 5, "PROJECT.UPDATED").await;

    let mut relay = relay("relay", &file);
    wait_until("5 requests arrived at the receiver", || {
        let n = arrived.load(Ordering::SeqCst);
        async move { n >= 5 }
    })
    .await;
    relay.signal(Signal::SIGTERM);
    let status = relay.wait_exit(PATIENCE).await;
    assert_eq!(status.code(), Some(0), "{status}");

    let counts = rx.accepted_counts();
    for id in &ids {
        assert_eq!(counts.get(id), Some(&1), "{id} accepted exactly once");
        let (status, retries, _, processed) = row_state(&client, id).await;
        assert_eq!(
            (status.as_str(), retries, processed),
            ("COMPLETED", 0, true)
        );
    }
    assert_eq!(rx.deliveries().len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_past_the_grace_releases_rows_to_pending() {
    let db = TestDb::new().await;
    let arrived = Arc::new(AtomicUsize::new(0));
    let seen = arrived.clone();
    let rx = Receiver::with_script(Arc::new(move |_, _| {
        seen.fetch_add(1, Ordering::SeqCst);
        Reply::ok().delayed(Duration::from_secs(60))
    }))
    .await;
    // The request timeout is far beyond the grace, so only the grace can end the requests.
    let extra = format!(
        "shutdown_timeout = \"1s\"\n{}",
        webhook_with_timeout("main", &rx.url, "120s")
    );
    let file = db.migrated_config_file(&extra).await;
    let client = db.client().await;
    let ids = insert_events(&client, 3, "PROJECT.UPDATED").await;

    let mut relay = relay("relay", &file);
    wait_until("3 requests in flight and 3 rows PROCESSING", || {
        let n = arrived.load(Ordering::SeqCst);
        let c = &client;
        async move { n >= 3 && count_status(c, "PROCESSING").await == 3 }
    })
    .await;
    relay.signal(Signal::SIGTERM);
    let status = relay.wait_exit(EXIT_PATIENCE).await;
    assert_eq!(status.code(), Some(0), "{status}");

    let rows = lease_state(&client).await;
    assert_eq!(rows.len(), 3);
    for (id, status, retries, token_null, lease_null) in rows {
        assert!(ids.contains(&id));
        // The token stays: relays find a row put back to PENDING by its due time.
        assert_eq!(
            (status.as_str(), retries, token_null, lease_null),
            ("PENDING", 0, false, true),
            "{id}: (status, retry_count, claim_token IS NULL, lease_expires_at IS NULL)"
        );
    }
    assert!(rx.accepted_counts().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_config_exits_2_naming_the_key() {
    let db = TestDb::new().await;
    let cases: Vec<(&str, String, &str)> = vec![
        ("unknown key", "batchsize = 3\n".into(), "batchsize"),
        (
            "not a number",
            "batch_size = \"many\"\n".into(),
            "batch_size",
        ),
        (
            "not a duration",
            "poll_interval = \"soon\"\n".into(),
            "poll_interval",
        ),
        (
            "SQL in the table name",
            "table = 'x\"; DROP TABLE y; --'\n".into(),
            "table",
        ),
        (
            "ftp webhook",
            format!("[[webhook]]\nname = \"a\"\nurl = \"ftp://x\"\nsecret = \"{SECRET}\"\n"),
            "webhook[0].url",
        ),
        (
            "unset secret variable",
            "[[webhook]]\nname = \"a\"\nurl = \"http://127.0.0.1:9/hook\"\n\
             secret = \"env:SOME_UNSET_VAR_XYZ\"\n"
                .into(),
            "webhook[0].secret",
        ),
    ];
    for (what, toml, key) in &cases {
        let file = db.config_file(toml);
        for sub in ["check-config", "run"] {
            let mut cmd = relay_cmd(&[sub, "--config", path_str(&file)]);
            cmd.env_remove("SOME_UNSET_VAR_XYZ");
            let (status, _, err) = run_to_end(&format!("{sub} ({what})"), cmd).await;
            assert_eq!(
                status.code(),
                Some(2),
                "{sub} with {what}: {status}; stderr:\n{err}"
            );
            assert!(
                err.contains(key),
                "{sub} with {what}: stderr does not name `{key}`:\n{err}"
            );
            assert!(!err.contains("panicked"), "{sub} with {what}:\n{err}");
            assert_no_secret(&format!("{sub} with {what}"), &err);
        }
    }
    // The injection attempt created nothing: nor did anything else, as nothing got that far.
    let client = db.client().await;
    let tables: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_tables
              WHERE tablename LIKE 'x%' OR tablename = 'y' OR schemaname = 'public'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 0, "a bad config created tables");

    // The same key names come through OUTBOX_RELAY_CONFIG.
    let file = db.config_file("batch_size = \"many\"\n");
    let mut cmd = relay_cmd(&["check-config"]);
    cmd.env("OUTBOX_RELAY_CONFIG", file.path());
    let (status, _, err) = run_to_end("check-config (env)", cmd).await;
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("batch_size"), "{err}");

    // A valid file.
    let good = db.config_file(&format!(
        "poll_interval = \"5s\"\nbatch_size = 10\n{}",
        webhook_toml("main", "http://127.0.0.1:9/hook")
    ));
    let (status, out, err) = run_to_end(
        "check-config (valid)",
        relay_cmd(&["check-config", "--config", path_str(&good)]),
    )
    .await;
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(!out.trim().is_empty());
    assert_no_secret("check-config", &format!("{out}{err}"));

    // Precedence of the database URL: flag, then DATABASE_URL, then the file.
    db.migrate(&db.config("")).await;
    let bogus = "postgres://postgres@127.0.0.1:1/nowhere";
    let bogus_file = write_config(&format!("database_url = \"{bogus}\"\n"));
    let good_file = db.config_file("");

    // Flag (after the subcommand) beats env and file.
    let mut cmd = relay_cmd(&[
        "status",
        "--json",
        "--config",
        path_str(&bogus_file),
        "--database-url",
        &db.url,
    ]);
    cmd.env("DATABASE_URL", bogus);
    let (status, out, err) = run_to_end("status (flag wins)", cmd).await;
    assert_eq!(status.code(), Some(0), "the flag must win: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("status --json is JSON");
    assert!(v["counts"].is_object(), "{out}");

    // Flag (before the subcommand) beats a good env: a bogus flag fails.
    let mut cmd = relay_cmd(&[
        "--database-url",
        bogus,
        "status",
        "--json",
        "--config",
        path_str(&good_file),
    ]);
    cmd.env("DATABASE_URL", &db.url);
    let (status, _, err) = run_to_end("status (bogus flag)", cmd).await;
    assert_ne!(status.code(), Some(0), "a bogus flag must be used: {err}");
    assert_ne!(
        status.code(),
        Some(2),
        "an unreachable database is no config error"
    );

    // Environment beats the file.
    let mut cmd = relay_cmd(&["status", "--json", "--config", path_str(&bogus_file)]);
    cmd.env("DATABASE_URL", &db.url);
    let (status, _, err) = run_to_end("status (env wins)", cmd).await;
    assert_eq!(
        status.code(),
        Some(0),
        "DATABASE_URL must beat the file: {err}"
    );

    let mut cmd = relay_cmd(&["status", "--json", "--config", path_str(&good_file)]);
    cmd.env("DATABASE_URL", bogus);
    let (status, _, err) = run_to_end("status (bogus env)", cmd).await;
    assert_ne!(status.code(), Some(0), "DATABASE_URL must be used: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_relay_keeps_running_and_resumes() {
    let cluster = new_cluster().await;
    let url = cluster.url("postgres");
    let rx = Receiver::start().await;
    let addr = free_addr();
    let extra = format!(
        "poll_interval = \"1s\"\n{}\n[http]\nlisten = \"{addr}\"\n",
        webhook_toml("main", &rx.url)
    );
    migrate_url(&url, &extra).await;
    let file = write_config(&format!("database_url = \"{url}\"\n{extra}"));
    let readyz = format!("http://{addr}/readyz");
    let ready_is = |want: u16| {
        let readyz = readyz.clone();
        move || {
            let readyz = readyz.clone();
            async move { http_get(&readyz).await.0 == want }
        }
    };

    let mut relay = relay("relay", &file);
    wait_until("/readyz 200 with the database up", ready_is(200)).await;
    let client = connect(&url).await;
    let first = insert_events(&client, 1, "PROJECT.UPDATED").await;
    rx.wait_accepted(&first).await;
    wait_until("the first event COMPLETED", || {
        let c = &client;
        async move { count_status(c, "COMPLETED").await == 1 }
    })
    .await;
    // The private cluster runs with synchronous_commit=off and stop() is an immediate
    // (crash-like) shutdown: without a checkpoint the last commits would be lost.
    client.batch_execute("CHECKPOINT").await.unwrap();
    drop(client);

    stop_cluster(&cluster).await;
    relay
        .wait_log(&["LISTEN connection lost", "claim failed"])
        .await;
    wait_until("/readyz 503 while the database is down", ready_is(503)).await;
    assert_eq!(http_get(&format!("http://{addr}/healthz")).await.0, 200);
    // The outage itself: keep the database down until the relay has failed three more
    // claims (each logged, at warn for the first and debug after), so it is still trying,
    // not merely not dead yet.
    let failed = relay.log_count("claim failed; retrying");
    relay
        .wait_log_count("claim failed; retrying", failed + 3)
        .await;
    assert!(
        relay.is_running(),
        "the relay exited during the outage:\n{}",
        relay.stderr()
    );

    start_cluster_again(&cluster).await;
    wait_until("/readyz 200 again, without a restart", ready_is(200)).await;
    let client = connect(&url).await;
    let second = insert_events(&client, 1, "PROJECT.UPDATED").await;
    rx.wait_accepted(&second).await;
    wait_until("the second event COMPLETED", || {
        let c = &client;
        async move { count_status(c, "COMPLETED").await == 2 }
    })
    .await;
    assert!(relay.is_running(), "the relay was not restarted");
    relay.signal(Signal::SIGTERM);
    let status = relay.wait_exit(EXIT_PATIENCE).await;
    assert_eq!(status.code(), Some(0), "{status}");
    drop(client);
    drop(relay);
    drop_cluster(cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_started_while_the_database_is_down_delivers_once_it_is_up() {
    let cluster = new_cluster().await;
    let url = cluster.url("postgres");
    stop_cluster(&cluster).await;
    let rx = Receiver::start().await;
    let extra = format!("poll_interval = \"1s\"\n{}", webhook_toml("main", &rx.url));
    let file = write_config(&format!(
        "database_url = \"{url}\"\n{}",
        with_free_port(&extra)
    ));

    let mut relay = relay("relay", &file);
    relay.wait_log(&["relay not started yet"]).await;
    assert!(
        relay.is_running(),
        "the relay must keep trying while the database is down:\n{}",
        relay.stderr()
    );

    start_cluster_again(&cluster).await;
    migrate_url(&url, &extra).await;
    let client = connect(&url).await;
    let ids = insert_events(&client, 2, "PROJECT.UPDATED").await;
    rx.wait_accepted(&ids).await;
    wait_until("both events COMPLETED", || {
        let c = &client;
        async move { count_status(c, "COMPLETED").await == 2 }
    })
    .await;
    assert!(relay.is_running());
    relay.signal(Signal::SIGTERM);
    let status = relay.wait_exit(EXIT_PATIENCE).await;
    assert_eq!(status.code(), Some(0), "{status}");
    drop(client);
    drop(relay);
    drop_cluster(cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_status_publish_retry_purge() {
    let db = TestDb::new().await;
    let file = db.config_file("");
    let cfg = path_str(&file);
    for n in 1..=2 {
        let (status, _, err) = run_to_end(
            &format!("migrate #{n}"),
            relay_cmd(&["migrate", "--config", cfg]),
        )
        .await;
        assert_eq!(status.code(), Some(0), "migrate #{n}: {err}");
    }
    let client = db.client().await;

    // publish
    let (status, out, err) = run_to_end(
        "publish",
        relay_cmd(&[
            "publish",
            "--config",
            cfg,
            "--type",
            "PROJECT.UPDATED",
            "--org",
            "org_1",
            "--entity-type",
            "Project",
            "--entity-id",
            "p_1",
            "--payload",
            r#"{"a":1}"#,
        ]),
    )
    .await;
    assert_eq!(status.code(), Some(0), "publish: {err}");
    let id = out.trim().to_owned();
    assert!(
        uuid::Uuid::parse_str(&id).is_ok(),
        "publish printed {out:?}"
    );
    let row = client
        .query_one(
            "SELECT event_type, org_id, entity_type, entity_id, payload, status::text
               FROM \"OutboxEvent\" WHERE id::text = $1",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "PROJECT.UPDATED");
    assert_eq!(row.get::<_, Option<String>>(1).as_deref(), Some("org_1"));
    assert_eq!(row.get::<_, Option<String>>(2).as_deref(), Some("Project"));
    assert_eq!(row.get::<_, Option<String>>(3).as_deref(), Some("p_1"));
    assert_eq!(
        row.get::<_, serde_json::Value>(4),
        serde_json::json!({"a": 1})
    );
    assert_eq!(row.get::<_, String>(5), "PENDING");

    // status --json, and the human form
    let (status, out, err) = run_to_end(
        "status --json",
        relay_cmd(&["status", "--json", "--config", cfg]),
    )
    .await;
    assert_eq!(status.code(), Some(0), "status: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("status --json is JSON");
    assert_eq!(v["counts"]["PENDING"], 1, "{out}");
    assert!(v["oldest_pending_age_seconds"].is_number(), "{out}");
    let (status, out, err) = run_to_end("status", relay_cmd(&["status", "--config", cfg])).await;
    assert_eq!(status.code(), Some(0), "status: {err}");
    assert!(out.contains("PENDING"), "{out}");

    // retry
    client
        .execute(
            "UPDATE \"OutboxEvent\" SET status = 'FAILED', retry_count = 12,
                    error_message = 'HTTP 500' WHERE id::text = $1",
            &[&id],
        )
        .await
        .unwrap();
    let (status, _, err) = run_to_end(
        "retry --id",
        relay_cmd(&["retry", "--config", cfg, "--id", &id]),
    )
    .await;
    assert_eq!(status.code(), Some(0), "retry: {err}");
    let (st, retries, _, _) = row_state(&client, &id).await;
    assert_eq!((st.as_str(), retries), ("PENDING", 0));

    let missing = uuid::Uuid::new_v4().to_string();
    let (status, _, err) = run_to_end(
        "retry --id (missing)",
        relay_cmd(&["retry", "--config", cfg, "--id", &missing]),
    )
    .await;
    assert_eq!(status.code(), Some(0), "retry of a missing id: {err}");
    assert!(
        err.contains(&missing) && err.contains("not retried"),
        "retry must say the id was not retried:\n{err}"
    );

    // purge: only COMPLETED rows processed before the cutoff go.
    client
        .execute(
            "UPDATE \"OutboxEvent\" SET status = 'COMPLETED',
                    processed_at = now() - interval '2 days' WHERE id::text = $1",
            &[&id],
        )
        .await
        .unwrap();
    let recent: String = client
        .query_one(
            "INSERT INTO \"OutboxEvent\" (event_type, payload, status, processed_at)
             VALUES ('X.RECENT', '{}', 'COMPLETED', now()) RETURNING id::text",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let pending_old: String = client
        .query_one(
            "INSERT INTO \"OutboxEvent\" (event_type, payload, status, created_at)
             VALUES ('X.OLD', '{}', 'PENDING', now() - interval '3 days') RETURNING id::text",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let (status, _, err) = run_to_end(
        "purge",
        relay_cmd(&["purge", "--config", cfg, "--older-than", "1d"]),
    )
    .await;
    assert_eq!(status.code(), Some(0), "purge: {err}");
    let left: HashSet<String> = client
        .query("SELECT id::text FROM \"OutboxEvent\"", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(left, HashSet::from([recent, pending_old]));

    // publish with a payload that is not JSON
    let (status, out, err) = run_to_end(
        "publish (bad payload)",
        relay_cmd(&[
            "publish",
            "--config",
            cfg,
            "--type",
            "PROJECT.UPDATED",
            "--payload",
            "not json",
        ]),
    )
    .await;
    assert!(!status.success(), "a bad payload must fail");
    assert!(out.trim().is_empty(), "no id for a bad payload: {out}");
    assert!(
        err.contains("payload") && err.contains("JSON"),
        "the message must say the payload is not JSON:\n{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    let n: i64 = client
        .query_one("SELECT count(*) FROM \"OutboxEvent\"", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2, "a bad payload inserted a row");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_print_is_applicable_sql() {
    let db = TestDb::new().await;
    let file = db.config_file("");
    let sql = cli(&file, &["migrate", "--print"]).await;
    assert!(sql.contains("OutboxEvent"), "{sql}");
    let client = db.client().await;
    let tables: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE tablename = 'OutboxEvent'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 0, "--print must not run the migration");

    // As an operator would apply it: psql runs statement by statement, so the optional
    // indexes' CONCURRENTLY statements run outside a transaction block.
    let script = write_config(&sql);
    let psql = outbox_relay::pgtemp::find_bindir().unwrap().join("psql");
    for n in 1..=2 {
        let out = std::process::Command::new(&psql)
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &db.url, "-f"])
            .arg(script.path())
            .output()
            .expect("psql runs");
        assert!(
            out.status.success(),
            "applying the printed SQL with psql, time {n}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let rx = Receiver::start().await;
    let relay = InProcessRelay::start(db.config(&webhook_toml("main", &rx.url)))
        .await
        .ready()
        .await;
    let ids = insert_events(&client, 3, "PROJECT.UPDATED").await;
    rx.wait_accepted(&ids).await;
    relay.stop().await.unwrap();
    for id in &ids {
        let (status, retries, _, processed) = row_state(&client, id).await;
        assert_eq!(
            (status.as_str(), retries, processed),
            ("COMPLETED", 0, true)
        );
    }
}

/// `statements` prints the SQL the relay prepares: each statement by name (what the benches
/// run, and what a DBA EXPLAINs) is accepted by PostgreSQL for the migrated table, with and
/// without entity order (whose claim differs); the full listing holds them all; a name it
/// does not have is an error that says where the names are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_are_printed_as_the_relay_prepares_them() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let ordered = format!(
        "[[webhook]]\nname = \"main\"\nurl = \"http://127.0.0.1:9/hook\"\n\
         secret = \"{SECRET}\"\nordering = \"entity\"\n"
    );
    for extra in ["", &ordered] {
        let file = db.migrated_config_file(extra).await;
        let names = cli(&file, &["statements", "--list"]).await;
        let names: Vec<&str> = names.lines().collect();
        for must in ["claim", "record", "sweep", "queue_counts", "stream_read"] {
            assert!(names.contains(&must), "{must} missing from {names:?}");
        }
        let listing = cli(&file, &["statements"]).await;
        let headers: Vec<&str> = listing
            .lines()
            .filter_map(|l| l.strip_prefix("-- "))
            .collect();
        assert_eq!(
            headers, names,
            "the listing names the statements in --list's order"
        );
        for name in &names {
            let sql = cli(&file, &["statements", name]).await;
            assert!(
                listing.contains(sql.trim()),
                "{name} alone differs from the listing"
            );
            if let Err(e) = client.prepare(&sql).await {
                panic!("{name} does not prepare on the migrated table ({extra:?}): {e}\n{sql}");
            }
            if *name == "claim" {
                assert_eq!(
                    sql.contains("EXISTS"),
                    !extra.is_empty(),
                    "entity order's gate"
                );
            }
        }
    }
    let file = db.config_file("");
    let (status, out, err) = run_to_end(
        "statements nope",
        relay_cmd(&["statements", "nope", "--config", path_str(&file)]),
    )
    .await;
    assert_ne!(status.code(), Some(0), "{out}");
    assert!(
        err.contains("no statement named \"nope\"") && err.contains("--list"),
        "{err}"
    );
}

/// Issue 17.6: a secret only `run` uses (SSE's token secret, a webhook's) is not read by the
/// commands that do not use it, so they run where its variable is not set; `run` and
/// `check-config` still stop with exit 2 naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_read_only_the_secrets_they_use() {
    let db = TestDb::new().await;
    let file = db.config_file(
        "[sse]\ntoken_secret = \"env:SSE_TOKEN_SECRET\"\n\
         [[webhook]]\nname = \"main\"\nurl = \"http://127.0.0.1:9/hook\"\n\
         secret = \"env:MAIN_WEBHOOK_SECRET_UNSET\"\n",
    );
    let run = |args: &[&str]| {
        let mut cmd = relay_cmd(args);
        cmd.args(["--config", path_str(&file)])
            .env_remove("SSE_TOKEN_SECRET")
            .env_remove("MAIN_WEBHOOK_SECRET_UNSET");
        let what = format!("{args:?}");
        async move { run_to_end(&what, cmd).await }
    };
    let (status, sql, err) = run(&["migrate", "--print"]).await;
    assert_eq!(status.code(), Some(0), "migrate --print: {err}");
    assert!(sql.contains("OutboxEvent"), "{sql}");
    let (status, sql, err) = run(&["migrate", "--print-grants", "app_relay"]).await;
    assert_eq!(status.code(), Some(0), "migrate --print-grants: {err}");
    assert!(sql.contains("GRANT"), "{sql}");
    for args in [
        &["migrate"][..],
        &["publish", "--type", "T.ONE"],
        &["status", "--json"],
        &["retry", "--failed"],
        &["purge", "--older-than", "1d"],
    ] {
        let (status, _, err) = run(args).await;
        assert_eq!(status.code(), Some(0), "{args:?}: {err}");
    }
    let client = db.client().await;
    assert_eq!(
        count_status(&client, "PENDING").await,
        1,
        "publish inserted"
    );

    for sub in ["check-config", "run"] {
        let (status, _, err) = run(&[sub]).await;
        assert_eq!(status.code(), Some(2), "{sub}: {err}");
        assert!(
            err.contains(
                "config error at `sse.token_secret`: environment variable \
                          SSE_TOKEN_SECRET is not set"
            ),
            "{sub}: {err}"
        );
    }
}

/// Issue 17.4: a TOML syntax error names the file, line and column, and shows the line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_toml_syntax_error_names_file_line_and_column() {
    let file = write_config("table = \"OutboxEvent\"\n[http]\nlisten = \"127.0.0.1:9470\n");
    let path = path_str(&file);
    for sub in ["check-config", "run", "migrate"] {
        let (status, _, err) = run_to_end(sub, relay_cmd(&[sub, "--config", path])).await;
        assert_eq!(status.code(), Some(2), "{sub}: {err}");
        let want = format!(
            "outbox-relay: {path}:3:25: invalid TOML: invalid basic string: close the \"...\" \
             string on its line, and check its \\ escapes\n  \
             3 | listen = \"127.0.0.1:9470\n    |                         ^\n"
        );
        assert!(err.contains(&want), "{sub}: want\n{want}\ngot\n{err}");
    }
}

/// Issue 17.5: a database nothing answers at is one line naming the host and port tried,
/// saying "connect" once, without the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_is_one_line_naming_host_and_port() {
    let port = free_addr().rsplit_once(':').unwrap().1.to_owned();
    let url = format!("postgres://relay:pw-Unreachable-9d1@127.0.0.1:{port}/app");
    for args in [&["status"][..], &["migrate"], &["retry", "--failed"]] {
        let mut cmd = relay_cmd(args);
        cmd.env("DATABASE_URL", &url);
        let (status, out, err) = run_to_end(&format!("{args:?}"), cmd).await;
        assert_eq!(status.code(), Some(1), "{args:?}: {err}");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: one line, got:\n{err}");
        let line = lines[0];
        assert!(
            line.starts_with(&format!(
                "outbox-relay: cannot connect to PostgreSQL at 127.0.0.1:{port}: "
            )),
            "{args:?}: {line}"
        );
        assert!(
            line.contains("are the host and port in database_url right?"),
            "{line}"
        );
        assert_eq!(
            line.matches("connect").count(),
            1,
            "a repeated phrase: {line}"
        );
        assert!(
            !format!("{out}{err}").contains("pw-Unreachable-9d1"),
            "{line}"
        );
    }
}

/// Runs `dev` with `args` on `db` until it prints its dashboard line and the first delivery;
/// returns the address of the dashboard line and the whole stderr, after SIGTERM (exit 0).
async fn dev_until_ready(db: &TestDb, what: &str, args: &[&str]) -> (String, String) {
    let mut cmd = relay_cmd(&[&["dev"][..], args].concat());
    cmd.env("DATABASE_URL", &db.url);
    let mut dev = Proc::spawn(what, cmd);
    dev.wait_log(&["Ctrl-C to stop"]).await;
    let err = dev.stderr();
    let addr = err
        .lines()
        .find_map(|l| l.trim().strip_prefix("dashboard  http://"))
        .and_then(|l| l.strip_suffix('/'))
        .unwrap_or_else(|| panic!("{what}: no dashboard line in\n{err}"))
        .to_owned();
    let (status, page) = http_get(&format!("http://{addr}/")).await;
    assert_eq!(status, 200, "{what}: the dashboard at {addr}: {page}");
    assert!(page.contains("outbox-relay"), "{what}: {page}");
    dev.signal(Signal::SIGTERM);
    let status = dev.wait_exit(EXIT_PATIENCE).await;
    assert!(status.success(), "{what}: {status}\n{}", dev.stderr());
    (addr, err)
}

/// Issue 17.2: `dev` serves where `--listen` says, else where its config file's
/// `[http] listen` says, and says what it takes from the file; a port in use is an error
/// naming `--listen`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_listens_where_told() {
    let db = TestDb::new().await;
    let flag = free_addr();
    let (addr, _) = dev_until_ready(&db, "dev --listen", &["--listen", &flag]).await;
    assert_eq!(addr, flag);

    // The file's address; a secret variable it names need not be set: dev reads no secret.
    let in_file = free_addr();
    let file = write_config(&format!(
        "[http]\nlisten = \"{in_file}\"\n[sse]\ntoken_secret = \"env:DEV_TEST_UNSET_SSE\"\n"
    ));
    let (addr, err) = dev_until_ready(&db, "dev --config", &["--config", path_str(&file)]).await;
    assert_eq!(addr, in_file);
    assert!(
        err.contains(&format!(
            "config {}: dev takes only [http] listen and database_url from it",
            path_str(&file)
        )),
        "{err}"
    );
    let flag = free_addr();
    let args = ["--config", path_str(&file), "--listen", &flag];
    let (addr, _) = dev_until_ready(&db, "dev --config --listen", &args).await;
    assert_eq!(addr, flag, "--listen beats the file");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let mut cmd = relay_cmd(&["dev", "--listen", &taken]);
    cmd.env("DATABASE_URL", &db.url);
    let (status, _, err) = run_to_end("dev --listen (taken)", cmd).await;
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("outbox-relay: cannot listen on {taken} ("))
            && err.contains("--listen"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_on_request() {
    let db = TestDb::new().await;
    let rx = Receiver::start().await;
    let extra = webhook_toml("main", &rx.url);
    let file = db.migrated_config_file(&extra).await;
    let mut relay = Proc::spawn(
        "relay (json)",
        relay_cmd(&["run", "--log-format", "json", "--config", path_str(&file)]),
    );
    relay.wait_log(&["listening for new events"]).await;
    let client = db.client().await;
    let ids = insert_events(&client, 2, "PROJECT.UPDATED").await;
    rx.wait_accepted(&ids).await;
    relay.signal(Signal::SIGTERM);
    let status = relay.wait_exit(EXIT_PATIENCE).await;
    assert_eq!(status.code(), Some(0), "{status}");

    let err = relay.stderr();
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 3, "too few log lines:\n{err}");
    let mut messages = Vec::new();
    for line in &lines {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        let obj = v
            .as_object()
            .unwrap_or_else(|| panic!("not a JSON object: {line}"));
        assert!(
            obj.contains_key("level") || obj.contains_key("message"),
            "no level or message: {line}"
        );
        if let Some(m) = obj.get("message").and_then(|m| m.as_str()) {
            messages.push(m.to_owned());
        }
    }
    assert!(
        messages.iter().any(|m| m.contains("relay stopped")),
        "no shutdown line among {messages:?}"
    );
    assert_no_secret("relay (json)", &err);
}

/// The value of an un-labelled (or exactly labelled) series in Prometheus text.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_deliveries_failures_and_dead_letters_and_match_status() {
    let db = TestDb::new().await;
    // OK.* succeed; FLAKY fails once; DEAD always fails (2 attempts, then FAILED).
    let rx = Receiver::with_script(Arc::new(|_, _| Reply::ok())).await;
    let addr = free_addr();
    let extra = format!(
        "max_attempts = 2\nbackoff_initial = \"20ms\"\nbackoff_max = \"50ms\"\n{}\n[http]\nlisten = \"{addr}\"\n",
        webhook_toml("main", &rx.url)
    );
    let cfg = db.config(&extra);
    db.migrate(&cfg).await;
    let client = db.client().await;
    let ok = insert_events(&client, 3, "OK.EVENT").await;
    let flaky = insert_events(&client, 1, "FLAKY").await.remove(0);
    let dead = insert_events(&client, 1, "DEAD").await.remove(0);
    let (f, d) = (flaky.clone(), dead.clone());
    rx.set_script(Arc::new(move |id, nth| {
        Reply::status(if id == d || (id == f && nth == 1) {
            500
        } else {
            200
        })
    }));
    // One more that waits for tomorrow: the queue gauges then have something to show.
    client
        .batch_execute(
            "INSERT INTO \"OutboxEvent\" (event_type, payload, next_attempt_at, created_at)
             VALUES ('LATER', '{}', now() + interval '1 day', now() - interval '10 minutes')",
        )
        .await
        .unwrap();

    let file = write_config(&format!("database_url = \"{}\"\n{extra}", db.url));
    let relay = relay("relay", &file);
    wait_until("4 COMPLETED and 1 FAILED", || {
        let c = &client;
        async move {
            count_status(c, "COMPLETED").await == 4 && count_status(c, "FAILED").await == 1
        }
    })
    .await;
    rx.wait_accepted(&ok).await;

    let (status, text) = http_get(&format!("http://{addr}/metrics")).await;
    assert_eq!(status, 200, "{text}");
    let m = |series: &str| {
        metric(&text, series).unwrap_or_else(|| panic!("{series} missing from:\n{text}"))
    };
    assert_eq!(m("outbox_events_completed_total"), 4.0);
    assert_eq!(m("outbox_events_failed_total"), 1.0);
    // Every attempt is a claim: 3 + 2 (FLAKY) + 2 (DEAD).
    assert_eq!(m("outbox_events_claimed_total"), 7.0);
    assert_eq!(
        m(r#"outbox_delivery_attempts_total{sink="main",outcome="success"}"#),
        4.0
    );
    assert_eq!(
        m(r#"outbox_delivery_attempts_total{sink="main",outcome="failure"}"#),
        3.0
    );
    assert_eq!(
        m(r#"outbox_delivery_duration_seconds_count{sink="main"}"#),
        7.0
    );
    assert_eq!(m("outbox_event_lag_seconds_count"), 4.0);
    assert_eq!(m("outbox_sse_subscribers"), 0.0);

    // The gauges agree with `outbox-relay status --json`.
    let report = outbox_relay::commands::status_report(&cfg).await.unwrap();
    assert_eq!(m("outbox_pending_events"), report.counts["PENDING"] as f64);
    assert_eq!(m("outbox_pending_events"), 1.0);
    assert_eq!(m("outbox_dead_letter_events"), report.dead_letters as f64);
    let oldest = report.oldest_pending_age_seconds.unwrap();
    let gauge = m("outbox_oldest_pending_age_seconds");
    assert!(
        (gauge - oldest).abs() < 10.0 && gauge >= 600.0,
        "gauge {gauge} vs status {oldest}"
    );
    assert_no_secret("/metrics", &text);
    drop(relay);
}

/// The relay's indexes on the test table.
async fn relay_indexes(client: &tokio_postgres::Client) -> Vec<String> {
    texts(
        client,
        "SELECT indexname::text FROM pg_indexes
          WHERE tablename = 'OutboxEvent' AND indexname LIKE '%relay%' ORDER BY 1",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_keeps_optional_indexes_only_while_their_feature_is_configured() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let migrate = |extra: &str| {
        let file = db.config_file(extra);
        async move {
            let (status, _, err) = run_to_end(
                "migrate",
                relay_cmd(&["migrate", "--config", path_str(&file)]),
            )
            .await;
            assert_eq!(status.code(), Some(0), "{err}");
            err
        }
    };
    let stream = "OutboxEvent_relay_stream_idx";
    let ordering = "OutboxEvent_relay_ordering_idx";
    let always = [
        "OutboxEvent_relay_completed_idx",
        "OutboxEvent_relay_due_held_idx",
        "OutboxEvent_relay_failed_idx",
        "OutboxEvent_relay_fresh_idx",
        "OutboxEvent_relay_lapse_idx",
        "OutboxEvent_relay_unknown_idx",
    ];

    migrate("").await;
    assert_eq!(relay_indexes(&client).await, always);
    // The indexes of earlier releases go on an upgrade: those before the fresh, due and
    // lapse indexes, and the due and held indexes the due-and-held index replaced.
    let retired = [
        ("pending", "(next_attempt_at) WHERE status = 'PENDING'"),
        ("lease", "(lease_expires_at) WHERE status = 'PROCESSING'"),
        (
            "due",
            "(next_attempt_at) WHERE status = 'PENDING' AND claim_token IS NOT NULL",
        ),
        (
            "held",
            "USING gin (held_for) WHERE next_attempt_at = 'infinity'",
        ),
    ];
    for (name, def) in retired {
        client
            .batch_execute(&format!(
                "CREATE INDEX \"OutboxEvent_relay_{name}_idx\" ON \"OutboxEvent\" {def}"
            ))
            .await
            .unwrap();
    }
    let out = migrate("").await;
    for (name, _) in retired {
        assert!(
            out.contains(&format!("index OutboxEvent_relay_{name}_idx for ")),
            "{out}"
        );
    }
    assert_eq!(
        out.matches("dropped: replaced").count(),
        retired.len(),
        "{out}"
    );
    assert_eq!(relay_indexes(&client).await, always);
    assert!(
        out.contains(&format!(
            "index {stream} for Server-Sent Events ([sse] enabled): not created"
        )),
        "{out}"
    );

    let both = format!(
        "{}\n{}ordering = \"entity\"\n",
        crate::common::sse::sse_toml("15s"),
        webhook_toml("main", "http://127.0.0.1:9/")
    );
    let out = migrate(&both).await;
    assert!(
        out.contains(&format!(
            "index {stream} for Server-Sent Events ([sse] enabled): created"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("index {ordering} for entity-ordered delivery")),
        "{out}"
    );
    let mut all: Vec<String> = always.iter().map(|s| s.to_string()).collect();
    all.extend([ordering.to_owned(), stream.to_owned()]);
    all.sort();
    assert_eq!(relay_indexes(&client).await, all);
    assert!(migrate(&both).await.contains(&format!(
        "index {stream} for Server-Sent Events ([sse] enabled): kept"
    )));

    // A concurrent build that failed leaves an INVALID index; the next migrate rebuilds it.
    client
        .execute(
            "UPDATE pg_index SET indisvalid = false WHERE indexrelid = to_regclass($1)",
            &[&format!("public.\"{stream}\"")],
        )
        .await
        .unwrap();
    migrate(&both).await;
    let valid: bool = client
        .query_one(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass($1)",
            &[&format!("public.\"{stream}\"")],
        )
        .await
        .unwrap()
        .get(0);
    assert!(valid, "the invalid index was not rebuilt");

    // Both features off again: both indexes go.
    let out = migrate("").await;
    assert!(
        out.contains(&format!(
            "index {stream} for Server-Sent Events ([sse] enabled): dropped"
        )),
        "{out}"
    );
    assert_eq!(relay_indexes(&client).await, always);
}

/// Issue 15.1: with a low open-file limit, a few hundred idle HTTP clients used up the
/// relay's descriptors, and it could open no database connection ("Too many open files"):
/// delivery stopped until they left. The relay now serves only as many HTTP connections as
/// leave its own connections their descriptors, says so at start, and answers the rest 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http_clients_cannot_take_the_descriptors_delivery_needs() {
    // The relay keeps 142 of these for itself (pools 8 + 4, LISTEN and wake lock, 64 for the
    // webhook's requests, 64 spare): 108 are left for HTTP.
    const NOFILE: u64 = 250;
    const CLIENTS: usize = 300;
    let db = TestDb::new().await;
    let rx = crate::common::receiver::Receiver::start().await;
    let addr = free_addr();
    let file = db.config_file(&format!(
        "{}[http]\nlisten = \"{addr}\"\nheader_timeout = \"10m\"\n",
        webhook_toml("main", &rx.url)
    ));
    let cfg = path_str(&file);
    let (status, _, err) = run_to_end("migrate", relay_cmd(&["migrate", "--config", cfg])).await;
    assert_eq!(status.code(), Some(0), "migrate: {err}");
    // `ulimit -n` sets the soft and the hard limit: the relay cannot raise it.
    let limit = format!("ulimit -n {NOFILE} && exec \"$@\"");
    let cmd = relay_cmd_of(
        "sh",
        &["-c", &limit, "sh", relay_bin(), "run", "--config", cfg],
    );
    let relay = Proc::spawn("relay", cmd);
    relay.wait_log(&["does not fit the open-file limit"]).await;
    wait_until("the relay answers", || async {
        http_get(&format!("http://{addr}/healthz")).await.0 == 200
    })
    .await;

    let mut held = Vec::new();
    for _ in 0..CLIENTS {
        held.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    let client = db.client().await;
    let ids = insert_events(&client, 20, "WHILE_FLOODED").await;
    rx.wait_accepted(&ids).await;
    // Right after the flood a new client may be reset (refusals beyond the few that linger
    // are closed at once); then it gets the 503.
    wait_until("over the cap, a new client is answered 503", || async {
        http_get(&format!("http://{addr}/healthz")).await.0 == 503
    })
    .await;
    drop(held);
    wait_until("served again once the clients leave", || async {
        http_get(&format!("http://{addr}/healthz")).await.0 == 200
    })
    .await;
    assert_eq!(
        relay.log_count("Too many open files"),
        0,
        "{}",
        relay.stderr()
    );
}

/// A broker that is not there when the relay starts: the relay keeps trying (one warning
/// per try) for `start_grace`, then exits with one line naming the sink, the broker and how
/// long it waited, before it claims anything. For each kind of broker, against a port
/// nothing listens on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_unreachable_past_the_start_grace_stops_the_relay_with_one_line() {
    let db = TestDb::new().await;
    let closed = free_addr();
    let sections = [
        (
            format!("[[nats]]\nname = \"b\"\nurl = \"nats://{closed}\"\nstream = \"S\""),
            "nats sink \"b\": cannot reach NATS at",
            "cannot reach NATS yet",
        ),
        (
            format!("[[redis]]\nname = \"b\"\nurl = \"redis://{closed}\""),
            "redis sink \"b\": cannot reach Redis at",
            "cannot reach Redis yet",
        ),
        (
            format!(
                "[[rabbitmq]]\nname = \"b\"\nurl = \"amqp://u:secret-pw-7@{closed}/%2f\"\nexchange = \"x\""
            ),
            "rabbitmq sink \"b\": cannot reach RabbitMQ at",
            "cannot reach RabbitMQ yet",
        ),
    ];
    let client = db.client().await;
    for (n, (section, says, retried)) in (1..).zip(sections) {
        let file = db
            .migrated_config_file(&format!("start_grace = \"2s\"\n{section}"))
            .await;
        insert_events(&client, 1, "BROKER.GONE").await;
        let mut r = relay("relay", &file);
        let status = r.wait_exit(Duration::from_secs(30)).await;
        assert_eq!(status.code(), Some(1), "{}", r.stderr());
        let err = r.stderr();
        let last = err.lines().last().unwrap_or_default();
        assert!(
            last.contains(says) && last.contains("within 2s"),
            "{says}: {err}"
        );
        assert!(r.log_count(retried) >= 1, "{retried}: {err}");
        assert!(
            !err.contains("secret-pw-7"),
            "the password reached the log: {err}"
        );
        // Nothing was claimed: every event inserted so far is still PENDING, untried.
        assert_eq!(count_status(&client, "PENDING").await, n);
        assert!(retried_ids(&client).await.is_empty());
    }
}
