//! The gRPC infer translation: any `ModelInferRequest` protobuf either fails to decode, is
//! refused with a gRPC status, or becomes an OIP binary-extension body whose bytes after the
//! header are the inputs' bytes in order, and which the REST decoder reads back (or refuses
//! cleanly) with the inputs under their names and with shapes that match their data.
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
    // The bytes after the JSON header are the inputs' bytes, in order: each input's raw contents,
    // or its FP32 contents in little-endian.
    let mut expected = Vec::new();
    for (i, t) in req.inputs.iter().enumerate() {
        match req.raw_input_contents.get(i) {
            Some(raw) => expected.extend_from_slice(raw),
            None => {
                for v in t.contents.iter().flat_map(|c| &c.fp32_contents) {
                    expected.extend_from_slice(&v.to_le_bytes());
                }
            }
        }
    }
    assert_eq!(&body[header_len..], &expected[..]);
    if let Ok(decoded) = decode_request(&body, Some(header_len)) {
        assert_eq!(decoded.inputs.len(), req.inputs.len());
        for (d, t) in decoded.inputs.iter().zip(&req.inputs) {
            assert_eq!(d.name, t.name);
            let n: usize = d.shape.iter().product();
            assert_eq!(n, d.data.len());
        }
    }
});
