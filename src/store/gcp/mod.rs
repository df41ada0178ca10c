//! Google Cloud Secret Manager, over REST v1.
//!
//! Contract: `../shared/reference/gcp-secret-manager/CONTRACT.md` (and the emulator in
//! `tests/gcp-emulator`, which follows it). The points that shape this client:
//!
//! - **Endpoints.** Global secrets live at `secretmanager.googleapis.com`; regional secrets
//!   (`projects/P/locations/L/secrets/S`) must be called on `secretmanager.L.rep.googleapis.com`,
//!   which also keeps the data in its region. `endpoint` overrides both (private access, tests);
//!   plain `http://` is accepted only for loopback.
//! - **Auth.** Application Default Credentials' order ([`identity`]): the store's
//!   `credentials` file, `GOOGLE_APPLICATION_CREDENTIALS`, gcloud's file, the metadata server.
//!   A file may be a service-account key (`gcp_auth`) or an `external_account` configuration
//!   (Workload Identity Federation, [`identity::external_account`], a `gcp_auth`
//!   `TokenProvider` of our own). `gcp_auth` sets no timeouts; every token request here runs
//!   under `token_timeout`.
//! - **Time.** Every response's `Date`, errors and the token endpoint's included, tells
//!   [`identity::server_time`] Google's time: tokens are kept by it, and it is the store's clock
//!   ([`SecretStore::clock`]) on which the engine decides due times and leases. A token request
//!   refused while the node's clock is measured further off than `[agent] max_clock_skew`, or
//!   refused for its `iat`/`exp`, is [`StoreError::Clock`]: it names the clock and the fix,
//!   never the credentials. (A 401 on a request is not the clock's doing: tokens are kept by
//!   Google's time.)
//! - **Integrity.** Every access checks `payload.dataCrc32c`; a mismatch is an error and
//!   nothing is delivered. `addVersion` sends the checksum so Google verifies the upload.
//! - **Concurrency.** Alias moves carry the secret's etag, disables and destroys the version's
//!   etag; a mismatch (400 FAILED_PRECONDITION) is [`StoreError::Conflict`].
//! - **Retries**, as Google's own service config says: only `access` retries automatically, on
//!   UNAVAILABLE and RESOURCE_EXHAUSTED (and failed connections), up to 5 attempts with
//!   exponential backoff from 2 s, doubling, at most 60 s, with jitter. Writes never retry:
//!   a repeated `addVersion` adds a second version.
//! - **Quota.** Steady state is one `access` of the `current` alias per policy per poll (the
//!   access quota is 90,000 per minute per project); metadata reads (600 per minute) happen
//!   only for rotations and `store` commands.
//! - **Names.** Google answers with the project *number* even when asked by id, so versions
//!   are read from the last path segment, never by comparing names.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::OnceCell;
use zeroize::Zeroizing;

mod config;
pub mod identity;

pub use config::GcpStoreConfig;

use super::registry::{Backend, OpenContext};
use super::{
    Etag, SecretMeta, SecretStore, SecretUpdate, Selector, StoreClock, StoreError, VersionInfo, VersionState,
};
use crate::backoff::{retry_delay_from, unit_random};
use crate::config::Section;
use crate::secret::{SecretBytes, SecretId, Version, VersionId};
use identity::server_time::ServerTime;

const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
const GLOBAL_ENDPOINT: &str = "https://secretmanager.googleapis.com";
/// Google's service config: at most 5 attempts for `access`.
const ACCESS_ATTEMPTS: u32 = 5;
/// Google's service config: backoff never exceeds 60 s.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// An error body is quoted into messages only this far: enough for Google's envelope, not for
/// a proxy's whole HTML page.
const MAX_QUOTED: usize = 300;
/// The largest response body read: a 64 KiB value is about 88 KB of base64 in its JSON, and a
/// page of 250 versions about 100 KB. A larger body is refused before it is read whole.
const MAX_RESPONSE: usize = 1024 * 1024;
/// Where credentials come from, for errors that say to check them.
const CREDENTIALS_ADVICE: &str = "; check the node's credentials (GOOGLE_APPLICATION_CREDENTIALS, workload identity, or `credentials` in the store's configuration)";

impl Backend for GcpStore {
    const KIND: &'static str = "gcp";
    type Config = GcpStoreConfig;

    fn configure(section: &mut Section<'_, '_>) -> Option<GcpStoreConfig> {
        config::configure(section)
    }

    async fn open(name: &str, config: &GcpStoreConfig, context: &OpenContext) -> Result<Self, StoreError> {
        GcpStore::new(name, config, context)
    }

    fn check_secret_id(id: &str) -> Result<(), String> {
        super::check_portable_secret_id(id)
    }

    /// The configured endpoint, then the regional endpoint of each `--location`.
    fn probe_endpoints(
        config: &GcpStoreConfig,
        locations: &[String],
    ) -> Result<Vec<(String, GcpStoreConfig)>, String> {
        let label = config.location.clone().unwrap_or_else(|| "global".to_string());
        let mut endpoints = vec![(label, config.clone())];
        for location in locations {
            config::check_location(location).map_err(|m| format!("--location {m}"))?;
            endpoints.push((location.clone(), GcpStoreConfig { location: Some(location.clone()), ..config.clone() }));
        }
        Ok(endpoints)
    }

