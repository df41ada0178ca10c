//! New key material, the only place in keyturn that makes it.
//!
//! A policy's `generate = "..."` setting parses into a [`Generator`]. [`Generator::generate`]
//! makes a fresh value from the system's random generator (through aws-lc) and
//! [`Generator::check`] says whether a value, from the store or from an operator, is one this
//! generator could have made. Symmetric keys are raw bytes, passwords UTF-8 text, and
//! asymmetric keys PKCS#8 PEM, the form other tools read from a secret store; `keys.rs` reads
//! them back and derives the public JWK Set to publish. Values leave only as [`SecretBytes`],
//! every intermediate buffer is zeroized, and no error or `Debug` output shows a value.

mod keys;
mod password;

pub use keys::{KeyError, KeyKind, PrivateKey, PublicKey, jwks};
pub use password::Charset;

use zeroize::Zeroizing;

use crate::secret::SecretBytes;

/// How new key material is made: the `generate = "..."` setting of a policy's `[rotate]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Generator {
    /// `random:N`: N random bytes, binary.
    Random {
        bytes: usize,
    },
    /// `password:N`: N characters drawn uniformly from `charset`.
    Password {
        length: usize,
        charset: Charset,
    },
    /// `hmac-sha256`: 32 random bytes, the key length HMAC-SHA256 is designed for.
    HmacSha256,
    /// `aes-256`: 32 random bytes.
    Aes256,
    Ed25519,
    EcdsaP256,
    EcdsaP384,
    Rsa(RsaBits),
}

/// What a generator's values look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Any bytes, not text.
    Bytes,
    /// Text drawn from `alphabet` (the charset named `charset`), any character anywhere.
    Text { charset: String, alphabet: Vec<char> },
    /// A PKCS#8 PEM private key: ASCII lines.
    Pem,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RsaBits {
    B2048,
    B3072,
    B4096,
}

impl RsaBits {
    pub fn bits(self) -> usize {
        match self {
            RsaBits::B2048 => 2048,
            RsaBits::B3072 => 3072,
            RsaBits::B4096 => 4096,
        }
    }
}

/// Bounds of `random:N`: at least a byte, and no more than fits comfortably in any store.
const RANDOM_BYTES: (usize, usize) = (1, 65536);
/// Bounds of `password:N`: below 8 characters a password is guessable whatever its charset.
const PASSWORD_LENGTH: (usize, usize) = (8, 1024);
/// What HMAC-SHA256 and AES-256 keys are made of.
const SYMMETRIC_KEY_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("the system random number generator failed")]
    Random,
    #[error("the password charset is empty or too large")]
    Charset,
    #[error("cannot make a new {kind} key")]
    Key {
        kind: KeyKind,
        #[source]
        source: KeyError,
    },
}

