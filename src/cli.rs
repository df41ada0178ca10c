//! Command-line definitions, and nothing else: each flag is defined once, with its test below.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::DEFAULT_CONFIG_PATH;

/// keyturn: pull secrets from a store, rotate them on schedule, deliver them atomically to
/// tmpfs, and report what it did.
#[derive(Debug, Parser)]
#[command(name = "keyturn", version, max_term_width = 100)]
pub struct Cli {
    /// The agent configuration file.
    #[arg(long, global = true, value_name = "PATH", env = "KEYTURN_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,

    /// Log line format on standard error.
    #[arg(long, global = true, value_enum, env = "KEYTURN_LOG_FORMAT", default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,

    /// Log filter: a level (error, warn, info, debug, trace), optionally with per-module
    /// levels such as "info,keyturn::engine=debug".
    #[arg(long, global = true, value_name = "FILTER", env = "KEYTURN_LOG", default_value = "info")]
    pub log: String,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Deliver every policy, then keep them current until stopped (SIGTERM or SIGINT).
    /// SIGHUP, or a change to a policy file, reloads the configuration.
    Agent,
    /// Deliver every policy once and exit: 0 when every required policy is delivered.
    Sync {
        /// Run one pass and exit: `keyturn sync --once`. (The only mode; `keyturn agent` keeps
        /// running.)
        #[arg(long, required = true)]
        once: bool,
    },
    /// Check the agent file and every policy file; list every problem, exit 64 if any.
    Validate {
        /// Check only what does not depend on this machine, for CI: users, groups, unset
        /// environment variables and files the settings name are listed as not checked.
        #[arg(long)]
        portable: bool,
        /// Check the policy files of this directory instead of the agent file's `policies`.
        #[arg(long, value_name = "DIR")]
        policies: Option<PathBuf>,
        /// A store the policies may name without an agent file defining it: NAME, or NAME=KIND
        /// to check secret ids by that backend's rules (repeatable). With it, a missing agent
        /// file is not a problem.
        #[arg(long = "store", value_name = "NAME[=KIND]", requires = "policies")]
        stores: Vec<String>,
        /// Print the result as JSON: every problem and every check left to the node, each with
        /// file, line, key and message.
        #[arg(long)]
        json: bool,
    },
    /// Show, per policy, the delivered version, when, and the last error.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Rotate a policy's secret now: lease, generate, add as pending, check, promote, clean
    /// up. Prints a line per step and the new version. A running agent on this node is told
    /// to deliver it at once.
    Rotate {
        /// The policy (its file stem).
        policy: String,
        /// Rotate now, whatever the schedule says. Required: the agent rotates on schedule by
        /// itself, and this command is for rotating at once.
        #[arg(long, required = true)]
        now: bool,
        /// The old value leaked: disable it as soon as its replacement is current, skipping
        /// its grace, so it leaves every verification set at once.
        #[arg(long, requires = "now")]
        revoke: bool,
    },
    /// Ask the running agent to reload its configuration; prints what it found wrong, if anything.
    Reload,
    /// Ask the running agent to pull every policy now instead of at its next poll.
    Resync,
    /// Measure a store from this node: token, first access, p50/p99 of more accesses, and a
    /// cold read of every policy on it. Prints times and counts, never a value.
    Probe {
        /// A store name from the agent file's [stores.NAME] sections.
        #[arg(long)]
        store: String,
        /// Accesses per endpoint for the percentiles.
        #[arg(long, value_name = "K", default_value_t = 20)]
        requests: usize,
        /// Also probe this region's endpoint (Google; repeatable), e.g. --location europe-west3.
        #[arg(long, value_name = "LOCATION")]
        location: Vec<String>,
        /// The secret to access (default: the first policy's secret on that store).
        #[arg(long, value_name = "ID")]
        secret: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Read or write a configured store directly.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
}

#[derive(Debug, PartialEq, Eq, Subcommand)]
pub enum StoreCommand {
    /// Add the value on standard input as a new version of a secret and make it current.
    /// The bytes are stored exactly: `printf %s VALUE` avoids a trailing newline.
    Put {
        /// A store name from the agent file's [stores.NAME] sections.
        store: String,
        /// The secret id.
        id: String,
    },
    /// Print a version's value to standard output.
    Get {
        store: String,
        id: String,
        /// A version number, an alias (current, previous, pending), or "latest".
        #[arg(long, value_name = "V", default_value = "current")]
        version: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("keyturn").chain(args.iter().copied()))
    }

    #[test]
    fn config_defaults_and_follows_any_subcommand() {
        // SAFETY of the assertion: KEYTURN_CONFIG is not set in the test environment.
        if std::env::var_os("KEYTURN_CONFIG").is_none() {
            assert_eq!(parse(&["validate"]).unwrap().config, PathBuf::from(DEFAULT_CONFIG_PATH));
        }
        assert_eq!(parse(&["validate", "--config", "/x.toml"]).unwrap().config, PathBuf::from("/x.toml"));
        assert_eq!(parse(&["--config", "/y.toml", "agent"]).unwrap().config, PathBuf::from("/y.toml"));
    }

    #[test]
    fn log_format() {
        assert_eq!(parse(&["agent"]).unwrap().log_format, LogFormat::Human);
        assert_eq!(parse(&["agent", "--log-format", "json"]).unwrap().log_format, LogFormat::Json);
        assert!(parse(&["agent", "--log-format", "xml"]).is_err());
    }

    #[test]
    fn sync_once() {
        assert_eq!(parse(&["sync", "--once"]).unwrap().command, Command::Sync { once: true });
        let without = parse(&["sync"]).unwrap_err();
        assert_eq!(without.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        assert!(without.to_string().contains("keyturn sync --once"), "{without}");
    }

    #[test]
    fn status_json() {
        assert_eq!(parse(&["status", "--json"]).unwrap().command, Command::Status { json: true });
    }

    #[test]
    fn probe() {
        assert_eq!(
            parse(&["probe", "--store", "edge", "--requests", "50", "--location", "us", "--location", "eu", "--json"])
                .unwrap()
                .command,
            Command::Probe {
                store: "edge".into(),
                requests: 50,
                location: vec!["us".into(), "eu".into()],
                secret: None,
                json: true
            }
        );
        assert!(parse(&["probe"]).is_err(), "--store is required");
    }

    #[test]
    fn reload_and_resync() {
        assert_eq!(parse(&["reload"]).unwrap().command, Command::Reload);
        assert_eq!(parse(&["resync"]).unwrap().command, Command::Resync);
    }

    #[test]
    fn rotate_now_and_revoke() {
        assert_eq!(
            parse(&["rotate", "api-signing", "--now", "--revoke"]).unwrap().command,
            Command::Rotate { policy: "api-signing".into(), now: true, revoke: true }
        );
        assert!(parse(&["rotate", "api-signing", "--revoke"]).is_err(), "--revoke requires --now");
        assert!(parse(&["rotate", "api-signing"]).is_err(), "--now is required");
        assert!(parse(&["rotate"]).is_err());
    }

    #[test]
    fn store_put_and_get() {
        assert_eq!(
            parse(&["store", "put", "dev", "db"]).unwrap().command,
            Command::Store { command: StoreCommand::Put { store: "dev".into(), id: "db".into() } }
        );
        assert_eq!(
            parse(&["store", "get", "dev", "db", "--version", "3"]).unwrap().command,
            Command::Store { command: StoreCommand::Get { store: "dev".into(), id: "db".into(), version: "3".into() } }
        );
        assert!(parse(&["store", "put", "dev"]).is_err());
    }

    #[test]
    fn definitions_are_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
