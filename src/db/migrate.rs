//! `outbox-relay migrate`: create the outbox table, or adopt one an ORM made.
//!
//! The steps are the numbered files in `sql/`, embedded in the binary. Each is idempotent
//! (`IF NOT EXISTS`, `CREATE OR REPLACE`), so the whole list simply runs every time: there is
//! no version table to drift from reality, and `--print` output can be pasted into any
//! migration tool and applied more than once.

use anyhow::Context;

use crate::db::ident::{derived_name, quote_ident, quote_literal};
use crate::db::table::TableSettings;

/// The migration steps in order: (file name, template).
const STEPS: &[(&str, &str)] = &[
    (
        "001_create_table.sql",
        include_str!("../../sql/001_create_table.sql"),
    ),
    (
        "002_status_values.sql",
        include_str!("../../sql/002_status_values.sql"),
    ),
    (
        "003_relay_columns.sql",
        include_str!("../../sql/003_relay_columns.sql"),
    ),
    (
        "004_notify_trigger.sql",
        include_str!("../../sql/004_notify_trigger.sql"),
    ),
    (
        "005_stream_columns.sql",
        include_str!("../../sql/005_stream_columns.sql"),
    ),
    (
        "006_entity_ordering.sql",
        include_str!("../../sql/006_entity_ordering.sql"),
    ),
    (
        "007_dashboard.sql",
        include_str!("../../sql/007_dashboard.sql"),
    ),
    ("008_audit.sql", include_str!("../../sql/008_audit.sql")),
    ("009_circuit.sql", include_str!("../../sql/009_circuit.sql")),
    (
        "010_rate_limit.sql",
        include_str!("../../sql/010_rate_limit.sql"),
    ),
    ("011_cluster.sql", include_str!("../../sql/011_cluster.sql")),
    (
        "012_held_for.sql",
        include_str!("../../sql/012_held_for.sql"),
    ),
];

/// Session-level advisory lock key serialising concurrent `migrate` runs (several relays
/// starting at once). Arbitrary, fixed: "outbox" in ASCII.
const MIGRATE_LOCK_KEY: i64 = 0x6f7574626f78;

/// An index `migrate` builds and drops `CONCURRENTLY`, outside the steps' transactions: a
/// plain CREATE INDEX blocks the app's inserts for the whole build, a plain DROP INDEX while
/// it queues for its exclusive lock. The claim's indexes of PENDING rows, and those that
/// serve an optional feature: every index costs every insert of the app (and the relay's
/// claim and completion updates) an entry, so `migrate` creates such an index when the
/// config turns its feature on and drops it when it is off.
#[derive(Debug, Clone)]
pub struct ManagedIndex {
    /// Unquoted, in the table's schema.
    pub name: String,
    /// What it serves (a feature and the setting that turns it on), for messages.
    pub serves: &'static str,
    /// The settings in hand want it.
    pub wanted: bool,
    /// The CREATE statement; None for an index of an earlier release that is dropped.
    template: Option<&'static str>,
}

impl ManagedIndex {
    /// Schema-qualified and quoted, for SQL.
    pub fn qualified(&self, settings: &TableSettings) -> String {
        settings.in_schema(&self.name)
    }

    /// An index of an earlier release, dropped by this one.
    pub fn retired(&self) -> bool {
        self.template.is_none()
    }
}

/// The managed indexes, and whether `settings` wants each. Those to create come before those
/// they replace, so the claim always has an index while `migrate` runs.
pub fn managed_indexes(settings: &TableSettings) -> Vec<ManagedIndex> {
    let t = &settings.table;
    vec![
        ManagedIndex {
            name: derived_name("", t, "_relay_fresh_idx"),
            serves: "claiming new events",
            wanted: true,
            template: Some(include_str!("../../sql/indexes/fresh_index.sql")),
        },
        ManagedIndex {
            name: derived_name("", t, "_relay_due_held_idx"),
            serves: "claiming retries when due and releasing the events held for one endpoint",
            wanted: true,
            template: Some(include_str!("../../sql/indexes/due_held_index.sql")),
        },
        ManagedIndex {
            name: derived_name("", t, "_relay_lapse_idx"),
            serves: "taking over lapsed leases",
            wanted: true,
            template: Some(include_str!("../../sql/indexes/lapse_index.sql")),
        },
        ManagedIndex {
            name: derived_name("", t, "_relay_pending_idx"),
            serves: "claiming, in releases before the fresh and due indexes",
            wanted: false,
            template: None,
        },
        ManagedIndex {
            name: derived_name("", t, "_relay_due_idx"),
            serves: "claiming retries, in releases before the due-and-held index",
            wanted: false,
            template: None,
        },
        ManagedIndex {
            name: derived_name("", t, "_relay_held_idx"),
            serves: "releasing held events, in releases before the due-and-held index",
            wanted: false,
            template: None,
        },
        ManagedIndex {
            name: derived_name("", t, "_relay_lease_idx"),
            serves: "leases, in releases before the lapse index",
            wanted: false,
            template: None,
        },
        ManagedIndex {
            name: derived_name("", t, "_relay_ordering_idx"),
            serves: "entity-ordered delivery (ordering = \"entity\" on a webhook)",
            wanted: !settings.ordered_types.is_empty(),
            template: Some(include_str!("../../sql/indexes/ordering_index.sql")),
        },
        ManagedIndex {
            name: derived_name("", t, "_relay_stream_idx"),
            serves: "Server-Sent Events ([sse] enabled)",
            wanted: settings.sse,
            template: Some(include_str!("../../sql/indexes/stream_index.sql")),
        },
    ]
}