    fn preflight(config: &GcpStoreConfig) -> Vec<(&'static str, String)> {
        let credentials = config.credentials.as_deref().map(|path| ("credentials", path));
        credentials.and_then(|(field, path)| super::registry::readable_file(path).err().map(|e| (field, e))).into_iter().collect()
    }

    async fn authenticate(&self) -> Option<Result<(), StoreError>> {
        Some(self.token_ready().await)
    }
}

/// A token provider's error as a sentence (our own providers' errors say everything
/// themselves; `gcp_auth`'s are joined with their causes), and whether the endpoint refused it
/// for its time (`iat`/`exp`).
fn token_error(error: &gcp_auth::Error) -> (String, bool) {
    use identity::external_account::ExternalAccountError;
    use identity::service_account::ServiceAccountError;
    match error {
        gcp_auth::Error::Other(_, source) if source.is::<ExternalAccountError>() => (source.to_string(), false),
        gcp_auth::Error::Other(_, source) => match source.downcast_ref::<ServiceAccountError>() {
            Some(refused) => (refused.to_string(), refused.about_the_clock()),
            None => (crate::error_chain(error), false),
        },
        other => (crate::error_chain(other), false),
    }
}

/// Which predefined Google role grants a permission, so a denial says what to ask for.
fn role_hint(permission: Option<&str>) -> String {
    let role = match permission {
        Some("secretmanager.versions.access") => "roles/secretmanager.secretAccessor",
        Some("secretmanager.versions.add") => "roles/secretmanager.secretVersionAdder",
        Some(
            "secretmanager.versions.enable"
            | "secretmanager.versions.disable"
            | "secretmanager.versions.destroy"
            | "secretmanager.versions.get"
            | "secretmanager.versions.list",
        ) => "roles/secretmanager.secretVersionManager",
        Some("secretmanager.secrets.get" | "secretmanager.secrets.list") => "roles/secretmanager.viewer",
        Some(_) => "the keyturn rotator role in policies/iam/",
        None => return String::new(),
    };
    format!(" (grant {role} on the secret, or see policies/iam/)")
}

pub struct GcpStore {
    /// The store's name in configuration, for messages.
    name: String,
    http: reqwest::Client,
    /// `ENDPOINT/v1/projects/P` or `ENDPOINT/v1/projects/P/locations/L`.
    parent_url: String,
    credentials: Option<std::path::PathBuf>,
    /// Created on first use: finding Application Default Credentials may probe the metadata
    /// server, which should not delay start-up or fail it for good.
    identity: OnceCell<identity::Identity>,
    /// Google's time, from the `Date` of every answer: tokens are kept by it, and it is this
    /// store's clock.
    server_time: Arc<ServerTime>,
    /// The node's clock, for the token request's own time.
    clock: crate::clock::SharedClock,
    /// `[agent] max_clock_skew`: a refusal with the clock measured further off names the clock.
    max_clock_skew: Duration,
    request_timeout: Duration,
    token_timeout: Duration,
    retry_backoff: Duration,
}

impl std::fmt::Debug for GcpStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcpStore")
            .field("name", &self.name)
            .field("parent_url", &self.parent_url)
            .finish_non_exhaustive()
    }
}

/// Google's error envelope (`{"error": {"code", "message", "status", "details"}}`), as Secret
/// Manager and IAM Credentials answer a refusal.
#[derive(Debug, Deserialize)]
pub(crate) struct GoogleError {
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub details: Vec<serde_json::Value>,
}

impl GoogleError {
    /// The envelope's error, if `body` is one.
    pub fn parse(body: &[u8]) -> Option<GoogleError> {
        #[derive(Deserialize)]
        struct Envelope {
            error: GoogleError,
        }
        serde_json::from_slice::<Envelope>(body).ok().map(|e| e.error)
    }

    /// The IAM permission a PERMISSION_DENIED names in its details, if any.
    pub fn permission(&self) -> Option<String> {
        self.details.iter().find_map(|d| d.pointer("/metadata/permission").and_then(|p| p.as_str()).map(String::from))
    }
}

/// The endpoint a configuration talks to: the override, the regional endpoint of its
/// location, or the global one.
pub fn endpoint(config: &GcpStoreConfig) -> String {
    match (&config.endpoint, &config.location) {
        (Some(endpoint), _) => endpoint.trim_end_matches('/').to_string(),
        (None, Some(location)) => format!("https://secretmanager.{location}.rep.googleapis.com"),
        (None, None) => GLOBAL_ENDPOINT.to_string(),
    }
}

impl GcpStore {
    pub fn new(name: &str, config: &GcpStoreConfig, context: &OpenContext) -> Result<Self, StoreError> {
        let endpoint = endpoint(config);
        let parent = match &config.location {
            Some(location) => format!("projects/{}/locations/{location}", config.project),
            None => format!("projects/{}", config.project),
        };
        // No redirects, no proxy for a loopback endpoint, https beyond it (crate::http).
        let http = crate::http::client(&endpoint, config.request_timeout)
            .map_err(|e| StoreError::Invalid(format!("store \"{name}\": cannot build an HTTP client: {e}")))?;
        tracing::debug!(
            store = name,
            endpoint = %crate::http::shown(&endpoint),
            parent = %parent,
            credentials = %config.credentials.as_ref().map_or("Application Default Credentials".to_string(), |p| p.display().to_string()),
            "Google Secret Manager store"
        );
        Ok(GcpStore {
            name: name.to_string(),
            http,
            parent_url: format!("{endpoint}/v1/{parent}"),
            credentials: config.credentials.clone(),
            identity: OnceCell::new(),
            server_time: Arc::new(ServerTime::new(context.clock.clone())),
            clock: context.clock.clone(),
            max_clock_skew: context.max_clock_skew,
            request_timeout: config.request_timeout,
            token_timeout: config.token_timeout,
            retry_backoff: config.retry_backoff,
        })
    }

