//! The differentiable ONNX interpreter: a graph parsed once into an execution plan whose steps
//! are burn operations, run on any burn backend (Flex for inference, `Autodiff<Flex>` for input
//! gradients).
//!
//! Floating-point values are burn tensors; integer values (shape arithmetic) are [`Ints`] on the
//! host, computed exactly. Weights are burn tensors created once, when the plan is built.

use std::collections::HashMap;

use burn::backend::flex::FlexDevice;
use burn::backend::ops::{ConvOptions, FloatTensorOps, PadMode};
use burn::backend::tensor::FloatTensor;
use burn::backend::{
    AutodiffBackend, Backend, FloatDType, Shape, Slice, TensorData, TensorMetadata,
};
use tract_onnx::pb;

use super::OnnxError;
use super::host::{self, Ints};
use super::proto::{self, Attrs, HostTensor, node_label};
use crate::backend::{Cpu, CpuAutodiff};

/// Every operator the interpreter implements (default ONNX domain).
pub const SUPPORTED_OPS: &[&str] = &[
    "Abs",
    "Add",
    "AveragePool",
    "BatchNormalization",
    "Cast",
    "Clip",
    "Concat",
    "Constant",
    "ConstantOfShape",
    "Conv",
    "Div",
    "Dropout",
    "Erf",
    "Exp",
    "Expand",
    "Flatten",
    "Gather",
    "Gelu",
    "Gemm",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "Identity",
    "LeakyRelu",
    "Log",
    "LogSoftmax",
    "MatMul",
    "MaxPool",
    "Mul",
    "Neg",
    "Pad",
    "Pow",
    "Reciprocal",
    "ReduceMean",
    "ReduceSum",
    "Relu",
    "Reshape",
    "Shape",
    "Sigmoid",
    "Slice",
    "Softmax",
    "Sqrt",
    "Squeeze",
    "Sub",
    "Tanh",
    "Transpose",
    "Unsqueeze",
];

/// Whether the interpreter implements `op` in the default domain.
pub fn is_supported(domain: &str, op: &str) -> bool {
    (domain.is_empty() || domain == "ai.onnx") && SUPPORTED_OPS.contains(&op)
}

/// A burn backend the interpreter runs on, with a way to use the plan's weights (stored once
/// on the CPU backend) as its own tensors.
pub(crate) trait Exec: Backend<Device = FlexDevice> {
    fn lift(t: &FloatTensor<Cpu>) -> FloatTensor<Self>;
}

impl Exec for Cpu {
    fn lift(t: &FloatTensor<Cpu>) -> FloatTensor<Self> {
        t.clone()
    }
}

impl Exec for CpuAutodiff {
    fn lift(t: &FloatTensor<Cpu>) -> FloatTensor<Self> {
        CpuAutodiff::from_inner(t.clone())
    }
}

/// A value flowing through the graph.
enum Val<B: Backend> {
    F(FloatTensor<B>),
    I(Ints),
}

impl<B: Backend> Clone for Val<B> {
    fn clone(&self) -> Self {
        match self {
            Val::F(t) => Val::F(t.clone()),
            Val::I(i) => Val::I(i.clone()),
        }
    }
}

/// A constant of the plan.
enum Const {
    F(FloatTensor<Cpu>),
    I(Ints),
}

#[derive(Debug, Clone, Copy)]
enum Bin {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
}

#[derive(Debug, Clone, Copy)]
enum Un {
    Relu,
    Sigmoid,
    Tanh,
    Exp,
    Log,
    Sqrt,
    Neg,
    Abs,
    Erf,
    Reciprocal,
    GeluTanh,
    Gelu,
}

#[derive(Debug, Clone)]
enum AutoPad {
    Explicit(Vec<usize>),
    SameUpper,
    SameLower,
    Valid,
}

#[derive(Debug, Clone)]
struct Window {
    kernel: Option<Vec<usize>>,
    strides: Option<Vec<usize>>,
    dilations: Option<Vec<usize>>,
    pads: AutoPad,
    ceil: bool,
}

/// Slice attributes (opset < 10): starts, ends, axes.
type SliceAttrs = (Vec<i64>, Vec<i64>, Option<Vec<i64>>);

#[derive(Debug, Clone)]
enum Op {
    Identity,
    Bin(Bin),
    Un(Un),
    LeakyRelu(f32),
    Softmax {
        axis: i64,
        legacy: bool,
        log: bool,
    },
    MatMul,
    Gemm {
        alpha: f32,
        beta: f32,
        ta: bool,
        tb: bool,
    },
    Conv {
        w: Window,
        group: usize,
    },
    MaxPool(Window),
    AvgPool {
        w: Window,
        count_pad: bool,
    },
    GlobalPool {
        max: bool,
    },
    /// Inference batch norm folded into `x * scale + shift` (inputs: x, scale `[C]`, shift `[C]`).
    Affine,
    BatchNorm {
        eps: f32,
    },
    Flatten(i64),
    Reshape {
        allowzero: bool,
    },
    Transpose(Option<Vec<i64>>),
    Concat(i64),
    Squeeze(Option<Vec<i64>>),
    Unsqueeze(Option<Vec<i64>>),
    Pad {
        mode: PadModeK,
        pads: Option<Vec<i64>>,
        value: f32,
    },
    Clip {
        min: Option<f32>,
        max: Option<f32>,
    },
    Shape {
        start: i64,
        end: Option<i64>,
    },
    Gather(i64),
    Cast {
        to_float: bool,
    },
    Slice {
        attrs: Option<SliceAttrs>,
    },
    Reduce {
        mean: bool,
        axes: Option<Vec<i64>>,
        keep: bool,
        noop_empty: bool,
    },
    ConstantOfShape(HostTensor),
    Expand,
}

#[derive(Debug, Clone, Copy)]
enum PadModeK {
    Constant,
    /// The modes that copy input values into the pads.
    Copy(CopyPad),
}

#[derive(Debug, Clone, Copy)]
enum CopyPad {
    Reflect,
    Edge,
}

impl CopyPad {
    /// The source index along an axis of length `n` that output position `p` (counted from
    /// the original first element, so negative inside the leading pad) copies: numpy's
    /// `reflect` (mirror without repeating the edge, repeated for pads longer than the axis)
    /// or `edge`.
    fn source(self, p: i64, n: i64) -> i64 {
        match self {
            CopyPad::Edge => p.clamp(0, n - 1),
            CopyPad::Reflect => {
                if n == 1 {
                    return 0;
                }
                let period = 2 * (n - 1);
                let q = p.rem_euclid(period);
                if q >= n { period - q } else { q }
            }
        }
    }
}

struct Step {
    op: Op,
    op_type: String,
    node: String,
    inputs: Vec<Option<usize>>,
    outputs: Vec<usize>,
    /// Slots whose last use is this step: dropped after it runs.
    release: Vec<usize>,
}

/// A parsed, ready-to-run graph.
pub(crate) struct Plan {
    steps: Vec<Step>,
    consts: Vec<(usize, Const)>,
    n_slots: usize,
    input: usize,
    output: usize,
    device: FlexDevice,
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan")
            .field("steps", &self.steps.len())
            .field("consts", &self.consts.len())
            .finish()
    }
}

/// Names the first unsupported op in a graph (subgraphs included), if any.
pub(crate) fn first_unsupported(g: &pb::GraphProto) -> Option<(String, String)> {
    for n in &g.node {
        if !is_supported(&n.domain, &n.op_type) {
            return Some((n.op_type.clone(), node_label(n)));
        }
    }
    None
}

