//! Pure validation: configuration texts in, a typed [`Config`] or every problem out.
//!
//! No I/O happens here. The environment and the user database come in through the
//! [`Environment`] and [`Accounts`] seams, so the same texts and seams always give the same
//! answer, and tests need no files, variables or users.
//!
//! Each section is deserialized on its own and checking goes on after a bad one, so one run
//! reports every mistake it can see: a typo in `[secret]` does not hide a bad path in
//! `[[deliver]]`, and a bad policy file does not hide another.

use std::collections::BTreeMap;
use std::ops::{Bound, Range};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::expand::expand;
use super::load::SourceFile;
use super::raw;
use super::units::{parse_duration, parse_mode, parse_ratio};
use super::{
    Accounts, Admin, Agent, AgentFile, Config, ConfigErrors, Control, Delivery, Environment, ExecNotify, ExtraSecret,
    FileStoreConfig, Format, GcpStoreConfig, HttpNotify, Notify, Owner, Policy, Problem, Report, Rotate, SignalNotify,
    SignalTarget, Sources, StoreConfig, SystemdNotify,
};
use crate::generate::{Charset, Generator};
use crate::rotation::schedule::Schedule;
use crate::secret::SecretId;

const DEFAULT_RUNTIME_DIR: &str = "/run/keyturn";
const DEFAULT_STATE_DIR: &str = "/var/lib/keyturn";
const DEFAULT_POLICIES_DIR: &str = "/etc/keyturn/policies";
const DEFAULT_POLL: Duration = Duration::from_secs(60);
const DEFAULT_JITTER: f64 = 0.1;
const MAX_JITTER: f64 = 0.5;
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Owner-read only: the safe default for a secret file.
const DEFAULT_MODE: u32 = 0o400;
/// How long a replaced version stays enabled and in verification sets, by default.
const DEFAULT_GRACE: Duration = Duration::from_secs(24 * 3600);
const DEFAULT_LEASE: Duration = Duration::from_secs(600);
const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(30);
/// Shortest poll accepted. Faster polling buys nothing a notification would not, and costs
/// store quota across the whole fleet.
const MIN_POLL: Duration = Duration::from_secs(1);

/// Validates the agent file and every policy file together.
pub fn validate(sources: &Sources, env: &dyn Environment, accounts: &dyn Accounts) -> Result<Config, ConfigErrors> {
    let mut problems = Vec::new();
    let agent_file = File::new(&sources.agent);
    let parsed = agent_file.parse(&mut problems);
    let parts = match &parsed {
        Some(table) => agent_table(&agent_file, table, env, accounts, &mut problems),
        None => AgentParts::default(),
    };
    let (agent, stores) = (parts.agent.clone(), parts.stores.clone());

    let mut policies = Vec::new();
    let mut placed: Vec<Placed> = Vec::new();
    for source in &sources.policies {
        let file = File::new(source);
        let node = agent.as_ref().map(|a| a.node.as_str());
        if let Some(policy) = policy_file(&file, &stores, &agent_file, node, env, accounts, &mut placed, &mut problems)
        {
            policies.push(policy);
        }
    }
    check_paths(&placed, &mut problems);
    // Agent file first, then policy files in name order, each top to bottom.
    let order = |p: &Problem| {
        let index = std::iter::once(&sources.agent).chain(&sources.policies).position(|s| s.path == p.file);
        (index, p.line)
    };
    problems.sort_by_key(order);

    match parts.complete() {
        Some(file) if problems.is_empty() => {
            policies.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(Config {
                agent: file.agent,
                admin: file.admin,
                control: file.control,
                report: file.report,
                stores: file.stores,
                policies,
            })
        }
        _ => Err(ConfigErrors(problems)),
    }
}

/// Where the policy files are, read leniently from the agent file alone: a mistake elsewhere in
/// `[agent]` must not stop the policies from being checked in the same run. `None` when the
/// setting itself cannot be read.
pub fn policies_dir(agent: &SourceFile, env: &dyn Environment) -> Option<PathBuf> {
    let file = File::new(agent);
    let table = file.parse(&mut Vec::new())?;
    let setting = match table.get_ref().get("agent").map(|a| a.get_ref().get("policies")) {
        Some(Some(value)) => Some(Spanned::new(value.span(), value.get_ref().as_str()?.to_string())),
        _ => None,
    };
    file.path_setting(setting.as_ref(), DEFAULT_POLICIES_DIR, "agent.policies", env, &mut Vec::new())
}

/// The agent file alone: `[agent]` and `[stores]`. `keyturn status` and `keyturn store` need
/// no more, and must keep working while a policy file is broken.
pub fn agent_file(
    agent: &SourceFile,
    env: &dyn Environment,
    accounts: &dyn Accounts,
) -> Result<AgentFile, ConfigErrors> {
    let mut problems = Vec::new();
    let file = File::new(agent);
    let parsed = file.parse(&mut problems);
    let parts = match &parsed {
        Some(table) => agent_table(&file, table, env, accounts, &mut problems),
        None => AgentParts::default(),
    };
    match parts.complete() {
        Some(agent_file) if problems.is_empty() => Ok(agent_file),
        _ => Err(ConfigErrors(problems)),
    }
}

/// The sections of an agent file, each `None` if it was wrong (problems say why).
#[derive(Default)]
struct AgentParts {
    agent: Option<Agent>,
    admin: Option<Admin>,
    control: Option<Control>,
    report: Option<Option<Report>>,
    stores: BTreeMap<String, StoreConfig>,
}

impl AgentParts {
    fn complete(self) -> Option<AgentFile> {
        Some(AgentFile {
            agent: self.agent?,
            admin: self.admin?,
            control: self.control?,
            report: self.report?,
            stores: self.stores,
        })
    }
}

/// One configuration file being checked: its path, its text, and how to point into it.
struct File<'a> {
    path: &'a Path,
    text: &'a str,
}

impl<'a> File<'a> {
    fn new(source: &'a SourceFile) -> Self {
        Self { path: &source.path, text: &source.text }
    }

    fn line(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
    }

    fn problem(&self, span: Option<Range<usize>>, key: &str, message: impl Into<String>) -> Problem {
        Problem {
            file: self.path.to_path_buf(),
            line: span.map(|s| self.line(s.start)),
            key: key.to_string(),
            message: message.into(),
        }
    }

    /// The file's top-level table, or `None` after recording every syntax error in it.
    fn parse(&self, problems: &mut Vec<Problem>) -> Option<Spanned<DeTable<'a>>> {
        let (table, errors) = DeTable::parse_recoverable(self.text);
        if errors.is_empty() {
            return Some(table);
        }
        for error in errors {
            problems.push(self.problem(error.span(), "", format!("TOML syntax: {}", error.message())));
        }
        None
    }

    /// Deserializes one section, recording every field that does not fit under `key`.
    ///
    /// Serde stops at the first bad field, so each bad field is reported, taken out and the
    /// section tried again: an unknown key and a mistyped value in one section both show up.
    /// The section that remains is returned so its values are checked too; the recorded
    /// problems already make the whole load fail. A required field that had to be taken out
    /// leaves nothing to return, and its "missing field" echo is not reported.
    fn section<T: DeserializeOwned>(
        &self,
        value: &Spanned<DeValue<'a>>,
        key: &str,
        problems: &mut Vec<Problem>,
    ) -> Option<T> {
        let mut value = value.clone();
        let mut removed = false;
        loop {
            let error = match T::deserialize(ValueDeserializer::from(value.clone())) {
                Ok(section) => return Some(section),
                Err(error) => error,
            };
            if removed && error.message().starts_with("missing field") {
                return None;
            }
            problems.push(self.problem(error.span().or(Some(value.span())), key, error.message()));
            let (Some(span), DeValue::Table(table)) = (error.span(), value.get_mut()) else { return None };
            let mut kept = DeTable::new();
            for (k, v) in table.iter() {
                if !(k.span().contains(&span.start) || v.span().contains(&span.start)) {
                    kept.insert(k.clone(), v.clone());
                }
            }
            if kept.len() == table.len() {
                return None;
            }
            *table = kept;
            removed = true;
        }
    }

    /// Expands `${...}` in a setting, recording a problem if it cannot.
    fn expand(
        &self,
        value: &Spanned<String>,
        key: &str,
        env: &dyn Environment,
        problems: &mut Vec<Problem>,
    ) -> Option<String> {
        expand(value.get_ref(), env).map_err(|m| problems.push(self.problem(Some(value.span()), key, m))).ok()
    }

    /// A directory setting: expanded, and resolved against this file's directory when relative
    /// so that a configuration and its policies can travel together.
    fn path_setting(
        &self,
        value: Option<&Spanned<String>>,
        default: &str,
        key: &str,
        env: &dyn Environment,
        problems: &mut Vec<Problem>,
    ) -> Option<PathBuf> {
        let text = match value {
            Some(value) => self.expand(value, key, env, problems)?,
            None => default.to_string(),
        };
        if text.trim().is_empty() {
            problems.push(self.problem(value.map(Spanned::span), key, "must not be empty"));
            return None;
        }
        let path = PathBuf::from(text);
        if path.is_absolute() {
            return Some(path);
        }
        Some(self.path.parent().unwrap_or(Path::new(".")).join(path))
    }

    fn duration(
        &self,
        value: Option<&Spanned<String>>,
        default: Duration,
        key: &str,
        problems: &mut Vec<Problem>,
    ) -> Option<Duration> {
        match value {
            None => Some(default),
            Some(value) => parse_duration(value.get_ref())
                .map_err(|m| problems.push(self.problem(Some(value.span()), key, m)))
                .ok(),
        }
    }

    /// Complains about top-level keys other than `accepted`.
    fn known_sections(&self, table: &DeTable<'_>, accepted: &[&str], problems: &mut Vec<Problem>) {
        for key in table.keys() {
            if !accepted.contains(&key.get_ref().as_ref()) {
                let list = accepted.iter().map(|a| format!("[{a}]")).collect::<Vec<_>>().join(", ");
                problems.push(self.problem(
                    Some(key.span()),
                    key.get_ref(),
                    format!("unknown section; expected {list}"),
                ));
            }
        }
    }
}