    fn secret_url(&self, id: &SecretId) -> Result<String, StoreError> {
        super::check_portable_secret_id(id.as_str()).map_err(StoreError::Invalid)?;
        Ok(format!("{}/secrets/{id}", self.parent_url))
    }

    fn version_url(&self, id: &SecretId, selector: &Selector) -> Result<String, StoreError> {
        let segment = match selector {
            Selector::Alias(alias) => alias.as_str(),
            Selector::Latest => "latest",
            Selector::Id(version) => version.as_str(),
        };
        let ok = !segment.is_empty() && segment.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !ok {
            return Err(StoreError::Invalid(format!("\"{segment}\" is not a version number or alias")));
        }
        Ok(format!("{}/versions/{segment}", self.secret_url(id)?))
    }

    /// Finds credentials and gets a token now, rather than at the first request: what
    /// `keyturn probe` times.
    pub async fn token_ready(&self) -> Result<(), StoreError> {
        self.token().await.map(|_| ())
    }

    async fn token(&self) -> Result<(Arc<gcp_auth::Token>, Option<&str>), StoreError> {
        let auth =
            |message: String| StoreError::Auth { store: self.name.clone(), message, advice: CREDENTIALS_ADVICE.into() };
        let identity = self
            .identity
            .get_or_try_init(|| async {
                let environment = identity::Environment::from_process();
                let discovery = identity::Discovery {
                    configured: self.credentials.as_deref(),
                    environment: &environment,
                    request_timeout: self.request_timeout,
                    time: self.server_time.clone(),
                    clock: self.clock.clone(),
                };
                match tokio::time::timeout(self.token_timeout, identity::find(discovery)).await {
                    Ok(Ok(identity)) => Ok(identity),
                    Ok(Err(message)) => Err(auth(format!("no usable credentials: {message}"))),
                    Err(_) => Err(auth(format!("finding credentials took longer than {:?}", self.token_timeout))),
                }
            })
            .await?;
        match tokio::time::timeout(self.token_timeout, identity.provider.token(&[SCOPE])).await {
            Ok(Ok(token)) => Ok((token, identity.quota_project.as_deref())),
            Ok(Err(e)) => {
                let (message, about_the_clock) = token_error(&e);
                Err(self.refused(format!("token request failed: {message}"), about_the_clock))
            }
            Err(_) => Err(auth(format!("token request took longer than {:?}", self.token_timeout))),
        }
    }

    /// Google refused a token request: the error names the clock when Google said the
    /// request's time was wrong or the clock is measured further off than `max_clock_skew`
    /// (a subject token may be minted with the node's time too), and the credentials otherwise.
    fn refused(&self, message: String, about_the_clock: bool) -> StoreError {
        let store = self.name.clone();
        let skew = self.server_time.skew();
        let skewed = skew.is_some_and(|skew| skew.abs() > self.max_clock_skew.as_secs_f64());
        if !(about_the_clock || skewed) {
            return StoreError::Auth { store, message, advice: CREDENTIALS_ADVICE.into() };
        }
        let measured = match skew {
            Some(skew) => format!(
                "this node's clock is {} Google's (measured from the Date of its answers)",
                super::skew_words(skew)
            ),
            None => "Google refused the request's time (iat and exp)".to_string(),
        };
        let advice = format!(
            "; the likely cause is this node's clock, not its credentials: {measured}, and Google takes a signed request only within a few minutes of its own time; {}",
            crate::clock::TIME_SYNC_ADVICE
        );
        StoreError::Clock { store, message, advice }
    }

