//! Least privilege: what each command needs of the objects `migrate` creates (the schema,
//! the outbox table, the paused-endpoints and audit tables beside it, the stream sequence), the GRANTs
//! that give a runtime role all of it (`migrate --print-grants ROLE`), and the start-up check
//! that turns a missing privilege into one error naming it and its GRANT.
//!
//! Table-level privileges, not column-level: the relay updates a dozen columns (status,
//! lease, token, history...) and a column list would break with every release that adds one.
//! Needs nothing for advisory locks, LISTEN/NOTIFY or the catalogs. The notify trigger's
//! function runs as the inserting role, but PostgreSQL checks EXECUTE only when a trigger is
//! created, not when it fires: an app role needs INSERT (and USAGE on the stream sequence,
//! which the insert's default draws from), nothing on the function.

use std::fmt;

use anyhow::Context;
use tokio_postgres::Client;

use crate::db::ident::{derived_name, quote_ident, Ident};
use crate::db::table::TableSettings;

/// What a command does with the table, for the privileges it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// `status`: reads.
    Status,
    /// `retry`, `skip`, `replay`: update rows (and record the action in the audit log).
    Change,
    /// `purge`: deletes rows (found `FOR UPDATE`, which needs UPDATE too), audited.
    Purge,
    /// `publish`: inserts.
    Publish,
    /// `pause`, `resume`: the paused table (INSERT, UPDATE, DELETE), releasing held rows
    /// (UPDATE), audited.
    Pause,
    /// `run`: claims and records (UPDATE, and `FOR SHARE` on the paused table, which needs
    /// UPDATE), retention (DELETE), the dashboard's pause and resume (INSERT and DELETE on
    /// the paused table), its audit log (INSERT and SELECT), rate limits (SELECT, INSERT
    /// and UPDATE on the rates table).
    Run,
}

/// The kind of object a privilege is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Schema,
    Table,
    Sequence,
}

impl Kind {
    fn sql(self) -> &'static str {
        match self {
            Kind::Schema => "schema",
            Kind::Table => "table",
            Kind::Sequence => "sequence",
        }
    }
}

/// One privilege on one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Privilege {
    /// `SELECT`, `USAGE`, ...
    pub privilege: &'static str,
    pub kind: Kind,
    /// The schema's bare name.
    schema: String,
    /// The object's bare name (the schema's, for a schema).
    name: String,
}

impl Privilege {
    fn new(privilege: &'static str, kind: Kind, schema: &Ident, name: &str) -> Self {
        Self {
            privilege,
            kind,
            schema: schema.as_str().to_owned(),
            name: name.to_owned(),
        }
    }

    /// The object, quoted (schema-qualified unless it is the schema).
    pub fn object(&self) -> String {
        match self.kind {
            Kind::Schema => quote_ident(&self.schema),
            _ => format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name)),
        }
    }
}

impl fmt::Display for Privilege {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            Kind::Schema => write!(f, "{} on schema {}", self.privilege, self.object()),
            Kind::Table => write!(f, "{} on {}", self.privilege, self.object()),
            Kind::Sequence => write!(f, "{} on sequence {}", self.privilege, self.object()),
        }
    }
}

fn grant(privileges: &[&str], kind: Kind, object: &str, role: &str) -> String {
    let on = match kind {
        Kind::Schema => "SCHEMA",
        Kind::Table => "TABLE",
        Kind::Sequence => "SEQUENCE",
    };
    format!(
        "GRANT {} ON {on} {object} TO {role};",
        privileges.join(", ")
    )
}

/// The stream sequence's bare name (migration 005).
fn stream_seq(settings: &TableSettings) -> String {
    derived_name("", &settings.table, "_stream_seq")
}

/// The privileges `what` needs with these settings.
pub fn needs(settings: &TableSettings, what: Use) -> Vec<Privilege> {
    let s = &settings.schema;
    let table = |p| Privilege::new(p, Kind::Table, s, settings.table.as_str());
    let paused = |p| Privilege::new(p, Kind::Table, s, &settings.paused_table());
    // Every operator action is recorded (`crate::db::audit`); the dashboard lists the log.
    let audit = |p| Privilege::new(p, Kind::Table, s, &settings.audit_table());
    let rates = |p| Privilege::new(p, Kind::Table, s, &settings.rates_table());
    let instances = |p| Privilege::new(p, Kind::Table, s, &settings.instances_table());
    let activity = |p| Privilege::new(p, Kind::Table, s, &settings.activity_table());
    let mut out = vec![
        Privilege::new("USAGE", Kind::Schema, s, s.as_str()),
        table("SELECT"),
    ];
    match what {
        Use::Status => out.push(paused("SELECT")),
        Use::Change => out.extend([table("UPDATE"), audit("INSERT")]),
        Use::Purge => out.extend([table("UPDATE"), table("DELETE"), audit("INSERT")]),
        Use::Pause => {
            out.push(table("UPDATE"));
            out.extend(["SELECT", "INSERT", "UPDATE", "DELETE"].map(paused));
            out.push(audit("INSERT"));
        }
        Use::Publish => out.extend([
            table("INSERT"),
            Privilege::new("USAGE", Kind::Sequence, s, &stream_seq(settings)),
        ]),
        Use::Run => {
            out.push(table("UPDATE"));
            if settings.retention {
                out.push(table("DELETE"));
            }
            out.extend(["SELECT", "INSERT", "UPDATE", "DELETE"].map(paused));
            out.extend(["SELECT", "INSERT"].map(audit));
            out.extend(["SELECT", "INSERT", "UPDATE"].map(rates));
            out.extend(["SELECT", "INSERT", "UPDATE", "DELETE"].map(instances));
            out.extend(["SELECT", "INSERT", "DELETE"].map(activity));
        }
    }
    out
}