fn agent_table(
    file: &File<'_>,
    table: &Spanned<DeTable<'_>>,
    env: &dyn Environment,
    accounts: &dyn Accounts,
    problems: &mut Vec<Problem>,
) -> AgentParts {
    let table = table.get_ref();
    file.known_sections(table, &["agent", "stores", "admin", "control", "report"], problems);
    let agent = match table.get("agent") {
        Some(value) => file.section(value, "agent", problems).and_then(|raw| agent_section(file, raw, env, problems)),
        None => agent_section(file, raw::Agent::default(), env, problems),
    };
    let stores = match table.get("stores") {
        Some(value) => stores_section(file, value, env, problems),
        None => BTreeMap::new(),
    };
    let admin = match table.get("admin") {
        Some(value) => file.section(value, "admin", problems).and_then(|raw| admin_section(file, raw, problems)),
        None => admin_section(file, raw::Admin::default(), problems),
    };
    let control = match table.get("control") {
        Some(value) => {
            file.section(value, "control", problems).and_then(|raw| control_section(file, raw, accounts, problems))
        }
        None => control_section(file, raw::Control::default(), accounts, problems),
    };
    let report = match table.get("report") {
        Some(value) => {
            file.section(value, "report", problems).and_then(|raw| report_section(file, raw, env, problems)).map(Some)
        }
        None => Some(None),
    };
    AgentParts { agent, admin, control, report, stores }
}

/// The admin listener serves metrics and health, never values; by default on loopback only.
const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9464";

fn admin_section(file: &File<'_>, raw: raw::Admin, problems: &mut Vec<Problem>) -> Option<Admin> {
    let Some(listen) = &raw.listen else {
        return Some(Admin { listen: Some(DEFAULT_ADMIN_LISTEN.parse().expect("a socket address")) });
    };
    if listen.get_ref() == "off" {
        return Some(Admin { listen: None });
    }
    match listen.get_ref().parse::<std::net::SocketAddr>() {
        Ok(address) => Some(Admin { listen: Some(address) }),
        Err(_) => {
            problems.push(file.problem(
                Some(listen.span()),
                "admin.listen",
                format!("\"{}\" is not an address and port such as \"127.0.0.1:9464\" (or \"off\")", listen.get_ref()),
            ));
            None
        }
    }
}

fn control_section(
    file: &File<'_>,
    raw: raw::Control,
    accounts: &dyn Accounts,
    problems: &mut Vec<Problem>,
) -> Option<Control> {
    let before = problems.len();
    let mode = match &raw.mode {
        None => 0o600,
        Some(mode) => {
            let parsed = match mode.get_ref() {
                raw::Mode::Text(text) => parse_mode(text).ok(),
                raw::Mode::Bits(bits) => u32::try_from(*bits).ok(),
            };
            match parsed {
                Some(m @ (0o600 | 0o660)) => m,
                _ => {
                    problems.push(file.problem(
                        Some(mode.span()),
                        "control.mode",
                        "expected \"0600\", or \"0660\" with a group",
                    ));
                    0o600
                }
            }
        }
    };
    let lookup_user = |n: &str| accounts.user_id(n);
    let lookup_group = |n: &str| accounts.group_id(n);
    let at =
        |span: Range<usize>, key: &str, message: String| file.problem(Some(span), &format!("control.{key}"), message);
    let group = account(&raw.group, "group", lookup_group, &at, problems).flatten();
    if mode == 0o660 && group.is_none() {
        problems.push(file.problem(
            None,
            "control.mode",
            "\"0660\" needs group = \"NAME\": the group that may use the socket",
        ));
    }
    let mut allow_users = Vec::new();
    for user in raw.allow_users.iter().flatten() {
        if let Some(Some(id)) = account(&Some(user.clone()), "user", lookup_user, &at, problems) {
            allow_users.push(id);
        }
    }
    if raw.allow_users.is_none() {
        // By default, the user the agent runs as (in practice root).
        allow_users.push(rustix::process::geteuid().as_raw());
    }
    let mut allow_groups = Vec::new();
    for group in raw.allow_groups.iter().flatten() {
        if let Some(Some(id)) = account(&Some(group.clone()), "group", lookup_group, &at, problems) {
            allow_groups.push(id);
        }
    }
    (problems.len() == before).then_some(Control { mode, group, allow_users, allow_groups })
}

fn report_section(
    file: &File<'_>,
    raw: raw::Report,
    env: &dyn Environment,
    problems: &mut Vec<Problem>,
) -> Option<Report> {
    let url = file.expand(&raw.url, "report.url", env, problems).and_then(|url| {
        check_notify_url(&url)
            .map(|()| url)
            .map_err(|m| problems.push(file.problem(Some(raw.url.span()), "report.url", m)))
            .ok()
    });
    let token = match &raw.bearer_token_file {
        Some(path) => file.path_setting(Some(path), "", "report.bearer_token_file", env, problems).map(Some),
        None => Some(None),
    };
    let timeout = file.duration(raw.timeout.as_ref(), Duration::from_secs(10), "report.timeout", problems);
    let spool_max_events = match &raw.spool_max_events {
        None => Some(10_000),
        Some(n) => match usize::try_from(*n.get_ref()) {
            Ok(n) if (10..=1_000_000).contains(&n) => Some(n),
            _ => {
                problems.push(file.problem(
                    Some(n.span()),
                    "report.spool_max_events",
                    format!("{} is out of range: 10 to 1000000", n.get_ref()),
                ));
                None
            }
        },
    };
    Some(Report { url: url?, bearer_token_file: token?, timeout: timeout?, spool_max_events: spool_max_events? })
}

fn agent_section(
    file: &File<'_>,
    raw: raw::Agent,
    env: &dyn Environment,
    problems: &mut Vec<Problem>,
) -> Option<Agent> {
    let node = match &raw.node {
        Some(node) => file.expand(node, "agent.node", env, problems),
        None => env.hostname().or_else(|| {
            problems.push(file.problem(None, "agent.node", "cannot read the host name; set node = \"NAME\""));
            None
        }),
    };
    let node = node.and_then(|node| {
        let ok = !node.is_empty()
            && node.len() <= 253
            && node.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
        ok.then_some(node.clone()).or_else(|| {
            let span = raw.node.as_ref().map(Spanned::span);
            problems.push(file.problem(
                span,
                "agent.node",
                format!("\"{node}\" is not a node name: 1 to 253 letters, digits, \".\", \"-\" or \"_\""),
            ));
            None
        })
    });
    let runtime_dir =
        file.path_setting(raw.runtime_dir.as_ref(), DEFAULT_RUNTIME_DIR, "agent.runtime_dir", env, problems);
    let state_dir = file.path_setting(raw.state_dir.as_ref(), DEFAULT_STATE_DIR, "agent.state_dir", env, problems);
    let policies_dir = file.path_setting(raw.policies.as_ref(), DEFAULT_POLICIES_DIR, "agent.policies", env, problems);
    let poll = file.duration(raw.poll.as_ref(), DEFAULT_POLL, "agent.poll", problems).and_then(|poll| {
        (poll >= MIN_POLL).then_some(poll).or_else(|| {
            let span = raw.poll.as_ref().map(Spanned::span);
            problems.push(file.problem(span, "agent.poll", "must be at least 1s"));
            None
        })
    });
    let jitter = match &raw.jitter {
        None => Some(DEFAULT_JITTER),
        Some(value) => parse_ratio(value.get_ref(), MAX_JITTER)
            .map_err(|m| problems.push(file.problem(Some(value.span()), "agent.jitter", m)))
            .ok(),
    };
    let shutdown_grace =
        file.duration(raw.shutdown_grace.as_ref(), DEFAULT_SHUTDOWN_GRACE, "agent.shutdown_grace", problems);
    Some(Agent {
        node: node?,
        runtime_dir: runtime_dir?,
        state_dir: state_dir?,
        policies_dir: policies_dir?,
        poll: poll?,
        jitter: jitter?,
        allow_persistent: raw.allow_persistent.unwrap_or(false),
        rotate: raw.rotate.unwrap_or(true),
        shutdown_grace: shutdown_grace?,
    })
}

const STORE_KINDS: &str = "\"file\" or \"gcp\"";

