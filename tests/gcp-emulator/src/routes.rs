//! Routing: HTTP method and path → what the request asks for.
//!
//! Secret Manager's REST surface is gRPC transcoding (`/v1/{name=projects/*/secrets/*}:access`),
//! which a path-template router does not express well (a custom verb shares a segment with the
//! last resource ID). This module parses paths by hand into an [`Operation`] that keeps the
//! segments exactly as requested; validating them (is the secret ID well formed, is the project
//! ours) is the handler's job, so errors can quote the full resource name.
//!
//! A path that matches no method gets `None`; the caller answers 404.

use hyper::Method as Http;
use percent_encoding::percent_decode_str;

use crate::counts::Method;
use crate::wire::Message;

/// `projects/{project}` or `projects/{project}/locations/{location}`, as requested.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Parent {
    pub(crate) project: String,
    pub(crate) location: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SecretPath {
    pub(crate) parent: Parent,
    pub(crate) secret: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VersionPath {
    pub(crate) secret: SecretPath,
    pub(crate) version: String,
}

/// A Secret Manager call, by RPC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Operation {
    CreateSecret(Parent),
    ListSecrets(Parent),
    GetSecret(SecretPath),
    PatchSecret(SecretPath),
    DeleteSecret(SecretPath),
    AddVersion(SecretPath),
    ListVersions(SecretPath),
    GetVersion(VersionPath),
    AccessVersion(VersionPath),
    EnableVersion(VersionPath),
    DisableVersion(VersionPath),
    DestroyVersion(VersionPath),
    /// Exists in the v1 API but is outside what the emulator emulates (IAM policies, managed
    /// rotation, locations). Carries the RPC name for the 501 message.
    Unimplemented(Parent, &'static str),
}

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    /// `POST /token`
    Token,
    /// `POST /v1/token`: the Security Token Service (on `sts.googleapis.com` at Google).
    Sts,
    /// `POST /v1/projects/{project}/serviceAccounts/{email}:generateAccessToken`: IAM
    /// Credentials (on `iamcredentials.googleapis.com` at Google).
    GenerateAccessToken {
        project: String,
        account: String,
    },
    /// `GET /oidc/.well-known/openid-configuration` and `GET /oidc/jwks`: the test issuer.
    Oidc(OidcDocument),
    /// Anything under `/emulator/`.
    Admin,
    Api(Operation),
}

/// The test issuer's documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OidcDocument {
    Discovery,
    Jwks,
}

pub(crate) fn route(method: &Http, path: &str) -> Option<Route> {
    if path == "/emulator" || path.starts_with("/emulator/") {
        return Some(Route::Admin);
    }
    if path == "/token" {
        return (method == Http::POST).then_some(Route::Token);
    }
    if path == "/v1/token" {
        return (method == Http::POST).then_some(Route::Sts);
    }
    match path {
        "/oidc/.well-known/openid-configuration" => {
            return (method == Http::GET).then_some(Route::Oidc(OidcDocument::Discovery));
        }
        "/oidc/jwks" => return (method == Http::GET).then_some(Route::Oidc(OidcDocument::Jwks)),
        _ => {}
    }
    let rest = path.strip_prefix("/v1/")?;
    let segments: Vec<String> =
        rest.split('/').map(|s| percent_decode_str(s).decode_utf8_lossy().into_owned()).collect();
    if let [projects, project, accounts, last] = segments.as_slice()
        && projects == "projects"
        && accounts == "serviceAccounts"
    {
        let (account, verb) = split_verb(last);
        return (method == Http::POST && verb == Some("generateAccessToken") && !account.is_empty())
            .then(|| Route::GenerateAccessToken { project: project.clone(), account: account.to_owned() });
    }
    api_operation(method, &segments).map(Route::Api)
}

