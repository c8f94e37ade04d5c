//! What `db` needs to know of the outbox table beyond its shape: its names, and the settings
//! that decide which statements, indexes and privileges the relay uses on it.
//!
//! Built from the config (`crate::config::Config::table_settings`), so that `db` depends on
//! plain values, never on the config itself.

use crate::db::ident::{derived_name, quote_ident, Ident, MAX_IDENT_LEN};

/// The outbox table and the settings that change the SQL around it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSettings {
    pub schema: Ident,
    pub table: Ident,
    /// LIKE patterns of the event types delivered in entity order, sorted and distinct;
    /// empty when nothing is ordered. The claim gates them, `migrate` indexes them.
    pub ordered_types: Vec<String>,
    /// Server-Sent Events are served: `migrate` builds the stream index.
    pub sse: bool,
    /// Retention deletes delivered rows: `run` needs DELETE on the table.
    pub retention: bool,
}

impl TableSettings {
    /// `"public"."OutboxEvent"`, quoted and safe to splice into SQL.
    pub fn qualified_table(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }

    /// Another object in the table's schema (`name` unquoted), qualified and quoted.
    pub fn in_schema(&self, name: &str) -> String {
        format!("{}.{}", self.schema, quote_ident(name))
    }

    /// NOTIFY channel for this table: derived from schema and table so that two relays
    /// serving two tables in one database never wake each other.
    pub fn channel(&self) -> String {
        let name = format!(
            "outbox_relay.{}.{}",
            self.schema.as_str(),
            self.table.as_str()
        );
        name.chars().take(MAX_IDENT_LEN).collect()
    }

    /// The advisory lock of the wake-up handshake for this table (see `crate::relay::doze`):
    /// inserts take it shared, a relay about to sleep takes it exclusively. The two-key
    /// form, so it cannot collide with an app's single-`bigint` advisory locks: a fixed class
    /// ("obrw" in ASCII) and a key derived from the NOTIFY channel, so each table has its own.
    pub fn wake_lock(&self) -> (i32, i32) {
        use sha2::{Digest, Sha256};
        const CLASS: i32 = 0x6f62_7277;
        let digest = Sha256::digest(self.channel().as_bytes());
        (
            CLASS,
            i32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]),
        )
    }

    /// The table of paused endpoints beside the outbox table (unquoted, in the same schema).
    pub fn paused_table(&self) -> String {
        derived_name("", &self.table, "_relay_paused")
    }

    /// [`Self::paused_table`], schema-qualified and quoted.
    pub fn qualified_paused_table(&self) -> String {
        self.in_schema(&self.paused_table())
    }

    /// The audit log of operator actions beside the outbox table (unquoted, in the same
    /// schema).
    pub fn audit_table(&self) -> String {
        derived_name("", &self.table, "_relay_audit")
    }

    /// [`Self::audit_table`], schema-qualified and quoted.
    pub fn qualified_audit_table(&self) -> String {
        self.in_schema(&self.audit_table())
    }

    /// The shared token buckets of rate-limited endpoints beside the outbox table (unquoted,
    /// in the same schema).
    pub fn rates_table(&self) -> String {
        derived_name("", &self.table, "_relay_rates")
    }

    /// Each relay instance's latest report, for the cluster-wide dashboard (unquoted, in the
    /// same schema).
    pub fn instances_table(&self) -> String {
        derived_name("", &self.table, "_relay_instances")
    }

    /// The relays' per-second delivery counts of the last hour (unquoted, in the same schema).
    pub fn activity_table(&self) -> String {
        derived_name("", &self.table, "_relay_activity")
    }

    /// The default config's settings for `table` in `public`, for unit tests.
    #[cfg(test)]
    pub(crate) fn for_tests(table: &str) -> Self {
        Self {
            schema: Ident::new("public").unwrap(),
            table: Ident::new(table).unwrap(),
            ordered_types: Vec::new(),
            sse: false,
            retention: true,
        }
    }
}
