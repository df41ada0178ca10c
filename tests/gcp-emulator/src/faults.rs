//! Fault injection and quotas: the deterministic ways the emulator misbehaves on purpose.
//!
//! Every fault is a counter, never a probability, so a test that asks for "the next 2 access
//! calls fail with 503" gets exactly that. Rules are consumed in the order they were added; a
//! rule without a method applies to every Secret Manager method but not to the identity
//! endpoints (token, STS, IAM Credentials), which a rule must name (`Method::Token`, …) to reach. Quotas are real rolling one-minute
//! windows per kind, counting admitted requests only, and use the emulator's clock.
//!
//! The order in which a request meets these (see `service`): drop → latency → injected
//! failure → authentication → permission → quota → the method itself → checksum corruption.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use crate::counts::Method;

/// What an injected failure answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Failure {
    /// 503 UNAVAILABLE, as during a Google front-end hiccup.
    Unavailable,
    /// 429 RESOURCE_EXHAUSTED with the quota message of the method's kind.
    ResourceExhausted,
}

/// The three per-project, per-minute quotas of Secret Manager (CONTRACT §12).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuotaKind {
    /// Access requests: 90,000 per minute per project at Google.
    Access,
    /// Read requests (get/list of secrets and versions): 600 per minute per project.
    Read,
    /// Write requests (create, update, delete, addVersion, enable, disable, destroy): 600.
    Write,
}

impl QuotaKind {
    pub const ALL: [QuotaKind; 3] = [QuotaKind::Access, QuotaKind::Read, QuotaKind::Write];

    /// Google's published limit for this kind.
    pub fn google_limit(self) -> u32 {
        match self {
            QuotaKind::Access => 90_000,
            QuotaKind::Read | QuotaKind::Write => 600,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            QuotaKind::Access => "access",
            QuotaKind::Read => "read",
            QuotaKind::Write => "write",
        }
    }

    /// (metric display name, limit display name, limit id) for the 429 message.
    pub(crate) fn labels(self) -> (&'static str, &'static str, &'static str) {
        match self {
            QuotaKind::Access => {
                ("Access requests", "Access requests per minute per project", "AccessRequestsPerMinutePerProject")
            }
            QuotaKind::Read => {
                ("Read requests", "Read requests per minute per project", "ReadRequestsPerMinutePerProject")
            }
            QuotaKind::Write => {
                ("Write requests", "Write requests per minute per project", "WriteRequestsPerMinutePerProject")
            }
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl std::str::FromStr for QuotaKind {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        QuotaKind::ALL
            .into_iter()
            .find(|k| k.as_str() == text)
            .ok_or_else(|| format!("unknown quota kind {text:?} (expected access, read or write)"))
    }
}

/// "The next `remaining` requests (of `method`, or of any Secret Manager method)".
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule<T> {
    remaining: u32,
    method: Option<Method>,
    effect: T,
}

fn take_matching<T: Copy>(rules: &mut Vec<Rule<T>>, method: Method) -> Option<T> {
    let position = rules.iter().position(|rule| match rule.method {
        Some(only) => only == method,
        None => !method.is_identity(),
    })?;
    let rule = &mut rules[position];
    rule.remaining -= 1;
    let effect = rule.effect;
    if rule.remaining == 0 {
        rules.remove(position);
    }
    Some(effect)
}

#[derive(Debug, Default)]
struct FaultState {
    latency: Duration,
    failures: Vec<Rule<Failure>>,
    request_drops: Vec<Rule<()>>,
    connection_drops: u32,
    corrupt_checksums: u32,
    /// Reads through an alias or `latest` see the secret as it was this many changes ago.
    alias_lag: u32,
    /// Per-minute limit per kind; `None` means unlimited.
    quota_limits: [Option<u32>; 3],
    /// Admission times within the last minute, per kind.
    quota_windows: [VecDeque<SystemTime>; 3],
}

/// Handle to the emulator's faults. Cheap to clone; every clone drives the same emulator.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    state: Arc<Mutex<FaultState>>,
    /// Quotas configured on the builder, restored by [`Faults::clear`].
    baseline_quotas: [Option<u32>; 3],
}

impl Faults {
    pub(crate) fn with_quotas(quotas: [Option<u32>; 3]) -> Self {
        let faults = Faults { state: Arc::default(), baseline_quotas: quotas };
        faults.lock().quota_limits = quotas;
        faults
    }

    fn lock(&self) -> MutexGuard<'_, FaultState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `latency` before every request is handled (admin routes excepted).
    /// `Duration::ZERO` removes it.
    pub fn set_latency(&self, latency: Duration) {
        self.lock().latency = latency;
    }

    /// The next `count` requests (of `method` only, if given) fail with `failure`.
    pub fn fail_next(&self, count: u32, failure: Failure, method: Option<Method>) {
        if count > 0 {
            self.lock().failures.push(Rule { remaining: count, method, effect: failure });
        }
    }