fn stores_section(
    file: &File<'_>,
    value: &Spanned<DeValue<'_>>,
    env: &dyn Environment,
    problems: &mut Vec<Problem>,
) -> BTreeMap<String, StoreConfig> {
    let mut stores = BTreeMap::new();
    let Some(table) = value.get_ref().as_table() else {
        problems.push(file.problem(Some(value.span()), "stores", "must be a table of [stores.NAME] sections"));
        return stores;
    };
    for (name, value) in table.iter() {
        let key = format!("stores.{}", name.get_ref());
        if !is_simple_name(name.get_ref()) {
            problems.push(file.problem(
                Some(name.span()),
                &key,
                "store names are lowercase letters, digits, \"-\" and \"_\", starting with a letter or digit",
            ));
        }
        let kind = value.get_ref().get("kind").and_then(|k| k.get_ref().as_str().map(|s| (s, k.span())));
        let store = match kind {
            Some(("file", _)) => file
                .section::<raw::FileStore>(value, &key, problems)
                .and_then(|raw| file_store(file, &key, raw, env, problems)),
            Some(("gcp", _)) => file
                .section::<raw::GcpStore>(value, &key, problems)
                .and_then(|raw| gcp_store(file, &key, raw, env, problems)),
            Some((other, span)) => {
                problems.push(file.problem(
                    Some(span),
                    &format!("{key}.kind"),
                    format!("unknown store kind \"{other}\"; expected {STORE_KINDS}"),
                ));
                None
            }
            None => {
                problems.push(file.problem(
                    Some(value.span()),
                    &format!("{key}.kind"),
                    format!("missing; expected kind = {STORE_KINDS}"),
                ));
                None
            }
        };
        if let Some(store) = store {
            stores.insert(name.get_ref().to_string(), store);
        }
    }
    stores
}

fn file_store(
    file: &File<'_>,
    key: &str,
    raw: raw::FileStore,
    env: &dyn Environment,
    problems: &mut Vec<Problem>,
) -> Option<StoreConfig> {
    let dir = file.path_setting(Some(&raw.dir), "", &format!("{key}.dir"), env, problems);
    let seed = match &raw.seed {
        Some(seed) => Some(file.path_setting(Some(seed), "", &format!("{key}.seed"), env, problems)?),
        None => None,
    };
    Some(StoreConfig::File(FileStoreConfig { dir: dir?, seed }))
}

fn gcp_store(
    file: &File<'_>,
    key: &str,
    raw: raw::GcpStore,
    env: &dyn Environment,
    problems: &mut Vec<Problem>,
) -> Option<StoreConfig> {
    let at = |field: &str| format!("{key}.{field}");
    let mut checked = |value: &Spanned<String>, field: &str, check: fn(&str) -> Result<(), String>| {
        let text = file.expand(value, &at(field), env, problems)?;
        check(&text).map_err(|m| problems.push(file.problem(Some(value.span()), &at(field), m))).ok()?;
        Some(text)
    };
    // Each optional setting is `Some(None)` when absent and `None` when invalid, so every one
    // is checked before any failure returns.
    let project = checked(&raw.project, "project", check_project);
    let location = raw.location.as_ref().map_or(Some(None), |v| checked(v, "location", check_location).map(Some));
    let endpoint = raw.endpoint.as_ref().map_or(Some(None), |v| checked(v, "endpoint", check_endpoint).map(Some));
    let credentials = raw
        .credentials
        .as_ref()
        .map_or(Some(None), |v| file.path_setting(Some(v), "", &at("credentials"), env, problems).map(Some));
    let request_timeout =
        file.duration(raw.request_timeout.as_ref(), Duration::from_secs(30), &at("request_timeout"), problems);
    let token_timeout =
        file.duration(raw.token_timeout.as_ref(), Duration::from_secs(10), &at("token_timeout"), problems);
    let retry_backoff =
        file.duration(raw.retry_backoff.as_ref(), Duration::from_secs(2), &at("retry_backoff"), problems);
    Some(StoreConfig::Gcp(GcpStoreConfig {
        project: project?,
        location: location?,
        endpoint: endpoint?,
        credentials: credentials?,
        request_timeout: request_timeout?,
        token_timeout: token_timeout?,
        retry_backoff: retry_backoff?,
    }))
}

/// A project id (6 to 30 of a-z, 0-9, "-", starting with a letter) or a project number.
fn check_project(project: &str) -> Result<(), String> {
    let number = !project.is_empty() && project.len() <= 20 && project.bytes().all(|b| b.is_ascii_digit());
    let id = (6..=30).contains(&project.len())
        && project.starts_with(|c: char| c.is_ascii_lowercase())
        && !project.ends_with('-')
        && project.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    (number || id).then_some(()).ok_or_else(|| {
        format!("\"{project}\" is not a Google Cloud project id (6 to 30 of a-z, 0-9 and \"-\", starting with a letter) or number")
    })
}

fn check_location(location: &str) -> Result<(), String> {
    let ok = !location.is_empty()
        && location.len() <= 63
        && location.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    ok.then_some(()).ok_or_else(|| format!("\"{location}\" is not a location such as \"europe-west3\" or \"us\""))
}

/// `https://HOST[:PORT]`, or `http://` to a loopback address: secrets never cross a network
/// unencrypted.
fn check_endpoint(endpoint: &str) -> Result<(), String> {
    let url = reqwest::Url::parse(endpoint).map_err(|e| format!("\"{endpoint}\" is not a URL: {e}"))?;
    if url.path() != "/" || url.query().is_some() || !url.username().is_empty() {
        return Err(format!(
            "\"{endpoint}\": give only scheme, host and port, such as \"https://secretmanager.example.internal\""
        ));
    }
    match url.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(&url) => Ok(()),
        "http" => Err(format!("\"{endpoint}\": plain http is allowed only to a loopback address; use https")),
        other => Err(format!("\"{endpoint}\": unsupported scheme \"{other}\"; use https")),
    }
}

/// A delivered path, remembered for the checks that span policies.
struct Placed {
    file: PathBuf,
    line: usize,
    policy: String,
    path: PathBuf,
}

#[allow(clippy::too_many_arguments, reason = "the context of one file's validation; a struct would only rename it")]
fn policy_file(
    file: &File<'_>,
    stores: &BTreeMap<String, StoreConfig>,
    agent_file: &File<'_>,
    node: Option<&str>,
    env: &dyn Environment,
    accounts: &dyn Accounts,
    placed: &mut Vec<Placed>,
    problems: &mut Vec<Problem>,
) -> Option<Policy> {
    let name = file.path.file_stem().and_then(|s| s.to_str()).unwrap_or("").to_string();
    let before = problems.len();
    if !is_simple_name(&name) || name.len() > 63 {
        problems.push(file.problem(
            None,
            "",
            "a policy is named by its file stem, which must be 1 to 63 lowercase letters, digits, \
             \"-\" and \"_\", starting with a letter or digit",
        ));
    }
    let table = file.parse(problems)?;
    let table = table.get_ref();
    file.known_sections(table, &["secret", "secrets", "rotate", "deliver", "notify"], problems);

    // The generator is kept apart from the rest of [rotate]: when it is valid, the formats are
    // checked against it even if another rotate setting is wrong.
    let (rotate, generator) = match table.get("rotate") {
        Some(value) => match file.section::<raw::Rotate>(value, "rotate", problems) {
            Some(raw) => {
                let (rotate, generator) = rotate_section(file, raw, problems);
                (Some(rotate), generator)
            }
            None => (Some(None), None),
        },
        None => (None, None),
    };
    let per_node = matches!(&rotate, Some(Some(r)) if r.owner == Owner::Node);
    let env = NodeEnvironment { env, node };
    let secret = match table.get("secret") {
        Some(value) => file
            .section::<raw::Secret>(value, "secret", problems)
            .and_then(|raw| secret_section(file, raw, stores, agent_file, per_node, &env, problems)),
        None => {
            problems.push(file.problem(None, "secret", "missing; every policy needs [secret] with store and id"));
            None
        }
    };

    let extras = match table.get("secrets") {
        Some(value) => extra_secrets(file, value, stores, agent_file, &env, problems),
        None => BTreeMap::new(),
    };
    let extra_names: Vec<&str> = extras.keys().map(String::as_str).collect();

    let mut deliver = Vec::new();
    match table.get("deliver") {
        Some(value) => match value.get_ref().as_array() {
            Some(items) if !items.is_empty() => {
                for (i, item) in items.iter().enumerate() {
                    let key = format!("deliver[{i}]");
                    let Some(raw) = file.section::<raw::Deliver>(item, &key, problems) else { continue };
                    let line = file.line(raw.path.span().start);
                    let format_span = raw.format.as_ref().map(Spanned::span);
                    if let Some(delivery) = delivery(file, &key, raw, accounts, &extra_names, problems) {
                        if let (true, Some(generator)) = (delivery.format.needs_key(), &generator)
                            && !generator.is_asymmetric()
                        {
                            problems.push(file.problem(
                                format_span,
                                &format!("{key}.format"),
                                format!(
                                    "{:?} needs a private key, but generate = \"{}\"; use ed25519, ecdsa-p256, ecdsa-p384 or rsa-*",
                                    format_name(&delivery.format),
                                    generator.name()
                                ),
                            ));
                        }
                        placed.push(Placed {
                            file: file.path.to_path_buf(),
                            line,
                            policy: name.clone(),
                            path: Path::new(&delivery.bundle).join(&delivery.file),
                        });
                        deliver.push(delivery);
                    }
                }
            }
            _ => problems.push(file.problem(Some(value.span()), "deliver", "must be one or more [[deliver]] tables")),
        },
        None => problems.push(file.problem(
            None,
            "deliver",
            "missing; add at least one [[deliver]] with a path such as \"app/secret\"",
        )),
    }

    let notify = match table.get("notify") {
        Some(value) => match file.section::<raw::Notify>(value, "notify", problems) {
            Some(raw) => Some(notify_section(file, raw, problems)),
            None => Some(None),
        },
        None => None,
    };

    let (store, secret, required) = secret?;
    let rotate = match rotate {
        Some(rotate) => Some(rotate?),
        None => None,
    };
    let notify = match notify {
        Some(notify) => Some(notify?),
        None => None,
    };
    (problems.len() == before).then_some(Policy { name, store, secret, required, deliver, rotate, notify, extras })
}

