//! `format = "jwks"`: a JWK Set with the current public key and, while it is inside its grace
//! period, the previous one, so that tokens signed just before a rotation still verify.

use super::{Context, Input, Kind, RenderError};
use crate::config::Section;
use crate::generate::{PublicKey, jwks};
use crate::secret::SecretBytes;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Jwks;

impl Kind for Jwks {
    const NAME: &'static str = "jwks";
    const NEEDS_KEY: bool = true;
    const LISTS_PREVIOUS: bool = true;

    fn configure(_: &mut Section<'_, '_>, _: &Context<'_>) -> Option<Self> {
        Some(Jwks)
    }

    fn render(&self, input: &Input<'_>) -> Result<SecretBytes, RenderError> {
        let current = input.private_key(Self::NAME)?.public_key();
        let keys: Vec<&PublicKey> =
            std::iter::once(&current).chain(input.previous.filter(|p| **p != current)).collect();
        Ok(SecretBytes::from(jwks(&keys)))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{input, text};
    use super::super::{Format, jwk::Jwk, pem::Pem, public_pem::PublicPem};
    use super::*;
    use crate::generate::{Generator, PrivateKey};

    #[test]
    fn key_formats() {
        let current = Generator::Ed25519.generate().unwrap();
        let previous = Generator::Ed25519.generate().unwrap();
        let previous_public = PrivateKey::parse(&previous).unwrap().public_key();
        let version = crate::secret::Version::new(1, current);
        let render = |format: Format, previous: Option<&PublicKey>| {
            text(format.render(&input(&version, previous)).unwrap())
        };

        let pem = render(Format::Pem(Pem), None);
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{pem}");
        let public = render(Format::PublicPem(PublicPem), None);
        assert!(public.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{public}");
        let jwk: serde_json::Value = serde_json::from_str(&render(Format::Jwk(Jwk), None)).unwrap();
        assert_eq!((jwk["kty"].as_str(), jwk["crv"].as_str()), (Some("OKP"), Some("Ed25519")));
        assert!(jwk.get("d").is_none(), "a JWK delivery carries the public key only");

        let set = |previous| -> Vec<String> {
            let set: serde_json::Value = serde_json::from_str(&render(Format::Jwks(Jwks), previous)).unwrap();
            set["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap().to_string()).collect()
        };
        assert_eq!(set(None), vec![jwk["kid"].as_str().unwrap().to_string()]);
        assert_eq!(set(Some(&previous_public)), vec![jwk["kid"].as_str().unwrap().to_string(), previous_public.kid()]);

        let not_a_key = crate::secret::Version::new(1, SecretBytes::copy_from(b"sekrit-not-a-key"));
        let err = Jwks.render(&input(&not_a_key, None)).unwrap_err();
        assert!(matches!(err, RenderError::NotAKey { .. }) && !err.to_string().contains("sekrit"), "{err}");
    }
}
