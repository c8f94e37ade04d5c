//! What the outbox table looks like in this database: whether the relay can use it at all,
//! and the types the queries must cast to.
//!
//! An app's ORM decides the id type (uuid, text, bigint) and whether status is text or an
//! enum; the relay adapts its SQL once at start-up instead of asking apps to change. What it
//! cannot adapt to (a table that is not an outbox, a column of a type it cannot read) is
//! refused before `migrate` changes anything, with what to do.

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
    "held_for",
    "event_type",
    "payload",
    "created_at",
];

/// Columns an existing table must have for `migrate` to adopt it: the app writes them, so
/// `migrate` cannot add them (CONTRACT.md section 1). The others it adds when missing.
pub const APP_COLUMNS: &[&str] = &["id", "event_type", "payload"];

/// The longest `error_message` the relay writes, in characters (see `deliver`).
const ERROR_MESSAGE_CHARS: u32 = 1000;

/// The types the relay can work with, for each column it reads or writes. A column of another
/// type would make `migrate` skip it (`ADD COLUMN IF NOT EXISTS`) and every claim fail later.
const TYPES: &[(&str, Kind)] = &[
    ("id", Kind::Id),
    ("org_id", Kind::Text),
    ("event_type", Kind::Text),
    ("entity_type", Kind::Text),
    ("entity_id", Kind::Text),
    ("payload", Kind::Json),
    ("status", Kind::Status),
    ("retry_count", Kind::Exact("integer")),
    ("error_message", Kind::LongText),
    ("created_at", Kind::Timestamp),
    ("processed_at", Kind::Timestamp),
    ("next_attempt_at", Kind::Exact("timestamp with time zone")),
    ("lease_expires_at", Kind::Exact("timestamp with time zone")),
    ("claim_token", Kind::Exact("uuid")),
    ("delivered_to", Kind::Exact("text[]")),
    ("stream_xid", Kind::Exact("xid8")),
    ("stream_seq", Kind::Exact("bigint")),
    ("skipped_at", Kind::Exact("timestamp with time zone")),
    ("attempts", Kind::Exact("jsonb")),
    ("held_for", Kind::Exact("text[]")),
];

/// A family of column types the relay accepts.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// uuid, text, varchar, bigint or integer: ids are read as text and cast back.
    Id,
    /// Read into Rust strings: text or varchar (not char(n), whose padding breaks matching).
    Text,
    /// `payload`: read as text and parsed, so JSON or text.
    Json,
    /// Text or an enum (the migration adds the values the relay writes).
    Status,
    /// Text that holds an error message of up to [`ERROR_MESSAGE_CHARS`].
    LongText,
    /// timestamptz, or a timestamp read as UTC (Prisma's `timestamp(3)`, see [`Clock`]).
    Timestamp,
    /// Exactly this type (`format_type` spelling): the relay's own columns.
    Exact(&'static str),
}

impl Kind {
    fn accepts(self, c: &Column) -> bool {
        let t = c.sql_type.as_str();
        let text = t == "text" || t.starts_with("character varying");
        match self {
            Kind::Id => text || matches!(t, "uuid" | "bigint" | "integer"),
            Kind::Text => text,
            Kind::Json => text || matches!(t, "jsonb" | "json"),
            Kind::Status => text || c.enum_type.is_some(),
            Kind::LongText => match t.strip_prefix("character varying(") {
                Some(n) => n
                    .trim_end_matches(')')
                    .parse::<u32>()
                    .is_ok_and(|n| n >= ERROR_MESSAGE_CHARS),
                None => text,
            },
            Kind::Timestamp => t.starts_with("timestamp"),
            Kind::Exact(want) => t == want,
        }
    }

    /// What the message says is expected.
    fn expected(self) -> String {
        match self {
            Kind::Id => "uuid, text or bigint".into(),
            Kind::Text => "text".into(),
            Kind::Json => "jsonb".into(),
            Kind::Status => "text or an enum".into(),
            Kind::LongText => format!("text, or varchar of at least {ERROR_MESSAGE_CHARS}"),
            Kind::Timestamp => "timestamptz".into(),
            Kind::Exact(t) => t.into(),
        }
    }
}

