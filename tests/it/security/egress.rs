//! The outbound address policy (`[egress] deny_private_addresses`, issue 15.12), against real
//! PostgreSQL, the real binary and a real receiver on loopback: a webhook URL whose host is a
//! loopback literal (dotted or decimal) is refused when the config is loaded; a host name
//! that resolves to loopback is refused when the relay connects, and the attempt fails (the
//! row and the log say why) until the event is dead-lettered; an allow-listed network gets
//! through; with the policy off (the default) loopback receivers get their events as ever.

use nix::sys::signal::Signal;

use crate::common::process::*;
use crate::common::*;

const DENY: &str = "[egress]\ndeny_private_addresses = true\n";

/// The receiver's URL with `localhost` for its 127.0.0.1: a name, resolved at connect time
/// (through /etc/hosts).
fn by_name(rx: &Receiver) -> String {
    let url = rx.url.replace("127.0.0.1", "localhost");
    assert_ne!(url, rx.url, "the receiver listens on 127.0.0.1");
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn literal_loopback_urls_are_refused_at_load_naming_the_key() {
    let db = TestDb::new().await;
    let rx = Receiver::start().await;
    let port = rx.url.split(':').nth(2).unwrap().trim_end_matches("/hook");
    for url in [
        rx.url.clone(),
        // 2130706433 is 127.0.0.1 written as one decimal number.
        format!("http://2130706433:{port}/hook"),
        format!("http://0x7f000001:{port}/hook"),
        format!("http://[::ffff:127.0.0.1]:{port}/hook"),
    ] {
        let file = db.config_file(&format!("{DENY}{}", webhook_toml("main", &url)));
        for sub in ["check-config", "run"] {
            let (status, _, err) = run_to_end(
                &format!("{sub} {url}"),
                relay_cmd(&[sub, "--config", path_str(&file)]),
            )
            .await;
            assert_eq!(status.code(), Some(2), "{sub} {url}: {status}\n{err}");
            assert!(
                err.contains("config error at `webhook[0].url`")
                    && err.contains("127.0.0.1 is a")
                    && err.contains("loopback address and egress.deny_private_addresses is on"),
                "{sub} {url}:\n{err}"
            );
        }
    }
    assert!(rx.deliveries().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_resolving_to_loopback_is_refused_at_connect_time_until_dead_lettered() {
    let db = TestDb::new().await;
    let rx = Receiver::start().await;
    let extra = format!(
        "max_attempts = 2\nbackoff_initial = \"50ms\"\nbackoff_max = \"100ms\"\n{DENY}{}",
        webhook_toml("main", &by_name(&rx))
    );
    let file = db.migrated_config_file(&extra).await;
    let mut relay = relay("relay", &file);
    relay.wait_log(&["listening for new events"]).await;
    let client = db.client().await;
    let id = insert_events(&client, 1, "PROJECT.UPDATED").await.remove(0);

    // Done either way (a delivery that got through ends the wait too, and fails below).
    wait_until("the event to be dead-lettered", || async {
        matches!(
            row_state(&client, &id).await.0.as_str(),
            "FAILED" | "COMPLETED"
        )
    })
    .await;
    let (status, retry_count, error, _) = row_state(&client, &id).await;
    assert_eq!(
        status,
        "FAILED",
        "receiver got {} requests",
        rx.deliveries().len()
    );
    assert_eq!(retry_count, 2, "each refusal is a failed attempt");
    let error = error.expect("the row says why");
    // localhost is 127.0.0.1, and on some hosts ::1 as well: either way each is named.
    assert!(
        error.starts_with("main: localhost resolves to 127.0.0.1")
            && error.contains("loopback")
            && error.ends_with("and egress.deny_private_addresses is on"),
        "{error}"
    );
    // The log says the same, on the failed attempt and on the dead letter.
    relay.wait_log_count("delivery failed; will retry", 1).await;
    relay.wait_log(&["delivery failed for good"]).await;
    let lines: Vec<String> = relay
        .stderr()
        .lines()
        .filter(|l| l.contains("delivery failed"))
        .map(str::to_owned)
        .collect();
    assert!(
        lines.len() >= 2 && lines.iter().all(|l| l.contains(&error)),
        "{lines:#?}"
    );
    relay.signal(Signal::SIGTERM);
    assert_eq!(relay.wait_exit(EXIT_PATIENCE).await.code(), Some(0));
    // The receiver is up (the next test reaches one the same way): nothing got through.
    assert!(rx.deliveries().is_empty(), "{:?}", rx.deliveries());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_network_gets_through_and_the_policy_is_off_by_default() {
    let db = TestDb::new().await;
    let rx = Receiver::start().await;
    let client = db.client().await;

    // On, with loopback allowed: the same name as above is delivered to.
    let (_, relay) = db
        .start_relay(&format!(
            "{DENY}allow_networks = [\"127.0.0.0/8\"]\n{}",
            webhook_toml("main", &by_name(&rx))
        ))
        .await;
    let ids = insert_events(&client, 2, "PROJECT.UPDATED").await;
    rx.wait_accepted(&ids).await;
    relay.stop().await.unwrap();

    // Off (no [egress] at all): loopback by name and by address, as before the policy.
    let (_, relay) = db
        .start_relay(&format!(
            "{}{}",
            webhook_toml("by_name", &by_name(&rx)),
            webhook_toml("by_address", &rx.url)
        ))
        .await;
    let more = insert_events(&client, 2, "PROJECT.CREATED").await;
    rx.wait_for("each event at both endpoints", |ds| {
        more.iter().all(|id| {
            ds.iter()
                .filter(|d| &d.id == id && d.answered == 200)
                .count()
                == 2
        })
    })
    .await;
    relay.stop().await.unwrap();
    for id in ids.iter().chain(&more) {
        assert_eq!(row_state(&client, id).await.0, "COMPLETED");
    }
    assert!(rx.deliveries().iter().all(|d| d.verified));
}
