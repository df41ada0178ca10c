//! `http = { url = "http://127.0.0.1:8000/-/reload", bearer_token_file = "/etc/api/reload-token" }`:
//! a POST with a small JSON body naming the policy, version and bundles, never the value.

use std::path::PathBuf;
use std::time::Duration;

use zeroize::Zeroizing;

use super::{Change, NotifyError, Sent};
use crate::config::HttpNotify;

#[derive(Debug)]
pub struct Http {
    url: String,
    timeout: Duration,
    bearer_token_file: Option<PathBuf>,
    client: reqwest::Client,
}

impl Http {
    pub fn new(config: &HttpNotify, client: reqwest::Client) -> Self {
        Http {
            url: config.url.clone(),
            timeout: config.timeout,
            bearer_token_file: config.bearer_token_file.clone(),
            client,
        }
    }

    pub async fn notify(&self, change: &Change) -> Result<Sent, NotifyError> {
        let body = serde_json::json!({
            "policy": change.policy,
            "version": change.version.as_str(),
            "bundles": change.bundles.iter().map(|b| b.display().to_string()).collect::<Vec<_>>(),
        });
        let mut request = self.client.post(&self.url).timeout(self.timeout).json(&body);
        if let Some(path) = &self.bearer_token_file {
            // Read at every attempt: the token may be rotated by keyturn itself.
            let token = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
                NotifyError::Failed(format!("cannot read the bearer token file {}: {e}", path.display()))
            })?);
            request = request.bearer_auth(token.trim());
        }
        let response = request
            .send()
            .await
            .map_err(|e| NotifyError::Failed(format!("POST {}: {}", self.url, crate::error_chain(&e))))?;
        let status = response.status();
        if status.is_success() {
            Ok(Sent::Done)
        } else {
            Err(NotifyError::Failed(format!("POST {} answered {status}", self.url)))
        }
    }
}
