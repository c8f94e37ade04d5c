//! DNS rebinding (issue 15.7): a name the attacker controls, resolving to the relay's
//! address, gets `421` on every route; IP literals, localhost and `http.allowed_hosts` are
//! answered; `/metrics` can require a token.

use std::net::SocketAddr;

use crate::common::sse::*;
use crate::common::*;

const METRICS_TOKEN: &str = "metrics-test-token-0123456789";

/// A client that resolves `name` to the relay, as a rebinding DNS answer would: the request
/// goes to the relay's address with `Host: name:port`, exactly as a browser's would.
fn resolving(name: &str, relay: SocketAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .resolve(name, relay)
        .build()
        .unwrap()
}

async fn get(client: &reqwest::Client, url: &str, token: Option<&str>) -> (u16, String) {
    let mut req = client.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

const ROUTES: &[&str] = &[
    "/healthz",
    "/readyz",
    "/metrics",
    "/v1/events",
    "/",
    "/api/overview",
    "/api/events",
    "/no-such-page",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_known_host_names_are_answered_and_metrics_take_a_token() {
    let db = TestDb::new().await;
    let relay = db
        .start_relay(&format!(
            "{}\n[http]\nmetrics_token = \"{METRICS_TOKEN}\"\n\
             allowed_hosts = [\"relay.example.com\", \"*.internal.example\"]\n",
            sse_toml("15s")
        ))
        .await
        .1;
    let addr = relay.http_addr;
    let port = addr.port();

    // A rebinding name, a look-alike and a name below an allowed one that is not a wildcard:
    // 421 on every route, known or not, whatever the credentials.
    for name in [
        "rebind.attacker.example",
        "relay.example.com.attacker.example",
        "api.relay.example.com",
    ] {
        let client = resolving(name, addr);
        for route in ROUTES {
            let (status, body) = get(
                &client,
                &format!("http://{name}:{port}{route}"),
                Some(METRICS_TOKEN),
            )
            .await;
            assert_eq!(status, 421, "{name}{route}: {body}");
            assert!(body.contains("http.allowed_hosts"), "{body}");
            assert!(!body.contains("outbox_"), "{name}{route}: {body}");
        }
    }
    // Names the operator listed, localhost and the address itself are answered.
    for name in ["relay.example.com", "a.internal.example", "localhost"] {
        let client = resolving(name, addr);
        let (status, body) = get(&client, &format!("http://{name}:{port}/healthz"), None).await;
        assert_eq!((status, body.as_str()), (200, "ok\n"), "{name}");
    }
    let plain = reqwest::Client::new();
    let base = relay.http_url();
    assert_eq!(get(&plain, &format!("{base}/healthz"), None).await.0, 200);

    // /metrics: 401 without the token or with another, 200 with it.
    for token in [None, Some("wrong"), Some("")] {
        let (status, body) = get(&plain, &format!("{base}/metrics"), token).await;
        assert_eq!(status, 401, "{token:?}");
        assert!(body.contains("http.metrics_token") && !body.contains("outbox_"));
    }
    let (status, body) = get(&plain, &format!("{base}/metrics"), Some(METRICS_TOKEN)).await;
    assert_eq!(status, 200);
    assert!(body.contains("outbox_events_claimed_total"), "{body}");
    assert!(!body.contains(METRICS_TOKEN));
    relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_settings_metrics_are_open_to_known_names_only() {
    let db = TestDb::new().await;
    let relay = db.start_relay("").await.1;
    let addr = relay.http_addr;
    let (status, body) = get(
        &resolving("rebind.attacker.example", addr),
        &format!("http://rebind.attacker.example:{}/metrics", addr.port()),
        None,
    )
    .await;
    assert_eq!(status, 421, "{body}");
    let (status, body) = get(
        &reqwest::Client::new(),
        &format!("{}/metrics", relay.http_url()),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert!(body.contains("outbox_events_claimed_total"));
    relay.stop().await.unwrap();
}
