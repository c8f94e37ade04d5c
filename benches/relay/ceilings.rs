//! What the machine allows, measured in the same run, so the relay's figures read as a
//! fraction of it: the database side alone (the relay's own claim and record statements,
//! no HTTP) and the receiver alone (signed requests from a fast keep-alive client).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use deadpool_postgres::Pool;
use http_body_util::{BodyExt, Full};
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::Request;
use hyper_util::rt::TokioIo;
use outbox_relay::db::claims::{self, NextAttempt, RowOutcome};
use outbox_relay::db::queries::Queries;
use outbox_relay::event::Event;
use outbox_relay::relay::cursor::ClaimCursor;
use outbox_relay::secret::Secret;
use outbox_relay::sinks::webhook::signature::SigningKeys;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::common::stats::round2;
use crate::load::{burst, ORG};
use crate::receiver::Behaviour;
use crate::setup::{cpu_figures, status_counts, Ctx};

/// The relay's defaults (src/config.rs) for the claim's lease and attempt parameters.
const LEASE: Duration = Duration::from_secs(30);
const MAX_ATTEMPTS: u32 = 12;

/// What one database worker did.
#[derive(Default)]
struct Worker {
    rows: u64,
    claims: u64,
    claim: Duration,
    records: u64,
    record: Duration,
}

/// `events` pending rows claimed and recorded COMPLETED as fast as the statements go, from
/// `p.ceiling_connections` connections, `p.ceiling_batch` rows a claim.
pub async fn db_ceiling(ctx: &Ctx<'_>, events: usize) -> anyhow::Result<Value> {
    let db = ctx.fresh_db().await?;
    let result = async {
        burst(&db.url, events, ctx.p.payload_pad).await?;
        let client = outbox_relay::db::connect(db.cfg.database_url.get()).await?;
        if ctx.p.analyze {
            client.batch_execute(r#"ANALYZE "OutboxEvent""#).await?;
        }
        let table = db.cfg.qualified_table();
        let shape = outbox_relay::db::shape::inspect(&client, &table).await?;
        let q = Arc::new(Queries::for_table(&db.cfg.table_settings(), &shape));
        // A pool each: one connection, used one statement at a time, as the relay's claims
        // and records use theirs.
        let mut pools = Vec::new();
        for _ in 0..ctx.p.ceiling_connections {
            pools.push(outbox_relay::db::pool_of(
                db.cfg.database_url.get(),
                1,
                None,
            )?);
        }

        ctx.checkpoint().await?;
        let m0 = ctx.marks(None)?;
        let t0 = Instant::now();
        let batch = ctx.p.ceiling_batch;
        let tasks: Vec<_> = pools
            .into_iter()
            .map(|pool| tokio::spawn(db_worker(pool, q.clone(), batch)))
            .collect();
        let mut total = Worker::default();
        for t in tasks {
            let w = t.await??;
            total.rows += w.rows;
            total.claims += w.claims;
            total.claim += w.claim;
            total.records += w.records;
            total.record += w.record;
        }
        let elapsed = t0.elapsed().as_secs_f64();
        let m1 = ctx.marks(None)?;
        let mean_ms = |d: Duration, n: u64| round2(d.as_secs_f64() * 1e3 / n.max(1) as f64);
        let r = json!({
            "events": events,
            "connections": ctx.p.ceiling_connections,
            "batch": batch,
            "rows": total.rows,
            "elapsed_s": round2(elapsed),
            "rows_per_s": round2(total.rows as f64 / elapsed),
            "claims": total.claims,
            "claim_ms_mean": mean_ms(total.claim, total.claims),
            "record_ms_mean": mean_ms(total.record, total.records),
            "cpu_s": cpu_figures(&m0, &m1),
            "rows_by_status_after": status_counts(&db).await?,
        });
        eprintln!(
            "  database ceiling: {} rows/s (claim {} ms, record {} ms mean)",
            r["rows_per_s"], r["claim_ms_mean"], r["record_ms_mean"]
        );
        anyhow::Ok(r)
    }
    .await;
    ctx.drop_db(&db).await;
    result
}

/// Claim a batch, record it COMPLETED, until a claim finds nothing, through the relay's own
/// calls ([`claims`]) and claim cursor.
async fn db_worker(pool: Pool, q: Arc<Queries>, batch: usize) -> anyhow::Result<Worker> {
    let mut w = Worker::default();
    let mut cursor = ClaimCursor::new();
    let delivered = ["hook1".to_owned()];
    loop {
        let token = Uuid::new_v4();
        let t = Instant::now();
        let claimed = claims::claim(
            &pool,
            &q,
            &claims::Claim {
                limit: batch,
                lease: LEASE,
                max_attempts: MAX_ATTEMPTS,
                token,
                suspects_wanted: true,
                from: cursor.look_from(),
            },
        )
        .await?;
        w.claim += t.elapsed();
        w.claims += 1;
        cursor.advance(&claimed.look, batch, true);
        if claimed.rows.is_empty() {
            if claimed.look.unclaimed.is_empty() {
                return Ok(w);
            }
            continue; // rows the other workers hold right now
        }
        let outcomes: Vec<_> = claimed
            .rows
            .iter()
            .map(|r| RowOutcome {
                id: &r.id,
                token,
                status: "COMPLETED",
                failed: false,
                error: None,
                next: NextAttempt::Unchanged,
                delivered: &delivered,
                attempts: None,
            })
            .collect();
        let t = Instant::now();
        claims::record(&pool, &q, &outcomes, claims::Locked::Wait).await?;
        w.record += t.elapsed();
        w.records += 1;
        w.rows += outcomes.len() as u64;
    }
}

/// `requests` signed POSTs of the relay's body size to one endpoint, from
/// `p.receiver_concurrency` keep-alive connections of a hyper client on this thread.
pub async fn receiver_ceiling(ctx: &Ctx<'_>, requests: usize) -> anyhow::Result<Value> {
    let hook = ctx
        .receiver
        .endpoint(&ctx.key, Behaviour::Healthy, requests)?;
    let keys =
        Arc::new(SigningKeys::parse(&Secret::new(ctx.secret.clone())).map_err(anyhow::Error::msg)?);
    let pad: Arc<str> = "x".repeat(ctx.p.payload_pad).into();
    let next = Arc::new(AtomicUsize::new(0));
    let m0 = ctx.marks(None)?;
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..ctx.p.receiver_concurrency {
        let (keys, pad, next, addr) = (keys.clone(), pad.clone(), next.clone(), hook.addr);
        tasks.push(tokio::spawn(async move {
            let sock = tokio::net::TcpStream::connect(addr).await?;
            sock.set_nodelay(true)?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(sock)).await?;
            tokio::spawn(conn);
            let mut failures = 0u64;
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= requests {
                    return anyhow::Ok(failures);
                }
                let (id, body) = envelope(n, &pad);
                let ts = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() as i64;
                let req = Request::post("/hook")
                    .header(HOST, addr.to_string())
                    .header(CONTENT_TYPE, "application/json")
                    .header("user-agent", outbox_relay::sinks::webhook::USER_AGENT)
                    .header("webhook-id", &id)
                    .header("webhook-timestamp", ts.to_string())
                    .header("webhook-signature", keys.sign(&id, ts, &body))
                    .body(Full::new(Bytes::from(body)))?;
                let resp = sender.send_request(req).await?;
                if !resp.status().is_success() {
                    failures += 1;
                }
                resp.into_body().collect().await?;
            }
        }));
    }
    let mut failures = 0;
    for t in tasks {
        failures += t.await??;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let m1 = ctx.marks(None)?;
    let cpu = cpu_figures(&m0, &m1);
    let receiver_cpu = cpu["receiver"].as_f64().unwrap_or(f64::NAN);
    let r = json!({
        "requests": requests,
        "concurrency": ctx.p.receiver_concurrency,
        "elapsed_s": round2(elapsed),
        "requests_per_s": round2(requests as f64 / elapsed),
        "failures": failures,
        "receiver_cpu_us_per_request": round2(receiver_cpu / requests as f64 * 1e6),
        "endpoint": hook.counts.figures(),
        "cpu_s": cpu,
    });
    eprintln!(
        "  receiver ceiling: {} requests/s, {} us receiver CPU per request",
        r["requests_per_s"], r["receiver_cpu_us_per_request"]
    );
    Ok(r)
}

