//! Audit: every request through the guarded routes, served or refused, becomes an entry of the
//! Merkle log before its response leaves.
//!
//! This guard is the outermost of the stack: it sees refusals from every inner guard. It waits
//! for the entry to be durable (see [`crate::audit::SqliteAuditLog`] for the fsync policy) and
//! only then releases the response; if the log cannot be written the request fails closed with
//! 503 and no output.
//!
//! An admin action (a request that can change something, on the admin routes) is also written
//! ahead by [`WriteAhead`], inside the authorise guard: an `intent` entry goes to the log before
//! the action runs, so that an action whose outcome entry cannot be written (the log failing
//! meanwhile, the process killed) is still on the log, and an action the log cannot take is not
//! taken (503).

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{Method, StatusCode};
use axum::response::Response;

use super::authn::{key_store_failed, presented_key, unauthorised, why_refused};
use super::validate;
use super::{
    BodyDigest, ClientGone, Decision, Entered, Guard, InputDigest, Next, PresentedKeyId, Principal,
    ServedVersion, call_next, error_response,
};
use crate::audit::{AuditLog, AuditRecord};
use crate::keys::{Authn, ClientIdentity, KeyStore};
use crate::metrics::Metrics;
use crate::now_ms;
use crate::oip::{Target, target_of};
use crate::stats::Tally;

/// Largest response body the audit guard will hash (responses are built in memory, well below).
const MAX_RESPONSE: usize = 256 << 20;

/// The audit guard.
#[derive(Clone)]
pub struct Audit {
    log: Arc<dyn AuditLog>,
    metrics: Arc<Metrics>,
    orphans: Arc<Orphans>,
    tracer: Option<Arc<crate::trace::Tracer>>,
}

impl Audit {
    /// Appends to `log`; requests whose client goes away are finished as `orphans` (see there).
    pub fn new(log: Arc<dyn AuditLog>, metrics: Arc<Metrics>, orphans: Arc<Orphans>) -> Self {
        Audit {
            log,
            metrics,
            orphans,
            tracer: None,
        }
    }

    /// Hands each served infer request, once its answer is released, to `tracer`
    /// ([`crate::trace`]), which traces those its settings sample.
    pub fn with_tracer(mut self, tracer: Option<Arc<crate::trace::Tracer>>) -> Self {
        self.tracer = tracer;
        self
    }
}

/// A served request's timestamps under Triton's names (see [`crate::trace`]): taken by the
/// audit guard at `started`, handed to the inference threads, the model call, its outputs
/// encoded, and now, its entry appended (its answer leaves next).
fn trace_stamps(
    started: std::time::Instant,
    served: &crate::stats::Served,
) -> Vec<(&'static str, std::time::Instant)> {
    let called = served.queued_at + served.queue;
    let returned = called + served.infer;
    vec![
        ("REQUEST_START", started),
        ("QUEUE_START", served.queued_at),
        ("COMPUTE_START", called),
        ("COMPUTE_INPUT_END", called),
        ("COMPUTE_OUTPUT_START", returned),
        ("COMPUTE_END", served.encoded_at),
        ("REQUEST_END", std::time::Instant::now()),
    ]
}

/// The status an entry records for a request whose client went away before its answer (nginx's
/// "client closed request"); its `decision` is what the guards decided.
pub const CLIENT_LEFT: u16 = 499;

