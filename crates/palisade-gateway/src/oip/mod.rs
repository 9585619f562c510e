//! The Open Inference Protocol (KServe v2): routes and the REST wire format.

pub mod codec;
pub mod route;

pub use codec::{
    CodecError, EncodedResponse, InferRequest, InputTensor, OutputData, OutputTensor,
    RequestedOutput, decode_request, encode_response, triton_datatype,
};
pub use route::{ModelAction, Target, target_of};

/// The header of the binary tensor extension: length of the JSON part of the body.
pub const HEADER_LENGTH: &str = "inference-header-content-length";
