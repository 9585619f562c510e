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