/// Requests whose client went away before their answer (a closed connection, a reset HTTP/2
/// stream), each finished in a task of its own so that it still gets its audit entry: by then
/// it may have been charged to the key's limits and run through the model, and the log must
/// say so (review, 2026-12-06: such a request left no entry). The entry records the status
/// [`CLIENT_LEFT`]. [`Orphans::settled`] waits until none is left.
///
/// They are bounded: while [`Orphans::most`] are being finished, a new request waits before
/// the audit guard does anything for it (no key looked up, nothing charged or run), and goes on
/// once fewer are. Without the bound, a client that left each request as soon as it was sent,
/// and sent the next on a new connection or HTTP/2 stream, grew them without end while what
/// they wait for (a model call, the audit log's disk, the limits' store) was slow: neither the
/// bound on connections nor on streams counts a request whose client has gone. So at most
/// [`Orphans::most`] are being finished, plus the requests in progress that had passed the
/// audit guard when the count was under it (which the bounds on connections and streams hold):
/// every request waiting when one finishes goes on. A request dropped while it waits has had
/// nothing done for it, and has no entry. A request whose passage panicked cannot be finished:
/// it is logged, and takes no place.
///
/// The model routes and the admin routes have a bound each ([`crate::Gateway`]): requests left
/// behind a model call that never returns must not hold up a key's revocation.
#[derive(Debug)]
pub struct Orphans {
    running: AtomicUsize,
    /// Told when one finishes and the count falls to the bound or below, or to zero.
    changed: tokio::sync::Notify,
    most: usize,
}

/// The default bound on requests whose client left that are being finished at once.
pub const MAX_ORPHANS: usize = 1024;

impl Default for Orphans {
    fn default() -> Self {
        Orphans::at_most(MAX_ORPHANS)
    }
}

impl Orphans {
    /// At most `most` (at least one) being finished before new requests wait.
    pub fn at_most(most: usize) -> Self {
        Orphans {
            running: AtomicUsize::new(0),
            changed: tokio::sync::Notify::new(),
            most: most.max(1),
        }
    }

    /// The bound.
    pub fn most(&self) -> usize {
        self.most
    }

    /// Requests being finished now.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Acquire)
    }

    /// Waits until every request being finished has its entry.
    pub async fn settled(&self) {
        self.wait_until(|n| n == 0).await;
    }

    /// Waits until fewer than the bound are being finished.
    async fn room(&self) {
        self.wait_until(|n| n < self.most).await;
    }

    async fn wait_until(&self, enough: impl Fn(usize) -> bool) {
        loop {
            let changed = self.changed.notified();
            let mut changed = std::pin::pin!(changed);
            changed.as_mut().enable();
            if enough(self.running()) {
                return;
            }
            changed.await;
        }
    }

    fn finished(&self) {
        let before = self.running.fetch_sub(1, Ordering::AcqRel);
        if before == 1 || before <= self.most {
            self.changed.notify_waiters();
        }
    }
}

/// A request's passage through the stack and the audit log, finished in a task of its own if
/// it is dropped before its end (its client gone): see [`Orphans`].
struct Finishing {
    work: Option<std::pin::Pin<Box<dyn Future<Output = Response> + Send>>>,
    /// Set while `work` is polled: dropped with it set, `work` panicked and cannot go on.
    polling: bool,
    gone: ClientGone,
    orphans: Arc<Orphans>,
}

/// A place among the requests being finished ([`Orphans`]), given back when dropped, however
/// the task holding it ends.
struct Place(Arc<Orphans>);

impl Place {
    fn take(orphans: Arc<Orphans>) -> Self {
        orphans.running.fetch_add(1, Ordering::AcqRel);
        Place(orphans)
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.0.finished();
    }
}

impl Future for Finishing {
    type Output = Response;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Response> {
        let this = &mut *self;
        let Some(work) = this.work.as_mut() else {
            unreachable!("polled after it was ready")
        };
        this.polling = true;
        let r = work.as_mut().poll(cx);
        this.polling = false;
        let r = std::task::ready!(r);
        this.work = None;
        std::task::Poll::Ready(r)
    }
}

impl Drop for Finishing {
    fn drop(&mut self) {
        let Some(work) = self.work.take() else { return };
        self.gone.set();
        if self.polling {
            // Unwinding from a panic inside the passage: polled again, it would only panic.
            tracing::error!("a request's passage panicked; it has no audit entry");
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::error!("a request whose client left could not be finished: no runtime");
            return;
        };
        let place = Place::take(self.orphans.clone());
        rt.spawn(async move {
            let _place = place;
            // Dropped, not sent: the client has gone.
            drop(work.await);
        });
    }
}