    /// The next `count` requests (of `method` only, if given) are read and then answered by
    /// closing the connection, with no HTTP response at all.
    pub fn drop_next_requests(&self, count: u32, method: Option<Method>) {
        if count > 0 {
            self.lock().request_drops.push(Rule { remaining: count, method, effect: () });
        }
    }

    /// The next `count` TCP connections are closed as soon as they are accepted.
    pub fn drop_next_connections(&self, count: u32) {
        self.lock().connection_drops += count;
    }

    /// The next `count` successful access responses carry a wrong `dataCrc32c`; the data is
    /// unchanged, so a client that verifies the checksum must notice.
    pub fn corrupt_next_checksums(&self, count: u32) {
        self.lock().corrupt_checksums += count;
    }

    /// Reads through an alias or `latest` (get and access) answer from a lagging replica: an
    /// alias as it was `changes` alias changes ago, `latest` as it was `changes` versions ago.
    /// Reads by number stay strongly consistent, as Google documents (CONTRACT §4: adding a
    /// version and reading it by number is strongly consistent; alias reads "typically within
    /// minutes"). Lasts until cleared; 0 removes it.
    pub fn lag_alias_reads(&self, changes: u32) {
        self.lock().alias_lag = changes;
    }

    /// Sets the per-minute quota of one kind (`None`: unlimited). Takes effect at once; the
    /// requests already admitted in the last minute count against the new limit.
    pub fn set_quota(&self, kind: QuotaKind, per_minute: Option<u32>) {
        self.lock().quota_limits[kind.index()] = per_minute;
    }

    /// Removes every fault and restores the quotas the emulator was built with (with empty
    /// windows).
    pub fn clear(&self) {
        let mut state = self.lock();
        *state = FaultState::default();
        state.quota_limits = self.baseline_quotas;
    }

    pub(crate) fn latency(&self) -> Duration {
        self.lock().latency
    }

    pub(crate) fn take_failure(&self, method: Method) -> Option<Failure> {
        take_matching(&mut self.lock().failures, method)
    }

    pub(crate) fn take_request_drop(&self, method: Method) -> bool {
        take_matching(&mut self.lock().request_drops, method).is_some()
    }

    pub(crate) fn take_connection_drop(&self) -> bool {
        let mut state = self.lock();
        if state.connection_drops > 0 {
            state.connection_drops -= 1;
            true
        } else {
            false
        }
    }

    pub(crate) fn alias_lag(&self) -> u32 {
        self.lock().alias_lag
    }

    pub(crate) fn take_checksum_corruption(&self) -> bool {
        let mut state = self.lock();
        if state.corrupt_checksums > 0 {
            state.corrupt_checksums -= 1;
            true
        } else {
            false
        }
    }

    /// Admits one request of `kind` at `now`, or returns the limit it would exceed.
    pub(crate) fn admit(&self, kind: QuotaKind, now: SystemTime) -> Result<(), u32> {
        let mut state = self.lock();
        let Some(limit) = state.quota_limits[kind.index()] else {
            return Ok(());
        };
        let window = &mut state.quota_windows[kind.index()];
        let minute_ago = now.checked_sub(Duration::from_secs(60));
        while window.front().is_some_and(|t| minute_ago.is_some_and(|cut| *t <= cut)) {
            window.pop_front();
        }
        if window.len() >= limit as usize {
            return Err(limit);
        }
        window.push_back(now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_are_counted_and_method_scoped() {
        let faults = Faults::default();
        faults.fail_next(1, Failure::Unavailable, Some(Method::Access));
        faults.fail_next(2, Failure::ResourceExhausted, None);
        assert_eq!(faults.take_failure(Method::Token), None, "token must be named");
        assert_eq!(faults.take_failure(Method::Access), Some(Failure::Unavailable));
        assert_eq!(faults.take_failure(Method::Access), Some(Failure::ResourceExhausted));
        assert_eq!(faults.take_failure(Method::Get), Some(Failure::ResourceExhausted));
        assert_eq!(faults.take_failure(Method::Get), None);
    }

    #[test]
    fn quota_window_rolls_after_a_minute() {
        let faults = Faults::default();
        faults.set_quota(QuotaKind::Read, Some(2));
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        assert_eq!(faults.admit(QuotaKind::Read, t0), Ok(()));
        assert_eq!(faults.admit(QuotaKind::Read, t0), Ok(()));
        assert_eq!(faults.admit(QuotaKind::Read, t0), Err(2));
        assert_eq!(faults.admit(QuotaKind::Access, t0), Ok(()), "kinds are separate");
        assert_eq!(faults.admit(QuotaKind::Read, t0 + Duration::from_secs(60)), Ok(()));
    }

    #[test]
    fn clear_restores_the_baseline_quotas() {
        let faults = Faults::with_quotas([Some(5), None, None]);
        faults.set_quota(QuotaKind::Access, Some(1));
        faults.corrupt_next_checksums(3);
        faults.clear();
        assert!(!faults.take_checksum_corruption());
        let now = SystemTime::now();
        for _ in 0..5 {
            assert_eq!(faults.admit(QuotaKind::Access, now), Ok(()));
        }
        assert_eq!(faults.admit(QuotaKind::Access, now), Err(5));
    }
}
