//! `galley plugin inspect`: what a component file is — its manifest (name, version,
//! description, license, capabilities), the plugin interface and WIT version it exports and
//! whether this galley supports it, its imports, size and digest — as JSON or as the text an
//! author reads.

use crate::error::{Context, Result};
use serde_json::{Value, json};
use std::fmt::Write;
use std::path::Path;

/// The component at `file`, described.
pub struct Inspected {
    pub json: Value,
    pub text: String,
}

/// Reads and inspects the component at `file`.
pub fn inspect(file: &Path) -> Result<Inspected> {
    let bytes = std::fs::read(file).with_context(|| format!("{}: cannot read", file.display()))?;
    let info = galley_runtime::inspect(&bytes, &file.display().to_string())?;
    let (kind, wit) = match &info.plugin_export {
        Some((k, v)) => (k.to_string(), v.to_string()),
        None => ("none".to_string(), "none".to_string()),
    };
    let m = info.manifest.as_ref();
    let supported = info
        .plugin_export
        .as_ref()
        .is_some_and(|(_, v)| galley_runtime::wit_supported(v));
    let json = json!({
        "file": file.display().to_string(),
        "name": m.map(|m| m.name.clone()),
        "version": m.map(|m| m.version.to_string()),
        "kind": kind,
        "wit": wit,
        "wit_supported": supported,
        "description": m.map(|m| m.description.clone()),
        "license": m.and_then(|m| m.license.clone()),
        "capabilities": m.map(|m| json!(m.capabilities)),
        "imports": info.imports,
        "exports": info.exports,
        "size": info.size,
        "digest": info.digest,
    });
    let mut t = String::new();
    let _ = writeln!(t, "file         {}", file.display());
    match m {
        Some(m) => {
            let license = m.license.as_deref().unwrap_or("(none given)");
            let _ = writeln!(t, "plugin       {}", m.id());
            let _ = writeln!(t, "description  {}", m.description);
            let _ = writeln!(t, "license      {license}");
        }
        None => {
            t.push_str("plugin       (no galley manifest: not built by `galley plugin build`)\n")
        }
    }
    let support = match supported {
        true => " (supported by this galley)",
        false => " (NOT supported by this galley)",
    };
    let _ = writeln!(t, "kind         {kind}");
    let _ = writeln!(t, "wit          galley:plugin@{wit}{support}");
    let caps = m
        .map(|m| m.capabilities.read_dirs.clone())
        .unwrap_or_default();
    if caps.is_empty() {
        t.push_str("capabilities none (fully sandboxed)\n");
    } else {
        let _ = writeln!(t, "capabilities read-only directories: {}", caps.join(", "));
    }
    let list = |v: &[String]| match v.is_empty() {
        true => "none".to_string(),
        false => v.join("\n             "),
    };
    let _ = writeln!(t, "size         {} bytes", info.size);
    let _ = writeln!(t, "digest       {}", info.digest);
    let _ = writeln!(t, "imports      {}", list(&info.imports));
    let _ = writeln!(t, "exports      {}", info.exports.join("\n             "));
    Ok(Inspected { json, text: t })
}
