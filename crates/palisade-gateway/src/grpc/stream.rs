//! Triton's streaming inference, `ModelStreamInfer` (tritonclient's `start_stream` and
//! `async_stream_infer`): one call that carries many `ModelInferRequest` messages, each answered
//! by a `ModelStreamInferResponse`.
//!
//! **Each message is a request of its own.** It is translated and sent through the model stack
//! as a unary `ModelInfer` is: its own key check, role, rate limit and budget charge,
//! validation, hardening and audit entry (method `GRPC ModelStreamInfer`). A message the stack
//! refuses (a wrong shape, a model the key may not query, a rate limit) is answered in the
//! stream, as Triton does, with `error_message` (the guard's message, and the wait a rate limit
//! asks for) and, in `infer_response`, the request's id, model name and version; the stream goes
//! on.
//!
//! **What ends a stream**, with a status of its own after the answers to the messages before:
//! - a message refused as it is read, before the stack, audited here as
//!   [`super::audit::AuditUnreached`] audits such a unary call: one that cannot be read (not
//!   protobuf, naming more than a request may ([`super::codec`]), over tonic's 4 MiB, a body
//!   that ends within it), one that cannot be translated (a name that is not a model's, too
//!   many tensors), or one whose key is no longer valid: the key is checked again as each
//!   message is read, so a key revoked mid-stream ends it at its next message, and nothing
//!   more is read or translated. What follows such a message is not read: a refusal before the
//!   stack is not rate limited, and a stream of them would otherwise cost the gateway an audit
//!   entry per few bytes;
//! - the stack finding the key no longer valid (revoked between the two checks);
//! - a body deadline (below), or the call's own (`grpc-timeout`, tritonclient's
//!   `stream_timeout`), `DEADLINE_EXCEEDED`, audited too; the call's deadline also bounds each
//!   message's wait for the model, as a unary call's does;
//! - answers waiting for the client with none taken for the stream idle time ([`STREAM_IDLE`]
//!   unless set otherwise; from the first that waited, or the last taken), which the client is
//!   told after them if it ever reads again.
//!
//! **Deadlines on the body.** A unary call's body must arrive whole within the deadline its key
//! allows; a stream's body lasts as long as the stream. So [`MessageBody`] holds each message
//! to that deadline instead, counted from its first byte, and the wait between two messages to
//! the stream idle time. Both count only the time the gateway is waiting to read: while every place
//! of the stream is taken ([`IN_FLIGHT`]) it reads nothing, and what the client sent meanwhile
//! waits in HTTP/2's flow-control window, not against the client. Each message's own waiting
//! time goes to the validate guard (a per-message [`BodyClock`]), which holds it to its model's
//! `input.body_timeout_ms`, as for a unary call.
//!
//! **Order and concurrency.** One task reads the messages and starts each one's passage through
//! the stack as a task of its own; another hands the answers to the client in the order the
//! messages came (tritonclient matches them by id in any case). At most [`IN_FLIGHT`] passages
//! of a stream are unanswered at once (nothing more is read meanwhile), and at most as many
//! answers wait in the stream's queue for the client (HTTP/2 buffers what it has taken). Every
//! message read goes through the stack, or is refused, and has its audit entry. When the stream
//! ends early (its client gone, a deadline, a failure, answers not taken) the passages still
//! under way answer no one: those the audit guard has taken are aborted, and the guard finishes
//! each among its bounded orphans (`crate::guard::audit::Orphans`); the others are left to run
//! to their entry; all are recorded with status 499, and one that has not reached the model is
//! not run, as for a unary call whose client left. An answer already made when the stream ends,
//! but not taken, is recorded as served, as a unary answer its client did not read. The
//! answering task holds the connection ([`crate::listen::ConnectionHold`]): it is neither closed
//! as idle nor shed while the stream is open, and the stream bounds that itself, with the
//! deadlines above.
//!
//! Shutdown (`crate::Gateway::settle`) waits for every passage, those the audit guard has not
//! taken yet included (they are tasks of the gateway's `TaskTracker`, not orphans), and for the
//! entry of a stream the gateway ends, so that a message read just before the server stopped
//! still has its entry. A stream still open once that wait has begun is refused its next message
//! (`UNAVAILABLE`, audited 503), which ends it: it cannot keep shutdown waiting.

