//! Compiles our own `.proto` files with protox (a pure-Rust protobuf
//! compiler), so a fresh machine needs no system `protoc`, then generates
//! prost code with `BTreeMap` maps for deterministic serialisation.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/Model.proto",
        "proto/FeatureTypes.proto",
        "proto/MIL.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    let mut config = prost_build::Config::new();
    // Map order has no meaning in protobuf, but a HashMap would make our
    // output bytes change from run to run.
    config.btree_map(["."]);
    config.compile_fds(fds)?;
    Ok(())
}
