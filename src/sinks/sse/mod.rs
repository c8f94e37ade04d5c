//! Server-Sent Events: every committed event, per org, to subscribers that may resume.
//!
//! One tail reader per relay ([`tail`]) follows the table in stream order ([`read`]) and
//! publishes each page to the [`Hub`], which fans it out in memory to that org's
//! subscribers: no query per subscriber per event. A subscriber that resumes, or falls
//! behind, reads its own org's rows from the database until it is level with the tail
//! ([`cursor`] explains why nothing is missed or repeated).

pub mod cursor;
pub mod read;
pub mod tail;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{broadcast, watch};

pub use read::StreamEvent;

/// Pages an org's channel keeps for subscribers that have not caught up. A subscriber
/// further behind than this reads from the database instead (or is cut off if its client
/// does not read).
pub const ORG_CHANNEL_PAGES: usize = 256;

/// A page of one org's events.
pub type OrgPage = Arc<Vec<StreamEvent>>;

/// In-memory fan-out, one broadcast channel per org with subscribers.
#[derive(Default)]
pub struct Hub {
    orgs: Mutex<HashMap<Arc<str>, broadcast::Sender<OrgPage>>>,
    subscribers: AtomicUsize,
    /// True once the tail reader has fixed its starting position ([`Hub::tail_started`]).
    tail: watch::Sender<bool>,
}

impl Hub {
    /// Joins `org`'s channel. Hold the guard as long as the subscriber is connected.
    pub fn subscribe(self: &Arc<Self>, org: &str) -> (broadcast::Receiver<OrgPage>, Subscribed) {
        let mut orgs = self.orgs.lock().expect("hub lock");
        let rx = match orgs.get(org) {
            Some(tx) => tx.subscribe(),
            None => {
                let (tx, rx) = broadcast::channel(ORG_CHANNEL_PAGES);
                orgs.insert(org.into(), tx);
                rx
            }
        };
        self.subscribers.fetch_add(1, Ordering::Relaxed);
        (rx, Subscribed(self.clone()))
    }

    /// Called by the tail reader once its starting snapshot is taken: from then on it
    /// publishes every event committed after that snapshot.
    pub fn tail_started(&self) {
        self.tail.send_replace(true);
    }

    /// Returns once the tail reader has started. A subscriber's catch-up must end at a
    /// snapshot taken after that: the events committed between an earlier snapshot and the
    /// tail's start would be neither read by the subscriber nor published by the tail. (The
    /// HTTP side serves before the relay has found its table and started its sinks.)
    pub async fn tail_running(&self) {
        let mut started = self.tail.subscribe();
        // The hub holds the sender: the wait cannot end otherwise.
        let _ = started.wait_for(|s| *s).await;
    }

    /// Connected subscribers, for `/metrics`.
    pub fn subscribers(&self) -> usize {
        self.subscribers.load(Ordering::Relaxed)
    }

    /// Sends a page of the tail to the orgs that have subscribers, one message per org.
    pub fn publish(&self, events: &[StreamEvent]) {
        if events.is_empty() {
            return;
        }
        let mut by_org: HashMap<&Arc<str>, Vec<StreamEvent>> = HashMap::new();
        {
            let orgs = self.orgs.lock().expect("hub lock");
            for e in events {
                if orgs.contains_key(&e.org_id) {
                    by_org.entry(&e.org_id).or_default().push(e.clone());
                }
            }
        }
        let mut orgs = self.orgs.lock().expect("hub lock");
        for (org, page) in by_org {
            if let Some(tx) = orgs.get(org) {
                if tx.send(Arc::new(page)).is_err() {
                    orgs.remove(org); // its last subscriber left
                }
            }
        }
        orgs.retain(|_, tx| tx.receiver_count() > 0);
    }
}

/// Counts a subscriber while it lives.
pub struct Subscribed(Arc<Hub>);

impl Drop for Subscribed {
    fn drop(&mut self) {
        self.0.subscribers.fetch_sub(1, Ordering::Relaxed);
    }
}
