//! Reading a component without compiling it: its top-level imports and exports, the plugin
//! kind and `galley:plugin` version those reveal, and the embedded manifest. The kind and WIT
//! version come from the component's own type, never from a side channel, so a manifest
//! cannot claim an interface the code does not implement.

use crate::error::RuntimeError;
use crate::manifest::{MANIFEST_SECTION, Manifest};
use galley_core::PluginKind;
use sha2::{Digest, Sha256};
use wasmparser::{Parser, Payload};

/// What `galley plugin inspect` shows.
#[derive(Debug, Clone)]
pub struct ComponentInfo {
    pub size: usize,
    /// `sha256:<hex>` of the component's bytes.
    pub digest: String,
    pub imports: Vec<String>,
    pub exports: Vec<String>,
    /// The plugin interface the component exports, with its version.
    pub plugin_export: Option<(PluginKind, semver::Version)>,
    pub manifest: Option<Manifest>,
}

pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Splits `galley:plugin/reward@0.1.0` into the kind and version.
pub fn parse_plugin_name(name: &str) -> Option<(PluginKind, semver::Version)> {
    let rest = name.strip_prefix("galley:plugin/")?;
    let (iface, version) = rest.split_once('@')?;
    let kind = PluginKind::parse(iface)?;
    Some((kind, semver::Version::parse(version).ok()?))
}

pub fn inspect(bytes: &[u8], origin: &str) -> Result<ComponentInfo, RuntimeError> {
    if Parser::is_core_wasm(bytes) {
        return Err(RuntimeError::CoreModule {
            origin: origin.into(),
        });
    }
    if !Parser::is_component(bytes) {
        let reason = if bytes.len() < 8 {
            format!("only {} bytes", bytes.len())
        } else if !bytes.starts_with(b"\0asm") {
            "no `\\0asm` header".to_string()
        } else {
            "unknown binary version".to_string()
        };
        return Err(RuntimeError::NotAComponent {
            origin: origin.into(),
            reason,
        });
    }
    let mut info = ComponentInfo {
        size: bytes.len(),
        digest: digest_of(bytes),
        imports: Vec::new(),
        exports: Vec::new(),
        plugin_export: None,
        manifest: None,
    };
    let invalid = |e: wasmparser::BinaryReaderError| RuntimeError::NotAComponent {
        origin: origin.into(),
        reason: e.to_string(),
    };
    // Nested modules and components also yield payloads; only depth 1 is the component's own.
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.map_err(invalid)? {
            Payload::Version { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(reader) if depth == 1 => {
                for import in reader {
                    info.imports
                        .push(import.map_err(invalid)?.name.name.to_string());
                }
            }
            Payload::ComponentExportSection(reader) if depth == 1 => {
                for export in reader {
                    info.exports
                        .push(export.map_err(invalid)?.name.name.to_string());
                }
            }
            Payload::CustomSection(reader) if depth == 1 && reader.name() == MANIFEST_SECTION => {
                if info.manifest.is_some() {
                    // Two manifests would let a tool and the host read different identities.
                    return Err(RuntimeError::BadManifest {
                        origin: origin.into(),
                        reason: "the component carries two galley:manifest sections".into(),
                    });
                }
                info.manifest = Some(Manifest::from_json(reader.data(), origin)?);
            }
            _ => {}
        }
    }
    let found: Vec<_> = info
        .exports
        .iter()
        .filter_map(|e| parse_plugin_name(e))
        .collect();
    if found.len() > 1 {
        return Err(RuntimeError::Invalid {
            origin: origin.into(),
            reason: format!(
                "exports {} plugin interfaces ({}); a component is exactly one kind of plugin",
                found.len(),
                info.exports.join(", ")
            ),
        });
    }
    info.plugin_export = found.into_iter().next();
    Ok(info)
}
