//! When a secret is due for rotation, as a pure function.
//!
//! The answer is derived from the creation time of the version that is `current` in the store,
//! never from local state, so a restarted agent and every other node compute the same due
//! time. On top of it each node adds a delay of its own (the "jitter"), taken from a hash of
//! node, secret and version: deterministic for a node, different between nodes, so that a
//! fleet that is due at the same moment does not storm the lease. Cron patterns are evaluated
//! in UTC.

use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};

/// The default spread of rotation start times across a fleet: 5% of the period, at most this.
pub const MAX_DEFAULT_JITTER: Duration = Duration::from_secs(600);

/// How often a secret is replaced.
#[derive(Debug, Clone)]
pub enum Schedule {
    Every(Duration),
    Cron(Box<croner::Cron>),
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Schedule::Every(a), Schedule::Every(b)) => a == b,
            (Schedule::Cron(a), Schedule::Cron(b)) => a.as_str() == b.as_str(),
            _ => false,
        }
    }
}

impl Schedule {
    /// A five-field cron pattern (minute hour day-of-month month day-of-week), or `@daily`.
    pub fn cron(pattern: &str) -> Result<Schedule, String> {
        let cron: croner::Cron = pattern.parse().map_err(|e| {
            format!("\"{pattern}\" is not a cron pattern ({e}); expected five fields such as \"0 3 * * SUN\"")
        })?;
        Ok(Schedule::Cron(Box::new(cron)))
    }

    /// The due time of a version created at `created`, before jitter: one period later, or
    /// the first cron occurrence strictly after it.
    pub fn due(&self, created: SystemTime) -> SystemTime {
        match self {
            Schedule::Every(period) => created + *period,
            Schedule::Cron(cron) => {
                let after: DateTime<Utc> = created.into();
                cron.find_next_occurrence(&after, false).map(SystemTime::from).unwrap_or(far_future())
            }
        }
    }

    /// The default jitter window: 5% of the period, at most [`MAX_DEFAULT_JITTER`].
    pub fn default_jitter(&self) -> Duration {
        match self {
            Schedule::Every(period) => period.mul_f64(0.05).min(MAX_DEFAULT_JITTER),
            Schedule::Cron(_) => MAX_DEFAULT_JITTER,
        }
    }
}

/// When this node should try to rotate a version created at `created`.
pub fn next_rotation(schedule: &Schedule, created: SystemTime, jitter: Duration, node_unit: f64) -> SystemTime {
    schedule.due(created) + jitter.mul_f64(node_unit.clamp(0.0, 1.0))
}

/// A number in `[0, 1)` fixed for one node, secret and version: the node's place in the
/// jitter window for that rotation.
pub fn node_unit(node: &str, secret: &str, version: &str) -> f64 {
    let hash = crc32c::crc32c(format!("{node}\0{secret}\0{version}").as_bytes());
    f64::from(hash) / (f64::from(u32::MAX) + 1.0)
}

/// Whether a version replaced at `replaced` is still inside its grace period.
pub fn in_grace(replaced: SystemTime, grace: Duration, now: SystemTime) -> bool {
    now < replaced + grace
}

fn far_future() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(253_402_300_799) // 9999-12-31
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> SystemTime {
        humantime::parse_rfc3339(text).unwrap()
    }

    fn show(time: SystemTime) -> String {
        humantime::format_rfc3339_seconds(time).to_string()
    }

    #[test]
    fn due_times() {
        let day = Duration::from_secs(86_400);
        // (schedule, created, due)
        let cases: Vec<(Schedule, &str, &str)> = vec![
            (Schedule::Every(30 * day), "2026-11-01T10:00:00Z", "2026-12-01T10:00:00Z"),
            (Schedule::Every(Duration::from_secs(90)), "2026-11-01T10:00:00Z", "2026-11-01T10:01:30Z"),
            // Sunday 03:00 UTC: created on a Wednesday, due the next Sunday.
            (Schedule::cron("0 3 * * SUN").unwrap(), "2026-11-25T12:00:00Z", "2026-11-29T03:00:00Z"),
            // Created exactly at an occurrence: the next one, never the same instant.
            (Schedule::cron("0 3 * * SUN").unwrap(), "2026-11-29T03:00:00Z", "2026-12-06T03:00:00Z"),
            (Schedule::cron("@daily").unwrap(), "2026-11-28T23:59:59Z", "2026-11-29T00:00:00Z"),
            (Schedule::cron("*/15 * * * *").unwrap(), "2026-11-28T10:07:00Z", "2026-11-28T10:15:00Z"),
        ];
        for (schedule, created, due) in cases {
            assert_eq!(show(schedule.due(at(created))), due, "{schedule:?} from {created}");
        }
    }

    #[test]
    fn jitter_is_per_node_and_stable() {
        let schedule = Schedule::Every(Duration::from_secs(3600));
        let created = at("2026-11-28T10:00:00Z");
        let window = schedule.default_jitter();
        assert_eq!(window, Duration::from_secs(180));
        let a = next_rotation(&schedule, created, window, node_unit("node-a", "api-key", "7"));
        let again = next_rotation(&schedule, created, window, node_unit("node-a", "api-key", "7"));
        let b = next_rotation(&schedule, created, window, node_unit("node-b", "api-key", "7"));
        assert_eq!(a, again, "a restarted agent computes the same time");
        assert_ne!(a, b, "two nodes spread out");
        for t in [a, b] {
            assert!(t >= schedule.due(created) && t < schedule.due(created) + window);
        }
        assert_eq!(Schedule::Every(Duration::from_secs(30 * 86_400)).default_jitter(), MAX_DEFAULT_JITTER);
    }

    #[test]
    fn node_units_spread_evenly() {
        let mut buckets = [0u32; 10];
        for i in 0..10_000 {
            buckets[(node_unit(&format!("node-{i}"), "s", "1") * 10.0) as usize] += 1;
        }
        assert!(buckets.iter().all(|&n| (800..1200).contains(&n)), "{buckets:?}");
    }

    #[test]
    fn grace() {
        let replaced = at("2026-11-28T10:00:00Z");
        let grace = Duration::from_secs(86_400);
        assert!(in_grace(replaced, grace, at("2026-11-29T09:59:59Z")));
        assert!(!in_grace(replaced, grace, at("2026-11-29T10:00:00Z")));
    }

    #[test]
    fn bad_cron_patterns_say_what_is_expected() {
        let err = Schedule::cron("every sunday").unwrap_err();
        assert!(err.contains("\"every sunday\" is not a cron pattern") && err.contains("0 3 * * SUN"), "{err}");
    }
}
