//! The TypeScript client for the app side (`clients/js`, issue 21), tested by its own Node
//! test suite (`clients/js/test/*.test.mjs`, `node --test`) against this build's relay
//! binary and a real PostgreSQL database prepared here: the README's Prisma table, adopted
//! by `migrate` with SSE on.
//!
//! The suite covers the event-stream parser, the subscriber (live events, ten token
//! renewals without a gap or a duplicate, a relay restart with retries the relay's
//! `retry:` apart, a wrong token, `cursor_expired`, each over `fetch` and over the
//! `EventSource` fallback with the `eventsource` npm package; one shared connection) and the
//! Prisma publisher with a real Prisma Client generated from the README's model (commit,
//! rollback, the full client refused at compile and at run time, Decimal/BigInt/Date
//! payloads).
//! Needs Node.js 18+ and npm; the package's pinned dependencies are installed by the test.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use crate::common::browser::{skip_without_browser, tid, Browser, LAPTOP};
use crate::common::orm::PRISMA;
use crate::common::sse::{sse_toml, SSE_SECRET};
use crate::common::*;

const NEED_NODE: &str = "the TypeScript client's tests need Node.js 18 or later and npm \
(Debian/Ubuntu: apt-get install nodejs npm)";

/// `clients/js` installed and built (`dist/`, and the browser test's bundle), once per run.
fn package() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = npm::installed("clients/js", NEED_NODE);
        npm::run(&dir, &["run", "build"], NEED_NODE);
        let out = std::process::Command::new("node")
            .arg("test/browser/build.mjs")
            .current_dir(&dir)
            .output()
            .unwrap_or_else(|e| panic!("cannot run node ({e}): {NEED_NODE}"));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
}

/// The browser tests' page, bundled.
async fn page_js() -> String {
    let dir = tokio::task::spawn_blocking(package).await.unwrap();
    std::fs::read_to_string(dir.join("test/browser/out/page.js")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_typescript_client_passes_its_node_tests_against_this_relay() {
    let dir = tokio::task::spawn_blocking(package).await.unwrap();
    let db = TestDb::new().await;
    db.client().await.batch_execute(PRISMA.ddl).await.unwrap();
    db.migrate(&db.config(&sse_toml("1s"))).await;

    let mut files: Vec<String> = std::fs::read_dir(dir.join("test"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".test.mjs"))
        .map(|n| format!("test/{n}"))
        .collect();
    files.sort();
    let out = tokio::process::Command::new("node")
        .args(["--test", "--test-reporter=spec"])
        .args(&files)
        .current_dir(dir)
        .env("OUTBOX_RELAY_BIN", relay_bin())
        .env("DATABASE_URL", &db.url)
        .env("SSE_TOKEN_SECRET", SSE_SECRET)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(300), out)
        .await
        .expect("the Node tests took over 5 minutes")
        .unwrap_or_else(|e| panic!("cannot run node ({e}): {NEED_NODE}"));
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "node --test failed:\n{report}");
    // The suite ran (a filter or an empty directory would pass with nothing run).
    assert!(
        report.contains("pass 21") && report.contains("fail 0"),
        "{report}"
    );
}

/// The app's server in the browser test: the page, a `/token` minting 3-second tokens, and
/// `/v1/events` proxied (streaming) to whichever relay is current, as a reverse proxy would.
/// Each stream request's query string goes into `queries`.
async fn app_server(
    page_js: String,
    relay: Arc<Mutex<String>>,
    queries: Arc<Mutex<Vec<String>>>,
) -> String {
    use axum::body::Body;
    use axum::http::{header, HeaderMap, StatusCode};
    use axum::response::IntoResponse;
    use axum::routing::get;

    let proxy = move |headers: HeaderMap, uri: axum::http::Uri| {
        let relay = relay.lock().unwrap().clone();
        let query = uri.query().unwrap_or_default().to_owned();
        queries.lock().unwrap().push(query.clone());
        async move {
            let mut req = reqwest::Client::new().get(format!("{relay}/v1/events?{query}"));
            for name in ["authorization", "last-event-id", "accept"] {
                if let Some(v) = headers.get(name) {
                    req = req.header(name, v.as_bytes());
                }
            }
            match req.send().await {
                Ok(res) => {
                    let status = StatusCode::from_u16(res.status().as_u16()).unwrap();
                    let ctype = res
                        .headers()
                        .get("content-type")
                        .map(|v| v.to_str().unwrap_or_default().to_owned())
                        .unwrap_or_default();
                    let body = Body::from_stream(res.bytes_stream());
                    (status, [(header::CONTENT_TYPE, ctype)], body).into_response()
                }
                Err(_) => (StatusCode::BAD_GATEWAY, "relay unreachable").into_response(),
            }
        }
    };
    let app = axum::Router::new()
        .route(
            "/",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                    "<!doctype html><html><head><title>hook</title></head>\
                     <body><div id=\"root\"></div><script src=\"/page.js\"></script></body></html>",
                )
            }),
        )
        .route(
            "/page.js",
            get(move || async move { ([(header::CONTENT_TYPE, "text/javascript")], page_js) }),
        )
        .route(
            "/token",
            get(|| async {
                outbox_relay::http::sse::token::mint(SSE_SECRET.as_bytes(), "org_1", None, 3)
            }),
        )
        .route("/v1/events", get(proxy))
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

