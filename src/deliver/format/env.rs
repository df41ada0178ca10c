//! `format = "env"`: `NAME=value` lines, for python-dotenv, `set -a; . FILE` in a POSIX shell
//! and systemd's `EnvironmentFile=`. With `key = "NAME"` the value is one variable; without,
//! the value must be a JSON object of strings, numbers and booleans, one line per member.
//!
//! Each value is written so that every one of those readers gets it back byte for byte, or
//! not at all: plain when it is only characters none of them interprets, otherwise in single
//! quotes. Single quotes are literal in a shell and in systemd, but python-dotenv decodes `\\`
//! and `\'` inside them and expands `${NAME}` everywhere; no quoting is read the same by all
//! three for a value with a single quote, a backslash, `${` or a control character, so such
//! a value is refused (the last good file stays). Docker's `--env-file` reads no quotes at
//! all: it gets plain values right, and keeps the quotes of quoted ones.

use serde::Deserialize;
use toml::Spanned;
use zeroize::Zeroizing;

use super::{Context, Input, Kind, RenderError, parse_json, zeroize_json};
use crate::config::Section;
use crate::generate::{Generator, Output};
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

    fn check_generator(&self, generator: &Generator) -> Result<(), String> {
        if self.key.is_none() {
            return Err(format!(
                "format env without `key` needs a JSON object, and generate = \"{}\" makes none; set key = \"NAME\"",
                generator.name()
            ));
        }
        super::binary_refused(generator, "env")?;
        match generator.output() {
            Output::Pem => Err(format!(
                "generate = \"{}\" makes a multi-line PEM key, which format env refuses; use format \"pem\"",
                generator.name()
            )),
            Output::Text { charset, alphabet } => alphabet_refused(&alphabet).map_or(Ok(()), |refused| {
                Err(format!(
                    "charset \"{charset}\" can make values format env refuses (it has {refused}); use charset \"alphanumeric\", or a chars: set without them"
                ))
            }),
            Output::Bytes => Ok(()),
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

/// `NAME=value`, the value as [`push_value`] writes it.
fn push_line(out: &mut String, name: &str, value: &str) -> Result<(), RenderError> {
    out.push_str(name);
    out.push('=');
    push_value(out, value)?;
    out.push('\n');
    Ok(())
}

/// A value as a .env line holds it: plain if no reader interprets any of its characters,
/// else in single quotes; refused if no quoting reads back the same in every reader.
pub(super) fn push_value(out: &mut String, value: &str) -> Result<(), RenderError> {
    if value.chars().any(is_refused) || value.contains("${") {
        return Err(RenderError::Unquotable);
    }
    if value.chars().all(is_plain) {
        out.push_str(value);
    } else {
        out.push('\'');
        out.push_str(value);
        out.push('\'');
    }
    Ok(())
}

/// Characters no quoting carries through every reader.
fn is_refused(c: char) -> bool {
    c.is_control() || c == '\'' || c == '\\'
}

/// Characters no reader interprets outside quotes.
fn is_plain(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_-./:@%+,=".contains(c)
}

/// The characters of `alphabet` some value would be refused for, as a message says them.
pub(super) fn alphabet_refused(alphabet: &[char]) -> Option<String> {
    let mut refused: Vec<String> = alphabet.iter().filter(|c| is_refused(**c)).map(|c| format!("{c:?}")).collect();
    if alphabet.contains(&'$') && alphabet.contains(&'{') {
        refused.push("\"$\" with \"{\"".to_string());
    }
    (!refused.is_empty()).then(|| refused.join(", "))
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
            (one("DB_PASSWORD"), "back\\slash", Err(RenderError::Unquotable)),
            (one("DB_PASSWORD"), "a${HOME}b", Err(RenderError::Unquotable)),
            (one("DB_PASSWORD"), "tab\there", Err(RenderError::Unquotable)),
            (one("DB_PASSWORD"), "$HOME {x} \"q\" #c `x`", Ok("DB_PASSWORD='$HOME {x} \"q\" #c `x`'\n")),
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

    #[test]
    fn generators_are_checked_against_what_env_refuses() {
        let env = Env { key: Some("K".into()) };
        let password = |charset: &str| {
            Generator::parse("password:16").unwrap().with_charset(crate::generate::Charset::parse(charset).unwrap()).unwrap()
        };
        assert_eq!(env.check_generator(&password("alphanumeric")), Ok(()));
        assert_eq!(env.check_generator(&password("chars:ab$}")), Ok(()));
        let printable = env.check_generator(&password("printable")).unwrap_err();
        assert!(printable.contains("'\\''") && printable.contains("'\\\\'"), "{printable}");
        assert!(env.check_generator(&password("chars:ab${")).unwrap_err().contains("\"$\" with \"{\""));
        assert!(env.check_generator(&Generator::Aes256).unwrap_err().contains("binary"));
        assert!(env.check_generator(&Generator::Ed25519).unwrap_err().contains("PEM"));
        assert!(Env { key: None }.check_generator(&password("hex")).unwrap_err().contains("JSON object"));
    }
}
