//! The dashboard's JSON API (shapes in docs/dashboard.md, "API").
//!
//! Reads that any number of open pages poll (`/api/overview`) are served from memory and
//! from results cached for [`CACHE_FOR`], so the queries the dashboard adds do not grow with
//! the pages open or with how often they poll. Searches and event pages query on demand, on
//! the dashboard's own pool. Actions are logged with the peer that asked and recorded in
//! the audit log with the admin token's name ([`crate::db::audit`]).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio_postgres::error::SqlState;

use super::{Access, ApiError, Peer};
use crate::db::admin::{self, BlockedKey, IdAction, On};
use crate::db::audit::{self, Action};
use crate::db::browse::{self, Search};
use crate::db::queries::Queries;
use crate::http::App;
use crate::observe::cached::Cached;
use crate::observe::cluster::{self, View};
use crate::when::When;

/// How long instances and blocked keys are reused between polls.
pub const CACHE_FOR: Duration = Duration::from_secs(5);
/// Most ids one action takes.
const MAX_IDS: usize = 1000;

/// The overview's cached database reads.
#[derive(Default)]
pub struct Cache {
    instances: Cached<Vec<browse::Instance>>,
    blocked: Cached<Vec<BlockedKey>>,
    cluster: Cached<Vec<cluster::Instance>>,
}

fn unavailable(what: &str) -> ApiError {
    ApiError(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("{what}: the relay has not reached the database yet"),
    )
}

fn pool(app: &App) -> Result<&deadpool_postgres::Pool, ApiError> {
    app.dashboard
        .pool
        .as_ref()
        .ok_or_else(|| unavailable("no database pool"))
}

fn queries(app: &App) -> Result<&Arc<Queries>, ApiError> {
    app.dashboard
        .shared
        .queries
        .get()
        .ok_or_else(|| unavailable("the outbox table is not known yet"))
}

/// A failure that is not the request's fault. The database's own words (which can name
/// tables, columns and values) go to the relay's log, not to the client.
fn internal(e: anyhow::Error) -> ApiError {
    if crate::db::is_data_exception(&e) {
        return ApiError(
            StatusCode::BAD_REQUEST,
            "a value in the request cannot be used (not valid text, time or number)".into(),
        );
    }
    tracing::warn!(error = format!("{e:#}"), "dashboard request failed");
    ApiError(
        StatusCode::SERVICE_UNAVAILABLE,
        "the database did not answer as expected; the relay's log has the details".into(),
    )
}

fn json_response<T: Serialize>(v: &T) -> Response {
    ([(axum::http::header::CACHE_CONTROL, "no-store")], Json(v)).into_response()
}

#[derive(Debug, Deserialize)]
pub struct Since {
    since: Option<u64>,
}