impl Plan {
    /// Parses `graph` (external data already inlined) into a plan for the input `input_name`
    /// and the output `output_name`.
    pub(crate) fn build(
        graph: &pb::GraphProto,
        opset: i64,
        input_name: &str,
        output_name: &str,
    ) -> Result<Plan, OnnxError> {
        if let Some((op, node)) = first_unsupported(graph) {
            return Err(OnnxError::UnsupportedOp { op, node });
        }
        let mut b = Builder {
            slots: HashMap::new(),
            host: HashMap::new(),
            consts: Vec::new(),
            steps: Vec::new(),
        };
        let input = b.define(input_name);
        for init in &graph.initializer {
            if init.name == input_name {
                continue;
            }
            let t = proto::read_tensor(init).map_err(OnnxError::Invalid)?;
            let slot = b.define(&init.name);
            b.host.insert(slot, t);
        }
        for n in &graph.node {
            b.node(n, opset)?;
        }
        let output = *b.slots.get(output_name).ok_or_else(|| {
            OnnxError::Invalid(format!(
                "output '{output_name}' is not produced by any node"
            ))
        })?;
        b.finish(input, output)
    }

    /// Runs the plan on `x` (batch first). Returns the output, flattened to `[N, C]`.
    fn forward<B: Exec>(&self, x: FloatTensor<B>) -> Result<FloatTensor<B>, OnnxError> {
        let mut slots: Vec<Option<Val<B>>> = (0..self.n_slots).map(|_| None).collect();
        for (slot, c) in &self.consts {
            slots[*slot] = Some(match c {
                Const::F(t) => Val::F(B::lift(t)),
                Const::I(i) => Val::I(i.clone()),
            });
        }
        slots[self.input] = Some(Val::F(x));
        for step in &self.steps {
            let args: Vec<Option<Val<B>>> = step
                .inputs
                .iter()
                .map(|i| i.and_then(|i| slots[i].clone()))
                .collect();
            let outs = run_step::<B>(step, args, &slots, &self.device)?;
            for (slot, v) in step.outputs.iter().zip(outs) {
                slots[*slot] = Some(v);
            }
            for &r in &step.release {
                slots[r] = None;
            }
        }
        match slots[self.output].take() {
            Some(Val::F(t)) => {
                let dims = t.shape().to_vec();
                if dims.len() < 2 {
                    return Err(OnnxError::NotAClassifier(format!(
                        "the output has shape {dims:?}, not [N, C]"
                    )));
                }
                if dims.len() == 2 {
                    Ok(t)
                } else {
                    let c: usize = dims[1..].iter().product();
                    Ok(B::float_reshape(t, Shape::from(vec![dims[0], c])))
                }
            }
            Some(Val::I(_)) => Err(OnnxError::NotAClassifier(
                "the output is an integer tensor".into(),
            )),
            None => Err(OnnxError::Runtime("the output was never computed".into())),
        }
    }

    /// Logits for a batch, on the CPU backend without autodiff.
    pub(crate) fn logits(&self, x: Vec<f32>, shape: &[usize]) -> Result<Tensor2, OnnxError> {
        guard(|| {
            let xt = Cpu::float_from_data(TensorData::new(x, shape.to_vec()), &self.device);
            let out = self.forward::<Cpu>(xt)?;
            read::<Cpu>(out)
        })
    }

    /// One forward and backward pass: the logits and `Jᵀ·cotangent(logits)`.
    pub(crate) fn vjp(
        &self,
        x: Vec<f32>,
        shape: &[usize],
        cotangent: &mut dyn FnMut(&Tensor2) -> Result<Vec<f32>, OnnxError>,
    ) -> Result<(Tensor2, Vec<f32>), OnnxError> {
        guard(|| {
            let xt = CpuAutodiff::float_from_data(TensorData::new(x, shape.to_vec()), &self.device);
            let xt = CpuAutodiff::float_set_require_grad(xt, true);
            let out = self.forward::<CpuAutodiff>(xt.clone())?;
            let logits = read::<Cpu>(CpuAutodiff::inner(out.clone()))?;
            let cot = cotangent(&logits)?;
            if cot.len() != logits.data.len() {
                return Err(OnnxError::Runtime(format!(
                    "cotangent has {} values for logits {:?}",
                    cot.len(),
                    logits.shape
                )));
            }
            let cot = CpuAutodiff::float_from_data(
                TensorData::new(cot, logits.shape.to_vec()),
                &self.device,
            );
            let objective = CpuAutodiff::float_sum(CpuAutodiff::float_mul(out, cot));
            let grads = CpuAutodiff::backward(objective);
            let g = match CpuAutodiff::grad(&xt, &grads) {
                Some(g) => read_vec::<Cpu>(g)?,
                // The output does not depend on the input: the gradient is zero.
                None => vec![0.0; shape.iter().product()],
            };
            Ok((logits, g))
        })
    }
}

/// A row-major `[N, C]` result.
#[derive(Debug, Clone)]
pub(crate) struct Tensor2 {
    pub(crate) shape: [usize; 2],
    pub(crate) data: Vec<f32>,
}

fn read_vec<B: Backend>(t: FloatTensor<B>) -> Result<Vec<f32>, OnnxError> {
    let data = burn::tensor::try_read_sync(B::float_into_data(t))
        .ok_or_else(|| OnnxError::Runtime("cannot read tensor synchronously".into()))?
        .map_err(|e| OnnxError::Runtime(format!("{e:?}")))?;
    data.convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| OnnxError::Runtime(format!("{e:?}")))
}

fn read<B: Backend>(t: FloatTensor<B>) -> Result<Tensor2, OnnxError> {
    let dims = t.shape().to_vec();
    if dims.len() != 2 {
        return Err(OnnxError::Runtime(format!("expected [N, C], got {dims:?}")));
    }
    Ok(Tensor2 {
        shape: [dims[0], dims[1]],
        data: read_vec::<B>(t)?,
    })
}

/// Runs `f`, turning a panic inside the tensor backend into an error: the plan checks operand
/// shapes before each operation, and this is the backstop for anything it missed.
fn guard<T>(f: impl FnOnce() -> Result<T, OnnxError>) -> Result<T, OnnxError> {
    super::caught::catch(f, |msg| {
        OnnxError::Runtime(format!("the tensor backend panicked: {msg}"))
    })
}

struct Builder {
    slots: HashMap<String, usize>,
    /// Constants known at plan time (initializers, `Constant` nodes), by slot.
    host: HashMap<usize, HostTensor>,
    consts: Vec<(usize, Const)>,
    steps: Vec<Step>,
}

impl Builder {
    fn define(&mut self, name: &str) -> usize {
        let n = self.slots.len();
        *self.slots.entry(name.to_string()).or_insert(n)
    }

