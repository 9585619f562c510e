//! A deadline on a request's body, the one mechanism behind both body deadlines: the validate
//! guard wraps a REST body in it with the model policy's `input.body_timeout_ms` (a body that
//! fails it is answered 408). tonic reads a gRPC message whole (up to its 4 MiB limit) before
//! the model is known, so the router wraps every gRPC body in it with the longest deadline of
//! any model served, or the shortest for a caller without a valid key ([`grpc_body_limit`]; a
//! body that fails it is answered `DEADLINE_EXCEEDED`, see [`for_grpc`], and audited by
//! [`crate::grpc::audit`]) and notes when the call [`Arrived`]; the translator turns that into
//! how long the body took ([`BodyTook`]), which the validate guard holds against the model's own
//! deadline once the call names its model. Without them a client, even one without a key, could
//! stall a body and hold its request for as long as it liked.

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use hyper::body::{Frame, SizeHint};

/// When a gRPC call arrived, before tonic read its body (request extension).
#[derive(Debug, Clone, Copy)]
pub struct Arrived(pub std::time::Instant);

/// How long a gRPC call's message took to arrive, from [`Arrived`] to its decoding (request
/// extension the translator puts on the request it makes): the validate guard answers 408 when
/// it is longer than the model's `input.body_timeout_ms`.
#[derive(Debug, Clone, Copy)]
pub struct BodyTook(pub Duration);

/// How long a gRPC call's body may take, before its model is known: the longest
/// `input.body_timeout_ms` of any model served when the call presents a valid key, else the
/// shortest, and at most the default. A call without a valid key is refused once its message is
/// read, whatever the model, so it gets no more than any model grants: REST refuses such a
/// request before reading its body at all, and a model's long deadline is for its own callers.
pub fn grpc_body_limit(
    models: &crate::ModelRepository,
    keys: &dyn crate::keys::KeyStore,
    headers: &axum::http::HeaderMap,
) -> Duration {
    let (shortest, longest) = models.body_timeouts();
    let keyless = shortest.min(Duration::from_millis(
        crate::policy::DEFAULT_BODY_TIMEOUT_MS,
    ));
    if keyless == longest {
        return longest;
    }
    let valid = crate::guard::authn::presented_key(headers).is_some_and(|k| {
        matches!(
            keys.authenticate(k, crate::now_ms()),
            Ok(crate::keys::Authn::Valid(_))
        )
    });
    if valid { longest } else { keyless }
}

/// A body that fails once its deadline, counted from the request's arrival, has passed before
/// it ended. A body that has arrived whole never starts the timer.
pub struct DeadlineBody {
    inner: Body,
    due: Pin<Box<tokio::time::Sleep>>,
    limit: Duration,
}

impl DeadlineBody {
    /// `inner`, due within `limit` from now.
    pub fn new(inner: Body, limit: Duration) -> Self {
        DeadlineBody {
            inner,
            due: Box::pin(tokio::time::sleep(limit)),
            limit,
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
