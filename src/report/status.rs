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
    pub policies: BTreeMap<String, PolicyStatus>,
}

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
    /// The last rotation this node made: "version N at TIME".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotation: Option<String>,
    /// Why the last rotation this node tried failed, until one succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_error: Option<String>,
    /// When applications were last told of a change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notified_at: Option<String>,
    /// Why the last notification failed after every attempt, until one succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify_error: Option<String>,
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

    pub fn save(&self, state_dir: &Path) -> io::Result<()> {
        sys::create_dir(state_dir, 0o700)?;
        let bytes = serde_json::to_vec_pretty(self).expect("status serializes");
        sys::replace_file(&Status::path(state_dir), &bytes, 0o644)
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
        let rows: Vec<[String; 5]> = self
            .policies
            .iter()
            .map(|(name, p)| {
                [
                    name.clone(),
                    p.version.as_ref().map_or("-".into(), ToString::to_string),
                    p.delivered_at.clone().unwrap_or_else(|| "-".into()),
                    p.checked_at.clone().unwrap_or_else(|| "-".into()),
                    match (&p.last_error, &p.rotation_error) {
                        (Some(e), _) => format!("{e} ({} failures in a row)", p.consecutive_failures),
                        (None, Some(e)) => format!("rotation: {e}"),
                        (None, None) => {
                            p.next_rotation.as_ref().map_or("-".into(), |t| format!("- (next rotation {t})"))
                        }
                    },
                ]
            })
            .collect();
        let header = ["POLICY", "VERSION", "DELIVERED", "CHECKED", "LAST ERROR"].map(String::from);
        let widths: Vec<usize> =
            (0..4).map(|i| rows.iter().chain([&header]).map(|r| r[i].len()).max().unwrap_or(0)).collect();
        for row in [&header].into_iter().chain(rows.iter()) {
            for (i, cell) in row.iter().enumerate() {
                if i < 4 {
                    out.push_str(&format!("{cell:<width$}  ", width = widths[i]));
                } else {
                    out.push_str(cell);
                }
            }
            out.push('\n');
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
        status.save(dir.path()).unwrap();
        assert_eq!(Status::load(dir.path()).unwrap(), status);
        assert!(status.ready());
        let table = status.render_table(true);
        assert!(table.contains("agent running, pid 42"), "{table}");
        assert!(table.lines().any(|l| l.starts_with("db ") && l.contains(" 3 ")), "{table}");
        assert!(table.contains("store down (2 failures in a row)"), "{table}");
    }
}
