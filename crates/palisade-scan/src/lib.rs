//! Palisade's model-file scanner: finds what would run code when a model file is loaded, and
//! never calls a file it could not analyse clean.
//!
//! [`scan_path`] takes a file or a directory (scanned recursively, in parallel) and returns a
//! [`ScanReport`], which is also the JSON schema of `palisade scan --json`. A clean report yields
//! a [`Clean`] proof token ([`ScanReport::clean`]), the only way to obtain one, so that code which
//! registers or serves a model can require it by type.
//!
//! ```no_run
//! use palisade_scan::{scan_path, ScanOptions};
//! let report = scan_path("model.pt".as_ref(), &ScanOptions::default())?;
//! match report.clean() {
//!     Some(proof) => println!("clean: {} files", proof.files().count()),
//!     None => println!("not clean: {:?}", report.summary),
//! }
//! # Ok::<(), palisade_scan::ScanError>(())
//! ```
//!
//! # What is analysed
//! Formats are detected by content, never by extension: raw pickles (joblib, dill), PyTorch zip
//! (every pickle member) and legacy checkpoints, TorchScript archives, NumPy `.npy`/`.npz`,
//! Keras `.keras` and `.h5`, TensorFlow SavedModel, ONNX, safetensors and GGUF.
//!
//! Pickles are not matched against a denylist: a [pickle virtual machine](crate) emulates the
//! unpickler (stack, memo, marks, frames; protocols 0–5) without running anything, resolves every
//! import and call, and checks them against an allowlist of what checkpoints legitimately use.
//!
//! # Non-features
//! - Nothing is ever unpickled, imported or executed.
//! - Files of unknown format are not guessed at: they are reported `unscannable`.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod blob;
mod detect;
mod formats;
mod pickle;
mod report;
pub mod sarif;
mod sink;
mod zip;

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use sha2::{Digest, Sha256};

pub use report::{
    Clean, FileReport, FileStatus, Finding, FindingKind, Format, ScanReport, Severity, Summary,
};

use blob::FileBlob;
use sink::Sink;

/// Settings of a scan.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ScanOptions {
    /// Strict mode: archive members of unknown format are errors (the archive is unscannable)
    /// instead of `info` findings.
    pub strict: bool,
    /// Largest decompressed size of one archive member, in bytes (zip bombs).
    pub max_member_size: u64,
    /// Largest member that is decompressed into memory when a format needs random access.
    pub max_in_memory: u64,
    /// Deepest nesting of containers (a zip in a pickle in a zip...).
    pub max_depth: u32,
    /// Follow symbolic links that leave the scanned directory (off: they are reported).
    pub follow_external_symlinks: bool,
    /// Compute the SHA-256 of every file (default). Without it a scan of large files reads only
    /// what the formats need, but the report carries no hashes and yields no [`Clean`] token.
    pub hash: bool,
    /// Extra pickle globals to treat as allowlisted callables, for libraries you trust:
    /// `module.Name`, or `module.*` for a module and its submodules (`sklearn.*`).
    pub allow: Vec<String>,
}

impl Default for ScanOptions {
    fn default() -> Self {
        ScanOptions {
            strict: false,
            max_member_size: 64 << 30,
            max_in_memory: 512 << 20,
            max_depth: 8,
            follow_external_symlinks: false,
            allow: Vec::new(),
            hash: true,
        }
    }
}

impl ScanOptions {
    /// Sets `strict`.
    pub fn strict(mut self, strict: bool) -> Self {
        self.strict = strict;
        self
    }

    /// Sets `hash` (SHA-256 of every file, needed for a [`Clean`] token).
    pub fn hash(mut self, hash: bool) -> Self {
        self.hash = hash;
        self
    }

    /// Sets `allow` (extra allowlisted pickle globals).
    pub fn allow(mut self, allow: Vec<String>) -> Self {
        self.allow = allow;
        self
    }
}

