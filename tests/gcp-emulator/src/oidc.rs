//! The test OIDC issuer: the identity provider whose tokens the emulator's workload identity
//! pools trust, standing in for a Kubernetes API server, a CI system or a node's identity
//! agent.
//!
//! It lives at `BASE/oidc` and serves what an OIDC issuer serves for token verification:
//! `/.well-known/openid-configuration` and its JWKS (`/oidc/jwks`), with one RS256 and one ES256
//! signing key. [`TestIssuer::mint`] signs subject tokens (the JWTs a workload presents to STS);
//! the exchange verifies them against these keys exactly as it would against any issuer's
//! JWKS. The keys are made on first use (RSA generation costs tens of milliseconds, and most
//! emulators never federate), and kept for the emulator's life, so a token minted before a
//! `reset` still verifies after it.
//!
//! Unlike the service-account side of the emulator, the issuer holds private keys: it is the
//! identity provider. Its `Debug` shows key IDs only.

use std::fmt;
use std::sync::OnceLock;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _, RSA_PKCS1_SHA256};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

/// The signing algorithm of a minted subject token. Google's STS accepts both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SigningAlgorithm {
    #[default]
    Rs256,
    Es256,
}

impl SigningAlgorithm {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SigningAlgorithm::Rs256 => "RS256",
            SigningAlgorithm::Es256 => "ES256",
        }
    }
}

/// The issuer's two key pairs, made together on first use.
struct Keys {
    rsa: RsaKeyPair,
    rsa_id: String,
    ec: EcdsaKeyPair,
    ec_id: String,
}

/// Why the issuer cannot sign: aws-lc failed to make or use a key.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the test OIDC issuer could not {0}")]
pub(crate) struct IssuerError(&'static str);

#[derive(Default)]
pub(crate) struct TestIssuer {
    keys: OnceLock<Result<Keys, IssuerError>>,
}

impl fmt::Debug for TestIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids = match self.keys.get() {
            Some(Ok(keys)) => vec![keys.rsa_id.as_str(), keys.ec_id.as_str()],
            _ => Vec::new(),
        };
        f.debug_struct("TestIssuer").field("key_ids", &ids).finish_non_exhaustive()
    }
}

fn generate() -> Result<Keys, IssuerError> {
    let rsa = RsaKeyPair::generate(KeySize::Rsa2048).map_err(|_| IssuerError("generate its RSA key"))?;
    let ec =
        EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).map_err(|_| IssuerError("generate its EC key"))?;
    let mut id = [0u8; 8];
    aws_lc_rs::rand::fill(&mut id).map_err(|_| IssuerError("draw key IDs"))?;
    let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
    Ok(Keys { rsa, rsa_id: format!("rs-{id}"), ec, ec_id: format!("es-{id}") })
}

impl TestIssuer {
    fn keys(&self) -> Result<&Keys, IssuerError> {
        self.keys.get_or_init(generate).as_ref().map_err(Clone::clone)
    }

    /// Signs `claims` as a compact JWT with the issuer's key for `algorithm`. `key_id` replaces
    /// the header's `kid` (tests of unknown keys); `foreign` signs with a key the issuer does
    /// not publish (tests of bad signatures).
    pub(crate) fn mint(
        &self,
        claims: &Value,
        algorithm: SigningAlgorithm,
        key_id: Option<&str>,
        foreign: bool,
    ) -> Result<String, IssuerError> {
        // A foreign key claims the issuer's own kid: only its signature gives it away.
        let kid = match key_id {
            Some(kid) => kid.to_owned(),
            None => self.keys()?.id_for(algorithm).to_owned(),
        };
        let stranger;
        let keys = if foreign {
            stranger = generate()?;
            &stranger
        } else {
            self.keys()?
        };
        let header = json!({ "alg": algorithm.as_str(), "typ": "JWT", "kid": kid });
        let input =
            format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
        let signature = match algorithm {
            SigningAlgorithm::Rs256 => {
                let mut signature = vec![0; keys.rsa.public_modulus_len()];
                keys.rsa
                    .sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), input.as_bytes(), &mut signature)
                    .map_err(|_| IssuerError("sign with RS256"))?;
                signature
            }
            SigningAlgorithm::Es256 => keys
                .ec
                .sign(&SystemRandom::new(), input.as_bytes())
                .map_err(|_| IssuerError("sign with ES256"))?
                .as_ref()
                .to_vec(),
        };
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }

    /// The published key for `kid`, as the verifier needs it: PKCS#1 DER for RSA, the
    /// uncompressed point for EC.
    pub(crate) fn public_key(&self, key_id: &str) -> Option<(SigningAlgorithm, Vec<u8>)> {
        let keys = self.keys().ok()?;
        if key_id == keys.rsa_id {
            Some((SigningAlgorithm::Rs256, keys.rsa.public_key().as_ref().to_vec()))
        } else if key_id == keys.ec_id {
            Some((SigningAlgorithm::Es256, keys.ec.public_key().as_ref().to_vec()))
        } else {
            None
        }
    }

    /// The JWK Set the issuer publishes at `/oidc/jwks`.
    pub(crate) fn jwks(&self) -> Result<Value, IssuerError> {
        let keys = self.keys()?;
        let rsa = keys.rsa.public_key();
        let point = keys.ec.public_key().as_ref();
        Ok(json!({ "keys": [
            {
                "kty": "RSA", "use": "sig", "alg": "RS256", "kid": keys.rsa_id,
                "n": URL_SAFE_NO_PAD.encode(rsa.modulus().big_endian_without_leading_zero()),
                "e": URL_SAFE_NO_PAD.encode(rsa.exponent().big_endian_without_leading_zero()),
            },
            {
                "kty": "EC", "use": "sig", "alg": "ES256", "kid": keys.ec_id, "crv": "P-256",
                "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
            },
        ]}))
    }
}

