//! Command-line definitions, and nothing else: each flag is defined once, with its test below.
//! The rules between flags (one needs another, one excludes another) are clap's to enforce,
//! so a wrong combination is a usage error before anything runs.

use std::path::PathBuf;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

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

    /// Log filter: a level (error, warn, info, debug, trace, off), optionally with per-module
    /// levels such as "info,keyturn::engine=debug".
    #[arg(long, global = true, value_name = "FILTER", env = "KEYTURN_LOG", default_value = "info", value_parser = log_filter)]
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
        /// Print what the pass did as JSON.
        #[arg(long)]
        json: bool,
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
    /// Show, per policy, the delivered version, when, the next rotation and the last error.
    /// Exits 1 while a required policy is failing.
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
        /// Print the result as JSON (progress lines still go to standard error).
        #[arg(long)]
        json: bool,
    },
    /// Bring back an older value as a new version (a roll forward), promoted like a rotation.
    ///
    /// The value of an older version is added as a new version and promoted through the
    /// rotation protocol (lease, check, promote), so every node, cache and JWK set sees a
    /// newer version. A read that names an older version is never delivered (it may be a
    /// lagging replica); this is how to go back on purpose.
    Rollback {
        /// The policy (its file stem).
        policy: String,
        /// The version whose value to bring back (default: the version named `previous`, or
        /// else the newest enabled version older than the current one). Never a disabled one.
        #[arg(long, value_name = "VERSION")]
        to: Option<String>,
        /// Print the result as JSON (progress lines still go to standard error).
        #[arg(long)]
        json: bool,
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
    /// Look at or clear the sealed last-known-good cache (entries, ages, limits; never values).
    Cache {
        #[command(subcommand)]
        command: CacheCommand,
    },
    /// The fleet's view, from the Prometheus named in [fleet]: which versions nodes hold.
    Fleet {
        #[command(subcommand)]
        command: FleetCommand,
    },
    /// Print a completion script for a shell: `keyturn completions bash > /etc/bash_completion.d/keyturn`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print a manual page (roff) made from these definitions: `keyturn man > keyturn.1`, or a
    /// command's own page: `keyturn man rotate > keyturn-rotate.1`.
    Man {
        /// The command whose page to print (default: keyturn's own).
        command: Option<String>,
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
        /// Read the value from a terminal (typed, then Ctrl-D). Without it, a terminal on
        /// standard input is refused: the value would show as typed, and a forgotten pipe
        /// would wait silently.
        #[arg(long)]
        from_tty: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a version's value to standard output.
    Get {
        store: String,
        id: String,
        /// A version number, an alias (current, previous, pending), or "latest".
        #[arg(long, value_name = "V", default_value = "current")]
        version: String,
    },
    /// List the secrets of a store: names only.
    List {
        store: String,
        /// Print JSON instead of one name per line.
        #[arg(long)]
        json: bool,
    },
    /// List a secret's versions: number, state, creation time and aliases; never a value.
    Versions {
        store: String,
        id: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, PartialEq, Eq, Subcommand)]
pub enum FleetCommand {
    /// Per policy: the versions in use and on how many nodes, the nodes that lag behind the
    /// newest (and since when), and the nodes that stopped reporting. Exits 1 while a
    /// reporting node lags.
    Status {
        /// One policy (default: every policy of this agent file).
        policy: Option<String>,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, PartialEq, Eq, Subcommand)]
pub enum CacheCommand {
    /// Every sealed entry: policy, version, when it was sealed, how old it may be, and whether
    /// this node would deliver it. Never a value.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove a policy's sealed entry, or every entry: a node then has nothing to start from
    /// offline until it has read its store again.
    Purge {
        /// The policy whose entry to remove (default: every entry).
        policy: Option<String>,
    },
}

/// `--log`: tracing's filter syntax, with every level named one tracing knows. Tracing reads a
/// bare word it does not know as a module name, so `--log warning` would quietly log nothing
/// more than the default; here it is refused.
fn log_filter(spec: &str) -> Result<String, String> {
    const LEVELS: &[&str] = &["error", "warn", "info", "debug", "trace", "off"];
    for directive in spec.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let level = directive.rsplit_once('=').map_or(directive, |(_, level)| level);
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(format!("\"{level}\" is not a level; expected one of {}", LEVELS.join(", ")));
        }
    }
    Ok(spec.to_string())
}

/// What `keyturn --version` says: the version, the commit it was built from, and what this
/// build can do.
pub fn long_version() -> String {
    let list = |names: &[&str]| names.join(", ");
    format!(
        "{} (commit {})\nstores: {}\nformats: {}\nnotifiers: {}",
        env!("CARGO_PKG_VERSION"),
        env!("KEYTURN_COMMIT"),
        list(crate::store::KINDS),
        list(crate::deliver::format::NAMES),
        list(crate::notify::KINDS)
    )
}

