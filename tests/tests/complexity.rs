//! Empirical complexity (`scope_query::analysis::complexity`) on real
//! recordings: the sorts of tests/fixtures/c/complexity.c and
//! tests/fixtures/rust/complexity.rs, whose growth in `n` is known
//! (insertion sort O(n²), merge sort O(n log n)), recorded with the real
//! eBPF programs and then fitted from the store.
//!
//! These recordings pass `--args`, a non-default flag: complexity needs the
//! arguments, and without them says so (the last test).

use std::path::Path;

use scope_query::analysis::complexity::{
    ArgSource, ComplexityOutcome, Model, NEEDS_ARGS, complexity_findings,
};
use scope_query::analysis::predict::{parse_query, predict_query};
use scope_query::{OpenOptions, Store};
use scope_tests::*;

fn analyse(out: &Path) -> ComplexityOutcome {
    let store = Store::open(out.to_str().unwrap(), &OpenOptions::default())
        .unwrap_or_else(|e| panic!("opening {}: {e:#}", out.display()));
    complexity_findings(&store).unwrap_or_else(|e| panic!("complexity: {e:#}"))
}

fn record_sorts(bin: &Path, extra: &[&str]) -> (tempfile::TempDir, AgentRun) {
    let dir = tempfile::tempdir().unwrap();
    let run = record_with(dir.path(), &["sort_*"], extra, &[bin.to_str().unwrap()]);
    assert_success(&run);
    assert!(run.stdout.contains("sorted 234"), "{}", run.stdout);
    (dir, run)
}

/// Both sorts get their model, in `n` (the second parameter; the first, a
/// pointer, is never taken for a size), over at least two decades.
fn check_sorts(lang: &str, out: &ComplexityOutcome) {
    for (function, model) in [
        ("sort_quadratic", Model::Quadratic),
        ("sort_nlogn", Model::NLogN),
    ] {
        let cf = out
            .fits
            .iter()
            .find(|f| f.function == function)
            .unwrap_or_else(|| panic!("{lang}: no fit for {function}: {out:#?}"));
        let f = &cf.fit;
        eprintln!(
            "{lang} {function}: {} slope {:.3} r2 {:.4} n {}..{} ({} calls, {} sizes), \
             a {:.0} ns, b {:.4} ns, call sigma {:.3}, BIC {:?}",
            f.model,
            f.loglog_slope,
            f.r2,
            f.n_min,
            f.n_max,
            f.points,
            f.groups,
            f.intercept,
            f.coef,
            f.call_sigma,
            f.criterion
                .iter()
                .map(|(m, b)| format!("{m} {b:.1}"))
                .collect::<Vec<_>>()
        );
        assert_eq!(f.model, model, "{lang} {function}: {cf:#?}");
        assert_eq!(
            (cf.param.as_str(), cf.arg, cf.source),
            ("n", 2, ArgSource::Value),
            "{lang} {function}"
        );
        assert!(f.n_max / f.n_min >= 100.0, "{lang} {function}: {f:?}");
        assert!(f.r2 > 0.9, "{lang} {function}: {f:?}");
        let finding = out
            .findings
            .iter()
            .find(|x| x.function == function)
            .unwrap_or_else(|| panic!("{lang}: no finding for {function}"));
        assert!(
            finding
                .message
                .starts_with(&format!("{function}: {model} in `n` (arg 2)")),
            "{}",
            finding.message
        );
        assert_eq!(finding.evidence("n_min"), Some(16.0));
    }
    // The quadratic sort's finding ranks above the n log n one.
    let sev = |name: &str| {
        out.findings
            .iter()
            .find(|x| x.function == name)
            .map(|x| x.severity)
            .unwrap()
    };
    assert!(sev("sort_quadratic") > sev("sort_nlogn"), "{out:#?}");
    assert_eq!(out.note, None);

    // The predictor answers from the same fits: ten times the largest n of
    // the quadratic sort takes about a hundred times as long.
    let (function, args) = parse_query("sort_quadratic n=163840").unwrap();
    let (cf, n, p) = predict_query(&out.fits, &function, &args).unwrap();
    let at_max = cf.fit.at(cf.fit.n_max);
    assert_eq!(n, 163_840.0);
    assert!(p.lo < p.ns && p.ns < p.hi, "{p:?}");
    assert!(
        p.ns / at_max > 50.0 && p.ns / at_max < 200.0,
        "{lang}: {p:?} against {at_max} at n_max"
    );
    eprintln!(
        "{lang} predict sort_quadratic n=163840: {:.3} s [{:.3}, {:.3}]",
        p.ns / 1e9,
        p.lo / 1e9,
        p.hi / 1e9
    );
}

#[test]
fn sorts_in_c_are_quadratic_and_n_log_n_in_n() {
    require_root();
    let bin = c_fixture_file("complexity", "1");
    let (dir, _) = record_sorts(&bin, &["--args"]);
    check_sorts("C -O1", &analyse(dir.path()));
}

#[test]
fn sorts_in_rust_are_quadratic_and_n_log_n_in_n() {
    require_root();
    let bin = rust_fixture_file("complexity", "1");
    let (dir, _) = record_sorts(&bin, &["--args"]);
    check_sorts("Rust -O1", &analyse(dir.path()));
}

#[test]
fn without_args_complexity_names_the_flag_it_needs() {
    require_root();
    let bin = c_fixture_file("complexity", "1");
    let (dir, _) = record_sorts(&bin, &[]);
    let out = analyse(dir.path());
    assert_eq!(out.note.as_deref(), Some(NEEDS_ARGS));
    assert!(NEEDS_ARGS.contains("--args"));
    assert!(out.findings.is_empty() && out.fits.is_empty(), "{out:#?}");
}
