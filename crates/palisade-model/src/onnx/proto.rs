//! Reading ONNX protobufs: bounded file reads, decoding, external data, initializers and
//! attributes.
//!
//! Everything here treats the model as untrusted bytes: sizes are checked before allocation,
//! element counts use checked arithmetic, and external data must live inside the model's
//! directory.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

use prost::Message;
use tract_onnx::pb::{self, tensor_proto::DataType};

use super::OnnxError;

/// The largest file accepted as an ONNX model or external-data file (protobuf's 2 GiB limit for
/// the model; the same bound for one external tensor file).
pub const MAX_FILE_BYTES: u64 = 2 * 1024 * 1024 * 1024;

/// The largest tensor (in elements) accepted from a model.
pub(crate) const MAX_ELEMENTS: usize = 1 << 29;

/// Reads a whole file, refusing anything over `MAX_FILE_BYTES`.
pub(crate) fn read_bounded(path: &Path) -> Result<Vec<u8>, OnnxError> {
    let io = |source| OnnxError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    if size > MAX_FILE_BYTES {
        return Err(OnnxError::TooLarge {
            path: path.to_path_buf(),
            size,
            limit: MAX_FILE_BYTES,
        });
    }
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(MAX_FILE_BYTES)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    Ok(bytes)
}

/// Decodes a `ModelProto` and checks that it has a graph.
pub(crate) fn decode_model(bytes: &[u8]) -> Result<pb::ModelProto, OnnxError> {
    let model = pb::ModelProto::decode(bytes)?;
    match &model.graph {
        Some(g) if !g.node.is_empty() || !g.output.is_empty() => Ok(model),
        _ => Err(OnnxError::Invalid("the model has no graph".into())),
    }
}

/// Whether `bytes` look like an ONNX model: a protobuf that decodes to a `ModelProto` with a
/// graph and an opset import.
pub fn looks_like_onnx(bytes: &[u8]) -> bool {
    decode_model(bytes).is_ok_and(|m| !m.opset_import.is_empty())
}

/// The default-domain opset the model imports (0 when none is declared).
pub(crate) fn opset(model: &pb::ModelProto) -> i64 {
    model
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
        .unwrap_or(0)
}

/// Replaces every external-data reference in the model (initializers and tensor attributes, in
/// subgraphs too) by the bytes it points to, so that later stages never touch the file system.
///
/// A location must be a relative path with no `..` component that resolves (after symlinks)
/// inside `model_dir`; without a model directory (a model given as bytes) external data is
/// refused.
pub(crate) fn inline_external_data(
    model: &mut pb::ModelProto,
    model_dir: Option<&Path>,
) -> Result<(), OnnxError> {
    if let Some(g) = model.graph.as_mut() {
        inline_graph(g, model_dir)?;
    }
    Ok(())
}

fn inline_graph(g: &mut pb::GraphProto, dir: Option<&Path>) -> Result<(), OnnxError> {
    for t in &mut g.initializer {
        inline_tensor(t, dir)?;
    }
    for n in &mut g.node {
        for a in &mut n.attribute {
            if let Some(t) = a.t.as_mut() {
                inline_tensor(t, dir)?;
            }
            for t in &mut a.tensors {
                inline_tensor(t, dir)?;
            }
            if let Some(sg) = a.g.as_mut() {
                inline_graph(sg, dir)?;
            }
            for sg in &mut a.graphs {
                inline_graph(sg, dir)?;
            }
        }
    }
    Ok(())
}

const EXTERNAL: i32 = pb::tensor_proto::DataLocation::External as i32;

