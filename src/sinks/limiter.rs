//! `rate_limit` on an endpoint: the most requests per second all relays on the table send it
//! together, not each.
//!
//! The tokens live in one row per endpoint ([`crate::db::rates`]), refilled from the time
//! since the last grant and holding at most a tenth of a second's worth. A delivery waits
//! for a token of this relay's [`Limiter`] before it is sent; when deliveries wait and the
//! relay has none, [`run`] takes a few from the shared bucket in one short `UPDATE` (at most
//! the burst, no more than are waited for), and when the bucket is empty it asks again when
//! the next token is due. So the limit holds whatever the number of relays, give or take one
//! burst, at the cost of about ten statements a second per limited endpoint while it is busy
//! and none while it is idle.
//!
//! A 429 from the endpoint blocks the bucket for its Retry-After (1 s without one): every
//! relay stops sending to it until then, and this relay drops the tokens it held.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::config::rate::RateLimit;
use crate::db::rates::Rates;
use crate::sinks::endpoint::Endpoint;

/// A 429 without a Retry-After blocks the endpoint this long.
pub const DEFAULT_BLOCK: Duration = Duration::from_secs(1);
/// Between two grants that found the bucket empty, at least and at most this long.
const MIN_WAIT: Duration = Duration::from_millis(1);
const MAX_WAIT: Duration = Duration::from_secs(1);

/// What waiting for a token came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token {
    Granted,
    /// None came within the endpoint's timeout: the delivery is put back, not attempted.
    TimedOut,
    Cancelled,
}

/// One endpoint's tokens on this relay.
#[derive(Debug)]
pub struct Limiter {
    limit: RateLimit,
    tokens: Semaphore,
    waiting: AtomicUsize,
    demand: Notify,
    /// A 429's block not yet written to the bucket.
    block: Mutex<Option<Duration>>,
}

impl Limiter {
    pub fn new(limit: RateLimit) -> Self {
        Self {
            limit,
            tokens: Semaphore::new(0),
            waiting: AtomicUsize::new(0),
            demand: Notify::new(),
            block: Mutex::default(),
        }
    }

    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// Waits up to `timeout` for a token.
    pub async fn acquire(&self, timeout: Duration, cancel: &CancellationToken) -> Token {
        if let Ok(t) = self.tokens.try_acquire() {
            t.forget();
            return Token::Granted;
        }
        self.waiting.fetch_add(1, Ordering::AcqRel);
        self.demand.notify_one();
        let got = tokio::select! {
            t = tokio::time::timeout(timeout, self.tokens.acquire()) => match t {
                Ok(Ok(t)) => {
                    t.forget();
                    Token::Granted
                }
                _ => Token::TimedOut,
            },
            _ = cancel.cancelled() => Token::Cancelled,
        };
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        got
    }

    /// The endpoint answered 429: stop for `d` on every relay, starting with this one.
    pub fn throttle(&self, d: Duration) {
        let mut block = self.block.lock().expect("not poisoned");
        *block = Some(block.map_or(d, |b| b.max(d)));
        drop(block);
        self.tokens.forget_permits(usize::MAX);
        self.demand.notify_one();
    }

    /// Tokens worth asking the bucket for now: those waited for beyond what is here, at most
    /// one burst.
    fn wanted(&self) -> u32 {
        let short = self
            .waiting
            .load(Ordering::Acquire)
            .saturating_sub(self.tokens.available_permits());
        (short as f64).min(self.limit.burst()).ceil() as u32
    }
}

