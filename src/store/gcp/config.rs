//! `[stores.NAME]` with `kind = "gcp"`: the settings of a Google Secret Manager store, and
//! their checks.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::config::Section;
use crate::config::units::is_loopback;

#[derive(Debug, Clone, PartialEq)]
pub struct GcpStoreConfig {
    /// Project id or number.
    pub project: String,
    /// For regional secrets: the location, whose regional endpoint is then used.
    pub location: Option<String>,
    /// Replaces the endpoint (private access, tests); `http://` only for loopback.
    pub endpoint: Option<String>,
    /// A service-account key file; absent means Application Default Credentials.
    pub credentials: Option<PathBuf>,
    pub request_timeout: Duration,
    /// The whole of finding credentials or getting a token; `gcp_auth` sets none of its own.
    pub token_timeout: Duration,
    /// The first wait of `access` retries; Google's policy says 2 s.
    pub retry_backoff: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    project: Spanned<String>,
    location: Option<Spanned<String>>,
    endpoint: Option<Spanned<String>>,
    credentials: Option<Spanned<String>>,
    request_timeout: Option<Spanned<String>>,
    token_timeout: Option<Spanned<String>>,
    retry_backoff: Option<Spanned<String>>,
}

pub(super) fn configure(section: &mut Section<'_, '_>) -> Option<GcpStoreConfig> {
    let settings: Settings = section.parse()?;
    // Each optional setting is `Some(None)` when absent and `None` when invalid, so every one
    // is checked before any failure returns.
    let project = section.checked(&settings.project, "project", |p| check_project(p).map(|()| p.to_string()));
    let location = settings.location.as_ref().map_or(Some(None), |v| {
        section.checked(v, "location", |l| check_location(l).map(|()| l.to_string())).map(Some)
    });
    let endpoint = settings.endpoint.as_ref().map_or(Some(None), |v| {
        section.checked(v, "endpoint", |e| check_endpoint(e).map(|()| e.to_string())).map(Some)
    });
    let credentials = settings.credentials.as_ref().map_or(Some(None), |v| section.path(v, "credentials").map(Some));
    let request_timeout = section.duration(settings.request_timeout.as_ref(), Duration::from_secs(30), "request_timeout");
    let token_timeout = section.duration(settings.token_timeout.as_ref(), Duration::from_secs(10), "token_timeout");
    let retry_backoff = section.duration(settings.retry_backoff.as_ref(), Duration::from_secs(2), "retry_backoff");
    Some(GcpStoreConfig {
        project: project?,
        location: location?,
        endpoint: endpoint?,
        credentials: credentials?,
        request_timeout: request_timeout?,
        token_timeout: token_timeout?,
        retry_backoff: retry_backoff?,
    })
}

/// A project id (6 to 30 of a-z, 0-9, "-", starting with a letter) or a project number.
fn check_project(project: &str) -> Result<(), String> {
    let number = !project.is_empty() && project.len() <= 20 && project.bytes().all(|b| b.is_ascii_digit());
    let id = (6..=30).contains(&project.len())
        && project.starts_with(|c: char| c.is_ascii_lowercase())
        && !project.ends_with('-')
        && project.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    (number || id).then_some(()).ok_or_else(|| {
        format!("\"{project}\" is not a Google Cloud project id (6 to 30 of a-z, 0-9 and \"-\", starting with a letter) or number")
    })
}

pub(super) fn check_location(location: &str) -> Result<(), String> {
    let ok = !location.is_empty()
        && location.len() <= 63
        && location.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    ok.then_some(()).ok_or_else(|| format!("\"{location}\" is not a location such as \"europe-west3\" or \"us\""))
}

/// `https://HOST[:PORT]`, or `http://` to a loopback address: secrets never cross a network
/// unencrypted.
fn check_endpoint(endpoint: &str) -> Result<(), String> {
    let url = url::Url::parse(endpoint).map_err(|e| format!("\"{endpoint}\" is not a URL: {e}"))?;
    if url.path() != "/" || url.query().is_some() || !url.username().is_empty() {
        return Err(format!(
            "\"{endpoint}\": give only scheme, host and port, such as \"https://secretmanager.example.internal\""
        ));
    }
    match url.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(&url) => Ok(()),
        "http" => Err(format!("\"{endpoint}\": plain http is allowed only to a loopback address; use https")),
        other => Err(format!("\"{endpoint}\": unsupported scheme \"{other}\"; use https")),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::validate::fixtures::{config, problems};
    use crate::store::StoreConfig;

    #[test]
    fn gcp_stores() {
        let agent = r#"
[stores.edge]
kind = "gcp"
project = "acme-edge"
location = "europe-west3"

[stores.local]
kind = "gcp"
project = "435468002770"
endpoint = "http://127.0.0.1:8085"
credentials = "sa.json"
retry_backoff = "100ms"
"#;
        let config = config(agent, &[]);
        let StoreConfig::Gcp(edge) = &config.stores["edge"] else { panic!() };
        assert_eq!(
            (edge.project.as_str(), edge.location.as_deref(), edge.endpoint.as_deref()),
            ("acme-edge", Some("europe-west3"), None)
        );
        assert_eq!(edge.retry_backoff, Duration::from_secs(2));
        let StoreConfig::Gcp(local) = &config.stores["local"] else { panic!() };
        assert_eq!(local.credentials.as_deref(), Some(Path::new("/etc/keyturn/sa.json")));
        assert_eq!(local.retry_backoff, Duration::from_millis(100));

        let bad = "[stores.a]\nkind = \"gcp\"\nproject = \"Acme\"\nlocation = \"Europe West\"\nendpoint = \"http://10.0.0.8:8085\"\n";
        let got = problems(bad, &[]);
        assert!(
            got.iter().any(|p| p.contains("stores.a.project: \"Acme\" is not a Google Cloud project id")),
            "{got:#?}"
        );
        assert!(got.iter().any(|p| p.contains("stores.a.location: \"Europe West\" is not a location")), "{got:#?}");
        assert!(got.iter().any(|p| p.contains("plain http is allowed only to a loopback address")), "{got:#?}");
    }

    #[test]
    fn endpoints() {
        for good in [
            "https://secretmanager.googleapis.com",
            "https://sm.internal:8443/",
            "http://127.0.0.1:9",
            "http://[::1]:9",
            "http://localhost:9",
        ] {
            assert_eq!(check_endpoint(good), Ok(()), "{good}");
        }
        for bad in ["http://example.com", "ftp://127.0.0.1", "https://x/v1/projects", "https://u:p@x", "not a url"] {
            assert!(check_endpoint(bad).is_err(), "{bad}");
        }
    }
}
