//! What the relay tells its operator about itself: Prometheus [`metrics`], the dashboard's
//! in-memory [`activity`] (throughput, endpoint health), [`cached`] values for cheap
//! repeated reads, the [`cluster`]-wide view every relay reports to, and two guards against log floods ([`incident`]: one warning per outage,
//! [`warn_budget`]: at most N warnings a second).

pub mod activity;
pub mod cached;
pub mod cluster;
pub mod incident;
pub mod metrics;
pub mod warn_budget;
