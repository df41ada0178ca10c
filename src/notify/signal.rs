//! `signal = { pidfile = "/run/api/api.pid", signal = "HUP" }`, or `{ unit = "api.service" }`:
//! a signal to the process named by a pidfile, or to a systemd unit's main process.
//!
//! A pidfile is the application's, not keyturn's, and is read as hostile input: without
//! following a symbolic link at its end, without waiting (a FIFO), off the runtime thread, and
//! only if it is a regular file of a few bytes. The process it names is signalled only if it
//! runs as the user the policy expects (`user = "api"`; by default, the pidfile's owner) and is
//! not the agent itself; the check and the signal go through one pidfd, so a process that ends
//! in between is not replaced by whichever process gets its pid next.

use std::path::PathBuf;
use std::time::Duration;

use rustix::process::{Pid, Signal as Sig};
use serde::Deserialize;
use toml::Spanned;

use super::systemd::check_unit;
use super::{Change, Kind, NotifyError, Resources, Sent};
use crate::config::{Account, NameOrId, Section};

/// How long `systemctl show` may take to name a unit's main process.
const SYSTEMCTL_TIMEOUT: Duration = Duration::from_secs(10);
/// A pid and a newline; anything longer is not a pidfile.
const PIDFILE_MAX: u64 = 64;
/// How long reading a pidfile may take (a hung network filesystem).
const PIDFILE_TIMEOUT: Duration = Duration::from_secs(5);
/// Signals a notifier may send: the ones applications use to reload or reopen, never KILL.
const SIGNALS: &[&str] = &["HUP", "USR1", "USR2", "INT", "TERM", "QUIT", "WINCH", "CONT", "ALRM"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalConfig {
    pub target: SignalTarget,
    /// The signal's name without `SIG`: `HUP`, `USR1`, ...
    pub signal: String,
    /// The user a pidfile's process must run as; `None`: the pidfile's owner.
    pub user: Option<u32>,
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
    user: Option<Spanned<NameOrId>>,
}

#[derive(Debug)]
pub struct Signal {
    target: SignalTarget,
    name: String,
    signal: Sig,
    user: Option<u32>,
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
        let user = section.account(settings.user.as_ref(), "user", Account::User);
        if let (Some(user), Some(SignalTarget::Unit(_))) = (&settings.user, &target) {
            section.problem(Some(user.span()), "user", "applies only to a pidfile: systemd names a unit's process");
        }
        Some(SignalConfig { target: target?, signal: name?, user: user? })
    }

    fn new(config: &SignalConfig, _: &Resources) -> Self {
        Signal {
            target: config.target.clone(),
            name: config.signal.clone(),
            signal: by_name(&config.signal),
            user: config.user,
        }
    }

    async fn notify(&self, _change: &Change) -> Result<Sent, NotifyError> {
        let (pid, owner) = match &self.target {
            SignalTarget::Pidfile(path) => match read_pidfile(path).await? {
                Some((pid, file_owner)) => (pid, Some(self.user.unwrap_or(file_owner))),
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
                    // systemd says which process is the unit's: no owner to check.
                    Some(pid) => (pid, None),
                    None => return Ok(Sent::Skipped(format!("unit {unit} has no main process: it is not running"))),
                }
            }
        };
        let named_by = match &self.target {
            SignalTarget::Pidfile(path) => format!("the pidfile {}", path.display()),
            SignalTarget::Unit(unit) => format!("unit {unit}"),
        };
        let gone = || Ok(Sent::Skipped(format!("process {} named by {named_by} is gone", pid.as_raw_nonzero())));
        if pid.as_raw_nonzero().get() as u32 == std::process::id() {
            return Err(NotifyError::Failed(format!(
                "{named_by} names process {}, the agent itself: not signalled",
                pid.as_raw_nonzero()
            )));
        }
        // The check and the signal go to the process this pidfd pins.
        let pidfd = match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
            Ok(pidfd) => pidfd,
            Err(rustix::io::Errno::SRCH) => return gone(),
            Err(e) => {
                return Err(NotifyError::Failed(format!("cannot open process {}: {e}", pid.as_raw_nonzero())));
            }
        };
        if let Some(expected) = owner {
            match process_uid(pid) {
                Some(uid) if uid == expected => {}
                Some(uid) => {
                    return Err(NotifyError::Failed(format!(
                        "{named_by} names process {}, which runs as uid {uid}, not uid {expected} ({}): not signalled",
                        pid.as_raw_nonzero(),
                        if self.user.is_some() { "the policy's user" } else { "the pidfile's owner" }
                    )));
                }
                None => {
                    return Err(NotifyError::Failed(format!(
                        "cannot tell which user process {} named by {named_by} runs as (/proc/{} is hidden: ProtectProc=invisible hides other users' processes; set ProtectProc=default where the agent signals them): not signalled",
                        pid.as_raw_nonzero(),
                        pid.as_raw_nonzero()
                    )));
                }
            }
        }
        match rustix::process::pidfd_send_signal(&pidfd, self.signal) {
            Ok(()) => Ok(Sent::Done),
            Err(rustix::io::Errno::SRCH) => gone(),
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

/// The pid in a pidfile and the file's owner; `None` if there is no such file. Only the first
/// line counts.
async fn read_pidfile(path: &std::path::Path) -> Result<Option<(Pid, u32)>, NotifyError> {
    let file = match crate::sys::read_small_file_async(path, PIDFILE_MAX, crate::sys::Links::Refuse, PIDFILE_TIMEOUT).await {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(NotifyError::Failed(format!("cannot read pidfile {}: {e}", path.display()))),
    };
    let text = std::str::from_utf8(&file.bytes).unwrap_or("");
    let first = text.lines().next().unwrap_or("").trim();
    let pid = first.parse::<i32>().ok().filter(|p| *p > 1).and_then(Pid::from_raw);
    pid.map(|pid| Some((pid, file.owner)))
        .ok_or_else(|| NotifyError::Failed(format!("pidfile {} does not hold a process id", path.display())))
}

/// The real user id a process runs as, from `/proc/PID/status`; `None` if it is hidden.
fn process_uid(pid: Pid) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid.as_raw_nonzero())).ok()?;
    status.lines().find_map(|l| l.strip_prefix("Uid:"))?.split_whitespace().next()?.parse().ok()
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
