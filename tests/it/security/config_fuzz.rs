//! Property tests over the config parser: arbitrary text, the contract's example with bytes
//! spliced in, and TOML documents of known and unknown keys with values of every type. The
//! parser returns a config or an error naming a key, never panics, and never repeats a secret.

use outbox_relay::config::{Config, Overrides};
use proptest::prelude::*;

use super::cases;

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
    "http://2130706433/",
    "http://[::ffff:169.254.169.254]/",
    "10.0.0.0/8",
    "10.1.2.3/8",
    "fe80::/10",
    "::1",
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
const EGRESS_KEYS: &[(&str, Kind)] = &[
    ("deny_private_addresses", Kind::Flag),
    ("allow_networks", Kind::Globs),
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

/// A whole config document: top-level keys, maybe `[http]`, `[sse]`, `[egress]` and
/// `[[webhook]]`s.
fn toml_document() -> impl Strategy<Value = String> {
    (
        table_of(TOP_KEYS),
        proptest::option::of(table_of(HTTP_KEYS)),
        proptest::option::of(table_of(SSE_KEYS)),
        proptest::option::of(table_of(EGRESS_KEYS)),
        proptest::collection::vec(table_of(WEBHOOK_KEYS), 0..3),
    )
        .prop_map(|(mut doc, http, sse, egress, webhooks)| {
            for (name, table) in [("http", http), ("sse", sse), ("egress", egress)] {
                if let Some(t) = table {
                    doc.insert(name.into(), toml::Value::Table(t));
                }
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
