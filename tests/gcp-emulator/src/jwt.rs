//! The two JWTs a service-account key signs, checked the way Google checks them.
//!
//! - The **JWT-bearer assertion** (RFC 7523) posted to the token endpoint, exactly as gcp_auth
//!   0.12.7 signs it (CONTRACT §13): header `{"alg":"RS256","typ":"JWT"}` without `kid`, claims
//!   `iss`/`aud`/`exp`/`iat`/`scope` (and `"sub":null`), each segment in *padded* base64url.
//!   Strict JWT libraries reject the padding; this module accepts padded and unpadded segments.
//! - The **self-signed JWT** sent directly as the bearer token (Google AIP-4111), as Google's
//!   own client libraries sign it: header with `kid` = the key file's `private_key_id`, claims
//!   `iss` = `sub` = the account's email, `aud` = the service's URL (or a `scope` claim
//!   instead), `iat`, and `exp` an hour later.
//!
//! Both share one lifetime rule. The module is pure: the caller supplies the issuer's public
//! keys and the time.

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};
use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// Base64url that takes the segment with or without `=` padding.
const URL_SAFE_ANY_PADDING: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Google refuses JWTs valid for more than an hour, and tolerates a little clock skew on
/// `iat`. The skew allowance is a design choice; Google does not publish its value.
const MAX_LIFETIME_SECONDS: i64 = 3600;
const ALLOWED_SKEW_SECONDS: i64 = 300;

/// The audience Google's client libraries put in a self-signed JWT for Secret Manager
/// (`https://[API_ENDPOINT]/` with the default endpoint, whatever endpoint the client calls).
pub(crate) const SERVICE_AUDIENCE: &str = "https://secretmanager.googleapis.com/";

/// Why a JWT was refused. For the token endpoint the `Display` text is the OAuth
/// `error_description`; for a self-signed JWT it is only logged (Google's 401 says no more
/// than "invalid authentication credentials").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum JwtError {
    #[error("Invalid JWT: {0}")]
    Malformed(&'static str),
    #[error("Invalid JWT: unsupported algorithm {0:?}")]
    Algorithm(String),
    #[error("Invalid grant: account not found")]
    UnknownIssuer,
    #[error("Invalid JWT: no registered key has the key ID in the header's kid")]
    UnknownKey,
    #[error("Invalid JWT Signature.")]
    Signature,
    #[error("Invalid JWT: Failed audience check. The right audience is {expected}")]
    Audience { expected: String },
    #[error("Invalid JWT: iss and sub must both be the service account's email")]
    Subject,
    #[error(
        "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable \
         timeframe. Check your iat and exp values in the JWT claim."
    )]
    Timeframe,
    /// Well formed and in its timeframe, but past `exp`: the one failure a client can fix by
    /// signing a new JWT, and the one Google reports with its own reason.
    #[error("Invalid JWT: the token has expired")]
    Expired,
}

#[derive(Debug, Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    typ: Option<String>,
    #[serde(default)]
    kid: Option<String>,
}

/// The claims of a token-endpoint assertion. Others (`sub`, …) are ignored, as Google
/// ignores them for this grant.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub(crate) struct Claims {
    pub(crate) iss: String,
    pub(crate) aud: String,
    pub(crate) exp: i64,
    pub(crate) iat: i64,
    #[serde(default)]
    pub(crate) scope: Option<String>,
}

/// The claims of a self-signed JWT used as an access token.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub(crate) struct AccessClaims {
    pub(crate) iss: String,
    #[serde(default)]
    pub(crate) sub: Option<String>,
    #[serde(default)]
    pub(crate) aud: Option<String>,
    pub(crate) exp: i64,
    pub(crate) iat: i64,
    #[serde(default)]
    pub(crate) scope: Option<String>,
}

/// A parsed JWT whose signature has not been checked yet: the issuer (or `kid`) must be read
/// first to find the key.
#[derive(Debug)]
pub(crate) struct Unverified<'a, C> {
    pub(crate) claims: C,
    /// The header's `kid`, when there is one.
    pub(crate) key_id: Option<String>,
    /// The header's `alg`: `RS256`, or `ES256` where [`parse_signed_with`] allowed it.
    pub(crate) algorithm: String,
    signing_input: &'a str,
    signature: Vec<u8>,
}

pub(crate) fn decode_segment(segment: &str) -> Result<Vec<u8>, JwtError> {
    URL_SAFE_ANY_PADDING.decode(segment).map_err(|_| JwtError::Malformed("a segment is not base64url"))
}

/// Splits, decodes and reads a JWT into claims of type `C`; checks only its shape and that
/// `alg` is RS256.
pub(crate) fn parse<C: DeserializeOwned>(jwt: &str) -> Result<Unverified<'_, C>, JwtError> {
    parse_signed_with(jwt, &["RS256"])
}

