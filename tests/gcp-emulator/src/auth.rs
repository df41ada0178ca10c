//! Identity: service-account keys, the OAuth token exchange, bearer tokens and roles.
//!
//! The emulator plays both Google's OAuth token endpoint and IAM, reduced to what keyturn's
//! tests need: a principal is a service-account email, or a federated member
//! (`principal://…`, see `federation`), with one project-wide [`Role`]; service accounts also
//! list who may impersonate them (`iam_credentials`). The
//! emulator generates each key pair, hands out the private half as a JSON key file, and keeps
//! only the public half, under the key file's `private_key_id`, to verify JWTs. It never
//! stores private keys, so nothing here can leak them through `Debug`.
//!
//! A bearer token is either one the token endpoint (or [`Identities::issue_token_directly`])
//! issued, or a **self-signed JWT** (AIP-4111) that a client signed with a registered key and
//! sends as is, as Google's own client libraries do with service-account keys. Both resolve
//! to the same [`Caller`].

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::KeyPair as _;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::json;

use crate::clock::unix_seconds;
use crate::jwt::{self, AccessClaims, AccessGrant, JwtError};

/// The OAuth scope Secret Manager requires.
pub(crate) const CLOUD_PLATFORM_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// `expires_in` of every issued token, as Google returns it.
pub(crate) const TOKEN_LIFETIME: Duration = Duration::from_secs(3599);
const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// A project-wide role, standing in for an IAM binding on the project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// `secretmanager.versions.access` only.
    Accessor,
    /// Get and list secrets and versions; no payload access.
    Viewer,
    /// Add, enable, disable, destroy, get, list and access versions; get and list secrets.
    VersionManager,
    /// Every Secret Manager permission, including create, update and delete of secrets.
    Admin,
}

impl Role {
    pub(crate) fn grants(self, permission: &str) -> bool {
        const VIEWER: &[&str] = &[
            "secretmanager.secrets.get",
            "secretmanager.secrets.list",
            "secretmanager.versions.get",
            "secretmanager.versions.list",
        ];
        const VERSION_MANAGER: &[&str] = &[
            "secretmanager.versions.add",
            "secretmanager.versions.enable",
            "secretmanager.versions.disable",
            "secretmanager.versions.destroy",
            "secretmanager.versions.access",
        ];
        match self {
            Role::Accessor => permission == "secretmanager.versions.access",
            Role::Viewer => VIEWER.contains(&permission),
            Role::VersionManager => VIEWER.contains(&permission) || VERSION_MANAGER.contains(&permission),
            Role::Admin => permission.starts_with("secretmanager."),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Accessor => "accessor",
            Role::Viewer => "viewer",
            Role::VersionManager => "versionManager",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that is not `accessor`, `viewer`, `versionManager` or `admin`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?} (expected accessor, viewer, versionManager or admin)")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "accessor" => Ok(Role::Accessor),
            "viewer" => Ok(Role::Viewer),
            "versionManager" | "version-manager" | "version_manager" => Ok(Role::VersionManager),
            "admin" => Ok(Role::Admin),
            _ => Err(UnknownRole(text.to_owned())),
        }
    }
}

/// Who a bearer token speaks for, and until when.
#[derive(Clone)]
pub(crate) struct Grant {
    pub(crate) email: String,
    pub(crate) expires: SystemTime,
    pub(crate) scopes: Vec<String>,
}

/// The outcome of looking up a bearer token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Caller {
    /// A principal: a service account's email, or a federated `principal://…` member. `role` is
    /// `None` for a principal granted nothing (a federated identity with no binding), whose
    /// every call is a 403, not a 401.
    Principal {
        email: String,
        role: Option<Role>,
    },
    Unknown,
    Expired,
    /// The token is valid but was not issued for the cloud-platform scope.
    WrongScope,
}

#[derive(Default)]
pub(crate) struct Identities {
    /// principal → role: a service account's email, or a federated `principal://…` member. A
    /// principal may exist without keys (see `issue_token_directly`, `grant`).
    roles: HashMap<String, Role>,
    /// service account email → the principals that may impersonate it (Workload Identity User).
    impersonators: HashMap<String, HashSet<String>>,
    /// email → every key issued to it. gcp_auth sends no `kid`, so the token endpoint tries
    /// them all; a self-signed JWT names its key by `kid`.
    public_keys: HashMap<String, Vec<PublicKey>>,
    tokens: HashMap<String, Grant>,
}

