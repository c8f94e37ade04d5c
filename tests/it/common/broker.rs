//! What the broker sinks' tests share: the server processes they start (output appended to
//! a log file, stopped with a signal), and the scenarios every broker goes through the same
//! way (a relay killed mid-drain, a server down for a while, entity order). Each broker's
//! tests then read back what its server holds.

use std::collections::{BTreeMap, HashSet};
use std::fs::OpenOptions;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::future::BoxFuture;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::time::Instant;

use super::process::{relay, Proc};
use super::{count_status, insert_events, texts, wait_progressing, wait_until, TestDb, SECRET};

/// Starts `program` with `args`, its output appended to `log`; panics with `missing` when
/// the program is not installed.
pub fn spawn_logged(program: &str, args: &[String], log: &Path, missing: &str) -> Child {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn();
    match child {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!("{missing}"),
        Err(e) => panic!("starting {program}: {e}"),
    }
}

/// Sends `signal` to `child` and waits (bounded by `patience`) for it to exit; SIGKILL if
/// it does not.
pub async fn stop_child(mut child: Child, signal: Signal, patience: Duration) {
    let _ = nix::sys::signal::kill(Pid::from_raw(child.id() as i32), signal);
    let deadline = Instant::now() + patience;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A broker server a test can stop and start again on the same port and data.
pub trait Restartable {
    fn stop(&mut self) -> BoxFuture<'_, ()>;
    fn start_again(&mut self) -> BoxFuture<'_, ()>;
}

impl Restartable for super::nats::NatsServer {
    fn stop(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(super::nats::NatsServer::stop(self))
    }

    fn start_again(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(super::nats::NatsServer::start_again(self))
    }
}

impl Restartable for super::rabbitmq::RabbitServer {
    fn stop(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(super::rabbitmq::RabbitServer::stop(self))
    }

    fn start_again(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(super::rabbitmq::RabbitServer::start_again(self))
    }
}

impl Restartable for super::redis::RedisServer {
    fn stop(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(super::redis::RedisServer::stop(self))
    }

    fn start_again(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(super::redis::RedisServer::start_again(self))
    }
}

/// `ids` (as a broker holds them) as a set, checked unique.
pub fn unique(ids: impl IntoIterator<Item = String>) -> HashSet<String> {
    let ids: Vec<String> = ids.into_iter().collect();
    let set: HashSet<String> = ids.iter().cloned().collect();
    assert_eq!(set.len(), ids.len(), "duplicates in the stream");
    set
}

/// Waits until `n` rows are COMPLETED, as long as their number keeps growing
/// ([`wait_progressing`]).
pub async fn wait_completed(client: &tokio_postgres::Client, n: i64) {
    wait_progressing(&format!("{n} rows COMPLETED"), n, || {
        count_status(client, "COMPLETED")
    })
    .await;
}

/// Ids of the rows attempted more than once.
pub async fn retried_ids(client: &tokio_postgres::Client) -> HashSet<String> {
    texts(
        client,
        "SELECT id::text FROM \"OutboxEvent\" WHERE retry_count > 0",
    )
    .await
    .into_iter()
    .collect()
}

/// Checks a message's Standard Webhooks signature as a receiver would, with the relay's
/// test secret: `headers` as the broker carried them (names in any case). `what` names the
/// message in the failure.
pub fn assert_signed<'a>(
    body: &[u8],
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    what: &str,
) {
    let mut map = axum::http::HeaderMap::new();
    for (name, value) in headers {
        map.insert(
            axum::http::HeaderName::from_bytes(name.to_lowercase().as_bytes()).unwrap(),
            axum::http::HeaderValue::from_str(value).unwrap(),
        );
    }
    standardwebhooks::Webhook::new(SECRET)
        .unwrap()
        .verify(body, &map)
        .unwrap_or_else(|e| panic!("{what} does not verify: {e:?}"));
}

/// What [`kill_mid_drain`] leaves: the events, those sent more than once, and the relay
/// that finished the drain (still running).
pub struct Killed {
    pub ids: HashSet<String>,
    pub retried: HashSet<String>,
    pub second: Proc,
}

impl Killed {
    /// Stops the second relay (SIGTERM).
    pub async fn stop(&mut self) {
        self.second.signal(Signal::SIGTERM);
        self.second.wait_exit(Duration::from_secs(30)).await;
    }
}

