//! One HTTP request, start to finish: routing, counting, faults, then the token endpoint, STS,
//! IAM Credentials, the test issuer's documents, the admin API or a Secret Manager method, and
//! the response (with a `Date` from the emulator's clock).
//!
//! [`App`] is the emulator's whole shared state. [`handle`] is the hyper service function; it
//! returns [`DropConnection`] when a fault says the request must get no response at all, which
//! makes hyper close the connection without writing anything.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, DATE, HeaderValue, WWW_AUTHENTICATE};
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};

use crate::auth::Identities;
use crate::clock::{Clock, format_http_date};
use crate::counts::{Counters, Method};
use crate::faults::{Failure, Faults};
use crate::oidc::TestIssuer;
use crate::routes::{OidcDocument, Route, route};
use crate::status::{ApiError, Code};
use crate::store::Store;
use crate::system::SystemParameters;
use crate::{admin, api, federation, iam_credentials, oidc};

/// Request bodies above this are refused (400) before parsing. Comfortably above the
/// base64 of a 64 KiB payload, so the 64 KiB rule is what oversized payloads meet.
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Everything the server shares between connections.
#[derive(Debug)]
pub(crate) struct App {
    pub(crate) project_id: String,
    pub(crate) project_number: u64,
    /// `http://127.0.0.1:PORT`, known once the listener is bound.
    pub(crate) base_url: String,
    /// Requests without credentials act as an admin (benchmarks); bad tokens still fail.
    pub(crate) allow_anonymous: bool,
    pub(crate) clock: Clock,
    pub(crate) store: Mutex<Store>,
    pub(crate) identities: Mutex<Identities>,
    /// The OIDC issuer the workload identity pools trust.
    pub(crate) issuer: TestIssuer,
    pub(crate) faults: Faults,
    pub(crate) counters: Counters,
}

impl App {
    pub(crate) fn token_uri(&self) -> String {
        format!("{}/token", self.base_url)
    }

    /// The Security Token Service's exchange endpoint (`https://sts.googleapis.com/v1/token`).
    pub(crate) fn sts_uri(&self) -> String {
        format!("{}/v1/token", self.base_url)
    }

    /// The test issuer's URL: the `iss` of its tokens, and the base of its documents.
    pub(crate) fn issuer_url(&self) -> String {
        format!("{}/oidc", self.base_url)
    }

    /// IAM Credentials' `generateAccessToken` URL for `account`.
    pub(crate) fn impersonation_url(&self, account: &str) -> String {
        format!("{}/v1/projects/-/serviceAccounts/{account}:generateAccessToken", self.base_url)
    }

    pub(crate) fn lock_store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn lock_identities(&self) -> MutexGuard<'_, Identities> {
        self.identities.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Generates a key for `email` (outside the identities lock) and registers its public half.
    pub(crate) fn create_service_account_key(
        &self,
        email: &str,
        role: crate::auth::Role,
    ) -> Result<String, crate::auth::KeyGenerationError> {
        let (key, public_key) = crate::auth::generate_service_account_key(email, &self.project_id, &self.token_uri())?;
        self.lock_identities().register_key(email, role, public_key);
        Ok(key)
    }

    /// Clears secrets, faults (back to the built quotas), counters and tokens. Service
    /// accounts and their keys survive, so key files already handed out keep working.
    pub(crate) fn reset(&self) {
        self.lock_store().clear();
        self.faults.clear();
        self.counters.reset();
        self.lock_identities().revoke_tokens();
    }
}

/// The answer to a request that must get no HTTP response: hyper closes the connection.
#[derive(Debug, thiserror::Error)]
#[error("connection dropped by fault injection")]
pub(crate) struct DropConnection;

pub(crate) type Body = Full<Bytes>;

/// One request. Every answer carries a `Date` from the emulator's clock, as Google's do from
/// Google's: clients that read the server's time see `advance_clock` move it.
pub(crate) async fn handle(app: Arc<App>, request: Request<Incoming>) -> Result<Response<Body>, DropConnection> {
    let mut response = respond(&app, request).await?;
    if let Ok(date) = HeaderValue::from_str(&format_http_date(app.clock.now())) {
        response.headers_mut().insert(DATE, date);
    }
    Ok(response)
}

async fn respond(app: &Arc<App>, request: Request<Incoming>) -> Result<Response<Body>, DropConnection> {
    let app = app.clone();
    let (parts, body) = request.into_parts();
    let Some(route) = route(&parts.method, parts.uri.path()) else {
        let error = ApiError::new(
            Code::NotFound,
            format!("The requested URL {} was not found on this server.", parts.uri.path()),
        );
        return Ok(error_response(&error, true));
    };
    let method = match &route {
        Route::Token => Some(Method::Token),
        Route::Sts => Some(Method::Sts),
        Route::GenerateAccessToken { .. } => Some(Method::GenerateAccessToken),
        Route::Api(operation) => operation.method(),
        Route::Admin | Route::Oidc(_) => None,
    };
    if let Some(method) = method {
        app.counters.record(method);
        if app.faults.take_request_drop(method) {
            tracing::debug!(%method, "fault: dropping the connection");
            return Err(DropConnection);
        }
        let latency = app.faults.latency();
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        if let Some(failure) = app.faults.take_failure(method) {
            tracing::debug!(%method, ?failure, "fault: failing the request");
            return Ok(error_response(&injected(&app, method, failure), true));
        }
    }
    let bytes = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            let error =
                ApiError::invalid_argument(format!("Request payload size exceeds the limit: {MAX_BODY_BYTES} bytes."));
            return Ok(error_response(&error, true));
        }
    };
    Ok(match route {
        Route::Admin => admin::handle(&app, &parts, &bytes),
        Route::Token => token(&app, &parts, &bytes),
        Route::Sts => sts(&app, &parts, &bytes),
        Route::GenerateAccessToken { project, account } => {
            generate_access_token(&app, &parts, &project, &account, &bytes)
        }
        Route::Oidc(document) => oidc(&app, document),
        Route::Api(operation) => {
            let query = api::parse_query(parts.uri.query());
            let system = match SystemParameters::parse(&query, &parts.headers) {
                Ok(system) => system,
                Err(error) => return Ok(error_response(&error, true)),
            };
            match api::call(&app, &operation, &parts, &query, &system, &bytes) {
                Ok(value) => {
                    let value = system.render_success(operation.response_message(), value);
                    api_response(StatusCode::OK, &value, &system)
                }
                Err(error) => {
                    let status =
                        StatusCode::from_u16(error.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                    let mut response = api_response(status, &system.render_error(&error), &system);
                    if error.code == Code::Unauthenticated {
                        add_authenticate_header(&mut response);
                    }
                    response
                }
            }
        }
    })
}

