//! Build script: compiles the vendored IPADIC source into lindera's binary dictionary format and
//! the `.proto` API into Rust, both offline.
//!
//! Why not lindera's `embed-ipadic` feature: its build script downloads the dictionary, and the
//! build machines reach no host but the package registries. Why not `protoc`: a fresh machine has
//! none; `protox` is a pure-Rust protobuf compiler that produces the same descriptors.

use std::env;
use std::fs::File;
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;
use lindera_dictionary::builder::DictionaryBuilder;
use lindera_dictionary::dictionary::metadata::Metadata;

const IPADIC_ARCHIVE: &str = "vendor/mecab-ipadic-2.7.0-20070801.tar.gz";
const IPADIC_METADATA: &str = "vendor/ipadic-metadata.json";
const PROTOS: &[&str] = &[
    "proto/kasuhara/v1/types.proto",
    "proto/kasuhara/v1/screening.proto",
    "proto/kasuhara/v1/alerts.proto",
    "proto/kasuhara/v1/admin.proto",
];

fn main() {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    build_ipadic(&out_dir);
    compile_protos(&out_dir);
}

/// Unpacks the IPADIC source and builds `OUT_DIR/lindera-ipadic/*`, which `src/pipeline/segment.rs`
/// embeds with `lindera_dictionary::embedded_dictionary!` (it reads `LINDERA_WORKDIR`).
fn build_ipadic(out_dir: &Path) {
    println!("cargo:rerun-if-changed={IPADIC_ARCHIVE}");
    println!("cargo:rerun-if-changed={IPADIC_METADATA}");
    println!("cargo:rustc-env=LINDERA_WORKDIR={}", out_dir.display());

    let built = out_dir.join("lindera-ipadic");
    if built.join("dict.words").exists() && built.join("metadata.json").exists() {
        // Cargo reruns this script when the archive changes; on an unchanged archive the
        // dictionary in OUT_DIR is still current, and rebuilding it costs about eight seconds.
        return;
    }
    let source_root = out_dir.join("ipadic-src");
    let archive = File::open(IPADIC_ARCHIVE).expect("vendored IPADIC archive is in the repo");
    tar::Archive::new(GzDecoder::new(archive))
        .unpack(&source_root)
        .expect("unpack the vendored IPADIC archive");
    let metadata = Metadata::load(&std::fs::read(IPADIC_METADATA).expect("read ipadic metadata"))
        .expect("parse ipadic metadata");
    DictionaryBuilder::new(metadata)
        .build_dictionary(&source_root.join("ipadic"), &built)
        .expect("build the IPADIC dictionary with lindera's builder");
    // The source is only an input; don't leave 50 MB of CSV in every target directory.
    let _ = std::fs::remove_dir_all(&source_root);
}

/// Compiles the API with protox and generates tonic/prost code, plus a descriptor set for the
/// gRPC reflection service.
fn compile_protos(out_dir: &Path) {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(PROTOS, ["proto"]).expect("compile the .proto files");
    let descriptor_path = out_dir.join("kasuhara_descriptor.bin");
    std::fs::write(&descriptor_path, prost::Message::encode_to_vec(&descriptors))
        .expect("write descriptor set");
    tonic_prost_build::configure()
        // Prost's codec with smaller per-call buffers (an idle stream's largest cost).
        .codec_path("crate::grpc::codec::SmallBufferCodec")
        .compile_fds(descriptors)
        .expect("generate Rust code from the descriptors");
}
