//! OCI interop: plugins kept in the container registries teams already run. The layout is the
//! CNCF Wasm OCI artifact that wkg writes — an OCI image manifest whose config has media type
//! `application/vnd.wasm.config.v0+json` and whose one layer is the component
//! (`application/wasm`) — so other Wasm tools can pull what galley pushes. galley adds its
//! signed release line as the manifest annotation `dev.galley.release`; a pull checks that the
//! layer is exactly the signed digest and size, and the installer then verifies the signature
//! and hashes the layer while it streams, as for any other source.
//!
//! Transport: the distribution API v2 (`/v2/REPO/manifests/REF`, `/v2/REPO/blobs/DIGEST`,
//! monolithic `POST`+`PUT` uploads). Loopback hosts are spoken to over plain HTTP, every other
//! host over HTTPS. Credentials, when needed, come from `GALLEY_OCI_USERNAME` and
//! `GALLEY_OCI_PASSWORD` (HTTP basic) or `GALLEY_OCI_TOKEN` (a bearer token), and go only to
//! the hosts named in `GALLEY_OCI_HOSTS` (comma-separated): references also come from
//! lockfiles and configs someone else wrote, and must not be a way to collect them.

use crate::error::RegistryError;
use crate::index::{PackageName, Release};
use crate::install::sha256;
use crate::source::Source;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Read;
use std::time::Duration;

pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
pub const LAYER_MEDIA_TYPE: &str = "application/wasm";
/// The annotation carrying galley's signed release line.
pub const RELEASE_ANNOTATION: &str = "dev.galley.release";
/// Manifests are small; anything larger is refused before parsing.
const MAX_MANIFEST: u64 = 1 << 20;

/// `oci://HOST[:PORT]/REPO[:TAG][@sha256:HEX]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciRef {
    pub host: String,
    pub repo: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

fn bad_ref(s: &str, why: &str) -> RegistryError {
    RegistryError::BadReference(format!(
        "`{s}`: {why} (expected oci://HOST[:PORT]/REPO[:TAG][@sha256:DIGEST])"
    ))
}

fn is_digest(d: &str) -> bool {
    d.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

impl OciRef {
    pub fn parse(s: &str) -> Result<Self, RegistryError> {
        let rest = s
            .strip_prefix("oci://")
            .ok_or_else(|| bad_ref(s, "not an oci:// reference"))?;
        let (host, path) = rest
            .split_once('/')
            .ok_or_else(|| bad_ref(s, "no repository"))?;
        let host_ok = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
        if !host_ok {
            return Err(bad_ref(s, "bad host"));
        }
        let (path, digest) = match path.split_once('@') {
            Some((p, d)) if is_digest(d) => (p, Some(d.to_string())),
            Some(_) => return Err(bad_ref(s, "a digest must be sha256:<64 lowercase hex>")),
            None => (path, None),
        };
        // A tag follows the last ':' after the last '/'.
        let (repo, tag) = match path.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (r, Some(t.to_string())),
            _ => (path, None),
        };
        // The distribution spec's repository grammar: lowercase components joined by '/'.
        let component_ok = |c: &str| {
            !c.is_empty()
                && c.starts_with(|ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit())
                && c.ends_with(|ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit())
                && c.chars()
                    .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || "._-".contains(ch))
                && !c.contains("..")
        };
        if repo.len() > 255 || !repo.split('/').all(component_ok) {
            return Err(bad_ref(s, "bad repository name"));
        }
        if let Some(t) = &tag {
            let ok = t.len() <= 128
                && t.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
            if !ok {
                return Err(bad_ref(s, "bad tag"));
            }
        }
        let tag = if tag.is_none() && digest.is_none() {
            Some("latest".to_string())
        } else {
            tag
        };
        Ok(Self {
            host: host.into(),
            repo: repo.into(),
            tag,
            digest,
        })
    }

    /// What to ask the registry for: the digest when pinned, else the tag.
    fn reference(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .expect("a tag or a digest")
    }

    /// The same repository pinned to a manifest digest (what a lockfile records).
    pub fn pinned(&self, manifest_digest: &str) -> Self {
        Self {
            host: self.host.clone(),
            repo: self.repo.clone(),
            tag: None,
            digest: Some(manifest_digest.into()),
        }
    }

    fn loopback(&self) -> bool {
        is_loopback(&self.host)
    }
}