/// Signals a notifier may send: the ones applications use to reload or reopen, never KILL.
const SIGNALS: &[&str] = &["HUP", "USR1", "USR2", "INT", "TERM", "QUIT", "WINCH", "CONT", "ALRM"];
const SYSTEMD_ACTIONS: &[&str] = &["reload", "restart", "try-restart", "reload-or-restart"];

fn notify_section(file: &File<'_>, raw: raw::Notify, problems: &mut Vec<Problem>) -> Option<Notify> {
    let at =
        |span: Range<usize>, key: &str, message: String| file.problem(Some(span), &format!("notify.{key}"), message);
    let before = problems.len();
    if raw.signal.is_none() && raw.systemd.is_none() && raw.exec.is_none() && raw.http.is_none() {
        problems.push(file.problem(None, "notify", "names no notifier; set signal, systemd, exec or http"));
    }
    let absolute = |value: &Spanned<String>, key: &str, problems: &mut Vec<Problem>| {
        let path = PathBuf::from(value.get_ref());
        if path.is_absolute() {
            Some(path)
        } else {
            problems.push(at(value.span(), key, format!("\"{}\" must be an absolute path", value.get_ref())));
            None
        }
    };
    let timeout = |value: &Option<Spanned<String>>, default: Duration, key: &str, problems: &mut Vec<Problem>| {
        file.duration(value.as_ref(), default, &format!("notify.{key}"), problems)
    };

    let signal = raw.signal.as_ref().map(|spanned| {
        let raw = spanned.get_ref();
        let target = match (&raw.pidfile, &raw.unit) {
            (Some(pidfile), None) => absolute(pidfile, "signal.pidfile", problems).map(SignalTarget::Pidfile),
            (None, Some(unit)) => check_unit(unit.get_ref())
                .map(|()| SignalTarget::Unit(unit.get_ref().clone()))
                .map_err(|m| problems.push(at(unit.span(), "signal.unit", m)))
                .ok(),
            _ => {
                problems.push(at(spanned.span(), "signal", "set exactly one of pidfile or unit".into()));
                None
            }
        };
        let name = raw.signal.as_ref().map_or("HUP".to_string(), |s| s.get_ref().trim().to_ascii_uppercase());
        let name = name.strip_prefix("SIG").unwrap_or(&name).to_string();
        let name = if SIGNALS.contains(&name.as_str()) {
            Some(name)
        } else {
            let span = raw.signal.as_ref().map_or(spanned.span(), Spanned::span);
            problems.push(at(
                span,
                "signal.signal",
                format!("\"{name}\" is not a signal keyturn sends; expected one of {}", SIGNALS.join(", ")),
            ));
            None
        };
        Some(SignalNotify { target: target?, signal: name? })
    });
    let systemd = raw.systemd.as_ref().map(|spanned| {
        let raw = spanned.get_ref();
        let unit =
            check_unit(raw.unit.get_ref()).map_err(|m| problems.push(at(raw.unit.span(), "systemd.unit", m))).ok();
        let action = raw.action.as_ref().map_or("reload".to_string(), |a| a.get_ref().clone());
        let action = if SYSTEMD_ACTIONS.contains(&action.as_str()) {
            Some(action)
        } else {
            let span = raw.action.as_ref().map_or(spanned.span(), Spanned::span);
            problems.push(at(
                span,
                "systemd.action",
                format!("\"{action}\" is not an action; expected one of {}", SYSTEMD_ACTIONS.join(", ")),
            ));
            None
        };
        let timeout = timeout(&raw.timeout, Duration::from_secs(30), "systemd.timeout", problems);
        Some(SystemdNotify { unit: unit.map(|()| raw.unit.get_ref().clone())?, action: action?, timeout: timeout? })
    });
    let exec = raw.exec.as_ref().map(|spanned| {
        let raw = spanned.get_ref();
        let command = raw.command.get_ref();
        let command = if command.first().is_some_and(|c| !c.is_empty()) {
            Some(command.clone())
        } else {
            problems.push(at(
                raw.command.span(),
                "exec.command",
                "must name a program: [\"/usr/local/bin/reload-app\", \"--fast\"]".into(),
            ));
            None
        };
        let timeout = timeout(&raw.timeout, Duration::from_secs(30), "exec.timeout", problems);
        Some(ExecNotify { command: command?, timeout: timeout? })
    });
    let http = raw.http.as_ref().map(|spanned| {
        let raw = spanned.get_ref();
        let url =
            check_notify_url(raw.url.get_ref()).map_err(|m| problems.push(at(raw.url.span(), "http.url", m))).ok();
        let token = match &raw.bearer_token_file {
            Some(path) => absolute(path, "http.bearer_token_file", problems).map(Some),
            None => Some(None),
        };
        let timeout = timeout(&raw.timeout, Duration::from_secs(5), "http.timeout", problems);
        Some(HttpNotify { url: url.map(|()| raw.url.get_ref().clone())?, timeout: timeout?, bearer_token_file: token? })
    });
    // By default a change is told at once: the budget from change seen to application told is
    // a millisecond. A window is for stores that change a secret several times in a burst.
    let coalesce = match &raw.coalesce {
        Some(value) => {
            optional_duration(value.get_ref()).map_err(|m| problems.push(at(value.span(), "coalesce", m))).ok()
        }
        None => Some(Duration::ZERO),
    };
    let attempts = match &raw.attempts {
        None => Some(3),
        Some(value) => match u32::try_from(*value.get_ref()) {
            Ok(n) if (1..=10).contains(&n) => Some(n),
            _ => {
                problems.push(at(
                    value.span(),
                    "attempts",
                    format!("{} is out of range: 1 to 10 attempts", value.get_ref()),
                ));
                None
            }
        },
    };
    if problems.len() > before {
        return None;
    }
    Some(Notify {
        signal: signal.flatten(),
        systemd: systemd.flatten(),
        exec: exec.flatten(),
        http: http.flatten(),
        coalesce: coalesce?,
        attempts: attempts?,
    })
}

/// A systemd unit name: `api.service`, `api@1.service`, `api` (systemctl adds `.service`).
fn check_unit(unit: &str) -> Result<(), String> {
    let ok = !unit.is_empty()
        && unit.len() <= 256
        && !unit.starts_with('-')
        && unit.chars().all(|c| c.is_ascii_alphanumeric() || "@._:-\\".contains(c));
    ok.then_some(()).ok_or_else(|| format!("\"{unit}\" is not a systemd unit name such as \"api.service\""))
}

/// A reload URL: https anywhere, plain http only to a loopback address (the request may carry
/// a bearer token).
fn check_notify_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("\"{url}\" is not a URL: {e}"))?;
    match (parsed.scheme(), is_loopback(&parsed)) {
        ("https", _) | ("http", true) => Ok(()),
        ("http", false) => Err(format!("\"{url}\": plain http is allowed only to a loopback address; use https")),
        (other, _) => Err(format!("\"{url}\": unsupported scheme \"{other}\"; use http (loopback) or https")),
    }
}

fn is_loopback(url: &reqwest::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(name)) => name == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// A template delivery: checked now (syntax, undefined names), each problem placed on the
/// policy file's line.
fn template_format(
    file: &File<'_>,
    key: &str,
    template: &Spanned<String>,
    extras: &[&str],
    problems: &mut Vec<Problem>,
) -> Option<Format> {
    let found = crate::deliver::template::check(template.get_ref(), extras);
    // A multi-line string's text starts on the line after its opening quotes.
    let quoted = &file.text[template.span()];
    let opening_newline = quoted.starts_with("\"\"\"\n") || quoted.starts_with("'''\n");
    let first = file.line(template.span().start) + usize::from(opening_newline);
    for problem in &found {
        problems.push(Problem {
            file: file.path.to_path_buf(),
            line: Some(problem.line.map_or(first, |l| first + l - 1)),
            key: format!("{key}.template"),
            message: problem.message.clone(),
        });
    }
    found.is_empty().then(|| Format::Template { source: template.get_ref().clone() })
}

/// A policy's `[secrets.NAME]` sections: more secrets its templates use.
fn extra_secrets(
    file: &File<'_>,
    value: &Spanned<DeValue<'_>>,
    stores: &BTreeMap<String, StoreConfig>,
    agent_file: &File<'_>,
    env: &dyn Environment,
    problems: &mut Vec<Problem>,
) -> BTreeMap<String, ExtraSecret> {
    let mut extras = BTreeMap::new();
    let Some(table) = value.get_ref().as_table() else {
        problems.push(file.problem(Some(value.span()), "secrets", "must be [secrets.NAME] sections with store and id"));
        return extras;
    };
    for (name, value) in table.iter() {
        let key = format!("secrets.{}", name.get_ref());
        let identifier = name.get_ref().starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && name.get_ref().chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !identifier {
            problems.push(file.problem(
                Some(name.span()),
                &key,
                "a template secret is used as {{ secrets.NAME }}: its name is lowercase letters, digits and \"_\"",
            ));
            continue;
        }
        let Some(raw) = file.section::<raw::ExtraSecret>(value, &key, problems) else { continue };
        if !stores.contains_key(raw.store.get_ref()) {
            let names = stores.keys().map(|n| format!("\"{n}\"")).collect::<Vec<_>>().join(", ");
            problems.push(file.problem(
                Some(raw.store.span()),
                &format!("{key}.store"),
                format!(
                    "store \"{}\" is not defined in {}; defined stores: {names}",
                    raw.store.get_ref(),
                    agent_file.path.display()
                ),
            ));
            continue;
        }
        let Some(id) = file.expand(&raw.id, &format!("{key}.id"), env, problems) else { continue };
        match SecretId::parse(&id) {
            Ok(secret) => {
                extras.insert(name.get_ref().to_string(), ExtraSecret { store: raw.store.get_ref().clone(), secret });
            }
            Err(m) => problems.push(file.problem(Some(raw.id.span()), &format!("{key}.id"), m)),
        }
    }
    extras
}

