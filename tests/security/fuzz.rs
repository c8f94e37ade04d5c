//! Property tests: the config parser and the envelope and signature builder take whatever
//! they are given without panicking. Case counts are modest so the suite stays quick on a
//! small machine; a failure prints the smallest input proptest could shrink it to.

use axum::http::{HeaderMap, HeaderValue};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use outbox_relay::config::{Config, Overrides};
use outbox_relay::deliver::signature::SigningKeys;
use outbox_relay::event::ClaimedEvent;
use outbox_relay::secret::Secret;
use proptest::prelude::*;
use serde::Deserialize;
use serde_json::value::RawValue;

fn cases(n: u32) -> ProptestConfig {
    ProptestConfig {
        cases: n,
        // Shrunk failures are printed; nothing is written into the source tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---- the config parser ----------------------------------------------------------------

/// A password planted in generated database URLs: no error message may repeat it.
const PLANTED_PASSWORD: &str = "pw-Planted-7f3c";

/// Values that sit on the edges of what each key accepts.
const ODD_STRINGS: &[&str] = &[
    "",
    " ",
    "0s",
    "1ns",
    "30s",
    "7d",
    "-1s",
    "18446744073709551616s",
    "99999999999999999999y",
    "off",
    "none",
    "entity",
    "public",
    "OutboxEvent",
    r#"x"; DROP TABLE y; --"#,
    "\0",
    "\u{202e}evil",
    "e\u{301}",
    "😀",
    "env:",
    "env:PATH",
    "env:OUTBOX_RELAY_SURELY_UNSET_VAR",
    "file:",
    "file:/dev/null",
    "file:/dev/zero",
    "file:/nonexistent/secret",
    "file:/",
    "whsec_",
    "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw whsec_%%%",
    "whsec_%%%",
    "http://",
    "http://127.0.0.1:0/hook",
    "https://[::1]:99999/x",
    "ftp://x",
    "javascript:alert(1)",
    "postgres://",
    "postgres://u@[::1",
    "host=/tmp port=99999999",
    "127.0.0.1:0",
    "[::]:70000",
    "0.0.0.0:9470",
    "PROJECT.*",
    "[",
    "{a,b",
    "**",
];

/// What a key holds, so most generated values have the right type and reach validation.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Text,
    /// A database URL, often with a password planted in it.
    Url,
    /// A humantime duration, mostly well formed (so the rest of the file gets checked too).
    Duration,
    Number,
    Flag,
    Globs,
}

/// Durations from zero to beyond what `Duration` holds.
const DURATIONS: &[&str] = &[
    "0s",
    "1ns",
    "999ms",
    "1s",
    "30s",
    "1h",
    "7d",
    "500000y",
    "584942417355y",
    "18446744073709551615s",
];

const TOP_KEYS: &[(&str, Kind)] = &[
    ("database_url", Kind::Url),
    ("schema", Kind::Text),
    ("table", Kind::Text),
    ("poll_interval", Kind::Duration),
    ("batch_size", Kind::Number),
    ("max_attempts", Kind::Number),
    ("lease", Kind::Duration),
    ("backoff_initial", Kind::Duration),
    ("backoff_max", Kind::Duration),
    ("retention", Kind::Text),
    ("listen", Kind::Flag),
    ("ordering", Kind::Text),
    ("shutdown_timeout", Kind::Duration),
];
const HTTP_KEYS: &[(&str, Kind)] = &[("listen", Kind::Text), ("admin_token", Kind::Text)];
const SSE_KEYS: &[(&str, Kind)] = &[
    ("enabled", Kind::Flag),
    ("token_secret", Kind::Text),
    ("heartbeat", Kind::Duration),
];
const WEBHOOK_KEYS: &[(&str, Kind)] = &[
    ("name", Kind::Text),
    ("url", Kind::Text),
    ("types", Kind::Globs),
    ("secret", Kind::Text),
    ("timeout", Kind::Duration),
    ("max_in_flight", Kind::Number),
];

fn odd_string() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::sample::select(ODD_STRINGS).prop_map(str::to_owned),
        1 => any::<String>(),
        1 => "[a-z_]{1,70}",
    ]
}

fn odd_integer() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(0i64),
        Just(-1),
        Just(1),
        Just(64),
        Just(10_000),
        Just(10_001),
        Just(i64::from(u32::MAX) + 1),
        Just(i64::MAX),
        Just(i64::MIN),
        any::<i64>(),
    ]
}

