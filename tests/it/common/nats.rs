//! NATS JetStream for the integration tests: the system's `nats-server`, started by each
//! test on free loopback ports with its JetStream store in a temp dir of its own (one
//! server, or a three-node cluster), killed on drop; and helpers over `async_nats` to
//! create streams and read back exactly what a stream holds.
//!
//! Every wait is bounded by [`PATIENCE`]; what a server said is in its `log()`, and in the
//! panic message when it exits or times out before accepting clients. Works with the
//! nats-server 2.9 that Debian packages, and later ones.

use std::fmt::Display;
use std::future::Future;
use std::path::PathBuf;
use std::process::Child;
use std::time::Duration;

use async_nats::jetstream::context::{
    CreateStreamErrorKind, DeleteStreamErrorKind, GetStreamError, GetStreamErrorKind,
};
use async_nats::jetstream::{self, stream};
use nix::sys::signal::Signal;
use tokio::time::Instant;

use super::broker::{spawn_logged, stop_child};
use super::{free_addr, wait_until, PATIENCE};

/// The panic message when the binary is missing.
const MISSING: &str = concat!(
    "nats-server on PATH (https://github.com/nats-io/nats-server/releases, ",
    "or apt-get install nats-server)"
);

/// How long a graceful stop (SIGTERM) may take before the server is killed.
const STOP_PATIENCE: Duration = Duration::from_secs(15);

/// For [`retry`]: an error of an `async_nats` kind with a `JetStream` variant is worth
/// retrying unless it is a JetStream API error that is not [`transient`] (a timeout, no
/// responders or a lost connection are).
macro_rules! retryable {
    ($kind:ident) => {
        |e| !matches!(e.kind(), $kind::JetStream(e) if !transient(&e))
    };
}

/// A loopback port free right now.
fn free_port() -> u16 {
    free_addr().rsplit(':').next().unwrap().parse().unwrap()
}

