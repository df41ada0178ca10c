//! The Secret Manager state machine: secrets, versions, aliases, etags and version states.
//!
//! This module is pure: it takes validated, typed input and the current time, and returns
//! records or an [`ApiError`]. It knows nothing of HTTP, JSON or callers; `api` turns requests
//! into calls here and records into JSON. It owns every rule about *state* (CONTRACT §4, §5, §7):
//! `latest` is the newest version whatever its state; etags change on every successful write,
//! including no-op transitions; DESTROYED is terminal and wipes the data; a secret with a
//! `versionDestroyTtl` destroys late; destroying a version drops the aliases that named it.
//!
//! Time-driven changes (expiry of secrets, scheduled destruction, rotation times) are applied
//! lazily by [`Store::sweep`] at the start of every call, which keeps them deterministic.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use crate::clock::unix_micros;
use crate::names::{VersionSelector, secret_name, version_name};
use crate::status::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    Enabled,
    Disabled,
    Destroyed,
}

impl State {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            State::Enabled => "ENABLED",
            State::Disabled => "DISABLED",
            State::Destroyed => "DESTROYED",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Replication {
    Automatic { kms_key_name: Option<String> },
    UserManaged(Vec<Replica>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Replica {
    pub(crate) location: String,
    pub(crate) kms_key_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rotation {
    pub(crate) next_rotation_time: Option<SystemTime>,
    pub(crate) rotation_period: Option<Duration>,
}

/// Everything a client can set on a secret, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SecretSettings {
    pub(crate) replication: Option<Replication>,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) topics: Vec<String>,
    pub(crate) expire_time: Option<SystemTime>,
    pub(crate) rotation: Option<Rotation>,
    pub(crate) version_aliases: BTreeMap<String, u64>,
    pub(crate) annotations: BTreeMap<String, String>,
    pub(crate) version_destroy_ttl: Option<Duration>,
    /// Regional secrets only (`customerManagedEncryption.kmsKeyName`); echoed, not used.
    pub(crate) kms_key_name: Option<String>,
    pub(crate) secret_type: Option<String>,
}

/// A patch: each `Some` field replaces the stored one whole (the update mask named it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SecretUpdate {
    pub(crate) labels: Option<BTreeMap<String, String>>,
    pub(crate) topics: Option<Vec<String>>,
    pub(crate) expire_time: Option<Option<SystemTime>>,
    pub(crate) rotation: Option<Option<Rotation>>,
    pub(crate) version_aliases: Option<BTreeMap<String, u64>>,
    pub(crate) annotations: Option<BTreeMap<String, String>>,
    pub(crate) version_destroy_ttl: Option<Option<Duration>>,
    pub(crate) kms_key_name: Option<Option<String>>,
}

#[derive(Debug, Clone)]
pub(crate) struct SecretRecord {
    pub(crate) id: String,
    pub(crate) location: Option<String>,
    /// Creation order, for newest-first listing and page tokens.
    pub(crate) sequence: u64,
    pub(crate) create_time: SystemTime,
    pub(crate) etag: String,
    pub(crate) settings: SecretSettings,
    pub(crate) versions: BTreeMap<u64, VersionRecord>,
    /// Version numbers are never reused, even after destroy (CONTRACT §1 [B]).
    next_version: u64,
    /// The aliases before each change, oldest first (at most [`ALIAS_HISTORY`]): what a
    /// lagging replica answers alias reads from (`Faults::lag_alias_reads`).
    alias_history: std::collections::VecDeque<BTreeMap<String, u64>>,
}

/// How many past alias maps a secret keeps for the lagging-replica fault.
const ALIAS_HISTORY: usize = 64;

impl SecretRecord {
    fn aliases_changed(&mut self, before: BTreeMap<String, u64>) {
        if before != self.settings.version_aliases {
            if self.alias_history.len() == ALIAS_HISTORY {
                self.alias_history.pop_front();
            }
            self.alias_history.push_back(before);
        }
    }
}

#[derive(Clone)]
pub(crate) struct VersionRecord {
    pub(crate) number: u64,
    pub(crate) create_time: SystemTime,
    pub(crate) destroy_time: Option<SystemTime>,
    pub(crate) scheduled_destroy_time: Option<SystemTime>,
    pub(crate) state: State,
    pub(crate) etag: String,
    /// Empty once destroyed.
    pub(crate) data: Vec<u8>,
    pub(crate) crc32c: u32,
    pub(crate) client_specified_checksum: bool,
    /// The secret's replication when the version was added, for `replicationStatus`.
    pub(crate) replication: Option<Replication>,
}

impl std::fmt::Debug for VersionRecord {
    // The payload is secret material: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VersionRecord")
            .field("number", &self.number)
            .field("state", &self.state)
            .field("etag", &self.etag)
            .field("data", &"[redacted]")
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transition {
    Enable,
    Disable,
    Destroy,
}

/// Issues etags: quoted lowercase hex that grows with time (≈ microseconds, as Google's do)
/// and is strictly increasing, so two writes in the same microsecond still differ.
#[derive(Debug, Default)]
struct EtagSource {
    last: u64,
}

impl EtagSource {
    fn next(&mut self, now: SystemTime) -> String {
        self.last = unix_micros(now).max(self.last + 1);
        format!("\"{:x}\"", self.last)
    }
}

type SecretKey = (Option<String>, String);

#[derive(Debug)]
pub(crate) struct Store {
    /// The number every emitted name uses.
    project_number: String,
    secrets: BTreeMap<SecretKey, SecretRecord>,
    next_sequence: u64,
    etags: EtagSource,
}

impl Store {
    pub(crate) fn new(project_number: u64) -> Self {
        Store {
            project_number: project_number.to_string(),
            secrets: BTreeMap::new(),
            next_sequence: 1,
            etags: EtagSource::default(),
        }
    }

