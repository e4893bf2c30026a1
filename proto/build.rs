//! Compiles the `.proto` files with protox (pure Rust), so building Baton needs no system `protoc`.

use std::path::PathBuf;

use prost::Message;

const PROTOS: &[&str] = &[
    "baton/v1/spec.proto",
    "baton/v1/workflow.proto",
    "baton/v1/agent.proto",
    "baton/v1/admin.proto",
    "baton/v1/schedule.proto",
    "baton/raft/v1/raft.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(PROTOS, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    // Kept for gRPC server reflection.
    std::fs::write(out_dir.join("baton_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .btree_map(".")
        .compile_fds(fds)?;
    Ok(())
}
