//! Standard Webhooks signatures over `"{id}.{timestamp}.{body}"`, one per configured key:
//!
//! - `whsec_<base64>`: symmetric, `v1,` + base64(HMAC-SHA256(key, content)).
//! - `whsk_<base64>`: asymmetric, `v1a,` + base64(ed25519 signature); receivers verify with the
//!   matching `whpk_<base64>` public key and hold no secret.
//!
//! The prefix says the scheme, as the specification intends, so an endpoint signs with
//! whatever its `secret` lists. Several keys may be configured at once (space-separated)
//! while a key rotates, or while receivers move from `v1` to `v1a`; each produces one
//! signature and the header lists them all, space-separated, so every receiver keeps verifying.

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use ring::signature::{Ed25519KeyPair, KeyPair};
use sha2::Sha256;

use crate::secret::Secret;

type HmacSha256 = Hmac<Sha256>;

/// The prefix of a symmetric secret.
pub const HMAC_PREFIX: &str = "whsec_";
/// The prefix of an ed25519 secret key.
pub const ED25519_PREFIX: &str = "whsk_";
/// The prefix of an ed25519 public key, as receivers are given it.
pub const PUBLIC_PREFIX: &str = "whpk_";

/// One signing key, ready to sign: an HMAC state a delivery only clones, or an ed25519 pair.
#[derive(Clone)]
enum Key {
    Hmac(HmacSha256),
    Ed25519(Arc<Ed25519KeyPair>),
}

/// Decoded signing keys, in the order configured.
#[derive(Clone)]
pub struct SigningKeys(Vec<Key>);

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
    /// Parses one or more space-separated secrets: `whsec_<base64>` (the prefix is optional,
    /// as in the reference libraries) or `whsk_<base64>` (an ed25519 key: its 32-byte seed,
    /// or the 64 bytes of seed and public key that libsodium calls a secret key). Errors
    /// never echo the secret.
    pub fn parse(secret: &Secret) -> Result<Self, String> {
        let mut keys = Vec::new();
        for (n, part) in secret.expose().split_whitespace().enumerate() {
            let n = n + 1;
            keys.push(match part.strip_prefix(ED25519_PREFIX) {
                Some(b64) => Key::Ed25519(Arc::new(ed25519_pair(n, b64)?)),
                None => {
                    let b64 = part.strip_prefix(HMAC_PREFIX).unwrap_or(part);
                    let raw = B64.decode(b64).map_err(|_| {
                        format!("key {n} is not a whsec_ or whsk_ secret (the prefix, then base64)")
                    })?;
                    if raw.is_empty() {
                        return Err(format!("key {n} is empty"));
                    }
                    Key::Hmac(HmacSha256::new_from_slice(&raw).expect("HMAC takes any length"))
                }
            });
        }
        if keys.is_empty() {
            return Err("is empty".into());
        }
        Ok(Self(keys))
    }

    /// The `whpk_` public key of each ed25519 key, in the order configured: what receivers
    /// verify `v1a` signatures with.
    pub fn public_keys(&self) -> Vec<String> {
        self.0
            .iter()
            .filter_map(|k| match k {
                Key::Ed25519(pair) => Some(public_key(pair)),
                Key::Hmac(_) => None,
            })
            .collect()
    }

    /// The `webhook-signature` header value for one attempt.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let ts = timestamp.to_string();
        let mut header = String::with_capacity(100 * self.0.len());
        let mut content = Vec::new();
        for key in &self.0 {
            if !header.is_empty() {
                header.push(' ');
            }
            match key {
                Key::Hmac(mac) => {
                    let mut mac = mac.clone();
                    for part in [id.as_bytes(), b".", ts.as_bytes(), b".", body] {
                        mac.update(part);
                    }
                    header.push_str("v1,");
                    B64.encode_string(mac.finalize().into_bytes(), &mut header);
                }
                Key::Ed25519(pair) => {
                    // ed25519 hashes its message twice, so it needs it whole; built once.
                    if content.is_empty() {
                        content = [id.as_bytes(), b".", ts.as_bytes(), b".", body].concat();
                    }
                    header.push_str("v1a,");
                    B64.encode_string(pair.sign(&content), &mut header);
                }
            }
        }
        header
    }
}

