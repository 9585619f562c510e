//! A `ModelInfer` message's repeated fields, counted on the wire before it is decoded, and the
//! framing of a unary call's body.
//!
//! Decoding can make far more of a message than was sent: an empty `inputs` entry is 2 bytes on
//! the wire and a ~300-byte struct decoded, an empty `bytes` entry 2 bytes and a 24-byte `Vec`,
//! a map entry a few bytes and a hash map slot with a `String`; a 4 MiB message of them made
//! ~650 MB in prost alone (2026-12-06 review). [`super::keyfirst`] keeps callers without a key
//! from sending one; this keeps a caller with one within what a request can need.
//! [`check_infer_message`] walks a message's fields without allocating, and the service's codec
//! ([`super::codec`]) runs it on every `ModelInferRequest`, a unary call's or a stream's, before
//! prost decodes it: a message that names more than the bounds below is refused
//! `INVALID_ARGUMENT` undecoded. The codec then decodes a message within the bounds once, and
//! refuses a malformed one `INVALID_ARGUMENT` too.
//!
//! [`Prescan`] reads a unary call's body whole (at most tonic's 4 MiB, which tonic reads whole
//! too) and checks its framing, which tonic answers `INTERNAL` when it is broken; a stream's is
//! checked as it arrives (`super::stream::MessageBody`).

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::response::Response;
use tonic::Status;

use super::{MAX_RANK, MAX_TENSORS};
use crate::guard::{Guard, Next, call_next};

/// The service whose calls' framing is checked here.
const SERVICE: &str = "/inference.GRPCInferenceService/";

/// The largest message tonic decodes (its default), and so the most read here.
pub const MAX_MESSAGE: usize = 4 << 20;

/// Most entries of one `parameters` map (of the request, or of one of its tensors).
pub const MAX_PARAMETERS: usize = 64;

/// Most entries of a tensor's `bytes_contents` (decoded, each is a `Vec` of its own).
pub const MAX_BYTES_ELEMENTS: usize = 1 << 16;

/// Reads a varint at `*at`, moving past it.
fn varint(b: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*at)?;
        *at += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// One field of a message: its number and, for a length-delimited field, its bytes.
enum Field<'a> {
    Len(u32, &'a [u8]),
    Scalar(u32),
}

/// The fields of `msg` in order, up to where it is not well formed (an invalid wire type, a
/// length past the end), where prost stops decoding too. A group's start and end (wire types 3
/// and 4, which prost skips in unknown fields) are fields without a payload, and the fields
/// within a group are walked as if outside it: counted, at worst, where prost would skip them.
fn fields(msg: &[u8]) -> impl Iterator<Item = Field<'_>> {
    let mut at = 0;
    std::iter::from_fn(move || {
        if at >= msg.len() {
            return None;
        }
        let key = varint(msg, &mut at)?;
        let number = u32::try_from(key >> 3).ok()?;
        match key & 7 {
            0 => varint(msg, &mut at).map(|_| Field::Scalar(number)),
            3 | 4 => Some(Field::Scalar(number)),
            1 | 5 => {
                at = at.checked_add(if key & 7 == 1 { 8 } else { 4 })?;
                (at <= msg.len()).then_some(Field::Scalar(number))
            }
            2 => {
                let len = usize::try_from(varint(msg, &mut at)?).ok()?;
                let end = at.checked_add(len).filter(|e| *e <= msg.len())?;
                let body = &msg[at..end];
                at = end;
                Some(Field::Len(number, body))
            }
            _ => None,
        }
    })
}

/// How many elements field `number` of `msg` holds: one per occurrence, and for a packed
/// occurrence of a varint field, one per varint in it.
fn count_varints(msg: &[u8], number: u32) -> usize {
    fields(msg)
        .map(|f| match f {
            Field::Scalar(n) if n == number => 1,
            Field::Len(n, packed) if n == number => {
                let mut at = 0;
                std::iter::from_fn(|| varint(packed, &mut at)).count()
            }
            _ => 0,
        })
        .sum()
}

fn count(msg: &[u8], number: u32) -> usize {
    fields(msg)
        .filter(|f| matches!(f, Field::Len(n, _) | Field::Scalar(n) if *n == number))
        .count()
}

