//! Google AI Studio (`generativelanguage.googleapis.com`): POST
//! `/v1beta/models/{model}:generateContent` with the key in `x-goog-api-key`
//! (never in the URL, which logs and proxies keep). The request and answer
//! shapes are shared with Vertex AI.

use reqwest::header::HeaderMap;
use serde_json::{Value, json};

use super::{
    Credential, Failure, Http, LlmConfig, LlmError, PostBody, Prompt, Provider, Target,
    secret_header,
};

const DEFAULT_ENDPOINT: &str = "https://generativelanguage.googleapis.com";

pub(crate) struct Gemini {
    target: Target,
    url: String,
    headers: HeaderMap,
}

impl Gemini {
    pub(crate) fn new(cfg: &LlmConfig) -> Result<Gemini, LlmError> {
        let target = cfg.target();
        let Credential::ApiKey { key, from } = &cfg.credential else {
            return Err(LlmError::MissingKey {
                provider: cfg.provider,
                hint: "no API key: set GEMINI_API_KEY (or GOOGLE_API_KEY)".to_string(),
            });
        };
        let mut headers = HeaderMap::new();
        let v = secret_header(key.expose()).map_err(|reason| LlmError::Credentials {
            provider: cfg.provider,
            origin: from.clone(),
            reason: format!("the API key {reason}"),
        })?;
        headers.insert("x-goog-api-key", v);
        let base = cfg.endpoint.as_deref().unwrap_or(DEFAULT_ENDPOINT);
        let url = format!("{base}/v1beta/models/{}:generateContent", target.model);
        Ok(Gemini {
            target,
            url,
            headers,
        })
    }
}

impl Provider for Gemini {
    fn target(&self) -> &Target {
        &self.target
    }

    async fn send(&self, http: &Http, prompt: &Prompt) -> Result<String, Failure> {
        let body = request_body(prompt);
        let answer = http
            .post(
                &self.target,
                &self.url,
                self.headers.clone(),
                PostBody::Json(&body),
            )
            .await?;
        answer_text(http, &self.target, &answer)
    }
}

/// The `generateContent` request: the system text as `systemInstruction`,
/// the user text as one user turn.
pub(crate) fn request_body(prompt: &Prompt) -> Value {
    json!({
        "systemInstruction": { "parts": [ { "text": prompt.system } ] },
        "contents": [ { "role": "user", "parts": [ { "text": prompt.user } ] } ],
        "generationConfig": { "temperature": 0.2 },
    })
}

/// `candidates[0].content.parts[*].text` (thoughts skipped); a blocked
/// prompt or an answer without text is an empty answer with its reason.
pub(crate) fn answer_text(http: &Http, target: &Target, v: &Value) -> Result<String, Failure> {
    let Some(cands) = v.get("candidates").and_then(Value::as_array) else {
        if let Some(reason) = v
            .pointer("/promptFeedback/blockReason")
            .and_then(Value::as_str)
        {
            return Err(LlmError::Empty {
                target: target.clone(),
                reason: format!("the prompt was blocked: {reason}"),
            }
            .into());
        }
        if v.get("usageMetadata").is_some() {
            return Err(LlmError::Empty {
                target: target.clone(),
                reason: "no candidates".to_string(),
            }
            .into());
        }
        return Err(http.garbage(target, "a generateContent response", v));
    };
    let Some(first) = cands.first() else {
        return Err(LlmError::Empty {
            target: target.clone(),
            reason: "no candidates".to_string(),
        }
        .into());
    };
    let text: String = first
        .pointer("/content/parts")
        .and_then(Value::as_array)
        .map(|parts| {
            parts
                .iter()
                .filter(|p| p.get("thought").and_then(Value::as_bool) != Some(true))
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default();
    if text.trim().is_empty() {
        let reason = first
            .get("finishReason")
            .and_then(Value::as_str)
            .map(|r| format!("finish reason {r}"))
            .unwrap_or_else(|| "the candidate has no text".to_string());
        return Err(LlmError::Empty {
            target: target.clone(),
            reason,
        }
        .into());
    }
    Ok(text)
}
