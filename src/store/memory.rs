//! An in-memory store with the file store's contract (numbered versions, aliases and
//! annotations under an etag compare-and-swap, version states), for unit tests of the engine
//! and the rotation protocol under tokio's paused clock. Creation times come from the clock
//! it is given, so a test moves days of schedule by advancing tokio's time.
//!
//! Faults are counters, not probabilities: `fail_next_reads(n)` makes the next `n` reads fail
//! as an unreachable store would.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Etag, SecretMeta, SecretStore, SecretUpdate, Selector, StoreClock, StoreError, VersionInfo, VersionState};
use crate::clock::SharedClock;
use crate::secret::{SecretBytes, SecretId, Version, VersionId};

#[derive(Debug)]
pub struct MemoryStore {
    name: String,
    clock: SharedClock,
    secrets: Mutex<BTreeMap<SecretId, Secret>>,
    /// How many `access` calls were made, failed ones included.
    accesses: AtomicUsize,
    /// How many metadata reads and writes were made (everything but `access`).
    metadata: AtomicUsize,
    failing_reads: AtomicUsize,
    /// What the store says of its clock: this node's, until a test says it is remote.
    store_clock: Mutex<StoreClock>,
}

#[derive(Debug, Default)]
struct Secret {
    etag: u64,
    aliases: BTreeMap<String, VersionId>,
    annotations: BTreeMap<String, String>,
    versions: BTreeMap<u64, Stored>,
}

#[derive(Debug)]
struct Stored {
    value: SecretBytes,
    state: VersionState,
    created: std::time::SystemTime,
}

impl MemoryStore {
    pub fn new(name: &str, clock: SharedClock) -> Self {
        MemoryStore {
            name: name.to_string(),
            clock,
            secrets: Mutex::default(),
            accesses: AtomicUsize::new(0),
            metadata: AtomicUsize::new(0),
            failing_reads: AtomicUsize::new(0),
            store_clock: Mutex::new(StoreClock::Node),
        }
    }

    /// Makes the store remote, with its clock `clock` against the node's: creation times are
    /// then stamped on the store's clock (the node's corrected by the skew), as a remote store
    /// stamps them.
    pub fn set_clock(&self, clock: StoreClock) {
        *self.store_clock.lock().unwrap() = clock;
    }

    /// The store's own time now.
    fn store_now(&self) -> std::time::SystemTime {
        self.clock().store_time(self.clock.now())
    }

    /// Adds `value` as a new version and makes it `current` (the old one `previous`), as
    /// `keyturn store put` does.
    pub fn put(&self, id: &str, value: &str) -> VersionId {
        let mut secrets = self.secrets.lock().unwrap();
        let secret = secrets.entry(SecretId::new(id)).or_default();
        let number = secret.versions.keys().next_back().map_or(1, |n| n + 1);
        let stored = Stored {
            value: SecretBytes::copy_from(value.as_bytes()),
            state: VersionState::Enabled,
            created: self.store_now(),
        };
        secret.versions.insert(number, stored);
        let version = VersionId::from(number);
        let old = secret.aliases.get(crate::secret::CURRENT).cloned();
        super::AliasMove::promote(&version, old.as_ref()).apply(&mut secret.aliases);
        secret.etag += 1;
        version
    }

    pub fn accesses(&self) -> usize {
        self.accesses.load(Ordering::Relaxed)
    }

    pub fn metadata_requests(&self) -> usize {
        self.metadata.load(Ordering::Relaxed)
    }

    /// The next `n` reads fail as an unreachable store's do.
    pub fn fail_next_reads(&self, n: usize) {
        self.failing_reads.store(n, Ordering::Relaxed);
    }

    /// The version an alias names now.
    pub fn alias(&self, id: &str, alias: &str) -> Option<VersionId> {
        self.secrets.lock().unwrap().get(&SecretId::new(id))?.aliases.get(alias).cloned()
    }

    fn not_found(&self, id: &SecretId) -> StoreError {
        StoreError::NotFound { store: self.name.clone(), id: id.clone() }
    }

    fn with<T>(
        &self,
        id: &SecretId,
        change: impl FnOnce(&mut Secret) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.metadata.fetch_add(1, Ordering::Relaxed);
        let mut secrets = self.secrets.lock().unwrap();
        let secret = secrets.get_mut(id).ok_or_else(|| self.not_found(id))?;
        change(secret)
    }
}

fn number(id: &VersionId) -> u64 {
    id.number().unwrap_or(0)
}

