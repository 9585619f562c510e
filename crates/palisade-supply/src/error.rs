//! Errors. [`Error`] is what every fallible function of the crate returns; a failed verification
//! is one variant ([`Error::Verification`]) carrying a structured [`Failure`], so callers can tell
//! "the signature is bad" (exit 1) from "I could not even look" (exit 2).

use std::path::PathBuf;

/// Everything that can go wrong in `palisade-supply`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A key could not be read, decrypted or used.
    #[error("key {}: {reason}", path.display())]
    Key {
        /// The key file (or `<memory>`).
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The model could not be enumerated under the requested policy (symlink, non-UTF-8 name,
    /// empty model, special file).
    #[error("model {}: {reason}", path.display())]
    Model {
        /// The offending path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Options or arguments that make no sense (bad ignore path, zero shard size, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The signature (or provenance) was examined and does not verify.
    #[error("verification failed: {0}")]
    Verification(#[from] Failure),
    /// Encryption or decryption (age) failed.
    #[error("{0}")]
    Crypto(String),
    /// The scanner did not find the model clean, so it may not enter the registry.
    #[error("not admitted: {0}")]
    NotClean(String),
    /// The registry database refused an operation or is corrupt.
    #[error("registry: {0}")]
    Registry(String),
}

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// Whether this is a failed verification (exit 1) rather than an error (exit 2).
    pub fn is_verification_failure(&self) -> bool {
        matches!(self, Error::Verification(_))
    }

    /// Whether the input was examined and refused (failed verification or not clean): exit 1.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Error::Verification(_) | Error::NotClean(_))
    }

    pub(crate) fn key(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Key {
            path: path.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn model(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Model {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

/// Why a signature bundle (or a provenance chain) did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Failure {
    /// The bundle is not valid JSON or lacks a required field.
    #[error("malformed bundle: {0}")]
    MalformedBundle(String),
    /// The bundle's `mediaType` is not a Sigstore bundle v0.3 (or v0.2) media type.
    #[error("unsupported bundle media type {0:?}")]
    UnsupportedMediaType(String),
    /// The bundle uses a signing method this verifier cannot check against the trust it was given.
    #[error("unsupported signing method: {0}")]
    UnsupportedMethod(String),
    /// The bundle's key hint names another key than the trusted one.
    #[error("key hint mismatch: bundle names key {bundle}, trusted key is {trusted}")]
    KeyHintMismatch {
        /// Hint in the bundle.
        bundle: String,
        /// Hint of the trusted key.
        trusted: String,
    },
    /// The certificate's key is not the trusted key, or the certificate is not valid now.
    #[error("certificate: {0}")]
    Certificate(String),
    /// The DSSE signature does not verify with the trusted key.
    #[error("DSSE signature does not verify with the trusted key")]
    BadSignature,
    /// The DSSE payload type is not in-toto JSON.
    #[error("payload type {0:?} is not application/vnd.in-toto+json")]
    WrongPayloadType(String),
    /// The payload is not an in-toto Statement v1 with a well-formed OMS predicate.
    #[error("malformed statement: {0}")]
    MalformedStatement(String),
    /// The predicate type is not the expected one.
    #[error("predicate type {found:?}, expected {expected:?}")]
    WrongPredicateType {
        /// What the statement says.
        found: String,
        /// What was expected.
        expected: String,
    },
    /// The model on disk does not match the signed manifest.
    #[error("model does not match the signed manifest: {}", issues_summary(.0))]
    Manifest(Vec<ManifestIssue>),
    /// A provenance link (dataset → training → model) is broken.
    #[error("provenance: {0}")]
    Provenance(String),
}

/// One difference between a model on disk and its signed manifest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ManifestIssue {
    /// The file's (or shard's) digest differs.
    DigestMismatch {
        /// Resource name.
        name: String,
        /// Signed digest (hex).
        expected: String,
        /// Digest on disk (hex).
        actual: String,
    },
    /// A signed resource is absent from the model.
    Missing {
        /// Resource name.
        name: String,
    },
    /// A file in the model is not covered by the signature.
    Unsigned {
        /// Path relative to the model root.
        name: String,
    },
}

impl std::fmt::Display for ManifestIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ManifestIssue::DigestMismatch {
                name,
                expected,
                actual,
            } => write!(
                f,
                "{name}: digest mismatch (signed {expected}, found {actual})"
            ),
            ManifestIssue::Missing { name } => write!(f, "{name}: signed but missing"),
            ManifestIssue::Unsigned { name } => write!(f, "{name}: present but not signed"),
        }
    }
}

fn issues_summary(issues: &[ManifestIssue]) -> String {
    let shown: Vec<String> = issues.iter().take(5).map(ToString::to_string).collect();
    let mut s = shown.join("; ");
    if issues.len() > 5 {
        s.push_str(&format!("; and {} more", issues.len() - 5));
    }
    s
}

/// Shorthand for this crate's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;
