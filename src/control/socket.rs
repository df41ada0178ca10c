//! The control socket: `RUNTIME_DIR/.keyturn.sock`, a Unix stream socket that the running agent
//! listens on, so that `keyturn status`, `rotate`, `reload` and `resync` act through it.
//!
//! Two locks guard it: the socket file's mode and group (0600, or 0660 with an admin group),
//! and the caller's credentials as the kernel reports them (`SO_PEERCRED`), checked against
//! `[control] allow_users` and `allow_groups` (supplementary groups included, read from
//! `/proc/PID/status`). Root is always allowed: it can open the socket whatever its mode and
//! read every value on the node anyway, and `keyturn status` as root is an operator's first
//! check. A refused caller gets one error line saying which of its ids were checked, and the
//! connection is closed.
//!
//! The protocol is one JSON request line, then JSON response lines: any number of
//! `{"progress": "..."}`, then one `{"ok": ANSWER}` or `{"error": "..."}`. Both ends use the
//! types below; each request has one kind of [`Answer`]. A request line is at most
//! [`MAX_REQUEST`] bytes and must arrive within [`REQUEST_TIMEOUT`]; a caller that sends more,
//! or nothing, gets one error line and is hung up on.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, watch};

use crate::config::{CONTROL_SOCKET, Control};
use crate::engine::Handle;
use crate::report::Recorder;
use crate::report::status::Status;
use crate::secret::VersionId;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "lowercase")]
pub enum Request {
    Status,
    Resync,
    Reload,
    Rotate { policy: String, revoke: bool },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Line {
    Progress(String),
    Ok(Answer),
    Error(String),
}

/// What a request gets back. The JSON of each is a plain object (no tag): `keyturn status
/// --json` prints the status answer as it comes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Answer {
    /// To [`Request::Status`].
    Status(Box<RunningStatus>),
    /// To [`Request::Rotate`]: the new current version, delivered.
    Rotated { version: VersionId, previous: Option<VersionId>, disabled: Vec<VersionId> },
    /// To [`Request::Resync`].
    Synced { delivered: usize, unchanged: usize, failed: Vec<String> },
    /// To [`Request::Reload`]: what happened, in words.
    Reloaded { reload: String },
}

/// The status, as the running agent has it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunningStatus {
    #[serde(flatten)]
    pub status: Status,
    pub agent_running: bool,
}

/// The longest request line: a policy name and a few flags need far less.
pub const MAX_REQUEST: usize = 64 * 1024;
/// How long a caller may take to send its request line.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A reload asked for over the socket, answered by the agent loop that owns the configuration.
#[derive(Debug)]
pub struct ReloadRequest {
    pub reply: oneshot::Sender<Result<String, String>>,
}

pub fn path(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join(CONTROL_SOCKET)
}

/// Binds the socket with its mode and group, replacing a stale one left by a crash.
pub fn bind(runtime_dir: &Path, access: &Control) -> std::io::Result<UnixListener> {
    let path = path(runtime_dir);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(&path)?;
    let gid = access.group.map(rustix::fs::Gid::from_raw);
    rustix::fs::chown(&path, None, gid)?;
    rustix::fs::chmod(&path, rustix::fs::Mode::from_raw_mode(access.mode))?;
    Ok(listener)
}

/// The running engine, as the socket sees it; `None` while the agent starts.
pub type Engine = watch::Receiver<Option<Arc<dyn Handle>>>;

/// Serves until dropped. `engine` always holds the engine of the running configuration.
pub async fn serve(
    listener: UnixListener,
    access: Control,
    recorder: Arc<Recorder>,
    engine: Engine,
    reloads: mpsc::Sender<ReloadRequest>,
) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "control socket: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        let (access, recorder, engine, reloads) = (access.clone(), recorder.clone(), engine.clone(), reloads.clone());
        connections.spawn(async move { connection(stream, access, recorder, engine, reloads).await });
    }
}

