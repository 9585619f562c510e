//! OpenSSF Model Signing (OMS v1.0): sign a model into a Sigstore bundle and verify a model
//! against one.
//!
//! Verification follows the spec's order (bundle → DSSE signature → statement → manifest) and
//! judges the payload by the bytes that were signed. It tolerates what model-signing 1.1.1 writes
//! where that differs from the spec: resources in any order (1.1.1 sorts by path components),
//! `shard_size` written as a float (`64.0`), shard algorithms spelled `sha256-sharded-64`, and
//! `blake2` for `blake2b`. Duplicate resource names are rejected.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::bundle::{self, SigningMethod};
use crate::error::{Error, Failure, ManifestIssue, Result};
use crate::hashing::HashAlgorithm;
use crate::keys::{PublicKey, SigningKey};
use crate::manifest::{self, Resource, Serialization, Unit};
use crate::walk::{self, WalkPolicy};

/// in-toto Statement v1 type.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// OMS predicate type.
pub const PREDICATE_TYPE: &str = "https://model_signing/signature/v1.0";

/// How to sign a model.
#[derive(Debug, Clone)]
pub struct SignOptions {
    /// File hash algorithm.
    pub hash: HashAlgorithm,
    /// Serialization method.
    pub serialization: Serialization,
    /// Extra paths to leave out (relative to the model root).
    pub ignore_paths: Vec<String>,
    /// Leave out `.git`, `.gitignore`, `.gitattributes`, `.github` (default true).
    pub ignore_git_paths: bool,
    /// Follow symbolic links instead of refusing them.
    pub allow_symlinks: bool,
    /// Where the signature will be written; left out of the manifest if inside the model.
    pub signature_path: Option<PathBuf>,
    /// The statement's subject name (`None`: the model's file or folder name, as model-signing
    /// writes it). A model server can hold it against where it finds the model: Palisade's
    /// gateway takes `<model>/<version>` to bind a signature to both.
    pub subject_name: Option<String>,
}

impl Default for SignOptions {
    fn default() -> Self {
        SignOptions {
            hash: HashAlgorithm::Sha256,
            serialization: Serialization::Files,
            ignore_paths: Vec::new(),
            ignore_git_paths: true,
            allow_symlinks: false,
            signature_path: None,
            subject_name: None,
        }
    }
}

/// A signed model: the bundle bytes and what was signed.
#[derive(Debug, Clone)]
pub struct Signed {
    /// The Sigstore bundle (JSON).
    pub bundle: Vec<u8>,
    /// The signed resources, sorted by name.
    pub resources: Vec<Resource>,
    /// The root digest (hex), the statement's subject.
    pub root_digest: String,
}

fn basename(model: &Path) -> String {
    std::fs::canonicalize(model)
        .ok()
        .and_then(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_string))
        .unwrap_or_else(|| "model".to_string())
}

/// Builds the in-toto statement (JSON bytes) for a manifest.
pub fn statement(
    subject_name: &str,
    resources: &[Resource],
    hash: HashAlgorithm,
    ser: Serialization,
    allow_symlinks: bool,
    ignore_paths: &[String],
) -> (Vec<u8>, String) {
    let root = hex::encode(manifest::root_digest(
        resources.iter().map(|r| r.digest.as_slice()),
    ));
    let res: Vec<serde_json::Value> = resources
        .iter()
        .map(|r| {
            serde_json::json!({ "name": r.name, "digest": hex::encode(&r.digest), "algorithm": hash.id() })
        })
        .collect();
    let mut serialization = serde_json::json!({
        "method": match ser { Serialization::Files => "files", Serialization::Shards { .. } => "shards" },
        "hash_type": hash.id(),
        "allow_symlinks": allow_symlinks,
        "ignore_paths": ignore_paths,
    });
    if let Serialization::Shards { shard_size } = ser {
        serialization["shard_size"] = shard_size.into();
    }
    let st = serde_json::json!({
        "_type": STATEMENT_TYPE,
        "subject": [ { "name": subject_name, "digest": { "sha256": root } } ],
        "predicateType": PREDICATE_TYPE,
        "predicate": { "resources": res, "serialization": serialization },
    });
    (serde_json::to_vec(&st).unwrap_or_default(), root)
}

