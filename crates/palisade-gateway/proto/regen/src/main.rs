//! Writes the gRPC code of a protobuf descriptor set twice: the server alone, with Palisade's
//! codec (`crate::grpc::codec::Codec`), and the client alone, with prost's. `regen.sh` joins
//! the two into `src/grpc/inference.rs`.
//!
//! Usage: palisade-grpc-regen DESCRIPTOR_SET OUT_DIR (writes OUT_DIR/server and OUT_DIR/client).

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [fds, out] = args.as_slice() else {
        return Err("usage: palisade-grpc-regen DESCRIPTOR_SET OUT_DIR".into());
    };
    let set = prost_types::FileDescriptorSet::decode(std::fs::read(fds)?.as_slice())?;
    let out = std::path::Path::new(out);
    for side in ["server", "client"] {
        let dir = out.join(side);
        std::fs::create_dir_all(&dir)?;
        let b = tonic_prost_build::configure()
            .build_transport(false)
            .out_dir(&dir);
        let b = if side == "server" {
            b.build_client(false).codec_path("crate::grpc::codec::Codec")
        } else {
            b.build_server(false)
        };
        b.compile_fds(set.clone())?;
    }
    Ok(())
}