use std::collections::VecDeque;
use std::future::Future as _;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::Method;
use futures_util::stream::{BoxStream, StreamExt as _};
use hyper::body::{Frame, SizeHint};
use tonic::Code;
use tonic::Status;

use super::inference::{
    InferParameter, ModelInferRequest, ModelInferResponse, ModelStreamInferResponse,
    infer_parameter::ParameterChoice,
};
use super::{GrpcGateway, infer_body, infer_response, model_path};
use crate::deadline::BodyClock;
use crate::guard::{ClientGone, Entered};
use crate::now_ms;
use crate::oip;

/// The method served here.
pub const MODEL_STREAM_INFER: &str = "/inference.GRPCInferenceService/ModelStreamInfer";

/// Most messages of one stream in the model stack, or answered and waiting for the client, at
/// once (each).
pub const IN_FLIGHT: usize = 8;

/// How long a stream may wait for its next message, and its answers for the client, before it is
/// closed (`DEADLINE_EXCEEDED`), unless the gateway sets another
/// ([`crate::Gateway::stream_idle`], `serve --grpc-stream-idle-s`): an open stream holds an
/// HTTP/2 stream of its connection and a task.
pub const STREAM_IDLE: Duration = Duration::from_secs(300);

/// The request parameter with which tritonclient asks for `triton_final_response` on each
/// answer (`async_stream_infer(enable_empty_final_response=True)`). A Palisade model gives one
/// answer per request, so each answer is the final one and no empty one follows.
const FINAL_RESPONSE_ASKED: &str = "triton_enable_empty_final_response";
const FINAL_RESPONSE: &str = "triton_final_response";

/// When each message of a stream began to arrive and how long it took, in order, from
/// [`MessageBody`] to the handler (request extension). tonic decodes a message only once its
/// frame has arrived whole, so each decoded message has its entry at the front.
#[derive(Debug, Clone, Default)]
pub struct MessageTimes(Arc<Mutex<VecDeque<(Instant, Duration)>>>);

impl MessageTimes {
    fn push(&self, started: Instant, took: Duration) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back((started, took));
    }

    /// The clock of the next message decoded.
    fn next(&self) -> Option<BodyClock> {
        let (started, took) = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()?;
        Some(BodyClock::of_message(started, took))
    }
}

/// Where the body is in its gRPC framing: each message is a 5-byte header (a compression flag
/// and a big-endian length) and that many bytes.
#[derive(Debug, Clone, Copy)]
enum Framing {
    /// `have` bytes of a header read (0: between messages).
    Header { head: [u8; 5], have: usize },
    /// `left` bytes of a message still to come.
    Payload { left: u64 },
}

/// A streaming call's body, its messages each held to a deadline (see the module
/// documentation). It fails with a gRPC status, which tonic then answers.
pub struct MessageBody {
    inner: Body,
    /// What one message may take.
    limit: Duration,
    /// What the wait for the next message may take.
    idle: Duration,
    due: Pin<Box<tokio::time::Sleep>>,
    /// Since when the reader has waited, if its last poll found nothing.
    pending_since: Option<Instant>,
    /// Time waited for the message under way, or between messages for the next one.
    waited: Duration,
    framing: Framing,
    /// When the message under way began to arrive.
    started: Instant,
    times: MessageTimes,
    done: bool,
}

