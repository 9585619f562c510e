//! The registry's admission gate: what a model version must prove before it is stored.
//!
//! Two proof tokens, neither constructible outside the module that checks it:
//! - [`crate::oms::Verified`]: its OMS signature verified against a trusted key;
//! - [`ScanProof`]: it was scanned clean (from `palisade_scan::Clean`), with the SHA-256 of every
//!   file as scanned.
//!
//! The registry re-hashes every byte it stores and checks it against both proofs, so what is
//! stored is exactly what was verified and scanned.

use std::path::Path;

/// Proof of a clean scan, with the SHA-256 of each scanned file.
///
/// Until `palisade-scan` lands on `main`, its only constructor is test-only; the integration
/// is `From<&palisade_scan::Clean>`.
#[derive(Debug, Clone)]
pub struct ScanProof {
    files: Vec<(std::path::PathBuf, String)>,
}

impl ScanProof {
    /// Whether `path` was scanned with exactly this hex SHA-256.
    pub fn covers(&self, path: &Path, sha256_hex: &str) -> bool {
        self.files
            .iter()
            .any(|(p, h)| p == path && h.eq_ignore_ascii_case(sha256_hex))
    }

    #[cfg(test)]
    pub(crate) fn for_tests(files: Vec<(std::path::PathBuf, String)>) -> Self {
        ScanProof { files }
    }
}
