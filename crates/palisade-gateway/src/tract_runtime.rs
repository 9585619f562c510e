//! An ONNX [`Runtime`] on tract: one float input `[N, ...]` with a symbolic batch, the first
//! output `[N, C]`. Interim: `palisade-model`'s ONNX classifier replaces it once it lands.

use std::path::Path;
use std::sync::Arc;

use ndarray::{Array2, ArrayViewD};
use palisade_core::{Classifier, InputRange, ModelError, ModelInfo};
use tract_onnx::prelude::*;

use crate::loader::{LoadedModel, Runtime};

/// Loads ONNX classifiers with tract.
#[derive(Debug, Clone, Default)]
pub struct TractRuntime {
    /// The valid input range the models declare (default `[0, 1]`).
    pub input_range: InputRange,
}

struct TractClassifier {
    info: ModelInfo,
    plan: Arc<TypedRunnableModel>,
}

fn err(e: impl std::fmt::Display) -> String {
    format!("{e:#}")
}

fn catch<T>(f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err("tract panicked".into()))
}

impl Runtime for TractRuntime {
    fn load(&self, path: &Path, bytes: &[u8]) -> Result<LoadedModel, String> {
        catch(|| {
            let onnx = tract_onnx::onnx().with_ignore_value_info(true);
            let proto = onnx.proto_model_for_read(&mut &bytes[..]).map_err(err)?;
            let graph = proto.graph.as_ref().ok_or("the file has no graph")?;
            let inits: std::collections::HashSet<&str> =
                graph.initializer.iter().map(|t| t.name.as_str()).collect();
            let inputs: Vec<_> = graph
                .input
                .iter()
                .filter(|i| !inits.contains(i.name.as_str()))
                .collect();
            let [input] = inputs.as_slice() else {
                return Err(format!(
                    "a classifier has one input, this graph {}",
                    inputs.len()
                ));
            };
            let output_name = graph
                .output
                .first()
                .map(|o| o.name.clone())
                .ok_or("the graph has no output")?;
            // The per-sample shape from the declared input type (all but the batch axis).
            let dims: Vec<usize> = input
                .r#type
                .as_ref()
                .and_then(|t| t.value.as_ref())
                .and_then(|v| {
                    let tract_onnx::pb::type_proto::Value::TensorType(t) = v;
                    t.shape.as_ref()
                })
                .map(|s| {
                    s.dim
                        .iter()
                        .skip(1)
                        .filter_map(|d| match &d.value {
                            Some(
                                tract_onnx::pb::tensor_shape_proto::dimension::Value::DimValue(v),
                            ) => usize::try_from(*v).ok(),
                            _ => None,
                        })
                        .collect()
                })
                .ok_or("the input declares no shape")?;
            let mut im = onnx.model_for_proto_model(&proto).map_err(err)?;
            let batch = im.symbols.sym("N");
            let mut shape: TVec<TDim> = tvec![batch.into()];
            shape.extend(dims.iter().map(|&d| d.to_dim()));
            im.set_input_fact(0, InferenceFact::dt_shape(f32::datum_type(), shape))
                .map_err(err)?;
            let first = *im
                .output_outlets()
                .map_err(err)?
                .first()
                .ok_or("no output")?;
            im.select_output_outlets(&[first]).map_err(err)?;
            let plan = im
                .into_optimized()
                .map_err(err)?
                .into_runnable()
                .map_err(err)?;
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let mut c = TractClassifier {
                info: ModelInfo {
                    name,
                    input_shape: dims.clone(),
                    num_classes: 0,
                    input_range: self.input_range,
                },
                plan,
            };
            let probe = ndarray::ArrayD::<f32>::zeros(
                std::iter::once(1)
                    .chain(dims.iter().copied())
                    .collect::<Vec<_>>(),
            );
            c.info.num_classes = c.run(probe.view()).map_err(err)?.ncols();
            Ok(LoadedModel {
                classifier: Arc::new(c),
                input_name: input.name.clone(),
                output_name,
                platform: "onnx-tract".into(),
            })
        })
    }
}

impl TractClassifier {
    fn run(&self, x: ArrayViewD<'_, f32>) -> Result<Array2<f32>, ModelError> {
        let n = x.shape().first().copied().unwrap_or(0);
        let t = Tensor::from(x.to_owned());
        let out = catch(|| self.plan.run(tvec!(t.into_tvalue())).map_err(err))
            .map_err(|e| ModelError::backend("tract", e))?;
        let y = out
            .first()
            .ok_or_else(|| ModelError::backend("tract", "no output"))?
            .cast_to::<f32>()
            .map_err(|e| ModelError::backend("tract", err(e)))?;
        let view = y
            .to_plain_array_view::<f32>()
            .map_err(|e| ModelError::backend("tract", err(e)))?;
        let width: usize = view.shape().iter().skip(1).product();
        Array2::from_shape_vec((n, width), view.iter().copied().collect())
            .map_err(|e| ModelError::backend("logits", e))
    }
}

impl Classifier for TractClassifier {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn logits(&self, x: ArrayViewD<'_, f32>) -> Result<Array2<f32>, ModelError> {
        self.info.check_batch(x.shape())?;
        self.run(x)
    }
}
