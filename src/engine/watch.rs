//! When each policy is next looked at: one scheduler task for every policy. It keeps each
//! policy's next wake in a heap of deadlines, the earliest of its next poll, its rotation due
//! time and the end of a grace period that changes its JWK set; it sleeps until the first,
//! then hands each policy that is due to a task of its own, which does what is due and ends.
//!
//! One task per policy, asleep between polls, used to do this. An idle task costs about 750
//! bytes (its future, which must have room for everything it may await, and tokio's header,
//! padded to 128 bytes); a heap entry and a policy's few timing facts cost about 50 (issue
//! 17). What runs is unchanged: every due policy still reads and delivers in a task of its
//! own, so a slow store read for one never delays another.
//!
//! The times are decided by the pure functions in [`crate::backoff`] and
//! [`crate::rotation::schedule`], from the engine's clock and random seams, so the whole loop
//! runs under tokio's paused clock in tests. Due times and grace ends are times on the
//! policy's store's clock, and so is every "now" they are compared with here.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::{Duration, SystemTime};

use tokio::task::JoinSet;
use tokio::time::Instant;

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

/// What the scheduler remembers of one policy between its turns.
#[derive(Debug, Clone, Copy, Default)]
struct Turn {
    /// Failed reads in a row: the next wait is a backoff, not a poll.
    failures: u32,
    /// Not before this time, whatever the schedule says: set after a busy lease or a failed
    /// rotation, so a due secret is not retried in a tight loop.
    rotation_not_before: Option<SystemTime>,
    /// The rotation due time this turn was planned with: the turn rotates if it has come.
    rotation_due: Option<SystemTime>,
    /// The first wait is anywhere in one poll interval: a fleet that starts together (a
    /// rollout, a power cut) is spread over the interval at once, not over many polls by the
    /// jitter's small drift.
    started: bool,
}

impl<S: SecretStore + 'static> Engine<S> {
    /// Starts watching every policy. Dropping the returned set stops it all, turns that are
    /// running included. Policies in `first_failures` failed their first read, and start with
    /// a backoff.
    pub fn spawn_watchers(&self, first_failures: &[String]) -> JoinSet<()> {
        let mut tasks = JoinSet::new();
        let turns: Vec<Turn> = self
            .config
            .policies
            .iter()
            .map(|policy| Turn { failures: u32::from(first_failures.contains(&policy.name)), ..Turn::default() })
            .collect();
        if !turns.is_empty() {
            let engine = self.clone();
            tasks.spawn(async move { engine.schedule(turns).await });
        }
        tasks
    }

    async fn schedule(self, mut turns: Vec<Turn>) {
        let mut due: BinaryHeap<Reverse<(Instant, usize)>> = BinaryHeap::with_capacity(turns.len());
        for (index, turn) in turns.iter_mut().enumerate() {
            due.push(Reverse((self.plan(index, turn), index)));
        }
        let mut running: JoinSet<Turn> = JoinSet::new();
        let mut running_policies: HashMap<tokio::task::Id, usize> = HashMap::new();
        loop {
            let next = due.peek().map(|Reverse((at, _))| *at);
            tokio::select! {
                () = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                    let now = Instant::now();
                    while let Some(Reverse((at, index))) = due.peek().copied() {
                        if at > now {
                            break;
                        }
                        due.pop();
                        let (engine, turn) = (self.clone(), turns[index]);
                        let task = running.spawn(async move { engine.turn(index, turn).await });
                        running_policies.insert(task.id(), index);
                    }
                }
                Some(joined) = running.join_next_with_id() => {
                    // A turn that panicked (the release build aborts instead) loses nothing but
                    // itself: the policy is planned again from what it knew before.
                    let (id, turn) = match joined {
                        Ok((id, turn)) => (id, Some(turn)),
                        Err(e) => (e.id(), None),
                    };
                    let Some(index) = running_policies.remove(&id) else { continue };
                    if let Some(turn) = turn {
                        turns[index] = turn;
                    }
                    due.push(Reverse((self.plan(index, &mut turns[index]), index)));
                }
            }
        }
    }

    /// When policy `index` is next due: its next poll (or backoff), its rotation due time, or
    /// the end of its previous key's grace, whichever comes first.
    fn plan(&self, index: usize, turn: &mut Turn) -> Instant {
        let policy = &self.config.policies[index];
        let poll = self.config.agent.poll;
        let random = self.seams.random;
        let now = self.store_now(policy);
        let wait = if !turn.started {
            first_poll_delay(poll, random())
        } else if turn.failures == 0 {
            poll_delay(poll, self.config.agent.jitter, random())
        } else {
            retry_delay(turn.failures, poll, random())
        };
        turn.started = true;
        let mut wake = now + wait;
        let not_before = turn.rotation_not_before;
        turn.rotation_due = self.rotation_due(policy).map(|due| due.max(not_before.unwrap_or(due)));
        if let Some(due) = turn.rotation_due {
            self.recorder().record(subject(policy), Recorded::NextRotation { due });
            wake = wake.min(due);
        }
        if let Some(end) = self.grace_end(policy).filter(|end| *end > now) {
            wake = wake.min(end);
        }
        Instant::now() + wake.duration_since(now).unwrap_or_default()
    }

    /// One turn of policy `index`: rotate it if that is due, pull it, retry waiting
    /// retirements. Returns what the next plan needs.
    async fn turn(self, index: usize, mut turn: Turn) -> Turn {
        let policy = &self.config.policies[index];
        let poll = self.config.agent.poll;
        // Boxed: a rotation and a store read are large futures, and take memory only while
        // they run.
        if turn.rotation_due.is_some_and(|due| due <= self.store_now(policy)) {
            turn.rotation_not_before = Box::pin(self.rotate_scheduled(policy)).await;
        }
        let summary = self.pull_one(policy, Some(retry_delay(turn.failures + 1, poll, 0.5))).await;
        turn.failures = if summary.failed.is_empty() { 0 } else { turn.failures + 1 };
        Box::pin(self.retire_waiting_of(policy)).await;
        turn
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
