//! The public-key and Standard Webhooks family: Standard Webhooks and Svix (`v1` HMAC with
//! `whsec_` secrets, `v1a` ed25519 with `whpk_` keys), Discord (ed25519) and SendGrid
//! (ECDSA P-256), and how each scheme's keys are written.

use ed25519_dalek::{Signature as EdSignature, VerifyingKey as EdKey};
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{Signature as EcSignature, VerifyingKey as EcKey};
use subtle::ConstantTimeEq;

use super::entry::{Algorithm, KeyEncoding, Scheme, TimestampUnit};
use super::hmac::{mac, split_once};
use super::signed::{self, Signed};
use super::{Failure, Key};

/// The DER header of a P-256 `SubjectPublicKeyInfo` (RFC 5480), before the 65-byte point:
/// SendGrid shows its verification key as this, base64.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce,
    0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// A key as the provider shows it, read for `scheme`.
pub fn parse(scheme: Scheme, key_encoding: KeyEncoding, text: &str) -> Result<Key, &'static str> {
    let text = text.trim();
    match scheme {
        Scheme::StandardWebhooks | Scheme::Svix => {
            if let Some(secret) = text.strip_prefix("whsec_") {
                return signed::base64(secret.as_bytes())
                    .map(Key::Mac)
                    .ok_or("a whsec_ secret must be base64 after its prefix");
            }
            if let Some(public) = text.strip_prefix("whpk_") {
                return ed25519(signed::base64(public.as_bytes()))
                    .ok_or("a whpk_ key must be a base64 ed25519 public key after its prefix");
            }
            Err("must start with whsec_ (HMAC secret) or whpk_ (ed25519 public key)")
        }
        Scheme::Discord => {
            ed25519(signed::hex(text.as_bytes())).ok_or("must be the application's public key, 64 hex characters")
        }
        Scheme::Sendgrid => {
            let der: String = text
                .lines()
                .filter(|line| !line.starts_with("-----"))
                .collect::<Vec<_>>()
                .concat();
            signed::base64(der.as_bytes())
                .and_then(|der| {
                    let point = der.strip_prefix(P256_SPKI_PREFIX.as_slice())?;
                    EcKey::from_sec1_bytes(point).ok()
                })
                .map(Key::P256)
                .ok_or("must be the base64 (or PEM) P-256 public key SendGrid shows")
        }
        Scheme::Msteams => signed::base64(text.as_bytes())
            .map(Key::Mac)
            .ok_or("must be the base64 security token Teams shows"),
        _ if text.is_empty() => Err("must not be empty"),
        _ => match key_encoding {
            KeyEncoding::Raw => Ok(Key::Mac(text.as_bytes().to_vec())),
            KeyEncoding::Base64 => signed::base64(text.as_bytes())
                .map(Key::Mac)
                .ok_or("must be base64 (hmac.key_encoding)"),
        },
    }
}

fn ed25519(bytes: Option<Vec<u8>>) -> Option<Key> {
    let bytes: [u8; 32] = bytes?.try_into().ok()?;
    EdKey::from_bytes(&bytes).ok().map(Key::Ed25519)
}

