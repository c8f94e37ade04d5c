//! The built-in web dashboard, end to end: the real relay binary, real PostgreSQL, a real
//! webhook receiver, and headless Chromium (tests/it/common/browser.rs) clicking through the
//! pages as a person would. Screenshots land in target/dashboard-screenshots/.
//!
//! Needs Debian's `chromium` and `chromium-driver` (.ci/run installs them).

use crate::common::browser::*;
use crate::common::process::*;
use crate::common::*;

use std::sync::Arc;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

/// The CSP the dashboard is served with (dash-spec): no inline script or style.
const CSP: &str = "default-src 'self'";

const SELFTEST_HTML: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>harness self-test</title><script src="/app.js" defer></script></head>
<body><h1 data-testid="greeting">hello</h1>
<label>Name <input data-testid="name" name="name"></label>
<button data-testid="change" type="button">Change</button>
<p data-testid="echo" data-state="idle"></p></body></html>"#;

const SELFTEST_JS: &str = r#"
document.querySelector('[data-testid=change]').addEventListener('click', () => {
  document.querySelector('[data-testid=greeting]').textContent = 'clicked';
  const echo = document.querySelector('[data-testid=echo]');
  echo.textContent = 'hi ' + document.querySelector('[data-testid=name]').value;
  echo.dataset.state = 'done';
});
"#;

/// A page that breaks both rules the dashboard's tests watch for: an inline script (a CSP
/// violation) and an uncaught exception.
const BROKEN_HTML: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>broken</title>
<script>window.inlineRan = true;</script><script src="/throw.js"></script></head>
<body><p data-testid="broken">broken</p></body></html>"#;

const THROW_JS: &str = "throw new Error('selftest-boom');";

