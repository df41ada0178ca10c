//! The staged rotation protocol, on any store that implements [`SecretStore`].
//!
//! 1. **Lease** (fleet-owned secrets): write `keyturn.lease` with the secret's etag. If the
//!    swap fails or a live lease is held elsewhere, another node is rotating: back off.
//! 2. **Add**: generate a value, add it as a version, point `pending` at it.
//! 3. **Check**: the value parses and matches its kind; every file the policy delivers renders
//!    from it (a value a format refuses would leave every node on the old one); the policy's
//!    `check` command, if any, gets it on stdin and must exit 0. A failure discards the
//!    pending version.
//! 4. **Promote**, in one compare-and-swap: `current` = new, `previous` = old current,
//!    `pending` dropped, lease released.
//! 5. **Clean up**: disable versions that are neither current nor previous, beyond the `keep`
//!    newest enabled ones, once their grace has passed and (with `retire = "after-adoption"`,
//!    the default when the agent has a `[fleet]`) once no live node still holds them, as the
//!    fleet's metrics say ([`Adoption`]); a retirement that waits is tried again at every poll
//!    ([`Rotator::retire_old`]), up to `adoption_timeout`. With `--revoke`, the old current is
//!    disabled at once, whoever holds it.
//!
//! Nodes deliver `current` only, so a crash at any step leaves every node with a valid value.
//! A lease outlives its holder by at most its TTL (or not at all on the holder's own node), and
//! the next rotator finishes a stale `pending` that passes its check or discards it. Under the
//! lease, the due time is checked again against the store, so a fleet that was due at the
//! same moment makes exactly one new version.
//!
//! **Time is the store's.** Due times come from the creation time the store stamped on the
//! current version, and a lease's `until` is read by every node of the fleet: both are
//! compared with the store's clock ([`StoreTime`]: this node's clock corrected by the skew
//! measured from the store's answers), never with this node's alone. A node whose clock runs a
//! day ahead then neither rotates a fleet's secret a day early nor takes a live lease as
//! expired. Until a remote store's clock has been measured (no answer yet), a fleet rotation is
//! not started: [`RotationError::StoreClockUnknown`].
//!
//! Every step is logged with policy, secret, versions and node; never a value.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use super::lease::{self, Lease};
use super::schedule::{in_grace, next_rotation, node_unit};
use crate::clock::Clock;
use crate::config::{OnAdoptionTimeout, Owner, Policy, Retire, Rotate};
use crate::secret::{CURRENT, PENDING, SecretBytes, SecretId, Version, VersionId};
use crate::store::{
    AliasMove, SecretMeta, SecretStore, SecretUpdate, Selector, StoreClock, StoreError, StoreTime, VersionState,
};

/// What started a rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The schedule: rotates only if the store says the current version is due.
    Scheduled,
    /// `keyturn rotate --now`: rotates whatever the schedule says.
    Now,
    /// `keyturn rotate --now --revoke`: and disables the old value at once, skipping its grace.
    Revoke,
    /// A node found no version to deliver: makes the first one, unless another node made it
    /// while this one waited for the lease. Checked under the lease, so a fleet that starts
    /// together on a new secret makes exactly one first version.
    Missing,
}

/// The five steps, for progress lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Lease,
    Add,
    Check,
    Promote,
    Cleanup,
}

impl Step {
    pub fn number(self) -> u8 {
        self as u8 + 1
    }

    pub const COUNT: u8 = 5;
}

/// Who still holds a version of this policy's secret, as the fleet reports it (implemented by
/// `crate::fleet` over Prometheus' API, so this module needs no HTTP).
#[async_trait::async_trait]
pub trait Adoption: Send + Sync {
    async fn holders(&self, version: &VersionId) -> Result<Holders, String>;
}

/// The nodes that hold a version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holders {
    /// Reporting now, or silent for less than `[fleet] silent_after`: waited for.
    pub live: Vec<String>,
    /// Silent for longer: counted as gone, named, not waited for.
    pub gone: Vec<String>,
}

/// What cleanup decided about one old version, with what the fleet said about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retirement {
    pub version: VersionId,
    pub decision: Decision,
    /// `None` when the fleet was not asked (retiring after the grace alone).
    pub holders: Option<Result<Holders, String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Disabled: past its grace and (if asked) held by no live node.
    Retired,
    /// Disabled although live nodes held it: `adoption_timeout` ran out and the policy says
    /// `on_adoption_timeout = "retire"`.
    RetiredAfterWait,
    /// Disabled at once by `--revoke`, without asking anyone.
    Revoked,
    /// Kept enabled: live nodes hold it, or the fleet could not be asked. `since`: when its
    /// grace ended; `timed_out`: waiting longer than `adoption_timeout`.
    Waiting { since: SystemTime, timed_out: bool },
}

