//! The local file store: the embedded default, for development, the quickstart, and nodes
//! that get their secrets from configuration management.
//!
//! On-disk layout (documented in the README):
//!
//! ```text
//! DIR/                       0700
//!   SECRET_ID/               0700
//!     secret.json            0600  etag, aliases, annotations, and per version: state,
//!                                  creation time and CRC32C. Replaced atomically.
//!     lock                   0600  flock'd by every writer for the length of one change
//!     versions/              0700
//!       1  2  3 ...          0600  the values, one file per version, never rewritten
//! ```
//!
//! Versions are numbered from 1 and never reused. Aliases move only under the lock and only if
//! the caller's etag (the secret's generation number) still matches: the same compare-and-swap
//! contract as Google Secret Manager, so the rotation protocol runs unchanged on both. Readers
//! take no lock: `secret.json` is replaced by rename and version files are written before
//! `secret.json` names them, so a reader sees a whole old state or a whole new one.
//!
//! **Time.** The store has no clock of its own: creation times and leases are written with the
//! clock of the node that writes them, and every writer is on this node (the directory is
//! local), so they share one clock ([`StoreClock::Node`]). There is no skew to measure, and
//! none is reported; a wrong node clock is still wrong, but it is wrong for every writer alike.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::registry::{Backend, OpenContext};
use super::{
    AliasMove, Etag, MAX_VALUE_BYTES, SecretMeta, SecretStore, SecretUpdate, Selector, StoreClock, StoreError,
    VersionInfo, VersionState,
};
use crate::clock::SharedClock;
use crate::config::Section;
use crate::secret::{SecretBytes, SecretId, Version, VersionId};
use crate::sys;

const META: &str = "secret.json";
const LOCK: &str = "lock";
const VERSIONS: &str = "versions";
/// How long a writer waits for another writer (another agent, `keyturn store put`).
const LOCK_TIMEOUT: Duration = Duration::from_secs(10);
/// A seed file larger than this is not one (a few hundred values at most).
const SEED_MAX: u64 = 4 * 1024 * 1024;

/// `[stores.NAME]` with `kind = "file"`.
#[derive(Debug, Clone, PartialEq)]
pub struct FileStoreConfig {
    pub dir: PathBuf,
    /// A TOML file of initial values (`secret-id = "value"` lines) imported when the store
    /// holds no secret at all: how the quickstart starts from nothing.
    pub seed: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    dir: Spanned<String>,
    seed: Option<Spanned<String>>,
}

#[derive(Debug)]
pub struct FileStore {
    /// The store's name in configuration, for messages.
    name: String,
    dir: PathBuf,
    /// Stamps each version's creation time, which rotation schedules count from.
    clock: SharedClock,
}

impl Backend for FileStore {
    const KIND: &'static str = "file";
    type Config = FileStoreConfig;

    fn configure(section: &mut Section<'_, '_>) -> Option<FileStoreConfig> {
        let settings: Settings = section.parse()?;
        let dir = section.path(&settings.dir, "dir");
        let seed = match &settings.seed {
            Some(seed) => Some(section.path(seed, "seed")?),
            None => None,
        };
        Some(FileStoreConfig { dir: dir?, seed })
    }

    async fn open(name: &str, config: &FileStoreConfig, context: &OpenContext) -> Result<Self, StoreError> {
        FileStore::open_with_clock(name, config, context.clock.clone()).await
    }

    fn preflight(config: &FileStoreConfig) -> Vec<(&'static str, String)> {
        let seed = config.seed.as_deref().map(|path| ("seed", path));
        seed.and_then(|(field, path)| super::registry::readable_file(path).err().map(|e| (field, e))).into_iter().collect()
    }