fn inline_tensor(t: &mut pb::TensorProto, dir: Option<&Path>) -> Result<(), OnnxError> {
    if t.data_location != Some(EXTERNAL) {
        return Ok(());
    }
    let entries: HashMap<&str, &str> = t
        .external_data
        .iter()
        .map(|e| (e.key.as_str(), e.value.as_str()))
        .collect();
    let location = entries.get("location").copied().unwrap_or("").to_string();
    let refuse = |reason: &str| OnnxError::ExternalData {
        location: location.clone(),
        reason: reason.to_string(),
    };
    let dir = dir.ok_or_else(|| refuse("external data needs the model's directory"))?;
    let path = safe_join(dir, &location).map_err(|r| refuse(&r))?;
    let parse = |key: &str| -> Result<u64, OnnxError> {
        match entries.get(key) {
            None => Ok(0),
            Some(v) => v
                .parse::<u64>()
                .map_err(|_| refuse(&format!("{key} '{v}' is not a number"))),
        }
    };
    let offset = parse("offset")?;
    let io = |source| OnnxError::Io {
        path: path.clone(),
        source,
    };
    let mut file = std::fs::File::open(&path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    let length = match entries.get("length") {
        Some(_) => parse("length")?,
        None => size.saturating_sub(offset),
    };
    let end = offset
        .checked_add(length)
        .filter(|&e| e <= size && length <= MAX_FILE_BYTES)
        .ok_or_else(|| refuse("offset and length run past the end of the file"))?;
    let _ = end;
    file.seek(SeekFrom::Start(offset)).map_err(io)?;
    let mut buf = Vec::with_capacity(length as usize);
    file.take(length).read_to_end(&mut buf).map_err(io)?;
    t.raw_data = buf;
    t.data_location = None;
    t.external_data.clear();
    Ok(())
}

/// `dir/location`, refusing absolute paths, `..`, and anything that resolves outside `dir`.
fn safe_join(dir: &Path, location: &str) -> Result<PathBuf, String> {
    if location.is_empty() {
        return Err("no location".into());
    }
    let rel = Path::new(location);
    for c in rel.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => return Err("'..' is not allowed in a location".into()),
            Component::RootDir | Component::Prefix(_) => {
                return Err("absolute locations are not allowed".into());
            }
        }
    }
    let joined = dir.join(rel);
    let canon_dir = dir
        .canonicalize()
        .map_err(|e| format!("model directory: {e}"))?;
    let canon = joined.canonicalize().map_err(|e| e.to_string())?;
    if !canon.starts_with(&canon_dir) {
        return Err("resolves outside the model directory".into());
    }
    Ok(canon)
}

/// A constant tensor read from the model, on the host.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum HostTensor {
    /// Floating-point data (float, double and half precision become f32).
    F32 {
        /// Dimensions.
        shape: Vec<usize>,
        /// Row-major values.
        data: Vec<f32>,
    },
    /// Integer and boolean data, widened to i64.
    I64 {
        /// Dimensions.
        shape: Vec<usize>,
        /// Row-major values.
        data: Vec<i64>,
    },
}

/// Converts dimensions, refusing negatives and element counts over `MAX_ELEMENTS`.
pub(crate) fn dims_to_shape(dims: &[i64]) -> Result<(Vec<usize>, usize), String> {
    let mut n: usize = 1;
    let mut shape = Vec::with_capacity(dims.len());
    for &d in dims {
        let d = usize::try_from(d).map_err(|_| format!("negative dimension {d}"))?;
        n = n
            .checked_mul(d)
            .filter(|&n| n <= MAX_ELEMENTS)
            .ok_or_else(|| format!("tensor of shape {dims:?} is too large"))?;
        shape.push(d);
    }
    Ok((shape, n))
}

/// Reads a `TensorProto` (external data must have been inlined).
pub(crate) fn read_tensor(t: &pb::TensorProto) -> Result<HostTensor, String> {
    if t.data_location == Some(EXTERNAL) {
        return Err("external data was not resolved".into());
    }
    let (shape, n) = dims_to_shape(&t.dims)?;
    let dt = DataType::try_from(t.data_type).map_err(|_| format!("data type {}", t.data_type))?;
    let raw = &t.raw_data;
    let check = |len: usize| -> Result<(), String> {
        if len != n {
            Err(format!(
                "tensor '{}' has {len} values for shape {shape:?}",
                t.name
            ))
        } else {
            Ok(())
        }
    };
    fn chunks<const K: usize>(raw: &[u8]) -> impl Iterator<Item = [u8; K]> + '_ {
        raw.chunks_exact(K).map(|c| {
            let mut a = [0u8; K];
            a.copy_from_slice(c);
            a
        })
    }
    let raw_len = |k: usize| -> Result<(), String> {
        if Some(raw.len()) != n.checked_mul(k) {
            Err(format!(
                "tensor '{}': {} raw bytes for {n} values of {k} bytes",
                t.name,
                raw.len()
            ))
        } else {
            Ok(())
        }
    };
    let f = |data: Vec<f32>| -> Result<HostTensor, String> {
        check(data.len())?;
        Ok(HostTensor::F32 {
            shape: shape.clone(),
            data,
        })
    };
    let i = |data: Vec<i64>| -> Result<HostTensor, String> {
        check(data.len())?;
        Ok(HostTensor::I64 {
            shape: shape.clone(),
            data,
        })
    };
    let use_raw = !raw.is_empty();
    match dt {
        DataType::Float if use_raw => {
            raw_len(4)?;
            f(chunks::<4>(raw).map(f32::from_le_bytes).collect())
        }
        DataType::Float => f(t.float_data.clone()),
        DataType::Double if use_raw => {
            raw_len(8)?;
            f(chunks::<8>(raw)
                .map(|b| f64::from_le_bytes(b) as f32)
                .collect())
        }
        DataType::Double => f(t.double_data.iter().map(|&v| v as f32).collect()),
        DataType::Float16 if use_raw => {
            raw_len(2)?;
            f(chunks::<2>(raw)
                .map(|b| half_to_f32(u16::from_le_bytes(b)))
                .collect())
        }
        DataType::Float16 => f(t
            .int32_data
            .iter()
            .map(|&v| half_to_f32(v as u16))
            .collect()),
        DataType::Int64 if use_raw => {
            raw_len(8)?;
            i(chunks::<8>(raw).map(i64::from_le_bytes).collect())
        }
        DataType::Int64 => i(t.int64_data.clone()),
        DataType::Int32 if use_raw => {
            raw_len(4)?;
            i(chunks::<4>(raw)
                .map(|b| i32::from_le_bytes(b) as i64)
                .collect())
        }
        DataType::Uint8 | DataType::Bool if use_raw => {
            raw_len(1)?;
            i(raw.iter().map(|&b| b as i64).collect())
        }
        DataType::Int8 if use_raw => {
            raw_len(1)?;
            i(raw.iter().map(|&b| b as i8 as i64).collect())
        }
        DataType::Int32
        | DataType::Int16
        | DataType::Int8
        | DataType::Uint8
        | DataType::Uint16
        | DataType::Bool => i(t.int32_data.iter().map(|&v| v as i64).collect()),
        other => Err(format!(
            "tensor '{}' has unsupported data type {}",
            t.name,
            other.as_str_name()
        )),
    }
}

