//! Configuration: one agent file and a directory of policy files, in TOML.
//!
//! The path from text to typed values has three steps, each in its own file:
//!
//! - [`load`] reads the files (the only I/O here) into [`Sources`];
//! - [`raw`] holds the serde types, strict (`deny_unknown_fields`) and still stringly;
//! - [`validate`] turns sources into a typed [`Config`], purely: it reports **every** problem
//!   it finds, each with file, line, key and what would be accepted, and reads the environment
//!   and the user database only through the [`Environment`] and [`Accounts`] seams.
//!
//! Nothing after validation sees a raw string: durations are `Duration`s, paths are checked,
//! formats are enums, owners are numeric ids. The settings of a kind (a store backend, a
//! notifier, a format) are typed and validated in the kind's own file, through [`Section`];
//! this module holds the agent's own settings and the policy shape around them.

mod expand;
mod load;
mod raw;
pub mod units;
pub(crate) mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::deliver::Format;
use crate::generate::Generator;
use crate::notify::NotifierConfig;
use crate::rotation::schedule::Schedule;
use crate::secret::SecretId;
use crate::store::{Selector, StoreConfig};

pub use load::{SourceFile, Sources, load, load_agent_file, read_for_check, read_sources};
pub use raw::NameOrId;
pub use units::{parse_duration, parse_ratio};
pub use validate::{Account, Declared, Section, agent_file, check, validate};

/// Where the agent file is looked for when `--config` and `KEYTURN_CONFIG` are absent.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/keyturn/keyturn.toml";

/// A validated configuration: the agent's own settings, its stores and its policies.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub agent: Agent,
    pub cache: CacheSettings,
    pub admin: Admin,
    pub control: Control,
    pub report: Option<Report>,
    pub fleet: Option<Fleet>,
    pub stores: BTreeMap<String, StoreConfig>,
    /// Sorted by name, so that every node that reads the same files builds the same plan.
    pub policies: Vec<Policy>,
}

impl Config {
    pub fn policy(&self, name: &str) -> Option<&Policy> {
        // `policies` is sorted by name.
        let index = self.policies.binary_search_by(|p| p.name.as_str().cmp(name)).ok()?;
        Some(&self.policies[index])
    }

    /// The bundle directories, each with the policies that deliver into it and who may enter
    /// it: when every file in the bundle names the same group, the directories belong to that
    /// group with mode 0750, so other users cannot even list the names; otherwise 0755, and
    /// each file's own owner and mode guard its contents.
    pub fn bundles(&self) -> BTreeMap<&str, Bundle<'_>> {
        let mut bundles: BTreeMap<&str, Bundle<'_>> = BTreeMap::new();
        for policy in &self.policies {
            for delivery in &policy.deliver {
                let bundle = bundles
                    .entry(&delivery.bundle)
                    .or_insert_with(|| Bundle { members: Vec::new(), access: DirAccess::for_group(delivery.group) });
                if bundle.members.last().is_none_or(|p| p.name != policy.name) {
                    bundle.members.push(policy);
                }
                if bundle.access.group != delivery.group {
                    bundle.access = DirAccess::for_group(None);
                }
            }
        }
        bundles
    }
}

/// One bundle directory of a [`Config`].
#[derive(Debug, Clone, PartialEq)]
pub struct Bundle<'a> {
    /// The policies that deliver into it, in name order.
    pub members: Vec<&'a Policy>,
    pub access: DirAccess,
}

/// The agent file alone: what `keyturn status` and `keyturn store` need.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentFile {
    pub agent: Agent,
    pub cache: CacheSettings,
    pub admin: Admin,
    pub control: Control,
    pub report: Option<Report>,
    pub fleet: Option<Fleet>,
    pub stores: BTreeMap<String, StoreConfig>,
}

