//! Google API errors: the `google.rpc.Status` envelope and the messages Secret Manager uses.
//!
//! Every failure of a Secret Manager call leaves the emulator as an [`ApiError`], rendered as
//! `{"error":{"code":N,"message":"…","status":"…","details":[…]}}` with the HTTP status taken
//! from the google.rpc Code mapping (CONTRACT §11). The constructors below hold the message
//! shapes: real ones where the contract quotes the service, and labelled design choices where it
//! does not, so one place owns every string a client might match on.

use serde_json::{Value, json};

/// The google.rpc codes the emulator can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Code {
    InvalidArgument,
    FailedPrecondition,
    Unauthenticated,
    PermissionDenied,
    NotFound,
    AlreadyExists,
    ResourceExhausted,
    Unimplemented,
    Unavailable,
}

impl Code {
    pub(crate) fn http_status(self) -> u16 {
        match self {
            Code::InvalidArgument | Code::FailedPrecondition => 400,
            Code::Unauthenticated => 401,
            Code::PermissionDenied => 403,
            Code::NotFound => 404,
            Code::AlreadyExists => 409,
            Code::ResourceExhausted => 429,
            Code::Unimplemented => 501,
            Code::Unavailable => 503,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Code::InvalidArgument => "INVALID_ARGUMENT",
            Code::FailedPrecondition => "FAILED_PRECONDITION",
            Code::Unauthenticated => "UNAUTHENTICATED",
            Code::PermissionDenied => "PERMISSION_DENIED",
            Code::NotFound => "NOT_FOUND",
            Code::AlreadyExists => "ALREADY_EXISTS",
            Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Code::Unimplemented => "UNIMPLEMENTED",
            Code::Unavailable => "UNAVAILABLE",
        }
    }
}

/// One failed call, ready to be rendered.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{} {message}", code.name())]
pub(crate) struct ApiError {
    pub(crate) code: Code,
    pub(crate) message: String,
    /// `google.rpc` detail messages, already in their JSON form (with `@type`).
    pub(crate) details: Vec<Value>,
}

impl ApiError {
    pub(crate) fn new(code: Code, message: impl Into<String>) -> Self {
        ApiError { code, message: message.into(), details: Vec::new() }
    }

    pub(crate) fn invalid_argument(message: impl Into<String>) -> Self {
        ApiError::new(Code::InvalidArgument, message)
    }

    pub(crate) fn failed_precondition(message: impl Into<String>) -> Self {
        ApiError::new(Code::FailedPrecondition, message)
    }

    pub(crate) fn with_error_info(mut self, reason: &str, domain: &str, metadata: Value) -> Self {
        self.details.push(json!({
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": reason,
            "domain": domain,
            "metadata": metadata,
        }));
        self
    }

    /// The JSON body: `{"error":{…}}`. `details` is omitted when empty, as Google does.
    pub(crate) fn to_json(&self) -> Value {
        let mut error = json!({
            "code": self.code.http_status(),
            "message": self.message,
            "status": self.code.name(),
        });
        if !self.details.is_empty() {
            error["details"] = Value::Array(self.details.clone());
        }
        json!({ "error": error })
    }

    // ---- Secret Manager messages quoted by the contract (§4, §11) ----

    /// Missing secret, or `latest` of a secret with no versions. Google uses this one message for
    /// both, so clients cannot tell them apart and neither can the emulator's callers.
    pub(crate) fn secret_not_found(secret_name: &str) -> Self {
        ApiError::new(Code::NotFound, format!("Secret [{secret_name}] not found or has no versions."))
    }

    pub(crate) fn version_not_found(version_name: &str) -> Self {
        ApiError::new(Code::NotFound, format!("Secret Version [{version_name}] not found."))
    }

    pub(crate) fn secret_already_exists(secret_name: &str) -> Self {
        ApiError::new(Code::AlreadyExists, format!("Secret [{secret_name}] already exists."))
    }

    /// Access of a version that is not ENABLED, or a transition out of DESTROYED.
    pub(crate) fn version_in_state(version_name: &str, state: &str) -> Self {
        ApiError::failed_precondition(format!("Secret Version [{version_name}] is in {state} state."))
    }

    pub(crate) fn invalid_resource_id(name: &str) -> Self {
        ApiError::invalid_argument(format!("Resource ID [{name}] is not in a valid format."))
    }

    /// The contract gives the status (400 FAILED_PRECONDITION) but not Google's wording; this
    /// message is a design choice that names both etags so a failing test explains itself.
    pub(crate) fn etag_mismatch(resource_name: &str, sent: &str, current: &str) -> Self {
        ApiError::failed_precondition(format!(
            "The etag {sent} does not match the current etag {current} of [{resource_name}]."
        ))
    }

    pub(crate) fn permission_denied(permission: &str, resource: &str) -> Self {
        ApiError::new(
            Code::PermissionDenied,
            format!("Permission '{permission}' denied for resource '{resource}' (or it may not exist)."),
        )
        .with_error_info(
            "IAM_PERMISSION_DENIED",
            "iam.googleapis.com",
            json!({ "permission": permission, "resource": resource }),
        )
    }

