//! The gRPC infer translation: any `ModelInferRequest` protobuf either fails to decode, is
//! refused with a gRPC status, or becomes an OIP binary-extension body that the REST decoder
//! reads back with the inputs' names, shapes and bytes intact (or refuses cleanly).
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_gateway::grpc::{infer_body, inference::ModelInferRequest};
use palisade_gateway::oip::decode_request;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(req) = ModelInferRequest::decode(data) else {
        return;
    };
    let Ok((body, header_len)) = infer_body(&req) else {
        return;
    };
    assert!(header_len <= body.len());
    // The bytes after the JSON header are the inputs' bytes, in order.
    let expected: usize = req
        .inputs
        .iter()
        .enumerate()
        .map(|(i, t)| match req.raw_input_contents.get(i) {
            Some(raw) => raw.len(),
            None => t.contents.as_ref().map_or(0, |c| 4 * c.fp32_contents.len()),
        })
        .sum();
    assert_eq!(body.len() - header_len, expected);
    if let Ok(decoded) = decode_request(&body, Some(header_len)) {
        assert_eq!(decoded.inputs.len(), req.inputs.len());
        for (d, t) in decoded.inputs.iter().zip(&req.inputs) {
            assert_eq!(d.name, t.name);
            let n: usize = d.shape.iter().product();
            assert_eq!(n, d.data.len());
        }
    }
});
