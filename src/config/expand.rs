//! `${NAME}` references in configuration strings.
//!
//! `${HOSTNAME}` falls back to the kernel's host name when the variable is unset, because
//! systemd does not export `HOSTNAME` to services and that is where most agents run. `$$` is a
//! literal dollar sign. A reference to an unset variable is an error, never an empty string: an
//! empty node name or path is worse than a refusal.

use super::Environment;

pub fn expand(text: &str, env: &dyn Environment) -> Result<String, String> {
    if !text.contains('$') {
        return Ok(text.to_string());
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
            let name = &body[..end];
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("\"${{{name}}}\" is not a variable name (letters, digits and \"_\")"));
            }
            let value = env
                .var(name)
                .or_else(|| (name == "HOSTNAME").then(|| env.hostname()).flatten())
                .ok_or_else(|| format!("environment variable {name} is not set"))?;
            out.push_str(&value);
            rest = &body[end + 1..];
        } else {
            return Err(format!("a \"$\" must start \"${{NAME}}\" or be doubled as \"$$\", in \"{text}\""));
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake;

    impl Environment for Fake {
        fn var(&self, name: &str) -> Option<String> {
            (name == "REGION").then(|| "europe-west3".to_string())
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
            ("${MISSING}", Err("environment variable MISSING is not set")),
            ("${REGION", Err("unclosed")),
            ("$REGION", Err("must start")),
            ("${A-B}", Err("not a variable name")),
        ];
        for (text, want) in cases {
            match (expand(text, &Fake), want) {
                (Ok(got), Ok(want)) => assert_eq!(&got, want, "{text}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{text}: {got}"),
                (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
            }
        }
    }
}
