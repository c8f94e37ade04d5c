//! The Redis Streams sink against real `redis-server` processes the tests start: what the
//! stream holds after a drain, a relay SIGKILLed mid-drain, a server down for a while, entity
//! order, a key that is not a stream, MAXLEN, and a password-protected server.

use crate::common::broker::{
    assert_entity_order, assert_signed, insert_entity_sequences, insert_for_org, kill_mid_drain,
    outage, retried_ids, unique, wait_completed,
};
use crate::common::process::*;
use crate::common::redis::{keys_matching, read_stream, stream_len, Entry, RedisServer};
use crate::common::*;

use std::collections::HashSet;
use std::time::Duration;

/// The stream every test event (org `org_1`) goes to.
const STREAM: &str = "outbox:org_1";

/// A `[[redis]]` section appending to `outbox:{org_id}` at `url`, signed.
fn redis_toml(url: &str, extra: &str) -> String {
    format!(
        "[[redis]]\nname = \"streams\"\nurl = \"{url}\"\nstream = \"outbox:{{org_id}}\"\n\
         secret = \"{SECRET}\"\n{extra}\n"
    )
}

/// The `id` field of every entry, checked unique, as a set.
fn unique_ids(entries: &[Entry]) -> HashSet<String> {
    unique(entries.iter().map(|e| e.text("id").to_owned()))
}

/// A relay in this process on `toml` delivers 10 events to `redis`'s stream, then stops.
async fn ten_delivered(db: &TestDb, redis: &RedisServer, toml: &str, event_type: &str) {
    let (_, running) = db.start_relay(toml).await;
    let client = db.client().await;
    let ids: HashSet<String> = insert_events(&client, 10, event_type)
        .await
        .into_iter()
        .collect();
    wait_completed(&client, 10).await;
    let mut con = redis.connect().await;
    assert_eq!(unique_ids(&read_stream(&mut con, STREAM).await), ids);
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_reach_the_stream_once_each_signed_and_with_their_ids() {
    let redis = RedisServer::start().await;
    let db = TestDb::new().await;
    let (_, relay) = db.start_relay(&redis_toml(&redis.url(), "")).await;
    let client = db.client().await;
    let mut ids = HashSet::new();
    for _ in 0..10 {
        ids.extend(insert_events(&client, 1000, "REDIS.TEST").await);
    }
    wait_completed(&client, 10_000).await;
    let mut con = redis.connect().await;
    let entries = read_stream(&mut con, STREAM).await;
    assert_eq!(entries.len(), 10_000);
    assert_eq!(
        unique_ids(&entries),
        ids,
        "each event once, under its own id"
    );
    for e in &entries {
        let names: Vec<&str> = e.fields.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "id",
                "type",
                "body",
                "webhook-id",
                "webhook-timestamp",
                "webhook-signature"
            ]
        );
        let body = e.body();
        assert_eq!(e.text("type"), "REDIS.TEST");
        assert_eq!(body["type"], "REDIS.TEST");
        assert_eq!(body["id"].as_str(), Some(e.text("id")));
        assert_eq!(e.text("webhook-id"), e.text("id"));
        assert_eq!(body["attempt"], 1);
        // The Standard Webhooks fields verify as a receiver's headers would.
        let headers = ["webhook-id", "webhook-timestamp", "webhook-signature"]
            .map(|name| (name, e.text(name)));
        assert_signed(e.bytes("body"), headers, e.text("id"));
    }
    // Each appended event is remembered for the dedup window, under its stream and id.
    let dedup = keys_matching(&mut con, "outbox-relay:dedup:*").await;
    assert_eq!(dedup.len(), 10_000);
    let sample = &dedup[0];
    assert!(
        sample.starts_with("outbox-relay:dedup:outbox:org_1:"),
        "{sample}"
    );
    let ttl: i64 = ::redis::cmd("PTTL")
        .arg(sample)
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(ttl > 0 && ttl <= 120_000, "{ttl}");
    let bytes: i64 = ::redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(sample)
        .query_async(&mut con)
        .await
        .unwrap();
    println!(
        "one dedup key ({} bytes of name): {bytes} bytes of memory",
        sample.len()
    );
    relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_mid_drain_and_restarted_appends_each_event_once() {
    let redis = RedisServer::start().await;
    let db = TestDb::new().await;
    let mut killed = kill_mid_drain(&db, &redis_toml(&redis.url(), ""), "REDIS.KILL").await;
    let mut con = redis.connect().await;
    let entries = read_stream(&mut con, STREAM).await;
    assert_eq!(
        unique_ids(&entries),
        killed.ids,
        "nothing lost, nothing appended twice"
    );
    // Those the killed relay had appended before the kill (the entry says attempt 1, the
    // row says more) found their dedup key and were not appended again.
    let deduplicated = entries
        .iter()
        .filter(|e| e.body()["attempt"] == 1 && killed.retried.contains(e.text("id")))
        .count();
    println!(
        "{} rows redelivered after the kill, {deduplicated} of them already in the stream \
         and not appended again ({} 'already appended' lines in the second relay's log)",
        killed.retried.len(),
        killed.second.log_count("already appended")
    );
    killed.stop().await;
    assert_no_secret("relay-2", &killed.second.stderr());
}

