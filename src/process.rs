//! Child processes with a deadline: the rotation `check` command and the `exec` and `systemd`
//! notifiers. A child that outlives its timeout is killed, so a hung program never holds up
//! the agent.
//!
//! Each child gets an explicit environment (`PATH`, `LANG`, `LC_ALL`, `TZ` from the agent's,
//! and the variables its caller names), never the agent's whole one: credentials such as
//! `GOOGLE_APPLICATION_CREDENTIALS` and systemd's `NOTIFY_SOCKET` stay with the agent. It runs
//! in a process group of its own, and at its timeout (or when the agent drops the run) the
//! whole group is killed, grandchildren included. Its end is its exit status: output still
//! held open by a grandchild it left running is read for a moment more, then abandoned, so a
//! quick command never looks hung. At most [`OUTPUT_MAX`] bytes of each stream are kept.

use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// How much of a failed program's standard error an error message quotes.
const STDERR_TAIL: usize = 300;
/// How much of each of a child's output streams is kept; the rest is read and dropped.
pub const OUTPUT_MAX: usize = 64 * 1024;
/// How long output is still read after the child exited (a grandchild may hold the pipe).
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(200);
/// The agent's variables a child sees; everything else it is given by name.
const PASSED_ON: &[&str] = &["PATH", "LANG", "LC_ALL", "TZ"];
/// `PATH` when the agent has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} took longer than {timeout:?} and was killed")]
    Timeout { program: String, timeout: Duration },
    #[error("{program} failed: {source}")]
    Wait {
        program: String,
        #[source]
        source: std::io::Error,
    },
}

/// Kills a child's process group when dropped, unless the child exited on its own.
struct Group(Option<rustix::process::Pid>);

