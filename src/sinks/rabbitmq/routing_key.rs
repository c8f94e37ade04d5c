//! The routing key a RabbitMQ sink publishes an event with, from a template such as
//! `outbox.{org_id}.{event_type}`.
//!
//! A topic exchange splits a routing key into `.`-separated words and its bindings match
//! them with `*` (one word) and `#` (any number), so values are made safe as for a NATS
//! subject: every placeholder but `{event_type}` is exactly one word, `{event_type}` keeps
//! its dots (`PROJECT.UPDATED` gives `outbox.org_1.PROJECT.UPDATED`, bound by
//! `outbox.*.PROJECT.#`), and anything else (whitespace, `*`, `#`, control characters,
//! non-ASCII, and `%` itself) is written `%XX` per UTF-8 byte. A missing (NULL) or empty
//! value is `_`. Direct and headers exchanges take the same keys; fanout ignores them.

use crate::sinks::template::{self, Syntax};

/// A routing key template (see [`template::Template`]).
pub type Template = template::Template<RoutingKey>;

/// AMQP 0-9-1 carries a routing key as a short string: at most 255 bytes. An event whose
/// key would be longer is dead-lettered.
pub const MAX_KEY_LEN: usize = 255;

/// The syntax of an AMQP routing key (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoutingKey;

impl Syntax for RoutingKey {
    const LITERAL_RULE: &'static str = "a routing key (printable ASCII, no spaces or wildcards)";

    fn literal_char(c: char) -> bool {
        literal_char(c)
    }

    fn escape(value: &str, field: &'static str) -> String {
        template::escape_token(value, field == "event_type", literal_char)
    }

    /// Empty words are allowed (and an empty key: a fanout exchange needs none); only the
    /// length is checked, values being at least one character each.
    fn check(sample: &str, text: &str) -> Result<(), String> {
        if sample.len() > MAX_KEY_LEN {
            return Err(format!(
                "{text:?}: a routing key is at most {MAX_KEY_LEN} bytes"
            ));
        }
        Ok(())
    }
}

/// Printable ASCII but the wildcards of topic bindings.
fn literal_char(c: char) -> bool {
    c.is_ascii_graphic() && !matches!(c, '*' | '#')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;

    fn event(org: Option<&str>, entity_id: Option<&str>) -> Event {
        Event {
            id: "e1".into(),
            org_id: org.map(Into::into),
            entity_type: Some("Project".into()),
            entity_id: entity_id.map(Into::into),
            ..Event::default()
        }
    }

    #[test]
    fn values_are_single_words_and_the_type_keeps_its_dots() {
        let t = Template::parse("outbox.{org_id}.{event_type}").unwrap();
        assert_eq!(
            t.render(&event(Some("org_1"), None), "PROJECT.UPDATED"),
            "outbox.org_1.PROJECT.UPDATED"
        );
        // A dot, the wildcards, a space and % in a value are escaped; NULL is `_`.
        assert_eq!(
            t.render(&event(Some("a.b #*%"), None), "T"),
            "outbox.a%2Eb%20%23%2A%25.T"
        );
        assert_eq!(t.render(&event(None, None), "T"), "outbox._.T");
        // A type's dots stay unless they would make an empty word.
        assert_eq!(
            t.render(&event(Some("o"), None), ".A..B."),
            "outbox.o.%2EA%2E%2EB%2E"
        );
        let t = Template::parse("{entity_type}:{entity_id}").unwrap();
        assert_eq!(t.render(&event(None, Some("ü")), "T"), "Project:%C3%BC");
        // A fanout exchange needs no key.
        assert_eq!(
            Template::parse("").unwrap().render(&event(None, None), "T"),
            ""
        );
    }

    #[test]
    fn bad_templates_say_why() {
        for (text, says) in [
            ("outbox.{org}", "unknown placeholder {org}"),
            ("outbox.#", "cannot be part of a routing key"),
            ("outbox.*.{event_type}", "cannot be part of a routing key"),
            ("outbox {event_type}", "cannot be part of a routing key"),
        ] {
            let e = Template::parse(text).unwrap_err();
            assert!(e.contains(says), "{text:?}: {e}");
        }
        let long = "k".repeat(MAX_KEY_LEN + 1);
        assert!(Template::parse(&long).unwrap_err().contains("at most 255"));
    }
}
