//! Schema and table names come from the config and end up in SQL text. Names that try to
//! smuggle SQL in, or that PostgreSQL would mangle, are refused by every command with exit
//! status 2 and a message naming the key, before any connection to the database is made.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};

use crate::common::proxy::tcp_target;
use crate::common::*;

/// Every command that reads the config and then works on the table.
const COMMANDS: &[&[&str]] = &[
    &["check-config"],
    &["migrate"],
    &["migrate", "--print"],
    &["run"],
    &["status"],
    &["publish", "--type", "T"],
    &["purge", "--older-than", "1d"],
    &["retry", "--failed"],
];

/// (what, config line, the key the error must name).
fn bad_identifiers() -> Vec<(&'static str, String, &'static str)> {
    vec![
        (
            "SQL in the table name",
            r#"table = 'x"; DROP TABLE y; --'"#.into(),
            "table",
        ),
        (
            "SQL in the schema name",
            r#"schema = 'public"; DROP TABLE y; --'"#.into(),
            "schema",
        ),
        (
            "a schema that closes its quote and names another table",
            r#"schema = 'public"."y'"#.into(),
            "schema",
        ),
        (
            "a statement after a semicolon",
            "table = 'y; DROP TABLE y'".into(),
            "table",
        ),
        ("a comment opener", "table = 'y/*'".into(), "table"),
        ("an empty table name", "table = ''".into(), "table"),
        ("an empty schema name", "schema = ''".into(), "schema"),
        (
            "a table name of 64 bytes (PostgreSQL would truncate it)",
            format!("table = '{}'", "t".repeat(64)),
            "table",
        ),
        (
            "a NUL byte",
            r#"table = "Outbox\u0000Event""#.into(),
            "table",
        ),
        (
            "a Cyrillic letter that looks Latin",
            "table = '\u{41e}utboxEvent'".into(),
            "table",
        ),
    ]
}

/// A TCP proxy in front of the test's PostgreSQL that counts connections: a command that ran
/// any statement had to connect through it first.
struct CountingProxy {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
}

impl CountingProxy {
    async fn start(target: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let target = target.clone();
                tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Self { addr, connections }
    }

    /// The test database's URL, through this proxy.
    fn url_for(&self, db: &TestDb) -> String {
        let mut u = url::Url::parse(&db.url).unwrap();
        u.set_host(Some(&self.addr.ip().to_string())).unwrap();
        u.set_port(Some(self.addr.port())).unwrap();
        u.to_string()
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// Runs the relay binary with `args` and an empty environment (no DATABASE_URL inherited
/// from the test run): (exit code, stdout, stderr).
async fn run_binary(args: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = tokio::process::Command::new(relay_bin());
    cmd.args(args)
        .env_clear()
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(PATIENCE, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("outbox-relay {args:?} did not exit"))
        .expect("the relay binary runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every relation, schema, function, trigger and type of the database, by name.
pub(crate) async fn catalog(client: &tokio_postgres::Client) -> Vec<String> {
    texts(
        client,
        "SELECT 'relation ' || c.oid::regclass::text
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
         UNION ALL SELECT 'schema ' || nspname FROM pg_namespace
         UNION ALL SELECT 'function ' || p.oid::regprocedure::text
           FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
          WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
         UNION ALL SELECT 'trigger ' || tgname FROM pg_trigger WHERE NOT tgisinternal
         UNION ALL SELECT 'type ' || t.oid::regtype::text
           FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
          WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
         ORDER BY 1",
    )
    .await
}

/// The rows of the sentinel table `y` (panics if it is gone).
async fn sentinel_rows(client: &tokio_postgres::Client) -> Vec<String> {
    texts(client, "SELECT v FROM y ORDER BY v").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_or_invalid_identifiers_are_refused_by_every_command_before_any_connection() {
    let db = TestDb::new().await;
    let client = db.client().await;
    client
        .batch_execute("CREATE TABLE y (v text); INSERT INTO y VALUES ('still here');")
        .await
        .unwrap();
    let before = catalog(&client).await;
    let proxy = CountingProxy::start(tcp_target(&db.url)).await;
    let url = proxy.url_for(&db);

    for (what, line, key) in bad_identifiers() {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            file.path(),
            format!("database_url = \"{url}\"\n{line}\n[http]\nlisten = \"127.0.0.1:0\"\n"),
        )
        .unwrap();
        let path = file.path().to_str().unwrap();
        for command in COMMANDS {
            let args: Vec<&str> = command.iter().copied().chain(["--config", path]).collect();
            let (code, out, err) = run_binary(&args).await;
            let run = format!("{command:?} with {what}");
            assert_eq!(code, Some(2), "{run}: exit status; stderr:\n{err}");
            assert!(
                err.contains(&format!("config error at `{key}`")),
                "{run}: stderr does not name `{key}`:\n{err}"
            );
            assert!(out.is_empty(), "{run}: wrote to stdout:\n{out}");
            assert!(!err.contains("panicked"), "{run}:\n{err}");
            assert!(!err.contains('\0'), "{run}: a raw NUL in the message");
        }
    }
    assert_eq!(
        proxy.connections(),
        0,
        "a command with a bad identifier connected to the database"
    );
    assert_eq!(catalog(&client).await, before, "the database changed");
    assert_eq!(sentinel_rows(&client).await, ["still here"]);

    // The control: the same path with a valid config does reach the database, so the zero
    // above means nothing connected, not that the proxy saw nothing.
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), format!("database_url = \"{url}\"\n")).unwrap();
    let (code, _, err) = run_binary(&["migrate", "--config", file.path().to_str().unwrap()]).await;
    assert_eq!(code, Some(0), "a valid migrate through the proxy: {err}");
    assert!(proxy.connections() > 0);
    let after = catalog(&client).await;
    assert!(
        after.contains(&"relation \"OutboxEvent\"".to_owned()),
        "{after:?}"
    );
    assert_eq!(sentinel_rows(&client).await, ["still here"]);
}
