//! The subject token: the workload's own credential from its identity provider (a projected
//! Kubernetes service-account token, a CI job's OIDC token, a node agent's JWT), read from its
//! source afresh at every exchange, since sources rotate it (the kubelet rewrites projected
//! tokens well before they expire).
//!
//! - **file**: the file's content, or one field of it as JSON;
//! - **url**: a `GET` with the configured headers, the body read the same way;
//! - **executable**: only with `GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES=1`, as Google's
//!   libraries require. The command is split on whitespace and run without a shell
//!   ([`crate::process::run`]) under its timeout, with the `GOOGLE_EXTERNAL_ACCOUNT_*`
//!   variables AIP-4117 defines. A still-valid response in its `output_file` is used without
//!   running it.
//!
//! A token is held in a zeroized buffer and never formats; errors say which file, URL or
//! command failed and how, never what it returned.

use std::fmt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use zeroize::Zeroizing;

use super::credential_config::{SubjectTokenSource, TokenFormat};
use crate::clock::Clock;

/// The variable that allows executable sources, as in Google's libraries.
pub const ALLOW_EXECUTABLES: &str = "GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES";
/// How much of a failed source's answer an error quotes, when it looks like no token.
const MAX_QUOTED: usize = 200;

/// A subject token. No `Display`; `Debug` prints `[redacted]`.
pub struct SubjectToken(Zeroizing<String>);

impl SubjectToken {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SubjectToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SubjectToken([redacted])")
    }
}

/// What reading a source needs besides the source.
#[derive(Debug)]
pub struct Context<'a> {
    pub http: &'a reqwest::Client,
    /// `GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES=1` in keyturn's environment.
    pub allow_executables: bool,
    pub audience: &'a str,
    pub subject_token_type: &'a str,
    pub impersonated_account: Option<&'a str>,
    /// For an executable response's `expiration_time`.
    pub clock: &'a dyn Clock,
}

/// Reads the current subject token from `source`. The error names the source and says what
/// went wrong.
pub async fn read(source: &SubjectTokenSource, context: &Context<'_>) -> Result<SubjectToken, String> {
    match source {
        SubjectTokenSource::File { path, format } => {
            let bytes = Zeroizing::new(
                tokio::fs::read(path)
                    .await
                    .map_err(|e| format!("cannot read the subject token file {}: {e}", path.display()))?,
            );
            extract(&bytes, format).map_err(|e| format!("the subject token file {}: {e}", path.display()))
        }
        SubjectTokenSource::Url { url, headers, format } => {
            let shown = source.describe();
            let mut request = context.http.get(url);
            for (name, value) in headers {
                request = request.header(name, value);
            }
            let mut response =
                request.send().await.map_err(|e| format!("the subject token {shown}: {}", crate::error_chain(&e)))?;
            let status = response.status();
            let mut body = Zeroizing::new(Vec::new());
            while let Some(chunk) =
                response.chunk().await.map_err(|e| format!("the subject token {shown}: {}", crate::error_chain(&e)))?
            {
                body.extend_from_slice(&chunk);
            }
            if !status.is_success() {
                return Err(format!("the subject token {shown} answered HTTP {}: {}", status.as_u16(), quote(&body)));
            }
            extract(&body, format).map_err(|e| format!("the subject token {shown}: {e}"))
        }
        SubjectTokenSource::Executable { command, timeout, output_file } => {
            run_executable(command, *timeout, output_file.as_deref(), context).await
        }
    }
}

/// The token in `bytes` as `format` says: the whole text, or a JSON object's field.
fn extract(bytes: &[u8], format: &TokenFormat) -> Result<SubjectToken, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "it is not UTF-8 text".to_string())?;
    let token = match format {
        TokenFormat::Text => Zeroizing::new(text.trim().to_string()),
        TokenFormat::Json { field } => {
            let object: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text)
                .map_err(|e| format!("it is not a JSON object (line {} column {})", e.line(), e.column()))?;
            match object.get(field) {
                Some(serde_json::Value::String(token)) => Zeroizing::new(token.trim().to_string()),
                Some(_) => return Err(format!("its field {field:?} is not a string")),
                None => return Err(format!("it has no field {field:?}")),
            }
        }
    };
    if token.is_empty() {
        return Err("it is empty".into());
    }
    Ok(SubjectToken(token))
}

