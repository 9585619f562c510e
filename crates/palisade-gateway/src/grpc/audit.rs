//! The audit entries of gRPC calls refused before the model stack (or, for a load or unload,
//! the admin stack).
//!
//! A gRPC call reaches the guards only once tonic has read and decoded its message and the
//! translator has made a REST request of it; the audit guard of the stack it goes to records it
//! from there on. What fails earlier is refused by [`super::keyfirst`], tonic or the translator: a
//! call without a usable key (before its message is read), a message that is not protobuf, one
//! over tonic's 4 MiB limit, a body that missed its deadline, a bad model name, raw inputs that
//! do not match the declared ones, too many tensors, an unknown method. Those calls are requests too,
//! often the probing kind, and [`AuditUnreached`] writes their entries: the gRPC path, the key
//! presented (its id, when the key store knows it), `denied:grpc`, and the status as the HTTP
//! code the REST route gives the same refusal. Calls that reached the stack and calls answered
//! without it (`ServerLive`, `ServerReady`, `ServerMetadata`, which REST does not audit either)
//! write nothing here.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use tonic::Code;

use crate::audit::{AuditLog, AuditRecord};
use crate::guard::authn::presented_key;
use crate::guard::{Decision, Guard, Next, call_next};
use crate::keys::{Authn, KeyStore};
use crate::metrics::Metrics;
use crate::now_ms;

/// The decision recorded for a gRPC call refused before the guards.
const GUARD: &str = "grpc";

/// Set once the translator hands a call to the model stack (request extension, which tonic
/// passes on to the handler).
#[derive(Debug, Clone, Default)]
pub struct Reached(Arc<AtomicBool>);

impl Reached {
    /// Records that the call reached the model stack.
    pub fn mark(&self) {
        self.0.store(true, Ordering::Release);
    }

    fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// The guard around the gRPC service that audits the calls it refused on its own.
#[derive(Clone)]
pub struct AuditUnreached {
    log: Arc<dyn AuditLog>,
    keys: Arc<dyn KeyStore>,
    metrics: Arc<Metrics>,
}

impl AuditUnreached {
    /// Appends to `log`; names the caller from `keys`.
    pub fn new(log: Arc<dyn AuditLog>, keys: Arc<dyn KeyStore>, metrics: Arc<Metrics>) -> Self {
        AuditUnreached { log, keys, metrics }
    }

    /// The key store it names callers from.
    pub(crate) fn keys(&self) -> &Arc<dyn KeyStore> {
        &self.keys
    }

    /// The id of the key `presented`, when the store knows it (valid or not: a revoked key's
    /// holder is worth naming).
    fn key_id(&self, presented: &str) -> Option<String> {
        match self.keys.authenticate(presented, now_ms()) {
            Ok(Authn::Valid(r)) => Some(r.id.clone()),
            Ok(Authn::Unknown(id)) => id,
            Ok(Authn::Revoked(id) | Authn::Expired(id) | Authn::WrongClient(id)) => Some(id),
            Ok(Authn::Malformed) | Err(_) => None,
        }
    }
}

/// The gRPC status of a response tonic made for a refusal (sent in the headers, trailers-only),
/// or `None` for a call that went on.
fn refused_with(resp: &Response) -> Option<Code> {
    let code = resp
        .headers()
        .get("grpc-status")?
        .to_str()
        .ok()?
        .parse::<i32>()
        .ok()?;
    Some(Code::from_i32(code)).filter(|c| *c != Code::Ok)
}

/// The HTTP status the REST route answers for the refusal a gRPC code stands for. Before the
/// guards nothing of the server's own can fail, so a code that does not name the refusal is the
/// request's fault, 400: a message that cannot be decoded is `INVALID_ARGUMENT` (the service's
/// codec, [`super::codec`]), and so is a call without a message or with a frame cut short
/// ([`super::prescan`], for every method of the service).
fn http_status(code: Code) -> u16 {
    match code {
        Code::Unauthenticated => 401,
        Code::PermissionDenied => 403,
        // An unknown method (`UNIMPLEMENTED`) is what an unknown route is to REST.
        Code::NotFound | Code::Unimplemented => 404,
        // The body's deadline (`deadline::for_grpc`).
        Code::DeadlineExceeded => 408,
        // A message over tonic's size limit.
        Code::OutOfRange | Code::ResourceExhausted => 413,
        Code::Unavailable => 503,
        _ => 400,
    }
}

impl Guard for AuditUnreached {
    async fn handle(self, mut req: Request, next: Next) -> Response {
        let started = Instant::now();
        let ts_ms = now_ms();
        let reached = Reached::default();
        req.extensions_mut().insert(reached.clone());
        let uri = req.uri().clone();
        // Kept (tonic takes the request) and looked up only if the call is refused here.
        let presented = presented_key(req.headers()).map(str::to_owned);
        let mut resp = call_next(next, req).await;
        if reached.get() {
            return resp;
        }
        let Some(code) = refused_with(&resp) else {
            return resp;
        };
        if self
            .record(presented.as_deref(), uri.path(), code, started, ts_ms)
            .await
        {
            resp.extensions_mut().insert(Decision::Denied(GUARD));
            resp
        } else {
            let mut r = tonic::Status::unavailable(
                "the audit log is unavailable; the request was not served",
            )
            .into_http::<Body>();
            r.extensions_mut().insert(Decision::Error);
            r
        }
    }
}

impl AuditUnreached {
    /// Writes the entry of a call refused with `code` before the model stack, or of one
    /// message of a stream refused so ([`super::stream`]): the gRPC `path`, the id of the key
    /// `presented`, `denied:grpc` and the HTTP status of the same refusal over REST. False
    /// when the log could not take it (the caller then answers `UNAVAILABLE`).
    pub(crate) async fn record(
        &self,
        presented: Option<&str>,
        path: &str,
        code: Code,
        started: Instant,
        ts_ms: u64,
    ) -> bool {
        let key_id = presented.and_then(|k| self.key_id(k));
        let record = AuditRecord {
            ts_ms,
            key_id: key_id.as_deref().map(Cow::Borrowed),
            method: Cow::Borrowed("GRPC"),
            path: Cow::Borrowed(path),
            action: Cow::Borrowed("grpc"),
            model: None,
            version: None,
            decision: Decision::Denied(GUARD).as_str(),
            status: http_status(code),
            input_sha256: None,
            output_sha256: None,
            latency_us: started.elapsed().as_micros() as u64,
            operator: None,
        };
        crate::guard::audit::append(&*self.log, &self.metrics, &record)
            .await
            .is_some()
    }
}
