//! Workload Identity Federation as a `gcp_auth` [`TokenProvider`]: an `external_account`
//! credential configuration in, Google access tokens out.
//!
//! # Getting a token
//!
//! 1. Read the subject token from its source, afresh ([`subject_token`]).
//! 2. Exchange it at STS for a federated token ([`exchange::exchange`]).
//! 3. With `service_account_impersonation_url`, trade that for the service account's token
//!    ([`exchange::impersonate`]).
//!
//! # Keeping it fresh
//!
//! The token is cached with its expiry in Google's time ([`ServerTime`]), and judged by
//! [`freshness`], a small pure function: **fresh** tokens are handed out; a **stale** one (less
//! than [`REFRESH_AHEAD`] left) is still handed out while a refresh runs in the background, so
//! no Secret Manager request waits for a refresh or fails because of one; only an **expired**
//! one (or none) makes callers wait. Refreshes run as one task at a time, whoever asked, and
//! outlive a caller that stops waiting (a request's `token_timeout`): the next caller finds the
//! result. After a failure, callers that need a token get the same error at once until a
//! backoff has passed ([`crate::backoff::retry_delay`], at most a minute), so a broken source is
//! not hammered by every policy's poll. A failed background refresh leaves the stale token in
//! use and is logged.
//!
//! # Why our own code, not Google's auth crate
//!
//! `google-cloud-auth` 1.19 (Google's maintained Rust crate) reads the same configurations. Both
//! were built into the release binary and measured (`scripts/bench.sh --only cold,memory`,
//! 100 policies): with it the binary is 8.07 MB instead of 7.66 MB, idle memory on the file
//! store 7.89 MiB instead of 7.70 MiB (the budget is 8 MiB), and 9.18 MiB instead of 8.85 MiB
//! with an external account on the emulator; it adds 47 crates. It also runs executables with
//! its own process code rather than [`crate::process::run`], reads an impersonated token's
//! `expireTime` against the node's clock, and its errors are its own where keyturn's name the
//! file, the audience and what the endpoint answered. This module and its siblings are about
//! 1,400 lines (tests aside) over the reqwest client keyturn already has.
//!
//! # What never leaks
//!
//! Subject, federated and access tokens live in zeroized buffers here (gcp_auth's [`Token`]
//! keeps its own copy of the access token, as it does for every provider); none formats, and
//! errors ([`ExternalAccountError`]) say which file, audience and endpoint failed and what the
//! endpoint answered, never a token.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use gcp_auth::{Token, TokenProvider};
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use zeroize::Zeroizing;

use super::credential_config::ExternalAccountConfig;
use super::exchange::{self, Refusal, Step};
use super::server_time::ServerTime;
use super::subject_token;
use crate::clock::SharedClock;

/// A token with less than this left is refreshed in the background while still in use:
/// several polls at the default 60 s, and Google's own libraries' 3 min 45 s with room to spare.
pub const REFRESH_AHEAD: Duration = Duration::from_secs(300);
/// A token with less than this left is not handed out: a request sent now might arrive after
/// it expired (and Google's time is known to about a second).
pub const USABLE_MARGIN: Duration = Duration::from_secs(30);
/// The longest wait between attempts after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// How a cached token stands at `now` (both in Google's time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    Fresh,
    /// Usable, but due for a refresh.
    Stale,
    Expired,
}

pub fn freshness(now: SystemTime, expires: SystemTime) -> Freshness {
    let left = expires.duration_since(now).unwrap_or_default();
    if left > REFRESH_AHEAD {
        Freshness::Fresh
    } else if left > USABLE_MARGIN {
        Freshness::Stale
    } else {
        Freshness::Expired
    }
}

/// The provider. Dropping it stops a refresh in flight.
pub struct ExternalAccount {
    inner: Arc<Inner>,
}

struct Inner {
    /// The configuration file, for messages.
    origin: PathBuf,
    config: ExternalAccountConfig,
    http: reqwest::Client,
    allow_executables: bool,
    time: Arc<ServerTime>,
    /// The node's clock, for an executable response's `expiration_time`.
    clock: SharedClock,
    state: Mutex<State>,
    /// Bumped when a refresh finishes; waiters then read `state`.
    finished: watch::Sender<u64>,
}

