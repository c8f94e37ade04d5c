//! Outbox rows as apps insert them: `burst` (1,000-row transactions, before the relay
//! starts) and the single-row statement the timer-paced `rate` load and the app-side
//! scenario run ([`crate::common::load`]). Every event carries its number in the payload
//! (`bench_n`), padded to a typical event's size.

use std::sync::Arc;
use std::time::Instant;

use outbox_relay::secret::Secret;

/// Rows per transaction of a burst.
pub const BURST_TX_ROWS: usize = 1000;
/// Connections a burst inserts from.
const BURST_CONNECTIONS: usize = 2;
/// The org every bench event belongs to (the relay does not care; SSE is off).
pub const ORG: &str = "org_00";

/// One event per statement (autocommit: one transaction): `$1` org, `$2` number.
pub fn insert_one_sql(pad: usize) -> String {
    format!(
        r#"INSERT INTO "OutboxEvent" (org_id, event_type, entity_type, entity_id, payload)
VALUES ($1, 'BENCH.EVENT', 'Bench', $2::int8::text,
        jsonb_build_object('pad', repeat('x', {pad}), 'bench_n', $2::int8))"#
    )
}

/// Events `$1..=$2` in one statement (one transaction).
fn insert_range_sql(pad: usize) -> String {
    format!(
        r#"INSERT INTO "OutboxEvent" (org_id, event_type, entity_type, entity_id, payload)
SELECT '{ORG}', 'BENCH.EVENT', 'Bench', n::text,
       jsonb_build_object('pad', repeat('x', {pad}), 'bench_n', n)
  FROM generate_series($1::int8, $2::int8) AS n"#
    )
}

/// Inserts events `0..n` in [`BURST_TX_ROWS`]-row transactions; returns the seconds taken.
pub async fn burst(db_url: &str, n: usize, pad: usize) -> anyhow::Result<f64> {
    let t = Instant::now();
    let sql: Arc<str> = insert_range_sql(pad).into();
    let chunks: Arc<Vec<(i64, i64)>> = Arc::new(
        (0..n)
            .step_by(BURST_TX_ROWS)
            .map(|a| (a as i64, ((a + BURST_TX_ROWS).min(n) - 1) as i64))
            .collect(),
    );
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..BURST_CONNECTIONS {
        let client = outbox_relay::db::connect(&Secret::new(db_url.to_owned())).await?;
        let (sql, chunks, next) = (sql.clone(), chunks.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let stmt = client.prepare(&sql).await?;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(&(a, b)) = chunks.get(i) else {
                    return anyhow::Ok(());
                };
                client.execute(&stmt, &[&a, &b]).await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(t.elapsed().as_secs_f64())
}
