//! SSE token attacks against a running relay: tokens are built by hand (base64url of the
//! header and claims, then an HMAC) so they can be anything an attacker would send, not only
//! what a JWT library agrees to write.

use std::collections::HashMap;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::sse::*;
use crate::common::*;

/// How long a stray message would take to show up once delivery is known to be flowing.
const QUIET: Duration = Duration::from_millis(300);

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// `base64url(header).base64url(claims).base64url(sign(those two))`. Header and claims are
/// JSON text as written, so duplicate keys and wrong types are possible.
fn forge(header: &str, claims: &str, sign: fn(&[u8]) -> Vec<u8>) -> String {
    let signed = format!("{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()));
    let signature = sign(signed.as_bytes());
    format!("{signed}.{}", b64(&signature))
}

fn mac<M: Mac + KeyInit>(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut m = <M as Mac>::new_from_slice(key).unwrap();
    m.update(msg);
    m.finalize().into_bytes().to_vec()
}

/// HMACs with the relay's own key.
fn hs256(msg: &[u8]) -> Vec<u8> {
    mac::<Hmac<sha2::Sha256>>(SSE_SECRET.as_bytes(), msg)
}
fn hs384(msg: &[u8]) -> Vec<u8> {
    mac::<Hmac<sha2::Sha384>>(SSE_SECRET.as_bytes(), msg)
}
fn hs512(msg: &[u8]) -> Vec<u8> {
    mac::<Hmac<sha2::Sha512>>(SSE_SECRET.as_bytes(), msg)
}
fn unsigned(_: &[u8]) -> Vec<u8> {
    Vec::new()
}
fn other_key(msg: &[u8]) -> Vec<u8> {
    mac::<Hmac<sha2::Sha256>>(b"attacker's own key", msg)
}

const HS256: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Claims for `org` expiring `ttl` seconds from now (negative: in the past).
fn claims(org: &str, ttl: i64) -> String {
    format!(r#"{{"org_id":"{org}","exp":{}}}"#, now() + ttl)
}

/// Tokens that must be refused with 401, each with what it tries.
fn refused_tokens() -> Vec<(&'static str, String)> {
    let valid = claims("org_a", 3600);
    let far = now() + 3600;
    vec![
        (
            "alg none, unsigned",
            forge(r#"{"alg":"none","typ":"JWT"}"#, &valid, unsigned),
        ),
        ("alg None", forge(r#"{"alg":"None"}"#, &valid, unsigned)),
        ("alg NONE", forge(r#"{"alg":"NONE"}"#, &valid, unsigned)),
        (
            "alg none carrying a valid HS256 signature",
            forge(r#"{"alg":"none"}"#, &valid, hs256),
        ),
        ("HS256 with the signature cut off", {
            let t = forge(HS256, &valid, hs256);
            t[..t.rfind('.').unwrap() + 1].to_owned()
        }),
        ("HS256 with no signature part", {
            let t = forge(HS256, &valid, hs256);
            t[..t.rfind('.').unwrap()].to_owned()
        }),
        (
            "HS384 with the relay's key",
            forge(r#"{"alg":"HS384","typ":"JWT"}"#, &valid, hs384),
        ),
        (
            "HS512 with the relay's key",
            forge(r#"{"alg":"HS512","typ":"JWT"}"#, &valid, hs512),
        ),
        (
            "RS256 header, HMAC-signed with the key as if it were a public key",
            forge(r#"{"alg":"RS256","typ":"JWT"}"#, &valid, hs256),
        ),
        (
            "ES256 header, HMAC-signed",
            forge(r#"{"alg":"ES256","typ":"JWT"}"#, &valid, hs256),
        ),
        (
            "a header without alg",
            forge(r#"{"typ":"JWT"}"#, &valid, hs256),
        ),
        (
            "a key id and key URL pointing elsewhere, signed with the attacker's key",
            forge(
                r#"{"alg":"HS256","kid":"../../../dev/null","jku":"http://127.0.0.1:9/keys"}"#,
                &valid,
                other_key,
            ),
        ),
        (
            "expired beyond the 30 s leeway",
            forge(HS256, &claims("org_a", -120), hs256),
        ),
        ("no exp", forge(HS256, r#"{"org_id":"org_a"}"#, hs256)),
        (
            "nbf in the future",
            forge(
                HS256,
                &format!(r#"{{"org_id":"org_a","exp":{far},"nbf":{}}}"#, now() + 600),
                hs256,
            ),
        ),
        (
            "iat in the future",
            forge(
                HS256,
                &format!(r#"{{"org_id":"org_a","exp":{far},"iat":{}}}"#, now() + 600),
                hs256,
            ),
        ),
        (
            "exp 10^18 (no maximum lifetime)",
            forge(
                HS256,
                r#"{"org_id":"org_a","exp":1000000000000000000}"#,
                hs256,
            ),
        ),
        (
            "a lifetime of 2 days (over sse.max_token_lifetime)",
            forge(HS256, &claims("org_a", 2 * 86_400), hs256),
        ),
        (
            "exp as a string",
            forge(
                HS256,
                &format!(r#"{{"org_id":"org_a","exp":"{far}"}}"#),
                hs256,
            ),
        ),
        (
            "no org_id",
            forge(HS256, &format!(r#"{{"exp":{far}}}"#), hs256),
        ),
        (
            "org_id null",
            forge(HS256, &format!(r#"{{"org_id":null,"exp":{far}}}"#), hs256),
        ),
        ("org_id empty", forge(HS256, &claims("", 3600), hs256)),
        (
            "org_id a list of orgs",
            forge(
                HS256,
                &format!(r#"{{"org_id":["org_a","org_b"],"exp":{far}}}"#),
                hs256,
            ),
        ),
        (
            "org_id twice",
            forge(
                HS256,
                &format!(r#"{{"org_id":"org_a","org_id":"org_b","exp":{far}}}"#),
                hs256,
            ),
        ),
        (
            "claims that are not an object",
            forge(HS256, r#"["org_a"]"#, hs256),
        ),
        ("garbage", "garbage".into()),
        ("three empty parts", "..".into()),
        ("not base64", "%%%.%%%.%%%".into()),
        (
            "four parts",
            format!("{}.extra", forge(HS256, &valid, hs256)),
        ),
        ("32 KiB of garbage", "A".repeat(32 * 1024)),
    ]
}

/// Sends a raw HTTP request and returns the status of the answer, or None when the relay
/// closed the connection without one. Writes and reads at once: a server refusing a request
/// it has not finished reading may answer and close before the last byte is sent.
async fn raw_status(addr: std::net::SocketAddr, request: Vec<u8>) -> Option<u16> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&request).await;
        wr
    });
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, rd.read_to_end(&mut answer))
        .await
        .expect("the relay answers or closes an oversized request");
    drop(writer.await);
    let head = String::from_utf8_lossy(&answer);
    head.strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
}

/// The refusal statuses that fit a request too large to read.
fn assert_refused_as_too_large(what: &str, status: Option<u16>) {
    println!("{what}: {status:?}");
    assert!(
        matches!(status, None | Some(400 | 413 | 414 | 431)),
        "{what}: answered {status:?}"
    );
}

async fn status_of(base: &str, token: Option<&str>, query: &str) -> u16 {
    match connect(base, token, query, None).await {
        Ok(_) => 200,
        Err(refused) => {
            // Our own words, never the decoder's (serde's "unknown variant ..., expected one
            // of ...", base64 positions).
            let body = &refused.body;
            if refused.status == 401 {
                assert!(
                    body.starts_with("invalid token: ") || body.starts_with("missing token"),
                    "{body}"
                );
                assert!(
                    !body.contains("variant") && !body.contains("expected"),
                    "{body}"
                );
            }
            refused.status
        }
    }
}

/// One event of `org` of type `t`; returns its id.
async fn publish(client: &tokio_postgres::Client, org: &str, t: &str) -> String {
    client
        .query_one(
            "INSERT INTO \"OutboxEvent\" (event_type, org_id, payload)
             VALUES ($1, $2, '{}') RETURNING id::text",
            &[&t, &org],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_foreign_expired_malformed_and_oversized_tokens_are_refused_and_the_relay_keeps_serving(
) {
    let db = TestDb::new().await;
    let relay = db.start_relay(&sse_toml("15s")).await.1;
    let base = relay.http_url();
    let mut healthy = connect(&base, Some(&token("org_a", None)), "", None)
        .await
        .unwrap();

    // The hand-built tokens are well formed: signed right, the same builder is accepted.
    let fine = forge(HS256, &claims("org_a", 3600), hs256);
    assert_eq!(status_of(&base, Some(&fine), "").await, 200);
    let skewed = forge(HS256, &claims("org_a", -5), hs256);
    assert_eq!(
        status_of(&base, Some(&skewed), "").await,
        200,
        "5 s past exp is within the leeway for clock skew"
    );

    for (what, bad) in refused_tokens() {
        assert_eq!(
            status_of(&base, Some(&bad), "").await,
            401,
            "{what} (header)"
        );
        let query = format!("access_token={}", urlencode(&bad));
        assert_eq!(status_of(&base, None, &query).await, 401, "{what} (query)");
    }
    // A bearer value that is not even text.
    let resp = reqwest::Client::new()
        .get(format!("{base}/v1/events"))
        .header(
            "authorization",
            reqwest::header::HeaderValue::from_bytes(b"Bearer \xff\xfe\x80").unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401, "a non-UTF-8 bearer value");

    // Oversized requests: refused at the HTTP layer, never parsed as a token.
    let huge = forge(HS256, &claims("org_a", 3600), hs256) + &"A".repeat(1 << 20);
    let head = |extra: &str, path: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{extra}\r\n").into_bytes()
    };
    let header = head(&format!("Authorization: Bearer {huge}\r\n"), "/v1/events");
    assert_refused_as_too_large(
        "a 1 MB Authorization header",
        raw_status(relay.http_addr, header).await,
    );
    let query = head("", &format!("/v1/events?access_token={huge}"));
    assert_refused_as_too_large(
        "a 1 MB access_token",
        raw_status(relay.http_addr, query).await,
    );
    let many: String = (0..500).map(|i| format!("X-Pad-{i}: {i}\r\n")).collect();
    let many = head(
        &format!("{many}Authorization: Bearer {fine}\r\n"),
        "/v1/events",
    );
    assert_refused_as_too_large("500 headers", raw_status(relay.http_addr, many).await);

    // Still up, and still serving the subscriber it had: refusals left no subscription.
    assert_eq!(http_get(&format!("{base}/healthz")).await.0, 200);
    // Refused requests hold no subscription; the two accepted above are gone once closed.
    wait_until("only the healthy subscriber left", || {
        let n = relay.sse_subscribers();
        async move { n == 1 }
    })
    .await;
    let client = db.client().await;
    let marker = publish(&client, "org_a", "MARKER").await;
    assert_eq!(healthy.next().await.unwrap().event_id(), marker);
    healthy.assert_quiet(QUIET).await;
    relay.stop().await.unwrap();
}

/// Percent-encodes a token for a query string (base64url needs none; the garbage does).
fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_for_one_org_never_streams_another_orgs_events_whatever_it_asks_for() {
    let db = TestDb::new().await;
    let relay = db.start_relay(&sse_toml("15s")).await.1;
    let base = relay.http_url();
    let client = db.client().await;
    let a = token("org_a", None);

    // org_b's cursor, to hand to org_a's subscriber.
    let mut b = connect(&base, Some(&token("org_b", None)), "", None)
        .await
        .unwrap();
    let b_first = publish(&client, "org_b", "B.ONE").await;
    assert_eq!(b.next().await.unwrap().event_id(), b_first);
    let b_cursor = b.last_id.clone().unwrap();

    // org_b's cursor is not org_a's to use (cursors are signed for their org).
    let refused = connect(&base, Some(&a), "", Some(&b_cursor)).await.err();
    assert_eq!(refused.map(|r| r.status), Some(400), "org_b's cursor");
    // Asking for org_b in the query, and with tokens whose org looks like a pattern: each
    // gets only events whose org_id is exactly its token's.
    let mut asks_b = connect(&base, Some(&a), "org_id=org_b&org=org_b", None)
        .await
        .unwrap();
    let mut wild: Vec<(&str, SseClient)> = Vec::new();
    for org in ["*", "%", "org_%", "org_a*"] {
        let sub = connect(&base, Some(&token(org, None)), "", None)
            .await
            .unwrap();
        wild.push((org, sub));
    }
    let mut plan = Vec::new();
    for i in 0..20 {
        plan.push((["org_a", "org_b", "org_c"][i % 3], "ITEM.CHANGED"));
    }
    let mut sent: HashMap<&str, Vec<String>> = HashMap::new();
    for (org, t) in &plan {
        sent.entry(org)
            .or_default()
            .push(publish(&client, org, t).await);
    }
    let got: Vec<String> = asks_b
        .take(sent["org_a"].len())
        .await
        .iter()
        .map(Message::event_id)
        .collect();
    assert_eq!(
        got, sent["org_a"],
        "org_a's token asking with ?org_id=org_b"
    );
    // Each pattern-like org gets its own literal marker, and nothing before it.
    for (org, sub) in &mut wild {
        let marker = publish(&client, org, "MARKER").await;
        let m = sub.next().await.unwrap();
        assert_eq!(
            (m.event_id(), m.json()["org_id"].clone()),
            (marker, serde_json::json!(org))
        );
    }
    let a_marker = publish(&client, "org_a", "MARKER").await;
    assert_eq!(asks_b.next().await.unwrap().event_id(), a_marker);
    asks_b.assert_quiet(QUIET).await;
    for (_, sub) in &mut wild {
        sub.assert_quiet(QUIET).await;
    }
    relay.stop().await.unwrap();
}

/// Orgs of the load test, and how many subscribers each has.
const LOAD_ORGS: &[(&str, usize)] = &[("org_a", 2), ("org_b", 1), ("org_c", 1), ("org_d", 1)];
/// Publishing connections, each committing its own sequence of transactions.
const PUBLISHERS: i32 = 4;
/// Transactions per publisher, and rows per transaction.
const TRANSACTIONS: i32 = 75;
const ROWS: i32 = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_load_each_subscriber_gets_all_of_its_orgs_events_in_order_and_no_other() {
    let db = TestDb::new().await;
    let relay = db.start_relay(&sse_toml("15s")).await.1;
    let base = relay.http_url();

    // Each reader keeps every message until its org's END marker, which commits last.
    let mut readers = Vec::new();
    for &(org, n) in LOAD_ORGS {
        for _ in 0..n {
            let mut sub = connect(&base, Some(&token(org, None)), "", None)
                .await
                .unwrap();
            readers.push((
                org,
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    loop {
                        let m = sub.next().await.expect("the stream stays open");
                        if m.event == "LOAD.END" {
                            return got;
                        }
                        got.push(m.json());
                    }
                }),
            ));
        }
    }

    // Concurrent publishers; rows of one transaction take orgs in turn, with some rows of
    // no org and of an org nobody subscribed to. Payload {"p": publisher, "n": sequence}.
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let db_url = db.url.clone();
            tokio::spawn(async move {
                let client = outbox_relay::db::connect(&outbox_relay::secret::Secret::new(db_url))
                    .await
                    .unwrap();
                for t in 0..TRANSACTIONS {
                    client
                        .execute(
                            "INSERT INTO \"OutboxEvent\" (event_type, org_id, payload)
                             SELECT 'LOAD.EVENT',
                                    (ARRAY['org_a','org_b','org_c','org_d','org_x',NULL])
                                      [1 + (($1::int * 7 + n) % 6)],
                                    jsonb_build_object('p', $1::int, 'n', n)
                               FROM generate_series($2::int, $2::int + $3::int - 1) n
                              ORDER BY n",
                            &[&p, &(t * ROWS), &ROWS],
                        )
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for p in publishers {
        p.await.unwrap();
    }
    let client = db.client().await;
    for &(org, _) in LOAD_ORGS {
        publish(&client, org, "LOAD.END").await;
    }

    let expected: Vec<(String, i64, i64)> = client
        .query(
            "SELECT org_id, (payload->>'p')::int8, (payload->>'n')::int8 FROM \"OutboxEvent\"
              WHERE event_type = 'LOAD.EVENT' AND org_id IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    for (org, reader) in readers {
        let got = reader.await.unwrap();
        assert!(
            got.iter().all(|e| e["org_id"] == org),
            "{org}'s subscriber got another org's event"
        );
        // All of them: the same (publisher, n) pairs, once each.
        let mut want: Vec<(i64, i64)> = expected
            .iter()
            .filter(|(o, _, _)| o == org)
            .map(|(_, p, n)| (*p, *n))
            .collect();
        let pairs: Vec<(i64, i64)> = got
            .iter()
            .map(|e| {
                (
                    e["data"]["p"].as_i64().unwrap(),
                    e["data"]["n"].as_i64().unwrap(),
                )
            })
            .collect();
        let mut sorted = pairs.clone();
        sorted.sort();
        want.sort();
        assert_eq!(sorted, want, "{org}: every event of its org, once");
        // In order: each publisher's events in the order it committed them.
        for p in 0..i64::from(PUBLISHERS) {
            let ns: Vec<i64> = pairs
                .iter()
                .filter(|(q, _)| *q == p)
                .map(|(_, n)| *n)
                .collect();
            assert!(
                ns.windows(2).all(|w| w[0] < w[1]),
                "{org}: publisher {p} out of order"
            );
        }
    }
    relay.stop().await.unwrap();
}