/// Feeds `endpoint`'s limiter from the shared bucket until `stop` (see the module doc).
pub async fn run(pool: Pool, rates: Rates, endpoint: Arc<Endpoint>, stop: CancellationToken) {
    let Some(limiter) = endpoint.limiter() else {
        return;
    };
    let limit = limiter.limit();
    let pause = |d: Duration| {
        let stop = stop.clone();
        async move {
            tokio::select! {
                _ = tokio::time::sleep(d) => true,
                _ = stop.cancelled() => false,
            }
        }
    };
    while let Err(e) = rates.seed(&pool, &endpoint.name).await {
        tracing::warn!(endpoint = %endpoint.name, error = format!("{e:#}"), "rate limit: cannot create the shared bucket (run `outbox-relay migrate`); retrying");
        if !pause(Duration::from_secs(2)).await {
            return;
        }
    }
    let mut failing = false;
    loop {
        let block = limiter.block.lock().expect("not poisoned").take();
        if let Some(d) = block {
            match rates.block(&pool, &endpoint.name, d).await {
                Ok(()) => {
                    tracing::info!(endpoint = %endpoint.name, pause = %humantime::format_duration(d), "rate limit: the endpoint answered 429; every relay waits")
                }
                Err(e) => {
                    tracing::warn!(endpoint = %endpoint.name, error = format!("{e:#}"), "rate limit: cannot share a 429's Retry-After")
                }
            }
        }
        let want = limiter.wanted();
        if want == 0 {
            tokio::select! {
                _ = limiter.demand.notified() => continue,
                _ = stop.cancelled() => return,
            }
        }
        let wait = match rates
            .grant(&pool, &endpoint.name, limit.per_second, limit.burst(), want)
            .await
        {
            Ok(g) => {
                if std::mem::replace(&mut failing, false) {
                    tracing::info!(endpoint = %endpoint.name, "rate limit: tokens granted again");
                }
                limiter.tokens.add_permits(g.tokens as usize);
                (g.tokens < want).then(|| g.retry_in.clamp(MIN_WAIT, MAX_WAIT))
            }
            Err(e) => {
                // Said once per run of failures: deliveries to it wait meanwhile.
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(endpoint = %endpoint.name, error = format!("{e:#}"), "rate limit: cannot take tokens from the shared bucket; deliveries to it wait; retrying every second");
                }
                Some(MAX_WAIT)
            }
        };
        if let Some(d) = wait {
            if !pause(d).await {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_second: f64) -> Limiter {
        Limiter::new(RateLimit { per_second })
    }

    #[tokio::test]
    async fn a_token_is_waited_for_and_a_wait_past_the_timeout_puts_the_delivery_back() {
        let l = Arc::new(limiter(50.0));
        let cancel = CancellationToken::new();
        assert_eq!(
            l.acquire(Duration::from_millis(20), &cancel).await,
            Token::TimedOut
        );
        assert_eq!(l.wanted(), 0, "nobody waits now");
        let waiter = {
            let (l, cancel) = (l.clone(), cancel.clone());
            tokio::spawn(async move { l.acquire(Duration::from_secs(10), &cancel).await })
        };
        while l.wanted() == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(l.wanted(), 1);
        l.tokens.add_permits(1);
        assert_eq!(waiter.await.unwrap(), Token::Granted);
        assert_eq!(l.tokens.available_permits(), 0, "the token was used up");
    }

    #[tokio::test]
    async fn a_429_drops_the_tokens_held_and_keeps_the_longest_block() {
        let l = limiter(1000.0);
        l.tokens.add_permits(40);
        l.throttle(Duration::from_secs(2));
        l.throttle(Duration::from_secs(1));
        assert_eq!(l.tokens.available_permits(), 0);
        assert_eq!(*l.block.lock().unwrap(), Some(Duration::from_secs(2)));
    }

    #[tokio::test]
    async fn it_asks_for_at_most_a_burst() {
        let l = Arc::new(limiter(50.0));
        let cancel = CancellationToken::new();
        let waiters: Vec<_> = (0..20)
            .map(|_| {
                let (l, cancel) = (l.clone(), cancel.clone());
                tokio::spawn(async move { l.acquire(Duration::from_secs(10), &cancel).await })
            })
            .collect();
        while l.waiting.load(Ordering::Acquire) < 20 {
            tokio::task::yield_now().await;
        }
        assert_eq!(l.wanted(), 5, "a tenth of a second's worth at 50/s");
        cancel.cancel();
        for w in waiters {
            assert_eq!(w.await.unwrap(), Token::Cancelled);
        }
    }
}
