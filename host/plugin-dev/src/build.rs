//! `galley plugin build`: turns a plugin folder into a galley component. The folder holds a
//! `galley.toml` manifest and one of: a Rust crate (`Cargo.toml`), `plugin.py`, `plugin.js`
//! or `plugin.c`. Rust picks the toolchain that exists here — rustup's `wasm32-wasip2` target
//! when installed, else Debian's Rust with `-Zbuild-std` for `wasm32-wasip1` plus the WASI
//! reactor adapter, componentized in-process with `wit-component`. Python goes through
//! componentize-py and JavaScript through componentize-js, each installed on first use; C
//! through clang with bindings generated in-process (see `cplugin`). Every
//! route ends the same way: the component must export the world its manifest declares, and
//! the manifest is embedded in it.

use crate::error::{Context, Result, bail};
use crate::{embedded, toolchains};
use galley_core::PluginKind;
use galley_runtime::{Manifest, embed_manifest, inspect};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Which compiler route builds the core module or component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Toolchain {
    /// `cargo build --target wasm32-wasip2` with rustup's target: a component directly.
    RustupWasip2,
    /// Debian's rustc + rust-src, `-Zbuild-std`, `wasm32-wasip1`, then the reactor adapter.
    DebianWasip1,
}

const DEBIAN_PACKAGES: &str = "rustc-web cargo-web rust-web-src libstd-rust-web-dev clang-19 lld-19 wasi-libc libclang-rt-19-dev-wasm32";

impl Toolchain {
    /// `GALLEY_WASM_TOOLCHAIN=rustup|debian` forces a route; otherwise rustup's target wins.
    pub fn detect() -> Result<Self> {
        match std::env::var("GALLEY_WASM_TOOLCHAIN").ok().as_deref() {
            Some("rustup") => return Ok(Self::RustupWasip2),
            Some("debian") => return Self::check_debian().map(|_| Self::DebianWasip1),
            Some(other) => bail!("GALLEY_WASM_TOOLCHAIN={other}: expected `rustup` or `debian`"),
            None => {}
        }
        let rustup_has_target = Command::new("rustup")
            .args(["target", "list", "--installed"])
            .stderr(Stdio::null())
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .any(|l| l.trim() == "wasm32-wasip2")
            })
            .unwrap_or(false);
        if rustup_has_target {
            return Ok(Self::RustupWasip2);
        }
        Self::check_debian().map(|_| Self::DebianWasip1).context(
            "no WebAssembly toolchain: either `rustup target add wasm32-wasip2`, or install Debian's wasm-capable Rust",
        )
    }

    fn check_debian() -> Result<()> {
        let mut missing = Vec::new();
        for (path, what) in [
            ("/usr/bin/rustc", "rustc-web"),
            ("/usr/bin/cargo", "cargo-web"),
            ("/usr/bin/wasm-ld-19", "lld-19"),
            ("/usr/lib/wasm32-wasi/libc.a", "wasi-libc"),
            (
                "/usr/lib/llvm-19/lib/clang/19/lib/wasi",
                "libclang-rt-19-dev-wasm32",
            ),
        ] {
            if !Path::new(path).exists() {
                missing.push(format!("{path} (package {what})"));
            }
        }
        let src = Command::new("/usr/bin/rustc")
            .args(["--print", "sysroot"])
            .output();
        if let Ok(out) = src {
            let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if !Path::new(&sysroot)
                .join("lib/rustlib/src/rust/library")
                .exists()
            {
                missing.push(format!("{sysroot}/lib/rustlib/src (package rust-web-src)"));
            }
        }
        if !missing.is_empty() {
            bail!(
                "missing: {}; install with `apt-get install -y --no-install-recommends {DEBIAN_PACKAGES}`",
                missing.join(", ")
            );
        }
        Ok(())
    }
}

/// The target dir shared by every wasm plugin build (the standard library is rebuilt per
/// target dir, which takes minutes): `GALLEY_WASM_TARGET_DIR`, else the galley cache.
/// The cargo target dir for building the plugin in `plugin_dir`: `GALLEY_WASM_TARGET_DIR`
/// when the user opted into one shared dir, else a dir of this plugin's own under
/// `<cache>/wasm-target`, named after the plugin and a hash of its full path. Separate dirs
/// keep one plugin's build script from rewriting another's artifacts (std is then built
/// once per plugin).
pub fn default_target_dir(plugin_dir: &Path) -> PathBuf {
    if let Some(shared) = galley_core::dirs::shared_wasm_target_dir() {
        return shared;
    }
    let full = plugin_dir
        .canonicalize()
        .unwrap_or_else(|_| plugin_dir.to_path_buf());
    let digest = galley_runtime::digest_of(full.as_os_str().as_encoded_bytes());
    let hash = digest.trim_start_matches("sha256:");
    let name = full
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "plugin".into());
    galley_core::dirs::wasm_target_root().join(format!("{name}-{}", &hash[..12]))
}

