//! Components that are not what they claim: malformed bytes, core modules, no manifest, the
//! wrong world, an unsupported WIT version, imports the host does not give. Each is refused at
//! load time with one line that says what is wrong and what to do. The mismatched components
//! are real ones, encoded here from the WIT with wit-component.

mod common;

use common::*;
use galley_core::PluginKind;
use galley_runtime::{InstanceOptions, Manifest, RuntimeError, embed_manifest};
use std::path::Path;

fn load_err(bytes: &[u8]) -> RuntimeError {
    match runtime().load_bytes(bytes, "test.wasm") {
        Ok(p) => panic!("{} loaded but should not", p.id()),
        Err(e) => {
            let text = e.to_string();
            assert!(!text.contains('\n'), "a one-line error, got: {text}");
            assert!(
                text.starts_with("test.wasm") || text.contains("@"),
                "names the file or plugin: {text}"
            );
            e
        }
    }
}

/// A component exporting `world` of the galley WIT rewritten to `version`, with `extra` WIT
/// appended to the world (e.g. an extra import).
fn dummy_component(world: &str, version: &str, extra_import: Option<&str>) -> Vec<u8> {
    let tmp = tempfile::tempdir().unwrap();
    let wit_dir = repo_root().join("wit/v0.1.0");
    for entry in std::fs::read_dir(&wit_dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("@0.1.0", &format!("@{version}"));
        std::fs::write(tmp.path().join(path.file_name().unwrap()), text).unwrap();
    }
    if let Some(import) = extra_import {
        let reward = tmp.path().join("reward.wit");
        let text = std::fs::read_to_string(&reward).unwrap().replace(
            "    export reward;",
            &format!("    import {import};\n    export reward;"),
        );
        std::fs::write(
            &reward,
            format!("{text}\ninterface backdoor {{ open: func() -> string; }}\n"),
        )
        .unwrap();
    }
    let mut resolve = wit_parser::Resolve::new();
    let (pkg, _) = resolve.push_dir(tmp.path()).unwrap();
    let world = resolve.select_world(&[pkg], Some(world)).unwrap();
    let mut module =
        wit_component::dummy_module(&resolve, world, wit_parser::ManglingAndAbi::Standard32);
    wit_component::embed_component_metadata(
        &mut module,
        &resolve,
        world,
        wit_component::StringEncoding::UTF8,
    )
    .unwrap();
    wit_component::ComponentEncoder::default()
        .module(&module)
        .unwrap()
        .validate(true)
        .encode()
        .unwrap()
}

fn manifest(kind: PluginKind) -> Manifest {
    Manifest::from_toml(
        &format!("name = \"dummy\"\nversion = \"1.0.0\"\nkind = \"{kind}\"\n"),
        "galley.toml",
    )
    .unwrap()
}

#[test]
fn garbage_is_not_a_component() {
    let e = load_err(b"this is not wasm at all");
    assert!(matches!(e, RuntimeError::NotAComponent { .. }), "{e}");
    assert!(e.to_string().contains("galley plugin build"), "{e}");
}

#[test]
fn a_truncated_component_is_refused() {
    let bytes = std::fs::read(plugin_path("math-answer")).unwrap();
    let e = load_err(&bytes[..bytes.len() / 2]);
    assert!(
        matches!(
            e,
            RuntimeError::NotAComponent { .. } | RuntimeError::Invalid { .. }
        ),
        "{e}"
    );
}

#[test]
fn a_core_module_must_be_componentized() {
    let e = load_err(b"\0asm\x01\0\0\0");
    assert!(matches!(e, RuntimeError::CoreModule { .. }), "{e}");
    assert!(e.to_string().contains("galley plugin build"), "{e}");
}

#[test]
fn a_component_without_manifest_is_refused() {
    let e = load_err(&dummy_component("reward-plugin", "0.1.0", None));
    assert!(matches!(e, RuntimeError::NoManifest { .. }), "{e}");
}

#[test]
fn a_well_formed_dummy_loads() {
    // The control for the tests below: the same construction with nothing wrong loads.
    let bytes = embed_manifest(
        &dummy_component("reward-plugin", "0.1.0", None),
        &manifest(PluginKind::Reward),
    );
    let p = runtime().load_bytes(&bytes, "test.wasm").unwrap();
    assert_eq!(p.kind(), PluginKind::Reward);
}

#[test]
fn a_manifest_that_lies_about_the_kind_is_refused() {
    let bytes = embed_manifest(
        &dummy_component("reward-plugin", "0.1.0", None),
        &manifest(PluginKind::Evaluator),
    );
    let e = load_err(&bytes);
    assert!(matches!(e, RuntimeError::KindMismatch { .. }), "{e}");
}

#[test]
fn the_wrong_world_is_refused_where_it_is_used() {
    let err = load("exact-match")
        .reward(&serde_json::json!({}), InstanceOptions::default())
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("exact-match@0.2.0")
            && err.message.contains("kind `evaluator`")
            && err.message.contains("kind `reward`"),
        "{err}"
    );
}

