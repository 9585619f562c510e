//! End-to-end: `palisade model` on a model that makes tract panic.

use std::process::Command;

use prost::Message;
use tract_onnx::pb;

/// `x [N, 6]` → `Unsqueeze(axes=[5])` → `y`, at opset 11: axis 5 is past the output's rank, and
/// tract-hir 0.23.9 panics while inferring the shape.
fn unsqueeze_past_rank() -> Vec<u8> {
    use pb::tensor_shape_proto::{Dimension, dimension::Value};
    let dim = |v| Dimension {
        value: Some(v),
        ..Default::default()
    };
    let input = pb::ValueInfoProto {
        name: "x".into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: 1,
                shape: Some(pb::TensorShapeProto {
                    dim: vec![dim(Value::DimParam("N".into())), dim(Value::DimValue(6))],
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    };
    let node = pb::NodeProto {
        op_type: "Unsqueeze".into(),
        name: "u".into(),
        input: vec!["x".into()],
        output: vec!["y".into()],
        attribute: vec![pb::AttributeProto {
            name: "axes".into(),
            ints: vec![5],
            r#type: 7,
            ..Default::default()
        }],
        ..Default::default()
    };
    pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 11,
        }],
        graph: Some(pb::GraphProto {
            name: "g".into(),
            node: vec![node],
            input: vec![input],
            output: vec![pb::ValueInfoProto {
                name: "y".into(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

#[test]
fn a_model_that_makes_tract_panic_is_refused_with_an_error_and_no_panic_message() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.onnx");
    std::fs::write(&path, unsqueeze_past_rank()).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["model", "check", path.to_str().unwrap()])
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        o.status.code(),
        Some(1),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(
        stdout.contains("tract: panicked on this model"),
        "stdout: {stdout}"
    );
    assert!(
        !stderr.contains("panicked at") && !stderr.contains("backtrace"),
        "stderr: {stderr}"
    );
}
