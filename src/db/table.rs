//! What `db` needs to know of the outbox table beyond its shape: its names, and the settings
//! that decide which statements, indexes and privileges the relay uses on it.
//!
//! Built from the config (`crate::config::Config::table_settings`), so that `db` depends on
//! plain values, never on the config itself.

use crate::db::ident::{quote_ident, Ident};

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
