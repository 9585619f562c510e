//! A deadline on a request's body, the one mechanism behind every body deadline: the validate
//! guard wraps a REST body in it with the model policy's `input.body_timeout_ms` (a body that
//! fails it is answered 408), and [`crate::guard::audit::WriteAhead`] an admin action's body with
//! [`crate::guard::audit::ADMIN_BODY_TIMEOUT`] (408 too). tonic reads a gRPC message whole (up to its 4 MiB limit) before
//! the model is known, so the router wraps every gRPC body in it with the deadline the caller's
//! key allows ([`grpc_body_limit`]; a body that fails it is answered `DEADLINE_EXCEEDED`, see
//! [`for_grpc`], and audited by [`crate::grpc::audit`]) and a [`BodyClock`], which the
//! translator passes on and the validate guard holds against the model's own deadline once the
//! call names its model. Without them a client, even
//! one without a key, could stall a body and hold its request for as long as it liked.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use hyper::body::{Frame, SizeHint};

/// When a gRPC call arrived and when its body last moved: a frame (data or trailers), its end or
/// its failure (request extension put by the router and passed on by the translator; the body's
/// [`DeadlineBody`] winds it). tonic reads a unary call's body to its end, trailers included, so
/// by the time the guards see the call, [`BodyClock::took`] is how long its body took: the
/// validate guard answers 408 when that is longer than the model's `input.body_timeout_ms`.
#[derive(Debug, Clone)]
pub struct BodyClock {
    arrived: Instant,
    /// Nanoseconds from `arrived` to the body's last frame or its end.
    last_moved: Arc<AtomicU64>,
}

impl BodyClock {
    /// A clock started now.
    pub fn start() -> Self {
        BodyClock {
            arrived: Instant::now(),
            last_moved: Arc::new(AtomicU64::new(0)),
        }
    }

    fn moved(&self) {
        let ns = self.arrived.elapsed().as_nanos().min(u64::MAX as u128) as u64;
        self.last_moved.fetch_max(ns, Ordering::AcqRel);
    }

    /// The clock of one message of a stream, which began to arrive at `started` and took
    /// `took` ([`crate::grpc::stream`]).
    pub(crate) fn of_message(started: Instant, took: Duration) -> Self {
        BodyClock {
            arrived: started,
            last_moved: Arc::new(AtomicU64::new(took.as_nanos().min(u64::MAX as u128) as u64)),
        }
    }

    /// When the call arrived.
    pub fn arrived(&self) -> Instant {
        self.arrived
    }

    /// From the call's arrival to its body's last frame or end so far.
    pub fn took(&self) -> Duration {
        Duration::from_nanos(self.last_moved.load(Ordering::Acquire))
    }
}

/// What any gRPC body may take, and all that one may take when the caller may query no model
/// served: enough for a message sent with its headers, as every client does, and for the calls
/// served without a key (`ServerLive`, `ServerReady`, `ServerMetadata`). Any other call without
/// a valid key, or with one that may query no model, is refused before its body is read at all
/// ([`crate::grpc::keyfirst`]), as REST refuses such a request.
pub const KEYLESS_BODY_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a gRPC call's body may take, before its model is known: the longest
/// `input.body_timeout_ms` of the models the caller's key (valid from the connection's
/// client certificate `client`) may query, or [`KEYLESS_BODY_TIMEOUT`]
/// when that is less or it may query none. A model's long deadline is for its own callers; its
/// short one is held by validate once the call names it. The key is looked up only when some
/// model allows more than the keyless wait.
pub fn grpc_body_limit(
    models: &crate::ModelRepository,
    keys: &dyn crate::keys::KeyStore,
    headers: &axum::http::HeaderMap,
    client: Option<&crate::keys::ClientIdentity>,
) -> Duration {
    let keyless = KEYLESS_BODY_TIMEOUT;
    // When no model allows more than the keyless wait there is no need to look at the key.
    if models
        .longest_body_timeout(|_| true)
        .is_none_or(|longest| longest <= keyless)
    {
        return keyless;
    }
    let Some(presented) = crate::guard::authn::presented_key(headers) else {
        return keyless;
    };
    match keys.authenticate_from(presented, client, crate::now_ms()) {
        Ok(crate::keys::Authn::Valid(key)) => models
            .longest_body_timeout(|model| key.may_query(model))
            .map_or(keyless, |own| own.max(keyless)),
        _ => keyless,
    }
}

/// A body that fails once its deadline, counted from the request's arrival, has passed before
/// it ended. A body that has arrived whole never starts the timer.
pub struct DeadlineBody {
    inner: Body,
    due: Pin<Box<tokio::time::Sleep>>,
    limit: Duration,
    clock: Option<BodyClock>,
    /// Whether the body was known to have ended with the last frame it gave.
    ended: bool,
}

