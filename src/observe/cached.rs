//! A value read from the database at most once per period, however many callers ask:
//! concurrent callers wait for the one read in progress instead of each running their own.
//! The queue gauges of `/metrics` and the dashboard's overview use it.

use std::time::Duration;

use tokio::sync::Mutex;
// tokio's clock, so that paused-time tests can move it.
use tokio::time::Instant;

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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    const AGE: Duration = Duration::from_secs(5);

    /// Counts its reads; each takes a second, so concurrent callers overlap it.
    async fn read(reads: &AtomicUsize) -> anyhow::Result<usize> {
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok(reads.fetch_add(1, Ordering::SeqCst) + 1)
    }

    #[tokio::test(start_paused = true)]
    async fn many_callers_share_one_read_per_period() {
        let cached = Arc::new(Cached::<usize>::default());
        let reads = Arc::new(AtomicUsize::new(0));
        let ask = || {
            let (cached, reads) = (cached.clone(), reads.clone());
            tokio::spawn(async move { cached.get(AGE, "test", || read(&reads)).await })
        };
        // Ten callers at once, while the first read is still running: one read.
        let first: Vec<_> = (0..10).map(|_| ask()).collect();
        for h in first {
            assert_eq!(h.await.unwrap(), Some(1));
        }
        // Within the period: still that value, no read.
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(ask().await.unwrap(), Some(1));
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        // Past it: one more read, however many ask.
        tokio::time::advance(Duration::from_secs(3)).await;
        let second: Vec<_> = (0..10).map(|_| ask()).collect();
        for h in second {
            assert_eq!(h.await.unwrap(), Some(2));
        }
        assert_eq!(reads.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_read_gives_none_and_the_next_caller_reads_again() {
        let cached = Cached::<usize>::default();
        let failed = cached
            .get(AGE, "test", || async { anyhow::bail!("down") })
            .await;
        assert_eq!(failed, None, "no value yet, and the read failed");
        assert_eq!(cached.get(AGE, "test", || async { Ok(7) }).await, Some(7));
        tokio::time::advance(AGE).await;
        let stale = cached
            .get(AGE, "test", || async { anyhow::bail!("down") })
            .await;
        assert_eq!(stale, None, "a stale value must not pass for a current one");
    }
}