impl Retirement {
    pub fn disabled(&self) -> bool {
        !matches!(self.decision, Decision::Waiting { .. })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Rotated {
        version: VersionId,
        previous: Option<VersionId>,
        disabled: Vec<VersionId>,
        /// Every old version cleanup decided about, disabled or waiting.
        retirements: Vec<Retirement>,
    },
    NotDue {
        due: SystemTime,
    },
    /// Another node holds the lease (its annotation, for the message).
    Busy {
        holder: String,
    },
    /// [`Trigger::Missing`], but the secret has an enabled current version by now.
    Present {
        current: VersionId,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    #[error("{step:?} step: {source}")]
    Store {
        step: Step,
        #[source]
        source: StoreError,
    },
    #[error("cannot generate a new value: {0}")]
    Generate(String),
    #[error("version {version} failed its check and was discarded: {reason}")]
    Check { version: VersionId, reason: String },
    #[error(
        "the rotation lease was lost (it ran out and another node took it over?); version {version} was not promoted"
    )]
    LostLease { version: VersionId },
    /// A fleet rotation waits until the store's clock is known: its due time and the lease are
    /// judged on it.
    #[error(
        "the clock of store \"{store}\" is not measured yet (no answer of its has carried a Date); a fleet rotation \
         waits for it, since due times and leases are judged on the store's clock, not this node's"
    )]
    StoreClockUnknown { store: String },
}

/// One rotation attempt of one policy.
pub struct Rotator<'a, S> {
    pub store: &'a S,
    pub policy: &'a Policy,
    pub rotate: &'a Rotate,
    pub node: &'a str,
    pub pid: u32,
    /// Test seam: `rotate:STEP` stops the process forever after STEP (see `Rotator::pause`).
    pub pause_at: Option<&'a str>,
    /// Told each step as it completes: the agent logs it, `keyturn rotate` prints it.
    pub progress: &'a (dyn Fn(Step, &str) + Send + Sync),
    /// This node's clock. Due times, lease expiry and grace ends are decided on the store's
    /// clock: this one corrected by the store's measured skew ([`StoreTime`]).
    pub clock: &'a dyn Clock,
    /// When old versions are disabled (the policy's `retire`, resolved).
    pub retire: Retire,
    /// Who to ask whether a version is still held; `None` without `[fleet]`.
    pub adoption: Option<&'a dyn Adoption>,
    /// Whether a value can be delivered: every file of the policy renders from it (see
    /// `deliver::check_renders`). Part of the check step.
    pub deliverable: &'a (dyn Fn(&Version) -> Result<(), String> + Send + Sync),
}

impl<S> std::fmt::Debug for Rotator<'_, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rotator").field("policy", &self.policy.name).field("node", &self.node).finish_non_exhaustive()
    }
}

/// The names of the pause points, in order.
pub const PAUSE_POINTS: &[&str] = &["leased", "added", "pending", "checked", "promoted", "cleaned"];

