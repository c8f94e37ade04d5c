//! The HTTP side's access rules on the real router, in-process (`tower::ServiceExt::oneshot`,
//! no socket): who may read and who may act on the dashboard API (`Dashboard::allow` in
//! src/http/dashboard/mod.rs), the `Host` check in front of every route (src/http/host.rs),
//! the `/metrics` token and the SSE token (src/http/auth.rs). Requests that get through run
//! for real on the test's database, so a refusal is told apart from a request that got
//! through by what happened to the rows, not only by the status.

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, Request};
use axum::Router;
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::common::{webhook_toml, TestDb};

const TOKEN: &str = "admin-s3cret";
const LOOPBACK_HOST: &str = "127.0.0.1:9470";
/// A name `http.allowed_hosts` lists (a reverse proxy's): the `Host` check lets it through,
/// the dashboard's own loopback check does not.
const PROXY_HOST: &str = "relay.example.com";

/// A relay config: one webhook, and `[http]` with `http`.
fn toml(http: &str) -> String {
    format!(
        "{}\n[http]\nallowed_hosts = [\"{PROXY_HOST}\"]\n{http}\n",
        webhook_toml("hook", "http://127.0.0.1:9/hook")
    )
}

const LOOPBACK: &str = "listen = \"127.0.0.1:0\"";
const OPEN: &str = "listen = \"0.0.0.0:0\"";

fn with_token(listen: &str) -> String {
    format!("{listen}\nadmin_token = \"{TOKEN}\"")
}

/// One request: `headers` as given (no `Host` unless listed), `body` as JSON with its
/// Content-Type.
fn request(
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> Request<Body> {
    let mut r = Request::builder().method(method).uri(path);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    match body {
        Some(b) => r
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(b.to_string())),
        None => r.body(Body::empty()),
    }
    .unwrap()
}

struct Answer {
    status: u16,
    headers: HeaderMap,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }

    /// A dashboard refusal: `status`, and an error that says `says`.
    fn assert_refused(&self, status: u16, says: &str) {
        assert_eq!(self.status, status, "{}", self.text);
        let error = self.json()["error"].as_str().unwrap_or_default().to_owned();
        assert!(error.contains(says), "{}", self.text);
    }
}