pub struct Built {
    pub manifest: Manifest,
    pub path: PathBuf,
    pub size: usize,
    pub digest: String,
    pub lang: Lang,
}

/// The language of a plugin folder, from the files in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Rust,
    Python,
    JavaScript,
    C,
}

impl Lang {
    pub fn detect(dir: &Path) -> Result<Self> {
        if dir.join("Cargo.toml").exists() {
            Ok(Lang::Rust)
        } else if dir.join("plugin.py").exists() {
            Ok(Lang::Python)
        } else if dir.join("plugin.js").exists() {
            Ok(Lang::JavaScript)
        } else if dir.join("plugin.c").exists() {
            Ok(Lang::C)
        } else {
            bail!(
                "{}: no Cargo.toml, plugin.py, plugin.js or plugin.c; a plugin folder holds galley.toml and one of them",
                dir.display()
            )
        }
    }
}

/// The WIT world a kind's component implements.
pub fn world_of(kind: PluginKind) -> &'static str {
    match kind {
        PluginKind::Reward => "reward-plugin",
        PluginKind::DataLoader => "data-loader-plugin",
        PluginKind::Evaluator => "evaluator-plugin",
        PluginKind::Recipe => "recipe-plugin",
        PluginKind::Tool => "tool-plugin",
        PluginKind::Environment => "environment-plugin",
    }
}

/// Builds the plugin in `dir` into `out_dir/<name>.wasm`. `toolchain` is the Rust route
/// (resolved lazily: a Python-only user needs no Rust wasm toolchain).
pub fn build(
    dir: &Path,
    out_dir: &Path,
    target_dir: &Path,
    toolchain: impl Fn() -> Result<Toolchain>,
) -> Result<Built> {
    let manifest_path = dir.join("galley.toml");
    let text = std::fs::read_to_string(&manifest_path).with_context(|| {
        format!(
            "{}: cannot read the plugin manifest",
            manifest_path.display()
        )
    })?;
    let mut manifest = Manifest::from_toml(&text, &manifest_path.display().to_string())?;
    let lang = Lang::detect(dir)?;
    if manifest.kind == PluginKind::Tool && lang == Lang::C {
        bail!(
            "{}: tool plugins are written in Rust, Python or JavaScript for now; the C SDK builds the other kinds",
            dir.display()
        );
    }
    if manifest.kind == PluginKind::Environment && !matches!(lang, Lang::Rust | Lang::Python) {
        bail!(
            "{}: environment plugins are written in Rust or Python for now; the JavaScript and C SDKs build the other kinds",
            dir.display()
        );
    }
    let component = match lang {
        Lang::Rust => build_rust(dir, target_dir, toolchain()?, &manifest)?,
        Lang::Python => build_python(dir, manifest.kind).with_context(|| {
            format!(
                "building Python plugin `{}` from {}",
                manifest.name,
                dir.display()
            )
        })?,
        Lang::JavaScript => build_js(dir, manifest.kind).with_context(|| {
            format!(
                "building JavaScript plugin `{}` from {}",
                manifest.name,
                dir.display()
            )
        })?,
        Lang::C => {
            let scratch = Scratch::new()?;
            crate::cplugin::build(dir, manifest.kind, &scratch.0).with_context(|| {
                format!(
                    "building C plugin `{}` from {}",
                    manifest.name,
                    dir.display()
                )
            })?
        }
    };

    let origin = format!("plugin `{}`", manifest.name);
    let info = inspect(&component, &origin)?;
    let Some((kind, wit)) = info.plugin_export else {
        bail!(
            "{origin}: the component exports no galley:plugin interface (exports: {}); did the plugin register itself (e.g. `galley_sdk::export_reward!`, `@reward`, `reward(...)`)?",
            info.exports.join(", ")
        );
    };
    if kind != manifest.kind {
        bail!(
            "{}: key `kind` is `{}` but the plugin exports galley:plugin/{kind}@{wit}; fix the manifest or the export",
            manifest_path.display(),
            manifest.kind
        );
    }
    manifest.wit = Some(wit);
    let component = embed_manifest(&component, &manifest);
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let path = out_dir.join(format!("{}.wasm", manifest.name));
    std::fs::write(&path, &component).with_context(|| format!("writing {}", path.display()))?;
    Ok(Built {
        manifest,
        path,
        size: component.len(),
        digest: galley_runtime::digest_of(&component),
        lang,
    })
}