/// 5,000 events of `event_type`; a relay (the binary, config `sink_toml` with a 2 s lease,
/// so the killed relay's rows come back soon) SIGKILLed once 500 are delivered, and a
/// second one that delivers the rest. Asserts that the kill came mid-drain and that rows
/// were sent again after it.
pub async fn kill_mid_drain(db: &TestDb, sink_toml: &str, event_type: &str) -> Killed {
    let file = db
        .migrated_config_file(&format!("lease = \"2s\"\n{sink_toml}"))
        .await;
    let client = db.client().await;
    let mut ids = HashSet::new();
    for _ in 0..5 {
        ids.extend(insert_events(&client, 1000, event_type).await);
    }
    let mut first = relay("relay-1", &file);
    wait_until("part of the drain delivered", || async {
        count_status(&client, "COMPLETED").await >= 500
    })
    .await;
    first.signal(Signal::SIGKILL);
    first.wait_exit(Duration::from_secs(10)).await;
    let done_before = count_status(&client, "COMPLETED").await;
    assert!(done_before < 5000, "killed too late to test anything");

    let second = relay("relay-2", &file);
    wait_completed(&client, 5000).await;
    // The scenario happened: rows the killed relay held were sent again after their lease
    // lapsed.
    let retried = retried_ids(&client).await;
    assert!(!retried.is_empty(), "no row was in flight at the kill");
    Killed {
        ids,
        retried,
        second,
    }
}

/// 500 events of `event_type` delivered; `server` stopped for 10 s while 500 more come,
/// then started again; every event delivered, none dead-lettered. The relay runs in this
/// process on `sink_toml` (fast backoff). Returns the ids.
pub async fn outage(
    db: &TestDb,
    sink_toml: &str,
    event_type: &str,
    server: &mut dyn Restartable,
) -> HashSet<String> {
    let toml = format!("backoff_initial = \"200ms\"\nbackoff_max = \"2s\"\n{sink_toml}");
    let (_, relay) = db.start_relay(&toml).await;
    let client = db.client().await;
    let mut ids: HashSet<String> = insert_events(&client, 500, event_type)
        .await
        .into_iter()
        .collect();
    wait_completed(&client, 500).await;
    server.stop().await;
    ids.extend(insert_events(&client, 500, event_type).await);
    // The outage is the scenario: events wait (failed attempts, retried) while it lasts.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(count_status(&client, "COMPLETED").await < 1000);
    server.start_again().await;
    wait_completed(&client, 1000).await;
    assert_eq!(count_status(&client, "FAILED").await, 0);
    relay.stop().await.unwrap();
    ids
}

/// Inserts one event of `event_type` for org `org` (empty payload); its id.
pub async fn insert_for_org(
    client: &tokio_postgres::Client,
    event_type: &str,
    org: &str,
) -> String {
    client
        .query_one(
            "INSERT INTO \"OutboxEvent\" (event_type, org_id, payload)
             VALUES ($1, $2, '{}') RETURNING id::text",
            &[&event_type, &org],
        )
        .await
        .unwrap()
        .get(0)
}

/// 10 entities (`p0`..`p9` of org `org_1`), 30 events each (`data.n` = 0..29), interleaved,
/// each in a transaction of its own.
pub async fn insert_entity_sequences(client: &tokio_postgres::Client, event_type: &str) {
    for n in 0..30 {
        for e in 0..10 {
            client
                .execute(
                    "INSERT INTO \"OutboxEvent\" (event_type, org_id, entity_type, entity_id, payload)
                     VALUES ($1, 'org_1', 'Project', $2, jsonb_build_object('n', $3::int))",
                    &[&event_type, &format!("p{e}"), &n],
                )
                .await
                .unwrap();
        }
    }
}

/// Asserts that the envelopes, in the order the broker holds them, have each of the 10
/// entities' events in order.
pub fn assert_entity_order(bodies: impl IntoIterator<Item = serde_json::Value>) {
    let mut by_entity: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for body in bodies {
        by_entity
            .entry(body["entity_id"].as_str().unwrap().to_owned())
            .or_default()
            .push(body["data"]["n"].as_i64().unwrap());
    }
    assert_eq!(by_entity.len(), 10);
    for (entity, ns) in by_entity {
        assert_eq!(ns, (0..30).collect::<Vec<_>>(), "{entity} out of order");
    }
}
