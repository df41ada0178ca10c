//! Google's time, as Google's own responses state it.
//!
//! Token lifetimes are Google's: STS says `expires_in` from the moment it answered, IAM
//! Credentials an absolute `expireTime`, and both are judged by Google's clock when the token is
//! used. An edge node's clock may be minutes or hours off, so comparing them with the node's
//! clock would either refresh on every request or use tokens Google already refuses. Every
//! response from Google carries a `Date` header; [`ServerTime`] keeps the latest one with the
//! monotonic instant it arrived, and carries it forward with the monotonic clock. Before any
//! response has been seen it falls back to the node's clock.
//!
//! `Date` has one-second resolution, so the estimate is up to a second behind: far inside the
//! minutes of margin tokens are refreshed with.

use std::sync::Mutex;
use std::time::SystemTime;

use reqwest::header::HeaderMap;
use tokio::time::Instant;

use crate::clock::SharedClock;

#[derive(Debug)]
pub struct ServerTime {
    /// The last `Date` seen, and when (monotonic) it was seen.
    anchor: Mutex<Option<(SystemTime, Instant)>>,
    /// The node's clock, until Google has said what time it is.
    fallback: SharedClock,
}

impl ServerTime {
    pub fn new(fallback: SharedClock) -> Self {
        ServerTime { anchor: Mutex::new(None), fallback }
    }

    /// Records the `Date` of a response from Google, if it has a readable one.
    pub fn observe(&self, headers: &HeaderMap) -> Option<SystemTime> {
        let date = headers.get(reqwest::header::DATE)?.to_str().ok()?;
        let date = httpdate::parse_http_date(date).ok()?;
        *self.anchor.lock().unwrap_or_else(|e| e.into_inner()) = Some((date, Instant::now()));
        Some(date)
    }

    /// Google's time now, as best known.
    pub fn now(&self) -> SystemTime {
        match *self.anchor.lock().unwrap_or_else(|e| e.into_inner()) {
            Some((date, seen)) => date + seen.elapsed(),
            None => self.fallback.now(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use reqwest::header::{DATE, HeaderValue};

    use super::*;
    use crate::clock::TokioClock;

    #[tokio::test(start_paused = true)]
    async fn the_servers_date_carried_forward_by_the_monotonic_clock() {
        let node = humantime::parse_rfc3339("2026-12-01T00:00:00Z").unwrap();
        let time = ServerTime::new(std::sync::Arc::new(TokioClock::starting_at(node)));
        assert_eq!(time.now(), node, "the node's clock until Google has spoken");

        // Google is two hours ahead of this node.
        let mut headers = HeaderMap::new();
        headers.insert(DATE, HeaderValue::from_static("Tue, 01 Dec 2026 02:00:00 GMT"));
        time.observe(&headers).unwrap();
        tokio::time::advance(Duration::from_secs(90)).await;
        assert_eq!(crate::clock::rfc3339(time.now()), "2026-12-01T02:01:30Z");

        // A later answer moves it again, even backwards; junk is ignored.
        headers.insert(DATE, HeaderValue::from_static("Tue, 01 Dec 2026 01:00:00 GMT"));
        time.observe(&headers).unwrap();
        assert_eq!(crate::clock::rfc3339(time.now()), "2026-12-01T01:00:00Z");
        headers.insert(DATE, HeaderValue::from_static("yesterday"));
        assert_eq!(time.observe(&headers), None);
        assert_eq!(crate::clock::rfc3339(time.now()), "2026-12-01T01:00:00Z");
    }
}
