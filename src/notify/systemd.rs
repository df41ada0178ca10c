//! `systemd = { unit = "api.service", action = "reload" }`: `systemctl reload` (or restart,
//! try-restart, reload-or-restart) of a unit.

use std::time::Duration;

use super::{Change, NotifyError, Sent};
use crate::config::SystemdNotify;

#[derive(Debug)]
pub struct Systemd {
    command: Vec<String>,
    timeout: Duration,
}

impl Systemd {
    pub fn new(config: &SystemdNotify) -> Self {
        Systemd { command: command(config), timeout: config.timeout }
    }

    pub async fn notify(&self, _change: &Change) -> Result<Sent, NotifyError> {
        let done = crate::process::run(&self.command, &[], None, self.timeout).await?;
        if done.status.success() {
            Ok(Sent::Done)
        } else {
            Err(NotifyError::Exit {
                program: self.command.join(" "),
                status: done.status,
                stderr: crate::process::stderr_tail(&done.stderr, None),
            })
        }
    }
}

/// `systemctl ACTION UNIT`; `--no-block` would return before the reload is done, and the
/// point of notifying is that the application has the new files when this succeeds.
fn command(config: &SystemdNotify) -> Vec<String> {
    vec!["systemctl".into(), config.action.clone(), config.unit.clone()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_the_systemctl_command() {
        let config =
            SystemdNotify { unit: "api.service".into(), action: "try-restart".into(), timeout: Duration::from_secs(5) };
        assert_eq!(command(&config), ["systemctl", "try-restart", "api.service"]);
    }
}
