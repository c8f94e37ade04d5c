//! RabbitMQ for the integration tests: the system's `rabbitmq-server`, started by each test
//! as a node of its own (its own node name, AMQP and distribution ports on loopback, data,
//! logs, Erlang cookie and an empty plugin list in a temp dir; none of the machine's
//! `/etc/rabbitmq` settings), stopped and started again on the same port and data, killed
//! on drop; and helpers to declare a durable exchange and queue and read back exactly what
//! the queue holds.
//!
//! A node takes a few seconds to boot, one node at a time. Every wait is bounded by
//! [`PATIENCE`] without progress; what the node said is in its `log()`, and in the panic
//! message when it exits or stalls first.

use std::path::PathBuf;
use std::process::Child;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::time::Instant;

use super::broker::spawn_logged;
use super::{free_addr, StallDeadline, PATIENCE};

/// The panic message when the server is missing.
const MISSING: &str = "rabbitmq-server (apt-get install rabbitmq-server)";
/// The script that starts a node in the foreground (Debian's package; the wrapper on PATH
/// would switch to the `rabbitmq` user and its node).
const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
/// How long a graceful stop (SIGTERM) may take before the node is killed.
const STOP_PATIENCE: Duration = Duration::from_secs(30);

/// One node boots at a time (see [`RabbitServer::wait_answering`]).
static BOOTING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// The exchange and queue [`RabbitServer::declare`] makes.
pub const EXCHANGE: &str = "outbox";
pub const QUEUE: &str = "events";

fn free_port() -> u16 {
    free_addr().rsplit(':').next().unwrap().parse().unwrap()
}

