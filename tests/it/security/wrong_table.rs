//! `migrate` pointed at a table that is not an outbox (issue 15.6). With `table = "sentinel"`
//! it used to add the relay's columns, indexes and trigger to that table and only then fail;
//! now it checks the table first, changes nothing, exits 2 and says what to do. An outbox an
//! ORM made is still adopted, and a table that does not exist is still created.

use super::identifiers::catalog;
use crate::common::process::{path_str, relay_cmd, run_to_end};
use crate::common::texts;
use crate::common::*;

/// Everything about one table `migrate` could change: its columns (type, NOT NULL, default),
/// indexes, triggers and constraints, and its rows as text.
async fn table_state(client: &tokio_postgres::Client, table: &str) -> Vec<String> {
    let rel = format!("'public.{table}'::regclass");
    texts(
        client,
        &format!(
            "SELECT 'column ' || attname || ' ' || format_type(atttypid, atttypmod)
                    || CASE WHEN attnotnull THEN ' not null' ELSE '' END
                    || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')
               FROM pg_attribute a
               LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
              WHERE a.attrelid = {rel} AND a.attnum > 0 AND NOT a.attisdropped
             UNION ALL SELECT 'index ' || pg_get_indexdef(indexrelid)
               FROM pg_index WHERE indrelid = {rel}
             UNION ALL SELECT 'trigger ' || tgname FROM pg_trigger
              WHERE tgrelid = {rel} AND NOT tgisinternal
             UNION ALL SELECT 'constraint ' || conname FROM pg_constraint WHERE conrelid = {rel}
             UNION ALL SELECT 'row ' || t::text FROM public.{table} t
             ORDER BY 1"
        ),
    )
    .await
}

/// Runs the binary's `args` with a config naming `table`: (exit code, stderr).
async fn with_table(db: &TestDb, table: &str, args: &[&str]) -> (Option<i32>, String) {
    let file = db.config_file(&format!("table = \"{table}\"\n"));
    let args: Vec<&str> = args
        .iter()
        .copied()
        .chain(["--config", path_str(&file)])
        .collect();
    let (status, _, err) = run_to_end(&format!("{args:?}"), relay_cmd(&args)).await;
    (status.code(), err)
}

/// The last line of stderr: the error `main` prints.
fn error_line(stderr: &str) -> &str {
    stderr.lines().last().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_changes_nothing_on_a_table_that_is_not_an_outbox() {
    let db = TestDb::new().await;
    let client = db.client().await;
    client
        .batch_execute(
            "CREATE TABLE sentinel (code text PRIMARY KEY, note text);
             INSERT INTO sentinel VALUES ('s1', 'still here');
             CREATE TABLE typed (id uuid PRIMARY KEY, event_type integer, payload jsonb);
             INSERT INTO typed VALUES (gen_random_uuid(), 7, '{}');",
        )
        .await
        .unwrap();
    let before = catalog(&client).await;
    let sentinel = table_state(&client, "sentinel").await;
    let typed = table_state(&client, "typed").await;
    assert!(
        sentinel.contains(&"row (s1,\"still here\")".to_owned()),
        "{sentinel:?}"
    );

    let (code, err) = with_table(&db, "sentinel", &["migrate"]).await;
    assert_eq!(code, Some(2), "migrate on sentinel; stderr:\n{err}");
    let line = error_line(&err);
    for part in [
        "outbox-relay: config error at `table`: \"public\".\"sentinel\" is not an outbox table",
        "no id, event_type, payload columns",
        "point `table` at your outbox table, or at a name no table has yet",
    ] {
        assert!(
            line.contains(part),
            "{part:?} not in the error line: {line}"
        );
    }

    let (code, err) = with_table(&db, "typed", &["migrate"]).await;
    assert_eq!(code, Some(2), "migrate on typed; stderr:\n{err}");
    let line = error_line(&err);
    assert!(
        line.contains(
            "\"public\".\"typed\" has columns of types the relay cannot use: \
                       event_type is integer (text expected); change their types"
        ),
        "{line}"
    );

    // The commands that read the table say the same rather than "run migrate".
    let (code, err) = with_table(&db, "sentinel", &["status"]).await;
    assert_eq!(code, Some(2), "status on sentinel; stderr:\n{err}");
    assert!(error_line(&err).contains("is not an outbox table"), "{err}");

    assert_eq!(table_state(&client, "sentinel").await, sentinel);
    assert_eq!(table_state(&client, "typed").await, typed);
    assert_eq!(catalog(&client).await, before, "the database changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_still_adopts_an_outbox_and_creates_a_missing_table() {
    let db = TestDb::new().await;
    let client = db.client().await;
    // As an ORM makes it: text ids filled in by the app, timestamp(3), no relay columns.
    client
        .batch_execute(
            "CREATE TABLE app_outbox (
                 id text PRIMARY KEY,
                 event_type varchar(191) NOT NULL,
                 payload jsonb NOT NULL,
                 created_at timestamp(3) NOT NULL DEFAULT CURRENT_TIMESTAMP);
             INSERT INTO app_outbox (id, event_type, payload) VALUES ('e1', 'A.B', '{}');",
        )
        .await
        .unwrap();
    for table in ["app_outbox", "fresh"] {
        let (code, err) = with_table(&db, table, &["migrate"]).await;
        assert_eq!(code, Some(0), "migrate on {table}; stderr:\n{err}");
        let state = table_state(&client, table).await;
        for relay_owned in [
            "column next_attempt_at timestamp with time zone not null default now()",
            "trigger outbox_relay_notify",
        ] {
            assert!(
                state.contains(&relay_owned.to_owned()),
                "{table}: {state:?}"
            );
        }
    }
    let status = texts(&client, "SELECT id || ' ' || status FROM app_outbox").await;
    assert_eq!(
        status,
        ["e1 PENDING"],
        "the app's row is kept, and now pending"
    );
}
