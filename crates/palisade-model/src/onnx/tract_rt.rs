//! Inference through tract, with a symbolic batch dimension: the model is optimised once and
//! runs any batch size.

use ndarray::Array2;
use tract_onnx::pb;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::DimLike;

use super::OnnxError;

/// An optimised tract plan for one float input `[N, ...input_shape]`, first output `[N, C]`.
pub(crate) struct TractRunner {
    plan: Arc<TypedRunnableModel>,
    input_shape: Vec<usize>,
    num_classes: usize,
}

fn tract_err(e: impl std::fmt::Display) -> OnnxError {
    OnnxError::Tract(format!("{e:#}"))
}

/// Runs `f`, turning a panic inside tract into an error.
fn guard<T>(f: impl FnOnce() -> Result<T, OnnxError>) -> Result<T, OnnxError> {
    super::caught::catch(f, |msg| {
        OnnxError::Tract(format!(
            "panicked on this model, which is malformed or uses what tract does not handle: {msg}"
        ))
    })
}

/// ONNX reads Pad's `constant_value` input only in `constant` mode; tract pads with it whatever
/// the mode when the input is present. A copy of `model` with that input dropped from the
/// other modes' Pad nodes (the main graph's: classifiers exported by PyTorch have no
/// subgraphs), or `None` when no node has it.
fn without_unused_pad_constants(model: &pb::ModelProto) -> Option<pb::ModelProto> {
    let needs = |n: &pb::NodeProto| {
        n.op_type == "Pad"
            && (n.domain.is_empty() || n.domain == "ai.onnx")
            && n.input.get(2).is_some_and(|i| !i.is_empty())
            && n.attribute
                .iter()
                .any(|a| a.name == "mode" && a.s.as_slice() != b"constant")
    };
    let graph = model.graph.as_ref()?;
    if !graph.node.iter().any(needs) {
        return None;
    }
    let mut fixed = model.clone();
    for n in fixed.graph.as_mut()?.node.iter_mut().filter(|n| needs(n)) {
        if n.input.len() == 3 {
            n.input.truncate(2);
        } else {
            n.input[2].clear();
        }
    }
    Some(fixed)
}

impl TractRunner {
    pub(crate) fn new(model: &pb::ModelProto, input_shape: &[usize]) -> Result<Self, OnnxError> {
        guard(|| {
            let onnx = tract_onnx::onnx().with_ignore_value_info(true);
            let fixed = without_unused_pad_constants(model);
            let mut im = onnx
                .model_for_proto_model(fixed.as_ref().unwrap_or(model))
                .map_err(tract_err)?;
            let batch = im.symbols.sym("N");
            let mut shape: TVec<TDim> = tvec![batch.into()];
            shape.extend(input_shape.iter().map(|&d| d.to_dim()));
            im.set_input_fact(0, InferenceFact::dt_shape(f32::datum_type(), shape))
                .map_err(tract_err)?;
            let first = *im
                .output_outlets()
                .map_err(tract_err)?
                .first()
                .ok_or_else(|| OnnxError::NotAClassifier("the graph has no output".into()))?;
            im.select_output_outlets(&[first]).map_err(tract_err)?;
            let typed = im.into_optimized().map_err(tract_err)?;
            let fact = typed.output_fact(0).map_err(tract_err)?.clone();
            let plan = typed.into_runnable().map_err(tract_err)?;
            let mut runner = TractRunner {
                plan,
                input_shape: input_shape.to_vec(),
                num_classes: 0,
            };
            // The width of the logits: from the optimised output fact, else by running a batch
            // of one.
            let dims: Option<Vec<usize>> = fact
                .shape
                .iter()
                .skip(1)
                .map(|d| d.to_usize().ok())
                .collect();
            runner.num_classes = match dims {
                Some(d) if fact.shape.len() >= 2 => d.iter().product(),
                _ => {
                    let n: usize = input_shape.iter().product();
                    let (c, _) = runner.raw(&vec![0.0; n], 1)?;
                    c
                }
            };
            if fact.shape.len() < 2 || runner.num_classes == 0 {
                return Err(OnnxError::NotAClassifier(format!(
                    "the output has shape {:?}, not [N, C]",
                    fact.shape
                )));
            }
            Ok(runner)
        })
    }

    pub(crate) fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// Runs a batch of `n` samples; returns the width and the flattened values.
    fn raw(&self, data: &[f32], n: usize) -> Result<(usize, Vec<f32>), OnnxError> {
        let mut shape = vec![n];
        shape.extend_from_slice(&self.input_shape);
        let t = Tensor::from_shape(&shape, data).map_err(tract_err)?;
        let out = guard(|| self.plan.run(tvec!(t.into_tvalue())).map_err(tract_err))?;
        let y = out
            .first()
            .ok_or_else(|| OnnxError::Tract("no output".into()))?
            .cast_to::<f32>()
            .map_err(tract_err)?;
        let dims = y.shape();
        if dims.first() != Some(&n) || dims.len() < 2 {
            return Err(OnnxError::NotAClassifier(format!(
                "the output has shape {dims:?} for a batch of {n}"
            )));
        }
        let width: usize = dims[1..].iter().product();
        let view = y.to_plain_array_view::<f32>().map_err(tract_err)?;
        let values = match view.as_slice() {
            Some(s) => s.to_vec(),
            None => view.iter().copied().collect(),
        };
        Ok((width, values))
    }

    /// Logits `[n, C]` for `n` samples in row-major `data`.
    pub(crate) fn run(&self, data: &[f32], n: usize) -> Result<Array2<f32>, OnnxError> {
        let (c, v) = self.raw(data, n)?;
        if c != self.num_classes {
            return Err(OnnxError::Tract(format!(
                "{c} outputs per sample, expected {}",
                self.num_classes
            )));
        }
        Array2::from_shape_vec((n, c), v).map_err(tract_err)
    }
}