/// Any TOML value, nested a little.
fn toml_value() -> impl Strategy<Value = toml::Value> {
    let leaf = prop_oneof![
        4 => odd_string().prop_map(toml::Value::String),
        2 => odd_integer().prop_map(toml::Value::Integer),
        1 => any::<f64>().prop_map(toml::Value::Float),
        1 => any::<bool>().prop_map(toml::Value::Boolean),
    ];
    leaf.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(toml::Value::Array),
            proptest::collection::btree_map("[a-z_]{1,8}", inner, 0..3)
                .prop_map(|m| toml::Value::Table(m.into_iter().collect())),
        ]
    })
}

/// A value for a key of `kind`: mostly of its type, sometimes anything at all.
fn value_of(kind: Kind) -> BoxedStrategy<toml::Value> {
    let right = match kind {
        Kind::Text => odd_string().prop_map(toml::Value::String).boxed(),
        Kind::Url => prop_oneof![
            2 => "[ -~]{0,20}".prop_map(|rest| format!("postgres://u:{PLANTED_PASSWORD}@{rest}")),
            1 => odd_string(),
        ]
        .prop_map(toml::Value::String)
        .boxed(),
        Kind::Duration => prop_oneof![
            3 => proptest::sample::select(DURATIONS).prop_map(str::to_owned),
            1 => odd_string(),
        ]
        .prop_map(toml::Value::String)
        .boxed(),
        Kind::Number => odd_integer().prop_map(toml::Value::Integer).boxed(),
        Kind::Flag => any::<bool>().prop_map(toml::Value::Boolean).boxed(),
        Kind::Globs => proptest::collection::vec(odd_string().prop_map(toml::Value::String), 0..3)
            .prop_map(toml::Value::Array)
            .boxed(),
    };
    prop_oneof![9 => right, 1 => toml_value()].boxed()
}

/// A table with some of `keys` and, now and then, a key nobody knows.
fn table_of(keys: &'static [(&'static str, Kind)]) -> impl Strategy<Value = toml::Table> {
    let entry = prop_oneof![
        12 => proptest::sample::select(keys)
            .prop_flat_map(|(k, kind)| (Just(k.to_owned()), value_of(kind))),
        1 => ("[a-z_.]{1,12}", toml_value()),
    ];
    proptest::collection::vec(entry, 0..7).prop_map(|e| e.into_iter().collect())
}

/// A whole config document: top-level keys, maybe `[http]`, `[sse]` and `[[webhook]]`s.
fn toml_document() -> impl Strategy<Value = String> {
    (
        table_of(TOP_KEYS),
        proptest::option::of(table_of(HTTP_KEYS)),
        proptest::option::of(table_of(SSE_KEYS)),
        proptest::collection::vec(table_of(WEBHOOK_KEYS), 0..3),
    )
        .prop_map(|(mut doc, http, sse, webhooks)| {
            if let Some(t) = http {
                doc.insert("http".into(), toml::Value::Table(t));
            }
            if let Some(t) = sse {
                doc.insert("sse".into(), toml::Value::Table(t));
            }
            if !webhooks.is_empty() {
                let hooks = webhooks.into_iter().map(toml::Value::Table).collect();
                doc.insert("webhook".into(), toml::Value::Array(hooks));
            }
            toml::to_string(&doc).expect("any table serialises")
        })
}

/// The contract's example, for mutation.
const EXAMPLE: &str = r#"database_url = "postgres://relay@db/app"
schema = "public"
table = "OutboxEvent"
poll_interval = "30s"
batch_size = 100
retention = "7d"
[http]
listen = "127.0.0.1:9470"
[sse]
enabled = true
token_secret = "a-long-random-key"
[[webhook]]
name = "billing"
url = "https://billing.internal/hooks/outbox"
types = ["PROJECT.*", "INVOICE.CREATED"]
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
timeout = "10s"
"#;

