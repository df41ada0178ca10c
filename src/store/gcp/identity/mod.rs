//! Who keyturn is to Google: finding credentials the way Application Default Credentials
//! does, and Workload Identity Federation for the ones `gcp_auth` does not read.
//!
//! # Where credentials are looked for, in order
//!
//! 1. the store's `credentials = "PATH"`;
//! 2. the file `GOOGLE_APPLICATION_CREDENTIALS` names;
//! 3. gcloud's `$HOME/.config/gcloud/application_default_credentials.json`, if it exists;
//! 4. the metadata server of a Google VM or GKE node (then the `gcloud` CLI), through
//!    `gcp_auth::provider`.
//!
//! The first that is set decides; a file that is set but unusable is an error that names it,
//! never a silent fall-through to the next. A file's `type` picks the provider:
//! `service_account` (a key; [`service_account`], which reads the `Date` and the refusal of
//! Google's token endpoint), `external_account` (Workload Identity Federation;
//! [`external_account`]), both plugged into `gcp_auth` through its [`TokenProvider`] trait, and
//! `authorized_user` only in gcloud's own file (`gcp_auth`). Other types are refused with what
//! to use instead.
//!
//! Every answer of Google's that keyturn reads feeds [`server_time::ServerTime`]: Google's
//! clock, by which tokens are kept and against which the node's clock is measured.

pub mod credential_config;
mod exchange;
pub mod external_account;
pub mod server_time;
pub mod service_account;
pub mod subject_token;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gcp_auth::TokenProvider;
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::clock::SharedClock;
use credential_config::ExternalAccountConfig;
use external_account::ExternalAccount;
use server_time::ServerTime;

/// The credentials found, and what to send beside them.
pub struct Identity {
    pub provider: Arc<dyn TokenProvider>,
    /// `x-goog-user-project` for every request, from an external account's `quota_project_id`.
    pub quota_project: Option<String>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").field("quota_project", &self.quota_project).finish_non_exhaustive()
    }
}

/// The environment variables ADC reads, read once (tests pass their own).
#[derive(Debug, Clone, Default)]
pub struct Environment {
    /// `GOOGLE_APPLICATION_CREDENTIALS`.
    pub application_credentials: Option<PathBuf>,
    /// `GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES=1`.
    pub allow_executables: bool,
    /// `HOME`, where gcloud keeps its credentials.
    pub home: Option<PathBuf>,
}

impl Environment {
    pub fn from_process() -> Self {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        Environment {
            application_credentials: var("GOOGLE_APPLICATION_CREDENTIALS").map(PathBuf::from),
            allow_executables: var(subject_token::ALLOW_EXECUTABLES).is_some_and(|v| v == "1"),
            home: var("HOME").map(PathBuf::from),
        }
    }

    fn gcloud_file(&self) -> Option<PathBuf> {
        Some(self.home.as_ref()?.join(".config/gcloud/application_default_credentials.json"))
    }
}

/// What finding credentials needs.
#[derive(Debug)]
pub struct Discovery<'a> {
    /// The store's `credentials`.
    pub configured: Option<&'a Path>,
    pub environment: &'a Environment,
    /// Every request an external account makes (subject-token URL, STS, IAM Credentials).
    pub request_timeout: Duration,
    pub time: Arc<ServerTime>,
    pub clock: SharedClock,
}

/// Finds credentials in ADC's order. The error names what was read and why it is unusable.
pub async fn find(discovery: Discovery<'_>) -> Result<Identity, String> {
    if let Some(path) = discovery.configured {
        return from_file(path, "the store's credentials setting", &discovery).await;
    }
    if let Some(path) = &discovery.environment.application_credentials {
        return from_file(path, "GOOGLE_APPLICATION_CREDENTIALS", &discovery).await;
    }
    if let Some(path) = discovery.environment.gcloud_file().filter(|p| p.exists()) {
        return from_file(&path, "gcloud's application default credentials", &discovery).await;
    }
    match gcp_auth::provider().await {
        Ok(provider) => {
            tracing::debug!(
                kind = "application_default",
                source = "the metadata server or the gcloud CLI (gcp_auth)",
                "credentials"
            );
            Ok(Identity { provider, quota_project: None })
        }
        Err(e) => Err(format!(
            "none found: no credentials setting, GOOGLE_APPLICATION_CREDENTIALS is not set, no gcloud \
             application default credentials, and no metadata server or gcloud CLI answered ({})",
            crate::error_chain(&e)
        )),
    }
}

#[derive(Deserialize)]
struct Kind {
    #[serde(rename = "type")]
    kind: Option<String>,
}

