//! Loading models from disk, only after they pass the supply-chain checks.
//!
//! A model repository is a folder:
//!
//! ```text
//! <repo>/<model>/<version>/model.onnx     the model
//! <repo>/<model>/<version>/policy.toml    its policy (optional: defaults)
//! <repo>/<model>/<version>/model.sig      OMS signature over the folder (model and policy)
//! ```
//!
//! Each version's file is read once; `palisade scan` must find it clean, and the
//! [`palisade_scan::Clean`] proof must cover the exact bytes (SHA-256) that are then handed to
//! the runtime, so what runs is what was scanned. [`Admitted`] can only be made by
//! [`admit`], and [`load_version`] needs one.
//!
//! Under [`Trust::Key`] (the default of `palisade serve`), `model.sig` must verify against the
//! trusted key (OpenSSF Model Signing, `files` serialisation), and the bytes of `model.onnx` and
//! `policy.toml` that are used must be the ones the signature names: each is read once, and its
//! digest compared with the signed digest, so a file swapped after verification is refused.
//!
//! The runtime (ONNX through tract, in `palisade-model`) is injected as a [`Runtime`], so this
//! crate depends on no ML engine.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use palisade_core::Classifier;

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

/// Reads the regular file `path`, of at most `max` bytes, through one open handle: a symbolic
/// link (not followed), a FIFO, a device or a directory is refused without being read, and a file
/// that grows past `max` while it is read is refused once `max + 1` bytes have come, so that
/// neither a `model.sig` linked to `/dev/zero` nor a FIFO in its place can hang the loader or
/// fill its memory.
fn read_regular(path: &Path, max: u64) -> Result<Vec<u8>, GatewayError> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = std::fs::OpenOptions::new()
        .read(true)
        // Opening a FIFO would wait for a writer; with O_NONBLOCK it does not (and a regular
        // file's reads ignore the flag).
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => GatewayError::Model(format!(
                "{} is a symbolic link; a model folder's files must be regular files",
                path.display()
            )),
            _ => GatewayError::io(path, e),
        })?;
    let meta = file.metadata().map_err(|e| GatewayError::io(path, e))?;
    if !meta.is_file() {
        return Err(GatewayError::Model(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    let too_big =
        || GatewayError::Model(format!("{} is over the {max}-byte limit", path.display()));
    if meta.len() > max {
        return Err(too_big());
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| GatewayError::io(path, e))?;
    if bytes.len() as u64 > max {
        return Err(too_big());
    }
    Ok(bytes)
}

/// Reads `path` once and scans it; admits it only if the scan is clean and covers these bytes.
pub fn admit(path: &Path) -> Result<Admitted, GatewayError> {
    let bytes = read_regular(path, MAX_MODEL_BYTES)?;
    let sha256 = hexfmt::sha256(&bytes);
    // The bytes read above are scanned, not the path: a file replaced between two opens (the
    // scanner's and its hasher's, for large files) could otherwise be scanned as one file and
    // hashed as another.
    let report = palisade_scan::scan_slice(path, &bytes, &palisade_scan::ScanOptions::default());
    let clean = report.clean().ok_or_else(|| {
        GatewayError::Model(format!(
            "{} did not scan clean; run `palisade scan {}` for the findings",
            path.display(),
            path.display()
        ))
    })?;
    // Clean is not enough: the file must be what the runtime will parse, an ONNX model (a
    // clean text or pickle file named model.onnx is refused here, not by the runtime).
    if let Some(f) = report
        .files
        .iter()
        .find(|f| f.format != palisade_scan::Format::Onnx)
    {
        return Err(GatewayError::Model(format!(
            "{} is not an ONNX model (scanned as {:?})",
            path.display(),
            f.format
        )));
    }
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
    // Refused before the file is loaded, in the words the repository would refuse it with.
    if name == crate::oip::route::STATISTICS {
        let reserved = crate::model::RepositoryError::Reserved(name.into());
        return Err(GatewayError::Model(format!(
            "{reserved}; rename its folder"
        )));
    }
    let loaded = runtime
        .load(&admitted.path, &admitted.bytes)
        .map_err(|e| GatewayError::Model(format!("{}: {e}", admitted.path.display())))?;
    if let Some(budget) = policy.limits.daily_budget
        && policy.input.max_batch > 1
        && policy.limits.count == crate::policy::Count::Requests
    {
        tracing::warn!(
            model = name,
            version,
            daily_budget = budget,
            max_batch = policy.input.max_batch,
            "the daily budget counts requests (limits.count), a batch once: a key may run up to \
             max_batch times its budget in samples a day"
        );
    }
    Ok(ServedModel {
        name: name.to_string(),
        version: version.to_string(),
        classifier: loaded.classifier,
        policy,
        input_name: loaded.input_name,
        output_name: loaded.output_name,
        platform: loaded.platform,
        stats: Default::default(),
    })
}

/// Which signatures a version must carry to be loaded.
#[derive(Clone)]
pub enum Trust {
    /// `model.sig` must verify against this key and cover the model and its policy, and name
    /// the version (`<model>/<version>`, or the version alone; the latter is logged, since it
    /// verifies for a copy of the folder under any model's name).
    Key(Arc<palisade_supply::keys::PublicKey>),
    /// As [`Trust::Key`], and the signature must name the model too (`<model>/<version>`,
    /// `palisade sign --name`): a folder signed for one model does not load under another.
    KeyNamed(Arc<palisade_supply::keys::PublicKey>),
    /// No signature is required (development only: every load says so in the log).
    Unsigned,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Trust::Key(k) => write!(f, "Trust::Key({})", k.hint()),
            Trust::KeyNamed(k) => write!(f, "Trust::KeyNamed({})", k.hint()),
            Trust::Unsigned => f.write_str("Trust::Unsigned"),
        }
    }
}

