//! systemd's side of `Type=notify`: READY=1 once every required policy is on disk (not
//! before: a unit that is "started" must have its secrets), STATUS= lines as delivery goes,
//! WATCHDOG=1 at half the watchdog interval when `WatchdogSec` is set, STOPPING=1 on the way
//! out. Without `NOTIFY_SOCKET` every call does nothing.

use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;

use crate::engine::Shared;

/// Reports readiness and status until dropped.
pub async fn report(shared: Arc<Shared>) {
    let mut readiness = shared.readiness();
    let watchdog = sd_notify::watchdog_enabled();
    let mut ticks = tokio::time::interval(watchdog.map_or(Duration::from_secs(3600), |w| w / 2));
    let mut announced = false;
    loop {
        if !announced && *readiness.borrow_and_update() {
            announced = true;
            let status = summary(&shared);
            send(&[NotifyState::Ready, NotifyState::Status(&status)]);
            tracing::info!(%status, "ready: every required policy is delivered");
        }
        tokio::select! {
            changed = readiness.changed() => {
                if changed.is_err() {
                    return;
                }
                let status = summary(&shared);
                send(&[NotifyState::Status(&status)]);
            }
            _ = ticks.tick(), if watchdog.is_some() => send(&[NotifyState::Watchdog]),
        }
    }
}

pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

pub fn status(text: &str) {
    send(&[NotifyState::Status(text)]);
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

fn summary(shared: &Shared) -> String {
    let status = shared.status();
    let total = status.policies.len();
    let delivered = status.policies.values().filter(|p| p.version.is_some()).count();
    let failing = status.policies.values().filter(|p| p.last_error.is_some()).count();
    format!("{delivered} of {total} policies delivered, {failing} failing")
}