/// Signs the model at `model` (a directory or a single file).
pub fn sign_model(
    model: &Path,
    key: &SigningKey,
    opts: &SignOptions,
    progress: Option<&(dyn Fn(u64) + Sync)>,
) -> Result<Signed> {
    let sig_rel = walk::signature_exclusion(model, opts.signature_path.as_deref());
    let ignores = walk::ignore_list(opts.ignore_git_paths, &opts.ignore_paths, &sig_rel)?;
    let policy = WalkPolicy {
        ignore_paths: ignores.clone(),
        allow_symlinks: opts.allow_symlinks,
    };
    let resources = manifest::compute(model, &policy, opts.serialization, opts.hash, progress)?;
    let subject = opts.subject_name.clone().unwrap_or_else(|| basename(model));
    let (payload, root_digest) = statement(
        &subject,
        &resources,
        opts.hash,
        opts.serialization,
        opts.allow_symlinks,
        &ignores,
    );
    Ok(Signed {
        bundle: bundle::sign_payload(&payload, key),
        resources,
        root_digest,
    })
}

/// How to verify a model.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Do not fail on files that are present but not signed.
    pub ignore_unsigned_files: bool,
    /// Paths to leave out in addition to the signed `ignore_paths` and the defaults.
    pub ignore_paths: Vec<String>,
    /// The signature file; left out of the enumeration if inside the model.
    pub signature_path: Option<PathBuf>,
}

#[derive(Deserialize)]
struct StatementIn {
    #[serde(rename = "_type")]
    ty: String,
    subject: Vec<serde_json::Value>,
    #[serde(rename = "predicateType")]
    predicate_type: String,
    predicate: Option<PredicateIn>,
}

#[derive(Deserialize)]
struct PredicateIn {
    resources: Vec<ResourceIn>,
    serialization: SerializationIn,
}

#[derive(Deserialize)]
struct ResourceIn {
    name: String,
    digest: String,
    algorithm: String,
}

#[derive(Deserialize)]
struct SerializationIn {
    method: String,
    hash_type: String,
    shard_size: Option<serde_json::Number>,
    allow_symlinks: bool,
    ignore_paths: Option<Vec<String>>,
}

/// The signed content of a verified OMS bundle.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SignedManifest {
    /// File hash algorithm.
    pub hash: HashAlgorithm,
    /// Serialization method.
    pub serialization: Serialization,
    /// Symlink policy at signing.
    pub allow_symlinks: bool,
    /// Paths the signer left out.
    pub ignore_paths: Vec<String>,
    /// `subject[0].name` (informational).
    pub subject_name: String,
    /// `subject[0].digest.sha256` (informational).
    pub root_digest: String,
    /// Resource name → digest (hex), as signed.
    pub resources: BTreeMap<String, String>,
    /// How the signer was identified.
    pub method: SigningMethod,
    /// Hint of the key that verified.
    pub key_hint: String,
}

fn bad_statement(s: impl Into<String>) -> Error {
    Failure::MalformedStatement(s.into()).into()
}

fn shard_size_of(n: &serde_json::Number) -> Option<u64> {
    if let Some(u) = n.as_u64() {
        return (u > 0).then_some(u);
    }
    // model-signing 1.1.1 writes `64.0`: accept a float only if it is an exact positive integer.
    let f = n.as_f64()?;
    (f >= 1.0 && f.fract() == 0.0 && f < 9.0e15).then_some(f as u64)
}

