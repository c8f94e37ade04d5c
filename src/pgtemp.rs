//! A throwaway PostgreSQL cluster in a temporary directory, for `dev` and the test suite.
//!
//! Needs only PostgreSQL's server binaries (initdb, pg_ctl). As root it runs them as the
//! `postgres` user, because initdb refuses to run as root. The cluster listens on 127.0.0.1
//! at a free port and on a private socket directory, has fsync off (it is disposable), and is
//! stopped and deleted on drop.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

/// A running throwaway cluster. Dropping it stops the server and removes its files.
pub struct TempCluster {
    dir: tempfile::TempDir,
    bindir: PathBuf,
    port: u16,
    /// Server options, kept so [`TempCluster::start_again`] comes back on the same port.
    opts: String,
    run_as: Option<(nix::unistd::Uid, nix::unistd::Gid)>,
}

impl TempCluster {
    /// initdb + pg_ctl start; takes a second or two.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with("")
    }

    /// As [`TempCluster::start`], with `extra_opts` (`-c name=value ...`) appended to the
    /// server options above, so they win: the benchmarks run with durable commits and
    /// `pg_stat_statements` preloaded.
    pub fn start_with(extra_opts: &str) -> anyhow::Result<Self> {
        let mut cluster = Self::empty(find_bindir()?)?;
        let data = cluster.data_dir();
        cluster
            .pg("initdb")
            .args([
                "-D",
                &data,
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
            ])
            .args(["--no-instructions"])
            .output_checked("initdb")?;
        cluster.start_on_free_port(extra_opts)?;
        Ok(cluster)
    }

    /// A new, empty cluster directory (not initialised, not running) for `bindir`, owned by
    /// the user the server will run as.
    fn empty(bindir: PathBuf) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("outbox-relay-pg-")
            .tempdir()?;
        let run_as = if nix::unistd::geteuid().is_root() {
            let user = nix::unistd::User::from_name("postgres")?
                .context("running as root, and there is no `postgres` user to run the server as")?;
            nix::unistd::chown(dir.path(), Some(user.uid), Some(user.gid))?;
            Some((user.uid, user.gid))
        } else {
            None
        };
        Ok(Self {
            dir,
            bindir,
            port: 0,
            opts: String::new(),
            run_as,
        })
    }

    /// Starts the server on a free port. A free port can be taken between our probe and the
    /// server's bind: try a few.
    fn start_on_free_port(&mut self, extra_opts: &str) -> anyhow::Result<()> {
        let mut last_err = None;
        for _ in 0..5 {
            self.port = free_port()?;
            self.opts = format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
                 -c full_page_writes=off -c max_connections=300 -c shared_buffers=128MB {extra_opts}",
                self.port,
                self.dir.path().display()
            );
            match self.start_again() {
                Ok(_) => return Ok(()),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.expect("at least one attempt"))
    }

    /// A hot standby of this cluster, streaming from it (`pg_basebackup -R`), on a free port
    /// of its own: for failover tests. initdb's pg_hba.conf already trusts local replication
    /// connections, and the default `wal_level` (replica) and `max_wal_senders` allow it.
    pub fn start_standby(&self) -> anyhow::Result<Self> {
        let mut standby = Self::empty(self.bindir.clone())?;
        standby
            .pg("pg_basebackup")
            .args([
                "-D",
                &standby.data_dir(),
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
            ])
            .args([
                "-p",
                &self.port.to_string(),
                "-R",
                "-X",
                "stream",
                "--no-sync",
            ])
            .output_checked("pg_basebackup")?;
        standby.start_on_free_port("-c hot_standby=on")?;
        Ok(standby)
    }

    /// Promotes a standby to a primary (`pg_ctl promote`, waiting until it accepts writes).
    pub fn promote(&self) -> anyhow::Result<()> {
        self.pg("pg_ctl")
            .args(["-D", &self.data_dir(), "-w", "-t", "60", "promote"])
            .output_checked("pg_ctl promote")?;
        Ok(())
    }

    /// Starts the server again after [`TempCluster::stop`], on the same port (tests of a
    /// database outage).
    pub fn start_again(&self) -> anyhow::Result<()> {
        let log = self.dir.path().join("server.log").display().to_string();
        self.pg("pg_ctl")
            .args([
                "-D",
                &self.data_dir(),
                "-l",
                &log,
                "-o",
                &self.opts,
                "-w",
                "-t",
                "60",
                "start",
            ])
            .output_checked("pg_ctl start")?;
        Ok(())
    }

    /// URL of database `db` on this cluster (user postgres, trust auth).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    fn data_dir(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn pg(&self, tool: &str) -> Command {
        let mut cmd = Command::new(self.bindir.join(tool));
        cmd.stdin(Stdio::null()).current_dir(self.dir.path());
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid.as_raw()).gid(gid.as_raw());
        }
        cmd
    }

    /// Stops the server at once, as a crash would (no checkpoint: it is disposable).
    /// Transactions committed in the last moments may be lost (synchronous_commit is off).
    pub fn stop(&self) {
        self.pg_ctl_stop("immediate");
    }

    /// Stops the server as `pg_ctlcluster stop` does: clients are disconnected, every
    /// committed transaction is kept.
    pub fn stop_fast(&self) {
        self.pg_ctl_stop("fast");
    }

    fn pg_ctl_stop(&self, mode: &str) {
        let _ = self
            .pg("pg_ctl")
            .args(["-D", &self.data_dir(), "-m", mode, "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for TempCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

trait OutputChecked {
    fn output_checked(&mut self, what: &str) -> anyhow::Result<std::process::Output>;
}

impl OutputChecked for Command {
    fn output_checked(&mut self, what: &str) -> anyhow::Result<std::process::Output> {
        let out = self
            .output()
            .with_context(|| format!("cannot run {what}"))?;
        if !out.status.success() {
            bail!(
                "{what} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(out)
    }
}

/// Finds the directory holding initdb: `$PG_BIN`, the newest `/usr/lib/postgresql/*/bin`
/// (Debian, Ubuntu), `pg_config --bindir`, or PATH.
pub fn find_bindir() -> anyhow::Result<PathBuf> {
    let has_initdb = |d: &Path| d.join("initdb").is_file() && d.join("pg_ctl").is_file();
    if let Some(d) = std::env::var_os("PG_BIN").map(PathBuf::from) {
        if has_initdb(&d) {
            return Ok(d);
        }
        bail!("PG_BIN={} has no initdb/pg_ctl", d.display());
    }
    let mut debian: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((v, e.path().join("bin")))
        })
        .filter(|(_, d)| has_initdb(d))
        .collect();
    debian.sort();
    if let Some((_, d)) = debian.pop() {
        return Ok(d);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_initdb(&d) {
            return Ok(d);
        }
    }
    for d in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        if has_initdb(&d) {
            return Ok(d);
        }
    }
    bail!(
        "no PostgreSQL server binaries (initdb, pg_ctl) found: install PostgreSQL's server \
         package (e.g. `apt-get install postgresql`), set PG_BIN to their directory, or set \
         DATABASE_URL to an existing database"
    )
}

/// A loopback port free right now, below the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`), so that no client connection's local end takes it while
/// a server stopped on it is started again (a standby, a NATS or RabbitMQ node in the
/// tests). Handed out in turn from a random start, so two calls in one process never get
/// the same port; each is checked free when handed out. Any free port when there is no
/// room below the range.
pub fn free_port() -> anyhow::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::OnceLock;
    static NEXT: OnceLock<(u16, AtomicU32)> = OnceLock::new();
    const LOWEST: u16 = 10_000;
    let (span, next) = NEXT.get_or_init(|| {
        let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
            .unwrap_or(32_768);
        let span = ephemeral_low.saturating_sub(LOWEST);
        let start = rand::random::<u32>() % u32::from(span.max(1));
        (span, AtomicU32::new(start))
    });
    for _ in 0..u32::from(*span).min(1_000) {
        let port = LOWEST + (next.fetch_add(1, Ordering::Relaxed) % u32::from(*span)) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
