//! `outbox-relay run`: the relay, its HTTP side and the SSE tail, started together.
//!
//! The HTTP listener is bound first, so a port clash fails at once with a clear error, and
//! `/healthz` answers while the database is still unreachable. The relay then waits for
//! the database and runs until `shutdown`.

pub mod shutdown;
pub mod systemd;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::health::{Health, Shared};
use crate::http::{self, App};
use crate::sinks::sse::Hub;

/// A started daemon.
pub struct Daemon {
    pub health: Arc<Health>,
    pub hub: Arc<Hub>,
    /// Where `/healthz`, `/readyz` and `/v1/events` are served.
    pub http_addr: SocketAddr,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Daemon {
    /// Binds the HTTP listener and starts everything; returns once listening.
    pub async fn start(cfg: Config, shutdown: CancellationToken) -> anyhow::Result<Self> {
        let unread = cfg.unread_secrets();
        anyhow::ensure!(
            unread.is_empty(),
            "internal error: the daemon was given a config loaded without {} (Needs::Everything)",
            unread.join(", ")
        );
        let listener = http::bind(cfg.http.listen).await?;
        let max_connections = http::limits::connection_cap(&cfg, cfg.http.max_connections)?;
        let connections = Arc::new(http::limits::Gate::new(
            "connections",
            "http.max_connections",
            max_connections,
        ));
        let http_addr = http::local_addr(&listener);
        let pool = crate::db::pool(cfg.database_url.get())?;
        let hub = Arc::new(Hub::default());
        let shared = Arc::new(Shared::new(&cfg, cfg.sse.enabled.then(|| hub.clone()))?);
        let health = shared.health.clone();
        crate::observe::metrics::handle(); // install the recorder before anything counts
        crate::observe::metrics::register_zeroes(cfg.sinks().iter().map(|s| s.name));
        let app = Arc::new(App::new(
            &cfg,
            pool.clone(),
            shared.clone(),
            hub.clone(),
            connections.clone(),
        )?);
        let serving = http::Serving {
            connections,
            header_timeout: cfg.http.header_timeout,
            lingering: Arc::new(tokio::sync::Semaphore::new(
                http::limits::LINGERING_REFUSALS,
            )),
        };
        let http_stop = CancellationToken::new();
        let server = tokio::spawn(http::serve(
            listener,
            http::router(app),
            serving,
            http_stop.clone(),
        ));
        tracing::info!(listen = %http_addr, sse = cfg.sse.enabled, "HTTP listening");
        let notifier = crate::daemon::systemd::spawn(health.clone(), cfg.listen, shutdown.clone());
        let stopped = shutdown.clone();
        let task = tokio::spawn(async move {
            let result = crate::relay::run(cfg, pool, shutdown, shared).await;
            stopped.cancel(); // the relay may also end on an error: stop the rest with it
            http_stop.cancel();
            let _ = server.await;
            // Let it send STOPPING=1 before the process exits.
            if let Some(n) = notifier {
                let _ = n.await;
            }
            result
        });
        Ok(Self {
            health,
            hub,
            http_addr,
            task,
        })
    }

    /// Waits for the daemon to stop (after `shutdown` is cancelled).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await?
    }
}
