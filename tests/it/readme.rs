//! The documented plain-SQL inserts (issue 17): each block, taken from the README (Prisma) or
//! docs/publishing.md (TypeORM, Django, a table `migrate` made) itself, runs as written
//! against the table an ORM makes (or `migrate` makes), adopted by the `migrate` command,
//! and the relay delivers the event it inserts.

use crate::common::orm::*;
use crate::common::process::*;
use crate::common::*;

/// The ```sql block right after `<!-- readme-sql: NAME -->` in the README or
/// docs/publishing.md.
fn readme_sql(name: &str) -> String {
    let readme = concat!(
        include_str!("../../README.md"),
        include_str!("../../docs/publishing.md")
    );
    let marker = format!("<!-- readme-sql: {name} -->");
    let at = readme
        .find(&marker)
        .unwrap_or_else(|| panic!("neither README.md nor docs/publishing.md has {marker}"));
    let block = readme[at + marker.len()..]
        .trim_start()
        .strip_prefix("```sql\n")
        .unwrap_or_else(|| panic!("no ```sql block right after {marker}"));
    block[..block.find("\n```").expect("a closed block")].to_owned()
}

/// Creates `orm`'s tables, adopts them with `outbox-relay migrate` (returning what it said),
/// runs the README's block for it, and checks the relay delivers that one event.
async fn the_readme_sql_is_delivered(orm: &OrmTable) -> String {
    let db = TestDb::new().await;
    let client = db.client().await;
    client.batch_execute(orm.ddl).await.unwrap();
    let rx = Receiver::start().await;
    let toml = format!(
        "table = \"{}\"\n{}",
        orm.table,
        webhook_toml("main", &rx.url)
    );
    let file = db.config_file(&toml);
    let (status, _, said) = run_to_end(
        "migrate",
        relay_cmd(&["migrate", "--config", path_str(&file)]),
    )
    .await;
    assert!(status.success(), "migrate failed: {said}");
    let relay = InProcessRelay::start(db.config(&toml)).await.ready().await;

    let sql = readme_sql(orm.name);
    client
        .batch_execute(&sql)
        .await
        .unwrap_or_else(|e| panic!("the README's {} SQL fails: {e:?}\n{sql}", orm.name));
    rx.wait_for("the README's event", |d| !d.is_empty()).await;
    let table = format!("\"{}\"", orm.table);
    wait_until("the event COMPLETED", || async {
        let row = client
            .query_one(
                &format!("SELECT count(*) FILTER (WHERE status::text = 'COMPLETED') FROM {table}"),
                &[],
            )
            .await
            .unwrap();
        row.get::<_, i64>(0) == 1
    })
    .await;
    relay.stop().await.unwrap();

    let got = rx.deliveries();
    assert_eq!(got.len(), 1, "one event, delivered once");
    let d = &got[0];
    assert!(d.verified);
    assert_eq!(d.body["type"], "PROJECT.UPDATED");
    assert_eq!(d.body["org_id"], "org_1");
    assert_eq!(d.body["entity_type"], "Project");
    assert_eq!(d.body["data"], serde_json::json!({"name": "Apollo 2"}));
    let name: String = client
        .query_one(orm.project_name, &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        name, "Apollo 2",
        "the block's UPDATE ran in the same transaction"
    );
    said
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_sql_works_on_a_prisma_table() {
    let said = the_readme_sql_is_delivered(&PRISMA).await;
    // The two things about this table an insert from SQL must know, said by migrate.
    assert!(said.contains("id has no database default"), "{said}");
    assert!(
        said.contains("created_at is timestamp without time zone"),
        "{said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_sql_works_on_a_typeorm_table() {
    let said = the_readme_sql_is_delivered(&TYPEORM).await;
    assert!(!said.contains("id has no database default"), "{said}");
    assert!(!said.contains("without time zone"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_sql_works_on_a_django_table() {
    let said = the_readme_sql_is_delivered(&DJANGO).await;
    assert!(!said.contains("id has no database default"), "{said}");
    assert!(!said.contains("without time zone"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_sql_works_on_a_table_migrate_created() {
    the_readme_sql_is_delivered(&MIGRATE).await;
}
