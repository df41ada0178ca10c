//! Secret stores: where values come from and where rotations are recorded.
//!
//! [`SecretStore`] is what the engine sees. One file (or folder) per backend implements it
//! and [`registry::Backend`]: the backend owns its settings and their validation, how it is
//! opened, its naming rules and the advice its errors give. The `stores!` list in
//! [`registry`] is the one place backends are registered; [`AnyStore`] and [`StoreConfig`]
//! are the closed sets it makes, used alike by the agent, the one-shot commands and `probe`.
//! Stores speak in aliases: nodes deliver the version aliased `current`, never blindly
//! `latest`, so a rotation that is half done (aliased `pending`) is never delivered.
//!
//! Errors are typed ([`StoreError`]) and say what to do. They name secrets and versions, never
//! values.

#[cfg(test)]
pub mod memory;
pub mod metered;
pub mod registry;

pub use metered::Metered;
pub use registry::OpenContext;

// The backends this build knows: one line each. A backend behind a cargo feature (all of
// them are in the default build) is also named in `OMITTED_KINDS` below.
registry::stores! {
    File => file::FileStore,
    #[cfg(feature = "gcp")]
    Gcp => gcp::GcpStore,
}

/// Kinds a default build knows that this one was built without (cargo features), so that a
/// configuration naming one is told why, not that the kind does not exist.
pub const OMITTED_KINDS: &[(&str, &str)] = &[
    #[cfg(not(feature = "gcp"))]
    ("gcp", "gcp"),
];

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::time::SystemTime;

use crate::secret::{SecretBytes, SecretId, Version, VersionId};

/// The largest value a version may hold: Google Secret Manager's limit (64 KiB), which every
/// store keeps, so that a value moves between stores and a store can be read without trusting
/// its sizes. Checked before a value is read, and before one is added.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

/// Which version of a secret to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// The version an alias points at (`current`, `previous`, `pending`).
    Alias(String),
    /// The newest version, whatever its state. Never what nodes deliver.
    Latest,
    Id(VersionId),
}

impl Selector {
    pub fn current() -> Self {
        Selector::Alias(crate::secret::CURRENT.to_string())
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::Alias(alias) => write!(f, "alias {alias}"),
            Selector::Latest => f.write_str("latest"),
            Selector::Id(id) => write!(f, "version {id}"),
        }
    }
}

/// An opaque compare-and-swap token for a secret's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Etag(pub String);

impl fmt::Display for Etag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a store knows about a secret besides its values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretMeta {
    pub etag: Etag,
    pub aliases: BTreeMap<String, VersionId>,
    pub annotations: BTreeMap<String, String>,
}

/// A version's lifecycle state, in Google's terms; the file store uses the same three.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VersionState {
    Enabled,
    Disabled,
    Destroyed,
}

impl VersionState {
    pub fn as_str(self) -> &'static str {
        match self {
            VersionState::Enabled => "enabled",
            VersionState::Disabled => "disabled",
            VersionState::Destroyed => "destroyed",
        }
    }
}

/// What a store says about one version, without its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionInfo {
    pub id: VersionId,
    pub state: VersionState,
    pub created: Option<SystemTime>,
}

/// A change to a secret's metadata: aliases and annotations move together, under one
/// compare-and-swap, so that promoting a version and releasing the rotation lease are one step.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecretUpdate {
    pub aliases: AliasMove,
    pub set_annotations: BTreeMap<String, String>,
    pub remove_annotations: Vec<String>,
}

impl SecretUpdate {
    pub fn aliases(aliases: AliasMove) -> Self {
        SecretUpdate { aliases, ..SecretUpdate::default() }
    }

    pub fn touches_aliases(&self) -> bool {
        !self.aliases.set.is_empty() || !self.aliases.remove.is_empty()
    }

    pub fn touches_annotations(&self) -> bool {
        !self.set_annotations.is_empty() || !self.remove_annotations.is_empty()
    }

