//! Who may do what on the dashboard: reads and actions, the admin token, loopback and
//! same-origin checks (the rules `tests/it/router_access.rs` drives through the router).

use axum::http::{header, HeaderMap, StatusCode};

use super::{ApiError, Dashboard};

/// What a request wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Act,
}

/// Who acts through the dashboard, for the audit log: the admin token's name, or
/// [`ANONYMOUS`] on a loopback listener without admin tokens.
pub const ANONYMOUS: &str = "anonymous";

impl Dashboard {
    /// The name of the admin token the request carries, if any. Every token is compared
    /// (as SHA-256 digests), so the time taken says nothing about the tokens.
    fn token_name(&self, headers: &HeaderMap) -> Option<&str> {
        self.admin_tokens
            .iter()
            .filter(|(_, token)| crate::http::bearer_is(headers, token))
            .map(|(name, _)| name.as_str())
            .fold(None, |found, name| found.or(Some(name)))
    }

    /// Whether any admin token is set (the page offers a login only then).
    pub fn has_admin_token(&self) -> bool {
        !self.admin_tokens.is_empty()
    }

    /// Whether this request may act (the `admin` flag the page shows).
    pub fn may_act(&self, headers: &HeaderMap) -> bool {
        match self.has_admin_token() {
            true => self.token_name(headers).is_some(),
            false => self.loopback,
        }
    }

    /// Refuses a request that may not `access` (see the module docs); returns who asked
    /// (the token's name, or [`ANONYMOUS`]). The Host and Origin checks guard what a
    /// browser may do without a credential; a request carrying an admin token is an
    /// operator's (a reverse proxy in front changes both headers).
    pub fn allow<'a>(&'a self, headers: &HeaderMap, access: Access) -> Result<&'a str, ApiError> {
        let who = self.token_name(headers);
        let authed = who.is_some();
        let tokens = self.has_admin_token();
        if self.loopback && !authed && !loopback_host(headers) {
            let (status, hint) = match tokens {
                true => (StatusCode::UNAUTHORIZED, ": log in with an admin token"),
                false => (StatusCode::FORBIDDEN, ""),
            };
            return Err(ApiError(
                status,
                format!(
                    "the dashboard on a loopback listener answers only to localhost, \
                     127.0.0.1 or [::1] in the Host header{hint}"
                ),
            ));
        }
        if !self.loopback && !tokens {
            return Err(ApiError(
                StatusCode::FORBIDDEN,
                "the dashboard API is off on a non-loopback listener without an admin token: \
                 set [http] admin_token"
                    .into(),
            ));
        }
        let presented = headers.contains_key(header::AUTHORIZATION);
        if presented && tokens && !authed {
            return Err(ApiError(
                StatusCode::UNAUTHORIZED,
                "wrong admin token".into(),
            ));
        }
        let needs_token = tokens && (access == Access::Act || !self.loopback);
        if needs_token && !authed {
            return Err(ApiError(
                StatusCode::UNAUTHORIZED,
                "this needs an admin token (http.admin_token or http.admin_tokens)".into(),
            ));
        }
        if access == Access::Act {
            check_same_origin(headers, authed)?;
        }
        Ok(who.unwrap_or(ANONYMOUS))
    }
}

