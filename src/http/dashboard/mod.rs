//! The built-in dashboard at `/`: a static page (embedded, no build step) and the JSON API
//! under `/api/` it polls ([`api`]).
//!
//! Who may do what ([`Dashboard::allow`]):
//! - on a loopback listener without admin tokens, anyone who can reach it may read and act
//!   (a laptop, `dev`);
//! - with admin tokens (`admin_token`, `[[admin_tokens]]`), actions need
//!   `Authorization: Bearer <token>`, and the audit log records the token's name; on a
//!   non-loopback listener reads need one too (payloads are data);
//! - on a non-loopback listener without a token the API is refused altogether.
//!
//! A browser page from another site could still aim requests at a loopback relay, so
//! requests without the token also have their `Host` checked on a loopback listener (DNS
//! rebinding), and actions need a JSON body and, without the token, a same-origin `Origin`
//! when one is sent (cross-site forms cannot do either without a CORS preflight, which is
//! never granted; nor can they send an Authorization header).

pub mod access;
pub mod api;

pub use access::Access;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{header, HeaderValue, StatusCode};
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
    /// (name, token): `http.admin_token` (named `admin`) and `http.admin_tokens`.
    admin_tokens: Vec<(String, Secret)>,
    /// `http.listen` is a loopback address.
    loopback: bool,
    pub(crate) channel: String,
    pub(crate) ordering: bool,
    pub(crate) started_at: String,
    pub(crate) cache: api::Cache,
    /// Reads every relay's report, for the cluster-wide overview.
    pub(crate) cluster: crate::db::cluster::ClusterSql,
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
            admin_tokens: cfg
                .http
                .admin_tokens
                .iter()
                .map(|t| (t.name.clone(), t.token.get().clone()))
                .collect(),
            loopback: cfg.http.listen.ip().is_loopback(),
            channel: cfg.table_settings().channel(),
            ordering: !cfg.ordered_types().is_empty(),
            started_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            cache: api::Cache::default(),
            cluster: crate::db::cluster::ClusterSql::new(&cfg.table_settings()),
        }
    }
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
        .route("/api/endpoints/:name/replay", post(api::replay))
        .route("/api/audit", get(api::audit_log))
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
