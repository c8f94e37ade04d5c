//! The relay binary as a child process, and private PostgreSQL clusters a test may stop and
//! start: for crash, signal and outage tests.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use outbox_relay::config::{Config, Overrides};
use outbox_relay::pgtemp::TempCluster;
use outbox_relay::secret::Secret;
use tempfile::NamedTempFile;

use super::{relay_bin, wait_until, PATIENCE, SECRET};

/// Variables the child must not inherit from the test run: a DATABASE_URL exported for the
/// harness would beat every config file these tests write.
pub const SCRUBBED_ENV: &[&str] = &[
    "DATABASE_URL",
    "OUTBOX_RELAY_CONFIG",
    "OUTBOX_RELAY_LOG_FORMAT",
    "RUST_LOG",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
];

/// How long a process told to stop may take to exit: a hang guard, not a speed assertion.
pub const EXIT_PATIENCE: Duration = Duration::from_secs(30);

/// A command running the relay binary with a clean environment and verbose relay logs.
pub fn relay_cmd(args: &[&str]) -> Command {
    relay_cmd_of(relay_bin(), args)
}

/// [`relay_cmd`] for another build of the relay: [`previous_release_bin`].
pub fn relay_cmd_of(bin: impl AsRef<OsStr>, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args(args);
    clean_env(&mut cmd);
    cmd
}

/// No stdin, none of [`SCRUBBED_ENV`], verbose relay logs: how every relay child starts.
pub fn clean_env(cmd: &mut Command) {
    cmd.stdin(Stdio::null());
    for v in SCRUBBED_ENV {
        cmd.env_remove(v);
    }
    cmd.env("RUST_LOG", "info,outbox_relay=debug");
}

/// `outbox-relay run --config <file>` as a child process called `name`.
pub fn relay(name: &str, file: &NamedTempFile) -> Proc {
    relay_of(relay_bin(), name, file)
}

/// [`relay`] running another build of the relay (a previous release's binary).
pub fn relay_of(bin: impl AsRef<OsStr>, name: &str, file: &NamedTempFile) -> Proc {
    Proc::spawn(
        name,
        relay_cmd_of(bin, &["run", "--config", path_str(file)]),
    )
}

pub fn path_str(f: &NamedTempFile) -> &str {
    f.path().to_str().expect("temp paths are UTF-8")
}

/// A config file with exactly `text` (no database_url added).
pub fn write_config(text: &str) -> NamedTempFile {
    let f = NamedTempFile::new().unwrap();
    std::fs::write(f.path(), text).unwrap();
    f
}

/// A child process with stdout and stderr captured to files. Dropping it SIGKILLs and reaps
/// the process if it is still running, so no test leaves a relay behind, even on panic.
pub struct Proc {
    name: String,
    child: std::process::Child,
    stdout: NamedTempFile,
    stderr: NamedTempFile,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command) -> Self {
        let stdout = NamedTempFile::new().unwrap();
        let stderr = NamedTempFile::new().unwrap();
        cmd.stdout(stdout.reopen().unwrap())
            .stderr(stderr.reopen().unwrap());
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Self {
            name: name.to_owned(),
            child,
            stdout,
            stderr,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    pub fn signal(&self, sig: Signal) {
        kill(self.pid(), sig).unwrap_or_else(|e| panic!("cannot send {sig} to {}: {e}", self.name));
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.stdout.path()).unwrap()).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.stderr.path()).unwrap()).into_owned()
    }

    /// Waits for the process to exit (polling), at most `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} did not exit within {limit:?}; stderr:\n{}",
                self.name,
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// How many stderr lines contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.stderr().lines().filter(|l| l.contains(needle)).count()
    }

    /// Waits until `n` stderr lines contain `needle`.
    pub async fn wait_log_count(&self, needle: &str, n: usize) {
        wait_until(
            &format!("{} to log {needle:?} {n} time(s)", self.name),
            || {
                let got = self.log_count(needle);
                async move { got >= n }
            },
        )
        .await;
    }

    /// Waits until stderr contains any of `needles`.
    pub async fn wait_log(&self, needles: &[&str]) {
        wait_until(&format!("{} to log one of {needles:?}", self.name), || {
            let err = self.stderr();
            let found = needles.iter().any(|n| err.contains(n));
            async move { found }
        })
        .await;
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill(); // SIGKILL
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            let err = self.stderr();
            let tail: String = {
                let chars: Vec<char> = err.chars().collect();
                chars[chars.len().saturating_sub(6000)..].iter().collect()
            };
            eprintln!(
                "--- stderr of {} (tail) ---\n{tail}\n--- end ---",
                self.name
            );
        }
    }
}

