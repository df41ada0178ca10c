//! Passwords: the character sets a policy may choose and uniform sampling from them.
//!
//! Every character of a password is drawn independently and uniformly from its set, by
//! rejection sampling over the system generator: a draw that would make some characters more
//! likely than others (the modulo bias of `random % size`) is thrown away and drawn again.

use zeroize::Zeroizing;

use super::{CheckError, GenerateError};
use crate::secret::SecretBytes;

/// The characters a password is made of: the `charset = "..."` setting of a policy's `[rotate]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Charset {
    /// A-Z, a-z and 0-9: safe unquoted in shells, URLs and connection strings. The default.
    Alphanumeric,
    /// ASCII `!` to `~`: every printable character but space.
    Printable,
    /// 0-9 and a-f.
    Hex,
    /// Characters listed by the policy. [`Charset::parse`] makes them at least 2 distinct
    /// printable ASCII characters.
    Custom(Vec<char>),
}

const FORMS: &str = "alphanumeric, printable, hex or chars:<characters>";

impl Charset {
    /// `alphanumeric`, `printable`, `hex` or `chars:` followed by at least 2 distinct printable
    /// ASCII characters (`chars:abc123`).
    pub fn parse(text: &str) -> Result<Charset, String> {
        match text {
            "alphanumeric" => Ok(Charset::Alphanumeric),
            "printable" => Ok(Charset::Printable),
            "hex" => Ok(Charset::Hex),
            _ => match text.strip_prefix("chars:") {
                Some(chars) => custom(chars.chars().collect()),
                None => Err(format!("\"{text}\" is not a charset; expected {FORMS}")),
            },
        }
    }

    /// The setting back, as [`Charset::parse`] reads it.
    pub fn name(&self) -> String {
        match self {
            Charset::Alphanumeric => "alphanumeric".to_string(),
            Charset::Printable => "printable".to_string(),
            Charset::Hex => "hex".to_string(),
            Charset::Custom(chars) => format!("chars:{}", chars.iter().collect::<String>()),
        }
    }

    /// The same rules [`Charset::parse`] applies, for a set built in code.
    pub(super) fn validate(self) -> Result<Charset, String> {
        match self {
            Charset::Custom(chars) => custom(chars),
            charset => Ok(charset),
        }
    }

    /// Every character of the set, each once.
    pub(super) fn alphabet(&self) -> Vec<char> {
        match self {
            Charset::Alphanumeric => ('A'..='Z').chain('a'..='z').chain('0'..='9').collect(),
            Charset::Printable => ('!'..='~').collect(),
            Charset::Hex => ('0'..='9').chain('a'..='f').collect(),
            Charset::Custom(chars) => chars.clone(),
        }
    }
}

fn custom(chars: Vec<char>) -> Result<Charset, String> {
    for (index, &c) in chars.iter().enumerate() {
        if !c.is_ascii_graphic() {
            return Err(format!("chars: {c:?} is not printable ASCII (\"!\" to \"~\", no spaces)"));
        }
        if chars[..index].contains(&c) {
            return Err(format!("chars: \"{c}\" appears twice; list each character once"));
        }
    }
    if chars.len() < 2 {
        return Err("chars: needs at least 2 distinct characters".to_string());
    }
    Ok(Charset::Custom(chars))
}

/// Draws per refill of the random buffer; a 1024-character password takes a few refills.
const BATCH: usize = 256;

/// `length` characters drawn uniformly from `alphabet`, as UTF-8.
pub(super) fn generate(length: usize, alphabet: &[char]) -> Result<SecretBytes, GenerateError> {
    let size = u32::try_from(alphabet.len()).map_err(|_| GenerateError::Charset)?;
    if size == 0 {
        return Err(GenerateError::Charset);
    }
    // Draws at or above the largest multiple of `size` that fits in a u32 are rejected, so the
    // accepted draws cover every index the same number of times.
    let accept_below = (1u64 << 32) / u64::from(size) * u64::from(size);

    // Sized for the widest character so the buffer never reallocates and leaves a copy behind.
    let widest = alphabet.iter().map(|c| c.len_utf8()).max().unwrap_or(1);
    let mut password = Zeroizing::new(Vec::with_capacity(length * widest));
    let mut random = Zeroizing::new([0u8; 4 * BATCH]);
    let mut utf8 = Zeroizing::new([0u8; 4]);
    let mut made = 0;
    while made < length {
        aws_lc_rs::rand::fill(&mut *random).map_err(|_| GenerateError::Random)?;
        for draw in random.chunks_exact(4) {
            let draw = u64::from(u32::from_le_bytes([draw[0], draw[1], draw[2], draw[3]]));
            if draw >= accept_below {
                continue;
            }
            let c = alphabet[(draw % u64::from(size)) as usize];
            password.extend_from_slice(c.encode_utf8(&mut *utf8).as_bytes());
            made += 1;
            if made == length {
                break;
            }
        }
    }
    Ok(SecretBytes::new(std::mem::take(&mut *password)))
}

/// Whether `value` is `length` characters of `charset`. The error never says which character
/// failed or where, since that is part of the password.
pub(super) fn check(value: &SecretBytes, length: usize, charset: &Charset) -> Result<(), CheckError> {
    let text = std::str::from_utf8(value.expose()).map_err(|_| CheckError::NotText)?;
    let actual = text.chars().count();
    if actual != length {
        return Err(CheckError::PasswordLength { expected: length, actual });
    }
    let alphabet = charset.alphabet();
    if !text.chars().all(|c| alphabet.contains(&c)) {
        return Err(CheckError::OutsideCharset { charset: charset.name() });
    }
    Ok(())
}
