//! The agent's work loop: pull each policy's `current` version, deliver it if it changed,
//! rotate it when it is due, and record what happened.
//!
//! The engine is generic over [`SecretStore`] and never names a backend, a notifier or a
//! format; `app` builds the stores and hands them in. Its entry points are
//! [`Engine::sync_all`], one pass over every policy with the bundle writes batched (start-up,
//! `sync --once`, a reload, SIGUSR1), and [`Engine::spawn_watchers`], one scheduler that
//! wakes each policy for the earliest of its next poll (with jitter, or backoff after a
//! failure), its rotation due time, and the end of a grace period that changes what its JWK
//! set lists (see [`watch`]). Every failure keeps the last good files: a bundle is only ever
//! replaced whole, by a complete new version. Every outcome goes to the [`Recorder`], which
//! alone writes log lines, metrics, status and events about a policy; time comes from the
//! clock in [`Seams`].
//!
//! Decisions about what a store holds (is the current version due, has the previous key's
//! grace ended) are made on that store's clock: the clock in [`Seams`] corrected by the skew
//! measured from the store's answers ([`StoreTime`]), so that a node whose clock is wrong
//! decides as the rest of the fleet does. After each read the store's clock goes to the
//! recorder (the skew metric, the status, a warning past `[agent] max_clock_skew`).
//!
//! Steady state costs one `access` per policy per poll and no metadata reads: a change is a
//! new `(version, crc32c)` for the alias, compared in memory against what the bundle holds.
//! Only when the current version changes does the engine read more: its creation time (for
//! the rotation schedule and the grace period) and the previous version's public key (for
//! JWK sets), both kept in memory per policy. Public keys and times only; never a value.

mod offline;
mod state;
#[cfg(test)]
mod tests;
mod watch;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;

use state::Known;
pub use state::{Seams, State};

use crate::clock::Clock as _;
use crate::config::{Config, Policy};
use crate::deliver::{self, Fingerprint, PolicyUpdate, Previous};
use crate::error_chain;
use crate::generate::PrivateKey;
use crate::notify;
use crate::report::recorder::{Notice, Outcome as Recorded, Recorder, Subject};
use crate::rotation::protocol::{Adoption, Outcome, Retirement, RotationError, Rotator, Step, Trigger};
use crate::rotation::schedule::in_grace;
use crate::secret::{PREVIOUS, Version, VersionId};
use crate::store::{SecretStore, Selector, StoreError, StoreTime, VersionState};
use crate::task::AbortOnDrop;

/// How many store requests the initial sync keeps in flight: enough to hide round trips to a
/// remote store, few enough not to burst a project's quota. `keyturn probe` reads the same way.
pub const SYNC_CONCURRENCY: usize = 32;

/// What one pass did, for `sync --once` and start-up logs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SyncSummary {
    pub delivered: usize,
    pub unchanged: usize,
    /// Names of the policies that failed, required or not.
    pub failed: Vec<String>,
    pub failed_required: usize,
}

/// A rotation asked for through [`Handle::rotate`], done and delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotated {
    pub version: VersionId,
    pub previous: Option<VersionId>,
    pub disabled: Vec<VersionId>,
}

/// A future the control socket can hold without knowing the engine's store type.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the control socket may ask of the running engine, and nothing more.
pub trait Handle: Send + Sync {
    /// Pulls every policy now.
    fn resync(&self) -> BoxFuture<'_, SyncSummary>;

    /// Rotates `policy` now (and, with `revoke`, disables the old value at once), telling
    /// `progress` each step, then delivers the new version. The error says why not.
    fn rotate<'a>(
        &'a self,
        policy: &'a str,
        revoke: bool,
        progress: &'a (dyn Fn(&str) + Send + Sync),
    ) -> BoxFuture<'a, Result<Rotated, String>>;
}

/// Everything one policy's files are made from, as read from its stores.
#[derive(Debug)]
struct Fetched {
    version: Version,
    /// Listed in JWK sets beside the current key: the previous key, inside its grace.
    previous: Option<Previous>,
    /// The current versions of the policy's `[secrets.NAME]`.
    extras: BTreeMap<String, Version>,
    /// The newer version on disk, when the read named an older one the same way: a lagging
    /// replica, refused (see [`Engine::newer_on_disk`]).
    older_than: Option<VersionId>,
}

