//! `format = "json"`: the value itself when it is JSON, or `{"KEY": "value"}` with
//! `key = "KEY"`.

use serde::Deserialize;
use toml::Spanned;
use zeroize::Zeroizing;

use super::{Context, Input, Kind, RenderError, parse_json, zeroize_json};
use crate::config::Section;
use crate::generate::Generator;
use crate::secret::SecretBytes;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Json {
    /// The member name to wrap a plain value in.
    pub key: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    key: Option<Spanned<String>>,
}

impl Kind for Json {
    const NAME: &'static str = "json";
    const SETTINGS: &'static [&'static str] = &["key"];

    fn configure(section: &mut Section<'_, '_>, _: &Context<'_>) -> Option<Self> {
        let settings: Settings = section.parse()?;
        match settings.key {
            Some(key) if key.get_ref().is_empty() => {
                section.problem(Some(key.span()), "key", "must not be empty");
                None
            }
            key => Some(Json { key: key.map(Spanned::into_inner) }),
        }
    }

    fn check_generator(&self, generator: &Generator) -> Result<(), String> {
        if self.key.is_none() {
            return Err(format!(
                "format json without `key` needs a JSON value, and generate = \"{}\" makes none; set key = \"NAME\"",
                generator.name()
            ));
        }
        super::binary_refused(generator, "json")
    }

    fn render(&self, input: &Input<'_>) -> Result<SecretBytes, RenderError> {
        match &self.key {
            Some(key) => {
                let text = input.text("json")?;
                let mut out = Zeroizing::new(String::with_capacity(text.len() + key.len() + 8));
                out.push('{');
                push_string(&mut out, key);
                out.push(':');
                push_string(&mut out, text);
                out.push_str("}\n");
                Ok(SecretBytes::from(std::mem::take(&mut *out)))
            }
            None => {
                let mut parsed = parse_json(input.value(), "json")?;
                zeroize_json(&mut parsed);
                Ok(input.value().clone())
            }
        }
    }
}

fn push_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::super::tests::render;
    use super::*;

    #[test]
    fn documents() {
        let text = |format: &Json, value: &str| render(format, value.as_bytes()).map(|b| String::from_utf8(b).unwrap());
        let keyed = Json { key: Some("password".into()) };
        assert_eq!(text(&keyed, "a\"b\\c").unwrap(), "{\"password\":\"a\\\"b\\\\c\"}\n");
        let whole = Json { key: None };
        assert_eq!(text(&whole, r#"{"user":"app"}"#).unwrap(), r#"{"user":"app"}"#);
        assert_eq!(text(&whole, "not json"), Err(RenderError::NotJson { format: "json", line: 1, column: 2 }));
    }
}
