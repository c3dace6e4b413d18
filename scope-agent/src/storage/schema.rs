//! Arrow schemas of the tables (public, for readers and tests) and the conversion of buffered rows into
//! [`RecordBatch`]es.
//!
//! None of the schemas has a `session_id` column: it comes from the Hive
//! partition directory (`session_id=<id>`); see the module docs of
//! [`crate::storage`].

use std::sync::{Arc, LazyLock};

use arrow_array::builder::{
    Int64Builder, ListBuilder, StringBuilder, UInt32Builder, UInt64Builder,
};
use arrow_array::{
    ArrayRef, BooleanArray, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
    UInt8Array, UInt32Array, UInt64Array,
};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef};

use super::{FunctionRow, SampleRow, SessionRow};
use crate::capture::{
    AggregateRecord, CallRecord, GovernorRecord, LossRecord, MarkerRecord, MetricsRecord,
    OffcpuRecord, TotalRecord,
};

/// Schema of `calls`. `parent_call_id` is null at a root, `duration_ns` and
/// `self_ns` are null when unknown. `args` (a list of Int64, one per
/// parameter, an element null when the parameter is not in an integer
/// register) and `ret` are null unless arguments were captured (`--args`).
/// `arg_strings` (a list of Utf8, one per parameter, an element null unless
/// the parameter is a readable `char *`) is null unless `--arg-strings`.
pub static CALLS: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("pid", DataType::UInt32, false),
        Field::new("tid", DataType::UInt32, false),
        Field::new("call_id", DataType::UInt64, false),
        Field::new("parent_call_id", DataType::UInt64, true),
        Field::new("function_id", DataType::UInt32, false),
        // Signed, so `depth - 1` in SQL never overflows at a root.
        Field::new("depth", DataType::Int32, false),
        Field::new("start_ns", DataType::Int64, false),
        Field::new("duration_ns", DataType::Int64, true),
        Field::new("self_ns", DataType::Int64, true),
        Field::new("flags", DataType::UInt8, false),
        Field::new("args", args_type(), true),
        Field::new("ret", DataType::Int64, true),
        Field::new("arg_strings", arg_strings_type(), true),
        // `--sched` (the default): the call's time on and off its CPU
        // (oncpu_ns + offcpu_ns = duration_ns); null without the
        // scheduler's events, for Go calls, and when the duration is null.
        Field::new("oncpu_ns", DataType::Int64, true),
        Field::new("offcpu_ns", DataType::Int64, true),
        // `--hooks`: the call id of the accept or read that started the
        // request the call served (null: none).
        Field::new("request_id", DataType::UInt64, true),
    ]))
});

/// Schema of `offcpu` (`--sched`): one row per interval a thread of the
/// target spent off its CPU. `call_id`/`function_id`: the innermost recorded
/// call open on the thread when it left (null: none). `waker_*`: who woke it
/// (null when it was preempted, or the wake-up was not seen; waker_tid 0 is
/// an interrupt on an idle CPU), and the innermost recorded call the waker
/// was in (null when it is not a thread of the target or was in none).
pub static OFFCPU: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("pid", DataType::UInt32, false),
        Field::new("tid", DataType::UInt32, false),
        Field::new("start_ns", DataType::Int64, false),
        Field::new("duration_ns", DataType::Int64, false),
        Field::new("preempted", DataType::Boolean, false),
        Field::new("call_id", DataType::UInt64, true),
        Field::new("function_id", DataType::UInt32, true),
        Field::new("waker_pid", DataType::UInt32, true),
        Field::new("waker_tid", DataType::UInt32, true),
        Field::new("waker_call_id", DataType::UInt64, true),
        Field::new("waker_function_id", DataType::UInt32, true),
    ]))
});

/// `List<Int64>` with nullable elements, as `ListBuilder<Int64Builder>` makes it.
fn args_type() -> DataType {
    DataType::List(Arc::new(Field::new("item", DataType::Int64, true)))
}

/// `List<Utf8>` with nullable elements, as `ListBuilder<StringBuilder>` makes it.
fn arg_strings_type() -> DataType {
    DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)))
}