fn build_rust(
    dir: &Path,
    target_dir: &Path,
    toolchain: Toolchain,
    manifest: &Manifest,
) -> Result<Vec<u8>> {
    let artifact = cargo_build(&dir.join("Cargo.toml"), target_dir, toolchain)
        .with_context(|| format!("building plugin `{}` from {}", manifest.name, dir.display()))?;
    let bytes =
        std::fs::read(&artifact).with_context(|| format!("reading {}", artifact.display()))?;
    match toolchain {
        Toolchain::RustupWasip2 => Ok(bytes),
        Toolchain::DebianWasip1 => {
            componentize(&bytes).with_context(|| format!("componentizing {}", artifact.display()))
        }
    }
}

/// A scratch folder with the WIT, removed when dropped.
pub(crate) struct Scratch(pub(crate) PathBuf);

impl Scratch {
    /// With `galley:plugin@0.2.0`, what every kind but tools builds against.
    pub(crate) fn new() -> Result<Self> {
        Self::for_kind(PluginKind::Reward)
    }

    /// With the WIT `kind` builds against: 0.3.0 for tools and 0.4.0 for environments
    /// (their worlds are new there), 0.2.0 for the rest (the oldest contract with all they
    /// use).
    pub(crate) fn for_kind(kind: PluginKind) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "galley-build-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        std::fs::create_dir_all(dir.join("wit"))?;
        let wit = match kind {
            PluginKind::Tool => embedded::WIT_0_3_0,
            PluginKind::Environment => embedded::WIT_0_4_0,
            _ => embedded::WIT_0_2_0,
        };
        embedded::write_all(&dir.join("wit"), wit)?;
        Ok(Self(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run_tool(cmd: &mut std::process::Command, what: &str) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        bail!("{what} failed ({}):\n{}", out.status, text.trim());
    }
    Ok(())
}

/// componentize-py over the plugin folder, the SDK, and an entry module that imports the
/// author's `plugin.py` and the SDK's export class for the kind.
fn build_python(dir: &Path, kind: PluginKind) -> Result<Vec<u8>> {
    let tool = toolchains::componentize_py()?;
    let scratch = Scratch::for_kind(kind)?;
    let sdk = scratch.0.join("sdk");
    embedded::write_all(&sdk, embedded::PYTHON_SDK)?;
    let export = match kind {
        PluginKind::Reward => "Reward",
        PluginKind::DataLoader => "DataLoader",
        PluginKind::Evaluator => "Evaluator",
        PluginKind::Recipe => "Recipe",
        PluginKind::Tool => "Tool",
        PluginKind::Environment => "Environment",
    };
    let entry = scratch.0.join("entry");
    std::fs::create_dir_all(&entry)?;
    std::fs::write(
        entry.join("galley_entry.py"),
        format!(
            "import plugin  # noqa: F401  (registers the plugin)\nfrom galley_sdk._exports import {export}  # noqa: F401\n"
        ),
    )?;
    let out = scratch.0.join("plugin.wasm");
    run_tool(
        std::process::Command::new(&tool)
            .arg("-d")
            .arg(scratch.0.join("wit"))
            .args(["-w", world_of(kind), "componentize", "galley_entry"])
            .arg("-p")
            .arg(&entry)
            .arg("-p")
            .arg(dir)
            .arg("-p")
            .arg(&sdk)
            .arg("-o")
            .arg(&out),
        "componentize-py",
    )?;
    Ok(std::fs::read(&out)?)
}

/// componentize-js over one module: the SDK prelude, the author's `plugin.js` (its
/// `import ... from "galley-sdk"` line dropped: the prelude defines those names), and the
/// export of the kind's interface.
fn build_js(dir: &Path, kind: PluginKind) -> Result<Vec<u8>> {
    let tool = toolchains::componentize_js()?;
    let source_path = dir.join("plugin.js");
    let source = std::fs::read_to_string(&source_path)
        .with_context(|| format!("reading {}", source_path.display()))?;
    let scratch = Scratch::for_kind(kind)?;
    let body: String = source
        .lines()
        .filter(|l| {
            !(l.trim_start().starts_with("import ")
                && (l.contains("\"galley-sdk\"") || l.contains("'galley-sdk'")))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let export = match kind {
        PluginKind::Reward => "export { __rewardExport as reward };",
        PluginKind::DataLoader => "export { __dataLoaderExport as dataLoader };",
        PluginKind::Evaluator => "export { __evaluatorExport as evaluator };",
        PluginKind::Recipe => "export { __recipeExport as recipe };",
        PluginKind::Tool => "export { __toolExport as tool };",
        PluginKind::Environment => unreachable!("refused before the build"),
    };
    // The prelude imports the log of the contract the kind builds against (tools: 0.3.0).
    let sdk = match kind {
        PluginKind::Tool => {
            embedded::JS_SDK.replace("\"galley:plugin/log@0.2.0\"", "\"galley:plugin/log@0.3.0\"")
        }
        _ => embedded::JS_SDK.to_string(),
    };
    let entry = scratch.0.join("entry.js");
    std::fs::write(
        &entry,
        format!("{sdk}\n// ---- plugin.js ----\n{body}\n{export}\n"),
    )?;
    let out = scratch.0.join("plugin.wasm");
    run_tool(
        std::process::Command::new(&tool)
            .arg("--wit")
            .arg(scratch.0.join("wit"))
            .args(["--world-name", world_of(kind)])
            // Without this the component imports wasi:http, which plugins are not given.
            .args(["-d", "http", "fetch-event"])
            .arg("-o")
            .arg(&out)
            .arg(&entry),
        "componentize-js",
    )?;
    Ok(std::fs::read(&out)?)
}

/// Runs cargo and returns the `.wasm` it produced, read from cargo's JSON messages rather
/// than guessed from the crate name.
fn cargo_build(cargo_toml: &Path, target_dir: &Path, toolchain: Toolchain) -> Result<PathBuf> {
    let mut cmd;
    match toolchain {
        Toolchain::RustupWasip2 => {
            cmd = Command::new("cargo");
            cmd.args(["build", "--release", "--target", "wasm32-wasip2"]);
        }
        Toolchain::DebianWasip1 => {
            cmd = Command::new("/usr/bin/cargo");
            cmd.args(["build", "--release", "-Zbuild-std=std,panic_abort", "--target", "wasm32-wasip1"])
                .args(["--config", "profile.release.panic=\"abort\""])
                // Debian's rustc builds std from source, which needs nightly flags.
                .env("RUSTC_BOOTSTRAP", "1")
                .env("RUSTC", "/usr/bin/rustc")
                .env("RUSTDOC", "/usr/bin/rustdoc")
                // Debian has no rust-lld; set the linker before the first build or everything
                // rebuilds when it changes.
                .env("CARGO_TARGET_WASM32_WASIP1_LINKER", "wasm-ld-19")
                .env(
                    "CARGO_TARGET_WASM32_WASIP1_RUSTFLAGS",
                    "-C link-self-contained=no -L native=/usr/lib/wasm32-wasi -L native=/usr/lib/llvm-19/lib/clang/19/lib/wasi",
                );
        }
    }
    // Variables an enclosing cargo (e.g. `cargo run`, `cargo test`) sets would point the
    // inner build at the host compiler or flags.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "RUSTUP_TOOLCHAIN",
    ] {
        cmd.env_remove(var);
    }
    if toolchain == Toolchain::RustupWasip2 {
        cmd.env_remove("RUSTC");
    }
    cmd.arg("--manifest-path")
        .arg(cargo_toml)
        .arg("--target-dir")
        .arg(target_dir)
        .args(["--message-format", "json-render-diagnostics", "--lib"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let out = cmd
        .output()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!("cargo failed ({}); its errors are above", out.status);
    }
    let manifest_dir = cargo_toml
        .parent()
        .unwrap_or(Path::new("."))
        .canonicalize()?;
    let mut found = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let src = msg["manifest_path"].as_str().map(PathBuf::from);
        if src.as_deref().and_then(Path::parent) != Some(manifest_dir.as_path()) {
            continue;
        }
        for f in msg["filenames"].as_array().into_iter().flatten() {
            if let Some(f) = f.as_str().filter(|f| f.ends_with(".wasm")) {
                found = Some(PathBuf::from(f));
            }
        }
    }
    found.context(
        "cargo produced no .wasm; is the crate a `cdylib`? (add `[lib] crate-type = [\"cdylib\"]`)",
    )
}

/// Wraps a wasip1 core module into a component with the WASI reactor adapter.
pub fn componentize(core: &[u8]) -> Result<Vec<u8>> {
    Ok(wit_component::ComponentEncoder::default()
        .module(core)?
        .validate(true)
        .adapter(
            wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME,
            wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
        )?
        .encode()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_plugin_builds_in_a_target_dir_of_its_own() {
        if galley_core::dirs::shared_wasm_target_dir().is_some() {
            return; // the user opted into one shared dir: nothing to compare
        }
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (
            tmp.path().join("team-a/reward"),
            tmp.path().join("team-b/reward"),
        );
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let (ta, tb) = (default_target_dir(&a), default_target_dir(&b));
        // Same plugin name, different folders: different target dirs, named after the plugin.
        assert_ne!(ta, tb);
        assert!(
            ta.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("reward-")
        );
        assert_eq!(ta, default_target_dir(&a), "stable across builds");
    }
}