    pub fn apply_annotations(&self, annotations: &mut BTreeMap<String, String>) {
        for key in &self.remove_annotations {
            annotations.remove(key);
        }
        annotations.extend(self.set_annotations.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
}

/// A change to a secret's aliases, applied all at once or not at all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AliasMove {
    pub set: BTreeMap<String, VersionId>,
    pub remove: Vec<String>,
}

impl AliasMove {
    /// `current` → `new`, `previous` → the old current (if any), `pending` dropped.
    pub fn promote(new: &VersionId, old_current: Option<&VersionId>) -> Self {
        let mut set = BTreeMap::from([(crate::secret::CURRENT.to_string(), new.clone())]);
        let mut remove = vec![crate::secret::PENDING.to_string()];
        match old_current {
            Some(old) if old != new => {
                set.insert(crate::secret::PREVIOUS.to_string(), old.clone());
            }
            Some(_) => {}
            None => remove.push(crate::secret::PREVIOUS.to_string()),
        }
        AliasMove { set, remove }
    }

    pub fn apply(&self, aliases: &mut BTreeMap<String, VersionId>) {
        for alias in &self.remove {
            aliases.remove(alias);
        }
        aliases.extend(self.set.iter().map(|(a, v)| (a.clone(), v.clone())));
    }
}

/// The operations every backend provides. Futures are `Send` so the engine may run on either
/// tokio runtime flavour.
pub trait SecretStore: Send + Sync {
    /// Reads one version's value and verifies its checksum. Empty values are refused.
    fn access(&self, id: &SecretId, selector: &Selector) -> impl Future<Output = Result<Version, StoreError>> + Send;
    fn describe(&self, id: &SecretId) -> impl Future<Output = Result<SecretMeta, StoreError>> + Send;
    /// Creates the secret with no versions, so that its metadata (the rotation lease) can be
    /// written before its first version exists. Succeeds if it exists already.
    fn create(&self, id: &SecretId) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Adds a new version; no alias moves. Not idempotent: never retry it blindly.
    fn add_version(
        &self,
        id: &SecretId,
        value: &SecretBytes,
    ) -> impl Future<Output = Result<VersionId, StoreError>> + Send;
    /// Applies `update` to the aliases and annotations of `base` (as read by
    /// [`SecretStore::describe`]) if the secret's etag is still `base.etag`; returns the new
    /// etag. A stale etag is [`StoreError::Conflict`]: re-read and decide again.
    fn update(
        &self,
        id: &SecretId,
        base: &SecretMeta,
        update: &SecretUpdate,
    ) -> impl Future<Output = Result<Etag, StoreError>> + Send;
    /// One version's state and creation time (a metadata read: not for every poll).
    fn version_info(
        &self,
        id: &SecretId,
        version: &VersionId,
    ) -> impl Future<Output = Result<VersionInfo, StoreError>> + Send;
    /// Every version of a secret, in no particular order (a metadata read).
    fn versions(&self, id: &SecretId) -> impl Future<Output = Result<Vec<VersionInfo>, StoreError>> + Send;
    /// The ids of every secret in the store, in no particular order (a metadata read; for
    /// `keyturn store list`, never on the agent's path).
    fn list(&self) -> impl Future<Output = Result<Vec<SecretId>, StoreError>> + Send;
    /// Makes a version unreadable; it can be enabled again.
    fn disable(&self, id: &SecretId, version: &VersionId) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Wipes a version's value for good; aliases that pointed at it are dropped.
    fn destroy(&self, id: &SecretId, version: &VersionId) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// How the store's clock stands against this node's, as far as its answers have shown: no
    /// request of its own. Every backend says: a remote one measures it (the Google store from
    /// the `Date` of its answers); one whose writers share this node's clock says so.
    fn clock(&self) -> StoreClock;
}

/// How a store's clock stands against this node's.
///
/// Decisions about what a store holds are made on the store's clock: when its current
/// version is due (from the creation time the store stamped on it), whether a rotation lease
/// written in it has expired, when a replaced version's grace ends. Every node then decides
/// alike, so one node whose clock runs a day ahead neither rotates the fleet's secret a day
/// early nor takes another node's live lease. See [`StoreTime`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StoreClock {
    /// The store is written with this node's own clock, and every writer shares it (the file
    /// store, a directory on this node): there is no other clock to measure.
    Node,
    /// A remote store that has not said what time it is yet: no answer has arrived.
    Unmeasured,
    /// A remote store's clock as measured: this node's clock minus the store's, in seconds
    /// (positive: this node is ahead).
    Measured { skew: f64 },
}