async fn connection(
    stream: UnixStream,
    access: Control,
    recorder: Arc<Recorder>,
    engine: Engine,
    reloads: mpsc::Sender<ReloadRequest>,
) {
    let (read, mut write) = stream.into_split();
    let peer = rustix::net::sockopt::socket_peercred(write.as_ref());
    let refusal = match &peer {
        Ok(peer) => {
            let pid = peer.pid.as_raw_nonzero().get();
            let groups = supplementary_groups(pid);
            let (uid, gid) = (peer.uid.as_raw(), peer.gid.as_raw());
            let allowed = is_allowed(&access, uid, gid, groups.as_deref().unwrap_or_default());
            (!allowed).then(|| refusal(uid, gid, pid, groups.as_deref()))
        }
        Err(e) => Some(format!("the caller's credentials cannot be read ({e}); refused")),
    };
    if let Some(refusal) = refusal {
        tracing::warn!(reason = %refusal, "control socket: caller refused");
        let _ = send(&mut write, &Line::Error(refusal)).await;
        return;
    }
    let line = match tokio::time::timeout(REQUEST_TIMEOUT, read_request(read)).await {
        Ok(Ok(line)) => line,
        Ok(Err(problem)) => {
            let _ = send(&mut write, &Line::Error(problem)).await;
            return;
        }
        Err(_) => {
            let problem = format!("no request within {REQUEST_TIMEOUT:?}");
            let _ = send(&mut write, &Line::Error(problem)).await;
            return;
        }
    };
    let request: Request = match serde_json::from_str(&line) {
        Ok(request) => request,
        Err(e) => {
            let _ = send(&mut write, &Line::Error(format!("not a request: {e}"))).await;
            return;
        }
    };
    tracing::info!(?request, uid = peer.map(|p| p.uid.as_raw()).unwrap_or_default(), "control socket request");
    let current = engine.borrow().clone();
    let answer = match (request, current) {
        (Request::Status, _) => {
            Line::Ok(Answer::Status(Box::new(RunningStatus { status: recorder.snapshot(), agent_running: true })))
        }
        (_, None) => Line::Error("the agent is starting; try again in a moment".into()),
        (Request::Resync, Some(engine)) => {
            let summary = engine.resync().await;
            Line::Ok(Answer::Synced {
                delivered: summary.delivered,
                unchanged: summary.unchanged,
                failed: summary.failed,
            })
        }
        (Request::Reload, Some(_)) => {
            let (reply, answer) = oneshot::channel();
            if reloads.send(ReloadRequest { reply }).await.is_err() {
                Line::Error("the agent is shutting down".into())
            } else {
                match answer.await {
                    Ok(Ok(message)) => Line::Ok(Answer::Reloaded { reload: message }),
                    Ok(Err(problems)) => Line::Error(problems),
                    Err(_) => Line::Error("the agent is shutting down".into()),
                }
            }
        }
        (Request::Rotate { policy, revoke }, Some(engine)) => {
            rotate(engine.as_ref(), &policy, revoke, &mut write).await
        }
    };
    let _ = send(&mut write, &answer).await;
}

/// One request line, at most [`MAX_REQUEST`] bytes.
async fn read_request(read: tokio::net::unix::OwnedReadHalf) -> Result<String, String> {
    use tokio::io::AsyncReadExt;
    let mut line = Vec::new();
    let read = BufReader::new(read).take(MAX_REQUEST as u64 + 1).read_until(b'\n', &mut line).await;
    match read {
        Ok(_) if line.len() > MAX_REQUEST => Err(format!("request too long: at most {MAX_REQUEST} bytes")),
        Ok(0) => Err("no request: the connection closed".into()),
        Ok(_) => String::from_utf8(line).map_err(|_| "not a request: not UTF-8".into()),
        Err(e) => Err(format!("cannot read the request: {e}")),
    }
}

/// Rotates through the engine, streaming its progress lines to the caller as they come.
async fn rotate(engine: &dyn Handle, policy: &str, revoke: bool, write: &mut tokio::net::unix::OwnedWriteHalf) -> Line {
    let (progress, mut lines) = mpsc::unbounded_channel::<String>();
    let report = move |line: &str| {
        let _ = progress.send(line.to_string());
    };
    let run = engine.rotate(policy, revoke, &report);
    tokio::pin!(run);
    let outcome = loop {
        tokio::select! {
            outcome = &mut run => break outcome,
            Some(line) = lines.recv() => { let _ = send(write, &Line::Progress(line)).await; }
        }
    };
    while let Ok(line) = lines.try_recv() {
        let _ = send(write, &Line::Progress(line)).await;
    }
    match outcome {
        Ok(rotated) => Line::Ok(Answer::Rotated {
            version: rotated.version,
            previous: rotated.previous,
            disabled: rotated.disabled,
        }),
        Err(message) => Line::Error(message),
    }
}

async fn send(write: &mut tokio::net::unix::OwnedWriteHalf, line: &Line) -> std::io::Result<()> {
    let mut text = serde_json::to_string(line).expect("a line serializes");
    text.push('\n');
    write.write_all(text.as_bytes()).await
}

/// The allow-list: root, the caller's user, or its primary or any supplementary group.
pub fn is_allowed(access: &Control, uid: u32, gid: u32, groups: &[u32]) -> bool {
    uid == ROOT
        || access.allow_users.contains(&uid)
        || access.allow_groups.contains(&gid)
        || groups.iter().any(|g| access.allow_groups.contains(g))
}

const ROOT: u32 = 0;

