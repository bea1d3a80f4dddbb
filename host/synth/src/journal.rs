//! The output file and what makes it resumable. Beside `FILE.jsonl` galley keeps
//! `FILE.jsonl.synth.json` (the settings and digests the file was made with) and
//! `FILE.jsonl.synth.log` (one line per finished prompt: its index and how many output lines
//! it wrote). A prompt's lines reach the disk before its log line, so after an interruption
//! the log names exactly the prompts whose lines are whole; output past what the log accounts
//! for (a batch cut short) is cut off and generated again. A rerun with other settings is
//! refused rather than mixed into the same file.

use crate::SynthError;
use serde_json::Value;
use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, Write};
use std::path::{Path, PathBuf};

pub struct Journal {
    out: File,
    log: File,
    out_path: PathBuf,
    log_path: PathBuf,
    /// Prompt indices already done (kept on resume).
    pub done: BTreeSet<usize>,
    /// Output lines already written.
    pub lines: usize,
}

fn side(path: &Path, ext: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(ext);
    PathBuf::from(s)
}

/// `FILE.synth.json`: settings and digests.
pub fn manifest_path(out: &Path) -> PathBuf {
    side(out, ".synth.json")
}

fn log_path(out: &Path) -> PathBuf {
    side(out, ".synth.log")
}

fn io(path: &Path, e: impl std::fmt::Display) -> SynthError {
    SynthError::Output {
        path: path.to_path_buf(),
        msg: e.to_string(),
    }
}

/// The keys of two JSON objects whose values differ (for an error a user can act on).
fn differing(a: &Value, b: &Value, prefix: &str, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                differing(
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    &p,
                    out,
                );
            }
        }
        _ if a != b => out.push(prefix.to_string()),
        _ => {}
    }
}

impl Journal {
    /// Opens `out` for writing: fresh (writing `identity` beside it), or resumed when its
    /// journal was made with the same `identity`.
    pub fn open(out: &Path, identity: &Value) -> Result<Journal, SynthError> {
        let (mpath, lpath) = (manifest_path(out), log_path(out));
        if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        }
        let resuming = lpath.exists();
        if !resuming && out.exists() {
            return Err(io(
                out,
                format!(
                    "exists and has no {} (galley synth did not write it, or it was finished and its journal removed): remove it or choose another output.path",
                    lpath.display()
                ),
            ));
        }
        let mut done = BTreeSet::new();
        let mut lines = 0usize;
        if resuming {
            let text = std::fs::read_to_string(&mpath).map_err(|e| io(&mpath, e))?;
            let was: Value = serde_json::from_str(&text).map_err(|e| io(&mpath, e))?;
            let mut keys = Vec::new();
            differing(&was["identity"], identity, "", &mut keys);
            if !keys.is_empty() {
                return Err(io(
                    out,
                    format!(
                        "was written with other settings ({} differ); remove it (and {}, {}) or choose another output.path",
                        keys.join(", "),
                        mpath.display(),
                        lpath.display()
                    ),
                ));
            }
            let mut log_text = String::new();
            File::open(&lpath)
                .and_then(|mut f| f.read_to_string(&mut log_text))
                .map_err(|e| io(&lpath, e))?;
            // A torn last line (no newline) is a prompt whose log write was cut: not done.
            let whole = log_text.rfind('\n').map_or(0, |i| i + 1);
            for (n, line) in log_text[..whole].lines().enumerate() {
                let v: Value = serde_json::from_str(line)
                    .map_err(|e| io(&lpath, format!("line {}: {e}", n + 1)))?;
                let (Some(i), Some(k)) = (v["index"].as_u64(), v["lines"].as_u64()) else {
                    return Err(io(&lpath, format!("line {}: not a journal entry", n + 1)));
                };
                done.insert(i as usize);
                lines += k as usize;
            }
            std::fs::OpenOptions::new()
                .write(true)
                .open(&lpath)
                .and_then(|f| f.set_len(whole as u64))
                .map_err(|e| io(&lpath, e))?;
            truncate_to_lines(out, lines)?;
        } else {
            let m = serde_json::json!({"identity": identity});
            std::fs::write(&mpath, serde_json::to_string_pretty(&m).expect("json"))
                .map_err(|e| io(&mpath, e))?;
            File::create(&lpath).map_err(|e| io(&lpath, e))?;
        }
        let open = |p: &Path| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| io(p, e))
        };
        Ok(Journal {
            out: open(out)?,
            log: open(&lpath)?,
            out_path: out.to_path_buf(),
            log_path: lpath.clone(),
            done,
            lines,
        })
    }

    /// Records finished prompts: each one's output lines, then (once those are on disk) its
    /// journal entry.
    pub fn commit(&mut self, finished: &[(usize, Vec<String>)]) -> Result<(), SynthError> {
        let mut text = String::new();
        for (_, lines) in finished {
            for l in lines {
                text.push_str(l);
                text.push('\n');
            }
        }
        self.out
            .write_all(text.as_bytes())
            .and_then(|()| self.out.sync_data())
            .map_err(|e| io(&self.out_path, e))?;
        let mut log = String::new();
        for (i, lines) in finished {
            log.push_str(&serde_json::json!({"index": i, "lines": lines.len()}).to_string());
            log.push('\n');
            self.done.insert(*i);
            self.lines += lines.len();
        }
        self.log
            .write_all(log.as_bytes())
            .and_then(|()| self.log.sync_data())
            .map_err(|e| io(&self.log_path, e))
    }
}

/// Cuts `path` after its first `lines` lines; fewer lines than that means the file was
/// changed behind the journal's back.
fn truncate_to_lines(path: &Path, lines: usize) -> Result<(), SynthError> {
    let mut f = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && lines == 0 => return Ok(()),
        Err(e) => return Err(io(path, e)),
    };
    let mut r = BufReader::new(&mut f);
    let (mut offset, mut seen, mut buf) = (0u64, 0usize, Vec::new());
    while seen < lines {
        buf.clear();
        let n = r.read_until(b'\n', &mut buf).map_err(|e| io(path, e))?;
        if n == 0 || buf.last() != Some(&b'\n') {
            return Err(io(
                path,
                format!(
                    "has {seen} whole lines but its journal accounts for {lines}: it was changed after galley synth wrote it; remove it and its .synth.* files to start over"
                ),
            ));
        }
        offset += n as u64;
        seen += 1;
    }
    drop(r);
    let len = f.seek(std::io::SeekFrom::End(0)).map_err(|e| io(path, e))?;
    if len > offset {
        tracing::info!(
            "{}: cutting {} bytes an interrupted batch left",
            path.display(),
            len - offset
        );
        f.set_len(offset).map_err(|e| io(path, e))?;
    }
    Ok(())
}
