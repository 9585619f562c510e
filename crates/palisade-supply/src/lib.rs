//! Supply-chain security for machine-learning artifacts, independent of any ML engine.
//!
//! - [`oms`]: OpenSSF Model Signing v1.0 — sign a model (directory or file) into a Sigstore
//!   bundle with a DSSE-wrapped in-toto statement, and verify a model against one. Verification
//!   yields a [`oms::Verified`] proof token that nothing else can create.
//! - [`keys`]: ECDSA P-256 / P-384 keys in PEM (SEC1, PKCS#8, encrypted PKCS#8).
//! - [`bundle`]: the Sigstore bundle / DSSE layer shared by OMS and provenance.
//! - [`manifest`], [`hashing`], [`walk`]: parallel, streaming hashing of files and shards.
//! - [`atomic`]: atomic file writes.
//!
//! **Non-features:** Sigstore keyless (Fulcio/Rekor) verification; certificate bundles are
//! verified by pinning the leaf certificate's key, not by building a path to a CA.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod atomic;
pub mod bundle;
pub mod error;
pub mod gate;
pub mod hashing;
pub mod keys;
pub mod manifest;
pub mod oms;
pub mod provenance;
pub mod registry;
pub mod seal;
pub mod walk;

pub use error::{Error, Failure, ManifestIssue, Result};

/// Entry points for the cargo-fuzz targets in `fuzz/`: each runs one parser of untrusted input
/// on arbitrary bytes and must never panic. Not a stable API.
#[doc(hidden)]
pub mod fuzzing {
    use std::sync::OnceLock;

    use crate::{bundle, keys, oms, provenance, seal};

    fn key() -> &'static keys::PublicKey {
        static KEY: OnceLock<keys::PublicKey> = OnceLock::new();
        KEY.get_or_init(|| keys::SigningKey::generate(keys::Curve::P256).public_key())
    }

    /// A Sigstore bundle: JSON, media type, verification material, DSSE envelope, signature.
    pub fn bundle(data: &[u8]) {
        let _ = oms::verify_bundle(data, key());
    }

    /// An OMS statement payload (what a verified envelope carries).
    pub fn statement(data: &[u8]) {
        let _ = oms::parse_statement(data, bundle::SigningMethod::Key, String::new());
    }

    /// PEM keys (private and public).
    pub fn pem_key(data: &[u8]) {
        let p = std::path::Path::new("fuzz");
        let _ = keys::PublicKey::from_pem(data, p);
        let _ = keys::SigningKey::from_pem(data, Some(b"pw"), p);
    }

    /// A dataset manifest and a provenance bundle.
    pub fn provenance(data: &[u8]) {
        let _ = provenance::DatasetManifest::from_json(data);
        let _ = provenance::verify_record(data, key());
    }

    /// An age file (header and stream) opened with an X25519 identity.
    pub fn age_file(data: &[u8]) {
        static ID: OnceLock<age::x25519::Identity> = OnceLock::new();
        let id = ID.get_or_init(age::x25519::Identity::generate).clone();
        let _ = seal::unseal_stream(data, std::io::sink(), &seal::OpenWith::Identities(vec![id]));
    }
}
