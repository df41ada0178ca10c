//! Child processes with a deadline: the rotation `check` command and the `exec` and `systemd`
//! notifiers. A child that outlives its timeout is killed, so a hung program never holds up
//! the agent.

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::AsyncWriteExt;

/// How much of a failed program's standard error an error message quotes.
const STDERR_TAIL: usize = 300;

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

/// Runs `command` (program and arguments, no shell) with `env` added, feeding it `stdin`, and
/// waits at most `timeout`.
pub async fn run(
    command: &[String],
    env: &[(&str, &str)],
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Result<Finished, RunError> {
    let program = command.first().cloned().unwrap_or_default();
    let mut child = tokio::process::Command::new(&program)
        .args(&command[1..])
        .envs(env.iter().copied())
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| RunError::Spawn { program: program.clone(), source })?;
    let input = child.stdin.take();
    let wait = async {
        if let (Some(mut pipe), Some(bytes)) = (input, stdin) {
            // A program that exits without reading its input is not an error by itself.
            let _ = pipe.write_all(bytes).await;
        }
        child.wait_with_output().await
    };
    match tokio::time::timeout(timeout, wait).await {
        Ok(Ok(output)) => Ok(Finished { status: output.status, stdout: output.stdout, stderr: output.stderr }),
        Ok(Err(source)) => Err(RunError::Wait { program, source }),
        // Dropping the future drops the child, which kills it (kill_on_drop).
        Err(_) => Err(RunError::Timeout { program, timeout }),
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

    #[test]
    fn stderr_that_repeats_the_value_is_withheld() {
        assert_eq!(stderr_tail(b"bad key: hunter2\n", Some(b"hunter2")), "(stderr withheld: it contains the value)");
        assert_eq!(stderr_tail(b"bad key\n", Some(b"hunter2")), "bad key");
        let long = "x".repeat(1000);
        assert_eq!(stderr_tail(long.as_bytes(), None).len(), 300);
    }
}