    fn node(&mut self, n: &pb::NodeProto, opset: i64) -> Result<(), OnnxError> {
        let label = node_label(n);
        let a = Attrs::new(n, &label);
        let err = |r: String| OnnxError::node(&n.op_type, &label, r);
        let mut inputs = Vec::with_capacity(n.input.len());
        for name in &n.input {
            if name.is_empty() {
                inputs.push(None);
            } else {
                let s = self.slots.get(name).copied().ok_or_else(|| {
                    err(format!(
                        "input '{name}' is not defined before this node (graph not topologically sorted?)"
                    ))
                })?;
                inputs.push(Some(s));
            }
        }
        let host_in = |i: usize| -> Option<&HostTensor> {
            inputs
                .get(i)
                .copied()
                .flatten()
                .and_then(|s| self.host.get(&s))
        };
        let scalar_in = |i: usize| -> Result<Option<f32>, OnnxError> {
            match host_in(i) {
                None if inputs.get(i).copied().flatten().is_none() => Ok(None),
                None => Err(err(format!("input {i} must be a constant"))),
                Some(HostTensor::F32 { data, .. }) if data.len() == 1 => Ok(Some(data[0])),
                Some(HostTensor::I64 { data, .. }) if data.len() == 1 => Ok(Some(data[0] as f32)),
                Some(_) => Err(err(format!("input {i} must be a scalar"))),
            }
        };
        let window = |spatial_default: bool| -> Result<Window, OnnxError> {
            let auto = a.string("auto_pad", "NOTSET")?;
            let pads = match auto.as_str() {
                "NOTSET" | "" => AutoPad::Explicit(a.usizes("pads")?.unwrap_or_default()),
                "SAME_UPPER" => AutoPad::SameUpper,
                "SAME_LOWER" => AutoPad::SameLower,
                "VALID" => AutoPad::Valid,
                other => return Err(err(format!("auto_pad {other}"))),
            };
            let kernel = a.usizes("kernel_shape")?;
            if !spatial_default && kernel.is_none() {
                return Err(err("kernel_shape is required".into()));
            }
            Ok(Window {
                kernel,
                strides: a.usizes("strides")?,
                dilations: a.usizes("dilations")?,
                pads,
                ceil: a.int("ceil_mode", 0) != 0,
            })
        };
        let op = match n.op_type.as_str() {
            "Constant" => {
                let t = constant_value(&a).map_err(err)?;
                let out = n.output.first().ok_or_else(|| err("no output".into()))?;
                let slot = self.define(out);
                self.host.insert(slot, t);
                return Ok(());
            }
            "Identity" => Op::Identity,
            "Dropout" => {
                if n.output.get(1).is_some_and(|o| !o.is_empty()) {
                    return Err(err("the mask output of Dropout is not supported".into()));
                }
                Op::Identity
            }
            "Add" => Op::Bin(Bin::Add),
            "Sub" => Op::Bin(Bin::Sub),
            "Mul" => Op::Bin(Bin::Mul),
            "Div" => Op::Bin(Bin::Div),
            "Pow" => Op::Bin(Bin::Pow),
            "Relu" => Op::Un(Un::Relu),
            "Sigmoid" => Op::Un(Un::Sigmoid),
            "Tanh" => Op::Un(Un::Tanh),
            "Exp" => Op::Un(Un::Exp),
            "Log" => Op::Un(Un::Log),
            "Sqrt" => Op::Un(Un::Sqrt),
            "Neg" => Op::Un(Un::Neg),
            "Abs" => Op::Un(Un::Abs),
            "Erf" => Op::Un(Un::Erf),
            "Reciprocal" => Op::Un(Un::Reciprocal),
            "Gelu" => match a.string("approximate", "none")?.as_str() {
                "none" => Op::Un(Un::Gelu),
                "tanh" => Op::Un(Un::GeluTanh),
                other => return Err(err(format!("approximate '{other}'"))),
            },
            "LeakyRelu" => Op::LeakyRelu(a.float("alpha", 0.01)),
            "Softmax" | "LogSoftmax" => Op::Softmax {
                axis: a.int("axis", if opset >= 13 { -1 } else { 1 }),
                legacy: opset < 13,
                log: n.op_type == "LogSoftmax",
            },
            "MatMul" => Op::MatMul,
            "Gemm" => Op::Gemm {
                alpha: a.float("alpha", 1.0),
                beta: a.float("beta", 1.0),
                ta: a.int("transA", 0) != 0,
                tb: a.int("transB", 0) != 0,
            },
            "Conv" => {
                let group = usize::try_from(a.int("group", 1))
                    .ok()
                    .filter(|&g| g > 0)
                    .ok_or_else(|| err("group must be positive".into()))?;
                Op::Conv {
                    w: window(true)?,
                    group,
                }
            }
            "MaxPool" => {
                if n.output.get(1).is_some_and(|o| !o.is_empty()) {
                    return Err(err("the Indices output of MaxPool is not supported".into()));
                }
                if a.int("storage_order", 0) != 0 {
                    return Err(err("storage_order 1 is not supported".into()));
                }
                Op::MaxPool(window(false)?)
            }
            "AveragePool" => {
                let w = window(false)?;
                if w.dilations
                    .as_ref()
                    .is_some_and(|d| d.iter().any(|&x| x != 1))
                {
                    return Err(err("dilated AveragePool is not supported".into()));
                }
                Op::AvgPool {
                    w,
                    count_pad: a.int("count_include_pad", 0) != 0,
                }
            }
            "GlobalAveragePool" => Op::GlobalPool { max: false },
            "GlobalMaxPool" => Op::GlobalPool { max: true },
            "BatchNormalization" => {
                if a.int("training_mode", 0) != 0 {
                    return Err(err(
                        "training_mode BatchNormalization is not supported".into()
                    ));
                }
                if n.output.iter().skip(1).any(|o| !o.is_empty()) {
                    return Err(err("running statistics outputs are not supported".into()));
                }
                let eps = a.float("epsilon", 1e-5);
                let params: Option<Vec<&Vec<f32>>> = (1..5)
                    .map(|i| match host_in(i) {
                        Some(HostTensor::F32 { data, .. }) => Some(data),
                        _ => None,
                    })
                    .collect();
                match params {
                    Some(p) if p.iter().all(|v| v.len() == p[0].len()) => {
                        let (gamma, beta, mean, var) = (p[0], p[1], p[2], p[3]);
                        let scale: Vec<f32> = gamma
                            .iter()
                            .zip(var)
                            .map(|(g, v)| g / (v + eps).sqrt())
                            .collect();
                        let shift: Vec<f32> = beta
                            .iter()
                            .zip(mean)
                            .zip(&scale)
                            .map(|((b, m), s)| b - m * s)
                            .collect();
                        let c = scale.len();
                        let scale = self.anon_const(HostTensor::F32 {
                            shape: vec![c],
                            data: scale,
                        });
                        let shift = self.anon_const(HostTensor::F32 {
                            shape: vec![c],
                            data: shift,
                        });
                        inputs.truncate(1);
                        inputs.push(Some(scale));
                        inputs.push(Some(shift));
                        Op::Affine
                    }
                    Some(_) => return Err(err("parameters of different lengths".into())),
                    None => Op::BatchNorm { eps },
                }
            }
            "Flatten" => Op::Flatten(a.int("axis", 1)),
            "Reshape" => Op::Reshape {
                allowzero: a.int("allowzero", 0) != 0,
            },
            "Transpose" => Op::Transpose(a.ints("perm").map(|p| p.to_vec())),
            "Concat" => {
                if !a.has("axis") {
                    return Err(err("axis is required".into()));
                }
                Op::Concat(a.int("axis", 0))
            }
            "Squeeze" => Op::Squeeze(a.ints("axes").map(|p| p.to_vec())),
            "Unsqueeze" => Op::Unsqueeze(a.ints("axes").map(|p| p.to_vec())),
            "Pad" => {
                let mode = match a.string("mode", "constant")?.as_str() {
                    "constant" => PadModeK::Constant,
                    "reflect" => PadModeK::Copy(CopyPad::Reflect),
                    "edge" => PadModeK::Copy(CopyPad::Edge),
                    other => return Err(err(format!("pad mode '{other}'"))),
                };
                let (pads, value) = if opset < 11 {
                    (
                        Some(a.ints("pads").unwrap_or_default().to_vec()),
                        a.float("value", 0.0),
                    )
                } else {
                    let v = scalar_in(2)?.unwrap_or(0.0);
                    (None, v)
                };
                Op::Pad { mode, pads, value }
            }
            "Clip" => {
                if opset < 11 {
                    Op::Clip {
                        min: a.has("min").then(|| a.float("min", f32::MIN)),
                        max: a.has("max").then(|| a.float("max", f32::MAX)),
                    }
                } else {
                    let op = Op::Clip {
                        min: scalar_in(1)?,
                        max: scalar_in(2)?,
                    };
                    inputs.truncate(1);
                    op
                }
            }
            "Shape" => Op::Shape {
                start: a.int("start", 0),
                end: a.ints("end").map(|_| a.int("end", 0)),
            },
            "Gather" => Op::Gather(a.int("axis", 0)),
            "Cast" => {
                let to = a.int("to", 0);
                let to_float = match to {
                    1 | 10 | 11 | 16 => true,
                    2..=7 | 9 | 12 | 13 => false,
                    _ => return Err(err(format!("cast to data type {to}"))),
                };
                Op::Cast { to_float }
            }
            "Slice" => Op::Slice {
                attrs: if opset < 10 {
                    let s = a
                        .ints("starts")
                        .ok_or_else(|| err("starts missing".into()))?;
                    let e = a.ints("ends").ok_or_else(|| err("ends missing".into()))?;
                    Some((s.to_vec(), e.to_vec(), a.ints("axes").map(|x| x.to_vec())))
                } else {
                    None
                },
            },
            "ReduceMean" | "ReduceSum" => {
                let mean = n.op_type == "ReduceMean";
                let axes_as_input = if mean { opset >= 18 } else { opset >= 13 };
                Op::Reduce {
                    mean,
                    axes: if axes_as_input {
                        None
                    } else {
                        Some(a.ints("axes").map(|x| x.to_vec()).unwrap_or_default())
                    },
                    keep: a.int("keepdims", 1) != 0,
                    noop_empty: a.int("noop_with_empty_axes", 0) != 0,
                }
            }
            "ConstantOfShape" => Op::ConstantOfShape(match a.tensor("value") {
                Some(t) => proto::read_tensor(t).map_err(err)?,
                None => HostTensor::F32 {
                    shape: vec![1],
                    data: vec![0.0],
                },
            }),
            "Expand" => Op::Expand,
            other => {
                return Err(OnnxError::UnsupportedOp {
                    op: other.to_string(),
                    node: label,
                });
            }
        };
        let outputs: Vec<usize> = n.output.iter().take(1).map(|o| self.define(o)).collect();
        if outputs.is_empty() {
            return Err(err("no output".into()));
        }
        self.steps.push(Step {
            op,
            op_type: n.op_type.clone(),
            node: label,
            inputs,
            outputs,
            release: Vec::new(),
        });
        Ok(())
    }

