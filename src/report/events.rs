//! Central reports: every delivery, rotation, failure and revoke becomes an event that one
//! place can collect for the whole fleet.
//!
//! Events are CloudEvents 1.0 in structured mode (`application/cloudevents+json`), one per
//! HTTP POST to `[report] url`. They carry node, policy, secret, store, versions, result and
//! timing, never a value. Each event is appended to `STATE_DIR/events.jsonl` (fsync'd) before
//! anything is sent, and removed only after the collector answered 2xx, so neither a collector
//! outage nor an agent restart loses one. Delivery is **at least once**: an event acknowledged
//! just before a crash is sent again after the restart with the same `id`, which collectors use
//! to drop duplicates. The spool is bounded (`spool_max_events`); when full, the oldest event
//! is dropped, counted in `keyturn_report_events_total{result="dropped"}` and logged. A spool
//! file is read within that bound too (the newest lines that fit, each at most 16 KiB, links
//! not followed), whatever it holds. Events are posted under [`crate::http`]'s policy (no
//! redirect, no proxy for loopback), with a bearer token read as [`crate::http::read_token`]
//! reads one.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::metrics::{Metrics, ResultLabel};
use crate::backoff::{retry_delay_from, unit_random};
use crate::clock::SharedClock;
use crate::config::Report;

pub const SPOOL: &str = "events.jsonl";
/// Acknowledged events are removed from the spool file in batches, not one rewrite each.
const REWRITE_EVERY: usize = 100;
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What happened, as the event's `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Delivered,
    Failed,
    Rotated,
    RotationFailed,
    Revoked,
    NotifyFailed,
    /// A reload was refused; the running configuration stays.
    ConfigRejected,
    /// A bundle was rebuilt from the sealed cache, the store not read yet.
    Restored,
    /// An old version's retirement waits for the nodes that still hold it.
    RetirementWaiting,
    /// An old version was disabled (result: retired, retired_after_wait, revoked).
    Retired,
    /// This node's clock is further from a store's than `[agent] max_clock_skew` (result
    /// `exceeded`), or back within it (`ok`).
    ClockSkew,
}

impl Kind {
    fn as_type(self) -> &'static str {
        match self {
            Kind::Delivered => "dev.keyturn.secret.delivered",
            Kind::Failed => "dev.keyturn.secret.failed",
            Kind::Rotated => "dev.keyturn.secret.rotated",
            Kind::RotationFailed => "dev.keyturn.secret.rotation_failed",
            Kind::Revoked => "dev.keyturn.secret.revoked",
            Kind::NotifyFailed => "dev.keyturn.secret.notify_failed",
            Kind::ConfigRejected => "dev.keyturn.config.rejected",
            Kind::Restored => "dev.keyturn.secret.restored",
            Kind::RetirementWaiting => "dev.keyturn.secret.retirement_waiting",
            Kind::Retired => "dev.keyturn.secret.retired",
            Kind::ClockSkew => "dev.keyturn.store.clock_skew",
        }
    }
}

/// The facts of one event: names, versions, outcome, timing; never a value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Facts {
    pub policy: String,
    pub secret: String,
    pub store: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// How old a version restored from the sealed cache was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_seconds: Option<u64>,
    /// The nodes a retirement waited for (or, retired anyway, that still held the version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Vec<String>>,
    /// Nodes silent for longer than `[fleet] silent_after`, not waited for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gone: Option<Vec<String>>,
    /// This node's clock minus the store's, in whole seconds (positive: the node is ahead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_skew_seconds: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub specversion: String,
    pub id: String,
    pub source: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub time: String,
    pub subject: String,
    pub datacontenttype: String,
    pub data: EventData,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventData {
    pub node: String,
    pub result: String,
    #[serde(flatten)]
    pub facts: Facts,
}

