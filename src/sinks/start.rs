//! Getting a broker sink ready at start: connecting and checking the destination, retried
//! with backoff while the broker is not there yet, for up to the start-up grace; a refusal
//! (wrong password, untrusted certificate, a missing exchange) ends it at once. Either way
//! the error is one line naming the sink.

use std::future::Future;
use std::time::Duration;

use crate::backoff::Backoff;

/// What one try came to.
pub enum Try<T> {
    Ready(T),
    /// Not now (the broker is unreachable, starting, electing a leader): try again.
    Again(String),
    /// Never, as configured: stop.
    Refused(String),
}

/// Runs `attempt` until it is ready, refused, or `grace` has passed. `sink` names the sink
/// (`redis sink "streams"`), `broker` its kind of server (`Redis`), `target` where it
/// connects, safe to show.
pub async fn within<T, F, Fut>(
    grace: Duration,
    sink: &str,
    broker: &str,
    target: &str,
    mut attempt: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Try<T>>,
{
    let deadline = tokio::time::Instant::now() + grace;
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        let why = match attempt().await {
            Try::Ready(ready) => return Ok(ready),
            Try::Refused(why) => anyhow::bail!("{sink}: {target}: {why}"),
            Try::Again(why) => why,
        };
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!(
                "{sink}: cannot reach {broker} at {target} within {}: {why}",
                humantime::format_duration(grace)
            );
        }
        let wait = backoff.failed();
        tracing::warn!(sink, target, error = %why, retry_in = ?wait, "cannot reach {broker} yet");
        tokio::time::sleep(wait).await;
    }
}
