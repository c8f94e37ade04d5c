//! A steady publisher, as an app would be: small transactions at a fixed rate from its own
//! connection, reconnecting when the database goes away. Ids are made here, so an insert
//! whose commit went unanswered (the connection died mid-commit) can be settled afterwards by
//! looking for its rows: the database, not the client's view, says what was published.

use std::collections::HashSet;
use std::time::Duration;

use tokio_postgres::NoTls;

/// The event type every load event has.
pub const LOAD_TYPE: &str = "LOAD.EVENT";

/// What a run published.
#[derive(Debug, Default)]
pub struct Published {
    /// Ids whose transaction committed (acknowledged, or found in the table afterwards).
    pub committed: HashSet<String>,
    /// Ids in commit order, per entity key: the order entity-ordered delivery must keep.
    pub by_key: std::collections::HashMap<String, Vec<String>>,
    /// Each id's sequence number (publish order).
    pub seq: std::collections::HashMap<String, i64>,
    /// Transactions that failed (the database was away); their events were never published.
    pub failed_batches: usize,
}

pub struct Load {
    task: tokio::task::JoinHandle<(Published, Vec<Batch>)>,
    url: String,
}

/// One transaction's events: (id, entity key, sequence number).
type Batch = Vec<(String, String, i64)>;

/// Events per transaction: a tick every 20 ms carries rate/50 events.
const TICK: Duration = Duration::from_millis(20);

impl Load {
    /// Publishes `rate` events/s for `duration`, over `keys` entity keys (Item/k0 ...) in
    /// turn. Table `"OutboxEvent"` in `url`'s database.
    pub fn start(url: &str, rate: u32, duration: Duration, keys: usize) -> Self {
        let task = tokio::spawn(publish(url.to_owned(), rate, duration, keys));
        Self {
            task,
            url: url.to_owned(),
        }
    }

    /// Waits for the run to end and settles the unanswered commits against the table.
    pub async fn finish(self) -> Published {
        let (mut published, unsure) = self.task.await.expect("load task");
        let client = connect(&self.url)
            .await
            .expect("load: connecting to settle");
        for batch in unsure {
            let ids: Vec<&str> = batch.iter().map(|(id, _, _)| id.as_str()).collect();
            let found: i64 = client
                .query_one(
                    "SELECT count(*) FROM \"OutboxEvent\" WHERE id::text = ANY($1)",
                    &[&ids],
                )
                .await
                .unwrap()
                .get(0);
            if found == 0 {
                published.failed_batches += 1;
                continue;
            }
            assert_eq!(
                found as usize,
                batch.len(),
                "a transaction committed partly?"
            );
            record(&mut published, &batch);
        }
        for ids in published.by_key.values_mut() {
            ids.sort_by_key(|id| published.seq[id]);
        }
        published
    }
}

async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let mut cfg: tokio_postgres::Config = url.parse()?;
    // Apart from the relay's connections in pg_stat_activity (fault tests kill those).
    cfg.application_name("fault-test load");
    cfg.connect_timeout(Duration::from_secs(2));
    let (client, conn) = cfg.connect(NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

fn record(p: &mut Published, batch: &[(String, String, i64)]) {
    for (id, key, n) in batch {
        p.committed.insert(id.clone());
        p.seq.insert(id.clone(), *n);
        p.by_key.entry(key.clone()).or_default().push(id.clone());
    }
}

const INSERT: &str = "
INSERT INTO \"OutboxEvent\" (id, event_type, org_id, entity_type, entity_id, payload)
SELECT u.id::uuid, $4, 'org_load', 'Item', u.k, jsonb_build_object('n', u.n, 'key', u.k)
  FROM unnest($1::text[], $2::text[], $3::int8[]) AS u(id, k, n)";

async fn publish(
    url: String,
    rate: u32,
    duration: Duration,
    keys: usize,
) -> (Published, Vec<Batch>) {
    let per_tick = (rate as usize * TICK.as_millis() as usize / 1000).max(1);
    let mut published = Published::default();
    let mut unsure = Vec::new();
    let mut client: Option<tokio_postgres::Client> = None;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let end = tokio::time::Instant::now() + duration;
    let mut n: i64 = 0;
    while tokio::time::Instant::now() < end {
        tick.tick().await;
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client = connect(&url).await.ok();
        }
        let Some(c) = &client else {
            published.failed_batches += 1;
            continue;
        };
        let batch: Batch = (n..n + per_tick as i64)
            .map(|i| {
                let key = format!("k{}", i as usize % keys.max(1));
                (uuid::Uuid::new_v4().to_string(), key, i)
            })
            .collect();
        n += per_tick as i64;
        let ids: Vec<&str> = batch.iter().map(|(id, _, _)| id.as_str()).collect();
        let ks: Vec<&str> = batch.iter().map(|(_, k, _)| k.as_str()).collect();
        let ns: Vec<i64> = batch.iter().map(|(_, _, n)| *n).collect();
        match c.execute(INSERT, &[&ids, &ks, &ns, &LOAD_TYPE]).await {
            Ok(_) => record(&mut published, &batch),
            Err(e) if e.as_db_error().is_some() => published.failed_batches += 1,
            // The connection broke: the commit may or may not have happened.
            Err(_) => {
                unsure.push(batch);
                client = None;
            }
        }
    }
    (published, unsure)
}
