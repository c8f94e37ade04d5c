//! Security and bad input (issue 5), against real PostgreSQL and real HTTP:
//! - [`identifiers`]: schema and table names that try to smuggle SQL are refused by every
//!   command before anything reaches the database;
//! - [`sse_tokens`]: forged, foreign, expired, malformed and oversized SSE tokens are refused,
//!   and under load no subscriber sees another org's events.

#[path = "../common/mod.rs"]
mod common;

mod identifiers;
mod sse_tokens;
