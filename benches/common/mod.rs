//! What the benchmarks share (benches/sse.rs, benches/relay/): the database server
//! ([`db`]), the relay as a child process and the CPU and memory figures read from `/proc`
//! ([`proc`]), the timer-paced insert load ([`load`]) and the statistics ([`stats`]).
//!
//! Each bench uses a part of it, so unused items are allowed here.
#![allow(dead_code)]

pub mod db;
pub mod load;
pub mod proc;
pub mod stats;

use std::path::PathBuf;
use std::str::FromStr;

use memchr::memmem;

/// Whether `cargo bench` started this binary (it passes `--bench`). `cargo test
/// --all-targets` runs bench targets as tests too: then this prints how to run the bench and
/// returns false, since minutes of saturated CPU have no place in a test run.
pub fn started_by_cargo_bench(name: &str) -> bool {
    let bench = std::env::args().any(|a| a == "--bench");
    if !bench {
        println!("{name}: a benchmark; run it with `cargo bench --bench {name}`");
    }
    bench
}

/// The relay binary to measure: `var`'s path if set, else the one cargo built for this
/// bench (bench profile = release settings).
pub fn relay_bin(var: &str) -> anyhow::Result<PathBuf> {
    let bin = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_outbox-relay")));
    if !bin.is_file() {
        anyhow::bail!(
            "relay binary {} not found (build with `cargo build --release` or set {var})",
            bin.display()
        );
    }
    Ok(bin)
}

/// A numeric knob from the environment, or its default.
pub fn env_num<T: FromStr>(name: &str, default: T) -> anyhow::Result<T> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .map_err(|_| anyhow::anyhow!("{name}={v:?} is not a number")),
        Err(_) => Ok(default),
    }
}

/// The decimal number after `key` in `hay` (JSON: `"bench_n": 123`).
pub fn number_after(hay: &[u8], key: &memmem::Finder<'_>) -> Option<u32> {
    let at = key.find(hay)? + key.needle().len();
    let digits = hay[at..].iter().skip_while(|b| **b == b' ');
    let mut n: u32 = 0;
    let mut any = false;
    for b in digits.take_while(|b| b.is_ascii_digit()) {
        n = n.checked_mul(10)?.checked_add((b - b'0') as u32)?;
        any = true;
    }
    any.then_some(n)
}