/// Serves the self-test pages on 127.0.0.1:0 with the dashboard's CSP; returns the base URL.
async fn selftest_server() -> String {
    fn page(ctype: &'static str, body: &'static str) -> impl IntoResponse {
        (
            [
                (header::CONTENT_TYPE, ctype),
                (header::CONTENT_SECURITY_POLICY, CSP),
            ],
            body,
        )
    }
    let app = axum::Router::new()
        .route(
            "/",
            get(|| async { page("text/html; charset=utf-8", SELFTEST_HTML) }),
        )
        .route(
            "/app.js",
            get(|| async { page("text/javascript", SELFTEST_JS) }),
        )
        .route(
            "/broken",
            get(|| async { page("text/html; charset=utf-8", BROKEN_HTML) }),
        )
        .route(
            "/throw.js",
            get(|| async { page("text/javascript", THROW_JS) }),
        )
        // Chromium asks for it by itself; answer so that no 404 lands in the console.
        .route(
            "/favicon.ico",
            get(|| async { axum::http::StatusCode::NO_CONTENT }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

/// The harness itself, without the dashboard: both window sizes, a click that changes the
/// page, typing, attributes, screenshots, and the console collector (clean page: no
/// errors; broken page: its CSP violation and its exception are both caught).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_harness_self_test() {
    if skip_without_browser() {
        return;
    }
    let base = selftest_server().await;
    for viewport in [LAPTOP, PHONE] {
        let b = Browser::start(viewport).await;
        b.goto(&format!("{base}/")).await;
        assert_eq!(b.text(&tid("greeting")).await, "hello");
        let size = b
            .eval("return [window.innerWidth, window.innerHeight];", vec![])
            .await;
        assert_eq!(
            size,
            serde_json::json!([viewport.width, viewport.height]),
            "{} viewport",
            viewport.name
        );

        b.fill(&tid("name"), "Ada").await;
        assert_eq!(
            b.attr(&tid("echo"), "data-state").await.as_deref(),
            Some("idle")
        );
        b.click(&tid("change")).await;
        b.wait_text(&tid("greeting"), "clicked").await;
        assert_eq!(b.text(&tid("echo")).await, "hi Ada");
        assert_eq!(
            b.attr(&tid("echo"), "data-state").await.as_deref(),
            Some("done")
        );
        assert_eq!(b.attr(&tid("echo"), "data-missing").await, None);
        b.wait_js(
            "the script saw the click",
            "document.querySelector('[data-testid=echo]').dataset.state === 'done'",
        )
        .await;

        let shot = b.screenshot(&format!("selftest-{}", viewport.name)).await;
        let png = std::fs::read(&shot).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "{} is a PNG", shot.display());
        b.assert_no_errors().await;

        if viewport == LAPTOP {
            b.goto(&format!("{base}/broken")).await;
            b.wait(&tid("broken")).await;
            b.wait_js("throw.js ran", "document.readyState === 'complete'")
                .await;
            let ran = b.eval("return window.inlineRan === true;", vec![]).await;
            assert_eq!(
                ran,
                serde_json::json!(false),
                "the CSP blocked the inline script"
            );
            let errors = b.errors().await;
            let says = |needle: &str| errors.iter().any(|e| e.message.contains(needle));
            assert!(
                says("Content Security Policy") && says("selftest-boom"),
                "the collector sees CSP violations and exceptions: {errors:#?}"
            );
        }
        b.close().await;
    }
}

/// Without Chromium or chromedriver the browser tests say what to install: skipped with
/// that line on a developer's machine, failed with it in CI.
#[test]
fn a_missing_browser_is_a_failure_that_says_what_to_install() {
    if !skip_without_browser() {
        assert_eq!(missing_browser(&[CHROMIUM, CHROMEDRIVER]), None);
    }
    let msg = missing_browser(&[CHROMIUM, "/nonexistent/chromedriver"]).unwrap();
    assert!(
        msg.contains("/nonexistent/chromedriver is missing")
            && msg.contains("`chromium chromium-driver`"),
        "{msg}"
    );
}

// ---------------------------------------------------------------------------------------
// The dashboard itself (dash-spec): the relay binary serving it on a loopback port.

/// The relay binary with one webhook to `rx`, two attempts with a short backoff, and the
/// dashboard on a free loopback port; `http_extra` adds lines to `[http]`.
struct Dashboard {
    relay: Proc,
    /// `http://127.0.0.1:port`
    base: String,
    _config: tempfile::NamedTempFile,
}

impl Dashboard {
    async fn start(db: &TestDb, rx: &Receiver, http_extra: &str) -> Self {
        Self::start_with(db, rx, "", http_extra).await
    }

    /// `top_extra`: top-level config keys (before the webhook).
    async fn start_with(db: &TestDb, rx: &Receiver, top_extra: &str, http_extra: &str) -> Self {
        Self::start_full(db, rx, top_extra, "", http_extra).await
    }

    /// `webhook_extra`: after the webhook "main" (e.g. its `[webhook.circuit_breaker]`).
    async fn start_full(
        db: &TestDb,
        rx: &Receiver,
        top_extra: &str,
        webhook_extra: &str,
        http_extra: &str,
    ) -> Self {
        let addr = free_addr();
        let extra = format!(
            "max_attempts = 2\nbackoff_initial = \"50ms\"\nbackoff_max = \"200ms\"\n{top_extra}\n{}\n\
             {webhook_extra}\n[http]\nlisten = \"{addr}\"\n{http_extra}\n",
            webhook_toml("main", &rx.url)
        );
        let config = db.migrated_config_file(&extra).await;
        let relay = relay("relay", &config);
        let base = format!("http://{addr}");
        let readyz = format!("{base}/readyz");
        wait_until("the relay's /readyz to answer 200", || async {
            http_get(&readyz).await.0 == 200
        })
        .await;
        Self {
            relay,
            base,
            _config: config,
        }
    }

    /// The page at `hash` ("" for the overview, "#/events?status=FAILED", ...).
    fn page(&self, hash: &str) -> String {
        format!("{}/{hash}", self.base)
    }
}

/// Events inserted one by one every 100 ms until stopped (at most 3000): deliveries for
/// the chart to show. Stops by itself when dropped or when the database goes away (a
/// failed test drops it).
struct Traffic {
    stop: tokio_util::sync::CancellationToken,
    task: Option<tokio::task::JoinHandle<Vec<String>>>,
}

impl Traffic {
    async fn start(db: &TestDb) -> Self {
        let client = db.client().await;
        let stop = tokio_util::sync::CancellationToken::new();
        let s = stop.clone();
        let task = tokio::spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..3000 {
                let Ok(row) = client
                    .query_one(
                        "INSERT INTO \"OutboxEvent\" (event_type, org_id, payload)
                         VALUES ('DASH.TRAFFIC', 'org_1', '{}') RETURNING id::text",
                        &[],
                    )
                    .await
                else {
                    break;
                };
                ids.push(row.get(0));
                tokio::select! {
                    _ = s.cancelled() => break,
                    _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
                }
            }
            ids
        });
        Self {
            stop,
            task: Some(task),
        }
    }

    /// Stops; returns the ids inserted.
    async fn stop(mut self) -> Vec<String> {
        self.stop.cancel();
        self.task.take().unwrap().await.unwrap()
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A CSS selector as a JS string literal.
fn js_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

async fn wait_status(client: &tokio_postgres::Client, id: &str, status: &str) {
    wait_until(
        &format!("event {id} to be {status} in the database"),
        || async { row_state(client, id).await.0 == status },
    )
    .await;
}

/// Overview with a moving chart, a dead letter found in the list, retried from its page
/// and delivered; the same overview on a phone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_overview_dead_letter_and_retry() {
    if skip_without_browser() {
        return;
    }
    let db = TestDb::new().await;
    let rx = Receiver::start().await;
    let dash = Dashboard::start(&db, &rx, "").await;
    let client = db.client().await;
    let traffic = Traffic::start(&db).await;

    // Overview: the chart counts deliveries and moves between two polls.
    let b = Browser::start(LAPTOP).await;
    b.goto(&dash.page("")).await;
    let chart = js_str(&tid("chart"));
    let delivered = format!("Number(document.querySelector({chart})?.dataset.deliveredTotal)");
    b.wait_js("the chart to count deliveries", &format!("{delivered} > 0"))
        .await;
    let first: u64 = b
        .attr(&tid("chart"), "data-delivered-total")
        .await
        .unwrap()
        .parse()
        .expect("data-delivered-total is a count");
    b.wait_js(
        "the chart to move (data-delivered-total grows)",
        &format!("{delivered} > {first}"),
    )
    .await;
    for card in [
        "queue-pending",
        "queue-processing",
        "oldest-pending",
        "queue-failed",
        "sse-subscribers",
        "instances",
    ] {
        b.wait(&tid(card)).await;
    }
    // The instance breakdown lists this relay, live, from its own figures.
    b.wait_text(
        &format!(
            "{}[data-state=\"live\"] {}",
            tid("instance-row"),
            tid("instance-state")
        ),
        "live",
    )
    .await;
    let row = format!("{}[data-name=\"main\"]", tid("endpoint-row"));
    b.wait_text(&format!("{row} {}", tid("endpoint-state")), "active")
        .await;
    b.screenshot("overview").await;

    // Quiet the traffic, and let it all land before the receiver starts failing.
    let sent = traffic.stop().await;
    rx.wait_accepted(&sent).await;
    for id in &sent {
        wait_status(&client, id, "COMPLETED").await;
    }

    // A dead letter: both attempts answered 500. It appears on the overview, and in the list.
    rx.set_script(Arc::new(|_, _| Reply::status(500)));
    let id = insert_events(&client, 1, "DASH.DOOMED").await.remove(0);
    wait_status(&client, &id, "FAILED").await;
    b.wait_text(&tid("queue-failed"), "1").await;
    b.goto(&dash.page("#/events?status=FAILED")).await;
    let dead_row = format!("{}[data-id=\"{id}\"]", tid("event-row"));
    b.wait(&dead_row).await;
    assert_eq!(
        b.attr(&dead_row, "data-status").await.as_deref(),
        Some("FAILED")
    );
    b.screenshot("dead-letters").await;

    // Retried from its page once the receiver accepts again.
    rx.set_script(Arc::new(|_, _| Reply::ok()));
    b.goto(&dash.page(&format!("#/events/{id}"))).await;
    b.wait_text(&tid("event-status"), "FAILED").await;
    b.click(&tid("event-retry")).await;
    b.wait(&tid("confirm-dialog")).await;
    b.click(&tid("confirm-ok")).await;
    rx.wait_accepted(std::slice::from_ref(&id)).await;
    wait_status(&client, &id, "COMPLETED").await;
    b.wait_text(&tid("event-status"), "COMPLETED").await;
    b.screenshot("event").await;
    // The dead-letter card follows (its count is refreshed every few seconds).
    b.goto(&dash.page("")).await;
    b.wait_text(&tid("queue-failed"), "0").await;
    b.assert_no_errors().await;
    b.close().await;

    // The overview on a phone: usable without scrolling the whole page sideways.
    let p = Browser::start(PHONE).await;
    p.goto(&dash.page("")).await;
    p.wait(&tid("chart")).await;
    p.wait_js("the overview to have loaded", &format!("{delivered} > 0"))
        .await;
    let widths = p
        .eval(
            "return [document.documentElement.scrollWidth, window.innerWidth];",
            vec![],
        )
        .await;
    assert!(
        widths[0].as_i64() <= widths[1].as_i64(),
        "the overview is wider than the phone (scrollWidth, innerWidth) = {widths}"
    );
    p.screenshot("overview-phone").await;
    p.assert_no_errors().await;
    p.close().await;
    drop(dash.relay);
}