    /// Ids portable to every store, and always safe as directory names.
    fn check_secret_id(id: &str) -> Result<(), String> {
        super::check_portable_secret_id(id)
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Meta {
    /// Bumped by every change; the compare-and-swap token.
    etag: u64,
    /// The number the next version gets. Kept apart from `versions` so numbers are never
    /// reused, even if version files are pruned by hand.
    next_version: u64,
    aliases: BTreeMap<String, VersionId>,
    annotations: BTreeMap<String, String>,
    versions: BTreeMap<u64, VersionMeta>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct VersionMeta {
    state: VersionState,
    created: String,
    crc32c: u32,
}

impl FileStore {
    /// Opens (creating if needed) the store at `config.dir`, and imports `config.seed` if the
    /// store holds no secret yet. Versions are stamped with the system clock.
    pub async fn open(name: &str, config: &FileStoreConfig) -> Result<Self, StoreError> {
        FileStore::open_with_clock(name, config, crate::clock::system()).await
    }

    /// [`FileStore::open`], with versions stamped by `clock`.
    pub async fn open_with_clock(name: &str, config: &FileStoreConfig, clock: SharedClock) -> Result<Self, StoreError> {
        let store = FileStore { name: name.to_string(), dir: config.dir.clone(), clock };
        sys::create_dir(&store.dir, 0o700).map_err(|e| store.io("create", &store.dir, e))?;
        if let Some(seed) = &config.seed {
            store.seed(seed).await?;
        }
        Ok(store)
    }

    /// Imports every `id = "value"` of a TOML seed file, once, into an empty store.
    async fn seed(&self, seed: &Path) -> Result<(), StoreError> {
        let mut entries = fs::read_dir(&self.dir).map_err(|e| self.io("list", &self.dir, e))?;
        if entries.next().is_some() {
            return Ok(());
        }
        let file = sys::read_small_file(seed, SEED_MAX, sys::Links::Follow).map_err(|e| self.io("read seed file", seed, e))?;
        let text = std::str::from_utf8(&file.bytes)
            .map_err(|_| StoreError::Invalid(format!("seed file {}: not UTF-8 text", seed.display())))?;
        // The parser's own messages may quote what it read, and a seed holds values: say where
        // the mistake is, never what it is.
        let values: BTreeMap<String, String> = toml::from_str(text).map_err(|e| {
                let line = e.span().map_or(String::new(), |span| {
                    format!(" at line {}", text[..span.start.min(text.len())].matches('\n').count() + 1)
                });
                StoreError::Invalid(format!(
                    "seed file {}{line}: expected lines of secret-id = \"value\" (a string, at most {MAX_VALUE_BYTES} bytes)",
                    seed.display()
                ))
            })?;
        for (id, value) in values {
            let id = SecretId::new(id);
            let version = self.add_version(&id, &SecretBytes::from(value)).await?;
            let meta = self.describe(&id).await?;
            self.update(&id, &meta, &SecretUpdate::aliases(AliasMove::promote(&version, None))).await?;
            tracing::info!(store = %self.name, secret = %id, version = %version, "seeded secret");
        }
        Ok(())
    }

    fn io(&self, action: &'static str, path: &Path, source: io::Error) -> StoreError {
        StoreError::Io { store: self.name.clone(), action, path: path.to_path_buf(), source }
    }

    fn secret_dir(&self, id: &SecretId) -> Result<PathBuf, StoreError> {
        // Ids are validated by configuration, but `store put` and `get` take them from the
        // command line: check again before an id becomes a path.
        Self::check_secret_id(id.as_str()).map_err(StoreError::Invalid)?;
        Ok(self.dir.join(id.as_str()))
    }

    fn read_meta(&self, id: &SecretId) -> Result<Meta, StoreError> {
        let path = self.secret_dir(id)?.join(META);
        let text = match fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound { store: self.name.clone(), id: id.clone() });
            }
            Err(e) => return Err(self.io("read", &path, e)),
        };
        serde_json::from_slice(&text)
            .map_err(|e| self.io("parse", &path, io::Error::new(io::ErrorKind::InvalidData, e.to_string())))
    }

    fn write_meta(&self, id: &SecretId, meta: &Meta) -> Result<(), StoreError> {
        let path = self.secret_dir(id)?.join(META);
        let bytes = serde_json::to_vec_pretty(meta).expect("metadata serializes");
        sys::replace_file(&path, &bytes, 0o600).map_err(|e| self.io("write", &path, e))
    }

