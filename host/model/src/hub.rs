//! `hf://ORG/NAME[/FILE.gguf][@REVISION]`: a model from the Hugging Face Hub's HTTP API,
//! downloaded once into a local cache (`CACHE/ORG--NAME/REVISION-SHA/FILE`) and read from
//! there afterwards. The revision is resolved to a commit first, so a moving branch never
//! mixes files of two commits; files the Hub stores in LFS are checked against their
//! SHA-256 while they stream. `HF_ENDPOINT` picks another endpoint (tests use a loopback
//! server); `HF_TOKEN` is sent as a bearer token when set.

use crate::error::{ModelError, Result};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub struct HubRef {
    pub repo: String,
    pub file: Option<String>,
    pub revision: String,
}

fn err(msg: impl std::fmt::Display) -> ModelError {
    ModelError::Download(msg.to_string())
}

fn safe_part(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

impl HubRef {
    pub fn parse(spec: &str) -> Result<Self> {
        let rest = spec
            .strip_prefix("hf://")
            .ok_or_else(|| err(format!("`{spec}` is not an hf:// model")))?;
        let (path, revision) = match rest.split_once('@') {
            Some((p, r)) => (p, r.to_string()),
            None => (rest, "main".to_string()),
        };
        let parts: Vec<&str> = path.split('/').collect();
        let (repo, file) = match parts.as_slice() {
            [org, name] => (format!("{org}/{name}"), None),
            [org, name, file] if file.ends_with(".gguf") => {
                (format!("{org}/{name}"), Some(file.to_string()))
            }
            _ => {
                return Err(err(format!(
                    "`{spec}`: expected hf://ORG/NAME[/FILE.gguf][@REVISION]"
                )));
            }
        };
        let ok = parts.iter().all(|p| safe_part(p)) && safe_part(&revision);
        if !ok {
            return Err(err(format!(
                "`{spec}`: names may hold only letters, digits, '-', '_' and '.'"
            )));
        }
        Ok(Self {
            repo,
            file,
            revision,
        })
    }
}

#[derive(Deserialize)]
struct RepoInfo {
    sha: String,
    siblings: Vec<Sibling>,
}

#[derive(Deserialize)]
struct Sibling {
    rfilename: String,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    lfs: Option<Lfs>,
}

#[derive(Deserialize)]
struct Lfs {
    sha256: String,
}

/// The files a checkpoint folder needs (besides safetensors shards).
const SIDE_FILES: &[&str] = &[
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
    "special_tokens_map.json",
];

/// What a `--model` flag or a `model:` key names, as a local path: `hf://...` is fetched
/// into the model cache on first use; anything else is a file or folder, relative to `base`
/// (the folder of the config that names it, or the current folder for a flag).
pub fn resolve(spec: &str, base: &Path) -> Result<PathBuf> {
    if spec.starts_with("hf://") {
        let r = HubRef::parse(spec)?;
        return fetch(&r, &default_cache());
    }
    Ok(base.join(spec))
}

/// Where `hf://` downloads go (`galley_core::dirs` decides).
pub fn default_cache() -> PathBuf {
    galley_core::dirs::models_dir()
}

/// Downloads (or finds in `cache`) what `r` names; returns the local folder or GGUF file.
pub fn fetch(r: &HubRef, cache: &Path) -> Result<PathBuf> {
    let endpoint = std::env::var("HF_ENDPOINT").unwrap_or_else(|_| "https://huggingface.co".into());
    let endpoint = endpoint.trim_end_matches('/');
    let client = reqwest::blocking::Client::builder()
        .connect_timeout(Duration::from_secs(15))
        .timeout(Duration::from_secs(3600))
        .build()
        .map_err(err)?;
    let send = |url: &str| {
        let mut req = client.get(url);
        if let Ok(t) = std::env::var("HF_TOKEN") {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    let check =
        |url: &str, resp: reqwest::blocking::Response| -> Result<reqwest::blocking::Response> {
            match resp.status() {
                s if s.is_success() => Ok(resp),
                s => Err(err(format!(
                    "{url}: status {s}{}",
                    if s.as_u16() == 401 {
                        " (set HF_TOKEN for gated or private models)"
                    } else {
                        ""
                    }
                ))),
            }
        };
    let info_url = format!(
        "{endpoint}/api/models/{}/revision/{}?blobs=true",
        r.repo, r.revision
    );
    let repo_dir = cache.join(r.repo.replace('/', "--"));
    let ref_file = repo_dir.join("refs").join(&r.revision);
    let resp = match send(&info_url) {
        Ok(resp) => check(&info_url, resp)?,
        // Unreachable: a revision fetched completely before is used from the cache.
        Err(e) => match cached(&repo_dir, &ref_file, r) {
            Some(done) => {
                tracing::info!("{info_url}: {e}; using the cached download");
                return Ok(done);
            }
            None => return Err(err(format!("{info_url}: {e}"))),
        },
    };
    let mut body = String::new();
    resp.take(16 << 20)
        .read_to_string(&mut body)
        .map_err(|e| err(format!("{info_url}: {e}")))?;
    let info: RepoInfo = serde_json::from_str(&body)
        .map_err(|e| err(format!("{info_url}: not a model description: {e}")))?;
    if !safe_part(&info.sha) {
        return Err(err(format!("{info_url}: odd commit id `{}`", info.sha)));
    }
    let wanted: Vec<&Sibling> = match &r.file {
        Some(f) => vec![
            info.siblings
                .iter()
                .find(|s| &s.rfilename == f)
                .ok_or_else(|| err(format!("hf://{}: no file {f} at {}", r.repo, r.revision)))?,
        ],
        None => {
            let has_index = info
                .siblings
                .iter()
                .any(|s| s.rfilename == "model.safetensors.index.json");
            let picked: Vec<&Sibling> = info
                .siblings
                .iter()
                .filter(|s| {
                    SIDE_FILES.contains(&s.rfilename.as_str())
                        || s.rfilename.ends_with(".safetensors")
                            && (has_index || s.rfilename == "model.safetensors")
                        || s.rfilename == "model.safetensors.index.json"
                })
                .collect();
            if !picked.iter().any(|s| s.rfilename == "config.json") {
                return Err(err(format!(
                    "hf://{}@{}: no config.json (for a GGUF repository, name the file: hf://{}/FILE.gguf)",
                    r.repo, r.revision, r.repo
                )));
            }
            picked
        }
    };
    let dir = repo_dir.join(&info.sha);
    std::fs::create_dir_all(&dir).map_err(|e| err(format!("{}: {e}", dir.display())))?;
    for s in &wanted {
        if !s.rfilename.split('/').all(safe_part) || s.rfilename.contains('/') {
            return Err(err(format!(
                "hf://{}: refusing file name `{}`",
                r.repo, s.rfilename
            )));
        }
        let dest = dir.join(&s.rfilename);
        if dest.exists() {
            continue;
        }
        let url = format!("{endpoint}/{}/resolve/{}/{}", r.repo, info.sha, s.rfilename);
        tracing::info!("downloading {url}");
        let mut resp = check(&url, send(&url).map_err(|e| err(format!("{url}: {e}")))?)?;
        let tmp = dest.with_extension("part");
        let mut file =
            std::fs::File::create(&tmp).map_err(|e| err(format!("{}: {e}", tmp.display())))?;
        let mut hasher = Sha256::new();
        let mut n = 0u64;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let k = resp
                .read(&mut buf)
                .map_err(|e| err(format!("{url}: {e}")))?;
            if k == 0 {
                break;
            }
            hasher.update(&buf[..k]);
            file.write_all(&buf[..k])
                .map_err(|e| err(format!("{}: {e}", tmp.display())))?;
            n += k as u64;
        }
        drop(file);
        let fail = |why: String| {
            let _ = std::fs::remove_file(&tmp);
            err(format!("{url}: {why}"))
        };
        if let Some(size) = s.size
            && size != n
        {
            return Err(fail(format!("got {n} bytes, the Hub says {size}")));
        }
        if let Some(lfs) = &s.lfs {
            let got = hex::encode(hasher.finalize());
            if got != lfs.sha256 {
                return Err(fail(format!(
                    "SHA-256 is {got}, the Hub says {}",
                    lfs.sha256
                )));
            }
        }
        std::fs::rename(&tmp, &dest).map_err(|e| err(format!("{}: {e}", dest.display())))?;
    }
    // Written last: a ref exists only for a complete download.
    std::fs::create_dir_all(ref_file.parent().expect("refs dir")).map_err(err)?;
    std::fs::write(&ref_file, &info.sha)
        .map_err(|e| err(format!("{}: {e}", ref_file.display())))?;
    Ok(match &r.file {
        Some(f) => dir.join(f),
        None => dir,
    })
}

/// A complete earlier download of `r`, if there is one.
fn cached(repo_dir: &Path, ref_file: &Path, r: &HubRef) -> Option<PathBuf> {
    let sha = std::fs::read_to_string(ref_file).ok()?;
    if !safe_part(sha.trim()) {
        return None;
    }
    let dir = repo_dir.join(sha.trim());
    let target = match &r.file {
        Some(f) => dir.join(f),
        None => dir.join("config.json"),
    };
    target.exists().then(|| match &r.file {
        Some(f) => dir.join(f),
        None => dir,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        assert_eq!(
            HubRef::parse("hf://org/model").unwrap(),
            HubRef {
                repo: "org/model".into(),
                file: None,
                revision: "main".into()
            }
        );
        let r = HubRef::parse("hf://org/model-GGUF/m.Q4_1.gguf@v1.0").unwrap();
        assert_eq!(
            (r.file.as_deref(), r.revision.as_str()),
            (Some("m.Q4_1.gguf"), "v1.0")
        );
        for bad in [
            "hf://org",
            "hf://org/../x",
            "hf://org/m/x.bin",
            "hf://org/m@a/b",
            "http://org/m",
        ] {
            assert!(HubRef::parse(bad).is_err(), "{bad}");
        }
    }
}
