//! What a backend is to the rest of keyturn, and the `stores!` macro that registers them.
//!
//! A backend is one file (or folder) under `store/`: a type that implements [`SecretStore`]
//! and [`Backend`], which owns its settings (`[stores.NAME]` with `kind = "..."`) and their
//! validation, its construction, its secret-naming rules, and what `keyturn probe` measures
//! of it. Registering it is one line in the `stores!` list in `store/mod.rs`, which makes
//! [`StoreConfig`](super::StoreConfig) and [`AnyStore`](super::AnyStore) with every variant and
//! their dispatch; nothing else names a backend.

use std::fmt;
use std::future::Future;

use super::{SecretStore, StoreError};
use crate::clock::SharedClock;
use crate::config::Section;
use crate::secret::SecretId;

/// One kind of secret store.
pub trait Backend: SecretStore + Sized + fmt::Debug + 'static {
    /// Its name in `kind = "..."`.
    const KIND: &'static str;
    /// Its validated settings.
    type Config: Clone + PartialEq + fmt::Debug + Send + Sync;

    /// Checks the settings of one `[stores.NAME]` (without `kind`).
    fn configure(section: &mut Section<'_, '_>) -> Option<Self::Config>;

    /// A client for the store named `name`. Cheap: network and credentials are touched at the
    /// first request, so that an unreachable store never stops the agent from starting.
    fn open(
        name: &str,
        config: &Self::Config,
        context: &OpenContext,
    ) -> impl Future<Output = Result<Self, StoreError>> + Send;

    /// Whether `id` is a secret name this backend accepts; the error says what would be.
    fn check_secret_id(id: &str) -> Result<(), String>;

    /// What `keyturn probe` measures: a label and settings per endpoint, the configured one
    /// first, then one per `--location`. Only a backend with regional endpoints (Google's)
    /// overrides this and takes locations.
    fn probe_endpoints(config: &Self::Config, locations: &[String]) -> Result<Vec<(String, Self::Config)>, String> {
        if locations.is_empty() {
            Ok(vec![("local".to_string(), config.clone())])
        } else {
            Err(format!(
                "--location applies to Google Secret Manager stores only; a {} store has one endpoint",
                Self::KIND
            ))
        }
    }

    /// Checks what the settings name on this machine (a credentials file, a seed file), for
    /// `keyturn validate` on the node: each problem as the setting's name and what is wrong.
    /// No network.
    fn preflight(config: &Self::Config) -> Vec<(&'static str, String)> {
        let _ = config;
        Vec::new()
    }

    /// Finds credentials and gets ready to make requests, for `keyturn probe` to time; `None`
    /// when the backend has no such step.
    fn authenticate(&self) -> impl Future<Output = Option<Result<(), StoreError>>> + Send {
        async { None }
    }
}

/// What every backend is opened with.
#[derive(Debug, Clone)]
pub struct OpenContext {
    /// The node's clock: the time of record for what a local store writes (a version's
    /// creation time, say), and what a remote store's clock is measured against.
    pub clock: SharedClock,
    /// `[agent] max_clock_skew`: a refusal while the store's clock is measured further off than
    /// this names the clock, not the credentials.
    pub max_clock_skew: std::time::Duration,
}

impl Default for OpenContext {
    fn default() -> Self {
        OpenContext { clock: crate::clock::system(), max_clock_skew: crate::config::DEFAULT_MAX_CLOCK_SKEW }
    }
}