/// An answer quoted in an error: withheld when it might hold a token.
fn quote(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    if looks_like_token(&text) {
        return "(withheld: it may contain a token)".into();
    }
    text.trim().chars().take(MAX_QUOTED).collect()
}

/// A JWT's header (`eyJ`, base64 of `{"`) or a Google access token (`ya29.`).
fn looks_like_token(text: &str) -> bool {
    text.contains("eyJ") || text.contains("ya29.")
}

/// AIP-4117's executable response (and its output file).
#[derive(Deserialize)]
struct ExecutableResponse {
    version: Option<u32>,
    success: Option<bool>,
    token_type: Option<String>,
    expiration_time: Option<i64>,
    id_token: Option<Zeroizing<String>>,
    saml_response: Option<Zeroizing<String>>,
    code: Option<String>,
    message: Option<String>,
}

/// Why a response gave no token; `Expired` is the one an output file may show without
/// anything being wrong.
enum ResponseError {
    Expired,
    Bad(String),
}

fn token_from_response(text: &[u8], now: SystemTime) -> Result<(SubjectToken, bool), ResponseError> {
    let response: ExecutableResponse = serde_json::from_slice(text).map_err(|e| {
        ResponseError::Bad(format!("its response is not the JSON AIP-4117 defines (line {} column {})", e.line(), e.column()))
    })?;
    match response.version {
        Some(1) => {}
        Some(other) => return Err(ResponseError::Bad(format!("its response has version {other}; keyturn reads version 1"))),
        None => return Err(ResponseError::Bad("its response has no version".into())),
    }
    match response.success {
        Some(true) => {}
        Some(false) => {
            return Err(ResponseError::Bad(format!(
                "it reported failure: code {:?}, message {:?}",
                response.code.unwrap_or_default(),
                response.message.unwrap_or_default()
            )));
        }
        None => return Err(ResponseError::Bad("its response has no success field".into())),
    }
    let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    if response.expiration_time.is_some_and(|expires| expires <= now) {
        return Err(ResponseError::Expired);
    }
    let token = match response.token_type.as_deref() {
        Some("urn:ietf:params:oauth:token-type:jwt" | "urn:ietf:params:oauth:token-type:id_token") => {
            response.id_token
        }
        Some("urn:ietf:params:oauth:token-type:saml2") => response.saml_response,
        other => {
            return Err(ResponseError::Bad(format!("its response has an unsupported token_type {:?}", other.unwrap_or(""))));
        }
    };
    match token.filter(|t| !t.is_empty()) {
        Some(token) => Ok((SubjectToken(token), response.expiration_time.is_some())),
        None => Err(ResponseError::Bad("its response has no id_token or saml_response".into())),
    }
}

