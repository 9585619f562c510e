//! The scan report. These serde types ARE the JSON output format of `palisade scan --json`:
//! change them and you change the schema.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// How bad a finding is.
///
/// Ordered: `Info < Suspicious < Dangerous`. `Error` is separate in meaning (the file, or part of it,
/// could not be analysed) but sorts highest so that a file's worst severity is never "clean" when
/// something could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing, not a problem (does not make a file unclean).
    Info,
    /// Unusual and possibly hostile: an import outside the allowlist, a parser differential.
    Suspicious,
    /// Would run code or touch the system when loaded.
    Dangerous,
    /// The file or a part of it could not be analysed: unknown format, truncated, malformed.
    Error,
}

impl Severity {
    /// Short lowercase name (`info`, `suspicious`, `dangerous`, `error`).
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Suspicious => "suspicious",
            Severity::Dangerous => "dangerous",
            Severity::Error => "error",
        }
    }
}

/// What a finding is about. Each kind is one SARIF rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum FindingKind {
    /// A pickle calls something outside the allowlist (REDUCE, INST, OBJ, NEWOBJ, ...).
    PickleCall,
    /// A pickle imports something outside the allowlist.
    PickleImport,
    /// A pickle mutates an imported object (BUILD/SETITEM/APPEND on a module or class).
    PickleMutation,
    /// A pickle import that cannot be resolved statically (computed STACK_GLOBAL operands, EXT codes).
    PickleDynamicImport,
    /// Opcode streams that different unpicklers read differently: frame boundaries, trailing
    /// data, several pickles in one stream.
    ParserDifferential,
    /// A Keras layer or reference that runs Python code (Lambda, modules outside Keras).
    KerasCode,
    /// A TensorFlow op that reads/writes files or runs Python.
    TensorflowOp,
    /// An ONNX external-data location outside the model directory, or a non-standard op domain.
    OnnxExternalData,
    /// An ONNX node in a non-standard operator domain (custom ops load native code).
    OnnxCustomOp,
    /// A GGUF chat template that reaches Python internals.
    GgufTemplate,
    /// A container anomaly: encrypted entry flag, duplicate names, CRC mismatch, overlapping data.
    ContainerAnomaly,
    /// A strict structural check of a tensor format (safetensors, GGUF, NumPy) failed.
    MalformedTensors,
    /// The file, or a member of it, is of a format the scanner does not know.
    UnknownFormat,
    /// The file, or a member of it, could not be parsed (truncated, malformed, unreadable).
    Unparsable,
}

impl FindingKind {
    /// Every kind, in a stable order (SARIF rules).
    pub const ALL: [FindingKind; 14] = [
        FindingKind::PickleCall,
        FindingKind::PickleImport,
        FindingKind::PickleMutation,
        FindingKind::PickleDynamicImport,
        FindingKind::ParserDifferential,
        FindingKind::KerasCode,
        FindingKind::TensorflowOp,
        FindingKind::OnnxExternalData,
        FindingKind::OnnxCustomOp,
        FindingKind::GgufTemplate,
        FindingKind::ContainerAnomaly,
        FindingKind::MalformedTensors,
        FindingKind::UnknownFormat,
        FindingKind::Unparsable,
    ];

    /// The kebab-case identifier used in JSON and as the SARIF rule id.
    pub fn id(self) -> &'static str {
        match self {
            FindingKind::PickleCall => "pickle-call",
            FindingKind::PickleImport => "pickle-import",
            FindingKind::PickleMutation => "pickle-mutation",
            FindingKind::PickleDynamicImport => "pickle-dynamic-import",
            FindingKind::ParserDifferential => "parser-differential",
            FindingKind::KerasCode => "keras-code",
            FindingKind::TensorflowOp => "tensorflow-op",
            FindingKind::OnnxExternalData => "onnx-external-data",
            FindingKind::OnnxCustomOp => "onnx-custom-op",
            FindingKind::GgufTemplate => "gguf-template",
            FindingKind::ContainerAnomaly => "container-anomaly",
            FindingKind::MalformedTensors => "malformed-tensors",
            FindingKind::UnknownFormat => "unknown-format",
            FindingKind::Unparsable => "unparsable",
        }
    }

    /// One sentence describing the rule.
    pub fn description(self) -> &'static str {
        match self {
            FindingKind::PickleCall => {
                "A pickle calls a function outside the allowlist of what ML checkpoints use"
            }
            FindingKind::PickleImport => "A pickle imports a name outside the allowlist",
            FindingKind::PickleMutation => "A pickle mutates an imported module or class",
            FindingKind::PickleDynamicImport => {
                "A pickle import that cannot be resolved statically"
            }
            FindingKind::ParserDifferential => "Bytes that different parsers read differently",
            FindingKind::KerasCode => "A Keras model that runs arbitrary Python code",
            FindingKind::TensorflowOp => "A TensorFlow op that touches files or runs Python",
            FindingKind::OnnxExternalData => "ONNX external data outside the model directory",
            FindingKind::OnnxCustomOp => "An ONNX node in a non-standard operator domain",
            FindingKind::GgufTemplate => "A GGUF chat template that reaches Python internals",
            FindingKind::ContainerAnomaly => {
                "An archive anomaly (encryption flag, duplicates, CRC, overlap)"
            }
            FindingKind::MalformedTensors => "A tensor file that fails strict structural checks",
            FindingKind::UnknownFormat => "A file of unknown format (never reported clean)",
            FindingKind::Unparsable => "A file that could not be parsed (never reported clean)",
        }
    }
}

