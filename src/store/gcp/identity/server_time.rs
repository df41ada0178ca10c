//! Google's time, as Google's own responses state it, and how far this node's clock is from it.
//!
//! Token lifetimes are Google's: STS says `expires_in` from the moment it answered, IAM
//! Credentials an absolute `expireTime`, and both are judged by Google's clock when the token is
//! used. Rotation due times and leases are judged on the store's clock too (see
//! [`crate::store::StoreClock`]). An edge node's clock may be minutes or hours off, so comparing
//! them with the node's clock would refresh on every request, use tokens Google already refuses,
//! rotate a fleet's secret early or take a live lease. Every response from Google carries a
//! `Date` header, error responses and the token endpoint's included; [`ServerTime`] reads each
//! one as a sample of Google's time against this process's **monotonic** clock, and keeps a
//! smoothed estimate: Google's time is then carried forward by the monotonic clock, which a step
//! of the node's wall clock (chrony, an operator's `date -s`) does not move.
//!
//! `Date` has one-second resolution and is truncated, so a sample is read as the middle of its
//! second (`Date` + 0.5 s), and the estimate is a moving average: within a few tenths of a
//! second of Google's time after a few answers, far inside the minutes of margin that tokens and
//! leases have. A sample more than [`STEP`] away from the estimate is a step (the node's clock
//! was not involved, so Google's or an emulator's clock moved) and replaces it at once.
//!
//! The **skew** is this node's wall clock minus Google's time: positive when the node is ahead.
//! Before any answer has been seen, Google's time is unknown; [`ServerTime::now`] then falls
//! back to the node's clock and [`ServerTime::skew`] says `None`.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::HeaderMap;
use tokio::time::Instant;

use crate::clock::SharedClock;

/// A sample this far from the estimate replaces it: the other clock was stepped.
pub const STEP: Duration = Duration::from_secs(5);
/// The weight of a new sample in the moving average: about the last eight answers count.
const WEIGHT: f64 = 0.125;

#[derive(Debug)]
pub struct ServerTime {
    estimate: Mutex<Option<Estimate>>,
    /// The node's clock: the fallback until Google has said what time it is, and the clock the
    /// skew is measured against.
    node: SharedClock,
    /// The origin of the monotonic seconds the estimate is kept in.
    origin: Instant,
}

/// Google's time as seconds since the epoch, less monotonic seconds since `origin`.
#[derive(Debug, Clone, Copy)]
struct Estimate {
    offset: f64,
    samples: u64,
}

impl ServerTime {
    pub fn new(node: SharedClock) -> Self {
        ServerTime { estimate: Mutex::new(None), node, origin: Instant::now() }
    }

    fn monotonic(&self) -> f64 {
        self.origin.elapsed().as_secs_f64()
    }

    /// Records the `Date` of a response from Google, if it has a readable one.
    pub fn observe(&self, headers: &HeaderMap) -> Option<SystemTime> {
        let date = headers.get(reqwest::header::DATE)?.to_str().ok()?;
        let date = httpdate::parse_http_date(date).ok()?;
        self.sample(date);
        Some(date)
    }

    /// One reading of Google's clock, `date` (a whole second), taken now.
    fn sample(&self, date: SystemTime) {
        let seconds = unix(date) + 0.5;
        let offset = seconds - self.monotonic();
        let mut estimate = self.estimate.lock().unwrap_or_else(|e| e.into_inner());
        *estimate = Some(match *estimate {
            Some(old) if (offset - old.offset).abs() <= STEP.as_secs_f64() => {
                Estimate { offset: old.offset + WEIGHT * (offset - old.offset), samples: old.samples + 1 }
            }
            Some(old) => {
                tracing::debug!(moved_s = offset - old.offset, "Google's clock moved against this node's: measuring again");
                Estimate { offset, samples: 1 }
            }
            None => Estimate { offset, samples: 1 },
        });
    }