impl<S: SecretStore> Rotator<'_, S> {
    fn id(&self) -> &SecretId {
        &self.policy.secret
    }

    fn fleet(&self) -> bool {
        self.rotate.owner == Owner::Fleet
    }

    /// The store's time now (see the module's opening).
    fn now(&self) -> SystemTime {
        StoreTime { node: self.clock, store: self.store }.now()
    }

    fn err(step: Step) -> impl FnOnce(StoreError) -> RotationError {
        move |source| RotationError::Store { step, source }
    }

    fn pause(&self, point: &str) {
        if self.pause_at.and_then(|p| p.strip_prefix("rotate:")) == Some(point) {
            eprintln!("keyturn: paused at rotate:{point}");
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
    }

    async fn describe(&self, step: Step) -> Result<SecretMeta, RotationError> {
        self.store.describe(self.id()).await.map_err(Self::err(step))
    }

    pub async fn run(&self, trigger: Trigger) -> Result<Outcome, RotationError> {
        self.run_with(trigger, None).await
    }

    /// `keyturn rollback`: the protocol of an immediate rotation, with `value` (an older
    /// version's) as the new version instead of a generated one. A pending version left by an
    /// interrupted rotation is discarded, not finished: it is not what was asked for.
    pub async fn rollback(&self, value: &SecretBytes) -> Result<Outcome, RotationError> {
        self.run_with(Trigger::Now, Some(value)).await
    }

    async fn run_with(&self, trigger: Trigger, value: Option<&SecretBytes>) -> Result<Outcome, RotationError> {
        let id = self.id();
        let meta = match self.store.describe(id).await {
            Ok(meta) => meta,
            // A secret that does not exist yet: create it empty, so the lease can be taken
            // before its first version exists.
            Err(StoreError::NotFound { .. }) => {
                self.store.create(id).await.map_err(Self::err(Step::Lease))?;
                self.describe(Step::Lease).await?
            }
            Err(e) => return Err(Self::err(Step::Lease)(e)),
        };
        if !self.fleet() {
            return self.rotate_leased(meta, trigger, None, value).await;
        }
        // The read above was an answer: only a store that carries no time is still unmeasured.
        if self.store.clock() == StoreClock::Unmeasured {
            return Err(RotationError::StoreClockUnknown { store: self.policy.store.clone() });
        }
        // Not due by what the first read says: no lease taken, no write. Under the lease the
        // due time is checked again (another node may have rotated in between).
        if trigger == Trigger::Scheduled
            && let Some(due) = self.due(&meta).await?
            && self.now() < due
        {
            return Ok(Outcome::NotDue { due });
        }

        let now = self.now();
        if let Err(holder) = lease::may_take(
            meta.annotations.get(lease::ANNOTATION).map(String::as_str),
            self.node,
            self.pid,
            now,
            crate::sys::process_exists,
        ) {
            return Ok(Outcome::Busy { holder });
        }
        let lease = Lease::new(self.node, self.pid, now, self.rotate.lease);
        let take = SecretUpdate {
            set_annotations: BTreeMap::from([(lease::ANNOTATION.to_string(), lease.encode())]),
            ..SecretUpdate::default()
        };
        match self.store.update(id, &meta, &take).await {
            Ok(_) => {}
            Err(StoreError::Conflict { .. }) => {
                return Ok(Outcome::Busy { holder: "another node (the secret changed as the lease was taken)".into() });
            }
            Err(e) => return Err(Self::err(Step::Lease)(e)),
        }
        tracing::info!(policy = %self.policy.name, secret = %id, node = %self.node, until = %humantime::format_rfc3339_seconds(lease.until), "rotation lease taken");
        (self.progress)(
            Step::Lease,
            &format!("lease taken by {} until {}", self.node, humantime::format_rfc3339_seconds(lease.until)),
        );
        self.pause("leased");

        let meta = self.describe(Step::Lease).await?;
        let result = self.rotate_leased(meta, trigger, Some(&lease), value).await;
        // Promotion releases the lease with the same swap; any other ending releases it here.
        if !matches!(result, Ok(Outcome::Rotated { .. })) {
            self.release(&lease).await;
        }
        result
    }

    /// Drops our lease, if it is still ours. Best effort: an unreleased lease expires.
    async fn release(&self, ours: &Lease) {
        let Ok(meta) = self.store.describe(self.id()).await else { return };
        if meta.annotations.get(lease::ANNOTATION) != Some(&ours.encode()) {
            return;
        }
        let drop = SecretUpdate { remove_annotations: vec![lease::ANNOTATION.into()], ..SecretUpdate::default() };
        match self.store.update(self.id(), &meta, &drop).await {
            Ok(_) => {
                tracing::info!(policy = %self.policy.name, secret = %self.id(), node = %self.node, "rotation lease released")
            }
            Err(e) => {
                tracing::warn!(policy = %self.policy.name, error = %e, "cannot release the rotation lease; it expires on its own")
            }
        }
    }

    /// When the current version is due for rotation; `None` if there is none, or the store
    /// does not say when it was made.
    async fn due(&self, meta: &SecretMeta) -> Result<Option<SystemTime>, RotationError> {
        let Some(current) = meta.aliases.get(CURRENT) else { return Ok(None) };
        let info = self.store.version_info(self.id(), current).await.map_err(Self::err(Step::Lease))?;
        Ok(info.created.map(|created| {
            let unit = node_unit(self.node, self.id().as_str(), current.as_str());
            next_rotation(&self.rotate.schedule, created, self.rotate.jitter, unit)
        }))
    }

    /// The fence: every write after the lease is a compare-and-swap against a read that must
    /// still carry our lease. A rotator whose lease ran out (a frozen VM, a slow check) and was
    /// taken over stops here instead of promoting over the new holder.
    fn still_ours(meta: &SecretMeta, lease: Option<&Lease>, version: &VersionId) -> Result<(), RotationError> {
        match lease {
            Some(lease) if meta.annotations.get(lease::ANNOTATION) != Some(&lease.encode()) => {
                Err(RotationError::LostLease { version: version.clone() })
            }
            _ => Ok(()),
        }
    }

    async fn rotate_leased(
        &self,
        mut meta: SecretMeta,
        trigger: Trigger,
        lease: Option<&Lease>,
        value: Option<&SecretBytes>,
    ) -> Result<Outcome, RotationError> {
        let id = self.id();
        let current = meta.aliases.get(CURRENT).cloned();
        if trigger == Trigger::Missing
            && let Some(current) = &current
        {
            // A current alias on a disabled or destroyed version is as good as none.
            let info = self.store.version_info(id, current).await.map_err(Self::err(Step::Lease))?;
            if info.state == VersionState::Enabled {
                return Ok(Outcome::Present { current: current.clone() });
            }
        }
        if trigger == Trigger::Scheduled
            && let Some(due) = self.due(&meta).await?
            && self.now() < due
        {
            return Ok(Outcome::NotDue { due });
        }

        let resumed = match meta.aliases.get(PENDING).cloned() {
            Some(pending) if Some(&pending) != current.as_ref() && value.is_some() => {
                tracing::warn!(policy = %self.policy.name, secret = %id, node = %self.node, version = %pending, "discarding a pending version left by an interrupted rotation: a rollback promotes the value asked for");
                self.discard(&pending).await;
                meta = self.describe(Step::Add).await?;
                None
            }
            Some(pending) if Some(&pending) != current.as_ref() => {
                let resumed = self.resume(&pending).await;
                if resumed.is_none() {
                    meta = self.describe(Step::Add).await?;
                }
                resumed
            }
            _ => None,
        };
        let version = match resumed {
            Some(version) => version,
            None => self.add_pending(&mut meta, lease, value).await?,
        };

        // 4. Promote, and release the lease in the same swap.
        let meta = self.describe(Step::Promote).await?;
        Self::still_ours(&meta, lease, &version)?;
        let old = meta.aliases.get(CURRENT).cloned();
        // A leaked value must not be `previous` even for a moment: a node reading the secret
        // between this swap and the disable below would keep it in its verification set for
        // the whole grace. With no old current to name, the swap drops `previous`.
        let named_previous = if trigger == Trigger::Revoke { None } else { old.as_ref() };
        let mut promote = SecretUpdate::aliases(AliasMove::promote(&version, named_previous));
        if self.fleet() {
            promote.remove_annotations.push(lease::ANNOTATION.into());
        }
        match self.store.update(id, &meta, &promote).await {
            Ok(_) => {}
            Err(StoreError::Conflict { .. }) => return Err(RotationError::LostLease { version }),
            Err(e) => return Err(Self::err(Step::Promote)(e)),
        }
        let revoked = if trigger == Trigger::Revoke { old.as_ref() } else { None };
        let previous_text = named_previous.map_or("none".to_string(), ToString::to_string);
        tracing::info!(policy = %self.policy.name, secret = %id, node = %self.node, version = %version, previous = %previous_text, revoked = revoked.map(tracing::field::display), "rotation promoted");
        let revoked_text = revoked.map_or(String::new(), |r| format!(": version {r} is revoked"));
        (self.progress)(
            Step::Promote,
            &format!("version {version} is current (previous: {previous_text}{revoked_text})"),
        );
        self.pause("promoted");

        // 5. Clean up. Failures here leave extra versions enabled, never fewer: logged only.
        let retirements = match self.cleanup(&version, old.as_ref(), trigger == Trigger::Revoke).await {
            Ok(retirements) => retirements,
            Err(e) => {
                tracing::warn!(policy = %self.policy.name, secret = %id, error = %e, "cleanup of old versions failed; it is retried at the next rotation");
                Vec::new()
            }
        };
        self.pause("cleaned");
        let disabled = retirements.iter().filter(|r| r.disabled()).map(|r| r.version.clone()).collect();
        Ok(Outcome::Rotated { version, previous: old, disabled, retirements })
    }

    /// Step 5 alone, outside a rotation: the retirements that waited for the fleet are tried
    /// again (the agent does this at every poll while one waits). Takes no lease: disabling a
    /// version is idempotent, and the current and previous ones are never touched.
    pub async fn retire_old(&self) -> Result<Vec<Retirement>, RotationError> {
        let meta = self.describe(Step::Cleanup).await?;
        let Some(current) = meta.aliases.get(CURRENT) else { return Ok(Vec::new()) };
        let previous = meta.aliases.get(crate::secret::PREVIOUS);
        self.cleanup(current, previous, false).await.map_err(Self::err(Step::Cleanup))
    }

    /// A `pending` left by an interrupted rotation: finished if its value passes the check,
    /// otherwise discarded. Returns the version to promote.
    async fn resume(&self, pending: &VersionId) -> Option<VersionId> {
        let id = self.id();
        let checked = match self.store.access(id, &Selector::Id(pending.clone())).await {
            Ok(version) => self.check(&version.value, pending).await,
            Err(e) => Err(e.to_string()),
        };
        match checked {
            Ok(()) => {
                tracing::info!(policy = %self.policy.name, secret = %id, node = %self.node, version = %pending, "resuming a pending version left by an interrupted rotation");
                (self.progress)(
                    Step::Add,
                    &format!("resumed version {pending}, left pending by an interrupted rotation"),
                );
                (self.progress)(Step::Check, &format!("version {pending} checked"));
                Some(pending.clone())
            }
            Err(reason) => {
                tracing::warn!(policy = %self.policy.name, secret = %id, node = %self.node, version = %pending, %reason, "discarding a stale pending version");
                self.discard(pending).await;
                None
            }
        }
    }

    /// Steps 2 and 3: a new version, made pending and checked.
    async fn add_pending(
        &self,
        meta: &mut SecretMeta,
        lease: Option<&Lease>,
        given: Option<&SecretBytes>,
    ) -> Result<VersionId, RotationError> {
        let id = self.id();
        let value = match given {
            Some(value) => value.clone(),
            None => self.rotate.generator.generate().map_err(|e| RotationError::Generate(e.to_string()))?,
        };
        let version = self.store.add_version(id, &value).await.map_err(Self::err(Step::Add))?;
        tracing::info!(policy = %self.policy.name, secret = %id, node = %self.node, %version, generator = %self.rotate.generator.name(), "rotation added a version");
        self.pause("added");
        *meta = self.describe(Step::Add).await?;
        if let Err(lost) = Self::still_ours(meta, lease, &version) {
            // Never made pending: nobody would finish it, so it is not left enabled.
            self.discard(&version).await;
            return Err(lost);
        }
        let pending = AliasMove { set: BTreeMap::from([(PENDING.to_string(), version.clone())]), remove: Vec::new() };
        match self.store.update(id, meta, &SecretUpdate::aliases(pending)).await {
            Ok(_) => {}
            Err(StoreError::Conflict { .. }) => {
                // Taken over between the fence read and this write: never pending, so discarded.
                self.discard(&version).await;
                return Err(RotationError::LostLease { version });
            }
            Err(e) => return Err(Self::err(Step::Add)(e)),
        }
        (self.progress)(Step::Add, &format!("added version {version} as pending"));
        self.pause("pending");

        if let Err(reason) = self.check(&value, &version).await {
            self.discard(&version).await;
            return Err(RotationError::Check { version, reason });
        }
        tracing::info!(policy = %self.policy.name, secret = %id, node = %self.node, %version, "rotation checked the new version");
        (self.progress)(Step::Check, &format!("version {version} checked"));
        self.pause("checked");
        Ok(version)
    }

    /// Drops `pending` from a version that will not be promoted, and disables it.
    async fn discard(&self, version: &VersionId) {
        let id = self.id();
        if let Ok(meta) = self.store.describe(id).await
            && meta.aliases.get(PENDING) == Some(version)
        {
            let drop = AliasMove { set: BTreeMap::new(), remove: vec![PENDING.to_string()] };
            let _ = self.store.update(id, &meta, &SecretUpdate::aliases(drop)).await;
        }
        match self.store.disable(id, version).await {
            Ok(()) => {
                tracing::info!(policy = %self.policy.name, secret = %id, node = %self.node, %version, "discarded version disabled")
            }
            Err(e) => {
                tracing::warn!(policy = %self.policy.name, secret = %id, %version, error = %e, "cannot disable a discarded version")
            }
        }
    }

    /// "Parses and matches its kind", renders into every file of the policy, then the
    /// policy's own check command.
    async fn check(&self, value: &SecretBytes, version: &VersionId) -> Result<(), String> {
        self.rotate.generator.check(value).map_err(|e| e.to_string())?;
        (self.deliverable)(&Version::new(version.clone(), value.clone()))?;
        match &self.rotate.check {
            Some(command) => self.run_check_command(command, value, version).await,
            None => Ok(()),
        }
    }

    async fn run_check_command(
        &self,
        command: &[String],
        value: &SecretBytes,
        version: &VersionId,
    ) -> Result<(), String> {
        let env = [
            ("KEYTURN_POLICY", self.policy.name.as_str()),
            ("KEYTURN_SECRET", self.id().as_str()),
            ("KEYTURN_VERSION", version.as_str()),
        ];
        let done = crate::process::run(command, &env, Some(value.expose()), self.rotate.check_timeout)
            .await
            .map_err(|e| format!("check command {e}"))?;
        if done.status.success() {
            return Ok(());
        }
        // The command's stderr helps, unless it repeats the value it was given.
        let stderr = crate::process::stderr_tail(&done.stderr, Some(value.expose()));
        Err(format!("check command {} exited with {}: {stderr}", command[0], done.status))
    }

    /// Step 5: disables enabled versions beyond `keep` whose grace has passed (and, retiring
    /// after adoption, that no live node holds), never the current or previous one; with
    /// `revoke`, the old current at once.
    async fn cleanup(
        &self,
        current: &VersionId,
        previous: Option<&VersionId>,
        revoke: bool,
    ) -> Result<Vec<Retirement>, StoreError> {
        let id = self.id();
        let mut versions = self.store.versions(id).await?;
        // Newest first: by creation time, then by number for stores that number versions.
        versions.sort_by(|a, b| b.created.cmp(&a.created).then(b.id.number().cmp(&a.id.number())));
        let now = self.now();
        let mut retirements = Vec::new();
        let mut enabled_seen = 0;
        for (index, version) in versions.iter().enumerate() {
            if version.state != VersionState::Enabled {
                continue;
            }
            enabled_seen += 1;
            if &version.id == current || Some(&version.id) == previous || enabled_seen <= self.rotate.keep {
                continue;
            }
            // A version was replaced when the next newer one was created.
            let replaced = index.checked_sub(1).and_then(|newer| versions[newer].created);
            if replaced.is_some_and(|at| in_grace(at, self.rotate.grace, now)) {
                continue;
            }
            let grace_ended = replaced.map_or(now, |at| at + self.rotate.grace);
            let retirement = self.decide(&version.id, grace_ended, now).await;
            if retirement.disabled() {
                self.store.disable(id, &version.id).await?;
                let after_wait = retirement.decision == Decision::RetiredAfterWait;
                let live = match &retirement.holders {
                    Some(Ok(holders)) => holders.live.join(","),
                    _ => String::new(),
                };
                if after_wait {
                    tracing::warn!(policy = %self.policy.name, secret = %id, node = %self.node, version = %version.id, still_held_by = %live, "disabled a version that live nodes still hold: adoption_timeout ran out and on_adoption_timeout = \"retire\"");
                } else {
                    tracing::info!(policy = %self.policy.name, secret = %id, node = %self.node, version = %version.id, "disabled a version past its grace");
                }
                let how = if after_wait {
                    format!("adoption_timeout ran out; still held by {live}")
                } else {
                    "past its grace".into()
                };
                (self.progress)(Step::Cleanup, &format!("disabled version {} ({how})", version.id));
            } else {
                (self.progress)(
                    Step::Cleanup,
                    &format!("version {} stays enabled: {}", version.id, waiting_reason(&retirement)),
                );
            }
            retirements.push(retirement);
        }
        if revoke && let Some(old) = previous {
            // Asked only to say who is cut off: a leaked key is retired whoever holds it.
            let holders = match self.adoption {
                Some(adoption) => Some(adoption.holders(old).await),
                None => None,
            };
            self.store.disable(id, old).await?;
            let held = match &holders {
                Some(Ok(h)) if !h.live.is_empty() => {
                    format!("; still held by {} (adoption not waited for)", h.live.join(", "))
                }
                _ => String::new(),
            };
            tracing::warn!(policy = %self.policy.name, secret = %id, node = %self.node, version = %old, "REVOKED: the old version is disabled now, without grace or adoption; it leaves every verification set");
            (self.progress)(
                Step::Cleanup,
                &format!("REVOKED version {old}: disabled now, grace and adoption skipped{held}"),
            );
            retirements.push(Retirement { version: old.clone(), decision: Decision::Revoked, holders });
        }
        if retirements.is_empty() {
            (self.progress)(Step::Cleanup, "nothing to disable");
        }
        Ok(retirements)
    }

    /// Whether an old version past its grace (since `grace_ended`) may be disabled now.
    async fn decide(&self, version: &VersionId, grace_ended: SystemTime, now: SystemTime) -> Retirement {
        let Retire::AfterAdoption { timeout, on_timeout } = self.retire else {
            return Retirement { version: version.clone(), decision: Decision::Retired, holders: None };
        };
        let holders = match self.adoption {
            Some(adoption) => adoption.holders(version).await,
            None => Err("no [fleet] to ask who holds it".to_string()),
        };
        let decision = match &holders {
            Ok(holders) if holders.live.is_empty() => Decision::Retired,
            _ => {
                let timed_out = now.duration_since(grace_ended).unwrap_or_default() > timeout;
                if timed_out && on_timeout == OnAdoptionTimeout::Retire {
                    Decision::RetiredAfterWait
                } else {
                    Decision::Waiting { since: grace_ended, timed_out }
                }
            }
        };
        Retirement { version: version.clone(), decision, holders: Some(holders) }
    }
}

