//! The guards: one tower layer per concern.
//!
//! Each guard is a small value implementing [`Guard`]; [`GuardLayer`] turns it into a tower
//! [`Layer`]. A guard either answers the request itself (a refusal, built with [`reject`]) or
//! passes it to the next service, and may look at the response on its way back.
//!
//! Guards talk to each other only through typed extensions: on the request going in
//! ([`Principal`] from authentication, [`ValidatedInfer`] from validation) and on the response
//! coming out ([`Decision`], [`Principal`], [`InputDigest`], [`ServedVersion`]), which the
//! audit guard, outermost, writes to the log.

use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use ndarray::ArrayD;
use tower::{Layer, Service, ServiceExt as _};

use crate::keys::KeyRecord;
use crate::model::ServedModel;
use crate::oip::InferRequest;

pub mod admit;
pub mod allow;
pub mod audit;
pub mod authn;
pub mod authz;
mod budgets;
pub mod harden;
pub mod ratelimit;
pub mod redis_limits;
pub mod validate;

/// A response on its way.
pub type ResponseFuture = Pin<Box<dyn Future<Output = Response> + Send>>;

/// The rest of the stack, as a guard sees it: a shared handle, so that cloning it (once per
/// request and layer) is one reference count. A boxed cloneable service
/// (`tower::util::BoxCloneSyncService`) would clone every layer below it instead, each clone a
/// heap allocation, and the reference counts of every guard's state with it.
#[derive(Clone)]
pub struct Next(Arc<dyn Fn(Request) -> ResponseFuture + Send + Sync>);

impl Next {
    /// The service `svc` as the rest of a stack. Each request goes to a clone of it.
    pub fn new<S>(svc: S) -> Next
    where
        S: Service<Request, Response = Response, Error = Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        // A guard layer's service is already a `Next`: share it rather than wrap it again.
        if let Some(next) = (&svc as &dyn std::any::Any).downcast_ref::<Next>() {
            return next.clone();
        }
        Next(Arc::new(move |req| {
            let svc = svc.clone();
            Box::pin(async move {
                match svc.oneshot(req).await {
                    Ok(r) => r,
                    Err(never) => match never {},
                }
            })
        }))
    }

    /// Sends `req` down the stack.
    pub fn run(&self, req: Request) -> ResponseFuture {
        (self.0)(req)
    }
}

impl std::fmt::Debug for Next {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Next")
    }
}

impl Service<Request> for Next {
    type Response = Response;
    type Error = Infallible;
    type Future = OkFuture;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> OkFuture {
        OkFuture(self.run(req))
    }
}

/// [`Next`]'s future as a service's: the response, which is never an error.
pub struct OkFuture(ResponseFuture);

impl Future for OkFuture {
    type Output = Result<Response, Infallible>;

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        self.0.as_mut().poll(cx).map(Ok)
    }
}

/// One concern of the request path.
pub trait Guard: Clone + Send + Sync + 'static {
    /// Handles `req`, calling `next` (see [`call_next`]) to go on.
    fn handle(self, req: Request, next: Next) -> impl Future<Output = Response> + Send;
}

/// Calls the rest of the stack.
pub async fn call_next(next: Next, req: Request) -> Response {
    next.run(req).await
}

/// Calls the rest of the stack and, once it has gone as far as it can without waiting (on an
/// infer request: down to the model call, queued for an inference thread), runs `meanwhile`
/// before waiting for the response. Work that does not depend on the response (hashing the input
/// for the audit log, building headers) then runs while the model does, on a core that would
/// otherwise wait, instead of lengthening the request's path. `meanwhile` runs exactly once,
/// also when the rest of the stack answers at once (a refusal).
pub async fn call_next_meanwhile<T>(
    next: Next,
    req: Request,
    meanwhile: impl FnOnce() -> T,
) -> (Response, T) {
    let mut answer = next.run(req);
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(answer.as_mut().poll(cx))).await;
    let done = meanwhile();
    let resp = match first {
        std::task::Poll::Ready(r) => r,
        std::task::Poll::Pending => answer.await,
    };
    (resp, done)
}

/// Runs `f` on this async worker, or, when `heavy`, on a blocking thread, so that milliseconds of
/// CPU or a wait on a lock or an fsync do not hold up the worker every connection shares (a
/// gateway on 2 cores has one). A blocking task that did not finish (it panicked, or the runtime
/// is shutting down) is logged as `what` and answered with a plain 500 ([`Decision::Error`]), its
/// details kept out of the response.
pub(crate) async fn off_worker_if<T: Send + 'static>(
    heavy: bool,
    what: &'static str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Response> {
    if !heavy {
        return Ok(f());
    }
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        tracing::error!(error = %e, task = what, "a blocking task did not finish");
        let mut r = error_response(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
        r.extensions_mut().insert(Decision::Error);
        r
    })
}

/// Bodies up to this size are hashed (and, by validation, decoded and checked) on the async
/// worker, in tens of microseconds; larger ones on a blocking thread, so that their milliseconds
/// of CPU do not hold up the worker every connection shares.
pub(crate) const INLINE_BYTES: usize = 64 << 10;

