//! The plugin manifest: who a plugin is and what it may ask for. Authors write it as
//! `galley.toml`; `galley plugin build` embeds it in the component as the custom section
//! `galley:manifest` (JSON), so the manifest travels with — and is covered by the digest of —
//! the component itself.

use crate::error::RuntimeError;
use galley_core::PluginKind;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The custom section that carries the manifest inside a component.
pub const MANIFEST_SECTION: &str = "galley:manifest";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Manifest {
    /// The registry namespace the author publishes under (`NAMESPACE/NAME`); optional so a
    /// plugin can be built and run before it has a home.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    pub version: semver::Version,
    pub kind: PluginKind,
    /// The `galley:plugin` WIT version the component was built against; filled in by the
    /// build from the component itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wit: Option<semver::Version>,
    #[serde(default)]
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub license: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authors: Vec<String>,
    #[serde(default)]
    pub capabilities: Capabilities,
    /// Other plugins this one expects in the same run, by name and semver range.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub dependencies: BTreeMap<String, semver::VersionReq>,
}

/// What a plugin asks for beyond the empty sandbox. Each must also be allowed by the user.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Capabilities {
    /// Logical names of read-only directories (mounted at `/NAME`); data loaders only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read_dirs: Vec<String>,
}

impl Manifest {
    /// `name@version`.
    pub fn id(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }

    /// `namespace/name` when the manifest names a namespace, else `name`.
    pub fn full_name(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}/{}", self.name),
            None => self.name.clone(),
        }
    }

    /// Parses an author's `galley.toml`; `origin` names the file in errors (toml's message
    /// carries the line and column).
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, RuntimeError> {
        let m: Manifest = toml::from_str(text).map_err(|e| RuntimeError::BadManifest {
            origin: origin.into(),
            reason: e.to_string(),
        })?;
        m.validate().map_err(|reason| RuntimeError::BadManifest {
            origin: origin.into(),
            reason,
        })?;
        Ok(m)
    }

    pub fn from_json(bytes: &[u8], origin: &str) -> Result<Self, RuntimeError> {
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| RuntimeError::BadManifest {
            origin: origin.into(),
            reason: e.to_string(),
        })?;
        m.validate().map_err(|reason| RuntimeError::BadManifest {
            origin: origin.into(),
            reason,
        })?;
        Ok(m)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("manifest serializes")
    }

    fn validate(&self) -> Result<(), String> {
        let ok_name = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
                && s.starts_with(|c: char| c.is_ascii_lowercase())
        };
        // What a manifest says is printed (`plugin inspect`, `search`, errors): shown escaped.
        let show = |s: &str| galley_core::text::untrusted(s, 80);
        if !ok_name(&self.name) {
            return Err(format!(
                "key `name`: `{}` must be 1-64 characters of a-z, 0-9, '-' or '_', starting with a letter",
                show(&self.name)
            ));
        }
        if let Some(ns) = &self.namespace
            && !ok_name(ns)
        {
            return Err(format!(
                "key `namespace`: `{}` must be 1-64 characters of a-z, 0-9, '-' or '_', starting with a letter",
                show(ns)
            ));
        }
        for d in &self.capabilities.read_dirs {
            if !ok_name(d) {
                return Err(format!(
                    "key `capabilities.read-dirs`: `{}` must be a plain name (a-z, 0-9, '-', '_'), not a path",
                    show(d)
                ));
            }
        }
        let texts = [
            ("description", Some(&self.description)),
            ("license", self.license.as_ref()),
        ];
        let authors = self.authors.iter().map(|a| ("authors", Some(a)));
        for (key, text) in texts.into_iter().chain(authors) {
            let Some(text) = text else { continue };
            if text.len() > 1024 || galley_core::text::has_control(text) {
                return Err(format!(
                    "key `{key}`: `{}` must be one line of at most 1024 bytes, without control characters",
                    show(text)
                ));
            }
        }
        if !self.capabilities.read_dirs.is_empty() && self.kind != PluginKind::DataLoader {
            return Err(format!(
                "key `capabilities.read-dirs`: only data-loader plugins may read directories, this is a {}",
                self.kind
            ));
        }
        Ok(())
    }
}

/// Sets `manifest` as the component's `galley:manifest` section: a manifest section already
/// at the end (as `embed` writes it) is replaced, so relabelling never leaves two.
pub fn embed(component: &[u8], manifest: &Manifest) -> Vec<u8> {
    let component = &component[..manifest_section_start(component).unwrap_or(component.len())];
    let payload = manifest.to_json();
    let mut body = Vec::new();
    leb128(&mut body, MANIFEST_SECTION.len() as u64);
    body.extend_from_slice(MANIFEST_SECTION.as_bytes());
    body.extend_from_slice(&payload);
    let mut out = component.to_vec();
    out.push(0); // custom section id
    leb128(&mut out, body.len() as u64);
    out.extend_from_slice(&body);
    out
}

/// Where a trailing top-level `galley:manifest` section starts, if the component ends with one.
fn manifest_section_start(component: &[u8]) -> Option<usize> {
    let mut depth = 0usize;
    let mut last = None;
    for payload in wasmparser::Parser::new(0).parse_all(component) {
        match payload.ok()? {
            wasmparser::Payload::Version { .. } => depth += 1,
            wasmparser::Payload::End(_) => depth = depth.saturating_sub(1),
            wasmparser::Payload::CustomSection(r) if depth == 1 && r.name() == MANIFEST_SECTION => {
                let body = 1 + MANIFEST_SECTION.len() + r.data().len();
                let mut size = Vec::new();
                leb128(&mut size, body as u64);
                let start = r.data_offset() - MANIFEST_SECTION.len() - 1 - size.len() - 1;
                last = Some((start, r.data_offset() + r.data().len()));
            }
            _ => {}
        }
    }
    let (start, end) = last?;
    (end == component.len()).then_some(start)
}

fn leb128(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}
