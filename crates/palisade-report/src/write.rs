//! Atomic file writes: a report on disk is either the old one or the complete new one.

use std::io::Write;
use std::path::{Path, PathBuf};

use palisade_attack::RobustnessReport;
use serde::Serialize;

use crate::{ReportError, robustness_html, robustness_png, robustness_svg};

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ReportError> {
    let io = |source| ReportError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io(std::io::Error::other("not a file path")))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}

/// The files of a robustness report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Written {
    /// The JSON report.
    pub json: PathBuf,
    /// The PNG chart.
    pub png: PathBuf,
    /// The SVG chart.
    pub svg: PathBuf,
    /// The HTML page.
    pub html: PathBuf,
}

/// Renders everything first, then writes `<stem>.json`, `.png`, `.svg` and `.html` into `dir`
/// (created if missing): a rendering error writes nothing.
pub fn write_robustness(
    r: &RobustnessReport,
    dir: &Path,
    stem: &str,
) -> Result<Written, ReportError> {
    let json = serde_json::to_vec_pretty(r)?;
    let svg = robustness_svg(r)?;
    let png = robustness_png(r)?;
    let html = robustness_html(r, &svg)?;
    std::fs::create_dir_all(dir).map_err(|source| ReportError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let out = Written {
        json: dir.join(format!("{stem}.json")),
        png: dir.join(format!("{stem}.png")),
        svg: dir.join(format!("{stem}.svg")),
        html: dir.join(format!("{stem}.html")),
    };
    write_atomic(&out.json, &json)?;
    write_atomic(&out.svg, svg.as_bytes())?;
    write_atomic(&out.png, &png)?;
    write_atomic(&out.html, html.as_bytes())?;
    Ok(out)
}
