//! The HTTP side on `http.listen`: SSE ([`sse`]), `/healthz`, `/readyz`, `/metrics` and the
//! dashboard ([`dashboard`]) at `/`.
//!
//! Connections are served by hand (hyper, one task each) rather than by `axum::serve` so a
//! handler can cut its own connection: a subscriber that stops reading never polls its
//! response body again, and only dropping the connection frees it.

pub mod dashboard;
pub mod host;
pub mod limits;
pub mod sse;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use jsonwebtoken::DecodingKey;

use crate::config::Config;
use crate::health::{Health, Shared};

/// Shared by every handler.
pub struct App {
    pub health: Arc<Health>,
    /// LISTEN is part of readiness unless the relay runs poll-only.
    pub listen: bool,
    pub sse: Option<sse::SseState>,
    /// For the queue gauges of `/metrics`.
    pub pool: deadpool_postgres::Pool,
    pub table: String,
    pub hub: Arc<crate::sinks::sse::Hub>,
    pub queue: crate::observe::metrics::QueueGauges,
    pub dashboard: dashboard::Dashboard,
    /// Connections open now, for `/metrics`.
    pub connections: Arc<limits::Gate>,
    /// The `Host` names answered on every route ([`host`]).
    pub allowed_hosts: Arc<host::AllowedHosts>,
    /// `[sse] allowed_origins`: pages there may open the stream cross-origin.
    pub allowed_origins: sse::cors::Origins,
    /// `http.metrics_token`: `/metrics` needs it when set.
    pub metrics_token: Option<crate::secret::Secret>,
}

impl App {
    /// The HTTP side of a daemon on `cfg`: `pool` is the relay's (for the queue gauges),
    /// `shared` what the relay shares with it, `hub` the SSE fan-out and `connections` the
    /// gate the serve loop admits connections through. Makes the SSE and dashboard pools
    /// (which connect when first used).
    pub fn new(
        cfg: &Config,
        pool: deadpool_postgres::Pool,
        shared: Arc<Shared>,
        hub: Arc<crate::sinks::sse::Hub>,
        connections: Arc<limits::Gate>,
    ) -> anyhow::Result<Self> {
        let sse = match cfg.sse.enabled {
            false => None,
            true => Some(sse::SseState {
                hub: hub.clone(),
                pool: crate::db::pool_of(
                    cfg.database_url.get(),
                    crate::db::SSE_POOL_SIZE,
                    Some("sse"),
                )?,
                reader: crate::sinks::sse::read::Reader::new(cfg),
                catch_up: tokio::sync::Semaphore::new(sse::CATCH_UP_READS),
                key: DecodingKey::from_secret(
                    cfg.sse
                        .token_secret
                        .as_ref()
                        .expect("validated: enabled SSE has a token secret")
                        .get()
                        .expose()
                        .as_bytes(),
                ),
                heartbeat: cfg.sse.heartbeat,
                retention: cfg.retention,
                max_token_lifetime: cfg.sse.max_token_lifetime,
                streams: limits::Gate::new("sse", "sse.max_subscribers", cfg.sse.max_subscribers),
            }),
        };
        Ok(Self {
            health: shared.health.clone(),
            listen: cfg.listen,
            sse,
            pool,
            table: cfg.qualified_table(),
            hub,
            queue: Default::default(),
            dashboard: dashboard::Dashboard::new(cfg, shared),
            connections,
            allowed_hosts: Arc::new(cfg.http.allowed_hosts.clone()),
            allowed_origins: cfg.sse.allowed_origins.clone().into(),
            metrics_token: cfg.http.metrics_token.as_ref().map(|t| t.get().clone()),
        })
    }
}

/// How connections are served (see [`limits`]).
pub struct Serving {
    pub connections: Arc<limits::Gate>,
    pub header_timeout: Duration,
    /// Refused connections lingering to be closed cleanly (see [`limits::refuse`]).
    pub lingering: Arc<tokio::sync::Semaphore>,
}

/// Cancelling it drops the connection the request came on.
#[derive(Clone)]
pub struct ConnKill(pub CancellationToken);

/// Whether the request carries `Authorization: Bearer <token>` (compared as SHA-256
/// digests, so the time taken says nothing about the token).
pub fn bearer_is(headers: &axum::http::HeaderMap, token: &crate::secret::Secret) -> bool {
    use sha2::{Digest, Sha256};
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .is_some_and(|given| {
            Sha256::digest(given.as_bytes()) == Sha256::digest(token.expose().as_bytes())
        })
}

pub fn router(app: Arc<App>) -> Router {
    let hosts = app.allowed_hosts.clone();
    let stream = Router::new().route("/v1/events", get(sse::events)).layer(
        axum::middleware::from_fn_with_state(app.allowed_origins.clone(), sse::cors::apply),
    );
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(stream)
        .merge(dashboard::routes())
        .with_state(app)
        // Outermost: before any route, including unknown ones.
        .layer(axum::middleware::from_fn_with_state(hosts, host::check))
}

async fn readyz(State(app): State<Arc<App>>) -> (StatusCode, &'static str) {
    if app.health.ready(app.listen) {
        (StatusCode::OK, "ready\n")
    } else if !app.health.database_up() {
        (StatusCode::SERVICE_UNAVAILABLE, "database unreachable\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "LISTEN connection down\n")
    }
}

/// Prometheus text. The queue gauges are refreshed here, at most every few seconds.
async fn metrics(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Some(token) = &app.metrics_token {
        if !bearer_is(&headers, token) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "/metrics needs Authorization: Bearer <http.metrics_token>\n",
            )
                .into_response();
        }
    }
    let handle = crate::observe::metrics::handle();
    if app.health.database_up() {
        app.queue.refresh(&app.pool, &app.table).await;
    }
    let up = app.health.database_up();
    ::metrics::gauge!(crate::observe::metrics::UP).set(if up { 1.0 } else { 0.0 });
    ::metrics::gauge!(crate::observe::metrics::SSE_SUBSCRIBERS).set(app.hub.subscribers() as f64);
    ::metrics::gauge!(crate::observe::metrics::HTTP_CONNECTIONS).set(app.connections.held() as f64);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
        .into_response()
}

/// Binds `http.listen`, with an error that says what to change.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr} (http.listen): is another relay running? set [http] listen to a free address")
    })
}

/// Serves until `shutdown`, then drops every connection (SSE clients reconnect elsewhere).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    serving: Serving,
    shutdown: CancellationToken,
) {
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(error = %e, "accepting an HTTP connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let Some(place) = serving.connections.enter() else {
            limits::refuse(stream, &serving.lingering);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn = serve_connection(
            stream,
            peer,
            router.clone(),
            serving.header_timeout,
            shutdown.child_token(),
        );
        tokio::spawn(async move {
            conn.await;
            drop(place);
        });
    }
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    router: Router,
    header_timeout: Duration,
    kill: CancellationToken,
) {
    let handle = ConnKill(kill.clone());
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(handle.clone());
            req.extensions_mut().insert(dashboard::Peer(peer));
            router.clone().oneshot(req.map(axum::body::Body::new))
        });
    // The header read timeout runs from the connection's start and, on a kept-alive one,
    // from the end of each response until the next request head is in: it closes idle and
    // trickling clients alike. It never runs while a response (an SSE stream) is going out.
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        r = conn => if let Err(e) = r {
            tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
        },
        _ = kill.cancelled() => tracing::debug!(%peer, "HTTP connection closed by the relay"),
    }
}

/// The address actually bound (port 0 picks one).
pub fn local_addr(listener: &TcpListener) -> SocketAddr {
    listener
        .local_addr()
        .expect("a bound listener has an address")
}