/// IEEE 754 half precision to f32.
fn half_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0f32 } else { 1.0 };
    let exp = ((h >> 10) & 0x1f) as i32;
    let frac = (h & 0x3ff) as f32;
    match exp {
        0 => sign * frac * 2f32.powi(-24),
        31 if frac == 0.0 => sign * f32::INFINITY,
        31 => f32::NAN,
        e => sign * (1.0 + frac / 1024.0) * 2f32.powi(e - 15),
    }
}

/// A node's attributes, by name.
pub(crate) struct Attrs<'a> {
    map: HashMap<&'a str, &'a pb::AttributeProto>,
    op: &'a str,
    node: &'a str,
}

impl<'a> Attrs<'a> {
    pub(crate) fn new(n: &'a pb::NodeProto, node: &'a str) -> Self {
        Attrs {
            map: n.attribute.iter().map(|a| (a.name.as_str(), a)).collect(),
            op: &n.op_type,
            node,
        }
    }

    fn err(&self, reason: String) -> OnnxError {
        OnnxError::node(self.op, self.node, reason)
    }

    pub(crate) fn has(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    pub(crate) fn int(&self, name: &str, default: i64) -> i64 {
        self.map.get(name).map(|a| a.i).unwrap_or(default)
    }

    pub(crate) fn float(&self, name: &str, default: f32) -> f32 {
        self.map.get(name).map(|a| a.f).unwrap_or(default)
    }

    pub(crate) fn ints(&self, name: &str) -> Option<&'a [i64]> {
        self.map.get(name).map(|a| a.ints.as_slice())
    }

    pub(crate) fn floats(&self, name: &str) -> Option<&'a [f32]> {
        self.map.get(name).map(|a| a.floats.as_slice())
    }

    pub(crate) fn string(&self, name: &str, default: &str) -> Result<String, OnnxError> {
        match self.map.get(name) {
            None => Ok(default.to_string()),
            Some(a) => String::from_utf8(a.s.clone())
                .map_err(|_| self.err(format!("attribute {name} is not UTF-8"))),
        }
    }

    pub(crate) fn tensor(&self, name: &str) -> Option<&'a pb::TensorProto> {
        self.map.get(name).and_then(|a| a.t.as_ref())
    }

    /// Non-negative integers (kernel sizes, strides...).
    pub(crate) fn usizes(&self, name: &str) -> Result<Option<Vec<usize>>, OnnxError> {
        match self.ints(name) {
            None => Ok(None),
            Some(v) => v
                .iter()
                .map(|&x| {
                    usize::try_from(x).map_err(|_| self.err(format!("{name} has negative {x}")))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
        }
    }
}

/// The name used for a node in messages: its name, else its first output.
pub(crate) fn node_label(n: &pb::NodeProto) -> String {
    if !n.name.is_empty() {
        n.name.clone()
    } else {
        n.output
            .first()
            .map(|o| format!("<{o}>"))
            .unwrap_or_else(|| "<unnamed>".into())
    }
}
