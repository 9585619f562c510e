//! ECDSA keys for OMS key-based signing: P-256 (with SHA-256) and P-384 (with SHA-384), read
//! from PEM (SEC1 `EC PRIVATE KEY`, PKCS#8 `PRIVATE KEY`, encrypted PKCS#8, `PUBLIC KEY`),
//! generated, and written back as PKCS#8 (optionally encrypted). Private key material is zeroised
//! on drop and has no `Display`; its `Debug` prints only the curve.

use std::path::Path;

use p256::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding,
};
use pkcs8::der::{Decode, Encode};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// Upper bound on a key file's size: keys are small, anything larger is not a key.
const MAX_KEY_FILE: u64 = 64 * 1024;

const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_P384: &str = "1.3.132.0.34";

/// The supported curves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Curve {
    /// NIST P-256 (secp256r1), signatures with SHA-256.
    #[serde(rename = "P-256")]
    P256,
    /// NIST P-384 (secp384r1), signatures with SHA-384.
    #[serde(rename = "P-384")]
    P384,
}

impl std::str::FromStr for Curve {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "p256" | "p-256" | "secp256r1" | "prime256v1" => Ok(Curve::P256),
            "p384" | "p-384" | "secp384r1" => Ok(Curve::P384),
            _ => Err(Error::InvalidArgument(format!(
                "unsupported curve {s:?} (p256, p384)"
            ))),
        }
    }
}

impl std::fmt::Display for Curve {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Curve::P256 => "P-256",
            Curve::P384 => "P-384",
        })
    }
}

/// A private signing key.
pub enum SigningKey {
    /// P-256.
    P256(p256::ecdsa::SigningKey),
    /// P-384.
    P384(p384::ecdsa::SigningKey),
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({}, <redacted>)", self.curve())
    }
}

/// A public verification key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKey {
    /// P-256.
    P256(p256::ecdsa::VerifyingKey),
    /// P-384.
    P384(p384::ecdsa::VerifyingKey),
}

fn read_bounded(path: &Path) -> Result<Zeroizing<Vec<u8>>> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut buf = Zeroizing::new(Vec::new());
    f.take(MAX_KEY_FILE + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::io(path, e))?;
    if buf.len() as u64 > MAX_KEY_FILE {
        return Err(Error::key(path, "file too large to be a key"));
    }
    Ok(buf)
}

fn algorithm_name(oid: &str) -> &'static str {
    match oid {
        "1.3.101.112" => "Ed25519",
        "1.3.101.113" => "Ed448",
        "1.2.840.113549.1.1.1" => "RSA",
        "1.2.840.10040.4.1" => "DSA",
        _ => "an unknown algorithm",
    }
}

fn curve_of(alg_oid: &str, param_oid: Option<String>, path: &Path) -> Result<Curve> {
    if alg_oid != OID_EC_PUBLIC_KEY {
        return Err(Error::key(
            path,
            format!(
                "wrong key type: {} key ({alg_oid}); OMS key signing needs ECDSA P-256 or P-384",
                algorithm_name(alg_oid)
            ),
        ));
    }
    match param_oid.as_deref() {
        Some(OID_P256) => Ok(Curve::P256),
        Some(OID_P384) => Ok(Curve::P384),
        Some(o) => Err(Error::key(
            path,
            format!("unsupported EC curve {o} (P-256 and P-384 are supported)"),
        )),
        None => Err(Error::key(path, "EC key without a named curve")),
    }
}

fn pkcs8_to_signing(der: &[u8], path: &Path) -> Result<SigningKey> {
    let info = pkcs8::PrivateKeyInfo::try_from(der)
        .map_err(|e| Error::key(path, format!("not a PKCS#8 private key: {e}")))?;
    let alg = info.algorithm.oid.to_string();
    let param = info.algorithm.parameters_oid().ok().map(|o| o.to_string());
    let bad = |e: pkcs8::Error| Error::key(path, format!("invalid private key: {e}"));
    Ok(match curve_of(&alg, param, path)? {
        Curve::P256 => SigningKey::P256(p256::SecretKey::from_pkcs8_der(der).map_err(bad)?.into()),
        Curve::P384 => SigningKey::P384(p384::SecretKey::from_pkcs8_der(der).map_err(bad)?.into()),
    })
}

fn sec1_to_signing(der: &[u8], path: &Path) -> Result<SigningKey> {
    let key = sec1::EcPrivateKey::from_der(der)
        .map_err(|e| Error::key(path, format!("not a SEC1 EC private key: {e}")))?;
    let param = key
        .parameters
        .and_then(|p| p.named_curve())
        .map(|o| o.to_string());
    let bad =
        |e: p256::elliptic_curve::Error| Error::key(path, format!("invalid private key: {e}"));
    Ok(match curve_of(OID_EC_PUBLIC_KEY, param, path)? {
        Curve::P256 => SigningKey::P256(p256::SecretKey::from_sec1_der(der).map_err(bad)?.into()),
        Curve::P384 => SigningKey::P384(p384::SecretKey::from_sec1_der(der).map_err(bad)?.into()),
    })
}