/// The formats the scanner recognises (by content, not by extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Format {
    /// A raw pickle stream (also joblib and dill files).
    Pickle,
    /// PyTorch's zip format (`torch.save` since 1.6), TorchScript archives included.
    TorchZip,
    /// PyTorch's legacy format (several pickles followed by raw storages).
    TorchLegacy,
    /// A generic zip archive (members scanned by content).
    Zip,
    /// NumPy `.npy`.
    Npy,
    /// NumPy `.npz` (a zip of `.npy`).
    Npz,
    /// Keras 3 `.keras` (a zip with `config.json`).
    Keras,
    /// HDF5 (legacy Keras `.h5`).
    Hdf5,
    /// TensorFlow SavedModel protobuf (`saved_model.pb`).
    SavedModel,
    /// Keras metadata protobuf in a SavedModel (`keras_metadata.pb`).
    KerasMetadata,
    /// ONNX ModelProto.
    Onnx,
    /// safetensors.
    Safetensors,
    /// GGUF (llama.cpp).
    Gguf,
    /// A TensorFlow checkpoint index (`variables.index`, an SSTable).
    TfCheckpointIndex,
    /// A SavedModel fingerprint (`fingerprint.pb`).
    TfFingerprint,
    /// A TensorFlow checkpoint data shard (raw bytes addressed by a sibling `variables.index`).
    TfCheckpointData,
    /// A zlib or gzip stream (compressed joblib); its content is scanned.
    Compressed,
    /// JSON (checked as a Keras config when it looks like one).
    Json,
    /// UTF-8 text that is no model format (and, tried first, no pickle).
    Text,
    /// Not recognised.
    Unknown,
}

impl Format {
    /// The kebab-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Pickle => "pickle",
            Format::TorchZip => "torch-zip",
            Format::TorchLegacy => "torch-legacy",
            Format::Zip => "zip",
            Format::Npy => "npy",
            Format::Npz => "npz",
            Format::Keras => "keras",
            Format::Hdf5 => "hdf5",
            Format::SavedModel => "saved-model",
            Format::KerasMetadata => "keras-metadata",
            Format::Onnx => "onnx",
            Format::Safetensors => "safetensors",
            Format::Gguf => "gguf",
            Format::TfCheckpointIndex => "tf-checkpoint-index",
            Format::TfFingerprint => "tf-fingerprint",
            Format::TfCheckpointData => "tf-checkpoint-data",
            Format::Compressed => "compressed",
            Format::Json => "json",
            Format::Text => "text",
            Format::Unknown => "unknown",
        }
    }
}

/// One thing the scanner found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// How bad it is.
    pub severity: Severity,
    /// What it is about.
    pub kind: FindingKind,
    /// Where inside the file: empty for the file itself, else the archive member path or an
    /// embedded object (`archive/data.pkl`, `pickle[2]`, `config.json/layers[3]`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub member: String,
    /// Byte offset in the file, or in the member when `member` is set, where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// What was found, in one line (`calls os.system('id')`).
    pub message: String,
    /// How it was reached, outermost first (the call chain, the layer path).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chain: Vec<String>,
}

/// The verdict for one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileStatus {
    /// Fully analysed, nothing above `info`.
    Clean,
    /// Suspicious or dangerous findings (see `complete` for whether all of it was analysed).
    Flagged,
    /// No suspicious or dangerous findings, but could not be (fully) analysed: never clean.
    Unscannable,
}

/// The result for one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileReport {
    /// The file.
    pub path: PathBuf,
    /// Its format, detected by content.
    pub format: Format,
    /// Its size in bytes.
    pub size: u64,
    /// SHA-256 of its bytes (hex), as scanned; empty when hashing was turned off.
    pub sha256: String,
    /// The verdict.
    pub status: FileStatus,
    /// Whether the whole file was analysed (false when any finding has severity `error`; a
    /// flagged file may also be incomplete).
    pub complete: bool,
    /// What was found, in file order.
    pub findings: Vec<Finding>,
}

