//! `outbox-relay migrate`: create the outbox table, or adopt one an ORM made.
//!
//! The steps are the numbered files in `sql/`, embedded in the binary. Each is idempotent
//! (`IF NOT EXISTS`, `CREATE OR REPLACE`), so the whole list simply runs every time: there is
//! no version table to drift from reality, and `--print` output can be pasted into any
//! migration tool and applied more than once.

use anyhow::Context;

use crate::config::Config;
use crate::db::ident::{derived_name, quote_ident, quote_literal, Ident};

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
];

/// Session-level advisory lock key serialising concurrent `migrate` runs (several relays
/// starting at once). Arbitrary, fixed: "outbox" in ASCII.
const MIGRATE_LOCK_KEY: i64 = 0x6f7574626f78;

/// NOTIFY channel for this table: derived from schema and table so that two relays serving
/// two tables in one database never wake each other.
pub fn channel(cfg: &Config) -> String {
    let name = format!(
        "outbox_relay.{}.{}",
        cfg.schema.as_str(),
        cfg.table.as_str()
    );
    name.chars().take(crate::db::ident::MAX_IDENT_LEN).collect()
}

/// The SQL of each step with this config's names filled in.
/// The table of paused endpoints beside an outbox table `t` (unquoted, in the same schema).
pub fn paused_table(t: &Ident) -> String {
    derived_name("", t, "_relay_paused")
}

/// `paused_table`, schema-qualified and quoted.
pub fn qualified_paused_table(cfg: &Config) -> String {
    format!("{}.{}", cfg.schema, quote_ident(&paused_table(&cfg.table)))
}

pub fn render(cfg: &Config) -> Vec<(&'static str, String)> {
    let table = cfg.qualified_table();
    let t = &cfg.table;
    let stream_seq = derived_name("", t, "_stream_seq");
    let vars = [
        ("{{table}}", table.clone()),
        ("{{table_literal}}", quote_literal(&table)),
        ("{{schema}}", cfg.schema.to_string()),
        (
            "{{pending_idx}}",
            quote_ident(&derived_name("", t, "_relay_pending_idx")),
        ),
        (
            "{{processing_idx}}",
            quote_ident(&derived_name("", t, "_relay_lease_idx")),
        ),
        (
            "{{unknown_idx}}",
            quote_ident(&derived_name("", t, "_relay_unknown_idx")),
        ),
        (
            "{{completed_idx}}",
            quote_ident(&derived_name("", t, "_relay_completed_idx")),
        ),
        (
            "{{ordering_idx}}",
            quote_ident(&derived_name("", t, "_relay_ordering_idx")),
        ),
        (
            "{{failed_idx}}",
            quote_ident(&derived_name("", t, "_relay_failed_idx")),
        ),
        (
            "{{notify_fn}}",
            quote_ident(&derived_name("outbox_relay_notify_", t, "")),
        ),
        ("{{channel_literal}}", quote_literal(&channel(cfg))),
        ("{{stream_seq}}", quote_ident(&stream_seq)),
        ("{{paused_table}}", quote_ident(&paused_table(t))),
        (
            "{{stream_seq_literal}}",
            quote_literal(&format!("{}.{}", cfg.schema, quote_ident(&stream_seq))),
        ),
        (
            "{{stream_idx}}",
            quote_ident(&derived_name("", t, "_relay_stream_idx")),
        ),
    ];
    STEPS
        .iter()
        .map(|(name, template)| {
            let sql = vars
                .iter()
                .fold(template.to_string(), |s, (k, v)| s.replace(k, v));
            (*name, sql)
        })
        .collect()
}

/// The whole migration as one script, for `migrate --print`.
pub fn script(cfg: &Config) -> String {
    let mut out = format!(
        "-- outbox-relay {} migration for {}\n-- Idempotent: safe to apply more than once.\n",
        env!("CARGO_PKG_VERSION"),
        cfg.qualified_table()
    );
    for (name, sql) in render(cfg) {
        out.push_str(&format!(
            "\n-- {name}\nBEGIN;\n{}\nCOMMIT;\n",
            sql.trim_end()
        ));
    }
    out
}

/// Applies every step, each in its own transaction, under an advisory lock. `lock_timeout`
/// keeps an ALTER TABLE from queueing (and blocking the app) behind a long transaction.
pub async fn run(client: &mut tokio_postgres::Client, cfg: &Config) -> anyhow::Result<()> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATE_LOCK_KEY])
        .await?;
    let result = apply(client, cfg).await;
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATE_LOCK_KEY])
        .await?;
    result
}

async fn apply(client: &mut tokio_postgres::Client, cfg: &Config) -> anyhow::Result<()> {
    for (name, sql) in render(cfg) {
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Overrides;

    #[test]
    fn renders_every_placeholder() {
        let cfg = Config::from_toml("table = \"Outbox_2\"", &Overrides::default()).unwrap();
        let script = script(&cfg);
        assert!(!script.contains("{{"), "unfilled placeholder in:\n{script}");
        assert!(script.contains(r#""public"."Outbox_2""#));
        assert!(script.contains("'outbox_relay.public.Outbox_2'"));
    }
}
