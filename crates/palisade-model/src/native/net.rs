//! The burn modules of the native architectures, built from (and exported to) named host
//! tensors, and their forward pass.

use std::collections::BTreeMap;

use burn::module::{Module, Param, RunningState};
use burn::nn::conv::Conv2d;
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::module::adaptive_avg_pool2d;
use burn::tensor::{Device, Tensor, TensorData};
use rand::Rng;
use rand::rngs::StdRng;

use super::NativeError;
use super::arch::{Arch, resnet_block_stride};

/// A tensor in host memory: row-major data and its shape.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Named host tensors, by parameter name.
pub(crate) type TensorMap = BTreeMap<String, HostTensor>;

/// `[N, D]` MLP.
#[derive(Module, Debug)]
pub(crate) struct MlpNet {
    layers: Vec<Linear>,
}

impl MlpNet {
    /// A network without layers (a placeholder while an optimiser consumes the real one).
    pub(crate) fn empty() -> Self {
        MlpNet { layers: Vec::new() }
    }
}

/// The small CNN.
#[derive(Module, Debug)]
pub(crate) struct CnnNet {
    conv1: Conv2d,
    conv2: Conv2d,
    pool: MaxPool2d,
    fc1: Linear,
    fc2: Linear,
}

/// A projection shortcut (1×1 convolution and batch norm).
#[derive(Module, Debug)]
pub(crate) struct Shortcut {
    conv: Conv2d,
    bn: BatchNorm,
}

/// A basic residual block.
#[derive(Module, Debug)]
pub(crate) struct Block {
    conv1: Conv2d,
    bn1: BatchNorm,
    conv2: Conv2d,
    bn2: BatchNorm,
    shortcut: Option<Shortcut>,
}

/// The small ResNet.
#[derive(Module, Debug)]
pub(crate) struct ResNetNet {
    stem_conv: Conv2d,
    stem_bn: BatchNorm,
    blocks: Vec<Block>,
    fc: Linear,
}

/// One of the native networks. The architecture's sizes live in [`Arch`]; the module holds only
/// parameters.
#[derive(Module, Debug)]
pub(crate) enum Network {
    Mlp(MlpNet),
    Cnn(CnnNet),
    ResNet(ResNetNet),
}

/// Dropout while training: masks are drawn from the trainer's own seeded generator, so runs are
/// reproducible whatever else uses burn's global generator.
pub(crate) struct DropoutCtx<'a> {
    pub prob: f32,
    pub rng: &'a mut StdRng,
}

impl DropoutCtx<'_> {
    fn apply(&mut self, x: Tensor<2>) -> Tensor<2> {
        if self.prob <= 0.0 {
            return x;
        }
        let dims = x.dims();
        let keep = 1.0 - self.prob;
        let scale = 1.0 / keep;
        let mask: Vec<f32> = (0..dims[0] * dims[1])
            .map(|_| {
                if self.rng.random::<f32>() < keep {
                    scale
                } else {
                    0.0
                }
            })
            .collect();
        let mask = Tensor::<2>::from_data(TensorData::new(mask, dims), &x.device());
        x * mask
    }
}

fn take(map: &mut TensorMap, name: &str) -> Result<HostTensor, NativeError> {
    map.remove(name)
        .ok_or_else(|| NativeError::Backend(format!("parameter {name} missing")))
}

fn t1(h: HostTensor, device: &Device) -> Tensor<1> {
    let n = h.data.len();
    Tensor::from_data(TensorData::new(h.data, [n]), device)
}

/// Host `[out, in]` → burn `[in, out]`.
fn transpose(h: &HostTensor) -> Vec<f32> {
    let (o, i) = (h.shape[0], h.shape[1]);
    let mut t = vec![0.0; o * i];
    for r in 0..o {
        for c in 0..i {
            t[c * o + r] = h.data[r * i + c];
        }
    }
    t
}

fn linear_from(map: &mut TensorMap, name: &str, device: &Device) -> Result<Linear, NativeError> {
    let w = take(map, &format!("{name}.weight"))?;
    let b = take(map, &format!("{name}.bias"))?;
    let (o, i) = (w.shape[0], w.shape[1]);
    let weight = Tensor::<2>::from_data(TensorData::new(transpose(&w), [i, o]), device);
    Ok(Linear {
        weight: Param::from_tensor(weight),
        bias: Some(Param::from_tensor(t1(b, device))),
    })
}