/// A React page using `useOutboxEvent` in Chromium shows events live, renews its 3-second
/// tokens several times, and survives its relay going away (a new one takes over): the list
/// holds every event once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_react_page_with_the_hook_follows_events_across_token_renewals_and_a_relay_restart() {
    follow_across_renewals_and_a_restart("").await;
}

/// The same over the browser's own `EventSource` (the client's fallback where `fetch` cannot
/// stream): the token in the query string, unnamed messages, a new `EventSource` per token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_page_over_the_browsers_eventsource_loses_and_repeats_nothing() {
    follow_across_renewals_and_a_restart("?transport=eventsource").await;
}

/// The page at `query` (see `clients/js/test/browser/page.mjs`) through the test's proxy.
async fn follow_across_renewals_and_a_restart(query: &str) {
    if skip_without_browser() {
        return;
    }
    let page_js = page_js().await;
    let db = TestDb::new().await;
    let (_, relay) = db.start_relay(&sse_toml("1s")).await;
    let target = Arc::new(Mutex::new(relay.http_url()));
    let queries = Arc::new(Mutex::new(Vec::new()));
    let base = app_server(page_js, target.clone(), queries.clone()).await;
    let pg = db.client().await;

    let b = Browser::start(LAPTOP).await;
    b.goto(&format!("{base}/{query}")).await;
    b.wait_js(
        "the stream to open",
        "window.outboxTest && window.outboxTest.opens > 0",
    )
    .await;
    let mut sent = insert_events(&pg, 5, "BROWSER.EVENT").await;
    b.wait_text(&tid("count"), "5").await;

    // Events every 200 ms while at least four more tokens are fetched.
    let tokens = || async { b.eval("return window.outboxTest.tokens", vec![]).await };
    let first = tokens().await.as_u64().unwrap();
    while tokens().await.as_u64().unwrap() < first + 4 {
        sent.extend(insert_events(&pg, 1, "BROWSER.EVENT").await);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    b.wait_text(&tid("count"), &sent.len().to_string()).await;

    // The relay goes away; events commit meanwhile; another relay takes over.
    relay.stop().await.unwrap();
    sent.extend(insert_events(&pg, 4, "BROWSER.EVENT").await);
    let (_, relay) = db.start_relay(&sse_toml("1s")).await;
    *target.lock().unwrap() = relay.http_url();
    sent.extend(insert_events(&pg, 2, "BROWSER.EVENT").await);
    b.wait_text(&tid("count"), &sent.len().to_string()).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;

    assert_eq!(
        listed(&b).await,
        serde_json::json!(sent),
        "every event once, in order"
    );
    let errors = b.eval("return window.outboxTest.errors", vec![]).await;
    assert!(
        errors.as_array().unwrap().iter().all(|e| e == "connection"),
        "{errors}"
    );
    // Which transport the page used: the EventSource fallback asks for unnamed messages,
    // with the token in the query string; fetch sends it in a header.
    let queries = queries.lock().unwrap().clone();
    let over_eventsource = |q: &String| q.contains("unnamed=true") && q.contains("access_token=");
    if query.is_empty() {
        assert!(!queries.iter().any(over_eventsource), "{queries:?}");
    } else {
        assert!(queries.iter().all(over_eventsource), "{queries:?}");
    }
    b.screenshot(if query.is_empty() {
        "react-hook"
    } else {
        "react-hook-eventsource"
    })
    .await;
    // The relay's absence shows as failed requests (502 from the proxy); nothing else.
    b.assert_no_errors_except(|e| e.source == "network").await;
    b.close().await;
    relay.stop().await.unwrap();
}

/// The page on its own origin opens the relay's stream directly, cross-origin: with its
/// origin in `[sse] allowed_origins` the events arrive; with another origin listed the
/// browser withholds every answer (CORS), so nothing arrives and the client keeps retrying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_on_another_origin_streams_directly_only_when_its_origin_is_allowed() {
    if skip_without_browser() {
        return;
    }
    let page_js = page_js().await;
    let unused = Arc::new(Mutex::new(String::from("http://127.0.0.1:9")));
    let base = app_server(page_js, unused, Default::default()).await;
    let db = TestDb::new().await;
    let pg = db.client().await;
    let b = Browser::start(LAPTOP).await;

    for (allowed, delivered) in [
        ("https://elsewhere.example.com", false),
        (base.as_str(), true),
    ] {
        let toml = format!("{}allowed_origins = [\"{allowed}\"]\n", sse_toml("1s"));
        let (_, relay) = db.start_relay(&toml).await;
        b.goto(&format!("{base}/?stream={}/v1/events", relay.http_url()))
            .await;
        if delivered {
            b.wait_js("the stream to open", "window.outboxTest.opens > 0")
                .await;
            let sent = insert_events(&pg, 3, "BROWSER.CORS").await;
            b.wait_text(&tid("count"), "3").await;
            assert_eq!(listed(&b).await, serde_json::json!(sent));
        } else {
            b.wait_js(
                "the client to report the refused connection",
                "window.outboxTest.errors.length >= 2",
            )
            .await;
            insert_events(&pg, 1, "BROWSER.CORS").await;
            tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
            let state = b.eval("return window.outboxTest", vec![]).await;
            assert_eq!(state["opens"], 0, "{state}");
            assert_eq!(b.text(&tid("count")).await, "0");
            assert!(
                state["errors"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|e| e == "connection"),
                "{state}"
            );
        }
        relay.stop().await.unwrap();
    }
    b.close().await;
}

