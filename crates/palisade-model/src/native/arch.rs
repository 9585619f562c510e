//! Architecture descriptions: what a checkpoint's JSON file records, and the named parameters
//! (names, shapes, initialisation) each architecture has.
//!
//! Parameter names and layouts follow PyTorch's `state_dict` conventions (`fc1.weight` is
//! `[out, in]`, convolution weights are `[out, in, kh, kw]`), so a checkpoint reads the same in
//! both worlds.

use serde::{Deserialize, Serialize};

use super::NativeError;

/// A native architecture. Serialised (tagged by `kind`) into the checkpoint's JSON file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Arch {
    /// A multi-layer perceptron over the flattened input: `Linear → ReLU → [dropout]` for each
    /// hidden width, then `Linear` to the classes. For tabular data.
    Mlp {
        /// Shape of one sample (flattened by the first layer).
        input_shape: Vec<usize>,
        /// Widths of the hidden layers (may be empty: logistic regression).
        hidden: Vec<usize>,
        /// Number of classes.
        classes: usize,
        /// Dropout probability after each hidden layer while training (0 disables it).
        #[serde(default)]
        dropout: f32,
    },
    /// A small CNN for 28×28-like images: `Conv(3×3, conv[0]) → ReLU → MaxPool 2 →
    /// Conv(3×3, conv[1]) → ReLU → MaxPool 2 → Flatten → Linear(fc) → ReLU → [dropout] →
    /// Linear(classes)`; with `conv = [32, 64]`, `fc = 128` it is the PyTorch reference model.
    Cnn {
        /// Input channels.
        channels: usize,
        /// Input height.
        height: usize,
        /// Input width.
        width: usize,
        /// Output channels of the two convolutions.
        conv: [usize; 2],
        /// Width of the hidden fully connected layer.
        fc: usize,
        /// Number of classes.
        classes: usize,
        /// Dropout probability before the last layer while training (0 disables it).
        #[serde(default)]
        dropout: f32,
    },
    /// A small ResNet for 32×32-like images (the CIFAR ResNet of He et al.): a 3×3 stem, stages
    /// of basic blocks (two 3×3 convolutions with batch norm and a residual connection; stages
    /// after the first halve the resolution), global average pooling, `Linear(classes)`.
    ResNet {
        /// Input channels.
        channels: usize,
        /// Input height.
        height: usize,
        /// Input width.
        width: usize,
        /// Width of each stage (the stem has the first width).
        widths: Vec<usize>,
        /// Basic blocks per stage.
        blocks: usize,
        /// Number of classes.
        classes: usize,
    },
}

/// How a parameter starts before training.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Init {
    /// Uniform in `[-bound, bound]` (PyTorch's default for linear and convolution layers,
    /// `bound = 1/sqrt(fan_in)`).
    Uniform(f32),
    /// All zeros.
    Zeros,
    /// All ones.
    Ones,
}

/// One named parameter (or buffer) of an architecture.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub init: Init,
}

/// Largest number of parameters an architecture may declare (guards allocations when an
/// architecture file comes from outside).
const MAX_PARAMS: usize = 1 << 28;
/// Largest width, channel count, spatial size or class count accepted.
const MAX_DIM: usize = 1 << 16;

impl Arch {
    /// The reference MNIST CNN (`Conv32 → Conv64 → FC128`) for `[1, 28, 28]` inputs.
    pub fn mnist_cnn(dropout: f32) -> Arch {
        Arch::Cnn {
            channels: 1,
            height: 28,
            width: 28,
            conv: [32, 64],
            fc: 128,
            classes: 10,
            dropout,
        }
    }

    /// A ResNet-8-like network for `[channels, 32, 32]` inputs: widths 16/32/64, one block each.
    pub fn small_resnet(channels: usize, classes: usize) -> Arch {
        Arch::ResNet {
            channels,
            height: 32,
            width: 32,
            widths: vec![16, 32, 64],
            blocks: 1,
            classes,
        }
    }