impl MessageBody {
    /// `inner`, each message due within `limit` of the time spent waiting for it, and the gaps
    /// between messages within `idle`; each message's time noted in `times`.
    pub fn new(inner: Body, limit: Duration, idle: Duration, times: MessageTimes) -> Self {
        MessageBody {
            inner,
            limit,
            idle,
            due: Box::pin(tokio::time::sleep(idle)),
            pending_since: None,
            waited: Duration::ZERO,
            framing: Framing::Header {
                head: [0; 5],
                have: 0,
            },
            started: Instant::now(),
            times,
            done: false,
        }
    }

    fn within_message(&self) -> bool {
        !matches!(self.framing, Framing::Header { have: 0, .. })
    }

    /// Follows the framing through `data`, which arrived at `now`.
    fn advance(&mut self, mut data: &[u8], now: Instant) {
        while !data.is_empty() {
            match &mut self.framing {
                Framing::Header { head, have } => {
                    if *have == 0 {
                        self.started = now;
                        self.waited = Duration::ZERO;
                    }
                    let take = (5 - *have).min(data.len());
                    head[*have..*have + take].copy_from_slice(&data[..take]);
                    *have += take;
                    data = &data[take..];
                    if *have == 5 {
                        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]);
                        self.framing = Framing::Payload {
                            left: u64::from(len),
                        };
                    }
                }
                Framing::Payload { left } => {
                    let take = (*left).min(data.len() as u64);
                    *left -= take;
                    data = &data[take as usize..];
                }
            }
            if let Framing::Payload { left: 0 } = self.framing {
                // What the gateway waited for it, not its wall time: the time the reader spent
                // elsewhere (every place of the stream taken) is not the client's.
                self.times.push(self.started, self.waited);
                self.framing = Framing::Header {
                    head: [0; 5],
                    have: 0,
                };
                self.waited = Duration::ZERO;
            }
        }
    }

    fn fail(&mut self, status: Status) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        self.done = true;
        Poll::Ready(Some(Err(axum::Error::new(status))))
    }
}

