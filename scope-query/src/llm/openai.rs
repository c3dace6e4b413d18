//! OpenAI-compatible chat completions: POST `{base}/chat/completions` with
//! `model` and `messages`; the key (optional for local servers such as
//! llama.cpp, vLLM and Ollama) as `Authorization: Bearer`.

use reqwest::header::{AUTHORIZATION, HeaderMap};
use serde_json::{Value, json};

use super::{
    Credential, Failure, Http, LlmConfig, LlmError, PostBody, Prompt, Provider, Target,
    secret_header,
};

const DEFAULT_BASE: &str = "https://api.openai.com/v1";

pub(crate) struct OpenAi {
    target: Target,
    url: String,
    headers: HeaderMap,
}

impl OpenAi {
    pub(crate) fn new(cfg: &LlmConfig) -> Result<OpenAi, LlmError> {
        let target = cfg.target();
        let mut headers = HeaderMap::new();
        if let Credential::ApiKey { key, from } = &cfg.credential {
            let v = secret_header(&format!("Bearer {}", key.expose())).map_err(|reason| {
                LlmError::Credentials {
                    provider: cfg.provider,
                    origin: from.clone(),
                    reason: format!("the API key {reason}"),
                }
            })?;
            headers.insert(AUTHORIZATION, v);
        }
        let base = cfg.endpoint.as_deref().unwrap_or(DEFAULT_BASE);
        Ok(OpenAi {
            target,
            url: format!("{base}/chat/completions"),
            headers,
        })
    }
}

impl Provider for OpenAi {
    fn target(&self) -> &Target {
        &self.target
    }

    async fn send(&self, http: &Http, prompt: &Prompt) -> Result<String, Failure> {
        let body = json!({
            "model": self.target.model,
            "messages": [
                { "role": "system", "content": prompt.system },
                { "role": "user", "content": prompt.user },
            ],
            "temperature": 0.2,
            "stream": false,
        });
        let v = http
            .post(
                &self.target,
                &self.url,
                self.headers.clone(),
                PostBody::Json(&body),
            )
            .await?;
        let Some(choices) = v.get("choices").and_then(Value::as_array) else {
            return Err(http.garbage(&self.target, "a chat completion", &v));
        };
        let first = choices.first();
        let text = first
            .and_then(|c| c.pointer("/message/content"))
            .and_then(Value::as_str)
            .unwrap_or("");
        if text.trim().is_empty() {
            let reason = first
                .and_then(|c| c.get("finish_reason"))
                .and_then(Value::as_str)
                .map(|r| format!("finish reason {r}"))
                .unwrap_or_else(|| "no message content".to_string());
            return Err(LlmError::Empty {
                target: self.target.clone(),
                reason,
            }
            .into());
        }
        Ok(text.to_string())
    }
}
