//! outbox-relay: delivers transactional-outbox rows from PostgreSQL to signed webhooks and
//! to SSE subscribers.
//!
//! Map of the crate:
//! - [`config`]: the TOML config, environment and flags, validated once; [`secret`] keeps
//!   secret values out of logs.
//! - [`db`]: connections ([`db::pool`]), the migration ([`db::migrate`], SQL in `sql/`), the
//!   table's shape ([`db::shape`]), the statements ([`db::queries`]), what it checks of the
//!   server it reached ([`db::server`]) and of its role ([`db::privileges`]). Typed claim,
//!   record and lease SQL is in [`db::claims`]; operator actions and queue gauges (for the
//!   commands and the dashboard alike) in [`db::admin`]; upkeep statements in
//!   [`db::maintenance`]; the dashboard's reads in [`db::browse`]; the circuit breakers'
//!   shared state in [`db::circuit`]. `db` takes plain values
//!   ([`db::table::TableSettings`], built by [`config::Config::table_settings`]), never the
//!   config, which depends on `db` for its identifiers and TLS settings.
//! - [`relay`]: the claim loop. It wakes on NOTIFY ([`relay::listener`]) or a timer, claims
//!   with `FOR UPDATE SKIP LOCKED`, spawns deliveries, and [`relay::recorder`] writes
//!   outcomes back in batches and keeps leases alive.
//! - [`sinks`]: where events go. Routing, the outcome of an attempt, endpoint pause and the
//!   circuit breaker ([`sinks::breaker`]) are shared; [`sinks::webhook`] (Standard Webhooks
//!   signing, egress guard), the brokers and [`sinks::sse`] (the fan-out hub, cursors, the
//!   tail reader) are the sinks.
//! - [`background`]: periodic upkeep run after claim rounds (housekeeping, retention).
//! - [`backoff`]: retry delays for events, and the reconnect backoff of the daemon's loops.
//! - [`event`]: an event, a claimed one, and the JSON envelope; [`outcome`]: what a delivery comes to
//!   and what it writes back.
//! - [`health`]: liveness the HTTP side, systemd and the daemon read; what they share.
//! - [`observe`]: metrics, the dashboard's in-memory activity, log-flood guards.
//! - [`logging`]: log lines, with control characters in logged values escaped.
//! - [`http`]: SSE, health, `/metrics` and the dashboard ([`http::dashboard`]).
//! - [`daemon`]: `run`: start-up, shutdown, systemd readiness and the watchdog.
//! - [`commands`]: `migrate`, `status`, `retry`, `skip`, `purge`, `replay`, `pause`,
//!   `resume`, `publish` and the `dev` demo: arguments and printing around [`db::admin`].
//! - [`pgtemp`]: a throwaway PostgreSQL cluster for `dev` and the tests.

pub mod background;
pub mod backoff;
pub mod cli;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod db;
pub mod event;
pub mod health;
pub mod http;
pub mod logging;
pub mod observe;
pub mod outcome;
pub mod pgtemp;
pub mod relay;
pub mod secret;
pub mod sinks;
pub mod when;
