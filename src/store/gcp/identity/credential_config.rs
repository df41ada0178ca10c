//! Google's credential configuration for Workload Identity Federation (`"type":
//! "external_account"`, AIP-4117; `shared/reference/gcp-identity/CONTRACT.md` §1), read and
//! checked into a typed [`ExternalAccountConfig`]. Pure: no I/O.
//!
//! Read: `audience`, `subject_token_type`, `token_url`, `credential_source` (a `file`, a `url`
//! with `headers`, or an `executable`; `format` `text` or `json` with
//! `subject_token_field_name`), `service_account_impersonation_url` with
//! `service_account_impersonation.token_lifetime_seconds`, `workforce_pool_user_project`,
//! `quota_project_id`, `universe_domain`. `token_info_url` is not used. Other fields are ignored,
//! as Google's libraries ignore them. Refused with a message that says why: AWS-sourced and
//! X.509 certificate sources, STS client authentication (`client_id`), universes other than
//! `googleapis.com`, and URLs that would carry a token in clear text over a network (plain
//! `http://` is allowed to loopback, and for a subject-token URL to link-local metadata
//! addresses too).
//!
//! Every problem of a file is reported at once.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Google's STS, where `token_url` points unless the file says otherwise.
pub const GOOGLE_TOKEN_URL: &str = "https://sts.googleapis.com/v1/token";
/// AIP-4117's bounds on an executable's timeout, and its default.
const EXECUTABLE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
const EXECUTABLE_TIMEOUT_RANGE: (u64, u64) = (5_000, 120_000);
/// Google's bounds on `service_account_impersonation.token_lifetime_seconds`, and its default.
const LIFETIME_DEFAULT: Duration = Duration::from_secs(3600);
const LIFETIME_RANGE: (u64, u64) = (600, 43_200);

/// A checked external-account configuration.
#[derive(Clone, PartialEq)]
pub struct ExternalAccountConfig {
    /// The workload or workforce pool provider's full resource name.
    pub audience: String,
    pub subject_token_type: String,
    pub token_url: String,
    pub source: SubjectTokenSource,
    pub impersonation: Option<Impersonation>,
    /// Workforce pools only: the project billed for the exchange (STS `options.userProject`).
    pub workforce_pool_user_project: Option<String>,
    /// Sent as `x-goog-user-project` with every Secret Manager request.
    pub quota_project_id: Option<String>,
}

/// Where the subject token comes from; read again at every exchange.
#[derive(Clone, PartialEq)]
pub enum SubjectTokenSource {
    File { path: PathBuf, format: TokenFormat },
    Url { url: String, headers: Vec<(String, String)>, format: TokenFormat },
    Executable { command: Vec<String>, timeout: Duration, output_file: Option<PathBuf> },
}

#[derive(Debug, Clone, PartialEq)]
pub enum TokenFormat {
    /// The whole content is the token (surrounding whitespace trimmed).
    Text,
    /// A JSON object; the token is the string at this field.
    Json { field: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Impersonation {
    /// IAM Credentials' `…/serviceAccounts/EMAIL:generateAccessToken`.
    pub url: String,
    /// The service account, read from the URL.
    pub account: String,
    pub lifetime: Duration,
}

impl fmt::Debug for ExternalAccountConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExternalAccountConfig")
            .field("audience", &self.audience)
            .field("token_url", &self.token_url)
            .field("source", &self.source)
            .field("impersonation", &self.impersonation)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for SubjectTokenSource {
    // Header values may be credentials themselves (a CI system's token-request bearer).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubjectTokenSource::File { path, format } => {
                f.debug_struct("File").field("path", path).field("format", format).finish()
            }
            SubjectTokenSource::Url { url, headers, format } => {
                let names: Vec<&str> = headers.iter().map(|(name, _)| name.as_str()).collect();
                f.debug_struct("Url").field("url", url).field("headers", &names).field("format", format).finish()
            }
            SubjectTokenSource::Executable { command, timeout, output_file } => f
                .debug_struct("Executable")
                .field("command", &command.first())
                .field("timeout", timeout)
                .field("output_file", output_file)
                .finish(),
        }
    }
}

