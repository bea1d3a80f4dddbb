//! Released WIT versions are frozen: a plugin built against galley:plugin@0.1.0 must keep
//! meaning the same thing to every later host. A change to a released `wit/vX.Y.Z` folder
//! fails here; add a new version folder (and a bindings module beside `v0_1`) instead.

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

fn check_frozen(root: &Path, version: &str) {
    let pinned = std::fs::read_to_string(root.join(format!("v{version}.sha256")))
        .unwrap_or_else(|_| panic!("wit/v{version}.sha256 is missing"));
    let dir = root.join(format!("v{version}"));
    let mut pinned_files = Vec::new();
    for line in pinned.lines() {
        let (hash, name) = line.split_once("  ").expect("sha256sum format");
        let text = std::fs::read(dir.join(name))
            .unwrap_or_else(|_| panic!("wit/v{version}/{name} was removed"));
        assert_eq!(
            hex::encode(Sha256::digest(&text)),
            hash,
            "wit/v{version}/{name} changed: released WIT is frozen; put changes in a new version folder"
        );
        pinned_files.push(name.to_string());
    }
    let mut present: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    present.sort();
    pinned_files.sort();
    assert_eq!(
        present, pinned_files,
        "a file was added to the frozen wit/v{version}"
    );
}

#[test]
fn wit_v0_1_0_is_unchanged() {
    check_frozen(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../wit"),
        "0.1.0",
    );
}

#[test]
fn wit_v0_2_0_is_unchanged() {
    check_frozen(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../wit"),
        "0.2.0",
    );
}

#[test]
fn wit_v0_3_0_is_unchanged() {
    check_frozen(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../wit"),
        "0.3.0",
    );
}
#[test]
fn wit_v0_4_0_is_unchanged() {
    check_frozen(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../wit"),
        "0.4.0",
    );
}

/// Every version folder is pinned and served: a folder without its `.sha256`, or one the
/// host has no bindings for, is a release half made.
#[test]
fn every_wit_folder_is_pinned_and_supported() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../wit");
    let mut folders: Vec<semver::Version> = std::fs::read_dir(&root)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            let v = name.strip_prefix('v')?;
            (!v.ends_with(".sha256")).then(|| semver::Version::parse(v).unwrap())
        })
        .collect();
    folders.sort();
    for v in &folders {
        assert!(
            root.join(format!("v{v}.sha256")).is_file(),
            "wit/v{v} has no wit/v{v}.sha256"
        );
    }
    assert_eq!(folders, galley_runtime::SUPPORTED_WIT.to_vec());
}
