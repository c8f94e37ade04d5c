//! A value read from the database at most once per period, however many callers ask:
//! concurrent callers wait for the one read in progress instead of each running their own.
//! The queue gauges of `/metrics` and the dashboard's overview use it. A read that took
//! long is kept longer ([`crate::background::spaced`]): the queue counts walk index entries
//! that a snapshot held open keeps from vacuum, and must not take a scraper's every
//! interval.

use std::time::Duration;

use tokio::sync::Mutex;
// tokio's clock, so that paused-time tests can move it.
use tokio::time::Instant;

/// The last value read, when the read ended, and how long it took.
pub struct Cached<T>(Mutex<Option<(Instant, Duration, T)>>);

impl<T> Default for Cached<T> {
    fn default() -> Self {
        Self(Mutex::new(None))
    }
}

impl<T: Clone> Cached<T> {
    /// The value, read again with `refresh` when older than `max_age` (or, after a slow read,
    /// than [`crate::background::spaced`] allows). None when that read fails (logged at
    /// debug as `what`): a stale value would pass for a current one.
    pub async fn get<F, Fut>(&self, max_age: Duration, what: &str, refresh: F) -> Option<T>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<T>>,
    {
        let mut slot = self.0.lock().await;
        if let Some((at, took, v)) = &*slot {
            if at.elapsed() < crate::background::spaced(max_age, *took) {
                return Some(v.clone());
            }
        }
        let started = Instant::now();
        match refresh().await {
            Ok(v) => {
                *slot = Some((Instant::now(), started.elapsed(), v.clone()));
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

    /// Counts its reads; each takes `took`, so concurrent callers overlap it.
    async fn read_taking(reads: &AtomicUsize, took: Duration) -> anyhow::Result<usize> {
        tokio::time::sleep(took).await;
        Ok(reads.fetch_add(1, Ordering::SeqCst) + 1)
    }

    /// A read that takes 100 ms: 20 times that is within [`AGE`].
    async fn read(reads: &AtomicUsize) -> anyhow::Result<usize> {
        read_taking(reads, Duration::from_millis(100)).await
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
    async fn a_slow_read_is_kept_twenty_times_as_long_as_it_took() {
        let cached = Cached::<usize>::default();
        let reads = AtomicUsize::new(0);
        let slow = || read_taking(&reads, Duration::from_secs(2));
        assert_eq!(cached.get(AGE, "test", slow).await, Some(1));
        // Past AGE, but not past 20 x 2 s since the read ended: no read.
        tokio::time::advance(Duration::from_secs(39)).await;
        assert_eq!(cached.get(AGE, "test", slow).await, Some(1));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(cached.get(AGE, "test", slow).await, Some(2));
        // A fast read brings the period back to AGE.
        tokio::time::advance(Duration::from_secs(40)).await;
        assert_eq!(cached.get(AGE, "test", || read(&reads)).await, Some(3));
        tokio::time::advance(AGE).await;
        assert_eq!(cached.get(AGE, "test", || read(&reads)).await, Some(4));
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
