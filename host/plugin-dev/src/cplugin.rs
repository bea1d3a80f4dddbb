//! C plugins: bindings generated in-process by wit-bindgen's C generator, the galley C SDK
//! (`sdk/c`), clang for wasm32-wasi as a reactor, component metadata embedded and the WASI
//! reactor adapter applied with `wit-component` — no wit-bindgen or wasm-tools binary.

use crate::build::world_of;
use crate::embedded;
use crate::error::PluginDevError;
use crate::error::{Context, Result, bail};
use galley_core::PluginKind;
use std::path::Path;
use std::process::Command;

const CLANG: &str = "clang-19";
const SYSROOT: &str = "/usr";

/// Writes the C bindings of `kind`'s world into `out`; returns the world's C name.
pub fn bindings(kind: PluginKind, wit_dir: &Path, out: &Path) -> Result<String> {
    use wit_bindgen_core::wit_parser::Resolve;
    let mut resolve = Resolve::default();
    let (pkg, _) = resolve
        .push_dir(wit_dir)
        .map_err(|e| PluginDevError::Wit(format!("{e:?}")))?;
    let world = resolve
        .select_world(&[pkg], Some(world_of(kind)))
        .map_err(|e| PluginDevError::Wit(format!("{e:?}")))?;
    let mut files = wit_bindgen_core::Files::default();
    // The component type travels as metadata we embed ourselves, so no object file.
    let opts = wit_bindgen_c::Opts {
        no_object_file: true,
        ..Default::default()
    };
    opts.build()
        .generate(&mut resolve, world, &mut files)
        .map_err(|e| PluginDevError::Wit(format!("{e:?}")))?;
    std::fs::create_dir_all(out)?;
    for (name, bytes) in files.iter() {
        std::fs::write(out.join(name), bytes)?;
    }
    Ok(world_of(kind).replace('-', "_"))
}

/// Writes the C bindings of `kind`'s world into `out` from the WIT this galley carries;
/// returns the world's C name.
pub fn write_bindings(kind: PluginKind, out: &Path) -> Result<String> {
    let scratch = crate::build::Scratch::new()?;
    bindings(kind, &scratch.0.join("wit"), out)
}

/// Compiles `plugin.c` with the SDK into a component.
pub fn build(dir: &Path, kind: PluginKind, scratch: &Path) -> Result<Vec<u8>> {
    if Command::new(CLANG).arg("--version").output().is_err()
        || !Path::new("/usr/lib/wasm32-wasi/libc.a").exists()
    {
        bail!(
            "building a C plugin needs {CLANG}, lld-19, wasi-libc and libclang-rt-19-dev-wasm32 (Debian: `apt-get install clang-19 lld-19 wasi-libc libclang-rt-19-dev-wasm32`)"
        );
    }
    let wit = scratch.join("wit");
    let csrc = scratch.join("c");
    let world = bindings(kind, &wit, &csrc)?;
    embedded::write_all(&csrc, embedded::C_SDK)?;
    let core = scratch.join("plugin.core.wasm");
    let out = Command::new(CLANG)
        .args([
            "--target=wasm32-wasi",
            &format!("--sysroot={SYSROOT}"),
            "-O2",
            "-mexec-model=reactor",
            "-std=c11",
        ])
        .args(["-Wall", "-Wno-unused-function", "-fuse-ld=lld"])
        .arg(format!("-DGALLEY_WORLD_{}", world.to_uppercase()))
        .arg("-I")
        .arg(&csrc)
        .arg(dir.join("plugin.c"))
        .arg(csrc.join(format!("{world}.c")))
        .arg(csrc.join("galley.c"))
        .arg("-o")
        .arg(&core)
        .output()
        .with_context(|| format!("running {CLANG}"))?;
    if !out.status.success() {
        bail!(
            "{CLANG} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let mut module = std::fs::read(&core)?;
    {
        use wit_component::{StringEncoding, embed_component_metadata};
        let mut resolve = wit_parser::Resolve::default();
        let (pkg, _) = resolve.push_dir(&wit)?;
        let w = resolve.select_world(&[pkg], Some(world_of(kind)))?;
        embed_component_metadata(&mut module, &resolve, w, StringEncoding::UTF8)?;
    }
    crate::build::componentize(&module)
}

/// The `plugin.c` a new C plugin of `kind` starts from.
pub fn template(kind: PluginKind) -> &'static str {
    match kind {
        PluginKind::Reward => include_str!("../templates/c/reward.c"),
        PluginKind::DataLoader => include_str!("../templates/c/data-loader.c"),
        PluginKind::Evaluator => include_str!("../templates/c/evaluator.c"),
        PluginKind::Recipe => include_str!("../templates/c/recipe.c"),
        PluginKind::Tool => unreachable!("`galley plugin new` makes no C tool"),
        PluginKind::Environment => unreachable!("`galley plugin new` makes no C environment"),
    }
}
