//! Keeps the compiled-component cache within a size bound. Every plugin version, and every
//! rebuild of a plugin under development, is a new digest and so a new entry (~35 MB for a
//! Python component, ~1 MB for Rust); nothing ever removed them, and a developer's cache grew
//! to 18 GB in two days of test runs. Now each stored entry is followed by an eviction pass:
//! entries of other galley builds (another engine key: they never load here again) go first,
//! then the least recently used, until the folder is under its limit. "Used" is the mtime of
//! the entry's tag file, renewed on every cache hit: the entry itself is not touched, since
//! its change time is part of its seal (see `cache`), and atime is unreliable (`noatime`).
//!
//! The limit is `GALLEY_COMPONENT_CACHE_MAX` (`2GiB`, `500MB`, `unlimited`), 2 GiB by
//! default: wasmtime's own cache defaults to a 1 GiB soft limit for core modules, and
//! components compiled from Python or JavaScript are larger. `galley cache prune` trims on
//! demand, and also removes what a crash or an old galley left (tags without an entry,
//! temporary files). Removing an entry another galley has mapped is safe on Unix (the mapping
//! outlives the name); one that is about to be mapped fails to load and is compiled again.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The size bound when none is configured.
pub const DEFAULT_CACHE_LIMIT: u64 = 2 << 30;
/// The variable that sets the bound.
pub const CACHE_LIMIT_VAR: &str = "GALLEY_COMPONENT_CACHE_MAX";
/// Temporary files younger than this may be another galley's entry being written.
const TEMP_GRACE: Duration = Duration::from_secs(3600);

/// Reads a size bound as people write them: `2GiB`, `500 MB`, `1.5G`, or `unlimited`
/// (`none`, `off`) for no bound (`Ok(None)`).
pub fn parse_cache_limit(text: &str) -> Result<Option<u64>, String> {
    let t = text.trim();
    if matches!(
        t.to_ascii_lowercase().as_str(),
        "unlimited" | "none" | "off"
    ) {
        return Ok(None);
    }
    t.parse::<bytesize::ByteSize>()
        .map(|b| Some(b.as_u64()))
        .map_err(|e| format!("{text:?} is not a size (2GiB, 500MB, unlimited): {e}"))
}

/// The configured bound: `GALLEY_COMPONENT_CACHE_MAX`, else `DEFAULT_CACHE_LIMIT`. A value
/// that is not a size is reported once and the default is kept (the cache is an
/// optimisation; a typo in it must not stop a training run).
pub fn default_cache_limit() -> Option<u64> {
    let Some(v) = std::env::var_os(CACHE_LIMIT_VAR).filter(|v| !v.is_empty()) else {
        return Some(DEFAULT_CACHE_LIMIT);
    };
    match parse_cache_limit(&v.to_string_lossy()) {
        Ok(limit) => limit,
        Err(why) => {
            tracing::warn!(
                "{CACHE_LIMIT_VAR}: {why}; keeping the default bound of {}",
                bytesize::ByteSize(DEFAULT_CACHE_LIMIT).display().iec()
            );
            Some(DEFAULT_CACHE_LIMIT)
        }
    }
}

/// One compiled component in the cache.
#[derive(Debug, Clone)]
pub struct CacheEntry {
    /// The `.cwasm` file.
    pub path: PathBuf,
    /// The entry and its tag.
    pub bytes: u64,
    /// When a galley last loaded it (or stored it).
    pub last_used: SystemTime,
    /// Whether this galley build can load it (its engine key is this engine's).
    pub current: bool,
}

/// What the cache holds.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CacheUsage {
    pub dir: PathBuf,
    pub entries: usize,
    pub bytes: u64,
    /// Entries compiled by another galley build or wasmtime version.
    pub stale_entries: usize,
    pub stale_bytes: u64,
    /// The bound; `None`: unbounded.
    pub limit: Option<u64>,
}

/// What a pruning pass removed and kept.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Pruned {
    pub removed: usize,
    pub freed: u64,
    pub kept: usize,
    pub kept_bytes: u64,
}

fn is_entry_name(name: &str) -> bool {
    !name.starts_with('.') && name.ends_with(".cwasm")
}