/// Schema of `functions`.
pub static FUNCTIONS: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("function_id", DataType::UInt32, false),
        Field::new("name", DataType::Utf8, false),
        Field::new("symbol", DataType::Utf8, false),
        Field::new("module", DataType::Utf8, false),
        Field::new("build_id", DataType::Utf8, true),
        Field::new("address", DataType::UInt64, false),
        Field::new("size", DataType::UInt64, false),
        Field::new("file", DataType::Utf8, true),
        Field::new("line", DataType::UInt32, true),
        Field::new_list(
            "param_names",
            Field::new_list_field(DataType::Utf8, false),
            false,
        ),
        Field::new_list(
            "param_types",
            Field::new_list_field(DataType::Utf8, false),
            false,
        ),
        Field::new("return_type", DataType::Utf8, true),
        Field::new("language", DataType::Utf8, true),
        Field::new("inlined_count", DataType::UInt32, false),
        Field::new("inlined_into", DataType::Utf8, true),
        Field::new("call_file", DataType::Utf8, true),
        Field::new("call_line", DataType::UInt32, true),
    ]))
});

/// Schema of `losses`.
pub static LOSSES: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("cpu", DataType::UInt32, false),
        Field::new("start_ns", DataType::Int64, false),
        Field::new("end_ns", DataType::Int64, false),
        Field::new("lost", DataType::UInt64, false),
    ]))
});

/// Schema of `agent_metrics`: the agent's own figures, one row per status
/// tick (about a second). `ring_fill_pct` is null when the ring's positions
/// could not be read.
pub static AGENT_METRICS: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("ts_ns", DataType::Int64, false),
        Field::new("events", DataType::UInt64, false),
        Field::new("call_rows", DataType::UInt64, false),
        Field::new("lost", DataType::UInt64, false),
        Field::new("events_per_s", DataType::Float64, false),
        Field::new("ring_fill_pct", DataType::Float64, true),
        Field::new("agent_cpu_pct", DataType::Float64, false),
        Field::new("files_written", DataType::UInt64, false),
        Field::new("rows_buffered", DataType::UInt64, false),
    ]))
});

/// Schema of `governor`: the overhead governor's decisions, one row each.
/// `function_id` is null for a session-wide row (calibration, prediction,
/// backpressure), and so is `sample_n`; `calls_per_s` and `predicted_pct`
/// are null when unknown.
pub static GOVERNOR: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("ts_ns", DataType::Int64, false),
        Field::new("function_id", DataType::UInt32, true),
        Field::new("action", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, false),
        Field::new("calls_per_s", DataType::Float64, true),
        Field::new("predicted_pct", DataType::Float64, true),
        Field::new("sample_n", DataType::UInt32, true),
        Field::new("budget_pct", DataType::Float64, false),
    ]))
});

/// Schema of `aggregates`: per function and interval, what is known of the
/// calls that were not recorded one by one. `total_ns` and `log2_hist` (64
/// elements, element i counting durations in [2^i, 2^(i+1)) ns) are null for
/// `mode = 'warmup'`.
pub static AGGREGATES: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("function_id", DataType::UInt32, false),
        Field::new("start_ns", DataType::Int64, false),
        Field::new("end_ns", DataType::Int64, false),
        Field::new("mode", DataType::Utf8, false),
        Field::new("sample_n", DataType::UInt32, false),
        Field::new("observed_ns", DataType::UInt64, false),
        Field::new("calls_seen", DataType::UInt64, false),
        Field::new("total_ns", DataType::UInt64, true),
        Field::new("log2_hist", log2_hist_type(), true),
    ]))
});

/// `List<UInt64>` with nullable elements, as `ListBuilder<UInt64Builder>`
/// makes it (like `args`; the elements are never null in practice).
fn log2_hist_type() -> DataType {
    DataType::List(Arc::new(Field::new("item", DataType::UInt64, true)))
}

