//! Command-line interface (contract section 2). Every global option is also an environment
//! variable; precedence is flag, then environment, then the config file.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::db::ident::{Ident, IdentError};
use crate::when::When;

#[derive(Debug, Parser)]
#[command(
    name = "outbox-relay",
    version,
    about = "Relays transactional-outbox rows from PostgreSQL to signed webhooks",
    long_about = "Relays transactional-outbox rows from PostgreSQL to signed webhooks.\n\n\
        Apps insert an OutboxEvent row in the same transaction as their change; the relay \
        wakes on NOTIFY, claims rows with FOR UPDATE SKIP LOCKED and delivers each at least \
        once, with retries, backoff and dead letters.\n\n\
        Start with `outbox-relay dev` for a self-contained demo."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args, Clone)]
pub struct Global {
    /// Config file (TOML).
    #[arg(long, global = true, env = "OUTBOX_RELAY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// PostgreSQL URL; overrides `database_url` in the config file.
    #[arg(
        long,
        global = true,
        env = "DATABASE_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub database_url: Option<String>,
    /// Log format on stderr. Verbosity follows RUST_LOG (default: info).
    #[arg(long, global = true, env = "OUTBOX_RELAY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the relay daemon.
    Run,
    /// Create the outbox table, or adopt one an ORM made (idempotent).
    Migrate {
        /// Print the SQL instead of running it.
        #[arg(long)]
        print: bool,
        /// Print the GRANTs a runtime role (neither superuser nor the table's owner) needs for
        /// every command, the dashboard and SSE, instead of migrating.
        #[arg(long, value_name = "ROLE", value_parser = parse_role, conflicts_with = "print")]
        print_grants: Option<Ident>,
    },
    /// Counts by status, oldest pending age, dead letters.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Put FAILED events back to PENDING (retry_count reset; endpoints that already accepted
    /// them are not sent them again).
    Retry {
        /// Event ids to retry.
        #[arg(long = "id", value_name = "ID", num_args = 1.., required_unless_present = "failed", conflicts_with = "failed")]
        ids: Vec<String>,
        /// Retry every FAILED event (optionally only those matching --type).
        #[arg(long)]
        failed: bool,
        /// Glob on event_type, e.g. 'PROJECT.*' (with --failed).
        #[arg(long = "type", value_name = "GLOB", requires = "failed")]
        event_type: Option<String>,
    },
    /// Give up on FAILED events: they stay FAILED but no longer hold back the later events of
    /// their entity (ordering = "entity").
    Skip {
        /// Event ids to skip.
        #[arg(long = "id", value_name = "ID", num_args = 1.., required = true)]
        ids: Vec<String>,
    },
    /// Send events already delivered to one endpoint again, to that endpoint only (a receiver
    /// lost data). Counts first: nothing changes without --yes.
    Replay {
        /// The sink to send them to again: its name in the config. Only events it accepted
        /// (COMPLETED, still in the table) are sent, and no other sink gets them again.
        #[arg(long, value_name = "NAME")]
        endpoint: String,
        /// Events created this long ago or later, e.g. 2h; or a time, e.g.
        /// 2026-12-06T10:00:00Z.
        #[arg(long, value_parser = When::parse, value_name = "WHEN")]
        since: When,
        /// Events created before this (a duration ago or a time); default: now.
        #[arg(long, value_parser = When::parse, value_name = "WHEN")]
        until: Option<When>,
        /// Glob on event_type, e.g. 'PROJECT.*'.
        #[arg(long = "type", value_name = "GLOB", default_value = "*")]
        event_type: String,
        /// Replay them (without it, only count).
        #[arg(long)]
        yes: bool,
    },
    /// Pause a sink on every relay: its events are held (PENDING, not attempted) until
    /// `resume`.
    Pause {
        /// The sink's name in the config.
        #[arg(long, value_name = "NAME")]
        endpoint: String,
    },
    /// Resume a sink, whatever held it: an operator's pause, its open circuit breaker, or a
    /// disable after failing for `disable_after`. Its held events are delivered again.
    Resume {
        /// The sink's name in the config.
        #[arg(long, value_name = "NAME")]
        endpoint: String,
    },
    /// Delete COMPLETED events older than a duration, in small batches.
    Purge {
        /// e.g. 7d, 12h.
        #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
        older_than: std::time::Duration,
    },
    /// Insert one event (for scripts and smoke tests).
    Publish {
        /// event_type, e.g. PROJECT.UPDATED.
        #[arg(long = "type", value_name = "TYPE")]
        event_type: String,
        #[arg(long)]
        org: Option<String>,
        #[arg(long, requires = "entity_id")]
        entity_type: Option<String>,
        #[arg(long, requires = "entity_type")]
        entity_id: Option<String>,
        /// JSON payload (default {}).
        #[arg(long, default_value = "{}")]
        payload: String,
    },
    /// Print the SQL the relay runs on the table, as it prepares it ($1, $2... are the
    /// parameters), for review or EXPLAIN. Reads the table's shape; changes nothing.
    Statements {
        /// Print only this statement, bare, for scripts (`--list` names them).
        #[arg(value_name = "NAME", conflicts_with = "list")]
        name: Option<String>,
        /// Print the statements' names.
        #[arg(long)]
        list: bool,
    },
    /// Self-contained demo: database, relay, sample receiver and sample events. From a
    /// --config file it takes only `[http] listen` and `database_url`.
    Dev {
        /// Address of the dashboard, SSE, /healthz and /metrics [default: `[http] listen` of
        /// --config, else 127.0.0.1:9470, or a free port when that one is taken]. Port 0
        /// picks a free port; a port in use is an error.
        #[arg(long, value_name = "ADDR")]
        listen: Option<std::net::SocketAddr>,
    },
    /// Validate the config and exit (status 2 when invalid). Prints the `whpk_` public key
    /// of every ed25519 (`whsk_`) signing key, for receivers verifying `v1a` signatures.
    CheckConfig,
    /// Make a new signing key for a sink's `secret` and print it: an ed25519 `whsk_` key and
    /// the `whpk_` public key receivers verify its `v1a` signatures with, or with --hmac a
    /// `whsec_` secret (`v1`) both sides share. Reads no config.
    Keygen {
        /// A symmetric `whsec_` secret instead of an ed25519 key pair.
        #[arg(long)]
        hmac: bool,
    },
}

/// A role name for `--print-grants`: a plain identifier, quoted in the SQL it goes into.
fn parse_role(raw: &str) -> Result<Ident, IdentError> {
    Ident::new(raw)
}