/// The signature file in a version folder.
pub const SIGNATURE_FILE: &str = "model.sig";

/// Largest signature bundle read.
const MAX_SIGNATURE_BYTES: u64 = 1 << 20;

/// What a verified signature says about a version folder's files.
#[derive(Debug)]
struct SignedFiles {
    hash: palisade_supply::hashing::HashAlgorithm,
    digests: std::collections::BTreeMap<String, String>,
}

impl SignedFiles {
    /// Checks that `bytes` are what was signed as `name`; an error when they differ or when
    /// `name` was not signed at all.
    fn check(&self, dir: &Path, name: &str, bytes: &[u8]) -> Result<(), GatewayError> {
        let signed = self.digests.get(name).ok_or_else(|| {
            GatewayError::Model(format!(
                "{}: {name} is not covered by {SIGNATURE_FILE}",
                dir.display()
            ))
        })?;
        let mut h = palisade_supply::hashing::Hasher::new(self.hash);
        h.update(bytes);
        if hexfmt::encode(&h.finalize()) != *signed {
            return Err(GatewayError::Model(format!(
                "{}: {name} changed after its signature was verified",
                dir.display()
            )));
        }
        Ok(())
    }
}

/// Verifies the signature of the version folder `dir` of `model` `version` under `key`. The
/// statement must name what it is found as: `<model>/<version>` (`palisade sign --name`), which
/// binds it to both, or the version folder's own name (what model-signing and a plain `palisade
/// sign` write), which binds it to the version; a folder signed as another is refused, so that
/// one that could write to the repository but not sign cannot copy an old version over a newer
/// number, nor (with the two-part name) a model under another model's name (2026-12-06 review).
fn verify_signature(
    dir: &Path,
    key: &palisade_supply::keys::PublicKey,
    (model, version): (&str, &str),
    named: bool,
) -> Result<SignedFiles, GatewayError> {
    let sig = dir.join(SIGNATURE_FILE);
    if let Err(e) = std::fs::symlink_metadata(&sig) {
        return Err(GatewayError::Model(format!(
            "{}: no signature ({e}); sign the folder with `palisade sign {} --signature {}`",
            dir.display(),
            dir.display(),
            sig.display()
        )));
    }
    let bundle = read_regular(&sig, MAX_SIGNATURE_BYTES)?;
    let opts = palisade_supply::oms::VerifyOptions {
        signature_path: Some(sig.clone()),
        ..Default::default()
    };
    let verified = palisade_supply::oms::verify_model(dir, &bundle, key, &opts, None)
        .map_err(|e| GatewayError::Model(format!("{}: signature: {e}", dir.display())))?;
    let m = verified.manifest();
    let bound = format!("{model}/{version}");
    if m.subject_name == version && m.subject_name != bound {
        if named {
            return Err(GatewayError::Model(format!(
                "{}: the signature names only version '{version}', and this gateway requires \
                 the model's name too; re-sign it as {bound} (`palisade sign --name {bound}`)",
                sig.display()
            )));
        }
        tracing::warn!(
            model,
            version,
            "the signature names only the version: a copy of the folder under another model's \
             name would verify too (sign with --name {bound}; serve --require-signed-names \
             refuses such signatures)"
        );
    } else if m.subject_name != bound {
        return Err(GatewayError::Model(format!(
            "{}: the signature is for '{}', not for {bound}; sign each version folder as \
             itself (`palisade sign --name {bound}`)",
            sig.display(),
            m.subject_name
        )));
    }
    if m.serialization != palisade_supply::manifest::Serialization::Files {
        return Err(GatewayError::Model(format!(
            "{}: sign model folders with the `files` serialisation",
            sig.display()
        )));
    }
    Ok(SignedFiles {
        hash: m.hash,
        digests: m.resources.clone(),
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

/// Where the admin API loads new versions from: a repository folder, the runtime and the trust
/// policy, the same checks as at start.
#[derive(Clone)]
pub struct ModelSource {
    /// The repository folder (`<repo>/<model>/<version>/`).
    pub repo: PathBuf,
    /// The runtime.
    pub runtime: Arc<dyn Runtime>,
    /// Which signatures are required.
    pub trust: Trust,
}

impl std::fmt::Debug for ModelSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelSource")
            .field("repo", &self.repo)
            .field("trust", &self.trust)
            .finish_non_exhaustive()
    }
}

impl ModelSource {
    /// Loads `<repo>/<name>/<version>` through every check.
    pub fn load(&self, name: &str, version: &str) -> Result<ServedModel, GatewayError> {
        let v = find_version(&self.repo, name, version)?;
        load_dir(&v, self.runtime.as_ref(), &self.trust)
    }
}

/// Largest policy file read.
const MAX_POLICY_BYTES: u64 = 1 << 20;

/// Loads one version folder (`model.onnx`, optional `policy.toml`, `model.sig` under
/// [`Trust::Key`]) through the checks.
pub fn load_dir(
    v: &VersionDir,
    runtime: &dyn Runtime,
    trust: &Trust,
) -> Result<ServedModel, GatewayError> {
    let signed = match trust {
        Trust::Key(key) => Some(verify_signature(&v.dir, key, (&v.name, &v.version), false)?),
        Trust::KeyNamed(key) => Some(verify_signature(&v.dir, key, (&v.name, &v.version), true)?),
        Trust::Unsigned => {
            tracing::warn!(model = %v.name, version = %v.version, "loading without a signature check");
            None
        }
    };
    let policy = read_policy(&v.dir, signed.as_ref())?;
    let admitted = admit(&v.dir.join("model.onnx"))?;
    if let Some(s) = &signed {
        s.check(&v.dir, "model.onnx", &admitted.bytes)?;
    }
    load_version(&v.name, &v.version, admitted, policy, runtime)
}

/// The policy of the version folder `dir`: its `policy.toml`, checked against the signature when
/// there is one, or the default policy when the folder has none and none was signed.
fn read_policy(dir: &Path, signed: Option<&SignedFiles>) -> Result<Policy, GatewayError> {
    let policy_path = dir.join("policy.toml");
    Ok(if policy_path.is_file() {
        let bytes = read_regular(&policy_path, MAX_POLICY_BYTES)?;
        if let Some(s) = signed {
            s.check(dir, "policy.toml", &bytes)?;
        }
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| GatewayError::Model(format!("{} is not UTF-8", policy_path.display())))?;
        Policy::from_toml(text)
            .map_err(|e| GatewayError::Model(format!("{}: {e}", policy_path.display())))?
    } else if signed.is_some_and(|s| s.digests.contains_key("policy.toml")) {
        // Signed with a policy that is gone now (deleted after the signature was checked, or
        // since): serving under the default policy would drop every limit it set.
        return Err(GatewayError::Model(format!(
            "{}: policy.toml is covered by {SIGNATURE_FILE} but missing",
            dir.display()
        )));
    } else {
        Policy::default()
    })
}