/// `migrate --print-grants ROLE`: every GRANT the runtime role needs for all commands, the
/// dashboard and SSE, as a script a DBA can run (idempotent: granting twice is harmless).
pub fn grants_script(settings: &TableSettings, role: &Ident) -> String {
    let s = &settings.schema;
    let r = role.to_string();
    let all = ["SELECT", "INSERT", "UPDATE", "DELETE"];
    [
        format!(
            "-- outbox-relay {}: the privileges runtime role {r} needs on {} (run, the \
             dashboard, SSE,\n-- status, retry, skip, purge, publish). Run as the owner (the \
             role that ran migrate) or a superuser.",
            env!("CARGO_PKG_VERSION"),
            settings.qualified_table()
        ),
        grant(&["USAGE"], Kind::Schema, &s.to_string(), &r),
        grant(&all, Kind::Table, &settings.qualified_table(), &r),
        grant(
            &all,
            Kind::Table,
            &settings.in_schema(&settings.paused_table()),
            &r,
        ),
        grant(
            &["SELECT", "INSERT"],
            Kind::Table,
            &settings.in_schema(&settings.audit_table()),
            &r,
        ),
        grant(
            &["SELECT", "INSERT", "UPDATE"],
            Kind::Table,
            &settings.in_schema(&settings.rates_table()),
            &r,
        ),
        grant(
            &all,
            Kind::Table,
            &settings.in_schema(&settings.instances_table()),
            &r,
        ),
        grant(
            &["SELECT", "INSERT", "DELETE"],
            Kind::Table,
            &settings.in_schema(&settings.activity_table()),
            &r,
        ),
        grant(
            &["USAGE"],
            Kind::Sequence,
            &settings.in_schema(&stream_seq(settings)),
            &r,
        ),
        format!(
            "-- An adopted table whose id is a serial (DEFAULT nextval(...), not an IDENTITY \
             column):\n-- `publish` and app roles also need USAGE on that sequence. Its name: \
             SELECT pg_get_serial_sequence('{}', 'id');",
            settings.qualified_table().replace('\'', "''")
        ),
        format!(
            "-- Optional: without it the oldest-transaction gauge and warning see only {r}'s \
             own sessions.\n-- GRANT pg_read_all_stats TO {r};"
        ),
    ]
    .join("\n")
        + "\n"
}

/// The privileges a role lacks, as one error: each one named, with the GRANT that fixes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingPrivileges {
    /// The role's bare name.
    pub role: String,
    pub missing: Vec<Privilege>,
}

impl fmt::Display for MissingPrivileges {
    /// One line; privileges on the same object share a phrase and a GRANT.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let role = quote_ident(&self.role);
        let mut by_object: Vec<(&Privilege, Vec<&str>)> = Vec::new();
        for p in &self.missing {
            match by_object.iter_mut().find(|(o, _)| o.object() == p.object()) {
                Some((_, privileges)) => privileges.push(p.privilege),
                None => by_object.push((p, vec![p.privilege])),
            }
        }
        let what: Vec<String> = by_object
            .iter()
            .map(|(p, privileges)| {
                let kind = match p.kind {
                    Kind::Table => "",
                    Kind::Schema => "schema ",
                    Kind::Sequence => "sequence ",
                };
                format!("{} on {kind}{}", privileges.join(", "), p.object())
            })
            .collect();
        let fix: Vec<String> = by_object
            .iter()
            .map(|(p, privileges)| grant(privileges, p.kind, &p.object(), &role))
            .collect();
        write!(
            f,
            "role {role} lacks {}: {} (`outbox-relay migrate --print-grants {}` prints them all)",
            what.join("; "),
            fix.join(" "),
            self.role
        )
    }
}

impl std::error::Error for MissingPrivileges {}

/// Which of `wanted` the session's role has, in one statement. Objects are found in the
/// catalog by name, not resolved through the schema (which needs USAGE on it); a missing one
/// is not reported here (the shape check or the first statement says `migrate` has not run).
const CHECK: &str = "
SELECT current_user::text, array_agg(CASE u.k
    WHEN 'schema' THEN (SELECT has_schema_privilege(n.oid, u.p)
                          FROM pg_namespace n WHERE n.nspname = u.s)
    WHEN 'table' THEN (SELECT has_table_privilege(c.oid, u.p)
                         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                        WHERE n.nspname = u.s AND c.relname = u.o)
    ELSE (SELECT has_sequence_privilege(c.oid, u.p)
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = u.s AND c.relname = u.o AND c.relkind = 'S')
    END ORDER BY u.i)
  FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) WITH ORDINALITY AS u(k, s, o, p, i)";

