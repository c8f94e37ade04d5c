//! TLS to PostgreSQL with rustls: libpq's `sslmode`, `sslrootcert`, `sslcert` and `sslkey`.
//!
//! tokio-postgres knows only `disable`, `prefer` and `require`, and refuses the other keys, so
//! [`split`] takes them out of the connection string (URL query or `key=value` form) and
//! [`Settings::connector`] builds the one connector every connection uses: the pools, the
//! LISTEN and wake-lock connections, cancel requests and the CLI (all through `crate::db`).
//!
//! What each mode checks, as libpq does:
//! - `disable`: plain TCP.
//! - `prefer` (the default, as in libpq): TLS when the server offers it, plain when it does
//!   not; the certificate is not checked unless `sslrootcert` is set (then as `verify-ca`).
//! - `require`: TLS or no connection; the certificate is not checked, unless `sslrootcert` is
//!   set: then the chain is, as `verify-ca` (libpq does the same).
//! - `verify-ca`: the chain must lead to `sslrootcert` (or the system's roots); any host name.
//! - `verify-full`: the chain, and the host name connected to must be in the certificate.
//!
//! Handshake failures come out as one line saying what to fix ([`HandshakeError`]).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use percent_encoding::{percent_decode_str, utf8_percent_encode, NON_ALPHANUMERIC};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres_rustls::MakeRustlsConnect;

/// The connection-string keys this module handles (libpq's names).
pub const KEYS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// libpq's `sslmode` values (`allow` is not offered: it only ever downgrades).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// When neither the URL nor the config file says: libpq's default, so a URL that works with
/// psql works here, and a server offering TLS is spoken to over it.
pub const DEFAULT_SSLMODE: SslMode = SslMode::Prefer;

impl SslMode {
    pub fn parse(s: &str) -> Result<Self, String> {
        Ok(match s {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            _ => {
                return Err("must be disable, prefer, require, verify-ca or verify-full".to_owned())
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }
}

/// The TLS keys as given (each unset when absent). Paths are not secrets; a key file's
/// content is never read into anything that prints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    pub sslmode: Option<SslMode>,
    /// A PEM file of CA certificates, or `system` for the system's roots (as libpq 16).
    pub sslrootcert: Option<String>,
    pub sslcert: Option<String>,
    pub sslkey: Option<String>,
}

impl Settings {
    fn set(&mut self, key: &str, value: String) -> Result<(), String> {
        match key {
            "sslmode" => {
                self.sslmode = Some(SslMode::parse(&value).map_err(|m| format!("sslmode {m}"))?)
            }
            "sslrootcert" => self.sslrootcert = Some(value),
            "sslcert" => self.sslcert = Some(value),
            "sslkey" => self.sslkey = Some(value),
            _ => unreachable!("only KEYS are set"),
        }
        Ok(())
    }

    /// Each key from `self`, else from `other`.
    pub fn or(self, other: Self) -> Self {
        Self {
            sslmode: self.sslmode.or(other.sslmode),
            sslrootcert: self.sslrootcert.or(other.sslrootcert),
            sslcert: self.sslcert.or(other.sslcert),
            sslkey: self.sslkey.or(other.sslkey),
        }
    }

    /// (key, value) of every key that is set, in [`KEYS`] order.
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        let mode = self.sslmode.map(|m| m.as_str().to_owned());
        [
            ("sslmode", mode),
            ("sslrootcert", self.sslrootcert.clone()),
            ("sslcert", self.sslcert.clone()),
            ("sslkey", self.sslkey.clone()),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect()
    }

    /// The mode in effect: as given, else [`DEFAULT_SSLMODE`].
    pub fn mode(&self) -> SslMode {
        self.sslmode.unwrap_or(DEFAULT_SSLMODE)
    }

    /// What tokio-postgres is told: it negotiates, the connector checks.
    pub fn pg_mode(&self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode as Pg;
        match self.mode() {
            SslMode::Disable => Pg::Disable,
            SslMode::Prefer => Pg::Prefer,
            _ => Pg::Require,
        }
    }

    /// Builds the connector: reads the CA, certificate and key files (errors name the file,
    /// never its content).
    pub fn connector(&self) -> anyhow::Result<Connector> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mode = self.mode();
        let (verifier, roots): (Arc<dyn ServerCertVerifier>, String) = match (mode, self.roots()?) {
            (SslMode::Disable, _) | (SslMode::Prefer | SslMode::Require, None) => {
                let lenient = Lenient {
                    chain: None,
                    provider: provider.clone(),
                };
                (Arc::new(lenient), String::new())
            }
            (_, roots) => {
                let (store, what) = match roots {
                    Some(r) => r,
                    None => system_roots()?,
                };
                let webpki =
                    WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider.clone())
                        .build()?;
                let verifier: Arc<dyn ServerCertVerifier> = if mode == SslMode::VerifyFull {
                    webpki
                } else {
                    Arc::new(Lenient {
                        chain: Some(webpki),
                        provider: provider.clone(),
                    })
                };
                (verifier, what)
            }
        };
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match (&self.sslcert, &self.sslkey) {
            _ if mode == SslMode::Disable => builder.with_no_client_auth(),
            (Some(cert), Some(key)) => {
                let certs = read_certs("sslcert", cert)?;
                builder
                    .with_client_auth_cert(certs, read_key(key)?)
                    .map_err(|e| anyhow::anyhow!("sslcert {cert} and sslkey {key}: {e}"))?
            }
            (None, None) => builder.with_no_client_auth(),
            (Some(_), None) => anyhow::bail!("sslcert is set without sslkey: set both"),
            (None, Some(_)) => anyhow::bail!("sslkey is set without sslcert: set both"),
        };
        Ok(Connector {
            inner: MakeRustlsConnect::new(config),
            roots: Arc::from(roots),
            verify: mode,
        })
    }

