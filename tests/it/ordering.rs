//! Entity-ordered delivery (`ordering = "entity"`): per (entity_type, entity_id), the next
//! event is not sent until the previous one was accepted, across several relays, crashes
//! and failing receivers; a FAILED head blocks only its own key until `retry` or `skip`.

use crate::common::fault::*;
use crate::common::load::Load;
use crate::common::process::*;
use crate::common::*;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;

/// Checks the receiver's requests (in arrival order) against the publish order per key:
/// no event may arrive before its predecessor was accepted. Redeliveries of an event already
/// sent are allowed (at least once); what is counted is the first arrival of each.
/// Returns how many events were checked.
fn assert_entity_order(deliveries: &[Delivery], by_key: &HashMap<String, Vec<String>>) -> usize {
    let position: HashMap<&str, (&str, usize)> = by_key
        .iter()
        .flat_map(|(k, ids)| {
            ids.iter()
                .enumerate()
                .map(move |(i, id)| (id.as_str(), (k.as_str(), i)))
        })
        .collect();
    // Per key: how many of its events (a prefix) were accepted so far.
    let mut accepted: HashMap<&str, usize> = HashMap::new();
    let mut checked = HashSet::new();
    for d in deliveries {
        let Some(&(key, i)) = position.get(d.id.as_str()) else {
            continue;
        };
        let done = accepted.entry(key).or_default();
        assert!(
            i <= *done,
            "{key}: event #{i} ({}) was sent while #{} was not accepted yet",
            d.id,
            *done
        );
        if (200..300).contains(&d.answered) && i == *done {
            *done += 1;
        }
        checked.insert(&d.id);
    }
    checked.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_relays_keep_entity_order_through_kills_and_failing_receivers() {
    let db = TestDb::new().await;
    // A quarter of first and second attempts fail in one way or another.
    let rx = Receiver::with_script(Arc::new(|id, nth| match (nth, dice(id, nth)) {
        (3.., _) => Reply::ok(),
        (_, 0..8) => Reply::status(500),
        (_, 8..14) => Reply::reset(),
        (_, 14..20) => Reply::status(429).retry_after("1"),
        (_, 20..25) => Reply::ok().delayed(Duration::from_secs(3)), // past the 1 s timeout
        _ => Reply::ok(),
    }))
    .await;
    let url = relay_url(&db.url, None);
    let configs: Vec<_> = (0..3)
        .map(|_| relay_config(&url, &[("main", &rx)], "ordering = \"entity\""))
        .collect();
    db.migrate(&db.config("ordering = \"entity\"")).await;
    // 200 keys at the load rate: each key gets a few events a second, so order matters.
    let load = Load::start(&db.url, rate(), load_time(), 200);
    let mut relays: Vec<Proc> = configs
        .iter()
        .enumerate()
        .map(|(i, (f, _))| relay(&format!("relay {i}"), f))
        .collect();
    let mut dead = Vec::new();
    let mut kills = 0;
    let end = tokio::time::Instant::now() + load_time();
    while tokio::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let i = kills % relays.len();
        relays[i].signal(Signal::SIGKILL);
        relays[i].wait_exit(EXIT_PATIENCE).await;
        kills += 1;
        let fresh = relay(&format!("relay {i} (restart {kills})"), &configs[i].0);
        dead.push(std::mem::replace(&mut relays[i], fresh));
    }
    let published = load.finish().await;
    let t = settle(&db.url, &published, &[&rx], &HashSet::new(), PATIENCE * 2).await;
    let checked = assert_entity_order(&rx.deliveries(), &published.by_key);
    report(
        10,
        "entity order under faults",
        &format!(
            "ordering = \"entity\", 3 relays, 200 keys; one relay SIGKILLed every 3 s \
             ({kills} kills) while the receiver fails 25% of first and second attempts \
             (500, reset, 429, timeout); order checked for {checked} events"
        ),
        &t,
    );
    assert_nothing_lost(&t, kills * WINDOW);
    assert_eq!(checked, published.committed.len());
    let mut procs: Vec<&Proc> = dead.iter().collect();
    procs.extend(relays.iter());
    assert_no_secrets(&db.url, &configs[0].0, Some(&configs[0].1), &procs).await;
}

/// Inserts one event of `event_type` for Item/`key`; returns its id.
async fn publish(client: &tokio_postgres::Client, event_type: &str, key: &str) -> String {
    publish_as(client, &uuid::Uuid::new_v4().to_string(), event_type, key).await
}

