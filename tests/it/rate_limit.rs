//! `rate_limit` shared by every relay on the table (issue 20 item 3), on real PostgreSQL and a
//! real HTTP receiver, with three relays. The assertions are lower bounds on time (a slow
//! machine only makes a run slower); how close to the limit the relays get is measured in
//! the benchmarks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::receiver::{Receiver, Reply};
use crate::common::{insert_events, webhook_toml, TestDb};

fn toml(rx: &Receiver, limit: &str) -> String {
    format!(
        "backoff_initial = \"100ms\"\nbackoff_max = \"10s\"\n{}rate_limit = \"{limit}\"\n",
        webhook_toml("limited", &rx.url)
    )
}

#[tokio::test]
async fn three_relays_together_stay_under_one_rate_limit() {
    let db = TestDb::new().await;
    let rx = Receiver::start().await;
    let config = toml(&rx, "40/s");
    let (_, _a) = db.start_relay(&config).await;
    let (_, _b) = db.start_relay(&config).await;
    let (_, _c) = db.start_relay(&config).await;
    let client = db.client().await;
    let started = Instant::now();
    let ids = insert_events(&client, 200, "ORDER.CREATED").await;
    rx.wait_accepted(&ids).await;
    let last = rx.deliveries().iter().map(|d| d.received).max().unwrap();
    // The bucket starts empty and holds at most 4 tokens: 200 requests take at least
    // 196 / 40 s, whatever the three relays do. Without the shared limit each relay would
    // allow 40/s on its own (120/s together) and the run would take about 1.7 s.
    let took = last.duration_since(started);
    assert!(
        took >= Duration::from_millis(4800),
        "200 requests at 40/s in {took:?}"
    );
    let accepted = rx.accepted_counts();
    assert!(ids.iter().all(|id| accepted.get(id) == Some(&1)));
    // Per second of the run, never much more than the limit (give or take the burst).
    let mut arrivals: Vec<Duration> = rx
        .deliveries()
        .iter()
        .map(|d| d.received.duration_since(started))
        .collect();
    arrivals.sort();
    for (i, at) in arrivals.iter().enumerate() {
        let within = arrivals[i..]
            .iter()
            .take_while(|t| **t < *at + Duration::from_secs(2))
            .count();
        assert!(
            within <= 2 * 40 + 4 + 8,
            "{within} requests within 2 s from {at:?}"
        );
    }
}

#[tokio::test]
async fn a_429_with_retry_after_pauses_the_endpoint_for_every_relay() {
    let db = TestDb::new().await;
    let rx = Receiver::start().await;
    let config = toml(&rx, "30/s");
    let (_, _a) = db.start_relay(&config).await;
    let (_, _b) = db.start_relay(&config).await;
    let (_, _c) = db.start_relay(&config).await;
    let client = db.client().await;
    let ids = insert_events(&client, 120, "ORDER.CREATED").await;
    let throttled = ids[20].clone();
    {
        let throttled = throttled.clone();
        rx.set_script(Arc::new(move |id, nth| {
            if id == throttled && nth == 1 {
                Reply::status(429).retry_after("3")
            } else {
                Reply::ok()
            }
        }));
    }
    rx.wait_accepted(&ids).await;
    let deliveries = rx.deliveries();
    let t429 = deliveries
        .iter()
        .find(|d| d.answered == 429)
        .expect("the 429 was answered")
        .received;
    // Requests already granted when the 429 came back may still go out at once; after that,
    // nothing until its Retry-After (3 s) is over, from any relay.
    let quiet: Vec<Duration> = deliveries
        .iter()
        .filter(|d| d.received > t429)
        .map(|d| d.received.duration_since(t429))
        .filter(|gap| *gap > Duration::from_millis(700) && *gap < Duration::from_millis(2700))
        .collect();
    assert!(quiet.is_empty(), "requests {quiet:?} after the 429");
    assert!(
        deliveries
            .iter()
            .any(|d| d.received > t429 + Duration::from_secs(3)),
        "delivery went on after the Retry-After"
    );
}
