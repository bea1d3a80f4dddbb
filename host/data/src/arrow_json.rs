//! Arrow arrays as JSON values, a row at a time: the one shape every galley reader hands on,
//! so a Parquet or Arrow dataset reaches the trainer exactly as the same rows in JSONL would
//! (strings as strings, lists of structs as lists of objects, nulls as null). Types a dataset
//! of text cannot mean (binary, dates) are refused with the column's name rather than guessed.

use arrow_array::cast::AsArray;
use arrow_array::types::*;
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::DataType;
use serde_json::{Map, Number, Value};

/// The JSON objects of a batch's rows, in order. `Err` names the column that has no JSON
/// reading and its type.
pub fn batch_rows(batch: &RecordBatch) -> Result<Vec<Map<String, Value>>, String> {
    let schema = batch.schema();
    let mut rows: Vec<Map<String, Value>> = vec![Map::new(); batch.num_rows()];
    for (field, col) in schema.fields().iter().zip(batch.columns()) {
        for (r, row) in rows.iter_mut().enumerate() {
            let v = value(col, r).map_err(|t| {
                format!("column `{}` has type {t}, which is not data", field.name())
            })?;
            row.insert(field.name().clone(), v);
        }
    }
    Ok(rows)
}

fn num(x: f64) -> Value {
    Number::from_f64(x).map_or(Value::Null, Value::Number)
}

/// Row `i` of `a`; `Err` is the type that has no JSON reading.
fn value(a: &ArrayRef, i: usize) -> Result<Value, String> {
    if a.is_null(i) {
        return Ok(Value::Null);
    }
    Ok(match a.data_type() {
        DataType::Null => Value::Null,
        DataType::Boolean => Value::Bool(a.as_boolean().value(i)),
        DataType::Int8 => a.as_primitive::<Int8Type>().value(i).into(),
        DataType::Int16 => a.as_primitive::<Int16Type>().value(i).into(),
        DataType::Int32 => a.as_primitive::<Int32Type>().value(i).into(),
        DataType::Int64 => a.as_primitive::<Int64Type>().value(i).into(),
        DataType::UInt8 => a.as_primitive::<UInt8Type>().value(i).into(),
        DataType::UInt16 => a.as_primitive::<UInt16Type>().value(i).into(),
        DataType::UInt32 => a.as_primitive::<UInt32Type>().value(i).into(),
        DataType::UInt64 => a.as_primitive::<UInt64Type>().value(i).into(),
        DataType::Float16 => num(a.as_primitive::<Float16Type>().value(i).to_f64()),
        DataType::Float32 => num(a.as_primitive::<Float32Type>().value(i) as f64),
        DataType::Float64 => num(a.as_primitive::<Float64Type>().value(i)),
        DataType::Utf8 => a.as_string::<i32>().value(i).into(),
        DataType::LargeUtf8 => a.as_string::<i64>().value(i).into(),
        DataType::Utf8View => a.as_string_view().value(i).into(),
        DataType::List(_) => list(&a.as_list::<i32>().value(i))?,
        DataType::LargeList(_) => list(&a.as_list::<i64>().value(i))?,
        DataType::FixedSizeList(..) => list(&a.as_fixed_size_list().value(i))?,
        DataType::Struct(fields) => {
            let s = a.as_struct();
            let mut obj = Map::new();
            for (f, col) in fields.iter().zip(s.columns()) {
                obj.insert(f.name().clone(), value(col, i)?);
            }
            Value::Object(obj)
        }
        DataType::Dictionary(..) => {
            let d = a.as_any_dictionary();
            let key = d.normalized_keys()[i];
            value(d.values(), key)?
        }
        other => return Err(other.to_string()),
    })
}

fn list(items: &ArrayRef) -> Result<Value, String> {
    (0..items.len())
        .map(|j| value(items, j))
        .collect::<Result<Vec<_>, _>>()
        .map(Value::Array)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::builder::{ListBuilder, StringBuilder, StructBuilder};
    use arrow_array::{BooleanArray, Int64Array, StringArray};
    use arrow_schema::{Field, Fields, Schema};
    use std::sync::Arc;

    #[test]
    fn strings_numbers_and_lists_of_messages_read_as_their_json() {
        let fields = Fields::from(vec![
            Field::new("role", DataType::Utf8, true),
            Field::new("content", DataType::Utf8, true),
        ]);
        let mut msgs = ListBuilder::new(StructBuilder::from_fields(fields.clone(), 2));
        for (role, content) in [("user", "hi"), ("assistant", "hello")] {
            let s = msgs.values();
            s.field_builder::<StringBuilder>(0)
                .unwrap()
                .append_value(role);
            s.field_builder::<StringBuilder>(1)
                .unwrap()
                .append_value(content);
            s.append(true);
        }
        msgs.append(true);
        msgs.append_null();
        let msgs = msgs.finish();
        let schema = Schema::new(vec![
            Field::new("messages", msgs.data_type().clone(), true),
            Field::new("text", DataType::Utf8, true),
            Field::new("n", DataType::Int64, true),
            Field::new("label", DataType::Boolean, true),
        ]);
        let batch = RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(msgs),
                Arc::new(StringArray::from(vec![Some("a"), None])),
                Arc::new(Int64Array::from(vec![1, 2])),
                Arc::new(BooleanArray::from(vec![true, false])),
            ],
        )
        .unwrap();
        let rows = batch_rows(&batch).unwrap();
        assert_eq!(
            Value::Object(rows[0].clone()),
            serde_json::json!({
                "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
                "text": "a", "n": 1, "label": true
            })
        );
        assert_eq!(rows[1]["messages"], Value::Null);
        assert_eq!(rows[1]["text"], Value::Null);
    }

    #[test]
    fn a_binary_column_is_refused_by_name() {
        let schema = Schema::new(vec![Field::new("blob", DataType::Binary, false)]);
        let batch = RecordBatch::try_new(
            Arc::new(schema),
            vec![Arc::new(arrow_array::BinaryArray::from(vec![&b"x"[..]]))],
        )
        .unwrap();
        let e = batch_rows(&batch).unwrap_err();
        assert!(e.contains("`blob`") && e.contains("Binary"), "{e}");
    }
}