impl fmt::Debug for Identities {
    // Tokens are credentials: show how many there are, never their values.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identities").field("principals", &self.roles).field("tokens", &self.tokens.len()).finish()
    }
}

/// The public half of a service-account key.
#[derive(Debug, Clone)]
pub(crate) struct PublicKey {
    /// The key file's `private_key_id`, which self-signed JWTs carry as `kid`.
    pub(crate) id: String,
    /// PKCS#1 RSAPublicKey DER.
    pub(crate) der: Vec<u8>,
}

/// Key generation failed inside aws-lc; the emulator cannot continue without keys.
#[derive(Debug, thiserror::Error)]
#[error("generating an RSA-2048 service-account key failed")]
pub(crate) struct KeyGenerationError;

impl Identities {
    /// Remembers `role` for `email` and adds `public_key` to its keys.
    pub(crate) fn register_key(&mut self, email: &str, role: Role, public_key: PublicKey) {
        self.public_keys.entry(email.to_owned()).or_default().push(public_key);
        self.roles.insert(email.to_owned(), role);
    }

    /// Issues a token without the JWT exchange, for tests that talk REST directly.
    pub(crate) fn issue_token_directly(
        &mut self,
        email: &str,
        role: Role,
        now: SystemTime,
    ) -> Result<String, KeyGenerationError> {
        self.roles.insert(email.to_owned(), role);
        self.issue(email, vec![CLOUD_PLATFORM_SCOPE.to_owned()], now)
    }

    fn issue(&mut self, email: &str, scopes: Vec<String>, now: SystemTime) -> Result<String, KeyGenerationError> {
        self.issue_for(email, scopes, TOKEN_LIFETIME, now)
    }

    /// Issues a token for `principal` (an email or a federated member) valid for `lifetime`.
    pub(crate) fn issue_for(
        &mut self,
        principal: &str,
        scopes: Vec<String>,
        lifetime: Duration,
        now: SystemTime,
    ) -> Result<String, KeyGenerationError> {
        let token = format!("ya29.emulator.{}", URL_SAFE_NO_PAD.encode(random_bytes::<32>()?));
        self.tokens.insert(token.clone(), Grant { email: principal.to_owned(), expires: now + lifetime, scopes });
        Ok(token)
    }

    /// Grants `principal` (an email or a federated `principal://…` member) `role`, project-wide.
    pub(crate) fn grant(&mut self, principal: &str, role: Role) {
        self.roles.insert(principal.to_owned(), role);
    }

    /// Lets `principal` mint tokens for the service account `account` (which gets `role`).
    pub(crate) fn allow_impersonation(&mut self, principal: &str, account: &str, role: Role) {
        self.roles.insert(account.to_owned(), role);
        self.impersonators.entry(account.to_owned()).or_default().insert(principal.to_owned());
    }

    /// Whether `principal` holds `iam.serviceAccounts.getAccessToken` on `account`.
    pub(crate) fn may_impersonate(&self, principal: &str, account: &str) -> bool {
        self.impersonators.get(account).is_some_and(|members| members.contains(principal))
    }

    /// Every token issued and not yet forgotten, for tests that prove none leaks.
    pub(crate) fn issued_tokens(&self) -> Vec<String> {
        self.tokens.keys().cloned().collect()
    }

    pub(crate) fn caller(&self, token: &str, now: SystemTime) -> Caller {
        self.caller_with_scopes(token, now, &[CLOUD_PLATFORM_SCOPE])
    }

    /// [`Identities::caller`] for a service that takes any of `scopes` (IAM Credentials takes
    /// `auth/iam` besides cloud-platform).
    pub(crate) fn caller_with_scopes(&self, token: &str, now: SystemTime, scopes: &[&str]) -> Caller {
        let Some(grant) = self.tokens.get(token) else {
            return self.self_signed_caller(token, now);
        };
        if grant.expires <= now {
            return Caller::Expired;
        }
        if !grant.scopes.iter().any(|s| scopes.contains(&s.as_str())) {
            return Caller::WrongScope;
        }
        // An issued token always names someone: one granted nothing gets 403s, not 401s.
        Caller::Principal { email: grant.email.clone(), role: self.roles.get(&grant.email).copied() }
    }

