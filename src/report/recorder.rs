//! The recorder: the one place where what happened to a policy becomes a log line, metrics, a
//! status change and (when `[report]` is configured) a central event.
//!
//! The engine and the notification dispatchers say what happened as an [`Outcome`] about a
//! [`Subject`]; nothing else in keyturn writes those four outputs for a policy, so they cannot
//! drift apart (a delivery counted but not logged, an error shown but not reported). The
//! recorder also owns readiness: the status knows which required policies are on disk, and
//! READY=1 and `/readyz` follow it. It reads the time from the clock it was given.
//!
//! Besides policies, it records what is known of each store's clock
//! ([`Recorder::store_clock`]): the skew metric, the status's store section, and a warning
//! (log, event, `/readyz` and STATUS= lines) once the skew passes `[agent] max_clock_skew`,
//! said once when it starts and once when it ends, not at every poll.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, watch};

use super::events::{self, Reporter};
use super::metrics::{
    Metrics, NodeLabel, Notification, PolicyLabel, PolicyResult, ResultLabel, Retiring, SecretVersion, StoreLabel,
};
use super::status::{ConfigState, PolicyStatus, Rejected, RotationRecord, Stale, Status, StoreStatus};
use crate::clock::{self, SharedClock};
use crate::secret::VersionId;
use crate::store::StoreClock;

/// How long status changes gather before one write of the status file.
const STATUS_DEBOUNCE: Duration = Duration::from_millis(100);

/// What was said about a waiting retirement: the version, the nodes waited for, timed out.
type Said = (String, Vec<String>, bool);

/// Which policy an outcome is about.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub policy: &'a str,
    pub store: &'a str,
    pub secret: &'a str,
    /// Readiness waits for required policies only.
    pub required: bool,
}

/// What happened to a policy.
#[derive(Debug)]
pub enum Outcome<'a> {
    /// A new version is on disk. `previous_listed`: the previous version a JWK set lists beside
    /// it; `took`: from the store read to the bundle in place.
    Delivered {
        version: &'a VersionId,
        previous_listed: Option<&'a VersionId>,
        took: Duration,
    },
    /// What the store calls current was on disk already.
    Unchanged {
        version: &'a VersionId,
    },
    /// The store could not be read; the last good files stay. `retry_in`: when it is tried again.
    ReadFailed {
        error: &'a str,
        retry_in: Option<Duration>,
    },
    /// The version was read but its files could not be written; the last good files stay.
    DeliveryFailed {
        version: &'a VersionId,
        error: &'a str,
    },
    /// This node rotated the secret. `took`: the whole protocol.
    Rotated {
        version: &'a VersionId,
        previous: Option<&'a VersionId>,
        disabled: &'a [VersionId],
        revoked: bool,
        took: Duration,
    },
    /// Another node holds the rotation lease.
    RotationBusy {
        holder: &'a str,
    },
    RotationFailed {
        error: &'a str,
        took: Duration,
    },
    /// When this node will next try to rotate the secret.
    NextRotation {
        due: SystemTime,
    },
    /// The bundle was rebuilt from the sealed cache, from what was sealed at `sealed_at`; the
    /// store has not been read yet.
    Restored {
        version: &'a VersionId,
        sealed_at: SystemTime,
    },
    /// The store named `read`, older than `held`, the version on disk: a lagging replica (alias
    /// reads are eventually consistent). The newer files stay; nothing is delivered.
    OlderRefused {
        read: &'a VersionId,
        held: &'a VersionId,
    },
    /// What this node's cleanup decided about an old version: disabled, or kept enabled while
    /// live nodes hold it (see `rotation::protocol::Retirement`).
    Retirement(&'a crate::rotation::protocol::Retirement),
    /// Applications were told of `version`, one result per notifier.
    Notified {
        version: &'a VersionId,
        results: &'a [(&'static str, Notice<'a>)],
    },
}