/// Checks that the session's role has what `what` needs: an error of type
/// [`MissingPrivileges`] naming every one it lacks.
pub async fn check(client: &Client, settings: &TableSettings, what: Use) -> anyhow::Result<()> {
    let wanted = needs(settings, what);
    let col = |f: fn(&Privilege) -> &str| wanted.iter().map(f).collect::<Vec<&str>>();
    // Through `statements`: no named statement left behind a transaction-mode pooler.
    let row = super::statements::query_one(
        client,
        CHECK,
        &[
            &col(|p| p.kind.sql()),
            &col(|p| &p.schema),
            &col(|p| &p.name),
            &col(|p| p.privilege),
        ],
    )
    .await
    .context("checking the role's privileges")?;
    let has: Vec<Option<bool>> = row.get(1);
    let missing: Vec<Privilege> = wanted
        .into_iter()
        .zip(has)
        .filter(|(_, has)| *has == Some(false))
        .map(|(p, _)| p)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(MissingPrivileges {
        role: row.get(0),
        missing,
    }
    .into())
}

/// Whether `e` is (or wraps) a [`MissingPrivileges`].
pub fn is_missing(e: &anyhow::Error) -> bool {
    e.downcast_ref::<MissingPrivileges>().is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> TableSettings {
        TableSettings::for_tests("OutboxEvent")
    }

    #[test]
    fn grants_cover_every_use_and_are_quoted() {
        let settings = settings();
        let role = Ident::new("relay_rt").unwrap();
        let script = grants_script(&settings, &role);
        let lines: Vec<&str> = script.lines().filter(|l| !l.starts_with("--")).collect();
        assert_eq!(
            lines,
            [
                r#"GRANT USAGE ON SCHEMA "public" TO "relay_rt";"#,
                r#"GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE "public"."OutboxEvent" TO "relay_rt";"#,
                r#"GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE "public"."OutboxEvent_relay_paused" TO "relay_rt";"#,
                r#"GRANT SELECT, INSERT ON TABLE "public"."OutboxEvent_relay_audit" TO "relay_rt";"#,
                r#"GRANT SELECT, INSERT, UPDATE ON TABLE "public"."OutboxEvent_relay_rates" TO "relay_rt";"#,
                r#"GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE "public"."OutboxEvent_relay_instances" TO "relay_rt";"#,
                r#"GRANT SELECT, INSERT, DELETE ON TABLE "public"."OutboxEvent_relay_activity" TO "relay_rt";"#,
                r#"GRANT USAGE ON SEQUENCE "public"."OutboxEvent_stream_seq" TO "relay_rt";"#,
            ]
        );
        for what in [
            Use::Status,
            Use::Change,
            Use::Purge,
            Use::Publish,
            Use::Pause,
            Use::Run,
        ] {
            for p in needs(&settings, what) {
                let covered = lines
                    .iter()
                    .any(|l| l.contains(p.privilege) && l.contains(&format!(" {} TO", p.object())));
                assert!(covered, "{p} ({what:?}) is not granted by:\n{script}");
            }
        }
    }

    #[test]
    fn run_needs_delete_only_with_retention() {
        let deletes = |c: &TableSettings| {
            needs(c, Use::Run)
                .iter()
                .any(|p| p.privilege == "DELETE" && p.object() == c.qualified_table())
        };
        assert!(deletes(&settings()));
        assert!(!deletes(&TableSettings {
            retention: false,
            ..settings()
        }));
    }

    #[test]
    fn privileges_on_one_object_share_a_grant() {
        let settings = settings();
        let e = MissingPrivileges {
            role: "relay".into(),
            missing: needs(&settings, Use::Purge),
        };
        assert_eq!(
            e.to_string(),
            r#"role "relay" lacks USAGE on schema "public"; SELECT, UPDATE, DELETE on "public"."OutboxEvent"; INSERT on "public"."OutboxEvent_relay_audit": GRANT USAGE ON SCHEMA "public" TO "relay"; GRANT SELECT, UPDATE, DELETE ON TABLE "public"."OutboxEvent" TO "relay"; GRANT INSERT ON TABLE "public"."OutboxEvent_relay_audit" TO "relay"; (`outbox-relay migrate --print-grants relay` prints them all)"#
        );
    }

    #[test]
    fn the_error_is_one_line_with_the_fix() {
        let settings = settings();
        let update = needs(&settings, Use::Change)
            .into_iter()
            .find(|p| p.privilege == "UPDATE")
            .unwrap();
        let e = MissingPrivileges {
            role: "relay".into(),
            missing: vec![update],
        };
        assert_eq!(
            e.to_string(),
            r#"role "relay" lacks UPDATE on "public"."OutboxEvent": GRANT UPDATE ON TABLE "public"."OutboxEvent" TO "relay"; (`outbox-relay migrate --print-grants relay` prints them all)"#
        );
    }
}
