//! The serde shapes of the configuration files' own sections: strict, and still made of
//! strings. (A kind's settings, such as a store backend's or a notifier's, are shaped in the
//! kind's own file.)
//!
//! Every struct denies unknown fields, so a typo is an error rather than a silently ignored
//! setting. Fields that validation checks further are `Spanned`, so its messages can point at
//! the line. Sections are deserialized one at a time (see `validate`), so a mistake in one does
//! not hide a mistake in another.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Visitor};
use toml::Spanned;

/// `[agent]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Agent {
    pub node: Option<Spanned<String>>,
    pub runtime_dir: Option<Spanned<String>>,
    pub state_dir: Option<Spanned<String>>,
    pub policies: Option<Spanned<String>>,
    pub poll: Option<Spanned<String>>,
    pub jitter: Option<Spanned<String>>,
    pub allow_persistent: Option<bool>,
    pub rotate: Option<bool>,
    pub shutdown_grace: Option<Spanned<String>>,
    pub max_clock_skew: Option<Spanned<String>>,
}

/// `[cache]` of the agent file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cache {
    pub key_file: Option<Spanned<String>>,
    pub max_stale: Option<Spanned<String>>,
}

/// `[cache]` of a policy file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyCache {
    pub max_stale: Option<Spanned<String>>,
}

/// `[admin]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    pub listen: Option<Spanned<String>>,
}

/// `[control]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Control {
    pub mode: Option<Spanned<Mode>>,
    pub group: Option<Spanned<NameOrId>>,
    pub allow_users: Option<Vec<Spanned<NameOrId>>>,
    pub allow_groups: Option<Vec<Spanned<NameOrId>>>,
}

/// `[report]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    pub url: Spanned<String>,
    pub bearer_token_file: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub spool_max_events: Option<Spanned<i64>>,
}

/// The agent file's `[fleet]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fleet {
    pub prometheus: Spanned<String>,
    pub node_label: Option<Spanned<String>>,
    pub silent_after: Option<Spanned<String>>,
    pub lookback: Option<Spanned<String>>,
    pub auth: Option<Spanned<String>>,
    pub bearer_token_file: Option<Spanned<String>>,
    pub store: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
}

/// A policy's `[secret]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Secret {
    pub store: Spanned<String>,
    pub id: Spanned<String>,
    pub version: Option<Spanned<VersionRef>>,
    pub required: Option<bool>,
}

/// A policy's `[rotate]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rotate {
    pub every: Option<Spanned<String>>,
    pub cron: Option<Spanned<String>>,
    pub generate: Spanned<String>,
    pub charset: Option<Spanned<String>>,
    pub owner: Option<Spanned<String>>,
    pub grace: Option<Spanned<String>>,
    pub keep: Option<Spanned<i64>>,
    pub lease: Option<Spanned<String>>,
    pub jitter: Option<Spanned<String>>,
    pub check: Option<Spanned<Vec<String>>>,
    pub check_timeout: Option<Spanned<String>>,
    pub retire: Option<Spanned<String>>,
    pub adoption_timeout: Option<Spanned<String>>,
    pub on_adoption_timeout: Option<Spanned<String>>,
}

/// A policy's `[notify]`: the settings every notification has. Each notifier's own table is
/// checked by the notifier (see `crate::notify`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Notify {
    pub coalesce: Option<Spanned<String>>,
    pub attempts: Option<Spanned<i64>>,
}

/// A policy's `[secrets.NAME]`: another secret for its templates.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtraSecret {
    pub store: Spanned<String>,
    pub id: Spanned<String>,
}

/// The settings every `[[deliver]]` has; the format checks its own (`key`, `template`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deliver {
    pub path: Spanned<String>,
    pub format: Option<Spanned<String>>,
    pub mode: Option<Spanned<Mode>>,
    pub user: Option<Spanned<NameOrId>>,
    pub group: Option<Spanned<NameOrId>>,
}

/// A file mode: `"0400"` as a string, or `0o400` as a TOML octal integer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Text(String),
    Bits(i64),
}

/// A version: an alias or `latest` as a string, or a number (as a string or an integer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionRef {
    Text(String),
    Number(i64),
}

/// A user or group: a name, or a numeric id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameOrId {
    Name(String),
    Id(i64),
}

/// Deserializes a string-or-integer without serde's buffering `untagged` enums, which would
/// lose the spans of the surrounding `Spanned`.
macro_rules! string_or_integer {
    ($ty:ident, $text:ident, $number:ident, $expecting:literal) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct V;
                impl Visitor<'_> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$ty, E> {
                        Ok($ty::$text(v.to_string()))
                    }
                    fn visit_i64<E: de::Error>(self, v: i64) -> Result<$ty, E> {
                        Ok($ty::$number(v))
                    }
                    fn visit_u64<E: de::Error>(self, v: u64) -> Result<$ty, E> {
                        i64::try_from(v).map($ty::$number).map_err(E::custom)
                    }
                }
                deserializer.deserialize_any(V)
            }
        }
    };
}

string_or_integer!(Mode, Text, Bits, "an octal mode such as \"0400\"");
string_or_integer!(NameOrId, Name, Id, "a name or a numeric id");
string_or_integer!(VersionRef, Text, Number, "\"current\", \"latest\", an alias, or a version number");
