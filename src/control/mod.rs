//! How operators and their tools reach a running agent: the admin HTTP listener (`/metrics`,
//! `/healthz`, `/readyz`), the Unix control socket (`status`, `rotate`, `reload`, `resync`),
//! and systemd's notification socket (READY, STATUS, WATCHDOG, STOPPING).

pub mod admin;
pub mod socket;
pub mod systemd;
