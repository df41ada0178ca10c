//! The public handle: build, start, inspect, drive and stop an emulator.
//!
//! An [`Emulator`] owns one server task bound to `127.0.0.1`. Dropping it (or calling
//! [`Emulator::shutdown`]) stops the server and every open connection; nothing outlives its
//! owner. All inspection and fault methods are synchronous — they touch shared state, never
//! the network — so the blocking wrapper can offer the same methods.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::auth::{Identities, Role};
use crate::clock::Clock;
use crate::counts::{Counters, RequestCounts};
use crate::faults::{Faults, QuotaKind};
use crate::oidc::{SigningAlgorithm, TestIssuer};
use crate::server::serve;
use crate::service::App;
use crate::store::Store;

/// Why an emulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("binding 127.0.0.1:{port}")]
    Bind {
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("reading the bound address")]
    LocalAddr(#[source] std::io::Error),
    #[error("project id {0:?} is not valid: it must be non-empty and not all digits (that is a project number)")]
    ProjectId(String),
    #[error("starting the blocking emulator's runtime")]
    Runtime(#[source] std::io::Error),
}

/// Configuration of an emulator; see [`Emulator::builder`].
#[derive(Debug, Clone)]
pub struct EmulatorBuilder {
    project_id: String,
    project_number: u64,
    allow_anonymous: bool,
    port: u16,
    quotas: [Option<u32>; 3],
}

impl Default for EmulatorBuilder {
    fn default() -> Self {
        EmulatorBuilder {
            project_id: "emulator-project".to_owned(),
            project_number: 123_456_789_012,
            allow_anonymous: false,
            port: 0,
            quotas: [None; 3],
        }
    }
}

impl EmulatorBuilder {
    /// The project ID accepted in request paths (besides the number).
    pub fn project_id(mut self, project_id: impl Into<String>) -> Self {
        self.project_id = project_id.into();
        self
    }

    /// The project number: accepted in paths and used in every returned name and message.
    pub fn project_number(mut self, project_number: u64) -> Self {
        self.project_number = project_number;
        self
    }

    /// Lets requests without credentials through as an admin (for benchmarks). Requests that
    /// do carry a token are still checked. Default: false.
    pub fn allow_anonymous(mut self, allow: bool) -> Self {
        self.allow_anonymous = allow;
        self
    }

    /// The port to bind on 127.0.0.1. Default 0: any free port.
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Enforces a per-minute quota of `kind` (off by default). [`Faults::clear`] and reset
    /// return to these values.
    pub fn quota(mut self, kind: QuotaKind, per_minute: u32) -> Self {
        self.quotas[kind as usize] = Some(per_minute);
        self
    }

    /// Enforces Google's published quotas: 90,000 access, 600 read, 600 write per minute.
    pub fn google_quotas(mut self) -> Self {
        for kind in QuotaKind::ALL {
            self.quotas[kind as usize] = Some(kind.google_limit());
        }
        self
    }

    /// Binds `127.0.0.1:port` and starts serving on the current tokio runtime.
    pub async fn start(self) -> Result<Emulator, StartError> {
        if self.project_id.is_empty() || self.project_id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(StartError::ProjectId(self.project_id));
        }
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, self.port))
            .await
            .map_err(|source| StartError::Bind { port: self.port, source })?;
        let address = listener.local_addr().map_err(StartError::LocalAddr)?;
        let app = Arc::new(App {
            project_id: self.project_id,
            project_number: self.project_number,
            base_url: format!("http://{address}"),
            allow_anonymous: self.allow_anonymous,
            clock: Clock::default(),
            store: Mutex::new(Store::new(self.project_number)),
            identities: Mutex::new(Identities::default()),
            issuer: TestIssuer::default(),
            faults: Faults::with_quotas(self.quotas),
            counters: Counters::default(),
        });
        let (stop, stopped) = watch::channel(false);
        let server = tokio::spawn(serve(listener, app.clone(), stopped));
        Ok(Emulator { app, address, stop, server: Some(server) })
    }
}