/// The entries in `dir`; names that are not entries are left to `prune`. A folder that is
/// not there holds nothing.
pub(crate) fn entries(dir: &Path, engine_key: &str) -> io::Result<Vec<CacheEntry>> {
    let read = match fs::read_dir(dir) {
        Ok(r) => r,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let suffix = format!("-{engine_key}.cwasm");
    let mut out = Vec::new();
    for item in read {
        let item = item?;
        let name = item.file_name().to_string_lossy().into_owned();
        if !is_entry_name(&name) {
            continue;
        }
        let path = item.path();
        // Not followed: a planted link counts as its own few bytes, and is removed as such.
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue; // removed by another galley meanwhile
        };
        let tag = fs::symlink_metadata(path.with_extension("tag")).ok();
        let last_used = tag
            .as_ref()
            .and_then(|t| t.modified().ok())
            .or_else(|| meta.modified().ok())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        out.push(CacheEntry {
            bytes: meta.len() + tag.map_or(0, |t| t.len()),
            last_used,
            current: meta.is_file() && name.ends_with(&suffix),
            path,
        });
    }
    Ok(out)
}

/// Sums up `dir`.
pub(crate) fn usage(dir: &Path, engine_key: &str, limit: Option<u64>) -> io::Result<CacheUsage> {
    let mut u = CacheUsage {
        dir: dir.to_path_buf(),
        limit,
        ..Default::default()
    };
    for e in entries(dir, engine_key)? {
        u.entries += 1;
        u.bytes += e.bytes;
        if !e.current {
            u.stale_entries += 1;
            u.stale_bytes += e.bytes;
        }
    }
    Ok(u)
}

fn remove_entry(path: &Path) -> bool {
    // The entry before its tag: a tag alone is inert, an entry alone is discarded on load.
    let gone = match fs::remove_file(path) {
        Ok(()) => true,
        Err(e) => e.kind() == io::ErrorKind::NotFound,
    };
    let _ = fs::remove_file(path.with_extension("tag"));
    gone
}

/// Removes entries until the folder holds at most `limit` bytes: other builds' entries
/// first, then the least recently used; never `keep` (the entry just stored). With
/// `all_stale`, other builds' entries go even when the folder is under its limit.
pub(crate) fn evict(
    dir: &Path,
    engine_key: &str,
    limit: Option<u64>,
    keep: Option<&Path>,
    all_stale: bool,
) -> io::Result<Pruned> {
    let mut list = entries(dir, engine_key)?;
    // Stale first, then oldest first.
    list.sort_by_key(|e| (e.current, e.last_used));
    let mut total: u64 = list.iter().map(|e| e.bytes).sum();
    let mut p = Pruned::default();
    for e in list {
        let over = limit.is_some_and(|l| total > l);
        let drop = (over || (all_stale && !e.current)) && Some(e.path.as_path()) != keep;
        if drop && remove_entry(&e.path) {
            total -= e.bytes;
            p.removed += 1;
            p.freed += e.bytes;
        } else {
            p.kept += 1;
            p.kept_bytes += e.bytes;
        }
    }
    Ok(p)
}

/// `galley cache prune`: other builds' entries, least recently used ones over `limit`, tags
/// whose entry is gone and temporary files older than an hour.
pub(crate) fn prune(dir: &Path, engine_key: &str, limit: Option<u64>) -> io::Result<Pruned> {
    let mut p = evict(dir, engine_key, limit, None, true)?;
    let read = match fs::read_dir(dir) {
        Ok(r) => r,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(p),
        Err(e) => return Err(e),
    };
    let now = SystemTime::now();
    for item in read {
        let item = item?;
        let name = item.file_name().to_string_lossy().into_owned();
        let path = item.path();
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        let orphan_tag = !name.starts_with('.')
            && name.ends_with(".tag")
            && fs::symlink_metadata(path.with_extension("cwasm")).is_err();
        let old_temp = name.starts_with('.')
            && (name.contains(".cwasm.") || name.contains(".tag."))
            && meta
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .is_some_and(|age| age > TEMP_GRACE);
        if (orphan_tag || old_temp) && fs::remove_file(&path).is_ok() {
            p.removed += 1;
            p.freed += meta.len();
        }
    }
    Ok(p)
}

