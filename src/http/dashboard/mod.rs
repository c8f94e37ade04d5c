//! The built-in dashboard at `/`: a static page (embedded, no build step) and the JSON API
//! under `/api/` it polls ([`api`]).
//!
//! Who may do what ([`Dashboard::allow`]):
//! - on a loopback listener without `admin_token`, anyone who can reach it may read and act
//!   (a laptop, `dev`);
//! - with `admin_token`, actions need `Authorization: Bearer <token>`; on a non-loopback
//!   listener reads need it too (payloads are data);
//! - on a non-loopback listener without a token the API is refused altogether.
//!
//! A browser page from another site could still aim requests at a loopback relay, so
//! requests without the token also have their `Host` checked on a loopback listener (DNS
//! rebinding), and actions need a JSON body and, without the token, a same-origin `Origin`
//! when one is sent (cross-site forms cannot do either without a CORS preflight, which is
//! never granted; nor can they send an Authorization header).

pub mod api;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::config::Config;
use crate::health::Shared;
use crate::secret::Secret;

use super::App;

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// Same-origin scripts and styles only; nothing may frame the page.
const CSP: &str = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; \
                   base-uri 'none'; form-action 'self'";

/// The dashboard's settings and the state it reads.
pub struct Dashboard {
    pub(crate) shared: Arc<Shared>,
    /// The dashboard's own small pool, with a short statement timeout.
    pub(crate) pool: Option<deadpool_postgres::Pool>,
    admin_token: Option<Secret>,
    /// `http.listen` is a loopback address.
    loopback: bool,
    pub(crate) channel: String,
    pub(crate) ordering: bool,
    pub(crate) started_at: String,
    pub(crate) cache: api::Cache,
}

/// What a request wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Act,
}

/// A refusal, as JSON `{"error": ...}`.
#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.1 });
        (self.0, no_store(), axum::Json(body)).into_response()
    }
}

fn no_store() -> [(header::HeaderName, HeaderValue); 1] {
    [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))]
}

impl Dashboard {
    pub fn new(cfg: &Config, shared: Arc<Shared>) -> Self {
        let pool = crate::db::pool_with(
            cfg.database_url.get(),
            2,
            Some("dashboard"),
            crate::db::browse::DASHBOARD_STATEMENT_TIMEOUT,
        )
        .map_err(|e| tracing::warn!(error = format!("{e:#}"), "dashboard has no database pool"))
        .ok();
        Self {
            shared,
            pool,
            admin_token: cfg.http.admin_token.as_ref().map(|t| t.get().clone()),
            loopback: cfg.http.listen.ip().is_loopback(),
            channel: cfg.table_settings().channel(),
            ordering: !cfg.ordered_types().is_empty(),
            started_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            cache: api::Cache::default(),
        }
    }

    /// Whether the request carries the admin token (compared as SHA-256 digests, so the
    /// time taken says nothing about the token).
    fn has_token(&self, headers: &HeaderMap) -> bool {
        self.admin_token
            .as_ref()
            .is_some_and(|token| super::auth::bearer_is(headers, token))
    }

    /// Whether `http.admin_token` is set (the page offers a login only then).
    pub fn has_admin_token(&self) -> bool {
        self.admin_token.is_some()
    }

    /// Whether this request may act (the `admin` flag the page shows).
    pub fn may_act(&self, headers: &HeaderMap) -> bool {
        match &self.admin_token {
            Some(_) => self.has_token(headers),
            None => self.loopback,
        }
    }

    /// Refuses a request that may not `access` (see the module docs). The Host and Origin
    /// checks guard what a browser may do without a credential; a request carrying the
    /// admin token is the operator's (a reverse proxy in front changes both headers).
    pub fn allow(&self, headers: &HeaderMap, access: Access) -> Result<(), ApiError> {
        let authed = self.has_token(headers);
        if self.loopback && !authed && !loopback_host(headers) {
            let (status, hint) = match self.admin_token {
                Some(_) => (StatusCode::UNAUTHORIZED, ": log in with the admin token"),
                None => (StatusCode::FORBIDDEN, ""),
            };
            return Err(ApiError(
                status,
                format!(
                    "the dashboard on a loopback listener answers only to localhost, \
                     127.0.0.1 or [::1] in the Host header{hint}"
                ),
            ));
        }
        if !self.loopback && self.admin_token.is_none() {
            return Err(ApiError(
                StatusCode::FORBIDDEN,
                "the dashboard API is off on a non-loopback listener without an admin token: \
                 set [http] admin_token"
                    .into(),
            ));
        }
        let presented = headers.contains_key(header::AUTHORIZATION);
        if presented && self.admin_token.is_some() && !self.has_token(headers) {
            return Err(ApiError(
                StatusCode::UNAUTHORIZED,
                "wrong admin token".into(),
            ));
        }
        let needs_token = self.admin_token.is_some() && (access == Access::Act || !self.loopback);
        if needs_token && !authed {
            return Err(ApiError(
                StatusCode::UNAUTHORIZED,
                "this needs the admin token (http.admin_token)".into(),
            ));
        }
        if access == Access::Act {
            check_same_origin(headers, authed)?;
        }
        Ok(())
    }
}

/// The Host header names the loopback interface (what a browser sends for 127.0.0.1:port
/// or localhost:port; a rebinding attack sends its own domain).
fn loopback_host(headers: &HeaderMap) -> bool {
    let Some(name) = super::host::host_name(headers) else {
        return true; // HTTP/1.0 clients and tools: no browser omits it
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Actions come with a JSON body, and, without the token, from this origin when the
/// browser says where from.
fn check_same_origin(headers: &HeaderMap, authed: bool) -> Result<(), ApiError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json {
        return Err(ApiError(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "actions take a JSON body (Content-Type: application/json)".into(),
        ));
    }
    if authed {
        return Ok(()); // a cross-site form cannot send the Authorization header
    }
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
        let origin_host = origin.split_once("://").map(|(_, h)| h);
        if origin_host.is_none() || origin_host != host {
            return Err(ApiError(
                StatusCode::FORBIDDEN,
                "cross-origin actions are refused".into(),
            ));
        }
    }
    Ok(())
}