/// `[cache]`: the sealed last-known-good cache (see `crate::cache`). There is a cache when a
/// key is found: `key_file`, or else the systemd credential `keyturn-cache-key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSettings {
    /// The key, never beside the cache (validation refuses it under `state_dir`).
    pub key_file: Option<PathBuf>,
    /// How old a sealed entry may be and still be delivered; a policy may say otherwise. Zero:
    /// never.
    pub max_stale: Duration,
}

/// `[admin]`: the HTTP listener for `/metrics`, `/healthz` and `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    /// `None` when `listen = "off"`.
    pub listen: Option<std::net::SocketAddr>,
}

/// `[control]`: the Unix socket at `RUNTIME_DIR/.keyturn.sock` that `keyturn status`,
/// `rotate`, `reload` and `resync` talk to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Control {
    pub mode: u32,
    pub group: Option<u32>,
    /// Callers whose uid is here, or whose groups include one of `allow_groups`, are served.
    pub allow_users: Vec<u32>,
    pub allow_groups: Vec<u32>,
}

/// `[report]`: where events about deliveries, rotations and failures are sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub url: String,
    pub bearer_token_file: Option<PathBuf>,
    pub timeout: Duration,
    /// The spool keeps at most this many unsent events; the oldest are dropped first.
    pub spool_max_events: usize,
}

/// `[fleet]`: where the fleet's view is read, Prometheus' HTTP query API over the metrics
/// every agent exports (`keyturn fleet status`, and adoption-gated retirement).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fleet {
    /// The API's base: `/api/v1/query` is appended (a Prometheus server, or Google Cloud
    /// Managed Service for Prometheus' `https://monitoring.googleapis.com/v1/projects/P/location/global/prometheus`).
    pub prometheus: String,
    /// The label that names a node in the series: `node` (keyturn's own), or what the scrape
    /// configuration made of it (`exported_node`).
    pub node_label: String,
    /// A node not scraped for longer counts as gone: named, and no longer waited for.
    pub silent_after: Duration,
    /// How far back nodes are looked for.
    pub lookback: Duration,
    pub auth: FleetAuth,
    pub timeout: Duration,
}

/// How keyturn authenticates to the fleet's Prometheus API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FleetAuth {
    None,
    BearerTokenFile(PathBuf),
    /// A Google access token from the identity of this `gcp` store (Managed Service for
    /// Prometheus).
    Google {
        store: String,
    },
}

/// The name of the control socket inside the runtime directory: hidden, so no bundle (whose
/// names may not start with ".") can take it.
pub const CONTROL_SOCKET: &str = ".keyturn.sock";

/// Who may enter a bundle's directories.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirAccess {
    pub group: Option<u32>,
    pub mode: u32,
}

impl DirAccess {
    /// Closed to all but `group` (0750) when the bundle's files share one; open to list (0755)
    /// otherwise.
    pub fn for_group(group: Option<u32>) -> Self {
        match group {
            Some(group) => DirAccess { group: Some(group), mode: 0o750 },
            None => DirAccess { group: None, mode: 0o755 },
        }
    }
}

/// The `[agent]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct Agent {
    /// This node's name, as reported in status and (later) used for leases.
    pub node: String,
    /// Root of every delivered bundle; must be tmpfs or ramfs unless `allow_persistent`.
    pub runtime_dir: PathBuf,
    /// Persistent agent state: the status file, and later the event spool.
    pub state_dir: PathBuf,
    pub policies_dir: PathBuf,
    pub poll: Duration,
    /// Fraction of `poll` by which each wait is spread, so a fleet does not poll in lockstep.
    pub jitter: f64,
    pub allow_persistent: bool,
    /// Whether this node rotates secrets on schedule. A node whose credentials only read
    /// (`roles/secretmanager.secretAccessor`) sets it to false and only pulls.
    pub rotate: bool,
    /// How long a stop or a reload waits for notifications still to be sent (a change in its
    /// coalescing window, a notifier running) before it abandons them.
    pub shutdown_grace: Duration,
    /// How far this node's clock may be from a store's before the agent warns, once, with the
    /// fix; and beyond which a refused token request names the clock, not the credentials.
    pub max_clock_skew: Duration,
}

