//! One `[[deliver]]`: a file inside a bundle. The settings every delivery has (path, format,
//! mode, user, group) are checked here; the chosen format checks its own (see
//! [`crate::deliver::format`]).

use std::path::{Component, Path, PathBuf};

use toml::Spanned;

use super::source::{Account, Section};
use crate::config::units::parse_mode;
use crate::config::{Delivery, raw};
use crate::deliver::format::{self, Format};
use crate::generate::Generator;

/// Owner-read only: the safe default for a secret file.
const DEFAULT_MODE: u32 = 0o400;
/// The settings of every delivery; the rest belong to its format.
const COMMON: &[&str] = &["path", "format", "mode", "user", "group"];

/// What a delivery's checks need from the rest of its policy.
pub(super) struct Context<'a> {
    /// The policy's `[secrets.NAME]`, which templates may use.
    pub extras: &'a [&'a str],
    /// The policy's generator, when it rotates and its generator is valid: key formats need
    /// one that makes keys.
    pub generator: Option<&'a Generator>,
}

/// The delivery, and the line its path is on (for the checks that span policies).
pub(super) fn section(section: &mut Section<'_, '_>, context: &Context<'_>) -> Option<(Delivery, usize)> {
    let (common, own) = section.split(COMMON);
    let raw: raw::Deliver = section.with_value(common).parse()?;
    let line = section.line(raw.path.span().start);
    let before = section.problem_count();
    let path = check_path(raw.path.get_ref()).map_err(|m| section.problem(Some(raw.path.span()), "path", m)).ok();

    let (name, name_span) = match &raw.format {
        Some(format) => (format.get_ref().as_str(), Some(format.span())),
        None => (Format::default().name(), None),
    };
    let format = match Format::settings(name) {
        Some(settings) => {
            own_settings(section, &own, name, settings);
            let context = format::Context { extras: context.extras, format_span: name_span.clone() };
            Format::configure(name, &mut section.with_value(own), &context).flatten()
        }
        None => {
            let accepted = format::NAMES.iter().map(|n| format!("\"{n}\"")).collect::<Vec<_>>().join(", ");
            section.problem(
                name_span.clone(),
                "format",
                format!("unknown format \"{name}\"; expected one of {accepted}"),
            );
            None
        }
    };
    if let (Some(format), Some(generator)) = (&format, context.generator)
        && format.needs_key()
        && !generator.is_asymmetric()
    {
        section.problem(
            name_span.clone(),
            "format",
            format!(
                "\"{}\" needs a private key, but generate = \"{}\"; use ed25519, ecdsa-p256, ecdsa-p384 or rsa-*",
                format.name(),
                generator.name()
            ),
        );
    }
    if let (Some(format), Some(generator)) = (&format, context.generator)
        && let Err(problem) = format.check_generator(generator)
    {
        section.problem(name_span.clone(), "format", problem);
    }
    let mode = mode(section, raw.mode.as_ref());
    let owner = section.account(raw.user.as_ref(), "user", Account::User);
    let group = section.account(raw.group.as_ref(), "group", Account::Group);
    let (bundle, file) = path?;
    let delivery = Delivery { bundle, file, format: format?, mode: mode?, owner: owner?, group: group? };
    (section.problem_count() == before).then_some((delivery, line))
}

/// Settings that are neither common nor the format's own: a setting of another format says
/// which; anything else is unknown.
fn own_settings(section: &mut Section<'_, '_>, own: &Spanned<toml::de::DeValue<'_>>, format: &str, accepted: &[&str]) {
    let Some(table) = own.get_ref().as_table() else { return };
    for (key, _) in table.iter() {
        let key_name: &str = key.get_ref().as_ref();
        if accepted.contains(&key_name) {
            continue;
        }
        let owners: Vec<String> = format::NAMES
            .iter()
            .filter(|n| Format::settings(n).is_some_and(|s| s.contains(&key_name)))
            .map(|n| format!("\"{n}\""))
            .collect();
        let message = if owners.is_empty() {
            let mut known: Vec<&str> = COMMON.to_vec();
            known.extend(format::NAMES.iter().flat_map(|n| Format::settings(n).unwrap_or_default()));
            known.dedup();
            format!("unknown field `{key_name}`, expected one of {}", known.join(", "))
        } else {
            format!("applies only to format = {}, not \"{format}\"", owners.join(" or "))
        };
        section.problem(Some(key.span()), key_name, message);
    }
}

