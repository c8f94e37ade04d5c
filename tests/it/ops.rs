//! Operations in the daemon: retention, and what pooled connections keep.

use crate::common::proxy::{tcp_target, Proxy};
use crate::common::*;

/// The event types of the rows left, in order (retention tests insert one row per type).
pub(crate) async fn left(client: &tokio_postgres::Client) -> Vec<String> {
    texts(
        client,
        "SELECT event_type FROM \"OutboxEvent\" ORDER BY event_type",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_only_old_completed_rows_one_relay_at_a_time() {
    let db = TestDb::new().await;
    // retention 4 s: relays look every second (at most once per claim round, so a 1 s poll).
    let toml = "retention = \"4s\"\npoll_interval = \"1s\"";
    let cfg = db.config(toml);
    db.migrate(&cfg).await;
    let client = db.client().await;
    client
        .batch_execute(
            "INSERT INTO \"OutboxEvent\" (event_type, payload, status, processed_at, next_attempt_at)
             VALUES ('COMPLETED.OLD', '{}', 'COMPLETED', now() - interval '1 day', now()),
                    ('COMPLETED.RECENT', '{}', 'COMPLETED', now() + interval '1 day', now()),
                    ('FAILED.OLD', '{}', 'FAILED', now() - interval '1 day', now()),
                    ('PENDING.LATER', '{}', 'PENDING', NULL, now() + interval '1 day')",
        )
        .await
        .unwrap();

    // Another relay is purging: this test holds the lock every relay takes first.
    let holder = db.client().await;
    let table = cfg.qualified_table();
    let locked: bool = holder
        .query_one(
            &format!(
                "SELECT pg_try_advisory_lock({})",
                outbox_relay::db::maintenance::RETENTION_LOCK_KEY
            ),
            &[&table],
        )
        .await
        .unwrap()
        .get(0);
    assert!(locked);
    // Each relay reaches the database through a proxy of its own that counts its tries for
    // the lock (pg_try_advisory_lock, or its transaction-scoped form behind a pooler).
    let upstream = tcp_target(&db.url);
    let mut relays = Vec::new();
    for _ in 0..2 {
        let proxy = Proxy::watching(&upstream, "pg_try_advisory").await;
        let cfg = db.config_at(&proxy.plain_url(&db.url), toml);
        let relay = InProcessRelay::start(cfg).await.ready().await;
        relays.push((proxy, relay));
    }
    // Waits on the tries, not the clock: a relay tries again only after its previous round
    // ended, so a second try means one whole round ran under the lock; neither purged.
    wait_until("each relay tried the retention lock twice", || {
        let tries: Vec<usize> = relays.iter().map(|(p, _)| p.seen()).collect();
        async move { tries.iter().all(|&n| n >= 2) }
    })
    .await;
    assert!(left(&client).await.contains(&"COMPLETED.OLD".to_owned()));

    holder
        .batch_execute("SELECT pg_advisory_unlock_all()")
        .await
        .unwrap();
    wait_until("the old COMPLETED row purged", || async {
        !left(&client).await.contains(&"COMPLETED.OLD".to_owned())
    })
    .await;
    assert_eq!(
        left(&client).await,
        ["COMPLETED.RECENT", "FAILED.OLD", "PENDING.LATER"],
        "only COMPLETED rows past the cutoff go"
    );
    for (_, relay) in relays {
        relay.stop().await.unwrap();
    }
}

/// Issue 15.11: tokio-postgres keeps a connection's read buffer as large as the largest
/// result it read, for the connection's life. A connection that read a large result (a
/// claim of big payloads, an SSE page) is closed instead of pooled; small ones are reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_that_read_a_large_result_is_not_reused() {
    let db = TestDb::new().await;
    let pool =
        outbox_relay::db::pool_of(&outbox_relay::secret::Secret::new(db.url.clone()), 1, None)
            .unwrap();
    let backend = || async {
        let rows = outbox_relay::db::query(&pool, "SELECT pg_backend_pid()", &[])
            .await
            .unwrap();
        rows[0].get::<_, i32>(0)
    };
    let read = |bytes: i32| {
        let pool = pool.clone();
        async move {
            outbox_relay::db::query(&pool, "SELECT repeat('x', $1)", &[&bytes])
                .await
                .unwrap();
        }
    };
    let first = backend().await;
    read(1_000).await;
    assert_eq!(
        backend().await,
        first,
        "a small result keeps its connection"
    );
    let large = outbox_relay::db::LARGE_RESULT as i32;
    read(large - 1_000).await;
    assert_eq!(backend().await, first, "just under the limit: kept");
    read(large + 1).await;
    let next = backend().await;
    assert_ne!(next, first, "a large result closes its connection");
    read(1_000).await;
    assert_eq!(backend().await, next);
}
