//! A service-account key as a `gcp_auth` [`TokenProvider`]: the OAuth 2.0 JWT-bearer grant
//! (RFC 7523) at the key's `token_uri`, Google's clock read from every answer.
//!
//! # The exchange
//!
//! The assertion is a JWT signed with the key (RS256): header `{"alg":"RS256","typ":"JWT"}`,
//! claims `iss` = the key's `client_email`, `scope`, `aud` = its `token_uri`, `iat` = the node's
//! time and `exp` an hour later. It is posted as `grant_type=urn:ietf:params:oauth:grant-type:
//! jwt-bearer&assertion=JWT`; the answer is `{"access_token", "expires_in", "token_type"}`, a
//! refusal `{"error", "error_description"}` (HTTP 400). Google judges `iat` and `exp` by its own
//! clock: a node whose clock is more than a few minutes off gets `invalid_grant`, "Invalid JWT:
//! Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat
//! and exp values in the JWT claim." [`ServiceAccountError::about_the_clock`] tells that refusal
//! apart, and the store's error then names the clock instead of the credentials.
//!
//! The assertion carries the node's time, not Google's (which the answers' `Date` would give):
//! that is Google's contract, and a clock that wrong breaks more on the node than this request
//! (TLS certificate checks, logs, every other client), so it is reported, not papered over.
//!
//! # Why not `gcp_auth`'s own provider
//!
//! `gcp_auth::CustomServiceAccount` still reads the key and signs (its [`gcp_auth::Signer`],
//! RSA PKCS#1 SHA-256 on aws-lc-rs). Its exchange hides what keyturn must see: every answer's
//! `Date` (Google's clock, measured even from a refusal, see [`ServerTime`]) and the refusal
//! itself (its error is the bare "token request failed", after five attempts within a second).
//!
//! # Keeping the token
//!
//! The token is cached with its expiry in Google's time. A caller that finds less than
//! [`REFRESH_AHEAD`](super::external_account::REFRESH_AHEAD) left fetches a new one (one caller at a time; the others wait for it); if
//! that fails while the old one is still usable, the old one is used and the failure logged.
//! A request the endpoint could not answer (no connection, 429, 5xx) is tried again twice
//! within about a second; a refusal is not. After a failure, no new attempt is made before a
//! backoff has passed (at most a minute):
//! callers that have no usable token get the same error at once, so a refused key, or a wrong
//! clock, costs one token request per backoff rather than one per policy per poll.
//!
//! Tokens are held in zeroized buffers here (gcp_auth's [`Token`] keeps its own copy); the
//! assertion, a credential for an hour, too. Errors name the key file, the account and the
//! endpoint, never a token or the key.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use gcp_auth::{Token, TokenProvider};
use serde::Deserialize;
use tokio::time::Instant;
use zeroize::Zeroizing;

use super::external_account::{Freshness, freshness};
use super::server_time::ServerTime;
use crate::clock::SharedClock;

const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// Google refuses assertions valid for longer.
const ASSERTION_LIFETIME: u64 = 3600;
/// An answer is quoted into messages only this far.
const MAX_QUOTED: usize = 300;
/// The longest wait between attempts after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Attempts of one token request when the endpoint cannot answer (as `gcp_auth` makes five
/// within a second): a brief outage does not fail a `sync --once`.
const ATTEMPTS: u32 = 3;
/// The first wait between those attempts, doubling.
const RETRY_BACKOFF: Duration = Duration::from_millis(250);

/// What a key file must hold besides its private key (which `gcp_auth` reads).
#[derive(Deserialize)]
struct KeyFields {
    client_email: String,
    token_uri: String,
    project_id: Option<String>,
}

/// The provider for one key file.
pub struct ServiceAccount {
    /// The key file, for messages.
    origin: PathBuf,
    email: String,
    token_uri: String,
    project_id: Option<Arc<str>>,
    /// Reads the key and signs with it.
    key: gcp_auth::CustomServiceAccount,
    http: reqwest::Client,
    time: Arc<ServerTime>,
    /// The node's clock: what the assertion's `iat` says.
    clock: SharedClock,
    state: tokio::sync::Mutex<State>,
}

#[derive(Default)]
struct State {
    cached: Option<Cached>,
    failures: u32,
    last_error: Option<ServiceAccountError>,
    /// No new attempt before this, after a failure.
    retry_at: Option<Instant>,
}

struct Cached {
    token: Arc<Token>,
    /// In Google's time.
    expires: SystemTime,
    scopes: Vec<String>,
}

impl fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("origin", &self.origin)
            .field("email", &self.email)
            .field("token_uri", &self.token_uri)
            .finish_non_exhaustive()
    }
}

