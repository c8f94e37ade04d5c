//! SQL identifiers that come from configuration (schema, table).
//!
//! The table name is operator input that ends up inside SQL text, so it is validated against a
//! strict allow-list *and* always double-quoted. Quoting alone would be enough for safety; the
//! allow-list is there so that a typo such as `x"; DROP TABLE y; --` fails loudly at start-up
//! instead of creating a table with a surprising name.

use std::fmt;

/// Longest identifier PostgreSQL keeps (NAMEDATALEN - 1); longer names are silently truncated.
pub const MAX_IDENT_LEN: usize = 63;

/// Why an identifier from the config was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentError {
    #[error("is empty")]
    Empty,
    #[error("is {0} bytes long; PostgreSQL identifiers are at most 63")]
    TooLong(usize),
    #[error(
        "{0:?} is not a plain identifier: use letters, digits and underscores, not starting \
         with a digit"
    )]
    Invalid(String),
}

/// A validated identifier, rendered double-quoted (case preserved, as Prisma creates tables).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Ident(String);

impl Ident {
    /// Accepts `[A-Za-z_][A-Za-z0-9_]*`, at most 63 bytes.
    pub fn new(raw: &str) -> Result<Self, IdentError> {
        if raw.is_empty() {
            return Err(IdentError::Empty);
        }
        if raw.len() > MAX_IDENT_LEN {
            return Err(IdentError::TooLong(raw.len()));
        }
        let mut chars = raw.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
        if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(IdentError::Invalid(raw.to_owned()));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The bare name, as the catalog stores it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Ident {
    /// Always quoted: `"OutboxEvent"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", quote_ident(&self.0))
    }
}

/// Quotes any name the way `quote_ident()` would, doubling embedded quotes. Used for names
/// read back from the catalog (an ORM-made enum type), which need no validation.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes a string literal, doubling embedded single quotes (standard_conforming_strings is on
/// in every supported PostgreSQL).
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// A derived name (index, function, channel) built from a prefix and the table name, cut to
/// fit in 63 bytes so PostgreSQL never truncates it differently from us.
pub fn derived_name(prefix: &str, table: &Ident, suffix: &str) -> String {
    let room = MAX_IDENT_LEN.saturating_sub(prefix.len() + suffix.len());
    let table: String = table.as_str().chars().take(room).collect();
    format!("{prefix}{table}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_orm_style_names_and_quotes_them() {
        assert_eq!(
            Ident::new("OutboxEvent").unwrap().to_string(),
            "\"OutboxEvent\""
        );
        assert_eq!(
            Ident::new("outbox_event_2").unwrap().to_string(),
            "\"outbox_event_2\""
        );
        assert_eq!(Ident::new("_x").unwrap().as_str(), "_x");
    }

    #[test]
    fn refuses_injection_and_odd_names() {
        for bad in [
            r#"x"; DROP TABLE y; --"#,
            "1abc",
            "a-b",
            "a b",
            "ünï",
            "a.b",
            "a\"b",
        ] {
            assert!(
                matches!(Ident::new(bad), Err(IdentError::Invalid(_))),
                "{bad}"
            );
        }
        assert_eq!(Ident::new(""), Err(IdentError::Empty));
        assert_eq!(Ident::new(&"a".repeat(64)), Err(IdentError::TooLong(64)));
    }

    #[test]
    fn quoting_doubles_quotes() {
        assert_eq!(quote_ident(r#"we"ird"#), r#""we""ird""#);
        assert_eq!(quote_literal("it's"), "'it''s'");
    }

    #[test]
    fn derived_names_fit_postgres_limit() {
        let long = Ident::new(&"t".repeat(63)).unwrap();
        let name = derived_name("outbox_relay_", &long, "_pending_idx");
        assert_eq!(name.len(), 63);
        assert!(name.starts_with("outbox_relay_t") && name.ends_with("_pending_idx"));
    }
}
