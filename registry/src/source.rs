//! Where releases and blobs come from: a folder, or an HTTP(S) server that serves the same
//! layout (`galley registry serve`, or any static file host). Installs trust neither: every
//! byte is checked against signed values downstream.

use crate::error::{RegistryError, io};
use crate::index::{PackageName, Release, YankRecord, parse_index};
use crate::store::FileRegistry;
use std::io::Read;
use std::time::Duration;

pub trait Source {
    /// Every release of `name`, yanked ones included.
    fn releases(&self, name: &PackageName) -> Result<Vec<Release>, RegistryError>;
    /// The release `name@version`, if listed.
    fn release(
        &self,
        name: &PackageName,
        version: &semver::Version,
    ) -> Result<Option<Release>, RegistryError> {
        Ok(self
            .releases(name)?
            .into_iter()
            .find(|r| &r.version == version))
    }
    /// A reader over the release's blob (unverified).
    fn open_blob(&self, r: &Release) -> Result<Box<dyn Read>, RegistryError>;
    /// For messages.
    fn describe(&self) -> String;
}

impl Source for FileRegistry {
    fn releases(&self, name: &PackageName) -> Result<Vec<Release>, RegistryError> {
        FileRegistry::releases(self, name)
    }

    fn open_blob(&self, r: &Release) -> Result<Box<dyn Read>, RegistryError> {
        let path = self.blob_path(r).ok_or_else(|| {
            RegistryError::Unsatisfiable(format!("{}@{}: malformed digest", r.name, r.version))
        })?;
        Ok(Box::new(
            std::fs::File::open(&path).map_err(|e| io(&path, e))?,
        ))
    }

    fn describe(&self) -> String {
        self.root().display().to_string()
    }
}

/// A registry over HTTP: `GET {base}/index/NS/NAME.jsonl`, `GET {base}/blobs/sha256/HEX.wasm`.
pub struct HttpRegistry {
    base: String,
    client: reqwest::blocking::Client,
    /// The largest index file accepted.
    pub max_index: u64,
}

/// The most of a search answer or an API reply read (an index has `max_index`, a blob its
/// signed size): a hostile server's endless answer ends here, not in memory.
pub const MAX_REPLY: u64 = 4 << 20;