/// With `http.admin_token` set, actions need it; the page logs in with it and never shows
/// it (neither in the DOM nor in the URL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_admin_token_guards_actions_and_stays_out_of_the_page() {
    if skip_without_browser() {
        return;
    }
    let db = TestDb::new().await;
    let rx = Receiver::with_script(Arc::new(|_, _| Reply::status(500))).await;
    let token = format!("dash-admin-{}", uuid::Uuid::new_v4().simple());
    let token_file = write_config(&format!("{token}\n"));
    let dash = Dashboard::start(
        &db,
        &rx,
        &format!("admin_token = \"file:{}\"", path_str(&token_file)),
    )
    .await;
    let client = db.client().await;
    let id = insert_events(&client, 1, "DASH.GUARDED").await.remove(0);
    wait_status(&client, &id, "FAILED").await;

    // The API: no token, a wrong one, the right one.
    let retry = format!("{}/api/events/retry", dash.base);
    let body = serde_json::json!({"ids": [uuid::Uuid::new_v4().to_string()]});
    let post = |bearer: Option<String>| {
        let (retry, body) = (retry.clone(), body.clone());
        async move {
            let mut req = reqwest::Client::new().post(&retry).json(&body);
            if let Some(t) = bearer {
                req = req.bearer_auth(t);
            }
            let r = req.send().await.expect("POST /api/events/retry");
            (r.status().as_u16(), r.text().await.unwrap_or_default())
        }
    };
    let (status, text) = post(None).await;
    assert_eq!(status, 401, "no token: {text}");
    assert!(
        serde_json::from_str::<serde_json::Value>(&text).is_ok_and(|v| v["error"].is_string()),
        "errors are {{\"error\": ...}}: {text}"
    );
    let wrong = format!("{token}x");
    let (status, text) = post(Some(wrong.clone())).await;
    assert_eq!(status, 401, "wrong token: {text}");
    let wrong_token_error = serde_json::from_str::<serde_json::Value>(&text).unwrap()["error"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, text) = post(Some(token.clone())).await;
    assert_eq!(status, 200, "the token: {text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(
        v["done"].is_array() && v["not_done"].is_array(),
        "retry answers done/not_done: {text}"
    );
    assert_no_token(&text, &token, "the retry answer");

    // The browser: log in, retry the dead letter from its page.
    let b = Browser::start(LAPTOP).await;
    b.goto(&dash.page(&format!("#/events/{id}"))).await;
    b.wait_text(&tid("event-status"), "FAILED").await;
    // Without the token the action is marked disabled, and clicking it asks for the token.
    let retry_state = b
        .eval(
            &format!(
                "const e = document.querySelector({}); \
                 return e.disabled || e.getAttribute('aria-disabled') === 'true';",
                js_str(&tid("event-retry"))
            ),
            vec![],
        )
        .await;
    assert_eq!(
        retry_state, true,
        "event-retry is disabled without the admin token"
    );
    let login_shown = format!(
        "document.querySelector({})?.offsetParent != null",
        js_str(&tid("token-input"))
    );
    b.click(&tid("event-retry")).await;
    b.wait_js("the login form to show", &login_shown).await;
    // A wrong token: the relay's 401 brings the form back with its message, and the page
    // forgets the token.
    b.fill(&tid("token-input"), &wrong).await;
    b.click(&tid("token-submit")).await;
    b.wait_js(
        "the login form to come back with the relay's message",
        &format!(
            "{login_shown} && document.body.innerText.includes({}) \
             && sessionStorage.getItem('outbox-relay-token') === null",
            js_str(&wrong_token_error)
        ),
    )
    .await;
    b.fill(&tid("token-input"), &token).await;
    b.click(&tid("token-submit")).await;
    b.wait_js(
        "the token to be kept in sessionStorage",
        &format!(
            "sessionStorage.getItem('outbox-relay-token') === {}",
            js_str(&token)
        ),
    )
    .await;
    let page_has_no_token = |when: &'static str| {
        let b = &b;
        let token = token.clone();
        async move {
            let html = b
                .eval("return document.documentElement.outerHTML;", vec![])
                .await;
            assert_no_token(html.as_str().unwrap(), &token, &format!("the DOM {when}"));
            assert_no_token(&b.current_url().await, &token, &format!("the URL {when}"));
            let input = b
                .eval(
                    &format!(
                        "const i = document.querySelector({}); return i ? i.value : '';",
                        js_str(&tid("token-input"))
                    ),
                    vec![],
                )
                .await;
            assert_eq!(input, "", "the token input is cleared after use ({when})");
        }
    };
    page_has_no_token("after logging in").await;

    rx.set_script(Arc::new(|_, _| Reply::ok()));
    b.goto(&dash.page(&format!("#/events/{id}"))).await;
    b.wait_js(
        "event-retry to be enabled after logging in",
        &format!(
            "(e => e && !e.disabled && e.getAttribute('aria-disabled') !== 'true')\
             (document.querySelector({}))",
            js_str(&tid("event-retry"))
        ),
    )
    .await;
    b.click(&tid("event-retry")).await;
    b.click(&tid("confirm-ok")).await;
    rx.wait_accepted(std::slice::from_ref(&id)).await;
    wait_status(&client, &id, "COMPLETED").await;
    b.wait_text(&tid("event-status"), "COMPLETED").await;
    page_has_no_token("after a retry").await;
    b.goto(&dash.page("")).await;
    b.wait(&tid("chart")).await;
    page_has_no_token("on the overview").await;
    b.screenshot("logged-in").await;
    // The wrong token's requests were answered 401; nothing else may be logged.
    b.assert_no_errors_except(|e| e.source == "network" && e.message.contains(" 401 "))
        .await;
    b.close().await;
    drop(dash.relay);
}