/// Why no token could be had: which key file and account, and what the endpoint said.
#[derive(Debug, Clone, thiserror::Error)]
#[error("service account {email} (key file {origin}): {problem}")]
pub struct ServiceAccountError {
    origin: String,
    email: String,
    /// Boxed: errors travel through `Result`s that are mostly `Ok`.
    problem: Box<Problem>,
}

#[derive(Debug, Clone)]
enum Problem {
    /// The assertion could not be signed.
    Sign(String),
    /// No answer (connection, timeout, TLS, a scheme the HTTP policy refuses).
    Unreachable { url: String, message: String },
    /// The token endpoint said no.
    Refused { url: String, status: u16, error: String, description: String },
    /// A success status with a body that is not the documented one.
    Malformed { url: String, problem: String },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Sign(message) => write!(f, "cannot sign the token request: {message}"),
            Problem::Unreachable { url, message } => write!(f, "cannot reach the token endpoint at {url}: {message}"),
            Problem::Refused { url, status, error, description } => {
                write!(f, "the token endpoint at {url} refused the signed token request: {error}")?;
                if !description.is_empty() {
                    write!(f, ": {description}")?;
                }
                write!(f, " (HTTP {status})")
            }
            Problem::Malformed { url, problem } => {
                write!(f, "the token endpoint at {url} answered without a usable token: {problem}")
            }
        }
    }
}

impl ServiceAccountError {
    /// Whether the same request may be answered a moment later: no answer, or the endpoint
    /// overloaded or failing (HTTP 429, 5xx).
    fn transient(&self) -> bool {
        match self.problem.as_ref() {
            Problem::Unreachable { .. } => true,
            Problem::Refused { status, .. } => *status == 429 || *status >= 500,
            Problem::Sign(_) | Problem::Malformed { .. } => false,
        }
    }

    /// Whether the endpoint refused the request's `iat`/`exp`, as Google does when the node's
    /// clock is more than a few minutes off its own.
    pub fn about_the_clock(&self) -> bool {
        matches!(self.problem.as_ref(), Problem::Refused { description, .. }
            if description.contains("iat and exp") || description.contains("reasonable timeframe"))
    }
}

/// Everything a [`ServiceAccount`] is made from.
pub struct Settings<'a> {
    pub origin: PathBuf,
    /// The key file's contents.
    pub key: &'a str,
    pub request_timeout: Duration,
    pub time: Arc<ServerTime>,
    pub clock: SharedClock,
}

impl fmt::Debug for Settings<'_> {
    // The key file holds the private key: never shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings").field("origin", &self.origin).finish_non_exhaustive()
    }
}

impl ServiceAccount {
    /// Reads the key; the error says what is wrong with it, never what it holds.
    pub fn new(settings: Settings<'_>) -> Result<Self, String> {
        let key = gcp_auth::CustomServiceAccount::from_json(settings.key)
            .map_err(|e| format!("a service-account key that cannot be used: {}", crate::error_chain(&e)))?;
        let fields: KeyFields = serde_json::from_str(settings.key).map_err(|e| {
            format!(
                "a service-account key without client_email and token_uri (line {} column {})",
                e.line(),
                e.column()
            )
        })?;
        let http = crate::http::client(&fields.token_uri, settings.request_timeout)
            .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
        Ok(ServiceAccount {
            origin: settings.origin,
            email: fields.client_email,
            token_uri: fields.token_uri,
            project_id: fields.project_id.map(Arc::from),
            key,
            http,
            time: settings.time,
            clock: settings.clock,
            state: tokio::sync::Mutex::new(State::default()),
        })
    }

    /// The account the key belongs to (its `client_email`).
    pub fn email(&self) -> &str {
        &self.email
    }

    fn error(&self, problem: Problem) -> ServiceAccountError {
        ServiceAccountError {
            origin: self.origin.display().to_string(),
            email: self.email.clone(),
            problem: Box::new(problem),
        }
    }