/// Why a scan could not run at all. Problems with individual files are not errors: they are
/// findings with severity `error` in the report.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScanError {
    /// The path to scan does not exist or cannot be read.
    #[error("cannot read {path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Walking a directory failed.
    #[error("{path}: {message}")]
    Walk {
        /// The path.
        path: PathBuf,
        /// What failed.
        message: String,
    },
}

/// Scans a file or a directory (recursively, files in parallel).
pub fn scan_path(path: &Path, opts: &ScanOptions) -> Result<ScanReport, ScanError> {
    let meta = std::fs::metadata(path).map_err(|source| ScanError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() {
        return Ok(ScanReport::new(
            vec![path.to_path_buf()],
            vec![scan_file(path, opts)],
        ));
    }
    let root = path.canonicalize().map_err(|source| ScanError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut files = Vec::new();
    let mut reports = Vec::new();
    for entry in walkdir::WalkDir::new(path)
        .follow_links(false)
        .sort_by_file_name()
    {
        let entry = entry.map_err(|e| ScanError::Walk {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let ft = entry.file_type();
        if ft.is_symlink() {
            let target = entry.path().canonicalize();
            match target {
                Ok(t) if t.starts_with(&root) || opts.follow_external_symlinks => {
                    if t.is_file() {
                        files.push(entry.path().to_path_buf());
                    }
                }
                Ok(t) => reports.push(symlink_report(
                    entry.path(),
                    &format!(
                        "symbolic link to {} outside the scanned directory",
                        t.display()
                    ),
                )),
                Err(e) => reports.push(symlink_report(
                    entry.path(),
                    &format!("dangling symbolic link: {e}"),
                )),
            }
        } else if ft.is_file() {
            files.push(entry.path().to_path_buf());
        }
    }
    reports.par_extend(files.par_iter().map(|f| scan_file(f, opts)));
    Ok(ScanReport::new(vec![path.to_path_buf()], reports))
}

fn symlink_report(path: &Path, message: &str) -> FileReport {
    let mut sink = Sink::new();
    sink.push(
        Severity::Suspicious,
        FindingKind::ContainerAnomaly,
        None,
        message,
        Vec::new(),
    );
    FileReport::new(
        path.to_path_buf(),
        Format::Unknown,
        0,
        String::new(),
        sink.findings,
    )
}

/// Files up to this size are read whole (one read, hashed from memory); larger ones are read
/// with positional reads, only where a format needs it, so memory stays constant.
const READ_WHOLE: u64 = 32 << 20;

/// Scans one file. IO problems become error findings.
fn scan_file(path: &Path, opts: &ScanOptions) -> FileReport {
    let mut sink = Sink::new();
    let ctx = detect::Ctx::new(opts, Some(path));
    let opened = File::open(path).and_then(|f| {
        let len = f.metadata()?.len();
        Ok((f, len))
    });
    let (format, size, sha) = match opened {
        Err(e) => {
            sink.error(FindingKind::Unparsable, None, format!("cannot read: {e}"));
            (Format::Unknown, 0, String::new())
        }
        Ok((mut f, len)) if len <= READ_WHOLE => {
            let mut bytes = Vec::with_capacity(len as usize);
            match KnownLength(&mut f).read_to_end(&mut bytes) {
                Ok(_) => {
                    let sha = if opts.hash {
                        hex::encode(Sha256::digest(&bytes))
                    } else {
                        String::new()
                    };
                    let format = detect::scan_blob(&bytes, &mut sink, &ctx, 0);
                    (format, bytes.len() as u64, sha)
                }
                Err(e) => {
                    sink.error(FindingKind::Unparsable, None, format!("cannot read: {e}"));
                    (Format::Unknown, len, String::new())
                }
            }
        }
        Ok((f, _)) => match FileBlob::new(f) {
            Err(e) => {
                sink.error(FindingKind::Unparsable, None, format!("cannot read: {e}"));
                (Format::Unknown, 0, String::new())
            }
            Ok(blob) => {
                // Hash and scan at the same time: the hash reads every byte, the scan few.
                let (sha, format) = rayon::join(
                    || {
                        if opts.hash {
                            sha256_file(path)
                        } else {
                            Ok(String::new())
                        }
                    },
                    || detect::scan_blob(&blob, &mut sink, &ctx, 0),
                );
                let sha = sha.unwrap_or_else(|e| {
                    sink.error(FindingKind::Unparsable, None, format!("cannot read: {e}"));
                    String::new()
                });
                (format, blob::Blob::len(&blob), sha)
            }
        },
    };
    FileReport::new(path.to_path_buf(), format, size, sha, sink.findings)
}

/// A file whose length was just read, without `File`'s own `read_to_end`: that one asks the
/// kernel for the length and the position again (a `statx` and an `lseek`) to size its buffer,
/// which the caller has already sized. On a directory of small files those were two of the seven
/// system calls per file (`strace -f -c` on the shared corpus: 1,370 calls before, 1,223 after).
struct KnownLength<'a>(&'a mut File);

impl Read for KnownLength<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    // 64 KiB: read into a buffer that stays in cache while it is hashed (1 MiB buffers were
    // 1.5x slower on a 1 GiB file: the copy then goes through memory).
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Scans bytes held in memory (an upload, a registry blob) as if they were a file at `path`
/// (the path is only reported; nothing is read from it).
pub fn scan_bytes(path: &Path, bytes: Vec<u8>, opts: &ScanOptions) -> ScanReport {
    scan_slice(path, &bytes, opts)
}

/// [`scan_bytes`] on borrowed bytes: for a caller that scans what it has read and then uses
/// the same bytes (the gateway's loader), so that what was scanned is what is used.
pub fn scan_slice(path: &Path, bytes: &[u8], opts: &ScanOptions) -> ScanReport {
    let mut sink = Sink::new();
    let sha = hex::encode(Sha256::digest(bytes));
    let mut ctx = detect::Ctx::new(opts, Some(path));
    ctx.dir = None;
    let size = bytes.len() as u64;
    let format = detect::scan_blob(&bytes, &mut sink, &ctx, 0);
    ScanReport::new(
        vec![path.to_path_buf()],
        vec![FileReport::new(
            path.to_path_buf(),
            format,
            size,
            sha,
            sink.findings,
        )],
    )
}

/// Entry points for the cargo-fuzz targets in `fuzz/`: each runs one parser on arbitrary bytes.
/// Not a stable API.
#[doc(hidden)]
pub mod fuzzing {
    use crate::detect::Ctx;
    use crate::sink::Sink;
    use crate::{ScanOptions, formats, pickle};

    /// The pickle VM over a raw stream (several pickles, legacy torch layout).
    pub fn pickle(data: &[u8]) {
        let mut sink = Sink::new();
        let mut r = data;
        let _ = pickle::scan_stream(&mut r, &mut sink, &pickle::Policy::default());
    }

    /// The zip reader and every member scanner behind it.
    pub fn zip(data: &[u8]) {
        let opts = ScanOptions {
            max_in_memory: 1 << 20,
            max_member_size: 16 << 20,
            ..ScanOptions::default()
        };
        let ctx = Ctx::new(&opts, None);
        let mut sink = Sink::new();
        let _ = formats::archive::scan_zip(&data.to_vec(), &mut sink, &ctx, 0);
    }

    /// The safetensors header checks.
    pub fn safetensors(data: &[u8]) {
        let mut sink = Sink::new();
        formats::safetensors::scan(&data.to_vec(), &mut sink);
    }

    /// The GGUF parser.
    pub fn gguf(data: &[u8]) {
        let mut sink = Sink::new();
        formats::gguf::scan(&data.to_vec(), &mut sink);
    }

    /// Detection and dispatch: any bytes, as a file.
    pub fn any(data: &[u8]) {
        let _ = crate::scan_bytes(
            std::path::Path::new("fuzz"),
            data.to_vec(),
            &ScanOptions::default(),
        );
    }
}