type PullResult = Result<Fetched, StoreError>;

/// A policy's current version and what delivering it needs.
struct Pulled<'a> {
    policy: &'a Policy,
    fetched: Fetched,
    /// When its store read began: a delivery event's `duration_ms` counts from here to the
    /// bundle in place.
    started: Instant,
    /// When it came from the sealed cache instead of the store: when it was sealed.
    restored: Option<std::time::SystemTime>,
}

pub struct Engine<S> {
    config: Arc<Config>,
    stores: Arc<BTreeMap<String, Arc<S>>>,
    state: Arc<State>,
    seams: Seams,
    /// The notification dispatcher of each policy that has `[notify]`.
    notify: Arc<HashMap<String, notify::Handle>>,
    /// The dispatcher tasks: they stop when the last clone of this engine is dropped.
    _dispatchers: Arc<Vec<AbortOnDrop<()>>>,
    /// The fleet's view, with `[fleet]`: who still holds an old version before it is retired.
    fleet: Option<Arc<crate::fleet::Client>>,
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
            state: self.state.clone(),
            seams: self.seams.clone(),
            notify: self.notify.clone(),
            _dispatchers: self._dispatchers.clone(),
            fleet: self.fleet.clone(),
        }
    }
}

/// Which policy an outcome is about, for the recorder.
fn subject(policy: &Policy) -> Subject<'_> {
    Subject { policy: &policy.name, store: &policy.store, secret: policy.secret.as_str(), required: policy.required }
}

/// Whether one of the policy's formats lists the previous key (a JWK set does).
fn lists_previous(policy: &Policy) -> bool {
    policy.deliver.iter().any(|d| d.format.lists_previous())
}

