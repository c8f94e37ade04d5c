//! Payloads at the edges of what PostgreSQL stores, through the whole relay to a real webhook
//! receiver and a real SSE subscriber: whatever the column holds as valid JSON arrives as it
//! is, signed; what is not JSON is dead-lettered with a reason.

use super::envelope_fuzz::{nested, Received};
use crate::common::sse::{connect, sse_toml, token};
use crate::common::*;

/// The event id and the `data` of an envelope, `data` exactly as sent (read without
/// serde_json's recursion limit, which a `Value` would hit).
fn id_and_data(envelope: &[u8]) -> (String, String) {
    let env: Received = serde_json::from_slice(envelope).expect("the envelope is JSON");
    (env.id, env.data.get().to_owned())
}

fn data_of(envelope: &[u8]) -> String {
    id_and_data(envelope).1
}

/// Inserts one event of org_1 whose payload is `payload` cast with `cast` (e.g. `jsonb`).
async fn insert(client: &tokio_postgres::Client, t: &str, cast: &str, payload: &str) -> String {
    client
        .query_one(
            &format!(
                "INSERT INTO \"OutboxEvent\" (event_type, org_id, payload)
                 VALUES ($1, 'org_1', $2::text::{cast}) RETURNING id::text"
            ),
            &[&t, &payload],
        )
        .await
        .unwrap()
        .get(0)
}

/// The payload as the relay reads it from the table.
async fn stored(client: &tokio_postgres::Client, id: &str) -> String {
    client
        .query_one(
            "SELECT payload::text FROM \"OutboxEvent\" WHERE id::text = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0)
}

fn delivery(rx: &Receiver, id: &str) -> Delivery {
    rx.deliveries()
        .into_iter()
        .find(|d| d.id == id)
        .unwrap_or_else(|| panic!("{id} was not delivered"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsonb_payloads_10_000_levels_deep_or_of_5_mb_reach_webhooks_and_streams_byte_for_byte() {
    let db = TestDb::new().await;
    let rx = Receiver::start().await;
    let toml = format!("{}\n{}", webhook_toml("main", &rx.url), sse_toml("15s"));
    let relay = db.start_relay(&toml).await.1;
    let mut sub = connect(&relay.http_url(), Some(&token("org_1", None)), "", None)
        .await
        .unwrap();
    let client = db.client().await;

    let odd = format!(
        r#"["\u202e😀e\u0301 \u2028", 1e400, -0, {}, {{"k": "\ud83d\ude00"}}]"#,
        "9".repeat(300)
    );
    let five_mb = format!("[{}]", vec![odd.as_str(); (5 << 20) / odd.len()].join(","));
    let ids = vec![
        insert(&client, "DEEP.ARRAYS", "jsonb", &nested(10_000, &odd)).await,
        insert(&client, "BIG.ODD", "jsonb", &five_mb).await,
        insert(&client, "AFTER", "jsonb", "{}").await,
    ];
    rx.wait_accepted(&ids).await;
    let streamed = sub.take(ids.len()).await;
    for (id, message) in ids.iter().zip(&streamed) {
        let payload = stored(&client, id).await;
        let d = delivery(&rx, id);
        assert!(d.verified, "{id}: the signature verifies");
        assert!(data_of(&d.raw) == payload, "{id}: webhook data differs");
        let (streamed_id, data) = id_and_data(message.data.as_bytes());
        assert_eq!(&streamed_id, id);
        assert!(data == payload, "{id}: SSE data differs");
        wait_until("COMPLETED", || async {
            row_state(&client, id).await.0 == "COMPLETED"
        })
        .await;
    }
    relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_payload_column_keeps_line_breaks_intact_and_dead_letters_text_that_is_not_json() {
    let db = TestDb::new().await;
    let rx = Receiver::start().await;
    let toml = format!("{}\n{}", webhook_toml("main", &rx.url), sse_toml("15s"));
    let cfg = db.config(&toml);
    db.migrate(&cfg).await;
    let client = db.client().await;
    // An app whose ORM made payload `json` or `text` keeps the text as written, line breaks
    // and all (jsonb would normalise it).
    client
        .batch_execute("ALTER TABLE \"OutboxEvent\" ALTER COLUMN payload TYPE text")
        .await
        .unwrap();
    let relay = InProcessRelay::start(cfg).await.ready().await;
    let mut sub = connect(&relay.http_url(), Some(&token("org_1", None)), "", None)
        .await
        .unwrap();

    let pretty = "{\n  \"a\": 1,\r\n  \"b\": [1,\r 2],\n  \"s\": \"line\\nbreak\"\n}\n";
    let pretty_id = insert(&client, "PRETTY", "text", pretty).await;
    let not_json = insert(&client, "NOT.JSON", "text", "{\"a\": 1,\n oops").await;
    let after = insert(&client, "AFTER", "text", "{}").await;

    rx.wait_accepted(&[pretty_id.clone(), after.clone()]).await;
    let d = delivery(&rx, &pretty_id);
    assert!(d.verified);
    assert_eq!(
        data_of(&d.raw),
        pretty.trim_end(),
        "the webhook gets it as written"
    );
    wait_until("the text that is not JSON dead-lettered", || async {
        row_state(&client, &not_json).await.0 == "FAILED"
    })
    .await;
    let (_, _, error, _) = row_state(&client, &not_json).await;
    assert!(error.unwrap().contains("not valid JSON"));

    // The stream carries the same JSON on `data:` lines a client can read back.
    let streamed = sub.take(2).await;
    let as_json = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap();
    assert_eq!(streamed[0].event, "PRETTY");
    assert_eq!(
        as_json(&data_of(streamed[0].data.as_bytes())),
        as_json(pretty)
    );
    assert_eq!(
        streamed[1].event, "AFTER",
        "the row that is not JSON is not streamed"
    );
    sub.assert_quiet(std::time::Duration::from_millis(300))
        .await;
    relay.stop().await.unwrap();
}
