//! Output formats: how one secret value becomes the contents of one file.
//!
//! One file per format, each a type implementing [`Kind`]: its name in `format = "..."`, the
//! `[[deliver]]` settings of its own (`key` for env and json, `template` for templates),
//! their validation, and its rendering. The `formats!` list at the end of this file is the one
//! place formats are registered; [`Format`] is the closed set it makes.
//!
//! Rendering errors describe the shape of the value ("not valid UTF-8", "line 1 column 9 of
//! the JSON"), never its contents. That is why JSON is parsed into a generic value and matched
//! by hand: serde's typed errors quote the offending input.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;

use zeroize::Zeroize;

use crate::config::Section;
use crate::generate::{Generator, Output, PrivateKey, PublicKey};
use crate::secret::{SecretBytes, Version};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("format {format} needs a UTF-8 value, and this one is binary; use format \"raw\" or \"base64\"")]
    NotUtf8 { format: &'static str },
    #[error("format {format} without `key` needs a JSON value, and this one is not (line {line}, column {column})")]
    NotJson { format: &'static str, line: usize, column: usize },
    #[error(
        "format env without `key` needs a JSON object of strings, numbers or booleans; set `key` to deliver the value as one variable"
    )]
    NotFlatObject,
    #[error("format env: member {index} of the JSON object is not a variable name (letters, digits, \"_\")")]
    BadVariableName { index: usize },
    #[error(
        "format env: the value has a control character, a single quote, a backslash or \"${{\", which .env readers (python-dotenv, a POSIX shell, systemd) read differently; use format \"raw\", \"json\" or a template with shellquote"
    )]
    Unquotable,
    #[error("format {format} needs a PKCS#8 private key: {reason}")]
    NotAKey { format: &'static str, reason: String },
    #[error("template {kind}{}", line.map(|l| format!(" at template line {l}")).unwrap_or_default())]
    Template { line: Option<usize>, kind: String },
}

/// One output format.
pub trait Kind: Sized + Clone + PartialEq + Eq + fmt::Debug {
    /// Its name in `format = "..."`.
    const NAME: &'static str;
    /// The `[[deliver]]` settings it reads besides path, format, mode, user and group.
    const SETTINGS: &'static [&'static str] = &[];
    /// Whether it reads the value as a private key, so that the policy's generator must make
    /// one.
    const NEEDS_KEY: bool = false;
    /// Whether it lists the previous version's public key while that version is in its grace
    /// period: the engine then reads the previous version and wakes when the grace ends.
    const LISTS_PREVIOUS: bool = false;

    /// Checks its own settings (the section holds only those) and builds the format.
    fn configure(section: &mut Section<'_, '_>, context: &Context<'_>) -> Option<Self>;

    /// Whether it can render every value `generator` may make; the error says why not and
    /// what to choose instead. A format that refuses some values must say so here, or a
    /// rotation could make a value no node can deliver (the rotation's own check catches it
    /// then, and promotes nothing, but the policy never rotates).
    fn check_generator(&self, generator: &Generator) -> Result<(), String> {
        let _ = generator;
        Ok(())
    }

    fn render(&self, input: &Input<'_>) -> Result<SecretBytes, RenderError>;
}

/// What a format's validation may need to know about the rest of its policy.
#[derive(Debug)]
pub struct Context<'a> {
    /// The policy's `[secrets.NAME]` names, which templates may use.
    pub extras: &'a [&'a str],
    /// Where `format = "..."` is written, for problems about the choice of format itself.
    pub format_span: Option<Range<usize>>,
}

/// What a file is rendered from.
#[derive(Debug)]
pub struct Input<'a> {
    /// The policy's secret: its current version.
    pub version: &'a Version,
    /// The previous version's public key, passed only while that version is inside its grace
    /// period: a JWK set lists it so tokens signed before a rotation still verify.
    pub previous: Option<&'a PublicKey>,
    /// The current versions of the policy's `[secrets.NAME]`, for templates.
    pub extras: &'a BTreeMap<String, Version>,
    pub node: &'a str,
    pub policy: &'a str,
}

impl Input<'_> {
    pub fn value(&self) -> &SecretBytes {
        &self.version.value
    }

    /// The value as a private key, for the formats that publish or convert one.
    fn private_key(&self, format: &'static str) -> Result<PrivateKey, RenderError> {
        PrivateKey::parse(self.value()).map_err(|e| RenderError::NotAKey { format, reason: e.to_string() })
    }

    /// The value as UTF-8 text.
    fn text(&self, format: &'static str) -> Result<&str, RenderError> {
        utf8(self.value(), format)
    }
}

fn utf8<'a>(value: &'a SecretBytes, format: &'static str) -> Result<&'a str, RenderError> {
    std::str::from_utf8(value.expose()).map_err(|_| RenderError::NotUtf8 { format })
}

fn parse_json(value: &SecretBytes, format: &'static str) -> Result<serde_json::Value, RenderError> {
    serde_json::from_slice(value.expose()).map_err(|e| RenderError::NotJson {
        format,
        line: e.line(),
        column: e.column(),
    })
}

/// Why a format that needs text cannot take a generator's binary values, if it makes them.
fn binary_refused(generator: &Generator, format: &str) -> Result<(), String> {
    match generator.output() {
        Output::Bytes => Err(format!(
            "generate = \"{}\" makes binary values, which format {format} cannot hold; use format \"base64\" or \"raw\", or generate a password",
            generator.name()
        )),
        _ => Ok(()),
    }
}

