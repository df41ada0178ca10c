//! The JWT-bearer assertion a service account signs to get an access token (RFC 7523), checked
//! the way Google's token endpoint checks it.
//!
//! Input is exactly what gcp_auth 0.12.7 sends (CONTRACT §13): header `{"alg":"RS256","typ":"JWT"}`
//! without `kid`, claims `iss`/`aud`/`exp`/`iat`/`scope` (and `"sub":null`), each segment in
//! *padded* base64url. Strict JWT libraries reject the padding; this module accepts padded and
//! unpadded segments. It is pure: the caller supplies the issuer's public keys and the time.

use aws_lc_rs::signature::{RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};
use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde::Deserialize;

/// Base64url that takes the segment with or without `=` padding.
const URL_SAFE_ANY_PADDING: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Google refuses assertions valid for more than an hour, and tolerates a little clock skew
/// on `iat`. The skew allowance is a design choice; Google does not publish its value.
const MAX_LIFETIME_SECONDS: i64 = 3600;
const ALLOWED_SKEW_SECONDS: i64 = 300;

/// Why an assertion was refused. The `Display` text is the OAuth `error_description`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum JwtError {
    #[error("Invalid JWT: {0}")]
    Malformed(&'static str),
    #[error("Invalid JWT: unsupported algorithm {0:?}; only RS256 is accepted")]
    Algorithm(String),
    #[error("Invalid grant: account not found")]
    UnknownIssuer,
    #[error("Invalid JWT Signature.")]
    Signature,
    #[error("Invalid JWT: Failed audience check. The right audience is {expected}")]
    Audience { expected: String },
    #[error(
        "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable \
         timeframe. Check your iat and exp values in the JWT claim."
    )]
    Timeframe,
}

#[derive(Debug, Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    typ: Option<String>,
}

/// The claims the emulator reads; others (`sub`, `kid`…) are ignored as Google ignores them
/// for this grant.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub(crate) struct Claims {
    pub(crate) iss: String,
    pub(crate) aud: String,
    pub(crate) exp: i64,
    pub(crate) iat: i64,
    #[serde(default)]
    pub(crate) scope: Option<String>,
}

/// A parsed assertion whose signature has not been checked yet: the issuer must be read
/// first to find the key.
#[derive(Debug)]
pub(crate) struct Unverified<'a> {
    pub(crate) claims: Claims,
    signing_input: &'a str,
    signature: Vec<u8>,
}

pub(crate) fn decode_segment(segment: &str) -> Result<Vec<u8>, JwtError> {
    URL_SAFE_ANY_PADDING.decode(segment).map_err(|_| JwtError::Malformed("a segment is not base64url"))
}

pub(crate) fn parse(assertion: &str) -> Result<Unverified<'_>, JwtError> {
    let mut parts = assertion.split('.');
    let (Some(header), Some(claims), Some(signature), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed("expected three dot-separated segments"));
    };
    let header: Header = serde_json::from_slice(&decode_segment(header)?)
        .map_err(|_| JwtError::Malformed("the header is not a JSON object with alg"))?;
    if header.alg != "RS256" {
        return Err(JwtError::Algorithm(header.alg));
    }
    if header.typ.as_deref().is_some_and(|t| t != "JWT") {
        return Err(JwtError::Malformed("typ must be JWT"));
    }
    let claims: Claims = serde_json::from_slice(&decode_segment(claims)?)
        .map_err(|_| JwtError::Malformed("the claims need iss and aud strings and exp and iat numbers"))?;
    let signing_input_len = assertion.len() - signature.len() - 1;
    Ok(Unverified { claims, signing_input: &assertion[..signing_input_len], signature: decode_segment(signature)? })
}

impl Unverified<'_> {
    /// RSASSA-PKCS1-v1_5 with SHA-256 against any of the issuer's keys (PKCS#1 RSAPublicKey
    /// DER). gcp_auth sends no `kid`, so every registered key is tried.
    pub(crate) fn verify_signature(&self, public_keys: &[Vec<u8>]) -> Result<(), JwtError> {
        let verified = public_keys.iter().any(|key| {
            UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, key)
                .verify(self.signing_input.as_bytes(), &self.signature)
                .is_ok()
        });
        if verified { Ok(()) } else { Err(JwtError::Signature) }
    }
}

impl Claims {
    /// `aud` must be the token URI; `exp` in the future; `iat` not in the future beyond skew;
    /// and the assertion may live at most an hour.
    pub(crate) fn check(&self, token_uri: &str, now: i64) -> Result<(), JwtError> {
        if self.aud != token_uri {
            return Err(JwtError::Audience { expected: token_uri.to_owned() });
        }
        let expired = self.exp <= now;
        let issued_in_future = self.iat > now + ALLOWED_SKEW_SECONDS;
        let too_long = self.exp - self.iat > MAX_LIFETIME_SECONDS || self.exp < self.iat;
        if expired || issued_in_future || too_long {
            return Err(JwtError::Timeframe);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};

    fn assertion(header: &str, claims: &str, engine: &GeneralPurpose) -> String {
        format!("{}.{}.{}", engine.encode(header), engine.encode(claims), engine.encode(b"sig"))
    }

    const CLAIMS: &str = r#"{"iss":"a@p.iam.gserviceaccount.com","aud":"http://127.0.0.1:1/token","exp":1003595,"iat":1000000,"sub":null,"scope":"https://www.googleapis.com/auth/cloud-platform"}"#;

    #[test]
    fn parses_padded_and_unpadded_segments() {
        for engine in [&URL_SAFE, &URL_SAFE_NO_PAD] {
            let text = assertion(r#"{"alg":"RS256","typ":"JWT"}"#, CLAIMS, engine);
            let parsed = parse(&text).expect("parses");
            assert_eq!(parsed.claims.iss, "a@p.iam.gserviceaccount.com");
            assert_eq!(parsed.signature, b"sig");
            assert!(text.starts_with(parsed.signing_input));
        }
    }

    #[test]
    fn rejects_other_algorithms_and_shapes() {
        let none = assertion(r#"{"alg":"none"}"#, CLAIMS, &URL_SAFE);
        assert_eq!(parse(&none).unwrap_err(), JwtError::Algorithm("none".into()));
        assert!(matches!(parse("a.b"), Err(JwtError::Malformed(_))));
        assert!(matches!(parse("a.b.c.d"), Err(JwtError::Malformed(_))));
        let no_iss = assertion(r#"{"alg":"RS256"}"#, r#"{"aud":"x","exp":1,"iat":0}"#, &URL_SAFE);
        assert!(matches!(parse(&no_iss), Err(JwtError::Malformed(_))));
    }

    #[test]
    fn claim_timing_rules() {
        let claims: Claims = serde_json::from_str(CLAIMS).unwrap();
        let aud = "http://127.0.0.1:1/token";
        assert_eq!(claims.check(aud, 1_000_010), Ok(()));
        assert_eq!(claims.check(aud, 1_003_595), Err(JwtError::Timeframe), "expired");
        assert_eq!(claims.check(aud, 999_800), Ok(()), "iat within skew");
        assert_eq!(claims.check(aud, 990_000), Err(JwtError::Timeframe), "iat far ahead");
        assert!(matches!(
            claims.check("https://oauth2.googleapis.com/token", 1_000_010),
            Err(JwtError::Audience { .. })
        ));
        let long = Claims { exp: claims.iat + 7200, ..claims };
        assert_eq!(long.check(aud, 1_000_010), Err(JwtError::Timeframe));
    }
}