    /// The roots `sslrootcert` names, and how to name them in an error; None when unset.
    fn roots(&self) -> anyhow::Result<Option<(RootCertStore, String)>> {
        match self.sslrootcert.as_deref() {
            None => Ok(None),
            Some("system") => system_roots().map(Some),
            Some(path) => {
                let mut store = RootCertStore::empty();
                for cert in read_certs("sslrootcert", path)? {
                    store
                        .add(cert)
                        .map_err(|e| anyhow::anyhow!("sslrootcert {path}: {e}"))?;
                }
                Ok(Some((store, format!("sslrootcert ({path})"))))
            }
        }
    }
}

/// The system's root certificates (rustls-native-certs: the OpenSSL directories on Linux,
/// honouring SSL_CERT_FILE / SSL_CERT_DIR), loaded once per process.
fn system_roots() -> anyhow::Result<(RootCertStore, String)> {
    static ROOTS: OnceLock<Result<RootCertStore, String>> = OnceLock::new();
    let roots = ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        let mut store = RootCertStore::empty();
        let (added, _) = store.add_parsable_certificates(found.certs);
        if added == 0 {
            let why = found
                .errors
                .first()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default();
            return Err(format!(
                "no system root certificates found{why}: set sslrootcert to the CA that signed \
                 the server's certificate"
            ));
        }
        Ok(store)
    });
    match roots {
        Ok(store) => Ok((store.clone(), "the system's root certificates".to_owned())),
        Err(m) => Err(anyhow::anyhow!("{m}")),
    }
}

fn read_certs(key: &str, path: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let text =
        std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {key} file {path}: {e}"))?;
    let certs = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| anyhow::anyhow!("{key} file {path} is not valid PEM"))?;
    if certs.is_empty() {
        anyhow::bail!("{key} file {path} holds no PEM certificate");
    }
    Ok(certs)
}

/// Reads a private key (PKCS#8, PKCS#1 or SEC1 PEM). Warns, as libpq refuses, when other users
/// may read it. Errors name the file only: the pki-types error could quote the content.
fn read_key(path: &str) -> anyhow::Result<PrivateKeyDer<'static>> {
    let file = std::fs::File::open(path)
        .map_err(|e| anyhow::anyhow!("cannot read sslkey file {path}: {e}"))?;
    if let Some(mode) = file
        .metadata()
        .ok()
        .as_ref()
        .and_then(crate::secret::open_to_others)
    {
        tracing::warn!(
            "sslkey file {path} is open to group/others (mode {mode:04o}): chmod 600 it"
        );
    }
    let text = std::io::read_to_string(file)
        .map_err(|e| anyhow::anyhow!("cannot read sslkey file {path}: {e}"))?;
    PrivateKeyDer::from_pem_slice(text.as_bytes())
        .map_err(|_| anyhow::anyhow!("sslkey file {path} holds no PEM private key"))
}

