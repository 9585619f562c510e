//! The benchmark baseline: the same ONNX model through the same tract runtime and the same OIP
//! codec, behind a plain endpoint with no guards (no keys, limits, validation beyond decoding,
//! hardening, audit or metrics).
//!
//! `cargo run --release -p palisade-gateway --example bare_endpoint -- MODEL.onnx 127.0.0.1:9000`

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use palisade_core::Classifier;
use palisade_gateway::loader::Runtime as _;
use palisade_gateway::oip::{self, InferRequest, OutputData, OutputTensor};
use palisade_gateway::tract_runtime::TractRuntime;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let model = args.next().ok_or("usage: bare_endpoint MODEL.onnx ADDR")?;
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:9000".into());
    let path = std::path::Path::new(&model);
    let loaded = TractRuntime::default().load(path, &std::fs::read(path)?)?;
    let clf: Arc<dyn Classifier> = loaded.classifier;
    let out_name = loaded.output_name;
    let app = Router::new().route(
        "/v2/models/{name}/infer",
        post(move |headers: HeaderMap, body: Bytes| {
            let clf = clf.clone();
            let out_name = out_name.clone();
            async move { infer(clf, out_name, headers, body).await }
        }),
    );
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let l = tokio::net::TcpListener::bind(&addr).await?;
        eprintln!("bare endpoint on http://{addr}");
        axum::serve(l, app).await
    })?;
    Ok(())
}

async fn infer(clf: Arc<dyn Classifier>, out: String, headers: HeaderMap, body: Bytes) -> Response {
    let h = headers
        .get(oip::HEADER_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let req: InferRequest = match oip::decode_request(&body, h) {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let Some(t) = req.inputs.first() else {
        return (StatusCode::BAD_REQUEST, "no input").into_response();
    };
    let x = match ndarray::ArrayD::from_shape_vec(t.shape.clone(), t.data.clone()) {
        Ok(x) => x,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let logits = match tokio::task::spawn_blocking(move || clf.logits(x.view())).await {
        Ok(Ok(l)) => l,
        _ => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    };
    let tensors = [OutputTensor {
        name: out,
        shape: vec![logits.nrows(), logits.ncols()],
        data: OutputData::F32(logits.iter().copied().collect()),
    }];
    match oip::encode_response("mnist", "1", &req, &tensors) {
        Ok(enc) => {
            let mut r = Response::new(Body::from(enc.body));
            if let Some(h) = enc.header_len {
                r.headers_mut()
                    .insert(oip::HEADER_LENGTH, h.to_string().parse().expect("digits"));
            }
            r
        }
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
