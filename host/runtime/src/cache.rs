//! The compiled-component cache. Compiling a component is the slow part of loading a plugin
//! (tens of milliseconds for Rust, ~10 s for a Python component); loading native code from
//! disk takes about a millisecond. Entries are keyed by the component's SHA-256 *and* a hash of
//! the engine's settings and wasmtime version, so a changed engine never loads stale code.
//!
//! Trust: an entry is native code that wasmtime maps and runs without re-validation, so
//! nothing read from the folder is believed until checked.
//! - Every entry (`HEX-ENGINE.cwasm`) has a tag file beside it (`HEX-ENGINE.tag`): a keyed
//!   BLAKE3 MAC over the engine key, the component's digest and the compiled bytes, plus a
//!   seal binding that tag to the file's inode and change time (so an unchanged entry is not
//!   hashed again on every load: see `seal`), both made with a 32-byte secret only this user
//!   can read (`cache.key` in galley's *config* folder, not in the cache: a restored CI cache
//!   or a shared volume brings entries, never the key). An entry whose tag fails (tampered, copied over another plugin's entry, made on another
//!   machine or by an older galley) is deleted and recompiled, with one warning.
//! - The folder is made 0700; a folder (or key) that another user owns or that others can
//!   write is refused, and galley compiles in memory instead, with one warning saying why.
//!   That is what makes checking the file and then letting wasmtime map it sound: between
//!   the two, only a process running as this user could swap it, and such a process can
//!   change galley's memory anyway.
//! - Entries and the key are opened without following symlinks and without blocking (a FIFO
//!   planted under an entry's name is refused, not waited on), and must be regular files
//!   owned by this user. New entries are written to a fresh file (`O_EXCL`, 0600) and
//!   renamed into place, so a crash never leaves a torn entry and a planted symlink is
//!   replaced, not written through.
//!
//! Keyed BLAKE3 rather than HMAC-SHA-256: both are MACs, and BLAKE3 is built for SIMD, which
//! counts when a whole artifact is hashed (a new, restored or copied entry: ~0.7 MB for a Rust
//! plugin, ~35 MB for a Python one). The two were not measured against each other here.

use sha2::{Digest, Sha256};
use std::fs::{File, Metadata, OpenOptions};
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

/// First bytes of a tag file; the number is the format's version.
const MAGIC: &[u8; 8] = b"GLYCTAG2";
/// A tag file: MAGIC, the content tag, then the seal (see `ComponentCache::seal`).
const TAG_FILE_LEN: usize = 8 + 2 * TAG_LEN;
const TAG_LEN: usize = 32;
/// The largest entry read back (a compiled Python component is ~35 MB).
const MAX_ENTRY: u64 = 1 << 30;
/// Domain separation: this key tags nothing else.
const CONTEXT: &[u8] = b"galley compiled-component cache v1\0";

pub(crate) struct ComponentCache {
    dir: PathBuf,
    engine_key: String,
    key: [u8; 32],
    /// The size bound (`cache_gc`); `None`: unbounded.
    limit: Option<u64>,
}

/// Where the cache is, unless the caller says otherwise (`galley_core::dirs` decides).
pub fn default_cache_dir() -> Option<PathBuf> {
    Some(galley_core::dirs::components_dir())
}

/// Where the cache's secret key is, unless the caller says otherwise.
pub fn default_cache_key() -> PathBuf {
    galley_core::dirs::cache_key_file()
}

/// Feeds std's `Hash` into SHA-256, so the engine key is stable across runs (std's default
/// hasher is randomly keyed).
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn finish(&self) -> u64 {
        unreachable!("only the full digest is used")
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// Whether the last `load` hit the cache; the benchmark and `--json` output report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    Hit,
    Miss,
    Disabled,
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Refuses what another user owns or what others may write (`also_unreadable`: or read).
fn check_owner(meta: &Metadata, path: &Path, also_unreadable: bool) -> Result<(), String> {
    let me = euid();
    if meta.uid() != me {
        return Err(format!(
            "{} belongs to uid {}, not to this user (uid {me})",
            path.display(),
            meta.uid()
        ));
    }
    let mode = meta.mode() & 0o777;
    let forbidden = if also_unreadable { 0o077 } else { 0o022 };
    if mode & forbidden != 0 {
        return Err(format!(
            "{} has mode {mode:o}: others may {} it (chmod go-rwx fixes it)",
            path.display(),
            if also_unreadable {
                "read or write"
            } else {
                "write"
            }
        ));
    }
    Ok(())
}

/// Opens a file for reading without following a symlink and without blocking on a FIFO.
pub(crate) fn open_nofollow(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
}

/// Opens a regular file of this user's of at most `max` bytes; `Ok(None)` when there is none.
fn open_private(path: &Path, max: u64, secret: bool) -> Result<Option<(File, Metadata)>, String> {
    let file = match open_nofollow(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(format!("{} is a symbolic link", path.display()));
        }
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let meta = file
        .metadata()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    check_owner(&meta, path, secret)?;
    if meta.len() > max {
        return Err(format!(
            "{} is {} bytes, more than the {max} allowed",
            path.display(),
            meta.len()
        ));
    }
    Ok(Some((file, meta)))
}

/// Reads a regular file of this user's, at most `max` bytes; `Ok(None)` when there is none.
fn read_private(path: &Path, max: u64, secret: bool) -> Result<Option<Vec<u8>>, String> {
    let Some((file, meta)) = open_private(path, max, secret)? else {
        return Ok(None);
    };
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Some(bytes))
}