/// [`parse`] for a JWT whose `alg` may be any of `algorithms` (`RS256`, `ES256`).
pub(crate) fn parse_signed_with<'a, C: DeserializeOwned>(
    jwt: &'a str,
    algorithms: &[&str],
) -> Result<Unverified<'a, C>, JwtError> {
    let mut parts = jwt.split('.');
    let (Some(header), Some(claims), Some(signature), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed("expected three dot-separated segments"));
    };
    let header: Header = serde_json::from_slice(&decode_segment(header)?)
        .map_err(|_| JwtError::Malformed("the header is not a JSON object with alg"))?;
    if !algorithms.contains(&header.alg.as_str()) {
        return Err(JwtError::Algorithm(header.alg));
    }
    if header.typ.as_deref().is_some_and(|t| t != "JWT") {
        return Err(JwtError::Malformed("typ must be JWT"));
    }
    let claims: C = serde_json::from_slice(&decode_segment(claims)?)
        .map_err(|_| JwtError::Malformed("the claims need iss and aud strings and exp and iat numbers"))?;
    let signing_input_len = jwt.len() - signature.len() - 1;
    Ok(Unverified {
        claims,
        key_id: header.kid,
        algorithm: header.alg,
        signing_input: &jwt[..signing_input_len],
        signature: decode_segment(signature)?,
    })
}

impl<C> Unverified<'_, C> {
    /// RSASSA-PKCS1-v1_5 with SHA-256 against any of `public_keys` (PKCS#1 RSAPublicKey DER).
    pub(crate) fn verify_signature<'k>(&self, public_keys: impl IntoIterator<Item = &'k [u8]>) -> Result<(), JwtError> {
        let verified = public_keys.into_iter().any(|key| {
            UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, key)
                .verify(self.signing_input.as_bytes(), &self.signature)
                .is_ok()
        });
        if verified { Ok(()) } else { Err(JwtError::Signature) }
    }

    /// ECDSA P-256 with SHA-256, the signature as JOSE writes it (r ‖ s, 64 bytes), against an
    /// uncompressed public point.
    pub(crate) fn verify_es256(&self, public_point: &[u8]) -> Result<(), JwtError> {
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, public_point)
            .verify(self.signing_input.as_bytes(), &self.signature)
            .map_err(|_| JwtError::Signature)
    }
}

/// The lifetime rule both kinds share: `iat` not in the future beyond the skew allowance,
/// `exp` after `iat` and at most an hour later, and `exp` not yet reached.
fn check_timeframe(iat: i64, exp: i64, now: i64) -> Result<(), JwtError> {
    let issued_in_future = iat > now + ALLOWED_SKEW_SECONDS;
    let too_long = exp - iat > MAX_LIFETIME_SECONDS || exp < iat;
    if issued_in_future || too_long {
        return Err(JwtError::Timeframe);
    }
    if exp <= now {
        return Err(JwtError::Expired);
    }
    Ok(())
}

impl Claims {
    /// `aud` must be the token URI, and the timeframe rule holds. An expired assertion is a
    /// timeframe error here, as the token endpoint words it.
    pub(crate) fn check(&self, token_uri: &str, now: i64) -> Result<(), JwtError> {
        if self.aud != token_uri {
            return Err(JwtError::Audience { expected: token_uri.to_owned() });
        }
        check_timeframe(self.iat, self.exp, now).map_err(|_| JwtError::Timeframe)
    }
}

/// What a self-signed JWT grants, once checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AccessGrant {
    /// Addressed to Secret Manager by `aud`, or by a `scope` that includes cloud-platform.
    Service,
    /// A `scope` claim without cloud-platform (and no `aud` to stand in for it).
    OtherScopes,
}