/// Wipes the strings of a parsed JSON value before it is dropped (keys are field names and
/// cannot be reached mutably; they are left).
fn zeroize_json(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::String(s) => s.zeroize(),
        serde_json::Value::Array(items) => items.iter_mut().for_each(zeroize_json),
        serde_json::Value::Object(members) => members.values_mut().for_each(zeroize_json),
        _ => {}
    }
}

/// Declares the formats: one line each, `Variant => module::Type`. Makes [`Format`] and its
/// dispatch, and [`NAMES`].
macro_rules! formats {
    ($($variant:ident => $module:ident :: $kind:ident),* $(,)?) => {
        $(pub mod $module;)*

        /// A delivery's format. One variant per format.
        #[derive(Clone, PartialEq, Eq)]
        pub enum Format {
            $($variant($module::$kind),)*
        }

        /// Every format's name, in registration order.
        pub const NAMES: &[&str] = &[$(<$module::$kind as Kind>::NAME),*];

        impl Format {
            pub fn name(&self) -> &'static str {
                match self {
                    $(Format::$variant(_) => <$module::$kind as Kind>::NAME,)*
                }
            }

            /// Whether it reads the value as a private key.
            pub fn needs_key(&self) -> bool {
                match self {
                    $(Format::$variant(_) => <$module::$kind as Kind>::NEEDS_KEY,)*
                }
            }

            /// Whether it lists the previous version's public key during its grace.
            pub fn lists_previous(&self) -> bool {
                match self {
                    $(Format::$variant(_) => <$module::$kind as Kind>::LISTS_PREVIOUS,)*
                }
            }

            /// The settings the format named `name` reads; `None` for an unknown name.
            pub fn settings(name: &str) -> Option<&'static [&'static str]> {
                match name {
                    $(<$module::$kind as Kind>::NAME => Some(<$module::$kind as Kind>::SETTINGS),)*
                    _ => None,
                }
            }

            /// Builds the format named `name` from its settings; `None` for an unknown name,
            /// `Some(None)` when its settings are wrong (the section has the problems).
            pub fn configure(name: &str, section: &mut Section<'_, '_>, context: &Context<'_>) -> Option<Option<Format>> {
                match name {
                    $(<$module::$kind as Kind>::NAME => Some(<$module::$kind>::configure(section, context).map(Format::$variant)),)*
                    _ => None,
                }
            }

            pub fn render(&self, input: &Input<'_>) -> Result<SecretBytes, RenderError> {
                match self {
                    $(Format::$variant(format) => format.render(input),)*
                }
            }

            /// Whether it can render every value `generator` may make.
            pub fn check_generator(&self, generator: &Generator) -> Result<(), String> {
                match self {
                    $(Format::$variant(format) => format.check_generator(generator),)*
                }
            }
        }

        /// As the format's own type: `Env { key: Some("DB") }`. Part of a delivery's settings
        /// fingerprint (`deliver::spec`), so it must not change shape.
        impl fmt::Debug for Format {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self {
                    $(Format::$variant(format) => fmt::Debug::fmt(format, f),)*
                }
            }
        }
    };
}

formats! {
    Raw => raw::Raw,
    Base64 => base64::Base64,
    Env => env::Env,
    Json => json::Json,
    Pem => pem::Pem,
    PublicPem => public_pem::PublicPem,
    Jwk => jwk::Jwk,
    Jwks => jwks::Jwks,
    Template => template::Template,
}

impl Default for Format {
    /// `raw`, when a delivery names no format.
    fn default() -> Self {
        Format::Raw(raw::Raw)
    }
}

#[cfg(test)]
mod properties;

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::secret::Version;

    /// What `format` makes of `value`, with no previous key and no template secrets.
    pub fn render(format: &impl Kind, value: &[u8]) -> Result<Vec<u8>, RenderError> {
        let version = Version::new(1, SecretBytes::copy_from(value));
        format.render(&input(&version, None)).map(|out| out.expose().to_vec())
    }

    pub fn input<'a>(version: &'a Version, previous: Option<&'a PublicKey>) -> Input<'a> {
        static NO_EXTRAS: BTreeMap<String, Version> = BTreeMap::new();
        Input { version, previous, extras: &NO_EXTRAS, node: "edge-17", policy: "app" }
    }

    pub fn text(out: SecretBytes) -> String {
        String::from_utf8(out.expose().to_vec()).unwrap()
    }

    #[test]
    fn errors_never_quote_the_value() {
        let formats = [
            Format::Env(env::Env { key: None }),
            Format::Json(json::Json { key: None }),
            Format::Env(env::Env { key: Some("K".into()) }),
        ];
        for value in ["sekrit-value-xyz", "{\"sekrit-value-xyz\": [1]}", "{\"A\": \"sekrit-value-xyz\" oops"] {
            let version = Version::new(1, SecretBytes::copy_from(value.as_bytes()));
            for format in &formats {
                if let Err(e) = format.render(&input(&version, None)) {
                    assert!(!e.to_string().contains("sekrit"), "{e}");
                    assert!(!format!("{e:?}").contains("sekrit"), "{e:?}");
                }
            }
        }
    }

    #[test]
    fn every_format_is_registered_once_under_its_name() {
        let mut names = NAMES.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), NAMES.len(), "{NAMES:?}");
        for name in NAMES {
            assert!(Format::settings(name).is_some(), "{name}");
        }
        assert_eq!(Format::default().name(), "raw");
        assert_eq!(format!("{:?}", Format::Env(env::Env { key: Some("DB".into()) })), "Env { key: Some(\"DB\") }");
    }
}