/// What one notifier did about a change.
#[derive(Debug, Clone, Copy)]
pub enum Notice<'a> {
    Sent,
    /// Nothing to tell (the application is not running), and why.
    Skipped(&'a str),
    /// Failed after every attempt, and why.
    Failed(&'a str),
}

/// The status, metrics, readiness and event reporter of one agent process.
#[derive(Debug)]
pub struct Recorder {
    clock: SharedClock,
    status: Mutex<Status>,
    /// How many required policies have no delivered version yet; changed only under the status
    /// lock, so that readiness costs one comparison per update instead of a walk over every
    /// policy.
    waiting: AtomicUsize,
    status_changed: Notify,
    /// The size to start the next status file's buffer at: the last one's, and an eighth.
    status_size: AtomicUsize,
    pub metrics: Arc<Metrics>,
    /// True once every required policy is on disk: what READY=1 and `/readyz` report.
    ready: watch::Sender<bool>,
    /// Central event reports, when `[report]` is configured.
    reporter: Option<Arc<Reporter>>,
    /// Per policy, the version an earlier agent recorded as delivered and when (its status
    /// file, see [`Recorder::resume`]): a restart that finds that version on disk and writes
    /// nothing shows the original delivery time, not its own start.
    earlier: Mutex<BTreeMap<String, (VersionId, String)>>,
    /// What was last said about each policy's waiting retirement (version, nodes, timed out).
    said_waiting: Mutex<BTreeMap<String, Said>>,
}

impl Recorder {
    pub fn new(node: &str, clock: SharedClock, metrics: Arc<Metrics>, reporter: Option<Arc<Reporter>>) -> Self {
        let status = Status {
            node: node.to_string(),
            pid: std::process::id(),
            process: crate::sys::ProcessIdentity::own().map(|p| p.as_str().to_string()),
            ..Status::default()
        };
        Recorder {
            clock,
            status: Mutex::new(status),
            waiting: AtomicUsize::new(0),
            status_changed: Notify::new(),
            status_size: AtomicUsize::new(4096),
            metrics,
            ready: watch::Sender::new(false),
            reporter,
            said_waiting: Mutex::default(),
            earlier: Mutex::new(BTreeMap::new()),
        }
    }

    /// Takes the delivery times an earlier run recorded (its status file). They are used only
    /// for a version that is found on disk unchanged; readiness still waits for this run to see
    /// every required policy on disk.
    pub fn resume(&self, earlier: &Status) {
        let delivered = earlier
            .policies
            .iter()
            .filter_map(|(name, p)| Some((name.clone(), (p.version.clone()?, p.delivered_at.clone()?))));
        *self.earlier.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = delivered.collect();
    }

    /// When `version` of `policy` was delivered, if an earlier run recorded it.
    fn delivered_earlier(&self, policy: &str, version: &VersionId) -> Option<String> {
        let earlier = self.earlier.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        earlier.get(policy).filter(|(v, _)| v == version).map(|(_, at)| at.clone())
    }

    /// Records an outcome about `subject` in the log, the metrics, the status and the events.
    pub fn record(&self, subject: Subject<'_>, outcome: Outcome<'_>) {
        let now = self.clock.now();
        let at = clock::rfc3339(now);
        let policy = subject.policy;
        match outcome {
            Outcome::Delivered { version, previous_listed, took } => {
                let old = self.on_disk(subject, version, now);
                self.counted_delivery(policy, "ok");
                tracing::info!(policy = %policy, secret = %subject.secret, %version, previous_listed = previous_listed.map(ToString::to_string), "delivered");
                let facts = events::Facts {
                    version: Some(version.to_string()),
                    previous: old,
                    duration_ms: Some(clock::millis(took)),
                    ..events::Facts::default()
                };
                self.event(subject, events::Kind::Delivered, "ok", facts);
                self.fresh(subject);
                self.update(subject, |s| {
                    s.version = Some(version.clone());
                    s.delivered_at = Some(at.clone());
                    s.checked_at = Some(at);
                    s.last_error = None;
                    s.consecutive_failures = 0;
                    s.stale = None;
                });
            }
            Outcome::Restored { version, sealed_at } => {
                // Delivered when it was sealed (right after its delivery), not now: a reboot
                // must not make an old version look newly adopted to the fleet.
                self.holds(subject, version, sealed_at);
                let age = now.duration_since(sealed_at).unwrap_or_default();
                self.metrics.stale.get_or_create(&PolicyLabel { policy: policy.to_string() }).set(age.as_secs_f64());
                let sealed = clock::rfc3339(sealed_at);
                tracing::warn!(policy = %policy, %version, sealed = %sealed, "restored from the sealed cache: the store has not been read yet");
                let facts = events::Facts {
                    version: Some(version.to_string()),
                    stale_seconds: Some(age.as_secs()),
                    ..events::Facts::default()
                };
                self.event(subject, events::Kind::Restored, "ok", facts);
                self.update(subject, |s| {
                    s.version = Some(version.clone());
                    s.delivered_at = Some(sealed.clone());
                    s.stale = Some(Box::new(Stale { sealed_at: sealed, restored_at: at }));
                });
            }
            Outcome::Unchanged { version } => {
                self.on_disk(subject, version, now);
                self.fresh(subject);
                let earlier = self.delivered_earlier(policy, version);
                self.update(subject, |s| {
                    if s.version.as_ref() != Some(version) {
                        // Already on disk from an earlier run, delivered when that run said;
                        // if no run recorded it, when is unknown, not now.
                        s.version = Some(version.clone());
                        s.delivered_at = earlier;
                    }
                    s.checked_at = Some(at);
                    s.last_error = None;
                    s.consecutive_failures = 0;
                    s.stale = None;
                });
            }
            Outcome::ReadFailed { error, retry_in } => {
                self.still_stale(subject, now);
                tracing::warn!(
                    policy = %policy,
                    store = %subject.store,
                    error = %error,
                    retry_in_s = retry_in.map(|d| d.as_secs_f64()),
                    "store read failed; the last good files stay in place"
                );
                self.failed(subject, error, at);
            }
            Outcome::DeliveryFailed { version, error } => {
                tracing::warn!(policy = %policy, %version, error = %error, "delivery failed");
                self.failed(subject, error, at);
            }
            Outcome::Rotated { version, previous, disabled, revoked, took } => {
                self.counted_rotation(policy, "ok");
                let facts = events::Facts {
                    version: Some(version.to_string()),
                    previous: previous.map(ToString::to_string),
                    duration_ms: Some(clock::millis(took)),
                    ..events::Facts::default()
                };
                self.event(subject, events::Kind::Rotated, "ok", facts.clone());
                if revoked && !disabled.is_empty() {
                    self.event(subject, events::Kind::Revoked, "ok", facts);
                }
                self.update(subject, |s| {
                    s.last_rotation = Some(Box::new(RotationRecord { version: version.clone(), at }));
                    s.rotation_error = None;
                });
            }
            Outcome::RotationBusy { holder } => {
                self.counted_rotation(policy, "busy");
                tracing::info!(policy = %policy, holder = %holder, "another node is rotating; pulling only");
            }
            Outcome::RotationFailed { error, took } => {
                self.counted_rotation(policy, "error");
                tracing::warn!(
                    policy = %policy,
                    secret = %subject.secret,
                    error = %error,
                    "rotation failed; nodes keep delivering the current version"
                );
                let facts = events::Facts {
                    error: Some(error.to_string()),
                    duration_ms: Some(clock::millis(took)),
                    ..events::Facts::default()
                };
                self.event(subject, events::Kind::RotationFailed, "error", facts);
                self.update(subject, |s| s.rotation_error = Some(error.to_string()));
            }
            Outcome::NextRotation { due } => {
                self.metrics
                    .next_rotation
                    .get_or_create(&PolicyLabel { policy: policy.to_string() })
                    .set(clock::unix_seconds(due));
                let due = clock::rfc3339(due);
                if self.status().policies.get(policy).and_then(|s| s.next_rotation.as_ref()) != Some(&due) {
                    self.update(subject, |s| s.next_rotation = Some(due));
                }
            }
            Outcome::OlderRefused { read, held } => {
                self.metrics.regressions_refused.get_or_create(&PolicyLabel { policy: policy.to_string() }).inc();
                tracing::warn!(
                    policy = %policy,
                    store = %subject.store,
                    secret = %subject.secret,
                    read = %read,
                    held = %held,
                    on_purpose = %format!("roll forward: keyturn rollback {policy} --to {read}"),
                    "the store named an older version than the one on disk (a lagging replica?); keeping the newer files"
                );
                self.fresh(subject);
                self.update(subject, |s| {
                    s.checked_at = Some(at);
                    s.last_error = None;
                    s.consecutive_failures = 0;
                });
            }
            Outcome::Retirement(retirement) => self.retirement(subject, retirement),
            Outcome::Notified { version, results } => self.notified(subject, version, results, at),
        }
    }

    /// A policy's version is on disk: the version metric and the last success. Returns the
    /// version that was on disk before, if another.
    fn on_disk(&self, subject: Subject<'_>, version: &VersionId, now: SystemTime) -> Option<String> {
        let old = self.holds(subject, version, now);
        self.metrics.success_at(subject.policy, now);
        old.filter(|old| old != version.as_str())
    }

    /// The node's version metrics for a policy with `version` on disk: since the delivery the
    /// status remembers for that version, or since `now`. Returns the version the status held.
    fn holds(&self, subject: Subject<'_>, version: &VersionId, now: SystemTime) -> Option<String> {
        let (node, old, since) = {
            let status = self.status();
            let policy = status.policies.get(subject.policy);
            let old = policy.and_then(|s| s.version.as_ref().map(ToString::to_string));
            let since = policy
                .filter(|s| s.version.as_ref() == Some(version))
                .and_then(|s| s.delivered_at.as_deref())
                .and_then(|at| humantime::parse_rfc3339(at).ok());
            (status.node.clone(), old, since)
        };
        // After a restart, the delivery an earlier run recorded for this version.
        let since = since.or_else(|| {
            self.delivered_earlier(subject.policy, version).and_then(|at| humantime::parse_rfc3339(&at).ok())
        });
        let held = SecretVersion {
            node,
            policy: subject.policy.to_string(),
            store: subject.store.to_string(),
            secret: subject.secret.to_string(),
            version: version.to_string(),
        };
        // Whole seconds, as the status file keeps them: the same series value across restarts.
        let since = since.unwrap_or(now);
        let whole = std::time::UNIX_EPOCH
            + Duration::from_secs(since.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()));
        self.metrics.delivered(held, whole);
        old
    }

    /// The store answered for the policy: files from the cache, if any, are replaced or
    /// confirmed, and no longer stale.
    fn fresh(&self, subject: Subject<'_>) {
        self.metrics.stale.remove(&PolicyLabel { policy: subject.policy.to_string() });
    }

    /// The store still has not answered: how old restored files are now.
    fn still_stale(&self, subject: Subject<'_>, now: SystemTime) {
        let sealed =
            self.status().policies.get(subject.policy).and_then(|s| s.stale.as_ref().map(|s| s.sealed_at.clone()));
        if let Some(sealed_at) = sealed.and_then(|t| humantime::parse_rfc3339(&t).ok()) {
            let age = now.duration_since(sealed_at).unwrap_or_default();
            self.metrics
                .stale
                .get_or_create(&PolicyLabel { policy: subject.policy.to_string() })
                .set(age.as_secs_f64());
        }
    }

    fn failed(&self, subject: Subject<'_>, error: &str, at: String) {
        self.counted_delivery(subject.policy, "error");
        let mut first = false;
        self.update(subject, |s| {
            s.checked_at = Some(at);
            s.last_error = Some(error.to_string());
            s.consecutive_failures += 1;
            first = s.consecutive_failures == 1;
        });
        // One event when a policy starts failing, not one per failed poll during an outage.
        if first {
            let facts = events::Facts { error: Some(error.to_string()), ..events::Facts::default() };
            self.event(subject, events::Kind::Failed, "error", facts);
        }
    }

    fn retirement(&self, subject: Subject<'_>, retirement: &crate::rotation::protocol::Retirement) {
        use crate::rotation::protocol::{Decision, waiting_reason};
        let policy = subject.policy;
        let version = &retirement.version;
        let labels = Retiring {
            policy: policy.to_string(),
            store: subject.store.to_string(),
            secret: subject.secret.to_string(),
            version: version.to_string(),
        };
        let (live, gone) = match &retirement.holders {
            Some(Ok(holders)) => (holders.live.clone(), holders.gone.clone()),
            _ => (Vec::new(), Vec::new()),
        };
        let result = match retirement.decision {
            Decision::Waiting { since, timed_out } => {
                // Said when it starts waiting and whenever who it waits for changes, not at every poll.
                let key = (version.to_string(), live.clone(), timed_out);
                let changed = self.waiting_said(policy, Some(key));
                self.metrics.retirement_waiting(labels, live.len(), since);
                if changed {
                    let reason = waiting_reason(retirement);
                    if timed_out {
                        tracing::error!(policy = %policy, secret = %subject.secret, %version, waiting_for = %live.join(","), %reason, "an old version is kept enabled past adoption_timeout: these nodes still hold it; see keyturn fleet status");
                    } else {
                        tracing::warn!(policy = %policy, secret = %subject.secret, %version, waiting_for = %live.join(","), gone = %gone.join(","), %reason, "retirement waits for the nodes that still hold the old version");
                    }
                    let facts = events::Facts {
                        version: Some(version.to_string()),
                        nodes: Some(live.clone()),
                        gone: (!gone.is_empty()).then(|| gone.clone()),
                        error: match &retirement.holders {
                            Some(Err(error)) => Some(error.clone()),
                            _ => None,
                        },
                        ..events::Facts::default()
                    };
                    self.event(
                        subject,
                        events::Kind::RetirementWaiting,
                        if timed_out { "timed_out" } else { "waiting" },
                        facts,
                    );
                }
                return;
            }
            Decision::Retired => "retired",
            Decision::RetiredAfterWait => "retired_after_wait",
            Decision::Revoked => "revoked",
        };
        self.waiting_said(policy, None);
        self.metrics.retirement_done(&labels);
        self.metrics.retirements.get_or_create(&PolicyResult { policy: policy.to_string(), result }).inc();
        tracing::info!(policy = %policy, secret = %subject.secret, %version, result, still_held_by = %live.join(","), gone = %gone.join(","), "old version disabled");
        let facts = events::Facts {
            version: Some(version.to_string()),
            nodes: (!live.is_empty()).then(|| live.clone()),
            gone: (!gone.is_empty()).then(|| gone.clone()),
            ..events::Facts::default()
        };
        self.event(subject, events::Kind::Retired, result, facts);
    }

    /// Remembers what was last said about a policy's waiting retirement; whether `now` differs.
    fn waiting_said(&self, policy: &str, now: Option<Said>) -> bool {
        let mut said = self.said_waiting.lock().unwrap_or_else(|e| e.into_inner());
        let changed = said.get(policy) != now.as_ref();
        match now {
            Some(now) => said.insert(policy.to_string(), now),
            None => said.remove(policy),
        };
        changed
    }

    fn notified(&self, subject: Subject<'_>, version: &VersionId, results: &[(&'static str, Notice<'_>)], at: String) {
        let policy = subject.policy;
        let mut failures = Vec::new();
        for (notifier, notice) in results {
            let result = match notice {
                Notice::Sent => {
                    tracing::info!(policy = %policy, %version, notifier, "notified");
                    "ok"
                }
                Notice::Skipped(reason) => {
                    tracing::info!(policy = %policy, notifier, reason = %reason, "nothing to notify");
                    "skipped"
                }
                Notice::Failed(error) => {
                    tracing::error!(policy = %policy, %version, notifier, error = %error, "notification failed after every attempt");
                    let facts = events::Facts {
                        version: Some(version.to_string()),
                        error: Some(format!("{notifier}: {error}")),
                        ..events::Facts::default()
                    };
                    self.event(subject, events::Kind::NotifyFailed, "error", facts);
                    failures.push(format!("{notifier}: {error}"));
                    "error"
                }
            };
            let labels = Notification { policy: policy.to_string(), notifier, result };
            self.metrics.notifications.get_or_create(&labels).inc();
        }
        self.update(subject, |s| {
            s.notified_at = Some(at);
            s.notify_error = (!failures.is_empty()).then(|| failures.join("; "));
        });
    }

    fn counted_delivery(&self, policy: &str, result: &'static str) {
        self.metrics.deliveries.get_or_create(&PolicyResult { policy: policy.to_string(), result }).inc();
    }

    fn counted_rotation(&self, policy: &str, result: &'static str) {
        self.metrics.rotations.get_or_create(&PolicyResult { policy: policy.to_string(), result }).inc();
    }

    /// Records what is known of `store`'s clock, after a request to it: the skew metric and
    /// the status; past `limit` (`[agent] max_clock_skew`), a warning with the fix, said once,
    /// and once more when the skew is back within half of it.
    pub fn store_clock(&self, store: &str, clock: StoreClock, limit: Duration) {
        let label = StoreLabel { store: store.to_string() };
        match clock.skew() {
            Some(skew) => {
                self.metrics.clock_skew.get_or_create(&label).set(skew);
            }
            None => {
                self.metrics.clock_skew.remove(&label);
            }
        }
        let was_exceeded = self.status().stores.get(store).is_some_and(|s| s.clock_skew_exceeds.is_some());
        let size = clock.skew().map(f64::abs);
        let exceeded = match size {
            Some(size) if was_exceeded => size > limit.as_secs_f64() / 2.0,
            Some(size) => size > limit.as_secs_f64(),
            // A store whose clock is no longer known keeps what was said of it.
            None => was_exceeded && clock == StoreClock::Unmeasured,
        };
        let entry = StoreStatus {
            clock: match clock {
                StoreClock::Node => "node",
                StoreClock::Unmeasured => "unmeasured",
                StoreClock::Measured { .. } => "measured",
            }
            .to_string(),
            clock_skew_seconds: clock.skew().map(|skew| (skew * 10.0).round() / 10.0),
            clock_skew_exceeds: exceeded.then_some(limit.as_secs_f64()),
        };
        let words = entry.clock_words(store);
        {
            let mut status = self.status();
            if status.stores.get(store) == Some(&entry) {
                return;
            }
            status.stores.insert(store.to_string(), entry);
            status.updated_at = clock::rfc3339(self.clock.now());
        }
        self.status_changed.notify_one();
        let skew_seconds = clock.skew().map(|skew| skew.round() as i64);
        let facts = |error: Option<String>| events::Facts {
            store: store.to_string(),
            clock_skew_seconds: skew_seconds,
            error,
            ..events::Facts::default()
        };
        match (was_exceeded, exceeded) {
            (false, true) => {
                tracing::warn!(
                    store,
                    clock_skew_s = clock.skew().map(|skew| (skew * 10.0).round() / 10.0),
                    "{words}; due times and leases are judged on the store's clock, but requests this node signs with its own time (tokens) may be refused"
                );
                if let Some(reporter) = &self.reporter {
                    reporter.record(events::Kind::ClockSkew, "exceeded", facts(Some(words)));
                }
            }
            (true, false) => {
                tracing::info!(
                    store,
                    clock_skew_s = clock.skew().map(|skew| (skew * 10.0).round() / 10.0),
                    "{words}: back within max_clock_skew"
                );
                if let Some(reporter) = &self.reporter {
                    reporter.record(events::Kind::ClockSkew, "ok", facts(None));
                }
            }
            _ => {}
        }
    }

    /// A line for each store whose clock is beyond `max_clock_skew`: for `/readyz` and
    /// systemd's STATUS=, beside readiness (which the files on disk decide, not the clock).
    pub fn clock_warnings(&self) -> Vec<String> {
        let status = self.status();
        status
            .stores
            .iter()
            .filter(|(_, s)| s.clock_skew_exceeds.is_some())
            .map(|(name, s)| format!("clock: {}", s.clock_words(name)))
            .collect()
    }

    /// Records a central report event, if reports are configured.
    fn event(&self, subject: Subject<'_>, kind: events::Kind, result: &str, facts: events::Facts) {
        if let Some(reporter) = &self.reporter {
            let facts = events::Facts {
                policy: subject.policy.to_string(),
                secret: subject.secret.to_string(),
                store: subject.store.to_string(),
                ..facts
            };
            reporter.record(kind, result, facts);
        }
    }

    /// The agent runs `config`, loaded now: at start, or after a reload that was applied;
    /// `reload` is what asked for it, `None` at start.
    pub fn config_loaded(&self, reload: Option<&str>, config: &crate::config::Config) {
        let at = self.clock.now();
        let policies = config.policies.len();
        self.metrics.poll_interval.clear();
        self.metrics
            .poll_interval
            .get_or_create(&NodeLabel { node: config.agent.node.clone() })
            .set(config.agent.poll.as_secs_f64());
        if let Some(reason) = reload {
            self.metrics.config_reloads.get_or_create(&ResultLabel { result: "ok" }).inc();
            tracing::info!(reason, policies, "configuration reloaded");
        }
        self.metrics.config_last_reload_successful.set(1);
        self.metrics.config_last_reload_success.set(clock::unix_seconds(at));
        self.set_config(ConfigState { loaded_at: clock::rfc3339(at), rejected: None });
    }

    /// A reload found the files are what the agent runs: a refusal before is void.
    pub fn config_unchanged(&self, reason: &str) {
        tracing::info!(reason, "configuration unchanged");
        self.metrics.config_reloads.get_or_create(&ResultLabel { result: "unchanged" }).inc();
        self.metrics.config_last_reload_successful.set(1);
        let mut state = self.snapshot().config.unwrap_or_default();
        state.rejected = None;
        self.set_config(state);
    }

    /// A reload was refused: the agent keeps running the configuration it has, and says so in
    /// the log, the metrics, the status and an event. Readiness does not change: the policies
    /// the agent delivers are still on disk and current.
    pub fn config_rejected(&self, reason: &str, error: &str, problems: &[String]) {
        for problem in problems {
            tracing::error!(problem = %problem, "configuration problem");
        }
        tracing::error!(reason, error = %error, "new configuration refused; the running one stays");
        self.metrics.config_reloads.get_or_create(&ResultLabel { result: "error" }).inc();
        self.metrics.config_last_reload_successful.set(0);
        let rejected = Rejected {
            at: clock::rfc3339(self.clock.now()),
            reason: reason.to_string(),
            error: error.to_string(),
            problems: problems.to_vec(),
        };
        let mut state = self.snapshot().config.unwrap_or_default();
        state.rejected = Some(rejected);
        self.set_config(state);
        if let Some(reporter) = &self.reporter {
            let facts = events::Facts { error: Some(error.to_string()), ..events::Facts::default() };
            reporter.record(events::Kind::ConfigRejected, "error", facts);
        }
    }

    fn set_config(&self, state: ConfigState) {
        let mut status = self.status();
        status.config = Some(state);
        status.updated_at = clock::rfc3339(self.clock.now());
        drop(status);
        self.status_changed.notify_one();
    }

    /// Makes the status list exactly `policies`: an entry for each from the start, so readiness
    /// waits for the required ones instead of holding vacuously over an empty list, and none
    /// (nor any metric series) for a policy no longer configured.
    pub fn plan<'a>(&self, policies: impl IntoIterator<Item = Subject<'a>>) {
        let policies: BTreeMap<&str, Subject<'a>> = policies.into_iter().map(|s| (s.policy, s)).collect();
        let mut status = self.status();
        let gone: Vec<String> =
            status.policies.keys().filter(|name| !policies.contains_key(name.as_str())).cloned().collect();
        for name in gone {
            status.policies.remove(&name);
            self.metrics.forget(&name);
        }
        for subject in policies.values() {
            describe(status.policies.entry(subject.policy.to_string()).or_default(), subject);
        }
        let waiting = status.policies.values().filter(|p| p.waiting()).count();
        self.waiting.store(waiting, Ordering::Relaxed);
        drop(status);
        self.set_ready(waiting == 0);
    }

    fn update(&self, subject: Subject<'_>, change: impl FnOnce(&mut PolicyStatus)) {
        let mut status = self.status();
        let entry = status.policies.entry(subject.policy.to_string()).or_default();
        let was_waiting = entry.waiting();
        describe(entry, &subject);
        change(entry);
        let waiting = match (was_waiting, entry.waiting()) {
            (false, true) => self.waiting.fetch_add(1, Ordering::Relaxed) + 1,
            (true, false) => self.waiting.fetch_sub(1, Ordering::Relaxed) - 1,
            _ => self.waiting.load(Ordering::Relaxed),
        };
        status.updated_at = clock::rfc3339(self.clock.now());
        drop(status);
        self.set_ready(waiting == 0);
        self.status_changed.notify_one();
    }

    fn set_ready(&self, ready: bool) {
        self.metrics.ready.set(i64::from(ready));
        self.ready.send_if_modified(|now| std::mem::replace(now, ready) != ready);
    }

    fn status(&self) -> MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A copy of the status as it is now.
    pub fn snapshot(&self) -> Status {
        self.status().clone()
    }

    /// Where the admin listener is bound, for `keyturn status`.
    pub fn set_admin(&self, address: String) {
        self.status().admin = Some(address);
    }

    /// Follows readiness: true once every required policy has been delivered.
    pub fn readiness(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// The required policies not on disk yet.
    pub fn waiting_for(&self) -> Vec<String> {
        self.status().policies.iter().filter(|(_, p)| p.waiting()).map(|(name, _)| name.clone()).collect()
    }

    /// `N of M policies delivered, K failing`, for systemd's STATUS=.
    pub fn summary(&self) -> String {
        let status = self.status();
        let total = status.policies.len();
        let delivered = status.policies.values().filter(|p| p.version.is_some()).count();
        let failing = status.policies.values().filter(|p| p.last_error.is_some()).count();
        let mut summary = format!("{delivered} of {total} policies delivered, {failing} failing");
        for (name, store) in status.stores.iter().filter(|(_, s)| s.clock_skew_exceeds.is_some()) {
            if let Some(skew) = store.clock_skew_seconds {
                summary.push_str(&format!("; clock {} store {name}'s", crate::store::skew_words(skew)));
            }
        }
        summary
    }

    /// The version of `policy` on disk, as last recorded.
    pub fn version_of(&self, policy: &str) -> Option<VersionId> {
        self.status().policies.get(policy).and_then(|p| p.version.clone())
    }

    /// Writes the status file whenever it changes, a short while after, until dropped.
    pub async fn persist(self: Arc<Self>, state_dir: PathBuf) {
        loop {
            self.status_changed.notified().await;
            tokio::time::sleep(STATUS_DEBOUNCE).await;
            self.save(&state_dir);
        }
    }

    /// The last save of a process that is about to exit: the status keeps what was
    /// delivered, and names no process, so that nothing signals or trusts a pid that may soon
    /// belong to another process.
    pub fn save_stopped(&self, state_dir: &Path) {
        {
            let mut status = self.status();
            status.pid = 0;
            status.process = None;
        }
        self.save(state_dir);
    }

    pub fn save(&self, state_dir: &Path) {
        // Serialized under the lock, not from a copy: a copy of every policy's status, at each
        // write, was most of the start's peak of memory at a thousand policies (issue 17).
        // The buffer starts at the size of the last file, so it is not grown a doubling at a
        // time either.
        let bytes = {
            let status = self.status();
            let mut bytes = Vec::with_capacity(self.status_size.load(Ordering::Relaxed));
            serde_json::to_writer_pretty(&mut bytes, &*status).expect("status serializes");
            bytes
        };
        self.status_size.store(bytes.len() + bytes.len() / 8, Ordering::Relaxed);
        if let Err(e) = Status::write(state_dir, &bytes) {
            tracing::warn!(path = %Status::path(state_dir).display(), error = %e, "cannot write the status file");
        }
    }
}