/// Schema of `totals`: how many times each probed function ran over the
/// session. `calls` is exact when `exact`, else an estimate whose 95%
/// interval is `[calls_low, calls_high]`; `calls` is null when no honest
/// estimate exists and `calls_high` when there is no upper bound (`method`
/// says which). `calls_recorded` is the function's rows in `calls`.
pub static TOTALS: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("function_id", DataType::UInt32, false),
        Field::new("calls", DataType::UInt64, true),
        Field::new("exact", DataType::Boolean, false),
        Field::new("calls_low", DataType::UInt64, false),
        Field::new("calls_high", DataType::UInt64, true),
        Field::new("calls_recorded", DataType::UInt64, false),
        Field::new("method", DataType::Utf8, false),
        Field::new("basis_function_id", DataType::UInt32, true),
        Field::new("total_ns", DataType::UInt64, true),
        Field::new("self_ns", DataType::UInt64, true),
    ]))
});

/// Schema of `sessions`.
pub static SESSIONS: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("host", DataType::Utf8, false),
        Field::new("pid", DataType::UInt32, false),
        Field::new("command", DataType::Utf8, false),
        Field::new("start_ns", DataType::Int64, false),
        Field::new("end_ns", DataType::Int64, false),
        Field::new("version", DataType::Utf8, false),
        Field::new("clock_offset_ns", DataType::Int64, false),
        Field::new("events", DataType::UInt64, false),
        Field::new("calls", DataType::UInt64, true),
        Field::new("calls_exact", DataType::Boolean, false),
        Field::new("calls_recorded", DataType::UInt64, false),
        Field::new("lost", DataType::UInt64, false),
        Field::new("max_overhead_pct", DataType::Float64, true),
        Field::new("predicted_full_pct", DataType::Float64, true),
        Field::new("predicted_full_at_least", DataType::Boolean, false),
        Field::new("predicted_pct", DataType::Float64, true),
        Field::new("measured_pct", DataType::Float64, true),
        Field::new("measured_low_pct", DataType::Float64, true),
        Field::new("measured_high_pct", DataType::Float64, true),
        Field::new("boot_id", DataType::Utf8, false),
        Field::new("utc_offset_ns", DataType::Int64, false),
        Field::new("utc_uncertainty_ns", DataType::Int64, true),
        Field::new("clock_sync", DataType::Utf8, false),
    ]))
});

/// Builds a `calls` batch: `parent_call_id == 0` and negative durations
/// become nulls.
pub(crate) fn calls_batch(rows: &[CallRecord]) -> Result<RecordBatch, ArrowError> {
    let non_negative = |v: i64| (v >= 0).then_some(v);
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt32Array::from_iter_values(rows.iter().map(|c| c.pid))),
        Arc::new(UInt32Array::from_iter_values(rows.iter().map(|c| c.tid))),
        Arc::new(UInt64Array::from_iter_values(
            rows.iter().map(|c| c.call_id),
        )),
        Arc::new(UInt64Array::from_iter(
            rows.iter()
                .map(|c| (c.parent_call_id != 0).then_some(c.parent_call_id)),
        )),
        Arc::new(UInt32Array::from_iter_values(
            rows.iter().map(|c| c.function_id),
        )),
        Arc::new(Int32Array::from_iter_values(
            rows.iter()
                .map(|c| i32::try_from(c.depth).unwrap_or(i32::MAX)),
        )),
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|c| c.start_ns),
        )),
        Arc::new(Int64Array::from_iter(
            rows.iter().map(|c| non_negative(c.duration_ns)),
        )),
        Arc::new(Int64Array::from_iter(
            rows.iter().map(|c| non_negative(c.self_ns)),
        )),
        Arc::new(UInt8Array::from_iter_values(rows.iter().map(|c| c.flags))),
        args_column(rows),
        Arc::new(Int64Array::from_iter(rows.iter().map(|c| c.ret))),
        arg_strings_column(rows),
        Arc::new(Int64Array::from_iter(rows.iter().map(|c| {
            let off = c.offcpu_ns.filter(|_| c.duration_ns >= 0)?;
            Some((c.duration_ns - off).max(0))
        }))),
        Arc::new(Int64Array::from_iter(rows.iter().map(|c| {
            c.offcpu_ns
                .filter(|_| c.duration_ns >= 0)
                .map(|off| off.min(c.duration_ns))
        }))),
        Arc::new(UInt64Array::from_iter(rows.iter().map(|c| c.request_id))),
    ];
    RecordBatch::try_new(CALLS.clone(), columns)
}