    pub(crate) fn clear(&mut self) {
        self.secrets.clear();
    }

    pub(crate) fn secret_name(&self, location: Option<&str>, id: &str) -> String {
        secret_name(&self.project_number, location, id)
    }

    pub(crate) fn version_name(&self, location: Option<&str>, id: &str, version: &str) -> String {
        version_name(&self.project_number, location, id, version)
    }

    /// Applies what time has made due: expired secrets vanish, scheduled destructions happen,
    /// and rotation times that passed advance by their period.
    pub(crate) fn sweep(&mut self, now: SystemTime) {
        self.secrets.retain(|_, secret| secret.settings.expire_time.is_none_or(|t| t > now));
        for secret in self.secrets.values_mut() {
            let due: Vec<(u64, SystemTime)> = secret
                .versions
                .values()
                .filter_map(|v| v.scheduled_destroy_time.map(|t| (v.number, t)))
                .filter(|(_, t)| *t <= now)
                .collect();
            for (number, at) in due {
                destroy_now(secret, number, at, &mut self.etags);
            }
            if let Some(Rotation { next_rotation_time: Some(next), rotation_period: Some(period) }) =
                &mut secret.settings.rotation
                && !period.is_zero()
            {
                while *next <= now {
                    *next += *period;
                }
            }
        }
    }

    pub(crate) fn create(
        &mut self,
        location: Option<&str>,
        id: &str,
        settings: SecretSettings,
        now: SystemTime,
    ) -> Result<&SecretRecord, ApiError> {
        let key = (location.map(str::to_owned), id.to_owned());
        if self.secrets.contains_key(&key) {
            return Err(ApiError::secret_already_exists(&self.secret_name(location, id)));
        }
        if let Some((alias, version)) = settings.version_aliases.iter().next() {
            // A new secret has no versions, so any alias points nowhere.
            return Err(alias_target_missing(&self.version_name(location, id, &version.to_string()), alias));
        }
        let record = SecretRecord {
            id: id.to_owned(),
            location: location.map(str::to_owned),
            sequence: self.next_sequence,
            create_time: now,
            etag: self.etags.next(now),
            settings,
            versions: BTreeMap::new(),
            next_version: 1,
            alias_history: Default::default(),
        };
        self.next_sequence += 1;
        Ok(self.secrets.entry(key).or_insert(record))
    }

