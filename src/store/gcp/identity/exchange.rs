//! The two calls that turn a subject token into an access token
//! (`shared/reference/gcp-identity/CONTRACT.md` §2–3):
//!
//! 1. **STS** (`token_url`, RFC 8693): a form-encoded `POST` without `Authorization`, trading
//!    the subject token for a federated access token (`expires_in` seconds from the answer).
//! 2. Optionally **IAM Credentials** `generateAccessToken` with the federated token as bearer,
//!    trading it for the service account's access token (`expireTime`, absolute).
//!
//! Each answer's `Date` feeds [`ServerTime`], and expiry is kept in Google's time. Bodies are
//! read into zeroized buffers; tokens never format. A refusal becomes a [`Refusal`] that says
//! which endpoint answered what (`invalid_grant` and its description, `PERMISSION_DENIED` and
//! the missing permission), with the subject token removed should an answer ever quote it.

use std::fmt;
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use zeroize::Zeroizing;

use super::credential_config::{ExternalAccountConfig, Impersonation};
use super::server_time::ServerTime;
use super::subject_token::SubjectToken;

const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// An answer is quoted into messages only this far.
const MAX_QUOTED: usize = 300;

/// An access token and when Google will stop taking it, in Google's time.
pub struct Issued {
    pub token: Zeroizing<String>,
    pub expires: SystemTime,
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued").field("token", &"[redacted]").field("expires", &self.expires).finish()
    }
}

/// Which call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Sts,
    Impersonation,
}

/// Why a call gave no token, in words a person can act on. No token is ever in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The request never got an answer (connection, timeout, TLS).
    Unreachable { step: Step, url: String, message: String },
    /// STS answered with an OAuth 2.0 error.
    Sts { url: String, status: u16, error: String, description: String },
    /// IAM Credentials answered with Google's error envelope.
    Impersonation { account: String, status: u16, code: String, message: String, permission: Option<String> },
    /// A success status with a body that is not the documented one.
    Malformed { step: Step, url: String, problem: String },
}

