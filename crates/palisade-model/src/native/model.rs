//! [`NativeNet`]: a trained native network behind the classifier abstraction.

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use ndarray::{Array2, ArrayD, ArrayView2, ArrayViewD, IxDyn};
use palisade_core::{Classifier, Differentiable, InputRange, ModelError, ModelInfo};
use serde::{Deserialize, Serialize};

use super::NativeError;
use super::arch::{Arch, Init};
use super::net::{DropoutCtx, Network, TensorMap, to_host};

/// Samples per forward pass when computing logits of a large batch.
const CHUNK: usize = 512;

/// What a native network records besides its weights: names, range, training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NativeMeta {
    /// A human-readable name.
    pub name: String,
    /// Class names, one per logit (may be the class indices as text).
    pub class_names: Vec<String>,
    /// The valid input range.
    pub input_range: InputRange,
    /// How the network was trained (configuration and per-epoch results), if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training: Option<serde_json::Value>,
}

/// A native burn network (MLP, CNN or ResNet) in inference mode, with exact input gradients.
///
/// Built by [`train`](super::train()), [`NativeNet::init`] or [`NativeNet::load`].
pub struct NativeNet {
    info: ModelInfo,
    arch: Arch,
    meta: NativeMeta,
    /// The network in validation mode (no autodiff, training flags off) on `device`.
    net: Network,
    device: Device,
}

impl std::fmt::Debug for NativeNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativeNet")
            .field("info", &self.info)
            .field("arch", &self.arch)
            .finish_non_exhaustive()
    }
}

/// Default class names: "0", "1", ...
pub(crate) fn index_names(classes: usize) -> Vec<String> {
    (0..classes).map(|c| c.to_string()).collect()
}

/// Draws the initial parameters of `arch` from a generator seeded with `seed`.
pub(crate) fn init_params(arch: &Arch, seed: u64) -> Result<TensorMap, NativeError> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut map = TensorMap::new();
    for spec in arch.params()? {
        let n: usize = spec.shape.iter().product();
        let data = match spec.init {
            Init::Uniform(b) => (0..n).map(|_| rng.random_range(-b..=b)).collect(),
            Init::Zeros => vec![0.0; n],
            Init::Ones => vec![1.0; n],
        };
        map.insert(
            spec.name,
            super::net::HostTensor {
                shape: spec.shape,
                data,
            },
        );
    }
    Ok(map)
}

/// Checks that `map` holds exactly the parameters of `arch`, with their shapes, all finite.
pub(crate) fn check_params(arch: &Arch, map: &TensorMap) -> Result<(), String> {
    let specs = arch.params().map_err(|e| e.to_string())?;
    for spec in &specs {
        let t = map
            .get(&spec.name)
            .ok_or_else(|| format!("tensor '{}' is missing", spec.name))?;
        if t.shape != spec.shape {
            return Err(format!(
                "tensor '{}' has shape {:?}, the architecture needs {:?}",
                spec.name, t.shape, spec.shape
            ));
        }
        if t.data.len() != spec.shape.iter().product::<usize>() {
            return Err(format!(
                "tensor '{}' has the wrong number of values",
                spec.name
            ));
        }
        if t.data.iter().any(|v| !v.is_finite()) {
            return Err(format!(
                "tensor '{}' holds NaN or infinite values",
                spec.name
            ));
        }
    }
    if map.len() != specs.len() {
        let extra: Vec<&str> = map
            .keys()
            .filter(|k| !specs.iter().any(|s| &s.name == *k))
            .map(String::as_str)
            .collect();
        return Err(format!("unexpected tensors {extra:?}"));
    }
    Ok(())
}

/// The flattened batch `[N, D]` of `x`, checked against `info`.
pub(crate) fn flatten_batch(
    info: &ModelInfo,
    x: &ArrayViewD<'_, f32>,
) -> Result<(usize, usize, Vec<f32>), ModelError> {
    let n = info.check_batch(x.shape())?;
    Ok((n, info.input_len(), x.iter().copied().collect()))
}

impl NativeNet {
    /// A freshly initialised (untrained) network, parameters drawn from `seed`.
    pub fn init(arch: Arch, seed: u64, meta: NativeMeta) -> Result<NativeNet, NativeError> {
        let map = init_params(&arch, seed)?;
        NativeNet::from_params(arch, map, meta)
    }

    /// Builds the network from named parameters (checked against the architecture).
    pub(crate) fn from_params(
        arch: Arch,
        map: TensorMap,
        meta: NativeMeta,
    ) -> Result<NativeNet, NativeError> {
        check_params(&arch, &map).map_err(NativeError::Arch)?;
        let device = crate::native::device();
        let net = Network::build(&arch, map, &device)?.valid();
        NativeNet::from_network(arch, net, meta)
    }

