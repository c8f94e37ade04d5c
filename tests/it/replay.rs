//! `replay`: events already delivered sent again to one endpoint, and to it alone, with a
//! count first; against two real receivers and the relay in this process.

use crate::common::broker::wait_completed;
use crate::common::process::*;
use crate::common::*;

use std::collections::{HashMap, HashSet};

/// Runs `outbox-relay replay ARGS --config FILE`; (success, stderr).
async fn replay(file: &tempfile::NamedTempFile, args: &[&str]) -> (bool, String) {
    let mut all = vec!["replay"];
    all.extend_from_slice(args);
    all.extend(["--config", path_str(file)]);
    let (status, _, err) = run_to_end("replay", relay_cmd(&all)).await;
    (status.success(), err)
}

fn ids_accepted_n_times(counts: &HashMap<String, usize>, n: usize) -> HashSet<String> {
    counts
        .iter()
        .filter(|(_, c)| **c == n)
        .map(|(id, _)| id.clone())
        .collect()
}

/// 10,000 events delivered to webhooks `a` and `b`, then `c` added; a replay to `a` counts
/// first and changes nothing, then sends every one of them to `a` again, and none to `b`
/// or `c`. A type
/// glob and a window that holds none select nothing; an unknown endpoint is one line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_of_ten_thousand_events_reaches_only_the_chosen_endpoint() {
    let (a, b) = (Receiver::start().await, Receiver::start().await);
    let db = TestDb::new().await;
    let toml = format!("{}{}", webhook_toml("a", &a.url), webhook_toml("b", &b.url));
    let (_, relay) = db.start_relay(&toml).await;
    let client = db.client().await;
    let mut ids = HashSet::new();
    for _ in 0..10 {
        ids.extend(insert_events(&client, 1000, "PROJECT.UPDATED").await);
    }
    let others: HashSet<String> = insert_events(&client, 5, "BILLING.CHARGED")
        .await
        .into_iter()
        .collect();
    wait_completed(&client, 10_005).await;
    // A webhook added since: it never had these events, and a replay to `a` must not send
    // them to it either.
    relay.stop().await.unwrap();
    let c = Receiver::start().await;
    let toml = format!("{toml}{}", webhook_toml("c", &c.url));
    let (_, relay) = db.start_relay(&toml).await;
    let file = db.config_file(&toml);

    // A count, and nothing else.
    let (ok, err) = replay(
        &file,
        &["--endpoint", "a", "--since", "1h", "--type", "PROJECT.*"],
    )
    .await;
    assert!(ok, "{err}");
    assert!(
        err.contains("10000 event(s)") && err.contains("add --yes"),
        "{err}"
    );
    assert_eq!(count_status(&client, "COMPLETED").await, 10_005);
    // A window that ended before the events were made holds none.
    let (ok, err) = replay(
        &file,
        &["--endpoint", "a", "--since", "2h", "--until", "1h", "--yes"],
    )
    .await;
    assert!(ok, "{err}");
    assert!(err.contains("0 event(s)"), "{err}");
    assert_eq!(count_status(&client, "COMPLETED").await, 10_005);

    // The replay.
    let (ok, err) = replay(
        &file,
        &[
            "--endpoint",
            "a",
            "--since",
            "1h",
            "--type",
            "PROJECT.*",
            "--yes",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert!(
        err.contains("10000 event(s)") && err.contains("for \"a\" only"),
        "{err}"
    );
    a.wait_for("every event a second time at a", |ds| ds.len() >= 20_005)
        .await;
    wait_completed(&client, 10_005).await;
    relay.stop().await.unwrap();
    let at_a = a.accepted_counts();
    assert_eq!(
        ids_accepted_n_times(&at_a, 2),
        ids,
        "each replayed event once more"
    );
    assert_eq!(
        ids_accepted_n_times(&at_a, 1),
        others,
        "the other type not replayed"
    );
    let at_b = b.accepted_counts();
    assert_eq!(at_b.len(), 10_005);
    assert!(at_b.values().all(|n| *n == 1), "b was sent something again");
    assert!(c.deliveries().is_empty(), "c was sent replayed events");
    // The rows say a and b have them; the replayed ones list c too, which is how c was kept
    // out (it never had them, and is not sent old events). In whichever order they accepted.
    let names_of = |sql: &'static str| {
        let client = &client;
        async move {
            let mut sets: Vec<String> = texts(client, sql).await;
            sets.sort_unstable();
            sets.dedup();
            sets
        }
    };
    let replayed = names_of(
        "SELECT array_to_string(ARRAY(SELECT unnest(delivered_to) ORDER BY 1), ',')
           FROM \"OutboxEvent\" WHERE event_type = 'PROJECT.UPDATED'",
    )
    .await;
    assert_eq!(replayed, ["a,b,c"]);
    let untouched = names_of(
        "SELECT array_to_string(ARRAY(SELECT unnest(delivered_to) ORDER BY 1), ',')
           FROM \"OutboxEvent\" WHERE event_type = 'BILLING.CHARGED'",
    )
    .await;
    assert_eq!(untouched, ["a,b"]);

    let (ok, err) = replay(&file, &["--endpoint", "d", "--since", "1h"]).await;
    assert!(!ok);
    assert!(
        err.contains("no sink named \"d\" in the config (sinks: a, b, c)"),
        "{err}"
    );
    let (ok, err) = replay(&file, &["--endpoint", "a", "--since", "yesterday-ish"]).await;
    assert!(!ok);
    assert!(err.contains("a duration ago"), "{err}");
}
