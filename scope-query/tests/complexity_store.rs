//! `complexity_findings` over a store written here the way the agent
//! writes one (Hive layout, its column types), with durations made to grow
//! in a known way: which argument is n, pointers and partial calls left
//! out, a string's length as n, and the note when nothing has arguments.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow_array::builder::{Int64Builder, ListBuilder, StringBuilder};
use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray, UInt8Array, UInt32Array};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;

use scope_query::analysis::complexity::{ArgSource, Model, NEEDS_ARGS, complexity_findings};
use scope_query::{OpenOptions, Store};

/// One function: name, parameter names and types.
struct Func {
    name: &'static str,
    params: &'static [(&'static str, &'static str)],
}

/// One call: function id (index), args, strings, duration, flags.
struct Call {
    f: u32,
    args: Option<Vec<Option<i64>>>,
    strs: Option<Vec<Option<String>>>,
    ns: i64,
    flags: u8,
}

fn write(path: &Path, batch: &RecordBatch) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut w = ArrowWriter::try_new(File::create(path).unwrap(), batch.schema(), None).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
}

fn write_store(root: &Path, funcs: &[Func], calls: &[Call]) {
    let list = |t: DataType, null: bool| DataType::List(Arc::new(Field::new("item", t, null)));
    let mut names = ListBuilder::new(StringBuilder::new()).with_field(Arc::new(Field::new(
        "item",
        DataType::Utf8,
        false,
    )));
    let mut types = ListBuilder::new(StringBuilder::new()).with_field(Arc::new(Field::new(
        "item",
        DataType::Utf8,
        false,
    )));
    for f in funcs {
        for (n, t) in f.params {
            names.values().append_value(n);
            types.values().append_value(t);
        }
        names.append(true);
        types.append(true);
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("function_id", DataType::UInt32, false),
        Field::new("name", DataType::Utf8, false),
        Field::new("param_names", list(DataType::Utf8, false), false),
        Field::new("param_types", list(DataType::Utf8, false), false),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(UInt32Array::from_iter_values(0..funcs.len() as u32)),
        Arc::new(StringArray::from_iter_values(funcs.iter().map(|f| f.name))),
        Arc::new(names.finish()),
        Arc::new(types.finish()),
    ];
    write(
        &root.join("functions/session_id=s1/part-0.parquet"),
        &RecordBatch::try_new(schema, cols).unwrap(),
    );

    let mut args = ListBuilder::new(Int64Builder::new());
    let mut strs = ListBuilder::new(StringBuilder::new());
    for c in calls {
        match &c.args {
            Some(v) => {
                for x in v {
                    args.values().append_option(*x);
                }
                args.append(true);
            }
            None => args.append(false),
        }
        match &c.strs {
            Some(v) => {
                for x in v {
                    strs.values().append_option(x.as_deref());
                }
                strs.append(true);
            }
            None => strs.append(false),
        }
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("function_id", DataType::UInt32, false),
        Field::new("duration_ns", DataType::Int64, true),
        Field::new("self_ns", DataType::Int64, true),
        Field::new("flags", DataType::UInt8, false),
        Field::new("args", list(DataType::Int64, true), true),
        Field::new("arg_strings", list(DataType::Utf8, true), true),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(UInt32Array::from_iter_values(calls.iter().map(|c| c.f))),
        Arc::new(Int64Array::from_iter_values(calls.iter().map(|c| c.ns))),
        Arc::new(Int64Array::from_iter_values(calls.iter().map(|c| c.ns))),
        Arc::new(UInt8Array::from_iter_values(calls.iter().map(|c| c.flags))),
        Arc::new(args.finish()),
        Arc::new(strs.finish()),
    ];
    write(
        &root.join("calls/session_id=s1/part-00000.parquet"),
        &RecordBatch::try_new(schema, cols).unwrap(),
    );
}

/// A small deterministic noise factor in 0.9..1.1.
fn noise(i: usize) -> f64 {
    0.9 + 0.2 * ((i * 7919) % 101) as f64 / 100.0
}

