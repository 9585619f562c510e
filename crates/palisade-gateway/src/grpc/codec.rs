//! The service's protobuf codec: prost's (`tonic_prost`), except that a message that does not
//! decode is answered `INVALID_ARGUMENT`, not prost's `INTERNAL`. A malformed request is the
//! client's fault: `INTERNAL` tells a client, its retries and its alerts that the server failed
//! (review, 2026-12-06). `inference.rs`'s server uses it for every method, as
//! `tonic-prost-build`'s `codec_path("crate::grpc::codec::Codec")` writes it; its client keeps
//! prost's, since there the bytes that do not decode are the server's (review).
//!
//! Before, the prescan (`super::prescan`) decoded each `ModelInfer` message once more to make
//! that distinction, and tonic then decoded it again.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, DecodeBuf};
use tonic::{Code, Status};
use tonic_prost::prost::Message;
use tonic_prost::{ProstDecoder, ProstEncoder};

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
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = Decoder<U>;

    fn encoder(&mut self) -> ProstEncoder<T> {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Decoder<U> {
        Decoder(ProstDecoder::default())
    }
}

/// prost's decoder, its failure answered `INVALID_ARGUMENT`.
#[derive(Debug, Clone)]
pub struct Decoder<U>(ProstDecoder<U>);

impl<U: Message + Default> tonic::codec::Decoder for Decoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(|s| match s.code() {
            // prost's decoder fails only this way, and only on the bytes it was given.
            Code::Internal => Status::invalid_argument(format!(
                "the message is not a valid {}: {}",
                short_name::<U>(),
                s.message()
            )),
            _ => s,
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

/// `U`'s name without its path (`ModelInferRequest`).
fn short_name<U>() -> &'static str {
    let full = std::any::type_name::<U>();
    full.rsplit("::").next().unwrap_or(full)
}