/// Why a value is not one its generator could have made. Says what was expected and the
/// value's shape, never its contents.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("value is {actual} bytes; {generator} makes {expected}")]
    Length { generator: String, expected: usize, actual: usize },
    #[error("password is not UTF-8 text")]
    NotText,
    #[error("password is {actual} characters; the policy makes {expected}")]
    PasswordLength { expected: usize, actual: usize },
    #[error("password has characters outside the {charset} charset")]
    OutsideCharset { charset: String },
    #[error("value is not a usable private key")]
    Key(#[source] KeyError),
    #[error("value is a {form} key; keyturn stores keys as PKCS#8 \"PRIVATE KEY\"")]
    NotPkcs8 { form: &'static str },
    #[error("value is an {found} key; the policy makes {expected}")]
    WrongKind { expected: KeyKind, found: KeyKind },
    #[error("{kind} key failed a sign and verify round trip")]
    RoundTrip { kind: KeyKind },
}

impl Generator {
    /// Every form [`Generator::parse`] accepts, for messages.
    pub const ACCEPTED: &'static str =
        "random:N, password:N, hmac-sha256, aes-256, ed25519, ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072 or rsa-4096";

    /// Reads a `generate` setting. Passwords start with the alphanumeric charset; see
    /// [`Generator::with_charset`].
    pub fn parse(spec: &str) -> Result<Generator, String> {
        let generator = match spec {
            "hmac-sha256" => Generator::HmacSha256,
            "aes-256" => Generator::Aes256,
            "ed25519" => Generator::Ed25519,
            "ecdsa-p256" => Generator::EcdsaP256,
            "ecdsa-p384" => Generator::EcdsaP384,
            "rsa-2048" => Generator::Rsa(RsaBits::B2048),
            "rsa-3072" => Generator::Rsa(RsaBits::B3072),
            "rsa-4096" => Generator::Rsa(RsaBits::B4096),
            _ => {
                if let Some(count) = spec.strip_prefix("random:") {
                    Generator::Random { bytes: number(spec, count, "random:N", "bytes", RANDOM_BYTES)? }
                } else if let Some(count) = spec.strip_prefix("password:") {
                    let length = number(spec, count, "password:N", "characters", PASSWORD_LENGTH)?;
                    Generator::Password { length, charset: Charset::Alphanumeric }
                } else {
                    return Err(format!("\"{spec}\" is not a generator; expected {}", Self::ACCEPTED));
                }
            }
        };
        Ok(generator)
    }

    /// A password generator drawing from `charset` instead. Other generators have no charset,
    /// and a policy that sets one has a mistake worth reporting.
    pub fn with_charset(self, charset: Charset) -> Result<Generator, String> {
        match self {
            Generator::Password { length, .. } => Ok(Generator::Password { length, charset: charset.validate()? }),
            other => Err(format!("charset applies only to password:N, not {}", other.name())),
        }
    }

    pub fn generate(&self) -> Result<SecretBytes, GenerateError> {
        match self {
            Generator::Random { bytes } => random_bytes(*bytes),
            Generator::HmacSha256 | Generator::Aes256 => random_bytes(SYMMETRIC_KEY_BYTES),
            Generator::Password { length, charset } => password::generate(*length, &charset.alphabet()),
            Generator::Ed25519 | Generator::EcdsaP256 | Generator::EcdsaP384 | Generator::Rsa(_) => {
                let kind = self.key_kind().expect("asymmetric generators have a key kind");
                let key = PrivateKey::generate(kind).map_err(|source| GenerateError::Key { kind, source })?;
                Ok(key.pkcs8_pem())
            }
        }
    }

    /// Whether `value` parses and matches this generator: its length for random bytes and
    /// symmetric keys; its length and charset for passwords; for asymmetric kinds, a PKCS#8
    /// private key (PEM or DER) of exactly this kind and size whose signature verifies.
    pub fn check(&self, value: &SecretBytes) -> Result<(), CheckError> {
        let expected = match self {
            Generator::Random { bytes } => *bytes,
            Generator::HmacSha256 | Generator::Aes256 => SYMMETRIC_KEY_BYTES,
            Generator::Password { length, charset } => return password::check(value, *length, charset),
            Generator::Ed25519 | Generator::EcdsaP256 | Generator::EcdsaP384 | Generator::Rsa(_) => {
                let expected = self.key_kind().expect("asymmetric generators have a key kind");
                return check_key(value, expected);
            }
        };
        if value.len() != expected {
            return Err(CheckError::Length { generator: self.name(), expected, actual: value.len() });
        }
        Ok(())
    }

    /// What its values look like, for formats that cannot deliver every value.
    pub fn output(&self) -> Output {
        match self {
            Generator::Random { .. } | Generator::HmacSha256 | Generator::Aes256 => Output::Bytes,
            Generator::Password { charset, .. } => {
                Output::Text { charset: charset.name(), alphabet: charset.alphabet() }
            }
            Generator::Ed25519 | Generator::EcdsaP256 | Generator::EcdsaP384 | Generator::Rsa(_) => Output::Pem,
        }
    }

    pub fn is_asymmetric(&self) -> bool {
        self.key_kind().is_some()
    }

    /// The kind of key an asymmetric generator makes; `None` for bytes and passwords.
    pub fn key_kind(&self) -> Option<KeyKind> {
        match self {
            Generator::Ed25519 => Some(KeyKind::Ed25519),
            Generator::EcdsaP256 => Some(KeyKind::EcdsaP256),
            Generator::EcdsaP384 => Some(KeyKind::EcdsaP384),
            Generator::Rsa(bits) => Some(KeyKind::Rsa { bits: bits.bits() }),
            Generator::Random { .. } | Generator::Password { .. } | Generator::HmacSha256 | Generator::Aes256 => None,
        }
    }

    /// The setting back, as [`Generator::parse`] reads it (`rsa-3072`, `password:24`). The
    /// charset is a setting of its own and is not part of the name.
    pub fn name(&self) -> String {
        match self {
            Generator::Random { bytes } => format!("random:{bytes}"),
            Generator::Password { length, .. } => format!("password:{length}"),
            Generator::HmacSha256 => "hmac-sha256".to_string(),
            Generator::Aes256 => "aes-256".to_string(),
            other => other.key_kind().expect("every other generator makes a key").to_string(),
        }
    }
}

/// The number in `random:N` or `password:N`, in range. Only plain digits: `usize::from_str`
/// would also take `+32`, which no one means to write.
fn number(spec: &str, digits: &str, form: &str, unit: &str, (min, max): (usize, usize)) -> Result<usize, String> {
    let out_of_range = || format!("\"{spec}\" is out of range: {form} takes {min} to {max} {unit}");
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("\"{spec}\" needs a whole number of {unit}: {form}, {min} to {max}"));
    }
    // All digits, so the only parse failure is overflow.
    let n: usize = digits.parse().map_err(|_| out_of_range())?;
    if !(min..=max).contains(&n) {
        return Err(out_of_range());
    }
    Ok(n)
}

