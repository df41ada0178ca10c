//! Workload Identity Federation: the Security Token Service's token exchange (RFC 8693), as
//! `shared/reference/gcp-identity/CONTRACT.md` §2 describes it.
//!
//! The emulator has one **workload identity pool** (`emulator-pool`, in the emulator's project)
//! and one **workforce pool** (`emulator-workforce`), each with one OIDC provider
//! (`emulator-oidc`) that trusts the emulator's [test issuer](crate::oidc). A workload presents a
//! subject token (a JWT from the issuer) at `POST /v1/token`, with the provider's full resource
//! name as `audience`; the exchange checks the request, then the token — `kid` and `alg`
//! (`RS256`, `ES256`), signature against the issuer's keys, `iss`, `aud` (one of the provider's
//! allowed audiences: its resource name after `//iam.googleapis.com/` or
//! `https://iam.googleapis.com/`), `iat`, `exp` at most 48 hours after `iat` and not passed,
//! `sub` — and issues a federated access token for the principal
//! `principal://iam.googleapis.com/POOL/subject/SUB`. That principal may call Secret Manager
//! directly with the roles granted to it, or impersonate a service account it is allowed to
//! (see `iam_credentials`).
//!
//! Errors are OAuth 2.0 shaped (`{"error","error_description"}`, HTTP 400). Where the contract
//! quotes Google (the malformed `audience`, the unknown provider) the wording is Google's; the
//! other descriptions are the emulator's own.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::{Identities, OAuthError, TOKEN_LIFETIME};
use crate::clock::unix_seconds;
use crate::jwt::{self, JwtError};
use crate::oidc::{SigningAlgorithm, TestIssuer};

pub(crate) const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub(crate) const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
const JWT_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
const ID_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:id_token";
pub(crate) const WORKLOAD_POOL: &str = "emulator-pool";
pub(crate) const WORKFORCE_POOL: &str = "emulator-workforce";
pub(crate) const PROVIDER: &str = "emulator-oidc";
const IAM_PREFIX: &str = "//iam.googleapis.com/";
/// A subject token may live at most this long (Discovery text of `sts.token`).
const MAX_SUBJECT_LIFETIME_SECONDS: i64 = 48 * 3600;
/// `iat` may be this far ahead of the emulator's clock (the contract says "in the past"; the
/// allowance for an issuer's clock is a design choice, as for service-account JWTs).
const ALLOWED_SKEW_SECONDS: i64 = 300;

/// Which pool a provider belongs to: it decides the principal's name and whether the request
/// must name a user project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Pool {
    Workload { project_number: String, pool: String, provider: String },
    Workforce { pool: String, provider: String },
}

impl Pool {
    /// Reads `audience` as a provider's full resource name; `None` when it has another shape.
    pub(crate) fn parse(audience: &str) -> Option<(Pool, &str)> {
        let name = audience.strip_prefix(IAM_PREFIX)?;
        let parts: Vec<&str> = name.split('/').collect();
        let pool = match parts.as_slice() {
            ["projects", project, "locations", location, "workloadIdentityPools", pool, "providers", provider]
                if !project.is_empty() && !location.is_empty() && !pool.is_empty() && !provider.is_empty() =>
            {
                if *location != "global" {
                    return None;
                }
                Pool::Workload {
                    project_number: (*project).to_owned(),
                    pool: (*pool).to_owned(),
                    provider: (*provider).to_owned(),
                }
            }
            ["locations", location, "workforcePools", pool, "providers", provider]
                if !pool.is_empty() && !provider.is_empty() && *location == "global" =>
            {
                Pool::Workforce { pool: (*pool).to_owned(), provider: (*provider).to_owned() }
            }
            _ => return None,
        };
        Some((pool, name))
    }

    /// Whether this emulator has the pool and provider.
    fn exists(&self, project_number: u64) -> bool {
        match self {
            Pool::Workload { project_number: number, pool, provider } => {
                *number == project_number.to_string() && pool == WORKLOAD_POOL && provider == PROVIDER
            }
            Pool::Workforce { pool, provider } => pool == WORKFORCE_POOL && provider == PROVIDER,
        }
    }

