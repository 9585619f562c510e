//! Test support: building small ONNX graphs in memory, reading NPY files and MNIST labels.
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};

use prost::Message;
use tract_onnx::pb;

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A float tensor initializer.
pub fn tensor(name: &str, dims: &[i64], data: Vec<f32>) -> pb::TensorProto {
    assert_eq!(dims.iter().product::<i64>() as usize, data.len(), "{name}");
    pb::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: 1,
        raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

/// An int64 tensor initializer.
pub fn tensor_i64(name: &str, dims: &[i64], data: Vec<i64>) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: 7,
        int64_data: data,
        ..Default::default()
    }
}

/// Deterministic pseudo-random values in [-scale, scale].
pub fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

pub enum A {
    I(i64),
    F(f32),
    Is(Vec<i64>),
    Fs(Vec<f32>),
    S(&'static str),
    T(Box<pb::TensorProto>),
}

pub fn attr(name: &str, a: A) -> pb::AttributeProto {
    let mut p = pb::AttributeProto {
        name: name.into(),
        ..Default::default()
    };
    match a {
        A::I(v) => {
            p.i = v;
            p.r#type = 2;
        }
        A::F(v) => {
            p.f = v;
            p.r#type = 1;
        }
        A::Is(v) => {
            p.ints = v;
            p.r#type = 7;
        }
        A::Fs(v) => {
            p.floats = v;
            p.r#type = 6;
        }
        A::S(v) => {
            p.s = v.as_bytes().to_vec();
            p.r#type = 3;
        }
        A::T(t) => {
            p.t = Some(*t);
            p.r#type = 4;
        }
    }
    p
}

pub fn node(
    op: &str,
    name: &str,
    inputs: &[&str],
    outputs: &[&str],
    attrs: Vec<pb::AttributeProto>,
) -> pb::NodeProto {
    pb::NodeProto {
        op_type: op.into(),
        name: name.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        attribute: attrs,
        ..Default::default()
    }
}

fn value_info(name: &str, shape: &[Option<i64>]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{Dimension, dimension::Value};
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: 1,
                shape: Some(pb::TensorShapeProto {
                    dim: shape
                        .iter()
                        .map(|d| Dimension {
                            value: Some(match d {
                                Some(v) => Value::DimValue(*v),
                                None => Value::DimParam("N".into()),
                            }),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A model with input `x` of per-sample shape `input` (symbolic batch) and output `y`.
pub fn model(
    opset: i64,
    input: &[i64],
    nodes: Vec<pb::NodeProto>,
    inits: Vec<pb::TensorProto>,
) -> pb::ModelProto {
    let mut ishape = vec![None];
    ishape.extend(input.iter().map(|&d| Some(d)));
    pb::ModelProto {
        ir_version: 8,
        producer_name: "palisade-tests".into(),
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: opset,
        }],
        graph: Some(pb::GraphProto {
            name: "g".into(),
            node: nodes,
            initializer: inits,
            input: vec![value_info("x", &ishape)],
            output: vec![value_info("y", &[None, None])],
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn encode(m: &pb::ModelProto) -> Vec<u8> {
    m.encode_to_vec()
}

/// Reads a little-endian float32 C-order NPY file: (shape, values).
pub fn read_npy(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..6], b"\x93NUMPY", "{path:?}");
    let (hlen, start) = if bytes[6] == 1 {
        (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10)
    } else {
        (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        )
    };
    let header = std::str::from_utf8(&bytes[start..start + hlen]).unwrap();
    assert!(header.contains("'descr': '<f4'"), "{header}");
    assert!(header.contains("'fortran_order': False"), "{header}");
    let shape_str = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap();
    let shape: Vec<usize> = shape_str
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    let data: Vec<f32> = bytes[start + hlen..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(data.len(), shape.iter().product::<usize>());
    (shape, data)
}

/// The first `n` labels of a gzipped IDX1 label file.
pub fn read_idx_labels(path: &Path, n: usize) -> Vec<usize> {
    let mut gz = flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap());
    let mut bytes = Vec::new();
    gz.read_to_end(&mut bytes).unwrap();
    assert_eq!(
        u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
        2049
    );
    bytes[8..8 + n].iter().map(|&b| b as usize).collect()
}