impl SubjectTokenSource {
    /// "file /var/run/…/token", "URL https://…", "command /usr/local/bin/…": for messages.
    pub fn describe(&self) -> String {
        match self {
            SubjectTokenSource::File { path, .. } => format!("file {}", path.display()),
            SubjectTokenSource::Url { url, .. } => format!("URL {}", without_query(url)),
            SubjectTokenSource::Executable { command, .. } => {
                format!("command {}", command.first().map(String::as_str).unwrap_or_default())
            }
        }
    }
}

/// A URL without its query, which may carry parameters a message need not repeat.
fn without_query(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or(url)
}

#[derive(Deserialize)]
struct Raw {
    #[serde(rename = "type")]
    kind: Option<String>,
    audience: Option<String>,
    subject_token_type: Option<String>,
    token_url: Option<String>,
    credential_source: Option<RawSource>,
    service_account_impersonation_url: Option<String>,
    service_account_impersonation: Option<RawImpersonation>,
    workforce_pool_user_project: Option<String>,
    quota_project_id: Option<String>,
    universe_domain: Option<String>,
    client_id: Option<String>,
}

#[derive(Deserialize)]
struct RawSource {
    file: Option<String>,
    url: Option<String>,
    headers: Option<BTreeMap<String, String>>,
    format: Option<RawFormat>,
    executable: Option<RawExecutable>,
    environment_id: Option<String>,
    certificate: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawFormat {
    #[serde(rename = "type")]
    kind: Option<String>,
    subject_token_field_name: Option<String>,
}

#[derive(Deserialize)]
struct RawExecutable {
    command: Option<String>,
    timeout_millis: Option<u64>,
    output_file: Option<String>,
}

#[derive(Deserialize)]
struct RawImpersonation {
    token_lifetime_seconds: Option<u64>,
}

impl ExternalAccountConfig {
    /// Reads and checks a configuration file's text. The error lists every problem.
    pub fn parse(text: &[u8]) -> Result<ExternalAccountConfig, String> {
        let raw: Raw = serde_json::from_slice(text).map_err(|e| format!("not a credential configuration: {e}"))?;
        let mut problems = Vec::new();
        let need = |field: Option<String>, name: &str, problems: &mut Vec<String>| match field {
            Some(value) if !value.is_empty() => Some(value),
            _ => {
                problems.push(format!("{name} is missing"));
                None
            }
        };
        if raw.kind.as_deref() != Some("external_account") {
            problems.push(format!("type is {:?}, not \"external_account\"", raw.kind.unwrap_or_default()));
        }
        let audience = need(raw.audience, "audience", &mut problems);
        let subject_token_type = need(raw.subject_token_type, "subject_token_type", &mut problems);
        let token_url = raw.token_url.unwrap_or_else(|| GOOGLE_TOKEN_URL.to_string());
        if let Err(problem) = check_url(&token_url, false) {
            problems.push(format!("token_url {problem}"));
        }
        if raw.client_id.is_some() {
            problems.push(
                "client_id is set: STS client authentication is not supported by keyturn; use a configuration \
                 without client_id and client_secret"
                    .into(),
            );
        }
        if let Some(universe) = raw.universe_domain.filter(|u| u != "googleapis.com") {
            problems.push(format!(
                "universe_domain is {universe:?}: keyturn talks to the googleapis.com universe only"
            ));
        }
        let workforce = audience.as_deref().is_some_and(is_workforce_audience);
        if raw.workforce_pool_user_project.is_some() && !workforce {
            problems.push(
                "workforce_pool_user_project is set, but audience is not a workforce pool provider \
                 (//iam.googleapis.com/locations/global/workforcePools/POOL/providers/PROVIDER)"
                    .into(),
            );
        }
        let source = match raw.credential_source {
            Some(source) => read_source(source, &mut problems),
            None => {
                problems.push("credential_source is missing".into());
                None
            }
        };
        let impersonation = match raw.service_account_impersonation_url {
            Some(url) => read_impersonation(url, raw.service_account_impersonation, &mut problems),
            None => None,
        };
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        Ok(ExternalAccountConfig {
            audience: audience.unwrap_or_default(),
            subject_token_type: subject_token_type.unwrap_or_default(),
            token_url,
            source: source.expect("no problems means a source"),
            impersonation,
            workforce_pool_user_project: raw.workforce_pool_user_project,
            quota_project_id: raw.quota_project_id.filter(|p| !p.is_empty()),
        })
    }
}

/// `//iam.googleapis.com/locations/LOCATION/workforcePools/…`
pub fn is_workforce_audience(audience: &str) -> bool {
    audience
        .strip_prefix("//iam.googleapis.com/locations/")
        .and_then(|rest| rest.split_once('/'))
        .is_some_and(|(_, rest)| rest.starts_with("workforcePools/"))
}

fn read_format(format: Option<RawFormat>, problems: &mut Vec<String>) -> TokenFormat {
    let Some(format) = format else { return TokenFormat::Text };
    match (format.kind.as_deref(), format.subject_token_field_name) {
        (None | Some("text"), _) => TokenFormat::Text,
        (Some("json"), Some(field)) if !field.is_empty() => TokenFormat::Json { field },
        (Some("json"), _) => {
            problems.push("credential_source.format is json but has no subject_token_field_name".into());
            TokenFormat::Text
        }
        (Some(other), _) => {
            problems.push(format!("credential_source.format.type {other:?} is not \"text\" or \"json\""));
            TokenFormat::Text
        }
    }
}

fn read_source(source: RawSource, problems: &mut Vec<String>) -> Option<SubjectTokenSource> {
    if let Some(environment) = source.environment_id {
        problems.push(format!(
            "credential_source.environment_id {environment:?} (an AWS-sourced token) is not supported by keyturn; \
             use a file, url or executable source"
        ));
        return None;
    }
    if source.certificate.is_some() {
        problems.push(
            "credential_source.certificate (X.509 workload certificates) is not supported by keyturn; use a file, \
             url or executable source"
                .into(),
        );
        return None;
    }
    let given = [source.file.is_some(), source.url.is_some(), source.executable.is_some()];
    if given.iter().filter(|g| **g).count() != 1 {
        problems.push("credential_source must have exactly one of file, url and executable".into());
        return None;
    }
    let format = read_format(source.format, problems);
    if let Some(path) = source.file {
        return Some(SubjectTokenSource::File { path: PathBuf::from(path), format });
    }
    if let Some(url) = source.url {
        if let Err(problem) = check_url(&url, true) {
            problems.push(format!("credential_source.url {problem}"));
        }
        let headers = source.headers.unwrap_or_default().into_iter().collect();
        return Some(SubjectTokenSource::Url { url, headers, format });
    }
    let executable = source.executable?;
    let command: Vec<String> =
        executable.command.unwrap_or_default().split_whitespace().map(str::to_string).collect();
    if command.is_empty() {
        problems.push("credential_source.executable.command is missing".into());
    }
    let timeout = match executable.timeout_millis {
        None => EXECUTABLE_TIMEOUT_DEFAULT,
        Some(millis) if (EXECUTABLE_TIMEOUT_RANGE.0..=EXECUTABLE_TIMEOUT_RANGE.1).contains(&millis) => {
            Duration::from_millis(millis)
        }
        Some(millis) => {
            problems.push(format!(
                "credential_source.executable.timeout_millis {millis} is outside 5000 to 120000 (5 s to 2 min)"
            ));
            EXECUTABLE_TIMEOUT_DEFAULT
        }
    };
    let output_file = executable.output_file.filter(|f| !f.is_empty()).map(PathBuf::from);
    Some(SubjectTokenSource::Executable { command, timeout, output_file })
}

fn read_impersonation(
    url: String,
    options: Option<RawImpersonation>,
    problems: &mut Vec<String>,
) -> Option<Impersonation> {
    if let Err(problem) = check_url(&url, false) {
        problems.push(format!("service_account_impersonation_url {problem}"));
    }
    let account = url
        .rsplit_once("/serviceAccounts/")
        .and_then(|(_, rest)| rest.strip_suffix(":generateAccessToken"))
        .filter(|account| !account.is_empty() && !account.contains('/'))
        .map(percent_decode);
    let Some(account) = account else {
        problems.push(format!(
            "service_account_impersonation_url {url:?} is not IAM Credentials' \
             …/projects/-/serviceAccounts/EMAIL:generateAccessToken"
        ));
        return None;
    };
    let lifetime = match options.and_then(|o| o.token_lifetime_seconds) {
        None => LIFETIME_DEFAULT,
        Some(seconds) if (LIFETIME_RANGE.0..=LIFETIME_RANGE.1).contains(&seconds) => Duration::from_secs(seconds),
        Some(seconds) => {
            problems.push(format!(
                "service_account_impersonation.token_lifetime_seconds {seconds} is outside 600 to 43200"
            ));
            LIFETIME_DEFAULT
        }
    };
    Some(Impersonation { url, account, lifetime })
}

/// An email as a URL path carries it: `@` may be written `%40`.
fn percent_decode(text: &str) -> String {
    text.replace("%40", "@")
}

/// `https://`, or `http://` to loopback (tests, local proxies) and, for a subject-token URL,
/// to link-local metadata addresses (169.254.169.254): a token is never sent in clear text
/// across a network.
fn check_url(text: &str, subject_source: bool) -> Result<(), String> {
    let url = url::Url::parse(text).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    let local = match url.host() {
        Some(url::Host::Domain(host)) => host == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback() || (subject_source && ip.is_link_local()),
        Some(url::Host::Ipv6(ip)) => {
            ip.is_loopback() || (subject_source && (ip.segments()[0] & 0xffc0) == 0xfe80)
        }
        None => false,
    };
    match url.scheme() {
        "https" => Ok(()),
        "http" if local => Ok(()),
        "http" => Err(format!(
            "{text:?}: plain http is allowed only to {}; use https",
            if subject_source { "a loopback or link-local address" } else { "a loopback address" }
        )),
        other => Err(format!("{text:?}: unsupported scheme {other:?}; use https")),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const AUDIENCE: &str =
        "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/fleet/providers/edge";

    fn parse(value: serde_json::Value) -> Result<ExternalAccountConfig, String> {
        ExternalAccountConfig::parse(value.to_string().as_bytes())
    }

    fn base(source: serde_json::Value) -> serde_json::Value {
        json!({
            "type": "external_account",
            "audience": AUDIENCE,
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "token_url": "https://sts.googleapis.com/v1/token",
            "credential_source": source,
        })
    }

    #[test]
    fn a_file_source_as_gcloud_writes_it() {
        let mut value = base(json!({ "file": "/var/run/secrets/tokens/gcp", "format": { "type": "text" } }));
        value["service_account_impersonation_url"] = json!(
            "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/node@acme.iam.gserviceaccount.com:generateAccessToken"
        );
        value["service_account_impersonation"] = json!({ "token_lifetime_seconds": 1800 });
        value["quota_project_id"] = json!("acme-edge");
        value["token_info_url"] = json!("https://sts.googleapis.com/v1/introspect");
        let config = parse(value).unwrap();
        assert_eq!(
            config.source,
            SubjectTokenSource::File { path: "/var/run/secrets/tokens/gcp".into(), format: TokenFormat::Text }
        );
        let impersonation = config.impersonation.unwrap();
        assert_eq!(impersonation.account, "node@acme.iam.gserviceaccount.com");
        assert_eq!(impersonation.lifetime, Duration::from_secs(1800));
        assert_eq!(config.quota_project_id.as_deref(), Some("acme-edge"));
    }

    #[test]
    fn url_and_executable_sources() {
        let config = parse(base(json!({
            "url": "https://token.actions.githubusercontent.com?audience=x",
            "headers": { "Authorization": "Bearer runner-secret" },
            "format": { "type": "json", "subject_token_field_name": "value" },
        })))
        .unwrap();
        let SubjectTokenSource::Url { headers, format, .. } = &config.source else { panic!() };
        assert_eq!(headers, &[("Authorization".to_string(), "Bearer runner-secret".to_string())]);
        assert_eq!(format, &TokenFormat::Json { field: "value".into() });
        assert!(!format!("{config:?}").contains("runner-secret"), "header values never format");
        assert_eq!(config.source.describe(), "URL https://token.actions.githubusercontent.com");

        let config = parse(base(json!({
            "executable": { "command": "/usr/local/bin/token --audience edge", "timeout_millis": 5000,
                            "output_file": "/run/keyturn-token.json" },
        })))
        .unwrap();
        assert_eq!(
            config.source,
            SubjectTokenSource::Executable {
                command: vec!["/usr/local/bin/token".into(), "--audience".into(), "edge".into()],
                timeout: Duration::from_secs(5),
                output_file: Some("/run/keyturn-token.json".into()),
            }
        );
    }

    #[test]
    fn every_problem_is_named() {
        let value = json!({
            "type": "external_account",
            "token_url": "http://sts.example.com/v1/token",
            "client_id": "x",
            "universe_domain": "example.goog",
            "workforce_pool_user_project": "123",
            "credential_source": { "file": "/a", "url": "https://b" },
            "service_account_impersonation_url": "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/x:signJwt",
        });
        let problems = parse(value).unwrap_err();
        for needle in [
            "audience is missing",
            "subject_token_type is missing",
            "token_url \"http://sts.example.com/v1/token\": plain http is allowed only to a loopback address",
            "client_id is set",
            "universe_domain is \"example.goog\"",
            "workforce_pool_user_project is set, but audience is not a workforce pool provider",
            "exactly one of file, url and executable",
            "is not IAM Credentials'",
        ] {
            assert!(problems.contains(needle), "{needle:?} in {problems}");
        }
    }

    #[test]
    fn unsupported_sources_and_bounds_are_refused_with_a_reason() {
        let aws = parse(base(json!({ "environment_id": "aws1", "region_url": "http://169.254.169.254" })));
        assert!(aws.unwrap_err().contains("AWS-sourced token) is not supported"));
        let x509 = parse(base(json!({ "certificate": { "use_default_certificate_config": true } })));
        assert!(x509.unwrap_err().contains("X.509"));
        let slow = parse(base(json!({ "executable": { "command": "t", "timeout_millis": 600000 } })));
        assert!(slow.unwrap_err().contains("outside 5000 to 120000"));
        let json_without_field = parse(base(json!({ "file": "/t", "format": { "type": "json" } })));
        assert!(json_without_field.unwrap_err().contains("no subject_token_field_name"));
        let not_external = parse(json!({ "type": "service_account" }));
        assert!(not_external.unwrap_err().contains("not \"external_account\""));
        assert!(ExternalAccountConfig::parse(b"{").unwrap_err().starts_with("not a credential configuration"));
    }

    #[test]
    fn plain_http_only_where_no_network_is_crossed() {
        assert!(check_url("http://127.0.0.1:8080/v1/token", false).is_ok());
        assert!(check_url("http://[::1]:1/x", false).is_ok());
        assert!(check_url("http://localhost:1/x", false).is_ok());
        assert!(check_url("http://169.254.169.254/token", false).is_err());
        assert!(check_url("http://169.254.169.254/token", true).is_ok(), "metadata endpoints");
        assert!(check_url("http://[fe80::1]/token", true).is_ok());
        assert!(check_url("http://10.0.0.1/token", true).is_err());
        assert!(check_url("ftp://127.0.0.1/x", true).is_err());
    }

    #[test]
    fn workforce_audiences() {
        assert!(is_workforce_audience("//iam.googleapis.com/locations/global/workforcePools/staff/providers/okta"));
        assert!(!is_workforce_audience(AUDIENCE));
        let mut value = base(json!({ "file": "/t" }));
        value["audience"] = json!("//iam.googleapis.com/locations/global/workforcePools/staff/providers/okta");
        value["workforce_pool_user_project"] = json!("acme-edge");
        assert_eq!(parse(value).unwrap().workforce_pool_user_project.as_deref(), Some("acme-edge"));
    }
}