    /// `principal://iam.googleapis.com/…/subject/SUB`, the IAM member a federated token acts as.
    pub(crate) fn principal(&self, subject: &str) -> String {
        match self {
            Pool::Workload { project_number, pool, .. } => format!(
                "principal://iam.googleapis.com/projects/{project_number}/locations/global/workloadIdentityPools/{pool}/subject/{subject}"
            ),
            Pool::Workforce { pool, .. } => {
                format!("principal://iam.googleapis.com/locations/global/workforcePools/{pool}/subject/{subject}")
            }
        }
    }
}

/// The workload pool's provider as an STS `audience`.
pub(crate) fn workload_audience(project_number: u64) -> String {
    format!(
        "{IAM_PREFIX}projects/{project_number}/locations/global/workloadIdentityPools/{WORKLOAD_POOL}/providers/{PROVIDER}"
    )
}

/// The workforce pool's provider as an STS `audience`.
pub(crate) fn workforce_audience() -> String {
    format!("{IAM_PREFIX}locations/global/workforcePools/{WORKFORCE_POOL}/providers/{PROVIDER}")
}

/// The principal a subject of the workload pool becomes.
pub(crate) fn workload_principal(project_number: u64, subject: &str) -> String {
    Pool::Workload {
        project_number: project_number.to_string(),
        pool: WORKLOAD_POOL.to_owned(),
        provider: PROVIDER.to_owned(),
    }
    .principal(subject)
}

/// The claims STS reads from a subject token. `aud` is a string or an array of strings.
#[derive(Debug, Deserialize)]
struct SubjectClaims {
    iss: String,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    aud: Option<Audience>,
    iat: i64,
    exp: i64,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn contains(&self, wanted: impl Fn(&str) -> bool) -> bool {
        match self {
            Audience::One(aud) => wanted(aud),
            Audience::Many(auds) => auds.iter().any(|a| wanted(a)),
        }
    }
}

/// Where a subject token was minted, for the exchange to check it: the issuer's URL and keys.
pub(crate) struct Trust<'a> {
    pub(crate) issuer_url: &'a str,
    pub(crate) issuer: &'a TestIssuer,
    pub(crate) project_number: u64,
    pub(crate) project_id: &'a str,
}

fn invalid_request(description: impl Into<String>) -> OAuthError {
    OAuthError::new("invalid_request", description)
}

fn invalid_grant(description: impl Into<String>) -> OAuthError {
    OAuthError::new("invalid_grant", description)
}

