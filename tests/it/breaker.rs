//! Circuit breakers and auto-disable (issue 20 items 1 and 2), on real PostgreSQL, real HTTP
//! receivers that fail on purpose, and several relays on one table.

use std::sync::Arc;
use std::time::Duration;

use crate::common::receiver::{Receiver, Reply};
use crate::common::{count_held, insert_events, wait_until, webhook_toml, TestDb};

/// The paused set's row for `name`: (reason, last_error), None when not paused.
async fn circuit(client: &tokio_postgres::Client, name: &str) -> Option<(String, Option<String>)> {
    client
        .query_opt(
            "SELECT reason, last_error FROM \"OutboxEvent_relay_paused\" WHERE endpoint = $1",
            &[&name],
        )
        .await
        .unwrap()
        .map(|r| (r.get(0), r.get(1)))
}

async fn count(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

/// A relay config: retries soon (so held rows show up quickly), never dead-letters, and an
/// hour's poll, so only the relays' own timers wake them for a probe.
/// `down` is the sink with the breaker (named apart per test: /metrics is one per process).
fn relay_toml(down: (&str, &Receiver), good: &Receiver, breaker: &str) -> String {
    format!(
        "poll_interval = \"1h\"\nbackoff_initial = \"100ms\"\nbackoff_max = \"300ms\"\n\
         max_attempts = 1000\n{}[webhook.circuit_breaker]\n{breaker}\n{}",
        webhook_toml(down.0, &down.1.url),
        webhook_toml("good", &good.url),
    )
}

#[tokio::test]
async fn a_failing_endpoint_opens_its_circuit_on_every_relay_and_one_probe_at_a_time_closes_it() {
    let db = TestDb::new().await;
    let down = Receiver::with_script(Arc::new(|_, _| Reply::status(503))).await;
    let good = Receiver::start().await;
    let toml = relay_toml(("down", &down), &good, "failures = 5\ncooldown = \"2s\"");
    let (cfg, a) = db.start_relay(&toml).await;
    let (_, b) = db.start_relay(&toml).await;
    let client = db.client().await;

    // The first events fail until the circuit opens (all of a claim's sends are on their
    // way before the first failure is back).
    let mut ids = insert_events(&client, 20, "ORDER.CREATED").await;
    wait_until("the circuit opens", || async {
        circuit(&client, "down")
            .await
            .is_some_and(|(r, _)| r == "circuit")
    })
    .await;
    let (_, last_error) = circuit(&client, "down").await.unwrap();
    assert!(
        last_error.as_deref().is_some_and(|e| e.contains("503")),
        "{last_error:?}"
    );
    for relay in [&a, &b] {
        let url = format!("{}/api/overview", relay.http_url());
        wait_until("the relay shows the open circuit", || {
            let url = url.clone();
            async move {
                let o: serde_json::Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
                o["endpoints"][0]["pause"]["reason"] == "circuit"
                    && o["endpoints"][0]["paused"] == true
            }
        })
        .await;
    }
    // While it is open, new events reach the healthy endpoint and are held for this one:
    // not attempted (at most one is a probe), never dead-lettered.
    let tried = down.deliveries().len();
    let later = insert_events(&client, 180, "ORDER.CREATED").await;
    good.wait_accepted(&later).await;
    wait_until("every event held for the open circuit", || async {
        count_held(&client).await >= 199
    })
    .await;
    let probes = down.deliveries().len() - tried;
    assert!(
        probes <= 3,
        "{probes} requests to an open circuit in a few seconds"
    );
    let never_tried = count(
        &client,
        "SELECT count(*) FROM \"OutboxEvent\" WHERE retry_count = 0",
    )
    .await;
    assert!(
        never_tried >= 177,
        "only {never_tried} of 200 never attempted"
    );
    assert_eq!(
        count(
            &client,
            "SELECT count(*) FROM \"OutboxEvent\" WHERE status = 'FAILED'"
        )
        .await,
        0
    );
    ids.extend(later);
    let status = outbox_relay::commands::status_report(&cfg).await.unwrap();
    assert_eq!(status.paused[0].reason.as_str(), "circuit");

    // While it stays down, one probe per cooldown across both relays, not a burst.
    let before = down.deliveries().len();
    wait_until("three probes", || async {
        down.deliveries().len() >= before + 3
    })
    .await;
    let probes: Vec<_> = down.deliveries()[before..]
        .iter()
        .map(|d| d.received)
        .collect();
    for pair in probes.windows(2) {
        let gap = pair[1].duration_since(pair[0]);
        assert!(
            gap >= Duration::from_millis(1000),
            "probes {gap:?} apart (cooldown 2 s)"
        );
    }
    assert_eq!(circuit(&client, "down").await.unwrap().0, "circuit");

    // It recovers: the next probe closes the circuit, the held events go out, each once.
    down.set_script(Arc::new(|_, _| Reply::ok()));
    down.wait_accepted(&ids).await;
    wait_until("all COMPLETED", || async {
        count(
            &client,
            "SELECT count(*) FROM \"OutboxEvent\" WHERE status = 'COMPLETED'",
        )
        .await
            == 200
    })
    .await;
    assert!(
        circuit(&client, "down").await.is_none(),
        "the circuit closed"
    );
    let accepted = down.accepted_counts();
    assert!(
        ids.iter().all(|id| accepted.get(id) == Some(&1)),
        "each event accepted once by the recovered endpoint"
    );
    let good_counts = good.accepted_counts();
    assert!(
        ids.iter().all(|id| good_counts.get(id) == Some(&1)),
        "the healthy endpoint got each event once, breaker or not"
    );
}

#[tokio::test]
async fn an_endpoint_failing_past_disable_after_is_disabled_until_resumed_then_gets_its_events_in_order(
) {
    let db = TestDb::new().await;
    let down = Receiver::with_script(Arc::new(|_, _| Reply::status(500))).await;
    let good = Receiver::start().await;
    let toml = format!(
        "ordering = \"entity\"\n{}",
        relay_toml(
            ("dead", &down),
            &good,
            "failures = 3\ncooldown = \"1s\"\ndisable_after = \"3s\""
        )
    );
    let (cfg, relay) = db.start_relay(&toml).await;
    let client = db.client().await;
    // Three entities, ten events each, in order.
    let mut ids = Vec::new();
    for n in 0..10 {
        for entity in ["a", "b", "c"] {
            let row = client
                .query_one(
                    "INSERT INTO \"OutboxEvent\" (id, org_id, event_type, entity_type, entity_id, payload)
                     VALUES (gen_random_uuid(), 'org', 'ORDER.UPDATED', 'order', $1, jsonb_build_object('n', $2::int))
                     RETURNING id::text",
                    &[&entity, &n],
                )
                .await
                .unwrap();
            ids.push(row.get::<_, String>(0));
        }
    }
    wait_until("the endpoint is disabled", || async {
        circuit(&client, "dead")
            .await
            .is_some_and(|(r, _)| r == "disabled")
    })
    .await;
    let metrics = reqwest::get(format!("{}/metrics", relay.http_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("outbox_endpoint_disabled_total{sink=\"dead\"} 1"),
        "{metrics}"
    );
    // Disabled: no probes any more.
    let tried = down.deliveries().len();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        down.deliveries().len(),
        tried,
        "a disabled endpoint was sent to"
    );
    let status = outbox_relay::commands::status_report(&cfg).await.unwrap();
    assert_eq!(status.paused[0].reason.as_str(), "disabled");
    let metrics_url = format!("{}/metrics", relay.http_url());
    wait_until("the gauge shows the endpoint disabled", || async {
        let m = reqwest::get(&metrics_url)
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        m.contains("outbox_endpoint_paused{sink=\"dead\",reason=\"disabled\"} 1")
    })
    .await;
    assert_eq!(
        count(
            &client,
            "SELECT count(*) FROM \"OutboxEvent\" WHERE status = 'FAILED'"
        )
        .await,
        0
    );

    // The receiver is fixed; an operator resumes it from the CLI.
    down.set_script(Arc::new(|_, _| Reply::ok()));
    outbox_relay::commands::set_paused(&cfg, "dead", false)
        .await
        .unwrap();
    down.wait_accepted(&ids).await;
    assert!(circuit(&client, "dead").await.is_none());
    // Per entity, the accepted deliveries came in insert order.
    for entity in ["a", "b", "c"] {
        let ns: Vec<i64> = down
            .deliveries()
            .iter()
            .filter(|d| d.answered == 200 && d.body["entity_id"] == entity)
            .map(|d| d.body["data"]["n"].as_i64().unwrap())
            .collect();
        assert_eq!(ns, (0..10).collect::<Vec<_>>(), "entity {entity}");
    }
    let audit = count(
        &client,
        "SELECT count(*) FROM \"OutboxEvent_relay_audit\" WHERE action = 'resume' AND target = 'dead' AND via = 'cli' AND detail->>'was' = 'disabled'",
    )
    .await;
    assert_eq!(audit, 1, "the resume is in the audit log");
}

/// A relay whose config no longer has the endpoint's breaker closes the circuit left open
/// by the others, releases the held events, and tells the other relays: one that polls
/// hourly drops its pause at once instead of at its next poll.
#[tokio::test]
async fn a_relay_without_the_breaker_closes_the_circuit_and_tells_the_others() {
    let db = TestDb::new().await;
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let f = failing.clone();
    let down = Receiver::with_script(Arc::new(move |_, _| {
        if f.load(std::sync::atomic::Ordering::SeqCst) {
            Reply::status(503)
        } else {
            Reply::ok()
        }
    }))
    .await;
    let good = Receiver::start().await;
    let with_breaker = relay_toml(("offbrk", &down), &good, "failures = 3\ncooldown = \"1h\"");
    let (_, a) = db.start_relay(&with_breaker).await;
    let (_, watcher) = db.start_relay(&with_breaker).await;
    let client = db.client().await;
    let ids = insert_events(&client, 10, "ORDER.CREATED").await;
    wait_until("the circuit opens", || async {
        circuit(&client, "offbrk")
            .await
            .is_some_and(|(r, _)| r == "circuit")
    })
    .await;
    let url = format!("{}/api/overview", watcher.http_url());
    let paused = || {
        let url = url.clone();
        async move {
            let o: serde_json::Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
            o["endpoints"][0]["paused"] == true
        }
    };
    wait_until("the watcher holds the endpoint", paused).await;

    // The endpoint recovers; a relay configured without its breaker starts.
    a.stop().await.unwrap();
    failing.store(false, std::sync::atomic::Ordering::SeqCst);
    let without = format!(
        "poll_interval = \"1h\"\nbackoff_initial = \"100ms\"\nbackoff_max = \"300ms\"\n\
         max_attempts = 1000\n{}{}",
        webhook_toml("offbrk", &down.url),
        webhook_toml("good", &good.url),
    );
    let (_, b) = db.start_relay(&without).await;
    assert_eq!(circuit(&client, "offbrk").await, None, "closed at start");
    wait_until("the watcher, polling hourly, drops the pause", || async {
        !paused().await
    })
    .await;
    down.wait_accepted(&ids).await;
    for relay in [b, watcher] {
        relay.stop().await.unwrap();
    }
}