/// One entry of Triton's repository index (`POST /v2/repository/index`, gRPC
/// `RepositoryIndex`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IndexEntry {
    /// Model name.
    pub name: String,
    /// Version.
    pub version: String,
    /// `READY` (served) or `UNAVAILABLE` (in the repository folder, not served).
    pub state: String,
    /// Why a version is unavailable: `rolled back`, `unloaded`, `kept down` (by a load of
    /// another version after an unload) or `not loaded`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// Triton's repository index, of the models `may_see` lets through: every version served
/// (`READY`), then, when the gateway loads from the folder `repo`, the versions in it that are not
/// served (`UNAVAILABLE`: `rolled back` if a rollback took it down, `unloaded` if an unload took
/// its model down, `kept down` if a load of another version after an unload did, else `not
/// loaded`), unless
/// `ready_only`. By name, then version as the repository orders them. Reads the folder: call it
/// off the async workers.
pub fn repository_index(
    models: &ModelRepository,
    repo: Option<&Path>,
    withdrawn: Option<&Withdrawn>,
    may_see: impl Fn(&str) -> bool,
    ready_only: bool,
) -> Result<Vec<IndexEntry>, GatewayError> {
    let entry = |name: &str, version: &str, reason: &str| IndexEntry {
        name: name.into(),
        version: version.into(),
        state: if reason.is_empty() {
            "READY"
        } else {
            "UNAVAILABLE"
        }
        .into(),
        reason: reason.into(),
    };
    let mut out: Vec<IndexEntry> = Vec::new();
    for name in models.names().iter().filter(|n| may_see(n)) {
        out.extend(models.versions(name).iter().map(|v| entry(name, v, "")));
    }
    if let (Some(repo), false) = (repo, ready_only) {
        for v in list_repository(repo)? {
            if !may_see(&v.name) || models.get(&v.name, Some(&v.version)).is_some() {
                continue;
            }
            let why = if withdrawn.is_some_and(|w| w.rolled_back(&v.name, &v.version)) {
                "rolled back"
            } else if withdrawn.is_some_and(|w| w.unloaded(&v.name)) {
                "unloaded"
            } else if withdrawn.is_some_and(|w| w.contains(&v.name, &v.version)) {
                "kept down"
            } else {
                "not loaded"
            };
            out.push(entry(&v.name, &v.version, why));
        }
    }
    out.sort_by(|a, b| (&a.name, version_key(&a.version)).cmp(&(&b.name, version_key(&b.version))));
    Ok(out)
}