/// Reads at most `cap` bytes of a response as text; more is an error naming the URL.
fn capped_text(
    resp: reqwest::blocking::Response,
    cap: u64,
    url: &str,
) -> Result<String, RegistryError> {
    let mut bytes = Vec::new();
    resp.take(cap + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| RegistryError::Http {
            url: url.into(),
            reason: e.to_string(),
        })?;
    if bytes.len() as u64 > cap {
        return Err(RegistryError::Http {
            url: url.into(),
            reason: format!("the answer is larger than {cap} bytes; refusing the rest"),
        });
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

impl HttpRegistry {
    pub fn new(base: &str) -> Result<Self, RegistryError> {
        let client = reqwest::blocking::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            // A server that stops sending (an endless or stalled response) fails here.
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| RegistryError::Http {
                url: base.into(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            base: base.trim_end_matches('/').to_string(),
            client,
            max_index: 8 << 20,
        })
    }

    fn get(&self, path: &str) -> Result<Option<reqwest::blocking::Response>, RegistryError> {
        let url = format!("{}/{path}", self.base);
        let resp = self
            .client
            .get(&url)
            .send()
            .map_err(|e| RegistryError::Http {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        match resp.status() {
            s if s.is_success() => Ok(Some(resp)),
            reqwest::StatusCode::NOT_FOUND => Ok(None),
            s => Err(RegistryError::Http {
                url,
                reason: format!("status {s}"),
            }),
        }
    }
}

impl Source for HttpRegistry {
    fn releases(&self, name: &PackageName) -> Result<Vec<Release>, RegistryError> {
        let path = name.index_path();
        let rel = path.to_string_lossy().replace('\\', "/");
        let Some(resp) = self.get(&rel)? else {
            return Err(RegistryError::NoPackage(name.to_string()));
        };
        let mut text = String::new();
        resp.take(self.max_index + 1)
            .read_to_string(&mut text)
            .map_err(|e| RegistryError::Http {
                url: format!("{}/{rel}", self.base),
                reason: e.to_string(),
            })?;
        if text.len() as u64 > self.max_index {
            return Err(RegistryError::Http {
                url: format!("{}/{rel}", self.base),
                reason: format!("index larger than {} bytes", self.max_index),
            });
        }
        parse_index(
            &text,
            std::path::Path::new(&format!("{}/{rel}", self.base)),
            name,
        )
    }

    fn open_blob(&self, r: &Release) -> Result<Box<dyn Read>, RegistryError> {
        let hex = r.digest_hex().ok_or_else(|| {
            RegistryError::Unsatisfiable(format!("{}@{}: malformed digest", r.name, r.version))
        })?;
        let path = format!("blobs/sha256/{hex}.wasm");
        match self.get(&path)? {
            Some(resp) => Ok(Box::new(resp)),
            None => Err(RegistryError::Http {
                url: format!("{}/{path}", self.base),
                reason: "blob not found".into(),
            }),
        }
    }

    fn describe(&self) -> String {
        self.base.clone()
    }
}

impl HttpRegistry {
    fn post(
        &self,
        path: &str,
        token: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> Result<String, RegistryError> {
        let url = format!("{}/{path}", self.base);
        let mut req = self.client.post(&url).bearer_auth(token).body(body);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let resp = req.send().map_err(|e| RegistryError::Http {
            url: url.clone(),
            reason: e.to_string(),
        })?;
        let status = resp.status();
        let text = capped_text(resp, MAX_REPLY, &url).unwrap_or_default();
        if status.is_success() {
            Ok(text)
        } else {
            Err(RegistryError::Http {
                url,
                reason: format!("{status}: {}", galley_core::text::untrusted(&text, 512)),
            })
        }
    }

    /// Publishes a (signed) release and its blob through `galley registry serve`.
    pub fn publish(
        &self,
        release: &Release,
        blob: &[u8],
        token: &str,
    ) -> Result<(), RegistryError> {
        let line = serde_json::to_string(release).expect("release serializes");
        self.post(
            "api/v1/publish",
            token,
            &[("x-galley-release", line)],
            blob.to_vec(),
        )
        .map(|_| ())
    }

    pub fn set_yanked(
        &self,
        name: &PackageName,
        version: &semver::Version,
        yanked: bool,
        record: Option<&YankRecord>,
        token: &str,
    ) -> Result<(), RegistryError> {
        let body = serde_json::json!({"name": name.to_string(), "version": version.to_string(), "yanked": yanked, "record": record}).to_string();
        self.post(
            "api/v1/yank",
            token,
            &[("content-type", "application/json".into())],
            body.into_bytes(),
        )
        .map(|_| ())
    }

    /// `(name, kind, live versions)` of packages whose name contains `term`.
    pub fn search(&self, term: &str) -> Result<Vec<(String, String, Vec<String>)>, RegistryError> {
        let url = format!("{}/api/v1/search", self.base);
        let resp = self
            .client
            .get(&url)
            .query(&[("q", term)])
            .send()
            .map_err(|e| RegistryError::Http {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        if !resp.status().is_success() {
            return Err(RegistryError::Http {
                url,
                reason: format!("status {}", resp.status()),
            });
        }
        let body = capped_text(resp, MAX_REPLY, &url)?;
        let v: Vec<serde_json::Value> =
            serde_json::from_str(&body).map_err(|e| RegistryError::Http {
                url,
                reason: e.to_string(),
            })?;
        Ok(v.into_iter()
            .map(|p| {
                let versions = p["versions"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default();
                (
                    p["name"].as_str().unwrap_or("").to_string(),
                    p["kind"].as_str().unwrap_or("").to_string(),
                    versions,
                )
            })
            .collect())
    }
}

/// A registry held in memory, laid out as a folder registry (`index/NS/NAME.jsonl`,
/// `blobs/sha256/HEX.wasm`): the first-party registry compiled into the galley binary.
/// Its contents get no more trust than any other source's: every release is still checked
/// against its signature and every blob against its digest.
pub struct StaticRegistry {
    pub label: String,
    pub files: Vec<(String, &'static [u8])>,
}

impl StaticRegistry {
    fn file(&self, path: &str) -> Option<&'static [u8]> {
        self.files.iter().find(|(p, _)| p == path).map(|(_, b)| *b)
    }

    /// Package names, optionally filtered by a substring.
    pub fn search(&self, term: &str) -> Vec<PackageName> {
        let mut out: Vec<PackageName> = self
            .files
            .iter()
            .filter_map(|(p, _)| {
                p.strip_prefix("index/")?
                    .strip_suffix(".jsonl")
                    .map(String::from)
            })
            .filter_map(|n| PackageName::parse(&n).ok())
            .filter(|n| n.to_string().contains(term))
            .collect();
        out.sort();
        out
    }
}

impl Source for StaticRegistry {
    fn releases(&self, name: &PackageName) -> Result<Vec<Release>, RegistryError> {
        let path = name.index_path().to_string_lossy().replace('\\', "/");
        let bytes = self
            .file(&path)
            .ok_or_else(|| RegistryError::NoPackage(name.to_string()))?;
        let text = std::str::from_utf8(bytes).map_err(|e| io(std::path::Path::new(&path), e))?;
        parse_index(
            text,
            std::path::Path::new(&format!("{}/{path}", self.label)),
            name,
        )
    }

    fn open_blob(&self, r: &Release) -> Result<Box<dyn Read>, RegistryError> {
        let hex = r.digest_hex().ok_or_else(|| {
            RegistryError::Unsatisfiable(format!("{}@{}: malformed digest", r.name, r.version))
        })?;
        let path = format!("blobs/sha256/{hex}.wasm");
        let bytes = self.file(&path).ok_or_else(|| {
            io(
                std::path::Path::new(&format!("{}/{path}", self.label)),
                "blob not found",
            )
        })?;
        Ok(Box::new(bytes))
    }

    fn describe(&self) -> String {
        self.label.clone()
    }
}
