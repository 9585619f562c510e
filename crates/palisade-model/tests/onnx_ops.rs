//! Per-operator tests: small graphs built here, run by tract and by the interpreter; logits
//! must agree and the interpreter's input gradients must match finite differences.

mod common;

use common::{A, attr, model, node, tensor, tensor_i64, values};
use palisade_core::{Classifier, InputRange};
use palisade_model::check::{CheckOptions, measure};
use palisade_model::onnx::{OnnxError, OnnxModel, OnnxOptions};
use tract_onnx::pb;

fn opts() -> OnnxOptions {
    OnnxOptions {
        input_range: Some(InputRange {
            min: -1.0,
            max: 1.0,
        }),
        input_shape: None,
    }
}

/// Opens the model, compares interpreter and tract logits, and gradients with finite
/// differences.
///
/// With `PALISADE_FUZZ_SEEDS=DIR` in the environment, also writes the model's bytes to
/// `DIR/<name>.onnx`: the small graphs of every operator that seed the `onnx_open` fuzz target
/// (`fuzz/seeds/onnx_open`) come from here.
fn check(name: &str, m: pb::ModelProto) {
    let bytes = common::encode(&m);
    if let Some(dir) = std::env::var_os("PALISADE_FUZZ_SEEDS") {
        let file: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let path = std::path::Path::new(&dir).join(format!("{file}.onnx"));
        std::fs::write(&path, &bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    let model = OnnxModel::from_bytes(&bytes, name, &opts())
        .unwrap_or_else(|e| panic!("{name}: cannot open: {e}"));
    if let Err(e) = model.interpreter_status() {
        panic!("{name}: interpreter: {e}");
    }
    let (l, g) = measure(
        &model,
        &CheckOptions {
            samples: 3,
            coords: 64,
            step: 1e-3,
            seed: 7,
            ..CheckOptions::default()
        },
    )
    .unwrap_or_else(|e| panic!("{name}: {e}"));
    let tol = 1e-4 * l.max_abs_logit.max(1.0);
    assert!(
        l.max_abs_diff <= tol,
        "{name}: logits differ by {} (scale {})",
        l.max_abs_diff,
        l.max_abs_logit
    );
    assert!(
        g.cosine_min >= 0.999,
        "{name}: gradient cosine {} (mean {}, rel err {})",
        g.cosine_min,
        g.cosine_mean,
        g.rel_error_max
    );
}

/// `x [N, ...]` → op → Flatten → `y`.
fn single(
    opset: i64,
    input: &[i64],
    n: pb::NodeProto,
    inits: Vec<pb::TensorProto>,
) -> pb::ModelProto {
    let flat = node("Flatten", "flat", &["h"], &["y"], vec![]);
    model(opset, input, vec![n, flat], inits)
}

#[test]
fn conv_2d_asymmetric_pads_strides_bias() {
    let w = tensor("w", &[3, 2, 3, 3], values(54, 1, 0.5));
    let b = tensor("b", &[3], values(3, 2, 0.5));
    let n = node(
        "Conv",
        "conv",
        &["x", "w", "b"],
        &["h"],
        vec![
            attr("pads", A::Is(vec![1, 0, 1, 2])),
            attr("strides", A::Is(vec![2, 1])),
            attr("kernel_shape", A::Is(vec![3, 3])),
        ],
    );
    check("conv2d", single(13, &[2, 6, 6], n, vec![w, b]));
}

#[test]
fn conv_2d_groups_dilation_same_upper() {
    let w = tensor("w", &[4, 1, 2, 2], values(16, 3, 0.5));
    let n = node(
        "Conv",
        "conv",
        &["x", "w"],
        &["h"],
        vec![
            attr("group", A::I(2)),
            attr("dilations", A::Is(vec![2, 2])),
            attr("auto_pad", A::S("SAME_UPPER")),
        ],
    );
    check("conv2d-groups", single(13, &[2, 7, 7], n, vec![w]));
}

#[test]
fn conv_1d() {
    let w = tensor("w", &[4, 2, 3], values(24, 4, 0.5));
    let n = node(
        "Conv",
        "conv",
        &["x", "w"],
        &["h"],
        vec![
            attr("strides", A::Is(vec![2])),
            attr("pads", A::Is(vec![1, 1])),
        ],
    );
    check("conv1d", single(13, &[2, 9], n, vec![w]));
}

#[test]
fn gemm_trans_b_alpha_beta() {
    let w = tensor("w", &[4, 6], values(24, 5, 0.5));
    let c = tensor("c", &[4], values(4, 6, 0.5));
    let n = node(
        "Gemm",
        "fc",
        &["x", "w", "c"],
        &["y"],
        vec![
            attr("transB", A::I(1)),
            attr("alpha", A::F(0.5)),
            attr("beta", A::F(2.0)),
        ],
    );
    check("gemm", model(13, &[6], vec![n], vec![w, c]));
}

#[test]
fn gemm_trans_a_no_bias() {
    let w = tensor("w", &[6, 3], values(18, 7, 0.5));
    let t = node("Transpose", "t", &["x"], &["xt"], vec![]);
    let n = node(
        "Gemm",
        "fc",
        &["xt", "w"],
        &["y"],
        vec![attr("transA", A::I(1))],
    );
    check("gemm-transA", model(13, &[6], vec![t, n], vec![w]));
}

#[test]
fn matmul_batched_and_vector() {
    let w = tensor("w", &[3, 4], values(12, 8, 0.5));
    let v = tensor("v", &[4], values(4, 9, 0.5));
    let m1 = node("MatMul", "mm", &["x", "w"], &["h"], vec![]);
    let m2 = node("MatMul", "mv", &["h", "v"], &["y"], vec![]);
    check("matmul", model(13, &[2, 3], vec![m1, m2], vec![w, v]));
}

#[test]
fn arithmetic_with_broadcasting() {
    let b = tensor("b", &[4], values(4, 10, 0.5));
    let s = tensor("s", &[1, 4], values(4, 11, 2.0));
    let d = tensor("d", &[], vec![1.7]);
    let k = tensor("k", &[4], vec![2.0, 3.0, 1.5, 2.5]);
    let nodes = vec![
        node("Add", "add", &["x", "b"], &["a"], vec![]),
        node("Mul", "mul", &["a", "s"], &["m"], vec![]),
        node("Div", "div", &["m", "d"], &["q"], vec![]),
        node("Sub", "sub", &["q", "x"], &["r"], vec![]),
        node("Div", "div2", &["b", "k"], &["bk"], vec![]),
        node("Mul", "mul2", &["r", "x"], &["r2"], vec![]),
        node("Add", "add2", &["r2", "bk"], &["y"], vec![]),
    ];
    check("arith", model(13, &[4], nodes, vec![b, s, d, k]));
}

#[test]
fn activations() {
    let nodes = vec![
        node("Relu", "relu", &["x"], &["a"], vec![]),
        node(
            "LeakyRelu",
            "lrelu",
            &["x"],
            &["b"],
            vec![attr("alpha", A::F(0.2))],
        ),
        node("Sigmoid", "sig", &["x"], &["c"], vec![]),
        node("Tanh", "tanh", &["x"], &["d"], vec![]),
        node("Gelu", "gelu", &["x"], &["e"], vec![]),
        node(
            "Gelu",
            "gelu_t",
            &["x"],
            &["f"],
            vec![attr("approximate", A::S("tanh"))],
        ),
        node("Erf", "erf", &["x"], &["g"], vec![]),
        node(
            "Concat",
            "cat",
            &["a", "b", "c", "d", "e", "f", "g"],
            &["y"],
            vec![attr("axis", A::I(1))],
        ),
    ];
    check("activations", model(20, &[5], nodes, vec![]));
}

#[test]
fn softmax_and_log_softmax() {
    let nodes = vec![
        node(
            "Softmax",
            "sm",
            &["x"],
            &["a"],
            vec![attr("axis", A::I(-1))],
        ),
        node(
            "LogSoftmax",
            "lsm",
            &["x"],
            &["b"],
            vec![attr("axis", A::I(1))],
        ),
        node(
            "Concat",
            "cat",
            &["a", "b"],
            &["h"],
            vec![attr("axis", A::I(2))],
        ),
        node("Flatten", "flat", &["h"], &["y"], vec![]),
    ];
    check("softmax-13", model(13, &[2, 3], nodes.clone(), vec![]));
    // Opset 11: softmax over the flattened trailing dimensions.
    check("softmax-11", model(11, &[2, 3], nodes, vec![]));
}

#[test]
fn max_pool() {
    let n = node(
        "MaxPool",
        "mp",
        &["x"],
        &["h"],
        vec![
            attr("kernel_shape", A::Is(vec![3, 2])),
            attr("strides", A::Is(vec![2, 2])),
            attr("pads", A::Is(vec![1, 0, 1, 1])),
        ],
    );
    check("maxpool2d", single(13, &[2, 7, 6], n, vec![]));
    let n = node(
        "MaxPool",
        "mp",
        &["x"],
        &["h"],
        vec![
            attr("kernel_shape", A::Is(vec![2, 2])),
            attr("ceil_mode", A::I(1)),
            attr("strides", A::Is(vec![2, 2])),
        ],
    );
    check("maxpool2d-ceil", single(13, &[1, 5, 5], n, vec![]));
    let n = node(
        "MaxPool",
        "mp",
        &["x"],
        &["h"],
        vec![
            attr("kernel_shape", A::Is(vec![3])),
            attr("strides", A::Is(vec![2])),
        ],
    );
    check("maxpool1d", single(13, &[2, 9], n, vec![]));
}

#[test]
fn average_and_global_pools() {
    for count in [0, 1] {
        let n = node(
            "AveragePool",
            "ap",
            &["x"],
            &["h"],
            vec![
                attr("kernel_shape", A::Is(vec![3, 3])),
                attr("strides", A::Is(vec![2, 2])),
                attr("pads", A::Is(vec![1, 1, 1, 1])),
                attr("count_include_pad", A::I(count)),
            ],
        );
        check("avgpool2d", single(13, &[2, 6, 6], n, vec![]));
    }
    let n = node(
        "AveragePool",
        "ap",
        &["x"],
        &["h"],
        vec![attr("kernel_shape", A::Is(vec![2]))],
    );
    check("avgpool1d", single(13, &[3, 6], n, vec![]));
    let nodes = vec![
        node("GlobalAveragePool", "gap", &["x"], &["a"], vec![]),
        node("GlobalMaxPool", "gmp", &["x"], &["b"], vec![]),
        node(
            "Concat",
            "cat",
            &["a", "b"],
            &["h"],
            vec![attr("axis", A::I(1))],
        ),
        node("Flatten", "flat", &["h"], &["y"], vec![]),
    ];
    check("global-pools", model(13, &[3, 4, 5], nodes, vec![]));
}

#[test]
fn batch_normalization() {
    let inits = vec![
        tensor("g", &[3], vec![1.5, 0.5, -1.0]),
        tensor("b", &[3], vec![0.1, -0.2, 0.3]),
        tensor("m", &[3], vec![0.05, 0.1, -0.1]),
        tensor("v", &[3], vec![0.5, 2.0, 1.0]),
    ];
    let n = node(
        "BatchNormalization",
        "bn",
        &["x", "g", "b", "m", "v"],
        &["h"],
        vec![attr("epsilon", A::F(1e-3))],
    );
    check("batchnorm", single(15, &[3, 4, 4], n, inits));
}

#[test]
fn shape_manipulation() {
    let nodes = vec![
        node(
            "Transpose",
            "tr",
            &["x"],
            &["t"],
            vec![attr("perm", A::Is(vec![0, 2, 1, 3]))],
        ),
        node("Reshape", "rs", &["t", "shape"], &["r"], vec![]),
        node("Unsqueeze", "us", &["r", "ax1"], &["u"], vec![]),
        node("Squeeze", "sq", &["u", "ax1"], &["s"], vec![]),
        node("Identity", "id", &["s"], &["i"], vec![]),
        node("Dropout", "do", &["i"], &["d"], vec![]),
        node(
            "Constant",
            "k",
            &[],
            &["kc"],
            vec![attr(
                "value",
                A::T(Box::new(tensor("kv", &[1, 12], values(12, 50, 1.0)))),
            )],
        ),
        node("Mul", "mk", &["d", "kc"], &["dk"], vec![]),
        node("Flatten", "fl", &["dk"], &["y"], vec![]),
    ];
    let inits = vec![
        tensor_i64("shape", &[2], vec![0, -1]),
        tensor_i64("ax1", &[1], vec![1]),
    ];
    check("shape-ops-13", model(13, &[2, 3, 2], nodes, inits));
    // Opset 11: Squeeze/Unsqueeze axes as attributes.
    let nodes = vec![
        node(
            "Unsqueeze",
            "us",
            &["x"],
            &["u"],
            vec![attr("axes", A::Is(vec![1, -1]))],
        ),
        node(
            "Squeeze",
            "sq",
            &["u"],
            &["s"],
            vec![attr("axes", A::Is(vec![-1]))],
        ),
        node("Flatten", "fl", &["s"], &["y"], vec![attr("axis", A::I(1))]),
    ];
    check("shape-ops-11", model(11, &[3, 2], nodes, vec![]));
}

#[test]
fn torch_style_dynamic_flatten() {
    // x.view(x.size(0), -1) as exported: Shape → Gather → Unsqueeze → Concat → Reshape.
    let nodes = vec![
        node("Shape", "shape", &["x"], &["s"], vec![]),
        node(
            "Gather",
            "g",
            &["s", "zero"],
            &["n"],
            vec![attr("axis", A::I(0))],
        ),
        node("Unsqueeze", "u", &["n", "ax0"], &["n1"], vec![]),
        node(
            "Concat",
            "c",
            &["n1", "minus1"],
            &["target"],
            vec![attr("axis", A::I(0))],
        ),
        node("Reshape", "r", &["x", "target"], &["h"], vec![]),
        node(
            "Gemm",
            "fc",
            &["h", "w"],
            &["y"],
            vec![attr("transB", A::I(1))],
        ),
    ];
    let inits = vec![
        tensor_i64("zero", &[], vec![0]),
        tensor_i64("ax0", &[1], vec![0]),
        tensor_i64("minus1", &[1], vec![-1]),
        tensor("w", &[3, 12], values(36, 12, 0.5)),
    ];
    check("dynamic-flatten", model(13, &[3, 2, 2], nodes, inits));
}

#[test]
fn pad_modes() {
    // Each mode against values worked out here (numpy's `pad` semantics, which ONNX's
    // reference follows), through tract and through the interpreter; then gradients.
    let x: Vec<f32> = (0..32).map(|v| v as f32 / 32.0).collect();
    let input = ndarray::ArrayD::from_shape_vec(vec![1, 2, 4, 4], x.clone()).unwrap();
    for mode in ["constant", "reflect", "edge"] {
        let bytes = common::encode(&pad_model(mode));
        let m = OnnxModel::from_bytes(&bytes, mode, &opts()).unwrap();
        let want = expected_pad(mode, &x);
        let tract = m.logits(input.view()).unwrap();
        let interp = m.interpreter_logits(input.view()).unwrap();
        assert_eq!(tract.len(), want.len(), "{mode}: output length");
        for (i, w) in want.iter().enumerate() {
            assert!(
                (tract[[0, i]] - w).abs() < 1e-6,
                "{mode}: tract [{i}] {} vs {w}",
                tract[[0, i]]
            );
            assert!(
                (interp[[0, i]] - w).abs() < 1e-6,
                "{mode}: interpreter [{i}] {} vs {w}",
                interp[[0, i]]
            );
        }
        check(mode, pad_model(mode));
    }
}

/// What `pad_model(mode)` computes on one `[2, 4, 4]` input, flattened: rows padded 1 before
/// and 2 after, columns 2 before and 1 after.
fn expected_pad(mode: &str, x: &[f32]) -> Vec<f32> {
    let src = |p: i64, n: i64| -> Option<i64> {
        match mode {
            "constant" => (0..n).contains(&p).then_some(p),
            "edge" => Some(p.clamp(0, n - 1)),
            // Mirror without repeating the edge; these pads are shorter than the axis.
            "reflect" => Some(if p < 0 {
                -p
            } else if p >= n {
                2 * (n - 1) - p
            } else {
                p
            }),
            _ => unreachable!(),
        }
    };
    let mut out = Vec::new();
    for c in 0..2i64 {
        for r in -1..6i64 {
            for k in -2..5i64 {
                out.push(match (src(r, 4), src(k, 4)) {
                    (Some(r), Some(k)) => x[(c * 16 + r * 4 + k) as usize],
                    _ => 0.3,
                });
            }
        }
    }
    out
}

/// A Pad node (pads 1/2 before and 2/1 after the two spatial axes) on `[N, 2, 4, 4]`.
fn pad_model(mode: &'static str) -> pb::ModelProto {
    // ONNX reads the constant only in `constant` mode; the other modes have it too, to check
    // that it is ignored (tract alone pads with it: the loader drops it for tract).
    let n = node(
        "Pad",
        "pad",
        &["x", "pads", "v"],
        &["h"],
        vec![attr("mode", A::S(mode))],
    );
    let inits = vec![
        tensor_i64("pads", &[8], vec![0, 0, 1, 2, 0, 0, 2, 1]),
        tensor("v", &[], vec![0.3]),
    ];
    single(13, &[2, 4, 4], n, inits)
}

#[test]
fn clip_inputs_and_attributes() {
    let n = node("Clip", "clip", &["x", "lo", "hi"], &["y"], vec![]);
    check(
        "clip-13",
        model(
            13,
            &[6],
            vec![n],
            vec![tensor("lo", &[], vec![-0.5]), tensor("hi", &[], vec![0.4])],
        ),
    );
    let n = node("Clip", "clip", &["x", "", "hi"], &["y"], vec![]);
    check(
        "clip-13-max",
        model(13, &[6], vec![n], vec![tensor("hi", &[], vec![0.4])]),
    );
    let n = node(
        "Clip",
        "clip",
        &["x"],
        &["y"],
        vec![attr("min", A::F(-0.3)), attr("max", A::F(0.6))],
    );
    check("clip-6", model(6, &[6], vec![n], vec![]));
}

#[test]
fn reductions_and_elementwise_math() {
    let nodes = vec![
        node(
            "ReduceMean",
            "rm",
            &["x"],
            &["m"],
            vec![attr("axes", A::Is(vec![2])), attr("keepdims", A::I(1))],
        ),
        node("Sub", "c", &["x", "m"], &["d"], vec![]),
        node("Mul", "sq", &["d", "d"], &["d2"], vec![]),
        node(
            "ReduceMean",
            "var",
            &["d2"],
            &["v"],
            vec![attr("axes", A::Is(vec![-1]))],
        ),
        node("Add", "eps", &["v", "e"], &["ve"], vec![]),
        node("Sqrt", "sqrt", &["ve"], &["s"], vec![]),
        node("Div", "norm", &["d", "s"], &["h"], vec![]),
        node("Exp", "exp", &["h"], &["ex"], vec![]),
        node("Add", "one", &["ex", "e1"], &["ex1"], vec![]),
        node("Log", "log", &["ex1"], &["lg"], vec![]),
        node("Flatten", "fl", &["lg"], &["y"], vec![]),
    ];
    let inits = vec![tensor("e", &[], vec![1e-2]), tensor("e1", &[], vec![1.0])];
    check("layernorm-like", model(13, &[2, 4], nodes, inits));
}

#[test]
fn a_small_cnn_end_to_end() {
    let nodes = vec![
        node(
            "Conv",
            "c1",
            &["x", "w1", "b1"],
            &["a"],
            vec![attr("pads", A::Is(vec![1, 1, 1, 1]))],
        ),
        node(
            "BatchNormalization",
            "bn",
            &["a", "g", "b", "m", "v"],
            &["bn"],
            vec![],
        ),
        node("Relu", "r1", &["bn"], &["r"], vec![]),
        node(
            "MaxPool",
            "p1",
            &["r"],
            &["p"],
            vec![
                attr("kernel_shape", A::Is(vec![2, 2])),
                attr("strides", A::Is(vec![2, 2])),
            ],
        ),
        node("Flatten", "f", &["p"], &["f"], vec![]),
        node(
            "Gemm",
            "fc",
            &["f", "w2", "b2"],
            &["z"],
            vec![attr("transB", A::I(1))],
        ),
        node(
            "LogSoftmax",
            "ls",
            &["z"],
            &["y"],
            vec![attr("axis", A::I(1))],
        ),
    ];
    let inits = vec![
        tensor("w1", &[4, 1, 3, 3], values(36, 20, 0.5)),
        tensor("b1", &[4], values(4, 21, 0.1)),
        tensor("g", &[4], vec![1.0, 0.8, 1.2, 0.9]),
        tensor("b", &[4], vec![0.0, 0.1, -0.1, 0.05]),
        tensor("m", &[4], vec![0.0, 0.05, -0.05, 0.1]),
        tensor("v", &[4], vec![1.0, 0.5, 2.0, 1.5]),
        tensor("w2", &[5, 36], values(180, 22, 0.3)),
        tensor("b2", &[5], values(5, 23, 0.1)),
    ];
    check("small-cnn", model(13, &[1, 6, 6], nodes, inits));
}

#[test]
fn unsupported_op_is_a_named_error() {
    let n = node("Selu", "my_selu", &["x"], &["y"], vec![]);
    let bytes = common::encode(&model(13, &[4], vec![n], vec![]));
    let m = OnnxModel::from_bytes(&bytes, "selu", &opts()).unwrap();
    match m.interpreter_status() {
        Err(OnnxError::UnsupportedOp { op, node }) => {
            assert_eq!(op, "Selu");
            assert_eq!(node, "my_selu");
        }
        other => panic!("expected UnsupportedOp, got {other:?}"),
    }
    let msg = m.interpreter_status().unwrap_err().to_string();
    assert!(msg.contains("Selu") && msg.contains("my_selu"), "{msg}");
    // Black-box access still works through tract; white-box access is refused.
    assert!(m.as_differentiable().is_none());
    let x = ndarray::ArrayD::<f32>::zeros(ndarray::IxDyn(&[2, 4]));
    assert_eq!(m.logits(x.view()).unwrap().dim(), (2, 4));
    assert!(m.summary().unsupported_ops.contains_key("Selu"));
}

#[test]
fn corrupt_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let real = std::fs::read(common::repo().join("models/mnist_cnn_public.onnx")).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        (
            "garbage",
            values(4096, 99, 1.0)
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
        ("truncated", real[..real.len() / 2].to_vec()),
        ("text", b"this is not a model".to_vec()),
    ];
    for (name, bytes) in cases {
        let p = dir.path().join(format!("{name}.onnx"));
        std::fs::write(&p, &bytes).unwrap();
        let e = OnnxModel::open(&p, &OnnxOptions::default()).expect_err(name);
        let msg = e.to_string();
        assert!(!msg.is_empty(), "{name}");
        assert!(
            palisade_model::open(&p, &Default::default()).is_err(),
            "{name}"
        );
    }
    let missing = dir.path().join("missing.onnx");
    assert!(matches!(
        OnnxModel::open(&missing, &OnnxOptions::default()),
        Err(OnnxError::Io { .. })
    ));
}

#[test]
fn malformed_graphs_are_errors_not_panics() {
    // A Gemm whose weight does not fit the input: tract refuses it.
    let w = tensor("w", &[4, 5], values(20, 30, 0.5));
    let n = node(
        "Gemm",
        "fc",
        &["x", "w"],
        &["y"],
        vec![attr("transB", A::I(1))],
    );
    let bytes = common::encode(&model(13, &[6], vec![n], vec![w]));
    assert!(OnnxModel::from_bytes(&bytes, "bad", &opts()).is_err());
    // A node reading a value nobody produces.
    let n = node("Relu", "r", &["nope"], &["y"], vec![]);
    let bytes = common::encode(&model(13, &[6], vec![n], vec![]));
    assert!(OnnxModel::from_bytes(&bytes, "dangling", &opts()).is_err());
    // An Unsqueeze past the rank: tract-hir 0.23.9 panics while inferring its shape (found by
    // the `onnx_open` fuzz target); the panic is caught and the model refused.
    let n = node(
        "Unsqueeze",
        "u",
        &["x"],
        &["y"],
        vec![attr("axes", A::Is(vec![5]))],
    );
    let bytes = common::encode(&model(11, &[6], vec![n], vec![]));
    let err = OnnxModel::from_bytes(&bytes, "unsqueeze", &opts()).unwrap_err();
    assert!(
        err.to_string().contains("tract: panicked on this model"),
        "{err}"
    );
}

fn external_model(location: &str) -> pb::ModelProto {
    let mut w = tensor("w", &[3, 4], vec![0.0; 12]);
    w.raw_data.clear();
    w.data_location = Some(1);
    w.external_data = vec![
        pb::StringStringEntryProto {
            key: "location".into(),
            value: location.into(),
        },
        pb::StringStringEntryProto {
            key: "offset".into(),
            value: "4".into(),
        },
        pb::StringStringEntryProto {
            key: "length".into(),
            value: "48".into(),
        },
    ];
    let n = node(
        "Gemm",
        "fc",
        &["x", "w"],
        &["y"],
        vec![attr("transB", A::I(1))],
    );
    model(13, &[4], vec![n], vec![w])
}

#[test]
fn external_data_only_inside_the_model_directory() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("model");
    std::fs::create_dir(&sub).unwrap();
    let weights = values(12, 40, 1.0);
    let mut blob = vec![0u8; 4];
    blob.extend(weights.iter().flat_map(|v| v.to_le_bytes()));
    std::fs::write(sub.join("weights.bin"), &blob).unwrap();
    std::fs::write(dir.path().join("outside.bin"), &blob).unwrap();

    let ok = sub.join("ok.onnx");
    std::fs::write(&ok, common::encode(&external_model("weights.bin"))).unwrap();
    let m = OnnxModel::open(&ok, &opts()).unwrap();
    let x =
        ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[1, 4]), vec![1.0, 0.0, 0.0, 0.0]).unwrap();
    let z = m.logits(x.view()).unwrap();
    assert_eq!(z.row(0).to_vec(), vec![weights[0], weights[4], weights[8]]);
    assert_eq!(m.interpreter_logits(x.view()).unwrap(), z);

    for bad in ["../outside.bin", "/etc/passwd", "sub/../../outside.bin"] {
        let p = sub.join("bad.onnx");
        std::fs::write(&p, common::encode(&external_model(bad))).unwrap();
        match OnnxModel::open(&p, &opts()) {
            Err(OnnxError::ExternalData { location, .. }) => assert_eq!(location, bad),
            other => panic!("{bad}: expected ExternalData error, got {other:?}"),
        }
    }
    // From bytes there is no directory: external data is refused.
    let bytes = common::encode(&external_model("weights.bin"));
    assert!(matches!(
        OnnxModel::from_bytes(&bytes, "x", &opts()),
        Err(OnnxError::ExternalData { .. })
    ));
}
