//! Shared by the CLI's integration tests.

use std::path::Path;

/// A model repository in `dir` (`repo/mnist/1`: the bundled model, unsigned) with `policy` as
/// the model's policy.
pub fn repository(dir: &Path, policy: &str) {
    let version = dir.join("repo/mnist/1");
    std::fs::create_dir_all(&version).unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::fs::copy(
        root.join("models/mnist_cnn_public.onnx"),
        version.join("model.onnx"),
    )
    .unwrap();
    std::fs::write(version.join("policy.toml"), policy).unwrap();
}