    /// A short name for reports ("mlp", "cnn", "resnet").
    pub fn kind(&self) -> &'static str {
        match self {
            Arch::Mlp { .. } => "mlp",
            Arch::Cnn { .. } => "cnn",
            Arch::ResNet { .. } => "resnet",
        }
    }

    /// Shape of one input sample.
    pub fn input_shape(&self) -> Vec<usize> {
        match self {
            Arch::Mlp { input_shape, .. } => input_shape.clone(),
            Arch::Cnn {
                channels,
                height,
                width,
                ..
            }
            | Arch::ResNet {
                channels,
                height,
                width,
                ..
            } => vec![*channels, *height, *width],
        }
    }

    /// Number of classes (width of the logits).
    pub fn num_classes(&self) -> usize {
        match self {
            Arch::Mlp { classes, .. }
            | Arch::Cnn { classes, .. }
            | Arch::ResNet { classes, .. } => *classes,
        }
    }

    /// Dropout probability used while training.
    pub fn dropout(&self) -> f32 {
        match self {
            Arch::Mlp { dropout, .. } | Arch::Cnn { dropout, .. } => *dropout,
            Arch::ResNet { .. } => 0.0,
        }
    }

    /// Checks sizes and returns the parameter list. Every constructor of a network goes through
    /// this, so an architecture file from outside cannot ask for absurd allocations.
    pub(crate) fn params(&self) -> Result<Vec<ParamSpec>, NativeError> {
        let bad = |m: String| Err(NativeError::Arch(m));
        let dim_ok = |v: usize| v > 0 && v <= MAX_DIM;
        let classes = self.num_classes();
        if !dim_ok(classes) || classes < 2 {
            return bad(format!("{classes} classes (need 2 to {MAX_DIM})"));
        }
        let p = self.dropout();
        if !(0.0..1.0).contains(&p) {
            return bad(format!("dropout {p} is not in [0, 1)"));
        }
        let mut specs = Vec::new();
        match self {
            Arch::Mlp {
                input_shape,
                hidden,
                ..
            } => {
                if input_shape.is_empty() || !input_shape.iter().all(|&d| dim_ok(d)) {
                    return bad(format!("input shape {input_shape:?}"));
                }
                let d = input_shape
                    .iter()
                    .try_fold(1usize, |a, &b| a.checked_mul(b))
                    .filter(|&d| d <= MAX_PARAMS)
                    .ok_or_else(|| NativeError::Arch(format!("input shape {input_shape:?}")))?;
                if let Some(h) = hidden.iter().find(|&&h| !dim_ok(h)) {
                    return bad(format!("hidden width {h}"));
                }
                let mut fan_in = d;
                for (i, &h) in hidden.iter().chain(std::iter::once(&classes)).enumerate() {
                    linear(&mut specs, &format!("layers.{i}"), fan_in, h);
                    fan_in = h;
                }
            }
            Arch::Cnn {
                channels,
                height,
                width,
                conv,
                fc,
                ..
            } => {
                let (c, h, w) = (*channels, *height, *width);
                if ![c, h, w, conv[0], conv[1], *fc].iter().all(|&v| dim_ok(v)) {
                    return bad(format!("sizes {c}×{h}×{w}, conv {conv:?}, fc {fc}"));
                }
                let (oh, ow) = cnn_feature_hw(h, w).ok_or_else(|| {
                    NativeError::Arch(format!("input {h}×{w} is too small (need at least 10×10)"))
                })?;
                conv2d(&mut specs, "conv1", c, conv[0], 3, true);
                conv2d(&mut specs, "conv2", conv[0], conv[1], 3, true);
                linear(&mut specs, "fc1", conv[1] * oh * ow, *fc);
                linear(&mut specs, "fc2", *fc, classes);
            }
            Arch::ResNet {
                channels,
                height,
                width,
                widths,
                blocks,
                ..
            } => {
                let (c, h, w) = (*channels, *height, *width);
                if ![c, h, w, *blocks].iter().all(|&v| dim_ok(v))
                    || widths.is_empty()
                    || !widths.iter().all(|&v| dim_ok(v))
                    || *blocks > 64
                    || widths.len() > 8
                {
                    return bad(format!(
                        "sizes {c}×{h}×{w}, widths {widths:?}, {blocks} blocks"
                    ));
                }
                let halvings = widths.len() - 1;
                if (h >> halvings) == 0 || (w >> halvings) == 0 {
                    return bad(format!(
                        "input {h}×{w} is too small for {} stages",
                        widths.len()
                    ));
                }
                conv2d(&mut specs, "stem.conv", c, widths[0], 3, false);
                batch_norm(&mut specs, "stem.bn", widths[0]);
                let mut cin = widths[0];
                for (s, &cout) in widths.iter().enumerate() {
                    for b in 0..*blocks {
                        let pre = format!("stages.{s}.{b}");
                        conv2d(&mut specs, &format!("{pre}.conv1"), cin, cout, 3, false);
                        batch_norm(&mut specs, &format!("{pre}.bn1"), cout);
                        conv2d(&mut specs, &format!("{pre}.conv2"), cout, cout, 3, false);
                        batch_norm(&mut specs, &format!("{pre}.bn2"), cout);
                        if resnet_block_stride(s, b) != 1 || cin != cout {
                            conv2d(
                                &mut specs,
                                &format!("{pre}.shortcut.conv"),
                                cin,
                                cout,
                                1,
                                false,
                            );
                            batch_norm(&mut specs, &format!("{pre}.shortcut.bn"), cout);
                        }
                        cin = cout;
                    }
                }
                linear(&mut specs, "fc", cin, classes);
            }
        }
        let total = specs.iter().try_fold(0usize, |acc, s| {
            s.shape
                .iter()
                .try_fold(1usize, |a, &b| a.checked_mul(b))
                .and_then(|n| acc.checked_add(n))
        });
        match total {
            Some(n) if n <= MAX_PARAMS => Ok(specs),
            _ => bad(format!("more than {MAX_PARAMS} parameters")),
        }
    }
}