    /// A bearer token the emulator did not issue: a self-signed JWT, or nothing it knows.
    /// Why a JWT was refused is logged, not answered, as Google's 401 says only "invalid
    /// authentication credentials".
    fn self_signed_caller(&self, token: &str, now: SystemTime) -> Caller {
        let Ok(jwt) = jwt::parse::<AccessClaims>(token) else {
            return Caller::Unknown;
        };
        let checked = self.check_self_signed(&jwt, now);
        match checked {
            Ok(caller) => caller,
            Err(JwtError::Expired) => Caller::Expired,
            Err(error) => {
                tracing::debug!(%error, iss = %jwt.claims.iss, "self-signed JWT refused");
                Caller::Unknown
            }
        }
    }

    /// The key named by `kid` must be registered to `iss`, and must have signed the JWT; then
    /// the claims' rules (`iss` = `sub`, audience or scope, timeframe) decide.
    fn check_self_signed(&self, jwt: &jwt::Unverified<'_, AccessClaims>, now: SystemTime) -> Result<Caller, JwtError> {
        let key_id = jwt.key_id.as_deref().ok_or(JwtError::UnknownKey)?;
        let keys = self.public_keys.get(&jwt.claims.iss).ok_or(JwtError::UnknownIssuer)?;
        let key = keys.iter().find(|k| k.id == key_id).ok_or(JwtError::UnknownKey)?;
        jwt.verify_signature([key.der.as_slice()])?;
        let grant = jwt.claims.check(CLOUD_PLATFORM_SCOPE, unix_seconds(now))?;
        let role = *self.roles.get(&jwt.claims.iss).ok_or(JwtError::UnknownIssuer)?;
        Ok(match grant {
            AccessGrant::Service => Caller::Principal { email: jwt.claims.iss.clone(), role: Some(role) },
            AccessGrant::OtherScopes => Caller::WrongScope,
        })
    }

    /// `POST /token`: the JWT-bearer grant. `form` is the decoded form body.
    pub(crate) fn exchange(
        &mut self,
        form: &HashMap<String, String>,
        token_uri: &str,
        now: SystemTime,
    ) -> Result<serde_json::Value, OAuthError> {
        match form.get("grant_type").map(String::as_str) {
            Some(GRANT_TYPE) => {}
            Some(other) => {
                return Err(OAuthError::new("unsupported_grant_type", format!("Invalid grant_type: {other}")));
            }
            None => {
                return Err(OAuthError::new("invalid_request", "Missing required parameter: grant_type"));
            }
        }
        let Some(assertion) = form.get("assertion") else {
            return Err(OAuthError::new("invalid_request", "Missing required parameter: assertion"));
        };
        let unverified = jwt::parse::<jwt::Claims>(assertion).map_err(OAuthError::grant)?;
        let keys = self.public_keys.get(&unverified.claims.iss).ok_or(OAuthError::grant(JwtError::UnknownIssuer))?;
        unverified.verify_signature(keys.iter().map(|k| k.der.as_slice())).map_err(OAuthError::grant)?;
        unverified.claims.check(token_uri, unix_seconds(now)).map_err(OAuthError::grant)?;
        let scopes: Vec<String> =
            unverified.claims.scope.as_deref().unwrap_or_default().split_whitespace().map(str::to_owned).collect();
        if scopes.is_empty() {
            return Err(OAuthError::new("invalid_scope", "Empty or missing scope not allowed."));
        }
        let token = self
            .issue(&unverified.claims.iss, scopes, now)
            .map_err(|_| OAuthError::new("internal_failure", "token generation failed"))?;
        Ok(json!({
            "access_token": token,
            "expires_in": TOKEN_LIFETIME.as_secs(),
            "token_type": "Bearer",
        }))
    }

    /// Forgets tokens but keeps principals and their keys, so key files handed out stay valid.
    pub(crate) fn revoke_tokens(&mut self) {
        self.tokens.clear();
    }
}

