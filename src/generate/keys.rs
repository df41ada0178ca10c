//! Asymmetric keys: read a private key out of a secret value, write it back as PKCS#8 PEM, and
//! derive its public half as SPKI PEM and as a JWK whose `kid` is the same on every node.
//!
//! Private material lives only in zeroized buffers and in aws-lc's key objects (which cleanse
//! their memory when freed). Nothing here formats private bytes: [`PrivateKey`]'s `Debug` shows
//! the kind alone, and [`KeyError`] describes the shape of bad input without quoting any of it,
//! because the input is a secret value that may be a key in a format keyturn does not read.
//! PEM is parsed and written here rather than by a crate: the subset keys need is small, and it
//! lets every intermediate buffer be a `Zeroizing` one.

use std::fmt;

use aws_lc_rs::digest;
use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::{
    self, ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, EcdsaSigningAlgorithm,
    Ed25519KeyPair, KeyPair, UnparsedPublicKey, VerificationAlgorithm,
};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use zeroize::Zeroizing;

use crate::secret::SecretBytes;

/// The kinds of asymmetric key keyturn makes and reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Ed25519,
    EcdsaP256,
    EcdsaP384,
    /// Any size aws-lc accepts when reading (2048 to 8192 bits); 2048, 3072 or 4096 when making.
    Rsa {
        bits: usize,
    },
}

/// The generator names (`ecdsa-p256`, `rsa-3072`), so messages speak the policy's words.
impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyKind::Ed25519 => f.write_str("ed25519"),
            KeyKind::EcdsaP256 => f.write_str("ecdsa-p256"),
            KeyKind::EcdsaP384 => f.write_str("ecdsa-p384"),
            KeyKind::Rsa { bits } => write!(f, "rsa-{bits}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("not a private key: neither a PEM block nor DER")]
    NotKey,
    #[error("malformed PEM: {0}")]
    MalformedPem(&'static str),
    #[error("PEM block is {0}, not a private key")]
    NotPrivateKey(&'static str),
    #[error("PEM block is an OpenSSH private key; convert it to PKCS#8 (ssh-keygen -p -m PKCS8)")]
    OpenSsh,
    #[error("PEM label is not PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY")]
    UnsupportedLabel,
    #[error("private key is encrypted; store it as unencrypted PKCS#8 (openssl pkcs8 -topk8 -nocrypt)")]
    Encrypted,
    #[error("not a PKCS#8 key of a supported kind (Ed25519, ECDSA P-256 or P-384, RSA of 2048 to 8192 bits)")]
    Unsupported,
    #[error("RSA PRIVATE KEY block is not a PKCS#1 RSA key of 2048 to 8192 bits")]
    BadPkcs1,
    #[error("EC PRIVATE KEY block is not a SEC1 key on P-256 or P-384")]
    BadSec1,
    #[error("{0} keys cannot be generated")]
    UnsupportedSize(KeyKind),
    #[error("key generation failed")]
    Generate,
    #[error("cannot encode the key")]
    Encode,
}

/// How the key was written where it was read from. Kept so that a policy's check can insist on
/// PKCS#8, the form keyturn writes and other tools expect, while reading still accepts the
/// older forms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Pkcs8,
    Pkcs1,
    Sec1,
}

/// DER that holds private material.
type Der = Zeroizing<Vec<u8>>;

enum Pair {
    Ed25519(Ed25519KeyPair),
    Ecdsa(EcdsaKeyPair, KeyKind),
    Rsa(RsaKeyPair),
}

/// A private key of a supported kind, ready to sign. `Debug` shows its kind and nothing else.
pub struct PrivateKey {
    kind: KeyKind,
    /// The key as PKCS#8 v1 DER, the one form [`PrivateKey::pkcs8_pem`] hands out.
    pkcs8: Der,
    /// aws-lc's parsed key, kept so signing does not parse again.
    pair: Pair,
    /// Derived once, since every public view (PEM, JWK, kid) needs it.
    public: PublicKey,
    source: Source,
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKey").field("kind", &self.kind).finish_non_exhaustive()
    }
}

impl PrivateKey {
    /// Reads a PKCS#8 key, as PEM ("PRIVATE KEY") or DER (v1 or v2), or a PEM PKCS#1
    /// ("RSA PRIVATE KEY") or SEC1 ("EC PRIVATE KEY") key. Text around the PEM block and
    /// "EC PARAMETERS" blocks, as openssl writes them, are skipped.
    pub fn parse(value: &SecretBytes) -> Result<PrivateKey, KeyError> {
        let bytes = value.expose();
        let Some((label, der)) = pem_private_key(bytes)? else {
            // DER is one ASN.1 SEQUENCE; anything else is not worth trial-parsing.
            if bytes.first() == Some(&0x30) {
                return Self::from_pkcs8(bytes);
            }
            return Err(KeyError::NotKey);
        };
        match label {
            Source::Pkcs8 => Self::from_pkcs8(&der),
            Source::Pkcs1 => {
                let pair = RsaKeyPair::from_der(&der).map_err(|_| KeyError::BadPkcs1)?;
                Self::new(Pair::Rsa(pair), Source::Pkcs1)
            }
            Source::Sec1 => {
                let (pair, kind) = ecdsa_algorithms()
                    .into_iter()
                    .find_map(|(algorithm, kind)| {
                        Some((EcdsaKeyPair::from_private_key_der(algorithm, &der).ok()?, kind))
                    })
                    .ok_or(KeyError::BadSec1)?;
                Self::new(Pair::Ecdsa(pair, kind), Source::Sec1)
            }
        }
    }

