//! Least privilege (issue 16.3): the relay binary, its dashboard and SSE, and every command
//! work as a role that is neither superuser nor the table's owner, holding exactly the
//! GRANTs `migrate --print-grants` prints; an app role inserts with INSERT alone (the notify
//! trigger fires for a non-owner); and a privilege taken away is one line naming it and the
//! GRANT that fixes it, exit status 2. The table lives in a schema of its own, so USAGE on
//! the schema is not already granted to PUBLIC as on `public`.

use std::sync::Arc;

use crate::common::process::*;
use crate::common::sse;
use crate::common::*;
use serde_json::{json, Value};

const SCHEMA: &str = "app_outbox";
const TABLE: &str = r#""app_outbox"."OutboxEvent""#;
const PASSWORD: &str = "rt-password";

/// Login roles made for one test, dropped after its database (declare before the TestDb).
struct Roles {
    admin_url: String,
    names: Vec<String>,
}

impl Drop for Roles {
    fn drop(&mut self) {
        let sql = self
            .names
            .iter()
            .map(|n| format!("DROP ROLE IF EXISTS {n}"));
        run_detached(self.admin_url.clone(), sql.collect());
    }
}

/// `url` with another user (and the test password).
fn as_user(url: &str, user: &str) -> String {
    let mut u = url::Url::parse(url).unwrap();
    u.set_username(user).unwrap();
    u.set_password(Some(PASSWORD)).unwrap();
    u.to_string()
}

/// A database migrated by its owner into [`SCHEMA`], a runtime role holding exactly the
/// printed GRANTs, and an app role holding what an app needs to insert.
struct Setup {
    db: TestDb,
    /// Bare names.
    runtime: String,
    app: String,
    _roles: Roles,
}

impl Setup {
    async fn new(config: &str) -> Self {
        let db = TestDb::new().await;
        let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let (runtime, app) = (format!("relay_rt_{tag}"), format!("app_{tag}"));
        let mut postgres_db = url::Url::parse(&db.url).unwrap();
        postgres_db.set_path("/postgres");
        let roles = Roles {
            admin_url: postgres_db.to_string(),
            names: vec![runtime.clone(), app.clone()],
        };
        let admin = db.client().await;
        let setup = format!(
            "CREATE ROLE {runtime} LOGIN PASSWORD '{PASSWORD}';
             CREATE ROLE {app} LOGIN PASSWORD '{PASSWORD}';
             CREATE SCHEMA {SCHEMA};"
        );
        admin.batch_execute(&setup).await.unwrap();
        // The owner migrates, with the config the relay will run (its indexes).
        db.migrate(&db.config(&format!("schema = \"{SCHEMA}\"\n{config}")))
            .await;
        // The DBA runs what `migrate --print-grants` prints, as printed.
        let file = write_config(&format!(
            "database_url = \"{}\"\nschema = \"{SCHEMA}\"\n",
            db.url
        ));
        let (status, grants, err) = run_to_end(
            "print-grants",
            relay_cmd(&[
                "migrate",
                "--print-grants",
                &runtime,
                "--config",
                path_str(&file),
            ]),
        )
        .await;
        assert!(status.success(), "{err}");
        assert!(grants.contains(&format!("TO \"{runtime}\";")), "{grants}");
        admin.batch_execute(&grants).await.unwrap();
        // An app inserts: USAGE on the schema, INSERT, and the stream sequence its default
        // draws from. Nothing on the trigger's function.
        admin
            .batch_execute(&format!(
                "GRANT USAGE ON SCHEMA {SCHEMA} TO {app};
                 GRANT INSERT ON {TABLE} TO {app};
                 GRANT USAGE ON SEQUENCE {SCHEMA}.\"OutboxEvent_stream_seq\" TO {app};"
            ))
            .await
            .unwrap();
        // Neither role is a superuser, the owner, or a member of the owner.
        for r in [&runtime, &app] {
            let row = admin
                .query_one(
                    "SELECT r.rolsuper, pg_has_role(r.oid, c.relowner, 'MEMBER')
                       FROM pg_roles r, pg_class c
                      WHERE r.rolname = $1 AND c.oid = $2::text::regclass",
                    &[r, &TABLE],
                )
                .await
                .unwrap();
            let (superuser, owner): (bool, bool) = (row.get(0), row.get(1));
            assert!(
                !superuser && !owner,
                "{r}: superuser {superuser}, owner {owner}"
            );
        }
        Self {
            db,
            runtime,
            app,
            _roles: roles,
        }
    }

    fn url(&self, role: &str) -> String {
        as_user(&self.db.url, role)
    }

    /// A config file for the runtime role: `schema`, then `extra`.
    fn runtime_config(&self, extra: &str) -> tempfile::NamedTempFile {
        write_config(&format!(
            "database_url = \"{}\"\nschema = \"{SCHEMA}\"\n{extra}",
            self.url(&self.runtime)
        ))
    }

