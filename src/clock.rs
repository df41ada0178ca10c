//! Time, the only place keyturn reads the wall clock.
//!
//! Every decision that depends on the date (is a rotation due, is a grace period over, has a
//! lease expired) takes its time from a [`Clock`] that is handed in, never from
//! `SystemTime::now()` at the call site. The agent runs on [`SystemClock`]; tests run the engine
//! on [`TokioClock`], which follows tokio's clock, so that `tokio::time::pause()` and
//! `advance()` move days of schedule in microseconds. Durations are measured with
//! `tokio::time::Instant`, which follows the same paused clock.
//!
//! Also here: the text and number forms of a time that status files, metrics and events use.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Where "now" comes from.
pub trait Clock: Send + Sync + fmt::Debug {
    fn now(&self) -> SystemTime;
}

/// A clock shared by everything one agent runs.
pub type SharedClock = Arc<dyn Clock>;

/// The machine's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// The system clock, shared.
pub fn system() -> SharedClock {
    Arc::new(SystemClock)
}

/// A wall clock that starts at a fixed time and moves with tokio's clock: paused in tests,
/// it advances only when the test (or tokio's auto-advance of an idle runtime) moves it.
#[derive(Debug)]
pub struct TokioClock {
    start: SystemTime,
    started: tokio::time::Instant,
}

impl TokioClock {
    pub fn starting_at(start: SystemTime) -> Self {
        TokioClock { start, started: tokio::time::Instant::now() }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> SystemTime {
        self.start + self.started.elapsed()
    }
}

/// How to set a node's clock right, for the errors and warnings about it.
pub const TIME_SYNC_ADVICE: &str = "set the clock right and keep it synchronized: chrony (`chronyc tracking` shows its offset) or systemd-timesyncd (`timedatectl set-ntp true`, then `timedatectl timesync-status`)";

/// RFC 3339 to the second, UTC: the form of every time in status files and tables.
pub fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

/// Seconds since the Unix epoch, the form Prometheus timestamps take.
pub fn unix_seconds(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// Whole milliseconds, for event timings.
pub fn millis(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_tokio_clock_moves_only_with_tokio_time() {
        let start = humantime::parse_rfc3339("2026-12-01T00:00:00Z").unwrap();
        let clock = TokioClock::starting_at(start);
        assert_eq!(clock.now(), start);
        tokio::time::advance(Duration::from_secs(86_400)).await;
        assert_eq!(rfc3339(clock.now()), "2026-12-02T00:00:00Z");
    }

    #[test]
    fn forms() {
        let at = humantime::parse_rfc3339("2026-12-01T00:00:01.5Z").unwrap();
        assert_eq!(rfc3339(at), "2026-12-01T00:00:01Z");
        assert_eq!(unix_seconds(at), 1_796_083_201.5);
        assert_eq!(millis(Duration::from_micros(2_500)), 2);
    }
}