    /// One request; the response body on success, a typed error otherwise. Bodies are read
    /// into zeroized buffers, since access responses carry values.
    async fn call(
        &self,
        method: Method,
        url: &str,
        body: Option<Zeroizing<Vec<u8>>>,
    ) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        let (token, quota_project) = self.token().await?;
        let mut request = self.http.request(method, url).bearer_auth(token.as_str());
        if let Some(project) = quota_project {
            request = request.header("x-goog-user-project", project);
        }
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body.to_vec());
        }
        let unavailable =
            |e: reqwest::Error| StoreError::Unavailable { store: self.name.clone(), message: crate::error_chain(&e) };
        let mut response = request.send().await.map_err(unavailable)?;
        self.server_time.observe(response.headers());
        let status = response.status();
        let too_large = || StoreError::Api {
            store: self.name.clone(),
            status: "MALFORMED_RESPONSE".into(),
            message: format!("the response is larger than {MAX_RESPONSE} bytes; it was not read"),
        };
        if response.content_length().is_some_and(|length| length > MAX_RESPONSE as u64) {
            return Err(too_large());
        }
        let mut bytes = Zeroizing::new(Vec::new());
        while let Some(chunk) = response.chunk().await.map_err(unavailable)? {
            if bytes.len() + chunk.len() > MAX_RESPONSE {
                return Err(too_large());
            }
            bytes.extend_from_slice(&chunk);
        }
        if status.is_success() {
            return Ok(bytes);
        }
        Err(self.api_error(status, &bytes))
    }

    /// Maps Google's error envelope to an error that says what to do.
    fn api_error(&self, http: StatusCode, body: &[u8]) -> StoreError {
        let store = self.name.clone();
        let Some(error) = GoogleError::parse(body) else {
            let text = String::from_utf8_lossy(body);
            let quoted: String = text.chars().take(MAX_QUOTED).collect();
            return match http.as_u16() {
                429 => StoreError::Quota { store, message: format!("HTTP 429: {quoted}") },
                500..=599 => StoreError::Unavailable { store, message: format!("HTTP {}: {quoted}", http.as_u16()) },
                _ => StoreError::Api { store, status: format!("HTTP {}", http.as_u16()), message: quoted },
            };
        };
        let permission = error.permission();
        let message = error.message;
        match error.status.as_str() {
            "PERMISSION_DENIED" => {
                let advice = role_hint(permission.as_deref());
                StoreError::PermissionDenied { store, permission, message, advice }
            }
            // Not the clock: every token keyturn sends is kept by Google's time, never the node's.
            "UNAUTHENTICATED" => StoreError::Auth {
                store,
                message: format!("credentials refused: {message}"),
                advice: CREDENTIALS_ADVICE.into(),
            },
            "RESOURCE_EXHAUSTED" => StoreError::Quota { store, message },
            "UNAVAILABLE" | "INTERNAL" | "UNKNOWN" | "DEADLINE_EXCEEDED" => StoreError::Unavailable { store, message },
            status => StoreError::Api { store, status: status.to_string(), message },
        }
    }

    /// Reads a secret's metadata (`secrets.get`).
    async fn get_secret(&self, id: &SecretId) -> Result<SecretResource, StoreError> {
        let body = self.call(Method::GET, &self.secret_url(id)?, None).await.map_err(|e| self.not_found(e, id))?;
        serde_json::from_slice(&body).map_err(|e| self.malformed("secrets.get", &e))
    }

    /// A version's etag (`versions.get`), for the version-level compare-and-swap.
    async fn version_etag(&self, id: &SecretId, version: &VersionId) -> Result<String, StoreError> {
        let url = self.version_url(id, &Selector::Id(version.clone()))?;
        let body = self.call(Method::GET, &url, None).await.map_err(|e| self.not_found(e, id))?;
        let resource: VersionResource =
            serde_json::from_slice(&body).map_err(|e| self.malformed("versions.get", &e))?;
        Ok(resource.etag)
    }

    /// `versions.disable` or `versions.destroy`, guarded by the version's etag.
    async fn transition(&self, id: &SecretId, version: &VersionId, verb: &str) -> Result<(), StoreError> {
        let etag = self.version_etag(id, version).await?;
        let url = format!("{}:{verb}", self.version_url(id, &Selector::Id(version.clone()))?);
        let body = Zeroizing::new(serde_json::to_vec(&json!({ "etag": etag })).expect("json"));
        match self.call(Method::POST, &url, Some(body)).await {
            Ok(_) => Ok(()),
            Err(StoreError::Api { status, message, .. }) if status == "FAILED_PRECONDITION" => {
                if message.contains(" state") {
                    Err(StoreError::NotEnabled { id: id.clone(), version: version.clone(), state: message, selector: None })
                } else {
                    Err(StoreError::Conflict { id: id.clone(), expected: Etag(etag) })
                }
            }
            Err(e) => Err(self.not_found(e, id)),
        }
    }

    /// Google's 404s, as the store-neutral errors the engine understands.
    fn not_found(&self, error: StoreError, id: &SecretId) -> StoreError {
        match error {
            StoreError::Api { status, message, .. } if status == "NOT_FOUND" => {
                if message.starts_with("Secret Version") {
                    let selector = Selector::Id(VersionId::new(version_in(&message).unwrap_or("?")));
                    self.missing_version(id, &selector, None)
                } else {
                    StoreError::NotFound { store: self.name.clone(), id: id.clone() }
                }
            }
            other => other,
        }
    }

    /// A secret that exists but has no version `selector` names, with what to do about it.
    fn missing_version(&self, id: &SecretId, selector: &Selector, newest: Option<&VersionId>) -> StoreError {
        let newest_text = newest.map_or("N".to_string(), ToString::to_string);
        let advice = match selector {
            Selector::Alias(alias) => format!(
                ": secrets made with `gcloud secrets create` or `versions add` have no aliases; set it with \
                 `gcloud secrets update {id} --update-version-aliases={alias}={newest_text}`{}, \
                 or deliver version = \"latest\" or a pinned number",
                newest.map_or(String::new(), |n| format!(" (version {n} is the newest)"))
            ),
            Selector::Id(_) => newest.map_or(String::new(), |n| format!(" (the newest version is {n})")),
            Selector::Latest => String::new(),
        };
        StoreError::NoSuchVersion { store: self.name.clone(), id: id.clone(), selector: selector.clone(), advice }
    }

    fn malformed(&self, method: &str, error: &serde_json::Error) -> StoreError {
        // serde_json's position-only messages for syntax; typed errors could quote input, so
        // they are reduced to their position too.
        StoreError::Api {
            store: self.name.clone(),
            status: "MALFORMED_RESPONSE".into(),
            message: format!(
                "{method} answered with unexpected JSON (line {}, column {})",
                error.line(),
                error.column()
            ),
        }
    }

    async fn access_once(&self, id: &SecretId, selector: &Selector) -> Result<Version, StoreError> {
        let url = format!("{}:access", self.version_url(id, selector)?);
        let body = match self.call(Method::GET, &url, None).await {
            Err(StoreError::Api { status, message, .. }) if status == "FAILED_PRECONDITION" => {
                let version = VersionId::new(version_in(&message).unwrap_or("?"));
                let state = if message.contains("DESTROYED") { "destroyed" } else { "disabled" };
                let selector = Some(selector.clone());
                return Err(StoreError::NotEnabled { id: id.clone(), version, state: state.into(), selector });
            }
            Err(StoreError::Api { status, .. }) if status == "NOT_FOUND" && !matches!(selector, Selector::Latest) => {
                // Google says "not found or has no versions" both for a missing secret and a
                // missing alias or number. A metadata read would tell them apart, but it needs
                // secretmanager.secrets.get, which a node that only reads (secretAccessor) does
                // not have and should not be told to get. An access of `latest` needs nothing
                // more, and names the newest version for the advice. Only on this error path.
                return Err(match Box::pin(self.access_once(id, &Selector::Latest)).await {
                    Ok(latest) => self.missing_version(id, selector, Some(&latest.id)),
                    Err(StoreError::NotEnabled { version, .. }) => self.missing_version(id, selector, Some(&version)),
                    Err(StoreError::Api { status, .. }) if status == "NOT_FOUND" => {
                        StoreError::NotFound { store: self.name.clone(), id: id.clone() }
                    }
                    Err(e) => e,
                });
            }
            other => other.map_err(|e| self.not_found(e, id))?,
        };
        self.decode_access(id, &body)
    }

    /// An access response's version, its payload decoded and checked: at most
    /// [`super::MAX_VALUE_BYTES`], not empty, and matching its CRC32C when Google sends one.
    fn decode_access(&self, id: &SecretId, body: &[u8]) -> Result<Version, StoreError> {
        #[derive(Deserialize)]
        struct Access<'a> {
            name: String,
            #[serde(borrow)]
            payload: Payload<'a>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Payload<'a> {
            #[serde(borrow)]
            data: Option<&'a str>,
            data_crc32c: Option<serde_json::Value>,
        }
        let access: Access<'_> = serde_json::from_slice(body).map_err(|e| self.malformed("versions.access", &e))?;
        let version = VersionId::new(access.name.rsplit('/').next().unwrap_or_default());
        let data = access.payload.data.unwrap_or("");
        if data.len() > super::MAX_VALUE_BYTES.div_ceil(3) * 4 {
            return Err(StoreError::TooLarge { id: id.clone(), version, max: super::MAX_VALUE_BYTES });
        }
        let value =
            SecretBytes::new(base64::engine::general_purpose::STANDARD.decode(data).map_err(|_| StoreError::Api {
                store: self.name.clone(),
                status: "MALFORMED_RESPONSE".into(),
                message: format!("version {version} of secret \"{id}\": payload is not base64"),
            })?);
        if value.is_empty() {
            return Err(StoreError::Empty { id: id.clone(), version });
        }
        let actual = value.crc32c();
        let expected = match &access.payload.data_crc32c {
            Some(serde_json::Value::String(s)) => s.parse::<u64>().ok(),
            Some(serde_json::Value::Number(n)) => n.as_u64(),
            _ => None,
        };
        match expected {
            Some(expected) if expected == u64::from(actual) => {}
            Some(expected) => {
                return Err(StoreError::Corrupt { id: id.clone(), version, expected: expected as u32, actual });
            }
            // Versions created before mid-2021 carry no checksum; nothing to compare against.
            None => tracing::debug!(store = %self.name, secret = %id, %version, "no dataCrc32c in the access response"),
        }
        Ok(Version { id: version, value, crc32c: actual, created: None })
    }
}