/// `[agent] max_clock_skew` by default: Google refuses a signed token request whose time is
/// more than a few minutes off its own, so the warning comes before that.
pub const DEFAULT_MAX_CLOCK_SKEW: Duration = Duration::from_secs(120);

/// One policy file: which secret to pull and where to deliver it.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// The file stem; used in logs, status and metric labels.
    pub name: String,
    pub store: String,
    pub secret: SecretId,
    /// Which version is delivered: the `current` alias (the default, and the only choice for
    /// a policy that rotates), `latest`, a pinned number, or another alias.
    pub version: Selector,
    /// Readiness waits for required policies only.
    pub required: bool,
    pub deliver: Vec<Delivery>,
    /// Absent: this policy only pulls.
    pub rotate: Option<Rotate>,
    /// Absent: applications are not told; they read the files when they like.
    pub notify: Option<Notify>,
    /// More secrets for templates (`[secrets.NAME]`), read and watched with the main one.
    pub extras: BTreeMap<String, ExtraSecret>,
    /// The policy's own `[cache] max_stale`, instead of the agent's.
    pub max_stale: Option<Duration>,
}

/// A `[secrets.NAME]`: another secret a template can use as `{{ secrets.NAME }}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraSecret {
    pub store: String,
    pub secret: SecretId,
}

/// A policy's `[notify]`: how applications learn that their files changed. Every notifier
/// runs, after the whole bundle is in place, once per change; changes closer together than
/// `coalesce` (default 0: none) make one notification.
#[derive(Debug, Clone, PartialEq)]
pub struct Notify {
    /// In the order they run (the order notifiers are registered in).
    pub notifiers: Vec<NotifierConfig>,
    pub coalesce: Duration,
    /// Attempts per notifier and change, with exponential backoff between them.
    pub attempts: u32,
}

/// A policy's `[rotate]`: how and when new versions are made.
#[derive(Debug, Clone, PartialEq)]
pub struct Rotate {
    pub schedule: Schedule,
    pub generator: Generator,
    pub owner: Owner,
    /// How long a replaced version stays enabled and in delivered verification sets.
    pub grace: Duration,
    /// How many versions stay enabled, the current one included (at least 2).
    pub keep: usize,
    /// How long a rotator holds the lease before another node may take it over.
    pub lease: Duration,
    /// The spread of rotation start times across the fleet.
    pub jitter: Duration,
    /// A command that gets a new value on standard input and must exit 0 before it is promoted.
    pub check: Option<Vec<String>>,
    pub check_timeout: Duration,
    /// When an old version is disabled, beyond its grace. `None`: after its adoption when the
    /// agent has a `[fleet]`, after its grace alone otherwise.
    pub retire: Option<Retire>,
}

/// When a rotator disables an old version whose grace is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retire {
    /// On the timer alone.
    AfterGrace,
    /// Once no live node holds it (asked of `[fleet]`), waiting at most `timeout` past the
    /// grace; then `on_timeout`.
    AfterAdoption { timeout: Duration, on_timeout: OnAdoptionTimeout },
}

/// What a retirement does when live nodes still hold the version after `adoption_timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnAdoptionTimeout {
    /// Keep waiting (and keep saying so, loudly): the nodes' applications keep working.
    Wait,
    /// Retire it anyway: those nodes' applications may fail to verify or connect.
    Retire,
}

/// The default adoption gate: wait up to 3 days past the grace, then keep waiting.
pub const DEFAULT_RETIRE: Retire =
    Retire::AfterAdoption { timeout: Duration::from_secs(3 * 86_400), on_timeout: OnAdoptionTimeout::Wait };

impl Rotate {
    /// When this policy's old versions are disabled, given whether the agent has a `[fleet]`.
    pub fn retire(&self, fleet: bool) -> Retire {
        match self.retire {
            Some(retire) => retire,
            None if fleet => DEFAULT_RETIRE,
            None => Retire::AfterGrace,
        }
    }
}