/// Whether `host[:port]` is this machine (the only place plain HTTP is spoken to by default).
pub(crate) fn is_loopback(host: &str) -> bool {
    let h = match host.find(']') {
        Some(end) => &host[..=end],
        None => host.split(':').next().unwrap_or(""),
    };
    matches!(h, "127.0.0.1" | "localhost" | "[::1]")
}

impl std::fmt::Display for OciRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "oci://{}/{}", self.host, self.repo)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    pub schema_version: u32,
    #[serde(default)]
    pub media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The Wasm OCI config blob (the fields wkg reads).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct WasmConfig<'a> {
    created: &'a str,
    architecture: &'a str,
    os: &'a str,
    layer_digests: Vec<&'a str>,
    component: ComponentTypes<'a>,
}

#[derive(Debug, Serialize)]
struct ComponentTypes<'a> {
    exports: &'a [String],
    imports: &'a [String],
}

/// What a pull found: the release (signed when the publisher was galley) and where it is
/// pinned.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// `None` when the artifact carries no galley release annotation (pushed by another tool).
    pub release: Option<Release>,
    pub layer: Descriptor,
    pub manifest_digest: String,
}

pub struct OciClient {
    base: String,
    host: String,
    client: reqwest::blocking::Client,
}

/// Whether the user named `host` as one their `GALLEY_OCI_*` credentials are for.
fn credentials_for(host: &str) -> bool {
    std::env::var("GALLEY_OCI_HOSTS")
        .is_ok_and(|v| v.split(',').any(|h| h.trim().eq_ignore_ascii_case(host)))
}

fn http(url: &str, e: impl std::fmt::Display) -> RegistryError {
    RegistryError::Http {
        url: url.into(),
        reason: e.to_string(),
    }
}