/// Runs a one-shot command to its end (bounded); returns (status, stdout, stderr).
pub async fn run_to_end(name: &str, cmd: Command) -> (ExitStatus, String, String) {
    let mut p = Proc::spawn(name, cmd);
    let status = p.wait_exit(PATIENCE).await;
    (status, p.stdout(), p.stderr())
}

/// Runs a CLI command of the relay with `--config` to its end; returns stdout, asserting
/// exit 0.
pub async fn cli(config: &NamedTempFile, args: &[&str]) -> String {
    let mut all = args.to_vec();
    all.extend(["--config", path_str(config)]);
    let (status, out, err) = run_to_end("cli", relay_cmd(&all)).await;
    assert!(status.success(), "{args:?}: {status}\n{err}");
    out
}

/// The secret as configured and its base64 key part: neither may appear in any output.
pub fn assert_no_secret(who: &str, text: &str) {
    let key = SECRET.trim_start_matches("whsec_");
    assert!(
        !text.contains(SECRET) && !text.contains(key),
        "{who} wrote the webhook secret to its output"
    );
}

pub async fn ids_with_status(client: &tokio_postgres::Client, status: &str) -> HashSet<String> {
    client
        .query(
            "SELECT id::text FROM \"OutboxEvent\" WHERE status::text = $1",
            &[&status],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

pub async fn connect(url: &str) -> tokio_postgres::Client {
    outbox_relay::db::connect(&Secret::new(url.to_owned()))
        .await
        .unwrap()
}

/// Stops a cluster the way `pg_ctlcluster restart` does (fast: committed work is kept), off
/// the async worker threads (pg_ctl blocks).
pub async fn stop_cluster_fast(cluster: &Arc<TempCluster>) {
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.stop_fast())
        .await
        .unwrap();
}

/// Stops a cluster off the async worker threads (pg_ctl blocks).
pub async fn stop_cluster(cluster: &Arc<TempCluster>) {
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.stop()).await.unwrap();
}

pub async fn start_cluster_again(cluster: &Arc<TempCluster>) {
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.start_again())
        .await
        .unwrap()
        .expect("restarting the cluster on its port");
}

pub async fn new_cluster() -> Arc<TempCluster> {
    new_cluster_with("").await
}

/// [`new_cluster`] with server options (`-c name=value ...`).
pub async fn new_cluster_with(opts: &str) -> Arc<TempCluster> {
    let opts = opts.to_owned();
    Arc::new(
        tokio::task::spawn_blocking(move || TempCluster::start_with(&opts))
            .await
            .unwrap()
            .expect("starting a private PostgreSQL cluster"),
    )
}

/// Drops (stops and deletes) a cluster off the async worker threads.
pub async fn drop_cluster(cluster: Arc<TempCluster>) {
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .unwrap();
}

pub async fn migrate_url(url: &str, extra: &str) {
    let cfg = Config::from_toml(
        extra,
        &Overrides {
            database_url: Some(url.to_owned()),
        },
    )
    .unwrap();
    let mut c = connect(url).await;
    outbox_relay::db::migrate::run(&mut c, &cfg.table_settings())
        .await
        .unwrap();
}

/// The release an in-place upgrade starts from (tests/it/faults.rs, the migrate-under-a-running-
/// previous-release fault): the last landed release, 97f8ebf. Move it at each release, to the
/// release before the one being made: the version still running while the new `migrate` runs.
pub const PREVIOUS_RELEASE: &str = "97f8ebf71e1cc677b035c64fa8d14267ecf41414";