#[derive(Default)]
struct State {
    cached: Option<Cached>,
    /// The refresh task, while one runs.
    refreshing: Option<AbortHandle>,
    failures: u32,
    last_error: Option<ExternalAccountError>,
    /// No new attempt before this, after a failure.
    retry_at: Option<Instant>,
    generation: u64,
}

struct Cached {
    token: Arc<Token>,
    /// In Google's time.
    expires: SystemTime,
    scopes: Vec<String>,
}

impl fmt::Debug for ExternalAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExternalAccount")
            .field("origin", &self.inner.origin)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Drop for ExternalAccount {
    fn drop(&mut self) {
        if let Some(task) = self.inner.lock().refreshing.take() {
            task.abort();
        }
    }
}

/// Everything an [`ExternalAccount`] is made from.
#[derive(Debug)]
pub struct Settings {
    pub origin: PathBuf,
    pub config: ExternalAccountConfig,
    pub http: reqwest::Client,
    pub allow_executables: bool,
    pub time: Arc<ServerTime>,
    pub clock: SharedClock,
}

impl ExternalAccount {
    pub fn new(settings: Settings) -> Self {
        let (finished, _) = watch::channel(0);
        ExternalAccount {
            inner: Arc::new(Inner {
                origin: settings.origin,
                config: settings.config,
                http: settings.http,
                allow_executables: settings.allow_executables,
                time: settings.time,
                clock: settings.clock,
                state: Mutex::new(State::default()),
                finished,
            }),
        }
    }

    /// A token for `scopes`: the cached one while it is usable, else a new one.
    pub async fn access_token(&self, scopes: &[&str]) -> Result<Arc<Token>, ExternalAccountError> {
        let mut finished = self.inner.finished.subscribe();
        {
            let mut state = self.inner.lock();
            let now = self.inner.time.now();
            if let Some(cached) = state.cached.as_ref().filter(|c| c.scopes == scopes) {
                match freshness(now, cached.expires) {
                    Freshness::Fresh => return Ok(cached.token.clone()),
                    Freshness::Stale => {
                        let token = cached.token.clone();
                        if state.backoff_error().is_none() {
                            self.start_refresh(&mut state, scopes);
                        }
                        return Ok(token);
                    }
                    Freshness::Expired => {}
                }
            }
            if let Some(error) = state.backoff_error() {
                return Err(error);
            }
            self.start_refresh(&mut state, scopes);
        }
        loop {
            if finished.changed().await.is_err() {
                unreachable!("the sender lives in `inner`, which `self` holds");
            }
            let mut state = self.inner.lock();
            let now = self.inner.time.now();
            if let Some(cached) = state.cached.as_ref().filter(|c| c.scopes == scopes)
                && freshness(now, cached.expires) != Freshness::Expired
            {
                return Ok(cached.token.clone());
            }
            if let Some(error) = state.last_error.clone() {
                return Err(error);
            }
            // A refresh for other scopes finished: start ours.
            self.start_refresh(&mut state, scopes);
        }
    }

    fn start_refresh(&self, state: &mut State, scopes: &[&str]) {
        if state.refreshing.as_ref().is_some_and(|task| !task.is_finished()) {
            return;
        }
        let inner = self.inner.clone();
        let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
        let task = tokio::spawn(async move {
            let result = inner.fetch(&scopes).await;
            inner.finish(result, scopes);
        });
        state.refreshing = Some(task.abort_handle());
    }
}