impl OciClient {
    pub fn new(r: &OciRef) -> Result<Self, RegistryError> {
        let scheme = if r.loopback() { "http" } else { "https" };
        let base = format!("{scheme}://{}", r.host);
        let client = reqwest::blocking::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| http(&base, e))?;
        Ok(Self {
            base,
            host: r.host.clone(),
            client,
        })
    }

    fn auth(&self, req: reqwest::blocking::RequestBuilder) -> reqwest::blocking::RequestBuilder {
        if !credentials_for(&self.host) {
            return req;
        }
        if let Ok(token) = std::env::var("GALLEY_OCI_TOKEN") {
            return req.bearer_auth(token);
        }
        match std::env::var("GALLEY_OCI_USERNAME") {
            Ok(user) => req.basic_auth(user, std::env::var("GALLEY_OCI_PASSWORD").ok()),
            Err(_) => req,
        }
    }

    fn send(
        &self,
        req: reqwest::blocking::RequestBuilder,
        url: &str,
    ) -> Result<reqwest::blocking::Response, RegistryError> {
        let resp = self.auth(req).send().map_err(|e| http(url, e))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let mut body = String::new();
        let _ = resp.take(2048).read_to_string(&mut body);
        let hint = if status == reqwest::StatusCode::UNAUTHORIZED {
            " (set GALLEY_OCI_TOKEN, or GALLEY_OCI_USERNAME and GALLEY_OCI_PASSWORD, and name this host in GALLEY_OCI_HOSTS)"
        } else {
            ""
        };
        let body = galley_core::text::untrusted(body.trim(), 512);
        Err(http(url, format!("status {status}{hint}: {body}")))
    }

    /// Fetches and checks the manifest: size-capped, digest-checked when the reference pins
    /// one, and holding exactly one `application/wasm` layer.
    pub fn pull(&self, r: &OciRef) -> Result<Pulled, RegistryError> {
        let url = format!("{}/v2/{}/manifests/{}", self.base, r.repo, r.reference());
        let resp = self.send(
            self.client.get(&url).header("accept", MANIFEST_MEDIA_TYPE),
            &url,
        )?;
        let mut bytes = Vec::new();
        resp.take(MAX_MANIFEST + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| http(&url, e))?;
        if bytes.len() as u64 > MAX_MANIFEST {
            return Err(http(
                &url,
                format!("manifest larger than {MAX_MANIFEST} bytes"),
            ));
        }
        let manifest_digest = sha256(&bytes);
        if let Some(want) = &r.digest
            && &manifest_digest != want
        {
            return Err(http(
                &url,
                format!("manifest digest is {manifest_digest}, not the pinned {want}"),
            ));
        }
        let m: ImageManifest = serde_json::from_slice(&bytes)
            .map_err(|e| http(&url, format!("not an OCI image manifest: {e}")))?;
        if m.config.media_type != CONFIG_MEDIA_TYPE {
            return Err(http(
                &url,
                format!(
                    "config media type `{}` is not a Wasm artifact ({CONFIG_MEDIA_TYPE})",
                    m.config.media_type
                ),
            ));
        }
        let mut wasm = m.layers.iter().filter(|l| l.media_type == LAYER_MEDIA_TYPE);
        let layer = match (wasm.next(), wasm.next()) {
            (Some(l), None) => l.clone(),
            _ => {
                return Err(http(
                    &url,
                    format!("expected exactly one `{LAYER_MEDIA_TYPE}` layer"),
                ));
            }
        };
        if !is_digest(&layer.digest) {
            return Err(http(
                &url,
                format!(
                    "layer digest `{}` is not sha256:<64 lowercase hex>",
                    layer.digest
                ),
            ));
        }
        let release = match m.annotations.get(RELEASE_ANNOTATION) {
            None => None,
            Some(line) => {
                let rel: Release = serde_json::from_str(line).map_err(|e| {
                    http(
                        &url,
                        format!("annotation {RELEASE_ANNOTATION} is not a release line: {e}"),
                    )
                })?;
                // The signed line names the bytes; the manifest must point at exactly those.
                if rel.digest != layer.digest || rel.size != layer.size {
                    return Err(RegistryError::DigestMismatch {
                        name: rel.name.to_string(),
                        version: rel.version.to_string(),
                        expected: format!("{} ({} bytes)", rel.digest, rel.size),
                        found: format!(
                            "{} ({} bytes) in the OCI manifest",
                            layer.digest, layer.size
                        ),
                    });
                }
                Some(rel)
            }
        };
        Ok(Pulled {
            release,
            layer,
            manifest_digest,
        })
    }

    /// A reader over a blob (unverified: the installer hashes it).
    pub fn open_blob(
        &self,
        repo: &str,
        digest: &str,
    ) -> Result<reqwest::blocking::Response, RegistryError> {
        let url = format!("{}/v2/{repo}/blobs/{digest}", self.base);
        self.send(self.client.get(&url), &url)
    }

    fn blob_exists(&self, repo: &str, digest: &str) -> bool {
        let url = format!("{}/v2/{repo}/blobs/{digest}", self.base);
        self.auth(self.client.head(&url))
            .send()
            .is_ok_and(|r| r.status().is_success())
    }

    /// Monolithic upload: `POST` opens a session, `PUT ?digest=` closes it with the bytes.
    fn upload(&self, repo: &str, bytes: &[u8]) -> Result<String, RegistryError> {
        let digest = sha256(bytes);
        if self.blob_exists(repo, &digest) {
            return Ok(digest);
        }
        let url = format!("{}/v2/{repo}/blobs/uploads/", self.base);
        let resp = self.send(self.client.post(&url).header("content-length", "0"), &url)?;
        let loc = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| http(&url, "upload session without a Location header"))?
            .to_string();
        let loc = if loc.starts_with('/') {
            format!("{}{loc}", self.base)
        } else {
            loc
        };
        let sep = if loc.contains('?') { '&' } else { '?' };
        let put = format!("{loc}{sep}digest={digest}");
        self.send(
            self.client
                .put(&put)
                .header("content-type", "application/octet-stream")
                .body(bytes.to_vec()),
            &url,
        )?;
        Ok(digest)
    }

    /// Pushes a component as a Wasm OCI artifact tagged `r.tag`, with `release` (signed or
    /// not) as its annotation. Returns the manifest digest.
    pub fn push(
        &self,
        r: &OciRef,
        release: &Release,
        blob: &[u8],
        exports: &[String],
        imports: &[String],
        description: &str,
    ) -> Result<String, RegistryError> {
        let tag = r
            .tag
            .as_deref()
            .ok_or_else(|| bad_ref(&r.to_string(), "publishing needs a tag"))?;
        let layer_digest = self.upload(&r.repo, blob)?;
        // `created` is fixed so the same component always makes the same manifest digest.
        let config = WasmConfig {
            created: "1970-01-01T00:00:00Z",
            architecture: "wasm",
            os: "wasip2",
            layer_digests: vec![&layer_digest],
            component: ComponentTypes { exports, imports },
        };
        let config_bytes = serde_json::to_vec(&config).expect("config serializes");
        let config_digest = self.upload(&r.repo, &config_bytes)?;
        let mut annotations = BTreeMap::new();
        annotations.insert(
            RELEASE_ANNOTATION.to_string(),
            serde_json::to_string(release).expect("release serializes"),
        );
        annotations.insert(
            "org.opencontainers.image.title".into(),
            release.name.to_string(),
        );
        annotations.insert(
            "org.opencontainers.image.version".into(),
            release.version.to_string(),
        );
        if !description.is_empty() {
            annotations.insert(
                "org.opencontainers.image.description".into(),
                description.into(),
            );
        }
        let manifest = ImageManifest {
            schema_version: 2,
            media_type: Some(MANIFEST_MEDIA_TYPE.into()),
            artifact_type: Some(LAYER_MEDIA_TYPE.into()),
            config: Descriptor {
                media_type: CONFIG_MEDIA_TYPE.into(),
                digest: config_digest,
                size: config_bytes.len() as u64,
            },
            layers: vec![Descriptor {
                media_type: LAYER_MEDIA_TYPE.into(),
                digest: layer_digest,
                size: blob.len() as u64,
            }],
            annotations,
        };
        let bytes = serde_json::to_vec(&manifest).expect("manifest serializes");
        let url = format!("{}/v2/{}/manifests/{tag}", self.base, r.repo);
        self.send(
            self.client
                .put(&url)
                .header("content-type", MANIFEST_MEDIA_TYPE)
                .body(bytes.clone()),
            &url,
        )?;
        Ok(sha256(&bytes))
    }
}