/// The versions of model `name` in the repository folder `repo`, in the repository's order.
pub fn versions(repo: &Path, name: &str) -> Result<Vec<String>, GatewayError> {
    Ok(list_repository(repo)?
        .into_iter()
        .filter(|v| v.name == name)
        .map(|v| v.version)
        .collect())
}

/// The [`versions`] of model `name` in `repo`, and the highest of them neither rolled back nor
/// kept down ([`Withdrawn::contains`]: what Triton's load serves), if any.
pub fn highest_version(
    repo: &Path,
    name: &str,
    withdrawn: Option<&Withdrawn>,
) -> Result<(Vec<String>, Option<String>), GatewayError> {
    let versions = versions(repo, name)?;
    let highest = versions
        .iter()
        .rev()
        .find(|v| !withdrawn.is_some_and(|w| w.contains(name, v)))
        .cloned();
    Ok((versions, highest))
}

/// Finds version `version` of model `name` in a repository folder.
pub fn find_version(repo: &Path, name: &str, version: &str) -> Result<VersionDir, GatewayError> {
    if !valid_name(name) || !valid_name(version) {
        return Err(GatewayError::Model(format!(
            "'{name}'/'{version}': names are 1 to 64 of [A-Za-z0-9_.-]"
        )));
    }
    let dir = repo.join(name).join(version);
    if !dir.join("model.onnx").is_file() {
        // Said relative to the repository folder: the answer goes to an API caller.
        return Err(GatewayError::Model(format!(
            "the repository folder has no {name}/{version}/model.onnx"
        )));
    }
    Ok(VersionDir {
        name: name.to_string(),
        version: version.to_string(),
        dir,
    })
}

/// Loads every version of a repository into `models` (the last version of each model becomes
/// the active one), but the models `withdrawn` notes as unloaded and the versions it notes as
/// rolled back. Stops at the first version that fails its checks.
pub fn load_repository(
    repo: &Path,
    runtime: &dyn Runtime,
    trust: &Trust,
    models: &ModelRepository,
    withdrawn: Option<&Withdrawn>,
) -> Result<Vec<(String, String)>, GatewayError> {
    let mut loaded = Vec::new();
    for v in list_repository(repo)? {
        if withdrawn.is_some_and(|w| w.unloaded(&v.name)) {
            tracing::info!(model = %v.name, version = %v.version, "not loaded: its model was unloaded");
            continue;
        }
        if withdrawn.is_some_and(|w| w.contains(&v.name, &v.version)) {
            let why = if withdrawn.is_some_and(|w| w.rolled_back(&v.name, &v.version)) {
                "rolled back"
            } else {
                "kept down by a load of another version"
            };
            tracing::info!(model = %v.name, version = %v.version, "not loaded: {why}");
            continue;
        }
        let m = load_dir(&v, runtime, trust)?;
        models
            .deploy(m)
            .map_err(|e| GatewayError::Model(e.to_string()))?;
        loaded.push((v.name, v.version));
    }
    Ok(loaded)
}

/// Whether a gateway serving `models`, with the notes `withdrawn`, is ready (`/v2/health/ready`,
/// gRPC `ServerReady`): when it serves a model, or serves none because models were unloaded
/// (so that a load balancer keeps sending it the load that serves one again; Triton is ready
/// with no model loaded too).
pub fn ready(models: &ModelRepository, withdrawn: Option<&Withdrawn>) -> bool {
    !models.names().is_empty() || withdrawn.is_some_and(Withdrawn::any_unloaded)
}

/// The versions rolled back and the models unloaded through the admin API, kept in the state
/// folder (`rolled-back.json`, written atomically on each change), so that a restart does not
/// serve a version a rollback took down (every version folder of the repository was loaded, the
/// highest active, 2026-12-06 review), nor a model an unload took down. Loading a version again
/// takes it off; loading an unloaded model keeps its other versions in the folder down
/// ([`Withdrawn::loaded`]).
///
/// The file is a list of `[model, version]` pairs while no model is unloaded or version kept
/// down (what gateways
/// before the unload wrote, and read), else `{"rolled_back": [[model, version], …],
/// "unloaded": [model, …], "kept_down": [[model, version], …]}`.
#[derive(Debug)]
pub struct Withdrawn {
    path: PathBuf,
    state: std::sync::Mutex<Kept>,
    /// Held by a load, an unload or a rollback from reading what is served to its note and its
    /// swap: see [`Withdrawn::swapping`].
    swaps: std::sync::Mutex<()>,
}

/// What [`Withdrawn`] keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Kept {
    rolled_back: std::collections::BTreeSet<(String, String)>,
    #[serde(default)]
    unloaded: std::collections::BTreeSet<String>,
    /// The versions a load of an unloaded model kept down (its other folder versions).
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    kept_down: std::collections::BTreeSet<(String, String)>,
}

impl Kept {
    fn parse(bytes: &[u8]) -> Result<Kept, serde_json::Error> {
        // The list form (what gateways before unloads wrote) or the object, by its first byte,
        // so that an error is the one of the form the file has.
        if bytes.trim_ascii_start().starts_with(b"[") {
            let list: Vec<(String, String)> = serde_json::from_slice(bytes)?;
            return Ok(Kept {
                rolled_back: list.into_iter().collect(),
                ..Default::default()
            });
        }
        serde_json::from_slice(bytes)
    }

