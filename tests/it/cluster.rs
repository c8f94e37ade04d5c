//! The cluster-wide dashboard (issue 20 item 6), with relay binaries on one table (each a
//! process of its own, so each reports as its own instance): the overview of any one sums
//! every relay's deliveries and endpoint attempts, breaks them down per instance, and shows
//! a relay that shut down as stopped and one that was killed as gone.

use crate::common::fault::wait_ready;
use crate::common::process::{relay, Proc};
use crate::common::*;

use nix::sys::signal::Signal;
use serde_json::Value;

/// A relay binary on `db` with its dashboard at `base`; reports every 2 s (poll_interval 1s).
struct Node {
    proc: Proc,
    base: String,
    _config: tempfile::NamedTempFile,
}

impl Node {
    async fn start(db: &TestDb, rx: &Receiver, name: &str) -> Self {
        let addr = free_addr();
        let extra = format!(
            "poll_interval = \"1s\"\n{}\n[http]\nlisten = \"{addr}\"\n",
            webhook_toml("main", &rx.url)
        );
        let config = db.migrated_config_file(&extra).await;
        let proc = relay(name, &config);
        let base = format!("http://{addr}");
        wait_ready(&format!("{name} ready"), &base).await;
        Self {
            proc,
            base,
            _config: config,
        }
    }

    async fn overview(&self) -> Value {
        let (status, body) = http_get(&format!("{}/api/overview", self.base)).await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    async fn stop(&mut self, sig: Signal) {
        self.proc.signal(sig);
        self.proc.wait_exit(PATIENCE).await;
    }
}

/// The instance called `name` in an overview's breakdown.
fn instance<'a>(o: &'a Value, name: &str) -> &'a Value {
    o["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("no instance {name} in {}", o["instances"]))
}

fn this_instance(o: &Value) -> String {
    o["relay"]["instance"].as_str().unwrap().to_owned()
}

fn delivered_total(o: &Value) -> u64 {
    o["timeline"]["delivered"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .sum()
}

/// Waits until `node`'s overview satisfies `ok`, and returns it.
async fn overview_where(node: &Node, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while tokio::time::Instant::now() < deadline {
        last = node.overview().await;
        if ok(&last) {
            return last;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    panic!("timed out waiting for: {what}; last overview:\n{last:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_sums_every_relay_and_shows_stopped_and_gone_ones() {
    let db = TestDb::new().await;
    let rx = Receiver::start().await;
    let client = db.client().await;

    // Relay A delivers 30 events alone, then shuts down cleanly.
    let mut a = Node::start(&db, &rx, "relay A").await;
    let a_name = this_instance(&a.overview().await);
    let first = insert_events(&client, 30, "CLUSTER.A").await;
    rx.wait_accepted(&first).await;
    // Relay B starts; A stops (its last report marks it stopped).
    let mut b = Node::start(&db, &rx, "relay B").await;
    let b_name = this_instance(&b.overview().await);
    a.stop(Signal::SIGTERM).await;
    // B delivers 40 alone, then relay C starts: its page knows A and B only from their
    // reports.
    let second = insert_events(&client, 40, "CLUSTER.B").await;
    rx.wait_accepted(&second).await;
    let c = Node::start(&db, &rx, "relay C").await;
    let c_name = this_instance(&c.overview().await);
    assert!(a_name != b_name && b_name != c_name && a_name != c_name);

    let o = overview_where(&c, "C's overview to count A's 30 and B's 40", |o| {
        delivered_total(o) == 70
            && o["endpoints"][0]["attempts"] == 70
            && o["instances"].as_array().unwrap().len() == 3
            && instance(o, &b_name)["delivered_5m"] == 40
    })
    .await;
    assert_eq!(o["cluster"], true);
    assert_eq!(o["endpoints"][0]["succeeded"], 70);
    assert_eq!(o["endpoints"][0]["success_rate"], 1.0);
    let (ia, ib, ic) = (
        instance(&o, &a_name),
        instance(&o, &b_name),
        instance(&o, &c_name),
    );
    assert_eq!(
        (&ia["state"], &ia["delivered_5m"], &ia["this"]),
        (&"stopped".into(), &30.into(), &false.into())
    );
    assert_eq!((&ib["state"], &ib["this"]), (&"live".into(), &false.into()));
    assert_eq!(
        (&ic["state"], &ic["delivered_5m"], &ic["this"]),
        (&"live".into(), &0.into(), &true.into())
    );
    assert!(ib["connections"].as_u64().unwrap() >= 1, "{ib}");
    // The card counts the live ones.
    let live = o["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["state"] == "live")
        .count();
    assert_eq!(live, 2);

    // B's own page (live figures) and C's view of it (B's reports) agree.
    let ob = b.overview().await;
    assert_eq!(instance(&ob, &b_name)["delivered_5m"], 40);
    assert_eq!(delivered_total(&ob), 70, "B's page sums A's reports too");

    // B is killed: no last report, so it shows as gone once silent for 2 x 2 s + 10 s.
    b.stop(Signal::SIGKILL).await;
    let o = overview_where(&c, "B to show as gone", |o| {
        instance(o, &b_name)["state"] == "gone"
    })
    .await;
    assert_eq!(instance(&o, &b_name)["in_flight"], 0);
    assert_eq!(delivered_total(&o), 70, "the history stays");
    // C delivers the next events; its page counts them at once (its own figures are live).
    let third = insert_events(&client, 5, "CLUSTER.C").await;
    rx.wait_accepted(&third).await;
    overview_where(&c, "C's 5 on its own page", |o| {
        delivered_total(o) == 75 && instance(o, &c_name)["delivered_5m"] == 5
    })
    .await;
    assert_eq!(rx.deliveries().len(), 75, "each event was sent once");
}

/// Without the tables of migration 011 (a database migrated by an older release, or a role
/// without their GRANTs), the relay delivers as before, says once why the dashboards miss
/// it, and its own page says its figures are its own only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_report_tables_delivery_goes_on_and_one_warning_says_why() {
    let db = TestDb::new().await;
    let rx = Receiver::start().await;
    let client = db.client().await;
    let mut node = Node::start(&db, &rx, "relay").await;
    client
        .batch_execute(
            "DROP TABLE \"OutboxEvent_relay_instances\"; DROP TABLE \"OutboxEvent_relay_activity\"",
        )
        .await
        .unwrap();
    // Reports every 2 s: several fail while these are delivered and the page is read.
    for _ in 0..3 {
        let ids = insert_events(&client, 5, "CLUSTER.OLD").await;
        rx.wait_accepted(&ids).await;
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
    let o = overview_where(&node, "the page to say it is alone", |o| {
        o["cluster"] == false
    })
    .await;
    assert_eq!(delivered_total(&o), 15, "its own figures, live");
    node.stop(Signal::SIGTERM).await;
    let log = node.proc.stderr();
    let warnings = log
        .lines()
        .filter(|l| l.contains(" WARN ") && l.contains("cluster report failed"))
        .count();
    assert_eq!(warnings, 1, "{log}");
    assert!(log.contains("migrate"), "{log}");
}