impl SecretStore for MemoryStore {
    async fn access(&self, id: &SecretId, selector: &Selector) -> Result<Version, StoreError> {
        self.accesses.fetch_add(1, Ordering::Relaxed);
        if self.failing_reads.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok() {
            return Err(StoreError::Unavailable { store: self.name.clone(), message: "injected fault".into() });
        }
        let secrets = self.secrets.lock().unwrap();
        let secret = secrets.get(id).ok_or_else(|| self.not_found(id))?;
        let missing = || StoreError::NoSuchVersion {
            store: self.name.clone(),
            id: id.clone(),
            selector: selector.clone(),
            advice: String::new(),
        };
        let number = match selector {
            Selector::Alias(alias) => secret.aliases.get(alias).map(number).ok_or_else(missing)?,
            Selector::Latest => *secret.versions.keys().next_back().ok_or_else(missing)?,
            Selector::Id(version) => number(version),
        };
        let stored = secret.versions.get(&number).ok_or_else(missing)?;
        if stored.state != VersionState::Enabled {
            let state = stored.state.as_str().to_string();
            let (version, selector) = (VersionId::from(number), Some(selector.clone()));
            return Err(StoreError::NotEnabled { id: id.clone(), version, state, selector });
        }
        let mut version = Version::new(number, stored.value.clone());
        version.created = Some(stored.created);
        Ok(version)
    }

    async fn describe(&self, id: &SecretId) -> Result<SecretMeta, StoreError> {
        self.with(id, |secret| {
            Ok(SecretMeta {
                etag: Etag(secret.etag.to_string()),
                aliases: secret.aliases.clone(),
                annotations: secret.annotations.clone(),
            })
        })
    }

    async fn create(&self, id: &SecretId) -> Result<(), StoreError> {
        self.metadata.fetch_add(1, Ordering::Relaxed);
        self.secrets.lock().unwrap().entry(id.clone()).or_default();
        Ok(())
    }

    async fn add_version(&self, id: &SecretId, value: &SecretBytes) -> Result<VersionId, StoreError> {
        self.metadata.fetch_add(1, Ordering::Relaxed);
        let mut secrets = self.secrets.lock().unwrap();
        let secret = secrets.entry(id.clone()).or_default();
        let number = secret.versions.keys().next_back().map_or(1, |n| n + 1);
        secret
            .versions
            .insert(number, Stored { value: value.clone(), state: VersionState::Enabled, created: self.store_now() });
        Ok(VersionId::from(number))
    }

    async fn update(&self, id: &SecretId, base: &SecretMeta, update: &SecretUpdate) -> Result<Etag, StoreError> {
        self.with(id, |secret| {
            if base.etag.0 != secret.etag.to_string() {
                return Err(StoreError::Conflict { id: id.clone(), expected: base.etag.clone() });
            }
            update.aliases.apply(&mut secret.aliases);
            update.apply_annotations(&mut secret.annotations);
            secret.etag += 1;
            Ok(Etag(secret.etag.to_string()))
        })
    }

    async fn version_info(&self, id: &SecretId, version: &VersionId) -> Result<VersionInfo, StoreError> {
        self.with(id, |secret| {
            let stored = secret.versions.get(&number(version)).ok_or_else(|| StoreError::NoSuchVersion {
                store: self.name.clone(),
                id: id.clone(),
                selector: Selector::Id(version.clone()),
                advice: String::new(),
            })?;
            Ok(VersionInfo { id: version.clone(), state: stored.state, created: Some(stored.created) })
        })
    }

    async fn versions(&self, id: &SecretId) -> Result<Vec<VersionInfo>, StoreError> {
        self.with(id, |secret| {
            Ok(secret
                .versions
                .iter()
                .map(|(n, s)| VersionInfo { id: VersionId::from(*n), state: s.state, created: Some(s.created) })
                .collect())
        })
    }

    async fn list(&self) -> Result<Vec<SecretId>, StoreError> {
        self.metadata.fetch_add(1, Ordering::Relaxed);
        Ok(self.secrets.lock().unwrap().keys().cloned().collect())
    }

    async fn disable(&self, id: &SecretId, version: &VersionId) -> Result<(), StoreError> {
        self.with(id, |secret| {
            if let Some(stored) = secret.versions.get_mut(&number(version)) {
                stored.state = VersionState::Disabled;
            }
            Ok(())
        })
    }

    async fn destroy(&self, id: &SecretId, version: &VersionId) -> Result<(), StoreError> {
        self.with(id, |secret| {
            if let Some(stored) = secret.versions.get_mut(&number(version)) {
                stored.state = VersionState::Destroyed;
            }
            secret.aliases.retain(|_, v| v != version);
            Ok(())
        })
    }
    fn clock(&self) -> StoreClock {
        *self.store_clock.lock().unwrap()
    }
}