impl FileReport {
    /// Builds a report and derives its status from the findings.
    pub(crate) fn new(
        path: PathBuf,
        format: Format,
        size: u64,
        sha256: String,
        mut findings: Vec<Finding>,
    ) -> Self {
        // The same construct reached twice (a config embedded in two places) is one finding.
        let mut seen = std::collections::HashSet::new();
        findings.retain(|f| {
            seen.insert((
                f.severity,
                f.kind,
                f.member.clone(),
                f.offset,
                f.message.clone(),
            ))
        });
        let complete = !findings.iter().any(|f| f.severity == Severity::Error);
        let flagged = findings
            .iter()
            .any(|f| matches!(f.severity, Severity::Suspicious | Severity::Dangerous));
        let status = if flagged {
            FileStatus::Flagged
        } else if !complete {
            FileStatus::Unscannable
        } else {
            FileStatus::Clean
        };
        FileReport {
            path,
            format,
            size,
            sha256,
            status,
            complete,
            findings,
        }
    }

    /// Whether any finding is `dangerous`.
    pub fn is_dangerous(&self) -> bool {
        self.findings
            .iter()
            .any(|f| f.severity == Severity::Dangerous)
    }
}

/// Counts over a report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Files scanned.
    pub files: usize,
    /// Files with status `clean`.
    pub clean: usize,
    /// Files with status `flagged`.
    pub flagged: usize,
    /// Files with status `unscannable`.
    pub unscannable: usize,
    /// Findings of severity `dangerous`.
    pub dangerous: usize,
    /// Findings of severity `suspicious`.
    pub suspicious: usize,
}

/// The result of [`crate::scan_path`]: one entry per file, sorted by path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanReport {
    /// The paths that were scanned (files or directories).
    pub roots: Vec<PathBuf>,
    /// Version of the scanner (`CARGO_PKG_VERSION`).
    pub scanner_version: String,
    /// Counts.
    pub summary: Summary,
    /// Every file, sorted by path.
    pub files: Vec<FileReport>,
}

impl ScanReport {
    pub(crate) fn new(roots: Vec<PathBuf>, mut files: Vec<FileReport>) -> Self {
        files.sort_by(|a, b| a.path.cmp(&b.path));
        let mut summary = Summary {
            files: files.len(),
            ..Summary::default()
        };
        for f in &files {
            match f.status {
                FileStatus::Clean => summary.clean += 1,
                FileStatus::Flagged => summary.flagged += 1,
                FileStatus::Unscannable => summary.unscannable += 1,
            }
            for x in &f.findings {
                match x.severity {
                    Severity::Dangerous => summary.dangerous += 1,
                    Severity::Suspicious => summary.suspicious += 1,
                    _ => {}
                }
            }
        }
        ScanReport {
            roots,
            scanner_version: env!("CARGO_PKG_VERSION").to_string(),
            summary,
            files,
        }
    }

    /// Merges reports of several paths into one (`palisade scan A B`).
    pub fn merge(reports: Vec<ScanReport>) -> ScanReport {
        let mut roots = Vec::new();
        let mut files = Vec::new();
        for r in reports {
            roots.extend(r.roots);
            files.extend(r.files);
        }
        ScanReport::new(roots, files)
    }

    /// True when at least one file was scanned and every file is `clean`.
    pub fn is_clean(&self) -> bool {
        !self.files.is_empty()
            && self
                .files
                .iter()
                .all(|f| f.status == FileStatus::Clean && f.complete)
    }

    /// Whether any file has a suspicious or dangerous finding.
    pub fn has_findings(&self) -> bool {
        self.files.iter().any(|f| {
            f.findings
                .iter()
                .any(|x| matches!(x.severity, Severity::Suspicious | Severity::Dangerous))
        })
    }

    /// Whether any file could not be fully analysed.
    pub fn has_errors(&self) -> bool {
        self.files.iter().any(|f| !f.complete)
    }

    /// The proof that this report is clean, or `None`. See [`Clean`].
    pub fn clean(&self) -> Option<Clean> {
        // No token without the hashes that bind it to the bytes (`ScanOptions::hash`).
        if !self.is_clean() || self.files.iter().any(|f| f.sha256.is_empty()) {
            return None;
        }
        Some(Clean {
            roots: self.roots.clone(),
            files: self
                .files
                .iter()
                .map(|f| (f.path.clone(), f.sha256.clone()))
                .collect(),
        })
    }
}

/// Proof that a path was scanned and found clean, in the style of rustls's verification tokens:
/// its fields are private and the only constructor is [`ScanReport::clean`], so code that
/// requires a `Clean` (registering or serving a model) cannot be reached without a clean scan.
///
/// It records the SHA-256 of every file as scanned, so a caller can check that the bytes it is
/// about to use are the bytes that were scanned ([`Clean::covers`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clean {
    roots: Vec<PathBuf>,
    files: Vec<(PathBuf, String)>,
}

impl Clean {
    /// The scanned paths.
    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    /// Every scanned file with the hex SHA-256 of its bytes.
    pub fn files(&self) -> impl Iterator<Item = (&Path, &str)> {
        self.files.iter().map(|(p, h)| (p.as_path(), h.as_str()))
    }

    /// Whether `path` was scanned with exactly this hex SHA-256.
    pub fn covers(&self, path: &Path, sha256_hex: &str) -> bool {
        self.files
            .iter()
            .any(|(p, h)| p == path && h.eq_ignore_ascii_case(sha256_hex))
    }
}
