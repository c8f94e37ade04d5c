//! The NATS JetStream sink against real `nats-server -js` processes the tests start: what the
//! stream holds after a drain, a relay SIGKILLed mid-drain, a server down for a while, entity
//! order, a subject no stream takes, and a three-node cluster losing a node under load.

use crate::common::broker::{
    assert_entity_order, assert_signed, insert_entity_sequences, kill_mid_drain, outage, unique,
    wait_completed,
};
use crate::common::nats::{
    self as nats_it, create_stream, read_stream, stream_leader, NatsCluster, NatsServer, Received,
};
use crate::common::process::*;
use crate::common::*;

use std::collections::HashSet;
use std::time::Duration;

/// A `[[nats]]` section publishing to `stream` at `urls`.
fn nats_toml(urls: &[String], stream: &str, extra: &str) -> String {
    let urls: Vec<String> = urls.iter().map(|u| format!("{u:?}")).collect();
    format!(
        "[[nats]]\nname = \"bus\"\nurl = [{}]\nstream = \"{stream}\"\n\
         subject = \"outbox.{{org_id}}.{{event_type}}\"\nsecret = \"{SECRET}\"\n{extra}\n",
        urls.join(", ")
    )
}

/// The Nats-Msg-Id of every message, checked unique, as a set.
fn unique_ids(messages: &[Received]) -> HashSet<String> {
    unique(
        messages
            .iter()
            .map(|m| m.msg_id.clone().expect("every message has a Nats-Msg-Id")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_reach_the_stream_once_each_signed_and_with_their_ids() {
    let nats = NatsServer::start().await;
    let db = TestDb::new().await;
    let toml = nats_toml(&[nats.url()], "OUTBOX", "create_stream = true");
    let (_, relay) = db.start_relay(&toml).await;
    let client = db.client().await;
    let mut ids = HashSet::new();
    for _ in 0..10 {
        ids.extend(insert_events(&client, 1000, "NATS.TEST").await);
    }
    wait_until("every row COMPLETED", || async {
        count_status(&client, "COMPLETED").await == 10_000
    })
    .await;
    let nc = nats_it::connect(nats.url()).await;
    let messages = read_stream(&nc, "OUTBOX").await;
    assert_eq!(messages.len(), 10_000);
    assert_eq!(
        unique_ids(&messages),
        ids,
        "each event once, under its own id"
    );
    for m in &messages {
        assert_eq!(m.subject, "outbox.org_1.NATS.TEST");
        assert_eq!(m.body["type"], "NATS.TEST");
        assert_eq!(m.body["id"].as_str(), m.msg_id.as_deref());
        assert_eq!(m.body["attempt"], 1);
        // The Standard Webhooks headers verify as a receiver's would.
        let headers = m.headers.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        assert_signed(&m.payload, headers, &format!("{:?}", m.msg_id));
    }
    relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_mid_drain_and_restarted_stores_each_event_once() {
    let nats = NatsServer::start().await;
    let db = TestDb::new().await;
    let toml = nats_toml(&[nats.url()], "OUTBOX", "create_stream = true");
    let mut killed = kill_mid_drain(&db, &toml, "NATS.KILL").await;
    let nc = nats_it::connect(nats.url()).await;
    let messages = read_stream(&nc, "OUTBOX").await;
    assert_eq!(
        unique_ids(&messages),
        killed.ids,
        "nothing lost, nothing stored twice"
    );
    // Those the killed relay had published before the kill (the stored body says attempt
    // 1, the row says more) were dropped by the stream as duplicates.
    let deduplicated = messages
        .iter()
        .filter(|m| m.body["attempt"] == 1 && killed.retried.contains(m.msg_id.as_deref().unwrap()))
        .count();
    println!(
        "{} rows redelivered after the kill, {deduplicated} of them dropped by the stream as duplicates",
        killed.retried.len()
    );
    killed.stop().await;
}

/// The server stopped for 10 s while events keep coming, then back: nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: long; run with --ignored"]
async fn a_server_down_for_ten_seconds_loses_nothing() {
    let mut nats = NatsServer::start().await;
    let db = TestDb::new().await;
    let toml = nats_toml(
        &[nats.url()],
        "OUTBOX",
        "create_stream = true\ntimeout = \"2s\"",
    );
    let ids = outage(&db, &toml, "NATS.OUTAGE", &mut nats).await;
    let nc = nats_it::connect(nats.url()).await;
    assert_eq!(unique_ids(&read_stream(&nc, "OUTBOX").await), ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entity_order_is_kept_in_the_stream() {
    let nats = NatsServer::start().await;
    let db = TestDb::new().await;
    let toml = nats_toml(
        &[nats.url()],
        "OUTBOX",
        "create_stream = true\nordering = \"entity\"",
    );
    let (_, relay) = db.start_relay(&toml).await;
    let client = db.client().await;
    insert_entity_sequences(&client, "NATS.ORDER").await;
    wait_completed(&client, 300).await;
    let nc = nats_it::connect(nats.url()).await;
    assert_entity_order(read_stream(&nc, "OUTBOX").await.into_iter().map(|m| m.body));
    relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_no_stream_takes_dead_letters_with_the_reason_and_a_missing_stream_stops_the_start(
) {
    let nats = NatsServer::start().await;
    let nc = nats_it::connect(nats.url()).await;
    // The stream exists but takes other subjects.
    create_stream(&nc, "ELSEWHERE", &["elsewhere.>"], 1).await;
    let db = TestDb::new().await;
    let (_, running) = db
        .start_relay(&nats_toml(&[nats.url()], "ELSEWHERE", ""))
        .await;
    let client = db.client().await;
    let ids = insert_events(&client, 3, "NATS.NOWHERE").await;
    wait_until("the events dead-lettered", || async {
        count_status(&client, "FAILED").await == 3
    })
    .await;
    for id in &ids {
        let (status, retries, error, _) = row_state(&client, id).await;
        assert_eq!(
            (status.as_str(), retries),
            ("FAILED", 1),
            "at once, no retries"
        );
        let error = error.unwrap();
        assert!(
            error.contains("no JetStream stream takes the subject \"outbox.org_1.NATS.NOWHERE\""),
            "{error}"
        );
    }
    running.stop().await.unwrap();

    // A stream that does not exist, without create_stream: one line, and the relay exits.
    let file = db
        .migrated_config_file(&nats_toml(&[nats.url()], "MISSING", ""))
        .await;
    let mut r = relay("relay", &file);
    let status = r.wait_exit(Duration::from_secs(30)).await;
    assert!(!status.success());
    let err = r.stderr();
    assert!(
        err.contains("JetStream stream \\\"MISSING\\\" does not exist")
            || err.contains("JetStream stream \"MISSING\" does not exist"),
        "{err}"
    );
    assert!(err.contains("create_stream = true"), "{err}");
    assert_no_secret("relay", &err);
}

/// A three-node JetStream cluster, an R3 stream, 1,000 events/s for 6 s, the stream's
/// leader killed 2 s in: nothing lost, nothing stored twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: long; run with --ignored"]
async fn a_cluster_node_killed_under_load_loses_and_duplicates_nothing() {
    let mut cluster = NatsCluster::start(3).await;
    let nc = nats_it::connect(cluster.urls()).await;
    create_stream(&nc, "OUTBOX", &["outbox.>"], 3).await;
    let db = TestDb::new().await;
    let toml = format!(
        "backoff_initial = \"200ms\"\nbackoff_max = \"2s\"\n{}",
        nats_toml(&cluster.urls(), "OUTBOX", "timeout = \"2s\"")
    );
    let (_, relay) = db.start_relay(&toml).await;
    let client = db.client().await;
    let mut ids = HashSet::new();
    // 60 ticks of 100 ms, 100 events each.
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    for i in 0..60 {
        tick.tick().await;
        ids.extend(insert_events(&client, 100, "NATS.CLUSTER").await);
        if i == 20 {
            // The stream's leader: the stream elects another while publishes wait for acks.
            let leader = stream_leader(&nc, "OUTBOX").await;
            cluster.kill(cluster.index_of(&leader).unwrap()).await;
        }
    }
    wait_until("every row COMPLETED", || async {
        count_status(&client, "COMPLETED").await == 6000
    })
    .await;
    let nc = nats_it::connect(cluster.urls()).await;
    assert_eq!(
        unique_ids(&read_stream(&nc, "OUTBOX").await),
        ids,
        "nothing lost, nothing stored twice"
    );
    assert_eq!(count_status(&client, "FAILED").await, 0);
    relay.stop().await.unwrap();
}