/// One nats-server process: its command line (the same at each start), its directory (the
/// JetStream store under `store/`, its output in `nats.log`), and the running process.
struct Node {
    name: String,
    port: u16,
    args: Vec<String>,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Node {
    /// A node listening on `port` for clients, with `extra` arguments (cluster flags).
    fn new(name: &str, port: u16, extra: Vec<String>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("nats-{name}-"))
            .tempdir()
            .unwrap();
        let store = dir.path().join("store");
        let mut args: Vec<String> = [
            "--jetstream",
            "--addr",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--server_name",
            name,
            "--store_dir",
            store.to_str().unwrap(),
        ]
        .map(str::to_owned)
        .into();
        args.extend(extra);
        Self {
            name: name.to_owned(),
            port,
            args,
            dir,
            child: None,
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats.log")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Starts the process (its output appended to `nats.log`); does not wait.
    fn spawn(&mut self) {
        assert!(
            self.child.is_none(),
            "nats-server {} already running",
            self.name
        );
        let child = spawn_logged("nats-server", &self.args, &self.log_path(), MISSING);
        self.child = Some(child);
    }

    /// Waits until the server accepts a client connection (and, with `jetstream`, answers
    /// JetStream API requests); panics with its log if it exits first, or takes longer than
    /// [`PATIENCE`].
    async fn wait_accepting(&mut self, jetstream: bool) {
        let (url, log, name) = (self.url(), self.log_path(), self.name.clone());
        let child = self.child.as_mut().expect("nats-server started");
        // Just before wait_until would give up, give up with the server's log.
        let deadline = Instant::now() + PATIENCE - Duration::from_secs(1);
        wait_until(&format!("nats-server {name} accepting clients"), || {
            let exited = child.try_wait().unwrap();
            if exited.is_some() || Instant::now() >= deadline {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                let why = exited.map_or("timed out".to_owned(), |s| format!("exited ({s})"));
                panic!("nats-server {name} {why} before accepting clients:\n{log}");
            }
            let url = url.clone();
            async move { answers(&url, jetstream).await }
        })
        .await;
    }

    /// Sends `signal` and waits (bounded) for the process to exit; SIGKILL if it does not.
    async fn stop_with(&mut self, signal: Signal) {
        if let Some(child) = self.child.take() {
            stop_child(child, signal, STOP_PATIENCE).await;
        }
    }
}

/// Whether the server at `url` accepts a client connection and, with `jetstream`, answers
/// `$JS.API.INFO` without an error (a cluster does once its meta leader is elected). A raw
/// request: `Context::query_account` cannot parse what a 2.9 server answers.
async fn answers(url: &str, jetstream: bool) -> bool {
    let Ok(client) = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(1))
        .connect(url)
        .await
    else {
        return false;
    };
    if !jetstream {
        return true;
    }
    let request = client.request("$JS.API.INFO", bytes::Bytes::new());
    match tokio::time::timeout(Duration::from_secs(1), request).await {
        Ok(Ok(reply)) => serde_json::from_slice::<serde_json::Value>(&reply.payload)
            .is_ok_and(|v| v.get("error").is_none()),
        _ => false,
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One `nats-server -js` on a free loopback port, its file store in a temp dir of its own;
/// killed on drop.
pub struct NatsServer {
    node: Node,
}

impl NatsServer {
    /// Starts the server and waits until it accepts clients and JetStream answers.
    pub async fn start() -> Self {
        let mut node = Node::new("single", free_port(), Vec::new());
        node.spawn();
        node.wait_accepting(true).await;
        Self { node }
    }

    /// `nats://127.0.0.1:PORT`: the same across [`NatsServer::stop`] and
    /// [`NatsServer::start_again`].
    pub fn url(&self) -> String {
        self.node.url()
    }

    pub fn port(&self) -> u16 {
        self.node.port
    }

    /// The JetStream store directory (`-sd`).
    pub fn store_dir(&self) -> PathBuf {
        self.node.dir.path().join("store")
    }

    /// Everything the server printed, across restarts.
    pub fn log(&self) -> String {
        self.node.log()
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.node.child {
            Some(c) => c.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    /// Stops the server (SIGTERM; SIGKILL after 15 s) and waits for it to exit. Its port
    /// then refuses connections; its store stays.
    pub async fn stop(&mut self) {
        self.node.stop_with(Signal::SIGTERM).await;
    }

    /// Kills the server (SIGKILL) and waits for it to exit.
    pub async fn kill(&mut self) {
        self.node.stop_with(Signal::SIGKILL).await;
    }

    /// Starts the server again on the same port and store (what JetStream held is still
    /// there: file storage); waits as [`NatsServer::start`] does.
    pub async fn start_again(&mut self) {
        self.node.spawn();
        self.node.wait_accepting(true).await;
    }
}

/// A JetStream cluster of nats-server processes on loopback: each with a server name, a
/// store dir, a client port and a cluster port, routes to the others; killed on drop.
pub struct NatsCluster {
    nodes: Vec<Node>,
}

/// The cluster's name (`--cluster_name`).
pub const CLUSTER_NAME: &str = "outbox-it";

impl NatsCluster {
    /// Starts `n` nodes (`n0`, `n1`, …) and waits until each accepts clients and the
    /// JetStream meta leader is elected: an `n`-replica stream can be created (it is
    /// deleted again).
    pub async fn start(n: usize) -> Self {
        // 2n distinct ports: each is free when picked, but a port picked twice would not be.
        let mut picked = Vec::new();
        while picked.len() < 2 * n {
            let port = free_port();
            if !picked.contains(&port) {
                picked.push(port);
            }
        }
        let ports: Vec<(u16, u16)> = picked.chunks(2).map(|p| (p[0], p[1])).collect();
        let nodes = ports
            .iter()
            .enumerate()
            .map(|(i, &(port, cluster_port))| {
                let routes = ports
                    .iter()
                    .enumerate()
                    .filter(|&(j, _)| j != i)
                    .map(|(_, (_, c))| format!("nats://127.0.0.1:{c}"))
                    .collect::<Vec<_>>()
                    .join(",");
                let extra = vec![
                    "--cluster_name".into(),
                    CLUSTER_NAME.into(),
                    "--cluster".into(),
                    format!("nats://127.0.0.1:{cluster_port}"),
                    "--routes".into(),
                    routes,
                ];
                Node::new(&format!("n{i}"), port, extra)
            })
            .collect();
        let mut me = Self { nodes };
        for node in &mut me.nodes {
            node.spawn();
        }
        for node in &mut me.nodes {
            node.wait_accepting(true).await;
        }
        let client = connect(me.urls()).await;
        let probe = "HARNESS_READY";
        create_stream(&client, probe, &["harness.ready"], n).await;
        let js = context(&client);
        retry(
            "deleting the readiness stream",
            || js.delete_stream(probe),
            retryable!(DeleteStreamErrorKind),
        )
        .await;
        me
    }

    /// Every node's client URL, `nats://127.0.0.1:PORT`, in node order (killed ones too).
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Node::url).collect()
    }

    /// Node `i`'s server name (`n{i}`), as stream info's `cluster.leader` names it.
    pub fn name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// The index of the node named `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// Node `i`'s output, across restarts.
    pub fn log(&self, i: usize) -> String {
        self.nodes[i].log()
    }

    /// SIGKILLs node `i` and waits for it to exit.
    pub async fn kill(&mut self, i: usize) {
        self.nodes[i].stop_with(Signal::SIGKILL).await;
    }

    /// Starts node `i` again (same ports, name and store) and waits until it accepts
    /// clients. It catches up with the others in the background.
    pub async fn restart(&mut self, i: usize) {
        self.nodes[i].spawn();
        self.nodes[i].wait_accepting(false).await;
    }
}

/// A client of `urls` (one URL, or several: it reconnects to another when one goes away,
/// without limit). Panics if none accepts a connection now.
pub async fn connect(urls: impl async_nats::ToServerAddrs) -> async_nats::Client {
    async_nats::ConnectOptions::new()
        .name("outbox-relay-tests")
        .connection_timeout(Duration::from_secs(2))
        .connect(urls)
        .await
        .expect("connecting to nats-server")
}

/// A JetStream context whose API requests wait 5 s for a reply (not the connection's 10 s):
/// a request lost to an election is sent again sooner.
fn context(client: &async_nats::Client) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(5))
        .build(client.clone())
}

/// JetStream error codes that a cluster returns while it (re)elects leaders or waits for
/// peers: worth retrying.
fn transient(e: &jetstream::Error) -> bool {
    use jetstream::ErrorCode as C;
    [
        C::CLUSTER_NOT_AVAILABLE,
        C::CLUSTER_NO_PEERS,
        C::INSUFFICIENT_RESOURCES,
        C::CLUSTER_INCOMPLETE,
        C::CLUSTER_NOT_LEADER,
        C::CLUSTER_NOT_ACTIVE,
        C::CLUSTER_NOT_ASSIGNED,
    ]
    .contains(&e.error_code())
}

/// Runs `op` until it succeeds; retries errors `is_transient` accepts for up to
/// [`PATIENCE`], then panics with the last one. Others panic at once.
async fn retry<T, E: Display, Fut>(
    what: &str,
    mut op: impl FnMut() -> Fut,
    is_transient: impl Fn(&E) -> bool,
) -> T
where
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        match op().await {
            Ok(v) => return v,
            Err(e) if is_transient(&e) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

/// Creates (or finds, if the same) a file-storage stream `name` on `subjects` with
/// `replicas` replicas and the default duplicate window (2 min); retries while a cluster
/// is not ready. Returns its info.
pub async fn create_stream(
    client: &async_nats::Client,
    name: &str,
    subjects: &[&str],
    replicas: usize,
) -> stream::Info {
    let js = context(client);
    let config = stream::Config {
        name: name.to_owned(),
        subjects: subjects.iter().map(|s| (*s).to_owned()).collect(),
        num_replicas: replicas,
        storage: stream::StorageType::File,
        ..Default::default()
    };
    let stream = retry(
        &format!("creating stream {name}"),
        || js.create_stream(config.clone()),
        retryable!(CreateStreamErrorKind),
    )
    .await;
    stream.cached_info().clone()
}

/// Publishes `body` (JSON) to `subject` with `Nats-Msg-Id: msg_id`, retrying until
/// JetStream acks it (bounded by [`PATIENCE`]; so a subject no stream takes panics only
/// then): a retry of a message that was stored after all is acked as a duplicate, so each
/// id is stored once.
pub async fn publish(
    client: &async_nats::Client,
    subject: &str,
    msg_id: &str,
    body: &serde_json::Value,
) -> jetstream::publish::PublishAck {
    use jetstream::context::PublishErrorKind as K;
    // An ack not come within 2 s is asked for again: while a cluster elects a stream
    // leader, sooner than the default 5 s.
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(2))
        .build(client.clone());
    let payload = bytes::Bytes::from(serde_json::to_vec(body).unwrap());
    retry(
        &format!("publishing {msg_id} to {subject}"),
        || {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id);
            let (js, payload) = (&js, payload.clone());
            async move {
                js.publish_with_headers(subject.to_owned(), headers, payload)
                    .await?
                    .await
            }
        },
        |e| {
            !matches!(
                e.kind(),
                K::WrongLastMessageId | K::WrongLastSequence | K::MaxPayloadExceeded
            )
        },
    )
    .await
}

