//! Generates the gRPC code with the protoc shipped in `protoc-bin-vendored`,
//! so building needs no system protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    println!("cargo:rerun-if-changed=proto/cloudai.proto");
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure().compile_with_config(
        config,
        &["proto/cloudai.proto"],
        &["proto"],
    )?;
    Ok(())
}
