//! Test harness: an emulator with a known project, an admin token, and request helpers.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
use gcp_emulator::{Emulator, Role};
use reqwest::Method;
use serde_json::{Value, json};

pub const PROJECT_ID: &str = "acme-edge";
pub const PROJECT_NUMBER: u64 = 435_468_002_770;
pub const ADMIN: &str = "admin@acme-edge.iam.gserviceaccount.com";

pub struct Harness {
    pub emu: Emulator,
    pub http: reqwest::Client,
    pub admin_token: String,
}

/// A response: HTTP code and JSON body (`Value::Null` when the body is not JSON).
pub type Reply = (u16, Value);

impl Harness {
    pub async fn new() -> Harness {
        Harness::with(Emulator::builder()).await
    }

    pub async fn with(builder: gcp_emulator::EmulatorBuilder) -> Harness {
        let emu = builder.project_id(PROJECT_ID).project_number(PROJECT_NUMBER).start().await.expect("emulator starts");
        let admin_token = emu.access_token(ADMIN, Role::Admin);
        Harness { emu, http: client(), admin_token }
    }

    /// Moves the emulator's clock and re-issues the admin token, which may have expired.
    pub fn advance_clock(&mut self, by: std::time::Duration) {
        self.emu.advance_clock(by);
        self.admin_token = self.emu.access_token(ADMIN, Role::Admin);
    }

    /// `base_url()/v1/{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("{}/v1/{path}", self.emu.base_url())
    }

    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        self.call_as(Some(&self.admin_token), method, path, body).await
    }

    pub async fn call_as(&self, token: Option<&str>, method: Method, path: &str, body: Option<Value>) -> Reply {
        let response = send(&self.http, token, method, &self.url(path), body).await.expect("request completes");
        reply(response).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.call(Method::POST, path, Some(body)).await
    }

    /// Creates a global secret with automatic replication; panics unless 200.
    pub async fn create_secret(&self, id: &str) -> Value {
        let (code, body) = self
            .post(
                &format!("projects/{PROJECT_ID}/secrets?secretId={id}"),
                json!({ "replication": { "automatic": {} } }),
            )
            .await;
        assert_eq!(code, 200, "create {id}: {body}");
        body
    }

    /// Adds a version; panics unless 200.
    pub async fn add_version(&self, id: &str, data: &[u8]) -> Value {
        let (code, body) = self
            .post(
                &format!("projects/{PROJECT_ID}/secrets/{id}:addVersion"),
                json!({ "payload": { "data": STANDARD.encode(data) } }),
            )
            .await;
        assert_eq!(code, 200, "addVersion {id}: {body}");
        body
    }

    pub async fn admin(&self, path: &str, body: Value) -> Reply {
        let response = self
            .http
            .post(format!("{}/emulator/{path}", self.emu.base_url()))
            .json(&body)
            .send()
            .await
            .expect("admin request completes");
        reply(response).await
    }
}

/// A client that never reuses connections, so connection-level faults hit the request they
/// are meant for.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().pool_max_idle_per_host(0).build().expect("client builds")
}

pub async fn send(
    http: &reqwest::Client,
    token: Option<&str>,
    method: Method,
    url: &str,
    body: Option<Value>,
) -> reqwest::Result<reqwest::Response> {
    let mut request = http.request(method, url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await
}

/// A response as sent: HTTP code, `content-type` and the body text, for the system
/// parameters that change the body's form (pretty printing, JSONP).
pub struct RawReply {
    pub code: u16,
    pub content_type: String,
    pub text: String,
}

impl Harness {
    /// `GET base_url()/v1/{path_and_query}` as the admin, with extra headers.
    pub async fn get_raw(&self, path_and_query: &str, headers: &[(&str, &str)]) -> RawReply {
        let mut request = self.http.get(self.url(path_and_query)).bearer_auth(&self.admin_token);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("request completes");
        let code = response.status().as_u16();
        let content_type =
            response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        RawReply { code, content_type, text: response.text().await.expect("body reads") }
    }
}

/// Signs any JWT `header` and `claims` with the private key of a key file, as Google's client
/// libraries do for self-signed JWTs (unpadded base64url segments, RS256).
pub fn sign_jwt(key_json: &str, header: &Value, claims: &Value) -> String {
    let key: Value = serde_json::from_str(key_json).expect("key JSON");
    let pem = key["private_key"].as_str().expect("private_key");
    let der_b64: String = pem.lines().filter(|line| !line.starts_with("-----")).collect();
    let pair = RsaKeyPair::from_pkcs8(&STANDARD.decode(der_b64).expect("PEM body")).expect("PKCS#8 RSA key");
    let signing_input =
        format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
    let mut signature = vec![0; pair.public_modulus_len()];
    pair.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), signing_input.as_bytes(), &mut signature).expect("signs");
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(&signature))
}

