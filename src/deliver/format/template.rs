//! `format = "template"`: one file rendered from a policy's secrets and literal text, with
//! minijinja, strict about undefined names.
//!
//! A template sees `secret` (the policy's secret, as text), `secrets.NAME` (each
//! `[secrets.NAME]` of the policy), `node`, `policy` and `version`, and filters beyond
//! minijinja's own: `fromjson` (a JSON secret's fields: `(secret | fromjson).user`),
//! `b64encode`, and three that quote a value for where it goes, so that no value can end its
//! field early or inject more: `envquote` (a value on a .env line, as format env writes it,
//! refused where .env readers disagree), `shellquote` (a word for a POSIX shell script:
//! single quotes, `'\''` for a quote inside) and `urlencode` (a URL component, such as the
//! password in `postgres://user:PASSWORD@host`: everything but `A-Z a-z 0-9 - . _ ~` is
//! percent-encoded). [`check`] finds syntax errors and undefined names without rendering anything,
//! so `keyturn validate` reports them with their line; [`render`] reports only the kind and
//! line of an error, never its detail, which could quote a value. minijinja keeps its own
//! copies of the values while rendering and does not wipe them: the rendered file itself is a
//! zeroized buffer, its intermediate strings are not.

use std::collections::BTreeMap;

use base64::Engine as _;
use minijinja::{Environment, ErrorKind, UndefinedBehavior, Value};

use serde::Deserialize;
use toml::Spanned;

use super::{Context as Policy, Input, Kind, RenderError};
use crate::config::Section;
use crate::generate::{Generator, Output};
use crate::secret::SecretBytes;

/// Everything but RFC 3986's unreserved characters is percent-encoded.
const URL_COMPONENT: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// `template = """..."""`: the text to render.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub source: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    template: Option<Spanned<String>>,
}

impl Kind for Template {
    const NAME: &'static str = "template";
    const SETTINGS: &'static [&'static str] = &["template"];

    /// Checks the template now (syntax, undefined names), each problem placed on the policy
    /// file's line.
    fn configure(section: &mut Section<'_, '_>, policy: &Policy<'_>) -> Option<Self> {
        let settings: Settings = section.parse()?;
        let Some(template) = settings.template else {
            section.problem(
                policy.format_span.clone(),
                "format",
                "\"template\" needs template = \"\"\"...\"\"\" with the text to render",
            );
            return None;
        };
        let found = check(template.get_ref(), policy.extras);
        // A multi-line string's text starts on the line after its opening quotes.
        let quoted = section.text(template.span());
        let opening_newline = quoted.starts_with("\"\"\"\n") || quoted.starts_with("'''\n");
        let first = section.line(template.span().start) + usize::from(opening_newline);
        for problem in &found {
            section.problem_at_line(problem.line.map_or(first, |l| first + l - 1), "template", problem.message.clone());
        }
        found.is_empty().then(|| Template { source: template.into_inner() })
    }

    fn check_generator(&self, generator: &Generator) -> Result<(), String> {
        super::binary_refused(generator, "template")?;
        // Only `envquote` refuses text; a template that uses it on a password whose charset has
        // what .env readers disagree on would fail some rotations.
        if !self.source.contains("envquote") {
            return Ok(());
        }
        match generator.output() {
            Output::Text { charset, alphabet } => super::env::alphabet_refused(&alphabet).map_or(Ok(()), |refused| {
                Err(format!(
                    "the template uses envquote, and charset \"{charset}\" can make values it refuses (it has {refused}); use charset \"alphanumeric\", or shellquote"
                ))
            }),
            Output::Pem => Err("the template uses envquote, which refuses the newlines of a PEM key".to_string()),
            Output::Bytes => Ok(()),
        }
    }

    fn render(&self, input: &Input<'_>) -> Result<SecretBytes, RenderError> {
        let context = Context {
            secret: input.value(),
            extras: input.extras.iter().map(|(name, version)| (name.as_str(), &version.value)).collect(),
            node: input.node,
            policy: input.policy,
            version: input.version.id.as_str(),
        };
        render(&self.source, &context)
    }
}