    /// A new key of `kind`, from aws-lc's generator.
    pub(super) fn generate(kind: KeyKind) -> Result<PrivateKey, KeyError> {
        let pair = match kind {
            KeyKind::Ed25519 => Pair::Ed25519(Ed25519KeyPair::generate().map_err(|_| KeyError::Generate)?),
            KeyKind::EcdsaP256 => Pair::Ecdsa(
                EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).map_err(|_| KeyError::Generate)?,
                kind,
            ),
            KeyKind::EcdsaP384 => Pair::Ecdsa(
                EcdsaKeyPair::generate(&ECDSA_P384_SHA384_FIXED_SIGNING).map_err(|_| KeyError::Generate)?,
                kind,
            ),
            KeyKind::Rsa { bits } => {
                let size = match bits {
                    2048 => KeySize::Rsa2048,
                    3072 => KeySize::Rsa3072,
                    4096 => KeySize::Rsa4096,
                    _ => return Err(KeyError::UnsupportedSize(kind)),
                };
                Pair::Rsa(RsaKeyPair::generate(size).map_err(|_| KeyError::Generate)?)
            }
        };
        Self::new(pair, Source::Pkcs8)
    }

    /// The kind is whichever of aws-lc's PKCS#8 parsers accepts the key. Each checks the
    /// algorithm identifier (and curve), so at most one succeeds.
    fn from_pkcs8(der: &[u8]) -> Result<PrivateKey, KeyError> {
        if let Ok(pair) = Ed25519KeyPair::from_pkcs8(der) {
            return Self::new(Pair::Ed25519(pair), Source::Pkcs8);
        }
        for (algorithm, kind) in ecdsa_algorithms() {
            if let Ok(pair) = EcdsaKeyPair::from_pkcs8(algorithm, der) {
                return Self::new(Pair::Ecdsa(pair, kind), Source::Pkcs8);
            }
        }
        if let Ok(pair) = RsaKeyPair::from_pkcs8(der) {
            return Self::new(Pair::Rsa(pair), Source::Pkcs8);
        }
        Err(KeyError::Unsupported)
    }

    fn new(pair: Pair, source: Source) -> Result<PrivateKey, KeyError> {
        let (kind, pkcs8, public) = match &pair {
            Pair::Ed25519(pair) => {
                let public = pair.public_key();
                let jwk = JwkMembers::Okp { x: URL_SAFE_NO_PAD.encode(public.as_ref()) };
                let spki = spki_der(public)?;
                let pkcs8 = Zeroizing::new(pair.to_pkcs8v1().map_err(|_| KeyError::Encode)?.as_ref().to_vec());
                (KeyKind::Ed25519, pkcs8, (spki, jwk))
            }
            Pair::Ecdsa(pair, kind) => {
                let kind = *kind;
                // The uncompressed point, 0x04 || x || y, with x and y the curve's size each.
                let point = pair.public_key().as_ref();
                let size = (point.len() - 1) / 2;
                let jwk = JwkMembers::Ec {
                    crv: if kind == KeyKind::EcdsaP256 { "P-256" } else { "P-384" },
                    x: URL_SAFE_NO_PAD.encode(&point[1..1 + size]),
                    y: URL_SAFE_NO_PAD.encode(&point[1 + size..]),
                };
                let spki = spki_der(pair.public_key())?;
                let pkcs8 = Zeroizing::new(pair.to_pkcs8v1().map_err(|_| KeyError::Encode)?.as_ref().to_vec());
                (kind, pkcs8, (spki, jwk))
            }
            Pair::Rsa(pair) => {
                let public = pair.public_key();
                let jwk = JwkMembers::Rsa {
                    n: URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero()),
                    e: URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero()),
                };
                let spki = spki_der(public)?;
                let der: Pkcs8V1Der<'static> = pair.as_der().map_err(|_| KeyError::Encode)?;
                let pkcs8 = Zeroizing::new(der.as_ref().to_vec());
                (KeyKind::Rsa { bits: pair.public_modulus_len() * 8 }, pkcs8, (spki, jwk))
            }
        };
        let (spki, jwk) = public;
        Ok(PrivateKey { kind, pkcs8, pair, public: PublicKey { kind, spki, jwk }, source })
    }

    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// The key as PKCS#8 v1 PEM, whatever form it was read from.
    pub fn pkcs8_pem(&self) -> SecretBytes {
        let mut pem = pem_encode("PRIVATE KEY", &self.pkcs8);
        SecretBytes::new(std::mem::take(&mut *pem).into_bytes())
    }

    pub fn public_key(&self) -> PublicKey {
        self.public.clone()
    }

    /// A signature in the form JOSE uses for the key's [`PublicKey::alg`]: Ed25519, ECDSA as
    /// fixed-width r || s, RSA as PKCS#1 v1.5 with SHA-256.
    ///
    /// # Panics
    /// If aws-lc cannot sign with a key it already accepted, which only happens when memory
    /// runs out.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        // aws-lc draws its own nonces; the `SecureRandom` arguments exist for ring's API.
        let random = SystemRandom::new();
        match &self.pair {
            Pair::Ed25519(pair) => pair.sign(message).as_ref().to_vec(),
            Pair::Ecdsa(pair, _) => {
                pair.sign(&random, message).expect("ECDSA signing with a valid key").as_ref().to_vec()
            }
            Pair::Rsa(pair) => {
                let mut signature = vec![0; pair.public_modulus_len()];
                pair.sign(&signature::RSA_PKCS1_SHA256, &random, message, &mut signature)
                    .expect("RSA signing with a valid key");
                signature
            }
        }
    }

    /// The legacy form the key was read from ("PKCS#1 RSA PRIVATE KEY"), if it was not PKCS#8.
    pub(super) fn legacy_form(&self) -> Option<&'static str> {
        match self.source {
            Source::Pkcs8 => None,
            Source::Pkcs1 => Some("PKCS#1 \"RSA PRIVATE KEY\""),
            Source::Sec1 => Some("SEC1 \"EC PRIVATE KEY\""),
        }
    }
}