/// The environment with `${NODE}` bound to the agent's node name, for per-node secret ids.
struct NodeEnvironment<'a> {
    env: &'a dyn Environment,
    node: Option<&'a str>,
}

impl Environment for NodeEnvironment<'_> {
    fn var(&self, name: &str) -> Option<String> {
        match name {
            "NODE" => self.node.map(String::from).or_else(|| self.env.hostname()),
            _ => self.env.var(name),
        }
    }

    fn hostname(&self) -> Option<String> {
        self.env.hostname()
    }
}

fn format_name(format: &Format) -> &'static str {
    match format {
        Format::Raw => "raw",
        Format::Base64 => "base64",
        Format::Env { .. } => "env",
        Format::Json { .. } => "json",
        Format::Pem => "pem",
        Format::PublicPem => "public-pem",
        Format::Jwk => "jwk",
        Format::Jwks => "jwks",
        Format::Template { .. } => "template",
    }
}

/// Durations that may be zero (`jitter = "0s"`): everything else is a period or a timeout.
fn optional_duration(text: &str) -> Result<Duration, String> {
    if matches!(text.trim(), "0" | "0s") { Ok(Duration::ZERO) } else { parse_duration(text) }
}

/// The `[rotate]` settings, and the generator alone when it is valid (see `policy_file`).
fn rotate_section(
    file: &File<'_>,
    raw: raw::Rotate,
    problems: &mut Vec<Problem>,
) -> (Option<Rotate>, Option<Generator>) {
    let at =
        |span: Range<usize>, key: &str, message: String| file.problem(Some(span), &format!("rotate.{key}"), message);
    let schedule = match (&raw.every, &raw.cron) {
        (Some(every), None) => {
            file.duration(Some(every), Duration::ZERO, "rotate.every", problems).map(Schedule::Every)
        }
        (None, Some(cron)) => {
            Schedule::cron(cron.get_ref()).map_err(|m| problems.push(at(cron.span(), "cron", m))).ok()
        }
        (Some(_), Some(cron)) => {
            problems.push(at(cron.span(), "cron", "set either every or cron, not both".into()));
            None
        }
        (None, None) => {
            problems.push(file.problem(
                None,
                "rotate",
                "missing a schedule: set every = \"30d\" or cron = \"0 3 * * SUN\"",
            ));
            None
        }
    };
    let parsed = Generator::parse(raw.generate.get_ref())
        .map_err(|m| problems.push(at(raw.generate.span(), "generate", m)))
        .ok();
    let generator = parsed.clone().and_then(|generator| match &raw.charset {
        None => Some(generator),
        Some(charset) => Charset::parse(charset.get_ref())
            .and_then(|c| generator.with_charset(c))
            .map_err(|m| problems.push(at(charset.span(), "charset", m)))
            .ok(),
    });
    let owner = match raw.owner.as_ref().map(|o| (o.get_ref().as_str(), o.span())) {
        None | Some(("fleet", _)) => Some(Owner::Fleet),
        Some(("node", _)) => Some(Owner::Node),
        Some((other, span)) => {
            problems.push(at(span, "owner", format!("\"{other}\" is not an owner; expected \"fleet\" (one node rotates, under a lease) or \"node\" (a per-node secret)")));
            None
        }
    };
    // A JWK set lists the current and the previous key, so a key replaced twice within its grace
    // would leave verification sets early: the grace must end before the next rotation. By
    // default it is a day, or half the period if that is shorter.
    let default_grace = match &schedule {
        Some(Schedule::Every(period)) => DEFAULT_GRACE.min(*period / 2),
        _ => DEFAULT_GRACE,
    };
    let grace = file.duration(raw.grace.as_ref(), default_grace, "rotate.grace", problems);
    if let (Some(Schedule::Every(period)), Some(grace), Some(value)) = (&schedule, grace, &raw.grace)
        && grace >= *period
    {
        problems.push(at(
            value.span(),
            "grace",
            format!(
                "\"{}\" is not shorter than the rotation period ({}): a replaced key must leave verification sets before the next one is replaced",
                value.get_ref(),
                humantime::format_duration(*period)
            ),
        ));
    }
    let keep = match &raw.keep {
        None => Some(2),
        Some(keep) => {
            match usize::try_from(*keep.get_ref()) {
                Ok(n) if (2..=100).contains(&n) => Some(n),
                _ => {
                    problems.push(at(keep.span(), "keep", format!("{} is out of range: keep 2 to 100 versions enabled (the current and the previous at least)", keep.get_ref())));
                    None
                }
            }
        }
    };
    let lease = file.duration(raw.lease.as_ref(), DEFAULT_LEASE, "rotate.lease", problems);
    let jitter = match (&raw.jitter, &schedule) {
        (Some(value), _) => {
            optional_duration(value.get_ref()).map_err(|m| problems.push(at(value.span(), "jitter", m))).ok()
        }
        (None, Some(schedule)) => Some(schedule.default_jitter()),
        (None, None) => None,
    };
    let check = match &raw.check {
        Some(command) if command.get_ref().is_empty() || command.get_ref()[0].is_empty() => {
            problems.push(at(
                command.span(),
                "check",
                "must name a program: [\"/usr/local/bin/check-key\", \"--strict\"]".into(),
            ));
            None
        }
        Some(command) => Some(Some(command.get_ref().clone())),
        None => Some(None),
    };
    let check_timeout =
        file.duration(raw.check_timeout.as_ref(), DEFAULT_CHECK_TIMEOUT, "rotate.check_timeout", problems);
    // A rotator still running its check when its lease ends could be overtaken by another node.
    // (A per-node secret is rotated without a lease.)
    if let (Some(lease), Some(timeout), Some(_), Some(Owner::Fleet)) = (lease, check_timeout, &raw.check, owner)
        && timeout >= lease
    {
        let message = format!(
            "the lease ({}) must outlast the check command's timeout ({}): a rotator still checking when its lease ends could be overtaken by another node",
            humantime::format_duration(lease),
            humantime::format_duration(timeout)
        );
        match (&raw.check_timeout, &raw.lease) {
            (Some(value), _) => problems.push(at(value.span(), "check_timeout", message)),
            (None, Some(value)) => problems.push(at(value.span(), "lease", message)),
            (None, None) => {}
        }
    }
    let rotate = (|| {
        Some(Rotate {
            schedule: schedule?,
            generator: generator?,
            owner: owner?,
            grace: grace?,
            keep: keep?,
            lease: lease?,
            jitter: jitter?,
            check: check?,
            check_timeout: check_timeout?,
        })
    })();
    (rotate, parsed)
}

fn secret_section(
    file: &File<'_>,
    raw: raw::Secret,
    stores: &BTreeMap<String, StoreConfig>,
    agent_file: &File<'_>,
    per_node: bool,
    env: &dyn Environment,
    problems: &mut Vec<Problem>,
) -> Option<(String, SecretId, bool)> {
    if per_node && !raw.id.get_ref().contains("${NODE}") {
        problems.push(file.problem(
            Some(raw.id.span()),
            "secret.id",
            "a per-node secret (owner = \"node\") needs ${NODE} in its id, such as \"api-${NODE}\", so that nodes do not share it",
        ));
    }
    let store_name = raw.store.get_ref();
    let store = stores.get(store_name);
    if store.is_none() {
        let defined = if stores.is_empty() {
            format!("no stores are defined in {}", agent_file.path.display())
        } else {
            let names = stores.keys().map(|n| format!("\"{n}\"")).collect::<Vec<_>>().join(", ");
            format!("defined stores: {names}")
        };
        problems.push(file.problem(
            Some(raw.store.span()),
            "secret.store",
            format!("store \"{store_name}\" is not defined; {defined}"),
        ));
    }
    let id = file.expand(&raw.id, "secret.id", env, problems)?;
    let id = SecretId::parse(&id).map_err(|m| problems.push(file.problem(Some(raw.id.span()), "secret.id", m))).ok()?;
    store?;
    Some((store_name.clone(), id, raw.required.unwrap_or(true)))
}

