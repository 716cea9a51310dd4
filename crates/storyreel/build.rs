//! Embeds the default story model (`assets/models/toy-student/`, every file under it) into the
//! binary, so `storyreel generate` runs with no model flag from anywhere. A checkout without
//! that folder still builds; the binary then says the default model is missing.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

const MODEL: &str = "toy-student";

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    for p in paths {
        if p.is_dir() {
            files_under(&p, out);
        } else if p.is_file() {
            out.push(p);
        }
    }
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest.join("../../assets/models").join(MODEL);
    println!("cargo:rerun-if-changed={}", root.display());
    let mut files = Vec::new();
    if root.join("storyreel_model.json").is_file() {
        files_under(&root, &mut files);
    }
    // FNV-1a over names and contents: the unpacked copy's folder name, so a rebuilt binary with
    // other weights never reuses a stale copy.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut code = String::from("/// Files of the embedded default model: (path inside the folder, bytes).\n");
    code.push_str("pub const FILES: &[(&str, &[u8])] = &[\n");
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
        let rel = f.strip_prefix(&root).expect("under the root").to_string_lossy().replace('\\', "/");
        let bytes = std::fs::read(f).expect("readable model file");
        for b in rel.bytes().chain(bytes.iter().copied()) {
            hash = (hash ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
        let abs = f.canonicalize().expect("model file path");
        writeln!(code, "    ({rel:?}, include_bytes!({:?})),", abs.display().to_string()).expect("string write");
    }
    code.push_str("];\n");
    writeln!(code, "/// Content hash of [`FILES`].\npub const HASH: u64 = {hash:#x};").expect("string write");
    writeln!(code, "/// The model's folder name under assets/models.\npub const NAME: &str = {MODEL:?};")
        .expect("string write");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("default_model.rs");
    std::fs::write(out, code).expect("writing default_model.rs");
}