/// The CLI definition with its long version.
pub fn command() -> clap::Command {
    Cli::command().long_version(long_version())
}

/// Parses a command line (the program's name first).
pub fn parse_from<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let matches = command().try_get_matches_from(args)?;
    Cli::from_arg_matches(&matches)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        parse_from(std::iter::once("keyturn").chain(args.iter().copied()))
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
    fn log_levels_are_checked() {
        for good in ["info", "debug,h2=trace", "keyturn::engine=debug", "WARN", "off"] {
            assert_eq!(parse(&["--log", good, "agent"]).unwrap().log, good);
        }
        for bad in ["warning", "info,keyturn=loud", "verbose"] {
            let error = parse(&["--log", bad, "agent"]).unwrap_err();
            assert!(error.to_string().contains("is not a level; expected one of error, warn"), "{error}");
        }
    }

    #[test]
    fn version_names_commit_and_kinds() {
        let version = long_version();
        assert!(version.starts_with(env!("CARGO_PKG_VERSION")) && version.contains("(commit "), "{version}");
        assert!(version.contains("stores: file, gcp") && version.contains("formats: raw, "), "{version}");
    }

    #[test]
    fn completions_and_man() {
        assert_eq!(
            parse(&["completions", "bash"]).unwrap().command,
            Command::Completions { shell: clap_complete::Shell::Bash }
        );
        assert!(parse(&["completions", "cmd"]).is_err());
        assert_eq!(parse(&["man"]).unwrap().command, Command::Man { command: None });
        assert_eq!(parse(&["man", "store"]).unwrap().command, Command::Man { command: Some("store".into()) });
    }

    #[test]
    fn sync_once() {
        assert_eq!(parse(&["sync", "--once"]).unwrap().command, Command::Sync { once: true, json: false });
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
            Command::Rotate { policy: "api-signing".into(), now: true, revoke: true, json: false }
        );
        assert!(parse(&["rotate", "api-signing", "--revoke"]).is_err(), "--revoke requires --now");
        assert!(parse(&["rotate", "api-signing"]).is_err(), "--now is required");
        assert!(parse(&["rotate"]).is_err());
    }

    #[test]
    fn store_put_and_get() {
        assert_eq!(
            parse(&["store", "put", "dev", "db"]).unwrap().command,
            Command::Store {
                command: StoreCommand::Put { store: "dev".into(), id: "db".into(), from_tty: false, json: false }
            }
        );
        assert_eq!(
            parse(&["store", "get", "dev", "db", "--version", "3"]).unwrap().command,
            Command::Store { command: StoreCommand::Get { store: "dev".into(), id: "db".into(), version: "3".into() } }
        );
        assert!(parse(&["store", "put", "dev"]).is_err());
    }

    #[test]
    fn validate_for_ci() {
        let Command::Validate { portable, policies, stores, json } =
            parse(&["validate", "--portable", "--policies", "p", "--store", "fleet=gcp", "--store", "dev", "--json"])
                .unwrap()
                .command
        else {
            panic!()
        };
        assert!(portable && json);
        assert_eq!((policies, stores), (Some(PathBuf::from("p")), vec!["fleet=gcp".to_string(), "dev".to_string()]));
        assert!(parse(&["validate", "--store", "fleet"]).is_err(), "--store goes with --policies");
    }

    #[test]
    fn cache_status_and_purge() {
        assert_eq!(
            parse(&["cache", "status", "--json"]).unwrap().command,
            Command::Cache { command: CacheCommand::Status { json: true } }
        );
        assert_eq!(
            parse(&["cache", "purge", "api"]).unwrap().command,
            Command::Cache { command: CacheCommand::Purge { policy: Some("api".into()) } }
        );
        assert_eq!(
            parse(&["cache", "purge"]).unwrap().command,
            Command::Cache { command: CacheCommand::Purge { policy: None } }
        );
        assert_eq!(
            parse(&["fleet", "status", "api", "--json"]).unwrap().command,
            Command::Fleet { command: FleetCommand::Status { policy: Some("api".into()), json: true } }
        );
        assert_eq!(
            parse(&["rollback", "api", "--to", "3"]).unwrap().command,
            Command::Rollback { policy: "api".into(), to: Some("3".into()), json: false }
        );
    }

    #[test]
    fn store_list_and_versions() {
        assert_eq!(
            parse(&["store", "versions", "dev", "db", "--json"]).unwrap().command,
            Command::Store { command: StoreCommand::Versions { store: "dev".into(), id: "db".into(), json: true } }
        );
        assert_eq!(
            parse(&["store", "list", "dev"]).unwrap().command,
            Command::Store { command: StoreCommand::List { store: "dev".into(), json: false } }
        );
    }

    #[test]
    fn definitions_are_consistent() {
        command().debug_assert();
    }
}