/// Schema of `markers` (`-u`): one row per USDT probe fired. `args`: its
/// arguments as the note's specs give them (an element null for a form
/// scope cannot read); `call_id`/`function_id`: the innermost recorded
/// call open on the thread (null: none).
pub static MARKERS: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("pid", DataType::UInt32, false),
        Field::new("tid", DataType::UInt32, false),
        Field::new("time_ns", DataType::Int64, false),
        Field::new("probe_id", DataType::UInt32, false),
        Field::new("args", args_type(), false),
        Field::new("call_id", DataType::UInt64, true),
        Field::new("function_id", DataType::UInt32, true),
    ]))
});

/// Schema of `usdt_probes` (`-u`): the USDT probes attached. `semaphore`:
/// the file offset of its semaphore (null: none); `args`: the note's
/// argument specs as written (`-4@%eax 8@16(%rbp)`).
pub static USDT_PROBES: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("probe_id", DataType::UInt32, false),
        Field::new("provider", DataType::Utf8, false),
        Field::new("name", DataType::Utf8, false),
        Field::new("module", DataType::Utf8, false),
        Field::new("address", DataType::UInt64, false),
        Field::new("semaphore", DataType::UInt64, true),
        Field::new("args", DataType::Utf8, false),
        Field::new("arg_count", DataType::UInt32, false),
    ]))
});

/// Builds a `markers` batch.
pub(crate) fn markers_batch(rows: &[MarkerRecord]) -> Result<RecordBatch, ArrowError> {
    let mut args = ListBuilder::with_capacity(Int64Builder::new(), rows.len());
    for r in rows {
        for a in &r.args {
            args.values().append_option(*a);
        }
        args.append(true);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.pid))),
        Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.tid))),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.time_ns))),
        Arc::new(UInt32Array::from_iter_values(
            rows.iter().map(|r| r.probe_id),
        )),
        Arc::new(args.finish()),
        Arc::new(UInt64Array::from_iter(rows.iter().map(|r| r.call_id))),
        Arc::new(UInt32Array::from_iter(rows.iter().map(|r| r.function_id))),
    ];
    RecordBatch::try_new(MARKERS.clone(), columns)
}

/// Builds the `usdt_probes` batch.
pub(crate) fn usdt_probes_batch(
    rows: &[crate::probe::usdt::PlannedUsdt],
) -> Result<RecordBatch, ArrowError> {
    let strings = |f: &dyn Fn(&crate::probe::usdt::PlannedUsdt) -> String| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(rows.iter().map(f)))
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.id))),
        strings(&|r| r.provider.clone()),
        strings(&|r| r.name.clone()),
        strings(&|r| r.module.display().to_string()),
        Arc::new(UInt64Array::from_iter_values(
            rows.iter().map(|r| r.address),
        )),
        Arc::new(UInt64Array::from_iter(
            rows.iter().map(|r| r.semaphore_offset),
        )),
        strings(&|r| r.args_text.clone()),
        Arc::new(UInt32Array::from_iter_values(
            rows.iter().map(|r| r.arg_count as u32),
        )),
    ];
    RecordBatch::try_new(USDT_PROBES.clone(), columns)
}

/// Builds an `offcpu` batch.
pub(crate) fn offcpu_batch(rows: &[OffcpuRecord]) -> Result<RecordBatch, ArrowError> {
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.pid))),
        Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.tid))),
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| r.start_ns),
        )),
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| r.duration_ns),
        )),
        Arc::new(BooleanArray::from_iter(
            rows.iter().map(|r| Some(r.preempted)),
        )),
        Arc::new(UInt64Array::from_iter(rows.iter().map(|r| r.call_id))),
        Arc::new(UInt32Array::from_iter(rows.iter().map(|r| r.function_id))),
        Arc::new(UInt32Array::from_iter(rows.iter().map(|r| r.waker_pid))),
        Arc::new(UInt32Array::from_iter(rows.iter().map(|r| r.waker_tid))),
        Arc::new(UInt64Array::from_iter(rows.iter().map(|r| r.waker_call_id))),
        Arc::new(UInt32Array::from_iter(
            rows.iter().map(|r| r.waker_function_id),
        )),
    ];
    RecordBatch::try_new(OFFCPU.clone(), columns)
}

