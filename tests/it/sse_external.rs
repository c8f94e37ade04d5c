//! Our SSE stream read by a client nobody on this team wrote: the `eventsource` npm package,
//! a WHATWG EventSource for Node.js, driven by `tests/js/sse_client.mjs`.
//!
//! Our own test client (`tests/it/common/sse.rs`) parses the wire format from the same reading
//! of the spec as the relay writes it, so the two could share a mistake. This one cannot: it
//! has to find our named events, and when its relay goes away it has to come back by itself,
//! with its own `Last-Event-ID`, and be given exactly what it missed.
//!
//! Needs Node.js 18+ and npm. The pinned packages (`tests/js/package-lock.json`) are
//! installed by the test itself on first use, so `cargo test` alone is enough.

use crate::common::sse::{sse_toml, token};
use crate::common::*;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::time::Instant;

/// The type the client subscribes to; `insert_events` publishes for org `org_1`.
const TYPE: &str = "PROJECT.UPDATED";
const ORG: &str = "org_1";
/// Published until one reaches the client, to learn that its stream has started.
const MARKER: &str = "TEST.MARKER";
/// Short, so the library also parses comment lines between our messages.
const HEARTBEAT: &str = "500ms";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eventsource_npm_client_resumes_by_itself_after_its_relay_goes_away() {
    let js = js_client_dir();
    let db = TestDb::new().await;
    let (_, relay) = db.start_relay(&sse_toml(HEARTBEAT)).await;
    let addr = relay.http_addr;
    let pg = db.client().await;

    let (before, missed, after) = (3, 4, 2);
    let url = format!(
        "{}/v1/events?access_token={}",
        relay.http_url(),
        token(ORG, None)
    );
    let mut es = EventSourceClient::spawn(js, &url, before + missed + after);
    es.wait_until_live(&pg).await;

    let sent_before = insert_events(&pg, before, TYPE).await;
    let got_before = es.take(before).await;
    assert_eq!(event_ids(&got_before), sent_before, "live, in order");

    // The relay cuts its SSE connections when it stops: the client is left reconnecting
    // (every `retry:` 2 s) to an address nobody serves, while events keep being committed.
    // Two transactions, so the resume has to cross a transaction boundary.
    relay.stop().await.unwrap();
    let mut sent_missed = insert_events(&pg, 2, TYPE).await;
    sent_missed.extend(insert_events(&pg, missed - 2, TYPE).await);

    // The URL is all the client knows, so the new relay takes over the old one's address.
    // Nothing but the library's `Last-Event-ID` tells it what the client has seen: without
    // the header it would start live, from now, and never send these.
    let relay = start_relay_at(&db, addr).await;
    let got_missed = es.take(missed).await;
    assert_eq!(
        event_ids(&got_missed),
        sent_missed,
        "after reconnecting: exactly the missed events, in order (a replay of the earlier \
         ones would show up here first)"
    );

    // Live again on the resumed connection; a late duplicate of anything above would come
    // before these.
    let sent_after = insert_events(&pg, after, TYPE).await;
    let got_after = es.take(after).await;
    assert_eq!(event_ids(&got_after), sent_after, "live after the resume");

    let status = es.exit().await;
    assert!(
        status.success(),
        "the client exits 0 once it has its {} messages: {status}\n{}",
        before + missed + after,
        es.stderr()
    );
    assert_eq!(
        es.opens, 2,
        "one connection to each relay: the library reconnected once, by itself"
    );
    let all: Vec<&Received> = got_before
        .iter()
        .chain(&got_missed)
        .chain(&got_after)
        .collect();
    for m in &all {
        let envelope: serde_json::Value = serde_json::from_str(&m.data).unwrap();
        assert_eq!(
            (m.event.as_str(), envelope["type"].as_str()),
            (TYPE, Some(TYPE)),
            "{m:?}"
        );
        assert_eq!(envelope["org_id"], ORG, "{m:?}");
        assert!(
            envelope.get("attempt").is_none(),
            "SSE envelopes carry no attempt: {m:?}"
        );
    }
    let cursors: HashSet<&str> = all.iter().map(|m| m.id.as_str()).collect();
    assert!(
        !cursors.contains("") && cursors.len() == all.len(),
        "every message carries its own resume cursor: {all:?}"
    );
    relay.stop().await.unwrap();
}

