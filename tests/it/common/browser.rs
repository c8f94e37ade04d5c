//! Headless Chromium driven through Debian's chromedriver (WebDriver, with the `fantoccini`
//! crate), for the dashboard's end-to-end tests (tests/it/dashboard.rs).
//!
//! Each [`Browser`] is its own chromedriver child on a free loopback port, its own Chromium
//! session and its own throwaway profile directory. Dropping it (also on panic) kills
//! chromedriver and the Chromium processes it started, then removes the profile.
//!
//! Waits are hang guards ([`PATIENCE`]), never timing assertions. Everything the page
//! logs to its console (errors, CSP violations, failed requests) is collected through
//! chromedriver's log endpoint, so a test can assert that a page ran cleanly.
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (Debian: `chromium
//! chromium-driver`; .ci/run installs them). Without them the tests are skipped with one
//! line saying what to install, or fail saying so in CI (see [`skip_without_browser`]).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use axum::http::Method;
use fantoccini::elements::Element;
use fantoccini::error::CmdError;
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use nix::sys::signal::{killpg, Signal};
use serde::Deserialize;
use serde_json::{json, Value};

use super::process::Proc;
use super::{free_addr, http_get, wait_until, PATIENCE};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A window size, and whether the page sees a phone (mobile viewport, touch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Viewport {
    pub name: &'static str,
    pub width: u32,
    pub height: u32,
    pub mobile: bool,
}

pub const LAPTOP: Viewport = Viewport {
    name: "laptop",
    width: 1280,
    height: 800,
    mobile: false,
};

/// A current phone in CSS pixels (pixel ratio 1, so screenshots are 390 px wide).
pub const PHONE: Viewport = Viewport {
    name: "phone",
    width: 390,
    height: 844,
    mobile: true,
};

/// `[data-testid="name"]`: the dashboard's test hooks (see dash-spec, "Pages").
pub fn tid(name: &str) -> String {
    format!("[data-testid=\"{name}\"]")
}

/// One line of the browser's console log, as chromedriver reports it.
#[derive(Debug, Clone, Deserialize)]
pub struct LogEntry {
    /// SEVERE, WARNING, INFO, DEBUG.
    pub level: String,
    pub message: String,
    /// "javascript", "console-api", "network", "security", ...
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub timestamp: f64,
}

impl LogEntry {
    pub fn is_error(&self) -> bool {
        self.level == "SEVERE"
    }
}

/// Whether a browser test should return at once, having said so: Chromium or chromedriver
/// is missing on a developer's machine, so the test is skipped with one loud line naming the
/// packages. In CI (`CI` set; .ci/run sets it and installs both) a missing browser fails the
/// test instead, because there the browser tests are required.
pub fn skip_without_browser() -> bool {
    match missing_browser(&[CHROMIUM, CHROMEDRIVER]) {
        None => false,
        Some(msg) if std::env::var_os("CI").is_some() => {
            panic!("{msg} (CI is set: the browser tests are required there)")
        }
        Some(msg) => {
            // Once per test binary, straight to the terminal (libtest captures eprintln! of
            // a passing test).
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                use std::io::Write;
                let _ = writeln!(std::io::stderr(), "\n*** SKIPPED, not in CI: {msg} ***");
            });
            true
        }
    }
}

/// Fails the test, with what to install, when Chromium or chromedriver is missing.
pub fn require_installed() {
    if let Some(msg) = missing_browser(&[CHROMIUM, CHROMEDRIVER]) {
        panic!("{msg}");
    }
}

/// What to tell when any of `paths` does not exist.
pub fn missing_browser(paths: &[&str]) -> Option<String> {
    let missing: Vec<String> = paths
        .iter()
        .filter(|p| !Path::new(p).exists())
        .map(|p| format!("{p} is missing"))
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "the browser tests need headless Chromium and chromedriver, but {}: install the \
             Debian packages `chromium chromium-driver` (apt-get install chromium \
             chromium-driver; .ci/run does this)",
            missing.join(" and ")
        )
    })
}

/// Where screenshots go: `<target dir>/dashboard-screenshots`.
pub fn screenshot_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(t) => manifest.join(t),
        None => manifest.join("target"),
    };
    target.join("dashboard-screenshots")
}

/// chromedriver's (non-W3C but supported) log endpoint: returns and clears the entries
/// logged since the previous call.
#[derive(Debug)]
struct GetLog;

impl WebDriverCompatibleCommand for GetLog {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (Method, Option<String>) {
        (Method::POST, Some(json!({"type": "browser"}).to_string()))
    }
}