impl hyper::body::Body for MessageBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        let now = Instant::now();
        if let Some(since) = this.pending_since.take() {
            this.waited += now - since;
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.advance(data, now);
                } else if this.within_message() {
                    return this.fail(cut_short());
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.done = true;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) if this.within_message() => this.fail(cut_short()),
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => {
                let (allowed, late) = if this.within_message() {
                    let ms = this.limit.as_millis();
                    (
                        this.limit,
                        format!("a message did not arrive within {ms} ms"),
                    )
                } else {
                    let s = this.idle.as_secs();
                    (
                        this.idle,
                        format!("no message came for {s} s; the stream is closed"),
                    )
                };
                let Some(left) = allowed.checked_sub(this.waited).filter(|l| !l.is_zero()) else {
                    return this.fail(Status::deadline_exceeded(late));
                };
                this.pending_since = Some(now);
                this.due
                    .as_mut()
                    .reset(tokio::time::Instant::from_std(now + left));
                if this.due.as_mut().poll(cx).is_ready() {
                    return this.fail(Status::deadline_exceeded(late));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn cut_short() -> Status {
    Status::invalid_argument("the stream ended within a message (its frame was cut short)")
}

/// What each message of a stream takes from its call.
struct StreamCall {
    gateway: GrpcGateway,
    metadata: tonic::metadata::MetadataMap,
    extensions: tonic::Extensions,
    /// The key presented, checked again before each message and named in the audit entries of
    /// messages refused before the stack.
    presented: Option<String>,
    /// The call's own deadline (`grpc-timeout`), from its arrival.
    deadline: Option<Instant>,
    times: MessageTimes,
    /// Set once the stream has ended: its messages still under way answer no one.
    gone: ClientGone,
}

/// The answers to a `ModelStreamInfer` call's messages (see the module documentation): one task
/// reads the messages and starts each one's passage through the stack as a task of its own, at
/// most [`IN_FLIGHT`] unanswered; another, which holds the connection
/// ([`crate::listen::ConnectionHold`]), hands their answers to the client in order.
pub(super) fn serve(
    gateway: GrpcGateway,
    call: tonic::Request<tonic::Streaming<ModelInferRequest>>,
) -> BoxStream<'static, Result<ModelStreamInferResponse, Status>> {
    let (metadata, extensions, messages) = call.into_parts();
    let headers = metadata.clone().into_headers();
    let presented = crate::guard::authn::presented_key(&headers).map(str::to_owned);
    let arrived = extensions
        .get::<BodyClock>()
        .map_or_else(Instant::now, BodyClock::arrived);
    let deadline = super::call_deadline(&metadata, arrived);
    let times = extensions
        .get::<MessageTimes>()
        .cloned()
        .unwrap_or_default();
    let held = extensions
        .get::<crate::listen::ConnectionHold>()
        .map(crate::listen::ConnectionHold::hold);
    let call = Arc::new(StreamCall {
        gateway,
        metadata,
        extensions,
        presented,
        deadline,
        times,
        gone: ClientGone::default(),
    });
    // The answering task holds one passage outside the channel.
    let (jobs_tx, jobs) = tokio::sync::mpsc::channel(IN_FLIGHT - 1);
    let (tx, rx) = tokio::sync::mpsc::channel(IN_FLIGHT);
    let (end_tx, end) = tokio::sync::oneshot::channel();
    let taken = Arc::new(Taken::new());
    tokio::spawn(call.clone().read_all(messages, jobs_tx));
    let taking = taken.clone();
    tokio::spawn(async move {
        let _held = held;
        call.answer_all(jobs, tx, end_tx, &taking).await;
    });
    futures_util::stream::unfold((rx, Some(end), taken), |(mut rx, end, taken)| async move {
        if let Some(answer) = rx.recv().await {
            taken.now();
            return Some((answer, (rx, end, taken)));
        }
        let status = end?.await.ok()?;
        Some((Err(status), (rx, None, taken)))
    })
    .boxed()
}

type Answer = Result<ModelStreamInferResponse, Status>;

/// When the client last took an answer, in milliseconds from the stream's start.
struct Taken {
    start: Instant,
    last_ms: std::sync::atomic::AtomicU64,
}

impl Taken {
    fn new() -> Self {
        Taken {
            start: Instant::now(),
            last_ms: Default::default(),
        }
    }

    fn now(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms
            .fetch_max(ms, std::sync::atomic::Ordering::AcqRel);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(std::sync::atomic::Ordering::Acquire))
    }
}

/// A message's passage through the stack (or its refusal), as a task of its own.
struct Job {
    passage: tokio::task::JoinHandle<Answer>,
    /// Set once the audit guard has taken it (`None`: a refusal, audited here).
    entered: Option<Entered>,
}

impl Job {
    /// For a stream that has ended (its `ClientGone` set): a passage the audit guard has taken
    /// is aborted, and the guard finishes it among its bounded orphans (499, not run if it has
    /// not reached the model); one it has not taken yet, or a refusal being audited, is left to
    /// write its entry (499, nothing run, for the former).
    fn stop(self) {
        if self.entered.is_some_and(|e| e.now()) {
            self.passage.abort();
        }
    }
}

/// Why the answering task stopped before the client's end of the stream.
enum Stop {
    /// The client is gone: nothing to tell.
    Gone,
    /// A failure was the last answer: told.
    Told,
    /// The stream ends with this status, after the answers already queued.
    With(Status),
}

/// A message of a stream as it was read ([`StreamCall::read`]).
enum Read {
    /// Translated, for the model stack.
    Ready(Translated),
    /// Refused before the stack: the stream ends at it.
    Refused {
        status: Status,
        started: Instant,
        ts_ms: u64,
    },
}

/// A message translated into its REST request, with what its answer names.
struct Translated {
    named: Named,
    path: String,
    body: Vec<u8>,
    header_len: usize,
    clock: Option<BodyClock>,
    final_asked: bool,
}