    fn anon_const(&mut self, t: HostTensor) -> usize {
        let name = format!("\u{0}const{}", self.slots.len());
        let slot = self.define(&name);
        self.host.insert(slot, t);
        slot
    }

    fn finish(mut self, input: usize, output: usize) -> Result<Plan, OnnxError> {
        let device = FlexDevice;
        // Constants: only those some step reads become tensors.
        let mut used = vec![false; self.slots.len()];
        for s in &self.steps {
            for i in s.inputs.iter().flatten() {
                used[*i] = true;
            }
        }
        used[output] = true;
        let mut host: Vec<(usize, HostTensor)> = self.host.drain().collect();
        host.sort_by_key(|(s, _)| *s);
        for (slot, t) in host {
            if !used[slot] {
                continue;
            }
            let c = match t {
                HostTensor::F32 { shape, data } => {
                    let shape = if shape.is_empty() { vec![1] } else { shape };
                    Const::F(Cpu::float_from_data(TensorData::new(data, shape), &device))
                }
                HostTensor::I64 { shape, data } => Const::I(Ints { shape, data }),
            };
            self.consts.push((slot, c));
        }
        // Liveness: release each slot after its last reader (never the output).
        let mut last = vec![None; self.slots.len()];
        for (k, s) in self.steps.iter().enumerate() {
            for i in s.inputs.iter().flatten() {
                last[*i] = Some(k);
            }
        }
        for (slot, l) in last.iter().enumerate() {
            if let Some(k) = l
                && slot != output
            {
                self.steps[*k].release.push(slot);
            }
        }
        Ok(Plan {
            steps: self.steps,
            consts: self.consts,
            n_slots: self.slots.len(),
            input,
            output,
            device,
        })
    }
}

fn constant_value(a: &Attrs<'_>) -> Result<HostTensor, String> {
    if let Some(t) = a.tensor("value") {
        return proto::read_tensor(t);
    }
    if a.has("value_float") {
        return Ok(HostTensor::F32 {
            shape: vec![],
            data: vec![a.float("value_float", 0.0)],
        });
    }
    if let Some(v) = a.floats("value_floats").filter(|_| a.has("value_floats")) {
        return Ok(HostTensor::F32 {
            shape: vec![v.len()],
            data: v.to_vec(),
        });
    }
    if a.has("value_int") {
        return Ok(HostTensor::I64 {
            shape: vec![],
            data: vec![a.int("value_int", 0)],
        });
    }
    if let Some(v) = a.ints("value_ints") {
        return Ok(HostTensor::I64 {
            shape: vec![v.len()],
            data: v.to_vec(),
        });
    }
    Err("Constant without a supported value attribute".into())
}

// ---------------------------------------------------------------------------------------------
// Execution of one step.

fn dims(t: &impl TensorMetadata) -> Vec<usize> {
    t.shape().to_vec()
}

fn reshape<B: Backend>(t: FloatTensor<B>, shape: Vec<usize>) -> FloatTensor<B> {
    B::float_reshape(t, Shape::from(shape))
}

fn to_float<B: Exec>(i: &Ints, device: &FlexDevice) -> FloatTensor<B> {
    let shape = if i.shape.is_empty() {
        vec![1]
    } else {
        i.shape.clone()
    };
    let data: Vec<f32> = i.data.iter().map(|&v| v as f32).collect();
    B::float_from_data(TensorData::new(data, shape), device)
}

/// Normalises a possibly negative axis for a tensor of `rank`.
fn axis(a: i64, rank: usize) -> Result<usize, String> {
    let r = rank as i64;
    let v = if a < 0 { a + r } else { a };
    if (0..r).contains(&v) {
        Ok(v as usize)
    } else {
        Err(format!("axis {a} out of range for rank {rank}"))
    }
}

fn run_step<B: Exec>(
    step: &Step,
    mut args: Vec<Option<Val<B>>>,
    _slots: &[Option<Val<B>>],
    device: &FlexDevice,
) -> Result<Vec<Val<B>>, OnnxError> {
    let err = |r: String| OnnxError::node(&step.op_type, &step.node, r);
    let mut take = |i: usize| -> Result<Val<B>, OnnxError> {
        args.get_mut(i)
            .and_then(|a| a.take())
            .ok_or_else(|| err(format!("missing input {i}")))
    };
    let v = eval::<B>(&step.op, &mut take, device).map_err(|e| match e {
        Failure::Msg(m) => err(m),
        Failure::Onnx(e) => e,
    })?;
    Ok(vec![v])
}

enum Failure {
    Msg(String),
    Onnx(OnnxError),
}

impl From<String> for Failure {
    fn from(s: String) -> Self {
        Failure::Msg(s)
    }
}

impl From<&str> for Failure {
    fn from(s: &str) -> Self {
        Failure::Msg(s.to_string())
    }
}

impl From<OnnxError> for Failure {
    fn from(e: OnnxError) -> Self {
        Failure::Onnx(e)
    }
}

type Take<'a, B> = dyn FnMut(usize) -> Result<Val<B>, OnnxError> + 'a;

fn float<B: Exec>(v: Val<B>, device: &FlexDevice) -> FloatTensor<B> {
    match v {
        Val::F(t) => t,
        Val::I(i) => to_float::<B>(&i, device),
    }
}

fn ints<B: Backend>(v: Val<B>, what: &str) -> Result<Ints, Failure> {
    match v {
        Val::I(i) => Ok(i),
        Val::F(_) => Err(Failure::Msg(format!(
            "{what} must be an integer tensor known on the host"
        ))),
    }
}

fn opt<B: Backend>(take: &mut Take<'_, B>, i: usize) -> Option<Val<B>> {
    take(i).ok()
}