/// A body's digest for the audit log, on its way: a body over [`INLINE_BYTES`] is hashed on a
/// blocking thread from [`BodyDigest::start`] on; a smaller one where the caller chooses, with
/// [`BodyDigest::compute_here`] (while it waits for something else) or at [`BodyDigest::get`].
pub(crate) enum BodyDigest {
    Here(bytes::Bytes),
    Done(String),
    Away(tokio::task::JoinHandle<String>, bytes::Bytes),
}

impl BodyDigest {
    /// Starts hashing `bytes` on a blocking thread if they are large.
    pub(crate) fn start(bytes: bytes::Bytes) -> Self {
        if bytes.len() > INLINE_BYTES {
            let b = bytes.clone();
            BodyDigest::Away(
                tokio::task::spawn_blocking(move || crate::hexfmt::sha256(&b)),
                bytes,
            )
        } else {
            BodyDigest::Here(bytes)
        }
    }

    /// Hashes a small body now; a large one goes on on its thread.
    pub(crate) fn compute_here(self) -> Self {
        match self {
            BodyDigest::Here(b) => BodyDigest::Done(crate::hexfmt::sha256(&b)),
            other => other,
        }
    }

    /// The digest. A blocking hash that could not finish (the runtime shutting down) is
    /// computed here instead.
    pub(crate) async fn get(self) -> String {
        match self {
            BodyDigest::Here(b) => crate::hexfmt::sha256(&b),
            BodyDigest::Done(d) => d,
            BodyDigest::Away(job, b) => match job.await {
                Ok(d) => d,
                Err(_) => crate::hexfmt::sha256(&b),
            },
        }
    }
}

/// A [`Guard`] as a tower [`Layer`]: the layered service is a [`Next`] that hands each request
/// to the guard with the rest of the stack.
#[derive(Debug, Clone)]
pub struct GuardLayer<G>(pub G);

impl<G: Guard, S> Layer<S> for GuardLayer<G>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    type Service = Next;
    fn layer(&self, inner: S) -> Next {
        let guard = self.0.clone();
        let next = Next::new(inner);
        Next(Arc::new(move |req| {
            Box::pin(guard.clone().handle(req, next.clone()))
        }))
    }
}

/// How the request was decided, on the response (for audit and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Served.
    Allowed,
    /// Refused by a guard.
    Denied(&'static str),
    /// Failed inside the server.
    Error,
}

impl Decision {
    /// The audit-log form.
    pub fn as_str(&self) -> Cow<'static, str> {
        match self {
            Decision::Allowed => Cow::Borrowed("allowed"),
            Decision::Denied(g) => Cow::Owned(format!("denied:{g}")),
            Decision::Error => Cow::Borrowed("error"),
        }
    }
}

/// A flag set once and seen by every clone: what [`ClientGone`] and [`Entered`] hold.
#[derive(Debug, Clone, Default)]
pub struct Flag(Arc<std::sync::atomic::AtomicBool>);

impl Flag {
    /// Whether it is set.
    pub fn now(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }

    pub(crate) fn set(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
    }
}

/// Set once the request's client has gone before its answer (request extension from the audit
/// guard, which then finishes the request for its entry; the messages of a gRPC stream share
/// their stream's, set when it ends, `crate::grpc::stream`): the model is not run for it.
#[derive(Debug, Clone, Default)]
pub struct ClientGone(pub Flag);

impl std::ops::Deref for ClientGone {
    type Target = Flag;
    fn deref(&self) -> &Flag {
        &self.0
    }
}

/// Set once the audit guard has taken the request (request extension put by a gRPC stream on
/// each message's request, `crate::grpc::stream`): from then on, a passage dropped before its
/// end is finished, and recorded, by the guard's orphans; before, it has had nothing done.
#[derive(Debug, Clone, Default)]
pub struct Entered(pub Flag);

impl std::ops::Deref for Entered {
    type Target = Flag;
    fn deref(&self) -> &Flag {
        &self.0
    }
}

/// The authenticated caller (request extension from authentication; copied onto the response).
#[derive(Debug, Clone)]
pub struct Principal(pub Arc<KeyRecord>);

/// The key id presented, even when authentication failed (response extension).
#[derive(Debug, Clone)]
pub struct PresentedKeyId(pub String);

