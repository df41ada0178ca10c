//! The engine's side of the sealed cache (see [`crate::cache`]): what it delivers from the
//! store it seals, once per change; what the store says is disabled or revoked it purges; and
//! at a sync's start, a required policy whose bundle is missing is rebuilt from its entry.

use tokio::time::Instant;

use super::{Engine, Fetched, Pulled, SyncSummary};
use crate::cache::{Binding, Contents};
use crate::config::Policy;
use crate::error_chain;
use crate::secret::VersionId;
use crate::store::SecretStore;

fn binding(policy: &Policy) -> Binding<'_> {
    Binding { policy: &policy.name, store: &policy.store, secret: policy.secret.as_str() }
}

impl<S: SecretStore + 'static> Engine<S> {
    /// How old `policy`'s entry may be and still be delivered.
    fn max_stale(&self, policy: &Policy) -> std::time::Duration {
        policy.max_stale.unwrap_or(self.config.cache.max_stale)
    }

    /// Rebuilds from the cache every required policy whose bundle is not on disk, if its entry
    /// may be delivered; an entry that may not is logged with why, and nothing from it written.
    pub(super) fn restore_missing(&self) {
        let Some(cache) = self.state.cache() else { return };
        let mut pulled = Vec::new();
        for policy in self.config.policies.iter().filter(|p| p.required) {
            let max_stale = self.max_stale(policy);
            if max_stale.is_zero() {
                continue;
            }
            let missing = {
                let mut writer = self.state.writer();
                policy.bundles().any(|bundle| !writer.manifest(bundle).policies.contains_key(&policy.name))
            };
            if !missing {
                continue;
            }
            match cache.restore(binding(policy), max_stale) {
                Ok(Some(restored)) => {
                    let Contents { version, previous, extras } = restored.contents;
                    pulled.push(Pulled {
                        policy,
                        fetched: Fetched { version, previous, extras, older_than: None },
                        started: Instant::now(),
                        restored: Some(restored.header.sealed_at),
                    });
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(policy = %policy.name, error = %error_chain(&e), "cannot restore from the sealed cache")
                }
            }
        }
        if !pulled.is_empty() {
            self.deliver(pulled, &mut SyncSummary::default());
        }
    }

    /// Seals what `policy`'s bundle was made from, unless its entry already holds it.
    pub(super) fn seal(&self, policy: &Policy, fetched: &Fetched) {
        let Some(cache) = self.state.cache() else { return };
        if self.max_stale(policy).is_zero() {
            return;
        }
        let contents = Contents {
            version: fetched.version.clone(),
            previous: fetched.previous.clone(),
            extras: fetched.extras.iter().map(|(name, v)| (name.clone(), v.clone())).collect(),
        };
        let inputs = contents.inputs();
        // Sealed already, and still there (an operator may have purged it).
        if self.state.sealed().get(&policy.name) == Some(&inputs) && cache.has_entry(&policy.name) {
            return;
        }
        match cache.seal(binding(policy), &contents) {
            Ok(()) => {
                self.state.sealed().insert(policy.name.clone(), inputs);
            }
            Err(e) => {
                tracing::warn!(policy = %policy.name, error = %error_chain(&e), "cannot seal into the cache; the bundle is delivered all the same")
            }
        }
    }

    /// Drops `policy`'s entry if it holds `version`, which the store says may no longer be read.
    pub(super) fn purge_cached(&self, policy: &Policy, version: &VersionId) {
        let Some(cache) = self.state.cache() else { return };
        match cache.purge_version(&policy.name, version) {
            Ok(true) => {
                self.state.sealed().remove(&policy.name);
                tracing::warn!(policy = %policy.name, %version, "purged from the sealed cache: the store says this version may no longer be read");
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(policy = %policy.name, error = %error_chain(&e), "cannot purge the sealed cache"),
        }
    }
}