fn assert_no_token(text: &str, token: &str, where_: &str) {
    assert!(!text.contains(token), "the admin token appears in {where_}");
}

/// Untrusted text from the database (type, org, entity, payload) is shown as text: no
/// element of it reaches the DOM, no script of it runs, and the CSP reports nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_untrusted_text_as_text() {
    if skip_without_browser() {
        return;
    }
    let db = TestDb::new().await;
    let rx = Receiver::start().await;
    let dash = Dashboard::start(&db, &rx, "").await;
    let client = db.client().await;
    let markup =
        |what: &str| format!("<img src=x data-xss=\"{what}\" onerror=\"window.xss='{what}'\">");
    let payload = serde_json::json!({ "html": markup("payload") });
    let id: String = client
        .query_one(
            "INSERT INTO \"OutboxEvent\" (event_type, org_id, entity_type, entity_id, payload)
             VALUES ($1, $2, $3, $4, $5::text::jsonb) RETURNING id::text",
            &[
                &format!("XSS.{}", markup("type")),
                &markup("org"),
                &markup("entity_type"),
                &markup("entity_id"),
                &payload.to_string(),
            ],
        )
        .await
        .unwrap()
        .get(0);
    rx.wait_accepted(std::slice::from_ref(&id)).await;
    wait_status(&client, &id, "COMPLETED").await;

    let b = Browser::start(LAPTOP).await;
    let injected = "document.querySelector('[data-xss]') === null && window.xss === undefined";
    b.goto(&dash.page("#/events?status=COMPLETED")).await;
    b.wait(&format!("{}[data-id=\"{id}\"]", tid("event-row")))
        .await;
    b.wait_js(
        "the list to show the markup as text",
        &format!(
            "document.body.textContent.includes({}) && {injected}",
            js_str(&markup("org"))
        ),
    )
    .await;
    b.goto(&dash.page(&format!("#/events/{id}"))).await;
    b.wait_text(&tid("event-status"), "COMPLETED").await;
    let shown = b.text(&tid("event-payload")).await;
    assert!(
        shown.contains("data-xss=\\\"payload\\\""),
        "the payload is shown as JSON text: {shown}"
    );
    b.wait_js(
        "the event page to show the markup as text",
        &format!(
            "document.body.textContent.includes({}) && {injected}",
            js_str(&markup("entity_id"))
        ),
    )
    .await;
    b.assert_no_errors().await;
    b.close().await;
    drop(dash.relay);
}

