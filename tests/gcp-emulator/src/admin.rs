//! The admin API under `/emulator/`: drive faults, time, identities and state over HTTP, so
//! the binary can be scripted as fully as the library. It needs no authentication and exists
//! only in the emulator.
//!
//! Bodies are JSON; every route answers JSON. Errors are `400 {"error": "…"}` — plain, not
//! Google's envelope, because these routes are not Google's.
//!
//! | route | body | effect |
//! |---|---|---|
//! | `GET /emulator/info` | – | project, URLs |
//! | `GET /emulator/requests` | – | per-method counts |
//! | `POST /emulator/reset` | – | clear secrets, faults, counts, tokens |
//! | `POST /emulator/faults/latency` | `{"millis":N}` | added latency (0 removes) |
//! | `POST /emulator/faults/fail` | `{"count":N,"status":"UNAVAILABLE"\|"RESOURCE_EXHAUSTED","method":M?}` | next N fail |
//! | `POST /emulator/faults/drop-requests` | `{"count":N,"method":M?}` | next N get no response |
//! | `POST /emulator/faults/drop-connections` | `{"count":N}` | next N connections closed on accept |
//! | `POST /emulator/faults/corrupt-checksums` | `{"count":N}` | next N access responses carry a wrong `dataCrc32c` |
//! | `POST /emulator/faults/lag-aliases` | `{"count":N}` | alias and `latest` reads answer as of N changes ago (0 removes) |
//! | `POST /emulator/faults/quota` | `{"kind":"access"\|"read"\|"write","perMinute":N\|null}` | set a quota |
//! | `POST /emulator/faults/clear` | – | remove every fault |
//! | `POST /emulator/clock/advance` | `{"seconds":N}` | move the clock forward |
//! | `POST /emulator/service-accounts` | `{"email":E,"role":R}` | returns a JSON key file |
//! | `POST /emulator/tokens` | `{"email":E,"role":R}` | returns an access token |
//! | `POST /emulator/oidc/tokens` | `{"subject":S,"audience":A?,"lifetimeSeconds":N?}` | returns `{"token"}`, a subject token of the test issuer |
//! | `POST /emulator/federation/grants` | `{"subject":S,"role":R}` | the workload pool's `S` gets `R` |
//! | `POST /emulator/federation/impersonation` | `{"subject":S,"serviceAccount":E,"role":R}` | `S` may impersonate `E`, which gets `R` |

use std::time::Duration;

