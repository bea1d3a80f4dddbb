//! Where a task's documents come from, and reading them. A task names its data as the harness
//! does; galley resolves it locally and never downloads: `dataset_kwargs.data_files` (files
//! relative to the task file), a local `dataset_path` folder, or a hub id looked up as
//! `<data root>/<dataset_path>/<dataset_name>/<split>.jsonl` (the layout
//! `scripts/fetch-eval-data.sh` writes). Files are whatever galley-data reads: JSON Lines, a
//! JSON array of objects, Parquet, Arrow (`.arrow` files, `save_to_disk` folders) or a folder
//! of shards; a split is `<split>.<ext>`, a `<split>` folder, or the Hub's Parquet layout
//! (`<split>-00000-of-00002.parquet`, at the top or under `data/`).

use crate::EvalError;
use crate::task::{OneOrMany, Task};
use crate::template::Doc;
use std::path::{Path, PathBuf};

/// The files that hold `split` of `task`'s dataset.
pub fn split_files(task: &Task, split: &str, data_root: &Path) -> Result<Vec<PathBuf>, EvalError> {
    let c = &task.config;
    let rel = |p: &str| match &task.dir {
        Some(d) if Path::new(p).is_relative() => d.join(p),
        _ => PathBuf::from(p),
    };
    if let Some(files) = c
        .dataset_kwargs
        .as_ref()
        .and_then(|k| k.data_files.as_ref())
    {
        let Some(f) = files.get(split) else {
            return Err(EvalError::Data(format!(
                "{}: task `{}`: dataset_kwargs.data_files has no `{split}` split (it has: {})",
                task.origin,
                c.task,
                files.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        };
        return Ok(match f {
            OneOrMany::One(p) => vec![rel(p)],
            OneOrMany::Many(ps) => ps.iter().map(|p| rel(p)).collect(),
        });
    }
    let Some(path) = c.dataset_path.as_deref() else {
        return Err(EvalError::Data(format!(
            "{}: task `{}`: no `dataset_path` or `dataset_kwargs.data_files`",
            task.origin, c.task
        )));
    };
    let local = rel(path);
    let folder = if (path.starts_with('.') || path.starts_with('/'))
        || (task.dir.is_some() && local.is_dir())
    {
        local
    } else {
        data_root.join(path)
    };
    let folder = match &c.dataset_name {
        Some(n) => folder.join(n),
        None => folder,
    };
    for ext in ["jsonl", "json", "parquet", "arrow"] {
        let f = folder.join(format!("{split}.{ext}"));
        if f.is_file() {
            return Ok(vec![f]);
        }
    }
    if folder.join(split).is_dir() {
        return Ok(vec![folder.join(split)]);
    }
    // The Hub's layout: shards named `<split>-NNNNN-of-NNNNN.<ext>`, at the top or in `data/`.
    for dir in [folder.clone(), folder.join("data")] {
        let mut shards: Vec<PathBuf> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                name.starts_with(&format!("{split}-")) && galley_data::Format::of(p).is_some()
            })
            .collect();
        if !shards.is_empty() {
            shards.sort();
            return Ok(shards);
        }
    }
    Err(EvalError::Data(format!(
        "task `{}`: no data for split `{split}`: expected {} (built-in tasks: run scripts/fetch-eval-data.sh, or point GALLEY_EVAL_DATA / --data-dir at its output)",
        c.task,
        folder.join(format!("{split}.jsonl")).display()
    )))
}

/// Reads documents from every file or folder in `files` (any format galley-data reads); each
/// must be an object.
pub fn read(files: &[PathBuf]) -> Result<Vec<Doc>, EvalError> {
    let mut out = Vec::new();
    for f in files {
        for row in galley_data::rows(f, &galley_data::Columns::new())
            .map_err(|e| EvalError::Data(e.to_string()))?
        {
            out.push(row.map_err(|e| EvalError::Data(e.to_string()))?.fields);
        }
    }
    Ok(out)
}

/// Bytes of every data file, for the task's digest.
pub fn digest_files(files: &[PathBuf], h: &mut sha2::Sha256) -> Result<(), EvalError> {
    use sha2::Digest;
    for path in files {
        let all = galley_data::files(path).map_err(|e| EvalError::Data(e.to_string()))?;
        for (f, _) in all {
            let bytes = std::fs::read(&f)
                .map_err(|e| EvalError::Data(format!("{}: cannot read: {e}", f.display())))?;
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(&bytes);
        }
    }
    Ok(())
}
