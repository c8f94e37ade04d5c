//! Which `Host` names the relay answers to, on every route (DNS rebinding).
//!
//! A web page on another site can point a name it controls at the relay's address (a
//! loopback or private one) and then read the answers as same-origin: `/metrics`, health
//! and anything else a listener serves without a credential. The browser still sends that
//! name in `Host`, so the relay answers only to names it knows: IP literals (a page can
//! only be same-origin with one by being served from it), `localhost`, and the operator's
//! `http.allowed_hosts` (a name a reverse proxy or a load balancer sends, exact or
//! `*.suffix`). Anything else gets `421 Misdirected Request`.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// The names `http.allowed_hosts` lists, validated and lowercased.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedHosts(Vec<String>);

impl AllowedHosts {
    /// Validates the list: DNS names (letters, digits, `-`, `.`), optionally starting with
    /// `*.` for every name below a domain; no port, no scheme.
    pub fn parse(names: &[String]) -> Result<Self, String> {
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let lower = name.trim().to_ascii_lowercase();
            let bare = lower.strip_prefix("*.").unwrap_or(&lower);
            let valid = !bare.is_empty()
                && bare.len() <= 253
                && bare.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
            if !valid {
                return Err(format!(
                    "{:?} is not a host name (want e.g. \"relay.example.com\" or \
                     \"*.example.com\", without scheme or port)",
                    name.escape_debug().to_string()
                ));
            }
            out.push(lower);
        }
        Ok(Self(out))
    }

    /// Whether the relay answers to `host` (the `Host` header's name, without its port).
    pub fn allows(&self, host: &str) -> bool {
        if host.parse::<IpAddr>().is_ok() || host.eq_ignore_ascii_case("localhost") {
            return true;
        }
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.0
            .iter()
            .any(|allowed| match allowed.strip_prefix("*.") {
                Some(domain) => host
                    .strip_suffix(domain)
                    .is_some_and(|below| below.ends_with('.') && below.len() > 1),
                None => *allowed == host,
            })
    }
}

/// The name in the `Host` header, without the port or an IPv6 literal's brackets; None
/// without a `Host` (HTTP/1.0 clients and tools: no browser omits it).
pub fn host_name(headers: &HeaderMap) -> Option<&str> {
    let host = headers.get(header::HOST)?;
    // Not visible ASCII: no name we know.
    let host = host.to_str().unwrap_or("\u{0}");
    Some(match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    })
}

/// Middleware: refuses requests whose `Host` names something the relay does not answer to.
pub async fn check(
    State(allowed): State<Arc<AllowedHosts>>,
    request: Request,
    next: Next,
) -> Response {
    match host_name(request.headers()) {
        Some(name) if !allowed.allows(name) => {
            let shown: String = name
                .chars()
                .take(100)
                .flat_map(char::escape_debug)
                .collect();
            (
                StatusCode::MISDIRECTED_REQUEST,
                format!(
                    "this relay does not answer to the host name \"{shown}\": if it is yours, \
                     add it to http.allowed_hosts\n"
                ),
            )
                .into_response()
        }
        _ => next.run(request).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(names: &[&str]) -> AllowedHosts {
        AllowedHosts::parse(&names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn ip_literals_localhost_and_listed_names_are_answered() {
        let h = hosts(&["relay.example.com", "*.internal.example"]);
        for ok in [
            "127.0.0.1",
            "10.1.2.3",
            "::1",
            "localhost",
            "LOCALHOST",
            "relay.example.com",
            "Relay.Example.Com.",
            "a.internal.example",
            "a.b.internal.example",
        ] {
            assert!(h.allows(ok), "{ok}");
        }
        for refused in [
            "evil.example",
            "relay.example.com.evil.example",
            "xrelay.example.com",
            "internal.example",
            "ainternal.example",
            "localhost.evil.example",
            "2130706433", // a decimal IPv4 is a name to a browser's Host header
            "",
        ] {
            assert!(!h.allows(refused), "{refused}");
        }
        assert!(!AllowedHosts::default().allows("relay.example.com"));
    }

    #[test]
    fn the_list_holds_host_names_only() {
        for bad in [
            "",
            "*.",
            "http://relay.example.com",
            "relay.example.com:9470",
            "relay example",
            "*",
            "a..b",
            "évil.example",
        ] {
            assert!(
                AllowedHosts::parse(&[bad.to_string()]).is_err(),
                "{bad:?} accepted"
            );
        }
        assert_eq!(hosts(&["Relay.Example.COM"]).0, vec!["relay.example.com"]);
    }

    #[test]
    fn host_names_lose_their_port_and_brackets() {
        let mut h = HeaderMap::new();
        assert_eq!(host_name(&h), None);
        for (value, name) in [
            ("relay.example.com:9470", "relay.example.com"),
            ("relay.example.com", "relay.example.com"),
            ("[::1]:9470", "::1"),
            ("127.0.0.1:80", "127.0.0.1"),
        ] {
            h.insert(header::HOST, value.parse().unwrap());
            assert_eq!(host_name(&h), Some(name));
        }
    }
}
