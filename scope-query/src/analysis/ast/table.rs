//! The `ast` table: one row per function of the AST map, written as
//! `<root>/ast/session_id=<id>/part-0.parquet` like the other tables (a
//! hidden temporary name, fsync, rename; files 0600, directories 0700), so
//! DuckDB's `read_parquet('<root>/ast/**/*.parquet', hive_partitioning =
//! true)` and the store's own SQL read it as it is.

use std::fs::{self, DirBuilder, File, Permissions};
use std::io::{BufWriter, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use anyhow::{Context as _, Result, anyhow, bail};
use arrow_array::{
    ArrayRef, ListArray, RecordBatch, StringArray, StructArray, UInt32Array, UInt64Array,
};
use arrow_buffer::OffsetBuffer;
use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use super::AstMap;

/// The table's directory name under the store's root.
pub const TABLE: &str = "ast";

const DIR_MODE: u32 = 0o700;

fn loop_fields() -> Fields {
    Fields::from(vec![
        Field::new("line", DataType::UInt32, false),
        Field::new("end_line", DataType::UInt32, false),
        Field::new("depth", DataType::UInt32, false),
        Field::new("address", DataType::UInt64, true),
    ])
}

fn call_fields() -> Fields {
    Fields::from(vec![
        Field::new("callee", DataType::Utf8, false),
        Field::new("expr", DataType::Utf8, false),
        Field::new("line", DataType::UInt32, false),
        Field::new("loop_line", DataType::UInt32, true),
        Field::new("loop_depth", DataType::UInt32, false),
        Field::new("address", DataType::UInt64, true),
    ])
}

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("function_id", DataType::UInt32, false),
        Field::new("name", DataType::Utf8, false),
        Field::new("origin", DataType::Utf8, false),
        Field::new("file", DataType::Utf8, true),
        Field::new("start_line", DataType::UInt32, false),
        Field::new("end_line", DataType::UInt32, false),
        Field::new_list(
            "loops",
            Field::new_list_field(DataType::Struct(loop_fields()), false),
            false,
        ),
        Field::new_list(
            "calls",
            Field::new_list_field(DataType::Struct(call_fields()), false),
            false,
        ),
        Field::new("branches", DataType::UInt32, false),
        Field::new("cyclomatic", DataType::UInt32, false),
        Field::new("blocks", DataType::UInt32, true),
    ]))
});

/// Schema of the `ast` table (without the Hive column `session_id`).
pub fn schema() -> SchemaRef {
    SCHEMA.clone()
}