fn args_column(rows: &[CallRecord]) -> ArrayRef {
    let captured = rows.iter().filter(|c| c.args.is_some()).count();
    let mut b = ListBuilder::with_capacity(
        Int64Builder::with_capacity(captured * scope_common::MAX_ARGS),
        rows.len(),
    );
    for row in rows {
        match &row.args {
            Some(args) => {
                for i in 0..usize::from(args.len) {
                    b.values().append_option(args.get(i));
                }
                b.append(true);
            }
            None => b.append_null(),
        }
    }
    Arc::new(b.finish())
}

fn arg_strings_column(rows: &[CallRecord]) -> ArrayRef {
    let mut b = ListBuilder::with_capacity(arrow_array::builder::StringBuilder::new(), rows.len());
    for row in rows {
        match &row.arg_strings {
            Some(strings) => {
                for s in strings.iter() {
                    b.values().append_option(s.as_deref());
                }
                b.append(true);
            }
            None => b.append_null(),
        }
    }
    Arc::new(b.finish())
}

/// Schema of `samples`: one row per on-CPU sample of the target (cpu-clock,
/// 99 Hz per CPU). `stack` holds the user return addresses leaf first;
/// `frames` the same frames symbolized (`module+0xoff` or `[unknown]` when
/// no symbol covers the address); both empty and `stack_id` null when the
/// kernel could not take the stack.
pub static SAMPLES: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("pid", DataType::UInt32, false),
        Field::new("tid", DataType::UInt32, false),
        Field::new("time_ns", DataType::Int64, false),
        Field::new("cpu", DataType::UInt32, false),
        Field::new(
            "stack",
            DataType::List(Arc::new(Field::new("item", DataType::UInt64, true))),
            false,
        ),
        Field::new(
            "frames",
            DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
            false,
        ),
        Field::new("stack_id", DataType::Int32, true),
    ]))
});

/// Builds a `samples` batch.
pub(crate) fn samples_batch(rows: &[SampleRow]) -> Result<RecordBatch, ArrowError> {
    let mut stack = ListBuilder::new(UInt64Builder::new());
    let mut frames = ListBuilder::new(StringBuilder::new());
    for r in rows {
        for &a in &r.stack {
            stack.values().append_value(a);
        }
        stack.append(true);
        for f in r.frames.iter() {
            frames.values().append_value(f);
        }
        frames.append(true);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.pid))),
        Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.tid))),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.time_ns))),
        Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.cpu))),
        Arc::new(stack.finish()),
        Arc::new(frames.finish()),
        Arc::new(Int32Array::from_iter(rows.iter().map(|r| r.stack_id))),
    ];
    RecordBatch::try_new(SAMPLES.clone(), columns)
}

/// Builds a `losses` batch.
pub(crate) fn losses_batch(rows: &[LossRecord]) -> Result<RecordBatch, ArrowError> {
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt32Array::from_iter_values(rows.iter().map(|l| l.cpu))),
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|l| l.start_ns),
        )),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|l| l.end_ns))),
        Arc::new(UInt64Array::from_iter_values(rows.iter().map(|l| l.lost))),
    ];
    RecordBatch::try_new(LOSSES.clone(), columns)
}

/// Builds an `agent_metrics` batch.
pub(crate) fn metrics_batch(rows: &[MetricsRecord]) -> Result<RecordBatch, ArrowError> {
    let u64s = |f: fn(&MetricsRecord) -> u64| -> ArrayRef {
        Arc::new(UInt64Array::from_iter_values(rows.iter().map(f)))
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|m| m.ts_ns))),
        u64s(|m| m.events),
        u64s(|m| m.call_rows),
        u64s(|m| m.lost),
        Arc::new(Float64Array::from_iter_values(
            rows.iter().map(|m| m.events_per_s),
        )),
        Arc::new(Float64Array::from_iter(
            rows.iter().map(|m| m.ring_fill_pct),
        )),
        Arc::new(Float64Array::from_iter_values(
            rows.iter().map(|m| m.agent_cpu_pct),
        )),
        u64s(|m| m.files_written),
        u64s(|m| m.rows_buffered),
    ];
    RecordBatch::try_new(AGENT_METRICS.clone(), columns)
}