/// Whether `path` is a file this process can read; the error says what is wrong with it.
pub fn readable_file(path: &std::path::Path) -> Result<(), String> {
    match std::fs::File::open(path).and_then(|file| file.metadata()) {
        Ok(metadata) if metadata.is_file() => Ok(()),
        Ok(_) => Err(format!("{} is not a regular file", path.display())),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Checks a secret id against a backend's rules and makes it a [`SecretId`].
pub fn secret_id<B: Backend>(id: &str) -> Result<SecretId, String> {
    B::check_secret_id(id).map(|()| SecretId::new(id))
}

/// Declares the backends: one line each, `Variant => module::Type`. Makes the modules,
/// [`StoreConfig`](super::StoreConfig), [`AnyStore`](super::AnyStore), their dispatch, and
/// `KINDS`.
macro_rules! stores {
    ($($(#[$meta:meta])* $variant:ident => $module:ident :: $backend:ident),* $(,)?) => {
        $($(#[$meta])* pub mod $module;)*

        /// One `[stores.NAME]` section's settings. One variant per backend.
        #[derive(Debug, Clone, PartialEq)]
        pub enum StoreConfig {
            $($(#[$meta])* $variant(<$module::$backend as registry::Backend>::Config),)*
        }

        /// Every backend this build knows, as one type the engine can be instantiated with.
        #[derive(Debug)]
        pub enum AnyStore {
            $($(#[$meta])* $variant($module::$backend),)*
        }

        /// Every backend's `kind`, in registration order.
        pub const KINDS: &[&str] = &[$($(#[$meta])* <$module::$backend as registry::Backend>::KIND),*];

        impl StoreConfig {
            pub fn kind(&self) -> &'static str {
                match self {
                    $($(#[$meta])* StoreConfig::$variant(_) => <$module::$backend as registry::Backend>::KIND,)*
                }
            }

            /// The settings of a `kind = KIND` section; `None` when no backend has that kind,
            /// `Some(None)` when its settings are wrong (the section has the problems).
            pub fn configure(kind: &str, section: &mut crate::config::Section<'_, '_>) -> Option<Option<StoreConfig>> {
                match kind {
                    $($(#[$meta])* <$module::$backend as registry::Backend>::KIND => {
                        Some(<$module::$backend as registry::Backend>::configure(section).map(StoreConfig::$variant))
                    })*
                    _ => None,
                }
            }

            /// `id` as a secret of this store, if its backend accepts the name.
            pub fn check_secret_id(&self, id: &str) -> Result<SecretId, String> {
                match self {
                    $($(#[$meta])* StoreConfig::$variant(_) => registry::secret_id::<$module::$backend>(id),)*
                }
            }

            /// `id` as a secret of a store of `kind` (any kind when `None`: the id must suit
            /// one). An unknown kind accepts nothing.
            pub fn check_secret_id_of(kind: Option<&str>, id: &str) -> Result<SecretId, String> {
                let mut first_error = None;
                $(
                    $(#[$meta])*
                    if kind.is_none_or(|k| k == <$module::$backend as registry::Backend>::KIND) {
                        match registry::secret_id::<$module::$backend>(id) {
                            Ok(id) => return Ok(id),
                            Err(e) => { first_error.get_or_insert(e); }
                        }
                    }
                )*
                Err(first_error.unwrap_or_else(|| {
                    format!("unknown store kind \"{}\"; expected one of {}", kind.unwrap_or(""), KINDS.join(", "))
                }))
            }

            /// See [`registry::Backend::preflight`].
            pub fn preflight(&self) -> Vec<(&'static str, String)> {
                match self {
                    $($(#[$meta])* StoreConfig::$variant(config) => <$module::$backend as registry::Backend>::preflight(config),)*
                }
            }

            /// The endpoints `keyturn probe` measures, each as a label and settings.
            pub fn probe_endpoints(&self, locations: &[String]) -> Result<Vec<(String, StoreConfig)>, String> {
                match self {
                    $($(#[$meta])* StoreConfig::$variant(config) => Ok(
                        <$module::$backend as registry::Backend>::probe_endpoints(config, locations)?
                            .into_iter()
                            .map(|(label, config)| (label, StoreConfig::$variant(config)))
                            .collect()
                    ),)*
                }
            }
        }

        impl AnyStore {
            /// Opens the store named `name` with its settings.
            pub async fn open(name: &str, config: &StoreConfig, context: &OpenContext) -> Result<AnyStore, StoreError> {
                match config {
                    $($(#[$meta])* StoreConfig::$variant(config) => {
                        <$module::$backend as registry::Backend>::open(name, config, context).await.map(AnyStore::$variant)
                    })*
                }
            }

            /// See [`registry::Backend::authenticate`].
            pub async fn authenticate(&self) -> Option<Result<(), StoreError>> {
                match self {
                    $($(#[$meta])* AnyStore::$variant(store) => registry::Backend::authenticate(store).await,)*
                }
            }
        }

        impl SecretStore for AnyStore {
            async fn access(&self, id: &SecretId, selector: &Selector) -> Result<Version, StoreError> {
                match self { $($(#[$meta])* AnyStore::$variant(store) => store.access(id, selector).await,)* }
            }

            async fn describe(&self, id: &SecretId) -> Result<SecretMeta, StoreError> {
                match self { $($(#[$meta])* AnyStore::$variant(store) => store.describe(id).await,)* }
            }

            async fn create(&self, id: &SecretId) -> Result<(), StoreError> {
                match self { $($(#[$meta])* AnyStore::$variant(store) => store.create(id).await,)* }
            }

            async fn add_version(&self, id: &SecretId, value: &SecretBytes) -> Result<VersionId, StoreError> {
                match self { $($(#[$meta])* AnyStore::$variant(store) => store.add_version(id, value).await,)* }
            }

            async fn update(&self, id: &SecretId, base: &SecretMeta, update: &SecretUpdate) -> Result<Etag, StoreError> {
                match self { $($(#[$meta])* AnyStore::$variant(store) => store.update(id, base, update).await,)* }
            }

            async fn version_info(&self, id: &SecretId, version: &VersionId) -> Result<VersionInfo, StoreError> {
                match self { $($(#[$meta])* AnyStore::$variant(store) => store.version_info(id, version).await,)* }
            }

            async fn versions(&self, id: &SecretId) -> Result<Vec<VersionInfo>, StoreError> {
                match self { $($(#[$meta])* AnyStore::$variant(store) => store.versions(id).await,)* }
            }

            async fn list(&self) -> Result<Vec<SecretId>, StoreError> {
                match self { $($(#[$meta])* AnyStore::$variant(store) => store.list().await,)* }
            }

            async fn disable(&self, id: &SecretId, version: &VersionId) -> Result<(), StoreError> {
                match self { $($(#[$meta])* AnyStore::$variant(store) => store.disable(id, version).await,)* }
            }

            async fn destroy(&self, id: &SecretId, version: &VersionId) -> Result<(), StoreError> {
                match self { $($(#[$meta])* AnyStore::$variant(store) => store.destroy(id, version).await,)* }
            }

            fn clock(&self) -> StoreClock {
                match self { $($(#[$meta])* AnyStore::$variant(store) => store.clock(),)* }
            }
        }
    };
}

pub(crate) use stores;
