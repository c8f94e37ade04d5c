//! Clients that hold connections (issue 15.1): idle, trickling and kept-alive connections
//! are closed after `http.header_timeout`; past `http.max_connections` and
//! `sse.max_subscribers` new clients get a 503, and delivery goes on meanwhile.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::receiver::Receiver;
use crate::common::sse::*;
use crate::common::*;

/// Longer than any header timeout these tests set, by far: a connection still open after
/// this was not going to be closed.
const CLOSED_WITHIN: Duration = Duration::from_secs(20);

/// Reads until the server closes the connection (or resets it); what it sent meanwhile.
/// None if still open after `limit`.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Option<String> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&seen).into_owned()),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_trickling_and_kept_alive_connections_are_closed_after_the_header_timeout() {
    let db = TestDb::new().await;
    let relay = db
        .start_relay("[http]\nlisten = \"127.0.0.1:0\"\nheader_timeout = \"1s\"\n")
        .await
        .1;
    let addr = relay.http_addr;

    // Sends nothing at all.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    // Sends a request line, then a header line every 300 ms, never the blank line.
    let mut trickle = TcpStream::connect(addr).await.unwrap();
    trickle
        .write_all(b"GET /healthz HTTP/1.1\r\n")
        .await
        .unwrap();
    let trickling = tokio::spawn(async move {
        for i in 0..60 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let line = format!("x-slow-{i}: 1\r\n");
            if trickle.write_all(line.as_bytes()).await.is_err() {
                return Some(i); // the server closed it
            }
        }
        None
    });
    // One request answered, then silence on the kept-alive connection.
    let mut kept = TcpStream::connect(addr).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();

    let answered = read_until_closed(&mut kept, CLOSED_WITHIN)
        .await
        .expect("an idle kept-alive connection is closed");
    assert!(
        answered.starts_with("HTTP/1.1 200") && answered.ends_with("ok\n"),
        "it was answered first: {answered:?}"
    );
    let said = read_until_closed(&mut idle, CLOSED_WITHIN)
        .await
        .expect("a connection that sends nothing is closed");
    assert!(!said.starts_with("HTTP/1.1 2"), "{said:?}");
    let lines = trickling.await.unwrap();
    assert!(
        lines.is_some(),
        "a client trickling header lines for 18 s was never cut off"
    );
    // The server still serves.
    let (status, body) = http_get(&format!("{}/healthz", relay.http_url())).await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_connections_new_clients_get_503_and_delivery_goes_on() {
    const CAP: usize = 20;
    let db = TestDb::new().await;
    let rx = Receiver::start().await;
    let (_, relay) = db
        .start_relay(&format!(
            "{}[http]\nlisten = \"127.0.0.1:0\"\nmax_connections = {CAP}\nheader_timeout = \"10m\"\n",
            webhook_toml("main", &rx.url)
        ))
        .await;
    let addr = relay.http_addr;
    let mut held = Vec::new();
    for _ in 0..CAP {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    // Connections are accepted in order: this one comes after every held one.
    let mut over = TcpStream::connect(addr).await.unwrap();
    let answer = read_until_closed(&mut over, CLOSED_WITHIN)
        .await
        .expect("a connection over the cap is closed at once");
    assert!(
        answer.starts_with("HTTP/1.1 503") && answer.contains("http.max_connections"),
        "{answer:?}"
    );
    // The relay's own connections are not the clients' to take: delivery goes on.
    let client = db.client().await;
    let ids = insert_events(&client, 10, "WHILE_FULL").await;
    rx.wait_accepted(&ids).await;

    drop(held);
    let url = format!("{}/metrics", relay.http_url());
    wait_until("a place frees once the held connections close", || async {
        http_get(&url).await.0 == 200
    })
    .await;
    let (_, metrics) = http_get(&url).await;
    let refused = metrics
        .lines()
        .find(|l| l.starts_with("outbox_http_refused_total{limit=\"connections\"}"))
        .expect("the refusal is counted");
    assert!(!refused.ends_with(" 0"), "{refused}");
    wait_until("all ten recorded COMPLETED", || async {
        count_status(&client, "COMPLETED").await == 10
    })
    .await;
    relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_subscribers_new_streams_get_503_until_one_leaves() {
    let db = TestDb::new().await;
    let relay = db
        .start_relay(&format!("{}max_subscribers = 2\n", sse_toml("200ms")))
        .await
        .1;
    let base = relay.http_url();
    let first = connect(&base, Some(&token("org_a", None)), "", None)
        .await
        .unwrap();
    let _second = connect(&base, Some(&token("org_b", None)), "", None)
        .await
        .unwrap();
    let refused = connect(&base, Some(&token("org_c", None)), "", None)
        .await
        .err()
        .expect("a third stream is refused");
    assert_eq!(refused.status, 503);
    assert!(
        refused.body.contains("sse.max_subscribers"),
        "{}",
        refused.body
    );
    // Other routes are not SSE streams: still served.
    assert_eq!(http_get(&format!("{base}/healthz")).await.0, 200);

    drop(first);
    wait_until("a stream is accepted once one left", || async {
        connect(&base, Some(&token("org_c", None)), "", None)
            .await
            .is_ok()
    })
    .await;
    relay.stop().await.unwrap();
}