    fn estimate(&self) -> Option<Estimate> {
        *self.estimate.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Google's time now, as best known; the node's clock until Google has answered.
    pub fn now(&self) -> SystemTime {
        match self.estimate() {
            Some(estimate) => from_unix(estimate.offset + self.monotonic()),
            None => self.node.now(),
        }
    }

    /// This node's clock minus Google's, in seconds (positive: the node is ahead), once an
    /// answer has said what time it is.
    pub fn skew(&self) -> Option<f64> {
        let estimate = self.estimate()?;
        Some(unix(self.node.now()) - (estimate.offset + self.monotonic()))
    }
}

/// Seconds since the epoch, negative before it.
fn unix(time: SystemTime) -> f64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => after.as_secs_f64(),
        Err(before) => -before.duration().as_secs_f64(),
    }
}

fn from_unix(seconds: f64) -> SystemTime {
    if seconds >= 0.0 {
        UNIX_EPOCH + Duration::from_secs_f64(seconds)
    } else {
        UNIX_EPOCH - Duration::from_secs_f64(-seconds)
    }
}

#[cfg(test)]
mod tests {
    use reqwest::header::{DATE, HeaderValue};

    use super::*;
    use crate::clock::TokioClock;

    fn date(text: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(DATE, HeaderValue::from_static(text));
        headers
    }

    #[tokio::test(start_paused = true)]
    async fn the_servers_date_carried_forward_by_the_monotonic_clock() {
        let node = humantime::parse_rfc3339("2026-12-01T00:00:00Z").unwrap();
        let time = ServerTime::new(std::sync::Arc::new(TokioClock::starting_at(node)));
        assert_eq!(time.now(), node, "the node's clock until Google has spoken");
        assert_eq!(time.skew(), None);

        // Google is two hours ahead of this node.
        time.observe(&date("Tue, 01 Dec 2026 02:00:00 GMT")).unwrap();
        tokio::time::advance(Duration::from_secs(90)).await;
        assert_eq!(crate::clock::rfc3339(time.now()), "2026-12-01T02:01:30Z");
        assert_eq!(time.skew(), Some(-7200.5), "the node is behind; a Date is read as the middle of its second");

        // A later answer an hour back is a step: taken at once, not averaged. Junk is ignored.
        time.observe(&date("Tue, 01 Dec 2026 01:01:30 GMT")).unwrap();
        assert_eq!(crate::clock::rfc3339(time.now()), "2026-12-01T01:01:30Z");
        assert_eq!(time.observe(&date("yesterday")), None);
        assert_eq!(crate::clock::rfc3339(time.now()), "2026-12-01T01:01:30Z");
    }

    /// Dates a second apart, sampled at every point of their second, average out to the
    /// real offset within a fraction of a second; a Date one second off moves it a little.
    #[tokio::test(start_paused = true)]
    async fn the_skew_is_smoothed_over_answers() {
        let node = humantime::parse_rfc3339("2026-12-01T00:00:00Z").unwrap();
        let time = ServerTime::new(std::sync::Arc::new(TokioClock::starting_at(node)));
        // Google is 180.3 s behind this node: at node time T it is T - 180.3.
        for tenth in 0..40u64 {
            let google = node + Duration::from_millis(tenth * 250) - Duration::from_millis(180_300);
            let whole = UNIX_EPOCH + Duration::from_secs(google.duration_since(UNIX_EPOCH).unwrap().as_secs());
            let mut headers = HeaderMap::new();
            headers.insert(DATE, HeaderValue::from_str(&httpdate::fmt_http_date(whole)).unwrap());
            time.observe(&headers).unwrap();
            tokio::time::advance(Duration::from_millis(250)).await;
        }
        let skew = time.skew().unwrap();
        assert!((skew - 180.3).abs() < 0.35, "{skew}");
        let google = unix(time.now()) - (unix(node) + 10.0 - 180.3);
        assert!(google.abs() < 0.35, "Google's time off by {google}");
    }
}
