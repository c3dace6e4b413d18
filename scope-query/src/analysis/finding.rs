//! A finding: one problem computed from the data, with its evidence as
//! numbers. An LLM only explains findings; it never adds one.

use std::fmt;

/// What kind of problem a finding names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Most self time, or most of the critical path of top-level calls.
    Bottleneck,
    /// The same child called many times per parent call (N+1).
    RepeatedWork,
    /// Deep recursion, or calls per root growing faster than linearly.
    Recursion,
    /// A long tail: p99 far above p50, with the calls that make it.
    LatencyOutlier,
    /// Durations in two modes.
    Bimodal,
    /// Wall time far above CPU time (sleep, locks, I/O).
    Waiting,
    /// The same short call repeated at regular intervals.
    Polling,
    /// Duration grows with an argument faster than the user may expect.
    Complexity,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::Bottleneck,
        Kind::RepeatedWork,
        Kind::Recursion,
        Kind::LatencyOutlier,
        Kind::Bimodal,
        Kind::Waiting,
        Kind::Polling,
        Kind::Complexity,
    ];

    /// The name stored in `findings.kind` and printed.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Bottleneck => "bottleneck",
            Kind::RepeatedWork => "repeated_work",
            Kind::Recursion => "recursion",
            Kind::LatencyOutlier => "latency_outlier",
            Kind::Bimodal => "bimodal",
            Kind::Waiting => "waiting",
            Kind::Polling => "polling",
            Kind::Complexity => "complexity",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown finding kind {s:?}"))
    }
}

/// One number behind a finding, e.g. `("self_share", 0.62, "ratio")`.
#[derive(Clone, Debug, PartialEq)]
pub struct Evidence {
    pub name: String,
    pub value: f64,
    /// `ns`, `calls`, `ratio`, `count`, … (for people; machines use `name`).
    pub unit: &'static str,
    /// The value is an estimate (a sampled function's count from `totals`).
    pub estimated: bool,
}

impl Evidence {
    pub fn new(name: &str, value: f64, unit: &'static str) -> Evidence {
        Evidence {
            name: name.to_string(),
            value,
            unit,
            estimated: false,
        }
    }
}

/// One computed problem. `id` (`F1`, `F2`, … in rank order) is what an LLM's
/// answer must cite.
#[derive(Clone, Debug, PartialEq)]
pub struct Finding {
    pub id: String,
    pub kind: Kind,
    /// The function the finding names (demangled).
    pub function: String,
    /// Another function involved: the repeated child, the caller of a
    /// waiting call, … (None when there is none).
    pub related: Option<String>,
    /// 0..=1: how much it matters (share of time it explains, mostly).
    pub severity: f64,
    /// 0..=1: how sure the evidence is (sample sizes, fit quality).
    pub confidence: f64,
    pub evidence: Vec<Evidence>,
    /// `file:line` of the function or of the call site the finding is about.
    pub location: Option<String>,
    /// One sentence for people, built from the evidence.
    pub message: String,
}

impl Finding {
    /// The value of the evidence named `name`.
    pub fn evidence(&self, name: &str) -> Option<f64> {
        self.evidence
            .iter()
            .find(|e| e.name == name)
            .map(|e| e.value)
    }
}
