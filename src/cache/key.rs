//! Where the cache key comes from: a file named in `[cache] key_file` (a Kubernetes Secret
//! volume, a file on another device), or the systemd credential `keyturn-cache-key` (which
//! `LoadCredentialEncrypted=` can seal to the host's TPM2 or host key). The key is 32 random
//! bytes, given raw (`head -c 32 /dev/urandom`) or as base64 text.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use zeroize::Zeroizing;

/// The name of the systemd credential the cache key is read from when no `key_file` is set.
pub const CREDENTIAL: &str = "keyturn-cache-key";
/// A key file is at most this long: 32 bytes, or their base64 with a newline.
const MAX_KEY_FILE: u64 = 128;

/// Where a cache key was found, for every message about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    File(PathBuf),
    /// `$CREDENTIALS_DIRECTORY/keyturn-cache-key`.
    Credential(PathBuf),
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::File(path) => write!(f, "key_file {}", path.display()),
            KeySource::Credential(path) => write!(f, "systemd credential {CREDENTIAL} ({})", path.display()),
        }
    }
}

impl KeySource {
    /// The configured file, else the systemd credential if the service manager passed one;
    /// `None` when there is neither, and so no cache.
    pub fn find(key_file: Option<&Path>, credentials_directory: Option<&Path>) -> Option<KeySource> {
        if let Some(path) = key_file {
            return Some(KeySource::File(path.to_path_buf()));
        }
        let credential = credentials_directory?.join(CREDENTIAL);
        credential.exists().then_some(KeySource::Credential(credential))
    }

    pub fn path(&self) -> &Path {
        match self {
            KeySource::File(path) | KeySource::Credential(path) => path,
        }
    }

    /// Reads the 32-byte key. Every error names the source and says what a key looks like.
    pub fn read(&self) -> Result<Zeroizing<[u8; 32]>, String> {
        let path = self.path();
        let bytes = crate::sys::read_small_file(path, MAX_KEY_FILE, crate::sys::Links::Follow)
            .map_err(|e| format!("cannot read the cache key ({self}): {e}"))?
            .bytes;
        let mut key = Zeroizing::new([0u8; 32]);
        if bytes.len() == 32 {
            key.copy_from_slice(&bytes);
            return Ok(key);
        }
        let text = std::str::from_utf8(&bytes).map(str::trim).unwrap_or("");
        let decoded = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(text))
                .unwrap_or_default(),
        );
        if decoded.len() != 32 {
            return Err(format!("the cache key ({self}) is not a key: {KEY_FORM}"));
        }
        key.copy_from_slice(&decoded);
        Ok(key)
    }
}

const KEY_FORM: &str =
    "expected 32 random bytes, raw (`head -c 32 /dev/urandom`) or base64 (`head -c 32 /dev/urandom | base64`)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_raw_or_base64_and_every_error_names_the_source() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, bytes: &[u8]| {
            let path = dir.path().join(name);
            crate::sys::replace_file(&path, bytes, 0o600).unwrap();
            KeySource::File(path)
        };
        let raw = [7u8; 32];
        assert_eq!(*write("raw", &raw).read().unwrap(), raw);
        let text = base64::engine::general_purpose::STANDARD.encode(raw) + "\n";
        assert_eq!(*write("b64", text.as_bytes()).read().unwrap(), raw);
        for (name, bytes) in [("short", &b"too short"[..]), ("long", &[1u8; 200][..])] {
            let error = write(name, bytes).read().unwrap_err();
            assert!(error.contains(&format!("key_file {}", dir.path().join(name).display())), "{error}");
        }
        let missing = KeySource::File(dir.path().join("missing")).read().unwrap_err();
        assert!(
            missing.contains("cannot read the cache key (key_file ") && missing.contains("No such file"),
            "{missing}"
        );

        assert_eq!(KeySource::find(None, Some(dir.path())), None, "no credential there");
        write(CREDENTIAL, &raw);
        let found = KeySource::find(None, Some(dir.path())).unwrap();
        assert!(found.to_string().starts_with("systemd credential keyturn-cache-key ("), "{found}");
        assert_eq!(KeySource::find(Some(Path::new("/k")), Some(dir.path())), Some(KeySource::File("/k".into())));
    }
}