#[test]
fn a_newer_wit_asks_for_a_newer_galley() {
    let bytes = embed_manifest(
        &dummy_component("reward-plugin", "0.5.0", None),
        &manifest(PluginKind::Reward),
    );
    let e = load_err(&bytes);
    assert!(matches!(e, RuntimeError::UnsupportedWit { .. }), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("galley:plugin@0.5.0") && text.contains("upgrade galley"),
        "{text}"
    );
}

/// A component that names a supported version but has another version's shape (0.1's
/// `completions: list<string>` labelled 0.2.0) is refused before any data crosses.
#[test]
fn a_0_1_shape_labelled_0_2_is_refused_before_a_call() {
    let bytes = embed_manifest(
        &dummy_component("reward-plugin", "0.2.0", None),
        &manifest(PluginKind::Reward),
    );
    let e = match runtime().load_bytes(&bytes, "test.wasm") {
        Err(e) => e.to_string(),
        Ok(p) => match p.reward(&serde_json::json!({}), InstanceOptions::default()) {
            Ok(_) => panic!("a 0.1-shaped component was instantiated as 0.2"),
            Err(e) => e.to_string(),
        },
    };
    assert!(
        e.contains("type mismatch") || e.contains("does not match"),
        "{e}"
    );
}

#[test]
fn an_older_wit_asks_for_a_rebuild() {
    let bytes = embed_manifest(
        &dummy_component("reward-plugin", "0.0.3", None),
        &manifest(PluginKind::Reward),
    );
    let text = load_err(&bytes).to_string();
    assert!(
        text.contains("galley:plugin@0.0.3") && text.contains("rebuild"),
        "{text}"
    );
}

#[test]
fn a_newer_patch_of_the_same_minor_is_refused_until_the_host_knows_it() {
    // 0.1.1 could add functions a 0.1.0 host lacks; the host says so rather than failing later.
    let bytes = embed_manifest(
        &dummy_component("reward-plugin", "0.1.1", None),
        &manifest(PluginKind::Reward),
    );
    assert!(matches!(
        load_err(&bytes),
        RuntimeError::UnsupportedWit { .. }
    ));
}

#[test]
fn imports_the_host_does_not_give_are_named() {
    let bytes = embed_manifest(
        &dummy_component("reward-plugin", "0.1.0", Some("backdoor")),
        &manifest(PluginKind::Reward),
    );
    let e = load_err(&bytes);
    assert!(matches!(e, RuntimeError::UnknownImport { .. }), "{e}");
    assert!(
        e.to_string().contains("galley:plugin/backdoor@0.1.0"),
        "{e}"
    );
}

#[test]
fn a_bad_manifest_names_the_file_and_key() {
    let e = Manifest::from_toml(
        "name = \"x\"\nversion = \"1.0.0\"\nkind = \"reward\"\nlicence = \"MIT\"\n",
        "plugins/x/galley.toml",
    )
    .unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("plugins/x/galley.toml")
            && text.contains("licence")
            && text.contains("line 4"),
        "{text}"
    );
    let e = Manifest::from_toml(
        "name = \"Bad Name\"\nversion = \"1.0.0\"\nkind = \"reward\"\n",
        "galley.toml",
    )
    .unwrap_err();
    assert!(e.to_string().contains("key `name`"), "{e}");
    let e = Manifest::from_toml("name = \"x\"\nversion = \"1.0.0\"\nkind = \"reward\"\n[capabilities]\nread-dirs = [\"data\"]\n", "galley.toml").unwrap_err();
    assert!(e.to_string().contains("only data-loader plugins"), "{e}");
}

#[test]
fn a_missing_file_is_named() {
    let e = runtime()
        .load(Path::new("/nonexistent/plugin.wasm"))
        .err()
        .unwrap();
    assert!(
        e.to_string()
            .starts_with("/nonexistent/plugin.wasm: cannot read plugin"),
        "{e}"
    );
}

#[test]
fn relabelling_replaces_the_manifest_and_two_manifests_are_refused() {
    let bytes = std::fs::read(plugin_path("length-penalty")).unwrap();
    let mut m = runtime()
        .load_bytes(&bytes, "lp.wasm")
        .unwrap()
        .manifest()
        .clone();
    m.version = semver::Version::new(9, 9, 9);
    let relabelled = embed_manifest(&bytes, &m);
    assert_eq!(
        runtime().load_bytes(&relabelled, "lp.wasm").unwrap().id(),
        "length-penalty@9.9.9"
    );
    // Appending a second manifest by hand (not through embed) is refused.
    let mut doubled = relabelled.clone();
    let extra = embed_manifest(b"\0asm\r\0\x01\0", &m);
    doubled.extend_from_slice(&extra[8..]);
    let e = load_err(&doubled);
    assert!(
        e.to_string().contains("two galley:manifest sections"),
        "{e}"
    );
}