fn delivery(
    file: &File<'_>,
    key: &str,
    raw: raw::Deliver,
    accounts: &dyn Accounts,
    extras: &[&str],
    problems: &mut Vec<Problem>,
) -> Option<Delivery> {
    let at =
        |span: Range<usize>, field: &str, message: String| file.problem(Some(span), &format!("{key}.{field}"), message);

    let path = check_delivery_path(raw.path.get_ref()).map_err(|m| problems.push(at(raw.path.span(), "path", m))).ok();

    let key_name = raw.key.as_ref().map(|k| (k.get_ref().clone(), k.span()));
    let format = match raw.format.as_ref().map(|f| (f.get_ref().as_str(), f.span())) {
        None | Some(("raw", _)) => Some(Format::Raw),
        Some(("base64", _)) => Some(Format::Base64),
        Some(("env", _)) => Some(Format::Env { key: key_name.as_ref().map(|(k, _)| k.clone()) }),
        Some(("json", _)) => Some(Format::Json { key: key_name.as_ref().map(|(k, _)| k.clone()) }),
        Some(("pem", _)) => Some(Format::Pem),
        Some(("public-pem", _)) => Some(Format::PublicPem),
        Some(("jwk", _)) => Some(Format::Jwk),
        Some(("jwks", _)) => Some(Format::Jwks),
        Some(("template", span)) => match &raw.template {
            Some(template) => template_format(file, key, template, extras, problems),
            None => {
                problems.push(at(
                    span,
                    "format",
                    "\"template\" needs template = \"\"\"...\"\"\" with the text to render".into(),
                ));
                None
            }
        },
        Some((other, span)) => {
            problems.push(at(span, "format", format!("unknown format \"{other}\"; expected {}", Format::ACCEPTED)));
            None
        }
    };
    if let (Some(template), Some(format)) = (&raw.template, &format)
        && !matches!(format, Format::Template { .. })
    {
        problems.push(at(template.span(), "template", "applies only to format = \"template\"".into()));
    }
    match (&format, &key_name) {
        (
            Some(Format::Raw | Format::Base64 | Format::Pem | Format::PublicPem | Format::Jwk | Format::Jwks),
            Some((_, span)),
        ) => {
            problems.push(at(span.clone(), "key", "applies only to the \"env\" and \"json\" formats".into()));
        }
        (Some(Format::Env { .. }), Some((name, span))) if !is_env_name(name) => {
            problems.push(at(
                span.clone(),
                "key",
                format!("\"{name}\" is not a variable name: letters, digits and \"_\", not starting with a digit"),
            ));
        }
        (Some(Format::Json { .. }), Some((name, span))) if name.is_empty() => {
            problems.push(at(span.clone(), "key", "must not be empty".into()));
        }
        _ => {}
    }

    let mode = match &raw.mode {
        None => Some(DEFAULT_MODE),
        Some(mode) => {
            let parsed = match mode.get_ref() {
                raw::Mode::Text(text) => parse_mode(text),
                raw::Mode::Bits(bits) => u32::try_from(*bits)
                    .ok()
                    .filter(|b| *b <= 0o777)
                    .ok_or_else(|| format!("expected a mode from 0o000 to 0o777, got {bits}")),
            };
            let checked = parsed.and_then(|m| {
                (m & 0o022 == 0).then_some(m).ok_or_else(|| {
                    format!(
                        "{m:04o} lets other users write a secret; use a read-only mode such as \"0400\" or \"0440\""
                    )
                })
            });
            checked.map_err(|m| problems.push(at(mode.span(), "mode", m))).ok()
        }
    };

    let owner = account(&raw.user, "user", |n| accounts.user_id(n), &at, problems);
    let group = account(&raw.group, "group", |n| accounts.group_id(n), &at, problems);

    let (bundle, file_path) = path?;
    Some(Delivery { bundle, file: file_path, format: format?, mode: mode?, owner: owner?, group: group? })
}

/// A user or group setting as a numeric id: `Some(None)` when absent, `None` when invalid.
fn account(
    value: &Option<Spanned<raw::NameOrId>>,
    what: &str,
    lookup: impl Fn(&str) -> Option<u32>,
    at: &impl Fn(Range<usize>, &str, String) -> Problem,
    problems: &mut Vec<Problem>,
) -> Option<Option<u32>> {
    let Some(value) = value else { return Some(None) };
    let id = match value.get_ref() {
        raw::NameOrId::Name(name) => {
            lookup(name).ok_or_else(|| format!("{what} \"{name}\" does not exist on this machine"))
        }
        raw::NameOrId::Id(id) => {
            u32::try_from(*id).ok().filter(|id| *id != u32::MAX).ok_or_else(|| format!("{id} is not a valid {what} id"))
        }
    };
    id.map(Some).map_err(|m| problems.push(at(value.span(), what, m))).ok()
}

/// Splits `bundle/inside/the/bundle` after checking that it stays inside the runtime directory
/// and clear of the hidden names keyturn keeps for itself (`..data` and version directories).
fn check_delivery_path(path: &str) -> Result<(String, PathBuf), String> {
    let accepted = "a relative path \"BUNDLE/FILE\" inside the runtime directory, such as \"api/signing.pem\"";
    if path.starts_with('/') {
        return Err(format!("\"{path}\" is absolute; expected {accepted}"));
    }
    let mut parts = Vec::new();
    for component in Path::new(path).components() {
        match component {
            Component::Normal(part) => {
                let part = part.to_str().unwrap_or("");
                if part.starts_with('.') {
                    return Err(format!(
                        "\"{path}\": names starting with \".\" are reserved for keyturn's own files; expected {accepted}"
                    ));
                }
                if part.len() > 255 || part.contains('\0') {
                    return Err(format!("\"{path}\": \"{part}\" is not a file name"));
                }
                parts.push(part);
            }
            Component::ParentDir => {
                return Err(format!("\"{path}\" escapes the runtime directory; expected {accepted}"));
            }
            Component::CurDir => return Err(format!("\"{path}\": \".\" is not allowed; expected {accepted}")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!("\"{path}\" is absolute; expected {accepted}"));
            }
        }
    }
    if path.contains("//") || path.ends_with('/') {
        return Err(format!("\"{path}\" has an empty component; expected {accepted}"));
    }
    match parts.as_slice() {
        [bundle, rest @ ..] if !rest.is_empty() => Ok((bundle.to_string(), rest.iter().collect())),
        _ => Err(format!("\"{path}\" names no file inside a bundle; expected {accepted}")),
    }
}

/// Two deliveries may not write the same path, nor a file where another needs a directory.
///
/// Paths are kept in a map ordered component by component, where every path under `a/b`
/// follows `a/b` directly: each delivery is checked against its own ancestors and its first
/// successor, so a thousand policies cost a thousand lookups, not a million comparisons.
fn check_paths(placed: &[Placed], problems: &mut Vec<Problem>) {
    let mut seen: BTreeMap<&Path, &Placed> = BTreeMap::new();
    for later in placed {
        let path = later.path.as_path();
        let clash = if let Some(earlier) = seen.get(path) {
            Some(("is also delivered", *earlier))
        } else {
            let above = path.ancestors().skip(1).find_map(|dir| seen.get(dir));
            let below = || {
                seen.range::<Path, _>((Bound::Excluded(path), Bound::Unbounded))
                    .next()
                    .filter(|(other, _)| other.starts_with(path))
                    .map(|(_, earlier)| earlier)
            };
            above.or_else(below).map(|earlier| ("overlaps the file delivered", *earlier))
        };
        seen.entry(path).or_insert(later);
        let Some((message, earlier)) = clash else { continue };
        problems.push(Problem {
            file: later.file.clone(),
            line: Some(later.line),
            key: "deliver.path".into(),
            message: format!(
                "\"{}\" {message} by policy \"{}\" ({}:{})",
                later.path.display(),
                earlier.policy,
                earlier.file.display(),
                earlier.line
            ),
        });
    }
}

fn is_simple_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DirAccess;

    struct Fake;

    impl Environment for Fake {
        fn var(&self, name: &str) -> Option<String> {
            (name == "SITE").then(|| "fra1".to_string())
        }
        fn hostname(&self) -> Option<String> {
            Some("node-a".into())
        }
    }

    impl Accounts for Fake {
        fn user_id(&self, name: &str) -> Option<u32> {
            (name == "api").then_some(1000)
        }
        fn group_id(&self, name: &str) -> Option<u32> {
            (name == "api").then_some(1001)
        }
    }

    const AGENT: &str = r#"
[agent]
runtime_dir = "/run/keyturn"
state_dir = "state"
policies = "policies"
poll = "30s"
jitter = "20%"

