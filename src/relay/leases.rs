//! Leases: the rows this relay holds PROCESSING ([`InFlight`]) and the task that keeps their
//! leases alive while deliveries run ([`keep_leases`]). A lease that lapses (a dead relay)
//! lets another relay claim the row; the claim token fences the dead relay's late write.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::db::claims;
use crate::db::queries::Queries;
use crate::observe::incident::Incident;

/// Ids (and claim tokens) of the rows this relay holds PROCESSING.
#[derive(Default)]
pub struct InFlight(Mutex<HashMap<String, Uuid>>);

impl InFlight {
    pub fn insert(&self, id: String, token: Uuid) {
        self.0.lock().expect("in-flight lock").insert(id, token);
    }

    pub(super) fn remove<'a>(&self, ids: impl Iterator<Item = &'a String>) {
        let mut map = self.0.lock().expect("in-flight lock");
        for id in ids {
            map.remove(id);
        }
    }

    fn snapshot(&self) -> Vec<(String, Uuid)> {
        self.0
            .lock()
            .expect("in-flight lock")
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.0.lock().expect("in-flight lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Extends the lease of every in-flight row every `lease / 3`, so a live relay never loses a
/// slow delivery to another relay, while a dead one's rows come back within one lease.
pub async fn keep_leases(
    pool: Pool,
    queries: Arc<Queries>,
    inflight: Arc<InFlight>,
    lease: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(lease / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.reset();
    let mut extensions = Incident::new("extending leases");
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let held = inflight.snapshot();
        if held.is_empty() {
            continue;
        }
        match claims::extend_leases(&pool, &queries, &held, lease).await {
            Ok(extended) => {
                extensions.succeeded();
                tracing::debug!(extended, "leases extended")
            }
            Err(e) => crate::incident_failed!(
                extensions,
                error = format!("{e:#}"),
                "cannot extend leases"
            ),
        }
    }
}