    /// A token for `scopes`: the cached one while it is fresh, else a new one.
    pub async fn access_token(&self, scopes: &[&str]) -> Result<Arc<Token>, ServiceAccountError> {
        let mut state = self.state.lock().await;
        let usable = state.cached.as_ref().filter(|c| c.scopes == scopes).and_then(|cached| {
            match freshness(self.time.now(), cached.expires) {
                Freshness::Expired => None,
                fresh => Some((cached.token.clone(), fresh)),
            }
        });
        if let Some((token, Freshness::Fresh)) = &usable {
            return Ok(token.clone());
        }
        let waiting = state.retry_at.is_some_and(|at| Instant::now() < at);
        if let (true, Some(error)) = (waiting, &state.last_error) {
            return match usable {
                Some((token, _)) => Ok(token),
                None => Err(error.clone()),
            };
        }
        match self.fetch(scopes).await {
            Ok(cached) => {
                let token = cached.token.clone();
                *state = State { cached: Some(cached), ..State::default() };
                Ok(token)
            }
            Err(error) => {
                state.failures += 1;
                let delay = crate::backoff::retry_delay(state.failures, MAX_BACKOFF, crate::backoff::unit_random());
                state.retry_at = Some(Instant::now() + delay);
                state.last_error = Some(error.clone());
                match usable {
                    Some((token, _)) => {
                        tracing::warn!("refreshing the access token failed; the current one is used meanwhile, next attempt in {delay:.0?}: {error}");
                        Ok(token)
                    }
                    None => Err(error),
                }
            }
        }
    }

