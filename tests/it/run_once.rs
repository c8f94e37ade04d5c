//! `Relay::run_once` driven directly: a `Relay` built in-process on the test's database, a
//! real receiver, and one claim at a time. Each claim's deliveries run to their end and the
//! relay's recorder writes their outcomes before the test looks at the rows, so what a claim
//! took and what it did to each row is read back without waiting on the claim loop.

use std::collections::HashSet;
use std::sync::Arc;

use deadpool_postgres::Pool;
use outbox_relay::db::queries::{Queries, LAPSED_MESSAGE};
use outbox_relay::health::Shared;
use outbox_relay::relay::claim::ClaimReport;
use outbox_relay::relay::cursor::ClaimCursor;
use outbox_relay::relay::recorder::{self, Signals};
use outbox_relay::relay::Relay;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::common::receiver::{Receiver, Reply};
use crate::common::{insert_events, row_state, webhook_toml, TestDb};

/// A relay on a test database, claiming only when told.
struct Driver {
    relay: Relay,
    cursor: ClaimCursor,
    pool: Pool,
    queries: Arc<Queries>,
}

impl Driver {
    /// A relay for a config with `toml` and one webhook to `rx`, on a database of its own
    /// (migrated); with a client of that database, and the database (dropped with it).
    async fn start(rx: &Receiver, toml: &str) -> (Self, tokio_postgres::Client, TestDb) {
        let db = TestDb::new().await;
        let cfg = db.config(&format!("{toml}\n{}", webhook_toml("hook", &rx.url)));
        db.migrate(&cfg).await;
        let queries = db.queries(&cfg).await;
        let pool = outbox_relay::db::pool(cfg.database_url.get()).unwrap();
        let shared = Shared::new(&cfg, None).unwrap();
        let driver = Self {
            relay: Relay::new(cfg, pool.clone(), queries.clone(), &shared),
            cursor: ClaimCursor::new(),
            pool,
            queries,
        };
        (driver, db.client().await, db)
    }

    /// One claim with room for `limit` rows. Returns once every delivery it started has
    /// ended and the recorder has written their outcomes.
    async fn run_once(&mut self, limit: usize) -> ClaimReport {
        let tracker = TaskTracker::new();
        let (tx, rx) = mpsc::channel(limit.max(1));
        let signals = Signals {
            wake: Arc::default(),
            capacity_freed: Arc::default(),
            wake_on_completion: false,
            timeline: Arc::default(),
        };
        let recorder = tokio::spawn(recorder::run(
            self.pool.clone(),
            self.queries.clone(),
            Arc::default(),
            signals,
            rx,
            CancellationToken::new(),
        ));
        let hard = CancellationToken::new();
        let claimed = self
            .relay
            .run_once(limit, &mut self.cursor, &tracker, &tx, &hard)
            .await
            .expect("the claim statement runs");
        tracker.close();
        tracker.wait().await;
        drop(tx); // the recorder ends once it has written what the deliveries sent
        recorder.await.unwrap();
        claimed
    }
}

/// One event per statement (each its own transaction, so claim order is insert order).
async fn insert_one_by_one(client: &tokio_postgres::Client, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.extend(insert_events(client, 1, "ORDER.CREATED").await);
    }
    ids
}

/// Makes a row due now (as if its backoff had run out).
async fn make_due(client: &tokio_postgres::Client, id: &str) {
    client
        .execute(
            "UPDATE \"OutboxEvent\" SET next_attempt_at = now() WHERE id::text = $1",
            &[&id],
        )
        .await
        .unwrap();
}