fn mode(section: &mut Section<'_, '_>, mode: Option<&Spanned<raw::Mode>>) -> Option<u32> {
    let Some(mode) = mode else { return Some(DEFAULT_MODE) };
    let parsed = match mode.get_ref() {
        raw::Mode::Text(text) => parse_mode(text),
        raw::Mode::Bits(bits) => u32::try_from(*bits)
            .ok()
            .filter(|b| *b <= 0o777)
            .ok_or_else(|| format!("expected a mode from 0o000 to 0o777, got {bits}")),
    };
    let checked = parsed.and_then(|m| {
        (m & 0o022 == 0).then_some(m).ok_or_else(|| {
            format!("{m:04o} lets other users write a secret; use a read-only mode such as \"0400\" or \"0440\"")
        })
    });
    checked.map_err(|m| section.problem(Some(mode.span()), "mode", m)).ok()
}

/// Splits `bundle/inside/the/bundle` after checking that it stays inside the runtime directory
/// and clear of the hidden names keyturn keeps for itself (`..data` and version directories).
fn check_path(path: &str) -> Result<(String, PathBuf), String> {
    let accepted = "a relative path \"BUNDLE/FILE\" inside the runtime directory, such as \"api/signing.pem\"";
    if let Some(c) = path.chars().find(|c| is_hostile_char(*c)) {
        // The path is not quoted: it holds a character that would make any quote lie.
        return Err(format!(
            "has a {} character (U+{:04X}); expected {accepted}",
            if c.is_control() { "control" } else { "bidirectional-override" },
            c as u32
        ));
    }
    if path.contains(':') {
        return Err(format!(
            "\"{path}\": \":\" separates bundles in KEYTURN_BUNDLES, so no path may hold one; expected {accepted}"
        ));
    }
    if path.starts_with('/') {
        return Err(format!("\"{path}\" is absolute; expected {accepted}"));
    }
    let mut parts = Vec::new();
    for component in Path::new(path).components() {
        match component {
            Component::Normal(part) => {
                let part = part.to_str().unwrap_or("");
                if part.starts_with('.') {
                    return Err(format!(
                        "\"{path}\": names starting with \".\" are reserved for keyturn's own files; expected {accepted}"
                    ));
                }
                if part.len() > 255 || part.contains('\0') {
                    return Err(format!("\"{path}\": \"{part}\" is not a file name"));
                }
                parts.push(part);
            }
            Component::ParentDir => {
                return Err(format!("\"{path}\" escapes the runtime directory; expected {accepted}"));
            }
            Component::CurDir => return Err(format!("\"{path}\": \".\" is not allowed; expected {accepted}")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!("\"{path}\" is absolute; expected {accepted}"));
            }
        }
    }
    if path.contains("//") || path.ends_with('/') {
        return Err(format!("\"{path}\" has an empty component; expected {accepted}"));
    }
    match parts.as_slice() {
        [bundle, rest @ ..] if !rest.is_empty() => Ok((bundle.to_string(), rest.iter().collect())),
        _ => Err(format!("\"{path}\" names no file inside a bundle; expected {accepted}")),
    }
}