/// What an answer names of the request it answers.
struct Named {
    id: String,
    model_name: String,
    model_version: String,
}

impl StreamCall {
    /// Reads the messages, in order, starting each one's passage, until the client's end of the
    /// stream, a message at which it ends ([`Read::Refused`]), or the answering task's end.
    async fn read_all(
        self: Arc<Self>,
        mut messages: tonic::Streaming<ModelInferRequest>,
        jobs: tokio::sync::mpsc::Sender<Job>,
    ) {
        loop {
            // A place first: nothing is read while every place is taken.
            let Ok(place) = jobs.reserve().await else {
                return;
            };
            let m = tokio::select! {
                biased;
                () = jobs.closed() => return,
                m = messages.next() => match m {
                    Some(m) => m,
                    None => return,
                },
            };
            let read = self.read(m);
            let last = matches!(read, Read::Refused { .. });
            let call = self.clone();
            let passages = &self.gateway.passages;
            // A task of its own, which shutdown waits for: every message read goes through the
            // stack, or is refused, and has its entry, however the stream ends.
            let job = match read {
                Read::Ready(message) => {
                    let entered = Entered::default();
                    let seen = entered.clone();
                    Job {
                        passage: passages.spawn(async move { call.answer(message, seen).await }),
                        entered: Some(entered),
                    }
                }
                Read::Refused {
                    status,
                    started,
                    ts_ms,
                } => Job {
                    passage: passages
                        .spawn(async move { Err(call.audited(status, started, ts_ms).await) }),
                    entered: None,
                },
            };
            place.send(job);
            if last {
                return;
            }
        }
    }

    /// Hands the answers to `tx` in order until the stream ends: the client's end of it, a
    /// failure (its last answer), the call's deadline, answers the client has not taken for
    /// the stream idle time, or the client gone. An end of the gateway's is audited and told
    /// through `end`, after the answers queued. A stream ended early aborts the passages still under
    /// way: each is finished and recorded (499) by the audit guard's bounded orphans
    /// (`crate::guard::audit::Orphans`), and not run if it has not reached the model.
    async fn answer_all(
        &self,
        mut jobs: tokio::sync::mpsc::Receiver<Job>,
        tx: tokio::sync::mpsc::Sender<Answer>,
        end: tokio::sync::oneshot::Sender<Status>,
        taken: &Taken,
    ) {
        let never = Instant::now() + Duration::from_secs(365 * 24 * 3600);
        let due = tokio::time::sleep_until(self.deadline.unwrap_or(never).into());
        let mut due = std::pin::pin!(due);
        // The passage being waited for, and its answer while it waits for a place.
        let mut job: Option<Job> = None;
        let mut answer: Option<Answer> = None;
        // Since when answers have been waiting for the client (none while the channel is empty).
        let mut waiting_since: Option<Instant> = None;
        let stop = loop {
            if tx.capacity() == tx.max_capacity() {
                waiting_since = None;
            }
            // The client's time runs from the first answer waiting, or from the last it took.
            let idle = self.gateway.stream_idle;
            let stalled_at = waiting_since.map(|w| w.max(taken.last()) + idle);
            let stall = tokio::time::sleep_until(stalled_at.unwrap_or(never).into());
            tokio::select! {
                biased;
                () = &mut due => break Stop::With(Status::deadline_exceeded(
                    "the call's deadline (grpc-timeout) passed; the stream is closed",
                )),
                () = stall, if stalled_at.is_some() => {
                    // Looked at again: the client may have taken one meanwhile.
                    if tx.capacity() == tx.max_capacity() {
                        waiting_since = None;
                    }
                    let at = waiting_since.map(|w| w.max(taken.last()) + idle);
                    if at.is_some_and(|at| at <= Instant::now()) {
                        break Stop::With(Status::deadline_exceeded(format!(
                            "no answer was taken for {} s; the stream is closed",
                            idle.as_secs_f64()
                        )));
                    }
                }
                () = tx.closed() => break Stop::Gone,
                j = jobs.recv(), if job.is_none() && answer.is_none() => match j {
                    Some(j) => job = Some(j),
                    None => return,
                },
                // (Evaluated even when disabled: it must not assume a passage.)
                a = async {
                    match job.as_mut() {
                        Some(j) => (&mut j.passage).await,
                        None => std::future::pending().await,
                    }
                }, if job.is_some() => {
                    job = None;
                    answer = Some(a.unwrap_or_else(|e| {
                        tracing::error!(error = %e, "a streamed message's passage failed");
                        Err(Status::internal("the message could not be answered"))
                    }));
                }
                place = tx.reserve(), if answer.is_some() => {
                    let Ok(place) = place else { break Stop::Gone };
                    let a = answer.take().expect("an answer");
                    let last = a.is_err();
                    if waiting_since.is_none() {
                        waiting_since = Some(Instant::now());
                    }
                    place.send(a);
                    if last {
                        break Stop::Told;
                    }
                }
            }
        };
        // The passages still under way answer no one: their entries say so (499), and those
        // not yet at the model are not run.
        self.gone.set();
        jobs.close();
        for job in job
            .into_iter()
            .chain(std::iter::from_fn(|| jobs.try_recv().ok()))
        {
            job.stop();
        }
        if let Stop::With(status) = stop {
            // Its entry is one that shutdown waits for too.
            let _tracked = self.gateway.passages.token();
            let status = self.audited(status, Instant::now(), now_ms()).await;
            let _ = end.send(status);
        }
    }

