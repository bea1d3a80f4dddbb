//! The guest-language toolchains `galley plugin build` needs beyond Rust, installed on first
//! use into galley's cache (`GALLEY_TOOLCHAIN_DIR`, else `<galley cache>/toolchains`):
//! componentize-py in a Python venv, componentize-js in a local npm install. Versions are
//! pinned: a plugin must build the same way next month.

use crate::error::{Context, Result, bail};
use std::path::PathBuf;
use std::process::Command;

pub const COMPONENTIZE_PY: &str = "0.25.1";
pub const COMPONENTIZE_JS: &str = "0.23.0";
pub const JCO: &str = "1.35.0";

pub fn toolchain_dir() -> PathBuf {
    galley_core::dirs::toolchains_dir()
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("{what}: cannot run {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .rev()
                .take(8)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
    Ok(())
}

fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The `componentize-py` executable, installing it first if needed.
pub fn componentize_py() -> Result<PathBuf> {
    let venv = toolchain_dir().join(format!("componentize-py-{COMPONENTIZE_PY}"));
    let bin = venv.join("bin/componentize-py");
    if bin.exists() {
        return Ok(bin);
    }
    if !have("python3") {
        bail!(
            "building a Python plugin needs python3 (3.10 or newer) with venv: install it (Debian: `apt-get install python3 python3-venv`)"
        );
    }
    tracing::info!(
        "installing componentize-py {COMPONENTIZE_PY} into {} (once)",
        venv.display()
    );
    let _ = std::fs::remove_dir_all(&venv);
    let installed = run(
        Command::new("python3").arg("-m").arg("venv").arg(&venv),
        "creating a Python venv (Debian: `apt-get install python3-venv`)",
    )
    .and_then(|_| {
        run(
            Command::new(venv.join("bin/pip")).args([
                "install",
                "--quiet",
                &format!("componentize-py=={COMPONENTIZE_PY}"),
            ]),
            "pip install componentize-py",
        )
    });
    if let Err(e) = installed {
        // Never leave a half-made venv that a later run would take for a working one.
        let _ = std::fs::remove_dir_all(&venv);
        return Err(e);
    }
    Ok(bin)
}

/// The `componentize-js` executable, installing it first if needed.
pub fn componentize_js() -> Result<PathBuf> {
    let dir = toolchain_dir().join(format!("componentize-js-{COMPONENTIZE_JS}"));
    let bin = dir.join("node_modules/.bin/componentize-js");
    if bin.exists() {
        return Ok(bin);
    }
    if !have("npm") || !have("node") {
        bail!(
            "building a JavaScript plugin needs Node.js 20+ and npm: install them (Debian: `apt-get install nodejs npm`)"
        );
    }
    tracing::info!(
        "installing componentize-js {COMPONENTIZE_JS} into {} (once)",
        dir.display()
    );
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // preview2-shim is pinned: newer releases broke jco's componentize here.
    std::fs::write(
        dir.join("package.json"),
        r#"{"name":"galley-js-toolchain","private":true,"overrides":{"@bytecodealliance/preview2-shim":"0.26.0"}}"#,
    )?;
    run(
        Command::new("npm").current_dir(&dir).args([
            "install",
            "--no-audit",
            "--no-fund",
            "--silent",
            &format!("@bytecodealliance/componentize-js@{COMPONENTIZE_JS}"),
            &format!("@bytecodealliance/jco@{JCO}"),
        ]),
        "npm install componentize-js",
    )?;
    if !bin.exists() {
        bail!(
            "npm installed componentize-js but {} is missing",
            bin.display()
        );
    }
    Ok(bin)
}