/// A message as a stream holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    pub subject: String,
    /// The `Nats-Msg-Id` header.
    pub msg_id: Option<String>,
    /// Every header, sorted by name (a name's values in their order).
    pub headers: Vec<(String, String)>,
    /// The payload, parsed as JSON (a payload that is not JSON panics).
    pub body: serde_json::Value,
    /// The payload as stored (what a signature covers).
    pub payload: bytes::Bytes,
    /// The stream sequence.
    pub sequence: u64,
}

impl Received {
    fn from_stream(stream: &str, m: jetstream::message::StreamMessage) -> Self {
        let mut headers: Vec<(String, String)> = m
            .headers
            .iter()
            .flat_map(|(name, values)| {
                values
                    .iter()
                    .map(move |v| (name.to_string(), v.as_str().to_owned()))
            })
            .collect();
        headers.sort_by(|a, b| a.0.cmp(&b.0));
        let msg_id = m
            .headers
            .get(async_nats::header::NATS_MESSAGE_ID)
            .map(|v| v.as_str().to_owned());
        let body = serde_json::from_slice(&m.payload).unwrap_or_else(|e| {
            panic!(
                "stream {stream}, sequence {}: the payload is not JSON ({e}): {:?}",
                m.sequence,
                String::from_utf8_lossy(&m.payload)
            )
        });
        Self {
            subject: m.subject.to_string(),
            msg_id,
            headers,
            body,
            payload: m.payload.clone(),
            sequence: m.sequence,
        }
    }
}