fn eval<B: Exec>(op: &Op, take: &mut Take<'_, B>, device: &FlexDevice) -> Result<Val<B>, Failure> {
    Ok(match op {
        Op::Identity => take(0)?,
        Op::Bin(b) => {
            let (x, y) = (take(0)?, take(1)?);
            match (x, y) {
                (Val::I(x), Val::I(y)) if !matches!(b, Bin::Pow) => {
                    let f = match b {
                        Bin::Add => i64::checked_add,
                        Bin::Sub => i64::checked_sub,
                        Bin::Mul => i64::checked_mul,
                        _ => i64::checked_div,
                    };
                    Val::I(host::binary(&x, &y, f)?)
                }
                (x, y) => {
                    let (x, y) = (float(x, device), float(y, device));
                    let (x, y) = align::<B>(x, y)?;
                    Val::F(match b {
                        Bin::Add => B::float_add(x, y),
                        Bin::Sub => B::float_sub(x, y),
                        Bin::Mul => B::float_mul(x, y),
                        Bin::Div => B::float_div(x, y),
                        Bin::Pow => B::float_powf(x, y),
                    })
                }
            }
        }
        Op::Un(u) => {
            let x = float(take(0)?, device);
            Val::F(match u {
                Un::Relu => B::relu(x),
                Un::Sigmoid => B::sigmoid(x),
                Un::Tanh => B::float_tanh(x),
                Un::Exp => B::float_exp(x),
                Un::Log => B::float_log(x),
                Un::Sqrt => B::float_sqrt(x),
                Un::Neg => B::float_neg(x),
                Un::Abs => B::float_abs(x),
                Un::Erf => B::float_erf(x),
                Un::Reciprocal => B::float_recip(x),
                Un::Gelu => B::gelu(x),
                Un::GeluTanh => {
                    // 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))
                    let c = (2.0f64 / std::f64::consts::PI).sqrt();
                    let x3 = B::float_mul(B::float_mul(x.clone(), x.clone()), x.clone());
                    let inner =
                        B::float_add(x.clone(), B::float_mul_scalar(x3, 0.044715f64.into()));
                    let t = B::float_tanh(B::float_mul_scalar(inner, c.into()));
                    let half = B::float_mul_scalar(x, 0.5f64.into());
                    B::float_mul(half, B::float_add_scalar(t, 1.0f64.into()))
                }
            })
        }
        Op::LeakyRelu(alpha) => Val::F(B::leaky_relu(
            float(take(0)?, device),
            (*alpha as f64).into(),
        )),
        Op::Softmax {
            axis: ax,
            legacy,
            log,
        } => {
            let x = float(take(0)?, device);
            let d = dims(&x);
            let k = axis(*ax, d.len())?;
            let f = |t, dim| {
                if *log {
                    B::log_softmax(t, dim)
                } else {
                    B::softmax(t, dim)
                }
            };
            if *legacy && k + 1 != d.len() {
                let outer: usize = d[..k].iter().product();
                let inner: usize = d[k..].iter().product();
                let y = f(reshape::<B>(x, vec![outer, inner]), 1);
                Val::F(reshape::<B>(y, d))
            } else {
                Val::F(f(x, k))
            }
        }
        Op::MatMul => {
            let (a, b) = (float(take(0)?, device), float(take(1)?, device));
            Val::F(matmul::<B>(a, b)?)
        }
        Op::Gemm {
            alpha,
            beta,
            ta,
            tb,
        } => {
            let (a, b) = (float(take(0)?, device), float(take(1)?, device));
            let (da, db) = (dims(&a), dims(&b));
            if da.len() != 2 || db.len() != 2 {
                return Err(format!("Gemm needs 2-D operands, got {da:?} and {db:?}").into());
            }
            let a = if *ta { B::float_transpose(a) } else { a };
            let b = if *tb { B::float_transpose(b) } else { b };
            let (da, db) = (dims(&a), dims(&b));
            if da[1] != db[0] {
                return Err(format!("Gemm: {da:?} times {db:?}").into());
            }
            let mut y = B::float_matmul(a, b);
            if *alpha != 1.0 {
                y = B::float_mul_scalar(y, (*alpha as f64).into());
            }
            if let Some(c) = opt(take, 2) {
                let mut c = float(c, device);
                if *beta != 1.0 {
                    c = B::float_mul_scalar(c, (*beta as f64).into());
                }
                let (y2, c) = align::<B>(y, c)?;
                if host::broadcast_shapes(&dims(&y2), &dims(&c))? != dims(&y2) {
                    return Err("Gemm: C does not broadcast to the output".into());
                }
                y = B::float_add(y2, c);
            }
            Val::F(y)
        }
        Op::Conv { w, group } => {
            let x = float(take(0)?, device);
            let wt = float(take(1)?, device);
            let bias = opt(take, 2).map(|b| float(b, device));
            Val::F(conv::<B>(x, wt, bias, w, *group)?)
        }
        Op::MaxPool(w) => Val::F(pool::<B>(float(take(0)?, device), w, None)?),
        Op::AvgPool { w, count_pad } => {
            Val::F(pool::<B>(float(take(0)?, device), w, Some(*count_pad))?)
        }
        Op::GlobalPool { max } => {
            let mut x = float(take(0)?, device);
            let r = dims(&x).len();
            if r < 3 {
                return Err("global pooling needs [N, C, ...]".into());
            }
            for d in 2..r {
                x = if *max {
                    B::float_max_dim(x, d)
                } else {
                    B::float_mean_dim(x, d)
                };
            }
            Val::F(x)
        }
        Op::Affine => {
            let x = float(take(0)?, device);
            let (scale, shift) = (float(take(1)?, device), float(take(2)?, device));
            let d = dims(&x);
            let c = dims(&scale)[0];
            if d.len() < 2 || d[1] != c {
                return Err(format!("BatchNormalization of {d:?} with {c} channels").into());
            }
            let mut s = vec![1; d.len()];
            s[1] = c;
            let y = B::float_mul(x, reshape::<B>(scale, s.clone()));
            Val::F(B::float_add(y, reshape::<B>(shift, s)))
        }
        Op::BatchNorm { eps } => {
            let x = float(take(0)?, device);
            let p: Vec<FloatTensor<B>> = (1..5)
                .map(|i| take(i).map(|v| float(v, device)))
                .collect::<Result<_, _>>()?;
            let d = dims(&x);
            if d.len() < 2 || p.iter().any(|t| dims(t) != [d[1]]) {
                return Err("BatchNormalization parameters do not match the channels".into());
            }
            let mut it = p.into_iter();
            let (g, b, m, v) = (
                it.next().ok_or("scale")?,
                it.next().ok_or("bias")?,
                it.next().ok_or("mean")?,
                it.next().ok_or("var")?,
            );
            Val::F(B::batch_norm(x, g, b, m, v, *eps as f64))
        }
        Op::Flatten(ax) => {
            let v = take(0)?;
            let d = val_dims(&v);
            let k = if *ax == d.len() as i64 {
                d.len()
            } else {
                axis(*ax, d.len())?
            };
            let shape = vec![d[..k].iter().product(), d[k..].iter().product()];
            val_reshape(v, shape)?
        }
        Op::Reshape { allowzero } => {
            let v = take(0)?;
            let target = ints(take(1)?, "the shape of Reshape")?;
            let d = val_dims(&v);
            let shape = reshape_target(&d, &target.data, *allowzero)?;
            val_reshape(v, shape)?
        }
        Op::Transpose(perm) => {
            let v = take(0)?;
            let r = val_dims(&v).len();
            let perm: Vec<usize> = match perm {
                None => (0..r).rev().collect(),
                Some(p) => p.iter().map(|&a| axis(a, r)).collect::<Result<_, _>>()?,
            };
            let mut seen = vec![false; r];
            if perm.len() != r || perm.iter().any(|&p| std::mem::replace(&mut seen[p], true)) {
                return Err(format!("perm {perm:?} is not a permutation of rank {r}").into());
            }
            match v {
                Val::F(t) => Val::F(B::float_permute(t, &perm)),
                Val::I(_) => return Err("Transpose of an integer tensor".into()),
            }
        }
        Op::Concat(ax) => {
            let mut parts = Vec::new();
            let mut i = 0;
            while let Some(v) = opt(take, i) {
                parts.push(v);
                i += 1;
            }
            if parts.is_empty() {
                return Err("Concat without inputs".into());
            }
            let r = val_dims(&parts[0]).len();
            let k = axis(*ax, r)?;
            if parts.iter().all(|p| matches!(p, Val::I(_))) {
                let ints: Vec<Ints> = parts
                    .into_iter()
                    .map(|p| ints(p, "Concat input"))
                    .collect::<Result<_, _>>()?;
                Val::I(host::concat(&ints, k)?)
            } else {
                let ts: Vec<FloatTensor<B>> = parts.into_iter().map(|p| float(p, device)).collect();
                let d0 = dims(&ts[0]);
                for t in &ts {
                    let d = dims(t);
                    if d.len() != d0.len() || d[..k] != d0[..k] || d[k + 1..] != d0[k + 1..] {
                        return Err(
                            format!("cannot concatenate {d0:?} and {d:?} on axis {k}").into()
                        );
                    }
                }
                Val::F(B::float_cat(ts, k))
            }
        }
        Op::Squeeze(attr) => {
            let v = take(0)?;
            let axes = match attr {
                Some(a) => Some(a.clone()),
                None => opt(take, 1)
                    .map(|a| ints(a, "axes"))
                    .transpose()?
                    .map(|i| i.data),
            };
            let d = val_dims(&v);
            let shape: Vec<usize> = match axes {
                None => d.iter().copied().filter(|&x| x != 1).collect(),
                Some(axes) => {
                    let ks: Vec<usize> = axes
                        .iter()
                        .map(|&a| axis(a, d.len()))
                        .collect::<Result<_, _>>()?;
                    if ks.iter().any(|&k| d[k] != 1) {
                        return Err(format!("cannot squeeze axes {axes:?} of {d:?}").into());
                    }
                    d.iter()
                        .enumerate()
                        .filter(|(i, _)| !ks.contains(i))
                        .map(|(_, &x)| x)
                        .collect()
                }
            };
            val_reshape(v, shape)?
        }
        Op::Unsqueeze(attr) => {
            let v = take(0)?;
            let axes = match attr {
                Some(a) => a.clone(),
                None => ints(take(1)?, "axes")?.data,
            };
            let d = val_dims(&v);
            let r = d.len() + axes.len();
            let mut ks: Vec<usize> = axes.iter().map(|&a| axis(a, r)).collect::<Result<_, _>>()?;
            ks.sort_unstable();
            ks.dedup();
            if ks.len() != axes.len() {
                return Err("repeated axes".into());
            }
            let mut shape = Vec::with_capacity(r);
            let mut src = d.iter();
            for i in 0..r {
                if ks.contains(&i) {
                    shape.push(1);
                } else {
                    shape.push(*src.next().ok_or("axes out of range")?);
                }
            }
            val_reshape(v, shape)?
        }
        Op::Pad { mode, pads, value } => {
            let x = float(take(0)?, device);
            let d = dims(&x);
            let r = d.len();
            let pads = match pads {
                Some(p) => p.clone(),
                None => ints(take(1)?, "pads")?.data,
            };
            let axes: Vec<usize> = match opt(take, 3) {
                Some(a) => ints(a, "axes")?
                    .data
                    .iter()
                    .map(|&a| axis(a, r))
                    .collect::<Result<_, _>>()?,
                None => (0..r).collect(),
            };
            if pads.len() != 2 * axes.len() {
                return Err(format!("{} pads for {} axes", pads.len(), axes.len()).into());
            }
            let copy = match mode {
                PadModeK::Copy(c) => *c,
                PadModeK::Constant => {
                    let mut pairs = vec![(0usize, 0usize); r];
                    for (j, &k) in axes.iter().enumerate() {
                        let (b, e) = (pads[j], pads[j + axes.len()]);
                        pairs[k] = (
                            usize::try_from(b).map_err(|_| "negative pads are not supported")?,
                            usize::try_from(e).map_err(|_| "negative pads are not supported")?,
                        );
                    }
                    return Ok(Val::F(B::float_pad(x, &pairs, PadMode::Constant(*value))));
                }
            };
            // The copying modes are a gather along each padded axis: differentiable through
            // `select`, whose backward pass adds up the gradients of repeated indices.
            let mut x = x;
            for (j, &k) in axes.iter().enumerate() {
                let (b, e) = (pads[j], pads[j + axes.len()]);
                if b == 0 && e == 0 {
                    continue;
                }
                let n = d[k] as i64;
                let len = n + b + e;
                if n == 0 || len <= 0 {
                    return Err(
                        format!("pads {b} and {e} leave nothing of an axis of length {n}").into(),
                    );
                }
                let idx: Vec<i64> = (-b..n + e).map(|p| copy.source(p, n)).collect();
                let it = B::int_from_data(TensorData::new(idx, vec![len as usize]), device);
                x = B::float_select(x, k, it);
            }
            Val::F(x)
        }
        Op::Clip { min, max } => {
            let x = float(take(0)?, device);
            Val::F(match (min, max) {
                (Some(a), Some(b)) => B::float_clamp(x, (*a as f64).into(), (*b as f64).into()),
                (Some(a), None) => B::float_clamp_min(x, (*a as f64).into()),
                (None, Some(b)) => B::float_clamp_max(x, (*b as f64).into()),
                (None, None) => x,
            })
        }
        Op::Shape { start, end } => {
            let d = val_dims(&take(0)?);
            let r = d.len() as i64;
            let clampi = |v: i64| -> usize { (if v < 0 { v + r } else { v }).clamp(0, r) as usize };
            let (s, e) = (clampi(*start), clampi(end.unwrap_or(r)));
            let data: Vec<i64> = d[s..e.max(s)].iter().map(|&x| x as i64).collect();
            Val::I(Ints::vector(data))
        }
        Op::Gather(ax) => {
            let data = take(0)?;
            let idx = ints(take(1)?, "Gather indices")?;
            let d = val_dims(&data);
            let k = axis(*ax, d.len())?;
            let n = d[k] as i64;
            let norm: Vec<i64> = idx
                .data
                .iter()
                .map(|&i| if i < 0 { i + n } else { i })
                .collect();
            if norm.iter().any(|&i| i < 0 || i >= n) {
                return Err(format!("Gather index out of range for dimension {n}").into());
            }
            let idx = Ints {
                shape: idx.shape,
                data: norm,
            };
            match data {
                Val::I(t) => Val::I(host::gather(&t, k, &idx)),
                Val::F(t) => {
                    let it = B::int_from_data(
                        TensorData::new(idx.data.clone(), vec![idx.data.len()]),
                        device,
                    );
                    let y = B::float_select(t, k, it);
                    let mut shape = d[..k].to_vec();
                    shape.extend_from_slice(&idx.shape);
                    shape.extend_from_slice(&d[k + 1..]);
                    let shape = if shape.is_empty() { vec![1] } else { shape };
                    Val::F(reshape::<B>(y, shape))
                }
            }
        }
        Op::Cast { to_float: tf } => match (take(0)?, tf) {
            (Val::F(t), true) => Val::F(t),
            (Val::I(i), false) => Val::I(i),
            (Val::I(i), true) => Val::F(to_float::<B>(&i, device)),
            (Val::F(t), false) => {
                let shape = dims(&t);
                let data = read_vec::<B>(t).map_err(Failure::Onnx)?;
                Val::I(Ints {
                    shape,
                    data: data.iter().map(|&v| v as i64).collect(),
                })
            }
        },
        Op::Slice { attrs } => {
            let v = take(0)?;
            let (starts, ends, axes, steps) = match attrs {
                Some((s, e, a)) => (s.clone(), e.clone(), a.clone(), None),
                None => (
                    ints(take(1)?, "starts")?.data,
                    ints(take(2)?, "ends")?.data,
                    opt(take, 3)
                        .map(|a| ints(a, "axes"))
                        .transpose()?
                        .map(|i| i.data),
                    opt(take, 4)
                        .map(|a| ints(a, "steps"))
                        .transpose()?
                        .map(|i| i.data),
                ),
            };
            let d = val_dims(&v);
            let r = d.len();
            let axes: Vec<usize> = match axes {
                Some(a) => a.iter().map(|&x| axis(x, r)).collect::<Result<_, _>>()?,
                None => (0..starts.len()).collect(),
            };
            if starts.len() != axes.len() || ends.len() != axes.len() {
                return Err("starts, ends and axes differ in length".into());
            }
            let mut ranges: Vec<(usize, usize, usize)> = d.iter().map(|&n| (0, n, 1)).collect();
            for (j, &k) in axes.iter().enumerate() {
                let step = steps
                    .as_ref()
                    .map(|s| s.get(j).copied().unwrap_or(1))
                    .unwrap_or(1);
                if step < 1 {
                    return Err("Slice with a non-positive step is not supported".into());
                }
                let n = d[k] as i64;
                let c = |v: i64| -> i64 { (if v < 0 { v + n } else { v }).clamp(0, n) };
                let (s, e) = (c(starts[j]), c(ends[j]));
                let len = if e > s { (e - s + step - 1) / step } else { 0 };
                ranges[k] = (s as usize, len as usize, step as usize);
            }
            match v {
                Val::I(t) => Val::I(host::slice(&t, &ranges)),
                Val::F(t) => {
                    let slices: Vec<Slice> = ranges
                        .iter()
                        .map(|&(s, len, st)| {
                            Slice::new(
                                s as isize,
                                Some((s + len.saturating_sub(1) * st + 1) as isize),
                                st as isize,
                            )
                        })
                        .collect();
                    if ranges.iter().any(|r| r.1 == 0) {
                        return Err("Slice producing an empty tensor is not supported".into());
                    }
                    Val::F(B::float_slice(t, &slices))
                }
            }
        }
        Op::Reduce {
            mean,
            axes,
            keep,
            noop_empty,
        } => {
            let x = float(take(0)?, device);
            let d = dims(&x);
            let axes = match axes {
                Some(a) => a.clone(),
                None => opt(take, 1)
                    .map(|a| ints(a, "axes"))
                    .transpose()?
                    .map(|i| i.data)
                    .unwrap_or_default(),
            };
            if axes.is_empty() && *noop_empty {
                return Ok(Val::F(x));
            }
            let mut ks: Vec<usize> = if axes.is_empty() {
                (0..d.len()).collect()
            } else {
                axes.iter()
                    .map(|&a| axis(a, d.len()))
                    .collect::<Result<_, _>>()?
            };
            ks.sort_unstable();
            ks.dedup();
            let mut y = x;
            for &k in &ks {
                y = if *mean {
                    B::float_mean_dim(y, k)
                } else {
                    B::float_sum_dim(y, k)
                };
            }
            if !*keep {
                let shape: Vec<usize> = d
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !ks.contains(i))
                    .map(|(_, &n)| n)
                    .collect();
                let shape = if shape.is_empty() { vec![1] } else { shape };
                y = reshape::<B>(y, shape);
            }
            Val::F(y)
        }
        Op::ConstantOfShape(value) => {
            let shape = ints(take(0)?, "the shape of ConstantOfShape")?;
            let (s, n) = proto::dims_to_shape(&shape.data)?;
            match value {
                HostTensor::F32 { data, .. } => {
                    let v = *data.first().ok_or("empty value")?;
                    let s = if s.is_empty() { vec![1] } else { s };
                    Val::F(B::float_full(
                        Shape::from(s),
                        (v as f64).into(),
                        device,
                        FloatDType::F32,
                    ))
                }
                HostTensor::I64 { data, .. } => {
                    let v = *data.first().ok_or("empty value")?;
                    Val::I(Ints {
                        shape: s,
                        data: vec![v; n],
                    })
                }
            }
        }
        Op::Expand => {
            let x = float(take(0)?, device);
            let shape = ints(take(1)?, "the shape of Expand")?;
            let (s, _) = proto::dims_to_shape(&shape.data)?;
            let out = host::broadcast_shapes(&dims(&x), &s)?;
            let (x, _) = align::<B>(
                x,
                B::float_zeros(Shape::from(vec![1; out.len()]), device, FloatDType::F32),
            )?;
            Val::F(B::float_expand(x, Shape::from(out)))
        }
    })
}

