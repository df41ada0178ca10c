//! A policy file: `[secret]`, `[secrets.NAME]`, and the hand-off of `[rotate]`, `[[deliver]]`
//! and `[notify]` to their own files; then the checks that span policies (two policies may
//! not write one path).

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};

use toml::Spanned;

use super::source::{Section, Source, count_problems};
use super::{deliver, is_simple_name, notify, rotate};
use crate::config::units::optional_duration;
use crate::config::{Accounts, Environment, ExtraSecret, Owner, Policy, Problem, raw};
use crate::secret::{SecretId, VersionId};
use crate::store::{Selector, StoreConfig};

const SECTIONS: &[&str] = &["secret", "secrets", "rotate", "deliver", "notify", "cache"];

/// The policies checked so far, and what the checks that span them need.
pub(super) struct Policies<'a> {
    agent: &'a Source<'a>,
    stores: BTreeMap<&'a str, Store<'a>>,
    node: Option<&'a str>,
    /// Whether the agent file has a `[fleet]`; `None` when it could not be read.
    fleet: Option<bool>,
    policies: Vec<Policy>,
    placed: Vec<Placed>,
}

/// A store a policy may name.
#[derive(Clone, Copy)]
enum Store<'a> {
    /// Defined in the agent file.
    Configured(&'a StoreConfig),
    /// Named on the command line, with the backend whose rules apply if it was given.
    Declared(Option<&'a str>),
}

impl Store<'_> {
    fn check_secret_id(self, id: &str) -> Result<SecretId, String> {
        match self {
            Store::Configured(store) => store.check_secret_id(id),
            Store::Declared(kind) => StoreConfig::check_secret_id_of(kind, id),
        }
    }
}

/// A delivered path, remembered for the checks that span policies.
struct Placed {
    file: PathBuf,
    line: usize,
    policy: String,
    path: PathBuf,
}

impl<'a> Policies<'a> {
    pub fn new(
        agent: &'a Source<'a>,
        configured: &'a BTreeMap<String, StoreConfig>,
        declared: &'a super::Declared,
        node: Option<&'a str>,
        fleet: Option<bool>,
    ) -> Self {
        let mut stores: BTreeMap<&str, Store<'_>> =
            declared.iter().map(|(name, kind)| (name.as_str(), Store::Declared(kind.as_deref()))).collect();
        stores.extend(configured.iter().map(|(name, store)| (name.as_str(), Store::Configured(store))));
        Policies { agent, stores, node, fleet, policies: Vec::new(), placed: Vec::new() }
    }

    /// Checks one policy file, keeping it if it is valid.
    pub fn check(
        &mut self,
        file: &Source<'_>,
        env: &dyn Environment,
        accounts: &dyn Accounts,
        problems: &mut Vec<Problem>,
    ) {
        if let Some(policy) = self.policy(file, env, accounts, problems) {
            self.policies.push(policy);
        }
    }

    /// The valid policies, sorted by name, after the checks that span them.
    pub fn finish(mut self, problems: &mut Vec<Problem>) -> Vec<Policy> {
        check_paths(&self.placed, problems);
        self.policies.sort_by(|a, b| a.name.cmp(&b.name));
        self.policies.shrink_to_fit();
        self.policies
    }