impl Guard for Audit {
    async fn handle(self, mut req: Request, next: Next) -> Response {
        if self.orphans.running() >= self.orphans.most {
            self.orphans.room().await;
        }
        let started = Instant::now();
        let ts_ms = now_ms();
        let via = req
            .extensions()
            .get::<super::Via>()
            .map(|v| format!("GRPC {}", v.0));
        // Kept for the record without copying their text: a standard method is a constant, the
        // URI's path a shared buffer.
        let method = req.method().clone();
        let uri = req.uri().clone();
        let target = target_of(&mut req);
        // A message of a gRPC stream comes with its stream's: set when the stream has ended.
        let gone = match req.extensions().get::<ClientGone>() {
            Some(g) => g.clone(),
            None => {
                let g = ClientGone::default();
                req.extensions_mut().insert(g.clone());
                g
            }
        };
        let orphans = self.orphans.clone();
        let entered = req.extensions().get::<Entered>().cloned();
        let pass = Passage {
            started,
            ts_ms,
            via,
            method,
            uri,
            target,
            gone: gone.clone(),
        };
        let finishing = Finishing {
            work: Some(Box::pin(self.finish(pass, next, req))),
            polling: false,
            gone,
            orphans,
        };
        if let Some(entered) = entered {
            entered.set();
        }
        finishing.await
    }
}

/// What the audit guard notes of a request before passing it on.
struct Passage {
    started: Instant,
    ts_ms: u64,
    via: Option<String>,
    method: Method,
    uri: axum::http::Uri,
    target: Arc<Target>,
    /// Set once the client has gone ([`Finishing`]).
    gone: ClientGone,
}

