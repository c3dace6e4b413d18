//! The execution predictor: from a complexity [`Fit`], the time of a call
//! at a given n (`analyze --predict 'sort_items n=1e6'`), and what probing
//! costs: the probe-overhead arithmetic the governor (scope-agent's
//! `governor::model`) uses too, so a plan's predicted overhead and the
//! governor's are the same model.
//!
//! Intervals are 95% prediction intervals computed in log space (durations
//! have multiplicative noise): no bootstrap, so a prediction is
//! deterministic and instant.

use crate::analysis::complexity::{ArgSource, ComplexityFit, Fit, Model};

/// A predicted duration (ns) with its 95% interval.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Prediction {
    pub ns: f64,
    pub lo: f64,
    pub hi: f64,
}

/// Two-sided 95% quantile of Student's t with `df` degrees of freedom
/// (the governor's estimates use it too).
pub fn student_t95(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => T[0],
        1..=30 => T[df - 1],
        31..=60 => 2.0,
        _ => 1.96,
    }
}

/// Variance of ln(ns) of the model at `n` from the fit's parameters alone (delta
/// method on `ln(a + b·g(n))` with the fit's covariance of `(a, b)`).
fn model_log_var(fit: &Fit, n: f64) -> f64 {
    let y = fit.at(n);
    let g = if fit.model == Model::Constant {
        0.0
    } else {
        fit.model.g(n)
    };
    let [va, cab, vb] = fit.cov;
    ((va + 2.0 * g * cab + g * g * vb) / (y * y)).max(0.0)
}

/// The time of one call at size `n`: `ns` is the model's typical time (the
/// fit is to the groups' central durations, about their medians), `lo..hi`
/// a 95% prediction interval for a single call, in log space:
/// `exp(±t₀.₉₇₅(df) · √(Var ln ŷ + call_sigma²))` around it, where
/// `Var ln ŷ` is the parameters' uncertainty (delta method from
/// [`Fit::cov`]) and `call_sigma` the calls' own spread around the
/// model. Beyond `n_max` the model is assumed to keep holding: the
/// interval widens only as the coefficient's uncertainty grows with g(n).
/// A time too large for an f64 (O(2^n) far out) is infinite.
pub fn predict(fit: &Fit, n: f64) -> Prediction {
    let y = fit.at(n);
    if !y.is_finite() || y <= 0.0 {
        return Prediction {
            ns: y,
            lo: y,
            hi: y,
        };
    }
    let v = model_log_var(fit, n) + fit.call_sigma * fit.call_sigma;
    let half = student_t95(fit.df()) * v.sqrt();
    Prediction {
        ns: y,
        lo: y * (-half).exp(),
        hi: y * half.exp(),
    }
}

/// Parses `'FUNCTION KEY=VALUE…'` (`sort_items n=1e6`, `parse arg2=4096`):
/// the function (which may contain spaces, as C++ names do) and the
/// key/value pairs after it. Values are numbers (`1e6`, `65536`,
/// `1_000_000`, or with a `k`, `M`, `G` suffix), finite and ≥ 0.
pub fn parse_query(s: &str) -> Result<(String, Vec<(String, f64)>), String> {
    let words: Vec<&str> = s.split_whitespace().collect();
    let first_kv = words
        .iter()
        .position(|w| w.contains('='))
        .unwrap_or(words.len());
    if first_kv == 0 {
        return Err(if words.is_empty() {
            "--predict: empty query; expected 'FUNCTION ARG=N', e.g. 'sort_items n=1e6'".into()
        } else {
            format!("--predict {s:?}: no function before {:?}", words[0])
        });
    }
    let function = words[..first_kv].join(" ");
    let mut pairs: Vec<(String, f64)> = Vec::new();
    for w in &words[first_kv..] {
        let Some((k, v)) = w.split_once('=') else {
            return Err(format!(
                "--predict {s:?}: {w:?} is not ARG=N (every word after the first ARG=N must be one)"
            ));
        };
        if k.is_empty() {
            return Err(format!("--predict {s:?}: {w:?} has no argument name"));
        }
        let value = parse_number(v)
            .ok_or_else(|| format!("--predict {s:?}: {v:?} (for {k}) is not a number"))?;
        if !value.is_finite() || value < 0.0 {
            return Err(format!(
                "--predict {s:?}: {k}={v} must be a finite number ≥ 0"
            ));
        }
        if pairs.iter().any(|(p, _)| p == k) {
            return Err(format!("--predict {s:?}: {k} is given twice"));
        }
        pairs.push((k.to_string(), value));
    }
    if pairs.is_empty() {
        return Err(format!(
            "--predict {s:?}: no ARG=N; give the size, e.g. '{function} n=1e6'"
        ));
    }
    Ok((function, pairs))
}