/// Parses `text`; the result is a config or an error that names a key and says what is wrong,
/// never a panic, and an error never repeats a secret.
fn check_config(text: &str) {
    let Err(e) = Config::from_toml(text, &Overrides::default()) else {
        return;
    };
    assert!(!e.key.is_empty() && !e.message.is_empty(), "{e:?}");
    let shown = e.to_string();
    assert!(
        !shown.contains(PLANTED_PASSWORD),
        "leaked a password: {shown}"
    );
    if let Ok(path) = std::env::var("PATH") {
        assert!(
            !(text.contains("env:PATH") && shown.contains(&path)),
            "leaked a secret read from the environment: {shown}"
        );
    }
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn the_config_parser_never_panics_on_arbitrary_text(text in any::<String>()) {
        check_config(&text);
    }

    #[test]
    fn the_config_parser_never_panics_on_the_example_with_bytes_spliced_in(
        at in 0..EXAMPLE.len(),
        cut in 0usize..8,
        insert in prop_oneof![any::<String>(), proptest::sample::select(ODD_STRINGS).prop_map(str::to_owned)],
    ) {
        let at = (0..=at).rev().find(|i| EXAMPLE.is_char_boundary(*i)).unwrap_or(0);
        let end = (at + cut).min(EXAMPLE.len());
        let end = (end..=EXAMPLE.len()).find(|i| EXAMPLE.is_char_boundary(*i)).unwrap();
        check_config(&format!("{}{insert}{}", &EXAMPLE[..at], &EXAMPLE[end..]));
    }

    #[test]
    fn the_config_parser_never_panics_on_any_toml_of_known_and_unknown_keys(
        text in toml_document()
    ) {
        check_config(&text);
    }
}

// ---- the envelope and its signature --------------------------------------------------

/// JSON string contents, written as they could appear in a payload column: escapes for lone
/// surrogates, NUL and control characters, direction marks, emoji raw and as surrogate pairs,
/// combining characters, and arbitrary text escaped by serde_json.
fn json_string() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::sample::select(
            &[
                r#""\ud800""#,
                r#""\udfff""#,
                r#""\udc00\ud800""#,
                r#""\u0000""#,
                r#""a\u0000b""#,
                r#""\u001f\b\f\n\r\t\/\\\"""#,
                "\"\u{200f}\u{202e}\u{2066}rtl\u{2069}\"",
                "\"\u{2028}\u{2029}\"",
                r#""\ud83d\ude00""#,
                "\"😀👩‍👩‍👧‍👦\"",
                "\"e\u{301}\u{302}\u{303}\u{304}\"",
                "\"\u{feff}\"",
                r#""\uFFFF\uFFFE""#,
            ][..]
        )
        .prop_map(str::to_owned),
        any::<String>().prop_map(|s| serde_json::to_string(&s).unwrap()),
    ]
}

/// JSON numbers beyond what f64 and i64 hold.
fn json_number() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::sample::select(
            &[
                "1e400",
                "-1e400",
                "1E-400",
                "-0",
                "-0.0",
                "0e0",
                "0.0e-0",
                "1.7976931348623157e309",
                "123456789012345678901234567890.123456789e-99999",
            ][..]
        )
        .prop_map(str::to_owned),
        "-?[1-9][0-9]{0,299}",
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| f.to_string()),
        any::<i64>().prop_map(|i| i.to_string()),
    ]
}

/// JSON whitespace, including the line breaks a `json` or `text` column keeps.
fn ws() -> impl Strategy<Value = String> {
    "[ \t\r\n]{0,2}"
}

/// JSON text as a payload column may hold it.
fn json_text() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        json_string(),
        json_number(),
        Just("true".to_owned()),
        Just("false".to_owned()),
        Just("null".to_owned()),
    ];
    let value = leaf.prop_recursive(6, 64, 6, |inner| {
        prop_oneof![
            proptest::collection::vec((ws(), inner.clone()), 0..6).prop_map(|items| {
                let items: Vec<String> = items.into_iter().map(|(w, v)| w + &v).collect();
                format!("[{}]", items.join(","))
            }),
            proptest::collection::vec((json_string(), ws(), inner), 0..6).prop_map(|members| {
                let members: Vec<String> = members
                    .into_iter()
                    .map(|(k, w, v)| format!("{k}:{w}{v}"))
                    .collect();
                format!("{{{}}}", members.join(","))
            }),
        ]
    });
    (ws(), value, ws()).prop_map(|(a, v, b)| a + &v + &b)
}

/// The envelope as a receiver reads it, `data` kept as the exact bytes sent.
#[derive(Deserialize)]
pub struct Received<'a> {
    pub id: String,
    #[serde(rename = "type")]
    event_type: String,
    timestamp: String,
    org_id: Option<String>,
    entity_type: Option<String>,
    entity_id: Option<String>,
    attempt: Option<u32>,
    #[serde(borrow)]
    pub data: &'a RawValue,
}

