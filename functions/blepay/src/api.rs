//! A small client for the phone and operator HTTP APIs (JSON).

use anyhow::{Context, anyhow};
use blepay_service::config::SecretString;
use serde_json::Value;

/// An HTTP answer: status and JSON body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl Answer {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body, or an error carrying the server's code and message.
    ///
    /// # Errors
    /// When the status is not 2xx.
    pub fn into_result(self) -> anyhow::Result<Value> {
        if self.ok() {
            Ok(self.body)
        } else {
            Err(anyhow!("server refused ({}): {}", self.status, self.body))
        }
    }

    /// A string field of the body.
    pub fn str(&self, field: &str) -> &str {
        self.body
            .get(field)
            .and_then(Value::as_str)
            .unwrap_or_default()
    }
}

/// A client for one server with one bearer token (held redacted: `Debug` does not show it).
#[derive(Debug, Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    token: SecretString,
}

impl Api {
    pub fn new(base: &str, token: &str) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: base.trim_end_matches('/').to_owned(),
            token: SecretString::new(token.to_owned()),
        }
    }

    /// GET a path.
    ///
    /// # Errors
    /// On a transport failure or a non-JSON body.
    pub async fn get(&self, path: &str) -> anyhow::Result<Answer> {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(self.token.expose())
            .send()
            .await;
        Self::answer(r.with_context(|| format!("GET {path}"))?).await
    }

    /// POST a JSON body to a path.
    ///
    /// # Errors
    /// On a transport failure or a non-JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Answer> {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(self.token.expose())
            .json(body)
            .send()
            .await;
        Self::answer(r.with_context(|| format!("POST {path}"))?).await
    }

    async fn answer(r: reqwest::Response) -> anyhow::Result<Answer> {
        let status = r.status().as_u16();
        let bytes = r.bytes().await?;
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        Ok(Answer { status, body })
    }
}

/// A random idempotency key (when the command line gives none).
pub fn random_key() -> String {
    hex::encode(rand::random::<[u8; 12]>())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_client_does_not_show_its_token() {
        let api = super::Api::new("http://127.0.0.1:1", "hunter2hunter2hunter2");
        let shown = format!("{api:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