/// A new service-account key for `email`: the JSON key file (the shape `gcloud iam
/// service-accounts keys create` writes, PKCS#8 PEM private key) and its public half.
/// Generation is slow-ish, so callers do it outside any lock.
pub(crate) fn generate_service_account_key(
    email: &str,
    project_id: &str,
    token_uri: &str,
) -> Result<(String, PublicKey), KeyGenerationError> {
    let pair = KeyPair::generate(KeySize::Rsa2048).map_err(|_| KeyGenerationError)?;
    let pkcs8 = pair.as_der().map_err(|_| KeyGenerationError)?;
    let private_key_id = hex(&random_bytes::<20>()?);
    let client_id = u128::from_be_bytes(random_bytes::<16>()?) % 10u128.pow(21);
    let key = json!({
        "type": "service_account",
        "project_id": project_id,
        "private_key_id": &private_key_id,
        "private_key": pem("PRIVATE KEY", pkcs8.as_ref()),
        "client_email": email,
        "client_id": format!("{client_id:021}"),
        "token_uri": token_uri,
        "universe_domain": "googleapis.com",
    });
    let text = serde_json::to_string_pretty(&key).map_err(|_| KeyGenerationError)?;
    Ok((text, PublicKey { id: private_key_id, der: pair.public_key().as_ref().to_vec() }))
}

/// An OAuth 2.0 error response (`{"error":…,"error_description":…}`, HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OAuthError {
    pub(crate) error: &'static str,
    pub(crate) description: String,
}

impl OAuthError {
    pub(crate) fn new(error: &'static str, description: impl Into<String>) -> Self {
        OAuthError { error, description: description.into() }
    }

    fn grant(error: JwtError) -> Self {
        OAuthError::new("invalid_grant", error.to_string())
    }

    pub(crate) fn to_json(&self) -> serde_json::Value {
        json!({ "error": self.error, "error_description": self.description })
    }
}

fn random_bytes<const N: usize>() -> Result<[u8; N], KeyGenerationError> {
    let mut bytes = [0u8; N];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| KeyGenerationError)?;
    Ok(bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// PEM armour: base64 in 64-character lines. aws-lc-rs has no PEM helpers.
pub(crate) fn pem(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut text = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        text.push_str(std::str::from_utf8(line).unwrap_or_default());
        text.push('\n');
    }
    text.push_str(&format!("-----END {label}-----\n"));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_grant_what_the_brief_says() {
        assert!(Role::Accessor.grants("secretmanager.versions.access"));
        assert!(!Role::Accessor.grants("secretmanager.versions.get"));
        assert!(Role::Viewer.grants("secretmanager.secrets.list"));
        assert!(!Role::Viewer.grants("secretmanager.versions.access"));
        assert!(Role::VersionManager.grants("secretmanager.versions.destroy"));
        assert!(Role::VersionManager.grants("secretmanager.versions.access"));
        assert!(!Role::VersionManager.grants("secretmanager.secrets.create"));
        assert!(!Role::VersionManager.grants("secretmanager.secrets.update"));
        assert!(Role::Admin.grants("secretmanager.secrets.delete"));
        for role in [Role::Accessor, Role::Viewer, Role::VersionManager, Role::Admin] {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        }
    }

    #[test]
    fn pem_wraps_at_64_columns() {
        let text = pem("PRIVATE KEY", &[0u8; 100]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "-----BEGIN PRIVATE KEY-----");
        assert_eq!(lines[1].len(), 64);
        assert_eq!(lines.last(), Some(&"-----END PRIVATE KEY-----"));
    }

    #[test]
    fn tokens_expire_and_need_the_cloud_platform_scope() {
        let mut ids = Identities::default();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let token = ids.issue_token_directly("a@p.iam.gserviceaccount.com", Role::Viewer, now).unwrap();
        assert_eq!(
            ids.caller(&token, now),
            Caller::Principal { email: "a@p.iam.gserviceaccount.com".into(), role: Some(Role::Viewer) }
        );
        assert_eq!(ids.caller(&token, now + TOKEN_LIFETIME), Caller::Expired);
        assert_eq!(ids.caller("nope", now), Caller::Unknown);
        let narrow = ids.issue("a@p.iam.gserviceaccount.com", vec!["openid".into()], now).unwrap();
        assert_eq!(ids.caller(&narrow, now), Caller::WrongScope);
    }
}
