//! galley-data owns reading dataset files: JSONL, JSON (a list of records, or JSON Lines as
//! `datasets.to_json` writes them), Parquet and Arrow IPC (`.arrow` files and the folders
//! `datasets.save_to_disk` writes), one file or a folder of shards, as a stream of rows —
//! JSON objects, each tagged with where it came from (`file:line`, `file: row group 2, row
//! 17`), with the dataset's columns renamed by a column mapping. It knows nothing of what the
//! columns mean: the trainer and the evaluator decide that. Files are read a line, a row group
//! or a record batch at a time, never whole (a JSON list excepted: JSON has no streaming form).

mod arrow_json;

pub use arrow_json::batch_rows;

use serde_json::{Map, Value};
use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek};
use std::path::{Path, PathBuf};

/// One record of a dataset and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub at: String,
    pub fields: Map<String, Value>,
}

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file (or folder) cannot be read at all; the stream ends.
    #[error("{}: {msg}", path.display())]
    File { path: PathBuf, msg: String },
    /// One record cannot be read; the stream goes on with the next.
    #[error("{at}: {msg}")]
    Row { at: String, msg: String },
}

pub type Result<T, E = DataError> = std::result::Result<T, E>;

fn file_err(path: &Path, msg: impl ToString) -> DataError {
    DataError::File {
        path: path.to_path_buf(),
        msg: msg.to_string(),
    }
}

/// How a file's records are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Format {
    Jsonl,
    /// `[...]` of records, or JSON Lines (what `datasets.to_json` writes under `.json`).
    Json,
    Parquet,
    /// Arrow IPC, file or stream format (`save_to_disk` writes streams).
    Arrow,
}

impl Format {
    /// The format a file's name says, if it says one.
    pub fn of(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()? {
            "jsonl" | "ndjson" => Some(Format::Jsonl),
            "json" => Some(Format::Json),
            "parquet" | "pq" => Some(Format::Parquet),
            "arrow" | "feather" | "ipc" => Some(Format::Arrow),
            _ => None,
        }
    }
}

/// The data files `path` names, in reading order: the file itself (records as JSONL unless
/// its extension says otherwise); a `save_to_disk` folder's Arrow files in the order its
/// `state.json` lists them; or a folder's data files (shards), sorted by name.
pub fn files(path: &Path) -> Result<Vec<(PathBuf, Format)>> {
    if !path.exists() {
        return Err(file_err(path, "no such data file"));
    }
    if !path.is_dir() {
        return Ok(vec![(
            path.to_path_buf(),
            Format::of(path).unwrap_or(Format::Jsonl),
        )]);
    }
    if path.join("dataset_dict.json").exists() {
        let mut splits: Vec<String> = std::fs::read_dir(path)
            .map_err(|e| file_err(path, e))?
            .flatten()
            .filter(|e| e.path().join("state.json").exists())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        splits.sort();
        return Err(file_err(
            path,
            format!(
                "a DatasetDict folder: name one of its splits ({})",
                splits.join(", ")
            ),
        ));
    }
    let state = path.join("state.json");
    if state.exists() {
        return save_to_disk_files(path, &state);
    }
    let mut out: Vec<(PathBuf, Format)> = std::fs::read_dir(path)
        .map_err(|e| file_err(path, e))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .filter_map(|p| Format::of(&p).map(|f| (p, f)))
        .collect();
    out.sort();
    if out.is_empty() {
        return Err(file_err(
            path,
            "no data files in this folder (.jsonl, .json, .parquet, .arrow)",
        ));
    }
    Ok(out)
}

/// The Arrow files of a `datasets.save_to_disk` folder, as its `state.json` lists them.
fn save_to_disk_files(dir: &Path, state: &Path) -> Result<Vec<(PathBuf, Format)>> {
    let text = std::fs::read_to_string(state).map_err(|e| file_err(state, e))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| file_err(state, e))?;
    let listed = v["_data_files"]
        .as_array()
        .ok_or_else(|| file_err(state, "no `_data_files` list"))?;
    listed
        .iter()
        .map(|f| {
            let name = f["filename"]
                .as_str()
                .ok_or_else(|| file_err(state, "a `_data_files` entry without `filename`"))?;
            // The state file is data too: a name must stay inside the folder.
            let p = Path::new(name);
            if p.components().count() != 1 || p.is_absolute() {
                return Err(file_err(
                    state,
                    format!("`{name}` is not a file in this folder"),
                ));
            }
            Ok((dir.join(p), Format::Arrow))
        })
        .collect()
}