impl Audit {
    /// Passes `req` on and writes its entry: the request's whole passage after the guard has
    /// noted it.
    async fn finish(self, pass: Passage, next: Next, req: Request) -> Response {
        let resp = call_next(next, req).await;
        let (parts, body) = resp.into_parts();
        let (mut parts, bytes) = match axum::body::to_bytes(body, MAX_RESPONSE).await {
            Ok(b) => (parts, b),
            Err(e) => {
                // Answered 500, and audited as such with what the request was (its key, model,
                // input): the action behind it may have run, and every request has its entry.
                tracing::error!(error = %e, "could not read a response body for the audit log");
                let (mut failed, body) =
                    error_response(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
                        .into_parts();
                failed.extensions = parts.extensions;
                failed.extensions.insert(Decision::Error);
                let body = axum::body::to_bytes(body, MAX_RESPONSE)
                    .await
                    .unwrap_or_default();
                (failed, body)
            }
        };
        // A large response (a large batch's scores) is hashed on a blocking thread.
        let output_sha256 = BodyDigest::start(bytes.clone()).get().await;
        let tally = parts.extensions.remove::<Tally>();
        let ext = &parts.extensions;
        let decision = ext
            .get::<Decision>()
            .copied()
            .unwrap_or(if parts.status.is_success() {
                Decision::Allowed
            } else if parts.status.is_server_error() {
                Decision::Error
            } else {
                Decision::Denied("route")
            });
        let key_id = ext
            .get::<Principal>()
            .map(|p| p.0.id.as_str())
            .or_else(|| ext.get::<PresentedKeyId>().map(|k| k.0.as_str()));
        let record = AuditRecord {
            ts_ms: pass.ts_ms,
            key_id: key_id.map(Cow::Borrowed),
            method: Cow::Borrowed(pass.via.as_deref().unwrap_or(pass.method.as_str())),
            path: Cow::Borrowed(pass.uri.path()),
            action: Cow::Borrowed(pass.target.action()),
            model: pass.target.model().map(Cow::Borrowed),
            version: ext
                .get::<ServedVersion>()
                .map(|v| Cow::Borrowed(v.0.as_str())),
            decision: decision.as_str(),
            status: if pass.gone.now() {
                CLIENT_LEFT
            } else {
                parts.status.as_u16()
            },
            input_sha256: ext
                .get::<InputDigest>()
                .map(|d| Cow::Borrowed(d.0.as_str())),
            output_sha256: Some(Cow::Owned(output_sha256)),
            latency_us: pass.started.elapsed().as_micros() as u64,
            operator: None,
        };
        let appended = append(&*self.log, &self.metrics, &record).await;
        // An infer request's statistics: served only if its outputs leave now.
        if let Some(tally) = tally {
            let released = appended.is_some() && parts.status.is_success();
            // While nothing traces, one atomic load.
            if released
                && let Some(tracer) = self.tracer.as_ref().filter(|t| t.on())
                && let (Some(served), Some(model)) = (tally.served(), pass.target.model())
            {
                let version = ext.get::<ServedVersion>().map_or("", |v| v.0.as_str());
                tracer.served(model, version, appended, || {
                    trace_stamps(pass.started, served)
                });
            }
            tally.record(released, now_ms());
        }
        match appended {
            Some(index) => {
                tracing::info!(
                    audit_index = index,
                    key_id = record.key_id.as_deref().unwrap_or("-"),
                    action = %record.action,
                    model = record.model.as_deref().unwrap_or("-"),
                    decision = %record.decision,
                    status = record.status,
                    latency_us = record.latency_us,
                    "request"
                );
                parts.extensions.insert(decision);
                Response::from_parts(parts, Body::from(bytes))
            }
            None => {
                let mut r = match parts.extensions.get::<Ahead>() {
                    // The action ran: say so, rather than that nothing was served.
                    Some(Ahead::Written(i, s)) if s.is_success() => error_response(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        &format!(
                            "the action ran, but the audit log could not take its outcome \
                             (its intent is entry {i}); check its effect before retrying"
                        ),
                    ),
                    Some(Ahead::Written(i, s)) => error_response(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        &format!(
                            "the action was refused ({}), and the audit log could not take \
                             that outcome (its intent is entry {i})",
                            s.as_u16()
                        ),
                    ),
                    Some(Ahead::Refused) | None => {
                        error_response(StatusCode::SERVICE_UNAVAILABLE, NOT_SERVED)
                    }
                };
                r.extensions_mut().insert(Decision::Error);
                r
            }
        }
    }
}

/// Serialises `record` and appends it to `log`, timing the append in `metrics`: the entry's index
/// once it is durable, or `None` when the log could not take it (logged here; the caller then
/// withholds its response).
pub(crate) async fn append(
    log: &dyn AuditLog,
    metrics: &Metrics,
    record: &AuditRecord<'_>,
) -> Option<u64> {
    // Room for a whole entry (~350 bytes), rather than growing from serde_json's 128.
    let mut entry = Vec::with_capacity(512);
    if let Err(e) = serde_json::to_writer(&mut entry, record) {
        tracing::error!(error = %e, "could not serialise an audit record");
        return None;
    }
    let t = Instant::now();
    let appended = log.append(entry).await;
    metrics.audit_append(t.elapsed(), appended.is_ok());
    appended
        .inspect_err(
            |e| tracing::error!(error = %e, "audit append failed; withholding the response"),
        )
        .ok()
}

/// Largest admin request body [`WriteAhead`] reads (admin bodies are a few hundred bytes).
const MAX_ADMIN_BODY: usize = 1 << 20;

/// How long [`WriteAhead`] waits for an admin request's body, from the moment the guards before
/// it (authentication, the role and TOTP checks) let it through; then 408 and the connection
/// closed. Admin bodies are a few hundred bytes, sent with their headers; without a deadline a
/// client holding an admin or deploy key could hold its request (and one of the gateway's
/// detached admin tasks) for as long as the connection lived.
pub const ADMIN_BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The `decision` of an entry written ahead of an admin action.
pub const INTENT: &str = "intent";

/// Writes an admin action to the audit log before it runs (see the module documentation).
///
/// The entry has the `intent` decision, status 0 (no answer yet), the caller's key id and the
/// SHA-256 of the request body; the request's own entry, with the outcome, follows. Requests
/// that change nothing (`GET`, `HEAD`, `OPTIONS`) pass without one.
///
/// Once the intent is written, just before the action runs, the caller's key is checked again:
/// authentication and the TOTP check happen when the headers arrive, and a client could hold its
/// body back and so keep an action ready to run past its key's revocation (a stolen key and one
/// code made an admin key after `palisade keys revoke` had returned; 2026-12-06 review). A key
/// revoked or expired meanwhile is answered 401 and the action does not run.
#[derive(Clone)]
pub struct WriteAhead {
    log: Arc<dyn AuditLog>,
    metrics: Arc<Metrics>,
    keys: Arc<dyn KeyStore>,
}

impl WriteAhead {
    /// Writes ahead to `log`, checking keys again against `keys`.
    pub fn new(log: Arc<dyn AuditLog>, metrics: Arc<Metrics>, keys: Arc<dyn KeyStore>) -> Self {
        WriteAhead { log, metrics, keys }
    }

