//! The benchmark baseline: the same ONNX model through the same tract runtime and the same OIP
//! codec, behind a plain endpoint with no guards ([`palisade_gateway::baseline`]: no keys, limits,
//! validation beyond decoding, hardening, audit or metrics).
//!
//! `cargo run --release -p palisade-gateway --features tract --example bare_endpoint -- MODEL.onnx 127.0.0.1:9000`
//!
//! To compare it with `palisade serve`, build it as `bench/gateway_common.sh` does, in one cargo
//! invocation with `-p palisade-cli`: built alone, its dependencies (tract's among them) get other
//! features than in `palisade`, and tract other machine code.

use std::sync::Arc;

use palisade_core::Classifier;
use palisade_gateway::loader::Runtime as _;
use palisade_gateway::pool::InferencePool;
use palisade_gateway::tract_runtime::TractRuntime;

/// The allocator `palisade` uses (see its `main.rs`), so that the comparison is of the guards,
/// not of allocators.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let model = args.next().ok_or("usage: bare_endpoint MODEL.onnx ADDR")?;
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:9000".into());
    let path = std::path::Path::new(&model);
    let loaded = TractRuntime::default().load(path, &std::fs::read(path)?)?;
    let clf: Arc<dyn Classifier> = loaded.classifier;
    // One inference thread per core, as `palisade serve` runs by default.
    let inference = Arc::new(InferencePool::new(None, None)?);
    let app = palisade_gateway::baseline::router(clf, inference, "mnist", "1", &loaded.output_name);
    // As many async workers as `palisade serve` runs by default.
    let rt = palisade_gateway::pool::async_runtime(None)?;
    rt.block_on(async move {
        let l = tokio::net::TcpListener::bind(&addr).await?;
        eprintln!("bare endpoint on http://{addr}");
        axum::serve(l, app).await
    })?;
    Ok(())
}
