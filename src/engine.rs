//! The agent's work loop: pull each policy's `current` version, deliver it if it changed, and
//! record what happened.
//!
//! The engine is generic over [`SecretStore`] and never names a backend; `app` builds the
//! stores and hands them in. Its two entry points are [`Engine::sync_all`], one pass over every
//! policy with the bundle writes batched (start-up, `sync --once`, after a reload), and
//! [`Engine::spawn_watchers`], one task per policy that polls with jitter and backs off on
//! failure. Every failure keeps the last good files: a bundle is only ever replaced whole, by
//! a complete new version.
//!
//! Steady state costs one `access` per policy per poll and no metadata reads: a change is a
//! new `(version, crc32c)` for the alias, compared in memory against what the bundle holds.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;

use crate::config::{Config, Policy};
use crate::deliver::{self, BundleWriter, PolicyUpdate};
use crate::error_chain;
use crate::report::status::{self, PolicyStatus, Status};
use crate::rotation::timing::{poll_delay, retry_delay, unit_random};
use crate::store::{SecretStore, Selector, StoreError, Version};

/// How many store requests the initial sync keeps in flight: enough to hide round trips to a
/// remote store, few enough not to burst a project's quota.
const SYNC_CONCURRENCY: usize = 32;
/// How long status changes gather before one write of the status file.
const STATUS_DEBOUNCE: Duration = Duration::from_millis(100);

/// State that outlives one configuration: the bundles on disk and the status.
#[derive(Debug)]
pub struct Shared {
    writer: Mutex<BundleWriter>,
    status: Mutex<Status>,
    status_changed: Notify,
}

impl Shared {
    pub fn new(writer: BundleWriter, node: &str) -> Arc<Self> {
        let status = Status { node: node.to_string(), pid: std::process::id(), ..Status::default() };
        Arc::new(Shared { writer: Mutex::new(writer), status: Mutex::new(status), status_changed: Notify::new() })
    }

    pub fn writer(&self) -> MutexGuard<'_, BundleWriter> {
        self.writer.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn status(&self) -> MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn update_status(&self, policy: &Policy, change: impl FnOnce(&mut PolicyStatus)) {
        let mut status = self.status();
        let entry = status.policies.entry(policy.name.clone()).or_default();
        entry.store.clone_from(&policy.store);
        entry.secret = policy.secret.to_string();
        entry.required = policy.required;
        change(entry);
        status.updated_at = status::now();
        drop(status);
        self.status_changed.notify_one();
    }

    /// Writes the status file whenever it changes, a short while after, until dropped.
    pub async fn persist_status(self: Arc<Self>, state_dir: std::path::PathBuf) {
        loop {
            self.status_changed.notified().await;
            tokio::time::sleep(STATUS_DEBOUNCE).await;
            self.save_status(&state_dir);
        }
    }

    pub fn save_status(&self, state_dir: &std::path::Path) {
        let snapshot = self.status().clone();
        if let Err(e) = snapshot.save(state_dir) {
            tracing::warn!(path = %Status::path(state_dir).display(), error = %e, "cannot write the status file");
        }
    }
}

/// What one pass did, for `sync --once` and start-up logs.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SyncSummary {
    pub delivered: usize,
    pub unchanged: usize,
    /// Names of the policies that failed, required or not.
    pub failed: Vec<String>,
    pub failed_required: usize,
}

pub struct Engine<S> {
    config: Arc<Config>,
    stores: Arc<BTreeMap<String, Arc<S>>>,
    shared: Arc<Shared>,
}

impl<S> std::fmt::Debug for Engine<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("policies", &self.config.policies.len()).finish_non_exhaustive()
    }
}

impl<S> Clone for Engine<S> {
    fn clone(&self) -> Self {
        Engine { config: self.config.clone(), stores: self.stores.clone(), shared: self.shared.clone() }
    }
}

