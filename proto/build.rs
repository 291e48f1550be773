//! Compiles `blepay/v1/blepay.proto` with the pure-Rust `protox` (no `protoc` anywhere), then
//! generates prost messages, tonic stubs (feature `grpc`) and pbjson serde impls (feature
//! `json`) into `OUT_DIR`, plus the encoded descriptor set for gRPC server reflection.

use std::path::PathBuf;

use prost::Message as _;

const PROTO: &str = "blepay/v1/blepay.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO}");
    println!("cargo:rerun-if-changed=build.rs");

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let grpc = std::env::var_os("CARGO_FEATURE_GRPC").is_some();
    let json = std::env::var_os("CARGO_FEATURE_JSON").is_some();

    let fds = protox::compile([PROTO], ["."])?;
    let encoded = fds.encode_to_vec();
    std::fs::write(out_dir.join("blepay_descriptor.bin"), &encoded)?;

    // Maps as BTreeMap: the crate builds without std (the device client), where HashMap is not.
    tonic_prost_build::configure()
        .btree_map(".")
        .build_server(grpc)
        .build_client(grpc)
        .build_transport(grpc)
        .emit_rerun_if_changed(false)
        .compile_fds(fds)?;

    if json {
        pbjson_build::Builder::new()
            .register_descriptors(&encoded)?
            .out_dir(&out_dir)
            .emit_fields()
            .btree_map(["."])
            .ignore_unknown_fields()
            .build(&[".blepay.v1"])?;
    }
    Ok(())
}