/// `GET /api/overview?since=`: everything the overview page shows.
pub async fn overview(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(q): Query<Since>,
) -> Result<Response, ApiError> {
    let d = &app.dashboard;
    d.allow(&headers, Access::Read)?;
    let up = app.health.database_up();
    let queue = if up {
        app.queue.refresh(&app.pool, &app.table).await
    } else {
        None
    };
    let instances = match &d.pool {
        Some(pool) if up => {
            d.cache
                .instances
                .get(CACHE_FOR, "instances", || browse::instances(pool))
                .await
        }
        _ => None,
    };
    let blocked = match (&d.pool, d.shared.queries.get()) {
        (Some(pool), Some(q)) if up && d.ordering => {
            d.cache
                .blocked
                .get(CACHE_FOR, "blocked keys", || {
                    admin::blocked_keys(On::Pool(pool), q)
                })
                .await
        }
        _ => None,
    };
    let reports = match &d.pool {
        Some(pool) if up => {
            d.cache
                .cluster
                .get(CACHE_FOR, "cluster reports", || {
                    cluster::read(pool, &d.cluster)
                })
                .await
        }
        _ => None,
    };
    let view = View::merge(
        cluster::Local {
            name: crate::db::instance(),
            version: env!("CARGO_PKG_VERSION"),
            started_at: &d.started_at,
            timeline: &d.shared.timeline,
            health: cluster::Health::of(&d.shared.dispatcher),
        },
        reports.as_deref().unwrap_or_default(),
        q.since,
    );
    let endpoints: Vec<Value> = d
        .shared
        .dispatcher
        .endpoints()
        .iter()
        .map(|e| {
            let summed = view.endpoints.get(&e.name).cloned().unwrap_or_default();
            let h = summed.window.health();
            json!({
                "name": e.name,
                "url": e.target(),
                "kind": e.kind(),
                "paused": e.is_paused(),
                // Why, as the relay last read the paused set (null: an operator's pause
                // not yet read back, or not paused).
                "pause": e.pause_row(),
                "window_seconds": h.window_seconds,
                "attempts": h.attempts,
                "succeeded": h.succeeded,
                "success_rate": h.success_rate,
                "p99_ms": h.p99_ms,
                "in_flight": summed.in_flight,
                "last_error": summed.last_error,
            })
        })
        .collect();
    // The per-instance breakdown, with each one's database connections (pg_stat_activity).
    let connections = instances.unwrap_or_default();
    let breakdown: Vec<Value> = view
        .instances
        .iter()
        .map(|i| {
            let conn = connections.iter().find(|c| c.name == i.name);
            let mut v = json!(i);
            v["connections"] = json!(conn.map_or(0, |c| c.connections));
            v
        })
        .collect();
    let body = json!({
        "relay": {
            "instance": crate::db::instance(),
            "version": env!("CARGO_PKG_VERSION"),
            "started_at": d.started_at,
            "table": app.table,
            "ordering": d.ordering,
            "now": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "database_up": up,
            "admin_token": d.has_admin_token(),
        },
        "admin": d.may_act(&headers),
        "queue": queue.map_or(json!({
            "pending": null, "processing": null, "failed": null,
            "oldest_pending_age_seconds": null,
        }), |q| json!(q)),
        // Every relay's, summed: this one live, the others as of their last report.
        "timeline": view.timeline,
        // False when the relays' reports could not be read (a table from before migration
        // 011, or the database is down): the figures are this instance's only.
        "cluster": reports.is_some(),
        "endpoints": endpoints,
        "sse": { "enabled": app.sse.is_some(), "subscribers": app.hub.subscribers() },
        "instances": breakdown,
        "blocked_keys": blocked.unwrap_or_default(),
    });
    Ok(json_response(&body))
}

/// `GET /api/events?...`: a page of events, newest first.
pub async fn events(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(search): Query<Search>,
) -> Result<Response, ApiError> {
    app.dashboard.allow(&headers, Access::Read)?;
    let (pool, q) = (pool(&app)?, queries(&app)?);
    let sql = search
        .to_sql(&q.table, &q.shape)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.0))?;
    let mut rows = browse::search(pool, &sql).await.map_err(|e| {
        if crate::db::has_sql_state(&e, &[SqlState::QUERY_CANCELED]) {
            ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "the search took too long: narrow it by status, type or time".into(),
            )
        } else {
            internal(e)
        }
    })?;
    let more = rows.len() as i64 > sql.limit;
    rows.truncate(sql.limit as usize);
    let next = match (more, rows.last()) {
        (true, Some(last)) => Some(browse::encode_cursor(&last.created_at, &last.id)),
        _ => None,
    };
    let events: Vec<Box<RawValue>> = rows
        .into_iter()
        .map(|r| RawValue::from_string(r.json))
        .collect::<Result<_, _>>()
        .map_err(|e| internal(e.into()))?;
    Ok(json_response(&json!({ "events": events, "next": next })))
}

