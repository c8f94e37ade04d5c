//! `outbox-relay dev`: the whole flow on one screen, with no configuration.
//!
//! Gets a database (DATABASE_URL if given, else a throwaway cluster), migrates, starts a
//! sample webhook receiver and the relay, publishes a few events (one fails once, to show a
//! retry) and prints every delivery as the receiver gets it, until Ctrl-C.
//!
//! From a config file it takes `[http] listen` and `database_url` only, and says so; the
//! table, webhook and secrets are the demo's own.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use base64::Engine;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, DevSettings, Overrides};
use crate::db::admin::{insert, NewEvent};
use crate::pgtemp::TempCluster;
use crate::secret::Secret;
use crate::sinks::webhook::signature::SigningKeys;

/// Table the demo uses in a database it did not create, so it never touches an app's own
/// `OutboxEvent` table.
const DEMO_TABLE: &str = "outbox_relay_demo";
/// Where the demo serves SSE and health unless told otherwise: the default `http.listen`
/// when free, else any free port.
const DEMO_HTTP: &str = crate::config::DEFAULT_HTTP_LISTEN;

struct Receiver {
    keys: SigningKeys,
    /// Events that asked to fail once and already did.
    failed_once: Mutex<HashSet<String>>,
}

/// `dev [--listen ADDR]`, with the global `--config` and `--database-url`.
pub async fn run(
    config: Option<&Path>,
    overrides: &Overrides,
    listen: Option<SocketAddr>,
) -> anyhow::Result<()> {
    let from_file = match config {
        Some(path) => {
            let s = Config::for_dev(path, overrides)?;
            eprintln!(
                "config {}: dev takes only [http] listen and database_url from it (the demo \
                 brings its own table, webhook and secrets)",
                path.display()
            );
            s
        }
        None => DevSettings::default(),
    };
    let database_url = match config {
        Some(_) => from_file.database_url.map(|u| u.expose().to_owned()),
        None => overrides.database_url.clone(),
    };
    let http_listen = http_listen(listen.or(from_file.listen))?;
    let (cluster, url, table) = match database_url {
        Some(url) => (None, url, DEMO_TABLE),
        None => {
            eprintln!(
                "starting a throwaway PostgreSQL cluster (set DATABASE_URL to use your own)..."
            );
            let c = tokio::task::spawn_blocking(TempCluster::start).await??;
            let url = c.url("postgres");
            (Some(c), url, "OutboxEvent")
        }
    };

    let (secret, _) = crate::sinks::webhook::signature::generate(false);
    let receiver = Arc::new(Receiver {
        keys: SigningKeys::parse(&Secret::new(secret.clone())).map_err(anyhow::Error::msg)?,
        failed_once: Mutex::default(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let hook_url = format!("http://{}/hooks/demo", listener.local_addr()?);
    let app = Router::new()
        .route("/hooks/demo", post(receive))
        .with_state(receiver);
    let shutdown = CancellationToken::new();
    let server_stop = shutdown.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(server_stop.cancelled_owned())
            .await
    });

    let random =
        || base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 24]>());
    let token_secret = random();
    // Off loopback, the dashboard answers only with an admin token (see its "Who may do what").
    let admin_token = (!http_listen.ip().is_loopback()).then(random);
    let admin_line = admin_token
        .as_ref()
        .map(|t| format!("admin_token = \"{t}\""))
        .unwrap_or_default();
    let toml = format!(
        r#"
        table = "{table}"
        backoff_initial = "2s"
        [http]
        listen = "{http_listen}"
        {admin_line}
        [sse]
        token_secret = "{token_secret}"
        [[webhook]]
        name = "demo"
        url = "{hook_url}"
        secret = "{secret}"
        "#
    );
    let cfg = Config::from_toml(
        &toml,
        &Overrides {
            database_url: Some(url.clone()),
        },
    )?;
    let settings = cfg.table_settings();
    let mut client = crate::db::connect(cfg.database_url.get()).await?;
    crate::db::migrate::run(&mut client, &settings)
        .await
        .context("migrating the demo table")?;

    crate::daemon::shutdown::on_signal(shutdown.clone());
    let daemon = crate::daemon::Daemon::start(cfg.clone(), shutdown.clone()).await?;
    let http = daemon.http_addr;
    let token = crate::http::sse::token::mint(token_secret.as_bytes(), "org_acme", None, 24 * 3600);
    // A cursor from the very start, so the curl below also shows the sample events.
    let from_start = crate::sinks::sse::cursor::Cursor::at_snapshot(
        crate::sinks::sse::cursor::Snapshot::empty(),
        chrono::Utc::now().timestamp(),
    )
    .encode(&crate::sinks::sse::read::Reader::new(&cfg).key, "org_acme");

    eprintln!();
    eprintln!("  database   {}", crate::secret::redact_url(&url));
    eprintln!("  table      {}", cfg.qualified_table());
    eprintln!("  receiver   {hook_url}");
    eprintln!("  dashboard  http://{http}/");
    if let Some(t) = &admin_token {
        eprintln!("  admin      {t}  (the dashboard asks for it: {http} is not loopback)");
    }
    eprintln!("  http       http://{http}  (/healthz, /readyz, /metrics, /v1/events)");
    eprintln!();
    eprintln!("Server-Sent Events for org_acme (token valid 24h), from the first event:");
    eprintln!(
        "  curl -N -H 'Authorization: Bearer {token}' 'http://{http}/v1/events?last_event_id={from_start}'"
    );
    eprintln!();
    eprintln!("publishing sample events; deliveries print below. Publish more with:");
    // A URL with a password is not repeated here (terminal scrollback), nor suggested as a
    // flag (other users see flags in `ps`): the same DATABASE_URL works.
    let database = match crate::secret::holds_password(&url) {
        true => "DATABASE_URL=<the same URL> outbox-relay publish".to_owned(),
        false => format!("outbox-relay publish --database-url '{url}'"),
    };
    eprintln!(
        "  {database} --type DEMO.HELLO --payload '{{\"hi\":1}}'{}",
        if table == DEMO_TABLE {
            "   (with table = \"outbox_relay_demo\" in a --config file)"
        } else {
            ""
        }
    );
    eprintln!("Ctrl-C to stop.\n");

    let shape = crate::db::shape::inspect(&client, &settings.qualified_table()).await?;
    let q = crate::db::queries::Queries::for_table(&settings, &shape);
    let samples = [
        ("PROJECT.CREATED", "org_acme", "p_1", r#"{"name":"Apollo"}"#),
        (
            "PROJECT.UPDATED",
            "org_acme",
            "p_1",
            r#"{"name":"Apollo 2","fail_once":true}"#,
        ),
        (
            "INVOICE.CREATED",
            "org_globex",
            "inv_7",
            r#"{"amount_cents":4200}"#,
        ),
        ("PROJECT.ARCHIVED", "org_acme", "p_1", r#"{}"#),
    ];
    // One transaction, as an app would publish alongside its own change.
    let tx = client.transaction().await?;
    for (t, org, entity, payload) in samples {
        let e = NewEvent {
            event_type: t.into(),
            org_id: Some(org.into()),
            entity_type: Some(
                if t.starts_with("INVOICE") {
                    "Invoice"
                } else {
                    "Project"
                }
                .into(),
            ),
            entity_id: Some(entity.into()),
            payload: payload.into(),
        };
        insert(&tx, &q, &e).await?;
    }
    tx.commit().await?;

    daemon.wait().await?;
    let _ = server.await;
    drop(cluster);
    eprintln!("demo stopped");
    Ok(())
}

/// Where to serve: `asked` (--listen, else the config file's `[http] listen`), which must be
/// free; otherwise the contract's port when free, any port when another relay holds it.
fn http_listen(asked: Option<SocketAddr>) -> anyhow::Result<SocketAddr> {
    let default: SocketAddr = DEMO_HTTP.parse().expect("a socket address");
    match asked {
        // Tried here so the error names dev's option rather than `[http] listen`.
        Some(addr) => match std::net::TcpListener::bind(addr) {
            Ok(_) => Ok(addr),
            Err(e) => anyhow::bail!(
                "cannot listen on {addr} ({e}): is another relay or dev running there? choose \
                 another address with --listen (port 0 picks a free one)"
            ),
        },
        None => Ok(match std::net::TcpListener::bind(default) {
            Ok(_) => default,
            Err(_) => SocketAddr::from(([127, 0, 0, 1], 0)),
        }),
    }
}

async fn receive(State(r): State<Arc<Receiver>>, headers: HeaderMap, body: String) -> StatusCode {
    let h = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).unwrap_or("");
    let (id, ts, sig) = (
        h("webhook-id"),
        h("webhook-timestamp"),
        h("webhook-signature"),
    );
    let valid = ts
        .parse()
        .is_ok_and(|ts| r.keys.sign(id, ts, body.as_bytes()) == sig);
    let env: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let fail =
        env["data"]["fail_once"] == true && r.failed_once.lock().unwrap().insert(id.to_owned());
    let status = if !valid {
        StatusCode::UNAUTHORIZED
    } else if fail {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    };
    println!(
        "{} {:<17} id={} attempt={} org={} signature={} -> {}{}",
        if status.is_success() {
            "received"
        } else {
            "rejected"
        },
        env["type"].as_str().unwrap_or("?"),
        id,
        env["attempt"],
        env["org_id"].as_str().unwrap_or("-"),
        if valid { "ok" } else { "BAD" },
        status.as_u16(),
        if fail {
            " (failing once on purpose: watch the retry)"
        } else {
            ""
        },
    );
    status
}