    /// Why the key presented may no longer send messages, if it may not (it was checked when
    /// the stream opened; it may have been revoked or expired since).
    fn key_refusal(&self) -> Option<Status> {
        super::keyfirst::refusal(
            &**self.gateway.unreached.keys(),
            self.presented.as_deref(),
            self.extensions.get(),
            None,
        )
    }

    /// A message as it is read: translated for the stack, or refused before it, which ends the
    /// stream (a message that could not be read, a key no longer valid, a request that cannot
    /// be translated).
    fn read(&self, m: Result<ModelInferRequest, Status>) -> Read {
        let ts_ms = now_ms();
        // Its clock, if its frame arrived whole (a message tonic could not decode has one too).
        let clock = self.times.next();
        let started = clock.as_ref().map_or_else(Instant::now, BodyClock::arrived);
        let refused = |status| Read::Refused {
            status,
            started,
            ts_ms,
        };
        let mut message = match m {
            Ok(m) => m,
            Err(status) => return refused(status),
        };
        if let Some(status) = self.key_refusal() {
            return refused(status);
        }
        // Shutdown waits for every passage (`crate::Gateway::settle`): a stream still open then
        // must not go on starting them.
        if self.gateway.passages.is_closed() {
            return refused(Status::unavailable(
                "the gateway is shutting down: this message was not run, and the stream is closed",
            ));
        }
        let final_asked = match message.parameters.remove(FINAL_RESPONSE_ASKED) {
            None => false,
            Some(InferParameter {
                parameter_choice: Some(ParameterChoice::BoolParam(b)),
            }) => b,
            Some(_) => {
                return refused(Status::invalid_argument(format!(
                    "parameter '{FINAL_RESPONSE_ASKED}' must be a bool"
                )));
            }
        };
        let translated = model_path(&message.model_name, &message.model_version, "/infer")
            .and_then(|path| infer_body(&message).map(|b| (path, b)));
        match translated {
            Ok((path, (body, header_len))) => Read::Ready(Translated {
                named: Named {
                    id: message.id,
                    model_name: message.model_name,
                    model_version: message.model_version,
                },
                path,
                body,
                header_len,
                clock,
                final_asked,
            }),
            Err(status) => refused(status),
        }
    }

