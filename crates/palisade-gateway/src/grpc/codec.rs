//! The service's protobuf codec: prost's (`tonic_prost`), except that a message that does not
//! decode is answered `INVALID_ARGUMENT`, not prost's `INTERNAL`. A malformed request is the
//! client's fault: `INTERNAL` tells a client, its retries and its alerts that the server failed
//! (review, 2026-12-06). `inference.rs`'s server uses it for every method, as
//! `tonic-prost-build`'s `codec_path("crate::grpc::codec::Codec")` writes it; its client keeps
//! prost's, since there the bytes that do not decode are the server's (review).
//!
//! Before, the prescan (`super::prescan`) decoded each `ModelInfer` message once more to make
//! that distinction, and tonic then decoded it again.
//!
//! Before decoding, a message is held to its type's [`Bounds`]: a `ModelInferRequest` to
//! [`super::prescan::check_infer_message`]'s, so that what a message names is counted on the
//! wire, unary call or stream alike, before prost allocates for it.

use std::marker::PhantomData;

use tonic::Status;
use tonic::codec::{BufferSettings, DecodeBuf};
use tonic_prost::ProstEncoder;
use tonic_prost::prost::Message;

/// prost's codec, a decoding failure answered `INVALID_ARGUMENT`.
#[derive(Debug, Clone)]
pub struct Codec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Codec(PhantomData)
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Bounds + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = Decoder<U>;

    fn encoder(&mut self) -> ProstEncoder<T> {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Decoder<U> {
        Decoder(PhantomData)
    }
}

/// prost's decoding, after the message's [`Bounds`], its failure answered `INVALID_ARGUMENT`.
#[derive(Debug, Clone)]
pub struct Decoder<U>(PhantomData<U>);

impl<U: Message + Default + Bounds> tonic::codec::Decoder for Decoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        use bytes::Buf as _;
        // The message in one piece (split off tonic's buffer, not copied), so that the bounds
        // walk all of it whatever the buffer's layout.
        let msg = buf.copy_to_bytes(buf.remaining());
        U::within(&msg).map_err(Status::invalid_argument)?;
        U::decode(msg)
            .map(Some)
            .map_err(|e| not_valid::<U>(&e.to_string()))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

fn not_valid<U>(why: &str) -> Status {
    Status::invalid_argument(format!(
        "the message is not a valid {}: {why}",
        short_name::<U>()
    ))
}

/// `U`'s name without its path (`ModelInferRequest`).
fn short_name<U>() -> &'static str {
    let full = std::any::type_name::<U>();
    full.rsplit("::").next().unwrap_or(full)
}

/// What a message must keep within before it is decoded (see the module documentation).
pub trait Bounds {
    /// Why `msg`, as sent, names more than a request may, if it does.
    fn within(msg: &[u8]) -> Result<(), String> {
        let _ = msg;
        Ok(())
    }
}

impl Bounds for super::inference::ModelInferRequest {
    fn within(msg: &[u8]) -> Result<(), String> {
        super::prescan::check_infer_message(msg)
    }
}

impl Bounds for super::inference::RepositoryModelLoadRequest {
    fn within(msg: &[u8]) -> Result<(), String> {
        super::prescan::check_repository_message(msg)
    }
}

impl Bounds for super::inference::RepositoryModelUnloadRequest {
    fn within(msg: &[u8]) -> Result<(), String> {
        super::prescan::check_repository_message(msg)
    }
}

impl Bounds for super::inference::LogSettingsRequest {
    fn within(msg: &[u8]) -> Result<(), String> {
        super::prescan::check_log_settings_message(msg)
    }
}

impl Bounds for super::inference::TraceSettingRequest {
    fn within(msg: &[u8]) -> Result<(), String> {
        super::prescan::check_trace_settings_message(msg)
    }
}

/// Requests of a few fixed fields, or of strings alone: nothing to count.
macro_rules! unbounded {
    ($($t:ident),* $(,)?) => { $(impl Bounds for super::inference::$t {})* };
}

unbounded!(
    ServerLiveRequest,
    ServerReadyRequest,
    ModelReadyRequest,
    ServerMetadataRequest,
    ModelMetadataRequest,
    ModelConfigRequest,
    ModelStatisticsRequest,
    RepositoryIndexRequest,
);
