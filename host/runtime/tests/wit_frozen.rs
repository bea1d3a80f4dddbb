//! Released WIT versions are frozen: a plugin built against galley:plugin@0.1.0 must keep
//! meaning the same thing to every later host. A change to wit/v0.1.0 fails here; add a new
//! version folder (and a bindings module beside `v0_1`) instead.

use sha2::{Digest, Sha256};
use std::path::PathBuf;

#[test]
fn wit_v0_1_0_is_unchanged() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../wit");
    let pinned = std::fs::read_to_string(root.join("v0.1.0.sha256")).unwrap();
    let mut pinned_files = Vec::new();
    for line in pinned.lines() {
        let (hash, name) = line.split_once("  ").expect("sha256sum format");
        let text = std::fs::read(root.join("v0.1.0").join(name))
            .unwrap_or_else(|_| panic!("wit/v0.1.0/{name} was removed"));
        assert_eq!(
            hex::encode(Sha256::digest(&text)),
            hash,
            "wit/v0.1.0/{name} changed: released WIT is frozen; put changes in a new version folder"
        );
        pinned_files.push(name.to_string());
    }
    let mut present: Vec<String> = std::fs::read_dir(root.join("v0.1.0"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    present.sort();
    pinned_files.sort();
    assert_eq!(
        present, pinned_files,
        "a file was added to the frozen wit/v0.1.0"
    );
}