/// Who rotates a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// One secret shared by the fleet; one node at a time rotates it, under the lease.
    Fleet,
    /// A secret of this node alone (its id names the node); no lease.
    Node,
}

impl Policy {
    /// The bundles this policy writes into, without repeats, in order of first appearance.
    pub fn bundles(&self) -> impl Iterator<Item = &str> {
        let mut seen: Vec<&str> = Vec::new();
        self.deliver.iter().filter_map(move |d| {
            let bundle = d.bundle.as_str();
            (!seen.contains(&bundle)).then(|| {
                seen.push(bundle);
                bundle
            })
        })
    }
}

/// One `[[deliver]]` entry: a file inside a bundle.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// The bundle directory under `runtime_dir` (the first component of `path`).
    pub bundle: String,
    /// The path inside the bundle, relative and normalised.
    pub file: PathBuf,
    pub format: Format,
    pub mode: u32,
    pub owner: Option<u32>,
    pub group: Option<u32>,
}

impl Delivery {
    /// The path as written in the policy (`bundle/file`), for messages.
    pub fn display_path(&self) -> String {
        Path::new(&self.bundle).join(&self.file).display().to_string()
    }
}

/// One thing wrong with the configuration, located as precisely as the text allows.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    pub file: PathBuf,
    pub line: Option<usize>,
    /// The key path inside the file (`deliver[1].path`), or empty for the file as a whole.
    pub key: String,
    pub message: String,
    /// Not a mistake: a check that depends on the machine (a user, an environment variable, a
    /// file) and was left out in portable mode (`keyturn validate --portable`).
    #[serde(skip)]
    pub skipped: bool,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in one load, in file order. Never empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<Problem>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(f, "configuration has {n} problem{}:", if n == 1 { "" } else { "s" })?;
        for problem in &self.0 {
            write!(f, "\n  {problem}")?;
        }
        Ok(())
    }
}

/// What validation may assume about the machine it runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Machine {
    /// This machine is the node: users, groups, environment variables and files are checked.
    #[default]
    Node,
    /// Any machine, such as a CI runner: what depends on the node (a user, a group, an unset
    /// environment variable, a file the settings name) is listed as not checked, and a stand-in
    /// takes its place so that the rest is checked.
    Portable,
}

/// What a check found: the configuration when it is valid, every problem, and (in portable
/// mode) every check that was left to the node.
#[derive(Debug, Clone)]
pub struct Checked {
    pub config: Option<Config>,
    pub problems: Vec<Problem>,
    pub skipped: Vec<Problem>,
}

impl Checked {
    /// A problem only the node itself can settle (a file it reads, an account it uses): a
    /// problem on the node, left to the node (`skipped`) in a portable check.
    pub fn node_problem(&mut self, problem: Problem) {
        if problem.skipped { self.skipped.push(problem) } else { self.problems.push(problem) }
    }
}

/// Reads environment variables and the host name; the seam that lets tests expand `${...}`
/// without touching the process environment.
pub trait Environment {
    fn var(&self, name: &str) -> Option<String>;
    fn hostname(&self) -> Option<String>;
}

/// Resolves user and group names to ids; the seam over the system's user database.
pub trait Accounts {
    fn user_id(&self, name: &str) -> Option<u32>;
    fn group_id(&self, name: &str) -> Option<u32>;
}

/// The real environment and user database of this process.
#[derive(Debug, Default, Clone, Copy)]
pub struct System;

impl Environment for System {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }

    fn hostname(&self) -> Option<String> {
        let name = rustix::system::uname().nodename().to_string_lossy().into_owned();
        (!name.is_empty()).then_some(name)
    }
}

impl Accounts for System {
    fn user_id(&self, name: &str) -> Option<u32> {
        uzers::get_user_by_name(name).map(|u| u.uid())
    }

    fn group_id(&self, name: &str) -> Option<u32> {
        uzers::get_group_by_name(name).map(|g| g.gid())
    }
}