/// The template variables: the names of this table and its objects.
fn vars(settings: &TableSettings) -> Vec<(&'static str, String)> {
    let table = settings.qualified_table();
    let t = &settings.table;
    let stream_seq = derived_name("", t, "_stream_seq");
    let (wake_class, wake_key) = settings.wake_lock();
    let index = |suffix: &str| quote_ident(&derived_name("", t, suffix));
    vec![
        ("{{table}}", table.clone()),
        ("{{table_literal}}", quote_literal(&table)),
        ("{{schema}}", settings.schema.to_string()),
        ("{{fresh_idx}}", index("_relay_fresh_idx")),
        ("{{due_held_idx}}", index("_relay_due_held_idx")),
        ("{{lapse_idx}}", index("_relay_lapse_idx")),
        ("{{unknown_idx}}", index("_relay_unknown_idx")),
        ("{{completed_idx}}", index("_relay_completed_idx")),
        ("{{ordering_idx}}", index("_relay_ordering_idx")),
        ("{{failed_idx}}", index("_relay_failed_idx")),
        ("{{stream_idx}}", index("_relay_stream_idx")),
        (
            "{{notify_fn}}",
            quote_ident(&derived_name("outbox_relay_notify_", t, "")),
        ),
        ("{{channel_literal}}", quote_literal(&settings.channel())),
        ("{{wake_lock_class}}", wake_class.to_string()),
        ("{{wake_lock_key}}", wake_key.to_string()),
        ("{{stream_seq}}", quote_ident(&stream_seq)),
        ("{{paused_table}}", quote_ident(&settings.paused_table())),
        ("{{audit_table}}", quote_ident(&settings.audit_table())),
        ("{{rates_table}}", quote_ident(&settings.rates_table())),
        (
            "{{instances_table}}",
            quote_ident(&settings.instances_table()),
        ),
        (
            "{{activity_table}}",
            quote_ident(&settings.activity_table()),
        ),
        (
            "{{stream_seq_literal}}",
            quote_literal(&settings.in_schema(&stream_seq)),
        ),
    ]
}

/// The SQL of each step with this table's names filled in.
pub fn render(settings: &TableSettings) -> Vec<(&'static str, String)> {
    let vars = vars(settings);
    STEPS
        .iter()
        .map(|(name, template)| (*name, fill(template, &vars)))
        .collect()
}