impl StoreClock {
    /// The store's time when this node's clock reads `now`: `now` itself for a store on this
    /// node's clock, while a remote store's is not measured yet, and while the measured skew is
    /// within [`RESOLUTION`] (a `Date` header states whole seconds, so a smaller skew is below
    /// what was measured; a synchronized node keeps deciding on its own, finer, clock).
    pub fn store_time(self, now: SystemTime) -> SystemTime {
        match self {
            StoreClock::Measured { skew } if skew.abs() < RESOLUTION => now,
            StoreClock::Measured { skew } if skew >= 0.0 => now - std::time::Duration::from_secs_f64(skew),
            StoreClock::Measured { skew } => now + std::time::Duration::from_secs_f64(-skew),
            StoreClock::Node | StoreClock::Unmeasured => now,
        }
    }

    /// The measured skew, in seconds (positive: this node is ahead).
    pub fn skew(self) -> Option<f64> {
        match self {
            StoreClock::Measured { skew } => Some(skew),
            StoreClock::Node | StoreClock::Unmeasured => None,
        }
    }
}

/// The finest skew a store's answers can show: a `Date` header states whole seconds.
pub const RESOLUTION: f64 = 1.0;

/// A skew in words, as precise as is worth saying: `0.4s ahead of`, `3m 2s behind`, `2h ahead
/// of`, `1day ahead of` (tenths of a second below ten seconds, whole seconds below ten minutes,
/// whole minutes above). Followed by whose clock it is compared with.
pub fn skew_words(skew: f64) -> String {
    let size = skew.abs();
    let amount = if size < 10.0 {
        format!("{size:.1}s")
    } else {
        let unit = if size < 600.0 { 1.0 } else { 60.0 };
        let rounded = (size / unit).round() * unit;
        humantime::format_duration(std::time::Duration::from_secs(rounded as u64)).to_string()
    };
    format!("{amount} {}", if skew >= 0.0 { "ahead of" } else { "behind" })
}

/// A store's clock as a [`Clock`](crate::clock::Clock): this node's clock corrected by the
/// store's measured skew (see [`StoreClock`]). Read afresh at every `now`, so a measurement
/// that changes (a clock fixed by time sync) is followed at once.
pub struct StoreTime<'a, S: ?Sized> {
    pub node: &'a dyn crate::clock::Clock,
    pub store: &'a S,
}

impl<S: ?Sized> fmt::Debug for StoreTime<'_, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreTime").finish_non_exhaustive()
    }
}

impl<S: SecretStore + ?Sized> crate::clock::Clock for StoreTime<'_, S> {
    fn now(&self) -> SystemTime {
        self.store.clock().store_time(self.node.now())
    }
}

