//! `http = { url = "http://127.0.0.1:8000/-/reload", bearer_token_file = "/etc/api/reload-token" }`:
//! a POST with a small JSON body naming the policy, version and bundles, never the value.
//! Sent under [`crate::http`]'s policy: no redirect is followed and no proxy is used for
//! loopback; the token file is read as hostile input ([`crate::sys::read_small_file`]).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{Change, Kind, NotifyError, Resources, Sent};
use crate::config::Section;
use crate::config::units::check_outbound_url;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// https anywhere, plain http only to a loopback address (the request may carry a token).
    pub url: String,
    pub timeout: Duration,
    /// A file whose contents are sent as `Authorization: Bearer ...`; read at each attempt so
    /// it can be rotated too.
    pub bearer_token_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    url: Spanned<String>,
    timeout: Option<Spanned<String>>,
    bearer_token_file: Option<Spanned<String>>,
}

#[derive(Debug)]
pub struct Http {
    url: String,
    timeout: Duration,
    bearer_token_file: Option<PathBuf>,
    client: reqwest::Client,
}

impl Kind for Http {
    const NAME: &'static str = "http";
    type Config = HttpConfig;

    fn configure(section: &mut Section<'_, '_>) -> Option<HttpConfig> {
        let settings: Settings = section.parse()?;
        let url = check_outbound_url(settings.url.get_ref())
            .map_err(|m| section.problem(Some(settings.url.span()), "url", m))
            .ok();
        let token = match &settings.bearer_token_file {
            Some(path) => section.absolute_path(path, "bearer_token_file").map(Some),
            None => Some(None),
        };
        let timeout = section.duration(settings.timeout.as_ref(), Duration::from_secs(5), "timeout");
        url?;
        Some(HttpConfig { url: settings.url.into_inner(), timeout: timeout?, bearer_token_file: token? })
    }

    fn new(config: &HttpConfig, resources: &Resources) -> Self {
        Http {
            url: config.url.clone(),
            timeout: config.timeout,
            bearer_token_file: config.bearer_token_file.clone(),
            client: resources.http_client(&config.url),
        }
    }

    async fn notify(&self, change: &Change) -> Result<Sent, NotifyError> {
        let body = serde_json::json!({
            "policy": change.policy,
            "version": change.version.as_str(),
            "bundles": change.bundles.iter().map(|b| b.display().to_string()).collect::<Vec<_>>(),
        });
        let mut request = self.client.post(&self.url).timeout(self.timeout).json(&body);
        if let Some(path) = &self.bearer_token_file {
            // Read at every attempt: the token may be rotated by keyturn itself.
            let token = crate::http::read_token(path, self.timeout).await.map_err(NotifyError::Failed)?;
            request = request.bearer_auth(token.trim());
        }
        let shown = crate::http::shown(&self.url);
        let response = request
            .send()
            .await
            .map_err(|e| NotifyError::Failed(format!("POST {shown}: {}", crate::http::error(e))))?;
        let status = response.status();
        if status.is_success() {
            Ok(Sent::Done)
        } else if status.is_redirection() {
            Err(NotifyError::Failed(format!("POST {shown} answered {status}; redirects are not followed")))
        } else {
            Err(NotifyError::Failed(format!("POST {shown} answered {status}")))
        }
    }
}