/// Keys pressed through WebDriver (the W3C key codes).
const ENTER: &str = "\u{E007}";
const ESCAPE: &str = "\u{E00C}";

/// By keyboard alone: pause an endpoint (Escape cancels the confirmation, Enter confirms),
/// see an event held, resume it and see the event delivered; then skip the dead letter that
/// blocks an entity key (ordered mode) and see the next event of the key go out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_pause_resume_and_skip_by_keyboard() {
    if skip_without_browser() {
        return;
    }
    let db = TestDb::new().await;
    let rx = Receiver::start().await;
    let dash = Dashboard::start_with(&db, &rx, "ordering = \"entity\"", "").await;
    let client = db.client().await;
    let b = Browser::start(LAPTOP).await;
    b.goto(&dash.page("")).await;
    let row = format!("{}[data-name=\"main\"]", tid("endpoint-row"));
    let state = format!("{row} {}", tid("endpoint-state"));
    let toggle = format!("{row} {}", tid("endpoint-toggle"));
    b.wait_text(&state, "active").await;

    // Escape backs out of the confirmation: nothing is paused.
    let dialog_open = format!(
        "document.querySelector({}).open",
        js_str(&tid("confirm-dialog"))
    );
    b.press(&toggle, ENTER).await;
    b.wait_js("the confirmation to open", &dialog_open).await;
    b.press(&tid("confirm-ok"), ESCAPE).await;
    b.wait_js(
        "Escape to close the confirmation",
        &format!("!{dialog_open}"),
    )
    .await;
    let paused: i64 = client
        .query_one("SELECT count(*) FROM \"OutboxEvent_relay_paused\"", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(paused, 0, "Escape must not pause");

    b.press(&toggle, ENTER).await;
    b.press(&tid("confirm-ok"), ENTER).await;
    b.wait_text(&state, "paused").await;
    let id = insert_events(&client, 1, "DASH.HELD").await.remove(0);
    wait_until("the event held for the paused endpoint", || async {
        count_held(&client).await == 1
    })
    .await;
    assert!(
        rx.deliveries().is_empty(),
        "a paused endpoint was sent an event"
    );
    b.screenshot("endpoint-paused").await;

    b.press(&toggle, ENTER).await;
    b.press(&tid("confirm-ok"), ENTER).await;
    b.wait_text(&state, "active").await;
    rx.wait_accepted(std::slice::from_ref(&id)).await;
    wait_status(&client, &id, "COMPLETED").await;

    // Ordered mode: a dead letter blocks its key; the next event of the key waits.
    rx.set_script(Arc::new(|_, _| Reply::status(500)));
    let insert = |event_type: &'static str| {
        let client = &client;
        async move {
            client
                .query_one(
                    "INSERT INTO \"OutboxEvent\" (event_type, org_id, entity_type, entity_id, payload)
                     VALUES ($1, 'org_1', 'Order', 'o_1', '{}') RETURNING id::text",
                    &[&event_type],
                )
                .await
                .unwrap()
                .get::<_, String>(0)
        }
    };
    let head = insert("DASH.HEAD").await;
    wait_status(&client, &head, "FAILED").await;
    rx.set_script(Arc::new(|_, _| Reply::ok()));
    let next = insert("DASH.NEXT").await;
    let blocked = tid("blocked-row");
    b.wait(&blocked).await;
    b.screenshot("blocked-key").await;
    assert_eq!(
        row_state(&client, &next).await.0,
        "PENDING",
        "the next event must wait"
    );
    b.press(&format!("{blocked} {}", tid("blocked-skip")), ENTER)
        .await;
    b.press(&tid("confirm-ok"), ENTER).await;
    rx.wait_accepted(std::slice::from_ref(&next)).await;
    wait_status(&client, &next, "COMPLETED").await;
    let skipped: bool = client
        .query_one(
            "SELECT skipped_at IS NOT NULL FROM \"OutboxEvent\" WHERE id::text = $1",
            &[&head],
        )
        .await
        .unwrap()
        .get(0);
    assert!(skipped, "the head was skipped, not retried");
    assert_eq!(row_state(&client, &head).await.0, "FAILED");
    b.wait_gone(&blocked).await;
    // The chart counted every delivery (the held event, the next one) and every failed
    // attempt (the head's two), however the polls fell against the seconds.
    let chart = format!("document.querySelector({}).dataset", js_str(&tid("chart")));
    b.wait_js(
        "the chart's hour totals to be 2 delivered and 2 failed",
        &format!("{chart}.deliveredTotal === '2' && {chart}.failedTotal === '2'"),
    )
    .await;
    b.assert_no_errors().await;
    b.close().await;
    drop(dash.relay);
}

