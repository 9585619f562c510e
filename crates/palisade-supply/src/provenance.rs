//! Provenance: dataset manifests and signed training records, linked dataset → training → model.
//!
//! - A **dataset manifest** lists every file of a dataset with its SHA-256 and size
//!   ([`DatasetManifest`]); its identity is the SHA-256 of its JSON bytes.
//! - A **training record** is an in-toto Statement v1 with predicate SLSA Provenance v1
//!   (`https://slsa.dev/provenance/v1`): subject = the model (its OMS root digest), resolved
//!   dependencies = the dataset manifest (by digest) and the code (by commit), external parameters
//!   = the training config, byproducts = the metrics. It is DSSE-signed in a Sigstore bundle like
//!   an OMS signature.
//! - [`verify_chain`] checks a verified record against a verified model and a dataset manifest
//!   (and optionally the dataset files themselves).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::bundle;
use crate::error::{Error, Failure, Result};
use crate::hashing::HashAlgorithm;
use crate::keys::{PublicKey, SigningKey};
use crate::manifest::{self, Serialization};
use crate::walk::{self, WalkPolicy};

/// SLSA provenance v1 predicate type.
pub const SLSA_PREDICATE_TYPE: &str = "https://slsa.dev/provenance/v1";
/// Build type of Palisade training records.
pub const BUILD_TYPE: &str = "https://palisade.invalid/training/v1";
/// Type tag of dataset manifests.
pub const DATASET_MANIFEST_TYPE: &str = "https://palisade.invalid/DatasetManifest/v1";

/// One dataset file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetFile {
    /// Relative name.
    pub name: String,
    /// SHA-256 (hex).
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

/// Content hashes of every file of a dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetManifest {
    /// Always [`DATASET_MANIFEST_TYPE`].
    #[serde(rename = "_type")]
    pub kind: String,
    /// Dataset name (the directory's basename by default).
    pub name: String,
    /// Files, sorted by name.
    pub files: Vec<DatasetFile>,
    /// SHA-256 over the concatenated raw file digests (as OMS computes a model's root digest).
    pub root_digest: String,
}

impl DatasetManifest {
    /// Hashes every file of `dir` (parallel, streaming; `.git` and friends left out).
    pub fn compute(dir: &Path, name: Option<&str>) -> Result<Self> {
        let policy = WalkPolicy {
            ignore_paths: walk::ignore_list(true, &[], &[])?,
            allow_symlinks: false,
        };
        let entries = walk::enumerate(dir, &policy)?;
        let res = manifest::compute(
            dir,
            &policy,
            Serialization::Files,
            HashAlgorithm::Sha256,
            None,
        )?;
        let sizes: std::collections::HashMap<&str, u64> =
            entries.iter().map(|f| (f.name.as_str(), f.len)).collect();
        let root = manifest::root_digest(res.iter().map(|r| r.digest.as_slice()));
        let default_name = std::fs::canonicalize(dir)
            .ok()
            .and_then(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_string))
            .unwrap_or_else(|| "dataset".into());
        Ok(DatasetManifest {
            kind: DATASET_MANIFEST_TYPE.into(),
            name: name.map(str::to_string).unwrap_or(default_name),
            files: res
                .iter()
                .map(|r| DatasetFile {
                    name: r.name.clone(),
                    sha256: hex::encode(&r.digest),
                    size: sizes.get(r.name.as_str()).copied().unwrap_or(0),
                })
                .collect(),
            root_digest: hex::encode(root),
        })
    }

    /// The JSON bytes (pretty, newline-terminated) whose SHA-256 identifies the manifest.
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }

    /// Parses manifest bytes.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        let m: DatasetManifest = serde_json::from_slice(bytes)
            .map_err(|e| Error::InvalidArgument(format!("not a dataset manifest: {e}")))?;
        if m.kind != DATASET_MANIFEST_TYPE {
            return Err(Error::InvalidArgument(format!(
                "not a dataset manifest: _type {:?}",
                m.kind
            )));
        }
        Ok(m)
    }

    /// Checks that `dir` holds exactly these files with these digests.
    pub fn check(&self, dir: &Path) -> Result<()> {
        let now = DatasetManifest::compute(dir, Some(&self.name))?;
        if now.files == self.files {
            return Ok(());
        }
        let old: std::collections::BTreeMap<_, _> =
            self.files.iter().map(|f| (&f.name, &f.sha256)).collect();
        let new: std::collections::BTreeMap<_, _> =
            now.files.iter().map(|f| (&f.name, &f.sha256)).collect();
        let mut diffs = Vec::new();
        for (n, d) in &old {
            match new.get(n) {
                None => diffs.push(format!("{n}: missing")),
                Some(d2) if d2 != d => diffs.push(format!("{n}: changed")),
                _ => {}
            }
        }
        diffs.extend(
            new.keys()
                .filter(|n| !old.contains_key(*n))
                .map(|n| format!("{n}: not in manifest")),
        );
        diffs.truncate(10);
        Err(Failure::Provenance(format!(
            "dataset {} differs from its manifest: {}",
            dir.display(),
            diffs.join("; ")
        ))
        .into())
    }
}