/// The gRPC method a request was translated from (request extension; the audit log records it
/// as the method).
#[derive(Debug, Clone, Copy)]
pub struct Via(pub &'static str);

/// When the caller stops waiting, as its own protocol said (request extension): gRPC's
/// `grpc-timeout`, counted from the call's arrival. The model service answers no later.
#[derive(Debug, Clone, Copy)]
pub struct CallDeadline(pub std::time::Instant);

/// SHA-256 (hex) of the decompressed request body (response extension from validation).
#[derive(Debug, Clone)]
pub struct InputDigest(pub String);

/// The model version that served the request (response extension).
#[derive(Debug, Clone)]
pub struct ServedVersion(pub String);

/// The model version whose limits the rate limiter charged (request extension): validate and
/// the model serve that same version, even if a load or rollback changed which one the request's
/// name points to meanwhile (a request charged under one version's limits was served by another,
/// 2026-12-06 review).
#[derive(Clone)]
pub struct Charged(pub Arc<crate::ServedModel>);

/// A request that passed validation (request extension): the model version it is for, the
/// decoded request and the input as a batch.
#[derive(Debug, Clone)]
pub struct ValidatedInfer {
    /// The version that will serve it.
    pub model: Arc<ServedModel>,
    /// The decoded request (ids, requested outputs).
    pub request: Arc<InferRequest>,
    /// The input batch `[N, ...input_shape]`.
    pub input: Arc<ArrayD<f32>>,
}

/// Raw model output, before hardening (response extension from the infer service). No body is
/// ever written from it except by the harden guard.
#[derive(Debug, Clone)]
pub struct Prediction {
    /// What was asked.
    pub validated: ValidatedInfer,
    /// Logits `[N, C]`.
    pub logits: Arc<ndarray::Array2<f32>>,
    /// When the call was handed to the inference threads.
    pub queued_at: std::time::Instant,
    /// How long the call waited for an inference thread.
    pub queue: std::time::Duration,
    /// How long the model call took.
    pub infer: std::time::Duration,
}

/// Set on an admin action's failure that a retry of the same request mends and that repeats
/// nothing done (the action is idempotent): the authorise guard gives back the TOTP code the
/// request used, so that the `Retry-After` answered can be followed with it.
#[derive(Debug, Clone, Copy)]
pub struct RetryAsIs;

/// A JSON error response, `{"error": message}`.
pub fn error_response(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "error": message }).to_string();
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// A refusal by guard `guard`: a JSON error with the decision recorded for the audit log.
pub fn reject(status: StatusCode, guard: &'static str, message: &str) -> Response {
    let mut r = error_response(status, message);
    r.extensions_mut().insert(Decision::Denied(guard));
    r
}

/// A refusal by guard `guard` that the client may retry after `secs` seconds: [`reject`] with a
/// `Retry-After` header (which the gRPC translation carries over as retry pushback).
pub fn reject_retry(status: StatusCode, guard: &'static str, message: &str, secs: u64) -> Response {
    let mut r = reject(status, guard, message);
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    r
}

/// A JSON response.
pub fn json_response<T: serde::Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => {
            let mut r = Response::new(Body::from(body));
            *r.status_mut() = status;
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(e) => {
            let mut r = error_response(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string());
            r.extensions_mut().insert(Decision::Error);
            r
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone)]
    struct Pass;

    impl Guard for Pass {
        async fn handle(self, req: Request, next: Next) -> Response {
            call_next(next, req).await
        }
    }

    #[tokio::test]
    async fn a_stack_of_guard_layers_shares_its_handles_and_answers() {
        let inner = tower::service_fn(|_req: Request| async {
            Ok::<_, Infallible>(error_response(StatusCode::IM_A_TEAPOT, "inner"))
        });
        let stack: Next = tower::ServiceBuilder::new()
            .layer(GuardLayer(Pass))
            .layer(GuardLayer(Pass))
            .service(inner);
        // Wrapping a Next again shares it instead of adding a layer of its own.
        assert!(Arc::ptr_eq(&stack.0, &Next::new(stack.clone()).0));
        let resp = stack.run(Request::new(Body::empty())).await;
        assert_eq!(resp.status(), StatusCode::IM_A_TEAPOT);
    }

    #[tokio::test]
    async fn meanwhile_runs_after_the_stack_below_starts_waiting_and_before_it_answers() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let started = Arc::new(AtomicBool::new(false));
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let released = Arc::new(std::sync::Mutex::new(Some(released)));
        let s = started.clone();
        // The "model": marks that it started, then waits until released.
        let slow = Next::new(tower::service_fn(move |_req: Request| {
            let s = s.clone();
            let released = released.lock().unwrap().take();
            async move {
                s.store(true, Ordering::SeqCst);
                if let Some(r) = released {
                    let _ = r.await;
                }
                Ok::<_, Infallible>(error_response(StatusCode::IM_A_TEAPOT, "slow"))
            }
        }));
        let answered = call_next_meanwhile(slow, Request::new(Body::empty()), || {
            let seen = started.load(Ordering::SeqCst);
            // Only now may the answer come: had the response been awaited before this ran,
            // the test would time out.
            release.send(()).unwrap();
            seen
        });
        let (resp, seen) = tokio::time::timeout(std::time::Duration::from_secs(5), answered)
            .await
            .expect("meanwhile ran before the response was awaited");
        assert!(seen, "meanwhile ran before the stack below had started");
        assert_eq!(resp.status(), StatusCode::IM_A_TEAPOT);

        // A stack that answers at once: meanwhile still runs, once.
        let quick = Next::new(tower::service_fn(|_req: Request| async {
            Ok::<_, Infallible>(error_response(StatusCode::FORBIDDEN, "no"))
        }));
        let mut runs = 0;
        let (resp, ()) =
            call_next_meanwhile(quick, Request::new(Body::empty()), || runs += 1).await;
        assert_eq!((resp.status(), runs), (StatusCode::FORBIDDEN, 1));
    }
}