/// Whether a row waits for a later attempt (next_attempt_at in the database's future).
async fn scheduled_later(client: &tokio_postgres::Client, id: &str) -> bool {
    client
        .query_one(
            "SELECT next_attempt_at > now() FROM \"OutboxEvent\" WHERE id::text = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0)
}

fn ids_of(rx: &Receiver) -> Vec<String> {
    rx.deliveries().into_iter().map(|d| d.id).collect()
}

/// (status, retry_count, error_message, processed_at set) of a row never attempted.
fn untouched() -> (String, i32, Option<String>, bool) {
    ("PENDING".into(), 0, None, false)
}

fn completed(retry_count: i32) -> (String, i32, Option<String>, bool) {
    ("COMPLETED".into(), retry_count, None, true)
}

#[tokio::test]
async fn a_claim_takes_the_oldest_due_events_up_to_its_limit_and_records_them_completed() {
    let rx = Receiver::start().await;
    let (mut relay, client, _db) = Driver::start(&rx, "").await;
    let ids = insert_one_by_one(&client, 3).await;

    let claimed = relay.run_once(2).await;
    assert_eq!(claimed.rows, 2);
    let got: HashSet<String> = ids_of(&rx).into_iter().collect();
    assert_eq!(got, ids[..2].iter().cloned().collect(), "the two oldest");
    for id in &ids[..2] {
        assert_eq!(row_state(&client, id).await, completed(0), "{id}");
    }
    assert_eq!(row_state(&client, &ids[2]).await, untouched());

    let claimed = relay.run_once(10).await;
    assert_eq!(claimed.rows, 1);
    assert_eq!(row_state(&client, &ids[2]).await, completed(0));

    // Nothing left: nothing claimed, nothing sent again.
    let claimed = relay.run_once(10).await;
    assert_eq!((claimed.rows, claimed.left_fresh), (0, false));
    let counts = rx.accepted_counts();
    assert_eq!(counts.len(), 3);
    assert!(counts.values().all(|&n| n == 1), "{counts:?}");
    assert!(rx.deliveries().iter().all(|d| d.verified && d.attempt == 1));
}

#[tokio::test]
async fn a_failed_attempt_is_put_back_with_its_count_and_error_and_retried_once_due() {
    // The first request for an event fails, the second is accepted.
    let rx = Receiver::with_script(Arc::new(|_, nth| match nth {
        1 => Reply::status(500),
        _ => Reply::ok(),
    }))
    .await;
    let (mut relay, client, _db) =
        Driver::start(&rx, "backoff_initial = \"1h\"\nbackoff_max = \"2h\"").await;
    let id = insert_events(&client, 1, "ORDER.CREATED").await.remove(0);

    assert_eq!(relay.run_once(10).await.rows, 1);
    let (status, retries, error, processed) = row_state(&client, &id).await;
    assert_eq!((status.as_str(), retries, processed), ("PENDING", 1, false));
    let error = error.expect("the failure is on the row");
    assert!(error.contains("hook") && error.contains("500"), "{error}");
    assert!(
        scheduled_later(&client, &id).await,
        "the retry waits out its backoff"
    );

    // Not due yet: the next claim leaves it.
    assert_eq!(relay.run_once(10).await.rows, 0);
    assert_eq!(rx.deliveries().len(), 1);

    make_due(&client, &id).await;
    assert_eq!(relay.run_once(10).await.rows, 1);
    assert_eq!(
        row_state(&client, &id).await,
        completed(1),
        "delivered on the second attempt; the error is cleared, the count kept"
    );
    let attempts: Vec<(String, u64, u16)> = rx
        .deliveries()
        .into_iter()
        .map(|d| (d.id, d.attempt, d.answered))
        .collect();
    assert_eq!(attempts, [(id.clone(), 1, 500), (id, 2, 200)]);
}

#[tokio::test]
async fn an_event_whose_last_allowed_attempt_fails_is_failed_and_never_claimed_again() {
    let rx = Receiver::with_script(Arc::new(|_, _| Reply::status(503))).await;
    let (mut relay, client, _db) =
        Driver::start(&rx, "max_attempts = 2\nbackoff_initial = \"1h\"").await;
    let id = insert_events(&client, 1, "ORDER.CREATED").await.remove(0);

    assert_eq!(relay.run_once(10).await.rows, 1);
    assert_eq!(row_state(&client, &id).await.0, "PENDING");
    make_due(&client, &id).await;
    assert_eq!(relay.run_once(10).await.rows, 1);
    let (status, retries, error, processed) = row_state(&client, &id).await;
    assert_eq!((status.as_str(), retries, processed), ("FAILED", 2, false));
    assert!(error.is_some_and(|e| e.contains("503")));

    // A dead letter is out of every claim's reach, due or not.
    make_due(&client, &id).await;
    assert_eq!(relay.run_once(10).await.rows, 0);
    assert_eq!(rx.deliveries().len(), 2);
    assert_eq!(row_state(&client, &id).await.0, "FAILED");
}

#[tokio::test]
async fn nothing_is_claimed_when_nothing_is_due_and_a_row_left_for_later_is_not_passed_over() {
    let rx = Receiver::start().await;
    let (mut relay, client, _db) = Driver::start(&rx, "").await;

    let claimed = relay.run_once(10).await;
    assert_eq!(
        (claimed.rows, claimed.left_fresh),
        (0, false),
        "an empty table"
    );

    // Done, dead, held for a paused endpoint, in flight on a live lease, and one not due
    // until tomorrow.
    let rows = client
        .query(
            "INSERT INTO \"OutboxEvent\"
                 (event_type, org_id, payload, status, processed_at, next_attempt_at,
                  claim_token, lease_expires_at)
             VALUES ('DONE', 'org_1', '{}', 'COMPLETED', now(), now(), NULL, NULL),
                    ('DEAD', 'org_1', '{}', 'FAILED', NULL, now(), NULL, NULL),
                    ('HELD', 'org_1', '{}', 'PENDING', NULL, 'infinity', gen_random_uuid(), NULL),
                    ('BUSY', 'org_1', '{}', 'PROCESSING', NULL, now(), gen_random_uuid(),
                     now() + interval '1 hour'),
                    ('LATER', 'org_1', '{}', 'PENDING', NULL, now() + interval '1 day', NULL, NULL)
             RETURNING id::text, status::text",
            &[],
        )
        .await
        .unwrap();
    let before: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let claimed = relay.run_once(10).await;
    assert_eq!(claimed.rows, 0);
    assert!(
        claimed.left_fresh,
        "it saw the row due tomorrow and left it"
    );
    assert!(rx.deliveries().is_empty());
    for (id, status) in &before {
        assert_eq!(&row_state(&client, id).await.0, status, "{id}");
    }

    // Once due, the next claim takes it: the cursor kept it in view.
    let later = &before[4].0;
    make_due(&client, later).await;
    assert_eq!(relay.run_once(10).await.rows, 1);
    assert_eq!(ids_of(&rx), std::slice::from_ref(later));
    assert_eq!(row_state(&client, later).await, completed(0));
}

#[tokio::test]
async fn a_lapsed_lease_counts_as_a_failed_attempt_and_the_last_one_fails_the_event() {
    let rx = Receiver::start().await;
    let (mut relay, client, _db) = Driver::start(&rx, "max_attempts = 2").await;
    // Two events whose relay died mid-delivery: one on its first attempt, one on its last.
    let ids = insert_one_by_one(&client, 2).await;
    client
        .execute(
            "UPDATE \"OutboxEvent\"
                SET status = 'PROCESSING', claim_token = gen_random_uuid(),
                    lease_expires_at = now() - interval '1 second',
                    retry_count = CASE WHEN id::text = $1 THEN 0 ELSE 1 END",
            &[&ids[0]],
        )
        .await
        .unwrap();

    let claimed = relay.run_once(10).await;
    assert_eq!(claimed.rows, 2, "both lapsed leases are taken");
    let sent: Vec<(String, u64)> = rx
        .deliveries()
        .into_iter()
        .map(|d| (d.id, d.attempt))
        .collect();
    assert_eq!(
        sent,
        [(ids[0].clone(), 2)],
        "only the one with attempts left"
    );
    assert_eq!(row_state(&client, &ids[0]).await, completed(1));
    assert_eq!(
        row_state(&client, &ids[1]).await,
        ("FAILED".into(), 2, Some(LAPSED_MESSAGE.into()), false)
    );
}

/// The claim commits without waiting for its WAL flush (see the claim statement's doc), and
/// only the claim: the setting ends with its transaction, so the session a pooler hands on,
/// and the outcome written on it next, commit as the server is configured.
#[tokio::test]
async fn a_claim_commits_asynchronously_and_leaves_its_session_as_it_was() {
    use outbox_relay::db::claims::{self, Claim};
    let db = TestDb::new().await;
    let cfg = db.config("");
    db.migrate(&cfg).await;
    let queries = db.queries(&cfg).await;
    insert_one_by_one(&db.client().await, 2).await;
    // One connection, so the claim and the checks share a session.
    let pool = outbox_relay::db::pool_of(cfg.database_url.get(), 1, None).unwrap();
    pool.get()
        .await
        .unwrap()
        .batch_execute("SET synchronous_commit = on")
        .await
        .unwrap();
    // Each claim looks from the start of the stream: the first row, then the second.
    let claim = || Claim {
        limit: 1,
        lease: std::time::Duration::from_secs(30),
        max_attempts: 12,
        token: uuid::Uuid::new_v4(),
        suspects_wanted: true,
        from: ClaimCursor::new().look_from(),
    };

    // As the relay runs it: one statement, its own transaction.
    let got = claims::claim(&pool, &queries, &claim()).await.unwrap();
    assert_eq!(got.rows.len(), 1);
    let conn = pool.get().await.unwrap();
    assert_eq!(
        synchronous_commit(&conn).await,
        "on",
        "nothing left on the session"
    );

    // Inside a transaction the setting is visible: it is the claim's, until the commit.
    conn.batch_execute("BEGIN").await.unwrap();
    drop(conn);
    let got = claims::claim(&pool, &queries, &claim()).await.unwrap();
    assert_eq!(got.rows.len(), 1, "the second row");
    let conn = pool.get().await.unwrap();
    assert_eq!(
        synchronous_commit(&conn).await,
        "off",
        "the claim's transaction commits async"
    );
    conn.batch_execute("COMMIT").await.unwrap();
    assert_eq!(synchronous_commit(&conn).await, "on");
}

async fn synchronous_commit(client: &tokio_postgres::Client) -> String {
    let row = client
        .query_one("SHOW synchronous_commit", &[])
        .await
        .unwrap();
    row.get(0)
}