fn val_dims<B: Backend>(v: &Val<B>) -> Vec<usize> {
    match v {
        Val::F(t) => dims(t),
        Val::I(i) => i.shape.clone(),
    }
}

fn val_reshape<B: Backend>(v: Val<B>, shape: Vec<usize>) -> Result<Val<B>, Failure> {
    let n: usize = val_dims(&v).iter().product();
    if shape.iter().product::<usize>() != n {
        return Err(format!("cannot reshape {:?} to {shape:?}", val_dims(&v)).into());
    }
    Ok(match v {
        Val::F(t) => Val::F(reshape::<B>(
            t,
            if shape.is_empty() { vec![1] } else { shape },
        )),
        Val::I(i) => Val::I(i.reshape(shape)?),
    })
}

/// ONNX `Reshape` target: `0` copies the input dimension (unless `allowzero`), `-1` is inferred.
fn reshape_target(d: &[usize], target: &[i64], allowzero: bool) -> Result<Vec<usize>, String> {
    let total: usize = d.iter().product();
    let mut out = Vec::with_capacity(target.len());
    let mut infer = None;
    for (i, &t) in target.iter().enumerate() {
        match t {
            -1 if infer.is_none() => {
                infer = Some(i);
                out.push(1);
            }
            0 if !allowzero => out.push(*d.get(i).ok_or("0 in a position the input lacks")?),
            t if t >= 0 => out.push(t as usize),
            _ => return Err(format!("invalid Reshape target {target:?}")),
        }
    }
    let known = out
        .iter()
        .try_fold(1usize, |a, &b| a.checked_mul(b))
        .ok_or("Reshape target overflows")?;
    if let Some(i) = infer {
        if known == 0 || !total.is_multiple_of(known) {
            return Err(format!("cannot reshape {d:?} to {target:?}"));
        }
        out[i] = total / known;
    } else if known != total {
        return Err(format!("cannot reshape {d:?} to {target:?}"));
    }
    Ok(out)
}