/// Builds a `governor` batch.
pub(crate) fn governor_batch(rows: &[GovernorRecord]) -> Result<RecordBatch, ArrowError> {
    let strings = |f: fn(&GovernorRecord) -> &str| -> ArrayRef {
        let mut b = StringBuilder::with_capacity(rows.len(), 0);
        for r in rows {
            b.append_value(f(r));
        }
        Arc::new(b.finish())
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|g| g.ts_ns))),
        Arc::new(UInt32Array::from_iter(rows.iter().map(|g| g.function_id))),
        strings(|g| g.action),
        strings(|g| &g.reason),
        Arc::new(Float64Array::from_iter(rows.iter().map(|g| g.calls_per_s))),
        Arc::new(Float64Array::from_iter(
            rows.iter().map(|g| g.predicted_pct),
        )),
        Arc::new(UInt32Array::from_iter(rows.iter().map(|g| g.sample_n))),
        Arc::new(Float64Array::from_iter_values(
            rows.iter().map(|g| g.budget_pct),
        )),
    ];
    RecordBatch::try_new(GOVERNOR.clone(), columns)
}

/// Builds an `aggregates` batch.
pub(crate) fn aggregates_batch(rows: &[AggregateRecord]) -> Result<RecordBatch, ArrowError> {
    let u64s = |f: fn(&AggregateRecord) -> u64| -> ArrayRef {
        Arc::new(UInt64Array::from_iter_values(rows.iter().map(f)))
    };
    let mut mode = StringBuilder::with_capacity(rows.len(), 0);
    for r in rows {
        mode.append_value(r.mode);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt32Array::from_iter_values(
            rows.iter().map(|a| a.function_id),
        )),
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|a| a.start_ns),
        )),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|a| a.end_ns))),
        Arc::new(mode.finish()),
        Arc::new(UInt32Array::from_iter_values(
            rows.iter().map(|a| a.sample_n),
        )),
        u64s(|a| a.observed_ns),
        u64s(|a| a.calls_seen),
        Arc::new(UInt64Array::from_iter(rows.iter().map(|a| a.total_ns))),
        log2_hist_column(rows),
    ];
    RecordBatch::try_new(AGGREGATES.clone(), columns)
}

fn log2_hist_column(rows: &[AggregateRecord]) -> ArrayRef {
    let values: usize = rows
        .iter()
        .filter_map(|a| a.log2_hist.as_ref().map(Vec::len))
        .sum();
    let mut b = ListBuilder::with_capacity(UInt64Builder::with_capacity(values), rows.len());
    for row in rows {
        match &row.log2_hist {
            Some(hist) => {
                b.values().append_slice(hist);
                b.append(true);
            }
            None => b.append_null(),
        }
    }
    Arc::new(b.finish())
}

/// Builds a `functions` batch.
pub(crate) fn functions_batch(rows: &[FunctionRow]) -> Result<RecordBatch, ArrowError> {
    let strings = |f: fn(&FunctionRow) -> &str| -> ArrayRef {
        let mut b = StringBuilder::with_capacity(rows.len(), 0);
        for r in rows {
            b.append_value(f(r));
        }
        Arc::new(b.finish())
    };
    let optional = |f: fn(&FunctionRow) -> Option<&str>| -> ArrayRef {
        let mut b = StringBuilder::with_capacity(rows.len(), 0);
        for r in rows {
            b.append_option(f(r));
        }
        Arc::new(b.finish())
    };
    let lists = |f: fn(&FunctionRow) -> &[String]| -> ArrayRef {
        let mut b = ListBuilder::new(StringBuilder::new())
            .with_field(Field::new_list_field(DataType::Utf8, false));
        for r in rows {
            for v in f(r) {
                b.values().append_value(v);
            }
            b.append(true);
        }
        Arc::new(b.finish())
    };
    let mut line = UInt32Builder::with_capacity(rows.len());
    for r in rows {
        line.append_option(r.line);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt32Array::from_iter_values(
            rows.iter().map(|r| r.function_id),
        )),
        strings(|r| &r.name),
        strings(|r| &r.symbol),
        strings(|r| &r.module),
        optional(|r| r.build_id.as_deref()),
        Arc::new(UInt64Array::from_iter_values(
            rows.iter().map(|r| r.address),
        )),
        Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.size))),
        optional(|r| r.file.as_deref()),
        Arc::new(line.finish()),
        lists(|r| &r.param_names),
        lists(|r| &r.param_types),
        optional(|r| r.return_type.as_deref()),
        optional(|r| r.language.as_deref()),
        Arc::new(UInt32Array::from_iter_values(
            rows.iter().map(|r| r.inlined_count),
        )),
        optional(|r| r.inlined_into.as_deref()),
        optional(|r| r.call_file.as_deref()),
        Arc::new(UInt32Array::from(
            rows.iter().map(|r| r.call_line).collect::<Vec<_>>(),
        )),
    ];
    RecordBatch::try_new(FUNCTIONS.clone(), columns)
}

