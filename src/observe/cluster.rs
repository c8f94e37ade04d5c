//! The cluster-wide view: every relay on the table reports what it did lately
//! ([`Reporter`], a background service: one statement per report), and the dashboard of any
//! relay sums those reports with its own live figures ([`View::merge`]).
//!
//! A report is the relay's per-second counts since its previous report (delivered events,
//! failed attempts), and its endpoints' last 5 minutes (attempts, successes, a latency
//! histogram, requests in flight, last error). Histograms add up, so the cluster's p99 is
//! exact to the histogram's 25 % steps, not an average of p99s. A relay reports at most
//! every [`MAX_EVERY`] while busy (every `poll_interval` when idle, since background work
//! runs after claim rounds), at least [`MIN_EVERY`] apart; an instance silent for twice its
//! interval (plus [`GONE_SLACK`]) shows as gone, one that shut down cleanly as stopped.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::Pool;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::activity::{
    unix_now, LastError, Series, Timeline, Window, HEALTH_WINDOW, TIMELINE_SECONDS,
};
use crate::db::cluster::{self, ClusterSql};
use crate::sinks::Dispatcher;

/// Reports come at most this often...
pub const MIN_EVERY: Duration = Duration::from_secs(2);
/// ...and, while the relay is busy, at least this often (`poll_interval` between them when
/// shorter, within [`MIN_EVERY`]).
pub const MAX_EVERY: Duration = Duration::from_secs(10);
/// Silence allowed past twice an instance's interval before it shows as gone.
pub const GONE_SLACK: Duration = Duration::from_secs(10);

/// What a relay reports about its endpoints (the `health` column).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Health {
    pub endpoints: BTreeMap<String, EndpointReport>,
}

/// One endpoint as one relay saw it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct EndpointReport {
    #[serde(flatten)]
    pub window: Window,
    pub in_flight: u64,
    pub last_error: Option<LastError>,
}

impl Health {
    /// This relay's endpoints, now.
    pub fn of(dispatcher: &Dispatcher) -> Self {
        let endpoints = dispatcher
            .endpoints()
            .iter()
            .map(|e| {
                let report = EndpointReport {
                    window: e.stats.window(),
                    in_flight: e.in_flight() as u64,
                    last_error: e.stats.last_error(),
                };
                (e.name.clone(), report)
            })
            .collect();
        Self { endpoints }
    }
}

/// The background service that reports this relay (see the module's doc).
#[derive(Clone)]
pub struct Reporter {
    pub pool: Pool,
    pub sql: ClusterSql,
    pub dispatcher: Arc<Dispatcher>,
    pub timeline: Arc<Timeline>,
    pub instance: String,
    /// RFC 3339.
    pub started_at: String,
    pub poll_interval: Duration,
    /// The last second reported.
    reported: Arc<Mutex<u64>>,
    /// A failure was logged since the last report that went through (one warning a streak).
    warned: Arc<std::sync::atomic::AtomicBool>,
}

impl Reporter {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        pool: Pool,
        sql: ClusterSql,
        dispatcher: Arc<Dispatcher>,
        timeline: Arc<Timeline>,
        instance: String,
        started_at: String,
        poll_interval: Duration,
    ) -> Self {
        Self {
            pool,
            sql,
            dispatcher,
            timeline,
            instance,
            started_at,
            poll_interval,
            // Nothing was delivered before the relay started.
            reported: Arc::new(Mutex::new(unix_now().saturating_sub(1))),
            warned: Arc::default(),
        }
    }

    /// How often it reports while busy.
    fn every(&self) -> Duration {
        self.poll_interval.clamp(MIN_EVERY, MAX_EVERY)
    }

    /// One report; `stopping` marks the instance stopped (the relay's last report, after
    /// its deliveries drained). The seconds it sends are those that ended since the last
    /// report; if the statement fails they are sent again with the next.
    pub async fn report(&self, stopping: bool) -> anyhow::Result<()> {
        let from = *self.reported.lock().expect("reporter lock") + 1;
        let series = self.timeline.series(Some(from));
        // The current second is still counting: it goes with the next report (the last
        // report sends it, as nothing more will be delivered).
        let upto = if stopping { series.end } else { series.end - 1 };
        let (first, delivered, failed) = complete_seconds(&series, upto);
        let health = serde_json::to_string(&Health::of(&self.dispatcher))?;
        // Idle relays report only at their polls.
        let every_s = self.every().max(self.poll_interval).as_secs().max(1);
        self.sql
            .report(
                &self.pool,
                &cluster::Report {
                    instance: &self.instance,
                    version: env!("CARGO_PKG_VERSION"),
                    started_at: &self.started_at,
                    every_s: i32::try_from(every_s).unwrap_or(i32::MAX),
                    health,
                    stopping,
                    first_second: first as i64,
                    delivered,
                    failed,
                },
            )
            .await?;
        let mut reported = self.reported.lock().expect("reporter lock");
        *reported = (*reported).max(upto);
        Ok(())
    }
}

