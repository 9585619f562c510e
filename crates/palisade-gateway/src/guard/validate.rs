//! Input validation: untrusted bytes in, a typed batch out, or a 4xx that says what is wrong.
//!
//! For infer requests, in order: the model exists (404); the body arrives within the policy's
//! `body_timeout_ms` (408, and the connection closed; a gRPC call's body, read before its model
//! was known, is held to it by how long it took, [`BodyClock`]) and fits its `max_body_bytes`,
//! before and after `gzip`/`deflate` decompression (413; other encodings 415);
//! it is a well-formed OIP request, JSON or binary extension, whose sizes add up (400); it has
//! the model's one input, with dtype FP32 and shape `[N, ...input_shape]`, `1 ≤ N ≤ max_batch`
//! (400); every value is finite and inside the declared range (400); the outputs it asks for
//! exist (400). The batch goes on the request as [`ValidatedInfer`]. A body over 64 KiB, or a
//! compressed one, is decompressed, decoded, checked and hashed on a blocking thread, so that
//! its milliseconds of CPU do not hold up the async worker every connection shares.

use std::io::Read as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use ndarray::{ArrayD, IxDyn};

use super::{
    BodyDigest, Guard, INLINE_BYTES, InputDigest, Next, ServedVersion, ValidatedInfer, call_next,
    call_next_meanwhile, off_worker_if, reject,
};
use crate::deadline::{BodyClock, BodyTimedOut, DeadlineBody};
use crate::model::{ModelRepository, ServedModel};
use crate::oip::{self, InferRequest, ModelAction, Target, target_of};
use crate::stats::{Served, Tally};

const GUARD: &str = "validate";

/// The validation guard.
#[derive(Clone)]
pub struct Validate {
    models: Arc<ModelRepository>,
}

impl Validate {
    /// Validates requests for the models of `models`, by their policies.
    pub fn new(models: Arc<ModelRepository>) -> Self {
        Validate { models }
    }
}

pub(super) fn bad(message: String) -> Response {
    reject(StatusCode::BAD_REQUEST, GUARD, &message)
}

pub(super) fn too_large(limit: usize) -> Response {
    reject(
        StatusCode::PAYLOAD_TOO_LARGE,
        GUARD,
        &format!("request body exceeds {limit} bytes"),
    )
}

/// 408, and the connection closed (RFC 9110 §15.5.9): what is left of the body never comes.
pub(super) fn too_slow(ms: u64) -> Response {
    let mut r = reject(
        StatusCode::REQUEST_TIMEOUT,
        GUARD,
        &format!("the request body did not arrive within {ms} ms"),
    );
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// Why a body could not be read.
pub(super) enum BodyError {
    TooLarge,
    TimedOut,
    Encoding(String),
    Corrupt(String),
    Read(String),
}

/// Reads a body as sent, never holding more than `limit` bytes.
pub(super) async fn read_body(body: Body, limit: usize) -> Result<Bytes, BodyError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        // `to_bytes` reports the limit as a `LengthLimitError`, and the body's deadline as a
        // `BodyTimedOut`, in its source chain.
        let mut src: Option<&dyn std::error::Error> = Some(&e);
        while let Some(s) = src {
            if s.is::<http_body_util::LengthLimitError>() {
                return BodyError::TooLarge;
            }
            if s.is::<BodyTimedOut>() {
                return BodyError::TimedOut;
            }
            src = s.source();
        }
        BodyError::Read(e.to_string())
    })
}