/// An endpoint that keeps failing: its circuit opens (the state badge says so, with the last
/// error on hover), then it is disabled (no more probes; the button reads Enable); Enable
/// delivers the events held meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_an_open_circuit_then_a_disabled_endpoint_and_enables_it() {
    if skip_without_browser() {
        return;
    }
    let db = TestDb::new().await;
    let rx = Receiver::with_script(Arc::new(|_, _| Reply::status(502))).await;
    let dash = Dashboard::start_full(
        &db,
        &rx,
        "",
        "[webhook.circuit_breaker]\nfailures = 2\ncooldown = \"1s\"\ndisable_after = \"3s\"",
        "",
    )
    .await;
    let client = db.client().await;
    let b = Browser::start(LAPTOP).await;
    b.goto(&dash.page("")).await;
    let row = format!("{}[data-name=\"main\"]", tid("endpoint-row"));
    let state = format!("{row} {}", tid("endpoint-state"));
    let toggle = format!("{row} {}", tid("endpoint-toggle"));
    b.wait_text(&state, "active").await;

    insert_events(&client, 3, "DASH.CIRCUIT").await;
    b.wait_text(&state, "circuit open").await;
    let title = format!("document.querySelector({}).title", js_str(&state));
    b.wait_js(
        "the badge's title to name the last error",
        &format!("{title}.includes('502')"),
    )
    .await;
    b.screenshot("endpoint-circuit-open").await;
    b.wait_text(&state, "disabled").await;
    b.wait_text(&toggle, "Enable").await;
    let held = insert_events(&client, 2, "DASH.CIRCUIT").await;
    wait_until("the new events held", || async {
        count_held(&client).await >= 2
    })
    .await;
    assert!(
        rx.deliveries().iter().all(|d| !held.contains(&d.id)),
        "a disabled endpoint was sent an event"
    );
    b.screenshot("endpoint-disabled").await;

    rx.set_script(Arc::new(|_, _| Reply::ok()));
    b.press(&toggle, ENTER).await;
    b.press(&tid("confirm-ok"), ENTER).await;
    b.wait_text(&state, "active").await;
    rx.wait_accepted(&held).await;
}