    /// Why the caller of `parts` may no longer act, if it may not: its key is no longer valid,
    /// or is not the one the guards authenticated (or none was: refused, not let through).
    fn no_longer(&self, parts: &axum::http::request::Parts) -> Option<Response> {
        let authenticated = parts.extensions.get::<Principal>();
        let client = parts.extensions.get::<ClientIdentity>();
        let again =
            presented_key(&parts.headers).map(|k| self.keys.authenticate_from(k, client, now_ms()));
        let why = match (again, authenticated) {
            (Some(Ok(Authn::Valid(k))), Some(p)) if k.id == p.0.id => return None,
            (Some(Err(e)), _) => return Some(key_store_failed(&e)),
            (Some(Ok(other)), _) => why_refused(&other).unwrap_or("invalid API key"),
            (None, _) => "invalid API key",
        };
        Some(unauthorised(why, None))
    }
}

/// Whether `resp` is [`WriteAhead`]'s refusal of an action whose intent the log could not take:
/// the action did not run (the authorise guard then gives its TOTP code back).
pub fn not_taken(resp: &Response) -> bool {
    matches!(resp.extensions().get::<Ahead>(), Some(Ahead::Refused))
}

impl Guard for WriteAhead {
    async fn handle(self, mut req: Request, next: Next) -> Response {
        let target = target_of(&mut req);
        if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS)
            || !matches!(
                *target,
                Target::AdminKeys | Target::AdminModels | Target::Logging | Target::Trace { .. }
            )
        {
            return call_next(next, req).await;
        }
        let ts_ms = now_ms();
        let (parts, body) = req.into_parts();
        let bytes = match validate::read_small_body(body, MAX_ADMIN_BODY, ADMIN_BODY_TIMEOUT).await
        {
            Ok(b) => b,
            Err(refused) => return refused,
        };
        let record = AuditRecord {
            ts_ms,
            key_id: parts
                .extensions
                .get::<Principal>()
                .map(|p| Cow::Borrowed(p.0.id.as_str())),
            method: Cow::Borrowed(parts.method.as_str()),
            path: Cow::Borrowed(parts.uri.path()),
            action: Cow::Borrowed(target.action()),
            model: target.model().map(Cow::Borrowed),
            version: None,
            decision: Cow::Borrowed(INTENT),
            status: 0,
            input_sha256: Some(Cow::Owned(crate::hexfmt::sha256(&bytes))),
            output_sha256: None,
            latency_us: 0,
            operator: None,
        };
        let Some(index) = append(&*self.log, &self.metrics, &record).await else {
            let mut r = error_response(StatusCode::SERVICE_UNAVAILABLE, NOT_SERVED);
            r.extensions_mut().insert(Decision::Error);
            r.extensions_mut().insert(Ahead::Refused);
            return r;
        };
        let mut r = match self.no_longer(&parts) {
            Some(refused) => refused,
            None => call_next(next, Request::from_parts(parts, Body::from(bytes))).await,
        };
        let status = r.status();
        r.extensions_mut().insert(Ahead::Written(index, status));
        r
    }
}