#[derive(Debug)]
pub struct Reporter {
    config: Report,
    node: String,
    spool: Mutex<Spool>,
    wake: Notify,
    metrics: Arc<Metrics>,
    client: reqwest::Client,
    /// Each event's time.
    clock: SharedClock,
    /// `NODE-STARTNANOS-SEQ`: unique across restarts of this node without any stored counter.
    id_prefix: String,
    sequence: AtomicU64,
}

#[derive(Debug)]
struct Spool {
    path: PathBuf,
    /// Unsent events, oldest first, as the JSON lines the file holds.
    events: VecDeque<String>,
    /// Acknowledged since the file was last rewritten.
    acknowledged: usize,
}

impl Reporter {
    /// Opens the spool under `state_dir`, with whatever an earlier run left unsent.
    pub fn open(
        config: &Report,
        node: &str,
        state_dir: &Path,
        metrics: Arc<Metrics>,
        clock: SharedClock,
    ) -> std::io::Result<Reporter> {
        crate::sys::create_dir(state_dir, 0o700)?;
        let path = state_dir.join(SPOOL);
        let events = read_spool(&path, config.spool_max_events)?;
        if !events.is_empty() {
            tracing::info!(events = events.len(), spool = %path.display(), "unsent report events from an earlier run");
        }
        metrics.report_spool.set(events.len() as i64);
        let started = clock.now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let client = crate::http::client(&config.url, config.timeout).map_err(std::io::Error::other)?;
        Ok(Reporter {
            config: config.clone(),
            node: node.to_string(),
            spool: Mutex::new(Spool { path, events, acknowledged: 0 }),
            wake: Notify::new(),
            metrics,
            client,
            clock,
            id_prefix: format!("{node}-{started}"),
            sequence: AtomicU64::new(0),
        })
    }

    fn spool(&self) -> MutexGuard<'_, Spool> {
        self.spool.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records an event: into the spool file first, then it is sent when it can be.
    pub fn record(&self, kind: Kind, result: &str, facts: Facts) {
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed);
        let event = Event {
            specversion: "1.0".into(),
            id: format!("{}-{sequence}", self.id_prefix),
            source: format!("keyturn://{}", self.node),
            kind: kind.as_type().into(),
            time: humantime::format_rfc3339_millis(self.clock.now()).to_string(),
            // Events about the configuration as a whole name no policy; a store's, only the store.
            subject: match (facts.policy.is_empty(), facts.store.is_empty()) {
                (false, _) => facts.policy.clone(),
                (true, false) => format!("store/{}", facts.store),
                (true, true) => "config".to_string(),
            },
            datacontenttype: "application/json".into(),
            data: EventData { node: self.node.clone(), result: result.into(), facts },
        };
        let line = serde_json::to_string(&event).expect("an event serializes");
        let mut spool = self.spool();
        spool.events.push_back(line.clone());
        let mut dropped = 0;
        while spool.events.len() > self.config.spool_max_events {
            spool.events.pop_front();
            dropped += 1;
        }
        let written = if dropped > 0 { spool.rewrite() } else { spool.append(&line) };
        let pending = spool.events.len();
        drop(spool);
        if let Err(e) = written {
            tracing::warn!(error = %e, "cannot write the report spool; the event is kept in memory only");
        }
        if dropped > 0 {
            tracing::warn!(dropped, max = self.config.spool_max_events, "report spool full: oldest events dropped");
            self.metrics.report_events.get_or_create(&ResultLabel { result: "dropped" }).inc_by(dropped);
        }
        self.metrics.report_events.get_or_create(&ResultLabel { result: "spooled" }).inc();
        self.metrics.report_spool.set(pending as i64);
        self.wake.notify_one();
    }

    /// Sends spooled events until dropped, oldest first, backing off while the collector fails.
    pub async fn send(self: Arc<Self>) {
        let mut failures = 0u32;
        loop {
            let next = self.spool().events.front().cloned();
            let Some(line) = next else {
                self.spool().flush_acknowledged();
                self.wake.notified().await;
                continue;
            };
            match self.post(&line).await {
                Ok(()) => {
                    failures = 0;
                    let mut spool = self.spool();
                    if spool.events.front() == Some(&line) {
                        spool.events.pop_front();
                        spool.acknowledged += 1;
                        if spool.acknowledged >= REWRITE_EVERY {
                            spool.flush_acknowledged();
                        }
                    }
                    self.metrics.report_spool.set(spool.events.len() as i64);
                    drop(spool);
                    self.metrics.report_events.get_or_create(&ResultLabel { result: "sent" }).inc();
                }
                Err(e) => {
                    failures += 1;
                    let wait = retry_delay_from(Duration::from_secs(1), failures, MAX_BACKOFF, unit_random());
                    if failures == 1 || failures.is_power_of_two() {
                        tracing::warn!(error = %e, pending = self.spool().events.len(), retry_in_s = wait.as_secs_f64(), "cannot send report events; they stay spooled");
                    }
                    // A new event wakes the sender early: the collector may be back.
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.wake.notified() => {}
                    }
                }
            }
        }
    }

    async fn post(&self, line: &str) -> Result<(), String> {
        let mut request = self
            .client
            .post(&self.config.url)
            .header("content-type", "application/cloudevents+json; charset=utf-8")
            .body(line.to_string());
        if let Some(path) = &self.config.bearer_token_file {
            let token = crate::http::read_token(path, self.config.timeout).await?;
            request = request.bearer_auth(token.trim());
        }
        let response = request.send().await.map_err(crate::http::error)?;
        if response.status().is_success() {
            Ok(())
        } else if response.status().is_redirection() {
            Err(format!("the collector answered {}; redirects are not followed", response.status()))
        } else {
            Err(format!("the collector answered {}", response.status()))
        }
    }
}