impl SigningKey {
    /// Generates a fresh key from the operating system's random source.
    pub fn generate(curve: Curve) -> Self {
        let mut rng = rand_core::OsRng;
        match curve {
            Curve::P256 => SigningKey::P256(p256::ecdsa::SigningKey::random(&mut rng)),
            Curve::P384 => SigningKey::P384(p384::ecdsa::SigningKey::random(&mut rng)),
        }
    }

    /// Reads a PEM private key file; `password` decrypts an `ENCRYPTED PRIVATE KEY`.
    pub fn from_pem_file(path: &Path, password: Option<&[u8]>) -> Result<Self> {
        let bytes = read_bounded(path)?;
        Self::from_pem(&bytes, password, path)
    }

    /// Parses a PEM private key (`path` only names it in errors).
    pub fn from_pem(pem: &[u8], password: Option<&[u8]>, path: &Path) -> Result<Self> {
        let (label, der) = pkcs8::der::pem::decode_vec(pem)
            .map_err(|e| Error::key(path, format!("not a PEM private key: {e}")))?;
        let der = Zeroizing::new(der);
        match label {
            "EC PRIVATE KEY" => sec1_to_signing(&der, path),
            "PRIVATE KEY" => pkcs8_to_signing(&der, path),
            "ENCRYPTED PRIVATE KEY" => {
                let password = password.ok_or_else(|| {
                    Error::key(path, "the key is encrypted: a password is required")
                })?;
                let enc = pkcs8::EncryptedPrivateKeyInfo::try_from(der.as_slice())
                    .map_err(|e| Error::key(path, format!("malformed encrypted key: {e}")))?;
                let doc = enc
                    .decrypt(password)
                    .map_err(|_| Error::key(path, "wrong password or corrupt encrypted key"))?;
                pkcs8_to_signing(doc.as_bytes(), path)
            }
            "PUBLIC KEY" => Err(Error::key(
                path,
                "this is a public key; a private key is needed",
            )),
            other => Err(Error::key(path, format!("unsupported PEM type {other:?}"))),
        }
    }

    /// The curve.
    pub fn curve(&self) -> Curve {
        match self {
            SigningKey::P256(_) => Curve::P256,
            SigningKey::P384(_) => Curve::P384,
        }
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        match self {
            SigningKey::P256(k) => PublicKey::P256(*k.verifying_key()),
            SigningKey::P384(k) => PublicKey::P384(*k.verifying_key()),
        }
    }

    /// Signs `msg` (hashing it with the curve's hash); returns a DER-encoded ECDSA signature.
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        use p256::ecdsa::signature::Signer;
        match self {
            SigningKey::P256(k) => {
                let s: p256::ecdsa::Signature = k.sign(msg);
                s.to_der().as_bytes().to_vec()
            }
            SigningKey::P384(k) => {
                let s: p384::ecdsa::Signature = k.sign(msg);
                s.to_der().as_bytes().to_vec()
            }
        }
    }

    /// PKCS#8 PEM, encrypted (PBES2, scrypt + AES-256-CBC) when a password is given.
    pub fn to_pkcs8_pem(&self, password: Option<&[u8]>) -> Result<Zeroizing<String>> {
        let enc = |r: std::result::Result<Zeroizing<String>, pkcs8::Error>| {
            r.map_err(|e| Error::key("<memory>", format!("cannot encode: {e}")))
        };
        let mut rng = rand_core::OsRng;
        match (self, password) {
            (SigningKey::P256(k), None) => enc(k.to_pkcs8_pem(LineEnding::LF)),
            (SigningKey::P384(k), None) => enc(k.to_pkcs8_pem(LineEnding::LF)),
            (SigningKey::P256(k), Some(p)) => {
                enc(k.to_pkcs8_encrypted_pem(&mut rng, p, LineEnding::LF))
            }
            (SigningKey::P384(k), Some(p)) => {
                enc(k.to_pkcs8_encrypted_pem(&mut rng, p, LineEnding::LF))
            }
        }
    }
}

impl PublicKey {
    /// Reads a PEM public key file (`PUBLIC KEY`, or a `CERTIFICATE` whose key is used).
    pub fn from_pem_file(path: &Path) -> Result<Self> {
        let bytes = read_bounded(path)?;
        Self::from_pem(&bytes, path)
    }

    /// Parses a PEM public key (`path` only names it in errors).
    pub fn from_pem(pem: &[u8], path: &Path) -> Result<Self> {
        let (label, der) = pkcs8::der::pem::decode_vec(pem)
            .map_err(|e| Error::key(path, format!("not a PEM public key: {e}")))?;
        match label {
            "PUBLIC KEY" => Self::from_spki_der(&der, path),
            "CERTIFICATE" => Self::from_certificate_der(&der, path),
            "EC PRIVATE KEY" | "PRIVATE KEY" | "ENCRYPTED PRIVATE KEY" => Err(Error::key(
                path,
                "this is a private key; give the public key",
            )),
            other => Err(Error::key(path, format!("unsupported PEM type {other:?}"))),
        }
    }