/// A column mapping: the name galley expects -> the dataset's name for it.
pub type Columns = BTreeMap<String, String>;

/// The rows of every file `path` names, in order, with `columns` applied.
pub fn rows(path: &Path, columns: &Columns) -> Result<Rows> {
    Ok(Rows {
        files: files(path)?.into(),
        current: None,
        columns: columns.clone(),
    })
}

type RowIter = Box<dyn Iterator<Item = Result<Row>>>;

/// A stream of rows over one or more files. After a `DataError::File` it ends.
pub struct Rows {
    files: VecDeque<(PathBuf, Format)>,
    current: Option<RowIter>,
    columns: Columns,
}

impl Iterator for Rows {
    type Item = Result<Row>;

    fn next(&mut self) -> Option<Result<Row>> {
        loop {
            if let Some(cur) = &mut self.current {
                match cur.next() {
                    Some(Ok(row)) => return Some(map_columns(row, &self.columns)),
                    Some(Err(e)) => {
                        if matches!(e, DataError::File { .. }) {
                            self.current = None;
                            self.files.clear();
                        }
                        return Some(Err(e));
                    }
                    None => self.current = None,
                }
            }
            let (path, format) = self.files.pop_front()?;
            match open(&path, format) {
                Ok(it) => self.current = Some(it),
                Err(e) => {
                    self.files.clear();
                    return Some(Err(e));
                }
            }
        }
    }
}

/// Renames the dataset's columns to galley's; a mapped column the row lacks is an error that
/// lists the columns it has.
fn map_columns(mut row: Row, columns: &Columns) -> Result<Row> {
    for (ours, theirs) in columns {
        match row.fields.remove(theirs) {
            Some(v) => {
                row.fields.insert(ours.clone(), v);
            }
            None => {
                let have: Vec<&str> = row.fields.keys().map(String::as_str).collect();
                return Err(DataError::Row {
                    at: row.at,
                    msg: format!(
                        "the column mapping takes `{ours}` from `{theirs}`, which this record does not have (its columns: {})",
                        have.join(", ")
                    ),
                });
            }
        }
    }
    Ok(row)
}

fn open(path: &Path, format: Format) -> Result<RowIter> {
    let f = File::open(path).map_err(|e| file_err(path, e))?;
    match format {
        // A JSONL record is an object, so a file that opens with `[` is a JSON list whatever
        // its name says.
        Format::Jsonl | Format::Json => json(path, f),
        Format::Parquet => parquet_rows(path, f),
        Format::Arrow => arrow_rows(path, f),
    }
}

fn object(at: String, v: Value) -> Result<Row> {
    match v {
        Value::Object(fields) => Ok(Row { at, fields }),
        other => Err(DataError::Row {
            at,
            msg: format!("a record must be a JSON object, not {}", kind(&other)),
        }),
    }
}

/// What a JSON value is, in words, for messages ("a number", "a list").
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn jsonl(path: &Path, r: impl BufRead + 'static) -> RowIter {
    let path = path.to_path_buf();
    Box::new(r.lines().enumerate().filter_map(move |(i, line)| {
        let at = format!("{}:{}", path.display(), i + 1);
        match line {
            Err(e) => Some(Err(file_err(&path, e))),
            Ok(l) if l.trim().is_empty() => None,
            Ok(l) => Some(
                serde_json::from_str::<Value>(&l)
                    .map_err(|e| DataError::Row {
                        at: at.clone(),
                        msg: format!("not JSON: {e}"),
                    })
                    .and_then(|v| object(at, v)),
            ),
        }
    }))
}

fn json(path: &Path, mut f: File) -> Result<RowIter> {
    // `datasets.to_json` writes JSON Lines under `.json`: a file that does not open a list is
    // read as lines.
    let mut first = [0u8; 1];
    loop {
        if f.read(&mut first).map_err(|e| file_err(path, e))? == 0 {
            return Ok(Box::new(std::iter::empty()));
        }
        if !first[0].is_ascii_whitespace() {
            break;
        }
    }
    f.rewind().map_err(|e| file_err(path, e))?;
    if first[0] != b'[' {
        return Ok(jsonl(path, BufReader::new(f)));
    }
    let records: Vec<Value> = serde_json::from_reader(BufReader::new(f)).map_err(|e| {
        file_err(
            path,
            format!("line {}: not a JSON list of records: {e}", e.line()),
        )
    })?;
    let p = path.display().to_string();
    Ok(Box::new(records.into_iter().enumerate().map(
        move |(i, v)| object(format!("{p}: record {}", i + 1), v),
    )))
}

