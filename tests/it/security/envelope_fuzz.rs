//! Property tests over the envelope and signature builder: payloads with odd Unicode
//! (lone surrogate escapes, NUL, direction marks, emoji, combining characters), numbers
//! beyond f64 and i64, nesting, line breaks, 100 000 levels and 5 MB. The envelope is JSON
//! whose `data` is the payload byte for byte, and its signature verifies with the
//! `standardwebhooks` reference crate.

use axum::http::{HeaderMap, HeaderValue};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use outbox_relay::event::{Claimed, Event};
use outbox_relay::secret::Secret;
use outbox_relay::sinks::webhook::signature::SigningKeys;
use proptest::prelude::*;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::cases;

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
fn check_delivery(claimed: &Claimed, secret: &str) {
    let ev = &claimed.event;
    let (event_type, data) = ev.validate().expect("a valid JSON payload is deliverable");
    let body = ev.envelope(event_type, &data, Some(claimed.attempt()));
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
    assert_eq!(got.attempt, Some(claimed.attempt()));
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

fn event(payload: Option<String>) -> impl Strategy<Value = Claimed> {
    (
        "[A-Za-z0-9_-]{1,40}",
        any::<String>(),
        proptest::option::of(any::<String>()),
        proptest::option::of(any::<String>()),
        proptest::option::of(any::<String>()),
        any::<i32>(),
        any::<i64>(),
    )
        .prop_map(move |(id, t, org, et, eid, retries, created)| Claimed {
            event: Event {
                id,
                event_type: Some(t),
                org_id: org,
                entity_type: et,
                entity_id: eid,
                payload: payload.clone(),
                created_us: created,
            },
            retry_count: retries,
            delivered_to: Vec::new(),
            token: uuid::Uuid::nil(),
        })
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
        prop_assert!(ev.event.validate().is_err());
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
        let ev = Claimed {
            event: Event {
                id: "evt_deep".into(),
                event_type: Some("DEEP.EVENT".into()),
                payload: Some(p),
                ..Event::default()
            },
            retry_count: 0,
            delivered_to: Vec::new(),
            token: uuid::Uuid::nil(),
        };
        check_delivery(&ev, secret);
    }
}