impl State {
    /// The last error, while its backoff lasts.
    fn backoff_error(&self) -> Option<ExternalAccountError> {
        let waiting = self.retry_at.is_some_and(|at| Instant::now() < at);
        if waiting { self.last_error.clone() } else { None }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn error(&self, problem: Problem) -> ExternalAccountError {
        ExternalAccountError {
            origin: self.origin.display().to_string(),
            audience: self.config.audience.clone(),
            problem,
        }
    }

    /// Subject token → STS → (IAM Credentials) → a cached token.
    async fn fetch(&self, scopes: &[String]) -> Result<Cached, ExternalAccountError> {
        let scope_refs: Vec<&str> = scopes.iter().map(String::as_str).collect();
        let impersonated = self.config.impersonation.as_ref().map(|i| i.account.as_str());
        let context = subject_token::Context {
            http: &self.http,
            allow_executables: self.allow_executables,
            audience: &self.config.audience,
            subject_token_type: &self.config.subject_token_type,
            impersonated_account: impersonated,
            clock: self.clock.as_ref(),
        };
        let subject = subject_token::read(&self.config.source, &context).await.map_err(|m| self.error(Problem::Subject(m)))?;
        let source = self.config.source.describe();
        let federated = exchange::exchange(&self.http, &self.config, &subject, &scope_refs, &self.time)
            .await
            .map_err(|refusal| self.error(Problem::Refused { refusal, source: source.clone(), principal: None }))?;
        let issued = match &self.config.impersonation {
            None => federated,
            Some(impersonation) => {
                exchange::impersonate(&self.http, impersonation, &federated, &scope_refs, &self.time).await.map_err(
                    |refusal| {
                        let principal =
                            jwt_subject(subject.expose()).and_then(|sub| principal(&self.config.audience, &sub));
                        self.error(Problem::Refused { refusal, source: source.clone(), principal })
                    },
                )?
            }
        };
        drop(subject);
        let left = issued.expires.duration_since(self.time.now()).unwrap_or_default();
        let token = gcp_token(&issued.token, left).map_err(|m| self.error(Problem::Token(m)))?;
        tracing::debug!(
            credentials = %self.origin.display(),
            expires = %crate::clock::rfc3339(issued.expires),
            "external account: new access token"
        );
        Ok(Cached { token: Arc::new(token), expires: issued.expires, scopes: scopes.to_vec() })
    }

    fn finish(&self, result: Result<Cached, ExternalAccountError>, scopes: Vec<String>) {
        let mut state = self.lock();
        state.refreshing = None;
        match result {
            Ok(cached) => {
                state.cached = Some(cached);
                state.failures = 0;
                state.last_error = None;
                state.retry_at = None;
            }
            Err(error) => {
                state.failures += 1;
                let delay = crate::backoff::retry_delay(state.failures, MAX_BACKOFF, crate::backoff::unit_random());
                state.retry_at = Some(Instant::now() + delay);
                let still_usable = state.cached.as_ref().filter(|c| c.scopes == scopes).map(|c| c.expires);
                match still_usable {
                    Some(expires) => tracing::warn!(
                        "refreshing the access token failed; the current one is used until {} (Google's time), \
                         next attempt in {delay:.0?}: {error}",
                        crate::clock::rfc3339(expires)
                    ),
                    None => tracing::debug!("external account: no access token, next attempt in {delay:.0?}: {error}"),
                }
                state.last_error = Some(error);
            }
        }
        state.generation += 1;
        let generation = state.generation;
        drop(state);
        self.finished.send_replace(generation);
    }
}

/// gcp_auth's [`Token`] has no public constructor but reads the token endpoint's JSON: build
/// that JSON in a zeroized buffer.
pub(super) fn gcp_token(token: &str, left: Duration) -> Result<Token, String> {
    #[derive(serde::Serialize)]
    struct Answer<'a> {
        access_token: &'a str,
        expires_in: u64,
    }
    let mut json = Zeroizing::new(Vec::with_capacity(token.len() + 48));
    serde_json::to_writer(&mut *json, &Answer { access_token: token, expires_in: left.as_secs() })
        .map_err(|e| format!("cannot hold the access token: {e}"))?;
    serde_json::from_slice(&json).map_err(|e| format!("cannot hold the access token: {e}"))
}

/// The `sub` of a JWT subject token, for a message that names the principal to grant. Not a
/// secret: it is the workload's name (`system:serviceaccount:keyturn:keyturn`).
fn jwt_subject(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = Zeroizing::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?);
    #[derive(serde::Deserialize)]
    struct Claims {
        sub: Option<String>,
    }
    serde_json::from_slice::<Claims>(&bytes).ok()?.sub
}

#[async_trait::async_trait]
impl TokenProvider for ExternalAccount {
    async fn token(&self, scopes: &[&str]) -> Result<Arc<Token>, gcp_auth::Error> {
        self.access_token(scopes).await.map_err(|e| gcp_auth::Error::Other("external account", Box::new(e)))
    }

