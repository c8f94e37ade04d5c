//! The fault suite's harness: relay configs with every secret in play, the tally of what
//! was published against what receivers accepted, the row of docs/reliability.md's fault
//! table, and the secrets grep.

use std::collections::HashSet;
use std::time::Duration;

use tempfile::NamedTempFile;

use super::load::{Published, LOAD_TYPE};
use super::process::*;
use super::{free_addr, http_get, sse, wait_until, Receiver, SECRET};

/// A database password for the relay's URL. The test servers trust local connections and
/// ignore it; it is there so the suite can prove it never leaks.
pub const DB_PASSWORD: &str = "db-pass-7f3a9c2e";

pub fn rate() -> u32 {
    env_num("FAULT_RATE", 300)
}

pub fn load_time() -> Duration {
    Duration::from_secs(env_num("FAULT_SECONDS", 20))
}

pub fn env_num<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `url` with the password set (unless it has one) and, when `port` is given, that port.
pub fn relay_url(url: &str, port: Option<u16>) -> String {
    let mut u = url::Url::parse(url).unwrap();
    if u.password().is_none() {
        u.set_password(Some(DB_PASSWORD)).unwrap();
    }
    if let Some(p) = port {
        u.set_host(Some("127.0.0.1")).unwrap();
        u.set_port(Some(p)).unwrap();
    }
    u.to_string()
}

/// Every secret in play, as configured.
pub fn secrets(url: &str) -> Vec<String> {
    let u = url::Url::parse(url).unwrap();
    vec![
        SECRET.to_owned(),
        SECRET.trim_start_matches("whsec_").to_owned(),
        u.password().unwrap_or(DB_PASSWORD).to_owned(),
        sse::SSE_SECRET.to_owned(),
    ]
}

/// A relay config: short lease and backoff so faults resolve within a test (unless `extra`
/// sets them), SSE on (so its key is in play), then one webhook per receiver.
pub fn relay_config(
    url: &str,
    receivers: &[(&str, &Receiver)],
    extra: &str,
) -> (NamedTempFile, String) {
    let http = free_addr();
    let mut toml = format!("database_url = \"{url}\"\n{extra}\n");
    let defaults = [
        ("lease", "\"3s\""),
        ("backoff_initial", "\"200ms\""),
        ("backoff_max", "\"2s\""),
        ("max_attempts", "1000"),
    ];
    for (key, value) in defaults {
        if !extra.contains(&format!("{key} =")) {
            toml.push_str(&format!("{key} = {value}\n"));
        }
    }
    toml.push_str(&format!(
        "[http]\nlisten = \"{http}\"\n{}",
        sse::sse_toml("15s")
    ));
    for (name, rx) in receivers {
        toml.push_str(&format!(
            "[[webhook]]\nname = \"{name}\"\nurl = \"{}\"\nsecret = \"{SECRET}\"\n\
             timeout = \"1s\"\n",
            rx.url
        ));
    }
    (write_config(&toml), format!("http://{http}"))
}

/// [`relay_config`] for the database at `db_url` (given a password) with one receiver,
/// "main", and the table migrated for it ([`migrate_as_relay_config`]).
pub async fn migrated_relay_config(
    db_url: &str,
    rx: &Receiver,
    extra: &str,
) -> (NamedTempFile, String) {
    let config = relay_config(&relay_url(db_url, None), &[("main", rx)], extra);
    migrate_as_relay_config(db_url).await;
    config
}

/// Migrates for the features [`relay_config`] turns on (SSE: its index).
pub async fn migrate_as_relay_config(url: &str) {
    migrate_url(url, &sse::sse_toml("15s")).await;
}

/// Waits until the relay serving `http` answers `/readyz` with 200.
pub async fn wait_ready(what: &str, http: &str) {
    wait_until(what, || {
        let u = format!("{http}/readyz");
        async move { http_get(&u).await.0 == 200 }
    })
    .await;
}

/// The outcome of one fault run, as the fault table in docs/reliability.md shows it.
#[derive(Debug)]
pub struct Tally {
    pub sent: usize,
    pub delivered: usize,
    pub lost: usize,
    pub duplicated: usize,
}

