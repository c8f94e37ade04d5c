//! The fault suite (issue 5): each test runs the real relay binary under a steady load
//! (`FAULT_RATE` events/s, default 300, for `FAULT_SECONDS`, default 20) against real
//! PostgreSQL and real HTTP receivers, does one kind of damage, then checks that every
//! committed event was accepted by every receiver, counts duplicates, and greps all the
//! relay's output, `status` and `/metrics` for secrets. Each prints one line of the fault
//! table in docs/reliability.md and writes it to `target/tmp/fault-report/`.

use crate::common::fault::*;
use crate::common::load::{Load, LOAD_TYPE};
use crate::common::process::*;
use crate::common::proxy::{tcp_target, Proxy};
use crate::common::replication::warnings_by_kind;
use crate::common::*;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: long; run with --ignored"]
async fn f1_relay_sigkilled_every_few_seconds_loses_nothing() {
    let db = TestDb::new().await;
    let rx = Receiver::start().await;
    let (file, http) = migrated_relay_config(&db.url, &rx, "").await;
    let load = Load::start(&db.url, rate(), load_time(), 50);
    let mut kills = 0;
    let mut dead = Vec::new();
    let mut current = relay("relay 0", &file);
    let end = tokio::time::Instant::now() + load_time();
    while tokio::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_secs(3)).await;
        current.signal(Signal::SIGKILL);
        current.wait_exit(EXIT_PATIENCE).await;
        kills += 1;
        dead.push(std::mem::replace(
            &mut current,
            relay(&format!("relay {kills}"), &file),
        ));
    }
    let published = load.finish().await;
    let t = settle(&db.url, &published, &[&rx], &HashSet::new(), PATIENCE).await;
    report(
        1,
        "relay SIGKILLed repeatedly",
        &format!("SIGKILL every 3 s, restarted at once ({kills} kills); lease 3 s"),
        &t,
    );
    assert_nothing_lost(&t, kills * WINDOW);
    let mut procs: Vec<&Proc> = dead.iter().collect();
    procs.push(&current);
    assert_no_secrets(&db.url, &file, Some(&http), &procs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: long; run with --ignored"]
async fn f2_postgres_restarted_mid_load_relay_recovers_by_itself() {
    let cluster = new_cluster().await;
    let url = cluster.url("postgres");
    migrate_as_relay_config(&url).await;
    let rx = Receiver::start().await;
    let (file, http) = relay_config(&relay_url(&url, None), &[("main", &rx)], "");
    let mut r = relay("relay", &file);
    wait_ready("relay ready", &http).await;
    let load = Load::start(&url, rate(), load_time(), 50);
    tokio::time::sleep(load_time() / 4).await;
    stop_cluster_fast(&cluster).await;
    // Down: the relay says so, and keeps running.
    wait_until("/readyz 503 while PostgreSQL is down", || {
        let u = format!("{http}/readyz");
        async move { http_get(&u).await.0 == 503 }
    })
    .await;
    assert_eq!(http_get(&format!("{http}/healthz")).await.0, 200);
    tokio::time::sleep(Duration::from_secs(3)).await;
    start_cluster_again(&cluster).await;
    wait_ready("/readyz 200 once PostgreSQL is back", &http).await;
    let published = load.finish().await;
    let t = settle(&url, &published, &[&rx], &HashSet::new(), PATIENCE).await;
    assert!(r.is_running(), "the relay exited: {}", r.stderr());
    report(
        2,
        "PostgreSQL restarted",
        &format!(
            "fast shutdown, down 3 s, started again; the relay was not restarted ({} app \
             transactions failed while it was down)",
            published.failed_batches
        ),
        &t,
    );
    assert_nothing_lost(&t, WINDOW);
    // One warning per part that lost its connection, when its incident starts (and one for
    // the outcomes a lapsed lease fenced out, when the outage outlasted the leases); not one
    // per retry for the 3 s the server was down.
    let kinds = warnings_by_kind(&r.stderr());
    println!("warnings for the restart: {kinds:#?}");
    assert!(kinds.values().all(|&n| n == 1), "{kinds:#?}");
    assert!(kinds.len() <= 10, "{kinds:#?}");
    assert_no_secrets(&url, &file, Some(&http), &[&r]).await;
    drop(r);
    drop_cluster(cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: long; run with --ignored"]
async fn f3_terminate_backend_storm_on_every_relay_connection() {
    let db = TestDb::new().await;
    let rx = Receiver::start().await;
    let (file, http) = migrated_relay_config(&db.url, &rx, "").await;
    let r = relay("relay", &file);
    let load = Load::start(&db.url, rate(), load_time(), 50);
    let admin = db.client().await;
    let mut killed = 0i64;
    let mut listener_killed = 0i64;
    let end = tokio::time::Instant::now() + load_time() / 2;
    tokio::time::sleep(load_time() / 4).await;
    while tokio::time::Instant::now() < end {
        let row = admin
            .query_one(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)),
                        count(*) FILTER (WHERE application_name LIKE 'outbox-relay listener %')
                   FROM pg_stat_activity
                  WHERE datname = current_database() AND pid <> pg_backend_pid()
                    AND application_name LIKE 'outbox-relay%'",
                &[],
            )
            .await
            .unwrap();
        killed += row.get::<_, i64>(0);
        listener_killed += row.get::<_, i64>(1);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let published = load.finish().await;
    let t = settle(&db.url, &published, &[&rx], &HashSet::new(), PATIENCE).await;
    report(
        3,
        "pg_terminate_backend storm",
        &format!(
            "every relay connection killed every 250 ms for {:?}: {killed} backends, \
             {listener_killed} of them the LISTEN one",
            load_time() / 4
        ),
        &t,
    );
    assert!(
        listener_killed > 0,
        "the storm never hit the LISTEN connection"
    );
    assert_nothing_lost(&t, 4 * WINDOW);
    assert_no_secrets(&db.url, &file, Some(&http), &[&r]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: long; run with --ignored"]
async fn f4_half_open_connections_are_detected_and_replaced() {
    let db = TestDb::new().await;
    let proxy = Proxy::start(&tcp_target(&db.url)).await;
    let rx = Receiver::start().await;
    let (file, http) = relay_config(&relay_url(&db.url, Some(proxy.port)), &[("main", &rx)], "");
    migrate_as_relay_config(&db.url).await;
    let r = relay("relay", &file);
    wait_ready("relay ready", &http).await;
    let load = Load::start(&db.url, rate(), load_time(), 50);
    tokio::time::sleep(load_time() / 4).await;
    proxy.black_hole_open_connections();
    r.wait_log(&["heartbeat got no answer"]).await;
    r.wait_log(&["did not answer within"]).await;
    let published = load.finish().await;
    let t = settle(&db.url, &published, &[&rx], &HashSet::new(), 3 * PATIENCE).await;
    report(
        4,
        "half-open connections",
        "a TCP proxy stops forwarding on every open connection (LISTEN and pool) without \
         closing them; heartbeat and client deadline notice, reconnect, catch up",
        &t,
    );
    assert_nothing_lost(&t, 2 * WINDOW);
    assert_no_secrets(&db.url, &file, Some(&http), &[&r]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: long; run with --ignored"]
async fn f5_receivers_that_time_out_reset_fail_throttle_or_go_down() {
    let db = TestDb::new().await;
    // Misbehaves on the first five attempts of an event, each way about as often.
    let chaos = Receiver::with_script(Arc::new(|id, nth| match (nth, dice(id, nth)) {
        (6.., _) => Reply::ok(),
        (_, 0..10) => Reply::ok().delayed(Duration::from_secs(3)), // beyond the 1 s timeout
        (_, 10..20) => Reply::reset(),
        (_, 20..30) => Reply::status(500),
        (_, 30..40) => Reply::status(429).retry_after("1"),
        (_, 40..45) => Reply::status(503).retry_after("1"),
        _ => Reply::ok(),
    }))
    .await;
    let down = Receiver::start().await;
    let down_for = Duration::from_secs(env_num("FAULT_DOWN_SECONDS", 60));
    let (file, http) = relay_config(
        &relay_url(&db.url, None),
        &[("chaos", &chaos), ("down", &down)],
        "backoff_max = \"10s\"",
    );
    migrate_as_relay_config(&db.url).await;
    let r = relay("relay", &file);
    let load = Load::start(&db.url, rate(), load_time(), 50);
    tokio::time::sleep(Duration::from_secs(2)).await;
    down.stop();
    tokio::time::sleep(down_for).await;
    down.resume().await;
    let published = load.finish().await;
    let t = settle(
        &db.url,
        &published,
        &[&chaos, &down],
        &HashSet::new(),
        PATIENCE * 2,
    )
    .await;
    let answered: BTreeMap<u16, usize> =
        chaos.deliveries().iter().fold(BTreeMap::new(), |mut m, d| {
            *m.entry(d.answered).or_default() += 1;
            m
        });
    report(
        5,
        "bad receivers",
        &format!(
            "two webhooks: one times out, resets, answers 500, 429/503 with Retry-After on \
             45% of first five attempts ({answered:?} by status, 0 = reset); the other down \
             {down_for:?} then back (counts are per webhook, summed)"
        ),
        &t,
    );
    // A receiver that answered 2xx too late (after the relay's timeout) is a duplicate by
    // design; the bound is every delayed answer plus what was in flight.
    assert_nothing_lost(&t, answered.values().sum::<usize>());
    assert_no_secrets(&db.url, &file, Some(&http), &[&r]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: long; run with --ignored"]
async fn f6_a_poison_event_that_crashes_the_relay_ends_failed_and_the_rest_flow() {
    let db = TestDb::new().await;
    let poison = uuid::Uuid::new_v4().to_string();
    let (hit_tx, mut hit_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let p = poison.clone();
    let rx = Receiver::with_script(Arc::new(move |id, _| {
        if id == p {
            let _ = hit_tx.send(());
            Reply::ok().delayed(Duration::from_secs(3600)) // hangs; the relay is killed
        } else {
            Reply::ok()
        }
    }))
    .await;
    let max_attempts: i32 = 4;
    let (file, http) = relay_config(
        &relay_url(&db.url, None),
        &[("main", &rx)],
        &format!("max_attempts = {max_attempts}"),
    );
    migrate_as_relay_config(&db.url).await;
    let load = Load::start(&db.url, rate(), load_time(), 50);
    let mut current = relay("relay 0", &file);
    tokio::time::sleep(Duration::from_secs(1)).await;
    db.client()
        .await
        .execute(
            "INSERT INTO \"OutboxEvent\" (id, event_type, org_id, payload)
             VALUES ($1::text::uuid, 'POISON', 'org_load', '{}')",
            &[&poison],
        )
        .await
        .unwrap();
    // Each delivery of the poison "crashes" the relay; a new one starts at once.
    let mut crashes = 0;
    let mut dead = Vec::new();
    let client = db.client().await;
    loop {
        tokio::select! {
            _ = hit_rx.recv() => {
                current.signal(Signal::SIGKILL);
                current.wait_exit(EXIT_PATIENCE).await;
                crashes += 1;
                dead.push(std::mem::replace(&mut current, relay(&format!("relay {crashes}"), &file)));
            }
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                if row_state(&client, &poison).await.0 == "FAILED" { break; }
            }
        }
        assert!(
            crashes <= max_attempts as usize,
            "the poison was delivered again after it was FAILED"
        );
    }
    let published = load.finish().await;
    let except = HashSet::from([poison.clone()]);
    let t = settle(&db.url, &published, &[&rx], &except, PATIENCE).await;
    let (status, retries, error, _) = row_state(&client, &poison).await;
    report(
        6,
        "poison event",
        &format!(
            "its delivery crashes the relay (SIGKILL on arrival); max_attempts = \
             {max_attempts}: {crashes} crashes, then FAILED with \"lease expired\""
        ),
        &t,
    );
    assert_eq!(crashes, max_attempts as usize);
    assert_eq!((status.as_str(), retries), ("FAILED", max_attempts));
    assert!(error.unwrap().starts_with("lease expired"));
    assert_nothing_lost(&t, crashes * WINDOW);
    // The innocent rows that crashed alongside it were delivered apart from it, well
    // before their own attempts ran out. Two lapses is the most an innocent row can have:
    // after two in a row it is a suspect, so it rides again only as its relay's one suspect
    // (held from its claim until its outcome is written); the poison is a suspect too from
    // its third delivery on, and before that no innocent row has lapsed twice.
    let worst: i32 = client
        .query_one(
            "SELECT coalesce(max(retry_count), 0) FROM \"OutboxEvent\" WHERE event_type = $1",
            &[&LOAD_TYPE],
        )
        .await
        .unwrap()
        .get(0);
    assert!(worst <= 2, "an innocent event lapsed {worst} times");
    assert_eq!(count_status(&client, "FAILED").await, 1);
    let mut procs: Vec<&Proc> = dead.iter().collect();
    procs.push(&current);
    assert_no_secrets(&db.url, &file, Some(&http), &procs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: long; run with --ignored"]
async fn f7_a_zombie_relay_resumed_after_its_lease_cannot_overwrite_the_new_claim() {
    let db = TestDb::new().await;
    // First attempts are slow and fail, so a relay paused mid-delivery would, if it were
    // not fenced, write back "PENDING, one more failure" over the other relay's COMPLETED.
    let rx = Receiver::with_script(Arc::new(|_, nth| {
        if nth == 1 {
            Reply::status(500).delayed(Duration::from_millis(500))
        } else {
            Reply::ok()
        }
    }))
    .await;
    let (file, http) = migrated_relay_config(&db.url, &rx, "").await;
    let client = db.client().await;
    let load = Load::start(&db.url, rate(), load_time(), 50);
    let a = relay("relay A", &file);
    let (file_b, _) = relay_config(&relay_url(&db.url, None), &[("main", &rx)], "");
    rx.wait_for("A delivering", |ds| ds.len() >= 50).await;
    a.signal(Signal::SIGSTOP);
    let held = ids_with_status(&client, "PROCESSING").await;
    assert!(!held.is_empty(), "A held nothing when paused");
    let b = relay("relay B", &file_b);
    wait_until("B re-claims and completes everything A held", || {
        let (c, held) = (&client, &held);
        async move { held.is_subset(&ids_with_status(c, "COMPLETED").await) }
    })
    .await;
    a.signal(Signal::SIGCONT);
    a.wait_log(&["outcomes not recorded"]).await;
    let still = ids_with_status(&client, "COMPLETED").await;
    let overwritten: Vec<&String> = held.difference(&still).collect();
    let published = load.finish().await;
    let t = settle(&db.url, &published, &[&rx], &HashSet::new(), PATIENCE).await;
    report(
        7,
        "zombie relay",
        &format!(
            "A paused (SIGSTOP) holding {} rows past its 3 s lease; B re-claims and completes \
             them; A resumed: its late outcomes are fenced off by the claim token",
            held.len()
        ),
        &t,
    );
    assert!(overwritten.is_empty(), "A overwrote {overwritten:?}");
    assert_nothing_lost(&t, 2 * WINDOW);
    assert_no_secrets(&db.url, &file, Some(&http), &[&a, &b]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: long; run with --ignored"]
async fn f8_an_idle_in_transaction_session_is_reported_and_nothing_is_lost() {
    let db = TestDb::new().await;
    let rx = Receiver::start().await;
    let (file, http) = migrated_relay_config(
        &db.url,
        &rx,
        "long_transaction_warning = \"3s\"\npoll_interval = \"5s\"",
    )
    .await;
    let holder = db.client().await;
    holder
        .batch_execute(
            "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM \"OutboxEvent\"",
        )
        .await
        .unwrap();
    let r = relay("relay", &file);
    let load = Load::start(&db.url, rate(), load_time(), 50);
    r.wait_log(&["a transaction has been open for a long time"])
        .await;
    let published = load.finish().await;
    let t = settle(&db.url, &published, &[&rx], &HashSet::new(), PATIENCE).await;
    let metrics = http_get(&format!("{http}/metrics")).await.1;
    let age = metrics
        .lines()
        .find_map(|l| l.strip_prefix("outbox_db_oldest_transaction_seconds "))
        .and_then(|v| v.parse::<f64>().ok())
        .expect("the oldest-transaction gauge");
    let dead: i64 = db
        .client()
        .await
        .query_one(
            "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'OutboxEvent'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    holder.batch_execute("COMMIT").await.unwrap();
    report(
        8,
        "idle in transaction",
        &format!(
            "a REPEATABLE READ transaction left open through the run ({age:.0} s at the end, \
             {dead} dead tuples it kept from vacuum); the relay warns and exports \
             outbox_db_oldest_transaction_seconds"
        ),
        &t,
    );
    assert!(age >= 3.0, "gauge {age}");
    assert_nothing_lost(&t, 0);
    assert_no_secrets(&db.url, &file, Some(&http), &[&r]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: long; run with --ignored"]
async fn f9_poll_only_mode_for_transaction_poolers_delivers_everything_without_listen() {
    let db = TestDb::new().await;
    let rx = Receiver::start().await;
    let (file, http) =
        migrated_relay_config(&db.url, &rx, "listen = false\npoll_interval = \"250ms\"").await;
    let r = relay("relay", &file);
    wait_ready("ready without LISTEN", &http).await;
    let load = Load::start(&db.url, rate(), load_time(), 50);
    let client = db.client().await;
    let listeners: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
              WHERE datname = current_database()
                AND (application_name LIKE 'outbox-relay listener %'
                     OR query ILIKE 'LISTEN%')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let published = load.finish().await;
    let t = settle(&db.url, &published, &[&rx], &HashSet::new(), PATIENCE).await;
    report(
        9,
        "poll-only mode",
        "listen = false, poll_interval = 250ms (as behind a transaction-mode pooler): no \
         LISTEN session, /readyz 200",
        &t,
    );
    assert_eq!(listeners, 0);
    assert_nothing_lost(&t, 0);
    assert_no_secrets(&db.url, &file, Some(&http), &[&r]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: long; run with --ignored"]
async fn f11_migrate_under_a_running_previous_release_loses_nothing() {
    let old_bin = previous_release_bin().await;
    let db = TestDb::new().await;
    let rx = Receiver::start().await;
    let url = relay_url(&db.url, None);
    // After the new migrate, inserts NOTIFY only while a relay of the new release sleeps
    // holding the wake lock, so the old relay is no longer woken and falls back to polling:
    // expected upgrade behaviour. A short poll interval keeps that within the test.
    let (old_file, old_http) = relay_config(&url, &[("main", &rx)], "poll_interval = \"500ms\"");
    let (new_file, new_http) = relay_config(&url, &[("main", &rx)], "");
    let old_config = path_str(&old_file);
    migrate_with(
        "migrate (previous release)",
        relay_cmd_of(&old_bin, &["migrate", "--config", old_config]),
    )
    .await;
    let mut old = relay_of(&old_bin, "old relay", &old_file);
    wait_ready("old relay ready", &old_http).await;
    let client = db.client().await;
    let load = Load::start(&db.url, rate(), load_time(), 50);
    let start = tokio::time::Instant::now();
    let step = load_time() / 5;
    // The new migrate, twice (it must be idempotent), with the config in place, as an
    // operator upgrading would; after each, a row inserted then is delivered by the old
    // relay, the only one running.
    let mut migrations = Vec::new();
    for n in 1..=2 {
        tokio::time::sleep_until(start + step * n).await;
        let took = migrate_with(
            &format!("migrate #{n} (this build)"),
            relay_cmd(&["migrate", "--config", old_config]),
        )
        .await;
        migrations.push((took, deliver_marker(&client, &rx).await));
    }
    tokio::time::sleep_until(start + step * 3).await;
    let new = relay("new relay", &new_file);
    wait_ready("new relay ready", &new_http).await;
    tokio::time::sleep_until(start + step * 4).await;
    old.signal(Signal::SIGTERM);
    let exit = old.wait_exit(EXIT_PATIENCE).await;
    assert!(exit.success(), "the old relay's graceful stop: {exit}");
    // Only the new relay is left to deliver this one.
    let takeover = deliver_marker(&client, &rx).await;
    let published = load.finish().await;
    let t = settle(&db.url, &published, &[&rx], &HashSet::new(), PATIENCE).await;
    let ms = |d: Duration| d.as_millis();
    report(
        11,
        "in-place upgrade",
        &format!(
            "a relay of the previous release ({}, poll_interval 500ms) under load while this \
             build's migrate runs twice ({} ms, {} ms; a row inserted after each delivered by \
             the old relay in {} ms, {} ms); the new relay started beside it, the old one \
             SIGTERMed (exit 0), a row inserted then delivered by the new one in {} ms; {} app \
             transactions failed",
            &PREVIOUS_RELEASE[..7],
            ms(migrations[0].0),
            ms(migrations[1].0),
            ms(migrations[0].1),
            ms(migrations[1].1),
            ms(takeover),
            published.failed_batches
        ),
        &t,
    );
    // A graceful stop drains what the old relay had in flight, so none is expected (and none
    // was measured); the bound is the suite's one in-flight window, for a migrate whose table
    // locks outlast a 3 s lease on a loaded machine.
    assert_nothing_lost(&t, WINDOW);
    assert_no_secrets(&db.url, &new_file, Some(&new_http), &[&old, &new]).await;
}

/// Runs a `migrate` command to its end, asserting exit 0; returns how long it took.
async fn migrate_with(name: &str, cmd: std::process::Command) -> Duration {
    let started = std::time::Instant::now();
    let (status, _, err) = run_to_end(name, cmd).await;
    assert!(status.success(), "{name} exited with {status}: {err}");
    started.elapsed()
}

/// Inserts one event (not of the load's type, so `settle` leaves it out) and waits until the
/// receiver accepted it; returns how long that took.
async fn deliver_marker(client: &tokio_postgres::Client, rx: &Receiver) -> Duration {
    let started = std::time::Instant::now();
    let ids = insert_events(client, 1, "UPGRADE.MARKER").await;
    rx.wait_accepted(&ids).await;
    started.elapsed()
}