impl Keys {
    fn id_for(&self, algorithm: SigningAlgorithm) -> &str {
        match algorithm {
            SigningAlgorithm::Rs256 => &self.rsa_id,
            SigningAlgorithm::Es256 => &self.ec_id,
        }
    }
}

/// The discovery document at `ISSUER/.well-known/openid-configuration`.
pub(crate) fn discovery(issuer: &str) -> Value {
    json!({
        "issuer": issuer,
        "jwks_uri": format!("{issuer}/jwks"),
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::{self, decode_segment};

    #[test]
    fn minted_tokens_verify_against_the_published_keys_and_foreign_ones_do_not() {
        let issuer = TestIssuer::default();
        let claims = json!({ "iss": "http://127.0.0.1:1/oidc", "sub": "node-1", "aud": "x", "iat": 1, "exp": 2 });
        for algorithm in [SigningAlgorithm::Rs256, SigningAlgorithm::Es256] {
            let token = issuer.mint(&claims, algorithm, None, false).unwrap();
            let parsed = jwt::parse_signed_with::<Value>(&token, &["RS256", "ES256"]).unwrap();
            assert_eq!(parsed.algorithm, algorithm.as_str());
            let (published, key) = issuer.public_key(parsed.key_id.as_deref().unwrap()).unwrap();
            assert_eq!(published, algorithm);
            let verified = match algorithm {
                SigningAlgorithm::Rs256 => parsed.verify_signature([key.as_slice()]),
                SigningAlgorithm::Es256 => parsed.verify_es256(&key),
            };
            assert_eq!(verified, Ok(()), "{algorithm:?}");

            let forged = issuer.mint(&claims, algorithm, None, true).unwrap();
            let parsed = jwt::parse_signed_with::<Value>(&forged, &["RS256", "ES256"]).unwrap();
            let (_, key) = issuer.public_key(parsed.key_id.as_deref().unwrap()).expect("claims the issuer's kid");
            let verified = match algorithm {
                SigningAlgorithm::Rs256 => parsed.verify_signature([key.as_slice()]),
                SigningAlgorithm::Es256 => parsed.verify_es256(&key),
            };
            assert_eq!(verified, Err(jwt::JwtError::Signature), "{algorithm:?}");
        }
    }

    #[test]
    fn the_jwks_publishes_both_keys_without_private_parts() {
        let issuer = TestIssuer::default();
        let jwks = issuer.jwks().unwrap();
        let keys = jwks["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(decode_segment(keys[0]["e"].as_str().unwrap()).unwrap(), vec![1, 0, 1]);
        assert_eq!(decode_segment(keys[0]["n"].as_str().unwrap()).unwrap().len(), 256);
        assert_eq!(decode_segment(keys[1]["x"].as_str().unwrap()).unwrap().len(), 32);
        for key in keys {
            assert!(key.get("d").is_none() && key.get("p").is_none());
        }
        assert!(!format!("{issuer:?}").contains("PRIVATE"));
    }
}