    /// Runs a command as the runtime role; (exit code, stdout, stderr).
    async fn command(&self, args: &[&str]) -> (i32, String, String) {
        let file = self.runtime_config("");
        let mut all = args.to_vec();
        all.extend(["--config", path_str(&file)]);
        let (status, out, err) = run_to_end(args[0], relay_cmd(&all)).await;
        (status.code().unwrap_or(-1), out, err)
    }

    /// Inserts `n` events of `event_type` as the app role, without RETURNING (which would
    /// need SELECT); returns their ids, read back as the owner.
    async fn app_insert(&self, n: i32, event_type: &str) -> Vec<String> {
        let app = connect(&self.url(&self.app)).await;
        app.execute(
            &format!(
                "INSERT INTO {TABLE} (event_type, org_id, payload)
                 SELECT $1, 'org_1', jsonb_build_object('n', g) FROM generate_series(1, $2::int) g"
            ),
            &[&event_type, &n],
        )
        .await
        .unwrap();
        self.read(
            &format!("SELECT id::text FROM {TABLE} WHERE event_type = $1 ORDER BY stream_seq"),
            event_type,
        )
        .await
    }

    /// The first column of a query run as the owner, with one text parameter.
    async fn read(&self, sql: &str, param: &str) -> Vec<String> {
        let rows = self.db.client().await.query(sql, &[&param]).await.unwrap();
        rows.iter().map(|r| r.get(0)).collect()
    }

    async fn status_of(&self, id: &str) -> String {
        let sql = format!("SELECT status::text FROM {TABLE} WHERE id = $1::text::uuid");
        self.read(&sql, id).await.remove(0)
    }

    async fn wait_status(&self, ids: &[String], status: &str) {
        for id in ids {
            wait_until(&format!("{id} {status}"), || async move {
                self.status_of(id).await == status
            })
            .await;
        }
    }
}