/// Why a caller is refused, in words that say what was checked and what would let it in.
fn refusal(uid: u32, gid: u32, pid: i32, groups: Option<&[u32]>) -> String {
    let checked = match groups {
        Some(groups) if !groups.is_empty() => {
            let groups: Vec<String> = groups.iter().map(ToString::to_string).collect();
            format!("its uid, its primary group {gid} and its supplementary groups {} are", groups.join(" "))
        }
        Some(_) => format!("its uid and its primary group {gid} are (it has no supplementary groups)"),
        // systemd's ProtectProc=invisible (the shipped unit) hides other users' processes.
        None => format!(
            "its uid and its primary group {gid} are; its supplementary groups cannot be read, because \
             /proc/{pid} is hidden from the agent (ProtectProc=invisible in its systemd unit), so a \
             supplementary group never matches: list the user in allow_users, make an allowed group its \
             primary group, or set ProtectProc=default in a drop-in"
        ),
    };
    format!(
        "uid {uid} (pid {pid}) is not allowed to use the control socket: {checked} not in [control] \
         allow_users / allow_groups"
    )
}

/// A process's supplementary groups, from `/proc/PID/status`; `None` if it cannot be read.
fn supplementary_groups(pid: i32) -> Option<Vec<u32>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let groups = status.lines().find_map(|l| l.strip_prefix("Groups:"))?;
    Some(groups.split_whitespace().filter_map(|g| g.parse().ok()).collect())
}

/// The client: sends `request` to the agent at `runtime_dir` and calls `progress` for each
/// progress line. `Ok(None)` when no agent listens there.
pub async fn call(
    runtime_dir: &Path,
    request: &Request,
    mut progress: impl FnMut(&str),
) -> std::io::Result<Option<Result<Answer, String>>> {
    let stream = match UnixStream::connect(path(runtime_dir)).await {
        Ok(stream) => stream,
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let (read, mut write) = stream.into_split();
    let mut text = serde_json::to_string(request).expect("a request serializes");
    text.push('\n');
    // A refused caller's connection may already be closed: the answer is still there to read.
    let _ = write.write_all(text.as_bytes()).await;
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = lines.next_line().await? {
        match serde_json::from_str::<Line>(&line) {
            Ok(Line::Progress(text)) => progress(&text),
            Ok(Line::Ok(value)) => return Ok(Some(Ok(value))),
            Ok(Line::Error(message)) => return Ok(Some(Err(message))),
            Err(_) => return Ok(Some(Err(format!("the agent sent something keyturn does not understand: {line}")))),
        }
    }
    Ok(Some(Err("the agent closed the connection without an answer".into())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list() {
        let access = Control { mode: 0o660, group: Some(50), allow_users: vec![0], allow_groups: vec![50] };
        assert!(is_allowed(&access, 0, 0, &[]));
        assert!(is_allowed(&access, 1000, 50, &[]), "primary group");
        assert!(is_allowed(&access, 1000, 1000, &[27, 50]), "supplementary group");
        assert!(!is_allowed(&access, 1000, 1000, &[27]));
        let agent_only = Control { mode: 0o600, group: None, allow_users: vec![999], allow_groups: vec![] };
        assert!(is_allowed(&agent_only, 0, 0, &[]), "root, whatever the lists say");
    }

    #[test]
    fn a_refusal_says_what_was_checked() {
        let hidden = refusal(1001, 1001, 42, None);
        assert!(hidden.starts_with("uid 1001 (pid 42) is not allowed"), "{hidden}");
        assert!(hidden.contains("supplementary groups cannot be read") && hidden.contains("ProtectProc"), "{hidden}");
        let seen = refusal(1001, 1001, 42, Some(&[27, 100]));
        assert!(seen.contains("supplementary groups 27 100 are not in"), "{seen}");
        assert!(!seen.contains("ProtectProc"), "{seen}");
    }

    #[test]
    fn the_wire_format() {
        let request = Request::Rotate { policy: "api".into(), revoke: true };
        let text = serde_json::to_string(&request).unwrap();
        assert_eq!(text, r#"{"command":"rotate","policy":"api","revoke":true}"#);
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), request);
        assert_eq!(serde_json::to_string(&Line::Progress("x".into())).unwrap(), r#"{"progress":"x"}"#);
        assert_eq!(serde_json::from_str::<Request>(r#"{"command":"status"}"#).unwrap(), Request::Status);
        // Every answer reads back as itself, the status (the widest) included.
        let status = Status { node: "n1".into(), pid: 7, updated_at: "t".into(), ..Status::default() };
        let answers = [
            Answer::Status(Box::new(RunningStatus { status, agent_running: true })),
            Answer::Rotated { version: VersionId::from(4), previous: Some(VersionId::from(3)), disabled: vec![] },
            Answer::Synced { delivered: 1, unchanged: 2, failed: vec!["db".into()] },
            Answer::Reloaded { reload: "configuration unchanged".into() },
        ];
        for answer in answers {
            let line = serde_json::to_string(&Line::Ok(answer.clone())).unwrap();
            assert_eq!(serde_json::from_str::<Line>(&line).unwrap(), Line::Ok(answer), "{line}");
        }
        assert_eq!(
            serde_json::to_string(&Answer::Reloaded { reload: "x".into() }).unwrap(),
            r#"{"reload":"x"}"#,
            "the wire form of earlier releases"
        );
    }
}