/// The longest line a spool holds: an event is a few hundred bytes.
const MAX_EVENT_LINE: usize = 16 * 1024;

/// The unsent events of a spool file, newest `max` at most. The file is state, but state a
/// crash, a full disk or a hand may have damaged: only its last `max` lines' worth of bytes is
/// read, lines that are not events (or are longer than [`MAX_EVENT_LINE`]) are skipped, and a
/// link is not followed.
fn read_spool(path: &Path, max: usize) -> std::io::Result<VecDeque<String>> {
    use std::io::{Read, Seek, SeekFrom};
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(VecDeque::new()),
        Err(e) => return Err(e),
    };
    let length = file.metadata()?.len();
    let budget = (max.saturating_add(1)).saturating_mul(MAX_EVENT_LINE) as u64;
    let start = length.saturating_sub(budget);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.take(budget).read_to_end(&mut bytes)?;
    let mut lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
    if start > 0 && !lines.is_empty() {
        // The first line was cut by the seek.
        lines.remove(0);
    }
    let mut events: VecDeque<String> = lines
        .into_iter()
        .filter(|line| line.len() <= MAX_EVENT_LINE)
        .filter_map(|line| std::str::from_utf8(line).ok())
        .filter(|line| serde_json::from_str::<Event>(line).is_ok())
        .map(String::from)
        .collect();
    while events.len() > max {
        events.pop_front();
    }
    Ok(events)
}