/// Left-pads the lower-rank operand with 1s and checks that the shapes broadcast.
fn align<B: Backend>(
    x: FloatTensor<B>,
    y: FloatTensor<B>,
) -> Result<(FloatTensor<B>, FloatTensor<B>), Failure> {
    let (dx, dy) = (dims(&x), dims(&y));
    host::broadcast_shapes(&dx, &dy)?;
    let r = dx.len().max(dy.len());
    let up = |t: FloatTensor<B>, d: Vec<usize>| {
        if d.len() == r {
            t
        } else {
            let mut s = vec![1; r - d.len()];
            s.extend(d);
            reshape::<B>(t, s)
        }
    };
    Ok((up(x, dx), up(y, dy)))
}

fn matmul<B: Backend>(a: FloatTensor<B>, b: FloatTensor<B>) -> Result<FloatTensor<B>, Failure> {
    let (mut da, mut db) = (dims(&a), dims(&b));
    let (va, vb) = (da.len() == 1, db.len() == 1);
    let a = if va {
        da.insert(0, 1);
        reshape::<B>(a, da.clone())
    } else {
        a
    };
    let b = if vb {
        db.push(1);
        reshape::<B>(b, db.clone())
    } else {
        b
    };
    if da[da.len() - 1] != db[db.len() - 2] {
        return Err(format!("MatMul: {da:?} times {db:?}").into());
    }
    host::broadcast_shapes(&da[..da.len() - 2], &db[..db.len() - 2])?;
    let r = da.len().max(db.len());
    let up = |t: FloatTensor<B>, d: &[usize]| {
        if d.len() == r {
            t
        } else {
            let mut s = vec![1; r - d.len()];
            s.extend_from_slice(d);
            reshape::<B>(t, s)
        }
    };
    let y = B::float_matmul(up(a, &da), up(b, &db));
    let mut d = dims(&y);
    if va || vb {
        if vb {
            d.pop();
        }
        if va {
            d.remove(d.len() - if vb { 1 } else { 2 });
        }
        let d = if d.is_empty() { vec![1] } else { d };
        return Ok(reshape::<B>(y, d));
    }
    Ok(y)
}

