//! `scope_query::objstore` against a real S3-compatible server (moto on
//! loopback): whole-file uploads read back by boto3, DataFusion reading
//! Parquet through the store (the pattern `--data s3://…` uses), and the
//! one-line errors for an unreachable endpoint, a missing bucket and
//! rejected credentials.

mod objstore_support;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use arrow_array::{Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use object_store::ObjectStoreExt as _;
use objstore_support::{Moto, aws_env_for, boto3_list, closed_port};
use scope_query::objstore::{
    AccessErrorKind, Location, RemoteStore, check_access, open_location_with, upload_dir,
    upload_file,
};

fn remote(url: &str, env: Vec<(String, String)>) -> RemoteStore {
    let env: HashMap<String, String> = env.into_iter().collect();
    match open_location_with(url, &|k| env.get(k).cloned()).expect("open_location") {
        Location::Remote(r) => r,
        Location::Local(p) => panic!("{url} opened as the local path {}", p.display()),
    }
}

/// A small Parquet file with one Int64 column `x` holding `values`.
fn parquet_bytes(values: &[i64]) -> Vec<u8> {
    let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(Int64Array::from(values.to_vec()))],
    )
    .unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(Vec::new(), schema, None).unwrap();
    w.write(&batch).unwrap();
    w.into_inner().unwrap()
}

fn write(dir: &Path, rel: &str, bytes: &[u8]) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, bytes).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_list_and_read_back_through_moto() {
    let moto = Moto::start();
    moto.create_bucket("traces");
    let r = remote("s3://traces/team/a", moto.aws_env());
    check_access(&r).await.expect("moto accepts any key");

    let spool = tempfile::tempdir().unwrap();
    let files = [
        (
            "calls/session_id=s1/part-00000.parquet",
            parquet_bytes(&[1, 2, 3]),
        ),
        (
            "calls/session_id=s1/part-00001.parquet",
            parquet_bytes(&[4]),
        ),
        ("sessions/session_id=s1/part-0.parquet", parquet_bytes(&[7])),
    ];
    for (rel, bytes) in &files {
        write(spool.path(), rel, bytes);
    }
    // A write in progress is not uploaded.
    write(
        spool.path(),
        "calls/session_id=s1/.part-00002.parquet.tmp",
        b"half",
    );

    let report = upload_dir(&r, spool.path())
        .await
        .map_err(|(_, e)| e)
        .expect("upload_dir");
    assert_eq!(report.files, 3);
    assert_eq!(
        report.bytes,
        files.iter().map(|(_, b)| b.len() as u64).sum::<u64>()
    );
    // Uploaded files are gone locally; the temporary stays.
    assert!(!spool.path().join(files[0].0).exists());
    assert!(
        spool
            .path()
            .join("calls/session_id=s1/.part-00002.parquet.tmp")
            .exists()
    );

    // boto3 sees exactly these keys with these sizes.
    let mut listed = boto3_list(&moto.endpoint(), "traces", "team/a/");
    listed.sort();
    let mut expected: Vec<(String, u64)> = files
        .iter()
        .map(|(rel, b)| (format!("team/a/{rel}"), b.len() as u64))
        .collect();
    expected.sort();
    assert_eq!(listed, expected);

    // And the bytes read back through the store are the bytes written.
    for (rel, bytes) in &files {
        let got = r
            .store
            .get(&r.key(rel))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(got.as_ref(), bytes.as_slice(), "{rel}");
    }

    // A single file, over an existing key: replaced whole.
    let one = spool.path().join("one.parquet");
    let new = parquet_bytes(&[9, 9]);
    std::fs::write(&one, &new).unwrap();
    let n = upload_file(&r, &one, "sessions/session_id=s1/part-0.parquet")
        .await
        .unwrap();
    assert_eq!(n, new.len() as u64);
    let got = r
        .store
        .get(&r.key("sessions/session_id=s1/part-0.parquet"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(got.as_ref(), new.as_slice());
}

/// The pattern the reading commands use for `--data s3://…`: register the
/// bucket's store with DataFusion, then read the table's prefix with the
/// Hive column.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datafusion_reads_parquet_from_moto_through_the_store() {
    let moto = Moto::start();
    moto.create_bucket("lake");
    let r = remote("s3://lake/scope", moto.aws_env());
    for (rel, values) in [
        ("calls/session_id=a/part-00000.parquet", vec![1i64, 2, 3]),
        ("calls/session_id=a/part-00001.parquet", vec![10]),
        ("calls/session_id=b/part-00000.parquet", vec![100, 200]),
    ] {
        r.store
            .put(&r.key(rel), parquet_bytes(&values).into())
            .await
            .unwrap();
    }

    let ctx = SessionContext::new();
    ctx.register_object_store(&r.bucket_url(), Arc::clone(&r.store));
    let table_url = format!("{}/", r.url_of("calls"));
    assert_eq!(table_url, "s3://lake/scope/calls/");
    ctx.register_parquet(
        "calls",
        &table_url,
        ParquetReadOptions::default()
            .table_partition_cols(vec![("session_id".to_string(), DataType::Utf8)]),
    )
    .await
    .unwrap();
    let batches = ctx
        .sql("SELECT session_id, count(*) AS n, sum(x) AS s FROM calls GROUP BY session_id ORDER BY session_id")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let text = datafusion::arrow::util::pretty::pretty_format_batches(&batches)
        .unwrap()
        .to_string();
    let rows: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with("| a") || l.starts_with("| b"))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(rows, vec!["| a | 4 | 16 |", "| b | 2 | 300 |"], "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_endpoint_is_one_clear_line() {
    let port = closed_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let r = remote("s3://bkt/x", aws_env_for(&endpoint));
    let err = check_access(&r).await.unwrap_err();
    assert_eq!(err.kind, AccessErrorKind::Unreachable);
    assert_eq!(
        err.to_string(),
        format!("s3://bkt/x: cannot reach {endpoint} (connection refused)")
    );
    assert!(err.is_transient());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_bucket_is_one_clear_line() {
    let moto = Moto::start();
    let r = remote("s3://nosuch/x", moto.aws_env());
    let err = check_access(&r).await.unwrap_err();
    assert_eq!(err.kind, AccessErrorKind::NoSuchBucket);
    assert_eq!(
        err.to_string(),
        format!(
            "s3://nosuch/x: bucket 'nosuch' does not exist at {}",
            moto.endpoint()
        )
    );
    assert!(!err.is_transient());
}

/// moto checks keys once `INITIAL_NO_AUTH_ACTION_COUNT` requests have been
/// served: the bucket is made with the one free request, then every key is
/// unknown to its IAM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_credentials_are_one_clear_line() {
    let moto = Moto::start_on(closed_port(), &[("INITIAL_NO_AUTH_ACTION_COUNT", "1")]);
    moto.create_bucket("locked");
    let r = remote("s3://locked/x", moto.aws_env());
    let err = check_access(&r).await.unwrap_err();
    assert_eq!(err.kind, AccessErrorKind::Denied, "{err}");
    assert_eq!(
        err.to_string(),
        "s3://locked/x: access denied (InvalidAccessKeyId) (check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)"
    );
    let spool = tempfile::tempdir().unwrap();
    let f = spool.path().join("f.parquet");
    std::fs::write(&f, parquet_bytes(&[1])).unwrap();
    let err = upload_file(&r, &f, "f.parquet").await.unwrap_err();
    assert_eq!(err.kind, AccessErrorKind::Denied, "{err}");
    assert!(!err.to_string().contains('\n'), "{err}");
}
