//! Secret values from the config: a literal, `env:NAME` or `file:/path`.
//!
//! A [`Secret`] never prints its value: `Debug` and `Display` show `[redacted]`, so a secret
//! that slips into a log line or an error message leaks nothing.
//!
//! Where a secret rests matters too: a config file or secret file other users can read, or a
//! password in a command-line flag (which `ps` shows everyone), gives it away before the relay
//! prints anything. The relay warns about those at start, as ssh does about keys, and starts
//! anyway ([`open_to_others`], [`holds_password`]).

use std::fmt;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;

/// Largest secret file read. Far above any key or URL; a path such as `/dev/zero`, or a big
/// file named by mistake, is refused at once instead of being read until memory runs out.
pub const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;

/// A resolved secret. Read it with [`Secret::expose`] only where it is used.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value that is already known (tests, `dev`).
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// Resolves a reference as written in the config. The error names the variable or file,
    /// never the value.
    pub fn resolve(reference: &str) -> Result<Self, String> {
        if let Some(name) = reference.strip_prefix("env:") {
            match std::env::var(name) {
                Ok(v) if !v.is_empty() => Ok(Self(v)),
                Ok(_) => Err(format!("environment variable {name} is empty")),
                Err(_) => Err(format!("environment variable {name} is not set")),
            }
        } else if let Some(path) = reference.strip_prefix("file:") {
            let v = read_secret_file(path)?;
            let v = v.trim_end_matches(['\n', '\r']).to_owned();
            if v.is_empty() {
                return Err(format!("secret file {path} is empty"));
            }
            Ok(Self(v))
        } else if reference.is_empty() {
            Err("is empty".into())
        } else {
            Ok(Self(reference.to_owned()))
        }
    }

    /// The value itself. Call sites should be few and obvious.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A secret of the config that only some commands use: read (resolved and checked) by the
/// commands that need it, [`Deferred::NotRead`] for the others, so `migrate --print` or
/// `status` runs without the environment variable or file that only `run` reads (see
/// `crate::config::Needs`). A literal is always read: it costs nothing and is checked.
#[derive(Clone, PartialEq, Eq)]
pub enum Deferred<T> {
    Read(T),
    /// Not read; holds the config key, for the message should code use it after all.
    NotRead(String),
}

impl<T> Deferred<T> {
    /// The value.
    ///
    /// # Panics
    /// When it was not read: a command used a secret it did not ask `Config::load` for, a
    /// bug the daemon guards against at start (`Config::unread_secrets`).
    pub fn get(&self) -> &T {
        match self {
            Self::Read(v) => v,
            Self::NotRead(key) => {
                panic!("{key} was not read: the command loaded the config without it")
            }
        }
    }

    pub fn is_read(&self) -> bool {
        matches!(self, Self::Read(_))
    }
}

impl<T: fmt::Debug> fmt::Debug for Deferred<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Read(v) => v.fmt(f),
            Self::NotRead(key) => write!(f, "NotRead({key})"),
        }
    }
}

/// Whether a config value says where the secret is (`env:NAME`, `file:/path`) rather than
/// being the secret.
pub fn is_reference(value: &str) -> bool {
    value.starts_with("env:") || value.starts_with("file:")
}

/// Whether a config value is a secret written in the file itself: set, and not a reference.
/// What a reader of the file learns (see the warning about a config file's mode).
pub fn is_literal(value: &str) -> bool {
    !value.is_empty() && !is_reference(value)
}

/// Whether a database URL as written holds a password itself (not an `env:`/`file:`
/// reference to one). Both URL and `key=value` forms.
pub fn holds_password(database_url: &str) -> bool {
    !is_reference(database_url)
        && crate::db::tls::split(database_url).is_ok_and(|(rest, _)| {
            rest.parse::<tokio_postgres::Config>()
                .is_ok_and(|c| c.get_password().is_some())
        })
}

/// The permission bits of a regular file when group or others have any (`mode & 0o077`, the
/// test ssh applies to a private key), for the warning; None when only its owner may use it.
/// Devices, pipes and the like (`file:/dev/stdin`) are not judged.
pub fn open_to_others(meta: &std::fs::Metadata) -> Option<u32> {
    let mode = meta.permissions().mode() & 0o7777;
    (meta.is_file() && mode & 0o077 != 0).then_some(mode)
}

/// Reads at most [`MAX_SECRET_FILE_BYTES`]; errors name the file, never its content. Warns
/// when other users can read the file (the mode of the file opened, so it is the one read).
fn read_secret_file(path: &str) -> Result<String, String> {
    let cannot = |e: std::io::Error| format!("cannot read secret file {path}: {e}");
    let mut bytes = Vec::new();
    let file = std::fs::File::open(path).map_err(cannot)?;
    if let Some(mode) = file.metadata().ok().as_ref().and_then(open_to_others) {
        tracing::warn!(
            "secret file {path} is open to group/others (mode {mode:04o}): chmod 600 it"
        );
    }
    file.take(MAX_SECRET_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(cannot)?;
    if bytes.len() as u64 > MAX_SECRET_FILE_BYTES {
        return Err(format!(
            "secret file {path} is larger than {} KiB: not a secret",
            MAX_SECRET_FILE_BYTES / 1024
        ));
    }
    String::from_utf8(bytes).map_err(|_| format!("secret file {path} is not UTF-8 text"))
}

/// A broker URL without its user information, for messages: unlike a database URL
/// ([`redact_url`]), its user name may itself be a secret (a NATS token, `nats://TOKEN@host`).
pub fn without_credentials(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "<unparsable URL>".to_owned(),
    }
}