#[derive(Deserialize)]
struct StsAnswer {
    access_token: Zeroizing<String>,
    expires_in: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct IamAnswer {
    access_token: Zeroizing<String>,
    expire_time: String,
}

/// Sends one request; the status, the `Date` it carried (if any), and the body in a zeroized
/// buffer.
async fn send(
    request: reqwest::RequestBuilder,
    step: Step,
    url: &str,
    time: &ServerTime,
) -> Result<(u16, Option<SystemTime>, Zeroizing<Vec<u8>>), Refusal> {
    let unreachable = |e: reqwest::Error| Refusal::Unreachable {
        step,
        url: url.to_string(),
        message: crate::error_chain(&e),
    };
    let mut response = request.send().await.map_err(unreachable)?;
    let date = time.observe(response.headers());
    let status = response.status().as_u16();
    let mut body = Zeroizing::new(Vec::new());
    while let Some(chunk) = response.chunk().await.map_err(unreachable)? {
        body.extend_from_slice(&chunk);
    }
    Ok((status, date, body))
}

/// Text from an answer, fit for a message: cut short, and with `secret` removed.
fn quoted(text: &str, secret: &str) -> String {
    let text: String = text.chars().take(MAX_QUOTED).collect();
    if secret.len() >= 16 { text.replace(secret, "[subject token]") } else { text }
}

/// The STS exchange.
pub async fn exchange(
    http: &reqwest::Client,
    config: &ExternalAccountConfig,
    subject: &SubjectToken,
    scopes: &[&str],
    time: &ServerTime,
) -> Result<Issued, Refusal> {
    let url = &config.token_url;
    let scope = scopes.join(" ");
    let options = config.workforce_pool_user_project.as_ref().map(|project| {
        serde_json::json!({ "userProject": project }).to_string()
    });
    let mut form: Vec<(&str, &str)> = vec![
        ("grant_type", GRANT_TYPE),
        ("audience", &config.audience),
        ("scope", &scope),
        ("requested_token_type", ACCESS_TOKEN_TYPE),
        ("subject_token", subject.expose()),
        ("subject_token_type", &config.subject_token_type),
    ];
    if let Some(options) = &options {
        form.push(("options", options));
    }
    let mut body = Zeroizing::new(String::new());
    {
        let mut serializer = url::form_urlencoded::Serializer::new(&mut *body);
        serializer.extend_pairs(form);
        serializer.finish();
    }
    let request = http
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(body.as_bytes().to_vec());
    let (status, date, answer) = send(request, Step::Sts, url, time).await?;
    if !(200..300).contains(&status) {
        let text = String::from_utf8_lossy(&answer);
        return Err(match serde_json::from_slice::<OAuthError>(&answer) {
            Ok(e) => Refusal::Sts {
                url: url.clone(),
                status,
                error: e.error,
                description: quoted(&e.error_description, subject.expose()),
            },
            Err(_) => Refusal::Sts {
                url: url.clone(),
                status,
                error: format!("HTTP {status}"),
                description: quoted(&text, subject.expose()),
            },
        });
    }
    let malformed = |problem: String| Refusal::Malformed { step: Step::Sts, url: url.clone(), problem };
    let answer: StsAnswer = serde_json::from_slice(&answer)
        .map_err(|e| malformed(format!("no access_token in the answer (line {} column {})", e.line(), e.column())))?;
    let seconds = expires_in(answer.expires_in.as_ref())
        .ok_or_else(|| malformed("expires_in is missing or not a number of seconds".into()))?;
    let issued_at = date.unwrap_or_else(|| time.now());
    Ok(Issued { token: answer.access_token, expires: issued_at + Duration::from_secs(seconds) })
}

/// An OAuth 2.0 token endpoint's refusal (RFC 6749 section 5.2): STS and Google's token
/// endpoint alike.
#[derive(Deserialize)]
pub(super) struct OAuthError {
    pub error: String,
    #[serde(default)]
    pub error_description: String,
}

/// An OAuth 2.0 token answer's `expires_in`, in seconds: a number, though some servers send
/// it as a string.
pub(super) fn expires_in(value: Option<&serde_json::Value>) -> Option<u64> {
    match value {
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        Some(serde_json::Value::String(s)) => s.parse().ok(),
        _ => None,
    }
}

/// `generateAccessToken` for `impersonation.account`, with the federated token as bearer.
pub async fn impersonate(
    http: &reqwest::Client,
    impersonation: &Impersonation,
    federated: &Issued,
    scopes: &[&str],
    time: &ServerTime,
) -> Result<Issued, Refusal> {
    let url = &impersonation.url;
    let body = serde_json::json!({
        "scope": scopes,
        "lifetime": format!("{}s", impersonation.lifetime.as_secs()),
    });
    let request = http.post(url).bearer_auth(federated.token.as_str()).json(&body);
    let (status, _, answer) = send(request, Step::Impersonation, url, time).await?;
    if !(200..300).contains(&status) {
        let account = impersonation.account.clone();
        return Err(match crate::store::gcp::GoogleError::parse(&answer) {
            Some(error) => Refusal::Impersonation {
                account,
                status,
                permission: error.permission(),
                code: error.status,
                message: quoted(&error.message, federated.token.as_str()),
            },
            None => Refusal::Impersonation {
                account,
                status,
                code: format!("HTTP {status}"),
                message: quoted(&String::from_utf8_lossy(&answer), federated.token.as_str()),
                permission: None,
            },
        });
    }
    let malformed = |problem: String| Refusal::Malformed { step: Step::Impersonation, url: url.clone(), problem };
    let answer: IamAnswer = serde_json::from_slice(&answer).map_err(|e| {
        malformed(format!("no accessToken and expireTime in the answer (line {} column {})", e.line(), e.column()))
    })?;
    let expires = humantime::parse_rfc3339(&answer.expire_time)
        .map_err(|_| malformed(format!("expireTime {:?} is not an RFC 3339 time", answer.expire_time)))?;
    Ok(Issued { token: answer.access_token, expires })
}
