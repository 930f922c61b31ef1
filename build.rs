//! Compiles the protobuf contracts in `proto/` with prost, using the protoc
//! binary vendored by `protoc-bin-vendored` so that no system protoc is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/segstream/v1/events.proto",
        "proto/segstream/v1/state.proto",
        "proto/segstream/v1/segments.proto",
        "proto/onnx/onnx_subset.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    if std::env::var_os("PROTOC").is_none() {
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        // Edition 2021: set_var is a safe function.
        std::env::set_var("PROTOC", protoc);
    }
    prost_build::Config::new().compile_protos(&protos, &["proto"])?;
    Ok(())
}
