//! Pure validation: configuration texts in, a typed [`Config`] or every problem out.
//!
//! No I/O happens here. The environment and the user database come in through the
//! [`Environment`] and [`Accounts`] seams, so the same texts and seams always give the same
//! answer, and tests need no files, variables or users.
//!
//! Each section is deserialized on its own and checking goes on after a bad one, so one run
//! reports every mistake it can see: a typo in `[secret]` does not hide a bad path in
//! `[[deliver]]`, and a bad policy file does not hide another. One file per part of the
//! configuration: [`agent`] (the agent file's own sections), [`stores`], [`policy`] (a policy
//! file, and the checks that span policies), [`rotate`], [`deliver`] and [`notify`]. The
//! settings of a kind (a store backend, a notifier, a format) are checked by the kind's own
//! file, through a [`Section`]; these files only find the kind and hand it its table.

mod agent;
mod deliver;
mod notify;
mod policy;
#[cfg(test)]
mod properties;
mod rotate;
mod source;
mod stores;

use std::collections::BTreeMap;
use std::path::PathBuf;

pub(crate) use source::Source;
pub use source::{Account, Section};
use toml::Spanned;

use super::load::SourceFile;
use super::{Accounts, AgentFile, Checked, Config, ConfigErrors, Environment, Machine, Problem, Sources};

const DEFAULT_POLICIES_DIR: &str = "/etc/keyturn/policies";

/// Stores that policies may name without an agent file defining them (`keyturn validate
/// --store NAME[=KIND]`): a name, and the backend whose naming rules apply, if given.
pub type Declared = BTreeMap<String, Option<String>>;

/// Validates the agent file and every policy file together, on the node.
pub fn validate(sources: &Sources, env: &dyn Environment, accounts: &dyn Accounts) -> Result<Config, ConfigErrors> {
    let checked = check(sources, &Declared::new(), env, accounts, Machine::Node);
    match checked.config {
        Some(config) => Ok(config),
        None => Err(ConfigErrors(checked.problems)),
    }
}

/// Checks the agent file and every policy file together. Policies may also name the
/// `declared` stores. On a [`Machine::Portable`] check, what depends on the node is listed in
/// [`Checked::skipped`] instead of being checked.
pub fn check(
    sources: &Sources,
    declared: &Declared,
    env: &dyn Environment,
    accounts: &dyn Accounts,
    machine: Machine,
) -> Checked {
    let mut problems = Vec::new();
    let agent_source = Source::new(&sources.agent, machine);
    let parsed = agent_source.parse(&mut problems);
    let parts = match &parsed {
        Some(table) => agent::sections(&agent_source, table, env, accounts, &mut problems),
        None => agent::Parts::default(),
    };

    let node = parts.agent.as_ref().map(|a| a.node.as_str());
    let fleet = parts.fleet.as_ref().map(Option::is_some);
    let mut policies = policy::Policies::new(&agent_source, &parts.stores, declared, node, fleet);
    for file in &sources.policies {
        policies.check(&Source::new(file, machine), env, accounts, &mut problems);
    }
    let policies = policies.finish(&mut problems);
    // Agent file first, then policy files in name order, each top to bottom.
    let order = |p: &Problem| {
        let index = std::iter::once(&sources.agent).chain(&sources.policies).position(|s| s.path == p.file);
        (index, p.line)
    };
    problems.sort_by_key(order);
    let (skipped, problems): (Vec<Problem>, Vec<Problem>) = problems.into_iter().partition(|p| p.skipped);

    let config = match parts.complete() {
        Some(file) if problems.is_empty() => Some(Config {
            agent: file.agent,
            cache: file.cache,
            admin: file.admin,
            control: file.control,
            report: file.report,
            fleet: file.fleet,
            stores: file.stores,
            policies,
        }),
        _ => None,
    };
    Checked { config, problems, skipped }
}

