//! keyturn: a per-node secrets rotation agent.
//!
//! # Layout
//!
//! The agent is a pipeline, and each module is one stage of it:
//!
//! - [`config`]: TOML files → raw serde types → pure validation → typed [`config::Config`] and
//!   [`config::Policy`] values. Nothing after validation sees a raw string.
//! - [`secret`]: [`secret::SecretBytes`], the only type that holds secret material (it
//!   zeroizes on drop and never formats), and the names around it: ids, versions.
//! - [`clock`] and [`backoff`]: the only reads of the wall clock, and retry and poll timing as
//!   pure functions.
//! - [`store`]: the [`store::SecretStore`] trait and one file per backend, registered in one
//!   list (the local file store is the default).
//! - [`generate`]: the only place that makes key material: random bytes, passwords and PKCS#8
//!   keys, plus the public JWK Set derived from them.
//! - [`rotation`]: when a secret is due, the lease, and the staged rotation protocol.
//! - [`cache`]: the sealed last-known-good cache (AES-256-GCM) a node restores from when it
//!   starts without its store.
//! - [`deliver`]: output formats (one file each, registered in one list) and the bundle writer
//!   that swaps a whole directory of files atomically on tmpfs.
//! - [`notify`]: telling applications their files changed: one file per notifier, registered
//!   in one list; coalesced, retried, and never blocking another policy.
//! - [`report`]: the recorder (the one place outcomes become logs, metrics, status and
//!   events), the status model, metrics, and central events.
//! - [`fleet`]: the fleet's view, read from Prometheus' query API over the metrics every agent
//!   exports: `keyturn fleet status`, and the adoption gate a rotator asks before retiring an
//!   old version (through [`rotation::protocol::Adoption`], so rotation itself knows no HTTP).
//! - [`engine`]: the loop that ties them together — pull, compare, deliver, rotate, record.
//!   It is generic over the store trait and never names a backend, notifier or format.
//! - [`control`]: the admin HTTP listener, the control socket, systemd notifications; it sees
//!   the recorder and a narrow engine handle, nothing more.
//! - [`probe`]: `keyturn probe`, a store's latencies from this node.
//! - [`app`]: commands and the agent's lifetime; the only place that builds stores and tasks
//!   from configuration.
//! - [`sys`], [`process`], [`task`]: the few operating-system calls (through `rustix`), child
//!   processes with deadlines, and task ownership; [`http`]: the one policy for outbound
//!   HTTP (no redirects, no proxy for loopback, https beyond it).
//!
//! The binary (`main.rs`) parses the command line, starts tracing, calls into [`app`] and maps
//! errors to exit codes: 0 ok, 1 runtime failure, 64 bad usage or configuration.
//!
//! # Adding a kind
//!
//! A store backend, a notifier or an output format is one new file (or folder) holding its
//! settings, their validation, its construction and its tests, plus one line in its list:
//!
//! - a store: `store/NAME.rs` implementing [`store::SecretStore`] and
//!   [`store::registry::Backend`]; one line in the `stores!` list in `store/mod.rs`;
//! - a notifier: `notify/NAME.rs` implementing [`notify::Kind`]; one line in the
//!   `notifiers!` list in `notify/mod.rs`;
//! - a format: `deliver/format/NAME.rs` implementing [`deliver::format::Kind`]; one line in
//!   the `formats!` list in `deliver/format/mod.rs`.
//!
//! Nothing else changes: not the engine, the CLI, the configuration code or the other kinds.

pub mod app;
pub mod backoff;
pub mod cache;
pub mod cli;
pub mod clock;
pub mod config;
pub mod control;
pub mod deliver;
pub mod engine;
pub mod fleet;
pub mod generate;
pub mod http;
pub mod notify;
pub mod probe;
pub mod process;
pub mod report;
pub mod rotation;
pub mod secret;
pub mod store;
pub mod sys;
pub mod task;

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