/// A self-signed JWT exactly as google-auth makes one for Secret Manager (AIP-4111): `kid` the
/// key file's `private_key_id`, `iss` = `sub` = its `client_email`, the service audience, and
/// an hour of life from `issued_at`.
pub fn self_signed_jwt(key_json: &str, issued_at: i64) -> String {
    let key: Value = serde_json::from_str(key_json).expect("key JSON");
    sign_jwt(
        key_json,
        &json!({"typ": "JWT", "alg": "RS256", "kid": key["private_key_id"]}),
        &json!({
            "iss": key["client_email"],
            "sub": key["client_email"],
            "iat": issued_at,
            "exp": issued_at + 3600,
            "aud": "https://secretmanager.googleapis.com/",
        }),
    )
}

pub async fn reply(response: reqwest::Response) -> Reply {
    let code = response.status().as_u16();
    let text = response.text().await.expect("body reads");
    (code, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Asserts the Google error envelope: HTTP code, `error.code`, `error.status` and the exact
/// message.
#[track_caller]
pub fn assert_error(reply: &Reply, code: u16, status: &str, message: &str) {
    let (actual, body) = reply;
    assert_eq!(*actual, code, "HTTP code; body: {body}");
    assert_eq!(body["error"]["code"], code, "error.code; body: {body}");
    assert_eq!(body["error"]["status"], status, "error.status; body: {body}");
    assert_eq!(body["error"]["message"], message, "error.message; body: {body}");
}

/// Like [`assert_error`] but the message need only start with `prefix`, for the design-choice
/// messages whose wording is not Google's.
#[track_caller]
pub fn assert_error_prefix(reply: &Reply, code: u16, status: &str, prefix: &str) {
    let (actual, body) = reply;
    assert_eq!(*actual, code, "HTTP code; body: {body}");
    assert_eq!(body["error"]["code"], code, "error.code; body: {body}");
    assert_eq!(body["error"]["status"], status, "error.status; body: {body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.starts_with(prefix), "message {message:?} should start with {prefix:?}");
}

pub fn secret_name(id: &str) -> String {
    format!("projects/{PROJECT_NUMBER}/secrets/{id}")
}

pub fn version_name(id: &str, version: &str) -> String {
    format!("projects/{PROJECT_NUMBER}/secrets/{id}/versions/{version}")
}

pub fn decode(data: &Value) -> Vec<u8> {
    STANDARD.decode(data.as_str().expect("base64 string")).expect("valid base64")
}

/// What gcp_auth 0.12.7 signs: header `{"alg":"RS256","typ":"JWT"}`, the claims below, every
/// segment in *padded* base64url (or unpadded when `padded` is false).
pub struct Assertion<'a> {
    pub key_json: &'a str,
    pub audience: String,
    pub issued_at: i64,
    pub lifetime: i64,
    pub scope: Option<&'a str>,
    pub padded: bool,
}

impl Assertion<'_> {
    pub fn sign(&self) -> String {
        let key: Value = serde_json::from_str(self.key_json).expect("key JSON");
        let pem = key["private_key"].as_str().expect("private_key");
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"), "PKCS#8 PEM");
        let der_b64: String = pem.lines().filter(|line| !line.starts_with("-----")).collect();
        let der = STANDARD.decode(der_b64).expect("PEM body");
        let pair = RsaKeyPair::from_pkcs8(&der).expect("PKCS#8 RSA key");
        let mut claims = json!({
            "iss": key["client_email"],
            "aud": self.audience,
            "exp": self.issued_at + self.lifetime,
            "iat": self.issued_at,
            "sub": null,
        });
        if let Some(scope) = self.scope {
            claims["scope"] = json!(scope);
        }
        let encode = |bytes: &[u8]| {
            if self.padded { URL_SAFE.encode(bytes) } else { URL_SAFE_NO_PAD.encode(bytes) }
        };
        let signing_input =
            format!("{}.{}", encode(br#"{"alg":"RS256","typ":"JWT"}"#), encode(claims.to_string().as_bytes()));
        let mut signature = vec![0; pair.public_modulus_len()];
        pair.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), signing_input.as_bytes(), &mut signature).expect("signs");
        format!("{signing_input}.{}", encode(&signature))
    }
}

pub const CLOUD_PLATFORM: &str = "https://www.googleapis.com/auth/cloud-platform";

pub fn now_seconds() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_secs() as i64
}

/// Posts a JWT-bearer grant like gcp_auth does (form body, padding percent-encoded).
pub async fn exchange(h: &Harness, grant_type: &str, assertion: &str) -> Reply {
    let body: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", grant_type)
        .append_pair("assertion", assertion)
        .finish();
    let response = h
        .http
        .post(h.emu.token_uri())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .expect("token request completes");
    reply(response).await
}

pub const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
