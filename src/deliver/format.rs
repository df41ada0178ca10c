//! Output formats: how one secret value becomes the contents of one file.
//!
//! Rendering errors describe the shape of the value ("not valid UTF-8", "line 1 column 9 of
//! the JSON"), never its contents. That is why JSON is parsed into a generic value and matched
//! by hand: serde's typed errors quote the offending input.

use base64::Engine as _;
use zeroize::{Zeroize, Zeroizing};

use crate::config::Format;
use crate::generate::{PrivateKey, PublicKey, jwks};
use crate::secret::SecretBytes;

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
        "format env: the value has a newline or a single quote, which .env dialects read differently; use format \"raw\" or \"json\""
    )]
    Unquotable,
    #[error("format {format} needs a PKCS#8 private key: {reason}")]
    NotAKey { format: &'static str, reason: String },
    #[error("template {kind}{}", line.map(|l| format!(" at template line {l}")).unwrap_or_default())]
    Template { line: Option<usize>, kind: String },
}

/// Renders `value` (the current version) as `format`. `previous` is the public key of the
/// version before it, passed only while that version is inside its grace period: the JWK set
/// lists it so tokens signed before a rotation still verify.
pub fn render(format: &Format, value: &SecretBytes, previous: Option<&PublicKey>) -> Result<SecretBytes, RenderError> {
    let key = |format: &'static str| {
        PrivateKey::parse(value).map_err(|e| RenderError::NotAKey { format, reason: e.to_string() })
    };
    match format {
        Format::Pem => Ok(key("pem")?.pkcs8_pem()),
        Format::PublicPem => Ok(SecretBytes::from(key("public-pem")?.public_key().spki_pem())),
        Format::Jwk => {
            let mut text = key("jwk")?.public_key().jwk().to_string();
            text.push('\n');
            Ok(SecretBytes::from(text))
        }
        Format::Template { .. } => unreachable!("templates are rendered by deliver::template"),
        Format::Jwks => {
            let current = key("jwks")?.public_key();
            let keys: Vec<&PublicKey> = std::iter::once(&current).chain(previous.filter(|p| **p != current)).collect();
            Ok(SecretBytes::from(jwks(&keys)))
        }
        Format::Raw => Ok(value.clone()),
        Format::Base64 => Ok(SecretBytes::from(base64::engine::general_purpose::STANDARD.encode(value.expose()))),
        Format::Json { key: Some(key) } => {
            let text = utf8(value, "json")?;
            let mut out = Zeroizing::new(String::with_capacity(text.len() + key.len() + 8));
            out.push('{');
            push_json_string(&mut out, key);
            out.push(':');
            push_json_string(&mut out, text);
            out.push_str("}\n");
            Ok(SecretBytes::from(std::mem::take(&mut *out)))
        }
        Format::Json { key: None } => {
            let mut parsed = parse_json(value, "json")?;
            zeroize_json(&mut parsed);
            Ok(value.clone())
        }
        Format::Env { key: Some(key) } => {
            let mut out = Zeroizing::new(String::new());
            push_env_line(&mut out, key, utf8(value, "env")?)?;
            Ok(SecretBytes::from(std::mem::take(&mut *out)))
        }
        Format::Env { key: None } => {
            let mut parsed = parse_json(value, "env")?;
            let result = env_lines(&parsed);
            zeroize_json(&mut parsed);
            result
        }
    }
}

fn env_lines(parsed: &serde_json::Value) -> Result<SecretBytes, RenderError> {
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
        push_env_line(&mut out, name, &text)?;
    }
    Ok(SecretBytes::from(std::mem::take(&mut *out)))
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

