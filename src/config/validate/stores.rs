//! `[stores.NAME]`: each section names its backend with `kind`, and the backend's own file
//! checks the rest (see [`crate::store::registry`]).

use std::collections::BTreeMap;

use toml::Spanned;
use toml::de::DeValue;

use super::is_simple_name;
use super::source::{Section, Source};
use crate::config::{Accounts, Environment, Problem};
use crate::store::{KINDS, StoreConfig};

pub(super) fn sections(
    source: &Source<'_>,
    value: &Spanned<DeValue<'_>>,
    env: &dyn Environment,
    accounts: &dyn Accounts,
    problems: &mut Vec<Problem>,
) -> BTreeMap<String, StoreConfig> {
    let mut stores = BTreeMap::new();
    let Some(table) = value.get_ref().as_table() else {
        problems.push(source.problem(Some(value.span()), "stores", "must be a table of [stores.NAME] sections"));
        return stores;
    };
    let kinds = KINDS.iter().map(|k| format!("\"{k}\"")).collect::<Vec<_>>().join(" or ");
    for (name, value) in table.iter() {
        let key = format!("stores.{}", name.get_ref());
        if !is_simple_name(name.get_ref()) {
            problems.push(source.problem(
                Some(name.span()),
                &key,
                "store names are lowercase letters, digits, \"-\" and \"_\", starting with a letter or digit",
            ));
        }
        let kind = value.get_ref().get("kind").and_then(|k| k.get_ref().as_str().map(|s| (s.to_string(), k.span())));
        let Some((kind, span)) = kind else {
            problems.push(source.problem(
                Some(value.span()),
                &format!("{key}.kind"),
                format!("missing; expected kind = {kinds}"),
            ));
            continue;
        };
        // The backend sees its own settings only: `kind` is the registry's.
        let mut settings = value.clone();
        if let DeValue::Table(table) = settings.get_mut() {
            let mut without = toml::de::DeTable::new();
            for (k, v) in table.iter().filter(|(k, _)| k.get_ref() != "kind") {
                without.insert(k.clone(), v.clone());
            }
            *table = without;
        }
        let mut section = Section::new(source, key.clone(), settings, env, accounts, problems);
        match StoreConfig::configure(&kind, &mut section) {
            Some(Some(store)) => {
                stores.insert(name.get_ref().to_string(), store);
            }
            Some(None) => {}
            None => {
                let message = match crate::store::OMITTED_KINDS.iter().find(|(omitted, _)| *omitted == kind) {
                    Some((_, feature)) => format!(
                        "store kind \"{kind}\" is not in this build of keyturn (built without the cargo feature \
                         \"{feature}\"; the default build has it); this build knows {kinds}"
                    ),
                    None => format!("unknown store kind \"{kind}\"; expected {kinds}"),
                };
                problems.push(source.problem(Some(span), &format!("{key}.kind"), message));
            }
        }
    }
    stores
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;

    #[test]
    fn store_sections_are_checked_by_kind() {
        let agent =
            "[stores.a]\nkind = \"vault\"\n[stores.b]\ndir = \"/x\"\n[stores.c]\nkind = \"file\"\npath = \"/x\"\n";
        let got = problems(agent, &[]);
        assert!(got.iter().any(|p| p.contains("stores.a.kind: unknown store kind \"vault\"")), "{got:#?}");
        assert!(got.iter().any(|p| p.contains("stores.b.kind: missing")), "{got:#?}");
        assert!(got.iter().any(|p| p.contains("stores.c: unknown field `path`")), "{got:#?}");
    }
}
