//! Sigstore bundle v0.3 with a DSSE envelope: the container of OMS signatures and of signed
//! provenance. This module signs a payload and checks a bundle's signature against a trusted key;
//! what the payload says is the business of [`crate::oms`] and [`crate::provenance`].
//!
//! Verification works on the bytes given: the payload is base64-decoded once and the signature is
//! checked over its DSSE pre-authentication encoding; nothing is re-serialised.

use base64::Engine;
use serde::Deserialize;

use crate::error::{Error, Failure, Result};
use crate::keys::{PublicKey, SigningKey};

/// Media type of the bundles Palisade writes.
pub const BUNDLE_MEDIA_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
/// Media types accepted when verifying (v0.3 and its older spellings, v0.2).
pub const ACCEPTED_MEDIA_TYPES: [&str; 3] = [
    BUNDLE_MEDIA_TYPE,
    "application/vnd.dev.sigstore.bundle+json;version=0.3",
    "application/vnd.dev.sigstore.bundle+json;version=0.2",
];
/// DSSE payload type of in-toto statements.
pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// Largest bundle accepted (bundles are small; this bounds memory on hostile input).
pub const MAX_BUNDLE_LEN: u64 = 256 << 20;

/// Reads a bundle file, refusing anything larger than [`MAX_BUNDLE_LEN`].
pub fn read_bundle_file(path: &std::path::Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut v = Vec::new();
    f.take(MAX_BUNDLE_LEN + 1)
        .read_to_end(&mut v)
        .map_err(|e| Error::io(path, e))?;
    if v.len() as u64 > MAX_BUNDLE_LEN {
        return Err(Error::InvalidArgument(format!(
            "{}: larger than any signature bundle",
            path.display()
        )));
    }
    Ok(v)
}

/// DSSE pre-authentication encoding: `DSSEv1 <len> <type> <len> <body>`.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(payload.len() + payload_type.len() + 32);
    v.extend_from_slice(
        format!(
            "DSSEv1 {} {payload_type} {} ",
            payload_type.len(),
            payload.len()
        )
        .as_bytes(),
    );
    v.extend_from_slice(payload);
    v
}