/// By keyboard: open an endpoint's replay dialog, count what a window holds (nothing changes),
/// narrow it by type (the count is redone before Replay is possible), and replay: the events
/// of that type reach the receiver a second time, the others do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_replay_counts_first_then_sends_again_by_keyboard() {
    if skip_without_browser() {
        return;
    }
    let db = TestDb::new().await;
    let rx = Receiver::start().await;
    let dash = Dashboard::start_with(&db, &rx, "", "").await;
    let client = db.client().await;
    let ids = insert_events(&client, 3, "DASH.REPLAY").await;
    let other = insert_events(&client, 1, "DASH.OTHER").await;
    let all: Vec<String> = ids.iter().chain(&other).cloned().collect();
    rx.wait_accepted(&all).await;
    for id in &all {
        wait_status(&client, id, "COMPLETED").await;
    }
    let b = Browser::start(LAPTOP).await;
    b.goto(&dash.page("")).await;
    let row = format!("{}[data-name=\"main\"]", tid("endpoint-row"));
    let open = format!(
        "document.querySelector({}).open",
        js_str(&tid("replay-dialog"))
    );
    b.press(&format!("{row} {}", tid("endpoint-replay")), ENTER)
        .await;
    b.wait_js("the replay dialog to open", &open).await;
    // Enter in the window field counts: the default window (1h) holds all four.
    b.press(&tid("replay-since"), ENTER).await;
    b.wait_js(
        "the count of 4",
        &format!(
            "document.querySelector({}).textContent.startsWith('4 events ')",
            js_str(&tid("replay-count"))
        ),
    )
    .await;
    assert_eq!(
        count_status(&client, "COMPLETED").await,
        4,
        "a count changed rows"
    );
    // A new type: the old count no longer holds, so Replay is off until counted again.
    b.fill(&tid("replay-type"), "DASH.REPLAY").await;
    b.wait_js(
        "Replay to wait for a new count",
        &format!(
            "document.querySelector({}).disabled",
            js_str(&tid("replay-ok"))
        ),
    )
    .await;
    b.press(&tid("replay-type"), ENTER).await;
    b.wait_js(
        "the count of 3",
        &format!(
            "document.querySelector({}).textContent.startsWith('3 events ')",
            js_str(&tid("replay-count"))
        ),
    )
    .await;
    b.screenshot("replay-counted").await;
    b.press(&tid("replay-ok"), ENTER).await;
    b.wait_js("the dialog to close", &format!("!{open}")).await;
    rx.wait_for("the three events a second time", |ds| ds.len() >= 7)
        .await;
    for id in &all {
        wait_status(&client, id, "COMPLETED").await;
    }
    let counts = rx.accepted_counts();
    for id in &ids {
        assert_eq!(counts[id], 2, "{id}");
    }
    assert_eq!(counts[&other[0]], 1, "the other type was replayed");
    b.assert_no_errors().await;
    b.close().await;
    drop(dash.relay);
}
