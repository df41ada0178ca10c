//! `exec = { command = ["/usr/local/bin/reload-api", "--fast"], timeout = "30s" }`: a program
//! (no shell) with the policy, version and bundle paths in its environment, never the value.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{Change, Kind, NotifyError, Resources, Sent, change_env};
use crate::config::Section;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecConfig {
    pub command: Vec<String>,
    pub timeout: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    command: Spanned<Vec<String>>,
    timeout: Option<Spanned<String>>,
}

#[derive(Debug)]
pub struct Exec {
    command: Vec<String>,
    timeout: Duration,
}

impl Kind for Exec {
    const NAME: &'static str = "exec";
    type Config = ExecConfig;

    fn configure(section: &mut Section<'_, '_>) -> Option<ExecConfig> {
        let settings: Settings = section.parse()?;
        let command = settings.command.get_ref();
        let command = if command.first().is_some_and(|c| !c.is_empty()) {
            Some(command.clone())
        } else {
            section.problem(
                Some(settings.command.span()),
                "command",
                "must name a program: [\"/usr/local/bin/reload-app\", \"--fast\"]",
            );
            None
        };
        let timeout = section.duration(settings.timeout.as_ref(), Duration::from_secs(30), "timeout");
        Some(ExecConfig { command: command?, timeout: timeout? })
    }

    fn new(config: &ExecConfig, _: &Resources) -> Self {
        Exec { command: config.command.clone(), timeout: config.timeout }
    }

    async fn notify(&self, change: &Change) -> Result<Sent, NotifyError> {
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