/// Makes `dir` (0700 if new) and checks that it is a real folder of this user's that no one
/// else can write.
fn private_dir(dir: &Path) -> Result<(), String> {
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("{}: {e}", dir.display())),
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if meta.file_type().is_symlink() {
        return Err(format!("{} is a symbolic link", dir.display()));
    }
    if !meta.is_dir() {
        return Err(format!("{} is not a folder", dir.display()));
    }
    check_owner(&meta, dir, false)
}

/// Writes `parts` to a fresh file beside `path` (never an existing one, never through a
/// symlink) and renames it into place.
fn write_new(path: &Path, parts: &[&[u8]]) -> std::io::Result<()> {
    let mut nonce = [0u8; 8];
    getrandom::fill(&mut nonce).map_err(|e| std::io::Error::other(e.to_string()))?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.{}", hex::encode(nonce)));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        for p in parts {
            f.write_all(p)?;
        }
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// This user's cache secret: read, or made on first use (32 random bytes, 0600).
fn secret(path: &Path) -> Result<[u8; 32], String> {
    for _ in 0..2 {
        if let Some(bytes) = read_private(path, 64, true)? {
            return <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
                format!(
                    "{} is not a cache key (32 bytes); delete it to make a new one",
                    path.display()
                )
            });
        }
        if let Some(parent) = path.parent() {
            private_dir(parent)?;
        }
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(|e| format!("no randomness for a cache key: {e}"))?;
        match write_new(path, &[&key]) {
            Ok(()) => return Ok(key),
            // Another galley made it at the same moment: read theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
    }
    Err(format!("{}: cannot be read or made", path.display()))
}

