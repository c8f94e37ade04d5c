//! Resume cursors (issue 15.2): only a cursor a relay of the deployment issued, for the
//! subscriber's own org, is accepted, whatever a client sends in `Last-Event-ID`; and a
//! crowd resuming at once costs the database a bounded number of reads at a time.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use outbox_relay::sinks::sse::cursor::{Cursor, CursorKey, Snapshot, MAX_CURSOR_LEN};

use crate::common::sse::*;
use crate::common::*;

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The snapshot text of `xmin:xmax:xip` with `n` transactions in progress, as the issue's
/// forged 112 KB cursor had (12,000).
fn crowded_snapshot(n: u64) -> String {
    let first = 1_000_000u64;
    let xip: Vec<String> = (first..first + n).map(|x| x.to_string()).collect();
    format!("{first}:{}:{}", first + n + 1, xip.join(","))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_cursors_the_relay_issued_for_the_org_are_accepted_on_any_instance() {
    let db = TestDb::new().await;
    let relay = db.start_relay(&sse_toml("15s")).await.1;
    let client = db.client().await;
    let tok = token("org_a", None);
    let mut sub = connect(&relay.http_url(), Some(&tok), "", None)
        .await
        .unwrap();
    let early = publish_many(&client, "org_a", 3).await;
    sub.take(3).await;
    let issued = sub.last_id.clone().unwrap();
    drop(sub);

    let (text, tag) = issued.split_once('.').expect("text.tag");
    let whole_history = URL_SAFE_NO_PAD.encode(format!("2|{}|1:1:", now()));
    let tag_len = URL_SAFE_NO_PAD.decode(tag).unwrap().len();
    let forged: Vec<(&str, String)> = vec![
        // The previous release's unsigned form, from the start of the table.
        (
            "an unsigned cursor for the whole history",
            URL_SAFE_NO_PAD.encode(format!("1|{}|1:1:", now())),
        ),
        (
            "the issued tag on a cursor for the whole history",
            format!("{whole_history}.{tag}"),
        ),
        (
            "a zero tag",
            format!(
                "{whole_history}.{}",
                URL_SAFE_NO_PAD.encode(vec![0u8; tag_len])
            ),
        ),
        ("the issued text without its tag", text.to_owned()),
        (
            "a cursor signed with another token secret",
            Cursor::at_snapshot(Snapshot::empty(), now())
                .encode(&CursorKey::derive(b"not the relay's secret"), "org_a"),
        ),
        (
            "12,000 transactions in progress (112 KB)",
            URL_SAFE_NO_PAD.encode(format!("2|{}|{}", now(), crowded_snapshot(12_000))),
        ),
    ];
    let mut issued_for_b = connect(&relay.http_url(), Some(&token("org_b", None)), "", None)
        .await
        .unwrap();
    publish_many(&client, "org_b", 1).await;
    issued_for_b.take(1).await;
    let b_cursor = issued_for_b.last_id.clone().unwrap();
    drop(issued_for_b);
    assert!(forged[5].1.len() > MAX_CURSOR_LEN);

    for (what, cursor) in forged
        .iter()
        .map(|(w, c)| (*w, c.as_str()))
        .chain([("org_b's cursor on org_a's token", b_cursor.as_str())])
    {
        let refused = connect(&relay.http_url(), Some(&tok), "", Some(cursor))
            .await
            .err()
            .unwrap_or_else(|| panic!("{what}: accepted"));
        assert_eq!(refused.status, 400, "{what}: {}", refused.body);
        assert_eq!(
            refused.body.trim(),
            "Last-Event-ID: not a cursor this relay issued",
            "{what}"
        );
    }

    // The issued cursor is good on another instance started after this one stopped (the
    // key comes from the token secret, not from the process): exactly what came after it.
    relay.stop().await.unwrap();
    let later = publish_many(&client, "org_a", 2).await;
    let again = db.start_relay(&sse_toml("15s")).await.1;
    let mut back = connect(&again.http_url(), Some(&tok), "", Some(&issued))
        .await
        .unwrap();
    let got: Vec<String> = back.take(2).await.iter().map(Message::event_id).collect();
    assert_eq!(got, later, "after {early:?}");
    back.assert_quiet(Duration::from_millis(300)).await;
    again.stop().await.unwrap();
}

/// Subscribers resuming at once from far back.
const CROWD: usize = 30;
/// Events behind their cursor: several catch-up pages each.
const BEHIND: usize = 1_600;

/// The flood: hundreds of resumes on one valid token starved the pool and pushed
/// webhook latency to seconds. Now catch-up reads take turns: however many subscribers
/// resume, at most `CATCH_UP_READS` of the SSE pool's statements run at once, every
/// subscriber still gets everything exactly once, and webhooks keep delivering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowd_resuming_at_once_reads_a_few_pages_at_a_time_and_delivery_goes_on() {
    let db = TestDb::new().await;
    let rx = receiver::Receiver::start().await;
    let relay = db
        .start_relay(&format!(
            "{}\n{}",
            sse_toml("15s"),
            webhook_toml("main", &rx.url)
        ))
        .await
        .1;
    let client = db.client().await;
    let tok = token("org_a", None);
    let mut first = connect(&relay.http_url(), Some(&tok), "", None)
        .await
        .unwrap();
    publish_many(&client, "org_a", 1).await;
    first.take(1).await;
    let cursor = first.last_id.clone().unwrap();
    drop(first);
    let mut behind = Vec::new();
    for _ in 0..BEHIND / 400 {
        behind.extend(publish_many(&client, "org_a", 400).await);
    }

    // Hold every read of the table up, so that each catch-up read that starts waits where
    // it can be counted: the SSE pool's backends waiting on the lock.
    let mut holder = db.client().await;
    let lock = holder.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE \"OutboxEvent\" IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let watcher = db.client().await;
    let reading = || async {
        watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                  WHERE application_name LIKE 'outbox-relay sse %' AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    let crowd: Vec<_> = (0..CROWD)
        .map(|_| {
            let (base, tok, cursor) = (relay.http_url(), tok.clone(), cursor.clone());
            tokio::spawn(async move {
                let mut sub = connect(&base, Some(&tok), "", Some(&cursor)).await.unwrap();
                sub.take(BEHIND)
                    .await
                    .iter()
                    .map(Message::event_id)
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let turns = outbox_relay::http::sse::CATCH_UP_READS as i64;
    wait_until("catch-up reads waiting", || async {
        reading().await >= turns
    })
    .await;
    // The rest wait their turn in the relay, not in the database (without the turns, every
    // connection of the SSE pool would be reading).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(reading().await, turns, "catch-up reads at once");
    lock.commit().await.unwrap();

    // Then every subscriber gets everything, once, in order; the webhook meanwhile gets
    // what is published while they read.
    let during = publish_many(&client, "org_b", 50).await;
    for got in futures_util::future::join_all(crowd).await {
        assert_eq!(got.unwrap(), behind, "each subscriber: all, once, in order");
    }
    rx.wait_accepted(&during).await;
    relay.stop().await.unwrap();
}
