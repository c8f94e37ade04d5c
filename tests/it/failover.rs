//! Production PostgreSQL (issue 16): a failover to a promoted standby, a relay pointed at a
//! standby by mistake, and connection churn (`idle_session_timeout`, a restart). Each test
//! runs the relay binary against private clusters of its own and checks what arrived, how
//! often it was said, and what the rows say.

use crate::common::fault::*;
use crate::common::process::*;
use crate::common::replication::*;
use crate::common::*;

/// The relay's words for a read-only server (see `db::server::READ_ONLY`).
const READ_ONLY_LINE: &str = "points at a read-only server";

/// Events inserted before a failover (some delivered, some in flight or pending when the
/// primary stops) and after it (through the new primary) all arrive, and every row on the
/// new primary ends COMPLETED. With `listen`, the poll interval is an hour: only LISTEN and
/// the wake lock, reconnected to the new primary, deliver the later events within the
/// test's patience. Poll-only relays learn of new rows from their poll alone.
async fn failover(listen: bool) {
    let pair = Pair::start().await;
    let primary = pair.primary.url("postgres");
    let promoted = pair.standby.url("postgres");
    migrate_as_relay_config(&primary).await;
    // First attempts answer after a second: the primary stops with deliveries in flight.
    let rx = Receiver::with_script(std::sync::Arc::new(|_, nth| {
        if nth == 1 {
            Reply::ok().delayed(std::time::Duration::from_secs(1))
        } else {
            Reply::ok()
        }
    }))
    .await;
    let poll = if listen { "1h" } else { "500ms" };
    let (file, http) = relay_config(
        &pair.url("postgres", DB_PASSWORD, Some("read-write")),
        &[("main", &rx)],
        &format!("listen = {listen}\npoll_interval = \"{poll}\""),
    );
    let mut r = relay("relay", &file);
    wait_ready("relay ready", &http).await;
    let old = connect(&primary).await;
    let delivered_before = insert_events(&old, 10, "BEFORE.DELIVERED").await;
    rx.wait_accepted(&delivered_before).await;
    let in_flight = insert_events(&old, 10, "BEFORE.IN_FLIGHT").await;
    rx.wait_for("a delivery in flight", |ds| ds.len() > 10)
        .await;
    pair.wait_replayed().await;
    stop_cluster_fast(&pair.primary).await;
    // As a failover manager takes a while to promote: the relay tries the standby meanwhile,
    // and target_session_attrs=read-write turns it away.
    r.wait_log(&["database does not allow writes"]).await;
    pair.promote().await;
    let new = connect(&promoted).await;
    let after = insert_events(&new, 10, "AFTER").await;
    let all: Vec<String> = [delivered_before, in_flight, after].concat();
    rx.wait_accepted(&all).await;
    wait_until("every row COMPLETED on the new primary", || {
        let new = &new;
        async move { count_status(new, "COMPLETED").await == 30 }
    })
    .await;
    wait_ready("/readyz 200 on the new primary", &http).await;
    if listen {
        // Asleep again, holding the wake lock, with LISTEN up: both on the new primary.
        wait_until("listener and waker sessions on the new primary", || {
            let new = &new;
            async move { matches!(relay_sessions(new).await, (_, 1, 1)) }
        })
        .await;
        // Woken by a NOTIFY on the new primary (the poll is an hour away).
        let late = insert_events(&new, 5, "AFTER.ASLEEP").await;
        rx.wait_accepted(&late).await;
    }
    let counts = rx.accepted_counts();
    let missing: Vec<&String> = all.iter().filter(|id| !counts.contains_key(*id)).collect();
    assert!(missing.is_empty(), "never accepted: {missing:?}");
    assert!(r.is_running(), "the relay exited");
    // No statement ever ran on the standby before its promotion (it would have failed with
    // "cannot execute ... in a read-only transaction", or the relay's own line).
    assert_eq!(r.log_count("read-only"), 0, "wrote to the standby");
    assert_no_secrets(&promoted, &file, Some(&http), &[&r]).await;
    drop(r);
    pair.drop_async().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_failover_the_relay_follows_the_promoted_standby_and_loses_nothing() {
    failover(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_only_relay_follows_a_failover_too() {
    failover(false).await;
}

/// A relay whose URL names a standby says so once and waits; writing commands refuse with
/// the same words; after `pg_ctl promote`, the relay starts and delivers what was there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_pointed_at_a_standby_says_so_once_and_starts_when_it_is_promoted() {
    let pair = Pair::start().await;
    let primary = pair.primary.url("postgres");
    migrate_as_relay_config(&primary).await;
    let ids = insert_events(&connect(&primary).await, 10, "WAITING").await;
    pair.wait_replayed().await;
    stop_cluster_fast(&pair.primary).await;
    let rx = Receiver::start().await;
    let standby = pair.standby.url("postgres");
    let (file, http) = relay_config(&relay_url(&standby, None), &[("main", &rx)], "");
    let r = relay("relay", &file);
    r.wait_log(&[READ_ONLY_LINE]).await;
    for args in [
        vec!["migrate"],
        vec!["retry", "--failed"],
        vec!["purge", "--older-than", "1d"],
    ] {
        let mut cmd_args = args.clone();
        cmd_args.extend(["--config", path_str(&file)]);
        let (status, _, err) = run_to_end(args[0], relay_cmd(&cmd_args)).await;
        assert!(!status.success(), "{args:?} succeeded on a standby");
        assert!(err.contains(READ_ONLY_LINE), "{args:?} said: {err}");
    }
    // Still waiting, quietly: one line for the incident, not one per check.
    tokio::time::sleep(QUIET_WATCH).await;
    assert_eq!(http_get(&format!("{http}/readyz")).await.0, 503);
    assert_eq!(rx.deliveries().len(), 0);
    assert_eq!(r.log_count(READ_ONLY_LINE), 1, "{}", r.stderr());
    pair.promote().await;
    rx.wait_accepted(&ids).await;
    wait_ready("ready once promoted", &http).await;
    // A 2xx is answered before its row is recorded: wait for the record, not the request.
    let client = connect(&standby).await;
    wait_until("all 10 rows COMPLETED on the promoted server", || {
        let client = &client;
        async move { count_status(client, "COMPLETED").await == 10 }
    })
    .await;
    assert_eq!(r.log_count(READ_ONLY_LINE), 1);
    r.wait_log(&["the database is writable now"]).await;
    drop(r);
    pair.drop_async().await;
}

/// `idle_session_timeout = 1s` on the server closes the relay's pooled connections whenever
/// it idles; then a restart (`-m fast`). The relay's dedicated connections (LISTEN, wake
/// lock) exempt themselves; pooled ones are replaced when next taken. Nothing is lost, and
/// each incident costs a few log lines, not a stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_session_timeout_and_a_restart_cost_a_few_lines_and_lose_nothing() {
    let cluster = new_cluster_with("-c idle_session_timeout=1s").await;
    let url = cluster.url("postgres");
    migrate_as_relay_config(&url).await;
    let rx = Receiver::start().await;
    let (file, http) = relay_config(
        &relay_url(&url, None),
        &[("main", &rx)],
        "poll_interval = \"1h\"",
    );
    let mut r = relay("relay", &file);
    wait_ready("relay ready", &http).await;
    let mut all = Vec::new();
    for round in 0..3 {
        let client = connect(&url).await;
        let ids = insert_events(&client, 10, &format!("IDLE.{round}")).await;
        rx.wait_accepted(&ids).await;
        all.extend(ids);
        drop(client);
        // Idle past the timeout: the pool's connections are closed under the relay, the
        // LISTEN and wake-lock ones stay.
        wait_until("the pool's idle connections closed by the server", || {
            let url = &url;
            async move { matches!(relay_sessions(&connect(url).await).await, (0, 1, _)) }
        })
        .await;
    }
    let idle_warnings = level_count(&r.stderr(), " WARN ");
    let listener_lost = r.log_count("LISTEN connection lost");
    stop_cluster_fast(&cluster).await;
    start_cluster_again(&cluster).await;
    let ids = insert_events(&connect(&url).await, 10, "RESTARTED").await;
    rx.wait_accepted(&ids).await;
    all.extend(ids);
    wait_ready("ready after the restart", &http).await;
    let client = connect(&url).await;
    wait_until("every row COMPLETED", || {
        let (client, n) = (&client, all.len() as i64);
        async move { count_status(client, "COMPLETED").await == n }
    })
    .await;
    let counts = rx.accepted_counts();
    assert!(all.iter().all(|id| counts.contains_key(id)));
    assert!(r.is_running());
    let restart_warnings = level_count(&r.stderr(), " WARN ") - idle_warnings;
    println!("warnings: {idle_warnings} while idling, {restart_warnings} for the restart");
    assert_eq!(listener_lost, 0, "the LISTEN connection timed out idle");
    assert!(
        idle_warnings <= 2,
        "{idle_warnings} warnings while idling: {}",
        r.stderr()
    );
    // One per part that lost its connection (LISTEN, claims, wake lock, outcome writes) at
    // most: each incident is logged when it starts, not on every retry.
    assert!(
        restart_warnings <= 4,
        "{restart_warnings} warnings for one restart: {}",
        r.stderr()
    );
    drop(r);
    drop_cluster(cluster).await;
}

/// The relay's sessions on a server: (pooled, LISTEN, wake lock), by application_name.
async fn relay_sessions(client: &tokio_postgres::Client) -> (i64, i64, i64) {
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE application_name ~ '^outbox-relay [^ ]+/'),
                    count(*) FILTER (WHERE application_name LIKE 'outbox-relay listener %'),
                    count(*) FILTER (WHERE application_name LIKE 'outbox-relay waker %')
               FROM pg_stat_activity",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}
