//! The benchmarks' baseline: a model behind a plain OIP infer route, with no guards.
//!
//! It decodes the request with the same codec as the gateway, runs the classifier on the same
//! kind of inference threads as the gateway ([`InferencePool`]), and encodes the logits the same
//! way; it checks no key, keeps no limit, validates nothing beyond decoding, writes no audit
//! entry and counts nothing. The difference between it and [`crate::Gateway::router`] on the same model is what the guards
//! cost (`bench/gateway_vs_bare.sh` over HTTP with the real model,
//! `benches/guard_chain.rs` in process with a small one). Not for serving.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use palisade_core::Classifier;

use crate::oip::{self, InferRequest, OutputData, OutputTensor};
use crate::pool::InferencePool;

/// `POST /v2/models/{name}/infer` answered by `clf` on `inference`'s threads, its output named
/// `output_name`, and the model reported as `name` version `version` in every response.
pub fn router(
    clf: Arc<dyn Classifier>,
    inference: Arc<InferencePool>,
    name: &str,
    version: &str,
    output_name: &str,
) -> Router {
    let ids: Arc<(String, String, String)> =
        Arc::new((name.into(), version.into(), output_name.into()));
    Router::new().route(
        "/v2/models/{name}/infer",
        post(move |headers: HeaderMap, body: Bytes| {
            let clf = clf.clone();
            let inference = inference.clone();
            let ids = ids.clone();
            async move { infer(clf, &inference, &ids, headers, body).await }
        }),
    )
}

async fn infer(
    clf: Arc<dyn Classifier>,
    inference: &InferencePool,
    (name, version, output_name): &(String, String, String),
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let h = headers
        .get(oip::HEADER_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let mut req: InferRequest = match oip::decode_request(&body, h) {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let Some(t) = req.inputs.first_mut() else {
        return (StatusCode::BAD_REQUEST, "no input").into_response();
    };
    // The batch takes the decoded values, as the gateway's validation does: no copy either side.
    let x = match ndarray::ArrayD::from_shape_vec(t.shape.clone(), std::mem::take(&mut t.data)) {
        Ok(x) => x,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let logits = match inference.run(move || clf.logits(x.view())).await {
        Ok(Ok(l)) => l,
        _ => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    };
    let tensors = [OutputTensor {
        name: output_name.clone(),
        shape: vec![logits.nrows(), logits.ncols()],
        data: OutputData::F32(logits.iter().copied().collect()),
    }];
    match oip::encode_response(name, version, &req, &tensors) {
        Ok(enc) => {
            let mut r = Response::new(Body::from(enc.body));
            if let Some(h) = enc.header_len {
                r.headers_mut()
                    .insert(oip::HEADER_LENGTH, HeaderValue::from(h));
            }
            r
        }
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// How long [`serve_plain`] waits, once told to stop, for the connections in flight.
pub const PLAIN_SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves `router` on `listener` as `axum::serve` does, with none of [`crate::serve`]'s
/// deadlines or bound on connections: the plain endpoint the benchmarks compare the gateway
/// with. Returns once `shutdown` resolves and the connections in flight have been answered, or
/// [`PLAIN_SHUTDOWN_GRACE`] after it resolved if some have not (a client that sent half a
/// request would otherwise hold the endpoint up for ever: it has no header or body deadline),
/// so that the process can end normally (a build instrumented for profile-guided optimisation
/// writes its profile only then).
pub async fn serve_plain(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let stopping = Arc::new(tokio::sync::Notify::new());
    let told = stopping.clone();
    let serving = axum::serve(listener, router).with_graceful_shutdown(async move {
        shutdown.await;
        // Stores a permit if the grace below is not waiting yet.
        told.notify_one();
    });
    tokio::select! {
        r = serving.into_future() => r,
        () = async {
            stopping.notified().await;
            tokio::time::sleep(PLAIN_SHUTDOWN_GRACE).await;
        } => {
            tracing::warn!(
                grace = ?PLAIN_SHUTDOWN_GRACE,
                "connections still open after the grace; leaving them"
            );
            Ok(())
        }
    }
}