fn at_most(what: &str, n: usize, max: usize) -> Result<(), String> {
    if n > max {
        return Err(format!("the request has {n} {what}; at most {max}"));
    }
    Ok(())
}

/// Checks a `ModelInferRequest` message, as sent, against the bounds: inputs and outputs
/// together at most [`MAX_TENSORS`], as many raw input contents, each `parameters` map at most
/// [`MAX_PARAMETERS`] entries, each input's shape at most [`MAX_RANK`] dimensions and its
/// `bytes_contents` at most [`MAX_BYTES_ELEMENTS`] entries.
pub fn check_infer_message(msg: &[u8]) -> Result<(), String> {
    let (mut tensors, mut raw, mut parameters) = (0, 0, 0);
    for field in fields(msg) {
        let Field::Len(number, body) = field else {
            continue;
        };
        match number {
            4 => parameters += 1,
            5 => {
                tensors += 1;
                at_most(
                    "dimensions in an input's shape",
                    count_varints(body, 3),
                    MAX_RANK,
                )?;
                at_most("parameters on an input", count(body, 4), MAX_PARAMETERS)?;
                // `contents` sent in several pieces is one message to prost, which merges them:
                // their entries count together.
                let bytes_elements = fields(body)
                    .filter_map(|f| match f {
                        Field::Len(5, contents) => Some(count(contents, 8)),
                        _ => None,
                    })
                    .fold(0usize, usize::saturating_add);
                at_most(
                    "bytes_contents entries in an input",
                    bytes_elements,
                    MAX_BYTES_ELEMENTS,
                )?;
            }
            6 => {
                tensors += 1;
                at_most("parameters on an output", count(body, 2), MAX_PARAMETERS)?;
            }
            7 => raw += 1,
            _ => {}
        }
        at_most("tensors (inputs and outputs)", tensors, MAX_TENSORS)?;
        at_most("raw_input_contents entries", raw, MAX_TENSORS)?;
        at_most("request parameters", parameters, MAX_PARAMETERS)?;
    }
    Ok(())
}

/// Checks a `RepositoryModelLoadRequest` or `RepositoryModelUnloadRequest` message, as sent:
/// its `parameters` map (field 3) at most [`MAX_PARAMETERS`] entries.
pub fn check_repository_message(msg: &[u8]) -> Result<(), String> {
    at_most("load or unload parameters", count(msg, 3), MAX_PARAMETERS)
}

/// Checks a `LogSettingsRequest` message, as sent: its `settings` map (field 1) at most
/// [`MAX_PARAMETERS`] entries.
pub fn check_log_settings_message(msg: &[u8]) -> Result<(), String> {
    at_most("log settings", count(msg, 1), MAX_PARAMETERS)
}

/// Most values of one trace setting (`trace_level`'s levels; the others take one).
pub const MAX_SETTING_VALUES: usize = 16;

/// Checks a `TraceSettingRequest` message, as sent: its `settings` map (field 1) at most
/// [`MAX_PARAMETERS`] entries, and each entry's value (field 2, a `SettingValue`, whose pieces
/// prost merges) at most [`MAX_SETTING_VALUES`] strings (its field 1).
pub fn check_trace_settings_message(msg: &[u8]) -> Result<(), String> {
    at_most("trace settings", count(msg, 1), MAX_PARAMETERS)?;
    for field in fields(msg) {
        if let Field::Len(1, entry) = field {
            let values = fields(entry)
                .filter_map(|f| match f {
                    Field::Len(2, value) => Some(count(value, 1)),
                    _ => None,
                })
                .fold(0usize, usize::saturating_add);
            at_most("values of one trace setting", values, MAX_SETTING_VALUES)?;
        }
    }
    Ok(())
}