/// Rows of a Parquet file, a row group at a time (so an error can name the group).
fn parquet_rows(path: &Path, f: File) -> Result<RowIter> {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(f.try_clone().map_err(|e| file_err(path, e))?)
            .map_err(|e| file_err(path, format!("not a Parquet file: {e}")))?;
    let groups = builder.metadata().num_row_groups();
    let path = path.to_path_buf();
    let mut first_row = 0usize;
    let per_group = (0..groups).flat_map(move |g| {
        let start = first_row;
        let reader = f
            .try_clone()
            .map_err(|e| e.to_string())
            .and_then(|f| ParquetRecordBatchReaderBuilder::try_new(f).map_err(|e| e.to_string()))
            .map(|b| {
                first_row += b.metadata().row_group(g).num_rows() as usize;
                b.with_row_groups(vec![g]).with_batch_size(1024)
            })
            .and_then(|b| b.build().map_err(|e| e.to_string()));
        let path = path.clone();
        let label = move |n: usize| format!("{}: row group {g}, row {}", path.display(), n + 1);
        let batches: Box<dyn Iterator<Item = Result<Vec<Row>>>> = match reader {
            Err(e) => Box::new(std::iter::once(Err(DataError::Row {
                at: label(start),
                msg: format!("cannot read this row group: {e}"),
            }))),
            Ok(r) => {
                let mut at = start;
                Box::new(r.map(move |b| {
                    let rows = b
                        .map_err(|e| e.to_string())
                        .and_then(|b| batch_rows(&b))
                        .map_err(|msg| DataError::Row { at: label(at), msg })?;
                    let out = rows
                        .into_iter()
                        .enumerate()
                        .map(|(i, fields)| Row {
                            at: label(at + i),
                            fields,
                        })
                        .collect::<Vec<_>>();
                    at += out.len();
                    Ok(out)
                }))
            }
        };
        batches
    });
    Ok(flatten(per_group))
}

/// Rows of an Arrow IPC file or stream (the `ARROW1` magic tells which).
fn arrow_rows(path: &Path, mut f: File) -> Result<RowIter> {
    let mut magic = [0u8; 6];
    let is_file = f.read_exact(&mut magic).is_ok() && &magic == b"ARROW1";
    f.rewind().map_err(|e| file_err(path, e))?;
    let batches: Box<dyn Iterator<Item = Result<arrow_array::RecordBatch, String>>> = if is_file {
        let r = arrow_ipc::reader::FileReader::try_new_buffered(f, None)
            .map_err(|e| file_err(path, format!("not an Arrow file: {e}")))?;
        Box::new(r.map(|b| b.map_err(|e| e.to_string())))
    } else {
        let r = arrow_ipc::reader::StreamReader::try_new_buffered(f, None)
            .map_err(|e| file_err(path, format!("not an Arrow IPC file or stream: {e}")))?;
        Box::new(r.map(|b| b.map_err(|e| e.to_string())))
    };
    let p = path.display().to_string();
    let mut at = 0usize;
    Ok(flatten(batches.map(move |b| {
        let label = |n: usize| format!("{p}: row {}", n + 1);
        let rows = b
            .and_then(|b| batch_rows(&b))
            .map_err(|msg| DataError::Row { at: label(at), msg })?;
        let out: Vec<Row> = rows
            .into_iter()
            .enumerate()
            .map(|(i, fields)| Row {
                at: label(at + i),
                fields,
            })
            .collect();
        at += out.len();
        Ok(out)
    })))
}

/// Batches of rows as a row stream; a batch that fails is one error.
fn flatten(batches: impl Iterator<Item = Result<Vec<Row>>> + 'static) -> RowIter {
    Box::new(
        batches.flat_map(|b| -> Box<dyn Iterator<Item = Result<Row>>> {
            match b {
                Ok(rows) => Box::new(rows.into_iter().map(Ok)),
                Err(e) => Box::new(std::iter::once(Err(e))),
            }
        }),
    )
}

#[cfg(test)]
mod tests;
