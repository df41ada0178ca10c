//! The agent's work loop: pull each policy's `current` version, deliver it if it changed,
//! rotate it when it is due, and record what happened.
//!
//! The engine is generic over [`SecretStore`] and never names a backend; `app` builds the
//! stores and hands them in. Its entry points are [`Engine::sync_all`], one pass over every
//! policy with the bundle writes batched (start-up, `sync --once`, a reload, SIGUSR1), and
//! [`Engine::spawn_watchers`], one task per policy that wakes for the earliest of its next
//! poll (with jitter, or backoff after a failure), its rotation due time, and the end of a
//! grace period that changes what its JWK set lists. Every failure keeps the last good files:
//! a bundle is only ever replaced whole, by a complete new version.
//!
//! Steady state costs one `access` per policy per poll and no metadata reads: a change is a
//! new `(version, crc32c)` for the alias, compared in memory against what the bundle holds.
//! Only when the current version changes does the engine read more: its creation time (for
//! the rotation schedule and the grace period) and the previous version's public key (for
//! JWK sets), both kept in memory per policy. Public keys and times only; never a value.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;

use crate::config::{Config, Format, Policy};
use crate::deliver::{self, BundleWriter, Fingerprint, PolicyUpdate, Previous};
use crate::error_chain;
use crate::generate::PrivateKey;
use crate::notify;
use crate::report::events::{self, Reporter};
use crate::report::metrics::{Metrics, Notification, PolicyLabel, PolicyResult, unix};
use crate::report::status::{self, PolicyStatus, Status};
use crate::rotation::protocol::{Outcome, Rotator, Trigger};
use crate::rotation::schedule::{in_grace, next_rotation, node_unit};
use crate::rotation::timing::{first_poll_delay, poll_delay, retry_delay, unit_random};
use crate::secret::{PREVIOUS, VersionId};
use crate::store::{SecretStore, Selector, StoreError, Version};

/// How many store requests the initial sync keeps in flight: enough to hide round trips to a
/// remote store, few enough not to burst a project's quota. `keyturn probe` reads the same way.
pub const SYNC_CONCURRENCY: usize = 32;
/// How long status changes gather before one write of the status file.
const STATUS_DEBOUNCE: Duration = Duration::from_millis(100);
/// After another node was found rotating, wait at least this long before trying again.
const BUSY_BACKOFF: Duration = Duration::from_secs(5);

/// What the store last said about a policy's `current` version, besides its value.
#[derive(Debug, Clone)]
enum Known {
    /// The secret or its `current` alias does not exist (yet).
    Missing,
    Current {
        version: VersionId,
        created: Option<SystemTime>,
        /// The previous version's public key, for policies that deliver a JWK set; `None`
        /// when there is none, or it is disabled (revoked) or not a key.
        previous: Option<Previous>,
    },
}

