//! Property tests: generated policy and agent files at validation. Whatever the text, it
//! returns a configuration or problems that each name a file and say something; it never
//! panics, and never takes long.

use proptest::prelude::*;

use super::fixtures::{AGENT, Fake, sources};
use super::validate;

/// Pieces of policy files, so that generated text reaches past the TOML parser.
const LINES: &[&str] = &[
    "[secret]",
    "store = \"dev\"",
    "store = \"nope\"",
    "id = \"db\"",
    "id = \"a/../b\"",
    "id = \"mtls-${NODE}\"",
    "required = false",
    "[[deliver]]",
    "path = \"app/db\"",
    "path = \"../x\"",
    "path = \"app:x/y\"",
    "path = \"app/\\u202Ex\"",
    "format = \"env\"",
    "format = \"template\"",
    "format = \"jwks\"",
    "format = \"nope\"",
    "key = \"DB\"",
    "key = \"1bad\"",
    "template = \"{{ secret | envquote }}\"",
    "template = \"{% if %}\"",
    "mode = \"0777\"",
    "mode = 256",
    "user = \"nobody-here\"",
    "[rotate]",
    "every = \"30d\"",
    "every = \"0s\"",
    "cron = \"0 3 * * *\"",
    "generate = \"password:32\"",
    "generate = \"ed25519\"",
    "generate = \"random:999999999\"",
    "charset = \"printable\"",
    "charset = \"chars:a\"",
    "grace = \"1y\"",
    "[notify]",
    "signal = { pidfile = \"/run/a.pid\" }",
    "http = { url = \"https://u:p@x/y?z\" }",
    "exec = { command = [] }",
    "[secrets.extra]",
    "[secrets.Bad]",
    "x = 1",
    "= broken",
    "\"unterminated",
];

fn policy_text() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            4 => prop::sample::select(LINES).prop_map(String::from),
            1 => any::<String>(),
        ],
        0..24,
    )
    .prop_map(|lines| lines.join("\n"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_policy_text_is_a_configuration_or_located_problems(text in policy_text(), raw in any::<String>()) {
        for policy in [text.as_str(), raw.as_str()] {
            match validate(&sources(AGENT, &[("p", policy)]), &Fake, &Fake) {
                Ok(config) => prop_assert!(config.policies.len() <= 1),
                Err(errors) => {
                    prop_assert!(!errors.0.is_empty());
                    for problem in &errors.0 {
                        prop_assert!(!problem.message.is_empty());
                        prop_assert!(problem.file.to_string_lossy().ends_with(".toml"));
                    }
                }
            }
        }
    }

    #[test]
    fn any_agent_text_is_a_configuration_or_located_problems(text in policy_text(), raw in any::<String>()) {
        for agent in [format!("{AGENT}\n{text}"), raw] {
            if let Err(errors) = validate(&sources(&agent, &[]), &Fake, &Fake) {
                prop_assert!(errors.0.iter().all(|p| !p.message.is_empty()));
            }
        }
    }
}