/// Characters that make a name show something else than it is: control characters, and the
/// bidirectional formatting characters that reorder text on screen ("Trojan Source").
fn is_hostile_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200E}' | '\u{200F}' | '\u{061C}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use super::super::fixtures::*;
    use super::super::validate;
    use super::*;
    use crate::config::DirAccess;
    use crate::store::StoreConfig;
    use crate::store::file::FileStoreConfig;

    #[test]
    fn a_good_configuration_becomes_typed_values() {
        let policy = r#"
[secret]
store = "dev"
id = "db-password"

[[deliver]]
path = "api/db.env"
format = "env"
key = "DB_PASSWORD"
mode = "0440"
user = "api"
group = 1001

[[deliver]]
path = "api/raw/db-password"
"#;
        let config = validate(&sources(AGENT, &[("db", policy)]), &Fake, &Fake).unwrap();
        assert_eq!(config.agent.node, "node-a");
        assert_eq!(config.agent.state_dir, PathBuf::from("/etc/keyturn/state"));
        assert_eq!(config.agent.poll, Duration::from_secs(30));
        assert_eq!(config.agent.jitter, 0.2);
        assert_eq!(
            config.stores["dev"],
            StoreConfig::File(FileStoreConfig { dir: "/var/lib/keyturn/store-fra1".into(), seed: None })
        );
        let db = config.policy("db").unwrap();
        assert!(db.required);
        assert_eq!(db.secret.as_str(), "db-password");
        assert_eq!(
            db.deliver[0],
            Delivery {
                bundle: "api".into(),
                file: "db.env".into(),
                format: Format::Env(crate::deliver::format::env::Env { key: Some("DB_PASSWORD".into()) }),
                mode: 0o440,
                owner: Some(1000),
                group: Some(1001),
            }
        );
        assert_eq!(db.deliver[1].file, PathBuf::from("raw/db-password"));
        assert_eq!(db.deliver[1].mode, 0o400);
        assert_eq!(config.bundles().keys().copied().collect::<Vec<_>>(), vec!["api"]);
    }

    #[test]
    fn bundles_list_their_policies_and_close_to_one_shared_group() {
        let policy = |id: &str, deliveries: &[(&str, Option<u32>)]| {
            let mut text = format!("[secret]\nstore = \"dev\"\nid = \"{id}\"\n");
            for (path, group) in deliveries {
                text += &format!("[[deliver]]\npath = \"{path}\"\n");
                if let Some(group) = group {
                    text += &format!("group = {group}\n");
                }
            }
            text
        };
        let a = policy("a", &[("shared/a", Some(1001)), ("own/a", Some(1001)), ("shared/a.env", Some(1001))]);
        let b = policy("b", &[("shared/b", Some(1001)), ("mixed/b", Some(1001))]);
        let c = policy("c", &[("mixed/c", Some(1002)), ("open/c", None)]);
        let config = validate(&sources(AGENT, &[("a", &a), ("b", &b), ("c", &c)]), &Fake, &Fake).unwrap();
        let got: Vec<(&str, Vec<&str>, DirAccess)> = config
            .bundles()
            .into_iter()
            .map(|(name, bundle)| (name, bundle.members.iter().map(|p| p.name.as_str()).collect(), bundle.access))
            .collect();
        let (closed, open) = (DirAccess { group: Some(1001), mode: 0o750 }, DirAccess { group: None, mode: 0o755 });
        assert_eq!(
            got,
            [
                ("mixed", vec!["b", "c"], open),
                ("open", vec!["c"], open),
                ("own", vec!["a"], closed),
                ("shared", vec!["a", "b"], closed),
            ]
        );
    }

    #[test]
    fn delivery_paths() {
        type Split<'a> = Result<(&'a str, &'a str), &'a str>;
        let cases: &[(&str, Split)] = &[
            ("api/key.pem", Ok(("api", "key.pem"))),
            ("api/tls/cert.pem", Ok(("api", "tls/cert.pem"))),
            ("api", Err("names no file")),
            ("../x", Err("escapes")),
            ("api/../../x", Err("escapes")),
            ("/etc/x", Err("absolute")),
            ("api/..data", Err("reserved")),
            (".hidden/x", Err("reserved")),
            ("api//x", Err("empty component")),
            ("./api/x", Err("\".\" is not allowed")),
            ("api/\u{202E}lmth.exe", Err("bidirectional-override character (U+202E)")),
            ("api/a\u{7}b", Err("control character (U+0007)")),
            ("api/a\nb", Err("control character (U+000A)")),
            ("api:x/key", Err("separates bundles")),
        ];
        for (path, want) in cases {
            match (check_path(path), want) {
                (Ok((bundle, file)), Ok((b, f))) => {
                    assert_eq!((bundle.as_str(), file.as_path()), (*b, Path::new(f)), "{path}");
                }
                (Err(got), Err(want)) => assert!(got.contains(want), "{path}: {got}"),
                (got, want) => panic!("{path}: got {got:?}, want {want:?}"),
            }
        }
    }
}
