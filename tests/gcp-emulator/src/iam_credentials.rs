//! IAM Credentials `generateAccessToken`: service account impersonation, as
//! `shared/reference/gcp-identity/CONTRACT.md` §3 describes it.
//!
//! `POST /v1/projects/-/serviceAccounts/EMAIL:generateAccessToken` with `Authorization: Bearer`
//! (a federated token from STS, or any token the emulator issued) and
//! `{"scope": [...], "lifetime": "3600s", "delegates": []}`. The caller must hold
//! `iam.serviceAccounts.getAccessToken` on the account, which the emulator grants only through
//! [`Identities::allow_impersonation`] (Workload Identity User / Token Creator on the account).
//! An account that does not exist is refused with the same 403, as Google does, so existence is
//! not revealed. The answer is `{"accessToken", "expireTime"}` (RFC 3339), and the token acts as
//! the account with the account's role.

use std::time::{Duration, SystemTime};

use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::{CLOUD_PLATFORM_SCOPE, Caller, Identities};
use crate::clock::{format_timestamp, parse_duration};
use crate::status::{ApiError, Code};

const PERMISSION: &str = "iam.serviceAccounts.getAccessToken";
const SERVICE: &str = "iamcredentials.googleapis.com";
/// The scope IAM Credentials takes besides cloud-platform (google-auth asks STS for it when it
/// impersonates).
const IAM_SCOPE: &str = "https://www.googleapis.com/auth/iam";
const METHOD: &str = "google.iam.credentials.v1.IAMCredentials.GenerateAccessToken";
/// The longest token IAM issues without the organization policy that allows 12 hours.
const MAX_LIFETIME: Duration = Duration::from_secs(3600);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    #[serde(default)]
    scope: Vec<String>,
    #[serde(default)]
    lifetime: Option<String>,
    /// google-auth sends `null` when there are none.
    #[serde(default)]
    delegates: Option<Vec<String>>,
}

/// The 403 Google answers when the caller may not mint tokens for `account`, or `account`
/// does not exist.
pub(crate) fn denied() -> ApiError {
    ApiError::new(
        Code::PermissionDenied,
        format!("Permission '{PERMISSION}' denied on resource (or it may not exist)."),
    )
    .with_error_info("IAM_PERMISSION_DENIED", "iam.googleapis.com", json!({ "permission": PERMISSION }))
}

/// One `generateAccessToken` call. `bearer` is the caller's token, if it sent one.
pub(crate) fn generate_access_token(
    identities: &mut Identities,
    account: &str,
    bearer: Option<&str>,
    body: &[u8],
    now: SystemTime,
) -> Result<Value, ApiError> {
    let Some(token) = bearer else {
        return Err(ApiError::unauthenticated_at(SERVICE, "CREDENTIALS_MISSING", METHOD));
    };
    let caller = match identities.caller_with_scopes(token, now, &[CLOUD_PLATFORM_SCOPE, IAM_SCOPE]) {
        Caller::Principal { email, .. } => email,
        Caller::Expired => return Err(ApiError::unauthenticated_at(SERVICE, "ACCESS_TOKEN_EXPIRED", METHOD)),
        Caller::Unknown => return Err(ApiError::unauthenticated_at(SERVICE, "ACCESS_TOKEN_TYPE_UNSUPPORTED", METHOD)),
        Caller::WrongScope => return Err(ApiError::insufficient_scopes_at(SERVICE, METHOD)),
    };
    if !identities.may_impersonate(&caller, account) {
        tracing::debug!(%caller, %account, "generateAccessToken refused: no impersonation grant");
        return Err(denied());
    }
    let body: Body = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid_argument(format!("Invalid JSON payload received. {e}")))?;
    if body.scope.is_empty() {
        return Err(ApiError::invalid_argument("Scope is required: name at least one OAuth scope."));
    }
    if body.delegates.as_ref().is_some_and(|d| !d.is_empty()) {
        return Err(ApiError::new(Code::Unimplemented, "Delegation chains are not emulated."));
    }
    let lifetime = match body.lifetime.as_deref() {
        None => MAX_LIFETIME,
        Some(text) => parse_duration(text)
            .filter(|d| !d.is_zero())
            .ok_or_else(|| ApiError::invalid_argument(format!("Invalid value at 'lifetime' (Duration), \"{text}\"")))?,
    };
    if lifetime > MAX_LIFETIME {
        return Err(ApiError::invalid_argument(format!(
            "The lifetime {text}s exceeds the maximum of 3600s allowed without the \
             constraints/iam.allowServiceAccountCredentialLifetimeExtension organization policy.",
            text = lifetime.as_secs()
        )));
    }
    let access_token = identities
        .issue_for(account, body.scope, lifetime, now)
        .map_err(|_| ApiError::new(Code::Unavailable, "token generation failed"))?;
    // Google writes whole seconds: "2026-12-07T20:00:00Z".
    let expires = now + lifetime;
    let whole = std::time::UNIX_EPOCH + Duration::from_secs(crate::clock::unix_seconds(expires).max(0).unsigned_abs());
    let expire_time = format_timestamp(whole).replace(".000000Z", "Z");
    Ok(json!({ "accessToken": access_token, "expireTime": expire_time }))
}