/// What [`Emulator::subject_token`] mints: by default a token of the test issuer for the
/// workload pool's provider, RS256, valid for an hour from the emulator's now.
#[derive(Debug, Clone)]
pub struct SubjectToken {
    /// `sub`: the workload's identity (`system:serviceaccount:NS:NAME`, `repo:ORG/REPO:…`).
    pub subject: String,
    /// `aud`; default [`Emulator::workload_identity_audience`].
    pub audience: Option<String>,
    /// `iss`; default [`Emulator::oidc_issuer`].
    pub issuer: Option<String>,
    /// From `iat` to `exp`.
    pub lifetime: Duration,
    /// How long before the emulator's now `iat` lies (an expired token: more than `lifetime`).
    pub issued_ago: Duration,
    pub algorithm: SigningAlgorithm,
    /// Replaces the header's `kid`.
    pub key_id: Option<String>,
    /// Signed by a key the issuer does not publish.
    pub foreign_key: bool,
}

impl SubjectToken {
    pub fn new(subject: impl Into<String>) -> Self {
        SubjectToken {
            subject: subject.into(),
            audience: None,
            issuer: None,
            lifetime: Duration::from_secs(3600),
            issued_ago: Duration::ZERO,
            algorithm: SigningAlgorithm::Rs256,
            key_id: None,
            foreign_key: false,
        }
    }
}

/// A running Secret Manager emulator. Stops on drop.
#[derive(Debug)]
pub struct Emulator {
    app: Arc<App>,
    address: SocketAddr,
    stop: watch::Sender<bool>,
    server: Option<JoinHandle<()>>,
}

impl Emulator {
    pub fn builder() -> EmulatorBuilder {
        EmulatorBuilder::default()
    }

    /// `http://127.0.0.1:PORT`: the Secret Manager REST root (`/v1/…`), for global and
    /// regional paths alike.
    pub fn base_url(&self) -> String {
        self.app.base_url.clone()
    }

    /// `http://127.0.0.1:PORT/token`, the OAuth token endpoint written into key files.
    pub fn token_uri(&self) -> String {
        self.app.token_uri()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }

    pub fn project_id(&self) -> &str {
        &self.app.project_id
    }

    pub fn project_number(&self) -> u64 {
        self.app.project_number
    }

    /// A new service-account JSON key file for `email` (RSA 2048, PKCS#8 PEM, `token_uri`
    /// pointing here). The emulator keeps the public half and grants `role` project-wide;
    /// calling again for the same email adds a key and replaces the role.
    ///
    /// # Panics
    /// If aws-lc fails to generate an RSA key, which leaves nothing sensible to return.
    pub fn service_account_key(&self, email: &str, role: Role) -> String {
        self.app.create_service_account_key(email, role).expect("aws-lc-rs RSA-2048 key generation")
    }

    /// A valid access token for `email` with `role`, skipping the JWT exchange — for tests
    /// that call the REST API directly.
    ///
    /// # Panics
    /// If the system random generator fails.
    pub fn access_token(&self, email: &str, role: Role) -> String {
        let now = self.app.clock.now();
        self.app.lock_identities().issue_token_directly(email, role, now).expect("system random generator")
    }

    /// `http://127.0.0.1:PORT/v1/token`: the Security Token Service's exchange, the `token_url`
    /// of an external-account configuration.
    pub fn sts_uri(&self) -> String {
        self.app.sts_uri()
    }

    /// `http://127.0.0.1:PORT/oidc`: the test OIDC issuer (`iss` of its tokens), which serves
    /// `/.well-known/openid-configuration` and `/jwks` under it.
    pub fn oidc_issuer(&self) -> String {
        self.app.issuer_url()
    }

    /// The workload identity pool's provider, as STS takes it in `audience` and as subject
    /// tokens carry it in `aud`:
    /// `//iam.googleapis.com/projects/NUMBER/locations/global/workloadIdentityPools/emulator-pool/providers/emulator-oidc`.
    pub fn workload_identity_audience(&self) -> String {
        crate::federation::workload_audience(self.app.project_number)
    }

    /// The workforce pool's provider (`//iam.googleapis.com/locations/global/workforcePools/…`).
    pub fn workforce_audience(&self) -> String {
        crate::federation::workforce_audience()
    }