/// The Host header names the loopback interface (what a browser sends for 127.0.0.1:port
/// or localhost:port; a rebinding attack sends its own domain).
fn loopback_host(headers: &HeaderMap) -> bool {
    let Some(name) = crate::http::host::host_name(headers) else {
        return true; // HTTP/1.0 clients and tools: no browser omits it
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Actions come with a JSON body, and, without the token, from this origin when the
/// browser says where from.
fn check_same_origin(headers: &HeaderMap, authed: bool) -> Result<(), ApiError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json {
        return Err(ApiError(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "actions take a JSON body (Content-Type: application/json)".into(),
        ));
    }
    if authed {
        return Ok(()); // a cross-site form cannot send the Authorization header
    }
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
        let origin_host = origin.split_once("://").map(|(_, h)| h);
        if origin_host.is_none() || origin_host != host {
            return Err(ApiError(
                StatusCode::FORBIDDEN,
                "cross-origin actions are refused".into(),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use crate::config::Config;
    use crate::health::Shared;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn dash(listen: &str, token: Option<&str>) -> Dashboard {
        let mut toml = format!("[http]\nlisten = \"{listen}\"\n");
        if let Some(t) = token {
            toml.push_str(&format!("admin_token = \"{t}\"\n"));
        }
        let cfg = Config::from_toml(&toml, &Default::default()).unwrap();
        let shared = Arc::new(Shared::new(&cfg, None).unwrap());
        Dashboard::new(&cfg, shared)
    }

    #[tokio::test]
    async fn loopback_without_a_token_is_open_but_only_to_localhost_hosts() {
        let d = dash("127.0.0.1:0", None);
        let json = ("content-type", "application/json");
        assert!(d
            .allow(&headers(&[("host", "127.0.0.1:9470")]), Access::Read)
            .is_ok());
        assert!(d
            .allow(&headers(&[("host", "localhost:9470"), json]), Access::Act)
            .is_ok());
        assert!(d
            .allow(&headers(&[("host", "[::1]:9470"), json]), Access::Act)
            .is_ok());
        let rebound = d.allow(&headers(&[("host", "evil.example:9470")]), Access::Read);
        assert_eq!(rebound.unwrap_err().0, StatusCode::FORBIDDEN);
        // A cross-site form post: no JSON, or another origin.
        let form = d.allow(&headers(&[("host", "127.0.0.1:9470")]), Access::Act);
        assert_eq!(form.unwrap_err().0, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let cross = d.allow(
            &headers(&[
                ("host", "127.0.0.1:9470"),
                json,
                ("origin", "https://evil.example"),
            ]),
            Access::Act,
        );
        assert_eq!(cross.unwrap_err().0, StatusCode::FORBIDDEN);
        let same = d.allow(
            &headers(&[
                ("host", "127.0.0.1:9470"),
                json,
                ("origin", "http://127.0.0.1:9470"),
            ]),
            Access::Act,
        );
        assert!(same.is_ok());
    }

    #[tokio::test]
    async fn a_token_guards_actions_and_on_an_open_listener_reads_too() {
        // A JSON request to `host`, with an Authorization header when given.
        let to = |host: &'static str| {
            move |auth: Option<&'static str>| {
                let mut v = vec![("host", host), ("content-type", "application/json")];
                v.extend(auth.map(|a| ("authorization", a)));
                headers(&v)
            }
        };
        let d = dash("127.0.0.1:0", Some("s3cret"));
        let h = to("127.0.0.1:1");
        assert!(d.allow(&h(None), Access::Read).is_ok());
        assert_eq!(
            d.allow(&h(None), Access::Act).unwrap_err().0,
            StatusCode::UNAUTHORIZED
        );
        let wrong = d.allow(&h(Some("Bearer nope")), Access::Act);
        assert_eq!(wrong.unwrap_err().0, StatusCode::UNAUTHORIZED);
        assert!(d.allow(&h(Some("Bearer s3cret")), Access::Act).is_ok());
        assert!(d.may_act(&h(Some("Bearer s3cret"))) && !d.may_act(&h(None)));
        // Through a reverse proxy (another Host, its Origin): the token is what counts.
        let proxied = |auth: Option<&'static str>| {
            let mut v = vec![
                ("host", "relay.example.com"),
                ("origin", "https://relay.example.com"),
                ("content-type", "application/json"),
            ];
            v.extend(auth.map(|a| ("authorization", a)));
            headers(&v)
        };
        assert!(d
            .allow(&proxied(Some("Bearer s3cret")), Access::Act)
            .is_ok());
        assert_eq!(
            d.allow(&proxied(None), Access::Read).unwrap_err().0,
            StatusCode::UNAUTHORIZED
        );

        let open = dash("0.0.0.0:0", Some("s3cret"));
        let any = to("relay.internal:9470");
        assert_eq!(
            open.allow(&any(None), Access::Read).unwrap_err().0,
            StatusCode::UNAUTHORIZED
        );
        assert!(open
            .allow(&any(Some("Bearer s3cret")), Access::Read)
            .is_ok());

        let off = dash("0.0.0.0:0", None);
        assert_eq!(
            off.allow(&any(None), Access::Read).unwrap_err().0,
            StatusCode::FORBIDDEN
        );
        assert!(!off.may_act(&any(None)));
    }
}
