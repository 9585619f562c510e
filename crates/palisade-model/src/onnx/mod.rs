//! ONNX models loaded at run time.
//!
//! Two runtimes over the same file:
//! - **tract** answers [`Classifier::logits`]: fast, the reference for black-box use;
//! - the **interpreter** ([`interp`]) runs the graph as burn operations on `Autodiff<Flex>`
//!   and gives [`Differentiable::vjp`]. It is offered only when it implements every operator
//!   of the graph; [`OnnxModel::interpreter_status`] says why not otherwise.
//!
//! `palisade model check` compares the two (logits) and the gradients against finite
//! differences before an attack trusts them.

mod caught;
mod error;
mod host;
pub mod interp;
mod proto;
mod tract_rt;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;

use ndarray::{Array2, ArrayD, ArrayView2, ArrayViewD, IxDyn};
use palisade_core::{Classifier, Differentiable, InputRange, ModelError, ModelInfo};
use serde::Serialize;
use tract_onnx::pb;

pub use caught::{panic_is_caught, quiet_caught_panics};
pub use error::OnnxError;
pub use interp::{SUPPORTED_OPS, is_supported};
pub use proto::{MAX_FILE_BYTES, looks_like_onnx};

use interp::Plan;
use tract_rt::TractRunner;

/// How to open an ONNX model.
#[derive(Debug, Clone, Default)]
pub struct OnnxOptions {
    /// The valid input range; ONNX does not record it. Default `[0, 1]`.
    pub input_range: Option<InputRange>,
    /// The per-sample input shape, for models whose input dimensions (other than the batch)
    /// are symbolic.
    pub input_shape: Option<Vec<usize>>,
}

/// A tensor the graph takes or produces, as declared in the model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TensorDecl {
    /// The value's name.
    pub name: String,
    /// Element type (`FLOAT`, `INT64`...).
    pub dtype: String,
    /// Dimensions: numbers, or the symbol's name for a symbolic dimension (`"N"`), `"?"` when
    /// unknown.
    pub shape: Vec<String>,
}

/// What a model file contains, read without running it.
#[derive(Debug, Clone, Serialize)]
pub struct OnnxSummary {
    /// `producer_name producer_version`.
    pub producer: String,
    /// ONNX IR version.
    pub ir_version: i64,
    /// Default-domain opset.
    pub opset: i64,
    /// Graph inputs (initializers excluded).
    pub inputs: Vec<TensorDecl>,
    /// Graph outputs.
    pub outputs: Vec<TensorDecl>,
    /// How many nodes use each operator (subgraphs included), keyed `domain::Op` outside the
    /// default domain.
    pub ops: BTreeMap<String, usize>,
    /// Operators the differentiable interpreter does not implement, with the first node using
    /// each.
    pub unsupported_ops: BTreeMap<String, String>,
    /// Number of parameters (elements of the initializers).
    pub parameters: u64,
}

/// Reads a model's summary (inputs, outputs, opset, operators, parameter count).
pub fn inspect(path: &Path) -> Result<OnnxSummary, OnnxError> {
    let bytes = proto::read_bounded(path)?;
    let model = proto::decode_model(&bytes)?;
    Ok(summarise(&model))
}

fn summarise(model: &pb::ModelProto) -> OnnxSummary {
    let g = model.graph.clone().unwrap_or_default();
    let inits: std::collections::HashSet<&str> =
        g.initializer.iter().map(|t| t.name.as_str()).collect();
    let mut ops = BTreeMap::new();
    let mut unsupported = BTreeMap::new();
    count_ops(&g, &mut ops, &mut unsupported);
    let parameters = g
        .initializer
        .iter()
        .map(|t| {
            t.dims
                .iter()
                .try_fold(1u64, |a, &d| {
                    u64::try_from(d).ok().and_then(|d| a.checked_mul(d))
                })
                .unwrap_or(0)
        })
        .fold(0u64, u64::saturating_add);
    OnnxSummary {
        producer: format!("{} {}", model.producer_name, model.producer_version)
            .trim()
            .to_string(),
        ir_version: model.ir_version,
        opset: proto::opset(model),
        inputs: g
            .input
            .iter()
            .filter(|i| !inits.contains(i.name.as_str()))
            .map(decl)
            .collect(),
        outputs: g.output.iter().map(decl).collect(),
        ops,
        unsupported_ops: unsupported,
        parameters,
    }
}