/// One event with its payload, envelope, history and endpoints.
#[derive(Serialize)]
struct Detail {
    #[serde(flatten)]
    fields: serde_json::Map<String, Value>,
    payload: Box<RawValue>,
    envelope: Option<Box<RawValue>>,
    endpoints: Vec<Value>,
}

/// `GET /api/events/{id}`.
pub async fn event(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    app.dashboard.allow(&headers, Access::Read)?;
    let (pool, q) = (pool(&app)?, queries(&app)?);
    let not_found = || ApiError(StatusCode::NOT_FOUND, format!("no event with id {id:?}"));
    let browse::EventPage {
        event: ev,
        delivered_to,
        fields,
    } = match browse::event(pool, &q.table, &q.shape, &id).await {
        Ok(Some(page)) => page,
        Ok(None) => return Err(not_found()),
        Err(e) if browse::is_bad_id(&e) => return Err(not_found()),
        Err(e) => return Err(internal(e)),
    };
    let fields: serde_json::Map<String, Value> =
        serde_json::from_str(&fields).map_err(|e| internal(e.into()))?;
    let raw = |s: String| RawValue::from_string(s).ok();
    let payload = match &ev.payload {
        Some(p) => raw(p.clone()).or_else(|| raw(json!(p).to_string())),
        None => None,
    }
    .unwrap_or_else(|| raw("null".into()).expect("null is JSON"));
    let envelope = ev.validate().ok().and_then(|(t, data)| {
        raw(String::from_utf8(ev.envelope(t, &data, None)).expect("JSON is UTF-8"))
    });
    let endpoints = app
        .dashboard
        .shared
        .dispatcher
        .endpoints()
        .iter()
        .map(|e| {
            json!({
                "name": e.name,
                "wants": ev.event_type.as_deref().is_some_and(|t| e.wants(t)),
                "accepted": delivered_to.contains(&e.name),
                "paused": e.is_paused(),
            })
        })
        .collect();
    let detail = Detail {
        fields,
        payload,
        envelope,
        endpoints,
    };
    Ok(json_response(&json!({ "event": detail })))
}

#[derive(Debug, Deserialize)]
struct Ids {
    ids: Vec<String>,
}

/// Parses an action's body after the caller was allowed to act.
fn ids(body: &Bytes) -> Result<Vec<String>, ApiError> {
    let Ids { ids } = serde_json::from_slice(body).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("expected {{\"ids\": [\"...\"]}}: {e}"),
        )
    })?;
    if ids.is_empty() || ids.len() > MAX_IDS {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("give between 1 and {MAX_IDS} ids"),
        ));
    }
    Ok(ids)
}

fn peer(p: &Option<Extension<Peer>>) -> String {
    p.as_ref()
        .map_or_else(|| "unknown".into(), |Extension(Peer(a))| a.to_string())
}

/// Records a dashboard action by `who` (see [`audit`]); returns whether it was recorded.
/// The action stands either way: a failure is logged, and the answer's `audited` says so.
async fn record(
    app: &App,
    who: &str,
    from: &Option<Extension<Peer>>,
    action: Action,
    target: &str,
    mut detail: Value,
) -> bool {
    let Ok(pool) = pool(app) else { return false };
    if let Some(map) = detail.as_object_mut() {
        map.insert("peer".into(), peer(from).into());
    }
    let entry = audit::Entry {
        actor: who,
        via: audit::Via::Dashboard,
        action,
        target,
        detail,
    };
    let q = match queries(app) {
        Ok(q) => q,
        Err(_) => return false,
    };
    match audit::record(On::Pool(pool), q, &entry).await {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(
                action = action.as_str(),
                actor = who,
                error = audit::explain(&e),
                "dashboard action done but not recorded in the audit log"
            );
            false
        }
    }
}