/// Why a retirement waits, for progress lines and the log.
pub fn waiting_reason(retirement: &Retirement) -> String {
    match &retirement.holders {
        Some(Ok(holders)) => format!("still held by {} live node(s): {}", holders.live.len(), holders.live.join(", ")),
        Some(Err(error)) => format!("the fleet cannot be asked ({error}); waiting rather than guessing"),
        None => "waiting".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::Generator;
    use crate::rotation::schedule::Schedule;
    use crate::secret::PREVIOUS;
    use crate::store::file::FileStore;
    use crate::store::file::FileStoreConfig;

    fn rotate() -> Rotate {
        Rotate {
            schedule: Schedule::Every(Duration::from_secs(3600)),
            generator: Generator::Random { bytes: 32 },
            owner: Owner::Fleet,
            grace: Duration::from_secs(60),
            keep: 2,
            lease: Duration::from_secs(30),
            jitter: Duration::ZERO,
            check: None,
            check_timeout: Duration::from_secs(5),
            retire: None,
        }
    }

    fn policy(rotate: &Rotate) -> Policy {
        Policy {
            name: "signing".into(),
            store: "dev".into(),
            secret: SecretId::new("signing-key"),
            version: crate::store::Selector::current(),
            required: true,
            deliver: Vec::new(),
            rotate: Some(rotate.clone()),
            notify: None,
            extras: BTreeMap::new(),
            max_stale: None,
        }
    }

    /// A rotator for the tests, with what most of them need: no pause, no progress, the
    /// system clock, every value deliverable, retirement after the grace alone.
    fn rotator<'a, S: SecretStore>(
        store: &'a S,
        policy: &'a Policy,
        rotate: &'a Rotate,
        node: &'a str,
    ) -> Rotator<'a, S> {
        Rotator {
            store,
            policy,
            rotate,
            node,
            pid: std::process::id(),
            pause_at: None,
            progress: &|_, _| {},
            clock: &crate::clock::SystemClock,
            deliverable: &|_| Ok(()),
            retire: Retire::AfterGrace,
            adoption: None,
        }
    }

    async fn run(store: &FileStore, node: &str, trigger: Trigger) -> Outcome {
        attempt(store, node, trigger).await.unwrap()
    }

    async fn attempt<S: SecretStore>(store: &S, node: &str, trigger: Trigger) -> Result<Outcome, RotationError> {
        let rotate = rotate();
        let policy = policy(&rotate);
        let rotator = rotator(store, &policy, &rotate, node);
        rotator.run(trigger).await
    }

    async fn open(dir: &std::path::Path) -> FileStore {
        FileStore::open("dev", &FileStoreConfig { dir: dir.join("store"), seed: None }).await.unwrap()
    }

    /// Nodes that all found the secret missing (a fleet starting on a new secret) ask one
    /// after another, as the lease lets them: the first makes version 1, the rest find it.
    /// Only a current version that cannot be delivered (disabled) is replaced.
    #[tokio::test]
    async fn a_missing_version_is_made_once_however_many_nodes_found_it_missing() {
        let tmp = tempfile::tempdir().unwrap();
        let store = open(tmp.path()).await;
        let id = SecretId::new("signing-key");

        let first = run(&store, "node-a", Trigger::Missing).await;
        assert!(
            matches!(&first, Outcome::Rotated { version, previous: None, .. } if version.as_str() == "1"),
            "{first:?}"
        );
        for node in ["node-b", "node-c"] {
            let late = run(&store, node, Trigger::Missing).await;
            assert_eq!(late, Outcome::Present { current: VersionId::new("1") });
        }
        assert_eq!(store.versions(&id).await.unwrap().len(), 1);
        let meta = store.describe(&id).await.unwrap();
        assert!(!meta.annotations.contains_key(lease::ANNOTATION), "the lease is released: {meta:?}");

        store.disable(&id, &VersionId::new("1")).await.unwrap();
        let replaced = run(&store, "node-b", Trigger::Missing).await;
        assert!(matches!(&replaced, Outcome::Rotated { version, .. } if version.as_str() == "2"), "{replaced:?}");
        // `--now` is not a missing version: it always rotates.
        let now = run(&store, "node-c", Trigger::Now).await;
        assert!(matches!(&now, Outcome::Rotated { version, .. } if version.as_str() == "3"), "{now:?}");
    }

    /// A scheduled rotation that is not due writes nothing: no lease taken and released.
    #[tokio::test]
    async fn a_rotation_that_is_not_due_writes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let store = open(tmp.path()).await;
        let id = SecretId::new("signing-key");
        run(&store, "node-a", Trigger::Now).await;
        let before = store.describe(&id).await.unwrap();
        assert!(matches!(run(&store, "node-b", Trigger::Scheduled).await, Outcome::NotDue { .. }));
        assert_eq!(store.describe(&id).await.unwrap().etag, before.etag, "not a single write");
    }

    /// `--revoke` drops `previous` in the promoting swap: no node can read the leaked version
    /// as the one still inside its grace.
    #[tokio::test]
    async fn a_revoke_leaves_no_previous_alias_and_disables_the_old_version() {
        let tmp = tempfile::tempdir().unwrap();
        let store = open(tmp.path()).await;
        let id = SecretId::new("signing-key");
        run(&store, "node-a", Trigger::Now).await;
        let revoked = run(&store, "node-a", Trigger::Revoke).await;
        assert!(
            matches!(&revoked, Outcome::Rotated { version, previous: Some(old), disabled, .. } if version.as_str() == "2" && old.as_str() == "1" && disabled == &[VersionId::new("1")]),
            "{revoked:?}"
        );
        let aliases = store.describe(&id).await.unwrap().aliases;
        assert_eq!(aliases.get(CURRENT), Some(&VersionId::new("2")));
        assert_eq!(aliases.get(PREVIOUS), None, "{aliases:?}");
        // The next ordinary rotation names a previous version again.
        run(&store, "node-a", Trigger::Now).await;
        assert_eq!(store.describe(&id).await.unwrap().aliases.get(PREVIOUS), Some(&VersionId::new("2")));
    }

    /// What a fleet says, set by the test.
    struct Fleet(std::sync::Mutex<Result<Holders, String>>);

    #[async_trait::async_trait]
    impl Adoption for Fleet {
        async fn holders(&self, _version: &VersionId) -> Result<Holders, String> {
            self.0.lock().unwrap().clone()
        }
    }

    fn holding(live: &[&str], gone: &[&str]) -> Result<Holders, String> {
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect();
        Ok(Holders { live: names(live), gone: names(gone) })
    }

    /// Retiring after adoption: a version past its grace stays enabled while a live node holds
    /// it or the fleet cannot be asked, is retired once none does (gone nodes are not waited
    /// for), is retired anyway after `adoption_timeout` only when the policy says so, and a
    /// revoke disables at once, naming who held it.
    #[tokio::test]
    async fn old_versions_are_retired_only_once_no_live_node_holds_them() {
        let tmp = tempfile::tempdir().unwrap();
        let store = open(tmp.path()).await;
        let id = SecretId::new("signing-key");
        let rotate = Rotate { grace: Duration::ZERO, ..rotate() };
        let policy = policy(&rotate);
        let fleet = Fleet(std::sync::Mutex::new(holding(&["node-c"], &[])));
        let rotator =
            |retire| Rotator { retire, adoption: Some(&fleet), ..rotator(&store, &policy, &rotate, "node-a") };
        let wait = Retire::AfterAdoption { timeout: Duration::from_secs(3600), on_timeout: OnAdoptionTimeout::Wait };
        let state = async |n: u64| store.version_info(&id, &VersionId::from(n)).await.unwrap().state;
        for _ in 0..3 {
            rotator(wait).run(Trigger::Now).await.unwrap();
        }
        // Version 1 is past its grace, beyond keep, and held by node-c: it waits.
        assert_eq!(state(1).await, VersionState::Enabled);
        let waiting = rotator(wait).retire_old().await.unwrap();
        assert!(
            matches!(&waiting[..], [Retirement { decision: Decision::Waiting { timed_out: false, .. }, .. }]),
            "{waiting:?}"
        );
        assert!(waiting_reason(&waiting[0]).contains("node-c"));

        *fleet.0.lock().unwrap() = Err("prometheus unreachable".into());
        let unknown = rotator(wait).retire_old().await.unwrap();
        assert!(matches!(unknown[0].decision, Decision::Waiting { .. }), "{unknown:?}");
        assert_eq!(state(1).await, VersionState::Enabled, "not knowing is not a reason to retire");

        // node-c moved on; node-d went silent long ago and is not waited for.
        *fleet.0.lock().unwrap() = holding(&[], &["node-d"]);
        let retired = rotator(wait).retire_old().await.unwrap();
        assert_eq!((retired[0].version.as_str(), retired[0].decision), ("1", Decision::Retired));
        assert_eq!(state(1).await, VersionState::Disabled);

        // Past adoption_timeout: waiting goes on with "wait", retires with "retire".
        *fleet.0.lock().unwrap() = holding(&["node-c"], &[]);
        let overdue = |on_timeout| Retire::AfterAdoption { timeout: Duration::ZERO, on_timeout };
        rotator(overdue(OnAdoptionTimeout::Wait)).run(Trigger::Now).await.unwrap();
        let still = rotator(overdue(OnAdoptionTimeout::Wait)).retire_old().await.unwrap();
        assert!(matches!(still[0].decision, Decision::Waiting { timed_out: true, .. }), "{still:?}");
        let forced = rotator(overdue(OnAdoptionTimeout::Retire)).retire_old().await.unwrap();
        assert_eq!((forced[0].version.as_str(), forced[0].decision), ("2", Decision::RetiredAfterWait));
        assert_eq!(state(2).await, VersionState::Disabled);

        // A revoke asks nobody's leave.
        let Outcome::Rotated { retirements, .. } = rotator(wait).run(Trigger::Revoke).await.unwrap() else {
            panic!("rotated")
        };
        let revoked = retirements.iter().find(|r| r.decision == Decision::Revoked).expect("the old current is revoked");
        assert_eq!((revoked.version.as_str(), revoked.holders.clone()), ("4", Some(holding(&["node-c"], &[]))));
        assert_eq!(state(4).await, VersionState::Disabled);
    }

    /// A store on which another node takes the lease over as soon as a version is added, as
    /// if this rotator had been frozen past its lease.
    struct Overtaken(FileStore);

    impl SecretStore for Overtaken {
        async fn access(
            &self,
            id: &SecretId,
            selector: &crate::store::Selector,
        ) -> Result<crate::secret::Version, StoreError> {
            self.0.access(id, selector).await
        }
        async fn describe(&self, id: &SecretId) -> Result<SecretMeta, StoreError> {
            self.0.describe(id).await
        }
        async fn create(&self, id: &SecretId) -> Result<(), StoreError> {
            self.0.create(id).await
        }
        async fn add_version(&self, id: &SecretId, value: &SecretBytes) -> Result<VersionId, StoreError> {
            let version = self.0.add_version(id, value).await?;
            let meta = self.0.describe(id).await?;
            let theirs =
                Lease::new("node-z", 1, crate::clock::Clock::now(&crate::clock::SystemClock), Duration::from_secs(60));
            let take = SecretUpdate {
                set_annotations: BTreeMap::from([(lease::ANNOTATION.to_string(), theirs.encode())]),
                ..SecretUpdate::default()
            };
            self.0.update(id, &meta, &take).await?;
            Ok(version)
        }
        async fn update(
            &self,
            id: &SecretId,
            base: &SecretMeta,
            update: &SecretUpdate,
        ) -> Result<crate::store::Etag, StoreError> {
            self.0.update(id, base, update).await
        }
        async fn version_info(
            &self,
            id: &SecretId,
            version: &VersionId,
        ) -> Result<crate::store::VersionInfo, StoreError> {
            self.0.version_info(id, version).await
        }
        async fn versions(&self, id: &SecretId) -> Result<Vec<crate::store::VersionInfo>, StoreError> {
            self.0.versions(id).await
        }
        async fn list(&self) -> Result<Vec<SecretId>, StoreError> {
            self.0.list().await
        }
        async fn disable(&self, id: &SecretId, version: &VersionId) -> Result<(), StoreError> {
            self.0.disable(id, version).await
        }
        async fn destroy(&self, id: &SecretId, version: &VersionId) -> Result<(), StoreError> {
            self.0.destroy(id, version).await
        }
        fn clock(&self) -> StoreClock {
            self.0.clock()
        }
    }

    /// A value one of the policy's files cannot be rendered from is discarded, not promoted.
    #[tokio::test]
    async fn a_value_that_cannot_be_delivered_is_never_promoted() {
        let tmp = tempfile::tempdir().unwrap();
        let store = open(tmp.path()).await;
        let id = SecretId::new("signing-key");
        run(&store, "node-a", Trigger::Now).await;
        let rotate = rotate();
        let policy = policy(&rotate);
        let rotator = Rotator {
            deliverable: &|_| Err("policy signing, file api/key: refused".to_string()),
            ..rotator(&store, &policy, &rotate, "node-a")
        };
        let refused = rotator.run(Trigger::Now).await;
        assert!(
            matches!(&refused, Err(RotationError::Check { reason, .. }) if reason.contains("api/key")),
            "{refused:?}"
        );
        let meta = store.describe(&id).await.unwrap();
        assert_eq!(meta.aliases.get(CURRENT), Some(&VersionId::new("1")), "nothing promoted");
        assert_eq!(meta.aliases.get(PENDING), None);
    }

    #[tokio::test]
    async fn a_rotator_that_lost_its_lease_promotes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let store = open(tmp.path()).await;
        let id = SecretId::new("signing-key");
        run(&store, "node-a", Trigger::Now).await;
        let overtaken = Overtaken(store);
        let lost = attempt(&overtaken, "node-a", Trigger::Now).await;
        assert!(matches!(&lost, Err(RotationError::LostLease { version }) if version.as_str() == "2"), "{lost:?}");
        let store = overtaken.0;
        let meta = store.describe(&id).await.unwrap();
        assert_eq!(meta.aliases.get(CURRENT), Some(&VersionId::new("1")), "nothing promoted");
        assert_eq!(meta.aliases.get(PENDING), None, "never made pending");
        assert!(meta.annotations[lease::ANNOTATION].starts_with("node-z "), "the new holder's lease stands: {meta:?}");
        let added = store.version_info(&id, &VersionId::new("2")).await.unwrap();
        assert_eq!(added.state, VersionState::Disabled, "the orphan is not left enabled");
    }
}