/// The fuzz target's property (`fuzz/fuzz_targets/grpc_prescan.rs`): any bytes are walked
/// without a panic, and a message the walk lets through decodes, if prost decodes it at all,
/// within every bound: the walk never counts less than prost makes.
pub fn fuzz_property(msg: &[u8]) {
    use tonic_prost::prost::Message as _;
    if check_repository_message(msg).is_ok()
        && let Ok(r) = super::inference::RepositoryModelLoadRequest::decode(msg)
    {
        assert!(r.parameters.len() <= MAX_PARAMETERS);
    }
    if check_log_settings_message(msg).is_ok()
        && let Ok(r) = super::inference::LogSettingsRequest::decode(msg)
    {
        assert!(r.settings.len() <= MAX_PARAMETERS);
    }
    if check_trace_settings_message(msg).is_ok()
        && let Ok(r) = super::inference::TraceSettingRequest::decode(msg)
    {
        assert!(r.settings.len() <= MAX_PARAMETERS);
        assert!(
            r.settings
                .values()
                .all(|v| v.value.len() <= MAX_SETTING_VALUES)
        );
    }
    let passed = check_infer_message(msg).is_ok();
    let Ok(r) = super::inference::ModelInferRequest::decode(msg) else {
        return;
    };
    if !passed {
        return;
    }
    assert!(r.inputs.len() + r.outputs.len() <= MAX_TENSORS);
    assert!(r.raw_input_contents.len() <= MAX_TENSORS);
    assert!(r.parameters.len() <= MAX_PARAMETERS);
    for i in &r.inputs {
        assert!(i.shape.len() <= MAX_RANK);
        assert!(i.parameters.len() <= MAX_PARAMETERS);
        let bytes = i.contents.as_ref().map_or(0, |c| c.bytes_contents.len());
        assert!(bytes <= MAX_BYTES_ELEMENTS);
    }
    for o in &r.outputs {
        assert!(o.parameters.len() <= MAX_PARAMETERS);
    }
}

/// The guard in front of tonic that checks a unary call's framing: a body without a message, or
/// with a frame cut short, is `INVALID_ARGUMENT` (tonic's answer is `INTERNAL`).
#[derive(Clone, Default)]
pub struct Prescan;

/// Why a call's body could not be read whole, as the status tonic would answer.
fn unread(e: axum::Error) -> Status {
    let mut src: Option<&dyn std::error::Error> = Some(&e);
    while let Some(s) = src {
        if s.is::<http_body_util::LengthLimitError>() {
            return Status::out_of_range(format!("the message is larger than {MAX_MESSAGE} bytes"));
        }
        // The body's deadline, as the router's `deadline::for_grpc` made it a status.
        if let Some(status) = s.downcast_ref::<Status>() {
            return status.clone();
        }
        if let Some(t) = s.downcast_ref::<crate::deadline::BodyTimedOut>() {
            return Status::deadline_exceeded(t.to_string());
        }
        src = s.source();
    }
    Status::cancelled(format!("the request body could not be read: {e}"))
}

/// The gRPC frames of a unary call's body (a compressed one, flag 1, is left to tonic, which
/// takes no compressed messages). A frame cut short is the client's fault
/// and is refused `INVALID_ARGUMENT`, where tonic would answer `INTERNAL`, which tells a
/// client, its retries and its alerts that the server failed (review, 2026-12-06); a message
/// that is not valid protobuf is refused so by the service's codec ([`super::codec`]), which
/// decodes it once.
fn check_frames(mut body: &[u8]) -> Result<(), Status> {
    // tonic answers a unary call without a message `INTERNAL` ("Missing request message").
    if body.is_empty() {
        return Err(Status::invalid_argument(
            "the call carries no message (a unary call sends exactly one)",
        ));
    }
    while !body.is_empty() {
        let Some(head) = body.get(..5) else {
            return Err(Status::invalid_argument(format!(
                "the message is cut short: {} bytes of a 5-byte frame header",
                body.len()
            )));
        };
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if body.get(5..5 + len).is_none() {
            return Err(Status::invalid_argument(format!(
                "the message is cut short: its frame says {len} bytes, {} follow",
                body.len() - 5
            )));
        };
        body = &body[5 + len..];
    }
    Ok(())
}

