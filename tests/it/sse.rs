//! Server-Sent Events against real PostgreSQL and real HTTP: tenant scoping, tokens,
//! resume with Last-Event-ID, out-of-order commits, several relays, slow subscribers.

use crate::common::sse::*;
use crate::common::*;
use outbox_relay::sinks::sse::cursor::{Cursor, CursorKey};

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

/// How long a stray message would take to show up once delivery is known to be flowing.
const QUIET: Duration = Duration::from_millis(300);

/// Inserts one event per (org, type) pair, each in its own transaction; returns their ids.
async fn publish(
    client: &tokio_postgres::Client,
    events: &[(Option<&str>, &str)],
    payload: &str,
) -> Vec<String> {
    let mut ids = Vec::new();
    for (org, t) in events {
        let id: String = client
            .query_one(
                "INSERT INTO \"OutboxEvent\" (event_type, org_id, payload)
                 VALUES ($1, $2, $3::text::jsonb) RETURNING id::text",
                &[t, org, &payload],
            )
            .await
            .unwrap()
            .get(0);
        ids.push(id);
    }
    ids
}

fn ids(messages: &[Message]) -> Vec<String> {
    messages.iter().map(Message::event_id).collect()
}

async fn sse_relay(db: &TestDb, extra: &str) -> InProcessRelay {
    db.start_relay(&format!("{extra}\n{}", sse_toml("15s")))
        .await
        .1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_org_sees_all_of_its_events_in_order_and_nothing_else() {
    let db = TestDb::new().await;
    let relay = sse_relay(&db, "").await;
    let base = relay.http_url();
    let mut a1 = connect(&base, Some(&token("org_a", None)), "", None)
        .await
        .unwrap();
    let mut a2 = connect(&base, Some(&token("org_a", None)), "", None)
        .await
        .unwrap();
    let mut b = connect(&base, Some(&token("org_b", None)), "", None)
        .await
        .unwrap();
    let client = db.client().await;

    let mut plan = Vec::new();
    for i in 0..30 {
        plan.push((Some(["org_a", "org_b"][i % 2]), "ITEM.CHANGED"));
        if i % 10 == 0 {
            plan.push((None, "NO.ORG")); // never streamed
            plan.push((Some("org_c"), "OTHER.ORG"));
        }
    }
    let published = publish(&client, &plan, "{\"k\": 1}").await;
    let of = |org: &str| -> Vec<String> {
        plan.iter()
            .zip(&published)
            .filter(|((o, _), _)| *o == Some(org))
            .map(|(_, id)| id.clone())
            .collect()
    };
    let got_a1 = a1.take(15).await;
    assert_eq!(ids(&got_a1), of("org_a"), "org_a in commit order");
    assert_eq!(ids(&a2.take(15).await), of("org_a"));
    assert_eq!(ids(&b.take(15).await), of("org_b"));
    assert!(got_a1.iter().all(|m| m.json()["org_id"] == "org_a"));
    assert_eq!(got_a1[0].event, "ITEM.CHANGED");
    assert!(
        got_a1[0].json().get("attempt").is_none(),
        "SSE envelopes carry no attempt"
    );
    assert_eq!(a1.retry.as_deref(), Some("2000"), "retry: sent on connect");

    // A marker proves delivery is flowing; nothing of another org came before it.
    let marker = publish(&client, &[(Some("org_a"), "MARKER")], "{}").await;
    assert_eq!(ids(&a1.take(1).await), marker);
    a1.assert_quiet(QUIET).await;
    b.assert_quiet(QUIET).await;

    // Routed to SSE only (no webhooks): every row still ends COMPLETED.
    wait_until("all rows COMPLETED", || async {
        count_status(&client, "COMPLETED").await == plan.len() as i64 + 1
    })
    .await;
    relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_checked_and_types_only_narrow() {
    let db = TestDb::new().await;
    let relay = sse_relay(&db, "").await;
    let base = relay.http_url();

    let refused = |r: Result<SseClient, Refused>| match r {
        Err(e) => e.status,
        Ok(_) => 200,
    };
    assert_eq!(refused(connect(&base, None, "", None).await), 401);
    let wrong_key =
        outbox_relay::http::sse::token::mint(b"not the relay's key", "org_a", None, 3600);
    assert_eq!(
        refused(connect(&base, Some(&wrong_key), "", None).await),
        401
    );
    // An expired token (past the relay's 30 s allowance for clock skew).
    let old = {
        use jsonwebtoken::{encode, EncodingKey, Header};
        let exp = chrono::Utc::now().timestamp() - 3600;
        encode(
            &Header::default(),
            &serde_json::json!({"org_id": "org_a", "exp": exp}),
            &EncodingKey::from_secret(SSE_SECRET.as_bytes()),
        )
        .unwrap()
    };
    assert_eq!(refused(connect(&base, Some(&old), "", None).await), 401);
    assert_eq!(
        refused(connect(&base, Some("garbage"), "", None).await),
        401
    );
    // The query-string form works the same way.
    let qs = format!("access_token={}", token("org_a", None));
    let mut via_query = connect(&base, None, &qs, None).await.unwrap();

    // Token allows PROJECT.*; the query asks for INVOICE.* too: it cannot widen.
    let limited = token("org_a", Some(&["PROJECT.*"]));
    let mut wider = connect(&base, Some(&limited), "types=INVOICE.*,PROJECT.*", None)
        .await
        .unwrap();
    let mut narrower = connect(&base, Some(&limited), "types=PROJECT.CREATED", None)
        .await
        .unwrap();
    let client = db.client().await;
    let published = publish(
        &client,
        &[
            (Some("org_a"), "INVOICE.CREATED"),
            (Some("org_a"), "PROJECT.UPDATED"),
            (Some("org_a"), "PROJECT.CREATED"),
        ],
        "{}",
    )
    .await;
    assert_eq!(ids(&wider.take(2).await), published[1..].to_vec());
    assert_eq!(ids(&narrower.take(1).await), vec![published[2].clone()]);
    assert_eq!(ids(&via_query.take(3).await), published);
    wider.assert_quiet(QUIET).await;
    narrower.assert_quiet(QUIET).await;
    relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_with_last_event_id_gets_exactly_what_was_missed() {
    let db = TestDb::new().await;
    let relay = sse_relay(&db, "").await;
    let base = relay.http_url();
    let tok = token("org_a", None);
    let client = db.client().await;

    let mut sub = connect(&base, Some(&tok), "", None).await.unwrap();
    let first = publish_many(&client, "org_a", 3).await;
    assert_eq!(ids(&sub.take(3).await), first);
    let cursor = sub.last_id.clone().expect("messages carry ids");
    drop(sub);

    // 100 events while away, in separate transactions and in one, with another org's between.
    let mut missed = Vec::new();
    for _ in 0..50 {
        missed.extend(publish(&client, &[(Some("org_a"), "AWAY.ONE")], "{}").await);
        publish(&client, &[(Some("org_b"), "NOT.MINE")], "{}").await;
    }
    missed.extend(publish_many(&client, "org_a", 50).await);

    let mut back = connect(&base, Some(&tok), "", Some(&cursor)).await.unwrap();
    assert_eq!(
        ids(&back.take(100).await),
        missed,
        "exactly the missed 100, in order"
    );
    // Then live, without a gap or a repeat at the seam.
    let live = publish_many(&client, "org_a", 2).await;
    assert_eq!(ids(&back.take(2).await), live);
    back.assert_quiet(QUIET).await;

    // The query-string form of the cursor does the same.
    let qs = format!("last_event_id={cursor}");
    let mut again = connect(&base, Some(&tok), &qs, None).await.unwrap();
    let all: Vec<String> = missed.iter().chain(&live).cloned().collect();
    assert_eq!(ids(&again.take(102).await), all);

    let bad = connect(&base, Some(&tok), "", Some("not-a-cursor")).await;
    assert_eq!(bad.err().map(|r| r.status), Some(400));
    relay.stop().await.unwrap();
}

/// `?unnamed=true` (what the JS client's `EventSource` fallback asks for): the same messages
/// without their `event:` line, live and on resume, so `EventSource.onmessage` sees them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unnamed_streams_send_the_same_messages_without_their_event_line() {
    let db = TestDb::new().await;
    let relay = sse_relay(&db, "").await;
    let base = relay.http_url();
    let tok = token("org_a", None);
    let client = db.client().await;
    let qs = "unnamed=true&types=UN.*";

    let mut named = connect(&base, Some(&tok), "types=UN.*", None)
        .await
        .unwrap();
    let mut sub = connect(&base, Some(&tok), qs, None).await.unwrap();
    let mut live = publish(&client, &[(Some("org_a"), "UN.ONE")], "{\"n\":1}").await;
    live.extend(publish(&client, &[(Some("org_a"), "OTHER")], "{}").await);
    live.extend(publish(&client, &[(Some("org_a"), "UN.TWO")], "{\"n\":2}").await);
    let wanted = [live[0].clone(), live[2].clone()];
    let got = sub.take(2).await;
    let with_names = named.take(2).await;
    assert_eq!(ids(&got), wanted);
    for (m, n) in got.iter().zip(&with_names) {
        assert_eq!(m.event, "message", "no event: line");
        assert_eq!(n.event, n.json()["type"].as_str().unwrap());
        // The `id:` lines are each subscriber's own position and may differ: a subscriber
        // that connected while the tail walked a snapshot difference is `Advance::Ahead`.
        assert_eq!(&m.data, &n.data, "otherwise the same message");
        assert!(
            m.id.is_some(),
            "an unnamed message still carries its cursor"
        );
    }
    let cursor = sub.last_id.clone().unwrap();
    drop(sub);

    // Resuming reads from the database: unnamed there too.
    let missed = publish_many(&client, "org_a", 1).await;
    let away = publish(&client, &[(Some("org_a"), "UN.AWAY")], "{}").await;
    let mut back = connect(&base, Some(&tok), qs, Some(&cursor)).await.unwrap();
    let again = back.take(1).await;
    assert_eq!(ids(&again), away, "{missed:?} is not UN.*");
    assert_eq!(again[0].event, "message");
    assert_eq!(again[0].json()["type"], "UN.AWAY");
    back.assert_quiet(QUIET).await;

    let bad = connect(&base, Some(&tok), "unnamed=yes", None).await;
    assert_eq!(bad.err().map(|r| r.status), Some(400));
    relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_committing_after_a_later_one_is_not_lost_on_resume() {
    let db = TestDb::new().await;
    let relay = sse_relay(&db, "").await;
    let base = relay.http_url();
    let tok = token("org_a", None);
    let mut steady = connect(&base, Some(&tok), "", None).await.unwrap();
    let mut resumer = connect(&base, Some(&tok), "", None).await.unwrap();

    // T1 starts first (smaller xid, smaller sequence number) and commits last.
    let mut c1 = db.client().await;
    let c2 = db.client().await;
    let (t1, e1, e2) = t1_open_t2_committed(&mut c1, &c2).await;

    // T2's event is visible and streamed while T1 is still open. (Both subscribers must
    // have it before T1 commits: one whose first read came after that would get both
    // events together, in insert order, T1's first.)
    assert_eq!(ids(&resumer.take(1).await), vec![e2.clone()]);
    assert_eq!(ids(&steady.take(1).await), vec![e2.clone()]);
    let cursor = resumer.last_id.clone().unwrap();
    drop(resumer);
    t1.commit().await.unwrap();

    let mut back = connect(&base, Some(&tok), "", Some(&cursor)).await.unwrap();
    assert_eq!(
        ids(&back.take(1).await),
        vec![e1.clone()],
        "T1's event after T2's cursor"
    );
    assert_eq!(
        ids(&steady.take(1).await),
        vec![e1],
        "in commit order, once each"
    );
    let marker = publish(&c2, &[(Some("org_a"), "MARKER")], "{}").await;
    assert_eq!(ids(&back.take(1).await), marker);
    assert_eq!(ids(&steady.take(1).await), marker);
    relay.stop().await.unwrap();
}

/// A subscriber's catch-up ends at a snapshot of its own, which can fall between the two the
/// tail is walking when the tail is behind (a busy relay). Here T1 takes the smaller sequence
/// number and commits after T2; a resuming subscriber's catch-up sends T2's event while T1 is
/// open, then the tail reads T1's and T2's events in one snapshot difference, T1's first.
/// T2's event must not be sent again, and the id after T1's event must resume without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_whose_catch_up_is_ahead_of_the_tail_gets_each_event_once_and_resumes_exactly()
{
    let db = TestDb::new().await;
    // The tail reads when a NOTIFY wakes it: its safety-net poll is an hour away.
    let relay = sse_relay(&db, "poll_interval = \"1h\"").await;
    let base = relay.http_url();
    let tok = token("org_a", None);
    let mut c1 = db.client().await;
    let c2 = db.client().await;

    // The tail is reading: a subscriber already live (it got `warm`) gets `warmer` from it.
    let mut steady = connect(&base, Some(&tok), "", None).await.unwrap();
    let warm = publish(&c2, &[(Some("org_a"), "WARM.UP")], "{}").await;
    assert_eq!(ids(&steady.take(1).await), warm);
    let warmer = publish(&c2, &[(Some("org_a"), "WARM.UP")], "{}").await;
    assert_eq!(ids(&steady.take(1).await), warmer);
    let after_warmer = steady.last_id.clone().unwrap();
    // Room for a read a NOTIFY may still owe the tail. (A tail that read T2's event below
    // before the subscriber's catch-up would only keep this test from seeing the bug.)
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Neither T1 nor T2 wakes the tail.
    let quiet = |on: bool| {
        format!(
            "ALTER TABLE \"OutboxEvent\" {} TRIGGER outbox_relay_notify",
            if on { "ENABLE" } else { "DISABLE" }
        )
    };
    c2.batch_execute(&quiet(false)).await.unwrap();
    let (t1, e1, e2) = t1_open_t2_committed(&mut c1, &c2).await;
    // A client resuming from before T2 (a new stream would start after it): its catch-up
    // sends T2's event, T1 being still open.
    let mut sub = connect(&base, Some(&tok), "", Some(&after_warmer))
        .await
        .unwrap();
    assert_eq!(
        ids(&sub.take(1).await),
        vec![e2.clone()],
        "from the catch-up"
    );
    t1.commit().await.unwrap();
    c2.batch_execute(&quiet(true)).await.unwrap();

    // The marker wakes the tail, which reads T1's, T2's and the marker's events together.
    let marker = publish(&c2, &[(Some("org_a"), "MARKER")], "{}").await;
    let got = sub.take(2).await;
    assert_eq!(
        ids(&got),
        vec![e1.clone(), marker[0].clone()],
        "T2's event once"
    );
    let mut all = ids(&steady.take(3).await);
    all.sort();
    let mut want = vec![e1, e2, marker[0].clone()];
    want.sort();
    assert_eq!(all, want, "a subscriber that was live gets each once");

    // Resuming after T1's event: the marker, and not T2's event again.
    let after_t1 = got[0].id.clone().unwrap();
    let mut back = connect(&base, Some(&tok), "", Some(&after_t1))
        .await
        .unwrap();
    assert_eq!(ids(&back.take(1).await), marker, "resumed after T1's event");
    let last = publish(&c2, &[(Some("org_a"), "LAST")], "{}").await;
    assert_eq!(ids(&back.take(1).await), last);
    assert_eq!(ids(&sub.take(1).await), last);
    relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_on_either_of_two_relays_get_every_event_and_resume_on_the_other() {
    let db = TestDb::new().await;
    let rx = Receiver::start().await;
    // Both relays claim and deliver; each streams every event, whichever claimed it.
    let toml = format!("{}\n{}", webhook_toml("main", &rx.url), sse_toml("15s"));
    let (cfg, x) = db.start_relay(&toml).await;
    let y = InProcessRelay::start(cfg).await.ready().await;
    let tok = token("org_a", None);
    let mut on_x = connect(&x.http_url(), Some(&tok), "", None).await.unwrap();
    let mut on_y = connect(&y.http_url(), Some(&tok), "", None).await.unwrap();
    let client = db.client().await;

    let mut sent = Vec::new();
    for _ in 0..20 {
        sent.extend(publish_many(&client, "org_a", 10).await);
    }
    assert_eq!(ids(&on_x.take(200).await), sent);
    let half = on_y.take(100).await;
    assert_eq!(ids(&half), sent[..100].to_vec());
    let cursor = on_y.last_id.clone().unwrap();
    drop(on_y);
    // The cursor from relay y resumes on relay x.
    let mut moved = connect(&x.http_url(), Some(&tok), "", Some(&cursor))
        .await
        .unwrap();
    assert_eq!(ids(&moved.take(100).await), sent[100..].to_vec());
    rx.wait_accepted(&sent).await;
    let duplicates: usize = rx.accepted_counts().values().map(|n| n - 1).sum();
    assert_eq!(duplicates, 0);
    x.stop().await.unwrap();
    y.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_reads_is_cut_off_and_others_are_unaffected() {
    let db = TestDb::new().await;
    let relay = sse_relay(&db, "").await;
    let tok = token("org_a", None);
    let mut healthy = connect(&relay.http_url(), Some(&tok), "", None)
        .await
        .unwrap();

    // A raw socket that sends the request and then never reads a byte.
    let mut stuck = std::net::TcpStream::connect(relay.http_addr).unwrap();
    std::io::Write::write_all(
        &mut stuck,
        format!(
            "GET /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {tok}\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    // Once it has subscribed, it is owed every event below.
    wait_until("both subscribed", || {
        let n = relay.sse_subscribers();
        async move { n == 2 }
    })
    .await;

    // The healthy subscriber reads all along, as a live client does.
    let reader = tokio::spawn(async move {
        let got = healthy.take(5000).await;
        (healthy, got)
    });
    // ~40 MB of events: far more than socket buffers and the per-subscriber queue hold.
    let client = db.client().await;
    let blob = "x".repeat(8 * 1024);
    let payload = format!("{{\"blob\": \"{blob}\"}}");
    let mut sent = Vec::new();
    for _ in 0..10 {
        let batch: Vec<(Option<&str>, &str)> = vec![(Some("org_a"), "BIG.EVENT"); 500];
        sent.extend(publish(&client, &batch, &payload).await);
    }
    let (_healthy, got) = reader.await.unwrap();
    assert_eq!(ids(&got), sent, "the reading subscriber gets everything");

    // The relay gives up on it once its buffer has stayed full long enough.
    wait_until("the stuck subscriber dropped", || {
        let n = relay.sse_subscribers();
        async move { n == 1 }
    })
    .await;
    // The stuck one was disconnected: reading now drains what was buffered, then EOF.
    // (A connection still open would keep getting heartbeats: the deadline catches it.)
    let total: usize = tokio::task::spawn_blocking(move || {
        stuck
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        let deadline = std::time::Instant::now() + PATIENCE;
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0;
        loop {
            assert!(
                std::time::Instant::now() < deadline,
                "the stuck subscriber was not disconnected ({total} bytes read)"
            );
            match stuck.read(&mut buf) {
                Ok(0) => return total,
                Ok(n) => total += n,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return total,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => continue,
                Err(e) => panic!("reading the stuck subscriber: {e}"),
            }
        }
    })
    .await
    .unwrap();
    let all_bytes: usize = got.iter().map(|m| m.data.len()).sum();
    assert!(
        total < all_bytes / 2,
        "it was cut off long before everything was queued for it ({total} of {all_bytes} bytes)"
    );
    relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_idle_streams_alive() {
    let db = TestDb::new().await;
    let relay = db.start_relay(&sse_toml("100ms")).await.1;
    let mut sub = connect(&relay.http_url(), Some(&token("org_a", None)), "", None)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while sub.comments < 3 {
        assert!(tokio::time::Instant::now() < deadline, "no heartbeats");
        assert!(sub.read_for(Duration::from_millis(100)).await.is_empty());
    }
    relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_older_than_retention_gets_an_error_then_the_oldest_kept() {
    let db = TestDb::new().await;
    // Rows stay PENDING (the endpoint fails, the backoff is long), so retention keeps them.
    let rx = Receiver::with_script(Arc::new(|_, _| Reply::status(500))).await;
    let relay = sse_relay(
        &db,
        &format!(
            "retention = \"1s\"\nbackoff_initial = \"1h\"\n{}",
            webhook_toml("main", &rx.url)
        ),
    )
    .await;
    let base = relay.http_url();
    let tok = token("org_a", None);
    let client = db.client().await;
    let mut sub = connect(&base, Some(&tok), "", None).await.unwrap();
    let first = publish_many(&client, "org_a", 2).await;
    sub.take(2).await;
    let issued = sub.last_id.clone().unwrap();
    drop(sub);
    // The expiry reads the time stamped in the cursor (when its snapshot was taken), not a
    // row: rather than wait for the 1 s retention to pass, the test ages the cursor by a
    // day, re-signed with the deployment's key as the relay would have issued it then.
    let key = CursorKey::derive(SSE_SECRET.as_bytes());
    let mut aged = Cursor::decode(&issued, &key, "org_a").unwrap();
    aged.at -= 86_400;
    let cursor = aged.encode(&key, "org_a");
    let later = publish_many(&client, "org_a", 1).await;

    let mut back = connect(&base, Some(&tok), "", Some(&cursor)).await.unwrap();
    let error = back.next().await.unwrap();
    assert_eq!(error.event, "cursor_expired");
    assert_eq!(error.id, None);
    assert!(error.data.contains("retention"));
    // Nothing was purged (no row is COMPLETED), so the oldest kept is the first event.
    let all: Vec<String> = first.into_iter().chain(later).collect();
    assert_eq!(ids(&back.take(3).await), all);
    relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_stream_gets_every_event_committed_after_its_response_arrived() {
    let db = TestDb::new().await;
    let relay = sse_relay(&db, "").await;
    let tok = token("org_a", None);
    let client = db.client().await;
    // Each round publishes the moment the response headers are in; a relay that fixed its
    // starting point later (after the first byte) lost a few percent of these.
    for round in 0..100 {
        let mut sub = connect(&relay.http_url(), Some(&tok), "", None)
            .await
            .unwrap();
        let sent = publish(&client, &[(Some("org_a"), "RIGHT.AWAY")], "{}").await;
        assert_eq!(ids(&sub.take(1).await), sent, "round {round}");
    }
    relay.stop().await.unwrap();
}

/// The HTTP side serves while the relay is still starting (here: waiting for a NATS server
/// that comes up late), before the tail reader has taken its first snapshot. A stream
/// opened then is held (heartbeats only) until the tail runs, and then gets the events
/// committed after it opened: those committed before the tail started as well as after.
/// Seen in CI: a client that reconnected to a restarted relay in that window lost events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_opened_while_the_relay_starts_loses_nothing_committed_before_its_tail_started() {
    let db = TestDb::new().await;
    let mut nats = crate::common::nats::NatsServer::start().await;
    let nc = crate::common::nats::connect(nats.url()).await;
    crate::common::nats::create_stream(&nc, "EARLY", &["early.>"], 1).await;
    drop(nc);
    nats.stop().await;
    let toml = format!(
        "start_grace = \"2m\"\n[[nats]]\nname = \"late\"\nurl = \"{}\"\nstream = \"EARLY\"\n\
         subject = \"early.{{event_type}}\"\n{}",
        nats.url(),
        sse_toml("1s")
    );
    let cfg = db.config(&toml);
    db.migrate(&cfg).await;
    let relay = InProcessRelay::start(cfg).await;
    let tok = token("org_a", None);
    let client = db.client().await;

    let mut sub = connect(&relay.http_url(), Some(&tok), "", None)
        .await
        .expect("a stream opens while the relay starts");
    let before = publish(&client, &[(Some("org_a"), "BEFORE.TAIL")], "{}").await;
    // The relay is still waiting for its broker: the stream stays open, quiet but for
    // heartbeats.
    assert!(sub.read_for(Duration::from_millis(2500)).await.is_empty());
    assert!(sub.comments >= 1, "heartbeats while held");

    nats.start_again().await;
    let relay = relay.ready().await;
    let after = publish(&client, &[(Some("org_a"), "AFTER.TAIL")], "{}").await;
    assert_eq!(ids(&sub.take(2).await), [before, after].concat());
    sub.assert_quiet(QUIET).await;
    relay.stop().await.unwrap();
}

/// T1 inserts an event of org_a and stays open; T2, started after it (a larger xid and
/// sequence number), inserts one and commits. Returns T1 and both event ids.
async fn t1_open_t2_committed<'a>(
    c1: &'a mut tokio_postgres::Client,
    c2: &tokio_postgres::Client,
) -> (tokio_postgres::Transaction<'a>, String, String) {
    let t1 = c1.transaction().await.unwrap();
    let e1: String = t1
        .query_one(
            "INSERT INTO \"OutboxEvent\" (event_type, org_id, payload)
             VALUES ('T1.EARLY', 'org_a', '{}') RETURNING id::text",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let e2 = publish(c2, &[(Some("org_a"), "T2.LATE")], "{}")
        .await
        .remove(0);
    (t1, e1, e2)
}

/// Issue 15.10: a type with a line break cannot be an SSE `event:` name. Webhooks get such
/// events; streams leave them out, and say so (a warning and a counter), instead of
/// dropping them quietly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_no_stream_can_carry_are_counted_and_webhooks_still_get_them() {
    let db = TestDb::new().await;
    let rx = Receiver::start().await;
    let relay = sse_relay(&db, &webhook_toml("main", &rx.url)).await;
    let base = relay.http_url();
    let mut sub = connect(&base, Some(&token("org_a", None)), "", None)
        .await
        .unwrap();
    let client = db.client().await;
    let odd = publish(
        &client,
        &[
            (Some("org_a"), "LINE\nBREAK"),
            (Some("org_a"), "CARRIAGE\rRETURN"),
        ],
        "{}",
    )
    .await;
    let fine = publish(&client, &[(Some("org_a"), "FINE.EVENT")], "{}").await;
    assert_eq!(
        ids(&sub.take(1).await),
        fine,
        "the odd ones are not streamed"
    );
    sub.assert_quiet(QUIET).await;
    let all: Vec<String> = odd.iter().chain(&fine).cloned().collect();
    rx.wait_accepted(&all).await;
    let (_, metrics) = http_get(&format!("{base}/metrics")).await;
    let skipped = metrics.lines().find_map(|l| {
        l.strip_prefix("outbox_sse_skipped_total{reason=\"event_type_line_break\"} ")
    });
    assert_eq!(skipped, Some("2"), "{metrics}");
    relay.stop().await.unwrap();
}