/// One column, as the catalog describes it.
#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    /// `format_type` spelling: `text`, `character varying(255)`, `timestamp(3) without
    /// time zone`.
    pub sql_type: String,
    /// The quoted, schema-qualified type when it is an enum.
    pub enum_type: Option<String>,
    /// The database fills it in (a default or identity).
    pub has_default: bool,
}

/// An existing relation named by the config.
#[derive(Debug, Clone)]
pub struct Existing {
    /// `pg_class.relkind`: `r` a table, `p` partitioned, `v` a view, ...
    pub kind: String,
    pub columns: Vec<Column>,
}

impl Existing {
    fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// Why the relay cannot use this relation as its outbox, and what to do: None when it
    /// can (after `migrate` adds what is missing).
    pub fn unadoptable(&self) -> Option<String> {
        let elsewhere = "point `table` at your outbox table, or at a name no table has yet \
                         and `migrate` creates it there";
        let what = match self.kind.as_str() {
            "r" => None,
            "p" => Some("a partitioned table (the relay's indexes are built CONCURRENTLY)"),
            "v" => Some("a view"),
            "m" => Some("a materialized view"),
            "f" => Some("a foreign table"),
            _ => Some("not a table"),
        };
        if let Some(what) = what {
            return Some(format!("is {what}, not a plain table: {elsewhere}"));
        }
        let missing: Vec<&str> = APP_COLUMNS
            .iter()
            .copied()
            .filter(|c| self.column(c).is_none())
            .collect();
        let wrong: Vec<String> = TYPES
            .iter()
            .filter_map(|(name, kind)| {
                let c = self.column(name)?;
                (!kind.accepts(c))
                    .then(|| format!("{name} is {} ({} expected)", c.sql_type, kind.expected()))
            })
            .collect();
        match (missing.is_empty(), wrong.is_empty()) {
            (true, true) => None,
            (false, _) => Some(format!(
                "is not an outbox table: it has no {} column{}{}; {elsewhere}",
                missing.join(", "),
                if missing.len() > 1 { "s" } else { "" },
                if wrong.is_empty() {
                    String::new()
                } else {
                    format!(", and {}", wrong.join(", "))
                }
            )),
            (true, false) => Some(format!(
                "has columns of types the relay cannot use: {}; change their types, or {elsewhere}",
                wrong.join(", ")
            )),
        }
    }
}

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
    /// `created_at` is a `timestamp` without time zone (Prisma's `timestamp(3)`): taken as
    /// UTC, see [`Clock`].
    pub created_at: Clock,
    /// `processed_at`, likewise: the relay writes it in UTC.
    pub processed_at: Clock,
}

/// How a timestamp column of the app's holds its instants.
///
/// A `timestamptz` is an instant. A `timestamp` without time zone is a wall-clock reading
/// whose zone the column does not say: the relay takes it as UTC (what Prisma writes), and
/// converts explicitly (`AT TIME ZONE 'UTC'`) wherever it compares such a column with
/// `now()`, writes it or shows it as an instant. Implicit casts would use the session's
/// TimeZone, which the relay sets to UTC at connect time but a pooler may drop (PgBouncer's
/// `ignore_startup_parameters = options`). `extract(epoch FROM col)`, which the claim and
/// the SSE read use, already takes a `timestamp` as UTC whatever the session's TimeZone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clock {
    /// `timestamp with time zone`.
    Instant,
    /// `timestamp without time zone`, holding UTC.
    UtcWallClock,
}

impl Clock {
    fn of(c: &Column) -> Self {
        match c.sql_type.ends_with("without time zone") {
            true => Clock::UtcWallClock,
            false => Clock::Instant,
        }
    }

    /// The column expression `expr` as a `timestamptz`.
    pub fn instant(self, expr: &str) -> String {
        match self {
            Clock::Instant => expr.to_owned(),
            Clock::UtcWallClock => format!("({expr} AT TIME ZONE 'UTC')"),
        }
    }

