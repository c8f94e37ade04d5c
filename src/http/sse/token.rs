//! Who may subscribe to what: HS256 JWTs minted by the app (contract section 5).

use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::sinks::routing::TypeFilter;

/// Clock skew tolerated on `exp`, `nbf` and `iat`, between the app that mints tokens and the
/// relay.
pub const EXP_LEEWAY_SECS: u64 = 30;

#[derive(Debug, Deserialize)]
struct Claims {
    org_id: String,
    exp: u64,
    #[serde(default)]
    types: Option<Vec<String>>,
    /// Issued at: a token is never from the future. `nbf` is checked by the validation.
    #[serde(default)]
    iat: Option<u64>,
}

/// What an authorised subscriber receives: one org's events, optionally narrowed by globs
/// from the token and then from `?types=` (each can only narrow).
#[derive(Debug, Clone)]
pub struct Grant {
    pub org_id: String,
    filters: Vec<TypeFilter>,
}

impl Grant {
    pub fn wants(&self, event_type: &str) -> bool {
        self.filters.iter().all(|f| f.matches(event_type))
    }
}

/// Why a request is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Denied {
    /// 401: no token, or one that does not verify or has expired.
    #[error("{0}")]
    Unauthorized(String),
    /// 400: the request itself is malformed (a bad `?types=` glob).
    #[error("{0}")]
    BadRequest(String),
}

/// Why a token does not verify, in our words: the decoder's own (a serde message listing the
/// algorithms it knows, a base64 position) tells an attacker about the parser, and a client
/// nothing it can act on.
fn invalid(e: &jsonwebtoken::errors::Error) -> Denied {
    let why = match e.kind() {
        ErrorKind::ExpiredSignature => "expired",
        ErrorKind::ImmatureSignature => "not valid yet (nbf is in the future)",
        ErrorKind::InvalidSignature => "bad signature",
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            "the algorithm must be HS256"
        }
        ErrorKind::MissingRequiredClaim(_) => "exp and org_id are required",
        ErrorKind::Json(_) => {
            "its claims must be a JSON object with org_id (text) and exp (a number)"
        }
        _ => "malformed (want a JWT: header.claims.signature, base64url)",
    };
    Denied::Unauthorized(format!("invalid token: {why}"))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// Checks the token and builds the grant. `query_types` is `?types=` (comma-separated globs).
/// A token may live at most `max_lifetime`, from its `iat` (or from now, without one) to its
/// `exp`: a leaked token is good for that long at most, whatever its minter wrote.
pub fn authorize(
    key: &DecodingKey,
    token: Option<&str>,
    query_types: Option<&str>,
    max_lifetime: Duration,
) -> Result<Grant, Denied> {
    let token = token.ok_or_else(|| {
        Denied::Unauthorized(
            "missing token: send Authorization: Bearer <jwt> or ?access_token=<jwt>".into(),
        )
    })?;
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = EXP_LEEWAY_SECS;
    validation.validate_nbf = true;
    validation.set_required_spec_claims(&["exp"]);
    let claims = jsonwebtoken::decode::<Claims>(token, key, &validation)
        .map_err(|e| invalid(&e))?
        .claims;
    let now = unix_now();
    if claims.iat.is_some_and(|iat| iat > now + EXP_LEEWAY_SECS) {
        return Err(Denied::Unauthorized(
            "invalid token: issued in the future (iat)".into(),
        ));
    }
    let from = claims.iat.unwrap_or(now).min(now);
    if claims.exp.saturating_sub(from) > max_lifetime.as_secs() + EXP_LEEWAY_SECS {
        return Err(Denied::Unauthorized(format!(
            "invalid token: it lives longer than sse.max_token_lifetime ({}); mint shorter-lived tokens",
            humantime::format_duration(max_lifetime)
        )));
    }
    if claims.org_id.is_empty() {
        return Err(Denied::Unauthorized("invalid token: empty org_id".into()));
    }
    let mut filters = Vec::new();
    if let Some(globs) = claims.types {
        filters
            .push(TypeFilter::new(&globs).map_err(|e| {
                Denied::Unauthorized(format!("invalid token: bad types glob: {e}"))
            })?);
    }
    if let Some(q) = query_types.filter(|q| !q.trim().is_empty()) {
        let globs: Vec<&str> = q
            .split(',')
            .map(str::trim)
            .filter(|g| !g.is_empty())
            .collect();
        filters.push(
            TypeFilter::new(&globs)
                .map_err(|e| Denied::BadRequest(format!("bad ?types= glob: {e}")))?,
        );
    }
    Ok(Grant {
        org_id: claims.org_id,
        filters,
    })
}