/// What a training run produced and from what.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrainingRecord {
    /// Model name (subject name).
    pub model_name: String,
    /// OMS root digest of the trained model (subject digest, sha256).
    pub model_root_digest: String,
    /// Dataset name.
    pub dataset_name: String,
    /// SHA-256 of the dataset manifest's bytes.
    pub dataset_manifest_sha256: String,
    /// Code version (a git commit or any version string).
    pub code_version: String,
    /// Where the code lives (optional URI).
    pub code_uri: Option<String>,
    /// Training configuration (any JSON).
    pub config: serde_json::Value,
    /// Metrics (any JSON).
    pub metrics: serde_json::Value,
}

impl TrainingRecord {
    /// The in-toto statement (JSON bytes) with an SLSA provenance v1 predicate.
    pub fn statement(&self) -> Vec<u8> {
        let mut code = serde_json::json!({
            "name": "code",
            "digest": { "gitCommit": self.code_version },
        });
        if let Some(u) = &self.code_uri {
            code["uri"] = u.clone().into();
        }
        let st = serde_json::json!({
            "_type": crate::oms::STATEMENT_TYPE,
            "subject": [ { "name": self.model_name, "digest": { "sha256": self.model_root_digest } } ],
            "predicateType": SLSA_PREDICATE_TYPE,
            "predicate": {
                "buildDefinition": {
                    "buildType": BUILD_TYPE,
                    "externalParameters": { "config": self.config },
                    "resolvedDependencies": [
                        {
                            "name": format!("dataset:{}", self.dataset_name),
                            "mediaType": "application/json",
                            "digest": { "sha256": self.dataset_manifest_sha256 },
                        },
                        code,
                    ],
                },
                "runDetails": {
                    "builder": { "id": "https://palisade.invalid/trainer" },
                    "metadata": { "finishedOn": now_rfc3339() },
                    "byproducts": [ { "name": "metrics", "annotations": self.metrics } ],
                },
            },
        });
        serde_json::to_vec(&st).unwrap_or_default()
    }

