//! Reports a person wants to look at: accuracy-versus-ε plots (PNG and SVG) and a short,
//! self-contained HTML page, from the serde reports of `palisade-attack`; plus the atomic file
//! writes that put them (and the JSON, and NPY arrays) on disk.
//!
//! Plots need no system fonts: text is drawn with the bundled DejaVu Sans (`assets/`), so a
//! bare machine renders the same PNG as a desktop.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod html;
mod npy;
mod plot;
mod write;

pub use html::robustness_html;
pub use npy::npy_f32;
pub use plot::{robustness_png, robustness_svg};
pub use write::{Written, write_atomic, write_robustness};

use thiserror::Error;

/// What can go wrong while rendering or writing a report.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ReportError {
    /// The report has no curve with any point.
    #[error("nothing to plot: the report has no curve with points")]
    NothingToPlot,
    /// The plotting backend failed.
    #[error("plot: {0}")]
    Plot(String),
    /// PNG encoding failed.
    #[error("PNG encoding: {0}")]
    Png(#[from] png::EncodingError),
    /// The HTML template failed.
    #[error("HTML template: {0}")]
    Template(#[from] minijinja::Error),
    /// JSON serialisation failed.
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A shape whose element count does not match the data.
    #[error("array of shape {shape:?} cannot hold {len} values")]
    Shape {
        /// The shape.
        shape: Vec<usize>,
        /// The number of values.
        len: usize,
    },
    /// Writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}