use hyper::http::request::Parts;
use hyper::{Method as Http, Response, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::Role;
use crate::counts::Method;
use crate::faults::{Failure, QuotaKind};
use crate::service::{App, Body, json_response};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Latency {
    millis: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Fail {
    count: u32,
    status: String,
    #[serde(default)]
    method: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Count {
    count: u32,
    #[serde(default)]
    method: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Quota {
    kind: String,
    per_minute: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Advance {
    seconds: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct MintSubjectToken {
    subject: String,
    #[serde(default)]
    audience: Option<String>,
    #[serde(default)]
    lifetime_seconds: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FederatedGrant {
    subject: String,
    role: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Impersonation {
    subject: String,
    service_account: String,
    role: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Principal {
    email: String,
    role: String,
}

pub(crate) fn handle(app: &App, parts: &Parts, body: &[u8]) -> Response<Body> {
    match route(app, &parts.method, parts.uri.path(), body) {
        Ok(value) => json_response(StatusCode::OK, &value, true),
        Err(AdminError::NotFound) => json_response(
            StatusCode::NOT_FOUND,
            &json!({ "error": format!("no admin route {} {}", parts.method, parts.uri.path()) }),
            true,
        ),
        Err(AdminError::BadRequest(message)) => {
            json_response(StatusCode::BAD_REQUEST, &json!({ "error": message }), true)
        }
    }
}

enum AdminError {
    NotFound,
    BadRequest(String),
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, AdminError> {
    serde_json::from_slice(body).map_err(|e| AdminError::BadRequest(format!("bad body: {e}")))
}

fn method(name: Option<String>) -> Result<Option<Method>, AdminError> {
    name.map(|n| n.parse::<Method>()).transpose().map_err(|e| AdminError::BadRequest(e.to_string()))
}

fn role(name: &str) -> Result<Role, AdminError> {
    name.parse().map_err(|e: crate::auth::UnknownRole| AdminError::BadRequest(e.to_string()))
}

fn route(app: &App, http: &Http, path: &str, body: &[u8]) -> Result<Value, AdminError> {
    let ok = json!({});
    match (http, path) {
        (&Http::GET, "/emulator/info") => Ok(json!({
            "projectId": app.project_id,
            "projectNumber": app.project_number.to_string(),
            "baseUrl": app.base_url,
            "tokenUri": app.token_uri(),
            "stsUri": app.sts_uri(),
            "oidcIssuer": app.issuer_url(),
            "workloadIdentityAudience": crate::federation::workload_audience(app.project_number),
        })),
        (&Http::GET, "/emulator/requests") => Ok(app.counters.snapshot().to_json()),
        (&Http::POST, "/emulator/reset") => {
            app.reset();
            Ok(ok)
        }
        (&Http::POST, "/emulator/faults/latency") => {
            let Latency { millis } = parse(body)?;
            app.faults.set_latency(Duration::from_millis(millis));
            Ok(ok)
        }
        (&Http::POST, "/emulator/faults/fail") => {
            let Fail { count, status, method: name } = parse(body)?;
            let failure = match status.as_str() {
                "UNAVAILABLE" | "503" => Failure::Unavailable,
                "RESOURCE_EXHAUSTED" | "429" => Failure::ResourceExhausted,
                other => {
                    return Err(AdminError::BadRequest(format!(
                        "status {other:?} must be UNAVAILABLE or RESOURCE_EXHAUSTED"
                    )));
                }
            };
            app.faults.fail_next(count, failure, method(name)?);
            Ok(ok)
        }
        (&Http::POST, "/emulator/faults/drop-requests") => {
            let Count { count, method: name } = parse(body)?;
            app.faults.drop_next_requests(count, method(name)?);
            Ok(ok)
        }
        (&Http::POST, "/emulator/faults/drop-connections") => {
            let Count { count, method: name } = parse(body)?;
            if name.is_some() {
                return Err(AdminError::BadRequest(
                    "a connection is dropped before any request is read, so it cannot be \
                     scoped to a method; use drop-requests"
                        .into(),
                ));
            }
            app.faults.drop_next_connections(count);
            Ok(ok)
        }
        (&Http::POST, "/emulator/faults/corrupt-checksums") => {
            let Count { count, method: name } = parse(body)?;
            if name.is_some_and(|n| n != "access") {
                return Err(AdminError::BadRequest("only access responses carry a checksum".into()));
            }
            app.faults.corrupt_next_checksums(count);
            Ok(ok)
        }
        (&Http::POST, "/emulator/faults/lag-aliases") => {
            let Count { count, method: name } = parse(body)?;
            if name.is_some() {
                return Err(AdminError::BadRequest("a lagging replica answers get and access alike; no method".into()));
            }
            app.faults.lag_alias_reads(count);
            Ok(ok)
        }
        (&Http::POST, "/emulator/faults/quota") => {
            let Quota { kind, per_minute } = parse(body)?;
            let kind: QuotaKind = kind.parse().map_err(AdminError::BadRequest)?;
            app.faults.set_quota(kind, per_minute);
            Ok(ok)
        }
        (&Http::POST, "/emulator/faults/clear") => {
            app.faults.clear();
            Ok(ok)
        }
        (&Http::POST, "/emulator/clock/advance") => {
            let Advance { seconds } = parse(body)?;
            app.clock.advance(Duration::from_secs(seconds));
            Ok(ok)
        }
        (&Http::POST, "/emulator/service-accounts") => {
            let Principal { email, role: name } = parse(body)?;
            let key = app
                .create_service_account_key(&email, role(&name)?)
                .map_err(|e| AdminError::BadRequest(e.to_string()))?;
            serde_json::from_str(&key).map_err(|e| AdminError::BadRequest(e.to_string()))
        }
        (&Http::POST, "/emulator/tokens") => {
            let Principal { email, role: name } = parse(body)?;
            let now = app.clock.now();
            let token = app
                .lock_identities()
                .issue_token_directly(&email, role(&name)?, now)
                .map_err(|e| AdminError::BadRequest(e.to_string()))?;
            Ok(json!({
                "access_token": token,
                "expires_in": crate::auth::TOKEN_LIFETIME.as_secs(),
                "token_type": "Bearer",
            }))
        }
        (&Http::POST, "/emulator/oidc/tokens") => {
            let MintSubjectToken { subject, audience, lifetime_seconds } = parse(body)?;
            let audience = audience.unwrap_or_else(|| crate::federation::workload_audience(app.project_number));
            let lifetime = Duration::from_secs(lifetime_seconds.unwrap_or(3600));
            let claims = crate::federation::subject_claims(
                &app.issuer_url(),
                &subject,
                &audience,
                app.clock.now(),
                Duration::ZERO,
                lifetime,
            );
            let token = app
                .issuer
                .mint(&claims, crate::oidc::SigningAlgorithm::Rs256, None, false)
                .map_err(|e| AdminError::BadRequest(e.to_string()))?;
            Ok(json!({ "token": token }))
        }
        (&Http::POST, "/emulator/federation/grants") => {
            let FederatedGrant { subject, role: name } = parse(body)?;
            let principal = crate::federation::workload_principal(app.project_number, &subject);
            app.lock_identities().grant(&principal, role(&name)?);
            Ok(json!({ "principal": principal }))
        }
        (&Http::POST, "/emulator/federation/impersonation") => {
            let Impersonation { subject, service_account, role: name } = parse(body)?;
            let principal = crate::federation::workload_principal(app.project_number, &subject);
            app.lock_identities().allow_impersonation(&principal, &service_account, role(&name)?);
            Ok(json!({ "principal": principal, "serviceAccount": service_account }))
        }
        _ => Err(AdminError::NotFound),
    }
}