/// Starts a relay listening on `addr`, which a stopped relay has just released.
async fn start_relay_at(db: &TestDb, addr: SocketAddr) -> InProcessRelay {
    let cfg = db.config(&format!(
        "{}\n[http]\nlisten = \"{addr}\"\n",
        sse_toml(HEARTBEAT)
    ));
    let mut attempts = 0;
    loop {
        attempts += 1;
        // `InProcessRelay::start` panics when it cannot bind; in a task of its own that is
        // an error we can retry on, in case the port is not free again at once.
        match tokio::spawn(InProcessRelay::start(cfg.clone())).await {
            Ok(relay) => return relay.ready().await,
            Err(e) if attempts < 10 => {
                eprintln!("starting a relay on {addr} failed ({e}); retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("could not start a relay on {addr} again: {e}"),
        }
    }
}

/// One message as the library handed it to the page.
#[derive(Debug, Deserialize)]
struct Received {
    /// `lastEventId`: our resume cursor.
    id: String,
    event: String,
    data: String,
}

impl Received {
    /// The event's id, from the envelope.
    fn event_id(&self) -> String {
        let envelope: serde_json::Value = serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("data is not JSON ({e}): {self:?}"));
        envelope["id"].as_str().expect("envelope id").to_owned()
    }
}

fn event_ids(messages: &[Received]) -> Vec<String> {
    messages.iter().map(Received::event_id).collect()
}

/// A line `sse_client.mjs` printed.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Line {
    Open {
        #[allow(dead_code)]
        open: bool,
    },
    Message(Received),
}

/// `node sse_client.mjs`, running.
struct EventSourceClient {
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: Arc<Mutex<String>>,
    /// How many times the library has opened a connection.
    opens: usize,
}

impl EventSourceClient {
    /// Subscribes to `url`, listening for [`TYPE`] and [`MARKER`]; the process exits once it
    /// has `count` messages of [`TYPE`].
    fn spawn(js: &Path, url: &str, count: usize) -> Self {
        let mut child = Command::new("node")
            .arg(js.join("sse_client.mjs"))
            .arg(url)
            .args([
                "--count",
                &count.to_string(),
                "--type",
                TYPE,
                "--marker",
                MARKER,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run node ({e}): {}", NEED_NODE));
        // Drained as it comes, so a chatty client never blocks; shown when a test fails.
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = pipe.read(&mut buf).await {
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Self {
            stdout: BufReader::new(child.stdout.take().unwrap()).lines(),
            child,
            stderr,
            opens: 0,
        }
    }

    fn stderr(&self) -> String {
        format!("client stderr:\n{}", self.stderr.lock().unwrap())
    }

    /// The next message of type `event` before `deadline`, else None. Opens are counted.
    async fn next_before(&mut self, deadline: Instant, event: &str) -> Option<Received> {
        loop {
            let line = match tokio::time::timeout_at(deadline, self.stdout.next_line()).await {
                Err(_) => return None,
                Ok(Ok(Some(line))) => line,
                Ok(r) => panic!("the client stopped printing ({r:?})\n{}", self.stderr()),
            };
            match serde_json::from_str(&line) {
                Ok(Line::Open { .. }) => self.opens += 1,
                Ok(Line::Message(m)) if m.event == event => return Some(m),
                Ok(Line::Message(_)) => {}
                Err(e) => panic!("unexpected client output {line:?} ({e})\n{}", self.stderr()),
            }
        }
    }

    /// The next `n` messages of [`TYPE`].
    async fn take(&mut self, n: usize) -> Vec<Received> {
        let deadline = Instant::now() + PATIENCE;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match self.next_before(deadline, TYPE).await {
                Some(m) => out.push(m),
                None => panic!(
                    "{} of {n} messages within {PATIENCE:?}: {out:?}\n{}",
                    out.len(),
                    self.stderr()
                ),
            }
        }
        out
    }

    /// A subscriber without a cursor starts live, from a "now" that only the relay sees: the
    /// relay answers (and the library fires `open`) before it takes that snapshot, so `open`
    /// does not mean the next commit will be sent. Publish markers until one arrives:
    /// anything committed after that is the client's.
    async fn wait_until_live(&mut self, pg: &tokio_postgres::Client) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            insert_events(pg, 1, MARKER).await;
            let window = Instant::now() + Duration::from_millis(500);
            if self.next_before(window, MARKER).await.is_some() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no marker reached the client within {PATIENCE:?}\n{}",
                self.stderr()
            );
        }
    }

    /// Waits for the process to exit by itself, still counting opens it prints.
    async fn exit(&mut self) -> ExitStatus {
        let exited = async {
            while let Ok(Some(line)) = self.stdout.next_line().await {
                if let Ok(Line::Open { .. }) = serde_json::from_str(&line) {
                    self.opens += 1;
                }
            }
            self.child.wait().await
        };
        match tokio::time::timeout(PATIENCE, exited).await {
            Ok(status) => status.unwrap(),
            Err(_) => panic!("the client did not exit\n{}", self.stderr()),
        }
    }
}

const NEED_NODE: &str = "this test runs the `eventsource` npm package: install Node.js 18 or \
later and npm (Debian/Ubuntu: apt-get install nodejs npm)";

/// `tests/js`, with its pinned packages installed.
///
/// `npm ci` runs when `node_modules` is missing or older than the lockfile (after a version
/// bump), once per process, under a file lock: test binaries may run at the same time
/// (nextest, two cargo invocations) and must not install over each other.
fn js_client_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| crate::common::npm::installed("tests/js", NEED_NODE))
}