/// The seconds of `series` up to `upto`, without the zeros at either end: the first
/// second's time and the two columns (empty when nothing happened).
fn complete_seconds(series: &Series, upto: u64) -> (u64, Vec<i32>, Vec<i32>) {
    let n = series.delivered.len() as u64;
    let first = series.end + 1 - n;
    let keep = (upto + 1).saturating_sub(first).min(n) as usize;
    let busy = |i: &usize| series.delivered[*i] > 0 || series.failed[*i] > 0;
    let (Some(lo), Some(hi)) = ((0..keep).find(busy), (0..keep).rev().find(busy)) else {
        return (first, Vec::new(), Vec::new());
    };
    let column = |c: &[u32]| c[lo..=hi].iter().map(|v| *v as i32).collect();
    (
        first + lo as u64,
        column(&series.delivered),
        column(&series.failed),
    )
}

impl crate::background::Service for Reporter {
    type Report = ();
    const NAME: &'static str = "cluster report";

    fn period(&self) -> Duration {
        self.every()
    }

    async fn run_once(&mut self, _stop: &CancellationToken) -> anyhow::Result<()> {
        self.report(false).await?;
        self.warned
            .store(false, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// A missing table or privilege is a warning, once per streak: every dashboard then
    /// misses this relay, which delivers as before. Other failures (the database is down)
    /// are the claim loop's to report.
    fn failed(&self, e: &anyhow::Error) {
        use tokio_postgres::error::SqlState;
        let missing = [SqlState::UNDEFINED_TABLE, SqlState::INSUFFICIENT_PRIVILEGE];
        if !crate::db::has_sql_state(e, &missing)
            || self.warned.swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::debug!(error = format!("{e:#}"), "cluster report failed again");
            return;
        }
        tracing::warn!(
            error = format!("{e:#}"),
            "cluster report failed: the dashboards do not see this relay until it goes through \
             (run `outbox-relay migrate` for the tables of migration 011, and give a runtime \
             role the GRANTs `migrate --print-grants` prints); delivery is not affected"
        );
    }
}

/// One instance, as read back from the table, its JSON parsed.
#[derive(Debug, Clone)]
pub struct Instance {
    pub row: cluster::Row,
    pub health: Health,
    /// `(first second, delivered, failed)`, oldest first.
    pub seconds: Vec<(u64, Vec<u32>, Vec<u32>)>,
}

impl Instance {
    fn parse(row: cluster::Row) -> anyhow::Result<Self> {
        Ok(Self {
            health: serde_json::from_str(&row.health).unwrap_or_default(),
            seconds: serde_json::from_str(&row.seconds)?,
            row,
        })
    }

    /// `live`, `stopped` (shut down cleanly) or `gone` (silent past its interval).
    pub fn state(&self) -> &'static str {
        let row = &self.row;
        if row.stopped_at.is_some() {
            "stopped"
        } else if row.silent_s > 2.0 * f64::from(row.every_s) + GONE_SLACK.as_secs_f64() {
            "gone"
        } else {
            "live"
        }
    }

    /// Its delivered events and failed attempts in the seconds from `from` on.
    fn totals_since(&self, from: u64) -> (u64, u64) {
        let (mut d, mut f) = (0, 0);
        for (first, delivered, failed) in &self.seconds {
            for (k, (dv, fv)) in delivered.iter().zip(failed).enumerate() {
                if first + k as u64 >= from {
                    d += u64::from(*dv);
                    f += u64::from(*fv);
                }
            }
        }
        (d, f)
    }
}

/// Every instance's report: one statement, whatever the number of relays.
pub async fn read(pool: &Pool, sql: &ClusterSql) -> anyhow::Result<Vec<Instance>> {
    let since = unix_now().saturating_sub(TIMELINE_SECONDS as u64) as i64;
    sql.read(pool, since)
        .await?
        .into_iter()
        .map(Instance::parse)
        .collect()
}

/// The cluster as the dashboard shows it.
#[derive(Debug, Serialize)]
pub struct View {
    /// Every relay's delivered events and failed attempts per second.
    pub timeline: Series,
    /// Per endpoint name: its window and latest error summed over the relays that reported
    /// within the window, and the live ones' requests in flight.
    #[serde(skip)]
    pub endpoints: BTreeMap<String, EndpointReport>,
    pub instances: Vec<InstanceView>,
}