fn random_bytes(len: usize) -> Result<SecretBytes, GenerateError> {
    // Filled in place and moved, never copied, so the only copy is the one zeroized on drop.
    let mut bytes = Zeroizing::new(vec![0; len]);
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| GenerateError::Random)?;
    Ok(SecretBytes::new(std::mem::take(&mut *bytes)))
}

fn check_key(value: &SecretBytes, expected: KeyKind) -> Result<(), CheckError> {
    let key = PrivateKey::parse(value).map_err(CheckError::Key)?;
    if let Some(form) = key.legacy_form() {
        return Err(CheckError::NotPkcs8 { form });
    }
    if key.kind() != expected {
        return Err(CheckError::WrongKind { expected, found: key.kind() });
    }
    // Proves, end to end, what every consumer relies on: the key signs and its public half,
    // as keyturn publishes it, verifies.
    let message = b"keyturn generate check";
    if !key.public_key().verify(message, &key.sign(message)) {
        return Err(CheckError::RoundTrip { kind: expected });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use super::*;

    /// One value from every asymmetric generator, made once: RSA-4096 takes seconds in a debug
    /// build, and many tests need keys.
    pub(super) fn generated_keys() -> &'static [(Generator, SecretBytes)] {
        static KEYS: OnceLock<Vec<(Generator, SecretBytes)>> = OnceLock::new();
        KEYS.get_or_init(|| {
            let generators = [
                Generator::Ed25519,
                Generator::EcdsaP256,
                Generator::EcdsaP384,
                Generator::Rsa(RsaBits::B2048),
                Generator::Rsa(RsaBits::B3072),
                Generator::Rsa(RsaBits::B4096),
            ];
            std::thread::scope(|scope| {
                let made: Vec<_> = generators
                    .into_iter()
                    .map(|generator| scope.spawn(move || (generator.generate(), generator)))
                    .collect();
                made.into_iter()
                    .map(|handle| {
                        let (value, generator) = handle.join().expect("key generation thread");
                        (generator, value.expect("generate"))
                    })
                    .collect()
            })
        })
    }

    pub(super) fn generated(generator: &Generator) -> &'static SecretBytes {
        let (_, value) = generated_keys().iter().find(|(made, _)| made == generator).expect("a generated key");
        value
    }

    fn password(length: usize, charset: Charset) -> Generator {
        Generator::Password { length, charset }
    }

    #[test]
    fn generator_specs() {
        let good = [
            ("random:1", Generator::Random { bytes: 1 }),
            ("random:64", Generator::Random { bytes: 64 }),
            ("random:65536", Generator::Random { bytes: 65536 }),
            ("password:8", password(8, Charset::Alphanumeric)),
            ("password:1024", password(1024, Charset::Alphanumeric)),
            ("hmac-sha256", Generator::HmacSha256),
            ("aes-256", Generator::Aes256),
            ("ed25519", Generator::Ed25519),
            ("ecdsa-p256", Generator::EcdsaP256),
            ("ecdsa-p384", Generator::EcdsaP384),
            ("rsa-2048", Generator::Rsa(RsaBits::B2048)),
            ("rsa-3072", Generator::Rsa(RsaBits::B3072)),
            ("rsa-4096", Generator::Rsa(RsaBits::B4096)),
        ];
        for (spec, want) in good {
            let generator = Generator::parse(spec).unwrap_or_else(|e| panic!("{spec}: {e}"));
            assert_eq!(generator, want, "{spec}");
            assert_eq!(generator.name(), spec);
            assert_eq!(generator.is_asymmetric(), generator.key_kind().is_some(), "{spec}");
        }
        assert_eq!(Generator::parse("random:032").unwrap().name(), "random:32");

        // (spec, what the message must say)
        let bad = [
            ("", "\"\" is not a generator; expected random:N, password:N, hmac-sha256"),
            ("rsa-1024", "\"rsa-1024\" is not a generator; expected random:N"),
            ("RSA-2048", "\"RSA-2048\" is not a generator"),
            ("ed448", "rsa-3072 or rsa-4096"),
            ("password", "\"password\" is not a generator"),
            ("random:0", "\"random:0\" is out of range: random:N takes 1 to 65536 bytes"),
            ("random:65537", "out of range: random:N takes 1 to 65536 bytes"),
            ("random:99999999999999999999999", "out of range"),
            ("random:", "\"random:\" needs a whole number of bytes: random:N, 1 to 65536"),
            ("random:+32", "needs a whole number of bytes"),
            ("random: 32", "needs a whole number of bytes"),
            ("random:32b", "needs a whole number of bytes"),
            ("password:7", "\"password:7\" is out of range: password:N takes 8 to 1024 characters"),
            ("password:1025", "8 to 1024 characters"),
            ("password:-8", "needs a whole number of characters"),
        ];
        for (spec, want) in bad {
            let message = Generator::parse(spec).expect_err(spec);
            assert!(message.contains(want), "{spec}: {message}");
        }
    }

    #[test]
    fn charset_specs() {
        let good = [
            ("alphanumeric", Charset::Alphanumeric),
            ("printable", Charset::Printable),
            ("hex", Charset::Hex),
            ("chars:ab", Charset::Custom(vec!['a', 'b'])),
            ("chars:01!~", Charset::Custom(vec!['0', '1', '!', '~'])),
        ];
        for (text, want) in good {
            let charset = Charset::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(charset, want);
            assert_eq!(charset.name(), text);
        }
        let bad = [
            ("Hex", "\"Hex\" is not a charset; expected alphanumeric, printable, hex or chars:<characters>"),
            ("base64", "is not a charset"),
            ("chars:", "chars: needs at least 2 distinct characters"),
            ("chars:a", "at least 2 distinct"),
            ("chars:aba", "chars: \"a\" appears twice; list each character once"),
            ("chars:a b", "chars: ' ' is not printable ASCII"),
            ("chars:aé", "'é' is not printable ASCII"),
            ("chars:a\tb", "'\\t' is not printable ASCII"),
        ];
        for (text, want) in bad {
            let message = Charset::parse(text).expect_err(text);
            assert!(message.contains(want), "{text}: {message}");
        }
    }

    #[test]
    fn only_passwords_take_a_charset() {
        let generator = Generator::parse("password:12").unwrap().with_charset(Charset::Hex).unwrap();
        assert_eq!(generator, password(12, Charset::Hex));
        assert_eq!(generator.name(), "password:12");

        let message = Generator::parse("aes-256").unwrap().with_charset(Charset::Hex).unwrap_err();
        assert_eq!(message, "charset applies only to password:N, not aes-256");
        // A set built in code gets the same rules as one parsed from a policy.
        let message = password(12, Charset::Hex).with_charset(Charset::Custom(vec!['x'])).unwrap_err();
        assert!(message.contains("at least 2 distinct"), "{message}");
    }

    #[test]
    fn symmetric_values_have_their_lengths_and_differ() {
        for (generator, len) in [
            (Generator::Random { bytes: 1 }, 1),
            (Generator::Random { bytes: 4096 }, 4096),
            (Generator::HmacSha256, 32),
            (Generator::Aes256, 32),
        ] {
            let first = generator.generate().unwrap();
            let second = generator.generate().unwrap();
            assert_eq!(first.len(), len, "{generator:?}");
            if len >= 16 {
                assert_ne!(first, second, "{generator:?}");
            }
            generator.check(&first).unwrap();
        }
    }

    #[test]
    fn passwords_have_their_length_and_charset() {
        for charset in [
            Charset::Alphanumeric,
            Charset::Printable,
            Charset::Hex,
            Charset::parse("chars:xyz!").unwrap(),
            // Non-ASCII sets can only be built in code; they still come out as whole characters.
            Charset::Custom(vec!['é', '€', '😀']),
        ] {
            let generator = password(40, charset.clone());
            let alphabet = charset.alphabet();
            for _ in 0..20 {
                let value = generator.generate().unwrap();
                let text = std::str::from_utf8(value.expose()).unwrap();
                assert_eq!(text.chars().count(), 40, "{charset:?}");
                assert!(text.chars().all(|c| alphabet.contains(&c)), "{charset:?}");
                generator.check(&value).unwrap();
            }
        }
        let long = password(1024, Charset::Printable).generate().unwrap();
        assert_eq!(long.len(), 1024);
    }

    #[test]
    fn passwords_are_uniform_over_the_charset() {
        // 20,000 hex characters: each of 16 is expected 1,250 times, with a standard deviation
        // of about 34, so ±20% (250) is over 7 sigma and never fails by chance.
        let mut counts = [0usize; 16];
        for _ in 0..20 {
            let value = password(1000, Charset::Hex).generate().unwrap();
            for c in std::str::from_utf8(value.expose()).unwrap().chars() {
                counts[c.to_digit(16).unwrap() as usize] += 1;
            }
        }
        for (digit, count) in counts.iter().enumerate() {
            assert!((1000..=1500).contains(count), "{digit:x} appeared {count} times in 20000");
        }

        // A set that divides no power of two, so some draws must be rejected: still every
        // character about a third of the time (expected 341 of 1024, sigma 15).
        let mut counts = [0usize; 3];
        let value = password(1024, Charset::parse("chars:abc").unwrap()).generate().unwrap();
        for byte in value.expose() {
            counts[usize::from(byte - b'a')] += 1;
        }
        assert!(counts.iter().all(|&n| (250..=433).contains(&n)), "{counts:?}");
    }

    #[test]
    fn check_accepts_every_generated_key() {
        for (generator, value) in generated_keys() {
            generator.check(value).unwrap_or_else(|e| panic!("{generator:?}: {e}"));
        }
    }

    #[test]
    fn check_refuses_what_the_generator_could_not_have_made() {
        let ed25519 = generated(&Generator::Ed25519);
        let rsa_2048 = generated(&Generator::Rsa(RsaBits::B2048));
        let garbage = SecretBytes::copy_from(b"not a key at all, just text");

        let cases: Vec<(Generator, SecretBytes, &str)> = vec![
            (Generator::Aes256, SecretBytes::new(vec![0; 16]), "value is 16 bytes; aes-256 makes 32"),
            (Generator::HmacSha256, SecretBytes::new(vec![0; 64]), "value is 64 bytes; hmac-sha256 makes 32"),
            (Generator::Random { bytes: 24 }, SecretBytes::new(vec![]), "value is 0 bytes; random:24 makes 24"),
            (
                password(12, Charset::Alphanumeric),
                SecretBytes::copy_from(b"short"),
                "password is 5 characters; the policy makes 12",
            ),
            (
                password(12, Charset::Hex),
                SecretBytes::copy_from(b"0123456789aG"),
                "password has characters outside the hex charset",
            ),
            (
                password(12, Charset::Alphanumeric),
                SecretBytes::copy_from(b"abcdefghijk-"),
                "outside the alphanumeric charset",
            ),
            (password(8, Charset::Hex), SecretBytes::new(vec![0xff; 8]), "password is not UTF-8 text"),
            (Generator::EcdsaP256, ed25519.clone(), "value is an ed25519 key; the policy makes ecdsa-p256"),
            (
                Generator::Ed25519,
                generated(&Generator::EcdsaP384).clone(),
                "value is an ecdsa-p384 key; the policy makes ed25519",
            ),
            (Generator::Rsa(RsaBits::B3072), rsa_2048.clone(), "value is an rsa-2048 key; the policy makes rsa-3072"),
            (Generator::Ed25519, garbage.clone(), "value is not a usable private key"),
            (
                Generator::Rsa(RsaBits::B2048),
                SecretBytes::new(vec![0x30, 0x03, 0x02, 0x01, 0x00]),
                "not a usable private key",
            ),
        ];
        for (generator, value, want) in cases {
            let error = generator.check(&value).expect_err(want);
            let message = crate::error_chain(&error);
            assert!(message.contains(want), "{generator:?}: {message}");
        }

        let error = Generator::Ed25519.check(&garbage).unwrap_err();
        assert_eq!(
            crate::error_chain(&error),
            "value is not a usable private key: not a private key: neither a PEM block nor DER"
        );
    }

    #[test]
    fn check_wants_pkcs8_even_though_parse_reads_pkcs1() {
        let pkcs8 = PrivateKey::parse(generated(&Generator::Rsa(RsaBits::B2048))).unwrap();
        let pkcs1 = keys::tests::pkcs1_pem(&pkcs8);
        assert_eq!(PrivateKey::parse(&pkcs1).unwrap().kind(), KeyKind::Rsa { bits: 2048 });
        let message = Generator::Rsa(RsaBits::B2048).check(&pkcs1).unwrap_err().to_string();
        assert_eq!(message, "value is a PKCS#1 \"RSA PRIVATE KEY\" key; keyturn stores keys as PKCS#8 \"PRIVATE KEY\"");
    }

    #[test]
    fn nothing_prints_a_value() {
        let password_generator = password(30, Charset::Alphanumeric);
        let made_password = password_generator.generate().unwrap();
        let password_text = std::str::from_utf8(made_password.expose()).unwrap().to_string();
        let key_value = generated(&Generator::EcdsaP256);
        let key = PrivateKey::parse(key_value).unwrap();
        let pem = std::str::from_utf8(key_value.expose()).unwrap();
        let body: Vec<&str> = pem.lines().filter(|line| !line.starts_with("-----")).collect();

        let mut shown = vec![
            format!("{made_password:?}"),
            format!("{key_value:?}"),
            format!("{key:?}"),
            format!("{key:#?}"),
            format!("{:?}", key.pkcs8_pem()),
        ];
        // Errors from checking this very value against the wrong generator.
        for generator in [Generator::Ed25519, Generator::Aes256, password_generator.clone(), password(33, Charset::Hex)]
        {
            let error = generator.check(key_value).unwrap_err();
            shown.push(format!("{error:?}"));
            shown.push(crate::error_chain(&error));
        }
        for generator in [Generator::Ed25519, Generator::Aes256, password(30, Charset::Hex)] {
            let error = generator.check(&made_password).unwrap_err();
            shown.push(format!("{error:?}"));
            shown.push(crate::error_chain(&error));
        }
        assert_eq!(format!("{key:?}"), "PrivateKey { kind: EcdsaP256, .. }");
        for text in &shown {
            assert!(!text.contains(&password_text), "{text}");
            for line in &body {
                // Every line of the base64 body, and every 16-character piece of it.
                assert!(!text.contains(line), "{text}");
                for piece in line.as_bytes().chunks(16) {
                    assert!(!text.contains(std::str::from_utf8(piece).unwrap()), "{text}");
                }
            }
        }
    }
}