/// One pulled artifact as an installer source: it offers exactly its own release.
pub struct OciSource {
    client: OciClient,
    reference: OciRef,
    release: Release,
}

impl OciSource {
    pub fn new(client: OciClient, reference: OciRef, release: Release) -> Self {
        Self {
            client,
            reference,
            release,
        }
    }
}

impl Source for OciSource {
    fn releases(&self, name: &PackageName) -> Result<Vec<Release>, RegistryError> {
        if name == &self.release.name {
            Ok(vec![self.release.clone()])
        } else {
            Err(RegistryError::NoPackage(format!(
                "{name} (needed by {}, which came from {}; install it first)",
                self.release.name, self.reference
            )))
        }
    }

    fn open_blob(&self, r: &Release) -> Result<Box<dyn Read>, RegistryError> {
        Ok(Box::new(
            self.client.open_blob(&self.reference.repo, &r.digest)?,
        ))
    }

    fn describe(&self) -> String {
        self.reference.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_and_refuse() {
        let r = OciRef::parse("oci://127.0.0.1:5000/team/math-answer:0.1.0").unwrap();
        assert_eq!(
            (r.host.as_str(), r.repo.as_str(), r.tag.as_deref()),
            ("127.0.0.1:5000", "team/math-answer", Some("0.1.0"))
        );
        assert!(r.loopback());
        let d = format!("sha256:{}", "a".repeat(64));
        let r = OciRef::parse(&format!("oci://ghcr.io/org/p@{d}")).unwrap();
        assert_eq!((r.tag, r.digest.as_deref()), (None, Some(d.as_str())));
        assert!(!OciRef::parse("oci://ghcr.io/org/p").unwrap().loopback());
        assert_eq!(
            OciRef::parse("oci://h/p").unwrap().tag.as_deref(),
            Some("latest")
        );
        for bad in [
            "http://h/p:1",
            "oci://h",
            "oci://h/../etc:1",
            "oci://h/UPPER:1",
            "oci://h/p:bad tag",
            "oci://h/p@sha256:12",
            "oci://h/p:-x",
            "oci://h/a//b:1",
        ] {
            assert!(OciRef::parse(bad).is_err(), "{bad}");
        }
    }
}
