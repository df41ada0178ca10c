//! The agent file's own sections: `[agent]`, `[admin]`, `[control]` and `[report]`, plus the
//! dispatch of `[stores.NAME]` to [`super::stores`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::source::{Account, Section, Source};
use super::{DEFAULT_POLICIES_DIR, stores};
use crate::config::raw;
use crate::config::units::{check_outbound_url, optional_duration, parse_mode, parse_ratio};
use crate::config::{
    Accounts, Admin, Agent, AgentFile, CacheSettings, Control, Environment, Fleet, FleetAuth, Problem, Report,
};
use crate::store::StoreConfig;

const DEFAULT_RUNTIME_DIR: &str = "/run/keyturn";
const DEFAULT_STATE_DIR: &str = "/var/lib/keyturn";
const DEFAULT_POLL: Duration = Duration::from_secs(60);
const DEFAULT_JITTER: f64 = 0.1;
const MAX_JITTER: f64 = 0.5;
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Shortest poll accepted. Faster polling buys nothing a notification would not, and costs
/// store quota across the whole fleet.
const MIN_POLL: Duration = Duration::from_secs(1);
/// The smallest `max_clock_skew`: a `Date` header has one-second resolution.
const MIN_CLOCK_SKEW: Duration = Duration::from_secs(1);
/// The admin listener serves metrics and health, never values; by default on loopback only.
const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9464";
const SECTIONS: &[&str] = &["agent", "stores", "admin", "control", "report", "cache", "fleet"];
/// How old a sealed cache entry may be, by default: a week, as long as Google Distributed
/// Cloud's connected clusters are built to run without the cloud.
const DEFAULT_MAX_STALE: Duration = Duration::from_secs(7 * 86_400);

/// The sections of an agent file, each `None` if it was wrong (problems say why).
#[derive(Default)]
pub(super) struct Parts {
    pub agent: Option<Agent>,
    pub cache: Option<CacheSettings>,
    pub admin: Option<Admin>,
    pub control: Option<Control>,
    pub report: Option<Option<Report>>,
    pub fleet: Option<Option<Fleet>>,
    pub stores: BTreeMap<String, StoreConfig>,
}

impl Parts {
    pub fn complete(self) -> Option<AgentFile> {
        Some(AgentFile {
            agent: self.agent?,
            cache: self.cache?,
            admin: self.admin?,
            control: self.control?,
            report: self.report?,
            fleet: self.fleet?,
            stores: self.stores,
        })
    }
}

pub(super) fn sections(
    source: &Source<'_>,
    table: &Spanned<DeTable<'_>>,
    env: &dyn Environment,
    accounts: &dyn Accounts,
    problems: &mut Vec<Problem>,
) -> Parts {
    let table = table.get_ref();
    source.known_sections(table, SECTIONS, problems);
    // An absent section is checked as an empty one: its defaults must hold too.
    let value =
        |name: &str| table.get(name).cloned().unwrap_or_else(|| Spanned::new(0..0, DeValue::Table(DeTable::new())));
    let agent = agent_section(&mut Section::new(source, "agent", value("agent"), env, accounts, problems));
    let admin = admin_section(&mut Section::new(source, "admin", value("admin"), env, accounts, problems));
    let control = control_section(&mut Section::new(source, "control", value("control"), env, accounts, problems));
    let state_dir = agent.as_ref().map(|a| a.state_dir.as_path());
    let cache = cache_section(&mut Section::new(source, "cache", value("cache"), env, accounts, problems), state_dir);
    let report = match table.get("report") {
        Some(_) => {
            report_section(&mut Section::new(source, "report", value("report"), env, accounts, problems)).map(Some)
        }
        None => Some(None),
    };
    let stores = match table.get("stores") {
        Some(value) => stores::sections(source, value, env, accounts, problems),
        None => BTreeMap::new(),
    };
    let fleet = match table.get("fleet") {
        Some(_) => {
            let mut section = Section::new(source, "fleet", value("fleet"), env, accounts, problems);
            fleet_section(&mut section, &stores).map(Some)
        }
        None => Some(None),
    };
    Parts { agent, cache, admin, control, report, fleet, stores }
}