impl Spool {
    fn append(&self, line: &str) -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(&self.path)?;
        file.write_all(format!("{line}\n").as_bytes())?;
        file.sync_data()
    }

    fn rewrite(&mut self) -> std::io::Result<()> {
        let mut text = String::new();
        for line in &self.events {
            text.push_str(line);
            text.push('\n');
        }
        self.acknowledged = 0;
        crate::sys::replace_file(&self.path, text.as_bytes(), 0o600)
    }

    /// Removes acknowledged events from the file, if any are waiting to be.
    fn flush_acknowledged(&mut self) {
        if self.acknowledged > 0
            && let Err(e) = self.rewrite()
        {
            tracing::warn!(error = %e, "cannot rewrite the report spool; acknowledged events may be sent again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(max: usize) -> Report {
        Report {
            url: "http://127.0.0.1:9/events".into(),
            bearer_token_file: None,
            timeout: Duration::from_secs(1),
            spool_max_events: max,
        }
    }

    #[tokio::test]
    async fn events_are_spooled_bounded_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::new());
        let reporter =
            Reporter::open(&config(10), "edge-17", dir.path(), metrics.clone(), crate::clock::system()).unwrap();
        for i in 0..12 {
            let facts = Facts { policy: "db".into(), version: Some(i.to_string()), ..Facts::default() };
            reporter.record(Kind::Delivered, "ok", facts);
        }
        let reopened =
            Reporter::open(&config(10), "edge-17", dir.path(), metrics.clone(), crate::clock::system()).unwrap();
        let events: Vec<Event> = reopened.spool().events.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(events.len(), 10, "bounded");
        assert_eq!(events[0].data.facts.version.as_deref(), Some("2"), "the two oldest were dropped");
        assert_eq!(events[0].specversion, "1.0");
        assert_eq!(events[0].kind, "dev.keyturn.secret.delivered");
        assert_eq!(events[0].source, "keyturn://edge-17");
        assert!(events[0].id.starts_with("edge-17-"));
        assert!(metrics.render().contains("keyturn_report_events_total{result=\"dropped\"} 2"));
        let mut ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
        ids.dedup();
        assert_eq!(ids.len(), 10, "ids are unique");
    }

    /// A spool left by another configuration, damaged, or grown by hand is read within its
    /// bound: the newest events that fit, never more than `spool_max_events`.
    #[tokio::test]
    async fn a_spool_is_read_within_its_bound_whatever_the_file_holds() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::new());
        let reporter =
            Reporter::open(&config(1000), "edge-17", dir.path(), metrics.clone(), crate::clock::system()).unwrap();
        for i in 0..50 {
            let facts = Facts { policy: "db".into(), version: Some(i.to_string()), ..Facts::default() };
            reporter.record(Kind::Delivered, "ok", facts);
        }
        drop(reporter);
        let path = dir.path().join(SPOOL);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.insert_str(0, &"x".repeat(5 * MAX_EVENT_LINE));
        text.push_str("not an event\n\u{0}\u{ff}\n");
        crate::sys::replace_file(&path, text.as_bytes(), 0o600).unwrap();
        let reopened =
            Reporter::open(&config(10), "edge-17", dir.path(), metrics.clone(), crate::clock::system()).unwrap();
        let events: Vec<Event> = reopened.spool().events.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(events.len(), 10, "the newest ten");
        assert_eq!(events[9].data.facts.version.as_deref(), Some("49"));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]

        /// Whatever a spool file holds, reading it keeps at most `max` events, each an event.
        #[test]
        fn any_spool_file_reads_as_at_most_max_events(
            lines in proptest::collection::vec(proptest::prelude::any::<Vec<u8>>(), 0..40),
            max in 1usize..20,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(SPOOL);
            let event = r#"{"specversion":"1.0","id":"n-1-0","source":"keyturn://n","type":"t","time":"x","subject":"p","datacontenttype":"application/json","data":{"node":"n","result":"ok","policy":"p","secret":"s","store":"d"}}"#;
            let mut bytes = Vec::new();
            for (i, line) in lines.iter().enumerate() {
                bytes.extend_from_slice(if i % 3 == 0 { event.as_bytes() } else { line });
                bytes.push(b'\n');
            }
            crate::sys::replace_file(&path, &bytes, 0o600).unwrap();
            let events = read_spool(&path, max).unwrap();
            proptest::prop_assert!(events.len() <= max);
            for line in &events {
                proptest::prop_assert!(serde_json::from_str::<Event>(line).is_ok());
            }
        }
    }
}
