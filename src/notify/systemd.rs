//! `systemd = { unit = "api.service", action = "reload" }`: `systemctl reload` (or restart,
//! try-restart, reload-or-restart) of a unit.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{Change, Kind, NotifyError, Resources, Sent};
use crate::config::Section;

const ACTIONS: &[&str] = &["reload", "restart", "try-restart", "reload-or-restart"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemdConfig {
    pub unit: String,
    /// `reload`, `restart`, `try-restart` or `reload-or-restart`.
    pub action: String,
    pub timeout: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    unit: Spanned<String>,
    action: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
}

#[derive(Debug)]
pub struct Systemd {
    command: Vec<String>,
    timeout: Duration,
}

impl Kind for Systemd {
    const NAME: &'static str = "systemd";
    type Config = SystemdConfig;

    fn configure(section: &mut Section<'_, '_>) -> Option<SystemdConfig> {
        let settings: Settings = section.parse()?;
        let unit =
            check_unit(settings.unit.get_ref()).map_err(|m| section.problem(Some(settings.unit.span()), "unit", m)).ok();
        let action = settings.action.as_ref().map_or("reload".to_string(), |a| a.get_ref().clone());
        let action = if ACTIONS.contains(&action.as_str()) {
            Some(action)
        } else {
            let span = settings.action.as_ref().map_or(section.span(), Spanned::span);
            section.problem(
                Some(span),
                "action",
                format!("\"{action}\" is not an action; expected one of {}", ACTIONS.join(", ")),
            );
            None
        };
        let timeout = section.duration(settings.timeout.as_ref(), Duration::from_secs(30), "timeout");
        unit?;
        Some(SystemdConfig { unit: settings.unit.into_inner(), action: action?, timeout: timeout? })
    }

    fn new(config: &SystemdConfig, _: &Resources) -> Self {
        Systemd { command: command(config), timeout: config.timeout }
    }

    async fn notify(&self, _change: &Change) -> Result<Sent, NotifyError> {
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
fn command(config: &SystemdConfig) -> Vec<String> {
    vec!["systemctl".into(), config.action.clone(), config.unit.clone()]
}

/// A systemd unit name: `api.service`, `api@1.service`, `api` (systemctl adds `.service`).
pub(super) fn check_unit(unit: &str) -> Result<(), String> {
    let ok = !unit.is_empty()
        && unit.len() <= 256
        && !unit.starts_with('-')
        && unit.chars().all(|c| c.is_ascii_alphanumeric() || "@._:-\\".contains(c));
    ok.then_some(()).ok_or_else(|| format!("\"{unit}\" is not a systemd unit name such as \"api.service\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_the_systemctl_command() {
        let config =
            SystemdConfig { unit: "api.service".into(), action: "try-restart".into(), timeout: Duration::from_secs(5) };
        assert_eq!(command(&config), ["systemctl", "try-restart", "api.service"]);
    }
}