/// The map as one batch of the table's schema.
fn batch(map: &AstMap) -> Result<RecordBatch> {
    let f = &map.functions;
    let u32s = |get: &dyn Fn(usize) -> u32| -> ArrayRef {
        Arc::new(UInt32Array::from_iter_values((0..f.len()).map(get)))
    };
    let loops = f.iter().flat_map(|x| &x.loops);
    let loop_struct = StructArray::try_new(
        loop_fields(),
        vec![
            Arc::new(UInt32Array::from_iter_values(loops.clone().map(|l| l.line))),
            Arc::new(UInt32Array::from_iter_values(
                loops.clone().map(|l| l.end_line),
            )),
            Arc::new(UInt32Array::from_iter_values(
                loops.clone().map(|l| l.depth),
            )),
            Arc::new(UInt64Array::from_iter(loops.map(|l| l.address))),
        ],
        None,
    )?;
    // Collected: string arrays want iterators of known length.
    let calls: Vec<&super::CallSite> = f.iter().flat_map(|x| &x.calls).collect();
    let calls = calls.iter();
    let call_struct = StructArray::try_new(
        call_fields(),
        vec![
            Arc::new(StringArray::from_iter_values(
                calls.clone().map(|c| c.callee.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                calls.clone().map(|c| c.expr.as_str()),
            )),
            Arc::new(UInt32Array::from_iter_values(calls.clone().map(|c| c.line))),
            Arc::new(UInt32Array::from_iter(calls.clone().map(|c| c.loop_line))),
            Arc::new(UInt32Array::from_iter_values(
                calls.clone().map(|c| c.loop_depth),
            )),
            Arc::new(UInt64Array::from_iter(calls.map(|c| c.address))),
        ],
        None,
    )?;
    let list = |fields: Fields, lens: Vec<usize>, values: StructArray| -> Result<ArrayRef> {
        Ok(Arc::new(ListArray::try_new(
            Arc::new(Field::new_list_field(DataType::Struct(fields), false)),
            OffsetBuffer::from_lengths(lens),
            Arc::new(values),
            None,
        )?))
    };
    let columns: Vec<ArrayRef> = vec![
        u32s(&|i| f[i].function_id),
        Arc::new(StringArray::from_iter_values(
            f.iter().map(|x| x.name.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            f.iter().map(|x| x.origin.as_str()),
        )),
        Arc::new(StringArray::from_iter(f.iter().map(|x| x.file.as_deref()))),
        u32s(&|i| f[i].start_line),
        u32s(&|i| f[i].end_line),
        list(
            loop_fields(),
            f.iter().map(|x| x.loops.len()).collect(),
            loop_struct,
        )?,
        list(
            call_fields(),
            f.iter().map(|x| x.calls.len()).collect(),
            call_struct,
        )?,
        u32s(&|i| f[i].branches),
        u32s(&|i| f[i].cyclomatic),
        Arc::new(UInt32Array::from_iter(f.iter().map(|x| x.blocks))),
    ];
    Ok(RecordBatch::try_new(SCHEMA.clone(), columns)?)
}

/// Writes `map` as `<root>/ast/session_id=<session_id>/part-0.parquet`,
/// replacing an earlier one. Local stores only: a URL is refused with an
/// error meant to be printed as a note.
pub fn write_table(map: &AstMap, root: &Path, session_id: &str) -> Result<PathBuf> {
    let shown = root.display().to_string();
    if shown.contains("://") && !shown.starts_with("file://") {
        bail!("{shown}: the ast table is written to local stores only; not stored");
    }
    let root = match shown.strip_prefix("file://") {
        Some(p) => PathBuf::from(p),
        None => root.to_path_buf(),
    };
    if session_id.is_empty()
        || session_id.contains(['/', '\\', '\0'])
        || session_id.starts_with('.')
    {
        bail!("{session_id:?}: not a session id");
    }
    if !root.is_dir() {
        bail!("{}: no such directory", root.display());
    }
    let table = root.join(TABLE);
    let dir = table.join(format!("session_id={session_id}"));
    for d in [&table, &dir] {
        ensure_dir(d).map_err(|e| anyhow!("cannot create {}: {e}", d.display()))?;
    }
    let batch = batch(map).context("building the ast table")?;
    let path = dir.join("part-0.parquet");
    let tmp = dir.join(".part-0.parquet.tmp");
    let written = write_parquet(&tmp, &batch).and_then(|()| {
        fs::rename(&tmp, &path).map_err(|e| anyhow!("cannot rename {}: {e}", tmp.display()))
    });
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e.context(format!("writing {}", path.display())));
    }
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| anyhow!("cannot sync directory {}: {e}", dir.display()))?;
    Ok(path)
}

fn write_parquet(tmp: &Path, batch: &RecordBatch) -> Result<()> {
    let _ = fs::remove_file(tmp);
    let file = crate::compact::staging::create_file(tmp)?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .build();
    let mut writer = ArrowWriter::try_new(BufWriter::new(file), batch.schema(), Some(props))?;
    writer.write(batch)?;
    let mut out = writer.into_inner()?;
    out.flush()?;
    let file = out
        .into_inner()
        .map_err(|e| anyhow!("cannot write {}: {}", tmp.display(), e.error()))?;
    file.sync_all()
        .map_err(|e| anyhow!("cannot sync {}: {e}", tmp.display()))
}

/// Creates `path` with mode 0700 if missing; an existing directory is left
/// as it is (the table directory may be shared with other sessions).
fn ensure_dir(path: &Path) -> std::io::Result<()> {
    match fs::metadata(path) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "exists and is not a directory",
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)?;
    fs::set_permissions(path, Permissions::from_mode(DIR_MODE))
}