/// Standard Webhooks (`webhook-` headers) or Svix (`svix-` headers, `webhook-` accepted too).
pub fn standard_webhooks(
    prefix: &str,
    delivery: &Signed,
    body: &[u8],
    keys: &[Key],
    tolerance_s: u64,
) -> Result<(), Failure> {
    let header = |name: &str| {
        let own = format!("{prefix}{name}");
        match delivery.require(&own) {
            Err(Failure::MissingHeader(_)) if prefix != "webhook-" => delivery.require(&format!("webhook-{name}")),
            found => found,
        }
    };
    let (id, timestamp, signatures) = (header("id")?, header("timestamp")?, header("signature")?);
    let timestamp_name = format!("{prefix}timestamp");
    let signed_at = signed::seconds(timestamp, TimestampUnit::Seconds).ok_or(Failure::Malformed(timestamp_name))?;
    delivery.check_fresh(signed_at, tolerance_s)?;
    let signed = [id, b".", timestamp, b".", body].concat();
    let mut well_formed = false;
    for item in signatures.split(|&b| b == b' ').filter(|item| !item.is_empty()) {
        let Some((version, signature)) = split_once(item, b',') else {
            continue;
        };
        let Some(signature) = signed::base64(signature) else {
            continue;
        };
        well_formed = true;
        let matched = match version {
            b"v1" => keys.iter().any(|key| match key {
                Key::Mac(secret) => bool::from(signature.ct_eq(&mac(Algorithm::Sha256, secret, &[&signed]))),
                _ => false,
            }),
            b"v1a" => keys.iter().any(|key| ed25519_verifies(key, &signed, &signature)),
            _ => false,
        };
        if matched {
            return Ok(());
        }
    }
    if !well_formed {
        return Err(Failure::Malformed(format!("{prefix}signature")));
    }
    Err(Failure::NoKeyMatches)
}

fn ed25519_verifies(key: &Key, message: &[u8], signature: &[u8]) -> bool {
    let Key::Ed25519(key) = key else { return false };
    let Ok(signature) = EdSignature::from_slice(signature) else {
        return false;
    };
    key.verify_strict(message, &signature).is_ok()
}

/// Discord interactions: ed25519 over `<X-Signature-Timestamp><body>`, hex signature.
pub fn discord(delivery: &Signed, body: &[u8], keys: &[Key], tolerance_s: u64) -> Result<(), Failure> {
    const SIGNATURE: &str = "x-signature-ed25519";
    const TIMESTAMP: &str = "x-signature-timestamp";
    let signature = delivery.require(SIGNATURE)?;
    let timestamp = delivery.require(TIMESTAMP)?;
    let signature = signed::hex(signature.trim_ascii())
        .filter(|s| s.len() == 64)
        .ok_or(Failure::Malformed(SIGNATURE.into()))?;
    let signed_at = signed::seconds(timestamp, TimestampUnit::Seconds).ok_or(Failure::Malformed(TIMESTAMP.into()))?;
    delivery.check_fresh(signed_at, tolerance_s)?;
    let signed = [timestamp, body].concat();
    if keys.iter().any(|key| ed25519_verifies(key, &signed, &signature)) {
        return Ok(());
    }
    Err(Failure::NoKeyMatches)
}

/// SendGrid's Event Webhook: ECDSA P-256/SHA-256 over `<timestamp><body>`, a base64 DER signature.
pub fn sendgrid(delivery: &Signed, body: &[u8], keys: &[Key], tolerance_s: u64) -> Result<(), Failure> {
    const SIGNATURE: &str = "x-twilio-email-event-webhook-signature";
    const TIMESTAMP: &str = "x-twilio-email-event-webhook-timestamp";
    let signature = delivery.require(SIGNATURE)?;
    let timestamp = delivery.require(TIMESTAMP)?;
    let signature = signed::base64(signature.trim_ascii())
        .and_then(|der| EcSignature::from_der(&der).ok())
        .ok_or(Failure::Malformed(SIGNATURE.into()))?;
    let signed_at = signed::seconds(timestamp, TimestampUnit::Seconds).ok_or(Failure::Malformed(TIMESTAMP.into()))?;
    delivery.check_fresh(signed_at, tolerance_s)?;
    let signed = [timestamp, body].concat();
    // A signer may write the high-S form of a signature; it verifies as its low-S twin.
    let signature = signature.normalize_s().unwrap_or(signature);
    let verifies = keys.iter().any(|key| match key {
        Key::P256(key) => key.verify(&signed, &signature).is_ok(),
        _ => false,
    });
    if verifies {
        return Ok(());
    }
    Err(Failure::NoKeyMatches)
}