async fn from_file(path: &Path, named_by: &str, discovery: &Discovery<'_>) -> Result<Identity, String> {
    let shown = path.display();
    let bytes =
        Zeroizing::new(std::fs::read(path).map_err(|e| format!("{named_by} names {shown}, which cannot be read: {e}"))?);
    // Only the shape is reported: the file may hold a private key.
    let kind: Kind = serde_json::from_slice(&bytes).map_err(|e| {
        format!("{shown} ({named_by}) is not a JSON credential file: line {} column {}", e.line(), e.column())
    })?;
    match kind.kind.as_deref() {
        Some("service_account") => {
            let text = std::str::from_utf8(&bytes).map_err(|_| format!("{shown} is not UTF-8"))?;
            let provider = service_account::ServiceAccount::new(service_account::Settings {
                origin: path.to_path_buf(),
                key: text,
                request_timeout: discovery.request_timeout,
                time: discovery.time.clone(),
                clock: discovery.clock.clone(),
            })
            .map_err(|e| format!("{shown} ({named_by}): {e}"))?;
            // Who this node is to Google, and from where: never the key.
            tracing::debug!(
                kind = "service_account",
                file = %shown,
                source = named_by,
                principal = provider.email(),
                "credentials"
            );
            Ok(Identity { provider: Arc::new(provider), quota_project: None })
        }
        Some("external_account") => {
            let config = ExternalAccountConfig::parse(&bytes)
                .map_err(|problems| format!("{shown} ({named_by}): an external_account configuration with problems: {problems}"))?;
            let http = crate::http::tls_builder()
                .timeout(discovery.request_timeout)
                .connect_timeout(discovery.request_timeout.min(Duration::from_secs(10)))
                .build()
                .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
            tracing::debug!("credentials: {}", external_account::describe(path, &config));
            let quota_project = config.quota_project_id.clone();
            let provider = ExternalAccount::new(external_account::Settings {
                origin: path.to_path_buf(),
                config,
                http,
                allow_executables: discovery.environment.allow_executables,
                time: discovery.time.clone(),
                clock: discovery.clock.clone(),
            });
            Ok(Identity { provider: Arc::new(provider), quota_project })
        }
        Some("authorized_user") if Some(path) == discovery.environment.gcloud_file().as_deref() => {
            let provider = gcp_auth::ConfigDefaultCredentials::new()
                .await
                .map_err(|e| format!("{shown} ({named_by}): {}", crate::error_chain(&e)))?;
            Ok(Identity { provider: Arc::new(provider), quota_project: None })
        }
        Some("authorized_user") => Err(format!(
            "{shown} ({named_by}) holds user credentials, which keyturn reads only from gcloud's own \
             $HOME/.config/gcloud/application_default_credentials.json; an agent should run as a service \
             account or a federated workload instead"
        )),
        Some(other) => Err(format!(
            "{shown} ({named_by}) has type {other:?}, which keyturn does not support; use a service_account key, \
             an external_account configuration (Workload Identity Federation) or the metadata server"
        )),
        None => Err(format!("{shown} ({named_by}) has no \"type\"; it is not a Google credential file")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn discovery<'a>(environment: &'a Environment, configured: Option<&'a Path>) -> Discovery<'a> {
        Discovery {
            configured,
            environment,
            request_timeout: Duration::from_secs(5),
            time: Arc::new(ServerTime::new(crate::clock::system())),
            clock: crate::clock::system(),
        }
    }

    async fn error(environment: &Environment, configured: Option<&Path>) -> String {
        find(discovery(environment, configured)).await.map(|_| ()).unwrap_err()
    }

    #[tokio::test]
    async fn the_file_that_is_set_decides_and_its_problems_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::File::create(&path).and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes())).unwrap();
            path
        };
        let missing = dir.path().join("none.json");
        let environment = Environment { application_credentials: Some(missing.clone()), ..Environment::default() };
        let text = error(&environment, None).await;
        assert!(text.starts_with("GOOGLE_APPLICATION_CREDENTIALS names") && text.contains("none.json"), "{text}");

        // The store's own setting comes first.
        let odd = write("odd.json", r#"{"type": "impersonated_service_account"}"#);
        let text = error(&environment, Some(&odd)).await;
        assert!(text.contains("the store's credentials setting") && text.contains("does not support"), "{text}");

        let broken = write("broken.json", r#"{"type": "external_account", "audience": "x"}"#);
        let text = error(&environment, Some(&broken)).await;
        assert!(text.contains("subject_token_type is missing") && text.contains("credential_source is missing"), "{text}");

        let key = write("key.json", r#"{"type": "service_account", "private_key": "-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n"}"#);
        let text = error(&environment, Some(&key)).await;
        assert!(text.contains("a service-account key that cannot be used") && !text.contains("c2VjcmV0"), "{text}");

        let user = write("user.json", r#"{"type": "authorized_user"}"#);
        assert!(error(&environment, Some(&user)).await.contains("holds user credentials"));
        let not_json = write("notjson.json", "PRIVATE KEY hunter2");
        let text = error(&environment, Some(&not_json)).await;
        assert!(text.contains("not a JSON credential file: line 1") && !text.contains("hunter2"), "{text}");
    }

    #[tokio::test]
    async fn gclouds_file_is_read_by_its_type() {
        let home = tempfile::tempdir().unwrap();
        let file = home.path().join(".config/gcloud/application_default_credentials.json");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::File::create(&file)
            .and_then(|mut f| std::io::Write::write_all(&mut f, br#"{"type": "external_account"}"#))
            .unwrap();
        let environment = Environment { home: Some(home.path().to_path_buf()), ..Environment::default() };
        let text = error(&environment, None).await;
        assert!(text.contains("gcloud's application default credentials") && text.contains("audience is missing"), "{text}");
    }
}