/// State that outlives one configuration: the bundles on disk, the status, what is known of
/// each policy's current version.
#[derive(Debug)]
pub struct Shared {
    writer: Mutex<BundleWriter>,
    status: Mutex<Status>,
    /// How many required policies have no delivered version yet; changed only under the status
    /// lock, so that readiness costs one comparison per update instead of a walk over every
    /// policy.
    waiting: AtomicUsize,
    status_changed: Notify,
    known: Mutex<HashMap<String, Known>>,
    pub metrics: Arc<Metrics>,
    /// True once every required policy is on disk: what READY=1 and `/readyz` report.
    ready: tokio::sync::watch::Sender<bool>,
    /// Central event reports, when `[report]` is configured.
    reporter: Option<Arc<Reporter>>,
    /// One rotation at a time per policy in this process: a scheduled rotation and one asked
    /// for on the control socket share a pid, so the lease alone cannot tell them apart.
    rotating: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Shared {
    pub fn new(writer: BundleWriter, node: &str, metrics: Arc<Metrics>, reporter: Option<Arc<Reporter>>) -> Arc<Self> {
        let status = Status { node: node.to_string(), pid: std::process::id(), ..Status::default() };
        Arc::new(Shared {
            writer: Mutex::new(writer),
            status: Mutex::new(status),
            waiting: AtomicUsize::new(0),
            status_changed: Notify::new(),
            known: Mutex::new(HashMap::new()),
            metrics,
            ready: tokio::sync::watch::Sender::new(false),
            reporter,
            rotating: Mutex::new(HashMap::new()),
        })
    }

    /// Records a central report event about `policy`, if reports are configured.
    fn report(&self, kind: events::Kind, result: &str, policy: &Policy, facts: events::Facts) {
        if let Some(reporter) = &self.reporter {
            let facts = events::Facts {
                policy: policy.name.clone(),
                secret: policy.secret.to_string(),
                store: policy.store.clone(),
                ..facts
            };
            reporter.record(kind, result, facts);
        }
    }

    /// Follows readiness: true once every required policy has been delivered.
    pub fn readiness(&self) -> tokio::sync::watch::Receiver<bool> {
        self.ready.subscribe()
    }

    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    pub fn writer(&self) -> MutexGuard<'_, BundleWriter> {
        self.writer.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn status(&self) -> MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn known(&self) -> MutexGuard<'_, HashMap<String, Known>> {
        self.known.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn update_status(&self, policy: &Policy, change: impl FnOnce(&mut PolicyStatus)) {
        self.update_status_named(&policy.name, |entry| {
            entry.store.clone_from(&policy.store);
            entry.secret = policy.secret.to_string();
            entry.required = policy.required;
            change(entry);
        });
    }

    fn update_status_named(&self, policy: &str, change: impl FnOnce(&mut PolicyStatus)) {
        let mut status = self.status();
        let entry = status.policies.entry(policy.to_string()).or_default();
        let was_waiting = entry.waiting();
        change(entry);
        let waiting = match (was_waiting, entry.waiting()) {
            (false, true) => self.waiting.fetch_add(1, Ordering::Relaxed) + 1,
            (true, false) => self.waiting.fetch_sub(1, Ordering::Relaxed) - 1,
            _ => self.waiting.load(Ordering::Relaxed),
        };
        status.updated_at = status::now();
        drop(status);
        let ready = waiting == 0;
        self.set_ready(ready);
        self.status_changed.notify_one();
    }

    fn set_ready(&self, ready: bool) {
        self.metrics.ready.set(i64::from(ready));
        self.ready.send_if_modified(|now| std::mem::replace(now, ready) != ready);
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

/// Everything one policy's files are made from, as read from its stores.
#[derive(Debug)]
struct Fetched {
    version: Version,
    /// Listed in JWK sets beside the current key: the previous key, inside its grace.
    previous: Option<Previous>,
    /// The current versions of the policy's `[secrets.NAME]`.
    extras: BTreeMap<String, Version>,
}

type PullResult = Result<Fetched, StoreError>;

/// A policy's current version and what delivering it needs.
struct Pulled<'a> {
    policy: &'a Policy,
    fetched: Fetched,
    /// When its store read began: a delivery event's `duration_ms` counts from here to the
    /// bundle in place.
    started: Instant,
}

pub struct Engine<S> {
    config: Arc<Config>,
    stores: Arc<BTreeMap<String, Arc<S>>>,
    shared: Arc<Shared>,
    /// Test seam: a `rotate:STEP` pause point for the rotation protocol.
    pause_at: Option<Arc<str>>,
    /// The notification dispatcher of each policy that has `[notify]`.
    notify: Arc<HashMap<String, notify::Handle>>,
    /// The dispatcher tasks: they stop when the last clone of this engine is dropped.
    _dispatchers: Arc<Vec<AbortOnDrop<()>>>,
}

/// A spawned task that is aborted when its owner drops it.
#[derive(Debug)]
pub struct AbortOnDrop<T>(pub tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<S> std::fmt::Debug for Engine<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("policies", &self.config.policies.len()).finish_non_exhaustive()
    }
}

impl<S> Clone for Engine<S> {
    fn clone(&self) -> Self {
        Engine {
            config: self.config.clone(),
            stores: self.stores.clone(),
            shared: self.shared.clone(),
            pause_at: self.pause_at.clone(),
            notify: self.notify.clone(),
            _dispatchers: self._dispatchers.clone(),
        }
    }
}

fn delivers_jwks(policy: &Policy) -> bool {
    policy.deliver.iter().any(|d| d.format == Format::Jwks)
}

impl<S: SecretStore + 'static> Engine<S> {
    pub fn new(
        config: Arc<Config>,
        stores: BTreeMap<String, Arc<S>>,
        shared: Arc<Shared>,
        pause_at: Option<String>,
    ) -> Self {
        {
            // Every configured policy has an entry from the start, so readiness waits for the
            // required ones instead of holding vacuously over an empty list.
            let mut status = shared.status();
            let gone: Vec<(String, Vec<String>)> = status
                .policies
                .iter()
                .filter(|(name, _)| config.policy(name).is_none())
                .map(|(name, s)| (name.clone(), s.version.iter().map(ToString::to_string).collect()))
                .collect();
            for (name, versions) in gone {
                status.policies.remove(&name);
                shared.metrics.forget(&name, &versions);
            }
            for policy in &config.policies {
                let entry = status.policies.entry(policy.name.clone()).or_default();
                entry.store.clone_from(&policy.store);
                entry.secret = policy.secret.to_string();
                entry.required = policy.required;
            }
            let waiting = status.policies.values().filter(|p| p.waiting()).count();
            shared.waiting.store(waiting, Ordering::Relaxed);
            drop(status);
            shared.set_ready(waiting == 0);
        }
        shared.known().retain(|name, _| config.policy(name).is_some());
        let (notify, dispatchers) = start_dispatchers(&config, &shared);
        Engine {
            config,
            stores: Arc::new(stores),
            shared,
            pause_at: pause_at.map(Arc::from),
            notify: Arc::new(notify),
            _dispatchers: Arc::new(dispatchers),
        }
    }