/// Builds the webhook body for `ev`, signs it with `secret`, and checks what a receiver
/// would: the body is JSON, every field is the row's, `data` is the payload byte for byte,
/// and the signature verifies with the reference implementation.
fn check_delivery(ev: &ClaimedEvent, secret: &str) {
    let (event_type, data) = ev.validate().expect("a valid JSON payload is deliverable");
    let body = ev.envelope(event_type, &data, Some(ev.attempt()));
    let got: Received = serde_json::from_slice(&body).expect("the envelope is JSON");
    let payload = ev.payload.as_deref().unwrap_or("null");
    assert_eq!(
        got.data.get(),
        payload.trim_matches([' ', '\t', '\r', '\n'])
    );
    assert_eq!(
        (
            &got.id,
            &got.event_type,
            &got.org_id,
            &got.entity_type,
            &got.entity_id
        ),
        (
            &ev.id,
            ev.event_type.as_ref().unwrap(),
            &ev.org_id,
            &ev.entity_type,
            &ev.entity_id
        )
    );
    assert_eq!(got.attempt, Some(ev.attempt()));
    assert!(got.timestamp.ends_with('Z'), "{}", got.timestamp);

    let keys = SigningKeys::parse(&Secret::new(secret)).unwrap();
    let now = chrono::Utc::now().timestamp();
    let mut headers = HeaderMap::new();
    headers.insert("webhook-id", HeaderValue::from_str(&ev.id).unwrap());
    headers.insert("webhook-timestamp", HeaderValue::from(now));
    let signature = keys.sign(&ev.id, now, &body);
    headers.insert(
        "webhook-signature",
        HeaderValue::from_str(&signature).unwrap(),
    );
    for key in secret.split(' ') {
        standardwebhooks::Webhook::new(key)
            .unwrap()
            .verify(&body, &headers)
            .unwrap_or_else(|e| panic!("{key} does not verify: {e:?}"));
    }
}

/// One `whsec_` secret, or two while rotating.
fn secrets() -> impl Strategy<Value = String> {
    let one = proptest::collection::vec(any::<u8>(), 1..64)
        .prop_map(|k| format!("whsec_{}", B64.encode(k)));
    proptest::collection::vec(one, 1..3).prop_map(|s| s.join(" "))
}

fn event(payload: Option<String>) -> impl Strategy<Value = ClaimedEvent> {
    (
        "[A-Za-z0-9_-]{1,40}",
        any::<String>(),
        proptest::option::of(any::<String>()),
        proptest::option::of(any::<String>()),
        proptest::option::of(any::<String>()),
        any::<i32>(),
        any::<i64>(),
    )
        .prop_map(
            move |(id, t, org, et, eid, retries, created)| ClaimedEvent {
                id,
                event_type: Some(t),
                org_id: org,
                entity_type: et,
                entity_id: eid,
                payload: payload.clone(),
                retry_count: retries,
                created_us: created,
                ..ClaimedEvent::default()
            },
        )
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn any_json_payload_is_enveloped_byte_for_byte_and_signed_verifiably(
        ev in json_text().prop_flat_map(|p| event(Some(p))),
        secret in secrets(),
    ) {
        check_delivery(&ev, &secret);
    }

    #[test]
    fn text_that_is_not_json_is_refused_without_a_panic(
        ev in any::<String>()
            .prop_filter("not JSON", |s| serde_json::from_str::<serde::de::IgnoredAny>(s).is_err())
            .prop_flat_map(|p| event(Some(p)))
    ) {
        prop_assert!(ev.validate().is_err());
    }
}

/// `depth` nested arrays around `inner`, and objects around that.
pub fn nested(depth: usize, inner: &str) -> String {
    let half = depth / 2;
    format!(
        "{}{}{inner}{}{}",
        "{\"a\":".repeat(half),
        "[".repeat(depth - half),
        "]".repeat(depth - half),
        "}".repeat(half)
    )
}

#[test]
fn payloads_nested_10_000_deep_and_of_5_mb_are_enveloped_and_signed() {
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let odd = r#"["\ud800", "\u0000", "\u202e😀e\u0301", 1e400, -0]"#;
    let mb5 = 5 << 20;
    let payloads = [
        nested(10_000, odd),
        nested(100_000, "1"),
        format!("[{}]", vec![odd; mb5 / odd.len()].join(",")),
        serde_json::to_string(&"\u{202e}😀e\u{301}".repeat(mb5 / 12)).unwrap(),
        format!("[{}]", vec!["9".repeat(300); mb5 / 301].join(",")),
    ];
    for p in payloads {
        let ev = ClaimedEvent {
            id: "evt_deep".into(),
            event_type: Some("DEEP.EVENT".into()),
            payload: Some(p),
            ..ClaimedEvent::default()
        };
        check_delivery(&ev, secret);
    }
}
