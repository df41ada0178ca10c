//! The status model: per policy, the delivered version, when, and the last error.
//!
//! The agent keeps it in memory and persists it to `STATE_DIR/status.json` when it changes, so
//! `keyturn status` works whether or not an agent is running. It never holds a value or a
//! checksum of one.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::secret::VersionId;
use crate::sys;

pub const FILE_NAME: &str = "status.json";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub node: String,
    /// The agent process that last wrote this file; 0 once it has stopped.
    pub pid: u32,
    /// That process's identity (boot and start time), to tell it from a later process that
    /// got the same pid: nothing trusts `pid` without it. See [`Status::running_agent`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<String>,
    pub updated_at: String,
    /// Where the admin listener (`/metrics`, `/healthz`, `/readyz`) is bound, if it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<String>,
    /// The configuration the agent runs, and a reload it refused since (if any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<ConfigState>,
    pub policies: BTreeMap<String, PolicyStatus>,
    /// Per configured store: how this node's clock stands against the store's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub stores: BTreeMap<String, StoreStatus>,
}

/// What is known of a store's clock.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StoreStatus {
    /// `node`: the store is on this node's own clock (the file store), there is nothing to
    /// measure; `unmeasured`: a remote store that has not answered yet; `measured`.
    pub clock: String,
    /// This node's clock minus the store's, in seconds, to a tenth (positive: the node is
    /// ahead), when measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_skew_seconds: Option<f64>,
    /// The skew is beyond `[agent] max_clock_skew` (this many seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_skew_exceeds: Option<f64>,
}

impl StoreStatus {
    /// The store's clock in words, for the status table, `/readyz` and systemd's STATUS=.
    pub fn clock_words(&self, store: &str) -> String {
        match (self.clock.as_str(), self.clock_skew_seconds) {
            ("node", _) => "this node's own clock (a local store has no other)".to_string(),
            (_, Some(skew)) => {
                let mut words = format!("this node's clock is {} store {store}'s", crate::store::skew_words(skew));
                if let Some(limit) = self.clock_skew_exceeds {
                    words.push_str(&format!(
                        ", beyond max_clock_skew ({}): {}",
                        humantime::format_duration(std::time::Duration::from_secs_f64(limit)),
                        crate::clock::TIME_SYNC_ADVICE
                    ));
                }
                words
            }
            _ => "not measured yet (no answer from the store)".to_string(),
        }
    }
}

/// Which configuration a running agent uses.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConfigState {
    /// When the running configuration was loaded.
    pub loaded_at: String,
    /// The last reload refused, while the files on disk are not what the agent runs: the agent
    /// keeps the running configuration (and stays ready on it) until they are fixed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<Rejected>,
}

/// A reload the agent refused.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Rejected {
    pub at: String,
    /// What asked for it: `SIGHUP`, `keyturn reload`, `a configuration file changed`.
    pub reason: String,
    pub error: String,
    /// Each problem, with file, line and key, for a configuration that did not validate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

/// One policy's line of the status. Kept for every policy for as long as the agent runs: the
/// parts most policies never have (a rotation this node made, files from the sealed cache)
/// are boxed, so that they cost a pointer until they exist (issue 17).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PolicyStatus {
    pub store: String,
    pub secret: String,
    pub required: bool,
    /// The version on disk now, if any.
    pub version: Option<VersionId>,
    pub delivered_at: Option<String>,
    /// The last time the store was asked, successfully or not.
    pub checked_at: Option<String>,
    pub last_error: Option<String>,
    pub consecutive_failures: u32,
    /// When this node will next try to rotate the secret, if it rotates it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_rotation: Option<String>,
    /// The last rotation this node made. (Read leniently: older releases wrote it as prose.)
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient")]
    pub last_rotation: Option<Box<RotationRecord>>,
    /// Why the last rotation this node tried failed, until one succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_error: Option<String>,
    /// When applications were last told of a change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notified_at: Option<String>,
    /// Why the last notification failed after every attempt, until one succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify_error: Option<String>,
    /// The files on disk came from the sealed cache, not the store: until the store answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale: Option<Box<Stale>>,
}

/// Files rebuilt from the sealed cache at start, while the store has not answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stale {
    /// When the version on disk was sealed: how old what the applications read may be.
    pub sealed_at: String,
    pub restored_at: String,
}

/// A rotation this node made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotationRecord {
    pub version: VersionId,
    pub at: String,
}

/// `None` for a value of another shape, such as one an older release wrote.
fn lenient<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    let value = serde_json::Value::deserialize(deserializer)?;
    Ok(serde_json::from_value(value).ok())
}

impl PolicyStatus {
    /// Required and not on disk yet: what keeps the agent from being ready.
    pub fn waiting(&self) -> bool {
        self.required && self.version.is_none()
    }
}