fn conv_from(
    map: &mut TensorMap,
    name: &str,
    stride: usize,
    pad: usize,
    device: &Device,
) -> Result<Conv2d, NativeError> {
    let w = take(map, &format!("{name}.weight"))?;
    let bias = map
        .remove(&format!("{name}.bias"))
        .map(|b| Param::from_tensor(t1(b, device)));
    let shape = [w.shape[0], w.shape[1], w.shape[2], w.shape[3]];
    let k = shape[2];
    Ok(Conv2d {
        weight: Param::from_tensor(Tensor::from_data(TensorData::new(w.data, shape), device)),
        bias,
        stride: [stride, stride],
        kernel_size: [k, k],
        dilation: [1, 1],
        groups: 1,
        padding: PaddingConfig2d::Explicit(pad, pad, pad, pad),
    })
}

fn bn_from(map: &mut TensorMap, name: &str, device: &Device) -> Result<BatchNorm, NativeError> {
    let gamma = take(map, &format!("{name}.weight"))?;
    let c = gamma.data.len();
    let mut bn = BatchNormConfig::new(c).init(device);
    bn.gamma = Param::from_tensor(t1(gamma, device));
    bn.beta = Param::from_tensor(t1(take(map, &format!("{name}.bias"))?, device));
    bn.running_mean = RunningState::new(t1(take(map, &format!("{name}.running_mean"))?, device));
    bn.running_var = RunningState::new(t1(take(map, &format!("{name}.running_var"))?, device));
    Ok(bn)
}

/// Host copy of a burn tensor.
pub(crate) fn to_host<const D: usize>(t: Tensor<D>) -> Result<HostTensor, NativeError> {
    let shape = t.dims().to_vec();
    let data = t
        .try_into_data()
        .map_err(|e| NativeError::Backend(format!("read tensor: {e:?}")))?
        .try_into_vec::<f32>()
        .map_err(|e| NativeError::Backend(format!("read tensor: {e:?}")))?;
    Ok(HostTensor { shape, data })
}

fn linear_to(out: &mut TensorMap, name: &str, l: &Linear) -> Result<(), NativeError> {
    let w = to_host(l.weight.val())?; // [in, out]
    let (i, o) = (w.shape[0], w.shape[1]);
    let back = HostTensor {
        shape: vec![i, o],
        data: w.data,
    };
    out.insert(
        format!("{name}.weight"),
        HostTensor {
            shape: vec![o, i],
            data: transpose(&back),
        },
    );
    if let Some(b) = &l.bias {
        out.insert(format!("{name}.bias"), to_host(b.val())?);
    }
    Ok(())
}

fn conv_to(out: &mut TensorMap, name: &str, c: &Conv2d) -> Result<(), NativeError> {
    out.insert(format!("{name}.weight"), to_host(c.weight.val())?);
    if let Some(b) = &c.bias {
        out.insert(format!("{name}.bias"), to_host(b.val())?);
    }
    Ok(())
}

fn bn_to(out: &mut TensorMap, name: &str, bn: &BatchNorm) -> Result<(), NativeError> {
    out.insert(format!("{name}.weight"), to_host(bn.gamma.val())?);
    out.insert(format!("{name}.bias"), to_host(bn.beta.val())?);
    out.insert(
        format!("{name}.running_mean"),
        to_host(bn.running_mean.value())?,
    );
    out.insert(
        format!("{name}.running_var"),
        to_host(bn.running_var.value())?,
    );
    Ok(())
}

impl Network {
    /// Builds the network of `arch` from `map`, whose names and shapes the caller has checked
    /// against [`Arch::params`].
    pub(crate) fn build(
        arch: &Arch,
        mut map: TensorMap,
        device: &Device,
    ) -> Result<Network, NativeError> {
        let map = &mut map;
        Ok(match arch {
            Arch::Mlp { hidden, .. } => Network::Mlp(MlpNet {
                layers: (0..=hidden.len())
                    .map(|i| linear_from(map, &format!("layers.{i}"), device))
                    .collect::<Result<_, _>>()?,
            }),
            Arch::Cnn { .. } => Network::Cnn(CnnNet {
                conv1: conv_from(map, "conv1", 1, 0, device)?,
                conv2: conv_from(map, "conv2", 1, 0, device)?,
                pool: MaxPool2dConfig::new([2, 2]).init(),
                fc1: linear_from(map, "fc1", device)?,
                fc2: linear_from(map, "fc2", device)?,
            }),
            Arch::ResNet { widths, blocks, .. } => {
                let mut bl = Vec::new();
                for s in 0..widths.len() {
                    for b in 0..*blocks {
                        let pre = format!("stages.{s}.{b}");
                        let stride = resnet_block_stride(s, b);
                        let shortcut = if map.contains_key(&format!("{pre}.shortcut.conv.weight")) {
                            Some(Shortcut {
                                conv: conv_from(
                                    map,
                                    &format!("{pre}.shortcut.conv"),
                                    stride,
                                    0,
                                    device,
                                )?,
                                bn: bn_from(map, &format!("{pre}.shortcut.bn"), device)?,
                            })
                        } else {
                            None
                        };
                        bl.push(Block {
                            conv1: conv_from(map, &format!("{pre}.conv1"), stride, 1, device)?,
                            bn1: bn_from(map, &format!("{pre}.bn1"), device)?,
                            conv2: conv_from(map, &format!("{pre}.conv2"), 1, 1, device)?,
                            bn2: bn_from(map, &format!("{pre}.bn2"), device)?,
                            shortcut,
                        });
                    }
                }
                Network::ResNet(ResNetNet {
                    stem_conv: conv_from(map, "stem.conv", 1, 1, device)?,
                    stem_bn: bn_from(map, "stem.bn", device)?,
                    blocks: bl,
                    fc: linear_from(map, "fc", device)?,
                })
            }
        })
    }

