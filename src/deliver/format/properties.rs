//! Property tests: generated values through every format, and generated templates over
//! generated values. Whatever the input, rendering returns a file or an error; it never
//! panics, its output is bounded by its input, and an error never quotes the value.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::{Format, base64, env, json, jwk, jwks, pem, public_pem, raw, template};
use crate::secret::{SecretBytes, Version};

fn formats() -> Vec<Format> {
    vec![
        Format::Raw(raw::Raw),
        Format::Base64(base64::Base64),
        Format::Env(env::Env { key: Some("K".into()) }),
        Format::Env(env::Env { key: None }),
        Format::Json(json::Json { key: Some("k".into()) }),
        Format::Json(json::Json { key: None }),
        Format::Pem(pem::Pem),
        Format::PublicPem(public_pem::PublicPem),
        Format::Jwk(jwk::Jwk),
        Format::Jwks(jwks::Jwks),
        Format::Template(template::Template {
            source: "{{ secret | envquote }}|{{ secret | shellquote }}|{{ secret | urlencode }}".into(),
        }),
    ]
}

/// Values that look like what formats parse (JSON objects, PEM), and anything at all.
fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 1..512),
        any::<String>().prop_map(String::into_bytes),
        prop::collection::btree_map("[A-Za-z_][A-Za-z0-9_]{0,8}", any::<String>(), 0..6)
            .prop_map(|members| serde_json::to_vec(&members).unwrap()),
        "[a-zA-Z0-9+/=\n -]{0,300}"
            .prop_map(|body| format!("-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----\n").into_bytes()),
    ]
}

/// Pieces of templates: names, filters, tags, and text.
const PIECES: &[&str] = &[
    "{{ secret }}",
    "{{ secret | fromjson }}",
    "{{ (secret | fromjson).user }}",
    "{{ secret | b64encode }}",
    "{{ secret | envquote }}",
    "{{ secret | shellquote }}",
    "{{ secret | urlencode }}",
    "{{ secret | upper }}",
    "{{ secrets.extra }}",
    "{{ secrets.missing }}",
    "{{ node }}",
    "{{ policy }}",
    "{{ version }}",
    "{% for c in secret %}{{ c }}{% endfor %}",
    "{% if secret %}",
    "{% endif %}",
    "{{ secret[0] }}",
    "{{ secret | length }}",
    "{{ secret * 3 }}",
    "{{ }}",
    "{%",
    "}}",
    "\n",
    "KEY=",
    " ",
];

fn template_source() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![4 => prop::sample::select(PIECES).prop_map(String::from), 1 => "[^{}%]{0,12}"],
        0..12,
    )
    .prop_map(|pieces| pieces.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_format_renders_or_refuses_any_value_without_quoting_it(value in value()) {
        let version = Version::new(1, SecretBytes::copy_from(&value));
        for format in formats() {
            match format.render(&super::tests::input(&version, None)) {
                // Quoting, escaping or base64 at most quadruples a value; keys add a bounded
                // amount (a public key, a JWK).
                Ok(out) => prop_assert!(out.len() <= value.len() * 4 + 4096, "{format:?}: {} bytes", out.len()),
                Err(e) => {
                    let message = format!("{e} {e:?}");
                    if let Ok(text) = std::str::from_utf8(&value) && text.len() >= 12 && !text.trim().is_empty() {
                        prop_assert!(!message.contains(text), "{format:?} quoted the value");
                    }
                }
            }
        }
    }

    #[test]
    fn any_template_is_checked_and_renders_or_refuses(source in template_source(), secret in any::<String>(), extra in any::<String>()) {
        let problems = template::check(&source, &["extra"]);
        let secret_value = SecretBytes::from(format!("zz-{secret}-zz"));
        let extra_value = SecretBytes::from(extra);
        let context = template::Context {
            secret: &secret_value,
            extras: BTreeMap::from([("extra", &extra_value)]),
            node: "n",
            policy: "p",
            version: "1",
        };
        match template::render(&source, &context) {
            Ok(out) => prop_assert!(out.len() <= (source.len() + 1) * (secret_value.len() + extra_value.len() + 64) * 4),
            Err(e) => {
                let message = format!("{e} {e:?}");
                prop_assert!(!message.contains(&format!("zz-{secret}-zz")), "the value was quoted: {message}");
            }
        }
        // A template that `check` passes may still fail on a value; one it refuses never renders
        // with only the names it knows.
        let _ = problems;
    }
}