/// Waits until the relay serving `http` is ready; panics at once if it exits instead.
async fn ready_or_exit(relay: &mut Proc, http: &str) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while http_get(&format!("http://{http}/readyz")).await.0 != 200 {
        assert!(relay.is_running(), "the relay exited:\n{}", relay.stderr());
        assert!(tokio::time::Instant::now() < deadline, "relay not ready");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

async fn api(method: &str, url: &str, token: Option<&str>, body: Value) -> (u16, Value) {
    let c = reqwest::Client::new();
    let mut req = match method {
        "GET" => c.get(url),
        _ => c.post(url).json(&body),
    };
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// Everything the relay does, as the runtime role with the printed GRANTs: deliveries, SSE,
/// the dashboard's reads and an action, and status, retry, skip, purge and publish. No
/// statement anywhere is refused (the relay logs at debug, so even the housekeeping's quiet
/// failures would show).
#[tokio::test]
async fn a_runtime_role_with_the_printed_grants_does_everything() {
    let s = Setup::new(&sse::sse_toml("15s")).await;
    let rx = Receiver::start().await;
    let http = free_addr();
    let token = format!("tok-{}", uuid::Uuid::new_v4().simple());
    let file = s.runtime_config(&format!(
        "max_attempts = 1\npoll_interval = \"1h\"\n[http]\nlisten = \"{http}\"\n\
         admin_token = \"{token}\"\n{}\n{}",
        sse::sse_toml("15s"),
        webhook_toml("main", &rx.url)
    ));
    let mut relay = relay("relay", &file);
    let base = format!("http://{http}");
    ready_or_exit(&mut relay, &http).await;
    let mut sub = sse::connect(&base, Some(&sse::token("org_1", None)), "", None)
        .await
        .expect("SSE subscription accepted");

    // Deliveries, woken by the trigger the app role's insert fired (the poll is an hour
    // away).
    let ok = s.app_insert(3, "ORDER.OK").await;
    rx.wait_accepted(&ok).await;
    s.wait_status(&ok, "COMPLETED").await;
    // Dead letters (max_attempts = 1).
    rx.set_script(Arc::new(|_, _| Reply::status(500)));
    let dead = s.app_insert(3, "ORDER.DEAD").await;
    s.wait_status(&dead, "FAILED").await;
    rx.set_script(Arc::new(|_, _| Reply::ok()));
    let streamed: Vec<String> = sub.take(6).await.iter().map(|m| m.event_id()).collect();
    assert_eq!(streamed, [ok.clone(), dead.clone()].concat());

    // The dashboard reads, and retries one dead letter with the admin token.
    let (code, overview) = api("GET", &format!("{base}/api/overview"), None, json!({})).await;
    assert_eq!(code, 200, "{overview}");
    let (code, page) = api("GET", &format!("{base}/api/events"), None, json!({})).await;
    assert_eq!(code, 200, "{page}");
    assert_eq!(page["events"].as_array().map(Vec::len), Some(6), "{page}");
    let (code, done) = api(
        "POST",
        &format!("{base}/api/events/retry"),
        Some(&token),
        json!({ "ids": [dead[0]] }),
    )
    .await;
    assert_eq!((code, &done["done"]), (200, &json!([dead[0]])), "{done}");
    rx.wait_accepted(&dead[..1]).await;
    // A pause and a resume (INSERT and DELETE on the paused table).
    for action in ["pause", "resume"] {
        let url = format!("{base}/api/endpoints/main/{action}");
        let (code, body) = api("POST", &url, Some(&token), json!({})).await;
        assert_eq!(code, 200, "{action}: {body}");
    }

    // The commands.
    let (code, out, err) = s.command(&["status", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["dead_letters"], json!(2), "{out}");
    let (code, _, err) = s.command(&["skip", "--id", &dead[1]]).await;
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("1 event(s) skipped"), "{err}");
    let (code, _, err) = s.command(&["retry", "--failed"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("2 event(s) back to PENDING"), "{err}");
    rx.wait_accepted(&dead).await;
    s.wait_status(&dead, "COMPLETED").await;
    let (code, published, err) = s
        .command(&["publish", "--type", "ORDER.PUBLISHED", "--org", "org_1"])
        .await;
    assert_eq!(code, 0, "{err}");
    let published = published.trim().to_owned();
    rx.wait_accepted(std::slice::from_ref(&published)).await;
    s.wait_status(std::slice::from_ref(&published), "COMPLETED")
        .await;
    let (code, _, err) = s.command(&["purge", "--older-than", "1ms"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("7 COMPLETED event(s)"), "{err}");

    relay.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(relay.wait_exit(EXIT_PATIENCE).await.success());
    let log = relay.stderr();
    for refused in ["permission denied", "lacks"] {
        assert!(
            !log.contains(refused),
            "the relay was refused something:\n{log}"
        );
    }
}

/// A privilege taken away: the relay and the commands that need it exit with status 2 and
/// one line naming it and its GRANT, at once, with no retries; the GRANT it names fixes it.
/// Commands that do not need it still work.
#[tokio::test]
async fn a_missing_privilege_is_one_line_naming_it_and_its_grant() {
    let s = Setup::new("").await;
    let rt = &s.runtime;
    let admin = s.db.client().await;
    let cases = [
        (
            format!("REVOKE UPDATE ON {TABLE} FROM {rt}"),
            format!("lacks UPDATE on {TABLE}"),
            format!("GRANT UPDATE ON TABLE {TABLE} TO \"{rt}\";"),
            vec!["retry", "skip", "purge"],
        ),
        (
            format!("REVOKE USAGE ON SCHEMA {SCHEMA} FROM {rt}"),
            format!("lacks USAGE on schema \"{SCHEMA}\""),
            format!("GRANT USAGE ON SCHEMA \"{SCHEMA}\" TO \"{rt}\";"),
            vec!["retry", "skip", "purge", "status", "publish"],
        ),
    ];
    let http = free_addr();
    let file = s.runtime_config(&format!("[http]\nlisten = \"{http}\"\n"));
    for (revoke, lacks, grant, refusing) in cases {
        admin.batch_execute(&revoke).await.unwrap();
        let mut refused = relay("relay", &file);
        let code = refused.wait_exit(PATIENCE).await.code();
        let log = refused.stderr();
        assert_eq!(code, Some(2), "{revoke}: the relay's exit status\n{log}");
        let lines: Vec<&str> = log.lines().filter(|l| l.contains("lacks")).collect();
        assert_eq!(lines.len(), 1, "{revoke}: one line\n{log}");
        assert!(
            lines[0].contains(&lacks) && lines[0].contains(&grant),
            "{revoke}: {lacks} and {grant} in\n{}",
            lines[0]
        );
        assert!(lines[0].contains(&format!("migrate --print-grants {rt}")));
        assert!(!log.contains("not started yet"), "{revoke}: retried\n{log}");

        for command in ["status", "retry", "skip", "purge", "publish"] {
            let args: &[&str] = match command {
                "status" => &["status"],
                "retry" => &["retry", "--failed"],
                "skip" => &["skip", "--id", "00000000-0000-0000-0000-000000000000"],
                "purge" => &["purge", "--older-than", "1d"],
                _ => &["publish", "--type", "X"],
            };
            let (code, _, err) = s.command(args).await;
            if refusing.contains(&command) {
                assert_eq!(code, 2, "{revoke}: {command}\n{err}");
                let lines: Vec<&str> = err.lines().collect();
                assert_eq!(lines.len(), 1, "{revoke}: {command}\n{err}");
                assert!(lines[0].contains(&lacks) && lines[0].contains(&grant));
            } else {
                assert_eq!(code, 0, "{revoke}: {command} needs no more\n{err}");
            }
        }

        // The GRANT the line names is the fix.
        admin.batch_execute(&grant).await.unwrap();
        let mut relay = relay("relay", &file);
        ready_or_exit(&mut relay, &http).await;
        relay.signal(nix::sys::signal::Signal::SIGTERM);
        assert!(relay.wait_exit(EXIT_PATIENCE).await.success());
    }
}