    /// The current time as the column holds it.
    pub fn now(self) -> &'static str {
        match self {
            Clock::Instant => "now()",
            Clock::UtcWallClock => "(now() AT TIME ZONE 'UTC')",
        }
    }
}

impl TableShape {
    /// The shape of a table made by our own migration (used by `migrate --print` tests).
    pub fn standard() -> Self {
        Self {
            id_type: "uuid",
            id_has_default: true,
            status_type: "text".into(),
            created_at: Clock::Instant,
            processed_at: Clock::Instant,
        }
    }

    /// What the relay says at start about a table whose `created_at` has no time zone (once,
    /// as a warning), and `migrate` after adopting it: the column cannot tell UTC from local
    /// time, so a writer in another time zone goes unnoticed until its timestamps are off.
    pub fn created_at_caveat(&self) -> Option<&'static str> {
        (self.created_at == Clock::UtcWallClock).then_some(
            "created_at is timestamp without time zone: the relay reads it as UTC (what \
             Prisma writes), so a writer whose session TimeZone is not UTC and that writes \
             now() or leaves created_at to a default of CURRENT_TIMESTAMP stores local time, \
             and its events' timestamp and lag are off by that UTC offset; have such writers \
             insert now() AT TIME ZONE 'UTC' (or SET TimeZone = 'UTC'), or make the column \
             timestamptz",
        )
    }
}

const KIND: &str = "SELECT relkind::text FROM pg_class WHERE oid = to_regclass($1)";

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

/// The relation the config names, or None when there is none (`migrate` creates it).
pub async fn existing(
    client: &tokio_postgres::Client,
    qualified_table: &str,
) -> anyhow::Result<Option<Existing>> {
    let context = || format!("reading the catalog entry of {qualified_table}");
    let Some(kind) = super::statements::query(client, KIND, &[&qualified_table])
        .await
        .map(|mut rows| rows.pop())
        .with_context(context)?
    else {
        return Ok(None);
    };
    let columns = super::statements::query(client, COLUMNS, &[&qualified_table])
        .await
        .with_context(context)?
        .iter()
        .map(|r| Column {
            name: r.get(0),
            sql_type: r.get(1),
            enum_type: (r.get::<_, String>(2) == "e").then(|| {
                format!(
                    "{}.{}",
                    quote_ident(&r.get::<_, String>(3)),
                    quote_ident(&r.get::<_, String>(4))
                )
            }),
            has_default: r.get(5),
        })
        .collect();
    Ok(Some(Existing {
        kind: kind.get(0),
        columns,
    }))
}

/// A relation the relay cannot use as its outbox ([`Existing::unadoptable`]). The config's
/// `table` names the wrong relation, so it reads as the config error it is (the words of
/// `crate::config::ConfigError` at `table`) and `main` exits 2 with it, as for one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config error at `table`: {table} {why}")]
pub struct Unadoptable {
    /// Quoted `schema.table`.
    pub table: String,
    /// What is wrong with it, and what to do.
    pub why: String,
}

/// Refuses a relation the relay cannot use as its outbox, as an [`Unadoptable`] error (exit
/// status 2: the config names the wrong table). A missing one passes.
pub async fn check_adoptable(
    client: &tokio_postgres::Client,
    qualified_table: &str,
) -> anyhow::Result<()> {
    match existing(client, qualified_table).await? {
        Some(e) => refuse(qualified_table, &e),
        None => Ok(()),
    }
}

fn refuse(qualified_table: &str, e: &Existing) -> anyhow::Result<()> {
    match e.unadoptable() {
        Some(why) => Err(Unadoptable {
            table: qualified_table.to_owned(),
            why,
        }
        .into()),
        None => Ok(()),
    }
}

