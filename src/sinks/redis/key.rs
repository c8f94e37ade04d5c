//! The stream key a Redis sink appends an event to, from a template such as
//! `outbox:{org_id}`, and the key that remembers an event was appended (deduplication).
//!
//! Redis keys may hold any bytes, but a value from an event should not change what a key
//! means to the people and tools that read them: a `:` in an org id would add a level to
//! the `outbox:<org>` hierarchy that key browsers show, `{` and `}` would make a hash tag
//! (Redis Cluster places a key by it), `*`, `?`, `[`, `]` and `\` are patterns to `SCAN
//! MATCH`, and spaces and non-ASCII are awkward in `redis-cli`. So a value keeps only the
//! characters a URL never escapes (`A-Z a-z 0-9 - . _ ~`); anything else is written `%XX`
//! per UTF-8 byte (`%` itself included), so any URL decoder reads it back. A missing
//! (NULL) or empty value is `_`. The template's own text may use any printable ASCII
//! (`:` to separate levels, as is the custom).

use crate::sinks::template::{self, Syntax};

/// A stream key template (see [`template::Template`]).
pub type Template = template::Template<StreamKey>;

/// The longest stream key the relay appends to, in bytes. Redis would take far longer keys
/// (up to 512 MB), but a key made this long by an event's values is a mistake: each
/// stream's key is stored with it, and every command names it. An event whose key would be
/// longer is dead-lettered.
pub const MAX_KEY_LEN: usize = 1024;

/// Where the deduplication keys live (see [`dedup_key`]).
pub const DEDUP_PREFIX: &str = "outbox-relay:dedup:";

/// The syntax of a Redis stream key (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamKey;

impl Syntax for StreamKey {
    const LITERAL_RULE: &'static str = "a stream key (printable ASCII, no spaces)";

    fn literal_char(c: char) -> bool {
        c.is_ascii_graphic()
    }

    fn escape(value: &str, _field: &'static str) -> String {
        escape(value)
    }

    fn check(sample: &str, text: &str) -> Result<(), String> {
        if sample.is_empty() {
            return Err(format!("{text:?}: a stream key must not be empty"));
        }
        if sample.len() > MAX_KEY_LEN {
            return Err(format!(
                "{text:?}: a stream key is at most {MAX_KEY_LEN} bytes"
            ));
        }
        Ok(())
    }
}

/// `value` made safe for a key (see the module doc).
fn escape(value: &str) -> String {
    if value.is_empty() {
        return template::EMPTY_VALUE.to_owned();
    }
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~') {
            out.push(c);
        } else {
            template::push_percent_encoded(&mut out, c);
        }
    }
    out
}

/// The key that says event `id` was appended to `stream`:
/// `outbox-relay:dedup:<stream>:<id>`, the id escaped as a value is. The id then holds no
/// `:`, so the last `:` splits the key and no two (stream, id) pairs share one.
pub fn dedup_key(stream: &str, id: &str) -> String {
    format!("{DEDUP_PREFIX}{stream}:{}", escape(id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;

    fn event(id: &str, org: Option<&str>, entity_id: Option<&str>) -> Event {
        Event {
            id: id.into(),
            org_id: org.map(Into::into),
            entity_type: Some("Project".into()),
            entity_id: entity_id.map(Into::into),
            ..Event::default()
        }
    }

    #[test]
    fn values_are_percent_encoded_but_for_unreserved_characters() {
        let t = Template::parse("outbox:{org_id}:{event_type}").unwrap();
        assert_eq!(
            t.render(&event("e1", Some("org_1"), None), "PROJECT.UPDATED"),
            "outbox:org_1:PROJECT.UPDATED"
        );
        // A level separator, a hash tag, patterns, spaces and % are escaped.
        assert_eq!(
            t.render(&event("e1", Some("a:b {c}*?[x]\\%"), None), "T"),
            "outbox:a%3Ab%20%7Bc%7D%2A%3F%5Bx%5D%5C%25:T"
        );
        // NULL and empty values are `_`; non-ASCII is escaped per UTF-8 byte.
        assert_eq!(t.render(&event("e1", None, None), "T"), "outbox:_:T");
        assert_eq!(t.render(&event("e1", Some(""), None), "T"), "outbox:_:T");
        let t = Template::parse("{entity_type}/{entity_id}#{id}").unwrap();
        assert_eq!(
            t.render(&event("e1", None, Some("ü~")), "T"),
            "Project/%C3%BC~#e1"
        );
    }

    #[test]
    fn bad_templates_say_why() {
        for (text, says) in [
            ("outbox:{org}", "unknown placeholder {org}"),
            ("outbox:{event_type", "without '}'"),
            ("outbox}", "without '{'"),
            ("outbox events", "cannot be part of a stream key"),
            ("outbox:é", "cannot be part of a stream key"),
            ("", "must not be empty"),
        ] {
            let e = Template::parse(text).unwrap_err();
            assert!(e.contains(says), "{text:?}: {e}");
        }
        let long = "k".repeat(MAX_KEY_LEN + 1);
        assert!(Template::parse(&long).unwrap_err().contains("at most 1024"));
    }

    #[test]
    fn dedup_keys_are_unambiguous() {
        assert_eq!(
            dedup_key("outbox:org_1", "0b5e-1"),
            "outbox-relay:dedup:outbox:org_1:0b5e-1"
        );
        // Without escaping these two would share a key.
        assert_ne!(dedup_key("a:b", "c"), dedup_key("a", "b:c"));
        assert_eq!(dedup_key("a", "b:c"), "outbox-relay:dedup:a:b%3Ac");
    }
}
