//! outbox-relay: delivers transactional-outbox rows from PostgreSQL to signed webhooks.
//!
//! Map of the crate:
//! - [`config`]: the TOML config, environment and flags, validated once; [`secret`] keeps
//!   secret values out of logs.
//! - [`db`]: connections ([`db::pool`]), the migration ([`db::migrate`], SQL in `sql/`), the
//!   table's shape ([`db::shape`]), every query ([`db::queries`]), what it checks of the
//!   server it reached ([`db::server`]: writable, not a standby) and of its role
//!   ([`db::privileges`]: the GRANTs each command needs). Operator actions and the queue
//!   gauges, for the commands and the dashboard alike, are in [`db::admin`]; the daemon's
//!   upkeep statements (housekeeping, retention) in [`db::maintenance`].
//! - [`relay`]: the daemon. The claim loop wakes on NOTIFY ([`relay::listener`]) or a timer,
//!   claims with `FOR UPDATE SKIP LOCKED`, spawns deliveries, and [`relay::recorder`] writes
//!   outcomes back in batches and keeps leases alive.
//! - [`deliver`]: routing, Standard Webhooks signing, backoff and the outcome of an attempt;
//!   [`deliver::pause`] pauses an endpoint on every relay sharing the table;
//!   [`deliver::egress`] keeps webhook requests off private addresses when asked to.
//! - [`logging`]: log lines, with control characters in logged values escaped.
//! - [`http`]: SSE, health, `/metrics` and the dashboard ([`http::dashboard`]: an embedded
//!   page and its JSON API; its reads are in [`db::browse`], its in-memory figures in
//!   [`activity`]).
//! - [`event`]: a claimed row and its JSON envelope.
//! - [`commands`]: `migrate`, `status`, `retry`, `skip`, `purge`, `publish` and the `dev`
//!   demo: arguments and printing around [`db::admin`].
//! - [`pgtemp`]: a throwaway PostgreSQL cluster for `dev` and the tests.
//! - [`systemd`]: `Type=notify` readiness, status and the watchdog, when run by systemd.

pub mod activity;
pub mod cached;
pub mod cli;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod db;
pub mod deliver;
pub mod event;
pub mod http;
pub mod incident;
pub mod logging;
pub mod metrics;
pub mod pgtemp;
pub mod relay;
pub mod retention;
pub mod secret;
pub mod shutdown;
pub mod stream;
pub mod systemd;