impl Status {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(FILE_NAME)
    }

    pub fn load(state_dir: &Path) -> io::Result<Status> {
        let bytes = std::fs::read(Status::path(state_dir))?;
        serde_json::from_slice(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// Replaces the status file with `bytes`, a serialized status.
    pub fn write(state_dir: &Path, bytes: &[u8]) -> io::Result<()> {
        sys::create_dir(state_dir, 0o700)?;
        sys::replace_file(&Status::path(state_dir), bytes, 0o644)
    }

    /// The pid of the agent that wrote this file, if that process still runs: not a process
    /// that got its pid after it stopped, and not the caller itself.
    pub fn running_agent(&self) -> Option<u32> {
        let identity = self.process.as_deref()?;
        (self.pid != std::process::id() && sys::is_same_process(self.pid, identity)).then_some(self.pid)
    }

    /// Whether every required policy has a version on disk.
    pub fn ready(&self) -> bool {
        !self.policies.values().any(PolicyStatus::waiting)
    }

    /// A table for people: one line per policy.
    pub fn render_table(&self, agent_running: bool) -> String {
        let mut out = format!(
            "node {}: agent {} (status written {})\n",
            self.node,
            if agent_running { format!("running, pid {}", self.pid) } else { "not running".to_string() },
            self.updated_at
        );
        if let Some(ConfigState { loaded_at, rejected: Some(rejected) }) = &self.config {
            out.push_str(&format!(
                "CONFIGURATION REFUSED at {} ({}): {}\n  the agent runs the configuration loaded at {loaded_at} until the files are fixed\n",
                rejected.at, rejected.reason, rejected.error
            ));
            for problem in &rejected.problems {
                out.push_str(&format!("  {problem}\n"));
            }
        }
        let rows: Vec<[String; 6]> = self
            .policies
            .iter()
            .map(|(name, p)| {
                [
                    name.clone(),
                    match (&p.version, &p.stale) {
                        (Some(v), Some(stale)) => format!("{v} (from the cache, sealed {})", stale.sealed_at),
                        (Some(v), None) => v.to_string(),
                        (None, _) => "-".into(),
                    },
                    p.delivered_at.clone().unwrap_or_else(|| "-".into()),
                    p.checked_at.clone().unwrap_or_else(|| "-".into()),
                    p.next_rotation.clone().unwrap_or_else(|| "-".into()),
                    match (&p.last_error, &p.rotation_error) {
                        (Some(e), _) => format!("{e} ({} failures in a row)", p.consecutive_failures),
                        (None, Some(e)) => format!("rotation: {e}"),
                        (None, None) => "-".into(),
                    },
                ]
            })
            .collect();
        let header = ["POLICY", "VERSION", "DELIVERED", "CHECKED", "NEXT ROTATION", "LAST ERROR"].map(String::from);
        let widths: Vec<usize> =
            (0..5).map(|i| rows.iter().chain([&header]).map(|r| r[i].len()).max().unwrap_or(0)).collect();
        for row in [&header].into_iter().chain(rows.iter()) {
            for (i, cell) in row.iter().enumerate() {
                if i < 5 {
                    out.push_str(&format!("{cell:<width$}  ", width = widths[i]));
                } else {
                    out.push_str(cell);
                }
            }
            out.push('\n');
        }
        if !self.stores.is_empty() {
            let width = self.stores.keys().map(String::len).max().unwrap_or(0).max("STORE".len());
            out.push_str(&format!("{:<width$}  CLOCK\n", "STORE"));
            for (name, store) in &self.stores {
                out.push_str(&format!("{name:<width$}  {}\n", store.clock_words(name)));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_renders() {
        let dir = tempfile::tempdir().unwrap();
        let mut status = Status { node: "n1".into(), pid: 42, updated_at: "t".into(), ..Status::default() };
        status.policies.insert(
            "db".into(),
            PolicyStatus {
                store: "dev".into(),
                secret: "db-password".into(),
                required: true,
                version: Some(VersionId::from(3)),
                delivered_at: Some("2026-11-28T18:00:00Z".into()),
                ..PolicyStatus::default()
            },
        );
        status.policies.insert(
            "api".into(),
            PolicyStatus {
                required: false,
                last_error: Some("store down".into()),
                consecutive_failures: 2,
                ..PolicyStatus::default()
            },
        );
        Status::write(dir.path(), &serde_json::to_vec_pretty(&status).unwrap()).unwrap();
        assert_eq!(Status::load(dir.path()).unwrap(), status);
        assert!(status.ready());
        // A status file an older release wrote, with its rotation as prose, still reads.
        let mut old: serde_json::Value = serde_json::to_value(&status).unwrap();
        old["policies"]["db"]["last_rotation"] = "version 3 at 2026-11-28T18:00:00Z".into();
        let old: Status = serde_json::from_value(old).unwrap();
        assert_eq!(old.policies["db"].last_rotation, None);
        let table = status.render_table(true);
        assert!(table.contains("agent running, pid 42"), "{table}");
        assert!(table.lines().any(|l| l.starts_with("db ") && l.contains(" 3 ")), "{table}");
        assert!(table.contains("store down (2 failures in a row)"), "{table}");
    }
}