fn agent_section(section: &mut Section<'_, '_>) -> Option<Agent> {
    let raw: raw::Agent = section.parse()?;
    let node = match &raw.node {
        Some(node) => section.expand(node, "node"),
        None => section.env().hostname().or_else(|| {
            section.problem(None, "node", "cannot read the host name; set node = \"NAME\"");
            None
        }),
    };
    let node = node.and_then(|node| {
        let ok = !node.is_empty()
            && node.len() <= 253
            && node.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
        ok.then_some(node.clone()).or_else(|| {
            section.problem(
                raw.node.as_ref().map(Spanned::span),
                "node",
                format!("\"{node}\" is not a node name: 1 to 253 letters, digits, \".\", \"-\" or \"_\""),
            );
            None
        })
    });
    let mut directory = |value: Option<&Spanned<String>>, default: &str, field: &str| -> Option<PathBuf> {
        match value {
            Some(value) => section.path(value, field),
            None => Some(PathBuf::from(default)),
        }
    };
    let runtime_dir = directory(raw.runtime_dir.as_ref(), DEFAULT_RUNTIME_DIR, "runtime_dir");
    let state_dir = directory(raw.state_dir.as_ref(), DEFAULT_STATE_DIR, "state_dir");
    let policies_dir = directory(raw.policies.as_ref(), DEFAULT_POLICIES_DIR, "policies");
    let poll = section.duration(raw.poll.as_ref(), DEFAULT_POLL, "poll").and_then(|poll| {
        (poll >= MIN_POLL).then_some(poll).or_else(|| {
            section.problem(raw.poll.as_ref().map(Spanned::span), "poll", "must be at least 1s");
            None
        })
    });
    let jitter = match &raw.jitter {
        None => Some(DEFAULT_JITTER),
        Some(value) => {
            parse_ratio(value.get_ref(), MAX_JITTER).map_err(|m| section.problem(Some(value.span()), "jitter", m)).ok()
        }
    };
    let shutdown_grace = section.duration(raw.shutdown_grace.as_ref(), DEFAULT_SHUTDOWN_GRACE, "shutdown_grace");
    let max_clock_skew = section
        .duration(raw.max_clock_skew.as_ref(), crate::config::DEFAULT_MAX_CLOCK_SKEW, "max_clock_skew")
        .and_then(|skew| {
            (skew >= MIN_CLOCK_SKEW).then_some(skew).or_else(|| {
                section.problem(
                    raw.max_clock_skew.as_ref().map(Spanned::span),
                    "max_clock_skew",
                    "must be at least 1s: a store's clock is read from its answers' Date, to the second",
                );
                None
            })
        });
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
        max_clock_skew: max_clock_skew?,
    })
}

fn cache_section(section: &mut Section<'_, '_>, state_dir: Option<&std::path::Path>) -> Option<CacheSettings> {
    let raw: raw::Cache = section.parse()?;
    let key_file = match &raw.key_file {
        Some(path) => {
            let key = section.path(path, "key_file")?;
            if let Some(state_dir) = state_dir.filter(|dir| key.starts_with(dir)) {
                section.problem(
                    Some(path.span()),
                    "key_file",
                    format!(
                        "{} is in the state directory {}, beside the cache it opens: keep the key elsewhere (a Secret volume, another device, or the systemd credential {})",
                        key.display(),
                        state_dir.display(),
                        crate::cache::CREDENTIAL
                    ),
                );
                return None;
            }
            Some(key)
        }
        None => None,
    };
    let max_stale = match &raw.max_stale {
        Some(value) => {
            optional_duration(value.get_ref()).map_err(|m| section.problem(Some(value.span()), "max_stale", m)).ok()?
        }
        None => DEFAULT_MAX_STALE,
    };
    Some(CacheSettings { key_file, max_stale })
}

