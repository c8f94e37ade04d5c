//! The real binary under a stand-in for systemd: `NOTIFY_SOCKET` points at a datagram socket
//! this test binds, `WATCHDOG_USEC` and `WATCHDOG_PID` are set as systemd sets them, and the
//! test reads what the relay says: READY only once the database and LISTEN are up, watchdog
//! pings only while the claim loop goes round, STOPPING on SIGTERM.
//!
//! Each test runs its own throwaway cluster (whatever DATABASE_URL says): they stop or
//! freeze it.

use crate::common::process::*;
use crate::common::*;

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use outbox_relay::secret::Secret;
use tempfile::{NamedTempFile, TempDir};

/// The watchdog interval given to the relay: pings every second.
const WATCHDOG_USEC: &str = "2000000";
/// How long a negative check ("nothing arrives") looks: three ping periods. A window for an
/// absence, not a speed limit.
const QUIET_WINDOW: Duration = Duration::from_secs(3);

/// What systemd's notification socket would receive: one entry per datagram.
struct NotifySocket {
    _dir: TempDir,
    path: PathBuf,
    datagrams: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl NotifySocket {
    fn bind() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("outbox-relay-notify-")
            .tempdir()
            .unwrap();
        let path = dir.path().join("notify.sock");
        let sock = tokio::net::UnixDatagram::bind(&path).unwrap();
        let datagrams = Arc::new(Mutex::new(Vec::new()));
        let sink = datagrams.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf).await {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                sink.lock().unwrap().push(text);
            }
        });
        Self {
            _dir: dir,
            path,
            datagrams,
            task,
        }
    }

    fn all(&self) -> Vec<String> {
        self.datagrams.lock().unwrap().clone()
    }

    /// How many datagrams carried exactly this line (e.g. `READY=1`).
    fn count(&self, line: &str) -> usize {
        self.all()
            .iter()
            .filter(|d| d.lines().any(|l| l == line))
            .count()
    }

    /// Whether a `STATUS=` line starting with `prefix` arrived.
    fn has_status(&self, prefix: &str) -> bool {
        let want = format!("STATUS={prefix}");
        self.all()
            .iter()
            .any(|d| d.lines().any(|l| l.starts_with(&want)))
    }

    async fn wait_status(&self, prefix: &str) {
        wait_until(&format!("STATUS={prefix}... on NOTIFY_SOCKET"), || {
            let got = self.has_status(prefix);
            async move { got }
        })
        .await;
    }

    /// The last `STATUS=` text that arrived.
    fn last_status(&self) -> Option<String> {
        let all = self.all();
        let lines = all.iter().rev().flat_map(|d| d.lines().rev());
        lines
            .filter_map(|l| l.strip_prefix("STATUS="))
            .map(str::to_owned)
            .next()
    }

    /// Waits until `line` has arrived at least `n` times.
    async fn wait_count(&self, line: &str, n: usize) {
        wait_until(&format!("{n} × {line} on NOTIFY_SOCKET"), || {
            let got = self.count(line);
            async move { got >= n }
        })
        .await;
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.task.abort();
        if std::thread::panicking() {
            eprintln!("--- NOTIFY_SOCKET datagrams ---\n{:#?}", self.all());
        }
    }
}

/// The relay, started as systemd starts a `Type=notify` unit with `WatchdogSec=`: through a
/// shell that sets WATCHDOG_PID to its own pid and execs the relay, so the pid matches.
fn relay_under_systemd(config: &NamedTempFile, notify: &NotifySocket) -> Proc {
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        r#"WATCHDOG_PID=$$; export WATCHDOG_PID; exec "$0" "$@""#,
        relay_bin(),
        "run",
        "--config",
        config.path().to_str().unwrap(),
    ]);
    // Scrubbed first: a NOTIFY_SOCKET from whatever runs the tests would get our
    // notifications; then this test's own socket.
    clean_env(&mut cmd);
    cmd.env("NOTIFY_SOCKET", &notify.path)
        .env("WATCHDOG_USEC", WATCHDOG_USEC);
    Proc::spawn("relay", cmd)
}

