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

use crate::common::proc::RelayProcess;
use crate::common::proc::{proc_cpu_secs, proc_mem};
use crate::common::stats::{mib, round2};
use crate::drain::backlog;
use crate::receiver::{now_ns, Counts};
use crate::setup::{
    cpu_figures_beside, finish_relay, status_counts, wait_deliveries, Ctx, FreshDb, WaitEnd,
};

/// A drain that stops making progress for this long is given up.
const STALL: Duration = Duration::from_secs(15);
const STREAM: &str = "BENCH";

/// JetStream of the bench's own: one `nats-server -js`, or a cluster of `replicas` nodes
/// with routes to each other, and the stream [`STREAM`] with that many replicas; killed on
/// drop.
pub struct NatsServer {
    children: Vec<Child>,
    urls: Vec<String>,
    _dir: tempfile::TempDir,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl NatsServer {
    /// One node for `replicas` 1, else a cluster of `replicas` nodes.
    pub async fn start(replicas: usize) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("outbox-bench-nats-")
            .tempdir()?;
        let mut ports: Vec<(u16, u16)> = Vec::new();
        while ports.len() < replicas {
            let pair = (free_port()?, free_port()?);
            if pair.0 != pair.1
                && !ports
                    .iter()
                    .any(|p| [p.0, p.1].contains(&pair.0) || [p.0, p.1].contains(&pair.1))
            {
                ports.push(pair);
            }
        }
        let mut me = Self {
            children: Vec::new(),
            urls: ports
                .iter()
                .map(|(p, _)| format!("nats://127.0.0.1:{p}"))
                .collect(),
            _dir: dir,
        };
        for (i, &(port, cluster_port)) in ports.iter().enumerate() {
            let store = me._dir.path().join(format!("n{i}"));
            let mut args: Vec<String> = vec![
                "-js".into(),
                "-a".into(),
                "127.0.0.1".into(),
                "-p".into(),
                port.to_string(),
                "-sd".into(),
                store.to_string_lossy().into_owned(),
                "--server_name".into(),
                format!("n{i}"),
            ];
            if replicas > 1 {
                let routes: Vec<String> = ports
                    .iter()
                    .enumerate()
                    .filter(|&(j, _)| j != i)
                    .map(|(_, (_, c))| format!("nats://127.0.0.1:{c}"))
                    .collect();
                args.extend([
                    "--cluster_name".into(),
                    "outbox-bench".into(),
                    "--cluster".into(),
                    format!("nats://127.0.0.1:{cluster_port}"),
                    "--routes".into(),
                    routes.join(","),
                ]);
            }
            let child = Command::new("nats-server")
                .args(&args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| {
                    anyhow::anyhow!("nats-server on PATH (apt-get install nats-server): {e}")
                })?;
            me.children.push(child);
        }
        // A cluster takes a few seconds to elect its meta leader: until then, creating
        // the stream fails.
        let deadline = Instant::now() + Duration::from_secs(60);
        let servers = me.servers()?;
        loop {
            let why = match async_nats::connect(servers.clone()).await {
                Ok(client) => {
                    let js = async_nats::jetstream::new(client);
                    let created = js
                        .create_stream(async_nats::jetstream::stream::Config {
                            name: STREAM.to_owned(),
                            subjects: vec!["bench.>".to_owned()],
                            storage: async_nats::jetstream::stream::StorageType::File,
                            num_replicas: replicas,
                            ..Default::default()
                        })
                        .await;
                    match created {
                        Ok(_) => break,
                        Err(e) => e.to_string(),
                    }
                }
                Err(e) => e.to_string(),
            };
            anyhow::ensure!(
                Instant::now() < deadline,
                "JetStream (R{replicas}) did not start: {why}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(me)
    }

    /// Every node's address, for a client.
    pub fn servers(&self) -> anyhow::Result<Vec<async_nats::ServerAddr>> {
        Ok(self
            .urls
            .iter()
            .map(|u| u.parse())
            .collect::<Result<_, _>>()?)
    }

    /// The `[[nats]]` section publishing to [`STREAM`] on `bench.{event_type}`.
    pub fn section(&self, secret: &str, extra: &str) -> String {
        let urls: Vec<String> = self.urls.iter().map(|u| format!("{u:?}")).collect();
        format!(
            "[[nats]]\nname = \"bus\"\nurl = [{}]\nstream = \"{STREAM}\"\n\
             subject = \"bench.{{event_type}}\"\nsecret = \"{secret}\"\n{extra}\n",
            urls.join(", ")
        )
    }

    /// The relay (no webhook) publishing to this stream ([`NatsServer::section`]).
    pub fn start_relay(&self, ctx: &Ctx<'_>, db: &FreshDb) -> anyhow::Result<RelayProcess> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr = ([127, 0, 0, 1], port).into();
        let toml = format!(
            "{}{}",
            ctx.relay_toml(&db.url, addr, &[], ""),
            self.section(&ctx.secret, &ctx.p.webhook_config)
        );
        RelayProcess::start(&ctx.p.relay_bin, &toml, addr)
    }

    /// CPU seconds of every node so far.
    pub fn cpu_secs(&self) -> f64 {
        self.children
            .iter()
            .map(|c| proc_cpu_secs(&c.id().to_string()).unwrap_or(f64::NAN))
            .sum()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Counts what reaches `bench.>` as the webhook receiver counts requests (signature checked,
/// first receipt time per event number): a core NATS subscriber, which the server hands
/// each message as it stores it in the stream.
pub async fn subscribe(
    nats: &NatsServer,
    counts: Arc<Counts>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let client = async_nats::connect(nats.servers()?).await?;
    let mut sub = client.subscribe("bench.>").await?;
    client.flush().await?;
    Ok(tokio::spawn(async move {
        let _client = client;
        while let Some(msg) = futures_util::StreamExt::next(&mut sub).await {
            let now = now_ns();
            let mut headers = hyper::HeaderMap::new();
            if let Some(h) = &msg.headers {
                for (name, values) in h.iter() {
                    if let (Ok(name), Some(value)) = (
                        hyper::header::HeaderName::from_bytes(name.to_string().as_bytes()),
                        values.first(),
                    ) {
                        if let Ok(value) = hyper::header::HeaderValue::from_str(value.as_str()) {
                            headers.insert(name, value);
                        }
                    }
                }
            }
            counts.receive(&headers, &msg.payload, now);
        }
    }))
}

/// The nats_drain scenario: `events` to one JetStream stream of `replicas` replicas.
pub async fn nats_drain(ctx: &Ctx<'_>, events: usize, replicas: usize) -> anyhow::Result<Value> {
    let nats = NatsServer::start(replicas).await?;
    let db = ctx.fresh_db().await?;
    let result = async {
        let burst_s = backlog(ctx, &db, events).await?;
        // How many messages the stream holds, kept current by a poller.
        let stored = Arc::new(AtomicU64::new(0));
        let poller = {
            let (stored, servers) = (stored.clone(), nats.servers()?);
            tokio::spawn(async move {
                let js = async_nats::jetstream::new(async_nats::connect(servers).await?);
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
        let nats_cpu0 = nats.cpu_secs();
        let m0 = ctx.marks(None)?;
        let mut relay = nats.start_relay(ctx, &db)?;
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
            "replicas": replicas,
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
            "  nats_drain {events} (R{replicas}): {} ev/s, {} relay CPU-s per 10k, nats-server {} CPU-s ({})",
            run["events_per_s"],
            run["relay_cpu_s_per_10k"],
            run["cpu_s"]["nats_server"],
            run["end"]
        );
    }
    result
}