    fn to_bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        if self.unloaded.is_empty() && self.kept_down.is_empty() {
            serde_json::to_vec_pretty(&self.rolled_back)
        } else {
            serde_json::to_vec_pretty(self)
        }
    }
}

impl Withdrawn {
    /// The set kept at `path` (empty when there is no such file yet). A file that cannot be read
    /// or parsed is an error: loading every version instead would undo the rollbacks.
    pub fn open(path: &Path) -> Result<Self, GatewayError> {
        let state = match std::fs::read(path) {
            Ok(bytes) => Kept::parse(&bytes).map_err(|e| {
                GatewayError::State(format!(
                    "{} is not a list of rolled-back versions and unloaded models: {e}",
                    path.display()
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Kept::default(),
            Err(e) => return Err(GatewayError::io(path, e)),
        };
        Ok(Withdrawn {
            path: path.to_path_buf(),
            state: std::sync::Mutex::new(state),
            swaps: Default::default(),
        })
    }

    /// Held for the whole of a load, an unload or a rollback (what is served read, the note
    /// written, the swap made), so that two do not interleave: of two rollbacks at once, the one
    /// that found the version moved took it off the notes again after the other had taken it
    /// down, and a restart served the version rolled back (review, 2026-12-06).
    pub fn swapping(&self) -> std::sync::MutexGuard<'_, ()> {
        // Guards no data: a panic while held breaks nothing.
        self.swaps.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `model` `version` is kept down: rolled back, or kept down by a load of another
    /// version of its model after an unload ([`Withdrawn::loaded`]).
    pub fn contains(&self, model: &str, version: &str) -> bool {
        let entry = (model.to_string(), version.to_string());
        let k = self.lock();
        k.rolled_back.contains(&entry) || k.kept_down.contains(&entry)
    }

    /// Whether `model` `version` was rolled back (rather than kept down by a load).
    pub fn rolled_back(&self, model: &str, version: &str) -> bool {
        self.lock()
            .rolled_back
            .contains(&(model.to_string(), version.to_string()))
    }

    /// Whether `model` was unloaded (and not loaded since).
    pub fn unloaded(&self, model: &str) -> bool {
        self.lock().unloaded.contains(model)
    }

    /// Whether any model is kept unloaded.
    pub fn any_unloaded(&self) -> bool {
        !self.lock().unloaded.is_empty()
    }

    /// Notes `model` `version` as rolled back (`true`) or not (`false`), on disk before it
    /// returns; on an error the notes are as they were. A load notes with [`Withdrawn::loaded`].
    pub fn set(&self, model: &str, version: &str, rolled_back: bool) -> Result<(), GatewayError> {
        self.change(|k| {
            let entry = (model.to_string(), version.to_string());
            if rolled_back {
                k.rolled_back.insert(entry);
            } else {
                k.rolled_back.remove(&entry);
            }
        })
    }

    /// Notes `model` `version` as loaded: off the rolled-back and kept-down versions, and, if its
    /// model was unloaded, its model off the unloaded ones and its `others` (the model's other
    /// versions in the repository folder) kept down, so that a restart serves what is served
    /// then, this version alone, not every version the unload took down. One write, on disk
    /// before it returns; on an error the notes are as they were.
    pub fn loaded(
        &self,
        model: &str,
        version: &str,
        others: &[String],
    ) -> Result<(), GatewayError> {
        self.change(|k| {
            let entry = (model.to_string(), version.to_string());
            k.rolled_back.remove(&entry);
            k.kept_down.remove(&entry);
            if k.unloaded.remove(model) {
                for v in others.iter().filter(|v| *v != version) {
                    let other = (model.to_string(), v.clone());
                    if !k.rolled_back.contains(&other) {
                        k.kept_down.insert(other);
                    }
                }
            }
        })
    }

    /// Notes `model` as unloaded (`true`) or loaded again (`false`), on disk before it returns;
    /// on an error the notes are as they were.
    pub fn set_unloaded(&self, model: &str, unloaded: bool) -> Result<(), GatewayError> {
        self.change(|k| {
            if unloaded {
                k.unloaded.insert(model.to_string());
            } else {
                k.unloaded.remove(model);
            }
        })
    }

    fn change(&self, f: impl FnOnce(&mut Kept)) -> Result<(), GatewayError> {
        let mut kept = self.lock();
        let mut next = kept.clone();
        f(&mut next);
        if next == *kept {
            return Ok(());
        }
        let bytes = next
            .to_bytes()
            .map_err(|e| GatewayError::State(e.to_string()))?;
        palisade_supply::atomic::write_atomic(&self.path, &bytes)
            .map_err(|e| GatewayError::State(format!("{}: {e}", self.path.display())))?;
        *kept = next;
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
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

    fn sign(dir: &Path, key: &palisade_supply::keys::SigningKey) {
        sign_as(dir, key, None);
    }

    fn sign_as(dir: &Path, key: &palisade_supply::keys::SigningKey, name: Option<&str>) {
        let sig = dir.join(SIGNATURE_FILE);
        let opts = palisade_supply::oms::SignOptions {
            signature_path: Some(sig.clone()),
            subject_name: name.map(str::to_string),
            ..Default::default()
        };
        let signed = palisade_supply::oms::sign_model(dir, key, &opts, None).unwrap();
        std::fs::write(sig, signed.bundle).unwrap();
    }

    #[test]
    fn only_a_version_signed_by_the_trusted_key_loads() {
        use palisade_supply::keys::{Curve, SigningKey};
        let repo = tempfile::tempdir().unwrap();
        let dir = repo.path().join("m/1");
        std::fs::create_dir_all(&dir).unwrap();
        let bundled =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/mnist_cnn_public.onnx");
        std::fs::copy(&bundled, dir.join("model.onnx")).unwrap();
        std::fs::write(dir.join("policy.toml"), "[input]\nmax_batch = 8\n").unwrap();
        let key = SigningKey::generate(Curve::P256);
        let trust = Trust::Key(Arc::new(key.public_key()));
        let v = find_version(repo.path(), "m", "1").unwrap();

        // No signature: refused, and the error says how to sign.
        let err = load_dir(&v, &Fake, &trust).unwrap_err().to_string();
        assert!(err.contains("no signature"), "{err}");

        sign(&dir, &key);
        let m = load_dir(&v, &Fake, &trust).unwrap();
        assert_eq!(m.policy.input.max_batch, 8);

        // Signed by another key: refused.
        let other = Trust::Key(Arc::new(SigningKey::generate(Curve::P256).public_key()));
        let err = load_dir(&v, &Fake, &other).unwrap_err().to_string();
        assert!(err.contains("signature"), "{err}");

        // The policy is covered too: loosening it without re-signing is refused.
        std::fs::write(dir.join("policy.toml"), "[input]\nmax_batch = 4096\n").unwrap();
        assert!(load_dir(&v, &Fake, &trust).is_err());
        std::fs::write(dir.join("policy.toml"), "[input]\nmax_batch = 8\n").unwrap();
        assert!(load_dir(&v, &Fake, &trust).is_ok());

        // An extra unsigned file is refused (it might be read by something later).
        std::fs::write(dir.join("extra.bin"), b"x").unwrap();
        assert!(load_dir(&v, &Fake, &trust).is_err());
        std::fs::remove_file(dir.join("extra.bin")).unwrap();

        // Through a ModelSource, as the admin API loads.
        let source = ModelSource {
            repo: repo.path().to_path_buf(),
            runtime: Arc::new(Fake),
            trust: trust.clone(),
        };
        assert!(source.load("m", "1").is_ok());
        assert!(source.load("m", "2").is_err());
        assert!(source.load("../m", "1").is_err());
    }

    /// `GET /v2/models/stats` is every model's statistics, so a model called `stats` could not
    /// be asked for its metadata: it is refused with the reason, signed or not.
    #[test]
    fn a_model_called_stats_is_refused_with_the_reason() {
        use palisade_supply::keys::{Curve, SigningKey};
        let repo = tempfile::tempdir().unwrap();
        let dir = repo.path().join("stats/1");
        std::fs::create_dir_all(&dir).unwrap();
        let bundled =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/mnist_cnn_public.onnx");
        std::fs::copy(&bundled, dir.join("model.onnx")).unwrap();
        let key = SigningKey::generate(Curve::P256);
        sign(&dir, &key);
        let trust = Trust::Key(Arc::new(key.public_key()));
        let v = find_version(repo.path(), "stats", "1").unwrap();
        let err = load_dir(&v, &Fake, &trust).unwrap_err().to_string();
        assert!(err.contains("no model may be called 'stats'"), "{err}");
        let models = ModelRepository::default();
        let err = load_repository(repo.path(), &Fake, &trust, &models, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("statistics"), "{err}");
        assert!(models.names().is_empty());
        // Any other name loads from the same bytes.
        std::fs::rename(repo.path().join("stats"), repo.path().join("statistics")).unwrap();
        let dir = repo.path().join("statistics/1");
        std::fs::remove_file(dir.join(SIGNATURE_FILE)).unwrap();
        sign(&dir, &key);
        let v = find_version(repo.path(), "statistics", "1").unwrap();
        assert!(load_dir(&v, &Fake, &trust).is_ok());
    }

    #[test]
    fn rollbacks_are_kept_on_disk_and_a_broken_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rolled-back.json");
        let w = Withdrawn::open(&path).unwrap();
        assert!(!w.contains("m", "2"));
        w.set("m", "2", true).unwrap();
        w.set("m", "3", true).unwrap();
        w.set("m", "3", false).unwrap();
        let again = Withdrawn::open(&path).unwrap();
        assert!(again.contains("m", "2") && !again.contains("m", "3"));
        // Unreadable: an error, never an empty set (which would serve what was rolled back).
        std::fs::write(&path, b"{not json").unwrap();
        let err = Withdrawn::open(&path).unwrap_err().to_string();
        assert!(err.contains("rolled-back versions"), "{err}");
        // A failed write leaves the set as it was.
        let gone = Withdrawn::open(&dir.path().join("no/such/dir/rolled-back.json")).unwrap();
        assert!(gone.set("m", "4", true).is_err());
        assert!(!gone.contains("m", "4"));
    }

    /// Unloads are kept beside the rollbacks; a file with no unload stays in the list form older
    /// gateways read; loading a version again loads its model again.
    #[test]
    fn unloads_are_kept_on_disk_beside_rollbacks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rolled-back.json");
        let w = Withdrawn::open(&path).unwrap();
        w.set("m", "2", true).unwrap();
        let list: Vec<(String, String)> =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(list, [("m".to_string(), "2".to_string())]);
        w.set_unloaded("m", true).unwrap();
        w.set_unloaded("n", true).unwrap();
        let again = Withdrawn::open(&path).unwrap();
        assert!(again.unloaded("m") && again.unloaded("n") && again.contains("m", "2"));
        assert!(!again.unloaded("o") && again.any_unloaded());
        // Version 3 of m loaded: m is loaded again, with 3 alone: its other versions in the
        // folder are kept down, the one rolled back before too.
        let folder = ["1", "2", "3"].map(String::from);
        again.loaded("m", "3", &folder).unwrap();
        let third = Withdrawn::open(&path).unwrap();
        assert!(!third.unloaded("m") && third.unloaded("n"));
        assert!(third.contains("m", "1") && third.contains("m", "2") && !third.contains("m", "3"));
        // 1 is kept down by the load, 2 still rolled back.
        assert!(!third.rolled_back("m", "1") && third.rolled_back("m", "2"));
        // Loaded while not unloaded: only its own note goes.
        third.loaded("m", "1", &folder).unwrap();
        assert!(!third.contains("m", "1") && third.contains("m", "2"));
        third.set_unloaded("n", false).unwrap();
        let list: Vec<(String, String)> =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(list, [("m".to_string(), "2".to_string())]);
        // A file with fields it does not know is refused, not read as empty.
        std::fs::write(&path, br#"{"rolled_back": [], "unloaded": [], "x": 1}"#).unwrap();
        let err = Withdrawn::open(&path).unwrap_err().to_string();
        assert!(err.contains("unknown field `x`"), "{err}");
    }

    /// Triton's load picks the highest version, in the repository's order, not kept down.
    #[test]
    fn the_highest_version_not_rolled_back_is_picked() {
        let repo = tempfile::tempdir().unwrap();
        for (m, v) in [("m", "1"), ("m", "2"), ("m", "10"), ("n", "3")] {
            let dir = repo.path().join(m).join(v);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("model.onnx"), b"x").unwrap();
        }
        let w = Withdrawn::open(&repo.path().join("rolled-back.json")).unwrap();
        let (versions, highest) = highest_version(repo.path(), "m", Some(&w)).unwrap();
        assert_eq!(
            (versions, highest.as_deref()),
            (["1", "2", "10"].map(String::from).to_vec(), Some("10"))
        );
        w.set("m", "10", true).unwrap();
        assert_eq!(
            highest_version(repo.path(), "m", Some(&w))
                .unwrap()
                .1
                .as_deref(),
            Some("2")
        );
        assert_eq!(
            highest_version(repo.path(), "m", None)
                .unwrap()
                .1
                .as_deref(),
            Some("10")
        );
        let (none, nothing) = highest_version(repo.path(), "o", Some(&w)).unwrap();
        assert!(none.is_empty() && nothing.is_none());
    }

    /// Ready when a model is served, or when none is because models were unloaded.
    #[test]
    fn ready_with_a_model_or_with_none_after_an_unload() {
        let dir = tempfile::tempdir().unwrap();
        let w = Withdrawn::open(&dir.path().join("rolled-back.json")).unwrap();
        let models = ModelRepository::new();
        assert!(!ready(&models, None) && !ready(&models, Some(&w)));
        w.set("m", "1", true).unwrap();
        assert!(!ready(&models, Some(&w)), "a rollback is no unload");
        w.set_unloaded("m", true).unwrap();
        assert!(ready(&models, Some(&w)));
    }

    #[test]
    fn a_signed_folder_copied_under_another_version_or_model_is_refused() {
        use palisade_supply::keys::{Curve, SigningKey};
        let repo = tempfile::tempdir().unwrap();
        let key = SigningKey::generate(Curve::P256);
        let trust = Trust::Key(Arc::new(key.public_key()));
        let bundled =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/mnist_cnn_public.onnx");
        let make = |model: &str, version: &str, name: Option<&str>| {
            let dir = repo.path().join(model).join(version);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::copy(&bundled, dir.join("model.onnx")).unwrap();
            sign_as(&dir, &key, name);
            dir
        };
        let copy = |from: &Path, model: &str, version: &str| {
            let to = repo.path().join(model).join(version);
            std::fs::create_dir_all(&to).unwrap();
            for f in ["model.onnx", SIGNATURE_FILE] {
                std::fs::copy(from.join(f), to.join(f)).unwrap();
            }
            load_dir(
                &find_version(repo.path(), model, version).unwrap(),
                &Fake,
                &trust,
            )
        };
        // Signed as its folder ("1"): bound to its version.
        let plain = make("m", "1", None);
        assert!(load_dir(&find_version(repo.path(), "m", "1").unwrap(), &Fake, &trust).is_ok());
        let err = copy(&plain, "m", "999").unwrap_err().to_string();
        assert!(
            err.contains("the signature is for '1', not for m/999"),
            "{err}"
        );
        // Signed as model/version: bound to both.
        let bound = make("open", "2", Some("open/2"));
        assert!(
            load_dir(
                &find_version(repo.path(), "open", "2").unwrap(),
                &Fake,
                &trust
            )
            .is_ok()
        );
        let err = copy(&bound, "strict", "2").unwrap_err().to_string();
        assert!(err.contains("not for strict/2"), "{err}");
        // Any other name is refused where it stands.
        make("x", "3", Some("something-else"));
        assert!(load_dir(&find_version(repo.path(), "x", "3").unwrap(), &Fake, &trust).is_err());
        // Requiring the model's name: the version alone no longer verifies, model/version does.
        let named = Trust::KeyNamed(Arc::new(key.public_key()));
        let err = load_dir(&find_version(repo.path(), "m", "1").unwrap(), &Fake, &named)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("names only version '1'") && err.contains("--name m/1"),
            "{err}"
        );
        let load = |m, v| load_dir(&find_version(repo.path(), m, v).unwrap(), &Fake, &named);
        assert!(load("open", "2").is_ok());
        assert!(load("strict", "2").is_err());
    }

    #[test]
    fn a_signature_that_is_not_a_regular_file_is_refused_without_being_read() {
        use palisade_supply::keys::{Curve, SigningKey};
        let repo = tempfile::tempdir().unwrap();
        let dir = repo.path().join("m/1");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("model.onnx"), b"not read here").unwrap();
        let key = SigningKey::generate(Curve::P256);
        let sig = dir.join(SIGNATURE_FILE);
        // A FIFO would hang a plain read (no writer ever comes); a link to /dev/zero would fill
        // memory. Both are refused at once.
        let made = std::process::Command::new("mkfifo").arg(&sig).status();
        assert!(made.unwrap().success());
        let err = verify_signature(&dir, &key.public_key(), ("m", "1"), false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a regular file"), "{err}");
        std::fs::remove_file(&sig).unwrap();
        std::os::unix::fs::symlink("/dev/zero", &sig).unwrap();
        let err = verify_signature(&dir, &key.public_key(), ("m", "1"), false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("symbolic link"), "{err}");
        // A regular file past the limit is refused before it is read.
        std::fs::remove_file(&sig).unwrap();
        std::fs::write(&sig, vec![b'{'; MAX_SIGNATURE_BYTES as usize + 1]).unwrap();
        let err = verify_signature(&dir, &key.public_key(), ("m", "1"), false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("-byte limit"), "{err}");
    }

    #[test]
    fn a_signed_policy_that_goes_missing_after_verification_is_an_error() {
        use palisade_supply::keys::{Curve, SigningKey};
        let repo = tempfile::tempdir().unwrap();
        let dir = repo.path().join("m/1");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("model.onnx"), b"not read here").unwrap();
        std::fs::write(dir.join("policy.toml"), "[input]\nmax_batch = 8\n").unwrap();
        let key = SigningKey::generate(Curve::P256);
        sign(&dir, &key);
        let signed = verify_signature(&dir, &key.public_key(), ("m", "1"), false).unwrap();
        assert_eq!(read_policy(&dir, Some(&signed)).unwrap().input.max_batch, 8);
        // Deleted between the signature check and the read: not the default policy.
        std::fs::remove_file(dir.join("policy.toml")).unwrap();
        let err = read_policy(&dir, Some(&signed)).unwrap_err().to_string();
        assert!(err.contains("policy.toml is covered"), "{err}");
        // A folder signed without a policy, and an unsigned one, get the default.
        std::fs::remove_file(dir.join(SIGNATURE_FILE)).unwrap();
        sign(&dir, &key);
        let signed = verify_signature(&dir, &key.public_key(), ("m", "1"), false).unwrap();
        assert_eq!(read_policy(&dir, Some(&signed)).unwrap(), Policy::default());
        assert_eq!(read_policy(&dir, None).unwrap(), Policy::default());
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
        let err = load_dir(&listed[1], &Fake, &Trust::Unsigned)
            .unwrap_err()
            .to_string();
        assert!(err.contains("did not scan clean"), "{err}");
        let m = load_dir(&listed[0], &Fake, &Trust::Unsigned).unwrap();
        assert_eq!((m.name.as_str(), m.version.as_str()), ("m", "1"));
        // A policy with a typo refuses the version.
        std::fs::write(v1.join("policy.toml"), "[input]\nmax_bach = 1\n").unwrap();
        assert!(load_dir(&listed[0], &Fake, &Trust::Unsigned).is_err());
        // A file that is no model at all is not clean either.
        std::fs::write(v1.join("model.onnx"), b"not a model").unwrap();
        std::fs::remove_file(v1.join("policy.toml")).unwrap();
        assert!(load_dir(&listed[0], &Fake, &Trust::Unsigned).is_err());
    }
}