/// Takes the TLS keys out of a connection string: the rest (for tokio-postgres) and the
/// settings found. Errors name libpq keywords only, never the string (it may hold a password
/// or a value read from `env:`).
pub fn split(conn: &str) -> Result<(String, Settings), String> {
    let mut settings = Settings::default();
    if let Some(rest) = ["postgres://", "postgresql://"]
        .iter()
        .find_map(|s| conn.starts_with(s).then_some(conn))
    {
        let Some((base, query)) = rest.split_once('?') else {
            return Ok((conn.to_owned(), settings));
        };
        let mut kept = Vec::new();
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let key = percent_decode_str(k).decode_utf8_lossy();
            if KEYS.contains(&key.as_ref()) {
                let value = percent_decode_str(v)
                    .decode_utf8()
                    .map_err(|_| format!("{key} is not UTF-8"))?;
                settings.set(&key, value.into_owned())?;
            } else {
                kept.push(pair);
            }
        }
        let rest = match kept.is_empty() {
            true => base.to_owned(),
            false => format!("{base}?{}", kept.join("&")),
        };
        return Ok((rest, settings));
    }
    let mut kept = Vec::new();
    for (key, value) in key_values(conn)? {
        if KEYS.contains(&key.as_str()) {
            settings.set(&key, value)?;
        } else {
            kept.push(format!("{key}={}", quote(&value)));
        }
    }
    Ok((kept.join(" "), settings))
}

/// `conn` with `extra` added as parameters, in its own form (URL query or `key=value`).
pub fn with_settings(conn: &str, extra: &Settings) -> String {
    let pairs = extra.pairs();
    if pairs.is_empty() {
        return conn.to_owned();
    }
    if conn.starts_with("postgres://") || conn.starts_with("postgresql://") {
        let query: Vec<String> = pairs
            .iter()
            .map(|(k, v)| format!("{k}={}", utf8_percent_encode(v, NON_ALPHANUMERIC)))
            .collect();
        let sep = if conn.contains('?') { '&' } else { '?' };
        format!("{conn}{sep}{}", query.join("&"))
    } else {
        let kv: Vec<String> = pairs
            .iter()
            .map(|(k, v)| format!("{k}={}", quote(v)))
            .collect();
        format!("{conn} {}", kv.join(" ")).trim_start().to_owned()
    }
}

/// A `key=value` value quoted as libpq reads it.
fn quote(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// The pairs of a `key=value` connection string, read as libpq (and tokio-postgres) do:
/// whitespace between pairs and around `=`, values bare or single-quoted, `\` escaping.
fn key_values(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut it = s.chars().peekable();
    loop {
        while it.next_if(|c| c.is_whitespace()).is_some() {}
        if it.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(c) = it.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while it.next_if(|c| c.is_whitespace()).is_some() {}
        if it.next() != Some('=') {
            return Err(format!(
                "expected `=` after {} in the connection string: write key=value pairs \
                 or a postgres:// URL",
                named(&key)
            ));
        }
        while it.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if it.next_if_eq(&'\'').is_some() {
            loop {
                match it.next() {
                    Some('\'') => break,
                    Some('\\') => value.extend(it.next()),
                    Some(c) => value.push(c),
                    None => return Err(format!("unterminated quoted value of {}", named(&key))),
                }
            }
        } else {
            while let Some(c) = it.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(it.next());
                } else {
                    value.push(c);
                }
            }
        }
        out.push((key, value));
    }
}

/// libpq's connection keywords: the only words of a connection string an error may repeat.
/// Anything else may be part of a password, or a value read from `env:`/`file:`.
const LIBPQ_KEYWORDS: &[&str] = &[
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "passfile",
    "channel_binding",
    "connect_timeout",
    "client_encoding",
    "options",
    "application_name",
    "fallback_application_name",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
    "replication",
    "gssencmode",
    "sslmode",
    "requiressl",
    "sslcompression",
    "sslcert",
    "sslkey",
    "sslpassword",
    "sslcertmode",
    "sslrootcert",
    "sslcrl",
    "sslcrldir",
    "sslsni",
    "requirepeer",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "krbsrvname",
    "gsslib",
    "gssdelegation",
    "service",
    "target_session_attrs",
    "load_balance_hosts",
];

/// How an error names a word of a connection string: itself if it is a libpq keyword.
fn named(word: &str) -> String {
    match LIBPQ_KEYWORDS.contains(&word) {
        true => format!("`{word}`"),
        false => "a word that is not a connection keyword".to_owned(),
    }
}

/// `message` (tokio-postgres' words about a connection string) with each quoted word that
/// is not a libpq keyword taken out: "unknown option `<word>`" repeats what it did not know.
pub fn redact(message: &str) -> String {
    let mut out = String::new();
    for (i, part) in message.split('`').enumerate() {
        match (
            i % 2 == 1,
            part.chars().count() > 1 && !LIBPQ_KEYWORDS.contains(&part),
        ) {
            (true, true) => out.push_str("(a word that is not a connection keyword)"),
            (true, false) => out.push_str(&format!("`{part}`")),
            (false, _) => out.push_str(part),
        }
    }
    out
}