/// The pair of the `n`th key from the base64 after `whsk_`.
fn ed25519_pair(n: usize, b64: &str) -> Result<Ed25519KeyPair, String> {
    let bad = || {
        format!(
            "key {n} is not a whsk_ ed25519 key (whsk_, then the base64 of its 32-byte seed \
             or of 64 bytes of seed and public key): make one with `outbox-relay keygen`"
        )
    };
    let raw = B64.decode(b64).map_err(|_| bad())?;
    match raw.len() {
        32 => Ed25519KeyPair::from_seed_unchecked(&raw).map_err(|_| bad()),
        64 => Ed25519KeyPair::from_seed_and_public_key(&raw[..32], &raw[32..])
            .map_err(|_| format!("key {n}: its public half does not match its seed")),
        _ => Err(bad()),
    }
}

fn public_key(pair: &Ed25519KeyPair) -> String {
    format!("{PUBLIC_PREFIX}{}", B64.encode(pair.public_key().as_ref()))
}

/// A new key of either kind, as `(secret, public key)`: `whsk_` + base64 of a random 32-byte
/// seed and its `whpk_` (ed25519), or `whsec_` + 32 random bytes and no public key (HMAC).
pub fn generate(ed25519: bool) -> (String, Option<String>) {
    let bytes = rand::random::<[u8; 32]>();
    if !ed25519 {
        return (format!("{HMAC_PREFIX}{}", B64.encode(bytes)), None);
    }
    let pair = Ed25519KeyPair::from_seed_unchecked(&bytes).expect("any 32 bytes are a seed");
    let secret = format!("{ED25519_PREFIX}{}", B64.encode(bytes));
    (secret, Some(public_key(&pair)))
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
        for bad in [
            "whsec_%%%hunter2%%%",
            "whsk_%%%hunter2%%%",
            "whsk_aHVudGVyMg==",
        ] {
            let err = SigningKeys::parse(&Secret::new(bad)).unwrap_err();
            assert!(!err.contains("hunter2") && !err.contains("aHVud"), "{err}");
            assert!(err.starts_with("key 1"), "{err}");
        }
        assert!(SigningKeys::parse(&Secret::new("  ")).is_err());
        // 64 bytes whose second half is not the seed's public key.
        let err = SigningKeys::parse(&Secret::new(format!("whsk_{}", B64.encode([7u8; 64]))));
        assert!(err.unwrap_err().contains("does not match"));
    }

    /// RFC 8032, section 7.1, test 1: the seed, its public key and the signature of the empty
    /// message. The content signed here is never empty, so the check goes through `ring`
    /// directly with the same pair the parser built.
    #[test]
    fn ed25519_keys_follow_rfc_8032() {
        let seed = hex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60");
        let public = hex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a");
        let keys = SigningKeys::parse(&Secret::new(format!("whsk_{}", B64.encode(&seed)))).unwrap();
        assert_eq!(
            keys.public_keys(),
            [format!("whpk_{}", B64.encode(&public))]
        );
        let Key::Ed25519(pair) = &keys.0[0] else {
            panic!("not an ed25519 key")
        };
        assert_eq!(
            pair.sign(b"").as_ref(),
            hex(
                "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155\
                 5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
            )
        );
        // The 64-byte form (seed, then public key) is the same key.
        let long = format!("whsk_{}", B64.encode([seed, public].concat()));
        let same = SigningKeys::parse(&Secret::new(long)).unwrap();
        assert_eq!(same.sign("msg_1", 1, b"{}"), keys.sign("msg_1", 1, b"{}"));
    }

    /// Mixed keys sign in the order configured, each with its own scheme, and the `v1a`
    /// signature verifies with the public key under the content the specification names.
    #[test]
    fn mixed_keys_give_one_signature_each() {
        let (secret, public) = generate(true);
        let keys = SigningKeys::parse(&Secret::new(format!(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw {secret}"
        )))
        .unwrap();
        let body = br#"{"test": 2432232314}"#;
        let header = keys.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        let (v1, v1a) = header.split_once(' ').unwrap();
        assert_eq!(v1, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        let sig = B64.decode(v1a.strip_prefix("v1a,").unwrap()).unwrap();
        let public = B64
            .decode(public.unwrap().strip_prefix("whpk_").unwrap())
            .unwrap();
        let content = [b"msg_p5jXN8AQM9LWM0D4loKWxJek.1614265330.".as_slice(), body].concat();
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &public)
            .verify(&content, &sig)
            .expect("the v1a signature verifies");
        assert!(generate(false).0.starts_with("whsec_") && generate(false).1.is_none());
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }
}