fn count_ops(
    g: &pb::GraphProto,
    ops: &mut BTreeMap<String, usize>,
    unsupported: &mut BTreeMap<String, String>,
) {
    for n in &g.node {
        let key = if n.domain.is_empty() || n.domain == "ai.onnx" {
            n.op_type.clone()
        } else {
            format!("{}::{}", n.domain, n.op_type)
        };
        if !is_supported(&n.domain, &n.op_type) {
            unsupported
                .entry(key.clone())
                .or_insert_with(|| proto::node_label(n));
        }
        *ops.entry(key).or_insert(0) += 1;
        for a in &n.attribute {
            for sg in a.g.iter().chain(&a.graphs) {
                count_ops(sg, ops, unsupported);
            }
        }
    }
}

fn decl(v: &pb::ValueInfoProto) -> TensorDecl {
    use pb::tensor_shape_proto::dimension::Value;
    let (dtype, shape) = match v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(pb::type_proto::Value::TensorType(t)) => (
            pb::tensor_proto::DataType::try_from(t.elem_type)
                .map(|d| d.as_str_name().to_string())
                .unwrap_or_else(|_| format!("type {}", t.elem_type)),
            t.shape
                .as_ref()
                .map(|s| {
                    s.dim
                        .iter()
                        .map(|d| match &d.value {
                            Some(Value::DimValue(v)) => v.to_string(),
                            Some(Value::DimParam(p)) if !p.is_empty() => p.clone(),
                            _ => "?".to_string(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
        ),
        _ => ("?".to_string(), vec![]),
    };
    TensorDecl {
        name: v.name.clone(),
        dtype,
        shape,
    }
}

/// An ONNX classifier: tract for logits, the differentiable interpreter for gradients.
pub struct OnnxModel {
    info: ModelInfo,
    summary: OnnxSummary,
    tract: TractRunner,
    interpreter: Result<Plan, OnnxError>,
}

impl std::fmt::Debug for OnnxModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxModel")
            .field("info", &self.info)
            .field("interpreter", &self.interpreter.as_ref().map(|_| "ready"))
            .finish()
    }
}

impl OnnxModel {
    /// Opens an ONNX file. External data is read from the file's directory (and only there).
    pub fn open(path: &Path, options: &OnnxOptions) -> Result<Self, OnnxError> {
        let bytes = proto::read_bounded(path)?;
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "onnx".into());
        let dir = path.parent().map(|p| {
            if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            }
        });
        Self::build(&bytes, dir, name, options)
    }

    /// Opens a model from bytes. External data is refused (there is no directory to read it
    /// from).
    pub fn from_bytes(bytes: &[u8], name: &str, options: &OnnxOptions) -> Result<Self, OnnxError> {
        Self::build(bytes, None, name.to_string(), options)
    }

    fn build(
        bytes: &[u8],
        dir: Option<&Path>,
        name: String,
        options: &OnnxOptions,
    ) -> Result<Self, OnnxError> {
        let mut model = proto::decode_model(bytes)?;
        proto::inline_external_data(&mut model, dir)?;
        let summary = summarise(&model);
        let graph = model
            .graph
            .as_ref()
            .ok_or_else(|| OnnxError::Invalid("no graph".into()))?;
        let input = match summary.inputs.as_slice() {
            [one] => one.clone(),
            [] => return Err(OnnxError::NotAClassifier("the graph has no input".into())),
            many => {
                return Err(OnnxError::NotAClassifier(format!(
                    "the graph has {} inputs ({}); a classifier takes exactly one",
                    many.len(),
                    many.iter()
                        .map(|i| i.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        };
        if input.dtype != "FLOAT" {
            return Err(OnnxError::NotAClassifier(format!(
                "the input '{}' is {}, not FLOAT",
                input.name, input.dtype
            )));
        }
        let output = summary
            .outputs
            .first()
            .cloned()
            .ok_or_else(|| OnnxError::NotAClassifier("the graph has no output".into()))?;
        let input_shape = match &options.input_shape {
            Some(s) => s.clone(),
            None => {
                if input.shape.is_empty() {
                    return Err(OnnxError::NotAClassifier(format!(
                        "the input '{}' declares no shape; give the per-sample shape",
                        input.name
                    )));
                }
                input.shape[1..]
                    .iter()
                    .map(|d| d.parse::<usize>().ok().filter(|&v| v > 0))
                    .collect::<Option<Vec<usize>>>()
                    .ok_or_else(|| {
                        OnnxError::NotAClassifier(format!(
                            "the input '{}' has symbolic dimensions {:?} besides the batch; give the per-sample shape",
                            input.name, input.shape
                        ))
                    })?
            }
        };
        proto::dims_to_shape(
            &input_shape
                .iter()
                .map(|&d| i64::try_from(d).unwrap_or(i64::MAX))
                .collect::<Vec<_>>(),
        )
        .map_err(OnnxError::NotAClassifier)?;
        let tract = TractRunner::new(&model, &input_shape)?;
        let num_classes = tract.num_classes();
        let interpreter = Plan::build(graph, summary.opset, &input.name, &output.name);
        let info = ModelInfo {
            name,
            input_shape,
            num_classes,
            input_range: options.input_range.unwrap_or_default(),
        };
        Ok(OnnxModel {
            info,
            summary,
            tract,
            interpreter,
        })
    }

    /// What the file declares: inputs, outputs, opset, operators, parameters.
    pub fn summary(&self) -> &OnnxSummary {
        &self.summary
    }

    /// `Ok` when the differentiable interpreter supports the graph, else why not.
    pub fn interpreter_status(&self) -> Result<(), &OnnxError> {
        self.interpreter.as_ref().map(|_| ())
    }

    fn plan(&self) -> Result<&Plan, ModelError> {
        self.interpreter
            .as_ref()
            .map_err(|e| ModelError::NotDifferentiable(format!("{}: {e}", self.info.name)))
    }

    /// The batch `x` as row-major values (borrowed when `x` is already laid out so; an
    /// element-wise walk of a dynamic-rank view costs more than the rest of a small model's
    /// serving path) and its batch size.
    fn flat<'a>(&self, x: &'a ArrayViewD<'_, f32>) -> Result<(Cow<'a, [f32]>, usize), ModelError> {
        let n = self.info.check_batch(x.shape())?;
        if n == 0 {
            return Err(ModelError::Shape {
                expected: self.info.input_shape.clone(),
                got: x.shape().to_vec(),
            });
        }
        let data = match x.as_slice() {
            Some(s) => Cow::Borrowed(s),
            None => Cow::Owned(x.iter().copied().collect()),
        };
        Ok((data, n))
    }

    /// Logits computed by the differentiable interpreter (no autodiff), for comparison with
    /// tract.
    pub fn interpreter_logits(&self, x: ArrayViewD<'_, f32>) -> Result<Array2<f32>, ModelError> {
        let plan = self.plan()?;
        let (data, _) = self.flat(&x)?;
        let out = plan.logits(data.into_owned(), x.shape())?;
        self.to_logits(out)
    }

    fn to_logits(&self, out: interp::Tensor2) -> Result<Array2<f32>, ModelError> {
        if out.shape[1] != self.info.num_classes {
            return Err(OnnxError::Runtime(format!(
                "the interpreter produced {} classes, tract {}",
                out.shape[1], self.info.num_classes
            ))
            .into());
        }
        Array2::from_shape_vec((out.shape[0], out.shape[1]), out.data)
            .map_err(|e| ModelError::backend("logits", e))
    }
}

impl Classifier for OnnxModel {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn logits(&self, x: ArrayViewD<'_, f32>) -> Result<Array2<f32>, ModelError> {
        let (data, n) = self.flat(&x)?;
        Ok(self.tract.run(&data, n)?)
    }

    fn as_differentiable(&self) -> Option<&dyn Differentiable> {
        self.interpreter
            .as_ref()
            .ok()
            .map(|_| self as &dyn Differentiable)
    }
}

impl Differentiable for OnnxModel {
    fn vjp(
        &self,
        x: ArrayViewD<'_, f32>,
        cotangent: &mut dyn FnMut(ArrayView2<'_, f32>) -> Array2<f32>,
    ) -> Result<(Array2<f32>, ArrayD<f32>), ModelError> {
        let plan = self.plan()?;
        let (data, _) = self.flat(&x)?;
        let c = self.info.num_classes;
        let (out, grad) = plan.vjp(data.into_owned(), x.shape(), &mut |logits| {
            let view = ArrayView2::from_shape((logits.shape[0], logits.shape[1]), &logits.data)
                .map_err(|e| OnnxError::Runtime(e.to_string()))?;
            if logits.shape[1] != c {
                return Err(OnnxError::Runtime(format!(
                    "the interpreter produced {} classes, tract {c}",
                    logits.shape[1]
                )));
            }
            let cot = cotangent(view);
            if cot.dim() != (logits.shape[0], logits.shape[1]) {
                return Err(OnnxError::Runtime(format!(
                    "cotangent of shape {:?} for logits {:?}",
                    cot.shape(),
                    logits.shape
                )));
            }
            Ok(cot.iter().copied().collect())
        })?;
        let logits = self.to_logits(out)?;
        let grad = ArrayD::from_shape_vec(IxDyn(x.shape()), grad)
            .map_err(|e| ModelError::backend("input gradient", e))?;
        Ok((logits, grad))
    }
}

/// Reads a model file with the size bound of an ONNX protobuf.
pub fn read_model_bytes(path: &Path) -> Result<Vec<u8>, OnnxError> {
    proto::read_bounded(path)
}