/// The stream's state (messages, first and last sequence), from stream info; retries
/// while a cluster elects a leader.
pub async fn stream_state(client: &async_nats::Client, name: &str) -> stream::State {
    let js = context(client);
    retry(
        &format!("stream info of {name}"),
        || async {
            let stream = js.get_stream(name).await?;
            Ok::<_, GetStreamError>(stream.cached_info().state.clone())
        },
        retryable!(GetStreamErrorKind),
    )
    .await
}

/// Messages in the stream, from stream info.
pub async fn stream_count(client: &async_nats::Client, name: &str) -> u64 {
    stream_state(client, name).await.messages
}

/// Every message the stream holds, in sequence order: each sequence from the first to
/// the last is fetched from the stream leader (`STREAM.MSG.GET`; deleted ones skipped),
/// between two reads of the stream info that must agree, and agree with the count (else
/// it reads again, as the stream changed meanwhile). Bounded by [`PATIENCE`]; one request
/// per message.
pub async fn read_stream(client: &async_nats::Client, name: &str) -> Vec<Received> {
    use stream::LastRawMessageErrorKind as K;
    let js = context(client);
    let stream = retry(
        &format!("finding stream {name}"),
        || js.get_stream_no_info(name),
        retryable!(GetStreamErrorKind),
    )
    .await;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let before = stream_state(client, name).await;
        let mut out = Vec::new();
        if before.messages > 0 {
            for seq in before.first_sequence..=before.last_sequence {
                let got = retry(
                    &format!("reading {name} sequence {seq}"),
                    || async {
                        match stream.get_raw_message(seq).await {
                            Ok(m) => Ok(Some(m)),
                            Err(e) if e.kind() == K::NoMessageFound => Ok(None),
                            Err(e) => Err(e),
                        }
                    },
                    retryable!(K),
                )
                .await;
                if let Some(m) = got {
                    out.push(Received::from_stream(name, m));
                }
            }
        }
        let after = stream_state(client, name).await;
        let same = |s: &stream::State| (s.messages, s.first_sequence, s.last_sequence);
        if same(&before) == same(&after) && out.len() as u64 == before.messages {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "stream {name} kept changing while read: {:?} then {:?}, read {}",
            same(&before),
            same(&after),
            out.len()
        );
    }
}

/// The node that leads stream `name` now (its server name).
pub async fn stream_leader(client: &async_nats::Client, name: &str) -> String {
    async_nats::jetstream::new(client.clone())
        .get_stream(name)
        .await
        .unwrap()
        .cached_info()
        .cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .expect("the stream has a leader")
}