    /// One message's answer: the model's outputs, or the reason the stack refused it. A key
    /// that the stack finds no longer valid ends the stream.
    async fn answer(&self, message: Translated, entered: Entered) -> Answer {
        let Translated {
            named,
            path,
            body,
            header_len: h,
            clock,
            final_asked,
        } = message;
        let answered = self
            .gateway
            .call_with(
                "ModelStreamInfer",
                Method::POST,
                path,
                super::Caller {
                    metadata: &self.metadata,
                    extensions: &self.extensions,
                    clock,
                    deadline: self.deadline,
                    gone: Some(self.gone.clone()),
                    entered: Some(entered),
                },
                &[(oip::HEADER_LENGTH, h.to_string())],
                body,
            )
            .await
            .and_then(|(parts, body)| {
                let hl = parts
                    .headers
                    .get(oip::HEADER_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok());
                infer_response(hl, &body)
            });
        match answered {
            Ok(mut r) => {
                if final_asked {
                    r.parameters.insert(
                        FINAL_RESPONSE.into(),
                        InferParameter {
                            parameter_choice: Some(ParameterChoice::BoolParam(true)),
                        },
                    );
                }
                Ok(ModelStreamInferResponse {
                    error_message: String::new(),
                    infer_response: Some(r),
                })
            }
            // The key went between the check as it was read and the stack's (audited there).
            Err(status) if status.code() == Code::Unauthenticated => Err(status),
            Err(status) => Ok(refusal(named, &status)),
        }
    }

    /// `status`, once its entry is written; `UNAVAILABLE` if the audit log could not take it.
    async fn audited(&self, status: Status, started: Instant, ts_ms: u64) -> Status {
        let written = self
            .gateway
            .unreached
            .record(
                self.presented.as_deref(),
                MODEL_STREAM_INFER,
                status.code(),
                started,
                ts_ms,
            )
            .await;
        if written {
            status
        } else {
            Status::unavailable("the audit log is unavailable; the request was not served")
        }
    }
}

