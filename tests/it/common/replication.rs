//! A streaming-replication pair of private clusters (a primary and a hot standby on free
//! ports) for failover tests: start it, wait until the standby streams and has replayed,
//! promote it.

use std::sync::Arc;
use std::time::Duration;

use outbox_relay::pgtemp::TempCluster;

use super::process::{connect, new_cluster};
use super::wait_until;

/// A primary and its standby, streaming. Dropping either stops and deletes it.
pub struct Pair {
    pub primary: Arc<TempCluster>,
    pub standby: Arc<TempCluster>,
}

impl Pair {
    /// Starts a primary and a standby cloned from it, and waits until it streams.
    pub async fn start() -> Self {
        let primary = new_cluster().await;
        let p = primary.clone();
        let standby = Arc::new(
            tokio::task::spawn_blocking(move || p.start_standby())
                .await
                .unwrap()
                .expect("starting a standby (pg_basebackup -R)"),
        );
        let admin = connect(&primary.url("postgres")).await;
        wait_until("the standby streams from the primary", || {
            let admin = &admin;
            async move {
                let row = admin
                    .query_one(
                        "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
                        &[],
                    )
                    .await
                    .unwrap();
                row.get::<_, i64>(0) == 1
            }
        })
        .await;
        Self { primary, standby }
    }

    /// `postgres://` URL of database `db` listing the primary, then the standby, with
    /// `target_session_attrs` (None: without it) and `password`.
    pub fn url(&self, db: &str, password: &str, attrs: Option<&str>) -> String {
        let attrs = attrs
            .map(|a| format!("?target_session_attrs={a}"))
            .unwrap_or_default();
        format!(
            "postgres://postgres:{password}@127.0.0.1:{},127.0.0.1:{}/{db}{attrs}",
            self.primary.port(),
            self.standby.port()
        )
    }

    /// Waits until the standby has replayed everything the primary wrote so far (its WAL
    /// insert position: with synchronous_commit off, the last commits may not be flushed
    /// yet, and they will be).
    pub async fn wait_replayed(&self) {
        let lsn: String = connect(&self.primary.url("postgres"))
            .await
            .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
            .await
            .unwrap()
            .get(0);
        let standby = connect(&self.standby.url("postgres")).await;
        wait_until(&format!("the standby to replay up to {lsn}"), || {
            let (standby, lsn) = (&standby, &lsn);
            async move {
                standby
                    .query_one(
                        "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn",
                        &[lsn],
                    )
                    .await
                    .unwrap()
                    .get::<_, Option<bool>>(0)
                    == Some(true)
            }
        })
        .await;
    }

    /// Promotes the standby (`pg_ctl promote -w`: it accepts writes when this returns).
    pub async fn promote(&self) {
        let s = self.standby.clone();
        tokio::task::spawn_blocking(move || s.promote())
            .await
            .unwrap()
            .expect("promoting the standby");
    }

    /// Stops both clusters and deletes them, off the async worker threads.
    pub async fn drop_async(self) {
        tokio::task::spawn_blocking(move || drop(self))
            .await
            .unwrap();
    }
}

/// How often a process logged at `level` (` WARN `, ` ERROR `), for bounded-noise checks.
pub fn level_count(stderr: &str, level: &str) -> usize {
    stderr.lines().filter(|l| l.contains(level)).count()
}

/// A process's warnings counted by kind: the module and the message, without the fields
/// (`error=...`, `retry_in=...`) that differ from one occurrence to the next. "One warning
/// per part per incident" is every count being 1.
pub fn warnings_by_kind(stderr: &str) -> std::collections::BTreeMap<String, usize> {
    let is_field = |w: &str| {
        w.split_once('=').is_some_and(|(k, _)| {
            !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        })
    };
    let mut kinds = std::collections::BTreeMap::new();
    for line in stderr.lines() {
        let Some((_, rest)) = line.split_once(" WARN ") else {
            continue;
        };
        let kind: Vec<&str> = rest
            .split_whitespace()
            .take_while(|w| !is_field(w))
            .collect();
        *kinds.entry(kind.join(" ")).or_insert(0) += 1;
    }
    kinds
}

/// Gives a relay a moment to show a repeated log line if it were going to: the retry
/// interval of the read-only check is 2 s.
pub const QUIET_WATCH: Duration = Duration::from_secs(7);
