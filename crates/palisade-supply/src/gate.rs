//! The registry's admission gate: what a model version must prove before it is stored.
//!
//! Two proof tokens, neither constructible outside the crate that checks it:
//! - [`crate::oms::Verified`]: its OMS signature verified against a trusted key (only
//!   [`crate::oms::verify_model`] makes one);
//! - [`Clean`]: it was scanned clean by `palisade-scan` (only `ScanReport::clean` makes one), with
//!   the SHA-256 of every file as scanned.
//!
//! The registry re-hashes every byte it stores and checks it against both, so what is stored is
//! exactly what was verified and scanned. Scan the directory [`crate::oms::Verified::model`]
//! names (it is canonical), so the scanned paths match.

pub use palisade_scan::Clean;

use std::path::Path;

/// Scans `model` (as [`admit_scan`]'s callers should: the verified, canonical path) and returns
/// the proof if it is clean, or the report's summary as an error.
pub fn admit_scan(model: &Path) -> crate::Result<Clean> {
    let report = palisade_scan::scan_path(model, &palisade_scan::ScanOptions::default())
        .map_err(|e| crate::Error::Registry(format!("scan: {e}")))?;
    report.clean().ok_or_else(|| {
        let bad: Vec<String> = report
            .files
            .iter()
            .filter(|f| f.status != palisade_scan::FileStatus::Clean)
            .take(5)
            .map(|f| f.path.display().to_string())
            .collect();
        crate::Error::NotClean(format!(
            "{} is not clean: the scan flagged or could not analyse {} (run `palisade scan` for details)",
            model.display(),
            bad.join(", ")
        ))
    })
}