    fn policy(
        &mut self,
        file: &Source<'_>,
        env: &dyn Environment,
        accounts: &dyn Accounts,
        problems: &mut Vec<Problem>,
    ) -> Option<Policy> {
        let name = file.path.file_stem().and_then(|s| s.to_str()).unwrap_or("").to_string();
        let before = count_problems(problems);
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
        file.known_sections(table, SECTIONS, problems);
        let env = NodeEnvironment { env, node: self.node };
        let env: &dyn Environment = &env;

        // The generator is kept apart from the rest of [rotate]: when it is valid, the formats
        // are checked against it even if another rotate setting is wrong.
        let (rotate, generator) = match table.get("rotate") {
            Some(value) => {
                let (rotate, generator) = rotate::section(
                    &mut Section::new(file, "rotate", value.clone(), env, accounts, problems),
                    self.fleet,
                );
                (Some(rotate), generator)
            }
            None => (None, None),
        };
        let per_node = matches!(&rotate, Some(Some(r)) if r.owner == Owner::Node);
        let secret = match table.get("secret") {
            Some(value) => {
                self.secret(&mut Section::new(file, "secret", value.clone(), env, accounts, problems), per_node)
            }
            None => {
                problems.push(file.problem(None, "secret", "missing; every policy needs [secret] with store and id"));
                None
            }
        };
        let extras = match table.get("secrets") {
            Some(value) => {
                self.extra_secrets(&mut Section::new(file, "secrets", value.clone(), env, accounts, problems))
            }
            None => BTreeMap::new(),
        };
        let extra_names: Vec<&str> = extras.keys().map(String::as_str).collect();

        let mut deliveries = Vec::new();
        match table.get("deliver") {
            Some(value) => match value.get_ref().as_array() {
                Some(items) if !items.is_empty() => {
                    for (i, item) in items.iter().enumerate() {
                        let key = format!("deliver[{i}]");
                        let mut section = Section::new(file, key, item.clone(), env, accounts, problems);
                        let context = deliver::Context { extras: &extra_names, generator: generator.as_ref() };
                        if let Some((delivery, line)) = deliver::section(&mut section, &context) {
                            self.placed.push(Placed {
                                file: file.path.to_path_buf(),
                                line,
                                policy: name.clone(),
                                path: Path::new(&delivery.bundle).join(&delivery.file),
                            });
                            deliveries.push(delivery);
                        }
                    }
                }
                _ => {
                    problems.push(file.problem(Some(value.span()), "deliver", "must be one or more [[deliver]] tables"))
                }
            },
            None => problems.push(file.problem(
                None,
                "deliver",
                "missing; add at least one [[deliver]] with a path such as \"app/secret\"",
            )),
        }

        let max_stale = match table.get("cache") {
            Some(value) => {
                let mut section = Section::new(file, "cache", value.clone(), env, accounts, problems);
                section.parse::<raw::PolicyCache>().map(|raw| {
                    raw.max_stale.and_then(|value| {
                        optional_duration(value.get_ref())
                            .map_err(|m| section.problem(Some(value.span()), "max_stale", m))
                            .ok()
                    })
                })
            }
            None => Some(None),
        };
        let notify = table
            .get("notify")
            .map(|value| notify::section(&mut Section::new(file, "notify", value.clone(), env, accounts, problems)));

        let (store, secret, version, required) = secret?;
        if let (Some(Some(_)), false) = (&rotate, version == Selector::current()) {
            problems.push(file.problem(
                None,
                "secret.version",
                format!(
                    "a policy that rotates delivers version = \"current\", not {version}: rotation promotes a new version by moving `current`"
                ),
            ));
        }
        let rotate = match rotate {
            Some(rotate) => Some(rotate?),
            None => None,
        };
        let notify = match notify {
            Some(notify) => Some(notify?),
            None => None,
        };
        // Kept as long as the configuration runs: no room for more deliveries than there are.
        deliveries.shrink_to_fit();
        (count_problems(problems) == before).then_some(Policy {
            name,
            store,
            secret,
            version,
            required,
            deliver: deliveries,
            rotate,
            notify,
            extras,
            max_stale: max_stale?,
        })
    }

    /// `[secret]`: the store and id of the policy's secret (the id is checked by the store's
    /// backend, which knows its own naming rules) and which version is delivered.
    fn secret(&self, section: &mut Section<'_, '_>, per_node: bool) -> Option<(String, SecretId, Selector, bool)> {
        let raw: raw::Secret = section.parse()?;
        if per_node && !raw.id.get_ref().contains("${NODE}") {
            section.problem(
                Some(raw.id.span()),
                "id",
                "a per-node secret (owner = \"node\") needs ${NODE} in its id, such as \"api-${NODE}\", so that nodes do not share it",
            );
        }
        let store = self.store(section, &raw.store);
        let version = match &raw.version {
            Some(version) => {
                selector(version.get_ref()).map_err(|m| section.problem(Some(version.span()), "version", m)).ok()
            }
            None => Some(Selector::current()),
        };
        let id = section.expand(&raw.id, "id")?;
        let store = store?;
        let id = store.check_secret_id(&id).map_err(|m| section.problem(Some(raw.id.span()), "id", m)).ok()?;
        Some((raw.store.get_ref().clone(), id, version?, raw.required.unwrap_or(true)))
    }

    /// The store a policy names, or a problem listing the stores there are.
    fn store(&self, section: &mut Section<'_, '_>, name: &Spanned<String>) -> Option<Store<'a>> {
        let store = self.stores.get(name.get_ref().as_str()).copied();
        if store.is_none() {
            let defined = if self.stores.is_empty() {
                format!("no stores are defined in {}", self.agent.path.display())
            } else {
                let names = self.stores.keys().map(|n| format!("\"{n}\"")).collect::<Vec<_>>().join(", ");
                format!("defined stores: {names}")
            };
            section.problem(
                Some(name.span()),
                "store",
                format!("store \"{}\" is not defined; {defined}", name.get_ref()),
            );
        }
        store
    }

    /// A policy's `[secrets.NAME]` sections: more secrets its templates use.
    fn extra_secrets(&self, section: &mut Section<'_, '_>) -> BTreeMap<String, ExtraSecret> {
        let mut extras = BTreeMap::new();
        if !section.is_table() {
            section.problem(Some(section.span()), "", "must be [secrets.NAME] sections with store and id");
            return extras;
        }
        for (name, span) in section.keys() {
            let identifier = name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !identifier {
                section.problem(
                    Some(span),
                    &name,
                    "a template secret is used as {{ secrets.NAME }}: its name is lowercase letters, digits and \"_\"",
                );
                continue;
            }
            let Some(mut extra) = section.child(&name) else { continue };
            let Some(raw) = extra.parse::<raw::ExtraSecret>() else { continue };
            let Some(store) = self.store(&mut extra, &raw.store) else { continue };
            let Some(id) = extra.expand(&raw.id, "id") else { continue };
            match store.check_secret_id(&id) {
                Ok(secret) => {
                    extras.insert(name, ExtraSecret { store: raw.store.get_ref().clone(), secret });
                }
                Err(m) => extra.problem(Some(raw.id.span()), "id", m),
            }
        }
        extras
    }
}