    /// The workforce pool's user project, or the workload pool's project number.
    async fn project_id(&self) -> Result<Arc<str>, gcp_auth::Error> {
        let config = &self.inner.config;
        let from_audience = config
            .audience
            .split('/')
            .skip_while(|part| *part != "projects")
            .nth(1)
            .filter(|number| !number.is_empty());
        config
            .workforce_pool_user_project
            .as_deref()
            .or(from_audience)
            .map(Arc::from)
            .ok_or(gcp_auth::Error::Str("the external account's audience names no project"))
    }
}

/// Why no token could be had: which configuration and audience, and the problem.
#[derive(Debug, Clone, thiserror::Error)]
#[error("external account {origin} (audience {audience}): {problem}")]
pub struct ExternalAccountError {
    origin: String,
    audience: String,
    problem: Problem,
}

#[derive(Debug, Clone)]
enum Problem {
    /// The subject token could not be read; the text names the source.
    Subject(String),
    Refused {
        refusal: Refusal,
        /// "file /var/run/…", for advice about the subject token.
        source: String,
        /// The workload's principal (from the subject token's `sub`), for advice about whom
        /// to grant impersonation.
        principal: Option<String>,
    },
    Token(String),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Subject(message) | Problem::Token(message) => f.write_str(message),
            Problem::Refused { refusal, source, principal } => write_refusal(f, refusal, source, principal.as_deref()),
        }
    }
}

fn service(step: Step) -> &'static str {
    match step {
        Step::Sts => "the Security Token Service",
        Step::Impersonation => "IAM Credentials",
    }
}

fn write_refusal(f: &mut fmt::Formatter<'_>, refusal: &Refusal, source: &str, principal: Option<&str>) -> fmt::Result {
    match refusal {
        Refusal::Unreachable { step, url, message } => write!(f, "cannot reach {} at {url}: {message}", service(*step)),
        Refusal::Malformed { step, url, problem } => {
            write!(f, "{} at {url} answered without a usable token: {problem}", service(*step))
        }
        Refusal::Sts { url, status, error, description } => {
            write!(f, "the Security Token Service at {url} refused the subject token from {source}: {error}")?;
            if !description.is_empty() {
                write!(f, ": {description}")?;
            }
            write!(f, " (HTTP {status})")?;
            let advice = match error.as_str() {
                "invalid_grant" => format!(
                    "; the subject token is expired, not yet valid, not signed by the provider's issuer, or its aud \
                     is not one of the provider's allowed audiences: check what {source} holds and when it is renewed"
                ),
                "invalid_request" if description.contains("audience") => {
                    "; audience must be the provider's full resource name, \
                     //iam.googleapis.com/projects/PROJECT_NUMBER/locations/global/workloadIdentityPools/POOL/providers/PROVIDER"
                        .into()
                }
                "invalid_target" => "; the pool or provider that audience names does not exist or is disabled".into(),
                "unauthorized_client" => "; the provider's attribute condition refused this workload".into(),
                _ => String::new(),
            };
            f.write_str(&advice)
        }
        Refusal::Impersonation { account, status, code, message, permission } => {
            write!(f, "IAM Credentials refused to impersonate {account}: {code}: {message} (HTTP {status})")?;
            if code == "PERMISSION_DENIED" || permission.is_some() {
                let principal = principal.unwrap_or("the workload's principal:// in the pool of audience");
                write!(
                    f,
                    "; grant roles/iam.workloadIdentityUser on {account} to {principal} (or to a principalSet:// \
                     that holds it): see policies/iam/README.md"
                )?;
            } else if code == "UNAUTHENTICATED" {
                f.write_str("; the federated token from the Security Token Service was not accepted")?;
            }
            Ok(())
        }
    }
}

/// What this provider is, for a debug line: the file, the source, the account.
pub fn describe(origin: &Path, config: &ExternalAccountConfig) -> String {
    let via = match &config.impersonation {
        Some(impersonation) => format!(", impersonating {}", impersonation.account),
        None => String::new(),
    };
    format!("external account {} (subject token from {}{via})", origin.display(), config.source.describe())
}

/// `principal://iam.googleapis.com/POOL/subject/SUBJECT` for a provider's `audience`.
fn principal(audience: &str, subject: &str) -> Option<String> {
    let name = audience.strip_prefix("//iam.googleapis.com/")?;
    let (pool, _provider) = name.split_once("/providers/")?;
    Some(format!("principal://iam.googleapis.com/{pool}/subject/{subject}"))
}

#[cfg(test)]
mod tests;