async fn send(router: &Router, req: Request<Body>) -> Answer {
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    Answer {
        status,
        headers,
        text: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

/// POST /api/events/retry with a body of `content_type` (what a cross-site form can send).
async fn retry_without_json(
    router: &Router,
    headers: &[(&str, &str)],
    content_type: &str,
) -> Answer {
    let mut h = headers.to_vec();
    h.push(("content-type", content_type));
    let req = request(Method::POST, "/api/events/retry", &h, None);
    send(router, req).await
}

/// GET `path` with `headers`.
async fn get(router: &Router, path: &str, headers: &[(&str, &str)]) -> Answer {
    send(router, request(Method::GET, path, headers, None)).await
}

/// POST `path` with a JSON body and `headers`.
async fn post(router: &Router, path: &str, headers: &[(&str, &str)], body: Value) -> Answer {
    send(router, request(Method::POST, path, headers, Some(body))).await
}

/// Inserts one FAILED event, and one COMPLETED event the webhook `hook` accepted (what a
/// replay would send again); returns the FAILED one's id.
async fn failed_event(client: &tokio_postgres::Client) -> String {
    client
        .execute(
            "INSERT INTO \"OutboxEvent\" (event_type, org_id, payload, status, delivered_to, processed_at)
             VALUES ('ORDER.SHIPPED', 'org_1', '{}', 'COMPLETED', ARRAY['hook'], now())",
            &[],
        )
        .await
        .unwrap();
    client
        .query_one(
            "INSERT INTO \"OutboxEvent\" (event_type, org_id, payload, status, retry_count, error_message)
             VALUES ('ORDER.CREATED', 'org_1', '{}', 'FAILED', 12, 'HTTP 500') RETURNING id::text",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// How many events are COMPLETED (a replay puts them back to PENDING).
async fn completed(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM \"OutboxEvent\" WHERE status = 'COMPLETED'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// (status, skipped) of one row.
async fn row(client: &tokio_postgres::Client, id: &str) -> (String, bool) {
    let r = client
        .query_one(
            "SELECT status::text, skipped_at IS NOT NULL FROM \"OutboxEvent\" WHERE id::text = $1",
            &[&id],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1))
}

/// A row's (status, skipped) as [`row`] gives it.
fn st(status: &str, skipped: bool) -> (String, bool) {
    (status.to_owned(), skipped)
}

/// The row is still FAILED and not skipped, no endpoint is paused and the COMPLETED event
/// was not replayed: whatever was sent (`what`) changed nothing.
async fn untouched(client: &tokio_postgres::Client, id: &str, what: &str) {
    assert_eq!(row(client, id).await, st("FAILED", false), "{what}");
    assert_eq!(paused(client).await, 0, "{what}");
    assert_eq!(completed(client).await, 1, "{what}: replayed");
}

/// An id action was let through and applied to `id`.
fn assert_done(a: &Answer, id: &str) {
    assert_eq!(
        (a.status, &a.json()["done"]),
        (200, &json!([id])),
        "{}",
        a.text
    );
}

/// Endpoints recorded as paused in the table (what a pause writes, for every relay).
async fn paused(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one("SELECT count(*) FROM \"OutboxEvent_relay_paused\"", &[])
        .await
        .unwrap()
        .get(0)
}

/// A database with one FAILED event (its id), and the router for a config with `http`.
async fn setup(http: &str) -> (TestDb, Router, tokio_postgres::Client, String) {
    let db = TestDb::new().await;
    let api = db.router(&toml(http)).await;
    let client = db.client().await;
    let id = failed_event(&client).await;
    (db, api, client, id)
}

/// The five actions, each with the body it takes (`ids` naming `id` for the row actions).
fn actions(id: &str) -> [(&'static str, Value); 5] {
    [
        ("/api/events/retry", json!({ "ids": [id] })),
        ("/api/events/skip", json!({ "ids": [id] })),
        ("/api/endpoints/hook/pause", json!({})),
        ("/api/endpoints/hook/resume", json!({})),
        (
            "/api/endpoints/hook/replay",
            json!({ "since": "1h", "dry_run": false }),
        ),
    ]
}

/// The four reads (the event page naming `id`).
fn reads(id: &str) -> [String; 4] {
    [
        "/api/overview".to_owned(),
        "/api/events?limit=10".to_owned(),
        format!("/api/events/{id}"),
        "/api/audit?limit=5".to_owned(),
    ]
}

#[tokio::test]
async fn on_loopback_without_a_token_localhost_may_read_and_act_but_not_cross_site() {
    let (_db, api, client, id) = setup(LOOPBACK).await;
    let local = [("host", LOOPBACK_HOST)];

    // Reads: open to a loopback Host; the page is told it may act.
    for path in reads(&id) {
        let a = get(&api, &path, &local).await;
        assert_eq!(a.status, 200, "{path}: {}", a.text);
    }
    let overview = get(&api, "/api/overview", &local).await.json();
    assert_eq!(overview["admin"], json!(true), "{overview}");
    assert_eq!(overview["relay"]["admin_token"], json!(false));
    // Without a Host (HTTP/1.0 tools; no browser omits it): as from loopback.
    assert_eq!(get(&api, "/api/overview", &[]).await.status, 200);

    // DNS rebinding: a name the Host check lets through (a listed proxy name) is still not
    // a loopback name, and without a token that is a 403 on reads and actions alike.
    let rebound = [("host", PROXY_HOST)];
    let a = get(&api, "/api/overview", &rebound).await;
    a.assert_refused(403, "loopback");
    assert_eq!(a.headers[header::CACHE_CONTROL], "no-store");
    let a = post(&api, "/api/events/retry", &rebound, json!({ "ids": [id] })).await;
    assert_eq!(a.status, 403, "{}", a.text);
    untouched(&client, &id, "refused").await;

    // A cross-site form cannot send JSON: an action without it is refused, row untouched.
    let a = retry_without_json(
        &api,
        &[("host", LOOPBACK_HOST)],
        "application/x-www-form-urlencoded",
    )
    .await;
    assert_eq!(a.status, 415, "{}", a.text);
    untouched(&client, &id, "refused").await;

    // Another origin (or an opaque one) is refused; the page's own origin is not.
    for origin in ["https://evil.example", "null", "http://127.0.0.1:1"] {
        let h = [("host", LOOPBACK_HOST), ("origin", origin)];
        let a = post(&api, "/api/events/retry", &h, json!({ "ids": [id] })).await;
        assert_eq!(a.status, 403, "{origin}: {}", a.text);
        untouched(&client, &id, origin).await;
    }
    // Actions only by POST: a GET (an <img> or a link) is not routed to one.
    let a = get(&api, "/api/endpoints/hook/pause", &local).await;
    assert_eq!(a.status, 405, "{}", a.text);
    untouched(&client, &id, "GET on an action").await;

    let same = [("host", LOOPBACK_HOST), ("origin", "http://127.0.0.1:9470")];
    let a = post(&api, "/api/events/retry", &same, json!({ "ids": [id] })).await;
    assert_done(&a, &id);
    assert_eq!(row(&client, &id).await, st("PENDING", false));
    let a = post(&api, "/api/endpoints/hook/pause", &local, json!({})).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(paused(&client).await, 1);
    // A replay counts first (nothing changes), then sends the accepted event again.
    let replay = "/api/endpoints/hook/replay";
    let a = post(&api, replay, &local, json!({ "since": "1h" })).await;
    assert_eq!(
        (a.status, a.json()),
        (
            200,
            json!({ "endpoint": "hook", "count": 1, "replayed": false, "audited": false })
        ),
        "{}",
        a.text
    );
    assert_eq!(completed(&client).await, 1);
    for (body, says) in [
        (
            json!({ "since": "soon" }),
            "since: \"soon\": a duration ago",
        ),
        (json!({ "since": "1h", "until": "2h" }), "window is empty"),
        (json!({ "since": "1h", "type": "[" }), "type \"[\""),
        (
            json!({ "since": "1h", "limit": 5 }),
            "unknown field `limit`",
        ),
    ] {
        let a = post(&api, replay, &local, body.clone()).await;
        assert_eq!(a.status, 400, "{body}: {}", a.text);
        let error = a.json()["error"].as_str().unwrap_or_default().to_owned();
        assert!(error.contains(says), "{body}: {error}");
    }
    let a = post(
        &api,
        "/api/endpoints/nope/replay",
        &local,
        json!({ "since": "1h" }),
    )
    .await;
    assert_eq!(a.status, 404, "{}", a.text);
    let a = post(
        &api,
        replay,
        &local,
        json!({ "since": "1h", "dry_run": false }),
    )
    .await;
    assert_eq!(a.json()["count"], json!(1), "{}", a.text);
    assert_eq!(completed(&client).await, 0);
}

#[tokio::test]
async fn on_loopback_with_a_token_every_action_needs_it_and_reads_do_not() {
    let (_db, api, client, id) = setup(&with_token(LOOPBACK)).await;
    let local = [("host", LOOPBACK_HOST)];
    let bearer = format!("Bearer {TOKEN}");
    let authed = [("host", LOOPBACK_HOST), ("authorization", bearer.as_str())];
    let wrong = [("host", LOOPBACK_HOST), ("authorization", "Bearer nope")];

    // Reads stay open on loopback; `admin` says whether this caller may act.
    for path in reads(&id) {
        let a = get(&api, &path, &local).await;
        assert_eq!(a.status, 200, "{path}: {}", a.text);
    }
    assert_eq!(
        get(&api, "/api/overview", &local).await.json()["admin"],
        json!(false)
    );
    assert_eq!(
        get(&api, "/api/overview", &authed).await.json()["admin"],
        json!(true)
    );
    // A wrong token is refused even where no token is needed (the page's login says so).
    let a = get(&api, "/api/overview", &wrong).await;
    assert_eq!(a.status, 401, "{}", a.text);
    assert_eq!(a.json()["error"], json!("wrong admin token"));

    // Every action: 401 without the token and with a wrong one, and nothing changes.
    for (path, body) in actions(&id) {
        for h in [&local[..], &wrong[..]] {
            let a = post(&api, path, h, body.clone()).await;
            assert_eq!(a.status, 401, "{path} {h:?}: {}", a.text);
        }
    }
    untouched(&client, &id, "refused actions").await;

    // With the token an action still needs a JSON body.
    let a = retry_without_json(&api, &authed, "text/plain").await;
    assert_eq!(a.status, 415, "{}", a.text);
    untouched(&client, &id, "refused").await;

    // Behind a reverse proxy (its Host, its Origin): without the token, the loopback check
    // refuses and says to log in; with it, the token is what counts, Origin included.
    let proxied = [
        ("host", PROXY_HOST),
        ("origin", "https://elsewhere.example"),
    ];
    get(&api, "/api/overview", &proxied)
        .await
        .assert_refused(401, "log in");
    let proxied_authed = [
        ("host", PROXY_HOST),
        ("origin", "https://elsewhere.example"),
        ("authorization", bearer.as_str()),
    ];
    let a = post(
        &api,
        "/api/events/skip",
        &proxied_authed,
        json!({ "ids": [id] }),
    )
    .await;
    assert_done(&a, &id);
    assert_eq!(row(&client, &id).await, st("FAILED", true));
    let a = post(&api, "/api/events/retry", &authed, json!({ "ids": [id] })).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(row(&client, &id).await, st("PENDING", false));
}

#[tokio::test]
async fn on_an_open_listener_reads_need_the_token_too() {
    let (_db, api, client, id) = setup(&with_token(OPEN)).await;
    let bearer = format!("Bearer {TOKEN}");
    // Any name the Host check answers to; no loopback check on an open listener.
    let anon = [("host", PROXY_HOST)];
    let authed = [("host", PROXY_HOST), ("authorization", bearer.as_str())];

    for path in reads(&id) {
        let a = get(&api, &path, &anon).await;
        assert_eq!(a.status, 401, "{path}: {}", a.text);
        let a = get(&api, &path, &authed).await;
        assert_eq!(a.status, 200, "{path}: {}", a.text);
    }
    for (path, body) in actions(&id) {
        let a = post(&api, path, &anon, body).await;
        assert_eq!(a.status, 401, "{path}: {}", a.text);
    }
    untouched(&client, &id, "refused actions").await;

    // The page itself holds no data: served to anyone, and never inside another site's frame.
    let page = get(&api, "/", &anon).await;
    assert_eq!(page.status, 200);
    let csp = page.headers[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap();
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(page.headers[header::X_FRAME_OPTIONS], "DENY");
    assert!(!page.text.contains(TOKEN));
}

#[tokio::test]
async fn on_an_open_listener_without_a_token_the_api_is_off() {
    let (_db, api, client, id) = setup(OPEN).await;
    let h = [("host", PROXY_HOST)];
    let loopback_host = [("host", LOOPBACK_HOST)];
    for path in reads(&id) {
        for h in [&h, &loopback_host] {
            let a = get(&api, &path, h).await;
            assert_eq!(a.status, 403, "{path}: {}", a.text);
            assert!(a.text.contains("admin_token"), "{}", a.text);
        }
    }
    for (path, body) in actions(&id) {
        let a = post(&api, path, &h, body).await;
        assert_eq!(a.status, 403, "{path}: {}", a.text);
    }
    untouched(&client, &id, "refused actions").await;
    // The page is still served (it says the API is off).
    assert_eq!(get(&api, "/", &h).await.status, 200);
}

#[tokio::test]
async fn a_host_name_the_relay_does_not_answer_to_gets_421_on_every_route() {
    let db = TestDb::new().await;
    let api = db
        .router(&format!(
            "{}\nmetrics_token = \"m-tok\"",
            toml(&with_token(LOOPBACK))
        ))
        .await;
    let client = db.client().await;
    let id = failed_event(&client).await;
    let bearer = format!("Bearer {TOKEN}");
    // With the admin token, even: the Host check comes before any credential.
    let evil = [
        ("host", "evil.example:9470"),
        ("authorization", bearer.as_str()),
    ];
    for path in [
        "/",
        "/healthz",
        "/readyz",
        "/metrics",
        "/v1/events",
        "/assets/app.js",
        "/api/overview",
        "/no/such/route",
    ] {
        let a = get(&api, path, &evil).await;
        assert_eq!(a.status, 421, "{path}: {}", a.text);
    }
    let a = post(&api, "/api/events/retry", &evil, json!({ "ids": [id] })).await;
    assert_eq!(a.status, 421, "{}", a.text);
    untouched(&client, &id, "refused").await;

    // Answered: IP literals, localhost, the listed names, and requests without a Host.
    for host in [
        Some("10.0.0.7:9470"),
        Some("localhost"),
        Some(PROXY_HOST),
        None,
    ] {
        let h: Vec<(&str, &str)> = host.map(|h| ("host", h)).into_iter().collect();
        let a = get(&api, "/healthz", &h).await;
        assert_eq!(a.status, 200, "{host:?}: {}", a.text);
    }
}

#[tokio::test]
async fn metrics_need_their_own_token_once_one_is_set() {
    let db = TestDb::new().await;
    let open = db.router(&toml(LOOPBACK)).await;
    let local = [("host", LOOPBACK_HOST)];
    assert_eq!(
        get(&open, "/metrics", &local).await.status,
        200,
        "no metrics_token: open"
    );

    let api = db
        .router(&format!(
            "{}\nmetrics_token = \"m-tok\"",
            toml(&with_token(LOOPBACK))
        ))
        .await;
    let admin = format!("Bearer {TOKEN}");
    for auth in [None, Some("Bearer wrong"), Some(admin.as_str())] {
        let mut h = vec![("host", LOOPBACK_HOST)];
        h.extend(auth.map(|a| ("authorization", a)));
        let a = get(&api, "/metrics", &h).await;
        assert_eq!(a.status, 401, "{auth:?}: {}", a.text);
        assert_eq!(a.headers[header::WWW_AUTHENTICATE], "Bearer");
    }
    let h = [("host", LOOPBACK_HOST), ("authorization", "Bearer m-tok")];
    let a = get(&api, "/metrics", &h).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert!(a.text.contains("outbox_"), "{}", a.text);
}

#[tokio::test]
async fn a_stream_needs_a_token_for_its_org() {
    let db = TestDb::new().await;
    let secret = "sse-router-secret";
    let off = db
        .router(&format!("[sse]\nenabled = false\n{}", toml(LOOPBACK)))
        .await;
    let local = [("host", LOOPBACK_HOST)];
    assert_eq!(get(&off, "/v1/events", &local).await.status, 404);

    let api = db
        .router(&format!(
            "[sse]\ntoken_secret = \"{secret}\"\n{}",
            toml(LOOPBACK)
        ))
        .await;
    let a = get(&api, "/v1/events", &local).await;
    assert_eq!(a.status, 401, "{}", a.text);
    let forged = outbox_relay::http::sse::token::mint(b"another secret", "org_1", None, 60);
    let a = get(&api, &format!("/v1/events?access_token={forged}"), &local).await;
    assert_eq!(a.status, 401, "{}", a.text);

    // A good token opens the stream (headers only: the body runs until the client leaves).
    let good = outbox_relay::http::sse::token::mint(secret.as_bytes(), "org_1", None, 60);
    let bearer = format!("Bearer {good}");
    for req in [
        request(
            Method::GET,
            &format!("/v1/events?access_token={good}"),
            &local,
            None,
        ),
        request(
            Method::GET,
            "/v1/events",
            &[("host", LOOPBACK_HOST), ("authorization", &bearer)],
            None,
        ),
    ] {
        let resp = api.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/event-stream");
    }
}

/// `[sse] allowed_origins`: a listed origin's preflight is answered with what the stream
/// needs, and every answer to it (a 401 included, so the page can read why) names it; any
/// other origin gets neither, and a relay without the key answers no preflight.
#[tokio::test]
async fn only_listed_origins_may_open_the_stream_cross_origin() {
    let db = TestDb::new().await;
    let secret = "sse-router-secret";
    let app = "https://app.example.com";
    let api = db
        .router(&format!(
            "[sse]\ntoken_secret = \"{secret}\"\nallowed_origins = [\"{app}\", \"http://127.0.0.1:3000\"]\n{}",
            toml(LOOPBACK)
        ))
        .await;
    let preflight = |origin: &'static str| {
        request(
            Method::OPTIONS,
            "/v1/events",
            &[
                ("host", LOOPBACK_HOST),
                ("origin", origin),
                ("access-control-request-method", "GET"),
                (
                    "access-control-request-headers",
                    "authorization,last-event-id",
                ),
            ],
            None,
        )
    };
    let ok = send(&api, preflight("https://app.example.com")).await;
    assert_eq!(ok.status, 204, "{}", ok.text);
    assert_eq!(ok.headers["access-control-allow-origin"], app);
    assert_eq!(ok.headers["access-control-allow-methods"], "GET");
    let allowed = ok.headers["access-control-allow-headers"].to_str().unwrap();
    assert!(allowed.contains("authorization") && allowed.contains("last-event-id"));
    let other = send(&api, preflight("https://evil.example.net")).await;
    assert_eq!(other.status, 403, "{}", other.text);
    assert!(other.headers.get("access-control-allow-origin").is_none());

    // A refusal to the listed origin is readable there; to another origin it is not.
    let a = get(
        &api,
        "/v1/events",
        &[("host", LOOPBACK_HOST), ("origin", app)],
    )
    .await;
    assert_eq!(a.status, 401);
    assert_eq!(a.headers["access-control-allow-origin"], app);
    let a = get(
        &api,
        "/v1/events",
        &[
            ("host", LOOPBACK_HOST),
            ("origin", "https://evil.example.net"),
        ],
    )
    .await;
    assert_eq!(a.status, 401);
    assert!(a.headers.get("access-control-allow-origin").is_none());

    // The stream itself, to the listed origin.
    let good = outbox_relay::http::sse::token::mint(secret.as_bytes(), "org_1", None, 60);
    let bearer = format!("Bearer {good}");
    let req = request(
        Method::GET,
        "/v1/events",
        &[
            ("host", LOOPBACK_HOST),
            ("origin", "http://127.0.0.1:3000"),
            ("authorization", &bearer),
        ],
        None,
    );
    let resp = api.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "http://127.0.0.1:3000"
    );

    // Without the key, no origin is allowed.
    let closed = db
        .router(&format!(
            "[sse]\ntoken_secret = \"{secret}\"\n{}",
            toml(LOOPBACK)
        ))
        .await;
    assert_eq!(
        send(&closed, preflight("https://app.example.com"))
            .await
            .status,
        403
    );
}