/// The server stopped for 10 s while events keep coming, then back on the same data:
/// nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: long; run with --ignored"]
async fn a_server_down_for_ten_seconds_loses_nothing() {
    let mut redis = RedisServer::start().await;
    let db = TestDb::new().await;
    let toml = redis_toml(&redis.url(), "timeout = \"2s\"");
    let ids = outage(&db, &toml, "REDIS.OUTAGE", &mut redis).await;
    let mut con = redis.connect().await;
    // The first 500, appended before the stop, came back from the append-only file.
    assert_eq!(unique_ids(&read_stream(&mut con, STREAM).await), ids);
    let retried = retried_ids(&db.client().await).await;
    assert!(!retried.is_empty(), "the outage cost no attempt");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entity_order_is_kept_in_the_stream() {
    let redis = RedisServer::start().await;
    let db = TestDb::new().await;
    let toml = redis_toml(&redis.url(), "ordering = \"entity\"");
    let (_, relay) = db.start_relay(&toml).await;
    let client = db.client().await;
    insert_entity_sequences(&client, "REDIS.ORDER").await;
    wait_completed(&client, 300).await;
    let mut con = redis.connect().await;
    let entries = read_stream(&mut con, STREAM).await;
    assert_entity_order(entries.iter().map(Entry::body));
    relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_is_not_a_stream_or_too_long_dead_letters_with_the_reason() {
    let redis = RedisServer::start().await;
    let mut con = redis.connect().await;
    // Someone else's string where the stream of org `taken` would be.
    let _: () = ::redis::cmd("SET")
        .arg("outbox:taken")
        .arg("not a stream")
        .query_async(&mut con)
        .await
        .unwrap();
    let db = TestDb::new().await;
    let (_, relay) = db.start_relay(&redis_toml(&redis.url(), "")).await;
    let client = db.client().await;
    let taken = insert_for_org(&client, "REDIS.DEAD", "taken").await;
    let long = insert_for_org(&client, "REDIS.DEAD", &"o".repeat(1100)).await;
    let fine = insert_for_org(&client, "REDIS.DEAD", "org_1").await;
    wait_until("two dead letters and one delivery", || async {
        count_status(&client, "FAILED").await == 2 && count_status(&client, "COMPLETED").await == 1
    })
    .await;
    for (id, says) in [
        (
            &taken,
            "the key \"outbox:taken\" holds something other than a stream: WRONGTYPE",
        ),
        (
            &long,
            "the stream key would be 1107 bytes, longer than the 1024 allowed",
        ),
    ] {
        let (status, retries, error, _) = row_state(&client, id).await;
        assert_eq!(
            (status.as_str(), retries),
            ("FAILED", 1),
            "at once, no retries"
        );
        let error = error.unwrap();
        assert!(error.contains(says), "{error}");
    }
    // The refused append left nothing behind: no dedup key, the string untouched.
    let refused = keys_matching(&mut con, "outbox-relay:dedup:outbox:taken:*").await;
    assert!(refused.is_empty(), "{refused:?}");
    let value: String = ::redis::cmd("GET")
        .arg("outbox:taken")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(value, "not a stream");
    let entries = read_stream(&mut con, STREAM).await;
    assert_eq!(unique_ids(&entries), HashSet::from([fine]));
    relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maxlen_trims_the_stream_to_about_that_many_entries() {
    let redis = RedisServer::start().await;
    let db = TestDb::new().await;
    let (_, relay) = db
        .start_relay(&redis_toml(&redis.url(), "maxlen = 100"))
        .await;
    let client = db.client().await;
    let ids: HashSet<String> = insert_events(&client, 1000, "REDIS.TRIM")
        .await
        .into_iter()
        .collect();
    wait_completed(&client, 1000).await;
    let mut con = redis.connect().await;
    // `MAXLEN ~ 100` removes whole nodes of the stream (stream-node-max-entries, 100 by
    // default) while at least 100 entries stay: between 100 and 199 are left.
    let len = stream_len(&mut con, STREAM).await;
    assert!((100..200).contains(&len), "{len} entries");
    let entries = read_stream(&mut con, STREAM).await;
    assert!(unique_ids(&entries).is_subset(&ids));
    // The stream's total history still counts every append.
    let info: Vec<::redis::Value> = ::redis::cmd("XINFO")
        .arg("STREAM")
        .arg(STREAM)
        .query_async(&mut con)
        .await
        .unwrap();
    let last_id = info
        .chunks(2)
        .find_map(|kv| match (&kv[0], &kv[1]) {
            (::redis::Value::BulkString(k), ::redis::Value::BulkString(v))
                if k == b"last-generated-id" =>
            {
                Some(String::from_utf8(v.clone()).unwrap())
            }
            _ => None,
        })
        .expect("XINFO STREAM has last-generated-id");
    assert_eq!(
        entries.last().unwrap().id,
        last_id,
        "the newest entries are kept"
    );
    relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_protected_server_takes_the_password_from_a_secret_and_a_wrong_one_stops_the_start(
) {
    let password = "hunter2-redis";
    let redis = RedisServer::start_with(&["--requirepass", password]).await;
    let db = TestDb::new().await;
    let secret_file = write_config(password);
    let toml = redis_toml(
        &redis.url(),
        &format!("password = \"file:{}\"", path_str(&secret_file)),
    );
    ten_delivered(&db, &redis, &toml, "REDIS.AUTH").await;

    // A wrong password in the URL: one line, at once, without the password; the relay exits.
    let url = redis.url().replace("redis://", "redis://:wrong-pass-42@");
    let file = db.migrated_config_file(&redis_toml(&url, "")).await;
    let mut r = relay("relay", &file);
    let status = r.wait_exit(Duration::from_secs(30)).await;
    assert!(!status.success());
    let err = r.stderr();
    assert!(
        err.contains("redis sink \\\"streams\\\"") || err.contains("redis sink \"streams\""),
        "{err}"
    );
    assert!(err.contains("authentication failed"), "{err}");
    assert!(
        !err.contains("wrong-pass-42"),
        "the password reached the log: {err}"
    );
    assert!(
        !err.contains("cannot reach Redis yet"),
        "retried a refusal: {err}"
    );
    assert_no_secret("relay", &err);
}

/// The dedup script itself, without a relay: the same event appended twice inside the
/// window is one entry (the second append counts as delivered); with the window off, two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_append_of_an_event_inside_the_dedup_window_adds_nothing() {
    use outbox_relay::event::Event;
    use outbox_relay::sinks::endpoint::{Attempt, Message};
    use tokio_util::sync::CancellationToken;

    let redis = RedisServer::start().await;
    let mut con = redis.connect().await;
    let event = Event {
        id: "evt-1".into(),
        event_type: Some("REDIS.TWICE".into()),
        org_id: Some("org_1".into()),
        payload: Some("{}".into()),
        ..Event::default()
    };
    for (window, stream, expected) in [("2m", "twice:on", 1), ("0s", "twice:off", 2)] {
        let toml = format!(
            "[[redis]]\nname = \"r\"\nurl = \"{}\"\nstream = \"{stream}\"\ndedup_window = \"{window}\"\n",
            redis.url()
        );
        let cfg = outbox_relay::config::Config::from_toml(&toml, &Default::default()).unwrap();
        let endpoint =
            outbox_relay::sinks::redis::endpoint(&cfg.redis[0], Default::default()).unwrap();
        endpoint.start(Duration::from_secs(10)).await.unwrap();
        for attempt in 1..=2 {
            let msg = Message {
                event: &event,
                event_type: "REDIS.TWICE",
                body: bytes::Bytes::from(format!("{{\"attempt\":{attempt}}}")),
            };
            let (sent, _) = endpoint.send(&msg, &CancellationToken::new()).await;
            assert_eq!(sent, Attempt::Accepted, "{window}, attempt {attempt}");
        }
        let entries = read_stream(&mut con, stream).await;
        assert_eq!(entries.len(), expected, "window {window}");
        assert_eq!(entries[0].bytes("body"), b"{\"attempt\":1}");
        let remembered = keys_matching(&mut con, &format!("outbox-relay:dedup:{stream}:*")).await;
        assert_eq!(remembered.len(), 2 - expected, "window {window}");
    }
}

/// `rediss://` with a CA of the test's own (`tls_ca`): delivered; without it (the system's
/// roots do not know that CA) the start stops at once with one line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_the_servers_ca_delivers_and_an_unknown_ca_stops_the_start() {
    use rcgen::ExtendedKeyUsagePurpose;

    let ca = crate::tls::ca("redis test CA");
    let (cert, key) = crate::tls::leaf(
        "localhost",
        &["localhost"],
        ExtendedKeyUsagePurpose::ServerAuth,
        &ca,
    );
    let files = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = files.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_owned()
    };
    let (cert, key, ca_pem) = (
        write("server.pem", &cert),
        write("server.key", &key),
        write("ca.pem", &ca.0.pem()),
    );
    let tls_port = free_addr().rsplit(':').next().unwrap().to_owned();
    let redis = RedisServer::start_with(&[
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca_pem,
        "--tls-auth-clients",
        "no",
    ])
    .await;
    let url = format!("rediss://localhost:{tls_port}");
    let db = TestDb::new().await;
    let toml = redis_toml(&url, &format!("tls_ca = \"{ca_pem}\""));
    ten_delivered(&db, &redis, &toml, "REDIS.TLS").await;

    let file = db.migrated_config_file(&redis_toml(&url, "")).await;
    let mut r = relay("relay", &file);
    let status = r.wait_exit(Duration::from_secs(20)).await;
    assert!(!status.success());
    let err = r.stderr();
    assert!(
        err.contains("refused") && err.contains("certificate"),
        "{err}"
    );
    assert!(
        !err.contains("cannot reach Redis yet"),
        "retried a refusal: {err}"
    );
}