/// The version number in a message such as `Secret Version [projects/1/secrets/x/versions/4] ...`.
fn version_in(message: &str) -> Option<&str> {
    let start = message.find("/versions/")? + "/versions/".len();
    let rest = &message[start..];
    let end = rest.find(|c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '_').unwrap_or(rest.len());
    Some(&rest[..end])
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct VersionResource {
    #[serde(default)]
    name: String,
    #[serde(default)]
    state: String,
    create_time: Option<String>,
    #[serde(default)]
    etag: String,
}

impl VersionResource {
    fn info(self) -> VersionInfo {
        let state = match self.state.as_str() {
            "ENABLED" => VersionState::Enabled,
            "DESTROYED" => VersionState::Destroyed,
            _ => VersionState::Disabled,
        };
        VersionInfo {
            id: VersionId::new(self.name.rsplit('/').next().unwrap_or_default()),
            state,
            created: self.create_time.and_then(|t| humantime::parse_rfc3339(&t).ok()),
        }
    }
}

/// Page tokens are opaque; they go back in a query string.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SecretResource {
    #[serde(default)]
    etag: String,
    #[serde(default)]
    version_aliases: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

impl SecretResource {
    fn meta(self) -> SecretMeta {
        let aliases = self
            .version_aliases
            .into_iter()
            .filter_map(|(alias, n)| {
                let n = match n {
                    serde_json::Value::String(s) => s,
                    serde_json::Value::Number(n) => n.to_string(),
                    _ => return None,
                };
                Some((alias, VersionId::new(n)))
            })
            .collect();
        SecretMeta { etag: Etag(self.etag), aliases, annotations: self.annotations }
    }
}

impl SecretStore for GcpStore {
    async fn access(&self, id: &SecretId, selector: &Selector) -> Result<Version, StoreError> {
        let mut attempt = 1;
        loop {
            match self.access_once(id, selector).await {
                Err(e)
                    if attempt < ACCESS_ATTEMPTS
                        && matches!(e, StoreError::Unavailable { .. } | StoreError::Quota { .. }) =>
                {
                    let wait = retry_delay_from(self.retry_backoff, attempt, MAX_BACKOFF, unit_random());
                    tracing::debug!(store = %self.name, secret = %id, attempt, error = %e, wait_ms = wait.as_millis() as u64, "access retried");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn describe(&self, id: &SecretId) -> Result<SecretMeta, StoreError> {
        Ok(self.get_secret(id).await?.meta())
    }

    /// `secrets.create`: automatic replication for a global secret, none for a regional one
    /// (its location is its replication).
    async fn create(&self, id: &SecretId) -> Result<(), StoreError> {
        let url = format!("{}/secrets?secretId={id}", self.parent_url);
        let secret =
            if self.parent_url.contains("/locations/") { json!({}) } else { json!({"replication": {"automatic": {}}}) };
        let body = Zeroizing::new(serde_json::to_vec(&secret).expect("json"));
        match self.call(Method::POST, &url, Some(body)).await {
            Ok(_) => {
                tracing::info!(store = %self.name, secret = %id, "created secret");
                Ok(())
            }
            Err(StoreError::Api { status, .. }) if status == "ALREADY_EXISTS" => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn add_version(&self, id: &SecretId, value: &SecretBytes) -> Result<VersionId, StoreError> {
        #[derive(Deserialize)]
        struct Added {
            name: String,
        }
        if value.is_empty() {
            return Err(StoreError::Invalid(format!("refusing to add an empty version to secret \"{id}\"")));
        }
        if value.len() > super::MAX_VALUE_BYTES {
            return Err(StoreError::Invalid(format!(
                "refusing to add a version of {} bytes to secret \"{id}\": Google keeps at most {} bytes",
                value.len(),
                super::MAX_VALUE_BYTES
            )));
        }
        let url = format!("{}:addVersion", self.secret_url(id)?);
        let body = || {
            let data = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(value.expose()));
            let mut body = Zeroizing::new(Vec::with_capacity(data.len() + 64));
            body.extend_from_slice(b"{\"payload\":{\"data\":\"");
            body.extend_from_slice(data.as_bytes());
            body.extend_from_slice(format!("\",\"dataCrc32c\":\"{}\"}}}}", value.crc32c()).as_bytes());
            body
        };
        let added = match self.call(Method::POST, &url, Some(body())).await {
            // A secret that does not exist yet is created first, as the file store does: the
            // create cannot duplicate anything (a second create is 409), and the add it
            // precedes never reached the server.
            Err(StoreError::Api { status, .. }) if status == "NOT_FOUND" => {
                self.create(id).await?;
                self.call(Method::POST, &url, Some(body())).await?
            }
            other => other?,
        };
        let added: Added = serde_json::from_slice(&added).map_err(|e| self.malformed("secrets.addVersion", &e))?;
        Ok(VersionId::new(added.name.rsplit('/').next().unwrap_or_default()))
    }

    async fn update(&self, id: &SecretId, base: &SecretMeta, update: &SecretUpdate) -> Result<Etag, StoreError> {
        // Google replaces each masked map whole: send the full result, and mask only what
        // changes, so an alias move cannot clobber annotations and the reverse.
        let mut body = serde_json::Map::new();
        let mut mask = Vec::new();
        if update.touches_aliases() {
            let mut aliases = base.aliases.clone();
            update.aliases.apply(&mut aliases);
            let aliases: BTreeMap<&str, &str> = aliases.iter().map(|(a, v)| (a.as_str(), v.as_str())).collect();
            body.insert("versionAliases".into(), json!(aliases));
            mask.push("versionAliases");
        }
        if update.touches_annotations() {
            let mut annotations = base.annotations.clone();
            update.apply_annotations(&mut annotations);
            body.insert("annotations".into(), json!(annotations));
            mask.push("annotations");
        }
        if mask.is_empty() {
            return Ok(base.etag.clone());
        }
        body.insert("etag".into(), json!(base.etag.0));
        let url = format!("{}?updateMask={}", self.secret_url(id)?, mask.join(","));
        let body = Zeroizing::new(serde_json::to_vec(&body).expect("json"));
        match self.call(Method::PATCH, &url, Some(body)).await {
            Ok(body) => {
                let resource: SecretResource =
                    serde_json::from_slice(&body).map_err(|e| self.malformed("secrets.patch", &e))?;
                Ok(Etag(resource.etag))
            }
            Err(StoreError::Api { status, .. }) if status == "FAILED_PRECONDITION" => {
                Err(StoreError::Conflict { id: id.clone(), expected: base.etag.clone() })
            }
            Err(e) => Err(self.not_found(e, id)),
        }
    }

    async fn version_info(&self, id: &SecretId, version: &VersionId) -> Result<VersionInfo, StoreError> {
        let url = self.version_url(id, &Selector::Id(version.clone()))?;
        let body = self.call(Method::GET, &url, None).await.map_err(|e| self.not_found(e, id))?;
        let resource: VersionResource =
            serde_json::from_slice(&body).map_err(|e| self.malformed("versions.get", &e))?;
        Ok(resource.info())
    }

    async fn versions(&self, id: &SecretId) -> Result<Vec<VersionInfo>, StoreError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Page {
            #[serde(default)]
            versions: Vec<VersionResource>,
            next_page_token: Option<String>,
        }
        let mut all = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut url = format!("{}/versions?pageSize=250", self.secret_url(id)?);
            if let Some(token) = &token {
                url.push_str("&pageToken=");
                url.push_str(&percent_encode(token));
            }
            let body = self.call(Method::GET, &url, None).await.map_err(|e| self.not_found(e, id))?;
            let page: Page = serde_json::from_slice(&body).map_err(|e| self.malformed("versions.list", &e))?;
            all.extend(page.versions.into_iter().map(VersionResource::info));
            match page.next_page_token.filter(|t| !t.is_empty()) {
                Some(next) => token = Some(next),
                None => return Ok(all),
            }
        }
    }

    /// `secrets.list`, every page: the last path segment of each name.
    async fn list(&self) -> Result<Vec<SecretId>, StoreError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Page {
            #[serde(default)]
            secrets: Vec<Named>,
            next_page_token: Option<String>,
        }
        #[derive(Deserialize)]
        struct Named {
            name: String,
        }
        let mut all = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut url = format!("{}/secrets?pageSize=250", self.parent_url);
            if let Some(token) = &token {
                url.push_str("&pageToken=");
                url.push_str(&percent_encode(token));
            }
            let body = self.call(Method::GET, &url, None).await?;
            let page: Page = serde_json::from_slice(&body).map_err(|e| self.malformed("secrets.list", &e))?;
            all.extend(page.secrets.into_iter().map(|s| SecretId::new(s.name.rsplit('/').next().unwrap_or_default())));
            match page.next_page_token.filter(|t| !t.is_empty()) {
                Some(next) => token = Some(next),
                None => return Ok(all),
            }
        }
    }

    async fn disable(&self, id: &SecretId, version: &VersionId) -> Result<(), StoreError> {
        self.transition(id, version, "disable").await
    }

    async fn destroy(&self, id: &SecretId, version: &VersionId) -> Result<(), StoreError> {
        self.transition(id, version, "destroy").await
    }
    /// Google's clock as measured from its answers' `Date`; unmeasured until one arrives.
    fn clock(&self) -> StoreClock {
        match self.server_time.skew() {
            Some(skew) => StoreClock::Measured { skew },
            None => StoreClock::Unmeasured,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(location: Option<&str>, endpoint: Option<&str>) -> GcpStoreConfig {
        GcpStoreConfig {
            project: "acme-edge".into(),
            location: location.map(String::from),
            endpoint: endpoint.map(String::from),
            credentials: None,
            request_timeout: Duration::from_secs(30),
            token_timeout: Duration::from_secs(10),
            retry_backoff: Duration::from_secs(2),
        }
    }

    #[test]
    fn endpoints_and_resource_names() {
        let global = GcpStore::new("edge", &config(None, None), &OpenContext::default()).unwrap();
        assert_eq!(global.parent_url, "https://secretmanager.googleapis.com/v1/projects/acme-edge");
        let regional = GcpStore::new("edge", &config(Some("europe-west3"), None), &OpenContext::default()).unwrap();
        assert_eq!(
            regional.version_url(&SecretId::new("api-key"), &Selector::current()).unwrap(),
            "https://secretmanager.europe-west3.rep.googleapis.com/v1/projects/acme-edge/locations/europe-west3/secrets/api-key/versions/current"
        );
        let local = GcpStore::new("edge", &config(Some("us"), Some("http://127.0.0.1:8085/")), &OpenContext::default()).unwrap();
        assert_eq!(local.parent_url, "http://127.0.0.1:8085/v1/projects/acme-edge/locations/us");
        assert!(global.version_url(&SecretId::new("x"), &Selector::Alias("a/b".into())).is_err());
        assert!(global.secret_url(&SecretId::new("../x")).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Whatever Google (or something in its place) answers, the parsers return a value or
        /// an error: no panic, no value larger than a secret may be, no error longer than a
        /// quote.
        #[test]
        fn any_response_body_parses_or_is_refused(
            raw in proptest::prelude::any::<Vec<u8>>(),
            data in "[A-Za-z0-9+/=]{0,200}",
            crc in proptest::prelude::any::<u64>(),
            name in "[a-z/0-9]{0,40}",
        ) {
            let store = GcpStore::new("edge", &config(None, None), &OpenContext::default()).unwrap();
            let id = SecretId::new("db");
            let shaped = format!(r#"{{"name":"{name}","payload":{{"data":"{data}","dataCrc32c":"{crc}"}}}}"#);
            for body in [raw.as_slice(), shaped.as_bytes()] {
                if let Ok(version) = store.decode_access(&id, body) {
                    proptest::prop_assert!(!version.value.is_empty() && version.value.len() <= super::super::MAX_VALUE_BYTES);
                }
                let _ = serde_json::from_slice::<SecretResource>(body).map(SecretResource::meta);
                let _ = serde_json::from_slice::<VersionResource>(body).map(VersionResource::info);
                for status in [400, 403, 404, 429, 500, 503] {
                    let error = store.api_error(StatusCode::from_u16(status).unwrap(), body).to_string();
                    proptest::prop_assert!(error.chars().count() <= MAX_QUOTED + 200, "{error}");
                }
            }
        }
    }

    #[test]
    fn an_oversized_payload_is_refused_before_it_is_decoded() {
        let store = GcpStore::new("edge", &config(None, None), &OpenContext::default()).unwrap();
        let data = "A".repeat(super::super::MAX_VALUE_BYTES * 2);
        let body = format!(r#"{{"name":"projects/1/secrets/db/versions/3","payload":{{"data":"{data}"}}}}"#);
        let err = store.decode_access(&SecretId::new("db"), body.as_bytes()).unwrap_err();
        assert!(matches!(err, StoreError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn versions_are_read_from_messages() {
        assert_eq!(version_in("Secret Version [projects/1/secrets/x/versions/4] is in DISABLED state."), Some("4"));
        assert_eq!(version_in("Secret [projects/1/secrets/x] not found or has no versions."), None);
    }

    /// A service-account key on a node two hours ahead or behind: Google's window refuses the
    /// token request, the refusal's Date measures the skew, and the error names the clock and
    /// its fix, with no word about credentials. A key Google does not know, on a clock that is
    /// only a little off, still gets the credentials advice.
    #[tokio::test]
    async fn a_refused_token_request_names_the_clock_when_the_clock_is_off() {
        use crate::clock::TokioClock;
        let emu = gcp_emulator::Emulator::builder().project_id("acme-edge").start().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let key = emu.service_account_key("puller@acme-edge.iam.gserviceaccount.com", gcp_emulator::Role::Accessor);
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::io::Write::write_all(&mut std::fs::File::create(&path).unwrap(), text.as_bytes()).unwrap();
            path
        };
        let known = write("key.json", &key);
        let unknown = write("stranger.json", &key.replace("puller@", "stranger@"));
        let store = |credentials: &std::path::Path, node: std::time::SystemTime| {
            let context = OpenContext {
                clock: Arc::new(TokioClock::starting_at(node)),
                max_clock_skew: Duration::from_secs(120),
            };
            let config = GcpStoreConfig {
                endpoint: Some(emu.base_url()),
                credentials: Some(credentials.to_path_buf()),
                ..config(None, None)
            };
            GcpStore::new("edge", &config, &context).unwrap()
        };
        let now = crate::clock::Clock::now(&crate::clock::SystemClock);
        let hours = Duration::from_secs(7200);
        for (node, words) in [(now + hours, "2h ahead of Google's"), (now - hours, "2h behind Google's")] {
            let store = store(&known, node);
            assert_eq!(store.clock(), StoreClock::Unmeasured);
            let error = store.access(&SecretId::new("db"), &Selector::current()).await.unwrap_err();
            let text = error.to_string();
            assert!(matches!(error, StoreError::Clock { .. }), "{text}");
            assert!(text.contains("token request failed") && text.contains("invalid_grant: Invalid JWT"), "{text}");
            assert!(text.contains(&format!("this node's clock is {words}")) && text.contains("chrony"), "{text}");
            assert!(!text.contains("credentials (") && !text.contains("GOOGLE_APPLICATION_CREDENTIALS"), "{text}");
            let skew = store.clock().skew().unwrap();
            assert!((skew.abs() - 7200.0).abs() < 2.0, "{skew}");
        }
        let stranger = store(&unknown, now + Duration::from_secs(30));
        let text = stranger.access(&SecretId::new("db"), &Selector::current()).await.unwrap_err().to_string();
        assert!(text.contains("account not found") && text.contains("check the node's credentials"), "{text}");
        emu.shutdown().await;
    }

    #[test]
    fn error_envelopes_become_errors_that_say_what_to_do() {
        let store = GcpStore::new("edge", &config(None, None), &OpenContext::default()).unwrap();
        let denied = br#"{"error":{"code":403,"message":"Permission 'secretmanager.versions.access' denied for resource 'projects/acme-edge/secrets/db/versions/current' (or it may not exist).","status":"PERMISSION_DENIED","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"IAM_PERMISSION_DENIED","domain":"iam.googleapis.com","metadata":{"permission":"secretmanager.versions.access"}}]}}"#;
        let error = store.api_error(StatusCode::FORBIDDEN, denied);
        let text = error.to_string();
        assert!(
            text.contains("secretmanager.versions.access") && text.contains("roles/secretmanager.secretAccessor"),
            "{text}"
        );
        let quota = br#"{"error":{"code":429,"message":"Quota exceeded for quota metric 'Access requests'","status":"RESOURCE_EXHAUSTED"}}"#;
        assert!(matches!(store.api_error(StatusCode::TOO_MANY_REQUESTS, quota), StoreError::Quota { .. }));
        assert!(store.api_error(StatusCode::TOO_MANY_REQUESTS, quota).is_transient());
        let html = b"<html>bad gateway</html>";
        assert!(matches!(store.api_error(StatusCode::BAD_GATEWAY, html), StoreError::Unavailable { .. }));
    }
}
