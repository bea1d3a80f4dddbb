//! `galley plugin build`: turns a plugin crate into a galley component. Picks the toolchain
//! that exists here — rustup's `wasm32-wasip2` target when installed, else Debian's Rust with
//! `-Zbuild-std` for `wasm32-wasip1` plus the WASI reactor adapter — componentizes in-process
//! with `wit-component` (no wasm-tools binary), checks that the component exports the world
//! its manifest declares, and embeds the manifest.

use anyhow::{Context, Result, bail};
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

const DEBIAN_PACKAGES: &str =
    "rustc-web cargo-web rust-web-src libstd-rust-web-dev clang-19 lld-19 wasi-libc libclang-rt-19-dev-wasm32";

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
            .map(|o| String::from_utf8_lossy(&o.stdout).lines().any(|l| l.trim() == "wasm32-wasip2"))
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
            ("/usr/lib/llvm-19/lib/clang/19/lib/wasi", "libclang-rt-19-dev-wasm32"),
        ] {
            if !Path::new(path).exists() {
                missing.push(format!("{path} (package {what})"));
            }
        }
        let src = Command::new("/usr/bin/rustc").args(["--print", "sysroot"]).output();
        if let Ok(out) = src {
            let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if !Path::new(&sysroot).join("lib/rustlib/src/rust/library").exists() {
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
pub fn default_target_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("GALLEY_WASM_TARGET_DIR") {
        return PathBuf::from(d);
    }
    galley_runtime::default_cache_dir()
        .and_then(|c| c.parent().map(|p| p.join("wasm-target")))
        .unwrap_or_else(|| PathBuf::from("target/wasm"))
}

pub struct Built {
    pub manifest: Manifest,
    pub path: PathBuf,
    pub size: usize,
    pub digest: String,
}

/// Builds the plugin crate in `dir` into `out_dir/<name>.wasm`.
pub fn build(dir: &Path, out_dir: &Path, target_dir: &Path, toolchain: Toolchain) -> Result<Built> {
    let manifest_path = dir.join("galley.toml");
    let text = std::fs::read_to_string(&manifest_path)
        .with_context(|| format!("{}: cannot read the plugin manifest", manifest_path.display()))?;
    let mut manifest = Manifest::from_toml(&text, &manifest_path.display().to_string())?;
    let cargo_toml = dir.join("Cargo.toml");
    if !cargo_toml.exists() {
        bail!("{}: no Cargo.toml; this galley builds Rust plugin crates", dir.display());
    }

    let artifact = cargo_build(&cargo_toml, target_dir, toolchain)
        .with_context(|| format!("building plugin `{}` from {}", manifest.name, dir.display()))?;
    let bytes = std::fs::read(&artifact).with_context(|| format!("reading {}", artifact.display()))?;
    let component = match toolchain {
        Toolchain::RustupWasip2 => bytes,
        Toolchain::DebianWasip1 => componentize(&bytes)
            .with_context(|| format!("componentizing {}", artifact.display()))?,
    };

    let origin = format!("plugin `{}`", manifest.name);
    let info = inspect(&component, &origin)?;
    let Some((kind, wit)) = info.plugin_export else {
        bail!(
            "{origin}: the component exports no galley:plugin interface (exports: {}); did the crate call an export macro such as `galley_sdk::export_reward!`?",
            info.exports.join(", ")
        );
    };
    if kind != manifest.kind {
        bail!(
            "{}: key `kind` is `{}` but the crate exports galley:plugin/{kind}@{wit}; fix the manifest or the export macro",
            manifest_path.display(),
            manifest.kind
        );
    }
    manifest.wit = Some(wit);
    let component = embed_manifest(&component, &manifest);
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let path = out_dir.join(format!("{}.wasm", manifest.name));
    std::fs::write(&path, &component).with_context(|| format!("writing {}", path.display()))?;
    Ok(Built { manifest, path, size: component.len(), digest: galley_runtime::digest_of(&component) })
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
    for var in ["RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "RUSTC_WRAPPER", "RUSTC_WORKSPACE_WRAPPER", "CARGO_BUILD_TARGET", "CARGO_TARGET_DIR", "RUSTUP_TOOLCHAIN"] {
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
    let out = cmd.output().with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!("cargo failed ({}); its errors are above", out.status);
    }
    let manifest_dir = cargo_toml.parent().unwrap_or(Path::new(".")).canonicalize()?;
    let mut found = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else { continue };
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
    found.context("cargo produced no .wasm; is the crate a `cdylib`? (add `[lib] crate-type = [\"cdylib\"]`)")
}

/// Wraps a wasip1 core module into a component with the WASI reactor adapter.
pub fn componentize(core: &[u8]) -> Result<Vec<u8>> {
    wit_component::ComponentEncoder::default()
        .module(core)?
        .validate(true)
        .adapter(
            wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME,
            wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
        )?
        .encode()
}
