//! The innermost service of the model routes: metadata, readiness, configuration, statistics,
//! the repository index and inference.
//!
//! **Invariant:** inference never writes a response body. It puts the raw logits on the response
//! as a [`Prediction`], and only the harden guard serialises outputs.

use std::convert::Infallible;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::Response;
use tower::Service;

use crate::guard::admit::refusal;
use crate::guard::validate::read_small_body;
use crate::guard::{
    CallDeadline, ClientGone, Decision, Prediction, Principal, ValidatedInfer, error_response,
    json_response, off_worker_if,
};
use crate::loader::{Withdrawn, repository_index};
use crate::metrics::Metrics;
use crate::model::ModelRepository;
use crate::oip::{ModelAction, Target, target_of};
use crate::pool::{InferencePool, PoolError};
use crate::stats::StatisticsResponse;

/// Answers model routes once every guard has passed.
#[derive(Clone)]
pub struct ModelService {
    models: Arc<ModelRepository>,
    metrics: Arc<Metrics>,
    inference: Arc<InferencePool>,
    /// The repository folder the gateway loads from, for the index's unserved versions.
    repo: Option<PathBuf>,
    withdrawn: Option<Arc<Withdrawn>>,
}

impl ModelService {
    /// Serves the models of `models`, running them on `inference`'s threads.
    pub fn new(
        models: Arc<ModelRepository>,
        metrics: Arc<Metrics>,
        inference: Arc<InferencePool>,
    ) -> Self {
        ModelService {
            models,
            metrics,
            inference,
            repo: None,
            withdrawn: None,
        }
    }

    /// Lists in the repository index, beside the versions served, the versions of the folder
    /// `repo` that are not, with `withdrawn` saying which a rollback took down.
    pub fn with_repository(
        mut self,
        repo: Option<PathBuf>,
        withdrawn: Option<Arc<Withdrawn>>,
    ) -> Self {
        self.repo = repo;
        self.withdrawn = withdrawn;
        self
    }

    async fn answer(self, mut req: Request) -> Response {
        let target = target_of(&mut req);
        match &*target {
            Target::Statistics => return self.every_statistics(&req),
            Target::RepositoryIndex => return self.index(req).await,
            _ => {}
        }
        let Target::Model {
            name,
            version,
            action,
        } = &*target
        else {
            return error_response(StatusCode::NOT_FOUND, "no such route");
        };
        // An infer request is served by the version validate checked it against (the one the
        // rate limiter charged), not by whichever the name points to now.
        let validated = req
            .extensions()
            .get::<ValidatedInfer>()
            .map(|v| v.model.clone());
        let Some(model) = validated.or_else(|| self.models.get(name, version.as_deref())) else {
            return error_response(StatusCode::NOT_FOUND, &format!("model '{name}' not found"));
        };
        match action {
            ModelAction::Metadata => {
                json_response(StatusCode::OK, &model.metadata(self.models.versions(name)))
            }
            ModelAction::Config => json_response(StatusCode::OK, &model.config()),
            ModelAction::Statistics => {
                // Without a version, every version served, as Triton answers.
                let versions = match version {
                    Some(_) => vec![model],
                    None => self.models.served(name),
                };
                json_response(
                    StatusCode::OK,
                    &StatisticsResponse {
                        model_stats: versions.iter().map(|m| m.statistics()).collect(),
                    },
                )
            }
            ModelAction::Ready => {
                let mut r = Response::new(Body::empty());
                *r.status_mut() = StatusCode::OK;
                r
            }
            ModelAction::Infer => {
                let Some(v) = req.extensions().get::<ValidatedInfer>().cloned() else {
                    tracing::error!("infer request reached the model without validation");
                    let mut r = error_response(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
                    r.extensions_mut().insert(Decision::Error);
                    return r;
                };
                let n = v.input.shape()[0];
                let job = v.clone();
                // A request whose client has gone is finished for its audit entry, but the
                // model is not run for it: nobody will read the scores.
                let gone = req.extensions().get::<ClientGone>().cloned();
                let left = move || gone.as_ref().is_some_and(|g| g.now());
                if left() {
                    return client_left();
                }
                // The policy's deadline, or the caller's own if that is sooner.
                let now = Instant::now();
                let mut wait = (
                    Duration::from_millis(model.policy.inference.timeout_ms),
                    "the model's inference.timeout_ms",
                );
                if let Some(t) = v.request.timeout.filter(|&t| t < wait.0) {
                    wait = (t, "the request's timeout parameter");
                }
                if let Some(CallDeadline(at)) = req.extensions().get::<CallDeadline>() {
                    let left = at.saturating_duration_since(now);
                    if left < wait.0 {
                        wait = (left, "what was left of the call's grpc-timeout");
                    }
                }
                // When the call was taken by a thread and when it returned, for the statistics.
                let out = self
                    .inference
                    .run_admitted_until(
                        move || {
                            let started = Instant::now();
                            let logits =
                                (!left()).then(|| job.model.classifier.logits(job.input.view()));
                            (logits, started, Instant::now())
                        },
                        now + wait.0,
                    )
                    .await;
                let (out, times) = match out {
                    Ok((logits, started, ended)) => (Ok(logits), Some((started, ended))),
                    Err(e) => (Err(e), None),
                };
                let logits = match out {
                    Ok(None) => return client_left(),
                    // A score that is not finite would leave as JSON `null` (not FP32 data)
                    // or, label only, as a confident label 0 for a row of NaNs.
                    Ok(Some(Ok(l))) if l.nrows() == n && !l.iter().all(|x| x.is_finite()) => {
                        return internal("the model returned a score that is not finite");
                    }
                    Ok(Some(Ok(l))) if l.nrows() == n => l,
                    Ok(Some(Ok(l))) => {
                        return internal(&format!(
                            "the model returned {} rows for a batch of {n}",
                            l.nrows()
                        ));
                    }
                    Ok(Some(Err(e))) => return failed(&e),
                    // The pool stopped (the gateway is shutting down). A full queue does not
                    // refuse a request the admit guard let through: it has been charged.
                    Err(e @ (PoolError::Busy { .. } | PoolError::Stopped)) => return refusal(&e),
                    Err(PoolError::TimedOut) => {
                        self.metrics.inference_timeout(&model.name);
                        return timed_out(wait);
                    }
                    Err(e) => return failed(&e),
                };
                self.metrics.samples(&model.name, n);
                let (queue, infer) = times.map_or((Duration::ZERO, Duration::ZERO), |(s, e)| {
                    (
                        s.saturating_duration_since(now),
                        e.saturating_duration_since(s),
                    )
                });
                let mut r = Response::new(Body::empty());
                r.extensions_mut().insert(Prediction {
                    validated: v,
                    logits: Arc::new(logits),
                    queued_at: now,
                    queue,
                    infer,
                });
                r
            }
        }
    }
}

/// Largest body of a repository index request (`{"ready": true}` is 14 bytes).
const INDEX_BODY: usize = 4096;

/// How long a repository index request's body may take to arrive.
const INDEX_BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// A repository index request: an empty body, `{}` or `{"ready": true|false}`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct IndexRequest {
    #[serde(default)]
    ready: bool,
}