impl<S: SecretStore + 'static> Engine<S> {
    pub fn new(config: Arc<Config>, stores: BTreeMap<String, Arc<S>>, state: Arc<State>, seams: Seams) -> Self {
        state.recorder.plan(config.policies.iter().map(subject));
        state.known().retain(|name, _| config.policy(name).is_some());
        let (notify, dispatchers) = start_dispatchers(&config, &state.recorder);
        Engine {
            config,
            stores: Arc::new(stores),
            state,
            seams,
            notify: Arc::new(notify),
            _dispatchers: Arc::new(dispatchers),
            fleet: None,
        }
    }

    /// Asks `fleet` who still holds an old version before retiring it.
    pub fn with_fleet(mut self, fleet: Option<Arc<crate::fleet::Client>>) -> Self {
        self.fleet = fleet;
        self
    }

    /// The adoption gate of `policy`'s secret, when there is a fleet to ask.
    fn adoption(&self, policy: &Policy) -> Option<crate::fleet::SecretAdoption> {
        Some(crate::fleet::SecretAdoption {
            client: self.fleet.clone()?,
            store: policy.store.clone(),
            secret: policy.secret.to_string(),
            clock: self.seams.clock.clone(),
        })
    }

    fn recorder(&self) -> &Recorder {
        &self.state.recorder
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

    /// The time on `policy`'s store's clock (see the module's opening).
    fn store_now(&self, policy: &Policy) -> std::time::SystemTime {
        StoreTime { node: self.seams.clock.as_ref(), store: self.store(policy).as_ref() }.now()
    }

    /// Tells the recorder what the store named `name` has shown of its clock.
    fn record_clock(&self, name: &str) {
        if let Some(store) = self.stores.get(name) {
            self.recorder().store_clock(name, store.clock(), self.config.agent.max_clock_skew);
        }
    }

    /// Whether this node rotates `policy` on schedule: it has `[rotate]`, and this agent takes
    /// part in rotation (`[agent] rotate`).
    fn rotates(&self, policy: &Policy) -> bool {
        policy.rotate.is_some() && self.config.agent.rotate
    }

    /// The configuration this engine runs.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// One pass over every policy: fetch all (a few at a time), bootstrap rotating secrets
    /// that have no current version yet, then write each bundle that changed once. Removes
    /// bundles that no policy delivers any more.
    pub async fn sync_all(&self) -> SyncSummary {
        let started = Instant::now();
        let bundles = self.config.bundles();
        self.state.reserve(self.config.policies.len(), bundles.len());
        // Before the first store read: a required policy whose bundle is missing (a node that
        // rebooted, its tmpfs empty) is rebuilt from its sealed entry, so applications and
        // READY need not wait for a store that may be out of reach.
        self.restore_missing();
        // At most SYNC_CONCURRENCY reads in flight, and only as many tasks: the next policy's
        // task is spawned when one finishes. (A task spawned for every policy at once, waiting
        // on a semaphore, holds its whole future from the start: at a thousand policies, a few
        // MiB at the peak of the start, which the allocator keeps as the agent's resident
        // memory long after; issue 17.)
        let total = self.config.policies.len();
        let mut fetches = JoinSet::new();
        let spawn = |fetches: &mut JoinSet<_>, index: usize| {
            let engine = self.clone();
            fetches.spawn(async move {
                let policy = &engine.config.policies[index];
                let started = Instant::now();
                (index, started, engine.pull(policy).await)
            });
        };
        let mut next = 0;
        while next < total.min(SYNC_CONCURRENCY) {
            spawn(&mut fetches, next);
            next += 1;
        }
        let mut results: Vec<(usize, Instant, PullResult)> = Vec::with_capacity(total);
        while let Some(joined) = fetches.join_next().await {
            if let Ok(result) = joined {
                results.push(result);
            }
            if next < total {
                spawn(&mut fetches, next);
                next += 1;
            }
        }
        results.sort_by_key(|(index, ..)| *index);
        for name in self.stores.keys() {
            self.record_clock(name);
        }

        let mut summary = SyncSummary::default();
        let mut pulled = Vec::new();
        for (index, started, result) in results {
            let policy = &self.config.policies[index];
            let result = match result {
                Err(e) if self.rotates(policy) && is_missing(&e) => self.bootstrap(policy).await,
                other => other,
            };
            match result {
                Ok(fetched) => pulled.push(Pulled { policy, fetched, started, restored: None }),
                Err(e) => self.read_failed(policy, &e, None, &mut summary),
            }
        }
        self.deliver(pulled, &mut summary);

        let keep: BTreeSet<&str> = bundles.keys().copied().collect();
        for removed in self.state.writer().remove_stale(&keep) {
            tracing::warn!(bundle = %removed, "removed a bundle that no policy delivers any more");
        }
        self.retire_waiting().await;
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

    /// Pulls one policy and delivers it if it changed: after a rotation through the control
    /// socket, only the rotated policy needs reading.
    pub async fn refresh(&self, name: &str) -> SyncSummary {
        match self.config.policy(name) {
            Some(policy) => self.pull_one(policy, None).await,
            None => SyncSummary::default(),
        }
    }

    /// Reads one policy and delivers it if it changed; `retry_in`, for the log, is when a
    /// failed read is tried again.
    async fn pull_one(&self, policy: &Policy, retry_in: Option<Duration>) -> SyncSummary {
        let mut summary = SyncSummary::default();
        let started = Instant::now();
        let pulled = Box::pin(self.pull(policy)).await;
        self.record_clock(&policy.store);
        match pulled {
            Ok(fetched) => self.deliver(vec![Pulled { policy, fetched, started, restored: None }], &mut summary),
            Err(e) => self.read_failed(policy, &e, retry_in, &mut summary),
        }
        summary
    }

    /// Runs the rotation protocol for `policy` and records the outcome.
    pub async fn rotate(&self, policy: &Policy, trigger: Trigger) -> Result<Outcome, RotationError> {
        self.rotate_with(policy, trigger, &|_, _| {}).await
    }

    /// [`Engine::rotate`], telling `progress` each step as it completes.
    pub async fn rotate_with(
        &self,
        policy: &Policy,
        trigger: Trigger,
        progress: &(dyn Fn(Step, &str) + Send + Sync),
    ) -> Result<Outcome, RotationError> {
        let rotate = policy.rotate.as_ref().expect("only rotating policies are rotated");
        let turn = self.state.rotation_turn(&policy.name);
        let _turn = turn.lock().await;
        let started = Instant::now();
        // A new value must render into every file with the template secrets as they are now.
        let adoption = self.adoption(policy);
        let result = match self.template_secrets(policy).await {
            Ok(extras) => {
                let node = &self.config.agent.node;
                let deliverable = |version: &Version| deliver::check_renders(policy, version, &extras, node);
                let rotator = Rotator {
                    store: self.store(policy).as_ref(),
                    policy,
                    rotate,
                    node,
                    pid: std::process::id(),
                    pause_at: self.seams.pause_at.as_deref(),
                    progress,
                    clock: self.seams.clock.as_ref(),
                    deliverable: &deliverable,
                    retire: rotate.retire(self.config.fleet.is_some()),
                    adoption: adoption.as_ref().map(|a| a as &dyn Adoption),
                };
                rotator.run(trigger).await
            }
            Err(source) => Err(RotationError::Store { step: Step::Check, source }),
        };
        let took = started.elapsed();
        match &result {
            Ok(Outcome::Rotated { version, previous, disabled, retirements }) => {
                // The next pull reads the new current version's details afresh.
                self.state.known().remove(&policy.name);
                let revoked = trigger == Trigger::Revoke;
                let outcome = Recorded::Rotated { version, previous: previous.as_ref(), disabled, revoked, took };
                self.recorder().record(subject(policy), outcome);
                self.retirements(policy, retirements);
            }
            Ok(Outcome::Busy { holder }) => self.recorder().record(subject(policy), Recorded::RotationBusy { holder }),
            Ok(Outcome::NotDue { .. } | Outcome::Present { .. }) => {}
            Err(e) => {
                let error = error_chain(e);
                self.recorder().record(subject(policy), Recorded::RotationFailed { error: &error, took });
            }
        }
        result
    }

    /// Records what cleanup decided about each old version; a retirement that waits is tried
    /// again at the next poll ([`Engine::retire_waiting`]).
    fn retirements(&self, policy: &Policy, retirements: &[Retirement]) {
        for retirement in retirements {
            if retirement.disabled() {
                self.purge_cached(policy, &retirement.version);
            }
            self.recorder().record(subject(policy), Recorded::Retirement(retirement));
        }
        let waits = retirements.iter().any(|r| !r.disabled());
        let mut retiring = self.state.retiring();
        if waits {
            retiring.insert(policy.name.clone())
        } else {
            retiring.remove(&policy.name)
        };
    }

    /// Tries again every retirement that waited for the fleet (see [`Engine::retire_waiting_of`]).
    async fn retire_waiting(&self) {
        let waiting: Vec<String> = self.state.retiring().iter().cloned().collect();
        for name in waiting {
            match self.config.policy(&name) {
                Some(policy) => self.retire_waiting_of(policy).await,
                None => {
                    self.state.retiring().remove(&name);
                }
            }
        }
    }

    /// Tries again the retirements of `policy` that waited for the fleet, if any: a node caught
    /// up, went silent for good, or `adoption_timeout` ran out. At every poll while one waits;
    /// no lease, since disabling is idempotent.
    pub(super) async fn retire_waiting_of(&self, policy: &Policy) {
        if !self.state.retiring().contains(&policy.name) {
            return;
        }
        let Some(rotate) = policy.rotate.as_ref().filter(|_| self.rotates(policy)) else {
            self.state.retiring().remove(&policy.name);
            return;
        };
        let turn = self.state.rotation_turn(&policy.name);
        let _turn = turn.lock().await;
        let adoption = self.adoption(policy);
        let rotator = Rotator {
            store: self.store(policy).as_ref(),
            policy,
            rotate,
            node: &self.config.agent.node,
            pid: std::process::id(),
            pause_at: None,
            progress: &|_, _| {},
            clock: self.seams.clock.as_ref(),
            deliverable: &|_| Ok(()),
            retire: rotate.retire(self.config.fleet.is_some()),
            adoption: adoption.as_ref().map(|a| a as &dyn Adoption),
        };
        match rotator.retire_old().await {
            Ok(retirements) => self.retirements(policy, &retirements),
            Err(e) => {
                tracing::warn!(policy = %policy.name, error = %error_chain(&e), "cannot try the waiting retirements; again at the next poll")
            }
        }
    }

    /// The current versions of the policy's `[secrets.NAME]`, which its templates use.
    async fn template_secrets(&self, policy: &Policy) -> Result<BTreeMap<String, Version>, StoreError> {
        let mut extras = BTreeMap::new();
        for (name, extra) in &policy.extras {
            extras.insert(name.clone(), self.stores[&extra.store].access(&extra.secret, &Selector::current()).await?);
        }
        Ok(extras)
    }

    /// Reads the version the policy delivers (`current`, unless it says otherwise), and (only
    /// when it changed) its creation time and the previous public key. Returns the version and
    /// the previous key if the JWK set lists it.
    async fn pull(&self, policy: &Policy) -> PullResult {
        let store = self.store(policy);
        let version = match store.access(&policy.secret, &policy.version).await {
            Ok(version) => version,
            Err(e) => {
                if is_missing(&e) {
                    self.state.known().insert(policy.name.clone(), Known::Missing);
                }
                if let StoreError::NotEnabled { version, .. } = &e {
                    // Disabled or destroyed: it must not come back from the cache either.
                    self.purge_cached(policy, version);
                }
                return Err(e);
            }
        };
        if let Some(held) = self.newer_on_disk(policy, &version.id) {
            // Refused, unless what is on disk may no longer be read (retired or revoked since:
            // then the older version is the store's deliberate answer). By number, which is
            // strongly consistent.
            let retired = matches!(
                store.version_info(&policy.secret, &held).await,
                Ok(info) if info.state != VersionState::Enabled
            );
            if !retired {
                return Ok(Fetched { version, previous: None, extras: BTreeMap::new(), older_than: Some(held) });
            }
        }
        let cached = match self.state.known().get(&policy.name) {
            Some(Known::Current { version: known, created, previous }) if *known == version.id => {
                Some((*created, previous.as_deref().cloned()))
            }
            _ => None,
        };
        let (created, previous) = match cached {
            Some(cached) => cached,
            None => {
                let created = match version.created {
                    Some(created) => Some(created),
                    None if policy.rotate.is_some() || lists_previous(policy) => {
                        store.version_info(&policy.secret, &version.id).await.ok().and_then(|info| info.created)
                    }
                    None => None,
                };
                // `previous` is the version before `current`: only a policy that delivers
                // `current` has one to list.
                let previous = if lists_previous(policy) && policy.version == Selector::current() {
                    previous_public(store.as_ref(), policy, &version.id).await
                } else {
                    None
                };
                let known =
                    Known::Current { version: version.id.clone(), created, previous: previous.clone().map(Box::new) };
                self.state.known().insert(policy.name.clone(), known);
                (created, previous)
            }
        };
        // The previous key stays listed during its grace; a pull-only policy lists it while
        // the store keeps it enabled.
        let now = self.store_now(policy);
        let previous = previous.filter(|_| match (&policy.rotate, created) {
            (Some(rotate), Some(created)) => in_grace(created, rotate.grace, now),
            _ => true,
        });
        // Template secrets: one access each per poll, like the policy's own secret.
        let extras = self.template_secrets(policy).await?;
        Ok(Fetched { version, previous, extras, older_than: None })
    }

    /// The version on disk for `policy`, if `read` is older and was chosen the same way (the
    /// policy's `version` unchanged since that delivery): versions never go backwards because
    /// a read said so. A pinned number is a decision, never refused; versions that are not
    /// numbers cannot be ordered, and are not refused either.
    fn newer_on_disk(&self, policy: &Policy, read: &VersionId) -> Option<VersionId> {
        if matches!(policy.version, Selector::Id(_)) {
            return None;
        }
        let mut writer = self.state.writer();
        let bundle = policy.bundles().next()?;
        let delivered = writer.manifest(bundle).policies.get(&policy.name)?;
        let older = matches!((read.number(), delivered.version.number()), (Some(r), Some(d)) if r < d);
        let same_choice = || delivered.read.as_deref().is_none_or(|r| r == policy.version.to_string());
        (older && same_choice()).then(|| delivered.version.clone())
    }

    fn read_failed(&self, policy: &Policy, error: &StoreError, retry_in: Option<Duration>, summary: &mut SyncSummary) {
        let error = error_chain(error);
        self.recorder().record(subject(policy), Recorded::ReadFailed { error: &error, retry_in });
        summary.failed.push(policy.name.clone());
        summary.failed_required += usize::from(policy.required);
    }

    /// Writes every bundle that the pulled versions change, one write per bundle.
    fn deliver(&self, pulled: Vec<Pulled<'_>>, summary: &mut SyncSummary) {
        let bundles = self.config.bundles();
        let mut writer = self.state.writer();
        // Which bundles change, and for which policies: references only. A policy's files are
        // rendered when its bundle is written, so that a sync holds the rendered files of one
        // bundle at a time, not of every policy at once (at a thousand policies, about a MiB
        // at the start's peak, which the allocator keeps resident; issue 17). A policy that
        // delivers into several bundles is rendered for all of them first: one that fails to
        // render anywhere is written nowhere.
        let mut wanted: BTreeMap<&str, Vec<(&Policy, usize)>> = BTreeMap::new();
        let mut rendered: BTreeMap<(&str, &str), PolicyUpdate> = BTreeMap::new();
        let mut outcome: BTreeMap<&str, Result<bool, String>> = BTreeMap::new();
        let node = &self.config.agent.node;
        for (index, Pulled { policy, fetched, .. }) in pulled.iter().enumerate() {
            if fetched.older_than.is_some() {
                continue;
            }
            outcome.insert(&policy.name, Ok(false));
            let inputs = inputs_of(fetched, node);
            let several = policy.bundles().nth(1).is_some();
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
                wanted.entry(bundle).or_default().push((policy, index));
                if several {
                    match deliver::render(policy, bundle, &inputs) {
                        Ok(update) => {
                            rendered.insert((bundle, policy.name.as_str()), update);
                        }
                        Err(e) => {
                            outcome.insert(&policy.name, Err(error_chain(&e)));
                        }
                    }
                }
            }
        }
        for (bundle, wanting) in wanted {
            let plan = &bundles[bundle];
            let members: BTreeSet<&str> = plan.members.iter().map(|p| p.name.as_str()).collect();
            let mut policies = Vec::with_capacity(wanting.len());
            let mut entries = Vec::with_capacity(wanting.len());
            for (policy, index) in wanting {
                if !outcome.get(policy.name.as_str()).is_some_and(Result::is_ok) {
                    continue;
                }
                let update = match rendered.remove(&(bundle, policy.name.as_str())) {
                    Some(update) => update,
                    None => match deliver::render(policy, bundle, &inputs_of(&pulled[index].fetched, node)) {
                        Ok(update) => update,
                        Err(e) => {
                            outcome.insert(&policy.name, Err(error_chain(&e)));
                            continue;
                        }
                    },
                };
                policies.push(policy);
                entries.push(update);
            }
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

        for Pulled { policy, fetched, started, restored } in &pulled {
            let version = &fetched.version.id;
            if let Some(held) = &fetched.older_than {
                summary.unchanged += 1;
                self.recorder().record(subject(policy), Recorded::OlderRefused { read: version, held });
                continue;
            }
            match outcome.remove(policy.name.as_str()) {
                Some(Ok(true)) => {
                    summary.delivered += 1;
                    let previous_listed = fetched.previous.as_ref().map(|p| &p.version);
                    let took = started.elapsed();
                    let outcome = match restored {
                        Some(sealed_at) => Recorded::Restored { version, sealed_at: *sealed_at },
                        None => Recorded::Delivered { version, previous_listed, took },
                    };
                    self.recorder().record(subject(policy), outcome);
                    if restored.is_none() {
                        self.seal(policy, fetched);
                    }
                    if let Some(handle) = self.notify.get(&policy.name) {
                        let root = &self.config.agent.runtime_dir;
                        handle.changed(notify::Change {
                            policy: policy.name.clone(),
                            version: version.clone(),
                            bundles: policy.bundles().map(|b| root.join(b)).collect(),
                        });
                    }
                }
                Some(Ok(false)) => {
                    summary.unchanged += 1;
                    if restored.is_none() {
                        self.recorder().record(subject(policy), Recorded::Unchanged { version });
                        self.seal(policy, fetched);
                    }
                }
                Some(Err(error)) => {
                    self.recorder().record(subject(policy), Recorded::DeliveryFailed { version, error: &error });
                    summary.failed.push(policy.name.clone());
                    summary.failed_required += usize::from(policy.required);
                }
                None => {}
            }
        }
    }
}

/// What a policy's formats are rendered from, for a version read from its store.
fn inputs_of<'a>(fetched: &'a Fetched, node: &'a str) -> deliver::Inputs<'a> {
    deliver::Inputs { version: &fetched.version, extras: &fetched.extras, previous: fetched.previous.as_ref(), node }
}

impl<S: SecretStore + 'static> Handle for Engine<S> {
    fn resync(&self) -> BoxFuture<'_, SyncSummary> {
        Box::pin(self.sync_all())
    }

    fn rotate<'a>(
        &'a self,
        name: &'a str,
        revoke: bool,
        progress: &'a (dyn Fn(&str) + Send + Sync),
    ) -> BoxFuture<'a, Result<Rotated, String>> {
        Box::pin(async move {
            let Some(policy) = self.config.policy(name).filter(|p| p.rotate.is_some()) else {
                return Err(format!("no rotating policy named \"{name}\" in the running configuration"));
            };
            let report = |step: Step, detail: &str| progress(&format!("[{}/{}] {detail}", step.number(), Step::COUNT));
            let trigger = if revoke { Trigger::Revoke } else { Trigger::Now };
            match self.rotate_with(policy, trigger, &report).await {
                Ok(Outcome::Rotated { version, previous, disabled, .. }) => {
                    // Deliver it at once, not at the next poll; only this policy changed.
                    self.refresh(&policy.name).await;
                    Ok(Rotated { version, previous, disabled })
                }
                Ok(Outcome::Busy { holder }) => Err(format!("another rotation holds the lease ({holder})")),
                Ok(Outcome::NotDue { .. }) => Err("not due".into()),
                Ok(Outcome::Present { current }) => Err(format!("version {current} is current already")),
                Err(e) => Err(error_chain(&e)),
            }
        })
    }
}