[stores.dev]
kind = "file"
dir = "/var/lib/keyturn/store-${SITE}"
"#;

    fn sources(agent: &str, policies: &[(&str, &str)]) -> Sources {
        Sources {
            agent: SourceFile { path: "/etc/keyturn/keyturn.toml".into(), text: agent.into() },
            policies: policies
                .iter()
                .map(|(name, text)| SourceFile {
                    path: format!("/etc/keyturn/policies/{name}.toml").into(),
                    text: (*text).into(),
                })
                .collect(),
        }
    }

    fn problems(agent: &str, policies: &[(&str, &str)]) -> Vec<String> {
        match validate(&sources(agent, policies), &Fake, &Fake) {
            Ok(config) => panic!("expected problems, got {config:?}"),
            Err(ConfigErrors(problems)) => problems.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn a_good_configuration_becomes_typed_values() {
        let policy = r#"
[secret]
store = "dev"
id = "db-password"

[[deliver]]
path = "api/db.env"
format = "env"
key = "DB_PASSWORD"
mode = "0440"
user = "api"
group = 1001

[[deliver]]
path = "api/raw/db-password"
"#;
        let config = validate(&sources(AGENT, &[("db", policy)]), &Fake, &Fake).unwrap();
        assert_eq!(config.agent.node, "node-a");
        assert_eq!(config.agent.state_dir, PathBuf::from("/etc/keyturn/state"));
        assert_eq!(config.agent.poll, Duration::from_secs(30));
        assert_eq!(config.agent.jitter, 0.2);
        assert_eq!(
            config.stores["dev"],
            StoreConfig::File(FileStoreConfig { dir: "/var/lib/keyturn/store-fra1".into(), seed: None })
        );
        let db = config.policy("db").unwrap();
        assert!(db.required);
        assert_eq!(db.secret.as_str(), "db-password");
        assert_eq!(
            db.deliver[0],
            Delivery {
                bundle: "api".into(),
                file: "db.env".into(),
                format: Format::Env { key: Some("DB_PASSWORD".into()) },
                mode: 0o440,
                owner: Some(1000),
                group: Some(1001),
            }
        );
        assert_eq!(db.deliver[1].file, PathBuf::from("raw/db-password"));
        assert_eq!(db.deliver[1].mode, 0o400);
        assert_eq!(config.bundles().keys().copied().collect::<Vec<_>>(), vec!["api"]);
    }

    #[test]
    fn bundles_list_their_policies_and_close_to_one_shared_group() {
        let policy = |id: &str, deliveries: &[(&str, Option<u32>)]| {
            let mut text = format!("[secret]\nstore = \"dev\"\nid = \"{id}\"\n");
            for (path, group) in deliveries {
                text += &format!("[[deliver]]\npath = \"{path}\"\n");
                if let Some(group) = group {
                    text += &format!("group = {group}\n");
                }
            }
            text
        };
        let a = policy("a", &[("shared/a", Some(1001)), ("own/a", Some(1001)), ("shared/a.env", Some(1001))]);
        let b = policy("b", &[("shared/b", Some(1001)), ("mixed/b", Some(1001))]);
        let c = policy("c", &[("mixed/c", Some(1002)), ("open/c", None)]);
        let config = validate(&sources(AGENT, &[("a", &a), ("b", &b), ("c", &c)]), &Fake, &Fake).unwrap();
        let got: Vec<(&str, Vec<&str>, DirAccess)> = config
            .bundles()
            .into_iter()
            .map(|(name, bundle)| (name, bundle.members.iter().map(|p| p.name.as_str()).collect(), bundle.access))
            .collect();
        let (closed, open) = (DirAccess { group: Some(1001), mode: 0o750 }, DirAccess { group: None, mode: 0o755 });
        assert_eq!(
            got,
            [
                ("mixed", vec!["b", "c"], open),
                ("open", vec!["c"], open),
                ("own", vec!["a"], closed),
                ("shared", vec!["a", "b"], closed),
            ]
        );
    }

    #[test]
    fn every_mistake_is_reported_with_file_line_and_key() {
        let agent = "[agent]\npoll = \"soon\"\ncolour = \"blue\"\n[stores.dev]\nkind = \"file\"\ndir = \"/s\"\n";
        let unknown_key = "[secret]\nstore = \"dev\"\nid = \"a\"\nversion = 3\n[[deliver]]\npath = \"x/a\"\n";
        let bad_paths = "[secret]\nstore = \"nope\"\nid = \"b\"\n[[deliver]]\npath = \"../etc/passwd\"\n[[deliver]]\npath = \"/abs\"\n[[deliver]]\npath = \"x/b\"\nformat = \"yaml\"\nmode = \"0666\"\nuser = \"nobody-here\"\n";
        let duplicate = "[secret]\nstore = \"dev\"\nid = \"c\"\n[[deliver]]\npath = \"x/b\"\n";
        let got = problems(agent, &[("unknown-key", unknown_key), ("bad-paths", bad_paths), ("dup", duplicate)]);
        let want = [
            "/etc/keyturn/keyturn.toml:2: agent.poll: \"soon\" is not a duration",
            "/etc/keyturn/policies/unknown-key.toml:4: secret: unknown field `version`",
            "/etc/keyturn/policies/bad-paths.toml:2: secret.store: store \"nope\" is not defined; defined stores: \"dev\"",
            "/etc/keyturn/policies/bad-paths.toml:5: deliver[0].path: \"../etc/passwd\" escapes the runtime directory",
            "/etc/keyturn/policies/bad-paths.toml:7: deliver[1].path: \"/abs\" is absolute",
            "/etc/keyturn/policies/bad-paths.toml:10: deliver[2].format: unknown format \"yaml\"",
            "/etc/keyturn/policies/bad-paths.toml:11: deliver[2].mode: 0666 lets other users write",
            "/etc/keyturn/policies/bad-paths.toml:12: deliver[2].user: user \"nobody-here\" does not exist",
        ];
        for want in want {
            assert!(got.iter().any(|p| p.starts_with(want)), "missing {want:?} in {got:#?}");
        }
        assert!(got.iter().any(|p| p.starts_with("/etc/keyturn/keyturn.toml:3: agent: unknown field `colour`")));
        // dup.toml's x/b is not reported: the x/b in bad-paths.toml was refused for its other
        // fields, so there is nothing valid yet for it to collide with.
        assert_eq!(got.len(), 9, "{got:#?}");
    }

    #[test]
    fn two_policies_may_not_write_one_path() {
        let a = "[secret]\nstore = \"dev\"\nid = \"a\"\n[[deliver]]\npath = \"x/shared\"\n";
        let b = "[secret]\nstore = \"dev\"\nid = \"b\"\n\n[[deliver]]\npath = \"x/shared\"\n";
        let c = "[secret]\nstore = \"dev\"\nid = \"c\"\n[[deliver]]\npath = \"x/shared/inner\"\n";
        let got = problems(AGENT, &[("a", a), ("b", b), ("c", c)]);
        assert_eq!(
            got,
            [
                "/etc/keyturn/policies/b.toml:6: deliver.path: \"x/shared\" is also delivered by policy \"a\" (/etc/keyturn/policies/a.toml:5)",
                "/etc/keyturn/policies/c.toml:5: deliver.path: \"x/shared/inner\" overlaps the file delivered by policy \"a\" (/etc/keyturn/policies/a.toml:5)",
            ]
        );
    }

    #[test]
    fn a_file_where_another_needs_a_directory_is_refused_whichever_comes_first() {
        let policy = |id: &str, path: &str| {
            format!("[secret]\nstore = \"dev\"\nid = \"{id}\"\n[[deliver]]\npath = \"{path}\"\n")
        };
        // b's file sits where a needs a directory; c's file needs b's path as a directory,
        // and d is clear of all of them (a sibling, and a name that merely shares a prefix).
        let (a, b, c, d) =
            (policy("a", "x/dir/inner"), policy("b", "x/dir"), policy("c", "x/dir/other"), policy("d", "x/dir-2/f"));
        let got = problems(AGENT, &[("a", &a), ("b", &b), ("c", &c), ("d", &d)]);
        assert_eq!(
            got,
            [
                "/etc/keyturn/policies/b.toml:5: deliver.path: \"x/dir\" overlaps the file delivered by policy \"a\" (/etc/keyturn/policies/a.toml:5)",
                "/etc/keyturn/policies/c.toml:5: deliver.path: \"x/dir/other\" overlaps the file delivered by policy \"b\" (/etc/keyturn/policies/b.toml:5)",
            ]
        );
    }

    #[test]
    fn syntax_errors_and_missing_sections() {
        let got = problems(AGENT, &[("broken", "[secret\nstore = "), ("empty", ""), ("Upper", "")]);
        assert!(got.iter().any(|p| p.starts_with("/etc/keyturn/policies/broken.toml:1: TOML syntax")), "{got:#?}");
        assert!(got.iter().any(|p| p.contains("empty.toml: secret: missing")), "{got:#?}");
        assert!(got.iter().any(|p| p.contains("empty.toml: deliver: missing")), "{got:#?}");
        assert!(got.iter().any(|p| p.contains("Upper.toml: a policy is named by its file stem")), "{got:#?}");
    }

    #[test]
    fn store_sections_are_checked_by_kind() {
        let agent =
            "[stores.a]\nkind = \"vault\"\n[stores.b]\ndir = \"/x\"\n[stores.c]\nkind = \"file\"\npath = \"/x\"\n";
        let got = problems(agent, &[]);
        assert!(got.iter().any(|p| p.contains("stores.a.kind: unknown store kind \"vault\"")), "{got:#?}");
        assert!(got.iter().any(|p| p.contains("stores.b.kind: missing")), "{got:#?}");
        assert!(got.iter().any(|p| p.contains("stores.c: unknown field `path`")), "{got:#?}");
    }

    #[test]
    fn rotate_sections() {
        let signing = r#"
[secret]
store = "dev"
id = "api-signing"

[rotate]
every = "30d"
generate = "ed25519"
grace = "24h"

[[deliver]]
path = "api/signing.pem"
format = "pem"

[[deliver]]
path = "api/jwks.json"
format = "jwks"
mode = "0444"
"#;
        let per_node = r#"
[secret]
store = "dev"
id = "mtls-${NODE}"

[rotate]
cron = "0 3 * * SUN"
generate = "password:32"
charset = "hex"
owner = "node"
keep = 3
jitter = "0s"
check = ["/usr/bin/true"]

[[deliver]]
path = "mtls/password"
"#;
        let config = validate(&sources(AGENT, &[("signing", signing), ("per-node", per_node)]), &Fake, &Fake).unwrap();
        let rotate = config.policy("signing").unwrap().rotate.clone().unwrap();
        assert_eq!(rotate.schedule, Schedule::Every(Duration::from_secs(30 * 86_400)));
        assert_eq!(rotate.generator, Generator::Ed25519);
        assert_eq!((rotate.owner, rotate.keep, rotate.grace), (Owner::Fleet, 2, Duration::from_secs(86_400)));
        assert_eq!(rotate.jitter, Duration::from_secs(600), "5% of 30 days, capped at 10 minutes");
        assert_eq!(config.policy("signing").unwrap().deliver[1].format, Format::Jwks);
        let node = config.policy("per-node").unwrap();
        assert_eq!(node.secret.as_str(), "mtls-node-a");
        let rotate = node.rotate.clone().unwrap();
        assert_eq!((rotate.owner, rotate.keep, rotate.jitter), (Owner::Node, 3, Duration::ZERO));
        assert_eq!(rotate.generator.name(), "password:32");
        assert_eq!(rotate.check, Some(vec!["/usr/bin/true".to_string()]));

        let bad = r#"
[secret]
store = "dev"
id = "shared-id"

[rotate]
every = "30d"
cron = "0 3 * * *"
generate = "hmac-sha256"
charset = "hex"
owner = "everyone"
keep = 1

[[deliver]]
path = "x/jwks.json"
format = "jwks"
"#;
        let got = problems(AGENT, &[("bad", bad)]);
        let want = [
            "bad.toml:8: rotate.cron: set either every or cron, not both",
            "bad.toml:10: rotate.charset:",
            "bad.toml:11: rotate.owner: \"everyone\" is not an owner",
            "bad.toml:12: rotate.keep: 1 is out of range",
            "bad.toml:16: deliver[0].format: \"jwks\" needs a private key, but generate = \"hmac-sha256\"",
        ];
        for want in want {
            assert!(got.iter().any(|p| p.contains(want)), "missing {want:?} in {got:#?}");
        }
        let shared = "[secret]\nstore = \"dev\"\nid = \"same-for-all\"\n[rotate]\nevery = \"1d\"\ngenerate = \"aes-256\"\nowner = \"node\"\n[[deliver]]\npath = \"y/key\"\n";
        let got = problems(AGENT, &[("shared", shared)]);
        assert!(got.iter().any(|p| p.contains("needs ${NODE} in its id")), "{got:#?}");
        let long_grace = "[secret]\nstore = \"dev\"\nid = \"g\"\n[rotate]\nevery = \"1h\"\ngrace = \"2h\"\ngenerate = \"aes-256\"\n[[deliver]]\npath = \"g/key\"\n";
        let got = problems(AGENT, &[("long-grace", long_grace)]);
        assert!(
            got.iter()
                .any(|p| p
                    .contains("long-grace.toml:6: rotate.grace: \"2h\" is not shorter than the rotation period (1h)")),
            "{got:#?}"
        );
        let short = "[secret]\nstore = \"dev\"\nid = \"h\"\n[rotate]\nevery = \"1h\"\ngenerate = \"aes-256\"\n[[deliver]]\npath = \"h/key\"\n";
        let config = validate(&sources(AGENT, &[("short", short)]), &Fake, &Fake).unwrap();
        assert_eq!(config.policies[0].rotate.as_ref().unwrap().grace, Duration::from_secs(1800), "half the period");
        let unknown = "[secret]\nstore = \"dev\"\nid = \"z\"\n[rotate]\nevery = \"1d\"\ngenerate = \"dsa-1024\"\n[[deliver]]\npath = \"z/key\"\n";
        let got = problems(AGENT, &[("unknown", unknown)]);
        assert!(got.iter().any(|p| p.contains("rotate.generate:") && p.contains("dsa-1024")), "{got:#?}");
        let short_lease = "[secret]\nstore = \"dev\"\nid = \"l\"\n[rotate]\nevery = \"1d\"\ngenerate = \"aes-256\"\nlease = \"20s\"\ncheck = [\"true\"]\n[[deliver]]\npath = \"l/key\"\n";
        let got = problems(AGENT, &[("short-lease", short_lease)]);
        assert!(
            got.iter().any(|p| p.contains(
                "short-lease.toml:7: rotate.lease: the lease (20s) must outlast the check command's timeout (30s)"
            )),
            "{got:#?}"
        );
        // Without a check command the timeout never runs: a short lease is fine.
        let no_check = short_lease.replace("check = [\"true\"]\n", "");
        assert!(validate(&sources(AGENT, &[("no-check", &no_check)]), &Fake, &Fake).is_ok());
        // Nor for a per-node secret, which is rotated without a lease.
        let per_node = short_lease
            .replace("id = \"l\"", "id = \"l-${NODE}\"")
            .replace("lease = \"20s\"", "lease = \"20s\"\nowner = \"node\"");
        assert!(validate(&sources(AGENT, &[("per-node", &per_node)]), &Fake, &Fake).is_ok(), "{per_node}");
        let slow_check = "[secret]\nstore = \"dev\"\nid = \"c\"\n[rotate]\nevery = \"1d\"\ngenerate = \"aes-256\"\ncheck = [\"true\"]\ncheck_timeout = \"1h\"\n[[deliver]]\npath = \"c/key\"\n";
        let got = problems(AGENT, &[("slow-check", slow_check)]);
        assert!(got.iter().any(|p| p.contains("slow-check.toml:8: rotate.check_timeout: the lease (10m)")), "{got:#?}");
    }

    #[test]
    fn gcp_stores() {
        let agent = r#"
[stores.edge]
kind = "gcp"
project = "acme-edge"
location = "europe-west3"

[stores.local]
kind = "gcp"
project = "435468002770"
endpoint = "http://127.0.0.1:8085"
credentials = "sa.json"
retry_backoff = "100ms"
"#;
        let config = validate(&sources(agent, &[]), &Fake, &Fake).unwrap();
        let StoreConfig::Gcp(edge) = &config.stores["edge"] else { panic!() };
        assert_eq!(
            (edge.project.as_str(), edge.location.as_deref(), edge.endpoint.as_deref()),
            ("acme-edge", Some("europe-west3"), None)
        );
        assert_eq!(edge.retry_backoff, Duration::from_secs(2));
        let StoreConfig::Gcp(local) = &config.stores["local"] else { panic!() };
        assert_eq!(local.credentials.as_deref(), Some(Path::new("/etc/keyturn/sa.json")));
        assert_eq!(local.retry_backoff, Duration::from_millis(100));

        let bad = "[stores.a]\nkind = \"gcp\"\nproject = \"Acme\"\nlocation = \"Europe West\"\nendpoint = \"http://10.0.0.8:8085\"\n";
        let got = problems(bad, &[]);
        assert!(
            got.iter().any(|p| p.contains("stores.a.project: \"Acme\" is not a Google Cloud project id")),
            "{got:#?}"
        );
        assert!(got.iter().any(|p| p.contains("stores.a.location: \"Europe West\" is not a location")), "{got:#?}");
        assert!(got.iter().any(|p| p.contains("plain http is allowed only to a loopback address")), "{got:#?}");
    }

    #[test]
    fn endpoints() {
        for good in [
            "https://secretmanager.googleapis.com",
            "https://sm.internal:8443/",
            "http://127.0.0.1:9",
            "http://[::1]:9",
            "http://localhost:9",
        ] {
            assert_eq!(check_endpoint(good), Ok(()), "{good}");
        }
        for bad in ["http://example.com", "ftp://127.0.0.1", "https://x/v1/projects", "https://u:p@x", "not a url"] {
            assert!(check_endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn delivery_paths() {
        type Split<'a> = Result<(&'a str, &'a str), &'a str>;
        let cases: &[(&str, Split)] = &[
            ("api/key.pem", Ok(("api", "key.pem"))),
            ("api/tls/cert.pem", Ok(("api", "tls/cert.pem"))),
            ("api", Err("names no file")),
            ("../x", Err("escapes")),
            ("api/../../x", Err("escapes")),
            ("/etc/x", Err("absolute")),
            ("api/..data", Err("reserved")),
            (".hidden/x", Err("reserved")),
            ("api//x", Err("empty component")),
            ("./api/x", Err("\".\" is not allowed")),
        ];
        for (path, want) in cases {
            match (check_delivery_path(path), want) {
                (Ok((bundle, file)), Ok((b, f))) => {
                    assert_eq!((bundle.as_str(), file.as_path()), (*b, Path::new(f)), "{path}");
                }
                (Err(got), Err(want)) => assert!(got.contains(want), "{path}: {got}"),
                (got, want) => panic!("{path}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn the_agent_file_is_read_alone() {
        let agent = SourceFile { path: "/etc/keyturn/keyturn.toml".into(), text: AGENT.into() };
        assert_eq!(policies_dir(&agent, &Fake), Some(PathBuf::from("/etc/keyturn/policies")));
        let parsed = agent_file(&agent, &Fake, &Fake).unwrap();
        assert_eq!(parsed.agent.policies_dir, PathBuf::from("/etc/keyturn/policies"));
        assert_eq!(parsed.stores.keys().collect::<Vec<_>>(), ["dev"]);
        let defaults = SourceFile { path: "/x/keyturn.toml".into(), text: String::new() };
        assert_eq!(policies_dir(&defaults, &Fake), Some(PathBuf::from(DEFAULT_POLICIES_DIR)));
        let defaults = agent_file(&defaults, &Fake, &Fake).unwrap().agent;
        assert_eq!(defaults.runtime_dir, PathBuf::from(DEFAULT_RUNTIME_DIR));
        assert_eq!(defaults.node, "node-a");
    }
}
