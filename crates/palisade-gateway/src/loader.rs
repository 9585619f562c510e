//! Loading models from disk, only after they pass the supply-chain checks.
//!
//! A model repository is a folder:
//!
//! ```text
//! <repo>/<model>/<version>/model.onnx     the model
//! <repo>/<model>/<version>/policy.toml    its policy (optional: defaults)
//! ```
//!
//! Each version's file is read once; `palisade scan` must find it clean, and the
//! [`palisade_scan::Clean`] proof must cover the exact bytes (SHA-256) that are then handed to
//! the runtime, so what runs is what was scanned. [`Admitted`] can only be made by
//! [`admit`], and [`load_version`] needs one.
//!
//! The runtime (ONNX through tract, in `palisade-model`) is injected as a [`Runtime`], so this
//! crate depends on no ML engine.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use palisade_core::Classifier;
use sha2::{Digest, Sha256};

use crate::model::{ModelRepository, ServedModel, valid_name};
use crate::policy::Policy;
use crate::{GatewayError, hexfmt};

/// Largest model file read (the ONNX protobuf limit).
const MAX_MODEL_BYTES: u64 = 2 << 30;

/// A model runtime: the bytes of a model file in, a classifier out.
pub trait Runtime: Send + Sync {
    /// Builds a classifier from `bytes` (read from `path`, which names it in errors).
    fn load(&self, path: &Path, bytes: &[u8]) -> Result<LoadedModel, String>;
}

/// What a runtime gives back.
pub struct LoadedModel {
    /// The classifier.
    pub classifier: Arc<dyn Classifier>,
    /// Its input tensor's name.
    pub input_name: String,
    /// Its output tensor's name.
    pub output_name: String,
    /// Platform string for metadata.
    pub platform: String,
}

/// Proof that a file's bytes passed the supply-chain checks. Only [`admit`] makes one.
#[derive(Debug)]
pub struct Admitted {
    path: PathBuf,
    bytes: Vec<u8>,
    sha256: String,
    _clean: palisade_scan::Clean,
}

impl Admitted {
    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// SHA-256 of the admitted bytes (hex).
    pub fn sha256(&self) -> &str {
        &self.sha256
    }
}