const FUNCS: [Func; 3] = [
    // (a pointer, n, a flag that does not matter): time ∝ n².
    Func {
        name: "sort_items",
        params: &[("items", "int *"), ("n", "long"), ("verbose", "int")],
    },
    // (text, k): time ∝ strlen(text); k spans widely but does not matter.
    Func {
        name: "parse",
        params: &[("text", "const char *"), ("k", "unsigned long")],
    },
    // n over only 10×: no fit, and why.
    Func {
        name: "narrow",
        params: &[("n", "int")],
    },
];

fn calls(with_args: bool) -> Vec<Call> {
    let mut out = Vec::new();
    let mut i = 0;
    let mut n = 16i64;
    while n <= 16384 {
        for r in 0..6 {
            i += 1;
            let ns = ((2000.0 + 0.5 * (n * n) as f64) * noise(i)) as i64;
            out.push(Call {
                f: 0,
                // The pointer grows with n too, and more than 100×: it must
                // not be taken for the size.
                args: with_args.then(|| vec![Some(n * 1_000_000), Some(n), Some(r % 2)]),
                strs: None,
                ns,
                flags: 0,
            });
            let len = n as usize;
            out.push(Call {
                f: 1,
                args: with_args.then(|| vec![Some(0x5555_0000), Some(1 + (i as i64 * 37) % 5000)]),
                strs: with_args.then(|| vec![Some("x".repeat(len)), None]),
                ns: ((1500.0 + 3.0 * len as f64) * noise(i + 1)) as i64,
                flags: 0,
            });
            out.push(Call {
                f: 2,
                args: with_args.then(|| vec![Some(10 + n % 90)]),
                strs: None,
                ns: 1000,
                flags: 0,
            });
        }
        // A call whose return was lost (flag 2): its "duration" is not one.
        out.push(Call {
            f: 0,
            args: with_args.then(|| vec![Some(0), Some(n), Some(0)]),
            strs: None,
            ns: 1,
            flags: 2,
        });
        n *= 2;
    }
    out
}

#[test]
fn the_size_argument_is_found_by_name_and_pointers_are_not_sizes() {
    let dir = tempfile::tempdir().unwrap();
    write_store(dir.path(), &FUNCS, &calls(true));
    let store = Store::open(dir.path().to_str().unwrap(), &OpenOptions::default()).unwrap();
    let out = complexity_findings(&store).unwrap();
    assert_eq!(out.note, None);

    let sort = out
        .fits
        .iter()
        .find(|f| f.function == "sort_items")
        .unwrap();
    assert_eq!(sort.fit.model, Model::Quadratic, "{sort:#?}");
    assert_eq!(
        (sort.arg, sort.param.as_str(), sort.source),
        (2, "n", ArgSource::Value)
    );
    assert_eq!(sort.fit.points, 66, "the call with flag 2 is left out");

    let parse = out.fits.iter().find(|f| f.function == "parse").unwrap();
    assert_eq!(parse.fit.model, Model::Linear, "{parse:#?}");
    assert_eq!(
        (parse.arg, parse.param.as_str(), parse.source),
        (1, "text", ArgSource::StrLen)
    );

    assert!(out.fits.iter().all(|f| f.function != "narrow"));
    let (_, why) = out.skipped.iter().find(|(f, _)| f == "narrow").unwrap();
    assert!(why.contains("`n` (arg 1)") && why.contains("100×"), "{why}");

    let f = out
        .findings
        .iter()
        .find(|f| f.function == "sort_items")
        .unwrap();
    assert!(
        f.message
            .starts_with("sort_items: O(n^2) in `n` (arg 2), r²="),
        "{}",
        f.message
    );
    assert_eq!(f.id, "");
    assert_eq!(f.evidence("n_max"), Some(16384.0));
    let p = out.findings.iter().find(|f| f.function == "parse").unwrap();
    assert!(
        p.message.contains("O(n) in the length of `text` (arg 1)"),
        "{}",
        p.message
    );
    assert!(f.severity > p.severity);
}

#[test]
fn without_arguments_the_note_names_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    write_store(dir.path(), &FUNCS, &calls(false));
    let store = Store::open(dir.path().to_str().unwrap(), &OpenOptions::default()).unwrap();
    let out = complexity_findings(&store).unwrap();
    assert_eq!(out.note.as_deref(), Some(NEEDS_ARGS));
    assert!(out.fits.is_empty() && out.findings.is_empty());
}