/// One relay in the per-instance breakdown.
#[derive(Debug, Serialize, PartialEq)]
pub struct InstanceView {
    pub name: String,
    pub version: String,
    pub started_at: String,
    /// Its last report (this instance: now).
    pub seen_at: Option<String>,
    /// `live`, `stopped` or `gone`.
    pub state: &'static str,
    /// The instance serving this page.
    pub this: bool,
    pub delivered_5m: u64,
    pub failed_5m: u64,
    pub in_flight: u64,
}

/// This relay's own figures, live (its row in the table lags by up to a report).
pub struct Local<'a> {
    pub name: &'a str,
    pub version: &'a str,
    pub started_at: &'a str,
    pub timeline: &'a Timeline,
    pub health: Health,
}

impl View {
    /// `local`'s live figures plus every other instance's report; the timeline from `since`
    /// (see [`Timeline::series`]), reaching back over the seconds other relays may not have
    /// reported yet, so a page that asks from its last `end` still gets them.
    pub fn merge(local: Local<'_>, others: &[Instance], since: Option<u64>) -> Self {
        let now = unix_now();
        let lag = others
            .iter()
            .filter(|i| i.row.instance != local.name && i.state() == "live")
            .map(|i| 2 * u64::try_from(i.row.every_s).unwrap_or(0) + GONE_SLACK.as_secs())
            .max()
            .unwrap_or(0);
        let since = since.map(|s| s.min(now.saturating_sub(lag)));
        let mut timeline = local.timeline.series(since);
        let first = timeline.end + 1 - timeline.delivered.len() as u64;
        let mut endpoints = local.health.endpoints.clone();
        let five_min = now.saturating_sub(300);
        let local_5m = local.timeline.series(Some(five_min));
        let mut instances = vec![InstanceView {
            name: local.name.to_owned(),
            version: local.version.to_owned(),
            started_at: local.started_at.to_owned(),
            seen_at: None,
            state: "live",
            this: true,
            delivered_5m: local_5m.delivered.iter().map(|v| u64::from(*v)).sum(),
            failed_5m: local_5m.failed.iter().map(|v| u64::from(*v)).sum(),
            in_flight: local.health.endpoints.values().map(|e| e.in_flight).sum(),
        }];
        for other in others.iter().filter(|i| i.row.instance != local.name) {
            for (start, delivered, failed) in &other.seconds {
                for (k, (d, f)) in delivered.iter().zip(failed).enumerate() {
                    let second = start + k as u64;
                    if second < first || second > timeline.end {
                        continue;
                    }
                    let i = (second - first) as usize;
                    timeline.delivered[i] = timeline.delivered[i].saturating_add(*d);
                    timeline.failed[i] = timeline.failed[i].saturating_add(*f);
                }
            }
            // A relay that stopped or went silent within the health window still made its
            // attempts in it; only a live one has requests in flight.
            let live = other.state() == "live";
            if other.row.silent_s < HEALTH_WINDOW.as_secs_f64() {
                for (name, report) in &other.health.endpoints {
                    let sum = endpoints.entry(name.clone()).or_default();
                    sum.window.add(&report.window);
                    if live {
                        sum.in_flight += report.in_flight;
                    }
                    if report.last_error.as_ref().map(|e| &e.at)
                        > sum.last_error.as_ref().map(|e| &e.at)
                    {
                        sum.last_error = report.last_error.clone();
                    }
                }
            }
            let (delivered_5m, failed_5m) = other.totals_since(five_min);
            instances.push(InstanceView {
                name: other.row.instance.clone(),
                version: other.row.version.clone(),
                started_at: other.row.started_at.clone(),
                seen_at: Some(other.row.seen_at.clone()),
                state: other.state(),
                this: false,
                delivered_5m,
                failed_5m,
                in_flight: if live {
                    other.health.endpoints.values().map(|e| e.in_flight).sum()
                } else {
                    0
                },
            });
        }
        Self {
            timeline,
            endpoints,
            instances,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(end: u64, delivered: &[u32], failed: &[u32]) -> Series {
        Series {
            end,
            delivered: delivered.to_vec(),
            failed: failed.to_vec(),
        }
    }

    #[test]
    fn reports_carry_the_busy_complete_seconds_only() {
        // Seconds 100..=105; 105 is still counting.
        let s = series(105, &[0, 2, 0, 1, 0, 9], &[0, 0, 0, 1, 0, 0]);
        assert_eq!(
            complete_seconds(&s, 104),
            (101, vec![2, 0, 1], vec![0, 0, 1])
        );
        assert_eq!(
            complete_seconds(&s, 105),
            (101, vec![2, 0, 1, 0, 9], vec![0, 0, 1, 0, 0])
        );
        let idle = series(105, &[0; 6], &[0; 6]);
        assert_eq!(complete_seconds(&idle, 104), (100, vec![], vec![]));
    }

    fn other(name: &str, silent_s: f64, stopped: bool, health: Health) -> Instance {
        let now = unix_now();
        Instance {
            row: cluster::Row {
                instance: name.into(),
                version: "0".into(),
                started_at: "2026-12-06T00:00:00Z".into(),
                seen_at: "2026-12-06T00:00:00Z".into(),
                stopped_at: stopped.then(|| "2026-12-06T00:00:00Z".into()),
                every_s: 10,
                silent_s,
                health: String::new(),
                seconds: String::new(),
            },
            health,
            seconds: vec![(now - 20, vec![3, 0, 4], vec![1, 0, 0])],
        }
    }

    fn endpoint(attempts: u64, ms_bucket: usize, in_flight: u64, error_at: &str) -> Health {
        let mut window = Window {
            attempts,
            succeeded: attempts - 1,
            ..Window::default()
        };
        window.latency[ms_bucket] = attempts;
        let last_error = Some(LastError {
            at: error_at.into(),
            message: format!("error at {error_at}"),
        });
        let report = EndpointReport {
            window,
            in_flight,
            last_error,
        };
        Health {
            endpoints: BTreeMap::from([("hook".to_owned(), report)]),
        }
    }

    #[test]
    fn the_view_sums_live_instances_and_keeps_the_history_of_all() {
        let timeline = Timeline::default();
        timeline.delivered(5);
        let local = || Local {
            name: "a/1",
            version: "0",
            started_at: "2026-12-06T00:00:00Z",
            timeline: &timeline,
            health: endpoint(10, 20, 1, "2026-12-06T00:00:01Z"),
        };
        let others = [
            other(
                "b/2",
                1.0,
                false,
                endpoint(90, 40, 2, "2026-12-06T00:00:09Z"),
            ),
            other(
                "c/3",
                31.0,
                false,
                endpoint(100, 60, 7, "2026-12-06T00:00:08Z"),
            ),
            other(
                "d/4",
                1.0,
                true,
                endpoint(100, 60, 7, "2026-12-06T00:00:10Z"),
            ),
            // Silent for longer than the health window: its attempts are out of it.
            other(
                "e/5",
                400.0,
                false,
                endpoint(1000, 60, 7, "2026-12-06T00:00:11Z"),
            ),
            // Its own row, behind its live figures: not counted twice.
            other(
                "a/1",
                1.0,
                false,
                endpoint(1000, 60, 7, "2026-12-06T00:00:10Z"),
            ),
        ];
        let v = View::merge(local(), &others, None);
        // 5 here, 7 from each of b, c, d and e (history counts whatever the state).
        assert_eq!(v.timeline.delivered.iter().sum::<u32>(), 5 + 4 * 7);
        assert_eq!(v.timeline.failed.iter().sum::<u32>(), 4);
        let states: Vec<_> = v.instances.iter().map(|i| (&*i.name, i.state)).collect();
        assert_eq!(
            states,
            [
                ("a/1", "live"),
                ("b/2", "live"),
                ("c/3", "gone"),
                ("d/4", "stopped"),
                ("e/5", "gone")
            ]
        );
        // Attempts: a, b, c and d, which reported within the window; in flight: the live
        // ones, a and b.
        let hook = &v.endpoints["hook"];
        assert_eq!((hook.window.attempts, hook.in_flight), (300, 3));
        let h = hook.window.health();
        assert_eq!(h.success_rate, Some(296.0 / 300.0));
        // 200 of 300 attempts in the slowest bucket (c's and d's): the p99 is theirs.
        assert!((h.p99_ms.unwrap() - 0.1 * 1.25f64.powi(60)).abs() < 1e-6);
        assert_eq!(hook.last_error.as_ref().unwrap().at, "2026-12-06T00:00:10Z");
        assert_eq!(
            (v.instances[1].delivered_5m, v.instances[1].in_flight),
            (7, 2)
        );
        assert_eq!(v.instances[2].in_flight, 0, "a gone instance has none");

        // Asked from a recent second, the series still reaches back over what a live
        // instance may not have reported yet (2 x 10 s + slack).
        let v = View::merge(local(), &others, Some(unix_now()));
        assert!(
            v.timeline.delivered.len() >= 30,
            "{}",
            v.timeline.delivered.len()
        );
    }

    #[test]
    fn health_survives_the_column_round_trip() {
        let h = endpoint(10, 3, 1, "t");
        let text = serde_json::to_string(&h).unwrap();
        assert!(text.contains("\"latency\":[[3,10]]"), "{text}");
        assert_eq!(serde_json::from_str::<Health>(&text).unwrap(), h);
        let bad = text.replace("[[3,10]]", "[[64,1]]");
        assert!(serde_json::from_str::<Health>(&bad).is_err());
    }
}