async fn run_executable(
    command: &[String],
    timeout: Duration,
    output_file: Option<&Path>,
    context: &Context<'_>,
) -> Result<SubjectToken, String> {
    let program = command.first().map(String::as_str).unwrap_or_default();
    if !context.allow_executables {
        return Err(format!(
            "the subject token comes from the command {program}, and running commands is not allowed: set \
             {ALLOW_EXECUTABLES}=1 in keyturn's environment to allow it (Google's libraries require the same)"
        ));
    }
    // A response the command left in its output file serves while it is valid; one without
    // an expiration_time counts as expired, as in Google's libraries.
    if let Some(path) = output_file
        && let Ok(cached) = tokio::fs::read(path).await
    {
        let cached = Zeroizing::new(cached);
        match token_from_response(&cached, context.clock.now()) {
            Ok((token, true)) => return Ok(token),
            Ok((_, false)) | Err(ResponseError::Expired) => {}
            Err(ResponseError::Bad(problem)) => {
                tracing::debug!(file = %path.display(), %problem, "ignoring the executable's output file");
            }
        }
    }
    let output = output_file.map(|p| p.display().to_string());
    let mut env = vec![
        ("GOOGLE_EXTERNAL_ACCOUNT_AUDIENCE", context.audience),
        ("GOOGLE_EXTERNAL_ACCOUNT_TOKEN_TYPE", context.subject_token_type),
        ("GOOGLE_EXTERNAL_ACCOUNT_INTERACTIVE", "0"),
        ("GOOGLE_EXTERNAL_ACCOUNT_REVOKE", "0"),
    ];
    if let Some(account) = context.impersonated_account {
        env.push(("GOOGLE_EXTERNAL_ACCOUNT_IMPERSONATED_EMAIL", account));
    }
    if let Some(output) = &output {
        env.push(("GOOGLE_EXTERNAL_ACCOUNT_OUTPUT_FILE", output));
    }
    let finished = crate::process::run(command, &env, None, timeout)
        .await
        .map_err(|e| format!("the subject token command: {e}"))?;
    let stdout = Zeroizing::new(finished.stdout);
    let stderr = Zeroizing::new(finished.stderr);
    if !finished.status.success() {
        return Err(format!(
            "the subject token command {program} failed ({}): {}",
            finished.status,
            quote(&stderr)
        ));
    }
    let response = if stdout.iter().all(u8::is_ascii_whitespace) {
        match output_file {
            Some(path) => Zeroizing::new(tokio::fs::read(path).await.map_err(|e| {
                format!("the subject token command {program} printed nothing and its output file {}: {e}", path.display())
            })?),
            None => return Err(format!("the subject token command {program} printed nothing")),
        }
    } else {
        stdout
    };
    match token_from_response(&response, context.clock.now()) {
        Ok((token, _)) => Ok(token),
        Err(ResponseError::Expired) => {
            Err(format!("the subject token command {program} returned a token whose expiration_time has passed"))
        }
        Err(ResponseError::Bad(problem)) => Err(format!("the subject token command {program}: {problem}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    #[test]
    fn text_and_json_formats() {
        assert_eq!(extract(b"eyJabc.def.ghi\n", &TokenFormat::Text).unwrap().expose(), "eyJabc.def.ghi");
        let json = TokenFormat::Json { field: "value".into() };
        assert_eq!(extract(br#"{"count":1,"value":"eyJx.y.z"}"#, &json).unwrap().expose(), "eyJx.y.z");
        assert_eq!(extract(br#"{"other":"x"}"#, &json).unwrap_err(), "it has no field \"value\"");
        assert!(extract(b"not json", &json).unwrap_err().starts_with("it is not a JSON object"));
        assert_eq!(extract(b"  \n", &TokenFormat::Text).unwrap_err(), "it is empty");
        assert_eq!(format!("{:?}", extract(b"eyJsecret", &TokenFormat::Text).unwrap()), "SubjectToken([redacted])");
    }

    #[test]
    fn executable_responses_as_aip_4117_defines_them() {
        let ok = br#"{"version":1,"success":true,"token_type":"urn:ietf:params:oauth:token-type:jwt","id_token":"eyJa.b.c","expiration_time":2000}"#;
        let (token, expires) = token_from_response(ok, at(1000)).ok().unwrap();
        assert_eq!((token.expose(), expires), ("eyJa.b.c", true));
        assert!(matches!(token_from_response(ok, at(2000)), Err(ResponseError::Expired)));
        let saml = br#"{"version":1,"success":true,"token_type":"urn:ietf:params:oauth:token-type:saml2","saml_response":"PHNhbWw+"}"#;
        assert_eq!(token_from_response(saml, at(0)).ok().unwrap().0.expose(), "PHNhbWw+");
        let failed = br#"{"version":1,"success":false,"code":"401","message":"Caller not authorized."}"#;
        let Err(ResponseError::Bad(problem)) = token_from_response(failed, at(0)) else { panic!() };
        assert!(problem.contains("\"401\"") && problem.contains("Caller not authorized."), "{problem}");
        let Err(ResponseError::Bad(problem)) = token_from_response(br#"{"version":2,"success":true}"#, at(0)) else {
            panic!()
        };
        assert!(problem.contains("version 2"), "{problem}");
    }

    #[test]
    fn answers_that_may_hold_a_token_are_not_quoted() {
        assert_eq!(quote(b"denied: eyJhbGciOi.x.y"), "(withheld: it may contain a token)");
        assert_eq!(quote(b"  forbidden\n"), "forbidden");
    }
}
