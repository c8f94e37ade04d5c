//! How statements reach the server: prepared once per connection (direct connections, the
//! fast path), or *pooler-safe*, for a transaction-mode pooler such as PgBouncer.
//!
//! Behind a transaction-mode pooler, each transaction (each statement outside one) may run
//! on a different server connection, shared with other clients. A named prepared statement
//! is session state: prepared on one server connection, it is missing on the next
//! (`prepared statement "s3" does not exist`), and left behind it collides with another
//! client's statement of the same name (`prepared statement "s3" already exists`).
//! tokio-postgres names every statement it prepares, even for `client.query(&str)`.
//!
//! Pooler-safe statements keep nothing on the server between transactions: each runs as
//! one unnamed statement with its parameter types given (`query_typed`: Parse, Bind,
//! Execute and Sync in one round trip). The types are learned once per SQL text and
//! process, by preparing the statement inside a transaction of its own and closing it
//! before the COMMIT, so the describe too stays on one server connection.
//!
//! The relay turns this on with `listen = false` (see [`set_pooler_safe`]): the setting
//! for a transaction-mode pooler, which cannot LISTEN either.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Error, Row};

static POOLER_SAFE: AtomicBool = AtomicBool::new(false);

/// Parameter types per SQL text, learned by [`param_types`]. Unnamed statements are planned
/// on every run, so `crate::db::replan` has nothing to clear here.
static TYPES: Mutex<Option<HashMap<String, Vec<Type>>>> = Mutex::new(None);

/// Makes every statement of this process pooler-safe (`on`), or prepared once per
/// connection. Set at start from the config: `listen = false` means a transaction-mode
/// pooler may be in between.
pub fn set_pooler_safe(on: bool) {
    POOLER_SAFE.store(on, Ordering::Relaxed);
}

/// Whether statements are pooler-safe (see [`set_pooler_safe`]).
pub fn pooler_safe() -> bool {
    POOLER_SAFE.load(Ordering::Relaxed)
}

/// Runs one statement on `client`: pooler-safe or as tokio-postgres prepares it.
pub async fn query(
    client: &Client,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, Error> {
    if !pooler_safe() {
        return client.query(sql, params).await;
    }
    let types = param_types(client, sql).await?;
    let typed: Vec<(&(dyn ToSql + Sync), Type)> = params.iter().copied().zip(types).collect();
    client.query_typed(sql, &typed).await
}

/// [`query`] on a pooled connection, whose statement cache keeps each SQL text prepared once
/// per connection (when not pooler-safe).
pub async fn query_pooled(
    client: &deadpool_postgres::Client,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, Error> {
    if pooler_safe() {
        return query(client, sql, params).await;
    }
    let stmt = client.prepare_cached(sql).await?;
    client.query(&stmt, params).await
}

/// [`query`] for a statement that returns exactly one row.
pub async fn query_one(
    client: &Client,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> anyhow::Result<Row> {
    let mut rows = query(client, sql, params).await?;
    match rows.len() {
        1 => Ok(rows.remove(0)),
        n => anyhow::bail!("expected one row, got {n}"),
    }
}

/// [`query`] for a statement that changes rows: how many it changed.
pub async fn execute(
    client: &Client,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, Error> {
    if !pooler_safe() {
        return client.execute(sql, params).await;
    }
    let types = param_types(client, sql).await?;
    let typed: Vec<(&(dyn ToSql + Sync), Type)> = params.iter().copied().zip(types).collect();
    let stream = client.query_typed_raw(sql, typed).await?;
    futures_util::pin_mut!(stream);
    while futures_util::TryStreamExt::try_next(&mut stream)
        .await?
        .is_some()
    {}
    Ok(stream.rows_affected().unwrap_or(0))
}

/// The parameter types the server infers for `sql`: from the cache, or described in a
/// transaction of its own (BEGIN, Parse and Describe, Close, COMMIT: one server connection
/// even behind a transaction-mode pooler, and nothing left on it).
pub async fn param_types(client: &Client, sql: &str) -> Result<Vec<Type>, Error> {
    if let Some(types) = TYPES
        .lock()
        .ok()
        .and_then(|t| t.as_ref().and_then(|t| t.get(sql).cloned()))
    {
        return Ok(types);
    }
    client.batch_execute("BEGIN").await?;
    // The statement is dropped at the end of this line: its Close is sent before COMMIT.
    let described = client.prepare(sql).await.map(|s| s.params().to_vec());
    // After a failed prepare the transaction is aborted and COMMIT rolls it back.
    client.batch_execute("COMMIT").await?;
    let types = described?;
    if let Ok(mut t) = TYPES.lock() {
        t.get_or_insert_with(HashMap::new)
            .insert(sql.to_owned(), types.clone());
    }
    Ok(types)
}
