//! The subject a NATS sink publishes an event to, from a template such as
//! `outbox.{org_id}.{event_type}`.
//!
//! Values are made safe for a subject: every placeholder but `{event_type}` is exactly one
//! token (a `.` in an org id would otherwise split it into two and break subscribers'
//! wildcards); `{event_type}` keeps its dots, since types are dotted by convention
//! (`PROJECT.UPDATED` gives `outbox.org_1.PROJECT.UPDATED`, matched by `outbox.*.PROJECT.>`).
//! Anything else (whitespace, `*`, `>`, control characters, non-ASCII, and `%` itself) is
//! written `%XX` per UTF-8 byte, and so is a dot that would leave an empty token.
//! A missing (NULL) or empty value is `_`.

use crate::sinks::template::{self, Syntax};

/// A subject template (see [`template::Template`]).
pub type Template = template::Template<Subject>;

/// The syntax of a NATS subject (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subject;

impl Syntax for Subject {
    const LITERAL_RULE: &'static str = "a subject (no spaces or wildcards)";

    fn literal_char(c: char) -> bool {
        literal_char(c)
    }

    fn escape(value: &str, field: &'static str) -> String {
        template::escape_token(value, field == "event_type", literal_char)
    }

    /// The values never make an empty token, so the literal text decides.
    fn check(sample: &str, text: &str) -> Result<(), String> {
        if sample.is_empty() || sample.split('.').any(str::is_empty) {
            return Err(format!(
                "{text:?}: a subject's tokens must not be empty (no leading, trailing or double '.')"
            ));
        }
        Ok(())
    }
}

impl Template {
    /// The subjects a stream created for this template takes: a token with a placeholder
    /// becomes `*`, and from `{event_type}` on (its dots make any number of tokens) `>`.
    pub fn stream_subject(&self) -> String {
        const ANY: &str = "\u{0}";
        const TYPE: &str = "\u{1}";
        let sample = self.render_with(|f| if f == "event_type" { TYPE } else { ANY }.to_owned());
        let mut out = Vec::new();
        for token in sample.split('.') {
            if token.contains(TYPE) {
                out.push(">");
                break;
            }
            out.push(if token.contains(ANY) { "*" } else { token });
        }
        out.join(".")
    }
}

/// Characters a subject is made of here: printable ASCII but the wildcards. NATS allows
/// more, but its documentation advises this set, and so every client can subscribe.
fn literal_char(c: char) -> bool {
    c.is_ascii_graphic() && !matches!(c, '*' | '>')
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
    fn renders_values_as_safe_tokens() {
        let t = Template::parse("outbox.{org_id}.{event_type}").unwrap();
        assert_eq!(
            t.render(&event(Some("org_1"), None), "PROJECT.UPDATED"),
            "outbox.org_1.PROJECT.UPDATED"
        );
        // A dot in an org id stays one token; wildcards, spaces and % are escaped.
        assert_eq!(
            t.render(&event(Some("a.b c*>%"), None), "T"),
            "outbox.a%2Eb%20c%2A%3E%25.T"
        );
        // NULL and empty values are `_`; a type's stray dots are escaped.
        assert_eq!(
            t.render(&event(None, None), ".A..B."),
            "outbox._.%2EA%2E%2EB%2E"
        );
        assert_eq!(t.render(&event(Some(""), None), "T"), "outbox._.T");
        let t = Template::parse("{entity_type}.{entity_id}.{id}").unwrap();
        assert_eq!(t.render(&event(None, Some("ü")), "T"), "Project.%C3%BC.e1");
    }

    #[test]
    fn bad_templates_say_why() {
        for (text, says) in [
            ("outbox.{org}", "unknown placeholder {org}"),
            ("outbox.{event_type", "without '}'"),
            ("outbox}", "without '{'"),
            ("outbox events", "cannot be part of a subject"),
            ("outbox.*", "cannot be part of a subject"),
            ("outbox..{id}", "must not be empty"),
            (".{id}", "must not be empty"),
            ("", "must not be empty"),
        ] {
            let e = Template::parse(text).unwrap_err();
            assert!(e.contains(says), "{text:?}: {e}");
        }
    }

    #[test]
    fn the_stream_takes_every_subject_the_template_makes() {
        for (text, subjects) in [
            ("outbox.{org_id}.{event_type}", "outbox.*.>"),
            ("outbox.{event_type}", "outbox.>"),
            ("outbox.{event_type}.{org_id}", "outbox.>"),
            ("events", "events"),
            ("a.{org_id}.b", "a.*.b"),
        ] {
            assert_eq!(
                Template::parse(text).unwrap().stream_subject(),
                subjects,
                "{text}"
            );
        }
    }
}
