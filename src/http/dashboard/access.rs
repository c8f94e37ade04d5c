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

impl Dashboard {
    /// Whether the request carries the admin token (compared as SHA-256 digests, so the
    /// time taken says nothing about the token).
    fn has_token(&self, headers: &HeaderMap) -> bool {
        self.admin_token
            .as_ref()
            .is_some_and(|token| crate::http::bearer_is(headers, token))
    }

    /// Whether `http.admin_token` is set (the page offers a login only then).
    pub fn has_admin_token(&self) -> bool {
        self.admin_token.is_some()
    }

    /// Whether this request may act (the `admin` flag the page shows).
    pub fn may_act(&self, headers: &HeaderMap) -> bool {
        match &self.admin_token {
            Some(_) => self.has_token(headers),
            None => self.loopback,
        }
    }

    /// Refuses a request that may not `access` (see the module docs). The Host and Origin
    /// checks guard what a browser may do without a credential; a request carrying the
    /// admin token is the operator's (a reverse proxy in front changes both headers).
    pub fn allow(&self, headers: &HeaderMap, access: Access) -> Result<(), ApiError> {
        let authed = self.has_token(headers);
        if self.loopback && !authed && !loopback_host(headers) {
            let (status, hint) = match self.admin_token {
                Some(_) => (StatusCode::UNAUTHORIZED, ": log in with the admin token"),
                None => (StatusCode::FORBIDDEN, ""),
            };
            return Err(ApiError(
                status,
                format!(
                    "the dashboard on a loopback listener answers only to localhost, \
                     127.0.0.1 or [::1] in the Host header{hint}"
                ),
            ));
        }
        if !self.loopback && self.admin_token.is_none() {
            return Err(ApiError(
                StatusCode::FORBIDDEN,
                "the dashboard API is off on a non-loopback listener without an admin token: \
                 set [http] admin_token"
                    .into(),
            ));
        }
        let presented = headers.contains_key(header::AUTHORIZATION);
        if presented && self.admin_token.is_some() && !self.has_token(headers) {
            return Err(ApiError(
                StatusCode::UNAUTHORIZED,
                "wrong admin token".into(),
            ));
        }
        let needs_token = self.admin_token.is_some() && (access == Access::Act || !self.loopback);
        if needs_token && !authed {
            return Err(ApiError(
                StatusCode::UNAUTHORIZED,
                "this needs the admin token (http.admin_token)".into(),
            ));
        }
        if access == Access::Act {
            check_same_origin(headers, authed)?;
        }
        Ok(())
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