impl DeadlineBody {
    /// `inner`, due within `limit` from now.
    pub fn new(inner: Body, limit: Duration) -> Self {
        DeadlineBody {
            inner,
            due: Box::pin(tokio::time::sleep(limit)),
            limit,
            clock: None,
            ended: false,
        }
    }

    /// `inner`, due within `limit` from now, noting on `clock` each frame it gives, its end and
    /// its failure.
    pub fn clocked(inner: Body, limit: Duration, clock: BodyClock) -> Self {
        DeadlineBody {
            clock: Some(clock),
            ..DeadlineBody::new(inner, limit)
        }
    }
}

/// Why a body failed (in the source chain of the error a reader of the body gets).
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {} ms", .0.as_millis())]
pub struct BodyTimedOut(Duration);

/// A body error as tonic should answer it: tonic replies with the gRPC status it finds in the
/// error's source chain (else `UNKNOWN`), so a missed deadline becomes `DEADLINE_EXCEEDED`.
pub fn for_grpc(e: axum::Error) -> axum::Error {
    use std::error::Error as _;
    match e.source().and_then(|s| s.downcast_ref::<BodyTimedOut>()) {
        Some(t) => axum::Error::new(tonic::Status::deadline_exceeded(t.to_string())),
        None => e,
    }
}

impl hyper::body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            if let Some(clock) = &this.clock {
                // A frame, a failure (a reset stream, which tonic may take for the end of the
                // body) or the end; not an end already known with the last frame, which comes
                // only when the reader asks, after decoding the message.
                if frame.is_some() || !this.ended {
                    clock.moved();
                }
                this.ended = frame.is_some() && this.inner.is_end_stream();
            }
            return Poll::Ready(frame);
        }
        if this.due.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut(this.limit)))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use http_body_util::BodyExt as _;

    use super::*;

    /// A body whose data never comes.
    struct Stalled;

    impl hyper::body::Body for Stalled {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn a_stalled_body_fails_at_its_deadline_and_a_whole_one_passes() {
        let t = Instant::now();
        let mut stalled = DeadlineBody::new(Body::new(Stalled), Duration::from_millis(100));
        let got = tokio::time::timeout(Duration::from_secs(10), stalled.frame())
            .await
            .expect("the deadline ended the wait");
        let err = got.expect("a frame").expect_err("an error");
        assert!(err.to_string().contains("within 100 ms"), "{err}");
        assert!(
            t.elapsed() >= Duration::from_millis(90),
            "{:?}",
            t.elapsed()
        );

        let whole = DeadlineBody::new(Body::from("abc"), Duration::from_millis(100));
        let bytes = whole.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"abc");
    }

    #[tokio::test]
    async fn the_clock_stops_when_the_body_ends_not_when_it_is_looked_at() {
        // The data comes at once and the trailers 100 ms later: the body took 100 ms.
        let (mut tx, body) = http_body_util::channel::Channel::<Bytes>::new(1);
        let clock = BodyClock::start();
        let body = DeadlineBody::clocked(Body::new(body), Duration::from_secs(10), clock.clone());
        tokio::spawn(async move {
            tx.send_data(Bytes::from_static(b"early")).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            tx.send_trailers(Default::default()).await.unwrap();
        });
        assert_eq!(&body.collect().await.unwrap().to_bytes()[..], b"early");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let took = clock.took();
        assert!(
            took >= Duration::from_millis(90) && took < Duration::from_millis(300),
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn the_clock_stops_when_the_body_fails_too() {
        // The data comes at once and the body fails (a reset stream) 100 ms later.
        let (mut tx, body) = http_body_util::channel::Channel::<Bytes, std::io::Error>::new(1);
        let clock = BodyClock::start();
        let body = DeadlineBody::clocked(Body::new(body), Duration::from_secs(10), clock.clone());
        tokio::spawn(async move {
            tx.send_data(Bytes::from_static(b"early")).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            tx.abort(std::io::Error::other("reset"));
        });
        assert!(body.collect().await.is_err());
        let took = clock.took();
        assert!(took >= Duration::from_millis(90), "{took:?}");
    }

    #[tokio::test]
    async fn tonic_answers_a_missed_deadline_with_deadline_exceeded() {
        let mut stalled =
            DeadlineBody::new(Body::new(Stalled), Duration::from_millis(10)).map_err(for_grpc);
        let err = stalled
            .frame()
            .await
            .expect("a frame")
            .expect_err("an error");
        let status = tonic::Status::from_error(Box::new(err));
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
        assert!(status.message().contains("within 10 ms"), "{status:?}");
        // Other errors are left to tonic.
        let other = for_grpc(axum::Error::new(std::io::Error::other("reset")));
        assert_eq!(
            tonic::Status::from_error(Box::new(other)).code(),
            tonic::Code::Unknown
        );
    }
}