/// Spatial size of the CNN's features after conv-pool-conv-pool (valid 3×3 convolutions).
pub(crate) fn cnn_feature_hw(h: usize, w: usize) -> Option<(usize, usize)> {
    let f = |x: usize| -> Option<usize> {
        let a = x.checked_sub(2)? / 2;
        let b = a.checked_sub(2)? / 2;
        (b > 0).then_some(b)
    };
    Some((f(h)?, f(w)?))
}

/// Stride of block `b` of stage `s`: stages after the first start by halving the resolution.
pub(crate) fn resnet_block_stride(s: usize, b: usize) -> usize {
    if s > 0 && b == 0 { 2 } else { 1 }
}

fn linear(specs: &mut Vec<ParamSpec>, name: &str, fan_in: usize, fan_out: usize) {
    let bound = 1.0 / (fan_in as f32).sqrt();
    specs.push(ParamSpec {
        name: format!("{name}.weight"),
        shape: vec![fan_out, fan_in],
        init: Init::Uniform(bound),
    });
    specs.push(ParamSpec {
        name: format!("{name}.bias"),
        shape: vec![fan_out],
        init: Init::Uniform(bound),
    });
}

fn conv2d(specs: &mut Vec<ParamSpec>, name: &str, cin: usize, cout: usize, k: usize, bias: bool) {
    let bound = 1.0 / ((cin * k * k) as f32).sqrt();
    specs.push(ParamSpec {
        name: format!("{name}.weight"),
        shape: vec![cout, cin, k, k],
        init: Init::Uniform(bound),
    });
    if bias {
        specs.push(ParamSpec {
            name: format!("{name}.bias"),
            shape: vec![cout],
            init: Init::Uniform(bound),
        });
    }
}

fn batch_norm(specs: &mut Vec<ParamSpec>, name: &str, c: usize) {
    for (suffix, init) in [
        ("weight", Init::Ones),
        ("bias", Init::Zeros),
        ("running_mean", Init::Zeros),
        ("running_var", Init::Ones),
    ] {
        specs.push(ParamSpec {
            name: format!("{name}.{suffix}"),
            shape: vec![c],
            init,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mnist_cnn_has_the_reference_shapes() {
        let specs = Arch::mnist_cnn(0.0).params().unwrap();
        let fc1 = specs.iter().find(|s| s.name == "fc1.weight").unwrap();
        assert_eq!(fc1.shape, vec![128, 1600]);
        let n: usize = specs
            .iter()
            .map(|s| s.shape.iter().product::<usize>())
            .sum();
        // 320 + 18496 + 204928 + 1290 parameters, as in PyTorch.
        assert_eq!(n, 225_034);
    }

    #[test]
    fn bad_architectures_are_errors() {
        let tiny = Arch::Cnn {
            channels: 1,
            height: 6,
            width: 28,
            conv: [4, 4],
            fc: 8,
            classes: 10,
            dropout: 0.0,
        };
        assert!(tiny.params().is_err());
        let huge = Arch::Mlp {
            input_shape: vec![1 << 16, 1 << 16],
            hidden: vec![],
            classes: 10,
            dropout: 0.0,
        };
        assert!(huge.params().is_err());
        assert!(Arch::small_resnet(3, 1).params().is_err());
        let json = r#"{"kind":"mlp","input_shape":[4],"hidden":[],"classes":3,"extra":1}"#;
        assert!(serde_json::from_str::<Arch>(json).is_err());
    }

    #[test]
    fn resnet_has_projection_shortcuts_where_shapes_change() {
        let specs = Arch::small_resnet(3, 10).params().unwrap();
        let shortcuts: Vec<_> = specs
            .iter()
            .filter(|s| s.name.ends_with("shortcut.conv.weight"))
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(
            shortcuts,
            [
                "stages.1.0.shortcut.conv.weight",
                "stages.2.0.shortcut.conv.weight"
            ]
        );
    }
}