    /// Wraps a network already in validation mode.
    pub(crate) fn from_network(
        arch: Arch,
        net: Network,
        meta: NativeMeta,
    ) -> Result<NativeNet, NativeError> {
        if meta.class_names.len() != arch.num_classes() {
            return Err(NativeError::Arch(format!(
                "{} class names for {} classes",
                meta.class_names.len(),
                arch.num_classes()
            )));
        }
        let r = meta.input_range;
        if !(r.min.is_finite() && r.max.is_finite() && r.min < r.max) {
            return Err(NativeError::Arch(format!(
                "input range [{}, {}] is empty or not finite",
                r.min, r.max
            )));
        }
        Ok(NativeNet {
            info: ModelInfo {
                name: meta.name.clone(),
                input_shape: arch.input_shape(),
                num_classes: arch.num_classes(),
                input_range: meta.input_range,
            },
            arch,
            meta,
            net,
            device: crate::native::device(),
        })
    }

    /// The architecture.
    pub fn arch(&self) -> &Arch {
        &self.arch
    }

    /// Names, range and training record.
    pub fn meta(&self) -> &NativeMeta {
        &self.meta
    }

    /// Number of trainable parameters (batch-norm running statistics excluded).
    pub fn num_params(&self) -> usize {
        self.net.num_params()
    }

    /// Named host copies of the parameters (PyTorch `state_dict` names and layouts).
    pub(crate) fn export(&self) -> Result<TensorMap, NativeError> {
        self.net.export(&self.arch)
    }

    fn forward_plain(&self, n: usize, d: usize, flat: Vec<f32>) -> Result<Array2<f32>, ModelError> {
        let x = Tensor::<2>::from_data(TensorData::new(flat, [n, d]), &self.device);
        let logits = self
            .net
            .forward(x, &self.info.input_shape, None::<DropoutCtx<'_>>);
        host_2d(logits)
    }
}

fn host_2d(t: Tensor<2>) -> Result<Array2<f32>, ModelError> {
    let h = to_host(t)?;
    Array2::from_shape_vec((h.shape[0], h.shape[1]), h.data)
        .map_err(|e| ModelError::backend("logits", e))
}

impl Classifier for NativeNet {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn logits(&self, x: ArrayViewD<'_, f32>) -> Result<Array2<f32>, ModelError> {
        let (n, d, flat) = flatten_batch(&self.info, &x)?;
        let c = self.info.num_classes;
        let mut out = Array2::<f32>::zeros((n, c));
        let mut start = 0;
        while start < n {
            let end = (start + CHUNK).min(n);
            let part = flat[start * d..end * d].to_vec();
            let z = self.forward_plain(end - start, d, part)?;
            out.slice_axis_mut(ndarray::Axis(0), (start..end).into())
                .assign(&z);
            start = end;
        }
        Ok(out)
    }

    fn as_differentiable(&self) -> Option<&dyn Differentiable> {
        Some(self)
    }
}

impl Differentiable for NativeNet {
    fn vjp(
        &self,
        x: ArrayViewD<'_, f32>,
        cotangent: &mut dyn FnMut(ArrayView2<'_, f32>) -> Array2<f32>,
    ) -> Result<(Array2<f32>, ArrayD<f32>), ModelError> {
        let (n, d, flat) = flatten_batch(&self.info, &x)?;
        let ad = self.device.clone().autodiff();
        // The parameters stay on the plain device: they are constants, only the input is tracked.
        let xt = Tensor::<2>::from_data(TensorData::new(flat, [n, d]), &ad).require_grad();
        let logits = self
            .net
            .forward(xt.clone(), &self.info.input_shape, None::<DropoutCtx<'_>>);
        let z = host_2d(logits.clone().detach())?;
        let cot = cotangent(z.view());
        if cot.dim() != z.dim() {
            return Err(ModelError::Labels(format!(
                "cotangent of shape {:?} for logits {:?}",
                cot.shape(),
                z.shape()
            )));
        }
        let (cn, cc) = cot.dim();
        let cot_t = Tensor::<2>::from_data(
            TensorData::new(cot.iter().copied().collect::<Vec<f32>>(), [cn, cc]),
            &ad,
        );
        let grads = (logits * cot_t).sum().backward();
        let g = match xt.grad(&grads) {
            Some(g) => to_host(g)?.data,
            // The objective does not depend on the input at all.
            None => vec![0.0; n * d],
        };
        let grad = ArrayD::from_shape_vec(IxDyn(x.shape()), g)
            .map_err(|e| ModelError::backend("input gradient", e))?;
        Ok((z, grad))
    }
}
