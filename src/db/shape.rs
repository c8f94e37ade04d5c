//! What the outbox table looks like in this database: the types the queries must cast to.
//!
//! An app's ORM decides the id type (uuid, text, bigint) and whether status is text or an
//! enum; the relay adapts its SQL once at start-up instead of asking apps to change.

use anyhow::{bail, Context};

use crate::db::ident::quote_ident;

/// Relay-owned columns that `migrate` adds; their absence means it has not run.
pub const RELAY_COLUMNS: &[&str] = &[
    "status",
    "retry_count",
    "error_message",
    "processed_at",
    "next_attempt_at",
    "lease_expires_at",
    "claim_token",
    "delivered_to",
    "stream_seq",
    "skipped_at",
    "attempts",
    "event_type",
    "payload",
    "created_at",
];

/// The casts the queries need for this table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableShape {
    /// SQL type of `id`, to cast text ids back: `uuid`, `text`, `bigint` or `integer`.
    pub id_type: &'static str,
    /// Whether the database fills in `id` (a default or identity); if not (Prisma's
    /// `@default(uuid())` is client-side), `publish` supplies a UUID.
    pub id_has_default: bool,
    /// SQL type to cast status literals to: `text`, or the quoted enum type.
    pub status_type: String,
}

impl TableShape {
    /// The shape of a table made by our own migration (used by `migrate --print` tests).
    pub fn standard() -> Self {
        Self {
            id_type: "uuid",
            id_has_default: true,
            status_type: "text".into(),
        }
    }
}

const COLUMNS: &str = "
SELECT a.attname::text,
       format_type(a.atttypid, a.atttypmod),
       t.typtype::text,
       n.nspname::text,
       t.typname::text,
       (a.atthasdef OR a.attidentity <> '')
  FROM pg_attribute a
  JOIN pg_type t ON t.oid = a.atttypid
  JOIN pg_namespace n ON n.oid = t.typnamespace
 WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped";

/// Reads the table's shape; fails with what to do when the table or a column is missing.
pub async fn inspect(
    client: &tokio_postgres::Client,
    qualified_table: &str,
) -> anyhow::Result<TableShape> {
    let rows = client
        .query(COLUMNS, &[&qualified_table])
        .await
        .context("reading the outbox table's columns")?;
    if rows.is_empty() {
        bail!("table {qualified_table} does not exist: run `outbox-relay migrate` first");
    }
    let col = |name: &str| rows.iter().find(|r| r.get::<_, String>(0) == name);
    let missing: Vec<_> = RELAY_COLUMNS.iter().filter(|c| col(c).is_none()).collect();
    if !missing.is_empty() {
        bail!(
            "table {qualified_table} lacks column(s) {missing:?}: run `outbox-relay migrate` \
             (it only adds what is missing)"
        );
    }
    let id = col("id").with_context(|| format!("table {qualified_table} has no `id` column"))?;
    let id_sql: String = id.get(1);
    let id_type = match id_sql.as_str() {
        "uuid" => "uuid",
        "bigint" => "bigint",
        "integer" => "integer",
        t if t == "text" || t.starts_with("character varying") => "text",
        other => bail!("column id of {qualified_table} is {other}; uuid, text or bigint expected"),
    };
    let status = col("status").expect("checked above");
    let status_type = match (
        status.get::<_, String>(2).as_str(),
        status.get::<_, String>(1),
    ) {
        ("e", _) => format!(
            "{}.{}",
            quote_ident(&status.get::<_, String>(3)),
            quote_ident(&status.get::<_, String>(4))
        ),
        (_, t) if t == "text" || t.starts_with("character varying") => "text".into(),
        (_, other) => bail!(
            "column status of {qualified_table} is {other}; text or an enum of PENDING, \
             PROCESSING, COMPLETED, FAILED expected"
        ),
    };
    Ok(TableShape {
        id_type,
        id_has_default: id.get(5),
        status_type,
    })
}