/// Runs an id action, wakes the relays, logs it and answers `{done, not_done}`.
async fn id_action(
    app: &App,
    headers: &HeaderMap,
    who: &Option<Extension<Peer>>,
    body: &Bytes,
    action: IdAction,
) -> Result<Response, ApiError> {
    let actor = app.dashboard.allow(headers, Access::Act)?;
    let ids = ids(body)?;
    let (pool, q) = (pool(app)?, queries(app)?);
    let done = match admin::by_ids(On::Pool(pool), q, action, &ids).await {
        Ok(done) => done,
        Err(e) if browse::is_bad_id(&e) => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!("an id is not of the table's id type ({})", q.shape.id_type),
            ))
        }
        Err(e) => return Err(internal(e)),
    };
    let not_done: Vec<&String> = ids.iter().filter(|i| !done.contains(i)).collect();
    let mut audited = true;
    if !done.is_empty() {
        wake(app, pool).await;
        let (target, detail) = audit::by_ids(&done);
        audited = record(app, actor, who, action.into(), &target, detail).await;
    }
    tracing::info!(
        action = action.name(),
        actor,
        peer = %peer(who),
        done = done.len(),
        not_done = not_done.len(),
        ids = ?done,
        "dashboard action"
    );
    Ok(json_response(
        &json!({ "done": done, "not_done": not_done, "audited": audited }),
    ))
}

/// Rows became due without an INSERT: wake every relay on the table, this one directly (it
/// may run poll-only).
async fn wake(app: &App, pool: &deadpool_postgres::Pool) {
    if let Err(e) = admin::wake_relays(On::Pool(pool), &app.dashboard.channel).await {
        tracing::debug!(error = format!("{e:#}"), "cannot notify the other relays");
    }
    app.dashboard.shared.wake.notify_one();
}

/// `POST /api/events/retry {"ids": [...]}`: FAILED events back to PENDING.
pub async fn retry(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    who: Option<Extension<Peer>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    id_action(&app, &headers, &who, &body, IdAction::Retry).await
}

/// `POST /api/events/skip {"ids": [...]}`: FAILED events given up, unblocking their keys.
pub async fn skip(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    who: Option<Extension<Peer>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    id_action(&app, &headers, &who, &body, IdAction::Skip).await
}

async fn set_paused(
    app: &App,
    headers: &HeaderMap,
    who: &Option<Extension<Peer>>,
    name: &str,
    paused: bool,
) -> Result<Response, ApiError> {
    let actor = app.dashboard.allow(headers, Access::Act)?;
    let d = &app.dashboard;
    if d.shared.dispatcher.endpoint(name).is_none() {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no webhook named {name:?}"),
        ));
    }
    let (pool, q) = (pool(app)?, queries(app)?);
    let by = format!("{actor} from {}", peer(who));
    let changed =
        crate::sinks::pause::set(pool, q, &d.channel, &d.shared.dispatcher, name, paused, &by)
            .await
            .map_err(internal)?;
    if !paused {
        d.shared.wake.notify_one();
    }
    let action = if paused {
        Action::Pause
    } else {
        Action::Resume
    };
    let detail = json!({ "changed": changed });
    let audited = record(app, actor, who, action, name, detail).await;
    tracing::info!(
        action = action.as_str(),
        endpoint = name,
        actor,
        peer = %peer(who),
        changed,
        "dashboard action"
    );
    Ok(json_response(
        &json!({ "name": name, "paused": paused, "audited": audited }),
    ))
}

/// `POST /api/endpoints/{name}/pause`.
pub async fn pause(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    who: Option<Extension<Peer>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    set_paused(&app, &headers, &who, &name, true).await
}

/// `POST /api/endpoints/{name}/resume`.
pub async fn resume(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    who: Option<Extension<Peer>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    set_paused(&app, &headers, &who, &name, false).await
}

/// The body of `POST /api/endpoints/{name}/replay`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayBody {
    /// A duration ago (`2h`) or an RFC 3339 time.
    since: String,
    /// Likewise; default now.
    until: Option<String>,
    /// Glob on event_type; default every type.
    #[serde(rename = "type")]
    event_type: Option<String>,
    /// Only count (the default): `false` replays.
    #[serde(default = "yes")]
    dry_run: bool,
}

