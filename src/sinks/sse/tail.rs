//! The tail reader: follows the table in stream order and feeds the [`Hub`].
//!
//! It wakes when the listener hears a NOTIFY, and on the poll interval as a safety net; it
//! reads until nothing more is visible, then sleeps. It starts from the snapshot current when
//! it starts: subscribers that need older rows read them themselves, once it has started
//! ([`Hub::tail_running`]).

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::background::Rounds;
use crate::backoff::Backoff;
use crate::observe::incident::Incident;
use crate::sinks::sse::cursor::Cursor;
use crate::sinks::sse::read::{self, Reader};
use crate::sinks::sse::Hub;

/// Rows per read.
pub const PAGE: usize = 1000;

/// Runs until `stop`. The safety net for a lost NOTIFY is the claim loop's poll: a read
/// follows its first round at least `poll` after the last read.
pub async fn run(
    pool: Pool,
    reader: Reader,
    hub: Arc<Hub>,
    wake: Arc<Notify>,
    mut rounds: Rounds,
    poll: Duration,
    stop: CancellationToken,
) {
    let mut cursor: Option<Cursor> = None;
    let mut failures = Backoff::new(Duration::from_millis(200), Duration::from_millis(12_800));
    let mut reads = Incident::new("SSE tail reads");
    loop {
        let result = step(&pool, &reader, &mut cursor, &hub).await;
        if result.is_ok() {
            reads.succeeded();
        }
        let mut last_read = Some(tokio::time::Instant::now());
        match result {
            Ok(true) => {
                failures.succeeded();
                continue; // a full page: more is visible already
            }
            Ok(false) => {
                failures.succeeded();
                tokio::select! {
                    _ = wake.notified() => {}
                    more = rounds.next(poll, &mut last_read, &stop) => if !more { return },
                }
            }
            Err(e) => {
                let delay = failures.failed();
                crate::incident_failed!(reads, error = format!("{e:#}"), retry_in = ?delay, "SSE tail read failed");
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
    }
}

/// Reads one page and publishes it; the cursor moves only on success. Returns `more`.
async fn step(
    pool: &Pool,
    reader: &Reader,
    cursor: &mut Option<Cursor>,
    hub: &Hub,
) -> anyhow::Result<bool> {
    let client = pool.get().await?;
    let read = async {
        if cursor.is_none() {
            // Kept even if the page read below fails: a second `now` would skip the rows
            // committed in between, which subscribers already count on the tail to send.
            *cursor = Some(read::now(&client).await?);
            hub.tail_started();
        }
        let current = cursor.clone().expect("set above");
        read::next_page(&client, reader, &current, None, PAGE).await
    };
    let page = match tokio::time::timeout(crate::db::CLIENT_DEADLINE, read).await {
        Ok(page) => page?,
        Err(_) => return Err(crate::db::abandon(pool, client)),
    };
    crate::db::put_back(client, page.bytes);
    hub.publish(&page.events);
    *cursor = Some(page.cursor);
    Ok(page.more)
}