    /// Runs `change` on the secret's metadata under its lock, and writes the result.
    async fn locked<T>(
        &self,
        id: &SecretId,
        create: bool,
        change: impl FnOnce(&mut Meta) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let dir = self.secret_dir(id)?;
        if create {
            sys::create_dir(&dir.join(VERSIONS), 0o700).map_err(|e| self.io("create", &dir, e))?;
        }
        let lock_path = dir.join(LOCK);
        let lock = match fs::OpenOptions::new().create(true).truncate(false).write(true).mode(0o600).open(&lock_path) {
            Ok(lock) => lock,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound { store: self.name.clone(), id: id.clone() });
            }
            Err(e) => return Err(self.io("open", &lock_path, e)),
        };
        sys::lock_exclusive(&lock, LOCK_TIMEOUT).await.map_err(|e| self.io("lock", &lock_path, e))?;
        let mut meta = match self.read_meta(id) {
            Err(StoreError::NotFound { .. }) if create => Meta { next_version: 1, ..Meta::default() },
            other => other?,
        };
        let result = change(&mut meta)?;
        meta.etag += 1;
        self.write_meta(id, &meta)?;
        Ok(result)
    }

    fn resolve(&self, id: &SecretId, meta: &Meta, selector: &Selector) -> Result<u64, StoreError> {
        let missing =
            || StoreError::NoSuchVersion {
                store: self.name.clone(),
                id: id.clone(),
                selector: selector.clone(),
                advice: match selector {
                    Selector::Alias(alias) if alias == crate::secret::CURRENT => format!(
                        ": `keyturn store put {} {id}` adds a version and makes it current",
                        self.name
                    ),
                    _ => String::new(),
                },
            };
        match selector {
            Selector::Alias(alias) => meta.aliases.get(alias).and_then(VersionId::number).ok_or_else(missing),
            Selector::Latest => meta.versions.keys().next_back().copied().ok_or_else(missing),
            Selector::Id(version) => version.number().filter(|n| meta.versions.contains_key(n)).ok_or_else(missing),
        }
    }

    fn version_path(&self, id: &SecretId, number: u64) -> Result<PathBuf, StoreError> {
        Ok(self.secret_dir(id)?.join(VERSIONS).join(number.to_string()))
    }
}

impl SecretStore for FileStore {
    async fn access(&self, id: &SecretId, selector: &Selector) -> Result<Version, StoreError> {
        let meta = self.read_meta(id)?;
        let number = self.resolve(id, &meta, selector)?;
        let version = &meta.versions[&number];
        let version_id = VersionId::from(number);
        if version.state != VersionState::Enabled {
            return Err(StoreError::NotEnabled {
                id: id.clone(),
                version: version_id,
                state: version.state.as_str().into(),
                selector: Some(selector.clone()),
            });
        }
        let path = self.version_path(id, number)?;
        let value = read_version(&path).map_err(|e| match e {
            Err(e) => self.io("read", &path, e),
            Ok(()) => StoreError::TooLarge { id: id.clone(), version: version_id.clone(), max: MAX_VALUE_BYTES },
        })?;
        if value.is_empty() {
            return Err(StoreError::Empty { id: id.clone(), version: version_id });
        }
        let actual = value.crc32c();
        if actual != version.crc32c {
            return Err(StoreError::Corrupt { id: id.clone(), version: version_id, expected: version.crc32c, actual });
        }
        let created = humantime::parse_rfc3339(&version.created).ok();
        Ok(Version { id: version_id, value, crc32c: actual, created })
    }

    async fn describe(&self, id: &SecretId) -> Result<SecretMeta, StoreError> {
        let meta = self.read_meta(id)?;
        Ok(SecretMeta { etag: Etag(meta.etag.to_string()), aliases: meta.aliases, annotations: meta.annotations })
    }

    async fn create(&self, id: &SecretId) -> Result<(), StoreError> {
        if self.read_meta(id).is_ok() {
            return Ok(());
        }
        self.locked(id, true, |_| Ok(())).await
    }