fn admin_section(section: &mut Section<'_, '_>) -> Option<Admin> {
    let raw: raw::Admin = section.parse()?;
    let Some(listen) = &raw.listen else {
        return Some(Admin { listen: Some(DEFAULT_ADMIN_LISTEN.parse().expect("a socket address")) });
    };
    if listen.get_ref() == "off" {
        return Some(Admin { listen: None });
    }
    match listen.get_ref().parse::<std::net::SocketAddr>() {
        Ok(address) => Some(Admin { listen: Some(address) }),
        Err(_) => {
            section.problem(
                Some(listen.span()),
                "listen",
                format!("\"{}\" is not an address and port such as \"127.0.0.1:9464\" (or \"off\")", listen.get_ref()),
            );
            None
        }
    }
}

fn control_section(section: &mut Section<'_, '_>) -> Option<Control> {
    let raw: raw::Control = section.parse()?;
    let before = section.problem_count();
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
                    section.problem(Some(mode.span()), "mode", "expected \"0600\", or \"0660\" with a group");
                    0o600
                }
            }
        }
    };
    let group = section.account(raw.group.as_ref(), "group", Account::Group).flatten();
    if mode == 0o660 && group.is_none() {
        section.problem(None, "mode", "\"0660\" needs group = \"NAME\": the group that may use the socket");
    }
    let mut allow_users = Vec::new();
    for user in raw.allow_users.iter().flatten() {
        if let Some(Some(id)) = section.account(Some(user), "allow_users", Account::User) {
            allow_users.push(id);
        }
    }
    if raw.allow_users.is_none() {
        // By default, the user the agent runs as (in practice root).
        allow_users.push(rustix::process::geteuid().as_raw());
    }
    let mut allow_groups = Vec::new();
    for group in raw.allow_groups.iter().flatten() {
        if let Some(Some(id)) = section.account(Some(group), "allow_groups", Account::Group) {
            allow_groups.push(id);
        }
    }
    (section.problem_count() == before).then_some(Control { mode, group, allow_users, allow_groups })
}

fn report_section(section: &mut Section<'_, '_>) -> Option<Report> {
    let raw: raw::Report = section.parse()?;
    let url = section.checked(&raw.url, "url", |url| check_outbound_url(url).map(|()| url.to_string()));
    let token = match &raw.bearer_token_file {
        Some(path) => section.path(path, "bearer_token_file").map(Some),
        None => Some(None),
    };
    let timeout = section.duration(raw.timeout.as_ref(), Duration::from_secs(10), "timeout");
    let spool_max_events = match &raw.spool_max_events {
        None => Some(10_000),
        Some(n) => match usize::try_from(*n.get_ref()) {
            Ok(n) if (10..=1_000_000).contains(&n) => Some(n),
            _ => {
                section.problem(
                    Some(n.span()),
                    "spool_max_events",
                    format!("{} is out of range: 10 to 1000000", n.get_ref()),
                );
                None
            }
        },
    };
    Some(Report { url: url?, bearer_token_file: token?, timeout: timeout?, spool_max_events: spool_max_events? })
}

