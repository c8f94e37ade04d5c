//! A failed connection attempt as one line: which server(s) were tried (host and port, or the
//! socket; never the user or password), what went wrong and what to check.
//!
//! `cannot connect to PostgreSQL at db1:5432, db2:5432: connection refused (os error 111):
//! is the server running, and are the host and port in database_url right?`

use std::error::Error as _;

use tokio_postgres::config::Host;
use tokio_postgres::error::SqlState;

use super::tls;
use crate::secret::Secret;

/// tokio-postgres' words for a failed connect, which the line's own start already says.
const ITS_CONNECT_WORDS: &str = "error connecting to server";

/// Where `cfg` connects, in the order tried: `db1:5432, db2:5432`, `[::1]:5432`, or a
/// socket file (`/var/run/postgresql/.s.PGSQL.5432`). Empty when the config names none.
pub fn servers(cfg: &tokio_postgres::Config) -> String {
    let ports = cfg.get_ports();
    let port = |i: usize| ports.get(i).or(ports.first()).copied().unwrap_or(5432);
    let hosts: Vec<String> = if cfg.get_hosts().is_empty() {
        let addrs = cfg.get_hostaddrs().iter();
        addrs
            .map(|a| a.to_string())
            .map(Host::Tcp)
            .collect::<Vec<_>>()
    } else {
        cfg.get_hosts().to_vec()
    }
    .into_iter()
    .enumerate()
    .map(|(i, host)| match host {
        Host::Tcp(h) if h.contains(':') => format!("[{h}]:{}", port(i)),
        Host::Tcp(h) => format!("{h}:{}", port(i)),
        Host::Unix(dir) => format!("{}/.s.PGSQL.{}", dir.display(), port(i)),
    })
    .collect();
    hosts.join(", ")
}

/// [`servers`] of a database URL as the config holds it; empty when it does not parse (the
/// config was checked, so that does not happen).
pub fn servers_of(url: &Secret) -> String {
    tls::split(url.expose())
        .ok()
        .and_then(|(rest, _)| rest.parse::<tokio_postgres::Config>().ok())
        .map(|c| servers(&c))
        .unwrap_or_default()
}

/// The one line for a failed connection to `servers` (see [`servers`]; `None` when the
/// caller does not know them).
pub fn connect_error(servers: Option<&str>, e: tokio_postgres::Error) -> anyhow::Error {
    let at = match servers {
        Some(s) if !s.is_empty() => format!(" at {s}"),
        _ => String::new(),
    };
    let what = explain(&e).unwrap_or_else(|| reason(&e));
    anyhow::anyhow!("cannot connect to PostgreSQL{at}: {what}")
}

/// What the server said, or the TLS handshake, with what to fix; None for the rest.
fn explain(e: &tokio_postgres::Error) -> Option<String> {
    if let Some(db) = e.as_db_error() {
        let msg = db.message();
        // The server's words name the user or database, never the password.
        let fix = match db.code() {
            c if *c == SqlState::INVALID_PASSWORD => "check the password in database_url",
            c if *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
                && msg.contains("certificate") =>
            {
                "the client certificate (sslcert, sslkey) must be signed by a CA in the \
                 server's ssl_ca_file and name the user in its CN"
            }
            c if *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
                && msg.contains("pg_hba.conf") =>
            {
                "the server's pg_hba.conf admits no such connection: ask its DBA for a line \
                 for this user, database and address (hostssl needs sslmode=require or above)"
            }
            c if *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION => {
                "check the user in database_url"
            }
            c if *c == SqlState::INVALID_CATALOG_NAME => "check the database name in database_url",
            c if *c == SqlState::CANNOT_CONNECT_NOW || *c == SqlState::TOO_MANY_CONNECTIONS => {
                "try again shortly"
            }
            _ => return Some(msg.to_owned()),
        };
        return Some(format!("{msg}: {fix}"));
    }
    let mut cause = e.source();
    let mut no_tls = false;
    while let Some(c) = cause {
        if let Some(h) = c.downcast_ref::<tls::HandshakeError>() {
            return Some(h.0.clone());
        }
        // tokio-postgres' own words when the server answers "no" to sslmode=require.
        no_tls |= c.to_string() == "server does not support TLS";
        cause = c.source();
    }
    if let Some(line) = tls::rustls_error(e).and_then(tls::client_cert_refused) {
        return Some(line);
    }
    if no_tls {
        return Some(
            "the server does not offer TLS; sslmode require, verify-ca and verify-full need \
             ssl = on in its postgresql.conf (sslmode=prefer also accepts a plain connection)"
                .to_owned(),
        );
    }
    None
}

/// The error's own words, each said once (tokio-postgres' "error connecting to server" is
/// what the line already says), and what to check.
fn reason(e: &tokio_postgres::Error) -> String {
    let mut words: Vec<String> = Vec::new();
    let mut io_kind = None;
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            io_kind = Some(io.kind());
        }
        let said = c.to_string();
        if said != ITS_CONNECT_WORDS && !words.iter().any(|w| w.contains(&said)) {
            words.push(said);
        }
        cur = c.source();
    }
    if words.is_empty() {
        words.push("no answer".to_owned());
    }
    use std::io::ErrorKind as K;
    let check = match io_kind {
        Some(K::ConnectionRefused) => {
            "is the server running, and are the host and port in database_url right?"
        }
        Some(K::TimedOut) => {
            "no answer in time: is the host right, and does a firewall let the port through?"
        }
        Some(K::NotFound) => {
            "no server socket there: is the server running, with that socket directory and \
             port?"
        }
        _ => "check the host and port in database_url, and that the server is up",
    };
    format!("{}: {check}", words.join(": "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn servers_in(url: &str) -> String {
        servers(&url.parse().unwrap())
    }

    #[test]
    fn servers_name_hosts_and_ports_never_the_password() {
        assert_eq!(
            servers_in("postgres://relay:hunter2@db.internal/app"),
            "db.internal:5432"
        );
        assert_eq!(
            servers_in("postgres://relay:hunter2@10.0.0.11:6432,10.0.0.12:6433/app"),
            "10.0.0.11:6432, 10.0.0.12:6433"
        );
        assert_eq!(servers_in("postgres://[::1]:5433/app"), "[::1]:5433");
        assert_eq!(
            servers_in("host=/var/run/postgresql port=5433 user=relay password=hunter2"),
            "/var/run/postgresql/.s.PGSQL.5433"
        );
        assert_eq!(
            servers_in("hostaddr=127.0.0.1 port=1 user=relay"),
            "127.0.0.1:1"
        );
        assert_eq!(
            servers_of(&Secret::new(
                "postgres://relay:hunter2@db:5432/app?sslmode=verify-full&sslrootcert=/ca.pem"
            )),
            "db:5432"
        );
    }

    #[tokio::test]
    async fn a_refused_connection_is_one_line_naming_where_without_repeats() {
        // A port nothing listens on: bind one, note it, close it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("postgres://relay:hunter2@127.0.0.1:{port}/app");
        let cfg: tokio_postgres::Config = url.parse().unwrap();
        let e = cfg.connect(tokio_postgres::NoTls).await.err().unwrap();
        let line = format!("{:#}", connect_error(Some(&servers(&cfg)), e));
        assert!(
            line.starts_with(&format!(
                "cannot connect to PostgreSQL at 127.0.0.1:{port}: Connection refused"
            )),
            "{line}"
        );
        assert!(line.ends_with("are the host and port in database_url right?"));
        assert!(!line.contains('\n') && !line.contains("hunter2"), "{line}");
        assert_eq!(line.matches("connect").count(), 1, "{line}");
    }
}