fn ecdsa_algorithms() -> [(&'static EcdsaSigningAlgorithm, KeyKind); 2] {
    [(&ECDSA_P256_SHA256_FIXED_SIGNING, KeyKind::EcdsaP256), (&ECDSA_P384_SHA384_FIXED_SIGNING, KeyKind::EcdsaP384)]
}

fn spki_der(public: &impl AsDer<PublicKeyX509Der<'static>>) -> Result<Vec<u8>, KeyError> {
    Ok(public.as_der().map_err(|_| KeyError::Encode)?.as_ref().to_vec())
}

/// The public half of a [`PrivateKey`]: not secret, so it prints, clones and compares freely.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    kind: KeyKind,
    /// SubjectPublicKeyInfo DER, what "PUBLIC KEY" PEM holds and what aws-lc verifies with.
    spki: Vec<u8>,
    jwk: JwkMembers,
}

/// The members RFC 7638 requires for each key type, already base64url-encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
enum JwkMembers {
    Okp { x: String },
    Ec { crv: &'static str, x: String, y: String },
    Rsa { n: String, e: String },
}

impl JwkMembers {
    /// The RFC 7638 thumbprint: SHA-256 over the required members in lexicographic order, with
    /// no whitespace. Written out by hand because every value is base64url or a fixed name, so
    /// nothing needs escaping, and the order must not depend on serde_json's map features.
    fn thumbprint(&self) -> String {
        let canonical = match self {
            JwkMembers::Okp { x } => format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#),
            JwkMembers::Ec { crv, x, y } => format!(r#"{{"crv":"{crv}","kty":"EC","x":"{x}","y":"{y}"}}"#),
            JwkMembers::Rsa { n, e } => format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#),
        };
        URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, canonical.as_bytes()))
    }
}

impl PublicKey {
    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// The key in a form to store and read back ([`PublicKey::from_stored`]): its kind, SPKI
    /// DER and JWK members, as JSON. Public, so it needs no care; the sealed cache keeps a JWK
    /// set's previous key this way.
    pub fn to_stored(&self) -> Vec<u8> {
        let jwk = match &self.jwk {
            JwkMembers::Okp { x } => serde_json::json!({ "x": x }),
            JwkMembers::Ec { crv, x, y } => serde_json::json!({ "crv": crv, "x": x, "y": y }),
            JwkMembers::Rsa { n, e } => serde_json::json!({ "n": n, "e": e }),
        };
        let stored = serde_json::json!({
            "kind": self.kind.to_string(),
            "spki": URL_SAFE_NO_PAD.encode(&self.spki),
            "jwk": jwk,
        });
        serde_json::to_vec(&stored).expect("json serializes")
    }

    /// A key written by [`PublicKey::to_stored`].
    pub fn from_stored(bytes: &[u8]) -> Result<PublicKey, KeyError> {
        let stored: serde_json::Value = serde_json::from_slice(bytes).map_err(|_| KeyError::NotKey)?;
        let text = |value: &serde_json::Value| value.as_str().map(String::from).ok_or(KeyError::NotKey);
        let kind = match stored["kind"].as_str().ok_or(KeyError::NotKey)? {
            "ed25519" => KeyKind::Ed25519,
            "ecdsa-p256" => KeyKind::EcdsaP256,
            "ecdsa-p384" => KeyKind::EcdsaP384,
            rsa => {
                KeyKind::Rsa { bits: rsa.strip_prefix("rsa-").and_then(|b| b.parse().ok()).ok_or(KeyError::NotKey)? }
            }
        };
        let spki = URL_SAFE_NO_PAD.decode(text(&stored["spki"])?).map_err(|_| KeyError::NotKey)?;
        let jwk = &stored["jwk"];
        let jwk = match kind {
            KeyKind::Ed25519 => JwkMembers::Okp { x: text(&jwk["x"])? },
            KeyKind::EcdsaP256 | KeyKind::EcdsaP384 => JwkMembers::Ec {
                crv: if kind == KeyKind::EcdsaP256 { "P-256" } else { "P-384" },
                x: text(&jwk["x"])?,
                y: text(&jwk["y"])?,
            },
            KeyKind::Rsa { .. } => JwkMembers::Rsa { n: text(&jwk["n"])?, e: text(&jwk["e"])? },
        };
        Ok(PublicKey { kind, spki, jwk })
    }