/// The names every template may use besides `secrets.NAME`.
pub const NAMES: &[&str] = &["secret", "secrets", "node", "policy", "version"];

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    // A config file or .env ends as it is written; Jinja would drop its last newline.
    let syntax = minijinja::syntax::SyntaxConfig::builder().keep_trailing_newline(true).build();
    env.set_syntax(syntax.expect("the default delimiters are valid"));
    env.add_filter("fromjson", |text: String| -> Result<Value, minijinja::Error> {
        serde_json::from_str::<serde_json::Value>(&text)
            .map(|json| Value::from(minijinja::value::Serde(&json)))
            // serde_json's syntax errors name a position, never the input.
            .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, format!("fromjson: not JSON ({e})")))
    });
    env.add_filter("b64encode", |text: String| base64::engine::general_purpose::STANDARD.encode(text));
    env.add_filter("envquote", |text: String| -> Result<String, minijinja::Error> {
        let mut out = String::with_capacity(text.len() + 2);
        // The value is never quoted in the error: only the rule it broke.
        super::env::push_value(&mut out, &text).map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
        Ok(out)
    });
    env.add_filter("shellquote", |text: String| -> Result<String, minijinja::Error> {
        shell_quote(&text).ok_or_else(|| {
            minijinja::Error::new(ErrorKind::InvalidOperation, "shellquote: a shell word cannot hold a NUL byte")
        })
    });
    env.add_filter("urlencode", |text: String| percent_encoding::utf8_percent_encode(&text, URL_COMPONENT).to_string());
    env
}

/// One word for a POSIX shell: in single quotes, each `'` written as `'\''`; plain if it
/// has only characters no shell interprets. `None` for a NUL, which no shell word holds.
pub fn shell_quote(text: &str) -> Option<String> {
    if text.contains('\0') {
        return None;
    }
    if !text.is_empty() && text.chars().all(|c| c.is_ascii_alphanumeric() || "_-./:@%+,=".contains(c)) {
        return Some(text.to_string());
    }
    Some(format!("'{}'", text.replace('\'', "'\\''")))
}

/// A problem in a template's source: the template's own line (1-based), if known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateProblem {
    pub line: Option<usize>,
    pub message: String,
}

/// Checks a template without rendering it: its syntax, and that every name it uses is
/// defined (`extras` are the policy's `[secrets.NAME]`).
pub fn check(source: &str, extras: &[&str]) -> Vec<TemplateProblem> {
    let env = environment();
    let template = match env.template_from_str(source) {
        Ok(template) => template,
        Err(e) => {
            let detail = e.detail().map(|d| format!(": {d}")).unwrap_or_default();
            return vec![TemplateProblem { line: e.line(), message: format!("template syntax error{detail}") }];
        }
    };
    let defined: Vec<String> = NAMES
        .iter()
        .filter(|n| **n != "secrets")
        .map(|n| n.to_string())
        .chain(extras.iter().map(|e| format!("secrets.{e}")))
        .collect();
    let mut used: Vec<String> = template.undeclared_variables(true).into_iter().collect();
    used.sort();
    used.into_iter()
        .filter(|name| {
            let top = name.split('.').next().unwrap_or(name);
            let known = match top {
                "secrets" => name == "secrets" || extras.iter().any(|e| name == &format!("secrets.{e}")),
                other => NAMES.contains(&other),
            };
            !known
        })
        .map(|name| TemplateProblem {
            line: None,
            message: format!("template uses {{{{ {name} }}}}, which is not defined; defined: {}", defined.join(", ")),
        })
        .collect()
}

/// What a template is rendered with.
#[derive(Debug)]
pub struct Context<'a> {
    pub secret: &'a SecretBytes,
    pub extras: BTreeMap<&'a str, &'a SecretBytes>,
    pub node: &'a str,
    pub policy: &'a str,
    pub version: &'a str,
}