/// Waits (up to `patience`) until every committed event was accepted by every receiver
/// and no load row is PENDING or PROCESSING, then counts (per receiver, summed). Events in `except` (a poison)
/// are left out.
pub async fn settle(
    url: &str,
    published: &Published,
    receivers: &[&Receiver],
    except: &HashSet<String>,
    patience: Duration,
) -> Tally {
    let client = connect(url).await;
    let want: HashSet<&String> = published
        .committed
        .iter()
        .filter(|id| !except.contains(*id))
        .collect();
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        let all_accepted = receivers.iter().all(|rx| {
            let got = rx.accepted_counts();
            want.iter().all(|id| got.contains_key(*id))
        });
        let open: i64 = client
            .query_one(
                "SELECT count(*) FROM \"OutboxEvent\"
                  WHERE event_type = $1 AND status::text IN ('PENDING', 'PROCESSING')",
                &[&LOAD_TYPE],
            )
            .await
            .unwrap()
            .get(0);
        if all_accepted && open == 0 {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            break; // count what arrived: the assertions name what is missing
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut t = Tally {
        sent: want.len() * receivers.len(),
        delivered: 0,
        lost: 0,
        duplicated: 0,
    };
    for rx in receivers {
        let got = rx.accepted_counts();
        let missing: Vec<&str> = want
            .iter()
            .filter(|id| !got.contains_key(**id))
            .map(|id| id.as_str())
            .take(10)
            .collect();
        if !missing.is_empty() {
            // Say where the missing ones are, for whoever reads a failure.
            for r in client
                .query(
                    "SELECT id::text, status::text, retry_count, error_message, delivered_to,
                            created_at::text, processed_at::text
                       FROM \"OutboxEvent\" WHERE id::text = ANY($1)",
                    &[&missing],
                )
                .await
                .unwrap()
            {
                let row: (
                    String,
                    String,
                    i32,
                    Option<String>,
                    Vec<String>,
                    String,
                    Option<String>,
                ) = (
                    r.get(0),
                    r.get(1),
                    r.get(2),
                    r.get(3),
                    r.get(4),
                    r.get(5),
                    r.get(6),
                );
                eprintln!("not accepted by {}: {row:?}", rx.url);
            }
        }
        t.delivered += want.iter().filter(|id| got.contains_key(**id)).count();
        t.lost += want.iter().filter(|id| !got.contains_key(**id)).count();
        t.duplicated += want
            .iter()
            .filter_map(|id| got.get(*id))
            .map(|n| n - 1)
            .sum::<usize>();
    }
    t
}

/// Prints the docs/reliability.md row and keeps it under target/tmp/fault-report/.
pub fn report(n: u32, fault: &str, what: &str, t: &Tally) {
    let row = format!(
        "| {n}. {fault} | {what} | {} | {} | {} | {} |",
        t.sent, t.delivered, t.lost, t.duplicated
    );
    println!("{row}");
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("fault-report");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{n}.md")), format!("{row}\n")).unwrap();
}

/// No secret in any relay output, in `status --json`, or in `/metrics`.
pub async fn assert_no_secrets(
    url: &str,
    config: &NamedTempFile,
    http: Option<&str>,
    procs: &[&Proc],
) {
    let mut texts: Vec<(String, String)> = Vec::new();
    for p in procs {
        texts.push((format!("{} stderr", p.name()), p.stderr()));
        texts.push((format!("{} stdout", p.name()), p.stdout()));
    }
    let (_, out, err) = run_to_end(
        "status",
        relay_cmd(&["status", "--json", "--config", path_str(config)]),
    )
    .await;
    texts.push(("status".into(), out + &err));
    if let Some(http) = http {
        texts.push((
            "/metrics".into(),
            http_get(&format!("{http}/metrics")).await.1,
        ));
    }
    for (who, text) in &texts {
        for s in secrets(url) {
            assert!(
                !text.contains(&s),
                "{who} contains a secret ({} chars)",
                s.len()
            );
        }
    }
}

/// The loss and duplicate assertions every fault shares.
pub fn assert_nothing_lost(t: &Tally, duplicates_allowed: usize) {
    assert!(t.sent > 0, "the load published nothing");
    assert_eq!(t.lost, 0, "events lost: {t:?}");
    assert!(
        t.duplicated <= duplicates_allowed,
        "more duplicates than were in flight: {t:?} (allowed {duplicates_allowed})"
    );
}

/// What a relay can have in flight per webhook (2 x max_in_flight, the default 64).
pub const WINDOW: usize = 128;

/// A stable pseudo-random number in 0..100 for (id, nth).
pub fn dice(id: &str, nth: usize) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in id.bytes().chain(nth.to_le_bytes()) {
        h = (h ^ b as u64).wrapping_mul(0x100000001b3);
    }
    h % 100
}
