//! Compiles the Efento .proto files in `proto/efento` with protox (pure Rust, no system `protoc`),
//! generates the prost types, and writes the encoded FileDescriptorSet to
//! `$OUT_DIR/efento_descriptor.bin` for prost-reflect.
//!
//! Also compiles the Aruba websocket envelope in `proto/aruba` into `$OUT_DIR/aruba_telemetry.rs`
//! (its `bytes` fields as `bytes::Bytes`, so a payload is a slice of the websocket message).

use std::error::Error;
use std::path::PathBuf;

const PROTO_DIR: &str = "proto/efento";
const ARUBA_PROTO_DIR: &str = "proto/aruba";

fn proto_files(dir: &str) -> Result<Vec<PathBuf>, Box<dyn Error>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "proto"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(format!("no .proto files in {dir}").into());
    }
    Ok(files)
}

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed=proto");
    compile_aruba()?;

    let files = proto_files(PROTO_DIR)?;

    let mut compiler = protox::Compiler::new([PROTO_DIR])?;
    compiler.include_imports(true).include_source_info(false);
    compiler.open_files(&files)?;

    // The runtime descriptor pool needs no comments, so it is written without source info.
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("efento_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    // The generated Rust types keep the .proto comments as doc comments.
    compiler.include_source_info(true);
    prost_build::Config::new().compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}

/// The Aruba envelope: prost types only (no reflection needed).
fn compile_aruba() -> Result<(), Box<dyn Error>> {
    let files = proto_files(ARUBA_PROTO_DIR)?;
    let mut compiler = protox::Compiler::new([ARUBA_PROTO_DIR])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(&files)?;
    prost_build::Config::new()
        .bytes(["."])
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