    /// Sends every notification still waiting out its coalescing window, and waits for them:
    /// `sync --once` calls it before it exits.
    pub async fn flush_notifications(&self) {
        // Every dispatcher is asked first: a hung notifier of one policy must not keep another's
        // flush from being asked for before a shutdown grace runs out.
        let sent: Vec<_> = self.notify.values().filter_map(notify::Handle::flush_soon).collect();
        for sent in sent {
            let _ = sent.await;
        }
    }

    fn store(&self, policy: &Policy) -> &Arc<S> {
        // Validation guarantees every policy names a configured store.
        &self.stores[&policy.store]
    }

    /// Whether this node rotates `policy` on schedule: it has `[rotate]`, and this agent takes
    /// part in rotation (`[agent] rotate`).
    fn rotates(&self, policy: &Policy) -> bool {
        policy.rotate.is_some() && self.config.agent.rotate
    }

    /// One pass over every policy: fetch all (a few at a time), bootstrap rotating secrets
    /// that have no current version yet, then write each bundle that changed once. Removes
    /// bundles that no policy delivers any more.
    pub async fn sync_all(&self) -> SyncSummary {
        let started = Instant::now();
        let limit = Arc::new(Semaphore::new(SYNC_CONCURRENCY));
        let mut fetches = JoinSet::new();
        for index in 0..self.config.policies.len() {
            let (engine, limit) = (self.clone(), limit.clone());
            fetches.spawn(async move {
                let _permit = limit.acquire_owned().await;
                let policy = &engine.config.policies[index];
                let started = Instant::now();
                (index, started, engine.pull(policy).await)
            });
        }
        let mut results: Vec<(usize, Instant, PullResult)> = Vec::new();
        while let Some(joined) = fetches.join_next().await {
            if let Ok(result) = joined {
                results.push(result);
            }
        }
        results.sort_by_key(|(index, ..)| *index);

        let mut summary = SyncSummary::default();
        let mut pulled = Vec::new();
        for (index, started, result) in results {
            let policy = &self.config.policies[index];
            let result = match result {
                Err(e) if self.rotates(policy) && is_missing(&e) => self.bootstrap(policy).await,
                other => other,
            };
            match result {
                Ok(fetched) => pulled.push(Pulled { policy, fetched, started }),
                Err(e) => self.fetch_failed(policy, &e, None, &mut summary),
            }
        }
        self.deliver(pulled, &mut summary);

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

    /// A rotating secret with no current version: make its first one, then pull it.
    async fn bootstrap(&self, policy: &Policy) -> PullResult {
        tracing::info!(policy = %policy.name, secret = %policy.secret, "no current version yet: rotating to create the first");
        match self.rotate(policy, Trigger::Missing).await {
            Ok(Outcome::Rotated { .. }) => {}
            Ok(outcome) => tracing::info!(policy = %policy.name, ?outcome, "first version not made here"),
            Err(e) => {
                tracing::warn!(policy = %policy.name, error = %error_chain(&e), "cannot create the first version")
            }
        }
        self.pull(policy).await
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
        // Not before this time, whatever the schedule says: set after a busy lease or a failed
        // rotation, so a due secret is not retried in a tight loop.
        let mut rotation_not_before: Option<SystemTime> = None;
        // The first wait is anywhere in one poll interval: a fleet that starts together (a
        // rollout, a power cut) is spread over the interval at once, not over many polls by the
        // jitter's small drift.
        let mut first = true;
        loop {
            let now = SystemTime::now();
            let wait = if first {
                first_poll_delay(agent.poll, unit_random())
            } else if failures == 0 {
                poll_delay(agent.poll, agent.jitter, unit_random())
            } else {
                retry_delay(failures, agent.poll, unit_random())
            };
            first = false;
            let mut wake = now + wait;
            let rotation_due = self.rotation_due(policy).map(|due| due.max(rotation_not_before.unwrap_or(due)));
            if let Some(due) = rotation_due {
                self.shared.update_status(policy, |s| s.next_rotation = Some(status::format_time(due)));
                self.shared
                    .metrics
                    .next_rotation
                    .get_or_create(&PolicyLabel { policy: policy.name.clone() })
                    .set(unix(due));
                wake = wake.min(due);
            }
            if let Some(end) = self.grace_end(policy).filter(|end| *end > now) {
                wake = wake.min(end);
            }
            tokio::time::sleep(wake.duration_since(now).unwrap_or_default()).await;

            // Boxed: a task's future holds room for everything it may await, and a rotation and
            // a store read are large. Inline, every idle policy would carry them (about 10 KiB
            // each); boxed, they take memory only while they run.
            if rotation_due.is_some_and(|due| due <= SystemTime::now()) {
                rotation_not_before = Box::pin(self.rotate_scheduled(policy)).await;
            }
            let summary = self.pull_one(policy, Some(retry_delay(failures + 1, agent.poll, 0.5))).await;
            failures = if summary.failed.is_empty() { 0 } else { failures + 1 };
        }
    }

    /// When this node should next try to rotate `policy`, from what the store said.
    fn rotation_due(&self, policy: &Policy) -> Option<SystemTime> {
        let rotate = policy.rotate.as_ref().filter(|_| self.rotates(policy))?;
        match self.shared.known().get(&policy.name)? {
            Known::Missing => Some(SystemTime::now()),
            Known::Current { version, created, .. } => {
                let unit = node_unit(&self.config.agent.node, policy.secret.as_str(), version.as_str());
                Some(next_rotation(&rotate.schedule, (*created)?, rotate.jitter, unit))
            }
        }
    }

    /// When the previous key leaves `policy`'s JWK set, if it is in it now.
    fn grace_end(&self, policy: &Policy) -> Option<SystemTime> {
        let rotate = policy.rotate.as_ref()?;
        match self.shared.known().get(&policy.name)? {
            Known::Current { created: Some(created), previous: Some(_), .. } => Some(*created + rotate.grace),
            _ => None,
        }
    }

    /// Runs a scheduled rotation; returns the earliest time to try again if it did not rotate.
    async fn rotate_scheduled(&self, policy: &Policy) -> Option<SystemTime> {
        let now = SystemTime::now();
        match self.rotate(policy, Trigger::Scheduled).await {
            // Present is the answer to a missing version only; the schedule takes over from it.
            Ok(Outcome::Rotated { .. } | Outcome::Present { .. }) => None,
            Ok(Outcome::NotDue { due }) => Some(due),
            Ok(Outcome::Busy { holder }) => {
                tracing::info!(policy = %policy.name, %holder, "another node is rotating; pulling only");
                Some(now + self.config.agent.poll.max(BUSY_BACKOFF))
            }
            Err(_) => Some(now + self.config.agent.poll.max(BUSY_BACKOFF)),
        }
    }

    /// Pulls one policy and delivers it if it changed: after a rotation through the control
    /// socket, only the rotated policy needs reading.
    pub async fn refresh(&self, name: &str) -> SyncSummary {
        match self.config.policy(name) {
            Some(policy) => self.pull_one(policy, None).await,
            None => SyncSummary::default(),
        }
    }

    /// Reads one policy and delivers it if it changed; `retry_in`, for the status, is when a
    /// failed read is tried again.
    async fn pull_one(&self, policy: &Policy, retry_in: Option<Duration>) -> SyncSummary {
        let mut summary = SyncSummary::default();
        let started = Instant::now();
        match Box::pin(self.pull(policy)).await {
            Ok(fetched) => self.deliver(vec![Pulled { policy, fetched, started }], &mut summary),
            Err(e) => self.fetch_failed(policy, &e, retry_in, &mut summary),
        }
        summary
    }

    /// The configuration this engine runs.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Runs the rotation protocol for `policy` and records the outcome in the status.
    pub async fn rotate(
        &self,
        policy: &Policy,
        trigger: Trigger,
    ) -> Result<Outcome, crate::rotation::protocol::RotationError> {
        self.rotate_with(policy, trigger, &|_, _| {}).await
    }

    /// [`Engine::rotate`], telling `progress` each step as it completes.
    pub async fn rotate_with(
        &self,
        policy: &Policy,
        trigger: Trigger,
        progress: &(dyn Fn(crate::rotation::protocol::Step, &str) + Send + Sync),
    ) -> Result<Outcome, crate::rotation::protocol::RotationError> {
        let rotate = policy.rotate.as_ref().expect("only rotating policies are rotated");
        let turn = {
            let mut rotating = self.shared.rotating.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            rotating.entry(policy.name.clone()).or_default().clone()
        };
        let _turn = turn.lock().await;
        let rotator = Rotator {
            store: self.store(policy).as_ref(),
            policy,
            rotate,
            node: &self.config.agent.node,
            pid: std::process::id(),
            pause_at: self.pause_at.as_deref(),
            progress,
            now: SystemTime::now,
        };
        let started = Instant::now();
        let result = rotator.run(trigger).await;
        let duration_ms = Some(millis(started.elapsed()));
        let counted = match &result {
            Ok(Outcome::Rotated { .. }) => Some("ok"),
            Ok(Outcome::Busy { .. }) => Some("busy"),
            Ok(Outcome::NotDue { .. } | Outcome::Present { .. }) => None,
            Err(_) => Some("error"),
        };
        if let Some(result) = counted {
            self.shared.metrics.rotations.get_or_create(&PolicyResult { policy: policy.name.clone(), result }).inc();
        }
        match &result {
            Ok(Outcome::Rotated { version, previous, disabled }) => {
                let facts = events::Facts {
                    version: Some(version.to_string()),
                    previous: previous.as_ref().map(ToString::to_string),
                    duration_ms,
                    ..events::Facts::default()
                };
                self.shared.report(events::Kind::Rotated, "ok", policy, facts.clone());
                if trigger == Trigger::Revoke && !disabled.is_empty() {
                    self.shared.report(events::Kind::Revoked, "ok", policy, facts);
                }
            }
            Err(e) => {
                let facts = events::Facts { error: Some(error_chain(e)), duration_ms, ..events::Facts::default() };
                self.shared.report(events::Kind::RotationFailed, "error", policy, facts);
            }
            Ok(_) => {}
        }
        match &result {
            Ok(Outcome::Rotated { version, .. }) => {
                // The next pull reads the new current version's details afresh.
                self.shared.known().remove(&policy.name);
                let at = status::now();
                let version = version.clone();
                self.shared.update_status(policy, |s| {
                    s.last_rotation = Some(format!("version {version} at {at}"));
                    s.rotation_error = None;
                });
            }
            Ok(_) => {}
            Err(e) => {
                let message = error_chain(e);
                tracing::warn!(policy = %policy.name, secret = %policy.secret, node = %self.config.agent.node, error = %message, "rotation failed; nodes keep delivering the current version");
                self.shared.update_status(policy, |s| s.rotation_error = Some(message));
            }
        }
        result
    }

    /// Reads the current version, and (only when it changed) its creation time and the
    /// previous public key. Returns the version and the previous key if the JWK set lists it.
    async fn pull(&self, policy: &Policy) -> PullResult {
        let store = self.store(policy);
        let version = match store.access(&policy.secret, &Selector::current()).await {
            Ok(version) => version,
            Err(e) => {
                if is_missing(&e) {
                    self.shared.known().insert(policy.name.clone(), Known::Missing);
                }
                return Err(e);
            }
        };
        let cached = match self.shared.known().get(&policy.name) {
            Some(Known::Current { version: known, created, previous }) if *known == version.id => {
                Some((*created, previous.clone()))
            }
            _ => None,
        };
        let (created, previous) = match cached {
            Some(cached) => cached,
            None => {
                let created = match version.created {
                    Some(created) => Some(created),
                    None if policy.rotate.is_some() || delivers_jwks(policy) => {
                        store.version_info(&policy.secret, &version.id).await.ok().and_then(|info| info.created)
                    }
                    None => None,
                };
                let previous = if delivers_jwks(policy) {
                    previous_public(store.as_ref(), policy, &version.id).await
                } else {
                    None
                };
                let known = Known::Current { version: version.id.clone(), created, previous: previous.clone() };
                self.shared.known().insert(policy.name.clone(), known);
                (created, previous)
            }
        };
        // The previous key stays listed during its grace; a pull-only policy lists it while
        // the store keeps it enabled.
        let previous = previous.filter(|_| match (&policy.rotate, created) {
            (Some(rotate), Some(created)) => in_grace(created, rotate.grace, SystemTime::now()),
            _ => true,
        });
        // Template secrets: one access each per poll, like the policy's own secret.
        let mut extras = BTreeMap::new();
        for (name, extra) in &policy.extras {
            let version = self.stores[&extra.store].access(&extra.secret, &Selector::current()).await?;
            extras.insert(name.clone(), version);
        }
        Ok(Fetched { version, previous, extras })
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
        self.shared
            .metrics
            .deliveries
            .get_or_create(&PolicyResult { policy: policy.name.clone(), result: "error" })
            .inc();
        summary.failed.push(policy.name.clone());
        summary.failed_required += usize::from(policy.required);
        let checked = status::now();
        let mut first = false;
        let error = message.clone();
        self.shared.update_status(policy, |s| {
            s.checked_at = Some(checked);
            s.last_error = Some(message);
            s.consecutive_failures += 1;
            first = s.consecutive_failures == 1;
        });
        // One event when a policy starts failing, not one per failed poll during an outage.
        if first {
            self.shared.report(
                events::Kind::Failed,
                "error",
                policy,
                events::Facts { error: Some(error), ..events::Facts::default() },
            );
        }
    }

    /// Writes every bundle that the pulled versions change, one write per bundle.
    fn deliver(&self, pulled: Vec<Pulled<'_>>, summary: &mut SyncSummary) {
        let bundles = self.config.bundles();
        let mut writer = self.shared.writer();
        let mut updates: BTreeMap<&str, Vec<(&Policy, PolicyUpdate)>> = BTreeMap::new();
        let mut outcome: BTreeMap<&str, Result<bool, String>> = BTreeMap::new();
        for Pulled { policy, fetched, .. } in &pulled {
            outcome.insert(&policy.name, Ok(false));
            let inputs = deliver::Inputs {
                version: &fetched.version,
                extras: &fetched.extras,
                previous: fetched.previous.as_ref(),
                node: &self.config.agent.node,
            };
            for bundle in policy.bundles() {
                let want = Fingerprint {
                    version: &fetched.version.id,
                    crc32c: inputs.crc32c(),
                    spec: deliver::spec(policy, bundle),
                    previous: fetched.previous.as_ref().map(|p| &p.version),
                };
                if writer.holds(bundle, &policy.name, &want) {
                    continue;
                }
                match deliver::render(policy, bundle, &inputs) {
                    Ok(update) => updates.entry(bundle).or_default().push((policy, update)),
                    Err(e) => {
                        outcome.insert(&policy.name, Err(error_chain(&e)));
                    }
                }
            }
        }
        for (bundle, entries) in updates {
            let plan = &bundles[bundle];
            let members: BTreeSet<&str> = plan.members.iter().map(|p| p.name.as_str()).collect();
            let (policies, entries): (Vec<&Policy>, Vec<PolicyUpdate>) =
                entries.into_iter().filter(|(p, _)| outcome.get(p.name.as_str()).is_some_and(Result::is_ok)).unzip();
            if entries.is_empty() {
                continue;
            }
            let started = Instant::now();
            match writer.write(bundle, &members, plan.access, entries) {
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
        for Pulled { policy, fetched, started } in &pulled {
            let (version, previous) = (&fetched.version, &fetched.previous);
            let outcome = outcome.remove(policy.name.as_str());
            if let Some(Ok(changed)) = &outcome {
                let metrics = &self.shared.metrics;
                let old = self
                    .shared
                    .status()
                    .policies
                    .get(&policy.name)
                    .and_then(|s| s.version.as_ref().map(ToString::to_string));
                metrics.delivered(&policy.name, old.as_deref(), version.id.as_str());
                metrics.success_now(&policy.name);
                if *changed {
                    metrics.deliveries.get_or_create(&PolicyResult { policy: policy.name.clone(), result: "ok" }).inc();
                    let facts = events::Facts {
                        version: Some(version.id.to_string()),
                        previous: old.clone(),
                        duration_ms: Some(millis(started.elapsed())),
                        ..events::Facts::default()
                    };
                    self.shared.report(events::Kind::Delivered, "ok", policy, facts);
                }
            }
            match outcome {
                Some(Ok(true)) => {
                    summary.delivered += 1;
                    if let Some(handle) = self.notify.get(&policy.name) {
                        let root = &self.config.agent.runtime_dir;
                        handle.changed(notify::Change {
                            policy: policy.name.clone(),
                            version: version.id.clone(),
                            bundles: policy.bundles().map(|b| root.join(b)).collect(),
                        });
                    }
                    let listed = previous.as_ref().map(|p| p.version.to_string());
                    tracing::info!(policy = %policy.name, secret = %policy.secret, version = %version.id, previous_listed = listed, "delivered");
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

/// One dispatcher per policy with `[notify]`, reporting into the status and the log.
fn start_dispatchers(config: &Config, shared: &Arc<Shared>) -> (HashMap<String, notify::Handle>, Vec<AbortOnDrop<()>>) {
    let mut handles = HashMap::new();
    let mut tasks = Vec::new();
    // An HTTP client (and its TLS roots) only when a policy has an http notifier: memory on
    // every node of the fleet is not spent on what a node does not use.
    let needs_http = config.policies.iter().any(|p| p.notify.as_ref().is_some_and(|n| n.http.is_some()));
    let http = needs_http.then(|| {
        reqwest::Client::builder()
            .user_agent(concat!("keyturn/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default()
    });
    // For the report callbacks, which outlive this call.
    let snapshot = Arc::new(config.clone());
    for policy in &config.policies {
        let Some(settings) = &policy.notify else { continue };
        let metrics = shared.metrics.clone();
        let config = snapshot.clone();
        let shared = Arc::downgrade(shared);
        let report: notify::Report = Arc::new(move |change, outcomes| {
            for (kind, outcome) in outcomes {
                let result = match outcome {
                    Ok(notify::Sent::Done) => "ok",
                    Ok(notify::Sent::Skipped(_)) => "skipped",
                    Err(_) => "error",
                };
                let labels = Notification { policy: change.policy.clone(), notifier: kind, result };
                metrics.notifications.get_or_create(&labels).inc();
            }
            if let (Some(shared), Some(policy)) = (shared.upgrade(), config_policy(&config, &change.policy)) {
                for (kind, outcome) in outcomes {
                    if let Err(e) = outcome {
                        let facts = events::Facts {
                            version: Some(change.version.to_string()),
                            error: Some(format!("{kind}: {e}")),
                            ..events::Facts::default()
                        };
                        shared.report(events::Kind::NotifyFailed, "error", &policy, facts);
                    }
                }
            }
            let failures: Vec<String> =
                outcomes.iter().filter_map(|(kind, r)| r.as_ref().err().map(|e| format!("{kind}: {e}"))).collect();
            for (kind, outcome) in outcomes {
                match outcome {
                    Ok(notify::Sent::Done) => {
                        tracing::info!(policy = %change.policy, version = %change.version, notifier = kind, "notified")
                    }
                    Ok(notify::Sent::Skipped(why)) => {
                        tracing::info!(policy = %change.policy, notifier = kind, reason = %why, "nothing to notify")
                    }
                    Err(e) => {
                        tracing::error!(policy = %change.policy, version = %change.version, notifier = kind, error = %e, "notification failed after every attempt")
                    }
                }
            }
            if let Some(shared) = shared.upgrade() {
                let now = status::now();
                shared.update_status_named(&change.policy, |s| {
                    s.notified_at = Some(now);
                    s.notify_error = (!failures.is_empty()).then(|| failures.join("; "));
                });
            }
        });
        let (handle, task) = notify::spawn(settings, notify::Notifier::from_config(settings, http.as_ref()), report);
        handles.insert(policy.name.clone(), handle);
        tasks.push(AbortOnDrop(task));
    }
    (handles, tasks)
}

fn config_policy(config: &Config, name: &str) -> Option<Policy> {
    config.policy(name).cloned()
}

/// The public half of the version aliased `previous`, if it is enabled and is a key.
async fn previous_public<S: SecretStore>(store: &S, policy: &Policy, current: &VersionId) -> Option<Previous> {
    match store.access(&policy.secret, &Selector::Alias(PREVIOUS.into())).await {
        Ok(version) if version.id != *current => {
            let key = PrivateKey::parse(&version.value).ok()?;
            Some(Previous { version: version.id, public: key.public_key() })
        }
        // Missing, or disabled by a revoke: not listed.
        _ => None,
    }
}

/// Whole milliseconds, for event timings.
fn millis(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
}

/// Whether the store says there is no current version to read (yet).
fn is_missing(error: &StoreError) -> bool {
    matches!(error, StoreError::NotFound { .. } | StoreError::NoSuchVersion { .. })
}