    /// Named host copies of every parameter and buffer, in the layout of [`Arch::params`].
    pub(crate) fn export(&self, arch: &Arch) -> Result<TensorMap, NativeError> {
        let mut out = TensorMap::new();
        match (self, arch) {
            (Network::Mlp(m), _) => {
                for (i, l) in m.layers.iter().enumerate() {
                    linear_to(&mut out, &format!("layers.{i}"), l)?;
                }
            }
            (Network::Cnn(c), _) => {
                conv_to(&mut out, "conv1", &c.conv1)?;
                conv_to(&mut out, "conv2", &c.conv2)?;
                linear_to(&mut out, "fc1", &c.fc1)?;
                linear_to(&mut out, "fc2", &c.fc2)?;
            }
            (Network::ResNet(r), Arch::ResNet { blocks, .. }) => {
                conv_to(&mut out, "stem.conv", &r.stem_conv)?;
                bn_to(&mut out, "stem.bn", &r.stem_bn)?;
                for (k, b) in r.blocks.iter().enumerate() {
                    let pre = format!("stages.{}.{}", k / blocks, k % blocks);
                    conv_to(&mut out, &format!("{pre}.conv1"), &b.conv1)?;
                    bn_to(&mut out, &format!("{pre}.bn1"), &b.bn1)?;
                    conv_to(&mut out, &format!("{pre}.conv2"), &b.conv2)?;
                    bn_to(&mut out, &format!("{pre}.bn2"), &b.bn2)?;
                    if let Some(s) = &b.shortcut {
                        conv_to(&mut out, &format!("{pre}.shortcut.conv"), &s.conv)?;
                        bn_to(&mut out, &format!("{pre}.shortcut.bn"), &s.bn)?;
                    }
                }
                linear_to(&mut out, "fc", &r.fc)?;
            }
            (Network::ResNet(_), _) => {
                return Err(NativeError::Backend(
                    "network and architecture disagree".into(),
                ));
            }
        }
        Ok(out)
    }

    /// Logits `[N, C]` of a flattened batch `[N, D]` of samples shaped `input_shape`.
    ///
    /// `dropout` is `Some` only while training. Batch norm uses batch statistics when the
    /// module's training flags are on and the input is on an autodiff device, running
    /// statistics otherwise (see [`Module::valid`]).
    pub(crate) fn forward(
        &self,
        x: Tensor<2>,
        input_shape: &[usize],
        mut dropout: Option<DropoutCtx<'_>>,
    ) -> Tensor<2> {
        let mut drop = |t: Tensor<2>| match dropout.as_mut() {
            Some(d) => d.apply(t),
            None => t,
        };
        let n = x.dims()[0];
        match self {
            Network::Mlp(m) => {
                let last = m.layers.len() - 1;
                let mut h = x;
                for (i, l) in m.layers.iter().enumerate() {
                    h = l.forward(h);
                    if i < last {
                        h = drop(relu(h));
                    }
                }
                h
            }
            Network::Cnn(c) => {
                let img = x.reshape([n, input_shape[0], input_shape[1], input_shape[2]]);
                let h = c.pool.forward(relu(c.conv1.forward(img)));
                let h = c.pool.forward(relu(c.conv2.forward(h)));
                let h: Tensor<2> = h.flatten(1, 3);
                let h = drop(relu(c.fc1.forward(h)));
                c.fc2.forward(h)
            }
            Network::ResNet(r) => {
                let img = x.reshape([n, input_shape[0], input_shape[1], input_shape[2]]);
                let mut h = relu(r.stem_bn.forward(r.stem_conv.forward(img)));
                for b in &r.blocks {
                    let y = relu(b.bn1.forward(b.conv1.forward(h.clone())));
                    let y = b.bn2.forward(b.conv2.forward(y));
                    let s = match &b.shortcut {
                        Some(s) => s.bn.forward(s.conv.forward(h)),
                        None => h,
                    };
                    h = relu(y + s);
                }
                let h: Tensor<2> = adaptive_avg_pool2d(h, [1, 1]).flatten(1, 3);
                r.fc.forward(h)
            }
        }
    }
}