/// Google Secret Manager's rule for secret ids, the strictest of the stores keyturn speaks:
/// 1 to 255 letters, digits, `-` and `_`. The Google backend holds to it, and the file store
/// too, so that a policy written against the file store moves to Google unchanged (and an id
/// is always safe as a file name).
pub fn check_portable_secret_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty() && id.len() <= 255 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok { Ok(()) } else { Err(format!("\"{id}\" is not a secret id: 1 to 255 letters, digits, \"-\" and \"_\"")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_time_and_skews_in_words() {
        let now = humantime::parse_rfc3339("2026-12-01T12:00:00Z").unwrap();
        let day_ahead = StoreClock::Measured { skew: 86_400.0 };
        assert_eq!(crate::clock::rfc3339(day_ahead.store_time(now)), "2026-11-30T12:00:00Z");
        let behind = StoreClock::Measured { skew: -90.5 };
        assert_eq!(humantime::format_rfc3339_millis(behind.store_time(now)).to_string(), "2026-12-01T12:01:30.500Z");
        assert_eq!((StoreClock::Node.store_time(now), StoreClock::Unmeasured.store_time(now)), (now, now));
        // Below a Date header's resolution, the node's own clock is the better one.
        assert_eq!(
            (StoreClock::Measured { skew: 0.6 }.store_time(now), StoreClock::Measured { skew: -0.9 }.store_time(now)),
            (now, now)
        );
        assert_eq!(StoreClock::Measured { skew: 1.0 }.store_time(now), now - std::time::Duration::from_secs(1));
        let cases = [
            (0.44, "0.4s ahead of"),
            (-3.0, "3.0s behind"),
            (182.4, "3m 2s ahead of"),
            (-7200.4, "2h behind"),
            (7230.0, "2h 1m ahead of"),
            (86_400.3, "1day ahead of"),
        ];
        for (skew, words) in cases {
            assert_eq!(skew_words(skew), words, "{skew}");
        }
    }
}

/// Why a store operation failed. Messages name the store, secret and version, never a value.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("secret \"{id}\" does not exist in store \"{store}\"")]
    NotFound { store: String, id: SecretId },
    /// `advice` is the backend's: how to make the version exist (set the alias, say).
    #[error("secret \"{id}\" in store \"{store}\" has no {selector}{advice}")]
    NoSuchVersion { store: String, id: SecretId, selector: Selector, advice: String },
    #[error("version {version} of secret \"{id}\" is {state}; only enabled versions can be read{}", latest_hint(selector.as_ref()))]
    NotEnabled { id: SecretId, version: VersionId, state: String, selector: Option<Selector> },
    #[error("secret \"{id}\" changed since it was read (etag {expected} is stale); re-read it and decide again")]
    Conflict { id: SecretId, expected: Etag },
    #[error(
        "version {version} of secret \"{id}\" failed its CRC32C check (store says {expected:#010x}, data is \
         {actual:#010x}); nothing was delivered"
    )]
    Corrupt { id: SecretId, version: VersionId, expected: u32, actual: u32 },
    #[error("version {version} of secret \"{id}\" is empty; an empty secret is never delivered")]
    Empty { id: SecretId, version: VersionId },
    #[error("{0}")]
    Invalid(String),
    #[error(
        "version {version} of secret \"{id}\" is larger than {max} bytes, the most a secret may hold; it was not read"
    )]
    TooLarge { id: SecretId, version: VersionId, max: usize },
    /// `advice` is the backend's: which role or policy grants `permission`.
    #[error("store \"{store}\": permission denied: {message}{advice}")]
    PermissionDenied { store: String, permission: Option<String>, message: String, advice: String },
    /// `advice` is the backend's: where it looks for credentials.
    #[error("store \"{store}\": {message}{advice}")]
    Auth { store: String, message: String, advice: String },
    /// The store refused this node because of its clock, most likely (a signed request outside
    /// the store's time window, with the clock measured that far off): `advice` says how far,
    /// and how to fix it. Never credential advice: the credentials are not the problem.
    #[error("store \"{store}\": {message}{advice}")]
    Clock { store: String, message: String, advice: String },
    #[error("store \"{store}\": quota exceeded, will retry: {message}")]
    Quota { store: String, message: String },
    #[error("store \"{store}\": unavailable, will retry: {message}")]
    Unavailable { store: String, message: String },
    #[error("store \"{store}\": {status}: {message}")]
    Api { store: String, status: String, message: String },
    #[error("store \"{store}\": cannot {action} {}", path.display())]
    Io {
        store: String,
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What to do when `latest` names a version that cannot be read.
fn latest_hint(selector: Option<&Selector>) -> &'static str {
    match selector {
        Some(Selector::Latest) => {
            " (`latest` is the newest version whatever its state: enable it, add a newer version, or deliver `current` or a pinned number instead)"
        }
        _ => "",
    }
}

impl StoreError {
    /// Whether the same request may succeed later without anyone changing anything.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Io { .. }
                | StoreError::Corrupt { .. }
                | StoreError::Quota { .. }
                | StoreError::Unavailable { .. }
                | StoreError::Auth { .. }
                | StoreError::Clock { .. }
        )
    }
}
