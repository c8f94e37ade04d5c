//! The integration suite, as one binary: each module below was its own test binary, and
//! each compiled the shared harness (`common`) again. Real servers throughout: PostgreSQL
//! (DATABASE_URL, else a throwaway cluster), HTTP receivers, PgBouncer, nats-server, a
//! browser.
//!
//! `cargo test` runs the quick checks; the long fault and load runs are `#[ignore]`d and
//! run by `cargo test -- --ignored` (`.ci/run` runs both).

mod common;

mod audit;
mod background;
mod breaker;
mod cluster;
mod dashboard;
mod dashboard_api;
mod delivery;
mod failover;
mod faults;
mod js_client;
mod nats;
mod nats_harness;
mod ops;
mod ordering;
mod pooler;
mod privileges;
mod process;
mod rabbitmq;
mod rate_limit;
mod readme;
mod redis;
mod replay;
mod router_access;
mod run_once;
mod security;
mod signing;
mod smoke;
mod sse;
mod sse_external;
mod systemd;
mod tls;
