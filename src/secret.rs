//! Secret material and the names around it.
//!
//! [`SecretBytes`] is the only type in keyturn that owns secret bytes. It is zeroized when
//! dropped, prints `[redacted]` under `{:?}`, and has neither `Display` nor `Serialize`, so a
//! value can only leave the process through code that asks for [`SecretBytes::expose`] by name:
//! the store clients that send it and the bundle writer that puts it on tmpfs.

use std::fmt;
use std::time::SystemTime;

use zeroize::{Zeroize, Zeroizing};

/// Secret bytes: zeroized on drop, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// Copies `bytes` into a new buffer; the caller remains responsible for its own copy.
    pub fn copy_from(bytes: &[u8]) -> Self {
        Self::new(bytes.to_vec())
    }

    /// The raw bytes. Every call site is a place where a value leaves its box, so keep them few.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// CRC32C (Castagnoli) of the value, the checksum Google Secret Manager uses. It is an
    /// integrity check, not a fingerprint to publish: 32 bits of a short password are enough to
    /// confirm a guess, so it is kept in memory and in agent-only files, never in status output.
    pub fn crc32c(&self) -> u32 {
        crc32c::crc32c(&self.0)
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl From<Vec<u8>> for SecretBytes {
    fn from(bytes: Vec<u8>) -> Self {
        Self::new(bytes)
    }
}

impl From<String> for SecretBytes {
    fn from(value: String) -> Self {
        Self::new(value.into_bytes())
    }
}

impl Zeroize for SecretBytes {
    fn zeroize(&mut self) {
        self.0.zeroize();
    }
}

/// A secret's id inside its store (`api-signing-key`). Not secret; checked by the backend of
/// the store that owns it (`store::registry::Backend::check_secret_id`), since each backend
/// has its own alphabet.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SecretId(String);

impl SecretId {
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SecretId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A version id as its store names it: a decimal number on the file store and Google, a UUID
/// on AWS. Opaque outside the store that issued it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct VersionId(String);

impl VersionId {
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The number, for stores whose versions are numbered.
    pub fn number(&self) -> Option<u64> {
        self.0.parse().ok()
    }
}

impl From<u64> for VersionId {
    fn from(n: u64) -> Self {
        Self(n.to_string())
    }
}

impl fmt::Display for VersionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One version of a secret as read from its store: its id, its value, and the checksum the
/// value was verified against.
#[derive(Debug, Clone)]
pub struct Version {
    pub id: VersionId,
    pub value: SecretBytes,
    pub crc32c: u32,
    /// When the store made it, if the read says (Google's access calls do not).
    pub created: Option<SystemTime>,
}

impl Version {
    /// A version of `value`, its checksum computed, its creation time unknown.
    pub fn new(id: impl Into<VersionId>, value: SecretBytes) -> Self {
        Version { id: id.into(), crc32c: value.crc32c(), value, created: None }
    }
}

/// The alias every node delivers. A rotation that is half done lives under `pending` and is
/// never delivered.
pub const CURRENT: &str = "current";
pub const PREVIOUS: &str = "previous";
pub const PENDING: &str = "pending";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let secret = SecretBytes::from("hunter2-fixture".to_string());
        assert_eq!(format!("{secret:?}"), "[redacted]");
        assert_eq!(format!("{secret:#?}"), "[redacted]");
        assert_eq!(secret.expose(), b"hunter2-fixture");
    }

    /// Every type that holds a `SecretBytes` derives `Debug`; none may show the value.
    #[test]
    fn no_type_holding_a_value_shows_it_under_debug() {
        use crate::deliver::{PolicyUpdate, RenderedFile};

        let value = || SecretBytes::copy_from(b"debug-fixture-4411");
        let version = Version { id: VersionId::from(1), value: value(), crc32c: 7, created: None };
        let file = RenderedFile { path: "x".into(), contents: value(), mode: 0o400, owner: None, group: None };
        let update = PolicyUpdate {
            policy: "p".into(),
            version: VersionId::from(1),
            crc32c: 7,
            spec: 1,
            previous: None,
            files: vec![RenderedFile { path: "y".into(), contents: value(), mode: 0o400, owner: None, group: None }],
            read: "alias current".into(),
        };
        for shown in
            [format!("{version:?}"), format!("{file:#?}"), format!("{update:?}"), format!("{:?}", Some(value()))]
        {
            assert!(!shown.contains("debug-fixture"), "{shown}");
            assert!(shown.contains("[redacted]"), "{shown}");
        }
    }

    #[test]
    fn crc32c_matches_the_published_vectors() {
        assert_eq!(SecretBytes::copy_from(b"123456789").crc32c(), 3_808_858_755);
        assert_eq!(SecretBytes::copy_from(b"hello").crc32c(), 2_591_144_780);
        assert_eq!(SecretBytes::copy_from(b"").crc32c(), 0);
    }
}