/// A headless Chromium session of its own.
pub struct Browser {
    pub viewport: Viewport,
    client: Option<Client>,
    /// chromedriver, leader of a process group that also holds Chromium.
    driver: Proc,
    /// Chromium's --user-data-dir; removed after the processes are gone.
    profile: tempfile::TempDir,
    /// Console entries read so far (reading the endpoint clears it on the driver's side).
    log: Mutex<Vec<LogEntry>>,
}

impl Browser {
    /// Starts chromedriver on a free port, waits until it answers, and opens a headless
    /// Chromium session at `viewport`.
    pub async fn start(viewport: Viewport) -> Self {
        require_installed();
        let addr = free_addr();
        let port = addr.rsplit(':').next().unwrap().to_owned();
        let mut cmd = Command::new(CHROMEDRIVER);
        cmd.arg(format!("--port={port}"))
            .stdin(std::process::Stdio::null())
            // Its own process group, with the Chromium it starts: Drop kills them together
            // (killing chromedriver alone would leave the browser running).
            .process_group(0);
        let mut driver = Proc::spawn("chromedriver", cmd);
        let profile = tempfile::Builder::new()
            .prefix("outbox-relay-chromium-")
            .tempdir()
            .unwrap();

        let status = format!("http://{addr}/status");
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while http_get(&status).await.0 != 200 {
            assert!(
                driver.is_running(),
                "chromedriver exited at start:\n{}{}",
                driver.stdout(),
                driver.stderr()
            );
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromedriver did not answer on {status}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        let args = vec![
            "--headless".to_owned(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            format!("--user-data-dir={}", profile.path().display()),
            format!("--window-size={},{}", viewport.width, viewport.height),
            "--lang=en-US".into(),
        ];
        let mut chrome = json!({"binary": CHROMIUM, "args": args});
        if viewport.mobile {
            chrome["mobileEmulation"] = json!({"deviceMetrics": {
                "width": viewport.width, "height": viewport.height,
                "pixelRatio": 1, "mobile": true, "touch": true,
            }});
        }
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": chrome,
            "goog:loggingPrefs": {"browser": "ALL"},
            "timeouts": {"pageLoad": PATIENCE.as_millis() as u64,
                         "script": PATIENCE.as_millis() as u64},
        });
        let caps = match caps {
            Value::Object(m) => m,
            _ => unreachable!(),
        };
        let mut builder = ClientBuilder::new(HttpConnector::new());
        builder.capabilities(caps);
        let driver_url = format!("http://{addr}");
        let connect = builder.connect(&driver_url);
        let mut browser = Self {
            viewport,
            client: None,
            driver,
            profile,
            log: Mutex::default(),
        };
        let client = match tokio::time::timeout(PATIENCE, connect).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => panic!(
                "chromedriver could not start Chromium ({CHROMIUM}): {e}\n{}",
                browser.driver.stderr()
            ),
            Err(_) => panic!("no Chromium session within {PATIENCE:?}"),
        };
        browser.client = Some(client);
        if !viewport.mobile {
            // (A phone's viewport comes from mobileEmulation; a page without
            // <meta name=viewport> is laid out 980 px wide there, as on a real phone.)
            browser.fit_viewport().await;
        }
        browser
    }

    /// Makes the page's viewport (innerWidth x innerHeight) the asked size: headless
    /// Chromium's --window-size is the outer window, a little taller than the viewport.
    async fn fit_viewport(&self) {
        let want = (self.viewport.width as i64, self.viewport.height as i64);
        for _ in 0..3 {
            let got = self
                .eval("return [window.innerWidth, window.innerHeight];", vec![])
                .await;
            let got = (got[0].as_i64().unwrap(), got[1].as_i64().unwrap());
            if got == want {
                return;
            }
            let (w, h) = self.client().get_window_size().await.unwrap();
            let (w, h) = (w as i64 + want.0 - got.0, h as i64 + want.1 - got.1);
            self.client()
                .set_window_size(w as u32, h as u32)
                .await
                .unwrap_or_else(|e| panic!("resizing the window to {w}x{h}: {e}"));
        }
        panic!("cannot make the viewport {}x{}", want.0, want.1);
    }

    pub fn client(&self) -> &Client {
        self.client.as_ref().expect("the session is open")
    }

    /// Navigates and waits for the load event (a hash-only change returns at once).
    pub async fn goto(&self, url: &str) {
        self.client()
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("cannot open {url}: {e}"));
    }

    pub async fn current_url(&self) -> String {
        self.client().current_url().await.unwrap().to_string()
    }

    /// Waits until an element matches `css`; returns the first.
    pub async fn wait(&self, css: &str) -> Element {
        let found = Mutex::new(None);
        wait_until(&format!("an element matching {css}"), || async {
            match self.client().find(Locator::Css(css)).await {
                Ok(e) => {
                    *found.lock().unwrap() = Some(e);
                    true
                }
                Err(_) => false,
            }
        })
        .await;
        found.into_inner().unwrap().unwrap()
    }

    /// Waits until `css` matches nothing.
    pub async fn wait_gone(&self, css: &str) {
        wait_until(&format!("no element matching {css}"), || async {
            matches!(self.client().find_all(Locator::Css(css)).await, Ok(v) if v.is_empty())
        })
        .await;
    }

    /// Waits until the JS expression `expr` is truthy.
    pub async fn wait_js(&self, what: &str, expr: &str) {
        let script = format!("return Boolean({expr});");
        wait_until(what, || async {
            matches!(
                self.client().execute(&script, vec![]).await,
                Ok(Value::Bool(true))
            )
        })
        .await;
    }

    /// Waits until the rendered text of the first match of `css` equals `want`.
    pub async fn wait_text(&self, css: &str, want: &str) {
        /// Says what the page showed last when the wait fails.
        struct Last(Mutex<String>);
        impl Drop for Last {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    eprintln!("last text seen: {:?}", self.0.lock().unwrap());
                }
            }
        }
        let last = Last(Mutex::default());
        let what = format!("{css} to read {want:?}");
        wait_until(&what, || async {
            let t = match self.client().find(Locator::Css(css)).await {
                Ok(e) => e.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            let ok = t.trim() == want;
            *last.0.lock().unwrap() = t;
            ok
        })
        .await;
    }

    /// The rendered text of the first match of `css` (waited for).
    pub async fn text(&self, css: &str) -> String {
        self.wait(css)
            .await
            .text()
            .await
            .unwrap_or_else(|e| panic!("text of {css}: {e}"))
    }

    /// An attribute of the first match of `css` (waited for); None when it has none.
    pub async fn attr(&self, css: &str, name: &str) -> Option<String> {
        self.wait(css)
            .await
            .attr(name)
            .await
            .unwrap_or_else(|e| panic!("attribute {name} of {css}: {e}"))
    }

    /// Clicks the first match of `css` once it is there, visible and enabled. Retried only
    /// while the driver says the click did not happen (covered, not interactable yet).
    pub async fn click(&self, css: &str) {
        self.act(css, "take a click", |e| async move { e.click().await })
            .await;
    }

    /// Presses `key` (a W3C key code) on the first match of `css`, as [`Browser::click`]
    /// clicks: retried while the driver says nothing was sent (the page re-rendered the
    /// element meanwhile: a stale element).
    pub async fn press(&self, css: &str, key: &str) {
        self.act(css, "take a key", |e| async move { e.send_keys(key).await })
            .await;
    }

    /// Does `act` on the first match of `css` once it is visible and enabled, again while
    /// the driver's error says it did not happen ([`not_clicked`]).
    async fn act<F, Fut>(&self, css: &str, what: &str, act: F)
    where
        F: Fn(Element) -> Fut,
        Fut: std::future::Future<Output = Result<(), CmdError>>,
    {
        let done = Mutex::new(None::<String>);
        wait_until(&format!("{css} to {what}"), || async {
            let Ok(e) = self.client().find(Locator::Css(css)).await else {
                return false;
            };
            if !e.is_displayed().await.unwrap_or(false) || !e.is_enabled().await.unwrap_or(false) {
                return false;
            }
            match act(e).await {
                Ok(()) => true,
                Err(err) if not_clicked(&err) => false,
                Err(err) => {
                    *done.lock().unwrap() = Some(err.to_string());
                    true
                }
            }
        })
        .await;
        if let Some(err) = done.into_inner().unwrap() {
            panic!("{css} did not {what}: {err}");
        }
    }

    /// Replaces the value of the input matching `css` by typing `value` (real key events).
    pub async fn fill(&self, css: &str, value: &str) {
        let e = self.wait(css).await;
        e.clear()
            .await
            .unwrap_or_else(|err| panic!("clear {css}: {err}"));
        e.send_keys(value)
            .await
            .unwrap_or_else(|err| panic!("type into {css}: {err}"));
    }

    /// Runs `script` as a function body (`return ...` gives the value); `arguments[i]` are
    /// `args`.
    pub async fn eval(&self, script: &str, args: Vec<Value>) -> Value {
        self.client()
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Saves a PNG of the viewport to `target/dashboard-screenshots/<name>.png` and prints
    /// its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self
            .client()
            .screenshot()
            .await
            .unwrap_or_else(|e| panic!("screenshot {name}: {e}"));
        save_png(name, &png)
    }

    /// Every console entry so far (the page's errors, warnings, logs, CSP reports).
    pub async fn console(&self) -> Vec<LogEntry> {
        let fresh = self
            .client()
            .issue_cmd(GetLog)
            .await
            .unwrap_or_else(|e| panic!("reading the browser log: {e}"));
        let fresh: Vec<LogEntry> = serde_json::from_value(fresh)
            .unwrap_or_else(|e| panic!("the browser log is not a list of entries: {e}"));
        let mut log = self.log.lock().unwrap();
        log.extend(fresh);
        log.clone()
    }

    /// The console's errors so far: uncaught exceptions, console.error, CSP violations,
    /// failed requests (source "network").
    pub async fn errors(&self) -> Vec<LogEntry> {
        self.console()
            .await
            .into_iter()
            .filter(LogEntry::is_error)
            .collect()
    }

    /// Fails when the console has any error for which `allowed` is false.
    pub async fn assert_no_errors_except(&self, allowed: impl Fn(&LogEntry) -> bool) {
        let errors: Vec<String> = self
            .errors()
            .await
            .into_iter()
            .filter(|e| !allowed(e))
            .map(|e| format!("  [{}] {}", e.source, e.message))
            .collect();
        assert!(
            errors.is_empty(),
            "the page logged errors ({}):\n{}",
            self.viewport.name,
            errors.join("\n")
        );
    }

    /// Fails when the console has any error (JS exception, CSP violation, failed request).
    pub async fn assert_no_errors(&self) {
        self.assert_no_errors_except(|_| false).await;
    }

    /// Ends the session cleanly (chromedriver closes Chromium); Drop does the rest.
    pub async fn close(mut self) {
        if let Some(c) = self.client.take() {
            let _ = tokio::time::timeout(PATIENCE, c.close()).await;
        }
    }
}

