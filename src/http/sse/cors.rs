//! CORS for the event stream, so a page on another origin (the app on `app.example.com`, the
//! relay on `events.example.com`) can open it with `fetch` and an `Authorization` header:
//! only for the origins `[sse] allowed_origins` lists, compared exactly. A preflight from
//! one of them is answered 204 with what the stream needs (GET; the `Authorization` and
//! `Last-Event-ID` headers); from any other origin 403. Every answer of `/v1/events` to an
//! allowed origin carries `Access-Control-Allow-Origin`, refusals (401, 400) included, so
//! the page can read why. No cookies are involved (tokens are bearer), so no
//! `Allow-Credentials`.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// How long a browser may reuse a preflight's answer.
const MAX_AGE_SECS: &str = "600";

/// The origins allowed, as `scheme://host[:port]` (see [`normalize`]).
pub type Origins = Arc<[String]>;

/// `origin` as browsers send it (`https://app.example.com`, a port only when not the
/// scheme's default), or why it cannot be one. Wildcards are refused: list each origin.
pub fn normalize(origin: &str) -> Result<String, String> {
    let url = url::Url::parse(origin)
        .map_err(|_| "is not an origin such as https://app.example.com".to_owned())?;
    if !matches!(url.scheme(), "http" | "https")
        || url.host_str().is_none()
        || !url.username().is_empty()
        || url.password().is_some()
        || url.path() != "/"
        || url.query().is_some()
        || url.fragment().is_some()
        || origin.ends_with('/')
        || origin.contains('*')
    {
        return Err(
            "must be an origin: scheme, host and an optional port, e.g. https://app.example.com \
             (no path, no trailing slash, no wildcard)"
                .to_owned(),
        );
    }
    Ok(url.origin().ascii_serialization())
}

/// The middleware of `/v1/events` (see the module's doc).
pub async fn apply(State(origins): State<Origins>, req: Request, next: Next) -> Response {
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .filter(|o| origins.iter().any(|a| a == o))
        .and_then(|o| HeaderValue::from_str(o).ok());
    if req.method() == Method::OPTIONS {
        let Some(origin) = origin else {
            return (
                StatusCode::FORBIDDEN,
                "this origin may not read the event stream ([sse] allowed_origins)\n",
            )
                .into_response();
        };
        return (
            StatusCode::NO_CONTENT,
            [
                (header::ACCESS_CONTROL_ALLOW_ORIGIN, origin),
                (
                    header::ACCESS_CONTROL_ALLOW_METHODS,
                    HeaderValue::from_static("GET"),
                ),
                (
                    header::ACCESS_CONTROL_ALLOW_HEADERS,
                    HeaderValue::from_static("authorization, last-event-id"),
                ),
                (
                    header::ACCESS_CONTROL_MAX_AGE,
                    HeaderValue::from_static(MAX_AGE_SECS),
                ),
                (header::VARY, HeaderValue::from_static("Origin")),
            ],
        )
            .into_response();
    }
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.append(header::VARY, HeaderValue::from_static("Origin"));
    if let Some(origin) = origin {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("retry-after"),
        );
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_checked_and_written_as_browsers_send_them() {
        assert_eq!(
            normalize("https://App.Example.com").unwrap(),
            "https://app.example.com"
        );
        assert_eq!(
            normalize("https://app.example.com:443").unwrap(),
            "https://app.example.com"
        );
        assert_eq!(
            normalize("http://127.0.0.1:3000").unwrap(),
            "http://127.0.0.1:3000"
        );
        for bad in [
            "*",
            "https://*.example.com",
            "https://app.example.com/",
            "https://app.example.com/path",
            "ftp://app.example.com",
            "https://user@app.example.com",
            "app.example.com",
        ] {
            assert!(normalize(bad).is_err(), "{bad}");
        }
    }
}
