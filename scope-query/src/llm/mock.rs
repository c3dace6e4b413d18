//! A deterministic answer built from the findings as sent (hashed names
//! included), without a network: tests and the demo. Each finding gets one
//! sentence, in order, citing its id.

use serde_json::Value;

use super::{Failure, Http, LlmConfig, Prompt, Provider, Target};

pub(crate) struct Mock {
    target: Target,
}

impl Mock {
    pub(crate) fn new(cfg: &LlmConfig) -> Mock {
        Mock {
            target: cfg.target(),
        }
    }
}

impl Provider for Mock {
    fn target(&self) -> &Target {
        &self.target
    }

    async fn send(&self, _http: &Http, prompt: &Prompt) -> Result<String, Failure> {
        Ok(answer(&prompt.facts))
    }
}

pub(crate) fn answer(facts: &[Value]) -> String {
    if facts.is_empty() {
        return "There are no findings, so there is nothing to explain.\n".to_string();
    }
    let s = |f: &Value, k: &str| f.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let mut out = String::new();
    for f in facts {
        let mut evidence: Vec<String> = Vec::new();
        if let Some(ev) = f.get("evidence").and_then(Value::as_object) {
            for (name, v) in ev {
                evidence.push(format!("{name} = {}", v.as_str().unwrap_or("")));
            }
        }
        let message = s(f, "message");
        // One sentence per finding, so its one citation covers all of it.
        let message = message.trim_end_matches('.').replace(". ", "; ");
        out.push_str(&format!(
            "[{}] `{}` is a {} finding: {}",
            s(f, "id"),
            s(f, "function"),
            s(f, "kind").replace('_', " "),
            message
        ));
        if let Some(r) = f.get("related").and_then(Value::as_str) {
            out.push_str(&format!(" (with `{r}`)"));
        }
        if evidence.is_empty() {
            out.push_str(".\n");
        } else {
            out.push_str(&format!(", per its evidence: {}.\n", evidence.join(", ")));
        }
    }
    out
}