fn fleet_section(section: &mut Section<'_, '_>, stores: &BTreeMap<String, StoreConfig>) -> Option<Fleet> {
    let raw: raw::Fleet = section.parse()?;
    let prometheus = section.checked(&raw.prometheus, "prometheus", |url| {
        check_outbound_url(url).map(|()| url.trim_end_matches('/').to_string())
    });
    let node_label = match &raw.node_label {
        None => Some("node".to_string()),
        Some(label) => {
            let text = label.get_ref();
            let valid = text.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if valid {
                Some(text.clone())
            } else {
                section.problem(Some(label.span()), "node_label", format!("\"{text}\" is not a Prometheus label name"));
                None
            }
        }
    };
    let silent_after = section.duration(raw.silent_after.as_ref(), Duration::from_secs(600), "silent_after");
    let lookback = section.duration(raw.lookback.as_ref(), Duration::from_secs(86_400), "lookback");
    if let (Some(silent), Some(lookback), Some(value)) = (silent_after, lookback, &raw.lookback)
        && lookback <= silent
    {
        section.problem(
            Some(value.span()),
            "lookback",
            "must be longer than silent_after: a node silent for longer than lookback is forgotten, not named as gone",
        );
    }
    let timeout = section.duration(raw.timeout.as_ref(), Duration::from_secs(10), "timeout");
    let gcp_stores: Vec<&String> = stores.iter().filter(|(_, s)| s.kind() == "gcp").map(|(name, _)| name).collect();
    let auth = match (raw.auth.as_ref().map(|a| (a.get_ref().as_str(), a.span())), &raw.bearer_token_file) {
        (None | Some(("bearer", _)), Some(path)) => {
            section.path(path, "bearer_token_file").map(FleetAuth::BearerTokenFile)
        }
        (Some(("bearer", span)), None) => {
            section.problem(Some(span), "auth", "\"bearer\" needs bearer_token_file = \"PATH\"");
            None
        }
        (None | Some(("none", _)), None) => Some(FleetAuth::None),
        (Some(("google", span)), None) => match (&raw.store, gcp_stores.as_slice()) {
            (Some(store), _) if gcp_stores.contains(&store.get_ref()) => {
                Some(FleetAuth::Google { store: store.get_ref().clone() })
            }
            (Some(store), _) => {
                section.problem(
                    Some(store.span()),
                    "store",
                    format!("\"{}\" is not a gcp store of this agent file", store.get_ref()),
                );
                None
            }
            (None, [only]) => Some(FleetAuth::Google { store: (*only).clone() }),
            (None, []) => {
                section.problem(
                    Some(span),
                    "auth",
                    "\"google\" takes its identity from a gcp store, and this agent file has none",
                );
                None
            }
            (None, _) => {
                section.problem(
                    Some(span),
                    "auth",
                    "\"google\" with several gcp stores: name the one whose identity to use, store = \"NAME\"",
                );
                None
            }
        },
        (Some((other, span)), _) => {
            section.problem(Some(span), "auth", format!("\"{other}\" is not a way to authenticate; expected \"none\", \"bearer\" (with bearer_token_file) or \"google\" (Managed Service for Prometheus)"));
            None
        }
    };
    Some(Fleet {
        prometheus: prometheus?,
        node_label: node_label?,
        silent_after: silent_after?,
        lookback: lookback?,
        auth: auth?,
        timeout: timeout?,
    })
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;

    #[test]
    fn agent_sections_are_checked_and_defaulted() {
        let got = problems(
            "[agent]\nnode = \"bad node\"\npoll = \"500ms\"\njitter = \"80%\"\n[admin]\nlisten = \"everywhere\"\n\
             [control]\nmode = \"0660\"\nallow_users = [\"nobody-here\"]\n[report]\nurl = \"http://10.0.0.1/events\"\n\
             spool_max_events = 5\n",
            &[],
        );
        let want = [
            "keyturn.toml:2: agent.node: \"bad node\" is not a node name",
            "keyturn.toml:3: agent.poll: must be at least 1s",
            "keyturn.toml:4: agent.jitter: expected a percentage from 0% to 50%",
            "keyturn.toml:6: admin.listen: \"everywhere\" is not an address",
            "keyturn.toml: control.mode: \"0660\" needs group",
            "keyturn.toml:9: control.allow_users: user \"nobody-here\" does not exist",
            "keyturn.toml:11: report.url: \"http://10.0.0.1/events\": plain http is allowed only to a loopback address",
            "keyturn.toml:12: report.spool_max_events: 5 is out of range: 10 to 1000000",
        ];
        for want in want {
            assert!(got.iter().any(|p| p.contains(want)), "missing {want:?} in {got:#?}");
        }
        assert_eq!(got.len(), want.len(), "{got:#?}");

        let defaults = config("", &[]);
        assert_eq!(defaults.admin.listen, Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!((defaults.control.mode, defaults.report), (0o600, None));
        assert_eq!(defaults.agent.poll, std::time::Duration::from_secs(60));
        assert!(defaults.agent.rotate && !defaults.agent.allow_persistent);
    }
}