/// A hang guard for building [`PREVIOUS_RELEASE`]: a cold debug build compiles every
/// dependency again, on a 2-core machine that is also running other tests.
const BUILD_PATIENCE: Duration = Duration::from_secs(30 * 60);

/// The `outbox-relay` binary of [`PREVIOUS_RELEASE`], built from git into a directory of its
/// own under the target dir: its own source tree (`git archive`, so no worktree bookkeeping)
/// and its own CARGO_TARGET_DIR, so this build's binary, which other tests are running, is
/// never overwritten. Built once; later calls find cargo's build fresh within a second or
/// so. A lock file serialises test processes that ask at the same time. Without git or the
/// commit (a shallow clone) it panics with one line: an upgrade test must not pass by
/// upgrading from nothing.
pub async fn previous_release_bin() -> PathBuf {
    let short = &PREVIOUS_RELEASE[..7];
    let root = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("previous-release")
        .join(short);
    std::fs::create_dir_all(&root).unwrap();
    let lock = std::fs::File::create(root.join("lock")).unwrap();
    let _held = tokio::task::spawn_blocking(move || Flock::lock(lock, FlockArg::LockExclusive))
        .await
        .unwrap()
        .unwrap_or_else(|(_, e)| panic!("cannot lock {}: {e}", root.display()));
    let src = root.join("src");
    if !src.join("Cargo.toml").exists() {
        extract_previous_release(&root, &src).await;
    }
    let target = root.join("target");
    let bin = target.join("debug").join("outbox-relay");
    let built_before = bin.exists();
    let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cargo
        .args([
            "build",
            "--locked",
            "--bin",
            "outbox-relay",
            "--manifest-path",
        ])
        .arg(src.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target)
        .stdin(Stdio::null());
    let started = std::time::Instant::now();
    let mut build = Proc::spawn(&format!("cargo build of {short}"), cargo);
    let status = build.wait_exit(BUILD_PATIENCE).await;
    assert!(
        status.success(),
        "building the previous release {short} failed ({status}); its cargo output follows"
    );
    println!(
        "previous release {short}: {} in {:.1?} ({})",
        if built_before { "up to date" } else { "built" },
        started.elapsed(),
        bin.display()
    );
    bin
}

/// Writes [`PREVIOUS_RELEASE`]'s tree to `src` (via a sibling directory renamed at the end, so
/// an interrupted extraction is never taken for a whole one).
async fn extract_previous_release(root: &Path, src: &Path) {
    let short = &PREVIOUS_RELEASE[..7];
    let repo = env!("CARGO_MANIFEST_DIR");
    let git = |args: &[&str]| {
        let mut cmd = Command::new("git");
        cmd.arg("-C").arg(repo).args(args).stdin(Stdio::null());
        cmd
    };
    let (found, _, err) = run_to_end(
        &format!("git (to build the previous release {short})"),
        git(&["cat-file", "-e", &format!("{PREVIOUS_RELEASE}^{{commit}}")]),
    )
    .await;
    assert!(
        found.success(),
        "cannot find the previous release {short} in {repo}'s git history ({}); a shallow \
         clone needs `git fetch --unshallow`",
        err.lines().next().unwrap_or("no such commit")
    );
    let partial = root.join("src.partial");
    let tar = root.join("src.tar");
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial).unwrap();
    let mut archive = git(&["archive", "--format=tar", "-o"]);
    archive.arg(&tar).arg(PREVIOUS_RELEASE);
    let mut untar = Command::new("tar");
    untar.arg("-xf").arg(&tar).arg("-C").arg(&partial);
    for (what, cmd) in [("git archive", archive), ("tar -x", untar)] {
        let (status, _, err) = run_to_end(what, cmd).await;
        assert!(status.success(), "{what} of {short} failed: {}", err.trim());
    }
    std::fs::remove_file(&tar).unwrap();
    std::fs::rename(&partial, src).unwrap();
}