/// Resolves a window's per-axis (kernel, stride, dilation, pad begin, pad end) for the spatial
/// dims `spatial`.
#[allow(clippy::type_complexity)]
fn resolve_window(
    w: &Window,
    spatial: &[usize],
    kernel_from_weight: Option<&[usize]>,
) -> Result<Vec<(usize, usize, usize, usize, usize)>, String> {
    let n = spatial.len();
    let kernel = match (&w.kernel, kernel_from_weight) {
        (Some(k), Some(kw)) if k.as_slice() != kw => {
            return Err(format!(
                "kernel_shape {k:?} differs from the weight's {kw:?}"
            ));
        }
        (Some(k), _) => k.clone(),
        (None, Some(kw)) => kw.to_vec(),
        (None, None) => return Err("no kernel shape".into()),
    };
    let strides = w.strides.clone().unwrap_or_else(|| vec![1; n]);
    let dil = w.dilations.clone().unwrap_or_else(|| vec![1; n]);
    if kernel.len() != n || strides.len() != n || dil.len() != n {
        return Err(format!(
            "kernel {kernel:?}, strides {strides:?}, dilations {dil:?} for {n} spatial dims"
        ));
    }
    if kernel.iter().chain(&strides).chain(&dil).any(|&v| v == 0) {
        return Err("zero kernel size, stride or dilation".into());
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let eff = dil[i]
            .checked_mul(kernel[i] - 1)
            .and_then(|v| v.checked_add(1))
            .ok_or("kernel too large")?;
        let (b, e) = match &w.pads {
            AutoPad::Explicit(p) if p.is_empty() => (0, 0),
            AutoPad::Explicit(p) if p.len() == 2 * n => (p[i], p[i + n]),
            AutoPad::Explicit(p) => return Err(format!("{} pads for {n} spatial dims", p.len())),
            AutoPad::Valid => (0, 0),
            AutoPad::SameUpper | AutoPad::SameLower => {
                let out_len = spatial[i].div_ceil(strides[i]);
                let total =
                    ((out_len.saturating_sub(1)) * strides[i] + eff).saturating_sub(spatial[i]);
                let small = total / 2;
                if matches!(w.pads, AutoPad::SameUpper) {
                    (small, total - small)
                } else {
                    (total - small, small)
                }
            }
        };
        if spatial[i] + b + e < eff {
            return Err(format!(
                "window {eff} larger than the padded input {}",
                spatial[i] + b + e
            ));
        }
        out.push((kernel[i], strides[i], dil[i], b, e));
    }
    Ok(out)
}

fn conv<B: Backend>(
    x: FloatTensor<B>,
    w: FloatTensor<B>,
    bias: Option<FloatTensor<B>>,
    win: &Window,
    group: usize,
) -> Result<FloatTensor<B>, Failure> {
    let (dx, dw) = (dims(&x), dims(&w));
    if dx.len() != dw.len() || !(3..=4).contains(&dx.len()) {
        return Err(format!(
            "Conv of input {dx:?} with weight {dw:?} (1-D and 2-D convolutions are supported)"
        )
        .into());
    }
    if dx[1] != dw[1] * group || dw[0] % group != 0 {
        return Err(format!("Conv: input {dx:?}, weight {dw:?}, group {group}").into());
    }
    if let Some(b) = &bias
        && dims(b) != [dw[0]]
    {
        return Err(format!("Conv bias {:?} for {} output channels", dims(b), dw[0]).into());
    }
    let wdw = resolve_window(win, &dx[2..], Some(&dw[2..]))?;
    Ok(if dx.len() == 3 {
        let (_, s, d, b, e) = wdw[0];
        B::conv1d(
            x,
            w,
            bias,
            ConvOptions {
                stride: [s],
                padding: [(b, e)],
                dilation: [d],
                groups: group,
            },
        )
    } else {
        B::conv2d(
            x,
            w,
            bias,
            ConvOptions {
                stride: [wdw[0].1, wdw[1].1],
                padding: [(wdw[0].3, wdw[0].4), (wdw[1].3, wdw[1].4)],
                dilation: [wdw[0].2, wdw[1].2],
                groups: group,
            },
        )
    })
}

/// Max pooling (`avg` None) or average pooling (`avg` = count_include_pad).
fn pool<B: Backend>(
    x: FloatTensor<B>,
    win: &Window,
    avg: Option<bool>,
) -> Result<FloatTensor<B>, Failure> {
    let dx = dims(&x);
    if !(3..=4).contains(&dx.len()) {
        return Err(format!("pooling of {dx:?} (1-D and 2-D pooling are supported)").into());
    }
    let w = resolve_window(win, &dx[2..], None)?;
    let symmetric = w.iter().all(|p| p.3 == p.4);
    let (x, pads): (FloatTensor<B>, Vec<usize>) = if symmetric {
        (x, w.iter().map(|p| p.3).collect())
    } else {
        // Asymmetric padding: pad explicitly, then pool without padding.
        let fill = match avg {
            None => f32::NEG_INFINITY,
            Some(true) => 0.0,
            Some(false) => {
                return Err("AveragePool with asymmetric pads and count_include_pad 0".into());
            }
        };
        let mut pairs = vec![(0, 0), (0, 0)];
        pairs.extend(w.iter().map(|p| (p.3, p.4)));
        (
            B::float_pad(x, &pairs, PadMode::Constant(fill)),
            vec![0; w.len()],
        )
    };
    // burn pools need padding at most half the kernel.
    if w.iter().zip(&pads).any(|(p, &pad)| pad > p.0 / 2) {
        return Err("pooling padding larger than half the kernel".into());
    }
    Ok(match (dx.len(), avg) {
        (3, None) => B::max_pool1d(x, w[0].0, w[0].1, pads[0], w[0].2, win.ceil),
        (3, Some(c)) => B::avg_pool1d(x, w[0].0, w[0].1, pads[0], c, win.ceil),
        (_, None) => B::max_pool2d(
            x,
            [w[0].0, w[1].0],
            [w[0].1, w[1].1],
            [pads[0], pads[1]],
            [w[0].2, w[1].2],
            win.ceil,
        ),
        (_, Some(c)) => B::avg_pool2d(
            x,
            [w[0].0, w[1].0],
            [w[0].1, w[1].1],
            [pads[0], pads[1]],
            c,
            win.ceil,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reshape_targets() {
        assert_eq!(
            reshape_target(&[2, 3, 4], &[0, -1], false).unwrap(),
            vec![2, 12]
        );
        assert_eq!(reshape_target(&[2, 3, 4], &[-1], false).unwrap(), vec![24]);
        assert!(reshape_target(&[2, 3, 4], &[-1, -1], false).is_err());
        assert!(reshape_target(&[2, 3, 4], &[5, -1], false).is_err());
        assert!(reshape_target(&[2, 3, 4], &[0, 0, 0, 0], false).is_err());
    }
}
