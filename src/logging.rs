//! Log output: human-readable or JSON lines on stderr.
//!
//! Logged values come from outside too: an event id from an adopted table's text column, a
//! receiver's error text, a database error. Whatever they hold, one event is one line:
//! control characters are escaped in both formats (JSON escapes them by itself), so a value
//! cannot forge a log line (a newline and a fake timestamp) or drive the operator's terminal.

use std::borrow::Cow;
use std::fmt::Write as _;

use tracing_subscriber::field::MakeExt;
use tracing_subscriber::fmt::format::{debug_fn, Writer};
use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// deadpool-postgres warns for every pooled connection the server closed (one line as its
/// connection ends, one more when it cannot be recycled): a restart or an
/// `idle_session_timeout` would log two lines per connection in every pool. The relay says
/// what matters itself (a statement that failed, a connection it could not open), so these
/// are kept to errors unless `RUST_LOG` names deadpool.
const POOL_DIRECTIVE: &str = "deadpool.postgres=error";

/// lapin (the RabbitMQ client) logs at ERROR every channel the broker closes and every
/// connection it loses, with its internal structures; the RabbitMQ sink reports each of
/// these itself, as an attempt's error, a reconnect or a start-up line. Off unless
/// `RUST_LOG` names lapin.
const AMQP_DIRECTIVE: &str = "lapin=off";

/// Installs the process's subscriber: `RUST_LOG` (default `info`), stderr, colours only on
/// a terminal (journald and log files get plain text).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let named = filter.to_string();
    let mut filter = filter;
    for (crate_name, directive) in [("deadpool", POOL_DIRECTIVE), ("lapin", AMQP_DIRECTIVE)] {
        if !named.contains(crate_name) {
            filter = filter.add_directive(directive.parse().expect("a valid directive"));
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.fmt_fields(human_fields()).init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// The human format's fields, `message key=value key=value`, values escaped.
pub fn human_fields() -> impl for<'w> tracing_subscriber::fmt::FormatFields<'w> + 'static {
    debug_fn(
        |w: &mut Writer<'_>, field: &tracing::field::Field, value: &dyn std::fmt::Debug| {
            let mut text = String::new();
            let _ = write!(text, "{value:?}");
            match field.name() {
                "message" => write!(w, "{}", escape_controls(&text)),
                name => write!(w, "{name}={}", escape_controls(&text)),
            }
        },
    )
    .delimited(" ")
}

/// `s` with every control character written as an escape (`\n`, `\r`, `\t`, `\u{1b}`).
pub fn escape_controls(s: &str) -> Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Formats one event the way [`init`] does, into a string.
    fn logged(json: bool, emit: impl FnOnce()) -> String {
        let out = Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = out.clone();
        let make = move || Sink(sink.clone());
        let builder = tracing_subscriber::fmt().with_ansi(false).with_writer(make);
        if json {
            tracing::subscriber::with_default(builder.json().flatten_event(true).finish(), emit);
        } else {
            tracing::subscriber::with_default(builder.fmt_fields(human_fields()).finish(), emit);
        }
        let bytes = out.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    const FORGED: &str = "evt_1\n2026-12-05T00:00:00.000000Z ERROR outbox_relay: forged\r\x1b[2J";

    #[test]
    fn a_value_with_line_breaks_stays_on_its_line_in_both_formats() {
        for json in [false, true] {
            let text = logged(json, || {
                let id = FORGED.to_owned();
                tracing::warn!(event_id = %id, detail = ?id, "delivery of {id} failed");
            });
            assert_eq!(text.lines().count(), 1, "{text}");
            assert!(!text.contains('\r') && !text.contains('\x1b'), "{text:?}");
            assert!(text.contains("forged"), "the value is still there: {text}");
        }
    }

    #[test]
    fn plain_values_are_written_as_they_are() {
        let text = logged(false, || {
            tracing::info!(endpoint = "billing", n = 3, "delivered")
        });
        assert!(
            text.ends_with("delivered endpoint=\"billing\" n=3\n"),
            "{text}"
        );
        assert_eq!(escape_controls("a\tb\u{7f}"), "a\\tb\\u{7f}");
    }
}
