//! Compiles proto/stowage/v1 with protox (pure Rust, so no `protoc` to install) and generates
//! the tonic clients and servers, plus the descriptor set that server reflection serves.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time: a build script compiled for one checkout may be reused by another
    // checkout sharing the target dir, and must not keep looking at the first one's protos.
    let proto_root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = [
        "stowage/v1/types.proto",
        "stowage/v1/volume_agent.proto",
        "stowage/v1/repo_manager.proto",
        "stowage/v1/orchestrator.proto",
    ];
    let descriptors = protox::compile(files, [&proto_root])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("stowage_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    println!("cargo:rerun-if-changed={}", proto_root.display());
    Ok(())
}