    /// The signed assertion, in a zeroized buffer: it is a credential until it expires.
    fn assertion(&self, scopes: &[&str]) -> Result<Zeroizing<String>, ServiceAccountError> {
        #[derive(serde::Serialize)]
        struct Claims<'a> {
            iss: &'a str,
            scope: String,
            aud: &'a str,
            exp: u64,
            iat: u64,
        }
        let iat = self.clock.now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let claims = Claims {
            iss: &self.email,
            scope: scopes.join(" "),
            aud: &self.token_uri,
            exp: iat + ASSERTION_LIFETIME,
            iat,
        };
        let claims = serde_json::to_vec(&claims).map_err(|e| self.error(Problem::Sign(e.to_string())))?;
        let mut jwt = Zeroizing::new(URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#));
        jwt.push('.');
        URL_SAFE_NO_PAD.encode_string(&claims, &mut jwt);
        let signature = self
            .key
            .signer()
            .sign(jwt.as_bytes())
            .map_err(|e| self.error(Problem::Sign(crate::error_chain(&e))))?;
        jwt.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, &mut jwt);
        Ok(jwt)
    }

    /// [`ServiceAccount::exchange`], tried again after a short wait when the endpoint could not
    /// answer (no connection, HTTP 429 or 5xx); a refusal is final.
    async fn fetch(&self, scopes: &[&str]) -> Result<Cached, ServiceAccountError> {
        let mut attempt = 1;
        loop {
            match self.exchange(scopes).await {
                Err(error) if attempt < ATTEMPTS && error.transient() => {
                    let wait = crate::backoff::retry_delay_from(RETRY_BACKOFF, attempt, MAX_BACKOFF, crate::backoff::unit_random());
                    tracing::debug!(attempt, wait_ms = wait.as_millis() as u64, "token request tried again: {error}");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// One token request: a newly signed assertion, posted.
    async fn exchange(&self, scopes: &[&str]) -> Result<Cached, ServiceAccountError> {
        let url = &self.token_uri;
        let assertion = self.assertion(scopes)?;
        let mut body = Zeroizing::new(String::new());
        url::form_urlencoded::Serializer::new(&mut *body)
            .extend_pairs([("grant_type", GRANT_TYPE), ("assertion", assertion.as_str())])
            .finish();
        let unreachable =
            |e: reqwest::Error| self.error(Problem::Unreachable { url: url.clone(), message: crate::http::error(e) });
        let mut response = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body.as_bytes().to_vec())
            .send()
            .await
            .map_err(unreachable)?;
        // Google's clock, from the refusal as much as from a token.
        let date = self.time.observe(response.headers());
        let status = response.status().as_u16();
        let mut answer = Zeroizing::new(Vec::new());
        while let Some(chunk) = response.chunk().await.map_err(unreachable)? {
            if answer.len() + chunk.len() > 64 * 1024 {
                return Err(self.error(Problem::Malformed { url: url.clone(), problem: "the answer is too large".into() }));
            }
            answer.extend_from_slice(&chunk);
        }
        if !(200..300).contains(&status) {
            use super::exchange::OAuthError;
            let quote = |text: &str| text.chars().take(MAX_QUOTED).collect::<String>();
            let (error, description) = match serde_json::from_slice::<OAuthError>(&answer) {
                Ok(e) => (e.error, quote(&e.error_description)),
                Err(_) => (format!("HTTP {status}"), quote(&String::from_utf8_lossy(&answer))),
            };
            return Err(self.error(Problem::Refused { url: url.clone(), status, error, description }));
        }
        #[derive(Deserialize)]
        struct Answer {
            access_token: Zeroizing<String>,
            expires_in: Option<serde_json::Value>,
        }
        let malformed = |problem: String| self.error(Problem::Malformed { url: url.clone(), problem });
        let answer: Answer = serde_json::from_slice(&answer)
            .map_err(|e| malformed(format!("no access_token in the answer (line {} column {})", e.line(), e.column())))?;
        let seconds = super::exchange::expires_in(answer.expires_in.as_ref())
            .ok_or_else(|| malformed("expires_in is missing or not a number of seconds".into()))?;
        let expires = date.unwrap_or_else(|| self.time.now()) + Duration::from_secs(seconds);
        let left = expires.duration_since(self.time.now()).unwrap_or_default();
        let token = super::external_account::gcp_token(&answer.access_token, left).map_err(malformed)?;
        tracing::debug!(account = %self.email, expires = %crate::clock::rfc3339(expires), "service account: new access token");
        Ok(Cached { token: Arc::new(token), expires, scopes: scopes.iter().map(|s| s.to_string()).collect() })
    }
}

#[async_trait::async_trait]
impl TokenProvider for ServiceAccount {
    async fn token(&self, scopes: &[&str]) -> Result<Arc<Token>, gcp_auth::Error> {
        self.access_token(scopes).await.map_err(|e| gcp_auth::Error::Other("service account", Box::new(e)))
    }

    async fn project_id(&self) -> Result<Arc<str>, gcp_auth::Error> {
        self.project_id.clone().ok_or(gcp_auth::Error::Str("no project_id in the service-account key"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::TokioClock;
    use gcp_emulator::{Emulator, Role};

    const ACCOUNT: &str = "puller@acme-edge.iam.gserviceaccount.com";

    async fn provider(emu: &Emulator, node: SharedClock) -> (ServiceAccount, Arc<ServerTime>) {
        let key = emu.service_account_key(ACCOUNT, Role::Accessor);
        let time = Arc::new(ServerTime::new(node.clone()));
        let settings = Settings {
            origin: PathBuf::from("/etc/keyturn/key.json"),
            key: &key,
            request_timeout: Duration::from_secs(10),
            time: time.clone(),
            clock: node,
        };
        (ServiceAccount::new(settings).unwrap(), time)
    }

    fn node_at(offset: Duration, ahead: bool) -> SharedClock {
        let now = SystemTime::now();
        Arc::new(TokioClock::starting_at(if ahead { now + offset } else { now - offset }))
    }

    const SCOPES: &[&str] = &["https://www.googleapis.com/auth/cloud-platform"];

    #[tokio::test]
    async fn a_token_is_fetched_once_and_the_endpoints_clock_is_read() {
        let emu = Emulator::builder().project_id("acme-edge").start().await.unwrap();
        let (provider, time) = provider(&emu, node_at(Duration::from_secs(90), true)).await;
        let token = provider.access_token(SCOPES).await.unwrap();
        assert!(token.as_str().starts_with("ya29."), "an issued token");
        let again = provider.access_token(SCOPES).await.unwrap();
        assert_eq!(token.as_str(), again.as_str(), "cached");
        assert_eq!(emu.request_counts().get(gcp_emulator::Method::Token), 1);
        let skew = time.skew().unwrap();
        assert!((skew - 90.0).abs() < 2.0, "the node is 90 s ahead: {skew}");
        assert!(!format!("{provider:?}").contains("PRIVATE"), "{provider:?}");
        emu.shutdown().await;
    }

    /// Two hours ahead or behind, Google's window refuses the assertion: the error quotes
    /// Google, says it is about the clock, and the refusal's `Date` measured the skew. The next
    /// caller within the backoff gets the same error without a request.
    #[tokio::test]
    async fn a_clock_hours_off_is_refused_and_measured() {
        let emu = Emulator::builder().project_id("acme-edge").start().await.unwrap();
        for ahead in [true, false] {
            let (provider, time) = provider(&emu, node_at(Duration::from_secs(7200), ahead)).await;
            let before = emu.request_counts().get(gcp_emulator::Method::Token);
            let error = provider.access_token(SCOPES).await.unwrap_err();
            let text = error.to_string();
            assert!(error.about_the_clock(), "{text}");
            assert!(text.contains("invalid_grant: Invalid JWT: Token must be a short-lived token"), "{text}");
            assert!(text.contains(ACCOUNT) && text.contains("/etc/keyturn/key.json"), "{text}");
            let skew = time.skew().unwrap();
            let expected = if ahead { 7200.0 } else { -7200.0 };
            assert!((skew - expected).abs() < 2.0, "{skew}");
            assert_eq!(provider.access_token(SCOPES).await.unwrap_err().to_string(), text);
            assert_eq!(emu.request_counts().get(gcp_emulator::Method::Token), before + 1, "one request per backoff");
        }
        emu.shutdown().await;
    }
}
