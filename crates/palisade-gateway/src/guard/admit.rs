//! Admission: whether the model can take one more call. An infer request that finds the
//! inference queue at its limit (`palisade serve --inference-queue`) stops here with 503 and
//! `Retry-After: 1`, audited as `denied:overload`.
//!
//! It runs after authorisation, so that only callers allowed to query the model learn that the
//! server is busy, and before the rate limiter, so that a refused request is not charged to the
//! caller's rate or daily budget: retrying after an overload costs no quota. Before validation
//! too: under overload a request is refused before its body is read and decoded (so its audit
//! entry has no input digest or model version). It only looks at the queue
//! ([`InferencePool::check`]) and reserves no place in it: requests still sending their bodies
//! or being validated hold none, so slow clients cannot fill the queue while the inference
//! threads are idle. Nor is an admitted request refused later for a full queue, which would
//! come after the rate limiter charged it: the infer service queues it whatever the queue holds
//! by then ([`InferencePool::run_admitted`]). The queue's limit is therefore a bound on what
//! admission lets in, which the queue itself can pass by as many requests as were admitted
//! before it filled and reach their model call after: nothing but the requests in flight bounds
//! that (many slow uploads admitted while the queue was short, finished together, all go in).

use std::sync::Arc;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::Response;

use super::{Decision, Guard, Next, call_next, error_response, reject_retry};
use crate::oip::{ModelAction, Target, target_of};
use crate::pool::{InferencePool, PoolError};

/// The admission guard.
#[derive(Clone)]
pub struct Admit {
    inference: Arc<InferencePool>,
}

impl Admit {
    /// Admits infer requests to `inference`'s queue.
    pub fn new(inference: Arc<InferencePool>) -> Self {
        Admit { inference }
    }
}

/// The answer to a request the pool could not take.
pub fn refusal(e: &PoolError) -> Response {
    match e {
        PoolError::Busy { .. } => reject_retry(
            StatusCode::SERVICE_UNAVAILABLE,
            "overload",
            &e.to_string(),
            1,
        ),
        // Shutting down: the request may be retried on another instance.
        PoolError::Stopped => {
            let mut r = error_response(StatusCode::SERVICE_UNAVAILABLE, &e.to_string());
            r.extensions_mut().insert(Decision::Error);
            r
        }
        _ => {
            let mut r = error_response(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string());
            r.extensions_mut().insert(Decision::Error);
            r
        }
    }
}

impl Guard for Admit {
    async fn handle(self, mut req: Request, next: Next) -> Response {
        let target = target_of(&mut req);
        if !matches!(
            &*target,
            Target::Model {
                action: ModelAction::Infer,
                ..
            }
        ) {
            return call_next(next, req).await;
        }
        match self.inference.check() {
            Ok(()) => call_next(next, req).await,
            Err(e) => refusal(&e),
        }
    }
}