/// Event `n`'s id and body as the relay would send them (its own envelope code).
fn envelope(n: usize, pad: &str) -> (String, Vec<u8>) {
    let ev = Event {
        id: Uuid::new_v4().to_string(),
        event_type: Some("BENCH.EVENT".into()),
        org_id: Some(ORG.into()),
        entity_type: Some("Bench".into()),
        entity_id: Some(n.to_string()),
        // jsonb's text form of the bench payload.
        payload: Some(format!(r#"{{"pad": "{pad}", "bench_n": {n}}}"#)),
        created_us: chrono::Utc::now().timestamp_micros(),
    };
    let (event_type, data) = ev.validate().expect("a valid bench event");
    let body = ev.envelope(event_type, &data, Some(1));
    (ev.id, body)
}

/// `signing`: what each Standard Webhooks signature costs the relay's CPU, in-process, on a
/// body of the bench's size: `v1` (HMAC-SHA256, a `whsec_` key), `v1a` (ed25519, a `whsk_`
/// key) and both at once (a move from one to the other), `SIGNATURES` each, one thread.
pub fn signing(ctx: &Ctx<'_>) -> anyhow::Result<Value> {
    const SIGNATURES: u32 = 20_000;
    let body = format!(
        "{{\"id\":\"0b6f3c1e-8a55-4f55-9d3a-6f1c2a9e4b7d\",\"type\":\"ORDER.CREATED\",\
         \"data\":{{\"pad\":\"{}\"}}}}",
        "x".repeat(ctx.p.payload_pad)
    );
    let (ed, _) = outbox_relay::sinks::webhook::signature::generate(true);
    let mut out = serde_json::Map::new();
    out.insert("body_bytes".into(), json!(body.len()));
    for (name, secret) in [
        ("v1", ctx.secret.clone()),
        ("v1a", ed.clone()),
        ("v1_and_v1a", format!("{} {ed}", ctx.secret)),
    ] {
        let keys = SigningKeys::parse(&Secret::new(secret)).map_err(anyhow::Error::msg)?;
        let t = Instant::now();
        let mut len = 0;
        for i in 0..SIGNATURES {
            len += keys
                .sign(&format!("msg_{i}"), 1_765_000_000, body.as_bytes())
                .len();
        }
        let us = t.elapsed().as_secs_f64() * 1e6 / f64::from(SIGNATURES);
        std::hint::black_box(len);
        out.insert(format!("{name}_us_per_request"), json!(round2(us)));
    }
    Ok(Value::Object(out))
}
