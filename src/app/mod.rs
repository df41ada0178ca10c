//! Turns a command line into work: builds stores and tasks from a validated configuration,
//! runs one command or the long-running agent, and owns every task it starts.
//!
//! - [`commands`]: the one-shot commands (`validate`, `status`, `sync --once`, `rotate`,
//!   `probe`, `store`, and the requests to a running agent);
//! - [`agent`]: the long-running agent's lifetime: start, signals, reloads, stop;
//! - [`build`]: configuration → stores (through the store registry), the bundle writer, the
//!   event reporter. The only place that opens stores.
//!
//! Errors are typed ([`AppError`]); `main.rs` alone maps them to exit codes.

mod agent;
mod build;
mod commands;
mod fleet;

use std::path::Path;

use crate::cli::{Cli, Command, FleetCommand};
use crate::clock::SharedClock;
use crate::config::ConfigErrors;
use crate::control::socket;
use crate::deliver::DeliverError;
use crate::store::StoreError;

/// Side effects the process decides once, at its edge, and hands in.
#[derive(Debug, Clone)]
pub struct Seams {
    /// `KEYTURN_TEST_PAUSE_AT`: a named step (`bundle:swapped`) at which the agent stops
    /// forever, so that crash tests can SIGKILL it at exactly that point.
    pub pause_at: Option<String>,
    /// Where every "now" comes from.
    pub clock: SharedClock,
    /// `CREDENTIALS_DIRECTORY`: where systemd put the unit's credentials (the cache key).
    pub credentials_directory: Option<std::path::PathBuf>,
}

impl Seams {
    pub fn from_process() -> Self {
        Seams {
            pause_at: std::env::var("KEYTURN_TEST_PAUSE_AT").ok(),
            clock: crate::clock::system(),
            credentials_directory: std::env::var_os("CREDENTIALS_DIRECTORY").map(Into::into),
        }
    }

    fn bundle_pause(&self) -> Option<String> {
        self.pause_at.as_deref().and_then(|p| p.strip_prefix("bundle:")).map(String::from)
    }

    fn engine(&self) -> crate::engine::Seams {
        crate::engine::Seams {
            clock: self.clock.clone(),
            random: crate::backoff::unit_random,
            pause_at: self.pause_at.as_deref().map(Into::into),
        }
    }
}

/// How a one-shot command speaks on standard error, besides its result on standard output:
/// plain `keyturn: ...` lines for people, or JSON log lines with `--log-format json`, so that a
/// program reading standard error reads one format.
#[derive(Debug, Clone, Copy)]
pub struct Voice {
    json: bool,
}

impl Voice {
    /// What a command did, by the way.
    pub fn note(self, message: &str) {
        if self.json { tracing::info!("{message}") } else { eprintln!("keyturn: {message}") }
    }

    /// What a command did that the operator must not miss.
    pub fn warn(self, message: &str) {
        if self.json { tracing::warn!("{message}") } else { eprintln!("keyturn: {message}") }
    }

    /// A step of a long command (`[2/5] added version 4 as pending`).
    pub fn progress(self, line: &str) {
        if self.json { tracing::info!(progress = %line) } else { eprintln!("{line}") }
    }
}