    /// Signs the record into a Sigstore bundle (DSSE, in-toto payload).
    pub fn sign(&self, key: &SigningKey) -> Vec<u8> {
        bundle::sign_payload(&self.statement(), key)
    }
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn bad(s: impl Into<String>) -> Error {
    Failure::Provenance(s.into()).into()
}

/// Verifies a provenance bundle's signature with `trusted` and parses the record it signs.
pub fn verify_record(bundle_bytes: &[u8], trusted: &PublicKey) -> Result<TrainingRecord> {
    let env = bundle::verify_envelope(bundle_bytes, trusted)?;
    let st: serde_json::Value = serde_json::from_slice(&env.payload)
        .map_err(|e| bad(format!("payload is not JSON: {e}")))?;
    if st["_type"] != crate::oms::STATEMENT_TYPE {
        return Err(bad("payload is not an in-toto Statement v1"));
    }
    if st["predicateType"] != SLSA_PREDICATE_TYPE {
        return Err(bad(format!(
            "predicate type {} is not SLSA provenance v1",
            st["predicateType"]
        )));
    }
    let subj = &st["subject"][0];
    let p = &st["predicate"];
    let deps = p["buildDefinition"]["resolvedDependencies"]
        .as_array()
        .ok_or_else(|| bad("no resolvedDependencies"))?;
    let dataset = deps
        .iter()
        .find(|d| {
            d["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("dataset:"))
        })
        .ok_or_else(|| bad("no dataset dependency"))?;
    let code = deps
        .iter()
        .find(|d| d["name"] == "code")
        .ok_or_else(|| bad("no code dependency"))?;
    let s = |v: &serde_json::Value, what: &str| {
        v.as_str()
            .map(str::to_string)
            .ok_or_else(|| bad(format!("missing {what}")))
    };
    Ok(TrainingRecord {
        model_name: s(&subj["name"], "subject name")?,
        model_root_digest: s(&subj["digest"]["sha256"], "subject sha256 digest")?,
        dataset_name: s(&dataset["name"], "dataset name")?
            .trim_start_matches("dataset:")
            .to_string(),
        dataset_manifest_sha256: s(&dataset["digest"]["sha256"], "dataset digest")?,
        code_version: s(&code["digest"]["gitCommit"], "code version")?,
        code_uri: code["uri"].as_str().map(str::to_string),
        config: p["buildDefinition"]["externalParameters"]["config"].clone(),
        metrics: p["runDetails"]["byproducts"]
            .as_array()
            .and_then(|b| b.iter().find(|x| x["name"] == "metrics"))
            .map(|m| m["annotations"].clone())
            .unwrap_or(serde_json::Value::Null),
    })
}

/// What [`verify_chain`] established.
#[derive(Debug, Clone, Serialize)]
pub struct ChainReport {
    /// The verified record.
    pub record: TrainingRecord,
    /// The dataset files were re-hashed against the manifest.
    pub dataset_files_checked: bool,
}

/// Checks dataset → training → model: the record's subject is the model with this OMS root
/// digest, its dataset dependency is this manifest (by SHA-256 of its bytes), its code version
/// is `code_version` if one is required, and (if given) `dataset_dir` still matches the manifest.
pub fn verify_chain(
    record: TrainingRecord,
    model_root_digest: &str,
    dataset_manifest_bytes: &[u8],
    dataset_dir: Option<&Path>,
    code_version: Option<&str>,
) -> Result<ChainReport> {
    if !record
        .model_root_digest
        .eq_ignore_ascii_case(model_root_digest)
    {
        return Err(bad(format!(
            "the record is about model {}, not this model ({model_root_digest})",
            record.model_root_digest
        )));
    }
    let manifest_sha = hex::encode(crate::hashing::sha256(dataset_manifest_bytes));
    if !record
        .dataset_manifest_sha256
        .eq_ignore_ascii_case(&manifest_sha)
    {
        return Err(bad(format!(
            "the record names dataset manifest {}, not this one ({manifest_sha})",
            record.dataset_manifest_sha256
        )));
    }
    if let Some(cv) = code_version
        && record.code_version != cv
    {
        return Err(bad(format!(
            "code version is {:?}, expected {cv:?}",
            record.code_version
        )));
    }
    let manifest = DatasetManifest::from_json(dataset_manifest_bytes)?;
    if let Some(dir) = dataset_dir {
        manifest.check(dir)?;
    }
    Ok(ChainReport {
        record,
        dataset_files_checked: dataset_dir.is_some(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Curve;
    use crate::oms::{self, SignOptions, VerifyOptions};

    #[test]
    fn dataset_training_model_chain() {
        let d = tempfile::tempdir().unwrap();
        let data = d.path().join("data");
        std::fs::create_dir_all(data.join("train")).unwrap();
        std::fs::write(data.join("train/x.csv"), b"1,2\n3,4\n").unwrap();
        std::fs::write(data.join("labels.csv"), b"0\n1\n").unwrap();
        let dm = DatasetManifest::compute(&data, None).unwrap();
        assert_eq!(dm.files.len(), 2);
        let dm_bytes = dm.to_json();
        assert_eq!(DatasetManifest::from_json(&dm_bytes).unwrap(), dm);
        let model = d.path().join("model");
        std::fs::create_dir_all(&model).unwrap();
        std::fs::write(model.join("w"), b"weights").unwrap();
        let signer = SigningKey::generate(Curve::P256);
        let trainer = SigningKey::generate(Curve::P384);
        let s = oms::sign_model(&model, &signer, &SignOptions::default(), None).unwrap();
        let v = oms::verify_model(
            &model,
            &s.bundle,
            &signer.public_key(),
            &VerifyOptions::default(),
            None,
        )
        .unwrap();
        let rec = TrainingRecord {
            model_name: "m".into(),
            model_root_digest: v.manifest().root_digest.clone(),
            dataset_name: dm.name.clone(),
            dataset_manifest_sha256: hex::encode(crate::hashing::sha256(&dm_bytes)),
            code_version: "abc123".into(),
            code_uri: Some("git+https://example.invalid/repo".into()),
            config: serde_json::json!({"epochs": 3, "lr": 0.01}),
            metrics: serde_json::json!({"accuracy": 0.98}),
        };
        let b = rec.sign(&trainer);
        let got = verify_record(&b, &trainer.public_key()).unwrap();
        assert_eq!(got, rec);
        let root = &v.manifest().root_digest;
        verify_chain(got.clone(), root, &dm_bytes, Some(&data), Some("abc123")).unwrap();
        // Each broken link is caught.
        assert!(verify_record(&b, &signer.public_key()).is_err());
        assert!(verify_chain(got.clone(), &"0".repeat(64), &dm_bytes, None, None).is_err());
        assert!(verify_chain(got.clone(), root, b"{}", None, None).is_err());
        assert!(verify_chain(got.clone(), root, &dm_bytes, None, Some("other")).is_err());
        std::fs::write(data.join("labels.csv"), b"1\n1\n").unwrap();
        let e = verify_chain(got, root, &dm_bytes, Some(&data), None).unwrap_err();
        assert!(e.to_string().contains("labels.csv: changed"), "{e}");
        // An OMS bundle is not a provenance record.
        assert!(verify_record(&s.bundle, &signer.public_key()).is_err());
    }
}