impl AccessClaims {
    /// `iss` = `sub`; `aud`, if present, is Secret Manager's URL (with or without the
    /// trailing slash); without `aud` a `scope` claim is required; the timeframe rule holds.
    pub(crate) fn check(&self, cloud_platform_scope: &str, now: i64) -> Result<AccessGrant, JwtError> {
        if self.sub.as_deref() != Some(self.iss.as_str()) {
            return Err(JwtError::Subject);
        }
        let audience_ok = |aud: &str| aud == SERVICE_AUDIENCE || Some(aud) == SERVICE_AUDIENCE.strip_suffix('/');
        if let Some(aud) = &self.aud
            && !audience_ok(aud)
        {
            return Err(JwtError::Audience { expected: SERVICE_AUDIENCE.to_owned() });
        }
        check_timeframe(self.iat, self.exp, now)?;
        match (&self.aud, &self.scope) {
            (_, Some(scope)) if scope.split_whitespace().any(|s| s == cloud_platform_scope) => Ok(AccessGrant::Service),
            (Some(_), _) => Ok(AccessGrant::Service),
            (None, Some(_)) => Ok(AccessGrant::OtherScopes),
            (None, None) => Err(JwtError::Audience { expected: SERVICE_AUDIENCE.to_owned() }),
        }
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
    const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

    #[test]
    fn parses_padded_and_unpadded_segments() {
        for engine in [&URL_SAFE, &URL_SAFE_NO_PAD] {
            let text = assertion(r#"{"alg":"RS256","typ":"JWT"}"#, CLAIMS, engine);
            let parsed = parse::<Claims>(&text).expect("parses");
            assert_eq!(parsed.claims.iss, "a@p.iam.gserviceaccount.com");
            assert_eq!(parsed.key_id, None);
            assert_eq!(parsed.signature, b"sig");
            assert!(text.starts_with(parsed.signing_input));
        }
    }

    #[test]
    fn reads_the_key_id_from_the_header() {
        let text = assertion(r#"{"typ":"JWT","alg":"RS256","kid":"6bd9"}"#, CLAIMS, &URL_SAFE_NO_PAD);
        assert_eq!(parse::<AccessClaims>(&text).expect("parses").key_id.as_deref(), Some("6bd9"));
    }

    #[test]
    fn rejects_other_algorithms_and_shapes() {
        let none = assertion(r#"{"alg":"none"}"#, CLAIMS, &URL_SAFE);
        assert_eq!(parse::<Claims>(&none).unwrap_err(), JwtError::Algorithm("none".into()));
        assert!(matches!(parse::<Claims>("a.b"), Err(JwtError::Malformed(_))));
        assert!(matches!(parse::<Claims>("a.b.c.d"), Err(JwtError::Malformed(_))));
        assert!(matches!(parse::<Claims>("ya29.emulator.abc"), Err(JwtError::Malformed(_))), "an issued token");
        let no_iss = assertion(r#"{"alg":"RS256"}"#, r#"{"aud":"x","exp":1,"iat":0}"#, &URL_SAFE);
        assert!(matches!(parse::<Claims>(&no_iss), Err(JwtError::Malformed(_))));
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

    fn access(aud: Option<&str>, scope: Option<&str>) -> AccessClaims {
        AccessClaims {
            iss: "a@p.iam.gserviceaccount.com".into(),
            sub: Some("a@p.iam.gserviceaccount.com".into()),
            aud: aud.map(str::to_owned),
            exp: 1_003_600,
            iat: 1_000_000,
            scope: scope.map(str::to_owned),
        }
    }

    #[test]
    fn self_signed_audience_and_scope_rules() {
        let now = 1_000_010;
        type Row<'a> = (Option<&'a str>, Option<&'a str>, Result<AccessGrant, ()>);
        let table: [Row; 8] = [
            (Some("https://secretmanager.googleapis.com/"), None, Ok(AccessGrant::Service)),
            (Some("https://secretmanager.googleapis.com"), None, Ok(AccessGrant::Service)),
            (Some("https://pubsub.googleapis.com/"), None, Err(())),
            (Some("http://127.0.0.1:1/"), None, Err(())),
            (None, Some(SCOPE), Ok(AccessGrant::Service)),
            (None, Some("openid https://www.googleapis.com/auth/cloud-platform"), Ok(AccessGrant::Service)),
            (None, Some("openid"), Ok(AccessGrant::OtherScopes)),
            (None, None, Err(())),
        ];
        for (aud, scope, expected) in table {
            let got = access(aud, scope).check(SCOPE, now).map_err(|_| ());
            assert_eq!(got, expected, "aud {aud:?} scope {scope:?}");
        }
    }

    #[test]
    fn self_signed_subject_and_timing_rules() {
        let good = access(Some(SERVICE_AUDIENCE), None);
        assert_eq!(good.check(SCOPE, 1_003_600), Err(JwtError::Expired));
        assert_eq!(good.check(SCOPE, 999_800), Ok(AccessGrant::Service), "iat within skew");
        assert_eq!(good.check(SCOPE, 990_000), Err(JwtError::Timeframe), "iat far ahead");
        let long = AccessClaims { exp: good.iat + 3601, ..good.clone() };
        assert_eq!(long.check(SCOPE, 1_000_010), Err(JwtError::Timeframe));
        let no_sub = AccessClaims { sub: None, ..good.clone() };
        assert_eq!(no_sub.check(SCOPE, 1_000_010), Err(JwtError::Subject));
        let other_sub = AccessClaims { sub: Some("b@p.iam.gserviceaccount.com".into()), ..good };
        assert_eq!(other_sub.check(SCOPE, 1_000_010), Err(JwtError::Subject));
    }
}
