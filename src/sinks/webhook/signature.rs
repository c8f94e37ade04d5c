//! Standard Webhooks signatures: `v1,` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")).
//!
//! The key is the base64 part of a `whsec_...` secret, decoded. Several keys may be configured
//! at once (space-separated) while a secret rotates; each produces one signature and the
//! header lists them all, space-separated, so receivers on either key keep verifying.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::secret::Secret;

type HmacSha256 = Hmac<Sha256>;

/// Decoded signing keys, each already turned into an HMAC state so a delivery only clones it.
#[derive(Clone)]
pub struct SigningKeys(Vec<HmacSha256>);

impl std::fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKeys([{} redacted])", self.0.len())
    }
}

/// The Standard Webhooks headers of one hand-over, as names and values: `webhook-id`,
/// `webhook-timestamp` (now) and, with `keys`, `webhook-signature`. Webhooks send them as
/// HTTP headers; brokers carry them as message headers or entry fields, so consumers verify
/// as webhook receivers do.
pub fn headers(keys: Option<&SigningKeys>, id: &str, body: &[u8]) -> Vec<(&'static str, String)> {
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let mut out = vec![
        ("webhook-id", id.to_owned()),
        ("webhook-timestamp", ts.to_string()),
    ];
    if let Some(keys) = keys {
        out.push(("webhook-signature", keys.sign(id, ts, body)));
    }
    out
}

impl SigningKeys {
    /// Parses one or more space-separated `whsec_<base64>` secrets (the prefix is optional, as
    /// in the reference libraries). Errors never echo the secret.
    pub fn parse(secret: &Secret) -> Result<Self, String> {
        let mut keys = Vec::new();
        for (n, part) in secret.expose().split_whitespace().enumerate() {
            let b64 = part.strip_prefix("whsec_").unwrap_or(part);
            let raw = B64.decode(b64).map_err(|_| {
                format!(
                    "key {} is not a whsec_ secret (whsec_ followed by base64)",
                    n + 1
                )
            })?;
            if raw.is_empty() {
                return Err(format!("key {} is empty", n + 1));
            }
            keys.push(HmacSha256::new_from_slice(&raw).expect("HMAC takes keys of any length"));
        }
        if keys.is_empty() {
            return Err("is empty".into());
        }
        Ok(Self(keys))
    }

    /// The `webhook-signature` header value for one attempt.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut header = String::with_capacity(48 * self.0.len());
        for mac in &self.0 {
            let mut mac = mac.clone();
            mac.update(id.as_bytes());
            mac.update(b".");
            mac.update(timestamp.to_string().as_bytes());
            mac.update(b".");
            mac.update(body);
            if !header.is_empty() {
                header.push(' ');
            }
            header.push_str("v1,");
            B64.encode_string(mac.finalize().into_bytes(), &mut header);
        }
        header
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vector published with the Standard Webhooks reference libraries.
    #[test]
    fn reproduces_the_published_test_vector() {
        let keys =
            SigningKeys::parse(&Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")).unwrap();
        assert_eq!(
            keys.sign(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn rotation_signs_with_every_key() {
        let keys = SigningKeys::parse(&Secret::new(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw whsec_c2Vjb25k",
        ))
        .unwrap();
        let header = keys.sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        let parts: Vec<_> = header.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert!(parts[1].starts_with("v1,") && parts[1] != parts[0]);
    }

    #[test]
    fn bad_secrets_are_refused_without_echo() {
        let err = SigningKeys::parse(&Secret::new("whsec_%%%secret%%%")).unwrap_err();
        assert!(!err.contains("secret%%%"));
        assert!(SigningKeys::parse(&Secret::new("  ")).is_err());
    }
}