/// Reads `path` once and scans it; admits it only if the scan is clean and covers these bytes.
pub fn admit(path: &Path) -> Result<Admitted, GatewayError> {
    let meta = std::fs::metadata(path).map_err(|e| GatewayError::io(path, e))?;
    if meta.len() > MAX_MODEL_BYTES {
        return Err(GatewayError::Model(format!(
            "{} is {} bytes, over the {MAX_MODEL_BYTES}-byte limit",
            path.display(),
            meta.len()
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| GatewayError::io(path, e))?;
    let sha256 = hexfmt::encode(&Sha256::digest(&bytes));
    let report = palisade_scan::scan_path(path, &palisade_scan::ScanOptions::default())
        .map_err(|e| GatewayError::Model(format!("scanning {}: {e}", path.display())))?;
    let clean = report.clean().ok_or_else(|| {
        GatewayError::Model(format!(
            "{} did not scan clean; run `palisade scan {}` for the findings",
            path.display(),
            path.display()
        ))
    })?;
    if !clean.covers(path, &sha256) {
        return Err(GatewayError::Model(format!(
            "{} changed while it was being scanned",
            path.display()
        )));
    }
    Ok(Admitted {
        path: path.to_path_buf(),
        bytes,
        sha256,
        _clean: clean,
    })
}

/// Builds a served version from admitted bytes.
pub fn load_version(
    name: &str,
    version: &str,
    admitted: Admitted,
    policy: Policy,
    runtime: &dyn Runtime,
) -> Result<ServedModel, GatewayError> {
    if !valid_name(name) || !valid_name(version) {
        return Err(GatewayError::Model(format!(
            "'{name}'/'{version}': names are 1 to 64 of [A-Za-z0-9_.-]"
        )));
    }
    let loaded = runtime
        .load(&admitted.path, &admitted.bytes)
        .map_err(|e| GatewayError::Model(format!("{}: {e}", admitted.path.display())))?;
    Ok(ServedModel {
        name: name.to_string(),
        version: version.to_string(),
        classifier: loaded.classifier,
        policy,
        input_name: loaded.input_name,
        output_name: loaded.output_name,
        platform: loaded.platform,
    })
}

/// One version found in a repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionDir {
    /// Model name.
    pub name: String,
    /// Version.
    pub version: String,
    /// The folder.
    pub dir: PathBuf,
}

fn version_key(v: &str) -> (u64, String) {
    (v.parse::<u64>().unwrap_or(u64::MAX), v.to_string())
}

/// The versions in a repository folder, each model's in ascending order (numeric versions
/// first, by value).
pub fn list_repository(repo: &Path) -> Result<Vec<VersionDir>, GatewayError> {
    let mut out = Vec::new();
    let mut models: Vec<_> = std::fs::read_dir(repo)
        .map_err(|e| GatewayError::io(repo, e))?
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .collect();
    models.sort_by_key(|e| e.file_name());
    for m in models {
        let name = m.file_name().to_string_lossy().into_owned();
        if !valid_name(&name) {
            continue;
        }
        let mut versions: Vec<(String, PathBuf)> = std::fs::read_dir(m.path())
            .map_err(|e| GatewayError::io(&m.path(), e))?
            .filter_map(Result::ok)
            .filter(|e| e.path().join("model.onnx").is_file())
            .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
            .filter(|(v, _)| valid_name(v))
            .collect();
        versions.sort_by_key(|(v, _)| version_key(v));
        for (version, dir) in versions {
            out.push(VersionDir {
                name: name.clone(),
                version,
                dir,
            });
        }
    }
    Ok(out)
}

/// Loads one version folder (`model.onnx`, optional `policy.toml`) through the checks.
pub fn load_dir(v: &VersionDir, runtime: &dyn Runtime) -> Result<ServedModel, GatewayError> {
    let policy_path = v.dir.join("policy.toml");
    let policy = if policy_path.is_file() {
        Policy::load(&policy_path)?
    } else {
        Policy::default()
    };
    let admitted = admit(&v.dir.join("model.onnx"))?;
    load_version(&v.name, &v.version, admitted, policy, runtime)
}

/// Loads every version of a repository into `models` (the last version of each model becomes
/// the active one). Stops at the first version that fails its checks.
pub fn load_repository(
    repo: &Path,
    runtime: &dyn Runtime,
    models: &ModelRepository,
) -> Result<Vec<(String, String)>, GatewayError> {
    let mut loaded = Vec::new();
    for v in list_repository(repo)? {
        let m = load_dir(&v, runtime)?;
        models
            .deploy(m)
            .map_err(|e| GatewayError::Model(e.to_string()))?;
        loaded.push((v.name, v.version));
    }
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake;
    impl Runtime for Fake {
        fn load(&self, _path: &Path, bytes: &[u8]) -> Result<LoadedModel, String> {
            if bytes.is_empty() {
                return Err("empty".into());
            }
            Ok(LoadedModel {
                classifier: Arc::new(
                    palisade_core::LinearClassifier::new(
                        "f",
                        vec![2],
                        Default::default(),
                        ndarray::Array2::zeros((2, 2)),
                        ndarray::Array1::zeros(2),
                    )
                    .map_err(|e| e.to_string())?,
                ),
                input_name: "x".into(),
                output_name: "y".into(),
                platform: "fake".into(),
            })
        }
    }

    #[test]
    fn a_malicious_file_is_refused_and_a_clean_one_loads() {
        let dir = tempfile::tempdir().unwrap();
        let v1 = dir.path().join("m/1");
        let v2 = dir.path().join("m/2");
        std::fs::create_dir_all(&v1).unwrap();
        std::fs::create_dir_all(&v2).unwrap();
        // A pickle that calls os.system: the scanner must refuse it whatever its name.
        let evil = b"\x80\x02cos\nsystem\nq\x00X\x02\x00\x00\x00idq\x01\x85q\x02Rq\x03.";
        std::fs::write(v2.join("model.onnx"), evil).unwrap();
        let bundled =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/mnist_cnn_public.onnx");
        std::fs::copy(&bundled, v1.join("model.onnx")).unwrap();
        let listed = list_repository(dir.path()).unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].version, "1");
        let err = load_dir(&listed[1], &Fake).unwrap_err().to_string();
        assert!(err.contains("did not scan clean"), "{err}");
        let m = load_dir(&listed[0], &Fake).unwrap();
        assert_eq!((m.name.as_str(), m.version.as_str()), ("m", "1"));
        // A policy with a typo refuses the version.
        std::fs::write(v1.join("policy.toml"), "[input]\nmax_bach = 1\n").unwrap();
        assert!(load_dir(&listed[0], &Fake).is_err());
        // A file that is no model at all is not clean either.
        std::fs::write(v1.join("model.onnx"), b"not a model").unwrap();
        std::fs::remove_file(v1.join("policy.toml")).unwrap();
        assert!(load_dir(&listed[0], &Fake).is_err());
    }
}