fn api_operation(method: &Http, segments: &[String]) -> Option<Operation> {
    let [first, project, rest @ ..] = segments else {
        return None;
    };
    if first != "projects" || project.is_empty() {
        return None;
    }
    let mut parent = Parent { project: project.clone(), location: None };
    let rest = match rest {
        [locations] if locations == "locations" && method == Http::GET => {
            return Some(Operation::Unimplemented(parent, "ListLocations"));
        }
        [locations, location] if locations == "locations" && method == Http::GET => {
            parent.location = Some(location.clone());
            return Some(Operation::Unimplemented(parent, "GetLocation"));
        }
        [locations, location, tail @ ..] if locations == "locations" && !location.is_empty() => {
            parent.location = Some(location.clone());
            tail
        }
        _ => rest,
    };
    match rest {
        [secrets] if secrets == "secrets" => match *method {
            Http::GET => Some(Operation::ListSecrets(parent)),
            Http::POST => Some(Operation::CreateSecret(parent)),
            _ => None,
        },
        [secrets, last] if secrets == "secrets" => {
            let (secret, verb) = split_verb(last);
            let path = SecretPath { parent: parent.clone(), secret: secret.to_owned() };
            match (method, verb) {
                (&Http::GET, None) => Some(Operation::GetSecret(path)),
                (&Http::PATCH, None) => Some(Operation::PatchSecret(path)),
                (&Http::DELETE, None) => Some(Operation::DeleteSecret(path)),
                (&Http::POST, Some("addVersion")) => Some(Operation::AddVersion(path)),
                (&Http::GET, Some("getIamPolicy")) => Some(Operation::Unimplemented(parent, "GetIamPolicy")),
                (&Http::POST, Some("setIamPolicy")) => Some(Operation::Unimplemented(parent, "SetIamPolicy")),
                (&Http::POST, Some("testIamPermissions")) => {
                    Some(Operation::Unimplemented(parent, "TestIamPermissions"))
                }
                (&Http::POST, Some("rotateSecret")) => Some(Operation::Unimplemented(parent, "RotateSecret")),
                (&Http::POST, Some("enableManagedRotation")) => {
                    Some(Operation::Unimplemented(parent, "EnableManagedRotation"))
                }
                _ => None,
            }
        }
        [secrets, secret, versions] if secrets == "secrets" && versions == "versions" => {
            (method == Http::GET).then(|| Operation::ListVersions(SecretPath { parent, secret: secret.clone() }))
        }
        [secrets, secret, versions, last] if secrets == "secrets" && versions == "versions" => {
            let (version, verb) = split_verb(last);
            let path =
                VersionPath { secret: SecretPath { parent, secret: secret.clone() }, version: version.to_owned() };
            match (method, verb) {
                (&Http::GET, None) => Some(Operation::GetVersion(path)),
                (&Http::GET, Some("access")) => Some(Operation::AccessVersion(path)),
                (&Http::POST, Some("enable")) => Some(Operation::EnableVersion(path)),
                (&Http::POST, Some("disable")) => Some(Operation::DisableVersion(path)),
                (&Http::POST, Some("destroy")) => Some(Operation::DestroyVersion(path)),
                _ => None,
            }
        }
        _ => None,
    }
}

/// `name:verb` → (`name`, `Some("verb")`). IDs never contain `:`, so the first colon splits.
fn split_verb(segment: &str) -> (&str, Option<&str>) {
    match segment.split_once(':') {
        Some((name, verb)) => (name, Some(verb)),
        None => (segment, None),
    }
}

impl Operation {
    /// The counted method; `None` for the unimplemented RPCs.
    pub(crate) fn method(&self) -> Option<Method> {
        Some(match self {
            Operation::CreateSecret(_) => Method::Create,
            Operation::ListSecrets(_) => Method::List,
            Operation::GetSecret(_) => Method::Get,
            Operation::PatchSecret(_) => Method::Patch,
            Operation::DeleteSecret(_) => Method::Delete,
            Operation::AddVersion(_) => Method::AddVersion,
            Operation::ListVersions(_) => Method::ListVersions,
            Operation::GetVersion(_) => Method::GetVersion,
            Operation::AccessVersion(_) => Method::Access,
            Operation::EnableVersion(_) => Method::Enable,
            Operation::DisableVersion(_) => Method::Disable,
            Operation::DestroyVersion(_) => Method::Destroy,
            Operation::Unimplemented(..) => return None,
        })
    }