impl<S: SecretStore + 'static> Engine<S> {
    pub fn new(config: Arc<Config>, stores: BTreeMap<String, Arc<S>>, shared: Arc<Shared>) -> Self {
        {
            // Forget policies that are no longer configured.
            let mut status = shared.status();
            status.policies.retain(|name, _| config.policy(name).is_some());
        }
        Engine { config, stores: Arc::new(stores), shared }
    }

    fn store(&self, policy: &Policy) -> &Arc<S> {
        // Validation guarantees every policy names a configured store.
        &self.stores[&policy.store]
    }

    /// One pass over every policy: fetch all (a few at a time), then write each bundle that
    /// changed once. Removes bundles that no policy delivers any more.
    pub async fn sync_all(&self) -> SyncSummary {
        let started = Instant::now();
        let limit = Arc::new(Semaphore::new(SYNC_CONCURRENCY));
        let mut fetches = JoinSet::new();
        for (index, policy) in self.config.policies.iter().enumerate() {
            let store = self.store(policy).clone();
            let limit = limit.clone();
            let secret = policy.secret.clone();
            fetches.spawn(async move {
                let _permit = limit.acquire_owned().await;
                (index, store.access(&secret, &Selector::current()).await)
            });
        }
        let mut fetched = Vec::new();
        let mut summary = SyncSummary::default();
        while let Some(joined) = fetches.join_next().await {
            let Ok((index, result)) = joined else { continue };
            let policy = &self.config.policies[index];
            match result {
                Ok(version) => fetched.push((policy, version)),
                Err(e) => self.fetch_failed(policy, &e, None, &mut summary),
            }
        }
        fetched.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        self.deliver(fetched, &mut summary);

        let bundles = self.config.bundles();
        let keep: BTreeSet<&str> = bundles.keys().copied().collect();
        for removed in self.shared.writer().remove_stale(&keep) {
            tracing::warn!(bundle = %removed, "removed a bundle that no policy delivers any more");
        }
        tracing::info!(
            policies = self.config.policies.len(),
            delivered = summary.delivered,
            unchanged = summary.unchanged,
            failed = summary.failed.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "sync finished"
        );
        summary
    }

    /// Starts one watcher per policy. Dropping the returned set stops them all.
    pub fn spawn_watchers(&self, first_failures: &[String]) -> JoinSet<()> {
        let mut tasks = JoinSet::new();
        for index in 0..self.config.policies.len() {
            let engine = self.clone();
            let failures = u32::from(first_failures.contains(&self.config.policies[index].name));
            tasks.spawn(async move { engine.watch(index, failures).await });
        }
        tasks
    }

    async fn watch(self, index: usize, mut failures: u32) {
        let policy = &self.config.policies[index];
        let agent = &self.config.agent;
        loop {
            let wait = if failures == 0 {
                poll_delay(agent.poll, agent.jitter, unit_random())
            } else {
                retry_delay(failures, agent.poll, unit_random())
            };
            tokio::time::sleep(wait).await;
            let mut summary = SyncSummary::default();
            match self.store(policy).access(&policy.secret, &Selector::current()).await {
                Ok(version) => self.deliver(vec![(policy, version)], &mut summary),
                Err(e) => {
                    let next = retry_delay(failures + 1, agent.poll, 0.5);
                    self.fetch_failed(policy, &e, Some(next), &mut summary);
                }
            }
            failures = if summary.failed.is_empty() { 0 } else { failures + 1 };
        }
    }

    fn fetch_failed(&self, policy: &Policy, error: &StoreError, retry_in: Option<Duration>, summary: &mut SyncSummary) {
        let message = error_chain(error);
        tracing::warn!(
            policy = %policy.name,
            store = %policy.store,
            error = %message,
            retry_in_s = retry_in.map(|d| d.as_secs_f64()),
            "store read failed; the last good files stay in place"
        );
        self.record_failure(policy, message, summary);
    }

    fn record_failure(&self, policy: &Policy, message: String, summary: &mut SyncSummary) {
        summary.failed.push(policy.name.clone());
        summary.failed_required += usize::from(policy.required);
        let checked = status::now();
        self.shared.update_status(policy, |s| {
            s.checked_at = Some(checked);
            s.last_error = Some(message);
            s.consecutive_failures += 1;
        });
    }

    /// Writes every bundle that the fetched versions change, one write per bundle.
    fn deliver(&self, fetched: Vec<(&Policy, Version)>, summary: &mut SyncSummary) {
        let bundles = self.config.bundles();
        let mut writer = self.shared.writer();
        let mut updates: BTreeMap<&str, Vec<(&Policy, PolicyUpdate)>> = BTreeMap::new();
        let mut outcome: BTreeMap<&str, Result<bool, String>> = BTreeMap::new();
        for (policy, version) in &fetched {
            outcome.insert(&policy.name, Ok(false));
            for bundle in policy.bundles() {
                let spec = deliver::spec(policy, bundle);
                if writer.holds(bundle, &policy.name, &version.id, version.crc32c, spec) {
                    continue;
                }
                match deliver::render(policy, bundle, version) {
                    Ok(update) => updates.entry(bundle).or_default().push((policy, update)),
                    Err(e) => {
                        outcome.insert(&policy.name, Err(error_chain(&e)));
                    }
                }
            }
        }
        for (bundle, entries) in updates {
            let members: BTreeSet<&str> = bundles[bundle].iter().map(|p| p.name.as_str()).collect();
            let (policies, entries): (Vec<&Policy>, Vec<PolicyUpdate>) =
                entries.into_iter().filter(|(p, _)| outcome.get(p.name.as_str()).is_some_and(Result::is_ok)).unzip();
            if entries.is_empty() {
                continue;
            }
            let started = Instant::now();
            match writer.write(bundle, &members, entries) {
                Ok(()) => {
                    for policy in &policies {
                        outcome.entry(&policy.name).and_modify(|o| *o = o.clone().map(|_| true));
                    }
                    tracing::debug!(bundle, micros = started.elapsed().as_micros() as u64, "bundle swapped");
                }
                Err(e) => {
                    let message = error_chain(&e);
                    tracing::error!(bundle, error = %message, "bundle update failed; the last good files stay in place");
                    for policy in &policies {
                        outcome.insert(&policy.name, Err(message.clone()));
                    }
                }
            }
        }
        drop(writer);

        let now = status::now();
        for (policy, version) in &fetched {
            match outcome.remove(policy.name.as_str()) {
                Some(Ok(true)) => {
                    summary.delivered += 1;
                    tracing::info!(policy = %policy.name, secret = %policy.secret, version = %version.id, "delivered");
                    self.shared.update_status(policy, |s| {
                        s.version = Some(version.id.clone());
                        s.delivered_at = Some(now.clone());
                        s.checked_at = Some(now.clone());
                        s.last_error = None;
                        s.consecutive_failures = 0;
                    });
                }
                Some(Ok(false)) => {
                    summary.unchanged += 1;
                    self.shared.update_status(policy, |s| {
                        if s.version.as_ref() != Some(&version.id) {
                            // Already on disk from an earlier run.
                            s.version = Some(version.id.clone());
                            s.delivered_at.get_or_insert_with(|| now.clone());
                        }
                        s.checked_at = Some(now.clone());
                        s.last_error = None;
                        s.consecutive_failures = 0;
                    });
                }
                Some(Err(message)) => {
                    tracing::warn!(policy = %policy.name, version = %version.id, error = %message, "delivery failed");
                    self.record_failure(policy, message, summary);
                }
                None => {}
            }
        }
    }
}
