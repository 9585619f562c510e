//! Checkpoints: weights as safetensors (PyTorch `state_dict` names and layouts, f32) plus a
//! small JSON file with the architecture, class names, input range and training record.
//!
//! A checkpoint is a directory holding `model.json` and `model.safetensors`; `load` also takes
//! the path of either file. Writes are atomic (temporary file, then rename).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use super::NativeError;
use super::arch::Arch;
use super::model::{NativeMeta, NativeNet, check_params};
use super::net::{HostTensor, TensorMap};

/// The format tag written into every architecture file.
pub const FORMAT: &str = "palisade-native/1";
/// File name of the architecture file inside a checkpoint directory.
pub const ARCH_FILE: &str = "model.json";
/// File name of the weights inside a checkpoint directory.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// Largest architecture file accepted.
const MAX_JSON: u64 = 16 << 20;
/// Largest weights file accepted.
const MAX_WEIGHTS: u64 = 4 << 30;

/// The JSON architecture file of a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchFile {
    /// Always [`FORMAT`].
    pub format: String,
    /// The architecture.
    pub arch: Arch,
    /// Shape of one input sample (redundant with `arch`, for readers that do not know it).
    pub input_shape: Vec<usize>,
    /// Names, input range, training record.
    #[serde(flatten)]
    pub meta: NativeMeta,
    /// The weights file, relative to this file's directory.
    pub weights: String,
}

/// Whether `path` looks like a native checkpoint (a directory with `model.json`, or a
/// `.json`/`.safetensors` file with its sibling).
pub fn is_checkpoint(path: &Path) -> bool {
    resolve(path).is_some_and(|p| p.is_file())
}

/// The architecture file a checkpoint path names.
fn resolve(path: &Path) -> Option<PathBuf> {
    if path.is_dir() {
        return Some(path.join(ARCH_FILE));
    }
    match path.extension().and_then(|e| e.to_str()) {
        Some("json") => Some(path.to_path_buf()),
        Some("safetensors") => Some(path.with_extension("json")),
        _ => None,
    }
}

fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, NativeError> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| NativeError::io(path, e))?;
    let mut buf = Vec::new();
    f.take(max + 1)
        .read_to_end(&mut buf)
        .map_err(|e| NativeError::io(path, e))?;
    if buf.len() as u64 > max {
        return Err(NativeError::checkpoint(
            path,
            format!("larger than {max} bytes"),
        ));
    }
    Ok(buf)
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, then a rename.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), NativeError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(|e| NativeError::io(path, e))
}

/// Serialises named f32 tensors as safetensors.
pub(crate) fn to_safetensors(
    map: &TensorMap,
    metadata: HashMap<String, String>,
) -> Result<Vec<u8>, NativeError> {
    let bytes: Vec<(&String, &HostTensor, Vec<u8>)> = map
        .iter()
        .map(|(name, t)| {
            (
                name,
                t,
                t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(name, t, b)| {
            safetensors::tensor::TensorView::new(Dtype::F32, t.shape.clone(), b)
                .map(|v| ((*name).clone(), v))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| NativeError::Backend(format!("safetensors: {e}")))?;
    safetensors::serialize(views, Some(metadata))
        .map_err(|e| NativeError::Backend(format!("safetensors: {e}")))
}

/// Parses safetensors bytes into named f32 tensors.
pub(crate) fn from_safetensors(path: &Path, bytes: &[u8]) -> Result<TensorMap, NativeError> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| NativeError::checkpoint(path, format!("not a valid safetensors file: {e}")))?;
    let mut map = TensorMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(NativeError::checkpoint(
                path,
                format!(
                    "tensor '{name}' is {:?}, only F32 is supported",
                    view.dtype()
                ),
            ));
        }
        let data: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        map.insert(
            name,
            HostTensor {
                shape: view.shape().to_vec(),
                data,
            },
        );
    }
    Ok(map)
}

impl NativeNet {
    /// Saves the checkpoint into directory `dir` (created if needed): `model.safetensors`, then
    /// `model.json`. Returns the path of the architecture file.
    pub fn save(&self, dir: &Path) -> Result<PathBuf, NativeError> {
        std::fs::create_dir_all(dir).map_err(|e| NativeError::io(dir, e))?;
        let map = self.export()?;
        let mut md = HashMap::new();
        md.insert("format".to_string(), FORMAT.to_string());
        md.insert("arch".to_string(), self.arch().kind().to_string());
        let bytes = to_safetensors(&map, md)?;
        write_atomic(&dir.join(WEIGHTS_FILE), &bytes)?;
        let file = ArchFile {
            format: FORMAT.to_string(),
            arch: self.arch().clone(),
            input_shape: self.arch().input_shape(),
            meta: self.meta().clone(),
            weights: WEIGHTS_FILE.to_string(),
        };
        let json = serde_json::to_vec_pretty(&file)
            .map_err(|e| NativeError::Backend(format!("architecture file: {e}")))?;
        let arch_path = dir.join(ARCH_FILE);
        write_atomic(&arch_path, &json)?;
        Ok(arch_path)
    }

    /// Loads a checkpoint: a directory, or the path of its `.json` or `.safetensors` file.
    /// Every tensor is checked against the architecture (names, shapes, dtype, finiteness).
    pub fn load(path: &Path) -> Result<NativeNet, NativeError> {
        let arch_path = resolve(path).ok_or_else(|| {
            NativeError::checkpoint(
                path,
                "not a native checkpoint (expected a directory with model.json, or a .json or .safetensors file)",
            )
        })?;
        let json = read_bounded(&arch_path, MAX_JSON)?;
        let file: ArchFile = serde_json::from_slice(&json).map_err(|e| {
            NativeError::checkpoint(&arch_path, format!("invalid architecture file: {e}"))
        })?;
        if file.format != FORMAT {
            return Err(NativeError::checkpoint(
                &arch_path,
                format!("format '{}', expected '{FORMAT}'", file.format),
            ));
        }
        if file.input_shape != file.arch.input_shape() {
            return Err(NativeError::checkpoint(
                &arch_path,
                format!(
                    "input_shape {:?} disagrees with the architecture's {:?}",
                    file.input_shape,
                    file.arch.input_shape()
                ),
            ));
        }
        let weights = Path::new(&file.weights);
        if weights.components().count() != 1 || weights.is_absolute() {
            return Err(NativeError::checkpoint(
                &arch_path,
                "the weights file must be a plain file name next to the architecture file",
            ));
        }
        let wpath = arch_path.parent().unwrap_or(Path::new(".")).join(weights);
        let bytes = read_bounded(&wpath, MAX_WEIGHTS)?;
        let map = from_safetensors(&wpath, &bytes)?;
        check_params(&file.arch, &map).map_err(|m| NativeError::checkpoint(&wpath, m))?;
        NativeNet::from_params(file.arch, map, file.meta)
    }
}
