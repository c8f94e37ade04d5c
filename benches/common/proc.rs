//! The relay as a child process, and the CPU and memory figures `/proc` gives of it, of
//! PostgreSQL, of this process and of the machine.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A running `outbox-relay run`; killed on drop if still alive.
pub struct RelayProcess {
    pub child: Child,
    pub addr: SocketAddr,
    /// Its stderr, read after the run for warnings (slow consumers, database errors).
    pub log: PathBuf,
    /// Just before the process was spawned.
    pub started: Instant,
    _dir: tempfile::TempDir,
}

impl RelayProcess {
    /// Writes the config file and starts the binary on it.
    pub fn start(bin: &Path, config_toml: &str, addr: SocketAddr) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("outbox-relay-bench-")
            .tempdir()?;
        let config = dir.path().join("config.toml");
        std::fs::write(&config, config_toml)?;
        let log = dir.path().join("relay.log");
        let started = Instant::now();
        let child = Command::new(bin)
            .arg("run")
            .arg("--config")
            .arg(&config)
            // The config file names the bench database; an inherited DATABASE_URL would
            // override it (flag > environment > file).
            .env_remove("DATABASE_URL")
            .env_remove("OUTBOX_RELAY_CONFIG")
            // Warnings only: what matters is visible, and logging costs no CPU otherwise.
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(Self {
            child,
            addr,
            log,
            started,
            _dir: dir,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for `/readyz` to answer 200 (database reachable, LISTEN active).
    pub async fn ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "the relay exited ({status}) at start-up: {}",
                    self.log_text()
                );
            }
            if http_status(self.addr, "/readyz").await.ok() == Some(200) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the relay was not ready within 30 s: {}", self.log_text());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then SIGKILL if it has not exited within 30 s.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                eprintln!("  relay ignored SIGTERM for 30 s; killing it");
                self.child.kill()?;
                self.child.wait()?;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One GET with `Connection: close`; the status code.
pub async fn http_status(addr: SocketAddr, path: &str) -> anyhow::Result<u16> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).await?;
    let text = String::from_utf8_lossy(&resp);
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no HTTP status")?;
    Ok(code)
}

/// Resident memory of a process, KiB: now (`VmRSS`) and peak since start (`VmHWM`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Mem {
    pub rss_kib: u64,
    pub hwm_kib: u64,
}

pub fn proc_mem(pid: u32) -> anyhow::Result<Mem> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("no {name} in /proc/{pid}/status"))?;
        Ok(line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()?)
    };
    Ok(Mem {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
    })
}

/// Clock ticks per second of `/proc`'s CPU times.
pub fn clk_tck() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64
}

/// CPU seconds (user + system, all threads) a process has used: `pid` or "self".
pub fn proc_cpu_secs(pid: &str) -> anyhow::Result<f64> {
    let f = proc_stat(pid)?;
    Ok((f.utime + f.stime) as f64 / clk_tck())
}

/// CPU seconds one thread of this process has used (`tid` from [`nix::unistd::gettid`]).
pub fn thread_cpu_secs(tid: i32) -> anyhow::Result<f64> {
    proc_cpu_secs(&format!("self/task/{tid}"))
}

/// CPU seconds of the live threads of `pid`, from `/proc/<pid>/task/*/schedstat`: nanosecond
/// resolution, where `stat` counts 10 ms ticks, for small amounts such as an idle process's.
/// Threads that have exited are not counted, so read it over a window where none exit.
pub fn sched_cpu_secs(pid: u32) -> anyhow::Result<f64> {
    let mut ns: u64 = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))?.flatten() {
        // A thread may exit between the listing and the read: skip it.
        if let Ok(s) = std::fs::read_to_string(task.path().join("schedstat")) {
            ns += s
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Ok(ns as f64 / 1e9)
}

/// The fields of `/proc/<pid>/stat` this bench uses, in clock ticks.
pub struct ProcStat {
    pub ppid: u32,
    pub utime: u64,
    pub stime: u64,
    /// CPU of children that exited and were waited for.
    pub cutime: u64,
    pub cstime: u64,
}

pub fn proc_stat(pid: &str) -> anyhow::Result<ProcStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces: count fields after its closing paren.
    let rest = &stat[stat.rfind(')').context("odd /proc stat")? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Field k (1-based, man proc) is at k - 3 after the paren: ppid 4, utime 14 .. cstime 17.
    let num = |k: usize| -> anyhow::Result<u64> {
        Ok(f.get(k - 3).context("short /proc stat")?.parse()?)
    };
    Ok(ProcStat {
        ppid: num(4)? as u32,
        utime: num(14)?,
        stime: num(15)?,
        cutime: num(16)?,
        cstime: num(17)?,
    })
}

/// CPU seconds of a PostgreSQL server: the postmaster, its live processes, and (through the
/// postmaster's cutime/cstime) those that have exited.
pub fn postgres_cpu_secs(postmaster: u32) -> anyhow::Result<f64> {
    let pm = proc_stat(&postmaster.to_string())?;
    let mut ticks = pm.utime + pm.stime + pm.cutime + pm.cstime;
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        // A process may exit between the listing and the read: skip it.
        if let Ok(st) = proc_stat(pid) {
            if st.ppid == postmaster {
                ticks += st.utime + st.stime;
            }
        }
    }
    Ok(ticks as f64 / clk_tck())
}

/// (busy, total) CPU seconds of the whole machine, from `/proc/stat`.
pub fn machine_cpu_secs() -> anyhow::Result<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8) // user nice system idle iowait irq softirq steal (guest is inside user)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let total: u64 = v.iter().sum();
    let idle = v[3] + v[4];
    let t = clk_tck();
    Ok(((total - idle) as f64 / t, total as f64 / t))
}

/// CPU counters at one instant: relay, this bench, the machine.
#[derive(Debug, Clone, Copy)]
pub struct CpuMark {
    pub relay: f64,
    pub bench: f64,
    /// None when the server's processes are not visible here.
    pub postgres: Option<f64>,
    pub machine_busy: f64,
    pub machine_total: f64,
}

/// `relay_pid` None: the relay has not started yet (it has used no CPU).
pub fn cpu_mark(relay_pid: Option<u32>, postmaster: Option<u32>) -> anyhow::Result<CpuMark> {
    let (machine_busy, machine_total) = machine_cpu_secs()?;
    Ok(CpuMark {
        relay: match relay_pid {
            Some(pid) => proc_cpu_secs(&pid.to_string())?,
            None => 0.0,
        },
        bench: proc_cpu_secs("self")?,
        postgres: postmaster.and_then(|pm| postgres_cpu_secs(pm).ok()),
        machine_busy,
        machine_total,
    })
}
