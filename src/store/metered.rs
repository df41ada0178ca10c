//! A store wrapped to count its requests: `keyturn_store_requests_total{store, method, result}`.
//! Metrics are added here, around the store, not in the code that uses it.

use std::sync::Arc;

use super::{Etag, SecretMeta, SecretStore, SecretUpdate, Selector, StoreClock, StoreError, Version, VersionInfo};
use crate::report::metrics::{Metrics, StoreRequest};
use crate::secret::{SecretBytes, SecretId, VersionId};

#[derive(Debug)]
pub struct Metered<S> {
    inner: S,
    store: String,
    metrics: Arc<Metrics>,
}

impl<S> Metered<S> {
    pub fn new(store: &str, inner: S, metrics: Arc<Metrics>) -> Self {
        Metered { inner, store: store.to_string(), metrics }
    }

    fn count<T>(&self, method: &'static str, result: Result<T, StoreError>) -> Result<T, StoreError> {
        let outcome = if result.is_ok() { "ok" } else { "error" };
        self.metrics
            .store_requests
            .get_or_create(&StoreRequest { store: self.store.clone(), method, result: outcome })
            .inc();
        result
    }
}

impl<S: SecretStore> SecretStore for Metered<S> {
    async fn access(&self, id: &SecretId, selector: &Selector) -> Result<Version, StoreError> {
        self.count("access", self.inner.access(id, selector).await)
    }

    async fn describe(&self, id: &SecretId) -> Result<SecretMeta, StoreError> {
        self.count("describe", self.inner.describe(id).await)
    }

    async fn create(&self, id: &SecretId) -> Result<(), StoreError> {
        self.count("create", self.inner.create(id).await)
    }

    async fn add_version(&self, id: &SecretId, value: &SecretBytes) -> Result<VersionId, StoreError> {
        self.count("add_version", self.inner.add_version(id, value).await)
    }

    async fn update(&self, id: &SecretId, base: &SecretMeta, update: &SecretUpdate) -> Result<Etag, StoreError> {
        self.count("update", self.inner.update(id, base, update).await)
    }

    async fn version_info(&self, id: &SecretId, version: &VersionId) -> Result<VersionInfo, StoreError> {
        self.count("version_info", self.inner.version_info(id, version).await)
    }

    async fn versions(&self, id: &SecretId) -> Result<Vec<VersionInfo>, StoreError> {
        self.count("versions", self.inner.versions(id).await)
    }

    async fn list(&self) -> Result<Vec<SecretId>, StoreError> {
        self.count("list", self.inner.list().await)
    }

    async fn disable(&self, id: &SecretId, version: &VersionId) -> Result<(), StoreError> {
        self.count("disable", self.inner.disable(id, version).await)
    }

    async fn destroy(&self, id: &SecretId, version: &VersionId) -> Result<(), StoreError> {
        self.count("destroy", self.inner.destroy(id, version).await)
    }

    fn clock(&self) -> StoreClock {
        self.inner.clock()
    }
}
