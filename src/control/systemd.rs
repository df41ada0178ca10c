//! systemd's side of `Type=notify`: READY=1 once every required policy is on disk (not
//! before: a unit that is "started" must have its secrets), STATUS= lines as delivery goes,
//! WATCHDOG=1 at half the watchdog interval when `WatchdogSec` is set, STOPPING=1 on the way
//! out. Without `NOTIFY_SOCKET` every call does nothing.
//!
//! Every message is sent without blocking: a service manager that stops reading its socket
//! costs a dropped status line and a warning, never a stuck agent (a blocking send would hang
//! the one runtime thread, SIGTERM included). READY=1 alone is retried until it is sent.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sd_notify::NotifyState;

use crate::report::Recorder;

/// Reports readiness and status until dropped.
pub async fn report(recorder: Arc<Recorder>) {
    let mut readiness = recorder.readiness();
    let watchdog = sd_notify::watchdog_enabled();
    let mut ticks = tokio::time::interval(watchdog.map_or(Duration::from_secs(3600), |w| w / 2));
    let mut announced = false;
    loop {
        if !announced && *readiness.borrow_and_update() {
            let status = recorder.summary();
            announced = send(&[NotifyState::Ready, NotifyState::Status(&status)]);
            if announced {
                tracing::info!(%status, "ready: every required policy is delivered");
            } else {
                tokio::time::sleep(READY_RETRY).await;
                continue;
            }
        }
        tokio::select! {
            changed = readiness.changed() => {
                if changed.is_err() {
                    return;
                }
                let status = recorder.summary();
                send(&[NotifyState::Status(&status)]);
            }
            _ = ticks.tick(), if watchdog.is_some() => {
                send(&[NotifyState::Watchdog]);
            }
        }
    }
}

pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

pub fn status(text: &str) {
    send(&[NotifyState::Status(text)]);
}

/// Whether the last send found the socket full: warn once, not at every message.
static BLOCKED: AtomicBool = AtomicBool::new(false);

/// How long to wait before sending READY=1 again when the socket was full.
const READY_RETRY: Duration = Duration::from_millis(100);

/// Sends one datagram to `NOTIFY_SOCKET`, if set; true when sent (or not wanted).
fn send(states: &[NotifyState<'_>]) -> bool {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else { return true };
    let message: String = states.iter().map(|state| format!("{state}\n")).collect();
    match send_to(&socket, message.as_bytes()) {
        Ok(()) => {
            if BLOCKED.swap(false, Ordering::Relaxed) {
                tracing::info!("the service manager reads its notify socket again");
            }
            true
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            if !BLOCKED.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "the service manager is not reading its notify socket: status lines are dropped and READY=1 waits until it does"
                );
            }
            false
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot notify systemd");
            false
        }
    }
}

/// `@name` is a socket in the abstract namespace, anything else a path.
fn send_to(socket: &OsStr, message: &[u8]) -> io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    let address = match socket.as_bytes().strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(socket)?,
    };
    let sender = UnixDatagram::unbound()?;
    sender.set_nonblocking(true)?;
    let sent = sender.send_to_addr(message, &address)?;
    if sent == message.len() { Ok(()) } else { Err(io::Error::new(io::ErrorKind::WriteZero, "incomplete datagram")) }
}