impl Drop for Group {
    fn drop(&mut self) {
        if let Some(group) = self.0 {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
    }
}

/// Runs `command` (program and arguments, no shell) with `env` added to the few variables it
/// inherits, feeding it `stdin`, and waits at most `timeout`.
pub async fn run(
    command: &[String],
    env: &[(&str, &str)],
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Result<Finished, RunError> {
    let program = command.first().cloned().unwrap_or_default();
    let mut builder = tokio::process::Command::new(&program);
    builder.args(&command[1..]).env_clear();
    for name in PASSED_ON {
        if let Some(value) = std::env::var_os(name) {
            builder.env(name, value);
        }
    }
    if std::env::var_os("PATH").is_none() {
        builder.env("PATH", DEFAULT_PATH);
    }
    let mut child = builder
        .envs(env.iter().copied())
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| RunError::Spawn { program: program.clone(), source })?;
    let mut group = Group(child.id().and_then(|id| i32::try_from(id).ok()).and_then(rustix::process::Pid::from_raw));
    let stdout = Capture::start(child.stdout.take());
    let stderr = Capture::start(child.stderr.take());
    let input = child.stdin.take();
    let wait = async {
        let feed = async {
            if let (Some(mut pipe), Some(bytes)) = (input, stdin) {
                // A program that exits without reading its input is not an error by itself.
                let _ = pipe.write_all(bytes).await;
            }
        };
        let ((), status) = tokio::join!(feed, child.wait());
        status
    };
    match tokio::time::timeout(timeout, wait).await {
        Ok(Ok(status)) => {
            // It ended by itself: whatever it left running is its own business.
            group.0 = None;
            Ok(Finished { status, stdout: stdout.finish().await, stderr: stderr.finish().await })
        }
        Ok(Err(source)) => Err(RunError::Wait { program, source }),
        // Dropping `group` kills every process of it; dropping the child reaps it.
        Err(_) => Err(RunError::Timeout { program, timeout }),
    }
}

/// One output stream, read into a bounded buffer by a task of its own.
struct Capture {
    kept: Arc<Mutex<Vec<u8>>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Capture {
    fn start(pipe: Option<impl AsyncRead + Unpin + Send + 'static>) -> Capture {
        let kept = Arc::new(Mutex::new(Vec::new()));
        let task = pipe.map(|mut pipe| {
            let kept = kept.clone();
            tokio::spawn(async move {
                let mut chunk = [0u8; 8192];
                while let Ok(n) = pipe.read(&mut chunk).await {
                    if n == 0 {
                        break;
                    }
                    let mut kept = kept.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    let room = OUTPUT_MAX.saturating_sub(kept.len());
                    kept.extend_from_slice(&chunk[..n.min(room)]);
                }
            })
        });
        Capture { kept, task }
    }

    /// What was read, once the stream ended or [`DRAIN_AFTER_EXIT`] passed.
    async fn finish(mut self) -> Vec<u8> {
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(DRAIN_AFTER_EXIT, task).await.is_err() {
                abort.abort();
            }
        }
        std::mem::take(&mut *self.kept.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// The end of a program's standard error, for an error message; withheld entirely if it
/// contains `secret` (a check command that echoes the value it was given).
pub fn stderr_tail(stderr: &[u8], secret: Option<&[u8]>) -> String {
    if let Some(secret) = secret.filter(|s| !s.is_empty())
        && stderr.windows(secret.len()).any(|w| w == secret)
    {
        return "(stderr withheld: it contains the value)".to_string();
    }
    let text = String::from_utf8_lossy(stderr);
    let text = text.trim();
    let start = text.char_indices().rev().nth(STDERR_TAIL - 1).map_or(0, |(i, _)| i);
    text[start..].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Vec<String> {
        vec!["sh".into(), "-c".into(), script.into()]
    }

    #[tokio::test]
    async fn runs_with_input_and_environment() {
        let done = run(
            &sh("read line; echo \"$line/$GREETING\"; echo oops >&2; exit 3"),
            &[("GREETING", "hi")],
            Some(b"in\n"),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(done.status.code(), Some(3));
        assert_eq!(String::from_utf8_lossy(&done.stdout), "in/hi\n");
        assert_eq!(stderr_tail(&done.stderr, None), "oops");
    }

    #[tokio::test]
    async fn a_hung_program_is_killed_at_its_timeout() {
        let started = std::time::Instant::now();
        let err = run(&sh("sleep 30"), &[], None, Duration::from_millis(200)).await.unwrap_err();
        assert!(matches!(err, RunError::Timeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
        let err = run(&["/nonexistent/program".to_string()], &[], None, Duration::from_secs(1)).await.unwrap_err();
        assert!(err.to_string().starts_with("cannot run /nonexistent/program"), "{err}");
    }

    #[tokio::test]
    async fn a_child_sees_only_the_environment_it_is_given() {
        let done = run(&sh("env"), &[("KEYTURN_POLICY", "db")], None, Duration::from_secs(5)).await.unwrap();
        let env = String::from_utf8_lossy(&done.stdout);
        let names: Vec<&str> = env.lines().filter_map(|l| l.split('=').next()).collect();
        assert!(names.contains(&"KEYTURN_POLICY") && names.contains(&"PATH"), "{env}");
        // The test runner's own variables (cargo sets these) are not passed on.
        for name in names {
            assert!(
                PASSED_ON.contains(&name) || name == "KEYTURN_POLICY" || ["PWD", "SHLVL", "_"].contains(&name),
                "{name} leaked: {env}"
            );
        }
    }

    #[tokio::test]
    async fn a_timeout_kills_the_whole_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("grandchild");
        let script = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
        let err = run(&sh(&script), &[], None, Duration::from_millis(500)).await.unwrap_err();
        assert!(matches!(err, RunError::Timeout { .. }), "{err}");
        let grandchild: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
        let pid = rustix::process::Pid::from_raw(grandchild).unwrap();
        // SIGKILL was sent when `run` returned; it lands in a moment. Then the grandchild is a
        // zombie until init reaps it (signal 0 still finds one), so ask its state.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let state = std::fs::read_to_string(format!("/proc/{grandchild}/stat")).unwrap_or_default();
            let gone = state.is_empty()
                || state.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with(['Z', 'X']))
                || rustix::process::test_kill_process(pid).is_err();
            if gone {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "grandchild {grandchild} still runs: {state}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_grandchild_holding_the_output_does_not_make_a_quick_command_hang() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("grandchild");
        let script = format!("echo quick; sleep 30 & echo $! > {}", pidfile.display());
        let started = std::time::Instant::now();
        let done = run(&sh(&script), &[], None, Duration::from_secs(20)).await.unwrap();
        let took = started.elapsed();
        let grandchild: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(grandchild).unwrap(),
            rustix::process::Signal::KILL,
        );
        assert!(done.status.success());
        assert_eq!(String::from_utf8_lossy(&done.stdout), "quick\n");
        // The bound is the behaviour: the answer comes with the exit, not with the grandchild's.
        assert!(took < Duration::from_secs(10), "{took:?}");
    }

    #[tokio::test]
    async fn output_is_kept_up_to_its_cap() {
        let done = run(&sh("head -c 1000000 /dev/zero"), &[], None, Duration::from_secs(20)).await.unwrap();
        assert!(done.status.success());
        assert_eq!(done.stdout.len(), OUTPUT_MAX);
    }

    #[test]
    fn stderr_that_repeats_the_value_is_withheld() {
        assert_eq!(stderr_tail(b"bad key: hunter2\n", Some(b"hunter2")), "(stderr withheld: it contains the value)");
        assert_eq!(stderr_tail(b"bad key\n", Some(b"hunter2")), "bad key");
        let long = "x".repeat(1000);
        assert_eq!(stderr_tail(long.as_bytes(), None).len(), 300);
    }
}