fn yes() -> bool {
    true
}

/// `POST /api/endpoints/{name}/replay {"since": "2h", "until"?, "type"?, "dry_run"?}`: the
/// events the endpoint accepted in the window, counted (`dry_run`, the default) or sent to
/// it again, and to no other endpoint (see `outbox-relay replay`).
pub async fn replay(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    who: Option<Extension<Peer>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let actor = app.dashboard.allow(&headers, Access::Act)?;
    let bad = |m: String| ApiError(StatusCode::BAD_REQUEST, m);
    let b: ReplayBody = serde_json::from_slice(&body).map_err(|e| {
        bad(format!(
            "expected {{\"since\": \"2h\", \"until\"?, \"type\"?, \"dry_run\"?}}: {e}"
        ))
    })?;
    let d = &app.dashboard;
    let sinks: Vec<&str> = d
        .shared
        .dispatcher
        .endpoints()
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    if !sinks.contains(&name.as_str()) {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no endpoint named {name:?}"),
        ));
    }
    let now = std::time::SystemTime::now();
    let since = When::parse(&b.since).map_err(|m| bad(format!("since: {m}")))?;
    let until = match &b.until {
        Some(u) => When::parse(u)
            .map_err(|m| bad(format!("until: {m}")))?
            .ago(now),
        None => Duration::ZERO,
    };
    let glob = b.event_type.as_deref().unwrap_or("*");
    let r = admin::Replay::new(&sinks, &name, since.ago(now), until, glob).map_err(bad)?;
    let (pool, q) = (pool(app.as_ref())?, queries(app.as_ref())?);
    let mut audited = false;
    let count = if b.dry_run {
        admin::replay_count(On::Pool(pool), q, &r)
            .await
            .map_err(internal)?
    } else {
        let client = pool.get().await.map_err(|e| internal(e.into()))?;
        let n = admin::replay(&client, q, &d.channel, &r, |_| {})
            .await
            .map_err(internal)?;
        drop(client);
        d.shared.wake.notify_one();
        audited = record(
            &app,
            actor,
            &who,
            Action::Replay,
            &name,
            audit::replay(&r, n),
        )
        .await;
        n
    };
    tracing::info!(
        action = if b.dry_run { "replay count" } else { "replay" },
        endpoint = %name,
        since = %humantime::format_duration(r.since),
        until = %humantime::format_duration(r.until),
        types = %r.glob,
        actor,
        peer = %peer(&who),
        count,
        "dashboard action"
    );
    Ok(json_response(&json!({
        "endpoint": name,
        "count": count,
        "replayed": !b.dry_run,
        "audited": audited,
    })))
}

/// The query of `GET /api/audit`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Entries older than this id (the previous page's `next`).
    before: Option<i64>,
    limit: Option<i64>,
}

/// Most audit entries one page lists.
const MAX_AUDIT_PAGE: i64 = 200;

/// `GET /api/audit?before=ID&limit=N`: the newest operator actions first, `next` for the
/// page after (null at the end).
pub async fn audit_log(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(p): Query<AuditQuery>,
) -> Result<Response, ApiError> {
    app.dashboard.allow(&headers, Access::Read)?;
    let limit = p.limit.unwrap_or(50);
    if !(1..=MAX_AUDIT_PAGE).contains(&limit) {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("limit is 1 to {MAX_AUDIT_PAGE}"),
        ));
    }
    let (pool, q) = (pool(&app)?, queries(&app)?);
    let entries = match audit::list(On::Pool(pool), q, p.before, limit).await {
        Ok(entries) => entries,
        Err(e) => {
            return Err(ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                audit::explain(&e),
            ))
        }
    };
    let next = (entries.len() as i64 == limit).then(|| entries.last().map(|e| e.id));
    Ok(json_response(
        &json!({ "entries": entries, "next": next.flatten() }),
    ))
}
