//! A small client for Prometheus' HTTP query API (`GET /api/v1/query`), as a Prometheus
//! server and Google Cloud Managed Service for Prometheus both serve it: instant queries, the
//! vector answer, and the error envelope (`{"status":"error","errorType":…,"error":…}`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

use crate::config::{Fleet, FleetAuth};

/// What answers a query larger than this is not read: a fleet's series for one secret are a
/// few hundred bytes per node.
const MAX_ANSWER: usize = 64 << 20;

/// A source of bearer tokens for Managed Service for Prometheus: the identity of a `gcp`
/// store.
#[cfg(feature = "gcp")]
pub type GoogleTokens = std::sync::Arc<dyn gcp_auth::TokenProvider>;
/// A build without the `gcp` feature has no `gcp` store, so no Google identity to use.
#[cfg(not(feature = "gcp"))]
pub type GoogleTokens = std::convert::Infallible;

/// The scope Managed Service for Prometheus' query API needs.
#[cfg(feature = "gcp")]
const MONITORING_READ: &str = "https://www.googleapis.com/auth/monitoring.read";

pub struct Prometheus {
    client: reqwest::Client,
    base: String,
    auth: Auth,
    timeout: Duration,
}

enum Auth {
    None,
    TokenFile(PathBuf),
    Google(GoogleTokens),
}

impl std::fmt::Debug for Prometheus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prometheus").field("base", &crate::http::shown(&self.base)).finish_non_exhaustive()
    }
}

/// One series of an instant vector: its labels, its value and the time of the sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).map_or("", String::as_str)
    }

    /// The value as a time (a `_timestamp_seconds` series, or `timestamp()`).
    pub fn time(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs_f64(self.value.max(0.0))
    }
}

#[derive(Deserialize)]
struct Answer {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct Data {
    #[serde(rename = "resultType")]
    result_type: String,
    result: Vec<Series>,
}

#[derive(Deserialize)]
struct Series {
    metric: BTreeMap<String, String>,
    value: (f64, String),
}

impl Prometheus {
    /// A client for `[fleet]`; `google` is the identity of its `auth = "google"` store.
    pub fn new(fleet: &Fleet, google: Option<GoogleTokens>) -> Result<Prometheus, String> {
        let auth = match (&fleet.auth, google) {
            (FleetAuth::None, _) => Auth::None,
            (FleetAuth::BearerTokenFile(path), _) => Auth::TokenFile(path.clone()),
            (FleetAuth::Google { .. }, Some(tokens)) => Auth::Google(tokens),
            (FleetAuth::Google { store }, None) => {
                return Err(format!("[fleet] auth = \"google\": the identity of store {store} is not available"));
            }
        };
        let client = crate::http::client(&fleet.prometheus, fleet.timeout).map_err(|e| {
            format!(
                "cannot make an HTTP client for {}: {}",
                crate::http::shown(&fleet.prometheus),
                crate::http::error(e)
            )
        })?;
        Ok(Prometheus { client, base: fleet.prometheus.clone(), auth, timeout: fleet.timeout })
    }

    /// Where queries go, for messages.
    pub fn shown(&self) -> String {
        crate::http::shown(&self.base)
    }

    /// An instant query; the answer must be a vector.
    pub async fn query(&self, query: &str) -> Result<Vec<Sample>, String> {
        let mut url = url::Url::parse(&format!("{}/api/v1/query", self.base))
            .map_err(|e| format!("{} is not a URL: {e}", self.shown()))?;
        url.query_pairs_mut().append_pair("query", query);
        let mut request = self.client.get(url);
        match &self.auth {
            Auth::None => {}
            Auth::TokenFile(path) => {
                let token = crate::http::read_token(path, self.timeout).await?;
                request = request.bearer_auth(token.trim());
            }
            #[cfg(not(feature = "gcp"))]
            Auth::Google(never) => match *never {},
            #[cfg(feature = "gcp")]
            Auth::Google(tokens) => {
                let token = tokens
                    .token(&[MONITORING_READ])
                    .await
                    .map_err(|e| format!("cannot get a Google access token for {}: {e}", self.shown()))?;
                request = request.bearer_auth(token.as_str());
            }
        }
        let failed = |what: String| format!("{} ({}): {what}", self.shown(), short(query));
        let response = request.send().await.map_err(|e| failed(crate::http::error(e)))?;
        let status = response.status();
        let body = read_limited(response).await.map_err(failed)?;
        let answer: Answer = serde_json::from_slice(&body).map_err(|e| {
            failed(format!(
                "answered {status} with something that is not Prometheus' JSON (line {} column {})",
                e.line(),
                e.column()
            ))
        })?;
        if answer.status != "success" {
            return Err(failed(format!(
                "answered {status}: {}: {}",
                answer.error_type.as_deref().unwrap_or("error"),
                answer.error.as_deref().unwrap_or("no message")
            )));
        }
        let data = answer.data.ok_or_else(|| failed("a success with no data".into()))?;
        if data.result_type != "vector" {
            return Err(failed(format!("answered a {} where a vector was expected", data.result_type)));
        }
        data.result
            .into_iter()
            .map(|series| {
                let value = series
                    .value
                    .1
                    .parse::<f64>()
                    .map_err(|_| failed(format!("a sample value {:?} that is not a number", series.value.1)))?;
                Ok(Sample { labels: series.metric, value })
            })
            .collect()
    }
}

async fn read_limited(mut response: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(crate::http::error)? {
        if body.len() + chunk.len() > MAX_ANSWER {
            return Err(format!("an answer larger than {MAX_ANSWER} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A query, shortened for messages.
fn short(query: &str) -> String {
    let name: String = query.chars().take_while(|c| *c != '{').collect();
    name.trim().chars().take(80).collect()
}

/// `text` as a PromQL string literal's contents.
pub fn quote(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

/// `names` as an anchored regular expression that matches exactly them, for `=~`.
pub fn any_of<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    let escaped: Vec<String> = names.into_iter().map(regex_escape).collect();
    quote(&escaped.join("|"))
}

fn regex_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_alternatives_are_quoted_for_promql() {
        assert_eq!(quote(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(any_of(["edge-1.site", "edge-2"]), r"edge-1\\.site|edge-2");
    }
}