/// Reads a small body that is not a model's (an admin action's, a repository index request's)
/// whole, within `timeout` and `limit` bytes, refused as a model's body is (413, 408 and the
/// connection closed, 400).
pub(crate) async fn read_small_body(
    body: Body,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, Response> {
    let body = Body::new(DeadlineBody::new(body, timeout));
    read_body(body, limit).await.map_err(|e| match e {
        BodyError::TooLarge => too_large(limit),
        BodyError::TimedOut => too_slow(timeout.as_millis() as u64),
        BodyError::Read(m) | BodyError::Corrupt(m) | BodyError::Encoding(m) => {
            bad(format!("could not read the request body: {m}"))
        }
    })
}

/// Whether a body is sent without compression (`Content-Encoding` absent or `identity`).
fn uncompressed(encoding: Option<&str>) -> bool {
    encoding.is_none_or(|e| e.trim().eq_ignore_ascii_case("identity"))
}

/// Decompresses a body as its `Content-Encoding` says, never holding more than `limit` bytes.
/// An uncompressed body is returned as read, not copied.
fn decompress(raw: Bytes, encoding: Option<&str>, limit: usize) -> Result<Bytes, BodyError> {
    let enc = encoding.map(|e| e.trim().to_ascii_lowercase());
    let mut out = Vec::new();
    let take = limit as u64 + 1;
    let res = match enc.as_deref() {
        None | Some("identity") => return Ok(raw),
        // A gzip body is a series of members (RFC 1952), each decoded; bytes after the last
        // that do not begin another member are refused, not dropped (review, 2026-12-06).
        Some("gzip") | Some("x-gzip") => flate2::read::MultiGzDecoder::new(&raw[..])
            .take(take)
            .read_to_end(&mut out),
        Some("deflate") => {
            // RFC 9110's "deflate" is zlib-wrapped; some clients send raw deflate.
            let mut zlib = flate2::bufread::ZlibDecoder::new(&raw[..]);
            let read = (&mut zlib).take(take).read_to_end(&mut out);
            let (read, used) = if read.is_err() {
                out.clear();
                let mut deflate = flate2::bufread::DeflateDecoder::new(&raw[..]);
                let read = (&mut deflate).take(take).read_to_end(&mut out);
                (read, deflate.total_in())
            } else {
                (read, zlib.total_in())
            };
            let after = (raw.len() as u64).saturating_sub(used);
            if read.is_ok() && out.len() <= limit && after > 0 {
                return Err(BodyError::Corrupt(format!(
                    "{after} bytes follow the end of the compressed body"
                )));
            }
            read
        }
        Some(other) => {
            return Err(BodyError::Encoding(format!(
                "unsupported Content-Encoding '{other}' (use gzip, deflate or none)"
            )));
        }
    };
    res.map_err(|e| BodyError::Corrupt(format!("cannot decompress the body: {e}")))?;
    if out.len() > limit {
        return Err(BodyError::TooLarge);
    }
    Ok(out.into())
}

/// Checks a decoded request against the model and builds the batch. The batch takes the input's
/// values: once it is built, `req`'s input holds none (the request is kept for its ids and the
/// outputs it asks for). On an error `req` is unchanged.
pub fn check_request(model: &ServedModel, req: &mut InferRequest) -> Result<ArrayD<f32>, String> {
    let info = model.classifier.info();
    let input = match req.inputs.as_slice() {
        [one] => one,
        [] => return Err("the request has no inputs".into()),
        many => {
            return Err(format!(
                "the request has {} inputs; model '{}' takes one, '{}'",
                many.len(),
                model.name,
                model.input_name
            ));
        }
    };
    if input.name != model.input_name {
        return Err(format!(
            "unknown input '{}'; model '{}' takes '{}'",
            input.name, model.name, model.input_name
        ));
    }
    let n = info.check_batch(&input.shape).map_err(|_| {
        format!(
            "input '{}' has shape {:?}; the model expects [N, {}]",
            input.name,
            input.shape,
            info.input_shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    let (max, why) = model.policy.batch_limit();
    if n == 0 || n > max {
        return Err(format!(
            "batch size {n} is outside 1..={max} (the policy's {why})"
        ));
    }
    let [lo, hi] = model
        .policy
        .input
        .range
        .unwrap_or([info.input_range.min, info.input_range.max]);
    if let Some(i) = first_outside(&input.data, lo, hi) {
        let v = input.data[i];
        return Err(if v.is_finite() {
            format!(
                "input '{}': element {i} = {v} is outside [{lo}, {hi}]",
                input.name
            )
        } else {
            format!("input '{}': element {i} is {v}", input.name)
        });
    }
    let outputs = model.outputs();
    for o in &req.outputs {
        if !outputs.iter().any(|t| t.name == o.name) {
            let names: Vec<&str> = outputs.iter().map(|t| t.name.as_str()).collect();
            return Err(format!(
                "unknown output '{}'; model '{}' has {names:?}",
                o.name, model.name
            ));
        }
    }
    // The one failure `from_shape_vec` has, checked before the values are taken.
    if input
        .shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        != Some(input.data.len())
    {
        return Err(format!(
            "input '{}': shape {:?} does not hold {} values",
            input.name,
            input.shape,
            input.data.len()
        ));
    }
    let input = &mut req.inputs[0];
    ArrayD::from_shape_vec(IxDyn(&input.shape), std::mem::take(&mut input.data))
        .map_err(|e| format!("input '{}': {e}", input.name))
}

/// Whether `v` is finite and within `[lo, hi]` (NaN fails every comparison).
fn acceptable(v: f32, lo: f32, hi: f32) -> bool {
    (v >= lo) & (v <= hi) & (v.abs() <= f32::MAX)
}

/// The first value that is not [`acceptable`], if any. A request is almost always valid, so the
/// whole slice is first checked in one pass of comparisons OR-ed into a flag, without early exit,
/// which the compiler turns into vector instructions; the offender is looked for only when that
/// says there is one.
fn first_outside(data: &[f32], lo: f32, hi: f32) -> Option<usize> {
    let mut bad = 0u32;
    for &v in data {
        bad |= u32::from(!acceptable(v, lo, hi));
    }
    if bad == 0 {
        return None;
    }
    data.iter().position(|&v| !acceptable(v, lo, hi))
}

impl Guard for Validate {
    async fn handle(self, mut req: Request, next: Next) -> Response {
        let target = target_of(&mut req);
        let Target::Model {
            name,
            version,
            action,
        } = &*target
        else {
            return call_next(next, req).await;
        };
        let charged = req
            .extensions()
            .get::<super::Charged>()
            .map(|c| c.0.clone());
        let Some(model) = charged.or_else(|| self.models.get(name, version.as_deref())) else {
            let what = match &version {
                Some(v) => format!("model '{name}' version '{v}' not found"),
                None => format!("model '{name}' not found"),
            };
            return reject(StatusCode::NOT_FOUND, GUARD, &what);
        };
        if *action != ModelAction::Infer {
            return call_next(next, req).await;
        }
        // Every request that reaches this point counts in the version's statistics: a success
        // if the harden guard encoded its outputs and the audit guard releases them, a failure
        // otherwise (see `crate::stats`); the audit guard records the tally.
        let started = Instant::now();
        let mut decoding_took = Duration::ZERO;
        let stats = model.stats.clone();
        let mut resp = async {
            let limit = model.policy.input.max_body_bytes;
            let declared_len = req
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared_len.is_some_and(|l| l > limit as u64) {
                return too_large(limit);
            }
            let header_len = match req.headers().get(oip::HEADER_LENGTH) {
                None => None,
                Some(v) => match v.to_str().ok().and_then(|s| s.trim().parse::<usize>().ok()) {
                    Some(h) => Some(h),
                    None => {
                        return bad("Inference-Header-Content-Length is not a number".into());
                    }
                },
            };
            let encoding = req
                .headers()
                .get(header::CONTENT_ENCODING)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let wait = Duration::from_millis(model.policy.input.body_timeout_ms);
            // A gRPC call's body was read before its model was known (`deadline`).
            if let Some(clock) = req.extensions().get::<BodyClock>()
                && clock.took() > wait
            {
                return too_slow(model.policy.input.body_timeout_ms);
            }
            let (mut parts, body) = req.into_parts();
            // A body already received is read at once and starts no timer.
            let body = Body::new(DeadlineBody::new(body, wait));
            let body_error = |e: BodyError| match e {
                BodyError::TimedOut => too_slow(model.policy.input.body_timeout_ms),
                BodyError::TooLarge => too_large(limit),
                BodyError::Encoding(m) => reject(StatusCode::UNSUPPORTED_MEDIA_TYPE, GUARD, &m),
                BodyError::Corrupt(m) | BodyError::Read(m) => bad(m),
            };
            let raw = match read_body(body, limit).await {
                Ok(b) => b,
                Err(e) => return body_error(e),
            };
            // Decompressing, decoding, checking and hashing a large body takes milliseconds of CPU:
            // on a blocking thread, not on the async worker that every connection shares.
            let heavy = raw.len() > INLINE_BYTES || !uncompressed(encoding.as_deref());
            let checking = model.clone();
            let prepare = move || {
                let bytes = decompress(raw, encoding.as_deref(), limit)?;
                let checked = oip::decode_request(&bytes, header_len)
                    .map_err(|e| e.to_string())
                    .and_then(|mut r| check_request(&checking, &mut r).map(|x| (r, x)));
                Ok((bytes, checked))
            };
            let decoding = Instant::now();
            let (bytes, result) = match off_worker_if(heavy, "request validation", prepare).await {
                Ok(Ok(p)) => p,
                Ok(Err(e)) => return body_error(e),
                Err(r) => return r,
            };
            decoding_took = decoding.elapsed();
            // The digest is only for the audit log: it is computed while the model runs.
            let digest = BodyDigest::start(bytes);
            let (request, input) = match result {
                Ok(v) => v,
                Err(m) => {
                    let mut r = bad(m);
                    r.extensions_mut().insert(InputDigest(digest.get().await));
                    return r;
                }
            };
            let version = ServedVersion(model.version.clone());
            parts.extensions.insert(ValidatedInfer {
                model,
                request: Arc::new(request),
                input: Arc::new(input),
            });
            let req = Request::from_parts(parts, Body::empty());
            let (mut resp, digest) = call_next_meanwhile(next, req, || digest.compute_here()).await;
            resp.extensions_mut()
                .insert(InputDigest(digest.get().await));
            resp.extensions_mut().insert(version);
            resp
        }
        .await;
        let served = resp.extensions_mut().remove::<Served>();
        let tally = Tally::new(stats, started.elapsed(), decoding_took, served);
        resp.extensions_mut().insert(tally);
        resp
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use palisade_core::{InputRange, LinearClassifier};

    use super::{BodyError, check_request, decompress, first_outside};
    use crate::oip::decode_request;
    use crate::{Policy, ServedModel};

    fn compressed<W: std::io::Write>(mut w: W, b: &[u8]) -> W {
        w.write_all(b).unwrap();
        w
    }

    fn gzip(b: &[u8]) -> Vec<u8> {
        let w = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        compressed(w, b).finish().unwrap()
    }

    fn inflated(raw: Vec<u8>, encoding: &str) -> Result<Vec<u8>, String> {
        match decompress(raw.into(), Some(encoding), 1 << 20) {
            Ok(b) => Ok(b.to_vec()),
            Err(BodyError::Corrupt(why)) => Err(why),
            Err(BodyError::TooLarge) => Err("too large".into()),
            Err(_) => Err("other".into()),
        }
    }

    /// A gzip body is every member's bytes in turn; a deflate one is one stream. Bytes after
    /// either are refused, not dropped (review, 2026-12-06: only the first gzip member was read,
    /// and whatever followed a stream was ignored).
    #[test]
    fn a_compressed_body_is_read_whole_and_nothing_may_follow_it() {
        let body = b"{\"inputs\": []} and some more text to make two members".to_vec();
        let (a, b) = body.split_at(20);
        assert_eq!(
            inflated([gzip(a), gzip(b)].concat(), "gzip"),
            Ok(body.clone())
        );
        assert_eq!(inflated(gzip(&body), "x-gzip"), Ok(body.clone()));
        let garbage = b"not compressed".to_vec();
        assert!(inflated([gzip(&body), garbage.clone()].concat(), "gzip").is_err());

        let c = flate2::Compression::fast();
        let zlib = compressed(flate2::write::ZlibEncoder::new(Vec::new(), c), &body)
            .finish()
            .unwrap();
        let deflate = compressed(flate2::write::DeflateEncoder::new(Vec::new(), c), &body)
            .finish()
            .unwrap();
        for stream in [zlib, deflate] {
            assert_eq!(inflated(stream.clone(), "deflate"), Ok(body.clone()));
            let after = inflated([stream, garbage.clone()].concat(), "deflate").unwrap_err();
            assert!(after.contains("14 bytes follow"), "{after}");
        }
        // Still bounded: a body that inflates past the limit is too large, not corrupt.
        let bomb = gzip(&vec![0; 2 << 20]);
        assert_eq!(inflated(bomb, "gzip"), Err("too large".into()));
    }

    #[test]
    fn a_checked_batch_takes_the_input_values_and_a_refusal_leaves_the_request_alone() {
        let model = ServedModel {
            name: "m".into(),
            version: "1".into(),
            classifier: Arc::new(
                LinearClassifier::new(
                    "m",
                    vec![2],
                    InputRange::default(),
                    ndarray::Array2::zeros((3, 2)),
                    ndarray::Array1::zeros(3),
                )
                .unwrap(),
            ),
            policy: Policy::default(),
            input_name: "x".into(),
            output_name: "logits".into(),
            platform: "test".into(),
            stats: Default::default(),
        };
        let body = |data: &str| {
            format!(
                r#"{{"id":"r1","inputs":[{{"name":"x","shape":[2,2],"datatype":"FP32","data":{data}}}]}}"#
            )
        };
        let mut ok = decode_request(body("[0.1,0.2,0.3,0.4]").as_bytes(), None).unwrap();
        let x = check_request(&model, &mut ok).unwrap();
        assert_eq!(x.shape(), &[2, 2]);
        assert_eq!(x.iter().copied().collect::<Vec<_>>(), [0.1, 0.2, 0.3, 0.4]);
        assert!(ok.inputs[0].data.is_empty());
        assert_eq!(ok.id.as_deref(), Some("r1"));
        let mut out_of_range = decode_request(body("[0.1,0.2,0.3,4.0]").as_bytes(), None).unwrap();
        let before = out_of_range.clone();
        let err = check_request(&model, &mut out_of_range).unwrap_err();
        assert!(err.contains("element 3 = 4 is outside"), "{err}");
        assert_eq!(out_of_range, before);
    }

    #[test]
    fn the_vectorised_range_check_finds_any_bad_value_in_any_position() {
        for len in [0usize, 1, 15, 16, 17, 33, 784] {
            let good = vec![0.5f32; len];
            assert_eq!(first_outside(&good, 0.0, 1.0), None, "len {len}");
            for at in 0..len {
                for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.001, 1.001] {
                    let mut v = good.clone();
                    v[at] = bad;
                    assert_eq!(
                        first_outside(&v, 0.0, 1.0),
                        Some(at),
                        "{bad} at {at} of {len}"
                    );
                    // The first of several is the one reported.
                    v.push(bad);
                    assert_eq!(first_outside(&v, 0.0, 1.0), Some(at));
                }
            }
        }
        // The bounds are inclusive; an unbounded range still refuses infinities.
        assert_eq!(first_outside(&[0.0, 1.0], 0.0, 1.0), None);
        let wide = [f32::MAX, f32::MIN];
        assert_eq!(first_outside(&wide, f32::NEG_INFINITY, f32::INFINITY), None);
        assert_eq!(
            first_outside(&[f32::INFINITY], f32::NEG_INFINITY, f32::INFINITY),
            Some(0)
        );
    }
}