/// One RabbitMQ node on free loopback ports, everything it writes in a temp dir of its own;
/// killed on drop.
pub struct RabbitServer {
    port: u16,
    dist_port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl RabbitServer {
    /// Starts a node and waits until it takes AMQP connections.
    pub async fn start() -> Self {
        Self::start_with("").await
    }

    /// [`RabbitServer::start`] with `extra` lines of `rabbitmq.conf` (a TLS listener, say).
    pub async fn start_with(extra: &str) -> Self {
        if !std::path::Path::new(SERVER).exists() {
            panic!("{MISSING}");
        }
        let dir = tempfile::Builder::new()
            .prefix("rabbitmq-")
            .tempdir()
            .unwrap();
        let mut me = Self {
            port: free_port(),
            dist_port: free_port(),
            dir,
            child: None,
        };
        std::fs::write(me.dir.path().join("enabled_plugins"), "[].\n").unwrap();
        std::fs::write(me.dir.path().join("rabbitmq-env.conf"), "").unwrap();
        std::fs::write(
            me.dir.path().join("rabbitmq.conf"),
            format!(
                "listeners.tcp.local = 127.0.0.1:{}\nloopback_users = none\n\
                 log.console = true\nlog.console.level = info\n{extra}\n",
                me.port
            ),
        )
        .unwrap();
        me.spawn();
        me.wait_answering().await;
        me
    }

    /// `amqp://guest:guest@127.0.0.1:PORT/%2f`: the same across stops and starts.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Everything the node printed (its log at info, on the console), across restarts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("server.log")).unwrap_or_default()
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "rabbitmq-server already running");
        let p = |name: &str| self.path(name).to_str().unwrap().to_owned();
        let env = [
            ("HOME", p("")),
            ("RABBITMQ_CONF_ENV_FILE", p("rabbitmq-env.conf")),
            ("RABBITMQ_CONFIG_FILE", p("rabbitmq.conf")),
            (
                "RABBITMQ_NODENAME",
                format!("outbox-test-{}@localhost", self.port),
            ),
            ("RABBITMQ_DIST_PORT", self.dist_port.to_string()),
            ("RABBITMQ_MNESIA_BASE", p("mnesia")),
            ("RABBITMQ_LOG_BASE", p("log")),
            ("RABBITMQ_ENABLED_PLUGINS_FILE", p("enabled_plugins")),
            ("RABBITMQ_PID_FILE", p("pid")),
            ("ERL_EPMD_ADDRESS", "127.0.0.1".to_owned()),
        ];
        let _ = std::fs::remove_file(self.path("pid"));
        // spawn_logged takes no environment, so the script runs under `env`.
        let mut args: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        args.push(SERVER.to_owned());
        self.child = Some(spawn_logged(
            "env",
            &args,
            &self.path("server.log"),
            MISSING,
        ));
    }

    /// The Erlang VM's pid (the script that starts it stays as its parent).
    fn vm_pid(&self) -> Option<Pid> {
        let text = std::fs::read_to_string(self.path("pid")).ok()?;
        text.trim().parse().ok().map(Pid::from_raw)
    }

    /// Waits until the node takes AMQP connections. A boot costs an Erlang VM several
    /// seconds of CPU, and six tests at a time on two cores once pushed three boots past a
    /// minute in CI: nodes boot one at a time ([`BOOTING`]), and the wait fails only when
    /// the node's log has stopped growing for [`PATIENCE`] ([`StallDeadline`]).
    async fn wait_answering(&mut self) {
        let _turn = BOOTING
            .acquire()
            .await
            .expect("the boot semaphore is never closed");
        let url = self.url();
        let log = self.path("server.log");
        let child = self.child.as_mut().expect("rabbitmq-server started");
        let log_len = || std::fs::metadata(&log).map_or(0, |m| m.len());
        let mut deadline = StallDeadline::new();
        let mut seen = log_len();
        loop {
            let exited = child.try_wait().unwrap();
            if exited.is_some() || Instant::now() >= deadline.at() {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                let why = exited.map_or("stalled".to_owned(), |s| format!("exited ({s})"));
                panic!("rabbitmq-server {why} before taking connections:\n{log}");
            }
            let attempt = Connection::connect(&url, ConnectionProperties::default());
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(2), attempt).await {
                return;
            }
            let now = log_len();
            if now > seen {
                seen = now;
                deadline.progressed();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the node (SIGTERM: a clean shutdown, every persistent message on disk; SIGKILL
    /// after 30 s) and waits until it is gone. Its port then refuses connections; its data
    /// stays.
    pub async fn stop(&mut self) {
        self.signal_vm(Signal::SIGTERM).await;
    }

    /// Kills the node at once (SIGKILL): what it had not written is lost.
    pub async fn kill(&mut self) {
        self.signal_vm(Signal::SIGKILL).await;
    }

    async fn signal_vm(&mut self, signal: Signal) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(vm) = self.vm_pid() {
            let _ = nix::sys::signal::kill(vm, signal);
        }
        let deadline = Instant::now() + STOP_PATIENCE;
        while child.try_wait().unwrap().is_none() {
            if Instant::now() >= deadline {
                if let Some(vm) = self.vm_pid() {
                    let _ = nix::sys::signal::kill(vm, Signal::SIGKILL);
                }
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts the node again on the same ports and data; waits as [`RabbitServer::start`]
    /// does.
    pub async fn start_again(&mut self) {
        self.spawn();
        self.wait_answering().await;
    }

    /// A connection to this node.
    pub async fn connect(&self) -> Connection {
        Connection::connect(&self.url(), ConnectionProperties::default())
            .await
            .expect("connecting to rabbitmq-server")
    }

    /// Declares the durable topic exchange [`EXCHANGE`] and the durable queue [`QUEUE`]
    /// bound to it for every routing key.
    pub async fn declare(&self) {
        let conn = self.connect().await;
        let ch = conn.create_channel().await.unwrap();
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.exchange_declare(
            EXCHANGE.into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await
        .unwrap();
        let queue = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.queue_declare(QUEUE.into(), queue, FieldTable::default())
            .await
            .unwrap();
        ch.queue_bind(
            QUEUE.into(),
            EXCHANGE.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        let _ = conn.close(200, "declared".into()).await;
    }
}

impl Drop for RabbitServer {
    fn drop(&mut self) {
        if let Some(vm) = self.vm_pid() {
            let _ = nix::sys::signal::kill(vm, Signal::SIGKILL);
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One message as the queue held it.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub routing_key: String,
    pub body: Vec<u8>,
    pub message_id: Option<String>,
    pub kind: Option<String>,
    pub content_type: Option<String>,
    pub delivery_mode: Option<u8>,
    pub headers: Vec<(String, String)>,
}

impl Delivered {
    /// The body, parsed as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("the body is JSON")
    }

    /// Header `name` as text; panics if the message has none.
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no header {name:?}: {self:?}"))
    }
}

/// How many messages `queue` holds now.
pub async fn queue_len(ch: &Channel, queue: &str) -> u32 {
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    ch.queue_declare(queue.into(), passive, FieldTable::default())
        .await
        .unwrap()
        .message_count()
}

/// Takes every message `queue` holds, in order (consumed without acks: they leave the
/// queue).
pub async fn drain_queue(conn: &Connection, queue: &str) -> Vec<Delivered> {
    let ch = conn.create_channel().await.unwrap();
    let n = queue_len(&ch, queue).await as usize;
    let no_ack = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    let mut consumer = ch
        .basic_consume(queue.into(), "drain".into(), no_ack, FieldTable::default())
        .await
        .unwrap();
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let next = tokio::time::timeout(PATIENCE, consumer.next()).await;
        let delivery = next
            .unwrap_or_else(|_| panic!("{} of {n} messages arrived", out.len()))
            .expect("consumer ended")
            .expect("delivery");
        let p = &delivery.properties;
        let headers = p
            .headers()
            .as_ref()
            .map(|t| {
                t.inner()
                    .iter()
                    .map(|(k, v)| {
                        let v = match v {
                            AMQPValue::LongString(s) => {
                                String::from_utf8_lossy(s.as_bytes()).into_owned()
                            }
                            other => format!("{other:?}"),
                        };
                        (k.to_string(), v)
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(Delivered {
            routing_key: delivery.routing_key.to_string(),
            body: delivery.data.clone(),
            message_id: p.message_id().as_ref().map(|s| s.to_string()),
            kind: p.kind().as_ref().map(|s| s.to_string()),
            content_type: p.content_type().as_ref().map(|s| s.to_string()),
            delivery_mode: *p.delivery_mode(),
            headers,
        });
    }
    let _ = ch.close(200, "drained".into()).await;
    out
}
