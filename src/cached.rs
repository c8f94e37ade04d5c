//! A value read from the database at most once per period, however many callers ask:
//! concurrent callers wait for the one read in progress instead of each running their own.
//! The queue gauges of `/metrics` and the dashboard's overview use it.

use std::time::{Duration, Instant};

use tokio::sync::Mutex;

/// The last value read and when.
pub struct Cached<T>(Mutex<Option<(Instant, T)>>);

impl<T> Default for Cached<T> {
    fn default() -> Self {
        Self(Mutex::new(None))
    }
}

impl<T: Clone> Cached<T> {
    /// The value, read again with `refresh` when older than `max_age`. None when that read
    /// fails (logged at debug as `what`): a stale value would pass for a current one.
    pub async fn get<F, Fut>(&self, max_age: Duration, what: &str, refresh: F) -> Option<T>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<T>>,
    {
        let mut slot = self.0.lock().await;
        if let Some((at, v)) = &*slot {
            if at.elapsed() < max_age {
                return Some(v.clone());
            }
        }
        match refresh().await {
            Ok(v) => {
                *slot = Some((Instant::now(), v.clone()));
                Some(v)
            }
            Err(e) => {
                tracing::debug!(error = format!("{e:#}"), what, "cached read failed");
                None
            }
        }
    }
}