fn describe(entry: &mut PolicyStatus, subject: &Subject<'_>) {
    if entry.store != subject.store {
        entry.store = subject.store.to_string();
    }
    if entry.secret != subject.secret {
        entry.secret = subject.secret.to_string();
    }
    entry.required = subject.required;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject(policy: &str) -> Subject<'_> {
        Subject { policy, store: "dev", secret: "db-password", required: true }
    }

    /// A store's clock: the metric and the status follow every measurement; beyond the limit
    /// it is said (status, /readyz lines) until the skew is back within half of it; a local
    /// store shows no skew at all.
    #[test]
    fn a_stores_clock_is_shown_and_a_skew_past_the_limit_is_said_until_it_is_back() {
        let clock = Arc::new(clock::TokioClock::starting_at(humantime::parse_rfc3339("2026-12-01T00:00:00Z").unwrap()));
        let recorder = Recorder::new("edge-17", clock, Arc::new(Metrics::new()), None);
        let limit = Duration::from_secs(120);
        let exceeds = |recorder: &Recorder| recorder.snapshot().stores["edge"].clock_skew_exceeds;
        recorder.store_clock("edge", StoreClock::Unmeasured, limit);
        assert_eq!(recorder.snapshot().stores["edge"].clock, "unmeasured");
        assert!(recorder.clock_warnings().is_empty());

        recorder.store_clock("edge", StoreClock::Measured { skew: 7263.26 }, limit);
        let status = recorder.snapshot();
        assert_eq!((status.stores["edge"].clock_skew_seconds, exceeds(&recorder)), (Some(7263.3), Some(120.0)));
        let warnings = recorder.clock_warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("2h 1m ahead of store edge's") && warnings[0].contains("chrony"), "{warnings:?}");
        assert!(recorder.summary().ends_with("; clock 2h 1m ahead of store edge's"), "{}", recorder.summary());
        let metrics = recorder.metrics.render();
        assert!(metrics.contains("keyturn_clock_skew_seconds{store=\"edge\"} 7263.26"), "{metrics}");
        let table = status.render_table(true);
        assert!(
            table.contains(
                "STORE  CLOCK\nedge   this node's clock is 2h 1m ahead of store edge's, beyond max_clock_skew (2m)"
            ),
            "{table}"
        );

        // Within the limit but not within half of it: still said. Within half: cleared.
        recorder.store_clock("edge", StoreClock::Measured { skew: -100.0 }, limit);
        assert_eq!(exceeds(&recorder), Some(120.0));
        recorder.store_clock("edge", StoreClock::Measured { skew: -59.0 }, limit);
        assert_eq!(exceeds(&recorder), None);
        assert!(recorder.clock_warnings().is_empty());
        assert!(
            recorder.snapshot().render_table(true).contains("edge   this node's clock is 59s behind store edge's\n")
        );

        recorder.store_clock("dev", StoreClock::Node, limit);
        assert_eq!(recorder.snapshot().stores["dev"].clock_skew_seconds, None);
        assert!(!recorder.metrics.render().contains("store=\"dev\""));
    }

    #[test]
    fn one_outcome_moves_log_metrics_status_and_readiness_together() {
        let clock = Arc::new(clock::TokioClock::starting_at(humantime::parse_rfc3339("2026-12-01T00:00:00Z").unwrap()));
        let recorder = Recorder::new("edge-17", clock, Arc::new(Metrics::new()), None);
        recorder.plan([subject("db"), Subject { required: false, ..subject("api") }]);
        assert!(!recorder.is_ready());
        assert_eq!(recorder.waiting_for(), ["db"]);

        recorder.record(subject("db"), Outcome::ReadFailed { error: "store down", retry_in: None });
        recorder.record(subject("db"), Outcome::ReadFailed { error: "store down", retry_in: None });
        let status = recorder.snapshot();
        assert_eq!(status.policies["db"].consecutive_failures, 2);
        assert!(!recorder.is_ready());

        let version = VersionId::from(3);
        recorder.record(
            subject("db"),
            Outcome::Delivered { version: &version, previous_listed: None, took: Duration::ZERO },
        );
        assert!(recorder.is_ready(), "the only required policy is on disk");
        let status = recorder.snapshot();
        assert_eq!(status.policies["db"].version, Some(version));
        assert_eq!(
            (status.policies["db"].last_error.as_deref(), status.policies["db"].consecutive_failures),
            (None, 0)
        );
        assert_eq!(status.updated_at, "2026-12-01T00:00:00Z");
        let metrics = recorder.metrics.render();
        assert!(metrics.contains("keyturn_deliveries_total{policy=\"db\",result=\"error\"} 2"), "{metrics}");
        assert!(metrics.contains("keyturn_deliveries_total{policy=\"db\",result=\"ok\"} 1"), "{metrics}");
        let held = "node=\"edge-17\",policy=\"db\",store=\"dev\",secret=\"db-password\",version=\"3\"";
        assert!(metrics.contains(&format!("keyturn_secret_info{{{held}}} 1")), "{metrics}");
        // Delivered at the clock's start: the fleet orders versions by when nodes took them.
        let since = humantime::parse_rfc3339("2026-12-01T00:00:00Z").unwrap();
        let since = format!("keyturn_secret_delivered_timestamp_seconds{{{held}}} {}", clock::unix_seconds(since));
        assert!(metrics.contains(&since), "{metrics}");

        // A version found on disk unchanged keeps the delivery time an earlier run recorded.
        let earlier = Status {
            policies: [(
                "api".to_string(),
                PolicyStatus {
                    version: Some(VersionId::from(7)),
                    delivered_at: Some("2026-11-30T08:00:00Z".into()),
                    ..PolicyStatus::default()
                },
            )]
            .into(),
            ..Status::default()
        };
        recorder.resume(&earlier);
        let api = Subject { required: false, ..subject("api") };
        recorder.record(api, Outcome::Unchanged { version: &VersionId::from(7) });
        let status = recorder.snapshot();
        assert_eq!(status.policies["api"].delivered_at.as_deref(), Some("2026-11-30T08:00:00Z"));
        assert_eq!(status.policies["api"].checked_at.as_deref(), Some("2026-12-01T00:00:00Z"));
        // A version no earlier run recorded: when it came is unknown.
        let fresh = Recorder::new("edge-17", recorder.clock.clone(), Arc::new(Metrics::new()), None);
        fresh.record(api, Outcome::Unchanged { version: &VersionId::from(8) });
        assert_eq!(fresh.snapshot().policies["api"].delivered_at, None);

        // A policy that is no longer configured leaves the status and the metrics.
        recorder.plan([Subject { required: false, ..subject("api") }]);
        assert!(!recorder.snapshot().policies.contains_key("db"));
        assert!(!recorder.metrics.render().contains("policy=\"db\",version"));
    }
}