/// `NAME=value`, single-quoted when the value has anything a shell or .env reader would
/// interpret. Single quotes are literal in POSIX shells, systemd `EnvironmentFile=` and
/// python-dotenv alike, which is why they are the quoting chosen.
fn push_env_line(out: &mut String, name: &str, value: &str) -> Result<(), RenderError> {
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

fn push_json_string(out: &mut String, text: &str) {
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

fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(format: Format, value: &str) -> Result<String, RenderError> {
        render(&format, &SecretBytes::copy_from(value.as_bytes()), None)
            .map(|out| String::from_utf8(out.expose().to_vec()).unwrap())
    }

    #[test]
    fn formats() {
        let env = |key: Option<&str>| Format::Env { key: key.map(String::from) };
        let json = |key: Option<&str>| Format::Json { key: key.map(String::from) };
        let cases: Vec<(Format, &str, Result<&str, RenderError>)> = vec![
            (Format::Raw, "p@ss word\n", Ok("p@ss word\n")),
            (Format::Base64, "hello", Ok("aGVsbG8=")),
            (env(Some("DB_PASSWORD")), "s3cret", Ok("DB_PASSWORD=s3cret\n")),
            (env(Some("DB_PASSWORD")), "has space$", Ok("DB_PASSWORD='has space$'\n")),
            (env(Some("DB_PASSWORD")), "it's", Err(RenderError::Unquotable)),
            (env(Some("DB_PASSWORD")), "two\nlines", Err(RenderError::Unquotable)),
            (env(None), r#"{"USER":"app","PORT":5432,"TLS":true}"#, Ok("PORT=5432\nTLS=true\nUSER=app\n")),
            (env(None), r#"{"bad-name":"x"}"#, Err(RenderError::BadVariableName { index: 0 })),
            (env(None), r#"{"A":{"nested":1}}"#, Err(RenderError::NotFlatObject)),
            (env(None), "plain", Err(RenderError::NotJson { format: "env", line: 1, column: 1 })),
            (json(Some("password")), "a\"b\\c", Ok("{\"password\":\"a\\\"b\\\\c\"}\n")),
            (json(None), r#"{"user":"app"}"#, Ok(r#"{"user":"app"}"#)),
            (json(None), "not json", Err(RenderError::NotJson { format: "json", line: 1, column: 2 })),
        ];
        for (format, value, want) in cases {
            let want = want.map(String::from);
            assert_eq!(run(format.clone(), value), want, "{format:?} {value:?}");
        }
    }

    #[test]
    fn binary_values_are_refused_by_text_formats_only() {
        let binary = SecretBytes::new(vec![0xff, 0xfe, 0x00]);
        assert_eq!(render(&Format::Raw, &binary, None).unwrap().expose(), &[0xff, 0xfe, 0x00]);
        assert_eq!(
            render(&Format::Env { key: Some("K".into()) }, &binary, None),
            Err(RenderError::NotUtf8 { format: "env" })
        );
    }

    #[test]
    fn key_formats() {
        use crate::generate::Generator;
        let current = Generator::Ed25519.generate().unwrap();
        let previous = Generator::Ed25519.generate().unwrap();
        let previous_public = PrivateKey::parse(&previous).unwrap().public_key();
        let text = |out: SecretBytes| String::from_utf8(out.expose().to_vec()).unwrap();

        let pem = text(render(&Format::Pem, &current, None).unwrap());
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{pem}");
        let public = text(render(&Format::PublicPem, &current, None).unwrap());
        assert!(public.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{public}");
        let jwk: serde_json::Value =
            serde_json::from_str(&text(render(&Format::Jwk, &current, None).unwrap())).unwrap();
        assert_eq!((jwk["kty"].as_str(), jwk["crv"].as_str()), (Some("OKP"), Some("Ed25519")));
        assert!(jwk.get("d").is_none(), "a JWK delivery carries the public key only");

        let set = |previous| -> Vec<String> {
            let out = text(render(&Format::Jwks, &current, previous).unwrap());
            let set: serde_json::Value = serde_json::from_str(&out).unwrap();
            set["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap().to_string()).collect()
        };
        assert_eq!(set(None), vec![jwk["kid"].as_str().unwrap().to_string()]);
        assert_eq!(set(Some(&previous_public)), vec![jwk["kid"].as_str().unwrap().to_string(), previous_public.kid()]);

        let err = render(&Format::Jwks, &SecretBytes::copy_from(b"sekrit-not-a-key"), None).unwrap_err();
        assert!(matches!(err, RenderError::NotAKey { .. }) && !err.to_string().contains("sekrit"), "{err}");
    }

    #[test]
    fn errors_never_quote_the_value() {
        for value in ["sekrit-value-xyz", "{\"sekrit-value-xyz\": [1]}", "{\"A\": \"sekrit-value-xyz\" oops"] {
            for format in [Format::Env { key: None }, Format::Json { key: None }, Format::Env { key: Some("K".into()) }]
            {
                if let Err(e) = run(format, value) {
                    assert!(!e.to_string().contains("sekrit"), "{e}");
                    assert!(!format!("{e:?}").contains("sekrit"), "{e:?}");
                }
            }
        }
    }
}