fn parse_number(v: &str) -> Option<f64> {
    let v = v.replace('_', "");
    let (digits, scale) = match v.chars().last()? {
        'k' | 'K' => (&v[..v.len() - 1], 1e3),
        'M' => (&v[..v.len() - 1], 1e6),
        'G' => (&v[..v.len() - 1], 1e9),
        _ => (v.as_str(), 1.0),
    };
    digits.parse::<f64>().ok().map(|x| x * scale)
}

/// Answers a parsed query from the store's fits: the function's fit (by
/// exact name, else the one name ending in `::FUNCTION`), the n its key
/// gives (the fit's parameter name, or `argK` with K its 1-based position;
/// keys naming other arguments are ignored, since the model depends on
/// one), and the prediction.
pub fn predict_query<'a>(
    fits: &'a [ComplexityFit],
    function: &str,
    args: &[(String, f64)],
) -> Result<(&'a ComplexityFit, f64, Prediction), String> {
    let suffix = format!("::{function}");
    let cf = match fits.iter().find(|f| f.function == function) {
        Some(f) => f,
        None => {
            let like: Vec<&ComplexityFit> = fits
                .iter()
                .filter(|f| f.function.ends_with(&suffix))
                .collect();
            match like.as_slice() {
                [one] => *one,
                [] => {
                    return Err(format!(
                        "--predict: no complexity fit for {function:?} (functions with one: {})",
                        if fits.is_empty() {
                            "none".to_string()
                        } else {
                            fits.iter()
                                .map(|f| f.function.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        }
                    ));
                }
                many => {
                    return Err(format!(
                        "--predict: {function:?} names {} functions: {}",
                        many.len(),
                        many.iter()
                            .map(|f| f.function.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
            }
        }
    };
    let arg_key = format!("arg{}", cf.arg);
    let n = args
        .iter()
        .find(|(k, _)| *k == cf.param || *k == arg_key)
        .map(|&(_, v)| v)
        .ok_or_else(|| {
            let what = match cf.source {
                ArgSource::Value => "",
                ArgSource::StrLen => " (its string's length)",
            };
            format!(
                "--predict: {}'s time depends on `{}` ({arg_key}){what}; give {}=N",
                cf.function, cf.param, cf.param
            )
        })?;
    Ok((cf, n, predict(&cf.fit, n)))
}

/// The band the governor's calibration puts around a measured per-call
/// probe cost: the real cost lies within `[COST_BAND_LOW, COST_BAND_HIGH]`
/// times the measured one (a calibration on a loaded machine reads high,
/// cache effects on the target make it read low).
pub const COST_BAND_LOW: f64 = 0.5;
/// See [`COST_BAND_LOW`].
pub const COST_BAND_HIGH: f64 = 2.0;

/// Probe time (ns) of `predicted_calls` calls recorded at `per_call_ns`
/// each (entry + return, as `scope-agent calibrate` measures it), with the
/// calibration's band as interval.
pub fn probe_overhead(per_call_ns: f64, predicted_calls: f64) -> Prediction {
    let ns = per_call_ns.max(0.0) * predicted_calls.max(0.0);
    Prediction {
        ns,
        lo: ns * COST_BAND_LOW,
        hi: ns * COST_BAND_HIGH,
    }
}

/// Slowdown (percent) of probing every call of a function at size `n`:
/// the probe's cost against the call's own median time from `fit`, with an
/// interval from the calibration's band and the model's parameters (not
/// the spread of single calls: over many calls it averages out). The
/// number of calls cancels: every call pays one probe.
pub fn plan_overhead_pct(fit: &Fit, n: f64, per_call_ns: f64) -> Prediction {
    let y = fit.at(n);
    let probe = probe_overhead(per_call_ns, 1.0);
    if !y.is_finite() || y <= 0.0 {
        return Prediction {
            ns: 0.0,
            lo: 0.0,
            hi: 0.0,
        };
    }
    let half = student_t95(fit.df()) * model_log_var(fit, n).sqrt();
    let (y_lo, y_hi) = (y * (-half).exp(), y * half.exp());
    Prediction {
        ns: 100.0 * probe.ns / y,
        lo: 100.0 * probe.lo / y_hi,
        hi: 100.0 * probe.hi / y_lo,
    }
}

/// Slowdown (percent) of recording `calls` calls at `cost_ns` each, for a
/// target that used `cpu_ns` of CPU over `wall_ns`, `probe_ns` of it in the
/// probes themselves. The probes' time is set against the target's own
/// time: its CPU time when it is busy (several threads may use more CPU
/// than wall time), the wall time when it mostly waits (a probe on a thread
/// that sleeps between calls delays it only by the probe). The governor's
/// prediction (scope-agent `governor::model::overhead_pct` is this
/// function).
pub fn overhead_pct(calls: f64, cost_ns: f64, cpu_ns: f64, wall_ns: f64, probe_ns: f64) -> f64 {
    let own = cpu_ns.max(wall_ns);
    // Never below a hundredth of it: the calibration's error must not make
    // the prediction explode.
    let work = (own - probe_ns).max(own * 0.01).max(1.0);
    100.0 * calls * cost_ns / work
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::complexity::tests::{calls, geometric};
    use crate::analysis::complexity::{Model, fit};

    fn truth(model: Model, a: f64, b: f64, n: f64) -> f64 {
        a + b * model.g(n)
    }

    #[test]
    fn the_interval_holds_the_truth_and_most_new_calls() {
        // Fitted on n = 16..16384, predicted inside the range and 10× past
        // it: the true median lies in the interval, and so do at least 90%
        // of new calls drawn with the same noise (outliers included, 5%).
        for (model, a, b, sigma) in [
            (Model::Quadratic, 3000.0, 0.5, 0.2),
            (Model::NLogN, 3000.0, 3.0, 0.3),
            (Model::Linear, 1000.0, 2.0, 0.1),
        ] {
            let sizes = geometric(16.0, 16384.0, 2.0);
            let f = fit(&calls(model, a, b, &sizes, 8, sigma, 3)).unwrap();
            assert_eq!(f.model, model);
            for n in [1000.0, 163_840.0] {
                let p = predict(&f, n);
                let t = truth(model, a, b, n);
                assert!(p.lo < t && t < p.hi, "{model} at {n}: {p:?}, truth {t}");
                assert!(p.lo < p.ns && p.ns < p.hi, "{p:?}");
                let new = calls(model, a, b, &[n], 1000, sigma, 99);
                let inside = new.iter().filter(|&&(_, t)| p.lo <= t && t <= p.hi).count();
                assert!(inside >= 900, "{model} at {n}: {inside} of 1000 in {p:?}");
            }
        }
    }

    #[test]
    fn extrapolation_widens_the_interval() {
        let sizes = geometric(16.0, 16384.0, 2.0);
        let f = fit(&calls(Model::Quadratic, 3000.0, 0.5, &sizes, 8, 0.2, 5)).unwrap();
        let rel = |p: Prediction| p.hi / p.lo;
        assert!(rel(predict(&f, 1e7)) >= rel(predict(&f, 1000.0)));
    }

    #[test]
    fn exponential_far_out_is_infinite_not_a_panic() {
        let sizes: Vec<f64> = (1..=120).map(f64::from).collect();
        let f = fit(&calls(Model::Exponential, 1000.0, 1e-25, &sizes, 8, 0.1, 1)).unwrap();
        assert_eq!(f.model, Model::Exponential);
        assert!(predict(&f, 1e6).ns.is_infinite());
    }

    #[test]
    fn queries_parse() {
        assert_eq!(
            parse_query("sort_items n=1e6"),
            Ok(("sort_items".into(), vec![("n".into(), 1e6)]))
        );
        assert_eq!(
            parse_query("  std::sort<int> (x) arg2=64k  m=1_000 "),
            Ok((
                "std::sort<int> (x)".into(),
                vec![("arg2".into(), 64e3), ("m".into(), 1000.0)]
            ))
        );
        assert_eq!(parse_query("f n=2M").unwrap().1[0].1, 2e6);
    }

    #[test]
    fn bad_queries_say_what_is_wrong() {
        for (q, needle) in [
            ("", "empty query"),
            ("n=5", "no function"),
            ("sort_items", "no ARG=N"),
            ("sort_items n=abc", "not a number"),
            ("sort_items n=-4", "≥ 0"),
            ("sort_items n=inf", "finite"),
            ("sort_items =4", "no argument name"),
            ("sort_items n=4 n=5", "given twice"),
            ("sort_items n=4 extra", "not ARG=N"),
        ] {
            let e = parse_query(q).expect_err(q);
            assert!(e.contains(needle), "{q:?}: {e}");
        }
    }

    fn fits() -> Vec<ComplexityFit> {
        let sizes = geometric(16.0, 16384.0, 2.0);
        let f = fit(&calls(Model::Quadratic, 3000.0, 0.5, &sizes, 8, 0.2, 5)).unwrap();
        vec![ComplexityFit {
            function: "app::sort_items".into(),
            arg: 2,
            param: "n".into(),
            source: ArgSource::Value,
            fit: f,
            time_share: 0.5,
        }]
    }

    #[test]
    fn a_query_finds_its_fit_by_name_or_suffix_and_its_argument() {
        let fits = fits();
        for q in [
            "app::sort_items n=1e5",
            "sort_items arg2=1e5",
            "sort_items k=3 n=1e5",
        ] {
            let (f, args) = parse_query(q).unwrap();
            let (cf, n, p) = predict_query(&fits, &f, &args).unwrap();
            assert_eq!((cf.function.as_str(), n), ("app::sort_items", 1e5));
            assert_eq!(p, predict(&cf.fit, 1e5));
        }
        let e = predict_query(&fits, "sort_items", &[("k".into(), 3.0)]).unwrap_err();
        assert!(e.contains("depends on `n` (arg2)"), "{e}");
        let e = predict_query(&fits, "other", &[("n".into(), 3.0)]).unwrap_err();
        assert!(e.contains("no complexity fit for \"other\""), "{e}");
        assert!(e.contains("app::sort_items"), "{e}");
    }

    #[test]
    fn probe_overhead_is_calls_times_cost_within_the_band() {
        let p = probe_overhead(2000.0, 1e6);
        assert_eq!(p.ns, 2e9);
        assert_eq!((p.lo, p.hi), (2e9 * COST_BAND_LOW, 2e9 * COST_BAND_HIGH));
        // A 4 µs probe on calls of about 3 µs + 0.5·n² ns: large at n = 16,
        // negligible at n = 16384.
        let fits = fits();
        let small = plan_overhead_pct(&fits[0].fit, 16.0, 4000.0);
        let large = plan_overhead_pct(&fits[0].fit, 16384.0, 4000.0);
        assert!(small.ns > 50.0 && large.ns < 0.1, "{small:?} {large:?}");
        assert!(small.lo < small.ns && small.ns < small.hi, "{small:?}");
    }

    #[test]
    fn overhead_is_relative_to_the_targets_own_work() {
        let pct = overhead_pct(1000.0, 10_000.0, 1e9, 1e9, 1e7);
        assert!((pct - 100.0 * 1e7 / 9.9e8).abs() < 1e-9, "{pct}");
        assert!(overhead_pct(10.0, 1e6, 1e6, 1e6, 2e6) > 0.0);
    }
}