    async fn add_version(&self, id: &SecretId, value: &SecretBytes) -> Result<VersionId, StoreError> {
        if value.is_empty() {
            return Err(StoreError::Invalid(format!("refusing to add an empty version to secret \"{id}\"")));
        }
        if value.len() > MAX_VALUE_BYTES {
            return Err(StoreError::Invalid(format!(
                "refusing to add a version of {} bytes to secret \"{id}\": at most {MAX_VALUE_BYTES} bytes",
                value.len()
            )));
        }
        self.locked(id, true, |meta| {
            let mut number = meta.next_version.max(1);
            let mut path = self.version_path(id, number)?;
            // A version file the metadata does not know: left by an add that crashed before
            // recording it, or kept from metadata that was lost. Its number is skipped, never
            // reused, and the file is left alone (nothing is deleted on a guess).
            while fs::symlink_metadata(&path).is_ok() {
                tracing::warn!(store = %self.name, secret = %id, version = number, path = %path.display(), "skipping a version number whose file the metadata does not record");
                number += 1;
                path = self.version_path(id, number)?;
            }
            write_new(&path, value.expose()).map_err(|e| self.io("write", &path, e))?;
            let created = humantime::format_rfc3339_micros(self.clock.now()).to_string();
            meta.versions.insert(number, VersionMeta { state: VersionState::Enabled, created, crc32c: value.crc32c() });
            meta.next_version = number + 1;
            Ok(VersionId::from(number))
        })
        .await
    }

    async fn update(&self, id: &SecretId, base: &SecretMeta, update: &SecretUpdate) -> Result<Etag, StoreError> {
        self.locked(id, false, |meta| {
            if meta.etag.to_string() != base.etag.0 {
                return Err(StoreError::Conflict { id: id.clone(), expected: base.etag.clone() });
            }
            for (alias, version) in &update.aliases.set {
                let usable = version
                    .number()
                    .and_then(|n| meta.versions.get(&n))
                    .is_some_and(|v| v.state != VersionState::Destroyed);
                if !usable {
                    return Err(StoreError::Invalid(format!(
                        "alias {alias} of secret \"{id}\" cannot point at version {version}: it does not exist or is destroyed"
                    )));
                }
            }
            update.aliases.apply(&mut meta.aliases);
            update.apply_annotations(&mut meta.annotations);
            Ok(Etag((meta.etag + 1).to_string()))
        })
        .await
    }

    async fn version_info(&self, id: &SecretId, version: &VersionId) -> Result<VersionInfo, StoreError> {
        let mut meta = self.read_meta(id)?;
        let entry = self.version_entry(id, &mut meta, version)?;
        Ok(info(version.clone(), entry))
    }

    async fn versions(&self, id: &SecretId) -> Result<Vec<VersionInfo>, StoreError> {
        let meta = self.read_meta(id)?;
        Ok(meta.versions.iter().map(|(n, v)| info(VersionId::from(*n), v)).collect())
    }

    /// Every directory of the store that holds a secret's metadata.
    async fn list(&self) -> Result<Vec<SecretId>, StoreError> {
        let entries = fs::read_dir(&self.dir).map_err(|e| self.io("list", &self.dir, e))?;
        let mut ids = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| self.io("list", &self.dir, e))?;
            let Some(name) = entry.file_name().to_str().map(String::from) else { continue };
            if Self::check_secret_id(&name).is_ok() && entry.path().join(META).is_file() {
                ids.push(SecretId::new(name));
            }
        }
        Ok(ids)
    }

    async fn disable(&self, id: &SecretId, version: &VersionId) -> Result<(), StoreError> {
        self.locked(id, false, |meta| {
            self.changeable(id, meta, version)?.state = VersionState::Disabled;
            Ok(())
        })
        .await
    }

    async fn destroy(&self, id: &SecretId, version: &VersionId) -> Result<(), StoreError> {
        self.locked(id, false, |meta| {
            self.changeable(id, meta, version)?.state = VersionState::Destroyed;
            meta.aliases.retain(|_, v| v != version);
            let path = self.version_path(id, version.number().unwrap_or_default())?;
            match fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(self.io("remove", &path, e)),
                _ => Ok(()),
            }
        })
        .await
    }
    /// A directory on this node, written only with this node's clock.
    fn clock(&self) -> StoreClock {
        StoreClock::Node
    }
}

impl FileStore {
    /// A version whose state may still change: it exists and is not destroyed, which is final.
    fn changeable<'m>(
        &self,
        id: &SecretId,
        meta: &'m mut Meta,
        version: &VersionId,
    ) -> Result<&'m mut VersionMeta, StoreError> {
        let entry = self.version_entry(id, meta, version)?;
        if entry.state == VersionState::Destroyed {
            let state = "destroyed".into();
            return Err(StoreError::NotEnabled { id: id.clone(), version: version.clone(), state, selector: None });
        }
        Ok(entry)
    }

    fn version_entry<'m>(
        &self,
        id: &SecretId,
        meta: &'m mut Meta,
        version: &VersionId,
    ) -> Result<&'m mut VersionMeta, StoreError> {
        version.number().and_then(|n| meta.versions.get_mut(&n)).ok_or_else(|| StoreError::NoSuchVersion {
            store: self.name.clone(),
            id: id.clone(),
            selector: Selector::Id(version.clone()),
            advice: String::new(),
        })
    }
}

