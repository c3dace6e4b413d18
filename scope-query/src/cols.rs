//! Reading a result's columns by name as plain Rust values, whatever
//! integer or string type the engine chose.

use anyhow::{Result, anyhow};
use arrow_array::cast::AsArray as _;
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::DataType;
use datafusion::arrow::compute::cast;

fn column(batch: &RecordBatch, name: &str) -> Result<ArrayRef> {
    batch
        .column_by_name(name)
        .cloned()
        .ok_or_else(|| anyhow!("internal: no column {name} in a result"))
}

/// A column as `i64` values (null: `None`); unsigned and float columns are
/// cast.
pub fn i64s(batch: &RecordBatch, name: &str) -> Result<Vec<Option<i64>>> {
    let a = cast(&column(batch, name)?, &DataType::Int64)?;
    let a = a.as_primitive::<arrow_array::types::Int64Type>();
    Ok((0..a.len())
        .map(|i| (!a.is_null(i)).then(|| a.value(i)))
        .collect())
}

/// A column as one `Int64Array` (cast from the engine's integer type):
/// for loops over millions of rows, where [`i64s`]' `Option`s would cost a
/// copy of every value.
pub fn i64_array(batch: &RecordBatch, name: &str) -> Result<arrow_array::Int64Array> {
    let a = cast(&column(batch, name)?, &DataType::Int64)?;
    Ok(a.as_primitive::<arrow_array::types::Int64Type>().clone())
}

/// A column as one `UInt64Array` (ids: no copy when the column is one).
pub fn u64_array(batch: &RecordBatch, name: &str) -> Result<arrow_array::UInt64Array> {
    let a = cast(&column(batch, name)?, &DataType::UInt64)?;
    Ok(a.as_primitive::<arrow_array::types::UInt64Type>().clone())
}

/// A column as one `UInt32Array` (function and thread ids: no copy when
/// the column is one).
pub fn u32_array(batch: &RecordBatch, name: &str) -> Result<arrow_array::UInt32Array> {
    let a = cast(&column(batch, name)?, &DataType::UInt32)?;
    Ok(a.as_primitive::<arrow_array::types::UInt32Type>().clone())
}

/// A column as `f64` values.
pub fn f64s(batch: &RecordBatch, name: &str) -> Result<Vec<Option<f64>>> {
    let a = cast(&column(batch, name)?, &DataType::Float64)?;
    let a = a.as_primitive::<arrow_array::types::Float64Type>();
    Ok((0..a.len())
        .map(|i| (!a.is_null(i)).then(|| a.value(i)))
        .collect())
}

/// A column as strings.
pub fn strs(batch: &RecordBatch, name: &str) -> Result<Vec<Option<String>>> {
    let a = cast(&column(batch, name)?, &DataType::Utf8)?;
    let a = a.as_string::<i32>();
    Ok((0..a.len())
        .map(|i| (!a.is_null(i)).then(|| a.value(i).to_string()))
        .collect())
}

/// A boolean column.
pub fn bools(batch: &RecordBatch, name: &str) -> Result<Vec<Option<bool>>> {
    let a = cast(&column(batch, name)?, &DataType::Boolean)?;
    let a = a.as_boolean();
    Ok((0..a.len())
        .map(|i| (!a.is_null(i)).then(|| a.value(i)))
        .collect())
}

/// A `List<Int64>` column (arguments) as vectors.
pub fn i64_lists(batch: &RecordBatch, name: &str) -> Result<Vec<Option<Vec<Option<i64>>>>> {
    let Some(a) = batch.column_by_name(name) else {
        return Ok(vec![None; batch.num_rows()]);
    };
    let DataType::List(_) = a.data_type() else {
        return Ok(vec![None; batch.num_rows()]);
    };
    let list = a.as_list::<i32>();
    let mut out = Vec::with_capacity(list.len());
    for i in 0..list.len() {
        if list.is_null(i) {
            out.push(None);
            continue;
        }
        let v = cast(&list.value(i), &DataType::Int64)?;
        let v = v.as_primitive::<arrow_array::types::Int64Type>();
        out.push(Some(
            (0..v.len())
                .map(|j| (!v.is_null(j)).then(|| v.value(j)))
                .collect(),
        ));
    }
    Ok(out)
}

/// A `List<Utf8>` column (strings of arguments, parameter names).
pub fn str_lists(batch: &RecordBatch, name: &str) -> Result<Vec<Option<Vec<Option<String>>>>> {
    let Some(a) = batch.column_by_name(name) else {
        return Ok(vec![None; batch.num_rows()]);
    };
    let DataType::List(_) = a.data_type() else {
        return Ok(vec![None; batch.num_rows()]);
    };
    let list = a.as_list::<i32>();
    let mut out = Vec::with_capacity(list.len());
    for i in 0..list.len() {
        if list.is_null(i) {
            out.push(None);
            continue;
        }
        let v = cast(&list.value(i), &DataType::Utf8)?;
        let v = v.as_string::<i32>();
        out.push(Some(
            (0..v.len())
                .map(|j| (!v.is_null(j)).then(|| v.value(j).to_string()))
                .collect(),
        ));
    }
    Ok(out)
}