/// A Secret Manager answer as the system parameters ask: pretty or compact JSON, or JSONP.
fn api_response(status: StatusCode, value: &Value, system: &SystemParameters) -> Response<Body> {
    let Some(callback) = &system.callback else {
        return json_response(status, value, system.pretty);
    };
    let json = if system.pretty { serde_json::to_string_pretty(value) } else { serde_json::to_string(value) };
    let body = format!("// API callback\n{callback}({});\n", json.unwrap_or_default());
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/javascript; charset=UTF-8"));
    response
}

fn injected(app: &App, method: Method, failure: Failure) -> ApiError {
    match (failure, method.quota_kind()) {
        (Failure::Unavailable, _) => ApiError::unavailable(),
        (Failure::ResourceExhausted, Some(kind)) => {
            let (metric, limit_name, limit_id) = kind.labels();
            ApiError::quota_exceeded(metric, limit_name, limit_id, kind.google_limit(), app.project_number)
        }
        (Failure::ResourceExhausted, None) => ApiError::new(Code::ResourceExhausted, "Rate limit exceeded."),
    }
}

/// `POST /token` with `application/x-www-form-urlencoded` `grant_type` and `assertion`.
fn token(app: &App, parts: &hyper::http::request::Parts, body: &[u8]) -> Response<Body> {
    let form_type = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !form_type {
        let error = json!({
            "error": "invalid_request",
            "error_description": "The token request must be application/x-www-form-urlencoded.",
        });
        return json_response(StatusCode::BAD_REQUEST, &error, false);
    }
    let form: HashMap<String, String> = form_urlencoded::parse(body).into_owned().collect();
    let now = app.clock.now();
    let result = app.lock_identities().exchange(&form, &app.token_uri(), now);
    match result {
        Ok(token) => json_response(StatusCode::OK, &token, false),
        Err(error) => json_response(StatusCode::BAD_REQUEST, &error.to_json(), false),
    }
}

/// `POST /v1/token`: the STS token exchange (`federation`).
fn sts(app: &App, parts: &hyper::http::request::Parts, body: &[u8]) -> Response<Body> {
    let content_type = parts.headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let authorization = parts.headers.contains_key(AUTHORIZATION);
    let issuer_url = app.issuer_url();
    let trust = federation::Trust {
        issuer_url: &issuer_url,
        issuer: &app.issuer,
        project_number: app.project_number,
        project_id: &app.project_id,
    };
    let now = app.clock.now();
    let result = federation::read_body(content_type, body)
        .and_then(|form| federation::exchange(&mut app.lock_identities(), &trust, &form, authorization, now));
    match result {
        Ok(token) => json_response(StatusCode::OK, &token, false),
        Err(error) => {
            tracing::debug!(error = error.error, description = %error.description, "STS exchange refused");
            json_response(StatusCode::BAD_REQUEST, &error.to_json(), false)
        }
    }
}

/// IAM Credentials `generateAccessToken` (`iam_credentials`).
fn generate_access_token(
    app: &App,
    parts: &hyper::http::request::Parts,
    project: &str,
    account: &str,
    body: &[u8],
) -> Response<Body> {
    let project_ok = project == "-" || project == app.project_id || project == app.project_number.to_string();
    let bearer = parts
        .headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim().to_owned());
    let now = app.clock.now();
    let result = if project_ok {
        iam_credentials::generate_access_token(&mut app.lock_identities(), account, bearer.as_deref(), body, now)
    } else {
        Err(iam_credentials::denied())
    };
    match result {
        Ok(value) => json_response(StatusCode::OK, &value, true),
        Err(error) => error_response(&error, true),
    }
}

/// The test issuer's discovery document and JWKS.
fn oidc(app: &App, document: OidcDocument) -> Response<Body> {
    let value = match document {
        OidcDocument::Discovery => Ok(oidc::discovery(&app.issuer_url())),
        OidcDocument::Jwks => app.issuer.jwks(),
    };
    match value {
        Ok(value) => json_response(StatusCode::OK, &value, true),
        Err(error) => error_response(&ApiError::new(Code::Unavailable, error.to_string()), true),
    }
}

pub(crate) fn json_response(status: StatusCode, value: &Value, pretty: bool) -> Response<Body> {
    let body = if pretty { serde_json::to_vec_pretty(value) } else { serde_json::to_vec(value) }.unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json; charset=UTF-8"));
    response
}

pub(crate) fn error_response(error: &ApiError, pretty: bool) -> Response<Body> {
    let status = StatusCode::from_u16(error.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = json_response(status, &error.to_json(), pretty);
    if error.code == Code::Unauthenticated {
        add_authenticate_header(&mut response);
    }
    response
}

fn add_authenticate_header(response: &mut Response<Body>) {
    response
        .headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"https://accounts.google.com/\""));
}
