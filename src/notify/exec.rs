//! `exec = { command = ["/usr/local/bin/reload-api", "--fast"], timeout = "30s" }`: a program
//! (no shell) with the policy, version and bundle paths in its environment, never the value.

use std::time::Duration;

use super::{Change, NotifyError, Sent, change_env};
use crate::config::ExecNotify;

#[derive(Debug)]
pub struct Exec {
    command: Vec<String>,
    timeout: Duration,
}

impl Exec {
    pub fn new(config: &ExecNotify) -> Self {
        Exec { command: config.command.clone(), timeout: config.timeout }
    }

    pub async fn notify(&self, change: &Change) -> Result<Sent, NotifyError> {
        let env = change_env(change);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let done = crate::process::run(&self.command, &env, None, self.timeout).await?;
        if done.status.success() {
            Ok(Sent::Done)
        } else {
            Err(NotifyError::Exit {
                program: self.command[0].clone(),
                status: done.status,
                stderr: crate::process::stderr_tail(&done.stderr, None),
            })
        }
    }
}