    pub(crate) fn secret(&self, location: Option<&str>, id: &str) -> Result<&SecretRecord, ApiError> {
        self.secrets
            .get(&(location.map(str::to_owned), id.to_owned()))
            .ok_or_else(|| ApiError::secret_not_found(&self.secret_name(location, id)))
    }

    /// Secrets of one location (`None`: global), newest first.
    pub(crate) fn secrets(&self, location: Option<&str>) -> Vec<&SecretRecord> {
        let mut secrets: Vec<&SecretRecord> =
            self.secrets.values().filter(|s| s.location.as_deref() == location).collect();
        secrets.sort_by_key(|s| std::cmp::Reverse(s.sequence));
        secrets
    }

    pub(crate) fn patch(
        &mut self,
        location: Option<&str>,
        id: &str,
        update: SecretUpdate,
        etag: Option<&str>,
        now: SystemTime,
    ) -> Result<&SecretRecord, ApiError> {
        let name = self.secret_name(location, id);
        let project_number = self.project_number.clone();
        let secret = lookup_mut(&mut self.secrets, &name, location, id)?;
        check_etag(&name, etag, &secret.etag)?;
        if let Some(aliases) = &update.version_aliases {
            for (alias, number) in aliases {
                let usable = secret.versions.get(number).is_some_and(|v| v.state != State::Destroyed);
                if !usable {
                    return Err(alias_target_missing(
                        &version_name(&project_number, location, id, &number.to_string()),
                        alias,
                    ));
                }
            }
        }
        let settings = &mut secret.settings;
        if let Some(labels) = update.labels {
            settings.labels = labels;
        }
        if let Some(topics) = update.topics {
            settings.topics = topics;
        }
        if let Some(expire_time) = update.expire_time {
            settings.expire_time = expire_time;
        }
        if let Some(rotation) = update.rotation {
            settings.rotation = rotation;
        }
        let aliases_before = update.version_aliases.as_ref().map(|_| settings.version_aliases.clone());
        if let Some(aliases) = update.version_aliases {
            settings.version_aliases = aliases;
        }
        if let Some(annotations) = update.annotations {
            settings.annotations = annotations;
        }
        if let Some(ttl) = update.version_destroy_ttl {
            settings.version_destroy_ttl = ttl;
        }
        if let Some(kms) = update.kms_key_name {
            settings.kms_key_name = kms;
        }
        if let Some(before) = aliases_before {
            secret.aliases_changed(before);
        }
        secret.etag = self.etags.next(now);
        Ok(secret)
    }

    pub(crate) fn delete(&mut self, location: Option<&str>, id: &str, etag: Option<&str>) -> Result<(), ApiError> {
        let name = self.secret_name(location, id);
        let secret = self.secret(location, id)?;
        check_etag(&name, etag, &secret.etag)?;
        self.secrets.remove(&(location.map(str::to_owned), id.to_owned()));
        Ok(())
    }

    pub(crate) fn add_version(
        &mut self,
        location: Option<&str>,
        id: &str,
        data: Vec<u8>,
        crc32c: u32,
        client_specified_checksum: bool,
        now: SystemTime,
    ) -> Result<&VersionRecord, ApiError> {
        let name = self.secret_name(location, id);
        let etag = self.etags.next(now);
        let secret = lookup_mut(&mut self.secrets, &name, location, id)?;
        let number = secret.next_version;
        secret.next_version += 1;
        let version = VersionRecord {
            number,
            create_time: now,
            destroy_time: None,
            scheduled_destroy_time: None,
            state: State::Enabled,
            etag,
            data,
            crc32c,
            client_specified_checksum,
            replication: secret.settings.replication.clone(),
        };
        Ok(secret.versions.entry(number).or_insert(version))
    }

    /// Resolves a selector to a version number. `latest` is the newest version in any state.
    pub(crate) fn resolve(
        &self,
        location: Option<&str>,
        id: &str,
        selector: &VersionSelector,
    ) -> Result<u64, ApiError> {
        let secret = self.secret(location, id)?;
        let missing = |label: &str| ApiError::version_not_found(&self.version_name(location, id, label));
        match selector {
            VersionSelector::Latest => secret
                .versions
                .keys()
                .next_back()
                .copied()
                .ok_or_else(|| ApiError::secret_not_found(&self.secret_name(location, id))),
            VersionSelector::Number(n) => {
                secret.versions.contains_key(n).then_some(*n).ok_or_else(|| missing(&n.to_string()))
            }
            VersionSelector::Alias(alias) => secret
                .settings
                .version_aliases
                .get(alias)
                .copied()
                .filter(|n| secret.versions.contains_key(n))
                .ok_or_else(|| missing(alias)),
        }
    }