/// Checks a bundle's signature and statement (no model): what was signed, by the trusted key.
pub fn verify_bundle(bundle_bytes: &[u8], trusted: &PublicKey) -> Result<SignedManifest> {
    let env = bundle::verify_envelope(bundle_bytes, trusted)?;
    parse_statement(&env.payload, env.method, env.key_hint)
}

pub(crate) fn parse_statement(
    payload: &[u8],
    method: SigningMethod,
    key_hint: String,
) -> Result<SignedManifest> {
    let st: StatementIn = serde_json::from_slice(payload)
        .map_err(|e| bad_statement(format!("payload is not an in-toto statement: {e}")))?;
    if st.ty != STATEMENT_TYPE {
        return Err(bad_statement(format!(
            "_type {:?} is not {STATEMENT_TYPE}",
            st.ty
        )));
    }
    if st.predicate_type != PREDICATE_TYPE {
        return Err(Failure::WrongPredicateType {
            found: st.predicate_type,
            expected: PREDICATE_TYPE.into(),
        }
        .into());
    }
    let subject = st
        .subject
        .first()
        .ok_or_else(|| bad_statement("empty subject"))?;
    let subject_name = subject["name"].as_str().unwrap_or_default().to_string();
    let root_digest = subject["digest"]["sha256"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let pred = st
        .predicate
        .ok_or_else(|| bad_statement("missing predicate"))?;
    let ser = &pred.serialization;
    let hash = HashAlgorithm::from_id(&ser.hash_type)
        .ok_or_else(|| bad_statement(format!("unsupported hash_type {:?}", ser.hash_type)))?;
    let serialization = match (ser.method.as_str(), &ser.shard_size) {
        ("files", None) => Serialization::Files,
        ("files", Some(_)) => return Err(bad_statement("shard_size with method \"files\"")),
        ("shards", Some(n)) => Serialization::Shards {
            shard_size: shard_size_of(n).ok_or_else(|| {
                bad_statement(format!("shard_size {n} is not a positive integer"))
            })?,
        },
        ("shards", None) => return Err(bad_statement("method \"shards\" without shard_size")),
        (m, _) => {
            return Err(bad_statement(format!(
                "unsupported serialization method {m:?}"
            )));
        }
    };
    if pred.resources.is_empty() {
        return Err(bad_statement("no resources"));
    }
    let mut resources = BTreeMap::new();
    for r in pred.resources {
        let algo_ok = HashAlgorithm::from_id(&r.algorithm) == Some(hash)
            || match serialization {
                // model-signing 1.1.1: "sha256-sharded-64".
                Serialization::Shards { shard_size } => {
                    r.algorithm == format!("{}-sharded-{shard_size}", ser.hash_type)
                }
                Serialization::Files => false,
            };
        if !algo_ok {
            return Err(bad_statement(format!(
                "resource {:?}: algorithm {:?} does not match hash_type {:?}",
                r.name, r.algorithm, ser.hash_type
            )));
        }
        let digest = hex::decode(&r.digest)
            .ok()
            .filter(|d| d.len() == hash.digest_len())
            .ok_or_else(|| {
                bad_statement(format!("resource {:?}: malformed {hash} digest", r.name))
            })?;
        if matches!(serialization, Serialization::Shards { .. })
            && manifest::parse_shard_name(&r.name).is_none()
        {
            return Err(bad_statement(format!(
                "resource {:?} is not path:start:end",
                r.name
            )));
        }
        if resources
            .insert(r.name.clone(), hex::encode(digest))
            .is_some()
        {
            return Err(bad_statement(format!("duplicate resource {:?}", r.name)));
        }
    }
    Ok(SignedManifest {
        hash,
        serialization,
        allow_symlinks: ser.allow_symlinks,
        ignore_paths: ser.ignore_paths.clone().unwrap_or_default(),
        subject_name,
        root_digest,
        resources,
        method,
        key_hint,
    })
}

/// Proof that a model verified against a trusted key. Only [`verify_model`] creates one.
#[derive(Debug, Clone)]
pub struct Verified {
    model: PathBuf,
    manifest: SignedManifest,
    bundle: Vec<u8>,
}

impl Verified {
    /// The model directory (or file) that verified, canonicalised.
    pub fn model(&self) -> &Path {
        &self.model
    }
    /// What was signed.
    pub fn manifest(&self) -> &SignedManifest {
        &self.manifest
    }
    /// The bundle bytes that verified.
    pub fn bundle(&self) -> &[u8] {
        &self.bundle
    }
}

/// Verifies the model at `model` against `bundle_bytes` and the trusted key.
pub fn verify_model(
    model: &Path,
    bundle_bytes: &[u8],
    trusted: &PublicKey,
    opts: &VerifyOptions,
    progress: Option<&(dyn Fn(u64) + Sync)>,
) -> Result<Verified> {
    let m = verify_bundle(bundle_bytes, trusted)?;
    let canonical = std::fs::canonicalize(model).map_err(|e| Error::io(model, e))?;
    let sig_rel = walk::signature_exclusion(model, opts.signature_path.as_deref());
    // Signed ignore paths are trusted (they are covered by the signature) but still must be sane
    // relative paths; anything else is simply never matched.
    let mut ignores: Vec<String> = walk::DEFAULT_IGNORES
        .iter()
        .map(|s| s.to_string())
        .collect();
    ignores.extend(
        m.ignore_paths
            .iter()
            .filter_map(|p| walk::canonical_ignore_path(p).ok()),
    );
    ignores.extend(walk::ignore_list(false, &opts.ignore_paths, &sig_rel)?);
    let policy = WalkPolicy {
        ignore_paths: ignores,
        allow_symlinks: m.allow_symlinks,
    };
    let files = walk::enumerate(model, &policy)?;
    let mut issues = Vec::new();
    let mut work: Vec<Unit> = Vec::new();
    let mut seen: HashMap<&str, ()> = HashMap::new();
    for f in &files {
        let units = manifest::units_of(f, m.serialization)?;
        let signed: Vec<bool> = units
            .iter()
            .map(|u| m.resources.contains_key(&u.name))
            .collect();
        let file_signed = match m.serialization {
            Serialization::Files => signed[0],
            Serialization::Shards { .. } => {
                signed.iter().any(|s| *s)
                    || m.resources
                        .keys()
                        .any(|k| manifest::parse_shard_name(k).is_some_and(|(p, _, _)| p == f.name))
            }
        };
        if !file_signed {
            if !opts.ignore_unsigned_files && !units.is_empty() {
                issues.push(ManifestIssue::Unsigned {
                    name: f.name.clone(),
                });
            }
            continue;
        }
        for (u, s) in units.into_iter().zip(signed) {
            if s {
                work.push(u);
            } else {
                // The file is signed but its current byte ranges are not: it changed size.
                issues.push(ManifestIssue::Unsigned { name: u.name });
            }
        }
    }
    for u in &work {
        seen.insert(u.name.as_str(), ());
    }
    for name in m.resources.keys() {
        if !seen.contains_key(name.as_str()) {
            issues.push(ManifestIssue::Missing { name: name.clone() });
        }
    }
    let digests = manifest::hash_units(&work, m.hash, progress)?;
    for (u, d) in work.iter().zip(digests) {
        let actual = hex::encode(d);
        let expected = &m.resources[&u.name];
        if &actual != expected {
            issues.push(ManifestIssue::DigestMismatch {
                name: u.name.clone(),
                expected: expected.clone(),
                actual,
            });
        }
    }
    if !issues.is_empty() {
        issues.sort_by(|a, b| format!("{a}").cmp(&format!("{b}")));
        return Err(Failure::Manifest(issues).into());
    }
    Ok(Verified {
        model: canonical,
        manifest: m,
        bundle: bundle_bytes.to_vec(),
    })
}