    /// Parses a DER SubjectPublicKeyInfo.
    pub fn from_spki_der(der: &[u8], path: &Path) -> Result<Self> {
        let spki = spki::SubjectPublicKeyInfoRef::try_from(der)
            .map_err(|e| Error::key(path, format!("not a SubjectPublicKeyInfo: {e}")))?;
        let alg = spki.algorithm.oid.to_string();
        let param = spki.algorithm.parameters_oid().ok().map(|o| o.to_string());
        let bad = |e: spki::Error| Error::key(path, format!("invalid public key: {e}"));
        Ok(match curve_of(&alg, param, path)? {
            Curve::P256 => {
                PublicKey::P256(p256::ecdsa::VerifyingKey::from_public_key_der(der).map_err(bad)?)
            }
            Curve::P384 => {
                PublicKey::P384(p384::ecdsa::VerifyingKey::from_public_key_der(der).map_err(bad)?)
            }
        })
    }

    /// The public key of a DER X.509 certificate.
    pub fn from_certificate_der(der: &[u8], path: &Path) -> Result<Self> {
        let cert = x509_cert::Certificate::from_der(der)
            .map_err(|e| Error::key(path, format!("not an X.509 certificate: {e}")))?;
        let spki = cert
            .tbs_certificate
            .subject_public_key_info
            .to_der()
            .map_err(|e| Error::key(path, format!("certificate key: {e}")))?;
        Self::from_spki_der(&spki, path)
    }

    /// The curve.
    pub fn curve(&self) -> Curve {
        match self {
            PublicKey::P256(_) => Curve::P256,
            PublicKey::P384(_) => Curve::P384,
        }
    }

    /// DER SubjectPublicKeyInfo.
    pub fn to_spki_der(&self) -> Vec<u8> {
        let r = match self {
            PublicKey::P256(k) => k.to_public_key_der(),
            PublicKey::P384(k) => k.to_public_key_der(),
        };
        // Encoding a valid in-memory key cannot fail; an empty result would never match anything.
        r.map(|d| d.as_bytes().to_vec()).unwrap_or_default()
    }

    /// PEM SubjectPublicKeyInfo (64-column lines, LF), the form `openssl` and model-signing write.
    pub fn to_pem(&self) -> String {
        let r = match self {
            PublicKey::P256(k) => k.to_public_key_pem(LineEnding::LF),
            PublicKey::P384(k) => k.to_public_key_pem(LineEnding::LF),
        };
        r.unwrap_or_default()
    }

    /// The key hint model-signing records in `verificationMaterial.publicKey.hint`: the hex
    /// SHA-256 of the key's PEM encoding.
    pub fn hint(&self) -> String {
        hex::encode(crate::hashing::sha256(self.to_pem().as_bytes()))
    }

    /// Whether `sig` (DER ECDSA) is a valid signature of `msg` under this key.
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        use p256::ecdsa::signature::Verifier;
        match self {
            PublicKey::P256(k) => p256::ecdsa::Signature::from_der(sig)
                .map(|s| k.verify(msg, &s).is_ok())
                .unwrap_or(false),
            PublicKey::P384(k) => p384::ecdsa::Signature::from_der(sig)
                .map(|s| k.verify(msg, &s).is_ok())
                .unwrap_or(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_plain_and_encrypted_pkcs8() {
        for curve in [Curve::P256, Curve::P384] {
            let k = SigningKey::generate(curve);
            let p = Path::new("k.pem");
            let plain = k.to_pkcs8_pem(None).unwrap();
            let k2 = SigningKey::from_pem(plain.as_bytes(), None, p).unwrap();
            assert_eq!(k2.public_key(), k.public_key());
            let enc = k.to_pkcs8_pem(Some(b"pw")).unwrap();
            assert!(enc.contains("ENCRYPTED PRIVATE KEY"));
            let e = SigningKey::from_pem(enc.as_bytes(), None, p).unwrap_err();
            assert!(e.to_string().contains("password is required"), "{e}");
            let e = SigningKey::from_pem(enc.as_bytes(), Some(b"bad"), p).unwrap_err();
            assert!(e.to_string().contains("wrong password"), "{e}");
            let k3 = SigningKey::from_pem(enc.as_bytes(), Some(b"pw"), p).unwrap();
            assert_eq!(k3.public_key(), k.public_key());
            let pubk = PublicKey::from_pem(k.public_key().to_pem().as_bytes(), p).unwrap();
            let sig = k3.sign(b"msg");
            assert!(pubk.verify(b"msg", &sig));
            assert!(!pubk.verify(b"msh", &sig));
            assert!(!pubk.verify(b"msg", b"\x30\x00"));
            assert!(!format!("{k:?}").contains(&plain[40..60]));
        }
    }
}
