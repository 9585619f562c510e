//! End-to-end: `palisade model` on a model that makes tract panic.

use std::process::Command;

/// Protobuf wire format, enough for a small ONNX graph.
fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn int(field: u64, v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    varint(field << 3, &mut out);
    varint(v, &mut out);
    out
}

fn bytes(field: u64, b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    varint((field << 3) | 2, &mut out);
    varint(b.len() as u64, &mut out);
    out.extend_from_slice(b);
    out
}

fn message(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

/// `x [N, 6]` → `Unsqueeze(axes=[5])` → `y`, at opset 11: axis 5 is past the output's rank, and
/// tract-hir 0.23.9 panics while inferring the shape.
fn unsqueeze_past_rank() -> Vec<u8> {
    let attribute = message(&[bytes(1, b"axes"), int(8, 5), int(20, 7)]);
    let node = message(&[
        bytes(1, b"x"),
        bytes(2, b"y"),
        bytes(3, b"u"),
        bytes(4, b"Unsqueeze"),
        bytes(5, &attribute),
    ]);
    let dim = |d: &[u8]| bytes(1, d);
    let shape = message(&[dim(&bytes(2, b"N")), dim(&int(1, 6))]);
    let tensor_type = message(&[int(1, 1), bytes(2, &shape)]);
    let input = message(&[bytes(1, b"x"), bytes(2, &bytes(1, &tensor_type))]);
    let output = bytes(1, b"y");
    let graph = message(&[
        bytes(1, &node),
        bytes(2, b"g"),
        bytes(11, &input),
        bytes(12, &output),
    ]);
    message(&[int(1, 8), bytes(7, &graph), bytes(8, &int(2, 11))])
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