/// SSE subscribers the relay serving `base` counts now (its dashboard's overview).
async fn subscribers(base: &str) -> u64 {
    let o: serde_json::Value = reqwest::get(format!("{base}/api/overview"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    o["sse"]["subscribers"].as_u64().unwrap()
}

/// The events the page in the current tab lists.
async fn listed(b: &Browser) -> serde_json::Value {
    b.eval(
        "return [...document.querySelectorAll('[data-testid=events] li')].map(li => li.textContent)",
        vec![],
    )
    .await
}

/// Opens `url` in a new tab and switches to it.
async fn open_tab(b: &Browser, url: &str) -> fantoccini::wd::WindowHandle {
    let c = b.client();
    let tab = c.new_window(true).await.unwrap().handle;
    c.switch_to_window(tab.clone()).await.unwrap();
    b.goto(url).await;
    b.wait_js("the page", "window.outboxTest !== undefined")
        .await;
    tab
}

/// `shareAcrossTabs`: two tabs of the page cost the relay one stream, not two (measured by
/// its subscriber count, beside two tabs that do not share); both show every event; when
/// the tab holding the stream closes, the other takes over from the last event it saw.
/// Every page is opened in a tab of its own and closed (not navigated away from: Chromium
/// may keep a page it navigated away from, and its stream, for a while).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tabs_sharing_one_stream_cost_the_relay_one_subscriber_and_hand_it_over() {
    if skip_without_browser() {
        return;
    }
    let page_js = page_js().await;
    let db = TestDb::new().await;
    let (_, relay) = db.start_relay(&sse_toml("1s")).await;
    let base = app_server(
        page_js,
        Arc::new(Mutex::new(relay.http_url())),
        Default::default(),
    )
    .await;
    let pg = db.client().await;
    let b = Browser::start(LAPTOP).await;
    let c = b.client();
    let count = || async { subscribers(&relay.http_url()).await };

    // Without sharing: two tabs, two streams.
    let blank = c.window().await.unwrap();
    let plain = [open_tab(&b, &base).await, open_tab(&b, &base).await];
    wait_until("two subscribers for two plain tabs", || async {
        count().await == 2
    })
    .await;
    for tab in plain {
        c.switch_to_window(tab).await.unwrap();
        c.close_window().await.unwrap();
    }
    c.switch_to_window(blank).await.unwrap();
    wait_until("no subscriber once they closed", || async {
        count().await == 0
    })
    .await;

    // Sharing: one stream for the two.
    let first = open_tab(&b, &format!("{base}/?share")).await;
    b.wait_js(
        "tab 1 leads",
        "window.outboxTest.leader && window.outboxTest.opens > 0",
    )
    .await;
    let second = open_tab(&b, &format!("{base}/?share")).await;
    let mut sent = insert_events(&pg, 3, "BROWSER.SHARED").await;
    for tab in [&first, &second] {
        c.switch_to_window(tab.clone()).await.unwrap();
        b.wait_text(&tid("count"), "3").await;
        assert_eq!(listed(&b).await, serde_json::json!(sent));
    }
    assert_eq!(count().await, 1, "one subscriber for two sharing tabs");
    let follower = b.eval("return window.outboxTest", vec![]).await;
    assert_eq!(
        (follower["leader"].clone(), follower["opens"].clone()),
        (false.into(), 0.into())
    );

    // The leading tab closes: the other takes over, from the last event it saw.
    c.switch_to_window(first).await.unwrap();
    c.close_window().await.unwrap();
    c.switch_to_window(second).await.unwrap();
    b.wait_js(
        "tab 2 leads",
        "window.outboxTest.leader && window.outboxTest.opens > 0",
    )
    .await;
    sent.extend(insert_events(&pg, 2, "BROWSER.SHARED").await);
    b.wait_text(&tid("count"), "5").await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(
        listed(&b).await,
        serde_json::json!(sent),
        "each once, in order"
    );
    wait_until("one subscriber again", || async { count().await == 1 }).await;
    b.close().await;
    relay.stop().await.unwrap();
}