/// One dispatcher per policy with `[notify]`, reporting what it did to the recorder.
fn start_dispatchers(
    config: &Config,
    recorder: &Arc<Recorder>,
) -> (HashMap<String, notify::Handle>, Vec<AbortOnDrop<()>>) {
    let mut handles = HashMap::new();
    let mut tasks = Vec::new();
    let resources = notify::Resources::default();
    for policy in &config.policies {
        let Some(settings) = &policy.notify else { continue };
        let recorder = Arc::downgrade(recorder);
        let (store, secret, required) = (policy.store.clone(), policy.secret.to_string(), policy.required);
        let report: notify::Report = Arc::new(move |change, outcomes| {
            let Some(recorder) = recorder.upgrade() else { return };
            let results: Vec<(&'static str, Notice<'_>)> = outcomes
                .iter()
                .map(|(kind, outcome)| {
                    let notice = match outcome {
                        Ok(notify::Sent::Done) => Notice::Sent,
                        Ok(notify::Sent::Skipped(why)) => Notice::Skipped(why),
                        Err(e) => Notice::Failed(e),
                    };
                    (*kind, notice)
                })
                .collect();
            let subject = Subject { policy: &change.policy, store: &store, secret: &secret, required };
            recorder.record(subject, Recorded::Notified { version: &change.version, results: &results });
        });
        let (handle, task) = notify::spawn(settings, notify::Notifier::from_config(settings, &resources), report);
        handles.insert(policy.name.clone(), handle);
        tasks.push(AbortOnDrop(task));
    }
    (handles, tasks)
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

/// Whether the store says there is no current version to read (yet).
fn is_missing(error: &StoreError) -> bool {
    matches!(error, StoreError::NotFound { .. } | StoreError::NoSuchVersion { .. })
}
