//! `signal = { pidfile = "/run/api/api.pid", signal = "HUP" }`, or `{ unit = "api.service" }`:
//! a signal to the process named by a pidfile, or to a systemd unit's main process.

use std::path::PathBuf;
use std::time::Duration;

use rustix::process::{Pid, Signal as Sig};

use super::{Change, NotifyError, Sent};
use crate::config::{SignalNotify, SignalTarget};

/// How long `systemctl show` may take to name a unit's main process.
const SYSTEMCTL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct Signal {
    target: SignalTarget,
    name: String,
    signal: Sig,
}

impl Signal {
    pub fn new(config: &SignalNotify) -> Self {
        Signal { target: config.target.clone(), name: config.signal.clone(), signal: by_name(&config.signal) }
    }

    pub async fn notify(&self, _change: &Change) -> Result<Sent, NotifyError> {
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