/// Where the policy files are, read leniently from the agent file alone: a mistake elsewhere in
/// `[agent]` must not stop the policies from being checked in the same run. `None` when the
/// setting itself cannot be read.
pub fn policies_dir(agent: &SourceFile, env: &dyn Environment) -> Option<PathBuf> {
    let source = Source::new(agent, Machine::Node);
    let table = source.parse(&mut Vec::new())?;
    let setting = match table.get_ref().get("agent").map(|a| a.get_ref().get("policies")) {
        Some(Some(value)) => Some(Spanned::new(value.span(), value.get_ref().as_str()?.to_string())),
        _ => None,
    };
    source.path_setting(setting.as_ref(), DEFAULT_POLICIES_DIR, "agent.policies", env, &mut Vec::new())
}

/// The agent file alone: `[agent]` and `[stores]`. `keyturn status` and `keyturn store` need
/// no more, and must keep working while a policy file is broken.
pub fn agent_file(
    agent: &SourceFile,
    env: &dyn Environment,
    accounts: &dyn Accounts,
) -> Result<AgentFile, ConfigErrors> {
    let mut problems = Vec::new();
    let source = Source::new(agent, Machine::Node);
    let parsed = source.parse(&mut problems);
    let parts = match &parsed {
        Some(table) => agent::sections(&source, table, env, accounts, &mut problems),
        None => agent::Parts::default(),
    };
    match parts.complete() {
        Some(agent_file) if problems.is_empty() => Ok(agent_file),
        _ => Err(ConfigErrors(problems)),
    }
}

/// A name of a store or policy: lowercase letters, digits, `-` and `_`, starting with a letter
/// or digit (safe in file names, metric labels and URLs).
fn is_simple_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// Test fixtures shared by the section tests: a fake environment and user database, and the
/// texts of an agent file and its policies.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    pub struct Fake;

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

    pub const AGENT: &str = r#"
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

    pub fn sources(agent: &str, policies: &[(&str, &str)]) -> Sources {
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

    pub fn config(agent: &str, policies: &[(&str, &str)]) -> Config {
        match validate(&sources(agent, policies), &Fake, &Fake) {
            Ok(config) => config,
            Err(errors) => panic!("{errors}"),
        }
    }

    pub fn problems(agent: &str, policies: &[(&str, &str)]) -> Vec<String> {
        match validate(&sources(agent, policies), &Fake, &Fake) {
            Ok(config) => panic!("expected problems, got {config:?}"),
            Err(ConfigErrors(problems)) => problems.iter().map(ToString::to_string).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;

    #[test]
    fn every_mistake_is_reported_with_file_line_and_key() {
        let agent = "[agent]\npoll = \"soon\"\ncolour = \"blue\"\n[stores.dev]\nkind = \"file\"\ndir = \"/s\"\n";
        let unknown_key = "[secret]\nstore = \"dev\"\nid = \"a\"\nrevision = 3\n[[deliver]]\npath = \"x/a\"\n";
        let bad_paths = "[secret]\nstore = \"nope\"\nid = \"b\"\n[[deliver]]\npath = \"../etc/passwd\"\n[[deliver]]\npath = \"/abs\"\n[[deliver]]\npath = \"x/b\"\nformat = \"yaml\"\nmode = \"0666\"\nuser = \"nobody-here\"\n";
        let duplicate = "[secret]\nstore = \"dev\"\nid = \"c\"\n[[deliver]]\npath = \"x/b\"\n";
        let got = problems(agent, &[("unknown-key", unknown_key), ("bad-paths", bad_paths), ("dup", duplicate)]);
        let want = [
            "/etc/keyturn/keyturn.toml:2: agent.poll: \"soon\" is not a duration",
            "/etc/keyturn/policies/unknown-key.toml:4: secret: unknown field `revision`",
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
    fn syntax_errors_and_missing_sections() {
        let got = problems(AGENT, &[("broken", "[secret\nstore = "), ("empty", ""), ("Upper", "")]);
        assert!(got.iter().any(|p| p.starts_with("/etc/keyturn/policies/broken.toml:1: TOML syntax")), "{got:#?}");
        assert!(got.iter().any(|p| p.contains("empty.toml: secret: missing")), "{got:#?}");
        assert!(got.iter().any(|p| p.contains("empty.toml: deliver: missing")), "{got:#?}");
        assert!(got.iter().any(|p| p.contains("Upper.toml: a policy is named by its file stem")), "{got:#?}");
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
        assert_eq!(defaults.runtime_dir, PathBuf::from("/run/keyturn"));
        assert_eq!(defaults.node, "node-a");
    }
}
