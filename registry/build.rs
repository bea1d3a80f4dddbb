//! Compiles the first-party registry (`registry/default/`: index, blobs and the first-party
//! public key) into the binary, so `galley plugin install galley/NAME` works with no server.

use std::path::{Path, PathBuf};

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("default");
    // Watched even while missing, so creating it triggers a rebuild.
    println!("cargo:rerun-if-changed={}", dir.display());
    let root = dir.canonicalize();
    let mut files = Vec::new();
    let mut key = String::from("\"\"");
    if let Ok(root) = &root {
        for sub in ["index", "blobs"] {
            walk(&root.join(sub), &mut files);
            println!("cargo:rerun-if-changed={}", root.join(sub).display());
        }
        let pubkey = root.join("first-party.pub");
        if pubkey.exists() {
            println!("cargo:rerun-if-changed={}", pubkey.display());
            key = format!("include_str!({:?})", pubkey.display().to_string());
        }
    }
    files.sort();
    let mut code = String::from(
        "/// Files of the first-party registry, by path inside it.\npub const FILES: &[(&str, &[u8])] = &[\n",
    );
    if let Ok(root) = &root {
        for f in &files {
            let rel = f
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            if rel.ends_with(".jsonl") || rel.ends_with(".wasm") {
                code.push_str(&format!(
                    "    ({rel:?}, include_bytes!({:?})),\n",
                    f.display().to_string()
                ));
            }
        }
    }
    code.push_str("];\n/// `ID PUBLIC_KEY_HEX` of the first-party signing key.\npub const FIRST_PARTY_KEY: &str = ");
    code.push_str(&key);
    code.push_str(";\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("default_registry.rs");
    std::fs::write(out, code).unwrap();
}