pub fn render(source: &str, context: &Context<'_>) -> Result<SecretBytes, RenderError> {
    let text = |value: &SecretBytes| {
        std::str::from_utf8(value.expose()).map(str::to_string).map_err(|_| RenderError::NotUtf8 { format: "template" })
    };
    let mut secrets = BTreeMap::new();
    for (name, value) in &context.extras {
        secrets.insert(*name, text(value)?);
    }
    let values = minijinja::context! {
        secret => text(context.secret)?,
        secrets => secrets,
        node => context.node,
        policy => context.policy,
        version => context.version,
    };
    let env = environment();
    let rendered = env
        .template_from_str(source)
        .and_then(|t| t.render(values))
        .map_err(|e| RenderError::Template { line: e.line(), kind: e.kind().to_string() })?;
    Ok(SecretBytes::from(rendered))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context<'a>(secret: &'a SecretBytes, extras: &'a BTreeMap<String, SecretBytes>) -> Context<'a> {
        let extras = extras.iter().map(|(name, value)| (name.as_str(), value)).collect();
        Context { secret, extras, node: "edge-17", policy: "app", version: "4" }
    }

    #[test]
    fn renders_secrets_fields_and_literal_text() {
        let secret = SecretBytes::from(r#"{"user": "app", "password": "pw-1"}"#.to_string());
        let extras = BTreeMap::from([("api_token".to_string(), SecretBytes::from("tok-9".to_string()))]);
        let source = "# {{ policy }} v{{ version }} on {{ node }}\n{% set db = secret | fromjson %}DATABASE_URL=postgres://{{ db.user }}:{{ db.password }}@db/app\nAPI_TOKEN={{ secrets.api_token }}\nB64={{ secrets.api_token | b64encode }}\n";
        let out = render(source, &context(&secret, &extras)).unwrap();
        assert_eq!(
            String::from_utf8(out.expose().to_vec()).unwrap(),
            "# app v4 on edge-17\nDATABASE_URL=postgres://app:pw-1@db/app\nAPI_TOKEN=tok-9\nB64=dG9rLTk=\n"
        );
    }

    #[test]
    fn quoting_filters_keep_values_in_their_field() {
        let secret = SecretBytes::from("p@ss w/rd'$x".to_string());
        let extras = BTreeMap::new();
        let render_text = |source: &str| {
            render(source, &context(&secret, &extras)).map(|out| String::from_utf8(out.expose().to_vec()).unwrap())
        };
        assert_eq!(render_text("{{ secret | urlencode }}").unwrap(), "p%40ss%20w%2Frd%27%24x");
        assert_eq!(render_text("X={{ secret | shellquote }}").unwrap(), "X='p@ss w/rd'\\''$x'");
        let refused = render_text("X={{ secret | envquote }}").unwrap_err();
        assert!(!refused.to_string().contains("rd'"), "{refused}");
        let plain = SecretBytes::from("has space".to_string());
        let out = render("X={{ secret | envquote }}", &context(&plain, &extras)).unwrap();
        assert_eq!(out.expose(), b"X='has space'");
        assert_eq!(shell_quote("simple"), Some("simple".into()));
        assert_eq!(shell_quote(""), Some("''".into()));
        assert_eq!(shell_quote("a\0b"), None);
    }

    #[test]
    fn check_finds_syntax_errors_with_their_line_and_undefined_names() {
        assert_eq!(check("A={{ secret }}\nB={{ secrets.token }}\n", &["token"]), vec![]);
        let problems = check("A={{ secret }}\nB={% if %}\n", &[]);
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].line, Some(2));
        assert!(problems[0].message.starts_with("template syntax error"), "{:?}", problems[0]);
        let problems = check("{{ secrets.missing }} {{ password }} {{ secrets.token }}", &["token"]);
        let messages: Vec<&str> = problems.iter().map(|p| p.message.as_str()).collect();
        assert_eq!(messages.len(), 2, "{messages:?}");
        assert!(messages[0].starts_with("template uses {{ password }}, which is not defined; defined: secret, node, policy, version, secrets.token"), "{messages:?}");
        assert!(messages[1].starts_with("template uses {{ secrets.missing }}"), "{messages:?}");
    }

    #[test]
    fn render_errors_never_carry_the_value() {
        let secret = SecretBytes::from("sekrit-template-value".to_string());
        let extras = BTreeMap::new();
        for source in ["{{ (secret | fromjson).x }}", "{{ secret | int + 1 }}", "{{ secret.nope }}"] {
            let err = render(source, &context(&secret, &extras)).unwrap_err();
            assert!(!err.to_string().contains("sekrit") && !format!("{err:?}").contains("sekrit"), "{err}");
        }
        let binary = SecretBytes::new(vec![0xff]);
        assert_eq!(
            render("{{ secret }}", &context(&binary, &extras)),
            Err(RenderError::NotUtf8 { format: "template" })
        );
    }
}