/// The connector of every database connection: rustls as the [`Settings`] say, with
/// handshake errors turned into [`HandshakeError`]s.
#[derive(Clone)]
pub struct Connector {
    inner: MakeRustlsConnect,
    /// How to name the roots in a "not signed by" error.
    roots: Arc<str>,
    verify: SslMode,
}

impl<S> MakeTlsConnect<S> for Connector
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = <MakeRustlsConnect as MakeTlsConnect<S>>::Stream;
    type TlsConnect = Handshake<<MakeRustlsConnect as MakeTlsConnect<S>>::TlsConnect>;
    type Error = <MakeRustlsConnect as MakeTlsConnect<S>>::Error;

    fn make_tls_connect(&mut self, host: &str) -> Result<Self::TlsConnect, Self::Error> {
        Ok(Handshake {
            inner: <MakeRustlsConnect as MakeTlsConnect<S>>::make_tls_connect(
                &mut self.inner,
                host,
            )?,
            host: host.to_owned(),
            roots: self.roots.clone(),
            verify: self.verify,
        })
    }
}

/// One connection's handshake.
pub struct Handshake<T> {
    inner: T,
    host: String,
    roots: Arc<str>,
    verify: SslMode,
}

impl<S, T> TlsConnect<S> for Handshake<T>
where
    T: TlsConnect<S>,
    T::Future: Send + 'static,
{
    type Stream = T::Stream;
    type Error = HandshakeError;
    type Future = Pin<Box<dyn Future<Output = Result<T::Stream, HandshakeError>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        let handshake = self.inner.connect(stream);
        let Self {
            host,
            roots,
            verify,
            ..
        } = self;
        Box::pin(async move {
            handshake
                .await
                .map_err(|e| HandshakeError(explain(&*e.into(), &host, &roots, verify)))
        })
    }
}

/// A failed TLS handshake, in one line saying what to fix.
#[derive(Debug)]
pub struct HandshakeError(pub String);

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HandshakeError {}

/// The rustls error inside an I/O error from the TLS stream, if that is what it is.
pub fn rustls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(r) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(r);
        }
        cur = e.source();
    }
    None
}

/// The line for a client certificate the server refused (a TLS alert in the handshake or
/// right after it: TLS 1.3 servers check the client's certificate after the client is done).
pub fn client_cert_refused(e: &rustls::Error) -> Option<String> {
    use rustls::AlertDescription as A;
    match e {
        rustls::Error::AlertReceived(
            alert @ (A::BadCertificate
            | A::UnknownCA
            | A::CertificateUnknown
            | A::CertificateRequired
            | A::CertificateExpired
            | A::CertificateRevoked
            | A::UnsupportedCertificate
            | A::DecryptError
            | A::AccessDenied),
        ) => Some(format!(
            "the server refused the client certificate (TLS alert {alert:?}): set sslcert and \
             sslkey to a certificate signed by a CA in the server's ssl_ca_file"
        )),
        _ => None,
    }
}