fn info(id: VersionId, version: &VersionMeta) -> VersionInfo {
    VersionInfo { id, state: version.state, created: humantime::parse_rfc3339(&version.created).ok() }
}

/// A version file's value, its size checked before a byte is read; `Err(Ok(()))` when it is
/// too large.
fn read_version(path: &Path) -> Result<SecretBytes, Result<(), io::Error>> {
    use std::io::Read;
    let file = fs::OpenOptions::new().read(true).custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32).open(path).map_err(Err)?;
    if file.metadata().map_err(Err)?.len() > MAX_VALUE_BYTES as u64 {
        return Err(Ok(()));
    }
    let mut bytes = zeroize::Zeroizing::new(Vec::new());
    file.take(MAX_VALUE_BYTES as u64 + 1).read_to_end(&mut bytes).map_err(Err)?;
    if bytes.len() > MAX_VALUE_BYTES {
        return Err(Ok(()));
    }
    Ok(SecretBytes::copy_from(&bytes))
}

/// Writes a version file that must not exist yet, durably, before metadata names it.
fn write_new(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let result = (|| {
        let mut file = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        sys::sync_dir(path.parent().unwrap_or(Path::new(".")))
    })();
    if result.is_err() {
        let _ = fs::remove_file(path);
    }
    result
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    async fn store(dir: &Path) -> FileStore {
        FileStore::open("dev", &FileStoreConfig { dir: dir.join("store"), seed: None }).await.unwrap()
    }

    fn value(text: &str) -> SecretBytes {
        SecretBytes::copy_from(text.as_bytes())
    }

    /// A crash between writing a version file and recording it leaves the file behind; the
    /// next add must not be stuck on it, publish it, or delete anything.
    #[tokio::test]
    async fn an_add_interrupted_before_it_was_recorded_does_not_block_the_next() {
        let tmp = tempfile::tempdir().unwrap();
        let store = store(tmp.path()).await;
        let id = SecretId::new("signing-key");
        store.add_version(&id, &value("one")).await.unwrap();
        let orphan = store.version_path(&id, 2).unwrap();
        let mut file = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&orphan).unwrap();
        file.write_all(b"never published").unwrap();
        drop(file);

        let added = store.add_version(&id, &value("two")).await.unwrap();
        assert_eq!(added.as_str(), "3", "the orphan's number is not reused");
        assert_eq!(fs::read(&orphan).unwrap(), b"never published", "and its file is left alone");
        assert_eq!(store.access(&id, &Selector::Latest).await.unwrap().value.expose(), b"two");
        assert!(store.versions(&id).await.unwrap().iter().all(|v| v.id.as_str() != "2"));
    }

    #[tokio::test]
    async fn versions_aliases_and_compare_and_swap() {
        let tmp = tempfile::tempdir().unwrap();
        let store = store(tmp.path()).await;
        let id = SecretId::new("db-password");

        assert!(matches!(store.access(&id, &Selector::current()).await, Err(StoreError::NotFound { .. })));
        let v1 = store.add_version(&id, &value("one")).await.unwrap();
        assert_eq!(v1.as_str(), "1");
        // Added but not promoted: not what nodes deliver.
        assert!(matches!(store.access(&id, &Selector::current()).await, Err(StoreError::NoSuchVersion { .. })));
        assert_eq!(store.access(&id, &Selector::Latest).await.unwrap().value.expose(), b"one");

        let promote = |new, old| SecretUpdate::aliases(AliasMove::promote(new, old));
        let meta = store.describe(&id).await.unwrap();
        let etag = store.update(&id, &meta, &promote(&v1, None)).await.unwrap();
        let v2 = store.add_version(&id, &value("two")).await.unwrap();
        // The add bumped the etag, so the etag from the first promotion is stale.
        let stale_meta = SecretMeta { etag, ..meta };
        let stale = store.update(&id, &stale_meta, &promote(&v2, Some(&v1))).await;
        assert!(matches!(stale, Err(StoreError::Conflict { .. })), "{stale:?}");
        let meta = store.describe(&id).await.unwrap();
        let lease = SecretUpdate {
            set_annotations: BTreeMap::from([("keyturn.lease".to_string(), "node-a".to_string())]),
            ..promote(&v2, Some(&v1))
        };
        store.update(&id, &meta, &lease).await.unwrap();
        assert_eq!(store.describe(&id).await.unwrap().annotations["keyturn.lease"], "node-a");

        let current = store.access(&id, &Selector::current()).await.unwrap();
        assert_eq!((current.id.as_str(), current.value.expose()), ("2", &b"two"[..]));
        let previous = store.access(&id, &Selector::Alias("previous".into())).await.unwrap();
        assert_eq!(previous.value.expose(), b"one");

        store.disable(&id, &v1).await.unwrap();
        assert!(matches!(store.access(&id, &Selector::Id(v1.clone())).await, Err(StoreError::NotEnabled { .. })));

        assert_eq!(store.version_info(&id, &v1).await.unwrap().state, VersionState::Disabled);
        let mut all = store.versions(&id).await.unwrap();
        all.sort_by_key(|v| v.id.number());
        assert_eq!(
            all.iter().map(|v| (v.id.as_str(), v.state)).collect::<Vec<_>>(),
            [("1", VersionState::Disabled), ("2", VersionState::Enabled)]
        );
        assert!(all[0].created.is_some());

        store.destroy(&id, &v1).await.unwrap();
        assert!(!tmp.path().join("store/db-password/versions/1").exists(), "the value is wiped");
        let meta = store.describe(&id).await.unwrap();
        assert!(!meta.aliases.contains_key("previous"), "aliases to a destroyed version are dropped");
        assert!(matches!(store.disable(&id, &v1).await, Err(StoreError::NotEnabled { .. })));
    }

    #[tokio::test]
    async fn files_are_private_and_corruption_is_caught() {
        let tmp = tempfile::tempdir().unwrap();
        let store = store(tmp.path()).await;
        let id = SecretId::new("api-token");
        let v1 = store.add_version(&id, &value("token-value")).await.unwrap();
        let mode = |p: PathBuf| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(tmp.path().join("store")), 0o700);
        assert_eq!(mode(tmp.path().join("store/api-token")), 0o700);
        assert_eq!(mode(tmp.path().join("store/api-token/secret.json")), 0o600);
        assert_eq!(mode(tmp.path().join("store/api-token/versions/1")), 0o600);

        let path = tmp.path().join("store/api-token/versions/1");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        fs::OpenOptions::new().write(true).open(&path).unwrap().write_all(b"X").unwrap();
        let err = store.access(&id, &Selector::Id(v1)).await.unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
        assert!(!err.to_string().contains("oken-value"), "{err}");
    }

    #[tokio::test]
    async fn empty_values_and_bad_ids_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let store = store(tmp.path()).await;
        assert!(store.add_version(&SecretId::new("x"), &value("")).await.is_err());
        assert!(store.add_version(&SecretId::new("../escape"), &value("v")).await.is_err());
        assert!(!tmp.path().join("escape").exists());
    }

    #[tokio::test]
    async fn a_seed_file_fills_an_empty_store_once() {
        let tmp = tempfile::tempdir().unwrap();
        let seed = tmp.path().join("seed.toml");
        sys::replace_file(&seed, b"db-password = \"first\"\n", 0o600).unwrap();
        let config = FileStoreConfig { dir: tmp.path().join("store"), seed: Some(seed.clone()) };
        let store = FileStore::open("dev", &config).await.unwrap();
        let id = SecretId::new("db-password");
        assert_eq!(store.access(&id, &Selector::current()).await.unwrap().value.expose(), b"first");

        sys::replace_file(&seed, b"db-password = \"second\"\n", 0o600).unwrap();
        let store = FileStore::open("dev", &config).await.unwrap();
        let current = store.access(&id, &Selector::current()).await.unwrap();
        assert_eq!((current.id.as_str(), current.value.expose()), ("1", &b"first"[..]));
    }
}
