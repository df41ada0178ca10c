//! One task per policy: it sleeps until the earliest of its next poll, its rotation due time
//! and the end of a grace period that changes its JWK set, then does what is due.
//!
//! The times are decided by the pure functions in [`crate::backoff`] and
//! [`crate::rotation::schedule`], from the engine's clock and random seams, so the whole loop
//! runs under tokio's paused clock in tests. Due times and grace ends are times on the
//! policy's store's clock, and so is every "now" they are compared with here.

use std::time::{Duration, SystemTime};

use tokio::task::JoinSet;

use super::state::Known;
use super::{Engine, subject};
use crate::backoff::{first_poll_delay, poll_delay, retry_delay};
use crate::config::Policy;
use crate::report::Outcome as Recorded;
use crate::rotation::protocol::{Outcome, Trigger};
use crate::rotation::schedule::{next_rotation, node_unit};
use crate::store::SecretStore;

/// After another node was found rotating, wait at least this long before trying again.
const BUSY_BACKOFF: Duration = Duration::from_secs(5);

impl<S: SecretStore + 'static> Engine<S> {
    /// Starts one watcher per policy. Dropping the returned set stops them all. Policies in
    /// `first_failures` failed their first read, and start with a backoff.
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
        let poll = self.config.agent.poll;
        let random = self.seams.random;
        // Not before this time, whatever the schedule says: set after a busy lease or a failed
        // rotation, so a due secret is not retried in a tight loop.
        let mut rotation_not_before: Option<SystemTime> = None;
        // The first wait is anywhere in one poll interval: a fleet that starts together (a
        // rollout, a power cut) is spread over the interval at once, not over many polls by the
        // jitter's small drift.
        let mut first = true;
        loop {
            let now = self.store_now(policy);
            let wait = if first {
                first_poll_delay(poll, random())
            } else if failures == 0 {
                poll_delay(poll, self.config.agent.jitter, random())
            } else {
                retry_delay(failures, poll, random())
            };
            first = false;
            let mut wake = now + wait;
            let rotation_due = self.rotation_due(policy).map(|due| due.max(rotation_not_before.unwrap_or(due)));
            if let Some(due) = rotation_due {
                self.recorder().record(subject(policy), Recorded::NextRotation { due });
                wake = wake.min(due);
            }
            if let Some(end) = self.grace_end(policy).filter(|end| *end > now) {
                wake = wake.min(end);
            }
            tokio::time::sleep(wake.duration_since(now).unwrap_or_default()).await;

            // Boxed: a task's future holds room for everything it may await, and a rotation and
            // a store read are large. Inline, every idle policy would carry them (about 10 KiB
            // each); boxed, they take memory only while they run.
            if rotation_due.is_some_and(|due| due <= self.store_now(policy)) {
                rotation_not_before = Box::pin(self.rotate_scheduled(policy)).await;
            }
            let summary = self.pull_one(policy, Some(retry_delay(failures + 1, poll, 0.5))).await;
            failures = if summary.failed.is_empty() { 0 } else { failures + 1 };
            Box::pin(self.retire_waiting_of(policy)).await;
        }
    }

    /// When this node should next try to rotate `policy`, from what the store said.
    fn rotation_due(&self, policy: &Policy) -> Option<SystemTime> {
        let rotate = policy.rotate.as_ref().filter(|_| self.rotates(policy))?;
        match self.state.known().get(&policy.name)? {
            Known::Missing => Some(self.store_now(policy)),
            Known::Current { version, created, .. } => {
                let unit = node_unit(&self.config.agent.node, policy.secret.as_str(), version.as_str());
                Some(next_rotation(&rotate.schedule, (*created)?, rotate.jitter, unit))
            }
        }
    }

    /// When the previous key leaves `policy`'s JWK set, if it is in it now.
    fn grace_end(&self, policy: &Policy) -> Option<SystemTime> {
        let rotate = policy.rotate.as_ref()?;
        match self.state.known().get(&policy.name)? {
            Known::Current { created: Some(created), previous: Some(_), .. } => Some(*created + rotate.grace),
            _ => None,
        }
    }

    /// Runs a scheduled rotation; returns the earliest time to try again if it did not rotate.
    async fn rotate_scheduled(&self, policy: &Policy) -> Option<SystemTime> {
        let now = self.store_now(policy);
        match self.rotate(policy, Trigger::Scheduled).await {
            // Present is the answer to a missing version only; the schedule takes over from it.
            Ok(Outcome::Rotated { .. } | Outcome::Present { .. }) => None,
            Ok(Outcome::NotDue { due }) => Some(due),
            Ok(Outcome::Busy { .. }) | Err(_) => Some(now + self.config.agent.poll.max(BUSY_BACKOFF)),
        }
    }
}