/// The peer of a request, put in its extensions by the serve loop (for the action log).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/", get(|| asset(INDEX_HTML, "text/html; charset=utf-8")))
        .route(
            "/assets/app.js",
            get(|| asset(APP_JS, "text/javascript; charset=utf-8")),
        )
        .route(
            "/assets/app.css",
            get(|| asset(APP_CSS, "text/css; charset=utf-8")),
        )
        // Browsers ask for it on every page; the page has no icon, so no 404 in the console.
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route("/api/overview", get(api::overview))
        .route("/api/events", get(api::events))
        .route("/api/events/:id", get(api::event))
        .route("/api/events/retry", post(api::retry))
        .route("/api/events/skip", post(api::skip))
        .route("/api/endpoints/:name/pause", post(api::pause))
        .route("/api/endpoints/:name/resume", post(api::resume))
}

async fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_FRAME_OPTIONS, "DENY"),
            // The binary is the version: revalidate, it is cheap.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn dash(listen: &str, token: Option<&str>) -> Dashboard {
        let mut toml = format!("[http]\nlisten = \"{listen}\"\n");
        if let Some(t) = token {
            toml.push_str(&format!("admin_token = \"{t}\"\n"));
        }
        let cfg = Config::from_toml(&toml, &Default::default()).unwrap();
        let shared = Arc::new(Shared::new(&cfg, None).unwrap());
        Dashboard::new(&cfg, shared)
    }

    #[tokio::test]
    async fn loopback_without_a_token_is_open_but_only_to_localhost_hosts() {
        let d = dash("127.0.0.1:0", None);
        let json = ("content-type", "application/json");
        assert!(d
            .allow(&headers(&[("host", "127.0.0.1:9470")]), Access::Read)
            .is_ok());
        assert!(d
            .allow(&headers(&[("host", "localhost:9470"), json]), Access::Act)
            .is_ok());
        assert!(d
            .allow(&headers(&[("host", "[::1]:9470"), json]), Access::Act)
            .is_ok());
        let rebound = d.allow(&headers(&[("host", "evil.example:9470")]), Access::Read);
        assert_eq!(rebound.unwrap_err().0, StatusCode::FORBIDDEN);
        // A cross-site form post: no JSON, or another origin.
        let form = d.allow(&headers(&[("host", "127.0.0.1:9470")]), Access::Act);
        assert_eq!(form.unwrap_err().0, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let cross = d.allow(
            &headers(&[
                ("host", "127.0.0.1:9470"),
                json,
                ("origin", "https://evil.example"),
            ]),
            Access::Act,
        );
        assert_eq!(cross.unwrap_err().0, StatusCode::FORBIDDEN);
        let same = d.allow(
            &headers(&[
                ("host", "127.0.0.1:9470"),
                json,
                ("origin", "http://127.0.0.1:9470"),
            ]),
            Access::Act,
        );
        assert!(same.is_ok());
    }

    #[tokio::test]
    async fn a_token_guards_actions_and_on_an_open_listener_reads_too() {
        // A JSON request to `host`, with an Authorization header when given.
        let to = |host: &'static str| {
            move |auth: Option<&'static str>| {
                let mut v = vec![("host", host), ("content-type", "application/json")];
                v.extend(auth.map(|a| ("authorization", a)));
                headers(&v)
            }
        };
        let d = dash("127.0.0.1:0", Some("s3cret"));
        let h = to("127.0.0.1:1");
        assert!(d.allow(&h(None), Access::Read).is_ok());
        assert_eq!(
            d.allow(&h(None), Access::Act).unwrap_err().0,
            StatusCode::UNAUTHORIZED
        );
        let wrong = d.allow(&h(Some("Bearer nope")), Access::Act);
        assert_eq!(wrong.unwrap_err().0, StatusCode::UNAUTHORIZED);
        assert!(d.allow(&h(Some("Bearer s3cret")), Access::Act).is_ok());
        assert!(d.may_act(&h(Some("Bearer s3cret"))) && !d.may_act(&h(None)));
        // Through a reverse proxy (another Host, its Origin): the token is what counts.
        let proxied = |auth: Option<&'static str>| {
            let mut v = vec![
                ("host", "relay.example.com"),
                ("origin", "https://relay.example.com"),
                ("content-type", "application/json"),
            ];
            v.extend(auth.map(|a| ("authorization", a)));
            headers(&v)
        };
        assert!(d
            .allow(&proxied(Some("Bearer s3cret")), Access::Act)
            .is_ok());
        assert_eq!(
            d.allow(&proxied(None), Access::Read).unwrap_err().0,
            StatusCode::UNAUTHORIZED
        );

        let open = dash("0.0.0.0:0", Some("s3cret"));
        let any = to("relay.internal:9470");
        assert_eq!(
            open.allow(&any(None), Access::Read).unwrap_err().0,
            StatusCode::UNAUTHORIZED
        );
        assert!(open
            .allow(&any(Some("Bearer s3cret")), Access::Read)
            .is_ok());

        let off = dash("0.0.0.0:0", None);
        assert_eq!(
            off.allow(&any(None), Access::Read).unwrap_err().0,
            StatusCode::FORBIDDEN
        );
        assert!(!off.may_act(&any(None)));
    }
}
