//! `format = "env"`: `NAME=value` lines, for `EnvironmentFile=`, docker's `--env-file`,
//! python-dotenv and `set -a; . FILE`. With `key = "NAME"` the value is one variable; without,
//! the value must be a JSON object of strings, numbers and booleans, one line per member.

use serde::Deserialize;
use toml::Spanned;
use zeroize::Zeroizing;

use super::{Context, Input, Kind, RenderError, parse_json, zeroize_json};
use crate::config::Section;
use crate::secret::SecretBytes;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    /// The variable's name, for a plain value.
    pub key: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    key: Option<Spanned<String>>,
}

impl Kind for Env {
    const NAME: &'static str = "env";
    const SETTINGS: &'static [&'static str] = &["key"];

    fn configure(section: &mut Section<'_, '_>, _: &Context<'_>) -> Option<Self> {
        let settings: Settings = section.parse()?;
        match settings.key {
            Some(key) if !is_variable_name(key.get_ref()) => {
                section.problem(
                    Some(key.span()),
                    "key",
                    format!(
                        "\"{}\" is not a variable name: letters, digits and \"_\", not starting with a digit",
                        key.get_ref()
                    ),
                );
                None
            }
            key => Some(Env { key: key.map(Spanned::into_inner) }),
        }
    }

    fn render(&self, input: &Input<'_>) -> Result<SecretBytes, RenderError> {
        match &self.key {
            Some(key) => {
                let mut out = Zeroizing::new(String::new());
                push_line(&mut out, key, input.text("env")?)?;
                Ok(SecretBytes::from(std::mem::take(&mut *out)))
            }
            None => {
                let mut parsed = parse_json(input.value(), "env")?;
                let result = lines(&parsed);
                zeroize_json(&mut parsed);
                result
            }
        }
    }
}

fn lines(parsed: &serde_json::Value) -> Result<SecretBytes, RenderError> {
    let members = parsed.as_object().ok_or(RenderError::NotFlatObject)?;
    let mut out = Zeroizing::new(String::new());
    for (index, (name, member)) in members.iter().enumerate() {
        if !is_variable_name(name) {
            return Err(RenderError::BadVariableName { index });
        }
        let text = match member {
            serde_json::Value::String(s) => Zeroizing::new(s.clone()),
            serde_json::Value::Number(n) => Zeroizing::new(n.to_string()),
            serde_json::Value::Bool(b) => Zeroizing::new(b.to_string()),
            _ => return Err(RenderError::NotFlatObject),
        };
        push_line(&mut out, name, &text)?;
    }
    Ok(SecretBytes::from(std::mem::take(&mut *out)))
}

/// `NAME=value`, single-quoted when the value has anything a shell or .env reader would
/// interpret. Single quotes are literal in POSIX shells, systemd `EnvironmentFile=` and
/// python-dotenv alike, which is why they are the quoting chosen.
fn push_line(out: &mut String, name: &str, value: &str) -> Result<(), RenderError> {
    if value.contains(['\n', '\r', '\'']) {
        return Err(RenderError::Unquotable);
    }
    let plain = value.chars().all(|c| c.is_ascii_alphanumeric() || "_-./:@%+,=".contains(c));
    out.push_str(name);
    out.push('=');
    if plain {
        out.push_str(value);
    } else {
        out.push('\'');
        out.push_str(value);
        out.push('\'');
    }
    out.push('\n');
    Ok(())
}

fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::super::tests::render;
    use super::*;

    #[test]
    fn lines() {
        let one = |key: &str| Env { key: Some(key.into()) };
        let object = Env { key: None };
        let cases: Vec<(Env, &str, Result<&str, RenderError>)> = vec![
            (one("DB_PASSWORD"), "s3cret", Ok("DB_PASSWORD=s3cret\n")),
            (one("DB_PASSWORD"), "has space$", Ok("DB_PASSWORD='has space$'\n")),
            (one("DB_PASSWORD"), "it's", Err(RenderError::Unquotable)),
            (one("DB_PASSWORD"), "two\nlines", Err(RenderError::Unquotable)),
            (object.clone(), r#"{"USER":"app","PORT":5432,"TLS":true}"#, Ok("PORT=5432\nTLS=true\nUSER=app\n")),
            (object.clone(), r#"{"bad-name":"x"}"#, Err(RenderError::BadVariableName { index: 0 })),
            (object.clone(), r#"{"A":{"nested":1}}"#, Err(RenderError::NotFlatObject)),
            (object, "plain", Err(RenderError::NotJson { format: "env", line: 1, column: 1 })),
        ];
        for (format, value, want) in cases {
            let got = render(&format, value.as_bytes()).map(|b| String::from_utf8(b).unwrap());
            assert_eq!(got, want.map(String::from), "{format:?} {value:?}");
        }
        assert_eq!(render(&one("K"), &[0xff, 0xfe]), Err(RenderError::NotUtf8 { format: "env" }));
    }
}
