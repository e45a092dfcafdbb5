//! Generates the gRPC server of KEDA's external scaler protocol (`proto/externalscaler.proto`)
//! for `ebb keda-scaler`. The .proto is compiled in Rust (protox), so building ebb needs no
//! protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/externalscaler.proto");
    let descriptors = protox::compile(["externalscaler.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(false)
        .btree_map(".")
        .compile_fds(descriptors)?;
    Ok(())
}