impl ComponentCache {
    /// Opens the cache in `dir` with the secret in `key_file`. A folder or key galley must
    /// not trust is refused with one warning, and `None` means: compile in memory.
    pub(crate) fn open(
        dir: &Path,
        key_file: &Path,
        limit: Option<u64>,
        engine: &Engine,
    ) -> Option<Self> {
        let checked = private_dir(dir).and_then(|()| secret(key_file));
        let key = match checked {
            Ok(k) => k,
            Err(why) => {
                tracing::warn!(
                    "not using the compiled-component cache: {why}; plugins are compiled in memory on every load"
                );
                return None;
            }
        };
        let mut h = ShaHasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut h);
        let engine_key = hex::encode(&h.0.finalize()[..8]);
        Some(Self {
            dir: dir.to_path_buf(),
            engine_key,
            key,
            limit,
        })
    }

    /// What the folder holds.
    pub(crate) fn usage(&self) -> std::io::Result<crate::cache_gc::CacheUsage> {
        crate::cache_gc::usage(&self.dir, &self.engine_key, self.limit)
    }

    /// `galley cache prune`: to `limit` (else the configured bound), with other builds'
    /// entries and leftovers removed.
    pub(crate) fn prune(&self, limit: Option<u64>) -> std::io::Result<crate::cache_gc::Pruned> {
        crate::cache_gc::prune(&self.dir, &self.engine_key, limit.or(self.limit))
    }

    fn path_for(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir.join(format!("{hex}-{}.cwasm", self.engine_key))
    }

    fn hasher(&self, digest: &str) -> blake3::Hasher {
        let mut h = blake3::Hasher::new_keyed(&self.key);
        h.update(CONTEXT);
        h.update(self.engine_key.as_bytes());
        h.update(b"\0");
        h.update(digest.as_bytes());
        h.update(b"\0");
        h
    }

    /// The seal of an entry: its content tag bound to the file's identity as the kernel
    /// reports it (device, inode, size, change time to the nanosecond). Any write to the file,
    /// or a new file put in its place, changes the change time or the inode, and only this
    /// user's secret makes a seal; so a matching seal proves the file is the one whose bytes
    /// were hashed, and the load can skip hashing them again (as git trusts its index's stat
    /// data). A restored or copied cache has new inodes: its entries are hashed in full once.
    fn seal(&self, digest: &str, content: &[u8; TAG_LEN], meta: &Metadata) -> blake3::Hash {
        let mut h = self.hasher(digest);
        h.update(b"seal\0");
        h.update(content);
        for v in [
            meta.dev(),
            meta.ino(),
            meta.size(),
            meta.ctime() as u64,
            meta.ctime_nsec() as u64,
        ] {
            h.update(&v.to_le_bytes());
        }
        h.finalize()
    }

    /// Writes the tag file of the entry at `path`: its content tag and its current seal.
    fn write_tag(&self, path: &Path, digest: &str, content: &[u8; TAG_LEN]) -> std::io::Result<()> {
        let meta = open_nofollow(path)?.metadata()?;
        let seal = self.seal(digest, content, &meta);
        write_new(
            &path.with_extension("tag"),
            &[MAGIC, content, seal.as_bytes()],
        )
    }

    /// Whether the entry at `path` is there (`Ok(false)`: no entry) and authentic: its seal
    /// matches the file as it is now, or else its bytes, streamed through the hash, match its
    /// content tag (and the seal is renewed).
    fn verify(&self, path: &Path, digest: &str) -> Result<bool, String> {
        let Some((mut file, meta)) = open_private(path, MAX_ENTRY, false)? else {
            return Ok(false);
        };
        let tag = read_private(&path.with_extension("tag"), 128, false)?
            .filter(|t| t.len() == TAG_FILE_LEN && t.starts_with(MAGIC))
            .ok_or("it has no valid tag file (made by an older galley, or put there by hand)")?;
        let content: [u8; TAG_LEN] = tag[MAGIC.len()..][..TAG_LEN].try_into().expect("32 bytes");
        let sealed: [u8; TAG_LEN] = tag[MAGIC.len() + TAG_LEN..].try_into().expect("32 bytes");
        // blake3::Hash compares in constant time.
        if self.seal(digest, &content, &meta) == blake3::Hash::from_bytes(sealed) {
            return Ok(true);
        }
        let mut h = self.hasher(digest);
        let mut chunk = vec![0u8; 256 << 10];
        loop {
            let n = file
                .read(&mut chunk)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            if n == 0 {
                break;
            }
            h.update(&chunk[..n]);
        }
        if h.finalize() != blake3::Hash::from_bytes(content) {
            return Err(
                "its tag does not verify (tampered with, copied from another component, or made with another key)"
                    .into(),
            );
        }
        if let Err(e) = self.write_tag(path, digest, &content) {
            tracing::debug!("cannot renew the seal of {}: {e}", path.display());
        }
        Ok(true)
    }

    /// The compiled component for `bytes` (whose digest is `digest`), from the cache when an
    /// authentic entry is there, else compiled and stored.
    pub(crate) fn load(
        &self,
        engine: &Engine,
        bytes: &[u8],
        digest: &str,
    ) -> Result<(Component, CacheOutcome), wasmtime::Error> {
        let path = self.path_for(digest);
        match self.verify(&path, digest) {
            Ok(true) => {
                // SAFETY: the file carries a valid tag under this user's secret, which binds it
                // to this engine's settings and to this component's digest: it is what
                // `precompile_component` produced for this component here. It was opened
                // without following links, is this user's, and lies in a folder no one else
                // can write (checked when the cache was opened), so what wasmtime maps now is
                // what was checked.
                match unsafe { Component::deserialize_file(engine, &path) } {
                    Ok(c) => {
                        crate::cache_gc::touch(&path.with_extension("tag"));
                        return Ok((c, CacheOutcome::Hit));
                    }
                    Err(e) => tracing::warn!(
                        "compiled-component cache: {} did not load ({e}); compiling again",
                        path.display()
                    ),
                }
            }
            Ok(false) => {}
            Err(why) => {
                tracing::warn!(
                    "compiled-component cache: discarding {}: {why}; compiling again",
                    path.display()
                );
                let _ = std::fs::remove_file(&path);
                let _ = std::fs::remove_file(path.with_extension("tag"));
            }
        }
        let compiled = engine.precompile_component(bytes)?;
        let mut h = self.hasher(digest);
        h.update(&compiled);
        let content = *h.finalize().as_bytes();
        // The entry first, then its tag: a crash in between leaves an entry without a tag,
        // which the next load discards.
        let written =
            write_new(&path, &[&compiled]).and_then(|()| self.write_tag(&path, digest, &content));
        if let Err(e) = written {
            tracing::warn!("cannot write cache entry {}: {e}", path.display());
        } else if self.limit.is_some() {
            match crate::cache_gc::evict(
                &self.dir,
                &self.engine_key,
                self.limit,
                Some(&path),
                false,
            ) {
                Ok(p) if p.removed > 0 => tracing::info!(
                    "compiled-component cache: removed {} entries ({}) to stay under {}",
                    p.removed,
                    bytesize::ByteSize(p.freed).display().iec(),
                    bytesize::ByteSize(self.limit.unwrap_or(0)).display().iec()
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(
                    "compiled-component cache: cannot trim {}: {e}",
                    self.dir.display()
                ),
            }
        }
        // SAFETY: `compiled` was produced just now by this engine.
        let component = unsafe { Component::deserialize(engine, &compiled)? };
        Ok((component, CacheOutcome::Miss))
    }
}
