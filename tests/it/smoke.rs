use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_event_is_delivered_signed_and_completed() {
    let db = TestDb::new().await;
    let rx = Receiver::start().await;
    let cfg = db.config(&webhook_toml("main", &rx.url));
    db.migrate(&cfg).await;
    let relay = InProcessRelay::start(cfg).await.ready().await;
    let client = db.client().await;
    let ids = insert_events(&client, 3, "PROJECT.UPDATED").await;
    rx.wait_accepted(&ids).await;
    relay.stop().await.unwrap();
    for d in rx.deliveries() {
        assert!(
            d.verified,
            "signature must verify with the reference library"
        );
    }
    for id in &ids {
        let (status, retries, _, processed) = row_state(&client, id).await;
        assert_eq!(
            (status.as_str(), retries, processed),
            ("COMPLETED", 0, true)
        );
    }
}