    /// The IAM member a subject of the workload pool acts as:
    /// `principal://iam.googleapis.com/projects/NUMBER/locations/global/workloadIdentityPools/emulator-pool/subject/SUBJECT`.
    pub fn workload_principal(&self, subject: &str) -> String {
        crate::federation::workload_principal(self.app.project_number, subject)
    }

    /// `http://127.0.0.1:PORT/v1/projects/-/serviceAccounts/ACCOUNT:generateAccessToken`.
    pub fn impersonation_url(&self, account: &str) -> String {
        self.app.impersonation_url(account)
    }

    /// Grants the workload pool's `subject` `role` project-wide, so its federated tokens call
    /// Secret Manager directly. (A principal of the workforce pool is granted with
    /// [`Emulator::grant_principal`].)
    pub fn grant_federated(&self, subject: &str, role: Role) {
        self.grant_principal(&self.workload_principal(subject), role);
    }

    /// Grants any IAM member (`principal://…`, or a service account's email) `role`.
    pub fn grant_principal(&self, principal: &str, role: Role) {
        self.app.lock_identities().grant(principal, role);
    }

    /// Lets the workload pool's `subject` impersonate the service account `account` (Workload
    /// Identity User on it), and grants `account` `role`.
    pub fn allow_impersonation(&self, subject: &str, account: &str, role: Role) {
        let principal = self.workload_principal(subject);
        self.app.lock_identities().allow_impersonation(&principal, account, role);
    }

    /// A subject token signed by the test issuer.
    ///
    /// # Panics
    /// If aws-lc fails to make or use the issuer's keys.
    pub fn subject_token(&self, spec: &SubjectToken) -> String {
        let audience = spec.audience.clone().unwrap_or_else(|| self.workload_identity_audience());
        let issuer = spec.issuer.clone().unwrap_or_else(|| self.oidc_issuer());
        let claims = crate::federation::subject_claims(
            &issuer,
            &spec.subject,
            &audience,
            self.app.clock.now(),
            spec.issued_ago,
            spec.lifetime,
        );
        self.app
            .issuer
            .mint(&claims, spec.algorithm, spec.key_id.as_deref(), spec.foreign_key)
            .expect("test issuer keys")
    }

    /// A working external-account credential configuration (Google's `"type":
    /// "external_account"` JSON) whose subject token is read from `subject_token_file`, for the
    /// workload pool; with `impersonate`, through that service account.
    pub fn external_account_config(&self, subject_token_file: &std::path::Path, impersonate: Option<&str>) -> String {
        let mut config = serde_json::json!({
            "type": "external_account",
            "audience": self.workload_identity_audience(),
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "token_url": self.sts_uri(),
            "credential_source": {
                "file": subject_token_file,
                "format": { "type": "text" },
            },
            "universe_domain": "googleapis.com",
        });
        if let Some(account) = impersonate {
            config["service_account_impersonation_url"] = self.impersonation_url(account).into();
            config["service_account_impersonation"] = serde_json::json!({ "token_lifetime_seconds": 3600 });
        }
        serde_json::to_string_pretty(&config).unwrap_or_default()
    }

    /// Every access token the emulator has issued and not forgotten (a reset forgets them):
    /// for tests that prove no token reaches a log.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.app.lock_identities().issued_tokens()
    }

    /// The fault-injection handle. Clones drive the same emulator.
    pub fn faults(&self) -> Faults {
        self.app.faults.clone()
    }

    pub fn request_counts(&self) -> RequestCounts {
        self.app.counters.snapshot()
    }

    /// Moves the emulator's clock forward: tokens expire, scheduled destructions and
    /// expirations happen, quota windows roll — without sleeping.
    pub fn advance_clock(&self, by: Duration) {
        self.app.clock.advance(by);
    }

    /// Clears secrets, faults (back to the built quotas), request counts and tokens. Service
    /// accounts and their keys stay valid.
    pub fn reset(&self) {
        self.app.reset();
    }

    /// Stops accepting, closes every connection, and waits until the listener is closed.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(server) = self.server.take() {
            // Aborting drops the listener and the JoinSet of connections with it.
            server.abort();
        }
    }
}