    /// 401 for a missing, unknown or expired bearer token. `reason` is the ErrorInfo reason
    /// Google's front end attaches (`CREDENTIALS_MISSING`, `ACCESS_TOKEN_EXPIRED`, …).
    pub(crate) fn unauthenticated(reason: &str, rpc_method: &str) -> Self {
        ApiError::unauthenticated_at("secretmanager.googleapis.com", reason, rpc_method)
    }

    /// [`ApiError::unauthenticated`] as another service (`iamcredentials.googleapis.com`) says it.
    pub(crate) fn unauthenticated_at(service: &str, reason: &str, rpc_method: &str) -> Self {
        ApiError::new(
            Code::Unauthenticated,
            "Request had invalid authentication credentials. Expected OAuth 2 access token, \
             login cookie or other valid authentication credential. See \
             https://developers.google.com/identity/sign-in/web/devconsole-project.",
        )
        .with_error_info(reason, "googleapis.com", json!({ "service": service, "method": rpc_method }))
    }

    /// 401 for an API key without a token: Secret Manager needs a principal. Google's wording
    /// for APIs that do not take API keys.
    pub(crate) fn api_key_not_supported(rpc_method: &str) -> Self {
        ApiError::new(
            Code::Unauthenticated,
            "API keys are not supported by this API. Expected OAuth2 access token or other \
             authentication credentials that assert a principal. See \
             https://cloud.google.com/docs/authentication",
        )
        .with_error_info(
            "CREDENTIALS_MISSING",
            "googleapis.com",
            json!({ "service": "secretmanager.googleapis.com", "method": rpc_method }),
        )
    }

    pub(crate) fn insufficient_scopes(rpc_method: &str) -> Self {
        ApiError::insufficient_scopes_at("secretmanager.googleapis.com", rpc_method)
    }

    pub(crate) fn insufficient_scopes_at(service: &str, rpc_method: &str) -> Self {
        ApiError::new(Code::PermissionDenied, "Request had insufficient authentication scopes.").with_error_info(
            "ACCESS_TOKEN_SCOPE_INSUFFICIENT",
            "googleapis.com",
            json!({ "service": service, "method": rpc_method }),
        )
    }

    /// 429 in the shape Google's quota system uses for every API (CONTRACT §11 [B]).
    pub(crate) fn quota_exceeded(
        metric: &str,
        limit_name: &str,
        limit_id: &str,
        limit: u32,
        project_number: u64,
    ) -> Self {
        ApiError::new(
            Code::ResourceExhausted,
            format!(
                "Quota exceeded for quota metric '{metric}' and limit '{limit_name}' of service \
                 'secretmanager.googleapis.com' for consumer 'project_number:{project_number}'."
            ),
        )
        .with_error_info(
            "RATE_LIMIT_EXCEEDED",
            "googleapis.com",
            json!({
                "service": "secretmanager.googleapis.com",
                "consumer": format!("projects/{project_number}"),
                "quota_metric": format!(
                    "secretmanager.googleapis.com/{}",
                    metric.to_lowercase().replace(' ', "_")
                ),
                "quota_limit": limit_id,
                "quota_limit_value": limit.to_string(),
            }),
        )
    }

    pub(crate) fn unavailable() -> Self {
        ApiError::new(Code::Unavailable, "The service is currently unavailable.")
    }

    /// A well-formed path the emulator recognises but does not emulate (IAM policy methods,
    /// managed rotation, locations).
    pub(crate) fn unimplemented(rpc_method: &str) -> Self {
        ApiError::new(
            Code::Unimplemented,
            format!("Method {rpc_method} is not implemented by the Secret Manager emulator."),
        )
    }

    /// Malformed JSON or a field of the wrong type, worded like Google's ESF front end.
    pub(crate) fn invalid_json(detail: impl std::fmt::Display) -> Self {
        ApiError::invalid_argument(format!("Invalid JSON payload received. {detail}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_has_code_message_status_and_details() {
        let error =
            ApiError::permission_denied("secretmanager.versions.access", "projects/p/secrets/s/versions/latest");
        let body = error.to_json();
        assert_eq!(body["error"]["code"], 403);
        assert_eq!(body["error"]["status"], "PERMISSION_DENIED");
        assert_eq!(
            body["error"]["message"],
            "Permission 'secretmanager.versions.access' denied for resource \
             'projects/p/secrets/s/versions/latest' (or it may not exist)."
        );
        assert_eq!(body["error"]["details"][0]["reason"], "IAM_PERMISSION_DENIED");
        assert_eq!(body["error"]["details"][0]["metadata"]["permission"], "secretmanager.versions.access");
    }

    #[test]
    fn details_are_omitted_when_empty() {
        let body = ApiError::secret_not_found("projects/1/secrets/x").to_json();
        assert!(body["error"].get("details").is_none());
        assert_eq!(body["error"]["code"], 404);
    }

    #[test]
    fn http_mapping_follows_google_rpc() {
        let table = [
            (Code::InvalidArgument, 400),
            (Code::FailedPrecondition, 400),
            (Code::Unauthenticated, 401),
            (Code::PermissionDenied, 403),
            (Code::NotFound, 404),
            (Code::AlreadyExists, 409),
            (Code::ResourceExhausted, 429),
            (Code::Unimplemented, 501),
            (Code::Unavailable, 503),
        ];
        for (code, http) in table {
            assert_eq!(code.http_status(), http, "{code:?}");
        }
    }
}