    /// The message a successful call answers with.
    pub(crate) fn response_message(&self) -> Message {
        match self {
            Operation::CreateSecret(_) | Operation::GetSecret(_) | Operation::PatchSecret(_) => Message::Secret,
            Operation::ListSecrets(_) => Message::ListSecretsResponse,
            Operation::ListVersions(_) => Message::ListSecretVersionsResponse,
            Operation::AccessVersion(_) => Message::AccessSecretVersionResponse,
            Operation::AddVersion(_)
            | Operation::GetVersion(_)
            | Operation::EnableVersion(_)
            | Operation::DisableVersion(_)
            | Operation::DestroyVersion(_) => Message::SecretVersion,
            Operation::DeleteSecret(_) | Operation::Unimplemented(..) => Message::Empty,
        }
    }

    /// The IAM permission Google checks for this RPC.
    pub(crate) fn permission(&self) -> Option<&'static str> {
        Some(match self {
            Operation::CreateSecret(_) => "secretmanager.secrets.create",
            Operation::ListSecrets(_) => "secretmanager.secrets.list",
            Operation::GetSecret(_) => "secretmanager.secrets.get",
            Operation::PatchSecret(_) => "secretmanager.secrets.update",
            Operation::DeleteSecret(_) => "secretmanager.secrets.delete",
            Operation::AddVersion(_) => "secretmanager.versions.add",
            Operation::ListVersions(_) => "secretmanager.versions.list",
            Operation::GetVersion(_) => "secretmanager.versions.get",
            Operation::AccessVersion(_) => "secretmanager.versions.access",
            Operation::EnableVersion(_) => "secretmanager.versions.enable",
            Operation::DisableVersion(_) => "secretmanager.versions.disable",
            Operation::DestroyVersion(_) => "secretmanager.versions.destroy",
            Operation::Unimplemented(..) => return None,
        })
    }

    /// The full gRPC method name, used in ErrorInfo metadata as Google's front end does.
    pub(crate) fn rpc_name(&self) -> String {
        let short = match self {
            Operation::CreateSecret(_) => "CreateSecret",
            Operation::ListSecrets(_) => "ListSecrets",
            Operation::GetSecret(_) => "GetSecret",
            Operation::PatchSecret(_) => "UpdateSecret",
            Operation::DeleteSecret(_) => "DeleteSecret",
            Operation::AddVersion(_) => "AddSecretVersion",
            Operation::ListVersions(_) => "ListSecretVersions",
            Operation::GetVersion(_) => "GetSecretVersion",
            Operation::AccessVersion(_) => "AccessSecretVersion",
            Operation::EnableVersion(_) => "EnableSecretVersion",
            Operation::DisableVersion(_) => "DisableSecretVersion",
            Operation::DestroyVersion(_) => "DestroySecretVersion",
            Operation::Unimplemented(_, name) => name,
        };
        format!("google.cloud.secretmanager.v1.SecretManagerService.{short}")
    }

    pub(crate) fn parent(&self) -> &Parent {
        match self {
            Operation::CreateSecret(parent) | Operation::ListSecrets(parent) | Operation::Unimplemented(parent, _) => {
                parent
            }
            Operation::GetSecret(path)
            | Operation::PatchSecret(path)
            | Operation::DeleteSecret(path)
            | Operation::AddVersion(path)
            | Operation::ListVersions(path) => &path.parent,
            Operation::GetVersion(path)
            | Operation::AccessVersion(path)
            | Operation::EnableVersion(path)
            | Operation::DisableVersion(path)
            | Operation::DestroyVersion(path) => &path.secret.parent,
        }
    }

    /// The resource the permission is checked on, spelled as the caller spelled it (project
    /// ID or number, `latest` or an alias), which is what Google's 403 message quotes.
    pub(crate) fn requested_resource(&self) -> String {
        let parent = |p: &Parent| crate::names::parent_name(&p.project, p.location.as_deref());
        let secret = |s: &SecretPath| format!("{}/secrets/{}", parent(&s.parent), s.secret);
        match self {
            Operation::CreateSecret(p) | Operation::ListSecrets(p) => parent(p),
            Operation::Unimplemented(p, _) => parent(p),
            Operation::GetSecret(s)
            | Operation::PatchSecret(s)
            | Operation::DeleteSecret(s)
            | Operation::AddVersion(s)
            | Operation::ListVersions(s) => secret(s),
            Operation::GetVersion(v)
            | Operation::AccessVersion(v)
            | Operation::EnableVersion(v)
            | Operation::DisableVersion(v)
            | Operation::DestroyVersion(v) => format!("{}/versions/{}", secret(&v.secret), v.version),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(method: Http, path: &str) -> Operation {
        match route(&method, path) {
            Some(Route::Api(op)) => op,
            other => panic!("{method} {path} routed to {other:?}"),
        }
    }

    #[test]
    fn global_paths() {
        let op = api(Http::GET, "/v1/projects/p/secrets/s/versions/latest:access");
        assert_eq!(op.method(), Some(Method::Access));
        assert_eq!(op.requested_resource(), "projects/p/secrets/s/versions/latest");
        assert_eq!(op.parent().location, None);
        assert_eq!(api(Http::POST, "/v1/projects/p/secrets").method(), Some(Method::Create));
        assert_eq!(api(Http::GET, "/v1/projects/p/secrets").method(), Some(Method::List));
        assert_eq!(api(Http::PATCH, "/v1/projects/p/secrets/s").method(), Some(Method::Patch));
        assert_eq!(api(Http::POST, "/v1/projects/p/secrets/s:addVersion").method(), Some(Method::AddVersion));
        assert_eq!(api(Http::POST, "/v1/projects/p/secrets/s/versions/3:destroy").method(), Some(Method::Destroy));
    }

    #[test]
    fn regional_paths_keep_the_location() {
        let op = api(Http::GET, "/v1/projects/p/locations/europe-west1/secrets/s/versions/2");
        assert_eq!(op.method(), Some(Method::GetVersion));
        assert_eq!(op.parent().location.as_deref(), Some("europe-west1"));
        assert_eq!(op.requested_resource(), "projects/p/locations/europe-west1/secrets/s/versions/2");
    }

    #[test]
    fn percent_encoded_colon_is_a_verb() {
        let op = api(Http::GET, "/v1/projects/p/secrets/s/versions/1%3Aaccess");
        assert_eq!(op.method(), Some(Method::Access));
    }

    #[test]
    fn unmatched_paths_and_methods() {
        assert_eq!(route(&Http::GET, "/v1/projects/p/secrets/s/versions/1:destroy"), None);
        assert_eq!(route(&Http::PUT, "/v1/projects/p/secrets/s"), None);
        assert_eq!(route(&Http::GET, "/v2/projects/p/secrets"), None);
        assert_eq!(route(&Http::GET, "/token"), None);
        assert_eq!(route(&Http::POST, "/token"), Some(Route::Token));
        assert_eq!(route(&Http::POST, "/v1/token"), Some(Route::Sts));
        assert_eq!(route(&Http::GET, "/v1/token"), None);
        assert_eq!(route(&Http::GET, "/oidc/jwks"), Some(Route::Oidc(OidcDocument::Jwks)));
        assert_eq!(
            route(&Http::POST, "/v1/projects/-/serviceAccounts/a%40p.iam.gserviceaccount.com:generateAccessToken"),
            Some(Route::GenerateAccessToken { project: "-".into(), account: "a@p.iam.gserviceaccount.com".into() })
        );
        assert_eq!(route(&Http::POST, "/v1/projects/-/serviceAccounts/a@p:signJwt"), None);
        assert_eq!(route(&Http::GET, "/emulator/requests"), Some(Route::Admin));
        assert!(matches!(
            route(&Http::GET, "/v1/projects/p/secrets/s:getIamPolicy"),
            Some(Route::Api(Operation::Unimplemented(..)))
        ));
    }
}
