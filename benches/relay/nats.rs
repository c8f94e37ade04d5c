//! Draining a backlog to NATS JetStream (issue 19): the `drain` scenario with one `[[nats]]`
//! sink instead of the webhook. A `nats-server -js` of its own on a free port, file storage
//! in a temp dir, a one-replica stream; the relay publishes every event and waits for each
//! ack. Timed from the relay's spawn until the stream holds every event (stream info polled
//! every 10 ms). The server's CPU is reported apart (`nats_server`) and taken out of `rest`.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::proc::{proc_cpu_secs, proc_mem};
use crate::common::stats::{mib, round2};
use crate::drain::backlog;
use crate::setup::{
    cpu_figures_beside, finish_relay, status_counts, wait_deliveries, Ctx, WaitEnd,
};

/// A drain that stops making progress for this long is given up.
const STALL: Duration = Duration::from_secs(15);
const STREAM: &str = "BENCH";

/// A `nats-server -js` of the bench's own; killed on drop.
struct NatsServer {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl NatsServer {
    async fn start() -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let dir = tempfile::Builder::new()
            .prefix("outbox-bench-nats-")
            .tempdir()?;
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                anyhow::anyhow!("nats-server on PATH (apt-get install nats-server): {e}")
            })?;
        let url = format!("nats://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(client) = async_nats::connect(&url).await {
                let js = async_nats::jetstream::new(client);
                if js
                    .create_stream(async_nats::jetstream::stream::Config {
                        name: STREAM.to_owned(),
                        subjects: vec!["bench.>".to_owned()],
                        storage: async_nats::jetstream::stream::StorageType::File,
                        ..Default::default()
                    })
                    .await
                    .is_ok()
                {
                    break;
                }
            }
            anyhow::ensure!(Instant::now() < deadline, "nats-server did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Self {
            child,
            url,
            _dir: dir,
        })
    }

    fn cpu_secs(&self) -> f64 {
        proc_cpu_secs(&self.child.id().to_string()).unwrap_or(f64::NAN)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The nats_drain scenario: `events` to one JetStream stream.
pub async fn nats_drain(ctx: &Ctx<'_>, events: usize) -> anyhow::Result<Value> {
    let nats = NatsServer::start().await?;
    let db = ctx.fresh_db().await?;
    let result = async {
        let burst_s = backlog(ctx, &db, events).await?;
        // How many messages the stream holds, kept current by a poller.
        let stored = Arc::new(AtomicU64::new(0));
        let poller = {
            let (stored, url) = (stored.clone(), nats.url.clone());
            tokio::spawn(async move {
                let js = async_nats::jetstream::new(async_nats::connect(&url).await?);
                loop {
                    if let Ok(mut s) = js.get_stream(STREAM).await {
                        if let Ok(info) = s.info().await {
                            stored.store(info.state.messages, Ordering::Relaxed);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                #[allow(unreachable_code)]
                anyhow::Ok(())
            })
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr = ([127, 0, 0, 1], port).into();
        let toml = format!(
            "{}[[nats]]\nname = \"bus\"\nurl = \"{}\"\nstream = \"{STREAM}\"\n\
             subject = \"bench.{{event_type}}\"\nsecret = \"{}\"\n{}\n",
            ctx.relay_toml(&db.url, addr, &[]),
            nats.url,
            ctx.secret,
            ctx.p.webhook_config
        );
        let nats_cpu0 = nats.cpu_secs();
        let m0 = ctx.marks(None)?;
        let mut relay = crate::common::proc::RelayProcess::start(&ctx.p.relay_bin, &toml, addr)?;
        let end = wait_deliveries(
            &mut relay,
            || stored.load(Ordering::Relaxed) as usize >= events,
            || stored.load(Ordering::Relaxed),
            STALL,
            ctx.p.drain_limit,
        )
        .await?;
        let elapsed = relay.started.elapsed().as_secs_f64();
        let m1 = ctx.marks(Some(relay.pid()))?;
        let nats_cpu = nats.cpu_secs() - nats_cpu0;
        let mem = proc_mem(relay.pid())?;
        let relay_log = finish_relay(&mut relay)?;
        poller.abort();
        let delivered = stored.load(Ordering::Relaxed);
        let cpu = cpu_figures_beside(&m0, &m1, Some(("nats_server", nats_cpu)));
        let relay_cpu = cpu["relay"].as_f64().unwrap_or(f64::NAN);
        anyhow::Ok(json!({
            "events": events,
            "end": end.name(),
            "complete": end == WaitEnd::Done,
            "burst_insert_s": round2(burst_s),
            "last_delivery_s": round2(elapsed),
            "events_per_s": round2(delivered as f64 / elapsed.max(1e-9)),
            "stream_messages": delivered,
            "relay_cpu_s_per_10k": round2(relay_cpu / delivered.max(1) as f64 * 1e4),
            "relay_peak_rss_mib": mib(mem.hwm_kib),
            "cpu_s": cpu,
            "relay": relay_log,
            "rows_by_status_after_stop": status_counts(&db).await?,
        }))
    }
    .await;
    ctx.drop_db(&db).await;
    if let Ok(run) = &result {
        eprintln!(
            "  nats_drain {events}: {} ev/s, {} relay CPU-s per 10k, nats-server {} CPU-s ({})",
            run["events_per_s"],
            run["relay_cpu_s_per_10k"],
            run["cpu_s"]["nats_server"],
            run["end"]
        );
    }
    result
}
