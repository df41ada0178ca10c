//! `${NAME}` references in configuration strings.
//!
//! `${NAME:-default}` stands for `default` when `NAME` is unset or empty (as in a POSIX shell).
//! `${HOSTNAME}` falls back to the kernel's host name when the variable is unset, because
//! systemd does not export `HOSTNAME` to services and that is where most agents run. `$$` is a
//! literal dollar sign. A reference to an unset variable without a default is an error, never
//! an empty string: an empty node name or path is worse than a refusal.
//!
//! In portable mode (`keyturn validate --portable`, on a machine that is not the node) an
//! unset variable is not an error: a stand-in made from its name takes its place, and the
//! caller lists the variable as not checked.

use super::Environment;

/// Expands every reference in `text`.
pub fn expand(text: &str, env: &dyn Environment) -> Result<String, String> {
    expand_with(text, env, false).map(|(text, _)| text)
}

/// [`expand`], with a stand-in for each unset variable without a default; returns the names of
/// those variables too.
pub fn expand_portable(text: &str, env: &dyn Environment) -> Result<(String, Vec<String>), String> {
    expand_with(text, env, true)
}

fn expand_with(text: &str, env: &dyn Environment, stand_in: bool) -> Result<(String, Vec<String>), String> {
    let mut unset = Vec::new();
    if !text.contains('$') {
        return Ok((text.to_string(), unset));
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| format!("unclosed \"${{\" in \"{text}\"; write \"$$\" for a literal \"$\""))?;
            let (name, default) = match body[..end].split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (&body[..end], None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("\"${{{name}}}\" is not a variable name (letters, digits and \"_\")"));
            }
            let value = env
                .var(name)
                .filter(|v| default.is_none() || !v.is_empty())
                .or_else(|| (name == "HOSTNAME").then(|| env.hostname()).flatten())
                .or_else(|| default.map(str::to_string));
            match value {
                Some(value) => out.push_str(&value),
                None if stand_in => {
                    out.push_str(&stand_in_for(name));
                    unset.push(name.to_string());
                }
                None => {
                    return Err(format!(
                        "environment variable {name} is not set; set it, or give a default: \"${{{name}:-VALUE}}\""
                    ));
                }
            }
            rest = &body[end + 1..];
        } else {
            return Err(format!("a \"$\" must start \"${{NAME}}\" or be doubled as \"$$\", in \"{text}\""));
        }
    }
    out.push_str(rest);
    Ok((out, unset))
}

/// What stands in for an unset variable in portable mode: its name in lowercase with `-` for
/// `_`, which every setting that takes a name, id, path or location accepts.
fn stand_in_for(name: &str) -> String {
    let text = name.to_ascii_lowercase().replace('_', "-");
    if text.starts_with(|c: char| c.is_ascii_lowercase()) { text } else { format!("v{text}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake;

    impl Environment for Fake {
        fn var(&self, name: &str) -> Option<String> {
            match name {
                "REGION" => Some("europe-west3".to_string()),
                "EMPTY" => Some(String::new()),
                _ => None,
            }
        }
        fn hostname(&self) -> Option<String> {
            Some("edge-17".to_string())
        }
    }

    #[test]
    fn references() {
        let cases: &[(&str, Result<&str, &str>)] = &[
            ("plain", Ok("plain")),
            ("${REGION}", Ok("europe-west3")),
            ("keys-${REGION}-x", Ok("keys-europe-west3-x")),
            ("${HOSTNAME}", Ok("edge-17")),
            ("cost $$5", Ok("cost $5")),
            ("${MISSING}", Err("environment variable MISSING is not set; set it, or give a default")),
            ("${MISSING:-eu}", Ok("eu")),
            ("${REGION:-eu}", Ok("europe-west3")),
            ("${EMPTY:-fallback}", Ok("fallback")),
            ("${EMPTY}", Ok("")),
            ("${MISSING:-}", Ok("")),
            ("/srv/${MISSING:-a/b}/x", Ok("/srv/a/b/x")),
            ("${REGION", Err("unclosed")),
            ("$REGION", Err("must start")),
            ("${A-B}", Err("not a variable name")),
            ("${:-x}", Err("not a variable name")),
        ];
        for (text, want) in cases {
            match (expand(text, &Fake), want) {
                (Ok(got), Ok(want)) => assert_eq!(&got, want, "{text}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{text}: {got}"),
                (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn portable_mode_stands_in_for_unset_variables_and_names_them() {
        assert_eq!(
            expand_portable("keys-${SITE_NAME}-${REGION}", &Fake),
            Ok(("keys-site-name-europe-west3".to_string(), vec!["SITE_NAME".to_string()]))
        );
        assert_eq!(expand_portable("${9LIVES}", &Fake), Ok(("v9lives".to_string(), vec!["9LIVES".to_string()])));
        assert_eq!(expand_portable("${MISSING:-d}", &Fake), Ok(("d".to_string(), vec![])));
    }
}
