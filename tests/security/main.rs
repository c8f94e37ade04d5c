//! Security and bad input (issue 5), against real PostgreSQL and real HTTP:
//! - [`identifiers`]: schema and table names that try to smuggle SQL are refused by every
//!   command before anything reaches the database;
//! - [`sse_tokens`]: forged, foreign, expired, malformed and oversized SSE tokens are refused,
//!   and under load no subscriber sees another org's events;
//! - [`fuzz`]: property tests over the config parser and the envelope and signature builder;
//! - [`odd_payloads`]: payloads PostgreSQL stores (10 000 levels deep, 5 MB, line breaks in
//!   a text column, text that is not JSON) through the relay to webhooks and streams.

#[path = "../common/mod.rs"]
mod common;

mod fuzz;
mod identifiers;
mod odd_payloads;
mod sse_tokens;