    /// `selector` as a replica `lag` changes behind would resolve it: an alias from the alias
    /// map of `lag` changes ago (the oldest kept, if there were fewer changes), `latest` as the
    /// version `lag` versions before the newest. Numbers are answered as they are.
    pub(crate) fn lagging(
        &self,
        location: Option<&str>,
        id: &str,
        selector: VersionSelector,
        lag: u32,
    ) -> Result<VersionSelector, ApiError> {
        if lag == 0 {
            return Ok(selector);
        }
        let secret = self.secret(location, id)?;
        let lag = lag as usize;
        match selector {
            VersionSelector::Alias(alias) => {
                let history = &secret.alias_history;
                let view = match history.len() {
                    0 => &secret.settings.version_aliases,
                    len => &history[len.saturating_sub(lag)],
                };
                match view.get(&alias) {
                    Some(number) => Ok(VersionSelector::Number(*number)),
                    None => Err(ApiError::version_not_found(&self.version_name(location, id, &alias))),
                }
            }
            VersionSelector::Latest => {
                let older = secret.versions.keys().rev().nth(lag).or_else(|| secret.versions.keys().next());
                Ok(older.map_or(VersionSelector::Latest, |n| VersionSelector::Number(*n)))
            }
            number => Ok(number),
        }
    }

    pub(crate) fn version(
        &self,
        location: Option<&str>,
        id: &str,
        selector: &VersionSelector,
    ) -> Result<&VersionRecord, ApiError> {
        let number = self.resolve(location, id, selector)?;
        Ok(&self.secret(location, id)?.versions[&number])
    }

    /// The payload of an ENABLED version; any other state is FAILED_PRECONDITION naming the
    /// resolved number.
    pub(crate) fn access(
        &self,
        location: Option<&str>,
        id: &str,
        selector: &VersionSelector,
    ) -> Result<&VersionRecord, ApiError> {
        let version = self.version(location, id, selector)?;
        if version.state != State::Enabled {
            return Err(ApiError::version_in_state(
                &self.version_name(location, id, &version.number.to_string()),
                version.state.as_str(),
            ));
        }
        Ok(version)
    }

    pub(crate) fn transition(
        &mut self,
        location: Option<&str>,
        id: &str,
        number: u64,
        transition: Transition,
        etag: Option<&str>,
        now: SystemTime,
    ) -> Result<&VersionRecord, ApiError> {
        let name = self.version_name(location, id, &number.to_string());
        let secret_name = self.secret_name(location, id);
        let secret = lookup_mut(&mut self.secrets, &secret_name, location, id)?;
        let version = secret.versions.get(&number).ok_or_else(|| ApiError::version_not_found(&name))?;
        check_etag(&name, etag, &version.etag)?;
        if version.state == State::Destroyed {
            return Err(ApiError::version_in_state(&name, State::Destroyed.as_str()));
        }
        let delayed_destroy = secret.settings.version_destroy_ttl.filter(|ttl| !ttl.is_zero());
        if transition == Transition::Destroy && delayed_destroy.is_none() {
            destroy_now(secret, number, now, &mut self.etags);
            return Ok(&secret.versions[&number]);
        }
        let version = secret.versions.get_mut(&number).ok_or_else(|| ApiError::version_not_found(&name))?;
        match (transition, delayed_destroy) {
            // Enabling or disabling cancels a scheduled destruction (the docs' "restore").
            (Transition::Enable, _) => {
                version.state = State::Enabled;
                version.scheduled_destroy_time = None;
            }
            (Transition::Disable, _) => {
                version.state = State::Disabled;
                version.scheduled_destroy_time = None;
            }
            (Transition::Destroy, ttl) => {
                version.state = State::Disabled;
                // A second destroy while one is pending keeps the first schedule.
                version.scheduled_destroy_time.get_or_insert(now + ttl.unwrap_or_default());
            }
        }
        version.etag = self.etags.next(now);
        Ok(version)
    }
}

fn lookup_mut<'a>(
    secrets: &'a mut BTreeMap<SecretKey, SecretRecord>,
    secret_name: &str,
    location: Option<&str>,
    id: &str,
) -> Result<&'a mut SecretRecord, ApiError> {
    secrets
        .get_mut(&(location.map(str::to_owned), id.to_owned()))
        .ok_or_else(|| ApiError::secret_not_found(secret_name))
}