/// `version = ...`: `"current"`, `"latest"`, a number (or its digits as a string), or an
/// alias as Google names them (up to 63 letters, digits, `-` and `_`, starting with a letter).
fn selector(version: &raw::VersionRef) -> Result<Selector, String> {
    let accepted = "expected \"current\" (the default), \"latest\", a version number such as 3, or an alias";
    match version {
        raw::VersionRef::Number(n) if *n >= 1 => Ok(Selector::Id(VersionId::from(*n as u64))),
        raw::VersionRef::Number(n) => Err(format!("{n} is not a version number; {accepted}")),
        raw::VersionRef::Text(text) if text == "latest" => Ok(Selector::Latest),
        raw::VersionRef::Text(text) if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) => {
            match text.parse::<u64>() {
                Ok(n) if n >= 1 => Ok(Selector::Id(VersionId::from(n))),
                _ => Err(format!("\"{text}\" is not a version number; {accepted}")),
            }
        }
        raw::VersionRef::Text(alias) => {
            let ok = alias.len() <= 63
                && alias.starts_with(|c: char| c.is_ascii_alphabetic())
                && alias.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                && !alias.eq_ignore_ascii_case("new")
                && !alias.eq_ignore_ascii_case("latest");
            if ok {
                Ok(Selector::Alias(alias.clone()))
            } else {
                Err(format!("\"{alias}\" is not an alias; {accepted}"))
            }
        }
    }
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
            skipped: false,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;

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
    fn the_version_delivered_is_current_latest_a_number_or_an_alias() {
        use crate::secret::VersionId;
        use crate::store::Selector;
        let policy = |version: &str| {
            format!("[secret]\nstore = \"dev\"\nid = \"db\"\nversion = {version}\n[[deliver]]\npath = \"x/a\"\n")
        };
        let cases: &[(&str, Selector)] = &[
            ("\"current\"", Selector::current()),
            ("\"latest\"", Selector::Latest),
            ("3", Selector::Id(VersionId::from(3))),
            ("\"12\"", Selector::Id(VersionId::from(12))),
            ("\"prod\"", Selector::Alias("prod".into())),
        ];
        for (version, want) in cases {
            let config = config(AGENT, &[("db", &policy(version))]);
            assert_eq!(&config.policies[0].version, want, "{version}");
        }
        let default = "[secret]\nstore = \"dev\"\nid = \"db\"\n[[deliver]]\npath = \"x/a\"\n";
        assert_eq!(config(AGENT, &[("db", default)]).policies[0].version, Selector::current());
        for bad in ["0", "-2", "\"0\"", "\"new\"", "\"9lives\"", "\"a/b\"", "true"] {
            let got = problems(AGENT, &[("db", &policy(bad))]);
            assert!(got.iter().any(|p| p.contains("db.toml:4: secret")), "{bad}: {got:#?}");
        }
        let rotating = "[secret]\nstore = \"dev\"\nid = \"k\"\nversion = \"latest\"\n[rotate]\nevery = \"1d\"\ngenerate = \"aes-256\"\n[[deliver]]\npath = \"k/key\"\n";
        let got = problems(AGENT, &[("k", rotating)]);
        assert!(got.iter().any(|p| p.contains("secret.version: a policy that rotates delivers version = \"current\", not latest")), "{got:#?}");
    }

    #[test]
    fn secret_ids_follow_the_rules_of_the_store_they_name() {
        let policy = |id: &str| format!("[secret]\nstore = \"dev\"\nid = \"{id}\"\n[[deliver]]\npath = \"x/a\"\n");
        let got = problems(AGENT, &[("slash", &policy("prod/api/key"))]);
        assert!(
            got.iter().any(|p| p.contains("slash.toml:3: secret.id: \"prod/api/key\" is not a secret id")),
            "{got:#?}"
        );
        let node = "[secret]\nstore = \"dev\"\nid = \"mtls-${NODE}\"\n[[deliver]]\npath = \"x/a\"\n";
        assert_eq!(config(AGENT, &[("node", node)]).policies[0].secret.as_str(), "mtls-node-a");
    }
}