/// Marks the entry whose tag is `tag` as used now.
pub(crate) fn touch(tag: &Path) {
    let done = crate::cache::open_nofollow(tag).and_then(|f| f.set_modified(SystemTime::now()));
    if let Err(e) = done {
        tracing::debug!("cannot mark {} as used: {e}", tag.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_read_as_people_write_them() {
        assert_eq!(parse_cache_limit("2GiB"), Ok(Some(2 << 30)));
        assert_eq!(parse_cache_limit(" 500 MB "), Ok(Some(500_000_000)));
        assert_eq!(parse_cache_limit("unlimited"), Ok(None));
        assert_eq!(parse_cache_limit("OFF"), Ok(None));
        let e = parse_cache_limit("lots").unwrap_err();
        assert!(e.contains("\"lots\" is not a size"), "{e}");
    }

    fn put(dir: &Path, name: &str, len: usize, age_s: u64) -> PathBuf {
        let p = dir.join(name);
        fs::write(&p, vec![0u8; len]).unwrap();
        fs::write(p.with_extension("tag"), [1u8; 72]).unwrap();
        let t = SystemTime::now() - Duration::from_secs(age_s);
        fs::File::options()
            .write(true)
            .open(p.with_extension("tag"))
            .unwrap()
            .set_modified(t)
            .unwrap();
        p
    }

    #[test]
    fn stale_entries_go_first_then_the_least_recently_used() {
        let d = tempfile::tempdir().unwrap();
        let stale = put(d.path(), "aa-0000.cwasm", 1000, 10);
        let old = put(d.path(), "bb-1111.cwasm", 1000, 300);
        let mid = put(d.path(), "cc-1111.cwasm", 1000, 200);
        let new = put(d.path(), "dd-1111.cwasm", 1000, 100);
        // 4,000 bytes against 2,200: the stale entry goes, then the oldest.
        let p = evict(d.path(), "1111", Some(2200), Some(&new), false).unwrap();
        assert_eq!((p.removed, p.kept), (2, 2), "{p:?}");
        assert!(!stale.exists() && !stale.with_extension("tag").exists());
        assert!(!old.exists() && mid.exists() && new.exists());
        // Under the limit nothing more goes; `all_stale` alone removes nothing current.
        let p = evict(d.path(), "1111", Some(2200), None, true).unwrap();
        assert_eq!((p.removed, p.kept), (0, 2));
        // `keep` is kept even past the limit.
        let p = evict(d.path(), "1111", Some(10), Some(&mid), false).unwrap();
        assert_eq!((p.removed, p.kept), (1, 1));
        assert!(mid.exists() && !new.exists());
    }

    #[test]
    fn prune_removes_orphan_tags_old_temporaries_and_stale_builds() {
        let d = tempfile::tempdir().unwrap();
        let cur = put(d.path(), "aa-1111.cwasm", 10, 5);
        let stale = put(d.path(), "bb-0000.cwasm", 10, 5);
        fs::write(d.path().join("cc-1111.tag"), [0u8; 72]).unwrap();
        let young = d.path().join(".dd-1111.cwasm.0011223344556677");
        let old = d.path().join(".ee-1111.cwasm.8899aabbccddeeff");
        fs::write(&young, b"x").unwrap();
        fs::write(&old, b"x").unwrap();
        fs::File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(SystemTime::now() - 2 * TEMP_GRACE)
            .unwrap();
        let stranger = d.path().join("notes.txt");
        fs::write(&stranger, b"mine").unwrap();
        let p = prune(d.path(), "1111", None).unwrap();
        assert_eq!(p.removed, 3, "{p:?}"); // the stale entry, the orphan tag, the old temp
        assert!(cur.exists() && !stale.exists() && young.exists() && !old.exists());
        assert!(!d.path().join("cc-1111.tag").exists() && stranger.exists());
        let u = usage(d.path(), "1111", Some(7)).unwrap();
        assert_eq!((u.entries, u.bytes, u.stale_entries), (1, 82, 0));
    }
}
