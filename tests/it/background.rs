//! The background services called directly (`run_once`), on a real database: what one run
//! does and what it reports, without a relay around it or a wait for its period.

use crate::common::*;

use std::sync::Arc;
use std::time::Duration;

use outbox_relay::background::housekeeping::{self, Housekeeping};
use outbox_relay::background::retention::{self, Retention};
use outbox_relay::background::Service;
use outbox_relay::db::queries::Queries;
use tokio_util::sync::CancellationToken;

/// A pool and the statements for the test database's table, as a relay would have them.
async fn pool_and_queries(
    db: &TestDb,
    cfg: &outbox_relay::config::Config,
) -> (deadpool_postgres::Pool, Arc<Queries>) {
    let pool = outbox_relay::db::pool_of(cfg.database_url.get(), 2, None).unwrap();
    (pool, db.queries(cfg).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_skips_while_another_relay_holds_the_lock_then_deletes_only_expired_rows() {
    let db = TestDb::new().await;
    let cfg = db.config("retention = \"1h\"");
    db.migrate(&cfg).await;
    let client = db.client().await;
    client
        .batch_execute(
            "INSERT INTO \"OutboxEvent\" (event_type, payload, status, processed_at, next_attempt_at)
             VALUES ('COMPLETED.OLD', '{}', 'COMPLETED', now() - interval '1 day', now()),
                    ('COMPLETED.RECENT', '{}', 'COMPLETED', now() - interval '1 minute', now()),
                    ('FAILED.OLD', '{}', 'FAILED', now() - interval '1 day', now()),
                    ('PENDING.LATER', '{}', 'PENDING', NULL, now() + interval '1 day')",
        )
        .await
        .unwrap();
    let (pool, queries) = pool_and_queries(&db, &cfg).await;
    let mut service = Retention {
        pool,
        queries,
        keep: Duration::from_secs(3600),
    };
    let stop = CancellationToken::new();

    // Another relay's turn: this session holds the lock every relay takes first.
    let holder = db.client().await;
    let locked: bool = holder
        .query_one(
            &format!(
                "SELECT pg_try_advisory_lock({})",
                outbox_relay::db::maintenance::RETENTION_LOCK_KEY
            ),
            &[&cfg.qualified_table()],
        )
        .await
        .unwrap()
        .get(0);
    assert!(locked);
    assert_eq!(
        service.run_once(&stop).await.unwrap(),
        retention::Report::Skipped
    );
    let types = || crate::ops::left(&client);
    assert_eq!(
        types().await.len(),
        4,
        "nothing deleted under another relay's lock"
    );

    holder
        .batch_execute("SELECT pg_advisory_unlock_all()")
        .await
        .unwrap();
    assert_eq!(
        service.run_once(&stop).await.unwrap(),
        retention::Report::Deleted(1)
    );
    assert_eq!(
        types().await,
        ["COMPLETED.RECENT", "FAILED.OLD", "PENDING.LATER"],
        "only COMPLETED rows past the cutoff go"
    );
    assert_eq!(
        service.run_once(&stop).await.unwrap(),
        retention::Report::Deleted(0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn housekeeping_reports_the_transaction_that_holds_back_vacuum() {
    let db = TestDb::new().await;
    let cfg = db.config("");
    db.migrate(&cfg).await;
    let (pool, queries) = pool_and_queries(&db, &cfg).await;
    let mut service = Housekeeping {
        pool,
        queries,
        every: Duration::from_secs(1),
        warn_after: Duration::from_secs(60),
    };
    let stop = CancellationToken::new();
    let first: housekeeping::Report = service.run_once(&stop).await.unwrap();
    assert_eq!(first.unknown.unwrap(), Vec::<String>::new());
    assert!(
        first.oldest.unwrap().is_none(),
        "no transaction is open yet"
    );

    // A session that took a snapshot and sits idle in its transaction.
    let open = db.client().await;
    open.batch_execute("SET application_name = 'idle-report'; BEGIN; SELECT txid_current()")
        .await
        .unwrap();
    let pid: i32 = open
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let report = service.run_once(&stop).await.unwrap();
    let oldest = report.oldest.unwrap().expect("the open transaction");
    assert_eq!(oldest.pid, pid);
    assert_eq!(oldest.application_name, "idle-report");
    assert!(oldest.age_seconds >= 0.0);
    open.batch_execute("COMMIT").await.unwrap();
    assert!(service
        .run_once(&stop)
        .await
        .unwrap()
        .oldest
        .unwrap()
        .is_none());
}
