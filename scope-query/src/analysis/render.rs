//! The ranked findings for people (text, Markdown) and machines (JSON).

use std::fmt::Write as _;

use super::{Analysis, Finding};
use crate::time::fmt_ns;

/// Output formats of `analyze`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Markdown,
    Json,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" | "table" => Ok(Format::Text),
            "markdown" | "md" => Ok(Format::Markdown),
            "json" => Ok(Format::Json),
            other => Err(format!("unknown format {other:?}: text, markdown or json")),
        }
    }
}

/// One evidence value for people: times as times, ratios as percentages.
fn value(e: &super::Evidence) -> String {
    let v = match e.unit {
        "ns" => fmt_ns(e.value),
        "ratio" if e.value <= 1.0 => format!("{:.1}%", 100.0 * e.value),
        _ if e.value.fract() == 0.0 && e.value.abs() < 1e15 => format!("{}", e.value as i64),
        _ => format!("{:.3}", e.value),
    };
    if e.estimated { format!("≈{v}") } else { v }
}

fn evidence_line(f: &Finding) -> String {
    f.evidence
        .iter()
        .map(|e| format!("{}={}", e.name, value(e)))
        .collect::<Vec<_>>()
        .join("  ")
}

pub fn render(a: &Analysis, format: Format) -> String {
    match format {
        Format::Text => text(a),
        Format::Markdown => markdown(a),
        Format::Json => json(a),
    }
}

fn text(a: &Analysis) -> String {
    let mut s = String::new();
    for h in &a.header {
        let _ = writeln!(s, "{h}");
    }
    let _ = writeln!(s, "{}\n", a.summary());
    if a.findings.is_empty() {
        let _ = writeln!(
            s,
            "no findings: no function stands out by any measure analyze has"
        );
    }
    for f in &a.findings {
        let _ = writeln!(
            s,
            "{:<4} {:<16} {}{}  severity {:.2}  confidence {:.2}{}",
            f.id,
            f.kind.as_str(),
            f.function,
            f.related
                .as_ref()
                .map(|r| format!(" (in {r})"))
                .unwrap_or_default(),
            f.severity,
            f.confidence,
            f.location
                .as_ref()
                .map(|l| format!("  at {l}"))
                .unwrap_or_default()
        );
        let _ = writeln!(s, "     {}", f.message);
        let _ = writeln!(s, "     {}", evidence_line(f));
    }
    for p in &a.predictions {
        let _ = writeln!(s, "{p}");
    }
    for n in &a.notes {
        let _ = writeln!(s, "note: {n}");
    }
    s
}

fn markdown(a: &Analysis) -> String {
    let mut s = String::from("# scope analyze\n\n");
    for h in &a.header {
        let _ = writeln!(s, "- {h}");
    }
    let _ = writeln!(s, "- {}\n", a.summary());
    let _ = writeln!(
        s,
        "| id | kind | function | severity | confidence | location | finding |\n| --- | --- | --- | ---: | ---: | --- | --- |"
    );
    for f in &a.findings {
        let _ = writeln!(
            s,
            "| {} | {} | `{}` | {:.2} | {:.2} | {} | {} |",
            f.id,
            f.kind,
            f.function,
            f.severity,
            f.confidence,
            f.location.as_deref().unwrap_or(""),
            f.message.replace('|', "\\|")
        );
    }
    let _ = writeln!(s, "\n## Evidence\n");
    for f in &a.findings {
        let _ = writeln!(s, "- **{}** `{}`: {}", f.id, f.function, evidence_line(f));
    }
    if !a.predictions.is_empty() {
        let _ = writeln!(s, "\n## Predictions\n");
        for p in &a.predictions {
            let _ = writeln!(s, "- {p}");
        }
    }
    if !a.notes.is_empty() {
        let _ = writeln!(s, "\n## Notes\n");
        for n in &a.notes {
            let _ = writeln!(s, "- {n}");
        }
    }
    s
}

/// One finding as a JSON object (evidence an object of numbers; the
/// estimated ones listed under `estimated`).
pub fn finding_json(f: &Finding) -> serde_json::Value {
    let evidence: serde_json::Map<String, serde_json::Value> = f
        .evidence
        .iter()
        .map(|e| (e.name.clone(), serde_json::json!(e.value)))
        .collect();
    let estimated: Vec<&str> = f
        .evidence
        .iter()
        .filter(|e| e.estimated)
        .map(|e| e.name.as_str())
        .collect();
    serde_json::json!({
        "id": f.id,
        "kind": f.kind.as_str(),
        "function": f.function,
        "related": f.related,
        "severity": f.severity,
        "confidence": f.confidence,
        "evidence": evidence,
        "estimated": estimated,
        "location": f.location,
        "message": f.message,
    })
}

fn json(a: &Analysis) -> String {
    let v = serde_json::json!({
        "session": a.session,
        "summary": {"calls": a.calls, "functions": a.functions, "top_level_ns": a.root_ns},
        "findings": a.findings.iter().map(finding_json).collect::<Vec<_>>(),
        "predictions": a.predictions,
        "notes": a.notes,
    });
    format!("{v:#}\n")
}
