//! The audit log (issue 20, item 7) against real PostgreSQL and real HTTP: every operator
//! action from the dashboard (by admin token name) and the CLI (by OS user) is a row, listed
//! newest first by `GET /api/audit`; refused requests and dry runs are not; an action on a
//! database whose audit table is missing is done and says it went unrecorded.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::receiver::{Receiver, Reply};
use crate::common::{insert_events, row_state, wait_until, webhook_toml, TestDb};

async fn call(url: &str, body: Option<Value>, token: Option<&str>) -> (u16, Value) {
    let c = reqwest::Client::new();
    let mut req = match body {
        Some(b) => c.post(url).json(&b),
        None => c.get(url),
    };
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn os_user() -> String {
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .unwrap()
        .expect("the test runs as a named user")
        .name
}

async fn wait_status(client: &tokio_postgres::Client, ids: &[String], status: &str) {
    for id in ids {
        wait_until(&format!("{id} {status}"), || async {
            row_state(client, id).await.0 == status
        })
        .await;
    }
}

/// Every entry of the log, read a page of `limit` at a time through the API.
async fn all_entries(base: &str, token: Option<&str>, limit: usize) -> Vec<Value> {
    let mut out = Vec::new();
    let mut url = format!("{base}/api/audit?limit={limit}");
    loop {
        let (s, page) = call(&url, None, token).await;
        assert_eq!(s, 200, "{page}");
        let entries = page["entries"].as_array().unwrap().clone();
        assert!(entries.len() <= limit);
        out.extend(entries);
        match page["next"].as_i64() {
            Some(next) => url = format!("{base}/api/audit?limit={limit}&before={next}"),
            None => return out,
        }
    }
}

#[tokio::test]
async fn every_operator_action_is_recorded_with_who_did_it() {
    let db = TestDb::new().await;
    let rx = Receiver::with_script(Arc::new(|_, _| Reply::status(500))).await;
    let toml = format!(
        "max_attempts = 1\n{}\n[http]\nlisten = \"127.0.0.1:0\"\nadmin_token = \"tok-admin\"\n\
         [[http.admin_tokens]]\nname = \"alice\"\ntoken = \"tok-alice\"\n\
         [[http.admin_tokens]]\nname = \"bob@ops\"\ntoken = \"tok-bob\"\n",
        webhook_toml("hook", &rx.url)
    );
    let (cfg, relay) = db.start_relay(&toml).await;
    let client = db.client().await;
    let base = relay.http_url();
    let ids = insert_events(&client, 4, "ORDER.CREATED").await;
    wait_status(&client, &ids, "FAILED").await;
    rx.set_script(Arc::new(|_, _| Reply::ok()));

    // The dashboard, by three tokens; a wrong token and a dry run leave no entry.
    let act = |path: &str, body: Value, token: &'static str| {
        let url = format!("{base}{path}");
        async move { call(&url, Some(body), Some(token)).await }
    };
    let (s, r) = act("/api/events/retry", json!({ "ids": [ids[0]] }), "tok-alice").await;
    assert_eq!((s, &r["audited"]), (200, &json!(true)), "{r}");
    let (s, r) = act("/api/events/skip", json!({ "ids": [ids[1]] }), "tok-bob").await;
    assert_eq!((s, &r["audited"]), (200, &json!(true)), "{r}");
    let (s, _) = act("/api/endpoints/hook/pause", json!({}), "tok-wrong").await;
    assert_eq!(s, 401);
    let (s, r) = act("/api/endpoints/hook/pause", json!({}), "tok-admin").await;
    assert_eq!((s, &r["audited"]), (200, &json!(true)), "{r}");
    let (s, r) = act("/api/endpoints/hook/resume", json!({}), "tok-alice").await;
    assert_eq!((s, &r["audited"]), (200, &json!(true)), "{r}");
    wait_status(&client, &ids[..1], "COMPLETED").await;
    let (s, r) = act(
        "/api/endpoints/hook/replay",
        json!({ "since": "1h" }),
        "tok-bob",
    )
    .await;
    assert_eq!(
        (s, &r["count"], &r["audited"]),
        (200, &json!(1), &json!(false)),
        "{r}"
    );

    // The CLI, as the OS user.
    let retried = outbox_relay::commands::retry(&cfg, &ids[2..3], None)
        .await
        .unwrap();
    assert_eq!(retried, 1);
    let skipped = outbox_relay::commands::skip(&cfg, &ids[3..]).await.unwrap();
    assert_eq!(skipped, 1);
    wait_status(&client, &ids[2..3], "COMPLETED").await;
    let hour = Duration::from_secs(3600);
    let replayed = outbox_relay::commands::replay(&cfg, "hook", hour, Duration::ZERO, "*", true)
        .await
        .unwrap();
    assert_eq!(replayed, 2);

    let entries = all_entries(&base, Some("tok-bob"), 3).await;
    let user = os_user();
    let got: Vec<(&str, &str, &str, &str)> = entries
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap();
            (s("actor"), s("via"), s("action"), s("target"))
        })
        .collect();
    assert_eq!(
        got,
        [
            (user.as_str(), "cli", "replay", "hook"),
            (user.as_str(), "cli", "skip", "1 event(s) by id"),
            (user.as_str(), "cli", "retry", "1 event(s) by id"),
            ("alice", "dashboard", "resume", "hook"),
            ("admin", "dashboard", "pause", "hook"),
            ("bob@ops", "dashboard", "skip", "1 event(s) by id"),
            ("alice", "dashboard", "retry", "1 event(s) by id"),
        ],
        "{entries:#?}"
    );
    let ids_of = |i: usize| entries[i]["detail"]["ids"].clone();
    assert_eq!(ids_of(6), json!([ids[0]]));
    assert_eq!(ids_of(5), json!([ids[1]]));
    assert_eq!(ids_of(2), json!([ids[2]]));
    assert_eq!(entries[0]["detail"]["count"], json!(2));
    assert_eq!(entries[0]["detail"]["type"], json!("*"));
    for e in &entries[3..] {
        let peer = e["detail"]["peer"].as_str().unwrap();
        assert!(peer.starts_with("127.0.0.1:"), "{e}");
    }
    let role: String = client
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        entries.iter().all(|e| e["db_role"] == json!(role)),
        "{entries:#?}"
    );
    let ids: Vec<i64> = entries.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");

    // Reading the log is a read: open on loopback, but a wrong token is refused.
    assert_eq!(call(&format!("{base}/api/audit"), None, None).await.0, 200);
    assert_eq!(
        call(&format!("{base}/api/audit"), None, Some("nope"))
            .await
            .0,
        401
    );
    let (s, r) = call(&format!("{base}/api/audit?limit=0"), None, None).await;
    assert_eq!(s, 400, "{r}");
    relay.stop().await.unwrap();
}