/// The answer to a request whose entry the log could not take, and to an admin action whose
/// intent it could not take (which was not taken, so not served either): one answer for both, so
/// that while the log is down an admin request's answer does not say whether its TOTP code was
/// right (a refusal by a guard and a refused intent look the same).
const NOT_SERVED: &str = "the audit log is unavailable; the request was not served";

/// What [`WriteAhead`] did (response extension, for the audit guard's message when the outcome
/// cannot be written either).
#[derive(Debug, Clone, Copy)]
enum Ahead {
    /// The intent is entry `.0`, and the admin API answered with status `.1`.
    Written(u64, StatusCode),
    /// The intent could not be written; the action did not run.
    Refused,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body that fails on its first frame.
    struct Broken;

    impl hyper::body::Body for Broken {
        type Data = bytes::Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, std::io::Error>>>
        {
            std::task::Poll::Ready(Some(Err(std::io::Error::other("the body broke"))))
        }
    }

    /// An audit log in `dir`.
    fn test_log(dir: &std::path::Path) -> Arc<crate::audit::SqliteAuditLog> {
        Arc::new(
            crate::audit::SqliteAuditLog::open(
                &dir.join("audit.db"),
                crate::audit::CheckpointSigner::from_seed(&[1; 32]),
                crate::audit::CheckpointPolicy::default(),
                crate::audit::Durability::Full,
            )
            .unwrap(),
        )
    }

    #[tokio::test]
    async fn a_response_whose_body_fails_is_answered_500_and_audited() {
        let dir = tempfile::tempdir().unwrap();
        let log = test_log(dir.path());
        let metrics = Arc::new(Metrics::new().unwrap());
        // The rest of the stack served the request, and its body then failed.
        let failing = Next::new(tower::service_fn(|_req: Request| async {
            let mut r = Response::new(Body::new(Broken));
            r.extensions_mut().insert(InputDigest("abc".into()));
            Ok::<_, std::convert::Infallible>(r)
        }));
        let req = axum::http::Request::post("/v2/models/m/infer")
            .body(Body::empty())
            .unwrap();
        let resp = Audit::new(log.clone(), metrics, Default::default())
            .handle(req, failing)
            .await;
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(log.size().unwrap(), 1);
        let entry: serde_json::Value =
            serde_json::from_slice(&log.entry(0).unwrap().unwrap()).unwrap();
        assert_eq!(entry["status"], 500, "{entry}");
        assert_eq!(entry["decision"], "error", "{entry}");
        assert_eq!(entry["input_sha256"], "abc", "{entry}");
        assert_eq!(entry["model"], "m", "{entry}");
    }

    /// A request whose passage panicked cannot be finished: it takes no place among those being
    /// finished. It took one for good (the task that was to finish it panicked at once, "async
    /// fn resumed after panicking"), and at the bound every later request waited for ever
    /// (review, 2026-12-06).
    #[tokio::test]
    async fn a_request_whose_passage_panicked_takes_no_place() {
        let dir = tempfile::tempdir().unwrap();
        let log = test_log(dir.path());
        let orphans = Arc::new(Orphans::at_most(1));
        let audit = Audit::new(log, Arc::new(Metrics::new().unwrap()), orphans.clone());
        let request = || {
            axum::http::Request::post("/v2/models/m/infer")
                .body(Body::empty())
                .unwrap()
        };
        let panicking = Next::new(tower::service_fn(|_req: Request| async {
            if true {
                panic!("a bug in the stack");
            }
            Ok::<_, std::convert::Infallible>(Response::new(Body::empty()))
        }));
        let r = tokio::spawn(audit.clone().handle(request(), panicking)).await;
        assert!(r.unwrap_err().is_panic());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert_eq!(orphans.running(), 0);
        let fine = Next::new(tower::service_fn(|_req: Request| async {
            Ok::<_, std::convert::Infallible>(Response::new(Body::empty()))
        }));
        let served = tokio::time::timeout(
            std::time::Duration::from_secs(3),
            audit.handle(request(), fine),
        )
        .await;
        assert!(served.is_ok(), "the next request waits");
    }
}