    pub fn spki_pem(&self) -> String {
        let pem = pem_encode("PUBLIC KEY", &self.spki);
        String::clone(&pem)
    }

    /// The JOSE algorithm this key signs with.
    pub fn alg(&self) -> &'static str {
        match self.kind {
            KeyKind::Ed25519 => "EdDSA",
            KeyKind::EcdsaP256 => "ES256",
            KeyKind::EcdsaP384 => "ES384",
            KeyKind::Rsa { .. } => "RS256",
        }
    }

    /// The RFC 7638 JWK thumbprint: it depends on the key alone, so every node that holds the
    /// key names it the same without coordinating.
    pub fn kid(&self) -> String {
        self.jwk.thumbprint()
    }

    pub fn jwk(&self) -> serde_json::Value {
        let mut jwk = match &self.jwk {
            JwkMembers::Okp { x } => serde_json::json!({ "kty": "OKP", "crv": "Ed25519", "x": x }),
            JwkMembers::Ec { crv, x, y } => serde_json::json!({ "kty": "EC", "crv": crv, "x": x, "y": y }),
            JwkMembers::Rsa { n, e } => serde_json::json!({ "kty": "RSA", "n": n, "e": e }),
        };
        jwk["kid"] = self.kid().into();
        jwk["alg"] = self.alg().into();
        jwk["use"] = "sig".into();
        jwk
    }

    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        // aws-lc reads SPKI DER for every one of these algorithms.
        let algorithm: &'static dyn VerificationAlgorithm = match self.kind {
            KeyKind::Ed25519 => &signature::ED25519,
            KeyKind::EcdsaP256 => &signature::ECDSA_P256_SHA256_FIXED,
            KeyKind::EcdsaP384 => &signature::ECDSA_P384_SHA384_FIXED,
            KeyKind::Rsa { .. } => &signature::RSA_PKCS1_2048_8192_SHA256,
        };
        UnparsedPublicKey::new(algorithm, &self.spki).verify(message, signature).is_ok()
    }
}

/// A JWK Set of `keys` in the order given (current key first), as compact JSON and a newline.
pub fn jwks(keys: &[&PublicKey]) -> String {
    let keys: Vec<serde_json::Value> = keys.iter().map(|key| key.jwk()).collect();
    let mut text = serde_json::json!({ "keys": keys }).to_string();
    text.push('\n');
    text
}

/// PEM with 64-character lines and a trailing newline, built in a buffer sized up front so no
/// copy of the key is left behind by a reallocation.
fn pem_encode(label: &str, der: &[u8]) -> Zeroizing<String> {
    let body_len = der.len().div_ceil(3) * 4;
    let mut body = Zeroizing::new(String::with_capacity(body_len));
    STANDARD.encode_string(der, &mut body);

    let capacity = body_len + body_len.div_ceil(64) + 2 * label.len() + 32;
    let mut pem = Zeroizing::new(String::with_capacity(capacity));
    pem.push_str("-----BEGIN ");
    pem.push_str(label);
    pem.push_str("-----\n");
    for line in body.as_bytes().chunks(64) {
        // base64 is ASCII, so every 64-byte chunk is whole characters.
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END ");
    pem.push_str(label);
    pem.push_str("-----\n");
    debug_assert_eq!(pem.capacity(), capacity, "the PEM buffer must not reallocate");
    pem
}

/// One PEM block: its label and the bytes between the BEGIN and END lines.
struct Block<'a> {
    label: &'a [u8],
    body: &'a [u8],
}

/// Every PEM block in `input`, in order; empty when there is no BEGIN line.
fn pem_blocks(input: &[u8]) -> Result<Vec<Block<'_>>, KeyError> {
    const BEGIN: &[u8] = b"-----BEGIN ";
    const END: &[u8] = b"-----END ";
    const DASHES: &[u8] = b"-----";

    let mut blocks = Vec::new();
    let mut rest = input;
    while let Some(start) = find(rest, BEGIN) {
        let after_begin = &rest[start + BEGIN.len()..];
        let label_len = find(after_begin, DASHES).ok_or(KeyError::MalformedPem("BEGIN line is not closed"))?;
        let label = &after_begin[..label_len];
        if label.contains(&b'\n') {
            return Err(KeyError::MalformedPem("BEGIN line is not closed"));
        }
        let after_label = &after_begin[label_len + DASHES.len()..];
        let body_len = find(after_label, END).ok_or(KeyError::MalformedPem("no END line"))?;
        let body = &after_label[..body_len];
        let after_end = &after_label[body_len + END.len()..];
        if !after_end.starts_with(label) || !after_end[label.len()..].starts_with(DASHES) {
            return Err(KeyError::MalformedPem("END label does not match BEGIN"));
        }
        blocks.push(Block { label, body });
        rest = &after_end[label.len() + DASHES.len()..];
    }
    Ok(blocks)
}