impl ModelService {
    /// `POST /v2/repository/index`: Triton's repository index, of the models the key may query
    /// (authorise let through only a key that may query some).
    async fn index(&self, req: Request) -> Response {
        let Some(Principal(key)) = req.extensions().get::<Principal>().cloned() else {
            tracing::error!("a repository index request reached the models without a key");
            return error_response(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
        };
        let body = match read_small_body(req.into_body(), INDEX_BODY, INDEX_BODY_TIMEOUT).await {
            Ok(b) => b,
            Err(refused) => return refused,
        };
        let asked: IndexRequest = if body.iter().all(u8::is_ascii_whitespace) {
            IndexRequest::default()
        } else {
            match serde_json::from_slice(&body) {
                Ok(r) => r,
                Err(e) => {
                    return error_response(
                        StatusCode::BAD_REQUEST,
                        &format!("invalid repository index request: {e}"),
                    );
                }
            }
        };
        let (models, repo, withdrawn) = (
            self.models.clone(),
            self.repo.clone(),
            self.withdrawn.clone(),
        );
        let listed = off_worker_if(true, "repository index", move || {
            repository_index(
                &models,
                repo.as_deref(),
                withdrawn.as_deref(),
                |m| key.may_query(m),
                asked.ready,
            )
        })
        .await;
        match listed {
            Ok(Ok(entries)) => json_response(StatusCode::OK, &entries),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "could not list the model repository");
                let mut r = error_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "could not list the model repository (the gateway's log has the details)",
                );
                r.extensions_mut().insert(Decision::Error);
                r
            }
            Err(r) => r,
        }
    }

    /// `GET /v2/models/stats`: every version of every model the key may query (authorise let
    /// through only a key that may query some).
    fn every_statistics(&self, req: &Request) -> Response {
        let Some(Principal(key)) = req.extensions().get::<Principal>() else {
            tracing::error!("a statistics request reached the models without a key");
            return error_response(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
        };
        let model_stats = self
            .models
            .names()
            .iter()
            .filter(|name| key.may_query(name))
            .flat_map(|name| self.models.served(name))
            .map(|m| m.statistics())
            .collect();
        json_response(StatusCode::OK, &StatisticsResponse { model_stats })
    }
}

/// The answer to a request whose client left before the model ran for it (never sent: the
/// audit guard records it).
fn client_left() -> Response {
    let status =
        StatusCode::from_u16(crate::guard::audit::CLIENT_LEFT).unwrap_or(StatusCode::BAD_REQUEST);
    let mut r = error_response(status, "the client left before the model ran");
    // What the guards decided; the status says it was not run.
    r.extensions_mut().insert(Decision::Allowed);
    r
}

/// The answer to an infer request whose model call did not finish within `wait`, the deadline
/// `why` names: 504, which the gRPC translation answers `DEADLINE_EXCEEDED`. The gateway failed
/// to answer in time, so the audit log records an error.
fn timed_out((wait, why): (Duration, &str)) -> Response {
    let mut r = error_response(
        StatusCode::GATEWAY_TIMEOUT,
        &if wait < Duration::from_millis(1) {
            format!(
                "the model did not answer within {} µs ({why})",
                wait.as_micros()
            )
        } else {
            format!(
                "the model did not answer within {} ms ({why})",
                wait.as_millis()
            )
        },
    );
    r.extensions_mut().insert(Decision::Error);
    r
}

/// A model call that failed: the error is logged, and the client is told only that it failed.
/// The error's text (a runtime's error chain, a panic's message) says how the model and the
/// server are built, which is none of a caller's business (review, 2026-12-06).
fn failed(e: &dyn std::fmt::Display) -> Response {
    tracing::error!(error = %e, "inference failed");
    let mut r = error_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        "inference failed (the gateway's log has the details)",
    );
    r.extensions_mut().insert(Decision::Error);
    r
}

fn internal(message: &str) -> Response {
    tracing::error!(message, "inference error");
    let mut r = error_response(StatusCode::INTERNAL_SERVER_ERROR, message);
    r.extensions_mut().insert(Decision::Error);
    r
}

impl Service<Request> for ModelService {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.answer(req).await) })
    }
}