/// Reads the table's shape; fails with what to do when the table or a column is missing.
pub async fn inspect(
    client: &tokio_postgres::Client,
    qualified_table: &str,
) -> anyhow::Result<TableShape> {
    let Some(table) = existing(client, qualified_table).await? else {
        bail!("table {qualified_table} does not exist: run `outbox-relay migrate` first");
    };
    refuse(qualified_table, &table)?;
    let missing: Vec<_> = RELAY_COLUMNS
        .iter()
        .filter(|c| table.column(c).is_none())
        .collect();
    if !missing.is_empty() {
        bail!(
            "table {qualified_table} lacks column(s) {missing:?}: run `outbox-relay migrate` \
             (it only adds what is missing)"
        );
    }
    // Both present and of an accepted type: checked above.
    let (id, status) = (
        table.column("id").expect("an app column"),
        table.column("status").expect("a relay column"),
    );
    let id_type = match id.sql_type.as_str() {
        "uuid" => "uuid",
        "bigint" => "bigint",
        "integer" => "integer",
        _ => "text",
    };
    Ok(TableShape {
        id_type,
        id_has_default: id.has_default,
        status_type: status.enum_type.clone().unwrap_or_else(|| "text".into()),
        created_at: Clock::of(table.column("created_at").expect("a relay column")),
        processed_at: Clock::of(table.column("processed_at").expect("a relay column")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plain table with these (name, type) columns.
    fn table(columns: &[(&str, &str)]) -> Existing {
        Existing {
            kind: "r".into(),
            columns: columns
                .iter()
                .map(|(name, t)| Column {
                    name: (*name).into(),
                    sql_type: (*t).into(),
                    enum_type: None,
                    has_default: false,
                })
                .collect(),
        }
    }

    const PRISMA: &[(&str, &str)] = &[
        ("id", "text"),
        ("org_id", "text"),
        ("event_type", "text"),
        ("payload", "jsonb"),
        ("created_at", "timestamp(3) without time zone"),
    ];

    #[test]
    fn an_orm_made_outbox_is_adoptable() {
        assert_eq!(table(PRISMA).unadoptable(), None);
        let mut t = table(&[
            ("id", "bigint"),
            ("event_type", "character varying(255)"),
            ("payload", "json"),
            ("error_message", "character varying(2000)"),
            ("retry_count", "integer"),
        ]);
        assert_eq!(t.unadoptable(), None);
        t.columns.push(Column {
            name: "status".into(),
            sql_type: "\"OutboxStatus\"".into(),
            enum_type: Some("\"public\".\"OutboxStatus\"".into()),
            has_default: true,
        });
        assert_eq!(t.unadoptable(), None);
    }

    #[test]
    fn a_table_without_the_apps_columns_is_refused_naming_them() {
        let why = table(&[("id", "integer"), ("name", "text")])
            .unadoptable()
            .unwrap();
        assert!(
            why.starts_with("is not an outbox table: it has no event_type, payload columns;"),
            "{why}"
        );
        assert!(why.contains("point `table` at your outbox table"), "{why}");
        let why = table(&[
            ("id", "uuid"),
            ("event_type", "text"),
            ("retry_count", "text"),
        ])
        .unadoptable()
        .unwrap();
        assert!(
            why.contains("no payload column, and retry_count is text (integer expected)"),
            "{why}"
        );
    }

    #[test]
    fn columns_of_types_the_relay_cannot_read_are_named() {
        let mut cols = PRISMA.to_vec();
        cols.extend([
            ("event_type", "integer"),
            ("error_message", "character varying(255)"),
            ("attempts", "text"),
        ]);
        cols.retain(|(n, t)| !(*n == "event_type" && *t == "text"));
        let why = table(&cols).unadoptable().unwrap();
        for part in [
            "has columns of types the relay cannot use:",
            "event_type is integer (text expected)",
            "error_message is character varying(255) (text, or varchar of at least 1000 expected)",
            "attempts is text (jsonb expected)",
            "change their types, or point `table`",
        ] {
            assert!(why.contains(part), "{part:?} not in: {why}");
        }
    }

    #[test]
    fn views_and_partitioned_tables_are_refused() {
        for (kind, what) in [("v", "is a view"), ("p", "is a partitioned table")] {
            let mut t = table(PRISMA);
            t.kind = kind.into();
            let why = t.unadoptable().unwrap();
            assert!(why.starts_with(what), "{why}");
        }
    }
}