/// A config for the binary: this database, poll every second, HTTP on a free port.
fn config_file(url: &str) -> NamedTempFile {
    let f = NamedTempFile::new().unwrap();
    let toml = format!("database_url = \"{url}\"\npoll_interval = \"1s\"\n");
    std::fs::write(f.path(), with_free_port(&toml)).unwrap();
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_only_once_the_database_is_up_then_watchdog_then_stopping() {
    let cluster = new_cluster().await;
    let url = cluster.url("postgres");
    stop_cluster(&cluster).await;
    let notify = NotifySocket::bind();
    let file = config_file(&url);
    let mut relay = relay_under_systemd(&file, &notify);

    // The database is down: the relay retries, says what it waits for, keeps the start
    // deadline moving, and feeds the watchdog (waiting is no wedge); it is not READY.
    relay.wait_log_count("relay not started yet", 3).await;
    notify.wait_count("WATCHDOG=1", 2).await;
    assert!(
        notify.has_status("waiting for the database"),
        "{:?}",
        notify.all()
    );
    assert!(
        notify
            .all()
            .iter()
            .any(|d| d.starts_with("EXTEND_TIMEOUT_USEC=")),
        "no EXTEND_TIMEOUT_USEC while waiting: {:?}",
        notify.all()
    );
    let tries = relay.log_count("relay not started yet");
    relay
        .wait_log_count("relay not started yet", tries + 1)
        .await;
    assert_eq!(notify.count("READY=1"), 0, "READY=1 with the database down");
    assert!(relay.is_running(), "{}", relay.stderr());

    {
        let c = cluster.clone();
        tokio::task::spawn_blocking(move || c.start_again())
            .await
            .unwrap()
            .expect("restarting the cluster on its port");
    }
    migrate_url(&url, "").await;
    notify.wait_count("READY=1", 1).await;
    relay.wait_log_count("listening for new events", 1).await;
    assert!(notify.has_status("relaying events"), "{:?}", notify.all());

    // Ready and idle: the claim loop beats, so the pings go on.
    let pings = notify.count("WATCHDOG=1");
    notify.wait_count("WATCHDOG=1", pings + 3).await;

    relay.signal(Signal::SIGTERM);
    notify.wait_count("STOPPING=1", 1).await;
    let status = relay.wait_exit(EXIT_PATIENCE).await;
    assert_eq!(status.code(), Some(0), "{status}");
    assert_eq!(notify.count("READY=1"), 1, "READY=1 is sent once");
    drop(relay);
    drop_cluster(cluster).await;
}

/// Stops the cluster's server and every process it forked (SIGSTOP) until dropped: the
/// connections stay open but nothing answers, like a hung database. (Each server process
/// has a session of its own, so one signal to a process group would not reach them all.)
struct Frozen(Vec<Pid>);

impl Frozen {
    async fn cluster(url: &str) -> Self {
        let c = outbox_relay::db::connect(&Secret::new(url.to_owned()))
            .await
            .unwrap();
        let backend: i32 = c
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        drop(c);
        let postmaster = parent_of(backend).expect("the backend's parent, the postmaster");
        let mut frozen = Self(vec![Pid::from_raw(postmaster)]);
        // The postmaster first, so it forks nothing new meanwhile.
        kill(frozen.0[0], Signal::SIGSTOP).unwrap();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            if parent_of(pid) == Some(postmaster)
                && kill(Pid::from_raw(pid), Signal::SIGSTOP).is_ok()
            {
                frozen.0.push(Pid::from_raw(pid));
            }
        }
        assert!(frozen.0.len() > 1, "found no server processes to freeze");
        frozen
    }
}

/// The parent pid, from /proc/PID/stat ("pid (comm) state ppid ...").
fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = stat.get(stat.rfind(')')? + 2..)?;
    after_comm.split(' ').nth(1)?.parse().ok()
}

impl Drop for Frozen {
    fn drop(&mut self) {
        for pid in self.0.iter().rev() {
            let _ = kill(*pid, Signal::SIGCONT);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wedged_claim_loop_starves_the_watchdog() {
    let cluster = new_cluster().await;
    let url = cluster.url("postgres");
    migrate_url(&url, "").await;
    let notify = NotifySocket::bind();
    let file = config_file(&url);
    let mut relay = relay_under_systemd(&file, &notify);
    notify.wait_count("READY=1", 1).await;
    let pings = notify.count("WATCHDOG=1");
    notify.wait_count("WATCHDOG=1", pings + 1).await;

    // A hung database: the next claim (within poll_interval) never returns, so the claim
    // loop stops going round and the pings must stop.
    let frozen = Frozen::cluster(&url).await;
    relay.wait_log_count("claim loop stalled", 1).await;
    // Datagrams arrive in order: once this STATUS is in, so is every ping sent before it.
    notify.wait_status("claim loop stalled").await;
    let starved = notify.count("WATCHDOG=1");
    tokio::time::sleep(QUIET_WINDOW).await;
    assert_eq!(
        notify.count("WATCHDOG=1"),
        starved,
        "WATCHDOG=1 sent while the claim loop was stalled"
    );
    assert!(relay.is_running(), "{}", relay.stderr());

    // The database answers again: the loop goes round and the pings come back.
    drop(frozen);
    relay
        .wait_log_count("claim loop going round again", 1)
        .await;
    notify.wait_count("WATCHDOG=1", starved + 2).await;
    // The LISTEN heartbeat may have given up during the freeze: wait for it to come back.
    wait_until("STATUS=relaying events again", || {
        let last = notify.last_status();
        async move { last.as_deref() == Some("relaying events") }
    })
    .await;

    relay.signal(Signal::SIGTERM);
    notify.wait_count("STOPPING=1", 1).await;
    let status = relay.wait_exit(EXIT_PATIENCE).await;
    assert_eq!(status.code(), Some(0), "{status} {:?}", status.signal());
    drop(relay);
    drop_cluster(cluster).await;
}
