//! The walk of a gRPC `ModelInfer` message before tonic decodes it: any bytes are walked without
//! a panic, and a message it lets through decodes, if prost decodes it at all, within every
//! bound (the walk never counts less than prost makes).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    palisade_gateway::grpc::prescan::fuzz_property(data);
});