/// The request body: form-encoded (as Google's libraries send it) or JSON with the API's
/// camelCase names (snake_case accepted too).
pub(crate) fn read_body(content_type: Option<&str>, body: &[u8]) -> Result<HashMap<String, String>, OAuthError> {
    let content_type = content_type.unwrap_or_default();
    if content_type.starts_with("application/x-www-form-urlencoded") {
        return Ok(form_urlencoded::parse(body).into_owned().collect());
    }
    if content_type.starts_with("application/json") {
        let value: Value =
            serde_json::from_slice(body).map_err(|e| invalid_request(format!("Invalid JSON payload received. {e}")))?;
        let object = value.as_object().ok_or_else(|| invalid_request("The request body must be a JSON object."))?;
        let mut form = HashMap::new();
        for (key, value) in object {
            let name = match key.as_str() {
                "grantType" => "grant_type",
                "requestedTokenType" => "requested_token_type",
                "subjectToken" => "subject_token",
                "subjectTokenType" => "subject_token_type",
                other => other,
            };
            let text = match value {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            form.insert(name.to_owned(), text);
        }
        return Ok(form);
    }
    Err(invalid_request("The request must be application/x-www-form-urlencoded or application/json."))
}

/// `POST /v1/token`: checks the exchange and, if it holds, issues a federated token.
pub(crate) fn exchange(
    identities: &mut Identities,
    trust: &Trust<'_>,
    form: &HashMap<String, String>,
    authorization: bool,
    now: SystemTime,
) -> Result<Value, OAuthError> {
    if authorization {
        return Err(invalid_request(
            "The token exchange takes no Authorization header: the subject token is the credential.",
        ));
    }
    let field = |name: &str| form.get(name).map(String::as_str).filter(|v| !v.is_empty());
    let required =
        |name: &str| field(name).ok_or_else(|| invalid_request(format!("Missing required parameter: {name}")));
    let grant_type = required("grant_type")?;
    if grant_type != GRANT_TYPE {
        return Err(OAuthError::new("unsupported_grant_type", format!("Invalid grant_type: {grant_type}")));
    }
    let audience = required("audience")?;
    let Some((pool, _)) = Pool::parse(audience) else {
        return Err(invalid_request(
            "Invalid value for \"audience\". This value should be the full resource name of the Identity \
             Provider. See https://cloud.google.com/iam/docs/reference/sts/rest/v1/TopLevel/token for the list of \
             possible formats.",
        ));
    };
    if !pool.exists(trust.project_number) {
        return Err(OAuthError::new(
            "invalid_target",
            "The target service indicated by the \"audience\" parameters is invalid. This might either be \
             because the pool or provider is disabled or deleted or because it doesn't exist.",
        ));
    }
    let requested = required("requested_token_type")?;
    if requested != ACCESS_TOKEN_TYPE {
        return Err(invalid_request(format!("Invalid requested_token_type: {requested}")));
    }
    let subject_token_type = required("subject_token_type")?;
    if subject_token_type != JWT_TYPE && subject_token_type != ID_TOKEN_TYPE {
        return Err(invalid_request(format!(
            "Invalid subject_token_type: {subject_token_type}; an OIDC provider takes {JWT_TYPE} or {ID_TOKEN_TYPE}"
        )));
    }
    if matches!(pool, Pool::Workforce { .. }) {
        check_user_project(field("options"), trust)?;
    }
    let subject_token = required("subject_token")?;
    let subject = verify_subject_token(subject_token, audience, trust, unix_seconds(now))?;
    let scopes: Vec<String> = field("scope").unwrap_or_default().split_whitespace().map(str::to_owned).collect();
    let token = identities
        .issue_for(&pool.principal(&subject), scopes, TOKEN_LIFETIME, now)
        .map_err(|_| OAuthError::new("internal_failure", "token generation failed"))?;
    Ok(json!({
        "access_token": token,
        "issued_token_type": ACCESS_TOKEN_TYPE,
        "token_type": "Bearer",
        "expires_in": TOKEN_LIFETIME.as_secs(),
    }))
}

/// A workforce pool's tokens are billed to a user project: `options` must carry
/// `{"userProject": PROJECT}` naming this emulator's project.
fn check_user_project(options: Option<&str>, trust: &Trust<'_>) -> Result<(), OAuthError> {
    let options: Value = match options {
        Some(text) => serde_json::from_str(text).map_err(|_| invalid_request("options must be a JSON object"))?,
        None => Value::Null,
    };
    match options.get("userProject").and_then(Value::as_str) {
        Some(project) if project == trust.project_id || project == trust.project_number.to_string() => Ok(()),
        Some(project) => Err(invalid_request(format!("The user project {project} does not exist or is not usable."))),
        None => Err(invalid_request(
            "A workforce pool token exchange needs options.userProject (workforce_pool_user_project).",
        )),
    }
}

/// The subject token's checks, in the order STS applies them; the subject on success.
fn verify_subject_token(token: &str, audience: &str, trust: &Trust<'_>, now: i64) -> Result<String, OAuthError> {
    let bad = |error: JwtError| invalid_grant(error.to_string());
    let parsed = jwt::parse_signed_with::<SubjectClaims>(token, &["RS256", "ES256"]).map_err(bad)?;
    let claims = &parsed.claims;
    if claims.iss != trust.issuer_url {
        return Err(invalid_grant(format!(
            "The issuer in ID Token {} does not match the expected issuer {}.",
            claims.iss, trust.issuer_url
        )));
    }
    let key_id = parsed.key_id.as_deref().ok_or_else(|| invalid_grant("The ID Token header has no kid."))?;
    let Some((algorithm, key)) = trust.issuer.public_key(key_id) else {
        return Err(invalid_grant(format!("The issuer's JWKS has no key with kid {key_id}.")));
    };
    let verified = match (algorithm, parsed.algorithm.as_str()) {
        (SigningAlgorithm::Rs256, "RS256") => parsed.verify_signature([key.as_slice()]),
        (SigningAlgorithm::Es256, "ES256") => parsed.verify_es256(&key),
        _ => Err(JwtError::Signature),
    };
    verified.map_err(|_| invalid_grant("Invalid ID Token signature."))?;
    let allowed = |aud: &str| {
        let name = &audience[IAM_PREFIX.len()..];
        aud == audience || aud.strip_prefix("https://iam.googleapis.com/") == Some(name)
    };
    if !claims.aud.as_ref().is_some_and(|aud| aud.contains(allowed)) {
        let got = match &claims.aud {
            Some(Audience::One(aud)) => aud.clone(),
            Some(Audience::Many(auds)) => auds.join(", "),
            None => String::new(),
        };
        return Err(invalid_grant(format!(
            "The audience in ID Token [{got}] does not match the expected audience {audience}."
        )));
    }
    if claims.iat > now + ALLOWED_SKEW_SECONDS {
        return Err(invalid_grant("The ID Token was issued in the future (iat)."));
    }
    if claims.exp <= claims.iat || claims.exp - claims.iat > MAX_SUBJECT_LIFETIME_SECONDS {
        return Err(invalid_grant("The ID Token must expire (exp) less than 48 hours after it was issued (iat)."));
    }
    if claims.exp <= now {
        return Err(invalid_grant(format!(
            "The ID Token has expired: exp {} is {} seconds in the past.",
            claims.exp,
            now - claims.exp
        )));
    }
    match claims.sub.as_deref() {
        Some(subject) if !subject.is_empty() && subject.len() <= 127 => Ok(subject.to_owned()),
        _ => Err(invalid_grant("The ID Token has no sub claim (1 to 127 characters).")),
    }
}

/// Claims for a subject token of the workload pool (or `audience`), valid for `lifetime` from
/// `now` (an `issued_ago` moves `iat` back, to mint expired tokens).
pub(crate) fn subject_claims(
    issuer_url: &str,
    subject: &str,
    audience: &str,
    now: SystemTime,
    issued_ago: Duration,
    lifetime: Duration,
) -> Value {
    let iat = unix_seconds(now) - i64::try_from(issued_ago.as_secs()).unwrap_or(i64::MAX);
    let exp = iat + i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX);
    json!({ "iss": issuer_url, "sub": subject, "aud": audience, "iat": iat, "exp": exp })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audiences_are_read_as_provider_resource_names() {
        let workload = "//iam.googleapis.com/projects/42/locations/global/workloadIdentityPools/p/providers/x";
        let (pool, name) = Pool::parse(workload).unwrap();
        assert_eq!(name, "projects/42/locations/global/workloadIdentityPools/p/providers/x");
        assert_eq!(
            pool.principal("system:serviceaccount:keyturn:keyturn"),
            "principal://iam.googleapis.com/projects/42/locations/global/workloadIdentityPools/p/subject/system:serviceaccount:keyturn:keyturn"
        );
        let workforce = "//iam.googleapis.com/locations/global/workforcePools/w/providers/x";
        assert!(matches!(Pool::parse(workforce), Some((Pool::Workforce { .. }, _))));
        for bad in [
            "projects/42/locations/global/workloadIdentityPools/p/providers/x",
            "https://iam.googleapis.com/projects/42/locations/global/workloadIdentityPools/p/providers/x",
            "//iam.googleapis.com/projects/42/locations/global/workloadIdentityPools/p",
            "//iam.googleapis.com/projects/42/locations/europe-west3/workloadIdentityPools/p/providers/x",
            "",
        ] {
            assert_eq!(Pool::parse(bad), None, "{bad}");
        }
        assert!(Pool::parse(&workload_audience(7)).unwrap().0.exists(7));
        assert!(!Pool::parse(&workload_audience(7)).unwrap().0.exists(8));
    }

    #[test]
    fn json_bodies_take_camel_case_names() {
        let form = read_body(
            Some("application/json"),
            br#"{"grantType":"g","subjectToken":"t","scope":"s","audience":"a","requestedTokenType":"r"}"#,
        )
        .unwrap();
        assert_eq!(form["grant_type"], "g");
        assert_eq!(form["subject_token"], "t");
        assert!(read_body(Some("text/plain"), b"x").is_err());
    }
}