/// Signs `payload` (an in-toto statement) and returns the bundle as JSON bytes.
pub fn sign_payload(payload: &[u8], key: &SigningKey) -> Vec<u8> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let sig = key.sign(&pae(PAYLOAD_TYPE, payload));
    let bundle = serde_json::json!({
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {
            "publicKey": { "hint": key.public_key().hint() },
            "tlogEntries": [],
        },
        "dsseEnvelope": {
            "payload": b64.encode(payload),
            "payloadType": PAYLOAD_TYPE,
            "signatures": [ { "sig": b64.encode(sig), "keyid": "" } ],
        },
    });
    let mut out = serde_json::to_vec_pretty(&bundle).unwrap_or_default();
    out.push(b'\n');
    out
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BundleIn {
    media_type: Option<String>,
    verification_material: Option<MaterialIn>,
    dsse_envelope: Option<EnvelopeIn>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MaterialIn {
    public_key: Option<PublicKeyIdIn>,
    x509_certificate_chain: Option<ChainIn>,
    certificate: Option<CertIn>,
    tlog_entries: Option<Vec<serde_json::Value>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PublicKeyIdIn {
    hint: Option<String>,
    raw_bytes: Option<String>,
}

#[derive(Deserialize)]
struct ChainIn {
    certificates: Vec<CertIn>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CertIn {
    raw_bytes: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EnvelopeIn {
    payload: String,
    payload_type: String,
    signatures: Vec<SignatureIn>,
}

#[derive(Deserialize)]
struct SignatureIn {
    sig: String,
    #[allow(dead_code)]
    keyid: Option<String>,
}

/// How the bundle identifies its signer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SigningMethod {
    /// A long-lived key (`publicKey`).
    Key,
    /// A certificate chain (`x509CertificateChain`) whose leaf holds the trusted key.
    Certificate,
}

/// A bundle whose DSSE signature verified with the trusted key. The payload is the exact byte
/// string that was signed.
#[derive(Debug, Clone)]
pub struct VerifiedEnvelope {
    /// The signed payload bytes.
    pub payload: Vec<u8>,
    /// Signing method the bundle used.
    pub method: SigningMethod,
    /// Hint of the key that verified.
    pub key_hint: String,
}

/// Base64 as DSSE allows: standard or URL-safe alphabet, with or without padding.
pub(crate) fn decode_b64(s: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    [STANDARD, URL_SAFE, STANDARD_NO_PAD, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|e| e.decode(s.trim()).ok())
}

fn malformed(s: impl Into<String>) -> Error {
    Failure::MalformedBundle(s.into()).into()
}

/// Parses `bundle` and checks its DSSE signature against `trusted`.
///
/// Fails (as [`Error::Verification`]) on: invalid JSON, a wrong media type, a missing envelope or
/// verification material, a sigstore (keyless) bundle, a key hint or certificate key that is not
/// the trusted key, an expired certificate, a payload type other than in-toto, or no signature
/// that verifies.
pub fn verify_envelope(bundle: &[u8], trusted: &PublicKey) -> Result<VerifiedEnvelope> {
    if bundle.iter().all(u8::is_ascii_whitespace) {
        return Err(malformed("empty file"));
    }
    let b: BundleIn =
        serde_json::from_slice(bundle).map_err(|e| malformed(format!("not a bundle: {e}")))?;
    let media = b.media_type.ok_or_else(|| malformed("missing mediaType"))?;
    if !ACCEPTED_MEDIA_TYPES.contains(&media.as_str()) {
        return Err(Failure::UnsupportedMediaType(media).into());
    }
    let vm = b
        .verification_material
        .ok_or_else(|| malformed("missing verificationMaterial"))?;
    let env = b
        .dsse_envelope
        .ok_or_else(|| malformed("missing dsseEnvelope"))?;
    let trusted_hint = trusted.hint();
    let method = match (&vm.public_key, &vm.x509_certificate_chain, &vm.certificate) {
        (Some(pk), None, None) => {
            if let Some(h) = &pk.hint {
                if !h.eq_ignore_ascii_case(&trusted_hint) {
                    return Err(Failure::KeyHintMismatch {
                        bundle: h.clone(),
                        trusted: trusted_hint,
                    }
                    .into());
                }
            } else if let Some(raw) = &pk.raw_bytes {
                let raw =
                    decode_b64(raw).ok_or_else(|| malformed("publicKey.rawBytes is not base64"))?;
                if raw != trusted.to_spki_der() {
                    return Err(Failure::KeyHintMismatch {
                        bundle: "publicKey.rawBytes".into(),
                        trusted: trusted_hint,
                    }
                    .into());
                }
            } else {
                return Err(malformed("publicKey has neither hint nor rawBytes"));
            }
            SigningMethod::Key
        }
        (None, Some(chain), None) => {
            let leaf = chain
                .certificates
                .first()
                .ok_or_else(|| malformed("empty x509CertificateChain"))?;
            check_leaf_certificate(&leaf.raw_bytes, trusted)?;
            SigningMethod::Certificate
        }
        (None, None, Some(_)) => {
            if vm.tlog_entries.as_ref().is_none_or(|t| t.is_empty()) {
                return Err(malformed("sigstore bundle without tlogEntries"));
            }
            return Err(Failure::UnsupportedMethod(
                "sigstore keyless bundle: verifying it needs the Sigstore trust root (Fulcio, Rekor), which this verifier does not carry".into(),
            )
            .into());
        }
        (None, None, None) => {
            return Err(malformed("verificationMaterial has no key or certificate"));
        }
        _ => return Err(malformed("verificationMaterial names more than one signer")),
    };
    if env.payload_type != PAYLOAD_TYPE {
        return Err(Failure::WrongPayloadType(env.payload_type).into());
    }
    let payload = decode_b64(&env.payload).ok_or_else(|| malformed("payload is not base64"))?;
    if env.signatures.is_empty() {
        return Err(malformed("dsseEnvelope has no signature"));
    }
    let msg = pae(&env.payload_type, &payload);
    let ok = env
        .signatures
        .iter()
        .any(|s| decode_b64(&s.sig).is_some_and(|sig| trusted.verify(&msg, &sig)));
    if !ok {
        return Err(Failure::BadSignature.into());
    }
    Ok(VerifiedEnvelope {
        payload,
        method,
        key_hint: trusted_hint,
    })
}

/// The leaf certificate must carry exactly the trusted key and be within its validity period.
/// (Palisade pins the key; it does not build a path to a CA.)
fn check_leaf_certificate(raw_b64: &str, trusted: &PublicKey) -> Result<()> {
    use pkcs8::der::Decode;
    let der = decode_b64(raw_b64).ok_or_else(|| malformed("certificate is not base64"))?;
    let cert = x509_cert::Certificate::from_der(&der)
        .map_err(|e| malformed(format!("leaf certificate: {e}")))?;
    let key = PublicKey::from_certificate_der(&der, std::path::Path::new("<bundle certificate>"))
        .map_err(|e| Failure::Certificate(e.to_string()))?;
    if &key != trusted {
        return Err(Failure::Certificate(
            "the leaf certificate's key is not the trusted key".into(),
        )
        .into());
    }
    let v = &cert.tbs_certificate.validity;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    if now < v.not_before.to_unix_duration() || now > v.not_after.to_unix_duration() {
        return Err(Failure::Certificate("the leaf certificate is not valid now".into()).into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Curve;

    #[test]
    fn pae_matches_the_dsse_spec_example() {
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
    }

    #[test]
    fn sign_then_verify_and_reject_tampering() {
        let k = SigningKey::generate(Curve::P256);
        let other = SigningKey::generate(Curve::P256).public_key();
        let b = sign_payload(b"{\"a\":1}", &k);
        let v = verify_envelope(&b, &k.public_key()).unwrap();
        assert_eq!(v.payload, b"{\"a\":1}");
        let e = verify_envelope(&b, &other).unwrap_err();
        assert!(
            matches!(e, Error::Verification(Failure::KeyHintMismatch { .. })),
            "{e}"
        );
        // Same hint, different payload: the signature must fail.
        let mut j: serde_json::Value = serde_json::from_slice(&b).unwrap();
        j["dsseEnvelope"]["payload"] = base64::engine::general_purpose::STANDARD
            .encode(b"{\"a\":2}")
            .into();
        let e = verify_envelope(&serde_json::to_vec(&j).unwrap(), &k.public_key()).unwrap_err();
        assert!(
            matches!(e, Error::Verification(Failure::BadSignature)),
            "{e}"
        );
        for bad in [&b""[..], b"{}", b"[1]", b"{\"mediaType\":\"x\"}"] {
            assert!(
                verify_envelope(bad, &k.public_key())
                    .unwrap_err()
                    .is_verification_failure()
            );
        }
    }
}
