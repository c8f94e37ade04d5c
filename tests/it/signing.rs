//! Standard Webhooks asymmetric signatures (`v1a`, ed25519): keys made by `keygen`, shown by
//! `check-config`, and signatures that receivers verify with the public key alone.
//!
//! The reference `standardwebhooks` libraries (crate 1.0, PyPI and npm 1.3) verify only `v1`,
//! so `v1a` is verified with two independent ed25519 implementations instead: ed25519-dalek
//! here (the relay signs with ring) and Node's `crypto.verify` (OpenSSL), running the
//! snippet docs/receivers.md gives receivers. Node.js 18+ is needed (`.ci/run` installs it).

use crate::common::process::{path_str, relay_cmd, run_to_end, write_config};
use crate::common::*;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::{Signature, VerifyingKey};

/// `keygen`'s key and public key, read from its output.
async fn keygen() -> (String, String) {
    let (status, out, err) = run_to_end("keygen", relay_cmd(&["keygen"])).await;
    assert_eq!(status.code(), Some(0), "{err}");
    let secret = out
        .lines()
        .find_map(|l| l.strip_prefix("secret = \"")?.strip_suffix('"'))
        .unwrap_or_else(|| panic!("no secret line in:\n{out}"));
    let public = out
        .split_whitespace()
        .find(|w| w.starts_with("whpk_"))
        .unwrap_or_else(|| panic!("no public key in:\n{out}"));
    assert!(secret.starts_with("whsk_"), "{out}");
    (secret.to_owned(), public.to_owned())
}

fn verifying_key(public: &str) -> VerifyingKey {
    let raw = B64.decode(public.strip_prefix("whpk_").unwrap()).unwrap();
    VerifyingKey::from_bytes(&raw.try_into().expect("32 bytes")).unwrap()
}

/// The signatures of `scheme` (`v1` or `v1a`) in a `webhook-signature` header, in order.
fn signatures<'a>(header: &'a str, scheme: &str) -> Vec<&'a str> {
    header
        .split(' ')
        .filter_map(|s| s.strip_prefix(scheme)?.strip_prefix(','))
        .collect()
}

/// What the receiver verifies: `{id}.{timestamp}.{body}`, from the request as it arrived.
fn signed_content(d: &Delivery) -> Vec<u8> {
    let h = |name: &str| d.headers[name].to_str().unwrap().to_owned();
    [
        h("webhook-id").as_bytes(),
        b".",
        h("webhook-timestamp").as_bytes(),
        b".",
        &d.raw,
    ]
    .concat()
}