/// Builds the one-row `sessions` batch.
pub(crate) fn session_batch(s: &SessionRow) -> Result<RecordBatch, ArrowError> {
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![s.host.as_str()])),
        Arc::new(UInt32Array::from(vec![s.pid])),
        Arc::new(StringArray::from(vec![s.command.as_str()])),
        Arc::new(Int64Array::from(vec![s.start_ns])),
        Arc::new(Int64Array::from(vec![s.end_ns])),
        Arc::new(StringArray::from(vec![s.version.as_str()])),
        Arc::new(Int64Array::from(vec![s.clock_offset_ns])),
        Arc::new(UInt64Array::from(vec![s.events])),
        Arc::new(UInt64Array::from(vec![s.calls])),
        Arc::new(BooleanArray::from(vec![s.calls_exact])),
        Arc::new(UInt64Array::from(vec![s.calls_recorded])),
        Arc::new(UInt64Array::from(vec![s.lost])),
        Arc::new(Float64Array::from(vec![s.max_overhead_pct])),
        Arc::new(Float64Array::from(vec![s.predicted_full_pct])),
        Arc::new(BooleanArray::from(vec![s.predicted_full_at_least])),
        Arc::new(Float64Array::from(vec![s.predicted_pct])),
        Arc::new(Float64Array::from(vec![s.measured_pct])),
        Arc::new(Float64Array::from(vec![s.measured_low_pct])),
        Arc::new(Float64Array::from(vec![s.measured_high_pct])),
        Arc::new(StringArray::from(vec![s.boot_id.as_str()])),
        Arc::new(Int64Array::from(vec![s.utc_offset_ns])),
        Arc::new(Int64Array::from(vec![s.utc_uncertainty_ns])),
        Arc::new(StringArray::from(vec![s.clock_sync.as_str()])),
    ];
    RecordBatch::try_new(SESSIONS.clone(), columns)
}

/// Builds a `totals` batch.
pub(crate) fn totals_batch(rows: &[TotalRecord]) -> Result<RecordBatch, ArrowError> {
    let mut method = StringBuilder::with_capacity(rows.len(), 0);
    for r in rows {
        method.append_value(r.method);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt32Array::from_iter_values(
            rows.iter().map(|r| r.function_id),
        )),
        Arc::new(UInt64Array::from_iter(rows.iter().map(|r| r.calls))),
        Arc::new(BooleanArray::from_iter(rows.iter().map(|r| Some(r.exact)))),
        Arc::new(UInt64Array::from_iter_values(
            rows.iter().map(|r| r.calls_low),
        )),
        Arc::new(UInt64Array::from_iter(rows.iter().map(|r| r.calls_high))),
        Arc::new(UInt64Array::from_iter_values(
            rows.iter().map(|r| r.calls_recorded),
        )),
        Arc::new(method.finish()),
        Arc::new(UInt32Array::from_iter(
            rows.iter().map(|r| r.basis_function_id),
        )),
        Arc::new(UInt64Array::from_iter(rows.iter().map(|r| r.total_ns))),
        Arc::new(UInt64Array::from_iter(rows.iter().map(|r| r.self_ns))),
    ];
    RecordBatch::try_new(TOTALS.clone(), columns)
}
