//! The NATS JetStream harness (`common::nats`) checks itself: one server keeps its stream
//! across a stop and a start, and drops a duplicate `Nats-Msg-Id`; a three-node cluster
//! keeps taking messages after its stream leader is killed.

use std::collections::HashSet;
use std::time::Instant;

use serde_json::json;

use crate::common::nats::*;

/// One server: a duplicate id inside the window is dropped; read_stream returns exactly
/// the two stored messages, and again after the server was stopped and started.
#[tokio::test(flavor = "multi_thread")]
async fn one_server_dedups_and_keeps_its_stream_across_a_restart() {
    let mut server = NatsServer::start().await;
    assert_eq!(server.url(), format!("nats://127.0.0.1:{}", server.port()));
    let client = connect(server.url()).await;
    let info = create_stream(&client, "T", &["t.>"], 1).await;
    assert_eq!(info.config.name, "T");
    assert_eq!(stream_count(&client, "T").await, 0);
    assert!(read_stream(&client, "T").await.is_empty());

    let a = publish(&client, "t.one", "id-a", &json!({"n": 1})).await;
    let b = publish(&client, "t.two", "id-b", &json!({"n": 2})).await;
    let again = publish(&client, "t.one", "id-a", &json!({"n": 3})).await;
    assert!(!a.duplicate && !b.duplicate);
    assert!(again.duplicate, "the second id-a was stored: {again:?}");
    assert_eq!(again.sequence, a.sequence);

    let expected = |got: &[Received]| {
        let seen: Vec<_> = got
            .iter()
            .map(|m| (m.subject.as_str(), m.msg_id.as_deref(), &m.body, m.sequence))
            .collect();
        assert_eq!(
            seen,
            [
                ("t.one", Some("id-a"), &json!({"n": 1}), 1),
                ("t.two", Some("id-b"), &json!({"n": 2}), 2),
            ]
        );
        for m in got {
            assert_eq!(
                m.headers,
                [("Nats-Msg-Id".to_owned(), m.msg_id.clone().unwrap())]
            );
        }
    };
    expected(&read_stream(&client, "T").await);
    assert_eq!(stream_count(&client, "T").await, 2);
    drop(client);

    server.stop().await;
    assert!(!server.is_running());
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", server.port()))
            .await
            .is_err(),
        "stopped, yet accepting"
    );
    server.start_again().await;
    let client = connect(server.url()).await;
    expected(&read_stream(&client, "T").await);
    assert_eq!(stream_count(&client, "T").await, 2);
}

/// Three nodes: an R3 stream takes 100 messages, its leader is killed, and 100 more are
/// acked once a new leader is elected; the stream holds the 200, each id once. The killed
/// node comes back and serves clients.
#[tokio::test(flavor = "multi_thread")]
async fn cluster_keeps_an_r3_stream_through_the_loss_of_its_leader() {
    let started = Instant::now();
    let mut cluster = NatsCluster::start(3).await;
    let elected = started.elapsed();
    let urls = cluster.urls();
    assert_eq!(urls.len(), 3);
    let client = connect(urls.clone()).await;
    let info = create_stream(&client, "C", &["c.>"], 3).await;
    assert_eq!(info.config.num_replicas, 3);

    for n in 0..100 {
        publish(&client, "c.first", &format!("id-{n}"), &json!({"n": n})).await;
    }
    assert_eq!(stream_count(&client, "C").await, 100);

    let leader = stream_leader(&client, "C").await;
    let killed = cluster.index_of(&leader).expect("the leader is a node");
    let before_kill = Instant::now();
    cluster.kill(killed).await;

    for n in 100..200 {
        publish(&client, "c.second", &format!("id-{n}"), &json!({"n": n})).await;
    }
    let republished = before_kill.elapsed();

    let got = read_stream(&client, "C").await;
    assert_eq!(got.len(), 200);
    let ids: HashSet<_> = got.iter().filter_map(|m| m.msg_id.clone()).collect();
    assert_eq!(ids.len(), 200, "ids are unique");
    assert!((0..200).all(|n| ids.contains(&format!("id-{n}"))));
    assert!(got.windows(2).all(|w| w[0].sequence < w[1].sequence));
    for m in &got {
        let n = m.body["n"].as_u64().unwrap();
        assert_eq!(m.msg_id.as_deref(), Some(format!("id-{n}").as_str()));
        assert_eq!(m.subject, if n < 100 { "c.first" } else { "c.second" });
    }
    assert_eq!(stream_count(&client, "C").await, 200);

    cluster.restart(killed).await;
    let back = connect(urls[killed].as_str()).await;
    assert_eq!(stream_count(&back, "C").await, 200);
    eprintln!(
        "cluster: meta leader after {elected:?}; leader {leader} killed, 100 publishes \
         acked after {republished:?}"
    );
}
