//! A name made from an event by a template such as `outbox.{org_id}.{event_type}`: a broker
//! sink's NATS subject ([`crate::sinks::nats::subject`]), Redis stream key
//! ([`crate::sinks::redis::key`]) or RabbitMQ routing key
//! ([`crate::sinks::rabbitmq::routing_key`]).
//!
//! The placeholders and how a template is parsed are the same for every sink; what literal
//! text may hold, how values are made safe and what a whole name must look like are the
//! [`Syntax`] of the name.

use std::marker::PhantomData;

use crate::event::Event;

/// The placeholders a template may use.
pub const PLACEHOLDERS: [&str; 5] = ["id", "event_type", "org_id", "entity_type", "entity_id"];

/// What a kind of name allows.
pub trait Syntax {
    /// Whether `c` may be part of a template's literal text.
    fn literal_char(c: char) -> bool;

    /// Why `c` may not be part of the literal text (after "'c' cannot be part of ").
    const LITERAL_RULE: &'static str;

    /// `value` (the empty string for NULL) made safe for the name; `field` is the
    /// placeholder's name.
    fn escape(value: &str, field: &'static str) -> String;

    /// Checks the name rendered with the value `x` for every placeholder (the values never
    /// change what this checks).
    fn check(sample: &str, text: &str) -> Result<(), String>;
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Field(&'static str),
}

/// A parsed template of names of syntax `S`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template<S> {
    parts: Vec<Part>,
    text: String,
    syntax: PhantomData<S>,
}

impl<S: Syntax> Template<S> {
    /// Parses and checks `text`: known placeholders only, and a valid name whatever the
    /// values.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find(['{', '}']) {
            if rest[open..].starts_with('}') {
                return Err(format!("{text:?}: '}}' without '{{'"));
            }
            let Some(close) = rest[open..].find('}') else {
                return Err(format!("{text:?}: '{{' without '}}'"));
            };
            let name = &rest[open + 1..open + close];
            let Some(field) = PLACEHOLDERS.iter().find(|p| **p == name) else {
                return Err(format!(
                    "{text:?}: unknown placeholder {{{name}}}; use {}",
                    PLACEHOLDERS.map(|p| format!("{{{p}}}")).join(", ")
                ));
            };
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            parts.push(Part::Field(field));
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        for p in &parts {
            if let Part::Text(t) = p {
                if let Some(c) = t.chars().find(|c| !S::literal_char(*c)) {
                    return Err(format!(
                        "{text:?}: {c:?} cannot be part of {}",
                        S::LITERAL_RULE
                    ));
                }
            }
        }
        let template = Self {
            parts,
            text: text.to_owned(),
            syntax: PhantomData,
        };
        S::check(&template.render_with(|_| "x".to_owned()), text)?;
        Ok(template)
    }

    /// The name for `event` (its type checked present: `event_type`).
    pub fn render(&self, event: &Event, event_type: &str) -> String {
        self.render_with(|field| {
            let value = match field {
                "id" => Some(event.id.as_str()),
                "event_type" => Some(event_type),
                "org_id" => event.org_id.as_deref(),
                "entity_type" => event.entity_type.as_deref(),
                _ => event.entity_id.as_deref(),
            };
            S::escape(value.unwrap_or(""), field)
        })
    }

    /// The template with `value(placeholder)` in place of each placeholder, as is.
    pub(crate) fn render_with(&self, value: impl Fn(&'static str) -> String) -> String {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Text(t) => t.clone(),
                Part::Field(f) => value(f),
            })
            .collect()
    }

    /// As written in the config.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// What a missing (NULL) or empty value is written as.
pub const EMPTY_VALUE: &str = "_";

/// Appends `c` written `%XX` per UTF-8 byte.
pub(crate) fn push_percent_encoded(out: &mut String, c: char) {
    let mut buf = [0u8; 4];
    for b in c.encode_utf8(&mut buf).bytes() {
        out.push_str(&format!("%{b:02X}"));
    }
}

/// `value` made one token of a dotted name (a NATS subject, an AMQP topic routing key), so a
/// `.` in an org id cannot split it and break subscribers' wildcards. With `keep_dots` (for
/// `{event_type}`, dotted by convention) a dot stays unless it would leave an empty token.
/// Characters `allowed` keeps; anything else, and `%` itself, is written `%XX` per UTF-8
/// byte. A missing (NULL) or empty value is [`EMPTY_VALUE`].
pub(crate) fn escape_token(value: &str, keep_dots: bool, allowed: impl Fn(char) -> bool) -> String {
    if value.is_empty() {
        return EMPTY_VALUE.to_owned();
    }
    let mut out = String::with_capacity(value.len());
    let chars: Vec<char> = value.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        let dot_ok =
            keep_dots && i > 0 && i + 1 < chars.len() && chars[i - 1] != '.' && chars[i + 1] != '.';
        let keep = match c {
            '.' => dot_ok,
            '%' => false,
            c => allowed(c),
        };
        if keep {
            out.push(c);
        } else {
            push_percent_encoded(&mut out, c);
        }
    }
    out
}
