//! `signal = { pidfile = "/run/api/api.pid", signal = "HUP" }`, or `{ unit = "api.service" }`:
//! a signal to the process named by a pidfile, or to a systemd unit's main process.

use std::path::PathBuf;
use std::time::Duration;

use rustix::process::{Pid, Signal as Sig};
use serde::Deserialize;
use toml::Spanned;

use super::systemd::check_unit;
use super::{Change, Kind, NotifyError, Resources, Sent};
use crate::config::Section;

/// How long `systemctl show` may take to name a unit's main process.
const SYSTEMCTL_TIMEOUT: Duration = Duration::from_secs(10);
/// Signals a notifier may send: the ones applications use to reload or reopen, never KILL.
const SIGNALS: &[&str] = &["HUP", "USR1", "USR2", "INT", "TERM", "QUIT", "WINCH", "CONT", "ALRM"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalConfig {
    pub target: SignalTarget,
    /// The signal's name without `SIG`: `HUP`, `USR1`, ...
    pub signal: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignalTarget {
    Pidfile(PathBuf),
    /// The main process of a systemd unit (`systemctl show -p MainPID`).
    Unit(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    pidfile: Option<Spanned<String>>,
    unit: Option<Spanned<String>>,
    signal: Option<Spanned<String>>,
}

#[derive(Debug)]
pub struct Signal {
    target: SignalTarget,
    name: String,
    signal: Sig,
}

impl Kind for Signal {
    const NAME: &'static str = "signal";
    type Config = SignalConfig;

    fn configure(section: &mut Section<'_, '_>) -> Option<SignalConfig> {
        let settings: Settings = section.parse()?;
        let target = match (&settings.pidfile, &settings.unit) {
            (Some(pidfile), None) => section.absolute_path(pidfile, "pidfile").map(SignalTarget::Pidfile),
            (None, Some(unit)) => check_unit(unit.get_ref())
                .map(|()| SignalTarget::Unit(unit.get_ref().clone()))
                .map_err(|m| section.problem(Some(unit.span()), "unit", m))
                .ok(),
            _ => {
                section.problem(Some(section.span()), "", "set exactly one of pidfile or unit");
                None
            }
        };
        let name = settings.signal.as_ref().map_or("HUP".to_string(), |s| s.get_ref().trim().to_ascii_uppercase());
        let name = name.strip_prefix("SIG").unwrap_or(&name).to_string();
        let name = if SIGNALS.contains(&name.as_str()) {
            Some(name)
        } else {
            let span = settings.signal.as_ref().map_or(section.span(), Spanned::span);
            section.problem(
                Some(span),
                "signal",
                format!("\"{name}\" is not a signal keyturn sends; expected one of {}", SIGNALS.join(", ")),
            );
            None
        };
        Some(SignalConfig { target: target?, signal: name? })
    }

    fn new(config: &SignalConfig, _: &Resources) -> Self {
        Signal { target: config.target.clone(), name: config.signal.clone(), signal: by_name(&config.signal) }
    }

    async fn notify(&self, _change: &Change) -> Result<Sent, NotifyError> {
        let pid = match &self.target {
            SignalTarget::Pidfile(path) => match read_pidfile(path)? {
                Some(pid) => pid,
                None => {
                    return Ok(Sent::Skipped(format!(
                        "no pidfile at {}: the application is not running",
                        path.display()
                    )));
                }
            },
            SignalTarget::Unit(unit) => {
                let command = ["systemctl", "show", "--property=MainPID", "--value", unit.as_str()].map(String::from);
                let done = crate::process::run(&command, &[], None, SYSTEMCTL_TIMEOUT).await?;
                if !done.status.success() {
                    return Err(NotifyError::Exit {
                        program: "systemctl show".into(),
                        status: done.status,
                        stderr: crate::process::stderr_tail(&done.stderr, None),
                    });
                }
                match String::from_utf8_lossy(&done.stdout).trim().parse::<i32>().ok().and_then(Pid::from_raw) {
                    Some(pid) => pid,
                    None => return Ok(Sent::Skipped(format!("unit {unit} has no main process: it is not running"))),
                }
            }
        };
        match rustix::process::kill_process(pid, self.signal) {
            Ok(()) => Ok(Sent::Done),
            Err(rustix::io::Errno::SRCH) => {
                let named_by = match &self.target {
                    SignalTarget::Pidfile(path) => format!("the pidfile {}", path.display()),
                    SignalTarget::Unit(unit) => format!("unit {unit}"),
                };
                Ok(Sent::Skipped(format!("process {} named by {named_by} is gone", pid.as_raw_nonzero())))
            }
            Err(rustix::io::Errno::PERM) => Err(NotifyError::Failed(format!(
                "cannot send SIG{} to process {}: it runs as another user, and signalling it needs CAP_KILL (systemd: add owners.conf)",
                self.name,
                pid.as_raw_nonzero()
            ))),
            Err(e) => Err(NotifyError::Failed(format!(
                "cannot send SIG{} to process {}: {e}",
                self.name,
                pid.as_raw_nonzero()
            ))),
        }
    }
}

/// The pid in a pidfile; `None` if there is no such file. Only the first line counts.
fn read_pidfile(path: &PathBuf) -> Result<Option<Pid>, NotifyError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(NotifyError::Failed(format!("cannot read pidfile {}: {e}", path.display()))),
    };
    let first = text.lines().next().unwrap_or("").trim();
    let pid = first.parse::<i32>().ok().filter(|p| *p > 1).and_then(Pid::from_raw);
    pid.map(Some).ok_or_else(|| NotifyError::Failed(format!("pidfile {} does not hold a process id", path.display())))
}

/// Validation allows only the names below.
fn by_name(name: &str) -> Sig {
    match name {
        "USR1" => Sig::USR1,
        "USR2" => Sig::USR2,
        "INT" => Sig::INT,
        "TERM" => Sig::TERM,
        "QUIT" => Sig::QUIT,
        "WINCH" => Sig::WINCH,
        "CONT" => Sig::CONT,
        "ALRM" => Sig::ALARM,
        _ => Sig::HUP,
    }
}