/// DESTROYED: data wiped, `destroyTime` set, aliases naming the version dropped. Dropping
/// aliases changes the secret, so the secret's etag changes too (only then).
fn destroy_now(secret: &mut SecretRecord, number: u64, at: SystemTime, etags: &mut EtagSource) {
    let Some(version) = secret.versions.get_mut(&number) else {
        return;
    };
    version.state = State::Destroyed;
    version.destroy_time = Some(at);
    version.scheduled_destroy_time = None;
    version.data = Vec::new();
    version.etag = etags.next(at);
    let before = secret.settings.version_aliases.clone();
    secret.settings.version_aliases.retain(|_, target| *target != number);
    if secret.settings.version_aliases != before {
        secret.aliases_changed(before);
        secret.etag = etags.next(at);
    }
}

/// Omitted (or empty) etag: no check. Otherwise it must equal the current one exactly,
/// quotes included.
fn check_etag(name: &str, sent: Option<&str>, current: &str) -> Result<(), ApiError> {
    match sent {
        Some(sent) if !sent.is_empty() && sent != current => Err(ApiError::etag_mismatch(name, sent, current)),
        _ => Ok(()),
    }
}

/// The contract says only that such an alias is rejected; INVALID_ARGUMENT and this wording
/// are design choices.
fn alias_target_missing(version_name: &str, alias: &str) -> ApiError {
    ApiError::invalid_argument(format!(
        "Version alias [{alias}] refers to Secret Version [{version_name}], which does not \
         exist or is destroyed."
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::Code;

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn store_with_secret() -> Store {
        let mut store = Store::new(42);
        store.create(None, "s", SecretSettings::default(), t(0)).unwrap();
        store
    }

    #[test]
    fn etags_are_quoted_hex_and_strictly_increasing() {
        let mut etags = EtagSource::default();
        let a = etags.next(t(0));
        let b = etags.next(t(0));
        assert!(a.starts_with('"') && a.ends_with('"'), "{a}");
        assert_ne!(a, b);
        let hex = |e: &str| u64::from_str_radix(e.trim_matches('"'), 16).unwrap();
        assert!(hex(&b) > hex(&a));
    }

    #[test]
    fn latest_is_the_newest_version_whatever_its_state() {
        let mut store = store_with_secret();
        store.add_version(None, "s", b"one".to_vec(), 0, false, t(1)).unwrap();
        store.add_version(None, "s", b"two".to_vec(), 0, false, t(2)).unwrap();
        store.transition(None, "s", 2, Transition::Disable, None, t(3)).unwrap();
        assert_eq!(store.resolve(None, "s", &VersionSelector::Latest), Ok(2));
        let error = store.access(None, "s", &VersionSelector::Latest).unwrap_err();
        assert_eq!(error.code, Code::FailedPrecondition);
        assert_eq!(error.message, "Secret Version [projects/42/secrets/s/versions/2] is in DISABLED state.");
    }

    #[test]
    fn no_op_transitions_still_change_the_etag_but_not_the_secrets() {
        let mut store = store_with_secret();
        let secret_etag = store.secret(None, "s").unwrap().etag.clone();
        let first = store.add_version(None, "s", b"x".to_vec(), 0, false, t(1)).unwrap().etag.clone();
        let again = store.transition(None, "s", 1, Transition::Enable, None, t(1)).unwrap();
        assert_eq!(again.state, State::Enabled);
        assert_ne!(again.etag, first);
        assert_eq!(store.secret(None, "s").unwrap().etag, secret_etag);
    }

    #[test]
    fn destroy_is_terminal_and_drops_aliases() {
        let mut store = store_with_secret();
        store.add_version(None, "s", b"x".to_vec(), 0, false, t(1)).unwrap();
        let aliases = BTreeMap::from([("current".to_owned(), 1)]);
        store
            .patch(None, "s", SecretUpdate { version_aliases: Some(aliases), ..SecretUpdate::default() }, None, t(2))
            .unwrap();
        let secret_etag = store.secret(None, "s").unwrap().etag.clone();
        let destroyed = store.transition(None, "s", 1, Transition::Destroy, None, t(3)).unwrap();
        assert_eq!(destroyed.state, State::Destroyed);
        assert!(destroyed.data.is_empty());
        assert_eq!(destroyed.destroy_time, Some(t(3)));
        let secret = store.secret(None, "s").unwrap();
        assert!(secret.settings.version_aliases.is_empty());
        assert_ne!(secret.etag, secret_etag);
        for transition in [Transition::Enable, Transition::Disable, Transition::Destroy] {
            let error = store.transition(None, "s", 1, transition, None, t(4)).unwrap_err();
            assert_eq!(error.code, Code::FailedPrecondition, "{transition:?}");
        }
    }

    #[test]
    fn delayed_destroy_disables_then_destroys_when_due() {
        let mut store = Store::new(42);
        let settings =
            SecretSettings { version_destroy_ttl: Some(Duration::from_secs(86_400)), ..SecretSettings::default() };
        store.create(None, "s", settings, t(0)).unwrap();
        store.add_version(None, "s", b"x".to_vec(), 0, false, t(1)).unwrap();
        let pending = store.transition(None, "s", 1, Transition::Destroy, None, t(10)).unwrap();
        assert_eq!(pending.state, State::Disabled);
        assert_eq!(pending.scheduled_destroy_time, Some(t(86_410)));
        store.sweep(t(86_409));
        assert_eq!(store.version(None, "s", &VersionSelector::Number(1)).unwrap().state, State::Disabled);
        store.sweep(t(86_410));
        let version = store.version(None, "s", &VersionSelector::Number(1)).unwrap();
        assert_eq!(version.state, State::Destroyed);
        assert_eq!(version.destroy_time, Some(t(86_410)));
    }

    #[test]
    fn etag_mismatch_is_failed_precondition_and_omitted_means_no_check() {
        let mut store = store_with_secret();
        let error = store.delete(None, "s", Some("\"0\"")).unwrap_err();
        assert_eq!(error.code, Code::FailedPrecondition);
        assert_eq!(store.delete(None, "s", None), Ok(()));
        assert_eq!(store.delete(None, "s", None).unwrap_err().code, Code::NotFound);
    }

    #[test]
    fn debug_never_prints_payloads() {
        let mut store = store_with_secret();
        let version = store.add_version(None, "s", b"hunter2".to_vec(), 0, false, t(1)).unwrap();
        let text = format!("{version:?}");
        assert!(!text.contains("hunter2"), "{text}");
        let text = format!("{store:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!text.contains("104, 117"), "not even as bytes: {text}");
    }

    #[test]
    fn version_numbers_are_never_reused() {
        let mut store = store_with_secret();
        store.add_version(None, "s", b"x".to_vec(), 0, false, t(1)).unwrap();
        store.transition(None, "s", 1, Transition::Destroy, None, t(2)).unwrap();
        let next = store.add_version(None, "s", b"y".to_vec(), 0, false, t(3)).unwrap();
        assert_eq!(next.number, 2);
    }

    #[test]
    fn regional_and_global_namespaces_are_separate() {
        let mut store = store_with_secret();
        store.create(Some("us-east1"), "s", SecretSettings::default(), t(0)).unwrap();
        store.add_version(None, "s", b"global".to_vec(), 0, false, t(1)).unwrap();
        assert_eq!(
            store.resolve(Some("us-east1"), "s", &VersionSelector::Latest).unwrap_err().message,
            "Secret [projects/42/locations/us-east1/secrets/s] not found or has no versions."
        );
        assert_eq!(store.secrets(None).len(), 1);
    }
}
