//! The Secret Manager emulator as a process (`gcp-emulator`), on 127.0.0.1, with a
//! service-account key file and an external-account configuration (Workload Identity
//! Federation) for the agents, and an admin token for the suite's own calls.
//!
//! The suite talks to it over its REST API: creating secrets, promoting versions (add a
//! version, move `current`: what a rotation by another node or `keyturn store put` does) and
//! reading `/emulator/requests`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::process::Process;
use crate::{Error, http};

pub const PROJECT: &str = "acme-edge";

#[derive(Debug)]
pub struct Emulator {
    /// Stopped on drop.
    _process: Process,
    pub port: u16,
    /// A service-account key with the admin role (agents rotate as well as pull).
    pub key_file: PathBuf,
    /// A Workload Identity Federation configuration (`external_account`) whose subject, with
    /// the admin role too, reads its token from a file beside it.
    pub external_account: PathBuf,
    token: String,
    /// Kept open: the emulator must not meet a closed pipe if it ever prints again.
    _stdout: BufReader<ChildStdout>,
}

/// Requests by method, as `/emulator/requests` counts them.
pub type Counts = BTreeMap<String, u64>;

impl Emulator {
    pub fn start(binary: &Path, dir: &Path, google_quotas: bool) -> Result<Emulator, Error> {
        std::fs::create_dir_all(dir)?;
        let key_file = dir.join("service-account.json");
        let external_account = dir.join("external-account.json");
        let mut command = Command::new(binary);
        command.args(["--project-id", PROJECT, "--key-role", "admin", "--print-key"]).arg(&key_file);
        command.arg("--print-external-account").arg(&external_account);
        command.arg("--subject-token").arg(dir.join("subject-token.jwt"));
        if google_quotas {
            command.arg("--google-quotas");
        }
        command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null());
        let mut process = Process::spawn("gcp-emulator", &mut command)?;
        let stdout = process.child.stdout.take().ok_or("no stdout")?;
        let mut stdout = BufReader::new(stdout);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        let port = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| format!("gcp-emulator said {line:?}, not `listening on http://127.0.0.1:PORT`"))?;
        let answer = http::request(
            port,
            "POST",
            "/emulator/tokens",
            None,
            Some(r#"{"email":"bench@acme-edge.iam.gserviceaccount.com","role":"admin"}"#),
        )?;
        let token: serde_json::Value = serde_json::from_str(&answer.body)?;
        let token = token["access_token"].as_str().ok_or("no admin token from the emulator")?.to_owned();
        Ok(Emulator { _process: process, port, key_file, external_account, token, _stdout: stdout })
    }

    fn call(&self, method: &str, path: &str, body: Option<&str>) -> Result<serde_json::Value, Error> {
        let answer = http::request(self.port, method, path, Some(&self.token), body)?;
        if !(200..300).contains(&answer.status) {
            return Err(format!("{method} {path}: {} {}", answer.status, answer.body).into());
        }
        Ok(serde_json::from_str(&answer.body)?)
    }

    fn secret_path(id: &str) -> String {
        format!("/v1/projects/{PROJECT}/secrets/{id}")
    }

    /// Creates secret `id` with `value` as version 1, aliased `current`.
    pub fn create_secret(&self, id: &str, value: &[u8]) -> Result<(), Error> {
        self.call(
            "POST",
            &format!("/v1/projects/{PROJECT}/secrets?secretId={id}"),
            Some(r#"{"replication":{"automatic":{}}}"#),
        )?;
        self.promote(id, value)?;
        Ok(())
    }

    /// Adds `value` as a new version and moves `current` to it (and `previous` to the old one
    /// when there was one): two requests. Returns the new version and the round trip of both.
    pub fn promote(&self, id: &str, value: &[u8]) -> Result<(u64, Duration), Error> {
        let started = Instant::now();
        let body = serde_json::json!({"payload": {"data": STANDARD.encode(value)}}).to_string();
        let added = self.call("POST", &format!("{}:addVersion", Self::secret_path(id)), Some(&body))?;
        let name = added["name"].as_str().ok_or("addVersion answered without a name")?;
        let version: u64 = name.rsplit('/').next().and_then(|v| v.parse().ok()).ok_or("bad version name")?;
        let mut aliases = serde_json::json!({"current": version.to_string()});
        if version > 1 {
            aliases["previous"] = (version - 1).to_string().into();
        }
        let body = serde_json::json!({ "versionAliases": aliases }).to_string();
        self.call("PATCH", &format!("{}?updateMask=versionAliases", Self::secret_path(id)), Some(&body))?;
        Ok((version, started.elapsed()))
    }

    pub fn counts(&self) -> Result<Counts, Error> {
        let answer = http::request(self.port, "GET", "/emulator/requests", None, None)?;
        let counts: BTreeMap<String, u64> = serde_json::from_str(&answer.body)?;
        Ok(counts)
    }
}

/// `after − before`, per method.
pub fn difference(before: &Counts, after: &Counts) -> Counts {
    after.iter().map(|(method, n)| (method.clone(), n.saturating_sub(*before.get(method).unwrap_or(&0)))).collect()
}

/// The methods in the order the report lists them.
pub const METHODS: [&str; 13] = [
    "access",
    "get",
    "list",
    "getVersion",
    "listVersions",
    "addVersion",
    "patch",
    "enable",
    "disable",
    "destroy",
    "create",
    "delete",
    "token",
];