/// A database URL with its password replaced, for logs and `status` output.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("redacted"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        // A URL the url crate cannot read: one listing several hosts (failover).
        Err(_) if url.contains("://") => redact_authority(url),
        // A key=value connection string: drop any password=... pair.
        Err(_) => url
            .split_whitespace()
            .map(|kv| {
                if kv.starts_with("password=") {
                    "password=redacted"
                } else {
                    kv
                }
            })
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// `scheme://user:password@hosts/...` with the password replaced (and any password=
/// query parameter).
fn redact_authority(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("checked");
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:redacted@{hosts}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    let path = path
        .split('&')
        .map(|kv| match kv.split_once("password=") {
            Some((before, _)) if before.is_empty() || before.ends_with('?') => {
                format!("{before}password=redacted")
            }
            _ => kv.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&");
    format!("{scheme}://{authority}{path}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_env_and_file() {
        assert_eq!(Secret::resolve("whsec_abc").unwrap().expose(), "whsec_abc");
        std::env::set_var("OUTBOX_RELAY_TEST_SECRET_X", "s3cret");
        assert_eq!(
            Secret::resolve("env:OUTBOX_RELAY_TEST_SECRET_X")
                .unwrap()
                .expose(),
            "s3cret"
        );
        let err = Secret::resolve("env:OUTBOX_RELAY_TEST_MISSING_Y").unwrap_err();
        assert!(err.contains("OUTBOX_RELAY_TEST_MISSING_Y"));
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), "from-file\n").unwrap();
        let r = format!("file:{}", f.path().display());
        assert_eq!(Secret::resolve(&r).unwrap().expose(), "from-file");
    }

    #[test]
    fn endless_huge_or_binary_files_are_refused() {
        let err = Secret::resolve("file:/dev/zero").unwrap_err();
        assert!(
            err.contains("/dev/zero") && err.contains("larger than"),
            "{err}"
        );
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), [0xff, 0xfe, b'k']).unwrap();
        let err = Secret::resolve(&format!("file:{}", f.path().display())).unwrap_err();
        assert!(err.contains("not UTF-8"), "{err}");
        std::fs::write(f.path(), "k".repeat(MAX_SECRET_FILE_BYTES as usize)).unwrap();
        let r = format!("file:{}", f.path().display());
        assert_eq!(Secret::resolve(&r).unwrap().expose().len(), 64 * 1024);
    }

    #[test]
    fn never_prints_the_value() {
        let s = Secret::new("hunter2");
        assert!(!format!("{s} {s:?}").contains("hunter2"));
    }

    #[test]
    fn passwords_in_database_urls_are_found_in_both_forms() {
        assert!(holds_password("postgres://relay:hunter2@db/app"));
        assert!(holds_password("host=db user=relay password=hunter2"));
        assert!(holds_password(
            "postgres://relay:hunter2@db/app?sslmode=verify-full&sslrootcert=/ca.pem"
        ));
        assert!(!holds_password("postgres://relay@db/app"));
        assert!(!holds_password("host=db user=relay"));
        assert!(!holds_password("file:/run/secrets/db_url"));
        assert!(!holds_password("env:APP_DATABASE_URL"));
    }

    #[test]
    fn only_the_owner_bits_are_private() {
        let f = tempfile::NamedTempFile::new().unwrap();
        for (mode, open) in [(0o600, None), (0o400, None), (0o640, Some(0o640))] {
            std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(mode)).unwrap();
            let meta = std::fs::metadata(f.path()).unwrap();
            assert_eq!(open_to_others(&meta), open, "{mode:o}");
        }
        assert_eq!(
            open_to_others(&std::fs::metadata("/dev/null").unwrap()),
            None
        );
    }

    #[test]
    fn redacts_passwords_in_multi_host_urls() {
        let r = redact_url(
            "postgres://relay:hunter2@db1:5432,db2:5432/app?target_session_attrs=read-write&password=x2",
        );
        assert_eq!(
            r,
            "postgres://relay:redacted@db1:5432,db2:5432/app?target_session_attrs=read-write&password=redacted"
        );
    }

    #[test]
    fn redacts_passwords_in_urls() {
        let r = redact_url("postgres://relay:hunter2@db:5432/app");
        assert!(!r.contains("hunter2") && r.contains("relay") && r.contains("db:5432"));
        assert!(!redact_url("host=db password=hunter2 user=x").contains("hunter2"));
    }
}