/// WebDriver errors after which the click (or key press) certainly did not happen.
fn not_clicked(e: &CmdError) -> bool {
    let s = e.to_string().to_ascii_lowercase();
    [
        "not interactable",
        "click intercepted",
        "stale element",
        "no such element",
    ]
    .iter()
    .any(|m| s.contains(m))
}

fn save_png(name: &str, png: &[u8]) -> PathBuf {
    let dir = screenshot_dir();
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    let path = dir.join(format!("{name}.png"));
    std::fs::write(&path, png).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    println!("screenshot: {}", path.display());
    path
}

/// Processes of group `pgid` that have not exited (zombies left aside).
fn live_in_group(pgid: i32) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("stat")).ok())
        .filter(|stat| {
            // pid (comm) state ppid pgrp ...: comm may hold spaces, so split after ')'.
            let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
            let mut f = rest.split_whitespace();
            let state = f.next().unwrap_or("Z");
            let pgrp = f.nth(1).and_then(|p| p.parse::<i32>().ok());
            pgrp == Some(pgid) && state != "Z" && state != "X"
        })
        .count()
}

impl Drop for Browser {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(c) = self.client.clone() {
                // The session task runs on the test's runtime: ask from a thread of our own,
                // bounded (a current-thread runtime could not answer while we block here).
                let name = format!(
                    "FAILED-{}-{}",
                    std::thread::current()
                        .name()
                        .unwrap_or("test")
                        .replace("::", "-"),
                    self.viewport.name
                );
                let log = self.log.lock().map(|l| l.clone()).unwrap_or_default();
                let _ = std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    rt.block_on(async move {
                        let t = Duration::from_secs(10);
                        if let Ok(Ok(png)) = tokio::time::timeout(t, c.screenshot()).await {
                            save_png(&name, &png);
                        }
                        let mut log = log;
                        if let Ok(Ok(v)) = tokio::time::timeout(t, c.issue_cmd(GetLog)).await {
                            log.extend(
                                serde_json::from_value::<Vec<LogEntry>>(v).unwrap_or_default(),
                            );
                        }
                        eprintln!("--- browser console ---");
                        for e in log {
                            eprintln!("[{} {}] {}", e.level, e.source, e.message);
                        }
                        eprintln!("--- end ---");
                    })
                })
                .join();
            }
        }
        drop(self.client.take());
        let pgid = self.driver.pid();
        let _ = killpg(pgid, Signal::SIGKILL);
        // Chromium must be gone before its profile directory is removed (field drop).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while live_in_group(pgid.as_raw()) > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