/// The one private key block in `input`, decoded, and the form its label names; `None` when
/// `input` has no PEM at all.
fn pem_private_key(input: &[u8]) -> Result<Option<(Source, Der)>, KeyError> {
    let blocks = pem_blocks(input)?;
    let Some(first) = blocks.first() else {
        return Ok(None);
    };
    let mut keys = blocks.iter().filter_map(|block| {
        let source = match block.label {
            b"PRIVATE KEY" => Source::Pkcs8,
            b"RSA PRIVATE KEY" => Source::Pkcs1,
            b"EC PRIVATE KEY" => Source::Sec1,
            _ => return None,
        };
        Some((source, block))
    });
    let Some((source, block)) = keys.next() else {
        // Explain the first block that is not a key: that is most likely what was stored.
        let interesting = blocks.iter().find(|block| block.label != b"EC PARAMETERS").unwrap_or(first);
        return Err(match interesting.label {
            b"ENCRYPTED PRIVATE KEY" => KeyError::Encrypted,
            b"OPENSSH PRIVATE KEY" => KeyError::OpenSsh,
            b"CERTIFICATE" | b"TRUSTED CERTIFICATE" | b"X509 CERTIFICATE" => KeyError::NotPrivateKey("a certificate"),
            b"PUBLIC KEY" | b"RSA PUBLIC KEY" => KeyError::NotPrivateKey("a public key"),
            b"CERTIFICATE REQUEST" | b"NEW CERTIFICATE REQUEST" => {
                KeyError::NotPrivateKey("a certificate signing request")
            }
            _ => KeyError::UnsupportedLabel,
        });
    };
    if keys.next().is_some() {
        return Err(KeyError::MalformedPem("more than one private key block"));
    }
    // RFC 1421 headers ("Proc-Type: 4,ENCRYPTED") only appear on legacy encrypted keys.
    if block.body.contains(&b':') {
        return Err(if find(block.body, b"ENCRYPTED").is_some() {
            KeyError::Encrypted
        } else {
            KeyError::MalformedPem("header lines in the body")
        });
    }
    let mut text = Zeroizing::new(Vec::with_capacity(block.body.len()));
    text.extend(block.body.iter().copied().filter(|byte| !byte.is_ascii_whitespace()));
    // Decoded into a buffer of our own: `decode` would drop a partly filled one unzeroized on error.
    let mut der = Zeroizing::new(vec![0; base64::decoded_len_estimate(text.len())]);
    let len = STANDARD.decode_slice(&*text, &mut der).map_err(|_| KeyError::MalformedPem("body is not base64"))?;
    der.truncate(len);
    Ok(Some((source, der)))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

#[cfg(test)]
pub(super) mod tests {
    use aws_lc_rs::encoding::{AsDer, EcPrivateKeyRfc5915Der};

    use super::*;
    use crate::generate::tests::{generated, generated_keys};
    use crate::generate::{Generator, RsaBits};

    /// The contents of each element of a DER SEQUENCE, for taking keys apart in tests. Handles
    /// the short and two-byte long length forms, which is all a key of these sizes uses.
    fn der_elements(der: &[u8]) -> Vec<(u8, &[u8])> {
        fn header(der: &[u8]) -> (u8, usize, usize) {
            match der[1] {
                len @ 0..=0x7f => (der[0], 2, usize::from(len)),
                0x81 => (der[0], 3, usize::from(der[2])),
                0x82 => (der[0], 4, usize::from(u16::from_be_bytes([der[2], der[3]]))),
                other => panic!("length form {other:#x}"),
            }
        }
        let (tag, start, len) = header(der);
        assert_eq!(tag, 0x30, "a SEQUENCE");
        let mut rest = &der[start..start + len];
        let mut elements = Vec::new();
        while !rest.is_empty() {
            let (tag, start, len) = header(rest);
            elements.push((tag, &rest[start..start + len]));
            rest = &rest[start + len..];
        }
        elements
    }

    /// The key as an openssl 1.x `genrsa` would write it: PKCS#1 in "RSA PRIVATE KEY" PEM.
    pub(in crate::generate) fn pkcs1_pem(key: &PrivateKey) -> SecretBytes {
        let elements = der_elements(&key.pkcs8);
        let (tag, rsa_private_key) = elements[2];
        assert_eq!(tag, 0x04, "PKCS#8 privateKey OCTET STRING");
        SecretBytes::from(String::clone(&pem_encode("RSA PRIVATE KEY", rsa_private_key)))
    }

    fn pem_body(pem: &str) -> Vec<u8> {
        let text: String = pem.lines().filter(|line| !line.starts_with("-----")).collect();
        STANDARD.decode(text).unwrap()
    }

    fn verification(kind: KeyKind) -> &'static dyn VerificationAlgorithm {
        match kind {
            KeyKind::Ed25519 => &signature::ED25519,
            KeyKind::EcdsaP256 => &signature::ECDSA_P256_SHA256_FIXED,
            KeyKind::EcdsaP384 => &signature::ECDSA_P384_SHA384_FIXED,
            KeyKind::Rsa { .. } => &signature::RSA_PKCS1_2048_8192_SHA256,
        }
    }

    #[test]
    fn every_kind_round_trips() {
        let message = b"rotate me";
        for (generator, value) in generated_keys() {
            let kind = generator.key_kind().unwrap();
            let pem = std::str::from_utf8(value.expose()).unwrap();
            assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{kind}");
            assert!(pem.ends_with("\n-----END PRIVATE KEY-----\n"), "{kind}");
            let lines: Vec<&str> = pem.lines().collect();
            let body = &lines[1..lines.len() - 1];
            assert!(body[..body.len() - 1].iter().all(|line| line.len() == 64), "{kind}");
            assert!((1..=64).contains(&body[body.len() - 1].len()), "{kind}");
            // PKCS#8 v1: the SEQUENCE starts with version INTEGER 0 and has no public key field.
            let der = pem_body(pem);
            let elements = der_elements(&der);
            assert_eq!(elements[0], (0x02, &[0u8][..]), "{kind}");
            assert_eq!(elements.len(), 3, "{kind}");

            let key = PrivateKey::parse(value).unwrap();
            assert_eq!(key.kind(), kind);
            let again = PrivateKey::parse(&key.pkcs8_pem()).unwrap();
            assert_eq!(again.kind(), kind);
            assert_eq!(again.pkcs8_pem(), *value, "{kind}: normalising PKCS#8 v1 PEM changes nothing");

            let public = key.public_key();
            assert_eq!(public, again.public_key());
            assert_eq!(public.kind(), kind);
            let spki_pem = public.spki_pem();
            assert!(
                spki_pem.starts_with("-----BEGIN PUBLIC KEY-----\n")
                    && spki_pem.ends_with("-----END PUBLIC KEY-----\n")
            );
            let spki = pem_body(&spki_pem);

            let signature = key.sign(message);
            let expected_len = match kind {
                KeyKind::Ed25519 | KeyKind::EcdsaP256 => 64,
                KeyKind::EcdsaP384 => 96,
                KeyKind::Rsa { bits } => bits / 8,
            };
            assert_eq!(signature.len(), expected_len, "{kind}");
            let verifier = UnparsedPublicKey::new(verification(kind), &spki);
            assert!(verifier.verify(message, &signature).is_ok(), "{kind}");
            assert!(verifier.verify(b"rotate m3", &signature).is_err(), "{kind}");
            assert!(public.verify(message, &signature), "{kind}");
            assert!(!public.verify(b"rotate m3", &signature), "{kind}");
            let mut flipped = signature.clone();
            flipped[0] ^= 1;
            assert!(!public.verify(message, &flipped), "{kind}");
        }
    }

    #[test]
    fn keys_of_one_kind_do_not_verify_each_other() {
        let first = PrivateKey::parse(generated(&Generator::EcdsaP256)).unwrap();
        let second = PrivateKey::generate(KeyKind::EcdsaP256).unwrap();
        assert_ne!(first.public_key(), second.public_key());
        assert!(!second.public_key().verify(b"m", &first.sign(b"m")));
    }

    #[test]
    fn jwk_members_per_kind() {
        for (generator, value) in generated_keys() {
            let kind = generator.key_kind().unwrap();
            let public = PrivateKey::parse(value).unwrap().public_key();
            let jwk = public.jwk();
            let member = |name: &str| jwk[name].as_str().unwrap_or_else(|| panic!("{kind}: no {name}")).to_string();
            let decoded = |name: &str| URL_SAFE_NO_PAD.decode(member(name)).unwrap();
            assert_eq!(member("kid"), public.kid());
            assert_eq!(member("alg"), public.alg());
            assert_eq!(member("use"), "sig");
            let names: Vec<&str> = jwk.as_object().unwrap().keys().map(String::as_str).collect();
            let (alg, expected_names): (&str, &[&str]) = match kind {
                KeyKind::Ed25519 => {
                    assert_eq!((member("kty"), member("crv")), ("OKP".into(), "Ed25519".into()));
                    assert_eq!(decoded("x").len(), 32);
                    // SPKI for Ed25519 is a fixed 12-byte header and the same 32 bytes.
                    let mut spki = vec![0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
                    spki.extend(decoded("x"));
                    assert_eq!(public.spki, spki);
                    ("EdDSA", &["alg", "crv", "kid", "kty", "use", "x"])
                }
                KeyKind::EcdsaP256 | KeyKind::EcdsaP384 => {
                    let (crv, size, alg) =
                        if kind == KeyKind::EcdsaP256 { ("P-256", 32, "ES256") } else { ("P-384", 48, "ES384") };
                    assert_eq!((member("kty"), member("crv")), ("EC".into(), crv.into()));
                    assert_eq!((decoded("x").len(), decoded("y").len()), (size, size), "{kind}");
                    // The SPKI ends with the uncompressed point 0x04 || x || y.
                    let point = [&[4u8][..], &decoded("x"), &decoded("y")].concat();
                    assert!(public.spki.ends_with(&point), "{kind}");
                    (alg, &["alg", "crv", "kid", "kty", "use", "x", "y"])
                }
                KeyKind::Rsa { bits } => {
                    assert_eq!(member("kty"), "RSA");
                    assert_eq!(member("e"), "AQAB");
                    assert_eq!(decoded("n").len(), bits / 8, "{kind}");
                    ("RS256", &["alg", "e", "kid", "kty", "n", "use"])
                }
            };
            assert_eq!(public.alg(), alg);
            let mut names = names;
            names.sort_unstable();
            assert_eq!(names, expected_names, "{kind}");
            // base64url without padding, 43 characters for SHA-256.
            let kid = public.kid();
            assert_eq!(kid.len(), 43);
            assert!(kid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "{kid}");
        }
    }

    #[test]
    fn public_keys_are_stored_and_read_back_whole() {
        for generator in
            [Generator::Ed25519, Generator::EcdsaP256, Generator::EcdsaP384, Generator::Rsa(RsaBits::B2048)]
        {
            let public = PrivateKey::parse(&generator.generate().unwrap()).unwrap().public_key();
            assert_eq!(PublicKey::from_stored(&public.to_stored()).unwrap(), public, "{}", generator.name());
        }
        assert!(PublicKey::from_stored(b"{}").is_err());
    }

    #[test]
    fn kid_is_the_rfc_7638_thumbprint() {
        // RFC 7638 section 3.1.
        let rsa = JwkMembers::Rsa {
            n: "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw".into(),
            e: "AQAB".into(),
        };
        assert_eq!(rsa.thumbprint(), "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");

        // RFC 8037 appendix A.3.
        let okp = JwkMembers::Okp { x: "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo".into() };
        assert_eq!(okp.thumbprint(), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
    }

    #[test]
    fn rfc_8037_key_end_to_end() {
        // RFC 8037 appendix A.1's private key, read the way a stored value is read.
        let seed = URL_SAFE_NO_PAD.decode("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A").unwrap();
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed).unwrap();
        let value = SecretBytes::copy_from(pair.to_pkcs8v1().unwrap().as_ref());
        let key = PrivateKey::parse(&value).unwrap();
        let public = key.public_key();
        assert_eq!(public.jwk()["x"], "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo");
        assert_eq!(public.kid(), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");

        // Appendix A.4: Ed25519 is deterministic, so the signature is the published one.
        let signing_input = b"eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc";
        let signature = key.sign(signing_input);
        assert_eq!(
            URL_SAFE_NO_PAD.encode(&signature),
            "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
        );
        assert!(public.verify(signing_input, &signature));
    }

    #[test]
    fn reads_der_and_the_legacy_pem_forms() {
        // PKCS#8 DER, v1 and (Ed25519) v2; both come out as the same v1 PEM.
        let ed25519 = PrivateKey::parse(generated(&Generator::Ed25519)).unwrap();
        let v1 = SecretBytes::copy_from(&ed25519.pkcs8);
        let v2 = SecretBytes::copy_from(
            match &ed25519.pair {
                Pair::Ed25519(pair) => pair.to_pkcs8().unwrap().as_ref().to_vec(),
                _ => unreachable!(),
            }
            .as_slice(),
        );
        assert_ne!(v1, v2);
        for der in [v1, v2] {
            let key = PrivateKey::parse(&der).unwrap();
            assert_eq!(key.pkcs8_pem(), ed25519.pkcs8_pem());
            assert!(key.legacy_form().is_none());
        }
        let rsa = PrivateKey::parse(generated(&Generator::Rsa(crate::generate::RsaBits::B3072))).unwrap();
        let der = SecretBytes::copy_from(&rsa.pkcs8);
        assert_eq!(PrivateKey::parse(&der).unwrap().public_key(), rsa.public_key());

        // PKCS#1, as `openssl genrsa` (1.x) writes it.
        let pkcs1 = PrivateKey::parse(&pkcs1_pem(&rsa)).unwrap();
        assert_eq!(pkcs1.kind(), KeyKind::Rsa { bits: 3072 });
        assert_eq!(pkcs1.public_key(), rsa.public_key());
        assert_eq!(pkcs1.pkcs8_pem(), rsa.pkcs8_pem());
        assert_eq!(pkcs1.legacy_form(), Some("PKCS#1 \"RSA PRIVATE KEY\""));

        // SEC1, as `openssl ecparam -genkey` writes it: a parameters block first, and with
        // `openssl pkcs12` output's "Bag Attributes" text around it.
        for generator in [Generator::EcdsaP256, Generator::EcdsaP384] {
            let ec = PrivateKey::parse(generated(&generator)).unwrap();
            let Pair::Ecdsa(pair, _) = &ec.pair else { unreachable!() };
            let sec1: EcPrivateKeyRfc5915Der<'static> = pair.private_key().as_der().unwrap();
            let text = format!(
                "Bag Attributes\n    localKeyID: 01\n-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n{}",
                *pem_encode("EC PRIVATE KEY", sec1.as_ref())
            );
            let key = PrivateKey::parse(&SecretBytes::from(text)).unwrap();
            assert_eq!(key.kind(), ec.kind());
            assert_eq!(key.public_key(), ec.public_key());
            assert_eq!(key.pkcs8_pem(), ec.pkcs8_pem());
            assert_eq!(key.legacy_form(), Some("SEC1 \"EC PRIVATE KEY\""));
        }

        // CRLF line endings and a missing final newline.
        let crlf = std::str::from_utf8(generated(&Generator::EcdsaP256).expose()).unwrap().replace('\n', "\r\n");
        let crlf = crlf.trim_end();
        assert_eq!(PrivateKey::parse(&SecretBytes::from(crlf.to_string())).unwrap().kind(), KeyKind::EcdsaP256);
    }

    #[test]
    fn refuses_what_is_not_a_supported_private_key() {
        let ed25519_body = STANDARD.encode(&PrivateKey::parse(generated(&Generator::Ed25519)).unwrap().pkcs8);
        let public_pem = PrivateKey::parse(generated(&Generator::Ed25519)).unwrap().public_key().spki_pem();
        let block = |label: &str, body: &str| format!("-----BEGIN {label}-----\n{body}\n-----END {label}-----\n");
        let two_keys = format!("{}{}", block("PRIVATE KEY", &ed25519_body), block("PRIVATE KEY", &ed25519_body));
        let legacy_encrypted = "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\nAAAA\n-----END RSA PRIVATE KEY-----\n";

        // (input, message); every input carries "SECRETMARKER" where it could be quoted.
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"".to_vec(), "not a private key: neither a PEM block nor DER"),
            (b"SECRETMARKER hunter2".to_vec(), "not a private key: neither a PEM block nor DER"),
            (vec![0x30, 0x00], "not a PKCS#8 key of a supported kind"),
            (block("PRIVATE KEY", "U0VDUkVUTUFSS0VS").into_bytes(), "not a PKCS#8 key of a supported kind"),
            (block("CERTIFICATE", "SECRETMARKER").into_bytes(), "PEM block is a certificate, not a private key"),
            (public_pem.into_bytes(), "PEM block is a public key, not a private key"),
            (block("ENCRYPTED PRIVATE KEY", "SECRETMARKER").into_bytes(), "private key is encrypted"),
            (legacy_encrypted.as_bytes().to_vec(), "private key is encrypted"),
            (block("OPENSSH PRIVATE KEY", "SECRETMARKER").into_bytes(), "OpenSSH private key; convert it to PKCS#8"),
            (
                block("SECRETMARKER", "AAAA").into_bytes(),
                "PEM label is not PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY",
            ),
            (b"-----BEGIN PRIVATE KEY-----\nSECRETMARKER\n".to_vec(), "malformed PEM: no END line"),
            (b"-----BEGIN PRIVATE KEY\nSECRETMARKER\n".to_vec(), "malformed PEM: BEGIN line is not closed"),
            (
                b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END SECRETMARKER-----\n".to_vec(),
                "END label does not match BEGIN",
            ),
            (block("PRIVATE KEY", "SECRETMARKER!").into_bytes(), "malformed PEM: body is not base64"),
            (block("PRIVATE KEY", "Comment: SECRETMARKER").into_bytes(), "malformed PEM: header lines in the body"),
            (two_keys.into_bytes(), "more than one private key block"),
            (block("RSA PRIVATE KEY", &ed25519_body).into_bytes(), "RSA PRIVATE KEY block is not a PKCS#1 RSA key"),
            (
                block("EC PRIVATE KEY", &ed25519_body).into_bytes(),
                "EC PRIVATE KEY block is not a SEC1 key on P-256 or P-384",
            ),
        ];
        for (input, want) in cases {
            let error = PrivateKey::parse(&SecretBytes::new(input.clone())).expect_err(want);
            let message = error.to_string();
            assert!(message.contains(want), "{want}: {message}");
            let debug = format!("{error:?}");
            assert!(!message.contains("SECRETMARKER") && !debug.contains("SECRETMARKER"), "{debug}");
        }
    }

    #[test]
    fn only_the_supported_rsa_sizes_are_generated() {
        let error = PrivateKey::generate(KeyKind::Rsa { bits: 1024 }).unwrap_err();
        assert_eq!(error.to_string(), "rsa-1024 keys cannot be generated");
    }

    #[test]
    fn jwks_lists_keys_in_order() {
        let current = PrivateKey::parse(generated(&Generator::EcdsaP256)).unwrap().public_key();
        let previous =
            PrivateKey::parse(generated(&Generator::Rsa(crate::generate::RsaBits::B2048))).unwrap().public_key();
        let text = jwks(&[&current, &previous]);
        assert!(text.ends_with("}\n") && !text.contains(' ') && text.matches('\n').count() == 1, "{text}");
        let set: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(set, serde_json::json!({ "keys": [current.jwk(), previous.jwk()] }));
        assert_eq!(jwks(&[]), "{\"keys\":[]}\n");
    }
}
