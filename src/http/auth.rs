//! Who may subscribe to what: HS256 JWTs minted by the app (contract section 5).

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::deliver::routing::TypeFilter;

/// Clock skew tolerated on `exp`, between the app that mints tokens and the relay.
pub const EXP_LEEWAY_SECS: u64 = 30;

#[derive(Debug, Deserialize)]
struct Claims {
    org_id: String,
    #[allow(dead_code)] // checked by the validation, kept to make it required here too
    exp: u64,
    #[serde(default)]
    types: Option<Vec<String>>,
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

/// Checks the token and builds the grant. `query_types` is `?types=` (comma-separated globs).
pub fn authorize(
    key: &DecodingKey,
    token: Option<&str>,
    query_types: Option<&str>,
) -> Result<Grant, Denied> {
    let token = token.ok_or_else(|| {
        Denied::Unauthorized(
            "missing token: send Authorization: Bearer <jwt> or ?access_token=<jwt>".into(),
        )
    })?;
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = EXP_LEEWAY_SECS;
    validation.set_required_spec_claims(&["exp"]);
    let claims = jsonwebtoken::decode::<Claims>(token, key, &validation)
        .map_err(|e| Denied::Unauthorized(format!("invalid token: {e}")))?
        .claims;
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
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        + ttl_secs;
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

    fn key() -> DecodingKey {
        DecodingKey::from_secret(SECRET)
    }

    fn unauthorized(r: Result<Grant, Denied>) -> bool {
        matches!(r, Err(Denied::Unauthorized(_)))
    }

    #[test]
    fn a_valid_token_grants_its_org() {
        let t = mint(SECRET, "org_a", None, 60);
        let g = authorize(&key(), Some(&t), None).unwrap();
        assert_eq!(g.org_id, "org_a");
        assert!(g.wants("ANYTHING"));
    }

    #[test]
    fn query_types_narrow_and_never_widen() {
        let t = mint(SECRET, "org_a", Some(&["PROJECT.*"]), 60);
        let g = authorize(&key(), Some(&t), Some("PROJECT.CREATED,INVOICE.*")).unwrap();
        assert!(g.wants("PROJECT.CREATED"));
        assert!(!g.wants("PROJECT.UPDATED"), "narrowed by the query");
        assert!(!g.wants("INVOICE.PAID"), "the token does not allow it");
    }

    #[test]
    fn missing_bad_expired_or_foreign_tokens_are_refused() {
        assert!(unauthorized(authorize(&key(), None, None)));
        assert!(unauthorized(authorize(&key(), Some("not.a.jwt"), None)));
        let wrong_key = mint(b"another secret", "org_a", None, 60);
        assert!(unauthorized(authorize(&key(), Some(&wrong_key), None)));
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
        assert!(unauthorized(authorize(&key(), Some(&expired), None)));
        // alg "none": an unsigned token claiming any org.
        let b64 = |v: serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let none = format!(
            "{}.{}.",
            b64(serde_json::json!({"alg": "none", "typ": "JWT"})),
            b64(serde_json::json!({"org_id": "org_a", "exp": 9_999_999_999u64}))
        );
        assert!(unauthorized(authorize(&key(), Some(&none), None)));
        let hs512 = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS512),
            &serde_json::json!({"org_id": "org_a", "exp": 9_999_999_999u64}),
            &jsonwebtoken::EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert!(unauthorized(authorize(&key(), Some(&hs512), None)));
        let no_exp = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &serde_json::json!({"org_id": "org_a"}),
            &jsonwebtoken::EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert!(unauthorized(authorize(&key(), Some(&no_exp), None)));
    }
}