/// Inserts one event with a chosen id (so a receiver can be told about it first).
async fn publish_as(
    client: &tokio_postgres::Client,
    id: &str,
    event_type: &str,
    key: &str,
) -> String {
    client
        .query_one(
            "INSERT INTO \"OutboxEvent\" (id, event_type, entity_type, entity_id, payload)
             VALUES ($1::text::uuid, $2, 'Item', $3, '{}') RETURNING id::text",
            &[&id, &event_type, &key],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_head_blocks_only_its_key_until_it_is_skipped_or_retried() {
    let db = TestDb::new().await;
    // Events whose id is in `failing` are refused until removed from it.
    let failing: Arc<Mutex<HashSet<String>>> = Arc::default();
    let f = failing.clone();
    let rx = Receiver::with_script(Arc::new(move |id, _| {
        if f.lock().unwrap().contains(id) {
            Reply::status(500)
        } else {
            Reply::ok()
        }
    }))
    .await;
    // Only the "ordered" webhook asks for order, and only for ITEM.* events; the
    // "audit" webhook takes everything as it comes.
    let audit = Receiver::start().await;
    let extra = "max_attempts = 2\nbackoff_initial = \"100ms\"\nbackoff_max = \"100ms\"";
    let (file, _http) = relay_config(&relay_url(&db.url, None), &[], extra);
    let mut toml = std::fs::read_to_string(file.path()).unwrap();
    toml.push_str(&format!(
        "[[webhook]]\nname = \"ordered\"\nurl = \"{}\"\nsecret = \"{SECRET}\"\n\
         types = [\"ITEM.*\"]\nordering = \"entity\"\n\
         [[webhook]]\nname = \"audit\"\nurl = \"{}\"\nsecret = \"{SECRET}\"\n",
        rx.url, audit.url
    ));
    std::fs::write(file.path(), &toml).unwrap();
    let cfg = outbox_relay::config::Config::load(
        Some(file.path()),
        &outbox_relay::config::Overrides::default(),
        outbox_relay::config::Needs::Everything,
    )
    .unwrap();
    db.migrate(&cfg).await;
    let client = db.client().await;

    let head = publish(&client, "ITEM.UPDATED", "a").await;
    failing.lock().unwrap().insert(head.clone());
    let behind = [
        publish(&client, "ITEM.UPDATED", "a").await,
        publish(&client, "ITEM.DELETED", "a").await,
    ];
    let unordered = publish(&client, "NOTE.ADDED", "a").await;
    let other_key: Vec<String> = [
        publish(&client, "ITEM.UPDATED", "b").await,
        publish(&client, "ITEM.UPDATED", "b").await,
    ]
    .into();

    let r = relay("relay", &file);
    // Key b flows, and so does a's unordered event; a's head dies and holds the rest.
    rx.wait_accepted(&other_key).await;
    audit.wait_accepted(std::slice::from_ref(&unordered)).await;
    wait_until("the head FAILED", || {
        let (c, h) = (&client, &head);
        async move { row_state(c, h).await.0 == "FAILED" }
    })
    .await;
    // Give a blocked event every chance to leak: several claim rounds.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sent: HashSet<String> = rx.deliveries().into_iter().map(|d| d.id).collect();
    for id in &behind {
        assert!(!sent.contains(id), "{id} was sent past a FAILED head");
        assert_eq!(row_state(&client, id).await.0, "PENDING");
    }
    let status: serde_json::Value =
        serde_json::from_str(&cli(&file, &["status", "--json"]).await).unwrap();
    let blocked = status["blocked_keys"].as_array().unwrap();
    assert_eq!(blocked.len(), 1, "{status}");
    assert_eq!(blocked[0]["entity_id"], "a");
    assert_eq!(blocked[0]["event_id"], head.as_str());
    assert_eq!(blocked[0]["waiting"], 2);
    assert!(cli(&file, &["status"]).await.contains("Item/a"));

    // Skip: the head stays FAILED (never delivered to "ordered"), the rest go, in order.
    cli(&file, &["skip", "--id", &head]).await;
    rx.wait_accepted(&behind).await;
    let order: Vec<String> = rx
        .deliveries()
        .into_iter()
        .filter(|d| behind.contains(&d.id))
        .map(|d| d.id)
        .collect();
    assert_eq!(order, behind.to_vec());
    assert_eq!(row_state(&client, &head).await.0, "FAILED");
    let status: serde_json::Value =
        serde_json::from_str(&cli(&file, &["status", "--json"]).await).unwrap();
    assert_eq!(status["blocked_keys"], serde_json::json!([]));

    // Retry: a new failing head on key c; once the receiver is fixed, retry delivers it and
    // then what waited behind it.
    // The receiver must refuse it from its first attempt: the relay is running.
    let head_c = uuid::Uuid::new_v4().to_string();
    failing.lock().unwrap().insert(head_c.clone());
    publish_as(&client, &head_c, "ITEM.UPDATED", "c").await;
    let behind_c = publish(&client, "ITEM.UPDATED", "c").await;
    wait_until("c's head FAILED", || {
        let (c, h) = (&client, &head_c);
        async move { row_state(c, h).await.0 == "FAILED" }
    })
    .await;
    failing.lock().unwrap().clear();
    cli(&file, &["retry", "--id", &head_c]).await;
    rx.wait_accepted(&[head_c.clone(), behind_c.clone()]).await;
    let order: Vec<String> = rx
        .deliveries()
        .into_iter()
        .filter(|d| (200..300).contains(&d.answered) && (d.id == head_c || d.id == behind_c))
        .map(|d| d.id)
        .collect();
    assert_eq!(order, vec![head_c, behind_c]);
    drop(r);
}