/// Mints a token the way an app would; for `dev`, tests and benchmarks.
pub fn mint(secret: &[u8], org_id: &str, types: Option<&[&str]>, ttl_secs: u64) -> String {
    let exp = unix_now() + ttl_secs;
    let mut claims = serde_json::json!({ "org_id": org_id, "exp": exp });
    if let Some(t) = types {
        claims["types"] = serde_json::json!(t);
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .expect("HS256 signing cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    const SECRET: &[u8] = b"test-secret";
    const DAY: Duration = Duration::from_secs(86_400);

    fn key() -> DecodingKey {
        DecodingKey::from_secret(SECRET)
    }

    fn unauthorized(r: Result<Grant, Denied>) -> bool {
        matches!(r, Err(Denied::Unauthorized(_)))
    }

    #[test]
    fn a_valid_token_grants_its_org() {
        let t = mint(SECRET, "org_a", None, 60);
        let g = authorize(&key(), Some(&t), None, DAY).unwrap();
        assert_eq!(g.org_id, "org_a");
        assert!(g.wants("ANYTHING"));
    }

    #[test]
    fn query_types_narrow_and_never_widen() {
        let t = mint(SECRET, "org_a", Some(&["PROJECT.*"]), 60);
        let g = authorize(&key(), Some(&t), Some("PROJECT.CREATED,INVOICE.*"), DAY).unwrap();
        assert!(g.wants("PROJECT.CREATED"));
        assert!(!g.wants("PROJECT.UPDATED"), "narrowed by the query");
        assert!(!g.wants("INVOICE.PAID"), "the token does not allow it");
    }

    #[test]
    fn missing_bad_expired_or_foreign_tokens_are_refused() {
        assert!(unauthorized(authorize(&key(), None, None, DAY)));
        assert!(unauthorized(authorize(
            &key(),
            Some("not.a.jwt"),
            None,
            DAY
        )));
        let wrong_key = mint(b"another secret", "org_a", None, 60);
        assert!(unauthorized(authorize(&key(), Some(&wrong_key), None, DAY)));
        let expired = {
            let exp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
                - 3600;
            jsonwebtoken::encode(
                &jsonwebtoken::Header::new(Algorithm::HS256),
                &serde_json::json!({"org_id": "org_a", "exp": exp}),
                &jsonwebtoken::EncodingKey::from_secret(SECRET),
            )
            .unwrap()
        };
        assert!(unauthorized(authorize(&key(), Some(&expired), None, DAY)));
        // alg "none": an unsigned token claiming any org.
        let b64 = |v: serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let none = format!(
            "{}.{}.",
            b64(serde_json::json!({"alg": "none", "typ": "JWT"})),
            b64(serde_json::json!({"org_id": "org_a", "exp": 9_999_999_999u64}))
        );
        assert!(unauthorized(authorize(&key(), Some(&none), None, DAY)));
        let hs512 = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS512),
            &serde_json::json!({"org_id": "org_a", "exp": 9_999_999_999u64}),
            &jsonwebtoken::EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert!(unauthorized(authorize(&key(), Some(&hs512), None, DAY)));
        let no_exp = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &serde_json::json!({"org_id": "org_a"}),
            &jsonwebtoken::EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert!(unauthorized(authorize(&key(), Some(&no_exp), None, DAY)));
    }

    fn signed(claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    }

    fn refusal(claims: serde_json::Value) -> String {
        match authorize(&key(), Some(&signed(claims)), None, DAY) {
            Err(Denied::Unauthorized(m)) => m,
            other => panic!("accepted: {other:?}"),
        }
    }

    #[test]
    fn tokens_from_the_future_or_living_too_long_are_refused() {
        let now = unix_now();
        let m = refusal(serde_json::json!({"org_id": "a", "exp": now + 600, "nbf": now + 300}));
        assert!(m.contains("nbf"), "{m}");
        let m = refusal(serde_json::json!({"org_id": "a", "exp": now + 600, "iat": now + 300}));
        assert!(m.contains("iat"), "{m}");
        let m = refusal(serde_json::json!({"org_id": "a", "exp": 1_000_000_000_000_000_000u64}));
        assert!(m.contains("sse.max_token_lifetime (1day)"), "{m}");
        let m =
            refusal(serde_json::json!({"org_id": "a", "iat": now - 10, "exp": now + 2 * 86_400}));
        assert!(m.contains("max_token_lifetime"), "{m}");
        // Within the skew leeway, and a day long: fine.
        let ok = signed(
            serde_json::json!({"org_id": "a", "iat": now + 5, "nbf": now + 5, "exp": now + 86_400}),
        );
        assert!(authorize(&key(), Some(&ok), None, DAY).is_ok());
    }

    #[test]
    fn refusals_do_not_echo_the_decoder() {
        let m = refusal(serde_json::json!({"org_id": 7, "exp": unix_now() + 60}));
        assert!(!m.contains("expected") && !m.contains("line"), "{m}");
        let b64 = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        let alg = format!(
            "{}.{}.",
            b64(r#"{"alg":"none"}"#),
            b64(r#"{"org_id":"a","exp":1}"#)
        );
        match authorize(&key(), Some(&alg), None, DAY) {
            Err(Denied::Unauthorized(m)) => {
                assert!(!m.contains("variant") && !m.contains("expected"), "{m}")
            }
            other => panic!("accepted: {other:?}"),
        }
    }
}
