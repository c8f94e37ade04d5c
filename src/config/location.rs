//! Where in the config file an error is: line, column and the line itself with a caret under
//! the spot, from the byte span the toml parser reports.
//!
//! The line is shown only when it cannot hold a secret: not a line of a secret key
//! ([`SECRET_KEYS`]), nor one that shows a `whsec_`/`whsk_` key or a password in a URL, and only up to
//! the end of the error (a misspelt key is shown without its value).

use std::fmt;
use std::ops::Range;

/// The keys whose values are secrets (the last part of a dotted key path).
pub const SECRET_KEYS: &[&str] = &[
    "database_url",
    "admin_token",
    "token",
    "metrics_token",
    "token_secret",
    "secret",
    "password",
];

/// A shown line longer than this is cut to the part before the error.
const MAX_SHOWN: usize = 100;

/// A spot in the config text, for `file:line:column` and the snippet under the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters (as editors count).
    pub column: usize,
    shown: Option<Shown>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Shown {
    /// The line up to the end of the error, control characters replaced.
    text: String,
    /// Characters before the caret, and the caret's width.
    caret_at: usize,
    width: usize,
}

impl Location {
    /// The location of byte `span` in `text` (clamped to the text and to char boundaries).
    pub fn find(text: &str, span: Range<usize>) -> Self {
        let floor = |mut i: usize| {
            i = i.min(text.len());
            while !text.is_char_boundary(i) {
                i -= 1;
            }
            i
        };
        let start = floor(span.start);
        let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
        let end = floor(span.end).clamp(start, line_end);
        let line = text[..start].matches('\n').count() + 1;
        let column = text[line_start..start].chars().count() + 1;
        let whole = text[line_start..line_end].trim_end_matches('\r');
        Self {
            line,
            column,
            shown: shown(whole, column - 1, text[start..end].chars().count()),
        }
    }
}

/// The part of `line` worth showing, or None when it may hold a secret.
fn shown(line: &str, caret_at: usize, width: usize) -> Option<Shown> {
    let key = line.split_once('=').map(|(k, _)| {
        let k = k.trim();
        let last = k.rsplit('.').next().unwrap_or(k);
        last.trim().trim_matches(['"', '\'']).to_owned()
    });
    if key.is_some_and(|k| SECRET_KEYS.contains(&k.as_str())) {
        return None;
    }
    let width = width.max(1);
    let chars: Vec<char> = line.chars().collect();
    let upto = (caret_at + width).min(chars.len());
    let mut text: String = chars[..upto]
        .iter()
        .map(|&c| match c {
            '\t' => ' ',
            c if c.is_control() => '?',
            c => c,
        })
        .collect();
    if text.contains("whsec_") || text.contains("whsk_") || holds_url_password(&text) {
        return None;
    }
    let width = width.min(upto.saturating_sub(caret_at)).max(1);
    let mut caret_at = caret_at;
    if upto > MAX_SHOWN {
        let skip = upto.saturating_sub(MAX_SHOWN).min(caret_at);
        text = format!("...{}", text.chars().skip(skip).collect::<String>());
        caret_at = caret_at - skip + 3;
    }
    Some(Shown {
        text,
        caret_at,
        width,
    })
}

/// Whether `text` has a `scheme://user:password@` part.
fn holds_url_password(text: &str) -> bool {
    text.match_indices("://").any(|(i, _)| {
        let rest = &text[i + 3..];
        let authority = &rest[..rest.find(['/', '"', '\'', ' ']).unwrap_or(rest.len())];
        authority
            .rsplit_once('@')
            .is_some_and(|(userinfo, _)| userinfo.contains(':'))
    })
}

impl fmt::Display for Location {
    /// The snippet under the message: the line and a caret, or why the line is not shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let gutter = self.line.to_string();
        let pad = " ".repeat(gutter.len());
        match &self.shown {
            Some(s) => write!(
                f,
                "\n  {gutter} | {}\n  {pad} | {}{}",
                s.text,
                " ".repeat(s.caret_at),
                "^".repeat(s.width)
            ),
            None => write!(f, "\n  {gutter} | (not shown: the line may hold a secret)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str, needle: &str, width: usize) -> Location {
        let start = text.find(needle).unwrap();
        Location::find(text, start..start + width)
    }

    #[test]
    fn line_column_and_caret() {
        let text = "table = \"OutboxEvent\"\n[http]\nlisten = \"127.0.0.1:9470\n";
        // toml reports an unterminated string at the newline that ends it.
        let l = Location::find(text, text.len() - 1..text.len());
        assert_eq!((l.line, l.column), (3, 25));
        assert_eq!(
            l.to_string(),
            "\n  3 | listen = \"127.0.0.1:9470\n    |                         ^"
        );
        let l = at("batch_size = \"many\"", "\"many\"", 6);
        assert_eq!(
            l.to_string(),
            "\n  1 | batch_size = \"many\"\n    |              ^^^^^^"
        );
        // Columns count characters, as toml and editors do.
        let l = at("tablé = x", "x", 1);
        assert_eq!((l.line, l.column), (1, 9));
        // An error at the very end of the text.
        let l = Location::find("A=", 2..2);
        assert_eq!((l.line, l.column), (1, 3));
        assert_eq!(l.to_string(), "\n  1 | A=\n    |   ^");
    }

    #[test]
    fn secrets_are_never_shown() {
        for text in [
            "secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\" x",
            "  \"token_secret\" = 'hunter2' x",
            "http.admin_token = \"hunter2\" x",
            "password = \"hunter2\" x",
            "database_url = \"postgres://relay:hunter2@db/app\" x",
            "db = \"postgres://relay:hunter2@db/app\" x",
            "s = 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw' x",
            "s = 'whsk_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw' x",
        ] {
            let shown = at(text, " x", 2).to_string();
            assert!(
                !shown.contains("hunter2") && !shown.contains("MfKQ9r8"),
                "{shown}"
            );
            assert!(shown.contains("not shown"), "{shown}");
        }
        // A misspelt key is shown up to the error: not its value.
        let shown = at("admin_tokn = \"hunter2\"", "admin_tokn", 10).to_string();
        assert!(
            shown.contains("admin_tokn") && !shown.contains("hunter2"),
            "{shown}"
        );
        // A URL without a password is no secret.
        let shown = at("url = \"https://hooks.example/x\" y", " y", 2).to_string();
        assert!(shown.contains("hooks.example"), "{shown}");
    }

    #[test]
    fn control_characters_and_long_lines_stay_on_one_short_line() {
        let shown = at("table = \"a\u{1b}[2Jb\" x", " x", 2).to_string();
        assert!(!shown.contains('\u{1b}') && shown.matches('\n').count() == 2);
        let long = format!("table = \"{}\" x", "a".repeat(300));
        let l = at(&long, " x", 2);
        let shown = l.to_string();
        let lines: Vec<&str> = shown.lines().collect();
        assert!(lines[1].len() < MAX_SHOWN + 20, "{shown}");
        // The caret still sits under the error.
        let caret = lines[2].find('^').unwrap();
        assert_eq!(&lines[1][caret..caret + 2], " x");
    }
}
