//! Security and bad input (issue 5), against real PostgreSQL and real HTTP:
//! - [`identifiers`]: schema and table names that try to smuggle SQL are refused by every
//!   command before anything reaches the database;
//! - [`sse_tokens`]: forged, foreign, expired, malformed and oversized SSE tokens are refused,
//!   and under load no subscriber sees another org's events;
//! - [`sse_cursors`]: resume cursors a relay did not issue for the org are refused, and a
//!   crowd resuming at once reads a few pages at a time;
//! - [`config_fuzz`] and [`envelope_fuzz`]: property tests over the config parser and the
//!   envelope and signature builder;
//! - [`hosts`]: a rebinding host name gets 421 on every route; `/metrics` can need a token;
//! - [`connections`]: idle and trickling clients are cut off, and connection and stream caps
//!   answer 503 while delivery goes on;
//! - [`egress`]: with `[egress] deny_private_addresses` on, webhook URLs that reach loopback
//!   are refused at load (IP literals) or at connect time (names), and allowed networks pass;
//! - [`odd_payloads`]: payloads PostgreSQL stores (10 000 levels deep, 5 MB, line breaks in
//!   a text column, text that is not JSON) through the relay to webhooks and streams;
//! - [`wrong_table`]: `migrate` on a table that is not an outbox changes nothing;
//! - [`secrets_at_rest`]: secrets other users can read (a config or secret file's mode, a
//!   password in `--database-url`) are warned about once, never shown.

mod config_fuzz;
mod connections;
mod egress;
mod envelope_fuzz;
mod hosts;
mod identifiers;
mod odd_payloads;
mod secrets_at_rest;
mod sse_cursors;
mod sse_tokens;
mod wrong_table;

/// Proptest settings: `n` cases (modest, so the suite stays quick on a small machine).
fn cases(n: u32) -> proptest::test_runner::Config {
    proptest::test_runner::Config {
        cases: n,
        // Shrunk failures are printed; nothing is written into the source tree.
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    }
}