/// The in-stream answer to a refused message: the reason (with the wait a rate limit asks for,
/// which a unary call gets as metadata), and which request it answers.
fn refusal(named: Named, status: &Status) -> ModelStreamInferResponse {
    let mut reason = if status.message().is_empty() {
        status.code().description().to_string()
    } else {
        status.message().to_string()
    };
    if let Some(secs) = status
        .metadata()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
    {
        reason.push_str(&format!(" (retry after {secs} s)"));
    }
    ModelStreamInferResponse {
        error_message: reason,
        infer_response: Some(ModelInferResponse {
            model_name: named.model_name,
            model_version: named.model_version,
            id: named.id,
            ..Default::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt as _;
    use http_body_util::channel::Channel;

    use super::*;

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8];
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// The error a body failed with, as the gRPC status tonic would find.
    fn status_of(e: axum::Error) -> Status {
        let src = std::error::Error::source(&e).expect("a source");
        src.downcast_ref::<Status>().expect("a status").clone()
    }

    /// A body fed through the returned sender, each message due within `limit_ms` and the gaps
    /// between them within `idle_ms`, and the times it notes.
    fn fed(
        limit_ms: u64,
        idle_ms: u64,
    ) -> (
        http_body_util::channel::Sender<Bytes>,
        MessageBody,
        MessageTimes,
    ) {
        let (tx, body) = Channel::<Bytes>::new(8);
        let times = MessageTimes::default();
        let b = MessageBody::new(
            Body::new(body),
            Duration::from_millis(limit_ms),
            Duration::from_millis(idle_ms),
            times.clone(),
        );
        (tx, b, times)
    }

    #[tokio::test]
    async fn messages_are_followed_across_chunks_and_each_is_timed() {
        let (mut tx, mut b, times) = fed(5000, 5000);
        let (one, two) = (frame(b"abc"), frame(b""));
        let three = frame(&[7; 300]);
        tokio::spawn(async move {
            // The first message's header split, the second whole with the third's first bytes,
            // the rest of the third 150 ms later.
            tx.send_data(Bytes::copy_from_slice(&one[..2]))
                .await
                .unwrap();
            let mut next = one[2..].to_vec();
            next.extend_from_slice(&two);
            next.extend_from_slice(&three[..10]);
            tx.send_data(next.into()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(150)).await;
            tx.send_data(Bytes::copy_from_slice(&three[10..]))
                .await
                .unwrap();
        });
        let mut got = Vec::new();
        while let Some(f) = b.frame().await {
            got.extend_from_slice(f.unwrap().data_ref().unwrap());
        }
        assert_eq!(got.len(), 8 + 5 + 305);
        let took: Vec<Duration> = std::iter::from_fn(|| times.next())
            .map(|c| c.took())
            .collect();
        assert_eq!(took.len(), 3, "{took:?}");
        assert!(took[0] < Duration::from_millis(100), "{took:?}");
        assert!(took[1] < Duration::from_millis(100), "{took:?}");
        assert!(took[2] >= Duration::from_millis(140), "{took:?}");
    }

    #[tokio::test]
    async fn a_stalled_message_fails_at_its_deadline_and_an_idle_stream_at_its_own() {
        let (mut tx, mut b, _) = fed(200, 60000);
        tx.send_data(Bytes::copy_from_slice(&frame(b"abcdef")[..7]))
            .await
            .unwrap();
        let t = Instant::now();
        b.frame().await.unwrap().unwrap();
        let e = b.frame().await.unwrap().unwrap_err();
        let s = status_of(e);
        assert_eq!(s.code(), Code::DeadlineExceeded, "{s:?}");
        assert!(s.message().contains("within 200 ms"), "{s:?}");
        assert!(
            t.elapsed() >= Duration::from_millis(190),
            "{:?}",
            t.elapsed()
        );
        // Failed, it ends.
        assert!(b.frame().await.is_none());

        let (mut tx, mut b, _) = fed(60000, 200);
        tx.send_data(frame(b"x").into()).await.unwrap();
        b.frame().await.unwrap().unwrap();
        let e = b.frame().await.unwrap().unwrap_err();
        let s = status_of(e);
        assert_eq!(s.code(), Code::DeadlineExceeded, "{s:?}");
        assert!(s.message().contains("no message came"), "{s:?}");
        drop(tx);
    }

    #[tokio::test]
    async fn time_the_reader_spends_elsewhere_is_not_the_client_s() {
        // Half a message, then the reader goes away for longer than the deadline while the
        // rest arrives: the message passes, since the gateway was not waiting for it.
        let (mut tx, mut b, _) = fed(200, 200);
        let f = frame(b"abcdef");
        tx.send_data(Bytes::copy_from_slice(&f[..7])).await.unwrap();
        b.frame().await.unwrap().unwrap();
        tx.send_data(Bytes::copy_from_slice(&f[7..])).await.unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        b.frame().await.unwrap().unwrap();
        drop(tx);
        assert!(b.frame().await.is_none());
    }

    #[tokio::test]
    async fn a_body_ending_within_a_message_is_the_client_s_fault() {
        for (sent, trailers) in [(&frame(b"abcdef")[..7], false), (&[0u8, 0, 0][..], true)] {
            let (mut tx, mut b, _) = fed(5000, 5000);
            tx.send_data(Bytes::copy_from_slice(sent)).await.unwrap();
            if trailers {
                tx.send_trailers(Default::default()).await.unwrap();
            }
            drop(tx);
            b.frame().await.unwrap().unwrap();
            let s = status_of(b.frame().await.unwrap().unwrap_err());
            assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
            assert!(s.message().contains("cut short"), "{s:?}");
        }
    }
}