impl Guard for Prescan {
    async fn handle(self, req: Request, next: Next) -> Response {
        // A stream's messages are framed and timed by its body (`super::stream::MessageBody`).
        if !req.uri().path().starts_with(SERVICE)
            || req.uri().path() == super::stream::MODEL_STREAM_INFER
        {
            return call_next(next, req).await;
        }
        let (parts, body) = req.into_parts();
        // One message and its 5-byte frame header; tonic refuses a larger one as well.
        let bytes: Bytes = match axum::body::to_bytes(body, MAX_MESSAGE + 5).await {
            Ok(b) => b,
            Err(e) => return unread(e).into_http::<Body>(),
        };
        if let Err(status) = check_frames(&bytes) {
            return status.into_http::<Body>();
        }
        call_next(next, Request::from_parts(parts, Body::from(bytes))).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::inference::model_infer_request::{
        InferInputTensor, InferRequestedOutputTensor,
    };
    use crate::grpc::inference::{InferParameter, InferTensorContents, ModelInferRequest};
    use tonic_prost::prost::Message as _;

    fn request() -> ModelInferRequest {
        ModelInferRequest {
            model_name: "m".into(),
            inputs: vec![InferInputTensor {
                name: "input".into(),
                datatype: "FP32".into(),
                shape: vec![1, 1, 28, 28],
                ..Default::default()
            }],
            outputs: vec![InferRequestedOutputTensor {
                name: "logits".into(),
                ..Default::default()
            }],
            raw_input_contents: vec![vec![0; 784 * 4]],
            ..Default::default()
        }
    }

    #[test]
    fn an_ordinary_request_passes() {
        check_infer_message(&request().encode_to_vec()).unwrap();
        // Typed contents and parameters within the bounds pass too.
        let mut r = request();
        r.raw_input_contents.clear();
        r.inputs[0].contents = Some(InferTensorContents {
            fp32_contents: vec![0.5; 784],
            bytes_contents: vec![vec![1]; 10],
            ..Default::default()
        });
        r.parameters.insert("p".into(), InferParameter::default());
        check_infer_message(&r.encode_to_vec()).unwrap();
    }

    #[test]
    fn each_bound_is_held() {
        let check = |r: ModelInferRequest| check_infer_message(&r.encode_to_vec());
        let mut r = request();
        r.inputs = vec![InferInputTensor::default(); MAX_TENSORS];
        assert!(check(r).unwrap_err().contains("tensors"));
        let mut r = request();
        r.raw_input_contents = vec![Vec::new(); MAX_TENSORS + 1];
        assert!(check(r).unwrap_err().contains("raw_input_contents"));
        let mut r = request();
        r.inputs[0].shape = vec![1; MAX_RANK + 1];
        assert!(check(r).unwrap_err().contains("dimensions"));
        let mut r = request();
        r.parameters = (0..=MAX_PARAMETERS)
            .map(|i| (i.to_string(), InferParameter::default()))
            .collect();
        assert!(check(r).unwrap_err().contains("request parameters"));
        let mut r = request();
        r.inputs[0].parameters = (0..=MAX_PARAMETERS)
            .map(|i| (i.to_string(), InferParameter::default()))
            .collect();
        assert!(check(r).unwrap_err().contains("on an input"));
        let mut r = request();
        r.outputs[0].parameters = (0..=MAX_PARAMETERS)
            .map(|i| (i.to_string(), InferParameter::default()))
            .collect();
        assert!(check(r).unwrap_err().contains("on an output"));
        let mut r = request();
        r.inputs[0].contents = Some(InferTensorContents {
            bytes_contents: vec![Vec::new(); MAX_BYTES_ELEMENTS + 1],
            ..Default::default()
        });
        assert!(check(r).unwrap_err().contains("bytes_contents"));
    }

    #[test]
    fn an_unpacked_shape_is_counted_too() {
        // Field 3 of the input as separate varints (proto2-style), not one packed run.
        let mut input = Vec::new();
        for _ in 0..=MAX_RANK {
            input.extend_from_slice(&[0x18, 0x01]);
        }
        let mut msg = vec![0x2a, input.len() as u8];
        msg.extend_from_slice(&input);
        assert!(
            check_infer_message(&msg)
                .unwrap_err()
                .contains("dimensions")
        );
    }

    /// Appends field `number` as a length-delimited field holding `body`.
    fn len_field(out: &mut Vec<u8>, number: u8, body: &[u8]) {
        out.push(number << 3 | 2);
        let mut n = body.len();
        while n >= 0x80 {
            out.push((n as u8 & 0x7f) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
        out.extend_from_slice(body);
    }

    /// An input's `contents` sent in two pieces is one message to prost, which merges them: the
    /// entries of both count against the bound (each piece alone is under it) (review, 2026-12-06).
    #[test]
    fn contents_sent_in_pieces_count_together() {
        let half = InferTensorContents {
            bytes_contents: vec![Vec::new(); MAX_BYTES_ELEMENTS / 2 + 10_000],
            ..Default::default()
        }
        .encode_to_vec();
        let mut input = InferInputTensor {
            name: "input".into(),
            datatype: "BYTES".into(),
            shape: vec![1],
            ..Default::default()
        }
        .encode_to_vec();
        len_field(&mut input, 5, &half);
        len_field(&mut input, 5, &half);
        let mut msg = ModelInferRequest {
            model_name: "m".into(),
            ..Default::default()
        }
        .encode_to_vec();
        len_field(&mut msg, 5, &input);
        let decoded = ModelInferRequest::decode(&msg[..]).unwrap();
        let entries = decoded.inputs[0]
            .contents
            .as_ref()
            .unwrap()
            .bytes_contents
            .len();
        assert!(entries > MAX_BYTES_ELEMENTS, "{entries}");
        let e = check_infer_message(&msg).unwrap_err();
        assert!(e.contains("bytes_contents"), "{e}");
        // One piece alone passes.
        let mut one = ModelInferRequest::default().encode_to_vec();
        let mut input = InferInputTensor::default().encode_to_vec();
        len_field(&mut input, 5, &half);
        len_field(&mut one, 5, &input);
        assert_eq!(check_infer_message(&one), Ok(()));
    }

    /// A trace setting's value sent in two pieces is one `SettingValue` to prost: its strings
    /// count together.
    #[test]
    fn a_trace_setting_s_values_in_pieces_count_together() {
        use crate::grpc::inference::TraceSettingRequest;
        use crate::grpc::inference::trace_setting_request::SettingValue;
        let half = SettingValue {
            value: vec![String::new(); MAX_SETTING_VALUES / 2 + 1],
        }
        .encode_to_vec();
        let mut entry = Vec::new();
        len_field(&mut entry, 1, b"trace_level");
        len_field(&mut entry, 2, &half);
        let mut msg = Vec::new();
        len_field(&mut msg, 1, &entry);
        assert_eq!(check_trace_settings_message(&msg), Ok(()));
        len_field(&mut entry, 2, &half);
        let mut msg = Vec::new();
        len_field(&mut msg, 1, &entry);
        let decoded = TraceSettingRequest::decode(&msg[..]).unwrap();
        assert!(decoded.settings["trace_level"].value.len() > MAX_SETTING_VALUES);
        let e = check_trace_settings_message(&msg).unwrap_err();
        assert!(e.contains("values of one trace setting"), "{e}");
        // Too many settings.
        let mut msg = Vec::new();
        for i in 0..=MAX_PARAMETERS {
            let mut entry = Vec::new();
            len_field(&mut entry, 1, format!("s{i}").as_bytes());
            len_field(&mut msg, 1, &entry);
        }
        assert!(check_trace_settings_message(&msg).is_err());
    }

    #[test]
    fn malformed_bytes_are_left_to_prost() {
        for msg in [&[0xff][..], &[0x2a, 0x10, 0x01], &[0x0b, 0x00], &[]] {
            check_infer_message(msg).unwrap();
            let decoded = ModelInferRequest::decode(msg);
            assert!(msg.is_empty() || decoded.is_err(), "{msg:?}");
        }
    }

    #[test]
    fn the_walk_never_counts_less_than_prost_decodes() {
        // The fuzz target's property, on a valid message cut anywhere, with bits flipped, and
        // with bytes of a fixed-seed generator spliced in.
        let mut r = request();
        r.inputs[0].contents = Some(InferTensorContents {
            int64_contents: vec![1, 2, 3],
            bytes_contents: vec![vec![7]; 3],
            ..Default::default()
        });
        r.parameters.insert("k".into(), InferParameter::default());
        r.raw_input_contents = vec![vec![1, 2, 3]];
        let msg = r.encode_to_vec();
        for cut in 0..=msg.len() {
            fuzz_property(&msg[..cut]);
        }
        for bit in 0..msg.len() * 8 {
            let mut m = msg.clone();
            m[bit / 8] ^= 1 << (bit % 8);
            fuzz_property(&m);
        }
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for at in 0..msg.len() {
            let mut m = msg[..at].to_vec();
            for _ in 0..8 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                m.push(x as u8);
            }
            m.extend_from_slice(&msg[at..]);
            fuzz_property(&m);
        }
    }
}