/// Fills a template's placeholders.
fn fill(template: &str, vars: &[(&'static str, String)]) -> String {
    vars.iter()
        .fold(template.to_string(), |s, (k, v)| s.replace(k, v))
}

/// The statements that create the managed indexes `settings` wants and drop the others, each
/// `CONCURRENTLY` (see [`ManagedIndex`]), so they run one by one outside a transaction
/// block, after the steps.
pub fn index_statements(settings: &TableSettings) -> Vec<String> {
    let vars = vars(settings);
    managed_indexes(settings)
        .iter()
        .map(|ix| match ix.template {
            Some(template) if ix.wanted => fill(template, &vars),
            Some(_) => format!(
                "-- The config does not use {}: its index goes (migrate again after \
                 turning it on).\nDROP INDEX CONCURRENTLY IF EXISTS {};\n",
                ix.serves,
                ix.qualified(settings)
            ),
            None => format!(
                "-- An index for {}, replaced.\nDROP INDEX CONCURRENTLY IF EXISTS {};\n",
                ix.serves,
                ix.qualified(settings)
            ),
        })
        .collect()
}

/// Which of `indexes` exist now.
pub async fn existing(
    client: &tokio_postgres::Client,
    settings: &TableSettings,
    indexes: &[ManagedIndex],
) -> anyhow::Result<Vec<bool>> {
    let names: Vec<String> = indexes.iter().map(|ix| ix.qualified(settings)).collect();
    let row = super::statements::query_one(
        client,
        "SELECT array_agg(to_regclass(n) IS NOT NULL ORDER BY i)
           FROM unnest($1::text[]) WITH ORDINALITY AS u(n, i)",
        &[&names],
    )
    .await
    .context("looking up the relay's indexes")?;
    Ok(row.get(0))
}

/// Warns about each managed index `settings` wants that is missing (a `migrate` run with another
/// config dropped it, none ran since the feature was turned on, or none since an upgrade).
pub async fn warn_missing_indexes(client: &tokio_postgres::Client, settings: &TableSettings) {
    let managed = managed_indexes(settings);
    match existing(client, settings, &managed).await {
        Ok(exists) => {
            for (ix, _) in managed.iter().zip(exists).filter(|(ix, e)| ix.wanted && !e) {
                tracing::warn!(
                    index = %ix.name,
                    "{} is configured but its index is missing: run `outbox-relay migrate` \
                     with this config (until then, reads that want it scan the table)",
                    ix.serves
                );
            }
        }
        Err(e) => tracing::debug!(error = format!("{e:#}"), "cannot check the relay's indexes"),
    }
}

/// The whole migration as one script, for `migrate --print`.
pub fn script(settings: &TableSettings) -> String {
    let mut out = format!(
        "-- outbox-relay {} migration for {}\n-- Idempotent: safe to apply more than once.\n",
        env!("CARGO_PKG_VERSION"),
        settings.qualified_table()
    );
    for (name, sql) in render(settings) {
        out.push_str(&format!(
            "\n-- {name}\nBEGIN;\n{}\nCOMMIT;\n",
            sql.trim_end()
        ));
    }
    out.push_str(
        "\n-- Indexes, outside a transaction block (CONCURRENTLY). If a build failed half \
         way,\n-- drop the INVALID index it left (\\d in psql shows it) before running \
         this again.\n",
    );
    for sql in index_statements(settings) {
        out.push_str(&format!("{}\n", sql.trim_end()));
    }
    out.push_str(
        "\n-- A runtime role that is neither superuser nor owner needs GRANTs on these \
         objects:\n-- `outbox-relay migrate --print-grants ROLE` prints them.\n",
    );
    out
}

/// Applies every step, each in its own transaction, under an advisory lock, after checking
/// that an existing table can be adopted (changing nothing when not). `lock_timeout` keeps
/// an ALTER TABLE from queueing (and blocking the app) behind a long transaction.
pub async fn run(
    client: &mut tokio_postgres::Client,
    settings: &TableSettings,
) -> anyhow::Result<()> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATE_LOCK_KEY])
        .await?;
    let result = apply(client, settings).await;
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATE_LOCK_KEY])
        .await?;
    result
}

async fn apply(
    client: &mut tokio_postgres::Client,
    settings: &TableSettings,
) -> anyhow::Result<()> {
    // Every step changes an existing table in place (IF NOT EXISTS): on a table that is not
    // an outbox they would add the relay's columns, indexes and trigger to it before any
    // step failed. Checked under the lock, so no concurrent migrate creates it meanwhile.
    crate::db::shape::check_adoptable(client, &settings.qualified_table()).await?;
    for (name, sql) in render(settings) {
        let tx = client.transaction().await?;
        // IF NOT EXISTS skips are expected on every re-run: keep their NOTICEs out of the logs.
        tx.batch_execute("SET LOCAL lock_timeout = '10s'; SET LOCAL client_min_messages = warning")
            .await?;
        tx.batch_execute(&sql)
            .await
            .with_context(|| format!("migration step {name} failed"))?;
        tx.commit()
            .await
            .with_context(|| format!("committing migration step {name}"))?;
        tracing::debug!(step = name, "migration step applied");
    }
    // A concurrent build that failed (lock_timeout, a cancel) leaves an INVALID index that
    // IF NOT EXISTS would keep: drop those first.
    client
        .batch_execute("SET lock_timeout = '10s'; SET client_min_messages = warning")
        .await?;
    let managed = managed_indexes(settings);
    for ix in &managed {
        let invalid: bool = client
            .query_one(
                "SELECT count(*) > 0 FROM pg_index WHERE indexrelid = to_regclass($1) \
                 AND NOT indisvalid",
                &[&ix.qualified(settings)],
            )
            .await?
            .get(0);
        if invalid {
            tracing::warn!(index = %ix.name, "dropping an invalid index a failed build left");
            client
                .batch_execute(&format!(
                    "DROP INDEX CONCURRENTLY {}",
                    ix.qualified(settings)
                ))
                .await?;
        }
    }
    for (ix, sql) in managed.iter().zip(index_statements(settings)) {
        client
            .batch_execute(&sql)
            .await
            .with_context(|| format!("creating or dropping index {}", ix.name))?;
    }
    client
        .batch_execute("RESET lock_timeout; RESET client_min_messages")
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_placeholder() {
        let settings = TableSettings::for_tests("Outbox_2");
        let script = script(&settings);
        assert!(!script.contains("{{"), "unfilled placeholder in:\n{script}");
        assert!(script.contains(r#""public"."Outbox_2""#));
        assert!(script.contains("'outbox_relay.public.Outbox_2'"));
    }
}