fn explain(
    e: &(dyn std::error::Error + Send + Sync + 'static),
    host: &str,
    roots: &str,
    verify: SslMode,
) -> String {
    let Some(r) = rustls_error(e) else {
        return format!("TLS handshake with {host} failed: {e}");
    };
    if let Some(line) = client_cert_refused(r) {
        return line;
    }
    match r {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => format!(
            "the server's certificate is not signed by a CA in {roots}: set sslrootcert to the \
             CA that signed it"
        ),
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => format!(
            "the server's certificate is not valid for the host name {host} ({r}): connect by a \
             name the certificate lists (sslmode={} checks it)",
            verify.as_str()
        ),
        rustls::Error::InvalidCertificate(c) => format!(
            "the server's certificate was refused ({c:?}) by sslmode={}: fix the server's \
             certificate, or sslrootcert",
            verify.as_str()
        ),
        other => format!("TLS handshake with {host} failed: {other}"),
    }
}

/// The checks short of `verify-full`. `chain: None` (`prefer` or `require` without
/// `sslrootcert`): nothing about the certificate is checked, as libpq does. `Some` (`verify-ca`,
/// or `require` with `sslrootcert`): webpki's checks, except that a certificate for another
/// name passes (webpki checks the chain before the name, so a name error means the chain was
/// good). The handshake's signatures are checked either way.
#[derive(Debug)]
struct Lenient {
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.provider.signature_verification_algorithms;
        verify_tls12_signature(message, cert, dss, algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.provider.signature_verification_algorithms;
        verify_tls13_signature(message, cert, dss, algs)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A string that is not a connection string may be a secret (an `env:` value): errors
    /// name libpq keywords only.
    #[test]
    fn errors_never_repeat_words_that_are_not_keywords() {
        for conn in [
            "/usr/local/sbin:/usr/local/bin:/usr/bin",
            "hunter2-secret",
            "host=h hunter2-secret",
            "hunter2-secret='x",
        ] {
            let e = split(conn).unwrap_err();
            assert!(!e.contains("hunter2") && !e.contains("/usr"), "{e}");
        }
        let e = split("host=h password='hunter2").unwrap_err();
        assert_eq!(e, "unterminated quoted value of `password`");
        assert!(split("host").unwrap_err().contains("after `host`"));
        assert_eq!(
            redact("unknown option `hunter2`; invalid value for option `port`; got `/`"),
            "unknown option (a word that is not a connection keyword); \
             invalid value for option `port`; got `/`"
        );
        let e = "hunter2=x".parse::<tokio_postgres::Config>().unwrap_err();
        assert!(!redact(&e.to_string()).contains("hunter2"), "{e}");
    }

    #[test]
    fn splits_the_url_form() {
        let (rest, s) = split(
            "postgres://u:p%40ss@h:5/db?sslmode=verify-full&application_name=x&sslrootcert=%2Fetc%2Fca%20x.pem",
        )
        .unwrap();
        assert_eq!(rest, "postgres://u:p%40ss@h:5/db?application_name=x");
        assert_eq!(s.sslmode, Some(SslMode::VerifyFull));
        assert_eq!(s.sslrootcert.as_deref(), Some("/etc/ca x.pem"));
        assert!(rest.parse::<tokio_postgres::Config>().is_ok());
        let (rest, s) = split("postgresql://h/db?sslmode=require").unwrap();
        assert_eq!(
            (rest.as_str(), s.mode()),
            ("postgresql://h/db", SslMode::Require)
        );
        let (rest, s) = split("postgres://h/db").unwrap();
        assert_eq!((rest.as_str(), s), ("postgres://h/db", Settings::default()));
    }

    #[test]
    fn splits_the_key_value_form() {
        let (rest, s) =
            split("host=h user=u password='a b\\'c' sslmode = verify-ca sslkey='/k y' sslcert=/c")
                .unwrap();
        let cfg: tokio_postgres::Config = rest.parse().unwrap();
        assert_eq!(cfg.get_password(), Some(&b"a b'c"[..]));
        assert_eq!(s.mode(), SslMode::VerifyCa);
        assert_eq!(s.sslkey.as_deref(), Some("/k y"));
        assert_eq!(s.sslcert.as_deref(), Some("/c"));
    }

    #[test]
    fn bad_values_name_the_key_not_the_string() {
        let err = split("postgres://u:hunter2@h/db?sslmode=verify").unwrap_err();
        assert!(err.contains("sslmode") && !err.contains("hunter2"), "{err}");
        assert_eq!(Settings::default().mode(), SslMode::Prefer);
    }

    #[test]
    fn settings_go_back_into_both_forms() {
        let s = Settings {
            sslmode: Some(SslMode::VerifyFull),
            sslrootcert: Some("/ca dir/ca.pem".into()),
            ..Settings::default()
        };
        for conn in [
            "postgres://h/db",
            "postgres://h/db?application_name=a",
            "host=h dbname=db",
        ] {
            let (_, back) = split(&with_settings(conn, &s)).unwrap();
            assert_eq!(back, s, "{conn}");
        }
    }

    #[test]
    fn files_are_named_in_errors() {
        let s = Settings {
            sslmode: Some(SslMode::VerifyFull),
            sslrootcert: Some("/nonexistent/ca.pem".into()),
            ..Settings::default()
        };
        let err = s.connector().err().unwrap().to_string();
        assert!(
            err.contains("sslrootcert file /nonexistent/ca.pem"),
            "{err}"
        );
        let key = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(key.path(), "not a key").unwrap();
        let s = Settings {
            sslmode: Some(SslMode::Require),
            sslcert: Some("/nonexistent/c.pem".into()),
            sslkey: Some(key.path().display().to_string()),
            ..Settings::default()
        };
        let err = s.connector().err().unwrap().to_string();
        assert!(err.contains("sslcert file /nonexistent/c.pem"), "{err}");
    }
}
