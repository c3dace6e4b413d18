//! The `findings` table: one row per finding, in the store beside the
//! session's other tables (`findings/session_id=<id>/part-0.parquet`), so
//! DuckDB and `query` read it like the rest. Written whole to a temporary
//! name, synced and renamed: a reader never sees half a file. Re-running
//! `analyze` replaces it.

use std::fs::{DirBuilder, OpenOptions};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, Result};
use arrow_array::builder::{Float64Builder, ListBuilder, StringBuilder, StructBuilder};
use arrow_array::{ArrayRef, Float64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Fields, Schema};
use parquet::arrow::ArrowWriter;

use super::Finding;

fn evidence_fields() -> Fields {
    Fields::from(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("value", DataType::Float64, false),
        Field::new("unit", DataType::Utf8, false),
        Field::new("estimated", DataType::Boolean, false),
    ])
}

/// Schema of `findings` (session_id comes from the directory).
pub fn schema() -> Schema {
    Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("function", DataType::Utf8, false),
        Field::new("related", DataType::Utf8, true),
        Field::new("severity", DataType::Float64, false),
        Field::new("confidence", DataType::Float64, false),
        Field::new_list(
            "evidence",
            Field::new_list_field(DataType::Struct(evidence_fields()), true),
            false,
        ),
        Field::new("location", DataType::Utf8, true),
        Field::new("message", DataType::Utf8, false),
    ])
}

fn batch(findings: &[Finding]) -> Result<RecordBatch> {
    let s = |f: &dyn Fn(&Finding) -> Option<String>| -> ArrayRef {
        Arc::new(findings.iter().map(f).collect::<StringArray>())
    };
    let mut ev = ListBuilder::new(StructBuilder::from_fields(evidence_fields(), 0)).with_field(
        Field::new_list_field(DataType::Struct(evidence_fields()), true),
    );
    for f in findings {
        let st = ev.values();
        for e in &f.evidence {
            st.field_builder::<StringBuilder>(0)
                .expect("name")
                .append_value(&e.name);
            st.field_builder::<Float64Builder>(1)
                .expect("value")
                .append_value(e.value);
            st.field_builder::<StringBuilder>(2)
                .expect("unit")
                .append_value(e.unit);
            st.field_builder::<arrow_array::builder::BooleanBuilder>(3)
                .expect("estimated")
                .append_value(e.estimated);
            st.append(true);
        }
        ev.append(true);
    }
    let cols: Vec<ArrayRef> = vec![
        s(&|f| Some(f.id.clone())),
        s(&|f| Some(f.kind.as_str().to_string())),
        s(&|f| Some(f.function.clone())),
        s(&|f| f.related.clone()),
        Arc::new(
            findings
                .iter()
                .map(|f| f.severity)
                .collect::<Float64Array>(),
        ),
        Arc::new(
            findings
                .iter()
                .map(|f| f.confidence)
                .collect::<Float64Array>(),
        ),
        Arc::new(ev.finish()),
        s(&|f| f.location.clone()),
        s(&|f| Some(f.message.clone())),
    ];
    Ok(RecordBatch::try_new(Arc::new(schema()), cols)?)
}

/// Writes `findings` of `session` under the local store `root`; returns
/// the file's path. Directories are created 0700 and the file 0600 (the
/// agent may run as root).
pub fn write(root: &Path, session: &str, findings: &[Finding]) -> Result<PathBuf> {
    let dir = root.join("findings").join(format!("session_id={session}"));
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join("part-0.parquet");
    let tmp = dir.join(".part-0.parquet.tmp");
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    let b = batch(findings)?;
    let mut w = ArrowWriter::try_new(file, b.schema(), None)?;
    w.write(&b)?;
    let file = w.into_inner()?;
    file.sync_all()
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::{Evidence, Kind};

    #[test]
    fn findings_table_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let f = Finding {
            id: "F1".into(),
            kind: Kind::Bottleneck,
            function: "slow".into(),
            related: None,
            severity: 0.5,
            confidence: 0.9,
            evidence: vec![Evidence::new("self_share", 0.5, "ratio")],
            location: Some("a.c:3".into()),
            message: "slow is slow".into(),
        };
        let p = write(dir.path(), "s1", &[f]).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let r = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            std::fs::File::open(&p).unwrap(),
        )
        .unwrap()
        .build()
        .unwrap();
        let rows: usize = r.map(|b| b.unwrap().num_rows()).sum();
        assert_eq!(rows, 1);
    }
}
