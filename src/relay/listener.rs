//! The LISTEN connection: turns NOTIFYs into wake-ups of the claim loop and the SSE tail.
//!
//! One dedicated connection (a pooled one would be recycled and lose its LISTEN). When it
//! drops, it is re-established with backoff, and every (re)connect wakes the claimer once,
//! because a notify sent while we were not listening is lost for good. A periodic
//! `SELECT 1` catches a half-open connection that TCP alone would not notice for minutes.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::health::Health;
use crate::observe::incident::Incident;
use crate::secret::Secret;
use crate::sinks::pause::ENDPOINTS_CHANGED;

/// How often the idle LISTEN connection proves it is alive.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(15);
/// How long the heartbeat may take before the connection is declared dead.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(10);
/// The LISTEN connection's role in its application_name (`outbox-relay listener host/pid`).
pub const LISTENER_ROLE: &str = "listener";
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(10);
/// The first reconnect's delay, doubled for each failed attempt in a row.
const FIRST_RECONNECT_DELAY: Duration = Duration::from_millis(100);

/// Runs until `stop`: listen, forward notifies to every waker (and the paused-endpoints
/// announcements to `endpoints_changed`), reconnect on any failure.
pub async fn run(
    url: Secret,
    channel: String,
    wake: Vec<Arc<Notify>>,
    endpoints_changed: Arc<Notify>,
    health: Arc<Health>,
    stop: CancellationToken,
) {
    let mut backoff = Backoff::new(FIRST_RECONNECT_DELAY, MAX_RECONNECT_DELAY);
    let mut lost = Incident::new("the LISTEN connection");
    loop {
        let session = listen_once(
            &url,
            &channel,
            &wake,
            &endpoints_changed,
            &health,
            &stop,
            (&mut backoff, &mut lost),
        );
        match session.await {
            Ok(()) => return, // stopped
            Err(e) => {
                health.listening.store(false, Ordering::Release);
                let delay = backoff.failed();
                crate::incident_failed!(lost, error = format!("{e:#}"), retry_in = ?delay, "LISTEN connection lost; reconnecting");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
    }
}

/// One connection's life. Returns Ok only when asked to stop. Once listening, `backoff` starts
/// over and `lost` closes: the next incident (a failover, a restart) is a new one,
/// reconnected as fast and logged at warn again.
async fn listen_once(
    url: &Secret,
    channel: &str,
    wake: &[Arc<Notify>],
    endpoints_changed: &Arc<Notify>,
    health: &Health,
    stop: &CancellationToken,
    (backoff, lost): (&mut Backoff, &mut Incident),
) -> anyhow::Result<()> {
    let (mut cfg, tls) = crate::db::pg_config(url)?;
    // Named apart from the pool's connections, so operators (and tests) can tell it apart
    // in pg_stat_activity.
    cfg.application_name(crate::db::application_name(LISTENER_ROLE));
    let (client, mut conn) = cfg
        .connect(tls)
        .await
        .map_err(|e| crate::db::connect_error(Some(&crate::db::servers(&cfg)), e))?;
    // The connection must be polled for the client to make progress and for notifications
    // to arrive; this task does both and ends when the connection does.
    let notified = wake.to_vec();
    let endpoints_changed = endpoints_changed.clone();
    let mut driver: tokio::task::JoinHandle<anyhow::Result<()>> = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(msg) = messages.next().await {
            match msg {
                Ok(AsyncMessage::Notification(n)) if n.payload() == ENDPOINTS_CHANGED => {
                    endpoints_changed.notify_one()
                }
                Ok(AsyncMessage::Notification(_)) => notified.iter().for_each(|w| w.notify_one()),
                Ok(_) => {}
                Err(e) => return Err(anyhow::Error::from(e)),
            }
        }
        Err(anyhow::anyhow!("server closed the connection"))
    });
    crate::db::server::keep_idle_session(&client).await?;
    crate::db::server::listen(&client, channel).await?;
    backoff.succeeded();
    lost.succeeded();
    health.listening.store(true, Ordering::Release);
    tracing::info!(channel, "listening for new events");
    // Anything committed while we were not listening was announced to nobody: look now.
    wake.iter().for_each(|w| w.notify_one());
    let mut heartbeat = tokio::time::interval(HEARTBEAT_EVERY);
    heartbeat.reset();
    loop {
        tokio::select! {
            r = &mut driver => {
                return match r {
                    Ok(Ok(())) => Err(anyhow::anyhow!("connection ended")),
                    Ok(Err(e)) => Err(e),
                    Err(e) => Err(e.into()),
                };
            }
            _ = heartbeat.tick() => {
                match tokio::time::timeout(HEARTBEAT_TIMEOUT, crate::db::server::ping(&client)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => { driver.abort(); return Err(e.into()); }
                    Err(_) => {
                        driver.abort();
                        anyhow::bail!("heartbeat got no answer in {HEARTBEAT_TIMEOUT:?} (half-open connection?)");
                    }
                }
            }
            _ = stop.cancelled() => {
                health.listening.store(false, Ordering::Release);
                driver.abort();
                return Ok(());
            }
        }
    }
}
