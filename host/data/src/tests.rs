use super::*;
use arrow_array::{ArrayRef, BinaryArray, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use std::sync::Arc;

fn batch(prompts: &[&str], ns: &[i64]) -> RecordBatch {
    let schema = Schema::new(vec![
        Field::new("question", DataType::Utf8, false),
        Field::new("n", DataType::Int64, false),
    ]);
    RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(StringArray::from(prompts.to_vec())) as ArrayRef,
            Arc::new(Int64Array::from(ns.to_vec())),
        ],
    )
    .unwrap()
}

fn fields(rows: Rows) -> Vec<Value> {
    rows.map(|r| Value::Object(r.unwrap().fields)).collect()
}

fn expected() -> Vec<Value> {
    (0..5)
        .map(|i| serde_json::json!({"question": format!("q{i}"), "n": i}))
        .collect()
}

fn write_parquet(path: &Path, row_group_rows: usize) {
    let props = parquet::file::properties::WriterProperties::builder()
        .set_max_row_group_row_count(Some(row_group_rows))
        .build();
    let b = batch(&["q0", "q1", "q2", "q3", "q4"], &[0, 1, 2, 3, 4]);
    let mut w =
        parquet::arrow::ArrowWriter::try_new(File::create(path).unwrap(), b.schema(), Some(props))
            .unwrap();
    w.write(&b).unwrap();
    w.close().unwrap();
}

#[test]
fn jsonl_json_parquet_and_arrow_give_the_same_rows() {
    let dir = tempfile::tempdir().unwrap();
    let lines: String = expected().iter().map(|v| format!("{v}\n\n")).collect();
    std::fs::write(dir.path().join("a.jsonl"), &lines).unwrap();
    std::fs::write(dir.path().join("lines.json"), &lines).unwrap();
    std::fs::write(
        dir.path().join("list.json"),
        serde_json::to_string(&expected()).unwrap(),
    )
    .unwrap();
    write_parquet(&dir.path().join("a.parquet"), 2);
    let b = batch(&["q0", "q1", "q2", "q3", "q4"], &[0, 1, 2, 3, 4]);
    let mut w = arrow_ipc::writer::FileWriter::try_new(
        File::create(dir.path().join("f.arrow")).unwrap(),
        &b.schema(),
    )
    .unwrap();
    w.write(&b).unwrap();
    w.finish().unwrap();
    // A save_to_disk folder: IPC streams in two shards, listed by state.json.
    let sd = dir.path().join("saved");
    std::fs::create_dir(&sd).unwrap();
    for (name, b) in [
        (
            "data-00000-of-00002.arrow",
            batch(&["q0", "q1", "q2"], &[0, 1, 2]),
        ),
        ("data-00001-of-00002.arrow", batch(&["q3", "q4"], &[3, 4])),
    ] {
        let mut w = arrow_ipc::writer::StreamWriter::try_new(
            File::create(sd.join(name)).unwrap(),
            &b.schema(),
        )
        .unwrap();
        w.write(&b).unwrap();
        w.finish().unwrap();
    }
    std::fs::write(
        sd.join("state.json"),
        r#"{"_data_files": [{"filename": "data-00000-of-00002.arrow"}, {"filename": "data-00001-of-00002.arrow"}]}"#,
    )
    .unwrap();
    for f in [
        "a.jsonl",
        "lines.json",
        "list.json",
        "a.parquet",
        "f.arrow",
        "saved",
    ] {
        let got = fields(rows(&dir.path().join(f), &Columns::new()).unwrap());
        assert_eq!(got, expected(), "{f}");
    }
    let at: Vec<String> = rows(&dir.path().join("a.parquet"), &Columns::new())
        .unwrap()
        .map(|r| r.unwrap().at)
        .collect();
    assert!(at[2].ends_with("a.parquet: row group 1, row 3"), "{at:?}");
}

#[test]
fn a_folder_of_shards_reads_in_name_order_with_a_column_mapping() {
    let dir = tempfile::tempdir().unwrap();
    let e = expected();
    std::fs::write(
        dir.path().join("part-1.jsonl"),
        format!("{}\n{}\n", e[3], e[4]),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("part-0.jsonl"),
        format!("{}\n{}\n{}\n", e[0], e[1], e[2]),
    )
    .unwrap();
    std::fs::write(dir.path().join("README.md"), "not data").unwrap();
    let cols = Columns::from([("prompt".to_string(), "question".to_string())]);
    let got = fields(rows(dir.path(), &cols).unwrap());
    assert_eq!(got.len(), 5);
    assert_eq!(got[3], serde_json::json!({"prompt": "q3", "n": 3}));
    // A mapping from a column the data lacks names it and lists the ones there are.
    let cols = Columns::from([("prompt".to_string(), "query".to_string())]);
    let e = rows(dir.path(), &cols)
        .unwrap()
        .next()
        .unwrap()
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("part-0.jsonl:1") && msg.contains("`query`") && msg.contains("question, n")
            || msg.contains("n, question"),
        "{msg}"
    );
}

#[test]
fn bad_records_are_errors_that_name_them_and_the_stream_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("d.jsonl");
    std::fs::write(&p, "{\"a\": 1}\nnot json\n[1, 2]\n{\"a\": 2}\n").unwrap();
    let got: Vec<Result<Row>> = rows(&p, &Columns::new()).unwrap().collect();
    assert_eq!(got.len(), 4);
    assert!(
        got[1]
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("d.jsonl:2: not JSON")
    );
    assert!(
        got[2]
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("d.jsonl:3: a record must be a JSON object, not a list")
    );
    assert_eq!(got[3].as_ref().unwrap().fields["a"], 2);
}

#[test]
fn a_parquet_column_with_no_json_reading_names_the_column_and_row_group() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("b.parquet");
    let schema = Arc::new(Schema::new(vec![Field::new(
        "prompt",
        DataType::Binary,
        false,
    )]));
    let b = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(BinaryArray::from(vec![&b"x"[..]])) as ArrayRef],
    )
    .unwrap();
    let mut w =
        parquet::arrow::ArrowWriter::try_new(File::create(&p).unwrap(), schema, None).unwrap();
    w.write(&b).unwrap();
    w.close().unwrap();
    let e = rows(&p, &Columns::new())
        .unwrap()
        .next()
        .unwrap()
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("row group 0") && msg.contains("`prompt`"),
        "{msg}"
    );
}

#[test]
fn folders_that_hold_no_data_or_several_splits_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let msg = rows(dir.path(), &Columns::new()).err().unwrap().to_string();
    assert!(msg.contains("no data files"), "{msg}");
    std::fs::write(dir.path().join("dataset_dict.json"), "{}").unwrap();
    std::fs::create_dir(dir.path().join("train")).unwrap();
    std::fs::write(dir.path().join("train/state.json"), "{}").unwrap();
    let msg = rows(dir.path(), &Columns::new()).err().unwrap().to_string();
    assert!(
        msg.contains("DatasetDict") && msg.contains("train"),
        "{msg}"
    );
    let msg = rows(&dir.path().join("nope.parquet"), &Columns::new())
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("no such data file"), "{msg}");
    // A state.json naming a file outside its folder is refused.
    let sd = dir.path().join("evil");
    std::fs::create_dir(&sd).unwrap();
    std::fs::write(
        sd.join("state.json"),
        r#"{"_data_files": [{"filename": "../x.arrow"}]}"#,
    )
    .unwrap();
    let msg = rows(&sd, &Columns::new()).err().unwrap().to_string();
    assert!(msg.contains("not a file in this folder"), "{msg}");
}
