//! A registry in a folder: `index/NS/NAME.jsonl` and `blobs/sha256/HEX.wasm`. The same layout
//! can be served by any static file host. Writers hold an OS lock on a per-package lock file
//! so concurrent publishes never interleave lines (the OS drops it when a writer dies, so a
//! crash never leaves a package locked), and replace index files by rename so readers never
//! see a torn file. A blob is written only once its release is known to be new, so refused
//! publishes leave nothing behind.

use crate::error::{RegistryError, io};
use crate::index::{PackageName, Release, YankRecord, parse_index};
use std::path::{Path, PathBuf};

pub struct FileRegistry {
    root: PathBuf,
}

impl FileRegistry {
    pub fn open(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Every release of `name`, yanked ones included.
    pub fn releases(&self, name: &PackageName) -> Result<Vec<Release>, RegistryError> {
        let path = self.root.join(name.index_path());
        match std::fs::read_to_string(&path) {
            Ok(text) => parse_index(&text, &path, name),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(RegistryError::NoPackage(name.to_string()))
            }
            Err(e) => Err(io(&path, e)),
        }
    }

    /// Package names, optionally filtered by a substring.
    pub fn search(&self, term: &str) -> Result<Vec<PackageName>, RegistryError> {
        let index = self.root.join("index");
        let mut out = Vec::new();
        let Ok(namespaces) = std::fs::read_dir(&index) else {
            return Ok(out);
        };
        for ns in namespaces.flatten() {
            let Ok(files) = std::fs::read_dir(ns.path()) else {
                continue;
            };
            for f in files.flatten() {
                let file = f.file_name().to_string_lossy().into_owned();
                let Some(stem) = file.strip_suffix(".jsonl") else {
                    continue;
                };
                if let Ok(name) =
                    PackageName::parse(&format!("{}/{stem}", ns.file_name().to_string_lossy()))
                    && name.to_string().contains(term)
                {
                    out.push(name);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Where the blob of a release lives; `None` when its digest is not a clean sha256.
    pub fn blob_path(&self, r: &Release) -> Option<PathBuf> {
        r.digest_hex()
            .map(|hex| self.root.join("blobs/sha256").join(format!("{hex}.wasm")))
    }

    /// Adds a signed (or unsigned) release and its blob. The blob must hash to the digest.
    pub fn publish(&self, release: &Release, blob: &[u8]) -> Result<(), RegistryError> {
        let digest = format!(
            "sha256:{}",
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(blob))
        );
        if digest != release.digest || blob.len() as u64 != release.size {
            return Err(RegistryError::DigestMismatch {
                name: release.name.to_string(),
                version: release.version.to_string(),
                expected: release.digest.clone(),
                found: digest,
            });
        }
        let blob_path = self.blob_path(release).expect("digest computed above");
        self.edit_index(&release.name, |releases| {
            if releases.iter().any(|r| r.version == release.version) {
                return Err(RegistryError::AlreadyPublished {
                    name: release.name.to_string(),
                    version: release.version.to_string(),
                });
            }
            // Under the package's lock, before the index names it: a reader never sees a
            // release without its blob, and a refused publish writes no blob.
            write_atomic(&blob_path, blob)?;
            releases.push(release.clone());
            Ok(())
        })
    }

    /// Marks a version yanked (or not): new resolutions skip it, locked installs still work.
    /// `record` is the publisher's signed statement of it, which installers require for a
    /// signed release (the flag alone is for unsigned ones).
    pub fn set_yanked(
        &self,
        name: &PackageName,
        version: &semver::Version,
        yanked: bool,
        record: Option<YankRecord>,
    ) -> Result<(), RegistryError> {
        if record.as_ref().is_some_and(|y| y.yanked != yanked) {
            return Err(RegistryError::Unsatisfiable(format!(
                "{name}@{version}: the yank record says the opposite of the request"
            )));
        }
        self.edit_index(name, |releases| {
            let r = releases
                .iter_mut()
                .find(|r| &r.version == version)
                .ok_or_else(|| {
                    RegistryError::Unsatisfiable(format!("{name} has no version {version}"))
                })?;
            if let Some(y) = &record
                && y.seq < r.next_yank_seq()
            {
                return Err(RegistryError::Unsatisfiable(format!(
                    "{name}@{version}: yank record {} is older than the one the index holds",
                    y.seq
                )));
            }
            r.yanked = yanked;
            if record.is_some() {
                r.yank = record;
            }
            Ok(())
        })
    }

    fn edit_index(
        &self,
        name: &PackageName,
        f: impl FnOnce(&mut Vec<Release>) -> Result<(), RegistryError>,
    ) -> Result<(), RegistryError> {
        let path = self.root.join(name.index_path());
        let dir = path.parent().expect("index path has a parent");
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let _lock = Lock::take(&path.with_extension("lock"))?;
        let mut releases = match self.releases(name) {
            Ok(r) => r,
            Err(RegistryError::NoPackage(_)) => Vec::new(),
            Err(e) => return Err(e),
        };
        f(&mut releases)?;
        let text: String = releases
            .iter()
            .map(|r| {
                format!(
                    "{}\n",
                    serde_json::to_string(r).expect("release serializes")
                )
            })
            .collect();
        write_atomic(&path, text.as_bytes())
    }
}

/// An exclusive OS lock (`flock`) on a lock file, held while this value lives. The file
/// stays; the lock goes with the process, so a crashed writer leaves nothing stale behind
/// (the lock files of older galleys, made with `create_new`, are simply reused).
struct Lock {
    _held: std::fs::File,
}

impl Lock {
    fn take(path: &Path) -> Result<Self, RegistryError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| io(path, e))?;
        for _ in 0..500 {
            match file.try_lock() {
                Ok(()) => return Ok(Self { _held: file }),
                Err(std::fs::TryLockError::WouldBlock) => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(io(path, e)),
            }
        }
        Err(io(
            path,
            "another publish to this package has held its lock for 5 s; try again",
        ))
    }
}

pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RegistryError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    }
    let tmp = path.with_extension(
        format!(
            "tmp{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        )
        .replace(['(', ')'], ""),
    );
    std::fs::write(&tmp, bytes).map_err(|e| io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io(path, e))
}