/// `keyturn man [COMMAND]`: keyturn's manual page, or a command's (`keyturn-rotate(1)`).
fn manual(command: Option<&str>) -> Result<(), AppError> {
    let root = crate::cli::command();
    let page = match command {
        None => root,
        Some(name) => {
            let names: Vec<String> = root.get_subcommands().map(|c| c.get_name().to_string()).collect();
            let sub = root.find_subcommand(name).cloned().ok_or_else(|| {
                AppError::Usage(format!("no command named \"{name}\"; commands: {}", names.join(", ")))
            })?;
            sub.name(format!("keyturn-{name}")).version(env!("CARGO_PKG_VERSION"))
        }
    };
    clap_mangen::Man::new(page)
        .render(&mut std::io::stdout())
        .map_err(|source| AppError::Io { what: "cannot write the manual page".into(), source })
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("policy {policy}: {source}")]
    Rotation {
        policy: String,
        #[source]
        source: Box<crate::rotation::protocol::RotationError>,
    },
    #[error(
        "policy {policy}: another rotation holds the lease ({holder}); it ends when that rotation finishes or the lease expires"
    )]
    Busy { policy: String, holder: String },
    /// A running agent refused or failed what it was asked.
    #[error("{0}")]
    Agent(String),
    #[error(transparent)]
    Config(#[from] ConfigErrors),
    /// The command line asks for something that cannot be done as asked.
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Store(Box<StoreError>),
    #[error(transparent)]
    Deliver(#[from] DeliverError),
    #[error(transparent)]
    Cache(#[from] crate::cache::CacheError),
    /// The fleet's view could not be read (`[fleet]`, Prometheus).
    #[error("fleet: {0}")]
    Fleet(String),
    /// `fleet status`: live nodes hold an older version than the fleet's newest.
    #[error("nodes lag: {}", nodes.join(", "))]
    Lagging { nodes: Vec<String> },
    /// `status`: required policies are failing (the status says why).
    #[error("required policies are failing: {}", policies.join(", "))]
    Failing { policies: Vec<String> },
    /// `probe` could not read the store at all from these endpoints (its report says why).
    #[error("no access succeeded on {}", endpoints.join(", "))]
    ProbeFailed { endpoints: Vec<String> },
    /// `validate` found problems and has listed them.
    #[error("configuration has {problems} problem{}", if *problems == 1 { "" } else { "s" })]
    Invalid { problems: usize },
    #[error("{failed} of {total} policies failed ({}); see `keyturn status` or the log above", names.join(", "))]
    PoliciesFailed { failed: usize, total: usize, names: Vec<String> },
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl From<StoreError> for AppError {
    fn from(error: StoreError) -> Self {
        AppError::Store(Box::new(error))
    }
}

pub async fn run(cli: Cli, seams: Seams) -> Result<(), AppError> {
    // Values pass through every command except `validate`; none of them may end up in a core
    // dump. Failure here (an unusual kernel) is worth a warning, not a refusal.
    if let Err(e) = crate::sys::forbid_core_dumps() {
        tracing::warn!(error = %e, "cannot mark the process non-dumpable");
    }
    if let Err(e) = crate::sys::raise_open_files_limit() {
        // Filtered under the systemd unit (`~@resources`), which sets its own limits.
        tracing::debug!(error = %e, "cannot raise the open files limit");
    }
    let config_path = std::path::absolute(&cli.config).unwrap_or_else(|_| cli.config.clone());
    let path: &Path = &config_path;
    let voice = Voice { json: cli.log_format == crate::cli::LogFormat::Json };
    match cli.command {
        Command::Validate { portable, policies, stores, json } => {
            commands::validate(path, portable, policies.as_deref(), &stores, json)
        }
        Command::Status { json } => commands::status(path, json).await,
        Command::Store { command } => commands::store(path, command, &seams).await,
        Command::Sync { once: _, json } => commands::sync_once(path, json, &seams).await,
        Command::Agent => agent::run(path, &seams).await,
        Command::Rotate { policy, now: _, revoke, json } => {
            commands::rotate(path, &policy, revoke, json, &seams, voice).await
        }
        Command::Reload => commands::ask_agent(path, socket::Request::Reload, voice).await,
        Command::Resync => commands::ask_agent(path, socket::Request::Resync, voice).await,
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut crate::cli::command(), "keyturn", &mut std::io::stdout());
            Ok(())
        }
        Command::Man { command } => manual(command.as_deref()),
        Command::Cache { command } => commands::cache(path, command, &seams).await,
        Command::Fleet { command: FleetCommand::Status { policy, json } } => {
            fleet::status(path, policy.as_deref(), json).await
        }
        Command::Rollback { policy, to, json } => {
            commands::rollback(path, &policy, to.as_deref(), json, &seams, voice).await
        }
        Command::Probe { store, requests, location, secret, json } => {
            commands::probe(path, &store, requests, &location, secret.as_deref(), json).await
        }
    }
}
