//! keyturn: a per-node secrets rotation agent.
//!
//! # Layout
//!
//! The agent is a pipeline, and each module is one stage of it:
//!
//! - [`config`]: TOML files → raw serde types → pure validation → typed [`config::Config`] and
//!   [`config::Policy`] values. Nothing after validation sees a raw string.
//! - [`secret`]: [`secret::SecretBytes`], the only type that holds secret material. It
//!   zeroizes on drop and never formats.
//! - [`store`]: the [`store::SecretStore`] trait and one file per backend (the local file store
//!   is the default).
//! - [`generate`]: the only place that makes key material: random bytes, passwords and PKCS#8
//!   keys, plus the public JWK Set derived from them.
//! - [`rotation`]: timing policy (poll jitter, backoff) as small pure functions.
//! - [`deliver`]: output formats and the bundle writer that swaps a whole directory of files
//!   atomically on tmpfs.
//! - [`notify`]: telling applications their files changed: signal, systemd, exec, HTTP;
//!   coalesced, retried, and never blocking another policy.
//! - [`probe`]: `keyturn probe`, a store's latencies from this node.
//! - [`process`]: child processes with a deadline (check commands, notifiers).
//! - [`control`]: the admin HTTP listener, the control socket, systemd notifications.
//! - [`report`]: the status model persisted under `state_dir` and shown by `keyturn status`.
//! - [`engine`]: the loop that ties them together — pull, compare, deliver, report. It is
//!   generic over the store trait and never names a concrete backend.
//! - [`app`]: the only place that turns configuration into concrete stores and tasks.
//! - [`sys`]: the few operating-system calls (statfs, fchown, flock), all through `rustix`.
//!
//! The binary (`main.rs`) parses the command line, starts tracing, calls into [`app`] and maps
//! errors to exit codes: 0 ok, 1 runtime failure, 64 bad usage or configuration.

pub mod app;
pub mod cli;
pub mod config;
pub mod control;
pub mod deliver;
pub mod engine;
pub mod generate;
pub mod notify;
pub mod probe;
pub mod process;
pub mod report;
pub mod rotation;
pub mod secret;
pub mod store;
pub mod sys;

/// An error and its sources, joined: "bundle api: cannot write ...: No space left on device".
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}