/// One endpoint signs with a `whsec_` secret and two `whsk_` keys (a rotation): every
/// request carries one signature per key, in the order configured; the reference library
/// verifies the `v1` one, and each `v1a` one verifies with its own public key only, in Rust
/// and in Node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1a_signatures_verify_with_the_public_keys_alone() {
    let (old_key, old_public) = keygen().await;
    let (new_key, new_public) = keygen().await;
    assert_ne!(old_public, new_public, "keygen made the same key twice");

    let rx = Receiver::start().await;
    let db = TestDb::new().await;
    let webhook = format!(
        "[[webhook]]\nname = \"signed\"\nurl = \"{}\"\nsecret = \"{SECRET} {old_key} {new_key}\"\n",
        rx.url
    );

    // check-config names each public key, in order, and no secret.
    let file = db.config_file(&webhook);
    let (status, out, err) = run_to_end(
        "check-config",
        relay_cmd(&["check-config", "--config", path_str(&file)]),
    )
    .await;
    assert_eq!(status.code(), Some(0), "{err}");
    let shown: Vec<&str> = out
        .split_whitespace()
        .filter(|w| w.starts_with("whpk_"))
        .collect();
    assert_eq!(shown, [old_public.as_str(), new_public.as_str()], "{out}");
    assert!(out.contains("webhook \"signed\" signs v1a"), "{out}");
    for secret in [&old_key, &new_key] {
        assert!(!format!("{out}{err}").contains(secret.as_str()));
    }

    let (_cfg, relay) = db.start_relay(&webhook).await;
    let client = db.client().await;
    let ids = insert_events(&client, 20, "SIGNED.EVENT").await;
    rx.wait_accepted(&ids).await;
    relay.stop().await.unwrap();

    let (old, new) = (verifying_key(&old_public), verifying_key(&new_public));
    let deliveries = rx.deliveries();
    for d in &deliveries {
        assert!(
            d.verified,
            "the reference library rejected the v1 signature"
        );
        let header = d.headers["webhook-signature"].to_str().unwrap();
        assert_eq!(signatures(header, "v1").len(), 1, "{header}");
        let v1a: Vec<Signature> = signatures(header, "v1a")
            .iter()
            .map(|s| Signature::from_slice(&B64.decode(s).unwrap()).unwrap())
            .collect();
        assert_eq!(v1a.len(), 2, "{header}");
        let content = signed_content(d);
        old.verify_strict(&content, &v1a[0])
            .expect("old key's signature");
        new.verify_strict(&content, &v1a[1])
            .expect("new key's signature");
        assert!(old.verify_strict(&content, &v1a[1]).is_err());
        let mut tampered = content.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(new.verify_strict(&tampered, &v1a[1]).is_err());
    }

    // The receivers' snippet, as docs/receivers.md gives it, in Node (OpenSSL's ed25519):
    // each request verifies with the new public key, and none once its body is changed.
    let requests: Vec<serde_json::Value> = deliveries
        .iter()
        .map(|d| {
            let h = |n: &str| d.headers[n].to_str().unwrap();
            serde_json::json!({
                "id": h("webhook-id"),
                "timestamp": h("webhook-timestamp"),
                "signature": h("webhook-signature"),
                "body": String::from_utf8(d.raw.to_vec()).unwrap(),
            })
        })
        .collect();
    let input = write_config(&serde_json::to_string(&requests).unwrap());
    let script = format!(
        "{}\n{}",
        receivers_snippet(),
        r#"
const requests = JSON.parse(require("node:fs").readFileSync(process.argv[1], "utf8"));
let good = 0, tampered = 0;
for (const r of requests) {
  const headers = { "webhook-id": r.id, "webhook-timestamp": r.timestamp, "webhook-signature": r.signature };
  if (verifyV1a(r.body, headers, process.argv[2])) good++;
  if (verifyV1a(r.body + " ", headers, process.argv[2])) tampered++;
}
console.log(JSON.stringify({ good, tampered }));
"#
    );
    let out = std::process::Command::new("node")
        .args(["-e", &script, path_str(&input), &new_public])
        .output()
        .expect("node runs (Node.js 18+ is needed: apt install nodejs)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let counts: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        counts,
        serde_json::json!({ "good": deliveries.len(), "tampered": 0 })
    );
}

/// The JavaScript block of docs/receivers.md that defines `verifyV1a`.
fn receivers_snippet() -> String {
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/receivers.md"),
    )
    .unwrap();
    doc.split("```js")
        .skip(1)
        .filter_map(|block| block.split("```").next())
        .find(|block| block.contains("function verifyV1a"))
        .expect("docs/receivers.md has a ```js block defining verifyV1a")
        .to_owned()
}

/// `keygen --hmac` makes a `whsec_` secret the reference library accepts, and no public key.
#[tokio::test]
async fn keygen_hmac_makes_a_secret_the_reference_library_takes() {
    let (status, out, err) = run_to_end("keygen --hmac", relay_cmd(&["keygen", "--hmac"])).await;
    assert_eq!(status.code(), Some(0), "{err}");
    let secret = out
        .lines()
        .find_map(|l| l.strip_prefix("secret = \"")?.strip_suffix('"'))
        .unwrap();
    assert!(
        secret.starts_with("whsec_") && !out.contains("whpk_"),
        "{out}"
    );
    standardwebhooks::Webhook::new(secret).expect("the reference library takes it");
}