#[tokio::test]
async fn without_tokens_the_actor_is_anonymous_and_a_missing_table_is_named() {
    let db = TestDb::new().await;
    let rx = Receiver::start().await;
    let (cfg, relay) = db.start_relay(&webhook_toml("hook", &rx.url)).await;
    let client = db.client().await;
    let base = relay.http_url();
    let (s, r) = call(
        &format!("{base}/api/endpoints/hook/pause"),
        Some(json!({})),
        None,
    )
    .await;
    assert_eq!((s, &r["audited"]), (200, &json!(true)), "{r}");
    let entries = all_entries(&base, None, 50).await;
    assert_eq!(entries.len(), 1, "{entries:#?}");
    assert_eq!(entries[0]["actor"], json!("anonymous"));

    // A database `migrate` has not brought up to date: the action is done all the same.
    client
        .batch_execute("DROP TABLE \"OutboxEvent_relay_audit\"")
        .await
        .unwrap();
    let (s, r) = call(
        &format!("{base}/api/endpoints/hook/resume"),
        Some(json!({})),
        None,
    )
    .await;
    assert_eq!(
        (s, &r["paused"], &r["audited"]),
        (200, &json!(false), &json!(false)),
        "{r}"
    );
    let (s, r) = call(&format!("{base}/api/audit"), None, None).await;
    assert_eq!(s, 503, "{r}");
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("outbox-relay migrate"),
        "{r}"
    );
    let ids = insert_events(&client, 1, "ORDER.CREATED").await;
    wait_status(&client, &ids, "COMPLETED").await;
    let n = outbox_relay::commands::replay(
        &cfg,
        "hook",
        Duration::from_secs(3600),
        Duration::ZERO,
        "*",
        true,
    )
    .await
    .unwrap();
    assert_eq!(n, 1, "replayed although it cannot be recorded");
    relay.stop().await.unwrap();
}
